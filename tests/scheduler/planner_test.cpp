// The planner: placement follows bandwidth, shares, pins and cpu_moe_layers; budgets are never
// exceeded; an impossible plan says how much memory is missing where.
#include <gtest/gtest.h>

#include <limits>
#include <numeric>

#include "scheduler/planner.h"

namespace tessera::sched {
namespace {

ModelFootprint moe_model(int layers = 16, int experts = 32) {
  ModelFootprint m;
  for (int l = 0; l < layers; ++l) m.layers.push_back({8u << 20, 1u << 20, experts, 10});
  m.embedding_bytes = 16u << 20;
  m.output_bytes = 16u << 20;
  m.n_expert_used = 4;
  m.n_embd = 1024;
  m.kv_bytes_per_token = 64 * 1024;
  m.context_tokens = 1024;
  return m;
}

std::vector<DeviceCost> gpu_cpu(uint64_t gpu_budget = 8ull << 30,
                                uint64_t cpu_budget = 8ull << 30) {
  DeviceCost gpu{"gpu0", DeviceType::kGpu, 3000, 30000, 8, 20, 20, 80ull << 30, gpu_budget};
  DeviceCost cpu{"cpu0", DeviceType::kCpu, 80, 1000, 10, 10, 10, 64ull << 30, cpu_budget};
  return {gpu, cpu};
}

// Auto: attention on the fastest device; each layer's experts spread by bandwidth or kept whole on
// the layer's device, whichever the cost model predicts faster.
TEST(PlannerTest, AutoPutsAttentionOnFastestAndPicksTheFasterExpertPlacement) {
  auto m = moe_model();
  auto plan = make_plan(m, gpu_cpu(), Config{});
  EXPECT_EQ(plan.devices[size_t(plan.attention_device)].id, "gpu0");
  // 3000:80 bandwidth would give the CPU one expert per layer, and every token of every layer a
  // host round trip: all 32 stay on the GPU, predicted faster than the spread.
  Config spread;
  spread.experts_mode = "shares";
  spread.expert_shares = {{"gpu0", 3000}, {"cpu0", 80}};
  const auto spread_plan = make_plan(m, gpu_cpu(), spread);
  EXPECT_EQ(spread_plan.experts_on(0, 1), 1);
  EXPECT_LT(plan.decode_step_seconds, spread_plan.decode_step_seconds);
  for (size_t l = 0; l < m.layers.size(); ++l) {
    EXPECT_EQ(plan.layer_device[l], 0);
    EXPECT_EQ(plan.experts_on(int(l), 0), 32);
  }
  // Two GPUs of the same bandwidth whose round trips cost little: spreading halves each layer's
  // expert streaming, so auto spreads.
  DeviceCost a{"gpu0", DeviceType::kGpu, 10, 1000, 0, 100, 100, 64ull << 30, 8ull << 30, 0};
  DeviceCost b = a;
  b.id = "gpu1";
  const auto even = make_plan(m, {a, b}, Config{});
  for (size_t l = 0; l < m.layers.size(); ++l) EXPECT_EQ(even.experts_on(int(l), 1), 16);
  // Two CPU devices are one processor (two PoCL devices): their expert times add up, spreading
  // gains nothing, and auto keeps the experts whole.
  a.type = b.type = DeviceType::kCpu;
  a.id = "cpu0";
  b.id = "cpu1";
  const auto one_cpu = make_plan(m, {a, b}, Config{});
  for (size_t l = 0; l < m.layers.size(); ++l) EXPECT_EQ(one_cpu.experts_on(int(l), 1), 0);
  Config halves;
  halves.experts_mode = "shares";
  halves.expert_shares = {{"cpu0", 1}, {"cpu1", 1}};
  const auto split = make_plan(m, {a, b}, halves);
  EXPECT_GT(split.decode_step_seconds, one_cpu.decode_step_seconds);
  EXPECT_GT(plan.decode_step_seconds, 0);
  const auto text = plan.to_text(m);
  EXPECT_NE(text.find("predicted decode step"), std::string::npos);
  EXPECT_NE(plan.to_json().find("\"attention_device\":\"gpu0\""), std::string::npos);
}

TEST(PlannerTest, SharesAndPinsAndCpuMoeLayers) {
  auto m = moe_model(4, 8);
  Config shares;
  shares.experts_mode = "shares";
  shares.expert_shares = {{"gpu0", 1}, {"cpu0", 1}};
  auto p = make_plan(m, gpu_cpu(), shares);
  for (int l = 0; l < 4; ++l) EXPECT_EQ(p.experts_on(l, 1), 4);

  Config pins;
  pins.experts_mode = "pins";
  pins.expert_pins = {{"cpu0", 1, 2, 0, 5}};
  p = make_plan(m, gpu_cpu(), pins);
  EXPECT_EQ(p.experts_on(0, 1), 0);
  EXPECT_GE(p.experts_on(1, 1), 6);
  EXPECT_EQ(p.expert_device[1][5], 1);

  Config half;
  half.cpu_moe_layers = 2;
  p = make_plan(m, gpu_cpu(), half);
  EXPECT_EQ(p.experts_on(0, 1), 8);
  EXPECT_EQ(p.experts_on(1, 1), 8);
  EXPECT_EQ(p.experts_on(2, 1), 0);
  EXPECT_EQ(p.experts_on(3, 0), 8);
}

// A GPU whose layers have experts on the CPU keeps room for streamed experts (the largest layer's
// experts, twice when two or more layers stream: big steps write them into two buffers in turn),
// taken off its budget for weights; not when streaming is off, not when every expert is on the
// GPU, not on a CPU.
TEST(PlannerTest, RoomForStreamedExperts) {
  auto m = moe_model(4, 8);  // 8 experts of 1 MiB per layer
  Config half;
  half.cpu_moe_layers = 2;
  const uint64_t budget = 256ull << 20;
  auto p = make_plan(m, gpu_cpu(budget), half);
  ASSERT_EQ(p.stream_bytes.size(), 2u);
  EXPECT_EQ(p.stream_bytes[0], 16ull << 20);
  EXPECT_EQ(p.stream_bytes[1], 0u);
  EXPECT_EQ(p.devices[0].budget_bytes, budget - (16ull << 20));
  EXPECT_LE(p.weight_bytes[0] + p.kv_bytes[0] + p.stream_bytes[0], budget);
  EXPECT_NE(p.to_text(m).find("streamed experts"), std::string::npos);
  EXPECT_NE(p.to_json().find("\"stream_bytes\":16777216"), std::string::npos);
  // One layer's experts on the CPU: one buffer.
  Config one = half;
  one.cpu_moe_layers = 1;
  EXPECT_EQ(make_plan(m, gpu_cpu(budget), one).stream_bytes[0], 8ull << 20);
  // Tight: the room pushes another layer's experts off the GPU.
  // Head (embeddings, output, KV: 96 MiB), dense layers (32 MiB) and layers 2-3's experts
  // (16 MiB) just fit; the room pushes experts of layer 3 off the GPU.
  const uint64_t tight = (144ull << 20) + (1ull << 20);
  auto roomless = half;
  roomless.stream_experts = "off";
  const auto off = make_plan(m, gpu_cpu(tight), roomless);
  const auto on = make_plan(m, gpu_cpu(tight), half);
  EXPECT_EQ(off.stream_bytes[0], 0u);
  int gpu_off = 0, gpu_on = 0;
  for (int l = 0; l < 4; ++l) {
    gpu_off += off.experts_on(l, 0);
    gpu_on += on.experts_on(l, 0);
  }
  EXPECT_LT(gpu_on, gpu_off);
  EXPECT_LE(on.weight_bytes[0] + on.kv_bytes[0] + on.stream_bytes[0], tight);
  // Every expert on the GPU: nothing streams.
  EXPECT_EQ(make_plan(m, gpu_cpu(), Config{}).stream_bytes[0], 0u);
  // Attention on the CPU, experts on the GPU: auto does not stream onto a CPU.
  Config cpu_home;
  cpu_home.attention = "cpu0";
  cpu_home.experts_mode = "shares";
  cpu_home.expert_shares = {{"gpu0", 1}, {"cpu0", 1}};
  const auto c = make_plan(m, gpu_cpu(), cpu_home);
  EXPECT_EQ(c.stream_bytes[1], 0u);
  EXPECT_EQ(c.stream_bytes[0], 0u);
}

TEST(PlannerTest, NeverExceedsBudgets) {
  auto m = moe_model();
  // GPU budget too small for all experts: the rest spills to the CPU, within its budget.
  const uint64_t gpu_budget = 300ull << 20;
  auto plan = make_plan(m, gpu_cpu(gpu_budget), Config{});
  for (size_t d = 0; d < plan.devices.size(); ++d)
    EXPECT_LE(plan.weight_bytes[d] + plan.kv_bytes[d], plan.devices[d].budget_bytes)
        << plan.devices[d].id;
  int on_cpu = 0, split_layers = 0;
  for (size_t l = 0; l < m.layers.size(); ++l) {
    on_cpu += plan.experts_on(int(l), 1);
    split_layers += plan.experts_on(int(l), 0) > 0 && plan.experts_on(int(l), 1) > 0;
  }
  EXPECT_GT(on_cpu, 16);
  // Whole layers spill (the last first): at most one layer has experts on both devices.
  EXPECT_LE(split_layers, 1);
  EXPECT_EQ(plan.experts_on(int(m.layers.size()) - 1, 1), 32);
}

TEST(PlannerTest, ImpossiblePlanSaysWhatIsMissingWhere) {
  auto m = moe_model();
  try {
    make_plan(m, gpu_cpu(300ull << 20, 100ull << 20), Config{});
    FAIL();
  } catch (const PlanError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("missing"), std::string::npos) << msg;
    EXPECT_TRUE(msg.find("gpu0") != std::string::npos || msg.find("cpu0") != std::string::npos)
        << msg;
  }
  Config bad;
  bad.attention = "acc0";
  EXPECT_THROW(make_plan(m, gpu_cpu(), bad), ConfigError);
}

TEST(PlannerTest, PredictionFollowsTheCostModel) {
  DeviceCost d{"x", DeviceType::kCpu, 10, 100, 5, 1, 1, 1ull << 30, 1ull << 30};
  EXPECT_NEAR(op_seconds(d, 1e9, 0, 0), 0.1, 1e-12);   // bandwidth bound
  EXPECT_NEAR(op_seconds(d, 0, 1e9, 0), 0.01, 1e-12);  // compute bound
  EXPECT_NEAR(op_seconds(d, 0, 0, 2), 10e-6, 1e-12);   // launch bound
  // A skewed load on the CPU's experts makes the predicted step slower than uniform routing.
  auto m = moe_model(2, 8);
  Config shares;
  shares.experts_mode = "shares";
  shares.expert_shares = {{"gpu0", 1}, {"cpu0", 1}};
  auto plan = make_plan(m, gpu_cpu(), shares);
  const double uniform = plan.decode_step_seconds;
  std::vector<std::vector<double>> load(2, std::vector<double>(8, 0.0));
  for (auto& l : load)
    for (int e = 0; e < 8; ++e) l[size_t(e)] = plan.expert_device[0][size_t(e)] == 1 ? 1.0 : 0.0;
  predict(plan, m, &load);
  EXPECT_GT(plan.decode_step_seconds, uniform);
}

// A measured weight streaming rate (DeviceCost::weight_gbps) times the weight bytes; other bytes
// (recurrent state) stay at the read probe's rate. It also weighs the expert shares.
TEST(PlannerTest, MeasuredWeightRateSetsTheWeightsTime) {
  DeviceCost d{"x", DeviceType::kCpu, 10, 100, 5, 1, 1, 1ull << 30, 1ull << 30};
  EXPECT_DOUBLE_EQ(weight_rate(d), 10.0);
  d.weight_gbps = 2;
  EXPECT_DOUBLE_EQ(weight_rate(d), 2.0);
  EXPECT_NEAR(weight_op_seconds(d, 1e9, 0, 0), 0.5, 1e-12);
  EXPECT_NEAR(op_seconds(d, 1e9, 0, 0), 0.1, 1e-12);
  auto m = moe_model(2, 8);
  auto devs = gpu_cpu();
  Config one_on_cpu;
  one_on_cpu.cpu_moe_layers = 1;
  const Plan read_only = make_plan(m, devs, one_on_cpu);
  devs[1].weight_gbps = devs[1].read_gbps / 4;  // the CPU's kernel streams a quarter of it
  const Plan measured = make_plan(m, devs, one_on_cpu);
  ASSERT_EQ(measured.experts_on(0, 1), 8);
  // The CPU's share: the expected experts' bytes at a quarter of the rate, its launches as before.
  const double bytes = double(m.n_expert_used) * double(m.layers[0].expert_bytes);
  const double launches = m.layers[0].expert_launches * devs[1].launch_us * 1e-6;
  EXPECT_NEAR(read_only.decode_seconds[1], bytes / (devs[1].read_gbps * 1e9) + launches, 1e-9);
  EXPECT_NEAR(measured.decode_seconds[1], bytes / (devs[1].weight_gbps * 1e9) + launches, 1e-9);
  DeviceCost bad = devs[1];
  bad.weight_gbps = -1;
  EXPECT_THROW(make_plan(m, {devs[0], bad}, Config{}), PlanError);
}

// The launch price from a profiled decode step (calibrated_launch_us): what the kernels took
// beyond streaming their bytes, spread over the launches, and never below the probe's pipelined
// launch. streaming_seconds is the prediction's per-device time with the launches left out.
TEST(PlannerTest, LaunchPriceFromAProfiledStep) {
  // 84 launches took 1.02 ms, 0.09 ms of it streaming weights: 11.07 us each, above the probe's 7.
  EXPECT_NEAR(calibrated_launch_us(7.0, 1.02e-3, 84, 0.09e-3), 0.93e3 / 84, 1e-9);
  // Kernels bound by their bytes (a CPU's GEMVs): the probe's price stays.
  EXPECT_DOUBLE_EQ(calibrated_launch_us(58.0, 4.16e-3, 68, 4.0e-3), 58.0);
  EXPECT_DOUBLE_EQ(calibrated_launch_us(58.0, 1e-3, 68, 2e-3), 58.0);  // streaming over busy
  EXPECT_DOUBLE_EQ(calibrated_launch_us(7.0, 1e-3, 0, 0), 0.0);        // no launches
  EXPECT_DOUBLE_EQ(calibrated_launch_us(7.0, std::numeric_limits<double>::quiet_NaN(), 4, 0), 0.0);

  auto m = moe_model(2, 8);
  Config one_on_cpu;
  one_on_cpu.cpu_moe_layers = 1;
  Plan plan = make_plan(m, gpu_cpu(), one_on_cpu);
  const auto streaming = streaming_seconds(plan, m);
  ASSERT_EQ(streaming.size(), 2u);
  // The CPU streams layer 0's expected experts, nothing else.
  const double bytes = double(m.n_expert_used) * double(m.layers[0].expert_bytes);
  EXPECT_NEAR(streaming[1], bytes / (plan.devices[1].read_gbps * 1e9), 1e-12);
  // Without launches each device's predicted time is its streaming; the plan is left as it was.
  const double step = plan.decode_step_seconds;
  EXPECT_LT(streaming[0], plan.decode_seconds[0]);
  EXPECT_DOUBLE_EQ(plan.decode_step_seconds, step);
  // A dearer launch on the GPU lengthens the predicted step by its launches' count.
  Plan dearer = plan;
  dearer.devices[0].launch_us += 5;
  predict(dearer, m);
  int gpu_launches = m.embedding_launches + m.output_launches;
  for (size_t l = 0; l < m.layers.size(); ++l)
    gpu_launches += m.layers[l].dense_launches + (l == 0 ? 0 : m.layers[l].expert_launches);
  EXPECT_NEAR(dearer.decode_step_seconds - step, gpu_launches * 5e-6, 1e-9);
}

// Hard input (issue 12): figures near the double range must not overflow the apportioning (it
// crashed with SIGSEGV reading past its array); unusable figures are named errors.
TEST(PlannerTest, HugeSharesAndProbeFiguresApportionAllExperts) {
  auto m = moe_model(2, 8);
  Config shares;
  shares.experts_mode = "shares";
  shares.expert_shares = {{"gpu0", 1e308}, {"cpu0", 1e308}};
  auto p = make_plan(m, gpu_cpu(), shares);
  for (int l = 0; l < 2; ++l) {
    EXPECT_EQ(p.experts_on(l, 0), 4);
    EXPECT_EQ(p.experts_on(l, 1), 4);
  }
  shares.expert_shares = {{"gpu0", 1e308}, {"cpu0", 1}};
  p = make_plan(m, gpu_cpu(), shares);
  EXPECT_EQ(p.experts_on(0, 0), 8);

  auto devs = gpu_cpu();
  devs[0].read_gbps = 1e308;  // a cached probe figure no device has
  devs[1].read_gbps = 1e308;
  p = make_plan(m, devs, Config{});
  EXPECT_EQ(p.experts_on(0, 0) + p.experts_on(0, 1), 8);
}

TEST(PlannerTest, UnusableFiguresAndOutOfRangeConfigAreNamedErrors) {
  auto m = moe_model(2, 8);
  for (double bad : {0.0, -1.0, std::numeric_limits<double>::infinity(),
                     std::numeric_limits<double>::quiet_NaN()}) {
    auto devs = gpu_cpu();
    devs[1].read_gbps = bad;
    try {
      make_plan(m, devs, Config{});
      ADD_FAILURE() << "read_gbps " << bad << " accepted";
    } catch (const PlanError& e) {
      EXPECT_NE(std::string(e.what()).find("cpu0: read bandwidth"), std::string::npos) << e.what();
    }
  }
  Config c;
  c.cpu_moe_layers = 3;
  try {
    make_plan(m, gpu_cpu(), c);
    ADD_FAILURE() << "cpu_moe_layers larger than the model accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("placement.cpu_moe_layers: 3 is more than the model's 2"),
              std::string::npos)
        << e.what();
  }
  c.cpu_moe_layers = 2;  // every layer: allowed
  EXPECT_EQ(make_plan(m, gpu_cpu(), c).experts_on(1, 1), 8);
  Config pins;
  pins.experts_mode = "pins";
  pins.expert_pins = {{"cpu0", 5, 6, 0, -1}};
  EXPECT_THROW(make_plan(m, gpu_cpu(), pins), ConfigError);
  pins.expert_pins = {{"cpu0", 0, -1, 8, 9}};
  EXPECT_THROW(make_plan(m, gpu_cpu(), pins), ConfigError);
}

