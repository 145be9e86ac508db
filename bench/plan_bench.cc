// Copyright 2026 The llmem Authors.
// Speed of a plan: a 7B model on 8 GPUs over every method, layout,
// checkpointing, offload and fine-tuning mode, micro-batches 1..1024.

#include <benchmark/benchmark.h>

#include "llmem/gpu.h"
#include "llmem/model.h"
#include "llmem/plan.h"

namespace {

void plan_7b_8gpus(benchmark::State& state, bool interleaved) {
  llmem::ModelSpec model = llmem::load_model("meta-llama/Llama-2-7b-hf");
  const llmem::GpuSpec& gpu = llmem::find_gpu("A100-80GB");
  llmem::PlanRequest r;
  r.gpus = 8;
  r.seq = 2048;
  r.methods = {llmem::Method::kDdp,   llmem::Method::kZero1, llmem::Method::kZero2,
               llmem::Method::kZero3, llmem::Method::kFsdp,  llmem::Method::kMegatron};
  r.allow_ckpt = r.allow_lora = r.allow_qlora = r.allow_offload = true;
  r.allow_interleaved = interleaved;
  r.base.attention = llmem::AttentionImpl::kSdpa;
  r.max_micro_batch = state.range(0);
  r.max_pp = static_cast<int>(state.range(1));
  size_t configurations = 0, estimates = 0, fits = 0, families = 0;
  for (auto _ : state) {
    llmem::Plan p = llmem::plan(model, r, gpu);  // a fresh memo every iteration
    configurations = p.configurations;
    estimates = p.estimates;
    families = p.candidates.size();
    fits = 0;
    for (const llmem::PlanCandidate& c : p.candidates)
      fits += c.fits ? 1 : 0;
    benchmark::DoNotOptimize(p.choice);
  }
  state.counters["configurations"] = static_cast<double>(configurations);
  state.counters["families"] = static_cast<double>(families);
  state.counters["fitting"] = static_cast<double>(fits);
  state.counters["estimates"] = static_cast<double>(estimates);
}
void BM_Plan7B8Gpus(benchmark::State& state) {
  plan_7b_8gpus(state, false);
}
// max_pp 1: without pipeline layouts (each of their estimates simulates
// every stage with pp + 1 micro-batches, ~10x a plain one).
BENCHMARK(BM_Plan7B8Gpus)
    ->ArgNames({"max_micro_batch", "max_pp"})
    ->Args({1024, 0})
    ->Args({1024, 1})
    ->Unit(benchmark::kMillisecond);

// The same search with --allow interleaved (megatron pipelines also with 2
// model chunks per rank): what keeps it out of the default search.
void BM_Plan7B8GpusInterleaved(benchmark::State& state) {
  plan_7b_8gpus(state, true);
}
BENCHMARK(BM_Plan7B8GpusInterleaved)
    ->ArgNames({"max_micro_batch", "max_pp"})
    ->Args({1024, 0})
    ->Unit(benchmark::kMillisecond);

// One GPU (where estimate() models every candidate today): 7B on an 80 GB GPU.
void BM_Plan7B1Gpu(benchmark::State& state) {
  llmem::ModelSpec model = llmem::load_model("meta-llama/Llama-2-7b-hf");
  const llmem::GpuSpec& gpu = llmem::find_gpu("A100-80GB");
  llmem::PlanRequest r;
  r.gpus = 1;
  r.seq = 2048;
  r.allow_ckpt = r.allow_lora = r.allow_qlora = true;
  r.base.attention = llmem::AttentionImpl::kSdpa;
  size_t configurations = 0, estimates = 0;
  for (auto _ : state) {
    llmem::Plan p = llmem::plan(model, r, gpu);
    configurations = p.configurations;
    estimates = p.estimates;
    benchmark::DoNotOptimize(p.choice);
  }
  state.counters["configurations"] = static_cast<double>(configurations);
  state.counters["estimates"] = static_cast<double>(estimates);
}
BENCHMARK(BM_Plan7B1Gpu)->Unit(benchmark::kMillisecond);

}  // namespace
