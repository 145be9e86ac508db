// Copyright 2026 The llmem Authors.
// Known-answer tests per family: parameter counts derived by hand (derivation
// next to each) or published (source named), and per-layer structure.

#include <string>

#include <gtest/gtest.h>

#include "llmem/model.h"

#include "test_util.h"

namespace llmem {
namespace {

using nlohmann::json;
using testing::find_tensor;
using testing::spec_of;

TEST(Families, Opt350mProjectsEmbeddingsAndHasNoFinalNorm) {
  ModelSpec s = load_model("facebook/opt-350m");
  // V=50272, embed 512, hidden 1024, 24 layers, ffn 4096, 2048 positions (+2 offset):
  // 50272·512 + 2050·1024 + 2·512·1024 + 24·(4·(1024²+1024) + 4·1024
  //   + (4096·1024+4096) + (1024·4096+1024)) = 331,196,416.
  EXPECT_EQ(s.params(), 331196416);
  EXPECT_EQ(s.embedding_size, 512);
  ASSERT_NE(find_tensor(s, "model.decoder.project_in.weight"), nullptr);
  EXPECT_EQ(find_tensor(s, "model.decoder.project_in.weight")->shape,
            (std::vector<int64_t>{1024, 512}));
  EXPECT_EQ(find_tensor(s, "model.decoder.final_layer_norm.weight"), nullptr);
  EXPECT_EQ(find_tensor(s, "lm_head.weight")->tied_to, "model.decoder.embed_tokens.weight");
}

TEST(Families, GptNeoAlternatesGlobalAndLocalAttention) {
  ModelSpec s = load_model("EleutherAI/gpt-neo-125m");
  // 50257·768 + 2048·768 + 12·(2·1536 + 3·768² + (768²+768) + (3072·768+3072)
  //   + (768·3072+768)) + 1536 = 125,198,592.
  EXPECT_EQ(s.params(), 125198592);
  EXPECT_EQ(s.layers[0].attention.sliding_window, 0);
  EXPECT_EQ(s.layers[1].attention.sliding_window, 256);
}

TEST(Families, GptNeoXMatchesPythiaCard) {
  // Pythia-160m: 162,322,944 total, 85,056,000 non-embedding (Pythia model card).
  json c = {{"model_type", "gpt_neox"},  {"vocab_size", 50304},
            {"hidden_size", 768},        {"num_hidden_layers", 12},
            {"num_attention_heads", 12}, {"intermediate_size", 3072},
            {"rotary_pct", 0.25},        {"max_position_embeddings", 2048}};
  ModelSpec s = spec_of(c);
  EXPECT_EQ(s.params(), 162322944);
  EXPECT_EQ(s.non_embedding_params(), 85056000);
  ASSERT_EQ(s.buffers.size(), 1u);
  EXPECT_EQ(s.buffers[0].shape, (std::vector<int64_t>{8}));  // 64 · 0.25 / 2
}

TEST(Families, StableLmBaseAlpha3bIsParallelNeoXWithQuarterRotary) {
  // The catalog entry (data/models/stabilityai--stablelm-base-alpha-3b.json), published
  // count 3,637,321,728: 2·50688·4096 + 16·(4·4096 + (12288·4096+12288) + (4096²+4096)
  //   + (16384·4096+16384) + (4096·16384+4096)) + 2·4096.
  ModelSpec s = load_model("stabilityai/stablelm-base-alpha-3b");
  EXPECT_EQ(s.family, "gpt_neox");
  EXPECT_EQ(s.params(), 3637321728);
  ASSERT_EQ(s.layers.size(), 16u);
  for (const LayerSpec& l : s.layers) {
    EXPECT_TRUE(l.parallel_residual);
    EXPECT_DOUBLE_EQ(l.attention.rotary_fraction, 0.25);
    EXPECT_EQ(l.attention.head_dim, 128);
  }
  ASSERT_EQ(s.buffers.size(), 1u);
  EXPECT_EQ(s.buffers[0].shape, (std::vector<int64_t>{16}));  // 128 · 0.25 / 2
  ASSERT_NE(find_tensor(s, "embed_out.weight"), nullptr);
  EXPECT_TRUE(find_tensor(s, "embed_out.weight")->tied_to.empty());
  EXPECT_EQ(find_tensor(s, "gpt_neox.layers.0.attention.query_key_value.weight")->shape,
            (std::vector<int64_t>{12288, 4096}));
}

TEST(Families, GptJMatchesModelCard) {
  // 50400·4096 + 28·(2·4096 + 4·4096² + (16384·4096+16384) + (4096·16384+4096)) + 2·4096
  //   + (50400·4096 + 50400) = 6,050,882,784. The model card's 6,053,381,344 counts the
  //   Mesh-Transformer-JAX model (see data/models/EleutherAI--gpt-j-6b.json).
  json c = {{"model_type", "gptj"}, {"vocab_size", 50400}, {"n_embd", 4096},     {"n_layer", 28},
            {"n_head", 16},         {"rotary_dim", 64},    {"n_positions", 2048}};
  ModelSpec s = spec_of(c);
  EXPECT_EQ(s.params(), 6050882784);
  EXPECT_NE(find_tensor(s, "lm_head.bias"), nullptr);
}

TEST(Families, CodeGenFusedQkvWithoutBias) {
  // codegen-350M-mono: 51200·1024 (wte) + 20·(2·2048 + 3·1024² + 1024² + (4096·1024+4096)
  //   + (1024·4096+1024)) + 2048 + (51200·1024 + 51200) = 356,712,448.
  json c = {{"model_type", "codegen"}, {"vocab_size", 51200}, {"n_embd", 1024},
            {"n_layer", 20},           {"n_head", 16},        {"rotary_dim", 32},
            {"n_positions", 2048}};
  ModelSpec s = spec_of(c);
  EXPECT_EQ(s.params(), 356712448);
  EXPECT_EQ(find_tensor(s, "transformer.h.0.attn.qkv_proj.bias"), nullptr);
}

TEST(Families, BloomUsesOldKeyNames) {
  ModelSpec s = load_model("bigscience/bloom-560m");
  EXPECT_EQ(s.params(), 559214592);  // huggingface/safetensors temp.md
  EXPECT_EQ(s.position, PositionKind::kAlibi);
  EXPECT_TRUE(s.buffers.empty());
}

TEST(Families, GemmaMatchesKerasHubCounts) {
  // gemma-2b: 256000·2048 + 18·(2048·2048 + 2·256·2048 + 2048·2048 + 3·2048·16384 + 2·2048)
  //   + 2048 = 2,506,172,416 (KerasHub gemma_2b_en preset).
  json g = {{"model_type", "gemma"},      {"vocab_size", 256000},    {"hidden_size", 2048},
            {"intermediate_size", 16384}, {"num_hidden_layers", 18}, {"num_attention_heads", 8},
            {"num_key_value_heads", 1},   {"head_dim", 256}};
  EXPECT_EQ(spec_of(g).params(), 2506172416);
  // gemma-2-2b: four norms per layer, even layers slide (KerasHub: 2,614,341,888).
  json g2 = {{"model_type", "gemma2"},    {"vocab_size", 256000},    {"hidden_size", 2304},
             {"intermediate_size", 9216}, {"num_hidden_layers", 26}, {"num_attention_heads", 8},
             {"num_key_value_heads", 4},  {"head_dim", 256},         {"sliding_window", 4096}};
  ModelSpec s = spec_of(g2);
  EXPECT_EQ(s.params(), 2614341888);
  EXPECT_EQ(s.layers[0].attention.sliding_window, 4096);
  EXPECT_EQ(s.layers[1].attention.sliding_window, 0);
  EXPECT_NE(find_tensor(s, "model.layers.0.pre_feedforward_layernorm.weight"), nullptr);
}

TEST(Families, OlmoHasNoNormParameters) {
  // OLMo-1B-hf: 50304·2048 (tied) + 16·(4·2048² + 3·2048·8192) = 1,176,764,416.
  json c = {{"model_type", "olmo"},       {"vocab_size", 50304},     {"hidden_size", 2048},
            {"intermediate_size", 8192},  {"num_hidden_layers", 16}, {"num_attention_heads", 16},
            {"tie_word_embeddings", true}};
  ModelSpec s = spec_of(c);
  EXPECT_EQ(s.params(), 1176764416);
  EXPECT_EQ(find_tensor(s, "model.norm.weight"), nullptr);
}

TEST(Families, StableLmLayerNormsAndQkvBias) {
  // stablelm-2-1_6b: 2·100352·2048 + 24·(3·(2048²+2048) + 2048² + 3·2048·5632 + 4·2048)
  //   + 2·2048 = 1,644,515,328.
  json c = {{"model_type", "stablelm"},  {"vocab_size", 100352},    {"hidden_size", 2048},
            {"intermediate_size", 5632}, {"num_hidden_layers", 24}, {"num_attention_heads", 32},
            {"num_key_value_heads", 32}, {"use_qkv_bias", true}};
  EXPECT_EQ(spec_of(c).params(), 1644515328);
  c["qk_layernorm"] = true;
  c["use_parallel_residual"] = true;
  ModelSpec s = spec_of(c);
  EXPECT_NE(find_tensor(s, "model.layers.0.self_attn.q_layernorm.norms.31.weight"), nullptr);
  EXPECT_EQ(find_tensor(s, "model.layers.0.post_attention_layernorm.weight"), nullptr);
}

TEST(Families, Qwen2MoeSharedExpertAndDenseLayers) {
  // Qwen1.5-MoE-A2.7B: 2·151936·2048 + 24·(3·(2048²+2048) + 2048² + 60·3·2048·1408
  //   + 3·2048·5632 + 60·2048 + 2048 + 2·2048) + 2048 = 14,315,784,192.
  json c = {{"model_type", "qwen2_moe"},
            {"vocab_size", 151936},
            {"hidden_size", 2048},
            {"intermediate_size", 5632},
            {"num_hidden_layers", 24},
            {"num_attention_heads", 16},
            {"num_key_value_heads", 16},
            {"moe_intermediate_size", 1408},
            {"shared_expert_intermediate_size", 5632},
            {"num_experts", 60},
            {"num_experts_per_tok", 4}};
  EXPECT_EQ(spec_of(c).params(), 14315784192);
  c["mlp_only_layers"] = {0, 5};
  ModelSpec s = spec_of(c);
  EXPECT_FALSE(s.layers[0].mlp.is_moe());
  EXPECT_TRUE(s.layers[1].mlp.is_moe());
  EXPECT_FALSE(s.layers[5].mlp.is_moe());
  EXPECT_NE(find_tensor(s, "model.layers.1.mlp.shared_expert_gate.weight"), nullptr);
  c["use_sliding_window"] = true;
  c["sliding_window"] = 1024;
  c["max_window_layers"] = 4;
  s = spec_of(c);
  EXPECT_EQ(s.layers[0].attention.sliding_window, 1024);  // (0+1) odd, below 4
  EXPECT_EQ(s.layers[1].attention.sliding_window, 0);
  EXPECT_EQ(s.layers[4].attention.sliding_window, 0);  // at max_window_layers
}

TEST(Families, DeepSeekV2LiteDenseFirstLayerAndMla) {
  ModelSpec s = load_model("deepseek-ai/DeepSeek-V2-Lite");
  EXPECT_FALSE(s.layers[0].mlp.is_moe());
  EXPECT_TRUE(s.layers[1].mlp.is_moe());
  EXPECT_EQ(s.layers[1].mlp.shared_intermediate_size, 2 * 1408);
  EXPECT_EQ(s.layers[0].attention.kind, AttentionKind::kMLA);
  EXPECT_EQ(find_tensor(s, "model.layers.0.self_attn.kv_b_proj.weight")->shape,
            (std::vector<int64_t>{16 * (128 + 128), 512}));
  EXPECT_EQ(find_tensor(s, "model.layers.3.mlp.experts.63.down_proj.weight")->shape,
            (std::vector<int64_t>{2048, 1408}));
}

TEST(Families, QwenSlidingWindowFromMaxWindowLayers) {
  json c = {{"model_type", "qwen2"},    {"vocab_size", 1000},         {"hidden_size", 64},
            {"intermediate_size", 128}, {"num_hidden_layers", 4},     {"num_attention_heads", 4},
            {"num_key_value_heads", 2}, {"use_sliding_window", true}, {"sliding_window", 32},
            {"max_window_layers", 2}};
  ModelSpec s = spec_of(c);
  EXPECT_EQ(s.layers[1].attention.sliding_window, 0);
  EXPECT_EQ(s.layers[2].attention.sliding_window, 32);
  c["layer_types"] = {"sliding_attention", "full_attention", "full_attention", "full_attention"};
  EXPECT_EQ(spec_of(c).layers[0].attention.sliding_window, 32);
  EXPECT_EQ(spec_of(c).layers[2].attention.sliding_window, 0);
  EXPECT_NE(find_tensor(s, "model.layers.0.self_attn.q_proj.bias"), nullptr);
  EXPECT_EQ(find_tensor(s, "model.layers.0.self_attn.o_proj.bias"), nullptr);
}

TEST(Families, MistralSlidesEveryLayerByDefault) {
  ModelSpec s = load_model("mistralai/Mistral-7B-v0.1");
  for (const LayerSpec& l : s.layers)
    EXPECT_EQ(l.attention.sliding_window, 4096);
}

TEST(Families, Phi3FusesProjections) {
  json c = {{"model_type", "phi3"},      {"vocab_size", 32064},     {"hidden_size", 3072},
            {"intermediate_size", 8192}, {"num_hidden_layers", 32}, {"num_attention_heads", 32}};
  ModelSpec s = spec_of(c);
  EXPECT_EQ(find_tensor(s, "model.layers.0.self_attn.qkv_proj.weight")->shape,
            (std::vector<int64_t>{3 * 3072, 3072}));
  EXPECT_EQ(find_tensor(s, "model.layers.0.mlp.gate_up_proj.weight")->shape,
            (std::vector<int64_t>{2 * 8192, 3072}));
  // Phi-3-mini: 2·32064·3072 + 32·(4·3072² + 3·3072·8192 + 2·3072) + 3072 = 3,821,079,552.
  EXPECT_EQ(s.params(), 3821079552);
}

TEST(Families, FalconNewArchitectureUsesKvGroupsAndTwoNorms) {
  json c = {{"model_type", "falcon"},          {"vocab_size", 65024},        {"hidden_size", 8192},
            {"num_hidden_layers", 2},          {"num_attention_heads", 128}, {"num_kv_heads", 8},
            {"new_decoder_architecture", true}};
  ModelSpec s = spec_of(c);
  EXPECT_EQ(find_tensor(s, "transformer.h.0.self_attention.query_key_value.weight")->shape,
            (std::vector<int64_t>{(128 + 2 * 8) * 64, 8192}));
  EXPECT_NE(find_tensor(s, "transformer.h.0.ln_mlp.weight"), nullptr);
  // Old remote-code key names (RefinedWeb: new architecture implied).
  json old = {{"model_type", "RefinedWeb"},
              {"hidden_size", 8192},
              {"n_layer", 2},
              {"n_head", 128},
              {"n_head_kv", 8}};
  EXPECT_EQ(spec_of(old).layers[0].attention.num_kv_heads, 8);
}

TEST(Families, Llama31RopeScalingIsAccepted) {
  ModelSpec s = load_model("meta-llama/Llama-3.1-8B");
  EXPECT_EQ(s.params(), 8030261248);
  EXPECT_EQ(s.layers[0].attention.num_kv_heads, 8);
  ASSERT_EQ(s.buffers.size(), 1u);
  EXPECT_EQ(s.buffers[0].name, "model.rotary_emb.inv_freq");
}

TEST(Families, GptBigCodeMultiQuery) {
  json c = {{"model_type", "gpt_bigcode"},
            {"vocab_size", 49280},
            {"n_embd", 2048},
            {"n_layer", 24},
            {"n_head", 16},
            {"n_inner", 8192},
            {"n_positions", 2048}};
  ModelSpec s = spec_of(c);
  EXPECT_EQ(find_tensor(s, "transformer.h.0.attn.c_attn.weight")->shape,
            (std::vector<int64_t>{2048 + 2 * 128, 2048}));
}

TEST(Families, ProvenanceNamesDefaults) {
  json c = {{"model_type", "llama"},  {"hidden_size", 64},        {"num_attention_heads", 4},
            {"num_hidden_layers", 1}, {"intermediate_size", 128}, {"vocab_size", 10}};
  ModelSpec s = spec_of(c);
  bool found = false;
  for (const Provenance& p : s.provenance) {
    if (p.key == "max_position_embeddings") {
      found = true;
      EXPECT_EQ(p.value, "2048");
      EXPECT_EQ(p.origin, "default: transformers LlamaConfig (configuration_llama.py)");
    }
  }
  EXPECT_TRUE(found);
}

}  // namespace
}  // namespace llmem
