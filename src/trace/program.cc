// Copyright 2026 The llmem Authors.
// The `hf` framework profile: a training step of a Hugging Face Transformers
// model (modeling code of transformers v4.57), with PEFT LoRA and the Trainer's
// conventions (autocast around forward and loss, loss.backward(),
// optimizer.step(), zero_grad(set_to_none=True)), expressed op by op.
//
// Each op records what autograd saves (tools/autograd/derivatives.yaml) and
// Python names decide when outputs die. Where modeling code is cited below,
// the file is src/transformers/models/<family>/modeling_<family>.py.

#include "trace/program.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "llmem/error.h"
#include "llmem/sdpa.h"

#include "trace/framework.h"
#include "trace/load.h"

namespace llmem::trace {
namespace {

constexpr int kF32 = 4;
constexpr int kI64 = 8;

/// How a position table's element type is decided.
enum class TableDtype {
  kDefault,        ///< torch.get_default_dtype() at construction: the load dtype
  kFp32Buffer,     ///< an fp32 buffer: 16-bit only once an engine casts the module
  kFp32Attribute,  ///< a plain fp32 attribute: no module cast reaches it
  kCompute,        ///< built in the first forward in the query's dtype
};

/// Position tables that a transformers release keeps in every attention
/// layer, read from modeling_<family>.py on transformers' main branch just
/// before each release's version bump (release 4.N = the parent of the
/// commit that sets 4.(N+1).0.dev0). `from` and `to` are inclusive
/// versions as major*100+minor.
struct PositionTableRule {
  const char* family;
  int from;
  int to;
  int tables;  ///< tensors per layer: cos and sin, or GPT-J's one sin|cos
  TableDtype dtype;
  bool seq_rows;  ///< rows are the sequence length (lazily built), not max positions
  bool grows;     ///< forward rebuilds it with seq_len rows (x.dtype) when seq > rows
};

// Each row: the rotary module whose __init__ (or first forward) builds the
// table, one per attention layer (its _init_rope), [rows, rotary dim].
constexpr PositionTableRule kPositionTables[] = {
    // LlamaRotaryEmbedding, v4.28-v4.30: cos_cached/sin_cached [1, 1, max_pos,
    // head_dim] from the fp32 inv_freq (non-persistent buffers).
    {"llama", 428, 430, 2, TableDtype::kFp32Buffer, false, true},
    // v4.31 (PR #24653 scaling) - v4.37: _set_cos_sin_cache(max_pos,
    // dtype=torch.get_default_dtype()).
    {"llama", 431, 437, 2, TableDtype::kDefault, false, true},
    // v4.38.0 computes cos/sin per forward; main at 8a8a0a4ae0 (PR #29198,
    // 2024-02-28, after the 4.38 branch) registers _cos_cached/_sin_cached
    // "for BC" in the default dtype, unused by forward; removed by PR #30743
    // (57c965a8f1, v4.41).
    {"llama", 439, 440, 2, TableDtype::kDefault, false, false},
    {"olmo", 440, 440, 2, TableDtype::kDefault, false, false},
    // MistralRotaryEmbedding: v4.34 (added) - v4.41; PR #30642 (v4.42) follows Llama.
    {"mistral", 434, 441, 2, TableDtype::kDefault, false, true},
    // Kept until the v4.48 attention refactor (PR #35235, 2c47618c1a).
    {"mixtral", 436, 447, 2, TableDtype::kDefault, false, true},
    // Until the v4.45 rotary refactor (PR #32617).
    {"qwen2", 437, 444, 2, TableDtype::kDefault, false, true},
    {"qwen2_moe", 440, 444, 2, TableDtype::kDefault, false, true},
    {"stablelm", 438, 444, 2, TableDtype::kDefault, false, true},
    {"phi", 436, 444, 2, TableDtype::kDefault, false, true},
    // GPTNeoXRotaryEmbedding: plain CPU attributes before v4.35 (copied to the
    // device per forward, not kept there); buffers in the default dtype in
    // v4.35-v4.37, then emb.cos() without .to(dtype): fp32 (v4.38-v4.44).
    {"gpt_neox", 435, 437, 2, TableDtype::kDefault, false, true},
    {"gpt_neox", 438, 444, 2, TableDtype::kFp32Buffer, false, true},
    // FalconRotaryEmbedding v4.31-v4.35: cos_cached/sin_cached attributes set
    // in the first forward, [seq, head_dim] in the query's dtype, moved to
    // its device; v4.36-v4.44: max_pos buffers like Llama's.
    {"falcon", 431, 435, 2, TableDtype::kCompute, true, false},
    {"falcon", 436, 444, 2, TableDtype::kDefault, false, true},
    // GPTJAttention/CodeGenAttention.embed_positions: create_sinusoidal_positions
    // (max_positions, rotary dim), a plain fp32 attribute (model.to() leaves it
    // fp32) moved to the device by the first forward; every release.
    {"gptj", 0, 9999, 1, TableDtype::kFp32Attribute, false, false},
    {"codegen", 0, 9999, 1, TableDtype::kFp32Attribute, false, false},
};

/// The position-table rule of `family` under transformers `version`, if any.
const PositionTableRule* position_table_rule(const std::string& family, int version) {
  for (const PositionTableRule& r : kPositionTables) {
    if (family == r.family && version >= r.from && version <= r.to)
      return &r;
  }
  return nullptr;
}

// transformers v4.57 sdpa_attention_forward (integrations/sdpa_attention.py):
// a module with grouped K/V heads passes enable_gqa=True when torch >= 2.5
// and no attention mask is given (use_gqa_in_sdpa); otherwise repeat_kv
// copies K and V to every query head (expand + reshape) before SDPA.
bool hf_grouped_kv(const ModelSpec& m, const AttentionSpec& a, const TrainingSetup& s) {
  return s.framework == Framework::kHf && llama_style(m) && a.kind == AttentionKind::kStandard &&
         a.num_kv_heads != a.num_heads;
}
// torchtune packing without flex_attention (_SUPPORTS_FLEX_ATTENTION needs
// sm75): create_block_causal_mask's dense bool [b, s, s] goes to SDPA.
bool packed_dense_mask(const TrainingSetup& s) {
  return s.framework == Framework::kTorchtune && s.fw.packed && s.device == Device::kCuda &&
         s.gpu_sm > 0 && s.gpu_sm < 75;
}
bool hf_sdpa_gqa(const ModelSpec& m, const TrainingSetup& s) {
  return !m.layers.empty() && hf_grouped_kv(m, m.layers.front().attention, s) &&
         s.torch_version >= 205 && !s.fw.sdpa_attn_mask;
}
bool hf_repeats_kv(const ModelSpec& m, const AttentionSpec& a, const TrainingSetup& s) {
  bool sdpa = s.attention == AttentionImpl::kSdpa || s.attention == AttentionImpl::kSdpaFlash ||
              s.attention == AttentionImpl::kSdpaEfficient ||
              s.attention == AttentionImpl::kSdpaMath;
  return sdpa && hf_grouped_kv(m, a, s) && (s.torch_version < 205 || s.fw.sdpa_attn_mask);
}

struct Param {
  Tid id = kNone;
  bool trainable = false;
  Tid cast_cache = kNone;  // autocast's cached low-precision copy (trainable leaves only)
  int64_t quantized = 0;   // > 0: a bitsandbytes 4-bit weight of this many elements
};

struct Lora {
  Tid a = kNone;  // [r, in]
  Tid b = kNone;  // [out, r]
  int64_t rank = 0;
  int elem = kF32;
};

enum class Style { kLlama, kGpt2, kOpt, kGeneric };

// Module names of the families traced by the generic GPT-style layer.
struct Names {
  std::string layers;           // "transformer.h"
  std::string embed;            // token embedding weight
  std::string position;         // learned position embedding weight ("" if none)
  std::string embed_norm;       // BLOOM's word_embeddings_layernorm ("" if none)
  std::string norm1, norm2;     // per-layer norms ("" if none)
  std::string q, k, v, qkv, o;  // attention projections (qkv: fused)
  std::string up, down;         // MLP
  std::string final_norm;
  std::string lm_head;
};

Names names_for(const std::string& f, const LayerSpec& l) {
  if (f == "bloom") {
    return {"transformer.h",
            "transformer.word_embeddings.weight",
            "",
            "transformer.word_embeddings_layernorm",
            "input_layernorm",
            "post_attention_layernorm",
            "",
            "",
            "",
            "self_attention.query_key_value",
            "self_attention.dense",
            "mlp.dense_h_to_4h",
            "mlp.dense_4h_to_h",
            "transformer.ln_f",
            "lm_head"};
  }
  if (f == "gpt_neox") {
    return {"gpt_neox.layers",
            "gpt_neox.embed_in.weight",
            "",
            "",
            "input_layernorm",
            "post_attention_layernorm",
            "",
            "",
            "",
            "attention.query_key_value",
            "attention.dense",
            "mlp.dense_h_to_4h",
            "mlp.dense_4h_to_h",
            "gpt_neox.final_layer_norm",
            "embed_out"};
  }
  if (f == "falcon") {
    bool two = l.norms == 2 && l.parallel_residual;
    return {"transformer.h",
            "transformer.word_embeddings.weight",
            "",
            "",
            two ? "ln_attn" : "input_layernorm",
            two ? "ln_mlp" : (l.parallel_residual ? "" : "post_attention_layernorm"),
            "",
            "",
            "",
            "self_attention.query_key_value",
            "self_attention.dense",
            "mlp.dense_h_to_4h",
            "mlp.dense_4h_to_h",
            "transformer.ln_f",
            "lm_head"};
  }
  if (f == "gptj") {
    return {"transformer.h",
            "transformer.wte.weight",
            "",
            "",
            "ln_1",
            "",
            "attn.q_proj",
            "attn.k_proj",
            "attn.v_proj",
            "",
            "attn.out_proj",
            "mlp.fc_in",
            "mlp.fc_out",
            "transformer.ln_f",
            "lm_head"};
  }
  if (f == "codegen") {
    return {"transformer.h",
            "transformer.wte.weight",
            "",
            "",
            "ln_1",
            "",
            "",
            "",
            "",
            "attn.qkv_proj",
            "attn.out_proj",
            "mlp.fc_in",
            "mlp.fc_out",
            "transformer.ln_f",
            "lm_head"};
  }
  if (f == "phi") {
    return {"model.layers",
            "model.embed_tokens.weight",
            "",
            "",
            "input_layernorm",
            "",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "",
            "self_attn.dense",
            "mlp.fc1",
            "mlp.fc2",
            "model.final_layernorm",
            "lm_head"};
  }
  if (f == "gpt_neo") {
    return {"transformer.h",
            "transformer.wte.weight",
            "transformer.wpe.weight",
            "",
            "ln_1",
            "ln_2",
            "attn.attention.q_proj",
            "attn.attention.k_proj",
            "attn.attention.v_proj",
            "",
            "attn.attention.out_proj",
            "mlp.c_fc",
            "mlp.c_proj",
            "transformer.ln_f",
            "lm_head"};
  }
  if (f == "gpt_bigcode") {
    return {"transformer.h",
            "transformer.wte.weight",
            "transformer.wpe.weight",
            "",
            "ln_1",
            "ln_2",
            "",
            "",
            "",
            "attn.c_attn",
            "attn.c_proj",
            "mlp.c_fc",
            "mlp.c_proj",
            "transformer.ln_f",
            "lm_head"};
  }
  // biogpt
  return {"biogpt.layers",
          "biogpt.embed_tokens.weight",
          "biogpt.embed_positions.weight",
          "",
          "self_attn_layer_norm",
          "final_layer_norm",
          "self_attn.q_proj",
          "self_attn.k_proj",
          "self_attn.v_proj",
          "",
          "self_attn.out_proj",
          "fc1",
          "fc2",
          "biogpt.layer_norm",
          "output_projection"};
}

class Program {
 public:
  Program(Graph& g, const ModelSpec& m, const TrainingSetup& s, const RankPlan& r, TraceResult* out)
      : g_(g), m_(m), s_(s), r_(r), out_(out) {
    select_chunk(-1);
    bool half_weights = s.precision == Precision::kBf16 || s.precision == Precision::kFp16;
    pe_ = half_weights ? 2 : kF32;
    autocast_ = s.precision == Precision::kBf16Mixed || s.precision == Precision::kFp16Mixed;
    ae_ = autocast_ ? 2 : pe_;
    // FSDP's MixedPrecision(param_dtype=16-bit) (accelerate's default under
    // bf16/fp16): the gathered parameters the ops see are already 16-bit; the
    // fp32 shards are the masters.
    store_elem_ = pe_;
    // Sharded QLoRA loads the model in the quant storage dtype (PEFT
    // docs/source/accelerate/fsdp.md: dtype = bnb_4bit_quant_storage, bf16 in
    // its recipe): the frozen flat parameters stay 16-bit, and only the
    // trainable ones are upcast to fp32 (accelerate Accelerator.prepare_model
    // upcasts FSDP flat parameters that require grad under mixed precision).
    base_store_elem_ = s.finetune == FinetuneMode::kQlora && autocast_ ? 2 : pe_;
    if (r.sharded_params() && autocast_)
      pe_ = 2;
    cuda_ = s.device == Device::kCuda;
    tokens_ = s.batch * s.seq;
    sp_ = r.sequence_parallel;
    if (m.family == "gpt2") {
      style_ = Style::kGpt2;
    } else if (m.family == "opt") {
      style_ = Style::kOpt;
    } else if (llama_style(m)) {
      style_ = Style::kLlama;
    } else if (m.family == "bloom" || m.family == "gpt_neox" || m.family == "falcon" ||
               m.family == "gptj" || m.family == "codegen" || m.family == "phi" ||
               m.family == "gpt_neo" || m.family == "gpt_bigcode" || m.family == "biogpt") {
      style_ = Style::kGeneric;
      names_ = names_for(m.family, m.layers.front());
      // bloom, gpt_neox, falcon, codegen, gpt_neo and gpt_bigcode are in the
      // CPU tier (validation/data/cpu_tier.csv), matched phase by phase.
      if (m.family == "gptj" || m.family == "phi" || m.family == "biogpt") {
        out->notes.push_back("the " + m.family +
                             " trace follows the generic GPT-style layer; its op-level details "
                             "are not yet checked against measurements");
      }
    } else {
      throw Error(
          m.source, "model_type",
          "the training-step trace supports llama, mistral, qwen2, qwen3, gemma, gemma2, "
          "olmo, stablelm, phi3, mixtral, qwen2_moe, deepseek_v2, gpt2, opt, bloom, "
          "gpt_neox, falcon, gptj, codegen, phi, gpt_neo, gpt_bigcode and biogpt so far; \"" +
              m.family + "\" (or this variant of it) is not traced yet");
    }
    // LlamaModel builds a DynamicCache in training when use_cache is on
    // (config default true) and checkpointing does not force it off.
    // Gemma2Model never does in training (modeling_gemma2.py v4.57: `if
    // use_cache and past_key_values is None and not self.training`; the
    // guard dates from transformers PR #32279, and before it the model built
    // no cache at all).
    bool cache = s.use_cache == UseCache::kConfig ? m.use_cache : s.use_cache == UseCache::kOn;
    use_cache_ = (style_ == Style::kLlama || generic_builds_cache()) && cache &&
                 s.checkpointing == CheckpointMode::kOff && r.first_stage && r.last_stage &&
                 m.family != "gemma2";
    if (s.precision == Precision::kFp16Mixed && !cuda_) {
      throw Error("--precision", "", "fp16 autocast is CUDA-only; use bf16-mixed on a CPU");
    }
    if (s.fw.liger) {
      liger_ = liger_patches(m);
      liger_modules_ = liger_ && s.fw.liger_modules;
      std::string note;
      if (!liger_) {
        note = "Liger has no kernels for model type \"" + m.family +
               "\" (liger_kernel v0.6.4): traced without them, as the Trainer runs it";
      } else if (!liger_modules_) {
        note =
            "Liger kernels applied after the model was built: RoPE in place and the fused "
            "linear cross-entropy; RMSNorm and MLP stay eager";
      } else {
        note =
            "Liger kernels (v0.6.4, use_liger_kernel): RMSNorm saves its input and fp32 rstd "
            "and writes dX into dY; RoPE rotates q and k in place; SwiGLU/GeGLU saves gate "
            "and up and writes their gradients into them; the fused linear cross-entropy "
            "never materializes the logits";
        if (m.family == "mixtral")
          note += " (the experts' MLPs are traced with eager rules)";
      }
      out->notes.push_back(note);
    }
  }

  void setup() {
    // Building the model and loading its checkpoint: before the first step
    // (step 0), in the load phase (load_quantized, finish_load).
    g_.set_phase(Phase::kLoad);
    g_.set_step(0);
    bool full = s_.finetune == FinetuneMode::kFull;
    bool qlora = s_.finetune == FinetuneMode::kQlora;
    // peft prepare_model_for_kbit_training casts every parameter that is not
    // quantized to fp32 (peft/utils/other.py).
    int other_elem = qlora && s_.quant.prepare_kbit ? kF32 : pe_;
    params_.reserve(m_.tensors.size());
    for (const TensorSpec& t : m_.tensors) {
      if (t.role == TensorRole::kLmHead &&
          (t.tied_to.empty() || s_.framework == Framework::kLitgpt))
        untied_head_ = true;
    }
    for (const TensorSpec& t : m_.tensors) {
      if (!on_stage(t))
        continue;
      // LitGPT has no weight tying: convert_hf_checkpoint copies the embedding
      // into a separate lm_head.weight (litgpt/scripts/convert_hf_checkpoint.py).
      if (!t.tied_to.empty() && params_.count(t.tied_to) > 0 &&
          s_.framework != Framework::kLitgpt) {
        params_[t.name] = params_[t.tied_to];
        continue;
      }
      // A tied head on a later pipeline stage than its embedding is a copy
      // of its own, kept in sync by an all-reduce of the two gradients.
      Param p;
      bool frozen_layer = t.layer >= 0 && t.layer < s_.freeze_layers;
      bool frozen_embed = s_.freeze_embeddings && (t.role == TensorRole::kEmbedding ||
                                                   t.role == TensorRole::kPositionEmbedding);
      p.trainable = full && !frozen_layer && !frozen_embed;
      // LitGPT's BitsandbytesPrecision converts every nn.Linear, lm_head included.
      bool quantize = quantizable(t) || (s_.framework == Framework::kLitgpt &&
                                         t.role == TensorRole::kLmHead && t.shape.size() == 2);
      if (qlora && quantize) {
        // bitsandbytes Linear4bit (Params4bit): two 4-bit values per byte,
        // one absmax per block (fp32, or uint8 plus a second-level fp32
        // absmax per 256 blocks with double quantization).
        p.quantized = t.numel;
        int64_t blocks = (t.numel + s_.quant.block - 1) / s_.quant.block;
        int64_t packed = (t.numel + 1) / 2;
        int64_t state =
            s_.quant.double_quant ? blocks + ((blocks + 255) / 256) * kF32 : blocks * kF32;
        if (r_.sharded_params() && s_.framework == Framework::kTorchtune) {
          p.id = nf4_dtensor(t, packed + state);
        } else if (r_.sharded_params()) {
          // FSDP-QLoRA / ZeRO-3 QLoRA (bnb_4bit_quant_storage = the model's
          // dtype): quantize_4bit packs the bytes into a tensor of the storage
          // dtype (bitsandbytes/functional.py: ((n + 1) // (2 * itemsize), 1)),
          // an ordinary parameter to FSDP's flat parameter or ZeRO-3's
          // partitioning: stored 1/n, gathered with its unit, dequantized per
          // linear at compute. The QuantState (absmax, nested absmax, codes)
          // is a Python attribute of the module (Params4bit.quant_state,
          // Linear4bit.quant_state; bitsandbytes/nn/modules.py
          // fix_4bit_weight_quant_state_from_module), not a parameter: neither
          // wrapper shards or offloads it, so every rank keeps all of it on
          // the device.
          int64_t storage = base_store_elem_;
          packed = (packed + storage - 1) / storage * storage;
          p.id = packed_param(unit_of(t), packed);
          g_.leaf(state, 1, Component::kParameters, false);
        } else {
          p.id = load_quantized(t, packed + state);
        }
      } else if (qlora && s_.framework == Framework::kLitgpt && s_.fw.stable_embedding &&
                 t.role == TensorRole::kEmbedding) {
        // litgpt/finetune/lora.py (quantized): after the optimizer is built,
        // wte is replaced by a bitsandbytes StableEmbedding whose weight is a
        // new trainable Parameter outside the optimizer (its .grad is never
        // cleared), while the local `old_embedding` keeps the old weight alive.
        g_.leaf(t.numel, pe_, Component::kParameters, false);
        p.id = g_.leaf(t.numel, pe_, Component::kParameters, true);
      } else if (r_.sharded_params() && (p.trainable || !r_.gemini_chunks)) {
        // (Gemini keeps a frozen tensor whole on every rank: the last branch.)
        if (qlora && s_.framework == Framework::kLitgpt) {
          throw Error("--method", "",
                      "QLoRA with sharded parameters is modelled for the Hugging Face (PEFT + "
                      "bitsandbytes quant_storage) and torchtune (torchao NF4 under FSDP2) "
                      "profiles, not litgpt");
        }
        p.id = sharded_param(unit_of(t), t.numel, t.shape.empty() ? 1 : t.shape[0], p.trainable,
                             qlora ? base_store_elem_ : store_elem_);
      } else {
        // Whole on the device. Under Gemini also a frozen tensor with dp > 1:
        // gemini_ddp.py _init_chunks (ColossalAI d4fb7bf, and 4f9953be3)
        // marks a parameter without requires_grad ddp-ignored and moves it
        // to the device in the compute dtype, outside every chunk; the
        // gemini_hook.py pre_op and the optimizer skip it.
        p.id = g_.leaf(t.numel, qlora ? other_elem : pe_, Component::kParameters, p.trainable);
      }
      params_[t.name] = p;
      set_param_layer(p.id, unit_of(t));
      if (r_.gemini_chunks && p.quantized == 0) {
        // Gemini searches over model.parameters() in module order (tied
        // tensors once), frozen ones included, and registers the trainable
        // ones in chunks. Forward position: the layer, or the embeddings
        // before the layers and the other root tensors (final norm, head)
        // after them.
        chunk_search_.emplace_back(t.numel, !p.trainable);
        int pos = t.layer;
        if (pos < 0) {
          bool embed = t.role == TensorRole::kEmbedding || t.role == TensorRole::kPositionEmbedding;
          pos = embed ? -1 : stage_end();
        }
        if (p.trainable)
          chunk_order_.emplace_back(p.id, pos);
      }
      out_->params += t.numel;
      if (p.trainable) {
        trainable_.push_back(p.id);
        out_->trainable_params += t.numel;
      }
    }
    finish_load();
    g_.set_phase(Phase::kSetup);
    g_.set_step(1);
    if (s_.finetune != FinetuneMode::kFull)
      add_lora();
    setup_distributed();
    // Registered buffers (rotary inv_freq, causal masks) live on the device too.
    for (const TensorSpec& b : m_.buffers) {
      if (b.layer >= 0 && !on_stage(b))
        continue;  // a layer's own buffer (GPT-2's causal mask) lives on its stage only
      g_.leaf(b.numel, dtype_size(b.dtype), Component::kInputs, false);
    }
    add_position_tables();
  }

  /// The rotary cos/sin tables (and GPT-J's sinusoid table) that the
  /// transformers release keeps per attention layer (kPositionTables): never
  /// sharded, on every rank, on the stages that hold the layer.
  void add_position_tables() {
    if (s_.framework != Framework::kHf)
      return;
    const PositionTableRule* rule = position_table_rule(m_.family, s_.transformers_version);
    if (rule == nullptr)
      return;
    const AttentionSpec& a = m_.layers.front().attention;
    auto rot = static_cast<int64_t>(static_cast<double>(a.head_dim) * a.rotary_fraction);
    if (rot == 0)
      return;  // ALiBi Falcon: no rotary embedding
    int64_t rows = rule->seq_rows ? s_.seq : m_.max_position_embeddings;
    int elem = 0;
    switch (rule->dtype) {
      case TableDtype::kDefault:
        elem = pe_;
        break;
      case TableDtype::kFp32Buffer:
        // DeepSpeed's engine casts the module to 16 bits; FSDP's
        // MixedPrecision casts buffers to buffer_dtype.
        elem = (r_.master_fp32 || (r_.sharded_params() && autocast_)) ? 2 : kF32;
        break;
      case TableDtype::kFp32Attribute:
        elem = kF32;
        break;
      case TableDtype::kCompute:
        elem = ae_;
        break;
    }
    if (rule->grows && s_.seq > rows) {
      // forward: seq_len > max_seq_len_cached rebuilds the tables with
      // seq_len rows (fp32 where the table is built from inv_freq alone).
      rows = s_.seq;
      elem = rule->dtype == TableDtype::kFp32Buffer ? kF32 : ae_;
    }
    for (int64_t i = 0; i < m_.num_layers; ++i) {
      TensorSpec t;
      t.layer = static_cast<int>(i);
      if (!on_stage(t))
        continue;
      for (int k = 0; k < rule->tables; ++k)
        g_.leaf(rows * rot, elem, Component::kInputs, false);
    }
  }

  /// Whether this pipeline stage holds tensor `t`.
  bool on_stage(const TensorSpec& t) const {
    if (t.layer >= 0 && !r_.chunk_begin.empty()) {
      return std::any_of(r_.chunk_begin.begin(), r_.chunk_begin.end(),
                         [&](int b) { return t.layer >= b && t.layer < b + r_.chunk_layers; });
    }
    if (t.layer >= 0)
      return t.layer >= r_.first_layer && (r_.end_layer < 0 || t.layer < r_.end_layer);
    bool embedding_side = t.role == TensorRole::kEmbedding ||
                          t.role == TensorRole::kPositionEmbedding ||
                          (!names_.embed_norm.empty() && t.name.rfind(names_.embed_norm, 0) == 0) ||
                          (t.role != TensorRole::kLmHead && t.role != TensorRole::kNorm);
    return embedding_side ? r_.first_stage : r_.last_stage;
  }

  /// Modules bitsandbytes quantizes: every Linear inside the decoder layers
  /// (lm_head is skipped by transformers' default llm_int8_skip_modules).
  static bool quantizable(const TensorSpec& t) {
    return t.layer >= 0 && t.shape.size() == 2 && t.role != TensorRole::kNorm &&
           t.role != TensorRole::kRouter;
  }

  /// The layers the next forward runs: model chunk `c` of an interleaved
  /// rank, or (c < 0, or no chunks) the rank's whole stage.
  void select_chunk(int c) {
    if (c < 0 || r_.chunk_begin.empty()) {
      fwd_first_ = r_.first_layer;
      fwd_end_ = r_.end_layer < 0 ? static_cast<int>(m_.num_layers) : r_.end_layer;
      fwd_embed_ = r_.first_stage;
      fwd_head_ = r_.last_stage;
      return;
    }
    auto last = static_cast<int>(r_.chunk_begin.size()) - 1;
    fwd_first_ = r_.chunk_begin[static_cast<size_t>(c)];
    fwd_end_ = fwd_first_ + r_.chunk_layers;
    fwd_embed_ = r_.first_stage && c == 0;
    fwd_head_ = r_.last_stage && c == last;
  }

