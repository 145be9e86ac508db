// Copyright 2026 The llmem Authors.

#include "cli.h"

#include <deque>
#include <fstream>
#include <ostream>
#include <sstream>
#include <string>

#include <CLI/CLI.hpp>

#include "llmem/error.h"
#include "llmem/estimate.h"
#include "llmem/gpu.h"
#include "llmem/model.h"
#include "llmem/report.h"
#include "llmem/request.h"
#include "llmem/validate.h"

#include "plan_cmd.h"
#include "request_flags.h"
#include "serve.h"

namespace llmem::cli {
namespace {

struct InspectOptions {
  std::string model;
  std::string format = "table";
  bool tensors = false;
};

struct EstimateOutput {
  std::string format = "table";
};

struct ValidateOptions {
  std::vector<std::string> files;
  std::string format = "table";
  double max_median = -1;
  double max_error = -1;
};

struct ModelsOptions {
  std::string format = "table";
};

int run_inspect(const InspectOptions& o, std::ostream& out, std::ostream& err) {
  ModelSpec spec = load_model(o.model);
  if (o.format == "json") {
    out << inspect_json(spec);
    for (const std::string& w : spec.warnings)
      err << "warning: " << w << "\n";
  } else {
    out << inspect_table(spec, o.tensors);
  }
  return kExitOk;
}

int run_estimate(const RequestFlags& flags, const EstimateOutput& o, std::ostream& out,
                 std::ostream& err) {
  Request r = parse_request(flags.request(), {.style = KeyStyle::kCli});
  for (const std::string& w : r.warnings)
    err << "warning: " << w << "\n";
  if (o.format == "json") {
    out << estimate_request_json(r);
    return kExitOk;
  }
  if (r.estimator != EstimatorKind::kLlmem) {
    PaperEstimate p = paper_estimate(r.model, r.setup, r.gpu, r.chunk_elems);
    Estimate e;
    if (r.estimator == EstimatorKind::kBoth)
      e = estimate(r.model, r.setup, r.gpu);
    out << paper_table(r.model, r.setup, r.gpu, p,
                       r.estimator == EstimatorKind::kBoth ? &e : nullptr);
    return kExitOk;
  }
  Estimate e = estimate(r.model, r.setup, r.gpu);
  if (o.format == "csv") {
    out << estimate_csv(e);
  } else if (o.format == "svg") {
    out << estimate_svg(r.model, r.gpu, e);
  } else if (o.format == "html") {
    out << estimate_html(r.model, r.setup, r.gpu, e);
  } else {
    out << estimate_table(r.model, r.setup, r.gpu, e);
  }
  return kExitOk;
}

int run_validate(const ValidateOptions& o, std::ostream& out) {
  ValidationReport all;
  for (const std::string& f : o.files) {
    std::ifstream in(f, std::ios::binary);
    if (!in)
      throw Error(f, "", "cannot open the file for reading");
    std::ostringstream text;
    text << in.rdbuf();
    ValidationReport r = validate_csv(text.str(), f);
    for (ValidationRow& row : r.rows)
      all.rows.push_back(std::move(row));
  }
  all.summary = summarize(all.rows);
  out << (o.format == "json" ? validation_json(all) : validation_table(all));
  const ValidationSummary& s = all.summary;
  if ((o.max_median >= 0 && s.median_abs_pct > o.max_median) ||
      (o.max_error >= 0 && s.max_abs_pct > o.max_error)) {
    return kExitDoesNotFit;
  }
  return kExitOk;
}

int run_models(const ModelsOptions& o, std::ostream& out) {
  out << (o.format == "json" ? models_json() : models_table());
  return kExitOk;
}

int run_architectures(std::ostream& out) {
  for (const ArchitectureInfo& a : list_architectures()) {
    out << a.family << "  (model_type";
    for (const std::string& t : a.model_types)
      out << " " << t;
    out << ")  defaults: " << a.defaults_source << "\n";
  }
  return kExitOk;
}

}  // namespace

int run(int argc, const char* const* argv, std::ostream& out, std::ostream& err) {
  CLI::App app{"llmem: predict the peak GPU memory of fine-tuning a transformer LLM"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "llmem 0.1.0");

  InspectOptions inspect;
  CLI::App* inspect_cmd =
      app.add_subcommand("inspect", "Show a model's normalized description and tensor inventory");
  inspect_cmd
      ->add_option("--model,-m", inspect.model,
                   "Catalog name (facebook/opt-1.3b), config.json, or checkpoint directory")
      ->required();
  inspect_cmd->add_option("--format", inspect.format, "table or json")
      ->check(CLI::IsMember({"table", "json"}));
  inspect_cmd->add_flag("--tensors", inspect.tensors, "List every tensor (table format)");

  CLI::App* est_cmd = app.add_subcommand(
      "estimate",
      "Peak memory of one fine-tuning step (simulated op by op and through the allocator)");
  RequestFlags est(est_cmd);
  est.option<std::string>("--model,-m", "Catalog name, config.json or checkpoint directory")
      ->required();
  est.option<std::string>("--gpu", "GPU name (A100-80GB, H100-80GB, RTX4090, ...)");
  est.option<double>("--gpu-mem", "GPU memory in GiB (instead of --gpu)");
  est.option<std::string>("--device", "cuda, or cpu (exact-size allocations)");
  est.option<int64_t>("--batch,-b", "Micro-batch size per GPU");
  est.option<int64_t>("--seq,-s", "Sequence length in tokens");
  est.option<int64_t>("--grad-accum", "Gradient accumulation steps");
  est.option<std::string>("--precision", "fp32, fp16-mixed, bf16-mixed, bf16, fp16");
  est.option<std::string>("--optimizer",
                          "adamw, adamw-foreach, adamw-fused, adamw-forloop, sgd, sgd-momentum, "
                          "adafactor, adamw-8bit, paged-adamw-8bit");
  est.option<std::string>("--attention",
                          "eager, sdpa (the kernel PyTorch picks), sdpa-flash, sdpa-efficient, "
                          "sdpa-math, flash_attention_2");
  est.flag("--grad-ckpt", "Gradient checkpointing per decoder layer");
  est.option<std::string>("--ckpt-mode", "reentrant or non-reentrant");
  est.option<int64_t>("--lora-rank", "LoRA rank (0: full fine-tuning)");
  est.option<double>("--lora-alpha", "LoRA alpha");
  est.option<double>("--lora-dropout", "LoRA dropout");
  est.option<std::vector<std::string>>("--lora-targets",
                                       "Module names, e.g. q_proj,v_proj, or all-linear")
      ->delimiter(',');
  est.option<double>("--dropout", "Override every dropout probability");
  est.option<std::string>("--quant", "QLoRA: 4-bit base weights, nf4 or fp4");
  est.flag("--no-double-quant", "QLoRA: without bnb_4bit_use_double_quant");
  est.option<int64_t>("--quant-block", "QLoRA: quantization block size");
  est.option<std::string>("--quant-compute", "QLoRA: bnb_4bit_compute_dtype (bf16, fp16 or fp32)");
  est.option<std::string>("--lora-dtype",
                          "Adapter dtype: fp32 (PEFT's autocast_adapter_dtype) or base");
  est.flag("--no-prepare-kbit",
           "QLoRA: skip peft prepare_model_for_kbit_training (keeps other params' dtype)");
  est.option<int64_t>("--freeze-layers", "Full fine-tuning: freeze the first N decoder layers");
  est.flag("--freeze-embeddings", "Full fine-tuning: freeze the embeddings");
  est.option<std::string>(
      "--framework",
      "Whose training loop: hf (Transformers + PEFT + Trainer), torchtune or litgpt");
  est.option<std::string>("--recipe",
                          "A torchtune recipe YAML or a LitGPT config_hub YAML (sets --framework)");
  est.flag("--optimizer-in-bwd", "torchtune optimizer_in_bwd: step each parameter inside backward");
  est.flag("--packed", "torchtune dataset.packed: block-causal masks (flex_attention from sm75)");
  est.flag("--compile",
           "torchtune compile=True: per-layer torch.compile and a compiled loss (inductor's "
           "partitioner decides what is saved)");
  est.flag("--liger",
           "Hugging Face Trainer use_liger_kernel: Liger's RMSNorm, RoPE, SwiGLU and fused "
           "linear cross-entropy (no logits)");
  est.flag("--activation-offload", "torchtune enable_activation_offloading (needs --grad-ckpt)");
  est.flag("--paged-optimizer", "bitsandbytes paged optimizer: states outside the allocator");
  est.flag("--sdpa-mask",
           "SDPA gets an explicit attn_mask (a padded batch) instead of is_causal; decides the "
           "kernel with --attention sdpa");
  est.option<int64_t>("--output-chunks",
                      "torchtune num_output_chunks of the LM head and loss (0: off)");
  est.option<int64_t>("--lm-head-chunk", "LitGPT lm_head_chunk_size in tokens (0: off)");
  est.option<std::string>("--torch-version",
                          "PyTorch version whose behaviour to model (default 2.4)");
  est.option<std::string>(
      "--bitsandbytes-version",
      "bitsandbytes version whose behaviour to model (default 0.45: before "
      "0.43.2 MatMul4Bit keeps its input; before 0.44 2048-element absmax blocks)");
  est.option<std::string>("--transformers-version",
                          "transformers version whose modeling code to model (default 4.57)");
  est.flag("--expandable-segments", "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True");
  est.option<double>("--max-split-size-mb", "PYTORCH_CUDA_ALLOC_CONF max_split_size_mb");
  est.option<std::string>("--estimator", "llmem (simulation), paper (LLMem equations 1-5) or both");
  est.option<int64_t>("--chunk-elems",
                      "Paper estimator: Gemini chunk size in elements (0: largest tensor)");
  est.option<std::string>(
      "--method", "single, ddp, zero1, zero2, zero3, fsdp, gemini, megatron, colossalai-1d");
  est.option<int64_t>("--dp", "Data-parallel degree");
  est.option<std::string>("--deepspeed-config",
                          "A DeepSpeed JSON config: ZeRO stage, offload, buckets, precision "
                          "(overrides --method and those options)");
  est.option<std::string>("--fsdp-config",
                          "An accelerate FSDP config (YAML): sharding, version, offload, "
                          "checkpointing, precision, processes (overrides --method and those)");
  est.option<int64_t>("--tp", "Tensor-parallel degree");
  est.option<int64_t>("--pp", "Pipeline stages");
  est.option<std::string>("--schedule", "Pipeline schedule: 1f1b, gpipe or interleaved");
  est.option<int64_t>("--virtual-stages",
                      "Interleaved schedule: model chunks per pipeline rank (Megatron "
                      "--num-virtual-stages-per-pipeline-rank)");
  est.option<std::string>("--zero-impl", "zero1: deepspeed or torch (ZeroRedundancyOptimizer)");
  est.option<std::string>("--fsdp-sharding", "full-shard, shard-grad-op, hybrid-shard or no-shard");
  est.option<int64_t>("--fsdp-version", "FSDP 1 (flat parameters) or 2");
  est.flag("--embedding-units",
           "FSDP: the embedding and output head as units of their own (torchtune "
           "custom_sharded_layers)");
  est.flag("--gradient-as-bucket-view", "DDP gradient_as_bucket_view=True");
  est.flag("--sequence-parallel", "Megatron sequence parallelism");
  est.option<std::vector<std::string>>("--offload",
                                       "CPU offload: optimizer, params (comma-separated)")
      ->delimiter(',');
  est.option<int64_t>("--reduce-bucket-size", "DeepSpeed reduce_bucket_size (elements)");
  est.flag("--overlap-comm",
           "DeepSpeed overlap_comm (default: on for zero3, off for zero1/2; "
           "--overlap-comm=false turns it off)");
  EstimateOutput est_out;
  est_cmd
      ->add_option("--format", est_out.format,
                   "table, json, csv (timeline), svg (timeline) or html (self-contained report)")
      ->check(CLI::IsMember({"table", "json", "csv", "svg", "html"}));

  ValidateOptions val;
  CLI::App* val_cmd =
      app.add_subcommand("validate", "Compare estimates with measured peaks (CSV rows)");
  val_cmd->add_option("files", val.files, "CSV files in the columns of published.csv")->required();
  val_cmd->add_option("--format", val.format, "table or json")
      ->check(CLI::IsMember({"table", "json"}));
  val_cmd->add_option("--max-median", val.max_median,
                      "Exit 1 when the median |error| exceeds this many percent");
  val_cmd->add_option("--max-error", val.max_error,
                      "Exit 1 when any |error| exceeds this many percent");

  ModelsOptions models;
  CLI::App* models_cmd = app.add_subcommand("models", "List the built-in model catalog");
  models_cmd->add_option("--format", models.format, "table or json")
      ->check(CLI::IsMember({"table", "json"}));

  CLI::App* arch_cmd =
      app.add_subcommand("architectures", "List the supported architectures (model_type values)");

  PlanCommand plan_cmd(app);
  ServeOptions serve;
  CLI::App* serve_cmd = add_serve_command(app, &serve);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e, out, err);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e, out, err);
  } catch (const CLI::ParseError& e) {
    app.exit(e, out, err);
    return kExitBadInput;
  }

  try {
    if (inspect_cmd->parsed())
      return run_inspect(inspect, out, err);
    if (models_cmd->parsed())
      return run_models(models, out);
    if (val_cmd->parsed())
      return run_validate(val, out);
    if (est_cmd->parsed())
      return run_estimate(est, est_out, out, err);
    if (arch_cmd->parsed())
      return run_architectures(out);
    if (plan_cmd.parsed())
      return plan_cmd.run(out, err);
    if (serve_cmd->parsed())
      return run_serve(serve, out, err);
  } catch (const Error& e) {
    err << "llmem: error: " << e.what() << "\n";
    return kExitBadInput;
  }
  return kExitBadInput;
}

}  // namespace llmem::cli
