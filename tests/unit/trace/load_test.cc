// Copyright 2026 The llmem Authors.
// The load phase (issues 3 and 8): each quantization routine's temporaries
// against a hand count, and the load phase's place in the estimate.

#include "trace/load.h"

#include <cstdint>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "llmem/estimate.h"
#include "llmem/gpu.h"
#include "llmem/model.h"
#include "llmem/report.h"

#include "trace/events.h"
#include "trace/graph.h"
#include "trace/program.h"

namespace llmem {
namespace {

using trace::Event;
using trace::Graph;
using trace::Tid;

using test_util::peak_live;

int64_t live_at_end(const std::vector<Event>& events) {
  int64_t live = 0;
  for (const Event& e : events)
    live += e.alloc ? e.bytes : -e.bytes;
  return live;
}

TEST(Load, ChunkedToNf4PeaksAtOneChunksDifferences) {
  // n = 4 Mi elements, 1 Mi-element chunks; blocks b = n / 64, scaler blocks
  // s = b / 256. At the chunk's peak: scalers (2b), quantized_scalers (b),
  // the contiguous factor (2s), scaled_blocks (2n), quantized_blocks (n) and
  // the chunk's (value - nf4) and its .abs() (2 x 32 bytes per element).
  const int64_t n = int64_t{1} << 22;
  const int64_t c = int64_t{1} << 20;
  const int64_t b = n / 64;
  const int64_t s = b / 256;
  std::vector<Event> events;
  Graph g(&events);
  trace::Nf4Options o;
  o.chunk = c;
  const int64_t packed = n / 2 + b + s * 2;
  Tid out =
      trace::nf4_from_tensor(g, n, o, [&] { return g.buffer(packed, Component::kParameters); });
  EXPECT_EQ(peak_live(events), 3 * n + 3 * b + 2 * s + 64 * c);
  EXPECT_EQ(live_at_end(events), packed);  // only the NF4 tensor survives
  EXPECT_EQ(g.bytes(out), packed);
}

TEST(Load, UnchunkedToNf4HoldsSixtyFourBytesPerElement) {
  // torchao before PR #196: value - nf4 and .abs() for the whole tensor at once.
  const int64_t n = int64_t{1} << 22;
  const int64_t b = n / 64;
  const int64_t s = b / 256;
  std::vector<Event> events;
  Graph g(&events);
  trace::Nf4Options o;
  o.chunk = 0;
  trace::nf4_from_tensor(g, n, o, [&] { return g.buffer(n / 2, Component::kParameters); });
  EXPECT_EQ(peak_live(events), 66 * n + 3 * b + 2 * s);
  EXPECT_EQ(live_at_end(events), n / 2);
}

TEST(Load, Nf4OriginalWeightPeaksAtFourteenBytesPerElement) {
  // get_original_weight: two int64 index halves (8n), their bf16 lookups
  // (2n), the scaled halves (2n), one repeated-scaler copy at a time, then
  // the stacked bf16 result (2n) beside them: 14n + the scalers (2b).
  const int64_t n = int64_t{1} << 20;
  const int64_t b = n / 64;
  std::vector<Event> events;
  Graph g(&events);
  Tid w = trace::nf4_original_weight(g, n, trace::Nf4Options{});
  EXPECT_EQ(peak_live(events), 14 * n + 2 * b);
  EXPECT_EQ(live_at_end(events), 2 * n);
  EXPECT_EQ(g.bytes(w), 2 * n);
}

TEST(Load, BnbQuantize4bitKeepsOnlyTheOutput) {
  const int64_t n = int64_t{1} << 20;
  const int64_t blocks = n / 64;
  QuantSetup q;
  for (bool dq : {false, true}) {
    q.double_quant = dq;
    std::vector<Event> events;
    Graph g(&events);
    trace::bnb_quantize_4bit(g, n, q, [&] { return g.buffer(n / 2, Component::kParameters); });
    // fp32 absmax + packed output (+ the centred absmax copy with double quant).
    EXPECT_EQ(peak_live(events), n / 2 + (dq ? 8 : 4) * blocks);
    EXPECT_EQ(live_at_end(events), n / 2);
  }
}

TEST(Load, TorchtuneQloraLoadPeakOfATinyModelByHand) {
  // tiny-llama (hidden 128, intermediate 352, 2 layers, vocab 32000), torchtune
  // QLoRA on the CPU (exact sizes). Parameters after the build: bf16 embedding
  // and output (2 x 32000 x 128 x 2), bf16 norms (5 x 128 x 2), and per layer
  // four 128x128 NF4 weights (8192 packed + 256 block scalers + 4) and three
  // 352x128 ones (22528 + 704 + 3 x 4).
  const int64_t params = 2 * 32000 * 128 * 2 + 5 * 128 * 2 + 2 * (4 * 8452 + 3 * 23244);
  // The peak: load_state_dict of an MLP weight (n = 45056, b = 704 blocks,
  // 3 scaler blocks) with every parameter built: its bf16 copy on the GPU
  // (2n) and to_nf4's chunk peak (3n + 3b + 2s + 64n: the chunk is the whole
  // tensor).
  const int64_t n = 352 * 128;
  const int64_t expected = params + 2 * n + 3 * n + 3 * 704 + 2 * 3 + 64 * n;
  ModelSpec m = load_model(std::string(LLMEM_SOURCE_DIR) + "/validation/configs/tiny-llama.json");
  TrainingSetup s = test_util::cpu_run(Framework::kTorchtune, FinetuneMode::kQlora, 1, 16);
  Estimate e = estimate(m, s, find_gpu("A100-80GB"));
  EXPECT_EQ(static_cast<int64_t>(e.load_peak), expected);
  // Without quantization nothing is transient: the load phase ends at its peak.
  s.finetune = FinetuneMode::kLora;
  Estimate lora = estimate(m, s, find_gpu("A100-80GB"));
  EXPECT_EQ(static_cast<int64_t>(lora.load_peak),
            2 * 32000 * 128 * 2 + 5 * 128 * 2 + 2 * (4 * 128 * 128 + 3 * 352 * 128) * 2);
}

// torchao 0.1 and the nightlies before it (the torchtune rows of 2024-03/05):
// to_nf4 compares the whole weight with the 16 NF4 values at once (64 bytes
// per element of the largest weight, 11008 x 4096 for Llama-2-7B), and every
// NF4 weight keeps an n/32-byte quantization_factor into training.
TEST(Load, LegacyTorchaoQuantizesWholeWeightsAndKeepsTheFactor) {
  ModelSpec m = load_model("meta-llama/Llama-2-7b-hf");
  TrainingSetup s;
  apply_framework_defaults(Framework::kTorchtune, &s);
  s.finetune = FinetuneMode::kQlora;
  s.batch = 4;
  s.seq = 2048;  // the step, not the load, sets the peak
  const GpuSpec& gpu = find_gpu("A100-80GB");
  Estimate now = estimate(m, s, gpu);
  s.fw.nf4_legacy = true;
  Estimate then = estimate(m, s, gpu);
  const double largest = 11008.0 * 4096;
  EXPECT_GT(static_cast<double>(then.load_peak) - static_cast<double>(now.load_peak), 50 * largest);
  // Quantized per layer: q, k, v, o (4096^2) and gate, up, down (11008 x 4096).
  const double factor = 32.0 * (4.0 * 4096 * 4096 + 3.0 * 11008 * 4096) / 32;
  const auto params = static_cast<size_t>(Component::kParameters);
  ASSERT_NE(then.peak.phase, Phase::kLoad);
  // (within the allocator's rounding of each block)
  EXPECT_NEAR(static_cast<double>(then.peak.components[params] - now.peak.components[params]),
              factor, 0.01 * factor);
}

TEST(Load, PeakPhaseIsLoadWhenLoadingDominates) {
  // torchtune QLoRA of Llama-3.2-1B on a 32-token step: the state_dict hook
  // turns each NF4 weight back into bf16 on the GPU (14 bytes per element of
  // the 8192 x 2048 MLP weights at once), more than the step adds.
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  TrainingSetup s;
  apply_framework_defaults(Framework::kTorchtune, &s);
  s.finetune = FinetuneMode::kQlora;
  s.batch = 1;
  s.seq = 32;
  const GpuSpec& gpu = find_gpu("A100-80GB");
  Estimate e = estimate(m, s, gpu);
  EXPECT_EQ(e.peak.phase, Phase::kLoad);
  EXPECT_EQ(e.peak.allocated_bytes, e.load_peak);
  EXPECT_GT(e.load_peak, e.steady_step_peak);
  auto j = nlohmann::json::parse(estimate_json(m, s, gpu, e));
  EXPECT_EQ(j["peak"]["phase"], "load");
  // A long step wins again, and the load phase's cached blocks are part of
  // the reserved memory the step starts from.
  s.batch = 8;
  s.seq = 2048;
  Estimate big = estimate(m, s, gpu);
  EXPECT_NE(big.peak.phase, Phase::kLoad);
  EXPECT_LT(big.load_peak, big.peak.allocated_bytes);
}

TEST(Load, LitgptRequantizesOnLoadAndFreesTheBuildsData) {
  // Fabric's _Linear4bit quantizes in __init__ and again in its load hook;
  // _replace_param swaps the 4-bit data, so each quantized weight is
  // allocated twice in the load phase and freed once (lm_head included).
  ModelSpec m = load_model(std::string(LLMEM_SOURCE_DIR) + "/validation/configs/tiny-llama.json");
  TrainingSetup s = test_util::cpu_run(Framework::kLitgpt, FinetuneMode::kQlora, 1, 16);
  trace::TraceResult t = trace::build_trace(m, s);
  const int64_t n = 32000 * 128;
  const int64_t blocks = n / 64;
  ASSERT_FALSE(s.quant.double_quant);  // bnb.nf4: one fp32 absmax per block
  const int64_t head = n / 2 + blocks * 4;
  int allocs = 0;
  int frees = 0;
  for (const Event& e : t.events) {
    if (e.phase != Phase::kLoad || e.component != Component::kParameters || e.bytes != head)
      continue;
    EXPECT_EQ(e.step, 0);
    (e.alloc ? allocs : frees) += 1;
  }
  EXPECT_EQ(allocs, 2);
  EXPECT_EQ(frees, 1);
}

}  // namespace
}  // namespace llmem
