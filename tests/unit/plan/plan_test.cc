// Copyright 2026 The llmem Authors.
// The planner: enumeration, micro-batch search against direct estimates,
// rejection reasons, the step-time model, the paper's Algorithm 1 on its
// Table 3 setting, and the CLI's JSON contract and exit codes.

#include "llmem/plan.h"

#include <algorithm>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "llmem/error.h"
#include "llmem/estimate.h"
#include "llmem/gpu.h"
#include "llmem/model.h"

#include "cli.h"
#include "cli/run_cli.h"

namespace llmem {
namespace {

constexpr uint64_t kGiB = 1ull << 30;
constexpr uint64_t kMiB = 1ull << 20;

/// A fake estimator: every rank needs `base / shards + per_sample * batch`
/// rounded to 2 MiB (monotone, not linear), with one rank role.
struct FakeEstimator {
  uint64_t base = 40 * kGiB;
  uint64_t per_sample = 700 * kMiB;
  int* calls = nullptr;
  Estimate operator()(const ModelSpec& /*model*/, const TrainingSetup& s,
                      const GpuSpec& /*gpu*/) const {
    if (calls != nullptr)
      ++*calls;
    Estimate e;
    const ParallelSetup& p = s.parallel;
    uint64_t shards = p.method == Method::kZero3 || p.method == Method::kFsdp
                          ? static_cast<uint64_t>(p.gpus())
                          : static_cast<uint64_t>(p.tp * p.pp);
    uint64_t b = static_cast<uint64_t>(s.batch);
    uint64_t act = per_sample * b + (b * b * kMiB) / 4;  // slightly convex
    if (s.checkpointing != CheckpointMode::kOff)
      act /= 4;
    uint64_t peak = base / shards + act;
    peak = (peak + 2 * kMiB - 1) / (2 * kMiB) * (2 * kMiB);
    e.peak.device_bytes = peak;
    e.peak.allocated_bytes = peak;
    e.peak.components[static_cast<size_t>(Component::kActivations)] = act;
    e.peak.components[static_cast<size_t>(Component::kParameters)] = peak - act;
    e.trainable_params = 7'000'000'000;
    if (p.method != Method::kSingle) {
      RankEstimate r;
      r.role = "rank 0";
      r.ranks = {0};
      r.peak = e.peak;
      e.ranks.push_back(r);
    }
    return e;
  }
};

const ModelSpec& llama7b() {
  static const ModelSpec m = load_model("meta-llama/Llama-2-7b-hf");
  return m;
}

/// FakeEstimator that also records every setup it is asked about.
EstimateFn recording(std::vector<TrainingSetup>* seen) {
  return [seen](const ModelSpec& m, const TrainingSetup& s, const GpuSpec& g) {
    seen->push_back(s);
    return FakeEstimator{}(m, s, g);
  };
}

TEST(Plan, EnumeratesMethodsLayoutsAndOptions) {
  PlanRequest r;
  r.gpus = 8;
  r.max_micro_batch = 8;
  r.estimator = FakeEstimator{};
  Plan p = plan(llama7b(), r, find_gpu("A100-80GB"));
  // ddp, zero1, zero2, zero3, fsdp (dp=8) + megatron over the 9 layouts with tp*pp > 1.
  EXPECT_EQ(p.candidates.size(), 14u);
  std::set<std::string> labels;
  for (const PlanCandidate& c : p.candidates) {
    EXPECT_EQ(c.dp * c.tp * c.pp, 8) << candidate_label(c);
    labels.insert(candidate_label(c));
  }
  EXPECT_EQ(labels.size(), 14u);
  // Megatron with tp > 1 on a dense Llama: sequence parallelism on.
  EXPECT_TRUE(labels.count("megatron dp=2 tp=2 pp=2 +sp"));
  EXPECT_TRUE(labels.count("megatron dp=4 pp=2"));
  EXPECT_TRUE(labels.count("zero3 dp=8"));
  EXPECT_EQ(p.configurations, 14u * 8);

  r.allow_ckpt = r.allow_lora = r.allow_qlora = r.allow_offload = true;
  Plan all = plan(llama7b(), r, find_gpu("A100-80GB"));
  // (5 dp methods + 9 megatron layouts) x 2 ckpt x 3 modes, plus offload
  // variants: zero1 1, zero2 1, zero3 2, fsdp 2 (x 6).
  EXPECT_EQ(all.candidates.size(), (14u + 6u) * 6u);
  size_t qlora_tp = 0;
  for (const PlanCandidate& c : all.candidates) {
    if (c.finetune == FinetuneMode::kQlora && c.tp * c.pp > 1) {
      ++qlora_tp;
      EXPECT_FALSE(c.fits);
      EXPECT_NE(c.rejected_reason.find("QLoRA"), std::string::npos);
    }
  }
  EXPECT_EQ(qlora_tp, 9u * 2u);
}

TEST(Plan, ColossalAiCoversThePapersMethods) {
  PlanRequest r;
  r.gpus = 4;
  r.colossalai = true;
  r.max_micro_batch = 4;
  r.estimator = FakeEstimator{};
  Plan p = plan(load_model("facebook/opt-1.3b"), r, find_gpu("V100-16GB"));
  std::set<std::string> labels;
  for (const PlanCandidate& c : p.candidates) {
    labels.insert(candidate_label(c));
    EXPECT_EQ(c.checkpointing, CheckpointMode::kReentrant);
  }
  EXPECT_EQ(labels, (std::set<std::string>{"gemini dp=4 +ckpt", "colossalai-1d dp=2 tp=2 +ckpt",
                                           "colossalai-1d dp=1 tp=4 +ckpt"}));
  // LoRA and QLoRA: ColossalAI's GeminiPlugin does not support them, so
  // every such candidate is rejected, never proposed.
  r.allow_lora = r.allow_qlora = true;
  Plan lora = plan(load_model("facebook/opt-1.3b"), r, find_gpu("V100-16GB"));
  size_t refused = 0;
  for (const PlanCandidate& c : lora.candidates) {
    if (c.finetune == FinetuneMode::kFull)
      continue;
    ++refused;
    EXPECT_FALSE(c.fits) << candidate_label(c);
    EXPECT_NE(c.rejected_reason.find("GeminiPlugin does not support LoRA"), std::string::npos)
        << c.rejected_reason;
  }
  EXPECT_EQ(refused, 3u * 2u);
}

TEST(Plan, LargestMicroBatchMatchesBruteForce) {
  const GpuSpec& gpu = find_gpu("A100-80GB");
  for (uint64_t per_sample : {30 * kMiB, 333 * kMiB, 2 * kGiB, 9 * kGiB}) {
    int calls = 0;
    FakeEstimator fake{40 * kGiB, per_sample, &calls};
    PlanRequest r;
    r.gpus = 8;
    r.methods = {Method::kDdp, Method::kZero3, Method::kMegatron};
    r.allow_ckpt = true;
    r.estimator = fake;
    Plan p = plan(llama7b(), r, gpu);
    EXPECT_EQ(static_cast<size_t>(calls), p.estimates);
    for (const PlanCandidate& c : p.candidates) {
      if (!c.rejected_reason.empty() && c.rejected_reason.find("micro-batch") == std::string::npos)
        continue;
      int64_t brute = 0;
      for (int64_t b = 1; b <= r.max_micro_batch; ++b) {
        TrainingSetup s = r.base;
        s.batch = b;
        s.checkpointing = c.checkpointing;
        s.parallel.method = c.method;
        s.parallel.dp = c.dp;
        s.parallel.tp = c.tp;
        s.parallel.pp = c.pp;
        if (fake(llama7b(), s, gpu).peak.device_bytes > p.budget_bytes)
          break;
        brute = b;
      }
      EXPECT_EQ(c.max_micro_batch, brute) << candidate_label(c) << " per sample " << per_sample;
      EXPECT_LE(c.estimates, 24) << candidate_label(c);
    }
  }
}

TEST(Plan, LargestMicroBatchAgreesWithDirectEstimates) {
  // The real simulation, one GPU: max fits, max + 1 does not.
  ModelSpec model = load_model("facebook/opt-125m");
  GpuSpec gpu = custom_gpu(6);
  PlanRequest r;
  r.gpus = 1;
  r.seq = 256;
  r.allow_ckpt = true;
  r.margin = 0.1;
  Plan p = plan(model, r, gpu);
  ASSERT_GE(p.choice, 0);
  for (const PlanCandidate& c : p.candidates) {
    ASSERT_TRUE(c.fits) << c.rejected_reason;
    TrainingSetup s = r.base;
    s.seq = r.seq;
    s.checkpointing = c.checkpointing;
    s.batch = c.max_micro_batch;
    EXPECT_LE(estimate(model, s, gpu).peak.device_bytes, p.budget_bytes);
    s.batch = c.max_micro_batch + 1;
    EXPECT_GT(estimate(model, s, gpu).peak.device_bytes, p.budget_bytes);
    EXPECT_LE(c.estimates, 8);
  }
}

TEST(Plan, AccumulationBeyondTwoGroupsKeepsThePeak) {
  // The planner simulates min(m, pp + 1) micro-batches per step for the peak.
  const GpuSpec& gpu = find_gpu("A100-80GB");
  ModelSpec model = load_model("facebook/opt-125m");
  TrainingSetup s;
  s.seq = 512;
  s.batch = 2;
  s.parallel.method = Method::kDdp;
  s.parallel.dp = 2;
  s.grad_accum = 2;
  uint64_t two = estimate(model, s, gpu).peak.device_bytes;
  s.grad_accum = 7;
  EXPECT_EQ(estimate(model, s, gpu).peak.device_bytes, two);
  s.parallel.method = Method::kMegatron;
  s.parallel.dp = 1;
  s.parallel.pp = 4;
  s.grad_accum = 5;
  uint64_t five = estimate(model, s, gpu).peak.device_bytes;
  s.grad_accum = 16;
  EXPECT_EQ(estimate(model, s, gpu).peak.device_bytes, five);
}

TEST(Plan, InverseQuestionsAgreeWithPlans) {
  ModelSpec model = load_model("facebook/opt-125m");
  GpuSpec gpu = custom_gpu(3);
  PlanRequest r;
  r.gpus = 1;
  r.margin = 0;
  Plan at;
  int64_t longest = max_seq(model, r, gpu, &at);
  ASSERT_GT(longest, 64);
  ASSERT_LT(longest, 2048) << "pick a smaller GPU so the answer is inside the model's range";
  EXPECT_EQ(longest % 64, 0);
  EXPECT_GE(at.choice, 0);
  PlanRequest one = r;
  one.max_micro_batch = 1;
  one.seq = longest;
  EXPECT_GE(plan(model, one, gpu).choice, 0);
  one.seq = longest + 64;
  EXPECT_EQ(plan(model, one, gpu).choice, -1);

  // Fewest GPUs: full fine-tuning of a 7B model on 40 GB cards needs ZeRO-3 over several.
  PlanRequest g;
  g.gpus = 8;
  g.seq = 512;
  g.max_micro_batch = 4;
  Plan fewest;
  int n = min_gpus(llama7b(), g, find_gpu("A100-40GB"), &fewest);
  ASSERT_GT(n, 1);
  EXPECT_GE(fewest.choice, 0);
  g.gpus = n - 1;
  g.nodes = 1;
  EXPECT_EQ(plan(llama7b(), g, find_gpu("A100-40GB")).choice, -1);
}

TEST(Plan, GlobalBatchRestrictsMicroBatches) {
  PlanRequest r;
  r.gpus = 8;
  r.global_batch = 96;
  r.methods = {Method::kZero3, Method::kMegatron};
  r.estimator = FakeEstimator{40 * kGiB, 3 * kGiB};
  Plan p = plan(llama7b(), r, find_gpu("A100-80GB"));
  ASSERT_GE(p.choice, 0);
  for (const PlanCandidate& c : p.candidates) {
    if (!c.fits)
      continue;
    EXPECT_EQ(c.dp * c.micro_batch * c.grad_accum, 96) << candidate_label(c);
    EXPECT_EQ((96 / c.dp) % c.max_micro_batch, 0) << candidate_label(c);
  }
}

TEST(Plan, InterleavedFamiliesWhenAllowed) {
  PlanRequest r;
  r.gpus = 8;
  r.max_micro_batch = 8;
  std::vector<TrainingSetup> seen;
  r.estimator = recording(&seen);
  r.allow_interleaved = true;
  Plan p = plan(llama7b(), r, find_gpu("A100-80GB"));
  // The 14 families, plus vp=2 for the 6 megatron layouts with pp > 1
  // (pp 2, 4, 8 all split Llama-2-7B's 32 layers into 2·pp virtual stages).
  EXPECT_EQ(p.candidates.size(), 20u);
  std::set<std::string> labels;
  for (const PlanCandidate& c : p.candidates)
    labels.insert(candidate_label(c));
  EXPECT_TRUE(labels.count("megatron dp=4 pp=2 vp=2"));
  EXPECT_TRUE(labels.count("megatron dp=1 pp=8 vp=2"));
  EXPECT_TRUE(labels.count("megatron dp=2 tp=2 pp=2 +sp"));
  // Interleaved probes: Megatron's schedule, 2·pp micro-batches (4·pp per step
  // by default, a multiple of pp) for the peak.
  bool interleaved = false;
  for (const TrainingSetup& s : seen) {
    if (s.parallel.virtual_stages == 2) {
      interleaved = true;
      EXPECT_EQ(s.parallel.schedule, PipelineSchedule::kInterleaved);
      EXPECT_EQ(s.grad_accum, 2 * s.parallel.pp);
    } else {
      EXPECT_EQ(s.parallel.schedule, PipelineSchedule::k1F1B);
    }
  }
  EXPECT_TRUE(interleaved);
  // With a global batch, only micro-batches giving a multiple of pp per step.
  r.global_batch = 48;
  r.methods = {Method::kMegatron};
  Plan g = plan(llama7b(), r, find_gpu("A100-80GB"));
  for (const PlanCandidate& c : g.candidates) {
    if (c.vp > 1 && c.fits) {
      EXPECT_EQ(c.grad_accum % c.pp, 0) << candidate_label(c);
    }
  }
}

TEST(Plan, LigerFamiliesOnDataParallelLayoutsWhenAllowed) {
  PlanRequest r;
  r.gpus = 8;
  r.max_micro_batch = 8;
  std::vector<TrainingSetup> seen;
  r.estimator = recording(&seen);
  r.allow_liger = true;
  Plan p = plan(llama7b(), r, find_gpu("A100-80GB"));
  // The 14 families, plus Liger for the 5 data-parallel ones (Megatron
  // layouts split the head; Liger is not tried there).
  EXPECT_EQ(p.candidates.size(), 19u);
  std::set<std::string> labels;
  for (const PlanCandidate& c : p.candidates) {
    labels.insert(candidate_label(c));
    if (c.liger) {
      EXPECT_EQ(c.tp * c.pp, 1) << candidate_label(c);
    }
  }
  EXPECT_TRUE(labels.count("zero3 dp=8 +liger"));
  EXPECT_TRUE(labels.count("ddp dp=8 +liger"));
  bool with = false;
  for (const TrainingSetup& s : seen)
    with = with || s.fw.liger;
  EXPECT_TRUE(with);
  // A model type Liger has no kernels for: nothing to add.
  Plan opt = plan(load_model("facebook/opt-1.3b"), r, find_gpu("A100-80GB"));
  for (const PlanCandidate& c : opt.candidates)
    EXPECT_FALSE(c.liger) << candidate_label(c);
  // Every candidate with Liger (base.fw.liger): Megatron layouts are rejected.
  r.allow_liger = false;
  r.base.fw.liger = true;
  Plan all = plan(llama7b(), r, find_gpu("A100-80GB"));
  EXPECT_EQ(all.candidates.size(), 14u);
  for (const PlanCandidate& c : all.candidates) {
    EXPECT_TRUE(c.liger) << candidate_label(c);
    if (c.method == Method::kMegatron) {
      EXPECT_FALSE(c.fits);
      EXPECT_NE(c.rejected_reason.find("Liger"), std::string::npos) << c.rejected_reason;
    }
  }
}

TEST(Plan, RejectionReasons) {
  const GpuSpec& gpu = find_gpu("A100-80GB");
  // Heads not divisible by tp = 3 (32 heads), and 6 GPUs on one 7B model.
  PlanRequest r;
  r.gpus = 6;
  r.methods = {Method::kMegatron};
  r.estimator = FakeEstimator{};
  Plan p = plan(llama7b(), r, gpu);
  bool heads = false;
  for (const PlanCandidate& c : p.candidates) {
    if (c.tp == 3 || c.tp == 6) {
      EXPECT_FALSE(c.fits);
      EXPECT_NE(c.rejected_reason.find("not divisible by tp="), std::string::npos);
      heads = true;
    }
  }
  EXPECT_TRUE(heads);

  // An estimator that throws: "not modelled yet: <its message>".
  r.gpus = 2;
  r.methods = {Method::kZero2};
  r.estimator = [](const ModelSpec&, const TrainingSetup&, const GpuSpec&) -> Estimate {
    throw Error("--method", "", "zero2 is not simulated");
  };
  p = plan(llama7b(), r, gpu);
  ASSERT_EQ(p.candidates.size(), 1u);
  EXPECT_EQ(p.choice, -1);
  EXPECT_EQ(p.candidates[0].max_micro_batch, 0);
  EXPECT_EQ(p.candidates[0].rejected_reason.rfind("not modelled yet: ", 0), 0u);
  EXPECT_NE(p.candidates[0].rejected_reason.find("zero2 is not simulated"), std::string::npos);

  // A distributed layout answered with no per-rank result.
  r.estimator = [](const ModelSpec&, const TrainingSetup&, const GpuSpec&) { return Estimate{}; };
  p = plan(llama7b(), r, gpu);
  EXPECT_NE(p.candidates[0].rejected_reason.find("no per-rank result"), std::string::npos);

  // Model states alone: full fine-tuning of 7B with DDP never reaches estimate().
  int calls = 0;
  r.methods = {Method::kDdp};
  r.estimator = FakeEstimator{40 * kGiB, kGiB, &calls};
  p = plan(llama7b(), r, gpu);
  EXPECT_EQ(calls, 0);
  EXPECT_NE(p.candidates[0].rejected_reason.find("model states alone"), std::string::npos);

  // Over the budget at micro-batch 1: the reason names the size and the largest part.
  r.methods = {Method::kZero3};
  r.estimator = FakeEstimator{40 * kGiB, 90 * kGiB};
  p = plan(llama7b(), r, gpu);
  EXPECT_NE(p.candidates[0].rejected_reason.find("micro-batch 1 needs"), std::string::npos)
      << p.candidates[0].rejected_reason;
  EXPECT_NE(p.candidates[0].rejected_reason.find("activations"), std::string::npos);
  EXPECT_NE(p.candidates[0].rejected_reason.find("over the budget"), std::string::npos);
}

TEST(Plan, BadInputNamesTheOption) {
  const GpuSpec& gpu = find_gpu("A100-80GB");
  auto expect_error = [&](PlanRequest r, const std::string& option) {
    r.estimator = FakeEstimator{};
    try {
      plan(llama7b(), r, gpu);
      ADD_FAILURE() << "no error for " << option;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(option), std::string::npos) << e.what();
    }
  };
  PlanRequest r;
  r.gpus = 0;
  expect_error(r, "--gpus");
  r.gpus = 8;
  r.nodes = 3;
  expect_error(r, "--nodes");
  r.nodes = 1;
  r.seq = 1;
  expect_error(r, "--seq");
  r.seq = 512;
  r.margin = 1.5;
  expect_error(r, "--margin");
  r.margin = 0.05;
  r.methods = {Method::kSingle};
  expect_error(r, "--methods");
}

TEST(Plan, StepTimeModel) {
  const ModelSpec& m = llama7b();
  const GpuSpec& gpu = find_gpu("A100-80GB");
  TrainingSetup s;
  s.seq = 2048;
  PlanCandidate c;
  c.method = Method::kDdp;
  c.dp = 8;
  c.micro_batch = 4;
  c.trainable_params = m.params();
  StepTime ddp = step_time(m, s, c, gpu, 1, StepTimeOptions{});
  EXPECT_GT(ddp.tokens_per_s, 0);
  // 6 psi + attention: between 6 and 7 x params per token at 2k tokens.
  EXPECT_GT(ddp.flops_per_token, 6.0 * static_cast<double>(m.params()));
  EXPECT_LT(ddp.flops_per_token, 7.5 * static_cast<double>(m.params()));
  // At 50 % of 312 TFLOPS, ~3700 tokens/s per GPU: the bound is compute.
  EXPECT_GT(ddp.tokens_per_s, 2500);
  EXPECT_LT(ddp.tokens_per_s, 4000);

  PlanCandidate ckpt = c;
  ckpt.checkpointing = CheckpointMode::kReentrant;
  StepTime rec = step_time(m, s, ckpt, gpu, 1, StepTimeOptions{});
  EXPECT_GT(rec.flops_per_token, ddp.flops_per_token * 1.25);
  EXPECT_LT(rec.tokens_per_s, ddp.tokens_per_s);

  PlanCandidate lora = c;
  lora.finetune = FinetuneMode::kLora;
  lora.trainable_params = 4'000'000;
  StepTime lt = step_time(m, s, lora, gpu, 1, StepTimeOptions{});
  EXPECT_LT(lt.flops_per_token, ddp.flops_per_token * 0.75);

  // Across 4 nodes with 8 accumulated micro-batches, DDP's one all-reduce per
  // step beats ZeRO-3's parameter gathers every micro-batch.
  PlanCandidate z3 = c;
  z3.method = Method::kZero3;
  z3.micro_batch = 1;
  z3.grad_accum = 8;
  PlanCandidate d1 = z3;
  d1.method = Method::kDdp;
  EXPECT_LT(step_time(m, s, z3, gpu, 4, StepTimeOptions{}).tokens_per_s,
            step_time(m, s, d1, gpu, 4, StepTimeOptions{}).tokens_per_s);
  // Across nodes, data-parallel traffic slows ZeRO-3 down further.
  EXPECT_LT(step_time(m, s, z3, gpu, 4, StepTimeOptions{}).tokens_per_s,
            step_time(m, s, z3, gpu, 1, StepTimeOptions{}).tokens_per_s);

  PlanCandidate pp = c;
  pp.method = Method::kMegatron;
  pp.dp = 2;
  pp.pp = 4;
  pp.grad_accum = 4;
  StepTime few = step_time(m, s, pp, gpu, 1, StepTimeOptions{});
  pp.grad_accum = 32;
  StepTime many = step_time(m, s, pp, gpu, 1, StepTimeOptions{});
  EXPECT_NEAR(few.bubble_s / (few.step_s), 3.0 / 7.0, 0.1);
  EXPECT_GT(many.tokens_per_s, few.tokens_per_s);
  // Interleaved with V = 2: the bubble is (p − 1)/V slots, (p − 1)/(V·m) of
  // the ideal time, and each rank sends V times as often.
  PlanCandidate vp = pp;
  vp.grad_accum = 4;
  vp.vp = 2;
  StepTime inter = step_time(m, s, vp, gpu, 1, StepTimeOptions{});
  double per_mb_plain = few.bubble_s / 3.0;
  double per_mb_inter = inter.bubble_s / 1.5;
  EXPECT_NEAR(inter.pp_comm_s, 2 * few.pp_comm_s, 1e-12);
  EXPECT_NEAR(per_mb_inter - per_mb_plain, few.pp_comm_s / 4, 1e-9);  // one more p2p share
  EXPECT_NEAR(inter.step_s - few.step_s, (4 + 1.5) * per_mb_inter - (4 + 3) * per_mb_plain, 1e-9);
  EXPECT_LT(inter.step_s, few.step_s);
}

// Elementwise work is memory-bound: ColossalAI 1D TP replicates it on every TP
// rank, Megatron splits what is inside its column/row pairs; materialized
// attention scores (eager) cost HBM traffic that fused kernels do not.
TEST(Plan, StepTimeElementwiseTraffic) {
  ModelSpec m = load_model("facebook/opt-1.3b");
  const GpuSpec& gpu = find_gpu("V100-16GB");
  TrainingSetup s;
  s.seq = 512;
  s.precision = Precision::kFp16Mixed;
  s.attention = AttentionImpl::kEager;
  PlanCandidate c;
  c.method = Method::kGemini;
  c.dp = 4;
  c.micro_batch = 8;
  c.checkpointing = CheckpointMode::kReentrant;
  c.trainable_params = m.params();
  StepTime dp = step_time(m, s, c, gpu, 1, StepTimeOptions{});
  EXPECT_GT(dp.memory_s, 0.05 * dp.compute_s);
  EXPECT_LT(dp.memory_s, dp.compute_s);
  // Gemini at the paper's pin gathers and reduce-scatters synchronously.
  EXPECT_GT(dp.dp_comm_s, 0);

  PlanCandidate tp = c;
  tp.method = Method::kColossal1d;
  tp.dp = 1;
  tp.tp = 4;
  StepTime colo = step_time(m, s, tp, gpu, 1, StepTimeOptions{});
  EXPECT_DOUBLE_EQ(colo.memory_s, dp.memory_s);  // replicated: the same work per rank
  EXPECT_NEAR(colo.compute_s, dp.compute_s / 4, dp.compute_s * 0.15);
  tp.method = Method::kMegatron;
  StepTime meg = step_time(m, s, tp, gpu, 1, StepTimeOptions{});
  EXPECT_LT(meg.memory_s, colo.memory_s * 0.6);
  EXPECT_GT(meg.memory_s, colo.memory_s / 4);  // norms and residuals stay whole
  tp.sequence_parallel = true;
  EXPECT_LT(step_time(m, s, tp, gpu, 1, StepTimeOptions{}).memory_s, meg.memory_s);

  s.attention = AttentionImpl::kSdpaFlash;
  EXPECT_LT(step_time(m, s, c, gpu, 1, StepTimeOptions{}).memory_s, dp.memory_s * 0.8);
}

// Liger's fused cross-entropy: about 4 bytes of logits traffic per vocabulary
// entry and token instead of 24 (docs/planner.md); nothing for model types
// Liger does not patch.
TEST(Plan, StepTimeLigerLossTraffic) {
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  const GpuSpec& gpu = find_gpu("A100-80GB");
  TrainingSetup s;
  s.seq = 1024;
  s.attention = AttentionImpl::kSdpa;
  PlanCandidate c;
  c.micro_batch = 4;
  c.trainable_params = m.params();
  StepTime eager = step_time(m, s, c, gpu, 1, StepTimeOptions{});
  s.fw.liger = true;
  StepTime liger = step_time(m, s, c, gpu, 1, StepTimeOptions{});
  double tokens = 4.0 * 1024;
  double bw = gpu.memory_bandwidth_gbps * 1e9 * StepTimeOptions{}.memory_efficiency;
  EXPECT_NEAR(eager.memory_s - liger.memory_s, tokens * 20 * static_cast<double>(m.vocab_size) / bw,
              1e-9);
  EXPECT_DOUBLE_EQ(liger.compute_s, eager.compute_s);
  ModelSpec opt = load_model("facebook/opt-1.3b");
  EXPECT_DOUBLE_EQ(step_time(opt, s, c, gpu, 1, StepTimeOptions{}).memory_s, [&] {
    TrainingSetup e = s;
    e.fw.liger = false;
    return step_time(opt, e, c, gpu, 1, StepTimeOptions{}).memory_s;
  }());
}

// The LLMem paper's Table 3 (4x V100 16 GB, sequence 512; shared/docs/llmem-paper.md §5.5):
// which of 4DP, 2DP+2TP and 4TP run out of memory and which is fastest.
struct Table3Row {
  const char* model;
  bool oom_4dp, oom_2dp2tp, oom_4tp;
  const char* fastest;  ///< "" : CPU offloading
};
constexpr Table3Row kTable3[] = {
    {"facebook/opt-1.3b", false, false, false, "4DP"},
    {"facebook/opt-2.7b", true, false, false, "4TP"},
    {"bigscience/bloom-1b1", false, false, false, "4DP"},
    {"bigscience/bloom-3b", true, true, false, "4TP"},
    {"microsoft/BioGPT-Large", false, false, false, "4DP"},
    {"Salesforce/codegen-2B-nl", true, false, false, "4TP"},
    {"bigcode/gpt_bigcode-santacoder", false, false, false, "4DP"},
    {"EleutherAI/gpt-neo-1.3B", false, false, false, "4DP"},
    {"huggyllama/llama-7b", true, true, true, ""},
};

/// Rows where the equations (6)-(10), with our m_base (the CUDA context) and
/// the catalog's V100 capacity, disagree with the measured table: the
/// equations fit a configuration that ran out of memory. docs/planner.md
/// quantifies the memory they leave out; the model is not bent to match.
const std::map<std::string, std::string>& table3_known_disagreements() {
  static const std::map<std::string, std::string> k = {
      {"facebook/opt-2.7b", "4DP fits at batch 12 by the equations; measured OOM"},
      {"bigscience/bloom-3b", "2DP+2TP fits at batch 3 by the equations; measured OOM"},
      {"Salesforce/codegen-2B-nl", "4DP fits at batch 6 by the equations; measured OOM"},
  };
  return k;
}

TEST(PaperPlan, Table3) {
  const GpuSpec& v100 = find_gpu("V100-16GB");
  int agree = 0;
  for (const Table3Row& row : kTable3) {
    ModelSpec m = load_model(row.model);
    PaperPlan p = paper_plan(m, 4, 512, v100);
    std::map<std::string, const PaperChoice*> by_name;
    for (const PaperChoice& c : p.methods)
      by_name[c.name] = &c;
    ASSERT_TRUE(by_name.count("4DP") && by_name.count("2DP+2TP") && by_name.count("4TP"));
    bool oom_4dp = by_name["4DP"]->max_batch == 0;
    bool oom_22 = by_name["2DP+2TP"]->max_batch == 0;
    bool oom_4tp = by_name["4TP"]->max_batch == 0;
    // Fastest by Algorithm 1's score among the three columns of the table.
    std::string fastest;
    double best = 0;
    for (const char* name : {"4DP", "4TP", "2DP+2TP"}) {
      if (by_name[name]->score > best) {
        best = by_name[name]->score;
        fastest = name;
      }
    }
    std::ostringstream got;
    got << row.model << ": 4DP " << by_name["4DP"]->max_batch << ", 2DP+2TP "
        << by_name["2DP+2TP"]->max_batch << ", 4TP " << by_name["4TP"]->max_batch << ", fastest "
        << (fastest.empty() ? "offload" : fastest) << "; free at batch 1 (MiB):";
    for (const char* name : {"4DP", "2DP+2TP", "4TP"}) {
      const PaperChoice& c = *by_name[name];
      uint64_t at1 = paper_peak(m, c.method, c.dp, c.tp, 1, 512, v100);
      got << " " << name << " "
          << (static_cast<double>(v100.capacity_bytes) - static_cast<double>(at1)) / kMiB;
    }
    got << ", params " << m.params();
    bool same = oom_4dp == row.oom_4dp && oom_22 == row.oom_2dp2tp && oom_4tp == row.oom_4tp &&
                fastest == row.fastest;
    auto known = table3_known_disagreements().find(row.model);
    if (known == table3_known_disagreements().end()) {
      EXPECT_TRUE(same) << got.str();
    } else {
      EXPECT_FALSE(same) << "now agrees, drop the known disagreement: " << got.str();
    }
    agree += same ? 1 : 0;
    std::printf("%s%s\n", got.str().c_str(), same ? "" : "  (differs from Table 3)");
  }
  EXPECT_EQ(agree, 6);
}

// llmem's own plan on the Table 3 setting (ColossalAI profile: Gemini and 1D
// TP, fp16, checkpointing). Informational until every method is simulated:
// prints what the simulation says beside the table; asserts the structure.
TEST(Plan, Table3SettingWithTheSimulation) {
  const GpuSpec& v100 = find_gpu("V100-16GB");
  for (const Table3Row& row : kTable3) {
    ModelSpec m = load_model(row.model);
    PlanRequest r;
    r.gpus = 4;
    r.seq = 512;
    r.colossalai = true;
    r.margin = 0;
    r.base.precision = Precision::kFp16Mixed;
    Plan p = plan(m, r, v100);
    ASSERT_EQ(p.candidates.size(), 3u) << row.model;
    std::string line = std::string(row.model) + ":";
    for (const PlanCandidate& c : p.candidates) {
      line += " [" + candidate_label(c) + " max " + std::to_string(c.max_micro_batch);
      if (!c.fits)
        line += ": " + c.rejected_reason.substr(0, 60);
      line += "]";
      EXPECT_EQ(c.fits, c.max_micro_batch > 0);
    }
    line += " choice " + (p.choice >= 0 ? candidate_label(p.candidates[0]) : std::string("none"));
    // Which columns run out of memory, by the simulation. OPT-2.7b under 4DP
    // is the one disagreement: the simulation fits micro-batch 1 with
    // 0.08 GiB to spare (docs/planner.md).
    std::map<std::pair<int, int>, bool> oom;
    for (const PlanCandidate& c : p.candidates)
      oom[{c.dp, c.tp}] = !c.fits;
    bool oom_4dp = std::string(row.model) == "facebook/opt-2.7b" ? !oom[{4, 1}] : oom[{4, 1}];
    EXPECT_EQ(oom_4dp, row.oom_4dp) << line;
    EXPECT_EQ((oom[{2, 2}]), row.oom_2dp2tp) << line;
    EXPECT_EQ((oom[{1, 4}]), row.oom_4tp) << line;
    std::printf("%s\n", line.c_str());
  }
}

TEST(PaperPlan, DpTpGatherTermForAnyLayout) {
  ModelSpec m = load_model("facebook/opt-1.3b");
  const GpuSpec& v100 = find_gpu("V100-16GB");
  // (4, 2): the literal (10) and the general form coincide.
  EXPECT_EQ(paper_peak(m, PaperMethod::kDpTp, 2, 2, 2, 512, v100, true),
            paper_peak(m, PaperMethod::kDpTp, 2, 2, 2, 512, v100, false));
  // (8 GPUs, tp 2): literal keeps m_p16 (1 - 2/8) gathered, the general m_p16 / 2.
  EXPECT_GT(paper_peak(m, PaperMethod::kDpTp, 4, 2, 2, 512, v100, true),
            paper_peak(m, PaperMethod::kDpTp, 4, 2, 2, 512, v100, false));
  // ADP's gathered fp16 does not shrink with more GPUs; TP's shards do.
  EXPECT_GT(paper_peak(m, PaperMethod::kAdp, 4, 1, 1, 512, v100),
            paper_peak(m, PaperMethod::kTp, 1, 4, 1, 512, v100));
}

}  // namespace

