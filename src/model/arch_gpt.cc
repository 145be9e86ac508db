// Copyright 2026 The llmem Authors.
// GPT-2/OPT-era families: opt, biogpt, bloom, falcon, gpt_neox, gpt2,
// gpt_bigcode, gpt_neo, gptj, codegen, phi.
//
// Defaults are those of each family's configuration class in Hugging Face
// transformers (src/transformers/models/<family>/configuration_<family>.py,
// v4.4x); tensor names follow modeling_<family>.py.

#include <string>

#include "model/arch.h"
#include "model/inventory.h"

namespace llmem::model {
namespace {

using config::ConfigReader;

constexpr const char* kOpt = "transformers OPTConfig (configuration_opt.py)";
constexpr const char* kBioGpt = "transformers BioGptConfig (configuration_biogpt.py)";
constexpr const char* kBloom = "transformers BloomConfig (configuration_bloom.py)";
constexpr const char* kFalcon = "transformers FalconConfig (configuration_falcon.py)";
constexpr const char* kNeoX = "transformers GPTNeoXConfig (configuration_gpt_neox.py)";
constexpr const char* kGpt2 = "transformers GPT2Config (configuration_gpt2.py)";
constexpr const char* kBigCode = "transformers GPTBigCodeConfig (configuration_gpt_bigcode.py)";
constexpr const char* kNeo = "transformers GPTNeoConfig (configuration_gpt_neo.py)";
constexpr const char* kGptJ = "transformers GPTJConfig (configuration_gptj.py)";
constexpr const char* kCodeGen = "transformers CodeGenConfig (configuration_codegen.py)";
constexpr const char* kPhi = "transformers PhiConfig (configuration_phi.py)";

// Multi-head attention with heads dividing the hidden size.
AttentionSpec mha(const ConfigReader& r, int64_t hidden, int64_t heads, const char* heads_key,
                  const char* hidden_key) {
  require_divides(r, heads_key, heads, hidden_key, hidden);
  AttentionSpec a;
  a.num_heads = heads;
  a.num_kv_heads = heads;
  a.head_dim = hidden / heads;
  return a;
}

// ---------------------------------------------------------------- opt
void read_opt(ConfigReader& r, ModelSpec& s) {
  read_common(r, s, kOpt);
  s.vocab_size = r.size({"vocab_size"}, 50272, kOpt);
  s.hidden_size = r.size({"hidden_size"}, 768, kOpt);
  s.num_layers = r.size({"num_hidden_layers"}, 12, kOpt);
  s.max_position_embeddings = r.size({"max_position_embeddings"}, 2048, kOpt);
  s.position = PositionKind::kLearned;
  s.tie_word_embeddings = r.flag({"tie_word_embeddings"}, true, "transformers PretrainedConfig");
  s.hidden_dropout = r.probability({"dropout"}, 0.1, kOpt);
  s.attention_dropout = r.probability({"attention_dropout"}, 0.0, kOpt);
  s.embedding_dropout = s.hidden_dropout;
  LayerSpec layer;
  layer.attention = mha(r, s.hidden_size, r.size({"num_attention_heads"}, 12, kOpt),
                        "num_attention_heads", "hidden_size");
  bool bias = r.flag({"enable_bias"}, true, kOpt);
  layer.attention.qkv_bias = layer.attention.out_bias = bias;
  layer.mlp.kind = MlpKind::kDense;
  layer.mlp.intermediate_size = r.size({"ffn_dim"}, 3072, kOpt);
  layer.mlp.bias = bias;
  layer.mlp.activation = r.text({"activation_function"}, "relu", kOpt);
  layer.norm = r.flag({"layer_norm_elementwise_affine"}, true, kOpt) ? NormKind::kLayerNorm
                                                                     : NormKind::kNonParametric;
  repeat_layer(s, layer);
  // OPT-350m embeds in 512 dims and projects in and out of the 1024-wide decoder.
  s.embedding_size =
      r.size({"word_embed_proj_dim"}, s.hidden_size, "OPTConfig: None means hidden_size");
  // OPTDecoder keeps final_layer_norm only for pre-norm models (OPT-350m is post-norm).
  bool pre_norm = r.flag({"do_layer_norm_before"}, true, kOpt);
  s.final_norm = pre_norm && !r.flag({"_remove_final_layer_norm"}, false, kOpt);
}

void build_opt(ModelSpec& s) {
  Inventory inv(&s);
  int64_t h = s.hidden_size;
  int64_t proj = s.embedding_size;
  const std::string d = "model.decoder.";
  inv.param(d + "embed_tokens.weight", {s.vocab_size, proj}, TensorRole::kEmbedding);
  // OPTLearnedPositionalEmbedding keeps 2 extra rows (offset 2).
  inv.param(d + "embed_positions.weight", {s.max_position_embeddings + 2, h},
            TensorRole::kPositionEmbedding);
  if (proj != h) {
    inv.linear(d + "project_out", proj, h, false, TensorRole::kLmHead);
    inv.linear(d + "project_in", h, proj, false, TensorRole::kEmbedding);
  }
  NormKind norm = s.layers.front().norm;
  if (s.final_norm)
    inv.norm(d + "final_layer_norm", h, norm);
  for (int i = 0; i < static_cast<int>(s.num_layers); ++i) {
    const LayerSpec& l = s.layers[static_cast<size_t>(i)];
    std::string p = layer_prefix(d + "layers", i);
    bool b = l.attention.qkv_bias;
    for (const char* name : {"k_proj", "v_proj", "q_proj", "out_proj"}) {
      inv.linear(p + "self_attn." + name, h, h, b, TensorRole::kAttention, i);
    }
    inv.norm(p + "self_attn_layer_norm", h, l.norm, i);
    inv.linear(p + "fc1", l.mlp.intermediate_size, h, l.mlp.bias, TensorRole::kMlp, i);
    inv.linear(p + "fc2", h, l.mlp.intermediate_size, l.mlp.bias, TensorRole::kMlp, i);
    inv.norm(p + "final_layer_norm", h, l.norm, i);
  }
  inv.lm_head("lm_head", s.vocab_size, proj, d + "embed_tokens.weight");
}

// ---------------------------------------------------------------- biogpt
void read_biogpt(ConfigReader& r, ModelSpec& s) {
  read_common(r, s, kBioGpt);
  s.vocab_size = r.size({"vocab_size"}, 42384, kBioGpt);
  s.hidden_size = r.size({"hidden_size"}, 1024, kBioGpt);
  s.num_layers = r.size({"num_hidden_layers"}, 24, kBioGpt);
  s.max_position_embeddings = r.size({"max_position_embeddings"}, 1024, kBioGpt);
  s.position = PositionKind::kLearned;
  s.tie_word_embeddings = r.flag({"tie_word_embeddings"}, true, "transformers PretrainedConfig");
  s.hidden_dropout = r.probability({"hidden_dropout_prob"}, 0.1, kBioGpt);
  s.attention_dropout = r.probability({"attention_probs_dropout_prob"}, 0.1, kBioGpt);
  s.embedding_dropout = s.hidden_dropout;
  LayerSpec layer;
  layer.attention = mha(r, s.hidden_size, r.size({"num_attention_heads"}, 16, kBioGpt),
                        "num_attention_heads", "hidden_size");
  layer.attention.qkv_bias = layer.attention.out_bias = true;
  layer.mlp.kind = MlpKind::kDense;
  layer.mlp.intermediate_size = r.size({"intermediate_size"}, 4096, kBioGpt);
  layer.mlp.bias = true;
  layer.mlp.activation = r.text({"hidden_act"}, "gelu", kBioGpt);
  layer.norm = NormKind::kLayerNorm;
  repeat_layer(s, layer);
}

void build_biogpt(ModelSpec& s) {
  Inventory inv(&s);
  int64_t h = s.hidden_size;
  inv.param("biogpt.embed_tokens.weight", {s.vocab_size, h}, TensorRole::kEmbedding);
  inv.param("biogpt.embed_positions.weight", {s.max_position_embeddings + 2, h},
            TensorRole::kPositionEmbedding);
  for (int i = 0; i < static_cast<int>(s.num_layers); ++i) {
    const LayerSpec& l = s.layers[static_cast<size_t>(i)];
    std::string p = layer_prefix("biogpt.layers", i);
    for (const char* name : {"k_proj", "v_proj", "q_proj", "out_proj"}) {
      inv.linear(p + "self_attn." + name, h, h, true, TensorRole::kAttention, i);
    }
    inv.norm(p + "self_attn_layer_norm", h, l.norm, i);
    inv.linear(p + "fc1", l.mlp.intermediate_size, h, true, TensorRole::kMlp, i);
    inv.linear(p + "fc2", h, l.mlp.intermediate_size, true, TensorRole::kMlp, i);
    inv.norm(p + "final_layer_norm", h, l.norm, i);
  }
  inv.norm("biogpt.layer_norm", h, NormKind::kLayerNorm);
  inv.lm_head("output_projection", s.vocab_size, h, "biogpt.embed_tokens.weight");
}

// ---------------------------------------------------------------- bloom
void read_bloom(ConfigReader& r, ModelSpec& s) {
  read_common(r, s, kBloom);
  s.vocab_size = r.size({"vocab_size"}, 250880, kBloom);
  // BloomConfig pops "n_embed" as the old name of hidden_size; attribute_map
  // maps num_hidden_layers -> n_layer and num_attention_heads -> n_head.
  s.hidden_size = r.size({"hidden_size", "n_embed"}, 64, kBloom);
  s.num_layers = r.size({"n_layer", "num_hidden_layers"}, 2, kBloom);
  s.max_position_embeddings = r.count({"seq_length", "max_position_embeddings"}, 2048,
                                      "BLOOM has no position limit (ALiBi); training length");
  s.position = PositionKind::kAlibi;
  s.tie_word_embeddings = r.flag({"tie_word_embeddings"}, true, "transformers PretrainedConfig");
  s.hidden_dropout = r.probability({"hidden_dropout"}, 0.0, kBloom);
  s.attention_dropout = r.probability({"attention_dropout"}, 0.0, kBloom);
  LayerSpec layer;
  layer.attention = mha(r, s.hidden_size, r.size({"n_head", "num_attention_heads"}, 8, kBloom),
                        "n_head", "hidden_size");
  layer.attention.qkv_bias = layer.attention.out_bias = true;
  layer.mlp.kind = MlpKind::kDense;
  layer.mlp.intermediate_size = model::checked_mul(4, s.hidden_size, s.source);
  layer.mlp.bias = true;
  layer.mlp.activation = "bloom_gelu";
  layer.norm = NormKind::kLayerNorm;
  repeat_layer(s, layer);
}

void build_bloom(ModelSpec& s) {
  Inventory inv(&s);
  int64_t h = s.hidden_size;
  inv.param("transformer.word_embeddings.weight", {s.vocab_size, h}, TensorRole::kEmbedding);
  inv.norm("transformer.word_embeddings_layernorm", h, NormKind::kLayerNorm);
  for (int i = 0; i < static_cast<int>(s.num_layers); ++i) {
    const LayerSpec& l = s.layers[static_cast<size_t>(i)];
    std::string p = layer_prefix("transformer.h", i);
    inv.norm(p + "input_layernorm", h, l.norm, i);
    inv.linear(p + "self_attention.query_key_value", 3 * h, h, true, TensorRole::kAttention, i);
    inv.linear(p + "self_attention.dense", h, h, true, TensorRole::kAttention, i);
    inv.norm(p + "post_attention_layernorm", h, l.norm, i);
    inv.linear(p + "mlp.dense_h_to_4h", l.mlp.intermediate_size, h, true, TensorRole::kMlp, i);
    inv.linear(p + "mlp.dense_4h_to_h", h, l.mlp.intermediate_size, true, TensorRole::kMlp, i);
  }
  inv.norm("transformer.ln_f", h, NormKind::kLayerNorm);
  inv.lm_head("lm_head", s.vocab_size, h, "transformer.word_embeddings.weight");
}

// ---------------------------------------------------------------- falcon
// Falcon-7B (old "RefinedWebModel") uses multi-query attention and one
// LayerNorm per layer; Falcon-40B/180B ("RefinedWeb" or
// new_decoder_architecture) use grouped KV heads and two LayerNorms.
void read_falcon(ConfigReader& r, ModelSpec& s) {
  read_common(r, s, kFalcon);
  s.vocab_size = r.size({"vocab_size"}, 65024, kFalcon);
  s.hidden_size = r.size({"hidden_size", "n_embed"}, 4544, kFalcon);
  s.num_layers = r.size({"num_hidden_layers", "n_layer"}, 32, kFalcon);
  s.max_position_embeddings = r.size({"max_position_embeddings"}, 2048, kFalcon);
  s.tie_word_embeddings = r.flag({"tie_word_embeddings"}, true, "transformers PretrainedConfig");
  s.hidden_dropout = r.probability({"hidden_dropout"}, 0.0, kFalcon);
  s.attention_dropout = r.probability({"attention_dropout"}, 0.0, kFalcon);
  bool alibi = r.flag({"alibi"}, false, kFalcon);
  s.position = alibi ? PositionKind::kAlibi : PositionKind::kRotary;
  bool new_arch =
      r.flag({"new_decoder_architecture"}, s.model_type == "RefinedWeb",
             "FalconConfig False; the remote-code RefinedWeb (40B) layout implies True");
  bool multi_query = r.flag({"multi_query"}, true, kFalcon);
  bool parallel = r.flag({"parallel_attn"}, true, kFalcon);
  bool bias = r.flag({"bias"}, false, kFalcon);
  int64_t heads = r.size({"num_attention_heads", "n_head"}, 71, kFalcon);
  LayerSpec layer;
  layer.attention = mha(r, s.hidden_size, heads, "num_attention_heads", "hidden_size");
  if (new_arch) {
    layer.attention.num_kv_heads = r.size({"num_kv_heads", "n_head_kv"}, heads,
                                          "FalconConfig: None means num_attention_heads");
  } else if (multi_query) {
    layer.attention.num_kv_heads = 1;
  }
  require_divides(r, "num_kv_heads", layer.attention.num_kv_heads, "num_attention_heads", heads);
  layer.attention.qkv_bias = layer.attention.out_bias = bias;
  layer.attention.rotary_fraction = alibi ? 0.0 : 1.0;
  layer.mlp.kind = MlpKind::kDense;
  layer.mlp.intermediate_size =
      r.size({"ffn_hidden_size"}, 4 * s.hidden_size, "FalconConfig: None means 4 * hidden_size");
  layer.mlp.bias = bias;
  layer.mlp.activation = r.text({"activation"}, "gelu", kFalcon);
  layer.norm = NormKind::kLayerNorm;
  layer.parallel_residual = parallel;
  // FalconDecoderLayer: ln_attn and ln_mlp when the new architecture has
  // num_ln_in_parallel_attn == 2 (its default), else input_layernorm and, for
  // sequential blocks, post_attention_layernorm.
  int64_t lns = r.size({"num_ln_in_parallel_attn"}, new_arch ? 2 : 1,
                       "FalconDecoderLayer: 2 when new_decoder_architecture");
  layer.norms = (new_arch && lns == 2) || !parallel ? 2 : 1;
  repeat_layer(s, layer);
}

void build_falcon(ModelSpec& s) {
  Inventory inv(&s);
  int64_t h = s.hidden_size;
  inv.param("transformer.word_embeddings.weight", {s.vocab_size, h}, TensorRole::kEmbedding);
  for (int i = 0; i < static_cast<int>(s.num_layers); ++i) {
    const LayerSpec& l = s.layers[static_cast<size_t>(i)];
    const AttentionSpec& a = l.attention;
    std::string p = layer_prefix("transformer.h", i);
    int64_t qkv = checked_mul(a.num_heads + 2 * a.num_kv_heads, a.head_dim, s.source);
    inv.linear(p + "self_attention.query_key_value", qkv, h, a.qkv_bias, TensorRole::kAttention, i);
    inv.linear(p + "self_attention.dense", h, h, a.out_bias, TensorRole::kAttention, i);
    inv.linear(p + "mlp.dense_h_to_4h", l.mlp.intermediate_size, h, l.mlp.bias, TensorRole::kMlp,
               i);
    inv.linear(p + "mlp.dense_4h_to_h", h, l.mlp.intermediate_size, l.mlp.bias, TensorRole::kMlp,
               i);
    if (l.parallel_residual && l.norms == 2) {
      inv.norm(p + "ln_attn", h, l.norm, i);
      inv.norm(p + "ln_mlp", h, l.norm, i);
    } else {
      inv.norm(p + "input_layernorm", h, l.norm, i);
      if (!l.parallel_residual)
        inv.norm(p + "post_attention_layernorm", h, l.norm, i);
    }
  }
  inv.norm("transformer.ln_f", h, NormKind::kLayerNorm);
  if (s.position == PositionKind::kRotary)
    inv.rotary("transformer.rotary_emb.inv_freq", s.layers.front().attention);
  inv.lm_head("lm_head", s.vocab_size, h, "transformer.word_embeddings.weight");
}

// ---------------------------------------------------------------- gpt_neox
void read_gpt_neox(ConfigReader& r, ModelSpec& s) {
  read_common(r, s, kNeoX);
  s.vocab_size = r.size({"vocab_size"}, 50432, kNeoX);
  s.hidden_size = r.size({"hidden_size"}, 6144, kNeoX);
  s.num_layers = r.size({"num_hidden_layers"}, 44, kNeoX);
  s.max_position_embeddings = r.size({"max_position_embeddings"}, 2048, kNeoX);
  s.tie_word_embeddings = r.flag({"tie_word_embeddings"}, false, kNeoX);
  s.hidden_dropout = r.probability({"hidden_dropout"}, 0.0, kNeoX);
  s.attention_dropout = r.probability({"attention_dropout"}, 0.0, kNeoX);
  LayerSpec layer;
  layer.attention = mha(r, s.hidden_size, r.size({"num_attention_heads"}, 64, kNeoX),
                        "num_attention_heads", "hidden_size");
  bool bias = r.flag({"attention_bias"}, true, kNeoX);
  layer.attention.qkv_bias = layer.attention.out_bias = bias;
  layer.attention.rotary_fraction = r.number({"rotary_pct", "partial_rotary_factor"}, 0.25, kNeoX);
  layer.mlp.kind = MlpKind::kDense;
  layer.mlp.intermediate_size = r.size({"intermediate_size"}, 24576, kNeoX);
  layer.mlp.bias = true;
  layer.mlp.activation = r.text({"hidden_act"}, "gelu", kNeoX);
  layer.norm = NormKind::kLayerNorm;
  layer.parallel_residual = r.flag({"use_parallel_residual"}, true, kNeoX);
  repeat_layer(s, layer);
}

void build_gpt_neox(ModelSpec& s) {
  Inventory inv(&s);
  int64_t h = s.hidden_size;
  inv.param("gpt_neox.embed_in.weight", {s.vocab_size, h}, TensorRole::kEmbedding);
  for (int i = 0; i < static_cast<int>(s.num_layers); ++i) {
    const LayerSpec& l = s.layers[static_cast<size_t>(i)];
    std::string p = layer_prefix("gpt_neox.layers", i);
    inv.norm(p + "input_layernorm", h, l.norm, i);
    inv.norm(p + "post_attention_layernorm", h, l.norm, i);
    inv.linear(p + "attention.query_key_value", 3 * h, h, l.attention.qkv_bias,
               TensorRole::kAttention, i);
    inv.linear(p + "attention.dense", h, h, l.attention.out_bias, TensorRole::kAttention, i);
    inv.linear(p + "mlp.dense_h_to_4h", l.mlp.intermediate_size, h, true, TensorRole::kMlp, i);
    inv.linear(p + "mlp.dense_4h_to_h", h, l.mlp.intermediate_size, true, TensorRole::kMlp, i);
  }
  inv.norm("gpt_neox.final_layer_norm", h, NormKind::kLayerNorm);
  inv.rotary("gpt_neox.rotary_emb.inv_freq", s.layers.front().attention);
  inv.lm_head("embed_out", s.vocab_size, h, "gpt_neox.embed_in.weight");
}

// ---------------------------------------------------------------- gpt2 and gpt_bigcode
void read_gpt2_like(ConfigReader& r, ModelSpec& s, const char* src, int64_t vocab,
                    const char* act) {
  read_common(r, s, src);
  // attribute_map: hidden_size -> n_embd, max_position_embeddings -> n_positions,
  // num_attention_heads -> n_head, num_hidden_layers -> n_layer.
  s.vocab_size = r.size({"vocab_size"}, vocab, src);
  s.hidden_size = r.size({"n_embd", "hidden_size"}, 768, src);
  s.num_layers = r.size({"n_layer", "num_hidden_layers"}, 12, src);
  s.max_position_embeddings = r.size({"n_positions", "max_position_embeddings"}, 1024, src);
  s.position = PositionKind::kLearned;
  s.tie_word_embeddings = r.flag({"tie_word_embeddings"}, true, "transformers PretrainedConfig");
  s.hidden_dropout = r.probability({"resid_pdrop"}, 0.1, src);
  s.attention_dropout = r.probability({"attn_pdrop"}, 0.1, src);
  s.embedding_dropout = r.probability({"embd_pdrop"}, 0.1, src);
  LayerSpec layer;
  layer.attention =
      mha(r, s.hidden_size, r.size({"n_head", "num_attention_heads"}, 12, src), "n_head", "n_embd");
  layer.attention.qkv_bias = layer.attention.out_bias = true;
  layer.mlp.kind = MlpKind::kDense;
  layer.mlp.intermediate_size =
      r.size({"n_inner"}, checked_mul(4, s.hidden_size, s.source), "None means 4 * n_embd");
  layer.mlp.bias = true;
  layer.mlp.activation = r.text({"activation_function"}, act, src);
  layer.norm = NormKind::kLayerNorm;
  repeat_layer(s, layer);
}

void read_gpt2(ConfigReader& r, ModelSpec& s) {
  read_gpt2_like(r, s, kGpt2, 50257, "gelu_new");
}

void read_gpt_bigcode(ConfigReader& r, ModelSpec& s) {
  read_gpt2_like(r, s, kBigCode, 50257, "gelu_pytorch_tanh");
  if (r.flag({"multi_query"}, true, kBigCode)) {
    for (LayerSpec& l : s.layers)
      l.attention.num_kv_heads = 1;
  }
}

void build_gpt2_like(ModelSpec& s, bool conv1d) {
  Inventory inv(&s);
  int64_t h = s.hidden_size;
  inv.param("transformer.wte.weight", {s.vocab_size, h}, TensorRole::kEmbedding);
  inv.param("transformer.wpe.weight", {s.max_position_embeddings, h},
            TensorRole::kPositionEmbedding);
  for (int i = 0; i < static_cast<int>(s.num_layers); ++i) {
    const LayerSpec& l = s.layers[static_cast<size_t>(i)];
    const AttentionSpec& a = l.attention;
    std::string p = layer_prefix("transformer.h", i);
    int64_t inner = l.mlp.intermediate_size;
    inv.norm(p + "ln_1", h, l.norm, i);
    int64_t qkv = h + 2 * a.num_kv_heads * a.head_dim;
    if (conv1d) {
      inv.conv1d(p + "attn.c_attn", h, qkv, TensorRole::kAttention, i);
      inv.conv1d(p + "attn.c_proj", h, h, TensorRole::kAttention, i);
    } else {
      inv.linear(p + "attn.c_attn", qkv, h, true, TensorRole::kAttention, i);
      inv.linear(p + "attn.c_proj", h, h, true, TensorRole::kAttention, i);
    }
    inv.norm(p + "ln_2", h, l.norm, i);
    if (conv1d) {
      inv.conv1d(p + "mlp.c_fc", h, inner, TensorRole::kMlp, i);
      inv.conv1d(p + "mlp.c_proj", inner, h, TensorRole::kMlp, i);
      inv.causal_mask(p + "attn.bias", s.max_position_embeddings, i);
      inv.buffer(p + "attn.masked_bias", {}, DType::kFloat32, false, i);  // torch.tensor(-1e4)
    } else {
      inv.linear(p + "mlp.c_fc", inner, h, true, TensorRole::kMlp, i);
      inv.linear(p + "mlp.c_proj", h, inner, true, TensorRole::kMlp, i);
    }
  }
  inv.norm("transformer.ln_f", h, NormKind::kLayerNorm);
  if (!conv1d) {
    inv.buffer("transformer.bias", {s.max_position_embeddings, s.max_position_embeddings},
               DType::kBool, false);
  }
  inv.lm_head("lm_head", s.vocab_size, h, "transformer.wte.weight");
}

void build_gpt2(ModelSpec& s) {
  build_gpt2_like(s, true);
}
void build_gpt_bigcode(ModelSpec& s) {
  build_gpt2_like(s, false);
}

// ---------------------------------------------------------------- gpt_neo
void read_gpt_neo(ConfigReader& r, ModelSpec& s) {
  read_common(r, s, kNeo);
  s.vocab_size = r.size({"vocab_size"}, 50257, kNeo);
  s.hidden_size = r.size({"hidden_size"}, 2048, kNeo);
  s.num_layers = r.size({"num_layers", "num_hidden_layers"}, 24, kNeo);
  s.max_position_embeddings = r.size({"max_position_embeddings"}, 2048, kNeo);
  s.position = PositionKind::kLearned;
  s.tie_word_embeddings = r.flag({"tie_word_embeddings"}, true, "transformers PretrainedConfig");
  s.hidden_dropout = r.probability({"resid_dropout"}, 0.0, kNeo);
  s.attention_dropout = r.probability({"attention_dropout"}, 0.0, kNeo);
  s.embedding_dropout = r.probability({"embed_dropout"}, 0.0, kNeo);
  LayerSpec layer;
  layer.attention = mha(r, s.hidden_size, r.size({"num_heads", "num_attention_heads"}, 16, kNeo),
                        "num_heads", "hidden_size");
  layer.attention.out_bias = true;
  layer.mlp.kind = MlpKind::kDense;
  layer.mlp.intermediate_size =
      r.size({"intermediate_size"}, 4 * s.hidden_size, "GPTNeoConfig: None means 4 * hidden_size");
  layer.mlp.bias = true;
  layer.mlp.activation = r.text({"activation_function"}, "gelu_new", kNeo);
  layer.norm = NormKind::kLayerNorm;
  repeat_layer(s, layer);
  int64_t window = r.size({"window_size"}, 256, kNeo);
  // attention_types is [[["global", "local"], 12]]: a pattern repeated n times.
  std::vector<std::string> kinds;
  const nlohmann::json& types = r.raw({"attention_types"});
  if (types.is_null()) {
    for (int64_t i = 0; i < s.num_layers; ++i)
      kinds.push_back(i % 2 == 0 ? "global" : "local");
  } else {
    const char* expected =
        "expected a list of [[\"global\"|\"local\", ...], repeat] pairs, as in "
        "[[[\"global\", \"local\"], 12]]";
    if (!types.is_array())
      r.fail("attention_types", expected);
    for (const auto& item : types) {
      if (!item.is_array() || item.size() != 2 || !item[0].is_array() ||
          !item[1].is_number_integer() || item[1].get<int64_t>() < 0 ||
          item[1].get<int64_t>() > s.num_layers) {
        r.fail("attention_types", expected);
      }
      for (int64_t n = 0; n < item[1].get<int64_t>(); ++n) {
        for (const auto& kind : item[0]) {
          if (!kind.is_string() || (kind != "global" && kind != "local")) {
            r.fail("attention_types", expected);
          }
          kinds.push_back(kind.get<std::string>());
        }
      }
    }
  }
  if (static_cast<int64_t>(kinds.size()) != s.num_layers) {
    r.fail("attention_types", "describes " + std::to_string(kinds.size()) +
                                  " layers but num_layers is " + std::to_string(s.num_layers));
  }
  for (size_t i = 0; i < kinds.size(); ++i) {
    if (kinds[i] == "local")
      s.layers[i].attention.sliding_window = window;
  }
}

void build_gpt_neo(ModelSpec& s) {
  Inventory inv(&s);
  int64_t h = s.hidden_size;
  inv.param("transformer.wte.weight", {s.vocab_size, h}, TensorRole::kEmbedding);
  inv.param("transformer.wpe.weight", {s.max_position_embeddings, h},
            TensorRole::kPositionEmbedding);
  for (int i = 0; i < static_cast<int>(s.num_layers); ++i) {
    const LayerSpec& l = s.layers[static_cast<size_t>(i)];
    std::string p = layer_prefix("transformer.h", i);
    inv.norm(p + "ln_1", h, l.norm, i);
    for (const char* name : {"k_proj", "v_proj", "q_proj"}) {
      inv.linear(p + "attn.attention." + name, h, h, false, TensorRole::kAttention, i);
    }
    inv.linear(p + "attn.attention.out_proj", h, h, true, TensorRole::kAttention, i);
    inv.norm(p + "ln_2", h, l.norm, i);
    inv.linear(p + "mlp.c_fc", l.mlp.intermediate_size, h, true, TensorRole::kMlp, i);
    inv.linear(p + "mlp.c_proj", h, l.mlp.intermediate_size, true, TensorRole::kMlp, i);
    inv.causal_mask(p + "attn.attention.bias", s.max_position_embeddings, i);
  }
  inv.norm("transformer.ln_f", h, NormKind::kLayerNorm);
  inv.lm_head("lm_head", s.vocab_size, h, "transformer.wte.weight");
}

// ---------------------------------------------------------------- gptj and codegen
void read_gptj_like(ConfigReader& r, ModelSpec& s, const char* src) {
  read_common(r, s, src);
  s.vocab_size = r.size({"vocab_size"}, 50400, src);
  s.hidden_size = r.size({"n_embd", "hidden_size"}, 4096, src);
  s.num_layers = r.size({"n_layer", "num_hidden_layers"}, 28, src);
  s.max_position_embeddings = r.size({"n_positions", "max_position_embeddings"}, 2048, src);
  s.tie_word_embeddings = r.flag({"tie_word_embeddings"}, false, src);
  s.hidden_dropout = r.probability({"resid_pdrop"}, 0.0, src);
  s.attention_dropout = r.probability({"attn_pdrop"}, 0.0, src);
  s.embedding_dropout = r.probability({"embd_pdrop"}, 0.0, src);
  LayerSpec layer;
  layer.attention =
      mha(r, s.hidden_size, r.size({"n_head", "num_attention_heads"}, 16, src), "n_head", "n_embd");
  int64_t rotary = r.size({"rotary_dim"}, 64, src);
  if (rotary > layer.attention.head_dim) {
    r.fail("rotary_dim", "expected at most the head size " +
                             std::to_string(layer.attention.head_dim) + ", got " +
                             std::to_string(rotary));
  }
  layer.attention.rotary_fraction =
      static_cast<double>(rotary) / static_cast<double>(layer.attention.head_dim);
  layer.mlp.kind = MlpKind::kDense;
  layer.mlp.intermediate_size =
      r.size({"n_inner"}, checked_mul(4, s.hidden_size, s.source), "None means 4 * n_embd");
  layer.mlp.bias = true;
  layer.mlp.activation = r.text({"activation_function"}, "gelu_new", src);
  layer.norm = NormKind::kLayerNorm;
  layer.parallel_residual = true;
  layer.norms = 1;
  repeat_layer(s, layer);
}

void read_gptj(ConfigReader& r, ModelSpec& s) {
  read_gptj_like(r, s, kGptJ);
}
void read_codegen(ConfigReader& r, ModelSpec& s) {
  read_gptj_like(r, s, kCodeGen);
}

void build_gptj_like(ModelSpec& s, bool codegen) {
  Inventory inv(&s);
  int64_t h = s.hidden_size;
  inv.param("transformer.wte.weight", {s.vocab_size, h}, TensorRole::kEmbedding);
  for (int i = 0; i < static_cast<int>(s.num_layers); ++i) {
    const LayerSpec& l = s.layers[static_cast<size_t>(i)];
    std::string p = layer_prefix("transformer.h", i);
    inv.norm(p + "ln_1", h, l.norm, i);
    if (codegen) {
      inv.linear(p + "attn.qkv_proj", 3 * h, h, false, TensorRole::kAttention, i);
    } else {
      for (const char* name : {"k_proj", "v_proj", "q_proj"}) {
        inv.linear(p + "attn." + name, h, h, false, TensorRole::kAttention, i);
      }
    }
    inv.linear(p + "attn.out_proj", h, h, false, TensorRole::kAttention, i);
    inv.linear(p + "mlp.fc_in", l.mlp.intermediate_size, h, true, TensorRole::kMlp, i);
    inv.linear(p + "mlp.fc_out", h, l.mlp.intermediate_size, true, TensorRole::kMlp, i);
    // CodeGenAttention (v4.57) registers no causal-mask buffer; GPT-J keeps attn.bias.
    if (!codegen)
      inv.causal_mask(p + "attn.bias", s.max_position_embeddings, i);
  }
  inv.norm("transformer.ln_f", h, NormKind::kLayerNorm);
  inv.lm_head("lm_head", s.vocab_size, h, "transformer.wte.weight", true);
}

void build_gptj(ModelSpec& s) {
  build_gptj_like(s, false);
}
void build_codegen(ModelSpec& s) {
  build_gptj_like(s, true);
}

// ---------------------------------------------------------------- phi
void read_phi(ConfigReader& r, ModelSpec& s) {
  read_common(r, s, kPhi);
  s.vocab_size = r.size({"vocab_size"}, 51200, kPhi);
  s.hidden_size = r.size({"hidden_size"}, 2048, kPhi);
  s.num_layers = r.size({"num_hidden_layers"}, 24, kPhi);
  s.max_position_embeddings = r.size({"max_position_embeddings"}, 2048, kPhi);
  s.tie_word_embeddings = r.flag({"tie_word_embeddings"}, false, kPhi);
  s.hidden_dropout = r.probability({"resid_pdrop"}, 0.0, kPhi);
  s.attention_dropout = r.probability({"attention_dropout"}, 0.0, kPhi);
  s.embedding_dropout = r.probability({"embd_pdrop"}, 0.0, kPhi);
  int64_t heads = r.size({"num_attention_heads"}, 32, kPhi);
  LayerSpec layer;
  layer.attention = mha(r, s.hidden_size, heads, "num_attention_heads", "hidden_size");
  layer.attention.num_kv_heads =
      r.size({"num_key_value_heads"}, heads, "PhiConfig: None means num_attention_heads");
  require_divides(r, "num_key_value_heads", layer.attention.num_kv_heads, "num_attention_heads",
                  heads);
  layer.attention.qkv_bias = layer.attention.out_bias = true;
  layer.attention.qk_norm = r.flag({"qk_layernorm"}, false, kPhi);
  layer.attention.rotary_fraction = r.number({"partial_rotary_factor"}, 0.5, kPhi);
  layer.mlp.kind = MlpKind::kDense;
  layer.mlp.intermediate_size = r.size({"intermediate_size"}, 8192, kPhi);
  layer.mlp.bias = true;
  layer.mlp.activation = r.text({"hidden_act"}, "gelu_new", kPhi);
  layer.norm = NormKind::kLayerNorm;
  layer.parallel_residual = true;
  layer.norms = 1;
  repeat_layer(s, layer);
}

void build_phi(ModelSpec& s) {
  Inventory inv(&s);
  int64_t h = s.hidden_size;
  inv.param("model.embed_tokens.weight", {s.vocab_size, h}, TensorRole::kEmbedding);
  for (int i = 0; i < static_cast<int>(s.num_layers); ++i) {
    const LayerSpec& l = s.layers[static_cast<size_t>(i)];
    const AttentionSpec& a = l.attention;
    std::string p = layer_prefix("model.layers", i);
    inv.linear(p + "self_attn.q_proj", a.q_width(), h, true, TensorRole::kAttention, i);
    inv.linear(p + "self_attn.k_proj", a.k_width(), h, true, TensorRole::kAttention, i);
    inv.linear(p + "self_attn.v_proj", a.v_width(), h, true, TensorRole::kAttention, i);
    inv.linear(p + "self_attn.dense", h, a.q_width(), true, TensorRole::kAttention, i);
    if (a.qk_norm) {
      inv.norm(p + "self_attn.q_layernorm", a.head_dim, NormKind::kLayerNorm, i);
      inv.norm(p + "self_attn.k_layernorm", a.head_dim, NormKind::kLayerNorm, i);
    }
    inv.linear(p + "mlp.fc1", l.mlp.intermediate_size, h, true, TensorRole::kMlp, i);
    inv.linear(p + "mlp.fc2", h, l.mlp.intermediate_size, true, TensorRole::kMlp, i);
    inv.norm(p + "input_layernorm", h, l.norm, i);
  }
  inv.norm("model.final_layernorm", h, NormKind::kLayerNorm);
  inv.rotary("model.rotary_emb.inv_freq", s.layers.front().attention);
  inv.lm_head("lm_head", s.vocab_size, h, "model.embed_tokens.weight", true);
}

}  // namespace

void register_gpt_families(std::vector<Architecture>* registry) {
  registry->push_back({"opt", {"opt"}, kOpt, read_opt, build_opt});
  registry->push_back({"biogpt", {"biogpt"}, kBioGpt, read_biogpt, build_biogpt});
  registry->push_back({"bloom", {"bloom"}, kBloom, read_bloom, build_bloom});
  registry->push_back(
      {"falcon", {"falcon", "RefinedWebModel", "RefinedWeb"}, kFalcon, read_falcon, build_falcon});
  registry->push_back({"gpt_neox", {"gpt_neox"}, kNeoX, read_gpt_neox, build_gpt_neox});
  registry->push_back({"gpt2", {"gpt2"}, kGpt2, read_gpt2, build_gpt2});
  registry->push_back(
      {"gpt_bigcode", {"gpt_bigcode"}, kBigCode, read_gpt_bigcode, build_gpt_bigcode});
  registry->push_back({"gpt_neo", {"gpt_neo"}, kNeo, read_gpt_neo, build_gpt_neo});
  registry->push_back({"gptj", {"gptj"}, kGptJ, read_gptj, build_gptj});
  registry->push_back({"codegen", {"codegen"}, kCodeGen, read_codegen, build_codegen});
  registry->push_back({"phi", {"phi"}, kPhi, read_phi, build_phi});
}

}  // namespace llmem::model
