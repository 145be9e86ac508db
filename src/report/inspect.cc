// Copyright 2026 The llmem Authors.

#include <cstdio>
#include <map>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "llmem/report.h"

namespace llmem {
namespace {

using nlohmann::ordered_json;

ordered_json tensor_json(const TensorSpec& t, bool buffer) {
  ordered_json j;
  j["name"] = t.name;
  j["shape"] = t.shape;
  j["numel"] = t.numel;
  if (!buffer)
    j["params"] = t.tied_to.empty() ? t.numel : 0;
  j["dtype"] = dtype_name(t.dtype);
  j["role"] = tensor_role_name(t.role);
  if (t.layer >= 0)
    j["layer"] = t.layer;
  if (!t.tied_to.empty())
    j["tied_to"] = t.tied_to;
  if (buffer)
    j["persistent"] = t.persistent;
  return j;
}

const char* norm_name(NormKind kind) {
  switch (kind) {
    case NormKind::kLayerNorm:
      return "layernorm";
    case NormKind::kLayerNormNoBias:
      return "layernorm_nobias";
    case NormKind::kRMSNorm:
      return "rmsnorm";
    case NormKind::kNonParametric:
      return "layernorm_nonparametric";
  }
  return "";
}

const char* position_name(PositionKind kind) {
  switch (kind) {
    case PositionKind::kLearned:
      return "learned";
    case PositionKind::kRotary:
      return "rotary";
    case PositionKind::kAlibi:
      return "alibi";
  }
  return "";
}

ordered_json layer_json(const LayerSpec& l) {
  const AttentionSpec& a = l.attention;
  ordered_json attention;
  attention["kind"] = a.kind == AttentionKind::kMLA ? "mla" : "standard";
  attention["heads"] = a.num_heads;
  attention["kv_heads"] = a.num_kv_heads;
  attention["head_dim"] = a.head_dim;
  attention["sliding_window"] = a.sliding_window;
  attention["qkv_bias"] = a.qkv_bias;
  attention["out_bias"] = a.out_bias;
  attention["qk_norm"] = a.qk_norm;
  attention["rotary_fraction"] = a.rotary_fraction;
  if (a.kind == AttentionKind::kMLA) {
    attention["q_lora_rank"] = a.q_lora_rank;
    attention["kv_lora_rank"] = a.kv_lora_rank;
    attention["qk_nope_head_dim"] = a.qk_nope_head_dim;
    attention["qk_rope_head_dim"] = a.qk_rope_head_dim;
    attention["v_head_dim"] = a.v_head_dim;
  }
  ordered_json mlp;
  mlp["kind"] = l.mlp.kind == MlpKind::kGated ? "gated" : "dense";
  mlp["intermediate_size"] = l.mlp.intermediate_size;
  mlp["bias"] = l.mlp.bias;
  mlp["activation"] = l.mlp.activation;
  if (l.mlp.is_moe()) {
    mlp["experts"] = l.mlp.num_experts;
    mlp["experts_per_token"] = l.mlp.experts_per_token;
    mlp["shared_intermediate_size"] = l.mlp.shared_intermediate_size;
  }
  ordered_json j;
  j["attention"] = attention;
  j["mlp"] = mlp;
  j["norm"] = norm_name(l.norm);
  j["norms"] = l.norms;
  j["parallel_residual"] = l.parallel_residual;
  return j;
}

std::string describe_layer(const LayerSpec& l) {
  const AttentionSpec& a = l.attention;
  std::ostringstream out;
  if (a.kind == AttentionKind::kMLA) {
    out << "MLA " << a.num_heads << " heads (kv_lora " << a.kv_lora_rank << ", q "
        << (a.q_lora_rank == 0 ? std::string("full") : "lora " + std::to_string(a.q_lora_rank))
        << ")";
  } else {
    out << a.num_heads << " heads";
    if (a.num_kv_heads != a.num_heads)
      out << " / " << a.num_kv_heads << " kv";
    out << " × " << a.head_dim;
  }
  if (a.sliding_window > 0)
    out << ", window " << a.sliding_window;
  if (l.mlp.is_moe()) {
    out << "; MoE " << l.mlp.num_experts << " × " << l.mlp.intermediate_size << " top-"
        << l.mlp.experts_per_token;
    if (l.mlp.shared_intermediate_size > 0)
      out << " + shared " << l.mlp.shared_intermediate_size;
  } else {
    out << "; " << (l.mlp.kind == MlpKind::kGated ? "gated " : "") << "MLP "
        << l.mlp.intermediate_size;
  }
  out << " (" << l.mlp.activation << "); " << norm_name(l.norm);
  if (l.parallel_residual)
    out << ", parallel";
  return out.str();
}

}  // namespace

std::string with_commas(int64_t value) {
  std::string digits = std::to_string(value < 0 ? -value : value);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0)
      out.push_back(',');
    out.push_back(digits[i]);
  }
  return value < 0 ? "-" + out : out;
}

