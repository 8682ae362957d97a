// Sampler implementation. The uniform draw is built from the raw 64-bit output (53 high bits)
// rather than std::uniform_real_distribution, whose algorithm differs between standard libraries.
#include "host/engine/sampler.h"

#include "host/engine/engine_error.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

namespace tessera::engine {

Sampler::Sampler(const SamplerConfig& config) : config_(config), rng_(config.seed) {
  // Each value is checked on its own, so the message names the one that is wrong.
  if (!std::isfinite(config.temperature) || config.temperature < 0.0f)
    throw EngineError("sampler: temperature " + std::to_string(config.temperature) +
                      " must be a finite number >= 0 (0 = greedy)");
  if (config.top_k < 0)
    throw EngineError("sampler: top_k " + std::to_string(config.top_k) +
                      " must be >= 0 (0 = all tokens)");
  if (!(config.top_p > 0.0f && config.top_p <= 1.0f))
    throw EngineError("sampler: top_p " + std::to_string(config.top_p) +
                      " must be in (0, 1] (1 = all tokens)");
}

int32_t Sampler::argmax(std::span<const float> logits) {
  if (logits.empty()) throw EngineError("sampler: empty logits");
  // The device's argmax_rows (reference::argmax_rows): the first largest number, NaNs skipped.
  float best = -std::numeric_limits<float>::infinity();
  size_t best_i = logits.size();
  for (size_t i = 0; i < logits.size(); ++i) {
    const float v = logits[i];
    if (v > best || (v == best && best_i == logits.size())) {
      best = v;
      best_i = i;
    }
  }
  return best_i < logits.size() ? int32_t(best_i) : 0;
}

int32_t Sampler::sample(std::span<const float> logits) {
  if (logits.empty()) throw EngineError("sampler: empty logits");
  if (config_.temperature <= 0.0f) return argmax(logits);

  // Candidates sorted by logit (descending, ties by id), cut to top-k.
  std::vector<int32_t> ids(logits.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(),
                   [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  if (config_.top_k > 0 && size_t(config_.top_k) < ids.size()) ids.resize(size_t(config_.top_k));

  std::vector<double> probs(ids.size());
  const double max = logits[ids[0]];
  double sum = 0.0;
  for (size_t i = 0; i < ids.size(); ++i) {
    probs[i] = std::exp((double(logits[ids[i]]) - max) / double(config_.temperature));
    sum += probs[i];
  }
  for (double& p : probs) p /= sum;

  if (config_.top_p < 1.0f) {
    double acc = 0.0;
    size_t keep = 0;
    while (keep < probs.size()) {
      acc += probs[keep++];
      if (acc >= double(config_.top_p)) break;
    }
    probs.resize(keep);
    ids.resize(keep);
    const double kept = std::accumulate(probs.begin(), probs.end(), 0.0);
    for (double& p : probs) p /= kept;
  }

  const double u = double(rng_() >> 11) * 0x1.0p-53;  // uniform in [0, 1)
  double acc = 0.0;
  for (size_t i = 0; i < probs.size(); ++i) {
    acc += probs[i];
    if (u < acc) return ids[i];
  }
  return ids.back();  // rounding left u just above the last cumulative sum
}

}  // namespace tessera::engine
