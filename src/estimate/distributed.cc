// Copyright 2026 The llmem Authors.
// Distributed layouts: which ranks differ, what each one holds, and one
// simulated step per distinct rank role.

#include "estimate/distributed.h"

#include <algorithm>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "llmem/error.h"

namespace llmem {
namespace {

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

void check_divides(int64_t value, int tp, const std::string& what) {
  if (value % tp != 0) {
    throw Error(
        "--tp", "",
        what + " (" + std::to_string(value) + ") is not divisible by tp " + std::to_string(tp));
  }
}

// The greedy partition of torch.distributed.optim.ZeroRedundancyOptimizer
// (_partition_parameters): tensors sorted by size, largest first (stable),
// each to the rank with the fewest elements so far.
std::vector<std::vector<char>> torch_zero_owners(const ModelSpec& model, const TrainingSetup& s,
                                                 int world) {
  std::vector<int64_t> numel;
  bool full = s.finetune == FinetuneMode::kFull;
  for (const TensorSpec& t : model.tensors) {
    if (!t.tied_to.empty())
      continue;
    bool frozen = (t.layer >= 0 && t.layer < s.freeze_layers) ||
                  (s.freeze_embeddings &&
                   (t.role == TensorRole::kEmbedding || t.role == TensorRole::kPositionEmbedding));
    if (full && !frozen)
      numel.push_back(t.numel);
  }
  if (!full)
    throw Error("--zero-impl", "",
                "torch ZeroRedundancyOptimizer is modelled for full fine-tuning only");
  std::vector<size_t> order(numel.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return numel[a] > numel[b]; });
  std::vector<std::vector<char>> owners(static_cast<size_t>(world),
                                        std::vector<char>(numel.size(), 0));
  std::vector<int64_t> sizes(static_cast<size_t>(world), 0);
  for (size_t k : order) {
    auto rank = static_cast<size_t>(std::min_element(sizes.begin(), sizes.end()) - sizes.begin());
    owners[rank][k] = 1;
    sizes[rank] += numel[k];
  }
  return owners;
}

// NCCL buffers per communicator a rank uses, measured on 4x A100 with one
// 4 MB all-reduce per process group (NVIDIA/nccl issue 964): 544 MB for a
// group of 2 GPUs, 688 MB for larger groups. Pipeline neighbours talk through
// 2-rank point-to-point communicators. A first-order figure: channels, NVLS
// and the NCCL version change it (docs/distributed.md).
uint64_t communicator_bytes(int group) {
  if (group <= 1)
    return 0;
  return group == 2 ? 544'000'000ull : 688'000'000ull;
}

bool half(Precision p) {
  return p != Precision::kFp32;
}

// The layouts the framework profiles' training loops can run.
void check_framework_layout(const TrainingSetup& s) {
  const ParallelSetup& p = s.parallel;
  if (s.fw.liger && !liger_runs_on(p.method, p.tp, p.pp)) {
    throw Error("--liger", "",
                "Liger kernels run under the Hugging Face Trainer's data-parallel methods "
                "(ddp, zero1-3, fsdp), not " +
                    std::string(method_name(p.method)) +
                    (p.tp > 1 || p.pp > 1 ? " with --tp/--pp" : ""));
  }
  if (s.framework == Framework::kHf)
    return;
  std::string fw(framework_name(s.framework));
  if (p.method != Method::kFsdp || p.tp > 1 || p.pp > 1) {
    // torchtune recipes/*_distributed.py shard with training.shard_model
    // (FSDP); LitGPT's finetune scripts use FSDPStrategy whenever devices > 1.
    throw Error("--method", "",
                fw +
                    "'s multi-GPU recipes run FSDP over data-parallel ranks (--method fsdp "
                    "--dp N), not " +
                    std::string(method_name(p.method)) +
                    (p.tp > 1 || p.pp > 1 ? " with --tp/--pp" : ""));
  }
  if (s.framework == Framework::kTorchtune && s.finetune == FinetuneMode::kQlora &&
      p.fsdp_version != 2 && p.dp > 1) {
    // lora_finetune_distributed shards torchao NF4Tensors with FSDP2's
    // fully_shard (torchtune 1814feb training/_distributed.py shard_model,
    // load_from_full_model_state_dict; torchao NF4Tensor.fsdp_pre_all_gather).
    throw Error("--fsdp-version", "",
                "torchtune's distributed QLoRA shards its NF4 weights with FSDP2 (fully_shard); "
                "expected 2");
  }
  if (s.framework == Framework::kLitgpt) {
    if (p.fsdp_version != 1)
      throw Error("--fsdp-version", "",
                  "LitGPT's Fabric FSDPStrategy wraps the model in FSDP1 "
                  "(FullyShardedDataParallel); expected 1");
    if (p.offload_params || p.offload_optimizer)
      throw Error("--offload", "", "LitGPT's finetune scripts set FSDPStrategy(cpu_offload=False)");
    if (s.finetune == FinetuneMode::kQlora)
      throw Error("--finetune", "",
                  "LitGPT raises NotImplementedError for --quantize with devices > 1");
  }
}

// FSDP-QLoRA and ZeRO-3 QLoRA as TRL's SFTTrainer prepares them (trl
// trainer/sft_trainer.py _prepare_peft_model, is_sharded_qlora): no
// prepare_model_for_kbit_training (it would cast the norms to fp32 next
// to the 16-bit packed weights of the same flat parameter), and
// get_peft_model(autocast_adapter_dtype=False): adapters in the model's
// dtype. Under FSDP with mixed precision accelerate then upcasts the
// adapters' flat parameters to fp32 (Accelerator.prepare_model); DeepSpeed
// keeps them 16-bit with an fp32 master partition.
void hf_sharded_qlora(Method method, TrainingSetup* s, std::vector<std::string>* notes) {
  s->quant.prepare_kbit = false;
  bool mixed = s->precision == Precision::kBf16Mixed || s->precision == Precision::kFp16Mixed;
  s->lora.adapter_fp32 = method == Method::kFsdp && mixed;
  notes->push_back(
      "sharded QLoRA: packed 4-bit weights (bnb_4bit_quant_storage = the model's dtype) "
      "sharded with the other frozen parameters; quant state (absmax) whole on every rank; "
      "no prepare_model_for_kbit_training (TRL is_sharded_qlora); LoRA adapters whole");
}

}  // namespace

