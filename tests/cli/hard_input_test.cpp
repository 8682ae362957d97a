// Hard input for the `tessera` command (issue 12, deliverable 5): malformed models, configs and
// flags each give a one-line error naming the field and exit code 1; no crash, no hang, nothing
// written to stdout but results, and output files whole or absent.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "host/engine/planning.h"
#include "host/gguf/gguf.h"
#include "host/model/fixtures.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;
using gguf::Value;

struct Result {
  int exit_code = -1;  // -1 when killed by a signal
  int signal = 0;
  bool timed_out = false;
  std::string out, err;
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs `sh -c "<tessera> <args>"` with stdout and stderr captured apart; killed after timeout_s.
// `on_start`, when given, runs once the process has started (with its pid).
// `env` ("VAR=value ...") is set for the command only.
Result run_tessera(const std::string& args, const fs::path& dir, int timeout_s = 120,
                   const std::function<void(pid_t)>& on_start = nullptr,
                   const std::string& env = "") {
  const fs::path out = dir / "stdout.txt", err = dir / "stderr.txt";
  const std::string cmd =
      "exec " + (env.empty() ? "" : "env " + env + " ") + std::string(TESSERA_BIN) + " " + args;
  const pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    const int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(o, 1);
    dup2(e, 2);
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  Result r;
  if (on_start) on_start(pid);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      r.timed_out = true;
      kill(-pid, SIGKILL);
      waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

class HardInput : public ::testing::Test {
 protected:
  void SetUp() override {
    std::random_device rd;
    dir_ = fs::temp_directory_path() / ("tessera-hard-input-" + std::to_string(rd()));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // A fixture model of `kind`, changed by `edit` before it is written.
  std::string model(const std::string& name, const std::function<void(gguf::GgufWriter&)>& edit,
                    const std::string& kind = "llama") {
    model::FixtureOptions o;
    o.kind = kind;
    auto w = model::make_fixture(o);
    if (edit) edit(w);
    const auto path = (dir_ / (name + ".gguf")).string();
    w.write(path);
    return path;
  }
  std::string good_model() { return model("good", nullptr); }

  Result run(const std::string& args, int timeout_s = 120,
             const std::function<void(pid_t)>& on_start = nullptr) {
    return run_tessera(args, dir_, timeout_s, on_start);
  }

  // The command failed cleanly: exit code 1, one error line on stderr holding `message`, nothing
  // on stdout.
  static void expect_error(const Result& r, const std::string& message) {
    EXPECT_FALSE(r.timed_out) << "hung";
    EXPECT_EQ(r.signal, 0) << "killed by signal " << r.signal << "\n" << r.err;
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_NE(r.err.find(message), std::string::npos) << "stderr: " << r.err;
    EXPECT_NE(r.err.find("error: "), std::string::npos) << r.err;
    EXPECT_EQ(r.out, "") << "stdout must hold results only";
  }

  fs::path dir_;
};

const std::string kIds = " --tokens 300,301 --no-bos -n 4 --ids --ignore-eos";

// `tessera fixture --help` names every kind the generator knows (its list comes from the same
// table), and an unknown kind is refused listing them.
TEST_F(HardInput, FixtureHelpAndErrorsListEveryKind) {
  const Result help = run("fixture --help");
  EXPECT_EQ(help.exit_code, 0) << help.err;
  const Result bad = run("fixture --arch nosuch -o " + (dir_ / "x.gguf").string());
  EXPECT_NE(bad.exit_code, 0);
  std::string help_text = help.out + help.err;
  // Option descriptions wrap: compare with the whitespace removed.
  help_text.erase(std::remove_if(help_text.begin(), help_text.end(),
                                 [](unsigned char c) { return std::isspace(c); }),
                  help_text.end());
  std::string kinds;
  for (const auto& kind : model::fixture_kinds()) {
    kinds += (kinds.empty() ? "" : ",") + kind;
    EXPECT_NE(bad.err.find(kind), std::string::npos) << kind << ": " << bad.err;
  }
  EXPECT_NE(help_text.find("fixturekind:" + kinds), std::string::npos) << help.out;
}

// `tessera run --chat` needs a chat template: the model's, or one named that exists.
TEST_F(HardInput, RunChatWithoutAUsableTemplateIsRefused) {
  const std::string m = good_model();  // the llama fixture carries no chat template
  expect_error(run("run -m " + m + " --chat -p hi -n 2"), "tokenizer.chat_template");
  expect_error(run("run -m " + m + " --chat-template nosuch -p hi -n 2"), "--chat-template");
  expect_error(run("run -m " + m + " --chat --tokens 300 -n 2"), "--chat takes the prompt");
}

TEST_F(HardInput, BadRmsEpsilonIsRefusedAtLoad) {
  for (float eps : {NAN, 0.0f, -1e-5f, INFINITY}) {
    const auto m = model("eps", [&](gguf::GgufWriter& w) {
      w.set("llama.attention.layer_norm_rms_epsilon", Value::f32(eps));
    });
    expect_error(run("run --reference -m " + m + kIds),
                 "llama.attention.layer_norm_rms_epsilon': ");
  }
}

TEST_F(HardInput, BadRopeFreqBaseIsRefusedAtLoad) {
  for (float base : {NAN, 0.0f, -10000.0f}) {
    const auto m = model(
        "base", [&](gguf::GgufWriter& w) { w.set("llama.rope.freq_base", Value::f32(base)); });
    expect_error(run("run --reference -m " + m + kIds), "'llama.rope.freq_base': ");
  }
}

TEST_F(HardInput, VocabularySmallerThanTheOutputIsRefusedAtLoad) {
  const auto vocab = model::fixture_vocab();
  const auto m = model("vocab", [&](gguf::GgufWriter& w) {
    std::vector<std::string> fewer(vocab.tokens.begin(), vocab.tokens.begin() + 100);
    w.set("tokenizer.ggml.tokens", Value::strings(fewer));
  });
  const auto r = run("run --reference -m " + m + kIds);
  expect_error(r, "'tokenizer.ggml.tokens': 100 tokens, but");
  // Not even from ids without text: no id the vocabulary cannot print reaches stdout.
  expect_error(run("run --reference -m " + m + " --tokens 5 -n 2 --ids"), "100 tokens");
}

TEST_F(HardInput, MetadataTypeErrorNamesTheKey) {
  const auto m = model("types", [&](gguf::GgufWriter& w) {
    w.set("tokenizer.ggml.tokens", Value::i32s(std::vector<int32_t>(100000, 7)));
  });
  expect_error(run("run --reference -m " + m + " -p hello -n 2"),
               "metadata key 'tokenizer.ggml.tokens[0]': expected STRING, found INT32");
}

TEST_F(HardInput, ModelOnAFifoIsRefusedWithoutWaiting) {
  const auto fifo = dir_ / "model.fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  expect_error(run("run --reference -m " + fifo.string() + kIds, 20), "not a regular file");
  expect_error(run("run --reference -m " + dir_.string() + kIds, 20), "not a regular file");
}

TEST_F(HardInput, ConfigThatIsADirectoryOrFifoIsRefused) {
  const auto m = good_model();
  expect_error(run("plan --no-measure -m " + m + " --config " + dir_.string()),
               "not a regular file");
  const auto fifo = dir_ / "config.fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  expect_error(run("plan --no-measure -m " + m + " --config " + fifo.string(), 20),
               "not a regular file");
}

TEST_F(HardInput, PerplexityTextOnAFifoIsRefused) {
  const auto fifo = dir_ / "text.fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  expect_error(run("perplexity --reference -m " + good_model() + " -f " + fifo.string(), 20),
               "-f: '" + fifo.string() + "' is not a regular file");
}

// llama-perplexity's KL-divergence workflow with KV cache formats: save a base run's
// log-probabilities, compare the same run (divergence 0, full agreement) and a q8_0 / q4_0 cache
// run (-ctk / -ctv) against it; a base of another setting and a missing base are refused.
TEST_F(HardInput, PerplexityKlDivergenceAgainstASavedBase) {
  const auto m = model("qwen3", nullptr, "qwen3");  // head size 32: block formats fit
  const auto text = dir_ / "text.txt";
  {
    std::ofstream out(text);
    for (int i = 0; i < 8; ++i) out << "in the beginning was the word and the word was with god ";
  }
  const auto base = (dir_ / "base.kld").string();
  const std::string common = "perplexity -m " + m + " -f " + text.string() + " --ctx 16 --chunks 2";
  const auto saved = run(common + " --kl-divergence-base " + base);
  ASSERT_EQ(saved.exit_code, 0) << saved.err;
  EXPECT_NE(saved.out.find("saved the KL-divergence base"), std::string::npos) << saved.out;
  const auto same = run(common + " --kl-divergence-base " + base + " --kl-divergence");
  ASSERT_EQ(same.exit_code, 0) << same.err;
  EXPECT_NE(same.out.find("mean 0.000000"), std::string::npos) << same.out;
  EXPECT_NE(same.out.find("top-1 agreement 100.000%"), std::string::npos) << same.out;
  const auto q =
      run(common + " -ctk q8_0 -ctv q4_0 --kl-divergence-base " + base + " --kl-divergence");
  ASSERT_EQ(q.exit_code, 0) << q.err;
  EXPECT_NE(q.out.find("KL divergence vs"), std::string::npos) << q.out;
  EXPECT_EQ(q.out.find("mean 0.000000 "), std::string::npos) << q.out;  // the cache changed
  EXPECT_NE(q.err.find("KV cache format: K q8_0, V q4_0"), std::string::npos) << q.err;
  expect_error(run("perplexity -m " + m + " -f " + text.string() +
                   " --ctx 16 --chunks 1 --kl-divergence-base " + base + " --kl-divergence"),
               "was saved for another text or setting");
  expect_error(run(common + " --kl-divergence"), "--kl-divergence needs --kl-divergence-base");
  expect_error(run(common + " -ctk q3_x"), "kv_cache.k_format: unknown format 'q3_x'");
}

TEST_F(HardInput, ExtraWordsAfterAnOptionAreAnError) {
  expect_error(run("run --reference -m " + good_model() + " -p Once upon a time -n 2"),
               "unexpected argument 'upon'");
}

TEST_F(HardInput, SamplingFlagsOutOfRangeAreRefused) {
  const auto m = good_model();
  expect_error(run("run --reference -m " + m + kIds + " --temp -1"), "temperature -1");
  expect_error(run("run --reference -m " + m + kIds + " --top-k -3"), "top_k -3 must be >= 0");
  const auto nan = run("run --reference -m " + m + kIds + " --temp nan");
  expect_error(nan, "temperature nan");
  EXPECT_EQ(nan.err.find("top_p"), std::string::npos) << "blames top_p: " << nan.err;
  expect_error(run("run --reference -m " + m + kIds + " --top-p 0"), "top_p 0");
  const auto text = dir_ / "text.txt";
  std::ofstream(text) << "in the beginning was the word and the word was with god\n";
  expect_error(run("perplexity --reference -m " + m + " -f " + text.string() + " --chunks -1"),
               "--chunks must be >= 0");
}

TEST_F(HardInput, ConfigValuesOutOfRangeAreRefused) {
  const auto moe = model("moe", nullptr, "qwen3moe");
  expect_error(run("plan --no-measure -m " + moe + " --set placement.cpu_moe_layers=99"),
               "placement.cpu_moe_layers: 99 is more than the model's 2 layers");
  const auto zero = run("plan --no-measure -m " + moe + " --set devices.budgets.cpu0=0");
  expect_error(zero, "devices.budgets.cpu0: memory budget '0' must be at least 1 byte");
  EXPECT_EQ(zero.err.find("cannot read"), std::string::npos) << zero.err;
  expect_error(run("plan --no-measure -m " + moe + " --set 'placement.experts={shares: [1'"),
               "<command line>: placement.experts: value '{shares: [1' is not valid YAML");
}

TEST_F(HardInput, HugeExpertShareDoesNotCrashThePlanner) {
  const auto moe = model("moe", nullptr, "qwen3moe");
  const auto r =
      run("plan --no-measure -m " + moe + " --set 'placement.experts={shares: {cpu0: 1e308}}'");
  EXPECT_EQ(r.signal, 0) << r.err;
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("cpu0"), std::string::npos) << r.out;
}

