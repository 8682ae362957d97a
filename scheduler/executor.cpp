// Executor lanes: each device's jobs are spawned into and awaited inside its own arena.
#include "scheduler/executor.h"

#include <algorithm>
#include <stdexcept>
#include <thread>

namespace tessera::sched {

Executor::Executor(std::vector<std::string> device_ids) {
  // Lanes mostly wait on OpenCL; allow one thread per lane plus the caller even on small hosts.
  const size_t want = std::max<size_t>(std::thread::hardware_concurrency(), device_ids.size() + 1);
  parallelism_ =
      std::make_unique<tbb::global_control>(tbb::global_control::max_allowed_parallelism, want);
  for (auto& id : device_ids) {
    auto lane = std::make_unique<Lane>();
    lane->device_id = std::move(id);
    // One slot, none reserved for the caller: a worker thread may take it, so lanes run in
    // parallel.
    lane->arena.initialize(1, 0);
    lanes_.push_back(std::move(lane));
  }
}

Executor::~Executor() {
  // Jobs reference engine state: never leave them running past the executor.
  for (auto& lane : lanes_) {
    try {
      lane->arena.execute([&] { lane->group.wait(); });
    } catch (...) {
      // Already reported to the caller of wait(), or the engine is being torn down after an error.
    }
  }
}

void Executor::submit(size_t device, std::function<void()> job) {
  if (device >= lanes_.size())
    throw std::out_of_range("executor: no lane " + std::to_string(device));
  Lane& lane = *lanes_[device];
  bool start = false;
  {
    std::lock_guard lock(lane.mutex);
    lane.queue.push_back(std::move(job));
    start = !lane.draining;
    lane.draining = true;
  }
  if (start) lane.arena.execute([&lane] { lane.group.run([&lane] { drain(lane); }); });
}

std::exception_ptr Executor::run_job(const std::string& device_id,
                                     const std::function<void()>& job) {
  try {
    job();
  } catch (const std::exception& e) {
    return std::make_exception_ptr(std::runtime_error(device_id + ": " + e.what()));
  } catch (...) {
    return std::make_exception_ptr(std::runtime_error(device_id + ": unknown failure"));
  }
  return nullptr;
}

void Executor::drain(Lane& lane) {
  for (;;) {
    std::function<void()> job;
    {
      std::lock_guard lock(lane.mutex);
      if (lane.queue.empty()) {
        lane.draining = false;
        return;
      }
      job = std::move(lane.queue.front());
      lane.queue.pop_front();
    }
    if (auto failure = run_job(lane.device_id, job)) {
      std::lock_guard lock(lane.mutex);
      if (!lane.error) lane.error = failure;
    }
  }
}

void Executor::wait() {
  std::exception_ptr first;
  for (auto& lane : lanes_) {
    try {
      lane->arena.execute([&] { lane->group.wait(); });
    } catch (...) {
      if (!first) first = std::current_exception();
    }
    std::lock_guard lock(lane->mutex);
    if (lane->error && !first) first = lane->error;
    lane->error = nullptr;
  }
  if (first) std::rethrow_exception(first);
}

void Executor::run_all(const std::vector<std::function<void()>>& jobs) {
  // One job has nothing to overlap with: it runs on the calling thread (no hand-off to a worker
  // and back), its failure reported as a lane's would be.
  size_t n = 0, only = 0;
  for (size_t i = 0; i < jobs.size() && i < lanes_.size(); ++i)
    if (jobs[i]) ++n, only = i;
  if (n == 1 && !busy()) {
    if (auto failure = run_job(lanes_[only]->device_id, jobs[only]))
      std::rethrow_exception(failure);
    return;
  }
  for (size_t i = 0; i < jobs.size() && i < lanes_.size(); ++i)
    if (jobs[i]) submit(i, jobs[i]);
  wait();
}

bool Executor::busy() {
  for (auto& lane : lanes_) {
    std::lock_guard lock(lane->mutex);
    if (lane->draining || !lane->queue.empty() || lane->error) return true;
  }
  return false;
}

}  // namespace tessera::sched
