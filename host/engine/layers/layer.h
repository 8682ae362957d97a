// A layer is a mixer (attention, Mamba2 or Gated DeltaNet) followed by an FFN (dense,
// MoE, or MoE with a shared expert). Each kind is one class in this folder with both its device
// forward (OpenCL kernels on the layer's plan device) and its reference forward (scalar host ops),
// and declares the memory it needs per sequence. OpenClModel and ReferenceModel walk the same list,
// built by make_layers().
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <vector>

#include "host/engine/device_ctx.h"
#include "host/engine/options.h"
#include "host/kv/paged_kv_cache.h"
#include "host/kv/recurrent_state_pool.h"
#include "host/model/model_spec.h"

namespace tessera::engine {

// What one sequence costs a layer: KV rows (attention; a window > 0 keeps only the last `window`
// tokens) and fixed recurrent state (recurrent mixers).
struct LayerMemoryNeeds {
  uint64_t kv_bytes_per_token = 0;  // K and V together
  uint32_t window = 0;              // 0: the whole sequence
  uint64_t state_bytes = 0;         // recurrent state per sequence
};

// A sequence's memory of one layer on the reference path.
struct ReferenceLayerMemory {
  std::vector<float> k, v;   // attention: [n_past][kv_dim] each, appended in order
  std::vector<float> state;  // recurrent mixers: their fixed state (empty: a new sequence, zeros)
};

// Uploads weights to devices, counting bytes for the progress display.
class WeightUploader {
 public:
  WeightUploader(uint64_t total_bytes, std::function<void(uint64_t, uint64_t)> progress)
      : total_(total_bytes), progress_(std::move(progress)) {}
  ops::DeviceWeight matrix(DeviceCtx& c, const gguf::TensorInfo* t);
  // Matrices of one format and width stacked row-wise (ggml rows are contiguous byte ranges).
  ops::DeviceWeight stacked(DeviceCtx& c, std::initializer_list<const gguf::TensorInfo*> ts);
  static bool stackable(std::initializer_list<const gguf::TensorInfo*> ts);
  ClMem norm(DeviceCtx& c, const gguf::TensorInfo* t);  // f32 on the device; empty when t is null
  void count(uint64_t bytes);
  uint64_t uploaded() const { return done_; }

