// Copyright 2026 The llmem Authors.
// The GPU catalog.

#ifndef LLMEM_GPU_H_
#define LLMEM_GPU_H_

#include <cstdint>
#include <string>
#include <vector>

namespace llmem {

struct GpuSpec {
  std::string name;  ///< canonical name, e.g. "A100-80GB"
  std::vector<std::string> aliases;
  std::string architecture;
  double compute_capability = 0;
  uint64_t capacity_bytes = 0;  ///< total device memory as nvidia-smi reports it
  uint64_t context_bytes = 0;   ///< CUDA context + runtime outside the caching allocator
  uint64_t cublas_workspace_bytes = 0;
  double bf16_tflops = 0, fp16_tflops = 0, fp32_tflops = 0;
  double memory_bandwidth_gbps = 0;
  double nvlink_gbps = 0, pcie_gbps = 0;
  std::string source;
};

const std::vector<GpuSpec>& gpu_catalog();
/// Case-insensitive lookup by name or alias; throws llmem::Error with a suggestion.
const GpuSpec& find_gpu(const std::string& name);
/// A GPU of `gib` GiB with the context and workspace of a recent data-center part.
GpuSpec custom_gpu(double gib);

}  // namespace llmem

#endif  // LLMEM_GPU_H_
