// Scalar Gated DeltaNet: the recurrence token by token, and the chunked (triangular-solve) form.
#include "host/ops/reference/deltanet.h"

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

void check_all(const char* op, const DeltaNetShape& s, uint32_t n_tokens, const ConstRows& q,
               const ConstRows& k, const ConstRows& v, const ConstRows& ba,
               std::span<const float> a, std::span<const float> dt_bias,
               std::span<const float> state, const MutRows& o) {
  if (s.n_k_head == 0 || s.n_v_head == 0 || s.d_k == 0 || s.d_v == 0 ||
      s.n_v_head % s.n_k_head != 0)
    fail(op, "bad shape: " + std::to_string(s.n_v_head) + " value heads of " +
                 std::to_string(s.d_v) + ", " + std::to_string(s.n_k_head) +
                 " key heads (must divide them) of " + std::to_string(s.d_k));
  check_rows(op, "q", q, n_tokens, size_t(s.n_k_head) * s.d_k);
  check_rows(op, "k", k, n_tokens, size_t(s.n_k_head) * s.d_k);
  check_rows(op, "v", v, n_tokens, size_t(s.n_v_head) * s.d_v);
  check_rows(op, "ba", ba, n_tokens, size_t(s.n_v_head) * 2);
  check_rows(op, "o", o, n_tokens, size_t(s.n_v_head) * s.d_v);
  if (a.size() != s.n_v_head || dt_bias.size() != s.n_v_head)
    fail(op, "A holds " + std::to_string(a.size()) + " floats and dt_bias " +
                 std::to_string(dt_bias.size()) + ", expected " + std::to_string(s.n_v_head));
  const size_t want = size_t(s.d_k) * s.n_v_head * s.d_v;
  if (state.size() != want)
    fail(op, "state holds " + std::to_string(state.size()) + " floats, expected " +
                 std::to_string(want));
}

// Token t, value head h: the normalized (and for q scaled) key-head vectors, beta and log decay.
struct TokenHead {
  std::vector<float> q, k;
  float beta = 0, log_decay = 0;
};

void l2_normalize(const float* x, uint32_t n, float eps, float scale, std::vector<float>& out) {
  double sum = 0.0;
  for (uint32_t j = 0; j < n; ++j) sum += double(x[j]) * double(x[j]);
  const float inv = 1.0f / std::max(float(std::sqrt(sum)), eps) * scale;
  out.resize(n);
  for (uint32_t j = 0; j < n; ++j) out[j] = x[j] * inv;
}

TokenHead prepare(const DeltaNetShape& s, uint32_t t, uint32_t h, const ConstRows& q,
                  const ConstRows& k, const ConstRows& ba, std::span<const float> a,
                  std::span<const float> dt_bias, float eps) {
  const uint32_t r = s.n_v_head / s.n_k_head, kh = h / r, i = h % r;
  TokenHead th;
  l2_normalize(q.data.data() + size_t(t) * q.stride + size_t(kh) * s.d_k, s.d_k, eps,
               1.0f / std::sqrt(float(s.d_k)), th.q);
  l2_normalize(k.data.data() + size_t(t) * k.stride + size_t(kh) * s.d_k, s.d_k, eps, 1.0f, th.k);
  const float* bat = ba.data.data() + size_t(t) * ba.stride + size_t(kh) * 2 * r;
  th.beta = sigmoid(bat[i]);
  th.log_decay = softplus(bat[r + i] + dt_bias[h]) * a[h];
  return th;
}

double dot(const std::vector<float>& x, const std::vector<float>& y) {
  double sum = 0.0;
  for (size_t j = 0; j < x.size(); ++j) sum += double(x[j]) * double(y[j]);
  return sum;
}

}  // namespace

void deltanet_recurrent(const DeltaNetShape& s, uint32_t n_tokens, ConstRows q, ConstRows k,
                        ConstRows v, ConstRows ba, std::span<const float> a,
                        std::span<const float> dt_bias, float eps, std::span<float> state,
                        MutRows o) {
  check_all("deltanet_recurrent", s, n_tokens, q, k, v, ba, a, dt_bias, state, o);
  const size_t row = size_t(s.n_v_head) * s.d_v;  // state floats per key index j
  for (uint32_t t = 0; t < n_tokens; ++t) {
    for (uint32_t h = 0; h < s.n_v_head; ++h) {
      const TokenHead th = prepare(s, t, h, q, k, ba, a, dt_bias, eps);
      const float decay = std::exp(th.log_decay);
      const float* vt = v.data.data() + size_t(t) * v.stride + size_t(h) * s.d_v;
      float* ot = o.data.data() + size_t(t) * o.stride + size_t(h) * s.d_v;
      for (uint32_t i = 0; i < s.d_v; ++i) {
        float* st = state.data() + size_t(h) * s.d_v + i;  // S_h[i][j] at st[j * row]
        double sk = 0.0;
        for (uint32_t j = 0; j < s.d_k; ++j) {
          st[j * row] *= decay;
          sk += double(st[j * row]) * double(th.k[j]);
        }
        const float delta = th.beta * (vt[i] - float(sk));
        double sq = 0.0;
        for (uint32_t j = 0; j < s.d_k; ++j) {
          st[j * row] += delta * th.k[j];
          sq += double(st[j * row]) * double(th.q[j]);
        }
        ot[i] = float(sq);
      }
    }
  }
}