  void micro_step() {
    g_.set_phase(Phase::kForward);
    g_.set_layer(-1);
    if (cuda_ && workspace_ == kNone && s_.workspace_bytes > 0) {
      // The first cuBLAS call allocates its workspace through the caching
      // allocator and keeps it (CublasHandlePool.cpp).
      workspace_ = g_.buffer(static_cast<int64_t>(s_.workspace_bytes), Component::kWorkspace);
    }
    // A pipeline stage runs `in_flight` forwards before the first backward
    // (1F1B warm-up, or every micro-batch under GPipe) and keeps each one's
    // activations; their backwards then run newest first. Under the
    // interleaved schedule each forward runs one model chunk (flight_chunks).
    std::vector<Tid> held;  // inputs of every micro-batch in flight
    Tid total = kNone;
    for (int k = 0; k < r_.in_flight; ++k) {
      g_.set_phase(Phase::kForward);
      g_.set_layer(-1);
      if (k > 0)
        g_.pass_boundary();  // each micro-batch has a backward call of its own
      select_chunk(r_.flight_chunks.empty() ? -1 : r_.flight_chunks[static_cast<size_t>(k)]);
      // The batch on the device: input_ids, attention_mask, labels (int64).
      Tid ids = g_.leaf(tokens_, kI64, Component::kInputs, false);
      Tid mask_in = g_.leaf(tokens_, kI64, Component::kInputs, false);
      Tid labels = g_.leaf(tokens_, kI64, Component::kInputs, false);
      held.insert(held.end(), {ids, mask_in, labels});
      gather(-1);  // the root unit (embeddings, final norm, head) stays gathered to the end
      Tid out = forward(ids);
      // LitGPT: the previous step's logits die when `logits = model(...)` rebinds the name.
      for (Tid t : kept_logits_)
        g_.release(t);
      kept_logits_.clear();
      Tid loss;
      if (fwd_head_) {
        g_.set_phase(Phase::kLoss);
        g_.set_layer(-1);
        loss = loss_and_logits(out, labels);  // consumes out
        if (head_input_ != kNone)
          g_.release(head_input_);
        head_input_ = kNone;
      } else {
        // The stage's output is sent on and kept for its backward, which
        // starts from the gradient the next stage sends back.
        loss = g_.op(1, kF32, {out}, {out}, Component::kTemporaries);
        g_.release(out);
      }
      release_router_logits();  // the model output object dies with compute_loss
      if (k + 1 < r_.in_flight) {
        // Checkpointed layers of this micro-batch keep its rotary tables and
        // mask until their backward (the next forward makes its own).
        for (Tid* t : {&cos_, &sin_, &mask_, &mask2_, &alibi_}) {
          if (*t != kNone)
            held.push_back(*t);
          *t = kNone;
        }
      }
      for (Tid t : cache_kv_)
        g_.release(t);  // and with it past_key_values
      cache_kv_.clear();
      clear_autocast_cache();
      if (total == kNone) {
        total = loss;
      } else {
        Tid sum = plain(total, loss);
        g_.release(total);
        g_.release(loss);
        total = sum;
      }
    }
    // DeepSpeed ZeRO-1/2 (stage_1_and_2.py backward()): the ipg buffers are
    // allocated before the loss's backward and freed by the reduce epilogue.
    std::vector<Tid> ipg;
    for (int k = 0; k < r_.ipg_buffers_per_backward; ++k)
      ipg.push_back(g_.buffer(r_.reduce_bucket_bytes, Component::kGradients));
    gather_unit(head_unit());  // the head's pre-backward hook
    g_.backward(total);
    if (s_.framework == Framework::kHf) {
      // The inputs bitsandbytes kept on the graph's nodes die with the graph
      // when training_step returns.
      for (Tid t : bnb_ctx_)
        g_.release(t);
      bnb_ctx_.clear();
    }
    for (Tid t : graph_held_)
      g_.release(t);
    graph_held_.clear();
    if (r_.embedding_units)
      reduce_grads(embed_unit());
    reduce_grads(-1);
    end_reduce();
    for (Tid t : ipg)
      g_.release(t);
    for (size_t i = 0; i < gathered_.size(); ++i)
      reshard(static_cast<int>(i) - 1);
    for (size_t c = 0; c < chunk_key_.size(); ++c)
      release_chunk(c);
    release_shared();
    g_.release(total);
    for (Tid t : held)
      g_.release(t);
  }

  /// LitGPT LoRA / QLoRA: CausalSelfAttention.attn is one LoRAQKVLinear over
  /// q|k|v whatever the checkpoint's layout (traced without autocast).
  bool litgpt_fused_qkv() const {
    return s_.framework == Framework::kLitgpt && s_.finetune != FinetuneMode::kFull && !autocast_;
  }

  /// litgpt/lora.py LoRAQKVLinear.forward: one pretrained matmul over the
  /// fused q|k|v weight (one bitsandbytes weight under QLoRA), and for the
  /// enabled parts one lora_dropout(x) and one lora_A of r x enabled rows,
  /// lora_B per part by F.conv1d (saving the after_A chunks) cat'ed,
  /// zero_pad to the fused width (new_zeros + index_copy_, saving only the
  /// index) unless q, k and v are all enabled, * scaling, and the sum.
  /// CausalSelfAttention.forward then takes q, k and v out of the permuted
  /// view (see below); K/V expansion for grouped queries is traced in
  /// attention_core.
  /// `names`: the checkpoint's q, k and v modules under prefix `p`; `packed`:
  /// its fused module, if any (Phi-3's qkv_proj, one adapter over all three).
  void litgpt_qkv(Tid x, const std::string& p, const std::array<std::string, 3>& names,
                  const std::string& packed_name, const AttentionSpec& a, Tid* q, Tid* k, Tid* v) {
    int64_t h = m_.hidden_size;
    const std::array<int64_t, 3> widths = {a.q_width(), a.k_width(), a.v_width()};
    int64_t total = widths[0] + widths[1] + widths[2];
    int64_t rows = g_.numel(x) / h;
    bool packed = !packed_name.empty() && find_param(p + packed_name + ".weight") != nullptr;
    Param fused = param(p + (packed ? packed_name : names[0]) + ".weight");
    if (!packed) {
      fused.quantized = 0;
      for (const std::string& n : names)
        fused.quantized += param(p + n + ".weight").quantized;
    }
    Tid sum = base_linear(x, fused, nullptr, h, total);
    int e = g_.elem(sum);
    std::array<Tid, 3> as = {kNone, kNone, kNone};
    std::array<Tid, 3> bs = {kNone, kNone, kNone};
    int64_t enabled = 0;
    int64_t lora_width = 0;
    for (size_t j = 0; j < 3; ++j) {
      if (packed) {
        auto it = lora_.find(p + packed_name);
        if (it != lora_.end() && j == 0) {
          as[0] = it->second.a;
          bs[0] = it->second.b;
        }
        if (it != lora_.end()) {
          ++enabled;
          lora_width += widths[j];
        }
        continue;
      }
      auto it = lora_.find(p + names[j]);
      if (it == lora_.end())
        continue;
      as[j] = it->second.a;
      bs[j] = it->second.b;
      ++enabled;
      lora_width += widths[j];
    }
    if (enabled > 0) {
      Tid xd = dropout(x, s_.lora.dropout);
      Tid ha = g_.op(rows * s_.lora.rank * enabled, e, {xd, as[0], as[1], as[2]},
                     {xd, as[0], as[1], as[2]});
      g_.release(xd);
      Tid hb = g_.op(rows * lora_width, e, {ha, bs[0], bs[1], bs[2]}, {ha, bs[0], bs[1], bs[2]});
      g_.release(ha);
      if (enabled < 3) {
        Tid padded = g_.op(rows * total, e, {hb}, {});
        g_.release(hb);
        hb = padded;
      }
      Tid scaled = plain(hb);
      g_.release(hb);
      Tid out = plain(sum, scaled);
      g_.release(sum);
      g_.release(scaled);
      sum = out;
    }
    // qkv.view(B, T, groups, q_per_kv + 2, hs).permute(0, 2, 3, 1, 4).split:
    // with one query per group (multi-head) q.reshape(B, -1, T, hs) merges a
    // size-1 dimension, a view, and so are k and v (reshape, or expand first
    // for grouped queries, traced in attention_core). SDPA then saves v as a
    // view of the whole q|k|v output, which stays alive until backward.
    // With grouped queries q's reshape copies.
    bool mha = a.num_heads == a.num_kv_heads;
    *q = mha ? g_.view(sum, rows * widths[0]) : g_.op(rows * widths[0], e, {sum}, {});
    *k = g_.view(sum, rows * widths[1]);
    *v = g_.view(sum, rows * widths[2]);
    g_.release(sum);
  }

  /// LitGPT LoRA / QLoRA on a model whose transformers checkpoint fuses
  /// gate_up_proj (Phi-3): fc_1 and fc_2 are traced as LitGPT runs them.
  /// Full fine-tuning keeps the fused trace (the same saved tensors).
  bool litgpt_split_mlp() const {
    return s_.framework == Framework::kLitgpt && s_.finetune != FinetuneMode::kFull;
  }

  /// LitGPT's attention output reaches its projection as a copy under the
  /// CUDA flash kernel of PyTorch 2.2+. CausalSelfAttention.forward
  /// (litgpt/model.py at 00af8b0d) builds q by torch.cat((q_roped,
  /// q[..., rope_n_elem:]), dim=-1): a contiguous [b, heads, s, d] tensor.
  /// SDPA's flash path passes query.transpose(1, 2) to mha_fwd, which
  /// allocates its output with empty_like of that view, so the output keeps
  /// q's [b, heads, s, d] memory order (aten/src/ATen/native/transformers/
  /// cuda/flash_attn/flash_api.cpp mha_fwd; flash-attention 2, PyTorch PR
  /// #105602, in 2.2). scaled_dot_product_attention returns y.transpose(1, 2)
  /// and y.reshape(B, T, n_head * head_size) must then copy. The
  /// memory-efficient kernel allocates [b, s, heads, d] itself (res =
  /// at::empty({B, M, num_heads, Kv}) in _efficient_attention_forward), and
  /// transformers' q (a view of q_proj's output, rotated elementwise) is
  /// already in that order, so neither copies. The copy is transient under
  /// LoRA (a frozen Linear saves no input) but is the input bitsandbytes'
  /// MatMul4Bit keeps on ctx.tensors under QLoRA, and the input a trainable
  /// proj saves in full fine-tuning. transformers' partial rotary (Phi,
  /// GPT-NeoX, StableLM: query_states = torch.cat((query_rot, query_pass),
  /// dim=-1) in modeling_phi.py, modeling_gpt_neox.py, modeling_stablelm.py
  /// v4.57) makes the same contiguous q, and attn_output.transpose(1, 2)
  /// .contiguous() then copies the same way.
  bool flash_output_copy(const AttentionSpec& a) const {
    if (!cuda_ || s_.attention != AttentionImpl::kSdpaFlash || s_.torch_version < 202)
      return false;
    bool hf_partial_rotary = s_.framework == Framework::kHf && cos_ != kNone &&
                             a.rotary_fraction > 0 && a.rotary_fraction < 1;
    return s_.framework == Framework::kLitgpt || hf_partial_rotary;
  }

  /// litgpt/finetune/full.py calls model(input_ids) without lm_head_chunk_size.
  bool litgpt_full() const {
    return s_.framework == Framework::kLitgpt && s_.finetune == FinetuneMode::kFull;
  }

  /// The loss of the last stage; consumes the model output `out` (kNone:
  /// the framework profile's logits slices in logit_chunks_).
  Tid loss_and_logits(Tid out, Tid labels) {
    Tid loss;
    if (liger_loss_ != kNone) {
      loss = liger_loss_;
      liger_loss_ = kNone;
      return loss;
    }
    if (out == kNone) {
      loss = chunked_loss(g_, logit_chunks_, s_.batch, s_.seq, m_.vocab_size, s_.fw);
      if (s_.fw.logits_outlive_step) {
        kept_logits_ = logit_chunks_;
      } else {
        for (Tid t : logit_chunks_)
          g_.release(t);  // `del logits` (torchtune _loss_step)
      }
      logit_chunks_.clear();
      // The previous step's graph (and the bnb ctx.tensors it holds) dies
      // when `loss = chunked_cross_entropy(...)` rebinds the name.
      for (Tid t : bnb_prev_)
        g_.release(t);
      bnb_prev_ = bnb_ctx_;
      bnb_ctx_.clear();
      return loss;
    }
    if (litgpt_full()) {
      loss = flat_chunked_loss(g_, out, s_.batch, s_.seq, m_.vocab_size, 128);
      kept_logits_.push_back(out);  // the loop variable keeps them into the next step
      return loss;
    }
    if (s_.fw.logits_shift_copy) {
      // early torchtune recipes: logits = logits[..., :-1, :].contiguous()
      Tid c = g_.op(s_.batch * (s_.seq - 1) * m_.vocab_size, g_.elem(out), {out}, {},
                    Component::kLogitsLoss);
      g_.release(out);
      out = c;
    }
    if (in_model_loss())
      loss = in_model_causal_lm_loss(&out);
    else
      loss = causal_lm_loss(out, labels);
    if (!router_logits_.empty())
      loss = router_aux_loss(loss);
    if (m_.family == "gpt_neo" && s_.framework == Framework::kHf &&
        head_hidden_elem_ != g_.elem(out)) {
      // lm_logits = lm_logits.to(hidden_states.dtype): the output object
      // holds the copy (the fp32 logits die with the rebinding).
      Tid back = cast(out, head_hidden_elem_);
      g_.release(out);
      out = back;
    }
    if (s_.fw.logits_outlive_step)
      kept_logits_.push_back(out);
    else
      g_.release(out);  // the model output object dies with compute_loss
    return loss;
  }

  /// Lightning Fabric's convert_output: apply_to_collection builds a new list
  /// of fp32 copies while the forward's `output` still holds the originals,
  /// which die when the name is rebound (lightning/fabric/wrappers.py).
  void fabric_output_fp32(std::vector<Tid>* outputs) {
    if (!s_.fw.logits_to_fp32)
      return;
    std::vector<Tid> converted;
    for (Tid t : *outputs) {
      if (g_.elem(t) == kF32) {
        g_.retain(t);
        converted.push_back(t);
      } else {
        converted.push_back(g_.op(g_.numel(t), kF32, {t}, {}, Component::kLogitsLoss));
      }
    }
    for (Tid t : *outputs)
      g_.release(t);
    *outputs = converted;
  }

  void optimizer_step(bool first);
  void add_paged_states();
  /// What a bitsandbytes paged optimizer keeps in the caching allocator for a
  /// tensor of `n` elements (see add_paged_states).
  void add_paged_remnant(int64_t n);
  /// Elements per absmax of bitsandbytes' blockwise 8-bit states (FrameworkSetup::bnb_block).
  int64_t bnb_block() const { return std::max<int64_t>(1, s_.fw.bnb_block); }
  /// The states `kind` keeps for a tensor of `n` elements of `e` bytes.
  void add_states(OptimizerKind kind, int64_t n, int e) {
    switch (kind) {
      case OptimizerKind::kSgd:
        break;
      case OptimizerKind::kSgdMomentum:
        opt_state_.push_back(g_.leaf(n, e, Component::kOptimizerStates, false));
        break;
      case OptimizerKind::kAdafactor:
        // factored second moment for matrices (row and column vectors, fp32)
        opt_state_.push_back(
            g_.leaf(std::max<int64_t>(1, n / 1024), kF32, Component::kOptimizerStates, false));
        break;
      case OptimizerKind::kAdamW8bit:
      case OptimizerKind::kPagedAdamW8bit:
        // bitsandbytes Optimizer2State.init_state (optim/optimizer.py): a
        // tensor under min_8bit_size (4096) keeps two fp32 states whatever its
        // dtype; a larger one gets two uint8 states and two fp32 absmax of
        // ceil(n / bnb_block()) blocks each.
        if (n < 4096) {
          opt_state_.push_back(g_.leaf(2 * n, kF32, Component::kOptimizerStates, false));
        } else {
          int64_t block = bnb_block();
          opt_state_.push_back(g_.leaf(2 * n, 1, Component::kOptimizerStates, false));
          opt_state_.push_back(
              g_.leaf(2 * ((n + block - 1) / block), kF32, Component::kOptimizerStates, false));
        }
        break;
      default:  // AdamW: exp_avg and exp_avg_sq in the stepped tensor's dtype
        opt_state_.push_back(g_.leaf(n, e, Component::kOptimizerStates, false));
        opt_state_.push_back(g_.leaf(n, e, Component::kOptimizerStates, false));
        break;
    }
  }
  /// torchtune optimizer_in_bwd (training.register_optim_in_bwd_hooks): a
  /// post-accumulate-grad hook steps this parameter's own optimizer, then
  /// zero_grad(set_to_none=True) frees its gradient.
  void step_in_backward(Tid p);
  /// Whether this micro-batch is the step's last (FSDP no_sync before it).
  void set_sync(bool sync) { sync_ = sync; }
  void zero_grad() {
    for (Tid p : trainable_)
      g_.clear_grad(p);
    for (Tid& t : grad_shards_) {
      if (t != kNone)
        g_.release(t);
      t = kNone;
    }
  }

 private:
  // ------------------------------------------------------------ load
  // (issues 3 and 8; trace/load.h, docs/frameworks.md "Loading")
  Tid load_quantized(const TensorSpec& t, int64_t bytes);
  Nf4Options nf4_options() const;
  /// A torchtune NF4 weight's storage (the legacy one is larger).
  Tid nf4_param(int64_t numel, int64_t bytes);
  void finish_load();
  struct Loaded {
    std::string name;
    int layer;
    int64_t numel;
    int64_t bytes;
  };
  std::vector<Loaded> loaded_;  // quantized weights, in load order

  // ------------------------------------------------------------ distributed
  void setup_distributed();
  void setup_chunks();
  /// ZeRO-3 / FSDP: all-gathers the parameters of `layer` (-1: the root
  /// unit) into a full buffer of the compute dtype, once.
  void gather(int layer) {
    if (chunked_) {
      for (size_t c = 0; c < chunk_key_.size(); ++c) {
        if (chunk_key_[c] == layer)
          gather_chunk(c);
      }
      return;
    }
    if (!r_.sharded_params())
      return;
    auto slot = static_cast<size_t>(layer + 1);
    if (slot >= layer_numel_.size() || gathered_[slot] != kNone)
      return;
    int64_t packed = slot < layer_packed_.size() ? layer_packed_[slot] : 0;
    if (layer_numel_[slot] == 0 && packed == 0)
      return;
    if (r_.per_param_shards) {
      // FSDP2 foreach_all_gather: one flat all_gather_output of every rank's
      // padded shards; foreach_all_gather_copy_out splits it into each
      // parameter's own (padded) all_gather_outputs, then the flat one dies.
      int64_t padded = layer_shard_numel_[slot] * r_.param_shards;
      Tid flat = g_.buffer(padded * pe_ + packed, Component::kWeightCopies);
      gathered_[slot] = g_.buffer(padded * pe_ + packed, Component::kWeightCopies);
      g_.release(flat);
      return;
    }
    // FSDP1 with CPU offload: the host shard comes to the device first
    // (OffloadFetch::kUnitShard); under parameter mixed precision the
    // full-precision copy is cast into the low-precision shard and dies.
    Tid device_shard = kNone;
    if (r_.offload_params && r_.offload_fetch == OffloadFetch::kUnitShard) {
      int64_t stored = unit_shard_bytes(slot);
      int64_t low = unit_shard(slot) * pe_ + shard(packed, r_.param_shards);
      device_shard = g_.buffer(low, Component::kWeightCopies);
      if (low != stored)
        g_.release(g_.buffer(stored, Component::kTemporaries));
    }
    // The unit's parameters in the compute dtype, and its packed 4-bit bytes
    // as they are stored (their storage dtype is the compute dtype, so
    // MixedPrecision casts nothing).
    gathered_[slot] = g_.buffer(layer_numel_[slot] * pe_ + packed, Component::kWeightCopies);
    if (device_shard != kNone)
      g_.release(device_shard);  // the all-gather's input, replaced by the unsharded view
    if (r_.offload_params && r_.offload_fetch == OffloadFetch::kLargestParam)
      fetch_copy(unit_max_bytes_[slot]);
    if (r_.gather_frees_shard && param_shard_[slot] != kNone) {
      g_.release(param_shard_[slot]);
      param_shard_[slot] = kNone;
    }
  }
  void reshard(int layer) {
    if (chunked_) {
      for (size_t c = 0; c < chunk_key_.size(); ++c) {
        if (chunk_key_[c] == layer)
          release_chunk(c);
      }
      return;
    }
    auto slot = static_cast<size_t>(layer + 1);
    if (slot < gathered_.size() && gathered_[slot] != kNone) {
      if (r_.gather_frees_shard)
        param_shard_[slot] = param_shard(slot);
      g_.release(gathered_[slot]);
      gathered_[slot] = kNone;
    }
  }
  /// A unit's persistent flat shard, in the stored dtype (kNone when the unit
  /// holds nothing). QLoRA: every base parameter is frozen, stored in the
  /// quant storage dtype, with the packed 4-bit bytes in the same flat shard.
  Tid param_shard(size_t slot) {
    int64_t bytes = unit_shard_bytes(slot);
    return bytes > 0 ? g_.buffer(bytes, Component::kParameters) : kNone;
  }
  /// One rank's stored bytes of a unit (slot: layer + 1).
  int64_t unit_shard_bytes(size_t slot) const {
    int elem = s_.finetune == FinetuneMode::kQlora ? base_store_elem_ : store_elem_;
    int64_t packed = slot < layer_packed_.size() ? layer_packed_[slot] : 0;
    return unit_shard(slot) * elem + shard(packed, r_.param_shards);
  }
  /// Records a sharded parameter's stored bytes (whole) for its unit's largest.
  void note_unit_param(size_t slot, int64_t bytes) {
    if (unit_max_bytes_.size() <= slot)
      unit_max_bytes_.resize(slot + 1, 0);
    unit_max_bytes_[slot] = std::max(unit_max_bytes_[slot], bytes);
  }
  /// A ZeRO-3 / FSDP parameter of `unit` (a layer; -1: the root): a virtual
  /// leaf whose storage is the unit's shard and gathered buffers. `rows` is
  /// dim 0 (FSDP2 pads it to a multiple of the shard count); `stored_elem`
  /// the stored dtype's size.
  Tid sharded_param(int unit, int64_t numel, int64_t rows, bool trainable, int stored_elem) {
    Tid id = g_.virtual_leaf(numel, pe_, trainable);
    auto slot = static_cast<size_t>(unit + 1);
    if (layer_numel_.size() <= slot) {
      layer_numel_.resize(slot + 1, 0);
      layer_shard_numel_.resize(slot + 1, 0);
    }
    layer_numel_[slot] += numel;
    note_unit_param(slot, numel * stored_elem);
    param_rows_[id] = rows;
    layer_shard_numel_[slot] += tensor_shard(id, r_.param_shards);
    return id;
  }
  /// A sharded quantized weight of `unit` that all-gathers as `whole` bytes
  /// (a multiple of the shard count): stored 1/n with the unit, gathered
  /// with it as bytes, dequantized per linear at compute.
  Tid packed_param(int unit, int64_t whole) {
    Tid id = g_.virtual_leaf(whole, 1, false);
    auto slot = static_cast<size_t>(unit + 1);
    if (layer_packed_.size() <= slot)
      layer_packed_.resize(slot + 1, 0);
    layer_packed_[slot] += whole;
    note_unit_param(slot, whole);
    return id;
  }
  /// torchtune QLoRA under FSDP2 (lora_finetune_distributed): each
  /// FrozenNF4Linear weight is a DTensor whose local tensor is an NF4Tensor.
  /// training.load_from_full_model_state_dict (torchtune 1814feb
  /// training/_distributed.py) quantizes the whole weight with to_nf4 and
  /// keeps torch.chunk(dim=0)[rank] of it, FSDP2's per-parameter dim-0
  /// sharding: quantized_data (n/2 bytes), quantized_scalers (int8, n/64) and
  /// quantization_factor all split by rows (torchao nf4tensor.py nf4_split,
  /// _INNER_TENSOR_NAMES_FOR_SHARDING), the fullest rank holding
  /// ceil(rows / N) rows' worth. fsdp_pre_all_gather hands those three
  /// tensors to FSDP2's all-gather (the unit's inputs mix dtypes, so the flat
  /// buffer is uint8 bytes) and fsdp_post_all_gather wraps the gathered ones
  /// in a whole NF4Tensor; the linear dequantizes it per call (LinearNF4,
  /// weight.to(bf16)) as on one device. `bytes`: the NF4Tensor's bytes whole.
  Tid nf4_dtensor(const TensorSpec& t, int64_t bytes) {
    int64_t rows = t.shape.empty() ? 1 : t.shape[0];
    int64_t rank_bytes = (bytes * shard(rows, r_.param_shards) + rows - 1) / rows;
    return packed_param(unit_of(t), rank_bytes * r_.param_shards);
  }
  /// DeepSpeed ZeRO-3 with offload_param (OffloadFetch::kLargestParam): the
  /// fetched parameter's host partition, copied to the device for the
  /// all-gather next to its full buffer, dies when the call returns.
  void fetch_copy(int64_t whole_bytes) {
    if (whole_bytes > 0)
      g_.release(g_.buffer(shard(whole_bytes, r_.param_shards), Component::kTemporaries));
  }
  /// Gemini (ColossalAI d4fb7bf chunk/chunk.py __gather, gemini_hook.py
  /// pre_op): the whole chunk is all-gathered in the compute dtype when the
  /// first of its tensors is used; the gathered chunk replaces the shard.
  void gather_chunk(size_t c) {
    if (chunk_gathered_[c] != kNone || chunks_.keep_gathered || !r_.sharded_params())
      return;
    chunk_gathered_[c] = g_.buffer(chunks_.chunks[c].capacity * pe_, Component::kWeightCopies);
    if (r_.gather_frees_shard && chunk_shard_[c] != kNone) {
      g_.release(chunk_shard_[c]);
      chunk_shard_[c] = kNone;
    }
  }
  /// Gemini reduce_chunk: once every tensor of the chunk has its gradient
  /// (copied into the chunk by grad_handle), the chunk is reduce-scattered
  /// into a new shard and the gathered chunk freed.
  void release_chunk(size_t c) {
    const GeminiChunk& ch = chunks_.chunks[c];
    for (size_t k = ch.first; k < ch.end; ++k) {
      Tid p = chunk_order_[k].first;
      if (g_.grad(p) != kNone)
        g_.clear_grad(p);
    }
    if (chunk_gathered_[c] == kNone)
      return;
    if (r_.gather_frees_shard && !r_.offload_params && chunk_shard_[c] == kNone)
      chunk_shard_[c] = g_.buffer(ch.shard * store_elem_, Component::kParameters);
    g_.release(chunk_gathered_[c]);
    chunk_gathered_[c] = kNone;
  }
  /// The end of this stage's layers: the key of the root tensors used after
  /// them (final norm, head).
  int stage_end() const {
    return r_.end_layer < 0 ? static_cast<int>(m_.num_layers) : r_.end_layer;
  }
  /// The unit (a layer index; -1: the root) whose gathered parameters hold
  /// `t`. With embedding units (torchtune custom_sharded_layers) the
  /// embedding and an untied head are units of their own, numbered after the
  /// layers; a tied head uses the embedding's weight, which then stays in the root.
  int unit_of(const TensorSpec& t) const {
    if (!r_.embedding_units || t.layer >= 0 || !untied_head_)
      return t.layer;
    if (t.role == TensorRole::kEmbedding)
      return embed_unit();
    return t.role == TensorRole::kLmHead ? head_unit() : t.layer;
  }
  int embed_unit() const { return static_cast<int>(m_.num_layers); }
  int head_unit() const { return static_cast<int>(m_.num_layers) + 1; }
  /// FSDP2 units of their own are gathered by their pre-forward (and
  /// pre-backward) hook and resharded after (reshard_after_forward=True).
  void gather_unit(int unit) {
    if (r_.embedding_units)
      gather(unit);
  }
  void reshard_unit(int unit) {
    if (r_.embedding_units && r_.reshard_after_forward)
      reshard(unit);
  }
  /// Backward moved from layer `from` to `to`: gradients of `from` are
  /// reduced, its gathered parameters freed, `to` (and prefetched layers) gathered.
  void on_backward_layer(int from, int to) {
    if (r_.embedding_units && from < 0 && to >= 0) {
      reduce_grads(head_unit());  // the head's backward ran first
      reshard(head_unit());
    }
    if (r_.embedding_units && from >= 0 && to < 0)
      gather(embed_unit());  // the embedding's backward comes last
    if (chunked_ && from < 0 && to >= 0)
      reshard(stage_end());  // the head's chunks: their gradients are all in
    if (from >= 0) {
      reduce_grads(from);
      reshard(from);
    }
    if (to >= 0) {
      for (int k = 0; k <= r_.prefetch_layers && to - k >= 0; ++k)
        gather(to - k);
    }
  }
  /// DDP with bucket views, ZeRO-2/3, FSDP: once a layer's gradients are
  /// complete they leave their own buffers (copied into a bucket view, or
  /// reduce-scattered into this rank's shard).
  void reduce_grads(int layer) {
    if (r_.grad_shards <= 1 && !r_.bucket_view && !r_.grads_in_param_chunks)
      return;
    auto slot = static_cast<size_t>(layer + 1);
    Tid rs_input = kNone;
    if (r_.per_param_shards && r_.grad_shards > 1) {
      // FSDP2 foreach_reduce: the unsharded gradients are copied into one
      // flat reduce_scatter_input (padded, compute dtype) and dropped; that
      // buffer lives until the next unit's reduce-scatter is issued.
      if (rs_pending_ != kNone)
        g_.release(rs_pending_);
      rs_pending_ = kNone;
      int64_t padded = 0;
      for (Tid p : trainable_) {
        if (param_layer(p) == layer && g_.grad(p) != kNone)
          padded += tensor_shard(p, r_.grad_shards) * r_.grad_shards;
      }
      if (padded > 0)
        rs_input = g_.buffer(padded * pe_, Component::kGradients);
    }
    if (r_.flat_param_grads && r_.grad_shards > 1 && slot < flat_grad_.size()) {
      // FSDP1: the unit's fresh gradients are cat'ed into one flat tensor
      // (SplitBackward), which becomes FlatParameter.grad or is added into
      // the one no_sync() kept; a synced micro-batch then reduce-scatters it.
      bool fresh = false;
      for (Tid p : trainable_) {
        if (param_layer(p) == layer && g_.grad(p) != kNone)
          fresh = true;
      }
      if (fresh) {
        Tid cat = g_.buffer(trainable_numel_[slot] * r_.grad_shards * pe_, Component::kGradients);
        for (Tid p : trainable_) {
          if (param_layer(p) == layer && g_.grad(p) != kNone)
            g_.clear_grad(p);
        }
        if (flat_grad_[slot] == kNone) {
          flat_grad_[slot] = cat;
        } else {
          g_.release(cat);  // accumulated in place
        }
      }
      if (r_.no_sync_accum && !sync_)
        return;  // no_sync(): the flat gradient stays unsharded
    } else if (r_.no_sync_accum && !sync_) {
      return;  // no_sync(): the unsharded gradients stay and accumulate
    }
    bool any = false;
    for (Tid p : trainable_) {
      if (param_layer(p) != layer || g_.grad(p) == kNone)
        continue;
      g_.clear_grad(p);
      any = true;
    }
    if (slot < flat_grad_.size() && flat_grad_[slot] != kNone) {
      any = true;
    }
    if (any && r_.grad_shards > 1 && !r_.offload_optimizer && !r_.grads_in_param_chunks &&
        grad_shards_[slot] == kNone) {
      grad_shards_[slot] =
          g_.buffer(trainable_numel_[slot] * grad_store_elem_, Component::kGradients);
      if (s_.fw.optimizer_in_bwd) {
        // torchtune optimizer_in_bwd: the hook steps the sharded parameter
        // as its reduced gradient lands and frees that gradient.
        g_.release(grad_shards_[slot]);
        grad_shards_[slot] = kNone;
      }
    }
    if (slot < flat_grad_.size() && flat_grad_[slot] != kNone) {
      g_.release(flat_grad_[slot]);  // reduce-scattered into the shard
      flat_grad_[slot] = kNone;
    }
    rs_pending_ = rs_input;
  }
  /// FSDP2's last reduce_scatter_input dies when backward's final callback runs.
  void end_reduce() {
    if (rs_pending_ != kNone)
      g_.release(rs_pending_);
    rs_pending_ = kNone;
  }
  /// Elements of parameter `p` one rank holds of `shards`: FSDP2 pads each
  /// parameter's dim 0 to a multiple of the shard count (rank 0, the fullest,
  /// holds ceil(rows / shards) rows); flat layouts split the elements evenly.
  int64_t tensor_shard(Tid p, int shards) const {
    auto it = param_rows_.find(p);
    if (r_.per_param_shards && it != param_rows_.end() && it->second > 0) {
      int64_t rows = it->second;
      return shard(rows, shards) * (g_.numel(p) / rows);
    }
    return shard(g_.numel(p), shards);
  }
  /// One rank's stored elements of a unit (slot: layer + 1).
  int64_t unit_shard(size_t slot) const {
    return r_.per_param_shards ? layer_shard_numel_[slot]
                               : shard(layer_numel_[slot], r_.param_shards);
  }
  int64_t shard(int64_t numel, int shards) const { return (numel + shards - 1) / shards; }

