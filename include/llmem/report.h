// Copyright 2026 The llmem Authors.
// Rendering results as text or JSON. No arithmetic beyond formatting.

#ifndef LLMEM_REPORT_H_
#define LLMEM_REPORT_H_

#include <string>

#include "llmem/estimate.h"
#include "llmem/model.h"

namespace llmem {

/// Version of the JSON documents llmem writes; bumped on incompatible change.
inline constexpr int kSchemaVersion = 1;

/// `llmem inspect --format json`. Contract: top-level "params" (unique
/// parameters), "model_type", "vocab_size", "hidden_size", "layers" (integer)
/// and "tensors" (objects with "name", "shape", "params", and "tied_to" for
/// tied ones); more keys may be added, none removed.
std::string inspect_json(const ModelSpec& spec);
/// Human-readable summary; `tensors` adds one line per tensor.
std::string inspect_table(const ModelSpec& spec, bool tensors);

/// `llmem models`: every catalog entry with family and parameter count.
std::string models_table();
std::string models_json();

/// `llmem estimate` renderings. Contract of the JSON: "peak" with
/// "allocated_bytes", "reserved_bytes", "device_bytes" and "phase";
/// "components" (name -> bytes at the peak instant, summing to
/// peak.allocated_bytes); "fits"; "gpu" with "capacity_bytes"; "model" with
/// "params" and "trainable_params".
std::string estimate_json(const ModelSpec& model, const TrainingSetup& setup, const GpuSpec& gpu,
                          const Estimate& e);
std::string estimate_table(const ModelSpec& model, const TrainingSetup& setup, const GpuSpec& gpu,
                           const Estimate& e);
/// The timeline: one row per sample (event, step, phase, layer, allocated, reserved).
std::string estimate_csv(const Estimate& e);
/// The timeline as an SVG chart with phase bands and the capacity line.
std::string estimate_svg(const ModelSpec& model, const GpuSpec& gpu, const Estimate& e);

/// A self-contained HTML page (inline CSS and SVG, no scripts, no network):
/// the verdict, the breakdown at the peak as a stacked bar against the
/// capacity, the timeline, the per-rank table (distributed layouts), the
/// peaks and the inputs. Byte counts equal estimate_json's; each is tagged
/// with data-key="<json path>" (e.g. "peak.device_bytes").
std::string estimate_html(const ModelSpec& model, const TrainingSetup& setup, const GpuSpec& gpu,
                          const Estimate& e);

/// The paper's equations, alone or beside llmem's estimate (`llmem` may be null).
std::string paper_table(const ModelSpec& model, const TrainingSetup& setup, const GpuSpec& gpu,
                        const PaperEstimate& p, const Estimate* llmem);
std::string paper_json(const PaperEstimate& p, const Estimate* llmem);

/// 1234567 -> "1,234,567".
std::string with_commas(int64_t value);

}  // namespace llmem

#endif  // LLMEM_REPORT_H_
