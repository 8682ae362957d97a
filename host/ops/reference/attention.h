// Scalar reference of grouped-query causal attention (optionally over a sliding window) over a
// contiguous KV history.
#pragma once

#include <span>

namespace tessera::reference {

// Shape of one attention call.
struct AttentionShape {
  int n_head = 0;     // query heads
  int n_head_kv = 0;  // key/value heads; n_head must be a multiple (query head h reads kv head
                      // h / (n_head / n_head_kv), as ggml broadcasts)
  int head_dim = 0;   // per-head dimension of q, k and v
};

// Causal attention for a batch of n_tokens query tokens that are the LAST n_tokens rows of the KV
// history (their own K/V already appended):
//   q   [n_tokens][n_head][head_dim]
//   k,v [n_kv][n_head_kv][head_dim]   rows in position order, n_kv >= n_tokens
//   out [n_tokens][n_head][head_dim]
// Query t (0-based in the batch) sits at position p = n_kv - n_tokens + t and sees kv rows
// [0, p], or with a sliding window > 0 rows [max(0, p - window + 1), p] (llama.cpp's standard SWA
// mask: a key at p0 is hidden when p - p0 >= window); scores are q.k * scale (1/sqrt(head_dim) for
// the supported architectures), softmaxed in float with the max subtracted. sinks (gpt-oss's
// learned attention sinks; empty: none) holds one logit per query head that joins the softmax's
// denominator (and its max) but has no value: the weights of the visible rows sum to less than 1.
// Throws std::invalid_argument on inconsistent sizes, a negative window or sinks that are neither
// empty nor n_head long.
void causal_attention(std::span<const float> q, std::span<const float> k, std::span<const float> v,
                      const AttentionShape& shape, float scale, std::span<float> out,
                      int window = 0, std::span<const float> sinks = {});

}  // namespace tessera::reference
