// Copyright 2026 The llmem Authors.

#include <cstdio>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "llmem/report.h"

#include "report/charts.h"

namespace llmem {
namespace {

using nlohmann::ordered_json;

std::string gib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f GiB", static_cast<double>(bytes) / 1073741824.0);
  return buf;
}

std::string setup_line(const TrainingSetup& s) {
  std::ostringstream out;
  out << "batch " << s.batch << " × seq " << s.seq;
  if (s.grad_accum > 1)
    out << " × accum " << s.grad_accum;
  out << ", " << precision_name(s.precision) << ", " << optimizer_name(s.optimizer) << ", "
      << attention_name(s.attention);
  if (s.checkpointing != CheckpointMode::kOff)
    out << ", grad-ckpt";
  if (s.finetune == FinetuneMode::kLora)
    out << ", LoRA r=" << s.lora.rank;
  if (s.device == Device::kCpu)
    out << ", cpu";
  return out.str();
}

}  // namespace

namespace {
ordered_json components_json(const PeakInfo& peak) {
  ordered_json components;
  for (size_t c = 0; c < peak.components.size(); ++c)
    components[std::string(component_name(static_cast<Component>(c)))] = peak.components[c];
  return components;
}
}  // namespace

std::string estimate_json(const ModelSpec& model, const TrainingSetup& setup, const GpuSpec& gpu,
                          const Estimate& e) {
  ordered_json j;
  j["schema_version"] = kSchemaVersion;
  j["model"] = {{"name", model.name},
                {"family", model.family},
                {"params", e.params},
                {"trainable_params", e.trainable_params}};
  ordered_json s;
  s["device"] = setup.device == Device::kCuda ? "cuda" : "cpu";
  s["batch"] = setup.batch;
  s["seq"] = setup.seq;
  s["grad_accum"] = setup.grad_accum;
  s["precision"] = precision_name(setup.precision);
  s["optimizer"] = optimizer_name(setup.optimizer);
  s["attention"] = attention_name(setup.attention);
  s["grad_ckpt"] = setup.checkpointing != CheckpointMode::kOff;
  s["finetune"] = setup.finetune == FinetuneMode::kFull   ? "full"
                  : setup.finetune == FinetuneMode::kLora ? "lora"
                                                          : "qlora";
  if (setup.finetune != FinetuneMode::kFull) {
    s["lora_rank"] = setup.lora.rank;
    s["lora_targets"] = setup.lora.targets;
  }
  const ParallelSetup& par = setup.parallel;
  if (par.method != Method::kSingle) {
    s["method"] = method_name(par.method);
    s["dp"] = par.dp;
    s["tp"] = par.tp;
    s["pp"] = par.pp;
    if (par.schedule == PipelineSchedule::kInterleaved) {
      s["schedule"] = "interleaved";
      s["virtual_stages"] = par.virtual_stages;
    }
  }
  j["setup"] = s;
  j["gpu"] = {{"name", setup.device == Device::kCuda ? gpu.name : "cpu"},
              {"capacity_bytes", e.capacity_bytes},
              {"context_bytes", e.context_bytes},
              {"workspace_bytes", e.workspace_bytes},
              {"comm_bytes", e.comm_bytes}};
  j["peak"] = {{"allocated_bytes", e.peak.allocated_bytes},
               {"reserved_bytes", e.peak.reserved_bytes},
               {"device_bytes", e.peak.device_bytes},
               {"phase", phase_name(e.peak.phase)},
               {"layer", e.peak.layer},
               {"step", e.peak.step}};
  j["components"] = components_json(e.peak);
  if (!e.ranks.empty()) {
    ordered_json ranks = ordered_json::array();
    for (const RankEstimate& r : e.ranks) {
      ranks.push_back({{"role", r.role},
                       {"ranks", r.ranks},
                       {"allocated_bytes", r.peak.allocated_bytes},
                       {"reserved_bytes", r.peak.reserved_bytes},
                       {"device_bytes", r.peak.device_bytes},
                       {"phase", phase_name(r.peak.phase)},
                       {"components", components_json(r.peak)}});
    }
    j["ranks"] = ranks;
  }
  ordered_json phases;
  for (size_t p = 1; p < e.phase_peaks.size(); ++p) {
    phases[std::string(phase_name(static_cast<Phase>(p)))] = e.phase_peaks[p];
  }
  j["phase_peaks"] = phases;
  j["first_step_peak_bytes"] = e.first_step_peak;
  j["steady_step_peak_bytes"] = e.steady_step_peak;
  j["fits"] = e.fits;
  if (setup.device == Device::kCuda) {
    j["headroom_bytes"] =
        static_cast<int64_t>(e.capacity_bytes) - static_cast<int64_t>(e.peak.device_bytes);
  }
  j["events"] = e.events;
  if (!e.attention_kernel.empty())
    j["attention_kernel"] = e.attention_kernel;
  j["notes"] = e.notes;
  return j.dump(2) + "\n";
}

