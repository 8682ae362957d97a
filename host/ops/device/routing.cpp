// Device MoE routing launches and their portability-matrix cases.
#include "host/ops/device/routing.h"

#include <algorithm>
#include <random>
#include <stdexcept>

#include "host/ops/device/matrix.h"
#include "host/ops/reference/norm.h"

namespace tessera::ops {

namespace {

RoutingVariant resolve(const Device& device, RoutingVariant v) {
  if (v != RoutingVariant::kAuto) return v;
  return device.info().type == DeviceType::kCpu ? RoutingVariant::kSerial : RoutingVariant::kSplit;
}

}  // namespace

RoutingOps::RoutingOps(const Device& device, RoutingVariant variant)
    : device_(&device),
      variant_(resolve(device, variant)),
      route_(device.kernel("route", variant_ == RoutingVariant::kSerial ? "route_topk_f32"
                                                                        : "route_topk_group_f32")),
      norm_route_(device.kernel("route", variant_ == RoutingVariant::kSerial
                                             ? "norm_route_topk_serial_f32"
                                             : "norm_route_topk_f32")) {
  if (variant_ == RoutingVariant::kSplit) {
    norm_route_split_ = device.kernel("route", "norm_route_topk_split_f32");
    const std::vector<int32_t> zeros(kSplitMaxTokens, 0);
    split_counters_ = device.alloc(zeros.size() * sizeof(int32_t));
    device.write(split_counters_.get(), 0, zeros.data(), zeros.size() * sizeof(int32_t));
  }
}

size_t RoutingOps::norm_route_local() const {
  // The variant's shape: one item per token (serial) or a work group sharing the dot products.
  if (variant_ == RoutingVariant::kSerial) return 1;
  // One work group per token: decode runs a single group, so it takes the widest one.
  return std::min<size_t>(1024,
                          floor_pow2(std::max<size_t>(1, device_->info().max_work_group_size)));
}

namespace {

// kSplit's work-group size: 256 items (a power of two) where the device allows.
size_t split_local(const Device& device) {
  return std::min<size_t>(256, floor_pow2(std::max<size_t>(1, device.info().max_work_group_size)));
}

}  // namespace

bool RoutingOps::can_norm_route(uint32_t n, uint32_t n_expert) const {
  const uint64_t bytes = (uint64_t(n) + norm_route_local() + n_expert) * sizeof(float);
  return n > 0 && n_expert > 0 && bytes <= device_->info().local_mem_bytes;
}

void RoutingOps::norm_route(cl_mem x, uint32_t x_off, cl_mem norm_w, float eps, uint32_t n,
                            cl_mem xn, uint32_t xn_off, cl_mem router, uint32_t r_ld,
                            uint32_t n_tokens, uint32_t n_expert, const RoutingConfig& config,
                            cl_mem ids, uint32_t ids_off, cl_mem weights, uint32_t w_off,
                            cl_mem logits, const Events& ev) {
  const int k = config.n_expert_used;
  if (k < 1 || uint32_t(k) > n_expert) {
    throw std::invalid_argument("norm_route: n_expert_used " + std::to_string(k) +
                                " is not in [1, " + std::to_string(n_expert) + "]");
  }
  if (!can_norm_route(n, n_expert) || r_ld < n || r_ld % 4 != 0) {
    throw std::invalid_argument("norm_route: a row of " + std::to_string(n) + " floats and " +
                                std::to_string(n_expert) + " experts (router stride " +
                                std::to_string(r_ld) + ") do not fit " + device_->info().label());
  }
  if (n_tokens == 0) return;
  const uint32_t sigmoid = config.gating == GatingFunc::kSigmoid ? 1 : 0;
  const uint32_t normalize = config.normalize_topk ? 1 : 0;
  if (variant_ == RoutingVariant::kSplit && logits && n_tokens <= kSplitMaxTokens) {
    // G items per expert: the power of two that leaves each about 4 float4 loads of the row (at
    // most the group); epw = local / G experts per group.
    cl_kernel kern = norm_route_split_.get();
    const size_t local = split_local(*device_);
    size_t G = 1;
    while (G < local && G * 4 * 4 < n) G *= 2;
    const uint32_t epw = uint32_t(local / G);
    const size_t groups = (n_expert + epw - 1) / epw;
    set_args(*device_, kern, x, x_off, norm_w, eps, n, xn, xn_off, router, r_ld, n_expert,
             uint32_t(k), sigmoid, normalize, config.weight_scale, ids, ids_off, weights, w_off);
    set_local_arg(*device_, kern, 18, size_t(n) * sizeof(float));
    set_local_arg(*device_, kern, 19, local * sizeof(float));
    set_local_arg(*device_, kern, 20, size_t(n_expert) * sizeof(float));
    set_arg(*device_, kern, 21, epw);
    set_arg(*device_, kern, 22, logits);
    set_arg(*device_, kern, 23, uint32_t(0));
    set_arg(*device_, kern, 24, split_counters_.get());
    const size_t global[2] = {groups * local, n_tokens};
    const size_t lws[2] = {local, 1};
    enqueue(*device_, kern, 2, global, lws, ev);
    return;
  }
  cl_kernel kern = norm_route_.get();
  set_args(*device_, kern, x, x_off, norm_w, eps, n, xn, xn_off, router, r_ld, n_expert,
           uint32_t(k), sigmoid, normalize, config.weight_scale, ids, ids_off, weights, w_off);
  const size_t local = norm_route_local();
  set_local_arg(*device_, kern, 18, size_t(n) * sizeof(float));
  set_local_arg(*device_, kern, 19, local * sizeof(float));
  set_local_arg(*device_, kern, 20, size_t(n_expert) * sizeof(float));
  const size_t global = size_t(n_tokens) * local;
  enqueue(*device_, kern, 1, &global, &local, ev);
}

void RoutingOps::route(cl_mem logits, uint32_t l_off, uint32_t n_tokens, uint32_t n_expert,
                       const RoutingConfig& config, cl_mem ids, uint32_t ids_off, cl_mem weights,
                       uint32_t w_off, const Events& ev) {
  const int k = config.n_expert_used;
  if (k < 1 || uint32_t(k) > n_expert) {
    throw std::invalid_argument("route: n_expert_used " + std::to_string(k) + " is not in [1, " +
                                std::to_string(n_expert) + "]");
  }
  if (n_tokens == 0) return;
  cl_kernel kern = route_.get();
  const uint32_t sigmoid = config.gating == GatingFunc::kSigmoid ? 1 : 0;
  const uint32_t normalize = config.normalize_topk ? 1 : 0;
  if (variant_ != RoutingVariant::kSerial) {
    set_args(*device_, kern, logits, l_off, n_expert, uint32_t(k), sigmoid, normalize,
             config.weight_scale, ids, ids_off, weights, w_off);
    // A power of two covering the experts (capped): each item then owns about one expert.
    size_t local = 1;
    while (local < n_expert && local < 256) local *= 2;
    local = std::min(local, floor_pow2(std::max<size_t>(1, device_->info().max_work_group_size)));
    set_local_arg(*device_, kern, 11, n_expert * sizeof(float));
    set_local_arg(*device_, kern, 12, local * sizeof(float));
    set_local_arg(*device_, kern, 13, local * sizeof(cl_int));
    const size_t global = size_t(n_tokens) * local;
    enqueue(*device_, kern, 1, &global, &local, ev);
    return;
  }
  set_args(*device_, kern, logits, l_off, n_expert, uint32_t(k), sigmoid, normalize,
           config.weight_scale, ids, ids_off, weights, w_off, n_tokens);
  const size_t local = device_->info().type == DeviceType::kCpu ? 1 : 64;
  const size_t global = round_up(n_tokens, local);
  enqueue(*device_, kern, 1, &global, &local, ev);
}

namespace {

// ties: logits drawn from a few integers, so equal probabilities are common and the tie rule shows.
MatrixCaseResult run_route(const Device& device, bool timing, uint32_t tokens, uint32_t n_expert,
                           RoutingConfig cfg, bool ties, RoutingVariant variant) {
  std::vector<float> logits = random_floats(size_t(tokens) * n_expert, 51 + n_expert, -4, 4);
  if (ties) {
    std::mt19937 rng(52);
    for (float& l : logits) l = float(int(rng() % 4)) - 1.0f;
  }
  const uint32_t k = uint32_t(cfg.n_expert_used);
  std::vector<int32_t> ref_ids;
  std::vector<float> ref_w;
  for (uint32_t t = 0; t < tokens; ++t) {
    auto choice = reference::route_experts(
        std::span<const float>(logits.data() + size_t(t) * n_expert, n_expert), cfg);
    ref_ids.insert(ref_ids.end(), choice.ids.begin(), choice.ids.end());
    ref_w.insert(ref_w.end(), choice.weights.begin(), choice.weights.end());
  }
  RoutingOps ops(device, variant);
  GuardedBuffer dl(device, logits), dids(device, size_t(tokens) * k * 4),
      dw(device, size_t(tokens) * k * 4);
  ops.route(dl.mem(), 0, tokens, n_expert, cfg, dids.mem(), 0, dw.mem(), 0);
  const auto got_ids = dids.download<int32_t>();
  MatrixCaseResult r =
      judge(compare(dw.download<float>(), ref_w), 1e-5, {dids.check_guard(), dw.check_guard()});
  if (const size_t bad = count_mismatches(got_ids, ref_ids); bad > 0 && r.status == "pass") {
    r.status = "fail";
    r.note = std::to_string(bad) + " of " + std::to_string(ref_ids.size()) + " expert ids differ";
  }
  r.bytes = double(tokens) * (n_expert * 4 + k * 8);
  r.flops = double(tokens) * n_expert * (k + 2) * 4;
  if (timing) {
    r.seconds = median_kernel_seconds(device, [&] {
      ClEvent ev;
      ops.route(dl.mem(), 0, tokens, n_expert, cfg, dids.mem(), 0, dw.mem(), 0, {{}, ev.out()});
      return ev;
    });
  }
  return r;
}

// norm_route against reference rms_norm, a plain F32 matmul and route_experts.
MatrixCaseResult run_norm_route(const Device& device, bool timing, uint32_t tokens, uint32_t n,
                                uint32_t n_expert, RoutingConfig cfg, RoutingVariant variant) {
  const float eps = 1e-6f;
  std::vector<float> x = random_floats(size_t(tokens) * n, 61 + n, -2, 2);
  const std::vector<float> nw = random_floats(n, 62 + n, 0.5f, 1.5f);
  const uint32_t ld = (n + 3 + 3) / 4 * 4;  // padded rows (a multiple of 4), as a repacked F32 has
  const std::vector<float> router = random_floats(size_t(n_expert) * ld, 63 + n_expert, -1, 1);
  std::vector<float> ref_xn(x.size());
  reference::rms_norm(x, nw, eps, ref_xn);
  const uint32_t k = uint32_t(cfg.n_expert_used);
  std::vector<int32_t> ref_ids;
  std::vector<float> ref_w;
  for (uint32_t t = 0; t < tokens; ++t) {
    std::vector<float> logits(n_expert);
    for (uint32_t e = 0; e < n_expert; ++e) {
      double acc = 0;
      for (uint32_t i = 0; i < n; ++i)
        acc += double(router[size_t(e) * ld + i]) * ref_xn[size_t(t) * n + i];
      logits[e] = float(acc);
    }
    auto choice = reference::route_experts(logits, cfg);
    ref_ids.insert(ref_ids.end(), choice.ids.begin(), choice.ids.end());
    ref_w.insert(ref_w.end(), choice.weights.begin(), choice.weights.end());
  }
  RoutingOps ops(device, variant);
  if (!ops.can_norm_route(n, n_expert)) {
    MatrixCaseResult r;
    r.status = "unsupported";
    r.note = "row does not fit local memory";
    return r;
  }
  GuardedBuffer dx(device, x), dnw(device, nw), drouter(device, router),
      dxn(device, x.size() * sizeof(float)), dids(device, size_t(tokens) * k * 4),
      dw(device, size_t(tokens) * k * 4), dlogits(device, size_t(tokens) * n_expert * 4);
  auto run = [&](const Events& ev) {
    ops.norm_route(dx.mem(), 0, dnw.mem(), eps, n, dxn.mem(), 0, drouter.mem(), ld, tokens,
                   n_expert, cfg, dids.mem(), 0, dw.mem(), 0, dlogits.mem(), ev);
  };
  run({});
  std::vector<float> got = dxn.download<float>(), ref = ref_xn;
  const auto got_w = dw.download<float>();
  got.insert(got.end(), got_w.begin(), got_w.end());
  ref.insert(ref.end(), ref_w.begin(), ref_w.end());
  MatrixCaseResult r =
      judge(compare(got, ref), 1e-4,
            {dxn.check_guard(), dids.check_guard(), dw.check_guard(), dlogits.check_guard()});
  const auto got_ids = dids.download<int32_t>();
  if (const size_t bad = count_mismatches(got_ids, ref_ids); bad > 0 && r.status == "pass") {
    r.status = "fail";
    r.note = std::to_string(bad) + " of " + std::to_string(ref_ids.size()) + " expert ids differ";
  }
  r.bytes = double(tokens) * n * 8 + double(n_expert) * n * 4;
  r.flops = double(tokens) * n * (n_expert * 2 + 4);
  if (timing) {
    r.seconds = median_kernel_seconds(device, [&] {
      ClEvent ev;
      run({{}, ev.out()});
      return ev;
    });
  }
  return r;
}

}  // namespace

void register_routing_cases(std::vector<MatrixCase>& out) {
  {
    struct Shape {
      uint32_t tokens, n, experts, k;
      bool sigmoid;
    };
    const Shape fused[] = {{1, 1024, 32, 4, false},
                           {6, 256, 128, 8, false},
                           {3, 100, 7, 2, true},
                           {17, 2048, 8, 2, false},
                           {2, 64, 384, 8, false}};
    for (const Shape& s : fused) {
      RoutingConfig cfg;
      cfg.n_expert_used = int(s.k);
      cfg.gating = s.sigmoid ? GatingFunc::kSigmoid : GatingFunc::kSoftmax;
      cfg.normalize_topk = true;
      const std::string shape = std::to_string(s.tokens) + "x" + std::to_string(s.n) + "x" +
                                std::to_string(s.experts) + "/" + std::to_string(s.k);
      for (RoutingVariant v :
           {RoutingVariant::kSerial, RoutingVariant::kGroup, RoutingVariant::kSplit}) {
        out.push_back({v == RoutingVariant::kSplit   ? "norm_route_topk_split"
                       : v == RoutingVariant::kGroup ? "norm_route_topk_group"
                                                     : "norm_route_topk",
                       s.sigmoid ? "sigmoid_norm" : "softmax_norm", shape,
                       [=](const Device& d, bool t) {
                         return run_norm_route(d, t, s.tokens, s.n, s.experts, cfg, v);
                       }});
      }
    }
  }
  struct Format {
    const char* name;
    GatingFunc gating;
    bool norm;
    float scale;
  };
  const Format formats[] = {{"softmax", GatingFunc::kSoftmax, false, 1.0f},
                            {"softmax_norm", GatingFunc::kSoftmax, true, 1.0f},
                            {"sigmoid", GatingFunc::kSigmoid, false, 1.0f},
                            {"sigmoid_norm_x2.5", GatingFunc::kSigmoid, true, 2.5f}};
  struct Shape {
    uint32_t tokens, experts, k;
    bool ties;
  };
  const Shape shapes[] = {{1, 128, 8, false}, {13, 60, 4, false},  {5, 8, 2, false},
                          {3, 7, 7, false},   {64, 256, 8, false}, {9, 32, 4, true}};
  for (const Format& f : formats) {
    for (const Shape& s : shapes) {
      RoutingConfig cfg;
      cfg.n_expert_used = int(s.k);
      cfg.gating = f.gating;
      cfg.normalize_topk = f.norm;
      cfg.weight_scale = f.scale;
      std::string shape =
          std::to_string(s.tokens) + "x" + std::to_string(s.experts) + "/" + std::to_string(s.k);
      if (s.ties) shape += "/ties";
      for (RoutingVariant v : {RoutingVariant::kSerial, RoutingVariant::kGroup}) {
        out.push_back({v == RoutingVariant::kGroup ? "route_topk_group" : "route_topk", f.name,
                       shape, [=](const Device& d, bool t) {
                         return run_route(d, t, s.tokens, s.experts, cfg, s.ties, v);
                       }});
      }
    }
  }
}

}  // namespace tessera::ops
