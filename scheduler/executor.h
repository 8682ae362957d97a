// The executor: one oneTBB task_arena + task_group per device, so each OpenCL queue is driven by
// one thread at a time while different devices' work runs concurrently. Task failures are captured
// and re-raised to the caller, never swallowed.
#pragma once

#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/task_arena.h>
#include <oneapi/tbb/task_group.h>

#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace tessera::sched {

class Executor {
 public:
  // One lane per device, in the order of `device_ids`. Thread-safety: submit/wait from one thread
  // (the engine thread); jobs of one lane never run concurrently with each other and run in the
  // order they were submitted (FIFO).
  explicit Executor(std::vector<std::string> device_ids);
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  size_t lanes() const { return lanes_.size(); }

  // Queues `job` on lane `device`; it runs on a TBB thread inside that device's arena, after every
  // job submitted to that lane before it.
  void submit(size_t device, std::function<void()> job);
  // Waits for every submitted job; rethrows the first failure (naming the device).
  void wait();

  // Convenience: one job per lane that has one (empty functions are skipped), run concurrently,
  // then wait(). A single job, with no lane busy, runs on the calling thread (its failure named
  // as a lane's).
  void run_all(const std::vector<std::function<void()>>& jobs);

 private:
  // A lane's jobs wait in `queue`; one TBB task at a time drains it in order (a task_group alone
  // runs the newest spawned task first). A failure is kept (the first, naming the device) and the
  // lane goes on with its next job; wait() rethrows it.
  struct Lane {
    std::string device_id;
    tbb::task_arena arena;
    tbb::task_group group;
    std::mutex mutex;  // guards queue, draining, error
    std::deque<std::function<void()>> queue;
    bool draining = false;
    std::exception_ptr error;
  };
  static void drain(Lane& lane);
  // Runs `job`; its failure as an exception naming the device (null when it succeeded).
  static std::exception_ptr run_job(const std::string& device_id, const std::function<void()>& job);
  // Whether any lane has queued or running jobs, or a failure not yet reported by wait().
  bool busy();
  std::vector<std::unique_ptr<Lane>> lanes_;
  std::unique_ptr<tbb::global_control> parallelism_;
};

}  // namespace tessera::sched
