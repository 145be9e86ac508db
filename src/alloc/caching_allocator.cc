// Copyright 2026 The llmem Authors.
// Simulation of PyTorch's CUDA caching allocator. See include/llmem/allocator.h
// for what is modelled. Function names in comments refer to
// c10/cuda/CUDACachingAllocator.cpp, whose behaviour each piece reproduces.

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "llmem/allocator.h"
#include "llmem/error.h"

namespace llmem {
namespace {

constexpr uint64_t kMinBlockSize = CachingAllocator::kMinBlockSize;
constexpr uint64_t kSmallSize = CachingAllocator::kSmallSize;
constexpr uint64_t kSmallBuffer = CachingAllocator::kSmallBuffer;
constexpr uint64_t kMinLargeAlloc = CachingAllocator::kMinLargeAlloc;
constexpr uint64_t kLargeBuffer = CachingAllocator::kLargeBuffer;
constexpr uint64_t kRoundLarge = CachingAllocator::kRoundLarge;

// Largest 512-B multiple; round_request saturates here instead of wrapping.
constexpr uint64_t kMaxRounded = ~(kMinBlockSize - 1);
// No simulated device hands out more than this in one piece (4 PiB); larger
// requests fail like a cudaMalloc that cannot be satisfied.
constexpr uint64_t kMaxDeviceBytes = 1ull << 52;
// Simulated address space: segments are laid out upwards from kFirstAddress.
constexpr uint64_t kFirstAddress = 1ull << 40;
constexpr uint64_t kAddressLimit = 1ull << 62;
// Address-space size assumed for expandable segments when neither
// device_memory nor capacity is given.
constexpr uint64_t kDefaultDeviceMemory = 1ull << 40;

constexpr uint32_t kNil = 0xffffffffu;
// Handle table entries that do not name a block.
constexpr uint32_t kReleasedSlot = 0xffffffffu;
constexpr uint32_t kZeroSlot = 0xfffffffeu;

uint64_t CeilDiv(uint64_t a, uint64_t b) {
  return a / b + (a % b != 0 ? 1 : 0);
}

uint64_t SaturatingAdd(uint64_t a, uint64_t b) {
  return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

// Rounds `value` up to a multiple of `step` (a power of two), saturating at
// the largest such multiple.
uint64_t RoundUp(uint64_t value, uint64_t step) {
  if (value > UINT64_MAX - (step - 1))
    return UINT64_MAX & ~(step - 1);
  return (value + step - 1) & ~(step - 1);
}

// roundup_power2_next_division: the next of `divisions` equal steps between
// the powers of two around `size`. Non-power-of-two divisions behave like the
// power of two below them, as in PyTorch's bit arithmetic.
uint64_t NextPower2Division(uint64_t size, uint64_t divisions) {
  if (std::has_single_bit(size))
    return size;
  const uint64_t floor = std::bit_floor(size);
  const uint64_t step = floor >> (std::bit_width(divisions) - 1);
  if (step == 0)
    return floor > UINT64_MAX / 2 ? kMaxRounded : floor << 1;
  const uint64_t down = size & ~(step - 1);
  if (down == size)
    return size;
  return down > UINT64_MAX - step ? kMaxRounded : down + step;
}

// round_request, inlined into every allocation.
inline uint64_t RoundRequest(uint64_t bytes, const AllocatorOptions& options) {
  if (bytes < kMinBlockSize)
    return kMinBlockSize;
  const uint64_t divisions = options.roundup_power2_divisions;
  if (divisions > 1 && bytes > kMinBlockSize * divisions) {
    return NextPower2Division(bytes, divisions);
  }
  return RoundUp(bytes, kMinBlockSize);
}

}  // namespace

uint64_t round_request(uint64_t bytes, const AllocatorOptions& options) {
  return RoundRequest(bytes, options);
}

uint64_t segment_size_for(uint64_t size) {
  if (size <= kSmallSize)
    return kSmallBuffer;
  if (size < kMinLargeAlloc)
    return kLargeBuffer;
  return RoundUp(size, kRoundLarge);
}

class CachingAllocator::Impl {
 public:
  explicit Impl(const AllocatorOptions& options) { Configure(options); }

