// Device-selection configs (YAML): which devices run, their memory budgets, where attention and
// experts go, KV cache format and budget, balancer and batching, and the daemon's settings.
// Schema: configs/README.md.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "devices/device_info.h"
#include "host/common/error.h"

namespace tessera::sched {

// A config that cannot be used: the message names the key path (e.g. "devices.select[1].type")
// and, where it helps, lists what exists.
class ConfigError : public TesseraError {
 public:
  using TesseraError::TesseraError;
};

// Matches devices; every field that is set must match. An empty selector matches every device.
struct DeviceSelector {
  std::optional<DeviceType> type;
  std::optional<std::string> vendor;    // substring of the vendor string or the vendor class name
  std::optional<std::string> name;      // glob (* and ?) over the device name, case-insensitive
  std::optional<std::string> platform;  // platform index ("0") or substring of the platform name
  std::optional<std::string> id;        // "gpu0" or "0:1"
  bool matches(const DeviceInfo& d) const;
  std::string describe() const;  // "type=gpu vendor=nvidia"
};

// A memory budget: absolute bytes or a fraction of the device's global memory.
struct MemoryBudget {
  uint64_t bytes = 0;
  double fraction = 0;  // used when bytes == 0
  uint64_t resolve(uint64_t device_bytes) const {
    return bytes ? bytes : uint64_t(double(device_bytes) * fraction);
  }
};

struct ExpertPin {
  std::string device;                      // device id
  int layer_first = 0, layer_last = -1;    // inclusive; -1 = last layer
  int expert_first = 0, expert_last = -1;  // inclusive; -1 = last expert
};

// The `server:` section: `tessera serve`'s settings (its flags of the same names override them).
// Plain values read by host/cli/cmd_serve.cpp; the scheduler itself ignores them. Unset: the
// flag's default.
struct ServerSettings {
  std::optional<std::string> host, api_key, model_name, chat_template, log_format;
  std::optional<int> port, ctx, max_queue, body_limit, threads;
  std::optional<double> request_timeout, idle_timeout, grace;  // seconds
};

struct Config {
  // devices
  std::vector<DeviceSelector> select;  // empty: all devices
  std::vector<DeviceSelector> exclude;
  std::map<std::string, MemoryBudget> budgets;  // by device id
  // placement
  std::string attention = "auto";               // device id or "auto"
  std::string experts_mode = "auto";            // "auto" | "shares" | "pins"
  std::map<std::string, double> expert_shares;  // device id -> share (normalized)
  std::vector<ExpertPin> expert_pins;
  std::optional<int>
      cpu_moe_layers;  // like llama.cpp --n-cpu-moe: experts of the first N layers on the CPU
  // Big steps of layers whose experts are not all on the layer's device: that device takes every
  // expert's weights from host memory and runs them (EngineOptions::stream_experts). "auto" (a
  // device that does not share host memory), "on", "off"; and the fewest tokens of such a step.
  std::string stream_experts = "auto";
  std::optional<int> stream_experts_min_tokens;
  // kv cache: storage formats by name (kv_cache.format lists them), K and V chosen separately
  std::string kv_format = "f16";     // K and V, unless kv_k_format / kv_v_format is set
  std::string kv_k_format;           // kv_cache.k_format ("": kv_format)
  std::string kv_v_format;           // kv_cache.v_format ("": kv_format)
  struct KvLayerFormats {            // kv_cache.layers.<range>: formats of a layer range
    int first = 0, last = 0;         // inclusive layer range
    std::string k_format, v_format;  // "": the cache-wide format
  };
  std::map<std::string, KvLayerFormats> kv_layers;  // by the range as written ("0", "22-23")
  std::optional<MemoryBudget> kv_budget;
  // balancer
  bool balancer = true;
  // batching: the request engine's step limits; unset, each command keeps its own default
  std::optional<int> max_sequences;     // requests running at once (sequences of one step)
  std::optional<int> max_batch_tokens;  // tokens of one step
  std::optional<int> prefill_chunk;     // prompt tokens of one request per step
  ServerSettings server;                // `tessera serve`'s settings

  // The devices this config selects, in discovery order; throws ConfigError when a named device
  // does not exist (listing those that do), when nothing is selected, or when a budget exceeds a
  // device's memory.
  std::vector<const DeviceInfo*> select_devices(const std::vector<DeviceInfo>& all) const;
};

// Parses a YAML document. `source` names it in errors (a path or "<command line>").
Config parse_config(const std::string& yaml_text, const std::string& source);
Config load_config(const std::string& path);

// Applies "key=value" overrides given on the command line, using the same key paths as the YAML
// (e.g. "placement.attention=gpu0", "balancer.enabled=false", "devices.budgets.cpu0=8GiB").
void apply_override(Config& config, const std::string& assignment);

// "40GiB", "512MiB", "1.5GB", "123456" (bytes), "80%" (of the device's memory).
MemoryBudget parse_budget(const std::string& text, const std::string& key);

// Formats bytes for people: "1.50 GiB".
std::string format_bytes(uint64_t bytes);

}  // namespace tessera::sched
