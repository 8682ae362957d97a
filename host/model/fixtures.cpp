// Fixture model generator: hyper-parameters per kind, seeded Gaussian weights (Box-Muller over
// mt19937_64 so every platform writes the same bytes), a mix of quant formats per tensor role; or,
// for benchmark-sized models, one quant format and a cheap approximately Gaussian generator.
#include "host/model/fixtures.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include "host/ops/quant/quant.h"

namespace tessera::model {
namespace {

using gguf::TensorType;
using gguf::Value;

// The fixture's logit_scale (Granite 3/4 ship 6 to 16); its output weights are scaled up by it.
constexpr float kGraniteLogitScale = 8.0f;

struct Shape {
  std::string arch;
  uint32_t n_layer = 2, n_embd = 64, n_head = 4, n_head_kv = 2, head_dim = 16;
  uint32_t n_ff = 256, n_ctx = 512;
  uint32_t n_expert = 0, n_expert_used = 0, n_ff_exp = 0;
  uint32_t n_ff_shexp = 0;  // shared expert width (0: none)
  float rope_base = 10000.0f;
  bool qk_norm = false;
  bool qkv_bias = false;
  bool explicit_head_dim = false;
  bool gpt_oss = false;  // sinks, output/router/expert biases, post_attention_norm, MXFP4 experts
  // granitehybrid: Mamba2 layers except where i % attn_period == attn_offset (attention, no RoPE),
  // Granite's multipliers, MoE with an ungated shared expert.
  bool granite = false;
  uint32_t attn_period = 3, attn_offset = 1;
  uint32_t ssm_d_conv = 4, ssm_d_state = 16, ssm_head_dim = 16, ssm_n_group = 2;
  // qwen3next: Gated DeltaNet layers except every attn_period-th (full_attention_interval; gated
  // attention with partial RoPE), ssm_n_group key heads and ssm_n_v_head value heads of
  // ssm_d_state, MoE with a gated shared expert, post_attention_norm as the FFN norm.
  bool qwen3next = false;
  uint32_t ssm_n_v_head = 4;
  bool is_attention(uint32_t layer) const {
    if (qwen3next) return (layer + 1) % attn_period == 0;
    return !granite || layer % attn_period == attn_offset;
  }
};

Shape shape_of(const std::string& kind) {
  Shape s;
  if (kind == "llama") {
    s.arch = "llama";
  } else if (kind == "mixtral") {
    s.arch = "llama";
    s.n_expert = 4;
    s.n_expert_used = 2;
    s.n_ff_exp = s.n_ff;
  } else if (kind == "qwen3") {
    s.arch = "qwen3";
    s.head_dim = 32;  // q_dim 128 != n_embd: exercises key_length
    s.explicit_head_dim = true;
    s.qk_norm = true;
    s.rope_base = 1000000.0f;
  } else if (kind == "qwen3moe") {
    s.arch = "qwen3moe";
    s.head_dim = 32;
    s.explicit_head_dim = true;
    s.qk_norm = true;
    s.rope_base = 1000000.0f;
    s.n_ff = 512;
    s.n_expert = 8;
    s.n_expert_used = 2;
    s.n_ff_exp = 256;
  } else if (kind == "qwen2moe") {
    // Qwen1.5-MoE's structure: q/k/v biases, un-normalized top-k, a gated shared expert wider than
    // the routed ones.
    s.arch = "qwen2moe";
    s.rope_base = 1000000.0f;
    s.qkv_bias = true;
    s.n_ff = 512;
    s.n_expert = 8;
    s.n_expert_used = 2;
    s.n_ff_exp = 256;
    s.n_ff_shexp = 512;
  } else if (kind == "gpt-oss") {
    // gpt-oss-20b's structure at toy size: q/k/v/o biases, attention sinks, window layers (even)
    // and full ones, YaRN, 4 experts top-2 with biases, MXFP4 expert weights.
    s.arch = "gpt-oss";
    s.gpt_oss = true;
    s.head_dim = 32;
    s.explicit_head_dim = true;
    s.qkv_bias = true;
    s.rope_base = 150000.0f;
    s.n_expert = 4;
    s.n_expert_used = 2;
    s.n_ff_exp = 256;
  } else if (kind == "granitehybrid") {
    // Granite 4.0-H-Tiny's structure at toy size: Mamba2 layers (d_inner 2 x n_embd, 8 heads of
    // 16 in 2 groups, d_state 16, conv 4) with an attention layer (no RoPE) at 1, 4, ...; 4 experts
    // top-2 of feed_forward_length's width plus an ungated shared expert; Granite's multipliers.
    s.arch = "granitehybrid";
    s.granite = true;
    s.n_layer = 4;
    s.n_expert = 4;
    s.n_expert_used = 2;
    s.n_ff_exp = s.n_ff;
    s.n_ff_shexp = 128;
  } else if (kind == "qwen3next") {
    // Qwen3-Next-80B-A3B's structure at toy size: Gated DeltaNet layers (2 key heads, 4 value
    // heads of 16, conv 4) with gated attention every 4th layer (q/k norm, NeoX RoPE over a
    // quarter of head_dim), 8 experts top-2 plus a gated shared expert as wide as one.
    s.arch = "qwen3next";
    s.qwen3next = true;
    s.n_layer = 4;
    s.attn_period = 4;
    s.head_dim = 32;
    s.explicit_head_dim = true;
    s.qk_norm = true;
    s.rope_base = 10000000.0f;
    s.n_ff = 512;
    s.n_expert = 8;
    s.n_expert_used = 2;
    s.n_ff_exp = 256;
    s.n_ff_shexp = 256;
  } else {
    std::string kinds;
    for (const auto& k : fixture_kinds()) kinds += (kinds.empty() ? "" : ", ") + k;
    throw std::invalid_argument("fixture: unknown kind '" + kind + "' (kinds: " + kinds + ")");
  }
  return s;
}

// Standard normal draws from the raw generator output (std::normal_distribution is not portable).
class Gaussian {
 public:
  explicit Gaussian(uint64_t seed) : rng_(seed) {}
  float next() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = (double(rng_() >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
    const double u2 = double(rng_() >> 11) * 0x1.0p-53;
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = float(r * std::sin(2.0 * M_PI * u2));
    has_spare_ = true;
    return float(r * std::cos(2.0 * M_PI * u2));
  }

 private:
  std::mt19937_64 rng_;
  float spare_ = 0.0f;
  bool has_spare_ = false;
};

// Approximately Gaussian draws for benchmark-sized models: the centred sum of four 16-bit uniforms
// from one splitmix64 output (variance 1/3, rescaled). Ten times cheaper than Box-Muller, which
// matters at ~1G weights on a 2-core machine; the tails are bounded (|x| <= 2*sqrt(3)), harmless.
class FastNormal {
 public:
  explicit FastNormal(uint64_t seed) : state_(seed) {}
  float next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const uint32_t sum = uint32_t(z & 0xFFFF) + uint32_t((z >> 16) & 0xFFFF) +
                         uint32_t((z >> 32) & 0xFFFF) + uint32_t(z >> 48);
    return (float(sum) * (1.0f / 65536.0f) - 2.0f) * 1.7320508f;
  }

