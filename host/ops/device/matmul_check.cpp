// Matmul test data, scalar reference and device-vs-reference checks (see matmul_check.h).
#include "host/ops/device/matmul_check.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "host/common/error.h"
#include "host/common/half.h"
#include "host/ops/quant/quant.h"
#include "host/ops/reference/attention.h"
#include "host/ops/reference/kv_codec.h"
#include "host/ops/reference/norm.h"
#include "host/ops/reference/rope.h"

namespace tessera::ops {

namespace {

using gguf::TensorType;

// Offsets of the fp16 scale fields inside each ggml block (blocks.h); `dmin`-like fields second.
std::vector<uint32_t> half_fields(TensorType t) {
  switch (t) {
    case TensorType::Q4_0:
    case TensorType::Q5_0:
    case TensorType::Q8_0:
      return {0};
    case TensorType::Q4_1:
    case TensorType::Q4_K:
    case TensorType::Q5_K:
      return {0, 2};
    case TensorType::Q6_K:
      return {208};
    case TensorType::TQ1_0:
      return {52};
    case TensorType::TQ2_0:
      return {64};
    default:
      return {};
  }
}

constexpr uint32_t kGuardFloats = 1024;
constexpr float kGuardValue = -12345.5f;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double event_seconds(const Device& dev, cl_event ev) {
  CL_CHECK(clWaitForEvents(1, &ev), dev.info().label());
  cl_ulong s = 0, e = 0;
  CL_CHECK(clGetEventProfilingInfo(ev, CL_PROFILING_COMMAND_START, sizeof(s), &s, nullptr),
           dev.info().label());
  CL_CHECK(clGetEventProfilingInfo(ev, CL_PROFILING_COMMAND_END, sizeof(e), &e, nullptr),
           dev.info().label());
  return double(e - s) * 1e-9;
}

// Median over `reps` launches after a warm-up. `single_kernel`: time from the launch's profiling
// event; otherwise (CLBlast path: several commands) host time of launch + finish.
template <typename Launch>
double time_launches(const Device& dev, Launch launch, bool single_kernel, int reps) {
  std::vector<double> t;
  for (int i = 0; i <= reps; ++i) {
    ClEvent ev;
    const auto t0 = std::chrono::steady_clock::now();
    launch(ev.out());
    dev.finish();
    const auto t1 = std::chrono::steady_clock::now();
    if (i == 0) continue;
    t.push_back(single_kernel ? event_seconds(dev, ev.get())
                              : std::chrono::duration<double>(t1 - t0).count());
  }
  return median(t);
}

void compare_into(MatmulCheck& r, const std::vector<float>& got, const std::vector<float>& ref,
                  double tol) {
  double max_ref = 0, se = 0, sr = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    max_ref = std::max(max_ref, double(std::fabs(ref[i])));
    if (!std::isfinite(got[i])) {
      ++r.nonfinite;
      continue;
    }
    const double d = double(got[i]) - double(ref[i]);
    r.max_abs = std::max(r.max_abs, std::fabs(d));
    se += d * d;
    sr += double(ref[i]) * double(ref[i]);
  }
  r.max_rel = max_ref > 0 ? r.max_abs / max_ref : r.max_abs;
  r.nmse = sr > 0 ? se / sr : se;
  if (!r.guard_intact)
    r.note = "out-of-bounds write past the output";
  else if (r.nonfinite)
    r.note = std::to_string(r.nonfinite) + " NaN/Inf outputs";
  else if (r.max_rel > tol)
    r.note = "max_rel " + std::to_string(r.max_rel) + " above tolerance " + std::to_string(tol);
  r.pass = r.note.empty();
}

// Output buffer of n floats plus a guard zone; filled with NaN so unwritten outputs fail.
ClMem guarded_output(const Device& dev, size_t n) {
  std::vector<float> init(n + kGuardFloats, kGuardValue);
  std::fill(init.begin(), init.begin() + n, std::nanf(""));
  ClMem m = dev.alloc(init.size() * sizeof(float));
  dev.write(m.get(), 0, init.data(), init.size() * sizeof(float));
  return m;
}

std::vector<float> read_guarded(const Device& dev, cl_mem m, size_t n, bool& intact) {
  std::vector<float> all(n + kGuardFloats);
  dev.read(m, 0, all.data(), all.size() * sizeof(float));
  intact = std::all_of(all.begin() + n, all.end(), [](float v) { return v == kGuardValue; });
  all.resize(n);
  return all;
}

std::vector<float> random_x(size_t n, uint32_t seed) {
  std::mt19937 rng(seed * 7919u + 17u);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = u(rng);
  return x;
}

// silu(gate) * up of n rows of [gate | up] (2 * cols floats each): act.cl's SwiGLU, the input the
// X_SWIGLU kernels compute from such rows.
std::vector<float> swiglu_rows(const std::vector<float>& gate_up, int n, int64_t cols) {
  std::vector<float> x(size_t(n) * cols);
  for (int r = 0; r < n; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const float g = gate_up[size_t(r) * 2 * cols + c];
      const float u = gate_up[size_t(r) * 2 * cols + cols + c];
      x[size_t(r) * cols + c] = g / (1.0f + std::exp(-g)) * u;
    }
  return x;
}

// A device copy of 32-bit words (ids, offsets, floats); at least one word allocated.
template <class V>
ClMem upload_words(const Device& dev, const V& v) {
  ClMem m = dev.alloc(std::max<size_t>(4, v.size() * 4));
  dev.write(m.get(), 0, v.data(), v.size() * 4);
  return m;
}

// How many distinct experts the pairs name (the weights a launch streams).
size_t count_distinct(const std::vector<int32_t>& experts) {
  std::vector<int32_t> d(experts.begin(), experts.end());
  std::sort(d.begin(), d.end());
  return size_t(std::unique(d.begin(), d.end()) - d.begin());
}

}  // namespace

std::vector<uint8_t> random_ggml_weight(TensorType t, int64_t rows, int64_t cols, uint32_t seed,
                                        int64_t n_mats) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const uint64_t n = ggml_bytes(t, rows, cols, n_mats);
  std::vector<uint8_t> out(n);
  if (t == TensorType::F32 || t == TensorType::F16 || t == TensorType::BF16) {
    const uint64_t count = uint64_t(n_mats) * rows * cols;
    for (uint64_t i = 0; i < count; ++i) {
      const float v = u(rng);
      if (t == TensorType::F32) {
        std::memcpy(out.data() + 4 * i, &v, 4);
      } else {
        const uint16_t h = t == TensorType::F16 ? fp32_to_fp16(v) : fp32_to_bf16(v);
        std::memcpy(out.data() + 2 * i, &h, 2);
      }
    }
    return out;
  }
  std::uniform_int_distribution<uint32_t> byte(0, 255);
  for (auto& b : out) b = uint8_t(byte(rng));
  const auto* tr = gguf::type_traits(t);
  const auto fields = half_fields(t);
  for (uint64_t off = 0; off < n; off += tr->block_bytes) {
    for (size_t f = 0; f < fields.size(); ++f) {
      // Scales ~1/16, mins positive as ggml's quantizers write them.
      const float v = f == 0 ? u(rng) * 0.0625f : std::fabs(u(rng)) * 0.0625f;
      const uint16_t h = fp32_to_fp16(v);
      std::memcpy(out.data() + off + fields[f], &h, 2);
    }
    // MXFP4's exponent byte: scales 2^-6 .. 2^-2 (a random byte would reach 2^127).
    if (t == TensorType::MXFP4) out[off] = uint8_t(121 + byte(rng) % 5);
  }
  return out;
}

