// Copyright 2026 The llmem Authors.

#include "cli.h"

#include <cstdio>
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
#include "llmem/validate.h"

#include "serve.h"

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

int run_estimate(const EstimateOptions& o, std::ostream& out) {
  ModelSpec model = load_model(o.model);
  TrainingSetup setup;
  setup.batch = o.batch;
  setup.seq = o.seq;
  setup.grad_accum = o.grad_accum;
  setup.precision = parse_precision(o.precision, "--precision");
  setup.optimizer = parse_optimizer(o.optimizer, "--optimizer");
  setup.attention = parse_attention(o.attention, "--attention");
  setup.checkpointing =
      o.grad_ckpt ? parse_checkpointing(o.ckpt_mode, "--ckpt-mode") : CheckpointMode::kOff;
  setup.device = o.device == "cpu" ? Device::kCpu : Device::kCuda;
  setup.dropout = o.dropout;
  if (!o.quant.empty()) {
    if (o.lora_rank <= 0) {
      throw Error("--quant", "", "QLoRA trains LoRA adapters: give --lora-rank too");
    }
    if (o.quant_block < 16 || o.quant_block > 4096) {
      throw Error("--quant-block", "", "expected a block size between 16 and 4096");
    }
    setup.finetune = FinetuneMode::kQlora;
    setup.quant.nf4 = o.quant == "nf4";
    setup.quant.double_quant = !o.no_double_quant;
    setup.quant.block = o.quant_block;
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
    setup.lora.alpha = o.lora_alpha;
    setup.lora.dropout = o.lora_dropout;
    setup.lora.targets = o.lora_targets;
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
  } else if (o.format == "html") {
    out << estimate_html(model, setup, gpu, e);
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
      ->add_option("--format", est.format,
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
      return run_estimate(est, out);
    if (arch_cmd->parsed())
      return run_architectures(out);
    if (serve_cmd->parsed())
      return run_serve(serve, out, err);
  } catch (const Error& e) {
    err << "llmem: error: " << e.what() << "\n";
    return kExitBadInput;
  }
  return kExitBadInput;
}

}  // namespace llmem::cli
