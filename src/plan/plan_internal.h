// Copyright 2026 The llmem Authors.
// Shared between the planner's files: model statistics the step-time model
// reads, computed once per plan.

#ifndef LLMEM_SRC_PLAN_PLAN_INTERNAL_H_
#define LLMEM_SRC_PLAN_PLAN_INTERNAL_H_

#include <cstdint>

#include "llmem/model.h"
#include "llmem/plan.h"

namespace llmem::plan_detail {

struct ModelStats {
  double params = 0;         ///< unique parameters
  double matmul_params = 0;  ///< weights that take part in a matmul per token (active experts only,
                             ///< the LM head even when tied)
  double attention_width = 0;  ///< sum over layers of the query width (heads x head size)
  double hidden = 0;
  double vocab = 0;
  double layers = 0;
  double linear_out = 0;   ///< sum over linear weights in the layers of output features
  double linear_in = 0;    ///< ... of input features
  double linears = 0;      ///< linear weights in the layers
  int64_t max_window = 0;  ///< smallest sliding window (0: none)
  // Memory-bound elementwise traffic of one token's forward pass, in elements
  // read plus written (docs/planner.md, "Elementwise traffic").
  double norm_residual_elems = 0;  ///< norms and residual adds: never split by tensor parallelism
  double mlp_act_elems = 0;        ///< the MLP activation (and gate product): split by Megatron TP
  double score_heads = 0;          ///< sum over layers of query heads (materialized scores: x s)
  bool liger = false;              ///< Liger has kernels for the model type (trace::liger_patches)
};

ModelStats model_stats(const ModelSpec& model);

StepTime step_time(const ModelStats& stats, const TrainingSetup& setup, const PlanCandidate& c,
                   const GpuSpec& gpu, int nodes, const StepTimeOptions& options);

}  // namespace llmem::plan_detail

#endif  // LLMEM_SRC_PLAN_PLAN_INTERNAL_H_