 private:
  uint64_t state_;
};

// Applies FixtureOptions' size overrides and checks the result is a model llama.cpp can load.
void apply_sizes(Shape& s, const FixtureOptions& o) {
  auto set = [](uint32_t& field, uint32_t v) {
    if (v) field = v;
  };
  set(s.n_layer, o.n_layer);
  set(s.n_embd, o.n_embd);
  set(s.n_head, o.n_head);
  set(s.n_head_kv, o.n_head_kv);
  if (o.head_dim) {
    s.head_dim = o.head_dim;
    s.explicit_head_dim = true;
  } else if (!s.explicit_head_dim && (o.n_embd || o.n_head)) {
    s.head_dim = s.n_embd / s.n_head;
  }
  set(s.n_ff, o.n_ff);
  set(s.n_ctx, o.n_ctx);
  if ((s.arch == "llama" || s.granite) && s.n_expert > 0 && o.n_ff) s.n_ff_exp = s.n_ff;
  set(s.n_ff_exp, o.n_ff_exp);
  set(s.n_expert, o.n_expert);
  set(s.n_expert_used, o.n_expert_used);
  if (s.n_expert > 0 && s.n_ff_exp == 0) s.n_ff_exp = s.n_ff;
  if (o.attn_period) {
    if (!s.granite && !s.qwen3next)
      throw std::invalid_argument("fixture: attn_period is for granitehybrid and qwen3next");
    s.attn_period = o.attn_period;
    s.attn_offset = o.attn_period / 3;
  }
  auto fail = [](const std::string& what) { throw std::invalid_argument("fixture: " + what); };
  if (s.n_head_kv == 0 || s.n_head % s.n_head_kv != 0)
    fail("n_head (" + std::to_string(s.n_head) + ") must be a multiple of n_head_kv (" +
         std::to_string(s.n_head_kv) + ")");
  if (s.head_dim == 0 || s.head_dim % 2 != 0) fail("head_dim must be even and > 0");
  if (!s.explicit_head_dim && s.head_dim * s.n_head != s.n_embd)
    fail("n_embd must equal n_head * head_dim for kind llama/mixtral (or give head_dim)");
  if (s.n_expert_used > s.n_expert)
    fail("n_expert_used (" + std::to_string(s.n_expert_used) + ") exceeds n_expert (" +
         std::to_string(s.n_expert) + ")");
  if (s.arch == "qwen3moe" && s.n_expert_used == 0) fail("qwen3moe needs n_expert_used > 0");
  if (s.n_layer == 0 || s.n_embd == 0) fail("n_layer and n_embd must be > 0");
  if (s.granite) {
    // Larger models: Granite's own Mamba2 head size and state (64, 128), one group.
    if (s.n_embd >= 512) {
      s.ssm_head_dim = 64;
      s.ssm_d_state = 128;
      s.ssm_n_group = 1;
    }
    if (s.n_ff_exp != s.n_ff) fail("granitehybrid's experts take n_ff as their width");
    if ((2 * s.n_embd) % s.ssm_head_dim != 0)
      fail("granitehybrid: 2 x n_embd must be a multiple of the SSM head size " +
           std::to_string(s.ssm_head_dim));
  }
  if (s.qwen3next) {
    // Larger models: Qwen3-Next's own head size (128), a key head per 128 of n_embd, two value
    // heads per key head (d_inner 2 x n_embd, as the 80B model); the shared expert as wide as a
    // routed one.
    if (s.n_embd >= 512) {
      s.ssm_d_state = 128;
      s.ssm_n_group = s.n_embd / 128;
      s.ssm_n_v_head = 2 * s.ssm_n_group;
    }
    s.n_ff_shexp = s.n_ff_exp;
  }
  // Every quantized row must hold whole blocks: 32 weights, 256 for the mix's Q4_K ffn_down.
  const uint32_t down_len = s.n_expert > 0 ? s.n_ff_exp : s.n_ff;
  for (uint32_t len : {s.n_embd, s.n_head * s.head_dim, s.n_ff, s.n_ff_exp, down_len}) {
    const uint32_t block = (len == down_len && o.weight_type.empty()) ? 256 : 32;
    if (len % block != 0)
      fail("row length " + std::to_string(len) + " is not a multiple of the quant block (" +
           std::to_string(block) + ")");
  }
}

}  // namespace

std::vector<std::string> fixture_kinds() {
  return {"llama",    "mixtral", "qwen3",         "qwen3moe",
          "qwen2moe", "gpt-oss", "granitehybrid", "qwen3next"};
}

std::vector<std::string> harmony_tokens() {
  return {"<|startoftext|>", "<|endoftext|>", "<|return|>",  "<|constrain|>", "<|channel|>",
          "<|start|>",       "<|end|>",       "<|message|>", "<|call|>"};
}

// A harmony chat template written for the fixtures: the shape of gpt-oss's (system message,
// messages, generation prompt) with none of its tool rendering.
constexpr const char* kHarmonyFixtureTemplate =
    "{{- '<|start|>system<|message|>Knowledge cutoff: 2024-06\\n\\n# Valid channels: analysis, "
    "final.<|end|>' -}}\n"
    "{%- for message in messages -%}\n"
    "{%- if message.role == 'assistant' -%}\n"
    "{{- '<|start|>assistant<|channel|>final<|message|>' + message.content + '<|end|>' -}}\n"
    "{%- else -%}\n"
    "{{- '<|start|>' + message.role + '<|message|>' + message.content + '<|end|>' -}}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}\n";

FixtureVocab fixture_vocab() {
  FixtureVocab v;
  auto add = [&](std::string text, float score, int32_t type) {
    v.tokens.push_back(std::move(text));
    v.scores.push_back(score);
    v.types.push_back(type);
  };
  add("<unk>", 0.0f, 2);
  add("<s>", 0.0f, 3);
  add("</s>", 0.0f, 3);
  static const char* kHex = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b)
    add(std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">", 0.0f, 6);
  const std::string space = "\xE2\x96\x81";  // U+2581, SentencePiece's word boundary
  std::set<std::string> seen;
  add(space, -1.0f, 1);
  seen.insert(space);
  for (char c = 0x21; c < 0x7F; ++c) {
    add(std::string(1, c), -1.0f, 1);
    seen.insert(std::string(1, c));
  }
  static const char* kWords[] = {
      "Once", "upon", "a",    "time",  "there", "was",   "little", "girl",  "boy",    "named",
      "Lily", "Tom",  "who",  "liked", "to",    "play",  "in",     "the",   "park",   "with",
      "her",  "his",  "dog",  "cat",   "and",   "one",   "day",    "she",   "he",     "saw",
      "big",  "red",  "ball", "tree",  "sun",   "happy", "said",   "hello", "friend", "they",
      "went", "home", "mom",  "help",  "find",  "of",    "it",     "is",    "on",     "The",
      "run",  "jump", "fun",  "very",  "good",  "bird",  "sky",    "blue",  "water",  "toy"};
  for (const char* w : kWords) {
    std::string piece = space;
    for (const char* p = w; *p; ++p) {
      piece += *p;
      if (seen.insert(piece).second) add(piece, float(piece.size()) * 0.5f, 1);
    }
  }
  return v;
}

