// attention_bench: decode attention time over an f16 paged KV cache for contexts 1K/4K/16K and head
// sizes 64/128 (GQA 32 query / 8 KV heads), plus one prefill figure, on every device (or those
// named by --devices). Effective GB/s counts the K and V bytes a decode step must read.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "host/cli/settings.h"
#include "host/common/half.h"
#include "host/kv/kv_batch.h"
#include "host/kv/paged_kv_cache.h"
#include "host/ops/device/attention.h"

using namespace tessera;

namespace {

struct Options {
  std::vector<std::string> devices;
  int reps = 20;
  std::vector<int> contexts{1024, 4096, 16384};
  std::vector<int> head_dims{64, 128};
  std::vector<int> batch{1, 8};
  int decode_items = 0;  // work-group decode kernel size (= tile) instead of the device default
};

// Seconds per call of `launch` (enqueue only), averaged over reps after a warm-up, queue drained.
template <typename F>
double time_per_call(const Device& d, int reps, F&& launch) {
  launch();
  d.finish();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) launch();
  d.finish();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
}

void bench_device(const Device& d, const Options& o) {
  const int n_head = 32, n_head_kv = 8, block = 16;
  for (int hd : o.head_dims) {
    // An f16 pool of this shape (the caches below are built from the same layout).
    ops::AttentionConfig cfg{n_head, {kv::KvFormat::kF16, 0, block, n_head_kv, hd}};
    ops::AttentionTuning tuning = ops::default_attention_tuning(d, cfg);
    if (o.decode_items > 0) {
      tuning.decode_rows = false;
      tuning.decode_items = tuning.decode_tile = o.decode_items;
    }
    ops::AttentionOp op(d, cfg, tuning);
    for (int n_seqs : o.batch) {
      for (int ctx : o.contexts) {
        const int32_t blocks_per_seq = (ctx + block - 1) / block;
        kv::PagedKvCache cache(
            {1, n_head_kv, hd, block, blocks_per_seq * n_seqs, cfg.pool.format, cfg.pool.format},
            {&d});
        // Random f16 contents for the whole pool (cheaper than writing every token through
        // kv_write).
        std::vector<uint16_t> pool(cache.layout().pool_bytes() / 2);
        std::mt19937 rng(1);
        std::uniform_real_distribution<float> u(-1.0f, 1.0f);
        for (auto& x : pool) x = fp32_to_fp16(u(rng));
        d.write(cache.layer(0).k, 0, pool.data(), pool.size() * 2);
        d.write(cache.layer(0).v, 0, pool.data(), pool.size() * 2);
        std::vector<kv::SeqId> seqs;
        std::vector<int32_t> tseq, tpos;
        for (int s = 0; s < n_seqs; ++s) {
          seqs.push_back(cache.create_sequence());
          cache.reserve(seqs.back(), ctx);
          tseq.push_back(s);
          tpos.push_back(ctx - 1);
        }
        kv::KvBatchBuffers batch(d);
        kv::KvBatchView view = batch.upload(cache.blocks(), seqs, tseq, tpos);
        std::vector<float> q(size_t(n_seqs) * n_head * hd);
        for (auto& x : q) x = u(rng);
        ClMem qb = d.alloc(q.size() * 4), ob = d.alloc(q.size() * 4);
        d.write(qb.get(), 0, q.data(), q.size() * 4);
        const size_t ws_bytes = op.decode_workspace_bytes(n_seqs, view.context_capacity);
        ClMem ws = d.alloc(ws_bytes);
        const double sec = time_per_call(d, o.reps, [&] {
          op.decode(view, cache.layer(0), qb.get(), 0, ob.get(), 0, 0, n_seqs, ws.get(), ws_bytes);
        });
        const double bytes = double(n_seqs) * ctx * n_head_kv * hd * 2.0 * 2.0;
        const auto split = op.decode_split(n_seqs, view.context_capacity);
        std::printf(
            "%-6s decode  head_dim %3d  seqs %2d  ctx %6d  chunks %2d  %9.1f us  %7.1f GB/s\n",
            d.id().c_str(), hd, n_seqs, ctx, split.n_chunks, sec * 1e6, bytes / sec / 1e9);
        std::fflush(stdout);
      }
    }
    // One prefill figure: a 512-token chunk at the end of a 1K context, one sequence.
    {
      const int ctx = 1024, chunk = 512;
      kv::PagedKvCache cache({1, n_head_kv, hd, block, ctx / block, kv::KvFormat::kF16}, {&d});
      kv::SeqId s = cache.create_sequence();
      cache.reserve(s, ctx);
      std::vector<kv::SeqId> seqs{s};
      std::vector<int32_t> tseq(chunk, 0), tpos(chunk);
      for (int i = 0; i < chunk; ++i) tpos[size_t(i)] = ctx - chunk + i;
      kv::KvBatchBuffers batch(d);
      kv::KvBatchView view = batch.upload(cache.blocks(), seqs, tseq, tpos);
      ClMem qb = d.alloc(size_t(chunk) * n_head * hd * 4),
            ob = d.alloc(size_t(chunk) * n_head * hd * 4);
      std::vector<float> zeros(size_t(chunk) * n_head * hd, 0.1f);
      d.write(qb.get(), 0, zeros.data(), zeros.size() * 4);
      const double sec = time_per_call(d, std::max(1, o.reps / 4), [&] {
        op.prefill(view, cache.layer(0), qb.get(), 0, ob.get(), 0, 0, chunk);
      });
      // QK^T and PV over the causal triangle's visible part: 2 * 2 * hd flops per (query, key,
      // head).
      double pairs = 0;
      for (int i = 0; i < chunk; ++i) pairs += ctx - chunk + i + 1;
      const double flops = 4.0 * hd * n_head * pairs;
      std::printf("%-6s prefill head_dim %3d  chunk %d at ctx %d  %9.1f us  %7.1f GFLOP/s\n",
                  d.id().c_str(), hd, chunk, ctx, sec * 1e6, flops / sec / 1e9);
      std::fflush(stdout);
    }
  }
}

