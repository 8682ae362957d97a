// Sliding-window attention end to end: a fixture whose even layers attend to their last 8 tokens
// (tessera fixture --window 8) runs through the OpenCL engine on every device, with recorded step
// programs and without, against the scalar reference (greedy tokens and logits) far past the
// window; the window layers' KV blocks are released as the context grows. The same binary runs
// again with two PoCL devices (layers of both kinds on each device, and one kind per device).
#include <string>

#include "engine_test_util.h"
#include "host/engine/engine.h"

namespace tessera::engine::test {
namespace {

constexpr uint32_t kWindow = 8;
constexpr int kBlockSize = 4;  // small blocks: the window spans a few, the context many
// 22 prompt tokens and 30 decode steps: positions up to 51, six windows.
const std::vector<int32_t> kPrompt{1,   300, 301, 302, 303, 304, 305, 306, 307, 308, 309,
                                   310, 311, 312, 313, 314, 315, 316, 317, 318, 319, 320};
constexpr int kSteps = 30;

std::unique_ptr<Loaded> load(const std::string& kind, uint32_t window) {
  model::FixtureOptions o;
  o.kind = kind;
  o.n_layer = 4;
  // gpt-oss always windows its even layers: a window longer than any run here stands for none.
  o.window = window == 0 && kind == "gpt-oss" ? 100000 : window;
  auto file = gguf::GgufFile::from_memory(model::make_fixture(o).to_bytes(), "fixture-" + kind);
  auto l = std::make_unique<Loaded>(Loaded{std::move(file), {}});
  l->spec = model::ModelSpec::from_gguf(l->file);
  return l;
}

sched::Config on(const std::string& id) {
  sched::Config c;
  c.select = {sched::DeviceSelector{}};
  c.select[0].id = id;
  return c;
}

EngineOptions options(bool replay) {
  EngineOptions o;
  o.replay = replay;
  o.kv_block_size = kBlockSize;
  return o;
}

// Like engine_greedy, checking after every decode step that the window group holds no more blocks
// than the window needs while the full group holds the whole context.
RefRun greedy_checking_blocks(OpenClModel& m, const std::vector<int32_t>& prompt, int n) {
  auto& kv = m.kv_cache();
  EXPECT_EQ(kv.n_groups(), 2);
  const int32_t window_group = kv.group_of(0), full_group = kv.group_of(1);
  EXPECT_EQ(kv.blocks(window_group).window(), int32_t(kWindow));
  EXPECT_EQ(kv.blocks(full_group).window(), 0);
  const auto seq = kv.create_sequence();
  RefRun r;
  const auto res = kv.reserve(seq, int32_t(prompt.size()));
  StepBatch b;
  b.seqs = {seq};
  b.tokens = prompt;
  b.token_seq.assign(prompt.size(), 0);
  for (size_t i = 0; i < prompt.size(); ++i) b.token_pos.push_back(res.first_pos + int32_t(i));
  b.logit_rows = {int32_t(prompt.size()) - 1};
  r.logits.push_back(m.forward(b));
  for (int i = 0; i < n; ++i) {
    const int32_t next = Sampler::argmax(r.logits.back());
    r.tokens.push_back(next);
    const auto one = kv.reserve(seq, 1);
    const int32_t length = one.first_pos + 1;
    EXPECT_EQ(kv.blocks(full_group).blocks_held(seq), (length + kBlockSize - 1) / kBlockSize);
    EXPECT_LE(kv.blocks(window_group).blocks_held(seq), int32_t(kWindow) / kBlockSize + 1)
        << "at length " << length;
    StepBatch d;
    d.seqs = {seq};
    d.tokens = {next};
    d.token_seq = {0};
    d.token_pos = {one.first_pos};
    d.logit_rows = {0};
    r.logits.push_back(m.forward(d));
  }
  kv.free_sequence(seq);
  EXPECT_EQ(kv.blocks(window_group).blocks_used(), 0);
  EXPECT_EQ(kv.blocks(full_group).blocks_used(), 0);
  return r;
}

void expect_matches(const RefRun& got, const RefRun& ref, const std::string& what) {
  ASSERT_EQ(got.logits.size(), ref.logits.size()) << what;
  for (size_t i = 0; i < ref.logits.size(); ++i)
    EXPECT_LT(rel_err(got.logits[i], ref.logits[i]), kRefTol) << what << " step " << i;
  EXPECT_EQ(got.tokens, ref.tokens) << what;
}

TEST(WindowModel, SpecAppliesThePerLayerPattern) {
  auto m = load("llama", kWindow);
  ASSERT_EQ(m->spec.layers.size(), 4u);
  for (size_t l = 0; l < 4; ++l) EXPECT_EQ(m->spec.layers[l].window, l % 2 ? 0u : kWindow) << l;
  // A window size alone, or llama.cpp's period form of the pattern, is ignored for llama as
  // llama.cpp ignores it.
  for (bool period : {false, true}) {
    model::FixtureOptions o;
    o.n_layer = 4;
    auto w = model::make_fixture(o);
    w.set("llama.attention.sliding_window", gguf::Value::u32(kWindow));
    if (period) w.set("llama.attention.sliding_window_pattern", gguf::Value::u32(2));
    auto file = gguf::GgufFile::from_memory(w.to_bytes(), "fixture-llama");
    const auto spec = model::ModelSpec::from_gguf(file);
    for (const auto& l : spec.layers) EXPECT_EQ(l.window, 0u);
  }
  // A pattern without the window size, or of the wrong length, is refused by name.
  for (int bad = 0; bad < 2; ++bad) {
    model::FixtureOptions o;
    o.n_layer = 4;
    o.window = kWindow;
    if (bad == 0) o.drop_key = "llama.attention.sliding_window";
    auto w = model::make_fixture(o);
    if (bad == 1)
      w.set("llama.attention.sliding_window_pattern",
            gguf::Value::array(gguf::ValueType::BOOL, {gguf::Value::boolean(true)}));
    auto file = gguf::GgufFile::from_memory(w.to_bytes(), "fixture-llama");
    try {
      model::ModelSpec::from_gguf(file);
      ADD_FAILURE() << "accepted a bad window pattern (" << bad << ")";
    } catch (const model::ModelError& e) {
      EXPECT_NE(std::string(e.what()).find("sliding_window"), std::string::npos) << e.what();
    }
  }
}

class WindowModelTest : public ::testing::TestWithParam<std::string> {};

// OpenCL equals the reference on every device, replayed and enqueued afresh; the window changes
// the answer (so a path that ignored it would fail here).
TEST_P(WindowModelTest, EveryDeviceMatchesReference) {
  auto m = load(GetParam(), kWindow);
  const auto ref = reference_greedy(m->spec, kPrompt, kSteps);
  auto full = load(GetParam(), 0);
  const auto unwindowed = reference_greedy(full->spec, kPrompt, kSteps);
  ASSERT_NE(ref.tokens, unwindowed.tokens) << "the window leaves the greedy tokens alone";

  auto reg = DeviceRegistry::discover();
  ASSERT_FALSE(reg.devices().empty());
  for (const auto& d : reg.devices()) {
    for (bool replay : {true, false}) {
      const std::string what = d->id() + (replay ? " replayed" : " fresh");
      auto engine = make_engine(m->spec, reg, on(d->id()), options(replay));
      const auto got = greedy_checking_blocks(*engine, kPrompt, kSteps);
      expect_matches(got, ref, what);
      if (replay) {
        EXPECT_EQ(engine->replayed_steps(), uint64_t(kSteps - 1)) << what;
      }
    }
  }
}

// Through the request engine: the run summary's per-group peak of a window group stays at the
// prompt's blocks (reserved at admission) while the full group's grows with the context.
TEST_P(WindowModelTest, RequestEngineReleasesWindowBlocks) {
  auto m = load(GetParam(), kWindow);
  const auto ref = reference_greedy(m->spec, kPrompt, kSteps);
  auto reg = DeviceRegistry::discover();
  Engine engine(make_engine(m->spec, reg, on(reg.devices().front()->id()), options(true)));
  Request r;
  r.prompt = kPrompt;
  r.max_tokens = kSteps;
  std::vector<int32_t> tokens;
  r.on_output = [&](const RequestOutput& o) {
    if (o.token >= 0) tokens.push_back(o.token);
  };
  engine.add_request(std::move(r));
  engine.run_until_idle();
  EXPECT_EQ(tokens, std::vector<int32_t>(ref.tokens.begin(), ref.tokens.end()));
  const auto& kv = engine.model().kv_cache();
  const auto& peaks = engine.counters().kv_group_blocks_peak;
  ASSERT_EQ(peaks.size(), 2u);
  const int prompt_blocks = (int(kPrompt.size()) + kBlockSize - 1) / kBlockSize;
  const int total_blocks = (int(kPrompt.size()) + kSteps + kBlockSize - 1) / kBlockSize;
  EXPECT_LE(peaks[size_t(kv.group_of(0))], prompt_blocks + 1);
  EXPECT_GE(peaks[size_t(kv.group_of(1))], total_blocks - 1);
  EXPECT_EQ(kv.blocks(0).blocks_used() + kv.blocks(1).blocks_used(), 0);
}

// Two devices: layers 0-1 (a window and a full layer) on one, 2-3 on the other, then each kind on
// its own device; both equal the reference.
TEST_P(WindowModelTest, TwoDevicesMatchReference) {
  auto reg = DeviceRegistry::discover();
  if (reg.devices().size() < 2) GTEST_SKIP() << "needs two OpenCL devices";
  auto m = load(GetParam(), kWindow);
  const auto ref = reference_greedy(m->spec, kPrompt, kSteps);
  const auto fp = footprint_of(m->spec, 256);
  for (int split = 0; split < 2; ++split) {
    for (bool replay : {true, false}) {
      sched::Config all;
      auto plan = plan_for(reg, all, fp, nullptr);
      ASSERT_GE(plan.devices.size(), 2u);
      for (size_t l = 0; l < plan.layer_device.size(); ++l) {
        const int d = split == 0 ? int(l / 2) : int(l % 2);
        plan.layer_device[l] = d;
        for (auto& e : plan.expert_device[l]) e = d;
      }
      EngineOptions o = options(replay);
      o.max_context = 256;
      OpenClModel engine(m->spec, reg, plan, fp, o);
      const auto got = greedy_checking_blocks(engine, kPrompt, kSteps);
      expect_matches(got, ref,
                     std::string(split == 0 ? "both kinds per device" : "one kind per device") +
                         (replay ? " replayed" : " fresh"));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, WindowModelTest,
                         ::testing::Values("llama", "qwen3moe", "gpt-oss"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name = info.param;  // gtest names: no '-'
                           for (char& ch : name)
                             if (ch == '-') ch = '_';
                           return name;
                         });

}  // namespace
}  // namespace tessera::engine::test
