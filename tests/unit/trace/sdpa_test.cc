// Copyright 2026 The llmem Authors.
// PyTorch's SDPA kernel choice (llmem/sdpa.h) and what the math kernel costs.

#include "llmem/sdpa.h"

#include <string>

#include <gtest/gtest.h>

#include "llmem/error.h"
#include "llmem/estimate.h"
#include "llmem/gpu.h"
#include "llmem/job.h"
#include "llmem/model.h"
#include "llmem/request.h"

namespace llmem {
namespace {

/// A bf16 LoRA run of one sample: activations, not the optimizer, set the peak.
TrainingSetup lora_run(int64_t seq, AttentionImpl attention) {
  TrainingSetup s;
  s.batch = 1;
  s.seq = seq;
  s.precision = Precision::kBf16;
  s.finetune = FinetuneMode::kLora;
  s.attention = attention;
  return s;
}

struct Case {
  const char* what;
  int sm;
  SdpaDtype dtype;
  int64_t head_dim;
  bool mask;
  double dropout;
  int torch;
  SdpaKernel expected;
};

TEST(Sdpa, SelectsTheKernelPyTorchRuns) {
  const Case cases[] = {
      {"V100 fp16: no flash before sm75/sm80", 70, SdpaDtype::kFp16, 128, false, 0, 204,
       SdpaKernel::kEfficient},
      {"A100 bf16 head 64", 80, SdpaDtype::kBf16, 64, false, 0, 204, SdpaKernel::kFlash},
      {"fp32: flash is 16-bit only", 80, SdpaDtype::kFp32, 128, false, 0, 204,
       SdpaKernel::kEfficient},
      {"mask on 2.0: both fused kernels refuse it", 80, SdpaDtype::kBf16, 64, true, 0, 200,
       SdpaKernel::kMath},
      {"mask on 2.1: memory-efficient takes it", 80, SdpaDtype::kBf16, 64, true, 0, 201,
       SdpaKernel::kEfficient},
      {"mask on 2.4", 90, SdpaDtype::kBf16, 128, true, 0, 204, SdpaKernel::kEfficient},
      {"head 256 on 2.1: flash-1 stops at 128", 80, SdpaDtype::kBf16, 256, false, 0, 201,
       SdpaKernel::kEfficient},
      {"head 256 on 2.2: flash-2", 80, SdpaDtype::kBf16, 256, false, 0, 202, SdpaKernel::kFlash},
      {"head 256 on 2.2, sm89 training", 89, SdpaDtype::kBf16, 256, false, 0, 202,
       SdpaKernel::kEfficient},
      {"head 256 on 2.0, sm86: neither fused kernel", 86, SdpaDtype::kFp16, 256, false, 0, 200,
       SdpaKernel::kMath},
      {"V100 bf16: efficient needs sm80 for bf16", 70, SdpaDtype::kBf16, 128, false, 0, 204,
       SdpaKernel::kMath},
      {"V100 bf16 on 2.1: only sm5x lacked bf16 then", 70, SdpaDtype::kBf16, 128, false, 0, 201,
       SdpaKernel::kEfficient},
      {"head 256 on 2.4, sm89 training without dropout", 89, SdpaDtype::kBf16, 256, false, 0, 204,
       SdpaKernel::kFlash},
      {"head 256 on 2.4, sm89 training with dropout", 89, SdpaDtype::kBf16, 256, false, 0.1, 204,
       SdpaKernel::kEfficient},
      {"head 208 on 2.4, sm86 training", 86, SdpaDtype::kBf16, 208, false, 0, 204,
       SdpaKernel::kEfficient},
      {"T4 fp16 on 2.1: flash-1 runs on sm75", 75, SdpaDtype::kFp16, 64, false, 0, 201,
       SdpaKernel::kFlash},
      {"T4 fp16 on 2.2: flash-2 needs sm80", 75, SdpaDtype::kFp16, 64, false, 0, 202,
       SdpaKernel::kEfficient},
      {"V100 fp16 dropout on 2.0", 70, SdpaDtype::kFp16, 64, false, 0.1, 200, SdpaKernel::kMath},
      {"V100 fp16 dropout on 2.1", 70, SdpaDtype::kFp16, 64, false, 0.1, 201,
       SdpaKernel::kEfficient},
      {"head 100 on 2.1: not a multiple of 8", 80, SdpaDtype::kFp16, 100, false, 0, 201,
       SdpaKernel::kMath},
      {"head 100 on 2.4: flash-2 pads", 80, SdpaDtype::kFp16, 100, false, 0, 204,
       SdpaKernel::kFlash},
      {"2.0 ranks efficient first for head 128", 80, SdpaDtype::kBf16, 128, false, 0, 200,
       SdpaKernel::kEfficient},
      {"H100 on 2.0: flash-1 only sm75/sm8x", 90, SdpaDtype::kBf16, 64, false, 0, 200,
       SdpaKernel::kEfficient},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    SdpaCall call;
    call.sm = c.sm;
    call.dtype = c.dtype;
    call.head_dim = c.head_dim;
    call.attn_mask = c.mask;
    call.dropout = c.dropout;
    call.torch_version = c.torch;
    call.batch = 4;
    call.heads = 32;
    call.seq = 4096;  // 6 * batch * heads < seq: 2.1 ranks flash first
    SdpaChoice got = select_sdpa_kernel(call);
    EXPECT_EQ(sdpa_kernel_name(got.kernel), sdpa_kernel_name(c.expected)) << got.reason;
    EXPECT_FALSE(got.reason.empty());
  }
}

TEST(Sdpa, UnexpandedMultiQueryKvRunsMath) {
  SdpaCall call;
  call.sm = 80;
  call.head_dim = 64;
  call.torch_version = 201;
  call.seq = 4096;  // 6 * batch * heads < seq: flash ranked first on 2.1
  EXPECT_EQ(select_sdpa_kernel(call).kernel, SdpaKernel::kFlash);
  call.kv_heads_differ = true;
  SdpaChoice c = select_sdpa_kernel(call);
  EXPECT_EQ(c.kernel, SdpaKernel::kMath);
  EXPECT_NE(c.reason.find("head counts"), std::string::npos) << c.reason;
}

// lit-gpt before PR #667 passed Falcon-7B's single K/V head to SDPA: math,
// and the probabilities make the long-sequence run grow as S^2.
TEST(Sdpa, LitgptFalconBeforePr667UsesMath) {
  ModelSpec m = load_model("tiiuae/falcon-7b");
  TrainingSetup s;
  apply_framework_defaults(Framework::kLitgpt, &s);
  s.finetune = FinetuneMode::kLora;
  s.batch = 1;
  s.seq = 1024;
  s.torch_version = 201;
  GpuSpec gpu = find_gpu("A100-80GB");
  Estimate now = estimate(m, s, gpu);
  EXPECT_EQ(now.attention_kernel.rfind("sdpa flash", 0), 0u) << now.attention_kernel;
  s.fw.mqa_kv_unexpanded = true;
  Estimate then = estimate(m, s, gpu);
  EXPECT_EQ(then.attention_kernel.rfind("sdpa math", 0), 0u) << then.attention_kernel;
  // 32 layers * 71 heads * 1024^2 * 2 bytes of probabilities = 4.4 GiB kept for backward.
  EXPECT_GT(static_cast<double>(then.peak.allocated_bytes) -
                static_cast<double>(now.peak.allocated_bytes),
            32.0 * 71 * 1024 * 1024 * 2 * 0.8);
}

TEST(Sdpa, PriorityHeuristicsOfEarlyReleases) {
  SdpaCall call;
  call.sm = 80;
  call.head_dim = 64;
  call.batch = 8;
  call.heads = 32;
  call.seq = 1024;
  call.torch_version = 201;  // 6 * 8 * 32 > 1024: memory-efficient first in training
  SdpaChoice c = select_sdpa_kernel(call);
  EXPECT_EQ(c.kernel, SdpaKernel::kEfficient);
  EXPECT_NE(c.reason.find("ranked first"), std::string::npos) << c.reason;
  call.torch_version = 200;  // batch * heads >= 60, head 64: flash first
  EXPECT_EQ(select_sdpa_kernel(call).kernel, SdpaKernel::kFlash);
  call.torch_version = 202;  // FlashAttention-2: always first
  EXPECT_EQ(select_sdpa_kernel(call).kernel, SdpaKernel::kFlash);
}

TEST(Sdpa, ReasonNamesTheRefusals) {
  SdpaCall call;
  call.sm = 0;  // unknown GPU: taken as sm80
  call.attn_mask = true;
  call.torch_version = 200;
  call.head_dim = 64;
  SdpaChoice c = select_sdpa_kernel(call);
  EXPECT_EQ(c.kernel, SdpaKernel::kMath);
  EXPECT_NE(c.reason.find("GPU unknown"), std::string::npos) << c.reason;
  EXPECT_NE(c.reason.find("attn_mask"), std::string::npos) << c.reason;
  EXPECT_NE(c.reason.find("2.1"), std::string::npos) << c.reason;
}

TEST(Sdpa, ExplicitKindsParseAndBadValuesAreRejected) {
  EXPECT_EQ(parse_attention("sdpa", "--attention"), AttentionImpl::kSdpa);
  EXPECT_EQ(parse_attention("sdpa-flash", "--attention"), AttentionImpl::kSdpaFlash);
  EXPECT_EQ(parse_attention("sdpa-efficient", "--attention"), AttentionImpl::kSdpaEfficient);
  EXPECT_EQ(parse_attention("sdpa-math", "--attention"), AttentionImpl::kSdpaMath);
  EXPECT_EQ(attention_name(AttentionImpl::kSdpaMath), "sdpa-math");
  try {
    parse_attention("sdpa-cudnn", "--attention");
    FAIL() << "sdpa-cudnn accepted";
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("--attention"), std::string::npos) << what;
    EXPECT_NE(what.find("sdpa-math"), std::string::npos) << what;
  }
}

TEST(Sdpa, RequestKeysReachTheSetup) {
  Request r = parse_request(
      R"({"model": "meta-llama/Llama-3.2-1B", "gpu": "A100-80GB", "attention": "sdpa-math",
          "sdpa_mask": true})");
  EXPECT_EQ(r.setup.attention, AttentionImpl::kSdpaMath);
  EXPECT_TRUE(r.setup.fw.sdpa_attn_mask);
  try {
    parse_request(R"({"model": "meta-llama/Llama-3.2-1B", "gpu": "A100-80GB",
                      "attention": "sdpa-fast"})");
    FAIL() << "sdpa-fast accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("attention"), std::string::npos) << e.what();
  }
}

