// Recorded step programs replayed for later steps of the same batch shape give the same tokens and
// the same logits, bit for bit, as enqueueing every step afresh: on every device, for every
// architecture, for one sequence, for two decoding together and for repeated prefill shapes. Steps
// of different batch sizes launch with the same work-group sizes.
#include <map>
#include <set>
#include <string>

#include "engine_test_util.h"

namespace tessera::engine::test {
namespace {

const std::vector<int32_t> kPrompt{1, 300, 301, 302, 303, 304, 305};

sched::Config on(const Device& d) {
  sched::Config c;
  c.select = {sched::DeviceSelector{}};
  c.select[0].id = d.id();
  return c;
}

std::unique_ptr<OpenClModel> engine_on(const Loaded& m, const DeviceRegistry& reg, const Device& d,
                                       bool replay) {
  EngineOptions o;
  o.replay = replay;
  return make_engine(m.spec, reg, on(d), o);
}

void expect_same(const std::vector<std::vector<float>>& got,
                 const std::vector<std::vector<float>>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], want[i]) << "step " << i;
}

class ReplayTest : public ::testing::TestWithParam<std::string> {};

// One sequence: the prompt, then 12 decode steps (crossing a KV block boundary); the decode shape
// is recorded once and replayed 11 times.
TEST_P(ReplayTest, GreedyDecodeEqualsFreshEnqueueing) {
  auto reg = DeviceRegistry::discover();
  auto m = load_fixture(GetParam());
  for (const auto& dev : reg.devices()) {
    SCOPED_TRACE(dev->id());
    const int n = 12;
    auto fresh = engine_on(*m, reg, *dev, false);
    const auto want = engine_greedy(*fresh, kPrompt, n);
    EXPECT_EQ(fresh->recorded_steps() + fresh->replayed_steps(), 0u);
    fresh.reset();
    auto replay = engine_on(*m, reg, *dev, true);
    const auto got = engine_greedy(*replay, kPrompt, n);
    EXPECT_EQ(got.tokens, want.tokens);
    expect_same(got.logits, want.logits);
    EXPECT_EQ(replay->recorded_steps(), 2u);  // the prompt's shape and the decode shape
    EXPECT_EQ(replay->replayed_steps(), uint64_t(n - 1));
    ASSERT_NE(replay->latest_program(), nullptr);
    // One device holds every expert: no point of the step needs data on the host.
    EXPECT_EQ(replay->latest_program()->host_syncs(), 0u);
    EXPECT_GT(replay->latest_program()->launches(), m->spec.layers.size());
  }
}

// Two sequences of different lengths decoding together (one shape of two tokens), then a prompt
// of the first prompt's length in a third sequence (the prefill shape replayed).
TEST_P(ReplayTest, BatchedDecodeAndRepeatedPrefillEqualFreshEnqueueing) {
  auto reg = DeviceRegistry::discover();
  auto m = load_fixture(GetParam(), 4);
  for (const auto& dev : reg.devices()) {
    SCOPED_TRACE(dev->id());
    auto run = [&](OpenClModel& e) {
      auto& kv = e.memory();  // KV blocks and recurrent-state slots
      std::vector<std::vector<float>> out;
      const std::vector<std::vector<int32_t>> prompts = {
          {1, 310, 311, 312, 313},
          {1, 320, 321, 322, 323, 324, 325, 326, 327},
          {1, 330, 331, 332, 333}};
      std::vector<kv::SeqId> seqs;
      std::vector<int32_t> last;
      auto prefill = [&](const std::vector<int32_t>& p) {
        const auto s = kv.create();
        const auto r = kv.reserve(s, int32_t(p.size()));
        StepBatch b;
        b.seqs = {s};
        b.tokens = p;
        b.token_seq.assign(p.size(), 0);
        for (size_t i = 0; i < p.size(); ++i) b.token_pos.push_back(r.first_pos + int32_t(i));
        b.logit_rows = {int32_t(p.size()) - 1};
        out.push_back(e.forward(b));
        seqs.push_back(s);
        last.push_back(Sampler::argmax(out.back()));
      };
      prefill(prompts[0]);
      prefill(prompts[1]);
      const size_t nv = m->spec.hp.n_vocab;
      for (int step = 0; step < 20; ++step) {
        StepBatch b;
        b.seqs = {seqs[0], seqs[1]};
        for (int i = 0; i < 2; ++i) {
          const auto r = kv.reserve(seqs[size_t(i)], 1);
          b.tokens.push_back(last[size_t(i)]);
          b.token_seq.push_back(i);
          b.token_pos.push_back(r.first_pos);
        }
        b.logit_rows = {0, 1};
        const auto l = e.forward(b);
        out.push_back(l);
        for (int i = 0; i < 2; ++i)
          last[size_t(i)] = Sampler::argmax(
              std::vector<float>(l.begin() + long(size_t(i) * nv), l.begin() + long((i + 1) * nv)));
      }
      prefill(prompts[2]);  // the shape of prompts[0]'s prefill
      for (auto s : seqs) kv.free(s);
      return out;
    };
    auto fresh = engine_on(*m, reg, *dev, false);
    const auto want = run(*fresh);
    fresh.reset();
    auto replay = engine_on(*m, reg, *dev, true);
    const auto got = run(*replay);
    expect_same(got, want);
    EXPECT_EQ(replay->recorded_steps(), 3u);  // two prefill shapes, one decode shape
    EXPECT_EQ(replay->replayed_steps(), 20u);
    EXPECT_EQ(replay->cached_programs(), 3u);
  }
}

