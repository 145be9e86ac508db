// Copyright 2026 The llmem Authors.

#include "plan_cmd.h"

#include <ostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "llmem/error.h"
#include "llmem/estimate.h"
#include "llmem/gpu.h"
#include "llmem/model.h"
#include "llmem/plan.h"

#include "cli.h"

namespace llmem::cli {

struct PlanOptions {
  std::string model;
  int gpus = 0;
  std::string gpu = "A100-80GB";
  double gpu_mem = 0;
  int nodes = 1;
  int64_t seq = 512;
  int64_t global_batch = 0;
  int64_t dataset_tokens = 0;
  std::vector<std::string> methods;
  std::vector<std::string> allow;
  double margin = 5;
  int top = 10;
  std::string format = "table";
  bool max_seq = false;
  bool min_gpus = false;
  bool paper = false;
  bool paper_literal = false;
  std::string framework = "hf";
  std::string precision;
  std::string optimizer = "adamw";
  std::string attention = "eager";
  int64_t lora_rank = 16;
  int64_t max_micro_batch = 1024;
  int max_pp = 0;
  double efficiency = 0.5;
};

PlanCommand::PlanCommand(CLI::App& app) : o_(std::make_unique<PlanOptions>()) {
  PlanOptions& o = *o_;
  cmd_ = app.add_subcommand(
      "plan", "The fastest training configuration that fits: methods, layouts, micro-batch");
  cmd_->add_option("--model,-m", o.model, "Catalog name, config.json or checkpoint directory")
      ->required();
  cmd_->add_option("--gpus", o.gpus, "Number of GPUs")->required();
  cmd_->add_option("--gpu", o.gpu, "GPU name (A100-80GB, H100-80GB, V100-16GB, ...)");
  cmd_->add_option("--gpu-mem", o.gpu_mem, "GPU memory in GiB (instead of --gpu)");
  cmd_->add_option("--nodes", o.nodes, "Nodes the GPUs are spread over (InfiniBand between)");
  cmd_->add_option("--seq,-s", o.seq, "Sequence length in tokens");
  cmd_->add_option("--global-batch", o.global_batch, "Samples per optimizer step (all replicas)");
  cmd_->add_option("--dataset-tokens", o.dataset_tokens, "Tokens per epoch (time per epoch)");
  cmd_->add_option("--methods", o.methods,
                   "ddp, zero1, zero2, zero3, fsdp, gemini, colossalai-1d, megatron, single; "
                   "dp and tp mean the framework's own")
      ->delimiter(',');
  cmd_->add_option("--allow", o.allow, "Also search: lora, qlora, ckpt, offload")->delimiter(',');
  cmd_->add_option("--margin", o.margin, "Minimum free memory, percent of capacity (default 5)");
  cmd_->add_option("--top", o.top, "Candidates shown (0: all)");
  cmd_->add_option("--format", o.format, "table or json")->check(CLI::IsMember({"table", "json"}));
  cmd_->add_flag("--max-seq", o.max_seq, "Answer: the longest sequence that fits");
  cmd_->add_flag("--min-gpus", o.min_gpus, "Answer: the fewest GPUs (up to --gpus) that fit");
  cmd_->add_flag("--paper", o.paper, "Also run the LLMem paper's Algorithm 1 (equations 6-10)");
  cmd_->add_flag("--paper-literal", o.paper_literal,
                 "Paper: equation (10) as printed (exact only for 2DP+2TP)");
  cmd_->add_option("--framework", o.framework,
                   "hf, or colossalai (the paper's: Gemini, 1D TP, fp16, checkpointing)")
      ->check(CLI::IsMember({"hf", "colossalai"}));
  cmd_->add_option("--precision", o.precision, "fp32, fp16-mixed, bf16-mixed, bf16, fp16");
  cmd_->add_option("--optimizer", o.optimizer, "adamw, adamw-fused, sgd, adamw-8bit, ...");
  cmd_->add_option("--attention", o.attention, "eager, sdpa, flash_attention_2");
  cmd_->add_option("--lora-rank", o.lora_rank, "LoRA rank of the lora and qlora candidates");
  cmd_->add_option("--max-micro-batch", o.max_micro_batch, "Largest micro-batch searched");
  cmd_->add_option("--max-pp", o.max_pp, "Most pipeline stages searched (0: no limit)");
  cmd_->add_option("--efficiency", o.efficiency,
                   "Achieved share of the dense tensor-core peak (default 0.5)");
}

PlanCommand::~PlanCommand() = default;

bool PlanCommand::parsed() const {
  return cmd_->parsed();
}

int PlanCommand::run(std::ostream& out, std::ostream& /*err*/) const {
  const PlanOptions& o = *o_;
  ModelSpec model = load_model(o.model);
  if (o.gpu_mem > 0 && cmd_->count("--gpu") > 0)
    throw Error("--gpu-mem", "", "give either --gpu or --gpu-mem, not both");
  GpuSpec gpu =
      o.gpu_mem > 0 || cmd_->count("--gpu-mem") > 0 ? custom_gpu(o.gpu_mem) : find_gpu(o.gpu);
  PlanRequest r;
  r.gpus = o.gpus;
  r.nodes = o.nodes;
  r.seq = o.seq;
  r.global_batch = o.global_batch;
  if (cmd_->count("--global-batch") > 0 && o.global_batch < 1)
    throw Error("--global-batch", "", "expected a positive sample count");
  r.dataset_tokens = o.dataset_tokens;
  r.colossalai = o.framework == "colossalai";
  if (!(o.margin >= 0 && o.margin < 100))
    throw Error("--margin", "", "expected a percentage in [0, 100)");
  r.margin = o.margin / 100;
  if (o.top < 0)
    throw Error("--top", "", "expected a non-negative count");
  r.max_micro_batch = o.max_micro_batch;
  r.max_pp = o.max_pp;
  if (!(o.efficiency > 0 && o.efficiency <= 1))
    throw Error("--efficiency", "", "expected a share in (0, 1]");
  r.time.compute_efficiency = o.efficiency;
  for (const std::string& m : o.methods) {
    if (m == "tp")
      r.methods.push_back(r.colossalai ? Method::kColossal1d : Method::kMegatron);
    else if (m == "dp")
      r.methods.push_back(r.colossalai ? Method::kGemini : Method::kDdp);
    else
      r.methods.push_back(parse_method(m, "--methods"));
  }
  for (const std::string& a : o.allow) {
    if (a == "lora")
      r.allow_lora = true;
    else if (a == "qlora")
      r.allow_qlora = true;
    else if (a == "ckpt")
      r.allow_ckpt = true;
    else if (a == "offload")
      r.allow_offload = true;
    else
      throw Error("--allow", "",
                  "unknown value \"" + a + "\"; expected lora, qlora, ckpt or offload");
  }
  std::string precision = o.precision;
  if (precision.empty()) {
    precision = r.colossalai || gpu.bf16_tflops <= 0 ? "fp16-mixed" : "bf16-mixed";
  }
  r.base.precision = parse_precision(precision, "--precision");
  r.base.optimizer = parse_optimizer(o.optimizer, "--optimizer");
  r.base.attention = parse_attention(o.attention, "--attention");
  if (o.lora_rank < 1 || o.lora_rank > 65536)
    throw Error("--lora-rank", "", "expected a rank between 1 and 65536");
  r.base.lora.rank = o.lora_rank;

  Plan p;
  PlanRequest shown = r;
  if (o.max_seq && o.min_gpus)
    throw Error("--max-seq", "", "ask one inverse question at a time (not with --min-gpus)");
  if (o.max_seq) {
    int64_t s = max_seq(model, r, gpu, &p);
    if (s > 0)
      shown.seq = s;
  } else if (o.min_gpus) {
    int n = min_gpus(model, r, gpu, &p);
    if (n > 0) {
      shown.gpus = n;
      shown.nodes = n > r.gpus / r.nodes ? n / (r.gpus / r.nodes) : 1;
    }
  } else {
    p = plan(model, r, gpu);
  }
  PaperPlan paper;
  if (o.paper || o.paper_literal)
    paper = paper_plan(model, shown.gpus, shown.seq, gpu, o.paper_literal);
  const PaperPlan* paper_ptr = o.paper || o.paper_literal ? &paper : nullptr;
  if (o.format == "json")
    out << plan_json(model, shown, gpu, p, paper_ptr, o.top);
  else
    out << plan_table(model, shown, gpu, p, paper_ptr, o.top);
  return p.choice >= 0 ? kExitOk : kExitDoesNotFit;
}

}  // namespace llmem::cli
