// Copyright 2026 The llmem Authors.
// Test helpers over a trace's events.

#ifndef LLMEM_TESTS_UNIT_TRACE_EVENTS_H_
#define LLMEM_TESTS_UNIT_TRACE_EVENTS_H_

#include <algorithm>
#include <cstdint>
#include <vector>

#include "llmem/job.h"

#include "trace/graph.h"

namespace llmem::test_util {

/// A run of `framework` with its defaults on the CPU (exact sizes).
inline TrainingSetup cpu_run(Framework framework, FinetuneMode mode, int64_t batch, int64_t seq) {
  TrainingSetup s;
  apply_framework_defaults(framework, &s);
  s.device = Device::kCpu;
  s.finetune = mode;
  s.batch = batch;
  s.seq = seq;
  return s;
}

/// The most bytes live at once over `events`, every component together.
inline int64_t peak_live(const std::vector<trace::Event>& events) {
  int64_t live = 0;
  int64_t peak = 0;
  for (const trace::Event& e : events) {
    live += e.alloc ? e.bytes : -e.bytes;
    peak = std::max(peak, live);
  }
  return peak;
}

/// The largest number of bytes of component `c` live at once over `events`.
inline int64_t max_live(const std::vector<trace::Event>& events, Component c) {
  int64_t live = 0;
  int64_t peak = 0;
  for (const trace::Event& e : events) {
    if (e.component != c)
      continue;
    live += e.alloc ? e.bytes : -e.bytes;
    peak = std::max(peak, live);
  }
  return peak;
}

/// max_live over the training steps only (events of step 1 and later): the
/// load phase (step 0) frees what it allocates, so it is left out whole.
inline int64_t max_live_in_steps(const std::vector<trace::Event>& events, Component c) {
  std::vector<trace::Event> steps;
  for (const trace::Event& e : events) {
    if (e.step >= 1)
      steps.push_back(e);
  }
  return max_live(steps, c);
}

}  // namespace llmem::test_util

#endif  // LLMEM_TESTS_UNIT_TRACE_EVENTS_H_