// The work-group size of every launch is set by the step's code and the model, never left to the
// driver and never tied to the batch: PoCL compiles a work-group function for each work-group size
// it meets (100+ ms each on a CPU), so a serving engine whose launches followed the batch size
// stalled on a compile at every batch size it had not met yet. Over decode steps of 1 to 19
// sequences and prefills of 5 to 33 tokens (pairs grouped by expert from 16 tokens), each kernel
// launches with one work-group size.
TEST_P(ReplayTest, EachKernelHasOneWorkGroupSizeWhateverTheBatch) {
  auto reg = DeviceRegistry::discover();
  auto m = load_fixture(GetParam());
  for (const auto& dev : reg.devices()) {
    SCOPED_TRACE(dev->id());
    EngineOptions o;
    o.max_sequences = 20;
    auto e = make_engine(m->spec, reg, on(*dev), o);
    auto& kv = e->memory();  // KV blocks and recurrent-state slots
    std::map<std::string, std::set<std::string>> sizes;  // kernel -> work-group sizes launched
    // One step of `n_seqs` new sequences of `per_seq` tokens each (one token each: a decode step).
    const std::pair<int, int> shapes[] = {{1, 1},  {2, 1}, {3, 1}, {5, 1},  {17, 1},
                                          {19, 1}, {1, 5}, {1, 9}, {1, 20}, {2, 33}};
    for (const auto& [n_seqs, per_seq] : shapes) {
      StepBatch b;
      for (int s = 0; s < n_seqs; ++s) {
        const auto seq = kv.create();
        const auto r = kv.reserve(seq, per_seq);
        b.seqs.push_back(seq);
        for (int i = 0; i < per_seq; ++i) {
          b.tokens.push_back(300 + s + i);
          b.token_seq.push_back(s);
          b.token_pos.push_back(r.first_pos + i);
        }
        b.logit_rows.push_back(int32_t(b.tokens.size()) - 1);
      }
      e->forward(b);
      for (auto seq : b.seqs) kv.free(seq);
      ASSERT_NE(e->latest_program(), nullptr);
      for (const auto& r : e->latest_program()->records()) {
        if (r.kind != ops::StepProgram::Kind::kLaunch) continue;
        std::string local = "picked by the driver";
        if (r.has_local) {
          local.clear();
          for (cl_uint d = 0; d < r.dims; ++d) local += (d ? "x" : "") + std::to_string(r.local[d]);
        }
        sizes[r.name].insert(local);
      }
    }
    EXPECT_GT(sizes.size(), 4u);
    for (const auto& [kernel, locals] : sizes) {
      std::string all;
      for (const auto& l : locals) all += " [" + l + "]";
      EXPECT_EQ(locals.size(), 1u) << kernel << ":" << all;
      EXPECT_EQ(locals.count("picked by the driver"), 0u) << kernel;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Architectures, ReplayTest,
                         ::testing::Values("llama", "mixtral", "qwen3", "qwen3moe", "qwen2moe",
                                           "gpt-oss", "granitehybrid", "qwen3next"));

// The cost model's launch counts (counted at construction from a count-only recording of the
// step's code) add up to the launches a recorded decode step of one token really enqueues.
TEST_P(ReplayTest, LaunchCountsMatchARecordedDecodeStep) {
  auto reg = DeviceRegistry::discover();
  auto m = load_fixture(GetParam());
  auto e = engine_on(*m, reg, *reg.devices().front(), true);
  engine_greedy(*e, kPrompt, 2);  // the latest program is the one-token decode step
  const auto& fp = e->footprint();
  ASSERT_EQ(fp.layers.size(), m->spec.layers.size());
  size_t want = size_t(fp.embedding_launches + fp.output_launches);
  for (size_t l = 0; l < fp.layers.size(); ++l) {
    const auto& fl = fp.layers[l];
    EXPECT_GT(fl.dense_launches, 0) << l;
    EXPECT_EQ(fl.expert_launches > 0, m->spec.layers[l].is_moe()) << l;
    want += size_t(fl.dense_launches + fl.expert_launches);  // one device: experts in the step
  }
  EXPECT_GT(fp.embedding_launches, 0);
  EXPECT_GT(fp.output_launches, 0);
  ASSERT_NE(e->latest_program(), nullptr);
  EXPECT_EQ(e->latest_program()->launches(), want);
}

// Profiling times each launch with events: those steps enqueue afresh, never from a program.
TEST(ReplayOptionsTest, ProfilingStepsAreNotRecorded) {
  auto reg = DeviceRegistry::discover();
  auto m = load_fixture("qwen3moe");
  EngineOptions o;
  o.profile = true;
  auto e = make_engine(m->spec, reg, on(*reg.devices().front()), o);
  engine_greedy(*e, kPrompt, 3);
  EXPECT_EQ(e->recorded_steps() + e->replayed_steps(), 0u);
  EXPECT_FALSE(e->stats().device_op_seconds.empty());
}

// Profiled replays (bench --breakdown) run the same programs with an event per launch: the same
// tokens and logits, every launch of every replayed step timed, and the host time of every step
// counted by kind.
TEST(ReplayOptionsTest, ProfiledReplaysTimeEveryLaunchAndChangeNothing) {
  auto reg = DeviceRegistry::discover();
  auto m = load_fixture("qwen3moe");
  const int n = 6;
  auto plain = engine_on(*m, reg, *reg.devices().front(), true);
  const auto want = engine_greedy(*plain, kPrompt, n);
  EXPECT_TRUE(plain->stats().replay_profile.empty());
  plain.reset();
  auto e = engine_on(*m, reg, *reg.devices().front(), true);
  e->set_profile_replays(true);
  const auto got = engine_greedy(*e, kPrompt, n);
  EXPECT_EQ(got.tokens, want.tokens);
  expect_same(got.logits, want.logits);
  const auto& st = e->stats();
  ASSERT_EQ(st.step_timing.count("decode"), 1u);
  ASSERT_EQ(st.step_timing.count("prefill"), 1u);
  EXPECT_EQ(st.step_timing.at("prefill").steps, 1u);
  EXPECT_EQ(st.step_timing.at("decode").steps, uint64_t(n));
  for (const auto& [kind, t] : st.step_timing) {
    EXPECT_GT(t.wall, 0) << kind;
    EXPECT_LE(t.enqueue + t.wait, t.wall * 1.0001) << kind;
  }
  // Only replays are profiled: the decode shape was recorded at the first decode step.
  ASSERT_EQ(st.replay_profile.count("decode"), 1u);
  EXPECT_EQ(st.replay_profile.count("prefill"), 0u);
  const auto& rp = st.replay_profile.at("decode");
  EXPECT_EQ(rp.steps, uint64_t(n - 1));
  ASSERT_NE(e->latest_program(), nullptr);
  EXPECT_EQ(rp.launches, rp.steps * e->latest_program()->launches());
  uint64_t timed = 0;
  double seconds = 0;
  for (const auto& [key, k] : rp.kernels) {
    EXPECT_EQ(key.first, reg.devices().front()->id());
    EXPECT_FALSE(key.second.empty());
    timed += k.launches;
    seconds += k.seconds;
  }
  EXPECT_EQ(timed, rp.launches + rp.copies);
  EXPECT_GT(seconds, 0);
}

}  // namespace
}  // namespace tessera::engine::test
