// Copyright 2026 The llmem Authors.
// PyTorch's SDPA backend selection (training call, dense inputs). Sources,
// read at the releases named (docs/sdpa.md has the details):
//   2.0  aten/src/ATen/native/transformers/cuda/sdp_utils.h (the 2.0-era
//        header: check_gpu_sm75_or_greater, check_head_dim_size <= 128 and
//        % 8, check_requires_grad_and_head_dim_gt64_and_sm_ge86,
//        check_for_attn_mask and check_for_non_zero_dropout on the
//        memory-efficient path, check_head_dim_gt64_and_sm_ge86, and the
//        xFormers-derived priority_order)
//   2.1  cuda/sdp_utils.cpp (check_gpu_sm75_or_greater over [sm75, sm90],
//        check_requires_grad_and_head_dim_gt64_and_sm_ge86_lt90, bf16 on the
//        memory-efficient path refused only on sm5x, the training
//        priority heuristic of pytorch#99644): memory-efficient attention takes attn_mask and
//        dropout (pytorch#102038 and the attn_bias support; transformers
//        requires torch >= 2.1.1 for SDPA with a custom mask because of a
//        2.1.0 bug in that path); flash still FlashAttention-1 on [sm75, sm90]
//   2.2+ cuda/sdp_utils.cpp: FlashAttention-2, [sm80, sm90] (later sm121),
//        head_dim <= 256, training with head_dim > 192 refused on sm86-sm89,
//        later narrowed to (192, 224] or > 224 with dropout
//        (check_requires_grad_and_head_dim_gt192_constraints_on_sm86_89);
//        bf16 memory-efficient needs sm80; priority flash > efficient > math.
//   now  can_use_mem_efficient_attention: bf16 needs sm80
//        (less_than_sm80_mem_efficient_dtypes = {half, float});
//        minimum_gemm_alignment: 8 for 16-bit and 4 for fp32 on sm80+,
//        8 for 16-bit and 1 for fp32 on sm7x, 1 before sm70.
//   all  sdp_utils_cpp.h check_batch_size_and_num_heads(_dense): both fused
//        kernels need q, k, v with the same number of heads (GQA only with
//        enable_gqa, 2.5+), so unexpanded multi-query K/V runs math.

#include "llmem/sdpa.h"

#include <algorithm>
#include <string>

