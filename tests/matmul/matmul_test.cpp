// Matmul on every OpenCL device found: repacking, kernel dequantization, dense GEMV/GEMM and
// stacked expert launches of every format against the scalar reference, in every kernel variant.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>

#include "host/cli/settings.h"
#include "host/ops/device/matmul.h"
#include "host/ops/device/matmul_check.h"
#include "host/ops/device/repack.h"
#include "host/ops/quant/quant.h"

namespace tessera::ops {
namespace {

using gguf::TensorType;

const DeviceRegistry& registry() {
  static const DeviceRegistry reg = tessera::cli::discover_devices();
  return reg;
}

bool is_plain(TensorType t) {
  return t == TensorType::F32 || t == TensorType::F16 || t == TensorType::BF16;
}

// Column counts: block multiples for quantized formats, odd ones for F32/F16/BF16.
struct Cols {
  int64_t one, few, mid, longest;
};
Cols cols_for(TensorType t) {
  if (is_plain(t)) return {7, 97, 1000, 8191};
  if (weight_format(t)->block_elems == 256) return {256, 768, 1024, 8192};
  return {32, 96, 1024, 8192};
}

std::string label(TensorType t) {
  return std::string(gguf::type_name(t));
}

void expect_pass(const MatmulCheck& r, const std::string& what) {
  EXPECT_TRUE(r.pass) << what << ": " << r.note << " (max_rel " << r.max_rel << ")";
}

TEST(MatmulRepack, RoundTripsEveryFormat) {
  for (TensorType t : matmul_types()) {
    const Cols c = cols_for(t);
    const int64_t rows = 3, cols = c.few, mats = 2;
    const auto w = random_ggml_weight(t, rows, cols, 7, mats);
    const RepackedWeight rw = repack(t, rows, cols, w.data(), mats);
    EXPECT_EQ(rw.source_bytes, w.size()) << label(t);
    EXPECT_EQ(rw.format->body_bytes() % 4, 0u) << label(t) << ": body not 4-byte aligned";
    EXPECT_EQ(rw.head_offset_bytes % 256, 0u);
    const uint64_t row_bytes = ggml_bytes(t, 1, cols);
    std::vector<float> ref(cols), got(cols);
    for (int64_t r = 0; r < rows * mats; ++r) {
      const auto back = unpack_row(rw, r);
      ASSERT_EQ(back.size(), row_bytes) << label(t);
      EXPECT_EQ(0, std::memcmp(back.data(), w.data() + r * row_bytes, row_bytes))
          << label(t) << " row " << r;
      // Repacked -> dequantized equals the reference dequantization of the original.
      quant::dequantize_row(t, w.data() + r * row_bytes, ref.data(), cols);
      quant::dequantize_row(t, back.data(), got.data(), cols);
      EXPECT_EQ(0, std::memcmp(ref.data(), got.data(), cols * sizeof(float))) << label(t);
    }
  }
}

TEST(MatmulRepack, RejectsBadInput) {
  std::vector<uint8_t> data(4096);
  EXPECT_THROW(repack(TensorType::Q4_0, 2, 33, data.data()), TesseraError);
  EXPECT_THROW(repack(TensorType::Q4_K, 1, 32, data.data()), TesseraError);
  EXPECT_THROW(repack(TensorType::Q2_K, 1, 256, data.data()), TesseraError);
  EXPECT_THROW(repack(TensorType::F32, 0, 4, data.data()), TesseraError);
  EXPECT_THROW(repack(TensorType::F32, 1, 4, nullptr), TesseraError);
  try {
    repack(TensorType::Q6_K, 2, 100, data.data());
    FAIL() << "expected a throw";
  } catch (const TesseraError& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of the block size 256"), std::string::npos)
        << e.what();
  }
}

// The 8-bit x path (MatmulVariant::x_q8): taken only for Q4_0 and Q8_0 on CPU devices, never with
// the variant's x_q8 off, and on PoCL's CPU device of an x86 host with AVX2 always (so CI runs it:
// the dense and expert-FFN checks then compare with the reference on the same 8-bit x). Its VNNI
// form (x_q8_vnni): on PoCL's AVX-512 target of a host with AVX-512 VNNI always, never without the
// 8-bit path or with the variant's x_q8_vnni off.
TEST(MatmulDevice, EightBitXWhereTheCompilerOffersIt) {
  for (const auto& dev : registry().devices()) {
    const DeviceInfo& info = dev->info();
    const bool pocl_x86 =
        info.type == DeviceType::kCpu &&
        info.platform_name.find("Portable Computing Language") != std::string::npos &&
#if defined(__x86_64__)
        __builtin_cpu_supports("avx2");
#else
        false;
#endif
    // PoCL names its CPU device after the target it compiles for (pthread-skylake-avx512-...).
    const bool pocl_x86_vnni = pocl_x86 && info.name.find("avx512") != std::string::npos &&
#if defined(__x86_64__)
                               __builtin_cpu_supports("avx512bw") &&
                               __builtin_cpu_supports("avx512vnni");
#else
                               false;
#endif
    MatmulOp op(*dev);
    for (TensorType t : matmul_types()) {
      const bool q8_format = t == TensorType::Q4_0 || t == TensorType::Q8_0;
      const bool on = op.x_q8(t);
      if (!q8_format || info.type != DeviceType::kCpu)
        EXPECT_FALSE(on) << dev->id() << " " << label(t);
      else if (pocl_x86)
        EXPECT_TRUE(on) << dev->id() << " " << label(t);
      if (!on)
        EXPECT_FALSE(op.x_q8_vnni(t)) << dev->id() << " " << label(t);
      else if (pocl_x86_vnni)
        EXPECT_TRUE(op.x_q8_vnni(t)) << dev->id() << " " << label(t);
      if (q8_format) {
        MatmulVariant v = default_matmul_variant(info, t);
        v.x_q8 = false;
        EXPECT_FALSE(MatmulOp(*dev, v).x_q8(t)) << dev->id() << " " << label(t);
        v = default_matmul_variant(info, t);
        v.x_q8_vnni = false;
        const MatmulOp plain(*dev, v);
        EXPECT_EQ(on, plain.x_q8(t)) << dev->id() << " " << label(t);
        EXPECT_FALSE(plain.x_q8_vnni(t)) << dev->id() << " " << label(t);
      }
    }
  }
}

TEST(MatmulDevice, DequantizeKernelMatchesReference) {
  for (const auto& dev : registry().devices()) {
    MatmulOp op(*dev);
    for (TensorType t : matmul_types()) {
      const double err = check_dequantize(op, t, 5, cols_for(t).few);
      // Decoding is exact except fused multiply-adds in (scale, min) formats.
      EXPECT_LE(err, 1e-6) << dev->id() << " " << label(t);
    }
  }
}

// The planner's weight streaming rate (engine plan_for): a finite positive figure on every device,
// for a format whose row length is not a multiple of its block (rounded up) and a plain one.
TEST(MatmulDevice, WeightStreamRateIsMeasured) {
  for (const auto& dev : registry().devices()) {
    MatmulOp op(*dev);
    for (TensorType t : {TensorType::Q4_0, TensorType::Q6_K, TensorType::F32}) {
      const double gbps = measure_weight_stream_gbps(op, t, 1000, 1ull << 20);
      EXPECT_TRUE(std::isfinite(gbps) && gbps > 0) << dev->id() << " " << label(t) << " " << gbps;
    }
  }
}

// Every format, odd shapes, n_tokens 1, 3, 17, 64, through the device's default variant (on a GPU
// this includes the CLBlast path for 64 tokens).
TEST(MatmulDevice, DenseEveryFormatAndShape) {
  for (const auto& dev : registry().devices()) {
    MatmulOp op(*dev);
    for (TensorType t : matmul_types()) {
      const Cols c = cols_for(t);
      struct Shape {
        int64_t rows, cols;
        int tokens;
      };
      const Shape shapes[] = {{1, c.one, 1},   {67, c.few, 3}, {5, c.longest, 17},
                              {33, c.mid, 64}, {19, c.few, 1}, {130, c.one, 17}};
      for (const auto& s : shapes) {
        const auto r = check_matmul(op, t, s.rows, s.cols, s.tokens, false);
        expect_pass(r, dev->id() + " " + label(t) + " " + std::to_string(s.rows) + "x" +
                           std::to_string(s.cols) + " t" + std::to_string(s.tokens));
      }
    }
  }
}

TEST(MatmulDevice, ExpertsEveryFormat) {
  for (const auto& dev : registry().devices()) {
    MatmulOp op(*dev);
    for (TensorType t : matmul_types()) {
      const Cols c = cols_for(t);
      // Decode: one token, 4 of 8 experts (a mixed tile); prefill: 13 tokens, 2 of 3 experts
      // (runs of one expert longer than a tile).
      expect_pass(check_experts(op, t, 37, c.few, 8, 1, 4, false),
                  dev->id() + " " + label(t) + " experts decode");
      expect_pass(check_experts(op, t, 21, c.one, 3, 13, 2, false),
                  dev->id() + " " + label(t) + " experts prefill");
    }
  }
}

// Every variant on every device: the GPU-shaped kernels (lanes + local reduction) are checked on
// CPU devices too, and the CLBlast path on every device.
TEST(MatmulDevice, EveryVariant) {
  // Each variant with a few formats (every program build costs seconds on PoCL): together they
  // cover both chunk loops (one lane / many lanes), rows per work item 1 and 2, and CLBlast.
  struct Case {
    MatmulVariant v;
    std::vector<TensorType> types;
  };
  const std::vector<Case> cases = {
      {{1, 8, 2, true, 0}, {TensorType::Q4_K}},                      // CPU shape, 2 rows
      {{32, 4, 2, false, 0}, {TensorType::Q4_0, TensorType::Q6_K}},  // GPU default
      {{16, 2, 1, false, 0}, {TensorType::Q8_0}},                    // GPU shape, 1 row
      {{32, 2, 4, false, 0}, {TensorType::TQ2_0}},                   // GPU shape, 4 rows
      {{1, 16, 1, true, 1}, {TensorType::F32, TensorType::Q4_1}},    // CLBlast for every launch
  };

  for (const auto& dev : registry().devices()) {
    for (const auto& c : cases) {
      MatmulOp op(*dev, c.v);
      for (TensorType t : c.types) {
        const Cols cl = cols_for(t);
        const std::string what = dev->id() + " [" + c.v.str() + "] " + label(t);
        expect_pass(check_matmul(op, t, 45, cl.mid, 1, false), what + " t1");
        expect_pass(check_matmul(op, t, 9, cl.few, 17, false), what + " t17");
        expect_pass(check_matmul(op, t, 70, cl.longest, 3, false), what + " t3");
        if (c.v.clblast_min_tokens == 0) {
          expect_pass(check_experts(op, t, 11, cl.one, 5, 6, 3, false), what + " experts");
          // SwiGLU folded into the loads: one token (tile 1) and a prefill tile.
          expect_pass(check_experts(op, t, 13, cl.one, 5, 1, 3, false, 7, true),
                      what + " experts swiglu t1");
          expect_pass(check_experts(op, t, 13, cl.mid, 3, 9, 2, false, 8, true),
                      what + " experts swiglu t9");
        }
      }
    }
  }
}

TEST(MatmulDevice, BadInput) {
  const Device& dev = *registry().devices().front();
  MatmulOp op(dev);
  const auto w = random_ggml_weight(TensorType::Q8_0, 4, 64, 3, 2);
  const DeviceWeight experts = op.upload(TensorType::Q8_0, 4, 64, w.data(), 2);
  const DeviceWeight dense = op.upload(TensorType::Q8_0, 4, 64, w.data(), 1);
  ClMem x = dev.alloc(64 * 4), y = dev.alloc(16 * 4);
  EXPECT_THROW(op.run(experts, x.get(), 0, y.get(), 0, 1), TesseraError);
  EXPECT_THROW(op.run(dense, x.get(), 0, y.get(), 0, 0), TesseraError);
  EXPECT_THROW(op.upload(TensorType::Q3_K, 4, 256, w.data()), TesseraError);
  // The routing tail: a missing buffer, too many tokens, top-k out of range, a short router row,
  // experts beyond its bound.
  {
    ClMem r = dev.alloc(8 * 8 * 4), ids = dev.alloc(64 * 4), wts = dev.alloc(64 * 4),
          xn = dev.alloc(64 * 4 * 4);
    RouteTail rt;
    rt.norm_w = x.get();
    rt.xn = xn.get();
    rt.router = r.get();
    rt.router_ld = 8;
    rt.n_expert = 8;
    rt.routing.n_expert_used = 2;
    rt.ids = ids.get();
    rt.weights = wts.get();
    EXPECT_NO_THROW(op.run_route_tail(dense, x.get(), 0, y.get(), 0, 1, {}, rt));
    dev.finish();
    RouteTail bad = rt;
    bad.ids = nullptr;
    EXPECT_THROW(op.run_route_tail(dense, x.get(), 0, y.get(), 0, 1, {}, bad), TesseraError);
    EXPECT_THROW(
        op.run_route_tail(dense, x.get(), 0, y.get(), 0, MatmulOp::kRouteTailMaxTokens + 1, {}, rt),
        TesseraError);
    bad = rt;
    bad.routing.n_expert_used = 9;
    EXPECT_THROW(op.run_route_tail(dense, x.get(), 0, y.get(), 0, 1, {}, bad), TesseraError);
    bad = rt;
    bad.router_ld = 2;
    EXPECT_THROW(op.run_route_tail(dense, x.get(), 0, y.get(), 0, 1, {}, bad), TesseraError);
    EXPECT_THROW(op.run_route_tail(experts, x.get(), 0, y.get(), 0, 1, {}, rt), TesseraError);
    EXPECT_FALSE(op.can_route_tail(TensorType::Q8_0, MatmulOp::kRouteTailMaxExperts + 1));
    EXPECT_THROW(op.prepare_route_tail(TensorType::Q8_0, 4, MatmulOp::kRouteTailMaxExperts + 1),
                 TesseraError);
  }
  // Out-of-range expert and token ids give NaN rows, the valid pair is computed.
  std::vector<float> xv(64, 0.5f);
  dev.write(x.get(), 0, xv.data(), xv.size() * 4);
  const int32_t tok[3] = {0, 0, 7}, exp[3] = {1, 9, 0};
  ClMem tm = dev.alloc(12), em = dev.alloc(12), y3 = dev.alloc(12 * 4);
  dev.write(tm.get(), 0, tok, 12);
  dev.write(em.get(), 0, exp, 12);
  op.run_experts(experts, x.get(), 0, 1, y3.get(), 0, tm.get(), em.get(), 3);
  std::vector<float> out(12);
  dev.read(y3.get(), 0, out.data(), 48);
  const auto ref = reference_matmul(TensorType::Q8_0, 4, 64, w.data(), xv.data(), 1, 1);
  for (int r = 0; r < 4; ++r) {
    EXPECT_NEAR(out[r], ref[r], 1e-4 * (1 + std::fabs(ref[r])));
    EXPECT_TRUE(std::isnan(out[4 + r])) << "bad expert id";
    EXPECT_TRUE(std::isnan(out[8 + r])) << "bad token id";
  }
}

}  // namespace
}  // namespace tessera::ops
