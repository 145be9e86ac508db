// Copyright 2026 The llmem Authors.
// SVG charts shared by `--format svg` and `--format html` (private to src/report).

#ifndef LLMEM_SRC_REPORT_CHARTS_H_
#define LLMEM_SRC_REPORT_CHARTS_H_

#include <string>
#include <string_view>

#include "llmem/estimate.h"
#include "llmem/gpu.h"
#include "llmem/model.h"

namespace llmem::report {

/// Escapes &, <, >, " and ' for HTML text and attribute values.
std::string html_escape(std::string_view text);

/// "12.34 GiB".
std::string gib_text(uint64_t bytes);

/// The memory timeline with phase bands and the capacity line. `standalone`
/// writes an SVG document (xmlns, white background) for `--format svg`;
/// otherwise an element to inline in HTML, scaled to its container.
std::string timeline_svg(const ModelSpec& model, const GpuSpec& gpu, const Estimate& e,
                         bool standalone);

/// The breakdown at the peak as one stacked horizontal bar: the components
/// (summing to the allocated peak), the allocator's cached bytes (reserved -
/// allocated) and the CUDA context (summing to the device peak), drawn against
/// the GPU's capacity. Inline element; colours from component_color().
std::string breakdown_svg(const Estimate& e, const std::string& gpu_name);

/// A small bar (220 x 14) of one rank's peak (components, cache, context)
/// against the capacity, for per-rank tables.
std::string rank_bar_svg(const PeakInfo& peak, uint64_t capacity_bytes);

/// A fixed colour per component, and for the two extra segments.
std::string_view component_color(Component c);
inline constexpr std::string_view kCachedColor = "#c7c7c7";
inline constexpr std::string_view kContextColor = "#7f7f7f";
inline constexpr std::string_view kCommColor = "#3b3b3b";

}  // namespace llmem::report

#endif  // LLMEM_SRC_REPORT_CHARTS_H_
