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
#include "llmem/request.h"

#include "cli.h"
#include "request_flags.h"

namespace llmem::cli {

struct PlanOptions {
  explicit PlanOptions(CLI::App* cmd) : flags(cmd) {}
  RequestFlags flags;  // every option but --format goes through the request layer
  std::string format = "table";
};

PlanCommand::PlanCommand(CLI::App& app) {
  cmd_ = app.add_subcommand(
      "plan", "The fastest training configuration that fits: methods, layouts, micro-batch");
  o_ = std::make_unique<PlanOptions>(cmd_);
  RequestFlags& f = o_->flags;
  f.option<std::string>("--model,-m", "Catalog name, config.json or checkpoint directory")
      ->required();
  f.option<int64_t>("--gpus", "Number of GPUs")->required();
  f.option<std::string>("--gpu", "GPU name (A100-80GB, H100-80GB, V100-16GB, ...)");
  f.option<double>("--gpu-mem", "GPU memory in GiB (instead of --gpu)");
  f.option<int64_t>("--nodes", "Nodes the GPUs are spread over (InfiniBand between)");
  f.option<int64_t>("--seq,-s", "Sequence length in tokens");
  f.option<int64_t>("--global-batch", "Samples per optimizer step (all replicas)");
  f.option<int64_t>("--dataset-tokens", "Tokens per epoch (time per epoch)");
  f.option<std::vector<std::string>>("--methods",
                                     "ddp, zero1, zero2, zero3, fsdp, gemini, colossalai-1d, "
                                     "megatron, single; dp and tp mean the framework's own")
      ->delimiter(',');
  f.option<std::vector<std::string>>(
       "--allow",
       "Also search: lora, qlora, ckpt, offload, interleaved (Megatron, "
       "2 model chunks per rank), liger (Liger kernels, hf)")
      ->delimiter(',');
  f.option<double>("--margin", "Minimum free memory, percent of capacity (default 5)");
  f.option<int64_t>("--top", "Candidates shown (0: all)");
  cmd_->add_option("--format", o_->format, "table or json")
      ->check(CLI::IsMember({"table", "json"}));
  f.flag("--max-seq", "Answer: the longest sequence that fits");
  f.flag("--min-gpus", "Answer: the fewest GPUs (up to --gpus) that fit");
  f.flag("--paper", "Also run the LLMem paper's Algorithm 1 (equations 6-10)");
  f.flag("--paper-literal", "Paper: equation (10) as printed (exact only for 2DP+2TP)");
  f.option<std::string>("--framework",
                        "hf, colossalai (the paper's: Gemini, 1D TP, fp16, checkpointing), "
                        "torchtune or litgpt");
  f.option<std::string>("--recipe",
                        "A torchtune recipe YAML or a LitGPT config_hub YAML: plan around it");
  f.option<std::string>("--precision", "fp32, fp16-mixed, bf16-mixed, bf16, fp16");
  f.option<std::string>("--optimizer", "adamw, adamw-fused, sgd, adamw-8bit, ...");
  f.option<std::string>("--attention",
                        "eager, sdpa (the kernel PyTorch picks), sdpa-flash, sdpa-efficient, "
                        "sdpa-math, flash_attention_2");
  f.option<int64_t>("--lora-rank", "LoRA rank of the lora and qlora candidates");
  f.flag("--liger", "hf: every candidate with Liger kernels (the Trainer's use_liger_kernel)");
  f.option<int64_t>("--max-micro-batch", "Largest micro-batch searched");
  f.option<int64_t>("--max-pp", "Most pipeline stages searched (0: no limit)");
  f.option<double>("--efficiency", "Achieved share of the dense tensor-core peak (default 0.5)");
}

PlanCommand::~PlanCommand() = default;

bool PlanCommand::parsed() const {
  return cmd_->parsed();
}

int PlanCommand::run(std::ostream& out, std::ostream& err) const {
  PlanQuery q = parse_plan_request(o_->flags.request(), {.style = KeyStyle::kCli});
  for (const std::string& w : q.warnings)
    err << "warning: " << w << "\n";
  PlanAnswer a = run_plan_request(q);
  out << (o_->format == "json" ? a.json : a.table);
  return a.fits ? kExitOk : kExitDoesNotFit;
}

}  // namespace llmem::cli