  // Back to a fresh allocator with `options`, keeping the tables' capacity.
  void Reset(const AllocatorOptions& options) {
    Configure(options);
    stats_ = AllocatorStats{};
    for (Pool* pool : {&small_pool_, &large_pool_}) {
      pool->free.clear();
      pool->unmapped.clear();
    }
    blocks_.clear();
    free_slots_.clear();
    handles_.clear();
    segments_.clear();
    scratch_.clear();
    next_address_ = kFirstAddress;
  }

  void Configure(const AllocatorOptions& options) {
    options_ = options;
    if (options_.max_split_size < kLargeBuffer) {
      throw Error("allocator options", "max_split_size",
                  "must be at least 20 MiB (PyTorch rejects smaller max_split_size_mb), got " +
                      std::to_string(options_.max_split_size) + " bytes");
    }
    if (options_.roundup_power2_divisions != 0 &&
        !std::has_single_bit(options_.roundup_power2_divisions)) {
      throw Error(
          "allocator options", "roundup_power2_divisions",
          "must be 0 or a power of two, got " + std::to_string(options_.roundup_power2_divisions));
    }
    uint64_t device = options_.device_memory;
    if (device == 0) {
      device = options_.capacity != UINT64_MAX ? options_.capacity : kDefaultDeviceMemory;
    }
    device_memory_ = std::min(device, kMaxDeviceBytes);
  }

  // `*block_size` (when given) gets the new block's size, 0 when out of memory.
  Handle Allocate(uint64_t bytes, uint64_t* block_size) {
    if (block_size != nullptr)
      *block_size = 0;
    if (handles_.size() >= kOutOfMemory) {
      throw Error("caching allocator", "allocate", "more than 2^32 - 1 handles issued");
    }
    const auto handle = static_cast<Handle>(handles_.size());
    if (bytes == 0) {  // PyTorch returns a null pointer without touching the pools.
      handles_.push_back(kZeroSlot);
      return handle;
    }
    const uint64_t size = RoundRequest(bytes, options_);
    Pool& pool = PoolFor(size <= kSmallSize);
    const uint64_t alloc_size = segment_size_for(size);

    // malloc: best fit from the cache, then a new segment, then free oversize
    // cached blocks and retry, then free every unsplit cached block and retry.
    uint32_t block = GetFreeBlock(pool, size);
    if (block == kNil) {
      block = AllocBlock(pool, size, alloc_size);
      if (block == kNil && ReleaseAvailableCachedBlocks(pool, size)) {
        block = AllocBlock(pool, size, alloc_size);
      }
      if (block == kNil) {
        ReleaseCachedBlocks();
        ++stats_.num_alloc_retries;
        block = AllocBlock(pool, size, alloc_size);
      }
    }
    if (block == kNil) {
      ++stats_.num_oom;
      return kOutOfMemory;
    }
    block = AllocFoundBlock(pool, block, size, bytes, ShouldSplit(block, size));
    handles_.push_back(block);
    if (block_size != nullptr)
      *block_size = blocks_[block].size;
    return handle;
  }

  void Release(Handle h) {
    const uint32_t slot = Slot(h, "release");
    handles_[h] = kReleasedSlot;
    if (slot == kZeroSlot)
      return;
    Block& b = blocks_[slot];
    b.allocated = false;
    stats_.allocated -= b.size;
    stats_.requested -= b.requested;
    b.requested = 0;
    FreeBlock(slot);
  }

  void EmptyCache() { ReleaseCachedBlocks(); }

  void ResetPeakStats() {
    stats_.peak_allocated = stats_.allocated;
    stats_.peak_reserved = stats_.reserved;
    stats_.peak_requested = stats_.requested;
  }

  uint64_t BlockSize(Handle h) const {
    const uint32_t slot = Slot(h, "block_size");
    return slot == kZeroSlot ? 0 : blocks_[slot].size;
  }

  uint64_t BlockAddress(Handle h) const {
    const uint32_t slot = Slot(h, "block_address");
    return slot == kZeroSlot ? 0 : blocks_[slot].addr;
  }

  bool IsLive(Handle h) const { return h < handles_.size() && handles_[h] != kReleasedSlot; }

  size_t NumHandles() const { return handles_.size(); }

  void Reserve(size_t events) {
    handles_.reserve(events);
    blocks_.reserve(std::min<size_t>(events, 1u << 20));
  }

  const AllocatorStats& stats() const { return stats_; }
  const AllocatorOptions& options() const { return options_; }