  // ------------------------------------------------------------ primitives
  Param& param(const std::string& name) {
    auto it = params_.find(name);
    if (it == params_.end())
      throw Error(m_.source, "", "internal: no parameter " + name);
    return it->second;
  }
  Param* find_param(const std::string& name) {
    auto it = params_.find(name);
    return it == params_.end() ? nullptr : &it->second;
  }
  /// The same for the name `prefix` + `suffix`, spelled in a reused buffer
  /// (a lookup per linear and norm: no string allocated each time).
  Param& param(const std::string& prefix, std::string_view suffix) {
    return param(spell(prefix, suffix));
  }
  Param* find_param(const std::string& prefix, std::string_view suffix) {
    return find_param(spell(prefix, suffix));
  }
  const std::string& spell(const std::string& prefix, std::string_view suffix) {
    name_.assign(prefix);
    name_.append(suffix);
    return name_;
  }

  static int promote(int a, int b) { return std::max(a, b); }

  void set_param_layer(Tid p, int layer) {
    auto i = static_cast<size_t>(p);
    if (i >= param_layer_.size())
      param_layer_.resize(i + 1, 0);
    param_layer_[i] = layer;
  }
  /// A replaced parameter reads as unknown again (layer 0).
  void forget_param_layer(Tid p) {
    if (static_cast<size_t>(p) < param_layer_.size())
      param_layer_[static_cast<size_t>(p)] = 0;
  }
  int param_layer(Tid p) const {
    auto i = static_cast<size_t>(p);
    return i < param_layer_.size() ? param_layer_[i] : 0;
  }

  /// x.to(dtype): a new tensor unless the dtype already matches (then x,
  /// with one more reference).
  Tid cast(Tid x, int elem) {
    if (g_.elem(x) == elem) {
      g_.retain(x);
      return x;
    }
    Tid y = g_.op(g_.numel(x), elem, {x}, {});
    g_.set_layout(y, g_.layout(x));  // _to_copy preserves strides
    return y;
  }

  /// The low-precision copy autocast makes of a weight. Trainable leaves are
  /// cached until the autocast context exits; frozen ones are cast anew.
  Tid autocast_weight(Param& p) {
    if (g_.elem(p.id) == ae_) {
      g_.retain(p.id);
      return p.id;
    }
    if (p.trainable) {
      if (p.cast_cache == kNone) {
        p.cast_cache = g_.op(g_.numel(p.id), ae_, {p.id}, {}, Component::kWeightCopies);
        cache_.push_back(&p);
      }
      g_.retain(p.cast_cache);
      return p.cast_cache;
    }
    return g_.op(g_.numel(p.id), ae_, {p.id}, {}, Component::kWeightCopies);
  }

  void clear_autocast_cache() {
    for (Param* p : cache_) {
      if (p->cast_cache != kNone)
        g_.release(p->cast_cache);
      p->cast_cache = kNone;
    }
    cache_.clear();
  }

  /// y = x W^T + b (aten::linear; addmm/matmul save x when W needs a gradient
  /// and W when x does). Under autocast both are cast to the low precision.
  Tid base_linear(Tid x, Param& w, Param* b, int64_t in, int64_t out) {
    int64_t rows = g_.numel(x) / in;
    if (sp_ > 1 && rows * sp_ == tokens_)
      return sp_column_linear(x, w, b, in, out);
    if (w.quantized > 0) {
      // bnb Linear4bit.forward: x.to(compute_dtype); matmul_4bit dequantizes
      // the weight to the compute dtype for the matmul (and again in
      // backward, a temporary of the weight's size); out.to(input dtype).
      int ce = s_.quant.compute_fp32 ? kF32 : 2;
      Tid xc = cast(x, ce);
      // Weights quantized from fp16 (Fabric's BitsandbytesPrecision):
      // dequantize_4bit returns the QuantState dtype, fp16, and
      // F.dequantize_4bit(B, state).to(A.dtype) copies it unless the compute
      // dtype is fp16 (bitsandbytes/autograd/_functions.py MatMul4Bit, 0.42
      // to 0.44): both weight-sized tensors are alive during the cast, in
      // forward and again for grad_A in backward (modelled as one backward
      // temporary of both, which overstates that moment by at most grad_A).
      bool fp16_copy =
          s_.quant.fp16_quant_state && (s_.quant.compute_fp32 || s_.precision != Precision::kFp16);
      Tid deq;
      if (fp16_copy) {
        Tid half = g_.op(w.quantized, 2, {w.id}, {}, Component::kWeightCopies);
        deq = g_.op(w.quantized, ce, {half}, {}, Component::kWeightCopies);
        g_.release(half);
      } else {
        deq = g_.op(w.quantized, ce, {w.id}, {}, Component::kWeightCopies);
      }
      // bitsandbytes before 0.43.2: MatMul4Bit.forward keeps ctx.tensors =
      // (A, B) whenever the input needs a gradient (bitsandbytes/autograd/
      // _functions.py): a Python attribute of the graph node, not a saved
      // variable, so it lives as long as the graph does. The Trainer's graph
      // dies when training_step returns, after backward; LitGPT's loop keeps
      // it through `loss` until the next step's loss rebinds the name.
      // Recomputed under reentrant checkpointing, the layer's local graph
      // keeps it until that layer's backward (approximated by saving it);
      // non-reentrant recomputation discards its graph at once. torchao's NF4
      // linear saves only the weight.
      bool keeps = s_.fw.bnb_matmul_keeps_input &&
                   (g_.requires_grad(xc) || nonreentrant_forward_) &&
                   (s_.framework == Framework::kLitgpt || s_.framework == Framework::kHf);
      bool recomputing = g_.phase() == Phase::kBackward;
      if (keeps && !recomputing) {
        g_.retain(xc);
        bnb_ctx_.push_back(xc);
      }
      bool saved = keeps && recomputing && s_.checkpointing == CheckpointMode::kReentrant;
      Tid y = g_.op(rows * out, ce, {xc, deq, b != nullptr ? b->id : kNone}, {saved ? xc : kNone},
                    Component::kActivations, {}, w.quantized * (ce + (fp16_copy ? 2 : 0)));
      g_.release(deq);
      g_.release(xc);
      Tid yo = cast(y, g_.elem(x));
      g_.release(y);
      return yo;
    }
    if (view_cast_) {
      // modeling_falcon.py FalconLinear: `input @ self.weight.T`, then
      // `+ self.bias`. Autocast casts the transposed view, which is not a
      // leaf, so the cast is made again at every call instead of being
      // cached (autocast_mode.cpp cached_cast: only leaves that require
      // grad); matmul saves it as it saves a linear's. The bias is a separate
      // add, in the promoted dtype (fp32 under autocast).
      Tid xc = autocast_ ? cast(x, ae_) : (g_.retain(x), x);
      Tid wc = autocast_ ? g_.op(g_.numel(w.id), ae_, {w.id}, {}, Component::kWeightCopies)
                         : (g_.retain(w.id), w.id);
      Tid y = g_.op(rows * out, promote(g_.elem(xc), g_.elem(wc)), {xc, wc},
                    {g_.requires_grad(wc) ? xc : kNone, g_.requires_grad(xc) ? wc : kNone});
      g_.release(xc);
      g_.release(wc);
      if (b == nullptr)
        return y;
      Tid yb = g_.op(g_.numel(y), promote(g_.elem(y), g_.elem(b->id)), {y, b->id}, {});
      g_.release(y);
      return yb;
    }
    if (autocast_) {
      Tid xc = cast(x, ae_);
      Tid wc = autocast_weight(w);
      Tid bc = b != nullptr ? autocast_weight(*b) : kNone;
      Tid y = g_.op(rows * out, ae_, {xc, wc, bc},
                    {g_.requires_grad(wc) ? xc : kNone, g_.requires_grad(xc) ? wc : kNone});
      g_.release(xc);
      g_.release(wc);
      if (bc != kNone)
        g_.release(bc);
      return y;
    }
    Tid y = g_.op(rows * out, promote(g_.elem(x), g_.elem(w.id)),
                  {x, w.id, b != nullptr ? b->id : kNone},
                  {w.trainable ? x : kNone, g_.requires_grad(x) ? w.id : kNone});
    return y;
  }

  /// Megatron sequence parallelism, column-parallel linear on a sequence
  /// shard (megatron/core/tensor_parallel/layers.py,
  /// LinearWithGradAccumulationAndAsyncCommunication): the shard is
  /// all-gathered into the persistent GlobalMemoryBuffer ("mpu", one per
  /// dtype; megatron/core/utils.py) for the matmul and saved as the shard;
  /// backward gathers it again into the same buffer and computes the full
  /// input gradient before reduce-scattering it (a temporary).
  Tid sp_column_linear(Tid x, Param& w, Param* b, int64_t in, int64_t out) {
    Tid xc = autocast_ ? cast(x, ae_) : (g_.retain(x), x);
    int e = autocast_ ? ae_ : promote(g_.elem(x), g_.elem(w.id));
    int64_t gathered = tokens_ * in * g_.elem(xc);
    if (gathered > sp_buffer_bytes_) {
      // get_tensor() replaces a buffer that is too small.
      if (sp_buffer_ != kNone)
        g_.release(sp_buffer_);
      sp_buffer_ = g_.buffer(gathered, Component::kTemporaries);
      sp_buffer_bytes_ = gathered;
    }
    Tid wc = autocast_ ? autocast_weight(w) : (g_.retain(w.id), w.id);
    Tid bc = b == nullptr ? kNone : autocast_ ? autocast_weight(*b) : (g_.retain(b->id), b->id);
    Tid y = g_.op(tokens_ * out, e, {xc, wc, bc},
                  {g_.requires_grad(wc) ? xc : kNone, g_.requires_grad(xc) ? wc : kNone},
                  Component::kActivations, {}, g_.requires_grad(xc) ? gathered : 0);
    g_.release(xc);
    g_.release(wc);
    if (bc != kNone)
      g_.release(bc);
    return y;
  }
  /// Megatron sequence parallelism: a row-parallel linear's (or the
  /// embedding's) partial sums are reduce-scattered to this rank's s/tp tokens
  /// (reduce_scatter_to_sequence_parallel_region); backward all-gathers.
  Tid sp_scatter(Tid y) {
    if (sp_ <= 1)
      return y;
    Tid z = g_.op(g_.numel(y) / sp_, g_.elem(y), {y}, {});
    g_.release(y);
    return z;
  }

  /// A Linear (or GPT-2 Conv1D) module by state-dict prefix, with its LoRA
  /// adapter when the module is targeted (peft/tuners/lora/layer.py Linear.forward:
  /// result = base(x) + lora_B(lora_A(dropout(x))) * scaling, cast back to the
  /// base result's dtype).
  Tid linear(Tid x, const std::string& prefix, int64_t in, int64_t out) {
    Param& w = param(prefix, ".weight");
    // Falcon's decoder-layer projections are FalconLinear (its lm_head an nn.Linear).
    view_cast_ = s_.framework == Framework::kHf && m_.family == "falcon" && w.quantized == 0 &&
                 prefix.rfind(names_.layers + ".", 0) == 0;
    Tid y = base_linear(x, w, find_param(prefix, ".bias"), in, out);
    view_cast_ = false;
    if (sp_ > 1 && row_parallel(prefix + ".weight"))
      y = sp_scatter(y);
    return with_lora(x, y, prefix, w, in, out);
  }

  /// LitGPT's LLaMAMLP keeps fc_1 and fc_2 as two Linears (litgpt/model.py;
  /// its Phi-3 config maps transformers' fused gate_up_proj onto them), each
  /// quantized on its own and, with lora_mlp, with its own LoRALinear and
  /// lora_dropout (litgpt/lora.py). `part` 0 is fc_1 (the gate half), 1 fc_2.
  Tid litgpt_mlp_half(Tid x, const std::string& fused, int part, int64_t in, int64_t out) {
    Param& w = param(fused + ".weight");
    Param half = w;
    half.quantized = w.quantized / 2;
    Tid y = base_linear(x, half, nullptr, in, out);
    return with_lora(x, y, fused + (part == 0 ? ".fc_1" : ".fc_2"), w, in, out);
  }

  /// The LoRA branch added to a linear's output `y` when `key` has an adapter.
  Tid with_lora(Tid x, Tid y, const std::string& key, const Param& w, int64_t in, int64_t out) {
    auto it = lora_.find(key);
    if (it == lora_.end())
      return y;
    if (w.quantized > 0 && s_.framework == Framework::kHf) {
      // peft/tuners/lora/bnb.py Linear4bit.forward: result = result.clone()
      Tid c = g_.op(g_.numel(y), g_.elem(y), {y}, {});
      g_.release(y);
      y = c;
    }
    const Lora& l = it->second;
    Tid xl = cast(x, autocast_ ? g_.elem(x) : l.elem);
    Tid xd = dropout(xl, s_.lora.dropout);
    g_.release(xl);
    Tid ha = lora_linear(xd, lora_params_[l.a], in, l.rank);
    g_.release(xd);
    Tid hb = lora_linear(ha, lora_params_[l.b], l.rank, out);
    g_.release(ha);
    Tid scaled = g_.op(g_.numel(hb), g_.elem(hb), {hb}, {});  // * scaling (a Python float)
    g_.release(hb);
    Tid sum = g_.op(g_.numel(y), promote(g_.elem(y), g_.elem(scaled)), {y, scaled}, {});
    g_.release(y);
    g_.release(scaled);
    Tid result = cast(sum, g_.elem(y));
    g_.release(sum);
    return result;
  }

  Tid lora_linear(Tid x, Param& w, int64_t in, int64_t out) {
    return base_linear(x, w, nullptr, in, out);
  }

  /// F.dropout in training mode: p == 0 returns the input itself. CUDA's fused
  /// kernel saves a bool mask; the CPU path multiplies by a saved float noise
  /// tensor of the input's dtype.
  Tid dropout(Tid x, double p) {
    if (p <= 0) {
      g_.retain(x);
      return x;
    }
    int mask_elem = cuda_ ? 1 : g_.elem(x);
    return g_.op(g_.numel(x), g_.elem(x), {x}, {}, Component::kActivations,
                 {{g_.numel(x), mask_elem}});
  }

  double hidden_dropout() const { return s_.dropout >= 0 ? s_.dropout : m_.hidden_dropout; }
  double attention_dropout() const { return s_.dropout >= 0 ? s_.dropout : m_.attention_dropout; }
  /// lit-gpt before PR #667: multi-query K/V reach SDPA with one head.
  bool litgpt_mqa_unexpanded(int64_t kv_heads) const {
    return s_.framework == Framework::kLitgpt && s_.fw.mqa_kv_unexpanded && kv_heads == 1;
  }
  /// Transformers builds a 4-D float mask for SDPA only when it cannot use
  /// is_causal (a padded batch); the profile says so with fw.sdpa_attn_mask.
  bool hf_sdpa_mask() const {
    return s_.attention != AttentionImpl::kEager && s_.framework == Framework::kHf &&
           s_.fw.sdpa_attn_mask;
  }
  /// SDPA receives a bool mask: transformers since v4.53 (the masking_utils
  /// rewrite, PR #37866; before, a float one in the model's dtype) and
  /// torchtune's packed batches without flex_attention.
  bool bool_sdpa_mask() const {
    return (hf_sdpa_mask() && s_.transformers_version >= 453) || packed_dense_mask(s_);
  }
  double embedding_dropout() const { return s_.dropout >= 0 ? s_.dropout : m_.embedding_dropout; }

  /// Elementwise binary op whose backward needs the other operand (mul).
  Tid mul(Tid a, Tid b) {
    int64_t n = std::max(g_.numel(a), g_.numel(b));
    Tid y = g_.op(n, promote(g_.elem(a), g_.elem(b)), {a, b},
                  {g_.requires_grad(b) ? a : kNone, g_.requires_grad(a) ? b : kNone});
    g_.set_layout(y, g_.layout(a));
    return y;
  }
  /// Elementwise op whose backward needs nothing (add, scalar mul, neg).
  Tid plain(Tid a, Tid b = kNone) {
    int64_t n = g_.numel(a);
    int e = g_.elem(a);
    if (b != kNone) {
      n = std::max(n, g_.numel(b));
      e = promote(e, g_.elem(b));
    }
    Tid y = g_.op(n, e, {a, b}, {});
    g_.set_layout(y, g_.layout(a));
    return y;
  }

  /// aten::matmul on [b, h, m, k] x [b, h, k, n]: operands that cannot fold
  /// their batch dimensions as a view ("bshd" layout) are copied first, and
  /// bmm saves the (possibly copied) operands.
  Tid batched_matmul(Tid a, Tid b, int64_t out_numel) {
    Tid ac = autocast_ ? cast(a, ae_) : (g_.retain(a), a);
    Tid bc = autocast_ ? cast(b, ae_) : (g_.retain(b), b);
    Tid af = fold(ac);
    Tid bf = fold(bc);
    g_.release(ac);
    g_.release(bc);
    int e = promote(g_.elem(af), g_.elem(bf));
    Tid y = g_.op(out_numel, e, {af, bf},
                  {g_.requires_grad(bf) ? af : kNone, g_.requires_grad(af) ? bf : kNone});
    g_.release(af);
    g_.release(bf);
    return y;
  }
  Tid fold(Tid x) {
    if (g_.layout(x) == Layout::kContiguous) {
      g_.retain(x);
      return x;
    }
    return g_.op(g_.numel(x), g_.elem(x), {x}, {});  // reshape -> clone
  }

  bool qk_in_fp32() const {
    return s_.framework == Framework::kHf &&
           (m_.family == "gpt_neo" || m_.family == "codegen" || m_.family == "gptj");
  }

  /// transformers before v4.49 (OPT, since v4.21: PR #17437) and v4.28 to
  /// v4.30 (LLaMA, until the Llama 2 release, PR #24891) clamped the masked
  /// scores with torch.max(attn_weights, finfo(dtype).min) in eager attention.
  bool old_mask_clamp() const {
    if (s_.framework != Framework::kHf)
      return false;
    int v = s_.transformers_version;
    return (m_.family == "opt" && v >= 421 && v < 449) ||
           (m_.family == "llama" && v >= 428 && v < 431);
  }
  /// OPT before v4.49 upcast the softmax to fp32 only for fp16 scores
  /// (softmax(..., dtype=float32).to(float16)); other dtypes ran it as they were.
  bool old_opt_softmax() const {
    return s_.framework == Framework::kHf && m_.family == "opt" && s_.transformers_version < 449;
  }
  bool fp16_compute() const {
    return s_.precision == Precision::kFp16 || s_.precision == Precision::kFp16Mixed;
  }

  Tid softmax_fp32(Tid x) {
    // softmax(x, dtype=float32): the input is converted first when needed.
    Tid x32 = cast(x, kF32);
    Tid y = g_.op(g_.numel(x32), kF32, {x32}, {}, Component::kActivations, {}, 0, true);
    g_.release(x32);
    return y;
  }

  /// Gemma-2 soft-capping, cap * tanh(x / cap): the division and the product
  /// by a Python float save nothing; tanh saves its output. Consumes `x`.
  /// Hugging Face rebinds its one name at each step (`w = w / cap`,
  /// `w = tanh(w)`, `w = w * cap`: Gemma2ForCausalLM.forward and
  /// eager_attention_forward in modeling_gemma2.py v4.57), so x dies after the
  /// division; LitGPT's do_softcapping(x, thresh) (litgpt/model.py) keeps its
  /// argument, and the caller's name, until it returns.
  Tid softcap(Tid x) {
    Tid d = plain(x);
    bool hf = s_.framework == Framework::kHf;
    if (hf)
      g_.release(x);
    Tid t = g_.op(g_.numel(d), g_.elem(d), {d}, {}, Component::kActivations, {}, 0, true);
    g_.release(d);
    Tid y = plain(t);
    g_.release(t);
    if (!hf)
      g_.release(x);
    return y;
  }
  /// The head's output with the final soft-capping of the model, if any
  /// (Gemma2ForCausalLM.forward; LitGPT GPT.forward clamp_head, per chunk).
  Tid capped_logits(Tid logits) {
    if (m_.final_logit_softcapping <= 0)
      return logits;
    return softcap(logits);
  }

  /// softmax without a dtype: CUDA autocast runs it in fp32; otherwise in the input dtype.
  Tid softmax_plain(Tid x) {
    int e = autocast_ && cuda_ ? kF32 : g_.elem(x);
    Tid xc = cast(x, e);
    Tid y = g_.op(g_.numel(xc), e, {xc}, {}, Component::kActivations, {}, 0, true);
    g_.release(xc);
    return y;
  }