namespace llmem {
namespace {

std::string sm_text(int sm) {
  return "sm" + std::to_string(sm);
}

std::string dtype_text(SdpaDtype d) {
  return d == SdpaDtype::kFp16 ? "fp16" : d == SdpaDtype::kBf16 ? "bf16" : "fp32";
}

/// Empty when flash can run; otherwise the first failing check.
std::string flash_refusal(const SdpaCall& c, int sm) {
  int v = c.torch_version;
  int64_t d = c.head_dim;
  int64_t vd = c.v_head_dim > 0 ? c.v_head_dim : d;
  if (c.kv_heads_differ)
    return "q and k/v head counts differ";
  if (c.attn_mask)
    return "no attn_mask support";
  bool hw = v <= 200   ? (sm == 75 || (sm >= 80 && sm < 90))
            : v == 201 ? (sm >= 75 && sm <= 90)
            : v <= 206 ? (sm >= 80 && sm <= 90)
                       : (sm >= 80 && sm <= 121);
  if (!hw)
    return "not built for " + sm_text(sm);
  if (c.dtype == SdpaDtype::kFp32)
    return "fp32 inputs (fp16/bf16 only)";
  if (c.dtype == SdpaDtype::kBf16 && sm < 80)
    return "bf16 needs sm80";
  if (d != vd)
    return "q/k and v head dims differ";
  if (v <= 201 && (d % 8 != 0 || d > 128))
    return "head_dim " + std::to_string(d) + " (needs <= 128 and a multiple of 8 before 2.2)";
  if (v >= 202 && d > 256)
    return "head_dim " + std::to_string(d) + " > 256";
  // Backward shared-memory limits of the consumer Ampere/Ada parts.
  if (v == 200 && sm >= 86 && d > 64)
    return "training with head_dim > 64 on sm86+ (2.0)";
  if (v == 201 && sm >= 86 && sm <= 89 && d > 64)
    return "training with head_dim > 64 on sm86-sm89 (2.1)";
  if (v == 202 && sm >= 86 && sm <= 89 && d > 192)
    return "training with head_dim > 192 on sm86-sm89 (2.2)";
  bool consumer = (sm >= 86 && sm <= 89) || (v >= 207 && sm >= 120 && sm <= 121);
  if (v >= 203 && consumer && ((d > 192 && d <= 224) || (d > 224 && c.dropout > 0)))
    return "training with head_dim in (192, 224], or > 224 with dropout, on " + sm_text(sm);
  return "";
}

int64_t gemm_alignment(int sm, SdpaDtype dt) {
  bool half = dt != SdpaDtype::kFp32;
  bool tensor_cores = sm >= 80 || (sm >= 70 && half);
  int64_t a = sm >= 80 ? 4 : 1;
  if (tensor_cores)
    a = std::max<int64_t>(a, half ? 8 : 4);
  return a;
}

std::string efficient_refusal(const SdpaCall& c, int sm) {
  int v = c.torch_version;
  int64_t d = c.head_dim;
  int64_t vd = c.v_head_dim > 0 ? c.v_head_dim : d;
  if (sm < 50)
    return "not built for " + sm_text(sm);
  if (c.kv_heads_differ)
    return "q and k/v head counts differ";
  if (c.enable_gqa)
    return "enable_gqa (grouped k/v heads) not supported";
  // 2.0 took bf16 everywhere, 2.1 everywhere but sm5x; 2.2 on needs sm80.
  if (c.dtype == SdpaDtype::kBf16 && (v >= 202 ? sm < 80 : v == 201 && sm < 60))
    return v >= 202 ? "bf16 needs sm80" : "bf16 not on sm5x";
  if (c.attn_mask && v < 201)
    return "attn_mask needs torch >= 2.1";
  if (c.dropout > 0 && v < 201)
    return "dropout needs torch >= 2.1";
  int64_t a = gemm_alignment(sm, c.dtype);
  if (d % a != 0 || vd % a != 0)
    return "head_dim " + std::to_string(d) + " not a multiple of " + std::to_string(a);
  if (v == 200 && sm >= 86 && d > 64)
    return "head_dim > 64 on sm86+ (2.0)";
  return "";
}

/// torch 2.0/2.1 priority_order (taken from xFormers): 2.0 ranks
/// memory-efficient first for head_dim 128, or for few (batch * heads)
/// blocks with long queries; 2.1 uses a training heuristic of its own
/// (pytorch#99644): memory-efficient first when 6 * batch * heads > seq.
bool efficient_first(const SdpaCall& c) {
  if (c.torch_version > 201)
    return false;
  if (c.torch_version == 201)
    return 6 * c.batch * c.heads > c.seq;
  int64_t flash_threads = c.batch * c.heads;
  int64_t cutlass_threads = flash_threads * (c.seq / 64);
  bool more_cutlass = cutlass_threads / 2 >= flash_threads;
  bool few_flash = flash_threads < 60;
  return (few_flash && more_cutlass) || c.head_dim == 128;
}

}  // namespace

std::string_view sdpa_kernel_name(SdpaKernel k) {
  switch (k) {
    case SdpaKernel::kFlash:
      return "flash";
    case SdpaKernel::kEfficient:
      return "efficient";
    case SdpaKernel::kMath:
      return "math";
  }
  return "math";
}

SdpaChoice select_sdpa_kernel(const SdpaCall& c) {
  int sm = c.sm > 0 ? c.sm : 80;
  std::string where = sm_text(sm) + (c.sm > 0 ? "" : " (GPU unknown)") + ", " +
                      dtype_text(c.dtype) + ", head_dim " + std::to_string(c.head_dim) +
                      (c.attn_mask ? ", attn_mask" : ", is_causal") + ", torch " +
                      std::to_string(c.torch_version / 100) + "." +
                      std::to_string(c.torch_version % 100);
  std::string no_flash = flash_refusal(c, sm);
  std::string no_eff = efficient_refusal(c, sm);
  SdpaChoice out;
  bool eff_first = efficient_first(c);
  if (no_flash.empty() && (!eff_first || !no_eff.empty())) {
    out.kernel = SdpaKernel::kFlash;
    out.reason = where;
  } else if (no_eff.empty()) {
    out.kernel = SdpaKernel::kEfficient;
    out.reason = where + "; " +
                 (no_flash.empty() ? std::string("efficient ranked first (torch 2.0/2.1 heuristic)")
                                   : "flash: " + no_flash);
  } else {
    out.kernel = SdpaKernel::kMath;
    out.reason = where + "; flash: " + no_flash + "; efficient: " + no_eff;
  }
  return out;
}

}  // namespace llmem