gguf::GgufWriter make_fixture(const FixtureOptions& o) {
  Shape s = shape_of(o.kind);
  apply_sizes(s, o);
  if (o.fused_ssm_in && !s.qwen3next)
    throw std::invalid_argument("fixture: fused_ssm_in is for qwen3next, not '" + o.kind + "'");
  // One format for every matrix (bench models) or the per-role mix.
  std::optional<TensorType> uniform;
  if (o.weight_type == "Q4_0") {
    uniform = TensorType::Q4_0;
  } else if (o.weight_type == "Q8_0") {
    uniform = TensorType::Q8_0;
  } else if (o.weight_type == "MXFP4") {
    if (s.n_expert == 0)
      throw std::invalid_argument("fixture: weight_type MXFP4 is for the experts of an MoE kind");
    uniform = TensorType::MXFP4;
  } else if (!o.weight_type.empty()) {
    throw std::invalid_argument("fixture: weight_type '" + o.weight_type +
                                "' is not supported (Q4_0, Q8_0, MXFP4 or empty for the mix)");
  }
  FixtureVocab vocab = fixture_vocab();
  const uint64_t harmony_first = vocab.tokens.size();
  if (o.harmony) {
    if (!s.gpt_oss)
      throw std::invalid_argument("fixture: harmony tokens are for the gpt-oss kind, not '" +
                                  o.kind + "'");
    for (const auto& t : harmony_tokens()) {
      vocab.tokens.push_back(t);
      vocab.scores.push_back(0.0f);
      vocab.types.push_back(3);  // control
    }
  }
  if (o.n_vocab) {
    if (o.n_vocab < vocab.tokens.size())
      throw std::invalid_argument("fixture: n_vocab " + std::to_string(o.n_vocab) +
                                  " is below the base vocabulary size " +
                                  std::to_string(vocab.tokens.size()));
    for (size_t i = vocab.tokens.size(); i < o.n_vocab; ++i) {
      vocab.tokens.push_back("<extra_" + std::to_string(i) + ">");
      vocab.scores.push_back(-1000.0f);
      vocab.types.push_back(1);
    }
  }
  const uint64_t n_vocab = vocab.tokens.size();
  const std::string& a = s.arch;

  gguf::GgufWriter writer;
  // Every key goes through here so a test can drop one (FixtureOptions::drop_key).
  struct KeySetter {
    gguf::GgufWriter& w;
    const std::string& drop;
    void set(std::string key, Value v) {
      if (key != drop) w.set(std::move(key), std::move(v));
    }
  } w{writer, o.drop_key};
  w.set("general.architecture",
        Value::string(o.architecture_override.empty() ? a : o.architecture_override));
  w.set("general.name", Value::string("tessera-fixture-" + o.kind));
  w.set(a + ".block_count", Value::u32(s.n_layer));
  w.set(a + ".context_length", Value::u32(s.n_ctx));
  w.set(a + ".embedding_length", Value::u32(s.n_embd));
  // Per layer: KV heads and (dense kinds) FFN width, uniform unless layer_arrays.
  auto layer_kv = [&](uint32_t i) {
    if (!s.is_attention(i)) return 0u;  // a Mamba2 layer (granitehybrid)
    return o.layer_arrays && i % 2 ? s.n_head : s.n_head_kv;
  };
  auto layer_ff = [&](uint32_t i) {
    return o.layer_arrays && s.n_expert == 0 && i % 2 ? s.n_ff * 2 : s.n_ff;
  };
  if (o.layer_arrays || s.granite) {
    std::vector<int32_t> kv, ff;
    for (uint32_t i = 0; i < s.n_layer; ++i) {
      kv.push_back(int32_t(layer_kv(i)));
      ff.push_back(int32_t(layer_ff(i)));
    }
    w.set(a + ".feed_forward_length", Value::i32s(ff));
    w.set(a + ".attention.head_count_kv", Value::i32s(kv));
  } else {
    w.set(a + ".feed_forward_length", Value::u32(s.n_ff));
    w.set(a + ".attention.head_count_kv", Value::u32(s.n_head_kv));
  }
  w.set(a + ".attention.head_count", Value::u32(s.n_head));
  if (s.explicit_head_dim) {
    w.set(a + ".attention.key_length", Value::u32(s.head_dim));
    w.set(a + ".attention.value_length", Value::u32(s.head_dim));
  }
  // Qwen3-Next rotates a quarter of each head (partial_rotary_factor 0.25).
  w.set(a + ".rope.dimension_count", Value::u32(s.qwen3next ? s.head_dim / 4 : s.head_dim));
  w.set(a + ".rope.freq_base", Value::f32(s.rope_base));
  w.set(a + ".attention.layer_norm_rms_epsilon", Value::f32(1e-5f));
  if (s.gpt_oss) {
    // The window gpt-oss's converter writes (no pattern: llama.cpp windows even layers); YaRN as
    // gpt-oss declares it, at toy scale.
    w.set(a + ".attention.sliding_window", Value::u32(o.window ? o.window : 8));
    if (o.rope_scaling || o.rope_yarn || o.rope_freqs)
      throw std::invalid_argument("fixture: gpt-oss always has its own YaRN scaling");
    // With an explicit n_ctx, gpt-oss's own proportion (131072 = 32 x 4096): factor n_ctx / orig
    // over orig = n_ctx / 32 (at least 64 tokens); otherwise factor 8 over 64 tokens.
    const uint32_t orig = o.n_ctx ? std::max<uint32_t>(64, s.n_ctx / 32) : 64;
    const float factor = o.n_ctx ? float(s.n_ctx) / float(orig) : 8.0f;
    w.set(a + ".rope.scaling.type", Value::string("yarn"));
    w.set(a + ".rope.scaling.factor", Value::f32(factor));
    w.set(a + ".rope.scaling.original_context_length", Value::u32(orig));
  } else if (o.window > 0) {
    // Alternating window / full layers (even layers windowed, as gpt-oss), stated per layer: the
    // form model_spec applies for every architecture (llama.cpp ignores both keys for these).
    w.set(a + ".attention.sliding_window", Value::u32(o.window));
    std::vector<Value> flags;
    for (uint32_t i = 0; i < s.n_layer; ++i) flags.push_back(Value::boolean(i % 2 == 0));
    w.set(a + ".attention.sliding_window_pattern",
          Value::array(gguf::ValueType::BOOL, std::move(flags)));
  }
  if (o.rope_scaling && o.rope_yarn)
    throw std::invalid_argument("fixture: rope_scaling and rope_yarn are two scaling types");
  if (o.rope_scaling) {
    w.set(a + ".rope.scaling.type", Value::string("linear"));
    w.set(a + ".rope.scaling.factor", Value::f32(2.0f));
  }
  if (o.rope_yarn) {
    w.set(a + ".rope.scaling.type", Value::string("yarn"));
    w.set(a + ".rope.scaling.factor", Value::f32(4.0f));
    w.set(a + ".rope.scaling.original_context_length", Value::u32(16));
  }
  if (s.granite) {
    const uint32_t d_inner = 2 * s.n_embd;
    w.set(a + ".ssm.conv_kernel", Value::u32(s.ssm_d_conv));
    w.set(a + ".ssm.state_size", Value::u32(s.ssm_d_state));
    w.set(a + ".ssm.group_count", Value::u32(s.ssm_n_group));
    w.set(a + ".ssm.inner_size", Value::u32(d_inner));
    w.set(a + ".ssm.time_step_rank", Value::u32(d_inner / s.ssm_head_dim));
    // Granite 4.0-H's converter: no RoPE in the attention layers.
    w.set(a + ".rope.scaling.finetuned", Value::boolean(false));
    w.set(a + ".embedding_scale", Value::f32(12.0f));
    w.set(a + ".residual_scale", Value::f32(0.22f));
    w.set(a + ".attention.scale", Value::f32(1.0f / float(s.head_dim)));
    w.set(a + ".logit_scale", Value::f32(kGraniteLogitScale));
  }
  if (s.qwen3next) {
    w.set(a + ".ssm.conv_kernel", Value::u32(s.ssm_d_conv));
    w.set(a + ".ssm.state_size", Value::u32(s.ssm_d_state));
    w.set(a + ".ssm.group_count", Value::u32(s.ssm_n_group));
    w.set(a + ".ssm.time_step_rank", Value::u32(s.ssm_n_v_head));
    w.set(a + ".ssm.inner_size", Value::u32(s.ssm_d_state * s.ssm_n_v_head));
    w.set(a + ".full_attention_interval", Value::u32(s.attn_period));
  }
  if (s.n_expert > 0) {
    w.set(a + ".expert_count", Value::u32(s.n_expert));
    w.set(a + ".expert_used_count", Value::u32(s.n_expert_used));
    if (a == "qwen3moe" || a == "qwen2moe" || a == "gpt-oss" || a == "qwen3next")
      w.set(a + ".expert_feed_forward_length", Value::u32(s.n_ff_exp));
    if (s.n_ff_shexp) w.set(a + ".expert_shared_feed_forward_length", Value::u32(s.n_ff_shexp));
  }
  w.set("tokenizer.ggml.model", Value::string("llama"));
  w.set("tokenizer.ggml.tokens", Value::strings(vocab.tokens));
  w.set("tokenizer.ggml.scores", Value::f32s(vocab.scores));
  w.set("tokenizer.ggml.token_type", Value::i32s(vocab.types));
  w.set("tokenizer.ggml.bos_token_id", Value::u32(1));
  w.set("tokenizer.ggml.eos_token_id", Value::u32(2));
  w.set("tokenizer.ggml.unknown_token_id", Value::u32(0));
  w.set("tokenizer.ggml.add_bos_token", Value::boolean(true));
  w.set("tokenizer.ggml.add_eos_token", Value::boolean(false));
  if (o.harmony) w.set("tokenizer.chat_template", Value::string(kHarmonyFixtureTemplate));

  Gaussian g(o.seed);
  uint64_t tensor_ordinal = 0;  // seeds the fast generator's streams
  bool skewed = false;
  // While set, tensor() keeps a tensor's bytes here instead of writing it (fused_ssm_in).
  bool hold = false;
  std::map<std::string, std::pair<TensorType, std::vector<uint8_t>>> held;
  // std: weights of a matrix with `cols` inputs get std scale/sqrt(cols) so activations stay O(1).
  auto tensor = [&](const std::string& name, std::vector<uint64_t> dims, TensorType type,
                    float scale, float mean = 0.0f) {
    uint64_t n = 1;
    for (uint64_t d : dims) n *= d;
    std::vector<float> data(n);
    const float std_dev = dims.size() == 1 ? scale : scale / std::sqrt(float(dims[0]));
    if (uniform) {
      // Chunks of 2^20 draws, each its own stream seeded by (seed, tensor, chunk): written in
      // parallel (a gpt-oss-20b-sized file is ~20G weights) and still the same bytes every time.
      constexpr uint64_t kChunk = uint64_t(1) << 20;
      const uint64_t ordinal = tensor_ordinal++;
      tbb::parallel_for(uint64_t(0), (n + kChunk - 1) / kChunk, [&](uint64_t c) {
        FastNormal fast(o.seed * 0x9E3779B97F4A7C15ull + (ordinal << 32) + c);
        const uint64_t end = std::min(n, (c + 1) * kChunk);
        for (uint64_t i = c * kChunk; i < end; ++i) data[i] = mean + std_dev * fast.next();
      });
    } else {
      for (float& x : data) x = mean + std_dev * g.next();
    }
    if (o.harmony && name == "output.weight") {
      // The message-structure tokens' logits get a wider spread, so that even a random model
      // writes channel and message markers often enough for the harmony parser to see them.
      const auto ht = harmony_tokens();
      for (uint64_t k = 0; k < ht.size(); ++k)
        if (ht[k] == "<|channel|>" || ht[k] == "<|message|>" || ht[k] == "<|start|>" ||
            ht[k] == "<|end|>")
          for (uint64_t c = 0; c < dims[0]; ++c) data[(harmony_first + k) * dims[0] + c] *= 1.5f;
    }
    if (name == o.skew_tensor) {
      dims.back() += 1;
      data.resize(data.size() / (dims.back() - 1) * dims.back(), 0.0f);
      skewed = true;
    }
    const bool bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    // Mamba2's small per-channel tensors (conv taps, A, D, the group norm) stay F32.
    const bool ssm_small = name.find(".ssm_") != std::string::npos &&
                           name.find(".ssm_in.") == std::string::npos &&
                           name.find(".ssm_out.") == std::string::npos;
    if (uniform && dims.size() > 1 && !bias && !ssm_small &&
        name.find("ffn_gate_inp") == std::string::npos) {
      // Weight matrices only (gpt-oss's per-expert biases stay F32, as ggml's add_id needs).
      // MXFP4 is an expert format (as gpt-oss ships it): the other matrices are Q8_0.
      const bool expert = name.find("_exps.") != std::string::npos;
      type = (*uniform == TensorType::MXFP4 && !expert) ? TensorType::Q8_0 : *uniform;
    }
    if (o.all_f32) type = TensorType::F32;
    // Quantized here, row by row, with the quant library's reference quantizer.
    const uint64_t row_len = dims[0], stride = gguf::row_bytes(type, row_len);
    std::vector<uint8_t> bytes(stride * (data.size() / row_len));
    tbb::parallel_for(tbb::blocked_range<uint64_t>(0, data.size() / row_len),
                      [&](const tbb::blocked_range<uint64_t>& rows) {
                        for (uint64_t r = rows.begin(); r < rows.end(); ++r)
                          quant::quantize_row(type, data.data() + r * row_len,
                                              bytes.data() + r * stride, int64_t(row_len));
                      });
    if (hold)
      held[name] = {type, std::move(bytes)};
    else
      writer.add_tensor(name, type, std::move(dims), std::move(bytes));
  };
  const uint64_t E = s.n_embd, Q = uint64_t(s.n_head) * s.head_dim;
  if (o.rope_freqs && a != "llama")
    throw std::invalid_argument("fixture: rope_freqs is for llama kinds (llama, mixtral), not '" +
                                o.kind + "'");
  if ((o.rope_scaling || o.rope_freqs) && a == "llama") {
    // Divisors growing with the pair index, like Llama 3's low-frequency stretch (1 .. ~4.75).
    std::vector<float> factors(s.head_dim / 2);
    for (size_t i = 0; i < factors.size(); ++i) factors[i] = 1.0f + 0.5f * float(i);
    writer.add_tensor_f32("rope_freqs.weight", {factors.size()}, factors);
  }
  // Granite multiplies embeddings by 12 and divides logits by logit_scale: the fixture's weights
  // undo both, so activations and logits keep the sizes of the other kinds.
  const float embd_scale = s.granite ? 1.0f / 12.0f : 1.0f;
  tensor("token_embd.weight", {E, n_vocab}, TensorType::Q8_0, embd_scale * std::sqrt(float(E)));
  for (uint32_t i = 0; i < s.n_layer; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    const uint64_t KV = uint64_t(layer_kv(i)) * s.head_dim;
    tensor(p + "attn_norm.weight", {E}, TensorType::F32, 0.1f, 1.0f);
    if (!s.is_attention(i) && s.qwen3next) {
      // Gated DeltaNet: q | k | v projection (key heads' q and k, value heads' v), the output gate
      // z, per key head its value heads' beta then alpha logits, the depthwise conv over q | k |
      // v, dt bias, A = -exp(A_log) < 0 (decays exp(A softplus(alpha + dt_bias)) ~ 0.5), the
      // per-head norm, the out-projection.
      const uint64_t DK = s.ssm_d_state, NK = s.ssm_n_group, NV = s.ssm_n_v_head;
      const uint64_t DI = NV * DK, CH = 2 * NK * DK + DI;
      const TensorType gate_type = o.fused_ssm_in ? TensorType::Q8_0 : TensorType::Q4_0;
      hold = o.fused_ssm_in;
      tensor(p + "attn_qkv.weight", {E, CH}, TensorType::Q8_0, 1.0f);
      tensor(p + "attn_gate.weight", {E, DI}, gate_type, 1.0f);
      if (hold) {
        // The first converter's row order: per key head q, k, then its value heads' v and z.
        hold = false;
        const auto& [type, qkv] = held[p + "attn_qkv.weight"];
        const std::vector<uint8_t>& z = held[p + "attn_gate.weight"].second;
        if (held[p + "attn_gate.weight"].first != type)
          throw std::logic_error("fixture: fused ssm_in parts differ in format");
        const uint64_t row = gguf::row_bytes(type, E), r = NV / NK;
        std::vector<uint8_t> fused;
        auto rows = [&](const std::vector<uint8_t>& from, uint64_t first, uint64_t n) {
          fused.insert(fused.end(), from.begin() + long(first * row),
                       from.begin() + long((first + n) * row));
        };
        for (uint64_t kh = 0; kh < NK; ++kh) {
          rows(qkv, kh * DK, DK);                        // q
          rows(qkv, NK * DK + kh * DK, DK);              // k
          rows(qkv, 2 * NK * DK + kh * r * DK, r * DK);  // v of its value heads
          rows(z, kh * r * DK, r * DK);                  // z of its value heads
        }
        writer.add_tensor(p + "ssm_in.weight", type, {E, CH + DI}, std::move(fused));
      }
      tensor(p + "ssm_ba.weight", {E, 2 * NV}, TensorType::F32, 1.0f);
      tensor(p + "ssm_conv1d.weight", {s.ssm_d_conv, CH}, TensorType::F32, 1.0f);
      tensor(p + "ssm_dt.bias", {NV}, TensorType::F32, 0.5f);
      tensor(p + "ssm_a", {NV}, TensorType::F32, 0.2f, -1.0f);
      tensor(p + "ssm_norm.weight", {DK}, TensorType::F32, 0.1f, 1.0f);
      tensor(p + "ssm_out.weight", {DI, E}, TensorType::Q4_0, 1.0f);
    } else if (!s.is_attention(i)) {
      // Mamba2: in-projection z | x | B | C | dt, depthwise conv over x | B | C, per-head dt bias
      // (softplus(dt + bias) ~ 0.1), A = -exp(A_log) < 0, D, the grouped norm, out-projection.
      const uint64_t DI = 2 * E, NH = DI / s.ssm_head_dim, NG = s.ssm_n_group;
      const uint64_t CH = DI + 2 * NG * s.ssm_d_state;
      tensor(p + "ssm_in.weight", {E, DI + CH + NH}, TensorType::Q8_0, 1.0f);
      tensor(p + "ssm_conv1d.weight", {s.ssm_d_conv, CH}, TensorType::F32, 1.0f);
      tensor(p + "ssm_conv1d.bias", {CH}, TensorType::F32, 0.1f);
      tensor(p + "ssm_dt.bias", {NH}, TensorType::F32, 0.5f, -2.0f);
      tensor(p + "ssm_a", {1, NH}, TensorType::F32, 0.5f, -2.0f);
      tensor(p + "ssm_d", {1, NH}, TensorType::F32, 0.5f, 1.0f);
      tensor(p + "ssm_norm.weight", {DI / NG, NG}, TensorType::F32, 0.5f, 1.0f);
      tensor(p + "ssm_out.weight", {DI, E}, TensorType::Q4_0, 1.0f);
    } else {
      // Qwen3-Next's attn_q: per head the query's rows, then its output gate's.
      tensor(p + "attn_q.weight", {E, s.qwen3next ? 2 * Q : Q}, TensorType::Q8_0, 1.0f);
      tensor(p + "attn_k.weight", {E, KV}, TensorType::Q4_0, 1.0f);
      tensor(p + "attn_v.weight", {E, KV}, TensorType::Q8_0, 1.0f);
      tensor(p + "attn_output.weight", {Q, E}, TensorType::F16, 1.0f);
      if (s.qkv_bias) {
        tensor(p + "attn_q.bias", {Q}, TensorType::F32, 0.5f);
        tensor(p + "attn_k.bias", {KV}, TensorType::F32, 0.5f);
        tensor(p + "attn_v.bias", {KV}, TensorType::F32, 0.5f);
      }
      if (s.qk_norm) {
        tensor(p + "attn_q_norm.weight", {s.head_dim}, TensorType::F32, 0.1f, 1.0f);
        tensor(p + "attn_k_norm.weight", {s.head_dim}, TensorType::F32, 0.1f, 1.0f);
      }
    }
    if (s.gpt_oss) {
      // Biases of absolute size (2-D ones get scale / sqrt(rows) in tensor(): undone here).
      const uint64_t F = s.n_ff_exp, N = s.n_expert;
      tensor(p + "attn_output.bias", {E}, TensorType::F32, 0.5f);
      tensor(p + "attn_sinks.weight", {s.n_head}, TensorType::F32, 1.0f);
      tensor(p + "post_attention_norm.weight", {E}, TensorType::F32, 0.1f, 1.0f);
      tensor(p + "ffn_gate_inp.weight", {E, N}, TensorType::F32, o.router_scale);
      tensor(p + "ffn_gate_inp.bias", {N}, TensorType::F32, 1.0f);
      tensor(p + "ffn_gate_exps.weight", {E, F, N}, TensorType::MXFP4, 1.0f);
      tensor(p + "ffn_up_exps.weight", {E, F, N}, TensorType::MXFP4, 1.0f);
      tensor(p + "ffn_down_exps.weight", {F, E, N}, TensorType::MXFP4, 1.0f);
      tensor(p + "ffn_gate_exps.bias", {F, N}, TensorType::F32, 0.5f * std::sqrt(float(F)));
      tensor(p + "ffn_up_exps.bias", {F, N}, TensorType::F32, 0.5f * std::sqrt(float(F)));
      tensor(p + "ffn_down_exps.bias", {E, N}, TensorType::F32, 0.5f * std::sqrt(float(E)));
      continue;
    }
    tensor(p + (s.qwen3next ? "post_attention_norm.weight" : "ffn_norm.weight"), {E},
           TensorType::F32, 0.1f, 1.0f);
    if (s.n_expert > 0) {
      const uint64_t F = s.n_ff_exp, N = s.n_expert;
      tensor(p + "ffn_gate_inp.weight", {E, N}, TensorType::F32, o.router_scale);
      tensor(p + "ffn_gate_exps.weight", {E, F, N}, TensorType::Q4_0, 1.0f);
      tensor(p + "ffn_up_exps.weight", {E, F, N}, TensorType::Q8_0, 1.0f);
      tensor(p + "ffn_down_exps.weight", {F, E, N}, TensorType::Q4_K, 1.0f);
      if (s.n_ff_shexp) {
        const uint64_t FS = s.n_ff_shexp;
        if (!s.granite)  // Granite's shared expert is ungated
          tensor(p + "ffn_gate_inp_shexp.weight", {E}, TensorType::F32, 0.3f);
        tensor(p + "ffn_gate_shexp.weight", {E, FS}, TensorType::Q8_0, 1.0f);
        tensor(p + "ffn_up_shexp.weight", {E, FS}, TensorType::Q8_0, 1.0f);
        tensor(p + "ffn_down_shexp.weight", {FS, E}, TensorType::Q4_0, 1.0f);
      }
    } else {
      const uint64_t F = layer_ff(i);
      tensor(p + "ffn_gate.weight", {E, F}, TensorType::Q4_0, 1.0f);
      tensor(p + "ffn_up.weight", {E, F}, TensorType::Q8_0, 1.0f);
      tensor(p + "ffn_down.weight", {F, E}, TensorType::Q4_K, 1.0f);
    }
  }
  tensor("output_norm.weight", {E}, TensorType::F32, 0.1f, 1.0f);
  if (!o.tie_output)
    tensor("output.weight", {E, n_vocab}, TensorType::F16,
           o.output_scale * (s.granite ? kGraniteLogitScale : 1.0f));
  if (!o.skew_tensor.empty() && !skewed) {
    throw std::invalid_argument("fixture: skew_tensor '" + o.skew_tensor +
                                "' is not a tensor of kind " + o.kind);
  }
  return writer;
}

}  // namespace tessera::model