  // ------------------------------------------------------------ norms
  /// LlamaRMSNorm.forward: x.to(float32); variance = x.pow(2).mean(-1);
  /// x * rsqrt(variance + eps); weight * x.to(input_dtype).
  Tid rms_norm(Tid x, const std::string& name, bool gemma_style, int64_t dim) {
    int64_t rows = g_.numel(x) / dim;
    if (liger_modules_) {
      // LigerRMSNormFunction (ops/rms_norm.py): Y in X's dtype, fp32 RSTD per
      // row; saves X, W and RSTD. With in_place (LigerRMSNorm's default; off
      // for Gemma-2, LigerRMSNormForGemma2) backward writes dX into dY.
      Param& w = param(name, ".weight");
      Tid y =
          g_.op(g_.numel(x), g_.elem(x), {x, w.id}, {x}, Component::kActivations, {{rows, kF32}});
      if (m_.family != "gemma2")
        g_.set_grad_source(y, GradSource::kOutputGrad);
      return y;
    }
    if (compiled_) {
      // One fused kernel. The mean of squares is a reduction whose output is
      // far smaller than its input, so the partitioner bans recomputing it and
      // saves the per-row rsqrt; the fp32 upcast and products are pointwise
      // and recomputed in backward from the saved input.
      Param& w = param(name, ".weight");
      return g_.op(g_.numel(x), g_.elem(x), {x, w.id}, {x}, Component::kActivations,
                   {{rows, kF32}});
    }
    Tid h32 = cast(x, kF32);
    Tid sq = g_.op(g_.numel(h32), kF32, {h32}, {h32});  // pow saves self
    // mean(-1, keepdim=True): torch before 2.0 saves its input (1.13's
    // derivatives.yaml writes mean.dim's backward with self.sizes(), so the
    // codegen keeps `self`, the pow output); 2.0 saves only the sizes.
    Tid var = g_.op(rows, kF32, {sq}, {s_.torch_version < 200 ? sq : kNone});
    g_.release(sq);
    Tid ve = plain(var);
    g_.release(var);
    Tid r = g_.op(rows, kF32, {ve}, {}, Component::kActivations, {}, 0, true);  // rsqrt
    g_.release(ve);
    Tid hn = mul(h32, r);
    g_.release(h32);
    g_.release(r);
    Param& w = param(name, ".weight");
    Tid out;
    if (gemma_style) {
      // Gemma: output = x * (1.0 + weight.float()), then cast to the input dtype.
      Tid w32 = cast(w.id, kF32);
      Tid w1 = plain(w32);
      g_.release(w32);
      Tid o = mul(hn, w1);
      g_.release(w1);
      g_.release(hn);
      out = cast(o, g_.elem(x));
      g_.release(o);
      return out;
    }
    Tid hc = cast(hn, g_.elem(x));
    g_.release(hn);
    out = mul(w.id, hc);
    g_.release(hc);
    return out;
  }

  /// nn.LayerNorm (native_layer_norm saves input, mean and rstd). CUDA autocast
  /// runs layer_norm in fp32.
  Tid layer_norm(Tid x, const std::string& name) {
    int64_t rows = g_.numel(x) / m_.hidden_size;
    int e = autocast_ && cuda_ ? kF32 : g_.elem(x);
    Tid xc = cast(x, e);
    Param* w = find_param(name, ".weight");
    Param* b = find_param(name, ".bias");
    Tid y = g_.op(g_.numel(xc), e, {xc, w ? w->id : kNone, b ? b->id : kNone}, {xc},
                  Component::kActivations, {{rows, norm_stat_elem(e)}, {rows, norm_stat_elem(e)}});
    g_.release(xc);
    return y;
  }

  /// The dtype of native_layer_norm's saved mean and rstd: fp32 on CUDA;
  /// the input's on the CPU with torch 1.13 (measured: a bf16 model's
  /// LayerNorms keep bf16 statistics).
  int norm_stat_elem(int input_elem) const {
    return !cuda_ && s_.torch_version < 200 ? input_elem : kF32;
  }

  Tid norm(Tid x, const std::string& name, NormKind kind) {
    if (kind == NormKind::kRMSNorm) {
      return rms_norm(x, name, m_.family == "gemma" || m_.family == "gemma2", m_.hidden_size);
    }
    if (kind == NormKind::kNonParametric && m_.family == "olmo" && s_.framework == Framework::kHf) {
      // OlmoLayerNorm (modeling_olmo.py): F.layer_norm(x.to(float32), ...)
      // .to(orig_dtype): a 16-bit input is copied to fp32, which layer_norm
      // saves, and the fp32 output is cast back.
      Tid x32 = cast(x, kF32);
      Tid y = layer_norm(x32, name);
      g_.release(x32);
      Tid out = cast(y, g_.elem(x));
      g_.release(y);
      return out;
    }
    return layer_norm(x, name);
  }

  /// StableLmLayerNormPerHead (modeling_stablelm.py v4.57): torch.split(x,
  /// 1, dim=1) of the [b, heads, s, d] transposed view, one bias-free
  /// LayerNorm per head, torch.cat of the outputs. Each layer_norm gets a
  /// strided view: native_layer_norm copies it to contiguous memory (a
  /// temporary) and autograd saves the view (keeping x) with a [b, s] fp32
  /// mean and rstd. The cat is modelled as a chain that grows by one head per
  /// step (its last step has the heads' outputs and the result alive, as
  /// torch.cat does), so every head's weight gets its gradient.
  Tid stablelm_head_norms(Tid x, const std::string& prefix, int64_t heads, int64_t d) {
    int e = g_.elem(x);
    int64_t per = g_.numel(x) / heads;
    int64_t rows = per / d;
    std::vector<Tid> outs;
    for (int64_t j = 0; j < heads; ++j) {
      Param* w = find_param(prefix + std::to_string(j), ".weight");
      Tid view = g_.view(x, per);
      Tid tmp = g_.buffer(per * e, Component::kTemporaries);  // .contiguous() inside the kernel
      outs.push_back(g_.op(per, e, {view, w != nullptr ? w->id : kNone}, {view},
                           Component::kActivations,
                           {{rows, norm_stat_elem(e)}, {rows, norm_stat_elem(e)}}));
      g_.release(tmp);
      g_.release(view);
    }
    Tid cat = outs.front();
    for (size_t j = 1; j < outs.size(); ++j) {
      Tid grown = g_.op(g_.numel(cat) + per, e, {cat, outs[j]}, {});
      g_.release(cat);
      g_.release(outs[j]);
      cat = grown;
    }
    g_.set_layout(cat, Layout::kContiguous);
    return cat;
  }

  /// OlmoConfig.clip_qkv (0: none). Read from the config's record, where
  /// model loading keeps it.
  double olmo_clip_qkv() const {
    for (const Provenance& p : m_.provenance) {
      if (p.key == "clip_qkv")
        return std::strtod(p.value.c_str(), nullptr);
    }
    return 0;
  }

  /// OlmoAttention: `states.clamp_(min=-clip, max=clip)` on a projection's
  /// output. The in-place op's backward (clamp_backward) needs the values
  /// before the clamp, so autograd saves a clone of them when the tensor
  /// requires grad (measured with torch 1.13: one projection-sized copy per
  /// clamp, kept until backward). Modelled as an op whose output replaces
  /// the input and whose node saves the clone.
  Tid clamp_in_place(Tid t) {
    if (!g_.requires_grad(t) || !g_.grad_enabled())
      return t;
    Tid orig = g_.leaf(g_.numel(t), g_.elem(t), Component::kActivations, false);
    Tid y = g_.op(g_.numel(t), g_.elem(t), {t}, {orig});
    g_.release(orig);
    g_.release(t);
    return y;
  }

  // ------------------------------------------------------------ activations
  Tid activation(Tid x, const std::string& act) {
    // LitGPT's MLPs call F.gelu(x, approximate="tanh"): one kernel (litgpt/model.py).
    if ((act == "gelu_new" || act == "gelu_fast") && s_.framework == Framework::kHf) {
      // NewGELUActivation: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
      Tid cube = g_.op(g_.numel(x), g_.elem(x), {x}, {x});  // pow saves x
      Tid c1 = plain(cube);
      g_.release(cube);
      Tid inner = plain(x, c1);
      g_.release(c1);
      Tid scaled = plain(inner);
      g_.release(inner);
      Tid th = g_.op(g_.numel(x), g_.elem(x), {scaled}, {}, Component::kActivations, {}, 0, true);
      g_.release(scaled);
      Tid one = plain(th);
      g_.release(th);
      Tid half = plain(x);
      Tid y = mul(half, one);
      g_.release(half);
      g_.release(one);
      return y;
    }
    if (act == "relu") {
      return g_.op(g_.numel(x), g_.elem(x), {x}, {}, Component::kActivations, {}, 0, true);
    }
    // silu, gelu, gelu_pytorch_tanh, gelu_python...: one kernel saving its input.
    return g_.op(g_.numel(x), g_.elem(x), {x}, {x});
  }

  /// Tensors bound to locals of the model's forward (Gemma's embeddings and
  /// normalizer) die when it returns.
  void release_model_locals() {
    for (Tid t : model_locals_)
      g_.release(t);
    model_locals_.clear();
  }

  /// GPT-NeoX and Falcon build a Cache in the training forward since
  /// transformers v4.45 (PR #31421, a30c865f99: DynamicCache.from_legacy_cache
  /// when use_cache); the layer updates it with its rotated K and V.
  bool generic_builds_cache() const {
    return style_ == Style::kGeneric && s_.framework == Framework::kHf &&
           (m_.family == "gpt_neox" || m_.family == "falcon") && s_.transformers_version >= 445;
  }

  /// Falcon's new_decoder_architecture (40B/180B: grouped K/V), read from
  /// the config's record; without one, grouped K/V heads other than one
  /// imply it (the 7B layout has one K/V head or one per query head).
  bool falcon_grouped(const AttentionSpec& a) const {
    for (const Provenance& p : m_.provenance) {
      if (p.key == "new_decoder_architecture")
        return p.value == "true";
    }
    return a.num_kv_heads != 1 && a.num_kv_heads != a.num_heads;
  }

  /// FalconAttention._split_heads and the transposes after it
  /// (modeling_falcon.py v4.57), on the fused [b, s, width] projection. The
  /// 7B layout with multi_query: q is a view of [b, s, heads + 2, d] whose
  /// transpose(1, 2).reshape copies it; K and V are fused[..., [-2], :]
  /// (advanced indexing: [b, s, 1, d] copies) and their reshape is a view.
  /// Without multi_query, [b, s, heads, 3, d] views, each copied by the
  /// reshape. new_decoder_architecture: [b, s, groups, heads/groups + 2, d];
  /// K and V are indexed (copies of the group heads), broadcast to every
  /// query head and flattened (a copy), and q is flattened from its strided
  /// view (a copy); then each is copied again by transpose(1, 2).reshape.
  void falcon_split_heads(Tid fused, const AttentionSpec& a, Tid* q, Tid* k, Tid* v) {
    int e = g_.elem(fused);
    int64_t total = a.q_width() + a.k_width() + a.v_width();
    int64_t rows = g_.numel(fused) / total;
    int64_t full = rows * a.q_width();
    if (falcon_grouped(a)) {
      auto grouped = [&](int64_t width) {
        Tid picked = g_.op(rows * width, e, {fused}, {});  // index (or strided view for q)
        Tid flat = g_.op(full, e, {picked}, {});           // broadcast_to + flatten(2, 3)
        g_.release(picked);
        Tid t = g_.op(full, e, {flat}, {});  // transpose(1, 2).reshape
        g_.release(flat);
        return t;
      };
      Tid qf = g_.op(full, e, {fused}, {});  // query.flatten(2, 3) of the strided view
      *q = g_.op(full, e, {qf}, {});         // transpose(1, 2).reshape
      g_.release(qf);
      *k = grouped(a.k_width());
      *v = grouped(a.v_width());
      return;
    }
    *q = g_.op(full, e, {fused}, {});
    *k = g_.op(rows * a.k_width(), e, {fused}, {});
    *v = g_.op(rows * a.v_width(), e, {fused}, {});
  }

  /// DynamicCache.update of one layer: from v4.56 (PR #39797, dc11a3cbb2:
  /// DynamicLayer.lazy_initialization) the keys/values start as empty
  /// tensors of the key's dtype and are torch.cat'ed with the new states, so
  /// K and V are copied (V promoted to K's dtype) and the copies are what
  /// attention uses; before it the first update stores the states themselves.
  /// Either way the cache holds them until the model output dies after the
  /// loss. Replaces *k and *v by what attention reads.
  void cache_update(Tid* k, Tid* v, bool copies) {
    if (copies) {
      Tid kc = g_.op(g_.numel(*k), g_.elem(*k), {*k}, {});
      Tid vc = g_.op(g_.numel(*v), promote(g_.elem(*k), g_.elem(*v)), {*v}, {});
      g_.release(*k);
      g_.release(*v);
      *k = kc;
      *v = vc;
    }
    g_.retain(*k);
    g_.retain(*v);
    cache_kv_.push_back(*k);
    cache_kv_.push_back(*v);
  }

  /// Qwen2-MoE: F.sigmoid(shared_expert_gate(x)) * shared_expert(x) (the
  /// sigmoid saves its output); consumes `shared`.
  Tid gate_shared_expert(Tid x, const std::string& q, Tid shared) {
    Tid gl = linear(x, q + "shared_expert_gate", m_.hidden_size, 1);
    Tid gs = g_.op(g_.numel(gl), g_.elem(gl), {gl}, {}, Component::kActivations, {}, 0, true);
    g_.release(gl);
    Tid sg = mul(gs, shared);
    g_.release(gs);
    g_.release(shared);
    return sg;
  }

  void release_shared() {
    for (Tid* t : {&cos_, &sin_, &mask_, &mask2_, &alibi_}) {
      if (*t != kNone)
        g_.release(*t);
      *t = kNone;
    }
  }

  enum class AttnFlavor { kHf, kAlibi, kFalcon };

  /// apply_rotary_pos_emb: t * cos + rotate_half(t) * sin (rotate_half: neg,
  /// cat). With partial rotary (NeoX, Phi, StableLM) the rotated slice is
  /// concatenated with the pass-through part, one more copy.
  Tid rope(Tid t, const AttentionSpec& a) {
    if (cos_ == kNone || a.rotary_fraction <= 0) {
      g_.retain(t);
      return t;
    }
    if (liger_ && !liger_rope_copies_) {
      // LigerRopeFunction (ops/rope.py): q.transpose(1, 2) is the projection's
      // own [b, s, heads, d] memory, so .contiguous() is a no-op and the
      // kernel rotates it in place; backward rotates dq in place. It saves
      // only cos and sin.
      g_.retain(t);
      return t;
    }
    if (compiled_ || liger_) {
      // Pointwise in t with cos/sin as constants: one kernel, and its
      // backward needs only cos and sin (alive as the layer's inputs).
      Tid y = g_.op(g_.numel(t), promote(g_.elem(t), g_.elem(cos_)), {t, cos_, sin_}, {});
      g_.set_layout(y, g_.layout(t));
      return y;
    }
    double f = a.rotary_fraction >= 1 ? 1.0 : a.rotary_fraction;
    auto rot_numel = static_cast<int64_t>(static_cast<double>(g_.numel(t)) * f);
    Tid tc = g_.op(rot_numel, promote(g_.elem(t), g_.elem(cos_)), {t, cos_}, {cos_});
    g_.set_layout(tc, g_.layout(t));
    Tid half = g_.op(rot_numel / 2, g_.elem(t), {t}, {});   // -x2
    Tid rot = g_.op(rot_numel, g_.elem(t), {half, t}, {});  // cat((-x2, x1))
    g_.release(half);
    Tid rs = g_.op(rot_numel, promote(g_.elem(rot), g_.elem(sin_)), {rot, sin_}, {sin_});
    g_.release(rot);
    Tid y = plain(tc, rs);
    g_.release(tc);
    g_.release(rs);
    // Phi-3's apply_rotary_pos_emb (partial rotary, PR #35947, v4.49) cats the
    // rotated slice with the pass-through one even when that one is empty.
    bool phi3_cat =
        s_.framework == Framework::kHf && m_.family == "phi3" && s_.transformers_version >= 449;
    if (f < 1 || phi3_cat) {
      Tid full = g_.op(g_.numel(t), g_.elem(y), {y, t}, {});  // cat((rotated, pass))
      g_.release(y);
      y = full;
    }
    return y;
  }

  /// PyTorch's _scaled_dot_product_attention_math (aten/src/ATen/native/
  /// transformers/attention.cpp) on q, k, v as SDPA receives them; returns
  /// the [b, heads, s, vd] output. Since 2.5 fp16/bf16 inputs are computed in
  /// fp32 unless allow_fp16_bf16_reduction_math_sdp(True) (the
  /// allowFP16BF16ReductionMathSDP check, default off). It runs
  /// q * sqrt(scale) and k^T * sqrt(scale) (new tensors that matmul saves),
  /// matmul -> [b, H, s, s] scores, adds the mask in place (is_causal builds
  /// a bool ones(s, s).tril() and its float copy), softmax (saves its
  /// output), dropout (saves a bool mask and the dropped probabilities), and
  /// matmul with v (saves the probabilities and v).
  Tid sdpa_math(Tid qc, Tid kc, Tid vc, const AttentionSpec& a, bool kv_expanded) {
    int64_t b = s_.batch;
    int64_t s = s_.seq;
    int64_t d = a.head_dim;
    int64_t heads = a.num_heads;
    int64_t vd = a.kind == AttentionKind::kMLA ? a.v_head_dim : d;
    int e = g_.elem(qc);
    int ce = cuda_ && e == 2 && s_.torch_version >= 205 ? kF32 : e;
    Tid k = kc;
    Tid v = vc;
    g_.retain(k);
    g_.retain(v);
    if (a.num_kv_heads != heads && !kv_expanded) {
      // transformers repeat_kv, the math kernel's own repeat_interleave with
      // enable_gqa, or matmul broadcasting one K/V head (expand + reshape:
      // bmm saves the copy): K and V copied to every query head.
      g_.release(k);
      g_.release(v);
      k = g_.op(b * heads * s * d, g_.elem(kc), {kc}, {});
      v = g_.op(b * heads * s * vd, g_.elem(vc), {vc}, {});
    }
    Tid q32 = cast(qc, ce);
    Tid k32 = cast(k, ce);
    Tid v32 = cast(v, ce);
    g_.release(k);
    g_.release(v);
    Tid qs = plain(q32);  // query * sqrt(scale)
    g_.release(q32);
    Tid ks = g_.op(g_.numel(k32), ce, {k32}, {});  // key.transpose(-2, -1) * sqrt(scale)
    g_.release(k32);
    Tid qf = fold(qs);
    g_.release(qs);
    Tid scores = g_.op(b * heads * s * s, ce, {qf, ks}, {qf, ks});
    g_.release(qf);
    g_.release(ks);
    if (!s_.fw.sdpa_attn_mask) {
      // is_causal: ones({s, s}, bool).tril(), then convert_boolean_attn_mask
      // to a float [s, s] added in place.
      Tid mb = g_.leaf(s * s, 1, Component::kActivations, false);
      Tid mf = g_.op(s * s, ce, {mb}, {});
      g_.release(mb);
      g_.release(mf);
    }
    Tid probs = g_.op(g_.numel(scores), ce, {scores}, {}, Component::kActivations, {}, 0, true);
    g_.release(scores);
    Tid pd = dropout(probs, attention_dropout());
    g_.release(probs);
    Tid o = g_.op(b * heads * s * vd, ce, {pd, v32}, {pd, v32});
    g_.release(pd);
    g_.release(v32);
    if (ce != e) {
      Tid oe = g_.op(g_.numel(o), e, {o}, {});  // .to(origin_dtype)
      g_.release(o);
      o = oe;
    }
    return o;
  }

  /// Attention on projected q (after rotary), k and v; returns the [T, H·d]
  /// contiguous output that goes into the output projection.
  Tid attention_core(Tid qe, Tid ke, Tid v, const AttentionSpec& a, AttnFlavor flavor) {
    int64_t b = s_.batch;
    int64_t s = s_.seq;
    int64_t d = a.head_dim;
    int64_t heads = a.num_heads;
    int64_t kv = a.num_kv_heads;
    int64_t vd = a.kind == AttentionKind::kMLA ? a.v_head_dim : d;
    // LitGPT computes soft-capped attention by hand whatever the attention
    // setting (litgpt/model.py scaled_dot_product_attention: "with
    // softcapping we cannot use SDPA"); Hugging Face applies it in eager only.
    bool litgpt_capped = s_.framework == Framework::kLitgpt && m_.attn_logit_softcapping > 0;
    if (s_.attention != AttentionImpl::kEager && !litgpt_capped) {
      // SDPA (flash / memory-efficient kernels): saves q, k, v, the output
      // and a float logsumexp [b, heads, s]; no s×s matrix.
      Tid qc = autocast_ ? cast(qe, ae_) : (g_.retain(qe), qe);
      Tid kc = autocast_ ? cast(ke, ae_) : (g_.retain(ke), ke);
      Tid vc = autocast_ ? cast(v, ae_) : (g_.retain(v), v);
      bool expanded = false;
      if ((s_.framework == Framework::kLitgpt && heads != kv && !litgpt_mqa_unexpanded(kv)) ||
          (s_.framework == Framework::kTorchtune && heads != kv) || hf_repeats_kv(m_, a, s_)) {
        // litgpt/model.py CausalSelfAttention: k and v are expanded to every
        // query head (expand + reshape / repeat_interleave: copies) before
        // SDPA; transformers' repeat_kv the same (hf_repeats_kv above);
        // torchtune/modules/attention.py MultiHeadAttention too (expand +
        // reshape before RoPE at 5cbc1967b and 0217d44c2, unsqueeze + expand
        // + flatten after it at 1814feb): SDPA saves the copies.
        Tid kr = g_.op(b * heads * s * d, g_.elem(kc), {kc}, {});
        Tid vr = g_.op(b * heads * s * vd, g_.elem(vc), {vc}, {});
        g_.release(kc);
        g_.release(vc);
        kc = kr;
        vc = vr;
        expanded = true;
      }
      if (s_.attention == AttentionImpl::kSdpaMath) {
        Tid o = sdpa_math(qc, kc, vc, a, expanded);
        g_.release(qc);
        g_.release(kc);
        g_.release(vc);
        Tid out = g_.op(g_.numel(o), g_.elem(o), {o}, {});  // transpose(1, 2).contiguous()
        g_.release(o);
        return out;
      }
      // transformers >= 4.53 (masking_utils.sdpa_mask) passes a bool mask;
      // SDPA converts it to a float bias in q's dtype on every call
      // (convert_boolean_attn_mask) and the memory-efficient kernel keeps
      // that bias for backward: one [b, 1, s, s] per layer.
      Tid bias = kNone;
      if (bool_sdpa_mask() && mask_ != kNone && s_.attention == AttentionImpl::kSdpaEfficient)
        bias = g_.op(b * s * s, g_.elem(qc), {mask_}, {});
      Tid o = g_.op(b * heads * s * vd, g_.elem(qc), {qc, kc, vc, bias}, {qc, kc, vc, bias},
                    Component::kActivations, {{b * heads * s, kF32}}, 0, true);
      g_.release(qc);
      g_.release(kc);
      g_.release(vc);
      if (bias != kNone)
        g_.release(bias);
      if (flash_output_copy(a)) {
        // y.transpose(1, 2).reshape(B, T, C) of a [b, heads, s, d]-ordered
        // output: a copy (see flash_output_copy).
        Tid y = g_.op(g_.numel(o), g_.elem(o), {o}, {});
        g_.release(o);
        return y;
      }
      return o;  // already [b, s, heads, d] in memory: .contiguous() is free
    }
    // eager: repeat_kv copies K/V when heads are grouped.
    Tid kr = ke;
    Tid vr = v;
    g_.retain(kr);
    g_.retain(vr);
    if (heads != kv) {
      g_.release(kr);
      g_.release(vr);
      kr = g_.op(b * heads * s * d, g_.elem(ke), {ke}, {});
      vr = g_.op(b * heads * s * vd, g_.elem(v), {v}, {});
    }
    Tid masked;
    if (flavor == AttnFlavor::kAlibi) {
      // BLOOM: baddbmm(alibi, q, k^T) with beta and alpha, then + causal mask.
      Tid scores = batched_matmul(qe, kr, b * heads * s * s);
      masked = plain(scores, mask_);
      g_.release(scores);
    } else {
      // GPT-Neo, CodeGen and GPT-J compute QK^T from fp32 copies of q and k
      // (query.to(torch.float32) in _attn, modeling_gpt_neo.py /
      // modeling_codegen.py / modeling_gptj.py v4.57): in half precision the
      // matmul saves fp32 copies; under autocast they are cast back (transient).
      Tid qs = qe;
      Tid ks = kr;
      if (qk_in_fp32()) {
        qs = cast(qe, kF32);
        ks = cast(kr, kF32);
      } else {
        g_.retain(qs);
        g_.retain(ks);
      }
      Tid scores = batched_matmul(qs, ks, b * heads * s * s);
      g_.release(qs);
      g_.release(ks);
      Tid scaled = plain(scores);  // * scaling (in place for Falcon: counted the same)
      g_.release(scores);
      if (m_.attn_logit_softcapping > 0) {
        // Gemma-2 eager attention (HF eager_attention_forward, LitGPT): capped
        // before the mask.
        scaled = softcap(scaled);
      }
      masked = mask_ != kNone ? plain(scaled, mask_) : (g_.retain(scaled), scaled);
      g_.release(scaled);
    }
    if (old_mask_clamp()) {
      // attn_weights = torch.max(attn_weights, tensor(finfo.min)): maximum
      // saves both inputs, so every layer keeps its masked scores.
      Tid clamped = g_.op(g_.numel(masked), g_.elem(masked), {masked}, {masked});
      g_.release(masked);
      masked = clamped;
    }
    bool plain_softmax = flavor == AttnFlavor::kFalcon || (old_opt_softmax() && !fp16_compute());
    Tid probs = plain_softmax ? softmax_plain(masked) : softmax_fp32(masked);
    g_.release(masked);
    Tid probs_q = cast(probs, g_.elem(qe));
    g_.release(probs);
    Tid pd = dropout(probs_q, attention_dropout());
    g_.release(probs_q);
    Tid o = batched_matmul(pd, vr, b * heads * s * vd);
    g_.release(pd);
    g_.release(kr);
    g_.release(vr);
    Tid out = g_.op(g_.numel(o), g_.elem(o), {o}, {});  // transpose(1, 2).contiguous()
    g_.release(o);
    return out;
  }

  /// The dense MLP after its up projection: act, down projection, dropout
  /// (GPT-2, OPT and the GPT-style families). Consumes `up`.
  Tid mlp_tail(Tid up, const std::string& down_name, int64_t inner, const std::string& act_name) {
    Tid act = activation(up, act_name);
    g_.release(up);
    Tid down = linear(act, down_name, inner, m_.hidden_size);
    g_.release(act);
    Tid dd = dropout(down, hidden_dropout());
    g_.release(down);
    return dd;
  }