  std::vector<SegmentInfo> Snapshot() const;

 private:
  struct Block {
    uint64_t addr = 0;
    uint64_t size = 0;
    uint64_t requested = 0;
    uint32_t prev = kNil;  // neighbours within the same segment
    uint32_t next = kNil;
    uint32_t segment = kNil;  // expandable segment index, kNil for cudaMalloc
    bool small = false;
    bool allocated = false;
    bool mapped = true;
    bool live = false;  // slot in use
  };

  // Free (cached) blocks of a pool, ordered like BlockComparatorSize: by size,
  // then address.
  struct FreeKey {
    uint64_t size;
    uint64_t addr;
    uint32_t block;
  };

  // An ordered set of FreeKeys grouped by size: a sorted list of the distinct
  // sizes present, each with a bucket of its blocks. A training step caches
  // many blocks of few sizes (the same parameter and activation shapes layer
  // after layer), so the size list stays short. A bucket is stored by
  // descending address: best fit takes, and frees mostly return, the lowest
  // addresses, which sit at the bucket's end, so inserts and erases move few
  // entries. Positions count in key order (ascending address) all the same.
  // Emptied buckets are recycled, so steady-state traffic does not allocate.
  // Erasing a key never moves keys that precede it (an emptied size leaves
  // the list, shifting only larger sizes), so a position before an erased key
  // stays valid.
  class FreeIndex {
   public:
    struct Pos {
      size_t size;  // index into the size list
      size_t off;   // index into that size's bucket
      bool operator==(const Pos&) const = default;
    };

    bool empty() const { return sizes_.empty(); }
    Pos begin() const { return Pos{0, 0}; }
    Pos end() const { return Pos{sizes_.size(), 0}; }
    FreeKey at(Pos p) const {
      const std::vector<Entry>& entries = bucket(p.size);
      const Entry& e = entries[entries.size() - 1 - p.off];
      return FreeKey{sizes_[p.size].size, e.addr, e.block};
    }
    Pos next(Pos p) const {
      return p.off + 1 < bucket(p.size).size() ? Pos{p.size, p.off + 1} : Pos{p.size + 1, 0};
    }
    Pos prev(Pos p) const {
      return p.off > 0 ? Pos{p.size, p.off - 1} : Pos{p.size - 1, bucket(p.size - 1).size() - 1};
    }

    // First key not less than `key`, or end().
    [[gnu::always_inline]] Pos lower_bound(const FreeKey& key) const {
      const size_t i = FindSize(key.size);
      if (i == sizes_.size() || sizes_[i].size != key.size)
        return Pos{i, 0};
      const std::vector<Entry>& entries = bucket(i);
      const size_t at_or_above = FindBelow(entries, key.addr);
      return at_or_above > 0 ? Pos{i, entries.size() - at_or_above} : Pos{i + 1, 0};
    }

    [[gnu::always_inline]] void insert(const FreeKey& key) {
      const size_t i = FindSize(key.size);
      if (i == sizes_.size() || sizes_[i].size != key.size) {
        sizes_.insert(sizes_.begin() + static_cast<std::ptrdiff_t>(i),
                      SizeEntry{key.size, TakeBucket()});
      }
      std::vector<Entry>& entries = buckets_[sizes_[i].bucket];
      entries.insert(entries.begin() + static_cast<std::ptrdiff_t>(FindBelow(entries, key.addr)),
                     Entry{key.addr, key.block});
    }

    void erase(Pos p) {
      const uint32_t id = sizes_[p.size].bucket;
      std::vector<Entry>& entries = buckets_[id];
      entries.erase(entries.begin() + static_cast<std::ptrdiff_t>(entries.size() - 1 - p.off));
      if (entries.empty()) {
        spare_.push_back(id);
        sizes_.erase(sizes_.begin() + static_cast<std::ptrdiff_t>(p.size));
      }
    }

    // Erases the key equal to `key`, which must be present.
    void erase(const FreeKey& key) { erase(lower_bound(key)); }

    // Empties the index; the buckets' storage is kept for reuse.
    void clear() {
      for (const SizeEntry& s : sizes_) {
        buckets_[s.bucket].clear();
        spare_.push_back(s.bucket);
      }
      sizes_.clear();
    }

