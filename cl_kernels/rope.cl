// Rotary position embedding, in place, normal (pairs 2i, 2i+1: llama) or NeoX (pairs i, i+n_rot/2:
// GPT-NeoX, Qwen) form, partial rotary (only the first n_rot dims of a head rotate).
// Layout: x[token][head][head_dim] from element offset x_off, tokens `token_stride` floats apart
// (n_head*head_dim when packed; larger inside a fused QKV row); pos: one int32 position per token.
// Angles as rope.clh (linear freq_scale, optional rope_freqs divisors freq_factors[n_rot/2] when
// use_ff, YaRN when yarn.x != 0). One work item per pair: global (n_rot/2, n_head, n_tokens).
#include "common.clh"
#include "rope.clh"

__kernel void rope_f32(__global float* x, uint x_off, uint token_stride, __global const int* pos,
                       uint pos_off, uint head_dim, uint n_rot, float freq_base, float freq_scale,
                       __global const float* freq_factors, uint use_ff, uint neox, float4 yarn) {
  const uint i = get_global_id(0);
  const uint h = get_global_id(1);
  const size_t t = get_global_id(2);
  __global float* head = x + x_off + t * token_stride + (size_t)h * head_dim;
  const float theta = rope_yarn_theta((float)pos[pos_off + t], i, n_rot, freq_base, freq_scale,
                                      freq_factors, use_ff, yarn);
  float c;
  const float s = rope_sin_cos(theta, yarn, &c);
  const uint2 ab = rope_pair(i, n_rot, neox);
  const uint a = ab.x, b = ab.y;
  const float x0 = head[a];
  const float x1 = head[b];
  head[a] = x0 * c - x1 * s;
  head[b] = x0 * s + x1 * c;
}
