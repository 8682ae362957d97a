// RAII ownership of OpenCL handles: one template, one release function per handle type.
#pragma once

#include <spdlog/spdlog.h>

#include <utility>

#include "devices/cl_error.h"

namespace tessera {

template <typename T>
struct ClTraits;

#define TESSERA_CL_TRAITS(T, retain_fn, release_fn)          \
  template <>                                                \
  struct ClTraits<T> {                                       \
    static cl_int retain(T h) { return retain_fn(h); }       \
    static cl_int release(T h) { return release_fn(h); }     \
    static constexpr const char* kReleaseName = #release_fn; \
  };
TESSERA_CL_TRAITS(cl_context, clRetainContext, clReleaseContext)
TESSERA_CL_TRAITS(cl_command_queue, clRetainCommandQueue, clReleaseCommandQueue)
TESSERA_CL_TRAITS(cl_mem, clRetainMemObject, clReleaseMemObject)
TESSERA_CL_TRAITS(cl_program, clRetainProgram, clReleaseProgram)
TESSERA_CL_TRAITS(cl_kernel, clRetainKernel, clReleaseKernel)
TESSERA_CL_TRAITS(cl_event, clRetainEvent, clReleaseEvent)
#undef TESSERA_CL_TRAITS

// Owns one reference to an OpenCL object. Copy retains, destruction releases; a failing release is
// logged, never thrown (destructors must not throw).
template <typename T>
class ClHandle {
 public:
  ClHandle() = default;
  explicit ClHandle(T h) : h_(h) {}  // takes ownership of an existing reference
  ClHandle(const ClHandle& o) : h_(o.h_) {
    if (h_) ClTraits<T>::retain(h_);
  }
  ClHandle(ClHandle&& o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
  ClHandle& operator=(ClHandle o) noexcept {
    std::swap(h_, o.h_);
    return *this;
  }
  ~ClHandle() { reset(); }

  void reset() {
    if (!h_) return;
    cl_int err = ClTraits<T>::release(h_);
    if (err != CL_SUCCESS) {
      spdlog::warn("{} failed: {}", ClTraits<T>::kReleaseName, cl_error_name(err));
    }
    h_ = nullptr;
  }
  T get() const { return h_; }
  const T* ptr() const { return &h_; }  // for wait lists of one
  T* out() {                            // for APIs that return a new handle through a pointer
    reset();
    return &h_;
  }
  explicit operator bool() const { return h_ != nullptr; }

 private:
  T h_ = nullptr;
};

using ClContext = ClHandle<cl_context>;
using ClQueue = ClHandle<cl_command_queue>;
using ClMem = ClHandle<cl_mem>;
using ClProgram = ClHandle<cl_program>;
using ClKernel = ClHandle<cl_kernel>;
using ClEvent = ClHandle<cl_event>;

}  // namespace tessera
