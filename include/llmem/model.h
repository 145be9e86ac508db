// Copyright 2026 The llmem Authors.
// The model: what a Hugging Face config.json says, normalized.
//
// A ModelSpec is the single description of a decoder-only transformer that
// every later stage (trace, allocator, estimate, plan) reads. It has one
// LayerSpec per decoder layer (so per-layer differences such as sliding
// windows or dense layers before MoE layers are explicit), and the exact
// tensor inventory with Hugging Face's state-dict names.

#ifndef LLMEM_MODEL_H_
#define LLMEM_MODEL_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace llmem {

/// Element types of tensors, as torch names them.
enum class DType { kFloat32, kFloat16, kBFloat16, kInt8, kUInt8, kBool, kInt64 };

/// Bytes per element.
int dtype_size(DType dtype);
/// "float32", "float16", "bfloat16", "int8", "uint8", "bool", "int64".
std::string_view dtype_name(DType dtype);
/// Parses torch/safetensors spellings ("bfloat16", "BF16", "torch.float16", "F32", "fp16").
/// Returns false when the name is not one llmem knows.
bool parse_dtype(std::string_view name, DType* out);

enum class NormKind {
  kLayerNorm,        ///< weight and bias
  kLayerNormNoBias,  ///< weight only (OPT-style elementwise affine without bias, StableLM qk)
  kRMSNorm,          ///< weight only
  kNonParametric,    ///< no parameters (OLMo-1)
};

enum class PositionKind { kLearned, kRotary, kAlibi };

enum class AttentionKind {
  kStandard,  ///< multi-head, grouped-query or multi-query attention
  kMLA,       ///< DeepSeek-V2 multi-head latent attention
};

enum class MlpKind {
  kDense,  ///< up projection, activation, down projection
  kGated,  ///< act(gate(x)) * up(x), then down (SwiGLU / GeGLU)
};

struct AttentionSpec {
  AttentionKind kind = AttentionKind::kStandard;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;        ///< per-head dimension of queries and keys (kStandard)
  int64_t sliding_window = 0;  ///< 0: full causal attention; otherwise the window in tokens
  bool qkv_bias = false;
  bool out_bias = false;
  bool qk_norm = false;        ///< per-head RMS/LayerNorm of queries and keys
  double rotary_fraction = 0;  ///< share of head_dim that is rotated (0 when no rotary)
  // Multi-head latent attention (kMLA); ref: DeepSeek-V2 paper §2.1, modeling_deepseek.py.
  int64_t q_lora_rank = 0;  ///< 0: queries use a plain projection
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;

  /// Width of the query projection output (num_heads * query head size).
  int64_t q_width() const;
  /// Width of the key projection output.
  int64_t k_width() const;
  /// Width of the value projection output (num_heads * value head size for MLA).
  int64_t v_width() const;
};

struct MlpSpec {
  MlpKind kind = MlpKind::kGated;
  int64_t intermediate_size = 0;  ///< dense MLP width, or each routed expert's width
  bool bias = false;
  std::string activation;  ///< Hugging Face ACT2FN name ("silu", "gelu_new", ...)
  // Mixture of experts; num_experts == 0 means a dense MLP.
  int64_t num_experts = 0;
  int64_t experts_per_token = 0;
  int64_t shared_intermediate_size = 0;  ///< total width of always-on shared experts (0: none)
  bool shared_expert_gate = false;       ///< Qwen2-MoE sigmoid gate on the shared expert
  bool norm_topk_prob = false;           ///< Qwen2-MoE: renormalise the top-k weights
  bool is_moe() const { return num_experts > 0; }
};

struct LayerSpec {
  AttentionSpec attention;
  MlpSpec mlp;
  NormKind norm = NormKind::kRMSNorm;
  bool parallel_residual =
      false;      ///< attention and MLP read the same input (GPT-J, NeoX, Falcon, Phi)
  int norms = 2;  ///< norms applied to the hidden state per layer (Gemma-2: 4)
};

/// Role of a tensor in the model, for breakdowns.
enum class TensorRole {
  kEmbedding,
  kPositionEmbedding,
  kAttention,
  kMlp,
  kExpert,
  kRouter,
  kNorm,
  kLmHead
};
std::string_view tensor_role_name(TensorRole role);

struct TensorSpec {
  std::string name;  ///< Hugging Face state-dict name
  std::vector<int64_t> shape;
  int64_t numel = 0;  ///< element count (product of shape)
  DType dtype = DType::kFloat32;
  TensorRole role = TensorRole::kAttention;
  int layer = -1;          ///< decoder layer index, -1 outside the layers
  std::string tied_to;     ///< non-empty: same storage as that tensor, not counted again
  bool persistent = true;  ///< buffers only: saved in the state dict
};