// A GGUF that declares ~1 TiB of tensors (a sparse file): the reference path must refuse it at
// once, as the OpenCL path's planner does, instead of running until memory runs out.
TEST_F(HardInput, ReferencePathRefusesAModelLargerThanMemory) {
  const uint64_t E = 2048, V_small = 4, V_huge = 1ull << 27;  // 2048 x 2^27 F32 = 1 TiB
  gguf::GgufWriter w;
  w.set("general.architecture", Value::string("llama"));
  w.set("llama.block_count", Value::u32(1));
  w.set("llama.embedding_length", Value::u32(uint32_t(E)));
  w.set("llama.context_length", Value::u32(64));
  w.set("llama.attention.head_count", Value::u32(1));
  w.set("llama.attention.key_length", Value::u32(8));
  w.set("llama.attention.value_length", Value::u32(8));
  w.set("llama.feed_forward_length", Value::u32(8));
  w.set("llama.attention.layer_norm_rms_epsilon", Value::f32(1e-5f));
  auto f32 = [&](const std::string& name, std::vector<uint64_t> dims) {
    uint64_t n = 1;
    for (auto d : dims) n *= d;
    w.add_tensor_f32(name, dims, std::vector<float>(n, 0.5f));
  };
  f32("output_norm.weight", {E});
  f32("blk.0.attn_norm.weight", {E});
  f32("blk.0.attn_q.weight", {E, 8});
  f32("blk.0.attn_k.weight", {E, 8});
  f32("blk.0.attn_v.weight", {E, 8});
  f32("blk.0.attn_output.weight", {8, E});
  f32("blk.0.ffn_norm.weight", {E});
  f32("blk.0.ffn_gate.weight", {E, 8});
  f32("blk.0.ffn_up.weight", {E, 8});
  f32("blk.0.ffn_down.weight", {8, E});
  f32("token_embd.weight", {E, V_small});  // last in the file: grown below
  auto bytes = w.to_bytes();
  const std::string name = "token_embd.weight";
  size_t at = std::string::npos;
  for (size_t i = 0; i + name.size() <= bytes.size() && at == std::string::npos; ++i)
    if (std::memcmp(bytes.data() + i, name.data(), name.size()) == 0) at = i;
  ASSERT_NE(at, std::string::npos);
  const size_t dim1 = at + name.size() + 4 + 8;  // after n_dims (u32) and dims[0] (u64)
  uint64_t v = 0;
  std::memcpy(&v, bytes.data() + dim1, 8);
  ASSERT_EQ(v, V_small);
  std::memcpy(bytes.data() + dim1, &V_huge, 8);
  const auto path = dir_ / "huge.gguf";
  {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  }
  const uint64_t grow = E * (V_huge - V_small) * 4;
  if (truncate(path.c_str(), off_t(bytes.size() + grow)) != 0)
    GTEST_SKIP() << "this file system cannot hold a sparse 1 TiB file";
  expect_error(run("run --reference -m " + path.string() + " --tokens 1 -n 2", 60),
               "of host memory (weights, KV cache, activations) but this machine has");
}

