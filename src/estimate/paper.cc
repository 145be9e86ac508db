// Copyright 2026 The llmem Authors.
// The LLMem paper's estimator, equations (1)-(5), as written in the paper
// (shared/docs/llmem-paper.md §2.2). Kept literal so it can be compared.

#include <algorithm>

#include "llmem/estimate.h"

namespace llmem {
namespace {

constexpr uint64_t kCudaPage = 2ull << 20;  // cu_p: size_estimator.py base_size

uint64_t round_up(uint64_t x, uint64_t unit) {
  return (x + unit - 1) / unit * unit;
}

}  // namespace

PaperEstimate paper_estimate(const ModelSpec& model, const TrainingSetup& setup, const GpuSpec& gpu,
                             int64_t chunk_elems) {
  PaperEstimate p;
  uint64_t embed_p = 0;
  uint64_t lm_p = 0;
  uint64_t other_p = 0;
  uint64_t embedding_ops = 0;  // t = E
  uint64_t linear_ops = 0;     // t = L (weights and their biases)
  int64_t largest_other = 0;
  for (const TensorSpec& t : model.tensors) {
    auto n = static_cast<uint64_t>(t.numel);
    if (t.role == TensorRole::kLmHead && t.shape.size() == 2) {
      lm_p += n;
      if (t.tied_to.empty())
        linear_ops += n;
      continue;
    }
    if (!t.tied_to.empty())
      continue;
    if (t.role == TensorRole::kEmbedding && t.shape.size() == 2 &&
        t.name.find("embed") != std::string::npos && embed_p == 0) {
      embed_p = n;
      embedding_ops += n;
      continue;
    }
    other_p += n;
    if (t.role == TensorRole::kPositionEmbedding) {
      embedding_ops += n;
    } else if (t.role != TensorRole::kNorm) {
      linear_ops += n;
    }
    largest_other = std::max(largest_other, t.numel);
  }
  p.chunk_elems = chunk_elems > 0
                      ? chunk_elems
                      : static_cast<int64_t>(round_up(static_cast<uint64_t>(largest_other), 1024));
  auto cs = static_cast<uint64_t>(p.chunk_elems);
  auto bs = static_cast<uint64_t>(setup.batch);
  auto sl = static_cast<uint64_t>(setup.seq);
  auto on = static_cast<uint64_t>(model.hidden_size);
  auto dict = static_cast<uint64_t>(model.vocab_size);
  // B = 4 for the models whose code upcasts logits (CodeGen, GPT-Neo), as in dp_real.py.
  uint64_t b = model.family == "codegen" || model.family == "gpt_neo" ? 4 : 2;
  p.m_base = gpu.context_bytes;
  p.m_p = round_up((embed_p + round_up(other_p, cs)) * (2 + 4), kCudaPage);               // (2)
  p.m_os = round_up(embedding_ops * 8, kCudaPage) + round_up(linear_ops * 8, kCudaPage);  // (3)
  uint64_t e_n = 1;
  auto l_n = static_cast<uint64_t>(model.num_layers);
  p.m_out = round_up((e_n + l_n) * (bs * sl * on) * 2, kCudaPage);  // (4)
  p.m_lm = round_up(bs * sl * dict * b, kCudaPage) +
           2 * round_up(bs * (sl - 1) * dict * b, kCudaPage) + lm_p * 2;  // (5)
  p.peak = p.m_base + p.m_p + p.m_os + p.m_out + p.m_lm;                  // (1)
  return p;
}

}  // namespace llmem
