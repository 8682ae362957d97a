// Host side of cl_kernels/moe.cl and its portability-matrix cases.
#include "host/ops/device/moe.h"

#include "host/ops/device/matrix.h"
#include "host/ops/reference/moe_combine.h"
#include "host/ops/reference/norm.h"

namespace tessera::ops {

MoeOps::MoeOps(const Device& device)
    : device_(&device),
      combine_(device.kernel("moe", "moe_combine")),
      combine_norm_(device.kernel("moe", "moe_combine_norm")),
      shared_gate_(device.kernel("moe", "moe_shared_gate_add")),
      group_pairs_(device.kernel("moe", "moe_group_pairs")) {}

size_t MoeOps::row_group_size() const {
  return device_->info().type == DeviceType::kCpu
             ? 1
             : std::min<size_t>(
                   1024, floor_pow2(std::max<size_t>(1, device_->info().max_work_group_size)));
}

void MoeOps::shared_gate_add(cl_mem x, uint32_t x_off, cl_mem s, uint32_t s_off, cl_mem xn,
                             uint32_t xn_off, cl_mem gate, uint32_t n_tokens, uint32_t n,
                             const Events& ev) {
  if (n_tokens == 0 || n == 0) return;
  cl_kernel k = shared_gate_.get();
  set_args(*device_, k, x, x_off, s, s_off, xn, xn_off, gate, n);
  const size_t local = row_group_size();
  set_local_arg(*device_, k, 8, local * sizeof(float));
  const size_t global = size_t(n_tokens) * local;
  enqueue(*device_, k, 1, &global, &local, ev);
}

void MoeOps::combine_norm(cl_mem x, uint32_t x_off, cl_mem y, uint32_t y_off, cl_mem weights,
                          uint32_t w_off, cl_mem offsets, cl_mem rows, uint32_t n_tokens,
                          uint32_t n, cl_mem norm_w, float eps, cl_mem xn, uint32_t xn_off,
                          const Events& ev) {
  if (n_tokens == 0 || n == 0) return;
  cl_kernel k = combine_norm_.get();
  // A null cl_mem is not a valid argument on every driver: pass `offsets` as a dummy.
  set_args(*device_, k, x, x_off, y, y_off, weights, w_off, offsets, rows ? rows : offsets,
           cl_int(rows != nullptr), n, norm_w, eps, xn, xn_off);
  const size_t local = row_group_size();
  set_local_arg(*device_, k, 14, local * sizeof(float));
  const size_t global = size_t(n_tokens) * local;
  enqueue(*device_, k, 1, &global, &local, ev);
}

void MoeOps::group_pairs(cl_mem ids, uint32_t n_pairs, uint32_t k, uint32_t n_expert,
                         cl_mem sorted_token, cl_mem sorted_expert, cl_mem row, const Events& ev) {
  if (n_pairs == 0) return;
  if (k == 0) throw std::invalid_argument("group_pairs: k must be >= 1");
  cl_kernel kern = group_pairs_.get();
  set_args(*device_, kern, ids, n_pairs, k, n_expert, sorted_token, sorted_expert, row);
  set_local_arg(*device_, kern, 7, (size_t(n_expert) + 2) * sizeof(cl_int));
  const size_t local =
      std::min<size_t>(256, std::max<size_t>(1, device_->info().max_work_group_size));
  enqueue(*device_, kern, 1, &local, &local, ev);
}

void MoeOps::combine(cl_mem out, uint32_t out_off, cl_mem y, uint32_t y_off, cl_mem weights,
                     uint32_t w_off, cl_mem offsets, cl_mem rows, uint32_t n_tokens, uint32_t n,
                     bool accumulate, const Events& ev) {
  const cl_int use_rows = rows != nullptr;
  // A null cl_mem is not a valid argument on every driver: pass `offsets` as a dummy.
  set_args(*device_, combine_.get(), out, out_off, y, y_off, weights, w_off, offsets,
           rows ? rows : offsets, use_rows, n, cl_int(accumulate));
  const size_t local0 = std::min<size_t>(64, device_->info().max_work_group_size);
  const size_t global[2] = {round_up(n, local0), n_tokens};
  const size_t local[2] = {local0, 1};
  enqueue(*device_, combine_.get(), 2, global, local, ev);
}

// Cases: single-device layout (pairs token-major, no rows) and the multi-device layout (CSR with
// a row permutation, tokens with no pair, accumulate into an existing stream).
void register_moe_cases(std::vector<MatrixCase>& out) {
  struct Shape {
    uint32_t tokens, n, k;
    bool use_rows, accumulate;
  };
  for (Shape s : {Shape{1, 1024, 4, false, true}, Shape{7, 333, 2, false, false},
                  Shape{5, 1000, 3, true, true}, Shape{64, 256, 8, true, false}}) {
    const std::string shape = std::to_string(s.tokens) + "x" + std::to_string(s.n) + "k" +
                              std::to_string(s.k) + (s.use_rows ? "-csr" : "") +
                              (s.accumulate ? "-acc" : "");
    out.push_back({"moe_combine", "f32", shape, [s](const Device& dev, bool timing) {
                     // Token t gets (t % (k+1)) pairs in the CSR case (so some tokens have none), k
                     // otherwise.
                     std::vector<int32_t> offsets{0};
                     for (uint32_t t = 0; t < s.tokens; ++t)
                       offsets.push_back(offsets.back() +
                                         int32_t(s.use_rows ? t % (s.k + 1) : s.k));
                     const size_t pairs = size_t(offsets.back());
                     std::vector<int32_t> rows(std::max<size_t>(pairs, 1));
                     for (size_t p = 0; p < pairs; ++p)
                       rows[p] = int32_t((p * 7 + 3) % std::max<size_t>(pairs, 1));
                     const auto y = random_floats(std::max<size_t>(pairs, 1) * s.n, 11);
                     const auto w = random_floats(std::max<size_t>(pairs, 1), 12, 0.0f, 1.0f);
                     const auto init = random_floats(size_t(s.tokens) * s.n, 13);
                     std::vector<float> ref = init;
                     reference::moe_combine(
                         ref, y, w, offsets,
                         s.use_rows ? std::span<const int32_t>(rows) : std::span<const int32_t>(),
                         s.n, s.accumulate);
                     GuardedBuffer out_buf(dev, init), y_buf(dev, y), w_buf(dev, w),
                         off_buf(dev, offsets), rows_buf(dev, rows);
                     MoeOps op(dev);
                     auto launch = [&] {
                       ClEvent ev;
                       op.combine(out_buf.mem(), 0, y_buf.mem(), 0, w_buf.mem(), 0, off_buf.mem(),
                                  s.use_rows ? rows_buf.mem() : nullptr, s.tokens, s.n,
                                  s.accumulate, {{}, ev.out()});
                       return ev;
                     };
                     launch();
                     const auto got = out_buf.download<float>();
                     auto r = judge(compare(got, ref), 1e-5,
                                    {out_buf.check_guard(), y_buf.check_guard(),
                                     w_buf.check_guard(), off_buf.check_guard()});
                     r.bytes = double(pairs * s.n + 2 * size_t(s.tokens) * s.n) * 4;
                     r.flops = 2.0 * double(pairs) * s.n;
                     if (timing) r.seconds = median_kernel_seconds(dev, launch);
                     return r;
                   }});
  }
}

// combine_norm against reference moe_combine (accumulating, token-major pairs; with rows: y rows
// permuted as grouping pairs by expert leaves them) + rms_norm.
void register_moe_norm_cases(std::vector<MatrixCase>& out) {
  struct Shape {
    uint32_t tokens, n, k;
    bool use_rows = false;
  };
  for (Shape s : {Shape{1, 1024, 4}, Shape{7, 333, 2}, Shape{33, 2048, 8}, Shape{33, 2048, 8, true},
                  Shape{5, 1000, 3, true}}) {
    const std::string shape = std::to_string(s.tokens) + "x" + std::to_string(s.n) + "k" +
                              std::to_string(s.k) + (s.use_rows ? "-rows" : "");
    out.push_back(
        {"moe_combine_norm", "f32", shape, [s](const Device& dev, bool timing) {
           std::vector<int32_t> offsets;
           for (uint32_t t = 0; t <= s.tokens; ++t) offsets.push_back(int32_t(t * s.k));
           const size_t pairs = size_t(s.tokens) * s.k;
           const auto y = random_floats(pairs * s.n, 21);
           const auto w = random_floats(pairs, 22, 0.0f, 1.0f);
           const auto init = random_floats(size_t(s.tokens) * s.n, 23);
           const auto nw = random_floats(s.n, 24, 0.5f, 1.5f);
           const float eps = 1e-6f;
           std::vector<int32_t> rows(pairs);
           for (size_t p = 0; p < pairs; ++p) rows[p] = int32_t((p * 7 + 3) % pairs);
           std::vector<float> ref_x = init, ref_xn(init.size());
           reference::moe_combine(
               ref_x, y, w, offsets,
               s.use_rows ? std::span<const int32_t>(rows) : std::span<const int32_t>(), s.n, true);
           reference::rms_norm(ref_x, nw, eps, ref_xn);
           GuardedBuffer x_buf(dev, init), y_buf(dev, y), w_buf(dev, w), off_buf(dev, offsets),
               nw_buf(dev, nw), xn_buf(dev, init.size() * sizeof(float)), rows_buf(dev, rows);
           cl_mem rows_mem = s.use_rows ? rows_buf.mem() : nullptr;
           MoeOps op(dev);
           op.combine_norm(x_buf.mem(), 0, y_buf.mem(), 0, w_buf.mem(), 0, off_buf.mem(), rows_mem,
                           s.tokens, s.n, nw_buf.mem(), eps, xn_buf.mem(), 0);
           std::vector<float> got = x_buf.download<float>(), ref = ref_x;
           const auto got_xn = xn_buf.download<float>();
           got.insert(got.end(), got_xn.begin(), got_xn.end());
           ref.insert(ref.end(), ref_xn.begin(), ref_xn.end());
           auto r = judge(compare(got, ref), 3e-5, {x_buf.check_guard(), xn_buf.check_guard()});
           r.bytes = double(pairs * s.n + 3 * size_t(s.tokens) * s.n) * 4;
           r.flops = 2.0 * double(pairs) * s.n + 4.0 * s.tokens * s.n;
           if (timing) {
             // Each launch adds into x again: timing only, the check ran above.
             r.seconds = median_kernel_seconds(dev, [&] {
               ClEvent ev;
               op.combine_norm(x_buf.mem(), 0, y_buf.mem(), 0, w_buf.mem(), 0, off_buf.mem(),
                               rows_mem, s.tokens, s.n, nw_buf.mem(), eps, xn_buf.mem(), 0,
                               {{}, ev.out()});
               return ev;
             });
           }
           return r;
         }});
  }
}

// group_pairs against its reference, exactly: one decode token, a 512-token prefill, more experts
// than work items with ids outside the range (sorted last), and few experts with many pairs each.
void register_moe_group_cases(std::vector<MatrixCase>& out) {
  struct Shape {
    uint32_t tokens, k, n_expert;
    bool bad_ids;
  };
  for (Shape s : {Shape{1, 4, 32, false}, Shape{512, 4, 32, false}, Shape{37, 8, 300, true},
                  Shape{600, 4, 64, true}, Shape{300, 2, 7, false}}) {
    const std::string shape = std::to_string(s.tokens) + "k" + std::to_string(s.k) + "e" +
                              std::to_string(s.n_expert) + (s.bad_ids ? "-bad" : "");
    out.push_back({"moe_group_pairs", "i32", shape, [s](const Device& dev, bool timing) {
                     const uint32_t pairs = s.tokens * s.k;
                     const auto u = random_floats(pairs, 41, 0.0f, 1.0f);
                     std::vector<int32_t> ids(pairs);
                     for (uint32_t p = 0; p < pairs; ++p) {
                       ids[p] = int32_t(u[p] * float(s.n_expert)) % int32_t(s.n_expert);
                       if (s.bad_ids && p % 11 == 5) ids[p] = p % 2 ? -3 : int32_t(s.n_expert + p);
                     }
                     const auto ref = reference::group_pairs(ids, s.k, s.n_expert);
                     GuardedBuffer ids_buf(dev, ids), tok_buf(dev, size_t(pairs) * 4),
                         exp_buf(dev, size_t(pairs) * 4), row_buf(dev, size_t(pairs) * 4);
                     MoeOps op(dev);
                     auto launch = [&] {
                       ClEvent ev;
                       op.group_pairs(ids_buf.mem(), pairs, s.k, s.n_expert, tok_buf.mem(),
                                      exp_buf.mem(), row_buf.mem(), {{}, ev.out()});
                       return ev;
                     };
                     launch();
                     MatrixCaseResult r = judge(Comparison{}, 0,
                                                {ids_buf.check_guard(), tok_buf.check_guard(),
                                                 exp_buf.check_guard(), row_buf.check_guard()});
                     const size_t bad = count_mismatches(tok_buf.download<int32_t>(), ref.token) +
                                        count_mismatches(exp_buf.download<int32_t>(), ref.expert) +
                                        count_mismatches(row_buf.download<int32_t>(), ref.row);
                     if (bad > 0 && r.status == "pass") {
                       r.status = "fail";
                       r.note = std::to_string(bad) + " of " + std::to_string(3 * pairs) +
                                " entries differ";
                     }
                     r.bytes = double(pairs) * 4 * 4;
                     if (timing) r.seconds = median_kernel_seconds(dev, launch);
                     return r;
                   }});
  }
}

}  // namespace tessera::ops

