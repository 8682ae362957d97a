// Attention over the paged KV cache: KV write (scatter new tokens into their slots), flash-style
// causal prefill attention, split-K decode attention + its reduce. Grouped-query: query head h
// reads KV head h / GROUP.
//
// Build macros (host/ops/device/attention.cpp): HEAD_DIM (multiple of 4), BLOCK_SIZE, N_HEAD,
// N_HEAD_KV, the K and V pools' row formats K_FORMAT / V_FORMAT and their row sizes K_ROW_BYTES /
// V_ROW_BYTES (host/kv KvPoolLayout); tuning: PF_BQ (query rows per prefill tile), PF_TPR (work items per row),
// PF_KT (kv tokens per prefill tile; divides BLOCK_SIZE), DEC_LWS (decode work-group size),
// DEC_TILE (decode kv tokens per tile), RED_LWS (reduce work-group size).
//
// Layouts: q, out [batch token][N_HEAD][HEAD_DIM] f32; k_new, v_new [batch token][N_HEAD_KV][HEAD_DIM]
// f32; K/V pools are bytes, rows read and written only through the row codec (attention_kv.clh);
// `meta` int32 holds the batch description (host/kv/kv_view.h KvBatchView): block tables
// [seq row][bt_stride], token_seq, token_pos, token_slot. Token t attends to positions [0, pos_t]
// of its sequence, all of which are written before the attention runs; with a sliding window
// (`window` > 0, a launch argument) to [pos_t - window + 1, pos_t] only. The kernels never read a
// block-table entry before the window of the step's tokens: a window layer's cache releases those
// blocks (their entries become -1). Attention sinks (gpt-oss; `use_sinks`, sinks[N_HEAD] f32): one
// logit per query head in the softmax's max and denominator, with no value; the prefill kernel and
// the decode reduce apply them where they normalize. TurboQuant pools (K_ROTATED / V_ROTATED,
// attention_kv.clh): queries rotated once per head, outputs rotated back once where normalized.
// Every kernel that stores or scores K takes `qjl` last: the QJL matrix of prod keys (K_PROD,
// HEAD_DIM^2 floats), any buffer (unread) for other formats.
#include "common.clh"
#define GROUP (N_HEAD / N_HEAD_KV)
#include "attention_kv.clh"
#include "rope.clh"

// Decode variants (AttentionTuning::decode_variant, decode_lut; host/ops/device/attention.cpp):
// DEC_VARIANT 0 / 1 picks the value pass of the decode kernels (see each kernel); DEC_LUT_LOCAL
// has the work-group decode kernel of variant 1 read TurboQuant centroids from a local-memory
// table (KV_TURBO_LUT, kv_codec_turbo.clh, is the codec's own choice).
#ifndef DEC_VARIANT
#define DEC_VARIANT 0
#endif
#ifndef DEC_LUT_LOCAL
#define DEC_LUT_LOCAL 0
#endif
// DEC_FINISH 1: the decode kernels can finish their own q, k, v (AttentionOp::DecodeFinish).
#ifndef DEC_FINISH
#define DEC_FINISH 0
#endif
#if (K_ROTATED || V_ROTATED) && DEC_LUT_LOCAL
#define KV_TURBO_LUT_LOCAL 1
#else
#define KV_TURBO_LUT_LOCAL 0
#endif

inline float hsum_f8(float8 v) {
  const float4 a = v.lo + v.hi;
  return (a.x + a.y) + (a.z + a.w);
}

// Prod keys (K_PROD): the QJL projection of a rotated query, element j = row j of S times it.
#if K_PROD
#define K_QJL_PROJECT(suffix, space)                                                        \
  inline float k_qjl_project_##suffix(__global const float* qjl, space const float* rq, int j) { \
    __global const float* sj = qjl + (size_t)j * HEAD_DIM;                                  \
    float8 z = (float8)(0.0f);                                                              \
    for (int i = 0; i < HEAD_DIM / 8; ++i) z = fma(vload8(i, sj), vload8(i, rq), z);        \
    return hsum_f8(z);                                                                      \
  }
K_QJL_PROJECT(l, __local)
K_QJL_PROJECT(p, __private)
#undef K_QJL_PROJECT
// The work-group decode kernels: every head of the group projected, items sharing the rows of S.
#define K_PROJECT_GROUP()                                                         \
  for (int i = lid; i < GROUP * HEAD_DIM; i += DEC_LWS)                           \
    qs[(i / HEAD_DIM) * K_QDIM + HEAD_DIM + i % HEAD_DIM] =                       \
        k_qjl_project_l(qjl, qs + (i / HEAD_DIM) * K_QDIM, i % HEAD_DIM);         \
  barrier(CLK_LOCAL_MEM_FENCE)
#else
#define K_PROJECT_GROUP() (void)qjl
#endif


// ---- (a) KV write: grid (items per row, N_HEAD_KV, n_tokens). CPUs pass 1 item per row, so each
// work item streams one contiguous row; GPUs pass HEAD_DIM / 4 items, one float4 each.
__kernel void kv_write(__global const float* k_new, uint k_off, __global const float* v_new,
                       uint v_off, __global const int* meta, uint slot_off, uint first_token,
                       __global uchar* k_pool, __global uchar* v_pool,
                       __global const float* qjl) {
  const uint t = first_token + get_global_id(2);
  const int h = get_global_id(1);
  const int slot = meta[slot_off + t];
  if (slot < 0) return;  // padding token: nothing to store
  const size_t row = kv_row_index(slot / BLOCK_SIZE, h, slot % BLOCK_SIZE);
  const size_t src = ((size_t)t * N_HEAD_KV + h) * HEAD_DIM;
  k_store_row_g(k_pool + row * K_ROW_BYTES, k_new + k_off + src, get_global_id(0), get_global_size(0));
  v_store_row_g(v_pool + row * V_ROW_BYTES, v_new + v_off + src, get_global_id(0), get_global_size(0));
}

