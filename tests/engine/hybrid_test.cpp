// Hybrid models on the OpenCL engine against the reference path: granitehybrid (Mamba2 layers
// beside attention layers, MoE with an ungated shared expert, Granite's multipliers) and qwen3next
// (Gated DeltaNet layers beside gated attention, MoE with a sigmoid-gated shared expert; its quant
// mix, its F32 form, whose projections stack into one launch, and its form with the fused ssm_in
// of llama.cpp's first converter). Greedy tokens and logits,
// prefill then decode equal to one prefill (the reference's DeltaNet prefill is the chunked form,
// the engine's the recurrent one), sequences batched together (prefill chunks beside decode
// tokens) equal to separate runs, a fork continuing as its parent, the recurrent state reserved
// per sequence and counted in the plan, and Mamba2's chunked prefill scan (forced here) equal to
// the reference. CTest runs it on one PoCL device and again on two (POCL_DEVICES="pthread
// pthread"), where the layers alternate between the devices.
#include "engine_test_util.h"
#include "host/engine/layers/deltanet.h"
#include "host/engine/layers/mamba2.h"

namespace tessera::engine::test {
namespace {

const std::vector<int32_t> kPrompt{1, 300, 301, 302, 303, 304, 305, 306, 307};

// Every device found; with two, the layers (and their experts) alternate between them, so each
// holds Mamba2 layers and the attention layer's KV sits on the second.
std::unique_ptr<OpenClModel> hybrid_engine(const model::ModelSpec& spec, const DeviceRegistry& reg,
                                           EngineOptions opts = {}) {
  auto fp = footprint_of(spec, 256);
  fp.max_sequences = opts.max_sequences;
  sched::Config all;
  auto plan = plan_for(reg, all, fp, nullptr);
  if (plan.devices.size() >= 2) {
    for (size_t l = 0; l < plan.layer_device.size(); ++l) {
      plan.layer_device[l] = int(l % 2);
      for (auto& e : plan.expert_device[l]) e = int(l % 2);
    }
  }
  if (opts.max_context == 0) opts.max_context = 256;
  return std::make_unique<OpenClModel>(spec, reg, plan, fp, opts);
}

std::vector<int32_t> positions(int32_t first, size_t n) {
  std::vector<int32_t> p(n);
  for (size_t i = 0; i < n; ++i) p[i] = first + int32_t(i);
  return p;
}

// Logits [n_vocab] of row r of a [rows][n_vocab] block.
std::vector<float> row(const std::vector<float>& logits, size_t r, size_t n_vocab) {
  return {logits.begin() + long(r * n_vocab), logits.begin() + long((r + 1) * n_vocab)};
}

// A fixture kind, "_f32" appended for its all-F32 form, "_fused" for qwen3next's fused ssm_in.
std::unique_ptr<Loaded> load_kind(const std::string& param) {
  model::FixtureOptions o;
  o.kind = param;
  auto suffix = [&](const std::string& s) {
    const bool has =
        o.kind.size() > s.size() && o.kind.compare(o.kind.size() - s.size(), s.size(), s) == 0;
    if (has) o.kind.resize(o.kind.size() - s.size());
    return has;
  };
  o.all_f32 = suffix("_f32");
  o.fused_ssm_in = suffix("_fused");
  auto file = gguf::GgufFile::from_memory(model::make_fixture(o).to_bytes(), "fixture-" + param);
  auto l = std::make_unique<Loaded>(Loaded{std::move(file), {}});
  l->spec = model::ModelSpec::from_gguf(l->file);
  return l;
}

class HybridTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    m_ = load_kind(GetParam());
    reg_ = std::make_unique<DeviceRegistry>(DeviceRegistry::discover());
  }
  std::unique_ptr<Loaded> m_;
  std::unique_ptr<DeviceRegistry> reg_;
};

class GraniteHybridTest : public HybridTest {};
class Qwen3NextTest : public HybridTest {};

TEST_P(GraniteHybridTest, FixtureHasMamba2AndAttentionLayers) {
  const auto& spec = m_->spec;
  ASSERT_EQ(spec.layers.size(), 4u);
  EXPECT_EQ(spec.layers[0].mixer, model::MixerKind::kMamba2);
  EXPECT_EQ(spec.layers[1].mixer, model::MixerKind::kAttention);
  EXPECT_EQ(spec.layers[2].mixer, model::MixerKind::kMamba2);
  EXPECT_EQ(spec.layers[0].ffn, model::FfnKind::kMoeShared);
  EXPECT_EQ(spec.hp.n_rot, 0u);  // Granite 4.0-H: no RoPE
}