    template <typename Fn>
    void for_each(Fn&& fn) const {
      for (const SizeEntry& s : sizes_) {
        const std::vector<Entry>& entries = buckets_[s.bucket];
        for (auto e = entries.rbegin(); e != entries.rend(); ++e)
          fn(FreeKey{s.size, e->addr, e->block});
      }
    }

   private:
    struct Entry {
      uint64_t addr;
      uint32_t block;
    };
    struct SizeEntry {
      uint64_t size;
      uint32_t bucket;  // index into buckets_
    };

    const std::vector<Entry>& bucket(size_t i) const { return buckets_[sizes_[i].bucket]; }

    // Index of the first size not less than `size`. The last answer is
    // tried first (a step asks for the same sizes in runs); it is checked
    // against its neighbours, so a stale hint only costs the search.
    size_t FindSize(uint64_t size) const {
      const size_t h = hint_;
      if (h < sizes_.size() && sizes_[h].size >= size && (h == 0 || sizes_[h - 1].size < size))
        return h;
      const auto it =
          std::lower_bound(sizes_.begin(), sizes_.end(), size,
                           [](const SizeEntry& s, uint64_t value) { return s.size < value; });
      hint_ = static_cast<size_t>(it - sizes_.begin());
      return hint_;
    }

    // Index of the first entry of a bucket (descending addresses) below
    // `addr`: the number of entries at or above it. Most searches end within
    // a few entries of the low-address end, so those are scanned first.
    static size_t FindBelow(const std::vector<Entry>& entries, uint64_t addr) {
      size_t n = entries.size();
      for (int scanned = 0; scanned < 16 && n > 0; ++scanned, --n) {
        if (entries[n - 1].addr >= addr)
          return n;
      }
      const auto it =
          std::partition_point(entries.begin(), entries.begin() + static_cast<std::ptrdiff_t>(n),
                               [addr](const Entry& e) { return e.addr >= addr; });
      return static_cast<size_t>(it - entries.begin());
    }

    uint32_t TakeBucket() {
      if (spare_.empty()) {
        buckets_.emplace_back();
        return static_cast<uint32_t>(buckets_.size() - 1);
      }
      const uint32_t id = spare_.back();
      spare_.pop_back();
      return id;
    }

    std::vector<SizeEntry> sizes_;             // distinct sizes present, ascending
    std::vector<std::vector<Entry>> buckets_;  // by id; descending addresses, listed ones non-empty
    std::vector<uint32_t> spare_;              // ids of emptied buckets, kept for reuse
    mutable size_t hint_ = 0;                  // FindSize's last answer (any value is safe)
  };

  struct Pool {
    explicit Pool(bool is_small) : small(is_small) {}
    bool small;
    FreeIndex free;
    // Unmapped address ranges of expandable segments, by address.
    std::set<std::pair<uint64_t, uint32_t>> unmapped;
  };

  struct ExpandableSegment {
    uint64_t base = 0;
    uint64_t page = 0;
    uint64_t size = 0;
  };

  Pool& PoolFor(bool small) { return small ? small_pool_ : large_pool_; }

  uint32_t Slot(Handle h, const char* what) const {
    if (h >= handles_.size() || handles_[h] == kReleasedSlot) [[unlikely]]
      ThrowBadHandle(h, what);
    return handles_[h];
  }

  // Out of line, so that Slot() stays small enough to inline into release().
  [[noreturn, gnu::cold, gnu::noinline]] void ThrowBadHandle(Handle h, const char* what) const {
    if (h >= handles_.size()) {
      throw Error("caching allocator", what, "unknown handle " + std::to_string(h));
    }
    throw Error("caching allocator", what, "handle " + std::to_string(h) + " was already released");
  }

  static FreeKey KeyOf(const Block& b, uint32_t index) { return FreeKey{b.size, b.addr, index}; }

  uint32_t NewBlock() {
    uint32_t index;
    if (!free_slots_.empty()) {
      index = free_slots_.back();
      free_slots_.pop_back();
      blocks_[index] = Block{};
    } else {
      if (blocks_.size() >= kZeroSlot) {
        throw Error("caching allocator", "allocate", "more than 2^32 - 2 blocks");
      }
      index = static_cast<uint32_t>(blocks_.size());
      blocks_.emplace_back();
    }
    blocks_[index].live = true;
    return index;
  }

  void FreeSlot(uint32_t index) {
    blocks_[index].live = false;
    free_slots_.push_back(index);
  }

