// Matmul kernel benchmark: per device and weight format, decode GEMV GB/s (ggml weight bytes /
// median kernel time from profiling events) against the device's probed read bandwidth, prefill
// GEMM GFLOP/s (fused kernel and CLBlast path), a stacked-expert decode launch, and a variant
// sweep. Prints a table, or JSON with --json. Figures only: it never fails on speed.
#include <sys/resource.h>
#include <boost/json.hpp>
#include <boost/program_options.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <numeric>
#include <random>
#include <sstream>

#include "devices/probes.h"
#include "host/cli/settings.h"
#include "host/ops/device/matmul.h"
#include "host/ops/device/matmul_check.h"

namespace po = boost::program_options;
using namespace tessera;
using namespace tessera::ops;
using gguf::TensorType;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Process CPU time (user + system): on a CPU device under load from other processes, bytes per
// CPU-second shows the kernel's own cost, which wall time hides.
double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * double(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

double event_seconds(const Device& dev, cl_event ev) {
  cl_ulong s = 0, e = 0;
  CL_CHECK(clGetEventProfilingInfo(ev, CL_PROFILING_COMMAND_START, sizeof(s), &s, nullptr),
           dev.id());
  CL_CHECK(clGetEventProfilingInfo(ev, CL_PROFILING_COMMAND_END, sizeof(e), &e, nullptr), dev.id());
  return double(e - s) * 1e-9;
}

// Random ggml bytes quickly (the benchmark's weights reach 256 MB+): valid blocks come from
// random_ggml_weight on one row, then rows are copies with a rotated seed byte pattern; content
// does not change the kernels' speed, only sizes do.
std::vector<uint8_t> bench_weight(TensorType t, int64_t rows, int64_t cols, int64_t mats = 1) {
  const int64_t proto_rows = std::min<int64_t>(rows * mats, 64);
  const auto proto = random_ggml_weight(t, proto_rows, cols, 11);
  const uint64_t row_bytes = ggml_bytes(t, 1, cols);
  std::vector<uint8_t> w(ggml_bytes(t, rows, cols, mats));
  for (int64_t r = 0; r < rows * mats; ++r)
    std::memcpy(w.data() + r * row_bytes, proto.data() + (r % proto_rows) * row_bytes, row_bytes);
  return w;
}

struct Record {
  std::string device, device_name, kind, format, shape, variant, path;
  int tokens = 1;
  double seconds = 0, bytes = 0, flops = 0, probe_gbps = 0;
  double cpu_seconds = 0;  // process CPU time per launch (meaningful for CPU devices)
  double gbps() const { return seconds > 0 ? bytes / seconds * 1e-9 : 0; }
  double gflops() const { return seconds > 0 ? flops / seconds * 1e-9 : 0; }
};

class Bench {
 public:
  Bench(const Device& dev, double probe_gbps, int reps)
      : dev_(dev), probe_(probe_gbps), reps_(reps) {}

  // Median seconds of `launch` (one kernel: profiling event; several commands: host wall time).
  template <typename L>
  double time(L launch, bool single) {
    std::vector<double> t;
    double c0 = 0;
    for (int i = 0; i <= reps_; ++i) {
      if (i == 1) c0 = cpu_seconds();
      ClEvent ev;
      const auto t0 = std::chrono::steady_clock::now();
      launch(ev.out());
      dev_.finish();
      const auto t1 = std::chrono::steady_clock::now();
      if (i == 0) continue;
      t.push_back(single ? event_seconds(dev_, ev.get())
                         : std::chrono::duration<double>(t1 - t0).count());
    }
    last_cpu_ = (cpu_seconds() - c0) / reps_;
    return median(t);
  }
  double last_cpu() const { return last_cpu_; }

  Record dense(const MatmulOp& op, TensorType t, int64_t rows, int64_t cols, int tokens,
               const std::string& kind) {
    const auto w = bench_weight(t, rows, cols);
    const DeviceWeight dw = op.upload(t, rows, cols, w.data());
    ClMem x = dev_.alloc(size_t(tokens) * cols * 4), y = dev_.alloc(size_t(tokens) * rows * 4);
    std::vector<float> xv(size_t(tokens) * cols, 0.25f);
    dev_.write(x.get(), 0, xv.data(), xv.size() * 4);
    const auto& v = op.variant(t);
    const bool tiled = v.tiled_gemm_min_tokens > 0 && tokens >= v.tiled_gemm_min_tokens &&
                       expert_gemm_fits(dev_.info(), v);
    const bool clblast = !tiled && v.clblast_min_tokens > 0 && tokens >= v.clblast_min_tokens;
    Record r = base(kind, t, std::to_string(rows) + "x" + std::to_string(cols), v, tokens);
    r.path = tiled ? "tiled" : clblast ? "clblast" : "kernel";
    r.seconds =
        time([&](cl_event* ev) { op.run(dw, x.get(), 0, y.get(), 0, tokens, {}, ev); }, !clblast);
    r.cpu_seconds = last_cpu();
    r.bytes = double(dw.source_bytes);
    r.flops = 2.0 * rows * cols * tokens;
    return r;
  }

  // One launch of stacked experts: n_tokens tokens, each picking top_k distinct experts (decode:
  // one token; prefill: pairs sorted by expert as the MoE layer groups them, so runs of one
  // expert start anywhere inside a token tile).
  // gemm: the pairs' sort is promised (as the MoE layer does), so a device that has the tiled
  // expert GEMM runs it.
  Record experts(const MatmulOp& op, TensorType t, int n_expert, int64_t rows, int64_t cols,
                 int top_k, int n_tokens = 1, bool gemm = false) {
    const auto w = bench_weight(t, rows, cols, n_expert);
    const DeviceWeight dw = op.upload(t, rows, cols, w.data(), n_expert);
    const int n_pairs = n_tokens * top_k;
    ClMem x = dev_.alloc(size_t(n_tokens) * cols * 4), y = dev_.alloc(size_t(n_pairs) * rows * 4);
    std::vector<float> xv(size_t(n_tokens) * cols, 0.25f);
    dev_.write(x.get(), 0, xv.data(), xv.size() * 4);
    std::vector<std::pair<int32_t, int32_t>> pairs;  // (expert, token)
    std::mt19937 rng(7);
    for (int tk = 0; tk < n_tokens; ++tk) {
      std::vector<int32_t> e(n_expert);
      std::iota(e.begin(), e.end(), 0);
      if (n_tokens == 1)
        for (int i = 0; i < n_expert; ++i) e[i] = (i * 7) % n_expert;
      else
        std::shuffle(e.begin(), e.end(), rng);
      for (int i = 0; i < top_k; ++i) pairs.push_back({e[i], tk});
    }
    std::sort(pairs.begin(), pairs.end());
    std::vector<int32_t> tok(n_pairs), ex(n_pairs);
    for (int i = 0; i < n_pairs; ++i) std::tie(ex[i], tok[i]) = pairs[i];
    ClMem tm = dev_.alloc(n_pairs * 4), em = dev_.alloc(n_pairs * 4);
    dev_.write(tm.get(), 0, tok.data(), n_pairs * 4);
    dev_.write(em.get(), 0, ex.data(), n_pairs * 4);
    int max_run = 0;
    for (int i = 0, run = 0; i < n_pairs; ++i) {
      run = (i > 0 && ex[i] == ex[i - 1]) ? run + 1 : 1;
      max_run = std::max(max_run, run);
    }
    Record r = base(gemm ? "egemm" : "experts", t,
                    std::to_string(n_expert) + "x" + std::to_string(rows) + "x" +
                        std::to_string(cols) + " top" + std::to_string(top_k),
                    op.variant(t), n_tokens);
    r.path = "kernel";
    r.seconds = time(
        [&](cl_event* ev) {
          op.run_experts(dw, x.get(), 0, n_tokens, y.get(), 0, tm.get(), em.get(), n_pairs, {}, ev,
                         false, gemm ? max_run : 0);
        },
        true);
    r.cpu_seconds = last_cpu();
    r.bytes = double(ggml_bytes(t, rows, cols)) * std::min(n_pairs, n_expert);
    r.flops = 2.0 * rows * cols * n_pairs;
    return r;
  }

 private:
  Record base(const std::string& kind, TensorType t, const std::string& shape,
              const MatmulVariant& v, int tokens) const {
    Record r;
    r.device = dev_.id();
    r.device_name = dev_.info().name;
    r.kind = kind;
    r.format = std::string(gguf::type_name(t));
    r.shape = shape;
    r.variant = v.str();
    r.tokens = tokens;
    r.probe_gbps = probe_;
    return r;
  }
  const Device& dev_;
  double probe_;
  int reps_;
  double last_cpu_ = 0;
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string p; std::getline(ss, p, ',');)
    if (!p.empty()) out.push_back(p);
  return out;
}

