// Tessera's own trained qwen3moe (models/tessera-kjv-moe, F16 and Q8_0): greedy continuation must
// match llama.cpp's token for token (recorded with llama.cpp's CPU backend, flash attention off,
// f32 KV; the prompt is llama.cpp's tokenization of "In the beginning God created").
#include <gtest/gtest.h>

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

const std::vector<int32_t> kPrompt{4094, 1135, 258, 2049, 386, 3288};
const std::vector<int32_t> kLlamaCppGreedy{258, 573, 268, 258, 342, 44,  267, 258, 573, 268, 258,
                                           342, 44,  379, 309, 822, 321, 368, 44,  542, 523, 2986,
                                           321, 258, 493, 268, 432, 44,  267, 438, 321, 338};

class KjvMoe : public ::testing::TestWithParam<std::string> {};

TEST_P(KjvMoe, GreedyContinuationMatchesLlamaCpp) {
  const auto path = std::filesystem::path(TESSERA_SOURCE_DIR) / "models" / "tessera-kjv-moe" /
                    ("tessera-kjv-moe-" + GetParam() + ".gguf");
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent";
  const auto file = gguf::GgufFile::open(path.string());
  const ModelSpec spec = ModelSpec::from_gguf(file);
  ASSERT_EQ(spec.arch->name, "qwen3moe");
  EXPECT_EQ(spec.hp.n_expert, 8u);
  EXPECT_EQ(spec.hp.n_expert_used, 2u);
  const ReferenceModel net(spec);
  KvState kv = net.new_kv_state();
  std::vector<int32_t> pos(kPrompt.size());
  for (size_t i = 0; i < pos.size(); ++i) pos[i] = int32_t(i);
  auto logits = net.forward(kPrompt, pos, kv);
  std::vector<int32_t> got;
  while (got.size() < kLlamaCppGreedy.size()) {
    const int32_t next = engine::Sampler::argmax(logits);
    got.push_back(next);
    const int32_t p = int32_t(kv.n_past);
    logits = net.forward(std::span<const int32_t>(&next, 1), std::span<const int32_t>(&p, 1), kv);
  }
  EXPECT_EQ(got, kLlamaCppGreedy);
}

INSTANTIATE_TEST_SUITE_P(Formats, KjvMoe, ::testing::Values("f16", "q8_0"));

}  // namespace
}  // namespace tessera::model