std::vector<float> reference_matmul(TensorType t, int64_t rows, int64_t cols, const void* w,
                                    const float* x, int n_tokens, int64_t mat) {
  const uint64_t row_bytes = ggml_bytes(t, 1, cols);
  const auto* base = static_cast<const uint8_t*>(w) + uint64_t(mat) * rows * row_bytes;
  std::vector<float> y(size_t(n_tokens) * rows);
  std::vector<float> wr(cols);
  for (int64_t r = 0; r < rows; ++r) {
    quant::dequantize_row(t, base + r * row_bytes, wr.data(), cols);
    for (int tk = 0; tk < n_tokens; ++tk) {
      const float* xr = x + size_t(tk) * cols;
      double s = 0;
      for (int64_t c = 0; c < cols; ++c) s += double(wr[c]) * double(xr[c]);
      y[size_t(tk) * rows + r] = float(s);
    }
  }
  return y;
}

std::vector<float> quantize_x_q8(const float* x, int64_t cols, int n_rows, bool any_length) {
  std::vector<float> out(x, x + size_t(n_rows) * size_t(cols));
  const int64_t runs = cols / 32 / 4;
  if (!any_length && runs > MatmulVariant::kXq8MaxGroups) return out;  // the kernels' float path
  for (int r = 0; r < n_rows; ++r) {
    float* row = out.data() + size_t(r) * size_t(cols);
    for (int64_t b = 0; b < 4 * runs; ++b) {
      float* v = row + b * 32;
      float amax = 0.0f;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(v[i]));
      const float d = amax * (1.0f / 127.0f), id = amax > 0.0f ? 127.0f / amax : 0.0f;
      for (int i = 0; i < 32; ++i) {
        // As the kernel: x id + copysign(0.5, x), truncated (in float, step by step).
        const float scaled = v[i] * id;
        const float q = std::trunc(scaled + std::copysign(0.5f, v[i]));
        v[i] = q * d;
      }
    }
  }
  return out;
}

double matmul_tolerance(TensorType t) {
  switch (t) {
    case TensorType::Q4_1:
    case TensorType::Q4_K:
    case TensorType::Q5_K:
      return 5e-5;
    default:
      return 2e-5;
  }
}

MatmulCheck check_matmul(const MatmulOp& op, TensorType t, int64_t rows, int64_t cols, int n_tokens,
                         bool timing, uint32_t seed) {
  const Device& dev = op.device();
  const auto w = random_ggml_weight(t, rows, cols, seed);
  const auto x = random_x(size_t(n_tokens) * cols, seed);
  // One token on a device whose program quantizes x, or a prefill tile on xq: the reference
  // takes the same 8-bit x.
  const auto xr = n_tokens == 1 && op.x_q8(t)   ? quantize_x_q8(x.data(), cols, 1)
                  : op.dense_on_xq(t, n_tokens) ? quantize_x_q8(x.data(), cols, n_tokens, true)
                                                : x;
  const auto ref = reference_matmul(t, rows, cols, w.data(), xr.data(), n_tokens);
  const DeviceWeight dw = op.upload(t, rows, cols, w.data());
  // x at a non-zero offset, to check offsets are honoured.
  const size_t x_off = 5, y_off = 3;
  std::vector<float> xbuf(x_off + x.size(), 1e30f);
  std::copy(x.begin(), x.end(), xbuf.begin() + x_off);
  ClMem xm = dev.alloc(xbuf.size() * sizeof(float));
  dev.write(xm.get(), 0, xbuf.data(), xbuf.size() * sizeof(float));
  const size_t ny = ref.size();
  ClMem ym = guarded_output(dev, y_off + ny);
  op.run(dw, xm.get(), x_off, ym.get(), y_off, n_tokens);
  dev.finish();
  MatmulCheck r;
  auto got = read_guarded(dev, ym.get(), y_off + ny, r.guard_intact);
  got.erase(got.begin(), got.begin() + y_off);
  // Strided rows and accumulation (residual) into y: rows ldy floats apart, added to a known
  // base; the gap between rows must stay untouched.
  {
    const size_t ldy = size_t(rows) + 3, n_acc = size_t(n_tokens) * ldy;
    std::vector<float> base = random_x(n_acc, seed + 101);
    ClMem am = guarded_output(dev, n_acc);
    dev.write(am.get(), 0, base.data(), n_acc * sizeof(float));
    op.run(dw, xm.get(), x_off, am.get(), 0, n_tokens, {}, nullptr, {ldy, true});
    dev.finish();
    bool intact = true;
    const auto acc = read_guarded(dev, am.get(), n_acc, intact);
    r.guard_intact = r.guard_intact && intact;
    std::vector<float> got2 = got, ref2 = ref;
    for (int tk = 0; tk < n_tokens; ++tk)
      for (size_t c = 0; c < ldy; ++c) {
        const size_t i = size_t(tk) * ldy + c;
        got2.push_back(acc[i]);
        ref2.push_back(c < size_t(rows) ? base[i] + ref[size_t(tk) * size_t(rows) + c] : base[i]);
      }
    got = std::move(got2);
    compare_into(r, got, ref2, matmul_tolerance(t));
  }
  r.bytes = double(dw.source_bytes);
  r.flops = 2.0 * double(rows) * double(cols) * n_tokens;
  if (timing) {
    const auto& v = op.variant(t);
    const bool single = !(v.clblast_min_tokens > 0 && n_tokens >= v.clblast_min_tokens);
    r.seconds = time_launches(
        dev, [&](cl_event* ev) { op.run(dw, xm.get(), x_off, ym.get(), y_off, n_tokens, {}, ev); },
        single, 10);
  }
  return r;
}

