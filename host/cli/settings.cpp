// Settings from the environment (the only getenv calls besides main's TESSERA_LOG and run's
// TESSERA_MODEL) and the device objects built from them.
#include "host/cli/settings.h"

#include <cstdlib>

namespace tessera::cli {
namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

Settings read_environment() {
  Settings s;
  if (const auto xdg = env("XDG_CACHE_HOME"); !xdg.empty())
    s.cache_root = std::filesystem::path(xdg) / "tessera";
  else if (const auto home = env("HOME"); !home.empty())
    s.cache_root = std::filesystem::path(home) / ".cache" / "tessera";
  s.kernel_dir = env("TESSERA_KERNEL_DIR");
  s.matmul_options = env("TESSERA_MATMUL_OPTIONS");
  s.no_fuse = env("TESSERA_NO_FUSE");
  s.fuse = env("TESSERA_FUSE");
  s.device_limits = env("TESSERA_DEVICE_LIMITS");
  s.matrix_fault = env("TESSERA_MATRIX_FAULT");
  return s;
}

}  // namespace

const Settings& settings() {
  static const Settings s = read_environment();
  return s;
}

std::shared_ptr<ProgramCache> program_cache(const Settings& s) {
  auto sources = s.kernel_dir.empty() ? KernelSources::embedded()
                                      : KernelSources::from_directory(s.kernel_dir);
  auto cache = std::make_shared<ProgramCache>(std::move(sources), s.cache_root.empty()
                                                                      ? std::filesystem::path()
                                                                      : s.cache_root / "programs");
  if (!s.matmul_options.empty()) {
    cache->set_program_options("matmul", s.matmul_options);
    cache->set_program_options("route_attention", s.matmul_options);  // matmul.cl inside
  }
  return cache;
}

DeviceLimits device_limits(const Settings& s) {
  if (s.device_limits.empty()) return {};
  try {
    return parse_device_limits(s.device_limits);
  } catch (const TesseraError& e) {
    throw TesseraError(std::string("TESSERA_DEVICE_LIMITS: ") + e.what());
  }
}

DeviceRegistry discover_devices(const Settings& s) {
  return DeviceRegistry::discover(program_cache(s), device_limits(s));
}

std::filesystem::path probe_dir(const Settings& s) {
  return s.cache_root.empty() ? std::filesystem::path() : s.cache_root / "probes";
}

ProbeCache probe_cache(const Settings& s) {
  return ProbeCache(probe_dir(s));
}

}  // namespace tessera::cli
