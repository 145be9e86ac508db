// Copyright 2026 The llmem Authors.
// Qwen3, Phi-3 and Phi details measured on the CPU tier
// (validation/configs/tiny-{qwen3,phi3,phi}.json, validation/data/cpu_tier.csv).

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "llmem/estimate.h"
#include "llmem/gpu.h"
#include "llmem/job.h"
#include "llmem/model.h"

#include "trace/events.h"
#include "trace/program.h"

namespace llmem {
namespace {

nlohmann::json tiny_json(const std::string& family) {
  std::ifstream in(std::string(LLMEM_SOURCE_DIR) + "/validation/configs/tiny-" + family + ".json");
  EXPECT_TRUE(in) << family;
  std::stringstream text;
  text << in.rdbuf();
  return nlohmann::json::parse(text.str());
}

ModelSpec tiny(const std::string& family) {
  return parse_config(tiny_json(family).dump(), "tiny-" + family + ".json");
}

// The CPU tier's setting: batch 2, sequence 32, fp32, eager, full fine-tuning.
TrainingSetup cpu_tier() {
  TrainingSetup s;
  s.batch = 2;
  s.seq = 32;
  s.precision = Precision::kFp32;
  s.attention = AttentionImpl::kEager;
  s.device = Device::kCpu;
  s.torch_version = 113;
  return s;
}

uint64_t phase_peak(const ModelSpec& m, const TrainingSetup& s, Phase p) {
  return estimate(m, s, find_gpu("A100-80GB")).phase_peaks[static_cast<size_t>(p)];
}

constexpr uint64_t kF32 = 4;

TEST(PhiQwen3, Torch113MeanKeepsThePowOutputOfEveryRmsNorm) {
  // RMSNorm's variance = x.pow(2).mean(-1, keepdim=True): torch 1.13's
  // MeanBackward1 keeps the fp32 pow output until backward; torch 2.x keeps
  // only sizes. tiny-qwen3 (hidden 128, 4 heads, 2 KV heads, head_dim 64,
  // 2 layers): per layer input_layernorm and post_attention_layernorm over
  // [b, s, 128], q_norm over [b, s, 4, 64], k_norm over [b, s, 2, 64]; then
  // the final norm. All are alive at the end of the forward.
  ModelSpec m = tiny("qwen3");
  TrainingSetup old_torch = cpu_tier();
  TrainingSetup new_torch = cpu_tier();
  new_torch.torch_version = 204;
  const uint64_t tokens = 2 * 32;
  const uint64_t per_layer = tokens * (128 + 128 + 4 * 64 + 2 * 64) * kF32;  // 163,840
  const uint64_t expected = 2 * per_layer + tokens * 128 * kF32;             // 360,448
  EXPECT_EQ(phase_peak(m, old_torch, Phase::kForward) - phase_peak(m, new_torch, Phase::kForward),
            expected);
}

TEST(PhiQwen3, Phi3ResidualDropoutsKeepTheirNoise) {
  // Phi3DecoderLayer: residual + resid_attn_dropout(attn) and residual +
  // resid_mlp_dropout(mlp); on the CPU each F.dropout saves a noise tensor of
  // the input's size and dtype: 2 per layer, [b, s, hidden] fp32 each.
  ModelSpec m = tiny("phi3");
  ASSERT_DOUBLE_EQ(m.hidden_dropout, 0.1);
  TrainingSetup with = cpu_tier();
  TrainingSetup without = cpu_tier();
  without.dropout = 0.0;
  const uint64_t noise = 2 * 32 * 128 * kF32;
  EXPECT_EQ(phase_peak(m, with, Phase::kForward) - phase_peak(m, without, Phase::kForward),
            2 * 2 * noise);
}

TEST(PhiQwen3, PartialRotaryTablesSpanOnlyTheRotatedChannels) {
  // cos and sin are [1, s, int(head_dim * partial_rotary_factor)] in the
  // embeddings' dtype: 24 of tiny-phi3's 32 head channels at 0.75.
  nlohmann::json full = tiny_json("phi3");
  full["partial_rotary_factor"] = 1.0;
  ModelSpec partial = tiny("phi3");
  ModelSpec whole = parse_config(full.dump(), "tiny-phi3-full-rotary.json");
  TrainingSetup s = cpu_tier();
  auto inputs = [&](const ModelSpec& m) {
    return test_util::max_live_in_steps(trace::build_trace(m, s).events, Component::kInputs);
  };
  // Also the fp32 inv_freq buffer: 16 vs 12 frequencies.
  EXPECT_EQ(inputs(whole) - inputs(partial),
            (2 * 32 * (32 - 24) + (16 - 12)) * static_cast<int64_t>(kF32));
}

TEST(PhiQwen3, Phi3CatsTheRotaryOutputEvenWithFullRotary) {
  // Since v4.49 (PR #35947) Phi-3's apply_rotary_pos_emb returns
  // torch.cat([rotated, q[..., rotary_dim:]]), a copy of q and of k even when
  // the pass-through part is empty (partial_rotary_factor 1.0, Phi-3-mini).
  nlohmann::json full = tiny_json("phi3");
  full["partial_rotary_factor"] = 1.0;
  ModelSpec m = parse_config(full.dump(), "tiny-phi3-full-rotary.json");
  auto forward_alloc = [&](int transformers) {
    TrainingSetup s = cpu_tier();
    s.transformers_version = transformers;
    int64_t bytes = 0;
    for (const trace::Event& e : trace::build_trace(m, s).events) {
      if (e.step == 1 && e.phase == Phase::kForward && e.alloc)
        bytes += e.bytes;
    }
    return bytes;
  };
  // The cat's output is contiguous [b, heads, s, d]: q no longer needs the
  // copy matmul makes of the strided rotary output (one allocation for
  // another), while k still goes through repeat_kv's copy (2 KV heads for 4).
  // So the forward allocates one more k, [b, 2, s, 32] fp32, per layer.
  const int64_t k = 2 * 2 * 32 * 32 * static_cast<int64_t>(kF32);
  EXPECT_EQ(forward_alloc(449) - forward_alloc(448), 2 * k);
  EXPECT_EQ(forward_alloc(457), forward_alloc(449));
}

TEST(PhiQwen3, CheckpointKeepsTheCpuRngStateOnACpu) {
  // torch.utils.checkpoint (preserve_rng_state=True) keeps torch.get_rng_state()
  // (5056 bytes on torch 1.13.1) from each block's forward to its backward, and
  // the recompute takes one more inside fork_rng: per layer and step one
  // allocation in the forward and one in the backward. A GPU trace leaves them
  // out (host memory), as does a run without checkpointing.
  ModelSpec m = tiny("qwen3");
  auto states = [&](bool ckpt, Device device, Phase phase) {
    TrainingSetup s = cpu_tier();
    s.device = device;
    s.checkpointing = ckpt ? CheckpointMode::kReentrant : CheckpointMode::kOff;
    int n = 0;
    for (const trace::Event& e : trace::build_trace(m, s).events)
      n += e.step == 1 && e.alloc && e.phase == phase && e.bytes == 5056 ? 1 : 0;
    return n;
  };
  EXPECT_EQ(states(true, Device::kCpu, Phase::kForward), 2);
  EXPECT_EQ(states(true, Device::kCpu, Phase::kBackward), 2);
  EXPECT_EQ(states(false, Device::kCpu, Phase::kForward), 0);
  EXPECT_EQ(states(true, Device::kCuda, Phase::kForward), 0);
  // Both forward states are alive when the forward ends: the CPU forward peak
  // grows by exactly 2 x 5056 bytes over a trace without them.
  TrainingSetup s = cpu_tier();
  s.checkpointing = CheckpointMode::kReentrant;
  s.finetune = FinetuneMode::kLora;
  s.lora.rank = 8;
  s.lora.targets = {"q_proj", "v_proj"};
  s.lora.adapter_fp32 = false;
  const GpuSpec& gpu = find_gpu("A100-80GB");
  uint64_t fwd = estimate(m, s, gpu).phase_peaks[static_cast<size_t>(Phase::kForward)];
  // measured (validation/harness, tiny-qwen3 fp32 LoRA q,v ckpt b2 s32): 26,869,284 bytes of
  // storage at the forward peak; without the states the estimate was 10,372 short.
  EXPECT_EQ(fwd, 26858912U + 2 * 5056U);
}

TEST(PhiQwen3, HfForwardHoldsTheFinalHiddenStatesThroughItsLoss) {
  // Qwen3ForCausalLM.forward keeps `hidden_states = outputs.last_hidden_state`
  // while it computes the loss. Under LoRA the frozen lm_head saves nothing of
  // its input, so only that name keeps the final norm's fp32 [b, s, 128]
  // output alive in the loss phase. Measured (validation/harness, tiny-qwen3
  // fp32 LoRA q,v b2 s32): 36,693,736 bytes of storage at the loss-phase peak.
  ModelSpec m = tiny("qwen3");
  TrainingSetup s = cpu_tier();
  s.finetune = FinetuneMode::kLora;
  s.lora.rank = 8;
  s.lora.targets = {"q_proj", "v_proj"};
  s.lora.adapter_fp32 = false;
  uint64_t hf = phase_peak(m, s, Phase::kLoss);
  EXPECT_LE(hf, 36693736U);
  EXPECT_GE(hf, 36693736U - 1024);
}

}  // namespace
}  // namespace llmem