std::vector<int> parse_ints(const char* s) {
  std::vector<int> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) v.push_back(std::stoi(item));
  return v;
}

int run(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
      return argv[++i];
    };
    try {
      if (a == "--devices") {
        std::stringstream ss(next());
        std::string id;
        while (std::getline(ss, id, ',')) o.devices.push_back(id);
      } else if (a == "--reps") {
        o.reps = std::stoi(next());
      } else if (a == "--contexts") {
        o.contexts = parse_ints(next());
      } else if (a == "--head-dims") {
        o.head_dims = parse_ints(next());
      } else if (a == "--decode-items") {
        o.decode_items = std::stoi(next());
      } else if (a == "--batch") {
        o.batch = parse_ints(next());
      } else {
        std::fprintf(
            stderr,
            "usage: attention_bench [--devices cpu0,gpu0] [--reps N] [--contexts 1024,4096,16384]\n"
            "                       [--head-dims 64,128] [--batch 1,8] [--decode-items 128]\n");
        return a == "--help" ? 0 : 2;
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "attention_bench: %s\n", e.what());
      return 2;
    }
  }
  try {
    auto reg = tessera::cli::discover_devices();
    std::vector<const Device*> devs;
    if (o.devices.empty())
      for (const auto& d : reg.devices()) devs.push_back(d.get());
    else
      for (const auto& id : o.devices) devs.push_back(&reg.get(id));
    for (const Device* d : devs) {
      std::printf("# %s, GQA 32/8 heads, f16 KV, block 16\n", d->info().label().c_str());
      bench_device(*d, o);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "attention_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (...) {
    std::fprintf(stderr, "attention_bench: unexpected error\n");
    return 1;
  }
}
