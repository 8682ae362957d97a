// Engine options set by name (the fusion switches the CLI reads from $TESSERA_NO_FUSE).
#include "host/engine/options.h"

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace tessera::engine {

namespace {

using Switch = std::pair<const char*, bool*>;

// Sets each switch named in a comma-separated list to `value`; `var` and `what` name the list in
// the error for an unknown name, which lists the known ones.
void set_switches(std::string_view names, const std::vector<Switch>& switches, bool value,
                  const char* var, const char* what) {
  std::istringstream list{std::string(names)};
  for (std::string name; std::getline(list, name, ',');) {
    if (name.empty()) continue;
    bool* flag = nullptr;
    for (auto& [key, f] : switches)
      if (name == key) flag = f;
    if (!flag) {
      std::string known;
      for (auto& [key, f] : switches) known += (known.empty() ? "" : ", ") + std::string(key);
      throw std::invalid_argument(std::string(var) + ": unknown " + what + " '" + name +
                                  "'; known: " + known);
    }
    *flag = value;
  }
}

// The switches $TESSERA_NO_FUSE names (on by default) and those $TESSERA_FUSE names (off by
// default), as fields of `options`.
std::vector<Switch> no_fuse_switches(EngineOptions& options) {
  return {{"qkv", &options.fuse.qkv},
          {"norm_route", &options.fuse.norm_route},
          {"proj_route", &options.fuse.proj_route},
          {"combine_norm", &options.fuse.combine_norm},
          {"swiglu", &options.fuse.swiglu},
          {"glu", &options.fuse.glu},
          {"attn_reduce", &options.fuse.attn_reduce},
          {"decode_finish", &options.fuse.decode_finish},
          {"down_combine", &options.fuse.down_combine},
          {"expert_ffn", &options.fuse.expert_ffn},
          {"route_ffn", &options.fuse.route_ffn},
          {"next_qkv", &options.fuse.next_qkv},
          {"next_attention", &options.fuse.next_attention},
          {"head", &options.fuse.head},
          {"argmax", &options.fuse.argmax},
          {"flush", &options.flush_per_layer},
          {"pipeline", &options.pipeline},
          {"stream_ahead", &options.stream_ahead},
          {"stream_queue", &options.stream_queue},
          {"zero_copy", &options.zero_copy}};
}
std::vector<Switch> fuse_switches(EngineOptions& options) {
  return {{"route_ffn_gpu", &options.fuse.route_ffn_gpu}};
}

}  // namespace

void apply_no_fuse(std::string_view names, EngineOptions& options) {
  set_switches(names, no_fuse_switches(options), false, "TESSERA_NO_FUSE", "fusion");
}

void apply_fuse(std::string_view names, EngineOptions& options) {
  set_switches(names, fuse_switches(options), true, "TESSERA_FUSE", "opt-in fusion");
}

std::string switches_key(const EngineOptions& options) {
  // The tables take fields to set; here they are only read.
  auto& o = const_cast<EngineOptions&>(options);
  std::string off, on;
  for (const auto& [name, flag] : no_fuse_switches(o))
    if (!*flag) off += (off.empty() ? "" : ",") + std::string(name);
  for (const auto& [name, flag] : fuse_switches(o))
    if (*flag) on += (on.empty() ? "" : ",") + std::string(name);
  std::string key;
  if (!off.empty()) key = "no_fuse=" + off;
  if (!on.empty()) key += (key.empty() ? "" : ";") + std::string("fuse=") + on;
  return key;
}

}  // namespace tessera::engine
