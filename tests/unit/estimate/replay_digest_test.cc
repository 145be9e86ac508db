// Copyright 2026 The llmem Authors.
// Guard for speed work on the trace and the allocator replay: every field of
// many estimates (families, batch/seq, checkpointing, LoRA/QLoRA, distributed
// methods, allocator options, CPU device, peak_only), the timeline as a hash,
// must stay what tests/golden/replay_digest.txt holds. A change that is meant
// to move estimates regenerates it with LLMEM_UPDATE_GOLDEN=1 (and says why);
// a change meant to be faster only must leave it untouched.

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "llmem/error.h"
#include "llmem/estimate.h"
#include "llmem/gpu.h"
#include "llmem/model.h"

namespace llmem {
namespace {

// FNV-1a over 64-bit words.
struct Fnv {
  uint64_t h = 14695981039346656037ull;
  void add(uint64_t v) {
    for (int k = 0; k < 8; ++k) {
      h ^= (v >> (8 * k)) & 0xff;
      h *= 1099511628211ull;
    }
  }
};

void put_peak(std::ostringstream& o, const PeakInfo& p) {
  o << " a=" << p.allocated_bytes << " r=" << p.reserved_bytes << " d=" << p.device_bytes
    << " ph=" << static_cast<int>(p.phase) << " L=" << p.layer << " s=" << p.step << " c=";
  for (uint64_t c : p.components)
    o << c << ',';
}

std::string digest(const Estimate& e) {
  std::ostringstream o;
  put_peak(o, e.peak);
  o << " first=" << e.first_step_peak << " steady=" << e.steady_step_peak << " load=" << e.load_peak
    << " phases=";
  for (uint64_t p : e.phase_peaks)
    o << p << ',';
  o << " comm=" << e.comm_bytes << " fits=" << e.fits << " params=" << e.params
    << " trainable=" << e.trainable_params << " events=" << e.events;
  for (const RankEstimate& r : e.ranks) {
    o << "\n  rank " << r.role << ':';
    for (int k : r.ranks)
      o << k << ',';
    put_peak(o, r.peak);
  }
  Fnv f;
  for (const TimelinePoint& t : e.timeline) {
    f.add(t.event);
    f.add(t.step);
    f.add(static_cast<uint64_t>(t.phase));
    f.add(static_cast<uint64_t>(static_cast<int64_t>(t.layer)));
    f.add(t.allocated);
    f.add(t.reserved);
  }
  o << "\n  timeline " << e.timeline.size() << " points, hash " << f.h;
  return o.str();
}

// Variant v of a setup: the knobs cycle with different periods so that
// combinations vary from one variant to the next.
TrainingSetup variant(int v) {
  TrainingSetup s;
  s.batch = 1 + v % 3;
  s.seq = v % 4 == 0 ? 256 : (v % 4 == 1 ? 1024 : (v % 4 == 2 ? 2048 : 513));
  s.attention = v % 5 == 0 ? AttentionImpl::kEager : AttentionImpl::kSdpa;
  s.peak_only = v % 7 == 3;
  if (v % 3 == 1)
    s.checkpointing = CheckpointMode::kReentrant;
  if (v % 6 == 2)
    s.checkpointing = CheckpointMode::kNonReentrant;
  if (v % 4 == 1)
    s.finetune = FinetuneMode::kLora;
  if (v % 8 == 6)
    s.finetune = FinetuneMode::kQlora;
  if (v % 5 == 2)
    s.allocator.expandable_segments = true;
  if (v % 9 == 4)
    s.allocator.max_split_size = 64ull << 20;
  if (v % 11 == 5)
    s.allocator.roundup_power2_divisions = 4;
  if (v % 10 == 7)
    s.device = Device::kCpu;
  if (v % 13 == 9)
    s.grad_accum = 3;
  switch (v % 10) {
    case 1:
      s.parallel.method = Method::kDdp;
      s.parallel.dp = 4;
      break;
    case 3:
      s.parallel.method = Method::kZero2;
      s.parallel.dp = 8;
      break;
    case 4:
      s.parallel.method = Method::kZero3;
      s.parallel.dp = 8;
      break;
    case 5:
      s.parallel.method = Method::kFsdp;
      s.parallel.dp = 4;
      break;
    case 8:
      s.parallel.method = Method::kMegatron;
      s.parallel.tp = 2;
      s.parallel.pp = 2;
      s.grad_accum = 4;
      break;
    case 9:
      s.parallel.method = Method::kZero1;
      s.parallel.dp = 2;
      s.parallel.pp = 4;
      s.grad_accum = 8;
      break;
    default:
      break;
  }
  if (v == 17) {
    s.parallel = {};
    s.finetune = FinetuneMode::kFull;
    s.parallel.method = Method::kGemini;
    s.parallel.dp = 4;
  }
  return s;
}

TEST(ReplayDigest, EveryFieldOfManyEstimatesIsUnchanged) {
  const std::vector<std::string> models = {
      "meta-llama/Llama-2-7b-hf", "EleutherAI/pythia-410m",       "Qwen/Qwen2.5-0.5B",
      "Qwen/Qwen3-0.6B",          "EleutherAI/gpt-neo-125m",      "allenai/OLMo-1B-hf",
      "bigscience/bloom-1b1",     "Salesforce/codegen-350M-mono", "bigcode/gpt_bigcode-santacoder",
      "Qwen/Qwen1.5-MoE-A2.7B"};
  const GpuSpec& gpu = find_gpu("A100-80GB");
  std::string out;
  int estimates = 0;
  for (size_t m = 0; m < models.size(); ++m) {
    ModelSpec model = load_model(models[m]);
    // 12 variants per model, offset per model so that every knob meets
    // several families.
    for (int k = 0; k < 12; ++k) {
      const int v = static_cast<int>(m) * 7 + k * 3;
      out += models[m] + " v" + std::to_string(v) + ":";
      try {
        out += digest(estimate(model, variant(v), gpu));
        ++estimates;
      } catch (const Error& e) {
        out += std::string(" error ") + e.what();
      }
      out += '\n';
    }
  }
  EXPECT_GE(estimates, 100);  // a few variants may be rejected combinations
  const std::string path = std::string(LLMEM_SOURCE_DIR) + "/tests/golden/replay_digest.txt";
  if (std::getenv("LLMEM_UPDATE_GOLDEN") != nullptr) {
    std::ofstream(path) << out;
    return;
  }
  std::ifstream in(path);
  ASSERT_TRUE(in) << "missing golden " << path << " (run with LLMEM_UPDATE_GOLDEN=1)";
  std::stringstream expected;
  expected << in.rdbuf();
  EXPECT_EQ(out, expected.str())
      << "replay digest differs; review and rerun with LLMEM_UPDATE_GOLDEN=1";
}

}  // namespace
}  // namespace llmem