std::string inspect_json(const ModelSpec& spec) {
  ordered_json j;
  j["schema_version"] = kSchemaVersion;
  j["name"] = spec.name;
  j["model_type"] = spec.model_type;
  j["family"] = spec.family;
  j["params"] = spec.params();
  j["non_embedding_params"] = spec.non_embedding_params();
  j["vocab_size"] = spec.vocab_size;
  j["hidden_size"] = spec.hidden_size;
  j["layers"] = spec.num_layers;
  j["max_position_embeddings"] = spec.max_position_embeddings;
  j["position"] = position_name(spec.position);
  j["tie_word_embeddings"] = spec.tie_word_embeddings;
  j["dtype"] = dtype_name(spec.dtype);
  j["dropout"] = {{"hidden", spec.hidden_dropout},
                  {"attention", spec.attention_dropout},
                  {"embedding", spec.embedding_dropout}};
  ordered_json layers = ordered_json::array();
  for (const LayerSpec& l : spec.layers)
    layers.push_back(layer_json(l));
  j["layer_specs"] = layers;
  ordered_json tensors = ordered_json::array();
  for (const TensorSpec& t : spec.tensors)
    tensors.push_back(tensor_json(t, false));
  j["tensors"] = tensors;
  ordered_json buffers = ordered_json::array();
  for (const TensorSpec& t : spec.buffers)
    buffers.push_back(tensor_json(t, true));
  j["buffers"] = buffers;
  ordered_json provenance = ordered_json::array();
  for (const Provenance& p : spec.provenance) {
    provenance.push_back({{"key", p.key}, {"value", p.value}, {"origin", p.origin}});
  }
  j["provenance"] = provenance;
  j["warnings"] = spec.warnings;
  return j.dump(2) + "\n";
}

std::string inspect_table(const ModelSpec& spec, bool tensors) {
  std::ostringstream out;
  out << spec.name << "  (" << spec.family;
  if (spec.model_type != spec.family)
    out << ", model_type " << spec.model_type;
  out << ")\n";
  out << "  parameters      " << with_commas(spec.params()) << "  (non-embedding "
      << with_commas(spec.non_embedding_params()) << ")\n";
  out << "  vocab × hidden  " << spec.vocab_size << " × " << spec.hidden_size
      << (spec.tie_word_embeddings ? ", output embedding tied" : ", output embedding separate")
      << "\n";
  out << "  positions       " << position_name(spec.position) << ", max "
      << spec.max_position_embeddings << "\n";
  out << "  checkpoint      " << dtype_name(spec.dtype) << ", "
      << with_commas(spec.params() * dtype_size(spec.dtype)) << " bytes\n";
  // Runs of identical layers.
  size_t start = 0;
  for (size_t i = 1; i <= spec.layers.size(); ++i) {
    if (i < spec.layers.size() &&
        describe_layer(spec.layers[i]) == describe_layer(spec.layers[start])) {
      continue;
    }
    std::string range = i - start == 1
                            ? "layer " + std::to_string(start)
                            : "layers " + std::to_string(start) + "-" + std::to_string(i - 1);
    char label[32];
    std::snprintf(label, sizeof(label), "  %-16s", range.c_str());
    out << label << describe_layer(spec.layers[start]) << "\n";
    start = i;
  }
  std::map<std::string, int64_t> by_role;
  for (const TensorSpec& t : spec.tensors) {
    if (t.tied_to.empty())
      by_role[std::string(tensor_role_name(t.role))] += t.numel;
  }
  out << "  by role        ";
  for (const auto& [role, count] : by_role)
    out << " " << role << " " << with_commas(count) << ";";
  out << "\n";
  if (tensors) {
    out << "\n  tensors (" << spec.tensors.size() << "), buffers (" << spec.buffers.size() << ")\n";
    auto row = [&](const TensorSpec& t, const char* note) {
      std::string shape = "[";
      for (size_t k = 0; k < t.shape.size(); ++k) {
        shape += (k > 0 ? ", " : "") + std::to_string(t.shape[k]);
      }
      shape += "]";
      char line[512];
      std::snprintf(line, sizeof(line), "  %-58s %-22s %14s %s", t.name.c_str(), shape.c_str(),
                    with_commas(t.numel).c_str(), note);
      out << line;
      if (!t.tied_to.empty())
        out << "tied to " << t.tied_to;
      out << "\n";
    };
    for (const TensorSpec& t : spec.tensors)
      row(t, "");
    for (const TensorSpec& t : spec.buffers)
      row(t, t.persistent ? "buffer " : "buffer (non-persistent) ");
  }
  for (const std::string& w : spec.warnings)
    out << "warning: " << w << "\n";
  return out.str();
}

std::string models_table() {
  std::ostringstream out;
  char line[256];
  std::snprintf(line, sizeof(line), "%-48s %-12s %16s\n", "name", "family", "params");
  out << line;
  for (const CatalogEntry& e : catalog()) {
    ModelSpec spec = parse_config(e.config_json, "catalog entry " + e.name);
    std::snprintf(line, sizeof(line), "%-48s %-12s %16s\n", e.name.c_str(), spec.family.c_str(),
                  with_commas(spec.params()).c_str());
    out << line;
  }
  return out.str();
}

std::string models_json() {
  ordered_json list = ordered_json::array();
  for (const CatalogEntry& e : catalog()) {
    ModelSpec spec = parse_config(e.config_json, "catalog entry " + e.name);
    ordered_json j;
    j["name"] = e.name;
    j["family"] = spec.family;
    j["model_type"] = spec.model_type;
    j["params"] = spec.params();
    if (e.published_params > 0)
      j["published_params"] = e.published_params;
    j["verbatim"] = e.verbatim;
    j["source"] = e.source;
    list.push_back(j);
  }
  ordered_json doc;
  doc["schema_version"] = kSchemaVersion;
  doc["models"] = list;
  return doc.dump(2) + "\n";
}

}  // namespace llmem
