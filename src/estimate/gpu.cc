// Copyright 2026 The llmem Authors.
// The GPU catalog: data/gpus.json compiled into the library.

#include "llmem/gpu.h"

#include <algorithm>
#include <cctype>
#include <string>

#include "llmem/error.h"

#include "config/config_reader.h"
#include "model/catalog_data.h"
#include "model/suggest.h"

namespace llmem {
namespace {

std::string normalize(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == ' ' || c == '_')
      c = '-';
    out.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  }
  return out;
}

double number_or_zero(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : 0.0;
}

}  // namespace

const std::vector<GpuSpec>& gpu_catalog() {
  static const std::vector<GpuSpec> kGpus = [] {
    std::vector<GpuSpec> gpus;
    for (const model::EmbeddedFile& file : model::embedded_gpus()) {
      std::string source = "data/" + std::string(file.name);
      nlohmann::json doc = config::parse_json(file.text, source);
      for (const auto& g : doc.at("gpus")) {
        GpuSpec spec;
        spec.name = g.at("name").get<std::string>();
        for (const auto& a : g.value("aliases", nlohmann::json::array())) {
          spec.aliases.push_back(a.get<std::string>());
        }
        spec.architecture = g.value("architecture", "");
        std::string cc = g.value("compute_capability", "0");
        spec.compute_capability = std::stod(cc);
        spec.capacity_bytes = g.at("capacity_bytes").get<uint64_t>();
        spec.context_bytes = g.at("cuda_context_bytes").get<uint64_t>();
        spec.cublas_workspace_bytes = g.at("cublas_workspace_bytes").get<uint64_t>();
        spec.bf16_tflops = number_or_zero(g, "bf16_tflops");
        spec.fp16_tflops = number_or_zero(g, "fp16_tflops");
        spec.fp32_tflops = number_or_zero(g, "fp32_tflops");
        spec.memory_bandwidth_gbps = number_or_zero(g, "memory_bandwidth_gbps");
        spec.nvlink_gbps = number_or_zero(g, "nvlink_gbps");
        spec.pcie_gbps = number_or_zero(g, "pcie_gbps");
        spec.source = g.value("capacity_source", "");
        gpus.push_back(std::move(spec));
      }
    }
    return gpus;
  }();
  return kGpus;
}

const GpuSpec& find_gpu(const std::string& name) {
  std::string key = normalize(name);
  std::vector<std::string> names;
  for (const GpuSpec& g : gpu_catalog()) {
    names.push_back(g.name);
    if (normalize(g.name) == key)
      return g;
    for (const std::string& a : g.aliases) {
      if (normalize(a) == key)
        return g;
    }
  }
  std::string message = "unknown GPU \"" + name + "\"";
  std::string nearest = model::nearest(name, names);
  if (!nearest.empty())
    message += " (did you mean \"" + nearest + "\"?)";
  message += "; known: " + model::join(names, ", ") + ", or give --gpu-mem GIB";
  throw Error("--gpu", "", message);
}

GpuSpec custom_gpu(double gib) {
  if (!(gib > 0) || gib > 4096) {
    throw Error("--gpu-mem", "", "expected a memory size in GiB between 0 and 4096");
  }
  GpuSpec g = find_gpu("A100-80GB");
  g.name = "custom";
  g.aliases.clear();
  g.capacity_bytes = static_cast<uint64_t>(gib * 1073741824.0);
  g.source = "--gpu-mem; context and workspace as A100";
  return g;
}

}  // namespace llmem