  /// LlamaMLP: down(act(gate(x)) * up(x)); Phi-3 fuses gate and up (chunked views).
  Tid gated_mlp(Tid x, const std::string& p, const MlpSpec& mlp, int64_t width = 0,
                const char* gate_name = "gate_proj", const char* up_name = "up_proj",
                const char* down_name = "down_proj") {
    int64_t h = m_.hidden_size;
    int64_t inter = width > 0 ? width : mlp.intermediate_size;
    if (find_param(p + "gate_up_proj.weight") != nullptr && litgpt_split_mlp()) {
      Tid f1 = litgpt_mlp_half(x, p + "gate_up_proj", 0, h, inter);
      Tid f2 = litgpt_mlp_half(x, p + "gate_up_proj", 1, h, inter);
      Tid act = activation(f1, mlp.activation);
      g_.release(f1);
      return product_down(act, f2, p + down_name, inter);
    }
    if (find_param(p + "gate_up_proj.weight") != nullptr) {
      Tid gu = linear(x, p + "gate_up_proj", h, 2 * inter);
      Tid gate = g_.op(g_.numel(gu) / 2, g_.elem(gu), {gu}, {});  // chunk view (grad: full size)
      if (liger_modules_) {
        // LigerPhi3SwiGLUMLP: gate_up_proj(x).chunk(2, -1) into the kernel.
        Tid up = g_.op(g_.numel(gu) / 2, g_.elem(gu), {gu}, {});
        g_.release(gu);
        return liger_glu_down(gate, up, p + down_name, inter);
      }
      Tid act = activation(gate, mlp.activation);
      g_.release(gate);
      Tid up = g_.op(g_.numel(gu) / 2, g_.elem(gu), {gu}, {});
      g_.release(gu);
      return product_down(up, act, p + down_name, inter);
    }
    if (liger_modules_ && std::string(gate_name) == "gate_proj") {
      // LigerSwiGLUMLP / LigerGEGLUMLP: down_proj(kernel(gate_proj(x), up_proj(x))).
      Tid gate = linear(x, p + gate_name, h, inter);
      Tid up = linear(x, p + up_name, h, inter);
      return liger_glu_down(gate, up, p + down_name, inter);
    }
    if (compiled_) {
      // act(gate) * up is one pointwise kernel fed by two matmul outputs the
      // partitioner may not recompute: it saves gate and up (for the
      // kernel's backward) and the product (down_proj's operand, which
      // backward materializes anyway) and recomputes act(gate).
      Tid gate = linear(x, p + gate_name, h, inter);
      Tid up = linear(x, p + up_name, h, inter);
      return product_down(gate, up, p + down_name, inter);
    }
    Tid gate = linear(x, p + gate_name, h, inter);
    Tid act = activation(gate, mlp.activation);
    g_.release(gate);
    Tid up = linear(x, p + up_name, h, inter);
    return product_down(act, up, p + down_name, inter);
  }

  /// Liger's fused linear cross-entropy (liger_kernel v0.6.4:
  /// transformers/model/loss_utils.py LigerForCausalLMLoss, then
  /// ops/fused_linear_cross_entropy.py). The labels are padded and shifted (an
  /// int64 copy); forward allocates grad_input (zeros_like the hidden states),
  /// grad_weight (zeros_like the head weight, when it is trained) and an fp32
  /// per-token loss, then walks the tokens in chunks of
  /// next_pow2(ceil(BT / ceil(V / H))) rows: logits of one chunk (the CE kernel
  /// turns them into their gradient in place), the chunk's grad_input as a
  /// temporary copied into place, and for grad_weight mm(grad_logits.t(),
  /// input).float() added into it (v0.6.2+, PR #830: a [V, H] product and its
  /// fp32 copy for a moment). Backward hands the two saved gradients over.
  Tid liger_linear_cross_entropy(Tid hn, const std::string& head, int64_t in) {
    g_.set_phase(Phase::kLoss);
    Param& w = param(head, ".weight");
    int64_t bt = g_.numel(hn) / in;
    int64_t v = m_.vocab_size;
    Tid padded = g_.leaf(s_.batch * (s_.seq + 1), kI64, Component::kLogitsLoss, false);
    Tid shifted = g_.leaf(tokens_, kI64, Component::kLogitsLoss, false);
    g_.release(padded);
    bool train_head = g_.requires_grad(w.id);
    Tid gi = g_.leaf(g_.numel(hn), g_.elem(hn), Component::kLogitsLoss, false);
    Tid gw = train_head && g_.requires_grad(hn)
                 ? g_.leaf(g_.numel(w.id), g_.elem(w.id), Component::kGradients, false)
                 : kNone;
    Tid loss_1d = g_.leaf(bt, kF32, Component::kLogitsLoss, false);
    Tid mask = g_.leaf(bt, 1, Component::kLogitsLoss, false);     // target != ignore_index
    Tid count = g_.leaf(1, kI64, Component::kLogitsLoss, false);  // .sum().item()
    g_.release(count);
    int64_t chunk = liger_chunk_rows(bt, v, in);
    int me = autocast_ ? ae_ : promote(g_.elem(hn), g_.elem(w.id));
    Tid wc = autocast_ ? autocast_weight(w) : (g_.retain(w.id), w.id);
    bool was = g_.grad_enabled();
    g_.set_grad_enabled(false);  // inside autograd.Function.forward
    for (int64_t start = 0; start < bt; start += chunk) {
      int64_t n = std::min(chunk, bt - start);
      // _input_chunk is a view; autocast casts it for each matmul.
      Tid xc = me != g_.elem(hn) ? g_.op(n * in, me, {hn}, {}, Component::kTemporaries) : kNone;
      Tid logits = g_.op(n * v, me, {}, {}, Component::kLogitsLoss);
      Tid gic = g_.op(n * in, me, {logits, wc}, {}, Component::kTemporaries);
      g_.release(gic);  // copied into grad_input[start:end]
      if (gw != kNone) {
        Tid xc2 = me != g_.elem(hn) ? g_.op(n * in, me, {hn}, {}, Component::kTemporaries) : kNone;
        Tid mm = g_.op(v * in, me, {logits}, {}, Component::kTemporaries);
        if (xc2 != kNone)
          g_.release(xc2);
        Tid f = me != kF32 ? g_.op(v * in, kF32, {mm}, {}, Component::kTemporaries) : kNone;
        g_.release(mm);
        if (f != kNone)
          g_.release(f);  // grad_weight += ... in place
      }
      g_.release(logits);
      if (xc != kNone)
        g_.release(xc);
    }
    g_.set_grad_enabled(was);
    g_.release(mask);
    g_.release(wc);
    g_.release(shifted);
    // loss = torch.sum(loss_1d), then / num_items_in_batch (the Trainer's).
    return liger_loss_node(hn, w.id, gi, gw, loss_1d);
  }

  /// LigerFusedLinearCrossEntropyFunction's chunk: next_pow2(ceil(BT /
  /// ceil(V / H))) rows, so that a chunk's logits are about BT x H.
  static int64_t liger_chunk_rows(int64_t bt, int64_t v, int64_t in) {
    int64_t inc = (v + in - 1) / in;
    int64_t rows = (bt + inc - 1) / inc;
    int64_t chunk = 1;
    while (chunk < rows)
      chunk *= 2;
    return chunk;
  }

  /// The fused cross-entropy's autograd node on input x and weight w, whose
  /// gradients gi and gw (kNone: none) forward computed; consumes the
  /// caller's references to gi, gw and the per-token loss.
  Tid liger_loss_node(Tid x, Tid w, Tid gi, Tid gw, Tid loss_1d) {
    Tid loss =
        g_.op(1, kF32, {x, w}, {g_.requires_grad(x) ? gi : kNone, gw}, Component::kLogitsLoss);
    g_.set_grad_source(loss, GradSource::kSaved);
    g_.release(loss_1d);
    g_.release(gi);
    if (gw != kNone)
      g_.release(gw);
    Tid scaled = plain(loss);
    g_.release(loss);
    return scaled;
  }

  /// Liger 0.1 (2024-08, as its examples/huggingface benchmark ran:
  /// src/liger_kernel/transformers/model/llama.py and
  /// ops/fused_linear_cross_entropy.py at 8d882141): lce_forward shifts with
  /// hidden_states[..., :-1, :].contiguous() (a copy) and
  /// labels[..., 1:].contiguous(); forward allocates grad_linear (zeros_like
  /// the weight, trained or not) and grad_input; per chunk the logits are
  /// upcast (.float()), turned into their gradient in place, cast back
  /// (.to(dtype)) and scaled (a third chunk), and addmm adds into
  /// grad_linear in place. Python rebinding keeps the previous chunk's
  /// logits and scaled gradient alive until the next matmul has returned.
  Tid liger_linear_cross_entropy_2024(Tid hn, const std::string& head, int64_t in) {
    g_.set_phase(Phase::kLoss);
    Param& w = param(head, ".weight");
    int64_t v = m_.vocab_size;
    int64_t bt = s_.batch * (s_.seq - 1);
    Tid x = g_.op(bt * in, g_.elem(hn), {hn}, {}, Component::kLogitsLoss);
    Tid shifted = g_.leaf(bt, kI64, Component::kLogitsLoss, false);
    Tid gw = g_.leaf(g_.numel(w.id), g_.elem(w.id), Component::kGradients, false);
    Tid gi = g_.leaf(g_.numel(x), g_.elem(x), Component::kLogitsLoss, false);
    Tid loss_1d = g_.leaf(bt, kF32, Component::kLogitsLoss, false);
    Tid count = g_.leaf(1, kI64, Component::kLogitsLoss, false);  // .sum().item()
    g_.release(count);
    int64_t chunk = liger_chunk_rows(bt, v, in);
    int me = autocast_ ? ae_ : promote(g_.elem(x), g_.elem(w.id));
    Tid wc = autocast_ ? autocast_weight(w) : (g_.retain(w.id), w.id);
    bool was = g_.grad_enabled();
    g_.set_grad_enabled(false);
    Tid prev_logits = kNone, prev_grad = kNone;
    for (int64_t start = 0; start < bt; start += chunk) {
      int64_t n = std::min(chunk, bt - start);
      Tid xc = me != g_.elem(x) ? g_.op(n * in, me, {x}, {}, Component::kTemporaries) : kNone;
      Tid mm = g_.op(n * v, me, {}, {}, Component::kLogitsLoss);
      if (xc != kNone)
        g_.release(xc);
      if (prev_logits != kNone)
        g_.release(prev_logits);
      Tid f32 = g_.op(n * v, kF32, {mm}, {}, Component::kLogitsLoss);
      g_.release(mm);
      Tid logits = g_.op(n * v, me, {f32}, {}, Component::kLogitsLoss);
      g_.release(f32);
      Tid grad = g_.op(n * v, me, {logits}, {}, Component::kLogitsLoss);
      if (prev_grad != kNone)
        g_.release(prev_grad);
      Tid gic = g_.op(n * in, me, {grad, wc}, {}, Component::kTemporaries);
      g_.release(gic);  // copied into grad_input[start:end]; addmm adds in place
      prev_logits = logits;
      prev_grad = grad;
    }
    if (prev_logits != kNone) {
      g_.release(prev_logits);
      g_.release(prev_grad);
    }
    g_.set_grad_enabled(was);
    g_.release(wc);
    g_.release(shifted);
    // LigerFusedLinearCrossEntropyFunction.apply(_input, linear, target):
    // grad_linear is saved even for a frozen head (freed with the node).
    Tid loss = liger_loss_node(x, w.id, gi, gw, loss_1d);
    g_.release(x);
    return loss;
  }

  /// Liger's LigerSiLUMulFunction / LigerGELUMulFunction (ops/swiglu.py,
  /// ops/geglu.py): c = act(a) * b in one kernel, saving a and b; backward
  /// writes da and db into them. Then down(c); consumes a and b.
  Tid liger_glu_down(Tid a, Tid b, const std::string& down_name, int64_t inter) {
    Tid c = g_.op(g_.numel(a), g_.elem(a), {a, b}, {a, b});
    g_.set_grad_source(c, GradSource::kSaved);
    g_.release(a);
    g_.release(b);
    Tid down = linear(c, down_name, inter, m_.hidden_size);
    g_.release(c);
    return down;
  }

  /// The gated MLP's tail: down(a * b); consumes a and b.
  Tid product_down(Tid a, Tid b, const std::string& down_name, int64_t inter) {
    Tid prod = mul(a, b);
    g_.release(a);
    g_.release(b);
    Tid down = linear(prod, down_name, inter, m_.hidden_size);
    g_.release(prod);
    return down;
  }

  /// Sparse MoE block (MixtralSparseMoeBlock, Qwen2MoeSparseMoeBlock,
  /// DeepseekV2MoE): router, fp32 softmax, top-k, then per expert a gather of
  /// its tokens, the expert MLP, a weighting and index_add_ into the output.
  /// Tokens are assumed spread evenly over the experts (T·k/E each).
  Tid moe_block(Tid x, const std::string& p, const MlpSpec& mlp) {
    if (m_.family == "mixtral" || m_.family == "qwen2_moe")
      return hf_sparse_moe(x, p, mlp);
    int64_t h = m_.hidden_size;
    int64_t experts = mlp.num_experts;
    int64_t k = mlp.experts_per_token;
    bool mixtral = m_.family == "mixtral";
    std::string q = p + (mixtral ? "block_sparse_moe." : "mlp.");
    Tid logits = find_param(q + "gate.bias") != nullptr || find_param(q + "gate.weight") != nullptr
                     ? linear(x, q + "gate", h, experts)
                     : kNone;
    Tid probs = softmax_fp32(logits);
    Tid topw = g_.op(tokens_ * k, kF32, {probs}, {});  // topk values (+ int64 indices)
    Tid topi = g_.leaf(tokens_ * k, kI64, Component::kActivations, false);
    g_.release(probs);
    Tid w = cast(topw, g_.elem(x));
    g_.release(topw);
    Tid mask = g_.leaf(experts * k * tokens_, kI64, Component::kTemporaries, false);  // one_hot
    Tid out = g_.leaf(g_.numel(x), g_.elem(x), Component::kActivations, false);       // zeros
    int64_t per_expert = (tokens_ * k + experts - 1) / experts;
    for (int64_t e = 0; e < experts; ++e) {
      std::string ep = q + "experts." + std::to_string(e) + ".";
      Tid state = g_.op(per_expert * h, g_.elem(x), {x}, {});  // hidden_states[top_x]
      MlpSpec one = mlp;
      Tid y = mixtral ? gated_mlp(state, ep, one, 0, "w1", "w3", "w2") : gated_mlp(state, ep, one);
      g_.release(state);
      Tid wy = mul(y, w);  // * routing_weights[top_x, idx, None]
      g_.release(y);
      Tid acc = g_.op(g_.numel(out), g_.elem(out), {out, wy}, {});  // index_add_ (in place)
      g_.release(out);
      g_.release(wy);
      out = acc;
    }
    g_.release(mask);
    g_.release(topi);
    g_.release(w);
    if (mlp.shared_intermediate_size > 0) {
      std::string sp = q + (m_.family == "qwen2_moe" ? "shared_expert." : "shared_experts.");
      Tid shared = gated_mlp(x, sp, mlp, mlp.shared_intermediate_size);
      if (mlp.shared_expert_gate)
        shared = gate_shared_expert(x, q, shared);
      Tid sum = plain(out, shared);
      g_.release(out);
      g_.release(shared);
      out = sum;
    }
    if (logits != kNone)
      g_.release(logits);
    return out;
  }

  /// Tokens routed to each expert. Routing depends on the data; only the
  /// total, tokens × top_k, is fixed. Every byte the block keeps for backward
  /// is linear in an expert's count, so the split moves only transients (the
  /// largest expert's MLP intermediates and, in backward, their gradients).
  /// The split is even, the remainder going to the first experts.
  std::vector<int64_t> expert_split(int64_t rows, int64_t experts, int64_t k) const {
    std::vector<int64_t> n(static_cast<size_t>(experts), rows * k / experts);
    for (int64_t e = 0; e < (rows * k) % experts; ++e)
      ++n[static_cast<size_t>(e)];
    return n;
  }

  /// MixtralSparseMoeBlock / Qwen2MoeSparseMoeBlock as of transformers v4.57
  /// (modeling_mixtral.py, modeling_qwen2_moe.py at 3553f0bc2301, after PR
  /// #40132): router linear; route_tokens_to_experts (softmax in fp32, topk,
  /// the in-place renormalisation `/=` of mixtral or of norm_topk_prob,
  /// casts); MixtralExperts / Qwen2MoeExperts.forward (zeros_like, one_hot,
  /// per expert hit: the mask row copy, torch.where, the token gather, the
  /// expert MLP, the routing-weight gather, the product and index_add_); the
  /// Qwen2-MoE shared expert (run first) with its sigmoid gate, added in place.
  /// Measured op by op on CPU (validation/data/cpu_tier.csv, tiny-mixtral and
  /// tiny-qwen2-moe rows).
  Tid hf_sparse_moe(Tid x, const std::string& p, const MlpSpec& mlp) {
    int64_t h = m_.hidden_size;
    int64_t experts = mlp.num_experts;
    int64_t k = mlp.experts_per_token;
    int64_t rows = g_.numel(x) / h;
    bool mixtral = m_.family == "mixtral";
    std::string q = p + (mixtral ? "block_sparse_moe." : "mlp.");
    int he = g_.elem(x);  // hidden_states' dtype
    Tid shared = kNone;
    if (!mixtral && mlp.shared_intermediate_size > 0)
      shared = gated_mlp(x, q + "shared_expert.", mlp, mlp.shared_intermediate_size);
    Tid logits = linear(x, q + "gate", h, experts);
    // check_model_inputs' OutputRecorder keeps every router's output (the
    // recomputation of a checkpointed layer is not recorded).
    if (m_.output_router_logits && g_.phase() != Phase::kBackward) {
      g_.retain(logits);
      router_logits_.push_back(logits);
    }
    // softmax(router_logits.float()) / softmax(router_logits, dtype=float):
    // the fp32 copy (when the logits are not fp32) dies after the softmax,
    // which saves its output.
    Tid probs = softmax_fp32(logits);
    // torch.topk: values (fp32) and int64 indices; TopkBackward saves the indices.
    Tid topi = g_.leaf(rows * k, kI64, Component::kActivations, false);
    Tid topw = g_.op(rows * k, kF32, {probs}, {topi});
    if (mixtral || mlp.norm_topk_prob) {
      // top_k_weights /= top_k_weights.sum(-1, keepdim=True): DivBackward0 of
      // the in-place division saves the divisor and a clone of the dividend.
      Tid sum = g_.op(rows, kF32, {topw}, {});
      Tid div = g_.inplace(topw, {sum}, {sum}, {{rows * k, kF32}});
      g_.release(sum);
      g_.release(topw);
      topw = div;
    }
    // mixtral: .to(router_logits.dtype) in route, then .to(hidden dtype) in
    // forward; qwen2_moe: .to(hidden dtype).
    Tid w_router = mixtral ? cast(topw, g_.elem(logits)) : kNone;
    Tid w = cast(mixtral ? w_router : topw, he);
    g_.release(topw);
    g_.release(probs);
    if (!mixtral) {
      g_.release(logits);  // qwen2_moe: router_logits is not used after routing
      logits = kNone;
    }
    Tid out = experts_forward(x, q, mlp, w, rows);
    g_.release(w);
    if (w_router != kNone)
      g_.release(w_router);
    if (shared != kNone) {
      Tid sg = gate_shared_expert(x, q, shared);
      // expert_output += shared_expert_output (in place; AddBackward saves nothing)
      Tid pc = g_.elem(sg) != g_.elem(out) ? promoted_copy(g_.numel(sg), g_.elem(out)) : kNone;
      Tid sum = g_.inplace(out, {sg}, {});
      release_if(pc);
      g_.release(sg);
      g_.release(out);
      out = sum;
    }
    g_.release(topi);
    if (logits != kNone)
      g_.release(logits);
    return out;
  }

  /// MixtralExperts.forward / Qwen2MoeExperts.forward (v4.57). Python names
  /// (idx/top_x, current_state, current_hidden_states) keep the previous
  /// expert's tensors until the next expert rebinds them.
  Tid experts_forward(Tid x, const std::string& q, const MlpSpec& mlp, Tid w, int64_t rows) {
    int64_t h = m_.hidden_size;
    int64_t experts = mlp.num_experts;
    int64_t k = mlp.experts_per_token;
    bool mixtral = m_.family == "mixtral";
    int he = g_.elem(x);
    Tid out = g_.leaf(rows * h, he, Component::kActivations, false);  // zeros_like
    // one_hot(top_k_index, num_experts) [rows, k, E] int64, permuted (a view)
    Tid mask = g_.leaf(rows * k * experts, kI64, Component::kTemporaries, false);
    std::vector<int64_t> counts = expert_split(rows, experts, k);
    int64_t hit = 0;
    for (int64_t c : counts)
      hit += c > 0 ? 1 : 0;
    // expert_hit = greater(expert_mask.sum((-1, -2)), 0).nonzero()
    Tid per = g_.leaf(experts, kI64, Component::kTemporaries, false);
    Tid gt = g_.leaf(experts, 1, Component::kTemporaries, false);
    g_.release(per);
    Tid hits = g_.leaf(hit, kI64, Component::kTemporaries, false);
    g_.release(gt);
    Tid prev_nz = kNone, prev_state = kNone, prev_wy = kNone;
    for (int64_t e = 0; e < experts; ++e) {
      int64_t n = counts[static_cast<size_t>(e)];
      if (n == 0)
        continue;
      std::string ep = q + "experts." + std::to_string(e) + ".";
      // expert_mask[expert_idx] (a [1, k, rows] copy), then torch.where:
      // nonzero [n, 2] int64, unbound into idx and top_x (views).
      Tid row = g_.leaf(k * rows, kI64, Component::kTemporaries, false);
      Tid nz = g_.leaf(2 * n, kI64, Component::kActivations, false);
      g_.release(row);
      if (prev_nz != kNone)
        g_.release(prev_nz);
      // hidden_states[None, top_x]: IndexBackward saves the indices.
      Tid state = g_.op(n * h, he, {x}, {nz});
      if (prev_state != kNone)
        g_.release(prev_state);
      Tid y = mixtral ? gated_mlp(state, ep, mlp, 0, "w1", "w3", "w2") : gated_mlp(state, ep, mlp);
      Tid ws = g_.op(n, g_.elem(w), {w}, {nz});  // top_k_weights[top_x, idx, None]
      Tid pc = g_.elem(y) != g_.elem(ws)
                   ? promoted_copy(g_.numel(y), promote(g_.elem(y), g_.elem(ws)))
                   : kNone;
      Tid wy = mul(y, ws);
      release_if(pc);
      g_.release(y);
      g_.release(ws);
      if (prev_wy != kNone)
        g_.release(prev_wy);
      // index_add_(0, top_x, current_hidden_states.to(dtype)): in place;
      // IndexAddBackward0 saves the index and the source.
      Tid src = cast(wy, he);
      Tid acc = g_.inplace(out, {src}, {nz, src});
      g_.release(src);
      g_.release(out);
      out = acc;
      prev_nz = nz;
      prev_state = state;
      prev_wy = wy;
    }
    for (Tid t : {prev_nz, prev_state, prev_wy}) {
      if (t != kNone)
        g_.release(t);
    }
    g_.release(hits);
    g_.release(mask);
    return out;
  }

  /// load_balancing_loss_func (modeling_mixtral.py / modeling_qwen2_moe.py,
  /// v4.57) with the attention mask the Trainer passes, added to the loss:
  /// `loss += router_aux_loss_coef * aux_loss`. Its locals live until it returns.
  Tid router_aux_loss(Tid loss) {
    int64_t experts = 0, k = 0;
    for (const LayerSpec& l : m_.layers) {
      if (l.mlp.is_moe()) {
        experts = l.mlp.num_experts;
        k = l.mlp.experts_per_token;
      }
    }
    int64_t n = 0;
    for (Tid t : router_logits_)
      n += g_.numel(t) / experts;
    Tid cat = g_.concat(router_logits_, g_.elem(router_logits_.front()));
    Tid probs = softmax_plain(cat);  // softmax without dtype; saves its output
    Tid topi = g_.leaf(n * k, kI64, Component::kLogitsLoss, false);
    Tid topv = g_.op(n * k, g_.elem(probs), {probs}, {topi});  // `_` keeps the values
    Tid onehot = g_.leaf(n * k * experts, kI64, Component::kLogitsLoss, false);
    // attention_mask[None, :, :, None, None].expand(...).reshape(-1, k, E): a copy
    Tid am = g_.leaf(n * k * experts, kI64, Component::kLogitsLoss, false);
    int pe = g_.elem(probs);
    Tid f = g_.leaf(n * k * experts, kF32, Component::kLogitsLoss, false);  // expert_mask.float()
    // A CPU binary op on mixed dtypes first copies the other operand to the
    // common dtype (TensorIterator promote_inputs_to_common_dtype); CUDA casts
    // inside the kernel.
    Tid t1 = promoted_copy(n * k * experts, kF32);
    Tid fm = g_.leaf(n * k * experts, kF32, Component::kLogitsLoss, false);
    release_if(t1);
    g_.release(f);
    Tid s1 = g_.leaf(k * experts, kF32, Component::kLogitsLoss, false);
    g_.release(fm);
    Tid s2 = g_.leaf(k * experts, kI64, Component::kLogitsLoss, false);
    Tid t2 = promoted_copy(k * experts, kF32);
    Tid tpe = g_.leaf(k * experts, kF32, Component::kLogitsLoss, false);
    release_if(t2);
    g_.release(s1);
    g_.release(s2);
    Tid rm = g_.leaf(n * experts, kI64, Component::kLogitsLoss, false);  // [n, E] mask copy
    Tid t3 = promoted_copy(n * experts, pe);
    Tid pm = g_.op(n * experts, pe, {probs}, {rm});  // MulBackward saves the mask
    release_if(t3);
    Tid ps = g_.op(experts, pe, {pm}, {});
    g_.release(pm);
    Tid ms = g_.leaf(experts, kI64, Component::kLogitsLoss, false);
    Tid t4 = promoted_copy(experts, pe);
    Tid rpe = g_.op(experts, pe, {ps, ms}, {ms});  // DivBackward saves the divisor
    release_if(t4);
    g_.release(ps);
    g_.release(ms);
    Tid t5 = pe != kF32 ? promoted_copy(experts, kF32) : kNone;
    Tid prod = g_.op(k * experts, kF32, {rpe}, {tpe});
    release_if(t5);
    Tid total = g_.op(1, kF32, {prod}, {});
    g_.release(prod);
    Tid aux = g_.op(1, kF32, {total}, {});  // * num_experts
    g_.release(total);
    for (Tid t : {cat, probs, topi, topv, onehot, am, tpe, rm, rpe})
      g_.release(t);
    Tid scaled = g_.op(1, kF32, {aux}, {});  // router_aux_loss_coef * aux_loss
    g_.release(aux);
    Tid sum = g_.inplace(loss, {scaled}, {});  // loss += ...
    g_.release(scaled);
    g_.release(loss);
    return sum;
  }

  /// The common-dtype copy of one operand that a CPU binary op on mixed
  /// dtypes makes (none on CUDA).
  Tid promoted_copy(int64_t numel, int elem) {
    return cuda_ ? kNone : g_.leaf(numel, elem, Component::kTemporaries, false);
  }
  void release_if(Tid t) {
    if (t != kNone)
      g_.release(t);
  }

  void release_router_logits() {
    for (Tid t : router_logits_)
      g_.release(t);
    router_logits_.clear();
  }

