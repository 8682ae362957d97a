// Recurrent mixers' kernels: the short causal depthwise conv1d + SiLU with its rolling state
// (Mamba2 and Gated DeltaNet), Mamba2's selective scan with grouped heads and the D skip, and the
// gated RMSNorm (Mamba2: norm(y * silu(z)) per group; DeltaNet: norm(y) * silu(z)).
// References: host/ops/reference/ssm.h.
// Layout: token rows (activations) at mem + off + token * stride; a batch of sequences is `seqs`,
// n_seqs int32 triples (first token row, token count, state slot) from seqs_off, the NDRange's
// dimension 1 (a sequence's tokens are consecutive rows). Slot s's state starts at float
// s * slot_stride + state_off of `states`. One work item per (channel or state row, sequence)
// walks that sequence's tokens in order: a decode step is a sequence of one token, a prefill chunk
// a sequence of many; each item owns its state elements, so the update is in place. Mamba2's scan
// also has a chunked (SSD) form for prefill, whose work-groups compute a chunk's tokens in parallel
// (mamba2_chunk_f32).
#include "common.clh"
#include "rows.clh"

#define CONV_MAX_KERNEL 8  // d_conv the conv kernel takes (Mamba2 and Qwen3-Next use 4)

inline float silu_f(float v) {
  return v / (1.0f + exp(-v));
}

inline float softplus_f(float v) {
  return v > 20.0f ? v : log(1.0f + exp(v));
}

// Conv state per channel: d_conv - 1 past inputs, oldest first ([channels][d_conv - 1]).
__kernel void conv1d_silu_f32(__global const float* x, uint x_off, uint x_stride,
                              __global const float* w, uint w_off, __global const float* bias,
                              uint bias_off, uint has_bias, __global float* states,
                              ulong slot_stride, uint state_off, __global const int* seqs,
                              uint seqs_off, __global float* out, uint out_off, uint out_stride,
                              uint channels, uint d_conv) {
  const uint c = get_global_id(0);
  const uint sq = get_global_id(1);
  if (c >= channels) return;
  const uint first = (uint)seqs[seqs_off + 3 * sq];
  const uint n = (uint)seqs[seqs_off + 3 * sq + 1];
  const ulong slot = (ulong)seqs[seqs_off + 3 * sq + 2];
  const uint hist = d_conv - 1;
  __global float* st = states + slot * slot_stride + state_off + (ulong)c * hist;
  __global const float* wc = w + w_off + (ulong)c * d_conv;
  const float b = has_bias ? bias[bias_off + c] : 0.0f;
  float win[CONV_MAX_KERNEL];
  for (uint j = 0; j < hist; ++j) win[j] = st[j];
  for (uint t = 0; t < n; ++t) {
    const ulong row = first + t;
    win[hist] = x[x_off + row * x_stride + c];
    float s = b;
    for (uint j = 0; j < d_conv; ++j) s += wc[j] * win[j];
    out[out_off + row * out_stride + c] = silu_f(s);
    for (uint j = 0; j < hist; ++j) win[j] = win[j + 1];
  }
  for (uint j = 0; j < hist; ++j) st[j] = win[j];
}

