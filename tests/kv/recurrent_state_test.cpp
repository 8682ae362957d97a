// Recurrent state through the sequence memory, with the recurrent mixers' real ops on every
// device: the batch buffer's (first row, count, slot) triples, its errors, and the pool's promises
// as a Mamba2 layer sees them — a fork continues exactly as its parent, a freed slot handed to a
// new sequence starts from zero, decode steps after a prefill equal the reference over the whole
// run.
#include <gtest/gtest.h>

#include <random>

#include "host/kv/recurrent_batch.h"
#include "host/kv/sequence_memory.h"
#include "host/ops/device/ssm.h"
#include "host/ops/reference/ssm.h"

namespace tessera::kv {
namespace {

DeviceRegistry& registry() {
  static DeviceRegistry reg = DeviceRegistry::discover();
  return reg;
}

TEST(RecurrentBatch, TriplesDescribeEachSequence) {
  for (const auto& dev : registry().devices()) {
    RecurrentStatePool pool({{64}, 4}, {dev.get()});
    const SeqId a = 10, b = 11, c = 12;
    pool.create(a);
    pool.create(b);
    pool.fork(a, c);
    RecurrentBatchBuffers buffers(*dev, 4);
    const SeqId seqs[] = {c, a, b};
    const int32_t token_seq[] = {0, 0, 0, 1};  // c: rows 0..2, a: row 3, b: no token
    const RecurrentBatchView v = buffers.upload(pool, seqs, token_seq);
    EXPECT_EQ(v.n_seqs, 3);
    const std::vector<int32_t> want{0, 3, pool.slot(c), 3, 1, pool.slot(a), 0, 0, pool.slot(b)};
    EXPECT_EQ(std::vector<int32_t>(buffers.host_triples().begin(), buffers.host_triples().end()),
              want);
    std::vector<int32_t> got(want.size());
    dev->read(v.seqs, 0, got.data(), got.size() * sizeof(int32_t));
    EXPECT_EQ(got, want) << dev->id();
  }
}

TEST(RecurrentBatch, InconsistentBatchesAreNamedErrors) {
  const Device& dev = *registry().devices().front();
  RecurrentStatePool pool({{64}, 2}, {&dev});
  pool.create(1);
  pool.create(2);
  RecurrentBatchBuffers buffers(dev);
  const SeqId seqs[] = {1, 2};
  auto message = [&](std::span<const SeqId> s, std::span<const int32_t> ts) {
    try {
      buffers.upload(pool, s, ts);
    } catch (const KvCacheUsageError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const int32_t interleaved[] = {0, 1, 0};
  EXPECT_NE(message(seqs, interleaved).find("must be consecutive"), std::string::npos);
  const int32_t outside[] = {0, 2};
  EXPECT_NE(message(seqs, outside).find("outside [0, 2)"), std::string::npos);
  const SeqId unknown[] = {1, 7};
  const int32_t ok[] = {0, 1};
  EXPECT_NE(message(unknown, ok).find("sequence 7 holds no recurrent state slot"),
            std::string::npos);
}

// A Mamba2 layer's state in one slot: the conv state of its xBC channels, then the SSM state.
struct Mamba2Layer {
  static constexpr ops::Mamba2Dims kDims{4, 4, 2, 8};
  static constexpr uint32_t kConv = 4;
  static constexpr uint32_t d_inner = 16, bc = 16, channels = d_inner + 2 * bc;
  static constexpr uint32_t conv_floats = channels * (kConv - 1), ssm_floats = d_inner * 8;
  static constexpr uint64_t slot_bytes = uint64_t(conv_floats + ssm_floats) * 4;
  std::vector<float> w, bias, a, d, dt_bias;
  Mamba2Layer() {
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> u(-1, 1);
    auto fill = [&](size_t n, float lo, float hi) {
      std::vector<float> v(n);
      for (auto& x : v) x = lo + (hi - lo) * (u(rng) + 1) / 2;
      return v;
    };
    w = fill(channels * kConv, -1, 1);
    bias = fill(channels, -0.5f, 0.5f);
    a = fill(4, -1.5f, -0.1f);
    d = fill(4, -1, 1);
    dt_bias = fill(4, -1, 1);
  }
};

// Deterministic inputs of token `pos` of stream `stream`: xBC (48 floats) then dt (4).
std::vector<float> token_input(int stream, int pos) {
  std::mt19937 rng(uint32_t(1000 * stream + pos));
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<float> v(Mamba2Layer::channels + 4);
  for (auto& x : v) x = u(rng);
  return v;
}

// Reference outputs y (16 per token) of tokens [0, n) of a stream from a zero state.
std::vector<float> reference_run(const Mamba2Layer& m, int stream, int n) {
  std::vector<float> conv_state(Mamba2Layer::conv_floats), ssm(Mamba2Layer::ssm_floats), y;
  for (int p = 0; p < n; ++p) {
    const std::vector<float> in = token_input(stream, p);
    std::vector<float> xbc(Mamba2Layer::channels), yt(16);
    reference::conv1d_silu({in, in.size()}, 1, Mamba2Layer::channels, m.w, Mamba2Layer::kConv,
                           m.bias, conv_state, {xbc, xbc.size()});
    const std::span<const float> xs(xbc);
    reference::mamba2_scan({4, 4, 2, 8}, 1, {xs.subspan(0, 16), 48}, {std::span(in).subspan(48), 4},
                           {xs.subspan(16, 16), 48}, {xs.subspan(32, 16), 48}, m.a, m.d, m.dt_bias,
                           ssm, {yt, 16});
    y.insert(y.end(), yt.begin(), yt.end());
  }
  return y;
}

TEST(RecurrentState, ForkContinuesAsItsParentAndReusedSlotsStartFromZero) {
  const Mamba2Layer m;
  for (const auto& dev : registry().devices()) {
    SCOPED_TRACE(dev->id());
    SequenceMemory mem(nullptr, std::make_unique<RecurrentStatePool>(
                                    RecurrentStateConfig{{Mamba2Layer::slot_bytes}, 3},
                                    std::vector<const Device*>{dev.get()}));
    RecurrentStatePool& pool = *mem.states();
    ops::SsmOps ssm(*dev);
    RecurrentBatchBuffers buffers(*dev, 3);
    ClMem w = dev->alloc(m.w.size() * 4), bias = dev->alloc(m.bias.size() * 4), a = dev->alloc(16),
          d = dev->alloc(16), dtb = dev->alloc(16);
    dev->write(w.get(), 0, m.w.data(), m.w.size() * 4);
    dev->write(bias.get(), 0, m.bias.data(), m.bias.size() * 4);
    dev->write(a.get(), 0, m.a.data(), 16);
    dev->write(d.get(), 0, m.d.data(), 16);
    dev->write(dtb.get(), 0, m.dt_bias.data(), 16);
    constexpr int kMaxTokens = 8;
    ClMem in = dev->alloc(kMaxTokens * 52 * 4), xbc = dev->alloc(kMaxTokens * 48 * 4),
          y = dev->alloc(kMaxTokens * 16 * 4);
    // One step: (sequence, stream, first position, token count) per batch sequence.
    struct Part {
      SeqId seq;
      int stream, pos, n;
    };
    auto step = [&](const std::vector<Part>& parts) {
      std::vector<SeqId> seqs;
      std::vector<int32_t> token_seq;
      std::vector<float> host_in;
      for (size_t i = 0; i < parts.size(); ++i) {
        seqs.push_back(parts[i].seq);
        for (int p = parts[i].pos; p < parts[i].pos + parts[i].n; ++p) {
          token_seq.push_back(int32_t(i));
          const auto t = token_input(parts[i].stream, p);
          host_in.insert(host_in.end(), t.begin(), t.end());
        }
      }
      dev->write(in.get(), 0, host_in.data(), host_in.size() * 4);
      const RecurrentBatchView v = buffers.upload(pool, seqs, token_seq);
      const uint64_t stride = Mamba2Layer::slot_bytes / 4;
      ssm.conv1d_silu({in.get(), 0, 52}, w.get(), 0, bias.get(), 0,
                      {v.seqs, v.seqs_offset, uint32_t(v.n_seqs), pool.layer(0), stride, 0},
                      {xbc.get(), 0, 48}, 48, Mamba2Layer::kConv);
      ssm.mamba2_scan(Mamba2Layer::kDims, {xbc.get(), 0, 48}, {in.get(), 48, 52},
                      {xbc.get(), 16, 48}, {xbc.get(), 32, 48}, a.get(), 0, d.get(), 0, dtb.get(),
                      0,
                      {v.seqs, v.seqs_offset, uint32_t(v.n_seqs), pool.layer(0), stride,
                       Mamba2Layer::conv_floats},
                      {y.get(), 0, 16});
      std::vector<float> out(token_seq.size() * 16);
      dev->read(y.get(), 0, out.data(), out.size() * 4);
      return out;
    };
    auto expect_near = [](std::span<const float> got, std::span<const float> want,
                          const char* what) {
      ASSERT_EQ(got.size(), want.size()) << what;
      for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-4f) << what << i;
    };
    const std::vector<float> ref_a = reference_run(m, 1, 8), ref_c = reference_run(m, 2, 3);
    // Prefill a's first 5 tokens, fork b from it, then decode a and b alike for 3 steps.
    const SeqId sa = mem.create();
    expect_near(step({{sa, 1, 0, 5}}), std::span(ref_a).first(5 * 16), "prefill a");
    const SeqId sb = mem.fork(sa);
    for (int p = 5; p < 8; ++p) {
      const std::vector<float> out = step({{sa, 1, p, 1}, {sb, 1, p, 1}});
      expect_near(std::span(out).first(16), std::span(ref_a).subspan(p * 16, 16), "decode a");
      expect_near(std::span(out).subspan(16), std::span(ref_a).subspan(p * 16, 16), "decode b");
    }
    // b's slot (holding state) goes back; c takes a slot and starts from zero beside a's decode.
    mem.free(sb);
    const SeqId sc = mem.create();
    EXPECT_EQ(pool.slots_free(), 1);
    const std::vector<float> out = step({{sc, 2, 0, 2}, {sa, 1, 7, 0}});
    expect_near(out, std::span(ref_c).first(2 * 16), "prefill c");
    expect_near(step({{sc, 2, 2, 1}}), std::span(ref_c).subspan(2 * 16), "decode c");
    mem.free(sa);
    mem.free(sc);
    EXPECT_EQ(pool.slots_free(), 3);
  }
}

}  // namespace
}  // namespace tessera::kv
