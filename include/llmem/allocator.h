// Copyright 2026 The llmem Authors.
// A simulation of PyTorch's CUDA caching allocator (native backend).
//
// CachingAllocator replays allocate/release events and reproduces what
// torch.cuda.memory_allocated() / memory_reserved() (and their peaks) would
// report, by modelling the observable behaviour of
// c10/cuda/CUDACachingAllocator.cpp (DeviceCachingAllocator): request
// rounding, the small (<= 1 MiB) and large pools, segment sizes, best-fit
// reuse ordered by (size, address), block splitting and merging, the
// max_split_size rules, the out-of-memory retry ladder (free oversize cached
// blocks, then all unsplit cached blocks, then fail) and expandable segments.
//
// Scope: one device and one stream. Not modelled: other streams and
// record_stream (a freed block is immediately reusable), CUDA graph private
// pools, garbage_collection_threshold (it only runs with a per-process memory
// fraction), free-memory callbacks, and the real addresses cudaMalloc returns
// (segments get increasing simulated addresses, which only matter as the tie
// break between equal-sized free blocks).
//
// All sizes are in bytes. The class is not thread-safe.

#ifndef LLMEM_ALLOCATOR_H_
#define LLMEM_ALLOCATOR_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace llmem {

/// The PYTORCH_CUDA_ALLOC_CONF settings that change the native allocator's
/// behaviour, plus the device size. Validated by the CachingAllocator
/// constructor, which throws llmem::Error for values PyTorch's config parser
/// rejects.
struct AllocatorOptions {
  /// expandable_segments:True. Instead of one cudaMalloc per segment, each pool
  /// owns a virtual address range into which physical pages are mapped on
  /// demand: 2 MiB pages for the small pool, 20 MiB pages for the large pool
  /// (ExpandableSegment, try_allocate_expandable_block, map_block). Any free
  /// block may then be split down to 512 B (should_split), and empty_cache
  /// unmaps whole free pages (unmap_block).
  bool expandable_segments = false;

  /// max_split_size_mb * 2^20, in bytes; UINT64_MAX = unlimited (PyTorch's
  /// default SIZE_MAX). Blocks of at least this size are "oversize": a request
  /// smaller than it is never served by an oversize cached block
  /// (get_free_block), a large-pool block is split only for requests smaller
  /// than it (should_split), and on cudaMalloc failure oversize cached blocks
  /// are freed first (release_available_cached_blocks). Must be >= 20 MiB
  /// (kLargeBuffer), as in PyTorch's parser.
  uint64_t max_split_size = UINT64_MAX;

  /// max_non_split_rounding_mb * 2^20, in bytes. A request of at least
  /// max_split_size may reuse a cached oversize block only if the block is
  /// smaller than request + this tolerance (get_free_block). Older releases
  /// hard-code kLargeBuffer (20 MiB), which is the default.
  uint64_t max_non_split_rounding = 20ull << 20;

  /// roundup_power2_divisions:N with one value for every size interval. 0 (or
  /// 1) = off. When N > 1 and a request exceeds 512 * N bytes, it is rounded up
  /// to the next of N equal steps between the surrounding powers of two
  /// (round_size, roundup_power2_next_division); smaller requests keep the
  /// 512-B rounding. Must be 0 or a power of two, as in PyTorch's parser.
  unsigned roundup_power2_divisions = 0;

  /// Bytes the device lets the allocator obtain in total (cudaMalloc segments
  /// plus mapped expandable pages); UINT64_MAX = unlimited. When a new segment
  /// would exceed it, the allocator frees cached blocks and retries as PyTorch
  /// does (malloc), then reports out of memory.
  uint64_t capacity = UINT64_MAX;

  /// Total device memory (cudaDeviceProp::totalGlobalMem), in bytes. Only used
  /// to size the virtual address range of an expandable segment (1.125 times
  /// this, in whole pages). 0 = use `capacity`, or 1 TiB when that is
  /// unlimited.
  uint64_t device_memory = 0;
};

/// Counters, named after torch.cuda.memory_stats() keys ("all" pools).
struct AllocatorStats {
  /// allocated_bytes.all.current: sum of block sizes handed out (rounded, plus
  /// unsplit slack).
  uint64_t allocated = 0;
  /// reserved_bytes.all.current: cudaMalloc'ed segments plus mapped pages.
  uint64_t reserved = 0;
  /// allocated_bytes.all.peak (torch.cuda.max_memory_allocated()).
  uint64_t peak_allocated = 0;
  /// reserved_bytes.all.peak (torch.cuda.max_memory_reserved()).
  uint64_t peak_reserved = 0;
  /// requested_bytes.all.current: sum of the raw requested sizes.
  uint64_t requested = 0;
  /// requested_bytes.all.peak.
  uint64_t peak_requested = 0;
  /// segment.all.current: live cudaMalloc segments. As in PyTorch, expandable
  /// segments are not counted.
  uint64_t num_segments = 0;
  /// num_device_alloc: cudaMalloc calls plus page-mapping calls (map_block).
  uint64_t num_mallocs = 0;
  /// num_device_free: cudaFree calls plus page-unmapping calls (unmap_block).
  uint64_t num_frees = 0;
  /// num_ooms: allocations that failed after every retry.
  uint64_t num_oom = 0;
  /// num_alloc_retries: allocations that needed the last retry, after all
  /// unsplit cached blocks were freed.
  uint64_t num_alloc_retries = 0;
};