// Mamba2 state: [d_state][n_head * head_dim] (neighbouring rows are neighbouring floats). Row r =
// h * head_dim + p of head h, group g = h / (n_head / n_group).
// MAMBA2_SCAN(NAME, W, VT, LOAD, STORE): the scan with W consecutive channels of one head per work
// item (W divides head_dim), VT their vector type. mamba2_scan_f32 (W = 1: neighbouring items read
// neighbouring state floats, as GPUs want) and mamba2_scan8_f32 (W = 8: each item streams state
// rows with 8-wide loads, as CPUs want) do the same arithmetic in the same order per channel.
#define SCAN_LOAD1(p) (*(p))
#define SCAN_STORE1(v, p) (*(p) = (v))
#define SCAN_LOAD8(p) vload8(0, (p))
#define SCAN_STORE8(v, p) vstore8((v), 0, (p))
#define MAMBA2_SCAN(NAME, W, VT, LOAD, STORE)                                                     \
  __kernel void NAME(__global const float* x, uint x_off, uint x_stride, __global const float* dt, \
                     uint dt_off, uint dt_stride, __global const float* bm, uint b_off,            \
                     uint b_stride, __global const float* cm, uint c_off, uint c_stride,           \
                     __global const float* a, uint a_off, __global const float* d, uint d_off,     \
                     __global const float* dt_bias, uint dtb_off, __global float* states,          \
                     ulong slot_stride, uint state_off, __global const int* seqs, uint seqs_off,   \
                     __global float* y, uint y_off, uint y_stride, uint n_head, uint head_dim,     \
                     uint n_group, uint d_state, uint t_first, uint t_count) {                     \
    const uint r = W * (uint)get_global_id(0);                                                     \
    const uint sq = get_global_id(1);                                                              \
    const uint d_inner = n_head * head_dim;                                                        \
    if (r >= d_inner) return;                                                                      \
    const uint h = r / head_dim;                                                                   \
    const uint g = h / (n_head / n_group);                                                         \
    const uint first = (uint)seqs[seqs_off + 3 * sq];                                              \
    const uint n = (uint)seqs[seqs_off + 3 * sq + 1];                                              \
    const ulong slot = (ulong)seqs[seqs_off + 3 * sq + 2];                                         \
    __global float* st = states + slot * slot_stride + state_off + r;                              \
    const float ah = a[a_off + h], dh = d[d_off + h], bias = dt_bias[dtb_off + h];                 \
    const uint t_end = min(n, t_first + t_count);                                                  \
    for (uint t = t_first; t < t_end; ++t) {                                                       \
      const ulong row = first + t;                                                                 \
      const float dt_sp = softplus_f(dt[dt_off + row * dt_stride + h] + bias);                     \
      const float da = exp(dt_sp * ah);                                                            \
      const VT xv = LOAD(x + x_off + row * x_stride + r);                                          \
      const VT x_dt = xv * dt_sp;                                                                  \
      __global const float* bt = bm + b_off + row * b_stride + (ulong)g * d_state;                 \
      __global const float* ct = cm + c_off + row * c_stride + (ulong)g * d_state;                 \
      VT sum = (VT)(0.0f);                                                                         \
      for (uint k = 0; k < d_state; ++k) {                                                         \
        __global float* sk = st + (ulong)k * d_inner;                                              \
        const VT s = LOAD(sk) * da + bt[k] * x_dt;                                                 \
        STORE(s, sk);                                                                              \
        sum += s * ct[k];                                                                          \
      }                                                                                            \
      STORE(sum + dh * xv, y + y_off + row * y_stride + r);                                        \
    }                                                                                              \
  }

MAMBA2_SCAN(mamba2_scan_f32, 1, float, SCAN_LOAD1, SCAN_STORE1)
MAMBA2_SCAN(mamba2_scan8_f32, 8, float8, SCAN_LOAD8, SCAN_STORE8)

// Both forms of the scan take the tokens [t_first, t_first + t_count) of each run (the chunked one
// with t_first a multiple of SSD_CHUNK), so a long run can be split over launches on a device that
// limits a work item's loop iterations (llvmpipe).
// Mamba2's scan in its chunked (SSD) form (reference::mamba2_scan_chunked): one work-group per
// (block of up to `block` channels of one head, sequence); dimension 0 counts the groups' items,
// dimension 1 the sequences. The group walks its sequence's run in chunks of SSD_CHUNK tokens;
// within a chunk its items share the token pairs' (C_t . B_s) exp(a_t - a_s) dt'_s in local
// memory, then compute the chunk's outputs (token, channel) in parallel from the state before the
// chunk, then the state after it (state row, channel) in parallel. Same state as mamba2_scan_f32,
// so a run of one token (a decode step) is a chunk of one and the forms interoperate.
#define SSD_CHUNK 32

