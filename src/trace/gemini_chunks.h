// Copyright 2026 The llmem Authors.
// ColossalAI Gemini's chunk layout: the chunk-size search and the order in
// which parameters are appended to chunks.
//
// Modelled on hpcaitech/ColossalAI at d4fb7bfda7a2da5480e1187e8d3e40884b42ba11
// (the LLMem paper's pin): colossalai/zero/gemini/chunk/search_utils.py
// (search_chunk_configuration, _filter_exlarge_params, _get_unused_byte),
// chunk/manager.py (ChunkManager.register_tensor), chunk/chunk.py (Chunk:
// shard_size = chunk_size / dp, append_tensor, ChunkFullError) and
// gemini_optimizer.py (get_range_pair: a rank's optimizer states cover the
// part of each parameter inside its shard), gemini_ddp.py (GeminiDDP.__init__
// searches before _init_chunks leaves tensors without gradients out of the
// chunks; the same at ColossalAI 4f9953be3, April 2026). Every size is an element count:
// ColossalAI's "_byte" and "_mb" names count elements.

#ifndef LLMEM_SRC_TRACE_GEMINI_CHUNKS_H_
#define LLMEM_SRC_TRACE_GEMINI_CHUNKS_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace llmem::trace {

/// The arguments GeminiDDP passes to search_chunk_configuration. The defaults
/// are GeminiDDP's at d4fb7bf (search_range_mb=32, min_chunk_size_mb=32,
/// hidden_dim=None -> search_interval_byte=1024 in chunk/utils.py
/// init_chunk_manager), which the paper's dp_real.py / tp_real.py keep.
struct GeminiChunkConfig {
  double search_range_m = 32;         ///< searched sizes: start .. start + this * 2^20
  int64_t search_interval = 1024;     ///< step of the search (hidden_dim when given)
  double min_chunk_size_m = 32;       ///< smallest chunk, in units of 2^20 elements
  bool filter_exlarge_params = true;  ///< leave tensors above mean + 3 sigma out of the search
  /// LLMem's patch to search_utils.py: with a data-parallel degree of 1 the
  /// chunks are kept gathered (no shard, no all-gather). Memory is the same
  /// either way at dp 1; it only changes whether a shard exists.
  bool keep_gathered_single_dp = true;
};

struct GeminiChunk {
  int64_t capacity = 0;  ///< chunk_size in elements (divisible by dp unless kept gathered)
  int64_t used = 0;      ///< utilized_size: elements of its tensors
  int64_t shard = 0;     ///< elements one rank stores: capacity / dp (capacity if kept gathered)
  size_t first = 0;      ///< its tensors: [first, end) in registration order
  size_t end = 0;
  int64_t padding() const { return capacity - used; }
};

struct GeminiChunkLayout {
  int dp = 1;
  int64_t chunk_size = 0;    ///< the searched size (before dedicated chunks)
  int64_t search_waste = 0;  ///< min_chunk_waste of the search (elements)
  bool keep_gathered = false;
  std::vector<GeminiChunk> chunks;
  std::vector<size_t> chunk_of;  ///< per tensor: its chunk
  std::vector<int64_t> offset;   ///< per tensor: first element inside its chunk
  std::vector<int64_t> numel;    ///< per tensor, as given

  int64_t padded_numel() const;  ///< sum of chunk capacities
  int64_t shard_numel() const;   ///< what one rank stores: sum of chunk shards
  /// Elements of tensor `k` inside `rank`'s shard of its chunk (the range
  /// HybridAdam keeps states for; the whole tensor when kept gathered).
  int64_t in_shard(size_t k, int rank) const;
};

/// Chunk layout of tensors given in registration order (module order:
/// model.parameters(), tied tensors once) with `numel` elements each, over
/// `dp` data-parallel ranks. Throws llmem::Error on dp < 1 or a size < 1.
GeminiChunkLayout gemini_chunk_layout(const std::vector<int64_t>& numel, int dp,
                                      const GeminiChunkConfig& config = {});

/// The same with frozen tensors (`frozen[k]`: tensor k has requires_grad
/// False). GeminiDDP.__init__ runs the search (init_chunk_manager) before
/// _init_chunks marks such tensors ddp-ignored, so the search counts every
/// tensor: the keep_gathered threshold and the gathered chunk's size are the
/// total of all of them, and their sizes enter the outlier filter, the start
/// size and the waste. _init_chunks then leaves the frozen tensors out of the
/// chunks (whole, in the compute dtype, on every rank). The layout's
/// chunk_of, offset, numel and in_shard() index the chunked (trainable)
/// tensors only, in order. `frozen` must be as long as `numel`.
GeminiChunkLayout gemini_chunk_layout(const std::vector<int64_t>& numel,
                                      const std::vector<bool>& frozen, int dp,
                                      const GeminiChunkConfig& config = {});

}  // namespace llmem::trace

#endif  // LLMEM_SRC_TRACE_GEMINI_CHUNKS_H_
