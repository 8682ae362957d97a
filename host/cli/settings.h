// What the process environment decides, read in one place at the CLI layer: the libraries take
// these as settings and never call getenv.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "devices/device.h"
#include "devices/probes.h"

namespace tessera::cli {

struct Settings {
  // Root of the program and probe caches: $XDG_CACHE_HOME/tessera, else $HOME/.cache/tessera;
  // empty (no disk caches) when neither is set.
  std::filesystem::path cache_root;
  std::filesystem::path kernel_dir;  // $TESSERA_KERNEL_DIR: kernels from disk; empty: embedded
  std::string matmul_options;        // $TESSERA_MATMUL_OPTIONS: extra matmul build options
  // $TESSERA_NO_FUSE: fusions to switch off (comma list, EngineSetupOptions::no_fuse checks names)
  std::string no_fuse;
  // $TESSERA_FUSE: opt-in fusions to switch on (comma list, EngineSetupOptions::fuse)
  std::string fuse;
  // $TESSERA_DEVICE_LIMITS ("local_mem=4096,work_group=16,..."): every device's limits lowered,
  // to run as a smaller device would (tests); empty: the devices' own limits.
  std::string device_limits;
  // $TESSERA_MATRIX_FAULT ("CASE:crash|abort|hang"): `tessera matrix`'s child makes that case die
  // or hang as a broken driver would (the isolation tests); empty: none.
  std::string matrix_fault;
};

// The settings of this process, read from the environment on first use.
const Settings& settings();

// A program cache over the settings' kernel sources, on disk under cache_root/programs.
std::shared_ptr<ProgramCache> program_cache(const Settings& s = settings());
// The settings' device limits parsed; throws TesseraError naming TESSERA_DEVICE_LIMITS and the
// bad key or value.
DeviceLimits device_limits(const Settings& s = settings());
// Every OpenCL device, with program_cache(s) and device_limits(s). Throws NoOpenClError as
// DeviceRegistry::discover.
DeviceRegistry discover_devices(const Settings& s = settings());
// Probe results cached under cache_root/probes (probe_dir(); empty: not stored).
std::filesystem::path probe_dir(const Settings& s = settings());
ProbeCache probe_cache(const Settings& s = settings());

}  // namespace tessera::cli