bool liger_runs_on(Method method, int tp, int pp) {
  // Liger patches Transformers modules for the Trainer (DDP, DeepSpeed, FSDP).
  return tp <= 1 && pp <= 1 && method != Method::kGemini && method != Method::kMegatron &&
         method != Method::kColossal1d;
}

ModelSpec tensor_parallel_view(const ModelSpec& model, int tp, bool megatron,
                               std::vector<std::string>* notes) {
  ModelSpec v = model;
  if (tp <= 1)
    return v;
  if (!megatron) {
    // ColossalAI 1D (the paper's TP): every linear splits its input dimension
    // (Linear1D_Row), the embedding its hidden dimension; heads and the
    // vocabulary stay whole and so do the activations.
    check_divides(model.hidden_size, tp, "the hidden size");
    for (const LayerSpec& l : v.layers)
      check_divides(l.mlp.intermediate_size, tp, "the MLP width (intermediate_size)");
  }
  for (LayerSpec& l : v.layers) {
    if (!megatron)
      break;
    AttentionSpec& a = l.attention;
    check_divides(a.num_heads, tp, "the number of attention heads");
    if (a.num_kv_heads >= tp) {
      check_divides(a.num_kv_heads, tp, "the number of key/value heads");
    } else if (tp % a.num_kv_heads != 0) {
      throw Error("--tp", "",
                  "tp " + std::to_string(tp) + " is not a multiple of the key/value heads (" +
                      std::to_string(a.num_kv_heads) + ")");
    }
    check_divides(l.mlp.intermediate_size, tp, "the MLP width (intermediate_size)");
    a.num_heads /= tp;
    // Fewer key/value heads than ranks: each rank keeps a copy of one.
    a.num_kv_heads = std::max<int64_t>(1, a.num_kv_heads / tp);
    l.mlp.intermediate_size /= tp;
    l.mlp.shared_intermediate_size = ceil_div(l.mlp.shared_intermediate_size, tp);
  }
  if (megatron) {
    if (model.vocab_size % tp != 0) {
      // Megatron pads the vocabulary (--make-vocab-size-divisible-by).
      notes->push_back("the vocabulary (" + std::to_string(model.vocab_size) +
                       ") is padded to a multiple of tp " + std::to_string(tp));
    }
    v.vocab_size = ceil_div(model.vocab_size, tp);
  }
  for (TensorSpec& t : v.tensors) {
    bool split_role = t.role == TensorRole::kAttention || t.role == TensorRole::kMlp ||
                      t.role == TensorRole::kExpert || t.role == TensorRole::kEmbedding ||
                      t.role == TensorRole::kLmHead;
    if (!split_role || !t.tied_to.empty() || t.shape.empty())
      continue;
    if (t.role == TensorRole::kEmbedding || t.role == TensorRole::kLmHead) {
      t.shape[0] = ceil_div(t.shape[0], tp);  // vocabulary-parallel rows
    } else if (t.shape.size() == 1) {
      if (trace::row_parallel(t.name))
        continue;  // the bias after the all-reduce is whole
      t.shape[0] = ceil_div(t.shape[0], tp);
    } else {
      bool conv1d = model.family == "gpt2";  // Conv1D weights are [in, out]
      size_t out_dim = conv1d ? 1 : 0;
      size_t dim = trace::row_parallel(t.name) ? 1 - out_dim : out_dim;
      t.shape[dim] = ceil_div(t.shape[dim], tp);
    }
    t.numel = 1;
    for (int64_t d : t.shape)
      t.numel *= d;
  }
  return v;
}