  void AddReserved(uint64_t bytes) {
    stats_.reserved += bytes;
    stats_.peak_reserved = std::max(stats_.peak_reserved, stats_.reserved);
  }

  // [[gnu::always_inline]] below marks the per-event helpers that GCC 12 kept
  // out of line at -O2: inlined, the replay of a planner's estimates runs
  // ~4 % fewer instructions (callgrind). FreeBlock and NewBlock inlined were
  // slower, so they stay calls.

  // get_free_block: smallest cached block of at least `size` (ties: lowest
  // address), subject to the oversize rules.
  [[gnu::always_inline]] uint32_t GetFreeBlock(Pool& pool, uint64_t size) {
    FreeIndex& free = pool.free;
    FreeIndex::Pos it = free.lower_bound(FreeKey{size, 0, 0});
    if (it == free.end())
      return kNil;
    if (options_.expandable_segments) {
      // A block followed by unmapped space counts as the size it could grow
      // to, so equal-or-larger blocks that cannot grow are preferred.
      for (FreeIndex::Pos next = free.next(it);
           next != free.end() && ExpandableSize(free.at(next)) < ExpandableSize(free.at(it));
           next = free.next(next)) {
        it = next;
      }
    }
    const FreeKey found = free.at(it);
    const uint64_t max_split = options_.max_split_size;
    if (size < max_split && found.size >= max_split)
      return kNil;
    if (size >= max_split && found.size >= SaturatingAdd(size, options_.max_non_split_rounding)) {
      return kNil;
    }
    const uint32_t block = found.block;
    free.erase(it);
    return block;
  }

  uint64_t ExpandableSize(const FreeKey& key) const {
    const Block& b = blocks_[key.block];
    if (b.next != kNil && !blocks_[b.next].mapped)
      return b.size + blocks_[b.next].size;
    return b.size;
  }

  // should_split.
  bool ShouldSplit(uint32_t block, uint64_t size) const {
    const Block& b = blocks_[block];
    const uint64_t remaining = b.size - size;
    if (b.small || options_.expandable_segments)
      return remaining >= kMinBlockSize;
    return size < options_.max_split_size && remaining > kSmallSize;
  }

  // alloc_found_block: the front `size` bytes become the allocation, the rest
  // goes back to the pool.
  [[gnu::always_inline]] uint32_t AllocFoundBlock(Pool& pool, uint32_t block, uint64_t size,
                                                  uint64_t requested, bool split) {
    if (split) {
      const uint32_t front = NewBlock();
      Block& rest = blocks_[block];
      Block& f = blocks_[front];
      f.addr = rest.addr;
      f.size = size;
      f.prev = rest.prev;
      f.next = block;
      f.segment = rest.segment;
      f.small = rest.small;
      if (rest.prev != kNil)
        blocks_[rest.prev].next = front;
      rest.prev = front;
      rest.addr += size;
      rest.size -= size;
      pool.free.insert(KeyOf(rest, block));
      block = front;
    }
    Block& b = blocks_[block];
    b.allocated = true;
    b.requested = requested;
    stats_.allocated += b.size;
    stats_.peak_allocated = std::max(stats_.peak_allocated, stats_.allocated);
    stats_.requested += requested;
    stats_.peak_requested = std::max(stats_.peak_requested, stats_.requested);
    return block;
  }

  // free_block.
  void FreeBlock(uint32_t block) {
    TryMergeBlocks(block, blocks_[block].prev);
    TryMergeBlocks(block, blocks_[block].next);
    Block& b = blocks_[block];
    PoolFor(b.small).free.insert(KeyOf(b, block));
  }

  // try_merge_blocks: `dst` absorbs neighbour `src` if it is free and in the
  // same mapping state. Neither may be in a pool set except `src`.
  [[gnu::always_inline]] void TryMergeBlocks(uint32_t dst, uint32_t src) {
    if (src == kNil)
      return;
    Block& s = blocks_[src];
    Block& d = blocks_[dst];
    if (s.allocated || s.mapped != d.mapped)
      return;
    if (d.prev == src) {
      d.addr = s.addr;
      d.prev = s.prev;
      if (d.prev != kNil)
        blocks_[d.prev].next = dst;
    } else {
      d.next = s.next;
      if (d.next != kNil)
        blocks_[d.next].prev = dst;
    }
    d.size += s.size;
    Pool& pool = PoolFor(s.small);
    if (s.mapped) {
      pool.free.erase(KeyOf(s, src));
    } else {
      pool.unmapped.erase({s.addr, src});
    }
    FreeSlot(src);
  }

