// Copyright 2026 The llmem Authors.
// Speed of one estimate: trace generation plus allocator replay.

#include <benchmark/benchmark.h>

#include "llmem/estimate.h"
#include "llmem/gpu.h"
#include "llmem/model.h"

namespace {

// One estimate of a 32-layer 7B model (Llama-2-7B), full trace and replay.
void BM_Estimate7B(benchmark::State& state) {
  llmem::ModelSpec model = llmem::load_model("meta-llama/Llama-2-7b-hf");
  const llmem::GpuSpec& gpu = llmem::find_gpu("A100-80GB");
  llmem::TrainingSetup setup;
  setup.batch = 1;
  setup.seq = 2048;
  setup.attention = static_cast<llmem::AttentionImpl>(state.range(0));
  setup.checkpointing =
      state.range(1) != 0 ? llmem::CheckpointMode::kReentrant : llmem::CheckpointMode::kOff;
  size_t events = 0;
  for (auto _ : state) {
    llmem::Estimate e = llmem::estimate(model, setup, gpu);
    events = e.events;
    benchmark::DoNotOptimize(e.peak.allocated_bytes);
  }
  state.counters["events"] = static_cast<double>(events);
}
BENCHMARK(BM_Estimate7B)
    ->ArgNames({"attention", "ckpt"})
    ->Args({0, 0})
    ->Args({1, 0})
    ->Args({1, 1})
    ->Unit(benchmark::kMicrosecond);

}  // namespace
