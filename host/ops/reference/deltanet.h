// Scalar reference of Gated DeltaNet's state update (Qwen3-Next's linear attention), in two forms:
// the token-by-token recurrence (decode, and the oracle) and the chunked form (a chunk's tokens at
// once through a triangular solve, as chunked prefill computes it), which must agree with it. The
// short conv before it and the gated norm after it are in ssm.h.
#pragma once

#include <cstdint>
#include <span>

#include "host/ops/reference/ssm.h"

namespace tessera::reference {

// n_v_head value heads of d_v; q and k have n_k_head heads of d_k, each shared by n_v_head /
// n_k_head consecutive value heads (value head h reads key head h / (n_v_head / n_k_head)).
struct DeltaNetShape {
  uint32_t n_k_head = 0, n_v_head = 0, d_k = 0, d_v = 0;
};

// One chunk of `n_tokens` tokens of one sequence. Per token t and value head h (key head kh):
//   q^ = q[kh] / max(|q[kh]|, eps) / sqrt(d_k),  k^ = k[kh] / max(|k[kh]|, eps)   (L2 norms)
//   beta = sigmoid(b),  decay = exp(softplus(alpha + dt_bias[h]) * A[h])
//   S_h = S_h * decay;  S_h += (beta * (v[h] - S_h k^)) k^T;  o[h] = S_h q^
// with b and alpha read from the `ba` rows in Qwen3-Next's layout: per key head kh, r = n_v_head /
// n_k_head betas then r alphas (value head h = kh * r + i: beta at kh * 2r + i, alpha at
// kh * 2r + r + i). q, k: n_k_head * d_k floats per row; v, o: n_v_head * d_v. A (negative: GGUF's
// ssm_a is -exp(A_log)) and dt_bias hold n_v_head floats. state: d_k * n_v_head * d_v floats,
// element (h, i, j) = S_h[i][j] (value i, key j) at j * n_v_head * d_v + h * d_v + i (key-major:
// neighbouring value rows are neighbouring floats); updated in place. Throws
// std::invalid_argument on a bad shape or size.
void deltanet_recurrent(const DeltaNetShape& shape, uint32_t n_tokens, ConstRows q, ConstRows k,
                        ConstRows v, ConstRows ba, std::span<const float> a,
                        std::span<const float> dt_bias, float eps, std::span<float> state,
                        MutRows o);

// The same result computed chunk-wise: for each run of up to `chunk` tokens with cumulative decay
// G_t (product of the decays up to t within the run) the updates u_t = beta_t (v_t - S_{t-1} k_t
// after decay) solve the unit lower-triangular system
//   u_t + beta_t sum_{s<t} (G_t / G_s) (k_s . k_t) u_s = beta_t (v_t - G_t S_0 k_t),
// then o_t = G_t S_0 q_t + sum_{s<=t} (G_t / G_s) (k_s . q_t) u_s and the run's final state
// S = G_T S_0 + sum_s (G_T / G_s) u_s k_s^T. Same arguments as deltanet_recurrent; chunk >= 1.
void deltanet_chunked(const DeltaNetShape& shape, uint32_t n_tokens, uint32_t chunk, ConstRows q,
                      ConstRows k, ConstRows v, ConstRows ba, std::span<const float> a,
                      std::span<const float> dt_bias, float eps, std::span<float> state, MutRows o);

}  // namespace tessera::reference
