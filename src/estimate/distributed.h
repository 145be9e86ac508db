// Copyright 2026 The llmem Authors.
// Per-rank estimates of distributed layouts (data, tensor parallelism).

#ifndef LLMEM_SRC_ESTIMATE_DISTRIBUTED_H_
#define LLMEM_SRC_ESTIMATE_DISTRIBUTED_H_

#include "llmem/estimate.h"

#include "trace/program.h"

namespace llmem {

/// One rank's simulation: the single-GPU estimate with `rank`'s differences.
Estimate estimate_rank(const ModelSpec& model, const TrainingSetup& setup, const GpuSpec& gpu,
                       const trace::RankPlan& rank);

/// Every distinct rank role of setup.parallel; the result's peak is the worst rank.
Estimate estimate_distributed(const ModelSpec& model, const TrainingSetup& setup,
                              const GpuSpec& gpu);

/// What one tensor-parallel rank holds of `model`: heads, key/value heads,
/// MLP and expert widths and the vocabulary divided by `tp`, weights sharded
/// (Megatron: column/row-parallel pairs; ColossalAI 1D: weights split,
/// activations kept whole). Throws llmem::Error for layouts that cannot split.
ModelSpec tensor_parallel_view(const ModelSpec& model, int tp, bool megatron,
                               std::vector<std::string>* notes);

/// Throws llmem::Error when setup.parallel's pipeline schedule cannot run:
/// virtual stages without the interleaved schedule, or an interleaved layout
/// Megatron-LM rejects (docs/distributed.md, "Interleaved 1F1B").
void check_pipeline_schedule(const ModelSpec& model, const TrainingSetup& setup);

/// Whether Liger's kernels can run on this layout: the Hugging Face Trainer's
/// data-parallel methods (single, DDP, ZeRO, FSDP) without tensor or pipeline
/// parallelism, since its fused linear cross-entropy needs the whole head.
bool liger_runs_on(Method method, int tp, int pp);

/// Whether Megatron sequence parallelism is modelled for this model and mode:
/// dense Llama-style decoders with standard attention, full fine-tuning.
bool sequence_parallel_modelled(const ModelSpec& model, FinetuneMode finetune);

}  // namespace llmem

#endif  // LLMEM_SRC_ESTIMATE_DISTRIBUTED_H_
