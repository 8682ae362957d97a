// The executor runs different lanes concurrently, one job at a time per lane, and re-raises
// failures.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "scheduler/balancer.h"
#include "scheduler/executor.h"

namespace tessera::sched {
namespace {

TEST(ExecutorTest, LanesRunConcurrently) {
  Executor ex({"a", "b", "c"});
  std::atomic<int> running{0}, peak{0};
  auto job = [&] {
    int now = ++running;
    int p = peak.load();
    while (now > p && !peak.compare_exchange_weak(p, now)) {
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    --running;
  };
  ex.run_all({job, job, job});
  // Sleeping jobs on three lanes overlap even on a 2-core machine.
  EXPECT_GE(peak.load(), 2);
}

TEST(ExecutorTest, OneLaneRunsItsJobsOneAtATimeInOrder) {
  Executor ex({"a"});
  std::vector<int> order;
  std::atomic<int> running{0};
  bool overlap = false;
  for (int i = 0; i < 20; ++i)
    ex.submit(0, [&, i] {
      if (++running > 1) overlap = true;
      order.push_back(i);
      --running;
    });
  ex.wait();
  EXPECT_FALSE(overlap);
  std::vector<int> expected(20);
  for (int i = 0; i < 20; ++i) expected[size_t(i)] = i;
  EXPECT_EQ(order, expected);  // submission order
  // Jobs submitted while the lane is busy run after it, in order, too.
  order.clear();
  ex.submit(0, [&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    order.push_back(100);
  });
  for (int i = 0; i < 5; ++i) ex.submit(0, [&, i] { order.push_back(i); });
  ex.wait();
  EXPECT_EQ(order, (std::vector<int>{100, 0, 1, 2, 3, 4}));
}

TEST(ExecutorTest, AFailingJobDoesNotStopTheLanesLaterJobs) {
  Executor ex({"cpu0"});
  std::vector<int> ran;
  ex.submit(0, [&] { ran.push_back(0); });
  ex.submit(0, [] { throw std::runtime_error("first"); });
  ex.submit(0, [] { throw std::runtime_error("second"); });
  ex.submit(0, [&] { ran.push_back(3); });
  try {
    ex.wait();
    FAIL() << "the failure was not re-raised";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("cpu0: first"), std::string::npos) << e.what();
  }
  EXPECT_EQ(ran, (std::vector<int>{0, 3}));
  ex.wait();  // the error was reported once
}

TEST(ExecutorTest, FailuresAreReRaisedWithTheDevice) {
  Executor ex({"gpu0", "cpu0"});
  try {
    ex.run_all({[] {}, [] { throw std::runtime_error("kernel exploded"); }});
    FAIL();
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("cpu0"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("kernel exploded"), std::string::npos) << e.what();
  }
  // The executor stays usable after a failure.
  int ran = 0;
  ex.run_all({[&] { ++ran; }, {}});
  EXPECT_EQ(ran, 1);
  EXPECT_THROW(ex.submit(5, [] {}), std::out_of_range);
}

// A lone job (the host-sync point of a layer whose experts sit on one other device) runs on the
// calling thread, without a hand-off to a worker; its failure still names the device, and a lane
// that is still busy sends it to its lane as usual.
TEST(ExecutorTest, ALoneJobRunsOnTheCallingThread) {
  Executor ex({"gpu0", "cpu0"});
  std::thread::id ran_on;
  ex.run_all({{}, [&] { ran_on = std::this_thread::get_id(); }});
  EXPECT_EQ(ran_on, std::this_thread::get_id());
  try {
    ex.run_all({{}, [] { throw std::runtime_error("kernel exploded"); }});
    FAIL();
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("cpu0: kernel exploded"), std::string::npos) << e.what();
  }
  // A job queued on a lane and not waited for: the next run_all goes through the lanes, in order.
  std::vector<int> order;
  std::mutex m;
  ex.submit(1, [&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::lock_guard lock(m);
    order.push_back(1);
  });
  ex.run_all({{}, [&] {
                std::lock_guard lock(m);
                order.push_back(2);
              }});
  EXPECT_EQ(order, (std::vector<int>{1, 2}));
}

ModelFootprint small_moe() {
  ModelFootprint m;
  for (int l = 0; l < 2; ++l) m.layers.push_back({1u << 20, 4u << 20, 8, 10});
  m.embedding_bytes = 1u << 20;
  m.output_bytes = 1u << 20;
  m.n_expert_used = 2;
  m.n_embd = 256;
  m.kv_bytes_per_token = 1024;
  m.context_tokens = 256;
  return m;
}

std::vector<DeviceCost> two_devices() {
  return {{"gpu0", DeviceType::kGpu, 1000, 10000, 8, 20, 20, 8ull << 30, 1ull << 30},
          {"cpu0", DeviceType::kCpu, 50, 500, 10, 10, 10, 8ull << 30, 1ull << 30}};
}

// Each layer's experts in halves on gpu0 and cpu0.
Config half_experts_each() {
  Config c;
  c.experts_mode = "shares";
  c.expert_shares = {{"gpu0", 1}, {"cpu0", 1}};
  return c;
}

TEST(BalancerTest, MovesAHotExpertOffTheSlowDevice) {
  auto m = small_moe();
  const Config c = half_experts_each();  // half the experts on the slow CPU
  auto plan = make_plan(m, two_devices(), c);
  ExpertBalancer bal(m, true, /*interval=*/4, /*max_moves=*/4);
  // Every token picks two experts that live on the CPU.
  int hot_cpu[2] = {-1, -1};
  int n = 0;
  for (int e = 0; e < 8 && n < 2; ++e)
    if (plan.expert_device[0][size_t(e)] == 1) hot_cpu[n++] = e;
  ASSERT_EQ(n, 2);
  for (int step = 0; step < 4; ++step) {
    for (int l = 0; l < 2; ++l) bal.record(l, hot_cpu, 2);
    bal.end_step();
  }
  EXPECT_EQ(bal.selections(0, hot_cpu[0]), 4u);
  auto observed = bal.load();
  predict(plan, m, &observed);
  const double before = plan.decode_step_seconds;
  auto moves = bal.rebalance(plan);
  ASSERT_FALSE(moves.empty());
  EXPECT_EQ(moves[0].from, 1);
  EXPECT_EQ(moves[0].to, 0);
  EXPECT_LT(plan.decode_step_seconds, before);
  EXPECT_EQ(bal.moves(), moves.size());
  for (size_t d = 0; d < 2; ++d)
    EXPECT_LE(plan.weight_bytes[d] + plan.kv_bytes[d], plan.devices[d].budget_bytes);
}

// Uniform routing, two layers' experts on a CPU whose launches cost 45 us, room on the GPU for
// one layer's experts: the balancer empties one layer on the CPU (saving its launches and round
// trip) rather than spreading single moves over both layers.
TEST(BalancerTest, EmptiesALayerOnTheSlowDeviceWhenBudgetIsTight) {
  ModelFootprint m;
  for (int l = 0; l < 4; ++l) m.layers.push_back({1u << 20, 1u << 20, 8, 10});
  m.embedding_bytes = 1u << 20;
  m.output_bytes = 1u << 20;
  m.n_expert_used = 2;
  m.n_embd = 256;
  m.kv_bytes_per_token = 1024;
  m.context_tokens = 256;
  auto devs = two_devices();
  devs[1].launch_us = 45;
  Config c;
  c.attention = "gpu0";
  c.cpu_moe_layers = 2;
  c.stream_experts = "off";  // all of the headroom below is the balancer's
  auto loose = make_plan(m, devs, c);
  devs[0].budget_bytes = loose.weight_bytes[0] + loose.kv_bytes[0] + (8u << 20) + (1u << 19);
  auto plan = make_plan(m, devs, c);
  ASSERT_EQ(plan.experts_on(0, 1), 8);
  ASSERT_EQ(plan.experts_on(1, 1), 8);
  ExpertBalancer bal(m, true, 1, 4);
  for (int t = 0; t < 64; ++t) {
    for (int l = 0; l < 4; ++l) {
      int pick[2] = {(t * 3) % 8, (t * 3 + 1 + t / 8) % 8};
      if (pick[1] == pick[0]) pick[1] = (pick[0] + 1) % 8;
      bal.record(l, pick, 2);
    }
  }
  bal.end_step();
  auto observed = bal.load();
  predict(plan, m, &observed);
  const double before = plan.decode_step_seconds;
  const auto moves = bal.rebalance(plan);
  EXPECT_EQ(moves.size(), 8u);
  EXPECT_TRUE(plan.experts_on(0, 1) == 0 || plan.experts_on(1, 1) == 0)
      << "layer 0 keeps " << plan.experts_on(0, 1) << ", layer 1 keeps " << plan.experts_on(1, 1);
  EXPECT_LT(plan.decode_step_seconds, before);
  for (size_t d = 0; d < 2; ++d)
    EXPECT_LE(plan.weight_bytes[d] + plan.kv_bytes[d], plan.devices[d].budget_bytes);
}

// A moved expert's weights stay where they were, as a copy: the source's bytes do not drop, and
// when the devices' speeds swap the experts move back to their copies without an upload.
TEST(BalancerTest, MovedExpertsKeepACopyAndMovingBackUploadsNothing) {
  auto m = small_moe();
  const Config c = half_experts_each();
  auto plan = make_plan(m, two_devices(), c);
  const auto bytes0 = plan.weight_bytes;
  ExpertBalancer bal(m, true, 1, 4);
  int hot[2] = {-1, -1};
  int n = 0;
  for (int e = 0; e < 8 && n < 2; ++e)
    if (plan.expert_device[0][size_t(e)] == 1) hot[n++] = e;
  ASSERT_EQ(n, 2);
  for (int step = 0; step < 4; ++step) {
    for (int l = 0; l < 2; ++l) bal.record(l, hot, 2);
    bal.end_step();
  }
  const auto moves = bal.rebalance(plan);
  ASSERT_FALSE(moves.empty());
  uint64_t uploaded = 0;
  for (const auto& mv : moves) {
    ASSERT_EQ(mv.from, 1);
    ASSERT_EQ(mv.to, 0);
    EXPECT_TRUE(mv.uploaded);
    EXPECT_EQ(plan.expert_device[size_t(mv.layer)][size_t(mv.expert)], 0);
    EXPECT_TRUE(plan.holds(mv.layer, mv.expert, 1)) << "no copy kept on cpu0";
    EXPECT_TRUE(plan.holds(mv.layer, mv.expert, 0));
    uploaded += m.layers[size_t(mv.layer)].expert_bytes;
  }
  EXPECT_EQ(plan.weight_bytes[1], bytes0[1]);
  EXPECT_EQ(plan.weight_bytes[0], bytes0[0] + uploaded);
  EXPECT_EQ(bal.uploads(), moves.size());
  // The GPU turns slow, the CPU fast: the hot experts go back to the copies on cpu0.
  std::swap(plan.devices[0].read_gbps, plan.devices[1].read_gbps);
  std::swap(plan.devices[0].weight_gbps, plan.devices[1].weight_gbps);
  std::swap(plan.devices[0].fp32_gflops, plan.devices[1].fp32_gflops);
  for (int l = 0; l < 2; ++l) bal.record(l, hot, 2);
  bal.end_step();
  const auto back = bal.rebalance(plan);
  ASSERT_FALSE(back.empty());
  size_t to_copy = 0;
  for (const auto& mv : back)
    if (mv.to == 1 && !mv.uploaded) {
      ++to_copy;
      EXPECT_TRUE(plan.holds(mv.layer, mv.expert, 0)) << "the GPU keeps its copy in turn";
    }
  EXPECT_GT(to_copy, 0u);
  EXPECT_EQ(plan.weight_bytes[1], bytes0[1]);  // nothing uploaded to cpu0
  EXPECT_EQ(bal.uploads(), moves.size());
}

// A device at its budget that holds copies drops the least used of them (of other layers) to take
// an upload; the drops are returned so the engine re-uploads those layers.
TEST(BalancerTest, CopiesAreDroppedToMakeRoom) {
  auto m = small_moe();
  const Config c = half_experts_each();
  auto devs = two_devices();
  auto plan = make_plan(m, devs, c);
  // gpu0 keeps copies of two experts cpu0 serves in layer 1 and has no byte to spare.
  plan.expert_copies.assign(2, std::vector<uint32_t>(8, 0u));
  for (size_t e = 0, k = 0; e < 8 && k < 2; ++e)
    if (plan.expert_device[1][e] == 1) {
      plan.expert_copies[1][e] = 1u;
      plan.weight_bytes[0] += m.layers[1].expert_bytes;
      ++k;
    }
  plan.devices[0].budget_bytes = plan.weight_bytes[0] + plan.kv_bytes[0] + plan.state_bytes[0];
  ExpertBalancer bal(m, true, 1, 1);
  int hot[2] = {-1, -1};
  int n = 0;
  for (int e = 0; e < 8 && n < 2; ++e)
    if (plan.expert_device[0][size_t(e)] == 1) hot[n++] = e;
  // Layer 1's tokens choose experts gpu0 serves: its copies there would save nothing.
  int cold[2] = {-1, -1};
  n = 0;
  for (int e = 0; e < 8 && n < 2; ++e)
    if (plan.expert_device[1][size_t(e)] == 0) cold[n++] = e;
  for (int step = 0; step < 4; ++step) {
    bal.record(0, hot, 2);
    bal.record(1, cold, 2);
  }
  bal.end_step();
  const auto moves = bal.rebalance(plan);
  size_t uploads = 0, drops = 0;
  for (const auto& mv : moves) {
    if (mv.to < 0) {
      ++drops;
      EXPECT_EQ(mv.layer, 1);
      EXPECT_FALSE(plan.holds(mv.layer, mv.expert, 0));
    } else if (mv.uploaded) {
      ++uploads;
      EXPECT_EQ(mv.layer, 0);
    }
  }
  EXPECT_EQ(uploads, 1u);  // one move per round
  EXPECT_EQ(drops, 1u);    // experts of both layers are the same size
  EXPECT_EQ(bal.dropped_copies(), drops);
  EXPECT_LE(plan.weight_bytes[0] + plan.kv_bytes[0] + plan.state_bytes[0],
            plan.devices[0].budget_bytes);
}

// The engine counts its launches after the balancer is made: update_model gives it those counts,
// and its predictions (what rebalance leaves in the plan) are then the planner's with them.
TEST(BalancerTest, PredictsWithTheUpdatedFootprint) {
  auto m = small_moe();
  const Config c = half_experts_each();
  auto plan = make_plan(m, two_devices(), c);
  ExpertBalancer bal(m, true, 1, 0);  // no moves: rebalance only predicts
  auto counted = m;
  for (auto& l : counted.layers) l.dense_launches = l.expert_launches = 1;
  bal.update_model(counted);
  int hot[2] = {0, 1};
  for (int l = 0; l < 2; ++l) bal.record(l, hot, 2);
  bal.end_step();
  EXPECT_TRUE(bal.rebalance(plan).empty());
  auto observed = bal.load();
  Plan with_counted = plan, with_defaults = plan;
  predict(with_counted, counted, &observed);
  predict(with_defaults, m, &observed);
  EXPECT_DOUBLE_EQ(plan.decode_step_seconds, with_counted.decode_step_seconds);
  EXPECT_LT(plan.decode_step_seconds, with_defaults.decode_step_seconds);
  ModelFootprint one_layer = m;
  one_layer.layers.resize(1);
  EXPECT_THROW(bal.update_model(one_layer), std::invalid_argument);
}

TEST(BalancerTest, DisabledOrTooEarlyDoesNothing) {
  auto m = small_moe();
  auto plan = make_plan(m, two_devices(), Config{});
  ExpertBalancer off(m, false, 1, 4);
  int hot[2] = {0, 1};
  off.record(0, hot, 2);
  off.end_step();
  EXPECT_TRUE(off.rebalance(plan).empty());
  ExpertBalancer early(m, true, 100, 4);
  early.record(0, hot, 2);
  early.end_step();
  EXPECT_TRUE(early.rebalance(plan).empty());
}

}  // namespace
}  // namespace tessera::sched
