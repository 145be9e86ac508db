// Copyright 2026 The llmem Authors.
// Families that follow the Llama layout: llama, mistral, mixtral, qwen2,
// qwen2_moe, qwen3, gemma, gemma2, olmo, stablelm, phi3, deepseek_v2.
//
// Defaults are those of each family's configuration class in Hugging Face
// transformers (src/transformers/models/<family>/configuration_<family>.py,
// v4.4x); DeepSeek-V2 follows the remote-code configuration_deepseek.py
// shipped with deepseek-ai/DeepSeek-V2(-Lite). Tensor names follow
// modeling_<family>.py.

#include <string>

#include "model/arch.h"
#include "model/inventory.h"

namespace llmem::model {
namespace {

using config::ConfigReader;

struct Defaults {
  const char* src;
  int64_t vocab, hidden, intermediate, layers, heads;
  int64_t kv_heads;  // 0: same as heads
  int64_t head_dim;  // 0: hidden / heads
  int64_t max_positions;
  bool tie;
  const char* activation;
  NormKind norm;
};

constexpr Defaults kLlama{"transformers LlamaConfig (configuration_llama.py)",
                          32000,
                          4096,
                          11008,
                          32,
                          32,
                          0,
                          0,
                          2048,
                          false,
                          "silu",
                          NormKind::kRMSNorm};
constexpr Defaults kMistral{"transformers MistralConfig (configuration_mistral.py)",
                            32000,
                            4096,
                            14336,
                            32,
                            32,
                            8,
                            0,
                            131072,
                            false,
                            "silu",
                            NormKind::kRMSNorm};
constexpr Defaults kMixtral{"transformers MixtralConfig (configuration_mixtral.py)",
                            32000,
                            4096,
                            14336,
                            32,
                            32,
                            8,
                            0,
                            131072,
                            false,
                            "silu",
                            NormKind::kRMSNorm};
constexpr Defaults kQwen2{"transformers Qwen2Config (configuration_qwen2.py)",
                          151936,
                          4096,
                          22016,
                          32,
                          32,
                          32,
                          0,
                          32768,
                          false,
                          "silu",
                          NormKind::kRMSNorm};
constexpr Defaults kQwen2Moe{"transformers Qwen2MoeConfig (configuration_qwen2_moe.py)",
                             151936,
                             2048,
                             5632,
                             24,
                             16,
                             16,
                             0,
                             32768,
                             false,
                             "silu",
                             NormKind::kRMSNorm};
constexpr Defaults kQwen3{"transformers Qwen3Config (configuration_qwen3.py)",
                          151936,
                          4096,
                          22016,
                          32,
                          32,
                          32,
                          128,
                          32768,
                          false,
                          "silu",
                          NormKind::kRMSNorm};
constexpr Defaults kGemma{"transformers GemmaConfig (configuration_gemma.py)",
                          256000,
                          3072,
                          24576,
                          28,
                          16,
                          16,
                          256,
                          8192,
                          true,
                          "gelu_pytorch_tanh",
                          NormKind::kRMSNorm};
constexpr Defaults kGemma2{"transformers Gemma2Config (configuration_gemma2.py)",
                           256000,
                           2304,
                           9216,
                           26,
                           8,
                           4,
                           256,
                           8192,
                           true,
                           "gelu_pytorch_tanh",
                           NormKind::kRMSNorm};
constexpr Defaults kOlmo{"transformers OlmoConfig (configuration_olmo.py)",
                         50304,
                         4096,
                         11008,
                         32,
                         32,
                         0,
                         0,
                         2048,
                         false,
                         "silu",
                         NormKind::kNonParametric};
constexpr Defaults kStableLm{"transformers StableLmConfig (configuration_stablelm.py)",
                             50304,
                             2560,
                             6912,
                             32,
                             32,
                             32,
                             0,
                             4096,
                             false,
                             "silu",
                             NormKind::kLayerNorm};
constexpr Defaults kPhi3{"transformers Phi3Config (configuration_phi3.py)",
                         32064,
                         3072,
                         8192,
                         32,
                         32,
                         0,
                         0,
                         4096,
                         false,
                         "silu",
                         NormKind::kRMSNorm};
constexpr Defaults kDeepSeekV2{"DeepseekV2Config (remote code configuration_deepseek.py)",
                               102400,
                               4096,
                               11008,
                               30,
                               32,
                               32,
                               0,
                               2048,
                               false,
                               "silu",
                               NormKind::kRMSNorm};

// Reads what every Llama-like config has; returns the layer template.
LayerSpec read_base(ConfigReader& r, ModelSpec& s, const Defaults& d) {
  read_common(r, s, d.src);
  s.vocab_size = r.size({"vocab_size"}, d.vocab, d.src);
  s.hidden_size = r.size({"hidden_size"}, d.hidden, d.src);
  s.num_layers = r.size({"num_hidden_layers"}, d.layers, d.src);
  s.max_position_embeddings = r.size({"max_position_embeddings"}, d.max_positions, d.src);
  s.tie_word_embeddings = r.flag({"tie_word_embeddings"}, d.tie, d.src);
  s.attention_dropout = r.probability({"attention_dropout"}, 0.0, d.src);
  s.position = PositionKind::kRotary;
  r.number({"rope_theta"}, 10000.0, d.src);
  LayerSpec layer;
  AttentionSpec& a = layer.attention;
  a.num_heads = r.size({"num_attention_heads"}, d.heads, d.src);
  a.num_kv_heads = r.size({"num_key_value_heads"}, d.kv_heads == 0 ? a.num_heads : d.kv_heads,
                          d.kv_heads == 0 ? "None means num_attention_heads" : d.src);
  require_divides(r, "num_key_value_heads", a.num_kv_heads, "num_attention_heads", a.num_heads);
  if (d.head_dim != 0) {
    a.head_dim = r.size({"head_dim"}, d.head_dim, d.src);
  } else if (r.has({"head_dim"})) {
    a.head_dim = r.size({"head_dim"}, 0, d.src);
  } else {
    require_divides(r, "num_attention_heads", a.num_heads, "hidden_size", s.hidden_size);
    a.head_dim = s.hidden_size / a.num_heads;
    r.size({"head_dim"}, a.head_dim, "None means hidden_size / num_attention_heads");
  }
  a.rotary_fraction = 1.0;
  layer.mlp.kind = MlpKind::kGated;
  layer.mlp.intermediate_size = r.size({"intermediate_size"}, d.intermediate, d.src);
  layer.mlp.activation = r.text({"hidden_act", "hidden_activation"}, d.activation, d.src);
  layer.norm = d.norm;
  return layer;
}

// Applies "layer_types" (transformers ≥ 4.53) when present, else `window` to
// the layers that `sliding(i)` selects.
template <typename Pred>
void apply_sliding(ConfigReader& r, ModelSpec& s, int64_t window, Pred sliding) {
  std::vector<std::string> types = r.string_list({"layer_types"});
  if (!types.empty()) {
    if (static_cast<int64_t>(types.size()) != s.num_layers) {
      r.fail("layer_types", "lists " + std::to_string(types.size()) +
                                " layers but num_hidden_layers is " + std::to_string(s.num_layers));
    }
    for (size_t i = 0; i < types.size(); ++i) {
      if (types[i] == "sliding_attention") {
        if (window == 0)
          r.fail("sliding_window",
                 "layer_types asks for sliding attention but "
                 "sliding_window is not set");
        s.layers[i].attention.sliding_window = window;
      } else if (types[i] != "full_attention") {
        r.fail("layer_types",
               "expected \"full_attention\" or \"sliding_attention\", got \"" + types[i] + "\"");
      }
    }
    return;
  }
  if (window == 0)
    return;
  for (size_t i = 0; i < s.layers.size(); ++i) {
    if (sliding(static_cast<int64_t>(i)))
      s.layers[i].attention.sliding_window = window;
  }
}

void read_llama(ConfigReader& r, ModelSpec& s) {
  LayerSpec layer = read_base(r, s, kLlama);
  layer.attention.qkv_bias = layer.attention.out_bias =
      r.flag({"attention_bias"}, false, kLlama.src);
  layer.mlp.bias = r.flag({"mlp_bias"}, false, kLlama.src);
  repeat_layer(s, layer);
}

void read_mistral(ConfigReader& r, ModelSpec& s) {
  repeat_layer(s, read_base(r, s, kMistral));
  int64_t window = r.count({"sliding_window"}, 4096, kMistral.src);
  apply_sliding(r, s, window, [](int64_t) { return true; });
}

void read_moe_counts(ConfigReader& r, MlpSpec& mlp, const char* experts_key, int64_t experts,
                     int64_t top_k, const char* src) {
  mlp.num_experts = r.count({experts_key}, experts, src);
  mlp.experts_per_token = r.size({"num_experts_per_tok"}, top_k, src);
  if (mlp.num_experts > 0 && mlp.experts_per_token > mlp.num_experts) {
    r.fail("num_experts_per_tok", "expected at most " + std::string(experts_key) + " = " +
                                      std::to_string(mlp.num_experts) + ", got " +
                                      std::to_string(mlp.experts_per_token));
  }
}

void read_mixtral(ConfigReader& r, ModelSpec& s) {
  LayerSpec layer = read_base(r, s, kMixtral);
  read_moe_counts(r, layer.mlp, "num_local_experts", 8, 2, kMixtral.src);
  s.output_router_logits = r.flag({"output_router_logits"}, false, kMixtral.src);
  repeat_layer(s, layer);
  int64_t window = r.count({"sliding_window"}, 0, "MixtralConfig: None");
  apply_sliding(r, s, window, [](int64_t) { return true; });
}

// Qwen2 and Qwen3: sliding window only when use_sliding_window, and only for
// layers at or beyond max_window_layers.
void read_qwen_sliding(ConfigReader& r, ModelSpec& s, const char* src) {
  bool use = r.flag({"use_sliding_window"}, false, src);
  int64_t window = r.count({"sliding_window"}, 4096, src);
  int64_t first = r.count({"max_window_layers"}, 28, src);
  apply_sliding(r, s, use ? window : 0, [first](int64_t i) { return i >= first; });
}

void read_qwen2(ConfigReader& r, ModelSpec& s) {
  LayerSpec layer = read_base(r, s, kQwen2);
  layer.attention.qkv_bias = true;  // Qwen2Attention: q/k/v with bias, o_proj without
  repeat_layer(s, layer);
  read_qwen_sliding(r, s, kQwen2.src);
}

void read_qwen2_moe(ConfigReader& r, ModelSpec& s) {
  const char* src = kQwen2Moe.src;
  LayerSpec layer = read_base(r, s, kQwen2Moe);
  layer.attention.qkv_bias = r.flag({"qkv_bias"}, true, src);
  repeat_layer(s, layer);
  // Qwen2-MoE's own rule (modeling_qwen2_moe.py, v4.57): odd-numbered layers
  // (i + 1 odd) below max_window_layers slide; it differs from Qwen2's.
  bool use = r.flag({"use_sliding_window"}, false, src);
  int64_t window = r.count({"sliding_window"}, 4096, src);
  int64_t last = r.count({"max_window_layers"}, 28, src);
  apply_sliding(r, s, use ? window : 0, [last](int64_t i) { return (i + 1) % 2 == 1 && i < last; });
  MlpSpec moe = layer.mlp;
  read_moe_counts(r, moe, "num_experts", 60, 4, src);
  moe.intermediate_size = r.size({"moe_intermediate_size"}, 1408, src);
  moe.shared_intermediate_size = r.count({"shared_expert_intermediate_size"}, 5632, src);
  moe.shared_expert_gate = moe.shared_intermediate_size > 0;
  moe.norm_topk_prob = r.flag({"norm_topk_prob"}, false, src);
  s.output_router_logits = r.flag({"output_router_logits"}, false, src);
  s.both_masks = true;
  int64_t step = r.size({"decoder_sparse_step"}, 1, src);
  std::vector<int64_t> dense_only = r.int_list({"mlp_only_layers"});
  for (int64_t i = 0; i < s.num_layers; ++i) {
    bool listed = false;
    for (int64_t d : dense_only)
      listed = listed || d == i;
    if (!listed && moe.num_experts > 0 && (i + 1) % step == 0) {
      s.layers[static_cast<size_t>(i)].mlp = moe;
    }
  }
  bool dense = false;
  for (const LayerSpec& l : s.layers)
    dense = dense || !l.mlp.is_moe();
  if (s.output_router_logits && dense) {
    // check_model_inputs' recorder (OutputRecorder(nn.Linear, layer_name="mlp.gate"),
    // v4.57) also matches a dense layer's mlp.gate_proj, whose [b, s, width]
    // output load_balancing_loss_func cannot torch.cat with the routers' logits.
    s.warnings.push_back(
        "output_router_logits with dense layers (mlp_only_layers / decoder_sparse_step): "
        "transformers v4.57 records each dense layer's mlp.gate_proj output as router logits and "
        "the aux loss fails in torch.cat; estimated as if only the routers were recorded");
  }
}

void read_qwen3(ConfigReader& r, ModelSpec& s) {
  LayerSpec layer = read_base(r, s, kQwen3);
  layer.attention.qkv_bias = layer.attention.out_bias =
      r.flag({"attention_bias"}, false, kQwen3.src);
  layer.attention.qk_norm = true;  // Qwen3Attention: q_norm and k_norm over head_dim
  repeat_layer(s, layer);
  read_qwen_sliding(r, s, kQwen3.src);
}

void read_gemma(ConfigReader& r, ModelSpec& s) {
  LayerSpec layer = read_base(r, s, kGemma);
  layer.attention.qkv_bias = layer.attention.out_bias =
      r.flag({"attention_bias"}, false, kGemma.src);
  repeat_layer(s, layer);
}

void read_gemma2(ConfigReader& r, ModelSpec& s) {
  LayerSpec layer = read_base(r, s, kGemma2);
  layer.attention.qkv_bias = layer.attention.out_bias =
      r.flag({"attention_bias"}, false, kGemma2.src);
  layer.norms = 4;  // input, post-attention, pre-feedforward, post-feedforward
  repeat_layer(s, layer);
  r.number({"query_pre_attn_scalar"}, 256, kGemma2.src);
  // A null value switches soft-capping off (configs for flash attention).
  auto cap = [&](const char* key, double fallback) {
    if (r.is_null(key))
      return 0.0;
    double v = r.number({key}, fallback, kGemma2.src);
    if (v < 0)
      r.fail(key, "expected a positive soft-capping value or null, got " + std::to_string(v));
    return v;
  };
  s.attn_logit_softcapping = cap("attn_logit_softcapping", 50.0);
  s.final_logit_softcapping = cap("final_logit_softcapping", 30.0);
  int64_t window = r.count({"sliding_window"}, 4096, kGemma2.src);
  // Gemma2DecoderLayer: even-indexed layers use the sliding window.
  apply_sliding(r, s, window, [](int64_t i) { return i % 2 == 0; });
}

void read_olmo(ConfigReader& r, ModelSpec& s) {
  LayerSpec layer = read_base(r, s, kOlmo);
  layer.attention.qkv_bias = layer.attention.out_bias =
      r.flag({"attention_bias"}, false, kOlmo.src);
  r.number({"clip_qkv"}, 0, "OlmoConfig: None (no clipping)");
  repeat_layer(s, layer);
}

void read_stablelm(ConfigReader& r, ModelSpec& s) {
  const char* src = kStableLm.src;
  LayerSpec layer = read_base(r, s, kStableLm);
  layer.attention.qkv_bias = r.flag({"use_qkv_bias"}, false, src);
  layer.attention.qk_norm = r.flag({"qk_layernorm"}, false, src);
  layer.attention.rotary_fraction = r.number({"partial_rotary_factor", "rope_pct"}, 0.25, src);
  layer.parallel_residual = r.flag({"use_parallel_residual"}, false, src);
  layer.norms = layer.parallel_residual ? 1 : 2;
  s.hidden_dropout = r.probability({"hidden_dropout"}, 0.0, src);
  repeat_layer(s, layer);
}

void read_phi3(ConfigReader& r, ModelSpec& s) {
  const char* src = kPhi3.src;
  LayerSpec layer = read_base(r, s, kPhi3);
  layer.attention.rotary_fraction = r.number({"partial_rotary_factor"}, 1.0, src);
  s.hidden_dropout = r.probability({"resid_pdrop"}, 0.0, src);
  s.embedding_dropout = r.probability({"embd_pdrop"}, 0.0, src);
  repeat_layer(s, layer);
  int64_t window = r.count({"sliding_window"}, 0, "Phi3Config: None");
  apply_sliding(r, s, window, [](int64_t) { return true; });
}

void read_deepseek_v2(ConfigReader& r, ModelSpec& s) {
  const char* src = kDeepSeekV2.src;
  LayerSpec layer = read_base(r, s, kDeepSeekV2);
  AttentionSpec& a = layer.attention;
  a.kind = AttentionKind::kMLA;
  a.qkv_bias = a.out_bias = r.flag({"attention_bias"}, false, src);
  a.q_lora_rank = r.count({"q_lora_rank"}, 0, "None in DeepSeek-V2-Lite (1536 in the class)");
  a.kv_lora_rank = r.size({"kv_lora_rank"}, 512, src);
  a.qk_nope_head_dim = r.size({"qk_nope_head_dim"}, 128, src);
  a.qk_rope_head_dim = r.size({"qk_rope_head_dim"}, 64, src);
  a.v_head_dim = r.size({"v_head_dim"}, 128, src);
  a.head_dim = a.qk_nope_head_dim + a.qk_rope_head_dim;
  a.num_kv_heads = a.num_heads;  // MLA expands the latent to every head
  a.rotary_fraction = static_cast<double>(a.qk_rope_head_dim) / static_cast<double>(a.head_dim);
  repeat_layer(s, layer);
  MlpSpec moe = layer.mlp;
  read_moe_counts(r, moe, "n_routed_experts", 0, 1, "DeepseekV2Config: None (dense)");
  moe.intermediate_size = r.size({"moe_intermediate_size"}, 1407, src);
  int64_t shared = r.count({"n_shared_experts"}, 0, "DeepseekV2Config: None");
  moe.shared_intermediate_size = checked_mul(shared, moe.intermediate_size, s.source);
  int64_t first_dense = r.count({"first_k_dense_replace"}, 0, src);
  int64_t freq = r.size({"moe_layer_freq"}, 1, src);
  // DeepseekV2DecoderLayer: MoE when n_routed_experts is set, at or after
  // first_k_dense_replace, and on every moe_layer_freq-th layer.
  for (int64_t i = 0; i < s.num_layers; ++i) {
    if (moe.num_experts > 0 && i >= first_dense && i % freq == 0) {
      s.layers[static_cast<size_t>(i)].mlp = moe;
    }
  }
}

// ---------------------------------------------------------------- builder
enum class QkNormStyle { kNone, kPerHeadRms, kPerHeadLayerNorm };
enum class MoeStyle { kNone, kBlockSparse, kSharedExpert, kSharedExperts };

struct Naming {
  bool fused = false;  // Phi-3: qkv_proj and gate_up_proj
  QkNormStyle qk_norm = QkNormStyle::kNone;
  MoeStyle moe = MoeStyle::kNone;
};

void build_gated_mlp(Inventory& inv, const std::string& p, int64_t width, int64_t h, bool bias,
                     TensorRole role, int i, bool fused) {
  if (fused) {
    inv.linear(p + "gate_up_proj", 2 * width, h, bias, role, i);
  } else {
    inv.linear(p + "gate_proj", width, h, bias, role, i);
    inv.linear(p + "up_proj", width, h, bias, role, i);
  }
  inv.linear(p + "down_proj", h, width, bias, role, i);
}

void build_attention(Inventory& inv, const std::string& p, const AttentionSpec& a, int64_t h, int i,
                     const Naming& n) {
  const TensorRole role = TensorRole::kAttention;
  if (a.kind == AttentionKind::kMLA) {
    if (a.q_lora_rank == 0) {
      inv.linear(p + "q_proj", a.q_width(), h, false, role, i);
    } else {
      inv.linear(p + "q_a_proj", a.q_lora_rank, h, a.qkv_bias, role, i);
      inv.norm(p + "q_a_layernorm", a.q_lora_rank, NormKind::kRMSNorm, i);
      inv.linear(p + "q_b_proj", a.q_width(), a.q_lora_rank, false, role, i);
    }
    inv.linear(p + "kv_a_proj_with_mqa", a.kv_lora_rank + a.qk_rope_head_dim, h, a.qkv_bias, role,
               i);
    inv.norm(p + "kv_a_layernorm", a.kv_lora_rank, NormKind::kRMSNorm, i);
    inv.linear(p + "kv_b_proj", a.num_heads * (a.qk_nope_head_dim + a.v_head_dim), a.kv_lora_rank,
               false, role, i);
    inv.linear(p + "o_proj", h, a.v_width(), a.out_bias, role, i);
    return;
  }
  if (n.fused) {
    inv.linear(p + "o_proj", h, a.q_width(), a.out_bias, role, i);
    inv.linear(p + "qkv_proj", a.q_width() + a.k_width() + a.v_width(), h, a.qkv_bias, role, i);
    return;
  }
  inv.linear(p + "q_proj", a.q_width(), h, a.qkv_bias, role, i);
  inv.linear(p + "k_proj", a.k_width(), h, a.qkv_bias, role, i);
  inv.linear(p + "v_proj", a.v_width(), h, a.qkv_bias, role, i);
  inv.linear(p + "o_proj", h, a.q_width(), a.out_bias, role, i);
  if (!a.qk_norm)
    return;
  if (n.qk_norm == QkNormStyle::kPerHeadRms) {
    inv.norm(p + "q_norm", a.head_dim, NormKind::kRMSNorm, i);
    inv.norm(p + "k_norm", a.head_dim, NormKind::kRMSNorm, i);
  } else if (n.qk_norm == QkNormStyle::kPerHeadLayerNorm) {
    // StableLmLayerNormPerHead: one bias-free LayerNorm per head.
    for (int64_t j = 0; j < a.num_heads; ++j) {
      inv.norm(p + "q_layernorm.norms." + std::to_string(j), a.head_dim, NormKind::kLayerNormNoBias,
               i);
    }
    for (int64_t j = 0; j < a.num_kv_heads; ++j) {
      inv.norm(p + "k_layernorm.norms." + std::to_string(j), a.head_dim, NormKind::kLayerNormNoBias,
               i);
    }
  }
}

void build_mlp(Inventory& inv, const std::string& p, const MlpSpec& m, int64_t h, int i,
               const Naming& n) {
  if (!m.is_moe()) {
    build_gated_mlp(inv, p + "mlp.", m.intermediate_size, h, m.bias, TensorRole::kMlp, i, n.fused);
    return;
  }
  const TensorRole ex = TensorRole::kExpert;
  switch (n.moe) {
    case MoeStyle::kBlockSparse: {
      std::string q = p + "block_sparse_moe.";
      inv.linear(q + "gate", m.num_experts, h, false, TensorRole::kRouter, i);
      for (int64_t e = 0; e < m.num_experts; ++e) {
        std::string x = q + "experts." + std::to_string(e) + ".";
        inv.linear(x + "w1", m.intermediate_size, h, false, ex, i);
        inv.linear(x + "w2", h, m.intermediate_size, false, ex, i);
        inv.linear(x + "w3", m.intermediate_size, h, false, ex, i);
      }
      break;
    }
    case MoeStyle::kSharedExpert:
    case MoeStyle::kSharedExperts: {
      std::string q = p + "mlp.";
      bool qwen = n.moe == MoeStyle::kSharedExpert;
      if (qwen)
        inv.linear(q + "gate", m.num_experts, h, false, TensorRole::kRouter, i);
      for (int64_t e = 0; e < m.num_experts; ++e) {
        build_gated_mlp(inv, q + "experts." + std::to_string(e) + ".", m.intermediate_size, h,
                        false, ex, i, false);
      }
      if (!qwen)
        inv.param(q + "gate.weight", {m.num_experts, h}, TensorRole::kRouter, i);
      if (m.shared_intermediate_size > 0) {
        build_gated_mlp(inv, q + (qwen ? "shared_expert." : "shared_experts."),
                        m.shared_intermediate_size, h, false, TensorRole::kMlp, i, false);
      }
      if (m.shared_expert_gate) {
        inv.linear(q + "shared_expert_gate", 1, h, false, TensorRole::kRouter, i);
      }
      break;
    }
    case MoeStyle::kNone:
      break;
  }
}

void build_llama_like(ModelSpec& s, const Naming& n) {
  Inventory inv(&s);
  int64_t h = s.hidden_size;
  inv.param("model.embed_tokens.weight", {s.vocab_size, h}, TensorRole::kEmbedding);
  for (int i = 0; i < static_cast<int>(s.num_layers); ++i) {
    const LayerSpec& l = s.layers[static_cast<size_t>(i)];
    std::string p = layer_prefix("model.layers", i);
    build_attention(inv, p + "self_attn.", l.attention, h, i, n);
    build_mlp(inv, p, l.mlp, h, i, n);
    inv.norm(p + "input_layernorm", h, l.norm, i);
    if (!l.parallel_residual)
      inv.norm(p + "post_attention_layernorm", h, l.norm, i);
    if (l.norms == 4) {
      inv.norm(p + "pre_feedforward_layernorm", h, l.norm, i);
      inv.norm(p + "post_feedforward_layernorm", h, l.norm, i);
    }
  }
  inv.norm("model.norm", h, s.layers.front().norm);
  inv.rotary("model.rotary_emb.inv_freq", s.layers.front().attention);
  inv.lm_head("lm_head", s.vocab_size, h, "model.embed_tokens.weight");
}

void build_plain(ModelSpec& s) {
  build_llama_like(s, {});
}
void build_mixtral(ModelSpec& s) {
  build_llama_like(s, {false, QkNormStyle::kNone, MoeStyle::kBlockSparse});
}
void build_qwen2_moe(ModelSpec& s) {
  build_llama_like(s, {false, QkNormStyle::kNone, MoeStyle::kSharedExpert});
}
void build_qwen3(ModelSpec& s) {
  build_llama_like(s, {false, QkNormStyle::kPerHeadRms, MoeStyle::kNone});
}
void build_stablelm(ModelSpec& s) {
  build_llama_like(s, {false, QkNormStyle::kPerHeadLayerNorm, MoeStyle::kNone});
}
void build_phi3(ModelSpec& s) {
  build_llama_like(s, {true, QkNormStyle::kNone, MoeStyle::kNone});
}
void build_deepseek_v2(ModelSpec& s) {
  build_llama_like(s, {false, QkNormStyle::kNone, MoeStyle::kSharedExperts});
}

}  // namespace

void register_llama_families(std::vector<Architecture>* registry) {
  registry->push_back({"llama", {"llama"}, kLlama.src, read_llama, build_plain});
  registry->push_back({"mistral", {"mistral"}, kMistral.src, read_mistral, build_plain});
  registry->push_back({"mixtral", {"mixtral"}, kMixtral.src, read_mixtral, build_mixtral});
  registry->push_back({"qwen2", {"qwen2"}, kQwen2.src, read_qwen2, build_plain});
  registry->push_back({"qwen2_moe", {"qwen2_moe"}, kQwen2Moe.src, read_qwen2_moe, build_qwen2_moe});
  registry->push_back({"qwen3", {"qwen3"}, kQwen3.src, read_qwen3, build_qwen3});
  registry->push_back({"gemma", {"gemma"}, kGemma.src, read_gemma, build_plain});
  registry->push_back({"gemma2", {"gemma2"}, kGemma2.src, read_gemma2, build_plain});
  registry->push_back({"olmo", {"olmo"}, kOlmo.src, read_olmo, build_plain});
  registry->push_back(
      {"stablelm", {"stablelm", "stablelm_epoch"}, kStableLm.src, read_stablelm, build_stablelm});
  registry->push_back({"phi3", {"phi3"}, kPhi3.src, read_phi3, build_phi3});
  registry->push_back(
      {"deepseek_v2", {"deepseek_v2"}, kDeepSeekV2.src, read_deepseek_v2, build_deepseek_v2});
}

}  // namespace llmem::model
