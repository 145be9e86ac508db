// Copyright 2026 The llmem Authors.
// Gemma-2 soft-capping, LitGPT's QLoRA embedding swap, and the CPU tier's Gemma traces.

#include <cstdlib>
#include <string>
#include <utility>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "llmem/error.h"
#include "llmem/estimate.h"
#include "llmem/gpu.h"
#include "llmem/model.h"

namespace llmem {
namespace {

// gemma-2-2b with the soft-capping keys replaced.
ModelSpec gemma2(const nlohmann::json& attn, const nlohmann::json& final_cap) {
  nlohmann::json c;
  for (const CatalogEntry& e : catalog()) {
    if (e.name == "google/gemma-2-2b")
      c = nlohmann::json::parse(e.config_json);
  }
  EXPECT_FALSE(c.is_null());
  c["attn_logit_softcapping"] = attn;
  c["final_logit_softcapping"] = final_cap;
  return parse_config(c.dump(), "gemma2-test.json");
}

uint64_t forward_peak(const Estimate& e) {
  return e.phase_peaks[static_cast<size_t>(Phase::kForward)];
}

TEST(Softcap, NullTurnsItOffAndNegativeIsAnError) {
  ModelSpec on = load_model("google/gemma-2-2b");
  EXPECT_EQ(on.attn_logit_softcapping, 50.0);
  EXPECT_EQ(on.final_logit_softcapping, 30.0);
  ModelSpec off = gemma2(nullptr, nullptr);
  EXPECT_EQ(off.attn_logit_softcapping, 0.0);
  EXPECT_EQ(off.final_logit_softcapping, 0.0);
  try {
    gemma2(-1.0, 30.0);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("attn_logit_softcapping"), std::string::npos);
  }
}

TEST(Softcap, EagerAttentionSavesTheTanhOfTheScores) {
  TrainingSetup s;
  s.batch = 2;
  s.seq = 512;
  s.precision = Precision::kBf16;
  s.attention = AttentionImpl::kEager;
  s.device = Device::kCpu;  // exact sizes
  ModelSpec capped = gemma2(50.0, nullptr);
  ModelSpec plain = gemma2(nullptr, nullptr);
  const GpuSpec& gpu = find_gpu("A100-80GB");
  uint64_t with = forward_peak(estimate(capped, s, gpu));
  uint64_t without = forward_peak(estimate(plain, s, gpu));
  // Each layer keeps tanh's bf16 [b, heads, s, s] output for backward.
  const auto scores =
      static_cast<uint64_t>(2 * capped.layers.front().attention.num_heads * 512 * 512 * 2);
  EXPECT_GE(with - without, static_cast<uint64_t>(capped.num_layers) * scores);
  // Hugging Face's SDPA path ignores attention soft-capping.
  s.attention = AttentionImpl::kSdpa;
  EXPECT_EQ(forward_peak(estimate(capped, s, gpu)), forward_peak(estimate(plain, s, gpu)));
  // LitGPT computes capped attention by hand whatever the setting.
  s.framework = Framework::kLitgpt;
  EXPECT_GE(forward_peak(estimate(capped, s, gpu)) - forward_peak(estimate(plain, s, gpu)),
            static_cast<uint64_t>(capped.num_layers) * scores);
}

TEST(Softcap, FinalLogitCappingKeepsTheTanhOfTheLogits) {
  TrainingSetup s;
  s.batch = 1;
  s.seq = 256;
  s.precision = Precision::kBf16;
  s.attention = AttentionImpl::kSdpa;
  s.device = Device::kCpu;
  const GpuSpec& gpu = find_gpu("A100-80GB");
  Estimate with = estimate(gemma2(nullptr, 30.0), s, gpu);
  Estimate without = estimate(gemma2(nullptr, nullptr), s, gpu);
  const uint64_t logits = 256ull * 256000 * 2;  // bf16 [s, vocab]
  const auto loss = static_cast<size_t>(Phase::kLoss);
  EXPECT_GE(with.phase_peaks[loss] - without.phase_peaks[loss], logits);
}

TEST(Softcap, LitgptStableEmbeddingIsAnOption) {
  // litgpt PR #1770: QLoRA swaps wte for a StableEmbedding whose gradient is
  // never cleared and keeps the old weight alive: two embedding-sized tensors.
  ModelSpec m = load_model("google/gemma-2-2b");
  TrainingSetup s;
  s.batch = 1;
  s.seq = 256;
  s.precision = Precision::kBf16;
  s.framework = Framework::kLitgpt;
  s.finetune = FinetuneMode::kQlora;
  s.quant.prepare_kbit = false;  // LitGPT keeps the other weights in bf16
  s.lora.rank = 8;
  s.device = Device::kCpu;
  const GpuSpec& gpu = find_gpu("A100-80GB");
  Estimate now = estimate(m, s, gpu);
  s.fw.stable_embedding = false;
  Estimate before = estimate(m, s, gpu);
  const uint64_t embedding = 256000ull * 2304 * 2;
  // In the steady state's forward pass both are alive.
  EXPECT_GE(forward_peak(now) - forward_peak(before), 2 * embedding);
}

// The CPU tier's tiny Gemma configs (validation/configs/tiny-gemma*.json:
// hidden 128, 2 layers, 4 heads of head_dim 64, vocab 32000; gemma has one KV
// head, gemma2 two), traced as validation/harness/measure_cpu.py runs them:
// batch 2, seq 32, eager, torch 1.13, AdamW without foreach, exact sizes.
ModelSpec tiny(const std::string& family) {
  return load_model(std::string(LLMEM_SOURCE_DIR) + "/validation/configs/tiny-" + family + ".json");
}

TrainingSetup cpu_tier(bool lora, bool ckpt) {
  TrainingSetup s;
  s.batch = 2;
  s.seq = 32;
  s.precision = Precision::kFp32;
  s.attention = AttentionImpl::kEager;
  s.device = Device::kCpu;
  s.torch_version = 113;
  s.optimizer = OptimizerKind::kAdamW;
  if (lora) {
    s.finetune = FinetuneMode::kLora;
    s.lora.rank = 8;
    s.lora.alpha = 16;
    s.lora.targets = {"q_proj", "v_proj"};  // PEFT's default for gemma and gemma2
    s.lora.adapter_fp32 = false;
  }
  if (ckpt)
    s.checkpointing = CheckpointMode::kReentrant;
  return s;
}

uint64_t phase(const Estimate& e, Phase p) {
  return e.phase_peaks[static_cast<size_t>(p)];
}

TEST(Gemma, Gemma2BuildsNoKvCacheInTraining) {
  // Gemma2Model.forward (v4.57) creates a cache only `if use_cache and
  // past_key_values is None and not self.training`; GemmaModel always does.
  const GpuSpec& gpu = find_gpu("A100-80GB");
  for (const char* family : {"gemma", "gemma2"}) {
    TrainingSetup on = cpu_tier(false, false);
    on.use_cache = UseCache::kOn;
    TrainingSetup off = on;
    off.use_cache = UseCache::kOff;
    Estimate with = estimate(tiny(family), on, gpu);
    Estimate without = estimate(tiny(family), off, gpu);
    // gemma: K and V of both layers, [2, 1 KV head, 32, 64] fp32 each
    // (16 384 B), held until the loss is computed.
    uint64_t cache = std::string(family) == "gemma" ? 2 * 2 * 16384 : 0;
    EXPECT_EQ(phase(with, Phase::kLoss) - phase(without, Phase::kLoss), cache) << family;
  }
}

TEST(Gemma, TorchBefore2MeanKeepsTheSquaresOfEveryRmsNorm) {
  // torch 1.13's mean.dim backward is written with self.sizes(), so the
  // pow(2) output [2, 32, 128] fp32 (32 768 B) of every RMSNorm stays saved:
  // 2 norms per gemma layer, 4 per gemma2 layer, and the final norm.
  const GpuSpec& gpu = find_gpu("A100-80GB");
  TrainingSetup old = cpu_tier(false, false);
  TrainingSetup now = old;
  now.torch_version = 204;
  for (const auto& [family, norms] :
       {std::pair<const char*, uint64_t>{"gemma", 5}, {"gemma2", 9}}) {
    uint64_t d = phase(estimate(tiny(family), old, gpu), Phase::kForward) -
                 phase(estimate(tiny(family), now, gpu), Phase::kForward);
    EXPECT_EQ(d, norms * 32768) << family;
  }
}

TEST(Gemma, MatchesTheExactCpuStorageCounts) {
  // validation/data/cpu_tier.csv (storage_peak_bytes) and the per-phase exact
  // counts of the same measure_cpu.py runs (torch 1.13.1, 2 steps, step 2).
  // The estimate leaves out only a few hundred bytes of small tensors.
  struct Row {
    const char* family;
    bool lora, ckpt;
    Phase phase;
    uint64_t measured;
  };
  const Row rows[] = {
      {"gemma", false, false, Phase::kBackward, 107228888},  // tied sum at the end
      {"gemma", false, false, Phase::kForward, 66417640},
      {"gemma", true, true, Phase::kBackward, 43502636},  // PEFT input hook
      {"gemma", true, true, Phase::kForward, 27151400},
      {"gemma2", false, false, Phase::kForward, 75405352},  // logits soft-capped
      {"gemma2", false, false, Phase::kBackward, 107761384},
      {"gemma2", true, false, Phase::kLoss, 45348120},
      {"gemma2", true, false, Phase::kBackward, 53506312},
  };
  const GpuSpec& gpu = find_gpu("A100-80GB");
  for (const Row& r : rows) {
    Estimate e = estimate(tiny(r.family), cpu_tier(r.lora, r.ckpt), gpu);
    auto est = static_cast<int64_t>(phase(e, r.phase));
    auto meas = static_cast<int64_t>(r.measured);
    EXPECT_LE(std::abs(est - meas), 1024)
        << r.family << (r.lora ? " lora" : "") << (r.ckpt ? " ckpt" : "") << " phase "
        << static_cast<int>(r.phase) << ": estimated " << est << ", measured " << meas;
  }
}

}  // namespace
}  // namespace llmem
