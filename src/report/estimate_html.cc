// Copyright 2026 The llmem Authors.
// `llmem estimate --format html`: one self-contained page (inline CSS and SVG,
// no scripts, no network). The numbers come from estimate_json, so the page
// and the JSON cannot disagree.

#include <cstdio>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "llmem/report.h"

#include "report/charts.h"

namespace llmem {
namespace {

using nlohmann::ordered_json;
using report::gib_text;
using report::html_escape;

constexpr const char* kStyle = R"css(
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d232a;
background:#f5f6f8}
main{max-width:1040px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:16px;margin:0 0 10px}
.sub{color:#5b6470;margin:0 0 16px}
section{background:#fff;border:1px solid #e1e4e8;border-radius:8px;padding:16px 18px;margin:0 0 16px}
.verdict{display:flex;gap:24px;align-items:center;flex-wrap:wrap}
.badge{font-weight:700;font-size:20px;padding:6px 14px;border-radius:6px;color:#fff}
.fits .badge{background:#2e8540}.nofit .badge{background:#c0392b}.cpu .badge{background:#5b6470}
.kpi{display:flex;flex-direction:column}.kpi b{font-size:18px}.kpi span{font-size:12px}
.kpi small{color:#5b6470;font-size:11px;font-variant-numeric:tabular-nums}
svg{width:100%;height:auto;display:block}
svg.rankbar{width:220px;display:inline-block;vertical-align:middle}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eef0f2}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.sw{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:6px;vertical-align:-1px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px}
@media (max-width:760px){.grid{grid-template-columns:1fr}}
.notes li{color:#5b6470}
footer{color:#8a929c;font-size:12px;text-align:center}
)css";

std::string commas(uint64_t bytes) {
  return with_commas(static_cast<int64_t>(bytes));
}

std::string json_text(const ordered_json& v) {
  if (v.is_string())
    return v.get<std::string>();
  if (v.is_boolean())
    return v.get<bool>() ? "yes" : "no";
  if (v.is_number_integer())
    return with_commas(v.get<int64_t>());
  if (v.is_array()) {
    std::string s;
    for (const auto& x : v)
      s += (s.empty() ? "" : ", ") + json_text(x);
    return s.empty() ? "(default)" : s;
  }
  return v.dump();
}

/// One table row: label, GiB and exact bytes. `key` is the JSON path of the
/// value, written as data-key so tests (and people) can match it to the JSON.
void bytes_row(std::ostringstream& out, const std::string& label, const std::string& key,
               uint64_t bytes, std::string_view swatch = {}) {
  out << "<tr><td>";
  if (!swatch.empty())
    out << "<span class=\"sw\" style=\"background:" << swatch << "\"></span>";
  out << html_escape(label) << "</td><td class=\"n\">" << gib_text(bytes)
      << "</td><td class=\"n\" data-key=\"" << key << "\">" << commas(bytes) << "</td></tr>\n";
}

void ranks_section(std::ostringstream& out, const Estimate& e) {
  if (e.ranks.empty())
    return;
  out << "<section><h2>Per rank</h2><table><tr><th>role</th><th>ranks</th>"
         "<th class=\"n\">allocated</th><th class=\"n\">reserved</th><th class=\"n\">device</th>"
         "<th>peak in</th><th>fits</th><th>against the capacity</th></tr>\n";
  for (const RankEstimate& r : e.ranks) {
    std::string ranks;
    for (int k : r.ranks) {
      if (!ranks.empty())  // not `(cond ? "" : ",") + ...`: GCC 12 -O3 warns falsely (bug 105651)
        ranks += ',';
      ranks += std::to_string(k);
    }
    bool fits = e.capacity_bytes == 0 || r.peak.device_bytes <= e.capacity_bytes;
    out << "<tr><td>" << html_escape(r.role) << "</td><td>" << ranks << "</td><td class=\"n\">"
        << gib_text(r.peak.allocated_bytes) << "</td><td class=\"n\">"
        << gib_text(r.peak.reserved_bytes) << "</td><td class=\"n\">"
        << gib_text(r.peak.device_bytes) << "</td><td>" << phase_name(r.peak.phase)
        << (r.peak.layer >= 0 ? ", layer " + std::to_string(r.peak.layer) : "") << "</td><td>"
        << (fits ? "yes" : "<b>no</b>") << "</td><td>"
        << report::rank_bar_svg(r.peak, e.capacity_bytes) << "</td></tr>\n";
    for (const std::string& n : r.notes)
      out << "<tr><td></td><td colspan=\"7\" class=\"sub\">" << html_escape(n) << "</td></tr>\n";
  }
  out << "</table></section>\n";
}

}  // namespace

std::string estimate_html(const ModelSpec& model, const TrainingSetup& setup, const GpuSpec& gpu,
                          const Estimate& e) {
  const ordered_json j = ordered_json::parse(estimate_json(model, setup, gpu, e));
  const bool cuda = setup.device == Device::kCuda;
  const std::string gpu_name = j["gpu"]["name"].get<std::string>();
  std::ostringstream out;
  out << "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
      << "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
      << "<title>llmem: " << html_escape(model.name) << " on " << html_escape(gpu_name)
      << "</title>\n<style>" << kStyle << "</style>\n</head>\n<body>\n<main>\n";

  out << "<h1>" << html_escape(model.name) << "</h1>\n<p class=\"sub\">"
      << html_escape(model.family) << " · " << with_commas(e.params) << " parameters, "
      << with_commas(e.trainable_params) << " trainable · batch " << setup.batch << " × seq "
      << setup.seq << " · " << precision_name(setup.precision) << " · "
      << optimizer_name(setup.optimizer) << "</p>\n";

  // Verdict and headline numbers.
  out << "<section class=\"verdict "
      << (!cuda    ? "cpu"
          : e.fits ? "fits"
                   : "nofit")
      << "\" id=\"verdict\"><span class=\"badge\">"
      << (!cuda    ? "CPU"
          : e.fits ? "FITS"
                   : "DOES NOT FIT")
      << "</span>\n";
  auto kpi = [&](const std::string& label, const std::string& key, uint64_t bytes) {
    out << "<div class=\"kpi\"><b>" << gib_text(bytes) << "</b><span>" << label
        << "</span><small><span data-key=\"" << key << "\">" << commas(bytes)
        << "</span> B</small></div>\n";
  };
  if (cuda) {
    kpi("device peak (nvidia-smi)", "peak.device_bytes", e.peak.device_bytes);
    kpi(html_escape(gpu_name) + " capacity", "gpu.capacity_bytes", e.capacity_bytes);
    int64_t headroom = j["headroom_bytes"].get<int64_t>();
    out << "<div class=\"kpi\"><b>" << (headroom < 0 ? "−" : "")
        << gib_text(static_cast<uint64_t>(headroom < 0 ? -headroom : headroom))
        << "</b><span>headroom</span><small><span data-key=\"headroom_bytes\">"
        << with_commas(headroom) << "</span> B</small></div>\n";
  }
  kpi("allocated peak", "peak.allocated_bytes", e.peak.allocated_bytes);
  out << "</section>\n";

  // Breakdown.
  out << "<section><h2>At the peak (" << phase_name(e.peak.phase);
  if (e.peak.layer >= 0)
    out << ", layer " << e.peak.layer;
  out << ", step " << e.peak.step << ")</h2>\n" << report::breakdown_svg(e, gpu_name);
  out << "<table><tr><th>component</th><th class=\"n\">GiB</th><th class=\"n\">bytes</th></tr>\n";
  for (size_t c = 0; c < e.peak.components.size(); ++c) {
    auto comp = static_cast<Component>(c);
    std::string name(component_name(comp));
    bytes_row(out, name, "components." + name, e.peak.components[c], report::component_color(comp));
  }
  if (cuda) {
    bytes_row(out, "allocator cache (reserved − allocated)", "cached",
              e.peak.reserved_bytes - e.peak.allocated_bytes, report::kCachedColor);
    bytes_row(out, "CUDA context", "gpu.context_bytes", e.context_bytes, report::kContextColor);
    if (e.comm_bytes > 0)
      bytes_row(out, "NCCL buffers", "gpu.comm_bytes", e.comm_bytes, report::kCommColor);
  }
  out << "</table></section>\n";

  // Timeline.
  out << "<section><h2>Memory over the step</h2>\n"
      << report::timeline_svg(model, gpu, e, false) << "</section>\n";

  ranks_section(out, e);

  // Peaks and inputs side by side.
  out << "<div class=\"grid\"><section><h2>Peaks</h2><table>\n";
  bytes_row(out, "allocated", "peak.allocated_bytes", e.peak.allocated_bytes);
  if (cuda) {
    bytes_row(out, "reserved", "peak.reserved_bytes", e.peak.reserved_bytes);
    bytes_row(out, "device", "peak.device_bytes", e.peak.device_bytes);
  }
  bytes_row(out, "first step", "first_step_peak_bytes", e.first_step_peak);
  bytes_row(out, "steady step", "steady_step_peak_bytes", e.steady_step_peak);
  for (const auto& [phase, bytes] : j["phase_peaks"].items()) {
    bytes_row(out, phase + " (steady)", "phase_peaks." + phase, bytes.get<uint64_t>());
  }
  out << "</table></section>\n<section><h2>Inputs</h2><table>\n";
  auto input = [&](const std::string& k, const std::string& v) {
    out << "<tr><td>" << html_escape(k) << "</td><td>" << html_escape(v) << "</td></tr>\n";
  };
  input("model", model.name);
  input("family", model.family);
  input("gpu", gpu_name);
  for (const auto& [k, v] : j["setup"].items())
    input(k, json_text(v));
  out << "</table></section></div>\n";

  if (!e.notes.empty()) {
    out << "<section class=\"notes\"><h2>Notes</h2><ul>\n";
    for (const std::string& n : e.notes)
      out << "<li>" << html_escape(n) << "</li>\n";
    out << "</ul></section>\n";
  }
  out << "<footer>llmem · schema_version " << kSchemaVersion << " · " << e.events
      << " allocation events simulated</footer>\n</main>\n</body>\n</html>\n";
  return out.str();
}

}  // namespace llmem