  // alloc_block: a new segment from the device (or mapped pages).
  uint32_t AllocBlock(Pool& pool, uint64_t size, uint64_t alloc_size) {
    if (options_.expandable_segments)
      return TryAllocateExpandableBlock(pool, size);
    if (alloc_size > kMaxDeviceBytes || alloc_size > options_.capacity - stats_.reserved ||
        next_address_ > kAddressLimit - alloc_size) {
      return kNil;  // cudaErrorMemoryAllocation
    }
    const uint32_t block = NewBlock();
    Block& b = blocks_[block];
    b.addr = next_address_;
    b.size = alloc_size;
    b.small = pool.small;
    next_address_ += alloc_size;
    ++stats_.num_segments;
    ++stats_.num_mallocs;
    AddReserved(alloc_size);
    return block;
  }

  // release_available_cached_blocks: after a failed cudaMalloc, free the
  // smallest oversize cached block that covers the request, or else the
  // largest oversize blocks until their total covers it.
  bool ReleaseAvailableCachedBlocks(Pool& pool, uint64_t size) {
    const uint64_t max_split = options_.max_split_size;
    // Newer PyTorch skips expandable blocks here; they are all expandable.
    if (max_split == UINT64_MAX || options_.expandable_segments)
      return false;
    const uint64_t target = std::max(size, max_split);
    FreeIndex& free = pool.free;
    FreeIndex::Pos it = free.lower_bound(FreeKey{target, 0, 0});
    if (it != free.end()) {
      ReleaseBlock(free.at(it).block);
      return true;
    }
    if (free.empty())
      return false;
    uint64_t released = 0;
    it = free.prev(it);
    // Walks down from the largest block; erasing a block never moves the
    // (smaller) blocks before it.
    while (released < target && free.at(it).size >= max_split) {
      const uint32_t current = free.at(it).block;
      released += free.at(it).size;
      const bool first = it == free.begin();
      if (!first)
        it = free.prev(it);
      ReleaseBlock(current);
      if (first)
        break;
    }
    return released >= target;
  }

  // release_block: cudaFree of a whole cached segment.
  void ReleaseBlock(uint32_t block) {
    Block& b = blocks_[block];
    PoolFor(b.small).free.erase(KeyOf(b, block));
    stats_.reserved -= b.size;
    --stats_.num_segments;
    ++stats_.num_frees;
    FreeSlot(block);
  }

  // release_cached_blocks: large pool first, then small.
  void ReleaseCachedBlocks() {
    ReleaseBlocks(large_pool_);
    ReleaseBlocks(small_pool_);
  }

  // release_blocks: free every unsplit cached block; unmap the whole free
  // pages of expandable segments and drop segments left fully unmapped.
  void ReleaseBlocks(Pool& pool) {
    scratch_.clear();
    pool.free.for_each([this](const FreeKey& key) {
      const Block& b = blocks_[key.block];
      if (b.segment != kNil || (b.prev == kNil && b.next == kNil))
        scratch_.push_back(key.block);
    });
    for (const uint32_t block : scratch_) {
      if (blocks_[block].segment == kNil) {
        ReleaseBlock(block);
        continue;
      }
      UnmapBlock(pool, block);
      const Block& b = blocks_[block];
      if (!b.mapped && b.prev == kNil && b.next == kNil) {
        pool.unmapped.erase({b.addr, block});
        FreeSlot(block);
      }
    }
  }

