// Copyright 2026 The llmem Authors.

#include "cli.h"

#include <cstdio>
#include <fstream>
#include <ostream>
#include <sstream>
#include <string>

#include <CLI/CLI.hpp>

#include "llmem/deepspeed.h"
#include "llmem/error.h"
#include "llmem/estimate.h"
#include "llmem/gpu.h"
#include "llmem/model.h"
#include "llmem/recipe.h"
#include "llmem/report.h"
#include "llmem/validate.h"

namespace llmem::cli {
namespace {

struct InspectOptions {
  std::string model;
  std::string format = "table";
  bool tensors = false;
};

struct EstimateOptions {
  std::string model;
  std::string gpu = "A100-80GB";
  double gpu_mem = 0;
  std::string device = "cuda";
  int64_t batch = 1;
  int64_t seq = 512;
  int64_t grad_accum = 1;
  std::string precision = "bf16-mixed";
  std::string optimizer = "adamw";
  std::string attention = "eager";
  bool grad_ckpt = false;
  std::string ckpt_mode = "reentrant";
  int64_t lora_rank = 0;
  double lora_alpha = 16;
  double lora_dropout = 0;
  std::vector<std::string> lora_targets;
  double dropout = -1;
  std::string quant;
  std::string quant_compute = "bf16";
  std::string lora_dtype = "fp32";
  bool no_double_quant = false;
  int64_t quant_block = 64;
  bool no_prepare_kbit = false;
  int64_t freeze_layers = 0;
  bool freeze_embeddings = false;
  bool expandable_segments = false;
  double max_split_size_mb = 0;
  std::string torch_version = "2.4";
  std::string format = "table";
  std::string estimator = "llmem";
  int64_t chunk_elems = 0;
  std::string framework = "hf";
  std::string recipe;
  bool optimizer_in_bwd = false;
  bool activation_offload = false;
  bool paged_optimizer = false;
  int64_t output_chunks = -1;
  int64_t lm_head_chunk = -1;
  std::string method = "single";
  int dp = 1;
  int tp = 1;
  int pp = 1;
  std::string zero_impl = "deepspeed";
  std::string fsdp_sharding = "full-shard";
  int fsdp_version = 1;
  bool bucket_view = false;
  bool sequence_parallel = false;
  int64_t reduce_bucket_size = 500'000'000;
  std::vector<std::string> offload;
  std::string schedule = "1f1b";
  std::string deepspeed_config;
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

int run_estimate(const EstimateOptions& o, const CLI::App& cmd, std::ostream& out,
                 std::ostream& err) {
  ModelSpec model = load_model(o.model);
  TrainingSetup setup;
  // The framework's defaults first; options given on the command line win.
  apply_framework_defaults(parse_framework(o.framework, "--framework"), &setup);
  if (!o.recipe.empty()) {
    RecipeResult recipe = read_recipe_file(o.recipe, &setup);
    for (const std::string& w : recipe.warnings)
      err << "warning: " << w << "\n";
  }
  auto given = [&](const char* name) { return cmd.count(name) > 0; };
  bool framework_run = setup.framework != Framework::kHf;
  if (!framework_run || given("--batch"))
    setup.batch = o.batch;
  if (!framework_run || given("--seq"))
    setup.seq = o.seq;
  if (!framework_run || given("--grad-accum"))
    setup.grad_accum = o.grad_accum;
  if (!framework_run || given("--precision"))
    setup.precision = parse_precision(o.precision, "--precision");
  if (!framework_run || given("--optimizer"))
    setup.optimizer = parse_optimizer(o.optimizer, "--optimizer");
  if (!framework_run || given("--attention"))
    setup.attention = parse_attention(o.attention, "--attention");
  if (!framework_run || given("--grad-ckpt") || given("--ckpt-mode")) {
    std::string mode = framework_run && !given("--ckpt-mode") ? "non-reentrant" : o.ckpt_mode;
    setup.checkpointing = o.grad_ckpt     ? parse_checkpointing(mode, "--ckpt-mode")
                          : framework_run ? setup.checkpointing
                                          : CheckpointMode::kOff;
  }
  setup.device = o.device == "cpu" ? Device::kCpu : Device::kCuda;
  if (!framework_run || given("--dropout"))
    setup.dropout = o.dropout;
  if (o.optimizer_in_bwd)
    setup.fw.optimizer_in_bwd = true;
  if (o.activation_offload)
    setup.fw.activation_offload = true;
  if (o.paged_optimizer)
    setup.fw.paged_optimizer = true;
  if (o.output_chunks >= 0)
    setup.fw.output_chunks = o.output_chunks;
  if (o.lm_head_chunk >= 0)
    setup.fw.lm_head_chunk_tokens = o.lm_head_chunk;
  if (!o.quant.empty()) {
    if (o.lora_rank <= 0) {
      throw Error("--quant", "", "QLoRA trains LoRA adapters: give --lora-rank too");
    }
    if (o.quant_block < 16 || o.quant_block > 4096) {
      throw Error("--quant-block", "", "expected a block size between 16 and 4096");
    }
    setup.finetune = FinetuneMode::kQlora;
    setup.quant.nf4 = o.quant == "nf4";
    if (!framework_run || given("--no-double-quant"))
      setup.quant.double_quant = !o.no_double_quant;
    setup.quant.block = o.quant_block;
    if (!framework_run || given("--no-prepare-kbit"))
      setup.quant.prepare_kbit = !o.no_prepare_kbit;
    setup.quant.compute_fp32 = o.quant_compute == "fp32";
  }
  if (o.freeze_layers < 0)
    throw Error("--freeze-layers", "", "expected a non-negative count");
  setup.freeze_layers = o.freeze_layers;
  setup.freeze_embeddings = o.freeze_embeddings;
  if (o.lora_rank > 0) {
    if (setup.finetune != FinetuneMode::kQlora)
      setup.finetune = FinetuneMode::kLora;
    setup.lora.rank = o.lora_rank;
    if (!framework_run || given("--lora-alpha"))
      setup.lora.alpha = o.lora_alpha;
    if (!framework_run || given("--lora-dropout"))
      setup.lora.dropout = o.lora_dropout;
    if (!framework_run || given("--lora-targets")) {
      setup.lora.targets.clear();
      for (const std::string& t : o.lora_targets) {
        for (const std::string& hf : framework_module_names(setup.framework, t))
          setup.lora.targets.push_back(hf);
      }
    }
    if (!framework_run || given("--lora-dtype"))
      setup.lora.adapter_fp32 = o.lora_dtype == "fp32";
  }
  int major = 0;
  int minor = 0;
  if (std::sscanf(o.torch_version.c_str(), "%d.%d", &major, &minor) != 2 || major < 1 ||
      major > 9 || minor < 0 || minor > 99) {
    throw Error("--torch-version", "", "expected MAJOR.MINOR such as 2.4");
  }
  setup.torch_version = major * 100 + minor;
  setup.allocator.expandable_segments = o.expandable_segments;
  if (o.max_split_size_mb > 0) {
    setup.allocator.max_split_size = static_cast<uint64_t>(o.max_split_size_mb * 1048576.0);
  }
  ParallelSetup& par = setup.parallel;
  par.method = parse_method(o.method, "--method");
  par.dp = o.dp;
  par.tp = o.tp;
  par.pp = o.pp;
  par.torch_zero = o.zero_impl == "torch";
  par.fsdp_sharding = o.fsdp_sharding == "shard-grad-op"  ? FsdpSharding::kShardGradOp
                      : o.fsdp_sharding == "hybrid-shard" ? FsdpSharding::kHybridShard
                      : o.fsdp_sharding == "no-shard"     ? FsdpSharding::kNoShard
                                                          : FsdpSharding::kFullShard;
  par.fsdp_version = o.fsdp_version;
  par.schedule = o.schedule == "gpipe" ? PipelineSchedule::kGpipe : PipelineSchedule::k1F1B;
  par.gradient_as_bucket_view = o.bucket_view;
  par.sequence_parallel = o.sequence_parallel;
  if (o.reduce_bucket_size < 1)
    throw Error("--reduce-bucket-size", "", "expected a positive element count");
  par.reduce_bucket_size = o.reduce_bucket_size;
  for (const std::string& what : o.offload) {
    if (what == "optimizer") {
      par.offload_optimizer = true;
    } else if (what == "params") {
      par.offload_params = true;
    } else {
      throw Error("--offload", "", "unknown value \"" + what + "\"; expected optimizer, params");
    }
  }
  if (!o.deepspeed_config.empty()) {
    std::ifstream in(o.deepspeed_config, std::ios::binary);
    if (!in)
      throw Error(o.deepspeed_config, "", "cannot open the file for reading");
    std::ostringstream text;
    text << in.rdbuf();
    for (const std::string& w : apply_deepspeed_config(text.str(), o.deepspeed_config, &setup))
      err << "warning: " << w << "\n";
  }
  GpuSpec gpu = o.gpu_mem > 0 ? custom_gpu(o.gpu_mem) : find_gpu(o.gpu);
  if (o.estimator == "paper" || o.estimator == "both") {
    PaperEstimate p = paper_estimate(model, setup, gpu, o.chunk_elems);
    Estimate e;
    if (o.estimator == "both")
      e = estimate(model, setup, gpu);
    if (o.format == "json") {
      out << paper_json(p, o.estimator == "both" ? &e : nullptr);
    } else {
      out << paper_table(model, setup, gpu, p, o.estimator == "both" ? &e : nullptr);
    }
    return kExitOk;
  }
  Estimate e = estimate(model, setup, gpu);
  if (o.format == "json") {
    out << estimate_json(model, setup, gpu, e);
  } else if (o.format == "csv") {
    out << estimate_csv(e);
  } else if (o.format == "svg") {
    out << estimate_svg(model, gpu, e);
  } else {
    out << estimate_table(model, setup, gpu, e);
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

  EstimateOptions est;
  CLI::App* est_cmd = app.add_subcommand(
      "estimate",
      "Peak memory of one fine-tuning step (simulated op by op and through the allocator)");
  est_cmd->add_option("--model,-m", est.model, "Catalog name, config.json or checkpoint directory")
      ->required();
  est_cmd->add_option("--gpu", est.gpu, "GPU name (A100-80GB, H100-80GB, RTX4090, ...)");
  est_cmd->add_option("--gpu-mem", est.gpu_mem, "GPU memory in GiB (instead of --gpu)");
  est_cmd->add_option("--device", est.device, "cuda, or cpu (exact-size allocations)")
      ->check(CLI::IsMember({"cuda", "cpu"}));
  est_cmd->add_option("--batch,-b", est.batch, "Micro-batch size per GPU");
  est_cmd->add_option("--seq,-s", est.seq, "Sequence length in tokens");
  est_cmd->add_option("--grad-accum", est.grad_accum, "Gradient accumulation steps");
  est_cmd->add_option("--precision", est.precision, "fp32, fp16-mixed, bf16-mixed, bf16, fp16");
  est_cmd->add_option("--optimizer", est.optimizer,
                      "adamw, adamw-foreach, adamw-fused, adamw-forloop, sgd, sgd-momentum, "
                      "adafactor, adamw-8bit, paged-adamw-8bit");
  est_cmd->add_option("--attention", est.attention, "eager, sdpa, flash_attention_2");
  est_cmd->add_flag("--grad-ckpt", est.grad_ckpt, "Gradient checkpointing per decoder layer");
  est_cmd->add_option("--ckpt-mode", est.ckpt_mode, "reentrant or non-reentrant");
  est_cmd->add_option("--lora-rank", est.lora_rank, "LoRA rank (0: full fine-tuning)");
  est_cmd->add_option("--lora-alpha", est.lora_alpha, "LoRA alpha");
  est_cmd->add_option("--lora-dropout", est.lora_dropout, "LoRA dropout");
  est_cmd->add_option("--lora-targets", est.lora_targets, "Module names, e.g. q_proj,v_proj")
      ->delimiter(',');
  est_cmd->add_option("--dropout", est.dropout, "Override every dropout probability");
  est_cmd->add_option("--quant", est.quant, "QLoRA: 4-bit base weights, nf4 or fp4")
      ->check(CLI::IsMember({"nf4", "fp4"}));
  est_cmd->add_flag("--no-double-quant", est.no_double_quant,
                    "QLoRA: without bnb_4bit_use_double_quant");
  est_cmd->add_option("--quant-block", est.quant_block, "QLoRA: quantization block size");
  est_cmd
      ->add_option("--quant-compute", est.quant_compute,
                   "QLoRA: bnb_4bit_compute_dtype (bf16, fp16 or fp32)")
      ->check(CLI::IsMember({"bf16", "fp16", "fp32"}));
  est_cmd
      ->add_option("--lora-dtype", est.lora_dtype,
                   "Adapter dtype: fp32 (PEFT's autocast_adapter_dtype) or base")
      ->check(CLI::IsMember({"fp32", "base"}));
  est_cmd->add_flag("--no-prepare-kbit", est.no_prepare_kbit,
                    "QLoRA: skip peft prepare_model_for_kbit_training (keeps other params' dtype)");
  est_cmd->add_option("--freeze-layers", est.freeze_layers,
                      "Full fine-tuning: freeze the first N decoder layers");
  est_cmd->add_flag("--freeze-embeddings", est.freeze_embeddings,
                    "Full fine-tuning: freeze the embeddings");
  est_cmd->add_option("--torch-version", est.torch_version,
                      "PyTorch version whose behaviour to model (default 2.4)");
  est_cmd->add_flag("--expandable-segments", est.expandable_segments,
                    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True");
  est_cmd->add_option("--max-split-size-mb", est.max_split_size_mb,
                      "PYTORCH_CUDA_ALLOC_CONF max_split_size_mb");
  est_cmd
      ->add_option("--estimator", est.estimator,
                   "llmem (simulation), paper (LLMem equations 1-5) or both")
      ->check(CLI::IsMember({"llmem", "paper", "both"}));
  est_cmd->add_option("--chunk-elems", est.chunk_elems,
                      "Paper estimator: Gemini chunk size in elements (0: largest tensor)");
  est_cmd
      ->add_option("--framework", est.framework,
                   "Whose training loop: hf (Transformers + PEFT + Trainer), torchtune or litgpt")
      ->check(CLI::IsMember({"hf", "torchtune", "litgpt"}));
  est_cmd->add_option("--recipe", est.recipe,
                      "A torchtune recipe YAML or a LitGPT config_hub YAML (sets --framework)");
  est_cmd->add_flag("--optimizer-in-bwd", est.optimizer_in_bwd,
                    "torchtune optimizer_in_bwd: step each parameter inside backward");
  est_cmd->add_flag("--activation-offload", est.activation_offload,
                    "torchtune enable_activation_offloading (needs --grad-ckpt)");
  est_cmd->add_flag("--paged-optimizer", est.paged_optimizer,
                    "bitsandbytes paged optimizer: states outside the caching allocator");
  est_cmd->add_option("--output-chunks", est.output_chunks,
                      "torchtune num_output_chunks of the LM head and loss (0: off)");
  est_cmd->add_option("--lm-head-chunk", est.lm_head_chunk,
                      "LitGPT lm_head_chunk_size in tokens (0: off)");
  est_cmd->add_option("--method", est.method,
                      "single, ddp, zero1, zero2, zero3, fsdp, megatron, colossalai-1d");
  est_cmd->add_option("--dp", est.dp, "Data-parallel degree");
  est_cmd->add_option("--deepspeed-config", est.deepspeed_config,
                      "A DeepSpeed JSON config: ZeRO stage, offload, buckets, precision "
                      "(overrides --method and those options)");
  est_cmd->add_option("--tp", est.tp, "Tensor-parallel degree");
  est_cmd->add_option("--pp", est.pp, "Pipeline stages");
  est_cmd->add_option("--schedule", est.schedule, "Pipeline schedule: 1f1b or gpipe")
      ->check(CLI::IsMember({"1f1b", "gpipe"}));
  est_cmd
      ->add_option("--zero-impl", est.zero_impl,
                   "zero1: deepspeed or torch (ZeroRedundancyOptimizer)")
      ->check(CLI::IsMember({"deepspeed", "torch"}));
  est_cmd
      ->add_option("--fsdp-sharding", est.fsdp_sharding,
                   "full-shard, shard-grad-op, hybrid-shard or no-shard")
      ->check(CLI::IsMember({"full-shard", "shard-grad-op", "hybrid-shard", "no-shard"}));
  est_cmd->add_option("--fsdp-version", est.fsdp_version, "FSDP 1 (flat parameters) or 2");
  est_cmd->add_flag("--gradient-as-bucket-view", est.bucket_view,
                    "DDP gradient_as_bucket_view=True");
  est_cmd->add_flag("--sequence-parallel", est.sequence_parallel, "Megatron sequence parallelism");
  est_cmd->add_option("--offload", est.offload, "CPU offload: optimizer, params (comma-separated)")
      ->delimiter(',');
  est_cmd->add_option("--reduce-bucket-size", est.reduce_bucket_size,
                      "DeepSpeed reduce_bucket_size (elements)");
  est_cmd->add_option("--format", est.format, "table, json, csv (timeline) or svg (timeline)")
      ->check(CLI::IsMember({"table", "json", "csv", "svg"}));

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
      return run_estimate(est, *est_cmd, out, err);
    if (arch_cmd->parsed())
      return run_architectures(out);
  } catch (const Error& e) {
    err << "llmem: error: " << e.what() << "\n";
    return kExitBadInput;
  }
  return kExitBadInput;
}

}  // namespace llmem::cli
