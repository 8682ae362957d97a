// The request engine (engine.h) on fixture models: continuous batching, abort, requests failing
// alone, KV admission, prefill chunks beside decodes, stop conditions, prompt logits, and requests
// added from another thread. Token ids are checked against the scalar reference path.
#include <atomic>
#include <map>
#include <thread>

#include "engine_test_util.h"
#include "host/cli/settings.h"
#include "host/engine/engine.h"
#include "host/engine/generator.h"
#include "tests/devices/test_util.h"

namespace tessera::engine::test {
namespace {

// What a request's callback saw.
struct Seen {
  std::vector<int32_t> tokens;
  std::vector<uint64_t> token_steps;  // engine step count when each token arrived
  FinishReason finish = FinishReason::kNone;
  std::string error;
  int outputs_after_finish = 0;
};

class Harness {
 public:
  explicit Harness(const std::string& fixture, EngineOptions opts = {}, EngineConfig ec = {},
                   uint64_t seed = 5)
      : m_(load_fixture(fixture, seed)), reg_(tessera::cli::discover_devices()) {
    sched::Config cfg;
    cfg.select = {sched::DeviceSelector{}};
    cfg.select[0].id = reg_.devices().front()->id();
    engine_ = std::make_unique<Engine>(make_engine(m_->spec, reg_, cfg, opts), ec);
  }
  Engine& engine() { return *engine_; }
  const DeviceRegistry& registry() const { return reg_; }
  const model::ModelSpec& spec() const { return m_->spec; }

  RequestId add(std::vector<int32_t> prompt, int max_tokens,
                std::function<bool(int32_t)> is_eog = nullptr) {
    Request r;
    r.prompt = std::move(prompt);
    r.max_tokens = max_tokens;
    r.is_eog = std::move(is_eog);
    return add(std::move(r));
  }
  RequestId add(Request r) {
    auto seen = std::make_shared<Seen>();
    r.on_output = [this, seen](const RequestOutput& o) {
      std::lock_guard lock(mutex_);
      if (seen->finish != FinishReason::kNone) ++seen->outputs_after_finish;
      if (o.token >= 0) {
        seen->tokens.push_back(o.token);
        seen->token_steps.push_back(engine_->counters().steps);
      }
      if (o.finished()) {
        seen->finish = o.finish;
        seen->error = o.error;
      }
    };
    const RequestId id = engine_->add_request(std::move(r));
    std::lock_guard lock(mutex_);
    seen_[id] = seen;
    return id;
  }
  Seen seen(RequestId id) {
    std::lock_guard lock(mutex_);
    return *seen_.at(id);
  }
  std::vector<int32_t> reference(const std::vector<int32_t>& prompt, int n) const {
    return reference_greedy(m_->spec, prompt, n).tokens;
  }
  int kv_blocks_used() { return engine_->model().kv_cache().blocks().blocks_used(); }

