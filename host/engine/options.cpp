// Engine options set by name (the fusion switches the CLI reads from $TESSERA_NO_FUSE).
#include "host/engine/options.h"

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace tessera::engine {

void apply_no_fuse(std::string_view names, EngineOptions& options) {
  const std::pair<const char*, bool*> switches[] = {
      {"qkv", &options.fuse.qkv},
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
  std::istringstream list{std::string(names)};
  for (std::string name; std::getline(list, name, ',');) {
    if (name.empty()) continue;
    bool* flag = nullptr;
    for (auto& [key, f] : switches)
      if (name == key) flag = f;
    if (!flag)
      throw std::invalid_argument(
          "TESSERA_NO_FUSE: unknown fusion '" + name +
          "'; known: qkv, norm_route, proj_route, combine_norm, swiglu, glu, "
          "attn_reduce, decode_finish, down_combine, expert_ffn, route_ffn, next_qkv, "
          "next_attention, head, argmax, "
          "flush, pipeline, stream_ahead, stream_queue, zero_copy");
    *flag = false;
  }
}

void apply_fuse(std::string_view names, EngineOptions& options) {
  std::istringstream list{std::string(names)};
  for (std::string name; std::getline(list, name, ',');) {
    if (name.empty()) continue;
    if (name != "route_ffn_gpu")
      throw std::invalid_argument("TESSERA_FUSE: unknown opt-in fusion '" + name +
                                  "'; known: route_ffn_gpu");
    options.fuse.route_ffn_gpu = true;
  }
}

}  // namespace tessera::engine
