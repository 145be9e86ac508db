// Copyright 2026 The llmem Authors.
// The planner: the fastest training configuration that fits (issue 6).
//
// plan() enumerates candidate layouts (method x (dp, tp, pp) x checkpointing x
// offload x fine-tuning mode), finds each one's largest micro-batch with the
// simulation (estimate(), worst rank), keeps those whose headroom is at least
// the margin and ranks them by the step-time model (docs/planner.md).

#ifndef LLMEM_PLAN_H_
#define LLMEM_PLAN_H_

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "llmem/estimate.h"
#include "llmem/gpu.h"
#include "llmem/job.h"
#include "llmem/model.h"

namespace llmem {

/// What is kept in host memory instead of the GPU.
enum class Offload {
  kNone,
  kOptimizer,           ///< ZeRO-Offload / FSDP CPU offload / Gemini: optimizer states
  kOptimizerAndParams,  ///< + parameters (ZeRO-3 offload_param, FSDP, Gemini 'cpu')
};
std::string_view offload_name(Offload o);
std::string_view finetune_name(FinetuneMode f);

/// Constants of the step-time model (docs/planner.md names their sources).
struct StepTimeOptions {
  double compute_efficiency = 0.5;  ///< achieved share of the dense tensor-core peak (MFU)
  /// Tokens per micro-batch at which half of that share is reached (assumption:
  /// GEMMs with a short token dimension do not fill the GPU).
  double half_efficiency_tokens = 128;
  double memory_efficiency = 0.8;  ///< achieved share of the HBM bandwidth
  double link_efficiency = 0.8;    ///< achieved share of NVLink / PCIe / InfiniBand bandwidth
  /// Inter-node bandwidth per GPU and direction, GB/s: one 200 Gb/s HDR InfiniBand
  /// adapter per GPU (NVIDIA DGX A100 datasheet: 8x ConnectX-6 HDR).
  double internode_gbps = 25;
  double nvlink_latency_us = 10;     ///< per ring step (assumption, see docs/planner.md)
  double pcie_latency_us = 20;       ///< per ring step
  double internode_latency_us = 20;  ///< per ring step
  /// Host-side AdamW updates per second per GPU when the optimizer is offloaded
  /// (assumption: memory-bound, ~28 bytes per parameter at ~50 GB/s of host bandwidth).
  double cpu_adam_params_per_s = 1.8e9;
};

/// Where the time of one optimizer step goes (seconds, one GPU).
struct StepTime {
  double compute_s = 0;        ///< matmuls and attention, all micro-batches, bubble excluded
  double memory_s = 0;         ///< memory-bound elementwise work (norms, activations, scores, loss)
  double bubble_s = 0;         ///< pipeline fill and drain
  double tp_comm_s = 0;        ///< tensor-parallel collectives (on the critical path)
  double dp_comm_s = 0;        ///< exposed data-parallel communication (after overlap)
  double pp_comm_s = 0;        ///< pipeline point-to-point transfers
  double optimizer_s = 0;      ///< optimizer update (GPU memory-bound, or host CPU)
  double offload_s = 0;        ///< exposed PCIe traffic of offloading
  double dequant_s = 0;        ///< QLoRA dequantization (memory-bound)
  double step_s = 0;           ///< the sum
  double tokens_per_step = 0;  ///< all replicas
  double tokens_per_s = 0;     ///< per GPU
  double flops_per_token = 0;  ///< model FLOPs per token, recomputation included
};

/// One configuration family: everything but the micro-batch. After the
/// search, `max_micro_batch` is its largest micro-batch that fits with the
/// margin and `micro_batch` the fastest one (with --global-batch not always
/// the largest).
struct PlanCandidate {
  Method method = Method::kSingle;
  int dp = 1, tp = 1, pp = 1;
  /// Model chunks per pipeline rank: > 1 runs Megatron's interleaved 1F1B
  /// schedule (PipelineSchedule::kInterleaved), 1 the request's schedule.
  int vp = 1;
  CheckpointMode checkpointing = CheckpointMode::kOff;
  Offload offload = Offload::kNone;
  FinetuneMode finetune = FinetuneMode::kFull;
  /// Megatron with tp > 1 on a model where it is modelled: sequence
  /// parallelism on (it only lowers memory; the communication volume is the same).
  bool sequence_parallel = false;
  /// Hugging Face Trainer use_liger_kernel (TrainingSetup::fw.liger).
  bool liger = false;
  int64_t micro_batch = 0;      ///< chosen (0 when nothing fits)
  int64_t max_micro_batch = 0;  ///< largest that fits (0 when even 1 does not)
  int64_t grad_accum = 1;       ///< micro-batches per optimizer step at `micro_batch`
  uint64_t peak_bytes = 0;      ///< worst-rank device peak at micro_batch (or at 1 when rejected)
  uint64_t headroom_bytes = 0;  ///< capacity minus peak (0 when over)
  bool fits = false;
  std::string rejected_reason;   ///< empty when it fits
  StepTime time;                 ///< at micro_batch
  std::string role;              ///< worst rank's role ("" for one GPU)
  int64_t trainable_params = 0;  ///< from the estimate (LoRA adapters, unfrozen weights)
  int estimates = 0;             ///< exact estimate() calls spent on this family
};
/// "zero3 dp=8", "megatron dp=2 tp=2 pp=2" ("... pp=2 vp=2" interleaved), plus
/// "+ckpt", "+lora", "+offload-opt".
std::string candidate_label(const PlanCandidate& c);

/// Estimator used by the planner (tests inject fakes; default llmem::estimate).
using EstimateFn = std::function<Estimate(const ModelSpec&, const TrainingSetup&, const GpuSpec&)>;

struct PlanRequest {
  int gpus = 1;
  int nodes = 1;
  int64_t seq = 512;
  int64_t global_batch = 0;     ///< samples per optimizer step over all replicas (0: free)
  int64_t dataset_tokens = 0;   ///< for the time per epoch (0: not reported)
  std::vector<Method> methods;  ///< empty: every method the framework offers
  bool allow_lora = false, allow_qlora = false, allow_ckpt = false, allow_offload = false;
  /// Also Megatron's interleaved 1F1B with 2 model chunks per rank, for each
  /// megatron pipeline whose layers split into 2·pp equal virtual stages.
  bool allow_interleaved = false;
  /// Also Liger's kernels (hf, on model types Liger patches, data-parallel
  /// layouts): each family with and without them. base.fw.liger instead
  /// runs every candidate with them.
  bool allow_liger = false;
  bool colossalai = false;  ///< the paper's framework: Gemini and its 1D TP, fp16, ckpt
  /// `base` came from a torchtune or LitGPT recipe: its fine-tuning mode and
  /// checkpointing are kept (allow adds to them), and only the layouts the
  /// framework runs are searched.
  bool from_recipe = false;
  double margin = 0.05;            ///< minimum headroom as a share of capacity
  int64_t max_micro_batch = 1024;  ///< search limit when no global batch is given
  int max_pp = 0;                  ///< most pipeline stages searched (0: no limit)
  /// Micro-batches per step for pipelines when no global batch is given (0: 4 x pp).
  int64_t pipeline_micro_batches = 0;
  /// Framework, precision, optimizer, attention, LoRA and allocator settings
  /// of every candidate (base.framework torchtune / LitGPT: only single-GPU
  /// and FSDP layouts, checkpointing non-reentrant, as those frameworks run).
  TrainingSetup base;
  StepTimeOptions time;
  EstimateFn estimator;  ///< empty: llmem::estimate
};

struct Plan {
  /// Fitting candidates first, fastest first; then the rejected ones.
  std::vector<PlanCandidate> candidates;
  int choice = -1;  ///< index into candidates, -1 when nothing fits
  uint64_t capacity_bytes = 0;
  uint64_t budget_bytes = 0;  ///< capacity x (1 - margin)
  size_t configurations = 0;  ///< (family, micro-batch) configurations judged
  size_t estimates = 0;       ///< exact estimate() calls
  size_t memo_hits = 0;       ///< estimate() calls saved by memoization
  double epoch_s = 0;         ///< time per epoch of the choice (with dataset_tokens)
  int64_t max_seq = -1;       ///< set by max_seq(): the answer (0: none fits)
  int min_gpus = -1;          ///< set by min_gpus(): the answer (0: none fits)
  std::vector<std::string> notes;
};

/// Throws llmem::Error (naming the option) for impossible requests.
Plan plan(const ModelSpec& model, const PlanRequest& request, const GpuSpec& gpu);

/// Longest sequence (multiple of 64 up to the model's maximum, or of 2 below
/// 64) for which some candidate fits with micro-batch 1; 0 when none does.
/// `out` receives the plan at that length.
int64_t max_seq(const ModelSpec& model, const PlanRequest& request, const GpuSpec& gpu, Plan* out);

/// Fewest GPUs (1..request.gpus) with a fitting candidate; 0 when none.
int min_gpus(const ModelSpec& model, const PlanRequest& request, const GpuSpec& gpu, Plan* out);

/// Step time of one candidate at its micro_batch and grad_accum (docs/planner.md).
StepTime step_time(const ModelSpec& model, const TrainingSetup& setup, const PlanCandidate& c,
                   const GpuSpec& gpu, int nodes, const StepTimeOptions& options);

// ---- The LLMem paper's Algorithm 1 (equations (1)-(10)) --------------------

enum class PaperMethod { kCdp, kAdp, kTp, kDpTp };

struct PaperChoice {
  PaperMethod method = PaperMethod::kCdp;
  int dp = 1, tp = 1;
  std::string name;         ///< "CDP", "4DP", "4TP", "2DP+2TP"
  int64_t max_batch = 0;    ///< 0: out of memory at batch 1
  uint64_t peak_bytes = 0;  ///< the equations' peak at max_batch (at 1 when OOM)
  double score = 0;         ///< Algorithm 1's eval
};

struct PaperPlan {
  std::vector<PaperChoice> methods;  ///< CDP, ADP, TP, then DP+TP for each 1 < tp < gpus
  int choice = -1;                   ///< argmax of the score; -1: "use CPU offloading"
};

/// Peak of the paper's equations for one method: (6) CDP, (7) ADP, (8)-(9) TP
/// and (10) DP+TP written for any (dp, tp): the gathered fp16 chunks are
/// m_p,16 / tp ("literal" keeps (10) as printed, m_p,16 (1 - tp / gpus)).
uint64_t paper_peak(const ModelSpec& model, PaperMethod method, int dp, int tp, int64_t batch,
                    int64_t seq, const GpuSpec& gpu, bool literal = false);

/// Algorithm 1: each method's largest batch (bs = 1, 2, ... until the peak
/// exceeds the capacity) and its score.
PaperPlan paper_plan(const ModelSpec& model, int gpus, int64_t seq, const GpuSpec& gpu,
                     bool literal = false);

// ---- Rendering (no arithmetic) ----------------------------------------------

std::string plan_json(const ModelSpec& model, const PlanRequest& request, const GpuSpec& gpu,
                      const Plan& p, const PaperPlan* paper, int top);
std::string plan_table(const ModelSpec& model, const PlanRequest& request, const GpuSpec& gpu,
                       const Plan& p, const PaperPlan* paper, int top);

}  // namespace llmem

#endif  // LLMEM_PLAN_H_