MatmulCheck check_experts(const MatmulOp& op, TensorType t, int64_t rows, int64_t cols,
                          int n_expert, int n_tokens, int top_k, bool timing, uint32_t seed,
                          bool x_swiglu, bool sorted_promise, bool glu_out) {
  if (glu_out && (x_swiglu || sorted_promise || rows % 2 != 0))
    throw TesseraError("check_experts: glu_out takes an even row count and plain x");
  // The pairs below are sorted by expert, one per (token, expert): runs of at most n_tokens.
  const int max_run = sorted_promise ? n_tokens : 0;
  if (top_k > n_expert) throw TesseraError("check_experts: top_k above n_expert");
  const Device& dev = op.device();
  const auto w = random_ggml_weight(t, rows, cols, seed, n_expert);
  // x_swiglu: device rows [gate | up]; the reference multiplies silu(gate) * up (act.cl's formula).
  const auto xin = random_x(size_t(n_tokens) * cols * (x_swiglu ? 2 : 1), seed);
  const std::vector<float> x = x_swiglu ? swiglu_rows(xin, n_tokens, cols) : xin;
  // Each token picks top_k distinct experts; pairs sorted by expert like the MoE executor's.
  std::mt19937 rng(seed + 99);
  std::vector<std::pair<int, int>> pairs;  // (expert, token)
  for (int tk = 0; tk < n_tokens; ++tk) {
    std::vector<int> e(n_expert);
    for (int i = 0; i < n_expert; ++i) e[i] = i;
    std::shuffle(e.begin(), e.end(), rng);
    for (int k = 0; k < top_k; ++k) pairs.push_back({e[k], tk});
  }
  std::sort(pairs.begin(), pairs.end());
  const int n_pairs = int(pairs.size());
  std::vector<int32_t> tok(n_pairs), exp(n_pairs);
  for (int i = 0; i < n_pairs; ++i) {
    exp[i] = pairs[i].first;
    tok[i] = pairs[i].second;
  }
  // Prefill tiles on xq: the reference takes the same 8-bit x.
  const std::vector<float> xr = op.experts_on_xq(t, n_pairs, n_expert, x_swiglu, max_run)
                                    ? quantize_x_q8(x.data(), cols, n_tokens, true)
                                    : x;
  std::vector<float> ref(size_t(n_pairs) * rows);
  for (int i = 0; i < n_pairs; ++i) {
    const auto yi =
        reference_matmul(t, rows, cols, w.data(), xr.data() + size_t(tok[i]) * cols, 1, exp[i]);
    std::copy(yi.begin(), yi.end(), ref.begin() + size_t(i) * rows);
  }
  if (glu_out) {
    // Pair i's output: silu(gate) * up of its reference rows (act.cl's SwiGLU).
    const int64_t ff = rows / 2;
    std::vector<float> glu(size_t(n_pairs) * ff);
    for (int i = 0; i < n_pairs; ++i)
      for (int64_t r = 0; r < ff; ++r) {
        const float g = ref[size_t(i) * rows + r], u = ref[size_t(i) * rows + ff + r];
        glu[size_t(i) * ff + r] = g / (1.0f + std::exp(-g)) * u;
      }
    ref = std::move(glu);
  }
  const DeviceWeight dw = op.upload(t, rows, cols, w.data(), n_expert);
  ClMem xm = dev.alloc(xin.size() * sizeof(float));
  dev.write(xm.get(), 0, xin.data(), xin.size() * sizeof(float));
  ClMem tm = dev.alloc(tok.size() * 4), em = dev.alloc(exp.size() * 4);
  dev.write(tm.get(), 0, tok.data(), tok.size() * 4);
  dev.write(em.get(), 0, exp.data(), exp.size() * 4);
  ClMem ym = guarded_output(dev, ref.size());
  auto launch = [&](cl_event* ev) {
    if (glu_out)
      op.run_experts_glu(dw, xm.get(), 0, n_tokens, ym.get(), 0, tm.get(), em.get(), n_pairs, {},
                         ev);
    else
      op.run_experts(dw, xm.get(), 0, n_tokens, ym.get(), 0, tm.get(), em.get(), n_pairs, {}, ev,
                     x_swiglu, max_run);
  };
  launch(nullptr);
  dev.finish();
  MatmulCheck r;
  const auto got = read_guarded(dev, ym.get(), ref.size(), r.guard_intact);
  // SwiGLU of two products: their errors add (silu'(g) <= 1.1) relative to the largest output.
  compare_into(r, got, ref, matmul_tolerance(t) * (glu_out ? 4 : 1));
  // Bytes: each distinct selected expert's matrix once.
  r.bytes = double(ggml_bytes(t, rows, cols)) * double(count_distinct(exp));
  r.flops = 2.0 * double(rows) * double(cols) * n_pairs;
  if (timing) {
    r.seconds = time_launches(dev, launch, true, 10);
  }
  return r;
}

namespace {

// Pairs in token order for the combining checks: n_tokens tokens routed to top_k distinct of
// n_expert experts. shard: only the even experts are on this device (local id e / 2); the last
// token picks odd ones only (no pair here: the combine must still write its row).
struct TokenPairs {
  std::vector<int32_t> tok, exp, off;
};
TokenPairs token_order_pairs(std::mt19937& rng, int n_tokens, int n_expert, int top_k, bool shard) {
  TokenPairs tp;
  tp.off.push_back(0);
  for (int tk = 0; tk < n_tokens; ++tk) {
    std::vector<int> e(static_cast<size_t>(n_expert));
    std::iota(e.begin(), e.end(), 0);
    std::shuffle(e.begin(), e.end(), rng);
    if (shard && tk == n_tokens - 1)
      for (int k = 0; k < top_k; ++k) e[size_t(k)] = 2 * k + 1;
    for (int k = 0; k < top_k; ++k) {
      if (shard && e[size_t(k)] % 2) continue;
      tp.tok.push_back(tk);
      tp.exp.push_back(shard ? e[size_t(k)] / 2 : e[size_t(k)]);
    }
    tp.off.push_back(int32_t(tp.tok.size()));
  }
  return tp;
}

// The combine's inputs and reference for pair rows y (rows floats each, pairs in token order as
// off gives them): router weights and norm weights from rng; at home (not shard) the residual
// stream out0 (random) takes the sum and is normed, on a shard the launch writes a partial sum
// (out0 NaN: every row must be written). out[t] = (out0[t] at home) + sum_p wts[p] y[p] (sums in
// double), xn[t] = out[t] / sqrt(mean(out[t]^2) + eps) * norm_w.
struct CombineCase {
  std::vector<float> wts, norm_w, out0, out, xn;
  float eps = 1e-5f;
  bool accumulate = true, norm = true;
  uint32_t n_tokens = 0;
  // The launch's combine over these device buffers (norm_w and xn unused on a shard).
  ExpertCombine args(cl_mem out_m, cl_mem wts_m, cl_mem off_m, cl_mem tok_m, cl_mem norm_m,
                     cl_mem xn_m) const {
    ExpertCombine c;
    c.out = out_m;
    c.accumulate = accumulate;
    c.weights = wts_m;
    c.offsets = off_m;
    c.pair_token = tok_m;
    c.n_tokens = n_tokens;
    c.norm_w = norm ? norm_m : nullptr;
    c.eps = eps;
    c.xn = norm ? xn_m : nullptr;
    return c;
  }
};
CombineCase combine_case(std::mt19937& rng, const std::vector<float>& y, int64_t rows,
                         const std::vector<int32_t>& off, bool shard, uint32_t seed) {
  CombineCase c;
  const size_t n_pairs = size_t(off.back()), n_tokens = off.size() - 1;
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  c.wts.resize(n_pairs);
  c.norm_w.resize(size_t(rows));
  for (auto& v : c.wts) v = unit(rng);
  for (auto& v : c.norm_w) v = 0.5f + unit(rng);
  c.accumulate = c.norm = !shard;
  c.n_tokens = uint32_t(n_tokens);
  c.out0 = random_x(n_tokens * size_t(rows), seed + 5);
  if (!c.accumulate) std::fill(c.out0.begin(), c.out0.end(), std::nanf(""));
  c.out.assign(c.out0.size(), 0.0f);
  c.xn.assign(c.out0.size(), 0.0f);
  for (size_t tk = 0; tk < n_tokens; ++tk) {
    double ss = 0;
    for (int64_t i = 0; i < rows; ++i) {
      double acc = 0;
      for (int p = off[tk]; p < off[tk + 1]; ++p)
        acc += double(c.wts[size_t(p)]) * y[size_t(p) * size_t(rows) + size_t(i)];
      const size_t at = tk * size_t(rows) + size_t(i);
      const float v = float(c.accumulate ? c.out0[at] + acc : acc);
      c.out[at] = v;
      ss += double(v) * v;
    }
    const float scale = float(1.0 / std::sqrt(ss / double(rows) + c.eps));
    for (int64_t i = 0; i < rows; ++i) {
      const size_t at = tk * size_t(rows) + size_t(i);
      c.xn[at] = c.out[at] * scale * c.norm_w[size_t(i)];
    }
  }
  return c;
}

// Reads a guarded output, compares it with ref and folds the result into r (the first failure
// names `what`).
void check_into(MatmulCheck& r, const Device& dev, cl_mem m, const std::vector<float>& ref,
                double tol, const std::string& what) {
  MatmulCheck q;
  const auto got = read_guarded(dev, m, ref.size(), q.guard_intact);
  compare_into(q, got, ref, tol);
  r.max_abs = std::max(r.max_abs, q.max_abs);
  r.max_rel = std::max(r.max_rel, q.max_rel);
  r.nmse = std::max(r.nmse, q.nmse);
  r.nonfinite += q.nonfinite;
  r.guard_intact = r.guard_intact && q.guard_intact;
  if (!q.pass && r.note.empty()) r.note = what + ": " + q.note;
}

}  // namespace

