// Copyright 2026 The llmem Authors.
// The training-step program: what Hugging Face modeling code, PEFT and the
// Trainer do in one step, op by op, expressed on the symbolic Graph.

#ifndef LLMEM_SRC_TRACE_PROGRAM_H_
#define LLMEM_SRC_TRACE_PROGRAM_H_

#include <string>
#include <vector>

#include "llmem/job.h"
#include "llmem/model.h"

#include "trace/gemini_chunks.h"
#include "trace/graph.h"

namespace llmem::trace {

/// Liger (liger_kernel v0.6.4 MODEL_TYPE_TO_APPLY_LIGER_FN) has kernels for
/// this model's type, and the trace models them (TrainingSetup::fw.liger).
bool liger_patches(const ModelSpec& m);

struct TraceResult {
  std::vector<Event> events;
  int64_t params = 0;
  int64_t trainable_params = 0;
  std::vector<std::string> notes;
  /// The attention kernel traced and why (empty for eager attention).
  std::string attention_kernel;
};

/// How offloaded parameter shards reach the device to be all-gathered.
enum class OffloadFetch {
  kOff,
  /// FSDP1 (torch/distributed/fsdp/_flat_param.py, FlatParamHandle.pre_unshard
  /// and unshard, torch 2.1 to 2.5): the unit's host shard is copied to the
  /// device (flat_param_to(device), or _local_shard.to(device) copied into the
  /// low-precision _mp_shard under parameter mixed precision) before the
  /// padded unsharded buffer is allocated; that device shard is the
  /// all-gather's input and dies once the unsharded view replaces it.
  kUnitShard,
  /// DeepSpeed ZeRO-3 (deepspeed/runtime/zero/partition_parameters.py,
  /// all_gather_coalesced, 0.8.1 to 0.16): each fetched parameter's host
  /// partition is copied to the device (ds_tensor.to(device)) next to its full
  /// buffer for the all-gather call; parameters are fetched one module at a
  /// time, so the largest one of a unit sets the transient. On one rank only
  /// before 0.9 (from 0.9 NoGatherHandle makes the copy the parameter).
  kLargestParam,
};

/// What one rank of a distributed layout holds and does differently from a
/// single GPU (set by the distributed planner in src/estimate/distributed.cc).
struct RankPlan {
  int param_shards = 1;  ///< ZeRO-3 / FSDP: parameters stored 1/n, gathered per layer
  int grad_shards = 1;   ///< ZeRO-2/3 / FSDP: gradients reduced into 1/n shards in backward
  int state_shards = 1;  ///< ZeRO-1+ / FSDP: optimizer states (and master weights) 1/n
  /// torch ZeroRedundancyOptimizer: which trainable tensors (in parameter
  /// order) this rank owns the optimizer state of; empty = every one / state_shards.
  std::vector<char> owns_state;
  bool ddp_buckets = false;  ///< DDP reducer: flat gradient buckets of every trainable tensor
  bool bucket_view = false;  ///< gradient_as_bucket_view: grads live in the buckets
  bool master_fp32 = false;  ///< DeepSpeed with 16-bit weights: fp32 master partition
  int64_t reduce_bucket_bytes = 0;  ///< DeepSpeed ZeRO-2/3 gradient bucket (ipg buffer)
  /// ZeRO-3 allocates the whole bucket when the optimizer is built, however
  /// few the trainable elements (else: at most their size).
  bool reduce_bucket_whole = false;
  /// DeepSpeed ZeRO-1/2 with contiguous_gradients: backward() allocates this
  /// many whole reduce_bucket_bytes buffers (two with overlap_comm) and the
  /// reduce epilogue frees them (stage_1_and_2.py); 0: the bucket is a setup buffer.
  int ipg_buffers_per_backward = 0;
  bool fused_optimizer = false;       ///< DeepSpeed FusedAdam: no per-parameter temporaries
  int prefetch_layers = 0;            ///< layers gathered ahead in backward (FSDP BACKWARD_PRE)
  bool reshard_after_forward = true;  ///< false: SHARD_GRAD_OP keeps gathered params to backward
  /// FSDP2 (fully_shard): every parameter is its own DTensor sharded on dim 0,
  /// padded to a multiple of the shard count (not one flat unit padded once);
  /// all-gathers go through a flat output buffer copied out into per-parameter
  /// tensors, reduce-scatters through a flat input buffer (torch
  /// distributed/fsdp/_fully_shard/_fsdp_collectives.py).
  bool per_param_shards = false;
  /// ParallelSetup::embedding_units under FSDP: the embedding and the head
  /// are units of their own (resharded after forward).
  bool embedding_units = false;
  /// FSDP1 no_sync() during gradient accumulation (Lightning Fabric's
  /// no_backward_sync, used by LitGPT): micro-batches before a step's last
  /// keep every unit's unsharded gradient; only the last one reduce-scatters.
  bool no_sync_accum = false;
  /// FSDP1: a unit's parameters are views split from its FlatParameter, so
  /// autograd's SplitBackward cats their gradients into one unit-sized
  /// tensor when the unit's backward ends; it becomes (or is added into) the
  /// unsharded flat gradient that is reduce-scattered
  /// (torch/distributed/fsdp/_flat_param.py, _use_unsharded_views).
  bool flat_param_grads = false;
  /// ZeRO-Offload / FSDP CPU offload: optimizer states, master weights and
  /// reduced gradient shards live in host memory; the step runs on the CPU.
  bool offload_optimizer = false;
  bool offload_params = false;  ///< ZeRO-3 / FSDP: parameter shards in host memory
  OffloadFetch offload_fetch = OffloadFetch::kOff;  ///< with offload_params
  // Pipeline stage: decoder layers [first_layer, end_layer); the first stage
  // embeds, the last one holds the final norm, the head and the loss.
  int first_layer = 0;
  int end_layer = -1;  ///< -1: every layer
  bool first_stage = true;
  bool last_stage = true;
  int in_flight = 1;  ///< micro-batches whose activations the stage holds at once
  /// Interleaved 1F1B (Megatron virtual pipeline stages): the first decoder
  /// layer of each of this rank's model chunks, each `chunk_layers` long
  /// (empty: one chunk [first_layer, end_layer)). The rank's embedding runs
  /// in chunk 0 when first_stage, its head and loss after the last chunk when
  /// last_stage.
  std::vector<int> chunk_begin;
  int chunk_layers = 0;
  /// With chunks: the chunk of each of the `in_flight` forwards held at once,
  /// in the order they run.
  std::vector<int> flight_chunks;
  bool vocab_parallel_ce = false;  ///< Megatron's in-place vocabulary-parallel cross-entropy
  /// Megatron sequence parallelism over this many tensor-parallel ranks (1:
  /// off): norms, residuals and dropouts hold s/tp tokens; column-parallel
  /// linears gather their input into a persistent buffer and save the shard;
  /// row-parallel linears and the embedding reduce-scatter their output.
  int sequence_parallel = 1;
  /// ColossalAI Gemini: reduced gradients are written into the 16-bit
  /// parameter chunks (no gradient buffers of their own), and the optimizer
  /// steps on those fp16 slices directly (no fp32 gradient copy).
  bool grads_in_param_chunks = false;
  /// ColossalAI Gemini: a gathered chunk replaces its shard (Chunk.__gather
  /// frees cuda_shard; Chunk.reduce allocates a new one before freeing the
  /// gathered chunk).
  bool gather_frees_shard = false;
  /// ColossalAI Gemini: parameters live in chunks laid out by the chunk-size
  /// search (trace/gemini_chunks.h), not one unit per decoder layer: a chunk
  /// is gathered when the first of its tensors is used and released once all
  /// of its tensors have their gradients; shards, fp32 masters and padding
  /// are per chunk, Adam states per tensor inside this rank's shard.
  bool gemini_chunks = false;
  GeminiChunkConfig gemini;
  /// NCCL communicator buffers of this rank (cudaMalloc'd by NCCL, outside
  /// the caching allocator; counted in device_bytes only).
  uint64_t comm_bytes = 0;
  /// Parameters live as flat shards gathered per unit: sharded over ranks, or
  /// offloaded to host memory (ZeRO-3 / FSDP on one GPU still partitions and
  /// offloads them).
  bool sharded_params() const { return param_shards > 1 || offload_params; }
  bool distributed() const {
    return param_shards > 1 || grad_shards > 1 || state_shards > 1 || !owns_state.empty() ||
           ddp_buckets || offload_optimizer || grads_in_param_chunks || master_fp32 ||
           reduce_bucket_bytes > 0;
  }
};

/// Builds the events of: parameter setup, a first iteration and a
/// steady-state iteration (each: grad_accum micro-batches of forward, loss and
/// backward, then the optimizer step and zero_grad(set_to_none=True)).
/// A ColossalAI Gemini rank (placement "cuda") over `dp` replicas: fp16
/// chunks sharded over them, gathered at first use in forward and kept until
/// their gradients are reduced into them, fp32 master and HybridAdam states of
/// this rank's shard (estimate/distributed.cc and docs/distributed.md).
RankPlan gemini_rank(int dp);

TraceResult build_trace(const ModelSpec& model, const TrainingSetup& setup,
                        const RankPlan& rank = {});
/// The same into `out`, reusing its events' storage (estimates run back to
/// back, as a plan does, then allocate nothing new for the events).
void build_trace(const ModelSpec& model, const TrainingSetup& setup, const RankPlan& rank,
                 TraceResult* out);

/// Whether the trace runs `m` through Hugging Face's Llama-style decoder code
/// (pre-norm, rotary, q/k/v/o and gate/up/down projections).
bool llama_style(const ModelSpec& m);

/// Megatron's row-parallel linears (input dimension split, output all-reduced
/// or reduce-scattered), by the tensor name ("...o_proj.weight"); every other
/// decoder-layer linear is column-parallel.
bool row_parallel(const std::string& tensor_name);

}  // namespace llmem::trace

#endif  // LLMEM_SRC_TRACE_PROGRAM_H_
