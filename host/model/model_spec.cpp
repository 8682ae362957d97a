// Builds a ModelSpec from GGUF metadata and tensors, checking every shape against the
// hyper-parameters.
#include "host/model/model_spec.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <sstream>

#include "host/ops/quant/quant.h"

namespace tessera::model {
namespace {

std::string shape_string(const std::vector<uint64_t>& dims) {
  std::ostringstream s;
  s << '[';
  for (size_t i = 0; i < dims.size(); ++i) s << (i ? ", " : "") << dims[i];
  s << ']';
  return s.str();
}

std::string join(const std::vector<std::string>& xs) {
  std::string out;
  for (const auto& x : xs) out += (out.empty() ? "" : ", ") + x;
  return out;
}

class SpecReader {
 public:
  SpecReader(const gguf::GgufFile& file, const ArchTraits& arch) : file_(file), arch_(arch) {}

  [[noreturn]] void fail(const std::string& field, const std::string& problem) const {
    throw ModelError(file_.path() + ": " + field + ": " + problem);
  }

  std::string key(std::string_view suffix) const {
    return std::string(arch_.name) + "." + std::string(suffix);
  }

  // A per-model integer; arrays (per-layer values) are accepted only when all entries agree.
  uint32_t u32(std::string_view suffix, std::optional<uint32_t> fallback = std::nullopt) const {
    const std::string k = key(suffix);
    const gguf::Value* v = file_.find(k);
    if (!v) {
      if (fallback) return *fallback;
      missing(k);
    }
    if (v->type != gguf::ValueType::ARRAY) return checked(k, v->as_uint());
    const auto& arr = v->as_array();
    if (arr.empty()) fail("metadata '" + k + "'", "empty array");
    for (const auto& e : arr)
      if (e.as_uint() != arr[0].as_uint())
        fail("metadata '" + k + "'", "per-layer values differ; not supported");
    return checked(k, arr[0].as_uint());
  }

  // A per-layer integer: one value for every layer, or an array of n_layer values (as GGUF writes
  // head_count_kv / feed_forward_length for models whose layers differ).
  std::vector<uint32_t> u32_per_layer(std::string_view suffix, uint32_t n_layer,
                                      std::optional<uint32_t> fallback = std::nullopt) const {
    const std::string k = key(suffix);
    const gguf::Value* v = file_.find(k);
    if (!v) {
      if (fallback) return std::vector<uint32_t>(n_layer, *fallback);
      missing(k);
    }
    if (v->type != gguf::ValueType::ARRAY)
      return std::vector<uint32_t>(n_layer, checked(k, v->as_uint()));
    const auto& arr = v->as_array();
    if (arr.size() != n_layer)
      fail("metadata '" + k + "'", "array of " + std::to_string(arr.size()) + " values for " +
                                       std::to_string(n_layer) + " layers");
    std::vector<uint32_t> out;
    for (const auto& e : arr) out.push_back(checked(k, e.as_uint()));
    return out;
  }

  float f32(std::string_view suffix, std::optional<float> fallback = std::nullopt) const {
    const std::string k = key(suffix);
    const gguf::Value* v = file_.find(k);
    if (!v) {
      if (fallback) return *fallback;
      missing(k);
    }
    return float(v->as_float());
  }

  // The tensor `name` with shape `dims` (ggml order), or nullptr when absent and optional.
  const gguf::TensorInfo* tensor(const std::string& name, const std::vector<uint64_t>& dims,
                                 bool required = true) const {
    const gguf::TensorInfo* t = file_.find_tensor(name);
    if (!t) {
      if (!required) return nullptr;
      fail("tensor '" + name + "'", "missing (expected shape " + shape_string(dims) + ")");
    }
    if (t->dims != dims) {
      fail("tensor '" + name + "'",
           "expected shape " + shape_string(dims) + ", found " + shape_string(t->dims));
    }
    if (!quant::can_dequantize(t->type)) {
      fail("tensor '" + name + "'", "type " + std::string(gguf::type_name(t->type)) +
                                        " cannot be read by the reference path");
    }
    return t;
  }

 private:
  [[noreturn]] void missing(const std::string& k) const {
    fail("metadata '" + k + "'",
         "missing (required by architecture " + std::string(arch_.name) + ")");
  }
  uint32_t checked(const std::string& k, uint64_t x) const {
    if (x > UINT32_MAX) fail("metadata '" + k + "'", "value " + std::to_string(x) + " too large");
    return uint32_t(x);
  }