/// How a value in the normalized description was obtained.
struct Provenance {
  std::string key;     ///< canonical key, e.g. "hidden_size"
  std::string value;   ///< as text
  std::string origin;  ///< "config" , "config (alias n_embd)", or "default: <source>"
};

struct ModelSpec {
  std::string name;        ///< catalog name or path the spec was read from
  std::string source;      ///< file or catalog entry, used in messages
  std::string model_type;  ///< as written in the config
  std::string family;      ///< registry entry that read it ("llama", "opt", ...)
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t max_position_embeddings = 0;
  int64_t embedding_size = 0;  ///< token-embedding width; differs from hidden_size in OPT-350m
  bool final_norm = true;      ///< a norm after the last layer
  bool use_cache = true;       ///< config use_cache (PretrainedConfig default true)
  /// MoE config output_router_logits: the forward keeps every router's logits
  /// and the causal-LM loss adds the load-balancing (aux) loss.
  bool output_router_logits = false;
  /// Qwen2-MoE (v4.57): the model builds the sliding-window mask next to the
  /// full one on every call, whether or not a layer slides.
  bool both_masks = false;
  PositionKind position = PositionKind::kRotary;
  bool tie_word_embeddings = false;
  DType dtype = DType::kFloat32;  ///< torch_dtype of the published checkpoint
  double hidden_dropout = 0;      ///< residual / hidden-state dropout probability
  double attention_dropout = 0;   ///< dropout on attention probabilities
  double embedding_dropout = 0;   ///< dropout after the embeddings
  /// Gemma-2 soft-capping, cap · tanh(x / cap), of the attention scores and of
  /// the final logits (0: none; a null config value turns it off).
  double attn_logit_softcapping = 0;
  double final_logit_softcapping = 0;
  std::vector<LayerSpec> layers;
  std::vector<TensorSpec> tensors;  ///< parameters, in state-dict order
  std::vector<TensorSpec> buffers;  ///< registered buffers (not parameters)
  std::vector<Provenance> provenance;
  std::vector<std::string> warnings;  ///< checkpoint disagreements and similar notes

  /// Unique parameters (tied tensors counted once).
  int64_t params() const;
  /// Parameters outside the embeddings and the LM head.
  int64_t non_embedding_params() const;
};

/// One registered architecture.
struct ArchitectureInfo {
  std::string family;
  std::vector<std::string> model_types;  ///< config "model_type" values it reads
  std::string defaults_source;           ///< where its defaults come from
};
std::vector<ArchitectureInfo> list_architectures();

/// Reads config.json text into a ModelSpec. `source` names the file in messages.
/// Throws llmem::Error on malformed JSON, missing or wrong-typed keys,
/// nonsensical sizes or an unknown model_type.
ModelSpec parse_config(std::string_view json_text, const std::string& source);

/// One model of the built-in catalog.
struct CatalogEntry {
  std::string name;              ///< Hugging Face name, e.g. "facebook/opt-1.3b"
  std::string source;            ///< where the config values come from
  bool verbatim = true;          ///< the config is a byte copy of the published file
  int64_t published_params = 0;  ///< 0 when no exact count is published
  /// "unique": each parameter once (tied weights once, no buffers);
  /// "checkpoint": what the published checkpoint stores (tied copies, old buffers).
  std::string params_basis;
  std::string params_source;
  std::string config_json;  ///< the config.json text
};
const std::vector<CatalogEntry>& catalog();

/// Resolves `ref`: a catalog name (case-insensitive), a path to a config.json,
/// or a directory holding config.json (and optionally a checkpoint index or
/// *.safetensors files, whose JSON headers are cross-checked; disagreements
/// go to ModelSpec::warnings). Throws llmem::Error with suggestions when
/// nothing matches.
ModelSpec load_model(const std::string& ref);

/// Cross-checks a checkpoint's tensor list against the inventory. `tensors`
/// holds (name, shape, dtype) of what the checkpoint stores, `total_size` the
/// byte size the checkpoint declares (0 if unknown). Appends warnings.
struct CheckpointTensor {
  std::string name;
  std::vector<int64_t> shape;
  DType dtype = DType::kFloat32;
  bool known_shape = false;  ///< index files list names only
};
void cross_check_checkpoint(const std::vector<CheckpointTensor>& tensors, uint64_t total_size,
                            const std::string& source, ModelSpec* spec);

}  // namespace llmem

#endif  // LLMEM_MODEL_H_
