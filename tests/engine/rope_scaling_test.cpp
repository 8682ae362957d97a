// RoPE frequency scaling end to end: fixtures with linear scaling (rope.scaling.factor), with
// Llama 3's rope_freqs.weight divisors, with both, and with YaRN, run by the OpenCL engine on every
// device against the scalar reference (greedy tokens and logits). The OpenCL path once ignored both
// and generated other tokens with no error.
#include "engine_test_util.h"

#include <string>

namespace tessera::engine::test {
namespace {

// Positions up to ~40: far enough for the scaled angles to move the greedy tokens.
const std::vector<int32_t> kPrompt{1,   300, 301, 302, 303, 304, 305, 306, 307, 308, 309,
                                   310, 311, 312, 313, 314, 315, 316, 317, 318, 319, 320};
constexpr int kSteps = 16;

std::unique_ptr<Loaded> load(const model::FixtureOptions& o) {
  auto file = gguf::GgufFile::from_memory(model::make_fixture(o).to_bytes(), "fixture-" + o.kind);
  auto l = std::make_unique<Loaded>(Loaded{std::move(file), {}});
  l->spec = model::ModelSpec::from_gguf(l->file);
  return l;
}

struct Scaling {
  const char* name;
  const char* kind;
  bool linear;        // FixtureOptions::rope_scaling (llama kinds: with the divisors too)
  bool freqs;         // FixtureOptions::rope_freqs (divisors alone)
  bool yarn = false;  // FixtureOptions::rope_yarn
};

class RopeScalingTest : public ::testing::TestWithParam<Scaling> {};

TEST_P(RopeScalingTest, EveryDeviceMatchesReference) {
  const Scaling sc = GetParam();
  model::FixtureOptions o;
  o.kind = sc.kind;
  o.rope_scaling = sc.linear;
  o.rope_freqs = sc.freqs;
  o.rope_yarn = sc.yarn;
  auto m = load(o);
  ASSERT_EQ(m->spec.hp.rope_yarn.enabled(), sc.yarn);
  const bool has_linear = m->spec.hp.rope_freq_scale != 1.0f && !sc.yarn;
  const bool has_freqs = m->spec.rope_freqs != nullptr;
  ASSERT_EQ(has_linear, sc.linear);
  ASSERT_EQ(has_freqs, sc.freqs || (sc.linear && std::string(sc.kind) == "llama"));
  const auto ref = reference_greedy(m->spec, kPrompt, kSteps);

  // The scaling must change the answer, or this test could not see it ignored.
  model::FixtureOptions plain = o;
  plain.rope_scaling = plain.rope_freqs = plain.rope_yarn = false;
  auto p = load(plain);
  const auto unscaled = reference_greedy(p->spec, kPrompt, kSteps);
  ASSERT_NE(ref.tokens, unscaled.tokens) << sc.name << ": scaling leaves the greedy tokens alone";

  auto reg = DeviceRegistry::discover();
  ASSERT_FALSE(reg.devices().empty());
  for (const auto& d : reg.devices()) {
    sched::Config cfg;
    cfg.select = {sched::DeviceSelector{}};
    cfg.select[0].id = d->id();
    auto engine = make_engine(m->spec, reg, cfg);
    const auto got = engine_greedy(*engine, kPrompt, kSteps);
    ASSERT_EQ(got.logits.size(), ref.logits.size());
    for (size_t i = 0; i < ref.logits.size(); ++i)
      EXPECT_LT(rel_err(got.logits[i], ref.logits[i]), kRefTol)
          << sc.name << " on " << d->id() << " step " << i;
    EXPECT_EQ(got.tokens, ref.tokens) << sc.name << " on " << d->id();
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, RopeScalingTest,
                         ::testing::Values(Scaling{"qwen3_linear", "qwen3", true, false},
                                           Scaling{"llama_freqs", "llama", false, true},
                                           Scaling{"llama_linear_freqs", "llama", true, false},
                                           Scaling{"qwen3_yarn", "qwen3", false, false, true},
                                           Scaling{"llama_yarn", "llama", false, false, true}),
                         [](const ::testing::TestParamInfo<Scaling>& info) {
                           return std::string(info.param.name);
                         });

}  // namespace
}  // namespace tessera::engine::test