  // unmap_block: return the whole pages inside a free expandable block.
  void UnmapBlock(Pool& pool, uint32_t block) {
    const Block b = blocks_[block];
    const ExpandableSegment& seg = segments_[b.segment];
    const uint64_t offset = b.addr - seg.base;
    const uint64_t first_page = CeilDiv(offset, seg.page);
    const uint64_t end_page = (offset + b.size) / seg.page;
    if (first_page >= end_page)
      return;
    pool.free.erase(KeyOf(b, block));
    const uint64_t unmap_addr = seg.base + first_page * seg.page;
    const uint64_t unmap_size = (end_page - first_page) * seg.page;
    const uint64_t before = unmap_addr - b.addr;
    const uint64_t after = b.size - before - unmap_size;
    if (before > 0) {
      const uint32_t head = NewBlock();
      Block& h = blocks_[head];
      h.addr = b.addr;
      h.size = before;
      h.segment = b.segment;
      h.small = b.small;
      Splice(head, b.prev, block);
      pool.free.insert(KeyOf(h, head));
    }
    if (after > 0) {
      const uint32_t tail = NewBlock();
      Block& t = blocks_[tail];
      t.addr = unmap_addr + unmap_size;
      t.size = after;
      t.segment = b.segment;
      t.small = b.small;
      Splice(tail, block, blocks_[block].next);
      pool.free.insert(KeyOf(t, tail));
    }
    Block& u = blocks_[block];
    u.addr = unmap_addr;
    u.size = unmap_size;
    u.mapped = false;
    TryMergeBlocks(block, blocks_[block].prev);
    TryMergeBlocks(block, blocks_[block].next);
    pool.unmapped.insert({blocks_[block].addr, block});
    stats_.reserved -= unmap_size;
    ++stats_.num_frees;
  }

  // Links `block` between `before` and `after` (either may be kNil).
  void Splice(uint32_t block, uint32_t before, uint32_t after) {
    if (before != kNil)
      blocks_[before].next = block;
    if (after != kNil)
      blocks_[after].prev = block;
    blocks_[block].prev = before;
    blocks_[block].next = after;
  }

  // find_expandable_block: the lowest-addressed run of free and unmapped
  // blocks with room for `size`, or a new segment.
  uint32_t FindExpandableBlock(Pool& pool, uint64_t size) {
    for (const auto& entry : pool.unmapped) {
      uint32_t candidate = entry.second;
      const uint32_t prev = blocks_[candidate].prev;
      if (prev != kNil && !blocks_[prev].allocated)
        candidate = prev;
      if (HasAddressSpace(candidate, size))
        return candidate;
    }
    const uint64_t page = pool.small ? kSmallBuffer : kLargeBuffer;
    const uint64_t pages =
        std::max<uint64_t>(1, CeilDiv(device_memory_ + device_memory_ / 8, page));
    const uint64_t span = pages * page;
    const uint64_t base = RoundUp(next_address_, page);
    // A segment too small for the request would crash PyTorch; report OOM.
    if (span < size || base > kAddressLimit - span)
      return kNil;
    next_address_ = base + span;
    segments_.push_back(ExpandableSegment{base, page, span});
    const uint32_t block = NewBlock();
    Block& b = blocks_[block];
    b.addr = base;
    b.size = span;
    b.segment = static_cast<uint32_t>(segments_.size() - 1);
    b.small = pool.small;
    b.mapped = false;
    pool.unmapped.insert({base, block});
    return block;
  }

  bool HasAddressSpace(uint32_t block, uint64_t size) const {
    uint64_t bytes = 0;
    while (bytes < size && block != kNil && !blocks_[block].allocated) {
      bytes += blocks_[block].size;
      block = blocks_[block].next;
    }
    return bytes >= size;
  }

  // map_block: map the pages covering the first `size` bytes of an unmapped
  // block; all or nothing, limited by capacity.
  bool MapBlock(Pool& pool, uint32_t block, uint64_t size) {
    const Block b = blocks_[block];
    const ExpandableSegment& seg = segments_[b.segment];
    const uint64_t offset = b.addr - seg.base;
    const uint64_t bytes = (CeilDiv(offset + size, seg.page) - offset / seg.page) * seg.page;
    if (bytes == 0 || bytes > options_.capacity - stats_.reserved)
      return false;
    pool.unmapped.erase({b.addr, block});
    blocks_[block].mapped = true;
    if (bytes < b.size) {
      const uint32_t rest = NewBlock();
      Block& r = blocks_[rest];
      r.addr = b.addr + bytes;
      r.size = b.size - bytes;
      r.segment = b.segment;
      r.small = b.small;
      r.mapped = false;
      Splice(rest, block, b.next);
      pool.unmapped.insert({r.addr, rest});
      blocks_[block].size = bytes;
    }
    TryMergeBlocks(block, blocks_[block].prev);
    TryMergeBlocks(block, blocks_[block].next);
    pool.free.insert(KeyOf(blocks_[block], block));
    ++stats_.num_mallocs;
    AddReserved(bytes);
    return true;
  }

