// Fixture models of every architecture: they load with the expected hyper-parameters, run, are
// deterministic, incremental decoding matches one batched pass, and bad files give named errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "host/engine/reference_model.h"
#include "host/engine/sampler.h"
#include "host/gguf/gguf.h"
#include "host/model/fixtures.h"
#include "host/model/model_spec.h"

namespace tessera::model {

using engine::KvState;
using engine::ReferenceModel;
namespace {

gguf::GgufFile load(const FixtureOptions& o) {
  return gguf::GgufFile::from_memory(make_fixture(o).to_bytes(), "fixture-" + o.kind + ".gguf");
}

std::string error_of(const FixtureOptions& o) {
  const auto file = load(o);
  try {
    ModelSpec::from_gguf(file);
  } catch (const TesseraError& e) {
    return e.what();
  }
  return "no error";
}

std::vector<int32_t> positions_from(int64_t first, size_t n) {
  std::vector<int32_t> p(n);
  for (size_t i = 0; i < n; ++i) p[i] = int32_t(first + int64_t(i));
  return p;
}

std::vector<int32_t> greedy(const ReferenceModel& net, std::vector<int32_t> prompt, int n) {
  KvState kv = net.new_kv_state();
  auto logits = net.forward(prompt, positions_from(0, prompt.size()), kv);
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    const int32_t next = engine::Sampler::argmax(logits);
    out.push_back(next);
    const int32_t pos = int32_t(kv.n_past);
    logits = net.forward(std::span<const int32_t>(&next, 1), std::span<const int32_t>(&pos, 1), kv);
  }
  return out;
}

class FixtureKinds : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureKinds, LoadsRunsAndIsDeterministic) {
  FixtureOptions o;
  o.kind = GetParam();
  const auto file = load(o);
  const ModelSpec spec = ModelSpec::from_gguf(file);
  const bool hybrid = o.kind == "granitehybrid" || o.kind == "qwen3next";
  EXPECT_EQ(spec.layers.size(), hybrid ? 4u : 2u);
  EXPECT_EQ(spec.hp.n_vocab, fixture_vocab().tokens.size());
  EXPECT_FALSE(spec.output_tied);
  const bool moe = o.kind == "mixtral" || o.kind == "qwen3moe" || o.kind == "qwen2moe" ||
                   o.kind == "gpt-oss" || hybrid;
  EXPECT_EQ(spec.layers[0].is_moe(), moe);
  EXPECT_EQ(spec.hp.n_expert > 0, moe);
  const size_t attention_layer = o.kind == "qwen3next" ? 3 : 1;
  EXPECT_EQ(spec.layers[attention_layer].q_norm != nullptr, o.kind.rfind("qwen3", 0) == 0);

  const ReferenceModel net(spec);
  const std::vector<int32_t> prompt{1, 300, 301, 302, 40};
  KvState kv = net.new_kv_state();
  const auto logits = net.forward(prompt, positions_from(0, prompt.size()), kv);
  ASSERT_EQ(logits.size(), spec.hp.n_vocab);
  for (float v : logits) ASSERT_TRUE(std::isfinite(v));
  EXPECT_EQ(kv.n_past, 5);

  const auto a = greedy(net, prompt, 8);
  EXPECT_EQ(a, greedy(net, prompt, 8));
  // a second file written from the same options is byte-identical, and runs identically
  const auto file2 = load(o);
  ASSERT_EQ(file2.file_size(), file.file_size());
  EXPECT_EQ(0, std::memcmp(file2.bytes(), file.bytes(), file.file_size()));
  // another seed gives another model
  FixtureOptions other = o;
  other.seed = 2;
  const auto file3 = load(other);
  const ModelSpec spec3 = ModelSpec::from_gguf(file3);
  KvState kv3 = ReferenceModel(spec3).new_kv_state();
  EXPECT_NE(ReferenceModel(spec3).forward(prompt, positions_from(0, prompt.size()), kv3), logits);
}