namespace tessera::ops {

// shared_gate_add against its reference: gate logits of both signs, n not a multiple of the group.
void register_moe_shared_cases(std::vector<MatrixCase>& out) {
  struct Shape {
    uint32_t tokens, n;
  };
  for (Shape s : {Shape{1, 1024}, Shape{7, 333}, Shape{33, 2048}}) {
    out.push_back(
        {"moe_shared_gate_add", "f32", std::to_string(s.tokens) + "x" + std::to_string(s.n),
         [s](const Device& dev, bool timing) {
           const size_t rows = size_t(s.tokens) * s.n;
           const auto init = random_floats(rows, 31), sh = random_floats(rows, 32),
                      xn = random_floats(rows, 33), gate = random_floats(s.n, 34, -0.1f, 0.1f);
           std::vector<float> ref = init;
           reference::shared_gate_add(ref, sh, xn, gate);
           GuardedBuffer x_buf(dev, init), s_buf(dev, sh), xn_buf(dev, xn), g_buf(dev, gate);
           MoeOps op(dev);
           op.shared_gate_add(x_buf.mem(), 0, s_buf.mem(), 0, xn_buf.mem(), 0, g_buf.mem(),
                              s.tokens, s.n);
           auto r = judge(compare(x_buf.download<float>(), ref), 3e-5,
                          {x_buf.check_guard(), s_buf.check_guard(), xn_buf.check_guard()});
           r.bytes = double(4 * rows + s.n) * 4;
           r.flops = 4.0 * double(rows);
           if (timing) {  // adds again on every launch: timing only, the check ran above
             r.seconds = median_kernel_seconds(dev, [&] {
               ClEvent ev;
               op.shared_gate_add(x_buf.mem(), 0, s_buf.mem(), 0, xn_buf.mem(), 0, g_buf.mem(),
                                  s.tokens, s.n, {{}, ev.out()});
               return ev;
             });
           }
           return r;
         }});
  }
}

}  // namespace tessera::ops
