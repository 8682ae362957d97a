// StepProgram: recording launches (own kernel objects, arguments set once) and enqueueing them.
#include "host/ops/device/step_program.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <utility>

namespace tessera::ops {

namespace {

// Active recordings: (device, program). Looked up by every launch, so the common case (none
// active) is one relaxed atomic load.
std::mutex g_mutex;
std::vector<std::pair<const Device*, StepProgram*>> g_active;
std::atomic<int> g_active_count{0};

std::string kernel_name(const Device& device, cl_kernel kernel) {
  size_t size = 0;
  CL_CHECK(clGetKernelInfo(kernel, CL_KERNEL_FUNCTION_NAME, 0, nullptr, &size),
           device.info().label());
  std::string name(size, '\0');
  CL_CHECK(clGetKernelInfo(kernel, CL_KERNEL_FUNCTION_NAME, size, name.data(), nullptr),
           device.info().label());
  while (!name.empty() && name.back() == '\0') name.pop_back();
  return name;
}

cl_uint kernel_num_args(const Device& device, cl_kernel kernel) {
  cl_uint n = 0;
  CL_CHECK(clGetKernelInfo(kernel, CL_KERNEL_NUM_ARGS, sizeof(n), &n, nullptr),
           device.info().label());
  return n;
}

// A new kernel object of `kernel`'s program and function (portable to OpenCL 1.2, unlike
// clCloneKernel): the record's own, so no later clSetKernelArg on the shared one changes it.
ClKernel new_kernel_like(const Device& device, cl_kernel kernel, const std::string& name) {
  cl_program program = nullptr;
  CL_CHECK(clGetKernelInfo(kernel, CL_KERNEL_PROGRAM, sizeof(program), &program, nullptr),
           device.info().label());
  cl_int err = CL_SUCCESS;
  cl_kernel k = clCreateKernel(program, name.c_str(), &err);
  if (err != CL_SUCCESS) throw ClError("clCreateKernel(" + name + ")", err, device.info().label());
  return ClKernel(k);
}

void enqueue_copy_after(const Device& from, const Device& to, cl_mem src, size_t src_offset,
                        cl_mem dst, size_t dst_offset, size_t bytes) {
  ClEvent marker;
  CL_CHECK(clEnqueueMarkerWithWaitList(from.queue(), 0, nullptr, marker.out()),
           from.info().label());
  CL_CHECK(clFlush(from.queue()), from.info().label());
  CL_CHECK(clEnqueueCopyBuffer(to.queue(), src, dst, src_offset, dst_offset, bytes, 1, marker.ptr(),
                               nullptr),
           to.info().label());
}

}  // namespace

size_t StepProgram::launches() const {
  return size_t(std::count_if(records_.begin(), records_.end(),
                              [](const Record& r) { return r.kind == Kind::kLaunch; }));
}

size_t StepProgram::launches_on(const Device& device) const {
  return size_t(std::count_if(records_.begin(), records_.end(), [&](const Record& r) {
    return r.kind == Kind::kLaunch && r.device == &device;
  }));
}

size_t StepProgram::host_syncs() const {
  return size_t(std::count_if(records_.begin(), records_.end(),
                              [](const Record& r) { return r.kind == Kind::kHostSync; }));
}

void StepProgram::stage_arg(const Device& device, cl_kernel kernel, cl_uint index,
                            const void* value, size_t size) {
  auto& args = staged_[kernel];
  if (args.empty()) args.resize(kernel_num_args(device, kernel));
  if (index >= args.size())
    throw ClError("clSetKernelArg(#" + std::to_string(index) + ")", CL_INVALID_ARG_INDEX,
                  device.info().label(), "recording " + kernel_name(device, kernel));
  StagedArg& a = args[index];
  a.set = true;
  a.size = size;
  if (value) {
    const auto* p = static_cast<const unsigned char*>(value);
    a.value.assign(p, p + size);
  } else {
    a.value.clear();
  }
}

void StepProgram::add_launch(const Device& device, cl_kernel kernel, cl_uint dims,
                             const size_t* global, const size_t* local,
                             std::span<const cl_event> wait, cl_event* done) {
  const std::string name = kernel_name(device, kernel);
  if (!wait.empty() || done)
    throw std::logic_error("step program: launch of " + name + " on " + device.info().label() +
                           " waits for or returns events; recorded launches follow queue order");
  if (dims < 1 || dims > 3)
    throw std::logic_error("step program: " + name + " has " + std::to_string(dims) +
                           " dimensions");
  auto it = staged_.find(kernel);
  const cl_uint n_args = kernel_num_args(device, kernel);
  for (cl_uint i = 0; i < n_args; ++i)
    if (it == staged_.end() || i >= it->second.size() || !it->second[i].set)
      throw std::logic_error("step program: argument " + std::to_string(i) + " of " + name +
                             " was not set since recording began");
  Record r;
  r.kind = Kind::kLaunch;
  r.device = &device;
  r.name = name;
  r.dims = dims;
  for (cl_uint d = 0; d < dims; ++d) {
    r.global[d] = global[d];
    if (local) r.local[d] = local[d];
  }
  r.has_local = local != nullptr;
  if (mode_ == Mode::kReplayable) {
    r.kernel = new_kernel_like(device, kernel, name);
    for (cl_uint i = 0; i < n_args; ++i) {
      const StagedArg& a = it->second[i];
      const cl_int err =
          clSetKernelArg(r.kernel.get(), i, a.size, a.value.empty() ? nullptr : a.value.data());
      if (err != CL_SUCCESS)
        throw ClError("clSetKernelArg(#" + std::to_string(i) + ")", err, device.info().label(),
                      "recording " + name);
    }
  }
  records_.push_back(std::move(r));
}

void StepProgram::add(Record r) {
  records_.push_back(std::move(r));
}

void StepProgram::run(Profile* profile) {
  if (mode_ == Mode::kCountOnly)
    throw std::logic_error("step program: a count-only program cannot run");
  if (profile) *profile = Profile{};
  // The event of a timed command: a new slot in the profile, or none.
  auto event = [&](const Record& r) -> cl_event* {
    if (!profile) return nullptr;
    profile->events_.emplace_back(&r, ClEvent());
    return profile->events_.back().second.out();
  };
  std::vector<const Device*> used;
  for (const Record& r : records_) {
    const Device& d = *r.device;
    switch (r.kind) {
      case Kind::kLaunch: {
        const cl_int err =
            clEnqueueNDRangeKernel(d.queue(), r.kernel.get(), r.dims, nullptr, r.global,
                                   r.has_local ? r.local : nullptr, 0, nullptr, event(r));
        if (err != CL_SUCCESS)
          throw ClError("clEnqueueNDRangeKernel(" + r.name + ")", err, d.info().label());
        if (profile) ++profile->launches;
        break;
      }
      case Kind::kCopy:
        CL_CHECK(clEnqueueCopyBuffer(d.queue(), r.src, r.dst, r.src_offset, r.dst_offset, r.bytes,
                                     0, nullptr, event(r)),
                 d.info().label());
        if (profile) ++profile->copies;
        break;
      case Kind::kCopyAfter:
        enqueue_copy_after(*r.from, d, r.src, r.src_offset, r.dst, r.dst_offset, r.bytes);
        if (profile) ++profile->copies;
        break;
      case Kind::kFlush:
        CL_CHECK(clFlush(d.queue()), d.info().label());
        if (profile) ++profile->flushes;
        break;
      case Kind::kHostCall:
        r.call();
        if (profile) ++profile->host_calls;
        break;
      case Kind::kHostSync:
        for (const Device* u : used) CL_CHECK(clFlush(u->queue()), u->info().label());
        r.call();
        if (profile) ++profile->host_syncs;
        break;
    }
    if (std::find(used.begin(), used.end(), &d) == used.end()) used.push_back(&d);
  }
}

std::vector<StepProgram::Profile::Timed> StepProgram::Profile::collect() {
  std::vector<Timed> out;
  out.reserve(events_.size());
  for (auto& [record, ev] : events_) {
    cl_ulong start = 0, end = 0;
    const std::string label = record->device->info().label();
    CL_CHECK(clGetEventProfilingInfo(ev.get(), CL_PROFILING_COMMAND_START, sizeof(start), &start,
                                     nullptr),
             label);
    CL_CHECK(
        clGetEventProfilingInfo(ev.get(), CL_PROFILING_COMMAND_END, sizeof(end), &end, nullptr),
        label);
    out.push_back({record, end > start ? double(end - start) * 1e-9 : 0.0});
  }
  events_.clear();
  return out;
}

Recording::Recording(StepProgram& program, std::span<const Device* const> devices)
    : devices_(devices.begin(), devices.end()) {
  std::lock_guard lock(g_mutex);
  for (const Device* d : devices_)
    for (const auto& [dev, p] : g_active)
      if (dev == d)
        throw std::logic_error("step program: " + d->info().label() + " is already recording");
  for (const Device* d : devices_) g_active.emplace_back(d, &program);
  g_active_count.store(int(g_active.size()), std::memory_order_release);
}

Recording::~Recording() {
  std::lock_guard lock(g_mutex);
  for (const Device* d : devices_)
    std::erase_if(g_active, [&](const auto& e) { return e.first == d; });
  g_active_count.store(int(g_active.size()), std::memory_order_release);
}

StepProgram* recording_for(const Device& device) {
  if (g_active_count.load(std::memory_order_acquire) == 0) return nullptr;
  std::lock_guard lock(g_mutex);
  for (const auto& [d, p] : g_active)
    if (d == &device) return p;
  return nullptr;
}

namespace {

// A copy's record: `bytes` from src at src_offset to dst at dst_offset on `device`'s queue.
StepProgram::Record copy_record(StepProgram::Kind kind, const Device& device, std::string name,
                                cl_mem src, size_t src_offset, cl_mem dst, size_t dst_offset,
                                size_t bytes) {
  StepProgram::Record r;
  r.kind = kind;
  r.device = &device;
  r.name = std::move(name);
  r.src = src;
  r.dst = dst;
  r.src_offset = src_offset;
  r.dst_offset = dst_offset;
  r.bytes = bytes;
  return r;
}

}  // namespace

void copy_buffer(const Device& device, cl_mem src, size_t src_offset, cl_mem dst, size_t dst_offset,
                 size_t bytes) {
  if (StepProgram* p = recording_for(device)) {
    p->add(copy_record(StepProgram::Kind::kCopy, device, "copy", src, src_offset, dst, dst_offset,
                       bytes));
    return;
  }
  CL_CHECK(clEnqueueCopyBuffer(device.queue(), src, dst, src_offset, dst_offset, bytes, 0, nullptr,
                               nullptr),
           device.info().label());
}

void copy_after(const Device& from, const Device& to, cl_mem src, size_t src_offset, cl_mem dst,
                size_t dst_offset, size_t bytes) {
  StepProgram* p = recording_for(to);
  if (p != recording_for(from))
    throw std::logic_error("step program: a copy from " + from.info().label() + " to " +
                           to.info().label() + " with only one of them recording");
  if (p) {
    StepProgram::Record r =
        copy_record(StepProgram::Kind::kCopyAfter, to, "copy after " + from.info().label(), src,
                    src_offset, dst, dst_offset, bytes);
    r.from = &from;
    p->add(std::move(r));
    return;
  }
  enqueue_copy_after(from, to, src, src_offset, dst, dst_offset, bytes);
}

void flush(const Device& device) {
  if (StepProgram* p = recording_for(device)) {
    StepProgram::Record r;
    r.kind = StepProgram::Kind::kFlush;
    r.device = &device;
    r.name = "flush";
    p->add(std::move(r));
    return;
  }
  CL_CHECK(clFlush(device.queue()), device.info().label());
}

namespace {
void host_record(const Device& device, StepProgram::Kind kind, std::string what,
                 std::function<void()> call) {
  if (StepProgram* p = recording_for(device)) {
    StepProgram::Record r;
    r.kind = kind;
    r.device = &device;
    r.name = std::move(what);
    r.call = std::move(call);
    p->add(std::move(r));
    return;
  }
  call();
}
}  // namespace

void host_call(const Device& device, std::string what, std::function<void()> call) {
  host_record(device, StepProgram::Kind::kHostCall, std::move(what), std::move(call));
}

void host_sync(const Device& device, std::string what, std::function<void()> call) {
  host_record(device, StepProgram::Kind::kHostSync, std::move(what), std::move(call));
}

}  // namespace tessera::ops