namespace {
// "0-7" for a contiguous run, else "0,2,4".
std::string rank_list(const std::vector<int>& ranks) {
  if (ranks.empty())
    return "";
  bool run = true;
  for (size_t i = 1; i < ranks.size(); ++i)
    run = run && ranks[i] == ranks[i - 1] + 1;
  if (run && ranks.size() > 1)
    return std::to_string(ranks.front()) + "-" + std::to_string(ranks.back());
  std::string out;
  for (int r : ranks) {
    if (!out.empty())  // not `(cond ? "" : ",") + ...`: GCC 12 -O3 warns falsely (bug 105651)
      out += ',';
    out += std::to_string(r);
  }
  return out;
}
}  // namespace

std::string estimate_table(const ModelSpec& model, const TrainingSetup& setup, const GpuSpec& gpu,
                           const Estimate& e) {
  std::ostringstream out;
  out << model.name << " (" << with_commas(e.params) << " params, "
      << with_commas(e.trainable_params) << " trainable"
      << (e.ranks.empty() ? "" : " on the worst rank") << ")\n";
  out << "  " << setup_line(setup) << "\n";
  bool cuda = setup.device == Device::kCuda;
  if (cuda) {
    out << "  on " << gpu.name << " (" << gib(e.capacity_bytes)
        << "): " << (e.fits ? "FITS" : "DOES NOT FIT");
    int64_t headroom =
        static_cast<int64_t>(e.capacity_bytes) - static_cast<int64_t>(e.peak.device_bytes);
    out << ", headroom " << (headroom < 0 ? "-" : "")
        << gib(static_cast<uint64_t>(headroom < 0 ? -headroom : headroom)) << "\n";
  }
  out << "\n  peak allocated  " << gib(e.peak.allocated_bytes) << "  ("
      << with_commas(static_cast<int64_t>(e.peak.allocated_bytes)) << " bytes) in "
      << phase_name(e.peak.phase);
  if (e.peak.layer >= 0)
    out << ", layer " << e.peak.layer;
  out << ", step " << e.peak.step << "\n";
  if (cuda) {
    out << "  peak reserved   " << gib(e.peak.reserved_bytes) << "\n";
    out << "  device (smi)    " << gib(e.peak.device_bytes) << "  (reserved + CUDA context "
        << gib(e.context_bytes);
    if (e.comm_bytes > 0)
      out << " + NCCL " << gib(e.comm_bytes);
    out << ")\n";
  }
  out << "\n  at the peak:\n";
  for (size_t c = 0; c < e.peak.components.size(); ++c) {
    if (e.peak.components[c] == 0)
      continue;
    char line[96];
    std::snprintf(line, sizeof(line), "    %-18s %12s\n",
                  std::string(component_name(static_cast<Component>(c))).c_str(),
                  gib(e.peak.components[c]).c_str());
    out << line;
  }
  if (!e.ranks.empty()) {
    out << "\n  per rank (" << method_name(setup.parallel.method) << ", dp " << setup.parallel.dp
        << " tp " << setup.parallel.tp << " pp " << setup.parallel.pp
        << (setup.parallel.schedule == PipelineSchedule::kInterleaved
                ? " interleaved V " + std::to_string(setup.parallel.virtual_stages)
                : std::string())
        << "):\n";
    for (const RankEstimate& r : e.ranks) {
      char line[160];
      std::snprintf(line, sizeof(line), "    %-28s ranks %-8s allocated %10s  %s %10s\n",
                    r.role.c_str(), rank_list(r.ranks).c_str(), gib(r.peak.allocated_bytes).c_str(),
                    cuda ? "device" : "", cuda ? gib(r.peak.device_bytes).c_str() : "");
      out << line;
    }
  }
  out << "\n  phase peaks (steady state):";
  for (size_t p = 1; p < e.phase_peaks.size(); ++p) {
    out << " " << phase_name(static_cast<Phase>(p)) << " " << gib(e.phase_peaks[p]) << ";";
  }
  out << "\n";
  if (!e.attention_kernel.empty())
    out << "  attention: " << e.attention_kernel << "\n";
  for (const std::string& n : e.notes)
    out << "  note: " << n << "\n";
  return out.str();
}

