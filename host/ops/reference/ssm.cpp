// Scalar short conv1d, Mamba2 scan (recurrent and chunked) and gated RMSNorm: straight loops over
// tokens, sums in double.
#include "host/ops/reference/ssm.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "host/ops/reference/activation.h"

namespace tessera::reference {
namespace {

[[noreturn]] void fail(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string(op) + ": " + what);
}

// Rows [0, n_tokens) of `width` floats must lie inside the span, stride >= width.
template <typename Rows>
void check_rows(const char* op, const char* name, const Rows& r, uint32_t n_tokens, size_t width) {
  if (n_tokens == 0) return;
  if (r.stride < width)
    fail(op, std::string(name) + " row stride " + std::to_string(r.stride) + " is below its " +
                 std::to_string(width) + " floats");
  const size_t need = size_t(n_tokens - 1) * r.stride + width;
  if (r.data.size() < need)
    fail(op, std::string(name) + " holds " + std::to_string(r.data.size()) + " floats, " +
                 std::to_string(n_tokens) + " rows need " + std::to_string(need));
}

void check_size(const char* op, const char* name, size_t got, size_t want) {
  if (got != want)
    fail(op, std::string(name) + " holds " + std::to_string(got) + " floats, expected " +
                 std::to_string(want));
}

}  // namespace

float softplus(float x) {
  return x > 20.0f ? x : std::log(1.0f + std::exp(x));
}

void conv1d_silu(ConstRows x, uint32_t n_tokens, uint32_t channels, std::span<const float> w,
                 uint32_t d_conv, std::span<const float> bias, std::span<float> state,
                 MutRows out) {
  constexpr const char* op = "conv1d_silu";
  if (d_conv == 0) fail(op, "d_conv is 0");
  check_rows(op, "x", x, n_tokens, channels);
  check_rows(op, "out", out, n_tokens, channels);
  check_size(op, "w", w.size(), size_t(channels) * d_conv);
  if (!bias.empty()) check_size(op, "bias", bias.size(), channels);
  const uint32_t hist = d_conv - 1;
  check_size(op, "state", state.size(), size_t(channels) * hist);
  std::vector<float> window(size_t(hist) + n_tokens);
  for (uint32_t c = 0; c < channels; ++c) {
    float* st = state.data() + size_t(c) * hist;
    for (uint32_t j = 0; j < hist; ++j) window[j] = st[j];
    for (uint32_t t = 0; t < n_tokens; ++t) window[hist + t] = x.data[size_t(t) * x.stride + c];
    const float* wc = w.data() + size_t(c) * d_conv;
    for (uint32_t t = 0; t < n_tokens; ++t) {
      double sum = bias.empty() ? 0.0 : double(bias[c]);
      for (uint32_t j = 0; j < d_conv; ++j) sum += double(wc[j]) * double(window[t + j]);
      out.data[size_t(t) * out.stride + c] = silu(float(sum));
    }
    for (uint32_t j = 0; j < hist; ++j) st[j] = window[n_tokens + j];
  }
}

namespace {

void check_mamba2(const char* op, const Mamba2Shape& s, uint32_t n_tokens, ConstRows x,
                  ConstRows dt, ConstRows b, ConstRows c, std::span<const float> a,
                  std::span<const float> d, std::span<const float> dt_bias, std::span<float> state,
                  MutRows y) {
  if (s.n_head == 0 || s.head_dim == 0 || s.n_group == 0 || s.d_state == 0 ||
      s.n_head % s.n_group != 0)
    fail(op, "bad shape: " + std::to_string(s.n_head) + " heads of " + std::to_string(s.head_dim) +
                 ", " + std::to_string(s.n_group) + " groups (must divide the heads), d_state " +
                 std::to_string(s.d_state));
  const size_t d_inner = s.d_inner(), bc_width = size_t(s.n_group) * s.d_state;
  check_rows(op, "x", x, n_tokens, d_inner);
  check_rows(op, "dt", dt, n_tokens, s.n_head);
  check_rows(op, "B", b, n_tokens, bc_width);
  check_rows(op, "C", c, n_tokens, bc_width);
  check_rows(op, "y", y, n_tokens, d_inner);
  check_size(op, "A", a.size(), s.n_head);
  check_size(op, "D", d.size(), s.n_head);
  check_size(op, "dt_bias", dt_bias.size(), s.n_head);
  check_size(op, "state", state.size(), d_inner * s.d_state);
}

}  // namespace