TEST_P(FixtureKinds, IncrementalDecodingMatchesOneBatch) {
  FixtureOptions o;
  o.kind = GetParam();
  const auto file = load(o);
  const ModelSpec spec = ModelSpec::from_gguf(file);
  const ReferenceModel net(spec);
  const std::vector<int32_t> tokens{1, 280, 290, 300, 310, 320, 330};
  KvState batch_kv = net.new_kv_state();
  const auto all = net.forward(tokens, positions_from(0, tokens.size()), batch_kv, true);
  ASSERT_EQ(all.size(), tokens.size() * spec.hp.n_vocab);

  // first three as one batch, then one at a time
  KvState kv = net.new_kv_state();
  std::vector<float> step = net.forward(std::span(tokens).first(3), positions_from(0, 3), kv);
  for (size_t t = 2; t < tokens.size(); ++t) {
    if (t > 2) {
      const int32_t pos = int32_t(t);
      step = net.forward(std::span(tokens).subspan(t, 1), std::span<const int32_t>(&pos, 1), kv);
    }
    for (size_t i = 0; i < spec.hp.n_vocab; ++i) {
      ASSERT_NEAR(step[i], all[t * spec.hp.n_vocab + i], 1e-3f) << "token " << t << " logit " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllKinds, FixtureKinds, ::testing::ValuesIn(fixture_kinds()),
                         [](const auto& info) {
                           std::string name = info.param;  // gtest names: no '-'
                           for (char& ch : name)
                             if (ch == '-') ch = '_';
                           return name;
                         });

TEST(FixtureModel, TiedOutputUsesTokenEmbedding) {
  FixtureOptions o;
  o.kind = "qwen3";
  o.tie_output = true;
  const auto file = load(o);
  const ModelSpec spec = ModelSpec::from_gguf(file);
  EXPECT_TRUE(spec.output_tied);
  EXPECT_EQ(spec.output, spec.token_embd);
  const ReferenceModel net(spec);
  KvState kv = net.new_kv_state();
  const std::vector<int32_t> prompt{1, 2, 3};
  EXPECT_EQ(net.forward(prompt, positions_from(0, 3), kv).size(), spec.hp.n_vocab);
}

TEST(FixtureModel, HyperParametersFromMetadata) {
  FixtureOptions o;
  o.kind = "qwen3moe";
  const auto file = load(o);
  const HParams hp = ModelSpec::from_gguf(file).hp;
  EXPECT_EQ(hp.head_dim, 32u);  // key_length, not n_embd / n_head = 16
  EXPECT_EQ(hp.q_dim(), 128u);
  EXPECT_EQ(hp.n_expert, 8u);
  EXPECT_EQ(hp.n_expert_used, 2u);
  EXPECT_EQ(hp.n_ff_exp, 256u);
  EXPECT_FLOAT_EQ(hp.rope_freq_base, 1e6f);
  EXPECT_FLOAT_EQ(hp.rms_eps, 1e-5f);
  o.kind = "mixtral";
  const auto f2 = load(o);
  EXPECT_EQ(ModelSpec::from_gguf(f2).hp.n_ff_exp, 256u);  // llama experts use feed_forward_length
}

TEST(FixtureModel, Qwen2MoeHasBiasesAndASharedExpert) {
  FixtureOptions o;
  o.kind = "qwen2moe";
  const auto file = load(o);
  const ModelSpec spec = ModelSpec::from_gguf(file);
  EXPECT_EQ(spec.hp.n_ff_exp, 256u);
  EXPECT_EQ(spec.hp.n_ff_shexp, 512u);
  EXPECT_FALSE(spec.arch->normalize_topk);
  for (const auto& l : spec.layers) {
    EXPECT_EQ(l.ffn, FfnKind::kMoeShared);
    EXPECT_TRUE(l.is_moe());
    EXPECT_NE(l.bq, nullptr);
    EXPECT_NE(l.gate_inp_shexp, nullptr);
    EXPECT_NE(l.down_shexp, nullptr);
  }
  // The shared expert and the biases take part: zeroing either changes the reference's logits.
  const std::vector<int32_t> prompt{1, 300, 301, 302};
  auto logits_with = [&](const char* zeroed) {
    FixtureOptions z = o;
    auto writer = make_fixture(z);
    auto bytes = writer.to_bytes();
    auto f = gguf::GgufFile::from_memory(std::move(bytes), "q2.gguf");
    ModelSpec sp = ModelSpec::from_gguf(f);
    if (zeroed) {
      for (auto& l : sp.layers) {
        const gguf::TensorInfo* t = std::string(zeroed) == "bias" ? l.bq : l.down_shexp;
        std::memset(const_cast<uint8_t*>(t->data), 0, t->n_bytes());
      }
    }
    const ReferenceModel net(sp);
    KvState kv = net.new_kv_state();
    return net.forward(prompt, positions_from(0, prompt.size()), kv);
  };
  const auto base = logits_with(nullptr);
  EXPECT_NE(base, logits_with("bias"));
  EXPECT_NE(base, logits_with("shared"));
}

TEST(FixtureModel, BiasesItCannotApplyAreRefused) {
  FixtureOptions o;
  o.kind = "llama";
  auto with_tensor = [&](const std::string& name, uint64_t n) {
    auto writer = make_fixture(o);
    writer.add_tensor_f32(name, {n}, std::vector<float>(n, 0.5f));
    const auto f = gguf::GgufFile::from_memory(writer.to_bytes(), "biased.gguf");
    try {
      ModelSpec::from_gguf(f);
    } catch (const ModelError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  // An output-projection bias: llama.cpp would add it; Tessera must not silently drop it.
  const std::string out_bias = with_tensor("blk.0.attn_output.bias", 64);
  EXPECT_NE(out_bias.find("blk.0.attn_output.bias"), std::string::npos) << out_bias;
  EXPECT_NE(out_bias.find("not supported"), std::string::npos) << out_bias;
  // q without k and v.
  const std::string partial = with_tensor("blk.1.attn_q.bias", 64);
  EXPECT_NE(partial.find("blk.1.attn_k.bias"), std::string::npos) << partial;
  EXPECT_NE(partial.find("all be present or all absent"), std::string::npos) << partial;
}

TEST(FixtureModel, PerLayerArraysDescribeEachLayer) {
  FixtureOptions o;
  o.kind = "llama";
  o.layer_arrays = true;
  const auto file = load(o);
  const ModelSpec spec = ModelSpec::from_gguf(file);
  ASSERT_EQ(spec.layers.size(), 2u);
  EXPECT_EQ(spec.layers[0].n_head_kv, 2u);
  EXPECT_EQ(spec.layers[1].n_head_kv, 4u);
  EXPECT_EQ(spec.layers[0].n_ff, 256u);
  EXPECT_EQ(spec.layers[1].n_ff, 512u);
  EXPECT_EQ(spec.hp.n_head_kv, 4u);  // the largest, for buffer sizes
  EXPECT_EQ(spec.hp.n_ff, 512u);
  for (const auto& l : spec.layers) {
    EXPECT_EQ(l.mixer, MixerKind::kAttention);
    EXPECT_EQ(l.ffn, FfnKind::kDense);
    EXPECT_EQ(l.window, 0u);
  }
  EXPECT_EQ(greedy(ReferenceModel(spec), {1, 300, 301}, 4).size(), 4u);
  o.kind = "qwen3moe";
  const auto moe = load(o);
  const ModelSpec moe_spec = ModelSpec::from_gguf(moe);
  EXPECT_EQ(moe_spec.layers[1].ffn, FfnKind::kMoe);
  EXPECT_EQ(moe_spec.layers[1].n_head_kv, 4u);
}

TEST(FixtureModel, BadPerLayerArraysAreNamed) {
  auto error_with = [](const std::string& kind, const std::string& key, gguf::Value v) {
    FixtureOptions o;
    o.kind = kind;
    auto w = make_fixture(o);
    w.set(kind == "mixtral" ? "llama." + key : kind + "." + key, std::move(v));
    const auto file = gguf::GgufFile::from_memory(w.to_bytes(), "fixture.gguf");
    try {
      ModelSpec::from_gguf(file);
    } catch (const TesseraError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  std::string msg = error_with("llama", "attention.head_count_kv", gguf::Value::i32s({2, 2, 2}));
  EXPECT_NE(msg.find("array of 3 values for 2 layers"), std::string::npos) << msg;
  msg = error_with("qwen3", "attention.head_count_kv", gguf::Value::i32s({2, 0}));
  EXPECT_NE(msg.find("layer 1 has 0 KV heads (a recurrent layer)"), std::string::npos) << msg;
  msg = error_with("llama", "attention.head_count_kv", gguf::Value::i32s({3, 2}));
  EXPECT_NE(msg.find("multiple of head_count_kv 3 (layer 0)"), std::string::npos) << msg;
  msg = error_with("mixtral", "feed_forward_length", gguf::Value::i32s({256, 512}));
  EXPECT_NE(msg.find("take it as their one width"), std::string::npos) << msg;
  msg = error_with("llama", "feed_forward_length", gguf::Value::i32s({256, 0}));
  EXPECT_NE(msg.find("layer 1: must be > 0"), std::string::npos) << msg;
}

// granitehybrid: Mamba2 layers where head_count_kv is 0, Granite's multipliers, no RoPE when
// rope.scaling.finetuned is false, an ungated shared expert when its width is given.
TEST(FixtureModel, GraniteHybridLayersAndHyperParameters) {
  FixtureOptions o;
  o.kind = "granitehybrid";
  const auto file = load(o);
  const ModelSpec spec = ModelSpec::from_gguf(file);
  ASSERT_EQ(spec.layers.size(), 4u);
  for (size_t i = 0; i < spec.layers.size(); ++i) {
    const auto& l = spec.layers[i];
    EXPECT_EQ(l.mixer, i == 1 ? MixerKind::kAttention : MixerKind::kMamba2) << i;
    EXPECT_EQ(l.n_head_kv, i == 1 ? 2u : 0u) << i;
    EXPECT_EQ(l.ffn, FfnKind::kMoeShared) << i;
    EXPECT_EQ(l.gate_inp_shexp, nullptr) << i;  // ungated
    EXPECT_EQ(l.ssm_in != nullptr, i != 1) << i;
  }
  const HParams& hp = spec.hp;
  EXPECT_EQ(hp.n_head_kv, 2u);
  EXPECT_EQ(hp.n_rot, 0u);
  EXPECT_EQ(hp.ssm_d_conv, 4u);
  EXPECT_EQ(hp.ssm_d_inner, 128u);
  EXPECT_EQ(hp.ssm_d_state, 16u);
  EXPECT_EQ(hp.ssm_n_head, 8u);
  EXPECT_EQ(hp.ssm_n_group, 2u);
  EXPECT_EQ(hp.ssm_in_rows(), 128u + 192u + 8u);
  EXPECT_EQ(hp.n_ff_exp, hp.n_ff);  // experts take feed_forward_length
  EXPECT_EQ(hp.n_ff_shexp, 128u);
  EXPECT_FLOAT_EQ(hp.embedding_scale, 12.0f);
  EXPECT_FLOAT_EQ(hp.residual_scale, 0.22f);
  EXPECT_FLOAT_EQ(hp.attention_scale, 1.0f / 16.0f);
  EXPECT_FLOAT_EQ(hp.logit_scale, 8.0f);
}

// Granite 4.0-H-Tiny's proportion: attention in 1 layer of 10 (layers 3, 13, ...).
TEST(FixtureModel, GraniteHybridAttentionPeriod) {
  FixtureOptions o;
  o.kind = "granitehybrid";
  o.n_layer = 20;
  o.attn_period = 10;
  const auto file = load(o);
  const ModelSpec spec = ModelSpec::from_gguf(file);
  for (size_t i = 0; i < spec.layers.size(); ++i)
    EXPECT_EQ(spec.layers[i].mixer, i % 10 == 3 ? MixerKind::kAttention : MixerKind::kMamba2) << i;
  o.kind = "llama";
  EXPECT_THROW(make_fixture(o), std::invalid_argument);
}

// Malformed hybrid metadata: each error names the key or tensor and what is wrong with it.
TEST(FixtureModel, BadHybridMetadataIsNamed) {
  auto error_with = [](const std::string& key, std::optional<gguf::Value> v) {
    FixtureOptions o;
    o.kind = "granitehybrid";
    if (!v) o.drop_key = "granitehybrid." + key;
    auto w = make_fixture(o);
    if (v) w.set("granitehybrid." + key, std::move(*v));
    const auto file = gguf::GgufFile::from_memory(w.to_bytes(), "fixture.gguf");
    try {
      ModelSpec::from_gguf(file);
    } catch (const TesseraError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  std::string msg = error_with("ssm.state_size", std::nullopt);
  EXPECT_NE(msg.find("'granitehybrid.ssm.state_size': missing"), std::string::npos) << msg;
  msg = error_with("ssm.group_count", gguf::Value::u32(3));
  EXPECT_NE(msg.find("'granitehybrid.ssm.group_count': 3 must divide ssm.time_step_rank 8"),
            std::string::npos)
      << msg;
  msg = error_with("ssm.conv_kernel", gguf::Value::u32(9));
  EXPECT_NE(msg.find("'granitehybrid.ssm.conv_kernel': 9 must be in [1, 8]"), std::string::npos)
      << msg;
  msg = error_with("ssm.inner_size", gguf::Value::u32(100));
  EXPECT_NE(msg.find("'granitehybrid.ssm.inner_size': 100 must be a positive multiple of "
                     "ssm.time_step_rank 8"),
            std::string::npos)
      << msg;
  msg = error_with("ssm.time_step_rank", gguf::Value::u32(0));
  EXPECT_NE(msg.find("'granitehybrid.ssm.time_step_rank': must be > 0"), std::string::npos) << msg;
  msg = error_with("rope.scaling.finetuned", gguf::Value::u32(0));
  EXPECT_NE(msg.find("'granitehybrid.rope.scaling.finetuned': must be a boolean"),
            std::string::npos)
      << msg;
  msg = error_with("residual_scale", gguf::Value::f32(NAN));
  EXPECT_NE(msg.find("'granitehybrid.residual_scale': nan must be finite"), std::string::npos)
      << msg;
  msg = error_with("attention.head_count_kv", gguf::Value::i32s({0, 0, 0, 0}));
  EXPECT_NE(msg.find("every layer has 0 KV heads (no attention layer)"), std::string::npos) << msg;
  msg = error_with("attention.head_count_kv", gguf::Value::i32s({0, 2, 0}));
  EXPECT_NE(msg.find("array of 3 values for 4 layers"), std::string::npos) << msg;
  // A Mamba2 tensor of the wrong shape.
  FixtureOptions o;
  o.kind = "granitehybrid";
  o.skew_tensor = "blk.2.ssm_a";
  msg = error_of(o);
  EXPECT_NE(msg.find("tensor 'blk.2.ssm_a': expected shape [1, 8], found [1, 9]"),
            std::string::npos)
      << msg;
  // A recurrent layer in an architecture without a recurrent mixer.
  o = {};
  o.kind = "qwen3";
  auto w = make_fixture(o);
  w.set("qwen3.attention.head_count_kv", gguf::Value::i32s({2, 0}));
  const auto file = gguf::GgufFile::from_memory(w.to_bytes(), "fixture.gguf");
  try {
    ModelSpec::from_gguf(file);
    ADD_FAILURE() << "qwen3 with a recurrent layer loaded";
  } catch (const TesseraError& e) {
    EXPECT_NE(std::string(e.what()).find("qwen3 has only attention layers"), std::string::npos)
        << e.what();
  }
}

// qwen3next: Gated DeltaNet layers where full_attention_interval says (layer i recurrent unless
// (i + 1) % interval == 0), gated attention (attn_q twice q_dim), partial RoPE, MoE with the
// sigmoid-gated shared expert, the FFN norm named post_attention_norm.
TEST(FixtureModel, Qwen3NextLayersAndHyperParameters) {
  FixtureOptions o;
  o.kind = "qwen3next";
  const auto file = load(o);
  const ModelSpec spec = ModelSpec::from_gguf(file);
  ASSERT_EQ(spec.layers.size(), 4u);
  for (size_t i = 0; i < spec.layers.size(); ++i) {
    const auto& l = spec.layers[i];
    EXPECT_EQ(l.mixer, i == 3 ? MixerKind::kAttention : MixerKind::kGatedDeltaNet) << i;
    EXPECT_EQ(l.n_head_kv, i == 3 ? 2u : 0u) << i;
    EXPECT_EQ(l.ffn, FfnKind::kMoeShared) << i;
    EXPECT_NE(l.gate_inp_shexp, nullptr) << i;  // gated
    EXPECT_EQ(l.ffn_norm->name, "blk." + std::to_string(i) + ".post_attention_norm.weight");
    EXPECT_EQ(l.ssm_qkv != nullptr, i != 3) << i;
  }
  EXPECT_EQ(spec.layers[3].wq->dims, (std::vector<uint64_t>{64, 256}));  // query + gate per head
  const HParams& hp = spec.hp;
  EXPECT_EQ(hp.head_dim, 32u);
  EXPECT_EQ(hp.n_rot, 8u);
  EXPECT_EQ(hp.ssm_d_conv, 4u);
  EXPECT_EQ(hp.ssm_d_inner, 64u);
  EXPECT_EQ(hp.ssm_d_state, 16u);
  EXPECT_EQ(hp.ssm_n_head, 4u);   // value heads
  EXPECT_EQ(hp.ssm_n_group, 2u);  // key heads
  EXPECT_EQ(hp.ssm_conv_channels(), 2u * 2 * 16 + 64);
  EXPECT_EQ(hp.n_ff_exp, 256u);
  EXPECT_EQ(hp.n_ff_shexp, 256u);
}

// The attention layers follow full_attention_interval (--attn-period), or the per-layer
// attention.recurrent_layers flags when the file has them; multi-token-prediction blocks
// (nextn_predict_layers) are not run.
TEST(FixtureModel, Qwen3NextAttentionLayers) {
  FixtureOptions o;
  o.kind = "qwen3next";
  o.n_layer = 8;
  o.attn_period = 3;
  {
    const auto file = load(o);
    const ModelSpec spec = ModelSpec::from_gguf(file);
    ASSERT_EQ(spec.layers.size(), 8u);
    for (size_t i = 0; i < spec.layers.size(); ++i)
      EXPECT_EQ(spec.layers[i].mixer,
                (i + 1) % 3 == 0 ? MixerKind::kAttention : MixerKind::kGatedDeltaNet)
          << i;
  }
  o = {};
  o.kind = "qwen3next";
  auto w = make_fixture(o);
  // The flags decide, not the interval: the fixture's own layout as flags loads; flags that make
  // layer 0 attention ask for its attention tensors (the fixture wrote DeltaNet ones there).
  w.set("qwen3next.attention.recurrent_layers",
        gguf::Value::array(gguf::ValueType::BOOL,
                           {gguf::Value::boolean(true), gguf::Value::boolean(true),
                            gguf::Value::boolean(true), gguf::Value::boolean(false)}));
  {
    const auto flagged = gguf::GgufFile::from_memory(w.to_bytes(), "f.gguf");
    EXPECT_EQ(ModelSpec::from_gguf(flagged).layers[3].mixer, MixerKind::kAttention);
  }
  w.set("qwen3next.attention.recurrent_layers",
        gguf::Value::array(gguf::ValueType::BOOL,
                           {gguf::Value::boolean(false), gguf::Value::boolean(true),
                            gguf::Value::boolean(true), gguf::Value::boolean(false)}));
  try {
    ModelSpec::from_gguf(gguf::GgufFile::from_memory(w.to_bytes(), "f.gguf"));
    ADD_FAILURE() << "layer 0 loaded as attention without attention tensors";
  } catch (const TesseraError& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'blk.0.attn_q.weight': missing"),
              std::string::npos)
        << e.what();
  }
  // Five blocks, the last a multi-token-prediction block: four layers run, the fourth attention.
  o.n_layer = 5;
  w = make_fixture(o);
  w.set("qwen3next.nextn_predict_layers", gguf::Value::u32(1));
  const auto file = gguf::GgufFile::from_memory(w.to_bytes(), "f.gguf");
  const ModelSpec spec = ModelSpec::from_gguf(file);
  ASSERT_EQ(spec.layers.size(), 4u);
  for (size_t i = 0; i < 4; ++i)
    EXPECT_EQ(spec.layers[i].mixer, i == 3 ? MixerKind::kAttention : MixerKind::kGatedDeltaNet);
}

// Malformed qwen3next metadata: each error names the key or tensor and what is wrong with it.
TEST(FixtureModel, BadQwen3NextMetadataIsNamed) {
  auto error_with = [](const std::string& key, std::optional<gguf::Value> v) {
    FixtureOptions o;
    o.kind = "qwen3next";
    if (!v) o.drop_key = "qwen3next." + key;
    auto w = make_fixture(o);
    if (v) w.set("qwen3next." + key, std::move(*v));
    const auto file = gguf::GgufFile::from_memory(w.to_bytes(), "fixture.gguf");
    try {
      ModelSpec::from_gguf(file);
    } catch (const TesseraError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  std::string msg = error_with("ssm.state_size", std::nullopt);
  EXPECT_NE(msg.find("'qwen3next.ssm.state_size': missing"), std::string::npos) << msg;
  msg = error_with("ssm.time_step_rank", gguf::Value::u32(3));
  EXPECT_NE(msg.find("'qwen3next.ssm.time_step_rank': 3 must be a positive multiple of "
                     "ssm.group_count 2"),
            std::string::npos)
      << msg;
  msg = error_with("ssm.inner_size", gguf::Value::u32(48));
  EXPECT_NE(msg.find("'qwen3next.ssm.inner_size': 48 must equal ssm.state_size x "
                     "ssm.time_step_rank (64)"),
            std::string::npos)
      << msg;
  msg = error_with("ssm.conv_kernel", gguf::Value::u32(0));
  EXPECT_NE(msg.find("'qwen3next.ssm.conv_kernel': 0 must be in [1, 8]"), std::string::npos) << msg;
  msg = error_with("ssm.group_count", gguf::Value::u32(0));
  EXPECT_NE(msg.find("'qwen3next.ssm.group_count': must be > 0 (the key heads)"), std::string::npos)
      << msg;
  msg = error_with("full_attention_interval", gguf::Value::u32(0));
  EXPECT_NE(msg.find("'qwen3next.full_attention_interval': must be > 0"), std::string::npos) << msg;
  // Interval 1: every layer attention, but the fixture's layers 0-2 hold DeltaNet tensors.
  msg = error_with("full_attention_interval", gguf::Value::u32(1));
  EXPECT_NE(msg.find("tensor 'blk.0.attn_q.weight': missing"), std::string::npos) << msg;
  // Interval 5 of 4 layers: no attention layer.
  msg = error_with("full_attention_interval", gguf::Value::u32(5));
  EXPECT_NE(msg.find("every layer has 0 KV heads (no attention layer)"), std::string::npos) << msg;
  msg = error_with("attention.recurrent_layers",
                   gguf::Value::array(gguf::ValueType::BOOL, {gguf::Value::boolean(true)}));
  EXPECT_NE(msg.find("'qwen3next.attention.recurrent_layers': array of 1 flags for 4 blocks"),
            std::string::npos)
      << msg;
  msg = error_with("attention.head_count_kv", gguf::Value::i32s({2, 2, 2, 0}));
  EXPECT_NE(msg.find("layer 3 is a full-attention layer but has 0 KV heads"), std::string::npos)
      << msg;
  msg = error_with("nextn_predict_layers", gguf::Value::u32(4));
  EXPECT_NE(msg.find("'qwen3next.nextn_predict_layers': 4 must be below block_count 4"),
            std::string::npos)
      << msg;
  msg = error_with("expert_count", std::nullopt);
  EXPECT_NE(msg.find("'qwen3next.expert_count': missing"), std::string::npos) << msg;
  // Tensors of the wrong shape: DeltaNet's A (one per value head), the gated attn_q.
  FixtureOptions o;
  o.kind = "qwen3next";
  o.skew_tensor = "blk.1.ssm_a";
  msg = error_of(o);
  EXPECT_NE(msg.find("tensor 'blk.1.ssm_a': expected shape [4], found [5]"), std::string::npos)
      << msg;
  o.skew_tensor = "blk.3.attn_q.weight";
  msg = error_of(o);
  EXPECT_NE(msg.find("tensor 'blk.3.attn_q.weight': expected shape [64, 256], found [64, 257]"),
            std::string::npos)
      << msg;
  o.skew_tensor = "blk.0.ssm_ba.weight";
  msg = error_of(o);
  EXPECT_NE(msg.find("tensor 'blk.0.ssm_ba.weight': expected shape [64, 8], found [64, 9]"),
            std::string::npos)
      << msg;
}

TEST(FixtureModel, UnknownArchitectureListsSupportedOnes) {
  FixtureOptions o;
  o.architecture_override = "gpt-j";
  const std::string msg = error_of(o);
  EXPECT_NE(msg.find("'gpt-j' is not supported"), std::string::npos) << msg;
  EXPECT_NE(msg.find("llama, qwen3, qwen3moe"), std::string::npos) << msg;
}

TEST(FixtureModel, ShapeMismatchNamesTensorAndShapes) {
  FixtureOptions o;
  o.kind = "llama";
  o.skew_tensor = "blk.1.attn_k.weight";
  const std::string msg = error_of(o);
  EXPECT_NE(msg.find("tensor 'blk.1.attn_k.weight'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("expected shape [64, 32], found [64, 33]"), std::string::npos) << msg;

  o.kind = "qwen3moe";
  o.skew_tensor = "blk.0.ffn_down_exps.weight";
  const std::string moe_msg = error_of(o);
  EXPECT_NE(moe_msg.find("expected shape [256, 64, 8], found [256, 64, 9]"), std::string::npos)
      << moe_msg;
}

TEST(FixtureModel, MissingMetadataIsNamed) {
  FixtureOptions o;
  o.kind = "qwen3";
  o.drop_key = "qwen3.attention.layer_norm_rms_epsilon";
  EXPECT_NE(error_of(o).find("qwen3.attention.layer_norm_rms_epsilon"), std::string::npos);
  o.kind = "qwen3moe";
  o.drop_key = "qwen3moe.expert_count";
  EXPECT_NE(error_of(o).find("qwen3moe.expert_count"), std::string::npos);
  o.kind = "llama";
  o.drop_key = "llama.block_count";
  EXPECT_NE(error_of(o).find("llama.block_count"), std::string::npos);
}

TEST(FixtureModel, RopeScalingFromMetadata) {
  FixtureOptions o;
  o.rope_scaling = true;
  auto w = make_fixture(o);
  {
    const auto file = gguf::GgufFile::from_memory(w.to_bytes(), "linear.gguf");
    const ModelSpec spec = ModelSpec::from_gguf(file);
    EXPECT_FLOAT_EQ(spec.hp.rope_freq_scale, 0.5f);
    ASSERT_NE(spec.rope_freqs, nullptr);
    EXPECT_EQ(spec.rope_freqs->dims, (std::vector<uint64_t>{8}));
  }
  w.set("llama.rope.scaling.type", gguf::Value::string("none"));  // llama.cpp ignores the factor
  {
    const auto file = gguf::GgufFile::from_memory(w.to_bytes(), "none.gguf");
    EXPECT_FLOAT_EQ(ModelSpec::from_gguf(file).hp.rope_freq_scale, 1.0f);
  }
  w.set("llama.rope.scaling.type", gguf::Value::string("yarn"));
  w.set("llama.rope.scaling.original_context_length", gguf::Value::u32(64));
  {
    // YaRN as llama.cpp derives it: factor 2, n_rot 16, base 10000, original context 64, beta 32
    // and 1: corr dims floor(16 ln(64 / (32 * 2 pi)) / (2 ln 10000)) clamped to 0 and
    // ceil(16 ln(64 / (2 pi)) / (2 ln 10000)) = ceil(2.016) = 3; magnitude 1 + 0.1 ln 2.
    const auto file = gguf::GgufFile::from_memory(w.to_bytes(), "yarn.gguf");
    const ModelSpec spec = ModelSpec::from_gguf(file);
    ASSERT_EQ(spec.hp.n_rot, 16u);
    EXPECT_FLOAT_EQ(spec.hp.rope_freq_scale, 0.5f);
    EXPECT_TRUE(spec.hp.rope_yarn.enabled());
    EXPECT_EQ(spec.hp.rope_yarn.ext_factor, 1.0f);
    EXPECT_EQ(spec.hp.rope_yarn.corr_low, 0.0f);
    EXPECT_EQ(spec.hp.rope_yarn.corr_high, 3.0f);
    EXPECT_NEAR(spec.hp.rope_yarn.mscale, 1.0 + 0.1 * std::log(2.0), 1e-6);
  }
  w.set("llama.rope.scaling.attn_factor", gguf::Value::f32(0.0f));
  const auto file = gguf::GgufFile::from_memory(w.to_bytes(), "yarn.gguf");
  try {
    ModelSpec::from_gguf(file);
    FAIL() << "attn_factor 0 accepted";
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("llama.rope.scaling.attn_factor"), std::string::npos)
        << e.what();
  }
}

TEST(FixtureModel, RopeFreqsAloneAndBadScalingAreChecked) {
  FixtureOptions o;
  o.rope_freqs = true;
  {
    const auto file = gguf::GgufFile::from_memory(make_fixture(o).to_bytes(), "freqs.gguf");
    const ModelSpec spec = ModelSpec::from_gguf(file);
    EXPECT_FLOAT_EQ(spec.hp.rope_freq_scale, 1.0f);
    ASSERT_NE(spec.rope_freqs, nullptr);
  }
  o.kind = "qwen3";  // llama.cpp reads rope_freqs for llama only: the fixture refuses to write it
  EXPECT_THROW(make_fixture(o), std::invalid_argument);

  auto error_of = [](const gguf::GgufWriter& w) {
    try {
      const auto file = gguf::GgufFile::from_memory(w.to_bytes(), "bad.gguf");
      ModelSpec::from_gguf(file);
    } catch (const ModelError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  // A divisor of 0 would make every angle of its pair infinite.
  FixtureOptions plain;
  auto w = make_fixture(plain);
  std::vector<float> factors(8, 1.0f);
  factors[5] = 0.0f;
  w.add_tensor_f32("rope_freqs.weight", {8}, factors);
  EXPECT_NE(error_of(w).find("rope_freqs.weight"), std::string::npos) << error_of(w);
  // Scaling types other than none / linear / yarn change more than the angle and are refused by
  // name.
  for (const char* type : {"longrope", "su"}) {
    auto t = make_fixture(plain);
    t.set("llama.rope.scaling.type", gguf::Value::string(type));
    EXPECT_NE(error_of(t).find(std::string("'") + type + "' is not supported"), std::string::npos)
        << error_of(t);
  }
  auto inf = make_fixture(plain);
  inf.set("llama.rope.scaling.factor", gguf::Value::f32(INFINITY));
  EXPECT_NE(error_of(inf).find("llama.rope.scaling.factor"), std::string::npos) << error_of(inf);
}

TEST(FixtureModel, ForwardRejectsBadInput) {
  FixtureOptions o;
  const auto file = load(o);
  const ModelSpec spec = ModelSpec::from_gguf(file);
  const ReferenceModel net(spec);
  KvState kv = net.new_kv_state();
  const std::vector<int32_t> bad{1, int32_t(spec.hp.n_vocab)};
  EXPECT_THROW(net.forward(bad, positions_from(0, 2), kv), std::out_of_range);
  EXPECT_EQ(kv.n_past, 0);
  const std::vector<int32_t> ok{1, 2};
  EXPECT_THROW(net.forward(ok, positions_from(0, 1), kv), std::invalid_argument);
  KvState wrong(5);
  EXPECT_THROW(net.forward(ok, positions_from(0, 2), wrong), std::invalid_argument);
}

}  // namespace
}  // namespace tessera::model