MatmulCheck check_experts_combine(const MatmulOp& op, TensorType t, int64_t rows, int64_t cols,
                                  int n_expert, int n_tokens, int top_k, bool x_swiglu, bool shard,
                                  bool timing, uint32_t seed) {
  if (top_k > n_expert || (shard && n_expert < 2 * top_k))
    throw TesseraError("check_experts_combine: too few experts for top_k");
  const Device& dev = op.device();
  const auto w = random_ggml_weight(t, rows, cols, seed, n_expert);
  std::mt19937 rng(seed + 99);
  const auto [tok, exp, off] = token_order_pairs(rng, n_tokens, n_expert, top_k, shard);
  const int n_pairs = int(tok.size());
  if (n_pairs == 0) throw TesseraError("check_experts_combine: no pair on the device");
  const int n_here = shard ? n_expert / 2 : n_expert;
  std::vector<int32_t> iota(static_cast<size_t>(n_pairs));
  std::iota(iota.begin(), iota.end(), 0);
  // The launch's x: one row per pair ([gate | up] with x_swiglu).
  const auto xin = random_x(size_t(n_pairs) * cols * (x_swiglu ? 2 : 1), seed);
  const std::vector<float> x = x_swiglu ? swiglu_rows(xin, n_pairs, cols) : xin;
  // The device holds experts of its share only: expert i here is global 2i (shard) or i.
  std::vector<uint8_t> w_here;
  if (shard) {
    const uint64_t mat = ggml_bytes(t, rows, cols);
    w_here.resize(size_t(mat) * n_here);
    for (int i = 0; i < n_here; ++i)
      std::memcpy(w_here.data() + size_t(mat) * i, w.data() + size_t(mat) * 2 * i, mat);
  }
  const uint8_t* wd = shard ? w_here.data() : w.data();
  std::vector<float> y_ref(size_t(n_pairs) * rows);
  for (int p = 0; p < n_pairs; ++p) {
    const auto yp =
        reference_matmul(t, rows, cols, wd, x.data() + size_t(p) * cols, 1, exp[size_t(p)]);
    std::copy(yp.begin(), yp.end(), y_ref.begin() + size_t(p) * rows);
  }
  const CombineCase cc = combine_case(rng, y_ref, rows, off, shard, seed);
  const auto& [wts, norm_w, out0, out_ref, xn_ref, eps, accumulate, norm, combine_tokens] = cc;
  const DeviceWeight dw = op.upload(t, rows, cols, wd, n_here);
  auto upload = [&dev](const auto& v) { return upload_words(dev, v); };
  ClMem xm = upload(xin), tm = upload(iota), em = upload(exp), ptm = upload(tok), om = upload(off),
        wm = upload(wts), nm = upload(norm_w);
  ClMem ym = guarded_output(dev, y_ref.size());
  ClMem outm = guarded_output(dev, out0.size()), xnm = guarded_output(dev, xn_ref.size());
  const ExpertCombine c = cc.args(outm.get(), wm.get(), om.get(), ptm.get(), nm.get(), xnm.get());
  auto launch = [&](cl_event* ev) {
    op.run_experts_combine(dw, xm.get(), 0, n_pairs, ym.get(), 0, tm.get(), em.get(), n_pairs,
                           x_swiglu, c, {}, ev);
  };
  // The pair rows as run_experts'; sums and their norm: relative to their largest value.
  MatmulCheck r;
  auto check = [&dev, &r](cl_mem m, const std::vector<float>& ref, double tol, const char* what) {
    check_into(r, dev, m, ref, tol, what);
  };
  // Twice, each from NaN pair rows and normed rows: the second launch must find the counters reset
  // by the first and combine its own rows.
  const std::vector<float> nan_rows(std::max(y_ref.size(), xn_ref.size()), std::nanf(""));
  for (int run = 0; run < 2; ++run) {
    dev.write(outm.get(), 0, out0.data(), out0.size() * 4);
    dev.write(ym.get(), 0, nan_rows.data(), y_ref.size() * 4);
    dev.write(xnm.get(), 0, nan_rows.data(), xn_ref.size() * 4);
    launch(nullptr);
    dev.finish();
    check(ym.get(), y_ref, matmul_tolerance(t), run ? "second launch, pair rows" : "pair rows");
    check(outm.get(), out_ref, matmul_tolerance(t) * 4,
          run ? "second launch, combined rows" : "combined rows");
    if (norm)
      check(xnm.get(), xn_ref, matmul_tolerance(t) * 4,
            run ? "second launch, normed rows" : "normed rows");
  }
  r.pass = r.note.empty();
  const size_t distinct = count_distinct(exp);
  r.bytes = double(ggml_bytes(t, rows, cols)) * double(distinct);
  r.flops = 2.0 * double(rows) * double(cols) * n_pairs;
  if (timing) r.seconds = time_launches(dev, launch, true, 10);
  return r;
}

