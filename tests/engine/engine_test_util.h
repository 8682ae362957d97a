// Shared by the engine tests: fixture models in memory, the reference's greedy run, an engine on
// chosen devices.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <vector>

#include "host/engine/opencl_model.h"
#include "host/engine/planning.h"
#include "host/engine/reference_model.h"
#include "host/engine/sampler.h"
#include "host/gguf/gguf.h"
#include "host/model/fixtures.h"
#include "host/model/model_spec.h"

namespace tessera::engine::test {

struct Loaded {
  gguf::GgufFile file;
  model::ModelSpec spec;
};

inline std::unique_ptr<Loaded> load_fixture(const std::string& kind, uint64_t seed = 1) {
  model::FixtureOptions o;
  o.kind = kind;
  o.seed = seed;
  auto bytes = model::make_fixture(o).to_bytes();
  auto file = gguf::GgufFile::from_memory(std::move(bytes), "fixture-" + kind);
  auto l = std::make_unique<Loaded>(Loaded{std::move(file), {}});
  l->spec = model::ModelSpec::from_gguf(l->file);
  return l;
}

// Reference greedy decode: logits after the prompt, then after each generated token.
struct RefRun {
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;  // [0] after the prompt
};
inline RefRun reference_greedy(const model::ModelSpec& spec, const std::vector<int32_t>& prompt,
                               int n) {
  engine::ReferenceModel net(spec);
  auto kv = net.new_kv_state();
  std::vector<int32_t> pos(prompt.size());
  for (size_t i = 0; i < pos.size(); ++i) pos[i] = int32_t(i);
  RefRun r;
  r.logits.push_back(net.forward(prompt, pos, kv));
  for (int i = 0; i < n; ++i) {
    const int32_t next = Sampler::argmax(r.logits.back());
    r.tokens.push_back(next);
    const int32_t p = int32_t(kv.n_past);
    r.logits.push_back(
        net.forward(std::span<const int32_t>(&next, 1), std::span<const int32_t>(&p, 1), kv));
  }
  return r;
}

// The engine's logits (and layer outputs) against the scalar reference: max |got - ref| / max
// |ref| below this. CPU devices run decode's Q4_0 GEMVs and expert FFNs on x in 8-bit blocks
// (MatmulVariant::x_q8, as llama.cpp's CPU backend does), which the float reference does not: on
// PoCL the fixtures' one-token steps then differ by up to 2.7e-2 (qwen3next; 6.6e-3 qwen2moe,
// 4.9e-3 granitehybrid; 5.6e-5 with floats), their prefill steps (float) by ~5e-5.
constexpr double kRefTol = 5e-2;

// max |a - b| / max |b|
inline double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    num = std::max(num, double(std::fabs(a[i] - b[i])));
    den = std::max(den, double(std::fabs(b[i])));
  }
  return den > 0 ? num / den : num;
}

inline std::unique_ptr<OpenClModel> make_engine(const model::ModelSpec& spec,
                                                const DeviceRegistry& reg,
                                                const sched::Config& config,
                                                EngineOptions opts = {}) {
  const auto fp = footprint_of(spec, 256);
  auto plan = plan_for(reg, config, fp, nullptr);
  if (opts.max_context == 0) opts.max_context = 256;
  return std::make_unique<OpenClModel>(spec, reg, plan, fp, opts);
}

// Prefills `prompt` on a new sequence and greedy-decodes n tokens, collecting logits like
// reference_greedy.
inline RefRun engine_greedy(OpenClModel& m, const std::vector<int32_t>& prompt, int n) {
  auto& mem = m.memory();  // KV blocks and, for hybrid models, a recurrent-state slot
  const auto seq = mem.create();
  RefRun r;
  const auto res = mem.reserve(seq, int32_t(prompt.size()));
  StepBatch b;
  b.seqs = {seq};
  b.tokens = prompt;
  b.token_seq.assign(prompt.size(), 0);
  for (size_t i = 0; i < prompt.size(); ++i) b.token_pos.push_back(res.first_pos + int32_t(i));
  b.logit_rows = {int32_t(prompt.size()) - 1};
  r.logits.push_back(m.forward(b));
  for (int i = 0; i < n; ++i) {
    const int32_t next = Sampler::argmax(r.logits.back());
    r.tokens.push_back(next);
    const auto one = mem.reserve(seq, 1);
    StepBatch d;
    d.seqs = {seq};
    d.tokens = {next};
    d.token_seq = {0};
    d.token_pos = {one.first_pos};
    d.logit_rows = {0};
    r.logits.push_back(m.forward(d));
  }
  mem.free(seq);
  return r;
}

}  // namespace tessera::engine::test
