// Device embedding lookup launches and their portability-matrix cases.
#include "host/ops/device/embedding.h"

#include <cctype>
#include <random>
#include <stdexcept>

#include "host/ops/device/matrix.h"
#include "host/ops/quant/quant.h"
#include "host/ops/reference/matmul.h"

namespace tessera::ops {
namespace {

using gguf::TensorType;

// Kernel per format, and the elements one work item dequantizes (a block; 32 for float formats).
struct EmbedKernel {
  TensorType type;
  const char* kernel;
  uint32_t elements;
};
constexpr EmbedKernel kEmbedKernels[] = {
    {TensorType::F32, "embed_f32", 32},    {TensorType::F16, "embed_f16", 32},
    {TensorType::BF16, "embed_bf16", 32},  {TensorType::Q4_0, "embed_q4_0", 32},
    {TensorType::Q4_1, "embed_q4_1", 32},  {TensorType::Q5_0, "embed_q5_0", 32},
    {TensorType::Q8_0, "embed_q8_0", 32},  {TensorType::Q4_K, "embed_q4_k", 256},
    {TensorType::Q5_K, "embed_q5_k", 256}, {TensorType::Q6_K, "embed_q6_k", 256},
};

const EmbedKernel* find_kernel(TensorType t) {
  for (const auto& k : kEmbedKernels)
    if (k.type == t) return &k;
  return nullptr;
}

}  // namespace

EmbeddingOps::EmbeddingOps(const Device& device) : device_(&device) {
  for (const auto& k : kEmbedKernels) kernels_.emplace(k.type, device.kernel("embed", k.kernel));
}

bool EmbeddingOps::supports(TensorType type) {
  return find_kernel(type) != nullptr;
}

void EmbeddingOps::lookup(const DeviceTable& table, cl_mem ids, uint32_t ids_off, uint32_t n_tokens,
                          cl_mem out, uint32_t out_off, const Events& ev) {
  const EmbedKernel* ek = find_kernel(table.type);
  if (!ek) {
    throw std::invalid_argument("embedding: table type " +
                                std::string(gguf::type_name(table.type)) + " has no device kernel");
  }
  const uint64_t row_bytes = gguf::row_bytes(table.type, table.cols);  // throws for partial blocks
  if (n_tokens == 0 || table.cols == 0) return;
  cl_kernel k = kernels_.at(table.type).get();
  set_args(*device_, k, table.mem, cl_ulong(table.offset), cl_ulong(row_bytes), table.n_rows, ids,
           ids_off, out, out_off, table.cols);
  const size_t global[2] = {(table.cols + ek->elements - 1) / ek->elements, n_tokens};
  const size_t local[2] = {fixed_group_size(*device_, k, global[0]), 1};
  enqueue(*device_, k, 2, global, local, ev);
}

namespace {

MatrixCaseResult run_embedding(const Device& device, bool timing, TensorType type, uint32_t tokens,
                               uint32_t cols) {
  const uint32_t n_rows = 50;
  const std::vector<float> values = random_floats(size_t(n_rows) * cols, 71 + cols, -2, 2);
  const uint64_t row_bytes = gguf::row_bytes(type, cols);
  std::vector<uint8_t> table(row_bytes * n_rows);
  for (uint32_t r = 0; r < n_rows; ++r)
    quant::quantize_row(type, values.data() + size_t(r) * cols, table.data() + r * row_bytes, cols);
  std::vector<int32_t> ids(tokens);
  std::mt19937 rng(72 + tokens);
  for (auto& id : ids) id = int32_t(rng() % n_rows);
  ids.front() = 0;
  ids.back() = int32_t(n_rows - 1);  // first and last rows: off-by-one row addressing shows
  std::vector<float> ref(size_t(tokens) * cols);
  reference::embedding(reference::WeightMatrix{type, table.data(), cols, n_rows}, ids, ref);

  EmbeddingOps ops(device);
  GuardedBuffer dtable(device, table), dids(device, ids), dout(device, ref.size() * 4);
  const DeviceTable dt{dtable.mem(), 0, type, cols, n_rows};
  ops.lookup(dt, dids.mem(), 0, tokens, dout.mem(), 0);
  // The only freedom a device has is contracting d*q - m into an fma.
  MatrixCaseResult r = judge(compare(dout.download<float>(), ref), 1e-6, {dout.check_guard()});
  r.bytes = double(tokens) * (row_bytes + cols * 4.0);
  r.flops = double(tokens) * cols * 2;
  if (timing) {
    r.seconds = median_kernel_seconds(device, [&] {
      ClEvent ev;
      ops.lookup(dt, dids.mem(), 0, tokens, dout.mem(), 0, {{}, ev.out()});
      return ev;
    });
  }
  return r;
}

}  // namespace

void register_embedding_cases(std::vector<MatrixCase>& out) {
  struct Shape {
    uint32_t tokens, cols;
  };
  for (const auto& ek : kEmbedKernels) {
    const TensorType type = ek.type;
    std::string format(gguf::type_name(type));
    for (char& c : format) c = char(std::tolower(c));
    std::vector<Shape> shapes = {{1, 4096}, {7, 768}, {3, 256}, {64, 2816}};
    if (ek.elements == 32) shapes.push_back({5, 96});  // 3 blocks
    if (type == TensorType::F32 || type == TensorType::F16 || type == TensorType::BF16)
      shapes.push_back({5, 1001});  // float rows need not be whole blocks
    for (Shape s : shapes) {
      out.push_back(
          {"embedding", format, std::to_string(s.tokens) + "x" + std::to_string(s.cols),
           [=](const Device& d, bool t) { return run_embedding(d, t, type, s.tokens, s.cols); }});
    }
  }
}

}  // namespace tessera::ops