// ---- (a') QKV finish: one launch from the projections to the cache. Reads a token's q, k and v
// heads from a projection buffer (token rows `tok_stride` floats apart; q at column 0, k at k_col,
// v at v_col: one fused QKV row or three separate buffers' worth of offsets), applies the optional
// per-head RMSNorm (Qwen3 q_norm / k_norm) and RoPE (as rope.cl) to q and k, writes q packed
// [batch token][N_HEAD][HEAD_DIM] to q_out and stores k and v into the token's slot like kv_write.
// Grid: (QF_LWS * (N_HEAD + 2 * N_HEAD_KV), n_tokens), one work group per head of a token.
#ifdef DEVICE_IS_CPU
#define QF_LWS 1
#else
#define QF_LWS 32
#endif
__kernel __attribute__((reqd_work_group_size(QF_LWS, 1, 1)))
void qkv_finish(__global const float* qkv, uint qkv_off, uint tok_stride, uint k_col, uint v_col,
                __global const float* q_norm, __global const float* k_norm, uint use_norm,
                float eps, uint n_rot, float freq_base, float freq_scale,
                __global const float* freq_factors, uint use_ff, uint neox, float4 yarn,
                __global const int* meta,
                uint pos_off, uint slot_off, uint first_token, __global float* q_out,
                uint q_out_off, __global uchar* k_pool, __global uchar* v_pool,
                __global const float* qjl) {
  __local float buf[HEAD_DIM];
  __local float red[QF_LWS];
  const uint lid = get_local_id(0);
  const uint hs = get_group_id(0);
  const uint t = first_token + get_group_id(1);
  const uint kind = hs < N_HEAD ? 0 : (hs < N_HEAD + N_HEAD_KV ? 1 : 2);  // q, k, v
  const uint h = kind == 0 ? hs : (kind == 1 ? hs - N_HEAD : hs - N_HEAD - N_HEAD_KV);
  const uint col = (kind == 0 ? 0 : (kind == 1 ? k_col : v_col)) + h * HEAD_DIM;
  __global const float* src = qkv + qkv_off + (size_t)t * tok_stride + col;
  for (uint d = lid; d < HEAD_DIM; d += QF_LWS) buf[d] = src[d];
  barrier(CLK_LOCAL_MEM_FENCE);
  if (kind != 2) {
    if (use_norm) {
      __global const float* w = kind == 0 ? q_norm : k_norm;
      float s = 0.0f;
      for (uint d = lid; d < HEAD_DIM; d += QF_LWS) s += buf[d] * buf[d];
      red[lid] = s;
      barrier(CLK_LOCAL_MEM_FENCE);
      for (uint st = QF_LWS / 2; st > 0; st >>= 1) {
        if (lid < st) red[lid] += red[lid + st];
        barrier(CLK_LOCAL_MEM_FENCE);
      }
      const float scale = 1.0f / sqrt(red[0] / (float)HEAD_DIM + eps);
      for (uint d = lid; d < HEAD_DIM; d += QF_LWS) buf[d] = buf[d] * scale * w[d];
      barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float pos = (float)meta[pos_off + t];
    for (uint i = lid; i < n_rot / 2; i += QF_LWS) {
      const float theta =
          rope_yarn_theta(pos, i, n_rot, freq_base, freq_scale, freq_factors, use_ff, yarn);
      float c;
      const float s = rope_sin_cos(theta, yarn, &c);
      const uint2 ab = rope_pair(i, n_rot, neox);
      const uint a = ab.x, b = ab.y;
      const float x0 = buf[a], x1 = buf[b];
      buf[a] = x0 * c - x1 * s;
      buf[b] = x0 * s + x1 * c;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  if (kind == 0) {
    __global float* dst = q_out + q_out_off + ((size_t)t * N_HEAD + h) * HEAD_DIM;
    for (uint d = lid; d < HEAD_DIM; d += QF_LWS) dst[d] = buf[d];
    return;
  }
  const int slot = meta[slot_off + t];
  if (slot < 0) return;  // padding token: nothing to store
  const size_t row = kv_row_index(slot / BLOCK_SIZE, h, slot % BLOCK_SIZE);
  if (kind == 1)
    k_store_row_l(k_pool + row * K_ROW_BYTES, buf, lid, QF_LWS);
  else
    v_store_row_l(v_pool + row * V_ROW_BYTES, buf, lid, QF_LWS);
}

// One head in private memory (qkv_finish_rows, the decode row kernel): the optional RMSNorm by w,
// then RoPE by the pairs' cos / sin (cs, sn: n_rot / 2 each, rope_angles_p).
inline void finish_head_p(float* x, __global const float* w, uint use_norm, float eps, uint n_rot,
                          uint neox, const float* cs, const float* sn) {
  if (use_norm) {
    float s = 0.0f;
    for (int d = 0; d < HEAD_DIM; ++d) s += x[d] * x[d];
    const float scale = 1.0f / sqrt(s / (float)HEAD_DIM + eps);
    for (int d = 0; d < HEAD_DIM; ++d) x[d] = x[d] * scale * w[d];
  }
  for (uint i = 0; i < n_rot / 2; ++i) {
    const uint2 ab = rope_pair(i, n_rot, neox);
    const float x0 = x[ab.x], x1 = x[ab.y];
    x[ab.x] = x0 * cs[i] - x1 * sn[i];
    x[ab.y] = x0 * sn[i] + x1 * cs[i];
  }
}
// The RoPE angles' cos / sin at pos, once for all of a token's heads.
inline void rope_angles_p(float pos, uint n_rot, __global const float* inv_freq, float freq_scale,
                          __global const float* freq_factors, uint use_ff, float4 yarn, float* cs,
                          float* sn) {
  for (uint i = 0; i < n_rot / 2; ++i) {
    const float theta =
        rope_yarn_theta_inv(pos, inv_freq[i], i, freq_scale, freq_factors, use_ff, yarn);
    float c;
    sn[i] = rope_sin_cos(theta, yarn, &c);
    cs[i] = c;
  }
}

// The same for CPUs: one work item per token walks all its heads, so the RoPE angles (a sincos per
// pair, a scalar library call on PoCL) are computed once per token instead of once per head, and
// each pair's inverse frequency freq_base^(-2i/n_rot) is read from `inv_freq` (n_rot/2 floats,
// AttentionOp's table) instead of a pow per pair and token. Grid: (n_tokens), local size 1.
__kernel void qkv_finish_rows(__global const float* qkv, uint qkv_off, uint tok_stride,
                              uint k_col, uint v_col, __global const float* q_norm,
                              __global const float* k_norm, uint use_norm, float eps, uint n_rot,
                              __global const float* inv_freq, float freq_scale,
                              __global const float* freq_factors,
                              uint use_ff, uint neox, float4 yarn, __global const int* meta,
                              uint pos_off,
                              uint slot_off, uint first_token, __global float* q_out,
                              uint q_out_off, __global uchar* k_pool, __global uchar* v_pool,
                              __global const float* qjl) {
  const uint t = first_token + get_global_id(0);
  float cs[HEAD_DIM / 2], sn[HEAD_DIM / 2];
  rope_angles_p((float)meta[pos_off + t], n_rot, inv_freq, freq_scale, freq_factors, use_ff, yarn,
                cs, sn);
  const int slot = meta[slot_off + t];
  __global const float* row = qkv + qkv_off + (size_t)t * tok_stride;
  float buf[HEAD_DIM];
  for (uint hs = 0; hs < N_HEAD + 2 * N_HEAD_KV; ++hs) {
    const uint kind = hs < N_HEAD ? 0 : (hs < N_HEAD + N_HEAD_KV ? 1 : 2);
    const uint h = kind == 0 ? hs : (kind == 1 ? hs - N_HEAD : hs - N_HEAD - N_HEAD_KV);
    __global const float* src = row + (kind == 0 ? 0 : (kind == 1 ? k_col : v_col)) + h * HEAD_DIM;
    for (uint d = 0; d < HEAD_DIM; ++d) buf[d] = src[d];
    if (kind != 2) finish_head_p(buf, kind == 0 ? q_norm : k_norm, use_norm, eps, n_rot, neox, cs, sn);
    if (kind == 0) {
      __global float* dst = q_out + q_out_off + ((size_t)t * N_HEAD + h) * HEAD_DIM;
      for (uint d = 0; d < HEAD_DIM; ++d) dst[d] = buf[d];
      continue;
    }
    if (slot < 0) continue;  // padding token: nothing to store
    const size_t r = kv_row_index(slot / BLOCK_SIZE, h, slot % BLOCK_SIZE);
    if (kind == 1)
      k_store_row_p(k_pool + r * K_ROW_BYTES, buf, 0, 1);
    else
      v_store_row_p(v_pool + r * V_ROW_BYTES, buf, 0, 1);
  }
}

// ---- (b) Prefill: one work-group per (tile of PF_BQ consecutive batch tokens, query head);
// PF_BQ * PF_TPR work items; row r = lid / PF_TPR is served by PF_TPR items. The tile's rows are
// processed in runs of equal sequence; a run walks its sequence's KV in PF_KT-token tiles held in
// local memory as float, with an online softmax per row (running max, sum, rescaled output).
#define PF_WG (PF_BQ * PF_TPR)
#define PF_OWN (HEAD_DIM / PF_TPR)
#define PF_KSTRIDE (K_QDIM + 1)  // padding: items of one row read different K rows, other banks
#if PF_TPR > 1
#define PF_QS (K_QDIM + 1)  // padding: the rows of a GPU warp read their queries from other banks
#define PF_SPI ((PF_KT + PF_TPR - 1) / PF_TPR)  // scores per item and tile
#else
#define PF_QS K_QDIM
#endif

__kernel __attribute__((reqd_work_group_size(PF_WG, 1, 1)))
void attention_prefill(__global const float* q, uint q_off, __global float* out, uint out_off,
                       __global const int* meta, uint bt_off, uint bt_stride, uint seq_off,
                       uint pos_off, uint first_token, uint n_tokens, float scale, uint window,
                       __global const uchar* k_pool, __global const uchar* v_pool,
                       __global const float* sinks, uint use_sinks, __global const float* qjl) {
  __local float qs[PF_BQ * PF_QS];
  __local float ks[PF_KT * PF_KSTRIDE];
  __local float vs[PF_KT * HEAD_DIM];
  __local float ss[PF_BQ * PF_KT];
  __local int rseq[PF_BQ], rpos[PF_BQ];
#if PF_TPR > 1
  __local float redm[PF_WG], reds[PF_WG];
#endif
  float m_run = -INFINITY, l_run = 0.0f;  // the row's running max and sum (each of its items)

  const int lid = get_local_id(0);
  const int r = lid / PF_TPR, c = lid % PF_TPR;
  const int h = get_group_id(1), kvh = h / GROUP;
  const uint row0 = get_group_id(0) * PF_BQ;
  const int rows = min((uint)PF_BQ, n_tokens - row0);

  for (int i = lid; i < PF_BQ; i += PF_WG) {
    const uint t = first_token + row0 + i;
    rseq[i] = i < rows ? meta[seq_off + t] : -1;
    rpos[i] = i < rows ? meta[pos_off + t] : -1;
  }
  for (int i = lid; i < PF_BQ * HEAD_DIM; i += PF_WG) {
    const int rr = i / HEAD_DIM, d = i % HEAD_DIM;
    qs[rr * PF_QS + d] =
        rr < rows ? q[q_off + ((size_t)(first_token + row0 + rr) * N_HEAD + h) * HEAD_DIM + d] * scale
                  : 0.0f;
  }
  barrier(CLK_LOCAL_MEM_FENCE);
#if K_ROTATED
  // TurboQuant K rows hold rotated vectors: rotate each query row once.
  for (int i = lid; i < PF_BQ; i += PF_WG) kv_turbo_rotate_l(qs + i * PF_QS);
  barrier(CLK_LOCAL_MEM_FENCE);
#endif
#if K_PROD
  // Prod keys: each row's QJL projection S R q after its rotated query.
  for (int i = lid; i < PF_BQ * HEAD_DIM; i += PF_WG)
    qs[(i / HEAD_DIM) * PF_QS + HEAD_DIM + i % HEAD_DIM] =
        k_qjl_project_l(qjl, qs + (i / HEAD_DIM) * PF_QS, i % HEAD_DIM);
  barrier(CLK_LOCAL_MEM_FENCE);
#endif

  float o[PF_OWN];
  int run_start = 0;
  while (run_start < rows) {  // uniform: every item reads the same local values
    const int s = rseq[run_start];
    int run_end = run_start + 1;
    int max_pos = rpos[run_start], min_pos = rpos[run_start];
    while (run_end < rows && rseq[run_end] == s) {
      max_pos = max(max_pos, rpos[run_end]);
      min_pos = min(min_pos, rpos[run_end++]);
    }
    const bool mine = r >= run_start && r < run_end;
    const int my_pos = mine ? rpos[r] : -1;
    // First visible position of this row, and of the run (where its tiles start: the block of
    // that position is still held, earlier ones may have been released).
    const int my_lo = window ? my_pos - (int)window + 1 : 0;
    const int run_lo = window ? max(0, min_pos - (int)window + 1) : 0;
    for (int i = 0; i < PF_OWN; ++i) o[i] = 0.0f;
    m_run = -INFINITY;
    l_run = 0.0f;
    const int n_kv = max_pos + 1;
    __global const int* table = meta + bt_off + (size_t)s * bt_stride;
    for (int j0 = run_lo / PF_KT * PF_KT; j0 < n_kv; j0 += PF_KT) {
      // The tile's rows are decoded into local memory once for all the tile's query rows. PF_KT
      // divides BLOCK_SIZE (the tile's rows follow each other in one block) or is a multiple of
      // it (a row's block from the table). Rows past n_kv were never written and rows before the
      // run's first visible position may sit in released blocks: load zeros for both, so masked
      // scores meet finite values.
#if PF_KT <= BLOCK_SIZE
      const size_t base = kv_row_index(table[j0 / BLOCK_SIZE], kvh, j0 % BLOCK_SIZE);
#define PF_ROW(jj) (base + (size_t)(jj))
#define PF_VALID(jj) (j0 + (jj) < n_kv)
#else
#define PF_ROW(jj) kv_row_index(table[(j0 + (jj)) / BLOCK_SIZE], kvh, (j0 + (jj)) % BLOCK_SIZE)
#define PF_VALID(jj) (j0 + (jj) < n_kv && j0 + (jj) >= run_lo)
#endif
      for (int i = lid * 4; i < PF_KT * HEAD_DIM; i += PF_WG * 4) {
        const int jj = i / HEAD_DIM, d = i % HEAD_DIM;
        const bool valid = PF_VALID(jj);
        const size_t row = valid ? PF_ROW(jj) : 0;
        const float4 k4 = valid ? k_load4(k_pool + row * K_ROW_BYTES, d) : (float4)(0.0f);
        const float4 v4 = valid ? v_load4(v_pool + row * V_ROW_BYTES, d) : (float4)(0.0f);
        __local float* kd = ks + jj * PF_KSTRIDE + d;
        kd[0] = k4.x; kd[1] = k4.y; kd[2] = k4.z; kd[3] = k4.w;
        vstore4(v4, 0, vs + i);
      }
#if K_PROD
      // The key's second half (its signs, scaled), scored against the rows' projections.
      for (int i = lid * 4; i < PF_KT * HEAD_DIM; i += PF_WG * 4) {
        const int jj = i / HEAD_DIM, d = i % HEAD_DIM;
        const bool valid = PF_VALID(jj);
        const float4 k4 = valid ? k_load4(k_pool + PF_ROW(jj) * K_ROW_BYTES, HEAD_DIM + d)
                                : (float4)(0.0f);
        __local float* kd = ks + jj * PF_KSTRIDE + HEAD_DIM + d;
        kd[0] = k4.x; kd[1] = k4.y; kd[2] = k4.z; kd[3] = k4.w;
      }
#endif
      barrier(CLK_LOCAL_MEM_FENCE);
#if PF_TPR > 1
      // GPUs: item c of row r scores keys jj = c, c + PF_TPR, ... in registers (one query load
      // per PF_SPI keys), the row's maximum and sum go through redm / reds (each item of the row
      // adds the PF_TPR partials in the same order, so all keep the same running max m_run and
      // sum l_run), then each item adds its channels over the tile (one weight load per PF_OWN
      // value loads).
      {
        float sc[PF_SPI];
        for (int i = 0; i < PF_SPI; ++i) sc[i] = -INFINITY;
        float pmax = -INFINITY;
        if (mine) {
          float a[PF_SPI];
          for (int i = 0; i < PF_SPI; ++i) a[i] = 0.0f;
          for (int d = 0; d < K_QDIM; ++d) {
            const float qd = qs[r * PF_QS + d];
            for (int i = 0; i < PF_SPI; ++i) {
              const int jj = c + i * PF_TPR;
              if (jj < PF_KT) a[i] += qd * ks[jj * PF_KSTRIDE + d];
            }
          }
          for (int i = 0; i < PF_SPI; ++i) {
            const int jj = c + i * PF_TPR;
            if (jj < PF_KT && j0 + jj <= my_pos && j0 + jj >= my_lo) sc[i] = a[i];
            pmax = fmax(pmax, sc[i]);
          }
        }
        redm[lid] = pmax;
        barrier(CLK_LOCAL_MEM_FENCE);
        float mx = m_run;
        if (mine)
          for (int k = 0; k < PF_TPR; ++k) mx = fmax(mx, redm[r * PF_TPR + k]);
        // mx is -inf only while no tile so far held a visible position of this row (tiles before
        // its window that another row of the run needs): every p is then 0 and nothing changes.
        const float base = mx == -INFINITY ? 0.0f : mx;
        float psum = 0.0f;
        if (mine) {
          for (int i = 0; i < PF_SPI; ++i) {
            const int jj = c + i * PF_TPR;
            const float pv = exp(sc[i] - base);
            if (jj < PF_KT) ss[r * PF_KT + jj] = pv;
            psum += pv;
          }
        }
        reds[lid] = psum;
        barrier(CLK_LOCAL_MEM_FENCE);
        if (mine) {
          float sum = 0.0f;
          for (int k = 0; k < PF_TPR; ++k) sum += reds[r * PF_TPR + k];
          const float alpha = exp(m_run - base);  // 0 until the first visible tile
          l_run = l_run * alpha + sum;
          m_run = mx;
          for (int i = 0; i < PF_OWN; ++i) o[i] *= alpha;
          for (int jj = 0; jj < PF_KT; ++jj) {
            const float w = ss[r * PF_KT + jj];
            for (int i = 0; i < PF_OWN; ++i) o[i] += w * vs[jj * HEAD_DIM + c + i * PF_TPR];
          }
        }
      }
#else
      // CPUs: one item per row (it owns the row's scores, softmax state and channels), explicit
      // vectors, since nothing is vectorized across items.
      if (mine) {
        for (int jj = 0; jj < PF_KT; ++jj) {
          float acc = -INFINITY;
          if (j0 + jj <= my_pos && j0 + jj >= my_lo) {
            floatv a = (floatv)(0.0f);
            for (int i = 0; i < K_QDIM / VW; ++i)
              a = fma(vloadv(i, qs + r * PF_QS), vloadv(0, ks + jj * PF_KSTRIDE + i * VW), a);
            acc = hsumv(a);
          }
          ss[r * PF_KT + jj] = acc;
        }
        const float m_old = m_run;
        float mx = m_old;
#if PF_KT % VW == 0
        // CPUs: the row's maximum, exponentials and sum in VW-wide vectors (a vector exp is one
        // SIMD routine; the scalar one, once per score, cost more than the scores' dot products).
        __local float* sr = ss + r * PF_KT;
        floatv mv = (floatv)(mx);
        for (int i = 0; i < PF_KT / VW; ++i) mv = fmax(mv, vloadv(i, sr));
        mx = hmaxv(mv);
        const float base = mx == -INFINITY ? 0.0f : mx;
        floatv sv = (floatv)(0.0f);
        for (int i = 0; i < PF_KT / VW; ++i) {
          const floatv p = exp(vloadv(i, sr) - base);
          vstorev(p, i, sr);
          sv += p;
        }
        const float sum = hsumv(sv);
#else
        for (int jj = 0; jj < PF_KT; ++jj) mx = fmax(mx, ss[r * PF_KT + jj]);
        // mx is -inf only while no tile so far held a visible position of this row (tiles before
        // its window that another row of the run needs): every p is then 0 and nothing changes.
        const float base = mx == -INFINITY ? 0.0f : mx;
        float sum = 0.0f;
        for (int jj = 0; jj < PF_KT; ++jj) {
          const float p = exp(ss[r * PF_KT + jj] - base);
          ss[r * PF_KT + jj] = p;
          sum += p;
        }
#endif
        const float alpha = exp(m_old - base);  // 0 until the first visible tile (m_old = -inf)
        l_run = l_run * alpha + sum;
        m_run = mx;
        for (int i = 0; i < HEAD_DIM / VW; ++i) {
          floatv acc = vloadv(i, o) * alpha;
          for (int jj = 0; jj < PF_KT; ++jj) acc = fma((floatv)(ss[r * PF_KT + jj]), vloadv(i, vs + jj * HEAD_DIM), acc);
          vstorev(acc, i, o);
        }
      }
#endif
      barrier(CLK_LOCAL_MEM_FENCE);  // the next tile overwrites ks, vs, ss
    }
#undef PF_ROW
#undef PF_VALID
    if (mine) {
      // A sink joins the denominator: rescale to the larger of the row's max and the sink.
      float inv = 1.0f / l_run;
      if (use_sinks) {
        const float mx = fmax(m_run, sinks[h]), a = exp(m_run - mx);
        inv = a / (l_run * a + exp(sinks[h] - mx));
      }
#if V_ROTATED
      // The output is rotated (TurboQuant V rows): gather the row in its query's local slot (its
      // run is over) and rotate it back once.
      for (int i = 0; i < PF_OWN; ++i) qs[r * PF_QS + c + i * PF_TPR] = o[i] * inv;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    if (mine && c == 0) kv_turbo_rotate_inverse_l(qs + r * PF_QS);
    barrier(CLK_LOCAL_MEM_FENCE);
    if (mine) {
      __global float* dst = out + out_off + ((size_t)(first_token + row0 + r) * N_HEAD + h) * HEAD_DIM;
      for (int i = 0; i < PF_OWN; ++i) dst[c + i * PF_TPR] = qs[r * PF_QS + c + i * PF_TPR];
#else
      __global float* dst = out + out_off + ((size_t)(first_token + row0 + r) * N_HEAD + h) * HEAD_DIM;
      for (int i = 0; i < PF_OWN; ++i) dst[c + i * PF_TPR] = o[i] * inv;
#endif
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    run_start = run_end;
  }
}

// ---- (c) Split-K decode: one work-group per (context chunk, KV head, token) serves the GROUP
// query heads of that KV head, so each K/V row is read once per group. It writes a partial
// (max, sum, unnormalized output) per query head and chunk to `part`:
//   part [token][N_HEAD][n_chunks][2 + HEAD_DIM]
// Per tile of DEC_TILE (= DEC_LWS, a power of two) tokens: item jj scores token jj for every head
// of the group; the tile maxima come from a local-memory tree; each item keeps its own running sum
// (rescaled as the max grows; one tree at the end); for the output, items own 4 consecutive
// (head, dim) pairs, so neighbouring items read neighbouring V elements of a row.
#define DEC_PAIRS4 (GROUP * HEAD_DIM / 4)
#define DEC_OWN ((DEC_PAIRS4 + DEC_LWS - 1) / DEC_LWS)

// Tokens per decode chunk: the step's longest context (meta[ctx_off], in the batch buffer so a
// recorded launch stays valid as sequences grow; at most `window` when there is one) over
// n_chunks chunks of whole DEC_TILE tiles. A token's chunks start at its first visible position,
// so no chunk reads a block a window layer released.
inline uint decode_chunk_tokens(__global const int* meta, uint ctx_off, uint n_chunks,
                                uint window) {
  const uint ctx = window ? min((uint)meta[ctx_off], window) : (uint)meta[ctx_off];
  const uint tiles = max(1u, (ctx + DEC_TILE - 1) / DEC_TILE);
  return (tiles + n_chunks - 1) / n_chunks * DEC_TILE;
}


// Combining the chunks' partials of one (token, query head) into the output: the reduce kernel,
// or, with `fuse` (AttentionTuning::fused_reduce), the decode launch itself: each work-group bumps
// its (token, KV head)'s counter after writing its partials and the last one to finish combines
// the group's heads (and resets the counter for the next launch), so no reduce launch runs. It
// reads the other work-groups' partials through a volatile pointer after a global fence (their
// writes were fenced before their increments). Items lid < ITEMS share the channels; ob holds
// HEAD_DIM floats of scratch for a rotated V (TurboQuant rows, rotated back once here).
#define DEFINE_REDUCE_HEAD(suffix, ITEMS, PART_Q, OB_SPACE, SYNC, ROTATE_INV)                      \
  inline void reduce_head_##suffix(PART_Q const float* part, uint n_chunks, uint n_used,          \
                                   uint first_token, uint ti, int h, __global float* out,          \
                                   uint out_off, __global const float* sinks, uint use_sinks,      \
                                   int lid, OB_SPACE float* ob) {                                  \
    PART_Q const float* src = part + ((size_t)ti * N_HEAD + h) * n_chunks * (2 + HEAD_DIM);        \
    float m = use_sinks ? sinks[h] : -INFINITY; /* a sink joins the max and the denominator */    \
    for (uint c = 0; c < n_used; ++c) m = fmax(m, src[c * (2 + HEAD_DIM)]);                        \
    float l = use_sinks ? exp(sinks[h] - m) : 0.0f;                                                \
    float acc[(HEAD_DIM + (ITEMS) - 1) / (ITEMS)];                                                 \
    for (int i = 0; i < (HEAD_DIM + (ITEMS) - 1) / (ITEMS); ++i) acc[i] = 0.0f;                    \
    for (uint c = 0; c < n_used; ++c) {                                                            \
      PART_Q const float* p = src + c * (2 + HEAD_DIM);                                            \
      const float pl = p[1];                                                                       \
      if (pl == 0.0f) continue; /* empty chunk (its max is -inf) */                                \
      const float w = exp(p[0] - m);                                                               \
      l += pl * w;                                                                                 \
      for (int i = 0; i < (HEAD_DIM + (ITEMS) - 1) / (ITEMS); ++i) {                               \
        const int d = lid + i * (ITEMS);                                                           \
        if (d < HEAD_DIM) acc[i] += p[2 + d] * w;                                                  \
      }                                                                                            \
    }                                                                                              \
    const float inv = 1.0f / l;                                                                    \
    __global float* dst = out + out_off + ((size_t)(first_token + ti) * N_HEAD + h) * HEAD_DIM;    \
    REDUCE_STORE(ITEMS, SYNC, ROTATE_INV)                                                          \
  }
#if V_ROTATED
// The partials are rotated (TurboQuant V rows): rotate the combined output back once.
#define REDUCE_STORE(ITEMS, SYNC, ROTATE_INV)                                                      \
  for (int i = 0; i < (HEAD_DIM + (ITEMS) - 1) / (ITEMS); ++i) {                                   \
    const int d = lid + i * (ITEMS);                                                               \
    if (d < HEAD_DIM) ob[d] = acc[i] * inv;                                                        \
  }                                                                                                \
  SYNC;                                                                                            \
  if (lid == 0) ROTATE_INV(ob);                                                                    \
  SYNC;                                                                                            \
  for (int i = 0; i < (HEAD_DIM + (ITEMS) - 1) / (ITEMS); ++i) {                                   \
    const int d = lid + i * (ITEMS);                                                               \
    if (d < HEAD_DIM) dst[d] = ob[d];                                                              \
  }                                                                                                \
  SYNC;
#else
#define REDUCE_STORE(ITEMS, SYNC, ROTATE_INV)                                                      \
  (void)ob;                                                                                        \
  for (int i = 0; i < (HEAD_DIM + (ITEMS) - 1) / (ITEMS); ++i) {                                   \
    const int d = lid + i * (ITEMS);                                                               \
    if (d < HEAD_DIM) dst[d] = acc[i] * inv;                                                       \
  }
#endif
// The inverse rotation of the scratch's address space (named only where V is rotated).
DEFINE_REDUCE_HEAD(red, RED_LWS, __global, __local, barrier(CLK_LOCAL_MEM_FENCE),
                   kv_turbo_rotate_inverse_l)
DEFINE_REDUCE_HEAD(dec, DEC_LWS, __global volatile, __local, barrier(CLK_LOCAL_MEM_FENCE),
                   kv_turbo_rotate_inverse_l)
DEFINE_REDUCE_HEAD(row, 1, __global volatile, __private, (void)0, kv_turbo_rotate_inverse_p)

// The fused combine's chunks: only the first n_used of a token's chunks hold keys (chunk c starts
// at its first visible position + c chunk_tokens), the rest are empty partials, so the combine
// reads n_used of them; at decode over a short context that is one of the n_chunks the launch
// was recorded with. Unrotated V: the group's heads are combined at once, DEC_RED_PER items each
// (no barrier inside, so the items past GROUP heads skip it); rotated V (a barrier per head):
// one head after another with every item.
#define DEC_N_USED min(n_chunks, (uint)((n_kv - lo + (int)chunk_tokens - 1) / (int)chunk_tokens))
#define DEC_RED_PER (DEC_LWS / GROUP)
#if !V_ROTATED && DEC_RED_PER >= 1
DEFINE_REDUCE_HEAD(decg, DEC_RED_PER, __global volatile, __local, (void)0,
                   kv_turbo_rotate_inverse_l)
#define DEC_COMBINE_HEADS()                                                                        \
  if (lid / DEC_RED_PER < GROUP)                                                                   \
    reduce_head_decg(part, n_chunks, DEC_N_USED, first_token, ti, kvh * GROUP + lid / DEC_RED_PER, \
                     out, out_off, sinks, use_sinks, lid % DEC_RED_PER, qs);
#else
#define DEC_COMBINE_HEADS()                                                                        \
  for (int g = 0; g < GROUP; ++g)                                                                  \
    reduce_head_dec(part, n_chunks, DEC_N_USED, first_token, ti, kvh * GROUP + g, out, out_off,    \
                    sinks, use_sinks, lid, qs);
#endif

// The decode kernels' arguments for the fused combine (before qjl) and their tails: work-group
// kernels (DEC_LWS items, `qs` free as scratch by then) and the row kernel (one item).
#define DECODE_FUSE_ARGS                                                                           \
  uint fuse, __global volatile int* counters, __global float* out, uint out_off,                   \
      __global const float* sinks, uint use_sinks
#define DECODE_WG_TAIL()                                                                           \
  if (fuse) {                                                                                      \
    barrier(CLK_GLOBAL_MEM_FENCE | CLK_LOCAL_MEM_FENCE);                                           \
    if (lid == 0) {                                                                                \
      mem_fence(CLK_GLOBAL_MEM_FENCE);                                                             \
      fr_last = atomic_inc(counters + ti * N_HEAD_KV + kvh) == (int)n_chunks - 1;                  \
    }                                                                                              \
    barrier(CLK_LOCAL_MEM_FENCE);                                                                  \
    if (fr_last) {                                                                                 \
      if (lid == 0) atomic_xchg(counters + ti * N_HEAD_KV + kvh, 0);                               \
      mem_fence(CLK_GLOBAL_MEM_FENCE);                                                             \
      DEC_COMBINE_HEADS()                                                                          \
    }                                                                                              \
  }
#define DECODE_ROW_TAIL()                                                                          \
  if (fuse) {                                                                                      \
    mem_fence(CLK_GLOBAL_MEM_FENCE);                                                               \
    if (atomic_inc(counters + ti * N_HEAD_KV + kvh) == (int)n_chunks - 1) {                        \
      atomic_xchg(counters + ti * N_HEAD_KV + kvh, 0);                                             \
      mem_fence(CLK_GLOBAL_MEM_FENCE);                                                             \
      float ob[HEAD_DIM];                                                                          \
      for (int g = 0; g < GROUP; ++g)                                                              \
        reduce_head_row(part, n_chunks, DEC_N_USED, first_token, ti, kvh * GROUP + g, out,         \
                        out_off, sinks, use_sinks, 0, ob);                                         \
    }                                                                                              \
  }

// The projections' last step inside the decode launch (AttentionOp::decode with a DecodeFinish;
// decode steps only, one token per sequence): `finish` set, each work-group reads its group's
// query heads from the q|k|v row (not from `q`) and gives them qkv_finish's optional per-head
// RMSNorm and RoPE itself, and the work-group whose chunk holds the token's own position finishes
// the token's k and v heads of its KV head and stores them into the token's slot before it reads
// its keys (no other work-group reads that row: other tokens are other sequences), so no
// qkv_finish launch runs. RoPE angles from the pairs' inverse frequencies (`inv_freq`, as
// qkv_finish_rows). Compiled in only with DEC_FINISH=1 (AttentionTuning::decode_finish): its
// barriers inside the `finish` branches doubled PoCL's build time of the work-group decode kernels
// (19 matrix cases, cold kernel cache, 2-core machine: 37 s -> 78 s); without it the arguments are
// there and unread.
#define DECODE_FINISH_ARGS                                                                         \
  uint finish, __global const float* qkv, uint qkv_off, uint tok_stride, uint k_col, uint v_col,   \
      __global const float* q_norm, __global const float* k_norm, uint use_norm, float eps,        \
      uint n_rot, __global const float* inv_freq, float freq_scale,                                \
      __global const float* freq_factors, uint use_ff, uint neox, float4 yarn, uint slot_off

#if DEC_FINISH
// Shares of a head's sum of squares in finish_heads_l (1: one item walks the head): hscale holds
// n_heads (FH_PARTS + 1) floats (the callers pass red: GROUP DEC_LWS floats).
#if DEC_LWS >= 16 && HEAD_DIM % 8 == 0
#define FH_PARTS 8
#else
#define FH_PARTS 1
#endif
// n_heads heads at buf + h * stride (local memory; items lid of n_items, all of them call it):
// the optional RMSNorm by w (hscale: n_heads (FH_PARTS + 1) floats of scratch), then RoPE at pos.
inline void finish_heads_l(__local float* buf, int stride, int n_heads, __global const float* w,
                           uint use_norm, float eps, __local float* hscale, float pos, uint n_rot,
                           __global const float* inv_freq, float freq_scale,
                           __global const float* freq_factors, uint use_ff, uint neox, float4 yarn,
                           int lid, int n_items) {
  if (use_norm) {
    // Each head's sum of squares in FH_PARTS shares (channels p, p + FH_PARTS, ...), then added by
    // one item per head (one item alone walked a head's HEAD_DIM channels: a dependent chain of
    // local loads that every work-group waited for).
#if FH_PARTS > 1
    for (int i = lid; i < n_heads * FH_PARTS; i += n_items) {
      const int h = i / FH_PARTS;
      float s = 0.0f;
      for (int d = i % FH_PARTS; d < HEAD_DIM; d += FH_PARTS)
        s += buf[h * stride + d] * buf[h * stride + d];
      hscale[n_heads + i] = s;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int h = lid; h < n_heads; h += n_items) {
      float s = 0.0f;
      for (int p = 0; p < FH_PARTS; ++p) s += hscale[n_heads + h * FH_PARTS + p];
      hscale[h] = 1.0f / sqrt(s / (float)HEAD_DIM + eps);
    }
#else
    for (int h = lid; h < n_heads; h += n_items) {
      float s = 0.0f;
      for (int d = 0; d < HEAD_DIM; ++d) s += buf[h * stride + d] * buf[h * stride + d];
      hscale[h] = 1.0f / sqrt(s / (float)HEAD_DIM + eps);
    }
#endif
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int i = lid; i < n_heads * HEAD_DIM; i += n_items) {
      const int h = i / HEAD_DIM, d = i % HEAD_DIM;
      buf[h * stride + d] = buf[h * stride + d] * hscale[h] * w[d];
    }
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  const int n_pairs = (int)n_rot / 2;
  for (int i = lid; i < n_heads * n_pairs; i += n_items) {
    const int h = i / n_pairs, p = i % n_pairs;
    const float theta =
        rope_yarn_theta_inv(pos, inv_freq[p], p, freq_scale, freq_factors, use_ff, yarn);
    float c;
    const float sn = rope_sin_cos(theta, yarn, &c);
    const uint2 ab = rope_pair(p, n_rot, neox);
    __local float* x = buf + h * stride;
    const float x0 = x[ab.x], x1 = x[ab.y];
    x[ab.x] = x0 * c - x1 * sn;
    x[ab.y] = x0 * sn + x1 * c;
  }
  barrier(CLK_LOCAL_MEM_FENCE);
}
#endif

// The query load without the finish: the finished heads from `q`, times the score scale.
#define DECODE_WG_LOAD_Q_PLAIN()                                                                   \
  for (int i = lid; i < GROUP * HEAD_DIM; i += DEC_LWS)                                            \
    qs[(i / HEAD_DIM) * K_QDIM + i % HEAD_DIM] =                                                   \
        q[q_off + ((size_t)t * N_HEAD + kvh * GROUP) * HEAD_DIM + i] * scale;
// The work-group kernels' query load (qs: GROUP heads K_QDIM apart, times the score scale), with
// `finish` from the q|k|v row and, in the chunk holding the token's position, the token's k and v
// finished (kvb: 2 HEAD_DIM floats of scratch) and stored, visible to this work-group's reads.
#if DEC_FINISH
#define DECODE_WG_LOAD_Q()                                                                         \
  if (finish) {                                                                                    \
    __global const float* qrow = qkv + qkv_off + (size_t)t * tok_stride;                           \
    const float fpos = (float)(n_kv - 1);                                                          \
    for (int i = lid; i < GROUP * HEAD_DIM; i += DEC_LWS)                                          \
      qs[(i / HEAD_DIM) * K_QDIM + i % HEAD_DIM] = qrow[kvh * GROUP * HEAD_DIM + i];               \
    barrier(CLK_LOCAL_MEM_FENCE);                                                                  \
    finish_heads_l(qs, K_QDIM, GROUP, q_norm, use_norm, eps, red, fpos, n_rot, inv_freq,           \
                   freq_scale, freq_factors, use_ff, neox, yarn, lid, DEC_LWS);                    \
    for (int i = lid; i < GROUP * HEAD_DIM; i += DEC_LWS)                                          \
      qs[(i / HEAD_DIM) * K_QDIM + i % HEAD_DIM] *= scale;                                         \
    if (end == n_kv) {                                                                             \
      for (int d = lid; d < HEAD_DIM; d += DEC_LWS) {                                              \
        kvb[d] = qrow[k_col + kvh * HEAD_DIM + d];                                                 \
        kvb[HEAD_DIM + d] = qrow[v_col + kvh * HEAD_DIM + d];                                      \
      }                                                                                            \
      barrier(CLK_LOCAL_MEM_FENCE);                                                                \
      finish_heads_l(kvb, 0, 1, k_norm, use_norm, eps, red, fpos, n_rot, inv_freq,         \
                     freq_scale, freq_factors, use_ff, neox, yarn, lid, DEC_LWS);                  \
      const int slot = meta[slot_off + t];                                                         \
      if (slot >= 0) { /* uniform: padding tokens store nothing */                                 \
        const size_t r = kv_row_index(slot / BLOCK_SIZE, kvh, slot % BLOCK_SIZE);                  \
        k_store_row_l(k_pool + r * K_ROW_BYTES, kvb, lid, DEC_LWS);                                \
        v_store_row_l(v_pool + r * V_ROW_BYTES, kvb + HEAD_DIM, lid, DEC_LWS);                     \
      }                                                                                            \
      barrier(CLK_GLOBAL_MEM_FENCE | CLK_LOCAL_MEM_FENCE);                                         \
    }                                                                                              \
  } else {                                                                                         \
    DECODE_WG_LOAD_Q_PLAIN()                                                                       \
  }
#else
#define DECODE_WG_LOAD_Q() DECODE_WG_LOAD_Q_PLAIN()
#endif

__kernel __attribute__((reqd_work_group_size(DEC_LWS, 1, 1)))
void attention_decode_partial(__global const float* q, uint q_off, __global const int* meta,
                              uint bt_off, uint bt_stride, uint seq_off, uint pos_off,
                              uint first_token, uint ctx_off, uint n_chunks, float scale,
                              uint window, __global uchar* k_pool, __global uchar* v_pool,
                              __global float* part, DECODE_FUSE_ARGS, DECODE_FINISH_ARGS,
                              __global const float* qjl) {
  __local float qs[GROUP * K_QDIM];
  __local float ss[GROUP * DEC_TILE];
  __local float red[GROUP * DEC_LWS];
  __local int rows[DEC_TILE];  // pool row index (kv_row_index) of each tile token
  __local int fr_last;         // this work-group combines the chunks (fused reduce)
#if DEC_FINISH
  __local float kvb[2 * HEAD_DIM];  // the token's k and v heads (`finish`)
#endif

  const int lid = get_local_id(0);
  const uint chunk = get_group_id(0);
  const int kvh = get_group_id(1);
  const uint ti = get_group_id(2);
  const uint t = first_token + ti;
  const int s = meta[seq_off + t];
  const int n_kv = meta[pos_off + t] + 1;
  const int lo = window ? max(0, n_kv - (int)window) : 0;  // first visible position
  const uint chunk_tokens = decode_chunk_tokens(meta, ctx_off, n_chunks, window);
  const int start = lo + chunk * chunk_tokens;
  const int end = min(start + (int)chunk_tokens, n_kv);
  __global float* dst = part + (((size_t)ti * N_HEAD + kvh * GROUP) * n_chunks + chunk) * (2 + HEAD_DIM);
  const size_t head_stride = (size_t)n_chunks * (2 + HEAD_DIM);

  if (start >= end) {  // chunk past this token's context: an empty partial (uniform per group)
    for (int g = lid; g < GROUP; g += DEC_LWS) {
      dst[g * head_stride] = -INFINITY;
      dst[g * head_stride + 1] = 0.0f;
    }
    DECODE_WG_TAIL()
    return;
  }
  DECODE_WG_LOAD_Q()
  float m[GROUP], l[GROUP];  // the max is the same in every item; l is this item's share
  for (int g = 0; g < GROUP; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
  }
  float4 o[DEC_OWN];
  for (int i = 0; i < DEC_OWN; ++i) o[i] = (float4)(0.0f);
  barrier(CLK_LOCAL_MEM_FENCE);
#if K_ROTATED
  // TurboQuant K rows hold rotated vectors: rotate each query head of the group once.
  for (int g = lid; g < GROUP; g += DEC_LWS) kv_turbo_rotate_l(qs + g * K_QDIM);
  barrier(CLK_LOCAL_MEM_FENCE);
#endif
  K_PROJECT_GROUP();

  __global const int* table = meta + bt_off + (size_t)s * bt_stride;
  for (int j0 = start; j0 < end; j0 += DEC_TILE) {
    const int n = min(DEC_TILE, end - j0);
    float sc[GROUP];
    if (lid < n) {
      const int pj = j0 + lid;
      const size_t row = kv_row_index(table[pj / BLOCK_SIZE], kvh, pj % BLOCK_SIZE);
      rows[lid] = (int)row;
      k_score_group_l(k_pool + row * K_ROW_BYTES, qs, sc);
    } else {
      for (int g = 0; g < GROUP; ++g) sc[g] = -INFINITY;
    }
    for (int g = 0; g < GROUP; ++g) red[g * DEC_LWS + lid] = sc[g];
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int w = DEC_LWS / 2; w > 0; w >>= 1) {
      if (lid < w)
        for (int g = 0; g < GROUP; ++g)
          red[g * DEC_LWS + lid] = fmax(red[g * DEC_LWS + lid], red[g * DEC_LWS + lid + w]);
      barrier(CLK_LOCAL_MEM_FENCE);
    }
    float alpha[GROUP];
    for (int g = 0; g < GROUP; ++g) {
      const float mx = fmax(m[g], red[g * DEC_LWS]);  // finite: the tile has a visible token
      alpha[g] = exp(m[g] - mx);
      m[g] = mx;
      const float p = exp(sc[g] - mx);  // 0 for items past n
      ss[g * DEC_TILE + lid] = p;
      l[g] = l[g] * alpha[g] + p;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int i = 0; i < DEC_OWN; ++i) {
      const int e = (lid + i * DEC_LWS) * 4;
      if (e < GROUP * HEAD_DIM) {
        const int g = e / HEAD_DIM, d = e % HEAD_DIM;
        float4 acc = o[i] * alpha[g];
        for (int jj = 0; jj < n; ++jj)
          acc = v_accum4(v_pool + (size_t)rows[jj] * V_ROW_BYTES, d, ss[g * DEC_TILE + jj], acc);
        o[i] = acc;
      }
    }
    barrier(CLK_LOCAL_MEM_FENCE);  // the next tile overwrites ss, red, rows
  }
  // Sum the items' shares of l.
  for (int g = 0; g < GROUP; ++g) red[g * DEC_LWS + lid] = l[g];
  barrier(CLK_LOCAL_MEM_FENCE);
  for (int w = DEC_LWS / 2; w > 0; w >>= 1) {
    if (lid < w)
      for (int g = 0; g < GROUP; ++g) red[g * DEC_LWS + lid] += red[g * DEC_LWS + lid + w];
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  for (int i = 0; i < DEC_OWN; ++i) {
    const int e = (lid + i * DEC_LWS) * 4;
    if (e < GROUP * HEAD_DIM) vstore4(o[i], 0, dst + (e / HEAD_DIM) * head_stride + 2 + e % HEAD_DIM);
  }
  for (int g = lid; g < GROUP; g += DEC_LWS) {
    dst[g * head_stride] = m[g];
    dst[g * head_stride + 1] = red[g * DEC_LWS];
  }
  DECODE_WG_TAIL()
}

// ---- (c'') The same split-K decode with the value pass shared by the group's heads
// (AttentionTuning::decode_variant 1): for the output, item (set, i) owns the 4 channels
// [4 i, 4 i + 4) of every head of the group over the tile tokens jj = set, set + DV_SETS, ..., so
// each value row element is read (and, for TurboQuant, decoded) once per group instead of once per
// head; TurboQuant V rows' scales are folded into the softmax weights by the item that scored the
// token. The sets' sums are added at the chunk's end (through the work-group's local memory, free
// by then, in about log2(DV_SETS) rounds). Same partial layout and values up to the summation
// order.
#define DV_QUADS (HEAD_DIM / 4)
#define DV_ITEMS (DV_QUADS < DEC_LWS ? DV_QUADS : DEC_LWS)  // items per token set
#define DV_SETS (DEC_LWS / DV_ITEMS)                         // token sets
#define DV_OWN ((DV_QUADS + DV_ITEMS - 1) / DV_ITEMS)        // channel quads per item
#define DV_TOK ((DEC_TILE + DV_SETS - 1) / DV_SETS)          // a tile's tokens per set, at most
#define DV_BATCH (DV_TOK < 8 ? DV_TOK : 8)  // value loads an item issues before it uses them
// Sets' outputs the kernel's local memory holds at once (qs, ss and red, free after the tile
// loop) when the sets' sums are added.
#define DV_CAP ((K_QDIM + DEC_TILE + DEC_LWS) / HEAD_DIM)
#if V_ROTATED && KV_TURBO_LUT_LOCAL
#define DEC_V4(row, d) v_values4_lut(row, d, lut)
#elif V_ROTATED
#define DEC_V4(row, d) v_values4(row, d)
#else
#define DEC_V4(row, d) v_load4(row, d)
#endif

__kernel __attribute__((reqd_work_group_size(DEC_LWS, 1, 1)))
void attention_decode_shared(__global const float* q, uint q_off, __global const int* meta,
                             uint bt_off, uint bt_stride, uint seq_off, uint pos_off,
                             uint first_token, uint ctx_off, uint n_chunks, float scale,
                             uint window, __global uchar* k_pool, __global uchar* v_pool,
                             __global float* part, DECODE_FUSE_ARGS, DECODE_FINISH_ARGS,
                             __global const float* qjl) {
  // qs, ss and red in one array: after the tile loop it holds DV_CAP sets' outputs.
  __local float sh[GROUP * (K_QDIM + DEC_TILE + DEC_LWS)];
  __local float* const qs = sh;
  __local float* const ss = sh + GROUP * K_QDIM;
  __local float* const red = ss + GROUP * DEC_TILE;
  __local int rows[DEC_TILE];
  __local int fr_last;  // this work-group combines the chunks (fused reduce)
#if DEC_FINISH
  __local float kvb[2 * HEAD_DIM];  // the token's k and v heads (`finish`)
#endif
#if KV_TURBO_LUT_LOCAL
  __local float lut[KV_TURBO_N_CENTROIDS];
#endif

  const int lid = get_local_id(0);
  const uint chunk = get_group_id(0);
  const int kvh = get_group_id(1);
  const uint ti = get_group_id(2);
  const uint t = first_token + ti;
  const int s = meta[seq_off + t];
  const int n_kv = meta[pos_off + t] + 1;
  const int lo = window ? max(0, n_kv - (int)window) : 0;  // first visible position
  const uint chunk_tokens = decode_chunk_tokens(meta, ctx_off, n_chunks, window);
  const int start = lo + chunk * chunk_tokens;
  const int end = min(start + (int)chunk_tokens, n_kv);
  __global float* dst = part + (((size_t)ti * N_HEAD + kvh * GROUP) * n_chunks + chunk) * (2 + HEAD_DIM);
  const size_t head_stride = (size_t)n_chunks * (2 + HEAD_DIM);

  if (start >= end) {  // chunk past this token's context: an empty partial (uniform per group)
    for (int g = lid; g < GROUP; g += DEC_LWS) {
      dst[g * head_stride] = -INFINITY;
      dst[g * head_stride + 1] = 0.0f;
    }
    DECODE_WG_TAIL()
    return;
  }
  DECODE_WG_LOAD_Q()
#if KV_TURBO_LUT_LOCAL
  for (int i = lid; i < KV_TURBO_N_CENTROIDS; i += DEC_LWS) lut[i] = kv_turbo_centroids[i];
#endif
  float m[GROUP], l[GROUP];  // the max is the same in every item; l is this item's share
  for (int g = 0; g < GROUP; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
  }
  const int set = lid / DV_ITEMS, qi = lid % DV_ITEMS;
  float4 o[DV_OWN * GROUP];  // o[i * GROUP + g]: channels 4 (qi + i DV_ITEMS) of head g
  for (int i = 0; i < DV_OWN * GROUP; ++i) o[i] = (float4)(0.0f);
  barrier(CLK_LOCAL_MEM_FENCE);
#if K_ROTATED
  for (int g = lid; g < GROUP; g += DEC_LWS) kv_turbo_rotate_l(qs + g * K_QDIM);
  barrier(CLK_LOCAL_MEM_FENCE);
#endif
  K_PROJECT_GROUP();

  __global const int* table = meta + bt_off + (size_t)s * bt_stride;
  for (int j0 = start; j0 < end; j0 += DEC_TILE) {
    const int n = min(DEC_TILE, end - j0);
    float sc[GROUP];
    float vscale = 1.0f;
    if (lid < n) {
      const int pj = j0 + lid;
      const size_t row = kv_row_index(table[pj / BLOCK_SIZE], kvh, pj % BLOCK_SIZE);
      rows[lid] = (int)row;
#if K_ROTATED && KV_TURBO_LUT_LOCAL
      k_score_group_lut(k_pool + row * K_ROW_BYTES, qs, sc, lut);
#else
      k_score_group_l(k_pool + row * K_ROW_BYTES, qs, sc);
#endif
#if V_ROTATED
      vscale = v_scale(v_pool + row * V_ROW_BYTES);
#endif
    } else {
      for (int g = 0; g < GROUP; ++g) sc[g] = -INFINITY;
    }
    for (int g = 0; g < GROUP; ++g) red[g * DEC_LWS + lid] = sc[g];
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int w = DEC_LWS / 2; w > 0; w >>= 1) {
      if (lid < w)
        for (int g = 0; g < GROUP; ++g)
          red[g * DEC_LWS + lid] = fmax(red[g * DEC_LWS + lid], red[g * DEC_LWS + lid + w]);
      barrier(CLK_LOCAL_MEM_FENCE);
    }
    for (int g = 0; g < GROUP; ++g) {
      const float mx = fmax(m[g], red[g * DEC_LWS]);  // finite: the tile has a visible token
      const float alpha = exp(m[g] - mx);
      m[g] = mx;
      const float p = exp(sc[g] - mx);  // 0 for items past n
      ss[g * DEC_TILE + lid] = p * vscale;
      l[g] = l[g] * alpha + p;
      for (int i = 0; i < DV_OWN; ++i) o[i * GROUP + g] *= alpha;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    // The set's tokens jj = set + k DV_SETS, DV_BATCH value loads issued before their FMAs (a
    // loop over the tile's n tokens one load after the other waited a memory latency per token).
    if (set < DV_SETS) {
      for (int k0 = 0; k0 < DV_TOK; k0 += DV_BATCH) {
        if (set + k0 * DV_SETS >= n) break;  // the set's remaining tokens are past the tile's n
        for (int i = 0; i < DV_OWN; ++i) {
          const int qd = qi + i * DV_ITEMS;
          if (qd < DV_QUADS) {
            float4 vb[DV_BATCH];
            for (int k = 0; k < DV_BATCH; ++k) {
              const int jj = set + (k0 + k) * DV_SETS;
              vb[k] = jj < n ? DEC_V4(v_pool + (size_t)rows[jj] * V_ROW_BYTES, qd * 4)
                             : (float4)(0.0f);
            }
            for (int k = 0; k < DV_BATCH; ++k) {
              const int jj = set + (k0 + k) * DV_SETS;
              if (jj < n)
                for (int g = 0; g < GROUP; ++g)
                  o[i * GROUP + g] = fma((float4)(ss[g * DEC_TILE + jj]), vb[k], o[i * GROUP + g]);
            }
          }
        }
      }
    }
    barrier(CLK_LOCAL_MEM_FENCE);  // the next tile overwrites ss, red, rows
  }
  // Sum the items' shares of l.
  for (int g = 0; g < GROUP; ++g) red[g * DEC_LWS + lid] = l[g];
  barrier(CLK_LOCAL_MEM_FENCE);
  for (int w = DEC_LWS / 2; w > 0; w >>= 1) {
    if (lid < w)
      for (int g = 0; g < GROUP; ++g) red[g * DEC_LWS + lid] += red[g * DEC_LWS + lid + w];
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  for (int g = lid; g < GROUP; g += DEC_LWS) {
    dst[g * head_stride] = m[g];
    dst[g * head_stride + 1] = red[g * DEC_LWS];
  }
  barrier(CLK_LOCAL_MEM_FENCE);  // sh is free from here
  // Add the token sets' outputs into set 0's: each round the last mv sets of the act still open
  // hand theirs, through sh, to the mv sets before them (log2(DV_SETS) rounds where DV_CAP holds
  // half of them).
  for (int act = DV_SETS; act > 1;) {
    const int mv = min(act / 2, DV_CAP), from = act - mv;
    if (set >= from && set < act)
      for (int i = 0; i < DV_OWN; ++i) {
        const int qd = qi + i * DV_ITEMS;
        if (qd < DV_QUADS)
          for (int g = 0; g < GROUP; ++g)
            vstore4(o[i * GROUP + g], 0, sh + ((set - from) * GROUP + g) * HEAD_DIM + qd * 4);
      }
    barrier(CLK_LOCAL_MEM_FENCE);
    if (set >= from - mv && set < from)
      for (int i = 0; i < DV_OWN; ++i) {
        const int qd = qi + i * DV_ITEMS;
        if (qd < DV_QUADS)
          for (int g = 0; g < GROUP; ++g)
            o[i * GROUP + g] +=
                vload4(0, sh + ((set - from + mv) * GROUP + g) * HEAD_DIM + qd * 4);
      }
    barrier(CLK_LOCAL_MEM_FENCE);
    act = from;
  }
  if (set == 0)
    for (int i = 0; i < DV_OWN; ++i) {
      const int qd = qi + i * DV_ITEMS;
      if (qd < DV_QUADS)
        for (int g = 0; g < GROUP; ++g)
          vstore4(o[i * GROUP + g], 0, dst + g * head_stride + 2 + qd * 4);
    }
  DECODE_WG_TAIL()
}

// Combines the chunks' partials of one (token, query head): grid (RED_LWS, N_HEAD, n_tokens).

__kernel __attribute__((reqd_work_group_size(RED_LWS, 1, 1)))
void attention_decode_reduce(__global const float* part, uint n_chunks, uint first_token,
                             __global float* out, uint out_off, __global const float* sinks,
                             uint use_sinks) {
  __local float ob[HEAD_DIM];
  reduce_head_red(part, n_chunks, n_chunks, first_token, get_group_id(2), get_group_id(1), out,
                  out_off, sinks, use_sinks, get_local_id(0), ob);
}

// ---- (c') Split-K decode, row-streaming form for CPUs: one work item per (chunk, KV head,
// token) walks its chunk block by block; a block's head slice is one contiguous range of rows, read
// once with wide vector loads (PoCL runs a one-item work-group as plain scalar code, so explicit
// vectors and independent accumulators carry the speed). Same partial layout as above.
#define DR_TILE 16  // tokens scored before their values are accumulated (one float16)

// Variant 1's channel block: DR_VC channels of a value row (DR_VP vectors of VW) per load.
#if HEAD_DIM % 16 == 0
#define DR_VC 16
#define DR_VP 2
typedef float16 dr_vec;
#define DR_PART(v, k) ((k) ? (v).hi : (v).lo)
#else
#define DR_VC VW
#define DR_VP 1
typedef floatv dr_vec;
#define DR_PART(v, k) (v)
#endif
// Channels [c, c + DR_VC) of a value row (TurboQuant: unscaled).
inline dr_vec dr_vload(__global const uchar* row, int c) {
#if V_ROTATED
#if DR_VC == 16
  return v_values16(row, c);
#else
  return (float8)(v_values4(row, c), v_values4(row, c + 4));  // TurboQuant: HEAD_DIM % 8 == 0
#endif
#elif V_FORMAT == KV_FMT_F16
#if DR_VC == 16
  return (float16)(kv_f16_loadv(row, c), kv_f16_loadv(row, c + 8));
#else
  return kv_f16_loadv(row, c);
#endif
#elif DR_VC == 16
  return (float16)(v_load4(row, c), v_load4(row, c + 4), v_load4(row, c + 8), v_load4(row, c + 12));
#elif DR_VC == 8
  return (float8)(v_load4(row, c), v_load4(row, c + 4));
#else
  return v_load4(row, c);
#endif
}

// attention_decode_rows's arguments, each name prefixed by P (empty for the kernel's own; the
// launch that runs the decode as a phase of its own, matmul.cl's matmul_route_ffn with
// ROUTE_ATTN, passes them as a_*), and their names in the same order.
#define DECODE_ROWS_PARAMS(P)                                                                      \
  __global const float *P##q, uint P##q_off, __global const int *P##meta, uint P##bt_off,          \
      uint P##bt_stride, uint P##seq_off, uint P##pos_off, uint P##first_token, uint P##ctx_off,   \
      uint P##n_chunks, float P##scale, uint P##window, __global uchar *P##k_pool,                 \
      __global uchar *P##v_pool, __global float *P##part, uint P##fuse,                            \
      __global volatile int *P##counters, __global float *P##out, uint P##out_off,                 \
      __global const float *P##sinks, uint P##use_sinks, uint P##finish,                           \
      __global const float *P##qkv, uint P##qkv_off, uint P##tok_stride, uint P##k_col,            \
      uint P##v_col, __global const float *P##q_norm, __global const float *P##k_norm,             \
      uint P##use_norm, float P##eps, uint P##n_rot, __global const float *P##inv_freq,            \
      float P##freq_scale, __global const float *P##freq_factors, uint P##use_ff, uint P##neox,    \
      float4 P##yarn, uint P##slot_off, __global const float *P##qjl
#define DECODE_ROWS_NAMES(P)                                                                       \
  P##q, P##q_off, P##meta, P##bt_off, P##bt_stride, P##seq_off, P##pos_off, P##first_token,        \
      P##ctx_off, P##n_chunks, P##scale, P##window, P##k_pool, P##v_pool, P##part, P##fuse,        \
      P##counters, P##out, P##out_off, P##sinks, P##use_sinks, P##finish, P##qkv, P##qkv_off,      \
      P##tok_stride, P##k_col, P##v_col, P##q_norm, P##k_norm, P##use_norm, P##eps, P##n_rot,      \
      P##inv_freq, P##freq_scale, P##freq_factors, P##use_ff, P##neox, P##yarn, P##slot_off,       \
      P##qjl

// One (chunk, KV head, token) of attention_decode_rows: its work item's whole work.
inline void decode_rows_unit(uint chunk, int kvh, uint ti, DECODE_ROWS_PARAMS()) {
  const uint t = first_token + ti;
  const int s = meta[seq_off + t];
  const int n_kv = meta[pos_off + t] + 1;
  const int lo = window ? max(0, n_kv - (int)window) : 0;  // first visible position
  const uint chunk_tokens = decode_chunk_tokens(meta, ctx_off, n_chunks, window);
  const int start = lo + chunk * chunk_tokens;
  const int end = min(start + (int)chunk_tokens, n_kv);
  __global float* dst = part + (((size_t)ti * N_HEAD + kvh * GROUP) * n_chunks + chunk) * (2 + HEAD_DIM);
  const size_t head_stride = (size_t)n_chunks * (2 + HEAD_DIM);
  if (start >= end) {
    for (int g = 0; g < GROUP; ++g) {
      dst[g * head_stride] = -INFINITY;
      dst[g * head_stride + 1] = 0.0f;
    }
    DECODE_ROW_TAIL()
    return;
  }
  floatv qv[GROUP * K_QDIM / VW];
  floatv o[GROUP * HEAD_DIM / VW];
  for (int i = 0; i < GROUP * HEAD_DIM / VW; ++i) o[i] = (floatv)(0.0f);
#if DEC_FINISH
  if (finish) {  // as DECODE_WG_LOAD_Q, one item
    __global const float* qrow = qkv + qkv_off + (size_t)t * tok_stride;
    float cs[HEAD_DIM / 2], sn[HEAD_DIM / 2];
    rope_angles_p((float)(n_kv - 1), n_rot, inv_freq, freq_scale, freq_factors, use_ff, yarn, cs,
                  sn);
    for (int g = 0; g < GROUP; ++g) {
      float* qg = (float*)(qv + g * (K_QDIM / VW));
      for (int d = 0; d < HEAD_DIM; ++d) qg[d] = qrow[(kvh * GROUP + g) * HEAD_DIM + d];
      finish_head_p(qg, q_norm, use_norm, eps, n_rot, neox, cs, sn);
      for (int d = 0; d < HEAD_DIM; ++d) qg[d] *= scale;
    }
    const int slot = meta[slot_off + t];
    if (end == n_kv && slot >= 0) {
      float kb[HEAD_DIM], vb[HEAD_DIM];
      for (int d = 0; d < HEAD_DIM; ++d) {
        kb[d] = qrow[k_col + kvh * HEAD_DIM + d];
        vb[d] = qrow[v_col + kvh * HEAD_DIM + d];
      }
      finish_head_p(kb, k_norm, use_norm, eps, n_rot, neox, cs, sn);
      const size_t r = kv_row_index(slot / BLOCK_SIZE, kvh, slot % BLOCK_SIZE);
      k_store_row_p(k_pool + r * K_ROW_BYTES, kb, 0, 1);
      v_store_row_p(v_pool + r * V_ROW_BYTES, vb, 0, 1);
    }
  } else
#endif
  {
    __global const float* qsrc = q + q_off + ((size_t)t * N_HEAD + kvh * GROUP) * HEAD_DIM;
    for (int i = 0; i < GROUP * HEAD_DIM / VW; ++i)
      qv[(i / (HEAD_DIM / VW)) * (K_QDIM / VW) + i % (HEAD_DIM / VW)] = vloadv(i, qsrc) * scale;
  }
#if K_ROTATED
  for (int g = 0; g < GROUP; ++g) kv_turbo_rotate_p((float*)(qv + g * (K_QDIM / VW)));
#endif
#if K_PROD
  for (int g = 0; g < GROUP; ++g) {
    float* qg = (float*)(qv + g * (K_QDIM / VW));
    for (int j = 0; j < HEAD_DIM; ++j) qg[HEAD_DIM + j] = k_qjl_project_p(qjl, qg, j);
  }
#endif
  float m[GROUP], l[GROUP];
  for (int g = 0; g < GROUP; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
  }
  float sc[GROUP][DR_TILE];
  __global const int* table = meta + bt_off + (size_t)s * bt_stride;
  for (int j0 = start; j0 < end;) {
    // A run of tokens inside one block: rows that follow each other.
    const int n = min(min(end, (j0 / BLOCK_SIZE + 1) * BLOCK_SIZE) - j0, DR_TILE);
    const size_t base = kv_row_index(table[j0 / BLOCK_SIZE], kvh, j0 % BLOCK_SIZE);
    for (int jj = 0; jj < n; ++jj) {
      float s[GROUP];
      k_score_group_v(k_pool + (base + (size_t)jj) * K_ROW_BYTES, qv, s);
      for (int g = 0; g < GROUP; ++g) sc[g][jj] = s[g];
    }
    // Softmax update on the whole tile as one float16: PoCL's scalar exp costs more than a
    // token's loads and FMAs, its vector exp a fraction of that. Lanes past n are -inf (p = 0).
    for (int g = 0; g < GROUP; ++g) {
      for (int jj = n; jj < DR_TILE; ++jj) sc[g][jj] = -INFINITY;
      const float16 x = vload16(0, sc[g]);
      float8 m8 = fmax(x.lo, x.hi);
      float4 m4 = fmax(m8.lo, m8.hi);
      const float mx = fmax(m[g], fmax(fmax(m4.x, m4.y), fmax(m4.z, m4.w)));
      const float16 p = exp(x - mx);
      vstore16(p, 0, sc[g]);
      const float8 s8 = p.lo + p.hi;
      const float alpha = exp(m[g] - mx);
      l[g] = l[g] * alpha + hsum_f8(s8);
      m[g] = mx;
      for (int i = 0; i < HEAD_DIM / VW; ++i) o[g * (HEAD_DIM / VW) + i] *= alpha;
    }
#if DEC_VARIANT == 1
    // Values by channel block: DR_VC channels of every head stay in registers over the run's
    // tokens (variant 0 reads and writes all of o once per token). TurboQuant rows' scales are
    // folded into the weights first.
#if V_ROTATED
    for (int jj = 0; jj < n; ++jj) {
      const float rs = v_scale(v_pool + (base + (size_t)jj) * V_ROW_BYTES);
      for (int g = 0; g < GROUP; ++g) sc[g][jj] *= rs;
    }
#endif
    for (int c = 0; c < HEAD_DIM; c += DR_VC) {
      floatv acc[GROUP * DR_VP];
      for (int g = 0; g < GROUP; ++g)
        for (int k = 0; k < DR_VP; ++k) acc[g * DR_VP + k] = o[g * (HEAD_DIM / VW) + c / VW + k];
      for (int jj = 0; jj < n; ++jj) {
        const dr_vec v = dr_vload(v_pool + (base + (size_t)jj) * V_ROW_BYTES, c);
        for (int g = 0; g < GROUP; ++g) {
          const floatv w = (floatv)(sc[g][jj]);
          for (int k = 0; k < DR_VP; ++k) acc[g * DR_VP + k] = fma(w, DR_PART(v, k), acc[g * DR_VP + k]);
        }
      }
      for (int g = 0; g < GROUP; ++g)
        for (int k = 0; k < DR_VP; ++k) o[g * (HEAD_DIM / VW) + c / VW + k] = acc[g * DR_VP + k];
    }
#else
    for (int jj = 0; jj < n; ++jj)
      v_accum_group_v(v_pool + (base + (size_t)jj) * V_ROW_BYTES, &sc[0][jj], DR_TILE, o);
#endif
    j0 += n;
  }
  for (int g = 0; g < GROUP; ++g) {
    dst[g * head_stride] = m[g];
    dst[g * head_stride + 1] = l[g];
    for (int i = 0; i < HEAD_DIM / VW; ++i) vstorev(o[g * (HEAD_DIM / VW) + i], i, dst + g * head_stride + 2);
  }
  DECODE_ROW_TAIL()
}

__kernel __attribute__((reqd_work_group_size(1, 1, 1)))
void attention_decode_rows(DECODE_ROWS_PARAMS()) {
  decode_rows_unit(get_global_id(0), get_global_id(1), get_global_id(2), DECODE_ROWS_NAMES());
}