 private:
  std::unique_ptr<Loaded> m_;
  DeviceRegistry reg_;
  std::unique_ptr<Engine> engine_;
  std::mutex mutex_;
  std::map<RequestId, std::shared_ptr<Seen>> seen_;
};

const std::vector<int32_t> kA{1, 300, 301, 302, 303, 304};
const std::vector<int32_t> kB{1, 320, 321, 322};

std::vector<int32_t> long_prompt(int n) {
  std::vector<int32_t> p{1};
  for (int i = 1; i < n; ++i) p.push_back(300 + (i * 7) % 100);
  return p;
}

// The decode launch price (EngineOptions::launch_prices): with none cached for the model, the
// engine profiles three one-token decode replays after timing three (chaining pauses for them),
// prices its device's launches from them, keeps the price in the probe cache and predicts its
// plan again with it; the tokens stay the reference's, the bench's profile stays empty, and
// chaining resumes. The launch counts are kept beside it (launch_counts_from_cache). An engine
// built with the price cached profiles nothing.
TEST(RequestEngineTest, DecodeLaunchPriceIsMeasuredOnceAndKept) {
  tessera::test::TempDir dir;
  EngineOptions o;
  auto cache = std::make_shared<ProbeCache>(dir.path());
  o.launch_prices = cache;
  {
    Harness h("qwen3moe", o);
    const auto& m = h.engine().model();
    const double probe_us = m.plan().devices[0].launch_us;
    const double predicted = m.plan().decode_step_seconds;
    const auto a = h.add(kA, 12);
    h.engine().run_until_idle();
    EXPECT_EQ(h.seen(a).tokens, h.reference(kA, 12));
    const auto& stats = m.stats();
    EXPECT_EQ(stats.calibration_steps, 3u);
    EXPECT_EQ(stats.replay_profile.count("decode"), 0u);
    EXPECT_GT(stats.chained_steps, 0u);
    const Device& d = h.registry().get(m.plan().devices[0].id);
    const auto us = cache->load_launch_us(d.info(), launch_price_key(d, m.footprint()));
    ASSERT_TRUE(us.has_value());
    EXPECT_GE(*us, probe_us);  // at least the probe's (here the unprobed default) price
    EXPECT_DOUBLE_EQ(m.plan().devices[0].launch_us, *us);
    if (*us > probe_us) EXPECT_GT(m.plan().decode_step_seconds, predicted);
    // The engine's launch counts are kept too: a plan made before any engine (tessera plan)
    // takes them; without them it keeps its defaults.
    auto fp = footprint_of(h.spec(), 256);
    const auto defaults = fp;
    EXPECT_FALSE(launch_counts_from_cache(h.registry(), ProbeCache(""), m.plan(), fp));
    EXPECT_EQ(fp.layers[0].dense_launches, defaults.layers[0].dense_launches);
    ASSERT_TRUE(launch_counts_from_cache(h.registry(), *cache, m.plan(), fp));
    EXPECT_EQ(fp.embedding_launches, m.footprint().embedding_launches);
    EXPECT_EQ(fp.output_launches, m.footprint().output_launches);
    for (size_t l = 0; l < fp.layers.size(); ++l) {
      EXPECT_EQ(fp.layers[l].dense_launches, m.footprint().layers[l].dense_launches) << l;
      EXPECT_EQ(fp.layers[l].expert_launches, m.footprint().layers[l].expert_launches) << l;
    }
  }
  Harness h("qwen3moe", o);
  const auto a = h.add(kA, 12);
  h.engine().run_until_idle();
  EXPECT_EQ(h.seen(a).tokens, h.reference(kA, 12));
  EXPECT_EQ(h.engine().model().stats().calibration_steps, 0u);
}

// With chained decode steps (EngineOptions::pipeline) a greedy decode step is read one step()
// later, so B joins one step() later than without.
TEST(RequestEngineTest, RequestAddedWhileOthersDecodeJoinsAtTheNextStep) {
  for (bool pipeline : {false, true}) {
    SCOPED_TRACE(pipeline ? "chained decode steps" : "each step read at once");
    EngineOptions o;
    o.pipeline = pipeline;
    Harness h("qwen3moe", o);
    const auto a = h.add(kA, 10);
    h.engine().step();  // A's prompt
    h.engine().step();  // A's first decode (chained: submitted, its token not read yet)
    ASSERT_EQ(h.seen(a).tokens.size(), pipeline ? 1u : 2u);
    const auto b = h.add(kB, 6);
    if (pipeline) {
      h.engine().step();  // B's arrival ends the chain: A's decode is read, B waits
      ASSERT_EQ(h.seen(a).tokens.size(), 2u);
      ASSERT_EQ(h.seen(b).tokens.size(), 0u);
    }
    h.engine().step();  // A decodes, B's whole prompt prefills beside it
    ASSERT_EQ(h.seen(a).tokens.size(), 3u);
    ASSERT_EQ(h.seen(b).tokens.size(), 1u);
    EXPECT_EQ(h.seen(b).token_steps[0], h.seen(a).token_steps[2]);
    h.engine().run_until_idle();
    EXPECT_EQ(h.seen(a).tokens, h.reference(kA, 10));
    EXPECT_EQ(h.seen(b).tokens, h.reference(kB, 6));
    EXPECT_EQ(h.seen(a).finish, FinishReason::kLength);
    EXPECT_EQ(h.seen(b).finish, FinishReason::kLength);
    EXPECT_EQ(h.kv_blocks_used(), 0);

    // The same requests alone on the engine give the same tokens.
    const auto b_alone = h.add(kB, 6);
    h.engine().run_until_idle();
    EXPECT_EQ(h.seen(b_alone).tokens, h.seen(b).tokens);
  }
}

// Greedy decode steps chained on the device: each step() submits the next step (its tokens copied
// from the ids of the one in flight) before it reads the one in flight. Tokens equal the
// reference's with chaining on and off, for requests ending by length and by an end-of-generation
// token while the next step is already in flight (its sequence is freed once that step is read),
// and an abort that arrives while a step runs drops that step's token.
TEST(RequestEngineTest, ChainedDecodeStepsEqualTheReference) {
  for (const char* fixture : {"llama", "qwen3moe"}) {
    SCOPED_TRACE(fixture);
    for (bool pipeline : {true, false}) {
      SCOPED_TRACE(pipeline ? "chained" : "not chained");
      EngineOptions o;
      o.pipeline = pipeline;
      Harness h(fixture, o);
      const auto ref_a = h.reference(kA, 12);
      const int32_t eog = ref_a[5];
      const auto first_eog = std::find(ref_a.begin(), ref_a.end(), eog) - ref_a.begin();
      const auto a = h.add(kA, 12, [eog](int32_t t) { return t == eog; });
      const auto b = h.add(kB, 20);  // crosses a KV block boundary while chained
      const auto c = h.add(kB, 9);
      h.engine().run_until_idle();
      EXPECT_EQ(h.seen(a).tokens,
                std::vector<int32_t>(ref_a.begin(), ref_a.begin() + first_eog + 1));
      EXPECT_EQ(h.seen(a).finish, FinishReason::kEog);
      EXPECT_EQ(h.seen(b).tokens, h.reference(kB, 20));
      EXPECT_EQ(h.seen(c).tokens, h.reference(kB, 9));
      EXPECT_EQ(h.seen(a).outputs_after_finish + h.seen(b).outputs_after_finish, 0);
      EXPECT_EQ(h.kv_blocks_used(), 0);
      const auto& stats = h.engine().model().stats();
      if (pipeline)
        EXPECT_GE(stats.chained_steps, 10u);  // b's tokens after a and c ended, at least
      else
        EXPECT_EQ(stats.chained_steps, 0u);

      // An abort while a step is in flight: that step's token is not delivered.
      const auto d = h.add(kA, 30);
      for (int i = 0; i < 6; ++i) h.engine().step();
      const size_t before = h.seen(d).tokens.size();
      h.engine().abort_request(d);
      h.engine().step();
      EXPECT_EQ(h.seen(d).finish, FinishReason::kAborted);
      EXPECT_EQ(h.seen(d).tokens.size(), before);
      EXPECT_EQ(h.seen(d).tokens, h.reference(kA, int(before)));
      h.engine().run_until_idle();
      EXPECT_EQ(h.kv_blocks_used(), 0);
    }
  }
}

TEST(RequestEngineTest, AbortEndsOnlyThatRequest) {
  Harness h("llama");
  const auto a = h.add(kA, 12), b = h.add(kB, 8);
  h.engine().step();
  h.engine().step();
  const size_t a_tokens = h.seen(a).tokens.size();
  h.engine().abort_request(a);
  h.engine().step();
  EXPECT_EQ(h.seen(a).finish, FinishReason::kAborted);
  EXPECT_EQ(h.seen(a).tokens.size(), a_tokens);  // nothing after the abort
  EXPECT_EQ(h.engine().n_running(), 1);
  // A waiting request can be aborted too, and an unknown id is ignored.
  const auto c = h.add(kA, 4);
  h.engine().abort_request(c);
  h.engine().abort_request(9999);
  h.engine().run_until_idle();
  EXPECT_EQ(h.seen(c).finish, FinishReason::kAborted);
  EXPECT_TRUE(h.seen(c).tokens.empty());
  EXPECT_EQ(h.seen(b).tokens, h.reference(kB, 8));
  EXPECT_EQ(h.seen(b).finish, FinishReason::kLength);
  EXPECT_EQ(h.seen(a).outputs_after_finish, 0);
  EXPECT_EQ(h.engine().counters().aborted, 2u);
  EXPECT_EQ(h.kv_blocks_used(), 0);
}

TEST(RequestEngineTest, BadRequestsFailAloneWithTheirError) {
  EngineOptions o;
  o.kv_blocks = 8;  // 128 tokens of KV
  Harness h("llama", o);
  const int32_t n_vocab = int32_t(h.spec().hp.n_vocab);
  const auto good = h.add(kA, 6);
  const auto bad_token = h.add({1, 300, n_vocab + 3}, 4);
  const auto empty = h.add({}, 4);
  const auto too_long = h.add(long_prompt(100), 60);  // 159 positions > 128
  Request bad_sampler;
  bad_sampler.prompt = kB;
  bad_sampler.sampling.top_p = 0.0f;
  const auto bad_top_p = h.add(std::move(bad_sampler));
  h.engine().run_until_idle();
  EXPECT_EQ(h.seen(good).tokens, h.reference(kA, 6));
  EXPECT_EQ(h.seen(good).finish, FinishReason::kLength);
  auto expect_failed = [&](RequestId id, const std::string& words) {
    const Seen s = h.seen(id);
    EXPECT_EQ(s.finish, FinishReason::kFailed) << words;
    EXPECT_TRUE(s.tokens.empty()) << words;
    EXPECT_NE(s.error.find("request " + std::to_string(id)), std::string::npos) << s.error;
    EXPECT_NE(s.error.find(words), std::string::npos) << s.error;
  };
  expect_failed(bad_token, "outside the vocabulary");
  expect_failed(empty, "empty prompt");
  expect_failed(too_long, "can never fit");
  expect_failed(bad_top_p, "top_p");
  EXPECT_EQ(h.engine().counters().failed, 4u);
  EXPECT_EQ(h.kv_blocks_used(), 0);
}

TEST(RequestEngineTest, KvExhaustedWhileDecodingFailsTheNewestAlone) {
  EngineOptions o;
  o.kv_blocks = 3;  // blocks of 16 tokens
  Harness h("llama", o);
  // Both prompts take one block and leave one free. A grows into it and later needs a third
  // block while B waits for a second one: neither can grow, so the newer (B) fails and A, given
  // B's block, finishes with the tokens it gets alone.
  const auto a = h.add(kA, 40), b = h.add(kB, 25);
  h.engine().run_until_idle();
  EXPECT_EQ(h.seen(a).finish, FinishReason::kLength);
  EXPECT_EQ(h.seen(a).tokens, h.reference(kA, 40));
  const Seen sb = h.seen(b);
  EXPECT_EQ(sb.finish, FinishReason::kFailed);
  EXPECT_NE(sb.error.find("KV cache exhausted"), std::string::npos) << sb.error;
  EXPECT_EQ(h.kv_blocks_used(), 0);
}

TEST(RequestEngineTest, AdmissionWaitsForKvAndProceedsWhenFreed) {
  EngineOptions o;
  o.kv_blocks = 2;  // 32 tokens
  Harness h("llama", o);
  const auto big = long_prompt(20);  // two blocks
  const auto a = h.add(big, 5), b = h.add(kB, 4);
  h.engine().step();
  EXPECT_EQ(h.engine().n_running(), 1);
  EXPECT_EQ(h.engine().n_waiting(), 1);  // no free block for B's prompt
  while (h.seen(a).finish == FinishReason::kNone) {
    EXPECT_TRUE(h.seen(b).tokens.empty());
    h.engine().step();
  }
  h.engine().run_until_idle();
  EXPECT_EQ(h.seen(a).tokens, h.reference(big, 5));
  EXPECT_EQ(h.seen(b).tokens, h.reference(kB, 4));
  EXPECT_GT(h.seen(b).token_steps.front(), h.seen(a).token_steps.back());
  EXPECT_EQ(h.kv_blocks_used(), 0);
}

TEST(RequestEngineTest, DecodesFlowWhileALongPromptPrefillsInChunks) {
  EngineConfig ec;
  ec.prefill_chunk = 4;
  Harness h("qwen3", {}, ec);
  const auto a = h.add(kA, 20);
  h.engine().step();  // A's prompt (6 tokens: chunks of 4 and 2)
  h.engine().step();
  ASSERT_EQ(h.seen(a).tokens.size(), 1u);
  const auto prompt = long_prompt(40);
  const auto b = h.add(prompt, 3);
  // B's prompt takes 10 steps of 4 tokens; every one of them carries A's decode token.
  for (int s = 0; s < 10; ++s) {
    const size_t before = h.seen(a).tokens.size();
    EXPECT_EQ(h.engine().step(), 5) << "step " << s;  // 1 decode + 4 prompt tokens
    EXPECT_EQ(h.seen(a).tokens.size(), before + 1) << "step " << s;
    EXPECT_EQ(h.seen(b).tokens.size(), s == 9 ? 1u : 0u) << "step " << s;
  }
  h.engine().run_until_idle();
  EXPECT_EQ(h.seen(a).tokens, h.reference(kA, 20));
  EXPECT_EQ(h.seen(b).tokens, h.reference(prompt, 3));
}

TEST(RequestEngineTest, StepTokenLimitSplitsPromptsBesideDecodes) {
  EngineOptions o;
  o.max_batch_tokens = 8;
  Harness h("llama", o);
  const auto a = h.add(kB, 6);
  h.engine().step();
  const auto prompt = long_prompt(21);
  const auto b = h.add(prompt, 2);
  EXPECT_EQ(h.engine().step(), 8);  // 1 decode + 7 prompt tokens
  EXPECT_EQ(h.engine().step(), 8);
  EXPECT_EQ(h.engine().step(), 8);  // B's prompt done: 7 + 7 + 7
  EXPECT_EQ(h.seen(b).tokens.size(), 1u);
  h.engine().run_until_idle();
  EXPECT_EQ(h.seen(a).tokens, h.reference(kB, 6));
  EXPECT_EQ(h.seen(b).tokens, h.reference(prompt, 2));
}

TEST(RequestEngineTest, StopsOnEndOfGenerationAndMaxTokens) {
  Harness h("llama");
  const auto ref = h.reference(kA, 8);
  const int32_t eog = ref[2];
  const auto a = h.add(kA, 8, [eog](int32_t t) { return t == eog; });
  const auto b = h.add(kA, 4);
  const auto c = h.add(kA, 0);  // prompt only
  h.engine().run_until_idle();
  // The end-of-generation token is the last one delivered (the first time it is sampled).
  const auto first_eog = std::find(ref.begin(), ref.end(), eog) - ref.begin();
  EXPECT_EQ(h.seen(a).tokens, std::vector<int32_t>(ref.begin(), ref.begin() + first_eog + 1));
  EXPECT_EQ(h.seen(a).finish, FinishReason::kEog);
  EXPECT_EQ(h.seen(b).tokens, std::vector<int32_t>(ref.begin(), ref.begin() + 4));
  EXPECT_EQ(h.seen(b).finish, FinishReason::kLength);
  EXPECT_TRUE(h.seen(c).tokens.empty());
  EXPECT_EQ(h.seen(c).finish, FinishReason::kLength);
  EXPECT_EQ(h.kv_blocks_used(), 0);
}

TEST(RequestEngineTest, PromptLogitsMatchTheReferenceAcrossChunks) {
  EngineOptions o;
  o.max_batch_tokens = 16;
  o.max_logit_rows = 16;
  EngineConfig ec;
  ec.prefill_chunk = 5;
  Harness h("qwen3moe", o, ec);
  const auto prompt = long_prompt(13);
  std::vector<float> logits;
  int32_t expect_first = 0;
  bool finished = false;
  Request r;
  r.prompt = prompt;
  r.max_tokens = 0;
  r.return_prompt_logits = true;
  r.on_output = [&](const RequestOutput& out) {
    EXPECT_EQ(out.prompt_first, expect_first);
    expect_first += int32_t(out.prompt_logits.size() / h.spec().hp.n_vocab);
    logits.insert(logits.end(), out.prompt_logits.begin(), out.prompt_logits.end());
    finished = out.finish == FinishReason::kLength;
  };
  h.engine().add_request(std::move(r));
  h.engine().run_until_idle();
  EXPECT_TRUE(finished);
  EXPECT_EQ(h.engine().counters().steps, 3u);  // 5 + 5 + 3
  engine::ReferenceModel net(h.spec());
  auto kv = net.new_kv_state();
  std::vector<int32_t> pos(prompt.size());
  for (size_t i = 0; i < pos.size(); ++i) pos[i] = int32_t(i);
  const auto ref = net.forward(prompt, pos, kv, true);
  ASSERT_EQ(logits.size(), ref.size());
  const size_t nv = h.spec().hp.n_vocab;
  for (size_t p = 0; p < prompt.size(); ++p) {
    const std::vector<float> got(logits.begin() + long(p * nv),
                                 logits.begin() + long((p + 1) * nv));
    const std::vector<float> want(ref.begin() + long(p * nv), ref.begin() + long((p + 1) * nv));
    EXPECT_LT(rel_err(got, want), kRefTol) << "position " << p;
  }
}

TEST(RequestEngineTest, CallbackErrorFailsItsRequestAndIsRethrown) {
  Harness h("llama");
  const auto b = h.add(kB, 5);
  Request r;
  r.prompt = kA;
  r.max_tokens = 5;
  int calls = 0;
  r.on_output = [&](const RequestOutput&) {
    ++calls;
    throw std::runtime_error("client write failed");
  };
  h.engine().add_request(std::move(r));
  EXPECT_THROW(
      {
        try {
          h.engine().step();
        } catch (const std::runtime_error& e) {
          EXPECT_STREQ(e.what(), "client write failed");
          throw;
        }
      },
      std::runtime_error);
  h.engine().run_until_idle();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(h.seen(b).tokens, h.reference(kB, 5));
  EXPECT_EQ(h.kv_blocks_used(), 0);
}

TEST(RequestEngineTest, RequestsAddedFromAnotherThread) {
  Harness h("llama");
  const std::vector<std::vector<int32_t>> prompts{kA, kB, {1, 330, 331}};
  std::vector<RequestId> ids(prompts.size());
  std::atomic<int> added{0};
  std::thread client([&] {
    for (size_t i = 0; i < prompts.size(); ++i) {
      ids[i] = h.add(prompts[i], 5);
      ++added;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  // The engine thread steps until every request has been added and has finished.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (std::chrono::steady_clock::now() < give_up) {
    if (added == int(prompts.size()) && h.engine().idle()) break;
    if (h.engine().step() == 0) std::this_thread::yield();
  }
  client.join();
  h.engine().run_until_idle();
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(h.seen(ids[i]).tokens, h.reference(prompts[i], 5)) << "request " << i;
    EXPECT_EQ(h.seen(ids[i]).finish, FinishReason::kLength);
  }
}

TEST(RequestEngineTest, GenerateRunsSeveralRequestsTogether) {
  Harness h("llama");
  std::vector<GenerationRequest> reqs(3);
  reqs[0].prompt = {1, 300, 301};
  reqs[1].prompt = {1, 302, 303, 304, 305, 306};
  reqs[2].prompt = {1, 307};
  for (auto& r : reqs) {
    r.max_tokens = 5;
    r.stop_at_eog = false;
  }
  GenerationStats st;
  const auto out = generate(h.engine(), reqs, nullptr, nullptr, &st);
  for (size_t i = 0; i < reqs.size(); ++i)
    EXPECT_EQ(out[i], h.reference(reqs[i].prompt, 5)) << "request " << i;
  EXPECT_EQ(st.generated_tokens, 15);
  EXPECT_EQ(st.prompt_tokens, 11);
  EXPECT_EQ(st.decode_tokens, 12);  // the first token of each comes from its prefill
  EXPECT_GT(st.kv_blocks_used, 0);
  EXPECT_EQ(h.kv_blocks_used(), 0);  // freed at the end

  // A callback returning false stops its request; a failing request is reported after the rest.
  reqs[1].max_tokens = 10;
  std::vector<GenerationRequest> two{reqs[1], reqs[0]};
  two.push_back(reqs[2]);
  two[2].prompt = {};
  std::vector<int> seen(3, 0);
  try {
    generate(
        h.engine(), two, [&](size_t i, int32_t) { return ++seen[i] < 3; }, nullptr);
    ADD_FAILURE() << "the empty prompt was accepted";
  } catch (const RequestError& e) {
    EXPECT_NE(std::string(e.what()).find("empty prompt"), std::string::npos) << e.what();
  }
  EXPECT_EQ(seen[0], 3);
  EXPECT_EQ(seen[1], 3);
  EXPECT_EQ(h.kv_blocks_used(), 0);
}

// Greedy rows are sampled on the device (argmax_rows, one id read back per row) when every wanted
// row of a step is a greedy sample whose logits nobody reads; the tokens equal the reference's
// and the host path's. A request that returns its logits, or samples at a temperature, takes its
// step's whole batch back to the host path.
TEST(RequestEngineTest, GreedyRowsAreSampledOnTheDevice) {
  for (bool device_argmax : {true, false}) {
    SCOPED_TRACE(device_argmax ? "device argmax" : "host argmax");
    EngineOptions opts;
    opts.fuse.argmax = device_argmax;
    Harness h("qwen3moe", opts);
    const RequestId a = h.add(kA, 6), b = h.add(kB, 6);
    h.engine().run_until_idle();
    EXPECT_EQ(h.seen(a).tokens, h.reference(kA, 6));
    EXPECT_EQ(h.seen(b).tokens, h.reference(kB, 6));
    const uint64_t greedy_steps = h.engine().model().stats().argmax_steps;
    if (device_argmax)
      EXPECT_GE(greedy_steps, 6u);  // every step wanted greedy rows only
    else
      EXPECT_EQ(greedy_steps, 0u);

    // Beside a request that returns its logits, the steps they share read the rows back.
    Request r;
    r.prompt = kB;
    r.max_tokens = 4;
    r.return_logits = true;
    std::vector<int32_t> with_logits;
    r.on_output = [&](const RequestOutput& o) {
      if (o.token < 0) return;
      with_logits.push_back(o.token);
      EXPECT_EQ(o.logits.size(), h.spec().hp.n_vocab);
      EXPECT_EQ(Sampler::argmax(o.logits), o.token);
    };
    h.engine().add_request(std::move(r));
    const RequestId c = h.add(kA, 4);
    h.engine().run_until_idle();
    EXPECT_EQ(with_logits, h.reference(kB, 4));
    EXPECT_EQ(h.seen(c).tokens, h.reference(kA, 4));
    EXPECT_EQ(h.engine().model().stats().argmax_steps, greedy_steps);  // no step sampled there
  }
}

}  // namespace
}  // namespace tessera::engine::test