TEST(PlannerTest, RecurrentStateIsReservedWhereItsLayerRuns) {
  // 4 dense layers of 8 MiB, two of them recurrent with 1 MiB of state per sequence, 4 sequences.
  ModelFootprint m;
  for (int l = 0; l < 4; ++l) m.layers.push_back({8u << 20, 0, 0, 10});
  m.layers[1].state_bytes = m.layers[3].state_bytes = 1u << 20;
  m.embedding_bytes = m.output_bytes = 1u << 20;
  m.kv_bytes_per_token = 1024;
  m.context_tokens = 1024;
  m.max_sequences = 4;
  auto plan = make_plan(m, gpu_cpu(), Config{});
  EXPECT_EQ(plan.state_bytes[0], 8u << 20);  // 2 layers x 4 sequences x 1 MiB, all on gpu0
  EXPECT_EQ(plan.state_bytes[1], 0u);
  EXPECT_EQ(plan.weight_bytes[0], 4 * (8ull << 20) + (2u << 20));
  EXPECT_NE(plan.to_text(m).find("recurrent state (4 sequences): gpu0 8.0 MiB"), std::string::npos)
      << plan.to_text(m);
  EXPECT_NE(plan.to_json().find("\"state_bytes\":8388608"), std::string::npos);
  // A GPU budget that holds the weights but not the states of the last layer: it spills.
  const uint64_t head = (2u << 20) + 1024 * 1024;
  auto tight = make_plan(m, gpu_cpu(head + 4 * (8ull << 20) + (4u << 20) + (1u << 19)), Config{});
  EXPECT_EQ(tight.layer_device[3], 1);
  EXPECT_EQ(tight.state_bytes[1], 4u << 20);
  for (size_t d = 0; d < 2; ++d)
    EXPECT_LE(tight.weight_bytes[d] + tight.kv_bytes[d] + tight.state_bytes[d],
              tight.devices[d].budget_bytes);
  // Nowhere to put it: the error names the state.
  try {
    make_plan(m, gpu_cpu(head + (8u << 20), 4u << 20), Config{});
    FAIL() << "expected a PlanError";
  } catch (const PlanError& e) {
    EXPECT_NE(std::string(e.what()).find("recurrent state"), std::string::npos) << e.what();
  }
  // A decode token reads and writes each recurrent layer's state: 2 x 1 MiB per such layer on the
  // GPU's 3000 GB/s beside the weights, in the predicted step.
  ModelFootprint stateless = m;
  for (auto& l : stateless.layers) l.state_bytes = 0;
  const auto without = make_plan(stateless, gpu_cpu(), Config{});
  EXPECT_NEAR(plan.decode_step_seconds - without.decode_step_seconds,
              2 * 2 * double(1u << 20) / 3000e9, 1e-9);
}

}  // namespace
}  // namespace tessera::sched