 private:
  uint64_t total_ = 0, done_ = 0;
  std::function<void(uint64_t, uint64_t)> progress_;
};

// What a layer's device forward needs besides its own weights, for one step.
struct LayerStep {
  int n_tokens = 0;
  bool decode = false;  // every sequence of the step contributes one token
  const EngineOptions* options = nullptr;
  const kv::PagedKvCache* kv = nullptr;
  const kv::RecurrentStatePool* states = nullptr;  // null when no layer keeps state
  // The MoE routing that this layer's mixer may run in its output launch (MoeFfn::route_tail; null:
  // none), and whether it did (the FFN then skips its own routing launch). Set per layer.
  const ops::RouteTail* route = nullptr;
  bool routed = false;
  // The mixer's input projection (Mixer::input_projection) is already in its output buffer, from
  // the previous layer's last launch (RouteTail::Ffn::next); implies prenormed. Set per layer.
  bool projected = false;
  // The mixer's decode attention (Mixer::decode_attention) is done too, its output in c.att, by
  // the same launch (RouteTail::Ffn::attention); implies projected. Set per layer.
  bool attended = false;
};

// Where a mixer's input projection goes, for a previous layer's launch that runs it
// (Mixer::input_projection): w times the normed input row into y.
struct InputProjection {
  const ops::DeviceWeight* w = nullptr;
  cl_mem y = nullptr;
  // With w: the mixer's decode attention on y for that launch too (Mixer::decode_attention), or
  // null.
  const ops::RouteTail::Ffn::Attention* attention = nullptr;
};

// Mixes a layer's tokens: x += mixer(norm(x)).
class Mixer {
 public:
  virtual ~Mixer() = default;
  virtual model::MixerKind kind() const = 0;
  virtual LayerMemoryNeeds memory() const = 0;
  // Uploads the weights onto `c` (the layer's device) and prepares its ops (once).
  virtual void upload(DeviceCtx& c, WeightUploader& up, const kv::PagedKvCache& kv,
                      const EngineOptions& options) = 0;
  // Device forward on c.x. When `prenormed`, c.xn already holds norm(x) (the previous layer's FFN
  // applied this layer's input_norm()). Returns whether it ran s.route (then c.xn holds the FFN's
  // normed input and the routing is done).
  virtual bool forward(DeviceCtx& c, const LayerStep& s, bool prenormed) = 0;
  // The input RMSNorm weights on the device (after upload), for a previous layer that fuses it.
  virtual cl_mem input_norm() const = 0;
  // The one matrix the mixer first runs on its normed input (one row per token, nothing added),
  // for a previous layer on the same device that may run it (forward() then sees s.projected);
  // none (w null) by default.
  virtual InputProjection input_projection(DeviceCtx& /*c*/) const { return {}; }
  // The step's decode attention on the input projection's output, for a launch that runs that
  // projection to run too (forward() then sees s.attended): fills `a` and returns true where the
  // mixer can (one-token decode steps of attention mixers whose op has the decode phase's form,
  // AttentionOp::can_decode_phase); false by default.
  virtual bool decode_attention(DeviceCtx& /*c*/, const LayerStep& /*s*/,
                                ops::RouteTail::Ffn::Attention& /*a*/) const {
    return false;
  }
  // Reference forward: x [n_tokens][n_embd] += mixer(norm(x)) at `positions`, extending `mem`.
  virtual void reference_forward(std::span<float> x, std::span<const int32_t> positions,
                                 ReferenceLayerMemory& mem) const = 0;
};

class MoeFfn;

// A layer's feed-forward block: x += ffn(norm(x)).
class Ffn {
 public:
  virtual ~Ffn() = default;
  virtual model::FfnKind kind() const = 0;
  virtual void upload(DeviceCtx& c, WeightUploader& up, const EngineOptions& options) = 0;
  // Device forward on c.x. next_norm: the next layer's input norm when that layer runs on the same
  // device and may be fused (nullptr otherwise). Returns true when it was applied (c.xn then holds
  // the next layer's normed input).
  virtual bool forward(DeviceCtx& c, const LayerStep& s, cl_mem next_norm) = 0;
  virtual void reference_forward(std::span<float> x) const = 0;
  // The routed experts of a MoE kind (placement, balancer moves, launch counts); null otherwise.
  virtual MoeFfn* routed() { return nullptr; }
};

// A dense SwiGLU FFN's matrices on a device (a layer's FFN or a shared expert): gate_up holds the
// gate rows then the up rows (one launch) when both share a format, else gate and up apart.
struct SwigluWeights {
  ops::DeviceWeight gate_up, gate, up, down;
};
SwigluWeights upload_swiglu(DeviceCtx& c, WeightUploader& up, const gguf::TensorInfo* gate,
                            const gguf::TensorInfo* up_t, const gguf::TensorInfo* down);
// silu(gate . c.xn) * (up . c.xn) of n tokens into c.h (ff wide), through c.gu. The caller runs
// w.down on c.h into wherever the output goes.
void swiglu_hidden(DeviceCtx& c, const SwigluWeights& w, uint32_t ff, int n);

struct Layer {
  std::unique_ptr<Mixer> mixer;
  std::unique_ptr<Ffn> ffn;
};

struct MoeRuntime;  // moe_ffn.h: what MoE layers share across devices (device forward only)

// One Layer per spec layer, by its kinds. `moe` may be null when the layers run on the reference
// path only.
std::vector<Layer> make_layers(const model::ModelSpec& spec, MoeRuntime* moe);

// The weights' bytes a model uploads, for the progress display.
uint64_t upload_bytes(const model::ModelSpec& spec);

}  // namespace tessera::engine
