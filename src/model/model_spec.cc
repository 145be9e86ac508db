// Copyright 2026 The llmem Authors.
// ModelSpec basics, the architecture registry and config parsing.

#include <algorithm>
#include <cctype>
#include <string>
#include <utility>

#include "llmem/error.h"

#include "config/config_reader.h"
#include "model/arch.h"
#include "model/inventory.h"
#include "model/suggest.h"

namespace llmem {

int dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return 4;
    case DType::kFloat16:
    case DType::kBFloat16:
      return 2;
    case DType::kInt8:
    case DType::kUInt8:
    case DType::kBool:
      return 1;
    case DType::kInt64:
      return 8;
  }
  return 4;
}

std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "float32";
    case DType::kFloat16:
      return "float16";
    case DType::kBFloat16:
      return "bfloat16";
    case DType::kInt8:
      return "int8";
    case DType::kUInt8:
      return "uint8";
    case DType::kBool:
      return "bool";
    case DType::kInt64:
      return "int64";
  }
  return "float32";
}

bool parse_dtype(std::string_view name, DType* out) {
  std::string n;
  for (char c : name)
    n.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  if (n.rfind("torch.", 0) == 0)
    n = n.substr(6);
  static const std::pair<const char*, DType> kNames[] = {
      {"float32", DType::kFloat32}, {"f32", DType::kFloat32},     {"fp32", DType::kFloat32},
      {"float", DType::kFloat32},   {"float16", DType::kFloat16}, {"f16", DType::kFloat16},
      {"fp16", DType::kFloat16},    {"half", DType::kFloat16},    {"bfloat16", DType::kBFloat16},
      {"bf16", DType::kBFloat16},   {"int8", DType::kInt8},       {"i8", DType::kInt8},
      {"uint8", DType::kUInt8},     {"u8", DType::kUInt8},        {"bool", DType::kBool},
      {"int64", DType::kInt64},     {"i64", DType::kInt64}};
  for (const auto& [text, dtype] : kNames) {
    if (n == text) {
      *out = dtype;
      return true;
    }
  }
  return false;
}

std::string_view tensor_role_name(TensorRole role) {
  switch (role) {
    case TensorRole::kEmbedding:
      return "embedding";
    case TensorRole::kPositionEmbedding:
      return "position_embedding";
    case TensorRole::kAttention:
      return "attention";
    case TensorRole::kMlp:
      return "mlp";
    case TensorRole::kExpert:
      return "expert";
    case TensorRole::kRouter:
      return "router";
    case TensorRole::kNorm:
      return "norm";
    case TensorRole::kLmHead:
      return "lm_head";
  }
  return "other";
}

int64_t AttentionSpec::q_width() const {
  if (kind == AttentionKind::kMLA)
    return num_heads * (qk_nope_head_dim + qk_rope_head_dim);
  return num_heads * head_dim;
}

int64_t AttentionSpec::k_width() const {
  if (kind == AttentionKind::kMLA)
    return num_heads * (qk_nope_head_dim + qk_rope_head_dim);
  return num_kv_heads * head_dim;
}

int64_t AttentionSpec::v_width() const {
  if (kind == AttentionKind::kMLA)
    return num_heads * v_head_dim;
  return num_kv_heads * head_dim;
}

int64_t ModelSpec::params() const {
  int64_t total = 0;
  for (const TensorSpec& t : tensors) {
    if (t.tied_to.empty())
      total += t.numel;
  }
  return total;
}

int64_t ModelSpec::non_embedding_params() const {
  int64_t total = 0;
  for (const TensorSpec& t : tensors) {
    if (!t.tied_to.empty())
      continue;
    if (t.role == TensorRole::kEmbedding || t.role == TensorRole::kPositionEmbedding ||
        t.role == TensorRole::kLmHead) {
      continue;
    }
    total += t.numel;
  }
  return total;
}