MatmulCheck check_expert_ffn(const MatmulOp& op, TensorType t, int64_t ff, int64_t n_embd,
                             int n_expert, int n_tokens, int top_k, bool shard, int slices,
                             bool timing, uint32_t seed) {
  if (top_k > n_expert || (shard && n_expert < 2 * top_k))
    throw TesseraError("check_expert_ffn: too few experts for top_k");
  const Device& dev = op.device();
  const auto gu = random_ggml_weight(t, 2 * ff, n_embd, seed, n_expert);
  const auto dn = random_ggml_weight(t, n_embd, ff, seed + 1, n_expert);
  std::mt19937 rng(seed + 99);
  const auto [tok, exp, off] = token_order_pairs(rng, n_tokens, n_expert, top_k, shard);
  const int n_pairs = int(tok.size());
  if (n_pairs == 0) throw TesseraError("check_expert_ffn: no pair on the device");
  const int n_here = shard ? n_expert / 2 : n_expert;
  auto share = [&](const std::vector<uint8_t>& w, int64_t rows, int64_t cols) {
    if (!shard) return w;
    const uint64_t mat = ggml_bytes(t, rows, cols);
    std::vector<uint8_t> here(size_t(mat) * n_here);
    for (int i = 0; i < n_here; ++i)
      std::memcpy(here.data() + size_t(mat) * i, w.data() + size_t(mat) * 2 * i, mat);
    return here;
  };
  const auto gu_here = share(gu, 2 * ff, n_embd), dn_here = share(dn, n_embd, ff);
  const auto x = random_x(size_t(n_tokens) * n_embd, seed);
  // A program that quantizes x quantizes h too: the reference takes both in 8 bits. h is the
  // kernel's own float result, so a value on a rounding edge may land one step apart: the
  // tolerance allows one such step (~1e-3 of the output), far below a wrong row or block.
  const bool q8 = op.x_q8(t);
  const auto xq = q8 ? quantize_x_q8(x.data(), n_embd, n_tokens) : x;
  const double tol = q8 ? 2e-3 : matmul_tolerance(t) * 8;
  // Each pair's expert output: down (silu(gate x) * up x).
  std::vector<float> y_ref(size_t(n_pairs) * n_embd);
  for (int p = 0; p < n_pairs; ++p) {
    const auto g = reference_matmul(t, 2 * ff, n_embd, gu_here.data(),
                                    xq.data() + size_t(tok[size_t(p)]) * n_embd, 1, exp[size_t(p)]);
    std::vector<float> h(static_cast<size_t>(ff));
    for (int64_t r = 0; r < ff; ++r) {
      const float a = g[size_t(r)], u = g[size_t(ff + r)];
      h[size_t(r)] = a / (1.0f + std::exp(-a)) * u;
    }
    if (q8) h = quantize_x_q8(h.data(), ff, 1);
    const auto y = reference_matmul(t, n_embd, ff, dn_here.data(), h.data(), 1, exp[size_t(p)]);
    std::copy(y.begin(), y.end(), y_ref.begin() + size_t(p) * n_embd);
  }
  const CombineCase cc = combine_case(rng, y_ref, n_embd, off, shard, seed);
  const auto& [wts, norm_w, out0, out_ref, xn_ref, eps, accumulate, norm, combine_tokens] = cc;
  const DeviceWeight gw = op.upload(t, 2 * ff, n_embd, gu_here.data(), n_here);
  const DeviceWeight dw = op.upload(t, n_embd, ff, dn_here.data(), n_here);
  if (!op.can_expert_ffn(gw, dw)) throw TesseraError("check_expert_ffn: shapes the launch refuses");
  auto upload = [&dev](const auto& v) { return upload_words(dev, v); };
  ClMem xm = upload(x), em = upload(exp), tm = upload(tok), om = upload(off), wm = upload(wts),
        nm = upload(norm_w);
  ClMem outm = guarded_output(dev, out0.size()), xnm = guarded_output(dev, xn_ref.size());
  const ExpertCombine c = cc.args(outm.get(), wm.get(), om.get(), tm.get(), nm.get(), xnm.get());
  auto launch = [&](cl_event* ev) {
    op.run_expert_ffn(gw, dw, xm.get(), 0, n_tokens, tm.get(), em.get(), n_pairs, c, slices, {},
                      ev);
  };
  MatmulCheck r;
  auto check = [&dev, &r](cl_mem m, const std::vector<float>& ref, double tol, const char* what) {
    check_into(r, dev, m, ref, tol, what);
  };
  const std::vector<float> nan_rows(xn_ref.size(), std::nanf(""));
  for (int run = 0; run < 2; ++run) {
    dev.write(outm.get(), 0, out0.data(), out0.size() * 4);
    dev.write(xnm.get(), 0, nan_rows.data(), xn_ref.size() * 4);
    launch(nullptr);
    dev.finish();
    check(outm.get(), out_ref, tol, run ? "second launch, combined rows" : "combined rows");
    if (norm) check(xnm.get(), xn_ref, tol, run ? "second launch, normed rows" : "normed rows");
  }
  r.pass = r.note.empty();
  const size_t distinct = count_distinct(exp);
  r.bytes = double(ggml_bytes(t, 2 * ff, n_embd) + ggml_bytes(t, n_embd, ff)) * double(distinct);
  r.flops = 2.0 * 3.0 * double(ff) * double(n_embd) * n_pairs;
  if (timing) r.seconds = time_launches(dev, launch, true, 10);
  return r;
}

namespace {
RouteTail route_tail_of(cl_mem norm_w, float eps, cl_mem xn, cl_mem router, uint32_t ld,
                        int n_expert, const reference::RoutingConfig& cfg, cl_mem ids,
                        cl_mem weights) {
  RouteTail rt;
  rt.norm_w = norm_w;
  rt.eps = eps;
  rt.xn = xn;
  rt.router = router;
  rt.router_ld = ld;
  rt.n_expert = uint32_t(n_expert);
  rt.routing = cfg;
  rt.ids = ids;
  rt.weights = weights;
  return rt;
}
}  // namespace

MatmulCheck check_route_tail(const MatmulOp& op, TensorType t, int64_t rows, int64_t cols,
                             int n_tokens, int n_expert, int top_k, bool sigmoid, bool timing,
                             uint32_t seed) {
  if (top_k < 1 || top_k > n_expert) throw TesseraError("check_route_tail: top_k out of range");
  const Device& dev = op.device();
  const auto w = random_ggml_weight(t, rows, cols, seed);
  const auto x = random_x(size_t(n_tokens) * cols, seed);
  const auto y0 = random_x(size_t(n_tokens) * rows, seed + 7);
  const auto norm_w = random_x(size_t(rows), seed + 8);
  const uint32_t ld = uint32_t((rows + 3) / 4 * 4 + 4);  // padded router rows (a multiple of 4)
  const auto router = random_x(size_t(n_expert) * ld, seed + 9);
  const float eps = 1e-5f;
  reference::RoutingConfig cfg;
  cfg.n_expert_used = top_k;
  cfg.gating = sigmoid ? reference::GatingFunc::kSigmoid : reference::GatingFunc::kSoftmax;
  cfg.normalize_topk = true;
  cfg.weight_scale = 1.5f;
  // Reference: y = y0 + W x, xn = RMSNorm(y) * norm_w, logits = router xn, the routing.
  const auto xq = n_tokens == 1 && op.x_q8(t) ? quantize_x_q8(x.data(), cols, 1) : x;
  const auto prod = reference_matmul(t, rows, cols, w.data(), xq.data(), n_tokens);
  std::vector<float> y_ref(y0.size()), xn_ref(y0.size()), w_ref;
  for (size_t i = 0; i < y0.size(); ++i) y_ref[i] = y0[i] + prod[i];
  reference::rms_norm(y_ref, norm_w, eps, xn_ref);
  std::vector<int32_t> ids_ref;
  for (int tk = 0; tk < n_tokens; ++tk) {
    std::vector<float> logits(static_cast<size_t>(n_expert));
    for (int e = 0; e < n_expert; ++e) {
      double acc = 0;
      for (int64_t i = 0; i < rows; ++i)
        acc += double(router[size_t(e) * ld + size_t(i)]) * xn_ref[size_t(tk) * rows + size_t(i)];
      logits[size_t(e)] = float(acc);
    }
    const auto choice = reference::route_experts(logits, cfg);
    ids_ref.insert(ids_ref.end(), choice.ids.begin(), choice.ids.end());
    w_ref.insert(w_ref.end(), choice.weights.begin(), choice.weights.end());
  }
  if (!op.can_route_tail(t, uint32_t(n_expert)))
    throw TesseraError("check_route_tail: " + std::to_string(n_expert) +
                       " experts the launch refuses");
  const DeviceWeight dw = op.upload(t, rows, cols, w.data());
  auto upload = [&dev](const auto& v) { return upload_words(dev, v); };
  ClMem xm = upload(x), nm = upload(norm_w), rm = upload(router);
  ClMem ym = guarded_output(dev, y_ref.size()), xnm = guarded_output(dev, xn_ref.size()),
        idm = guarded_output(dev, ids_ref.size()), wm = guarded_output(dev, w_ref.size());
  const RouteTail rt =
      route_tail_of(nm.get(), eps, xnm.get(), rm.get(), ld, n_expert, cfg, idm.get(), wm.get());
  auto launch = [&](cl_event* ev) {
    op.run_route_tail(dw, xm.get(), 0, ym.get(), 0, n_tokens, {0, true}, rt, {}, ev);
  };
  MatmulCheck r;
  const std::vector<float> nan_rows(xn_ref.size(), std::nanf(""));
  for (int run = 0; run < 2; ++run) {
    const std::string pre = run ? "second launch, " : "";
    dev.write(ym.get(), 0, y0.data(), y0.size() * 4);
    dev.write(xnm.get(), 0, nan_rows.data(), xn_ref.size() * 4);
    dev.write(wm.get(), 0, nan_rows.data(), w_ref.size() * 4);
    const std::vector<int32_t> bad_ids(ids_ref.size(), -7);
    dev.write(idm.get(), 0, bad_ids.data(), bad_ids.size() * 4);
    launch(nullptr);
    dev.finish();
    check_into(r, dev, ym.get(), y_ref, matmul_tolerance(t), pre + "rows");
    check_into(r, dev, xnm.get(), xn_ref, matmul_tolerance(t) * 4, pre + "normed rows");
    check_into(r, dev, wm.get(), w_ref, 1e-4, pre + "router weights");
    bool intact = true;
    const auto raw = read_guarded(dev, idm.get(), ids_ref.size(), intact);
    r.guard_intact = r.guard_intact && intact;
    if (!intact && r.note.empty()) r.note = pre + "expert ids: out-of-bounds write";
    std::vector<int32_t> ids(ids_ref.size());
    std::memcpy(ids.data(), raw.data(), ids.size() * 4);
    size_t bad = 0;
    for (size_t i = 0; i < ids_ref.size(); ++i) bad += ids[i] != ids_ref[i] ? 1 : 0;
    if (bad && r.note.empty())
      r.note = pre + std::to_string(bad) + " of " + std::to_string(ids_ref.size()) +
               " expert ids differ";
  }
  r.pass = r.note.empty();
  r.bytes = double(dw.source_bytes) + double(n_expert) * double(rows) * 4;
  r.flops = 2.0 * double(rows) * double(cols + n_expert) * n_tokens;
  if (timing) r.seconds = time_launches(dev, launch, true, 10);
  return r;
}

