// The planner's view of a model (bytes per layer, per expert and per KV token), from its spec and
// its layer kinds.
#include "host/engine/opencl_model.h"

#include <map>

#include "host/engine/layers/attention.h"
#include "host/engine/layers/deltanet.h"
#include "host/engine/layers/mamba2.h"

namespace tessera::engine {

namespace {

uint64_t tensor_bytes(const gguf::TensorInfo* t) {
  return t ? t->n_bytes() : 0;
}

// Bytes of matrices (more than one row) per ggml type.
void add_matrix(std::map<int, uint64_t>& by_type, const gguf::TensorInfo* t) {
  if (t && t->n_rows() > 1) by_type[int(t->type)] += t->n_bytes();
}

}  // namespace

sched::ModelFootprint footprint_of(const model::ModelSpec& spec, int context_tokens,
                                   const KvLayerFormats& kv_formats) {
  sched::ModelFootprint f;
  const auto& hp = spec.hp;
  f.kv_bytes_per_token = 0;
  std::map<int, uint64_t> matrix_bytes;
  for (size_t i = 0; i < spec.layers.size(); ++i) {
    const auto& l = spec.layers[i];
    sched::ModelFootprint::Layer fl;
    // The shared expert runs on the layer's device for every token: dense bytes.
    for (auto* t : {l.attn_norm,
                    l.wq,
                    l.wk,
                    l.wv,
                    l.wo,
                    l.bq,
                    l.bk,
                    l.bv,
                    l.bo,
                    l.sinks,
                    l.q_norm,
                    l.k_norm,
                    l.ffn_norm,
                    l.ffn_gate,
                    l.ffn_up,
                    l.ffn_down,
                    l.router,
                    l.router_b,
                    l.gate_inp_shexp,
                    l.gate_shexp,
                    l.up_shexp,
                    l.down_shexp,
                    l.ssm_in,
                    l.ssm_conv1d,
                    l.ssm_conv1d_b,
                    l.ssm_dt_b,
                    l.ssm_a,
                    l.ssm_d,
                    l.ssm_norm,
                    l.ssm_out,
                    l.ssm_qkv,
                    l.ssm_gate,
                    l.ssm_ba}) {
      fl.dense_bytes += tensor_bytes(t);
      add_matrix(matrix_bytes, t);
    }
    if (l.is_moe()) {
      for (auto* t : {l.gate_exps, l.up_exps, l.down_exps}) add_matrix(matrix_bytes, t);
      fl.n_experts = int(hp.n_expert);
      fl.expert_bytes =
          (tensor_bytes(l.gate_exps) + tensor_bytes(l.up_exps) + tensor_bytes(l.down_exps) +
           tensor_bytes(l.gate_exps_b) + tensor_bytes(l.up_exps_b) + tensor_bytes(l.down_exps_b)) /
          hp.n_expert;
    }
    switch (l.mixer) {
      case model::MixerKind::kAttention:
        f.kv_bytes_per_token += AttentionMixer::kv_bytes_per_token(spec, int(i), kv_formats.k_at(i),
                                                                   kv_formats.v_at(i));
        break;
      case model::MixerKind::kMamba2:
        fl.state_bytes = Mamba2Mixer::state_bytes(spec);
        break;
      case model::MixerKind::kGatedDeltaNet:
        fl.state_bytes = GatedDeltaNetMixer::state_bytes(spec);
        break;
    }
    // Launch counts stay the planner's defaults here: the engine counts them from its recorded
    // step once it is built (OpenClModel::footprint()).
    f.layers.push_back(fl);
  }
  f.embedding_bytes = tensor_bytes(spec.token_embd);
  f.output_bytes = tensor_bytes(spec.output_norm) +
                   (spec.output_tied ? tensor_bytes(spec.token_embd) : tensor_bytes(spec.output));
  f.n_expert_used = int(hp.n_expert_used);
  f.n_embd = int(hp.n_embd);
  f.context_tokens = context_tokens;
  add_matrix(matrix_bytes, spec.output_tied ? spec.token_embd : spec.output);
  uint64_t most = 0;
  for (const auto& [type, bytes] : matrix_bytes)
    if (bytes > most) {
      most = bytes;
      f.weight_type = type;
    }
  return f;
}

}  // namespace tessera::engine