// The math kernel keeps the b*H*S*S probabilities of every layer for
// backward: its excess over the fused kernel grows as S^2.
TEST(Sdpa, MathKernelMemoryGrowsAsTheSquareOfTheSequence) {
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  GpuSpec gpu = find_gpu("A100-80GB");
  auto excess = [&](int64_t seq) {
    TrainingSetup s = lora_run(seq, AttentionImpl::kSdpaMath);
    double math = static_cast<double>(estimate(m, s, gpu).peak.allocated_bytes);
    s.attention = AttentionImpl::kSdpaFlash;
    double flash = static_cast<double>(estimate(m, s, gpu).peak.allocated_bytes);
    return math - flash;
  };
  double e1 = excess(1024);
  double e2 = excess(2048);
  // The bf16 probabilities alone at 1024 (torch 2.4 keeps the input dtype):
  // 16 layers * 32 heads * 1024^2 * 2 bytes = 1 GiB; the S*d terms add a little.
  EXPECT_GT(e1, 16.0 * 32 * 1024 * 1024 * 2 * 0.9);
  EXPECT_GT(e2 / e1, 3.5);
  EXPECT_LT(e2 / e1, 4.5);
}

// Since 2.5 the math kernel computes fp16/bf16 inputs in fp32.
TEST(Sdpa, MathKernelUpcastsSince25) {
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  GpuSpec gpu = find_gpu("A100-80GB");
  TrainingSetup s = lora_run(1024, AttentionImpl::kSdpaMath);
  s.torch_version = 204;
  double old_math = static_cast<double>(estimate(m, s, gpu).peak.allocated_bytes);
  s.torch_version = 205;
  double new_math = static_cast<double>(estimate(m, s, gpu).peak.allocated_bytes);
  // bf16 -> fp32 probabilities: + 16 layers * 32 heads * 1024^2 * 2 bytes at least
  EXPECT_GT(new_math - old_math, 16.0 * 32 * 1024 * 1024 * 2 * 0.9);
}

