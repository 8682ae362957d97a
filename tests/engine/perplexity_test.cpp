// `tessera perplexity` on the project's trained model and its held-out text: within a stated bound
// of the value measured at training time (models/tessera-kjv-moe/README.md: 22.43 with
// llama-perplexity's scoring, ctx 512), on the OpenCL path, for F16 and Q8_0 weights.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>

namespace {

std::string run(const std::string& cmd) {
  std::string out;
  FILE* p = popen((cmd + " 2>/dev/null").c_str(), "r");
  if (!p) return out;
  std::array<char, 4096> buf;
  while (size_t n = fread(buf.data(), 1, buf.size(), p)) out.append(buf.data(), n);
  pclose(p);
  return out;
}

double perplexity_of(const std::string& gguf) {
  const std::filesystem::path dir =
      std::filesystem::path(TESSERA_SOURCE_DIR) / "models" / "tessera-kjv-moe";
  const std::string out =
      run(std::string(TESSERA_BIN) + " perplexity --json -m " + (dir / gguf).string() + " -f " +
          (dir / "heldout-kjv-test.txt").string() + " --ctx 512");
  const auto pos = out.find("\"perplexity\":");
  if (pos == std::string::npos) return NAN;
  return std::stod(out.substr(pos + 13));
}

constexpr double kTrainingTimePerplexity = 22.43;  // PyTorch, llama-perplexity scoring
constexpr double kBound = 0.01;                    // 1%

TEST(PerplexityTest, Q8_0WithinBoundOfTrainingTime) {
  const double ppl = perplexity_of("tessera-kjv-moe-q8_0.gguf");
  ASSERT_TRUE(std::isfinite(ppl));
  EXPECT_NEAR(ppl, kTrainingTimePerplexity, kTrainingTimePerplexity * kBound);
}

TEST(PerplexityTest, F16WithinBoundOfTrainingTime) {
  const double ppl = perplexity_of("tessera-kjv-moe-f16.gguf");
  ASSERT_TRUE(std::isfinite(ppl));
  EXPECT_NEAR(ppl, kTrainingTimePerplexity, kTrainingTimePerplexity * kBound);
}

}  // namespace