namespace cli {
namespace {

using testing::Result;
using testing::run_cli;

TEST(PlanCli, JsonContractWhenSomethingFits) {
  Result r =
      run_cli({"plan", "--model", "facebook/opt-125m", "--gpus", "1", "--gpu-mem", "8", "--seq",
               "256", "--allow", "ckpt,lora", "--format", "json", "--dataset-tokens", "1000000"});
  ASSERT_EQ(r.code, kExitOk) << r.err << r.out;
  nlohmann::json j = nlohmann::json::parse(r.out);
  ASSERT_TRUE(j["choice"].is_object());
  for (const char* k : {"method", "dp", "tp", "pp", "micro_batch", "peak_bytes", "tokens_per_s"}) {
    EXPECT_TRUE(j["choice"].contains(k)) << k;
  }
  EXPECT_EQ(j["choice"]["method"], "single");
  EXPECT_GT(j["choice"]["tokens_per_s"].get<double>(), 0);
  ASSERT_TRUE(j["candidates"].is_array());
  EXPECT_EQ(j["candidates"].size(), 4u);
  for (const auto& c : j["candidates"]) {
    for (const char* k : {"method", "dp", "tp", "pp", "micro_batch", "peak_bytes", "tokens_per_s",
                          "max_micro_batch", "rejected_reason"}) {
      EXPECT_TRUE(c.contains(k)) << k;
    }
    EXPECT_TRUE(c["rejected_reason"].is_null());
    EXPECT_GE(c["max_micro_batch"].get<int64_t>(), c["micro_batch"].get<int64_t>());
  }
  EXPECT_GT(j["epoch_s"].get<double>(), 0);
}

TEST(PlanCli, AllowInterleavedAddsVirtualStageFamilies) {
  // OPT-125m: 12 layers split into 2·pp = 4 virtual stages on 2 GPUs.
  Result r = run_cli({"plan", "--model", "facebook/opt-125m", "--gpus", "2", "--methods",
                      "megatron", "--allow", "interleaved", "--seq", "256", "--max-micro-batch",
                      "8", "--format", "json", "--top", "0"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out);
  std::map<std::string, int64_t> stages;
  for (const auto& c : j["candidates"])
    stages[c["label"].get<std::string>()] = c["virtual_stages"].get<int64_t>();
  EXPECT_EQ(stages, (std::map<std::string, int64_t>{{"megatron dp=1 pp=2 vp=2", 2},
                                                    {"megatron dp=1 pp=2", 1},
                                                    {"megatron dp=1 tp=2", 1}}));
  Result plain =
      run_cli({"plan", "--model", "facebook/opt-125m", "--gpus", "2", "--methods", "megatron",
               "--seq", "256", "--max-micro-batch", "8", "--format", "json", "--top", "0"});
  ASSERT_EQ(plain.code, kExitOk) << plain.err;
  EXPECT_EQ(nlohmann::json::parse(plain.out)["candidates"].size(), 2u);
  Result bad =
      run_cli({"plan", "--model", "facebook/opt-125m", "--gpus", "2", "--allow", "interleave"});
  EXPECT_EQ(bad.code, kExitBadInput);
  EXPECT_NE(bad.err.find("--allow"), std::string::npos) << bad.err;
}

TEST(PlanCli, ExitOneWhenNothingFits) {
  Result r = run_cli({"plan", "--model", "meta-llama/Llama-2-7b-hf", "--gpus", "1", "--gpu-mem",
                      "2", "--format", "json"});
  ASSERT_EQ(r.code, kExitDoesNotFit) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_TRUE(j["choice"].is_null());
  ASSERT_EQ(j["candidates"].size(), 1u);
  EXPECT_EQ(j["candidates"][0]["max_micro_batch"], 0);
  EXPECT_TRUE(j["candidates"][0]["rejected_reason"].is_string());
  Result t =
      run_cli({"plan", "--model", "meta-llama/Llama-2-7b-hf", "--gpus", "1", "--gpu-mem", "2"});
  EXPECT_EQ(t.code, kExitDoesNotFit);
  EXPECT_NE(t.out.find("nothing fits"), std::string::npos) << t.out;
}

TEST(PlanCli, BadInputIsExitTwoNamingTheOption) {
  struct Case {
    std::vector<const char*> args;
    const char* option;
  };
  std::vector<Case> cases = {
      {{"--gpus", "0"}, "--gpus"},
      {{"--gpus", "1", "--allow", "lora,sparse"}, "--allow"},
      {{"--gpus", "2", "--methods", "zero4"}, "--methods"},
      {{"--gpus", "1", "--margin", "150"}, "--margin"},
      {{"--gpus", "1", "--gpu", "B300"}, "--gpu"},
      {{"--gpus", "4", "--nodes", "3"}, "--nodes"},
      {{"--gpus", "1", "--global-batch", "0"}, "--global-batch"},
      {{"--gpus", "1", "--precision", "fp8"}, "--precision"},
      {{"--gpus", "1", "--max-seq", "--min-gpus"}, "--max-seq"},
  };
  for (const Case& c : cases) {
    std::vector<const char*> args = {"plan", "--model", "facebook/opt-125m"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    Result r = run_cli(args);
    EXPECT_EQ(r.code, kExitBadInput) << c.option << ": " << r.out;
    EXPECT_NE(r.err.find(c.option), std::string::npos) << r.err;
  }
  Result missing = run_cli({"plan", "--model", "facebook/opt-125m"});
  EXPECT_EQ(missing.code, kExitBadInput);
}

// plan --recipe: the recipe's framework, fine-tuning mode and checkpointing
// are kept; the micro-batch (and with several GPUs the FSDP layout) is searched.
TEST(PlanCli, PlansAroundARecipe) {
  const std::string recipe =
      std::string(LLMEM_TEST_DATA_DIR) + "/recipes/torchtune-llama3_2-3B_lora_single_device.yaml";
  Result r = run_cli({"plan", "--model", "meta-llama/Llama-3.2-3B", "--gpus", "1", "--gpu",
                      "RTX4090", "--seq", "1024", "--recipe", recipe.c_str(), "--format", "json"});
  ASSERT_EQ(r.code, kExitOk) << r.err << r.out;
  EXPECT_NE(r.err.find("warning: "), std::string::npos);  // the recipe's unmodelled loss
  nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["framework"], "torchtune");
  EXPECT_EQ(j["precision"], "bf16");
  ASSERT_EQ(j["candidates"].size(), 1u);  // the recipe's own: single, LoRA, checkpointing
  EXPECT_EQ(j["choice"]["label"], "single +ckpt +lora");
  // The largest micro-batch agrees with estimates of the same recipe.
  int64_t best = j["choice"]["max_micro_batch"].get<int64_t>();
  ASSERT_GT(best, 0);
  auto peak = [&](int64_t batch) {
    Result e = run_cli({"estimate", "--model", "meta-llama/Llama-3.2-3B", "--gpu", "RTX4090",
                        "--seq", "1024", "--recipe", recipe.c_str(), "--batch",
                        std::to_string(batch).c_str(), "--format", "json"});
    EXPECT_EQ(e.err.find("error"), std::string::npos) << e.err;
    return nlohmann::json::parse(e.out)["peak"]["device_bytes"].get<uint64_t>();
  };
  uint64_t budget = j["budget_bytes"].get<uint64_t>();
  EXPECT_LE(peak(best), budget);
  EXPECT_GT(peak(best + 1), budget);
}

TEST(PlanCli, TorchtuneAndLitgptSearchFsdpOnly) {
  for (const char* framework : {"torchtune", "litgpt"}) {
    Result r =
        run_cli({"plan", "--model", "meta-llama/Llama-3.2-1B", "--gpus", "4", "--gpu", "A100-80GB",
                 "--framework", framework, "--allow", "ckpt", "--top", "0", "--format", "json"});
    ASSERT_EQ(r.code, kExitOk) << r.err;
    nlohmann::json j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["framework"], framework);
    ASSERT_EQ(j["candidates"].size(), 2u) << framework;  // with and without checkpointing
    for (const auto& c : j["candidates"])
      EXPECT_EQ(c["method"], "fsdp") << framework;
  }
  // A recipe is a torchtune or LitGPT file: not with the paper's framework,
  // and its framework must be the one named.
  const std::string litgpt =
      std::string(LLMEM_TEST_DATA_DIR) + "/recipes/litgpt-llama-2-7b-lora.yaml";
  Result bad = run_cli({"plan", "--model", "meta-llama/Llama-2-7b-hf", "--gpus", "1", "--framework",
                        "colossalai", "--recipe", litgpt.c_str()});
  EXPECT_EQ(bad.code, kExitBadInput);
  EXPECT_NE(bad.err.find("--recipe"), std::string::npos) << bad.err;
  Result mismatch = run_cli({"plan", "--model", "meta-llama/Llama-2-7b-hf", "--gpus", "1",
                             "--framework", "torchtune", "--recipe", litgpt.c_str()});
  EXPECT_EQ(mismatch.code, kExitBadInput);
  EXPECT_NE(mismatch.err.find("litgpt file"), std::string::npos) << mismatch.err;
  Result missing = run_cli({"plan", "--model", "meta-llama/Llama-2-7b-hf", "--gpus", "1",
                            "--recipe", "/nonexistent/recipe.yaml"});
  EXPECT_EQ(missing.code, kExitBadInput);
  EXPECT_NE(missing.err.find("/nonexistent/recipe.yaml"), std::string::npos) << missing.err;
}

TEST(PlanCli, InverseQuestions) {
  Result s = run_cli({"plan", "--model", "facebook/opt-125m", "--gpus", "1", "--gpu-mem", "4",
                      "--max-seq", "--format", "json"});
  ASSERT_EQ(s.code, kExitOk) << s.err;
  nlohmann::json j = nlohmann::json::parse(s.out);
  int64_t longest = j["max_seq"].get<int64_t>();
  EXPECT_GT(longest, 64);
  EXPECT_LE(longest, 2048);  // OPT's max_position_embeddings
  EXPECT_EQ(j["seq"].get<int64_t>(), longest);

  Result g = run_cli({"plan", "--model", "facebook/opt-125m", "--gpus", "8", "--gpu-mem", "8",
                      "--min-gpus", "--format", "json"});
  ASSERT_EQ(g.code, kExitOk) << g.err;
  nlohmann::json k = nlohmann::json::parse(g.out);
  EXPECT_EQ(k["min_gpus"].get<int>(), 1);
}

TEST(PlanCli, PaperBesideTheRanking) {
  Result r = run_cli({"plan", "--model", "facebook/opt-1.3b", "--gpus", "4", "--gpu", "V100-16GB",
                      "--framework", "colossalai", "--paper", "--format", "json"});
  ASSERT_NE(r.code, kExitBadInput) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out);
  ASSERT_TRUE(j.contains("paper"));
  EXPECT_EQ(j["paper"]["choice"], "4DP");
  EXPECT_EQ(j["paper"]["methods"].size(), 4u);
  Result t = run_cli({"plan", "--model", "facebook/opt-1.3b", "--gpus", "4", "--gpu", "V100-16GB",
                      "--framework", "colossalai", "--paper"});
  EXPECT_NE(t.out.find("Algorithm 1"), std::string::npos) << t.out;
}

}  // namespace
}  // namespace cli
}  // namespace llmem
