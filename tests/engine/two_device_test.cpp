// Experts and layers split over two devices (POCL_DEVICES="pthread pthread", set by CTest) give
// the same greedy tokens and logits as one device, for every architecture.
#include <bit>
#include "engine_test_util.h"
#include "host/cli/settings.h"
#include "host/engine/engine.h"

namespace tessera::engine::test {
namespace {

const std::vector<int32_t> kPrompt{1, 300, 301, 302, 303, 304, 305};

sched::Config one_device(const std::string& id) {
  sched::Config c;
  sched::DeviceSelector s;
  s.id = id;
  c.select = {s};
  return c;
}

// Attention on cpu0, every layer's experts split between cpu0 and cpu1 in these shares.
sched::Config experts_in_shares(double cpu0, double cpu1) {
  sched::Config split;
  split.attention = "cpu0";
  split.experts_mode = "shares";
  split.expert_shares = {{"cpu0", cpu0}, {"cpu1", cpu1}};
  return split;
}
sched::Config experts_in_halves() {
  return experts_in_shares(1, 1);
}

// Greedy tokens and logits of kPrompt + n tokens on cpu0 alone.
RefRun on_cpu0(const model::ModelSpec& spec, const DeviceRegistry& reg, int n) {
  auto single = make_engine(spec, reg, one_device("cpu0"));
  return engine_greedy(*single, kPrompt, n);
}

class TwoDeviceTest : public ::testing::TestWithParam<std::string> {};

TEST_P(TwoDeviceTest, SplitEqualsOneDevice) {
  auto reg = tessera::cli::discover_devices();
  if (reg.devices().size() < 2) GTEST_SKIP() << "needs two OpenCL devices";
  auto m = load_fixture(GetParam());
  const int n = 6;
  const auto base = on_cpu0(m->spec, reg, n);
  // Experts of every layer split between the devices; cpu1 holds no layer, so with zero_copy (and
  // fine-grained SVM) its jobs take their pairs and activations and give their partial sums in
  // shared host memory, with no write or read command. Both devices in one context (partial sums
  // come back by device copy), and each in its own (as a GPU and PoCL: activations and partial
  // sums through host memory, pinned on cpu0 with zero_copy).
  const bool svm = reg.get("cpu1").info().caps.svm_fine_grain;
  DeviceLimits own;
  own.own_context = true;
  const DeviceRegistry apart = DeviceRegistry::discover(nullptr, own);
  ASSERT_NE(apart.get("cpu0").context(), apart.get("cpu1").context());
  for (const auto& [contexts, zero_copy] :
       {std::pair<const DeviceRegistry*, bool>{&reg, true}, {&apart, true}, {&apart, false}}) {
    SCOPED_TRACE(std::string(contexts == &reg ? "one context, " : "a context each, ") +
                 (zero_copy ? "zero_copy" : "write and read commands"));
    EngineOptions opts;
    opts.zero_copy = zero_copy;
    auto engine = make_engine(m->spec, *contexts, experts_in_halves(), opts);
    if (m->spec.hp.n_expert > 0) {
      EXPECT_GT(engine->plan().experts_on(0, 1), 0);
      EXPECT_GT(engine->plan().experts_on(0, 0), 0);
    }
    const auto got = engine_greedy(*engine, kPrompt, n);
    EXPECT_EQ(got.tokens, base.tokens);
    for (size_t i = 0; i < got.logits.size(); ++i)
      EXPECT_LT(rel_err(got.logits[i], base.logits[i]), 1e-3) << i;
    if (m->spec.hp.n_expert > 0) {
      EXPECT_GT(engine->stats().expert_hits[1], 0u);
      if (zero_copy && svm)
        EXPECT_GT(engine->stats().zero_copy_jobs, 0u);
      else
        EXPECT_EQ(engine->stats().zero_copy_jobs, 0u);
    }
  }
}

// Experts split over the devices, with big steps streaming every expert's weights to the layer's
// device (EngineOptions::stream_experts, forced on: auto does not stream onto a CPU): the prompt's
// step streams each MoE layer, decode steps go across devices; a
// second prompt replays the recorded prompt step, streaming again. Same tokens and logits as one
// device, with the writes on the device's copy queue (each after the first running ahead) and in
// order on its own queue (EngineOptions::stream_queue off); gpt-oss (expert biases) never streams.
TEST_P(TwoDeviceTest, StreamedExpertsEqualOneDevice) {
  auto reg = tessera::cli::discover_devices();
  if (reg.devices().size() < 2) GTEST_SKIP() << "needs two OpenCL devices";
  auto m = load_fixture(GetParam());
  if (m->spec.hp.n_expert == 0) GTEST_SKIP() << "no experts";
  const int n = 4;
  const auto base = on_cpu0(m->spec, reg, n);
  size_t moe_layers = 0;
  for (const auto& l : m->spec.layers) moe_layers += l.is_moe() ? 1 : 0;
  const bool streamable = !m->spec.layers[0].router_b;
  for (const bool copy_queue : {true, false}) {
    SCOPED_TRACE(copy_queue ? "copy queue" : "writes on the device's queue");
    EngineOptions opts;
    opts.stream_experts = EngineOptions::StreamExperts::kOn;
    opts.stream_experts_min_tokens = int(kPrompt.size());
    opts.stream_queue = copy_queue;
    auto engine = make_engine(m->spec, reg, experts_in_halves(), opts);
    for (int round = 1; round <= 2; ++round) {
      SCOPED_TRACE(round == 1 ? "recorded prompt step" : "replayed prompt step");
      const auto got = engine_greedy(*engine, kPrompt, n);
      EXPECT_EQ(got.tokens, base.tokens);
      ASSERT_EQ(got.logits.size(), base.logits.size());
      for (size_t i = 0; i < got.logits.size(); ++i)
        EXPECT_LT(rel_err(got.logits[i], base.logits[i]), 1e-3) << i;
      EXPECT_EQ(engine->stats().streamed_layers, streamable ? round * moe_layers : 0u);
      // Layers take the two buffers in turn: each one's write after the first ran ahead.
      EXPECT_EQ(engine->stats().streamed_ahead,
                streamable && copy_queue ? round * (moe_layers - 1) : 0u);
    }
    EXPECT_GT(engine->stats().expert_hits[1], 0u);  // the decode steps ran across the devices
    if (streamable) {
      EXPECT_GT(engine->replayed_steps(), 0u);
    }
  }
}

TEST_P(TwoDeviceTest, LayersOnAlternatingDevicesEqualOneDevice) {
  auto reg = tessera::cli::discover_devices();
  if (reg.devices().size() < 2) GTEST_SKIP() << "needs two OpenCL devices";
  auto m = load_fixture(GetParam());
  auto single = make_engine(m->spec, reg, one_device("cpu0"));
  const auto base = engine_greedy(*single, kPrompt, 4);
  single.reset();
  // A hand-made plan: odd layers (dense part, KV and experts) on cpu1.
  const auto fp = footprint_of(m->spec, 256);
  sched::Config all;
  auto plan = plan_for(reg, all, fp, nullptr);
  ASSERT_GE(plan.devices.size(), 2u);
  for (size_t l = 0; l < plan.layer_device.size(); ++l) {
    const int d = int(l % 2);
    plan.layer_device[l] = d;
    for (auto& e : plan.expert_device[l]) e = d;
  }
  EngineOptions opts;
  opts.max_context = 256;
  OpenClModel engine(m->spec, reg, plan, fp, opts);
  const auto got = engine_greedy(engine, kPrompt, 4);
  EXPECT_EQ(got.tokens, base.tokens);
  for (size_t i = 0; i < got.logits.size(); ++i)
    EXPECT_LT(rel_err(got.logits[i], base.logits[i]), 1e-3) << i;
}

// Both plans above with recorded step programs against enqueueing afresh: the same tokens and
// logits bit for bit. Experts split over the devices make each MoE layer a host-sync point of the
// program (the router's choice goes to the host); layers on alternating devices make device-side
// copies ordered after the sender's queue.
TEST_P(TwoDeviceTest, ReplayEqualsFreshEnqueueingOnTwoDevices) {
  auto reg = DeviceRegistry::discover();
  if (reg.devices().size() < 2) GTEST_SKIP() << "needs two OpenCL devices";
  auto m = load_fixture(GetParam());
  const auto fp = footprint_of(m->spec, 256);
  sched::Config all;
  auto split = plan_for(reg, all, fp, nullptr);
  ASSERT_GE(split.devices.size(), 2u);
  auto alternating = split;
  for (size_t l = 0; l < split.layer_device.size(); ++l) {
    split.layer_device[l] = 0;
    for (size_t e = 0; e < split.expert_device[l].size(); ++e)
      split.expert_device[l][e] = int(e % 2);
    alternating.layer_device[l] = int(l % 2);
    for (auto& e : alternating.expert_device[l]) e = int(l % 2);
  }
  split.attention_device = alternating.attention_device = 0;
  size_t moe_layers = 0;
  for (const auto& l : m->spec.layers) moe_layers += l.is_moe() ? 1 : 0;
  for (const auto* plan : {&split, &alternating}) {
    SCOPED_TRACE(plan == &split ? "experts split" : "layers alternating");
    EngineOptions opts;
    opts.max_context = 256;
    opts.replay = false;
    OpenClModel fresh(m->spec, reg, *plan, fp, opts);
    const auto want = engine_greedy(fresh, kPrompt, 8);
    opts.replay = true;
    OpenClModel replay(m->spec, reg, *plan, fp, opts);
    const auto got = engine_greedy(replay, kPrompt, 8);
    EXPECT_EQ(got.tokens, want.tokens);
    ASSERT_EQ(got.logits.size(), want.logits.size());
    for (size_t i = 0; i < got.logits.size(); ++i) EXPECT_EQ(got.logits[i], want.logits[i]) << i;
    EXPECT_EQ(replay.replayed_steps(), 7u);
    ASSERT_NE(replay.latest_program(), nullptr);
    EXPECT_EQ(replay.latest_program()->host_syncs(), plan == &split ? moe_layers : 0u);
    // The counted launches add up to the recorded step's; experts split over devices run from the
    // host syncs, outside the program.
    const auto& cfp = replay.footprint();
    size_t counted = size_t(cfp.embedding_launches + cfp.output_launches);
    for (const auto& fl : cfp.layers)
      counted += size_t(fl.dense_launches + (plan == &split ? 0 : fl.expert_launches));
    EXPECT_EQ(replay.latest_program()->launches(), counted);
    if (plan == &alternating && m->spec.layers.size() > 1) {
      const auto& dev1 = reg.get(plan->devices[1].id);
      EXPECT_GT(replay.latest_program()->launches_on(dev1), 0u);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Architectures, TwoDeviceTest,
                         ::testing::Values("llama", "mixtral", "qwen3", "qwen3moe", "qwen2moe",
                                           "gpt-oss", "granitehybrid", "qwen3next"));

// Experts lopsided on purpose: most on cpu1 although both devices are equally fast, so moving
// some back lowers the predicted step time and the balancer must act.
sched::Config lopsided_experts() {
  return experts_in_shares(1, 7);
}

TEST(BalancerEngineTest, MovesAreCountedAndOutputUnchanged) {
  auto reg = tessera::cli::discover_devices();
  if (reg.devices().size() < 2) GTEST_SKIP() << "needs two OpenCL devices";
  auto m = load_fixture("qwen3moe", 7);
  auto single = make_engine(m->spec, reg, one_device("cpu0"));
  const auto base = engine_greedy(*single, kPrompt, 24);
  single.reset();
  EngineOptions opts;
  opts.balancer = true;
  auto engine = make_engine(m->spec, reg, lopsided_experts(), opts);
  const auto got = engine_greedy(*engine, kPrompt, 24);
  // Moving experts changes where they run, never what they compute.
  EXPECT_EQ(got.tokens, base.tokens);
  for (size_t i = 0; i < got.logits.size(); ++i)
    EXPECT_LT(rel_err(got.logits[i], base.logits[i]), 1e-3) << i;
  EXPECT_GT(engine->stats().balancer_moves, 0u);
  // Moved experts keep their weights where they were (copies): pairs go to the serving device
  // only, so a device holding a copy must not compute it again (the tokens above would differ).
  size_t copies = 0;
  for (const auto& layer : engine->plan().expert_copies)
    for (uint32_t bits : layer) copies += size_t(std::popcount(bits));
  EXPECT_GT(copies, 0u);
  // Steps replay their recorded programs with the balancer on, and record again after moves.
  EXPECT_GT(engine->replayed_steps(), 0u);
  EXPECT_GT(engine->recorded_steps(), 2u);
}

// Greedy decode through the request engine with the balancer on: while experts sit on cpu1 each
// step has a host round trip and is not chained; once the balancer has brought every expert home
// (cpu0, the attention's device) the steps chain, its counts still coming from them (copies of
// the router's choice into pinned memory: every prompt token, one decode step in
// MoeRuntime::kChoiceSampleSteps), and it moves nothing while a step is in flight. Tokens equal
// the reference's throughout.
TEST(BalancerEngineTest, ChainedStepsOnceEveryExpertIsHome) {
  auto reg = tessera::cli::discover_devices();
  if (reg.devices().size() < 2) GTEST_SKIP() << "needs two OpenCL devices";
  auto m = load_fixture("qwen3moe", 7);
  const int n = 48;
  const auto ref = reference_greedy(m->spec, kPrompt, n).tokens;
  EngineOptions opts;
  opts.balancer = true;
  Engine engine(make_engine(m->spec, reg, lopsided_experts(), opts), EngineConfig{});
  auto generate = [&] {
    std::vector<int32_t> got;
    Request r;
    r.prompt = kPrompt;
    r.max_tokens = n;
    r.on_output = [&got](const RequestOutput& o) {
      if (o.token >= 0) got.push_back(o.token);
    };
    engine.add_request(std::move(r));
    engine.run_until_idle();
    return got;
  };
  EXPECT_EQ(generate(), ref);
  const auto& model = engine.model();
  EXPECT_GT(model.stats().balancer_moves, 0u);
  for (const auto& layer : model.plan().expert_device)
    for (int d : layer) EXPECT_EQ(d, 0);
  EXPECT_GT(model.stats().chained_steps, 0u);

  // Every expert home from the start: the second request's counts come from the copies alone.
  const auto& hp = m->spec.hp;
  auto counts = [&] {
    std::vector<std::vector<uint64_t>> c(hp.n_layer, std::vector<uint64_t>(hp.n_expert));
    for (uint32_t l = 0; l < hp.n_layer; ++l)
      for (uint32_t e = 0; e < hp.n_expert; ++e)
        c[l][e] = model.balancer().selections(int(l), int(e));
    return c;
  };
  const auto before = counts();
  const uint64_t chained = model.stats().chained_steps;
  EXPECT_EQ(generate(), ref);
  EXPECT_GT(model.stats().chained_steps, chained);
  const auto after = counts();
  // The prompt's tokens and one decode step in 8 (about; the sampling counts every step enqueued).
  const uint64_t steps = uint64_t(n) / MoeRuntime::kChoiceSampleSteps;
  const uint64_t lo = kPrompt.size() + steps - 1, hi = kPrompt.size() + steps + 1;
  for (uint32_t l = 0; l < hp.n_layer; ++l) {
    uint64_t total = 0, most = 0;
    for (uint32_t e = 0; e < hp.n_expert; ++e) {
      total += after[l][e] - before[l][e];
      most = std::max(most, after[l][e] - before[l][e]);
    }
    EXPECT_GE(total, lo * hp.n_expert_used) << "layer " << l;
    EXPECT_LE(total, hi * hp.n_expert_used) << "layer " << l;
    // A token chooses an expert at most once: ids that are not the router's (a slot read
    // elsewhere, zeros) would count one expert several times per token.
    EXPECT_LE(most, hi) << "layer " << l;
  }
}

}  // namespace
}  // namespace tessera::engine::test
