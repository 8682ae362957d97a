// Scalar reference of the recurrent mixers' ops: the short causal depthwise conv1d with its rolling
// state (Mamba2 and Gated DeltaNet), Mamba2's selective state-space scan with grouped heads, and
// the gated RMSNorm (Mamba2's norm(y * silu(z)) per group, Gated DeltaNet's norm(o) * silu(z)).
// Each works on one sequence's chunk of tokens; a decode step is a chunk of one token. The math is
// ggml's (ggml_ssm_conv, ggml_ssm_scan, llama.cpp's build_mamba2_layer and qwen3next graph).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace tessera::reference {

// Token-major rows inside a larger buffer (a slice of a fused projection's output): element
// (t, i) at data[t * stride + i].
struct ConstRows {
  std::span<const float> data;
  size_t stride = 0;
};
struct MutRows {
  std::span<float> data;
  size_t stride = 0;
};

// softplus as ggml: x above 20 passes through, else log(1 + e^x).
float softplus(float x);

// Causal depthwise conv1d + SiLU over a chunk of `n_tokens` tokens of `channels` channels:
//   out[t][c] = silu(bias[c] + sum_{j < d_conv} w[c][j] * window_c[t + j])
// where window_c is channel c's last d_conv - 1 inputs before the chunk (`state`) followed by the
// chunk's inputs. w: [channels][d_conv] (the GGUF ssm_conv1d.weight rows); bias: channels floats or
// empty (none). state: [channels][d_conv - 1], oldest first; on return it holds the last d_conv - 1
// inputs (the chunk's, preceded by the old state when the chunk is shorter). A zero state is the
// start of a sequence. out must not overlap x. Throws std::invalid_argument on a bad size.
void conv1d_silu(ConstRows x, uint32_t n_tokens, uint32_t channels, std::span<const float> w,
                 uint32_t d_conv, std::span<const float> bias, std::span<float> state, MutRows out);

// Mamba2's head layout: n_head heads of head_dim channels (d_inner = n_head * head_dim), heads
// grouped n_head / n_group per group of B and C (d_state floats each per group).
struct Mamba2Shape {
  uint32_t n_head = 0, head_dim = 0, n_group = 0, d_state = 0;
  uint32_t d_inner() const { return n_head * head_dim; }
};

// Mamba2's selective scan with the D skip, over a chunk of `n_tokens` tokens. Per token t, head h
// (group g = h / (n_head / n_group)), channel p of the head (row r = h * head_dim + p):
//   dt' = softplus(dt[t][h] + dt_bias[h]),  dA = exp(dt' * A[h])
//   state[n][r] = state[n][r] * dA + B[t][g * d_state + n] * x[t][r] * dt'   for n < d_state
//   y[t][r] = sum_n state[n][r] * C[t][g * d_state + n] + D[h] * x[t][r]
// A (negative: GGUF's ssm_a is -exp(A_log)), D and dt_bias hold n_head floats. state:
// [d_state][d_inner] (state-major: neighbouring rows are neighbouring floats), updated in place.
// Throws std::invalid_argument on a bad shape or size.
void mamba2_scan(const Mamba2Shape& shape, uint32_t n_tokens, ConstRows x, ConstRows dt,
                 ConstRows b, ConstRows c, std::span<const float> a, std::span<const float> d,
                 std::span<const float> dt_bias, std::span<float> state, MutRows y);

// The same scan computed chunk-wise (Mamba2's SSD form, as a parallel prefill computes it): per
// run of up to `chunk` tokens and head h, with dt'_t as above and the cumulative log-decay
// a_t = sum_{s<=t} dt'_s * A[h] within the run,
//   y_t = exp(a_t) C_t . S_in + sum_{s<=t} (C_t . B_s) exp(a_t - a_s) dt'_s x_s + D x_t
//   S_out = exp(a_T) S_in + sum_s exp(a_T - a_s) dt'_s B_s x_s^T   (T the run's last token)
// where S_in is the state before the run. Same arguments and state layout as mamba2_scan, whose
// results it must equal (to rounding); chunk >= 1.
void mamba2_scan_chunked(const Mamba2Shape& shape, uint32_t n_tokens, uint32_t chunk, ConstRows x,
                         ConstRows dt, ConstRows b, ConstRows c, std::span<const float> a,
                         std::span<const float> d, std::span<const float> dt_bias,
                         std::span<float> state, MutRows y);

// Gated RMSNorm over `width` channels in groups of `group_size` (width a multiple of it), per
// token:
//   gate_first (Mamba2):   v = y * silu(z);  out = v / rms(v over the group) * w
//   otherwise (DeltaNet):  out = y / rms(y over the group) * w * silu(z)
// where rms(v) = sqrt(mean(v^2) + eps). w holds `width` floats (one weight per channel) or
// `group_size` floats shared by every group. out may alias y (same rows). Throws
// std::invalid_argument on a bad size.
void gated_rms_norm(ConstRows y, ConstRows z, uint32_t n_tokens, uint32_t width,
                    uint32_t group_size, std::span<const float> w, float eps, bool gate_first,
                    MutRows out);

}  // namespace tessera::reference
