// Copyright 2026 The llmem Authors.
// The training setup: everything about a fine-tuning step except the model.

#ifndef LLMEM_JOB_H_
#define LLMEM_JOB_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "llmem/allocator.h"

namespace llmem {

/// How weights are stored and math is done.
enum class Precision {
  kFp32,       ///< fp32 weights and math
  kFp16Mixed,  ///< fp32 weights, torch.autocast(float16)
  kBf16Mixed,  ///< fp32 weights, torch.autocast(bfloat16)
  kBf16,       ///< model.to(bfloat16): weights, grads and optimizer states in bf16
  kFp16,       ///< model.to(float16)
};

enum class OptimizerKind {
  kAdamW,         ///< torch.optim.AdamW with the device default (foreach on CUDA, for-loop on CPU)
  kAdamWForeach,  ///< foreach=True: whole-list temporaries
  kAdamWFused,    ///< fused=True: no temporaries
  kAdamWForLoop,  ///< foreach=False: one parameter at a time
  kSgd,           ///< plain SGD (no state)
  kSgdMomentum,   ///< SGD with momentum: one buffer per parameter
  kAdafactor,     ///< transformers Adafactor: factored second moments
  kAdamW8bit,     ///< bitsandbytes AdamW8bit: two 1-byte states + block scales
  kPagedAdamW8bit,  ///< bitsandbytes PagedAdamW8bit: states in unified memory
};

/// kSdpa lets PyTorch pick the kernel as it does (llmem/sdpa.h); the
/// kSdpa* values force one backend (torch.nn.attention.sdpa_kernel).
enum class AttentionImpl {
  kEager,
  kSdpa,
  kFlashAttention2,
  kSdpaFlash,
  kSdpaEfficient,
  kSdpaMath,
};

enum class CheckpointMode { kOff, kReentrant, kNonReentrant };

enum class Device { kCuda, kCpu };

enum class FinetuneMode { kFull, kLora, kQlora };

enum class UseCache { kConfig, kOn, kOff };

/// Whose training loop is traced: Hugging Face Transformers + PEFT + Trainer
/// conventions, torchtune recipes, or LitGPT (Lightning Fabric).
enum class Framework { kHf, kTorchtune, kLitgpt };

/// How the training step is spread over GPUs (issue 5). kSingle is one GPU.
enum class Method {
  kSingle,
  kDdp,         ///< torch DistributedDataParallel: replicas + gradient buckets
  kZero1,       ///< DeepSpeed ZeRO stage 1: optimizer states partitioned
  kZero2,       ///< + gradients partitioned (reduce-scatter into partitions)
  kZero3,       ///< + parameters partitioned, gathered per module
  kFsdp,        ///< torch FSDP (sharding strategy and version in ParallelSetup)
  kGemini,      ///< ColossalAI Gemini (the paper's "advanced DP"): chunked fp16/fp32
  kColossal1d,  ///< ColossalAI 1D tensor parallelism (the paper's TP)
  kMegatron,    ///< Megatron-style tensor parallelism (column/row pairs, vocab-parallel)
};

enum class FsdpSharding { kFullShard, kShardGradOp, kHybridShard, kNoShard };
/// kInterleaved: Megatron's interleaved 1F1B over virtual pipeline stages
/// (forward_backward_pipelining_with_interleaving; ParallelSetup::virtual_stages).
enum class PipelineSchedule { k1F1B, kGpipe, kInterleaved };

/// The layout and the framework knobs that decide per-rank memory. Every
/// default is the framework's own (source named where the field is read).
struct ParallelSetup {
  Method method = Method::kSingle;
  int dp = 1;  ///< data-parallel replicas (or shards)
  int tp = 1;  ///< tensor-parallel degree
  int pp = 1;  ///< pipeline stages
  int gpus_per_node = 8;
  PipelineSchedule schedule = PipelineSchedule::k1F1B;
  /// Model chunks per pipeline rank under the interleaved schedule (Megatron
  /// --num-virtual-stages-per-pipeline-rank); 1 for the other schedules.
  int virtual_stages = 1;
  bool sequence_parallel = false;  ///< Megatron sequence parallelism
  bool offload_optimizer = false;  ///< ZeRO-Offload / FSDP CPU offload / Gemini placement
  bool offload_params = false;
  // torch DDP (torch/nn/parallel/distributed.py)
  double ddp_bucket_mb = 25;
  bool gradient_as_bucket_view = false;
  // DeepSpeed (deepspeed/runtime/zero/config.py)
  int64_t reduce_bucket_size = 500'000'000;
  int64_t allgather_bucket_size = 500'000'000;
  int64_t stage3_prefetch_bucket_size = 50'000'000;
  int64_t stage3_max_live_parameters = 1'000'000'000;
  bool contiguous_gradients = true;
  /// overlap_comm: -1 DeepSpeed's default (on for stage 3, off for 1 and 2:
  /// deepspeed/runtime/zero/config.py overlap_comm_valid); 0 off; 1 on.
  int overlap_comm = -1;
  /// DeepSpeed's minor version (0.N) whose ZeRO-3 fetch to model: before 0.9
  /// one rank still all-gathers into a full buffer next to its host partition
  /// copied to the device (partition_parameters.py all_gather_coalesced, 0.8.1);
  /// from 0.9 on one rank the copy is the parameter itself (NoGatherHandle).
  int deepspeed_minor = 14;
  /// ZeRO-1 by torch's ZeroRedundancyOptimizer over DDP (whole tensors
  /// assigned greedily to ranks) instead of DeepSpeed's flat partitions.
  bool torch_zero = false;
  // torch FSDP
  FsdpSharding fsdp_sharding = FsdpSharding::kFullShard;
  int fsdp_version = 1;  ///< 1: FlatParameter per wrapped module; 2: per-parameter DTensor
  bool limit_all_gathers = true;
  /// torchtune custom_sharded_layers ['tok_embeddings', 'output']: the input
  /// embedding and the (untied) output head are FSDP units of their own,
  /// gathered around their forward and backward and resharded after each,
  /// instead of members of the root unit, which stays gathered all step.
  bool embedding_units = false;
  int gpus() const { return dp * tp * pp; }
};

struct LoraSetup {
  int64_t rank = 8;
  double alpha = 16;
  double dropout = 0.0;
  /// Hugging Face module names ("q_proj", "v_proj", "c_attn", ...); empty = PEFT's default for the
  /// family.
  std::vector<std::string> targets;
  /// PEFT autocast_adapter_dtype (default): adapters in fp32 over fp16/bf16
  /// weights; false keeps the base weights' dtype.
  bool adapter_fp32 = true;
};

/// bitsandbytes 4-bit quantization of the base weights (QLoRA).
struct QuantSetup {
  bool nf4 = true;            ///< NF4 (else FP4); the same storage either way
  bool double_quant = true;   ///< bnb_4bit_use_double_quant
  int64_t block = 64;         ///< quantization block size (elements per absmax)
  bool prepare_kbit = true;   ///< peft prepare_model_for_kbit_training: other params to fp32
  bool compute_fp32 = false;  ///< bnb_4bit_compute_dtype float32 (default: bf16/fp16, 2 bytes)
  /// The weights were quantized from fp16 copies (Lightning Fabric's
  /// BitsandbytesPrecision: weight.to(torch.half) before quantize_4bit), so
  /// the QuantState dtype is fp16 and dequantize_4bit returns fp16; with a
  /// bf16 or fp32 compute dtype MatMul4Bit's .to(A.dtype) makes a second
  /// temporary of the weight's size. Set by the LitGPT profile.
  bool fp16_quant_state = false;
};

/// What a framework profile changes in the step (set from --framework and
/// --recipe; trace/framework.cc names the framework code behind each field).
/// The defaults are the Hugging Face Trainer's.
struct FrameworkSetup {
  /// torchtune TransformerDecoder.num_output_chunks (CEWithChunkedOutputLoss):
  /// the LM head runs on this many slices of the sequence; 0 = one call.
  int64_t output_chunks = 0;
  /// LitGPT lm_head_chunk_size: the LM head runs on slices of this many
  /// tokens and the loss is computed per slice (chunked_cross_entropy); 0 = off.
  int64_t lm_head_chunk_tokens = 0;
  /// The loss upcasts logits to fp32 (torchtune, HF); LitGPT's
  /// chunked_cross_entropy runs in the logits' dtype.
  bool loss_fp32 = true;
  /// torchtune optimizer_in_bwd: each parameter is stepped, and its gradient
  /// freed, by a post-accumulate-grad hook inside backward.
  bool optimizer_in_bwd = false;
  /// torchtune enable_activation_offloading: tensors saved in forward go to
  /// the CPU (needs activation checkpointing).
  bool activation_offload = false;
  /// bitsandbytes paged optimizer (PagedAdamW): states in CUDA managed
  /// memory, outside PyTorch's allocator and its counters.
  bool paged_optimizer = false;
  /// Elements per fp32 absmax of bitsandbytes' blockwise 8-bit optimizer
  /// states: 2048 up to 0.43.3, 256 from 0.44.0 (2024-09-23, PR #1365;
  /// optim/optimizer.py Optimizer2State.init_state). LitGPT pins
  /// bitsandbytes==0.42.0 (pyproject.toml, 2024-09).
  int64_t bnb_block = 256;
  /// bitsandbytes before 0.43.2 (PR #1270, 2024-07-16): MatMul4Bit.forward
  /// keeps ctx.tensors = (A, B) whenever the input needs a gradient, a Python
  /// attribute of the graph node rather than a saved variable, so each 4-bit
  /// linear's input lives as long as the graph (and escapes non-reentrant
  /// checkpointing's hooks); 0.43.2 keeps only B.
  bool bnb_matmul_keeps_input = false;
  /// The training loop keeps the previous step's logits bound to a Python
  /// name until the next forward returns (LitGPT; torchtune before `del logits`).
  bool logits_outlive_step = false;
  /// Lightning Fabric's _FabricModule.forward returns
  /// precision.convert_output(output): every floating output is cast to
  /// torch.get_default_dtype() (fp32) after the forward, so the LM head's
  /// half-precision logits (each chunk of the list) get fp32 copies, and the
  /// loss, its saved log-softmax and the logits' gradients are fp32 (LitGPT).
  bool logits_to_fp32 = false;
  /// The LM head's chunks get the model's final logit soft-capping (Gemma-2):
  /// LitGPT's GPT.forward caps each chunk since litgpt PR #1891 (2024-12-31);
  /// before it the chunked path returned the head's output uncapped. Off for
  /// measurements taken with earlier LitGPT.
  bool chunked_logit_softcap = true;
  /// Early torchtune recipes shift with logits[..., :-1, :].contiguous():
  /// one more fp32 copy of the logits.
  bool logits_shift_copy = false;
  /// LitGPT QLoRA since litgpt PR #1770 (2024-10-04): wte is replaced by a
  /// bitsandbytes StableEmbedding after the optimizer is built. Off for
  /// measurements taken with earlier LitGPT.
  bool stable_embedding = true;
  /// The model passes an explicit attn_mask tensor to SDPA instead of
  /// is_causal=True (lit-gpt between PR #51 and PR #171, May-June 2023; HF
  /// with a padded 4-D mask). It decides PyTorch's SDPA kernel.
  bool sdpa_attn_mask = false;
  /// lit-gpt before PR #667 (2023-10-24) expanded K/V only when
  /// n_query_groups != 1, so multi-query models (Falcon-7B) reached SDPA with
  /// one K/V head: the fused kernels need equal head counts, PyTorch runs math.
  bool mqa_kv_unexpanded = false;
  /// torchao 0.1 and the nightlies torchtune pinned before it (5cbc1967b:
  /// torchao-nightly 2024.3.25; 0217d44c2: torchao 0.1): to_nf4 compares the
  /// whole weight with the 16 NF4 values at once (chunking came with ao PR
  /// #196), NF4Tensor keeps an n/32-byte quantization_factor (dropped by ao PR
  /// #298), and torchtune's loader ran the state_dict hook before replacing
  /// each weight with its own inplace_copy (docs/frameworks.md, "Loading").
  bool nf4_legacy = false;
  /// torchtune dataset.packed: every batch is max_seq_len tokens of packed
  /// samples under a block-causal mask: a BlockMask for compiled
  /// flex_attention on GPUs of sm75 and newer, else a dense bool [b, s, s]
  /// passed to SDPA (torchtune/modules/attention_utils.py at 1814feb).
  bool packed = false;
  /// torchtune compile=True sets both: training.compile_model compiles every
  /// TransformerSelfAttentionLayer on its own (per-layer torch.compile) and
  /// training.compile_loss the loss (torchtune/training/_compile.py at
  /// 1814feb). Inductor's partitioner then decides what each layer saves
  /// for backward (docs/frameworks.md, "torch.compile"). Recipes since 2025
  /// may set them apart (compile: {model: ..., loss: ...}); torchtune
  /// 0217d44c2 (2024-04) compiled the whole model (utils.wrap_compile) and
  /// ran the loss eagerly.
  bool compile = false;
  bool compile_loss = false;
  /// Hugging Face Trainer use_liger_kernel=True (TRL SFTConfig the same):
  /// Liger's kernels patched into the model (liger_kernel v0.6.4
  /// monkey_patch.py, with each model type's defaults): RMSNorm, RoPE,
  /// SwiGLU/GeGLU and the fused linear cross-entropy, which never
  /// materializes the logits (docs/frameworks.md, "Liger").
  bool liger = false;
  /// Liger's module classes are in the model. Its 2024 examples called
  /// apply_liger_kernel_to_*() after from_pretrained: the patch replaces the
  /// classes in the modeling module, so the instances already built keep the
  /// eager RMSNorm and MLP, while RoPE (a module function) and lce_forward
  /// (a method) take effect. false models that.
  bool liger_modules = true;
  /// Liger 0.1's fused linear cross-entropy (2024-08): a shifted contiguous
  /// copy of the hidden states, grad_linear always allocated, and each chunk
  /// upcast, cast back and scaled (docs/frameworks.md, "Liger").
  bool liger_flce_2024 = false;
};

struct TrainingSetup {
  int64_t batch = 1;       ///< micro-batch per GPU
  int64_t seq = 512;       ///< tokens per sample (padded length)
  int64_t grad_accum = 1;  ///< micro-batches per optimizer step
  Precision precision = Precision::kBf16Mixed;
  OptimizerKind optimizer = OptimizerKind::kAdamW;
  AttentionImpl attention = AttentionImpl::kEager;
  CheckpointMode checkpointing = CheckpointMode::kOff;
  FinetuneMode finetune = FinetuneMode::kFull;
  LoraSetup lora;
  QuantSetup quant;
  int64_t freeze_layers = 0;       ///< full fine-tuning: the first N decoder layers are frozen
  bool freeze_embeddings = false;  ///< full fine-tuning: token/position embeddings frozen
  double dropout = -1;             ///< < 0: the config's dropouts; otherwise overrides all of them
  /// HF use_cache during training: a DynamicCache copies K/V and keeps them
  /// until the loss is computed (kConfig: the config's use_cache, default true).
  UseCache use_cache = UseCache::kConfig;
  Device device = Device::kCuda;
  Framework framework = Framework::kHf;
  FrameworkSetup fw;
  ParallelSetup parallel;
  AllocatorOptions allocator;
  /// PyTorch version as major * 100 + minor (e.g. 204 for 2.4); decides
  /// version-specific behaviour such as the foreach AdamW temporaries.
  int torch_version = 204;
  /// transformers version as major * 100 + minor (the hf profile follows
  /// v4.57's modeling code; older versions differ where noted in docs/cli.md).
  int transformers_version = 457;
  uint64_t workspace_bytes = 0;  ///< cuBLAS workspace of the GPU (set from the GPU catalog)
  /// GPU compute capability * 10 (80 = A100), set from the GPU catalog;
  /// 0 = unknown. Decides the SDPA kernel PyTorch picks.
  int gpu_sm = 0;
  /// PEFT's enable_input_require_grads hook without checkpointing (set internally).
  bool lora_input_grads = false;
  /// Only the peak matters (the planner): a pipeline stage simulates at most
  /// two groups of in-flight micro-batches (from the second group on each
  /// starts from the same state), and middle stages that cannot exceed stage 1
  /// (no more layers, no more micro-batches in flight, identical layers) are
  /// not simulated, so Estimate::ranks lists only the roles that can be worst.
  /// No timeline is kept, and `fits` comes from the unlimited replay alone
  /// (no second replay against the capacity with cache release).
  bool peak_only = false;
};

/// Parsers for option values; each throws llmem::Error naming `option` and the accepted values.
Precision parse_precision(std::string_view text, const std::string& option);
OptimizerKind parse_optimizer(std::string_view text, const std::string& option);
AttentionImpl parse_attention(std::string_view text, const std::string& option);
CheckpointMode parse_checkpointing(std::string_view text, const std::string& option);
std::string_view precision_name(Precision p);
std::string_view optimizer_name(OptimizerKind o);
std::string_view attention_name(AttentionImpl a);
Framework parse_framework(std::string_view text, const std::string& option);
std::string_view framework_name(Framework f);
/// The framework's own defaults: precision, LoRA adapter dtype, chunked
/// loss, quantization details (trace/framework.cc cites each source).
void apply_framework_defaults(Framework f, TrainingSetup* setup);
Method parse_method(std::string_view text, const std::string& option);
std::string_view method_name(Method m);

}  // namespace llmem

#endif  // LLMEM_JOB_H_
