// Copyright 2026 The llmem Authors.
// Temporaries of the quantization routines frameworks run while loading.
//
// torchao: torchao/dtypes/nf4tensor.py at commit 6081796bc (PR #196, the
// chunked quantization loop) and at 62c787194 (2024-03-25, the nightly
// torchtune 5cbc1967b pins), NF4Tensor.from_tensor, double_quantize_scalers,
// convert_to_norm_float_weight, quantize_tensor_nearest, get_original_weight.
// bitsandbytes: bitsandbytes/functional.py quantize_4bit (commit 95f9af30).
// Scalar temporaries (means, the 16-entry NF4 table) are left out: each is one
// 512-byte small-pool block.

#include "trace/load.h"

#include <algorithm>

namespace llmem::trace {
namespace {

constexpr int64_t kBf16 = 2;
constexpr int64_t kI64 = 8;
constexpr int64_t kF32 = 4;

Tid temp(Graph& g, int64_t bytes) {
  return g.buffer(std::max<int64_t>(bytes, 1), Component::kTemporaries);
}

/// get_block_absmax(x, block) of `numel` bf16 elements: blocks.abs() and
/// .max(dim=1) (values and int64 indices); returns the values.
Tid block_absmax(Graph& g, int64_t numel, int64_t block) {
  int64_t blocks = (numel + block - 1) / block;
  Tid abs = temp(g, numel * kBf16);
  Tid values = temp(g, blocks * kBf16);
  Tid indices = temp(g, blocks * kI64);
  g.release(abs);
  g.release(indices);
  return values;
}

}  // namespace

Tid nf4_from_tensor(Graph& g, int64_t n, const Nf4Options& o, const std::function<Tid()>& output) {
  int64_t blocks = (n + o.block - 1) / o.block;
  int64_t scaler_blocks = (blocks + o.scaler_block - 1) / o.scaler_block;
  // double_quantize_scalers(flatten(x)).
  Tid absmax = block_absmax(g, n, o.block);
  Tid centred = temp(g, blocks * kBf16);  // scalers_1 - scalers_1_mean
  g.release(absmax);
  Tid scaler_absmax = block_absmax(g, blocks, o.scaler_block);
  // 256 / (2 * scaler_absmax.expand(n_scaler_blocks, scaler_block)): both
  // ops materialise the expanded shape.
  Tid twice = temp(g, blocks * kBf16);
  Tid factor = temp(g, blocks * kBf16);
  g.release(twice);
  Tid scaled = temp(g, blocks * kBf16);  // scaler_blocks * quantization_factor
  Tid rounded = temp(g, blocks * kBf16);
  g.release(scaled);
  Tid clamped = temp(g, blocks * kBf16);
  g.release(rounded);
  Tid quantized_scalers = temp(g, blocks);  // .to(torch.int8)
  g.release(clamped);
  Tid factor_out = temp(g, scaler_blocks * kBf16);  // quantization_factor[:, 0].contiguous()
  g.release(factor);
  g.release(scaler_absmax);
  g.release(centred);
  // convert_to_norm_float_weight(x).
  Tid scalers = block_absmax(g, n, o.block);
  Tid scaled_blocks = temp(g, n * kBf16);  // blocks / scales
  Tid result = kNone;
  if (o.chunk > 0) {
    // quantized_blocks (uint8), filled chunk by chunk: every full chunk
    // allocates and frees the same sizes, so the caching allocator ends each
    // one where it began; one replay stands for all of them.
    Tid indices = temp(g, n);
    int64_t c = std::min(o.chunk, n);
    Tid diff = temp(g, c * 16 * kBf16);  // value.unsqueeze(-1) - nf4
    Tid abs = temp(g, c * 16 * kBf16);   // .abs()
    g.release(diff);
    Tid values = temp(g, c * kBf16);  // diff.min(dim=-1): values and indices
    Tid nearest = temp(g, c * kI64);
    g.release(values);
    g.release(abs);
    Tid bytes = temp(g, c);  // .to(torch.uint8), copied into the slice
    g.release(nearest);
    g.release(bytes);
    // quantized_blocks[::2] << 4 | quantized_blocks[1::2] on uint8; the
    // final .to(torch.uint8) returns the same tensor.
    Tid shifted = temp(g, (n + 1) / 2);
    result = output();
    g.release(shifted);
    g.release(indices);
  } else {
    // One pass: [n, 16] bf16 differences and int64 indices for the whole tensor.
    Tid diff = temp(g, n * 16 * kBf16);
    Tid abs = temp(g, n * 16 * kBf16);
    g.release(diff);
    Tid values = temp(g, n * kBf16);
    Tid indices = temp(g, n * kI64);
    g.release(values);
    g.release(abs);
    // The int64 indices combine into int64 halves before .to(torch.uint8).
    Tid shifted = temp(g, (n + 1) / 2 * kI64);
    Tid combined = temp(g, (n + 1) / 2 * kI64);
    g.release(shifted);
    result = output();
    g.release(combined);
    g.release(indices);
  }
  g.release(scaled_blocks);
  g.release(scalers);
  // The scalers and factors belong to the NF4 tensor; output() holds their
  // bytes (the parameter's size counts them), so these copies go.
  g.release(quantized_scalers);
  g.release(factor_out);
  return result;
}

Tid nf4_original_weight(Graph& g, int64_t n, const Nf4Options& o) {
  int64_t half = (n + 1) / 2;  // packed bytes: two elements per byte
  int64_t blocks = (n + o.block - 1) / o.block;
  Tid high = temp(g, half);          // quantized_data >> 4
  Tid first = temp(g, half * kI64);  // .to(torch.long)
  g.release(high);
  Tid low = temp(g, half);  // quantized_data & 0b1111
  Tid second = temp(g, half * kI64);
  g.release(low);
  Tid first_values = temp(g, half * kBf16);  // nf4[first_elements]
  Tid second_values = temp(g, half * kBf16);
  // dequantize_scalers: int8 / factor (bf16), then + scaler_mean.
  Tid divided = temp(g, blocks * kBf16);
  Tid scalers = temp(g, blocks * kBf16);
  g.release(divided);
  // repeated.flatten() copies the expanded [blocks, block / 2] scalers, once per half.
  Tid repeated = temp(g, half * kBf16);
  Tid scaled_first = temp(g, half * kBf16);
  g.release(repeated);
  repeated = temp(g, half * kBf16);
  Tid scaled_second = temp(g, half * kBf16);
  g.release(repeated);
  Tid out = g.buffer(n * kBf16, Component::kWeightCopies);  // torch.stack(...).reshape
  for (Tid t : {first, second, first_values, second_values, scalers, scaled_first, scaled_second})
    g.release(t);
  return out;
}

Tid bnb_quantize_4bit(Graph& g, int64_t n, const QuantSetup& q,
                      const std::function<Tid()>& output) {
  int64_t blocks = (n + q.block - 1) / q.block;
  Tid absmax = temp(g, blocks * kF32);  // the kernel's fp32 absmax
  Tid out = output();                   // packed 4-bit data (+ the quant state it keeps)
  if (q.double_quant) {
    Tid centred = temp(g, blocks * kF32);  // _absmax - offset, read by quantize_blockwise
    g.release(centred);
  }
  g.release(absmax);  // del _absmax (double quant) / kept as the state's absmax
  return out;
}

}  // namespace llmem::trace
