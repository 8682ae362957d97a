// Causal self-attention as a layer's mixer: RMSNorm, q | k | v projections (optional biases),
// optional per-head q/k RMSNorm (Qwen3), RoPE, attention over the sequence's KV (paged on the
// device, appended vectors on the reference path) or, for a layer with a window
// (LayerSpec::window), over its last `window` positions, Qwen3-Next's sigmoid output gate
// (ArchTraits::gated_attention), output projection added to the residual stream.
#pragma once

#include "host/engine/layers/layer.h"
#include "host/ops/reference/matmul.h"

namespace tessera::engine {

class AttentionMixer final : public Mixer {
 public:
  // Layer `layer` of `spec` (which must outlive this).
  AttentionMixer(const model::ModelSpec& spec, int layer);

  model::MixerKind kind() const override { return model::MixerKind::kAttention; }
  LayerMemoryNeeds memory() const override;
  // K and V bytes one token costs layer `layer` of `spec` in the given row formats.
  static uint64_t kv_bytes_per_token(const model::ModelSpec& spec, int layer,
                                     kv::KvFormat k_format = kv::KvFormat::kF16,
                                     kv::KvFormat v_format = kv::KvFormat::kF16);

  void upload(DeviceCtx& c, WeightUploader& up, const kv::PagedKvCache& kv,
              const EngineOptions& options) override;
  bool forward(DeviceCtx& c, const LayerStep& s, bool prenormed) override;
  InputProjection input_projection(DeviceCtx& c) const override;
  bool decode_attention(DeviceCtx& c, const LayerStep& s,
                        ops::RouteTail::Ffn::Attention& a) const override;
  cl_mem input_norm() const override { return dev_.attn_norm.get(); }
  void reference_forward(std::span<float> x, std::span<const int32_t> positions,
                         ReferenceLayerMemory& mem) const override;

 private:
  // The q|k|v row's finish (norms, RoPE, KV store) as the decode launch takes it, from c.qkv.
  ops::AttentionOp::DecodeFinish decode_finish(DeviceCtx& c) const;
  const model::ModelSpec& spec_;
  const model::LayerSpec& ls_;
  int layer_ = 0;
  int kv_group_ = 0;  // the cache's block-table group of this layer (by its window)
  uint32_t q_dim_ = 0, kv_dim_ = 0;
  uint32_t gate_dim_ = 0;  // gated attention: q_dim_ (the gate's floats per token); else 0
  struct DeviceWeights {
    // wqkv: q, k and v rows stacked into one matrix (one launch) when they share a format;
    // otherwise wq, wk, wv write the same q | k | v rows. Gated attention: attn_q's rows split
    // into the query rows (wq) and the gate rows (wgate, after v: q | k | v | gate).
    ops::DeviceWeight wqkv, wq, wk, wv, wgate, wo;
    ClMem attn_norm, q_norm, k_norm;
    ClMem qkv_bias;  // f32 q | k | v biases, one row (empty when the layer has none)
    ClMem bo;        // f32 output-projection bias (gpt-oss; empty when none)
    ClMem sinks;     // f32 attention sink per query head (gpt-oss; empty when none)
    ops::AttentionOp* op = nullptr;  // owned by the DeviceCtx
  } dev_;
  struct ReferenceWeights {
    std::vector<float> attn_norm, q_norm, k_norm;  // q/k empty when absent
    std::vector<float> bq, bk, bv;                 // empty when the layer has no biases
    std::vector<float> bo, sinks;                  // gpt-oss; empty when absent
    reference::WeightMatrix wq, wk, wv, wo;
    std::vector<float> rope_freqs;  // empty when the model has no rope_freqs.weight
  } ref_;
};

}  // namespace tessera::engine