  // try_allocate_expandable_block: map just enough pages after a free tail.
  uint32_t TryAllocateExpandableBlock(Pool& pool, uint64_t size) {
    uint32_t candidate = FindExpandableBlock(pool, size);
    if (candidate == kNil)
      return kNil;
    if (!blocks_[candidate].mapped &&
        !MapBlock(pool, candidate, std::min(blocks_[candidate].size, size))) {
      return kNil;
    }
    while (blocks_[candidate].size < size) {
      const uint64_t remaining = size - blocks_[candidate].size;
      const uint32_t next = blocks_[candidate].next;
      if (next == kNil || blocks_[next].mapped)
        return kNil;  // cannot happen
      if (!MapBlock(pool, next, std::min(remaining, blocks_[next].size)))
        return kNil;
      candidate = next;
    }
    pool.free.erase(KeyOf(blocks_[candidate], candidate));
    return candidate;
  }

  AllocatorOptions options_;
  uint64_t device_memory_ = 0;
  AllocatorStats stats_;
  Pool small_pool_{true};
  Pool large_pool_{false};
  std::vector<Block> blocks_;
  std::vector<uint32_t> free_slots_;
  std::vector<uint32_t> handles_;  // handle -> block index, kZeroSlot or kReleasedSlot
  std::vector<ExpandableSegment> segments_;
  std::vector<uint32_t> scratch_;
  uint64_t next_address_ = kFirstAddress;
};

std::vector<SegmentInfo> CachingAllocator::Impl::Snapshot() const {
  std::vector<SegmentInfo> result;
  for (uint32_t head = 0; head < blocks_.size(); ++head) {
    const Block& h = blocks_[head];
    if (!h.live || h.prev != kNil)
      continue;
    SegmentInfo* current = nullptr;
    for (uint32_t i = head; i != kNil; i = blocks_[i].next) {
      const Block& b = blocks_[i];
      if (!b.mapped) {
        current = nullptr;  // an unmapped gap ends a mapped range
        continue;
      }
      if (current == nullptr) {
        current = &result.emplace_back();
        current->address = b.addr;
        current->small_pool = b.small;
        current->expandable = b.segment != kNil;
      }
      current->blocks.push_back(BlockInfo{b.addr, b.size, b.requested, b.allocated});
      current->total_size += b.size;
      if (b.allocated)
        current->allocated_size += b.size;
    }
  }
  std::sort(result.begin(), result.end(),
            [](const SegmentInfo& a, const SegmentInfo& b) { return a.address < b.address; });
  return result;
}

CachingAllocator::CachingAllocator(AllocatorOptions options)
    : impl_(std::make_unique<Impl>(options)) {}
CachingAllocator::~CachingAllocator() = default;
void CachingAllocator::reset(const AllocatorOptions& options) {
  impl_->Reset(options);
}
CachingAllocator::CachingAllocator(CachingAllocator&&) noexcept = default;
CachingAllocator& CachingAllocator::operator=(CachingAllocator&&) noexcept = default;

CachingAllocator::Handle CachingAllocator::allocate(uint64_t bytes) {
  return impl_->Allocate(bytes, nullptr);
}
CachingAllocator::Handle CachingAllocator::allocate(uint64_t bytes, uint64_t* block_size) {
  return impl_->Allocate(bytes, block_size);
}
void CachingAllocator::release(Handle h) {
  impl_->Release(h);
}
void CachingAllocator::empty_cache() {
  impl_->EmptyCache();
}
void CachingAllocator::reset_peak_stats() {
  impl_->ResetPeakStats();
}
uint64_t CachingAllocator::block_size(Handle h) const {
  return impl_->BlockSize(h);
}
uint64_t CachingAllocator::block_address(Handle h) const {
  return impl_->BlockAddress(h);
}
bool CachingAllocator::is_live(Handle h) const {
  return impl_->IsLive(h);
}
size_t CachingAllocator::num_handles() const {
  return impl_->NumHandles();
}
void CachingAllocator::reserve(size_t events) {
  impl_->Reserve(events);
}
const AllocatorStats& CachingAllocator::stats() const {
  return impl_->stats();
}
const AllocatorOptions& CachingAllocator::options() const {
  return impl_->options();
}
std::vector<SegmentInfo> CachingAllocator::snapshot() const {
  return impl_->Snapshot();
}

}  // namespace llmem
