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

TEST(GeminiChunks, FrozenTensorsAreSearchedButNotChunked) {
  // GeminiDDP searches before _init_chunks leaves tensors without gradients
  // out (ColossalAI d4fb7bf gemini_ddp.py). Sizes 4, 4*, 4, 6 (* frozen),
  // step 2 over 2 ranks: the search sees all four and picks 10 as in
  // SearchPicksTheLeastWastefulSize; the chunks hold 4, 4, 6: [4, 4] (2 of
  // padding), then [6] (4 of padding).
  GeminiChunkLayout l =
      gemini_chunk_layout({4, 4, 4, 6}, {false, true, false, false}, 2, small(2, 8));
  EXPECT_EQ(l.chunk_size, 10);
  EXPECT_EQ(l.search_waste, 2);
  EXPECT_EQ(l.numel, (std::vector<int64_t>{4, 4, 6}));
  ASSERT_EQ(l.chunks.size(), 2u);
  EXPECT_EQ(l.chunks[0].used, 8);
  EXPECT_EQ(l.chunks[1].used, 6);
  EXPECT_EQ(l.chunks[1].padding(), 4);
  EXPECT_EQ(l.padded_numel(), 20);
  EXPECT_EQ(l.shard_numel(), 10);
  EXPECT_EQ(l.chunk_of, (std::vector<size_t>{0, 0, 1}));
  EXPECT_EQ(l.offset, (std::vector<int64_t>{0, 4, 0}));
  // The 6 (index 2 of the chunked ones) spans [0, 6) of chunk 1: 5 elements
  // in rank 0's shard [0, 5), 1 in rank 1's.
  EXPECT_EQ(l.in_shard(2, 0), 5);
  EXPECT_EQ(l.in_shard(2, 1), 1);
  // Searching the chunked tensors alone would find 14 (4 + 4 + 6, no waste):
  // one chunk. The frozen 4 changes the layout.
  GeminiChunkLayout alone = gemini_chunk_layout({4, 4, 6}, 2, small(2, 8));
  EXPECT_EQ(alone.chunk_size, 14);
  EXPECT_EQ(alone.chunks.size(), 1u);
}

TEST(GeminiChunks, FrozenTensorsCountTowardTheGatheredChunk) {
  // 10* + 20 < min_chunk_size: the search's total (30, the frozen 10
  // included) is the size of the one kept-gathered chunk, which holds 20.
  GeminiChunkLayout l = gemini_chunk_layout({10, 20}, {true, false}, 4);
  EXPECT_TRUE(l.keep_gathered);
  ASSERT_EQ(l.chunks.size(), 1u);
  EXPECT_EQ(l.chunks[0].capacity, 30);
  EXPECT_EQ(l.chunks[0].used, 20);
  EXPECT_EQ(l.shard_numel(), 30);
  EXPECT_EQ(l.in_shard(0, 3), 20);
  // Everything frozen: no chunk at all.
  EXPECT_TRUE(gemini_chunk_layout({10, 20}, {true, true}, 4).chunks.empty());
}

TrainingSetup tiny_setup() {
  TrainingSetup s;
  s.batch = 1;
  s.seq = 64;
  s.precision = Precision::kFp16;
  s.device = Device::kCpu;
  return s;
}

TEST(GeminiChunks, FrozenEmbeddingStaysWholeOutsideTheGatheredChunk) {
  // tiny-llama (vocab 32000, hidden 128, MLP 352, 2 layers, untied head):
  // embedding 4,096,000, per layer 4 x 16,384 + 3 x 45,056 + 2 x 128 =
  // 200,960, final norm 128, head 4,096,000: 8,594,048 elements in all,
  // under 32 Mi, so GeminiDDP keeps one chunk of 8,594,048 gathered on every
  // rank. With the embedding frozen the chunk keeps its size (the search
  // counted the embedding) but holds 4,498,048; the embedding is an fp16
  // tensor of its own next to it.
  ModelSpec m = load_model(std::string(LLMEM_SOURCE_DIR) + "/validation/configs/tiny-llama.json");
  TrainingSetup s = tiny_setup();
  s.freeze_embeddings = true;
  TraceResult t = build_trace(m, s, gemini_rank(2));
  EXPECT_EQ(t.trainable_params, 4498048);
  // 2 B x (4,096,000 frozen + 8,594,048 chunk) = 25,380,096.
  EXPECT_EQ(test_util::max_live(t.events, Component::kParameters), 25380096);
  // The fp32 chunk of the same size: 4 B x 8,594,048.
  EXPECT_EQ(test_util::max_live(t.events, Component::kMasterWeights), 34376192);
  // HybridAdam's two fp32 moments for the trainable tensors only (whole:
  // the chunk is not sharded): 2 x 4 B x 4,498,048 = 35,984,384, plus the
  // 4-byte step of each of the 20 trainable tensors (2 x 9 per layer, final
  // norm, head), real memory on this CPU device: 35,984,464.
  EXPECT_EQ(test_util::max_live(t.events, Component::kOptimizerStates), 35984464);
  // Nothing is gathered: the chunk never leaves.
  EXPECT_EQ(test_util::max_live(t.events, Component::kWeightCopies), 0);
}

