// Copyright 2026 The llmem Authors.
// Renderings of a plan: JSON (docs/cli.md contract) and a ranked table.

#include <cstdio>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "llmem/plan.h"

namespace llmem {
namespace {

constexpr double kGiB = 1073741824.0;

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

std::string duration(double s) {
  if (s >= 86400)
    return fixed(s / 86400, 1) + " d";
  if (s >= 3600)
    return fixed(s / 3600, 1) + " h";
  if (s >= 60)
    return fixed(s / 60, 1) + " min";
  return fixed(s, 2) + " s";
}

nlohmann::json candidate_json(const PlanCandidate& c) {
  nlohmann::json j;
  j["method"] = std::string(method_name(c.method));
  j["dp"] = c.dp;
  j["tp"] = c.tp;
  j["pp"] = c.pp;
  j["virtual_stages"] = c.vp;
  j["sequence_parallel"] = c.sequence_parallel;
  j["liger"] = c.liger;
  j["micro_batch"] = c.micro_batch;
  j["peak_bytes"] = c.peak_bytes;
  j["tokens_per_s"] = c.time.tokens_per_s;
  j["max_micro_batch"] = c.max_micro_batch;
  j["rejected_reason"] = c.fits ? nlohmann::json(nullptr) : nlohmann::json(c.rejected_reason);
  j["label"] = candidate_label(c);
  j["checkpointing"] = c.checkpointing != CheckpointMode::kOff;
  j["finetune"] = std::string(finetune_name(c.finetune));
  j["offload"] = std::string(offload_name(c.offload));
  j["grad_accum"] = c.grad_accum;
  j["headroom_bytes"] = c.headroom_bytes;
  if (!c.role.empty())
    j["worst_rank"] = c.role;
  j["estimates"] = c.estimates;
  if (c.fits) {
    const StepTime& t = c.time;
    j["step_time"] = {{"step_s", t.step_s},
                      {"compute_s", t.compute_s},
                      {"memory_s", t.memory_s},
                      {"bubble_s", t.bubble_s},
                      {"tp_comm_s", t.tp_comm_s},
                      {"dp_comm_s", t.dp_comm_s},
                      {"pp_comm_s", t.pp_comm_s},
                      {"optimizer_s", t.optimizer_s},
                      {"offload_s", t.offload_s},
                      {"dequant_s", t.dequant_s},
                      {"tokens_per_step", t.tokens_per_step},
                      {"flops_per_token", t.flops_per_token}};
  }
  return j;
}

nlohmann::json paper_json_of(const PaperPlan& p) {
  nlohmann::json j;
  j["methods"] = nlohmann::json::array();
  for (const PaperChoice& c : p.methods) {
    j["methods"].push_back({{"name", c.name},
                            {"dp", c.dp},
                            {"tp", c.tp},
                            {"max_batch", c.max_batch},
                            {"peak_bytes", c.peak_bytes},
                            {"score", c.score}});
  }
  j["choice"] = p.choice >= 0 ? nlohmann::json(p.methods[static_cast<size_t>(p.choice)].name)
                              : nlohmann::json("cpu offloading");
  return j;
}

}  // namespace

std::string plan_json(const ModelSpec& model, const PlanRequest& request, const GpuSpec& gpu,
                      const Plan& p, const PaperPlan* paper, int top) {
  nlohmann::json j;
  j["schema_version"] = 1;
  j["model"] = {{"name", model.name}, {"family", model.family}, {"params", model.params()}};
  j["gpu"] = {{"name", gpu.name}, {"capacity_bytes", gpu.capacity_bytes}};
  j["gpus"] = request.gpus;
  j["nodes"] = request.nodes;
  j["seq"] = request.seq;
  j["framework"] = request.colossalai ? "colossalai" : framework_name(request.base.framework);
  j["precision"] = precision_name(request.base.precision);
  j["global_batch"] = request.global_batch;
  j["margin_pct"] = request.margin * 100;
  j["budget_bytes"] = p.budget_bytes;
  j["choice"] = p.choice >= 0 ? candidate_json(p.candidates[static_cast<size_t>(p.choice)])
                              : nlohmann::json(nullptr);
  j["candidates"] = nlohmann::json::array();
  int shown = 0;
  for (const PlanCandidate& c : p.candidates) {
    if (c.fits && top > 0 && shown++ >= top)
      continue;
    j["candidates"].push_back(candidate_json(c));
  }
  j["configurations"] = p.configurations;
  j["estimates"] = p.estimates;
  j["memo_hits"] = p.memo_hits;
  if (request.dataset_tokens > 0 && p.choice >= 0) {
    j["dataset_tokens"] = request.dataset_tokens;
    j["epoch_s"] = p.epoch_s;
  }
  if (p.max_seq >= 0)
    j["max_seq"] = p.max_seq;
  if (p.min_gpus >= 0)
    j["min_gpus"] = p.min_gpus;
  j["notes"] = p.notes;
  if (paper != nullptr)
    j["paper"] = paper_json_of(*paper);
  return j.dump(2) + "\n";
}

std::string plan_table(const ModelSpec& model, const PlanRequest& request, const GpuSpec& gpu,
                       const Plan& p, const PaperPlan* paper, int top) {
  std::ostringstream o;
  if (p.max_seq >= 0) {
    o << "longest sequence that fits: "
      << (p.max_seq > 0 ? std::to_string(p.max_seq) : std::string("none")) << "\n";
  }
  if (p.min_gpus >= 0) {
    o << "fewest GPUs that fit: "
      << (p.min_gpus > 0 ? std::to_string(p.min_gpus) : std::string("none up to --gpus")) << "\n";
  }
  o << "model " << model.name << " on " << request.gpus << "x " << gpu.name << " ("
    << fixed(static_cast<double>(gpu.capacity_bytes) / kGiB, 2) << " GiB, budget "
    << fixed(static_cast<double>(p.budget_bytes) / kGiB, 2) << " GiB with "
    << fixed(request.margin * 100, 0) << "% margin), seq " << request.seq;
  if (request.base.framework != Framework::kHf)
    o << ", " << framework_name(request.base.framework) << " "
      << precision_name(request.base.precision);
  if (request.global_batch > 0)
    o << ", global batch " << request.global_batch;
  o << "\n";
  o << p.configurations << " configurations, " << p.estimates << " exact estimates";
  if (p.memo_hits > 0)
    o << ", " << p.memo_hits << " memoized";
  o << "\n\n";
  if (p.choice < 0) {
    o << "nothing fits\n";
  } else {
    const PlanCandidate& c = p.candidates[static_cast<size_t>(p.choice)];
    o << "choice: " << candidate_label(c) << ", micro-batch " << c.micro_batch;
    if (c.grad_accum > 1)
      o << " x " << c.grad_accum << " accumulated";
    o << ", " << fixed(c.time.tokens_per_s, 0) << " tokens/s per GPU";
    if (p.epoch_s > 0)
      o << ", " << duration(p.epoch_s) << " per epoch";
    o << "\n\n";
    char line[256];
    std::snprintf(line, sizeof(line), "%-4s %-44s %6s %6s %10s %10s %12s %10s\n", "#",
                  "configuration", "micro", "max", "peak GiB", "free GiB", "tokens/s/GPU", "step");
    o << line;
    int shown = 0;
    for (const PlanCandidate& f : p.candidates) {
      if (!f.fits)
        continue;
      if (top > 0 && shown >= top)
        break;
      ++shown;
      std::snprintf(line, sizeof(line), "%-4d %-44s %6lld %6lld %10s %10s %12s %10s\n", shown,
                    candidate_label(f).c_str(), static_cast<long long>(f.micro_batch),
                    static_cast<long long>(f.max_micro_batch),
                    fixed(static_cast<double>(f.peak_bytes) / kGiB, 2).c_str(),
                    fixed(static_cast<double>(f.headroom_bytes) / kGiB, 2).c_str(),
                    fixed(f.time.tokens_per_s, 0).c_str(), duration(f.time.step_s).c_str());
      o << line;
    }
  }
  size_t rejected = 0;
  for (const PlanCandidate& f : p.candidates)
    rejected += f.fits ? 0 : 1;
  if (rejected > 0) {
    o << "\nrejected (" << rejected << "):\n";
    int shown = 0;
    for (const PlanCandidate& f : p.candidates) {
      if (f.fits)
        continue;
      if (top > 0 && shown >= top) {
        o << "  ... (--format json lists all)\n";
        break;
      }
      ++shown;
      o << "  " << candidate_label(f) << ": " << f.rejected_reason << "\n";
    }
  }
  for (const std::string& n : p.notes)
    o << "note: " << n << "\n";
  if (paper != nullptr) {
    o << "\nLLMem paper, Algorithm 1 (equations 6-10):\n";
    for (const PaperChoice& c : paper->methods) {
      o << "  " << c.name << ": ";
      if (c.max_batch == 0) {
        o << "OOM (" << fixed(static_cast<double>(c.peak_bytes) / kGiB, 2) << " GiB at batch 1)";
      } else {
        o << "batch " << c.max_batch << ", peak "
          << fixed(static_cast<double>(c.peak_bytes) / kGiB, 2) << " GiB, score "
          << fixed(c.score, 1);
      }
      o << "\n";
    }
    o << "  choice: "
      << (paper->choice >= 0 ? paper->methods[static_cast<size_t>(paper->choice)].name
                             : std::string("CPU offloading"))
      << "\n";
  }
  return o.str();
}

}  // namespace llmem
