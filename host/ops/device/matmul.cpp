// MatmulOp: uploads repacked weights and launches cl_kernels/matmul.cl (or CLBlast for big
// prefill).
#include "host/ops/device/matmul.h"

#include <clblast.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <string>

#include "host/common/error.h"
#include "host/ops/device/launch.h"

namespace tessera::ops {

namespace {

using gguf::TensorType;

// f32 slab for the CLBlast path: dequantized rows of one weight, at most this many bytes at a time
// (a 64th of the device's memory, capped at 512 MiB: big slabs mean few, large SGEMMs).
size_t max_scratch_bytes(const DeviceInfo& info) {
  return std::clamp<size_t>(info.global_mem_bytes / 64, size_t(16) << 20, size_t(512) << 20);
}

// A launch's empty wait list (the xq tiles wait on their quantizing launch by queue order).
const std::vector<cl_event> kNoEvents;

// CPUs: bytes of x rows (f32) one work-group's token tiles may span: about half an L1 data cache.
constexpr size_t kCpuXTileBytes = 16 * 1024;

int token_tile(int n) {
  return n <= 1 ? 1 : (n <= 4 ? 4 : 8);
}

// The tile of an expert launch: pairs sorted by expert form runs; prefill has long runs (tile 8),
// decode mostly distinct ones: the tile follows the average run length, so a few pairs of distinct
// experts spread over work groups (tile 1) instead of running one after another inside one.
int expert_tile(int n_pairs, int64_t n_expert) {
  return token_tile(
      std::max<int>(1, n_pairs / std::max<int>(1, int(std::min<int64_t>(n_pairs, n_expert)))));
}

}  // namespace

std::string MatmulVariant::str() const {
  std::string s = "lanes=" + std::to_string(lanes) + " wg_rows=" + std::to_string(wg_rows) +
                  " rpw=" + std::to_string(rows_per_item) + " vec=" + std::to_string(int(vec_acc));
  if (x_q8) s += x_q8_vnni ? " x_q8+vnni" : " x_q8";
  if (x_q8 && x_q8_vnni && xq_rows_per_item != 1)
    s += " xq_rpw=" + std::to_string(xq_rows_per_item);
  if (gemv_rows() != rows_per_item)
    s += " gemv_rpw=" + std::to_string(gemv_rows()) +
         (gemv_max_cols < std::numeric_limits<int>::max() ? "<=" + std::to_string(gemv_max_cols)
                                                          : std::string());
  if (clblast_min_tokens > 0) s += " clblast>=" + std::to_string(clblast_min_tokens);
  if (expert_gemm_min_run > 0)
    s += " expert_gemm>=" + std::to_string(expert_gemm_min_run) +
         " tile=" + std::to_string(expert_gemm_rows()) + "x" + std::to_string(expert_gemm_pairs()) +
         "/" + std::to_string(gemm_tr) + "x" + std::to_string(gemm_tp) + "/k" +
         std::to_string(32 * gemm_kc);
  return s;
}

uint64_t MatmulVariant::expert_gemm_local_bytes() const {
  // ws (K columns x rows + 4) + xs (K x pairs + 4) floats + the tile's token ids.
  const uint64_t k = 32 * uint64_t(gemm_kc);
  return (k * (expert_gemm_rows() + 4) + k * (expert_gemm_pairs() + 4) + expert_gemm_pairs()) * 4;
}

std::string MatmulVariant::build_options() const {
  return "-DLANES=" + std::to_string(lanes) + " -DWG_ROWS=" + std::to_string(wg_rows) +
         " -DRPW=" + std::to_string(rows_per_item) + " -DVEC_ACC=" + std::to_string(int(vec_acc)) +
         (x_q8 ? " -DX_Q8=1 -DX_Q8_MAX_GROUPS=" + std::to_string(kXq8MaxGroups) : "") +
         (x_q8 && x_q8_vnni ? " -DX_Q8_VNNI=1 -DXQ_RPW=" + std::to_string(xq_rows_per_item) : "");
}

std::string MatmulVariant::gemm_build_options() const {
  return " -DGT_TR=" + std::to_string(gemm_tr) + " -DGT_TP=" + std::to_string(gemm_tp) +
         " -DGT_TX=" + std::to_string(gemm_tx) + " -DGT_KC=" + std::to_string(gemm_kc);
}

bool expert_gemm_fits(const DeviceInfo& info, const MatmulVariant& v) {
  return info.max_group_items() >= 256 && info.local_mem_bytes >= v.expert_gemm_local_bytes();
}

const std::vector<std::array<int, 4>>& expert_gemm_tiles() {
  // Measured on the H200 (bench/kernels/matmul_bench --modes egemm, Q4_0 and Q8_0, the benchmark
  // model's 512-token gate|up, down and q|k|v shapes): 128 rows x 32 pairs with 64-column K steps
  // (43 KB of local memory) was fastest, 1.5-1.6x the 64 x 64 tile; with 32-column steps (22 KB,
  // for devices with 32 KB) 3-6% slower. 256 x 32 matched it, 64 x 64, 128 x 64, 128 x 128,
  // 256 x 16 and 256 x 64 were 7-60% slower.
  static const std::vector<std::array<int, 4>> tiles = {{4, 4, 8, 2}, {4, 4, 8, 1}};
  return tiles;
}

bool expert_gemm_fits(const DeviceInfo& info) {
  for (const auto& tile : expert_gemm_tiles()) {
    MatmulVariant v;
    v.set_gemm_tile(tile);
    if (expert_gemm_fits(info, v)) return true;
  }
  return false;
}

namespace {

// The first tile shape of expert_gemm_tiles() that fits the device (the last when none does).
void choose_gemm_tile(const DeviceInfo& info, MatmulVariant& v) {
  for (const auto& tile : expert_gemm_tiles()) {
    v.set_gemm_tile(tile);
    if (expert_gemm_fits(info, v)) return;
  }
}

// Whether this host's CPU (which a CPU device runs on) has AVX2, and AVX-512 VNNI.
bool host_has_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}
bool host_has_avx512_vnni() {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

}  // namespace

MatmulVariant default_matmul_variant(const DeviceInfo& info, TensorType t) {
  MatmulVariant v;
  if (info.type == DeviceType::kCpu) {
    // Each work item streams whole rows, float16 accumulators become SIMD registers; a work group
    // of 16 rows is one contiguous stream per core (bench/kernels: rows_per_item 2 was no faster).
    v.lanes = 1;
    v.wg_rows = 16;
    v.rows_per_item = 1;
    // Q4_0 GEMVs of short rows: two rows per work item (two independent sums in flight). The
    // benchmark model's decode (bench/END_TO_END.md, 1,024 columns), 2-core machine, three
    // interleaved rounds: matmul_t1 7.4-8.1 -> 6.3-6.7 ms per token; at 2,048 columns no gain,
    // Q8_0 slower (6.7 -> 9.6 ms).
    if (t == TensorType::Q4_0) v.gemv_rows_per_item = 2;
    v.vec_acc = true;
    // Decode's GEMVs and expert FFN on x in 8-bit blocks where the compiler offers x86's integer
    // dot products (Q4_0 and Q8_0; bench/END_TO_END.md: a Q4_0 GEMV at 2.4x the float kernel's
    // GB/s on a 2-core EPYC).
    // The one-launch expert FFN keeps two runs' buffers of 160 bytes per run in local memory. A
    // CPU device runs on this host: without AVX2 here the program could not take the integer path
    // (and the four-row GEMV below is measured only with it).
    v.x_q8 = host_has_avx2() &&
             info.local_mem_bytes >= uint64_t(2 * 160 * MatmulVariant::kXq8MaxGroups + 4096);
    // Every work group quantizes x for itself: four rows per item (64 per group) share that work
    // and x's loads (2-core machine, matmul_bench --modes gemv, three rounds: 20-26 / 12-18 GB/s
    // against 10-21 / 11-15 with two rows up to 1,024 columns and one beyond).
    // vpdpbusd in place of pmaddubsw + pmaddwd where the CPU has it (VNNI).
    v.x_q8_vnni = v.x_q8 && host_has_avx512_vnni();
    // The prefill tiles on 8-bit x (VNNI): two rows per work item share each token's 8-bit x and
    // scales (2-core Xeon, the benchmark model's prefill of 128 tokens: Q4_0 602 -> 720 t/s, Q8_0
    // 539 -> 613; four rows: Q4_0 even, Q8_0 slower). The float tiles stay at one row: two were
    // slower there (bench/END_TO_END.md).
    v.xq_rows_per_item = 2;
    if (v.x_q8 && (t == TensorType::Q4_0 || t == TensorType::Q8_0)) {
      v.gemv_rows_per_item = 4;
      v.gemv_max_cols = std::numeric_limits<int>::max();
    }
    v.clblast_min_tokens = 0;  // PoCL: CLBlast SGEMM (~17 GFLOP/s) loses to the fused kernel
    v.wg_rows = int(std::min<uint64_t>(uint64_t(v.wg_rows), info.max_group_items()));
    choose_gemm_tile(info, v);  // not taken by default; the matrix checks it
    return v;
  }
  // GPUs: a warp-sized group of lanes per row reads consecutive chunks (coalesced), x staged in
  // local memory, local-memory reduction. Measured on an H200 (bench/kernels --modes tune): two
  // rows per work item beat one (x reads shared); the fused kernel beats dequantize + CLBlast SGEMM
  // at 64 tokens and loses at 512 (F32 needs no dequantization: CLBlast wins from 64).
  v.lanes = 32;
  v.wg_rows = 4;
  v.rows_per_item = 2;
  v.vec_acc = false;
  v.clblast_min_tokens = t == TensorType::F32 ? 32 : 128;
  // The tiled expert GEMM once experts average 16+ pairs (prefill); needs 256-item work groups
  // and the tile's local memory (else the tile kernels serve every launch).
  choose_gemm_tile(info, v);
  v.expert_gemm_min_run = expert_gemm_fits(info, v) ? 16 : 0;
  // Dense prefill of quantized weights on the same tiled GEMM: on the H200 (matmul_bench --modes
  // egemm, the benchmark model's 1536 x 1024 q|k|v at 512 tokens) 0.118 ms vs dequantize +
  // CLBlast 0.155 ms, and no CLBlast host calls per launch.
  v.tiled_gemm_min_tokens = (v.expert_gemm_min_run > 0 && t != TensorType::F32) ? 128 : 0;
  // Within the device's work-group and local-memory limits: fewer rows per group, then fewer lanes.
  auto local_bytes = [&] {
    return uint64_t(8 * v.lanes * 33 + v.wg_rows * v.rows_per_item * 8 * v.lanes) * 4;
  };
  while ((uint64_t(v.lanes) * v.wg_rows > info.max_group_items() ||
          local_bytes() > info.local_mem_bytes) &&
         (v.wg_rows > 1 || v.lanes > 1)) {
    if (v.wg_rows > 1) {
      v.wg_rows /= 2;
    } else {
      v.lanes /= 2;
    }
  }
  return v;
}

struct MatmulOp::Kernels {
  MatmulVariant variant;
  ClKernel matmul[3], experts[3];  // token tiles 1, 4, 8
  ClKernel experts_swiglu[3];      // X_SWIGLU program, built on demand
  ClKernel experts_glu[3];         // GLU_OUT program (two rows per work item), built on demand
  ClKernel experts_combine[2][3];  // COMBINE_TAIL programs, plain and X_SWIGLU, built on demand
  ClKernel experts_gemm;           // matmul_gemm.cl, built at the first launch that wants it
  ClKernel experts_ffn;            // EXPERT_FFN program, built by prepare_expert_ffn
  ClKernel gemv;                   // matmul_t1 in gemv_rows_per_item (when that differs)
  // Prefill tiles on 8-bit x (matmul.cl's X_Q8_TILES_ON, where the program has them): the
  // quantizing launch, matmul_xq_t{4,8} (slots 1, 2), experts_xq_t{1,4,8} and their GLU_OUT form.
  bool xq_tiles = false;
  ClKernel quantize_xq, matmul_xq[3], experts_xq[3], experts_glu_xq[3];
  ClKernel matmul_route[3], gemv_route;  // ROUTE_TAIL programs, built by prepare_route_tail
  // ROUTE_FFN programs in matmul_t1's shape ([0]) and the gemv's ([1]), built by prepare_route_ffn.
  ClKernel route_ffn[2];
  // The same with the next layer's decode attention (route_attention.cl), by the attention op's
  // program options, built at the first launch with RouteTail::Ffn::attention.
  std::map<std::string, ClKernel> route_attn[2];
  std::string options;
  ClKernel dequantize;
  int x_q8 = -1;  // MatmulOp::x_q8's answer (-1: not asked yet)
  bool x_q8_vnni = false;  // MatmulOp::x_q8_vnni's (asked with x_q8)
  static int slot(int tile) { return tile == 1 ? 0 : (tile == 4 ? 1 : 2); }
};

MatmulOp::MatmulOp(const Device& device) : device_(device) {}
MatmulOp::MatmulOp(const Device& device, const MatmulVariant& variant)
    : device_(device), forced_(true), forced_variant_(variant) {}
MatmulOp::~MatmulOp() = default;

namespace {
// `name`_t{1,4,8} (experts_t, experts_xq_t) of the matmul program built with `options` (a
// variant's program plus a macro).
void build_expert_tiles(const Device& device, const std::string& options, ClKernel (&out)[3],
                        const std::string& name = "experts") {
  const int tiles[3] = {1, 4, 8};
  for (int i = 0; i < 3; ++i)
    out[i] = device.kernel("matmul", name + "_t" + std::to_string(tiles[i]), options);
}

// Whether the matmul program built with `options` defines kernel `name` (kernels that exist only
// where the device's compiler takes a path, as matmul.cl's X_Q8_TILES_ON).
bool program_has_kernel(const Device& device, const std::string& options, const std::string& name) {
  cl_program p = device.program("matmul", options);
  size_t size = 0;
  if (clGetProgramInfo(p, CL_PROGRAM_KERNEL_NAMES, 0, nullptr, &size) != CL_SUCCESS || size == 0)
    return false;
  std::string names(size, '\0');
  if (clGetProgramInfo(p, CL_PROGRAM_KERNEL_NAMES, size, names.data(), nullptr) != CL_SUCCESS)
    return false;
  names.resize(names.find('\0') == std::string::npos ? names.size() : names.find('\0'));
  size_t at = 0;
  while (at <= names.size()) {
    const size_t end = std::min(names.find(';', at), names.size());
    if (names.compare(at, end - at, name) == 0) return true;
    at = end + 1;
  }
  return false;
}
}  // namespace

MatmulOp::Kernels& MatmulOp::kernels(TensorType t) const {
  std::lock_guard lock(mutex_);
  auto it = kernels_.find(t);
  if (it != kernels_.end()) return *it->second;
  const WeightFormat* f = weight_format(t);
  if (!f)
    throw TesseraError("matmul: format " + std::string(gguf::type_name(t)) + " not supported");
  auto k = std::make_unique<Kernels>();
  k->variant = forced_ ? forced_variant_ : default_matmul_variant(device_.info(), t);
  const auto& v = k->variant;
  if (v.lanes < 1 || (v.lanes & (v.lanes - 1)) || v.wg_rows < 1 || v.rows_per_item < 1 ||
      v.gemv_rows() < 1 || v.xq_rows_per_item < 1)
    throw TesseraError("matmul: invalid kernel variant " + v.str() + " for " +
                       device_.info().label());
  if (uint64_t(v.lanes) * uint64_t(v.wg_rows) > device_.info().max_group_items())
    throw DeviceUnsupported(
        "unsupported on " + device_.info().label() + ": matmul variant " + v.str() +
        " needs work-groups of " + std::to_string(uint64_t(v.lanes) * v.wg_rows) +
        " items, the device allows " + std::to_string(device_.info().max_group_items()));
  // GPU-shaped kernels keep x tiles (8 tokens x lanes chunks, padded) and the lane reduction in
  // local memory.
  const uint64_t local_bytes =
      v.lanes > 1 ? uint64_t(8 * v.lanes * 33 + v.wg_rows * v.rows_per_item * 8 * v.lanes) * 4 : 0;
  if (local_bytes > device_.info().local_mem_bytes)
    throw DeviceUnsupported("unsupported on " + device_.info().label() + ": matmul variant " +
                            v.str() + " needs " + std::to_string(local_bytes) +
                            " bytes of local memory, the device has " +
                            std::to_string(device_.info().local_mem_bytes));
  std::string opts = std::string("-D") + f->macro + " " + v.build_options();
  // Extra options for kernel experiments (e.g. -DGEMV_STAGED) come from the program cache
  // (ProgramCache::set_program_options; the CLI passes $TESSERA_MATMUL_OPTIONS).
  k->options = opts;
  const int tiles[3] = {1, 4, 8};
  for (int i = 0; i < 3; ++i) {
    k->matmul[i] = device_.kernel("matmul", "matmul_t" + std::to_string(tiles[i]), opts);
    k->experts[i] = device_.kernel("matmul", "experts_t" + std::to_string(tiles[i]), opts);
  }
  k->dequantize = device_.kernel("matmul", "dequantize", opts);
  if (v.x_q8 && v.x_q8_vnni && program_has_kernel(device_, opts, "matmul_xq_t8")) {
    k->xq_tiles = true;
    k->quantize_xq = device_.kernel("matmul", "quantize_xq", opts);
    for (int i = 1; i < 3; ++i)
      k->matmul_xq[i] = device_.kernel("matmul", "matmul_xq_t" + std::to_string(tiles[i]), opts);
    build_expert_tiles(device_, opts, k->experts_xq, "experts_xq");
  }
  if (v.gemv_rows() != v.rows_per_item)
    k->gemv = device_.kernel("matmul", "matmul_t1",
                             std::string("-D") + f->macro + " " + v.gemv().build_options());
  return *kernels_.emplace(t, std::move(k)).first->second;
}

void MatmulOp::prepare_swiglu(TensorType t) const {
  Kernels& k = kernels(t);
  std::lock_guard lock(mutex_);
  if (!k.experts_swiglu[0])
    build_expert_tiles(device_, k.options + " -DX_SWIGLU=1", k.experts_swiglu);
}

bool MatmulOp::can_glu(TensorType t) const {
  const MatmulVariant& v = kernels(t).variant;
  return v.rows_per_item == 1 && v.wg_rows % 2 == 0 &&
         (v.xq_rows_per_item == 1 || (v.xq_rows_per_item % 2 == 0 && v.xq_rows_per_item <= 8));
}

void MatmulOp::prepare_glu(TensorType t) const {
  if (!can_glu(t))
    throw TesseraError(
        "matmul: gate|up with SwiGLU needs one row per work item and an even row "
        "group count, not " +
        variant(t).str());
  Kernels& k = kernels(t);
  std::lock_guard lock(mutex_);
  if (!k.experts_glu[0]) {
    build_expert_tiles(device_, k.options + " -DGLU_OUT=1", k.experts_glu);
    if (k.xq_tiles)
      build_expert_tiles(device_, k.options + " -DGLU_OUT=1", k.experts_glu_xq, "experts_xq");
  }
}

bool MatmulOp::can_combine(TensorType t) const {
  const MatmulVariant& v = kernels(t).variant;
  const int items = v.lanes * v.wg_rows;
  return (items & (items - 1)) == 0;
}

void MatmulOp::prepare_combine(TensorType t, bool x_swiglu) const {
  if (!can_combine(t))
    throw TesseraError("matmul: the combining expert launch needs a power-of-two work group, not " +
                       variant(t).str());
  Kernels& k = kernels(t);
  std::lock_guard lock(mutex_);
  alloc_combine_counters();
  auto& tiles = k.experts_combine[x_swiglu ? 1 : 0];
  if (!tiles[0])
    build_expert_tiles(device_, k.options + (x_swiglu ? " -DX_SWIGLU=1" : "") + " -DCOMBINE_TAIL=1",
                       tiles);
}

void MatmulOp::alloc_combine_counters() const {
  if (combine_counters_) return;
  const std::vector<int32_t> zeros(kCombineMaxTokens, 0);
  combine_counters_ = device_.alloc(zeros.size() * sizeof(int32_t));
  device_.write(combine_counters_.get(), 0, zeros.data(), zeros.size() * sizeof(int32_t));
}

const MatmulVariant& MatmulOp::variant(TensorType t) const {
  return kernels(t).variant;
}

bool MatmulOp::x_q8(TensorType t) const {
  Kernels& k = kernels(t);
  std::lock_guard lock(mutex_);
  if (k.x_q8 < 0) {
    if (recording_for(device_))
      throw std::logic_error("MatmulOp::x_q8: asked while a step of its device is recorded");
    if (!k.variant.x_q8) {
      k.x_q8 = 0;
    } else {
      ClKernel info = device_.kernel("matmul", "matmul_info", k.options);
      ClMem out = device_.alloc(2 * sizeof(cl_int));
      set_arg(device_, info.get(), 0, out.get());
      const size_t one = 1;
      enqueue(device_, info.get(), 1, &one, &one, {{}, nullptr});
      cl_int on[2] = {0, 0};
      device_.read(out.get(), 0, on, sizeof on);
      k.x_q8 = on[0] ? 1 : 0;
      k.x_q8_vnni = on[1] != 0;
    }
  }
  return k.x_q8 == 1;
}

bool MatmulOp::dense_on_xq(TensorType t, int n_tokens) const {
  const Kernels& ks = kernels(t);
  const MatmulVariant& v = ks.variant;
  // As run(): the tiled GEMM and CLBlast come first where the variant takes them.
  if (v.tiled_gemm_min_tokens > 0 && n_tokens >= v.tiled_gemm_min_tokens &&
      expert_gemm_fits(device_.info(), v))
    return false;
  if (v.clblast_min_tokens > 0 && n_tokens >= v.clblast_min_tokens) return false;
  return token_tile(n_tokens) > 1 && ks.xq_tiles;
}

bool MatmulOp::experts_on_xq(TensorType t, int n_pairs, int64_t n_expert, bool x_swiglu,
                             int sorted_max_run) const {
  const Kernels& ks = kernels(t);
  return !x_swiglu && expert_tile(n_pairs, n_expert) > 1 && ks.xq_tiles &&
         !takes_expert_gemm(ks.variant, n_pairs, n_expert, sorted_max_run);
}

bool MatmulOp::takes_expert_gemm(const MatmulVariant& v, int n_pairs, int64_t n_expert,
                                 int sorted_max_run) const {
  return sorted_max_run > 0 && v.expert_gemm_min_run > 0 && expert_gemm_fits(device_.info(), v) &&
         int64_t(n_pairs) >= int64_t(v.expert_gemm_min_run) * std::min<int64_t>(n_expert, n_pairs);
}

bool MatmulOp::x_q8_vnni(TensorType t) const {
  if (!x_q8(t)) return false;
  std::lock_guard lock(mutex_);
  return kernels_.at(t)->x_q8_vnni;
}

DeviceWeight MatmulOp::upload(TensorType type, int64_t rows, int64_t cols, const void* data,
                              int64_t n_expert) const {
  return upload_repacked(type, repack(type, rows, cols, data, n_expert));
}

DeviceWeight MatmulOp::upload_repacked(TensorType type, const RepackedWeight& rw,
                                       bool write) const {
  const int64_t rows = rw.rows, cols = rw.cols;
  const Kernels& k = kernels(type);  // builds the program now, not at the first launch
  DeviceWeight w;
  w.format = rw.format;
  w.type = type;
  w.rows = rows;
  w.cols = cols;
  w.n_expert = rw.n_mats;
  w.blocks_per_row = rw.blocks_per_row;
  w.source_bytes = rw.source_bytes;
  const size_t body_bytes = rw.head_offset_bytes;
  const size_t head_bytes = rw.bytes.size() - rw.head_offset_bytes;
  w.body = device_.alloc(std::max<size_t>(body_bytes, 4), CL_MEM_READ_ONLY);
  if (write) device_.write(w.body.get(), 0, rw.bytes.data(), body_bytes);
  if (head_bytes) {
    w.head = device_.alloc(head_bytes, CL_MEM_READ_ONLY);
    if (write) device_.write(w.head.get(), 0, rw.bytes.data() + body_bytes, head_bytes);
  }
  w.device_bytes = body_bytes + head_bytes;
  if (k.variant.clblast_min_tokens > 0 && type != TensorType::F32) {
    // The CLBlast path dequantizes slabs of rows into one shared scratch buffer, sized here so
    // launches never allocate.
    const size_t want =
        std::min(max_scratch_bytes(device_.info()), size_t(rows) * size_t(cols) * sizeof(float));
    std::lock_guard lock(mutex_);
    if (want > scratch_bytes_) {
      scratch_ = device_.alloc(want);
      scratch_bytes_ = want;
    }
  }
  return w;
}

namespace {
// Arguments 0-6 of every matmul.cl kernel and experts_gemm: the weight and x.
void set_weight_x_args(const Device& dev, cl_kernel k, const DeviceWeight& w, cl_mem x,
                       size_t x_offset) {
  set_arg(dev, k, 0, w.body.get());
  set_arg(dev, k, 1, w.head ? w.head.get() : w.body.get());
  set_arg(dev, k, 2, cl_uint(w.rows));
  set_arg(dev, k, 3, cl_uint(w.cols));
  set_arg(dev, k, 4, cl_uint(w.blocks_per_row));
  set_arg(dev, k, 5, x);
  set_arg(dev, k, 6, cl_ulong(x_offset));
}

// A dense launch's weight, token count and output (its row stride defaulted to the weight's rows).
void check_dense(const char* what, const DeviceWeight& w, int n_tokens, MatmulOutput& out) {
  const std::string op = std::string("matmul ") + what;
  if (w.n_expert != 1)
    throw TesseraError(op + ": weight has " + std::to_string(w.n_expert) +
                       " experts; use run_experts");
  if (n_tokens <= 0) throw TesseraError(op + ": n_tokens must be positive");
  if (!w.body) throw TesseraError(op + ": weight not uploaded");
  if (out.ldy == 0) out.ldy = size_t(w.rows);
  if (out.ldy < size_t(w.rows))
    throw TesseraError(op + ": output row stride " + std::to_string(out.ldy) +
                       " is shorter than the weight's " + std::to_string(w.rows) + " rows");
}

// Arguments 0-11 of matmul_t{1,4,8} (matmul.cl; the ROUTE_TAIL programs' first ones too).
void set_dense_args(const Device& dev, cl_kernel k, const DeviceWeight& w, cl_mem x,
                    size_t x_offset, cl_mem y, size_t y_offset, int n_tokens, MatmulOutput out) {
  set_weight_x_args(dev, k, w, x, x_offset);
  set_arg(dev, k, 7, y);
  set_arg(dev, k, 8, cl_ulong(y_offset));
  set_arg(dev, k, 9, cl_uint(n_tokens));
  set_arg(dev, k, 10, cl_uint(out.ldy));
  set_arg(dev, k, 11, cl_uint(out.accumulate ? 1 : 0));
}
}  // namespace

void MatmulOp::run(const DeviceWeight& w, cl_mem x, size_t x_offset, cl_mem y, size_t y_offset,
                   int n_tokens, const std::vector<cl_event>& wait, cl_event* done,
                   Output out) const {
  check_dense("run", w, n_tokens, out);
  Kernels& ks = kernels(w.type);
  const MatmulVariant& v = ks.variant;
  if (v.tiled_gemm_min_tokens > 0 && n_tokens >= v.tiled_gemm_min_tokens &&
      expert_gemm_fits(device_.info(), v)) {
    run_dense_gemm(ks, w, x, x_offset, y, y_offset, n_tokens, wait, done, out);
    return;
  }
  if (v.clblast_min_tokens > 0 && n_tokens >= v.clblast_min_tokens &&
      (w.type == TensorType::F32 || scratch_bytes_ >= size_t(w.cols) * sizeof(float))) {
    if (recording_for(device_)) {
      // CLBlast enqueues by itself: a recorded step calls it at this point of every run.
      if (!wait.empty() || done)
        throw std::logic_error("matmul run: a recorded CLBlast matmul cannot use events");
      host_call(device_, "clblast matmul", [this, &w, x, x_offset, y, y_offset, n_tokens, out] {
        run_clblast(w, x, x_offset, y, y_offset, n_tokens, {}, nullptr, out);
      });
      return;
    }
    run_clblast(w, x, x_offset, y, y_offset, n_tokens, wait, done, out);
    return;
  }
  const int tile = token_tile(n_tokens);
  const bool xq = tile > 1 && ks.xq_tiles;
  const bool gemv = tile == 1 && ks.gemv && w.cols <= v.gemv_max_cols;
  cl_kernel k = gemv ? ks.gemv.get() : (xq ? ks.matmul_xq : ks.matmul)[Kernels::slot(tile)].get();
  // The xq tiles follow their quantizing launch, which takes the wait list.
  const cl_mem xq_buf = xq ? quantize_xq(ks, w, x, x_offset, n_tokens, wait) : nullptr;
  set_dense_args(device_, k, w, x, x_offset, y, y_offset, n_tokens, out);
  if (xq) set_arg(device_, k, 12, xq_buf);
  enqueue_row_tiles(k, gemv ? v.gemv() : (xq ? v.xq() : v), w.rows, w.cols, n_tokens, tile,
                    xq ? kNoEvents : wait, done);
}

cl_mem MatmulOp::quantize_xq(Kernels& ks, const DeviceWeight& w, cl_mem x, size_t x_offset,
                             int x_rows, const std::vector<cl_event>& wait) const {
  // matmul.cl's XQ_ROW_BYTES: per run of four blocks 128 bytes of x and 128 of scales.
  const size_t groups = size_t(w.blocks_per_row) / 4;
  const size_t bytes = std::max<size_t>(1, size_t(x_rows) * groups * 256);
  cl_mem buf;
  {
    std::lock_guard lock(mutex_);
    if (bytes > xq_bytes_) {
      // A recorded step keeps the buffer it was recorded with: earlier ones stay allocated.
      if (xq_) xq_old_.push_back(std::move(xq_));
      xq_ = device_.alloc(bytes);
      xq_bytes_ = bytes;
    }
    buf = xq_.get();
  }
  cl_kernel k = ks.quantize_xq.get();
  set_arg(device_, k, 0, x);
  set_arg(device_, k, 1, cl_ulong(x_offset));
  set_arg(device_, k, 2, cl_uint(w.cols));
  set_arg(device_, k, 3, cl_uint(x_rows));
  set_arg(device_, k, 4, cl_uint(groups));
  set_arg(device_, k, 5, buf);
  // One item per run of four blocks and row, in work groups of one shape whatever the launch
  // (a recorded step keeps it); the queue is in order, so the tiles that follow read what it wrote.
  const size_t local[2] = {4, 4};
  const size_t global[2] = {round_up(std::max<size_t>(groups, 1), 4), round_up(size_t(x_rows), 4)};
  enqueue(device_, k, 2, global, local, {wait, nullptr});
  return buf;
}

namespace {

// Arguments 0-13, shared by experts_t{1,4,8} (matmul.cl) and experts_gemm (matmul_gemm.cl).
void set_expert_args(const Device& dev, cl_kernel k, const DeviceWeight& w, cl_mem x,
                     size_t x_offset, int x_rows, cl_mem y, size_t y_offset, cl_mem pair_token_ids,
                     cl_mem pair_expert_ids, int n_pairs) {
  set_weight_x_args(dev, k, w, x, x_offset);
  set_arg(dev, k, 7, cl_uint(x_rows));
  set_arg(dev, k, 8, y);
  set_arg(dev, k, 9, cl_ulong(y_offset));
  set_arg(dev, k, 10, pair_token_ids);
  set_arg(dev, k, 11, pair_expert_ids);
  set_arg(dev, k, 12, cl_uint(n_pairs));
  set_arg(dev, k, 13, cl_uint(w.n_expert));
}

// The combine's bounds and buffers (ExpertCombine), for the launches that run it.
void check_combine(const char* what, const ExpertCombine& c) {
  if (c.n_tokens == 0 || c.n_tokens > uint32_t(MatmulOp::kCombineMaxTokens))
    throw TesseraError(std::string("matmul ") + what + ": " + std::to_string(c.n_tokens) +
                       " tokens, the combining launch takes 1 to " +
                       std::to_string(MatmulOp::kCombineMaxTokens));
  if (!c.out || !c.weights || !c.offsets || !c.pair_token || (c.norm_w && !c.xn))
    throw TesseraError(std::string("matmul ") + what + ": a combine buffer is missing");
}

// The combine's arguments from `first` on (COMBINE_ARGS in matmul.cl, and experts_ffn's tail).
// The expert FFN's weights from `first` on (experts_ffn's first seven arguments: gate|up body, head
// and blocks per row, down's, and ff).
void set_ffn_weight_args(const Device& dev, cl_kernel k, cl_uint first, const DeviceWeight& gate_up,
                         const DeviceWeight& down) {
  set_arg(dev, k, first, gate_up.body.get());
  set_arg(dev, k, first + 1, gate_up.head ? gate_up.head.get() : gate_up.body.get());
  set_arg(dev, k, first + 2, cl_uint(gate_up.blocks_per_row));
  set_arg(dev, k, first + 3, down.body.get());
  set_arg(dev, k, first + 4, down.head ? down.head.get() : down.body.get());
  set_arg(dev, k, first + 5, cl_uint(down.blocks_per_row));
  set_arg(dev, k, first + 6, cl_uint(down.cols));
}

void set_combine_args(const Device& dev, cl_kernel k, cl_uint first, const ExpertCombine& c,
                      cl_mem counters) {
  // A null cl_mem is not a valid argument on every driver: without a norm, out stands in.
  set_arg(dev, k, first, c.out);
  set_arg(dev, k, first + 1, c.weights);
  set_arg(dev, k, first + 2, c.offsets);
  set_arg(dev, k, first + 3, c.pair_token);
  set_arg(dev, k, first + 4, cl_uint(c.n_tokens));
  set_arg(dev, k, first + 5, cl_uint(c.accumulate ? 1 : 0));
  set_arg(dev, k, first + 6, c.norm_w ? c.norm_w : c.out);
  set_arg(dev, k, first + 7, cl_uint(c.norm_w ? 1 : 0));
  set_arg(dev, k, first + 8, c.eps);
  set_arg(dev, k, first + 9, c.norm_w ? c.xn : c.out);
  set_arg(dev, k, first + 10, counters);
}

}  // namespace

void MatmulOp::run_experts(const DeviceWeight& w, cl_mem x, size_t x_offset, int x_rows, cl_mem y,
                           size_t y_offset, cl_mem pair_token_ids, cl_mem pair_expert_ids,
                           int n_pairs, const std::vector<cl_event>& wait, cl_event* done,
                           bool x_swiglu, int sorted_max_run) const {
  if (n_pairs <= 0) throw TesseraError("matmul run_experts: n_pairs must be positive");
  if (x_rows <= 0) throw TesseraError("matmul run_experts: x_rows must be positive");
  if (!w.body) throw TesseraError("matmul run_experts: weight not uploaded");
  Kernels& ks = kernels(w.type);
  if (x_swiglu && !ks.experts_swiglu[0]) prepare_swiglu(w.type);
  const MatmulVariant& v = ks.variant;
  if (!x_swiglu && takes_expert_gemm(v, n_pairs, w.n_expert, sorted_max_run)) {
    run_experts_gemm(ks, w, x, x_offset, x_rows, y, y_offset, pair_token_ids, pair_expert_ids,
                     n_pairs, std::min(sorted_max_run, n_pairs), wait, done);
    return;
  }
  const int tile = expert_tile(n_pairs, w.n_expert);
  // The checks ask experts_on_xq too (they quantize the reference's x where it says so).
  const bool xq = experts_on_xq(w.type, n_pairs, w.n_expert, x_swiglu, sorted_max_run);
  const auto& tiles = x_swiglu ? ks.experts_swiglu : (xq ? ks.experts_xq : ks.experts);
  run_expert_tiles(ks, tiles[Kernels::slot(tile)].get(), xq, w, x, x_offset, x_rows, y, y_offset,
                   pair_token_ids, pair_expert_ids, n_pairs, tile, wait, done);
}

void MatmulOp::run_expert_tiles(Kernels& ks, cl_kernel k, bool xq, const DeviceWeight& w, cl_mem x,
                                size_t x_offset, int x_rows, cl_mem y, size_t y_offset,
                                cl_mem pair_token_ids, cl_mem pair_expert_ids, int n_pairs,
                                int tile, const std::vector<cl_event>& wait, cl_event* done) const {
  // The xq tiles follow their quantizing launch, which takes the wait list.
  const cl_mem xq_buf = xq ? quantize_xq(ks, w, x, x_offset, x_rows, wait) : nullptr;
  set_expert_args(device_, k, w, x, x_offset, x_rows, y, y_offset, pair_token_ids, pair_expert_ids,
                  n_pairs);
  if (xq) set_arg(device_, k, 14, xq_buf);
  // GLU_OUT: each work group covers wg_rows / 2 gate rows and the same up rows (one row per
  // item), or xq_rows_per_item / 2 x wg_rows of each (the xq tiles' gate rows with their up rows).
  enqueue_row_tiles(k, xq ? ks.variant.xq() : ks.variant, w.rows, w.cols, n_pairs, tile,
                    xq ? kNoEvents : wait, done);
}

void MatmulOp::run_experts_glu(const DeviceWeight& w, cl_mem x, size_t x_offset, int x_rows,
                               cl_mem y, size_t y_offset, cl_mem pair_token_ids,
                               cl_mem pair_expert_ids, int n_pairs,
                               const std::vector<cl_event>& wait, cl_event* done) const {
  if (n_pairs <= 0) throw TesseraError("matmul run_experts_glu: n_pairs must be positive");
  if (x_rows <= 0) throw TesseraError("matmul run_experts_glu: x_rows must be positive");
  if (!w.body) throw TesseraError("matmul run_experts_glu: weight not uploaded");
  if (w.rows % 2 != 0)
    throw TesseraError("matmul run_experts_glu: gate|up weight has an odd row count " +
                       std::to_string(w.rows));
  Kernels& ks = kernels(w.type);
  if (!ks.experts_glu[0]) prepare_glu(w.type);
  const int tile = expert_tile(n_pairs, w.n_expert);
  const bool xq = experts_on_xq(w.type, n_pairs, w.n_expert, false, 0);
  run_expert_tiles(ks, (xq ? ks.experts_glu_xq : ks.experts_glu)[Kernels::slot(tile)].get(), xq, w,
                   x, x_offset, x_rows, y, y_offset, pair_token_ids, pair_expert_ids, n_pairs, tile,
                   wait, done);
}

void MatmulOp::run_experts_combine(const DeviceWeight& w, cl_mem x, size_t x_offset, int x_rows,
                                   cl_mem y, size_t y_offset, cl_mem pair_token_ids,
                                   cl_mem pair_expert_ids, int n_pairs, bool x_swiglu,
                                   const ExpertCombine& c, const std::vector<cl_event>& wait,
                                   cl_event* done) const {
  if (n_pairs <= 0) throw TesseraError("matmul run_experts_combine: n_pairs must be positive");
  if (x_rows <= 0) throw TesseraError("matmul run_experts_combine: x_rows must be positive");
  if (!w.body) throw TesseraError("matmul run_experts_combine: weight not uploaded");
  check_combine("run_experts_combine", c);
  Kernels& ks = kernels(w.type);
  if (!ks.experts_combine[x_swiglu ? 1 : 0][0] || !combine_counters_)
    prepare_combine(w.type, x_swiglu);
  const int tile = expert_tile(n_pairs, w.n_expert);
  cl_kernel k = ks.experts_combine[x_swiglu ? 1 : 0][Kernels::slot(tile)].get();
  set_expert_args(device_, k, w, x, x_offset, x_rows, y, y_offset, pair_token_ids, pair_expert_ids,
                  n_pairs);
  set_combine_args(device_, k, 14, c, combine_counters_.get());
  enqueue_row_tiles(k, ks.variant, w.rows, w.cols, n_pairs, tile, wait, done);
}

bool MatmulOp::can_route_tail(TensorType t, uint32_t n_expert) const {
  const MatmulVariant& v = kernels(t).variant;
  if (n_expert == 0 || n_expert > kRouteTailMaxExperts) return false;
  if (v.lanes == 1) return true;
  // GPUs: the sums, the routing's scratch and the selection in the x tile's local memory.
  const uint64_t items = uint64_t(v.lanes) * v.wg_rows;
  const uint64_t need = (n_expert + 1) + std::max<uint64_t>(items, n_expert + 1) +
                        std::max<uint64_t>(items, n_expert) + n_expert;
  return need <= uint64_t(8 * v.lanes * 33);
}

void MatmulOp::prepare_route_tail(TensorType t, int64_t rows, uint32_t n_expert) const {
  if (!can_route_tail(t, n_expert))
    throw TesseraError("matmul: the routing tail takes 1 to " +
                       std::to_string(kRouteTailMaxExperts) + " experts within the " +
                       variant(t).str() + " kernel's local memory, not " +
                       std::to_string(n_expert));
  Kernels& k = kernels(t);
  std::lock_guard lock(mutex_);
  if (!k.matmul_route[0]) {
    const int tiles[3] = {1, 4, 8};
    for (int i = 0; i < 3; ++i)
      k.matmul_route[i] = device_.kernel("matmul", "matmul_t" + std::to_string(tiles[i]),
                                         k.options + " -DROUTE_TAIL=1");
    if (k.gemv)
      k.gemv_route = device_.kernel("matmul", "matmul_t1",
                                    std::string("-D") + weight_format(t)->macro + " " +
                                        k.variant.gemv().build_options() + " -DROUTE_TAIL=1");
  }
  if (!route_counters_) {
    const std::vector<int32_t> zeros(kRouteTailMaxTokens, 0);
    route_counters_ = device_.alloc(zeros.size() * sizeof(int32_t));
    device_.write(route_counters_.get(), 0, zeros.data(), zeros.size() * sizeof(int32_t));
  }
  // The most work groups a launch has: one row per work item.
  const size_t per_group =
      size_t(k.variant.wg_rows) * size_t(std::min(k.variant.rows_per_item, k.variant.gemv_rows()));
  const size_t groups = (size_t(rows) + per_group - 1) / per_group;
  const size_t want = size_t(kRouteTailMaxTokens) * groups * (n_expert + 1);
  if (want > route_part_floats_) {
    route_part_ = device_.alloc(want * sizeof(float));
    route_part_floats_ = want;
  }
}

void MatmulOp::run_route_tail(const DeviceWeight& w, cl_mem x, size_t x_offset, cl_mem y,
                              size_t y_offset, int n_tokens, Output out, const RouteTail& r,
                              const std::vector<cl_event>& wait, cl_event* done) const {
  check_dense("run_route_tail", w, n_tokens, out);
  if (n_tokens > kRouteTailMaxTokens)
    throw TesseraError("matmul run_route_tail: " + std::to_string(n_tokens) +
                       " tokens, the routing tail takes 1 to " +
                       std::to_string(kRouteTailMaxTokens));
  if (!r.norm_w || !r.xn || !r.router || !r.ids || !r.weights)
    throw TesseraError("matmul run_route_tail: a routing buffer is missing");
  const int kk = r.routing.n_expert_used;
  if (kk < 1 || uint32_t(kk) > r.n_expert)
    throw TesseraError("matmul run_route_tail: n_expert_used " + std::to_string(kk) +
                       " is not in [1, " + std::to_string(r.n_expert) + "]");
  if (r.router_ld < uint64_t(w.rows) || r.router_ld % 4 != 0)
    throw TesseraError("matmul run_route_tail: router rows of " + std::to_string(r.router_ld) +
                       " floats for outputs of " + std::to_string(w.rows));
  Kernels& ks = kernels(w.type);
  const MatmulVariant& v = ks.variant;
  const int tile = token_tile(n_tokens);
  const bool gemv = tile == 1 && ks.gemv && w.cols <= v.gemv_max_cols;
  const MatmulVariant& kv = gemv ? v.gemv() : v;
  const size_t groups = (size_t(w.rows) + size_t(kv.rows_per_item) * kv.wg_rows - 1) /
                        (size_t(kv.rows_per_item) * kv.wg_rows);
  if (!ks.matmul_route[0] || route_part_floats_ < size_t(n_tokens) * groups * (r.n_expert + 1))
    prepare_route_tail(w.type, w.rows, r.n_expert);
  if (r.ffn) {
    const RouteTail::Ffn& f = *r.ffn;
    if (n_tokens != 1 || !f.gate_up || !f.down || !f.pair_token)
      throw TesseraError(
          "matmul run_route_tail: experts in the launch take one token and their "
          "weights and pair tokens, not " +
          std::to_string(n_tokens) + " tokens");
    check_combine("run_route_tail", f.combine);
    if (kk > kExpertFfnMaxPairs)
      throw TesseraError("matmul run_route_tail: experts in the launch take up to " +
                         std::to_string(kExpertFfnMaxPairs) + " pairs, not " + std::to_string(kk));
    if (!can_route_ffn(w.type, w.rows, w.cols, r.n_expert, *f.gate_up, *f.down))
      throw TesseraError(
          "matmul run_route_tail: these weights cannot take their experts in the "
          "launch (MatmulOp::can_route_ffn)");
    if (!ks.route_ffn[gemv ? 1 : 0] || !ffn_join_ ||
        size_t(f.down->cols) * kExpertFfnMaxPairs > ffn_h_floats_)
      prepare_route_ffn(w.type, w.rows, w.cols, r.n_expert, *f.gate_up, *f.down);
  }
  const RouteTail::Ffn::Attention* attn = r.ffn ? r.ffn->attention : nullptr;
  if (attn && (!attn->op || !r.ffn->next || !attn->op->can_decode_phase()))
    throw TesseraError(
        "matmul run_route_tail: the next layer's attention needs its op in the decode phase's "
        "form (AttentionOp::can_decode_phase) and the next projection");
  cl_kernel k = attn    ? route_attention_kernel(ks, w.type, gemv, *attn->op)
                : r.ffn ? ks.route_ffn[gemv ? 1 : 0].get()
                        : (gemv ? ks.gemv_route.get() : ks.matmul_route[Kernels::slot(tile)].get());
  set_dense_args(device_, k, w, x, x_offset, y, y_offset, n_tokens, out);
  set_arg(device_, k, 12, r.norm_w);
  set_arg(device_, k, 13, r.eps);
  set_arg(device_, k, 14, r.xn);
  set_arg(device_, k, 15, r.router);
  set_arg(device_, k, 16, cl_uint(r.router_ld));
  set_arg(device_, k, 17, cl_uint(r.n_expert));
  set_arg(device_, k, 18, cl_uint(kk));
  set_arg(device_, k, 19, cl_uint(r.routing.gating == reference::GatingFunc::kSigmoid ? 1 : 0));
  set_arg(device_, k, 20, cl_uint(r.routing.normalize_topk ? 1 : 0));
  set_arg(device_, k, 21, r.routing.weight_scale);
  set_arg(device_, k, 22, r.ids);
  set_arg(device_, k, 23, r.weights);
  set_arg(device_, k, 24, route_part_.get());
  set_arg(device_, k, 25, route_counters_.get());
  if (r.ffn) {
    const RouteTail::Ffn& f = *r.ffn;
    const DeviceWeight &gu = *f.gate_up, &dn = *f.down;
    const int n_pairs = kk;
    // Gate|up units: ff's runs of 32 rows in slices, about two units per compute unit.
    const int runs = int(dn.cols / 32);
    const int units = int(std::max<cl_uint>(1, device_.info().compute_units));
    const int slices =
        f.slices > 0 ? f.slices : std::clamp((2 * units + n_pairs - 1) / n_pairs, 1, runs);
    if (slices > runs)
      throw TesseraError("matmul run_route_tail: " + std::to_string(slices) +
                         " gate|up slices of " + std::to_string(runs) + " runs of 32 rows");
    set_ffn_weight_args(device_, k, 26, gu, dn);
    set_arg(device_, k, 33, cl_uint(dn.n_expert));
    set_arg(device_, k, 34, f.pair_token);
    set_arg(device_, k, 35, cl_uint(n_pairs));
    set_arg(device_, k, 36, ffn_h_.get());
    set_arg(device_, k, 37, ffn_part_.get());
    set_arg(device_, k, 38, cl_uint(slices));
    set_combine_args(device_, k, 39, f.combine, combine_counters_.get());
    set_arg(device_, k, 50, ffn_join_.get());
    if (f.next && !can_route_next(w.type, w.rows, *f.next))
      throw TesseraError(
          "matmul run_route_tail: the next projection is not a dense matrix of the launch's "
          "format over its rows (MatmulOp::can_route_next)");
    if (f.next && (!f.next_y || !f.combine.norm_w || !f.combine.xn))
      throw TesseraError(
          "matmul run_route_tail: the next projection needs its output and the combine's norm");
    set_arg(device_, k, 51, f.next ? f.next->body.get() : ffn_h_.get());
    set_arg(device_, k, 52,
            f.next ? (f.next->head ? f.next->head.get() : f.next->body.get()) : ffn_h_.get());
    set_arg(device_, k, 53, cl_uint(f.next ? f.next->blocks_per_row : 0));
    set_arg(device_, k, 54, cl_uint(f.next ? f.next->rows : 0));
    set_arg(device_, k, 55, f.next ? f.next_y : ffn_h_.get());
    if (attn)
      attn->op->set_decode_phase_args(k, 56, attn->batch, attn->layer, attn->out, attn->out_offset,
                                      attn->workspace, attn->workspace_bytes, attn->sinks,
                                      attn->finish);
  }
  enqueue_row_tiles(k, kv, w.rows, w.cols, n_tokens, tile, wait, done);
}

bool MatmulOp::runs_joins(const DeviceInfo& info) {
  // PoCL, and GPUs on other drivers than Mesa's: their launches run every work group once, and a
  // group that has started runs to its end, as the join needs. Mesa's rusticl 22.3 (llvmpipe)
  // does not: a printf trace of the kernel there showed groups starting a second time and the
  // next launch's groups starting before this one's last had finished, so the launch skipped its
  // experts (bench/END_TO_END.md).
  const auto has = [&](const char* s) { return info.platform_name.find(s) != std::string::npos; };
  if (has("Portable Computing Language")) return true;
  return info.type == DeviceType::kGpu && !has("rusticl") && !has("Clover") && !has("Mesa");
}

bool MatmulOp::can_route_ffn(TensorType type, int64_t rows, int64_t cols, uint32_t n_expert,
                             const DeviceWeight& gate_up, const DeviceWeight& down) const {
  if (!runs_joins(device_.info()) || !weight_format(type)) return false;
  const Kernels& ks = kernels(type);
  const bool gemv = ks.gemv && cols <= ks.variant.gemv_max_cols;
  // One lane per row (CPUs), or on GPUs their shape: lanes a power of two (the lanes'
  // reduction), the dense tiles' program (no separate GEMV variant), float x and scalar sums, and
  // the rows and a pair's h within the local x the phases stage (8 x lanes chunks of 32). (PoCL
  // 3.1's kernel compiler did not finish the GPU shape's program in 15 minutes: its barriers in
  // loops.)
  const MatmulVariant& v = ks.variant;
  const bool one_lane = v.lanes == 1 && (!gemv || v.gemv().lanes == 1);
  const bool lanes = device_.info().type == DeviceType::kGpu && v.lanes > 1 &&
                     (v.lanes & (v.lanes - 1)) == 0 && !gemv && !v.x_q8 && !v.vec_acc &&
                     std::max(rows, down.cols) <= int64_t(8) * v.lanes * 32;
  return (one_lane || lanes) && can_route_tail(type, n_expert) && can_expert_ffn(gate_up, down) &&
         down.type == type && down.rows == rows;
}

cl_kernel MatmulOp::route_attention_kernel(Kernels& ks, TensorType type, bool gemv,
                                           const AttentionOp& op) const {
  std::lock_guard lock(mutex_);
  ClKernel& kernel = ks.route_attn[gemv ? 1 : 0][op.program_options()];
  if (!kernel)
    kernel = device_.kernel("route_attention", "matmul_route_ffn",
                            route_ffn_options(ks, type, gemv) + " " + op.program_options());
  return kernel.get();
}

std::string MatmulOp::route_ffn_options(const Kernels& ks, TensorType type, bool gemv) const {
  const std::string shape = gemv ? std::string("-D") + weight_format(type)->macro + " " +
                                       ks.variant.gemv().build_options()
                                 : ks.options;
  return shape + " -DROUTE_TAIL=1 -DEXPERT_FFN=1 -DROUTE_FFN=1";
}

bool MatmulOp::can_route_next(TensorType type, int64_t rows, const DeviceWeight& next) const {
  return weight_format(type) && next.body && next.type == type && next.n_expert == 1 &&
         next.cols == rows && next.rows > 0 && next.blocks_per_row > 0 &&
         int64_t(next.blocks_per_row) * weight_format(type)->block_elems == rows;
}

void MatmulOp::prepare_route_ffn(TensorType type, int64_t rows, int64_t cols, uint32_t n_expert,
                                 const DeviceWeight& gate_up, const DeviceWeight& down) const {
  if (!can_route_ffn(type, rows, cols, n_expert, gate_up, down))
    throw TesseraError(
        "matmul: the output projection with routing and experts in one launch needs a driver that "
        "runs its join (PoCL, GPUs not on Mesa), one lane per row or a GPU's lanes, the routing "
        "tail, gate|up and down of the expert FFN's shapes and down of the projection's format "
        "and rows");
  prepare_route_tail(type, rows, n_expert);
  alloc_expert_ffn_scratch(down);
  Kernels& k = kernels(type);
  std::lock_guard lock(mutex_);
  const bool gemv = k.gemv && cols <= k.variant.gemv_max_cols;
  ClKernel& kernel = k.route_ffn[gemv ? 1 : 0];
  if (!kernel)
    kernel = device_.kernel("matmul", "matmul_route_ffn", route_ffn_options(k, type, gemv));
  if (!ffn_join_) {
    const int32_t zeros[11 * 16] = {};  // JOIN_INTS, each JOIN_STRIDE ints apart
    ffn_join_ = device_.alloc(sizeof(zeros));
    device_.write(ffn_join_.get(), 0, zeros, sizeof(zeros));
  }
}

bool MatmulOp::can_expert_ffn(const DeviceWeight& gate_up, const DeviceWeight& down) const {
  // One format in one program; whole 32-element chunks of x and h (no padded columns); gate|up
  // stacked over the same experts as down, which maps h (ff) back to n_embd.
  return gate_up.body && down.body && gate_up.type == down.type && gate_up.rows % 2 == 0 &&
         gate_up.rows / 2 == down.cols && gate_up.cols == down.rows &&
         gate_up.n_expert == down.n_expert && down.cols % 32 == 0 && down.rows % 32 == 0 &&
         down.blocks_per_row > 0 && weight_format(down.type) != nullptr;
}

void MatmulOp::prepare_expert_ffn(const DeviceWeight& gate_up, const DeviceWeight& down) const {
  if (!can_expert_ffn(gate_up, down))
    throw TesseraError(
        "matmul: the one-launch expert FFN needs gate|up and down of one format, "
        "shapes 2ff x n_embd and n_embd x ff, both multiples of 32");
  {
    Kernels& k = kernels(down.type);
    std::lock_guard lock(mutex_);
    if (!k.experts_ffn)
      k.experts_ffn = device_.kernel("matmul", "experts_ffn", k.options + " -DEXPERT_FFN=1");
  }
  alloc_expert_ffn_scratch(down);
}

void MatmulOp::alloc_expert_ffn_scratch(const DeviceWeight& down) const {
  std::lock_guard lock(mutex_);
  alloc_combine_counters();
  const size_t h_floats = size_t(kExpertFfnMaxPairs) * size_t(down.cols);
  const size_t part_floats =
      size_t(kExpertFfnMaxPairs) * size_t(kExpertFfnMaxSlices) * size_t(down.rows);
  if (h_floats > ffn_h_floats_) {
    ffn_h_ = device_.alloc(h_floats * sizeof(float));
    ffn_h_floats_ = h_floats;
  }
  if (part_floats > ffn_part_floats_) {
    ffn_part_ = device_.alloc(part_floats * sizeof(float));
    ffn_part_floats_ = part_floats;
  }
}

int MatmulOp::expert_ffn_slices(const DeviceWeight& down, int n_pairs) const {
  // Enough work groups for every compute unit; a slice keeps at least four blocks of each down
  // row (64 bytes of Q4_0 quants: slices of one cache line's worth do not share lines).
  const int units = int(std::max<cl_uint>(1, device_.info().compute_units));
  const int want = (units + std::max(1, n_pairs) - 1) / std::max(1, n_pairs);
  const int most =
      std::max<int>(1, int(std::min<int64_t>(kExpertFfnMaxSlices, down.blocks_per_row / 4)));
  return std::clamp(want, 1, most);
}

void MatmulOp::run_expert_ffn(const DeviceWeight& gate_up, const DeviceWeight& down, cl_mem x,
                              size_t x_offset, int x_rows, cl_mem pair_token_ids,
                              cl_mem pair_expert_ids, int n_pairs, const ExpertCombine& c,
                              int slices, const std::vector<cl_event>& wait, cl_event* done) const {
  if (n_pairs <= 0 || n_pairs > kExpertFfnMaxPairs)
    throw TesseraError("matmul run_expert_ffn: " + std::to_string(n_pairs) +
                       " pairs, the launch takes 1 to " + std::to_string(kExpertFfnMaxPairs));
  if (x_rows <= 0) throw TesseraError("matmul run_expert_ffn: x_rows must be positive");
  check_combine("run_expert_ffn", c);
  Kernels& ks = kernels(down.type);
  if (!ks.experts_ffn || size_t(down.cols) * kExpertFfnMaxPairs > ffn_h_floats_ ||
      size_t(down.rows) * kExpertFfnMaxPairs * kExpertFfnMaxSlices > ffn_part_floats_)
    prepare_expert_ffn(gate_up, down);
  if (slices > kExpertFfnMaxSlices || slices > down.blocks_per_row)
    throw TesseraError("matmul run_expert_ffn: " + std::to_string(slices) +
                       " slices, a down row of " + std::to_string(down.blocks_per_row) +
                       " blocks takes at most " +
                       std::to_string(std::min<int64_t>(kExpertFfnMaxSlices, down.blocks_per_row)));
  if (slices <= 0) slices = expert_ffn_slices(down, n_pairs);
  cl_kernel k = ks.experts_ffn.get();
  set_ffn_weight_args(device_, k, 0, gate_up, down);
  set_arg(device_, k, 7, cl_uint(down.rows));
  set_arg(device_, k, 8, cl_uint(down.n_expert));
  set_arg(device_, k, 9, x);
  set_arg(device_, k, 10, cl_ulong(x_offset));
  set_arg(device_, k, 11, cl_uint(x_rows));
  set_arg(device_, k, 12, pair_token_ids);
  set_arg(device_, k, 13, pair_expert_ids);
  set_arg(device_, k, 14, cl_uint(n_pairs));
  set_arg(device_, k, 15, ffn_h_.get());
  set_arg(device_, k, 16, ffn_part_.get());
  set_arg(device_, k, 17, cl_uint(slices));
  set_combine_args(device_, k, 18, c, combine_counters_.get());
  const size_t local[2] = {1, 1};
  const size_t global[2] = {size_t(slices), size_t(n_pairs)};
  enqueue(device_, k, 2, global, local, {wait, done});
}

void MatmulOp::run_experts_gemm(Kernels& ks, const DeviceWeight& w, cl_mem x, size_t x_offset,
                                int x_rows, cl_mem y, size_t y_offset, cl_mem pair_token_ids,
                                cl_mem pair_expert_ids, int n_pairs, int max_run,
                                const std::vector<cl_event>& wait, cl_event* done) const {
  cl_kernel k = gemm_kernel(ks);
  const MatmulVariant& v = ks.variant;
  const int tile_rows = v.expert_gemm_rows(), tile_pairs = v.expert_gemm_pairs();
  const cl_uint tiles = cl_uint((max_run + tile_pairs - 1) / tile_pairs);
  set_expert_args(device_, k, w, x, x_offset, x_rows, y, y_offset, pair_token_ids, pair_expert_ids,
                  n_pairs);
  set_arg(device_, k, 14, tiles);
  set_arg(device_, k, 15, cl_uint(w.rows));
  set_arg(device_, k, 16, cl_uint(0));
  set_arg(device_, k, 17, cl_uint(0));
  // Groups: row tiles x (experts + the run of invalid ids) x pair tiles of one expert's run.
  const size_t local[2] = {256, 1};
  const size_t global[2] = {(size_t(w.rows) + tile_rows - 1) / tile_rows * 256,
                            (size_t(w.n_expert) + 1) * tiles};
  enqueue(device_, k, 2, global, local, {wait, done});
}

cl_kernel MatmulOp::gemm_kernel(Kernels& ks) const {
  std::lock_guard lock(mutex_);
  if (!ks.experts_gemm)
    ks.experts_gemm =
        device_.kernel("matmul_gemm", "experts_gemm", ks.options + ks.variant.gemm_build_options());
  return ks.experts_gemm.get();
}

void MatmulOp::run_dense_gemm(Kernels& ks, const DeviceWeight& w, cl_mem x, size_t x_offset,
                              cl_mem y, size_t y_offset, int n_tokens,
                              const std::vector<cl_event>& wait, cl_event* done,
                              MatmulOutput out) const {
  cl_kernel k = gemm_kernel(ks);
  const MatmulVariant& v = ks.variant;
  const int tile_rows = v.expert_gemm_rows(), tile_pairs = v.expert_gemm_pairs();
  const cl_uint tiles = cl_uint((n_tokens + tile_pairs - 1) / tile_pairs);
  // One weight (w.n_expert 1), pair p = token p: the pair id buffers are not read (x stands in
  // for them).
  set_expert_args(device_, k, w, x, x_offset, n_tokens, y, y_offset, x, x, n_tokens);
  set_arg(device_, k, 14, tiles);
  set_arg(device_, k, 15, cl_uint(out.ldy));
  set_arg(device_, k, 16, cl_uint(out.accumulate ? 1 : 0));
  set_arg(device_, k, 17, cl_uint(1));
  const size_t local[2] = {256, 1};
  const size_t global[2] = {(size_t(w.rows) + tile_rows - 1) / tile_rows * 256, tiles};
  enqueue(device_, k, 2, global, local, {wait, done});
}

void MatmulOp::enqueue_row_tiles(cl_kernel k, const MatmulVariant& v, int64_t rows, int64_t cols,
                                 int n_items, int tile, const std::vector<cl_event>& wait,
                                 cl_event* done) const {
  const size_t rows_per_group = size_t(v.rows_per_item) * v.wg_rows;
  const size_t groups0 = (size_t(rows) + rows_per_group - 1) / rows_per_group;
  const size_t ntiles = (size_t(n_items) + tile - 1) / tile;
  size_t groups1 = ntiles;
  if (device_.info().type == DeviceType::kCpu) {
    // CPUs: a row group's token tiles on one core (its weights stay in cache), split over more
    // work-groups when there are too few row groups to occupy the cores, and so that a group's
    // tiles' x rows stay in L1 (kCpuXTileBytes): each work item streams its row once per tile and
    // reads the tile's x rows for it. The L1 bound, measured on PoCL here: 64-sequence decode of
    // the 256-column default model 8% less CPU time, its 512-token prefill 14% less, a
    // 2048-column model's 256-token prefill 2x faster.
    const size_t want = 4 * std::max<size_t>(1, device_.info().compute_units);
    const size_t tiles_in_l1 = std::max<size_t>(
        1, kCpuXTileBytes / (size_t(tile) * size_t(std::max<int64_t>(1, cols)) * 4));
    groups1 = std::clamp<size_t>(
        std::max((want + groups0 - 1) / groups0, (ntiles + tiles_in_l1 - 1) / tiles_in_l1), 1,
        ntiles);
  }
  const size_t local[2] = {size_t(v.lanes) * v.wg_rows, 1};
  const size_t global[2] = {groups0 * local[0], groups1};
  enqueue(device_, k, 2, global, local, {wait, done});
}

void MatmulOp::dequantize(const DeviceWeight& w, int64_t row0, int64_t n_rows, cl_mem out,
                          size_t out_offset, const std::vector<cl_event>& wait,
                          cl_event* done) const {
  if (row0 < 0 || n_rows <= 0 || row0 + n_rows > w.rows * w.n_expert)
    throw TesseraError("matmul dequantize: rows [" + std::to_string(row0) + ", " +
                       std::to_string(row0 + n_rows) + ") outside the weight's " +
                       std::to_string(w.rows * w.n_expert) + " rows");
  Kernels& ks = kernels(w.type);
  cl_kernel k = ks.dequantize.get();
  const cl_mem head = w.head ? w.head.get() : w.body.get();
  const cl_uint rows = cl_uint(w.rows), cols = cl_uint(w.cols), bpr = cl_uint(w.blocks_per_row);
  const cl_uint r0 = cl_uint(row0), nr = cl_uint(n_rows);
  const cl_ulong oo = out_offset;
  set_arg(device_, k, 0, w.body.get());
  set_arg(device_, k, 1, head);
  set_arg(device_, k, 2, rows);
  set_arg(device_, k, 3, cols);
  set_arg(device_, k, 4, bpr);
  set_arg(device_, k, 5, r0);
  set_arg(device_, k, 6, nr);
  set_arg(device_, k, 7, out);
  set_arg(device_, k, 8, oo);
  const size_t chunks = size_t(n_rows) * size_t(w.blocks_per_row) * (w.format->block_elems / 32);
  const size_t local = 64;
  const size_t global = (chunks + local - 1) / local * local;
  enqueue(device_, k, 1, &global, &local, {wait, done});
}

void MatmulOp::run_clblast(const DeviceWeight& w, cl_mem x, size_t x_offset, cl_mem y,
                           size_t y_offset, int n_tokens, const std::vector<cl_event>& wait,
                           cl_event* done, Output out) const {
  // Y[t][r] = sum_c X[t][c] W[r][c]: row-major SGEMM with B = W transposed, one slab of rows at a
  // time (F32 weights are used in place: their padded rows are the leading dimension).
  cl_command_queue q = device_.queue();
  if (!wait.empty())
    CL_CHECK(clEnqueueBarrierWithWaitList(q, cl_uint(wait.size()), wait.data(), nullptr),
             device_.info().label());
  const bool in_place = w.type == TensorType::F32;
  const int64_t slab =
      in_place ? w.rows : std::max<int64_t>(1, int64_t(scratch_bytes_ / (size_t(w.cols) * 4)));
  const size_t ldb = in_place ? size_t(w.blocks_per_row) * 32 : size_t(w.cols);
  for (int64_t r0 = 0; r0 < w.rows; r0 += slab) {
    const int64_t nr = std::min(slab, w.rows - r0);
    const bool last = r0 + nr >= w.rows;
    cl_mem b = in_place ? w.body.get() : scratch_.get();
    const size_t b_off = in_place ? size_t(r0) * ldb : 0;
    if (!in_place) dequantize(w, r0, nr, scratch_.get(), 0);
    cl_event ev = nullptr;
    const auto status = clblast::Gemm<float>(
        clblast::Layout::kRowMajor, clblast::Transpose::kNo, clblast::Transpose::kYes,
        size_t(n_tokens), size_t(nr), size_t(w.cols), 1.0f, x, x_offset, size_t(w.cols), b, b_off,
        ldb, out.accumulate ? 1.0f : 0.0f, y, y_offset + size_t(r0), out.ldy, &q,
        (last && done) ? &ev : nullptr);
    if (status != clblast::StatusCode::kSuccess)
      throw ClError("clblast::Gemm<float>", cl_int(status), device_.info().label(),
                    "CLBlast status " + std::to_string(int(status)));
    if (last && done) *done = ev;
  }
}

}  // namespace tessera::ops