  // ------------------------------------------------------------ model
  Tid forward(Tid ids);
  Tid generic_layer(Tid x, int i);
  Tid llama_layer(Tid x, int i);
  Tid llama_attention(Tid x, int i, const LayerSpec& l);
  Tid mla_attention(Tid x, const std::string& p, const AttentionSpec& a);
  Tid gpt2_layer(Tid x, int i);
  Tid opt_layer(Tid x, int i);
  Tid causal_lm_loss(Tid logits, Tid labels);
  /// The Hugging Face model computes its loss in its own forward: releases
  /// before each family moved to ForCausalLMLoss (loss_function_since).
  bool in_model_loss() const;
  /// Consumes *logits and leaves there what the model output holds.
  Tid in_model_causal_lm_loss(Tid* logits);
  /// The dtype of the hidden states the head ran on, where the head's output
  /// is upcast (codegen, gptj, gpt_neo); gpt_neo casts its logits back to it.
  int head_hidden_elem_ = kF32;
  /// Whether an unchunked loss runs compiled. torchtune's training.compile_loss
  /// (training/_compile.py, 1814feb to 2026-04) compiles
  /// CEWithChunkedOutputLoss.compute_cross_entropy in place but wraps any
  /// other loss in a new module that it returns, and only
  /// lora_finetune_single_device keeps it (self._loss_fn =
  /// training.compile_loss(...)); full_finetune_single_device,
  /// full_finetune_distributed and lora_finetune_distributed drop the return
  /// value, so their nn.CrossEntropyLoss runs eagerly.
  bool compiled_whole_loss() const {
    if (!s_.fw.compile_loss)
      return false;
    if (s_.framework != Framework::kTorchtune)
      return true;
    bool distributed = s_.parallel.method != Method::kSingle || s_.parallel.dp > 1;
    return s_.finetune != FinetuneMode::kFull && !distributed;
  }
  void add_lora();
  /// A trainable adapter pair for an [out, in] weight of `layer`: lora_A
  /// [r, in] and lora_B [out, r].
  Lora new_lora(int64_t in, int64_t out, int elem, int layer);