void mamba2_scan(const Mamba2Shape& s, uint32_t n_tokens, ConstRows x, ConstRows dt, ConstRows b,
                 ConstRows c, std::span<const float> a, std::span<const float> d,
                 std::span<const float> dt_bias, std::span<float> state, MutRows y) {
  check_mamba2("mamba2_scan", s, n_tokens, x, dt, b, c, a, d, dt_bias, state, y);
  const size_t d_inner = s.d_inner();
  const uint32_t heads_per_group = s.n_head / s.n_group;
  for (uint32_t t = 0; t < n_tokens; ++t) {
    const float* xt = x.data.data() + size_t(t) * x.stride;
    const float* bt = b.data.data() + size_t(t) * b.stride;
    const float* ct = c.data.data() + size_t(t) * c.stride;
    float* yt = y.data.data() + size_t(t) * y.stride;
    for (uint32_t h = 0; h < s.n_head; ++h) {
      const float dt_sp = softplus(dt.data[size_t(t) * dt.stride + h] + dt_bias[h]);
      const float da = std::exp(dt_sp * a[h]);
      const size_t g_off = size_t(h / heads_per_group) * s.d_state;
      for (uint32_t p = 0; p < s.head_dim; ++p) {
        const size_t r = size_t(h) * s.head_dim + p;
        const float x_dt = xt[r] * dt_sp;
        double sum = 0.0;
        for (uint32_t n = 0; n < s.d_state; ++n) {
          float& st = state[size_t(n) * d_inner + r];
          st = st * da + bt[g_off + n] * x_dt;
          sum += double(st) * double(ct[g_off + n]);
        }
        yt[r] = float(sum) + d[h] * xt[r];
      }
    }
  }
}