TEST(Sdpa, AutoSelectionIsReportedAndFollowsTheGpu) {
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  TrainingSetup s = lora_run(1024, AttentionImpl::kSdpa);
  Estimate a100 = estimate(m, s, find_gpu("A100-80GB"));
  EXPECT_EQ(a100.attention_kernel.rfind("sdpa flash", 0), 0u) << a100.attention_kernel;
  Estimate v100 = estimate(m, s, find_gpu("V100-32GB"));
  EXPECT_EQ(v100.attention_kernel.rfind("sdpa math", 0), 0u) << v100.attention_kernel;
  // Math keeps the probabilities: 16 layers * 32 heads * 1024^2 * 2 bytes = 1 GiB
  // (both sides hold transformers' repeat_kv copies at torch 2.4).
  EXPECT_GT(static_cast<double>(v100.peak.allocated_bytes) -
                static_cast<double>(a100.peak.allocated_bytes),
            0.75 * 16 * 32 * 1024 * 1024 * 2);
  s.fw.sdpa_attn_mask = true;
  s.torch_version = 200;
  Estimate masked = estimate(m, s, find_gpu("A100-80GB"));
  EXPECT_EQ(masked.attention_kernel.rfind("sdpa math", 0), 0u) << masked.attention_kernel;
  s.torch_version = 201;
  Estimate masked21 = estimate(m, s, find_gpu("A100-80GB"));
  EXPECT_EQ(masked21.attention_kernel.rfind("sdpa efficient", 0), 0u) << masked21.attention_kernel;
}