void deltanet_chunked(const DeltaNetShape& s, uint32_t n_tokens, uint32_t chunk, ConstRows q,
                      ConstRows k, ConstRows v, ConstRows ba, std::span<const float> a,
                      std::span<const float> dt_bias, float eps, std::span<float> state,
                      MutRows o) {
  check_all("deltanet_chunked", s, n_tokens, q, k, v, ba, a, dt_bias, state, o);
  if (chunk == 0) fail("deltanet_chunked", "chunk is 0");
  const size_t row = size_t(s.n_v_head) * s.d_v;
  std::vector<TokenHead> th(chunk);
  std::vector<double> gamma(chunk);              // cumulative log decay within the run
  std::vector<double> u(size_t(chunk) * s.d_v);  // [t][i]
  std::vector<double> s0q(s.d_v);
  for (uint32_t t0 = 0; t0 < n_tokens; t0 += chunk) {
    const uint32_t n = std::min(chunk, n_tokens - t0);
    for (uint32_t h = 0; h < s.n_v_head; ++h) {
      double cum = 0.0;
      for (uint32_t t = 0; t < n; ++t) {
        th[t] = prepare(s, t0 + t, h, q, k, ba, a, dt_bias, eps);
        cum += th[t].log_decay;
        gamma[t] = cum;
      }
      float* sh = state.data() + size_t(h) * s.d_v;  // S_h[i][j] at sh[j * row + i]
      // Forward substitution: u_t = beta_t (v_t - G_t S_0 k_t - sum_{p<t} (G_t/G_p)(k_p . k_t) u_p)
      for (uint32_t t = 0; t < n; ++t) {
        const float* vt = v.data.data() + size_t(t0 + t) * v.stride + size_t(h) * s.d_v;
        const double g = std::exp(gamma[t]);
        for (uint32_t i = 0; i < s.d_v; ++i) {
          double acc = 0.0;
          for (uint32_t j = 0; j < s.d_k; ++j) acc += double(sh[j * row + i]) * th[t].k[j];
          u[size_t(t) * s.d_v + i] = double(vt[i]) - g * acc;
        }
        for (uint32_t p = 0; p < t; ++p) {
          const double coef = std::exp(gamma[t] - gamma[p]) * dot(th[p].k, th[t].k);
          for (uint32_t i = 0; i < s.d_v; ++i)
            u[size_t(t) * s.d_v + i] -= coef * u[size_t(p) * s.d_v + i];
        }
        for (uint32_t i = 0; i < s.d_v; ++i) u[size_t(t) * s.d_v + i] *= th[t].beta;
      }
      // o_t = G_t S_0 q_t + sum_{p<=t} (G_t/G_p)(k_p . q_t) u_p
      for (uint32_t t = 0; t < n; ++t) {
        float* ot = o.data.data() + size_t(t0 + t) * o.stride + size_t(h) * s.d_v;
        const double g = std::exp(gamma[t]);
        for (uint32_t i = 0; i < s.d_v; ++i) {
          double acc = 0.0;
          for (uint32_t j = 0; j < s.d_k; ++j) acc += double(sh[j * row + i]) * th[t].q[j];
          s0q[i] = g * acc;
        }
        for (uint32_t p = 0; p <= t; ++p) {
          const double coef = std::exp(gamma[t] - gamma[p]) * dot(th[p].k, th[t].q);
          for (uint32_t i = 0; i < s.d_v; ++i) s0q[i] += coef * u[size_t(p) * s.d_v + i];
        }
        for (uint32_t i = 0; i < s.d_v; ++i) ot[i] = float(s0q[i]);
      }
      // S = G_T S_0 + sum_p (G_T/G_p) u_p k_p^T
      const double g_end = std::exp(gamma[n - 1]);
      for (uint32_t i = 0; i < s.d_v; ++i) {
        for (uint32_t j = 0; j < s.d_k; ++j) {
          double acc = g_end * double(sh[j * row + i]);
          for (uint32_t p = 0; p < n; ++p)
            acc += std::exp(gamma[n - 1] - gamma[p]) * u[size_t(p) * s.d_v + i] * th[p].k[j];
          sh[j * row + i] = float(acc);
        }
      }
    }
  }
}

}  // namespace tessera::reference
