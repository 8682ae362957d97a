// Softmax over rows: out[r] = exp(x[r] - max) / sum(exp(x[r] - max)).
// Layout: `rows` rows of n floats back to back from the element offsets; one work-group per row
// (power-of-two size); out may be x.
#include "common.clh"
#include "rows.clh"

__kernel void softmax_rows_f32(__global const float* x, uint x_off, __global float* out, uint out_off,
                               uint n, __local float* scratch) {
  const size_t row = get_group_id(0);
  x += x_off + row * n;
  out += out_off + row * n;
  float m = -INFINITY;
  FOR_ROW(i, n) m = fmax(m, x[i]);
  m = work_group_max(m, scratch);
  // Compensated sum: a CPU work item may add a whole 150K-entry vocabulary row on its own.
  float s = 0.0f, comp = 0.0f;
  FOR_ROW(i, n) {
    const float term = exp(x[i] - m) - comp;
    const float t = s + term;
    comp = (t - s) - term;
    s = t;
  }
  s = work_group_sum(s, scratch);
  const float inv = 1.0f / s;
  FOR_ROW(i, n) out[i] = exp(x[i] - m) * inv;
}
