// Copyright 2026 The llmem Authors.
// Replays the step's events through the allocator model and reports peaks.

#include "llmem/estimate.h"

#include <algorithm>

#include "llmem/allocator.h"
#include "llmem/error.h"

#include "estimate/distributed.h"
#include "trace/program.h"

namespace llmem {

std::string_view component_name(Component c) {
  switch (c) {
    case Component::kParameters:
      return "parameters";
    case Component::kGradients:
      return "gradients";
    case Component::kOptimizerStates:
      return "optimizer_states";
    case Component::kMasterWeights:
      return "master_weights";
    case Component::kWeightCopies:
      return "weight_copies";
    case Component::kActivations:
      return "activations";
    case Component::kLogitsLoss:
      return "logits_loss";
    case Component::kTemporaries:
      return "temporaries";
    case Component::kInputs:
      return "inputs";
    case Component::kWorkspace:
      return "workspace";
    case Component::kCount:
      break;
  }
  return "other";
}

std::string_view phase_name(Phase p) {
  switch (p) {
    case Phase::kSetup:
      return "setup";
    case Phase::kForward:
      return "forward";
    case Phase::kLoss:
      return "loss";
    case Phase::kBackward:
      return "backward";
    case Phase::kOptimizer:
      return "optimizer";
    case Phase::kLoad:
      return "load";
  }
  return "";
}

namespace {

constexpr size_t kComponents = static_cast<size_t>(Component::kCount);

struct Replay {
  PeakInfo peak;
  uint64_t reserved_peak = 0;
  uint64_t step_peak[3] = {0, 0, 0};
  std::array<uint64_t, 5> phase_peaks{};
  std::vector<TimelinePoint> timeline;
  bool oom = false;
};

// Per tensor id: its allocator handle and the bytes charged for it (side by
// side, as every event reads both).
struct Live {
  CachingAllocator::Handle handle;
  uint64_t size;
};

// One allocator and tensor table per thread, reset for each replay: their
// tables keep their capacity from one estimate to the next (no fresh pages
// per estimate), whichever replay_events variant runs.
struct ReplayScratch {
  CachingAllocator caching{AllocatorOptions{}};
  std::vector<Live> tensors;
};

ReplayScratch& replay_scratch() {
  thread_local ReplayScratch scratch;
  return scratch;
}

// The replay loop, compiled once per (device, timeline) pair so that neither
// test runs per event.
template <bool cuda, bool record_timeline>
Replay replay_events(const std::vector<trace::Event>& events, const AllocatorOptions& options) {
  Replay r;
  ReplayScratch& scratch = replay_scratch();
  CachingAllocator& caching = scratch.caching;
  caching.reset(options);
  const AllocatorStats& stats = caching.stats();  // the allocator's live counters
  uint64_t exact_allocated = 0;
  std::vector<Live>& tensors = scratch.tensors;
  tensors.clear();
  std::array<uint64_t, kComponents> live{};
  [[maybe_unused]] uint64_t thin = 0;
  // The running peaks, in locals (registers) rather than in `r`, whose
  // storage the compiler must assume the allocator calls may read.
  uint64_t peak_allocated = 0;
  uint64_t reserved_peak = 0;
  std::array<uint64_t, 3> step_peak{};
  std::array<uint64_t, 5> phase_peaks{};
  auto finish = [&] {
    r.peak.allocated_bytes = peak_allocated;
    r.reserved_peak = reserved_peak;
    std::copy(step_peak.begin(), step_peak.end(), r.step_peak);
    r.phase_peaks = phase_peaks;
  };
  // Sizes and pointers in locals: the compiler cannot tell that the opaque
  // allocator calls leave the vectors alone, and would reload them per event.
  const size_t n = events.size();
  const trace::Event* ev = events.data();
  size_t slots = tensors.size();
  Live* table = tensors.data();
  for (size_t i = 0; i < n; ++i) {
    const trace::Event& e = ev[i];
    auto t = static_cast<size_t>(e.tensor);
    if (t >= slots) {  // tensor ids grow through the trace: grow by doubling
      tensors.resize(std::max(t + 1, 2 * slots), Live{CachingAllocator::kOutOfMemory, 0});
      slots = tensors.size();
      table = tensors.data();
    }
    Live& tensor = table[t];
    auto c = static_cast<size_t>(e.component);
    if (e.step == 2 && (i == 0 || ev[i - 1].phase != e.phase || ev[i - 1].step != 2)) {
      // A phase begins at the level the previous one left (SGD's step frees only).
      uint64_t level = cuda ? stats.allocated : exact_allocated;
      auto p = static_cast<size_t>(e.phase);
      phase_peaks[p] = std::max(phase_peaks[p], level);
    }
    if (e.alloc) {
      auto bytes = static_cast<uint64_t>(e.bytes);
      if constexpr (cuda) {
        tensor.handle = caching.allocate(bytes, &tensor.size);
        if (tensor.handle == CachingAllocator::kOutOfMemory) {
          r.oom = true;
          finish();
          return r;
        }
      } else {
        tensor.size = bytes;
        exact_allocated += bytes;
      }
      live[c] += tensor.size;
    } else {
      live[c] -= tensor.size;
      if constexpr (cuda) {
        caching.release(tensor.handle);
      } else {
        exact_allocated -= tensor.size;
      }
    }
    uint64_t allocated = cuda ? stats.allocated : exact_allocated;
    uint64_t reserved = cuda ? stats.reserved : exact_allocated;
    reserved_peak = std::max(reserved_peak, reserved);
    if (allocated > peak_allocated) {
      peak_allocated = allocated;
      r.peak.components = live;
      r.peak.phase = e.phase;
      r.peak.layer = e.layer;
      r.peak.step = e.step;
    }
    uint64_t& step_level = step_peak[std::min<size_t>(e.step, 2)];
    step_level = std::max(step_level, allocated);
    if (e.step == 2) {
      auto p = static_cast<size_t>(e.phase);
      phase_peaks[p] = std::max(phase_peaks[p], allocated);
    }
    if constexpr (record_timeline) {
      // Keep a point when memory moved by more than ~0.2 % of the running peak.
      uint64_t last = r.timeline.empty() ? 0 : r.timeline.back().allocated;
      uint64_t delta = allocated > last ? allocated - last : last - allocated;
      if (r.timeline.empty() || delta * 500 > peak_allocated ||
          r.timeline.back().phase != e.phase || ++thin % 64 == 0) {
        r.timeline.push_back(
            {static_cast<uint32_t>(i), e.step, e.phase, e.layer, allocated, reserved});
      }
    }
  }
  // The optimizer runs last; when it allocates nothing in the steady state
  // (a fused step on existing buffers, Gemini's fp16 gradient slices) it
  // runs at the level backward left.
  auto opt = static_cast<size_t>(Phase::kOptimizer);
  if (phase_peaks[opt] == 0 && !events.empty() && events.back().step == 2)
    phase_peaks[opt] = cuda ? stats.allocated : exact_allocated;
  finish();
  return r;
}

Replay replay(const std::vector<trace::Event>& events, bool cuda, const AllocatorOptions& options,
              bool record_timeline) {
  if (cuda) {
    return record_timeline ? replay_events<true, true>(events, options)
                           : replay_events<true, false>(events, options);
  }
  return record_timeline ? replay_events<false, true>(events, options)
                         : replay_events<false, false>(events, options);
}

}  // namespace

Estimate estimate(const ModelSpec& model, const TrainingSetup& setup_in, const GpuSpec& gpu) {
  check_pipeline_schedule(model, setup_in);
  if (setup_in.parallel.method != Method::kSingle || setup_in.parallel.gpus() > 1)
    return estimate_distributed(model, setup_in, gpu);
  return estimate_rank(model, setup_in, gpu, {});
}

Estimate estimate_rank(const ModelSpec& model, const TrainingSetup& setup_in, const GpuSpec& gpu,
                       const trace::RankPlan& rank) {
  if (setup_in.batch < 1 || setup_in.batch > (1 << 20)) {
    throw Error("--batch", "", "expected a micro-batch between 1 and 2^20");
  }
  if (setup_in.seq < 2 || setup_in.seq > (1 << 24)) {
    throw Error("--seq", "", "expected a sequence length between 2 and 2^24");
  }
  if (setup_in.grad_accum < 1 || setup_in.grad_accum > 1024) {
    throw Error("--grad-accum", "", "expected between 1 and 1024 micro-batches per step");
  }
  TrainingSetup setup = setup_in;
  bool cuda = setup.device == Device::kCuda;
  setup.workspace_bytes = cuda ? gpu.cublas_workspace_bytes : 0;
  if (setup.gpu_sm <= 0 && gpu.compute_capability > 0)
    setup.gpu_sm = static_cast<int>(gpu.compute_capability * 10 + 0.5);
  // Reused across estimates on this thread: a plan runs thousands back to back.
  thread_local trace::TraceResult trace;
  trace::build_trace(model, setup, rank, &trace);

  Estimate est;
  est.params = trace.params;
  est.trainable_params = trace.trainable_params;
  est.events = trace.events.size();
  est.notes = trace.notes;
  est.attention_kernel = trace.attention_kernel;
  AllocatorOptions unlimited = setup.allocator;
  unlimited.capacity = UINT64_MAX;
  Replay r = replay(trace.events, cuda, unlimited, !setup.peak_only);
  est.peak = r.peak;
  est.peak.reserved_bytes = r.reserved_peak;
  est.first_step_peak = r.step_peak[1];
  est.steady_step_peak = r.step_peak[2];
  est.load_peak = r.step_peak[0];
  est.phase_peaks = r.phase_peaks;
  est.timeline = std::move(r.timeline);
  if (cuda) {
    est.context_bytes = gpu.context_bytes;
    est.workspace_bytes = gpu.cublas_workspace_bytes;
    est.capacity_bytes = gpu.capacity_bytes;
    est.comm_bytes = rank.comm_bytes;
    est.peak.device_bytes = est.peak.reserved_bytes + est.context_bytes + est.comm_bytes;
    // Does it fit? Replay against the memory the allocator can really get:
    // the allocator frees its cache and retries before giving up, so this can
    // fit even when the unlimited reserved peak exceeds the budget.
    uint64_t fixed = gpu.context_bytes + est.comm_bytes;
    uint64_t budget = gpu.capacity_bytes > fixed ? gpu.capacity_bytes - fixed : 0;
    if (est.peak.device_bytes <= gpu.capacity_bytes) {
      est.fits = true;
    } else if (est.peak.allocated_bytes <= budget && !setup.peak_only) {
      // (The planner, peak_only, judges by device_bytes and its margin, so
      // it skips this second replay.)
      AllocatorOptions limited = setup.allocator;
      limited.capacity = budget;
      limited.device_memory = gpu.capacity_bytes;
      est.fits = !replay(trace.events, cuda, limited, false).oom;
    }
  } else {
    est.peak.device_bytes = est.peak.allocated_bytes;
    est.fits = true;
  }
  return est;
}

}  // namespace llmem
