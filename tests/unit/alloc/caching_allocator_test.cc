// Copyright 2026 The llmem Authors.
// Hand-computed cases for the caching-allocator simulation. Each expectation
// carries the arithmetic that PyTorch's CUDACachingAllocator.cpp rules give.

#include <cstdint>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "llmem/allocator.h"
#include "llmem/error.h"

namespace llmem {
namespace {

constexpr uint64_t kKiB = 1ull << 10;
constexpr uint64_t kMiB = 1ull << 20;
using Handle = CachingAllocator::Handle;
constexpr Handle kOom = CachingAllocator::kOutOfMemory;

AllocatorOptions Expandable() {
  AllocatorOptions o;
  o.expandable_segments = true;
  return o;
}

// ---------------------------------------------------------------- rounding

TEST(RoundRequest, RoundsTo512Bytes) {
  const AllocatorOptions o;
  EXPECT_EQ(round_request(1, o), 512u);            // below kMinBlockSize -> 512
  EXPECT_EQ(round_request(511, o), 512u);          // below kMinBlockSize -> 512
  EXPECT_EQ(round_request(512, o), 512u);          // already a multiple
  EXPECT_EQ(round_request(513, o), 1024u);         // ceil(513 / 512) = 2 -> 1024
  EXPECT_EQ(round_request(1000000, o), 1000448u);  // ceil(1e6 / 512) = 1954 -> 1954 * 512
  EXPECT_EQ(round_request(UINT64_MAX, o), UINT64_MAX - 511);  // saturates, no wrap
}

TEST(RoundRequest, Power2DivisionsLeaveSmallSizesOn512Rounding) {
  AllocatorOptions o;
  o.roundup_power2_divisions = 4;
  // 1200 <= 512 * 4 = 2048, so round_size keeps plain 512-B rounding:
  // ceil(1200 / 512) = 3 -> 1536 (not the 1280 of the source comment's example).
  EXPECT_EQ(round_request(1200, o), 1536u);
  EXPECT_EQ(round_request(2048, o), 2048u);  // not > 2048: plain rounding, exact
  // 2049 > 2048: between 2048 and 4096 the steps are 2048/4 = 512 apart -> 2560.
  EXPECT_EQ(round_request(2049, o), 2560u);
  // 4200: steps between 4096 and 8192 are 1024 apart -> 5120 (plain: 4608).
  EXPECT_EQ(round_request(4200, o), 5120u);
  EXPECT_EQ(round_request(4096, o), 4096u);  // a power of two is kept
  // 1 MiB + 1: steps of 256 KiB above 1 MiB -> 1.25 MiB = 1310720.
  EXPECT_EQ(round_request(kMiB + 1, o), 1310720u);
  // 1.3 MiB = 1363149 B -> next step 1.5 MiB.
  EXPECT_EQ(round_request(1363149, o), 3 * kMiB / 2);

  o.roundup_power2_divisions = 8;
  // 8193 > 512 * 8 = 4096: steps of 8192 / 8 = 1024 -> 9216 (plain: 8704).
  EXPECT_EQ(round_request(8193, o), 9216u);
  o.roundup_power2_divisions = 1;  // one division is the same as off
  EXPECT_EQ(round_request(8193, o), 8704u);
}

TEST(RoundRequest, Power2DivisionsChargeTheRoundedBlock) {
  AllocatorOptions o;
  o.roundup_power2_divisions = 4;
  CachingAllocator a(o);
  // 1 MiB + 1 -> 1.25 MiB: large pool (> 1 MiB), 20 MiB segment, split since
  // 20 - 1.25 = 18.75 MiB > 1 MiB.
  const Handle h = a.allocate(kMiB + 1);
  EXPECT_EQ(a.block_size(h), 1310720u);
  EXPECT_EQ(a.stats().allocated, 1310720u);
  EXPECT_EQ(a.stats().requested, kMiB + 1);
  EXPECT_EQ(a.stats().reserved, 20 * kMiB);
}

TEST(SegmentSize, FollowsGetAllocationSize) {
  EXPECT_EQ(segment_size_for(512), 2 * kMiB);          // <= 1 MiB -> kSmallBuffer
  EXPECT_EQ(segment_size_for(kMiB), 2 * kMiB);         // boundary is inclusive
  EXPECT_EQ(segment_size_for(kMiB + 512), 20 * kMiB);  // (1, 10) MiB -> kLargeBuffer
  EXPECT_EQ(segment_size_for(10 * kMiB - 512), 20 * kMiB);
  EXPECT_EQ(segment_size_for(10 * kMiB), 10 * kMiB);  // >= 10 MiB: multiple of 2 MiB
  EXPECT_EQ(segment_size_for(30 * kMiB), 30 * kMiB);
  EXPECT_EQ(segment_size_for(31 * kMiB), 32 * kMiB);  // ceil(31 / 2) * 2 = 32
}

// ---------------------------------------------------------------- pools and segments

TEST(CachingAllocator, ResetBehavesAsANewAllocator) {
  // A random mix of sizes and frees, run on a fresh allocator and on one
  // that was used and reset: every handle, block and counter must agree.
  auto run = [](CachingAllocator& a) {
    std::mt19937 rng(7);
    std::vector<CachingAllocator::Handle> live;
    std::vector<uint64_t> trail;
    for (int i = 0; i < 400; ++i) {
      if (!live.empty() && rng() % 3 == 0) {
        size_t k = rng() % live.size();
        a.release(live[k]);
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(k));
      } else {
        uint64_t bytes = (rng() % 2 == 0) ? rng() % (1 << 20) : rng() % (64 * kMiB);
        CachingAllocator::Handle h = a.allocate(bytes);
        live.push_back(h);
        trail.push_back(h);
        trail.push_back(a.block_address(h));
      }
      trail.push_back(a.stats().allocated);
      trail.push_back(a.stats().reserved);
    }
    return trail;
  };
  AllocatorOptions options;
  CachingAllocator fresh(options);
  std::vector<uint64_t> expected = run(fresh);
  AllocatorOptions other;
  other.expandable_segments = true;
  CachingAllocator reused(other);
  run(reused);
  reused.reset(options);
  EXPECT_EQ(reused.num_handles(), 0u);
  EXPECT_EQ(reused.stats().reserved, 0u);
  EXPECT_EQ(run(reused), expected);
  options.max_split_size = 1;
  EXPECT_THROW(reused.reset(options), Error);
}

TEST(CachingAllocator, SmallRequestsShareA2MiBSegment) {
  CachingAllocator a;
  const Handle h1 = a.allocate(1000);  // -> 1024 B, small pool, new 2 MiB segment
  EXPECT_EQ(a.block_size(h1), 1024u);
  EXPECT_EQ(a.stats().allocated, 1024u);
  EXPECT_EQ(a.stats().reserved, 2 * kMiB);
  EXPECT_EQ(a.stats().num_segments, 1u);
  // Second request, 3000 -> 3072 B, is carved from the 2 MiB - 1024 B remainder,
  // right after the first block.
  const Handle h2 = a.allocate(3000);
  EXPECT_EQ(a.block_size(h2), 3072u);
  EXPECT_EQ(a.block_address(h2), a.block_address(h1) + 1024);
  EXPECT_EQ(a.stats().allocated, 1024u + 3072u);
  EXPECT_EQ(a.stats().reserved, 2 * kMiB);
  EXPECT_EQ(a.stats().num_mallocs, 1u);

  const auto segments = a.snapshot();
  ASSERT_EQ(segments.size(), 1u);
  EXPECT_TRUE(segments[0].small_pool);
  ASSERT_EQ(segments[0].blocks.size(), 3u);
  EXPECT_EQ(segments[0].blocks[2].size, 2 * kMiB - 4096);  // 2097152 - 1024 - 3072
  EXPECT_FALSE(segments[0].blocks[2].allocated);
}

TEST(CachingAllocator, SmallRequestNeverUsesLargePool) {
  CachingAllocator a;
  a.release(a.allocate(5 * kMiB));  // 20 MiB large segment, now cached
  const Handle h = a.allocate(1000);
  (void)h;
  // The small pool is separate: a new 2 MiB segment, 20 + 2 = 22 MiB reserved.
  EXPECT_EQ(a.stats().reserved, 22 * kMiB);
  EXPECT_EQ(a.stats().num_segments, 2u);
  // 1 MiB exactly is still small; 1 MiB + 1 B (-> 1 MiB + 512) is large and
  // fits the cached 20 MiB block.
  a.allocate(kMiB);
  EXPECT_EQ(a.stats().reserved, 22 * kMiB);  // carved from the small segment's 2 MiB - 1 KiB
  a.allocate(kMiB + 1);
  EXPECT_EQ(a.stats().reserved, 22 * kMiB);  // from the cached 20 MiB block
  EXPECT_EQ(a.stats().num_segments, 2u);
}

TEST(CachingAllocator, MidSizeRequestGets20MiBSegmentAndSharesIt) {
  CachingAllocator a;
  const Handle h1 = a.allocate(5 * kMiB);  // 1 MiB < 5 MiB < 10 MiB -> 20 MiB segment
  EXPECT_EQ(a.stats().reserved, 20 * kMiB);
  EXPECT_EQ(a.block_size(h1), 5 * kMiB);   // split: 20 - 5 = 15 MiB > 1 MiB
  const Handle h2 = a.allocate(5 * kMiB);  // best fit: the 15 MiB remainder
  EXPECT_EQ(a.block_address(h2), a.block_address(h1) + 5 * kMiB);
  const Handle h3 = a.allocate(5 * kMiB);  // remainder 10 MiB -> split again
  const Handle h4 = a.allocate(5 * kMiB);  // remainder exactly 5 MiB, no leftover
  EXPECT_EQ(a.block_address(h4), a.block_address(h3) + 5 * kMiB);
  EXPECT_EQ(a.block_size(h4), 5 * kMiB);
  EXPECT_EQ(a.stats().allocated, 20 * kMiB);
  EXPECT_EQ(a.stats().reserved, 20 * kMiB);
  EXPECT_EQ(a.stats().num_segments, 1u);
  a.allocate(5 * kMiB);  // nothing cached: a second 20 MiB segment
  EXPECT_EQ(a.stats().reserved, 40 * kMiB);
  EXPECT_EQ(a.stats().num_segments, 2u);
}

TEST(CachingAllocator, LargeRequestsRoundSegmentTo2MiB) {
  CachingAllocator a;
  const Handle h30 = a.allocate(30 * kMiB);  // >= 10 MiB: 30 MiB is a 2 MiB multiple
  EXPECT_EQ(a.stats().reserved, 30 * kMiB);
  EXPECT_EQ(a.block_size(h30), 30 * kMiB);
  // 31 MiB -> 32 MiB segment. The remainder 1 MiB is not > kSmallSize, so the
  // block is not split and allocated counts the whole 32 MiB.
  const Handle h31 = a.allocate(31 * kMiB);
  EXPECT_EQ(a.stats().reserved, 62 * kMiB);
  EXPECT_EQ(a.block_size(h31), 32 * kMiB);
  EXPECT_EQ(a.stats().allocated, 62 * kMiB);
  EXPECT_EQ(a.stats().requested, 61 * kMiB);
  // 30.5 MiB -> 32 MiB segment, remainder 1.5 MiB > 1 MiB: split.
  const Handle h305 = a.allocate(30 * kMiB + 512 * kKiB);
  EXPECT_EQ(a.block_size(h305), 30 * kMiB + 512 * kKiB);
  EXPECT_EQ(a.stats().reserved, 94 * kMiB);
  EXPECT_EQ(a.stats().allocated, 62 * kMiB + 30 * kMiB + 512 * kKiB);
}

TEST(CachingAllocator, NoSplitWhenLargeRemainderIsAtMost1MiB) {
  CachingAllocator a;
  // 11 MiB -> 12 MiB segment, remainder exactly 1 MiB: not split.
  const Handle h = a.allocate(11 * kMiB);
  EXPECT_EQ(a.block_size(h), 12 * kMiB);
  EXPECT_EQ(a.stats().allocated, 12 * kMiB);
  a.release(h);
  // The cached 12 MiB block serves 11.5 MiB whole: 12 - 11.5 = 0.5 MiB is not
  // > 1 MiB, so no split and the whole 12 MiB is charged.
  const Handle h2 = a.allocate(11 * kMiB + 512 * kKiB);
  EXPECT_EQ(a.block_size(h2), 12 * kMiB);
  EXPECT_EQ(a.stats().reserved, 12 * kMiB);
  // Small-pool blocks split whenever >= 512 B remain: a new 2 MiB small
  // segment serves 1 MiB - 512 and keeps 1 MiB + 512 free.
  const Handle s = a.allocate(kMiB - 512);
  EXPECT_EQ(a.block_size(s), kMiB - 512);
}

TEST(CachingAllocator, FreedNeighboursMergeAndAreReused) {
  CachingAllocator a;
  const Handle x = a.allocate(5 * kMiB);  // [0, 5) of a 20 MiB segment
  const Handle y = a.allocate(5 * kMiB);  // [5, 10)
  const Handle z = a.allocate(5 * kMiB);  // [10, 15); [15, 20) stays free
  const uint64_t base = a.block_address(x);
  a.release(x);  // free [0, 5): next is allocated, no merge
  a.release(y);  // free [5, 10) merges with [0, 5) -> free [0, 10)
  auto seg = a.snapshot();
  ASSERT_EQ(seg.size(), 1u);
  ASSERT_EQ(seg[0].blocks.size(), 3u);  // [0,10) free, [10,15) z, [15,20) free
  EXPECT_EQ(seg[0].blocks[0].size, 10 * kMiB);
  // 8 MiB: free blocks are 5 MiB (tail) and 10 MiB; best fit is the merged
  // 10 MiB block; remainder 2 MiB > 1 MiB -> split.
  const Handle w = a.allocate(8 * kMiB);
  EXPECT_EQ(a.block_address(w), base);
  EXPECT_EQ(a.block_size(w), 8 * kMiB);
  EXPECT_EQ(a.stats().reserved, 20 * kMiB);
  a.release(z);  // [8,10) free + [10,15) + [15,20) free -> one free 12 MiB block
  seg = a.snapshot();
  ASSERT_EQ(seg[0].blocks.size(), 2u);
  EXPECT_EQ(seg[0].blocks[1].size, 12 * kMiB);
  a.release(w);  // whole segment free again, one block
  seg = a.snapshot();
  ASSERT_EQ(seg[0].blocks.size(), 1u);
  EXPECT_EQ(seg[0].blocks[0].size, 20 * kMiB);
  // The whole 20 MiB block now serves a 9 MiB request (split, 11 MiB left).
  const Handle v = a.allocate(9 * kMiB);
  EXPECT_EQ(a.block_address(v), base);
  EXPECT_EQ(a.stats().num_mallocs, 1u);
}

TEST(CachingAllocator, BestFitPicksSmallestAdequateBlock) {
  CachingAllocator a;
  // Three exact segments of 12, 16 and 14 MiB, all cached after release.
  const Handle h12 = a.allocate(12 * kMiB);
  const Handle h16 = a.allocate(16 * kMiB);
  const Handle h14 = a.allocate(14 * kMiB);
  const uint64_t a12 = a.block_address(h12);
  const uint64_t a16 = a.block_address(h16);
  const uint64_t a14 = a.block_address(h14);
  a.release(h12);
  a.release(h16);
  a.release(h14);
  // 13 MiB: smallest block >= 13 is 14 MiB; 14 - 13 = 1 MiB, not split.
  const Handle r13 = a.allocate(13 * kMiB);
  EXPECT_EQ(a.block_address(r13), a14);
  EXPECT_EQ(a.block_size(r13), 14 * kMiB);
  // 11 MiB: 12 MiB block, remainder 1 MiB, not split.
  const Handle r11 = a.allocate(11 * kMiB);
  EXPECT_EQ(a.block_address(r11), a12);
  // 15 MiB: only the 16 MiB block is left.
  const Handle r15 = a.allocate(15 * kMiB);
  EXPECT_EQ(a.block_address(r15), a16);
  EXPECT_EQ(a.stats().reserved, 42 * kMiB);  // 12 + 16 + 14, no new cudaMalloc
  EXPECT_EQ(a.stats().num_mallocs, 3u);
}

TEST(CachingAllocator, EqualSizedBlocksTieBreakOnLowerAddress) {
  CachingAllocator a;
  const Handle first = a.allocate(12 * kMiB);
  const Handle second = a.allocate(12 * kMiB);
  const uint64_t low = a.block_address(first);
  a.release(second);
  a.release(first);
  EXPECT_EQ(a.block_address(a.allocate(12 * kMiB)), low);
}

// Many cached blocks of few sizes, freed and reused in random order: every
// request takes the cached block of its size with the lowest address, as a
// plain ordered set of (size, address) says. Each block is a segment of its
// own (no merging), and a request 512 KiB under a block's size leaves too
// little to split, so blocks keep their size and address throughout.
TEST(CachingAllocator, ReuseFollowsSizeThenAddressOrderUnderRandomTraffic) {
  CachingAllocator a;
  std::mt19937_64 rng(7);
  const uint64_t sizes[] = {12 * kMiB, 14 * kMiB, 16 * kMiB};
  std::vector<Handle> live;
  for (int i = 0; i < 90; ++i)
    live.push_back(a.allocate(sizes[rng() % 3]));
  std::set<std::pair<uint64_t, uint64_t>> cached;  // (size, address)
  for (int step = 0; step < 2000; ++step) {
    if (live.empty() || (rng() % 2 == 0 && !cached.empty())) {
      const uint64_t size = sizes[rng() % 3];
      const uint64_t request = size - 512 * kKiB;
      const auto expected = cached.lower_bound({request, 0});
      if (expected == cached.end() || expected->first != size)
        continue;  // would need a new segment, or split a larger block
      const Handle h = a.allocate(request);
      ASSERT_EQ(a.block_size(h), expected->first) << "step " << step;
      ASSERT_EQ(a.block_address(h), expected->second) << "step " << step;
      cached.erase(expected);
      live.push_back(h);
    } else {
      const size_t i = rng() % live.size();
      cached.insert({a.block_size(live[i]), a.block_address(live[i])});
      a.release(live[i]);
      live[i] = live.back();
      live.pop_back();
    }
  }
  EXPECT_EQ(a.stats().num_segments, 90u);
}

TEST(CachingAllocator, FragmentationGrowsReservedDespiteFreeBytes) {
  CachingAllocator a;
  // Four 5 MiB blocks fill one 20 MiB segment exactly.
  const Handle b0 = a.allocate(5 * kMiB);
  const Handle b1 = a.allocate(5 * kMiB);
  const Handle b2 = a.allocate(5 * kMiB);
  const Handle b3 = a.allocate(5 * kMiB);
  (void)b1;
  (void)b3;
  a.release(b0);
  a.release(b2);  // 10 MiB free, but as two separate 5 MiB holes
  EXPECT_EQ(a.stats().reserved - a.stats().allocated, 10 * kMiB);
  // 8 MiB fits neither hole: a new 20 MiB segment (8 MiB < 10 MiB).
  a.allocate(8 * kMiB);
  EXPECT_EQ(a.stats().reserved, 40 * kMiB);
  EXPECT_EQ(a.stats().allocated, 18 * kMiB);  // 5 + 5 + 8
}

// ---------------------------------------------------------------- max_split_size

TEST(MaxSplitSize, OversizeBlocksFollowTheirRules) {
  AllocatorOptions o;
  o.max_split_size = 40 * kMiB;
  CachingAllocator a(o);
  a.release(a.allocate(100 * kMiB));  // cached oversize block of 100 MiB
  // 90 MiB >= 40: may reuse an oversize block smaller than 90 + 20 = 110 MiB.
  // It is not split (request >= max_split_size): the whole 100 MiB is charged.
  const Handle h90 = a.allocate(90 * kMiB);
  EXPECT_EQ(a.block_size(h90), 100 * kMiB);
  EXPECT_EQ(a.stats().reserved, 100 * kMiB);
  a.release(h90);
  // 60 MiB: 100 >= 60 + 20 = 80, outside the tolerance -> new 60 MiB segment.
  const Handle h60 = a.allocate(60 * kMiB);
  EXPECT_EQ(a.block_size(h60), 60 * kMiB);
  EXPECT_EQ(a.stats().reserved, 160 * kMiB);
  a.release(h60);
  // 30 MiB < 40: never served by an oversize block (60 and 100 are cached) ->
  // new 30 MiB segment.
  const Handle h30 = a.allocate(30 * kMiB);
  EXPECT_EQ(a.stats().reserved, 190 * kMiB);
  EXPECT_EQ(a.stats().num_segments, 3u);
  a.release(h30);
  // 20 MiB < 40 is served by the cached 30 MiB block (not oversize) and split:
  // 30 - 20 = 10 MiB > 1 MiB.
  const Handle h20 = a.allocate(20 * kMiB);
  EXPECT_EQ(a.block_size(h20), 20 * kMiB);
  EXPECT_EQ(a.stats().reserved, 190 * kMiB);
}

TEST(MaxSplitSize, UnlimitedSplitsTheSameBlock) {
  CachingAllocator a;  // default: every block may be split
  a.release(a.allocate(100 * kMiB));
  const Handle h = a.allocate(60 * kMiB);  // 100 - 60 = 40 MiB > 1 MiB -> split
  EXPECT_EQ(a.block_size(h), 60 * kMiB);
  a.allocate(30 * kMiB);  // from the 40 MiB remainder
  EXPECT_EQ(a.stats().reserved, 100 * kMiB);
}

TEST(MaxSplitSize, NonSplitRoundingIsConfigurable) {
  AllocatorOptions o;
  o.max_split_size = 40 * kMiB;
  o.max_non_split_rounding = 5 * kMiB;
  CachingAllocator a(o);
  a.release(a.allocate(100 * kMiB));
  // 95 MiB: 100 >= 95 + 5 -> not reused; new 96 MiB segment (95 rounded to 2 MiB).
  const Handle h95 = a.allocate(95 * kMiB);
  EXPECT_EQ(a.stats().reserved, 196 * kMiB);
  EXPECT_EQ(a.block_size(h95), 96 * kMiB);  // 96 - 95 = 1 MiB, not split anyway
  // 97 MiB: 100 < 97 + 5 -> reuses the cached 100 MiB block whole.
  const Handle h97 = a.allocate(97 * kMiB);
  EXPECT_EQ(a.block_size(h97), 100 * kMiB);
  EXPECT_EQ(a.stats().reserved, 196 * kMiB);
}

// allocate(bytes, &size) reports what block_size() would, slack included.
TEST(CachingAllocator, AllocateReportsTheChargedBlockSize) {
  AllocatorOptions o;
  o.capacity = 40 * kMiB;
  CachingAllocator a(o);
  uint64_t size = 1;
  // 1000 B rounds to 1024 B (two 512-B units) in a 2 MiB small segment.
  const Handle small = a.allocate(1000, &size);
  EXPECT_EQ(size, 1024u);
  EXPECT_EQ(size, a.block_size(small));
  // 11 MiB takes a 12 MiB segment whole (a 1 MiB remainder is not split).
  const Handle whole = a.allocate(11 * kMiB, &size);
  EXPECT_EQ(size, 12 * kMiB);
  EXPECT_EQ(size, a.block_size(whole));
  // A zero-byte request is charged nothing.
  a.allocate(0, &size);
  EXPECT_EQ(size, 0u);
  // 2 + 12 MiB reserved: 30 MiB more does not fit in 40 MiB, and nothing
  // cached can be freed: out of memory, size 0.
  size = 1;
  EXPECT_EQ(a.allocate(30 * kMiB, &size), kOom);
  EXPECT_EQ(size, 0u);
}

// ---------------------------------------------------------------- capacity and OOM

TEST(Capacity, FreesCachedBlocksAndRetries) {
  AllocatorOptions o;
  o.capacity = 40 * kMiB;
  CachingAllocator a(o);
  a.release(a.allocate(30 * kMiB));  // 30 MiB cached
  // 32 MiB: the cached 30 MiB is too small; cudaMalloc(32) fails (30 + 32 > 40);
  // max_split_size is unlimited so no oversize release; all unsplit cached
  // blocks are freed (30 MiB) and the retry succeeds.
  const Handle h = a.allocate(32 * kMiB);
  ASSERT_NE(h, kOom);
  EXPECT_EQ(a.stats().reserved, 32 * kMiB);
  EXPECT_EQ(a.stats().num_frees, 1u);
  EXPECT_EQ(a.stats().num_alloc_retries, 1u);
  EXPECT_EQ(a.stats().num_oom, 0u);
  EXPECT_EQ(a.stats().num_mallocs, 2u);
  EXPECT_EQ(a.stats().peak_reserved, 32 * kMiB);  // 30 freed before 32 mapped
}

TEST(Capacity, OversizeBlocksAreFreedFirst) {
  AllocatorOptions o;
  o.capacity = 100 * kMiB;
  o.max_split_size = 40 * kMiB;
  CachingAllocator a(o);
  const Handle big = a.allocate(50 * kMiB);
  const Handle mid = a.allocate(44 * kMiB);
  a.release(big);
  a.release(mid);  // cached oversize: 44 and 50 MiB; reserved 94 MiB
  // 30 MiB < 40 cannot use oversize blocks; cudaMalloc(30) fails (94 + 30 > 100);
  // release_available_cached_blocks frees the smallest oversize block of at
  // least max(30, 40) = 40 MiB, i.e. only the 44 MiB one; 50 + 30 = 80 fits.
  const Handle h = a.allocate(30 * kMiB);
  ASSERT_NE(h, kOom);
  EXPECT_EQ(a.stats().reserved, 80 * kMiB);
  EXPECT_EQ(a.stats().num_frees, 1u);
  EXPECT_EQ(a.stats().num_alloc_retries, 0u);
}

TEST(Capacity, SeveralOversizeBlocksFreedLargestFirst) {
  AllocatorOptions o;
  o.capacity = 120 * kMiB;
  o.max_split_size = 40 * kMiB;
  CachingAllocator a(o);
  const Handle big = a.allocate(50 * kMiB);
  const Handle mid = a.allocate(44 * kMiB);
  const Handle small = a.allocate(5 * kMiB);  // 20 MiB segment, split 5 + 15
  (void)small;
  a.release(big);
  a.release(mid);  // reserved 50 + 44 + 20 = 114 MiB
  // 60 MiB: nothing cached is large enough; cudaMalloc(60) fails (114 + 60 >
  // 120); no single oversize block >= 60, so the largest are freed: 50 (total
  // 50 < 60), then 44 (total 94 >= 60). The split 20 MiB segment stays.
  const Handle h = a.allocate(60 * kMiB);
  ASSERT_NE(h, kOom);
  EXPECT_EQ(a.stats().reserved, 80 * kMiB);  // 20 + 60
  EXPECT_EQ(a.stats().num_frees, 2u);
  EXPECT_EQ(a.stats().num_segments, 2u);
}

TEST(Capacity, TrueOutOfMemory) {
  AllocatorOptions o;
  o.capacity = 40 * kMiB;
  CachingAllocator a(o);
  const Handle live = a.allocate(30 * kMiB);
  a.release(a.allocate(1000));  // a cached 2 MiB small segment; reserved 32 MiB
  // 20 MiB: 32 + 20 > 40; freeing the cached small segment gives 30 + 20 > 40.
  EXPECT_EQ(a.allocate(20 * kMiB), kOom);
  EXPECT_EQ(a.stats().num_oom, 1u);
  EXPECT_EQ(a.stats().allocated, 30 * kMiB);
  EXPECT_EQ(a.stats().reserved, 30 * kMiB);  // the cached segment stays freed
  EXPECT_EQ(a.stats().num_alloc_retries, 1u);
  EXPECT_EQ(a.allocate(UINT64_MAX), kOom);  // absurd sizes fail cleanly
  EXPECT_EQ(a.stats().num_oom, 2u);
  // A failed request issues no handle: the next handle follows `live`.
  const Handle next = a.allocate(10 * kMiB);
  EXPECT_EQ(next, live + 2);  // live = 0, the small one = 1, this = 2
  EXPECT_EQ(a.num_handles(), 3u);
}

TEST(CachingAllocator, EmptyCacheReturnsOnlyFullyFreeSegments) {
  CachingAllocator a;
  const Handle keep = a.allocate(5 * kMiB);  // 20 MiB segment, 15 MiB of it free
  a.release(a.allocate(30 * kMiB));          // fully free 30 MiB segment
  a.release(a.allocate(1000));               // fully free 2 MiB small segment
  EXPECT_EQ(a.stats().reserved, 52 * kMiB);
  a.empty_cache();
  EXPECT_EQ(a.stats().reserved, 20 * kMiB);  // only the segment holding `keep`
  EXPECT_EQ(a.stats().num_segments, 1u);
  EXPECT_EQ(a.stats().num_frees, 2u);
  EXPECT_EQ(a.stats().allocated, 5 * kMiB);
  a.release(keep);
  a.empty_cache();
  EXPECT_EQ(a.stats().reserved, 0u);
  EXPECT_TRUE(a.snapshot().empty());
}

// ---------------------------------------------------------------- expandable segments

TEST(Expandable, LargePoolGrowsIn20MiBPages) {
  CachingAllocator a(Expandable());
  const Handle h5 = a.allocate(5 * kMiB);  // maps one 20 MiB page
  EXPECT_EQ(a.stats().reserved, 20 * kMiB);
  EXPECT_EQ(a.stats().num_segments, 0u);  // PyTorch does not count them
  EXPECT_EQ(a.stats().num_mallocs, 1u);
  // 30 MiB: the free 15 MiB tail plus one more 20 MiB page (15 + 20 = 35 >= 30),
  // contiguous after the first block. Without expandable segments this would
  // reserve 20 + 30 = 50 MiB.
  const Handle h30 = a.allocate(30 * kMiB);
  EXPECT_EQ(a.block_address(h30), a.block_address(h5) + 5 * kMiB);
  EXPECT_EQ(a.stats().reserved, 40 * kMiB);
  EXPECT_EQ(a.stats().allocated, 35 * kMiB);
  EXPECT_EQ(a.stats().num_mallocs, 2u);
  // 60 MiB with 5 MiB free at the tail: 55 MiB more -> 3 pages (60 MiB).
  a.allocate(60 * kMiB);
  EXPECT_EQ(a.stats().reserved, 100 * kMiB);
  const auto segments = a.snapshot();
  ASSERT_EQ(segments.size(), 1u);
  EXPECT_TRUE(segments[0].expandable);
  EXPECT_EQ(segments[0].total_size, 100 * kMiB);
}

TEST(Expandable, SmallPoolGrowsIn2MiBPages) {
  CachingAllocator a(Expandable());
  a.allocate(512);  // one 2 MiB page
  EXPECT_EQ(a.stats().reserved, 2 * kMiB);
  a.allocate(kMiB);  // 2 MiB - 512 - 1 MiB free remains
  EXPECT_EQ(a.stats().reserved, 2 * kMiB);
  a.allocate(kMiB);  // needs 1 MiB; tail has 1 MiB - 512 -> one more 2 MiB page
  EXPECT_EQ(a.stats().reserved, 4 * kMiB);
  EXPECT_EQ(a.stats().allocated, 2 * kMiB + 512);
}

TEST(Expandable, FreedTailSplitsDownTo512Bytes) {
  CachingAllocator a(Expandable());
  const Handle h5 = a.allocate(5 * kMiB);
  // 15 MiB - 512 leaves a 512-B sliver in the first page; expandable segments
  // split it off (remainder >= 512) instead of charging the slack.
  const Handle h15 = a.allocate(15 * kMiB - 512);
  EXPECT_EQ(a.block_size(h15), 15 * kMiB - 512);
  EXPECT_EQ(a.stats().allocated, 20 * kMiB - 512);
  // 1.5 MiB: the 512-B free tail plus one new page; the block starts at the
  // sliver, 20 MiB - 512 into the segment.
  const Handle h = a.allocate(3 * kMiB / 2);
  EXPECT_EQ(a.block_address(h), a.block_address(h5) + 20 * kMiB - 512);
  EXPECT_EQ(a.stats().reserved, 40 * kMiB);
  // Everything released merges into one free 40 MiB range; empty_cache unmaps
  // both pages in one call and drops the segment.
  a.release(h5);
  a.release(h15);
  a.release(h);
  const uint64_t frees_before = a.stats().num_frees;
  a.empty_cache();
  EXPECT_EQ(a.stats().reserved, 0u);
  EXPECT_EQ(a.stats().num_frees, frees_before + 1);
  EXPECT_TRUE(a.snapshot().empty());
}

TEST(Expandable, EmptyCacheUnmapsWholeFreePagesOnly) {
  CachingAllocator a(Expandable());
  const Handle x = a.allocate(5 * kMiB);   // [0, 5), page 0 mapped
  const Handle y = a.allocate(50 * kMiB);  // [5, 55): 15 free + 35 more -> pages 1, 2
  const Handle z = a.allocate(5 * kMiB);   // [55, 60)
  (void)z;
  const uint64_t base = a.block_address(x);
  EXPECT_EQ(a.stats().reserved, 60 * kMiB);
  a.release(y);  // free [5, 55)
  a.empty_cache();
  // Whole pages inside [5, 55): only page 1 = [20, 40). 60 - 20 = 40 MiB left.
  EXPECT_EQ(a.stats().reserved, 40 * kMiB);
  auto segments = a.snapshot();
  ASSERT_EQ(segments.size(), 2u);  // mapped ranges [0, 20) and [40, 60)
  EXPECT_EQ(segments[0].total_size, 20 * kMiB);
  EXPECT_EQ(segments[1].address, base + 40 * kMiB);
  // 20 MiB: free blocks are [5, 20) and [40, 55) (15 MiB each): too small. The
  // lowest unmapped gap [20, 40) preceded by free [5, 20) has room: page 1 is
  // mapped again and everything merges to a free [5, 55); the block starts at 5.
  const Handle w = a.allocate(20 * kMiB);
  EXPECT_EQ(a.block_address(w), base + 5 * kMiB);
  EXPECT_EQ(a.stats().reserved, 60 * kMiB);
  segments = a.snapshot();
  ASSERT_EQ(segments.size(), 1u);
}

TEST(Expandable, BestFitPrefersBlocksThatCannotGrow) {
  CachingAllocator a(Expandable());
  const Handle x = a.allocate(10 * kMiB);  // [0, 10)
  const Handle y = a.allocate(2 * kMiB);   // [10, 12); free tail [12, 20) borders unmapped space
  (void)y;
  const uint64_t base = a.block_address(x);
  a.release(x);  // free [0, 10), bounded by y
  // 6 MiB: the best fit by size is the 8 MiB tail, but for get_free_block it
  // can grow into unmapped space (8 MiB + rest of the segment), so the next
  // block, 10 MiB that cannot grow, is preferred.
  const Handle h = a.allocate(6 * kMiB);
  EXPECT_EQ(a.block_address(h), base);
  EXPECT_EQ(a.stats().reserved, 20 * kMiB);
}

TEST(Expandable, CapacityLimitsMappedPages) {
  AllocatorOptions o = Expandable();
  o.capacity = 50 * kMiB;
  CachingAllocator a(o);
  a.allocate(30 * kMiB);  // 2 pages = 40 MiB
  EXPECT_EQ(a.stats().reserved, 40 * kMiB);
  // 20 MiB: 10 MiB free tail + 1 page = 30 >= 20, but 40 + 20 > 50 -> OOM.
  EXPECT_EQ(a.allocate(20 * kMiB), kOom);
  EXPECT_EQ(a.stats().reserved, 40 * kMiB);
  EXPECT_NE(a.allocate(10 * kMiB), kOom);  // fits in the mapped tail
}

// ---------------------------------------------------------------- counters and handles

TEST(CachingAllocator, PeakCounters) {
  CachingAllocator a;
  const Handle h10 = a.allocate(10 * kMiB);  // segment 10 MiB
  const Handle h20 = a.allocate(20 * kMiB);  // segment 20 MiB
  EXPECT_EQ(a.stats().peak_allocated, 30 * kMiB);
  a.release(h10);
  // 5 MiB is carved from the cached 10 MiB block (remainder 5 > 1 MiB -> split).
  const Handle h5 = a.allocate(5 * kMiB);
  EXPECT_EQ(a.stats().allocated, 25 * kMiB);
  EXPECT_EQ(a.stats().peak_allocated, 30 * kMiB);
  EXPECT_EQ(a.stats().peak_reserved, 30 * kMiB);
  a.reset_peak_stats();
  EXPECT_EQ(a.stats().peak_allocated, 25 * kMiB);
  a.release(h20);
  a.release(h5);
  const Handle tiny = a.allocate(1000);  // requested 1000, allocated 1024
  EXPECT_EQ(a.stats().requested, 1000u);
  EXPECT_EQ(a.stats().allocated, 1024u);
  EXPECT_EQ(a.stats().peak_allocated, 25 * kMiB);
  EXPECT_EQ(a.stats().peak_requested, 25 * kMiB);
  EXPECT_EQ(a.stats().peak_reserved, 32 * kMiB);  // 30 + new 2 MiB small segment
  a.release(tiny);
  EXPECT_EQ(a.stats().requested, 0u);
  EXPECT_EQ(a.stats().allocated, 0u);
}

TEST(CachingAllocator, BestFitWhenTheLastSizeLookedUpIsTooLarge) {
  // Cached segments of 12, 14, 16 and 16 MiB (a request of at least 10 MiB
  // gets a segment of its own size, rounded to 2 MiB). A leftover of at most
  // 1 MiB is not split off a large block (should_split: remaining >
  // kSmallSize), so each reuse below is charged its whole block. The free
  // index remembers the last size it looked up: each request here is smaller
  // than that size and must still get the smallest block that fits.
  CachingAllocator a;
  const Handle h12 = a.allocate(12 * kMiB);
  const Handle h14 = a.allocate(14 * kMiB);
  const Handle h16 = a.allocate(16 * kMiB);
  const Handle h16b = a.allocate(16 * kMiB);
  for (const Handle h : {h12, h14, h16, h16b})
    a.release(h);
  ASSERT_EQ(a.stats().reserved, 58 * kMiB);  // 12 + 14 + 16 + 16
  uint64_t size = 0;
  a.allocate(15 * kMiB, &size);
  EXPECT_EQ(size, 16 * kMiB);  // one 16 MiB block left cached
  a.allocate(13 * kMiB, &size);
  EXPECT_EQ(size, 14 * kMiB);  // not the 16 MiB size looked up last
  a.allocate(11 * kMiB, &size);
  EXPECT_EQ(size, 12 * kMiB);
  a.allocate(15 * kMiB, &size);
  EXPECT_EQ(size, 16 * kMiB);
  EXPECT_EQ(a.stats().reserved, 58 * kMiB);  // every request reused a cached segment
  EXPECT_EQ(a.stats().allocated, 58 * kMiB);
}

TEST(CachingAllocator, ZeroByteRequestAllocatesNothing) {
  CachingAllocator a;
  const Handle h = a.allocate(0);
  EXPECT_NE(h, kOom);
  EXPECT_EQ(a.block_size(h), 0u);
  EXPECT_EQ(a.block_address(h), 0u);
  EXPECT_EQ(a.stats().allocated, 0u);
  EXPECT_EQ(a.stats().reserved, 0u);
  EXPECT_EQ(a.stats().num_mallocs, 0u);
  EXPECT_TRUE(a.is_live(h));
  a.release(h);
  EXPECT_FALSE(a.is_live(h));
  EXPECT_THROW(a.release(h), Error);
}

TEST(CachingAllocator, HandlesAreDense) {
  CachingAllocator a;
  EXPECT_EQ(a.allocate(1), 0u);
  EXPECT_EQ(a.allocate(0), 1u);
  EXPECT_EQ(a.allocate(5 * kMiB), 2u);
  a.release(0);
  EXPECT_EQ(a.allocate(1), 3u);  // never reused
}

TEST(CachingAllocator, BadHandlesThrow) {
  CachingAllocator a;
  EXPECT_THROW(a.release(0), Error);
  const Handle h = a.allocate(4096);
  EXPECT_THROW(a.release(h + 1), Error);
  EXPECT_THROW(a.release(CachingAllocator::kOutOfMemory), Error);
  a.release(h);
  EXPECT_THROW(a.release(h), Error);
  EXPECT_THROW(a.block_size(h), Error);
  EXPECT_THROW(a.block_address(h), Error);
  EXPECT_EQ(a.stats().allocated, 0u);  // failed releases change nothing
}

TEST(CachingAllocator, RejectsOptionsPyTorchRejects) {
  AllocatorOptions o;
  o.max_split_size = 10 * kMiB;  // max_split_size_mb below 20
  EXPECT_THROW(CachingAllocator{o}, Error);
  o = AllocatorOptions{};
  o.roundup_power2_divisions = 3;  // not a power of two
  EXPECT_THROW(CachingAllocator{o}, Error);
  o.roundup_power2_divisions = 16;
  EXPECT_NO_THROW(CachingAllocator{o});
}

TEST(CachingAllocator, IsMovable) {
  CachingAllocator a;
  const Handle h = a.allocate(5 * kMiB);
  CachingAllocator b = std::move(a);
  EXPECT_EQ(b.block_size(h), 5 * kMiB);
  b.release(h);
  EXPECT_EQ(b.stats().allocated, 0u);
}

// ---------------------------------------------------------------- invariants under random traffic

// Checks the snapshot against the counters: blocks tile each segment, no two
// free neighbours are left unmerged, and sums match allocated and reserved.
void CheckInvariants(const CachingAllocator& a, const std::vector<Handle>& live) {
  const auto segments = a.snapshot();
  uint64_t reserved = 0;
  uint64_t allocated = 0;
  uint64_t cuda_segments = 0;
  for (const SegmentInfo& s : segments) {
    uint64_t addr = s.address;
    uint64_t total = 0;
    bool prev_free = false;
    for (const BlockInfo& b : s.blocks) {
      ASSERT_EQ(b.address, addr);
      ASSERT_EQ(b.size % 512, 0u);
      ASSERT_GT(b.size, 0u);
      ASSERT_FALSE(prev_free && !b.allocated) << "unmerged free neighbours";
      prev_free = !b.allocated;
      addr += b.size;
      total += b.size;
      if (b.allocated)
        allocated += b.size;
    }
    ASSERT_EQ(total, s.total_size);
    reserved += total;
    if (!s.expandable) {
      ++cuda_segments;
      ASSERT_EQ(total % (2 * kMiB), 0u);
    }
  }
  ASSERT_EQ(reserved, a.stats().reserved);
  ASSERT_EQ(allocated, a.stats().allocated);
  ASSERT_EQ(cuda_segments, a.stats().num_segments);
  ASSERT_LE(a.stats().reserved, a.options().capacity);
  uint64_t from_handles = 0;
  for (const Handle h : live)
    from_handles += a.block_size(h);
  ASSERT_EQ(from_handles, a.stats().allocated);
}

class RandomTraffic : public ::testing::TestWithParam<int> {};

TEST_P(RandomTraffic, KeepsInvariants) {
  AllocatorOptions o;
  const int mode = GetParam();
  o.expandable_segments = (mode & 1) != 0;
  if ((mode & 2) != 0)
    o.max_split_size = 64 * kMiB;
  if ((mode & 4) != 0)
    o.capacity = 600 * kMiB;
  if ((mode & 8) != 0)
    o.roundup_power2_divisions = 4;
  CachingAllocator a(o);
  std::mt19937_64 rng(1234u + static_cast<unsigned>(mode));
  std::vector<Handle> live;
  for (int step = 0; step < 4000; ++step) {
    const uint64_t r = rng() % 100;
    if (r < 55 || live.empty()) {
      uint64_t bytes;
      const uint64_t kind = rng() % 4;
      if (kind == 0) {
        bytes = rng() % (kMiB + 1);
      } else if (kind == 1) {
        bytes = kMiB + rng() % (9 * kMiB);
      } else if (kind == 2) {
        bytes = 10 * kMiB + rng() % (90 * kMiB);
      } else {
        bytes = rng() % 4096;
      }
      const Handle h = a.allocate(bytes);
      if (h != kOom)
        live.push_back(h);
    } else if (r < 98) {
      const size_t i = rng() % live.size();
      a.release(live[i]);
      live[i] = live.back();
      live.pop_back();
    } else {
      a.empty_cache();
    }
    if (step % 50 == 0)
      CheckInvariants(a, live);
    ASSERT_GE(a.stats().reserved, a.stats().allocated);
    ASSERT_GE(a.stats().peak_reserved, a.stats().reserved);
    ASSERT_GE(a.stats().peak_allocated, a.stats().allocated);
  }
  for (const Handle h : live)
    a.release(h);
  live.clear();
  CheckInvariants(a, live);
  EXPECT_EQ(a.stats().allocated, 0u);
  EXPECT_EQ(a.stats().requested, 0u);
  a.empty_cache();
  EXPECT_EQ(a.stats().reserved, 0u);
  EXPECT_EQ(a.stats().num_segments, 0u);
}

INSTANTIATE_TEST_SUITE_P(AllModes, RandomTraffic, ::testing::Range(0, 16));

}  // namespace
}  // namespace llmem
