// Copyright 2026 The llmem Authors.
// Speed of reading configs and building inventories.

#include <string>

#include <benchmark/benchmark.h>

#include "llmem/model.h"

namespace {

const llmem::CatalogEntry& entry(const std::string& name) {
  for (const llmem::CatalogEntry& e : llmem::catalog()) {
    if (e.name == name)
      return e;
  }
  return llmem::catalog().front();
}

// config.json text -> ModelSpec with the full tensor inventory.
void BM_ParseConfig(benchmark::State& state, const std::string& name) {
  const llmem::CatalogEntry& e = entry(name);
  for (auto _ : state) {
    llmem::ModelSpec spec = llmem::parse_config(e.config_json, e.name);
    benchmark::DoNotOptimize(spec.params());
  }
}
BENCHMARK_CAPTURE(BM_ParseConfig, opt_1_3b, std::string("facebook/opt-1.3b"));
BENCHMARK_CAPTURE(BM_ParseConfig, llama_3_1_8b, std::string("meta-llama/Llama-3.1-8B"));
BENCHMARK_CAPTURE(BM_ParseConfig, llama_3_1_70b, std::string("meta-llama/Llama-3.1-70B"));
BENCHMARK_CAPTURE(BM_ParseConfig, mixtral_8x7b, std::string("mistralai/Mixtral-8x7B-v0.1"));
BENCHMARK_CAPTURE(BM_ParseConfig, deepseek_v2_lite, std::string("deepseek-ai/DeepSeek-V2-Lite"));

}  // namespace