// transformers' sdpa_attention_forward: grouped K/V heads are copied to every
// query head by repeat_kv before torch 2.5 or with an attention mask (SDPA
// saves the copies); from 2.5 without a mask it passes enable_gqa=True, which
// flash takes and the memory-efficient kernel refuses.
TEST(Sdpa, HfRepeatsGroupedKvUnlessEnableGqa) {
  ModelSpec m = load_model("meta-llama/Meta-Llama-3-8B");  // 32 heads, 8 k/v heads, d 128
  TrainingSetup s = lora_run(2048, AttentionImpl::kSdpa);
  GpuSpec a100 = find_gpu("A100-80GB");
  s.torch_version = 204;
  Estimate repeat = estimate(m, s, a100);
  s.torch_version = 205;
  Estimate gqa = estimate(m, s, a100);
  EXPECT_EQ(gqa.attention_kernel.rfind("sdpa flash", 0), 0u) << gqa.attention_kernel;
  // Per layer K and V copies of b * s * (32 - 8) * 128 bf16 elements beyond
  // the grouped ones, kept for backward: 24 MiB, 768 MiB over 32 layers.
  double extra = 32.0 * 2 * 2048 * 24 * 128 * 2;
  double diff = static_cast<double>(repeat.peak.allocated_bytes) -
                static_cast<double>(gqa.peak.allocated_bytes);
  EXPECT_GT(diff, 0.9 * extra);
  EXPECT_LT(diff, 1.1 * extra);
  s.fw.sdpa_attn_mask = true;  // a mask: repeat_kv again, the efficient kernel
  Estimate masked = estimate(m, s, a100);
  EXPECT_EQ(masked.attention_kernel.rfind("sdpa efficient", 0), 0u) << masked.attention_kernel;
  EXPECT_GT(masked.peak.allocated_bytes, gqa.peak.allocated_bytes);
  // On a V100 (no flash) enable_gqa leaves only math.
  s.fw.sdpa_attn_mask = false;
  s.precision = Precision::kFp16;
  Estimate v100 = estimate(m, s, find_gpu("V100-32GB"));
  EXPECT_EQ(v100.attention_kernel.rfind("sdpa math", 0), 0u) << v100.attention_kernel;
  EXPECT_NE(v100.attention_kernel.find("enable_gqa"), std::string::npos) << v100.attention_kernel;
}

// transformers >= 4.53 hands SDPA a bool mask for a padded batch; PyTorch
// converts it to a float bias on every call and the memory-efficient kernel
// keeps it for backward: one b * s * s bias per layer (before 4.53 one float
// mask served every layer).
TEST(Sdpa, BoolMaskBecomesAFloatBiasPerLayer) {
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");  // 16 layers
  TrainingSetup s = lora_run(1024, AttentionImpl::kSdpa);
  s.batch = 2;
  s.fw.sdpa_attn_mask = true;
  GpuSpec gpu = find_gpu("A100-80GB");
  s.transformers_version = 452;
  Estimate before = estimate(m, s, gpu);
  s.transformers_version = 457;
  Estimate after = estimate(m, s, gpu);
  ASSERT_EQ(after.attention_kernel.rfind("sdpa efficient", 0), 0u) << after.attention_kernel;
  auto loss = static_cast<size_t>(Phase::kLoss);
  double bias = 2.0 * 1024 * 1024 * 2;  // bf16 [2, 1, 1024, 1024]
  // 16 biases, against one float mask traded for a bool one (half its size).
  double expected = 16 * bias - bias / 2;
  double got =
      static_cast<double>(after.phase_peaks[loss]) - static_cast<double>(before.phase_peaks[loss]);
  EXPECT_NEAR(got, expected, 0.1 * expected);
}

}  // namespace
}  // namespace llmem
