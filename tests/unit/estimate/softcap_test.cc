// Copyright 2026 The llmem Authors.
// Gemma-2 soft-capping and LitGPT's QLoRA embedding swap.

#include <string>

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

}  // namespace
}  // namespace llmem