std::string estimate_csv(const Estimate& e) {
  std::ostringstream out;
  out << "event,step,phase,layer,allocated_bytes,reserved_bytes\n";
  for (const TimelinePoint& p : e.timeline) {
    out << p.event << "," << static_cast<int>(p.step) << "," << phase_name(p.phase) << ","
        << p.layer << "," << p.allocated << "," << p.reserved << "\n";
  }
  return out.str();
}

std::string estimate_svg(const ModelSpec& model, const GpuSpec& gpu, const Estimate& e) {
  return report::timeline_svg(model, gpu, e, true);
}

std::string report::timeline_svg(const ModelSpec& model, const GpuSpec& gpu, const Estimate& e,
                                 bool standalone) {
  const double width = 960, height = 420, left = 70, right = 20, top = 40, bottom = 50;
  double plot_w = width - left - right;
  double plot_h = height - top - bottom;
  uint64_t ymax = std::max<uint64_t>(e.peak.reserved_bytes, 1);
  if (e.capacity_bytes > 0)
    ymax = std::max(ymax, e.capacity_bytes);
  double xmax = e.timeline.empty() ? 1.0 : static_cast<double>(e.timeline.back().event + 1);
  auto x = [&](double ev) { return left + plot_w * ev / xmax; };
  auto y = [&](uint64_t b) {
    return top + plot_h * (1.0 - static_cast<double>(b) / static_cast<double>(ymax));
  };
  std::ostringstream out;
  if (standalone) {
    out << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
        << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
    out << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  } else {
    out << "<svg class=\"timeline\" viewBox=\"0 0 " << width << " " << height
        << "\" role=\"img\" font-family=\"sans-serif\" font-size=\"12\">\n";
  }
  out << "<text x=\"" << left << "\" y=\"22\" font-size=\"15\">" << html_escape(model.name)
      << ": memory over one training step (peak " << gib(e.peak.allocated_bytes)
      << " allocated)</text>\n";
  // Phase bands.
  const char* colors[] = {"#eeeeee", "#dbe9f6", "#fde2c8", "#e2f0d9", "#efe0f5", "#f3ecd2"};
  size_t start = 0;
  for (size_t i = 1; i <= e.timeline.size(); ++i) {
    if (i < e.timeline.size() && e.timeline[i].phase == e.timeline[start].phase &&
        e.timeline[i].step == e.timeline[start].step) {
      continue;
    }
    double x0 = x(e.timeline[start].event);
    double x1 = i < e.timeline.size() ? x(e.timeline[i].event) : left + plot_w;
    auto ph = static_cast<size_t>(e.timeline[start].phase);
    out << "<rect x=\"" << x0 << "\" y=\"" << top << "\" width=\"" << std::max(0.0, x1 - x0)
        << "\" height=\"" << plot_h << "\" fill=\"" << colors[ph % 6] << "\"/>\n";
    std::string_view label = phase_name(e.timeline[start].phase);
    if (x1 - x0 > 7.0 * static_cast<double>(label.size()) + 8) {
      out << "<text x=\"" << x0 + 3 << "\" y=\"" << top + 14 << "\" fill=\"#555\">" << label
          << "</text>\n";
    }
    start = i;
  }
  auto polyline = [&](bool reserved, const char* color) {
    out << "<polyline fill=\"none\" stroke=\"" << color << "\" stroke-width=\"1.5\" points=\"";
    for (const TimelinePoint& p : e.timeline) {
      out << x(p.event) << "," << y(reserved ? p.reserved : p.allocated) << " ";
    }
    out << "\"/>\n";
  };
  polyline(true, "#d62728");
  polyline(false, "#1f77b4");
  if (e.capacity_bytes > 0) {
    out << "<line x1=\"" << left << "\" x2=\"" << left + plot_w << "\" y1=\"" << y(e.capacity_bytes)
        << "\" y2=\"" << y(e.capacity_bytes) << "\" stroke=\"black\" stroke-dasharray=\"6,4\"/>\n";
    out << "<text x=\"" << left + 4 << "\" y=\"" << y(e.capacity_bytes) - 4 << "\">"
        << html_escape(gpu.name) << " capacity " << gib(e.capacity_bytes) << "</text>\n";
  }
  for (int t = 0; t <= 4; ++t) {
    uint64_t b = ymax / 4 * static_cast<uint64_t>(t);
    out << "<text x=\"4\" y=\"" << y(b) + 4 << "\">" << gib(b) << "</text>\n";
  }
  out << "<text x=\"" << left << "\" y=\"" << height - 15
      << "\"><tspan fill=\"#1f77b4\">— allocated</tspan>   <tspan fill=\"#d62728\">— "
         "reserved</tspan>   (x: allocation events; bands: load, then the phases of step 1 and "
         "step 2)</text>\n";
  out << "</svg>\n";
  return out.str();
}

}  // namespace llmem

