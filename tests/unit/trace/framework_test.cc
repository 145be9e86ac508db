// Copyright 2026 The llmem Authors.
// The torchtune and LitGPT profiles: each behaviour against the bytes it
// should move, and the recipe reader.

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "llmem/error.h"
#include "llmem/estimate.h"
#include "llmem/gpu.h"
#include "llmem/model.h"
#include "llmem/recipe.h"

#include "trace/events.h"
#include "trace/program.h"

namespace llmem {
namespace {

constexpr int64_t kBf16 = 2;

TrainingSetup torchtune_setup(int64_t batch, int64_t seq) {
  TrainingSetup s = test_util::cpu_run(Framework::kTorchtune, FinetuneMode::kFull, batch, seq);
  return s;
}

using test_util::max_live;
using test_util::max_live_in_steps;

TEST(Framework, ChunkedCrossEntropyLowersTheLossPeakByTwoMinusFourOverKLogits) {
  // torchtune: unchunked, the fp32 logits (4TV) and the saved fp32
  // log-softmax (4TV) coexist; with k chunks the bf16 slices (2TV), every
  // chunk's saved log-softmax (4TV) and one fp32 slice (4TV/k) do.
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  TrainingSetup s = torchtune_setup(1, 2048);
  s.finetune = FinetuneMode::kLora;
  s.fw.output_chunks = 0;
  Estimate whole = estimate(m, s, find_gpu("A100-80GB"));
  s.fw.output_chunks = 8;
  Estimate chunked = estimate(m, s, find_gpu("A100-80GB"));
  auto loss = static_cast<size_t>(Phase::kLoss);
  int64_t tv = s.batch * s.seq * m.vocab_size;
  int64_t expected = 2 * tv - 4 * tv / 8;
  auto saved = static_cast<int64_t>(whole.phase_peaks[loss]) -
               static_cast<int64_t>(chunked.phase_peaks[loss]);
  EXPECT_NEAR(static_cast<double>(saved), static_cast<double>(expected), 1 << 20);
}

TrainingSetup litgpt_setup(int64_t batch, int64_t seq, FinetuneMode mode) {
  TrainingSetup s;
  apply_framework_defaults(Framework::kLitgpt, &s);
  s.device = Device::kCpu;  // exact sizes
  s.batch = batch;
  s.seq = seq;
  s.finetune = mode;
  return s;
}

int64_t widest(const trace::TraceResult& t, Component c) {
  int64_t w = 0;
  for (const trace::Event& e : t.events) {
    if (e.alloc && e.component == c)
      w = std::max(w, e.bytes);
  }
  return w;
}

TEST(Framework, LitgptLossStaysInTheLogitsDtype) {
  // chunked_cross_entropy runs F.cross_entropy on the slices in their own
  // dtype (no upcast): without Fabric's output conversion the widest loss
  // tensor is one 128-token bf16 slice of log-probabilities.
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  TrainingSetup s = litgpt_setup(1, 512, FinetuneMode::kLora);
  s.fw.logits_to_fp32 = false;
  EXPECT_EQ(widest(trace::build_trace(m, s), Component::kLogitsLoss), 128 * m.vocab_size * kBf16);
}

TEST(Framework, LitgptFabricReturnsFp32Logits) {
  // _FabricModule.forward: precision.convert_output casts every slice of the
  // logits list to fp32 while the bf16 list is still referenced, and the
  // previous step's (fp32) list lives until `logits = model(...)` rebinds it.
  // So at the end of a steady-state forward two fp32 sets of B*T*V are live,
  // and in the loss one fp32 set plus its fp32 log-softmax.
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  TrainingSetup s = litgpt_setup(1, 512, FinetuneMode::kLora);
  EXPECT_TRUE(s.fw.logits_to_fp32);
  trace::TraceResult fabric = trace::build_trace(m, s);
  int64_t tv = s.batch * s.seq * m.vocab_size;
  EXPECT_EQ(widest(fabric, Component::kLogitsLoss), 128 * m.vocab_size * 4);
  EXPECT_NEAR(static_cast<double>(max_live(fabric.events, Component::kLogitsLoss)),
              static_cast<double>(2 * tv * 4), 1 << 20);
  // The step's peak rises by at least one more fp32 set of logits over the
  // bf16-only trace (an extra 2TV at the forward's end alone: 4 + 4 + 2
  // against 2 + 2 bytes per logit).
  Estimate with = estimate(m, s, find_gpu("A100-80GB"));
  s.fw.logits_to_fp32 = false;
  Estimate without = estimate(m, s, find_gpu("A100-80GB"));
  EXPECT_GE(static_cast<int64_t>(with.peak.allocated_bytes) -
                static_cast<int64_t>(without.peak.allocated_bytes),
            4 * tv);
}

TEST(Framework, LitgptFusedQkvSharesOneLoraDropout) {
  // LoRAQKVLinear applies lora_dropout once to the input of all enabled q/k/v
  // adapters; separate q_proj / v_proj adapters (the hf profile) each keep a
  // dropout output and mask. Adding v to q costs LitGPT no [T, C] tensor.
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  auto forward_peak = [&](Framework f, std::vector<std::string> targets) {
    TrainingSetup s = test_util::cpu_run(f, FinetuneMode::kLora, 1, 256);
    s.precision = Precision::kBf16;
    s.attention = AttentionImpl::kSdpa;
    s.lora.adapter_fp32 = false;
    s.lora.dropout = 0.05;
    s.lora.rank = 8;
    s.lora.targets = targets;
    return static_cast<int64_t>(
        estimate(m, s, find_gpu("A100-80GB")).phase_peaks[static_cast<size_t>(Phase::kForward)]);
  };
  // CPU dropout: the output and a noise tensor of the input dtype, 4 bytes per element.
  int64_t per_dropout = m.num_layers * 256 * m.hidden_size * 4;
  int64_t hf =
      forward_peak(Framework::kHf, {"q_proj", "v_proj"}) - forward_peak(Framework::kHf, {"q_proj"});
  int64_t litgpt = forward_peak(Framework::kLitgpt, {"q_proj", "v_proj"}) -
                   forward_peak(Framework::kLitgpt, {"q_proj"});
  EXPECT_GE(hf, per_dropout * 9 / 10);
  EXPECT_LT(litgpt, per_dropout / 10);
}

// Tensors of `bytes` allocated in the steady-state forward and freed in its backward.
int kept_for_backward(const trace::TraceResult& t, int64_t bytes) {
  std::vector<int32_t> born;
  int kept = 0;
  for (const trace::Event& e : t.events) {
    if (e.step != 2 || e.bytes != bytes)
      continue;
    if (e.alloc && e.phase == Phase::kForward) {
      born.push_back(e.tensor);
    } else if (!e.alloc && e.phase == Phase::kBackward &&
               std::find(born.begin(), born.end(), e.tensor) != born.end()) {
      ++kept;
    }
  }
  return kept;
}

TEST(Framework, LitgptSdpaKeepsTheFusedQkvOfMultiHeadModels) {
  // With one query per group, LitGPT's q/k/v are views of the fused q|k|v
  // output and SDPA saves v as one: the whole [T, 3C] output lives until
  // backward in every layer. With grouped queries K/V are expanded (copies)
  // and the fused output dies in forward.
  TrainingSetup s = litgpt_setup(1, 128, FinetuneMode::kLora);
  s.lora.rank = 8;
  ModelSpec mha = load_model("meta-llama/Llama-2-7b-hf");
  ASSERT_EQ(mha.layers.front().attention.num_heads, mha.layers.front().attention.num_kv_heads);
  EXPECT_EQ(kept_for_backward(trace::build_trace(mha, s), 128 * 3 * mha.hidden_size * kBf16),
            mha.num_layers);
  ModelSpec gqa = load_model("meta-llama/Llama-3.2-1B");
  const AttentionSpec& a = gqa.layers.front().attention;
  int64_t fused = 128 * (a.q_width() + a.k_width() + a.v_width()) * kBf16;
  EXPECT_EQ(kept_for_backward(trace::build_trace(gqa, s), fused), 0);
}

TEST(Framework, LitgptChunkedHeadSoftCapFollowsTheLitgptVersion) {
  // Since litgpt #1891 every 128-token chunk is capped: x / cap, tanh (saved),
  // * cap, three more chunk-sized tensors; before it the chunk went uncapped.
  ModelSpec m = load_model("google/gemma-2-2b");
  ASSERT_GT(m.final_logit_softcapping, 0);
  TrainingSetup s = litgpt_setup(1, 256, FinetuneMode::kLora);
  s.lora.rank = 8;
  auto chunk_sized = [&](bool cap) {
    s.fw.chunked_logit_softcap = cap;
    int n = 0;
    for (const trace::Event& e : trace::build_trace(m, s).events) {
      if (e.step == 2 && e.alloc && e.phase == Phase::kForward &&
          e.bytes == 128 * m.vocab_size * kBf16)
        ++n;
    }
    return n;
  };
  EXPECT_EQ(chunk_sized(true) - chunk_sized(false), 3 * 2);
}

TEST(Framework, LitgptSplitsPhi3GateUpIntoFc1AndFc2) {
  // LitGPT's Phi-3 config uses LLaMAMLP: fc_1 and fc_2 are LoRALinear each,
  // lora_A [r, C] apiece, against transformers' one gate_up_proj adapter.
  ModelSpec m = load_model("microsoft/Phi-3-mini-4k-instruct");
  int64_t c = m.hidden_size;
  int64_t inter = m.layers.front().mlp.intermediate_size;
  auto trainable = [&](Framework f) {
    TrainingSetup s = test_util::cpu_run(f, FinetuneMode::kLora, 1, 64);
    s.lora.rank = 8;
    s.lora.targets = {"gate_up_proj"};
    return estimate(m, s, find_gpu("A100-80GB")).trainable_params;
  };
  EXPECT_EQ(trainable(Framework::kLitgpt), m.num_layers * 2 * 8 * (c + inter));
  EXPECT_EQ(trainable(Framework::kHf), m.num_layers * 8 * (c + 2 * inter));
}

TEST(Framework, LitgptQloraDequantizesToFp16ThenCastsToTheComputeDtype) {
  // Fabric quantizes weight.to(torch.half), so MatMul4Bit's
  // dequantize_4bit(B).to(bf16) holds an fp16 and a bf16 copy of the widest
  // quantized weight at once: LitGPT converts lm_head too (128256 x 2048).
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  TrainingSetup s;
  apply_framework_defaults(Framework::kLitgpt, &s);
  s.device = Device::kCpu;
  s.batch = 1;
  s.seq = 256;
  s.finetune = FinetuneMode::kQlora;
  s.lora.rank = 8;
  EXPECT_TRUE(s.quant.fp16_quant_state);
  int64_t head = m.vocab_size * m.hidden_size;
  trace::TraceResult fabric = trace::build_trace(m, s);
  EXPECT_EQ(max_live_in_steps(fabric.events, Component::kWeightCopies), 2 * head * kBf16);
  // Quantized from the compute dtype (transformers' Params4bit.cuda), or an
  // fp16 compute dtype: .to() returns the dequantized tensor itself.
  s.quant.fp16_quant_state = false;
  trace::TraceResult plain = trace::build_trace(m, s);
  EXPECT_EQ(max_live_in_steps(plain.events, Component::kWeightCopies), head * kBf16);
  s.quant.fp16_quant_state = true;
  s.precision = Precision::kFp16;
  trace::TraceResult half = trace::build_trace(m, s);
  EXPECT_EQ(max_live_in_steps(half.events, Component::kWeightCopies), head * kBf16);
}

TEST(Framework, LitgptFlashOutputIsCopiedBeforeTheProjection) {
  // LitGPT's q is torch.cat((q_roped, q_pass)): contiguous [b, heads, s, d].
  // PyTorch 2.2+'s flash kernel allocates its output like q (empty_like of
  // q.transpose(1, 2)), so y.transpose(1, 2).reshape(B, T, C) copies one
  // [T, heads * d] bf16 tensor per layer; the memory-efficient kernel's output
  // is [b, s, heads, d] already. Llama-3.2-1B: 16 layers, 32 heads x 64,
  // T = 256 tokens: 256 * 2048 * 2 bytes = 1 MiB per layer.
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  const AttentionSpec& a = m.layers.front().attention;
  int64_t copy = 256 * a.num_heads * a.head_dim * kBf16;
  ASSERT_EQ(copy, 1 << 20);
  auto activations = [&](FinetuneMode mode, AttentionImpl kernel, int torch, bool old_bnb) {
    TrainingSetup s = litgpt_setup(1, 256, mode);
    s.device = Device::kCuda;
    s.attention = kernel;
    s.torch_version = torch;
    s.lora.rank = 8;
    s.fw.bnb_matmul_keeps_input = old_bnb;
    return max_live_in_steps(trace::build_trace(m, s).events, Component::kActivations);
  };
  auto extra = [&](FinetuneMode mode, int torch = 204, bool old_bnb = false) {
    return activations(mode, AttentionImpl::kSdpaFlash, torch, old_bnb) -
           activations(mode, AttentionImpl::kSdpaEfficient, torch, old_bnb);
  };
  // QLoRA with bitsandbytes before 0.43.2 (litgpt pinned 0.42.0 until
  // 2024-12): MatMul4Bit keeps the copy on ctx.tensors, so the forward's end
  // holds all 16 (the previous step's graph holds the same count under
  // either kernel: copies, or the outputs themselves). From 0.43.2 on the
  // copy dies inside its layer, as under LoRA.
  EXPECT_EQ(extra(FinetuneMode::kQlora, 204, true), 16 * copy);
  EXPECT_EQ(extra(FinetuneMode::kQlora), 0);
  // Full fine-tuning: the trainable proj saves its input, the copy.
  EXPECT_EQ(extra(FinetuneMode::kFull), 16 * copy);
  // LoRA: a frozen proj saves nothing; the copy dies inside its layer.
  EXPECT_EQ(extra(FinetuneMode::kLora), 0);
  // PyTorch 2.1's flash path (q_t.reshape to [b * s, heads, d]) wrote a
  // [b, s, heads, d] output: no copy.
  EXPECT_EQ(extra(FinetuneMode::kQlora, 201), 0);
}

// transformers' partial rotary builds q with torch.cat((q_rot, q_pass)) too,
// so under PyTorch 2.2+ flash attn_output.transpose(1, 2).contiguous()
// copies, and a trainable dense saves the copy: Phi-2, 32 layers, h 2560,
// 512 tokens: 32 x 512 x 2560 x 2 bytes. Full rotary (Llama) q stays
// [b, s, heads, d] in memory: no copy.
TEST(Framework, HfPartialRotaryFlashOutputIsCopied) {
  auto extra = [](const std::string& name) {
    ModelSpec m = load_model(name);
    auto activations = [&](AttentionImpl kernel) {
      TrainingSetup s;
      s.batch = 1;
      s.seq = 512;
      s.precision = Precision::kBf16Mixed;
      s.attention = kernel;
      return max_live_in_steps(trace::build_trace(m, s).events, Component::kActivations);
    };
    return activations(AttentionImpl::kSdpaFlash) - activations(AttentionImpl::kSdpaEfficient);
  };
  EXPECT_EQ(extra("microsoft/phi-2"), int64_t{32} * 512 * 2560 * 2);
  EXPECT_EQ(extra("meta-llama/Llama-3.2-1B"), 0);
}

TEST(Framework, LitgptPagedAdamWKeepsStatesOfSmallTensorsOnTheDevice) {
  // bnb get_state_buffer pages tensors of 1e5 elements or more; smaller ones
  // get fp32 torch.zeros_like states the allocator counts. LitGPT fuses the
  // q/v adapters of a layer: lora_A [2r, 2048], lora_B [2048 + 512, r].
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  TrainingSetup s;
  apply_framework_defaults(Framework::kLitgpt, &s);
  s.device = Device::kCpu;
  s.batch = 1;
  s.seq = 64;
  s.finetune = FinetuneMode::kQlora;
  auto states = [&](int64_t rank) {
    s.lora.rank = rank;
    return max_live(trace::build_trace(m, s).events, Component::kOptimizerStates);
  };
  int64_t kv = m.layers.front().attention.v_width();  // 512
  // r = 8: A 32768 and B 20480 elements, both on the device (2 fp32 states).
  EXPECT_EQ(states(8), m.num_layers * 2 * 4 * (2 * 8 * m.hidden_size + (m.hidden_size + kv) * 8));
  // r = 32: A (131072) is paged, B (81920) is not, though each of the four
  // unfused adapters would be under the threshold.
  EXPECT_EQ(states(32), m.num_layers * 2 * 4 * ((m.hidden_size + kv) * 32));
  // r = 64: both paged, nothing counted.
  EXPECT_EQ(states(64), 0);
}

TEST(Framework, PagedAdamW8bitPagesItsStatesWithoutTheFlag) {
  // --optimizer paged-adamw-8bit (the Trainer's optim="paged_adamw_8bit") is
  // bnb.optim.PagedAdamW8bit: what stays on the device is the same with or
  // without --paged-optimizer, and less than the non-paged AdamW8bit's states.
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  TrainingSetup s = test_util::cpu_run(Framework::kHf, FinetuneMode::kFull, 1, 64);
  auto states = [&](OptimizerKind k, bool flag) {
    s.optimizer = k;
    s.fw.paged_optimizer = flag;
    return max_live(trace::build_trace(m, s).events, Component::kOptimizerStates);
  };
  int64_t paged = states(OptimizerKind::kPagedAdamW8bit, false);
  EXPECT_EQ(paged, states(OptimizerKind::kPagedAdamW8bit, true));
  EXPECT_LT(paged, states(OptimizerKind::kAdamW8bit, false) / 10);
}

// torchtune optimizer_in_bwd (training/_optim_in_bwd / register_optim_in_bwd_hooks
// at 1814feb) steps each parameter in its post-accumulate-grad hook and frees
// its gradient. Llama-3.2-1B ties lm_head to the embedding: that weight's
// AccumulateGrad node runs once, after the embedding's backward at the very
// end, so the head's gradient (bf16 [128256, 2048]) waits through all of
// backward while every other weight is stepped and freed one at a time.
TEST(Framework, OptimizerInBackwardHoldsTheTiedGradientThroughBackward) {
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  TrainingSetup s = torchtune_setup(1, 256);
  s.fw.output_chunks = 8;
  trace::TraceResult plain = trace::build_trace(m, s);
  s.fw.optimizer_in_bwd = true;
  trace::TraceResult in_bwd = trace::build_trace(m, s);
  int64_t total = 0;
  for (const TensorSpec& t : m.tensors) {
    if (t.tied_to.empty())
      total += t.numel * kBf16;
  }
  EXPECT_EQ(max_live(plain.events, Component::kGradients), total);
  int64_t tied = int64_t{128256} * 2048 * kBf16;
  int64_t mlp = int64_t{2048} * 8192 * kBf16;  // the largest other weight
  EXPECT_EQ(max_live(in_bwd.events, Component::kGradients), tied + mlp);
  // Each parameter still gets its two AdamW states, the tied one once.
  EXPECT_EQ(max_live(in_bwd.events, Component::kOptimizerStates), 2 * total);
}

// bitsandbytes 0.44.1 AdamW8bit (Optimizer2State.init_state), one optimizer
// per parameter under optimizer_in_bwd: Llama-3.2-1B's 2048-element norms are
// under min_8bit_size (4096) and keep two fp32 states; every other tensor gets
// two uint8 states plus two fp32 absmax of ceil(n / 256) blocks. The tied
// embedding/lm_head gets its states once.
TEST(Framework, AdamW8bitStatesFollowBitsandbytesInitState) {
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  TrainingSetup s = torchtune_setup(1, 256);
  s.fw.output_chunks = 8;
  s.fw.optimizer_in_bwd = true;
  s.optimizer = OptimizerKind::kAdamW8bit;
  int64_t h = 2048;
  int64_t kv = 512;
  int64_t ffn = 8192;
  int64_t vocab = 128256;
  auto eight_bit = [](int64_t n) { return 2 * n + 2 * 4 * ((n + 255) / 256); };
  int64_t layer = 2 * eight_bit(h * h) + 2 * eight_bit(kv * h) + 3 * eight_bit(h * ffn) +
                  2 * (2 * 4 * h);  // q, o; k, v; gate, up, down; two norms
  int64_t expected = 16 * layer + eight_bit(vocab * h) + 2 * 4 * h;  // + embedding, final norm
  EXPECT_EQ(max_live(trace::build_trace(m, s).events, Component::kOptimizerStates), expected);
}

// bitsandbytes PagedAdamW8bit under optimizer_in_bwd (torchtune's
// 3B_full_single_device default at 1814feb): get_state_buffer pages only
// tensors of 1e5 elements or more, and the blockwise absmax are plain device
// tensors (bnb 0.44.1 Optimizer2State.init_state). Llama-3.2-1B: each 2048
// norm keeps two fp32 states; every other tensor leaves two fp32 absmax of
// ceil(n / 256) on the device.
TEST(Framework, PagedAdamW8bitInBackwardKeepsAbsmaxAndSmallStatesOnTheDevice) {
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  TrainingSetup s = torchtune_setup(1, 256);
  s.fw.output_chunks = 8;
  s.fw.optimizer_in_bwd = true;
  s.fw.paged_optimizer = true;
  s.optimizer = OptimizerKind::kPagedAdamW8bit;
  int64_t h = 2048;
  int64_t kv = 512;
  int64_t ffn = 8192;
  int64_t vocab = 128256;
  auto absmax = [](int64_t n) { return 2 * 4 * ((n + 255) / 256); };
  int64_t layer = 2 * absmax(h * h) + 2 * absmax(kv * h) + 3 * absmax(h * ffn) + 2 * (2 * 4 * h);
  int64_t expected = 16 * layer + absmax(vocab * h) + 2 * 4 * h;
  EXPECT_EQ(max_live(trace::build_trace(m, s).events, Component::kOptimizerStates), expected);
}

// torchtune's MultiHeadAttention expands grouped K/V to every query head
// (expand + reshape or flatten: copies) before SDPA, which saves them; HF with
// torch >= 2.5 and no mask passes enable_gqa instead. Layer 0's forward thus
// allocates two more [b, s, heads, d] tensors under torchtune.
TEST(Framework, TorchtuneCopiesGroupedKvForSdpa) {
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");  // 32 heads, 8 k/v heads, d 64
  const AttentionSpec& a = m.layers.front().attention;
  ASSERT_NE(a.num_heads, a.num_kv_heads);
  TrainingSetup tt = torchtune_setup(1, 128);
  TrainingSetup hf = tt;
  hf.framework = Framework::kHf;
  hf.torch_version = 205;
  int64_t full = 1 * 128 * a.num_heads * a.head_dim * kBf16;
  auto count = [&](const TrainingSetup& s) {
    trace::TraceResult t = trace::build_trace(m, s);
    int n = 0;
    for (const trace::Event& e : t.events) {
      n += e.alloc && e.step == 1 && e.phase == Phase::kForward && e.layer == 0 &&
           e.bytes == full && e.component == Component::kActivations;
    }
    return n;
  };
  EXPECT_EQ(count(tt) - count(hf), 2);
  hf.torch_version = 204;  // transformers' repeat_kv before torch 2.5
  EXPECT_EQ(count(tt), count(hf));
}

TEST(Framework, ActivationOffloadingMovesCheckpointInputsOffTheGpu) {
  // With per-layer checkpointing, forward saves each layer's input (T×h
  // bf16); offloading keeps only the last five (OffloadActivations'
  // max_fwd_stash_size) on the GPU when forward ends.
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  TrainingSetup s = torchtune_setup(2, 1024);
  s.checkpointing = CheckpointMode::kNonReentrant;
  auto activations_at_loss = [&](bool offload) {
    s.fw.activation_offload = offload;
    trace::TraceResult t = trace::build_trace(m, s);
    int64_t live = 0;
    for (const trace::Event& e : t.events) {
      if (e.phase == Phase::kLoss)
        return live;
      if (e.component == Component::kActivations)
        live += e.alloc ? e.bytes : -e.bytes;
    }
    return live;
  };
  int64_t kept = activations_at_loss(false);
  int64_t offloaded = activations_at_loss(true);
  int64_t layer_input = s.batch * s.seq * m.hidden_size * kBf16;
  EXPECT_EQ(kept - offloaded, (m.num_layers - 5) * layer_input);
}

TEST(Framework, OffloadingNeedsCheckpointing) {
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  TrainingSetup s = torchtune_setup(1, 128);
  s.fw.activation_offload = true;
  EXPECT_THROW(trace::build_trace(m, s), Error);
}

/// Activation bytes live in the first step when its loss phase begins.
int64_t activations_before_loss(const trace::TraceResult& t) {
  int64_t live = 0;
  for (const trace::Event& e : t.events) {
    if (e.step == 1 && e.phase == Phase::kLoss)
      return live;
    if (e.step == 1 && e.component == Component::kActivations)
      live += e.alloc ? e.bytes : -e.bytes;
  }
  return live;
}

// torchtune compile=True, per layer (docs/frameworks.md, "torch.compile"):
// each norm keeps its bf16 input (2Th) instead of an fp32 copy (4Th) and the
// bf16 normalized value (2Th), the per-row fp32 rsqrt in both; the gated MLP
// keeps gate, up and their product instead of gate, act(gate), up and the
// product (one 2TI fewer). Over L layers: L·(2·4Th + 2TI) bytes fewer.
TEST(Framework, CompiledLayersKeepWhatThePartitionerSaves) {
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");  // 16 layers, h 2048, I 8192
  TrainingSetup s = torchtune_setup(1, 128);
  s.fw.output_chunks = 0;
  auto activations_after_forward = [&](bool compiled) {
    s.fw.compile = compiled;
    return activations_before_loss(trace::build_trace(m, s));
  };
  int64_t eager = activations_after_forward(false);
  int64_t compiled = activations_after_forward(true);
  int64_t t = s.batch * s.seq;
  int64_t h = m.hidden_size;
  int64_t inter = m.layers.front().mlp.intermediate_size;
  int64_t per_layer = 2 * 4 * t * h + 2 * t * inter;
  EXPECT_EQ(eager - compiled, m.num_layers * per_layer);
}

// training.compile_loss: the compiled cross-entropy saves its fp32 input and
// two per-row statistics, never a log-softmax; with CEWithChunkedOutputLoss
// only compute_cross_entropy is compiled, so no fp32 copy of a chunk exists
// and the loss allocates nothing wider than the int64 labels (the chunks and
// their gradients are the head's activations).
TEST(Framework, CompiledLossKeepsNoLogSoftmax) {
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  TrainingSetup s = torchtune_setup(2, 256);
  s.finetune = FinetuneMode::kLora;
  int64_t tv = s.batch * s.seq * m.vocab_size;
  auto widest_loss = [&](bool compiled, int64_t chunks) {
    s.fw.compile = s.fw.compile_loss = compiled;
    s.fw.output_chunks = chunks;
    trace::TraceResult t = trace::build_trace(m, s);
    return widest(t, Component::kLogitsLoss);
  };
  EXPECT_EQ(widest_loss(false, 8), 4 * tv / 8);  // logits_chunk.float()
  EXPECT_EQ(widest_loss(true, 8), s.batch * s.seq * 8);
  s.fw.output_chunks = 0;
  auto loss_peak = [&](bool compiled) {
    s.fw.compile = s.fw.compile_loss = compiled;
    trace::TraceResult t = trace::build_trace(m, s);
    return max_live_in_steps(t.events, Component::kLogitsLoss);
  };
  // Eager: the fp32 logits and the saved fp32 log-softmax (8TV) with the
  // shifted labels; compiled: the fp32 logits, the labels and two fp32
  // statistics per row (4TV + 8T), give or take a few scalars.
  int64_t t = s.batch * s.seq;
  EXPECT_NEAR(static_cast<double>(loss_peak(false) - loss_peak(true)),
              static_cast<double>(4 * tv - 8 * t), 64);
  // Compiled layers with an eager loss (torchtune 0217d44c2, or a recipe's
  // compile: {loss: False}): the loss is the eager one.
  s.fw.compile = true;
  s.fw.compile_loss = false;
  trace::TraceResult layers_only = trace::build_trace(m, s);
  EXPECT_EQ(max_live_in_steps(layers_only.events, Component::kLogitsLoss), loss_peak(false));
  // full_finetune_single_device (1814feb) calls training.compile_loss(self._loss_fn)
  // and drops its result: compile_loss compiles CEWithChunkedOutputLoss's
  // compute_cross_entropy in place, but returns nn.CrossEntropyLoss wrapped
  // anew. Unchunked, the full recipe's loss is the eager one, whose widest
  // tensor is the saved fp32 log-softmax (4TV); chunked, it is compiled (the
  // widest loss tensor is the 8-byte-per-row statistics). The LoRA
  // single-device recipe keeps the compiled module.
  EXPECT_LT(widest_loss(true, 0), 4 * tv);
  s.finetune = FinetuneMode::kFull;
  EXPECT_EQ(widest_loss(true, 0), 4 * tv);
  EXPECT_EQ(loss_peak(true), loss_peak(false));
  EXPECT_EQ(widest_loss(true, 8), s.batch * s.seq * 8);
}

// Liger kernels (docs/frameworks.md, "Liger"): each RMSNorm keeps its input
// (2Th in bf16) and the fp32 rstd where the eager one keeps an fp32 copy (4Th)
// and the bf16 normalized value (2Th); SwiGLU keeps gate, up and (for
// down_proj) the product, not act(gate) too. Per layer 2·4Th + 2TI bytes
// fewer, and 4Th for the final norm; RoPE in place adds nothing.
TEST(Framework, LigerLayersKeepWhatTheirKernelsSave) {
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");  // 16 layers, h 2048, I 8192
  TrainingSetup s = test_util::cpu_run(Framework::kHf, FinetuneMode::kFull, 1, 128);
  s.precision = Precision::kBf16;
  auto activations_after_forward = [&](bool liger) {
    s.fw.liger = liger;
    return activations_before_loss(trace::build_trace(m, s));
  };
  int64_t eager = activations_after_forward(false);
  int64_t liger = activations_after_forward(true);
  int64_t t = s.batch * s.seq;
  int64_t h = m.hidden_size;
  int64_t inter = m.layers.front().mlp.intermediate_size;
  // Plus the eager head's bf16 logits (2TV), made in forward; Liger makes none.
  EXPECT_EQ(eager - liger,
            m.num_layers * (2 * 4 * t * h + 2 * t * inter) + 4 * t * h + 2 * t * m.vocab_size);
}

// The fused linear cross-entropy never materializes the logits: the widest
// loss tensor is one chunk of next_pow2(ceil(T / ceil(V / H))) rows of
// logits; training the head adds grad_weight and, for a moment per chunk,
// mm(...) and its fp32 copy ([V, H] each). Backward allocates no gradient
// for the hidden states or the head: both were computed in forward.
TEST(Framework, LigerFusedLinearCrossEntropyKeepsOneChunkOfLogits) {
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");  // V 128256, h 2048, tied head
  TrainingSetup s = test_util::cpu_run(Framework::kHf, FinetuneMode::kLora, 2, 256);
  s.precision = Precision::kBf16;
  s.fw.liger = true;
  int64_t t = s.batch * s.seq;
  int64_t v = m.vocab_size;
  int64_t h = m.hidden_size;
  int64_t inc = (v + h - 1) / h;  // 63
  int64_t chunk = 16;             // next_pow2(ceil(512 / 63) = 9)
  ASSERT_EQ(inc, 63);
  trace::TraceResult lora = trace::build_trace(m, s);
  EXPECT_EQ(widest(lora, Component::kLogitsLoss), chunk * v * kBf16);
  // Live at once in the loss: the labels (padded int64 freed before the rest),
  // grad_input (2Th), the fp32 per-token loss and bool mask, one chunk of
  // logits and the chunk's grad_input temporary.
  int64_t loss_live = 8 * t + 2 * t * h + 4 * t + t + chunk * v * kBf16;
  EXPECT_NEAR(static_cast<double>(max_live_in_steps(lora.events, Component::kLogitsLoss)),
              static_cast<double>(loss_live), 64);
  s.finetune = FinetuneMode::kFull;
  trace::TraceResult full = trace::build_trace(m, s);
  EXPECT_EQ(widest(full, Component::kTemporaries), 4 * v * h);  // mm(...).float()
  EXPECT_EQ(widest(full, Component::kLogitsLoss), chunk * v * kBf16);
}

// Liger 0.1 as its 2024 Hugging Face example ran it (patched after
// from_pretrained): the eager RMSNorm and MLP stay, RoPE rotates in place (no
// bytes either way) and lce_forward replaces the logits. Its fused
// cross-entropy upcasts each chunk to fp32, the widest loss tensor.
TEST(Framework, Liger2024PatchAfterLoadKeepsTheEagerModules) {
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  TrainingSetup s = test_util::cpu_run(Framework::kHf, FinetuneMode::kFull, 2, 256);
  s.precision = Precision::kBf16;
  int64_t eager = activations_before_loss(trace::build_trace(m, s));
  s.fw.liger = true;
  s.fw.liger_modules = false;
  s.fw.liger_flce_2024 = true;
  trace::TraceResult t = trace::build_trace(m, s);
  int64_t tokens = s.batch * s.seq;
  EXPECT_EQ(eager - activations_before_loss(t), 2 * tokens * m.vocab_size);
  int64_t bt = s.batch * (s.seq - 1);  // 510: hidden_states[..., :-1, :].contiguous()
  int64_t chunk = 16;                  // next_pow2(ceil(510 / 63))
  EXPECT_EQ(widest(t, Component::kLogitsLoss), 4 * chunk * m.vocab_size);
  // Live at once, at the second chunk's .to(dtype): the shifted copy, the
  // labels, grad_input, the fp32 loss, the previous chunk's scaled gradient
  // and this chunk's fp32 and bf16 logits (grad_linear is a gradient).
  int64_t h = m.hidden_size;
  int64_t expected = 2 * bt * h + 8 * bt + 2 * bt * h + 4 * bt + (2 + 4 + 2) * chunk * m.vocab_size;
  EXPECT_NEAR(static_cast<double>(max_live_in_steps(t.events, Component::kLogitsLoss)),
              static_cast<double>(expected), 64);
}

// Qwen2 before transformers v4.45 (PR #32617): every Qwen2Attention builds
// its own Qwen2RotaryEmbedding, whose _set_cos_sin_cache registers cos_cached
// and sin_cached of [max_position_embeddings, head_dim] in the default dtype
// at construction (modeling_qwen2.py, v4.43.3). Qwen2.5-7B: 28 layers, head
// 128, 131072 positions, so 28 * 2 * 131072 * 128 elements = 64 MiB per
// layer in bf16 (1.75 GiB), twice that for a model built in fp32. Llama's
// rotary embedding (v4.43) keeps only inv_freq.
TEST(Framework, Qwen2BeforeTransformers445KeepsACosSinTablePerLayer) {
  ModelSpec qwen = load_model("Qwen/Qwen2.5-7B");
  ASSERT_EQ(qwen.num_layers, 28);
  ASSERT_EQ(qwen.max_position_embeddings, 131072);
  ASSERT_EQ(qwen.layers.front().attention.head_dim, 128);
  auto inputs = [](const ModelSpec& m, Precision p, int version) {
    TrainingSetup s = test_util::cpu_run(Framework::kHf, FinetuneMode::kLora, 1, 64);
    s.precision = p;
    s.transformers_version = version;
    return max_live(trace::build_trace(m, s).events, Component::kInputs);
  };
  const int64_t elems = int64_t{28} * 2 * 131072 * 128;
  // Loaded with torch_dtype=bfloat16: bf16 tables.
  EXPECT_EQ(inputs(qwen, Precision::kBf16, 443) - inputs(qwen, Precision::kBf16, 445), elems * 2);
  EXPECT_EQ(elems * 2, int64_t{1792} << 20);
  // bf16-mixed on one GPU: the model was built in fp32, and so were the tables.
  EXPECT_EQ(inputs(qwen, Precision::kBf16Mixed, 443) - inputs(qwen, Precision::kBf16Mixed, 445),
            elems * 4);
  ModelSpec llama = load_model("meta-llama/Llama-3.2-1B");
  EXPECT_EQ(inputs(llama, Precision::kBf16, 443), inputs(llama, Precision::kBf16, 445));
}

// Under FSDP with mixed precision accelerate's MixedPrecision(buffer_dtype=
// bf16) makes the tables bf16 on every rank, whole (buffers are not sharded):
// the Qwen2-7B rows of Liger's example (transformers 4.43.3) carry 1.75 GiB.
TEST(Framework, Qwen2RotaryTablesAreWholeOnEveryFsdpRank) {
  ModelSpec qwen = load_model("Qwen/Qwen2.5-7B");
  TrainingSetup s;
  s.batch = 1;
  s.seq = 256;
  s.precision = Precision::kBf16Mixed;
  s.checkpointing = CheckpointMode::kNonReentrant;
  s.parallel.method = Method::kFsdp;
  s.parallel.dp = 4;
  s.transformers_version = 445;
  Estimate now = estimate(qwen, s, find_gpu("A100-80GB"));
  s.transformers_version = 443;
  Estimate then = estimate(qwen, s, find_gpu("A100-80GB"));
  auto inputs = [](const Estimate& e) {
    return e.peak.components[static_cast<size_t>(Component::kInputs)];
  };
  EXPECT_EQ(inputs(then) - inputs(now), uint64_t{1792} << 20);
}

// The per-layer position tables of older transformers releases (the
// kPositionTables rules in program.cc): the bytes the setup adds under
// `version` against v4.57, where no family but GPT-J/CodeGen keeps one.
int64_t table_bytes(const ModelSpec& m, Precision p, int version, int64_t seq = 64) {
  auto inputs = [&](int v) {
    TrainingSetup s = test_util::cpu_run(Framework::kHf, FinetuneMode::kLora, 1, seq);
    s.precision = p;
    s.transformers_version = v;
    return max_live(trace::build_trace(m, s).events, Component::kInputs);
  };
  return inputs(version) - inputs(457);
}

// MistralRotaryEmbedding, v4.34-v4.41: cos_cached and sin_cached of
// [max_position_embeddings, head_dim] in the default dtype, per attention
// layer (modeling_mistral.py); v4.42 computes them per forward. Mistral-7B-v0.1:
// 32 layers, head 128, 32768 positions: 2 * 32768 * 128 elements per layer,
// 512 MiB in all in bf16.
TEST(Framework, MistralBeforeTransformers442KeepsCosSinTablesOfEveryPosition) {
  ModelSpec m = load_model("mistralai/Mistral-7B-v0.1");
  ASSERT_EQ(m.num_layers, 32);
  ASSERT_EQ(m.max_position_embeddings, 32768);
  ASSERT_EQ(m.layers.front().attention.head_dim, 128);
  const int64_t elems = int64_t{32} * 2 * 32768 * 128;
  EXPECT_EQ(table_bytes(m, Precision::kBf16, 441), elems * 2);
  EXPECT_EQ(elems * 2, int64_t{512} << 20);
  EXPECT_EQ(table_bytes(m, Precision::kBf16Mixed, 434), elems * 4);  // built in fp32
  EXPECT_EQ(table_bytes(m, Precision::kBf16, 442), 0);
  EXPECT_EQ(table_bytes(m, Precision::kBf16, 433), 0);  // no Mistral in v4.33
}

// GPTNeoXRotaryEmbedding over rotary_ndims = head 64 * rotary_pct 0.25 = 16
// (Pythia-160m: 12 layers, 2048 positions). Before v4.35 the tables are plain
// CPU attributes; v4.35-v4.37 buffers in the default dtype; v4.38-v4.44
// buffers of emb.cos() without .to(dtype): fp32 even in a bf16-loaded model,
// until DeepSpeed's engine casts the module to bf16.
TEST(Framework, GptNeoXRotaryTablesFollowTheirReleasesDtype) {
  ModelSpec m = load_model("EleutherAI/pythia-160m");
  ASSERT_EQ(m.num_layers, 12);
  ASSERT_EQ(m.max_position_embeddings, 2048);
  const int64_t elems = int64_t{12} * 2 * 2048 * 16;  // 393216
  EXPECT_EQ(table_bytes(m, Precision::kBf16, 434), 0);
  EXPECT_EQ(table_bytes(m, Precision::kBf16, 437), elems * 2);
  EXPECT_EQ(table_bytes(m, Precision::kBf16, 438), elems * 4);
  EXPECT_EQ(table_bytes(m, Precision::kBf16, 445), 0);
  TrainingSetup s;
  s.batch = 1;
  s.seq = 128;
  s.precision = Precision::kBf16Mixed;
  s.parallel.method = Method::kZero2;
  s.parallel.dp = 2;
  auto inputs = [&](int v) {
    s.transformers_version = v;
    return estimate(m, s, find_gpu("A100-80GB"))
        .peak.components[static_cast<size_t>(Component::kInputs)];
  };
  EXPECT_EQ(inputs(440) - inputs(445), static_cast<uint64_t>(elems * 2));
}

// FalconRotaryEmbedding, v4.31-v4.35: cos_cached/sin_cached set by the first
// forward, [seq, head_dim] in the query's dtype (bf16 under autocast);
// v4.36-v4.44: [max_position_embeddings, head_dim] buffers in the default
// dtype (fp32 for a model built in fp32). Falcon-7B: 32 layers, head 64, no
// max_position_embeddings in its config (FalconConfig's default 2048).
TEST(Framework, FalconRotaryTablesWereLazyBeforeTransformers436) {
  ModelSpec m = load_model("tiiuae/falcon-7b");
  ASSERT_EQ(m.num_layers, 32);
  ASSERT_EQ(m.layers.front().attention.head_dim, 64);
  ASSERT_EQ(m.max_position_embeddings, 2048);
  EXPECT_EQ(table_bytes(m, Precision::kBf16Mixed, 433, 256), int64_t{32} * 2 * 256 * 64 * 2);
  EXPECT_EQ(table_bytes(m, Precision::kBf16Mixed, 436, 256), int64_t{32} * 2 * 2048 * 64 * 4);
}

// Phi (v4.36-v4.44) and StableLM (v4.38-v4.44) rotate partial_rotary_factor
// of the head: phi-2, 32 layers, head 80 * 0.4 = 32 rotated, 2048 positions.
TEST(Framework, PhiRotaryTablesCoverTheRotatedDimsOnly) {
  ModelSpec m = load_model("microsoft/phi-2");
  ASSERT_EQ(m.num_layers, 32);
  ASSERT_EQ(m.layers.front().attention.head_dim, 80);
  EXPECT_EQ(table_bytes(m, Precision::kBf16, 444), int64_t{32} * 2 * 2048 * 32 * 2);
  EXPECT_EQ(table_bytes(m, Precision::kBf16, 445), 0);
}

// LlamaRotaryEmbedding: v4.28-v4.30 fp32 tables; v4.31-v4.37 the default
// dtype, rebuilt with seq_len rows in x.dtype when a sequence is longer; v4.38.0
// none; v4.39-v4.40 the "for BC" _cos_cached/_sin_cached buffers, which
// forward never rebuilds; none from v4.41. TinyLlama: 22 layers, head 64, 2048
// positions.
TEST(Framework, LlamaRotaryTablesByRelease) {
  ModelSpec m = load_model("TinyLlama/TinyLlama-1.1B-Chat-v1.0");
  ASSERT_EQ(m.num_layers, 22);
  ASSERT_EQ(m.max_position_embeddings, 2048);
  ASSERT_EQ(m.layers.front().attention.head_dim, 64);
  const int64_t per_row = int64_t{22} * 2 * 64;
  EXPECT_EQ(table_bytes(m, Precision::kBf16, 428), per_row * 2048 * 4);
  EXPECT_EQ(table_bytes(m, Precision::kBf16, 431), per_row * 2048 * 2);
  EXPECT_EQ(table_bytes(m, Precision::kBf16, 438), 0);
  EXPECT_EQ(table_bytes(m, Precision::kBf16, 440), per_row * 2048 * 2);
  EXPECT_EQ(table_bytes(m, Precision::kBf16, 441), 0);
  // 4096 tokens: v4.37 rebuilds at 4096 rows; v4.40's BC buffers stay 2048.
  EXPECT_EQ(table_bytes(m, Precision::kBf16, 437, 4096), per_row * 4096 * 2);
  EXPECT_EQ(table_bytes(m, Precision::kBf16, 440, 4096), per_row * 2048 * 2);
}

std::string recipe(const char* name) {
  return std::string(LLMEM_TEST_DATA_DIR) + "/recipes/" + name;
}

bool warns_about(const RecipeResult& r, const std::string& key) {
  return std::any_of(r.warnings.begin(), r.warnings.end(), [&](const std::string& w) {
    return w.find("key '" + key + "'") != std::string::npos;
  });
}

// torchtune packing: compiled flex_attention with a BlockMask from sm75 (no
// mask memory), else create_block_causal_mask's dense bool [b, s, s] to
// SDPA, which converts it to a float bias per layer that the memory-efficient
// kernel keeps for backward.
TEST(Framework, TorchtunePackedMasks) {
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");  // 16 layers
  TrainingSetup s;
  apply_framework_defaults(Framework::kTorchtune, &s);
  s.precision = Precision::kFp16;  // V100: no bf16 memory-efficient kernel
  s.batch = 2;
  s.seq = 2048;
  const auto loss = static_cast<size_t>(Phase::kLoss);
  for (const char* gpu : {"A100-80GB", "V100-32GB"}) {
    s.fw.packed = false;
    Estimate plain = estimate(m, s, find_gpu(gpu));
    s.fw.packed = true;
    Estimate packed = estimate(m, s, find_gpu(gpu));
    double added = static_cast<double>(packed.phase_peaks[loss]) -
                   static_cast<double>(plain.phase_peaks[loss]);
    if (std::string(gpu) == "A100-80GB") {
      EXPECT_EQ(packed.attention_kernel.rfind("flex_attention", 0), 0u) << packed.attention_kernel;
      EXPECT_EQ(added, 0);
    } else {
      EXPECT_NE(packed.attention_kernel.find("attn_mask"), std::string::npos)
          << packed.attention_kernel;
      double bias = 2.0 * 2048 * 2048 * 2;  // fp16 [2, 1, 2048, 2048] per layer
      EXPECT_GE(added, 16 * bias);
      EXPECT_LT(added, 16 * bias + bias);  // the bool mask is gone by the loss
    }
  }
}

TEST(Recipe, TorchtuneLoraConfig) {
  TrainingSetup s;
  RecipeResult r = read_recipe_file(recipe("torchtune-llama3_2-3B_lora_single_device.yaml"), &s);
  EXPECT_EQ(r.framework, Framework::kTorchtune);
  EXPECT_EQ(s.finetune, FinetuneMode::kLora);
  EXPECT_EQ(s.precision, Precision::kBf16);
  EXPECT_EQ(s.lora.rank, 64);
  EXPECT_EQ(s.batch, 4);
  EXPECT_EQ(s.grad_accum, 8);
  EXPECT_EQ(s.checkpointing, CheckpointMode::kNonReentrant);
  EXPECT_FALSE(s.fw.activation_offload);
  EXPECT_FALSE(s.fw.packed);  // dataset.packed: False
  EXPECT_EQ(s.optimizer, OptimizerKind::kAdamWFused);
  for (const char* t : {"q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}) {
    EXPECT_NE(std::find(s.lora.targets.begin(), s.lora.targets.end(), t), s.lora.targets.end())
        << t;
  }
  EXPECT_EQ(std::find(s.lora.targets.begin(), s.lora.targets.end(), "k_proj"),
            s.lora.targets.end());
  // LinearCrossEntropyLoss is not modelled, max_seq_len is null: both named.
  EXPECT_TRUE(warns_about(r, "loss._component_"));
  EXPECT_TRUE(warns_about(r, "tokenizer.max_seq_len"));
  EXPECT_FALSE(warns_about(r, "output_dir"));  // no effect on memory: silent
}

TEST(Recipe, TorchtuneLowMemoryFullConfig) {
  TrainingSetup s;
  RecipeResult r = read_recipe_file(
      recipe("torchtune-llama2-7B_full_single_device_low_memory-5cbc1967b.yaml"), &s);
  EXPECT_EQ(r.framework, Framework::kTorchtune);
  EXPECT_EQ(s.finetune, FinetuneMode::kFull);
  EXPECT_TRUE(s.fw.optimizer_in_bwd);
  EXPECT_TRUE(s.fw.paged_optimizer);  // bitsandbytes.optim.PagedAdamW
  EXPECT_EQ(s.fw.output_chunks, 0);   // torch.nn.CrossEntropyLoss
}

TEST(Recipe, LitgptQloraConfig) {
  TrainingSetup s;
  RecipeResult r = read_recipe_file(recipe("litgpt-llama-2-7b-qlora.yaml"), &s);
  EXPECT_EQ(r.framework, Framework::kLitgpt);
  EXPECT_EQ(r.checkpoint, "checkpoints/meta-llama/Llama-2-7b-hf");
  EXPECT_EQ(s.finetune, FinetuneMode::kQlora);
  EXPECT_TRUE(s.quant.nf4);
  EXPECT_FALSE(s.quant.double_quant);  // bnb.nf4, not bnb.nf4-dq
  EXPECT_TRUE(s.fw.paged_optimizer);
  EXPECT_EQ(s.fw.lm_head_chunk_tokens, 128);
  EXPECT_EQ(s.lora.rank, 32);
  EXPECT_EQ(s.seq, 512);
  EXPECT_EQ(s.batch, 2);
  EXPECT_EQ(s.grad_accum, 4);  // global_batch_size 8 / micro_batch_size 2
  EXPECT_EQ(s.precision, Precision::kBf16);
}

TEST(Recipe, LitgptFullConfig) {
  TrainingSetup s;
  RecipeResult r = read_recipe_file(recipe("litgpt-tiny-llama-full.yaml"), &s);
  EXPECT_EQ(r.framework, Framework::kLitgpt);
  EXPECT_EQ(s.finetune, FinetuneMode::kFull);
}

TEST(Recipe, UnknownKeysAreNamed) {
  TrainingSetup s;
  RecipeResult r = read_recipe(
      "model:\n  _component_: torchtune.models.llama3_2.llama3_2_1b\n"
      "batch_size: 2\nfrobnicate: 3\ncompile: True\n",
      "x.yaml", &s);
  EXPECT_TRUE(warns_about(r, "frobnicate"));
  EXPECT_FALSE(warns_about(r, "compile"));  // modelled (per-layer compile)
  EXPECT_TRUE(s.fw.compile && s.fw.compile_loss);
}

// torchtune's recipes at bd2a0fc7c also take compile: {model, loss,
// optimizer_step, scale_grads} (recipes/full_finetune_distributed.py).
TEST(Recipe, TorchtuneCompileParts) {
  auto read = [](const std::string& compile, TrainingSetup* s) {
    return read_recipe(
        "model:\n  _component_: torchtune.models.llama3_2.llama3_2_1b\n"
        "compile:\n" +
            compile,
        "x.yaml", s);
  };
  TrainingSetup s;
  RecipeResult r = read("  model: True\n  loss: False\n  scale_grads: True\n", &s);
  EXPECT_TRUE(s.fw.compile);
  EXPECT_FALSE(s.fw.compile_loss);
  EXPECT_FALSE(warns_about(r, "compile"));
  TrainingSetup o;
  r = read("  optimizer_step: True\n", &o);  // model and loss default to True
  EXPECT_TRUE(o.fw.compile && o.fw.compile_loss);
  EXPECT_TRUE(warns_about(r, "compile.optimizer_step"));
  TrainingSetup bad;
  try {
    read("  model: maybe\n", &bad);
    ADD_FAILURE() << "not a boolean";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("compile.model"), std::string::npos) << e.what();
  }
}

TEST(Recipe, BadYamlNamesFileAndLine) {
  TrainingSetup s;
  try {
    read_recipe("model: [unclosed\nbatch_size: 2\n", "broken.yaml", &s);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("broken.yaml"), std::string::npos) << what;
    EXPECT_NE(what.find("line"), std::string::npos) << what;
  }
}

TEST(Recipe, WrongTypeNamesKey) {
  TrainingSetup s;
  try {
    read_recipe(
        "model:\n  _component_: torchtune.models.llama3_2.lora_llama3_2_1b\n"
        "batch_size: many\n",
        "typed.yaml", &s);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("typed.yaml"), std::string::npos) << what;
    EXPECT_NE(what.find("batch_size"), std::string::npos) << what;
  }
  EXPECT_THROW(read_recipe("just a string\n", "scalar.yaml", &s), Error);
}

}  // namespace
}  // namespace llmem