__kernel void mamba2_chunk_f32(__global const float* x, uint x_off, uint x_stride,
                               __global const float* dt, uint dt_off, uint dt_stride,
                               __global const float* bm, uint b_off, uint b_stride,
                               __global const float* cm, uint c_off, uint c_stride,
                               __global const float* a, uint a_off, __global const float* d,
                               uint d_off, __global const float* dt_bias, uint dtb_off,
                               __global float* states, ulong slot_stride, uint state_off,
                               __global const int* seqs, uint seqs_off, __global float* y,
                               uint y_off, uint y_stride, uint n_head, uint head_dim,
                               uint n_group, uint d_state, uint block, uint t_first,
                               uint t_count) {
  __local float pair[SSD_CHUNK * SSD_CHUNK];  // [t][s], s <= t
  __local float a_cum[SSD_CHUNK], dt_sp[SSD_CHUNK], to_end[SSD_CHUNK];
  const uint lid = get_local_id(0), items = get_local_size(0);
  const uint blocks = (head_dim + block - 1) / block;
  const uint h = (uint)get_group_id(0) / blocks;
  const uint p0 = ((uint)get_group_id(0) % blocks) * block;
  const uint np = min(block, head_dim - p0);
  const uint r0 = h * head_dim + p0;  // the block's first channel row
  const uint d_inner = n_head * head_dim;
  const uint g = h / (n_head / n_group);
  const uint sq = get_group_id(1);
  const uint first = (uint)seqs[seqs_off + 3 * sq];
  const uint n = (uint)seqs[seqs_off + 3 * sq + 1];
  const ulong slot = (ulong)seqs[seqs_off + 3 * sq + 2];
  __global float* st = states + slot * slot_stride + state_off + r0;
  const float ah = a[a_off + h], dh = d[d_off + h], bias = dt_bias[dtb_off + h];
  __global const float* bg = bm + b_off + (ulong)g * d_state;
  __global const float* cg = cm + c_off + (ulong)g * d_state;
  const uint t_end = min(n, t_first + t_count);
  for (uint c0 = t_first; c0 < t_end; c0 += SSD_CHUNK) {
    const uint len = min((uint)SSD_CHUNK, t_end - c0);
    const ulong row0 = first + c0;
    if (lid == 0) {
      float acc = 0.0f;
      for (uint t = 0; t < len; ++t) {
        const float sp = softplus_f(dt[dt_off + (row0 + t) * dt_stride + h] + bias);
        acc += sp * ah;
        dt_sp[t] = sp;
        a_cum[t] = acc;
      }
      for (uint t = 0; t < len; ++t) to_end[t] = exp(acc - a_cum[t]) * dt_sp[t];
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint i = lid; i < len * len; i += items) {
      const uint t = i / len, s = i % len;
      if (s > t) continue;
      __global const float* ct = cg + (row0 + t) * c_stride;
      __global const float* bs = bg + (row0 + s) * b_stride;
      float dot = 0.0f;
      for (uint k = 0; k < d_state; ++k) dot += ct[k] * bs[k];
      pair[t * SSD_CHUNK + s] = dot * exp(a_cum[t] - a_cum[s]) * dt_sp[s];
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    // Outputs: the state before the chunk, decayed to token t, read through C_t, plus the chunk's
    // own tokens up to t.
    for (uint i = lid; i < len * np; i += items) {
      const uint t = i / np, p = i % np;
      const ulong row = row0 + t;
      __global const float* ct = cg + row * c_stride;
      float from_state = 0.0f;
      for (uint k = 0; k < d_state; ++k) from_state += ct[k] * st[(ulong)k * d_inner + p];
      float sum = exp(a_cum[t]) * from_state;
      __global const float* xs = x + x_off + row0 * x_stride + r0 + p;
      for (uint s = 0; s <= t; ++s) sum += pair[t * SSD_CHUNK + s] * xs[(ulong)s * x_stride];
      y[y_off + row * y_stride + r0 + p] = sum + dh * xs[(ulong)t * x_stride];
    }
    barrier(CLK_GLOBAL_MEM_FENCE);  // every item has read the state before it changes
    for (uint i = lid; i < d_state * np; i += items) {
      const uint k = i / np, p = i % np;
      __global float* sk = st + (ulong)k * d_inner + p;
      float acc = exp(a_cum[len - 1]) * sk[0];
      __global const float* xs = x + x_off + row0 * x_stride + r0 + p;
      __global const float* bk = bg + row0 * b_stride + k;
      for (uint s = 0; s < len; ++s)
        acc += to_end[s] * bk[(ulong)s * b_stride] * xs[(ulong)s * x_stride];
      sk[0] = acc;
    }
    barrier(CLK_GLOBAL_MEM_FENCE | CLK_LOCAL_MEM_FENCE);
  }
}

// One work-group per (token, group) row, row = row_base + group id: token row / n_group, group
// row % n_group. w: group g's weights at w_off + g * w_group_stride (0: shared by the groups).
// out may be y (each element is read before it is written, by the same item).
__kernel void gated_rms_norm_f32(__global const float* y, uint y_off, uint y_stride,
                                 __global const float* z, uint z_off, uint z_stride,
                                 __global const float* w, uint w_off, uint w_group_stride,
                                 __global float* out, uint out_off, uint out_stride,
                                 uint group_size, uint n_group, uint row_base, float eps,
                                 uint gate_first, __local float* scratch) {
  const uint row = row_base + (uint)get_group_id(0);
  const ulong t = row / n_group;
  const uint g = row % n_group;
  y += y_off + t * y_stride + (ulong)g * group_size;
  z += z_off + t * z_stride + (ulong)g * group_size;
  out += out_off + t * out_stride + (ulong)g * group_size;
  w += w_off + (ulong)g * w_group_stride;
  SquareSum acc = {0.0f, 0.0f};
  FOR_ROW(i, group_size) add_square(&acc, gate_first ? y[i] * silu_f(z[i]) : y[i]);
  const float scale = rms_scale(acc, group_size, eps, scratch);
  FOR_ROW(i, group_size) {
    const float zi = z[i];
    const float normed = (gate_first ? y[i] * silu_f(zi) : y[i]) * scale * w[i];
    out[i] = gate_first ? normed : normed * silu_f(zi);
  }
}
