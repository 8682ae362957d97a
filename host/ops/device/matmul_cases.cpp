// Portability-matrix cases of the matmul family: every format x odd shapes x n_tokens 1/3/17/64,
// dense GEMV/GEMM and stacked-expert launches, each against the scalar reference.
#if __has_include("host/ops/device/matrix.h")
#include "host/ops/device/matrix.h"

#include "host/ops/device/matmul.h"
#include "host/ops/device/matmul_check.h"
#include "host/ops/device/repack.h"

namespace tessera::ops {

namespace {

using gguf::TensorType;

MatrixCaseResult to_matrix(const MatmulCheck& c, bool timing) {
  MatrixCaseResult r;
  r.status = c.pass ? "pass" : "fail";
  r.max_abs_err = c.max_abs;
  r.max_rel_err = c.max_rel;
  r.nmse = c.nmse;
  r.seconds = timing ? c.seconds : 0;
  r.bytes = c.bytes;
  r.flops = c.flops;
  r.note = c.note;
  return r;
}

std::string lower(std::string_view s) {
  std::string o(s);
  for (auto& ch : o) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  return o;
}

// The device's variant with one row per work item (run_experts_glu's shape) and an even row-group
// count (wg_rows 1 -> 2 where the device takes two).
// The 8-bit x path's switches the matrix turns off one at a time (row suffix, flag).
struct X8Path {
  const char* suffix;
  bool MatmulVariant::*flag;
};
constexpr X8Path kX8Paths[] = {{"_float", &MatmulVariant::x_q8},
                               {"_novnni", &MatmulVariant::x_q8_vnni}};

MatmulVariant glu_variant(const Device& dev, TensorType t) {
  MatmulVariant v = default_matmul_variant(dev.info(), t);
  v.rows_per_item = 1;
  if (v.wg_rows % 2) ++v.wg_rows;
  return v;
}

}  // namespace

void register_matmul_cases(std::vector<MatrixCase>& out) {
  for (TensorType t : matmul_types()) {
    const WeightFormat* f = weight_format(t);
    const bool plain = t == TensorType::F32 || t == TensorType::F16 || t == TensorType::BF16;
    const int64_t blk = plain ? 1 : f->block_elems;
    // Odd sizes, sizes no work-group size divides, a single row, a long row.
    struct Shape {
      int64_t rows, cols;
      int tokens;
    };
    const int64_t c_small = plain ? 33 : blk, c_mid = plain ? 1000 : 4 * blk * (blk == 32 ? 8 : 1);
    const int64_t c_long = plain ? 16383 : 16384;
    // Seven blocks: the CPU tile's runs of four blocks (BLOCK_SCALED formats) and a remainder.
    const int64_t c_rem = plain ? 231 : 7 * blk;
    const std::vector<Shape> shapes = {
        {1, c_mid, 1},   {77, c_small, 1},   {333, c_mid, 1}, {3, c_long, 1},
        {77, c_mid, 3},  {129, c_small, 17}, {45, c_mid, 17}, {1, c_long, 3},
        {65, c_mid, 64}, {7, c_small, 64},   {5, c_rem, 1},   {9, c_rem, 5},
    };
    const std::string fmt = lower(gguf::type_name(t));
    for (const auto& s : shapes) {
      const std::string kernel = s.tokens == 1 ? "gemv" : "gemm";
      const std::string shape =
          std::to_string(s.rows) + "x" + std::to_string(s.cols) + "_t" + std::to_string(s.tokens);
      out.push_back({kernel, fmt, shape, [t, s](const Device& dev, bool timing) {
                       MatmulOp op(dev);
                       return to_matrix(check_matmul(op, t, s.rows, s.cols, s.tokens, timing),
                                        timing);
                     }});
    }
    // The one-token kernels' other paths where the default takes x in 8-bit blocks: the float
    // path (MatmulVariant::x_q8 off) and pmaddubsw + pmaddwd where the default takes VNNI's
    // vpdpbusd (x_q8_vnni off; elsewhere the same as the default). The GEMV over runs of four
    // blocks and a remainder; the expert FFN below.
    for (const auto& [suffix, off] : kX8Paths)
      out.push_back({"gemv", fmt, "333x" + std::to_string(c_rem + 4 * blk) + "_t1" + suffix,
                     [t, c_rem, blk, off](const Device& dev, bool timing) {
                       MatmulVariant v = default_matmul_variant(dev.info(), t);
                       v.*off = false;
                       MatmulOp op(dev, v);
                       return to_matrix(check_matmul(op, t, 333, c_rem + 4 * blk, 1, timing),
                                        timing);
                     }});
    // Stacked experts in one launch: decode (1 token, 4 of 16 experts) and prefill (11 tokens,
    // 2 of 4 experts: runs of one expert longer than a tile), the latter also over rows of runs of
    // four blocks and a remainder (the 8-bit xq tiles where MatmulOp::experts_on_xq).
    const int64_t c_runs = c_rem + 4 * blk;
    out.push_back({"experts", fmt, "16x67x" + std::to_string(c_mid) + "_t1_top4",
                   [t, c_mid](const Device& dev, bool timing) {
                     MatmulOp op(dev);
                     return to_matrix(check_experts(op, t, 67, c_mid, 16, 1, 4, timing), timing);
                   }});
    for (const int64_t c : {c_small, c_runs})
      out.push_back({"experts", fmt, "4x33x" + std::to_string(c) + "_t11_top2",
                     [t, c](const Device& dev, bool timing) {
                       MatmulOp op(dev);
                       return to_matrix(check_experts(op, t, 33, c, 4, 11, 2, timing), timing);
                     }});
    // The tiled expert GEMM (matmul_gemm.cl), forced on every device, in each tile shape a
    // device takes (MatmulVariant::gemm_*): 2 of 3 experts with runs longer than a tile's pairs,
    // rows ending in a partial row tile (a tile's rows + 6, its pairs x 1.5 + 4 tokens).
    for (const auto& tile : expert_gemm_tiles()) {
      MatmulVariant tv;
      tv.set_gemm_tile(tile);
      const int g_rows = tv.expert_gemm_rows() + 6, g_tokens = tv.expert_gemm_pairs() * 3 / 2 + 4;
      std::string shape = "3x" + std::to_string(g_rows) + "x" + std::to_string(c_mid) + "_t" +
                          std::to_string(g_tokens) + "_top2";
      if (tile != expert_gemm_tiles().front())
        shape += "_tile" + std::to_string(tv.expert_gemm_rows()) + "x" +
                 std::to_string(tv.expert_gemm_pairs()) + "k" + std::to_string(32 * tv.gemm_kc);
      out.push_back({"experts_gemm", fmt, shape,
                     [t, c_mid, tile, g_rows, g_tokens](const Device& dev, bool timing) {
                       MatmulVariant v = default_matmul_variant(dev.info(), t);
                       v.set_gemm_tile(tile);
                       if (!expert_gemm_fits(dev.info(), v))
                         return unsupported(
                             "the tiled expert GEMM needs 256-item work groups and " +
                             std::to_string(v.expert_gemm_local_bytes()) +
                             " bytes of local memory");
                       v.expert_gemm_min_run = 1;
                       MatmulOp op(dev, v);
                       return to_matrix(check_experts(op, t, g_rows, c_mid, 3, g_tokens, 2, timing,
                                                      1, false, /*sorted_promise=*/true),
                                        timing);
                     }});
    }
    // The tiled GEMM's dense mode (prefill projections), forced on every device: rows ending in
    // a partial row tile, tokens in a partial pair tile, strided and accumulated output (as
    // check_matmul does for every dense case).
    out.push_back({"gemm_tiled", fmt, "134x" + std::to_string(c_mid) + "_t77",
                   [t, c_mid](const Device& dev, bool timing) {
                     MatmulVariant v = default_matmul_variant(dev.info(), t);
                     if (!expert_gemm_fits(dev.info(), v))
                       return unsupported("the tiled GEMM needs 256-item work groups and " +
                                          std::to_string(v.expert_gemm_local_bytes()) +
                                          " bytes of local memory");
                     v.tiled_gemm_min_tokens = 1;
                     MatmulOp op(dev, v);
                     return to_matrix(check_matmul(op, t, 134, c_mid, 77, timing), timing);
                   }});
    // SwiGLU folded into the expert loads (the down projection's input): decode, 4 of 16 experts.
    out.push_back({"experts_swiglu", fmt, "16x67x" + std::to_string(c_mid) + "_t1_top4",
                   [t, c_mid](const Device& dev, bool timing) {
                     MatmulOp op(dev);
                     return to_matrix(
                         check_experts(op, t, 67, c_mid, 16, 1, 4, timing, 1, /*x_swiglu=*/true),
                         timing);
                   }});
    // SwiGLU in the gate|up launch (run_experts_glu, the CPU default; on GPUs checked in their
    // shape with one row per work item): decode, 4 of 16 experts (ff 67: a partial row group);
    // prefill, 11 tokens, 2 of 4 experts (tiles of one expert), also over runs and a remainder.
    out.push_back({"experts_glu", fmt, "16x2x67x" + std::to_string(c_mid) + "_t1_top4",
                   [t, c_mid](const Device& dev, bool timing) {
                     const MatmulOp op(dev, glu_variant(dev, t));
                     return to_matrix(check_experts(op, t, 134, c_mid, 16, 1, 4, timing, 1, false,
                                                    false, /*glu_out=*/true),
                                      timing);
                   }});
    for (const int64_t c : {c_small, c_runs})
      out.push_back({"experts_glu", fmt, "4x2x33x" + std::to_string(c) + "_t11_top2",
                     [t, c](const Device& dev, bool timing) {
                       const MatmulOp op(dev, glu_variant(dev, t));
                       return to_matrix(check_experts(op, t, 66, c, 4, 11, 2, timing, 1, false,
                                                      false, /*glu_out=*/true),
                                        timing);
                     }});
    // Q4_0 / Q8_0 (the formats with prefill tiles on 8-bit x, MatmulVariant::x_q8_vnni): the same
    // with one row per item on those tiles (gate and up rows in different items) and with four
    // (two gate rows and their up rows; the default takes one of each).
    for (const int xq_rpw : {1, 4})
      if (t == TensorType::Q4_0 || t == TensorType::Q8_0)
        out.push_back(
            {"experts_glu", fmt,
             "4x2x33x" + std::to_string(c_runs) + "_t11_top2_xqrpw" + std::to_string(xq_rpw),
             [t, c_runs, xq_rpw](const Device& dev, bool timing) {
               MatmulVariant v = glu_variant(dev, t);
               v.xq_rows_per_item = xq_rpw;
               const MatmulOp op(dev, v);
               return to_matrix(check_experts(op, t, 66, c_runs, 4, 11, 2, timing, 1, false, false,
                                              /*glu_out=*/true),
                                timing);
             }});
    // The MoE combine in the down launch (run_experts_combine): decode on the layer's device (4 of
    // 16 experts, added to the residual stream and normed; 67 rows: a partial row group), SwiGLU
    // folded into the same launch (the GPU shape), three tokens on a device holding half the
    // experts (a partial sum; one token with no pair here), and a decode batch of 11.
    struct CombineShape {
      const char* name;
      int tokens;
      bool x_swiglu, shard;
    };
    for (const CombineShape cs :
         {CombineShape{"t1_top4", 1, false, false}, CombineShape{"t1_top4_swiglu", 1, true, false},
          CombineShape{"t3_top4_shard", 3, false, true},
          CombineShape{"t11_top4_swiglu_shard", 11, true, true}}) {
      out.push_back({"experts_combine", fmt, "16x67x" + std::to_string(c_mid) + "_" + cs.name,
                     [t, c_mid, cs](const Device& dev, bool timing) {
                       const MatmulOp op(dev);
                       if (!op.can_combine(t))
                         return unsupported("the combining launch needs a power-of-two work group");
                       return to_matrix(check_experts_combine(op, t, 67, c_mid, 16, cs.tokens, 4,
                                                              cs.x_swiglu, cs.shard, timing),
                                        timing);
                     }});
    }
    // The MoE routing in the dense launch before it (run_route_tail: the attention's output
    // projection of decode steps): one token (the GEMV kernel), 5 tokens (a 4-token tile and a
    // partial one) with sigmoid gating, 11 tokens (8-token tiles); 67 / 300 rows end in a partial
    // work group.
    struct RouteShape {
      int64_t rows;
      int tokens, experts, k;
      bool sigmoid;
    };
    // Each also in the other device kind's kernel shape (16 lanes x 8 rows: the GPU shape, whose
    // last work group shares the sums and the routing; one lane: the CPU shape, one item routes).
    for (const RouteShape rs : {RouteShape{67, 1, 32, 4, false}, RouteShape{300, 5, 40, 6, true},
                                RouteShape{128, 11, 128, 8, false}})
      for (const bool other_shape : {false, true})
        out.push_back({"matmul_route", fmt,
                       std::to_string(rs.rows) + "x" + std::to_string(c_mid) + "_t" +
                           std::to_string(rs.tokens) + "_e" + std::to_string(rs.experts) + "_top" +
                           std::to_string(rs.k) + (rs.sigmoid ? "_sigmoid" : "") +
                           (other_shape ? "_other_shape" : ""),
                       [t, c_mid, rs, other_shape](const Device& dev, bool timing) {
                         MatmulVariant v = default_matmul_variant(dev.info(), t);
                         if (other_shape) {
                           const bool cpu = v.lanes == 1;
                           v.lanes = cpu ? 16 : 1;
                           v.wg_rows = cpu ? 8 : 16;
                           v.rows_per_item = cpu ? 2 : 1;
                           v.vec_acc = !cpu;
                           v.gemv_rows_per_item = 0;
                           v.clblast_min_tokens = v.tiled_gemm_min_tokens = 0;
                         }
                         const MatmulOp op(dev, v);
                         if (!op.can_route_tail(t, uint32_t(rs.experts)))
                           return unsupported("the routing tail's sums do not fit local memory");
                         return to_matrix(check_route_tail(op, t, rs.rows, c_mid, rs.tokens,
                                                           rs.experts, rs.k, rs.sigmoid, timing),
                                          timing);
                       }});
    // A MoE layer's experts in one launch (run_expert_ffn, the CPU decode path): gate|up, SwiGLU,
    // down and the combine. ff of 7 blocks (2 for 256-element blocks): slices of unequal width;
    // decode at home (residual + norm) with the default slices and with 3 (2), three tokens on a
    // device holding half the experts (a partial sum, a token without a pair) in 2 slices.
    const int64_t ffn_ff = blk == 256 ? 512 : 224, ffn_embd = blk == 256 ? 512 : 160;
    const int ffn_slices = blk == 256 ? 2 : 3;
    struct FfnShape {
      std::string name;
      int tokens;
      bool shard;
      int slices;
    };
    for (const FfnShape& fs :
         {FfnShape{"t1_top4", 1, false, 0},
          FfnShape{"t1_top4_slices" + std::to_string(ffn_slices), 1, false, ffn_slices},
          FfnShape{"t3_top4_shard_slices2", 3, true, 2}}) {
      out.push_back(
          {"experts_ffn", fmt,
           "16x" + std::to_string(ffn_ff) + "x" + std::to_string(ffn_embd) + "_" + fs.name,
           [t, ffn_ff, ffn_embd, fs](const Device& dev, bool timing) {
             const MatmulOp op(dev);
             return to_matrix(check_expert_ffn(op, t, ffn_ff, ffn_embd, 16, fs.tokens, 4, fs.shard,
                                               fs.slices, timing),
                              timing);
           }});
    }
    // The output projection, its routing tail and the experts in one launch (run_route_tail with
    // RouteTail::Ffn, the CPU decode path): with the next layer's norm and the default gate|up
    // slices, the same with the next layer's input projection (rows not a multiple of the
    // kernel's 16-row units nor of its 4-row steps), without the norm in 3 (2) slices, with it in
    // one slice per run of 32 rows. The CPU kernel shape (one lane per row) on every device.
    // Variant 4: the next layer's decode attention after its q|k|v projection
    // (RouteTail::Ffn::attention, route_attention.cl). Variants 5 and 6 ("_lanes"): the GPU shape
    // on GPUs (their own variant), with the next norm, then with the next projection too.
    const int64_t next_rows = 2 * ffn_embd + 6;
    for (const int variant : {0, 1, 2, 3, 4, 5, 6}) {
      const bool next_norm = variant != 2, attn = variant == 4, lanes = variant >= 5;
      const int64_t nr = variant == 1 || variant == 6 ? next_rows : attn ? kRouteAttentionRows : 0;
      const int slices = variant == 2 ? ffn_slices : variant == 3 ? int(ffn_ff / 32) : 0;
      out.push_back(
          {"matmul_route_ffn", fmt,
           std::to_string(ffn_embd) + "x" + std::to_string(attn ? kRouteAttentionCols : c_mid) +
               "_16x" + std::to_string(ffn_ff) + "_t1_top4" +
               (variant == 0   ? "_norm"
                : variant == 1 ? "_norm_next" + std::to_string(nr)
                : variant == 2 ? "_slices" + std::to_string(slices)
                : variant == 3 ? "_norm_slices" + std::to_string(slices)
                : variant == 4 ? "_norm_next" + std::to_string(nr) + "_attention"
                : variant == 5 ? std::string("_norm_lanes")
                               : "_norm_next" + std::to_string(nr) + "_lanes"),
           [t, c_mid, ffn_ff, ffn_embd, slices, next_norm, nr, attn, lanes](const Device& dev,
                                                                            bool timing) {
             MatmulVariant v = default_matmul_variant(dev.info(), t);
             const bool pocl =
                 dev.info().platform_name.find("Portable Computing Language") != std::string::npos;
             if (!lanes && v.lanes != 1) {
               v.lanes = 1;
               v.wg_rows = 8;
               v.rows_per_item = 2;
               v.vec_acc = false;
               v.gemv_rows_per_item = 0;
               v.clblast_min_tokens = v.tiled_gemm_min_tokens = 0;
             }
             const MatmulOp op(dev, v);
             if (!lanes && !pocl)
               return unsupported("the experts' join in the one-lane shape is for PoCL's devices");
             if (lanes && dev.info().type != DeviceType::kGpu)
               return unsupported("the experts' join in several lanes per row is for GPUs");
             if (!MatmulOp::runs_joins(dev.info()))
               return unsupported("this driver's launches do not run the experts' join");
             return to_matrix(check_route_ffn(op, t, ffn_embd, attn ? kRouteAttentionCols : c_mid,
                                              ffn_ff, 16, 4, next_norm, slices, nr, attn, timing),
                              timing);
           }});
    }
    for (const auto& [suffix, off] : kX8Paths)
      out.push_back(
          {"experts_ffn", fmt,
           "16x" + std::to_string(ffn_ff) + "x" + std::to_string(ffn_embd) + "_t1_top4" + suffix,
           [t, ffn_ff, ffn_embd, off](const Device& dev, bool timing) {
             MatmulVariant v = default_matmul_variant(dev.info(), t);
             v.*off = false;
             const MatmulOp op(dev, v);
             return to_matrix(check_expert_ffn(op, t, ffn_ff, ffn_embd, 16, 1, 4, false, 0, timing),
                              timing);
           }});
  }
}

}  // namespace tessera::ops
#endif
