// Scalar dense and MoE feed-forward blocks built from the matmul/activation/routing references.
#include "host/ops/reference/ffn.h"

#include <stdexcept>
#include <string>

#include "host/ops/reference/activation.h"

namespace tessera::reference {

void ffn_swiglu(std::span<const float> x, const WeightMatrix& gate, const WeightMatrix& up,
                const WeightMatrix& down, std::span<float> out) {
  if (gate.cols != up.cols || gate.rows != up.rows || down.cols != gate.rows || gate.cols <= 0) {
    throw std::invalid_argument(
        "ffn_swiglu: gate " + std::to_string(gate.rows) + "x" + std::to_string(gate.cols) +
        ", up " + std::to_string(up.rows) + "x" + std::to_string(up.cols) + ", down " +
        std::to_string(down.rows) + "x" + std::to_string(down.cols) + " do not chain");
  }
  const size_t n_tokens = x.size() / size_t(gate.cols);
  std::vector<float> g(n_tokens * size_t(gate.rows)), u(g.size());
  matmul(x, gate, g);
  matmul(x, up, u);
  swiglu(g, u, g);
  matmul(g, down, out);
}

namespace {

// One token through expert e with gpt-oss's biases (each bias vector empty or whole) and
// activation.
void expert_biased(std::span<const float> x, const MoeWeights& w, int64_t e, std::span<float> out) {
  const WeightMatrix gate = w.gate.expert(e), up = w.up.expert(e), down = w.down.expert(e);
  const size_t ff = size_t(gate.rows), n_embd = size_t(down.rows);
  std::vector<float> g(ff), u(ff);
  matmul(x, gate, g);
  matmul(x, up, u);
  for (size_t i = 0; i < ff; ++i) {
    if (!w.gate_b.empty()) g[i] += w.gate_b[size_t(e) * ff + i];
    if (!w.up_b.empty()) u[i] += w.up_b[size_t(e) * ff + i];
  }
  if (w.swiglu_oai)
    swiglu_oai(g, u, g, 1.702f, 7.0f);
  else
    swiglu(g, u, g);
  matmul(g, down, out);
  if (!w.down_b.empty())
    for (size_t i = 0; i < n_embd; ++i) out[i] += w.down_b[size_t(e) * n_embd + i];
}

}  // namespace

void moe_ffn(std::span<const float> x, const MoeWeights& w, const RoutingConfig& routing,
             std::span<float> out, std::vector<ExpertChoice>* choices) {
  const size_t n_embd = size_t(w.router.cols);
  if (n_embd == 0 || x.size() % n_embd != 0 || out.size() != x.size() ||
      w.router.rows != w.gate.n_expert || w.down.rows != int64_t(n_embd)) {
    throw std::invalid_argument(
        "moe_ffn: x has " + std::to_string(x.size()) + " floats, out " +
        std::to_string(out.size()) + ", router " + std::to_string(w.router.rows) + "x" +
        std::to_string(w.router.cols) + ", " + std::to_string(w.gate.n_expert) +
        " experts with down rows " + std::to_string(w.down.rows));
  }
  const size_t n_tokens = x.size() / n_embd;
  if (choices) choices->clear();
  std::vector<float> logits(size_t(w.router.rows)), expert_out(n_embd);
  for (size_t t = 0; t < n_tokens; ++t) {
    const auto xt = x.subspan(t * n_embd, n_embd);
    auto ot = out.subspan(t * n_embd, n_embd);
    matmul(xt, w.router, logits);
    if (!w.router_b.empty())
      for (size_t e = 0; e < logits.size(); ++e) logits[e] += w.router_b[e];
    ExpertChoice choice = route_experts(logits, routing);
    std::fill(ot.begin(), ot.end(), 0.0f);
    for (size_t k = 0; k < choice.ids.size(); ++k) {
      const int64_t e = choice.ids[k];
      if (w.gate_b.empty() && !w.swiglu_oai) {
        ffn_swiglu(xt, w.gate.expert(e), w.up.expert(e), w.down.expert(e), expert_out);
      } else {
        expert_biased(xt, w, e, expert_out);
      }
      for (size_t i = 0; i < n_embd; ++i) ot[i] += choice.weights[k] * expert_out[i];
    }
    if (w.shared) {
      ffn_swiglu(xt, w.shared->gate, w.shared->up, w.shared->down, expert_out);
      float scale = 1.0f;
      if (w.shared->gate_inp) {
        float gate_logit = 0.0f;
        matmul(xt, *w.shared->gate_inp, std::span<float>(&gate_logit, 1));
        scale = sigmoid(gate_logit);
      }
      for (size_t i = 0; i < n_embd; ++i) ot[i] += scale * expert_out[i];
    }
    if (choices) choices->push_back(std::move(choice));
  }
}

}  // namespace tessera::reference
