// Gated DeltaNet's state update (Qwen3-Next's linear attention). The recurrent form: one work
// item per (value row, sequence) walks the sequence's tokens in order, so a decode step (one
// token) and a prefill chunk (many) are the same launch; the chunked form is below. Reference:
// host/ops/reference/deltanet.h, which also gives the layouts. Both forms take the tokens
// [t_first, t_first + t_count) of each run, as ssm.cl's scans. Batch and state addressing as
// ssm.cl's: `seqs` int32 triples (first token row, token count, state slot), slot s's state at float
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
                     uint o_stride, uint n_k_head, uint n_v_head, uint d_k, uint d_v, float eps,   \
                     uint t_first, uint t_count) {                                                 \
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
    const uint t_end = min(n, t_first + t_count);                                                 \
    for (uint t = t_first; t < t_end; ++t) {                                                      \
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

// The chunked form (reference::deltanet_chunked): one work-group per (block of up to `block` value
// rows of one head, sequence); dimension 0 counts the groups' items, dimension 1 the sequences.
// The group walks its run in chunks of DN_CHUNK tokens. Per chunk its items first write the
// chunk's normalized k and q rows (kl, ql: DN_CHUNK x d_k floats each, local arguments), the
// betas and the cumulative log decays to local memory, then the token pairs' decayed k.k and k.q
// products; then each item, owning one value row i of the state, reads its row once to get
// (S_0 k_t)[i] and (S_0 q_t)[i] for every token, solves the chunk's unit lower-triangular system
// for its updates u_t[i] (forward substitution), writes the outputs, and writes its row back
// decayed to the chunk's end plus the chunk's rank-DN_CHUNK update. Tokens past the run's end
// are zero k and q with beta 0 and no decay, so a partial chunk needs no special case. Same state
// as deltanet_recurrent_f32: a run of one token (a decode step) may take either form.
#define DN_CHUNK 32

__kernel void deltanet_chunk_f32(__global const float* q, uint q_off, uint q_stride,
                                 __global const float* k, uint k_off, uint k_stride,
                                 __global const float* v, uint v_off, uint v_stride,
                                 __global const float* ba, uint ba_off, uint ba_stride,
                                 __global const float* a, uint a_off, __global const float* dt_bias,
                                 uint dtb_off, __global float* states, ulong slot_stride,
                                 uint state_off, __global const int* seqs, uint seqs_off,
                                 __global float* o, uint o_off, uint o_stride, uint n_k_head,
                                 uint n_v_head, uint d_k, uint d_v, float eps, uint block,
                                 uint t_first, uint t_count, __local float* kl,
                                 __local float* ql) {
  __local float kk[DN_CHUNK * DN_CHUNK];  // [t][p], p < t: exp(g_t - g_p) (k_p . k_t)
  __local float kq[DN_CHUNK * DN_CHUNK];  // [t][p], p <= t: exp(g_t - g_p) (k_p . q_t)
  __local float gam[DN_CHUNK], beta[DN_CHUNK];
  const uint lid = get_local_id(0), items = get_local_size(0);
  const uint blocks = (d_v + block - 1) / block;
  const uint h = (uint)get_group_id(0) / blocks;
  const uint i0 = ((uint)get_group_id(0) % blocks) * block;
  const uint np = min(block, d_v - i0);
  const uint width = n_v_head * d_v;
  const uint rf = n_v_head / n_k_head, kh = h / rf, ri = h % rf;
  const uint sq = get_group_id(1);
  const uint first = (uint)seqs[seqs_off + 3 * sq];
  const uint n = (uint)seqs[seqs_off + 3 * sq + 1];
  const ulong slot = (ulong)seqs[seqs_off + 3 * sq + 2];
  const uint gid = h * d_v + i0 + lid;  // this item's value row (valid when lid < np)
  __global float* st = states + slot * slot_stride + state_off + gid;  // S_h[i][j] at st[j * width]
  const float ah = a[a_off + h], bias = dt_bias[dtb_off + h];
  const float q_scale = rsqrt((float)d_k);
  const uint t_end = min(n, t_first + t_count);
  for (uint c0 = t_first; c0 < t_end; c0 += DN_CHUNK) {
    const uint len = min((uint)DN_CHUNK, t_end - c0);
    const ulong row0 = first + c0;
    for (uint t = lid; t < DN_CHUNK; t += items) {
      __local float* kt_l = kl + t * d_k;
      __local float* qt_l = ql + t * d_k;
      if (t < len) {
        const ulong row = row0 + t;
        __global const float* qt = q + q_off + row * q_stride + (ulong)kh * d_k;
        __global const float* kt = k + k_off + row * k_stride + (ulong)kh * d_k;
        float qq = 0.0f, kq2 = 0.0f;
        for (uint j = 0; j < d_k; ++j) {
          qq += qt[j] * qt[j];
          kq2 += kt[j] * kt[j];
        }
        const float qs = 1.0f / fmax(sqrt(qq), eps) * q_scale;
        const float ks = 1.0f / fmax(sqrt(kq2), eps);
        for (uint j = 0; j < d_k; ++j) {
          qt_l[j] = qt[j] * qs;
          kt_l[j] = kt[j] * ks;
        }
        __global const float* bat = ba + ba_off + row * ba_stride + (ulong)kh * 2 * rf;
        beta[t] = 1.0f / (1.0f + exp(-bat[ri]));
        gam[t] = dn_softplus(bat[rf + ri] + bias) * ah;
      } else {
        for (uint j = 0; j < d_k; ++j) {
          qt_l[j] = 0.0f;
          kt_l[j] = 0.0f;
        }
        beta[t] = 0.0f;
        gam[t] = 0.0f;
      }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lid == 0) {
      float acc = 0.0f;
      for (uint t = 0; t < DN_CHUNK; ++t) {
        acc += gam[t];
        gam[t] = acc;
      }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint idx = lid; idx < DN_CHUNK * DN_CHUNK; idx += items) {
      const uint t = idx / DN_CHUNK, p = idx % DN_CHUNK;
      float dkk = 0.0f, dkq = 0.0f;
      if (p <= t) {
        __local const float* kp = kl + p * d_k;
        __local const float* kt = kl + t * d_k;
        __local const float* qt = ql + t * d_k;
        for (uint j = 0; j < d_k; ++j) {
          dkk += kp[j] * kt[j];
          dkq += kp[j] * qt[j];
        }
        const float decay = exp(gam[t] - gam[p]);
        dkk *= decay;
        dkq *= decay;
      }
      kk[idx] = p < t ? dkk : 0.0f;
      kq[idx] = dkq;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lid < np) {
      float u[DN_CHUNK], s0q[DN_CHUNK];  // u first holds S_0 k_t
      for (uint t = 0; t < DN_CHUNK; ++t) {
        u[t] = 0.0f;
        s0q[t] = 0.0f;
      }
      for (uint j = 0; j < d_k; ++j) {
        const float s = st[(ulong)j * width];
        for (uint t = 0; t < DN_CHUNK; ++t) {
          u[t] += s * kl[t * d_k + j];
          s0q[t] += s * ql[t * d_k + j];
        }
      }
      for (uint t = 0; t < DN_CHUNK; ++t) {
        const float g = exp(gam[t]);
        const float vt = t < len ? v[v_off + (row0 + t) * v_stride + gid] : 0.0f;
        float acc = vt - g * u[t];
        for (uint p = 0; p < t; ++p) acc -= kk[t * DN_CHUNK + p] * u[p];
        u[t] = beta[t] * acc;
        float out = g * s0q[t];
        for (uint p = 0; p <= t; ++p) out += kq[t * DN_CHUNK + p] * u[p];
        if (t < len) o[o_off + (row0 + t) * o_stride + gid] = out;
      }
      const float g_end = gam[DN_CHUNK - 1];
      for (uint p = 0; p < DN_CHUNK; ++p) u[p] *= exp(g_end - gam[p]);
      const float decay_all = exp(g_end);
      for (uint j = 0; j < d_k; ++j) {
        __global float* sj = st + (ulong)j * width;
        float acc = decay_all * sj[0];
        for (uint p = 0; p < DN_CHUNK; ++p) acc += u[p] * kl[p * d_k + j];
        sj[0] = acc;
      }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
  }
}
