// Copyright 2026 The llmem Authors.
// Sparse MoE blocks of transformers v4.57 (MixtralSparseMoeBlock,
// Qwen2MoeSparseMoeBlock): what they keep for backward, the router logits
// kept for the aux loss, and Qwen2-MoE's second mask. Exact CPU sizes.

#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "llmem/estimate.h"
#include "llmem/gpu.h"
#include "llmem/model.h"

namespace llmem {
namespace {

using nlohmann::json;

// validation/configs/tiny-mixtral.json's shape: hidden 128, 4 experts of 256.
json tiny_mixtral() {
  return {{"model_type", "mixtral"},      {"vocab_size", 32000},
          {"hidden_size", 128},           {"intermediate_size", 256},
          {"num_hidden_layers", 2},       {"num_attention_heads", 4},
          {"num_key_value_heads", 2},     {"max_position_embeddings", 32768},
          {"num_local_experts", 4},       {"num_experts_per_tok", 2},
          {"tie_word_embeddings", false}, {"torch_dtype", "float32"}};
}

json tiny_qwen2_moe() {
  return {{"model_type", "qwen2_moe"},
          {"vocab_size", 32000},
          {"hidden_size", 128},
          {"intermediate_size", 384},
          {"num_hidden_layers", 3},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 4},
          {"max_position_embeddings", 8192},
          {"mlp_only_layers", {2}},
          {"num_experts", 8},
          {"num_experts_per_tok", 4},
          {"moe_intermediate_size", 64},
          {"shared_expert_intermediate_size", 256},
          {"tie_word_embeddings", false},
          {"torch_dtype", "float32"}};
}

TrainingSetup cpu_fp32() {
  TrainingSetup s;
  s.batch = 2;
  s.seq = 32;
  s.precision = Precision::kFp32;
  s.attention = AttentionImpl::kEager;
  s.device = Device::kCpu;  // exact sizes
  return s;
}

uint64_t peak(const json& c, const TrainingSetup& s, Phase p) {
  Estimate e = estimate(parse_config(c.dump(), "moe-test.json"), s, find_gpu("A100-80GB"));
  return e.phase_peaks[static_cast<size_t>(p)];
}

TEST(Moe, EveryRoutedTokenKeepsItsExpertActivationsAndTheIndexAddSource) {
  // Forward peak (end of forward, every layer's saved tensors alive) with top-2
  // minus top-1: 64 more token-expert assignments per layer (tokens 2 × 32).
  // Each keeps, fp32: the gathered state, w2's output and the weighted output
  // that index_add_ saves (3 × 128 × 4), w1's output, silu's output, w3's output
  // and their product (4 × 256 × 4), its routing weight (4), its row of the
  // torch.where indices (2 × int64), its topk index (int64) and its part of the
  // clone the in-place renormalisation saves (4).
  json k1 = tiny_mixtral();
  k1["num_experts_per_tok"] = 1;
  TrainingSetup s = cpu_fp32();
  const uint64_t per = 3 * 128 * 4 + 4 * 256 * 4 + 4 + 16 + 8 + 4;
  EXPECT_EQ(per, 5664u);
  EXPECT_EQ(peak(tiny_mixtral(), s, Phase::kForward) - peak(k1, s, Phase::kForward), 2 * 64 * per);
}

TEST(Moe, OutputRouterLogitsKeepsEveryRoutersLogits) {
  // check_model_inputs records each gate's [tokens, experts] output; in fp32
  // nothing else keeps them past their block.
  json on = tiny_mixtral();
  on["output_router_logits"] = true;
  TrainingSetup s = cpu_fp32();
  EXPECT_EQ(peak(on, s, Phase::kForward) - peak(tiny_mixtral(), s, Phase::kForward),
            2u * 64 * 4 * 4);
  // The aux loss adds to the loss phase (its softmax output, one_hot masks...).
  EXPECT_GT(peak(on, s, Phase::kLoss), peak(tiny_mixtral(), s, Phase::kLoss));
}

TEST(Moe, Qwen2MoeBuildsTheSlidingMaskToo) {
  // Qwen2MoeModel.forward (v4.57) makes create_sliding_window_causal_mask
  // next to the full one: one more fp32 [b, 1, s, s] in eager attention. The
  // masks die with the model's forward, before the head; with a 16-token
  // vocabulary the forward peak is the final norm's output, masks alive.
  json c = tiny_qwen2_moe();
  c["vocab_size"] = 16;
  TrainingSetup s = cpu_fp32();
  TrainingSetup old = s;
  old.transformers_version = 456;
  EXPECT_EQ(peak(c, s, Phase::kForward) - peak(c, old, Phase::kForward), 2u * 32 * 32 * 4);
  // Checkpointed layers keep only the full mask (their kwargs).
  s.checkpointing = CheckpointMode::kReentrant;
  old.checkpointing = CheckpointMode::kReentrant;
  EXPECT_EQ(peak(c, s, Phase::kBackward), peak(c, old, Phase::kBackward));
}

TEST(Moe, NormTopkProbSavesTheDivisorAndADividendClone) {
  // routing_weights /= routing_weights.sum(-1, keepdim=True): [tokens, 1] and
  // [tokens, top_k] fp32 kept per sparse layer (2 of them).
  json norm = tiny_qwen2_moe();
  norm["norm_topk_prob"] = true;
  TrainingSetup s = cpu_fp32();
  EXPECT_EQ(peak(norm, s, Phase::kForward) - peak(tiny_qwen2_moe(), s, Phase::kForward),
            2u * (64 * 4 + 64 * 4 * 4));
}

}  // namespace
}  // namespace llmem
