// Device conv1d + SiLU, Mamba2 scan (recurrent and chunked) and gated RMSNorm launches, and their
// portability-matrix cases (decode-only, mixed and long batches; one launch or prefill then
// decode launches).
#include "host/ops/device/ssm.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "host/ops/device/matrix.h"
#include "host/ops/device/recurrent_cases.h"
#include "host/ops/reference/ssm.h"

namespace tessera::ops {
namespace {

void check_stride(const char* op, const char* name, const Strided& s, uint32_t width) {
  if (s.stride < width)
    throw std::invalid_argument(std::string(op) + ": " + name + " row stride " +
                                std::to_string(s.stride) + " is below its " +
                                std::to_string(width) + " floats");
}

// NDRange (rows of state, sequences); work-groups along the rows only (fixed_group_size: the
// same for every sequence count).
void enqueue_rows_by_seqs(const Device& device, cl_kernel k, uint32_t rows, uint32_t n_seqs,
                          const Events& ev) {
  const size_t global[2] = {rows, n_seqs};
  const size_t local[2] = {fixed_group_size(device, k, rows), 1};
  enqueue(device, k, 2, global, local, ev);
}

}  // namespace

SsmOps::SsmOps(const Device& device, ScanForm scan_form, PrefillForm prefill_form)
    : device_(&device),
      scan8_(scan_form == ScanForm::kEightChannels ||
             (scan_form == ScanForm::kAuto && device.info().type == DeviceType::kCpu)),
      chunked_(prefill_form == PrefillForm::kChunked ||
               (prefill_form == PrefillForm::kAuto &&
                (device.info().type != DeviceType::kCpu || device.info().compute_units >= 8))),
      conv_(device.kernel("ssm", "conv1d_silu_f32")),
      scan_(device.kernel("ssm", "mamba2_scan_f32")),
      scan8_kernel_(device.kernel("ssm", "mamba2_scan8_f32")),
      chunk_(device.kernel("ssm", "mamba2_chunk_f32")),
      norm_(device.kernel("ssm", "gated_rms_norm_f32")) {}

void SsmOps::conv1d_silu(const Strided& x, cl_mem w, uint32_t w_off, cl_mem bias, uint32_t bias_off,
                         const RecurrentBatch& batch, const Strided& out, uint32_t channels,
                         uint32_t d_conv, const Events& ev) {
  if (d_conv == 0 || d_conv > kMaxConvKernel)
    throw std::invalid_argument("conv1d_silu: d_conv " + std::to_string(d_conv) +
                                " is outside [1, " + std::to_string(kMaxConvKernel) + "]");
  check_stride("conv1d_silu", "x", x, channels);
  check_stride("conv1d_silu", "out", out, channels);
  if (batch.n_seqs == 0 || channels == 0) return;
  cl_kernel k = conv_.get();
  set_args(*device_, k, x.mem, x.offset, x.stride, w, w_off, bias ? bias : w, bias_off,
           cl_uint(bias ? 1 : 0), batch.states, cl_ulong(batch.slot_stride), batch.state_off,
           batch.seqs, batch.seqs_off, out.mem, out.offset, out.stride, channels, d_conv);
  enqueue_rows_by_seqs(*device_, k, channels, batch.n_seqs, ev);
}

void SsmOps::mamba2_scan(const Mamba2Dims& s, const Strided& x, const Strided& dt, const Strided& b,
                         const Strided& c, cl_mem a, uint32_t a_off, cl_mem d, uint32_t d_off,
                         cl_mem dt_bias, uint32_t dt_bias_off, const RecurrentBatch& batch,
                         const Strided& y, const Events& ev) {
  if (s.n_head == 0 || s.head_dim == 0 || s.n_group == 0 || s.d_state == 0 ||
      s.n_head % s.n_group != 0)
    throw std::invalid_argument("mamba2_scan: bad shape: " + std::to_string(s.n_head) +
                                " heads of " + std::to_string(s.head_dim) + ", " +
                                std::to_string(s.n_group) + " groups (must divide the heads), " +
                                "d_state " + std::to_string(s.d_state));
  const uint32_t d_inner = s.n_head * s.head_dim, bc = s.n_group * s.d_state;
  check_stride("mamba2_scan", "x", x, d_inner);
  check_stride("mamba2_scan", "y", y, d_inner);
  check_stride("mamba2_scan", "dt", dt, s.n_head);
  check_stride("mamba2_scan", "B", b, bc);
  check_stride("mamba2_scan", "C", c, bc);
  if (batch.n_seqs == 0) return;
  // One work-group per (block of a head's channels, sequence) for the chunked form; the
  // work-group size depends on the device only, so a new batch never compiles a new work-group
  // function.
  const uint32_t block = std::min<uint32_t>(s.head_dim, 64);
  // Tokens of each run per launch: all of them, unless the device limits an item's loops (then
  // the longest run, at most n_tokens, is split over launches; n_tokens 0: one launch).
  const uint32_t run_tokens = batch.n_tokens > 0 ? batch.n_tokens : UINT32_MAX;
  size_t items = 1;
  uint32_t window = 0;
  if (chunked_ && batch.n_tokens > batch.n_seqs) {
    size_t kernel_max = 0;
    clGetKernelWorkGroupInfo(chunk_.get(), device_->handle(), CL_KERNEL_WORK_GROUP_SIZE,
                             sizeof(kernel_max), &kernel_max, nullptr);
    items = std::min<size_t>(128, device_->info().max_group_items());
    if (kernel_max > 0) items = std::min(items, kernel_max);
    items = floor_pow2(std::max<size_t>(1, items));
    // An item's loop iterations per chunk; a device whose loop limit one chunk passes takes the
    // recurrent kernel.
    const uint64_t L = kScanChunk;
    auto per_item = [&](uint64_t n) { return (n + items - 1) / items; };
    const uint64_t loops = 1 + L + per_item(L * L) * (1 + s.d_state) +
                           per_item(L * block) * (1 + s.d_state + L) +
                           per_item(uint64_t(s.d_state) * block) * (1 + L);
    window = tokens_per_launch(*device_, loops, kScanChunk, 16);
  }
  if (window > 0) {
    const uint32_t blocks = s.n_head * ((s.head_dim + block - 1) / block);
    cl_kernel k = chunk_.get();
    set_args(*device_, k, x.mem, x.offset, x.stride, dt.mem, dt.offset, dt.stride, b.mem, b.offset,
             b.stride, c.mem, c.offset, c.stride, a, a_off, d, d_off, dt_bias, dt_bias_off,
             batch.states, cl_ulong(batch.slot_stride), batch.state_off, batch.seqs, batch.seqs_off,
             y.mem, y.offset, y.stride, s.n_head, s.head_dim, s.n_group, s.d_state, block);
    const size_t global[2] = {size_t(blocks) * items, batch.n_seqs};
    const size_t local[2] = {items, 1};
    launch_in_pieces(run_tokens, window, ev, [&](size_t first, size_t count, const Events& e) {
      set_arg(*device_, k, 31, cl_uint(first));
      set_arg(*device_, k, 32, cl_uint(count));
      enqueue(*device_, k, 2, global, local, e);
    });
    return;
  }
  const bool eight = scan8_ && s.head_dim % 8 == 0;
  cl_kernel k = eight ? scan8_kernel_.get() : scan_.get();
  set_args(*device_, k, x.mem, x.offset, x.stride, dt.mem, dt.offset, dt.stride, b.mem, b.offset,
           b.stride, c.mem, c.offset, c.stride, a, a_off, d, d_off, dt_bias, dt_bias_off,
           batch.states, cl_ulong(batch.slot_stride), batch.state_off, batch.seqs, batch.seqs_off,
           y.mem, y.offset, y.stride, s.n_head, s.head_dim, s.n_group, s.d_state);
  window = batch.n_tokens > 0 ? std::max(1u, tokens_per_launch(*device_, uint64_t(s.d_state) + 2, 1, 16))
                              : UINT32_MAX;
  launch_in_pieces(run_tokens, window, ev, [&](size_t first, size_t count, const Events& e) {
    set_arg(*device_, k, 30, cl_uint(first));
    set_arg(*device_, k, 31, cl_uint(count));
    enqueue_rows_by_seqs(*device_, k, eight ? d_inner / 8 : d_inner, batch.n_seqs, e);
  });
}

void SsmOps::gated_rms_norm(const Strided& y, const Strided& z, cl_mem w, uint32_t w_off,
                            bool w_shared, const Strided& out, uint32_t rows, uint32_t width,
                            uint32_t group_size, float eps, bool gate_first, const Events& ev) {
  if (group_size == 0 || width % group_size != 0)
    throw std::invalid_argument("gated_rms_norm: width " + std::to_string(width) +
                                " is not a multiple of the group size " +
                                std::to_string(group_size));
  check_stride("gated_rms_norm", "y", y, width);
  check_stride("gated_rms_norm", "z", z, width);
  check_stride("gated_rms_norm", "out", out, width);
  if (rows == 0) return;
  const uint32_t n_group = width / group_size;
  cl_kernel k = norm_.get();
  const size_t local = row_group_size(*device_, k, group_size);
  set_local_arg(*device_, k, 17, local * sizeof(float));
  const size_t total = size_t(rows) * n_group;
  launch_in_pieces(total, rows_per_launch(*device_, local), ev,
                   [&](size_t first, size_t count, const Events& piece) {
                     set_args(*device_, k, y.mem, y.offset, y.stride, z.mem, z.offset, z.stride, w,
                              w_off, cl_uint(w_shared ? 0 : group_size), out.mem, out.offset,
                              out.stride, group_size, n_group, cl_uint(first), eps,
                              cl_uint(gate_first ? 1 : 0));
                     const size_t global = count * local;
                     enqueue(*device_, k, 1, &global, &local, piece);
                   });
}

namespace {

using recurrent_cases::SeqPlan;

std::string plan_name(const char* kind, bool split) {
  return std::string(kind) + (split ? "/prefill+decode" : "");
}

// Outputs then every slot's state, as one vector to compare.
std::vector<float> joined(std::vector<float> a, const std::vector<float>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

MatrixCaseResult run_conv(const Device& device, bool timing, const SeqPlan& plan, bool split,
                          uint32_t channels, uint32_t d_conv, bool bias) {
  const uint32_t rows = plan.rows(), x_stride = channels + 3, hist = d_conv - 1;
  const std::vector<float> x = random_floats(size_t(rows) * x_stride, 81 + channels),
                           w = random_floats(size_t(channels) * d_conv, 82 + d_conv),
                           b = random_floats(channels, 83);
  const uint64_t slot_stride = uint64_t(channels) * hist + 5;  // slots padded: offsets matter
  const uint32_t state_off = 2;
  std::vector<float> states = random_floats(plan.n_slots * slot_stride, 84);
  std::vector<float> ref_out(size_t(rows) * channels), ref_states = states;
  for (size_t s = 0; s < plan.lens.size(); ++s) {
    const uint32_t r0 = plan.first_row(s);
    reference::conv1d_silu(
        {std::span<const float>(x).subspan(size_t(r0) * x_stride), x_stride}, plan.lens[s],
        channels, w, d_conv, bias ? std::span<const float>(b) : std::span<const float>(),
        std::span<float>(ref_states)
            .subspan(plan.slots[s] * slot_stride + state_off, size_t(channels) * hist),
        {std::span<float>(ref_out).subspan(size_t(r0) * channels), channels});
  }
  SsmOps ops(device);
  GuardedBuffer dx(device, x), dw(device, w), db(device, b), dst(device, states),
      dout(device, ref_out.size() * sizeof(float));
  recurrent_cases::run_plan(device, plan, split, [&](cl_mem seqs, uint32_t n_seqs, uint32_t) {
    ops.conv1d_silu({dx.mem(), 0, x_stride}, dw.mem(), 0, bias ? db.mem() : nullptr, 0,
                    {seqs, 0, n_seqs, dst.mem(), slot_stride, state_off}, {dout.mem(), 0, channels},
                    channels, d_conv);
  });
  MatrixCaseResult r = judge(
      compare(joined(dout.download<float>(), dst.download<float>()), joined(ref_out, ref_states)),
      1e-5, {dout.check_guard(), dst.check_guard()});
  r.bytes = double(rows) * channels * 8 + double(plan.lens.size()) * channels * hist * 8;
  r.flops = double(rows) * channels * (2 * d_conv + 4);
  if (timing && !split) {  // states move on every launch: values drift, the time does not
    r.seconds = median_kernel_seconds(device, [&] {
      GuardedBuffer seqs(device, recurrent_cases::launches(plan, false).front());
      ClEvent ev;
      ops.conv1d_silu(
          {dx.mem(), 0, x_stride}, dw.mem(), 0, bias ? db.mem() : nullptr, 0,
          {seqs.mem(), 0, uint32_t(plan.lens.size()), dst.mem(), slot_stride, state_off},
          {dout.mem(), 0, channels}, channels, d_conv, {{}, ev.out()});
      return ev;
    });
  }
  return r;
}

// x, B and C are slices of one conv-output row (as Mamba2's xBC), dt a slice of another buffer.
// The prefill form is forced either way, so both run on every device.
MatrixCaseResult run_scan(const Device& device, bool timing, const SeqPlan& plan, bool split,
                          Mamba2Dims s, ScanForm form,
                          PrefillForm prefill = PrefillForm::kRecurrent) {
  const uint32_t rows = plan.rows(), d_inner = s.n_head * s.head_dim, bc = s.n_group * s.d_state;
  const uint32_t xbc = d_inner + 2 * bc, dt_stride = s.n_head + 1;
  const std::vector<float> xbc_rows = random_floats(size_t(rows) * xbc, 91 + d_inner),
                           dt = random_floats(size_t(rows) * dt_stride, 92, -3, 2),
                           a = random_floats(s.n_head, 93, -2.0f, -0.05f),
                           d = random_floats(s.n_head, 94), dt_bias = random_floats(s.n_head, 95);
  const uint64_t slot_stride = uint64_t(d_inner) * s.d_state + 3;
  const uint32_t state_off = 1;
  std::vector<float> states = random_floats(plan.n_slots * slot_stride, 96);
  std::vector<float> ref_y(size_t(rows) * d_inner), ref_states = states;
  const reference::Mamba2Shape shape{s.n_head, s.head_dim, s.n_group, s.d_state};
  for (size_t q = 0; q < plan.lens.size(); ++q) {
    const size_t r0 = plan.first_row(q);
    auto sub = [&](const std::vector<float>& v, size_t stride, size_t off) {
      return reference::ConstRows{std::span<const float>(v).subspan(r0 * stride + off), stride};
    };
    reference::mamba2_scan(
        shape, plan.lens[q], sub(xbc_rows, xbc, 0), sub(dt, dt_stride, 0),
        sub(xbc_rows, xbc, d_inner), sub(xbc_rows, xbc, d_inner + bc), a, d, dt_bias,
        std::span<float>(ref_states)
            .subspan(plan.slots[q] * slot_stride + state_off, size_t(d_inner) * s.d_state),
        {std::span<float>(ref_y).subspan(r0 * d_inner), d_inner});
  }
  SsmOps ops(device, form, prefill);
  GuardedBuffer dxbc(device, xbc_rows), ddt(device, dt), da(device, a), dd(device, d),
      ddtb(device, dt_bias), dst(device, states), dy(device, ref_y.size() * sizeof(float));
  auto launch = [&](cl_mem seqs, uint32_t n_seqs, uint32_t n_tokens, const Events& ev) {
    ops.mamba2_scan(s, {dxbc.mem(), 0, xbc}, {ddt.mem(), 0, dt_stride}, {dxbc.mem(), d_inner, xbc},
                    {dxbc.mem(), d_inner + bc, xbc}, da.mem(), 0, dd.mem(), 0, ddtb.mem(), 0,
                    {seqs, 0, n_seqs, dst.mem(), slot_stride, state_off, n_tokens},
                    {dy.mem(), 0, d_inner}, ev);
  };
  recurrent_cases::run_plan(device, plan, split,
           [&](cl_mem seqs, uint32_t n, uint32_t tokens) { launch(seqs, n, tokens, {}); });
  MatrixCaseResult r =
      judge(compare(joined(dy.download<float>(), dst.download<float>()), joined(ref_y, ref_states)),
            2e-5, {dy.check_guard(), dst.check_guard()});
  r.bytes = double(rows) * (xbc + d_inner) * 4 + double(plan.lens.size()) * d_inner * s.d_state * 8;
  r.flops = double(rows) * d_inner * s.d_state * 5;
  if (timing && !split) {
    r.seconds = median_kernel_seconds(device, [&] {
      GuardedBuffer seqs(device, recurrent_cases::launches(plan, false).front());
      ClEvent ev;
      launch(seqs.mem(), uint32_t(plan.lens.size()), plan.rows(), {{}, ev.out()});
      return ev;
    });
  }
  return r;
}

MatrixCaseResult run_gated_norm(const Device& device, bool timing, uint32_t rows, uint32_t width,
                                uint32_t group_size, bool gate_first, bool w_shared,
                                bool in_place) {
  const uint32_t stride = width + 7;  // z and y as slices of wider rows
  const std::vector<float> yz = random_floats(size_t(rows) * stride * 2, 101 + width, -3, 3),
                           w = random_floats(w_shared ? group_size : width, 102, 0.5f, 1.5f);
  std::vector<float> y(size_t(rows) * stride), z(size_t(rows) * stride);
  std::copy_n(yz.begin(), y.size(), y.begin());
  std::copy_n(yz.begin() + y.size(), z.size(), z.begin());
  const float eps = 1e-5f;
  std::vector<float> ref = y;  // in place: rows of `stride`, the tail of each row untouched
  reference::gated_rms_norm({y, stride}, {z, stride}, rows, width, group_size, w, eps, gate_first,
                            {ref, stride});
  SsmOps ops(device);
  GuardedBuffer dy(device, y), dz(device, z), dw(device, w),
      dout(device, in_place ? 4 : y.size() * sizeof(float));
  const Strided out = in_place ? Strided{dy.mem(), 0, stride} : Strided{dout.mem(), 0, stride};
  auto launch = [&](const Events& ev) {
    ops.gated_rms_norm({dy.mem(), 0, stride}, {dz.mem(), 0, stride}, dw.mem(), 0, w_shared, out,
                       rows, width, group_size, eps, gate_first, ev);
  };
  launch({});
  std::vector<float> got = in_place ? dy.download<float>() : dout.download<float>();
  if (!in_place) {  // the row tails were never written: compare the written part
    for (uint32_t t = 0; t < rows; ++t)
      std::copy_n(y.begin() + size_t(t) * stride + width, stride - width,
                  got.begin() + size_t(t) * stride + width);
  }
  MatrixCaseResult r = judge(compare(got, ref), 3e-5, {dy.check_guard(), dout.check_guard()});
  r.bytes = double(rows) * width * 12;
  r.flops = double(rows) * width * 10;
  if (timing && !in_place) {
    r.seconds = median_kernel_seconds(device, [&] {
      ClEvent ev;
      launch({{}, ev.out()});
      return ev;
    });
  }
  return r;
}

}  // namespace

void register_ssm_cases(std::vector<MatrixCase>& out) {
  using namespace recurrent_cases;
  struct Plan {
    const char* name;
    SeqPlan plan;
  };
  const Plan plans[] = {
      {"decode3", decode_plan()}, {"mixed4", mixed_plan()}, {"long70", long_plan(70)}};
  for (const Plan& p : plans) {
    for (bool split : {false, true}) {
      if (split && p.plan.rows() == p.plan.lens.size()) continue;  // nothing to split
      // Granite 4.0-H's xBC conv (d_inner 3072 + 2 * 128): too slow for 70 tokens in the
      // reference on a small machine, so the long plan runs a narrower conv.
      const uint32_t channels = std::string(p.name) == "long70" ? 300 : 3328;
      out.push_back({"conv1d_silu", "f32",
                     std::to_string(channels) + "/k4/" + plan_name(p.name, split),
                     [=](const Device& d, bool t) {
                       return run_conv(d, t, p.plan, split, channels, 4, true);
                     }});
      // Granite 4.0-H Tiny's heads (48 of 64, one group, d_state 128) on the short plans; a
      // grouped shape (8 heads in 2 groups) on the long one.
      const Mamba2Dims dims =
          std::string(p.name) == "long70" ? Mamba2Dims{8, 16, 2, 32} : Mamba2Dims{48, 64, 1, 128};
      const std::string shape = std::to_string(dims.n_head) + "x" + std::to_string(dims.head_dim) +
                                "/g" + std::to_string(dims.n_group) + "/s" +
                                std::to_string(dims.d_state) + "/" + plan_name(p.name, split);
      // Every form of the scan on every device (the engine picks by device type): per channel,
      // 8 channels per item, and the chunked (SSD) prefill form (decode launches stay recurrent,
      // so its split rows check that the forms share the state).
      for (ScanForm form : {ScanForm::kPerChannel, ScanForm::kEightChannels})
        out.push_back(
            {"mamba2_scan", "f32",
             std::string(form == ScanForm::kEightChannels ? "x8/" : "") + shape,
             [=](const Device& d, bool t) { return run_scan(d, t, p.plan, split, dims, form); }});
      if (p.plan.rows() > p.plan.lens.size())
        out.push_back({"mamba2_scan", "f32", "ssd/" + shape, [=](const Device& d, bool t) {
                         return run_scan(d, t, p.plan, split, dims, ScanForm::kAuto,
                                         PrefillForm::kChunked);
                       }});
    }
  }
  // Odd shapes: a conv without bias and d_conv 1 and 8; a scan with 3 groups of odd sizes.
  out.push_back(
      {"conv1d_silu", "f32", "37/k1/nobias/mixed4/prefill+decode",
       [](const Device& d, bool t) { return run_conv(d, t, mixed_plan(), true, 37, 1, false); }});
  out.push_back({"conv1d_silu", "f32", "37/k8/mixed4/prefill+decode", [](const Device& d, bool t) {
                   return run_conv(d, t, mixed_plan(), true, 37, 8, true);
                 }});
  out.push_back(
      {"mamba2_scan", "f32", "6x5/g3/s7/mixed4/prefill+decode", [](const Device& d, bool t) {
         return run_scan(d, t, mixed_plan(), true, Mamba2Dims{6, 5, 3, 7}, ScanForm::kAuto);
       }});
  // 8-channel form on grouped heads of 8 with an odd state size.
  out.push_back(
      {"mamba2_scan", "f32", "x8/6x8/g3/s7/mixed4/prefill+decode", [](const Device& d, bool t) {
         return run_scan(d, t, mixed_plan(), true, Mamba2Dims{6, 8, 3, 7},
                         ScanForm::kEightChannels);
       }});
  // Chunked form: odd grouped shapes, a head wider than one 64-channel block (two blocks, the
  // second partial), and a run of 100 tokens (three full chunks and a partial one).
  out.push_back(
      {"mamba2_scan", "f32", "ssd/6x5/g3/s7/mixed4/prefill+decode", [](const Device& d, bool t) {
         return run_scan(d, t, mixed_plan(), true, Mamba2Dims{6, 5, 3, 7}, ScanForm::kAuto,
                         PrefillForm::kChunked);
       }});
  out.push_back({"mamba2_scan", "f32", "ssd/3x80/g1/s16/mixed4", [](const Device& d, bool t) {
                   return run_scan(d, t, mixed_plan(), false, Mamba2Dims{3, 80, 1, 16},
                                   ScanForm::kAuto, PrefillForm::kChunked);
                 }});
  out.push_back({"mamba2_scan", "f32", "ssd/4x16/g2/s24/long100", [](const Device& d, bool t) {
                   return run_scan(d, t, long_plan(100), false, Mamba2Dims{4, 16, 2, 24},
                                   ScanForm::kAuto, PrefillForm::kChunked);
                 }});
  // A 256-token prefill run of Granite 4.0-H Tiny's heads in every form: the rows to time the
  // chunked form against the recurrent ones on a device.
  for (PrefillForm prefill : {PrefillForm::kRecurrent, PrefillForm::kChunked})
    for (ScanForm form : {ScanForm::kPerChannel, ScanForm::kEightChannels}) {
      if (prefill == PrefillForm::kChunked && form == ScanForm::kEightChannels) continue;
      const std::string tag = prefill == PrefillForm::kChunked   ? "ssd/"
                              : form == ScanForm::kEightChannels ? "x8/"
                                                                 : "";
      out.push_back(
          {"mamba2_scan", "f32", tag + "48x64/g1/s128/long256", [=](const Device& d, bool t) {
             return run_scan(d, t, long_plan(256), false, Mamba2Dims{48, 64, 1, 128}, form,
                             prefill);
           }});
    }
  struct Norm {
    uint32_t rows, width, group;
    bool gate_first, shared, in_place;
  };
  // Mamba2 (Granite 4.0-H: d_inner 3072, one group; grouped), DeltaNet (Qwen3-Next: 32 heads of
  // 128 sharing one weight row), odd sizes, in place.
  for (Norm n : {Norm{1, 3072, 3072, true, false, false}, Norm{5, 3072, 384, true, false, true},
                 Norm{4, 4096, 128, false, true, false}, Norm{3, 4096, 128, false, true, true},
                 Norm{7, 51, 17, true, false, false}, Norm{2, 51, 17, false, true, false}}) {
    std::string shape = std::to_string(n.rows) + "x" + std::to_string(n.width) + "/g" +
                        std::to_string(n.group) + (n.gate_first ? "/gate_first" : "/gate_after") +
                        (n.shared ? "/shared_w" : "") + (n.in_place ? "/in_place" : "");
    out.push_back({"gated_rms_norm", "f32", shape, [=](const Device& d, bool t) {
                     return run_gated_norm(d, t, n.rows, n.width, n.group, n.gate_first, n.shared,
                                           n.in_place);
                   }});
  }
}

}  // namespace tessera::ops