namespace {

// check_route_ffn's attention phase: the KV history, the op, the launch's RouteTail::Ffn::Attention
// and the reference (see matmul_check.h).
struct RouteAttentionCheck {
  static constexpr int32_t kHeads = 4, kKvHeads = 2, kDim = 64, kBlock = 16, kPast = 40;
  static constexpr float kEps = 1e-6f, kBase = 1000000.0f;
  const Device& dev;
  cl_mem out;
  std::optional<AttentionOp> op;
  ClMem kpool, vpool, meta_all, meta_step, ws, knw_m, qnw_m;
  RouteTail::Ffn::Attention phase;
  std::vector<float> ref, k_new, v_new;
  kv::KvPoolLayout layout;
  std::vector<int32_t> tables;

  RouteAttentionCheck(const Device& d, const std::vector<float>& qkv, cl_mem qkv_buf, cl_mem x,
                      uint32_t seed)
      : dev(d), out(x) {
    const int32_t H = kHeads, HK = kKvHeads, D = kDim, n_blocks = (kPast + kBlock) / kBlock + 1;
    AttentionConfig cfg;
    cfg.n_head = H;
    cfg.pool = {kv::KvFormat::kF16, n_blocks, kBlock, HK, D};
    layout = cfg.pool;
    AttentionTuning tuning = default_attention_tuning(dev, cfg);
    tuning.decode_rows = true;
    tuning.decode_items = 1;
    tuning.decode_finish = true;
    tuning.fused_reduce = true;
    op.emplace(dev, cfg, tuning);
    // Blocks in a shuffled order: token p at slot tables[p / 16] * 16 + p % 16.
    tables.resize(size_t(n_blocks));
    std::iota(tables.begin(), tables.end(), 0);
    std::shuffle(tables.begin(), tables.end(), std::mt19937(seed + 20));
    auto view_of = [&](int32_t first, int32_t count, std::vector<int32_t>& meta) {
      kv::KvBatchView v;
      meta = tables;
      v.block_table_stride = uint32_t(n_blocks);
      v.token_seq_offset = uint32_t(meta.size());
      for (int32_t p = first; p < first + count; ++p) meta.push_back(0);
      v.token_pos_offset = uint32_t(meta.size());
      for (int32_t p = first; p < first + count; ++p) meta.push_back(p);
      v.token_slot_offset = uint32_t(meta.size());
      for (int32_t p = first; p < first + count; ++p)
        meta.push_back(tables[size_t(p / kBlock)] * kBlock + p % kBlock);
      v.max_context_offset = uint32_t(meta.size());
      meta.push_back(first + count);
      v.n_seqs = 1;
      v.n_tokens = count;
      v.max_context = first + count;
      v.context_capacity = n_blocks * kBlock;
      return v;
    };
    std::vector<int32_t> all_meta, step_meta;
    kv::KvBatchView all = view_of(0, kPast, all_meta), step = view_of(kPast, 1, step_meta);
    meta_all = upload_words(dev, all_meta);
    meta_step = upload_words(dev, step_meta);
    all.meta = meta_all.get();
    step.meta = meta_step.get();
    // NaN pools (f16 0x7E00): a slot the launch should not read poisons the output.
    std::vector<uint16_t> nan(layout.pool_bytes() / 2, 0x7E00);
    kpool = upload_words(dev, nan);
    vpool = upload_words(dev, nan);
    const std::vector<float> k = random_x(size_t(kPast) * HK * D, seed + 21),
                             v = random_x(size_t(kPast) * HK * D, seed + 22);
    ClMem km = upload_words(dev, k), vm = upload_words(dev, v);
    const kv::KvLayerView layer{kpool.get(), vpool.get()};
    op->write_kv(all, layer, km.get(), 0, vm.get(), 0, 0, kPast);
    dev.finish();
    // The finish of the reference's q|k|v row: q / k norms per head, NeoX RoPE at kPast.
    const uint32_t q_dim = uint32_t(H * D), kv_dim = uint32_t(HK * D);
    const std::vector<float> qnw = random_x(size_t(D), seed + 23),
                             knw = random_x(size_t(D), seed + 24);
    qnw_m = upload_words(dev, qnw);
    knw_m = upload_words(dev, knw);
    std::vector<float> q(qkv.begin(), qkv.begin() + q_dim);
    k_new.assign(qkv.begin() + q_dim, qkv.begin() + q_dim + kv_dim);
    v_new.assign(qkv.begin() + q_dim + kv_dim, qkv.begin() + q_dim + 2 * kv_dim);
    reference::rms_norm(q, qnw, kEps, q);
    reference::rms_norm(k_new, knw, kEps, k_new);
    reference::rope(q, H, D, D, kPast, kBase, reference::RopeMode::kNeox, 1.0f, {}, {});
    reference::rope(k_new, HK, D, D, kPast, kBase, reference::RopeMode::kNeox, 1.0f, {}, {});
    std::vector<float> ks = k, vs = v;
    ks.insert(ks.end(), k_new.begin(), k_new.end());
    vs.insert(vs.end(), v_new.begin(), v_new.end());
    ks = reference::kv_round_trip(kv::KvFormat::kF16, ks, D);
    vs = reference::kv_round_trip(kv::KvFormat::kF16, vs, D);
    ref.resize(q_dim);
    reference::causal_attention(q, ks, vs, {H, HK, D}, op->scale(), ref, 0, {});
    const size_t ws_bytes = op->decode_workspace_bytes(1, n_blocks * kBlock);
    ws = dev.alloc(ws_bytes);
    phase.op = &*op;
    phase.batch = step;
    phase.layer = layer;
    phase.out = out;
    phase.workspace = ws.get();
    phase.workspace_bytes = ws_bytes;
    phase.finish = {{qkv_buf, 0, q_dim + 2 * kv_dim, q_dim, q_dim + kv_dim},
                    qnw_m.get(),
                    knw_m.get(),
                    kEps,
                    {uint32_t(D), kBase, true, 1.0f, nullptr, {}}};
  }

