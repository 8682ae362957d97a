// Tiny random-weight GGUF models of every supported architecture, for tests and for pointing
// llama.cpp at the same file (`tessera fixture`). Seeded and platform-independent: same options,
// same bytes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "host/gguf/gguf.h"

namespace tessera::model {

struct FixtureOptions {
  std::string kind = "llama";  // one of fixture_kinds()
  uint64_t seed = 1;
  bool tie_output = false;    // omit output.weight (tied to token_embd)
  bool rope_scaling = false;  // linear RoPE scaling (factor 2) and, for llama kinds, Llama 3-style
                              // rope_freqs.weight divisors
  bool rope_freqs = false;    // Llama 3-style rope_freqs.weight divisors alone (llama kinds: llama,
                              // mixtral; other kinds refuse it)
  bool rope_yarn = false;     // YaRN RoPE scaling: factor 4 over an original context of 16 tokens
  // head_count_kv (and, for dense kinds, feed_forward_length) written as per-layer arrays whose
  // values differ: odd layers have n_head KV heads (no grouping) and twice the FFN width.
  bool layer_arrays = false;
  // > 0: sliding-window attention of this many tokens on even layers, the whole context on odd
  // ones (<arch>.attention.sliding_window + a per-layer sliding_window_pattern array). llama.cpp
  // ignores both keys for the fixture architectures, so such a file is for Tessera's own tests.
  uint32_t window = 0;
  bool all_f32 = false;  // store every tensor as F32 (isolates architecture semantics from
                         // quantization when comparing with another implementation)
  // Decisive scales (see DESIGN.md, Testing): the output projection's and the router's weights have
  // std = scale / sqrt(n_embd), so logits and router logits have std ~scale and the greedy token /
  // chosen experts do not flip under small numeric differences between implementations.
  float output_scale = 8.0f;
  float router_scale = 8.0f;
  // Size overrides for benchmark-sized models (0: the kind's tiny default). n_ff_exp is the expert
  // FFN width (qwen3moe; mixtral's experts use n_ff); n_vocab pads the fixture vocabulary with
  // unreachable "<extra_N>" tokens up to that size (it must be >= fixture_vocab().tokens.size());
  // n_ctx is the training context written to the metadata.
  uint32_t n_layer = 0, n_embd = 0, n_head = 0, n_head_kv = 0, head_dim = 0, n_ff = 0;
  uint32_t n_expert = 0, n_expert_used = 0, n_ff_exp = 0, n_vocab = 0, n_ctx = 0;
  // granitehybrid: layer i is attention when i % attn_period == attn_period / 3 (0: the default
  // period 3, i.e. layers 1, 4, 7, ...; Granite 4.0-H-Tiny has 4 attention layers in 40: period
  // 10).
  uint32_t attn_period = 0;
  // Empty: the per-role quant mix. "Q4_0" or "Q8_0": every matrix (embedding, projections, experts,
  // output) in that format, norms and router F32, like llama-quantize's pure formats. "MXFP4" (MoE
  // kinds): the experts in MXFP4 and every other matrix Q8_0, as gpt-oss ships. Weights then come
  // from a cheap generator (sum of four uniforms, parallel streams) so a ~1G-weight model writes in
  // seconds. gpt-oss with n_ctx set scales YaRN as gpt-oss does: factor 32 over n_ctx / 32.
  std::string weight_type;
  // gpt-oss only: its harmony special tokens (control tokens after the base vocabulary) and a
  // small harmony chat template of the project's own as tokenizer.chat_template, so the daemon's
  // harmony chat can run end to end; the output-head rows of <|channel|>, <|message|>, <|start|>,
  // <|end|> are scaled x1.5 so a random model writes markers often. Off by default: the vocabulary
  // size (and so the weights) of the plain gpt-oss fixture stay what recorded comparisons used.
  bool harmony = false;
  // qwen3next: write each DeltaNet layer's q | k | v and z projections as the one `ssm_in` of
  // llama.cpp's first Qwen3-Next converter (per key head: q, k, its value heads' v, their z),
  // from the same weights (attn_gate then in attn_qkv's format), so the two files compute the same.
  bool fused_ssm_in = false;
  // Test hooks that make the file invalid on purpose.
  std::string architecture_override;  // written as general.architecture when not empty
  std::string skew_tensor;            // this tensor's last dimension is written one larger
  std::string drop_key;               // this metadata key is not written
};

// The fixture kinds and, for each, the architecture it is written as ("mixtral" is llama + MoE).
std::vector<std::string> fixture_kinds();

// gpt-oss's harmony special tokens, in the order FixtureOptions::harmony appends them.
std::vector<std::string> harmony_tokens();

// Builds the whole file in memory: metadata (architecture hyper-parameters and a small
// SentencePiece 'llama' vocabulary llama.cpp accepts) and tensors in a mix of F32, F16, Q8_0, Q4_0
// and Q4_K (or all in weight_type). Throws std::invalid_argument for an unknown kind or
// weight_type, inconsistent sizes, or a skew_tensor that is not in the model.
gguf::GgufWriter make_fixture(const FixtureOptions& options);

// The fixture vocabulary: <unk>, <s>, </s>, the 256 byte tokens <0x00>..<0xFF>, printable ASCII
// characters, and "▁"-prefixed words with all their prefixes (so SentencePiece merges reach them).
struct FixtureVocab {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;  // llama.cpp token types: 1 normal, 2 unknown, 3 control, 6 byte
};
FixtureVocab fixture_vocab();

}  // namespace tessera::model
