// Copyright 2026 The llmem Authors.
// The torchtune and LitGPT profiles. Sources (read at the commits named in
// docs/frameworks.md):
//   torchtune  recipes/full_finetune_single_device.py, recipes/lora_finetune_single_device.py
//              (_loss_step: labels hstack'ed with an ignore column, `del logits`),
//              torchtune/modules/transformer.py (TransformerDecoder.chunked_output,
//              unembed: `self.output(h).float()` when not chunked),
//              torchtune/modules/loss/ce_chunked_output_loss.py (CEWithChunkedOutputLoss),
//              torchtune/training/_activation_offloading.py, torchtune/modules/peft/lora.py,
//              torchtune/modules/low_precision/nf4_linear.py (torchao NF4, block 64,
//              scaler block 256).
//   LitGPT     litgpt/finetune/lora.py and full.py (the training loop, lm_head_chunk_size=128,
//              instantiate_bnb_optimizer -> bnb.optim.PagedAdamW when quantized),
//              litgpt/model.py (GPT.forward: x.split(lm_head_chunk_size, dim=1)),
//              litgpt/utils.py (chunked_cross_entropy: no upcast, reduction="none"),
//              litgpt/lora.py (lora_query/lora_value defaults, lora_dropout 0.05),
//              lightning/fabric/wrappers.py (_FabricModule.forward: convert_output).

#include "trace/framework.h"

#include <algorithm>

namespace llmem {

void apply_framework_defaults(Framework f, TrainingSetup* s) {
  s->framework = f;
  if (f == Framework::kHf)
    return;
  // Both build the model in bf16 (torchtune dtype: bf16; LitGPT
  // --precision bf16-true): weights, gradients, optimizer states and LoRA
  // adapters are bf16. Attention is F.scaled_dot_product_attention, no
  // dropout in the decoder, no KV cache in training.
  s->precision = Precision::kBf16;
  s->attention = AttentionImpl::kSdpa;
  s->use_cache = UseCache::kOff;
  s->dropout = 0;
  s->lora.adapter_fp32 = false;
  s->lora.targets = trace::framework_lora_targets(f);
  s->quant.prepare_kbit = false;  // no peft prepare_model_for_kbit_training
  s->quant.block = 64;
  if (f == Framework::kTorchtune) {
    // Recipe configs of the llama2/3 families: loss CEWithChunkedOutputLoss
    // (num_output_chunks 8), lora_dropout 0.0, non-reentrant checkpoint wrappers.
    s->fw.output_chunks = 8;
    s->fw.loss_fp32 = true;
    s->lora.dropout = 0.0;
    s->quant.double_quant = true;  // torchao NF4 quantizes its scalers (scaler_block_size 256)
    // Distributed recipes: training.shard_model, FSDP2 fully_shard (since
    // 2024; recipes at 0217d44c2 / 5cbc1967b used FSDP1: --fsdp-version 1).
    s->parallel.fsdp_version = 2;
    if (s->checkpointing != CheckpointMode::kOff)
      s->checkpointing = CheckpointMode::kNonReentrant;
  } else {
    // bitsandbytes: litgpt's pyproject.toml pinned 0.42.0 until d2ed13c3
    // (2024-12-28), >=0.44 on Linux since (>=0.45.2 at 2026): the defaults'
    // 256-element absmax blocks and no MatMul4Bit input kept on the graph;
    // validate restores 0.42.0's for the 2024 measurements.
    s->fw.lm_head_chunk_tokens = 128;
    s->fw.loss_fp32 = false;
    s->fw.logits_outlive_step = true;
    // lightning/fabric/wrappers.py _FabricModule.forward: output =
    // precision.convert_output(output); HalfPrecision, MixedPrecision,
    // BitsandbytesPrecision and FSDPPrecision all cast floating outputs to
    // torch.get_default_dtype() (plugins/precision/half.py, amp.py,
    // bitsandbytes.py, fsdp.py at Lightning 2.4.0; since PR #17287, 2023-04).
    s->fw.logits_to_fp32 = true;
    s->lora.dropout = 0.05;
    s->quant.double_quant = false;  // --quantize bnb.nf4 (bnb.nf4-dq is the double-quant one)
    // lightning/fabric/plugins/precision/bitsandbytes.py (_Linear4bit.quantize,
    // unchanged from 2023-09 to 2026): w = weight.to(dtype=torch.half) is what
    // quantize_4bit sees, so every QuantState records fp16.
    s->quant.fp16_quant_state = true;
    s->parallel.fsdp_version = 1;  // Fabric FSDPStrategy: FullyShardedDataParallel
  }
}

}  // namespace llmem

