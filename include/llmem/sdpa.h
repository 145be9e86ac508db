// Copyright 2026 The llmem Authors.
// Which kernel torch.nn.functional.scaled_dot_product_attention runs on CUDA.
//
// PyTorch picks, in priority order, the first backend whose checks pass:
// FlashAttention, memory-efficient (xFormers/CUTLASS) attention, then the
// "math" composite. The checks live in
// aten/src/ATen/native/transformers/cuda/sdp_utils.cpp (sdp_utils.h in 2.0)
// and sdp_utils_cpp.h; docs/sdpa.md lists each rule with the release it
// comes from. For memory only flash/efficient vs math matters: the fused
// kernels keep O(S) state, math keeps the b*H*S*S softmax probabilities.

#ifndef LLMEM_SDPA_H_
#define LLMEM_SDPA_H_

#include <cstdint>
#include <string>
#include <string_view>

namespace llmem {

enum class SdpaKernel { kFlash, kEfficient, kMath };

enum class SdpaDtype { kFp16, kBf16, kFp32 };

/// What select_sdpa_kernel looks at (the call as PyTorch sees it in training).
struct SdpaCall {
  int sm = 80;  ///< compute capability * 10 (sm80 = A100); <= 0: unknown, taken as 80
  SdpaDtype dtype = SdpaDtype::kBf16;  ///< dtype of q, k, v
  int64_t head_dim = 128;              ///< q/k last dimension
  int64_t v_head_dim = 0;              ///< v last dimension (0 = head_dim)
  bool attn_mask = false;              ///< an explicit attn_mask tensor is passed (not is_causal)
  /// k/v reach SDPA with fewer heads than q and no enable_gqa (the fused
  /// kernels' check_batch_size_and_num_heads refuses them; math broadcasts).
  bool kv_heads_differ = false;
  /// k/v have fewer heads than q and enable_gqa=True (torch 2.5+): flash
  /// takes them (check_batch_size_and_num_heads_dense<true>), the
  /// memory-efficient kernel does not (<false>), math repeats them itself.
  bool enable_gqa = false;
  double dropout = 0;       ///< dropout_p
  int torch_version = 204;  ///< major * 100 + minor
  int64_t batch = 1;        ///< for the 2.0/2.1 priority heuristic
  int64_t heads = 32;
  int64_t seq = 512;
};

struct SdpaChoice {
  SdpaKernel kernel = SdpaKernel::kFlash;
  /// Why: the first failing check of each backend skipped, e.g.
  /// "flash: attn_mask given; efficient: attn_mask needs torch >= 2.1".
  std::string reason;
};

/// PyTorch's select_sdp_backend for a training call (inputs require grad,
/// dense 4-D tensors, all backends enabled). Pure; never throws.
SdpaChoice select_sdpa_kernel(const SdpaCall& call);

std::string_view sdpa_kernel_name(SdpaKernel k);

}  // namespace llmem

#endif  // LLMEM_SDPA_H_
