// RMSNorm over rows: out[r][i] = x[r][i] / sqrt(mean(x[r]^2) + eps) * w[i].
// Layout: x and out hold `rows` rows of n floats back to back from their element offsets; w holds n
// floats. Rows are tokens, or tokens*heads for per-head norms (Qwen3 q_norm/k_norm). One work-group
// per row, power-of-two group size; out may be x (in place: each element is read before written
// by the same item).
#include "common.clh"
#include "rows.clh"

__kernel void rms_norm_f32(__global const float* x, uint x_off, __global const float* w, uint w_off,
                           __global float* out, uint out_off, uint n, float eps,
                           __local float* scratch) {
  const size_t row = get_group_id(0);
  x += x_off + row * n;
  out += out_off + row * n;
  w += w_off;
  SquareSum acc = {0.0f, 0.0f};
  FOR_ROW(i, n) add_square(&acc, x[i]);
  const float scale = rms_scale(acc, n, eps, scratch);
  FOR_ROW(i, n) out[i] = x[i] * scale * w[i];
}
