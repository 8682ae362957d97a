// Compiled OpenCL programs: in memory per (device, program, options) and on disk per
// sha256(source, options, device name, driver version, platform version, cache format).
#pragma once

#include <atomic>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "devices/cl_handle.h"
#include "devices/kernel_sources.h"

namespace tessera {

class Device;

// Build options every program gets on `device`: -D feature macros from its capabilities. The one
// place device facts become kernel macros; each line says why.
std::string device_build_options(const class DeviceInfo& info);

// Whether program binaries go to the disk cache. A PoCL device keeps its own kernel cache (keyed
// on source, options and device: a second process start builds from it in a fraction of a
// second), and asking PoCL for a program's binary compiles every kernel of the program first:
// 52 kernel objects instead of the 4 a matmul case used, 77 s instead of 9 s cold on this machine
// (2026-12-08). The KJV model's first run took 94-107 s with PoCL binaries stored and takes 15 s
// without; a warm start takes 0.85 s instead of 0.57 s (PoCL runs clang's preprocessor over each
// source to find its entry: half of that start's perf samples). So `kAuto` stores no binary for
// PoCL and stores one for every other driver (with POCL_KERNEL_CACHE=0 a PoCL user has turned
// caching off, and gets none); `kAlways` stores for all (tests of the store itself).
enum class BinaryStore { kAuto, kAlways };

// True when `info`'s driver keeps a kernel cache of its own that makes a stored binary redundant.
bool driver_caches_programs(const class DeviceInfo& info);

class ProgramCache {
 public:
  // `disk_dir` empty: memory only. The cache owns the programs it returns; they live as long as it.
  ProgramCache(KernelSources sources, std::filesystem::path disk_dir);

  // Extra build options for every build of program `name` (e.g. "-DGEMV_STAGED" for matmul
  // experiments; the CLI passes $TESSERA_MATMUL_OPTIONS). Part of the cache key. Call before the
  // program is first built.
  void set_program_options(const std::string& name, std::string options);
  // Every program's extra build options (set_program_options), "name=options" joined by ';' in
  // name order; empty when none is set. Keys of figures the kernels measured (launch prices,
  // weight rates) include it, so figures of one build are not taken for another's.
  std::string program_options_key() const;

  void set_binary_store(BinaryStore store);
  // Whether a program built for `device` is written to (and looked up in) the disk cache.
  bool stores_binaries(const Device& device) const;

  // Program `name` built for `device` with device_build_options() + `options` (+ the program's
  // set_program_options()). Thread-safe.
  // A build failure throws ClError carrying the build log. A missing, corrupt or stale disk entry
  // falls back to compiling from source and rewrites the entry.
  cl_program get(const Device& device, const std::string& name, const std::string& options = "");

  struct Stats {
    int memory_hits = 0;
    int disk_hits = 0;
    int builds = 0;         // compiled from source
    int disk_rejected = 0;  // entries found on disk but unusable (corrupt, truncated, refused)
  };
  Stats stats() const;
  const KernelSources& sources() const { return sources_; }
  const std::filesystem::path& disk_dir() const { return disk_dir_; }

  // The disk file a (device, program, options) maps to; for tests and diagnostics.
  std::filesystem::path entry_path(const Device& device, const std::string& name,
                                   const std::string& options) const;

 private:
  std::string full_options(const Device& device, const std::string& name,
                           const std::string& options) const;  // caller holds mutex_
  bool stores_locked(const Device& device) const;              // caller holds mutex_
  std::string cache_key(const Device& device, const std::string& source,
                        const std::string& options) const;
  ClProgram build_from_source(const Device& device, const std::string& name,
                              const std::string& source, const std::string& options);
  ClProgram load_binary(const Device& device, const std::filesystem::path& path,
                        const std::string& options);
  void store_binary(const Device& device, cl_program program, const std::filesystem::path& path);

  KernelSources sources_;
  std::filesystem::path disk_dir_;
  mutable std::mutex mutex_;
  std::map<std::tuple<const Device*, std::string, std::string>, ClProgram> programs_;
  std::map<std::string, std::string> program_options_;  // by program name
  BinaryStore binary_store_ = BinaryStore::kAuto;
  Stats stats_;
};

}  // namespace tessera
