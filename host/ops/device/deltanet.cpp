// Device Gated DeltaNet launches and their portability-matrix cases (decode-only, mixed and long
// batches; one launch or prefill then decode launches, against the token-by-token reference).
#include "host/ops/device/deltanet.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "host/ops/device/matrix.h"
#include "host/ops/device/recurrent_cases.h"
#include "host/ops/reference/deltanet.h"

namespace tessera::ops {

DeltaNetOps::DeltaNetOps(const Device& device, ScanForm scan_form, PrefillForm prefill_form)
    : device_(&device),
      eight_(scan_form == ScanForm::kEightChannels ||
             (scan_form == ScanForm::kAuto && device.info().type == DeviceType::kCpu)),
      chunked_(prefill_form != PrefillForm::kRecurrent),
      recurrent_(device.kernel("deltanet", "deltanet_recurrent_f32")),
      recurrent8_(device.kernel("deltanet", "deltanet_recurrent8_f32")),
      chunk_(device.kernel("deltanet", "deltanet_chunk_f32")) {}

uint32_t DeltaNetOps::chunk_window(const DeltaNetDims& s, const RecurrentBatch& batch,
                                   size_t& items) const {
  if (!chunked_ || batch.n_tokens <= batch.n_seqs) return 0;
  const DeviceInfo& info = device_->info();
  // kl and ql, the two pair tables, the betas and log decays.
  const uint64_t local =
      (2ull * kChunk * s.d_k + 2ull * kChunk * kChunk + 2ull * kChunk) * sizeof(float);
  if (info.local_mem_bytes > 0 && local > info.local_mem_bytes) return 0;
  size_t kernel_max = 0;
  clGetKernelWorkGroupInfo(chunk_.get(), device_->handle(), CL_KERNEL_WORK_GROUP_SIZE,
                           sizeof(kernel_max), &kernel_max, nullptr);
  items = std::min<size_t>({128, info.max_group_items(), size_t(s.d_v)});
  if (kernel_max > 0) items = std::min(items, kernel_max);
  items = std::max<size_t>(1, items);
  // An item's loop iterations per chunk (the device's loop limit, if any, counts them).
  const uint64_t L = kChunk, dk = s.d_k;
  auto per_item = [&](uint64_t n) { return (n + items - 1) / items; };
  const uint64_t loops = 1 + per_item(L) * (1 + 2 * dk) + L + per_item(L * L) * (1 + dk) + L +
                         dk * (1 + L) + L * (2 + L) + L + dk * (1 + L);
  return tokens_per_launch(*device_, loops, kChunk, 16);
}

void DeltaNetOps::recurrent(const DeltaNetDims& s, const Strided& q, const Strided& k,
                            const Strided& v, const Strided& ba, cl_mem a, uint32_t a_off,
                            cl_mem dt_bias, uint32_t dt_bias_off, float eps,
                            const RecurrentBatch& batch, const Strided& o, const Events& ev) {
  if (s.n_k_head == 0 || s.n_v_head == 0 || s.d_k == 0 || s.d_v == 0 ||
      s.n_v_head % s.n_k_head != 0)
    throw std::invalid_argument("deltanet: bad shape: " + std::to_string(s.n_v_head) +
                                " value heads of " + std::to_string(s.d_v) + ", " +
                                std::to_string(s.n_k_head) + " key heads (must divide them) of " +
                                std::to_string(s.d_k));
  const uint32_t qk = s.n_k_head * s.d_k, width = s.n_v_head * s.d_v;
  const std::pair<const Strided*, uint32_t> rows[] = {
      {&q, qk}, {&k, qk}, {&v, width}, {&o, width}, {&ba, 2 * s.n_v_head}};
  const char* names[] = {"q", "k", "v", "o", "ba"};
  for (size_t i = 0; i < 5; ++i) {
    if (rows[i].first->stride < rows[i].second)
      throw std::invalid_argument("deltanet: " + std::string(names[i]) + " row stride " +
                                  std::to_string(rows[i].first->stride) + " is below its " +
                                  std::to_string(rows[i].second) + " floats");
  }
  if (batch.n_seqs == 0) return;
  // Tokens of each run per launch: all of them, unless the device limits an item's loops (then
  // the longest run, at most n_tokens, is split over launches; n_tokens 0: one launch).
  const uint32_t run_tokens = batch.n_tokens > 0 ? batch.n_tokens : UINT32_MAX;
  size_t group = 1;
  if (const uint32_t window = chunk_window(s, batch, group); window > 0) {
    const uint32_t block = uint32_t(group);
    const uint32_t groups = s.n_v_head * ((s.d_v + block - 1) / block);
    cl_kernel kern = chunk_.get();
    set_args(*device_, kern, q.mem, q.offset, q.stride, k.mem, k.offset, k.stride, v.mem,
             v.offset, v.stride, ba.mem, ba.offset, ba.stride, a, a_off, dt_bias, dt_bias_off,
             batch.states, cl_ulong(batch.slot_stride), batch.state_off, batch.seqs,
             batch.seqs_off, o.mem, o.offset, o.stride, s.n_k_head, s.n_v_head, s.d_k, s.d_v, eps,
             block);
    set_local_arg(*device_, kern, 32, size_t(kChunk) * s.d_k * sizeof(float));
    set_local_arg(*device_, kern, 33, size_t(kChunk) * s.d_k * sizeof(float));
    const size_t global[2] = {size_t(groups) * group, batch.n_seqs};
    const size_t local[2] = {group, 1};
    launch_in_pieces(run_tokens, window, ev, [&](size_t first, size_t count, const Events& e) {
      set_arg(*device_, kern, 30, cl_uint(first));
      set_arg(*device_, kern, 31, cl_uint(count));
      enqueue(*device_, kern, 2, global, local, e);
    });
    return;
  }
  const bool eight = eight_ && s.d_v % 8 == 0;
  cl_kernel kern = eight ? recurrent8_.get() : recurrent_.get();
  set_args(*device_, kern, q.mem, q.offset, q.stride, k.mem, k.offset, k.stride, v.mem, v.offset,
           v.stride, ba.mem, ba.offset, ba.stride, a, a_off, dt_bias, dt_bias_off, batch.states,
           cl_ulong(batch.slot_stride), batch.state_off, batch.seqs, batch.seqs_off, o.mem,
           o.offset, o.stride, s.n_k_head, s.n_v_head, s.d_k, s.d_v, eps);
  const uint32_t items = eight ? width / 8 : width;
  const size_t global[2] = {items, batch.n_seqs};
  const size_t local[2] = {fixed_group_size(*device_, kern, items), 1};
  // Per token an item loops over d_k three times.
  const uint32_t window =
      batch.n_tokens > 0 ? std::max(1u, tokens_per_launch(*device_, 3ull * s.d_k + 1, 1, 16))
                         : UINT32_MAX;
  launch_in_pieces(run_tokens, window, ev, [&](size_t first, size_t count, const Events& e) {
    set_arg(*device_, kern, 29, cl_uint(first));
    set_arg(*device_, kern, 30, cl_uint(count));
    enqueue(*device_, kern, 2, global, local, e);
  });
}

namespace {

using recurrent_cases::SeqPlan;

// q, k and v are slices of one conv-output row (as Qwen3-Next's), ba rows of their own.
MatrixCaseResult run_recurrent(const Device& device, bool timing, const SeqPlan& plan, bool split,
                               DeltaNetDims s, ScanForm form,
                               PrefillForm prefill = PrefillForm::kRecurrent) {
  const uint32_t rows = plan.rows(), qk = s.n_k_head * s.d_k, width = s.n_v_head * s.d_v;
  const uint32_t conv = 2 * qk + width, ba_stride = 2 * s.n_v_head;
  const float eps = 1e-6f;
  const std::vector<float> qkv = random_floats(size_t(rows) * conv, 111 + width),
                           ba = random_floats(size_t(rows) * ba_stride, 112, -3, 3),
                           a = random_floats(s.n_v_head, 113, -1.5f, -0.05f),
                           dt_bias = random_floats(s.n_v_head, 114);
  const uint64_t slot_stride = uint64_t(s.d_k) * width + 3;
  const uint32_t state_off = 1;
  std::vector<float> states = random_floats(plan.n_slots * slot_stride, 115, -0.5f, 0.5f);
  std::vector<float> ref_o(size_t(rows) * width), ref_states = states;
  const reference::DeltaNetShape shape{s.n_k_head, s.n_v_head, s.d_k, s.d_v};
  for (size_t q = 0; q < plan.lens.size(); ++q) {
    const size_t r0 = plan.first_row(q);
    auto sub = [&](const std::vector<float>& v, size_t stride, size_t off) {
      return reference::ConstRows{std::span<const float>(v).subspan(r0 * stride + off), stride};
    };
    reference::deltanet_recurrent(
        shape, plan.lens[q], sub(qkv, conv, 0), sub(qkv, conv, qk), sub(qkv, conv, 2 * qk),
        sub(ba, ba_stride, 0), a, dt_bias, eps,
        std::span<float>(ref_states)
            .subspan(plan.slots[q] * slot_stride + state_off, size_t(s.d_k) * width),
        {std::span<float>(ref_o).subspan(r0 * width), width});
  }
  DeltaNetOps ops(device, form, prefill);
  GuardedBuffer dqkv(device, qkv), dba(device, ba), da(device, a), ddtb(device, dt_bias),
      dst(device, states), dout(device, ref_o.size() * sizeof(float));
  auto launch = [&](cl_mem seqs, uint32_t n_seqs, uint32_t n_tokens, const Events& ev) {
    ops.recurrent(s, {dqkv.mem(), 0, conv}, {dqkv.mem(), qk, conv}, {dqkv.mem(), 2 * qk, conv},
                  {dba.mem(), 0, ba_stride}, da.mem(), 0, ddtb.mem(), 0, eps,
                  {seqs, 0, n_seqs, dst.mem(), slot_stride, state_off, n_tokens},
                  {dout.mem(), 0, width}, ev);
  };
  recurrent_cases::run_plan(device, plan, split, [&](cl_mem seqs, uint32_t n, uint32_t tokens) {
    launch(seqs, n, tokens, {});
  });
  std::vector<float> got = dout.download<float>(), want = ref_o;
  const std::vector<float> got_states = dst.download<float>();
  got.insert(got.end(), got_states.begin(), got_states.end());
  want.insert(want.end(), ref_states.begin(), ref_states.end());
  MatrixCaseResult r = judge(compare(got, want), 5e-5, {dout.check_guard(), dst.check_guard()});
  r.bytes =
      double(rows) * (conv + width + ba_stride) * 4 + double(plan.lens.size()) * s.d_k * width * 8;
  r.flops = double(rows) * width * s.d_k * 8;
  if (timing && !split) {  // states move on every launch: values drift, the time does not
    r.seconds = median_kernel_seconds(device, [&] {
      GuardedBuffer seqs(device, recurrent_cases::launches(plan, false).front());
      ClEvent ev;
      launch(seqs.mem(), uint32_t(plan.lens.size()), plan.rows(), {{}, ev.out()});
      return ev;
    });
  }
  return r;
}

}  // namespace

void register_deltanet_cases(std::vector<MatrixCase>& out) {
  using namespace recurrent_cases;
  struct Plan {
    const char* name;
    SeqPlan plan;
  };
  const Plan plans[] = {
      {"decode3", decode_plan()}, {"mixed4", mixed_plan()}, {"long70", long_plan(70)}};
  for (const Plan& p : plans) {
    for (bool split : {false, true}) {
      if (split && p.plan.rows() == p.plan.lens.size()) continue;
      // Qwen3-Next-80B's layer (16 key heads, 32 value heads of 128) on the decode plan; smaller
      // grouped shapes where the reference walks many tokens.
      const DeltaNetDims dims = std::string(p.name) == "decode3" ? DeltaNetDims{16, 32, 128, 128}
                                                                 : DeltaNetDims{2, 4, 32, 24};
      const std::string shape = std::to_string(dims.n_k_head) + "k" +
                                std::to_string(dims.n_v_head) + "v/" + std::to_string(dims.d_k) +
                                "x" + std::to_string(dims.d_v) + "/" + p.name +
                                (split ? "/prefill+decode" : "");
      // Every form on every device (the engine picks by device type): one value row per item,
      // 8 rows per item, and the chunked prefill form (decode launches stay recurrent, so its
      // split rows check that the forms share the state).
      for (ScanForm form : {ScanForm::kPerChannel, ScanForm::kEightChannels})
        out.push_back({"deltanet", "f32",
                       std::string(form == ScanForm::kEightChannels ? "x8/" : "") + shape,
                       [=](const Device& d, bool t) {
                         return run_recurrent(d, t, p.plan, split, dims, form);
                       }});
      if (p.plan.rows() > p.plan.lens.size())
        out.push_back({"deltanet", "f32", "chunk/" + shape, [=](const Device& d, bool t) {
                         return run_recurrent(d, t, p.plan, split, dims, ScanForm::kAuto,
                                              PrefillForm::kChunked);
                       }});
    }
  }
  out.push_back({"deltanet", "f32", "3k3v/7x5/mixed4/prefill+decode", [](const Device& d, bool t) {
                   return run_recurrent(d, t, mixed_plan(), true, DeltaNetDims{3, 3, 7, 5},
                                        ScanForm::kAuto);
                 }});
  // 8-row form on grouped heads of 8 rows with an odd key size.
  out.push_back({"deltanet", "f32", "x8/3k6v/7x8/mixed4/prefill+decode", [](const Device& d, bool t) {
                   return run_recurrent(d, t, mixed_plan(), true, DeltaNetDims{3, 6, 7, 8},
                                        ScanForm::kEightChannels);
                 }});
  // Chunked form: odd grouped shapes, more value rows than one work-group takes (d_v 200: two
  // blocks on most devices), runs of several chunks with a partial last one.
  out.push_back(
      {"deltanet", "f32", "chunk/3k3v/7x5/mixed4/prefill+decode", [](const Device& d, bool t) {
         return run_recurrent(d, t, mixed_plan(), true, DeltaNetDims{3, 3, 7, 5}, ScanForm::kAuto,
                              PrefillForm::kChunked);
       }});
  out.push_back({"deltanet", "f32", "chunk/1k2v/16x200/long40", [](const Device& d, bool t) {
                   return run_recurrent(d, t, long_plan(40), false, DeltaNetDims{1, 2, 16, 200},
                                        ScanForm::kAuto, PrefillForm::kChunked);
                 }});
  out.push_back({"deltanet", "f32", "chunk/2k4v/24x16/long100", [](const Device& d, bool t) {
                   return run_recurrent(d, t, long_plan(100), false, DeltaNetDims{2, 4, 24, 16},
                                        ScanForm::kAuto, PrefillForm::kChunked);
                 }});
  // A 256-token prefill run of Qwen3-Next-80B's layer in every form: the rows to time the
  // chunked form against the recurrent ones on a device.
  for (PrefillForm prefill : {PrefillForm::kRecurrent, PrefillForm::kChunked})
    for (ScanForm form : {ScanForm::kPerChannel, ScanForm::kEightChannels}) {
      if (prefill == PrefillForm::kChunked && form == ScanForm::kEightChannels) continue;
      const std::string tag = prefill == PrefillForm::kChunked   ? "chunk/"
                              : form == ScanForm::kEightChannels ? "x8/"
                                                                 : "";
      out.push_back(
          {"deltanet", "f32", tag + "16k32v/128x128/long256", [=](const Device& d, bool t) {
             return run_recurrent(d, t, long_plan(256), false, DeltaNetDims{16, 32, 128, 128},
                                  form, prefill);
           }});
    }
}

}  // namespace tessera::ops