namespace {

// Every decoder layer holds the same parameters and the same attention span.
bool uniform_layers(const ModelSpec& model) {
  std::vector<int64_t> numel(static_cast<size_t>(model.num_layers), 0);
  for (const TensorSpec& t : model.tensors) {
    if (t.layer >= 0 && t.layer < model.num_layers)
      numel[static_cast<size_t>(t.layer)] += t.numel;
  }
  for (size_t i = 1; i < numel.size(); ++i) {
    if (numel[i] != numel[0] ||
        model.layers[i].attention.sliding_window != model.layers[0].attention.sliding_window)
      return false;
  }
  return true;
}

/// Interleaved 1F1B, Megatron-LM 00611e6: rank `stage` of `pp` holds `v`
/// model chunks, chunk c the layers of virtual stage c x pp + stage
/// (megatron/core/transformer/transformer_layer.py
/// get_transformer_layer_offset). Its forwards follow get_schedule_table
/// (megatron/core/pipeline_parallel/schedules.py): micro-batches in groups of
/// pp, each group through chunk 0, then chunk 1, ...; forward k runs chunk
/// (k mod (pp x v)) / pp. get_pp_rank_microbatches runs
/// 2 (pp - stage - 1) + (v - 1) pp warm-up forwards (at most m x v), and the
/// steady state runs one more forward before each backward, so at the first
/// backward the rank holds min(warm-up + 1, m x v) chunk forwards.
void interleave(int stage, int pp, int v, int64_t layers, int64_t m, trace::RankPlan* sp,
                std::string* name) {
  auto per_chunk = static_cast<int>(layers / (static_cast<int64_t>(pp) * v));
  sp->chunk_layers = per_chunk;
  sp->chunk_begin.clear();
  std::string spans;
  for (int c = 0; c < v; ++c) {
    int begin = (c * pp + stage) * per_chunk;
    sp->chunk_begin.push_back(begin);
    spans +=
        (c > 0 ? ", " : "") + std::to_string(begin) + "-" + std::to_string(begin + per_chunk - 1);
  }
  sp->first_layer = sp->chunk_begin.front();
  sp->end_layer = sp->chunk_begin.back() + per_chunk;
  int64_t warmup = 2 * static_cast<int64_t>(pp - stage - 1) + static_cast<int64_t>(v - 1) * pp;
  int64_t flight = std::min(warmup + 1, m * v);
  sp->flight_chunks.clear();
  for (int64_t k = 0; k < flight; ++k)
    sp->flight_chunks.push_back(static_cast<int>((k % (static_cast<int64_t>(pp) * v)) / pp));
  sp->in_flight = static_cast<int>(flight);
  *name = "stage " + std::to_string(stage) + " (layers " + spans + ")";
}

}  // namespace

