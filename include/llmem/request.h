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
  /// that matter for memory but are not modelled). The CLI prints them on
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
///   lora_dtype (fp32|base), framework (hf|torchtune|litgpt) (strings);
///   grad_ckpt, no_double_quant, no_prepare_kbit, freeze_embeddings,
///   expandable_segments (booleans); lora_rank, quant_block, freeze_layers,
///   chunk_elems (integers); lora_alpha, lora_dropout, dropout,
///   max_split_size_mb, gpu_mem (numbers); lora_targets (list of module names,
///   or one comma-separated string); gpu (a catalog name).
/// - lora: a PEFT LoraConfig as a dict (r, lora_alpha, lora_dropout,
///   target_modules as a list of names or a regular expression matched
///   against full module names, "all-linear"); other LoraConfig fields are
///   accepted when they leave memory unchanged. Not together with lora_*.
/// - the distributed layout of ParallelSetup: method (parse_method), dp, tp,
///   pp, gpus_per_node, schedule (1f1b|gpipe), sequence_parallel, offload
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

}  // namespace llmem

#endif  // LLMEM_REQUEST_H_