  const gguf::GgufFile& file_;
  const ArchTraits& arch_;
};

// Per-layer attention windows. llama.cpp defines two keys: `<arch>.attention.sliding_window` (the
// window in tokens: a query at p sees keys [p - window + 1, p]) and
// `<arch>.attention.sliding_window_pattern`, either a period (every n-th layer full, the others
// windowed: gemma2/3, cohere2, gpt-oss...) or an array of one flag per layer (nonzero: windowed;
// gemma4, mimo2, step35...). Its loaders for the architectures Tessera supports (llama, qwen3,
// qwen3moe, qwen2moe) read neither key, so a Mistral-style `sliding_window` alone, or a period,
// changes nothing there and is ignored here too. A window is applied only where the file states it
// layer by layer: the array form together with `sliding_window` (llama.cpp would ignore such a
// file's windows for these architectures; Tessera's window fixtures are written that way).
std::vector<uint32_t> layer_windows(const gguf::GgufFile& file, const SpecReader& r,
                                    uint32_t n_layer, uint32_t default_period) {
  std::vector<uint32_t> windows(n_layer, 0);
  const std::string pattern_key = r.key("attention.sliding_window_pattern");
  const gguf::Value* pattern = file.find(pattern_key);
  if (default_period > 0 && (!pattern || pattern->type != gguf::ValueType::ARRAY)) {
    // gpt-oss: the window always applies (llama.cpp requires the key), on the layers a period
    // marks: the file's scalar pattern, else the architecture's default.
    const uint32_t period = pattern ? uint32_t(pattern->as_uint()) : default_period;
    const uint64_t window = r.u32("attention.sliding_window");
    if (window == 0 || window > uint64_t(INT32_MAX))
      r.fail("metadata '" + r.key("attention.sliding_window") + "'",
             std::to_string(window) + " must be in [1, 2^31-1]");
    for (uint32_t i = 0; i < n_layer; ++i)
      if (period == 0 || i % period < period - 1) windows[i] = uint32_t(window);
    return windows;
  }
  if (!pattern || pattern->type != gguf::ValueType::ARRAY) return windows;
  const std::string field = "metadata '" + pattern_key + "'";
  const auto& flags = pattern->as_array();
  if (flags.size() != n_layer)
    r.fail(field, "array of " + std::to_string(flags.size()) + " flags for " +
                      std::to_string(n_layer) + " layers");
  const std::string window_key = r.key("attention.sliding_window");
  const gguf::Value* window_value = file.find(window_key);
  if (!window_value) r.fail(field, "marks window layers but '" + window_key + "' is missing");
  const uint64_t window = window_value->as_uint();
  if (window == 0 || window > uint64_t(INT32_MAX))
    r.fail("metadata '" + window_key + "'",
           std::to_string(window) + " must be in [1, 2^31-1] when layers use it");
  for (uint32_t i = 0; i < n_layer; ++i) {
    const gguf::Value& f = flags[i];
    const bool windowed = f.type == gguf::ValueType::BOOL ? f.as_bool() : f.as_uint() != 0;
    if (windowed) windows[i] = uint32_t(window);
  }
  return windows;
}

std::string blk(uint32_t i, std::string_view what, std::string_view part = "weight") {
  return "blk." + std::to_string(i) + "." + std::string(what) + "." + std::string(part);
}

}  // namespace

std::string_view mixer_kind_name(MixerKind kind) {
  switch (kind) {
    case MixerKind::kAttention:
      return "attention";
    case MixerKind::kMamba2:
      return "mamba2";
    case MixerKind::kGatedDeltaNet:
      return "gated-deltanet";
  }
  return "?";
}

std::string_view ffn_kind_name(FfnKind kind) {
  switch (kind) {
    case FfnKind::kDense:
      return "dense";
    case FfnKind::kMoe:
      return "moe";
    case FfnKind::kMoeShared:
      return "moe+shared";
  }
  return "?";
}

ModelSpec ModelSpec::from_gguf(const gguf::GgufFile& file) {
  const std::string& arch_name = file.get_string("general.architecture");
  const ArchTraits* arch = find_architecture(arch_name);
  if (!arch) {
    throw ModelError(file.path() + ": general.architecture: '" + arch_name +
                     "' is not supported (supported: " + join(supported_architectures()) + ")");
  }
  const SpecReader r(file, *arch);

  ModelSpec spec;
  spec.arch = arch;
  spec.source = file.path();
  HParams& hp = spec.hp;
  // block_count counts every block of the file; Qwen3-Next's converter appends its multi-token
  // prediction blocks (nextn_predict_layers) after the trunk, which the forward pass does not run
  // (llama.cpp's n_layer()). Per-layer arrays have one value per block.
  const uint32_t n_block = r.u32("block_count");
  hp.n_layer = n_block;
  hp.n_embd = r.u32("embedding_length");
  hp.n_ctx_train = r.u32("context_length");
  hp.n_head = r.u32("attention.head_count");
  if (n_block == 0) r.fail("metadata '" + r.key("block_count") + "'", "must be > 0");
  if (arch->recurrent == RecurrentKind::kGatedDeltaNet) {
    const uint32_t nextn = r.u32("nextn_predict_layers", 0u);
    if (nextn >= n_block)
      r.fail("metadata '" + r.key("nextn_predict_layers") + "'",
             std::to_string(nextn) + " must be below block_count " + std::to_string(n_block));
    hp.n_layer = n_block - nextn;
  }
  if (hp.n_embd == 0) r.fail("metadata '" + r.key("embedding_length") + "'", "must be > 0");
  if (hp.n_head == 0) r.fail("metadata '" + r.key("attention.head_count") + "'", "must be > 0");
  std::vector<uint32_t> head_kv = r.u32_per_layer("attention.head_count_kv", n_block, hp.n_head);
  head_kv.resize(hp.n_layer);
  if (arch->recurrent == RecurrentKind::kGatedDeltaNet) {
    // llama.cpp: attention.recurrent_layers (a flag per block, or one for all) when present,
    // else every layer but each full_attention_interval-th is recurrent. Recurrent layers have no
    // KV heads whatever head_count_kv says.
    std::vector<bool> recurrent(hp.n_layer);
    const std::string flags_key = r.key("attention.recurrent_layers");
    if (const gguf::Value* flags = file.find(flags_key)) {
      auto flag = [&](const gguf::Value& f) {
        return f.type == gguf::ValueType::BOOL ? f.as_bool() : f.as_uint() != 0;
      };
      if (flags->type == gguf::ValueType::ARRAY) {
        const auto& arr = flags->as_array();
        if (arr.size() != n_block)
          r.fail("metadata '" + flags_key + "'", "array of " + std::to_string(arr.size()) +
                                                     " flags for " + std::to_string(n_block) +
                                                     " blocks");
        for (uint32_t i = 0; i < hp.n_layer; ++i) recurrent[i] = flag(arr[i]);
      } else {
        recurrent.assign(hp.n_layer, flag(*flags));
      }
    } else {
      const uint32_t interval = r.u32("full_attention_interval", 4u);
      if (interval == 0)
        r.fail("metadata '" + r.key("full_attention_interval") + "'", "must be > 0");
      for (uint32_t i = 0; i < hp.n_layer; ++i) recurrent[i] = (i + 1) % interval != 0;
    }
    for (uint32_t i = 0; i < hp.n_layer; ++i) {
      if (recurrent[i]) {
        head_kv[i] = 0;
      } else if (head_kv[i] == 0) {
        r.fail("metadata '" + r.key("attention.head_count_kv") + "'",
               "layer " + std::to_string(i) + " is a full-attention layer but has 0 KV heads");
      }
    }
  }
  for (uint32_t i = 0; i < hp.n_layer; ++i) {
    const std::string field = "metadata '" + r.key("attention.head_count_kv") + "'";
    // In GGUF a layer without KV heads is a recurrent layer (Jamba, Nemotron-H, Granite 4.0-H):
    // only architectures with a recurrent mixer have them.
    if (head_kv[i] == 0) {
      if (arch->recurrent == RecurrentKind::kNone)
        r.fail(field, "layer " + std::to_string(i) + " has 0 KV heads (a recurrent layer); " +
                          std::string(arch->name) + " has only attention layers");
      continue;
    }
    if (hp.n_head % head_kv[i] != 0)
      r.fail(field, "head_count " + std::to_string(hp.n_head) +
                        " must be a positive multiple of head_count_kv " +
                        std::to_string(head_kv[i]) + " (layer " + std::to_string(i) + ")");
    hp.n_head_kv = std::max(hp.n_head_kv, head_kv[i]);
  }
  hp.head_dim = r.u32("attention.key_length", hp.n_embd / hp.n_head);
  const uint32_t head_dim_v = r.u32("attention.value_length", hp.n_embd / hp.n_head);
  if (head_dim_v != hp.head_dim) {
    r.fail("metadata '" + r.key("attention.value_length") + "'",
           std::to_string(head_dim_v) + " differs from key_length " + std::to_string(hp.head_dim) +
               "; not supported");
  }
  hp.n_rot = r.u32("rope.dimension_count", hp.head_dim);
  if (hp.head_dim == 0 || hp.n_rot == 0 || hp.n_rot % 2 != 0 || hp.n_rot > hp.head_dim) {
    r.fail("metadata '" + r.key("rope.dimension_count") + "'",
           std::to_string(hp.n_rot) + " must be even and in (0, head_dim " +
               std::to_string(hp.head_dim) + "]");
  }
  hp.rope_freq_base = r.f32("rope.freq_base", 10000.0f);
  // A zero, negative or non-finite base or epsilon makes every activation NaN: the model would
  // "generate" token 0 forever, so such files are refused here.
  if (!std::isfinite(hp.rope_freq_base) || hp.rope_freq_base <= 0.0f)
    r.fail("metadata '" + r.key("rope.freq_base") + "'",
           std::to_string(hp.rope_freq_base) + " must be a finite number > 0");
  // Linear scaling and YaRN; LongRoPE changes more than theta and is refused. As in llama.cpp, an
  // absent type means linear and "none" ignores any factor.
  std::string scaling = "linear";
  if (const gguf::Value* type = file.find(r.key("rope.scaling.type"))) scaling = type->as_string();
  if (scaling != "none" && scaling != "linear" && scaling != "yarn") {
    r.fail("metadata '" + r.key("rope.scaling.type") + "'",
           "'" + scaling + "' is not supported (supported: none, linear, yarn)");
  }
  const char* factor_key =
      file.find(r.key("rope.scaling.factor")) ? "rope.scaling.factor" : "rope.scale_linear";
  const float factor = r.f32(factor_key, 0.0f);
  if (!std::isfinite(factor) || factor < 0.0f)
    r.fail("metadata '" + r.key(factor_key) + "'", "scaling factor must be finite and >= 0");
  hp.rope_freq_scale = (factor == 0.0f || scaling == "none") ? 1.0f : 1.0f / factor;
  // llama.cpp multiplies cos and sin by rope.scaling.attn_factor whatever the scaling type.
  const float attn_factor = r.f32("rope.scaling.attn_factor", 1.0f);
  if (!std::isfinite(attn_factor) || attn_factor <= 0.0f)
    r.fail("metadata '" + r.key("rope.scaling.attn_factor") + "'",
           std::to_string(attn_factor) + " must be a finite number > 0");
  hp.rope_yarn.mscale = attn_factor;
  if (scaling == "yarn") {
    // llama.cpp's YaRN for the architectures Tessera runs: ext_factor 1, beta_fast 32, beta_slow
    // 1 (its loaders for them read no yarn_* key), original context from
    // rope.scaling.original_context_length, else context_length.
    const uint32_t n_ctx_orig = r.u32("rope.scaling.original_context_length", hp.n_ctx_train);
    try {
      hp.rope_yarn =
          reference::rope_yarn_params(int(hp.n_rot), n_ctx_orig, hp.rope_freq_base,
                                      1.0f / hp.rope_freq_scale, 32.0f, 1.0f, attn_factor);
    } catch (const std::invalid_argument& e) {
      r.fail("metadata '" + r.key("rope.scaling.type") + "' yarn", e.what());
    }
  }
  if (arch->granite_scales) {
    // Granite's RoPE switch (llama.cpp: rope_finetuned, default true): false means no position
    // encoding at all in the attention layers (Granite 4.0-H).
    const std::string finetuned_key = r.key("rope.scaling.finetuned");
    if (const gguf::Value* v = file.find(finetuned_key)) {
      if (v->type != gguf::ValueType::BOOL)
        r.fail("metadata '" + finetuned_key + "'", "must be a boolean");
      if (!v->as_bool()) hp.n_rot = 0;
    }
    // Multipliers: absent or 0 means none (llama.cpp tests each against 0).
    auto multiplier = [&](std::string_view suffix, float none) {
      const float x = r.f32(suffix, 0.0f);
      if (!std::isfinite(x))
        r.fail("metadata '" + r.key(suffix) + "'", std::to_string(x) + " must be finite");
      return x == 0.0f ? none : x;
    };
    hp.embedding_scale = multiplier("embedding_scale", 1.0f);
    hp.residual_scale = multiplier("residual_scale", 1.0f);
    hp.attention_scale = multiplier("attention.scale", 0.0f);
    hp.logit_scale = multiplier("logit_scale", 1.0f);
  }
  hp.rms_eps = r.f32("attention.layer_norm_rms_epsilon");
  if (!std::isfinite(hp.rms_eps) || hp.rms_eps <= 0.0f)
    r.fail("metadata '" + r.key("attention.layer_norm_rms_epsilon") + "'",
           std::to_string(hp.rms_eps) + " must be a finite number > 0");
  hp.expert_weights_scale = r.f32("expert_weights_scale", 0.0f);
  if (!std::isfinite(hp.expert_weights_scale))
    r.fail("metadata '" + r.key("expert_weights_scale") + "'", "must be a finite number");

  switch (arch->moe) {
    case MoeKind::kNone:
      hp.n_expert = 0;
      break;
    case MoeKind::kOptional:
      hp.n_expert = r.u32("expert_count", 0u);
      break;
    case MoeKind::kRequired:
      hp.n_expert = r.u32("expert_count");
      break;
  }
  if (hp.n_expert > 0) {
    hp.n_expert_used = r.u32("expert_used_count");
    if (hp.n_expert_used == 0 || hp.n_expert_used > hp.n_expert) {
      r.fail("metadata '" + r.key("expert_used_count") + "'",
             std::to_string(hp.n_expert_used) + " is not in [1, expert_count " +
                 std::to_string(hp.n_expert) + "]");
    }
  } else if (arch->moe == MoeKind::kRequired) {
    r.fail("metadata '" + r.key("expert_count") + "'",
           "must be > 0 for " + std::string(arch->name));
  }
  // Dense layers need feed_forward_length; qwen3moe may omit it and give the expert width instead.
  const bool need_n_ff = hp.n_expert == 0 || arch->expert_ff_key.empty();
  const std::string ff_field = "metadata '" + r.key("feed_forward_length") + "'";
  std::vector<uint32_t> n_ff = need_n_ff ? r.u32_per_layer("feed_forward_length", n_block)
                                         : r.u32_per_layer("feed_forward_length", n_block, 0u);
  n_ff.resize(hp.n_layer);
  hp.n_ff = *std::max_element(n_ff.begin(), n_ff.end());
  if (hp.n_expert > 0) {
    // llama (Mixtral) experts take feed_forward_length as their width: one value for all layers.
    if (arch->expert_ff_key.empty() && *std::min_element(n_ff.begin(), n_ff.end()) != hp.n_ff)
      r.fail(ff_field, "per-layer values differ; the experts of " + std::string(arch->name) +
                           " take it as their one width");
    hp.n_ff_exp = arch->expert_ff_key.empty()
                      ? hp.n_ff
                      : r.u32(arch->expert_ff_key, hp.n_ff / hp.n_expert_used);
    if (hp.n_ff_exp == 0)
      r.fail("metadata '" + r.key(arch->expert_ff_key) + "'", "expert FFN width is 0");
    if (arch->shared_expert == SharedExpertKind::kUngatedOptional) {
      hp.n_ff_shexp = r.u32(arch->shared_ff_key, 0u);  // 0: no shared expert
    } else if (arch->shared_expert != SharedExpertKind::kNone) {
      hp.n_ff_shexp = r.u32(arch->shared_ff_key, hp.n_ff);
      if (hp.n_ff_shexp == 0)
        r.fail("metadata '" + r.key(arch->shared_ff_key) + "'",
               "shared expert FFN width is 0 (and feed_forward_length gives none)");
    }
  } else {
    for (uint32_t i = 0; i < hp.n_layer; ++i)
      if (n_ff[i] == 0) r.fail(ff_field, "layer " + std::to_string(i) + ": must be > 0");
  }

  // Mamba2's shape, when some layer is recurrent (llama.cpp requires every ssm.* key then).
  const bool has_recurrent = std::find(head_kv.begin(), head_kv.end(), 0u) != head_kv.end();
  if (hp.n_head_kv == 0)  // every layer recurrent: llama.cpp's mamba2 architecture, not this one
    r.fail("metadata '" + r.key("attention.head_count_kv") + "'",
           "every layer has 0 KV heads (no attention layer); " + std::string(arch->name) +
               " needs at least one");
  if (has_recurrent && arch->recurrent == RecurrentKind::kMamba2) {
    hp.ssm_d_conv = r.u32("ssm.conv_kernel");
    hp.ssm_d_inner = r.u32("ssm.inner_size");
    hp.ssm_d_state = r.u32("ssm.state_size");
    hp.ssm_n_head = r.u32("ssm.time_step_rank");
    hp.ssm_n_group = r.u32("ssm.group_count");
    auto field = [&](std::string_view suffix) { return "metadata '" + r.key(suffix) + "'"; };
    // The conv kernels keep the last d_conv - 1 inputs per channel in registers: up to 8 taps
    // (Mamba2 models use 4).
    if (hp.ssm_d_conv < 1 || hp.ssm_d_conv > 8)
      r.fail(field("ssm.conv_kernel"),
             std::to_string(hp.ssm_d_conv) + " must be in [1, 8] (Mamba2 models use 4)");
    if (hp.ssm_d_state == 0) r.fail(field("ssm.state_size"), "must be > 0");
    if (hp.ssm_n_head == 0) r.fail(field("ssm.time_step_rank"), "must be > 0 (the SSM heads)");
    if (hp.ssm_n_group == 0) r.fail(field("ssm.group_count"), "must be > 0");
    if (hp.ssm_d_inner == 0 || hp.ssm_d_inner % hp.ssm_n_head != 0)
      r.fail(field("ssm.inner_size"), std::to_string(hp.ssm_d_inner) +
                                          " must be a positive multiple of ssm.time_step_rank " +
                                          std::to_string(hp.ssm_n_head) + " (the SSM heads)");
    if (hp.ssm_n_head % hp.ssm_n_group != 0)
      r.fail(field("ssm.group_count"), std::to_string(hp.ssm_n_group) +
                                           " must divide ssm.time_step_rank " +
                                           std::to_string(hp.ssm_n_head) + " (heads per group)");
    if (uint64_t(hp.ssm_d_inner) + 2ull * hp.ssm_n_group * hp.ssm_d_state + hp.ssm_n_head >
        uint64_t(INT32_MAX))
      r.fail(field("ssm.inner_size"), "the in-projection's rows exceed 2^31");
  }
  if (has_recurrent && arch->recurrent == RecurrentKind::kGatedDeltaNet) {
    // llama.cpp's qwen3next: key heads (group_count) and value heads (time_step_rank), both
    // state_size wide; the value heads of a key head are consecutive.
    hp.ssm_d_conv = r.u32("ssm.conv_kernel");
    hp.ssm_d_inner = r.u32("ssm.inner_size");
    hp.ssm_d_state = r.u32("ssm.state_size");
    hp.ssm_n_head = r.u32("ssm.time_step_rank");
    hp.ssm_n_group = r.u32("ssm.group_count");
    auto field = [&](std::string_view suffix) { return "metadata '" + r.key(suffix) + "'"; };
    if (hp.ssm_d_conv < 1 || hp.ssm_d_conv > 8)
      r.fail(field("ssm.conv_kernel"),
             std::to_string(hp.ssm_d_conv) + " must be in [1, 8] (Qwen3-Next uses 4)");
    if (hp.ssm_d_state == 0 || hp.ssm_d_state > 4096)
      r.fail(field("ssm.state_size"),
             std::to_string(hp.ssm_d_state) + " must be in [1, 4096] (the heads' size)");
    if (hp.ssm_n_group == 0) r.fail(field("ssm.group_count"), "must be > 0 (the key heads)");
    if (hp.ssm_n_head == 0 || hp.ssm_n_head % hp.ssm_n_group != 0)
      r.fail(field("ssm.time_step_rank"),
             std::to_string(hp.ssm_n_head) + " must be a positive multiple of ssm.group_count " +
                 std::to_string(hp.ssm_n_group) + " (value heads per key head)");
    if (uint64_t(hp.ssm_d_inner) != uint64_t(hp.ssm_d_state) * hp.ssm_n_head)
      r.fail(field("ssm.inner_size"), std::to_string(hp.ssm_d_inner) +
                                          " must equal ssm.state_size x ssm.time_step_rank (" +
                                          std::to_string(uint64_t(hp.ssm_d_state) * hp.ssm_n_head) +
                                          "): value heads as wide as key heads");
    if (2ull * hp.ssm_n_group * hp.ssm_d_state + 2ull * hp.ssm_d_inner + 2ull * hp.ssm_n_head >
        uint64_t(INT32_MAX))
      r.fail(field("ssm.inner_size"), "the projections' rows exceed 2^31");
  }

  const gguf::TensorInfo* embd = file.find_tensor("token_embd.weight");
  if (!embd) r.fail("tensor 'token_embd.weight'", "missing");
  if (embd->dims.size() != 2) {
    r.fail("tensor 'token_embd.weight'", "expected 2 dimensions [" + std::to_string(hp.n_embd) +
                                             ", n_vocab], found " + shape_string(embd->dims));
  }
  if (embd->dims[1] == 0 || embd->dims[1] > INT32_MAX)
    r.fail("tensor 'token_embd.weight'",
           std::to_string(embd->dims[1]) + " rows: the vocabulary must have 1 to 2^31-1 tokens");
  hp.n_vocab = uint32_t(embd->dims[1]);
  const uint64_t E = hp.n_embd, V = hp.n_vocab;
  spec.token_embd = r.tensor("token_embd.weight", {E, V});
  spec.output_norm = r.tensor("output_norm.weight", {E});
  spec.output = r.tensor("output.weight", {E, V}, false);
  if (!spec.output) {
    spec.output = spec.token_embd;
    spec.output_tied = true;
  }

  // Every id the output head can produce must be a token the vocabulary can print: a shorter
  // vocabulary would fail (or print ids nothing can decode) only in the middle of a generation.
  const gguf::Value* tokens = file.find("tokenizer.ggml.tokens");
  if (tokens && tokens->type == gguf::ValueType::ARRAY) {
    const uint64_t n_tokens = tokens->as_array().size();
    if (n_tokens < V)
      r.fail("metadata 'tokenizer.ggml.tokens'", std::to_string(n_tokens) + " tokens, but '" +
                                                     spec.output->name + "' has " +
                                                     std::to_string(V) + " rows (one per token)");
  }

  if (hp.n_rot > 0) spec.rope_freqs = r.tensor("rope_freqs.weight", {hp.n_rot / 2}, false);
  if (spec.rope_freqs) {
    const gguf::TensorInfo& t = *spec.rope_freqs;  // type checked by r.tensor
    std::vector<float> factors(size_t(t.n_elements()));
    quant::dequantize_row(t.type, t.data, factors.data(), int64_t(factors.size()));
    for (float f : factors)
      if (!std::isfinite(f) || f <= 0.0f)
        r.fail("tensor 'rope_freqs.weight'",
               "holds " + std::to_string(f) + "; every frequency divisor must be finite and > 0");
  }

  const uint64_t Q = hp.q_dim(), D = hp.head_dim, FE = hp.n_ff_exp, NE = hp.n_expert;
  const std::vector<uint32_t> windows = layer_windows(file, r, hp.n_layer, arch->swa_period);
  // A separate RoPE base for window layers (llama.cpp's rope.freq_base_swa) is not implemented.
  if (const gguf::Value* swa_base = file.find(r.key("rope.freq_base_swa")))
    if (swa_base->as_float() != hp.rope_freq_base)
      r.fail("metadata '" + r.key("rope.freq_base_swa") + "'",
             "a RoPE base for window layers other than rope.freq_base is not supported");
  spec.layers.resize(hp.n_layer);
  for (uint32_t i = 0; i < hp.n_layer; ++i) {
    LayerSpec& l = spec.layers[i];
    l.mixer = head_kv[i] != 0                                    ? MixerKind::kAttention
              : arch->recurrent == RecurrentKind::kGatedDeltaNet ? MixerKind::kGatedDeltaNet
                                                                 : MixerKind::kMamba2;
    l.ffn = hp.n_expert == 0                                  ? FfnKind::kDense
            : arch->shared_expert == SharedExpertKind::kNone  ? FfnKind::kMoe
            : arch->shared_expert == SharedExpertKind::kGated ? FfnKind::kMoeShared
            : hp.n_ff_shexp > 0                               ? FfnKind::kMoeShared
                                                              : FfnKind::kMoe;
    l.n_head_kv = head_kv[i];
    l.window = windows[i];
    l.n_ff = n_ff[i];
    switch (l.mixer) {
      case MixerKind::kAttention: {
        const uint64_t KV = l.kv_dim(hp);
        l.attn_norm = r.tensor(blk(i, "attn_norm"), {E});
        l.wq = r.tensor(blk(i, "attn_q"), {E, arch->gated_attention ? 2 * Q : Q});
        l.wk = r.tensor(blk(i, "attn_k"), {E, KV});
        l.wv = r.tensor(blk(i, "attn_v"), {E, KV});
        l.wo = r.tensor(blk(i, "attn_output"), {Q, E});
        // q/k/v biases, optional as in llama.cpp's create_tensor_qkv: all three or none (gated
        // attention takes none: any bias is refused below).
        if (!arch->gated_attention) {
          l.bq = r.tensor(blk(i, "attn_q", "bias"), {Q}, false);
          l.bk = r.tensor(blk(i, "attn_k", "bias"), {KV}, false);
          l.bv = r.tensor(blk(i, "attn_v", "bias"), {KV}, false);
        }
        if ((l.bq != nullptr) != (l.bk != nullptr) || (l.bq != nullptr) != (l.bv != nullptr))
          r.fail("tensor '" + blk(i, l.bq ? (l.bk ? "attn_v" : "attn_k") : "attn_q", "bias") + "'",
                 "missing: attn_q/attn_k/attn_v biases must all be present or all absent");
        if (arch->attn_out_bias) l.bo = r.tensor(blk(i, "attn_output", "bias"), {E});
        // granitehybrid: an optional output bias (llama.cpp's wo_b, TENSOR_NOT_REQUIRED).
        if (arch->granite_scales) l.bo = r.tensor(blk(i, "attn_output", "bias"), {E}, false);
        if (arch->attn_sinks) l.sinks = r.tensor(blk(i, "attn_sinks"), {hp.n_head});
        if (arch->has_qk_norm) {
          l.q_norm = r.tensor(blk(i, "attn_q_norm"), {D});
          l.k_norm = r.tensor(blk(i, "attn_k_norm"), {D});
        }
        break;
      }
      case MixerKind::kMamba2: {
        const uint64_t DI = hp.ssm_d_inner, CH = hp.ssm_conv_channels(), NH = hp.ssm_n_head;
        const uint64_t NG = hp.ssm_n_group;
        l.attn_norm = r.tensor(blk(i, "attn_norm"), {E});
        l.ssm_in = r.tensor(blk(i, "ssm_in"), {E, hp.ssm_in_rows()});
        l.ssm_conv1d = r.tensor(blk(i, "ssm_conv1d"), {hp.ssm_d_conv, CH});
        l.ssm_conv1d_b = r.tensor(blk(i, "ssm_conv1d", "bias"), {CH}, false);
        l.ssm_dt_b = r.tensor(blk(i, "ssm_dt", "bias"), {NH});
        // ssm_a / ssm_d carry no ".weight" suffix in GGUF.
        l.ssm_a = r.tensor("blk." + std::to_string(i) + ".ssm_a", {1, NH});
        l.ssm_d = r.tensor("blk." + std::to_string(i) + ".ssm_d", {1, NH});
        l.ssm_norm = r.tensor(blk(i, "ssm_norm"), {DI / NG, NG});
        l.ssm_out = r.tensor(blk(i, "ssm_out"), {DI, E});
        break;
      }
      case MixerKind::kGatedDeltaNet: {
        const uint64_t DI = hp.ssm_d_inner, CH = hp.ssm_conv_channels(), NV = hp.ssm_n_head;
        l.attn_norm = r.tensor(blk(i, "attn_norm"), {E});
        // Files from llama.cpp's first Qwen3-Next converter hold one fused ssm_in with q, k, v
        // and z grouped per key head (llama.cpp's legacy path); current converters split it into
        // attn_qkv and attn_gate, which llama.cpp prefers when both are present.
        if (!file.find_tensor(blk(i, "attn_qkv")) && file.find_tensor(blk(i, "ssm_in"))) {
          l.ssm_in = r.tensor(blk(i, "ssm_in"), {E, CH + DI});
        } else {
          l.ssm_qkv = r.tensor(blk(i, "attn_qkv"), {E, CH});
          l.ssm_gate = r.tensor(blk(i, "attn_gate"), {E, DI});
        }
        l.ssm_ba = r.tensor(blk(i, "ssm_ba"), {E, 2 * NV});
        l.ssm_conv1d = r.tensor(blk(i, "ssm_conv1d"), {hp.ssm_d_conv, CH});
        l.ssm_dt_b = r.tensor(blk(i, "ssm_dt", "bias"), {NV});
        l.ssm_a = r.tensor("blk." + std::to_string(i) + ".ssm_a", {NV});
        l.ssm_norm = r.tensor(blk(i, "ssm_norm"), {hp.ssm_d_state});
        l.ssm_out = r.tensor(blk(i, "ssm_out"), {DI, E});
        break;
      }
    }
    l.ffn_norm = r.tensor(blk(i, arch->ffn_norm_name), {E});
    switch (l.ffn) {
      case FfnKind::kMoeShared: {
        const uint64_t FS = hp.n_ff_shexp;
        if (arch->shared_expert == SharedExpertKind::kGated)
          l.gate_inp_shexp = r.tensor(blk(i, "ffn_gate_inp_shexp"), {E});
        l.gate_shexp = r.tensor(blk(i, "ffn_gate_shexp"), {E, FS});
        l.up_shexp = r.tensor(blk(i, "ffn_up_shexp"), {E, FS});
        l.down_shexp = r.tensor(blk(i, "ffn_down_shexp"), {FS, E});
        [[fallthrough]];
      }
      case FfnKind::kMoe:
        l.router = r.tensor(blk(i, "ffn_gate_inp"), {E, NE});
        // llama.cpp runs experts without a gate as silu(up) (granitehybrid loads the gate as
        // optional); Tessera's experts are gated.
        if (!file.find_tensor(blk(i, "ffn_gate_exps")))
          r.fail("tensor '" + blk(i, "ffn_gate_exps") + "'",
                 "missing: experts without a gate (silu(up)) are not supported");
        l.gate_exps = r.tensor(blk(i, "ffn_gate_exps"), {E, FE, NE});
        l.up_exps = r.tensor(blk(i, "ffn_up_exps"), {E, FE, NE});
        l.down_exps = r.tensor(blk(i, "ffn_down_exps"), {FE, E, NE});
        if (arch->moe_biases) {
          l.router_b = r.tensor(blk(i, "ffn_gate_inp", "bias"), {NE});
          l.gate_exps_b = r.tensor(blk(i, "ffn_gate_exps", "bias"), {FE, NE});
          l.up_exps_b = r.tensor(blk(i, "ffn_up_exps", "bias"), {FE, NE});
          l.down_exps_b = r.tensor(blk(i, "ffn_down_exps", "bias"), {E, NE});
        }
        break;
      case FfnKind::kDense: {
        const uint64_t F = l.n_ff;
        l.ffn_gate = r.tensor(blk(i, "ffn_gate"), {E, F});
        l.ffn_up = r.tensor(blk(i, "ffn_up"), {E, F});
        l.ffn_down = r.tensor(blk(i, "ffn_down"), {F, E});
        break;
      }
    }
  }
  // A bias the layer walk does not apply would be a silent wrong answer (llama.cpp loads optional
  // output and FFN biases for some architectures): refuse any it did not take.
  std::vector<const gguf::TensorInfo*> used;
  for (const auto& l : spec.layers)
    for (const auto* t : {l.bq, l.bk, l.bv, l.bo, l.router_b, l.gate_exps_b, l.up_exps_b,
                          l.down_exps_b, l.ssm_conv1d_b, l.ssm_dt_b})
      if (t) used.push_back(t);
  for (const auto& t : file.tensors()) {
    const std::string& name = t.name;
    if (name.size() < 5 || name.compare(name.size() - 5, 5, ".bias") != 0) continue;
    // Blocks past n_layer (multi-token prediction) are not run: their tensors are not looked at.
    if (name.rfind("blk.", 0) == 0) {
      uint64_t block = 0;
      for (size_t i = 4; i < name.size() && name[i] >= '0' && name[i] <= '9' && block < n_block;
           ++i)
        block = block * 10 + uint64_t(name[i] - '0');
      if (block >= hp.n_layer) continue;
    }
    if (std::find(used.begin(), used.end(), &t) == used.end())
      r.fail("tensor '" + name + "'",
             "a bias that " + std::string(arch->name) +
                 " as Tessera implements it does not apply; not supported");
  }
  return spec;
}

}  // namespace tessera::model
