// Step programs: one forward step's device work recorded as a list (kernel launches with their
// arguments, device-side copies, flushes, host calls and explicit host-sync points) that is
// enqueued later, and can be kept and enqueued again for every step of the same batch shape.
//
// Ops never take a program: while a Recording is active for a device, launch.h's set_arg /
// enqueue on that device append to the recording program instead of calling OpenCL. Each
// recorded launch owns its own kernel object with its arguments already set, so replay is one
// clEnqueueNDRangeKernel per launch and needs no clSetKernelArg. Values that change between two
// steps of one shape (token ids, positions, block tables, slots, the longest context) must live in
// device buffers the kernels read, never in kernel arguments; the caller writes them before run().
#pragma once

#include <cstddef>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "devices/cl_handle.h"
#include "devices/device.h"

namespace tessera::ops {

// Thread-safety: recorded from one thread; run() from one thread (the host calls it runs may use
// other threads, e.g. the executor's device lanes).
class StepProgram {
 public:
  enum class Mode {
    kReplayable,  // launches get their own kernel objects with arguments set: run() enqueues them
    kCountOnly,   // launches are counted, nothing is created: for launch counts, never run
  };
  enum class Kind { kLaunch, kCopy, kCopyAfter, kFlush, kHostCall, kHostSync };
  struct Record {
    Kind kind = Kind::kLaunch;
    const Device* device = nullptr;  // where it is enqueued (kCopyAfter: the receiver)
    const Device* from = nullptr;    // kCopyAfter: the sender, whose queued work comes first
    std::string name;                // kernel name, or what a host call does
    // kLaunch
    ClKernel kernel;  // owned by this record, arguments set (kReplayable)
    cl_uint dims = 0;
    size_t global[3] = {1, 1, 1}, local[3] = {1, 1, 1};
    bool has_local = false;
    // kCopy / kCopyAfter
    cl_mem src = nullptr, dst = nullptr;
    size_t src_offset = 0, dst_offset = 0, bytes = 0;
    // kHostCall / kHostSync
    std::function<void()> call;
  };

  explicit StepProgram(Mode mode = Mode::kReplayable) : mode_(mode) {}
  StepProgram(const StepProgram&) = delete;
  StepProgram& operator=(const StepProgram&) = delete;

  Mode mode() const { return mode_; }
  const std::vector<Record>& records() const { return records_; }
  size_t launches() const;                         // kernel launches, all devices
  size_t launches_on(const Device& device) const;  // kernel launches on `device`
  size_t host_syncs() const;                       // explicit points where the host waits for data
  // The program between host syncs: host syncs + 1 (a program without one is a single segment).
  size_t segments() const { return host_syncs() + 1; }

  // Device time of one profiled run: each launch and copy with a profiling event, read once the
  // queues finished. For opt-in measurement (`tessera bench --breakdown`); the hot path runs
  // without events.
  class Profile {
   public:
    struct Timed {
      const Record* record = nullptr;  // the launch or copy (valid while the program lives)
      double seconds = 0;              // device time: end - start of its event
    };
    // After every queue the run used has finished: each timed command in program order. Throws
    // ClError when a driver cannot report an event's times.
    std::vector<Timed> collect();
    // Commands of the run by kind.
    size_t launches = 0, copies = 0, flushes = 0, host_calls = 0, host_syncs = 0;

   private:
    friend class StepProgram;
    std::vector<std::pair<const Record*, ClEvent>> events_;
  };

  // Enqueues every record in order on its device's queue without waiting; a host call runs
  // inline; a host sync first flushes every queue the program used (the call may then block on
  // device data). With `profile`, each launch and copy also returns a profiling event there (the
  // queues are created with profiling enabled). Throws ClError naming the failing call; throws
  // std::logic_error for a kCountOnly program.
  void run(Profile* profile = nullptr);

  // Appended by the ops through launch.h and the helpers below while a Recording is active.
  // stage_arg: argument `index` of `kernel` for its next launch (value null: local memory).
  void stage_arg(const Device& device, cl_kernel kernel, cl_uint index, const void* value,
                 size_t size);
  // Throws std::logic_error when an argument of `kernel` was not set since recording began or
  // when events are asked for (a recorded launch is ordered by its queue, never by events).
  void add_launch(const Device& device, cl_kernel kernel, cl_uint dims, const size_t* global,
                  const size_t* local, std::span<const cl_event> wait, cl_event* done);
  void add(Record r);

 private:
  struct StagedArg {
    bool set = false;
    std::vector<unsigned char> value;  // empty: local memory of `size` bytes
    size_t size = 0;
  };
  Mode mode_;
  std::vector<Record> records_;
  std::map<cl_kernel, std::vector<StagedArg>> staged_;  // arguments as the ops set them
};

// While alive, ops launched on `devices` append to `program` instead of enqueueing. Recordings of
// one device do not nest. Destroying it ends the recording.
class Recording {
 public:
  Recording(StepProgram& program, std::span<const Device* const> devices);
  ~Recording();
  Recording(const Recording&) = delete;
  Recording& operator=(const Recording&) = delete;

 private:
  std::vector<const Device*> devices_;
};

// The program recording `device`'s launches, or null (the common case: enqueue directly).
StepProgram* recording_for(const Device& device);

// Device work beside the kernel launches; each enqueues now, or appends to the recording program.
// A device-side copy on `device`'s queue.
void copy_buffer(const Device& device, cl_mem src, size_t src_offset, cl_mem dst, size_t dst_offset,
                 size_t bytes);
// A copy on `to`'s queue ordered after everything queued on `from` (devices of one context): a
// marker on `from`, a flush, and the copy waiting on the marker; the host does not wait.
void copy_after(const Device& from, const Device& to, cl_mem src, size_t src_offset, cl_mem dst,
                size_t dst_offset, size_t bytes);
// Submits what is queued on `device` (some drivers hold commands until a flush or a wait).
void flush(const Device& device);
// Host work at this point of the step that needs no device data (bookkeeping, or a library such as
// CLBlast that enqueues by itself): runs now, or at this point of every run of the program.
void host_call(const Device& device, std::string what, std::function<void()> call);
// A point where the host needs device data (e.g. the router's choice): the program is split here;
// every queue is flushed, then `call` runs (it may read blocking and enqueue more work directly).
void host_sync(const Device& device, std::string what, std::function<void()> call);

}  // namespace tessera::ops
