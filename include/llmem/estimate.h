// Copyright 2026 The llmem Authors.
// Peak memory of one training step, from a simulated trace of the step.

#ifndef LLMEM_ESTIMATE_H_
#define LLMEM_ESTIMATE_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "llmem/gpu.h"
#include "llmem/job.h"
#include "llmem/model.h"

namespace llmem {

/// What a byte is for. The components of a breakdown add up to the
/// allocated bytes at the peak instant.
enum class Component : uint8_t {
  kParameters,       ///< model weights (quantized weights included)
  kGradients,        ///< .grad of trainable parameters
  kOptimizerStates,  ///< Adam moments, momentum buffers, step counters
  kMasterWeights,    ///< fp32 master copies of 16-bit weights (DeepSpeed, Gemini)
  kWeightCopies,     ///< low-precision copies of weights (autocast cache, dequantized weights)
  kActivations,      ///< tensors saved for backward and the residual stream
  kLogitsLoss,       ///< logits, their fp32 copy, log-softmax, loss gradients
  kTemporaries,      ///< short-lived outputs and gradient buffers inside an op
  kInputs,           ///< input ids, labels, masks, rotary tables
  kWorkspace,        ///< cuBLAS workspace (allocated through the caching allocator)
  kCount,
};
std::string_view component_name(Component c);

/// kLoad: building the model and loading its checkpoint, before the first
/// step (events of step 0); appended so the training phases keep their indices.
enum class Phase : uint8_t { kSetup, kForward, kLoss, kBackward, kOptimizer, kLoad };
std::string_view phase_name(Phase p);

/// One sample of the timeline (after each allocation or free that changes a peak, thinned).
struct TimelinePoint {
  uint32_t event;  ///< index of the event in the trace
  uint8_t step;    ///< 1: first iteration, 2: steady state
  Phase phase;
  int16_t layer;  ///< -1 outside decoder layers
  uint64_t allocated;
  uint64_t reserved;
};

struct PeakInfo {
  uint64_t allocated_bytes = 0;   ///< torch.cuda.max_memory_allocated (or CPU live bytes)
  uint64_t reserved_bytes = 0;    ///< torch.cuda.max_memory_reserved
  uint64_t device_bytes = 0;      ///< reserved peak + CUDA context + NCCL buffers (nvidia-smi)
  Phase phase = Phase::kForward;  ///< phase at the allocated peak
  int layer = -1;                 ///< layer at the allocated peak
  int step = 2;                   ///< iteration at the allocated peak
  /// Bytes per component at the allocated peak; sums to allocated_bytes.
  std::array<uint64_t, static_cast<size_t>(Component::kCount)> components{};
};

/// One distinct rank role of a distributed layout (ranks with the same
/// memory: for example every DDP replica, or pipeline stage 0 of each replica).
struct RankEstimate {
  std::string role;        ///< "replica", "stage 0", "tp rank 0 / stage 1", ...
  std::vector<int> ranks;  ///< global ranks this role covers
  PeakInfo peak;
  std::vector<std::string> notes;
};

struct Estimate {
  PeakInfo peak;  ///< the single GPU, or the worst rank of a distributed layout
  /// Distributed layouts: one entry per distinct rank role (empty for one GPU).
  std::vector<RankEstimate> ranks;
  uint64_t first_step_peak = 0;   ///< allocated peak of the first iteration
  uint64_t steady_step_peak = 0;  ///< allocated peak of the second iteration
  uint64_t load_peak = 0;         ///< allocated peak while the model is built and loaded (step 0)
  std::array<uint64_t, 5> phase_peaks{};  ///< allocated peak per Phase (steady state)
  uint64_t context_bytes = 0;             ///< CUDA context (device only)
  uint64_t workspace_bytes = 0;           ///< cuBLAS workspace (device only)
  /// NCCL communicator buffers (device only; outside the caching allocator,
  /// part of device_bytes): the worst rank's, for distributed layouts.
  uint64_t comm_bytes = 0;
  uint64_t capacity_bytes = 0;
  bool fits = false;
  int64_t params = 0;
  int64_t trainable_params = 0;
  size_t events = 0;
  std::vector<TimelinePoint> timeline;
  std::vector<std::string> notes;  ///< modelling approximations that apply to this estimate
  /// The attention kernel traced and why ("sdpa math: sm70, bf16, ..."); empty for eager.
  std::string attention_kernel;
};

/// Simulates one training step (first iteration and a steady-state one) of
/// `model` under `setup` on `gpu`, replaying the allocations through the
/// caching-allocator model (or exact-size allocations with Device::kCpu).
/// Throws llmem::Error for settings that cannot be simulated.
Estimate estimate(const ModelSpec& model, const TrainingSetup& setup, const GpuSpec& gpu);

/// The LLMem paper's single-GPU equations (1)-(5) (arXiv 2404.10933 §3;
/// docs/formulas.md). They model ColossalAI Gemini with fp16 chunks, fp32
/// master weights, Adam and gradient checkpointing always on.
struct PaperEstimate {
  uint64_t m_base = 0;      ///< memory at initialization: the CUDA context (the paper measures it)
  uint64_t m_p = 0;         ///< (2) fp16 + fp32 parameter chunks
  uint64_t m_os = 0;        ///< (3) Adam momentum and variance of Embedding and Linear parameters
  uint64_t m_out = 0;       ///< (4) kept layer outputs (checkpointing)
  uint64_t m_lm = 0;        ///< (5) logits, shifted logits, loss temporary and lm_head
  uint64_t peak = 0;        ///< (1) the sum
  int64_t chunk_elems = 0;  ///< cs: chunk size in elements
};
/// `chunk_elems` 0 picks the smallest multiple of 1024 elements that holds the
/// largest non-embedding tensor (Gemini gives larger tensors a chunk of their own).
PaperEstimate paper_estimate(const ModelSpec& model, const TrainingSetup& setup, const GpuSpec& gpu,
                             int64_t chunk_elems = 0);

}  // namespace llmem

#endif  // LLMEM_ESTIMATE_H_