namespace model {

const std::vector<Architecture>& registry() {
  static const std::vector<Architecture> kRegistry = [] {
    std::vector<Architecture> r;
    register_gpt_families(&r);
    register_llama_families(&r);
    return r;
  }();
  return kRegistry;
}

void read_common(config::ConfigReader& reader, ModelSpec& spec, const char* src) {
  std::string dtype = reader.text({"torch_dtype", "dtype"}, "float32",
                                  "transformers PretrainedConfig (None: float32 weights)");
  if (!parse_dtype(dtype, &spec.dtype)) {
    reader.fail("torch_dtype", "expected float32, float16 or bfloat16, got \"" + dtype + "\"");
  }
  (void)src;
}

void require_divides(const config::ConfigReader& reader, const char* divisor_key, int64_t divisor,
                     const char* value_key, int64_t value) {
  if (divisor <= 0 || value % divisor != 0) {
    reader.fail(divisor_key, std::string(divisor_key) + " = " + std::to_string(divisor) +
                                 " must divide " + value_key + " = " + std::to_string(value));
  }
}

void repeat_layer(ModelSpec& spec, const LayerSpec& layer) {
  spec.layers.assign(static_cast<size_t>(spec.num_layers), layer);
}

// Limits far above any published model; larger values are taken as mistakes
// (and would make the inventory itself huge).
constexpr int64_t kMaxLayers = 1024;
constexpr int64_t kMaxExperts = 4096;
constexpr int64_t kMaxHeads = 16384;
// Expert instances summed over layers (DeepSeek-V3: 58 × 256 = 14,848).
constexpr int64_t kMaxExpertInstances = 65536;

void validate(const config::ConfigReader& reader, const ModelSpec& spec) {
  const std::string& src = spec.source;
  if (spec.num_layers > kMaxLayers) {
    reader.fail("num_hidden_layers", "expected at most " + std::to_string(kMaxLayers) +
                                         " layers, got " + std::to_string(spec.num_layers));
  }
  for (const LayerSpec& l : spec.layers) {
    const AttentionSpec& a = l.attention;
    if (a.num_heads > kMaxHeads) {
      reader.fail("num_attention_heads", "expected at most " + std::to_string(kMaxHeads) +
                                             " heads, got " + std::to_string(a.num_heads));
    }
    if (l.mlp.num_experts > kMaxExperts) {
      reader.fail("num_experts", "expected at most " + std::to_string(kMaxExperts) +
                                     " experts, got " + std::to_string(l.mlp.num_experts));
    }
    // The widths below are computed without checks later; make sure they fit.
    checked_mul(a.num_heads, a.head_dim + a.v_head_dim + a.qk_rope_head_dim, src);
    checked_mul(a.num_kv_heads, a.head_dim, src);
    checked_mul(a.num_heads, a.qk_nope_head_dim + a.v_head_dim, src);
    checked_mul(a.num_heads + 2 * a.num_kv_heads, a.head_dim, src);
    checked_mul(3, checked_mul(a.num_heads + 2 * a.num_kv_heads, a.head_dim, src), src);
    checked_mul(2, l.mlp.intermediate_size, src);
    checked_mul(l.mlp.num_experts, checked_mul(l.mlp.intermediate_size, spec.hidden_size, src),
                src);
  }
  checked_mul(3, spec.hidden_size, src);
  int64_t instances = 0;
  for (const LayerSpec& l : spec.layers)
    instances += l.mlp.num_experts;
  if (instances > kMaxExpertInstances) {
    reader.fail("num_experts", "layers × experts = " + std::to_string(instances) + " exceeds " +
                                   std::to_string(kMaxExpertInstances) +
                                   "; no published model comes close");
  }
}

namespace {

// Hugging Face class names in "architectures", for configs without model_type.
const char* model_type_from_class(const std::string& cls) {
  static const std::pair<const char*, const char*> kClasses[] = {
      {"OPTForCausalLM", "opt"},
      {"BioGptForCausalLM", "biogpt"},
      {"BloomForCausalLM", "bloom"},
      {"FalconForCausalLM", "falcon"},
      {"RWForCausalLM", "RefinedWebModel"},
      {"GPTNeoXForCausalLM", "gpt_neox"},
      {"GPT2LMHeadModel", "gpt2"},
      {"GPTBigCodeForCausalLM", "gpt_bigcode"},
      {"GPTNeoForCausalLM", "gpt_neo"},
      {"GPTJForCausalLM", "gptj"},
      {"CodeGenForCausalLM", "codegen"},
      {"PhiForCausalLM", "phi"},
      {"LlamaForCausalLM", "llama"},
      {"MistralForCausalLM", "mistral"},
      {"MixtralForCausalLM", "mixtral"},
      {"Qwen2ForCausalLM", "qwen2"},
      {"Qwen2MoeForCausalLM", "qwen2_moe"},
      {"Qwen3ForCausalLM", "qwen3"},
      {"GemmaForCausalLM", "gemma"},
      {"Gemma2ForCausalLM", "gemma2"},
      {"OlmoForCausalLM", "olmo"},
      {"StableLmForCausalLM", "stablelm"},
      {"Phi3ForCausalLM", "phi3"},
      {"DeepseekV2ForCausalLM", "deepseek_v2"}};
  for (const auto& [name, type] : kClasses) {
    if (cls == name)
      return type;
  }
  return nullptr;
}

std::string read_model_type(config::ConfigReader& reader) {
  if (reader.has({"model_type"}))
    return reader.text({"model_type"}, "", "");
  const nlohmann::json& classes = reader.raw({"architectures"});
  if (classes.is_array() && !classes.empty() && classes[0].is_string()) {
    if (const char* type = model_type_from_class(classes[0].get<std::string>()))
      return type;
  }
  reader.fail("model_type",
              "required key is missing (expected a string such as \"llama\"; "
              "\"architectures\" does not name a known class either)");
}

}  // namespace
}  // namespace model

std::vector<ArchitectureInfo> list_architectures() {
  std::vector<ArchitectureInfo> out;
  for (const model::Architecture& a : model::registry()) {
    out.push_back({a.family, a.model_types, a.defaults_source});
  }
  return out;
}

ModelSpec parse_config(std::string_view json_text, const std::string& source) {
  nlohmann::json json = config::parse_json(json_text, source);
  config::ConfigReader reader(json, source);
  ModelSpec spec;
  spec.source = source;
  spec.model_type = model::read_model_type(reader);
  const model::Architecture* arch = nullptr;
  std::vector<std::string> known;
  for (const model::Architecture& a : model::registry()) {
    for (const std::string& type : a.model_types) {
      known.push_back(type);
      if (type == spec.model_type)
        arch = &a;
    }
  }
  if (arch == nullptr) {
    std::string message = "unknown model_type \"" + spec.model_type + "\"";
    std::string nearest = model::nearest(spec.model_type, known);
    if (!nearest.empty())
      message += " (did you mean \"" + nearest + "\"?)";
    message += "; supported: " + model::join(known, ", ");
    throw Error(source, "model_type", message);
  }
  spec.family = arch->family;
  spec.use_cache = reader.flag({"use_cache"}, true, "transformers PretrainedConfig");
  arch->read(reader, spec);
  if (spec.embedding_size == 0)
    spec.embedding_size = spec.hidden_size;
  model::validate(reader, spec);
  spec.provenance = reader.take_provenance();
  arch->build(spec);
  // Totals must fit in 64 bits too.
  int64_t total = 0;
  for (const TensorSpec& t : spec.tensors)
    total = model::checked_add(total, t.numel, source);
  return spec;
}

}  // namespace llmem