  // The attention's output (RoPE angles up to 40 rad and the row's own error through the norms),
  // and the token's k and v as stored (f16).
  void check(MatmulCheck& r, const std::string& pre) const {
    check_into(r, dev, out, ref, 2e-3, pre + "attention");
    const uint64_t row = layout.token_head_bytes();
    const int32_t slot = tables[size_t(kPast / kBlock)] * kBlock + kPast % kBlock;
    for (int part = 0; part < 2; ++part) {
      const std::vector<float>& want = part ? v_new : k_new;
      for (int32_t h = 0; h < kKvHeads; ++h) {
        std::vector<uint16_t> got(static_cast<size_t>(kDim));
        const uint64_t at = (uint64_t(slot / kBlock) * kKvHeads + uint64_t(h)) * kBlock * row +
                            uint64_t(slot % kBlock) * row;
        dev.read(part ? vpool.get() : kpool.get(), at, got.data(), row);
        for (int32_t i = 0; i < kDim; ++i) {
          const float g = fp16_to_fp32(got[size_t(i)]), w = want[size_t(h * kDim + i)];
          if (!(std::fabs(g - w) <= 2e-3f * (1.0f + std::fabs(w))) && r.note.empty())
            r.note = pre + (part ? "stored v" : "stored k") + " differs at head " +
                     std::to_string(h) + ", " + std::to_string(i) + ": " + std::to_string(g) +
                     " for " + std::to_string(w);
        }
      }
    }
  }
  double bytes() const {
    return double(kPast + 1) * kKvHeads * 2 * double(layout.token_head_bytes());
  }
};

}  // namespace

MatmulCheck check_route_ffn(const MatmulOp& op, TensorType t, int64_t n_embd, int64_t cols,
                            int64_t ff, int n_expert, int top_k, bool next_norm, int slices,
                            int64_t next_rows, bool attention, bool timing, uint32_t seed) {
  if (top_k < 1 || top_k > n_expert) throw TesseraError("check_route_ffn: top_k out of range");
  if (next_rows > 0 && !next_norm)
    throw TesseraError("check_route_ffn: the next projection reads the next norm's row");
  if (attention && (next_rows != kRouteAttentionRows || cols != kRouteAttentionCols))
    throw TesseraError("check_route_ffn: the attention's q|k|v row or output of another size");
  const Device& dev = op.device();
  const auto w = random_ggml_weight(t, n_embd, cols, seed);
  const auto gu = random_ggml_weight(t, 2 * ff, n_embd, seed + 1, n_expert);
  const auto dn = random_ggml_weight(t, n_embd, ff, seed + 2, n_expert);
  const auto x = random_x(size_t(cols), seed);
  const auto y0 = random_x(size_t(n_embd), seed + 7);
  const auto norm_w = random_x(size_t(n_embd), seed + 8);
  const auto norm2_w = random_x(size_t(n_embd), seed + 10);
  const uint32_t ld = uint32_t((n_embd + 3) / 4 * 4 + 4);  // padded router rows
  const auto router = random_x(size_t(n_expert) * ld, seed + 9);
  const float eps = 1e-5f;
  reference::RoutingConfig cfg;
  cfg.n_expert_used = top_k;
  cfg.gating = reference::GatingFunc::kSoftmax;
  cfg.normalize_topk = true;
  cfg.weight_scale = 1.5f;
  // Reference: y = y0 + W x, xn = RMSNorm(y) * norm_w, the routing of router xn, then each chosen
  // expert's down(silu(gate xn) * up xn) added with its weight, then (next_norm) xn =
  // RMSNorm(y) * norm2_w, into the same buffers as the engine's (the residual and xn).
  const bool q8 = op.x_q8(t);
  const auto xq = q8 ? quantize_x_q8(x.data(), cols, 1) : x;
  const auto prod = reference_matmul(t, n_embd, cols, w.data(), xq.data(), 1);
  std::vector<float> y(y0.size()), xn(y0.size());
  for (size_t i = 0; i < y0.size(); ++i) y[i] = y0[i] + prod[i];
  reference::rms_norm(y, norm_w, eps, xn);
  std::vector<float> logits(static_cast<size_t>(n_expert));
  for (int e = 0; e < n_expert; ++e) {
    double acc = 0;
    for (int64_t i = 0; i < n_embd; ++i)
      acc += double(router[size_t(e) * ld + size_t(i)]) * xn[size_t(i)];
    logits[size_t(e)] = float(acc);
  }
  const auto choice = reference::route_experts(logits, cfg);
  const auto xnq = q8 ? quantize_x_q8(xn.data(), n_embd, 1) : xn;
  std::vector<float> out_ref = y;
  for (int j = 0; j < top_k; ++j) {
    const int e = choice.ids[size_t(j)];
    const auto g = reference_matmul(t, 2 * ff, n_embd, gu.data(), xnq.data(), 1, e);
    std::vector<float> h(static_cast<size_t>(ff));
    for (int64_t r = 0; r < ff; ++r) {
      const float a = g[size_t(r)], u = g[size_t(ff + r)];
      h[size_t(r)] = a / (1.0f + std::exp(-a)) * u;
    }
    if (q8) h = quantize_x_q8(h.data(), ff, 1);
    const auto ye = reference_matmul(t, n_embd, ff, dn.data(), h.data(), 1, e);
    for (int64_t i = 0; i < n_embd; ++i)
      out_ref[size_t(i)] += choice.weights[size_t(j)] * ye[size_t(i)];
  }
  std::vector<float> xn_ref = xn;
  if (next_norm) reference::rms_norm(out_ref, norm2_w, eps, xn_ref);
  const auto wn = random_ggml_weight(t, std::max<int64_t>(next_rows, 1), n_embd, seed + 11);
  std::vector<float> next_ref;
  if (next_rows > 0) {
    const auto xnq2 = q8 ? quantize_x_q8(xn_ref.data(), n_embd, 1) : xn_ref;
    next_ref = reference_matmul(t, next_rows, n_embd, wn.data(), xnq2.data(), 1);
  }
  const DeviceWeight dw = op.upload(t, n_embd, cols, w.data());
  const DeviceWeight nw = op.upload(t, std::max<int64_t>(next_rows, 1), n_embd, wn.data());
  if (next_rows > 0 && !op.can_route_next(t, n_embd, nw))
    throw TesseraError("check_route_ffn: a next projection the launch refuses");
  const DeviceWeight gw = op.upload(t, 2 * ff, n_embd, gu.data(), n_expert);
  const DeviceWeight downw = op.upload(t, n_embd, ff, dn.data(), n_expert);
  if (!op.can_route_ffn(t, n_embd, cols, uint32_t(n_expert), gw, downw))
    throw TesseraError("check_route_ffn: shapes the launch refuses");
  auto upload = [&dev](const auto& v) { return upload_words(dev, v); };
  const std::vector<int32_t> pair_token(size_t(top_k), 0), offsets = {0, top_k};
  ClMem nm = upload(norm_w), n2m = upload(norm2_w), rm = upload(router), ptm = upload(pair_token),
        offm = upload(offsets);
  ClMem xm = guarded_output(dev, x.size());  // x written before each launch
  ClMem ym = guarded_output(dev, y.size()), xnm = guarded_output(dev, xn.size()),
        idm = guarded_output(dev, size_t(top_k)), wm = guarded_output(dev, size_t(top_k)),
        npm = guarded_output(dev, size_t(std::max<int64_t>(next_rows, 1)));
  RouteTail rt =
      route_tail_of(nm.get(), eps, xnm.get(), rm.get(), ld, n_expert, cfg, idm.get(), wm.get());
  RouteTail::Ffn f;
  f.gate_up = &gw;
  f.down = &downw;
  f.pair_token = ptm.get();
  f.combine.out = ym.get();
  f.combine.accumulate = true;
  f.combine.weights = wm.get();
  f.combine.offsets = offm.get();
  f.combine.pair_token = ptm.get();
  f.combine.n_tokens = 1;
  f.combine.norm_w = next_norm ? n2m.get() : nullptr;
  f.combine.eps = eps;
  f.combine.xn = next_norm ? xnm.get() : nullptr;
  f.slices = slices;
  f.next = next_rows > 0 ? &nw : nullptr;
  f.next_y = next_rows > 0 ? npm.get() : nullptr;
  std::optional<RouteAttentionCheck> ac;
  if (attention) {
    ac.emplace(dev, next_ref, npm.get(), xm.get(), seed);
    f.attention = &ac->phase;
  }
  rt.ffn = &f;
  auto launch = [&](cl_event* ev) {
    op.run_route_tail(dw, xm.get(), 0, ym.get(), 0, 1, {0, true}, rt, {}, ev);
  };
  MatmulCheck r;
  const double tol = q8 ? 2e-3 : matmul_tolerance(t) * 8;
  const std::vector<float> nan_rows(xn.size(), std::nanf(""));
  // Three launches from the same inputs: each must find the join and counters reset.
  for (int run = 0; run < 3; ++run) {
    const std::string pre = run ? "launch " + std::to_string(run + 1) + ", " : "";
    dev.write(xm.get(), 0, x.data(), x.size() * 4);  // the attention overwrites it
    dev.write(ym.get(), 0, y0.data(), y0.size() * 4);
    dev.write(xnm.get(), 0, nan_rows.data(), xn.size() * 4);
    dev.write(wm.get(), 0, nan_rows.data(), size_t(top_k) * 4);
    const std::vector<int32_t> bad_ids(size_t(top_k), -7);
    dev.write(idm.get(), 0, bad_ids.data(), bad_ids.size() * 4);
    if (next_rows > 0) {
      const std::vector<float> nan_next(size_t(next_rows), std::nanf(""));
      dev.write(npm.get(), 0, nan_next.data(), nan_next.size() * 4);
    }
    launch(nullptr);
    dev.finish();
    check_into(r, dev, ym.get(), out_ref, tol, pre + "combined rows");
    check_into(r, dev, xnm.get(), xn_ref, tol,
               pre + (next_norm ? "next normed rows" : "normed rows"));
    check_into(r, dev, wm.get(), choice.weights, 1e-4, pre + "router weights");
    if (next_rows > 0) check_into(r, dev, npm.get(), next_ref, tol, pre + "next projection");
    if (ac) ac->check(r, pre);
    bool intact = true;
    const auto raw = read_guarded(dev, idm.get(), size_t(top_k), intact);
    r.guard_intact = r.guard_intact && intact;
    if (!intact && r.note.empty()) r.note = pre + "expert ids: out-of-bounds write";
    std::vector<int32_t> ids(static_cast<size_t>(top_k));
    std::memcpy(ids.data(), raw.data(), ids.size() * 4);
    if (ids != choice.ids && r.note.empty()) r.note = pre + "expert ids differ";
  }
  r.pass = r.note.empty();
  r.bytes = double(dw.source_bytes) + double(n_expert) * double(n_embd) * 4 +
            double(ggml_bytes(t, 2 * ff, n_embd) + ggml_bytes(t, n_embd, ff)) * top_k +
            (next_rows > 0 ? double(nw.source_bytes) : 0.0) + (ac ? ac->bytes() : 0.0);
  r.flops = 2.0 * double(n_embd) * double(cols + n_expert + std::max<int64_t>(next_rows, 0)) +
            2.0 * 3.0 * double(ff * n_embd) * top_k;
  if (timing) r.seconds = time_launches(dev, launch, true, 10);
  return r;
}

