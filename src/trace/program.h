// Copyright 2026 The llmem Authors.
// The training-step program: what Hugging Face modeling code, PEFT and the
// Trainer do in one step, op by op, expressed on the symbolic Graph.

#ifndef LLMEM_SRC_TRACE_PROGRAM_H_
#define LLMEM_SRC_TRACE_PROGRAM_H_

#include <string>
#include <vector>

#include "llmem/job.h"
#include "llmem/model.h"

#include "trace/graph.h"

namespace llmem::trace {

struct TraceResult {
  std::vector<Event> events;
  int64_t params = 0;
  int64_t trainable_params = 0;
  std::vector<std::string> notes;
};

/// Builds the events of: parameter setup, a first iteration and a
/// steady-state iteration (each: grad_accum micro-batches of forward, loss and
/// backward, then the optimizer step and zero_grad(set_to_none=True)).
TraceResult build_trace(const ModelSpec& model, const TrainingSetup& setup);

}  // namespace llmem::trace

#endif  // LLMEM_SRC_TRACE_PROGRAM_H_