void check_pipeline_schedule(const ModelSpec& model, const TrainingSetup& setup) {
  const ParallelSetup& p = setup.parallel;
  int v = p.virtual_stages;
  if (v < 1 || v > 1024)
    throw Error("--virtual-stages", "", "expected between 1 and 1024 model chunks per rank");
  if (p.schedule != PipelineSchedule::kInterleaved) {
    if (v > 1) {
      throw Error("--virtual-stages", "",
                  std::to_string(v) +
                      " model chunks per rank need --schedule interleaved (1f1b and gpipe run "
                      "one chunk per rank)");
    }
    return;
  }
  // Megatron-LM 00611e6 (megatron/training/arguments.py validate_args,
  // megatron/core/model_parallel_config.py __post_init__): a virtual pipeline
  // needs pp > 1 (pp > 2 without overlap_p2p_comm, on by default), and a
  // virtual size of 1 is no virtual pipeline at all.
  if (p.method != Method::kMegatron) {
    throw Error("--schedule", "",
                "the interleaved schedule is Megatron-LM's "
                "(forward_backward_pipelining_with_interleaving): use --method megatron, not " +
                    std::string(method_name(p.method)));
  }
  if (p.pp < 2) {
    throw Error("--schedule", "",
                "the interleaved schedule needs at least 2 pipeline stages (--pp), got " +
                    std::to_string(p.pp));
  }
  if (v < 2) {
    throw Error("--virtual-stages", "",
                "the interleaved schedule needs at least 2 model chunks per rank (Megatron runs "
                "1 as plain 1F1B: --schedule 1f1b)");
  }
  // megatron/core/transformer/transformer_layer.py get_transformer_layer_offset:
  // every virtual stage holds num_layers / (pp x vp) layers.
  int64_t split = static_cast<int64_t>(p.pp) * v;
  if (model.num_layers % split != 0) {
    throw Error("--virtual-stages", "",
                std::to_string(model.num_layers) +
                    " decoder layers do not split into pp x V = " + std::to_string(p.pp) + " x " +
                    std::to_string(v) + " virtual stages of equal size");
  }
  // megatron/core/pipeline_parallel/schedules.py
  // forward_backward_pipelining_with_interleaving: micro-batches run in
  // groups of microbatch_group_size_per_vp_stage (pp by default) per model
  // chunk; it must not exceed the micro-batches, and a last, smaller group
  // would have to hold at least pp of them, so m is a multiple of pp.
  if (setup.grad_accum < p.pp || setup.grad_accum % p.pp != 0) {
    throw Error("--grad-accum", "",
                "the interleaved schedule needs a multiple of pp = " + std::to_string(p.pp) +
                    " micro-batches per step (Megatron runs them in groups of pp per model "
                    "chunk), got " +
                    std::to_string(setup.grad_accum));
  }
}