TEST_P(HybridTest, GreedyTokensAndLogitsMatchReference) {
  auto engine = hybrid_engine(m_->spec, *reg_);
  const auto ref = reference_greedy(m_->spec, kPrompt, 8);
  const auto got = engine_greedy(*engine, kPrompt, 8);
  ASSERT_EQ(got.logits.size(), ref.logits.size());
  for (size_t i = 0; i < ref.logits.size(); ++i)
    EXPECT_LT(rel_err(got.logits[i], ref.logits[i]), kRefTol) << "step " << i;
  EXPECT_EQ(got.tokens, ref.tokens);
  // Decode steps replayed their recorded program (the recurrent batch is part of its shape).
  EXPECT_GT(engine->replayed_steps(), 0u);
}

TEST_P(HybridTest, PrefillThenDecodeEqualsOnePrefill) {
  // This compares the recurrent state a decode step carries on with that of one prefill, within
  // 1e-3. A CPU's decode steps take x in 8-bit blocks where prefill takes floats
  // (MatmulVariant::x_q8), which the fixtures' random recurrences amplify up to 0.23 of the logits
  // (qwen3next, PoCL): both run in float here.
  reg_->programs()->set_program_options("matmul", "-DNO_X_Q8=1");
  EngineOptions opts;
  opts.max_logit_rows = int(kPrompt.size());
  auto engine = hybrid_engine(m_->spec, *reg_, opts);
  auto& mem = engine->memory();
  const size_t V = m_->spec.hp.n_vocab, n = kPrompt.size();
  // One step of every token, all logits.
  const auto whole = mem.create();
  mem.reserve(whole, int32_t(n));
  StepBatch b;
  b.seqs = {whole};
  b.tokens = kPrompt;
  b.token_seq.assign(n, 0);
  b.token_pos = positions(0, n);
  b.logit_rows = positions(0, n);
  const std::vector<float> all = engine->forward(b);
  mem.free(whole);
  // The reference's one pass agrees.
  ReferenceModel net(m_->spec);
  auto kv = net.new_kv_state();
  const std::vector<float> ref = net.forward(kPrompt, positions(0, n), kv, true);
  for (size_t t = 0; t < n; ++t)
    EXPECT_LT(rel_err(row(all, t, V), row(ref, t, V)), kRefTol) << "position " << t;
  // A prefill of 4 tokens, then one token per step.
  const auto seq = mem.create();
  mem.reserve(seq, 4);
  StepBatch p;
  p.seqs = {seq};
  p.tokens.assign(kPrompt.begin(), kPrompt.begin() + 4);
  p.token_seq.assign(4, 0);
  p.token_pos = positions(0, 4);
  p.logit_rows = positions(0, 4);
  const std::vector<float> first = engine->forward(p);
  for (size_t t = 0; t < 4; ++t)
    EXPECT_LT(rel_err(row(first, t, V), row(all, t, V)), 1e-3) << "prefill position " << t;
  for (size_t t = 4; t < n; ++t) {
    const auto r = mem.reserve(seq, 1);
    StepBatch d;
    d.seqs = {seq};
    d.tokens = {kPrompt[t]};
    d.token_seq = {0};
    d.token_pos = {r.first_pos};
    d.logit_rows = {0};
    EXPECT_LT(rel_err(engine->forward(d), row(all, t, V)), 1e-3) << "decode position " << t;
  }
  mem.free(seq);
}

// One step holding a decode token of a running sequence and prefill chunks of two new ones: each
// sequence's state slot and KV advance on their own.
TEST_P(HybridTest, BatchedSequencesEqualSeparateRuns) {
  auto engine = hybrid_engine(m_->spec, *reg_);
  auto& mem = engine->memory();
  const std::vector<int32_t> pa(kPrompt.begin(), kPrompt.begin() + 5), pb{1, 310, 311, 312},
      pc{1, 320};
  const auto a = mem.create();
  mem.reserve(a, int32_t(pa.size()));
  StepBatch first;
  first.seqs = {a};
  first.tokens = pa;
  first.token_seq.assign(pa.size(), 0);
  first.token_pos = positions(0, pa.size());
  first.logit_rows = {int32_t(pa.size()) - 1};
  engine->forward(first);
  const auto b = mem.create(), c = mem.create();
  const auto ra = mem.reserve(a, 1);
  mem.reserve(b, int32_t(pb.size()));
  mem.reserve(c, int32_t(pc.size()));
  StepBatch step;
  step.seqs = {b, a, c};
  step.tokens = pb;
  step.tokens.push_back(330);
  step.tokens.insert(step.tokens.end(), pc.begin(), pc.end());
  step.token_seq = {0, 0, 0, 0, 1, 2, 2};
  step.token_pos = {0, 1, 2, 3, ra.first_pos, 0, 1};
  step.logit_rows = {3, 4, 6};
  const std::vector<float> got = engine->forward(step);
  const size_t V = m_->spec.hp.n_vocab;
  ReferenceModel net(m_->spec);
  auto kv_a = net.new_kv_state();
  net.forward(pa, positions(0, pa.size()), kv_a);
  const int32_t t330 = 330, pos_a = int32_t(pa.size());
  const auto ref_a = net.forward({&t330, 1}, {&pos_a, 1}, kv_a);
  auto kv_b = net.new_kv_state(), kv_c = net.new_kv_state();
  const auto ref_b = net.forward(pb, positions(0, pb.size()), kv_b);
  const auto ref_c = net.forward(pc, positions(0, pc.size()), kv_c);
  EXPECT_LT(rel_err(row(got, 0, V), ref_b), kRefTol);
  EXPECT_LT(rel_err(row(got, 1, V), ref_a), kRefTol);
  EXPECT_LT(rel_err(row(got, 2, V), ref_c), kRefTol);
  for (auto s : {a, b, c}) mem.free(s);
}

