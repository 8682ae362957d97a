// Each layer kind's device forward against its own reference forward, one layer at a time, on every
// OpenCL device found: the attention mixer (prefill then decode, grouped and ungrouped KV heads,
// full and sliding-window layers),
// the dense FFN, the MoE FFN with every expert on the device and (with two devices) split across
// them, and the MoE combine fused with the next layer's input norm.
#include <gtest/gtest.h>

#include <random>

#include "engine_test_util.h"
#include "host/engine/layers/attention.h"
#include "host/engine/layers/dense_ffn.h"
#include "host/engine/layers/moe_ffn.h"
#include "host/model/weights.h"
#include "host/ops/reference/norm.h"

namespace tessera::engine::test {
namespace {

std::unique_ptr<Loaded> load(const std::string& kind, bool layer_arrays, uint32_t window = 0) {
  model::FixtureOptions o;
  o.kind = kind;
  o.layer_arrays = layer_arrays;
  o.window = window;
  auto file = gguf::GgufFile::from_memory(model::make_fixture(o).to_bytes(), "fixture-" + kind);
  auto l = std::make_unique<Loaded>(Loaded{std::move(file), {}});
  l->spec = model::ModelSpec::from_gguf(l->file);
  return l;
}

std::vector<float> random_rows(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

// The engine's pieces for one spec on `devices` (the first is every layer's device): device
// contexts, a KV cache, the MoE runtime and the layer list, uploaded. `expert_device` places
// expert e of every layer (default: all on device 0).
struct Rig {
  Rig(const model::ModelSpec& s, std::vector<const Device*> devices,
      std::function<int(int)> expert_device = nullptr,
      std::function<uint32_t(int)> expert_copies = nullptr)
      : spec(s), uploader(0, {}) {
    const auto& hp = spec.hp;
    const int K = std::max<int>(1, int(hp.n_expert_used));
    DeviceCtxSizes sizes{kTokens,     kTokens * K,
                         hp.n_embd,   std::max({hp.n_ff, hp.n_ff_exp, hp.n_ff_shexp}),
                         hp.n_expert, uint32_t(K)};
    for (size_t d = 0; d < devices.size(); ++d) {
      ctxs.push_back(std::make_unique<DeviceCtx>(int(d), *devices[d], sizes, false));
      ctxs.back()->allocate_attention(kTokens, 4, 4, hp.q_dim(), hp.kv_dim());
    }
    kv::KvCacheConfig kc{int32_t(hp.n_layer), int32_t(hp.n_head_kv), int32_t(hp.head_dim), 4, 16,
                         kv::KvFormat::kF16};
    for (const auto& ls : spec.layers) {
      kc.layer_n_head_kv.push_back(int32_t(ls.n_head_kv));
      kc.layer_window.push_back(int32_t(ls.window));
    }
    cache = std::make_unique<kv::PagedKvCache>(
        kc, std::vector<const Device*>(hp.n_layer, devices.front()));
    plan.expert_device.assign(hp.n_layer, std::vector<int>(hp.n_expert, 0));
    if (expert_device)
      for (auto& layer : plan.expert_device)
        for (size_t e = 0; e < layer.size(); ++e) layer[e] = expert_device(int(e));
    if (expert_copies) {
      plan.expert_copies.assign(hp.n_layer, std::vector<uint32_t>(hp.n_expert, 0u));
      for (auto& layer : plan.expert_copies)
        for (size_t e = 0; e < layer.size(); ++e) layer[e] = expert_copies(int(e));
    }
    std::vector<std::string> ids;
    for (const auto* d : devices) ids.push_back(d->id());
    executor = std::make_unique<sched::Executor>(ids);
    balancer = std::make_unique<sched::ExpertBalancer>(footprint_of(spec, 64), false);
    stats.expert_hits.assign(devices.size(), 0);
    stats.device_seconds.assign(devices.size(), 0.0);
    moe = {&plan, &ctxs, executor.get(), balancer.get(), &stats, {}, {}};
    layers = make_layers(spec, &moe);
    for (auto& l : layers) {
      l.mixer->upload(home(), uploader, *cache, options);
      l.ffn->upload(home(), uploader, options);
    }
    for (auto& [heads, op] : home().attention_ops)
      home().workspace_bytes =
          std::max(home().workspace_bytes, op->decode_workspace_bytes(kTokens, 64));
    home().workspace = home().dev->alloc(home().workspace_bytes);
  }

  DeviceCtx& home() { return *ctxs.front(); }
  void set_x(const std::vector<float>& x) {
    home().dev->write(home().x.get(), 0, x.data(), x.size() * 4);
  }
  std::vector<float> read(cl_mem m, size_t n) {
    std::vector<float> out(n);
    home().dev->read(m, 0, out.data(), n * 4, true);
    for (auto& c : ctxs) c->dev->finish();
    return out;
  }
  LayerStep step(int n, bool decode) { return {n, decode, &options, cache.get()}; }

  static constexpr int kTokens = 8;
  const model::ModelSpec& spec;
  EngineOptions options;
  std::vector<std::unique_ptr<DeviceCtx>> ctxs;
  std::unique_ptr<kv::PagedKvCache> cache;
  sched::Plan plan;
  std::unique_ptr<sched::Executor> executor;
  std::unique_ptr<sched::ExpertBalancer> balancer;
  EngineStats stats;
  MoeRuntime moe;
  WeightUploader uploader;
  std::vector<Layer> layers;
};

std::vector<const Device*> each(const DeviceRegistry& reg) {
  std::vector<const Device*> out;
  for (const auto& d : reg.devices()) out.push_back(d.get());
  return out;
}

// Attention of every layer of `kind`: a 5-token prefill of one sequence, then one decode token
// (with a window: then a 6-token chunk and two decode tokens, past the window), on each device,
// against the reference forward with its own KV memory.
void check_attention(const std::string& kind, bool layer_arrays, uint32_t window = 0) {
  auto m = load(kind, layer_arrays, window);
  auto reg = DeviceRegistry::discover();
  for (const Device* dev : each(reg)) {
    SCOPED_TRACE(dev->id());
    Rig rig(m->spec, {dev});
    const size_t E = m->spec.hp.n_embd;
    for (size_t l = 0; l < rig.layers.size(); ++l) {
      SCOPED_TRACE("layer " + std::to_string(l));
      auto& mixer = *rig.layers[l].mixer;
      ASSERT_EQ(mixer.kind(), model::MixerKind::kAttention);
      EXPECT_EQ(mixer.memory().kv_bytes_per_token, 2u * 2 * m->spec.layers[l].kv_dim(m->spec.hp));
      ReferenceLayerMemory mem;
      const kv::SeqId seq = rig.cache->create_sequence();
      int32_t pos = 0;
      const std::vector<int> chunks =
          window ? std::vector<int>{5, 1, 6, 1, 1} : std::vector<int>{5, 1};
      for (int n : chunks) {
        const auto r = rig.cache->reserve(seq, n);
        std::vector<int32_t> positions, token_seq(size_t(n), 0);
        for (int i = 0; i < n; ++i) positions.push_back(r.first_pos + i);
        auto x = random_rows(size_t(n) * E, 7 + uint64_t(pos));
        rig.set_x(x);
        const std::vector<kv::SeqId> seqs{seq};
        DeviceCtx& c = rig.home();
        for (size_t g = 0; g < c.batches.size(); ++g)
          if (c.batches[g])
            c.views[g] =
                c.batches[g]->upload(rig.cache->blocks(int32_t(g)), seqs, token_seq, positions);
        mixer.forward(rig.home(), rig.step(n, n == 1), false);
        const auto got = rig.read(rig.home().x.get(), x.size());
        mixer.reference_forward(x, positions, mem);
        EXPECT_LT(rel_err(got, x), kRefTol) << n << " tokens at " << pos;
        pos += n;
      }
      rig.cache->free_sequence(seq);
    }
  }
}

TEST(LayerKinds, AttentionMatchesReferenceOnEveryDevice) {
  check_attention("llama", false);  // grouped KV heads (4 query heads over 2)
  check_attention("qwen3", false);  // q/k norms, head_dim != n_embd / n_head
}

TEST(LayerKinds, AttentionWithPerLayerKvHeadsMatchesReference) {
  check_attention("llama", true);  // layer 1: 4 KV heads, layer 0: 2
}

TEST(LayerKinds, SlidingWindowAttentionMatchesReference) {
  // Layer 0 attends to its last 4 positions (positions up to 13), layer 1 to all of them.
  auto m = load("llama", false, 4);
  ASSERT_EQ(m->spec.layers[0].window, 4u);
  ASSERT_EQ(m->spec.layers[1].window, 0u);
  EXPECT_EQ(AttentionMixer(m->spec, 0).memory().window, 4u);
  check_attention("llama", false, 4);
  check_attention("qwen3", true, 4);  // q/k norms, per-layer KV heads
}

// The FFN of every layer of `kind` on 3 tokens against its reference forward.
void check_ffn(const std::string& kind, bool layer_arrays, model::FfnKind want) {
  auto m = load(kind, layer_arrays);
  auto reg = DeviceRegistry::discover();
  for (const Device* dev : each(reg)) {
    SCOPED_TRACE(dev->id());
    Rig rig(m->spec, {dev});
    const size_t E = m->spec.hp.n_embd;
    for (size_t l = 0; l < rig.layers.size(); ++l) {
      SCOPED_TRACE("layer " + std::to_string(l));
      auto& ffn = *rig.layers[l].ffn;
      ASSERT_EQ(ffn.kind(), want);
      auto x = random_rows(3 * E, 11 + l);
      rig.set_x(x);
      EXPECT_FALSE(ffn.forward(rig.home(), rig.step(3, false), nullptr));
      const auto got = rig.read(rig.home().x.get(), x.size());
      ffn.reference_forward(x);
      EXPECT_LT(rel_err(got, x), kRefTol);
    }
  }
}

TEST(LayerKinds, DenseFfnMatchesReferenceOnEveryDevice) {
  check_ffn("llama", false, model::FfnKind::kDense);
  check_ffn("llama", true, model::FfnKind::kDense);  // layer 1 twice as wide
}

TEST(LayerKinds, MoeFfnMatchesReferenceOnEveryDevice) {
  check_ffn("qwen3moe", false, model::FfnKind::kMoe);
  check_ffn("mixtral", false, model::FfnKind::kMoe);
}

// gpt-oss: router and expert biases, the clamped SwiGLU, MXFP4 experts; attention with sinks and
// an output bias on top of q/k/v biases.
TEST(LayerKinds, GptOssLayersMatchReferenceOnEveryDevice) {
  auto m = load("gpt-oss", false);
  ASSERT_NE(m->spec.layers[0].sinks, nullptr);
  ASSERT_NE(m->spec.layers[0].bo, nullptr);
  ASSERT_NE(m->spec.layers[0].down_exps_b, nullptr);
  EXPECT_EQ(m->spec.layers[0].gate_exps->type, gguf::TensorType::MXFP4);
  check_ffn("gpt-oss", false, model::FfnKind::kMoe);
  check_attention("gpt-oss", false);
}

TEST(LayerKinds, MoeFfnWithSharedExpertMatchesReferenceOnEveryDevice) {
  check_ffn("qwen2moe", false, model::FfnKind::kMoeShared);
}

TEST(LayerKinds, AttentionWithQkvBiasesMatchesReference) {
  auto m = load("qwen2moe", false);
  ASSERT_NE(m->spec.layers[0].bq, nullptr);
  check_attention("qwen2moe", false);
}

TEST(LayerKinds, MoeFfnSplitAcrossDevicesMatchesReference) {
  auto reg = DeviceRegistry::discover();
  const auto devices = each(reg);
  if (devices.size() < 2) GTEST_SKIP() << "needs two OpenCL devices";
  // qwen2moe: its shared expert stays home; gpt-oss: each device adds its experts' biases.
  for (const char* kind : {"qwen3moe", "qwen2moe", "gpt-oss"}) {
    SCOPED_TRACE(kind);
    auto m = load(kind, false);
    Rig rig(m->spec, devices, [&](int e) { return e % int(devices.size()); });
    const size_t E = m->spec.hp.n_embd;
    auto& ffn = *rig.layers[0].ffn;
    auto x = random_rows(4 * E, 5);
    rig.set_x(x);
    EXPECT_FALSE(ffn.forward(rig.home(), rig.step(4, false), nullptr));
    const auto got = rig.read(rig.home().x.get(), x.size());
    ffn.reference_forward(x);
    EXPECT_LT(rel_err(got, x), kRefTol);
    EXPECT_GT(rig.stats.expert_hits[1], 0u);  // the second device served pairs
  }
}

// Experts split over two devices, each device also holding copies of the other's experts (what
// the balancer keeps after moves): pairs go to the serving device only. Then the serving devices
// swap, each expert now served from its copy: no weight is uploaded and the output still equals
// the reference.
TEST(LayerKinds, MoeFfnWithCopiesRoutesToTheServingDevice) {
  auto reg = DeviceRegistry::discover();
  const auto devices = each(reg);
  if (devices.size() < 2) GTEST_SKIP() << "needs two OpenCL devices";
  auto m = load("qwen3moe", false);
  Rig rig(
      m->spec, {devices[0], devices[1]}, [](int e) { return e % 2; },
      [](int e) { return 1u << (1 - e % 2); });
  const size_t E = m->spec.hp.n_embd;
  auto& ffn = *rig.layers[0].ffn;
  auto x = random_rows(4 * E, 6);
  auto check = [&](const char* what) {
    SCOPED_TRACE(what);
    rig.set_x(x);
    EXPECT_FALSE(ffn.forward(rig.home(), rig.step(4, false), nullptr));
    const auto got = rig.read(rig.home().x.get(), x.size());
    auto ref = x;
    ffn.reference_forward(ref);
    EXPECT_LT(rel_err(got, ref), kRefTol);
  };
  check("split with copies");
  EXPECT_GT(rig.stats.expert_hits[0], 0u);
  EXPECT_GT(rig.stats.expert_hits[1], 0u);
  const uint64_t hits = rig.stats.expert_hits[0] + rig.stats.expert_hits[1];
  EXPECT_EQ(hits, 4u * m->spec.hp.n_expert_used) << "a pair ran on a device holding a copy";
  // Swap the serving devices: every expert is now served where its copy is.
  for (auto& layer : rig.plan.expert_device)
    for (auto& d : layer) d = 1 - d;
  for (auto& layer : rig.plan.expert_copies)
    for (size_t e = 0; e < layer.size(); ++e) layer[e] = 1u << (e % 2);
  const uint64_t before = rig.uploader.uploaded();
  ffn.routed()->upload_experts(rig.uploader);
  EXPECT_EQ(rig.uploader.uploaded(), before) << "serving from a held copy uploaded weights";
  check("served from the copies");
}

TEST(LayerKinds, SharedMoeCombineFusedWithNextNormMatchesReference) {
  auto m = load("qwen2moe", false);
  auto reg = DeviceRegistry::discover();
  for (const Device* dev : each(reg)) {
    SCOPED_TRACE(dev->id());
    Rig rig(m->spec, {dev});
    const size_t E = m->spec.hp.n_embd;
    auto x = random_rows(2 * E, 4);
    rig.set_x(x);
    const cl_mem next_norm = rig.layers[1].mixer->input_norm();
    ASSERT_TRUE(rig.layers[0].ffn->forward(rig.home(), rig.step(2, false), next_norm));
    const auto got_x = rig.read(rig.home().x.get(), x.size());
    rig.layers[0].ffn->reference_forward(x);
    EXPECT_LT(rel_err(got_x, x), kRefTol);
  }
}

TEST(LayerKinds, MoeCombineFusedWithNextNormMatchesReference) {
  auto m = load("qwen3moe", false);
  auto reg = DeviceRegistry::discover();
  for (const Device* dev : each(reg)) {
    SCOPED_TRACE(dev->id());
    Rig rig(m->spec, {dev});
    const size_t E = m->spec.hp.n_embd;
    auto x = random_rows(2 * E, 3);
    rig.set_x(x);
    const cl_mem next_norm = rig.layers[1].mixer->input_norm();
    ASSERT_TRUE(rig.layers[0].ffn->forward(rig.home(), rig.step(2, false), next_norm));
    const auto got_x = rig.read(rig.home().x.get(), x.size());
    const auto got_xn = rig.read(rig.home().xn.get(), x.size());
    rig.layers[0].ffn->reference_forward(x);
    std::vector<float> xn(x.size());
    reference::rms_norm(x, model::to_floats(*m->spec.layers[1].attn_norm), m->spec.hp.rms_eps, xn);
    EXPECT_LT(rel_err(got_x, x), kRefTol);
    EXPECT_LT(rel_err(got_xn, xn), kRefTol);
  }
}

}  // namespace
}  // namespace tessera::engine::test
