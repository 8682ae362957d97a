// KV cache command-line options and the cache's format summary.
#include "host/cli/kv_cache_options.h"

#include <cstdio>
#include <map>

namespace tessera::cli {

namespace po = boost::program_options;

void add_kv_cache_type_options(po::options_description& opts, KvCacheTypes& types) {
  opts.add_options()("cache-type-k", po::value<std::string>(&types.k),
                     "KV cache format of K (-ctk; f16, q8_0, q4_0, turbo2, turbo2.5, turbo3, "
                     "turbo3.5, turbo4, and the key-only turbo3p, turbo4p; as kv_cache.k_format)")(
      "cache-type-v", po::value<std::string>(&types.v),
      "KV cache format of V (-ctv; as kv_cache.v_format)");
}

void prepend_kv_cache_sets(const KvCacheTypes& types, std::vector<std::string>& sets) {
  std::vector<std::string> front;
  if (!types.k.empty()) front.push_back("kv_cache.k_format=" + types.k);
  if (!types.v.empty()) front.push_back("kv_cache.v_format=" + types.v);
  sets.insert(sets.begin(), front.begin(), front.end());
}

KvTokenBytes kv_token_bytes(const kv::PagedKvCache& cache) {
  KvTokenBytes b;
  for (int32_t l = 0; l < cache.config().n_layer; ++l) {
    for (kv::KvPart part : {kv::KvPart::kK, kv::KvPart::kV}) {
      const kv::KvPoolLayout& L = cache.layout(l, part);
      b.bytes += L.token_head_bytes() * uint64_t(L.n_head_kv);
      b.f16_bytes += kv::kv_bytes_per_token_head(kv::KvFormat::kF16, uint32_t(L.head_dim)) *
                     uint64_t(L.n_head_kv);
    }
  }
  return b;
}

std::string kv_format_summary(const kv::PagedKvCache& cache) {
  // The most common (K, V) pair, then the layers that differ from it.
  std::map<std::pair<kv::KvFormat, kv::KvFormat>, int> count;
  const int32_t n = cache.config().n_layer;
  auto pair_of = [&](int32_t l) {
    return std::pair{cache.layout(l, kv::KvPart::kK).format,
                     cache.layout(l, kv::KvPart::kV).format};
  };
  for (int32_t l = 0; l < n; ++l) ++count[pair_of(l)];
  auto common = count.begin();
  for (auto it = count.begin(); it != count.end(); ++it)
    if (it->second > common->second) common = it;
  auto name = [](kv::KvFormat f) { return std::string(kv::kv_format_name(f)); };
  std::string s =
      "KV cache format: K " + name(common->first.first) + ", V " + name(common->first.second);
  std::string others;
  for (int32_t l = 0; l < n; ++l) {
    const auto p = pair_of(l);
    if (p == common->first) continue;
    others += (others.empty() ? "" : "; ") + std::string("layer ") + std::to_string(l) + ": K " +
              name(p.first) + ", V " + name(p.second);
  }
  if (!others.empty()) s += " (" + others + ")";
  const KvTokenBytes b = kv_token_bytes(cache);
  char tail[160];
  std::snprintf(tail, sizeof tail, "; %llu bytes per token, f16 %llu (%.2fx smaller)",
                static_cast<unsigned long long>(b.bytes),
                static_cast<unsigned long long>(b.f16_bytes),
                b.bytes ? double(b.f16_bytes) / double(b.bytes) : 0.0);
  return s + tail;
}

}  // namespace tessera::cli
