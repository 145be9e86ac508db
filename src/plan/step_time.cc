// Copyright 2026 The llmem Authors.
// The step-time model of the planner (docs/planner.md): compute from model
// FLOPs and the GPU's dense rate, communication from each method's volume over
// the link its process group uses, overlap rules, pipeline bubble, offload.

#include <algorithm>
#include <cmath>

#include "llmem/plan.h"

#include "plan/plan_internal.h"
#include "trace/program.h"

namespace llmem {
namespace plan_detail {
namespace {

bool is_weight(const TensorSpec& t) {
  return t.shape.size() == 2 && t.role != TensorRole::kEmbedding &&
         t.role != TensorRole::kPositionEmbedding && t.role != TensorRole::kNorm;
}

/// A link: bytes per second in one direction and the latency of one ring step.
struct Link {
  double bytes_per_s = 1;
  double latency_s = 0;
};

/// Ring all-reduce of `bytes` over n ranks, in `calls` collectives.
double all_reduce(double bytes, int n, const Link& l, double calls = 1) {
  if (n <= 1 || bytes <= 0)
    return 0;
  return 2.0 * (n - 1) / n * bytes / l.bytes_per_s + calls * 2.0 * (n - 1) * l.latency_s;
}

/// Ring all-gather or reduce-scatter of a `bytes` tensor (the full size) over n ranks.
double gather(double bytes, int n, const Link& l, double calls = 1) {
  if (n <= 1 || bytes <= 0)
    return 0;
  return 1.0 * (n - 1) / n * bytes / l.bytes_per_s + calls * (n - 1) * l.latency_s;
}

double rate_tflops(const GpuSpec& gpu, const TrainingSetup& setup) {
  double r = 0;
  switch (setup.precision) {
    case Precision::kFp32:
      r = gpu.fp32_tflops;  // PyTorch keeps TF32 off for matmuls by default (>= 1.12)
      break;
    case Precision::kFp16Mixed:
    case Precision::kFp16:
      r = gpu.fp16_tflops;
      break;
    case Precision::kBf16Mixed:
    case Precision::kBf16:
      r = gpu.bf16_tflops > 0 ? gpu.bf16_tflops : gpu.fp32_tflops;  // no bf16 tensor cores
      break;
  }
  if (setup.finetune == FinetuneMode::kQlora && !setup.quant.compute_fp32) {
    r = gpu.bf16_tflops > 0 ? gpu.bf16_tflops : gpu.fp16_tflops;
  }
  return r > 0 ? r : 1;
}

bool shards_states(Method m) {
  return m == Method::kZero1 || m == Method::kZero2 || m == Method::kZero3 || m == Method::kFsdp ||
         m == Method::kGemini || m == Method::kColossal1d;
}

bool shards_params(Method m) {
  return m == Method::kZero3 || m == Method::kFsdp || m == Method::kGemini ||
         m == Method::kColossal1d;
}

double optimizer_bytes_per_param(OptimizerKind o) {
  switch (o) {
    case OptimizerKind::kSgd:
      return 12;  // read p, g; write p
    case OptimizerKind::kSgdMomentum:
      return 20;  // + read and write the momentum
    case OptimizerKind::kAdafactor:
      return 16;
    case OptimizerKind::kAdamW8bit:
    case OptimizerKind::kPagedAdamW8bit:
      return 14;
    default:
      return 28;  // read p, g, m, v (16); write p, m, v (12)
  }
}

}  // namespace

ModelStats model_stats(const ModelSpec& model) {
  ModelStats s;
  s.params = static_cast<double>(model.params());
  s.hidden = static_cast<double>(model.hidden_size);
  s.vocab = static_cast<double>(model.vocab_size);
  s.layers = static_cast<double>(model.num_layers);
  s.liger = trace::liger_patches(model);
  for (const TensorSpec& t : model.tensors) {
    if (!is_weight(t))
      continue;
    double n = static_cast<double>(t.numel);
    if (t.role == TensorRole::kExpert && t.layer >= 0 &&
        static_cast<size_t>(t.layer) < model.layers.size()) {
      const MlpSpec& mlp = model.layers[static_cast<size_t>(t.layer)].mlp;
      if (mlp.num_experts > 0)
        n *= static_cast<double>(mlp.experts_per_token) / static_cast<double>(mlp.num_experts);
    }
    s.matmul_params += n;  // the LM head counts even when tied: its matmul runs
    if (t.layer >= 0) {
      // nn.Linear weights are [out, in]; GPT-2's Conv1D stores [in, out].
      bool conv1d = model.family == "gpt2";
      s.linear_out += static_cast<double>(t.shape[conv1d ? 1 : 0]);
      s.linear_in += static_cast<double>(t.shape[conv1d ? 0 : 1]);
      s.linears += 1;
    }
  }
  for (const LayerSpec& l : model.layers) {
    double h = s.hidden;
    // A norm reads and writes h; a residual add reads 2h and writes h (two per layer).
    s.norm_residual_elems += 2 * h * l.norms + 2 * 3 * h;
    double inter = static_cast<double>(l.mlp.intermediate_size);
    if (l.mlp.is_moe())
      inter = inter * static_cast<double>(l.mlp.experts_per_token) +
              static_cast<double>(l.mlp.shared_intermediate_size);
    // Gated: act(gate) reads and writes I, the product reads 2I and writes I.
    // Plain: act reads and writes I.
    s.mlp_act_elems += (l.mlp.kind == MlpKind::kGated ? 5 : 2) * inter;
    s.score_heads += static_cast<double>(l.attention.num_heads);
    s.attention_width += static_cast<double>(l.attention.q_width());
    if (l.attention.sliding_window > 0 &&
        (s.max_window == 0 || l.attention.sliding_window < s.max_window)) {
      s.max_window = l.attention.sliding_window;
    }
  }
  return s;
}

StepTime step_time(const ModelStats& st, const TrainingSetup& setup, const PlanCandidate& c,
                   const GpuSpec& gpu, int nodes, const StepTimeOptions& o) {
  StepTime t;
  const double b = static_cast<double>(c.micro_batch > 0 ? c.micro_batch : 1);
  const double s = static_cast<double>(setup.seq);
  const double m = static_cast<double>(std::max<int64_t>(c.grad_accum, 1));
  const double tokens = b * s;
  const int gpus = c.dp * c.tp * c.pp;
  const double shard = static_cast<double>(c.tp * c.pp);
  const bool full = c.finetune == FinetuneMode::kFull;
  const bool ckpt = c.checkpointing != CheckpointMode::kOff;
  const bool half = setup.precision != Precision::kFp32;
  const double act_bytes = half ? 2 : 4;
  const double trainable = static_cast<double>(c.trainable_params);

  // FLOPs per token (whole model): 2 per weight forward, 4 backward (2 when the
  // weight is frozen: input gradients only); attention 4 s h_q per layer forward.
  double s_eff = st.max_window > 0 ? std::min(s, static_cast<double>(st.max_window)) : s;
  double fwd_w = 2 * st.matmul_params;
  double fwd_a = 4 * s_eff * st.attention_width;
  double bwd_w = (full ? 4 : 2) * st.matmul_params + (full ? 0 : 4 * trainable);
  double bwd_a = 2 * fwd_a;
  double rec = ckpt ? fwd_w + fwd_a : 0;
  t.flops_per_token = fwd_w + fwd_a + bwd_w + bwd_a + rec + (full ? 0 : 2 * trainable);

  // One GPU's share: weights split over tp and pp; attention over pp, and over
  // tp only for Megatron (ColossalAI 1D replicates activations, so attention runs
  // whole on every TP rank).
  double att_split = c.method == Method::kColossal1d ? c.pp : shard;
  // Small micro-batches leave the GEMMs' token dimension too short to fill
  // the GPU: the achieved share saturates as T / (T + T0).
  double fill = tokens / (tokens + o.half_efficiency_tokens);
  double rate = rate_tflops(gpu, setup) * 1e12 * o.compute_efficiency * fill;
  double t_fwd = tokens * (fwd_w / shard + fwd_a / att_split) / rate;
  double t_bwd = tokens * (bwd_w / shard + bwd_a / att_split + rec / shard) / rate;
  if (ckpt)
    t_bwd += tokens * (fwd_a / att_split - fwd_a / shard) / rate;  // recomputed attention

  // Memory-bound elementwise work (norms, residual adds, the MLP activation,
  // materialized attention scores, the fp32 loss): HBM traffic, not FLOPs.
  // ColossalAI 1D TP replicates activations, so every TP rank does all of it;
  // Megatron splits what lives inside its column/row pairs (and, with sequence
  // parallelism, the norms and residual stream).
  double mem_bw = gpu.memory_bandwidth_gbps * 1e9 * o.memory_efficiency;
  if (mem_bw <= 0)
    mem_bw = 1e11;
  const bool megatron = c.method == Method::kMegatron;
  const double inner_split = megatron ? c.tp : 1;
  const double outer_split = megatron && c.sequence_parallel ? c.tp : 1;
  const bool scores =
      setup.attention == AttentionImpl::kEager || setup.attention == AttentionImpl::kSdpaMath;
  // Scale, mask, softmax: five passes over b*heads*s*s (per token: heads * s).
  double fwd_elems = st.norm_residual_elems / outer_split + st.mlp_act_elems / inner_split +
                     (scores ? 5 * st.score_heads * s_eff / inner_split : 0);
  // Logits upcast to fp32, log-softmax, its gradient: about six fp32 passes over
  // the vocabulary per token (vocabulary-parallel under Megatron). Liger's
  // fused linear cross-entropy writes each chunk's 16-bit logits once and turns
  // them into their gradient in place (one read, one write); the matmuls read them.
  double loss_bytes = (setup.fw.liger && st.liger ? 2 * 2 : 6 * 4) * st.vocab / inner_split;
  double fwd_mem = tokens * fwd_elems * act_bytes / c.pp / mem_bw;
  double mem_mb = fwd_mem * (3 + (ckpt ? 1 : 0)) + tokens * loss_bytes / c.pp / mem_bw;
  t_fwd += fwd_mem;
  t_bwd += mem_mb - fwd_mem;

  // Links: ranks are numbered tp fastest, then dp, then pp (Megatron's order).
  int per_node = std::max(1, gpus / std::max(nodes, 1));
  Link intra;
  intra.bytes_per_s =
      (gpu.nvlink_gbps > 0 ? gpu.nvlink_gbps : gpu.pcie_gbps) / 2 * 1e9 * o.link_efficiency;
  if (intra.bytes_per_s <= 0)
    intra.bytes_per_s = 1e9;
  intra.latency_s = (gpu.nvlink_gbps > 0 ? o.nvlink_latency_us : o.pcie_latency_us) * 1e-6;
  Link inter{o.internode_gbps * 1e9 * o.link_efficiency, o.internode_latency_us * 1e-6};
  const Link& tp_link = c.tp > per_node ? inter : intra;
  const Link& dp_link = c.tp * c.dp > per_node ? inter : intra;
  const Link& pp_link = nodes > 1 && c.tp * c.dp >= per_node ? inter : intra;
  Link pcie{gpu.pcie_gbps / 2 * 1e9 * o.link_efficiency, o.pcie_latency_us * 1e-6};
  if (pcie.bytes_per_s <= 0)
    pcie.bytes_per_s = 1e9;

  // Tensor parallelism, per micro-batch, not overlapped.
  double tp_mb = 0;
  if (c.tp > 1) {
    double layers_local = st.layers / c.pp;
    if (c.method == Method::kColossal1d) {
      // Row-parallel linears: forward all-reduce of each output, backward
      // all-gather of each input gradient (one collective per linear); the LM
      // head all-reduces the logits; the column-parallel embedding all-gathers.
      double passes = ckpt ? 2 : 1;
      double linears = st.linears / c.pp;
      tp_mb =
          passes * all_reduce(tokens * act_bytes * st.linear_out / c.pp, c.tp, tp_link, linears) +
          gather(tokens * act_bytes * st.linear_in / c.pp, c.tp, tp_link, linears) +
          all_reduce(tokens * st.vocab * act_bytes, c.tp, tp_link) +
          gather(tokens * st.hidden * act_bytes, c.tp, tp_link);
    } else {
      // Megatron: two all-reduces of the [b, s, h] activations per layer forward,
      // two backward, two more when the layer is recomputed.
      double ar = all_reduce(tokens * st.hidden * act_bytes, c.tp, tp_link);
      tp_mb = layers_local * (4 + (ckpt ? 2 : 0)) * ar;
    }
  }

  // QLoRA: each use of a 4-bit weight dequantizes it (read 0.5 B, write 2 B,
  // the matmul reads 2 B).
  double dequant_mb = 0;
  if (c.finetune == FinetuneMode::kQlora) {
    dequant_mb = st.matmul_params / shard * (2 + (ckpt ? 1 : 0)) * 4.5 / mem_bw;
  }

  // Pipeline: point-to-point activations forward and gradients backward.
  // Interleaved (V model chunks per rank): a micro-batch crosses pp·V virtual
  // stages instead of pp, so each rank sends and receives V times as often
  // (Narayanan et al. 2021, section 2.2.2).
  const double vp = c.pp > 1 ? std::max(1, c.vp) : 1;
  double p2p_mb = 0;
  if (c.pp > 1) {
    p2p_mb = 2 * vp * (tokens * st.hidden * act_bytes / pp_link.bytes_per_s + pp_link.latency_s);
  }

  // Data parallelism.
  const double param_bytes = half ? 2 : 4;  // gathered / communicated parameter copies
  const double grad_bytes =
      (c.method == Method::kDdp || c.method == Method::kMegatron || c.method == Method::kSingle) &&
              (setup.precision == Precision::kFp32 || setup.precision == Precision::kFp16Mixed ||
               setup.precision == Precision::kBf16Mixed)
          ? 4
          : param_bytes;
  double trainable_local = trainable / shard;
  double params_local = st.params / shard;
  double dp_per_mb = 0;  // exposed, every micro-batch
  double dp_once = 0;    // exposed, once per step
  if (c.dp > 1) {
    double grads = trainable_local * grad_bytes;
    switch (c.method) {
      case Method::kDdp:
      case Method::kMegatron:
      case Method::kSingle:
        // Bucketed all-reduce overlapped with the last micro-batch's backward (no_sync before).
        dp_once = std::max(0.0, all_reduce(grads, c.dp, dp_link) - t_bwd);
        break;
      case Method::kZero1:
        dp_once = std::max(0.0, gather(grads, c.dp, dp_link) - t_bwd) +
                  gather(trainable_local * param_bytes, c.dp, dp_link);
        break;
      case Method::kZero2:
        dp_per_mb = std::max(0.0, gather(grads, c.dp, dp_link) - t_bwd);
        dp_once = gather(trainable_local * param_bytes, c.dp, dp_link);
        break;
      case Method::kGemini:
      case Method::kColossal1d: {
        // ColossalAI d4fb7bf (the paper's pin): a chunk is all-gathered when
        // an op first needs it (gemini_hook.py pre_op -> access_chunk ->
        // chunk.py __gather: dist.all_gather, synchronous, no prefetch) and
        // stays gathered through backward; its gradients are reduce-scattered
        // synchronously when the chunk's last gradient arrives (chunk.reduce).
        // Nothing overlaps: both collectives sit on the critical path.
        dp_per_mb =
            gather(params_local * param_bytes, c.dp, dp_link) + gather(grads, c.dp, dp_link);
        break;
      }
      case Method::kZero3:
      case Method::kFsdp: {
        // Parameters gathered for forward and again for backward (prefetched,
        // overlapped with compute); gradients reduce-scattered during backward.
        double ag = gather(params_local * param_bytes, c.dp, dp_link);
        double rs = gather(grads, c.dp, dp_link);
        dp_per_mb = std::max(0.0, ag - t_fwd) + std::max(0.0, ag + rs - t_bwd);
        break;
      }
    }
  }

  // Optimizer and offload.
  double states_local = trainable_local / (shards_states(c.method) ? c.dp : 1);
  double opt_s = 0;
  double offload_s = 0;
  if (c.offload == Offload::kNone) {
    opt_s = states_local * optimizer_bytes_per_param(setup.optimizer) / mem_bw;
  } else {
    opt_s = states_local / o.cpu_adam_params_per_s;
    double d2h = states_local * grad_bytes / pcie.bytes_per_s;
    double h2d = states_local * param_bytes / pcie.bytes_per_s;
    offload_s = std::max(0.0, d2h - t_bwd) + h2d;
  }
  double offload_mb = 0;
  if (c.offload == Offload::kOptimizerAndParams) {
    double fetch =
        params_local / (shards_params(c.method) ? c.dp : 1) * param_bytes / pcie.bytes_per_s;
    offload_mb = std::max(0.0, 2 * fetch - (t_fwd + t_bwd));
  }

  double per_mb = t_fwd + t_bwd + tp_mb + dequant_mb + p2p_mb + dp_per_mb + offload_mb;
  // 1F1B and GPipe: (m + p − 1) stage slots; interleaved: the bubble shrinks
  // to (p − 1)/V slots (Narayanan et al. 2021, section 2.2.2).
  double bubble_slots = (c.pp - 1) / vp;
  double slots = m + bubble_slots;
  t.memory_s = m * mem_mb;
  t.compute_s = m * (t_fwd + t_bwd) - t.memory_s;
  t.bubble_s = bubble_slots * per_mb;
  t.tp_comm_s = m * tp_mb;
  t.dp_comm_s = m * dp_per_mb + dp_once;
  t.pp_comm_s = m * p2p_mb;
  t.dequant_s = m * dequant_mb;
  t.optimizer_s = opt_s;
  t.offload_s = offload_s + m * offload_mb;
  t.step_s = slots * per_mb + dp_once + opt_s + offload_s;
  t.tokens_per_step = c.dp * m * tokens;
  t.tokens_per_s = t.step_s > 0 ? t.tokens_per_step / t.step_s / gpus : 0;
  return t;
}

}  // namespace plan_detail

StepTime step_time(const ModelSpec& model, const TrainingSetup& setup, const PlanCandidate& c,
                   const GpuSpec& gpu, int nodes, const StepTimeOptions& options) {
  return plan_detail::step_time(plan_detail::model_stats(model), setup, c, gpu, nodes, options);
}

}  // namespace llmem