namespace llmem {

std::string paper_table(const ModelSpec& model, const TrainingSetup& setup, const GpuSpec& gpu,
                        const PaperEstimate& p, const Estimate* e) {
  std::ostringstream out;
  out << model.name << " — LLMem paper equations (1)-(5) (ColossalAI Gemini, fp16 chunks, "
      << "checkpointing on)\n  " << setup_line(setup) << ", chunk " << with_commas(p.chunk_elems)
      << " elements, on " << gpu.name << "\n\n";
  auto row = [&](const char* name, uint64_t bytes, const char* what) {
    char line[160];
    std::snprintf(line, sizeof(line), "  %-7s %12s  %s\n", name, gib(bytes).c_str(), what);
    out << line;
  };
  row("m_base", p.m_base, "CUDA context (the paper measures it)");
  row("m_p", p.m_p, "(2) fp16 + fp32 parameter chunks");
  row("m_os", p.m_os, "(3) Adam states of Embedding and Linear");
  row("m_out", p.m_out, "(4) kept layer outputs");
  row("m_lm", p.m_lm, "(5) logits, shifted copy, loss temporary, lm_head");
  row("peak", p.peak, "(1) sum: the paper's device peak");
  if (e != nullptr) {
    out << "\n  llmem (hf profile simulation): device " << gib(e->peak.device_bytes)
        << ", allocated " << gib(e->peak.allocated_bytes) << "\n";
    double diff = 100.0 *
                  (static_cast<double>(p.peak) - static_cast<double>(e->peak.device_bytes)) /
                  static_cast<double>(std::max<uint64_t>(e->peak.device_bytes, 1));
    char line[64];
    std::snprintf(line, sizeof(line), "  paper vs llmem: %+.1f %%.", diff);
    out << line
        << " The paper assumes Gemini's fp16 weights with fp32 masters and checkpointing\n"
           "  regardless of the options above; llmem follows the options and simulates each op "
           "and the allocator.\n";
  }
  return out.str();
}

std::string paper_json(const PaperEstimate& p, const Estimate* e) {
  nlohmann::ordered_json j;
  j["schema_version"] = kSchemaVersion;
  j["paper"] = {{"m_base", p.m_base},
                {"m_p", p.m_p},
                {"m_os", p.m_os},
                {"m_out", p.m_out},
                {"m_lm", p.m_lm},
                {"peak_bytes", p.peak},
                {"chunk_elems", p.chunk_elems}};
  if (e != nullptr) {
    j["llmem"] = {{"allocated_bytes", e->peak.allocated_bytes},
                  {"reserved_bytes", e->peak.reserved_bytes},
                  {"device_bytes", e->peak.device_bytes}};
  }
  return j.dump(2) + "\n";
}

}  // namespace llmem