void mamba2_scan_chunked(const Mamba2Shape& s, uint32_t n_tokens, uint32_t chunk, ConstRows x,
                         ConstRows dt, ConstRows b, ConstRows c, std::span<const float> a,
                         std::span<const float> d, std::span<const float> dt_bias,
                         std::span<float> state, MutRows y) {
  constexpr const char* op = "mamba2_scan_chunked";
  if (chunk == 0) fail(op, "chunk is 0");
  check_mamba2(op, s, n_tokens, x, dt, b, c, a, d, dt_bias, state, y);
  const size_t d_inner = s.d_inner();
  const uint32_t heads_per_group = s.n_head / s.n_group;
  std::vector<double> dt_sp(chunk), a_cum(chunk), cb(size_t(chunk) * chunk), s_in(s.d_state);
  for (uint32_t t0 = 0; t0 < n_tokens; t0 += chunk) {
    const uint32_t len = std::min(chunk, n_tokens - t0);
    const uint32_t last = len - 1;
    for (uint32_t h = 0; h < s.n_head; ++h) {
      const size_t g_off = size_t(h / heads_per_group) * s.d_state;
      double acc = 0.0;
      for (uint32_t t = 0; t < len; ++t) {
        dt_sp[t] = softplus(dt.data[size_t(t0 + t) * dt.stride + h] + dt_bias[h]);
        acc += dt_sp[t] * double(a[h]);
        a_cum[t] = acc;
      }
      // (C_t . B_s) exp(a_t - a_s) dt'_s for s <= t: the run's token pairs, shared by the channels.
      for (uint32_t t = 0; t < len; ++t) {
        const float* ct = c.data.data() + size_t(t0 + t) * c.stride + g_off;
        for (uint32_t u = 0; u <= t; ++u) {
          const float* bs = b.data.data() + size_t(t0 + u) * b.stride + g_off;
          double dot = 0.0;
          for (uint32_t n = 0; n < s.d_state; ++n) dot += double(ct[n]) * double(bs[n]);
          cb[size_t(t) * chunk + u] = dot * std::exp(a_cum[t] - a_cum[u]) * dt_sp[u];
        }
      }
      for (uint32_t p = 0; p < s.head_dim; ++p) {
        const size_t r = size_t(h) * s.head_dim + p;
        for (uint32_t n = 0; n < s.d_state; ++n) s_in[n] = state[size_t(n) * d_inner + r];
        for (uint32_t t = 0; t < len; ++t) {
          const size_t row = t0 + t;
          const float* ct = c.data.data() + row * c.stride + g_off;
          double from_state = 0.0;
          for (uint32_t n = 0; n < s.d_state; ++n) from_state += double(ct[n]) * s_in[n];
          double sum = std::exp(a_cum[t]) * from_state;
          for (uint32_t u = 0; u <= t; ++u)
            sum += cb[size_t(t) * chunk + u] * double(x.data[size_t(t0 + u) * x.stride + r]);
          const float xt = x.data[row * x.stride + r];
          y.data[row * y.stride + r] = float(sum) + d[h] * xt;
        }
        for (uint32_t n = 0; n < s.d_state; ++n) {
          double st = std::exp(a_cum[last]) * s_in[n];
          for (uint32_t u = 0; u < len; ++u) {
            const size_t row = t0 + u;
            st += std::exp(a_cum[last] - a_cum[u]) * dt_sp[u] *
                  double(b.data[row * b.stride + g_off + n]) * double(x.data[row * x.stride + r]);
          }
          state[size_t(n) * d_inner + r] = float(st);
        }
      }
    }
  }
}

void gated_rms_norm(ConstRows y, ConstRows z, uint32_t n_tokens, uint32_t width,
                    uint32_t group_size, std::span<const float> w, float eps, bool gate_first,
                    MutRows out) {
  constexpr const char* op = "gated_rms_norm";
  if (group_size == 0 || width % group_size != 0)
    fail(op, "width " + std::to_string(width) + " is not a multiple of the group size " +
                 std::to_string(group_size));
  if (w.size() != width && w.size() != group_size)
    fail(op, "w holds " + std::to_string(w.size()) + " floats, expected " + std::to_string(width) +
                 " (per channel) or " + std::to_string(group_size) + " (shared by the groups)");
  check_rows(op, "y", y, n_tokens, width);
  check_rows(op, "z", z, n_tokens, width);
  check_rows(op, "out", out, n_tokens, width);
  std::vector<float> v(group_size);
  for (uint32_t t = 0; t < n_tokens; ++t) {
    for (uint32_t g0 = 0; g0 < width; g0 += group_size) {
      const float* yg = y.data.data() + size_t(t) * y.stride + g0;
      const float* zg = z.data.data() + size_t(t) * z.stride + g0;
      const float* wg = w.data() + (w.size() == width ? g0 : 0);
      double sum_sq = 0.0;
      for (uint32_t i = 0; i < group_size; ++i) {
        v[i] = gate_first ? yg[i] * silu(zg[i]) : yg[i];
        sum_sq += double(v[i]) * double(v[i]);
      }
      const float scale = float(1.0 / std::sqrt(sum_sq / double(group_size) + double(eps)));
      float* og = out.data.data() + size_t(t) * out.stride + g0;
      for (uint32_t i = 0; i < group_size; ++i) {
        const float normed = v[i] * scale * wg[i];
        og[i] = gate_first ? normed : normed * silu(zg[i]);
      }
    }
  }
}

}  // namespace tessera::reference
