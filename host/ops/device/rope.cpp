// Device RoPE launches and their portability-matrix cases.
#include "host/ops/device/rope.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <random>
#include <stdexcept>

#include "host/ops/device/matrix.h"

namespace tessera::ops {

cl_float4 rope_yarn_arg(const reference::RopeYarn& yarn) {
  cl_float4 v;
  v.s[0] = yarn.ext_factor;
  v.s[1] = yarn.corr_low;
  v.s[2] = yarn.corr_high;
  v.s[3] = yarn.mscale;
  return v;
}

RopeOps::RopeOps(const Device& device)
    : device_(&device), rope_(device.kernel("rope", "rope_f32")) {}

std::string rope_frequency_problem(uint32_t n_rot, float freq_scale, cl_mem freq_factors,
                                   const reference::RopeYarn& yarn) {
  if (!std::isfinite(freq_scale) || freq_scale <= 0.0f)
    return "freq_scale " + std::to_string(freq_scale) + " must be finite and > 0";
  if (!std::isfinite(yarn.ext_factor) || !std::isfinite(yarn.corr_low) ||
      !std::isfinite(yarn.corr_high) || !std::isfinite(yarn.mscale) || yarn.mscale <= 0.0f)
    return "YaRN parameters must be finite (mscale > 0)";
  if (freq_factors) {
    size_t bytes = 0;
    const cl_int err =
        clGetMemObjectInfo(freq_factors, CL_MEM_SIZE, sizeof(bytes), &bytes, nullptr);
    if (err != CL_SUCCESS) return "freq_factors is not a valid buffer (" + cl_error_name(err) + ")";
    if (bytes < size_t(n_rot / 2) * sizeof(float))
      return "freq_factors holds " + std::to_string(bytes / sizeof(float)) + " floats, n_rot " +
             std::to_string(n_rot) + " needs " + std::to_string(n_rot / 2);
  }
  return {};
}

void RopeOps::rope(cl_mem x, uint32_t x_off, cl_mem pos, uint32_t pos_off, const RopeShape& s,
                   cl_mem freq_factors, const Events& ev) {
  const uint32_t stride = s.token_stride ? s.token_stride : s.n_head * s.head_dim;
  if (s.n_rot == 0 || s.n_rot % 2 != 0 || s.n_rot > s.head_dim || stride < s.n_head * s.head_dim) {
    throw std::invalid_argument("rope: n_rot " + std::to_string(s.n_rot) +
                                " must be even, > 0 and <= head_dim " + std::to_string(s.head_dim) +
                                "; token_stride " + std::to_string(stride) +
                                " must cover n_head*head_dim");
  }
  if (const std::string why = rope_frequency_problem(s.n_rot, s.freq_scale, freq_factors, s.yarn);
      !why.empty())
    throw std::invalid_argument("rope: " + why);
  if (s.n_tokens == 0 || s.n_head == 0) return;
  cl_kernel k = rope_.get();
  const uint32_t neox = s.mode == RopeMode::kNeox ? 1 : 0;
  const uint32_t use_ff = freq_factors ? 1 : 0;
  // Without factors the kernel never reads them: any valid buffer fills the argument.
  set_args(*device_, k, x, x_off, stride, pos, pos_off, s.head_dim, s.n_rot, s.freq_base,
           s.freq_scale, freq_factors ? freq_factors : x, use_ff, neox, rope_yarn_arg(s.yarn));
  const size_t global[3] = {s.n_rot / 2, s.n_head, s.n_tokens};
  const size_t local[3] = {fixed_group_size(*device_, k, global[0]), 1, 1};
  enqueue(*device_, k, 3, global, local, ev);
}

namespace {

// Llama 3.1-like divisors for n_rot/2 pairs: 1 for the fastest third, the scaling factor 8 for
// the slowest third, a smooth ramp between.
std::vector<float> llama3_like_factors(uint32_t n_rot) {
  const size_t half = n_rot / 2;
  std::vector<float> f(half);
  for (size_t i = 0; i < half; ++i) {
    const double t = std::clamp((3.0 * double(i) / double(half) - 1.0), 0.0, 1.0);
    f[i] = float(1.0 + 7.0 * t);
  }
  return f;
}

// factors: empty for none.
MatrixCaseResult run_rope(const Device& device, bool timing, RopeShape s,
                          std::vector<float> factors) {
  const uint32_t stride = s.token_stride ? s.token_stride : s.n_head * s.head_dim;
  std::vector<float> x = random_floats(size_t(s.n_tokens) * stride, 21 + s.head_dim);
  std::vector<int32_t> pos(s.n_tokens);
  std::mt19937 rng(22 + s.n_tokens);
  for (auto& p : pos) p = int32_t(1 + rng() % 2047);
  if (pos.size() >= 3) pos[0] = 0;  // position 0 must be the identity (single tokens do rotate)
  std::vector<float> ref = x;
  for (uint32_t t = 0; t < s.n_tokens; ++t) {
    std::span<float> heads(ref.data() + size_t(t) * stride, size_t(s.n_head) * s.head_dim);
    reference::rope(heads, int(s.n_head), int(s.head_dim), int(s.n_rot), pos[t], s.freq_base,
                    s.mode, s.freq_scale, factors, s.yarn);
  }
  RopeOps ops(device);
  GuardedBuffer dx(device, x), dpos(device, pos);
  std::optional<GuardedBuffer> dff;
  if (!factors.empty()) dff.emplace(device, factors);
  const cl_mem ff = dff ? dff->mem() : nullptr;
  ops.rope(dx.mem(), 0, dpos.mem(), 0, s, ff);
  const auto got =
      dx.download<float>();  // whole rows: the parts that must not move are checked too
  // theta reaches 2047 rad in float: its rounding (~1e-4 rad) bounds the error, as in ggml.
  std::vector<std::string> guards{dx.check_guard()};
  if (dff) guards.push_back(dff->check_guard());
  MatrixCaseResult r = judge(compare(got, ref), 1e-3, guards);
  r.bytes = double(s.n_tokens) * s.n_head * s.n_rot * 8;
  r.flops = double(s.n_tokens) * s.n_head * s.n_rot * 3;
  if (timing) {
    r.seconds = median_kernel_seconds(device, [&] {
      ClEvent ev;
      ops.rope(dx.mem(), 0, dpos.mem(), 0, s, ff, {{}, ev.out()});
      return ev;
    });
  }
  return r;
}

}  // namespace

void register_rope_cases(std::vector<MatrixCase>& out) {
  struct Shape {
    uint32_t tokens, heads, dim, rot, stride;
  };
  // Full rotary, partial rotary, odd head counts, a tiny head, a head inside a fused QKV row.
  const Shape shapes[] = {{1, 32, 128, 128, 0}, {5, 8, 64, 32, 0}, {3, 3, 80, 64, 0},
                          {7, 2, 18, 18, 0},    {1, 1, 2, 2, 0},   {4, 4, 64, 64, 4 * 64 * 3}};
  for (RopeMode mode : {RopeMode::kNormal, RopeMode::kNeox}) {
    for (const Shape& sh : shapes) {
      RopeShape s{sh.tokens, sh.heads, sh.dim, sh.rot, sh.stride, 10000.0f, mode};
      if (sh.stride) s.freq_base = 1000000.0f;  // Qwen's base
      std::string shape = std::to_string(sh.tokens) + "x" + std::to_string(sh.heads) + "x" +
                          std::to_string(sh.dim) + "/" + std::to_string(sh.rot);
      if (sh.stride) shape += "/qkv";
      out.push_back({"rope", mode == RopeMode::kNeox ? "neox" : "normal", shape,
                     [s](const Device& d, bool timing) { return run_rope(d, timing, s, {}); }});
    }
    // Frequency scaling: linear (Llama 2 long-context fine-tunes: factor 4), Llama 3.1's
    // rope_freqs divisors alone, and both, on a full and a partial rotary shape.
    const Shape scaled[] = {{5, 8, 64, 64, 0}, {3, 3, 80, 64, 0}};
    for (const Shape& sh : scaled) {
      for (int v = 0; v < 3; ++v) {
        RopeShape s{sh.tokens, sh.heads, sh.dim, sh.rot, 0, 500000.0f, mode};
        std::vector<float> factors;
        if (v != 1) s.freq_scale = 0.25f;
        if (v != 0) factors = llama3_like_factors(sh.rot);
        const std::string shape = std::to_string(sh.tokens) + "x" + std::to_string(sh.heads) + "x" +
                                  std::to_string(sh.dim) + "/" + std::to_string(sh.rot) +
                                  (v == 0   ? "/linear0.25"
                                   : v == 1 ? "/freqs"
                                            : "/linear0.25+freqs");
        out.push_back({"rope", mode == RopeMode::kNeox ? "neox" : "normal", shape,
                       [s, factors](const Device& d, bool timing) {
                         return run_rope(d, timing, s, factors);
                       }});
      }
    }
    // YaRN as gpt-oss declares it (factor 32, original context 4096, base 150000), full and
    // partial rotary; the second with rope_freqs divisors too.
    for (const Shape& sh : scaled) {
      RopeShape s{sh.tokens, sh.heads, sh.dim, sh.rot, 0, 150000.0f, mode};
      s.freq_scale = 1.0f / 32.0f;
      s.yarn = reference::rope_yarn_params(int(sh.rot), 4096, s.freq_base, 32.0f);
      std::vector<float> factors;
      if (sh.dim != sh.rot) factors = llama3_like_factors(sh.rot);
      const std::string shape = std::to_string(sh.tokens) + "x" + std::to_string(sh.heads) + "x" +
                                std::to_string(sh.dim) + "/" + std::to_string(sh.rot) +
                                (factors.empty() ? "/yarn32" : "/yarn32+freqs");
      out.push_back(
          {"rope", mode == RopeMode::kNeox ? "neox" : "normal", shape,
           [s, factors](const Device& d, bool timing) { return run_rope(d, timing, s, factors); }});
    }
  }
}

}  // namespace tessera::ops
