// Copyright 2026 The llmem Authors.

#include "report/charts.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

namespace llmem::report {

std::string html_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string gib_text(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f GiB", static_cast<double>(bytes) / 1073741824.0);
  return buf;
}

std::string_view component_color(Component c) {
  // The same colours as web/app.js.
  switch (c) {
    case Component::kParameters:
      return "#4e79a7";
    case Component::kGradients:
      return "#f28e2b";
    case Component::kOptimizerStates:
      return "#e15759";
    case Component::kMasterWeights:
      return "#a0cbe8";
    case Component::kWeightCopies:
      return "#76b7b2";
    case Component::kActivations:
      return "#59a14f";
    case Component::kLogitsLoss:
      return "#edc948";
    case Component::kTemporaries:
      return "#b07aa1";
    case Component::kInputs:
      return "#ff9da7";
    case Component::kWorkspace:
      return "#9c755f";
    case Component::kCount:
      break;
  }
  return "#bab0ac";
}

std::string breakdown_svg(const Estimate& e, const std::string& gpu_name) {
  const double width = 960, left = 10, right = 10, bar_top = 34, bar_h = 46;
  const double height = 110;
  double plot_w = width - left - right;
  uint64_t device = std::max(e.peak.device_bytes, e.peak.allocated_bytes);
  uint64_t scale = std::max<uint64_t>(std::max(device, e.capacity_bytes), 1);
  auto x = [&](uint64_t b) {
    return left + plot_w * static_cast<double>(b) / static_cast<double>(scale);
  };
  std::ostringstream out;
  out << "<svg class=\"breakdown\" viewBox=\"0 0 " << width << " " << height
      << "\" role=\"img\" font-family=\"sans-serif\" font-size=\"12\">\n";
  out << "<rect x=\"" << left << "\" y=\"" << bar_top << "\" width=\"" << plot_w << "\" height=\""
      << bar_h << "\" fill=\"#f4f4f4\" stroke=\"#ccc\"/>\n";
  uint64_t at = 0;
  auto segment = [&](uint64_t bytes, std::string_view color, std::string_view label) {
    if (bytes == 0)
      return;
    out << "<rect x=\"" << x(at) << "\" y=\"" << bar_top << "\" width=\"" << x(at + bytes) - x(at)
        << "\" height=\"" << bar_h << "\" fill=\"" << color << "\"><title>" << label << ": "
        << gib_text(bytes) << "</title></rect>\n";
    at += bytes;
  };
  for (size_t c = 0; c < e.peak.components.size(); ++c) {
    auto comp = static_cast<Component>(c);
    segment(e.peak.components[c], component_color(comp), component_name(comp));
  }
  if (e.peak.reserved_bytes > e.peak.allocated_bytes) {
    segment(e.peak.reserved_bytes - e.peak.allocated_bytes, kCachedColor,
            "allocator cache (reserved - allocated)");
  }
  if (e.peak.device_bytes > e.peak.reserved_bytes && e.capacity_bytes > 0) {
    uint64_t outside = e.peak.device_bytes - e.peak.reserved_bytes;
    uint64_t context = std::min(outside, e.context_bytes);
    segment(context, kContextColor, "CUDA context");
    segment(outside - context, kCommColor, "NCCL buffers");
  }
  // Marker at the end of the stack, and the capacity line.
  out << "<text x=\"" << left << "\" y=\"20\" font-size=\"13\">0</text>\n";
  if (e.capacity_bytes > 0) {
    double cx = x(e.capacity_bytes);
    bool over = device > e.capacity_bytes;
    out << "<line x1=\"" << cx << "\" x2=\"" << cx << "\" y1=\"" << bar_top - 10 << "\" y2=\""
        << bar_top + bar_h + 10 << "\" stroke=\"" << (over ? "#c0392b" : "#222")
        << "\" stroke-width=\"2.5\" stroke-dasharray=\"5,3\"/>\n";
    out << "<text x=\"" << cx - 4 << "\" y=\"20\" text-anchor=\"end\" font-size=\"13\">"
        << html_escape(gpu_name) << " capacity " << gib_text(e.capacity_bytes) << "</text>\n";
  }
  double dx = x(device);
  out << "<text x=\"" << std::min(dx, width - right) << "\" y=\"" << bar_top + bar_h + 24
      << "\" text-anchor=\"" << (dx > width / 2 ? "end" : "start")
      << "\" font-size=\"13\" font-weight=\"bold\">peak " << gib_text(device) << "</text>\n";
  out << "</svg>\n";
  return out.str();
}

std::string rank_bar_svg(const PeakInfo& peak, uint64_t capacity_bytes) {
  const double width = 220, height = 14;
  uint64_t scale = std::max<uint64_t>(std::max(peak.device_bytes, capacity_bytes), 1);
  auto w = [&](uint64_t b) { return width * static_cast<double>(b) / static_cast<double>(scale); };
  std::ostringstream out;
  out << "<svg class=\"rankbar\" viewBox=\"0 0 " << width << " " << height << "\" width=\"" << width
      << "\" height=\"" << height << "\" role=\"img\"><rect width=\"" << width << "\" height=\""
      << height << "\" fill=\"#f4f4f4\"/>";
  uint64_t at = 0;
  auto segment = [&](uint64_t bytes, std::string_view color) {
    if (bytes == 0)
      return;
    out << "<rect x=\"" << w(at) << "\" width=\"" << w(bytes) << "\" height=\"" << height
        << "\" fill=\"" << color << "\"/>";
    at += bytes;
  };
  for (size_t c = 0; c < peak.components.size(); ++c)
    segment(peak.components[c], component_color(static_cast<Component>(c)));
  if (peak.reserved_bytes > peak.allocated_bytes)
    segment(peak.reserved_bytes - peak.allocated_bytes, kCachedColor);
  if (peak.device_bytes > peak.reserved_bytes && capacity_bytes > 0)
    segment(peak.device_bytes - peak.reserved_bytes, kContextColor);
  if (capacity_bytes > 0) {
    out << "<line x1=\"" << w(capacity_bytes) << "\" x2=\"" << w(capacity_bytes)
        << "\" y1=\"0\" y2=\"" << height << "\" stroke=\"#111\" stroke-width=\"2\"/>";
  }
  out << "</svg>";
  return out.str();
}

}  // namespace llmem::report
