// The OpenCL engine against the scalar reference: next-token logits within tolerance and greedy
// tokens, on fixtures of every architecture, batched steps mixing prefill and decode, stories260K
// and the project's own trained model.
#include "engine_test_util.h"

#include <cstdlib>
#include <filesystem>

#include <unistd.h>

#include "host/cli/settings.h"
#include "host/ops/device/matmul.h"
#include "tests/devices/test_util.h"

namespace tessera::engine::test {
namespace {

const std::vector<int32_t> kPrompt{1, 300, 301, 302, 303, 304, 305};

// The fixture of `arch` on the first device against the reference: n greedy steps, logits within
// kRefTol relative and the same tokens.
void expect_matches_reference(const std::string& arch, const EngineOptions& opts, int n) {
  auto m = load_fixture(arch);
  auto reg = tessera::cli::discover_devices();
  // The qwen3next fixture's random recurrences amplify the 8-bit x of CPU matmuls
  // (MatmulVariant::x_q8; prefill on a 2-core Xeon with VNNI: logits 1.2-1.8 relative off the
  // float reference from the second step, other tokens): its matmuls run in float here. The other
  // fixtures check the 8-bit paths end to end, the matrix each kernel.
  if (arch == "qwen3next") reg.programs()->set_program_options("matmul", "-DNO_X_Q8=1");
  sched::Config cfg;
  cfg.select = {sched::DeviceSelector{}};
  cfg.select[0].id = reg.devices().front()->id();
  auto engine = make_engine(m->spec, reg, cfg, opts);
  const auto ref = reference_greedy(m->spec, kPrompt, n);
  const auto got = engine_greedy(*engine, kPrompt, n);
  ASSERT_EQ(got.logits.size(), ref.logits.size());
  for (size_t i = 0; i < ref.logits.size(); ++i)
    EXPECT_LT(rel_err(got.logits[i], ref.logits[i]), kRefTol) << arch << " step " << i;
  EXPECT_EQ(got.tokens, ref.tokens) << arch;
}

class EngineFixtureTest : public ::testing::TestWithParam<std::string> {};

TEST_P(EngineFixtureTest, MatchesReference) {
  expect_matches_reference(GetParam(), {}, 8);
}

INSTANTIATE_TEST_SUITE_P(Architectures, EngineFixtureTest,
                         ::testing::Values("llama", "mixtral", "qwen3", "qwen3moe", "qwen2moe",
                                           "gpt-oss", "granitehybrid", "qwen3next"));

// Every fusion off: the separate launches (q/k/v GEMVs into one row, norm + router GEMV + routing,
// combine + norm, SwiGLU after gate|up) that models with mixed formats or quantized routers take
// must agree too.
class EngineUnfusedTest : public ::testing::TestWithParam<std::string> {};

TEST_P(EngineUnfusedTest, MatchesReference) {
  static_assert(sizeof(EngineOptions::Fusion) == 16 * sizeof(bool),
                "a new fusion: switch it off here");
  EngineOptions opts;
  opts.fuse = {false, false, false, false, false, false, false,
               false, false, false, false, false, false, false};  // not argmax (nor the opt-in)
  opts.flush_per_layer = false;
  expect_matches_reference(GetParam(), opts, 6);
}

INSTANTIATE_TEST_SUITE_P(Architectures, EngineUnfusedTest,
                         ::testing::Values("llama", "qwen3", "qwen3moe", "gpt-oss", "granitehybrid",
                                           "qwen3next"));

// SwiGLU in the gate|up expert launch (CPU devices, where it is not folded into down): the same
// tokens as the reference with it on and off, and a recorded decode step one launch shorter per
// MoE layer with it on (no activation launch).
// A Q4_0 qwen3moe fixture (one format for every matrix: gate and up stack into one weight; the
// mixed-format fixture keeps them apart) run on `device` with a fusion switch off and on: the
// reference's greedy tokens both times; returns the recorded decode step's launches per MoE layer
// saved by the fusion.
double launches_saved_per_moe_layer(const DeviceRegistry& reg, const Device& device,
                                    bool EngineOptions::Fusion::*flag, bool gpu_route = false) {
  model::FixtureOptions fo;
  fo.kind = "qwen3moe";
  fo.weight_type = "Q4_0";
  auto file = gguf::GgufFile::from_memory(model::make_fixture(fo).to_bytes(), "fixture-q4_0");
  auto m = std::make_unique<Loaded>(Loaded{std::move(file), {}});
  m->spec = model::ModelSpec::from_gguf(m->file);
  // Every matrix Q4_0: the planner measures weight streaming in Q4_0.
  EXPECT_EQ(footprint_of(m->spec, 256).weight_type, int(gguf::TensorType::Q4_0));
  sched::Config cfg;
  cfg.select = {sched::DeviceSelector{}};
  cfg.select[0].id = device.id();
  const auto ref = reference_greedy(m->spec, kPrompt, 4);
  size_t launches[2] = {0, 0};
  for (int on = 0; on < 2; ++on) {
    EngineOptions opts;
    // Each fusion alone: the one-launch expert FFN (on by default on CPUs) takes the place of
    // the glu and down_combine launches it needs, so it is off unless it is the one measured.
    // The experts in the output projection's launch need the one-launch FFN and take its place;
    // the next layer's q|k|v in that launch needs both, and its attention there all three.
    using F = EngineOptions::Fusion;
    const bool next_attention = flag == &F::next_attention,
               next_qkv = next_attention || flag == &F::next_qkv,
               route_ffn = next_qkv || flag == &F::route_ffn || flag == &F::route_ffn_gpu;
    if (flag != &F::expert_ffn && !route_ffn) opts.fuse.expert_ffn = false;
    if (!route_ffn) opts.fuse.route_ffn = false;
    if (!next_qkv) opts.fuse.next_qkv = false;
    if (!next_attention) opts.fuse.next_attention = false;
    if (flag != &F::head) opts.fuse.head = false;
    opts.fuse.route_ffn_gpu = gpu_route;
    opts.fuse.*flag = on == 1;
    auto engine = make_engine(m->spec, reg, cfg, opts);
    const auto got = engine_greedy(*engine, kPrompt, 4);
    EXPECT_EQ(got.tokens, ref.tokens) << "fusion " << (on ? "on" : "off");
    if (!engine->latest_program()) {
      ADD_FAILURE() << "no recorded step";
      return 0;
    }
    launches[on] = engine->latest_program()->launches();
  }
  size_t moe_layers = 0;
  for (const auto& l : m->spec.layers) moe_layers += l.is_moe() ? 1 : 0;
  if (moe_layers == 0) ADD_FAILURE() << "the fixture has no MoE layer";
  return (double(launches[0]) - double(launches[1])) / double(std::max<size_t>(1, moe_layers));
}

const Device* first_cpu(const DeviceRegistry& reg) {
  for (const auto& d : reg.devices())
    if (d->info().type == DeviceType::kCpu) return d.get();
  return nullptr;
}

// A CPU device of PoCL's, or null.
const Device* pocl_cpu(const DeviceRegistry& reg) {
  const Device* cpu = first_cpu(reg);
  return cpu && cpu->info().platform_name.find("Portable Computing Language") != std::string::npos
             ? cpu
             : nullptr;
}

// The layers of launches_saved_per_moe_layer's fixture.
double fixture_layers() {
  model::FixtureOptions fo;
  fo.kind = "qwen3moe";
  const auto file = gguf::GgufFile::from_memory(model::make_fixture(fo).to_bytes(), "fixture");
  return double(model::ModelSpec::from_gguf(file).layers.size());
}

TEST(EngineBatchTest, GluInTheGateUpLaunchSavesTheActivationLaunch) {
  auto reg = tessera::cli::discover_devices();
  const Device* cpu = first_cpu(reg);
  if (!cpu) GTEST_SKIP() << "no CPU OpenCL device";
  EXPECT_EQ(launches_saved_per_moe_layer(reg, *cpu, &EngineOptions::Fusion::glu), 1.0);
}

// gate|up, SwiGLU, down and the combine in one launch on CPUs (MatmulOp::run_expert_ffn): the
// reference's tokens with it on and off, the down launch saved (the glu launch runs it all).
TEST(EngineBatchTest, ExpertFfnInOneLaunchSavesTheDownLaunch) {
  auto reg = tessera::cli::discover_devices();
  const Device* cpu = first_cpu(reg);
  if (!cpu) GTEST_SKIP() << "no CPU OpenCL device";
  EXPECT_EQ(launches_saved_per_moe_layer(reg, *cpu, &EngineOptions::Fusion::expert_ffn), 1.0);
}

// The output projection, its routing tail and the layer's experts in one launch on CPUs
// (MatmulOp::run_route_tail with its Ffn, cl_kernels/matmul.cl's matmul_route_ffn): the
// reference's tokens with it on and off, the expert launch saved.
TEST(EngineBatchTest, ExpertsInTheOutputProjectionSaveTheExpertLaunch) {
  auto reg = tessera::cli::discover_devices();
  const Device* cpu = first_cpu(reg);
  if (!cpu) GTEST_SKIP() << "no CPU OpenCL device";
  EXPECT_EQ(launches_saved_per_moe_layer(reg, *cpu, &EngineOptions::Fusion::route_ffn), 1.0);
}

// The next attention layer's q|k|v projection in that launch too (RouteTail::Ffn::next, phase 3
// of matmul_route_ffn): the reference's tokens with it on and off, the q|k|v launch saved in every
// MoE layer but the last (no layer after it).
TEST(EngineBatchTest, NextQkvInTheExpertLaunchSavesTheQkvLaunch) {
  auto reg = tessera::cli::discover_devices();
  const Device* cpu = pocl_cpu(reg);
  if (!cpu) GTEST_SKIP() << "no PoCL CPU device (the experts' join in one launch is for them)";
  const double layers = fixture_layers();
  EXPECT_DOUBLE_EQ(launches_saved_per_moe_layer(reg, *cpu, &EngineOptions::Fusion::next_qkv),
                   (layers - 1) / layers);
}

// The next attention layer's decode attention in that launch as well (RouteTail::Ffn::attention,
// phase 4 of route_attention.cl's matmul_route_ffn): the reference's tokens with it on and off, the
// decode attention launch saved in every MoE layer but the last.
TEST(EngineBatchTest, NextAttentionInTheExpertLaunchSavesTheAttentionLaunch) {
  auto reg = tessera::cli::discover_devices();
  const Device* cpu = pocl_cpu(reg);
  if (!cpu) GTEST_SKIP() << "no PoCL CPU device (the experts' join in one launch is for them)";
  const double layers = fixture_layers();
  EXPECT_DOUBLE_EQ(launches_saved_per_moe_layer(reg, *cpu, &EngineOptions::Fusion::next_attention),
                   (layers - 1) / layers);
}

// The same launch on GPUs (opt-in Fusion::route_ffn_gpu: matmul_route_ffn in their shape, several
// lanes per row), on every GPU whose driver runs the join: the reference's tokens with each on and
// off; the experts' two launches (gate|up, down with the combine) saved per MoE layer, then (with
// it on) the next layer's q|k|v launch in every MoE layer but the last.
TEST(EngineBatchTest, ExpertsInTheOutputProjectionOnGpusSaveBothExpertLaunches) {
  auto reg = tessera::cli::discover_devices();
  const double layers = fixture_layers();
  int gpus = 0;
  for (const auto& d : reg.devices()) {
    if (d->info().type != DeviceType::kGpu || !ops::MatmulOp::runs_joins(d->info())) continue;
    SCOPED_TRACE(d->info().label());
    ++gpus;
    EXPECT_EQ(launches_saved_per_moe_layer(reg, *d, &EngineOptions::Fusion::route_ffn_gpu), 2.0);
    EXPECT_DOUBLE_EQ(launches_saved_per_moe_layer(reg, *d, &EngineOptions::Fusion::next_qkv, true),
                     (layers - 1) / layers);
  }
  if (gpus == 0) GTEST_SKIP() << "no GPU whose driver runs the experts' join";
}

// The output norm in the last layer's combine (Fusion::head), on every device: the reference's
// tokens with it on and off, the norm launch saved once per step.
TEST(EngineBatchTest, OutputNormInTheLastCombineSavesTheNormLaunch) {
  auto reg = tessera::cli::discover_devices();
  const double layers = fixture_layers();
  for (const auto& d : reg.devices()) {
    SCOPED_TRACE(d->info().label());
    EXPECT_DOUBLE_EQ(launches_saved_per_moe_layer(reg, *d, &EngineOptions::Fusion::head),
                     1.0 / layers);
  }
}

// The FFN norm, router and top-k in the attention's output projection launch
// (MatmulOp::run_route_tail), on every device: the reference's tokens with it on and off, the
// routing launch saved.
TEST(EngineBatchTest, RoutingInTheOutputProjectionSavesTheRoutingLaunch) {
  auto reg = tessera::cli::discover_devices();
  for (const auto& d : reg.devices()) {
    SCOPED_TRACE(d->info().label());
    EXPECT_EQ(launches_saved_per_moe_layer(reg, *d, &EngineOptions::Fusion::proj_route), 1.0);
  }
}

// The MoE combine and the next layer's norm in the down launch (MatmulOp::run_experts_combine),
// on every device: the reference's tokens with it on and off, one launch less per MoE layer.
TEST(EngineBatchTest, CombineInTheDownLaunchSavesTheCombineLaunch) {
  auto reg = tessera::cli::discover_devices();
  for (const auto& d : reg.devices()) {
    SCOPED_TRACE(d->info().label());
    EXPECT_EQ(launches_saved_per_moe_layer(reg, *d, &EngineOptions::Fusion::down_combine), 1.0);
  }
}

// q/k norms, RoPE and the KV store inside the decode attention launch (AttentionOp::DecodeFinish),
// on every device: the reference's tokens with it on and off, one launch less per layer.
TEST(EngineBatchTest, FinishInTheDecodeLaunchSavesTheFinishLaunch) {
  auto reg = tessera::cli::discover_devices();
  for (const auto& d : reg.devices()) {
    SCOPED_TRACE(d->info().label());
    EXPECT_EQ(launches_saved_per_moe_layer(reg, *d, &EngineOptions::Fusion::decode_finish), 1.0);
  }
}

TEST(EngineBatchTest, MixedPrefillAndDecodeInOneStepMatchesSeparateRuns) {
  auto m = load_fixture("qwen3moe", 3);
  auto reg = tessera::cli::discover_devices();
  sched::Config cfg;
  cfg.select = {sched::DeviceSelector{}};
  cfg.select[0].id = reg.devices().front()->id();
  auto engine = make_engine(m->spec, reg, cfg);
  auto& kv = engine->kv_cache();
  // Sequence A: prefill 5 tokens alone. Then one step carries A's decode token and B's whole
  // prompt.
  const std::vector<int32_t> a{1, 310, 311, 312, 313}, bprompt{1, 320, 321, 322};
  const auto ref_a = reference_greedy(m->spec, a, 2);
  const auto ref_b = reference_greedy(m->spec, bprompt, 1);
  const auto sa = kv.create_sequence(), sb = kv.create_sequence();
  auto ra = kv.reserve(sa, 5);
  StepBatch s1;
  s1.seqs = {sa};
  s1.tokens = a;
  s1.token_seq.assign(5, 0);
  for (int i = 0; i < 5; ++i) s1.token_pos.push_back(ra.first_pos + i);
  s1.logit_rows = {4};
  auto l1 = engine->forward(s1);
  EXPECT_LT(rel_err(l1, ref_a.logits[0]), kRefTol);
  const int32_t next_a = Sampler::argmax(l1);
  ASSERT_EQ(next_a, ref_a.tokens[0]);
  auto ra2 = kv.reserve(sa, 1);
  auto rb = kv.reserve(sb, 4);
  StepBatch s2;
  s2.seqs = {sa, sb};
  s2.tokens = {next_a};
  s2.token_seq = {0};
  s2.token_pos = {ra2.first_pos};
  for (int i = 0; i < 4; ++i) {
    s2.tokens.push_back(bprompt[size_t(i)]);
    s2.token_seq.push_back(1);
    s2.token_pos.push_back(rb.first_pos + i);
  }
  s2.logit_rows = {0, 4};
  auto l2 = engine->forward(s2);
  const size_t nv = m->spec.hp.n_vocab;
  ASSERT_EQ(l2.size(), 2 * nv);
  EXPECT_LT(rel_err(std::vector<float>(l2.begin(), l2.begin() + long(nv)), ref_a.logits[1]),
            kRefTol);
  EXPECT_LT(rel_err(std::vector<float>(l2.begin() + long(nv), l2.end()), ref_b.logits[0]), kRefTol);
  kv.free_sequence(sa);
  kv.free_sequence(sb);
  EXPECT_EQ(kv.blocks().blocks_used(), 0);
}

TEST(EngineBatchTest, BadBatchesAreErrors) {
  auto m = load_fixture("llama");
  auto reg = tessera::cli::discover_devices();
  auto engine = make_engine(m->spec, reg, sched::Config{});
  StepBatch empty;
  EXPECT_THROW(engine->forward(empty), std::invalid_argument);
  auto seq = engine->kv_cache().create_sequence();
  engine->kv_cache().reserve(seq, 1);
  StepBatch bad;
  bad.seqs = {seq};
  bad.tokens = {int32_t(m->spec.hp.n_vocab) + 5};
  bad.token_seq = {0};
  bad.token_pos = {0};
  EXPECT_THROW(engine->forward(bad), std::invalid_argument);
  bad.tokens = {1};
  bad.logit_rows = {3};
  EXPECT_THROW(engine->forward(bad), std::invalid_argument);
}

TEST(EngineBatchTest, UnknownFusionSwitchIsAnError) {
  // The CLI hands $TESSERA_NO_FUSE to apply_no_fuse; the engine itself reads no environment.
  EngineOptions opts;
  apply_no_fuse("qkv,,flush", opts);
  EXPECT_FALSE(opts.fuse.qkv);
  EXPECT_FALSE(opts.flush_per_layer);
  EXPECT_TRUE(opts.fuse.norm_route && opts.fuse.combine_norm && opts.fuse.swiglu);
  try {
    apply_no_fuse("qkv,no_such_fusion", opts);
    ADD_FAILURE() << "an unknown name in TESSERA_NO_FUSE was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("no_such_fusion"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("known: qkv, norm_route"), std::string::npos) << e.what();
  }
  // $TESSERA_FUSE (apply_fuse) switches on the opt-in ones.
  EXPECT_FALSE(opts.fuse.route_ffn_gpu);
  apply_fuse("route_ffn_gpu", opts);
  EXPECT_TRUE(opts.fuse.route_ffn_gpu);
  EXPECT_THROW(apply_fuse("qkv", opts), std::invalid_argument);
}

// Compressed KV formats from the config (K and V separately, a per-layer override): the cache's
// layouts follow them, the planner's footprint counts their bytes, and the prefill's logits stay
// close to the f16 cache's (the K/V of the prompt quantized to q8_0 / q4_0 blocks).
// plan_for keeps each device's measured weight streaming rate in the probe cache (weight_rate_key:
// format, row length, matrix size, the matmul source's hash) and plans with the kept figure
// afterwards: a rate stored under the key is the plan's, whatever the kernel would measure. A
// decode launch price kept there (launch_price_key) is likewise the plan's launch price.
TEST(EngineBatchTest, WeightStreamingRateIsKeptInTheProbeCache) {
  auto reg = DeviceRegistry::discover();
  const Device& d = *reg.devices().front();
  const auto dir =
      std::filesystem::temp_directory_path() / ("tessera-rates-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  ProbeCache cache(dir);
  sched::Config cfg;
  cfg.select = {sched::DeviceSelector{}};
  cfg.select[0].id = d.id();
  model::FixtureOptions fo;
  fo.kind = "qwen3moe";
  fo.weight_type = "Q8_0";
  auto file = gguf::GgufFile::from_memory(model::make_fixture(fo).to_bytes(), "fixture-q8_0");
  const auto spec = model::ModelSpec::from_gguf(file);
  auto fp = footprint_of(spec, 256);
  const std::string key = weight_rate_key(d, fp);
  EXPECT_NE(key.find("Q8_0"), std::string::npos) << key;
  EXPECT_NE(key.find("matmul "), std::string::npos) << key;
  EXPECT_FALSE(cache.load_rate(d.info(), key).has_value());
  const auto measured = plan_for(reg, cfg, fp, &cache);
  ASSERT_EQ(measured.devices.size(), 1u);
  ASSERT_TRUE(cache.load_rate(d.info(), key).has_value());  // measured once, kept
  EXPECT_DOUBLE_EQ(*cache.load_rate(d.info(), key), measured.devices[0].weight_gbps);
  // Another row length is another key: a figure stored there is what the plan takes.
  fp.n_embd += 32;
  const std::string other = weight_rate_key(d, fp);
  EXPECT_NE(other, key);
  cache.store_rate(d.info(), other, 1.25);
  EXPECT_DOUBLE_EQ(plan_for(reg, cfg, fp, &cache).devices[0].weight_gbps, 1.25);
  // A decode launch price the engine measured for the model (launch_price_key) is the plan's
  // launch price; without one the plan keeps the launch probe's.
  const auto probed = plan_for(reg, cfg, fp, &cache).devices[0];
  EXPECT_DOUBLE_EQ(probed.launch_us, probed.probe_launch_us);
  const std::string price = launch_price_key(d, fp);
  EXPECT_NE(price.find("kernels "), std::string::npos) << price;
  cache.store_launch_us(d.info(), price, 123.5);
  const auto priced = plan_for(reg, cfg, fp, &cache).devices[0];
  EXPECT_DOUBLE_EQ(priced.launch_us, 123.5);
  EXPECT_DOUBLE_EQ(priced.probe_launch_us, probed.probe_launch_us);
  std::filesystem::remove_all(dir);
}

// A launch price (and the launch counts kept beside it) belongs to one build of the kernels and
// one set of engine switches: extra build options ($TESSERA_MATMUL_OPTIONS) and switches off or
// on ($TESSERA_NO_FUSE, $TESSERA_FUSE) give other keys, so a price measured under them is not the
// default engine's; the defaults keep the key as it was.
TEST(EngineBatchTest, LaunchPricesAreKeptPerBuildOptionsAndSwitches) {
  auto reg = DeviceRegistry::discover();
  const Device& d = *reg.devices().front();
  model::FixtureOptions fo;
  fo.kind = "qwen3moe";
  auto file = gguf::GgufFile::from_memory(model::make_fixture(fo).to_bytes(), "fixture");
  const auto fp = footprint_of(model::ModelSpec::from_gguf(file), 256);
  EngineOptions defaults;
  EXPECT_EQ(switches_key(defaults), "");
  const std::string base = launch_price_key(d, fp, switches_key(defaults));
  EXPECT_EQ(base, launch_price_key(d, fp));
  EXPECT_EQ(base.find("|switches"), std::string::npos) << base;
  EXPECT_EQ(base.find("|options"), std::string::npos) << base;
  EngineOptions off;
  apply_no_fuse("glu,pipeline", off);
  EXPECT_EQ(switches_key(off), "no_fuse=glu,pipeline");
  EngineOptions on;
  apply_fuse("route_ffn_gpu", on);
  apply_no_fuse("next_attention", on);
  EXPECT_EQ(switches_key(on), "no_fuse=next_attention;fuse=route_ffn_gpu");
  const std::string k_off = launch_price_key(d, fp, switches_key(off));
  const std::string k_on = launch_price_key(d, fp, switches_key(on));
  EXPECT_NE(k_off, base);
  EXPECT_NE(k_on, base);
  EXPECT_NE(k_on, k_off);
  const std::string rate = weight_rate_key(d, fp);
  EXPECT_EQ(reg.programs()->program_options_key(), "");
  reg.programs()->set_program_options("matmul", "-DNO_X_Q8=1");
  EXPECT_EQ(reg.programs()->program_options_key(), "matmul=-DNO_X_Q8=1");
  const std::string built = launch_price_key(d, fp);
  EXPECT_NE(built, base);
  EXPECT_NE(built.find("|options "), std::string::npos) << built;
  EXPECT_NE(weight_rate_key(d, fp), rate);
  // Where a price is kept under the switched key, the default engine's plan does not take it.
  tessera::test::TempDir dir;
  ProbeCache cache(dir.path());
  sched::Config cfg;
  cfg.select = {sched::DeviceSelector{}};
  cfg.select[0].id = d.id();
  cache.store_launch_us(d.info(), launch_price_key(d, fp, switches_key(off)), 321.5);
  EXPECT_DOUBLE_EQ(plan_for(reg, cfg, fp, &cache, switches_key(off)).devices[0].launch_us, 321.5);
  const auto plain = plan_for(reg, cfg, fp, &cache).devices[0];
  EXPECT_DOUBLE_EQ(plain.launch_us, plain.probe_launch_us);
}

TEST(EngineBatchTest, CompressedKvFormatsFromTheConfig) {
  auto m = load_fixture("qwen3");  // head size 32: one block per head
  auto reg = tessera::cli::discover_devices();
  sched::Config cfg;
  cfg.select = {sched::DeviceSelector{}};
  cfg.select[0].id = reg.devices().front()->id();
  auto f16 = make_engine(m->spec, reg, cfg);
  const auto base = engine_greedy(*f16, kPrompt, 0);
  sched::apply_override(cfg, "kv_cache.k_format=q8_0");
  sched::apply_override(cfg, "kv_cache.v_format=q4_0");
  sched::apply_override(cfg, "kv_cache.layers.0=f16");
  const KvLayerFormats formats = kv_formats_of(cfg, int(m->spec.layers.size()));
  EngineOptions opts;
  opts.kv_formats = formats;
  auto q = make_engine(m->spec, reg, cfg, opts);
  const auto& cache = q->kv_cache();
  EXPECT_EQ(cache.layout(0, kv::KvPart::kK).format, kv::KvFormat::kF16);
  EXPECT_EQ(cache.layout(0, kv::KvPart::kV).format, kv::KvFormat::kF16);
  EXPECT_EQ(cache.layout(1, kv::KvPart::kK).format, kv::KvFormat::kQ8_0);
  EXPECT_EQ(cache.layout(1, kv::KvPart::kV).format, kv::KvFormat::kQ4_0);
  const auto& hp = m->spec.hp;
  const uint64_t heads = hp.n_head_kv;
  EXPECT_EQ(
      footprint_of(m->spec, 256, formats).kv_bytes_per_token,
      heads * (2 * 64 + 34 + 18));  // layer 0 f16 K and V (32 values each), layer 1 q8_0 K + q4_0 V
  EXPECT_EQ(footprint_of(m->spec, 256).kv_bytes_per_token, heads * 2 * 2 * 64);
  // The format the planner measures weight streaming in: the type holding most matrix bytes (the
  // mixed fixture: F16, its output head and attention outputs).
  EXPECT_EQ(footprint_of(m->spec, 256).weight_type, int(gguf::TensorType::F16));
  const auto got = engine_greedy(*q, kPrompt, 0);
  ASSERT_EQ(got.logits.size(), 1u);
  EXPECT_LT(rel_err(got.logits[0], base.logits[0]), 5e-2);
  EXPECT_GT(rel_err(got.logits[0], base.logits[0]), 0.0);  // the formats did change the cache
}

TEST(EngineBatchTest, KvFormatConfigErrorsNameTheKey) {
  auto m = load_fixture("qwen3");
  const int n_layer = int(m->spec.layers.size());
  auto error_of = [&](const std::vector<std::string>& sets) {
    sched::Config cfg;
    for (const auto& s : sets) sched::apply_override(cfg, s);
    try {
      kv_formats_of(cfg, n_layer);
    } catch (const sched::ConfigError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error_of({"kv_cache.layers.0-9=q8_0"}).find("kv_cache.layers.0-9"), std::string::npos);
  EXPECT_NE(error_of({"kv_cache.layers.0-1=q8_0", "kv_cache.layers.1=q4_0"}).find("also in"),
            std::string::npos);
  EXPECT_EQ(error_of({"kv_cache.layers.all.k_format=q4_0"}), "");
  // Prod formats are key-only: asking for them on V names the key and the reason.
  std::string e = error_of({"kv_cache.format=turbo3p"});
  EXPECT_NE(e.find("kv_cache.format"), std::string::npos) << e;
  EXPECT_NE(e.find("key-only"), std::string::npos) << e;
  e = error_of({"kv_cache.v_format=turbo4p"});
  EXPECT_NE(e.find("kv_cache.v_format"), std::string::npos) << e;
  e = error_of({"kv_cache.layers.1.v_format=turbo3p"});
  EXPECT_NE(e.find("kv_cache.layers.1"), std::string::npos) << e;
  EXPECT_EQ(error_of({"kv_cache.k_format=turbo3p", "kv_cache.v_format=turbo3"}), "");
}

// TurboQuant from the config keeps q8_0 in the first and last layers (f16 where q8_0 cannot store
// the head size) unless a layer range names them; the engine runs on the turbo codes and its
// prefill logits stay near the f16 cache's.
TEST(EngineBatchTest, TurboKvFormatsKeepTheBoundaryLayers) {
  auto m = load_fixture("qwen3");  // head size 32, 2 layers
  const int n_layer = int(m->spec.layers.size());
  ASSERT_EQ(n_layer, 2);
  sched::Config cfg;
  sched::apply_override(cfg, "kv_cache.format=turbo3");
  KvLayerFormats f = kv_formats_of(cfg, n_layer, 32);
  EXPECT_EQ(f.k, std::vector<kv::KvFormat>(2, kv::KvFormat::kQ8_0));
  EXPECT_EQ(f.v, std::vector<kv::KvFormat>(2, kv::KvFormat::kQ8_0));
  EXPECT_EQ(kv_formats_of(cfg, n_layer, 16).k[0], kv::KvFormat::kF16);  // q8_0 needs 32 | d
  sched::apply_override(cfg, "kv_cache.layers.1=turbo3");
  sched::apply_override(cfg, "kv_cache.k_format=q8_0");
  f = kv_formats_of(cfg, n_layer, 32);
  EXPECT_EQ(f.k, std::vector<kv::KvFormat>({kv::KvFormat::kQ8_0, kv::KvFormat::kTurbo3}));
  EXPECT_EQ(f.v, std::vector<kv::KvFormat>({kv::KvFormat::kQ8_0, kv::KvFormat::kTurbo3}));

  auto reg = tessera::cli::discover_devices();
  sched::Config base_cfg;
  base_cfg.select = {sched::DeviceSelector{}};
  base_cfg.select[0].id = reg.devices().front()->id();
  auto f16 = make_engine(m->spec, reg, base_cfg);
  const auto base = engine_greedy(*f16, kPrompt, 0);
  sched::Config tcfg = base_cfg;
  sched::apply_override(tcfg, "kv_cache.format=turbo4");
  sched::apply_override(tcfg, "kv_cache.layers.all=turbo4");
  EngineOptions opts;
  opts.kv_formats = kv_formats_of(tcfg, n_layer, 32);
  auto t = make_engine(m->spec, reg, tcfg, opts);
  EXPECT_EQ(t->kv_cache().layout(0, kv::KvPart::kK).format, kv::KvFormat::kTurbo4);
  EXPECT_EQ(t->kv_cache().layout(1, kv::KvPart::kV).format, kv::KvFormat::kTurbo4);
  EXPECT_EQ(footprint_of(m->spec, 256, opts.kv_formats).kv_bytes_per_token,
            uint64_t(m->spec.hp.n_head_kv) * 2 * 2 * (2 + 16));  // 2 layers, K and V, 18 bytes
  const auto got = engine_greedy(*t, kPrompt, 0);
  ASSERT_EQ(got.logits.size(), 1u);
  EXPECT_LT(rel_err(got.logits[0], base.logits[0]), 0.2);
  EXPECT_GT(rel_err(got.logits[0], base.logits[0]), 0.0);

  // Prod keys (turbo4p: 3-bit mse + QJL sketch) with turbo4 values in every layer.
  sched::Config pcfg = base_cfg;
  sched::apply_override(pcfg, "kv_cache.k_format=turbo4p");
  sched::apply_override(pcfg, "kv_cache.v_format=turbo4");
  sched::apply_override(pcfg, "kv_cache.layers.all.k_format=turbo4p");
  sched::apply_override(pcfg, "kv_cache.layers.all.v_format=turbo4");
  EngineOptions popts;
  popts.kv_formats = kv_formats_of(pcfg, n_layer, 32);
  auto p = make_engine(m->spec, reg, pcfg, popts);
  EXPECT_EQ(p->kv_cache().layout(1, kv::KvPart::kK).format, kv::KvFormat::kTurbo4p);
  EXPECT_EQ(footprint_of(m->spec, 256, popts.kv_formats).kv_bytes_per_token,
            uint64_t(m->spec.hp.n_head_kv) * 2 * ((2 + 12 + 4 + 2) + (2 + 16)));
  const auto pgot = engine_greedy(*p, kPrompt, 0);
  ASSERT_EQ(pgot.logits.size(), 1u);
  EXPECT_LT(rel_err(pgot.logits[0], base.logits[0]), 0.2);
  EXPECT_GT(rel_err(pgot.logits[0], base.logits[0]), 0.0);
}

std::filesystem::path models_dir() {
  if (const char* env = std::getenv("TESSERA_MODELS_DIR")) return env;
  return std::filesystem::path(TESSERA_SOURCE_DIR) / ".." / "shared" / "models";
}

TEST(EngineRealModelTest, Stories260KGreedyMatchesLlamaCpp) {
  const auto path = models_dir() / "stories260K.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent";
  auto file = gguf::GgufFile::open(path.string());
  const auto spec = model::ModelSpec::from_gguf(file);
  auto reg = tessera::cli::discover_devices();
  auto engine = make_engine(spec, reg, sched::Config{});
  const std::vector<int32_t> prompt{1, 403, 407, 261, 378};
  // llama.cpp's greedy continuation of "Once upon a time" (SOURCES.md) ...
  const std::vector<int32_t> llama_cpp{432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426,
                                       338, 401, 396, 267, 337, 410, 408, 419, 292, 411};
  const auto got = engine_greedy(*engine, prompt, 48);
  EXPECT_EQ(std::vector<int32_t>(got.tokens.begin(), got.tokens.begin() + long(llama_cpp.size())),
            llama_cpp);
  // ... and the whole 48 equal the reference path's.
  EXPECT_EQ(got.tokens, reference_greedy(spec, prompt, 48).tokens);
}

TEST(EngineRealModelTest, ProjectModelMatchesReference) {
  const auto path = std::filesystem::path(TESSERA_SOURCE_DIR) / "models" / "tessera-kjv-moe" /
                    "tessera-kjv-moe-q8_0.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent";
  auto file = gguf::GgufFile::open(path.string());
  const auto spec = model::ModelSpec::from_gguf(file);
  auto reg = tessera::cli::discover_devices();
  auto engine = make_engine(spec, reg, sched::Config{});
  const std::vector<int32_t> prompt{4094, 686, 263, 2120};
  const auto ref = reference_greedy(spec, prompt, 16);
  const auto got = engine_greedy(*engine, prompt, 16);
  EXPECT_EQ(got.tokens, ref.tokens);
  EXPECT_LT(rel_err(got.logits[0], ref.logits[0]), kRefTol);
}

}  // namespace
}  // namespace tessera::engine::test