Estimate estimate_distributed(const ModelSpec& model, const TrainingSetup& setup,
                              const GpuSpec& gpu) {
  const ParallelSetup& p = setup.parallel;
  auto in_range = [](int v) { return v >= 1 && v <= 65536; };
  if (!in_range(p.dp) || !in_range(p.tp) || !in_range(p.pp) || p.gpus() > 65536) {
    throw Error("--dp/--tp/--pp", "", "expected degrees of at least 1 and at most 65536 GPUs");
  }
  if (p.method == Method::kSingle) {
    throw Error("--method", "",
                "a layout of " + std::to_string(p.gpus()) +
                    " GPUs needs a method (ddp, zero1, zero2, zero3, fsdp, gemini, megatron, "
                    "colossalai-1d)");
  }
  if (p.pp > 1) {
    if (p.method != Method::kDdp && p.method != Method::kZero1 && p.method != Method::kMegatron &&
        p.method != Method::kColossal1d) {
      throw Error("--pp", "",
                  "pipeline parallelism combines with ddp, zero1, megatron or colossalai-1d, not " +
                      std::string(method_name(p.method)));
    }
    if (p.pp > model.num_layers) {
      throw Error("--pp", "",
                  std::to_string(p.pp) + " stages for " + std::to_string(model.num_layers) +
                      " decoder layers: each stage needs at least one layer");
    }
  }
  bool sharding = p.method == Method::kZero1 || p.method == Method::kZero2 ||
                  p.method == Method::kZero3 || p.method == Method::kFsdp ||
                  p.method == Method::kGemini;
  if ((p.offload_optimizer || p.offload_params) && (!sharding || p.torch_zero)) {
    throw Error("--offload", "",
                "CPU offload is modelled for DeepSpeed ZeRO and FSDP, not " +
                    std::string(method_name(p.method)));
  }
  if (p.offload_params && p.method != Method::kZero3 && p.method != Method::kFsdp &&
      p.method != Method::kGemini) {
    throw Error("--offload", "",
                "parameter offload needs sharded parameters (zero3, fsdp or gemini)");
  }
  if ((p.method == Method::kGemini || p.method == Method::kColossal1d) &&
      setup.finetune != FinetuneMode::kFull) {
    // ColossalAI booster/plugin/gemini_plugin.py: support_lora() returns
    // False and enable_lora raises NotImplementedError (since 14b0d4c7e,
    // April 2024, through 4f9953be3, April 2026; the paper's d4fb7bf has no
    // LoRA API), and Booster.enable_lora asserts support_lora(). Frozen
    // layers and embeddings are modelled (--freeze-layers, --freeze-embeddings).
    bool q = setup.finetune == FinetuneMode::kQlora;
    throw Error(q ? "--quant" : "--lora-rank", "",
                std::string(q ? "QLoRA" : "LoRA") + " with Gemini (--method " +
                    std::string(method_name(p.method)) +
                    "): ColossalAI's GeminiPlugin does not support LoRA (gemini_plugin.py: "
                    "support_lora() is False, enable_lora raises NotImplementedError); use "
                    "ddp, zero1/2/3 or fsdp");
  }
  bool tp_method = p.method == Method::kMegatron || p.method == Method::kColossal1d;
  if (p.tp > 1 && !(tp_method || p.method == Method::kDdp || p.method == Method::kZero1 ||
                    p.method == Method::kZero2)) {
    throw Error("--tp", "",
                std::string("tensor parallelism combines with ddp, zero1, zero2, megatron or "
                            "colossalai-1d, not ") +
                    std::string(method_name(p.method)));
  }
  if (p.method == Method::kFsdp && p.fsdp_version != 1 && p.fsdp_version != 2)
    throw Error("--fsdp-version", "", "expected 1 or 2");
  check_framework_layout(setup);

  Estimate est;
  std::vector<std::string> notes;
  // Each rank's share of the model; without tensor parallelism the model
  // itself (copying it cost a few thousand small allocations per estimate).
  std::optional<ModelSpec> tp_view;
  if (p.tp > 1)
    tp_view = tensor_parallel_view(model, p.tp, p.method != Method::kColossal1d, &notes);
  const ModelSpec& view = tp_view ? *tp_view : model;
  TrainingSetup s = setup;
  trace::RankPlan r;
  int dp = p.dp;
  std::vector<std::vector<char>> owners;
  switch (p.method) {
    case Method::kDdp:
    case Method::kMegatron:
      // Data parallelism over the replicas (or tensor-parallel groups) by DDP.
      r.ddp_buckets = dp > 1;
      r.bucket_view = dp > 1 && p.gradient_as_bucket_view;
      break;
    case Method::kZero1:
    case Method::kZero2:
    case Method::kZero3:
      if (p.method == Method::kZero1 && p.torch_zero) {
        r.ddp_buckets = dp > 1;
        r.bucket_view = dp > 1 && p.gradient_as_bucket_view;
        owners = torch_zero_owners(view, s, dp);
        break;
      }
      // DeepSpeed: 16-bit weights (no autocast) with an fp32 master partition.
      if (half(s.precision)) {
        s.precision = s.precision == Precision::kFp16Mixed || s.precision == Precision::kFp16
                          ? Precision::kFp16
                          : Precision::kBf16;
        r.master_fp32 = true;
      }
      r.state_shards = dp;
      r.fused_optimizer = true;
      if (p.method != Method::kZero1)
        r.grad_shards = dp;
      r.reduce_bucket_bytes = p.reduce_bucket_size * (half(s.precision) ? 2 : 4);
      if (p.method != Method::kZero3) {
        // deepspeed/runtime/zero/stage_1_and_2.py (DeepSpeed 0.9, cc67f22):
        // backward() allocates torch.empty(reduce_bucket_size) in the
        // model's dtype when contiguous_gradients is on, and a second one
        // when overlap_comm is on (double buffering); the reduce epilogue
        // (_release_ipg_buffers) drops them when backward ends. Stage 1
        // takes the same path (at the accumulation boundary it also reduces
        // through the bucket).
        bool overlap = p.overlap_comm == 1;
        r.ipg_buffers_per_backward = p.contiguous_gradients ? (overlap ? 2 : 1) : 0;
        if (r.ipg_buffers_per_backward == 0)
          r.reduce_bucket_bytes = 0;
      }
      if (p.method == Method::kZero3) {
        r.param_shards = dp;
        r.prefetch_layers = 1;
        // deepspeed/runtime/zero/stage3.py (DeepSpeedZeroOptimizer_Stage3
        // __init__): with contiguous_gradients (default on) the ipg bucket is
        // torch.empty(reduce_bucket_size) on the device, whatever the number
        // of trainable elements (a LoRA run gets the whole 5e8-element bucket).
        r.reduce_bucket_whole = p.contiguous_gradients;
      }
      notes.push_back(
          "DeepSpeed: 16-bit weights without autocast, fp32 master and optimizer partitions, "
          "FusedAdam");
      break;
    case Method::kGemini:
    case Method::kColossal1d:
      // ColossalAI GeminiDDP (the paper's "advanced DP"), placement "cuda":
      // fp16 parameters in chunks sharded over the replicas and gathered for
      // use, gradients reduced into the fp16 chunks (reuse_fp16_chunk), fp32
      // master chunks and HybridAdam states of this rank's shard, no autocast.
      // Chunks as GeminiDDP lays them out (trace/gemini_chunks.h: the chunk
      // size search of chunk/search_utils.py with GeminiDDP's defaults, which
      // the paper's scripts keep; tensors appended in module order).
      s.precision = s.precision == Precision::kBf16Mixed || s.precision == Precision::kBf16
                        ? Precision::kBf16
                        : Precision::kFp16;
      r = trace::gemini_rank(dp);
      // With 1D tensor parallelism the paper's DP+TP: Gemini over the dp
      // replicas of each tensor-parallel shard.
      notes.push_back(
          "Gemini: fp16 chunks (GeminiDDP's chunk-size search: search_range_mb 32, "
          "min_chunk_size_mb 32, step 1024 elements) sharded over dp and kept gathered from "
          "the first use of one of their tensors in the forward pass until their gradients are "
          "reduced, gradients in the fp16 chunks, fp32 master chunk shards and HybridAdam states "
          "of the tensors inside this rank's shard on the GPU");
      break;
    case Method::kFsdp: {
      int shards =
          p.fsdp_sharding == FsdpSharding::kHybridShard ? std::min(dp, p.gpus_per_node) : dp;
      if (p.fsdp_sharding == FsdpSharding::kNoShard)
        shards = 1;
      r.state_shards = shards;
      r.grad_shards = shards;
      r.param_shards = shards;
      r.prefetch_layers = 1;  // BACKWARD_PRE: the next unit is gathered early
      r.reshard_after_forward = p.fsdp_sharding != FsdpSharding::kShardGradOp;
      if (shards == 1)
        r.ddp_buckets = false;
      r.per_param_shards = p.fsdp_version == 2;
      r.flat_param_grads = p.fsdp_version == 1 && shards > 1;
      notes.push_back(std::string(p.fsdp_version == 2
                                      ? "FSDP2: per-parameter dim-0 shards (padded), "
                                      : "FSDP1: flat parameters, ") +
                      "one unit per decoder layer plus the root (embeddings, norm, head)");
      if (s.framework == Framework::kLitgpt) {
        // litgpt/finetune/full.py and lora.py (26857050f) with devices > 1:
        // FSDPStrategy(auto_wrap_policy={Block}, activation_checkpointing_policy={Block},
        // limit_all_gathers=True, cpu_offload=False); Lightning Fabric
        // (src/lightning/fabric/strategies/fsdp.py, 7f0c3436cd) wraps with FSDP1
        // and checkpoints each Block (checkpoint_wrapper, non-reentrant), and its
        // no_backward_sync is FSDP's no_sync() on every accumulating micro-batch.
        s.checkpointing = CheckpointMode::kNonReentrant;
        r.no_sync_accum = true;
        notes.push_back(
            "LitGPT Fabric FSDP: every Block checkpointed; accumulating micro-batches run under "
            "no_sync() and keep unsharded gradients");
      } else if (s.framework == Framework::kTorchtune && p.fsdp_version == 2) {
        notes.push_back(
            "torchtune shard_model: fully_shard per TransformerSelfAttentionLayer, the root kept "
            "gathered (reshard_after_forward=False)");
      }
      r.embedding_units = p.embedding_units && shards > 1;
      if (r.embedding_units) {
        notes.push_back(
            "custom_sharded_layers: the embedding and the output head are units of their own, "
            "gathered around their forward and backward");
      }
      break;
    }
    default:
      break;
  }
  if (p.method == Method::kFsdp && p.offload_params) {
    // FSDP's CPUOffload moves parameters, gradients and the optimizer together.
    r.offload_params = true;
    r.offload_optimizer = true;
    // FSDP1 copies a unit's host shard to the device to all-gather it
    // (trace::OffloadFetch::kUnitShard); FSDP2's path is not modelled. One
    // shard is NO_SHARD (FSDP switches FULL_SHARD to it on one rank): the
    // device copy is the unit itself, already the gathered buffer.
    if (p.fsdp_version == 1 && r.param_shards > 1)
      r.offload_fetch = trace::OffloadFetch::kUnitShard;
  } else if (sharding) {
    r.offload_params = p.offload_params;
    r.offload_optimizer = p.offload_optimizer || p.offload_params;
    // DeepSpeed ZeRO-3 copies each fetched parameter's host partition to the
    // device next to its full buffer (trace::OffloadFetch::kLargestParam); on
    // one rank from 0.9 on the copy is the parameter (NoGatherHandle).
    if (p.method == Method::kZero3 && p.offload_params && (dp > 1 || p.deepspeed_minor < 9))
      r.offload_fetch = trace::OffloadFetch::kLargestParam;
  }
  if (s.finetune == FinetuneMode::kQlora && r.sharded_params()) {
    // (Gemini with LoRA or QLoRA was refused above: GeminiPlugin has no LoRA.)
    if (s.framework == Framework::kTorchtune) {
      notes.push_back(
          "torchtune sharded QLoRA: NF4 weights (packed 4-bit data, int8 block scalers, "
          "scaler factors) sharded by rows with FSDP2 and all-gathered per layer; LoRA "
          "adapters sharded with their layer");
    } else {
      hf_sharded_qlora(p.method, &s, &notes);
    }
  }
  if (r.offload_optimizer)
    notes.push_back(
        "offload: optimizer states, master weights and reduced gradients in host memory");
  if (r.offload_fetch == trace::OffloadFetch::kUnitShard)
    notes.push_back(
        "offload: each unit's host shard is copied to the GPU for its all-gather (FSDP1 "
        "pre_unshard)");
  else if (r.offload_fetch == trace::OffloadFetch::kLargestParam)
    notes.push_back(
        "offload: each fetched parameter's host partition is copied to the GPU for its "
        "all-gather, the head's weight fetched again at the head (DeepSpeed ZeRO-3)");
  if (tp_method) {
    // Megatron and ColossalAI run their own model code: no Hugging Face
    // DynamicCache during training.
    s.use_cache = UseCache::kOff;
  }
  r.vocab_parallel_ce = p.method == Method::kMegatron && p.tp > 1;
  if (p.sequence_parallel) {
    if (p.method != Method::kMegatron) {
      throw Error("--sequence-parallel", "",
                  "sequence parallelism is Megatron's (--method megatron), got " +
                      std::string(method_name(p.method)));
    }
    if (p.tp > 1) {
      if (s.seq % p.tp != 0) {
        throw Error("--sequence-parallel", "",
                    "the sequence length " + std::to_string(s.seq) + " must divide by tp " +
                        std::to_string(p.tp));
      }
      if (!sequence_parallel_modelled(model, FinetuneMode::kFull)) {
        throw Error("--sequence-parallel", "",
                    "sequence parallelism is modelled for dense Llama-style decoders (llama, "
                    "mistral, qwen2, qwen3, gemma, gemma2, olmo, phi3, stablelm), not " +
                        model.family);
      }
      if (s.finetune != FinetuneMode::kFull) {
        throw Error("--sequence-parallel", "",
                    "sequence parallelism with LoRA/QLoRA adapters is not modelled");
      }
      r.sequence_parallel = p.tp;
      notes.push_back(
          "sequence parallelism: norms, residuals and dropouts on s/tp tokens; column-parallel "
          "linears gather into one persistent buffer and save the shard");
    }
  }

  // Rank order: tensor-parallel fastest, then data-parallel, then stages.
  struct Role {
    std::string name;
    std::vector<int> ranks;
    trace::RankPlan plan;
  };
  std::vector<Role> roles;
  int64_t layers = model.num_layers;
  int64_t m = setup.grad_accum;  // micro-batches per step, through the pipeline
  bool interleaved = p.schedule == PipelineSchedule::kInterleaved;
  int v = interleaved ? p.virtual_stages : 1;  // model chunks per rank
  // Extra layers go to the first stages, and under 1F1B later stages hold
  // fewer micro-batches: with identical layers a middle stage s >= 2 cannot
  // exceed stage 1, so a peak-only estimate skips it.
  bool skip_middle = setup.peak_only && p.pp > 3 && uniform_layers(model);
  for (int stage = 0; stage < p.pp; ++stage) {
    if (skip_middle && stage >= 2 && stage <= p.pp - 2)
      continue;
    trace::RankPlan sp = r;
    std::string name = "every rank";
    if (p.pp > 1) {
      int64_t base = layers / p.pp;
      int64_t extra = layers % p.pp;
      sp.first_layer = static_cast<int>(stage * base + std::min<int64_t>(stage, extra));
      sp.end_layer = static_cast<int>(sp.first_layer + base + (stage < extra ? 1 : 0));
      sp.first_stage = stage == 0;
      sp.last_stage = stage == p.pp - 1;
      // 1F1B: stage s starts its first backward with pp - s forwards in
      // flight; GPipe runs every forward first.
      sp.in_flight = static_cast<int>(
          p.schedule == PipelineSchedule::kGpipe ? m : std::min<int64_t>(p.pp - stage, m));
      name = "stage " + std::to_string(stage) + " (layers " + std::to_string(sp.first_layer) + "-" +
             std::to_string(sp.end_layer - 1) + ")";
      if (interleaved)
        interleave(stage, p.pp, v, layers, m, &sp, &name);
    }
    int per_stage = p.dp * p.tp;
    sp.comm_bytes = communicator_bytes(p.dp) + communicator_bytes(p.tp);
    if (p.pp > 1) {
      // Interleaved: the last rank sends chunk c's output to rank 0's chunk
      // c + 1, so every rank has two neighbours (one when pp = 2).
      bool end = !interleaved && (stage == 0 || stage == p.pp - 1);
      sp.comm_bytes += communicator_bytes(2) * (end || p.pp == 2 ? 1 : 2);
    }
    if (!owners.empty()) {
      for (int d = 0; d < p.dp; ++d) {
        Role role{name == "every rank" ? "dp rank " + std::to_string(d)
                                       : name + ", dp rank " + std::to_string(d),
                  {},
                  sp};
        role.plan.owns_state = owners[static_cast<size_t>(d)];
        for (int t = 0; t < p.tp; ++t)
          role.ranks.push_back(stage * per_stage + d * p.tp + t);
        roles.push_back(std::move(role));
      }
    } else {
      Role role{name, {}, sp};
      for (int k = 0; k < per_stage; ++k)
        role.ranks.push_back(stage * per_stage + k);
      roles.push_back(std::move(role));
    }
  }
  notes.push_back(
      "NCCL buffers: 544 MB per 2-GPU communicator, 688 MB per larger one (NVIDIA/nccl#964), "
      "in device_bytes");
  if (interleaved) {
    notes.push_back("interleaved 1F1B schedule (Megatron-LM virtual pipeline) over " +
                    std::to_string(m) + " micro-batches (--grad-accum), " + std::to_string(v) +
                    " model chunks of " + std::to_string(layers / (p.pp * v)) +
                    " layers per rank; the peak holds the warm-up's chunk forwards plus one");
  } else if (p.pp > 1) {
    notes.push_back(std::string(p.schedule == PipelineSchedule::kGpipe ? "GPipe" : "1F1B") +
                    " schedule over " + std::to_string(m) +
                    " micro-batches (--grad-accum); a tied head is a copy of its own on the last "
                    "stage");
  }
  size_t worst = 0;
  std::vector<Estimate> each;
  for (size_t k = 0; k < roles.size(); ++k) {
    each.push_back(estimate_rank(view, s, gpu, roles[k].plan));
    if (each.back().peak.device_bytes > each[worst].peak.device_bytes)
      worst = k;
    est.ranks.push_back({roles[k].name, roles[k].ranks, each.back().peak, {}});
  }
  std::vector<RankEstimate> ranks = std::move(est.ranks);
  est = std::move(each[worst]);
  est.ranks = std::move(ranks);
  for (std::string& n : notes)
    est.notes.push_back(std::move(n));
  return est;
}

bool sequence_parallel_modelled(const ModelSpec& model, FinetuneMode finetune) {
  if (finetune != FinetuneMode::kFull || !trace::llama_style(model))
    return false;
  for (const LayerSpec& l : model.layers) {
    if (l.mlp.is_moe() || l.attention.kind != AttentionKind::kStandard)
      return false;
  }
  return true;
}

}  // namespace llmem
