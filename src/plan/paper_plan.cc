// Copyright 2026 The llmem Authors.
// The LLMem paper's distributed equations (6)-(10) and its Algorithm 1
// (shared/docs/llmem-paper.md §2.3 and §3), on top of the single-GPU terms of
// src/estimate/paper.cc.

#include <string>

#include "llmem/plan.h"

namespace llmem {
namespace {

constexpr uint64_t kCudaPage = 2ull << 20;  // cu_p

uint64_t round_up(uint64_t x, uint64_t unit) {
  return (x + unit - 1) / unit * unit;
}

}  // namespace

uint64_t paper_peak(const ModelSpec& model, PaperMethod method, int dp, int tp, int64_t batch,
                    int64_t seq, const GpuSpec& gpu, bool literal) {
  TrainingSetup setup;
  setup.batch = batch;
  setup.seq = seq;
  PaperEstimate p = paper_estimate(model, setup, gpu);
  const uint64_t gpu_n = static_cast<uint64_t>(dp) * static_cast<uint64_t>(tp);
  // (2) rounds (fp16 + fp32) together; the fp16 share is a third of it.
  const uint64_t m_p16 = p.m_p / 3;
  const uint64_t m_p32 = p.m_p - m_p16;
  auto tp_n = static_cast<uint64_t>(tp);
  // (9): the TP backward all-gather buffer, (tp - 1) / tp of one [bs, sl, h] fp16 per layer.
  uint64_t m_back =
      round_up(static_cast<uint64_t>(model.num_layers) *
                   static_cast<uint64_t>(batch * seq * model.hidden_size) * (tp_n - 1) / tp_n * 2,
               kCudaPage);
  switch (method) {
    case PaperMethod::kCdp:  // (6)
      return p.peak;
    case PaperMethod::kAdp:  // (7)
      return p.m_base + m_p16 + (m_p32 + p.m_os) / gpu_n + p.m_out + p.m_lm;
    case PaperMethod::kTp:  // (8)
      return p.m_base + (p.m_p + p.m_os) / gpu_n + p.m_out + p.m_lm + m_back;
    case PaperMethod::kDpTp: {  // (10)
      uint64_t adp = p.m_base + m_p16 + (m_p32 + p.m_os) / gpu_n + p.m_out + p.m_lm;
      if (literal)
        return adp - m_p16 * tp_n / gpu_n + m_back;
      // Each GPU gathers its TP shard of the fp16 chunks from the other dp
      // replicas: m_p,16 / tp (equal to the literal form only for 4 GPUs, tp 2).
      return adp - m_p16 + m_p16 / tp_n + m_back;
    }
  }
  return 0;
}

PaperPlan paper_plan(const ModelSpec& model, int gpus, int64_t seq, const GpuSpec& gpu,
                     bool literal) {
  PaperPlan plan;
  auto add = [&](PaperMethod m, int dp, int tp, std::string name, double weight) {
    PaperChoice c;
    c.method = m;
    c.dp = dp;
    c.tp = tp;
    c.name = std::move(name);
    const uint64_t total = gpu.capacity_bytes;
    int64_t bs = 1;
    uint64_t last = 0;
    for (; bs <= 4096; ++bs) {
      uint64_t peak = paper_peak(model, m, dp, tp, bs, seq, gpu, literal);
      if (peak > total) {
        if (bs == 1)
          last = peak;
        break;
      }
      last = peak;
    }
    c.max_batch = bs - 1;
    c.peak_bytes = last;
    c.score = static_cast<double>(c.max_batch) * weight;
    plan.methods.push_back(c);
  };
  const auto n = static_cast<double>(gpus);
  add(PaperMethod::kCdp, gpus, 1, "CDP", n * 1.5);
  if (gpus > 1) {
    add(PaperMethod::kAdp, gpus, 1, std::to_string(gpus) + "DP", n);
    add(PaperMethod::kTp, 1, gpus, std::to_string(gpus) + "TP", 1);
    for (int tp = 2; tp < gpus; ++tp) {
      if (gpus % tp != 0)
        continue;
      int dp = gpus / tp;
      add(PaperMethod::kDpTp, dp, tp, std::to_string(dp) + "DP+" + std::to_string(tp) + "TP",
          static_cast<double>(dp));
    }
  }
  double best = 0;
  for (size_t i = 0; i < plan.methods.size(); ++i) {
    if (plan.methods[i].score > best) {  // ties keep the earlier: CDP > ADP > TP > DP+TP
      best = plan.methods[i].score;
      plan.choice = static_cast<int>(i);
    }
  }
  return plan;
}

}  // namespace llmem