/// One block of a segment, as torch.cuda.memory_snapshot() lists it.
struct BlockInfo {
  uint64_t address = 0;    ///< simulated device address
  uint64_t size = 0;       ///< bytes
  uint64_t requested = 0;  ///< raw requested bytes; 0 when free
  bool allocated = false;
};

/// One segment: a cudaMalloc allocation, or for expandable segments one
/// contiguous mapped range (as memory_snapshot() reports them).
struct SegmentInfo {
  uint64_t address = 0;
  uint64_t total_size = 0;
  uint64_t allocated_size = 0;
  bool small_pool = false;
  bool expandable = false;
  std::vector<BlockInfo> blocks;  ///< in address order
};

/// Simulated DeviceCachingAllocator for one device and one stream.
class CachingAllocator {
 public:
  /// Dense ids (0, 1, 2, ... in allocation order, never reused) so callers can
  /// index vectors.
  using Handle = uint32_t;
  /// Returned by allocate() when the request cannot be satisfied.
  static constexpr Handle kOutOfMemory = 0xffffffffu;

  /// PyTorch's constants (CUDACachingAllocator.cpp), in bytes.
  static constexpr uint64_t kMinBlockSize = 512;           ///< request granularity
  static constexpr uint64_t kSmallSize = 1ull << 20;       ///< largest small-pool request
  static constexpr uint64_t kSmallBuffer = 2ull << 20;     ///< small-pool segment / page
  static constexpr uint64_t kMinLargeAlloc = 10ull << 20;  ///< below: kLargeBuffer segment
  static constexpr uint64_t kLargeBuffer = 20ull << 20;    ///< 1-10 MiB segment / large page
  static constexpr uint64_t kRoundLarge = 2ull << 20;      ///< larger segments round to this

  /// Throws llmem::Error if an option has a value PyTorch rejects.
  explicit CachingAllocator(AllocatorOptions options = {});
  ~CachingAllocator();
  CachingAllocator(CachingAllocator&&) noexcept;
  CachingAllocator& operator=(CachingAllocator&&) noexcept;
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  /// Allocates `bytes` (DeviceCachingAllocator::malloc). Returns a new handle,
  /// or kOutOfMemory if capacity is exceeded even after freeing cached blocks
  /// (num_oom is then incremented; blocks freed while retrying stay freed). A
  /// zero-byte request allocates nothing (PyTorch returns a null pointer) but
  /// still gets a handle, of block_size 0, that must be released like others.
  /// Throws llmem::Error only if 2^32 - 1 handles have already been issued.
  Handle allocate(uint64_t bytes);
  /// The same, also storing the new handle's block_size() in `*block_size`
  /// (0 when out of memory): one call per allocation on a replay's hot path.
  Handle allocate(uint64_t bytes, uint64_t* block_size);

  /// Frees a block (DeviceCachingAllocator::free / free_block): it returns to
  /// its pool and merges with free neighbours of the same segment. Throws
  /// llmem::Error for an unknown or already released handle.
  void release(Handle h);

  /// torch.cuda.empty_cache() (release_cached_blocks): returns every cached
  /// block that is a whole segment to the device; with expandable segments,
  /// unmaps every whole free page.
  void empty_cache();

  /// torch.cuda.reset_peak_memory_stats(): sets each peak to its current value.
  void reset_peak_stats();

  /// Size charged to `allocated` for a live handle: the rounded request, plus
  /// the unsplit slack of a large block. Throws llmem::Error for an unknown or
  /// released handle.
  uint64_t block_size(Handle h) const;

  /// Simulated address of a live handle's block (0 for a zero-byte request).
  /// Throws llmem::Error for an unknown or released handle.
  uint64_t block_address(Handle h) const;

  /// True if `h` was returned by allocate() and not yet released.
  bool is_live(Handle h) const;

  /// Number of handles issued so far (the next handle's value).
  size_t num_handles() const;

  /// Starts over as a new allocator with `options` (every handle becomes
  /// unknown), keeping the capacity of its internal tables: replaying many
  /// traces through one allocator skips their reallocation. Throws
  /// llmem::Error for invalid options, as the constructor does.
  void reset(const AllocatorOptions& options);

  /// Pre-sizes internal tables for about `events` allocations.
  void reserve(size_t events);

  /// The live counters: the reference stays valid, and keeps tracking them,
  /// for the allocator's lifetime (reset() included).
  const AllocatorStats& stats() const;
  const AllocatorOptions& options() const;

  /// torch.cuda.memory_snapshot(): segments in address order. Costs time
  /// proportional to the number of blocks; meant for tests and reports.
  std::vector<SegmentInfo> snapshot() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

/// PyTorch's round_size: the block size a request of `bytes` is charged. Below
/// 512 B gives 512 B; otherwise a multiple of 512 B, or with
/// roundup_power2_divisions = N > 1 and bytes > 512 * N, the next of N equal
/// steps between the surrounding powers of two (1200 B with N = 4 stays on
/// 512-B rounding, 1536 B, because 1200 <= 2048; 4200 B with N = 4 gives
/// 5120 B). Results saturate at 2^64 - 512.
uint64_t round_request(uint64_t bytes, const AllocatorOptions& options);

/// PyTorch's get_allocation_size: the cudaMalloc size for a new segment that
/// serves a rounded request of `size` bytes: 2 MiB up to 1 MiB, 20 MiB below
/// 10 MiB, otherwise `size` rounded up to a multiple of 2 MiB.
uint64_t segment_size_for(uint64_t size);

}  // namespace llmem

#endif  // LLMEM_ALLOCATOR_H_
