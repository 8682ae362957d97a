// stories260K (a real llama GGUF, F32): greedy continuation must match llama.cpp's token for token.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "host/engine/reference_model.h"
#include "host/engine/sampler.h"
#include "host/gguf/gguf.h"
#include "host/model/model_spec.h"

namespace tessera::model {

using engine::KvState;
using engine::ReferenceModel;
namespace {

std::filesystem::path models_dir() {
  if (const char* env = std::getenv("TESSERA_MODELS_DIR")) return env;
  return std::filesystem::path(TESSERA_SOURCE_DIR) / ".." / "shared" / "models";
}

TEST(Stories260K, GreedyContinuationMatchesLlamaCpp) {
  const auto path = models_dir() / "stories260K.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent";
  const auto file = gguf::GgufFile::open(path.string());
  const ModelSpec spec = ModelSpec::from_gguf(file);
  EXPECT_EQ(spec.arch->name, "llama");
  const ReferenceModel net(spec);

  // "Once upon a time" = BOS + [403 407 261 378]; llama.cpp's greedy continuation (-n 21):
  const std::vector<int32_t> prompt{1, 403, 407, 261, 378};
  const std::vector<int32_t> expected{432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426,
                                      338, 401, 396, 267, 337, 410, 408, 419, 292, 411};
  KvState kv = net.new_kv_state();
  std::vector<int32_t> pos{0, 1, 2, 3, 4};
  auto logits = net.forward(prompt, pos, kv);
  std::vector<int32_t> got;
  while (got.size() < expected.size()) {
    const int32_t next = engine::Sampler::argmax(logits);
    got.push_back(next);
    const int32_t p = int32_t(kv.n_past);
    logits = net.forward(std::span<const int32_t>(&next, 1), std::span<const int32_t>(&p, 1), kv);
  }
  EXPECT_EQ(got, expected);
}

}  // namespace
}  // namespace tessera::model
