// Copyright 2026 The llmem Authors.
// Layer-repetition probe (not a benchmark): replays one single-GPU trace
// through a CachingAllocator and, at every decoder-layer boundary of the first
// and second steps' forward and backward, compares the allocator with the
// previous boundary. An exact skip of repeated layers needs the state to
// repeat; this shows how far it does (docs/planner.md, "Speed").
//
// Usage: llmem_layer_period [MODEL [BATCH [SEQ [ckpt|lora|exp]...]]]
// One line per boundary (the layer that just ended):
//   same_events     the layer's events equal the previous layer's, tensor ids
//                   shifted by one offset (backward reads forward tensors at a
//                   second offset, so it shows 0 there)
//   same_decisions  every allocation was charged the same bytes and took the
//                   same number of new segments / mapped pages as in the
//                   previous layer (the observable decisions; events outside
//                   the layers count toward the next layer printed)
//   segs, free      segments and free blocks now
//   changed, new    segments whose block layout changed, or that are new
//   period          smallest p in 1..8 such that the changed and new segments'
//                   layouts (offsets, sizes, allocated flags) equal those of p
//                   boundaries before in the same phase; 0: none

#include <cstdint>
#include <cstdio>
#include <exception>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "llmem/allocator.h"
#include "llmem/estimate.h"
#include "llmem/gpu.h"
#include "llmem/model.h"

#include "trace/program.h"

namespace {

using llmem::CachingAllocator;
using llmem::Phase;
using llmem::SegmentInfo;
using llmem::trace::Event;

// A segment's blocks: (offset from the segment start * 2 + allocated, size).
using Layout = std::vector<std::pair<uint64_t, uint64_t>>;

Layout layout_of(const SegmentInfo& s) {
  Layout l;
  for (const llmem::BlockInfo& b : s.blocks)
    l.emplace_back((b.address - s.address) * 2 + (b.allocated ? 1 : 0), b.size);
  return l;
}

bool same_events(const std::vector<Event>& ev, size_t a, size_t b, size_t n) {
  const int32_t shift = ev[b].tensor - ev[a].tensor;
  for (size_t k = 0; k < n; ++k) {
    const Event& x = ev[a + k];
    const Event& y = ev[b + k];
    if (x.alloc != y.alloc || x.bytes != y.bytes || x.component != y.component ||
        y.tensor - x.tensor != shift)
      return false;
  }
  return true;
}

class Probe {
 public:
  Probe(const std::vector<Event>& events, CachingAllocator* allocator)
      : ev_(events), a_(*allocator) {}

  void run() {
    std::vector<CachingAllocator::Handle> handles;
    for (size_t i = 0; i < ev_.size(); ++i) {
      const Event& e = ev_[i];
      const bool in_layers =
          e.step >= 1 && (e.phase == Phase::kForward || e.phase == Phase::kBackward);
      if (in_layers && (e.layer != layer_ || e.phase != phase_ || e.step != step_)) {
        if (layer_ >= 0)
          boundary(i);
        if (e.phase != phase_ || e.step != step_)
          history_.clear();
        layer_ = e.layer;
        phase_ = e.phase;
        step_ = e.step;
        start_ = i;
      }
      const auto t = static_cast<size_t>(e.tensor);
      if (t >= handles.size())
        handles.resize(t + 1, CachingAllocator::kOutOfMemory);
      if (e.alloc) {
        const uint64_t mallocs = a_.stats().num_mallocs;
        uint64_t charged = 0;
        handles[t] = a_.allocate(static_cast<uint64_t>(e.bytes), &charged);
        decisions_.emplace_back(charged, a_.stats().num_mallocs - mallocs);
      } else {
        a_.release(handles[t]);
      }
    }
  }

 private:
  void boundary(size_t end) {
    const std::vector<SegmentInfo> segments = a_.snapshot();
    std::map<uint64_t, Layout> now;
    std::vector<Layout> delta;
    size_t free_blocks = 0;
    size_t changed = 0;
    size_t fresh = 0;
    for (const SegmentInfo& s : segments) {
      for (const llmem::BlockInfo& b : s.blocks)
        free_blocks += b.allocated ? 0 : 1;
      Layout l = layout_of(s);
      const auto it = layouts_.find(s.address);
      if (it == layouts_.end() || it->second != l) {
        ++(it == layouts_.end() ? fresh : changed);
        delta.push_back(l);
      }
      now.emplace(s.address, std::move(l));
    }
    int period = 0;
    for (size_t p = 1; p <= 8 && p <= history_.size() && period == 0; ++p) {
      if (history_[history_.size() - p] == delta)
        period = static_cast<int>(p);
    }
    const size_t n = end - start_;
    const bool events_repeat =
        n > 0 && prev_end_ - prev_start_ == n && same_events(ev_, prev_start_, start_, n);
    const bool decisions_repeat = decisions_ == prev_decisions_;
    std::printf(
        "step %d %-8s layer %3d events %5zu same_events %d same_decisions %d | segs %4zu free %4zu "
        "changed %3zu new %3zu period %d\n",
        step_, std::string(llmem::phase_name(phase_)).c_str(), layer_, n, events_repeat ? 1 : 0,
        decisions_repeat ? 1 : 0, segments.size(), free_blocks, changed, fresh, period);
    prev_decisions_ = std::move(decisions_);
    decisions_.clear();
    prev_start_ = start_;
    prev_end_ = end;
    layouts_ = std::move(now);
    history_.push_back(std::move(delta));
  }

  const std::vector<Event>& ev_;
  CachingAllocator& a_;
  int layer_ = -2;
  Phase phase_ = Phase::kSetup;
  int step_ = 0;
  size_t start_ = 0;
  size_t prev_start_ = 0;
  size_t prev_end_ = 0;
  std::vector<std::pair<uint64_t, uint64_t>> decisions_;
  std::vector<std::pair<uint64_t, uint64_t>> prev_decisions_;
  std::map<uint64_t, Layout> layouts_;  // segment address -> layout at the previous boundary
  std::vector<std::vector<Layout>> history_;
};

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string name = argc > 1 ? argv[1] : "meta-llama/Llama-2-7b-hf";
    llmem::ModelSpec model = llmem::load_model(name);
    llmem::TrainingSetup s;
    s.batch = argc > 2 ? std::stoll(argv[2]) : 2;
    s.seq = argc > 3 ? std::stoll(argv[3]) : 2048;
    s.attention = llmem::AttentionImpl::kSdpa;
    for (int k = 4; k < argc; ++k) {
      const std::string flag = argv[k];
      if (flag == "ckpt") {
        s.checkpointing = llmem::CheckpointMode::kReentrant;
      } else if (flag == "lora") {
        s.finetune = llmem::FinetuneMode::kLora;
      } else if (flag == "exp") {
        s.allocator.expandable_segments = true;
      } else {
        std::fprintf(stderr, "unknown flag %s (expected ckpt, lora or exp)\n", flag.c_str());
        return 2;
      }
    }
    const llmem::GpuSpec& gpu = llmem::find_gpu("A100-80GB");
    s.workspace_bytes = gpu.cublas_workspace_bytes;
    const llmem::trace::TraceResult trace = llmem::trace::build_trace(model, s, {});
    CachingAllocator allocator(s.allocator);
    Probe(trace.events, &allocator).run();
    std::printf("events %zu, peak allocated %llu\n", trace.events.size(),
                static_cast<unsigned long long>(allocator.stats().peak_allocated));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
