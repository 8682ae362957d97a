// Gated DeltaNet's state update (Qwen3-Next's linear attention), the recurrent form: one work item
// per (value row, sequence) walks the sequence's tokens in order, so a decode step (one token) and
// a prefill chunk (many) are the same launch. Reference: host/ops/reference/deltanet.h
// (deltanet_recurrent), which also gives the layouts. Batch and state addressing as ssm.cl's:
// `seqs` int32 triples (first token row, token count, state slot), slot s's state at float
// s * slot_stride + state_off. State: [d_k][n_v_head * d_v] (element (h, i, j) at
// j * n_v_head * d_v + h * d_v + i), so neighbouring items read neighbouring floats; each item owns
// its row S_h[i][:], which the delta rule updates on its own (S_h[i] . k needs nothing else).
#include "common.clh"

inline float dn_softplus(float v) {
  return v > 20.0f ? v : log(1.0f + exp(v));
}

// DELTANET_RECURRENT(NAME, W, VT, LOAD, STORE): W consecutive value rows of one head per work item
// (W divides d_v), VT their vector type. deltanet_recurrent_f32 (W = 1: neighbouring items read
// neighbouring state floats, as GPUs want) and deltanet_recurrent8_f32 (W = 8: each item streams
// the state rows with 8-wide loads and normalizes q and k once per 8 rows, as CPUs want) do the
// same arithmetic in the same order per row.
#define DN_LOAD1(p) (*(p))
#define DN_STORE1(v, p) (*(p) = (v))
#define DN_LOAD8(p) vload8(0, (p))
#define DN_STORE8(v, p) vstore8((v), 0, (p))
#define DELTANET_RECURRENT(NAME, W, VT, LOAD, STORE)                                               \
  __kernel void NAME(__global const float* q, uint q_off, uint q_stride, __global const float* k, \
                     uint k_off, uint k_stride, __global const float* v, uint v_off,              \
                     uint v_stride, __global const float* ba, uint ba_off, uint ba_stride,        \
                     __global const float* a, uint a_off, __global const float* dt_bias,          \
                     uint dtb_off, __global float* states, ulong slot_stride, uint state_off,     \
                     __global const int* seqs, uint seqs_off, __global float* o, uint o_off,      \
                     uint o_stride, uint n_k_head, uint n_v_head, uint d_k, uint d_v, float eps) { \
    const uint gid = W * (uint)get_global_id(0); /* h * d_v + i */                                \
    const uint sq = get_global_id(1);                                                             \
    const uint width = n_v_head * d_v;                                                            \
    if (gid >= width) return;                                                                     \
    const uint h = gid / d_v;                                                                     \
    const uint rf = n_v_head / n_k_head;                                                          \
    const uint kh = h / rf;                                                                       \
    const uint ri = h % rf;                                                                       \
    const uint first = (uint)seqs[seqs_off + 3 * sq];                                             \
    const uint n = (uint)seqs[seqs_off + 3 * sq + 1];                                             \
    const ulong slot = (ulong)seqs[seqs_off + 3 * sq + 2];                                        \
    /* S_h[i][j] at st[j * width] */                                                              \
    __global float* st = states + slot * slot_stride + state_off + gid;                           \
    const float ah = a[a_off + h], bias = dt_bias[dtb_off + h];                                   \
    const float q_scale = rsqrt((float)d_k);                                                      \
    for (uint t = 0; t < n; ++t) {                                                                \
      const ulong row = first + t;                                                                \
      __global const float* qt = q + q_off + row * q_stride + (ulong)kh * d_k;                    \
      __global const float* kt = k + k_off + row * k_stride + (ulong)kh * d_k;                    \
      float qq = 0.0f, kk = 0.0f;                                                                 \
      for (uint j = 0; j < d_k; ++j) {                                                            \
        qq += qt[j] * qt[j];                                                                      \
        kk += kt[j] * kt[j];                                                                      \
      }                                                                                           \
      const float qs = 1.0f / fmax(sqrt(qq), eps) * q_scale;                                      \
      const float ks = 1.0f / fmax(sqrt(kk), eps);                                                \
      __global const float* bat = ba + ba_off + row * ba_stride + (ulong)kh * 2 * rf;             \
      const float beta = 1.0f / (1.0f + exp(-bat[ri]));                                           \
      const float decay = exp(dn_softplus(bat[rf + ri] + bias) * ah);                             \
      VT sk = (VT)(0.0f);                                                                         \
      for (uint j = 0; j < d_k; ++j) {                                                            \
        __global float* sj = st + (ulong)j * width;                                               \
        const VT s = LOAD(sj) * decay;                                                            \
        STORE(s, sj);                                                                             \
        sk += s * kt[j];                                                                          \
      }                                                                                           \
      const VT delta = beta * (LOAD(v + v_off + row * v_stride + gid) - sk * ks);                 \
      VT sqo = (VT)(0.0f);                                                                        \
      for (uint j = 0; j < d_k; ++j) {                                                            \
        __global float* sj = st + (ulong)j * width;                                               \
        const VT s = LOAD(sj) + delta * kt[j] * ks;                                               \
        STORE(s, sj);                                                                             \
        sqo += s * qt[j];                                                                         \
      }                                                                                           \
      STORE(sqo * qs, o + o_off + row * o_stride + gid);                                          \
    }                                                                                             \
  }

DELTANET_RECURRENT(deltanet_recurrent_f32, 1, float, DN_LOAD1, DN_STORE1)
DELTANET_RECURRENT(deltanet_recurrent8_f32, 8, float8, DN_LOAD8, DN_STORE8)