// A fork shares the parent's KV blocks and gets a copy of its recurrent state: both continue from
// the same point with different tokens, as two copies of the reference's state do.
TEST_P(HybridTest, ForkContinuesAsItsParent) {
  // Two sequences' decode steps on 8-bit x: the qwen3next fixture's recurrences take them 0.12
  // relative off the float reference (2-core Xeon, AVX-512): its matmuls run in float here.
  if (GetParam() == "qwen3next") reg_->programs()->set_program_options("matmul", "-DNO_X_Q8=1");
  auto engine = hybrid_engine(m_->spec, *reg_);
  auto& mem = engine->memory();
  const auto parent = mem.create();
  mem.reserve(parent, int32_t(kPrompt.size()));
  StepBatch p;
  p.seqs = {parent};
  p.tokens = kPrompt;
  p.token_seq.assign(kPrompt.size(), 0);
  p.token_pos = positions(0, kPrompt.size());
  p.logit_rows = {int32_t(kPrompt.size()) - 1};
  engine->forward(p);
  const auto child = mem.fork(parent);
  ReferenceModel net(m_->spec);
  auto kv_parent = net.new_kv_state();
  net.forward(kPrompt, positions(0, kPrompt.size()), kv_parent);
  auto kv_child = kv_parent;
  for (int i = 0; i < 3; ++i) {
    const auto rp = mem.reserve(parent, 1), rc = mem.reserve(child, 1);
    const int32_t tp = 310 + i, tc = 320 + i;
    StepBatch d;
    d.seqs = {parent, child};
    d.tokens = {tp, tc};
    d.token_seq = {0, 1};
    d.token_pos = {rp.first_pos, rc.first_pos};
    d.logit_rows = {0, 1};
    const std::vector<float> got = engine->forward(d);
    const size_t V = m_->spec.hp.n_vocab;
    const auto ref_p = net.forward({&tp, 1}, {&rp.first_pos, 1}, kv_parent);
    const auto ref_c = net.forward({&tc, 1}, {&rc.first_pos, 1}, kv_child);
    EXPECT_LT(rel_err(row(got, 0, V), ref_p), kRefTol) << "parent step " << i;
    EXPECT_LT(rel_err(row(got, 1, V), ref_c), kRefTol) << "child step " << i;
  }
  mem.free(child);
  mem.free(parent);
}

// Each Mamba2 layer keeps conv state (d_conv - 1 = 3 taps of 128 + 2 x 2 x 16 channels) and SSM
// state (16 x 128) per sequence, f32: reserved per slot in the plan, allocated in the pool, a slot
// per running sequence.
// Both prefill forms of the recurrent mixers (Mamba2's SSD scan and DeltaNet's chunked delta
// rule; their token-by-token kernels), forced on these devices: a 70-token prompt (chunks of 32,
// 32 and 6 tokens), then decode steps through the recurrent kernels from the state they left.
TEST_P(HybridTest, EachPrefillFormMatchesReference) {
  std::vector<int32_t> prompt{1};
  for (int i = 0; i < 69; ++i) prompt.push_back(300 + (i * 7) % 60);
  const auto ref = reference_greedy(m_->spec, prompt, 6);
  using P = EngineOptions::ScanPrefill;
  for (P form : {P::kChunked, P::kRecurrent}) {
    SCOPED_TRACE(form == P::kChunked ? "chunked" : "recurrent");
    EngineOptions opts;
    opts.scan_prefill = form;
    auto engine = hybrid_engine(m_->spec, *reg_, opts);
    const auto got = engine_greedy(*engine, prompt, 6);
    ASSERT_EQ(got.logits.size(), ref.logits.size());
    for (size_t i = 0; i < ref.logits.size(); ++i)
      EXPECT_LT(rel_err(got.logits[i], ref.logits[i]), kRefTol) << "step " << i;
    EXPECT_EQ(got.tokens, ref.tokens);
  }
}

