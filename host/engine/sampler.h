// Token sampling from logits: greedy, or temperature + top-k + top-p with a seeded, deterministic
// RNG.
#pragma once

#include <cstdint>
#include <random>
#include <span>

namespace tessera::engine {

struct SamplerConfig {
  float temperature = 0.0f;  // 0: greedy (argmax, lowest id on ties); negative is refused
  int top_k = 0;             // keep the k most likely tokens; 0: all; negative is refused
  float top_p = 1.0f;        // keep the smallest set whose probability reaches top_p; >= 1: all
  uint64_t seed = 0;         // seeds std::mt19937_64: same seed + same logits => same tokens
};

// One sequence's sampler. Not thread-safe (it owns the RNG state); one per sequence.
class Sampler {
 public:
  // Throws EngineError naming the value when temperature is negative or not finite,
  // top_k is negative or top_p is not in (0, 1].
  explicit Sampler(const SamplerConfig& config);

  const SamplerConfig& config() const { return config_; }

  // Picks a token id from logits (one per vocabulary entry). Order of filters: top-k, softmax at
  // the temperature, top-p over the sorted probabilities, then one draw. Each non-greedy call draws
  // exactly one number from the RNG. Throws std::invalid_argument on empty logits.
  int32_t sample(std::span<const float> logits);

  // The first index of the largest number; NaNs are skipped (a row without one gives 0), as the
  // device's argmax_rows (Engine samples greedy rows there).
  static int32_t argmax(std::span<const float> logits);

 private:
  SamplerConfig config_;
  std::mt19937_64 rng_;
};

}  // namespace tessera::engine