  Graph& g_;
  const ModelSpec& m_;
  const TrainingSetup& s_;
  const RankPlan& r_;
  TraceResult* out_;
  int store_elem_ = kF32;              // dtype of the stored (sharded) parameters
  int base_store_elem_ = kF32;         // dtype of the stored frozen base (QLoRA: the quant storage)
  std::vector<int64_t> layer_packed_;  // sharded QLoRA: packed 4-bit bytes per layer + 1
  int grad_store_elem_ = kF32;         // dtype of reduced gradient shards
  std::vector<int> param_layer_;       // by Tid: each parameter's layer (-1: outside the layers)
  std::vector<int64_t> layer_numel_;   // per layer + 1 (slot 0: root unit)
  std::vector<int64_t> unit_max_bytes_;     // per layer + 1: the largest sharded parameter, whole
  std::vector<int64_t> layer_shard_numel_;  // FSDP2: one rank's padded shards per unit
  std::unordered_map<Tid, int64_t> param_rows_;  // sharded parameters: dim 0
  Tid rs_pending_ = kNone;                       // FSDP2: the last reduce_scatter_input
  std::vector<Tid> flat_grad_;                   // FSDP1: unsharded flat gradient per unit
  bool sync_ = true;                             // this micro-batch reduces gradients
  std::vector<int64_t> trainable_numel_;         // trainable elements per layer + 1, sharded
  std::vector<Tid> gathered_;
  std::vector<Tid> param_shard_;  ///< per unit, when gather_frees_shard
  // Gemini chunks (RankPlan::gemini_chunks).
  bool chunked_ = false;
  std::vector<std::pair<Tid, int>> chunk_order_;  ///< chunked tensors: order, forward position
  std::vector<std::pair<int64_t, bool>> chunk_search_;  ///< every tensor searched: numel, frozen
  GeminiChunkLayout chunks_;
  std::vector<int> chunk_key_;  ///< per chunk: first forward position (gather and release)
  std::vector<Tid> chunk_gathered_;
  std::vector<Tid> chunk_shard_;
  std::unordered_map<Tid, int64_t> chunk_state_;  ///< elements in rank 0's shard
  std::vector<Tid> grad_shards_;
  Style style_ = Style::kLlama;
  Names names_;
  int pe_ = kF32;
  int ae_ = kF32;
  bool autocast_ = false;
  /// Inside a decoder layer that torchtune compiled (fw.compile): inductor
  /// fuses the norms, rotary embedding and gated activation, and its
  /// partitioner keeps only what backward must read (docs/frameworks.md).
  bool compiled_ = false;
  /// Liger kernels patched into the model (fw.liger on a model type Liger
  /// supports): its RMSNorm, RoPE, SwiGLU/GeGLU and fused linear
  /// cross-entropy replace the eager ops (docs/frameworks.md, "Liger").
  bool liger_ = false;
  /// Liger's module classes (RMSNorm, SwiGLU/GeGLU MLP) replace the model's
  /// (fw.liger_modules); RoPE and the fused cross-entropy are patched either way.
  bool liger_modules_ = false;
  /// Liger RoPE on q/k that are slices of a fused qkv projection (Phi-3):
  /// transpose(1, 2).contiguous() copies them before the in-place kernel.
  bool liger_rope_copies_ = false;
  /// The loss Liger's fused linear cross-entropy computed in the head.
  Tid liger_loss_ = kNone;
  /// The model has an output head of its own (not tied to the embedding).
  bool untied_head_ = false;
  bool cuda_ = true;
  int64_t tokens_ = 0;
  int sp_ = 1;             ///< sequence-parallel degree (RankPlan::sequence_parallel)
  Tid sp_buffer_ = kNone;  ///< Megatron's GlobalMemoryBuffer for gathered inputs
  int64_t sp_buffer_bytes_ = 0;
  std::unordered_map<std::string, Param> params_;
  std::string name_;  // param()'s reused name buffer
  std::unordered_map<Tid, Param> lora_params_;
  std::map<std::string, Lora> lora_;
  std::vector<Tid> trainable_;
  std::vector<Param*> cache_;
  // The layers of the forward being traced: [fwd_first_, fwd_end_), embedding
  // first when fwd_embed_, final norm, head and loss after when fwd_head_
  // (the rank's whole stage, or one model chunk under the interleaved schedule).
  int fwd_first_ = 0;
  int fwd_end_ = 0;
  bool fwd_embed_ = true;
  bool fwd_head_ = true;
  // Per-forward tensors shared by all layers.
  Tid cos_ = kNone, sin_ = kNone, mask_ = kNone, alibi_ = kNone;
  Tid mask2_ = kNone;  // the sliding-window mask beside mask_ (Gemma-2 eager, Qwen2-MoE)
  std::vector<Tid> router_logits_;  // output_router_logits: every router's output
  bool use_cache_ = false;
  std::vector<Tid> cache_kv_;      // DynamicCache contents of this forward
  std::vector<Tid> model_locals_;  // see release_model_locals()
  std::vector<Tid> graph_held_;    // leaves the autograd graph keeps until backward ends
  Tid head_input_ = kNone;         // the final hidden states, bound until the loss is computed
  bool view_cast_ = false;         // base_linear runs Falcon's FalconLinear
  std::vector<Tid> opt_state_;
  Tid workspace_ = kNone;
  // Framework profiles (trace/framework.cc).
  std::vector<Tid> logit_chunks_;  // this forward's logits slices
  std::vector<Tid> kept_logits_;   // LitGPT: the previous step's slices
  std::unordered_set<Tid> stepped_in_bwd_;
  bool nonreentrant_forward_ = false;  // inside a non-reentrant checkpoint's forward
  std::vector<Tid> bnb_ctx_;           // QLoRA: inputs bnb keeps on this step's graph
  std::vector<Tid> bnb_prev_;          // and on the previous step's graph
};

// ------------------------------------------------------------------ load
// A quantized base weight as the framework builds or loads it (trace/load.h).
//
// torchtune (recipes/lora_finetune_single_device.py _setup_model, torchtune
// commit bd2a0fc7c): config.instantiate runs under
// training.set_default_dtype(bf16) and the device, so each LoRALinear
// (torchtune/modules/peft/lora.py) and FrozenNF4Linear
// (modules/low_precision/nf4_linear.py) makes its bf16 nn.Linear weight on the
// GPU and to_nf4 quantizes it; the bf16 weight dies with the nn.Linear.
// LitGPT (litgpt/finetune/lora.py, commit 26857050): the model is built under
// fabric.init_module on the GPU; Fabric's BitsandbytesPrecision swaps
// nn.Linear for _Linear4bit, whose __init__ quantizes the bf16 weight at once
// (lightning src/lightning/fabric/plugins/precision/bitsandbytes.py, commit
// 7f0c3436cd: weight.to(half), quantize_4bit, _replace_param).
// Hugging Face (transformers Bnb4BitHfQuantizer.create_quantized_param,
// bitsandbytes Params4bit._quantize): from_pretrained hands each checkpoint
// tensor, in the 16-bit load dtype, to the GPU and quantizes it there, one
// tensor at a time.
Nf4Options Program::nf4_options() const {
  Nf4Options o;
  if (s_.fw.nf4_legacy)
    o.chunk = 0;  // the whole tensor in one pass
  return o;
}

Tid Program::nf4_param(int64_t numel, int64_t bytes) {
  // Legacy NF4Tensor also kept a quantization_factor of n/32 bytes.
  int64_t legacy = s_.fw.nf4_legacy ? numel / 32 : 0;
  return g_.leaf(bytes + legacy, 1, Component::kParameters, false);
}

Tid Program::load_quantized(const TensorSpec& t, int64_t bytes) {
  auto param = [&] { return g_.leaf(bytes, 1, Component::kParameters, false); };
  loaded_.push_back({t.name, t.layer, t.numel, bytes});
  Tid weight = g_.buffer(t.numel * 2, Component::kWeightCopies);
  Tid id = kNone;
  switch (s_.framework) {
    case Framework::kTorchtune:
      id = nf4_from_tensor(g_, t.numel, nf4_options(), [&] { return nf4_param(t.numel, bytes); });
      break;
    case Framework::kLitgpt: {
      Tid half = g_.buffer(t.numel * 2, Component::kWeightCopies);  // weight.to(torch.half)
      id = bnb_quantize_4bit(g_, t.numel, s_.quant, param);
      g_.release(half);
      break;
    }
    case Framework::kHf:
      id = bnb_quantize_4bit(g_, t.numel, s_.quant, param);
      break;
  }
  g_.release(weight);
  return id;
}

// What happens to the quantized weights once the model is built.
void Program::finish_load() {
  if (loaded_.empty())
    return;
  if (s_.framework == Framework::kTorchtune) {
    // model.load_state_dict(base_model_state_dict, strict=False): the
    // checkpointer has loaded the state dict to the CPU (safe_torch_load:
    // torch.load(map_location="cpu", mmap=True); safetensors' load_file), so
    // plain parameters are copied in from the CPU; torchao's NF4Tensor copy_
    // (torchao nf4tensor.py copy_, commit 36027d82d) moves each bf16 tensor to
    // the GPU, quantizes it, and copies the pieces into the parameter's own.
    Nf4Options o = nf4_options();
    if (s_.fw.nf4_legacy) {
      // 5cbc1967b / 0217d44c2: the state_dict hook (below) ran first, then
      // torchtune's own inplace_copy quantized each CPU weight on the GPU and
      // replaced the parameter's NF4 pieces with the new ones.
      for (const Loaded& l : loaded_)
        g_.release(nf4_original_weight(g_, l.numel, o));
      for (const Loaded& l : loaded_) {
        Tid src = g_.buffer(l.numel * 2, Component::kWeightCopies);
        Param& p = params_[l.name];
        Tid old = p.id;
        p.id = nf4_from_tensor(g_, l.numel, o, [&] { return nf4_param(l.numel, l.bytes); });
        g_.release(src);
        g_.release(old);
        forget_param_layer(old);
        set_param_layer(p.id, l.layer);
      }
      return;
    }
    for (const Loaded& l : loaded_) {
      Tid src = g_.buffer(l.numel * 2, Component::kWeightCopies);  // copy_in.to(device)
      Tid nf4 = nf4_from_tensor(g_, l.numel, o,
                                [&] { return g_.buffer(l.bytes, Component::kTemporaries); });
      g_.release(src);
      g_.release(nf4);
    }
    // validate_missing_and_unexpected_for_lora(model.state_dict().keys()):
    // the QLoRA builders register reparametrize_as_dtype_state_dict_post_hook
    // (torchtune/modules/common_utils.py), which turns every NF4 weight back
    // into bf16 on the GPU and offloads it to the CPU, one at a time.
    for (const Loaded& l : loaded_)
      g_.release(nf4_original_weight(g_, l.numel, o));
  } else if (s_.framework == Framework::kLitgpt) {
    // load_checkpoint (litgpt/utils.py): model.load_state_dict of the lazily
    // loaded CPU state dict; _Linear4bit's _quantize_on_load_hook quantizes
    // each weight again (weight.to(cuda, half) converts on the CPU side of the
    // copy), and _replace_param swaps param.data, freeing the build's 4-bit data.
    for (const Loaded& l : loaded_) {
      Tid half = g_.buffer(l.numel * 2, Component::kWeightCopies);
      Param& p = params_[l.name];
      Tid old = p.id;
      p.id = bnb_quantize_4bit(g_, l.numel, s_.quant,
                               [&] { return g_.leaf(l.bytes, 1, Component::kParameters, false); });
      g_.release(half);
      g_.release(old);
      forget_param_layer(old);
      set_param_layer(p.id, l.layer);
    }
  }
  // Hugging Face: quantized as each tensor was loaded (load_quantized).
}

// What a rank of a data-parallel layout adds to the single-GPU setup.
// torch/nn/parallel/distributed.py + reducer.cpp (DDP buckets),
// deepspeed/runtime/zero/stage_1_and_2.py and stage3.py (partitions, ipg
// bucket, fp32 master partition), torch/distributed/fsdp (flat shards).
void Program::setup_distributed() {
  if (!r_.distributed())
    return;
  auto slots = static_cast<size_t>(m_.num_layers + 1 + (r_.embedding_units ? 2 : 0));
  layer_numel_.resize(slots, 0);
  unit_max_bytes_.resize(std::max(unit_max_bytes_.size(), slots), 0);
  layer_packed_.resize(slots, 0);
  layer_shard_numel_.resize(slots, 0);
  trainable_numel_.assign(slots, 0);
  gathered_.assign(slots, kNone);
  param_shard_.assign(slots, kNone);
  grad_shards_.assign(slots, kNone);
  flat_grad_.assign(slots, kNone);
  int64_t trainable_bytes = 0;
  int64_t trainable_numel = 0;
  for (Tid p : trainable_) {
    auto slot = static_cast<size_t>(param_layer(p) + 1);
    trainable_numel_[slot] += tensor_shard(p, r_.grad_shards);
    trainable_bytes += g_.bytes(p);
    trainable_numel += g_.numel(p);
  }
  // Reduced gradient shards: fp32 under FSDP mixed precision (the shard's
  // dtype), the weights' dtype otherwise.
  grad_store_elem_ = r_.sharded_params() ? store_elem_ : pe_;
  if (r_.gemini_chunks)
    setup_chunks();
  if (r_.sharded_params() && !r_.offload_params && !chunked_) {
    // Each unit's flat shard, in the stored dtype.
    for (size_t slot = 0; slot < slots; ++slot) {
      param_shard_[slot] = param_shard(slot);
    }
  }
  if (r_.ddp_buckets) {
    // Reducer buckets: one flat tensor per bucket, together the size of every
    // trainable gradient, kept for the life of the wrapper.
    g_.buffer(trainable_bytes, Component::kGradients);
  }
  if (r_.reduce_bucket_bytes > 0 && r_.ipg_buffers_per_backward == 0) {
    g_.buffer(r_.reduce_bucket_whole ? r_.reduce_bucket_bytes
                                     : std::min(r_.reduce_bucket_bytes, trainable_numel * pe_),
              Component::kGradients);
  }
  if (r_.master_fp32 && !r_.offload_optimizer) {
    int64_t master = 0;
    for (Tid p : trainable_)
      master += shard(g_.numel(p), r_.state_shards);
    if (chunked_)
      master = chunks_.shard_numel();  // the fp32 chunks' shards, padding included
    g_.buffer(master * kF32, Component::kMasterWeights);
  }
  g_.set_layer_hook([this](int from, int to) { on_backward_layer(from, to); });
}

// ColossalAI Gemini (d4fb7bf gemini_ddp.py _init_chunks): every tensor that
// requires grad goes into an fp16 chunk and a paired fp32 chunk of the same
// layout (trace/gemini_chunks.h); a rank stores one shard of each chunk.
// Frozen tensors (--freeze-layers, --freeze-embeddings) stay outside the
// chunks, whole in fp16 (setup), with no gradient, master copy or optimizer
// state, but the chunk-size search still counts them.
void Program::setup_chunks() {
  if (s_.finetune != FinetuneMode::kFull) {
    // booster/plugin/gemini_plugin.py: support_lora() is False and
    // enable_lora raises NotImplementedError (ColossalAI 14b0d4c7e, April
    // 2024, through 4f9953be3); d4fb7bf has no LoRA API.
    throw Error("--lora-rank", "",
                "ColossalAI's GeminiPlugin does not support LoRA (support_lora() is False, "
                "enable_lora raises NotImplementedError); use ddp, zero or fsdp");
  }
  std::vector<int64_t> numel;
  std::vector<bool> frozen;
  numel.reserve(chunk_search_.size());
  frozen.reserve(chunk_search_.size());
  int64_t frozen_numel = 0;
  for (const auto& [n, f] : chunk_search_) {
    numel.push_back(n);
    frozen.push_back(f);
    if (f)
      frozen_numel += n;
  }
  chunks_ = gemini_chunk_layout(numel, frozen, r_.param_shards, r_.gemini);
  if (frozen_numel > 0) {
    out_->notes.push_back("Gemini: " + std::to_string(frozen_numel) +
                          " frozen elements kept whole in 16 bits on every rank, outside the "
                          "chunks (ddp-ignored), but counted by the chunk-size search");
  }
  if (chunks_.chunks.empty())
    return;
  chunked_ = true;
  size_t n = chunks_.chunks.size();
  chunk_key_.assign(n, std::numeric_limits<int>::max());
  chunk_gathered_.assign(n, kNone);
  chunk_shard_.assign(n, kNone);
  for (size_t k = 0; k < chunk_order_.size(); ++k) {
    int& key = chunk_key_[chunks_.chunk_of[k]];
    key = std::min(key, chunk_order_[k].second);
    chunk_state_[chunk_order_[k].first] = chunks_.in_shard(k, 0);
  }
  int64_t padding = chunks_.padded_numel();
  for (int64_t e : chunks_.numel)
    padding -= e;
  if (!r_.sharded_params()) {
    // dp 1: the tensors are whole on the device; their chunks add the padding.
    if (padding > 0)
      g_.buffer(padding * pe_, Component::kParameters);
  } else if (chunks_.keep_gathered) {
    // Fewer elements than min_chunk_size: one chunk, always gathered.
    g_.buffer(chunks_.padded_numel() * pe_, Component::kParameters);
  } else if (!r_.offload_params) {
    for (size_t c = 0; c < n; ++c)
      chunk_shard_[c] = g_.buffer(chunks_.chunks[c].shard * store_elem_, Component::kParameters);
  }
  out_->notes.push_back("Gemini chunks: " + std::to_string(n) + " of " +
                        std::to_string(chunks_.chunk_size) + " elements (searched), " +
                        std::to_string(padding) + " elements of padding");
}

// PEFT's default targets per model_type (peft/utils/constants.py
// TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING).
std::vector<std::string> default_lora_targets(const std::string& family) {
  if (family == "gpt2" || family == "gpt_bigcode")
    return {"c_attn"};
  if (family == "bloom" || family == "gpt_neox" || family == "falcon")
    return {"query_key_value"};
  if (family == "phi3")
    return {"qkv_proj"};  // not PEFT's: it has no phi3 entry (get_peft_model asks for targets)
  if (family == "codegen")
    return {"qkv_proj"};
  if (family == "phi")
    return {"q_proj", "v_proj", "fc1", "fc2"};
  return {"q_proj", "v_proj"};
}

Lora Program::new_lora(int64_t in, int64_t out, int elem, int layer) {
  Lora l;
  l.rank = s_.lora.rank;
  l.elem = elem;
  if (s_.framework == Framework::kTorchtune && r_.per_param_shards && r_.sharded_params()) {
    // lora_finetune_distributed: fully_shard on each layer takes its
    // LoRALinear's lora_a [r, in] and lora_b [out, r] with the rest (FSDP2
    // DTensors, dim 0 padded), gathered with the layer's unit.
    l.a = sharded_param(layer, l.rank * in, l.rank, true, elem);
    l.b = sharded_param(layer, out * l.rank, out, true, elem);
  } else {
    l.a = g_.leaf(l.rank * in, elem, Component::kParameters, true);
    l.b = g_.leaf(out * l.rank, elem, Component::kParameters, true);
  }
  lora_params_[l.a] = Param{l.a, true, kNone};
  lora_params_[l.b] = Param{l.b, true, kNone};
  trainable_.push_back(l.a);
  trainable_.push_back(l.b);
  set_param_layer(l.a, layer);
  set_param_layer(l.b, layer);
  out_->params += l.rank * (in + out);
  out_->trainable_params += l.rank * (in + out);
  return l;
}

void Program::add_lora() {
  std::vector<std::string> targets =
      s_.lora.targets.empty() ? default_lora_targets(m_.family) : s_.lora.targets;
  if (s_.lora.rank <= 0)
    throw Error("--lora-rank", "", "expected a positive rank");
  // PEFT (get_peft_model, autocast_adapter_dtype=True) keeps adapters in fp32
  // when the base weights are fp16/bf16; autocast_adapter_dtype=False keeps
  // the base dtype.
  int elem = s_.lora.adapter_fp32 ? kF32 : pe_;
  bool conv1d = m_.family == "gpt2";
  // PEFT's target_modules="all-linear": every linear layer of the decoder but
  // the output layer (peft/tuners/tuners_utils.py _maybe_include_all_linear_layers).
  bool all_linear = targets.size() == 1 && targets.front() == "all-linear";
  size_t matched = 0;
  for (const TensorSpec& t : m_.tensors) {
    const std::string suffix = ".weight";
    bool head = t.role == TensorRole::kLmHead;  // torchtune apply_lora_to_output, LitGPT lora_head
    if ((t.layer < 0 && !head) || t.shape.size() != 2 || t.name.size() < suffix.size() ||
        t.name.compare(t.name.size() - suffix.size(), suffix.size(), suffix) != 0) {
      continue;
    }
    std::string prefix = t.name.substr(0, t.name.size() - suffix.size());
    std::string module = prefix.substr(prefix.rfind('.') + 1);
    if (all_linear ? head : std::find(targets.begin(), targets.end(), module) == targets.end())
      continue;
    int64_t out = conv1d ? t.shape[1] : t.shape[0];
    int64_t in = conv1d ? t.shape[0] : t.shape[1];
    if (module == "gate_up_proj" && litgpt_split_mlp()) {
      // litgpt/lora.py LLaMAMLP: fc_1 and fc_2 are LoRALinear each (lora_A
      // [r, in] and lora_B [out / 2, r] apiece).
      for (const char* part : {".fc_1", ".fc_2"})
        lora_[prefix + part] = new_lora(in, out / 2, elem, t.layer);
      ++matched;
      continue;
    }
    lora_[prefix] = new_lora(in, out, elem, r_.per_param_shards ? unit_of(t) : t.layer);
    ++matched;
  }
  if (matched == 0) {
    throw Error("--lora-targets", "", "no module of this model matches the LoRA targets");
  }
}

Tid Program::forward(Tid ids) {
  int64_t h = m_.hidden_size;
  int64_t b = s_.batch;
  int64_t s = s_.seq;
  std::string embed_name = style_ == Style::kGpt2      ? "transformer.wte.weight"
                           : style_ == Style::kOpt     ? "model.decoder.embed_tokens.weight"
                           : style_ == Style::kGeneric ? names_.embed
                                                       : "model.embed_tokens.weight";
  int64_t ew = m_.embedding_size;
  bool first = fwd_embed_;
  Tid x;
  if (first) {
    // nn.Embedding saves the indices; it is not an autocast op.
    gather_unit(embed_unit());
    x = g_.op(tokens_ * ew, pe_, {param(embed_name).id, ids}, {ids});
    reshard_unit(embed_unit());
    x = sp_scatter(x);
  } else {
    // The hidden states received from the previous stage (they need a gradient).
    x = g_.leaf(tokens_ * h / sp_, pe_, Component::kActivations, true);
  }
  bool lora_ckpt = s_.finetune != FinetuneMode::kFull &&
                   (s_.checkpointing != CheckpointMode::kOff || s_.lora_input_grads);
  if (lora_ckpt && first) {
    // PEFT/Trainer enable_input_require_grads(): a forward hook calls
    // output.requires_grad_(True) on the embedding output so reentrant
    // checkpoints propagate gradients to the adapters. It becomes a leaf
    // whose AccumulateGrad node (reached from the graph) holds it, and its
    // .grad, until the graph dies after backward, whatever consumes it (a
    // position-embedding add that saves nothing: GPT-2, OPT, GPT-Neo).
    g_.mark_requires_grad(x);
    if (s_.framework == Framework::kHf && r_.in_flight == 1) {
      // A leaf that requires grad is held by its AccumulateGrad node (and
      // with it its .grad) until the graph is freed after backward, whatever
      // names the model's forward drops (Gemma's product, GPT-2's position
      // add); a pipeline stage's forwards in flight are not handled here,
      // nor torchtune and LitGPT, which have no PEFT hook (the flag above
      // lets the trace record their checkpoints).
      g_.retain(x);
      graph_held_.push_back(x);
    }
  }
  if (style_ == Style::kLlama) {
    if (first && (m_.family == "gemma" || m_.family == "gemma2")) {
      // hidden_states * normalizer, sqrt(hidden_size) as a 0-dim tensor of the
      // embeddings' dtype, which the product saves. In GemmaModel.forward /
      // Gemma2Model.forward (v4.57) both `inputs_embeds` and `normalizer`
      // stay bound until the model's forward returns (after the final norm);
      // LitGPT and torchtune rebind x to the product.
      Tid n = g_.leaf(1, g_.elem(x), Component::kInputs, false);
      Tid y = mul(x, n);
      model_locals_.push_back(n);
      if (s_.framework == Framework::kHf)
        model_locals_.push_back(x);
      else
        g_.release(x);
      x = y;
    }
    // Rotary cos/sin [1, s, rotary dim] in the embeddings' dtype: with partial
    // rotary (Phi-3, StableLM) the rotary embedding's dim is
    // int(head_dim * partial_rotary_factor) (modeling_rope_utils.py v4.57,
    // _compute_default_rope_parameters).
    const AttentionSpec& a0 = m_.layers.front().attention;
    int64_t d = a0.head_dim;
    if (a0.kind == AttentionKind::kStandard && a0.rotary_fraction > 0 && a0.rotary_fraction < 1)
      d = static_cast<int64_t>(static_cast<double>(a0.head_dim) * a0.rotary_fraction);
    cos_ = g_.leaf(s * d, g_.elem(x), Component::kInputs, false);
    sin_ = g_.leaf(s * d, g_.elem(x), Component::kInputs, false);
    if (bool_sdpa_mask()) {
      // masking_utils.sdpa_mask: the bool [b, 1, s, s] itself.
      mask_ = g_.leaf(b * s * s, 1, Component::kInputs, false);
    } else if (s_.attention == AttentionImpl::kEager || hf_sdpa_mask()) {
      // masking_utils eager mask: bool [b, 1, s, s], then float in the dtype
      // (what SDPA received for a padded batch before v4.53).
      Tid mb = g_.leaf(b * s * s, 1, Component::kInputs, false);
      mask_ = g_.leaf(b * s * s, g_.elem(x), Component::kInputs, false);
      g_.release(mb);
      if (m_.family == "gemma2" && s_.framework == Framework::kHf &&
          s_.attention == AttentionImpl::kEager) {
        // Gemma2Model.forward (v4.57) builds both create_causal_mask and
        // create_sliding_window_causal_mask whatever the layer types; the
        // window changes the values, not the [b, 1, s, s] shape.
        Tid mb2 = g_.leaf(b * s * s, 1, Component::kInputs, false);
        mask2_ = g_.leaf(b * s * s, g_.elem(x), Component::kInputs, false);
        g_.release(mb2);
      }
    }
    if (m_.both_masks && s_.framework == Framework::kHf && s_.transformers_version >= 457) {
      // Qwen2MoeModel.forward (v4.57) makes create_sliding_window_causal_mask
      // too. Without use_sliding_window its window is 0, which SDPA cannot
      // skip: a bool [b, 1, s, s] even when is_causal serves the full mask.
      bool sliding = false;
      for (const LayerSpec& l : m_.layers)
        sliding = sliding || l.attention.sliding_window > 0;
      if (mask_ != kNone) {
        Tid mb = g_.leaf(b * s * s, 1, Component::kInputs, false);
        mask2_ = bool_sdpa_mask() ? mb : g_.leaf(b * s * s, g_.elem(x), Component::kInputs, false);
        if (mask2_ != mb)
          g_.release(mb);
      } else if (!sliding) {
        mask2_ = g_.leaf(b * s * s, 1, Component::kInputs, false);
      }
    }
  } else if (style_ == Style::kGpt2 && first) {
    Tid pos = g_.op(s * h, pe_, {param("transformer.wpe.weight").id}, {});
    Tid y = plain(x, pos);
    g_.release(x);
    g_.release(pos);
    Tid z = dropout(y, embedding_dropout());
    g_.release(y);
    x = z;
  } else if (style_ == Style::kGpt2) {
    // a later pipeline stage of GPT-2: nothing but the layers
  } else if (style_ == Style::kGeneric) {
    if (first && m_.family == "biogpt") {  // inputs_embeds * embed_scale
      Tid y = plain(x);
      g_.release(x);
      x = y;
    }
    if (first && !names_.position.empty()) {
      Tid pos =
          g_.op(m_.family == "biogpt" ? tokens_ * h : s * h, pe_, {param(names_.position).id}, {});
      Tid y = plain(x, pos);
      g_.release(x);
      g_.release(pos);
      x = y;
    }
    if (first && !names_.embed_norm.empty()) {
      Tid y = layer_norm(x, names_.embed_norm);
      g_.release(x);
      x = y;
    }
    if (first) {
      Tid z = dropout(x, embedding_dropout());
      g_.release(x);
      x = z;
    }
    const AttentionSpec& a = m_.layers.front().attention;
    if (a.rotary_fraction > 0 && m_.position == PositionKind::kRotary) {
      auto rot = static_cast<int64_t>(static_cast<double>(a.head_dim) * a.rotary_fraction);
      cos_ = g_.leaf(s * rot, g_.elem(x), Component::kInputs, false);
      sin_ = g_.leaf(s * rot, g_.elem(x), Component::kInputs, false);
    }
    if (s_.attention == AttentionImpl::kEager || hf_sdpa_mask()) {
      mask_ = g_.leaf(b * s * s, g_.elem(x), Component::kInputs, false);
      if (m_.position == PositionKind::kAlibi) {
        alibi_ = g_.leaf(b * a.num_heads * s, kF32, Component::kInputs, false);
      }
    }
  } else if (first) {  // OPT: embed_positions(attention_mask) -> [b, s, h]; project_in; add
    Tid pos = g_.op(tokens_ * h, pe_, {param("model.decoder.embed_positions.weight").id}, {});
    if (ew != h) {
      Tid y = linear(x, "model.decoder.project_in", ew, h);
      g_.release(x);
      x = y;
    }
    Tid y = plain(x, pos);
    g_.release(x);
    g_.release(pos);
    mask_ = g_.leaf(b * s * s, g_.elem(y), Component::kInputs, false);
    x = y;
  } else {
    mask_ = g_.leaf(b * s * s, g_.elem(x), Component::kInputs, false);
  }
  for (int i = fwd_first_; i < fwd_end_; ++i) {
    g_.set_layer(i);
    gather(i);
    auto body = [this, i](Tid in) {
      bool recompute = g_.phase() == Phase::kBackward;
      // training.compile_model: m.compile() on each TransformerSelfAttentionLayer
      // (inside the checkpoint wrapper when checkpointing is on).
      compiled_ = s_.fw.compile;
      Tid y = style_ == Style::kLlama     ? llama_layer(in, i)
              : style_ == Style::kGpt2    ? gpt2_layer(in, i)
              : style_ == Style::kGeneric ? generic_layer(in, i)
                                          : opt_layer(in, i);
      compiled_ = false;
      if (recompute)
        clear_autocast_cache();  // the checkpoint's own autocast context exits
      return y;
    };
    // Non-reentrant checkpointing runs the forward with grad on (only the
    // saved tensors go through its hooks): what ops keep outside autograd's
    // saved variables (bitsandbytes' ctx.tensors) stays alive.
    nonreentrant_forward_ = s_.checkpointing == CheckpointMode::kNonReentrant &&
                            g_.grad_enabled() && g_.requires_grad(x);
    Tid y = s_.checkpointing == CheckpointMode::kOff ? body(x) : g_.checkpoint(x, body);
    nonreentrant_forward_ = false;
    g_.release(x);
    x = y;
    if (r_.reshard_after_forward)
      reshard(i);
  }
  g_.set_layer(-1);
  if (mask2_ != kNone && s_.checkpointing != CheckpointMode::kOff) {
    // No layer slides: the checkpointed layers keep only the full mask.
    bool sliding = false;
    for (const LayerSpec& l : m_.layers)
      sliding = sliding || l.attention.sliding_window > 0;
    if (!sliding) {
      g_.release(mask2_);
      mask2_ = kNone;
    }
  }
  if (!fwd_head_) {
    if (s_.checkpointing == CheckpointMode::kOff)
      release_shared();
    release_model_locals();
    return x;
  }
  if (chunked_)
    gather(stage_end());  // the chunks first used by the final norm or the head
  Tid hn;
  if (style_ == Style::kLlama) {
    hn = norm(x, "model.norm", m_.layers.front().norm);
  } else if (style_ == Style::kGpt2) {
    hn = layer_norm(x, "transformer.ln_f");
  } else if (style_ == Style::kGeneric) {
    hn = layer_norm(x, names_.final_norm);
  } else {
    hn = m_.final_norm ? layer_norm(x, "model.decoder.final_layer_norm") : (g_.retain(x), x);
    if (ew != h) {
      Tid y = linear(hn, "model.decoder.project_out", h, ew);
      g_.release(hn);
      hn = y;
    }
  }
  g_.release(x);
  release_model_locals();
  // Checkpointed layers keep the rotary tables and the mask (their kwargs)
  // until their recomputation in backward.
  if (s_.checkpointing == CheckpointMode::kOff)
    release_shared();
  // lm_head: a Linear (tied to the embedding when the config ties them).
  std::string head = style_ == Style::kGeneric ? names_.lm_head : "lm_head";
  if (liger_) {
    // Liger's lce_forward: in training with labels the logits are skipped and
    // LigerForCausalLMLoss runs on the final hidden states.
    gather_unit(head_unit());
    liger_loss_ = s_.fw.liger_flce_2024 ? liger_linear_cross_entropy_2024(hn, head, ew)
                                        : liger_linear_cross_entropy(hn, head, ew);
    reshard_unit(head_unit());
    g_.release(hn);
    return kNone;
  }
  if ((s_.fw.output_chunks > 0 || s_.fw.lm_head_chunk_tokens > 0) && !litgpt_full()) {
    // torchtune chunked_output / LitGPT lm_head_chunk_size: the head on slices.
    gather_unit(head_unit());
    logit_chunks_ = chunked_head(g_, hn, ew, s_.batch, s_.seq, s_.fw, [&](Tid slice) {
      Tid y = linear(slice, head, ew, m_.vocab_size);
      return s_.fw.chunked_logit_softcap ? capped_logits(y) : y;
    });
    reshard_unit(head_unit());
    g_.release(hn);
    fabric_output_fp32(&logit_chunks_);
    return kNone;
  }
  if (r_.offload_params && r_.offload_fetch == OffloadFetch::kLargestParam) {
    // DeepSpeed ZeRO-3 fetches the head's weight again here: the embedding's
    // use was further back than stage3_max_reuse_distance, so it was released
    // (partitioned_param_coordinator.py __params_to_release, 0.8.1 to 0.16),
    // and an untied lm_head is first fetched now. Its host partition comes to
    // the device next to the full weight (kept gathered here, as the root).
    Param* w = find_param(head + ".weight");
    int elem = s_.finetune == FinetuneMode::kQlora ? base_store_elem_ : store_elem_;
    if (w != nullptr && w->quantized == 0)
      fetch_copy(g_.numel(w->id) * elem);
  }
  gather_unit(head_unit());
  Tid logits = capped_logits(linear(hn, head, ew, m_.vocab_size));
  reshard_unit(head_unit());
  head_hidden_elem_ = g_.elem(hn);
  if (s_.framework == Framework::kHf && r_.first_stage && r_.last_stage && !r_.vocab_parallel_ce) {
    // XForCausalLM.forward (v4.57): `hidden_states = outputs.last_hidden_state`
    // stays bound while self.loss_function runs; with a frozen head nothing
    // else keeps it.
    head_input_ = hn;
  } else {
    g_.release(hn);
  }
  if (s_.fw.logits_to_fp32) {
    std::vector<Tid> one = {logits};
    fabric_output_fp32(&one);
    logits = one.front();
  }
  if (s_.framework == Framework::kTorchtune) {
    // TransformerDecoder.unembed: output = self.output(h).float()
    Tid l32 = cast(logits, kF32);
    g_.release(logits);
    logits = l32;
  }
  if (m_.family == "codegen" || m_.family == "gptj" || m_.family == "gpt_neo") {
    // lm_logits = self.lm_head(hidden_states).to(torch.float32) (codegen,
    // gptj); gpt_neo casts the same way before its loss and back after it
    // (modeling_*.py, v4.48 and v4.57).
    Tid l32 = cast(logits, kF32);
    g_.release(logits);
    logits = l32;
  }
  return logits;
}

Tid Program::llama_attention(Tid x, int i, const LayerSpec& l) {
  const AttentionSpec& a = l.attention;
  std::string p = "model.layers." + std::to_string(i) + ".self_attn.";
  int64_t h = m_.hidden_size;
  int64_t d = a.head_dim;
  int64_t heads = a.num_heads;
  if (a.kind == AttentionKind::kMLA)
    return mla_attention(x, p, a);
  Tid q, k, v, fused = kNone;
  if (litgpt_fused_qkv()) {
    litgpt_qkv(x, p, {"q_proj", "k_proj", "v_proj"}, "qkv_proj", a, &q, &k, &v);
  } else if (find_param(p + "qkv_proj.weight") != nullptr) {
    // Phi-3: one qkv_proj; q, k and v are slices of it (views keeping it alive).
    int64_t total = a.q_width() + a.k_width() + a.v_width();
    fused = linear(x, p + "qkv_proj", h, total);
    int64_t rows = g_.numel(fused) / total;
    q = g_.op(rows * a.q_width(), g_.elem(fused), {fused}, {});
    k = g_.op(rows * a.k_width(), g_.elem(fused), {fused}, {});
    v = g_.op(rows * a.v_width(), g_.elem(fused), {fused}, {});
  } else {
    q = linear(x, p + "q_proj", h, a.q_width());
    k = linear(x, p + "k_proj", h, a.k_width());
    v = linear(x, p + "v_proj", h, a.v_width());
  }
  bool olmo = m_.family == "olmo" && s_.framework == Framework::kHf;
  if (olmo && olmo_clip_qkv() > 0) {
    for (Tid* t : {&q, &k, &v})
      *t = clamp_in_place(*t);
  }
  for (Tid t : {q, k, v})
    g_.set_layout(t, Layout::kBshd);  // view(...).transpose(1, 2)
  if (a.qk_norm && m_.family == "stablelm") {
    Tid qn = stablelm_head_norms(q, p + "q_layernorm.norms.", a.num_heads, d);
    g_.release(q);
    q = qn;
    Tid kn = stablelm_head_norms(k, p + "k_layernorm.norms.", a.num_kv_heads, d);
    g_.release(k);
    k = kn;
  } else if (a.qk_norm) {
    // Qwen3: q_norm / k_norm over head_dim before the transpose (contiguous).
    Tid qn = rms_norm(q, p + "q_norm", false, d);
    g_.release(q);
    q = qn;
    Tid kn = rms_norm(k, p + "k_norm", false, d);
    g_.release(k);
    k = kn;
    g_.set_layout(q, Layout::kBshd);
    g_.set_layout(k, Layout::kBshd);
  }
  liger_rope_copies_ = fused != kNone;
  Tid qe = rope(q, a);
  Tid ke = rope(k, a);
  if (olmo) {
    // modeling_olmo.apply_rotary_pos_emb: q_embed.to(q_type), k_embed.to(k_type)
    // (the fp32 products of bf16 states and fp32 cos/sin are cast back).
    for (auto [t, like] : {std::pair{&qe, q}, std::pair{&ke, k}}) {
      Tid c = cast(*t, g_.elem(like));
      g_.release(*t);
      *t = c;
    }
  }
  g_.release(q);
  g_.release(k);
  if (use_cache_)
    cache_update(&ke, &v, true);  // (as v4.57 at every version: see cache_update)
  Tid out = attention_core(qe, ke, v, a, AttnFlavor::kHf);
  g_.release(qe);
  g_.release(ke);
  g_.release(v);
  if (fused != kNone)
    g_.release(fused);
  Tid y = linear(out, p + "o_proj", heads * d, h);
  g_.release(out);
  return y;
}

// DeepseekV2Attention (multi-head latent attention): queries through an
// optional low-rank path, keys and values expanded from a shared latent, the
// rotary part concatenated to each head.
Tid Program::mla_attention(Tid x, const std::string& p, const AttentionSpec& a) {
  int64_t h = m_.hidden_size;
  int64_t rows = g_.numel(x) / h;
  Tid q;
  if (a.q_lora_rank > 0) {
    Tid qa = linear(x, p + "q_a_proj", h, a.q_lora_rank);
    Tid qn = rms_norm(qa, p + "q_a_layernorm", false, a.q_lora_rank);
    g_.release(qa);
    q = linear(qn, p + "q_b_proj", a.q_lora_rank, a.q_width());
    g_.release(qn);
  } else {
    q = linear(x, p + "q_proj", h, a.q_width());
  }
  Tid ckv = linear(x, p + "kv_a_proj_with_mqa", h, a.kv_lora_rank + a.qk_rope_head_dim);
  Tid latent = g_.op(rows * a.kv_lora_rank, g_.elem(ckv), {ckv}, {});  // split view
  Tid ln = rms_norm(latent, p + "kv_a_layernorm", false, a.kv_lora_rank);
  g_.release(latent);
  Tid kv = linear(ln, p + "kv_b_proj", a.kv_lora_rank,
                  a.num_heads * (a.qk_nope_head_dim + a.v_head_dim));
  g_.release(ln);
  // Rotary on the q_pe / k_pe slices, then cat((nope, pe)) for q and k.
  AttentionSpec rope_spec = a;
  rope_spec.head_dim = a.qk_rope_head_dim;
  rope_spec.rotary_fraction = 1.0;
  Tid q_pe = g_.op(rows * a.num_heads * a.qk_rope_head_dim, g_.elem(q), {q}, {});
  Tid q_rot = rope(q_pe, rope_spec);
  g_.release(q_pe);
  Tid k_pe = g_.op(rows * a.qk_rope_head_dim, g_.elem(ckv), {ckv}, {});
  g_.release(ckv);
  Tid k_rot = rope(k_pe, rope_spec);
  g_.release(k_pe);
  Tid qs = g_.op(g_.numel(q), promote(g_.elem(q), g_.elem(q_rot)), {q, q_rot}, {});
  g_.release(q);
  g_.release(q_rot);
  Tid ks = g_.op(rows * a.num_heads * (a.qk_nope_head_dim + a.qk_rope_head_dim),
                 promote(g_.elem(kv), g_.elem(k_rot)), {kv, k_rot}, {});
  g_.release(k_rot);
  Tid v = g_.op(rows * a.num_heads * a.v_head_dim, g_.elem(kv), {kv}, {});  // split view
  g_.release(kv);
  for (Tid t : {qs, ks, v})
    g_.set_layout(t, Layout::kBshd);
  Tid out = attention_core(qs, ks, v, a, AttnFlavor::kHf);
  g_.release(qs);
  g_.release(ks);
  g_.release(v);
  Tid y = linear(out, p + "o_proj", a.num_heads * a.v_head_dim, h);
  g_.release(out);
  return y;
}

Tid Program::llama_layer(Tid x, int i) {
  const LayerSpec& l = m_.layers[static_cast<size_t>(i)];
  std::string p = "model.layers." + std::to_string(i) + ".";
  Tid n1 = norm(x, p + "input_layernorm", l.norm);
  Tid attn = llama_attention(n1, i, l);
  if (l.parallel_residual && !l.mlp.is_moe()) {
    // StableLmDecoderLayer with use_parallel_residual: residual +
    // self_attn(ln(x)) + mlp(ln(x)), one LayerNorm output for both.
    Tid down = gated_mlp(n1, p + "mlp.", l.mlp);
    g_.release(n1);
    Tid h1 = plain(x, attn);
    g_.release(attn);
    Tid h2 = plain(h1, down);
    g_.release(h1);
    g_.release(down);
    return h2;
  }
  g_.release(n1);
  if (l.norms == 4) {
    Tid pa = norm(attn, p + "post_attention_layernorm", l.norm);
    g_.release(attn);
    attn = pa;
  }
  // Phi3DecoderLayer: residual + resid_attn_dropout(attn) and residual +
  // resid_mlp_dropout(mlp), nn.Dropout(resid_pdrop) (modeling_phi3.py v4.57).
  bool resid_dropout = m_.family == "phi3";
  if (resid_dropout) {
    Tid ad = dropout(attn, hidden_dropout());
    g_.release(attn);
    attn = ad;
  }
  Tid h1 = plain(x, attn);
  g_.release(attn);
  Tid n2 = norm(h1, p + (l.norms == 4 ? "pre_feedforward_layernorm" : "post_attention_layernorm"),
                l.norm);
  Tid down = l.mlp.is_moe() ? moe_block(n2, p, l.mlp) : gated_mlp(n2, p + "mlp.", l.mlp);
  g_.release(n2);
  if (l.norms == 4) {
    Tid pf = norm(down, p + "post_feedforward_layernorm", l.norm);
    g_.release(down);
    down = pf;
  }
  if (resid_dropout) {
    Tid dd = dropout(down, hidden_dropout());
    g_.release(down);
    down = dd;
  }
  Tid h2 = plain(h1, down);
  g_.release(h1);
  g_.release(down);
  return h2;
}

Tid Program::gpt2_layer(Tid x, int i) {
  const LayerSpec& l = m_.layers[static_cast<size_t>(i)];
  std::string p = "transformer.h." + std::to_string(i) + ".";
  int64_t h = m_.hidden_size;
  int64_t b = s_.batch;
  int64_t s = s_.seq;
  int64_t heads = l.attention.num_heads;
  int64_t d = l.attention.head_dim;
  Tid n1 = layer_norm(x, p + "ln_1");
  Tid qkv = linear(n1, p + "attn.c_attn", h, 3 * h);
  g_.release(n1);
  // split(split_size, dim=2) then view + transpose: q, k and v are strided
  // views of qkv that matmul cannot fold, so each is copied (and the copies saved).
  int64_t part = b * heads * s * d;
  int e = g_.elem(qkv);
  Tid qc = g_.op(part, e, {qkv}, {});
  Tid kc = g_.op(part, e, {qkv}, {});
  Tid scores = g_.op(b * heads * s * s, e, {qc, kc}, {qc, kc});
  g_.release(qc);
  g_.release(kc);
  Tid scaled = plain(scores);  // / torch.full([], sqrt(d))
  g_.release(scores);
  // torch.where(causal_mask, attn_weights, mask_value): saves only the bool mask (a buffer view)
  Tid masked = g_.op(g_.numel(scaled), g_.elem(scaled), {scaled}, {});
  g_.release(scaled);
  Tid probs = softmax_plain(masked);
  g_.release(masked);
  Tid probs_v = cast(probs, e);  // .type(value.dtype)
  g_.release(probs);
  Tid pd = dropout(probs_v, attention_dropout());
  g_.release(probs_v);
  Tid vc = g_.op(part, e, {qkv}, {});
  Tid o = g_.op(part, e, {pd, vc}, {pd, vc});
  g_.release(pd);
  g_.release(vc);
  g_.release(qkv);
  Tid oc = g_.op(g_.numel(o), g_.elem(o), {o}, {});  // transpose + reshape + contiguous
  g_.release(o);
  Tid proj = linear(oc, p + "attn.c_proj", h, h);
  g_.release(oc);
  Tid pr = dropout(proj, hidden_dropout());
  g_.release(proj);
  Tid h1 = plain(pr, x);
  g_.release(pr);
  Tid n2 = layer_norm(h1, p + "ln_2");
  int64_t inner = l.mlp.intermediate_size;
  Tid fc = linear(n2, p + "mlp.c_fc", h, inner);
  g_.release(n2);
  Tid dd = mlp_tail(fc, p + "mlp.c_proj", inner, l.mlp.activation);
  Tid h2 = plain(h1, dd);
  g_.release(h1);
  g_.release(dd);
  return h2;
}

// The GPT-style decoder layer of BLOOM, GPT-NeoX, Falcon, GPT-J, CodeGen,
// Phi, GPT-Neo, GPTBigCode and BioGPT: LayerNorms, fused or separate q/k/v,
// optional (partial) rotary or ALiBi, dense MLP, sequential or parallel
// residual.
Tid Program::generic_layer(Tid x, int i) {
  const LayerSpec& l = m_.layers[static_cast<size_t>(i)];
  const AttentionSpec& a = l.attention;
  const Names& n = names_;
  std::string p = n.layers + "." + std::to_string(i) + ".";
  int64_t h = m_.hidden_size;
  Tid n1 = layer_norm(x, p + n.norm1);
  Tid q, k, v, fused = kNone;
  if (!n.qkv.empty()) {
    // Fused projection; q, k, v are views of it (split/chunk), so it lives as
    // long as any of them, and each view's backward needs a gradient of its size.
    fused = linear(n1, p + n.qkv, h, a.q_width() + a.k_width() + a.v_width());
    int e = g_.elem(fused);
    int64_t rows = g_.numel(fused) / (a.q_width() + a.k_width() + a.v_width());
    if (s_.framework == Framework::kLitgpt) {
      // LitGPT's CausalSelfAttention (as in litgpt_qkv): with one query per
      // group q, k and v are views of the fused output, and SDPA saves v as
      // one, keeping the whole output until backward; grouped queries copy q.
      q = a.num_heads == a.num_kv_heads ? g_.view(fused, rows * a.q_width())
                                        : g_.op(rows * a.q_width(), e, {fused}, {});
      k = g_.view(fused, rows * a.k_width());
      v = g_.view(fused, rows * a.v_width());
    } else if (m_.family == "falcon" && s_.framework == Framework::kHf) {
      falcon_split_heads(fused, a, &q, &k, &v);
      g_.release(fused);  // no view of it survives the split: q, k and v are copies
      fused = kNone;
    } else {
      q = g_.op(rows * a.q_width(), e, {fused}, {});
      k = g_.op(rows * a.k_width(), e, {fused}, {});
      v = g_.op(rows * a.v_width(), e, {fused}, {});
    }
  } else if (litgpt_fused_qkv()) {
    // LitGPT fuses checkpoints with separate q/k/v (Phi-1.5, Phi-2) into one attn.
    litgpt_qkv(n1, p, {n.q, n.k, n.v}, "", a, &q, &k, &v);
  } else {
    q = linear(n1, p + n.q, h, a.q_width());
    k = linear(n1, p + n.k, h, a.k_width());
    v = linear(n1, p + n.v, h, a.v_width());
  }
  bool falcon = m_.family == "falcon" && s_.framework == Framework::kHf && !n.qkv.empty();
  for (Tid t : {q, k, v})
    g_.set_layout(t, falcon ? Layout::kContiguous : Layout::kBshd);
  if (m_.family == "biogpt") {  // q_proj(x) * scaling
    Tid qs = plain(q);
    g_.release(q);
    q = qs;
  }
  Tid qe = rope(q, a);
  g_.release(q);
  Tid ke = rope(k, a);
  g_.release(k);
  if (use_cache_)
    cache_update(&ke, &v, s_.transformers_version >= 456);
  AttnFlavor flavor = m_.position == PositionKind::kAlibi ? AttnFlavor::kAlibi
                      : m_.family == "falcon"             ? AttnFlavor::kFalcon
                                                          : AttnFlavor::kHf;
  AttentionSpec as = a;
  if (falcon && falcon_grouped(a))
    as.num_kv_heads = a.num_heads;  // K and V were broadcast to every head by the split
  Tid attn = attention_core(qe, ke, v, as, flavor);
  g_.release(qe);
  g_.release(ke);
  g_.release(v);
  if (fused != kNone)
    g_.release(fused);
  Tid o = linear(attn, p + n.o, a.num_heads * a.head_dim, h);
  g_.release(attn);
  Tid od = dropout(o, hidden_dropout());
  g_.release(o);
  int64_t inner = l.mlp.intermediate_size;
  auto mlp = [&](Tid in) {
    return mlp_tail(linear(in, p + n.up, h, inner), p + n.down, inner, l.mlp.activation);
  };
  if (l.parallel_residual) {
    // x + attn(ln1(x)) + mlp(ln2(x) or ln1(x))
    Tid n2 = n.norm2.empty() ? (g_.retain(n1), n1) : layer_norm(x, p + n.norm2);
    g_.release(n1);
    Tid m = mlp(n2);
    g_.release(n2);
    Tid s1 = plain(m, od);
    g_.release(m);
    g_.release(od);
    Tid out = plain(s1, x);
    g_.release(s1);
    return out;
  }
  g_.release(n1);
  Tid h1 = plain(od, x);
  g_.release(od);
  Tid n2 = layer_norm(h1, p + n.norm2);
  Tid m = mlp(n2);
  g_.release(n2);
  Tid out = plain(m, h1);
  g_.release(m);
  g_.release(h1);
  return out;
}

Tid Program::opt_layer(Tid x, int i) {
  const LayerSpec& l = m_.layers[static_cast<size_t>(i)];
  std::string p = "model.decoder.layers." + std::to_string(i) + ".";
  int64_t h = m_.hidden_size;
  bool pre = m_.final_norm;  // do_layer_norm_before
  Tid hs = x;
  g_.retain(hs);
  if (pre) {
    Tid n = layer_norm(x, p + "self_attn_layer_norm");
    g_.release(hs);
    hs = n;
  }
  // OPTAttention: q = q_proj(x) * scaling; k, v projections; eager attention.
  Tid q0 = linear(hs, p + "self_attn.q_proj", h, h);
  Tid q = plain(q0);
  g_.release(q0);
  Tid k = linear(hs, p + "self_attn.k_proj", h, h);
  Tid v = linear(hs, p + "self_attn.v_proj", h, h);
  g_.release(hs);
  for (Tid t : {q, k, v})
    g_.set_layout(t, Layout::kBshd);
  // eager_attention_forward (scaling 1.0: q is pre-scaled), as for Llama.
  Tid oc = attention_core(q, k, v, l.attention, AttnFlavor::kHf);
  g_.release(q);
  g_.release(k);
  g_.release(v);
  Tid proj = linear(oc, p + "self_attn.out_proj", h, h);
  g_.release(oc);
  Tid pr = dropout(proj, hidden_dropout());
  g_.release(proj);
  Tid h1 = plain(x, pr);
  g_.release(pr);
  if (!pre) {
    Tid n = layer_norm(h1, p + "self_attn_layer_norm");
    g_.release(h1);
    h1 = n;
  }
  Tid f = h1;
  g_.retain(f);
  if (pre) {
    Tid n = layer_norm(h1, p + "final_layer_norm");
    g_.release(f);
    f = n;
  }
  int64_t inter = l.mlp.intermediate_size;
  Tid fc1 = linear(f, p + "fc1", h, inter);
  g_.release(f);
  Tid dd = mlp_tail(fc1, p + "fc2", inter, l.mlp.activation);
  Tid h2 = plain(h1, dd);
  g_.release(h1);
  g_.release(dd);
  if (!pre) {
    Tid n = layer_norm(h2, p + "final_layer_norm");
    g_.release(h2);
    h2 = n;
  }
  return h2;
}

namespace {

struct InModelLoss {
  const char* family;
  int since;        // the first transformers release whose forward calls self.loss_function
  int upcast_from;  // logits.float() before the shift from this release (0: never)
};

// Before these releases each causal LM computed its loss in its forward:
// [optionally logits = logits.float()], shift_logits = logits[..., :-1, :]
// .contiguous(), nn.CrossEntropyLoss on the views. The llama-style families
// moved to self.loss_function in v4.46 (commit c1c7e89620, PR #34191; gemma2
// dropped its logits.float() in the same release, 550673a70c), the GPT-era
// ones in v4.49 (9afb904b15 for gpt_neox, 28f73bc307 for the rest). Llama
// upcasts since the Llama 2 PR (07360b6c9c, v4.31), the other llama-style
// families since they were added; codegen, gptj and gpt_neo upcast at the
// head in every release (Program::forward). qwen3 and deepseek_v2 arrived
// with loss_function.
constexpr InModelLoss kInModelLoss[] = {
    {"llama", 446, 431},   {"mistral", 446, 1},  {"mixtral", 446, 1},  {"qwen2", 446, 1},
    {"qwen2_moe", 446, 1}, {"gemma", 446, 1},    {"gemma2", 446, 1},   {"phi", 446, 1},
    {"phi3", 446, 1},      {"olmo", 446, 1},     {"stablelm", 446, 0}, {"gpt2", 449, 0},
    {"opt", 449, 0},       {"bloom", 449, 0},    {"gpt_neo", 449, 0},  {"gptj", 449, 0},
    {"codegen", 449, 0},   {"gpt_neox", 449, 0}, {"falcon", 449, 0},   {"gpt_bigcode", 449, 0},
    {"biogpt", 449, 0},
};

const InModelLoss* in_model_loss_rule(const std::string& family, int version) {
  for (const InModelLoss& r : kInModelLoss)
    if (family == r.family)
      return version < r.since ? &r : nullptr;
  return nullptr;
}

}  // namespace

bool Program::in_model_loss() const {
  return s_.framework == Framework::kHf && !r_.vocab_parallel_ce &&
         in_model_loss_rule(m_.family, s_.transformers_version) != nullptr;
}

// The loss inside the model's forward (transformers before ForCausalLMLoss;
// modeling_llama.py at c1c7e89620^, modeling_gpt2.py at 28f73bc307^):
// shift_logits = logits[..., :-1, :].contiguous() (a copy; its backward is
// SliceBackward's zeros of the full logits), shift_labels likewise (int64),
// then nn.CrossEntropyLoss, which autocast runs in fp32 (cross_entropy_loss
// is on the fp32 list of CUDA and CPU autocast: a copy of a half input);
// log_softmax saves its output. The output object keeps `logits` (upcast or
// not) until compute_loss returns.
Tid Program::in_model_causal_lm_loss(Tid* logits) {
  const InModelLoss* rule = in_model_loss_rule(m_.family, s_.transformers_version);
  Tid l = *logits;
  if (rule->upcast_from > 0 && s_.transformers_version >= rule->upcast_from) {
    l = cast(*logits, kF32);  // logits = logits.float(): the half logits die
    g_.release(*logits);
    *logits = l;
  }
  int64_t rows = s_.batch * (s_.seq - 1);
  int64_t n = rows * m_.vocab_size;
  Tid shift;
  Tid shift_labels = kNone;
  if (s_.batch == 1) {
    // One sequence's logits[..., :-1, :] is already contiguous: .contiguous()
    // returns the view (the labels' too), whose gradient is the full logits'.
    g_.retain(l);
    shift = l;
  } else {
    shift = g_.op(n, g_.elem(l), {l}, {}, Component::kLogitsLoss);
    shift_labels = g_.leaf(rows, kI64, Component::kLogitsLoss, false);
  }
  Tid x = autocast_ && g_.elem(shift) != kF32 ? g_.op(n, kF32, {shift}, {}, Component::kLogitsLoss)
                                              : (g_.retain(shift), shift);
  Tid lsm = g_.op(n, g_.elem(x), {x}, {}, Component::kLogitsLoss, {}, 0, true);
  g_.release(x);
  Tid loss = g_.op(1, g_.elem(lsm), {lsm}, {shift_labels}, Component::kLogitsLoss);
  g_.release(lsm);
  if (shift_labels != kNone)
    g_.release(shift_labels);
  g_.release(shift);
  return loss;
}

// transformers loss/loss_utils.py ForCausalLMLoss (v4.46+): logits.float(),
// labels padded with -100 and shifted (a contiguous int64 copy),
// F.cross_entropy = log_softmax (saves its fp32 output) + nll_loss.
Tid Program::causal_lm_loss(Tid logits, Tid labels) {
  Tid l32 = cast(logits, kF32);
  Tid padded = g_.leaf(s_.batch * (s_.seq + 1), kI64, Component::kLogitsLoss, false);
  Tid shifted = padded;  // one row's labels[..., 1:] is contiguous: a view of the padded labels
  if (s_.batch > 1) {
    shifted = g_.leaf(tokens_, kI64, Component::kLogitsLoss, false);
    g_.release(padded);
  }
  (void)labels;
  if (r_.vocab_parallel_ce) {
    // Megatron's _VocabParallelCrossEntropy works inside the fp32 logits
    // (minus the all-reduced max, exp, divided by the all-reduced sum) and
    // saves that buffer for its backward, which works in place too; the
    // per-token max, sum and target logit are small temporaries.
    Tid stats = g_.buffer(3 * tokens_ * kF32, Component::kTemporaries);
    Tid per_token = g_.op(tokens_, kF32, {l32}, {l32, shifted}, Component::kLogitsLoss);
    g_.release(stats);
    g_.release(l32);
    g_.release(shifted);
    Tid mean = plain(per_token);
    g_.release(per_token);
    return mean;
  }
  Tid loss;
  if (compiled_whole_loss()) {
    // training.compile_loss on nn.CrossEntropyLoss: the fp32 logits (alive
    // anyway) are its input.
    loss = compiled_cross_entropy(g_, l32, shifted, tokens_);
    g_.release(l32);
  } else {
    Tid lsm = g_.op(g_.numel(l32), kF32, {l32}, {}, Component::kLogitsLoss, {}, 0, true);
    g_.release(l32);
    loss = g_.op(1, kF32, {lsm}, {shifted}, Component::kLogitsLoss);
    g_.release(lsm);
  }
  g_.release(shifted);
  // reduction="sum" / num_items_in_batch: a scalar op.
  Tid scaled = plain(loss);
  g_.release(loss);
  return scaled;
}

// torch/optim/adamw.py (_single_tensor_adamw, _multi_tensor_adamw,
// _fused_adamw), torch/optim/sgd.py, transformers Adafactor, bitsandbytes 8-bit.
void Program::optimizer_step(bool first) {
  g_.set_phase(Phase::kOptimizer);
  g_.set_layer(-1);
  if (s_.fw.optimizer_in_bwd || s_.fw.paged_optimizer) {
    // Stepped inside backward, or bitsandbytes paged states (cudaMallocManaged,
    // outside the caching allocator) updated by one kernel without temporaries.
    if (first && s_.fw.paged_optimizer && !s_.fw.optimizer_in_bwd && !r_.offload_optimizer)
      add_paged_states();
    zero_grad();
    return;
  }
  OptimizerKind kind = s_.optimizer;
  if (kind == OptimizerKind::kAdamW) {
    kind = cuda_ ? OptimizerKind::kAdamWForeach : OptimizerKind::kAdamWForLoop;
  }
  bool adam = kind == OptimizerKind::kAdamWForeach || kind == OptimizerKind::kAdamWFused ||
              kind == OptimizerKind::kAdamWForLoop;
  if (r_.fused_optimizer && adam)
    kind = OptimizerKind::kAdamWFused;
  // The tensors this rank steps: its shard of each (ZeRO / FSDP), or the whole
  // tensors it owns (torch ZeroRedundancyOptimizer).
  std::vector<std::pair<int64_t, int>> stepped;  // numel, state dtype
  for (size_t k = 0; k < trainable_.size(); ++k) {
    Tid p = trainable_[k];
    int64_t n = tensor_shard(p, r_.state_shards);
    if (chunked_) {
      // HybridAdam's fake parameters: the part of each tensor inside rank
      // 0's shard of its chunk (the fullest rank).
      auto it = chunk_state_.find(p);
      n = it == chunk_state_.end() ? n : it->second;
    }
    if (!r_.owns_state.empty() && (k >= r_.owns_state.size() || r_.owns_state[k] == 0))
      n = 0;
    int e = r_.master_fp32 ? kF32 : r_.sharded_params() ? store_elem_ : g_.elem(p);
    if (n > 0 && !r_.offload_optimizer)
      stepped.emplace_back(n, e);
  }
  Tid fp32_grads = kNone;
  if (r_.master_fp32 && !stepped.empty() && !r_.grads_in_param_chunks) {
    // DeepSpeed flattens this rank's partition: one fp32 master, one state
    // tensor of each kind, and the gradient partition converted to fp32 for
    // the step.
    int64_t n = 0;
    for (const auto& [numel, e] : stepped)
      n += numel;
    stepped.assign(1, {n, kF32});
    fp32_grads = g_.buffer(n * kF32, Component::kTemporaries);
  }
  if (first) {
    for (const auto& [n, e] : stepped) {
      // step: a CPU tensor on CUDA unless fused/capturable; on a CPU it is real memory.
      if (adam && (!cuda_ || kind == OptimizerKind::kAdamWFused))
        opt_state_.push_back(g_.leaf(1, kF32, Component::kOptimizerStates, false));
      add_states(kind, n, e);
    }
  }
  if (adam && kind == OptimizerKind::kAdamWForeach) {
    // exp_avg_sq_sqrt = torch._foreach_sqrt(exp_avg_sqs): one temporary per
    // parameter, all alive. Before 2.0, denom = torch._foreach_add(sqrt, eps)
    // was out of place: a second full list.
    std::vector<Tid> temps;
    for (const auto& [n, e] : stepped)
      temps.push_back(g_.buffer(n * e, Component::kTemporaries));
    if (s_.torch_version < 200) {
      std::vector<Tid> denom;
      for (const auto& [n, e] : stepped)
        denom.push_back(g_.buffer(n * e, Component::kTemporaries));
      for (Tid t : temps)
        g_.release(t);
      temps = denom;
    }
    for (Tid t : temps)
      g_.release(t);
  } else if (adam && kind == OptimizerKind::kAdamWForLoop) {
    // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    for (const auto& [n, e] : stepped) {
      Tid sq = g_.buffer(n * e, Component::kTemporaries);
      Tid denom = g_.buffer(n * e, Component::kTemporaries);
      g_.release(sq);
      g_.release(denom);
    }
  } else if (kind == OptimizerKind::kAdafactor) {
    for (const auto& [n, e] : stepped) {
      Tid a = g_.buffer(n * kF32, Component::kTemporaries);
      Tid b2 = g_.buffer(n * kF32, Component::kTemporaries);
      g_.release(a);
      g_.release(b2);
    }
  }
  if (fp32_grads != kNone)
    g_.release(fp32_grads);
  zero_grad();
}

// bitsandbytes/optim/optimizer.py (0.42.0 to 0.44.1): Optimizer2State.init_state
// takes each state from get_state_buffer, which pages only tensors of 1e5
// elements or more; a smaller parameter's states are torch.zeros_like on the
// device, inside the caching allocator and its counters (fp32 for the 32-bit
// PagedAdamW whatever the parameter's dtype). The 8-bit optimizers' blockwise
// absmax1/absmax2 (one fp32 per bnb_block() elements) are never paged.
void Program::add_paged_remnant(int64_t n) {
  constexpr int64_t kPageMin = 100000;
  bool eight_bit =
      s_.optimizer == OptimizerKind::kAdamW8bit || s_.optimizer == OptimizerKind::kPagedAdamW8bit;
  if (n <= 0)
    return;
  if (n < kPageMin) {
    add_states(eight_bit ? s_.optimizer : OptimizerKind::kAdamW, n, kF32);
  } else if (eight_bit) {
    int64_t block = bnb_block();
    opt_state_.push_back(
        g_.leaf(2 * ((n + block - 1) / block), kF32, Component::kOptimizerStates, false));
  }
}

// LitGPT's LoRAQKVLinear (litgpt/lora.py) holds one lora_A of r * enabled rows
// and one lora_B of the enabled q/k/v widths, so its q/k/v adapters of a layer
// count as one tensor each against the paging threshold.
void Program::add_paged_states() {
  std::map<std::string, std::pair<int64_t, int64_t>> fused;  // layer's attention -> (A, B)
  std::unordered_set<Tid> grouped;
  if (s_.framework == Framework::kLitgpt) {
    for (const auto& [prefix, l] : lora_) {
      std::string module = prefix.substr(prefix.rfind('.') + 1);
      if (module != "q_proj" && module != "k_proj" && module != "v_proj")
        continue;
      auto& [a, b] = fused[prefix.substr(0, prefix.rfind('.'))];
      a += tensor_shard(l.a, r_.state_shards);
      b += tensor_shard(l.b, r_.state_shards);
      grouped.insert(l.a);
      grouped.insert(l.b);
    }
  }
  for (const auto& entry : fused) {
    add_paged_remnant(entry.second.first);
    add_paged_remnant(entry.second.second);
  }
  for (Tid p : trainable_) {
    if (grouped.count(p) == 0)
      add_paged_remnant(tensor_shard(p, r_.state_shards));
  }
}

void Program::step_in_backward(Tid p) {
  if (std::find(trainable_.begin(), trainable_.end(), p) == trainable_.end())
    return;  // not a parameter (the embedding output PEFT marks as requiring grad)
  Phase was = g_.phase();
  int64_t n = g_.numel(p);
  int e = g_.elem(p);
  bool sharded = r_.grad_shards > 1;
  if (sharded) {
    // FSDP: the hook is on the sharded parameter; it steps this rank's shard
    // (states in the stored dtype) once the reduced gradient lands.
    n = tensor_shard(p, r_.state_shards);
    e = r_.param_shards > 1 ? store_elem_ : e;
  }
  if (!r_.offload_optimizer && stepped_in_bwd_.insert(p).second) {
    // The parameter's own optimizer creates its states at its first step; a
    // paged one keeps on the device what get_state_buffer does not page.
    if (s_.fw.paged_optimizer)
      add_paged_remnant(n);
    else
      add_states(s_.optimizer, n, e);
  }
  bool adam_temps =
      !s_.fw.paged_optimizer && !r_.offload_optimizer &&
      (s_.optimizer == OptimizerKind::kAdamW || s_.optimizer == OptimizerKind::kAdamWForeach ||
       s_.optimizer == OptimizerKind::kAdamWForLoop);
  if (adam_temps) {
    // One-tensor foreach / for-loop AdamW: the sqrt (and denom) temporary.
    Tid t = g_.buffer(n * e, Component::kTemporaries);
    g_.release(t);
  }
  if (!sharded)
    g_.clear_grad(p);  // sharded: reduce_grads turns it into the stepped shard
  g_.set_phase(was);
}

}  // namespace

