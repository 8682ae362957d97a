// Device ops of the recurrent mixers (cl_kernels/ssm.cl): the short causal conv1d + SiLU with its
// rolling state, Mamba2's selective scan, the gated RMSNorm. Each launch covers a batch of
// sequences, each a run of consecutive token rows with its own state slot: one-token runs are
// decode steps, longer runs prefill chunks (the state is read at the run's start and left at its
// end). References: host/ops/reference/ssm.h, which gives the per-sequence math and layouts.
#pragma once

#include <cstdint>

#include "devices/device.h"
#include "host/ops/device/activation.h"
#include "host/ops/device/launch.h"

namespace tessera::ops {

// A batch's sequences and their recurrent states. `seqs` holds n_seqs int32 triples (first token
// row, token count, state slot) from element seqs_off; slot s's state starts at float
// s * slot_stride + state_off of `states` (a kv::RecurrentStatePool layer buffer, whose slot holds
// every state of the layer one after the other). The caller keeps rows and slots in range.
struct RecurrentBatch {
  cl_mem seqs = nullptr;
  uint32_t seqs_off = 0, n_seqs = 0;
  cl_mem states = nullptr;
  uint64_t slot_stride = 0;  // floats
  uint32_t state_off = 0;    // floats
  // Token rows of the batch (the runs' lengths summed): above n_seqs, some run is longer than one
  // token (prefill), which a chunked form may take; n_seqs: decode steps only. The scans split
  // runs over launches by it where a device limits loop iterations (llvmpipe); 0 (unknown): one
  // launch of the recurrent form.
  uint32_t n_tokens = 0;
};

// Mamba2's head layout (as reference::Mamba2Shape).
struct Mamba2Dims {
  uint32_t n_head = 0, head_dim = 0, n_group = 0, d_state = 0;
};

// How mamba2_scan spreads channels over work items: one channel per item (GPUs: neighbouring
// items read neighbouring state floats), or 8 per item with 8-wide loads (CPUs: each item streams
// state rows; used when head_dim is a multiple of 8). kAuto picks by device type.
enum class ScanForm { kAuto, kPerChannel, kEightChannels };

// How mamba2_scan runs a batch with a run longer than one token: the recurrent kernel above (each
// item walks the run's tokens in order), or the chunked (SSD) kernel, whose work-groups compute a
// chunk's tokens in parallel. Batches of one-token runs (decode) always take the recurrent kernel.
// kAuto for Mamba2: chunked on GPUs and on CPU devices of 8 or more compute units, recurrent on
// smaller CPUs. Measured on a 256-token run of Granite 4.0-H Tiny's heads (matrix row
// mamba2_scan/f32/ssd/48x64/g1/s128/long256 and its recurrent forms, 2026-12-03): H200 (NVIDIA
// OpenCL) 1.63 ms chunked vs 2.54 ms recurrent; 16-core Xeon (PoCL 5.0) 12.2 vs 25.5 ms; 2-core
// PoCL 3.1 193 vs 89 ms (the x8 form). kAuto for DeltaNet: chunked everywhere (DeltaNetOps).
enum class PrefillForm { kAuto, kRecurrent, kChunked };

// One per device and user thread: launches set kernel arguments, so calls must not overlap.
class SsmOps {
 public:
  static constexpr uint32_t kMaxConvKernel = 8;  // cl_kernels/ssm.cl CONV_MAX_KERNEL
  static constexpr uint32_t kScanChunk = 32;     // cl_kernels/ssm.cl SSD_CHUNK

  explicit SsmOps(const Device& device, ScanForm scan_form = ScanForm::kAuto,
                  PrefillForm prefill_form = PrefillForm::kAuto);

  // Causal depthwise conv1d + SiLU (reference::conv1d_silu) over `channels` channels: w is
  // [channels][d_conv] from w_off, bias `channels` floats from bias_off (bias null: none), the
  // conv state [channels][d_conv - 1] per slot. out must not overlap x. Throws
  // std::invalid_argument on d_conv outside [1, 8] or a stride below `channels`.
  void conv1d_silu(const Strided& x, cl_mem w, uint32_t w_off, cl_mem bias, uint32_t bias_off,
                   const RecurrentBatch& batch, const Strided& out, uint32_t channels,
                   uint32_t d_conv, const Events& ev = {});

  // Mamba2's selective scan with the D skip (reference::mamba2_scan): x and y rows of n_head *
  // head_dim, dt rows of n_head (before dt_bias), B and C rows of n_group * d_state; A, D and
  // dt_bias n_head floats each from their offsets; the state [d_state][n_head * head_dim] per slot.
  // Batches with a run longer than one token (batch.n_tokens > batch.n_seqs) take the chunked
  // form when the prefill form resolves to it (reference::mamba2_scan_chunked, chunks of
  // kScanChunk tokens; a device with a loop limit, such as llvmpipe, keeps the recurrent kernel
  // for runs long enough to pass it). Throws std::invalid_argument on a bad shape or stride.
  void mamba2_scan(const Mamba2Dims& dims, const Strided& x, const Strided& dt, const Strided& b,
                   const Strided& c, cl_mem a, uint32_t a_off, cl_mem d, uint32_t d_off,
                   cl_mem dt_bias, uint32_t dt_bias_off, const RecurrentBatch& batch,
                   const Strided& y, const Events& ev = {});

  // Gated RMSNorm (reference::gated_rms_norm) of `rows` token rows of `width` channels in groups
  // of `group_size`; w holds `width` floats (w_shared false) or `group_size` shared by the groups.
  // out may be y (same offset and stride). Throws std::invalid_argument on a bad shape or stride.
  void gated_rms_norm(const Strided& y, const Strided& z, cl_mem w, uint32_t w_off, bool w_shared,
                      const Strided& out, uint32_t rows, uint32_t width, uint32_t group_size,
                      float eps, bool gate_first, const Events& ev = {});

 private:
  const Device* device_;
  bool scan8_;    // ScanForm::kEightChannels (resolved)
  bool chunked_;  // PrefillForm::kChunked (resolved)
  ClKernel conv_, scan_, scan8_kernel_, chunk_, norm_;
};

}  // namespace tessera::ops
