// Copyright 2026 The llmem Authors.
// The hf profile's rules for gpt_neox, falcon, stablelm and olmo that the CPU
// tier's measurements pinned down (validation/README.md), each against the
// bytes it should move. Tiny configs of validation/configs, batch 2, seq 32,
// eager attention, torch 1.13 (the tier's), exact CPU sizes.

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "llmem/estimate.h"
#include "llmem/gpu.h"
#include "llmem/model.h"

#include "trace/events.h"
#include "trace/program.h"

namespace llmem {
namespace {

ModelSpec tiny(const std::string& name) {
  return load_model(std::string(LLMEM_SOURCE_DIR) + "/validation/configs/tiny-" + name + ".json");
}

TrainingSetup tier(Precision p) {
  TrainingSetup s = test_util::cpu_run(Framework::kHf, FinetuneMode::kFull, 2, 32);
  s.precision = p;
  s.attention = AttentionImpl::kEager;
  s.torch_version = 113;
  return s;
}

int64_t phase_peak(const ModelSpec& m, const TrainingSetup& s, Phase p) {
  Estimate e = estimate(m, s, find_gpu("A100-80GB"));
  return static_cast<int64_t>(e.phase_peaks[static_cast<size_t>(p)]);
}

// What the training forward's DynamicCache adds to the forward peak (it lives
// until the loss returns): the config's use_cache (true) against off.
int64_t cache_bytes(const ModelSpec& m, TrainingSetup s) {
  int64_t with = phase_peak(m, s, Phase::kForward);
  s.use_cache = UseCache::kOff;
  return with - phase_peak(m, s, Phase::kForward);
}

// GPT-NeoX (2 layers, 4 heads of 32, b 2, s 32) under bf16 autocast: rotary
// promotes K to fp32 and the cache's fp32 empty tensor promotes V, so each
// layer's cache holds fp32 K and V (2 × 2·4·32·32·4 B) next to the bf16 casts
// attention saves. In fp32 the copies are what attention saves anyway.
// transformers before 4.45 built no cache in GPT-NeoX's training forward.
TEST(NeoxFamilies, GptNeoXCacheCopiesAreFp32UnderAutocast) {
  ModelSpec m = tiny("gpt-neox");
  TrainingSetup s = tier(Precision::kBf16Mixed);
  EXPECT_EQ(cache_bytes(m, s), 2 * 2 * (2 * 4 * 32 * 32 * 4));
  EXPECT_EQ(cache_bytes(m, tier(Precision::kFp32)), 0);
  s.transformers_version = 444;
  EXPECT_EQ(cache_bytes(m, s), 0);
}

// Falcon-7B layout (multi_query): the cache holds the one K/V head per layer
// (2·1·32·32·4 B each), while attention saves matmul's copies expanded to
// the 4 heads. new_decoder_architecture broadcasts K/V to every head in
// _split_heads, so the cached copies are what attention saves: nothing more.
TEST(NeoxFamilies, FalconCacheHoldsTheMultiQueryHead) {
  EXPECT_EQ(cache_bytes(tiny("falcon"), tier(Precision::kFp32)), 2 * 2 * (2 * 32 * 32 * 4));
  EXPECT_EQ(cache_bytes(tiny("falcon-newarch"), tier(Precision::kFp32)), 0);
}

// FalconLinear computes input @ weight.T: autocast casts the transposed view,
// not a leaf, so the bf16 copy is not cached. Under reentrant checkpointing
// the no-grad forward frees each copy after its matmul, and in backward the
// recomputed layer's copies die with its backward: the largest set of weight
// copies alive at once is the tied lm_head's cached cast (an nn.Linear,
// 32000 × 128 × 2 B), not every layer's projections on top of it.
TEST(NeoxFamilies, FalconLinearCastsAreNotCached) {
  ModelSpec m = tiny("falcon");
  TrainingSetup s = tier(Precision::kBf16Mixed);
  s.checkpointing = CheckpointMode::kReentrant;
  EXPECT_EQ(test_util::max_live_in_steps(trace::build_trace(m, s).events, Component::kWeightCopies),
            32000 * 128 * 2);
}

// OlmoAttention clamps q, k and v in place (clip_qkv); autograd keeps a clone
// of each projection output for clamp's backward: 2 layers × 3 × 2·32·128·4
// B in fp32. Under LoRA on q_proj and v_proj the first layer's k_proj output
// needs no gradient (its input does not), so there are 5 clones.
TEST(NeoxFamilies, OlmoClipQkvKeepsAClonePerProjection) {
  std::string path = std::string(LLMEM_SOURCE_DIR) + "/validation/configs/tiny-olmo.json";
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string key = "\"clip_qkv\": 8.0";
  size_t at = text.find(key);
  ASSERT_NE(at, std::string::npos);
  text.replace(at, key.size(), "\"clip_qkv\": null");
  auto noclip = std::filesystem::temp_directory_path() / "llmem-tiny-olmo-noclip.json";
  std::ofstream(noclip) << text;
  ModelSpec clipped = tiny("olmo");
  ModelSpec plain = load_model(noclip.string());
  std::filesystem::remove(noclip);
  const int64_t proj = 2 * 32 * 128 * 4;
  TrainingSetup s = tier(Precision::kFp32);
  EXPECT_EQ(phase_peak(clipped, s, Phase::kForward) - phase_peak(plain, s, Phase::kForward),
            6 * proj);
  s.finetune = FinetuneMode::kLora;
  s.lora.rank = 8;
  s.lora.targets = {"q_proj", "v_proj"};
  EXPECT_EQ(phase_peak(clipped, s, Phase::kForward) - phase_peak(plain, s, Phase::kForward),
            5 * proj);
}

// torch 1.13's CPU layer_norm keeps mean and rstd in the input's dtype: a
// bf16 GPT-NeoX (2 layers × 2 LayerNorms + the final one, 2·32 rows) saves 5
// × 2 × 64 bf16 statistics instead of fp32 ones (measured in the CPU tier).
TEST(NeoxFamilies, Bf16LayerNormStatisticsOnTheCpuWithTorch113) {
  ModelSpec m = tiny("gpt-neox");
  TrainingSetup s = tier(Precision::kBf16);
  int64_t old_torch = phase_peak(m, s, Phase::kForward);
  s.torch_version = 204;
  EXPECT_EQ(phase_peak(m, s, Phase::kForward) - old_torch, 5 * 2 * 64 * (4 - 2));
}

// StableLM in the stablelm-2-12b layout (per-head qk LayerNorms, parallel
// residual) is traced, and every head's LayerNorm weight gets its gradient:
// at the end of backward the fp32 gradients of all parameters are alive.
TEST(NeoxFamilies, StableLmPerHeadNormsAreTrained) {
  ModelSpec m = tiny("stablelm-12b");
  ASSERT_TRUE(m.layers.front().attention.qk_norm);
  ASSERT_TRUE(m.layers.front().parallel_residual);
  auto events = trace::build_trace(m, tier(Precision::kFp32)).events;
  EXPECT_EQ(test_util::max_live_in_steps(events, Component::kGradients), 4 * m.params());
}

}  // namespace
}  // namespace llmem