TEST_F(HardInput, WriteErrorsAreNotExitCodeZero) {
  const auto m = good_model();
  auto r = run("run --reference -m " + m + kIds + " > /dev/full");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("writing to stdout failed: No space left on device"), std::string::npos)
      << r.err;
  r = run("run --reference -m " + m + kIds + " --logits-out /dev/full");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("--logits-out: writing '/dev/full' failed: No space left on device"),
            std::string::npos)
      << r.err;
  r = run("inspect " + m + " > /dev/full");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("writing to stdout failed"), std::string::npos) << r.err;
}

TEST_F(HardInput, LogitsFileIsWholeOrAbsent) {
  const auto m = good_model();
  const auto logits = dir_ / "logits.bin";
  // A run that fails (stdout full) after some logits were written leaves no file behind.
  auto r =
      run("run --reference -m " + m + kIds + " --logits-out " + logits.string() + " > /dev/full");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_FALSE(fs::exists(logits));
  // A run that succeeds leaves exactly n steps of n_vocab floats.
  r = run("run --reference -m " + m + kIds + " --logits-out " + logits.string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto n_vocab = model::fixture_vocab().tokens.size();
  EXPECT_EQ(fs::file_size(logits), 4 * n_vocab * sizeof(float));
  // SIGTERM in the middle of a long run: the earlier file stays as it was, no temporary is left.
  model::FixtureOptions o;
  o.n_ctx = 1 << 16;
  const auto long_model = (dir_ / "long.gguf").string();
  model::make_fixture(o).write(long_model);
  const auto before = fs::file_size(logits);
  bool signalled = false;
  r = run("run --reference -m " + long_model +
              " --tokens 300 --no-bos -n 60000 --ids --ignore-eos --logits-out " + logits.string(),
          120, [&](pid_t pid) {
            // Wait until the temporary file has data, then stop the run.
            const auto temp = logits.string() + ".tmp-" + std::to_string(pid);
            for (int i = 0; i < 3000; ++i) {
              std::error_code ec;
              if (fs::exists(temp, ec) && fs::file_size(temp, ec) > 0) {
                kill(pid, SIGTERM);
                signalled = true;
                return;
              }
              std::this_thread::sleep_for(std::chrono::milliseconds(10));
            }
          });
  ASSERT_TRUE(signalled) << "the run never wrote its temporary file: " << r.err;
  EXPECT_EQ(r.signal, SIGTERM) << r.err;
  EXPECT_EQ(fs::file_size(logits), before);
  for (const auto& e : fs::directory_iterator(dir_))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
}

TEST_F(HardInput, KvBudgetIsEnforcedByRun) {
  // 2 layers x 2 (K, V) x kv_dim x f16 per token: a 1 KiB budget holds a handful of tokens.
  const auto r = run("run -m " + good_model() + kIds + " --device cpu0 --set kv_cache.budget=1KiB");
  expect_error(r, "kv_cache.budget: 1.0 KiB holds");
}

TEST(KvBudget, CapsTheCacheAndRefusesWhatDoesNotFit) {
  sched::Config c;
  sched::Plan plan;
  plan.kv_bytes = {64 * 1024, 0};
  sched::ModelFootprint f;
  f.kv_bytes_per_token = 256;  // 64 KiB = 256 tokens = 16 blocks of 16
  EXPECT_EQ(engine::kv_blocks_within_budget(c, plan, f, 16, 100, 1, 1000), 100);  // no budget
  c.kv_budget = sched::MemoryBudget{64 * 1024, 0};
  EXPECT_EQ(engine::kv_blocks_within_budget(c, plan, f, 16, 100, 1, 200), 16);
  EXPECT_EQ(engine::kv_blocks_within_budget(c, plan, f, 16, 8, 1, 100), 8);
  EXPECT_THROW(engine::kv_blocks_within_budget(c, plan, f, 16, 100, 1, 257), sched::ConfigError);
  EXPECT_THROW(engine::kv_blocks_within_budget(c, plan, f, 16, 100, 2, 200), sched::ConfigError);
}

// Logs go to stderr: a warning (the probe cache cannot be stored under a cache "directory" that
// is a file) must not reach the JSON on stdout.
TEST_F(HardInput, LogsNeverReachStdout) {
  const auto not_a_dir = dir_ / "file";
  std::ofstream(not_a_dir) << "x";
  const auto logged =
      run_tessera("plan --json -m " + good_model() + " --device cpu0", dir_, 120, nullptr,
                  "POCL_CACHE_DIR=" + dir_.string() + " XDG_CACHE_HOME=" + not_a_dir.string() +
                      " TESSERA_LOG=debug");
  ASSERT_EQ(logged.exit_code, 0) << logged.err;
  EXPECT_NE(logged.err.find("could not store"), std::string::npos) << logged.err;
  EXPECT_EQ(logged.out.find("could not store"), std::string::npos) << logged.out;
  ASSERT_FALSE(logged.out.empty());
  EXPECT_EQ(logged.out.front(), '{') << logged.out;
}

// PoCL reports no device when it cannot create its kernel cache directory: the error says so
// instead of claiming that no OpenCL platform is installed.
TEST_F(HardInput, UnusablePoclCacheDirectoryIsNamed) {
  const auto not_a_dir = dir_ / "file";
  std::ofstream(not_a_dir) << "x";
  const auto r = run_tessera("devices", dir_, 60, nullptr,
                             "-u POCL_CACHE_DIR XDG_CACHE_HOME=" + not_a_dir.string());
  if (r.exit_code == 0) GTEST_SKIP() << "another OpenCL platform has devices:\n" << r.out;
  expect_error(r, "reports no device");
  EXPECT_NE(r.err.find("POCL_CACHE_DIR"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("no OpenCL platform found"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace tessera