namespace llmem::trace {

constexpr int kF32 = 4;
constexpr int kI64 = 8;

std::vector<std::string> framework_lora_targets(Framework f) {
  if (f == Framework::kTorchtune) {
    // lora_attn_modules: ['q_proj', 'v_proj', 'output_proj'], apply_lora_to_mlp: True
    // (recipes/configs/llama3_2/3B_lora_single_device.yaml and the llama3_1 configs).
    std::vector<std::string> t = hf_module_names(f, "q_proj");
    for (const char* n : {"v_proj", "output_proj", "mlp"}) {
      std::vector<std::string> more = hf_module_names(f, n);
      t.insert(t.end(), more.begin(), more.end());
    }
    return t;
  }
  if (f == Framework::kLitgpt) {
    std::vector<std::string> t = hf_module_names(f, "query");  // lora_query: True
    std::vector<std::string> v = hf_module_names(f, "value");  // lora_value: True
    t.insert(t.end(), v.begin(), v.end());
    return t;
  }
  return {};
}

std::vector<std::string> hf_module_names(Framework f, const std::string& name) {
  // The trace names modules as transformers does; fused projections (falcon,
  // gpt_neox, phi3) take the adapter on the fused module.
  const std::vector<std::string> q = {"q_proj", "query_key_value", "qkv_proj", "c_attn"};
  const std::vector<std::string> k = {"k_proj", "query_key_value", "qkv_proj", "c_attn"};
  const std::vector<std::string> v = {"v_proj", "query_key_value", "qkv_proj", "c_attn"};
  const std::vector<std::string> o = {"o_proj", "dense", "out_proj", "c_proj"};
  const std::vector<std::string> mlp = {"gate_proj", "up_proj", "down_proj",     "gate_up_proj",
                                        "fc1",       "fc2",     "dense_h_to_4h", "dense_4h_to_h"};
  if (f == Framework::kTorchtune) {
    if (name == "q_proj")
      return q;
    if (name == "k_proj")
      return k;
    if (name == "v_proj")
      return v;
    if (name == "output_proj")
      return o;
    if (name == "mlp")
      return mlp;
    if (name == "output")
      return {"lm_head"};
  } else if (f == Framework::kLitgpt) {
    if (name == "query")
      return q;
    if (name == "key")
      return k;
    if (name == "value")
      return v;
    if (name == "projection")
      return o;
    if (name == "mlp")
      return mlp;
    if (name == "head")
      return {"lm_head"};
  }
  return {name};
}

std::vector<Tid> chunked_head(Graph& g, Tid hn, int64_t width, int64_t batch, int64_t seq,
                              const FrameworkSetup& fw, const std::function<Tid(Tid)>& head) {
  // Slice lengths along the sequence: tensor_split gives the first seq % n
  // slices one more token; split(size) gives full slices and a shorter last one.
  std::vector<int64_t> lengths;
  if (fw.output_chunks > 0) {
    int64_t n = std::min(fw.output_chunks, seq);
    for (int64_t i = 0; i < n; ++i)
      lengths.push_back(seq / n + (i < seq % n ? 1 : 0));
  } else {
    int64_t size = fw.lm_head_chunk_tokens;
    for (int64_t start = 0; start < seq; start += size)
      lengths.push_back(std::min(size, seq - start));
  }
  std::vector<Tid> out;
  for (int64_t len : lengths) {
    Tid slice = g.view(hn, batch * len * width);
    out.push_back(head(slice));
    g.release(slice);
  }
  return out;
}

namespace {

// One slice's F.cross_entropy run eagerly: the summed loss of its tokens.
Tid eager_chunk_loss(Graph& g, Tid c, int64_t rows, int64_t vocab, int64_t batch, Tid labels,
                     const FrameworkSetup& fw, bool last) {
  Tid x;
  if (fw.loss_fp32 && g.elem(c) != kF32) {
    x = g.op(g.numel(c), kF32, {c}, {}, Component::kLogitsLoss);  // logits.float()
  } else if (last && batch > 1) {
    // LitGPT: logits[-1][..., :-1, :] is strided when b > 1, so
    // reshape(-1, vocab) copies it.
    rows -= batch;
    x = g.op(rows * vocab, g.elem(c), {c}, {}, Component::kLogitsLoss);
  } else {
    if (last)
      rows -= batch;  // the shifted-out last position (a view when b == 1)
    g.retain(c);
    x = c;
  }
  // F.cross_entropy = log_softmax (saves its output) + nll_loss (saves the target).
  Tid lsm = g.op(rows * vocab, g.elem(x), {x}, {}, Component::kLogitsLoss, {}, 0, true);
  g.release(x);
  Tid nll = g.op(fw.loss_fp32 ? 1 : rows, g.elem(lsm), {lsm}, {labels}, Component::kLogitsLoss);
  g.release(lsm);
  if (fw.loss_fp32)
    return nll;
  // reduction="none": the per-token losses are cat'ed and summed
  Tid part = g.op(1, g.elem(nll), {nll}, {}, Component::kLogitsLoss);
  g.release(nll);
  return part;
}

}  // namespace

Tid compiled_cross_entropy(Graph& g, Tid logits, Tid labels, int64_t rows) {
  return g.op(1, kF32, {logits}, {logits, labels}, Component::kLogitsLoss,
              {{rows, kF32}, {rows, kF32}});
}

Tid chunked_loss(Graph& g, const std::vector<Tid>& logits, int64_t batch, int64_t seq,
                 int64_t vocab, const FrameworkSetup& fw) {
  // Labels: torchtune hstack's labels[..., 1:] with an ignore column (a new
  // [b, s] int64); LitGPT reshapes targets[..., 1:] per slice (copies of a
  // strided view). Either way about one int64 per token.
  Tid labels = g.leaf(batch * seq, kI64, Component::kLogitsLoss, false);
  Tid total = kNone;
  for (size_t i = 0; i < logits.size(); ++i) {
    Tid c = logits[i];
    int64_t rows = g.numel(c) / vocab;
    Tid part;
    if (fw.compile_loss && fw.loss_fp32) {
      // torchtune compile_loss compiles compute_cross_entropy alone, the
      // .float() inside it: the chunk is kept in bf16, its gradient bf16.
      part = compiled_cross_entropy(g, c, labels, rows);
    } else {
      part = eager_chunk_loss(g, c, rows, vocab, batch, labels, fw, i + 1 == logits.size());
    }
    if (total == kNone) {
      total = part;
    } else {
      Tid sum =
          g.op(1, std::max(g.elem(total), g.elem(part)), {total, part}, {}, Component::kLogitsLoss);
      g.release(total);
      g.release(part);
      total = sum;
    }
  }
  g.release(labels);
  Tid loss = g.op(1, g.elem(total), {total}, {}, Component::kLogitsLoss);  // / non-ignored tokens
  g.release(total);
  return loss;
}

Tid flat_chunked_loss(Graph& g, Tid logits, int64_t batch, int64_t seq, int64_t vocab,
                      int64_t chunk) {
  int64_t rows = batch * (seq - 1);
  Tid flat;
  if (batch > 1) {
    flat = g.op(rows * vocab, g.elem(logits), {logits}, {}, Component::kLogitsLoss);
  } else {
    g.retain(logits);  // a contiguous slice: reshape is a view
    flat = logits;
  }
  Tid labels = g.leaf(rows, kI64, Component::kLogitsLoss, false);
  Tid total = kNone;
  for (int64_t start = 0; start < rows; start += chunk) {
    int64_t n = std::min(chunk, rows - start);
    Tid slice = g.view(flat, n * vocab);
    Tid lsm = g.op(n * vocab, g.elem(slice), {slice}, {}, Component::kLogitsLoss, {}, 0, true);
    g.release(slice);
    Tid nll = g.op(n, g.elem(lsm), {lsm}, {labels}, Component::kLogitsLoss);
    g.release(lsm);
    Tid part = g.op(1, g.elem(nll), {nll}, {}, Component::kLogitsLoss);
    g.release(nll);
    if (total == kNone) {
      total = part;
    } else {
      Tid sum = g.op(1, g.elem(total), {total, part}, {}, Component::kLogitsLoss);
      g.release(total);
      g.release(part);
      total = sum;
    }
  }
  g.release(flat);
  g.release(labels);
  Tid loss = g.op(1, g.elem(total), {total}, {}, Component::kLogitsLoss);
  g.release(total);
  return loss;
}

}  // namespace llmem::trace