void print(const Record& r) {
  std::printf(
      "%-6s %-8s %-6s %-22s t=%-4d %-8s %9.3f ms %8.1f GB/s %6.1f%% %9.1f GFLOP/s %7.1f GB/cpu-s  "
      "[%s]\n",
      r.device.c_str(), r.kind.c_str(), r.format.c_str(), r.shape.c_str(), r.tokens, r.path.c_str(),
      r.seconds * 1e3, r.gbps(), 100.0 * r.gbps() / r.probe_gbps, r.gflops(),
      r.cpu_seconds > 0 ? r.bytes / r.cpu_seconds * 1e-9 : 0.0, r.variant.c_str());
  std::fflush(stdout);
}

// Variants tried by --tune on a device of this type.
std::vector<MatmulVariant> tune_variants(const DeviceInfo& info) {
  std::vector<MatmulVariant> v;
  if (info.type == DeviceType::kCpu) {
    for (int wg : {4, 16, 64})
      for (int rpw : {1, 2}) v.push_back({1, wg, rpw, true, 0});
  } else {
    for (int lanes : {16, 32})
      for (int wg : {2, 4, 8})
        for (int rpw : {1, 2, 4})
          if (lanes * wg <= int(info.max_work_group_size)) v.push_back({lanes, wg, rpw, false, 0});
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  po::options_description desc(
      "matmul_bench: matmul kernel GB/s and GFLOP/s per device and format");
  std::string devices, formats, modes;
  int reps = 10;
  desc.add_options()("help,h", "this help")("devices", po::value(&devices)->default_value(""),
                                            "device ids (gpu0,cpu0); default all")(
      "formats", po::value(&formats)->default_value(""), "formats (q4_0,q8_0,...); default all 12")(
      "modes", po::value(&modes)->default_value("gemv,big,gemm,experts"),
      "gemv (4096x14336, 14336x4096), big (a >= 256 MB weight), gemm (prefill, kernel and "
      "CLBlast), "
      "experts (MoE decode launch), tune (variant sweep, GEMV), egemm (the tiled expert GEMM's "
      "tile shapes, prefill)")("gemm-tokens", po::value<std::string>()->default_value("64,512"),
                               "prefill token counts")("reps", po::value(&reps)->default_value(10),
                                                       "timed repetitions (median)")(
      "json", "print JSON instead of a table")(
      "json-out", po::value<std::string>()->default_value(""), "also write the JSON to this file");
  po::variables_map vm;
  try {
    po::store(po::parse_command_line(argc, argv, desc), vm);
    po::notify(vm);
  } catch (const std::exception& e) {
    std::cerr << "matmul_bench: " << e.what() << "\n" << desc;
    return 2;
  }
  if (vm.count("help")) {
    std::cout << desc;
    return 0;
  }
  const bool json = vm.count("json") > 0;
  try {
    const DeviceRegistry reg = tessera::cli::discover_devices();
    std::vector<const Device*> devs;
    if (devices.empty()) {
      for (const auto& d : reg.devices()) devs.push_back(d.get());
    } else {
      for (const auto& id : split(devices)) devs.push_back(&reg.get(id));
    }
    std::vector<TensorType> types;
    if (formats.empty()) {
      types = matmul_types();
    } else {
      for (const auto& f : split(formats)) {
        const auto t = gguf::type_from_name(f);
        if (!t || !weight_format(*t)) throw std::runtime_error("--formats: unknown format " + f);
        types.push_back(*t);
      }
    }
    std::vector<int> gemm_tokens;
    for (const auto& s : split(vm["gemm-tokens"].as<std::string>()))
      gemm_tokens.push_back(std::stoi(s));
    const auto mode_list = split(modes);
    auto has = [&](const char* m) {
      return std::find(mode_list.begin(), mode_list.end(), m) != mode_list.end();
    };

    boost::json::array out;
    auto emit = [&](const Record& r) {
      if (!json) print(r);
      out.push_back({{"device", r.device},
                     {"device_name", r.device_name},
                     {"kind", r.kind},
                     {"format", r.format},
                     {"shape", r.shape},
                     {"tokens", r.tokens},
                     {"path", r.path},
                     {"variant", r.variant},
                     {"seconds", r.seconds},
                     {"bytes", r.bytes},
                     {"gbps", r.gbps()},
                     {"probe_read_gbps", r.probe_gbps},
                     {"fraction_of_probe", r.gbps() / r.probe_gbps},
                     {"gflops", r.gflops()},
                     {"cpu_seconds", r.cpu_seconds}});
    };
    ProbeCache probes = tessera::cli::probe_cache();
    for (const Device* dev : devs) {
      const ProbeResult probe = probes.get(*dev, false);
      if (!json)
        std::printf("# %s: probed read %.1f GB/s (%s), fp32 %.0f GFLOP/s\n",
                    dev->info().label().c_str(), probe.read_gbps, probe.read_pattern.c_str(),
                    probe.fp32_gflops);
      Bench b(*dev, probe.read_gbps, reps);
      MatmulOp op(*dev);
      const bool cpu = dev->info().type == DeviceType::kCpu;
      for (TensorType t : types) {
        if (has("gemv")) {
          emit(b.dense(op, t, 4096, 14336, 1, "gemv"));
          emit(b.dense(op, t, 14336, 4096, 1, "gemv"));
        }
        if (has("big")) {
          // >= 256 MB of ggml bytes, 4096 columns, rows a multiple of 256.
          const uint64_t row_bytes = ggml_bytes(t, 1, 4096);
          const int64_t rows = int64_t(((256ull << 20) / row_bytes + 255) / 256 * 256);
          if (ggml_bytes(t, rows, 4096) <= dev->info().max_alloc_bytes)
            emit(b.dense(op, t, rows, 4096, 1, "gemv"));
        }
        if (has("gemm")) {
          for (int n : gemm_tokens) {
            if (cpu && n > 64) continue;  // minutes on a 2-core CPU; 64 tokens shows the rate
            MatmulVariant kv = op.variant(t);
            kv.clblast_min_tokens = 0;
            kv.tiled_gemm_min_tokens = 0;
            MatmulOp kernel_op(*dev, kv);
            emit(b.dense(kernel_op, t, 4096, 14336, n, "gemm"));
            MatmulVariant cv = kv;
            cv.clblast_min_tokens = 1;
            MatmulOp clblast_op(*dev, cv);
            emit(b.dense(clblast_op, t, 4096, 14336, n, "gemm"));
            if (!cpu && expert_gemm_fits(dev->info(), kv)) {
              MatmulVariant tv = kv;
              tv.tiled_gemm_min_tokens = 1;
              MatmulOp tiled_op(*dev, tv);
              emit(b.dense(tiled_op, t, 4096, 14336, n, "gemm"));
            }
          }
        }
        if (has("experts")) {
          emit(b.experts(op, t, 64, 1536, 2048, 8));
          // The benchmark model's gate|up and down shapes, a prefill chunk of 128 tokens.
          emit(b.experts(op, t, 32, 1024, 1024, 4, 128));
          emit(b.experts(op, t, 32, 1024, 512, 4, 128));
        }
        if (has("egemm") && expert_gemm_fits(dev->info())) {
          // The benchmark model's gate|up and down shapes for a 512-token step, each tile shape.
          for (const auto& tile : expert_gemm_tiles()) {
            MatmulVariant v = op.variant(t);
            v.set_gemm_tile(tile);
            v.expert_gemm_min_run = 1;
            if (!expert_gemm_fits(dev->info(), v)) continue;
            MatmulOp vop(*dev, v);
            emit(b.experts(vop, t, 32, 1024, 1024, 4, 512, true));
            emit(b.experts(vop, t, 32, 1024, 512, 4, 512, true));
            // A dense projection (q|k|v of the benchmark model) as one expert's 512 pairs.
            emit(b.experts(vop, t, 1, 1536, 1024, 1, 512, true));
          }
          // The same dense projection by dequantize + CLBlast and by the tiled GEMM's dense mode.
          MatmulVariant cv = op.variant(t);
          cv.clblast_min_tokens = 1;
          cv.tiled_gemm_min_tokens = 0;
          MatmulOp clblast_op(*dev, cv);
          emit(b.dense(clblast_op, t, 1536, 1024, 512, "gemm"));
          MatmulVariant tv = op.variant(t);
          tv.tiled_gemm_min_tokens = 1;
          MatmulOp tiled_op(*dev, tv);
          emit(b.dense(tiled_op, t, 1536, 1024, 512, "gemm"));
        }
        if (has("tune")) {
          for (const auto& v : tune_variants(dev->info())) {
            MatmulOp vop(*dev, v);
            emit(b.dense(vop, t, 4096, 14336, 1, "tune"));
            emit(b.dense(vop, t, 14336, 4096, 1, "tune"));
            emit(b.dense(vop, t, 2048, 2048, 64, "tune"));  // a prefill chunk: 8-token tiles
            // The benchmark model's expert GEMVs (gate|up, down) of one decode token.
            emit(b.experts(vop, t, 32, 1024, 1024, 4));
            emit(b.experts(vop, t, 32, 1024, 512, 4));
          }
        }
      }
    }
    if (json) std::cout << boost::json::serialize(out) << "\n";
    if (const auto& path = vm["json-out"].as<std::string>(); !path.empty()) {
      std::FILE* f = std::fopen(path.c_str(), "w");
      if (!f) throw std::runtime_error("--json-out: cannot write " + path);
      const std::string text = boost::json::serialize(out) + "\n";
      std::fwrite(text.data(), 1, text.size(), f);
      std::fclose(f);
    }
  } catch (const std::exception& e) {
    std::cerr << "matmul_bench: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