TEST_P(GraniteHybridTest, RecurrentStateIsReservedPerSequence) {
  const auto& spec = m_->spec;
  const uint64_t per_seq = (3 * 192 + 16 * 128) * 4;
  EXPECT_EQ(Mamba2Mixer::state_bytes(spec), per_seq);
  const auto fp = footprint_of(spec, 256);
  for (size_t l = 0; l < spec.layers.size(); ++l)
    EXPECT_EQ(fp.layers[l].state_bytes, l == 1 ? 0u : per_seq) << "layer " << l;
  EngineOptions opts;
  opts.max_sequences = 3;
  auto engine = hybrid_engine(spec, *reg_, opts);
  uint64_t planned = 0;
  for (uint64_t b : engine->plan().state_bytes) planned += b;
  EXPECT_EQ(planned, 3 * per_seq * 3);  // 3 Mamba2 layers x 3 sequences
  const kv::RecurrentStatePool* pool = engine->memory().states();
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(pool->n_slots(), 3);
  EXPECT_EQ(pool->layer_bytes(0), per_seq);
  EXPECT_EQ(pool->layer_bytes(1), 0u);
  auto& mem = engine->memory();
  const auto a = mem.create(), b = mem.create(), c = mem.create();
  EXPECT_EQ(pool->slots_free(), 0);
  try {
    mem.create();
    ADD_FAILURE() << "a fourth sequence got a state slot";
  } catch (const kv::KvCacheFullError& e) {
    EXPECT_NE(std::string(e.what()).find("recurrent-state slots"), std::string::npos) << e.what();
  }
  for (auto s : {a, b, c}) mem.free(s);
  EXPECT_EQ(pool->slots_free(), 3);
}

// Qwen3-Next's layout: full_attention_interval 4 makes layer 3 gated attention and 0-2 Gated
// DeltaNet; every layer MoE with the gated shared expert; RoPE over a quarter of each head.
TEST_P(Qwen3NextTest, FixtureHasDeltaNetAndGatedAttentionLayers) {
  const auto& spec = m_->spec;
  ASSERT_EQ(spec.layers.size(), 4u);
  for (size_t l = 0; l < 4; ++l) {
    EXPECT_EQ(spec.layers[l].mixer,
              l == 3 ? model::MixerKind::kAttention : model::MixerKind::kGatedDeltaNet)
        << l;
    EXPECT_EQ(spec.layers[l].n_head_kv, l == 3 ? 2u : 0u) << l;
    EXPECT_EQ(spec.layers[l].ffn, model::FfnKind::kMoeShared) << l;
    EXPECT_NE(spec.layers[l].gate_inp_shexp, nullptr) << l;
  }
  EXPECT_TRUE(spec.arch->gated_attention);
  EXPECT_EQ(spec.layers[3].wq->dims[1], 2u * spec.hp.q_dim());  // query + gate per head
  EXPECT_EQ(spec.hp.n_rot, 8u);
}

// Each Gated DeltaNet layer keeps conv state (d_conv - 1 = 3 taps of q | k | v: 2 x 2 x 16 + 64
// channels) and the delta rule's state (16 x 4 value heads of 16) per sequence, f32.
TEST_P(Qwen3NextTest, RecurrentStateIsReservedPerSequence) {
  const auto& spec = m_->spec;
  const uint64_t per_seq = (3 * 128 + 16 * 64) * 4;
  EXPECT_EQ(GatedDeltaNetMixer::state_bytes(spec), per_seq);
  const auto fp = footprint_of(spec, 256);
  for (size_t l = 0; l < spec.layers.size(); ++l)
    EXPECT_EQ(fp.layers[l].state_bytes, l == 3 ? 0u : per_seq) << "layer " << l;
  EngineOptions opts;
  opts.max_sequences = 2;
  auto engine = hybrid_engine(spec, *reg_, opts);
  uint64_t planned = 0;
  for (uint64_t b : engine->plan().state_bytes) planned += b;
  EXPECT_EQ(planned, 3 * per_seq * 2);  // 3 DeltaNet layers x 2 sequences
  const kv::RecurrentStatePool* pool = engine->memory().states();
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(pool->layer_bytes(2), per_seq);
  EXPECT_EQ(pool->layer_bytes(3), 0u);
}

std::string param_name(const ::testing::TestParamInfo<std::string>& info) {
  return info.param;
}

INSTANTIATE_TEST_SUITE_P(Kinds, HybridTest,
                         ::testing::Values("granitehybrid", "qwen3next", "qwen3next_f32",
                                           "qwen3next_fused"),
                         param_name);
INSTANTIATE_TEST_SUITE_P(Kinds, GraniteHybridTest, ::testing::Values("granitehybrid"), param_name);
INSTANTIATE_TEST_SUITE_P(Kinds, Qwen3NextTest, ::testing::Values("qwen3next"), param_name);

}  // namespace
}  // namespace tessera::engine::test
