// Copyright 2026 The llmem Authors.
// ColossalAI Gemini's chunk-size search and chunk layout (gemini_chunks.h
// names the sources, hpcaitech/ColossalAI at d4fb7bf).

#include "trace/gemini_chunks.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "llmem/error.h"

namespace llmem::trace {
namespace {

// Python's round() of x * 2^20 (half to even, the default FP rounding mode).
int64_t mebi(double x) {
  return static_cast<int64_t>(std::nearbyint(x * 1024.0 * 1024.0));
}

// search_utils.py _get_unused_byte: the elements left empty when the tensors
// fill chunks of `chunk_size` in order, a new chunk opening whenever the next
// tensor does not fit in what is left; the last chunk's tail counts too.
int64_t unused(const std::vector<int64_t>& sizes, int64_t chunk_size) {
  int64_t acc = 0;
  int64_t left = 0;
  for (int64_t s : sizes) {
    if (s > left) {
      acc += left;
      left = chunk_size;
    }
    left -= s;
  }
  return left + acc;
}

}  // namespace

int64_t GeminiChunkLayout::padded_numel() const {
  int64_t n = 0;
  for (const GeminiChunk& c : chunks)
    n += c.capacity;
  return n;
}

int64_t GeminiChunkLayout::shard_numel() const {
  int64_t n = 0;
  for (const GeminiChunk& c : chunks)
    n += c.shard;
  return n;
}

int64_t GeminiChunkLayout::in_shard(size_t k, int rank) const {
  const GeminiChunk& c = chunks[chunk_of[k]];
  if (keep_gathered)
    return numel[k];
  // gemini_optimizer.py get_range_pair: the tensor's [offset, end) clipped
  // to this rank's [shard_begin, shard_end).
  int64_t begin = static_cast<int64_t>(rank) * c.shard;
  int64_t lo = std::max(offset[k], begin);
  int64_t hi = std::min(offset[k] + numel[k], begin + c.shard);
  return std::max<int64_t>(0, hi - lo);
}

GeminiChunkLayout gemini_chunk_layout(const std::vector<int64_t>& numel, int dp,
                                      const GeminiChunkConfig& config) {
  return gemini_chunk_layout(numel, std::vector<bool>(numel.size(), false), dp, config);
}

GeminiChunkLayout gemini_chunk_layout(const std::vector<int64_t>& numel,
                                      const std::vector<bool>& frozen, int dp,
                                      const GeminiChunkConfig& config) {
  if (frozen.size() != numel.size())
    throw Error("gemini", "", "expected one frozen flag per tensor");
  if (dp < 1)
    throw Error("--dp", "", "Gemini chunks need a data-parallel degree of at least 1");
  if (config.search_interval < 1 || config.search_range_m < 0 || config.min_chunk_size_m < 0)
    throw Error("gemini", "",
                "expected search_interval >= 1, search_range_m >= 0 and min_chunk_size_m >= 0");
  for (int64_t n : numel) {
    if (n < 1)
      throw Error("gemini", "", "every chunked tensor needs at least one element");
  }
  GeminiChunkLayout out;
  out.dp = dp;
  for (size_t k = 0; k < numel.size(); ++k) {
    if (!frozen[k])
      out.numel.push_back(numel[k]);  // what _init_chunks registers
  }
  if (out.numel.empty())
    return out;

  // search_chunk_configuration over every tensor, frozen ones included (none
  // is ddp-ignored yet when GeminiDDP.__init__ calls init_chunk_manager).
  // Every tensor here is in the one data-parallel group of degree dp
  // (classify_params_by_dp_degree), so the lcm is dp.
  int64_t range = mebi(config.search_range_m);
  int64_t min_chunk = mebi(config.min_chunk_size_m);
  int64_t total = 0;
  for (int64_t n : numel)
    total += n;
  // The search tries up to 2^15 sizes over every tensor; a plan asks again
  // for the same model and layout at every micro-batch, so remember a few.
  using Key = std::tuple<std::vector<int64_t>, std::vector<bool>, int, int64_t, int64_t, int64_t,
                         bool, bool>;
  Key key{numel,
          frozen,
          dp,
          range,
          config.search_interval,
          min_chunk,
          config.filter_exlarge_params,
          config.keep_gathered_single_dp};
  static std::mutex memo_mutex;
  static std::map<Key, GeminiChunkLayout> memo;
  {
    std::lock_guard<std::mutex> lock(memo_mutex);
    auto it = memo.find(key);
    if (it != memo.end())
      return it->second;
  }
  if (total < min_chunk) {
    // "let small parameters keep gathered in CUDA all the time": one chunk
    // of exactly the total (frozen tensors included), never sharded.
    out.chunk_size = total;
    out.keep_gathered = true;
  } else {
    std::vector<int64_t> sizes = numel;
    if (config.filter_exlarge_params) {
      // _filter_exlarge_params: numpy mean and (population) std.
      double mean = 0;
      for (int64_t n : sizes)
        mean += static_cast<double>(n);
      mean /= static_cast<double>(sizes.size());
      double var = 0;
      for (int64_t n : sizes)
        var += (static_cast<double>(n) - mean) * (static_cast<double>(n) - mean);
      double upper = mean + 3 * std::sqrt(var / static_cast<double>(sizes.size()));
      sizes.erase(std::remove_if(sizes.begin(), sizes.end(),
                                 [&](int64_t n) { return static_cast<double>(n) > upper; }),
                  sizes.end());
    }
    int64_t max_size = min_chunk;
    for (int64_t n : sizes)
      max_size = std::max(max_size, n);
    int64_t step = config.search_interval;
    int64_t start = (max_size + step - 1) / step * step;
    int64_t best = start;
    int64_t best_waste = std::numeric_limits<int64_t>::max();
    for (int64_t size = start; size <= start + range; size += step) {
      int64_t waste = unused(sizes, size);
      if (waste < best_waste) {  // the first minimum wins
        best_waste = waste;
        best = size;
      }
    }
    // "the chunk size needs to be divided by each groups sizes"
    out.chunk_size = best + (dp - best % dp) % dp;
    out.search_waste = best_waste;
    out.keep_gathered = dp == 1 && config.keep_gathered_single_dp;
  }

  // ChunkManager.register_tensor: append to the last chunk; when it is full
  // (Chunk.append_tensor raises ChunkFullError) open a new one, of the
  // tensor's own size rounded up to dp when the tensor is larger.
  // Only the tensors that require grad (gemini_ddp.py _init_chunks).
  const std::vector<int64_t>& chunked = out.numel;
  out.chunk_of.resize(chunked.size());
  out.offset.resize(chunked.size());
  for (size_t k = 0; k < chunked.size(); ++k) {
    int64_t n = chunked[k];
    if (out.chunks.empty() || out.chunks.back().used + n > out.chunks.back().capacity) {
      GeminiChunk c;
      c.capacity = out.chunk_size;
      if (n > c.capacity)
        c.capacity = n + (dp - n % dp) % dp;
      c.first = k;
      c.end = k;
      out.chunks.push_back(c);
    }
    GeminiChunk& c = out.chunks.back();
    out.chunk_of[k] = out.chunks.size() - 1;
    out.offset[k] = c.used;
    c.used += n;
    c.end = k + 1;
  }
  for (GeminiChunk& c : out.chunks)
    c.shard = out.keep_gathered ? c.capacity : c.capacity / dp;
  std::lock_guard<std::mutex> lock(memo_mutex);
  if (memo.size() >= 32)
    memo.clear();
  memo.emplace(std::move(key), out);
  return out;
}

}  // namespace llmem::trace
