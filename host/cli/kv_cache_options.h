// The KV cache options `run`, `bench` and `perplexity` share: llama.cpp's --cache-type-k/-v (-ctk,
// -ctv) as config overrides, and the summary line of the cache's formats and bytes per token.
#pragma once

#include <boost/program_options.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "host/kv/paged_kv_cache.h"

namespace tessera::cli {

struct KvCacheTypes {
  std::string k, v;  // "" : the config's kv_cache.format
};

// Adds --cache-type-k / --cache-type-v (-ctk / -ctv: parse_options maps llama.cpp's spelling).
void add_kv_cache_type_options(boost::program_options::options_description& opts,
                               KvCacheTypes& types);
// The options as config overrides (kv_cache.k_format=..., kv_cache.v_format=...) put before the
// command's --set overrides, so a --set of the same key wins; per-layer keys stay with --set.
void prepend_kv_cache_sets(const KvCacheTypes& types, std::vector<std::string>& sets);

// K and V bytes one token costs in the cache, all layers, and what an f16 cache would cost.
struct KvTokenBytes {
  uint64_t bytes = 0, f16_bytes = 0;
};
KvTokenBytes kv_token_bytes(const kv::PagedKvCache& cache);
// "KV cache format: K q8_0, V q8_0 (layer 0: K f16, V f16); 1088 bytes per token, f16 2048
// (1.88x smaller)".
std::string kv_format_summary(const kv::PagedKvCache& cache);

}  // namespace tessera::cli
