// Engine options set by name (the fusion switches the CLI reads from $TESSERA_NO_FUSE).
#include "host/engine/options.h"

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace tessera::engine {

namespace {

using Switch = std::pair<const char*, bool*>;

// Sets each switch named in a comma-separated list to `value`; `var` and `what` name the list in
// the error for an unknown name, which lists the known ones.
template <size_t N>
void set_switches(std::string_view names, const Switch (&switches)[N], bool value, const char* var,
                  const char* what) {
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

}  // namespace

void apply_no_fuse(std::string_view names, EngineOptions& options) {
  const Switch switches[] = {{"qkv", &options.fuse.qkv},
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
  set_switches(names, switches, false, "TESSERA_NO_FUSE", "fusion");
}

void apply_fuse(std::string_view names, EngineOptions& options) {
  const Switch switches[] = {{"route_ffn_gpu", &options.fuse.route_ffn_gpu}};
  set_switches(names, switches, true, "TESSERA_FUSE", "opt-in fusion");
}

}  // namespace tessera::engine
