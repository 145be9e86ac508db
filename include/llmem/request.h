// Copyright 2026 The llmem Authors.
// Requests: the one place where option names become a model, a training
// setup and a GPU.
//
// A request is a JSON object whose keys are the CLI's long option names with
// '-' replaced by '_' ({"model": "facebook/opt-1.3b", "batch": 4, "seq": 512}).
// The CLI turns its options into such an object, the Python package turns its
// keyword arguments into one, and the web API receives one; all three then go
// through parse_request, so a key means the same thing everywhere.

#ifndef LLMEM_REQUEST_H_
#define LLMEM_REQUEST_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "llmem/gpu.h"
#include "llmem/job.h"
#include "llmem/model.h"
#include "llmem/plan.h"

namespace llmem {

/// How errors name a key.
enum class KeyStyle {
  /// Error(source, "batch", message): "request: key 'batch': expected ...".
  kJson,
  /// Error("--batch", "", message): "--batch: expected ..." (the CLI's options).
  kCli,
};

struct RequestOptions {
  KeyStyle style = KeyStyle::kJson;
  /// Names the request in kJson messages.
  std::string source = "request";
};

/// Which estimate to compute (the CLI's --estimator).
enum class EstimatorKind {
  kLlmem,  ///< the simulation
  kPaper,  ///< the LLMem paper's equations (1)-(5)
  kBoth,   ///< both, side by side
};

/// A parsed request.
struct Request {
  ModelSpec model;
  TrainingSetup setup;
  GpuSpec gpu;
  EstimatorKind estimator = EstimatorKind::kLlmem;
  int64_t chunk_elems = 0;  ///< paper estimator: Gemini chunk size (0: largest tensor)
  RequestOptions options;   ///< how later errors (from estimate()) name keys
  /// Things the user should know that are not errors (DeepSpeed config keys
  /// that matter for memory but are not modelled, LoraConfig fields llmem
  /// does not know left at their default). The CLI prints them on
  /// stderr; the Python package issues them as warnings.
  std::vector<std::string> warnings;
};

/// Parses a request. Keys (absent or null: the default):
///
/// - model: a catalog name or a path (load_model), or an object: a Hugging
///   Face config (`config.to_dict()`), read as a config.json named "model".
/// - batch, seq, grad_accum (integers); precision, optimizer, attention,
///   ckpt_mode, device (cuda|cpu), torch_version ("2.4"), estimator
///   (llmem|paper|both), quant (nf4|fp4), quant_compute (bf16|fp16|fp32),
///   lora_dtype (fp32|base), framework (hf|torchtune|litgpt), recipe (a
///   torchtune or LitGPT YAML path, read_recipe_file: applied with the
///   framework's defaults before every other key, its warnings go to
///   Request::warnings) (strings); optimizer_in_bwd, activation_offload,
///   paged_optimizer, packed, compile (booleans); output_chunks, lm_head_chunk (integers);
///   grad_ckpt, no_double_quant, no_prepare_kbit, freeze_embeddings,
///   expandable_segments (booleans); lora_rank, quant_block, freeze_layers,
///   chunk_elems (integers); lora_alpha, lora_dropout, dropout,
///   max_split_size_mb, gpu_mem (numbers); lora_targets (list of module names,
///   or one comma-separated string); gpu (a catalog name).
/// - lora: a PEFT LoraConfig as a dict (r, lora_alpha, lora_dropout,
///   target_modules as a list of names or a regular expression matched
///   against full module names, "all-linear"); other LoraConfig fields are
///   accepted when they leave memory unchanged; a field llmem does not know is
///   an error unless its value is a default (null, false, "none", empty), then
///   a warning. Not together with lora_*.
/// - the distributed layout of ParallelSetup: method (parse_method), dp, tp,
///   pp, gpus_per_node, schedule (1f1b|gpipe|interleaved), virtual_stages
///   (model chunks per rank, interleaved only), sequence_parallel, offload
///   (a list of optimizer|params, or one comma-separated string, as the CLI's
///   --offload), offload_optimizer, offload_params, ddp_bucket_mb,
///   gradient_as_bucket_view, reduce_bucket_size, allgather_bucket_size,
///   stage3_prefetch_bucket_size, stage3_max_live_parameters,
///   contiguous_gradients, zero_impl (deepspeed|torch), fsdp_sharding
///   (full-shard|shard-grad-op|hybrid-shard|no-shard; '_' and upper case
///   accepted), fsdp_version (1|2), limit_all_gathers.
/// - deepspeed_config: a path to a DeepSpeed JSON config, or the config as an
///   object; applied last (apply_deepspeed_config: it overrides method and
///   the ZeRO knobs), its warnings go to Request::warnings.
/// - fsdp_config: a path to an accelerate FSDP config (YAML), or the config
///   as an object; applied after deepspeed_config (apply_fsdp_config: it
///   overrides method, dp and the FSDP knobs), its warnings go to
///   Request::warnings.
///
/// Throws llmem::Error naming the key and what was expected: malformed JSON,
/// a wrong type, a value out of range, an unknown key (with a suggestion), an
/// unknown model or GPU. Errors inside a model file name that file.
Request parse_request(std::string_view json_text, const RequestOptions& options = {});

/// Resolves the value of the "model" key alone (a JSON string or object, as
/// text), as parse_request does.
ModelSpec load_model_json(std::string_view json_value, const RequestOptions& options = {});

/// Runs the request and renders the CLI's `estimate --format json` document
/// (estimate_json, or paper_json for the paper estimator). Errors raised
/// while simulating name keys in the request's style.
std::string estimate_request_json(const Request& request);

/// One value of a request built in C++ (the CLI's parsed options).
using RequestValue = std::variant<bool, int64_t, double, std::string, std::vector<std::string>>;
/// The JSON object text of `fields` (in order; keys as given).
std::string request_json(const std::vector<std::pair<std::string, RequestValue>>& fields);

/// Every top-level key parse_request accepts, in documentation order.
const std::vector<std::string>& request_keys();

/// A plan question (`llmem plan`, `llmem.plan()`, POST /api/plan): keys are
/// the plan command's long options with '_' for '-' (model, gpus, gpu,
/// gpu_mem, nodes, seq, global_batch, dataset_tokens, methods, allow, margin
/// (percent), top, max_seq, min_gpus, paper, paper_literal, framework
/// (hf|colossalai), precision, optimizer, attention, lora_rank,
/// max_micro_batch, max_pp, efficiency).
struct PlanQuery {
  ModelSpec model;
  GpuSpec gpu;
  PlanRequest request;
  bool max_seq = false;   ///< answer the longest sequence that fits
  bool min_gpus = false;  ///< answer the fewest GPUs that fit
  bool paper = false;     ///< also the paper's Algorithm 1
  bool paper_literal = false;
  int top = 10;  ///< candidates shown (0: all)
  RequestOptions options;
  /// What the recipe sets that llmem does not model (as Request::warnings).
  std::vector<std::string> warnings;
};
PlanQuery parse_plan_request(std::string_view json_text, const RequestOptions& options = {});

struct PlanAnswer {
  std::string json;   ///< plan_json
  std::string table;  ///< plan_table
  bool fits = false;  ///< something fits (exit code 0, else 1)
};
/// Runs the query; throws llmem::Error naming keys in the query's style.
PlanAnswer run_plan_request(const PlanQuery& query);
const std::vector<std::string>& plan_request_keys();

}  // namespace llmem

#endif  // LLMEM_REQUEST_H_