TEST(GeminiChunks, FrozenLayerIsNeitherChunkedNorGathered) {
  // tiny-llama over 2 ranks with small chunks (as in
  // TheTraceGathersWholeChunksAtFirstUse) and layer 0 frozen: its 200,960
  // elements are whole fp16 tensors on every rank; the chunks hold the rest.
  ModelSpec m = load_model(std::string(LLMEM_SOURCE_DIR) + "/validation/configs/tiny-llama.json");
  TrainingSetup s = tiny_setup();
  s.freeze_layers = 1;
  RankPlan r = gemini_rank(2);
  r.gemini.min_chunk_size_m = 0;
  r.gemini.search_range_m = in_m(65536);
  std::vector<int64_t> sizes;
  std::vector<bool> frozen;
  int64_t frozen_numel = 0;
  for (const TensorSpec& t : m.tensors) {
    if (!t.tied_to.empty())
      continue;
    sizes.push_back(t.numel);
    frozen.push_back(t.layer == 0);
    if (t.layer == 0)
      frozen_numel += t.numel;
  }
  ASSERT_EQ(frozen_numel, 200960);
  GeminiChunkLayout l = gemini_chunk_layout(sizes, frozen, 2, r.gemini);
  ASSERT_GT(l.chunks.size(), 3u);
  int64_t chunked = 0;
  for (int64_t n : l.numel)
    chunked += n;
  EXPECT_EQ(chunked, 8594048 - 200960);

  TraceResult t = build_trace(m, s, r);
  EXPECT_EQ(t.trainable_params, 8594048 - 200960);
  // Setup: the frozen layer whole plus one fp16 shard of every chunk.
  EXPECT_EQ(test_util::max_live(t.events, Component::kParameters),
            2 * frozen_numel + 2 * l.shard_numel());
  // Held to the loss: every chunk gathered, the frozen layer not among them.
  EXPECT_EQ(test_util::max_live(t.events, Component::kWeightCopies), 2 * l.padded_numel());
  EXPECT_EQ(test_util::max_live(t.events, Component::kMasterWeights), 4 * l.shard_numel());
  for (const std::string& n : t.notes)
    EXPECT_EQ(n.find("not simulated"), std::string::npos) << n;
}

TEST(GeminiChunks, LoraIsRefused) {
  // ColossalAI's GeminiPlugin: support_lora() False, enable_lora raises
  // NotImplementedError.
  ModelSpec m = load_model(std::string(LLMEM_SOURCE_DIR) + "/validation/configs/tiny-llama.json");
  TrainingSetup s = tiny_setup();
  s.finetune = FinetuneMode::kLora;
  s.lora.rank = 8;
  EXPECT_THROW(build_trace(m, s, gemini_rank(2)), Error);
}

TEST(GeminiChunks, BadInputNamesTheKey) {
  EXPECT_THROW(gemini_chunk_layout({4}, 0), Error);
  EXPECT_THROW(gemini_chunk_layout({4, 0}, 2), Error);
  GeminiChunkConfig c;
  c.search_interval = 0;
  EXPECT_THROW(gemini_chunk_layout({4}, 2, c), Error);
  EXPECT_TRUE(gemini_chunk_layout({}, 2).chunks.empty());
  EXPECT_THROW(gemini_chunk_layout({4, 4}, {false}, 2), Error);
}

}  // namespace
}  // namespace llmem::trace