double check_dequantize(const MatmulOp& op, TensorType t, int64_t rows, int64_t cols,
                        uint32_t seed) {
  const Device& dev = op.device();
  const auto w = random_ggml_weight(t, rows, cols, seed);
  const DeviceWeight dw = op.upload(t, rows, cols, w.data());
  ClMem out = dev.alloc(size_t(rows) * cols * sizeof(float));
  op.dequantize(dw, 0, rows, out.get(), 0);
  std::vector<float> got(size_t(rows) * cols);
  dev.read(out.get(), 0, got.data(), got.size() * sizeof(float));
  const uint64_t row_bytes = ggml_bytes(t, 1, cols);
  std::vector<float> ref(size_t(rows) * cols);
  for (int64_t r = 0; r < rows; ++r)
    quant::dequantize_row(t, w.data() + r * row_bytes, ref.data() + size_t(r) * cols, cols);
  double max_ref = 0, max_d = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    max_ref = std::max(max_ref, double(std::fabs(ref[i])));
    const double d = std::fabs(double(got[i]) - double(ref[i]));
    max_d = std::isfinite(got[i]) ? std::max(max_d, d) : INFINITY;
  }
  return max_ref > 0 ? max_d / max_ref : max_d;
}

double measure_weight_stream_gbps(const MatmulOp& op, TensorType t, int64_t cols, uint64_t bytes) {
  const Device& dev = op.device();
  const int64_t blk = gguf::type_traits(t)->block_size;
  cols = (std::max<int64_t>(cols, 1) + blk - 1) / blk * blk;
  const uint64_t row_bytes = ggml_bytes(t, 1, cols);
  const int64_t rows = std::max<int64_t>(64, int64_t(bytes / row_bytes) / 64 * 64);
  const auto distinct = random_ggml_weight(t, 64, cols, 7);
  std::vector<uint8_t> w(size_t(rows) * row_bytes);
  for (int64_t r = 0; r < rows; r += 64)
    std::memcpy(w.data() + size_t(r) * row_bytes, distinct.data(), distinct.size());
  const DeviceWeight dw = op.upload(t, rows, cols, w.data());
  const auto x = random_x(size_t(cols), 7);
  ClMem xm = dev.alloc(x.size() * sizeof(float));
  dev.write(xm.get(), 0, x.data(), x.size() * sizeof(float));
  ClMem ym = dev.alloc(size_t(rows) * sizeof(float));
  constexpr int kLaunches = 8;
  op.run(dw, xm.get(), 0, ym.get(), 0, 1);  // warm-up: builds the program, touches the pages
  dev.finish();
  std::vector<double> s;
  for (int batch = 0; batch < 3; ++batch) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < kLaunches; ++i) op.run(dw, xm.get(), 0, ym.get(), 0, 1);
    dev.finish();
    s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() /
                kLaunches);
  }
  std::sort(s.begin(), s.end());
  return double(rows) * double(row_bytes) / s[1] * 1e-9;
}

}  // namespace tessera::ops
