// Copyright 2026 The llmem Authors.
// ColossalAI Gemini's chunk-size search and chunk layout against hand-worked
// cases (ColossalAI d4fb7bf chunk/search_utils.py, chunk/manager.py).

#include "trace/gemini_chunks.h"

#include <algorithm>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "llmem/error.h"
#include "llmem/model.h"

#include "trace/events.h"
#include "trace/program.h"

namespace llmem::trace {
namespace {

// x elements expressed in ColossalAI's "MB" unit (2^20 elements); exact for
// small powers of two.
double in_m(int64_t x) {
  return static_cast<double>(x) / (1024.0 * 1024.0);
}

GeminiChunkConfig small(int64_t interval, int64_t range) {
  GeminiChunkConfig c;
  c.search_interval = interval;
  c.search_range_m = in_m(range);
  c.min_chunk_size_m = 0;
  return c;
}

TEST(GeminiChunks, SearchPicksTheLeastWastefulSize) {
  // Sizes 4, 4, 4, 6, step 2 from max 6 to 6 + 8. Unused elements
  // (_get_unused_byte): 6 -> 6, 8 -> 6, 10 -> 2, 12 -> 6, 14 -> 10.
  GeminiChunkLayout l = gemini_chunk_layout({4, 4, 4, 6}, 2, small(2, 8));
  EXPECT_EQ(l.chunk_size, 10);
  EXPECT_EQ(l.search_waste, 2);
  EXPECT_FALSE(l.keep_gathered);
  // [4, 4] (the third 4 would make 12 > 10), then [4, 6].
  ASSERT_EQ(l.chunks.size(), 2u);
  EXPECT_EQ(l.chunks[0].used, 8);
  EXPECT_EQ(l.chunks[0].padding(), 2);
  EXPECT_EQ(l.chunks[1].used, 10);
  EXPECT_EQ(l.chunks[1].padding(), 0);
  EXPECT_EQ(l.chunks[0].shard, 5);
  EXPECT_EQ(l.shard_numel(), 10);
  EXPECT_EQ(l.padded_numel(), 20);
  EXPECT_EQ(l.chunk_of, (std::vector<size_t>{0, 0, 1, 1}));
  EXPECT_EQ(l.offset, (std::vector<int64_t>{0, 4, 0, 4}));
  // Adam states cover each tensor's part inside a rank's shard [5r, 5r + 5).
  EXPECT_EQ(l.in_shard(0, 0), 4);
  EXPECT_EQ(l.in_shard(0, 1), 0);
  EXPECT_EQ(l.in_shard(1, 0), 1);
  EXPECT_EQ(l.in_shard(1, 1), 3);
  EXPECT_EQ(l.in_shard(3, 0), 1);
  EXPECT_EQ(l.in_shard(3, 1), 5);
}

TEST(GeminiChunks, ChunkSizeRoundsUpToTheDataParallelDegree) {
  // The same search (10) over 4 ranks: 12, so the first three fit together.
  GeminiChunkLayout l = gemini_chunk_layout({4, 4, 4, 6}, 4, small(2, 8));
  EXPECT_EQ(l.chunk_size, 12);
  ASSERT_EQ(l.chunks.size(), 2u);
  EXPECT_EQ(l.chunks[0].used, 12);
  EXPECT_EQ(l.chunks[1].used, 6);
  EXPECT_EQ(l.chunks[1].shard, 3);
  EXPECT_EQ(l.shard_numel(), 6);
}

TEST(GeminiChunks, OutlierLeftOutOfTheSearchGetsADedicatedChunk) {
  // Ten 1s and a 100: mean 10, population std 28.46, mean + 3 sigma = 95.4,
  // so the search sees only the 1s: start = ceil(1 / 4) * 4 = 4.
  std::vector<int64_t> sizes{1, 1, 1, 1, 1, 100, 1, 1, 1, 1, 1};
  GeminiChunkLayout l = gemini_chunk_layout(sizes, 2, small(4, 0));
  EXPECT_EQ(l.chunk_size, 4);
  EXPECT_EQ(l.search_waste, 2);  // 4 + 4 + 2 of 12
  // [1 1 1 1] [1] [100] [1 1 1 1] [1]: the 100 closes the chunk before it.
  ASSERT_EQ(l.chunks.size(), 5u);
  EXPECT_EQ(l.chunks[1].used, 1);
  EXPECT_EQ(l.chunks[2].capacity, 100);
  EXPECT_EQ(l.chunks[2].used, 100);
  EXPECT_EQ(l.chunks[2].shard, 50);
  EXPECT_EQ(l.chunk_of[5], 2u);
  EXPECT_EQ(l.padded_numel(), 116);
  EXPECT_EQ(l.shard_numel(), 58);
  // Without the filter the 100 sets the size: three chunks of 100.
  GeminiChunkConfig c = small(4, 0);
  c.filter_exlarge_params = false;
  GeminiChunkLayout u = gemini_chunk_layout(sizes, 2, c);
  EXPECT_EQ(u.chunk_size, 100);
  ASSERT_EQ(u.chunks.size(), 3u);
  EXPECT_EQ(u.padded_numel(), 300);
}

TEST(GeminiChunks, DedicatedChunkIsPaddedToTheDegree) {
  // 101 over 4 ranks: a chunk of 104, whose 3 spare elements then take the
  // next three 1s (append_tensor fills the last chunk while it can).
  std::vector<int64_t> sizes{1, 1, 1, 1, 1, 101, 1, 1, 1, 1, 1};
  GeminiChunkLayout l = gemini_chunk_layout(sizes, 4, small(4, 0));
  ASSERT_EQ(l.chunks.size(), 4u);
  EXPECT_EQ(l.chunks[2].capacity, 104);
  EXPECT_EQ(l.chunks[2].used, 104);
  EXPECT_EQ(l.chunks[2].shard, 26);
  EXPECT_EQ(l.chunk_of[8], 2u);
  EXPECT_EQ(l.chunks[3].used, 2);
}

TEST(GeminiChunks, SmallModelsStayGathered) {
  // 30 elements < min_chunk_size (32 Mi elements): one chunk of the total,
  // kept gathered on every rank, states for whole tensors.
  GeminiChunkLayout l = gemini_chunk_layout({10, 20}, 4);
  EXPECT_TRUE(l.keep_gathered);
  ASSERT_EQ(l.chunks.size(), 1u);
  EXPECT_EQ(l.chunks[0].capacity, 30);
  EXPECT_EQ(l.shard_numel(), 30);
  EXPECT_EQ(l.in_shard(1, 3), 20);
}

TEST(GeminiChunks, Llama7bAtTheDefaults) {
  // GeminiDDP's defaults on LLaMA-7B (module order, 291 tensors). The 131M
  // embedding and head are above mean + 3 sigma; the search starts at the
  // largest MLP weight (11008 x 4096 = 45,088,768) rounded up to 1024, and
  // none of the 32,768 sizes up to 32 Mi elements larger wastes less, so
  // nearly every weight is a chunk of its own or q+k / v+o pairs share one.
  // Worked independently with numpy from search_utils.py.
  ModelSpec m = load_model("huggyllama/llama-7b");
  std::vector<int64_t> sizes;
  for (const TensorSpec& t : m.tensors) {
    if (t.tied_to.empty())
      sizes.push_back(t.numel);
  }
  GeminiChunkLayout l = gemini_chunk_layout(sizes, 4);
  EXPECT_EQ(l.chunk_size, 45101056);
  EXPECT_EQ(l.search_waste, 739897344);
  EXPECT_EQ(l.chunks.size(), 162u);
  EXPECT_EQ(l.padded_numel() - m.params(), 739897344);
  EXPECT_EQ(l.shard_numel(), 1869578240);
  // The embedding and the head: dedicated chunks of their own size.
  EXPECT_EQ(l.chunks.front().capacity, 131072000);
  EXPECT_EQ(l.chunks.back().capacity, 131072000);
  EXPECT_EQ(l.chunks.back().padding(), 0);
}

TEST(GeminiChunks, TheTraceGathersWholeChunksAtFirstUse) {
  // A Gemini rank (as estimate/distributed.cc sets it up) over 2 replicas of
  // tiny-llama, with a small minimum chunk so that the layout has chunks that
  // do not follow the decoder layers.
  ModelSpec m = load_model(std::string(LLMEM_SOURCE_DIR) + "/validation/configs/tiny-llama.json");
  TrainingSetup s;
  s.batch = 1;
  s.seq = 64;
  s.precision = Precision::kFp16;
  s.device = Device::kCpu;
  RankPlan r = gemini_rank(2);
  r.gemini.min_chunk_size_m = 0;
  r.gemini.search_range_m = in_m(65536);
  std::vector<int64_t> sizes;
  for (const TensorSpec& t : m.tensors) {
    if (t.tied_to.empty())
      sizes.push_back(t.numel);
  }
  GeminiChunkLayout l = gemini_chunk_layout(sizes, 2, r.gemini);
  ASSERT_GT(l.chunks.size(), 3u);  // not one unit per layer plus the root
  std::vector<int64_t> want;
  for (const GeminiChunk& c : l.chunks)
    want.push_back(2 * c.capacity);

  TraceResult t = build_trace(m, s, r);
  // The first forward pass gathers every chunk once, whole (padding too).
  int first_step = -1;
  std::vector<int64_t> got;
  for (const Event& e : t.events) {
    if (e.phase != Phase::kForward)
      continue;
    if (first_step < 0)
      first_step = e.step;
    if (e.step == first_step && e.alloc && e.component == Component::kWeightCopies)
      got.push_back(e.bytes);
  }
  std::sort(want.begin(), want.end());
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, want);
  // Held to the loss: the whole padded model at once.
  EXPECT_EQ(test_util::max_live(t.events, Component::kWeightCopies), 2 * l.padded_numel());
  // The fp32 master: the shards of the fp32 chunks.
  EXPECT_EQ(test_util::max_live(t.events, Component::kMasterWeights), 4 * l.shard_numel());
}

TEST(GeminiChunks, BadInputNamesTheKey) {
  EXPECT_THROW(gemini_chunk_layout({4}, 0), Error);
  EXPECT_THROW(gemini_chunk_layout({4, 0}, 2), Error);
  GeminiChunkConfig c;
  c.search_interval = 0;
  EXPECT_THROW(gemini_chunk_layout({4}, 2, c), Error);
  EXPECT_TRUE(gemini_chunk_layout({}, 2).chunks.empty());
}

}  // namespace
}  // namespace llmem::trace
