// Copyright 2026 The llmem Authors.
// The load phase (issues 3 and 8): what a framework allocates and frees on the
// device while it builds the model and loads its checkpoint, before the first
// training step. Each function replays one library routine's temporaries on
// the Graph, in the routine's order, so the caching allocator keeps the
// blocks they leave behind (docs/frameworks.md, "Loading").

#ifndef LLMEM_SRC_TRACE_LOAD_H_
#define LLMEM_SRC_TRACE_LOAD_H_

#include <cstdint>
#include <functional>

#include "llmem/job.h"

#include "trace/graph.h"

namespace llmem::trace {

/// torchao NF4Tensor quantization settings (torchao/dtypes/nf4tensor.py,
/// to_nf4 defaults).
struct Nf4Options {
  int64_t block = 64;          ///< elements per absmax scaler
  int64_t scaler_block = 256;  ///< scalers per double-quantization factor
  /// Elements quantize_tensor_nearest compares with the 16 NF4 values at once
  /// (CHUNK_SIZE = 1024**2 since torchao PR #196, 2024-05-01); 0 = the whole
  /// tensor in one pass, as torchao 0.1 and the nightlies before it did.
  int64_t chunk = int64_t{1} << 20;
};

/// NF4Tensor.from_tensor of a bf16 tensor of `n` elements already on the
/// device: allocates and frees its temporaries in order; `output()` allocates
/// the quantized tensor where quantized_data is made, and its id is returned.
Tid nf4_from_tensor(Graph& g, int64_t n, const Nf4Options& o, const std::function<Tid()>& output);

/// NF4Tensor.get_original_weight (NF4Tensor.to(bfloat16)) of `n` elements:
/// returns the bf16 result (2n bytes) once its temporaries are freed.
Tid nf4_original_weight(Graph& g, int64_t n, const Nf4Options& o);

/// bitsandbytes functional.quantize_4bit of a 16-bit tensor of `n` elements
/// on the device: the fp32 absmax, the packed output (`output()`, which holds
/// the quant state too) and, with double quantization, the centred absmax
/// copy that quantize_blockwise reads. Returns output()'s id.
Tid bnb_quantize_4bit(Graph& g, int64_t n, const QuantSetup& q, const std::function<Tid()>& output);

}  // namespace llmem::trace

#endif  // LLMEM_SRC_TRACE_LOAD_H_
