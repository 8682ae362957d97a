// attention_bench: decode attention time over a paged KV cache of each format (f16, q8_0,
// TurboQuant... K and V chosen separately) at long contexts (default 4K, 16K and 64K tokens), head
// sizes 64 and 128 (GQA 32 query / 8 KV heads), plus one prefill figure per format, on every device
// (or those named by --devices). The cache is filled through the op's own KV write (quantized on
// write, as the engine does) with random values; the timed call is AttentionOp::decode alone (the
// split-K partial kernel and its reduce). Each sample is the wall time of back-to-back calls on the
// in-order queue divided by their count; the median and the minimum of --reps samples are printed.
// GB/s counts the K and V bytes of the cache rows a decode step reads. Figures only: it never fails
// on speed. Prints a table, or JSON with --json.
#include <boost/json.hpp>

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "host/cli/settings.h"
#include "host/kv/kv_batch.h"
#include "host/kv/paged_kv_cache.h"
#include "host/ops/device/attention.h"

using namespace tessera;

namespace {

struct FormatPair {
  kv::KvFormat k = kv::KvFormat::kF16, v = kv::KvFormat::kF16;
  std::string name() const {
    return k == v ? std::string(kv::kv_format_name(k))
                  : std::string(kv::kv_format_name(k)) + "/" + std::string(kv::kv_format_name(v));
  }
};

struct Options {
  std::vector<std::string> devices;
  int reps = 15;
  std::vector<int> contexts{4096, 16384, 65536};
  std::vector<int> head_dims{64, 128};
  std::vector<int> batch{1};
  std::vector<FormatPair> formats{{kv::KvFormat::kF16, kv::KvFormat::kF16},
                                  {kv::KvFormat::kQ8_0, kv::KvFormat::kQ8_0},
                                  {kv::KvFormat::kTurbo3, kv::KvFormat::kTurbo3}};
  int decode_items = 0;      // work-group decode kernel size (= tile) instead of the device default
  bool decode_rows = false;  // the row-streaming decode kernel (the CPU default) on any device
  int decode_variant = -1;   // AttentionTuning::decode_variant instead of the default
  int decode_lut = -1;       // AttentionTuning::decode_lut (0/1) instead of the default
  int decode_groups_per_cu = 0;  // AttentionTuning::decode_groups_per_cu instead of the default
  bool prefill = true;
  bool json = false;
  std::string json_out;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Timing {
  double median_s = 0, min_s = 0;
  double cpu_s = 0;  // process CPU time per call (median): a CPU device's own cost on a shared host
  int calls_per_sample = 1;
};

double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

// Seconds per call of `launch`: after a warm-up call, `reps` samples, each the wall time of
// `per_sample` back-to-back launches (queue drained before and after) over their count;
// per_sample is chosen from the warm-up so a sample lasts at least ~2 ms (launch overhead hidden
// behind queued work where the device runs asynchronously).
template <typename F>
Timing time_calls(const Device& d, int reps, F&& launch) {
  using Clock = std::chrono::steady_clock;
  double cpu = 0;
  auto sample = [&](int n) {
    d.finish();
    const auto t0 = Clock::now();
    const double c0 = process_cpu_seconds();
    for (int i = 0; i < n; ++i) launch();
    d.finish();
    cpu = (process_cpu_seconds() - c0) / n;
    return std::chrono::duration<double>(Clock::now() - t0).count() / n;
  };
  sample(1);  // warm-up: program caches, first-touch of buffers
  const double first = sample(1);
  Timing t;
  t.calls_per_sample = std::clamp(int(2e-3 / std::max(first, 1e-7)), 1, 64);
  std::vector<double> s, c;
  for (int r = 0; r < reps; ++r) {
    s.push_back(sample(t.calls_per_sample));
    c.push_back(cpu);
  }
  t.median_s = median(s);
  t.min_s = *std::min_element(s.begin(), s.end());
  t.cpu_s = median(c);
  return t;
}

// Fills positions [0, ctx) of every sequence through the op's KV write (random values in [-1, 1],
// one chunk of random rows reused), so the cache holds what the format's quantizer produces.
void fill_cache(const Device& d, ops::AttentionOp& op, kv::PagedKvCache& cache,
                const std::vector<kv::SeqId>& seqs, int ctx) {
  const auto& L = op.config().pool;
  const int chunk = std::min(ctx, 4096);
  std::vector<float> rows(size_t(chunk) * L.n_head_kv * L.head_dim);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (auto& x : rows) x = u(rng);
  ClMem kb = d.alloc(rows.size() * 4), vb = d.alloc(rows.size() * 4);
  d.write(kb.get(), 0, rows.data(), rows.size() * 4);
  for (auto& x : rows) x = u(rng);
  d.write(vb.get(), 0, rows.data(), rows.size() * 4);
  kv::KvBatchBuffers batch(d);
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (int p0 = 0; p0 < ctx; p0 += chunk) {
      const int n = std::min(chunk, ctx - p0);
      std::vector<int32_t> tseq(static_cast<size_t>(n), int32_t(s)), tpos(static_cast<size_t>(n));
      for (int i = 0; i < n; ++i) tpos[size_t(i)] = p0 + i;
      const kv::KvBatchView view = batch.upload(cache.blocks(), seqs, tseq, tpos);
      op.write_kv(view, cache.layer(0), kb.get(), 0, vb.get(), 0, 0, n);
      d.finish();  // the batch buffer's host copies alternate: keep at most one upload in flight
    }
  }
}

boost::json::object bench_decode(const Device& d, const Options& o, const FormatPair& f, int hd,
                                 int n_seqs, int ctx) {
  const int n_head = 32, n_head_kv = 8, block = 16;
  ops::AttentionConfig cfg{n_head, {f.k, 0, block, n_head_kv, hd}};
  cfg.v_format = f.v;
  ops::AttentionTuning tuning = ops::default_attention_tuning(d, cfg);
  if (o.decode_items > 0) {
    tuning.decode_rows = false;
    tuning.decode_items = tuning.decode_tile = o.decode_items;
  }
  if (o.decode_rows) {
    tuning.decode_rows = true;
    tuning.decode_items = 1;
    tuning.decode_tile = 64;
  }
  if (o.decode_variant >= 0) tuning.decode_variant = o.decode_variant;
  if (o.decode_lut >= 0) tuning.decode_lut = o.decode_lut != 0;
  if (o.decode_groups_per_cu > 0) tuning.decode_groups_per_cu = o.decode_groups_per_cu;
  ops::AttentionOp op(d, cfg, tuning);
  const int32_t blocks_per_seq = (ctx + block - 1) / block;
  kv::PagedKvCache cache({1, n_head_kv, hd, block, blocks_per_seq * n_seqs, f.k, f.v}, {&d});
  std::vector<kv::SeqId> seqs;
  std::vector<int32_t> tseq, tpos;
  for (int s = 0; s < n_seqs; ++s) {
    seqs.push_back(cache.create_sequence());
    cache.reserve(seqs.back(), ctx);
    tseq.push_back(s);
    tpos.push_back(ctx - 1);
  }
  fill_cache(d, op, cache, seqs, ctx);
  kv::KvBatchBuffers batch(d);
  kv::KvBatchView view = batch.upload(cache.blocks(), seqs, tseq, tpos);
  std::vector<float> q(size_t(n_seqs) * n_head * hd);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (auto& x : q) x = u(rng);
  ClMem qb = d.alloc(q.size() * 4), ob = d.alloc(q.size() * 4);
  d.write(qb.get(), 0, q.data(), q.size() * 4);
  const size_t ws_bytes = op.decode_workspace_bytes(n_seqs, view.context_capacity);
  ClMem ws = d.alloc(ws_bytes);
  const Timing t = time_calls(d, o.reps, [&] {
    op.decode(view, cache.layer(0), qb.get(), 0, ob.get(), 0, 0, n_seqs, ws.get(), ws_bytes);
  });
  const double row_bytes = double(cache.layout(0, kv::KvPart::kK).token_head_bytes() +
                                  cache.layout(0, kv::KvPart::kV).token_head_bytes());
  const double bytes = double(n_seqs) * ctx * n_head_kv * row_bytes;
  const auto split = op.decode_split(n_seqs, view.context_capacity);
  boost::json::object r;
  r["device"] = d.id();
  r["kind"] = "decode";
  r["k_format"] = std::string(kv::kv_format_name(f.k));
  r["v_format"] = std::string(kv::kv_format_name(f.v));
  r["head_dim"] = hd;
  r["seqs"] = n_seqs;
  r["ctx"] = ctx;
  r["chunks"] = split.n_chunks;
  const std::string kernel =
      (tuning.decode_rows ? std::string("rows")
                          : "work-group " + std::to_string(tuning.decode_items)) +
      " v" + std::to_string(tuning.decode_variant) + (tuning.decode_lut ? " lut" : "") + " x" +
      std::to_string(tuning.decode_groups_per_cu);
  r["kernel"] = kernel;
  r["kv_bytes"] = bytes;
  r["median_us"] = t.median_s * 1e6;
  r["min_us"] = t.min_s * 1e6;
  r["cpu_us"] = t.cpu_s * 1e6;
  r["calls_per_sample"] = t.calls_per_sample;
  r["reps"] = o.reps;
  r["gbps"] = bytes / t.median_s / 1e9;
  if (!o.json) {
    std::printf(
        "%-6s decode  %-13s head_dim %3d  seqs %2d  ctx %6d  chunks %3d  %-20s %10.1f us (min "
        "%10.1f, cpu %10.1f)  %7.1f GB/s  %8.1f MB read\n",
        d.id().c_str(), f.name().c_str(), hd, n_seqs, ctx, split.n_chunks, kernel.c_str(),
        t.median_s * 1e6, t.min_s * 1e6, t.cpu_s * 1e6, bytes / t.median_s / 1e9, bytes / 1e6);
    std::fflush(stdout);
  }
  return r;
}

// One prefill figure: a 512-token chunk at the end of a 1K context, one sequence.
boost::json::object bench_prefill(const Device& d, const Options& o, const FormatPair& f, int hd) {
  const int n_head = 32, n_head_kv = 8, block = 16, ctx = 1024, chunk = 512;
  ops::AttentionConfig cfg{n_head, {f.k, 0, block, n_head_kv, hd}};
  cfg.v_format = f.v;
  ops::AttentionOp op(d, cfg);
  kv::PagedKvCache cache({1, n_head_kv, hd, block, ctx / block, f.k, f.v}, {&d});
  kv::SeqId s = cache.create_sequence();
  cache.reserve(s, ctx);
  std::vector<kv::SeqId> seqs{s};
  fill_cache(d, op, cache, seqs, ctx);
  std::vector<int32_t> tseq(chunk, 0), tpos(chunk);
  for (int i = 0; i < chunk; ++i) tpos[size_t(i)] = ctx - chunk + i;
  kv::KvBatchBuffers batch(d);
  kv::KvBatchView view = batch.upload(cache.blocks(), seqs, tseq, tpos);
  ClMem qb = d.alloc(size_t(chunk) * n_head * hd * 4),
        ob = d.alloc(size_t(chunk) * n_head * hd * 4);
  std::vector<float> qv(size_t(chunk) * n_head * hd, 0.1f);
  d.write(qb.get(), 0, qv.data(), qv.size() * 4);
  const Timing t = time_calls(d, std::max(3, o.reps / 4), [&] {
    op.prefill(view, cache.layer(0), qb.get(), 0, ob.get(), 0, 0, chunk);
  });
  // QK^T and PV over the causal triangle's visible part: 2 * 2 * hd flops per (query, key, head).
  double pairs = 0;
  for (int i = 0; i < chunk; ++i) pairs += ctx - chunk + i + 1;
  const double flops = 4.0 * hd * n_head * pairs;
  boost::json::object r;
  r["device"] = d.id();
  r["kind"] = "prefill";
  r["k_format"] = std::string(kv::kv_format_name(f.k));
  r["v_format"] = std::string(kv::kv_format_name(f.v));
  r["head_dim"] = hd;
  r["chunk"] = chunk;
  r["ctx"] = ctx;
  r["median_us"] = t.median_s * 1e6;
  r["min_us"] = t.min_s * 1e6;
  r["gflops"] = flops / t.median_s / 1e9;
  if (!o.json) {
    std::printf("%-6s prefill %-13s head_dim %3d  chunk %d at ctx %d  %10.1f us  %7.1f GFLOP/s\n",
                d.id().c_str(), f.name().c_str(), hd, chunk, ctx, t.median_s * 1e6,
                flops / t.median_s / 1e9);
    std::fflush(stdout);
  }
  return r;
}

std::vector<int> parse_ints(const std::string& flag, const char* s) {
  std::vector<int> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    int x = 0;
    try {
      x = std::stoi(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || x < 1)
      throw std::runtime_error(flag + ": '" + item + "' is not a positive integer");
    v.push_back(x);
  }
  if (v.empty()) throw std::runtime_error(flag + ": empty list");
  return v;
}

// An integer in [0, most].
int parse_choice(const std::string& flag, const char* s, int most) {
  const std::string v(s);
  if (v.size() == 1 && v[0] >= '0' && v[0] - '0' <= most) return v[0] - '0';
  throw std::runtime_error(flag + ": '" + v + "' is not an integer in [0, " + std::to_string(most) +
                           "]");
}

kv::KvFormat parse_format(const std::string& name) {
  const auto f = kv::kv_format_from_name(name);
  if (!f)
    throw std::runtime_error("--formats: '" + name + "' is not a KV format (" +
                             kv::kv_format_names() + ")");
  return *f;
}

// "f16,q8_0,q8_0/turbo3": a name for K and V alike, or K/V.
std::vector<FormatPair> parse_formats(const char* s) {
  std::vector<FormatPair> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const size_t slash = item.find('/');
    const kv::KvFormat k = parse_format(item.substr(0, slash));
    const kv::KvFormat vf = slash == std::string::npos ? k : parse_format(item.substr(slash + 1));
    v.push_back({k, vf});
  }
  if (v.empty()) throw std::runtime_error("--formats: empty list");
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
        o.reps = parse_ints(a, next()).front();
      } else if (a == "--contexts") {
        o.contexts = parse_ints(a, next());
      } else if (a == "--head-dims") {
        o.head_dims = parse_ints(a, next());
      } else if (a == "--decode-items") {
        o.decode_items = parse_ints(a, next()).front();
      } else if (a == "--decode-rows") {
        o.decode_rows = true;
      } else if (a == "--decode-variant") {
        o.decode_variant = parse_choice(a, next(), 1);
      } else if (a == "--decode-lut") {
        o.decode_lut = parse_choice(a, next(), 1);
      } else if (a == "--decode-groups-per-cu") {
        o.decode_groups_per_cu = parse_ints(a, next()).front();
      } else if (a == "--batch") {
        o.batch = parse_ints(a, next());
      } else if (a == "--formats") {
        o.formats = parse_formats(next());
      } else if (a == "--no-prefill") {
        o.prefill = false;
      } else if (a == "--json") {
        o.json = true;
      } else if (a == "--json-out") {
        o.json_out = next();
      } else {
        if (a != "--help")
          std::fprintf(stderr, "attention_bench: unknown option '%s'\n", a.c_str());
        std::fprintf(
            a == "--help" ? stdout : stderr,
            "usage: attention_bench [--devices cpu0,gpu0] [--formats f16,q8_0,turbo3,q8_0/turbo3]\n"
            "                       [--contexts 4096,16384,65536] [--head-dims 64,128] [--batch "
            "1]\n"
            "                       [--reps 15] [--decode-items 128] [--decode-rows]\n"
            "                       [--decode-variant 0|1] [--decode-lut 0|1]\n"
            "                       [--decode-groups-per-cu 4] [--no-prefill] [--json]\n"
            "                       [--json-out FILE]\n");
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
    boost::json::array rows;
    for (const Device* d : devs) {
      if (!o.json)
        std::printf("# %s, GQA 32/8 heads, block 16; median of %d samples\n",
                    d->info().label().c_str(), o.reps);
      for (int hd : o.head_dims)
        for (const FormatPair& f : o.formats) {
          for (int n_seqs : o.batch)
            for (int ctx : o.contexts) rows.push_back(bench_decode(*d, o, f, hd, n_seqs, ctx));
          if (o.prefill) rows.push_back(bench_prefill(*d, o, f, hd));
        }
    }
    const std::string text = boost::json::serialize(rows) + "\n";
    if (o.json) std::cout << text;
    if (!o.json_out.empty()) {
      std::ofstream out(o.json_out);
      if (!(out << text)) throw std::runtime_error("--json-out: cannot write " + o.json_out);
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