RankPlan gemini_rank(int dp) {
  RankPlan r;
  r.master_fp32 = true;
  r.fused_optimizer = true;
  r.param_shards = dp;
  r.grad_shards = dp;
  r.state_shards = dp;
  r.grads_in_param_chunks = true;
  r.prefetch_layers = 1;
  // ColossalAI d4fb7bf (the paper's pin), zero/gemini/gemini_hook.py: in
  // training, post_op only marks tensors HOLD, so a chunk gathered in the
  // forward pass stays gathered until grad_handle reduces it in the backward
  // pass (by then the whole 16-bit model is on every GPU); the gathered chunk
  // replaces its shard (chunk/chunk.py __gather, reduce).
  r.reshard_after_forward = false;
  r.gather_frees_shard = true;
  r.gemini_chunks = true;
  return r;
}

TraceResult build_trace(const ModelSpec& model, const TrainingSetup& setup, const RankPlan& rank) {
  TraceResult result;
  build_trace(model, setup, rank, &result);
  return result;
}

namespace {

SdpaDtype sdpa_dtype(Precision p) {
  switch (p) {
    case Precision::kFp32:
      return SdpaDtype::kFp32;
    case Precision::kFp16Mixed:
    case Precision::kFp16:
      return SdpaDtype::kFp16;
    case Precision::kBf16Mixed:
    case Precision::kBf16:
      return SdpaDtype::kBf16;
  }
  return SdpaDtype::kBf16;
}

/// Turns --attention sdpa into the kernel PyTorch would run (llmem/sdpa.h)
/// and records the choice; explicit sdpa-* kinds are kept as given.
void resolve_attention(const ModelSpec& model, TrainingSetup* setup, TraceResult* result) {
  AttentionImpl a = setup->attention;
  if (a == AttentionImpl::kEager)
    return;
  if (a == AttentionImpl::kFlashAttention2) {
    result->attention_kernel = "flash_attention_2";
    return;
  }
  if (a != AttentionImpl::kSdpa) {
    result->attention_kernel =
        "sdpa " +
        std::string(sdpa_kernel_name(a == AttentionImpl::kSdpaMath        ? SdpaKernel::kMath
                                     : a == AttentionImpl::kSdpaEfficient ? SdpaKernel::kEfficient
                                                                          : SdpaKernel::kFlash)) +
        " (forced by --attention)";
    return;
  }
  if (setup->framework == Framework::kTorchtune && setup->fw.packed &&
      setup->device == Device::kCuda && !packed_dense_mask(*setup)) {
    // torchtune packing on sm75+: a BlockMask and compiled flex_attention,
    // which keeps q, k, v, the output and the logsumexp like flash.
    setup->attention = AttentionImpl::kSdpaFlash;
    result->attention_kernel = "flex_attention (torchtune packed, BlockMask)";
    return;
  }
  if (setup->device == Device::kCpu || model.layers.empty()) {
    // PyTorch's CPU flash kernel (2.2+) also keeps no s x s matrix.
    setup->attention = AttentionImpl::kSdpaFlash;
    result->attention_kernel = "sdpa fused CPU kernel";
    return;
  }
  const AttentionSpec& at = model.layers.front().attention;
  SdpaCall call;
  call.sm = setup->gpu_sm;
  call.dtype = sdpa_dtype(setup->precision);
  call.head_dim = at.head_dim;
  call.v_head_dim = at.kind == AttentionKind::kMLA ? at.v_head_dim : at.head_dim;
  call.attn_mask = setup->fw.sdpa_attn_mask || packed_dense_mask(*setup);
  call.kv_heads_differ = setup->framework == Framework::kLitgpt && setup->fw.mqa_kv_unexpanded &&
                         at.num_kv_heads == 1 && at.num_heads > 1;
  call.enable_gqa = hf_sdpa_gqa(model, *setup);
  call.dropout = setup->dropout >= 0 ? setup->dropout : model.attention_dropout;
  call.torch_version = setup->torch_version;
  call.batch = setup->batch;
  call.heads = at.num_heads;
  call.seq = setup->seq;
  SdpaChoice c = select_sdpa_kernel(call);
  setup->attention = c.kernel == SdpaKernel::kMath        ? AttentionImpl::kSdpaMath
                     : c.kernel == SdpaKernel::kEfficient ? AttentionImpl::kSdpaEfficient
                                                          : AttentionImpl::kSdpaFlash;
  result->attention_kernel = "sdpa " + std::string(sdpa_kernel_name(c.kernel)) + ": " + c.reason;
}

}  // namespace

void build_trace(const ModelSpec& model, const TrainingSetup& setup_in, const RankPlan& rank,
                 TraceResult* out) {
  out->events.clear();
  out->params = 0;
  out->trainable_params = 0;
  out->notes.clear();
  out->attention_kernel.clear();
  TraceResult& result = *out;
  TrainingSetup setup = setup_in;
  if (model.family == "gpt_bigcode" && setup.checkpointing != CheckpointMode::kOff) {
    // transformers v4.57: GPTBigCodeBlock is not a GradientCheckpointingLayer and
    // the model never reads gradient_checkpointing (fixed upstream later, PR
    // #41818), so checkpointing does nothing; PEFT's input hook still runs.
    result.notes.push_back("gpt_bigcode ignores gradient checkpointing in transformers v4.57");
    setup.checkpointing = CheckpointMode::kOff;
    setup.lora_input_grads = setup_in.finetune != FinetuneMode::kFull;
  }
  resolve_attention(model, &setup, &result);
  size_t hint = result.events.capacity();  // the previous trace's size, when reused
  Graph g(&result.events);
  g.reserve(hint / 2);
  g.set_out_of_place_leaf_accumulation(setup.torch_version < 200);
  // torch.utils.checkpoint preserves the RNG state: torch.get_rng_state(),
  // the CPU generator's 5056-byte uint8 tensor, is kept per checkpointed
  // block (reentrant: as ctx.fwd_cpu_state, alive as long as the graph), and
  // fork_rng takes another around each recomputation. On a GPU run they are host memory (the CUDA
  // states too: torch.cuda.get_rng_state() returns a CPU tensor), so only a CPU run counts them.
  if (setup.device == Device::kCpu)
    g.set_checkpoint_rng_state_bytes(5056, setup.checkpointing == CheckpointMode::kReentrant);
  if (setup.framework == Framework::kLitgpt && setup.finetune == FinetuneMode::kQlora)
    setup.fw.paged_optimizer = true;  // litgpt instantiate_bnb_optimizer: bnb PagedAdamW
  // bnb.optim.PagedAdamW8bit (the Trainer's optim="paged_adamw_8bit") pages its
  // states whether or not --paged-optimizer is given.
  if (setup.optimizer == OptimizerKind::kPagedAdamW8bit)
    setup.fw.paged_optimizer = true;
  if (setup.fw.activation_offload && setup.checkpointing == CheckpointMode::kOff) {
    throw Error("--activation-offload", "",
                "torchtune offloads activations only with activation checkpointing on");
  }
  g.set_offload_checkpoint_inputs(setup.fw.activation_offload);
  Program program(g, model, setup, rank, &result);
  if (setup.fw.optimizer_in_bwd) {
    if (setup.grad_accum > 1) {
      throw Error("--optimizer-in-bwd", "",
                  "torchtune does not support gradient accumulation with optimizer_in_bwd");
    }
    g.set_post_accumulate_grad_hook([&program](Tid p) { program.step_in_backward(p); });
  }
  program.setup();
  // A pipeline stage takes its micro-batches in groups of `in_flight` (under
  // the interleaved schedule: its grad_accum x chunks chunk-forwards).
  int64_t forwards =
      setup.grad_accum * std::max<int64_t>(1, static_cast<int64_t>(rank.chunk_begin.size()));
  int64_t groups = (forwards + rank.in_flight - 1) / rank.in_flight;
  if (setup.peak_only)
    groups = std::min<int64_t>(groups, 2);
  for (int step = 1; step <= 2; ++step) {
    g.set_step(step);
    for (int64_t micro = 0; micro < groups; ++micro) {
      program.set_sync(micro + 1 == groups);
      program.micro_step();
    }
    program.optimizer_step(step == 1);
  }
}

bool liger_patches(const ModelSpec& m) {
  // liger_kernel.transformers.monkey_patch (v0.6.4) MODEL_TYPE_TO_APPLY_LIGER_FN,
  // which the Trainer's use_liger_kernel calls (_apply_liger_kernel_to_instance);
  // other model types only get a warning there.
  static const char* const kLiger[] = {"llama", "mistral", "mixtral", "qwen2",
                                       "qwen3", "phi3",    "gemma",   "gemma2"};
  return std::find(std::begin(kLiger), std::end(kLiger), m.family) != std::end(kLiger) &&
         llama_style(m);
}

bool llama_style(const ModelSpec& m) {
  static const char* const kFamilies[] = {"llama",   "mistral",   "qwen2",      "qwen3",
                                          "gemma",   "gemma2",    "olmo",       "phi3",
                                          "mixtral", "qwen2_moe", "deepseek_v2"};
  if (std::find(std::begin(kFamilies), std::end(kFamilies), m.family) != std::end(kFamilies))
    return true;
  return m.family == "stablelm";
}

bool row_parallel(const std::string& tensor_name) {
  static const char* const kRow[] = {"o_proj", "out_proj", "down_proj", "dense", "dense_4h_to_h",
                                     "fc2",    "c_proj",   "fc_out",    "w2",    "wo"};
  size_t end = tensor_name.rfind('.');
  if (end == std::string::npos || end == 0)
    return false;
  size_t begin = tensor_name.rfind('.', end - 1);
  size_t from = begin == std::string::npos ? 0 : begin + 1;
  std::string module = tensor_name.substr(from, end - from);
  return std::find(std::begin(kRow), std::end(kRow), module) != std::end(kRow);
}

}  // namespace llmem::trace
