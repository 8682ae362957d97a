// Attention kernels over the paged KV cache, on every OpenCL device, against the scalar reference:
// head sizes 8/64/128, GQA, odd lengths, block sizes, shared prefixes with copy-on-write, mixed
// prefill + decode batches, split-K over long contexts, freeing and reuse, sliding windows, bad
// arguments.
#include <gtest/gtest.h>

#include "attention_harness.h"
#include "host/cli/settings.h"

namespace tessera::test {
namespace {

DeviceRegistry& registry() {
  static DeviceRegistry reg = tessera::cli::discover_devices();
  return reg;
}

struct Shape {
  int32_t n_head, n_head_kv, head_dim, block_size;
};

class AttentionShapes : public ::testing::TestWithParam<Shape> {};

// Prefill of an odd-length prompt, a second chunk, then decode steps, each through every kernel.
TEST_P(AttentionShapes, PrefillChunksThenDecode) {
  const Shape sh = GetParam();
  for (const auto& dev : registry().devices()) {
    SCOPED_TRACE(dev->id());
    ops::AttentionConfig c = attention_config(sh.n_head, sh.n_head_kv, sh.head_dim, sh.block_size);
    for (AttnKernel kernel : {AttnKernel::kPrefill, AttnKernel::kDecode}) {
      AttentionHarness h(*dev, c, 64);
      SeqId a = h.create();
      EXPECT_STEP_OK(h.step({{a, 37}}, kernel, 1));
      EXPECT_STEP_OK(h.step({{a, 5}}, kernel, 2));
      for (uint32_t i = 0; i < 3; ++i) EXPECT_STEP_OK(h.step({{a, 1}}, kernel, 3 + i));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Heads, AttentionShapes,
                         ::testing::Values(Shape{8, 4, 8, 16},    // stories260K-like
                                           Shape{8, 2, 64, 16},   // GQA group 4
                                           Shape{4, 4, 64, 32},   // MHA, 32-token blocks
                                           Shape{4, 1, 128, 16},  // MQA, head 128
                                           Shape{6, 2, 128, 8}),  // blocks smaller than tiles
                         [](const auto& info) {
                           const Shape s = info.param;
                           return "h" + std::to_string(s.n_head) + "kv" +
                                  std::to_string(s.n_head_kv) + "d" + std::to_string(s.head_dim) +
                                  "bs" + std::to_string(s.block_size);
                         });

// Many sequences forked from shared prefixes (partially filled last blocks, so copy-on-write),
// stepping together in mixed batches: prefill chunks and decode tokens in one step.
TEST(Attention, SharedPrefixesMixedBatches) {
  for (const auto& dev : registry().devices()) {
    SCOPED_TRACE(dev->id());
    ops::AttentionConfig c = attention_config(8, 2, 64, 16);
    AttentionHarness h(*dev, c, 96);
    SeqId root = h.create();
    EXPECT_STEP_OK(h.step({{root, 21}}, AttnKernel::kPrefill, 10));
    std::vector<SeqId> kids;
    kids.reserve(5);
    for (int i = 0; i < 5; ++i) kids.push_back(h.fork(root));
    SeqId other = h.create();
    const int32_t used_before = h.cache().blocks().blocks_used();
    // Step 1: kids 0-2 decode, kid 3 prefills a chunk, `other` starts its prompt.
    EXPECT_STEP_OK(h.step({{kids[0], 1}, {kids[1], 1}, {kids[2], 1}, {kids[3], 9}, {other, 13}},
                          AttnKernel::kMixed, 11));
    // Each of the 4 kids wrote into the shared partial block: 4 copies (the root keeps its own).
    EXPECT_GE(h.cache().blocks().blocks_used(), used_before + 4);
    EXPECT_EQ(h.cache().blocks().block_table(kids[0])[0], h.cache().blocks().block_table(root)[0]);
    // Step 2: everyone decodes, the root too (it still shares its first block with all kids).
    std::vector<StepEntry> all{{root, 1}, {other, 1}};
    for (SeqId k : kids) all.push_back({k, 1});
    EXPECT_STEP_OK(h.step(all, AttnKernel::kMixed, 12));
    EXPECT_STEP_OK(h.step(all, AttnKernel::kDecode, 13));
    EXPECT_STEP_OK(h.step(all, AttnKernel::kPrefill, 14));
    // Forks of forks, then a prefill chunk across a block boundary for one of them.
    SeqId grandkid = h.fork(kids[4]);
    EXPECT_STEP_OK(h.step({{grandkid, 19}, {kids[4], 2}, {kids[1], 1}}, AttnKernel::kMixed, 15));
    // Batch tokens of one sequence not consecutive: the prefill kernel processes runs.
    EXPECT_STEP_OK(
        h.step({{kids[2], 6}, {kids[0], 3}}, AttnKernel::kPrefill, 16, /*interleave=*/true));
    EXPECT_STEP_OK(h.step({{kids[3], 4}, {root, 2}}, AttnKernel::kDecode, 17, /*interleave=*/true));
  }
}

// Contexts long enough for several decode chunks (the reduce combines them), at lengths that are
// not multiples of the block or tile sizes.
TEST(Attention, SplitKLongContext) {
  for (const auto& dev : registry().devices()) {
    SCOPED_TRACE(dev->id());
    ops::AttentionConfig c = attention_config(4, 1, 64, 16);
    AttentionHarness h(*dev, c, 256);
    SeqId a = h.create(), b = h.create();
    EXPECT_STEP_OK(h.step({{a, 1201}, {b, 333}}, AttnKernel::kPrefill, 20));
    const auto split = h.op().decode_split(2, 1202);
    EXPECT_GT(split.n_chunks, 1) << "the test should exercise the reduce";
    EXPECT_STEP_OK(h.step({{a, 1}, {b, 1}}, AttnKernel::kDecode, 21));
    EXPECT_STEP_OK(h.step({{b, 1}}, AttnKernel::kDecode, 22));
  }
}

// Freed sequences' blocks are reused by new ones; nothing of the old contents leaks in.
TEST(Attention, FreeAndReuse) {
  for (const auto& dev : registry().devices()) {
    SCOPED_TRACE(dev->id());
    ops::AttentionConfig c = attention_config(4, 2, 8, 16);
    AttentionHarness h(*dev, c, 8);  // 128 tokens in all
    SeqId a = h.create(), b = h.create();
    EXPECT_STEP_OK(h.step({{a, 60}, {b, 50}}, AttnKernel::kPrefill, 30));
    EXPECT_THROW(h.cache().reserve(a, 20), kv::KvCacheFullError);
    EXPECT_FALSE(h.cache().try_reserve(b, 20).has_value());
    h.free(a);
    SeqId d = h.create();
    EXPECT_STEP_OK(h.step({{d, 45}, {b, 1}}, AttnKernel::kMixed, 31));
    EXPECT_STEP_OK(h.step({{d, 1}, {b, 1}}, AttnKernel::kDecode, 32));
    EXPECT_STEP_OK(h.step({{d, 1}, {b, 1}}, AttnKernel::kPrefill, 33));
  }
}

// Both decode kernels (work-group and row-streaming) and a GPU-style prefill decomposition on every
// device, whatever the device's defaults are.
TEST(Attention, EveryVariantOnEveryDevice) {
  for (const auto& dev : registry().devices()) {
    SCOPED_TRACE(dev->id());
    for (Shape sh : {Shape{8, 2, 64, 16}, Shape{4, 4, 12, 16}})
      for (int32_t variant : {0, 1}) {
        ops::AttentionConfig c =
            attention_config(sh.n_head, sh.n_head_kv, sh.head_dim, sh.block_size);
        ops::AttentionTuning t = ops::default_attention_tuning(*dev, c);
        t.decode_rows = !t.decode_rows;
        t.decode_variant = variant;  // the value pass shared by the group's heads, or not
        t.decode_lut = variant == 1;
        t.decode_items = 32;
        t.decode_tile = 32;
        t.reduce_items = 8;
        t.prefill_row_items = t.prefill_row_items == 1 ? 4 : 1;
        t.prefill_rows = 8;
        t.prefill_kv_tile = 8;
        // Printed before the run: a driver crash (seen once on a GPU) then names the variant.
        std::printf("variant on %s: head_dim %d, decode %s v%d, prefill %d items per row\n",
                    dev->id().c_str(), sh.head_dim, t.decode_rows ? "rows" : "work-group", variant,
                    t.prefill_row_items);
        std::fflush(stdout);
        AttentionHarness h(*dev, c, 64, true, 1, t);
        SeqId a = h.create(), b = h.create();
        EXPECT_STEP_OK(h.step({{a, 150}, {b, 7}}, AttnKernel::kPrefill, 50));
        EXPECT_STEP_OK(h.step({{a, 1}, {b, 1}}, AttnKernel::kDecode, 51));
        EXPECT_STEP_OK(h.step({{b, 1}, {a, 3}}, AttnKernel::kMixed, 52));
      }
  }
}

// Sliding-window attention (the cache releases the blocks that fall out of the window and the
// harness poisons them) at positions below, at and far past the window, through every kernel, one
// and two sequences, GQA and not; blocks held per sequence stay bounded by the window.
TEST(Attention, SlidingWindowBelowAtAndPastTheWindow) {
  for (const auto& dev : registry().devices()) {
    SCOPED_TRACE(dev->id());
    for (Shape sh : {Shape{8, 2, 64, 16}, Shape{8, 4, 8, 16}}) {
      for (int32_t window : {5, 16, 40}) {
        SCOPED_TRACE("window " + std::to_string(window) + " head_dim " +
                     std::to_string(sh.head_dim));
        ops::AttentionConfig c =
            attention_config(sh.n_head, sh.n_head_kv, sh.head_dim, sh.block_size);
        c.window = window;
        // The device's default kernels, then the other decomposition (work-group decode and
        // several items per prefill row on CPUs; row-streaming decode on GPUs).
        ops::AttentionTuning other = ops::default_attention_tuning(*dev, c);
        other.decode_rows = !other.decode_rows;
        other.decode_items = other.decode_tile = 32;
        other.reduce_items = 8;
        other.prefill_row_items = other.prefill_row_items == 1 ? 4 : 1;
        other.prefill_rows = 8;
        other.prefill_kv_tile = 8;
        for (int variant = 0; variant < 5; ++variant) {
          const AttnKernel kernel = variant % 3 == 0   ? AttnKernel::kPrefill
                                    : variant % 3 == 1 ? AttnKernel::kDecode
                                                       : AttnKernel::kMixed;
          std::optional<ops::AttentionTuning> tuning;
          if (variant >= 3) tuning = other;
          AttentionHarness h(*dev, c, 64, true, 1, tuning);
          SeqId a = h.create(), b = h.create();
          // Below the window (a: 3 tokens), then at / across it, then far past it.
          EXPECT_STEP_OK(h.step({{a, 3}, {b, window}}, kernel, 60));
          EXPECT_STEP_OK(h.step({{a, window - 3}, {b, 1}}, kernel, 61));
          EXPECT_STEP_OK(h.step({{a, 50}, {b, 70}}, kernel, 62));
          for (uint32_t i = 0; i < 20; ++i) {
            EXPECT_STEP_OK(h.step({{a, 1}, {b, 1}}, kernel, 63 + i));
            // The window plus the block being filled, at most.
            const int32_t bound = (window + sh.block_size - 1) / sh.block_size + 1;
            EXPECT_LE(h.cache().blocks().blocks_held(a), bound);
            EXPECT_LE(h.cache().blocks().blocks_held(b), bound);
          }
          EXPECT_STEP_OK(h.step({{b, 37}}, kernel, 90));  // a chunk again, long past the window
        }
      }
    }
  }
}

// Compressed formats (K and V chosen separately; block and TurboQuant formats, asymmetric pairs)
// through the paging: prefix sharing with copy-on-write of partially filled blocks (the copy moves
// codes and scales or norms whole), mixed batches,
// exhaustion that changes nothing, freeing and reuse; every stored K row is checked against the
// scalar codec.
TEST(Attention, CompressedFormatsPagingSharingAndExhaustion) {
  using kv::KvFormat;
  const std::pair<KvFormat, KvFormat> formats[] = {
      {KvFormat::kQ8_0, KvFormat::kQ8_0},         {KvFormat::kQ4_0, KvFormat::kQ4_0},
      {KvFormat::kQ8_0, KvFormat::kQ4_0},         {KvFormat::kQ4_0, KvFormat::kF16},
      {KvFormat::kTurbo2, KvFormat::kTurbo2},     {KvFormat::kTurbo3, KvFormat::kTurbo3},
      {KvFormat::kTurbo4, KvFormat::kTurbo4},     {KvFormat::kTurbo2_5, KvFormat::kTurbo2_5},
      {KvFormat::kTurbo3_5, KvFormat::kTurbo3_5}, {KvFormat::kQ8_0, KvFormat::kTurbo3},
      {KvFormat::kTurbo4, KvFormat::kTurbo3},     {KvFormat::kTurbo3, KvFormat::kF16}};
  for (const auto& dev : registry().devices()) {
    for (const auto& [kf, vf] : formats) {
      SCOPED_TRACE(dev->id() + " K " + std::string(kv::kv_format_name(kf)) + " V " +
                   std::string(kv::kv_format_name(vf)));
      ops::AttentionConfig c = attention_config(8, 2, 64, 16);
      c.pool.format = kf;
      c.v_format = vf;
      AttentionHarness h(*dev, c, 12);  // 192 tokens in all
      EXPECT_EQ(h.cache().layout(0, kv::KvPart::kK).format, kf);
      EXPECT_EQ(h.cache().layout(0, kv::KvPart::kV).format, vf);
      SeqId root = h.create();
      EXPECT_STEP_OK(h.step({{root, 21}}, AttnKernel::kPrefill, 40));
      SeqId kid = h.fork(root), other = h.create();
      EXPECT_STEP_OK(h.step({{root, 1}, {kid, 3}, {other, 30}}, AttnKernel::kMixed, 41));
      EXPECT_STEP_OK(h.step({{root, 1}, {kid, 1}, {other, 1}}, AttnKernel::kDecode, 42));
      EXPECT_STEP_OK(h.step({{root, 1}, {kid, 1}, {other, 1}}, AttnKernel::kPrefill, 43));
      const int32_t used = h.cache().blocks().blocks_used();
      EXPECT_THROW(h.cache().reserve(other, 200), kv::KvCacheFullError);
      EXPECT_FALSE(h.cache().try_reserve(other, 200).has_value());
      EXPECT_EQ(h.cache().blocks().blocks_used(), used);
      h.free(root);
      SeqId d = h.create();
      EXPECT_STEP_OK(h.step({{d, 40}, {kid, 1}}, AttnKernel::kMixed, 44));
      EXPECT_STEP_OK(h.step({{d, 1}, {kid, 1}, {other, 1}}, AttnKernel::kDecode, 45));
    }
  }
}

// Block formats need head sizes that are multiples of their 32-value blocks (the split TurboQuant
// formats too: a quarter of the channels in groups of 8): the op and the cache refuse others,
// naming the format and the head size.
TEST(Attention, BlockFormatsRefuseHeadSizes) {
  const Device& d = *registry().devices().front();
  for (kv::KvFormat f : {kv::KvFormat::kQ8_0, kv::KvFormat::kQ4_0, kv::KvFormat::kTurbo2_5,
                         kv::KvFormat::kTurbo3_5}) {
    for (bool v_only : {false, true}) {
      ops::AttentionConfig c = attention_config(8, 4, 8, 16);
      if (v_only)
        c.v_format = f;
      else
        c.pool.format = f;
      try {
        ops::AttentionOp op(d, c);
        ADD_FAILURE() << "head size 8 accepted for " << kv::kv_format_name(f);
      } catch (const ops::AttentionUnsupported& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find(std::string(kv::kv_format_name(f))), std::string::npos) << what;
        EXPECT_NE(what.find("head size 8"), std::string::npos) << what;
        EXPECT_NE(what.find(v_only ? "V: " : "K: "), std::string::npos) << what;
      }
      kv::KvCacheConfig kc{2, 4, 48, 16, 4};
      (v_only ? kc.v_format : kc.k_format) = f;
      try {
        kv::PagedKvCache cache(kc, {&d, &d});
        ADD_FAILURE() << "head size 48 accepted for " << kv::kv_format_name(f);
      } catch (const kv::KvCacheUsageError& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find(std::string(kv::kv_format_name(f))), std::string::npos) << what;
        EXPECT_NE(what.find("head size 48"), std::string::npos) << what;
      }
    }
  }
}

// TurboQuant packs 8 codes in `bits` bytes: head sizes that are not multiples of 8 are refused.
TEST(Attention, TurboFormatsRefuseHeadSizes) {
  const Device& d = *registry().devices().front();
  for (kv::KvFormat f : {kv::KvFormat::kTurbo2, kv::KvFormat::kTurbo3, kv::KvFormat::kTurbo4}) {
    ops::AttentionConfig c = attention_config(8, 4, 12, 16);
    c.pool.format = f;
    try {
      ops::AttentionOp op(d, c);
      ADD_FAILURE() << "head size 12 accepted for " << kv::kv_format_name(f);
    } catch (const ops::AttentionUnsupported& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(std::string(kv::kv_format_name(f)) + " cannot store head size 12"),
                std::string::npos)
          << what;
    }
  }
}

TEST(Attention, BadArguments) {
  const Device& d = *registry().devices().front();
  EXPECT_THROW(ops::AttentionOp(d, attention_config(6, 4, 64, 16)),
               ops::AttentionUnsupported);  // 6 % 4
  EXPECT_THROW(ops::AttentionOp(d, attention_config(4, 4, 62, 16)),
               ops::AttentionUnsupported);  // 62 % 4
  ops::AttentionConfig negative_window = attention_config(4, 4, 64, 16);
  negative_window.window = -1;
  EXPECT_THROW(ops::AttentionOp(d, negative_window), ops::AttentionUnsupported);
  ops::AttentionTuning t = ops::default_attention_tuning(d, attention_config(4, 4, 64, 16));
  t.prefill_kv_tile = 5;
  EXPECT_THROW(ops::AttentionOp(d, attention_config(4, 4, 64, 16), t), ops::AttentionUnsupported);
  AttentionHarness h(d, attention_config(4, 4, 64, 16), 8);
  SeqId a = h.create();
  EXPECT_STEP_OK(h.step({{a, 3}}, AttnKernel::kPrefill, 40));
  kv::KvBatchBuffers batch(d);
  std::vector<SeqId> seqs{a};
  std::vector<int32_t> ts{0}, tp{2};
  kv::KvBatchView v = batch.upload(h.cache().blocks(), seqs, ts, tp);
  ClMem buf = d.alloc(4096);
  EXPECT_THROW(h.op().prefill(v, h.cache().layer(0), buf.get(), 0, buf.get(), 0, 0, 2),
               ops::AttentionError);
  EXPECT_THROW(h.op().decode(v, h.cache().layer(0), buf.get(), 0, buf.get(), 0, 0, 1, buf.get(), 4),
               ops::AttentionError);  // workspace too small
  // The finish needs an op built with it (AttentionTuning::decode_finish), and names that.
  const size_t ws = h.op().decode_workspace_bytes(1, 64);
  ClMem work = d.alloc(std::max<size_t>(ws, 4096));
  const ops::AttentionOp::DecodeFinish finish{{buf.get(), 0, 0, 0, 0}, nullptr, nullptr, 0.0f, {}};
  try {
    h.op().decode(v, h.cache().layer(0), buf.get(), 0, buf.get(), 0, 0, 1, work.get(),
                  std::max<size_t>(ws, 4096), {}, nullptr, &finish);
    ADD_FAILURE() << "a decode finish accepted by an op built without it";
  } catch (const ops::AttentionError& e) {
    EXPECT_NE(std::string(e.what()).find("decode_finish"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace tessera::test
