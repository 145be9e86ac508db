// Copyright 2026 The llmem Authors.
// The planner: enumeration of candidate layouts, the largest micro-batch of
// each (screened by a model-state bound, predicted from the peak's linear
// growth in the batch, confirmed by exact estimates at the boundary), the
// ranking by the step-time model, and the inverse questions.

#include "llmem/plan.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <utility>

#include "llmem/error.h"

#include "estimate/distributed.h"
#include "plan/plan_internal.h"
#include "trace/program.h"

namespace llmem {
namespace {

constexpr double kGiB = 1073741824.0;

std::string gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f GiB", bytes / kGiB);
  return buf;
}

/// One exact estimate, reduced to what the planner needs.
struct Probe {
  bool ok = false;
  std::string error;  ///< why no number (estimate() threw, or no per-rank result)
  uint64_t peak = 0;  ///< worst-rank device bytes
  std::string role;
  std::string largest;  ///< largest component at the worst rank's peak, with its size
  int64_t trainable = 0;
  uint64_t allocated = 0;   ///< worst rank's allocated peak
  uint64_t activation = 0;  ///< its allocated peak over forward, loss and backward
};

using ProbeKey = std::array<int64_t, 13>;

/// Micro-batches per step to simulate for the peak. The trace repeats one
/// micro-step per group of micro-batches in flight (a pipeline stage holds up
/// to pp of them under 1F1B, a data-parallel rank one), and from the second
/// group on every group starts from the same state, so the peak is reached by
/// the second: min(m, pp + 1) gives the peak of m at a fraction of the cost
/// (checked in Plan.AccumulationBeyondTwoGroupsKeepsThePeak). GPipe keeps all
/// micro-batches in flight (one group), so m is kept. The interleaved
/// schedule needs a multiple of pp; with 2·pp micro-batches every rank runs at
/// least two groups (rank 0 holds V·pp + pp − 1 of its 2·pp·V chunk forwards).
int64_t memory_grad_accum(const PlanRequest& r, const PlanCandidate& c, int64_t m) {
  if (c.pp > 1 && c.vp == 1 && r.base.parallel.schedule == PipelineSchedule::kGpipe)
    return m;
  if (c.vp > 1)
    return std::min<int64_t>(m, 2 * static_cast<int64_t>(c.pp));
  return std::min<int64_t>(m, c.pp + 1);
}

/// The search state shared by plan(), max_seq() and min_gpus(): the memo of
/// exact estimates made during one call.
class Searcher {
 public:
  Searcher(const ModelSpec& model, const PlanRequest& request, const GpuSpec& gpu)
      : model_(model), gpu_(gpu), stats_(plan_detail::model_stats(model)) {
    estimator_ = request.estimator ? request.estimator : EstimateFn(&llmem::estimate);
  }

  size_t estimates() const { return estimates_; }

  /// Measured peak growth per sample of a family's activation layout (0: unknown).
  /// Negative values: growth of the device peak itself (no phase peaks known).
  double slope(const PlanCandidate& c) const {
    auto it = slopes_.find(slope_key(c));
    return it == slopes_.end() ? 0 : it->second;
  }
  void set_slope(const PlanCandidate& c, double bytes_per_sample) {
    if (bytes_per_sample != 0)
      slopes_[slope_key(c)] = bytes_per_sample;
  }
  size_t memo_hits() const { return memo_hits_; }
  const plan_detail::ModelStats& stats() const { return stats_; }

  TrainingSetup setup_for(const PlanRequest& r, const PlanCandidate& c, int64_t batch,
                          int64_t grad_accum) const {
    TrainingSetup s = r.base;
    s.batch = batch;
    s.seq = r.seq;
    s.grad_accum = grad_accum;
    s.checkpointing = c.checkpointing;
    s.finetune = c.finetune;
    s.parallel.method = c.method;
    s.parallel.dp = c.dp;
    s.parallel.tp = c.tp;
    s.parallel.pp = c.pp;
    s.parallel.virtual_stages = c.vp;
    if (c.vp > 1)
      s.parallel.schedule = PipelineSchedule::kInterleaved;
    else if (s.parallel.schedule == PipelineSchedule::kInterleaved)
      s.parallel.schedule = PipelineSchedule::k1F1B;
    s.parallel.sequence_parallel = c.sequence_parallel;
    s.fw.liger = c.liger;
    s.peak_only = true;
    s.parallel.gpus_per_node = std::max(1, c.dp * c.tp * c.pp / std::max(1, r.nodes));
    s.parallel.offload_optimizer = c.offload != Offload::kNone;
    s.parallel.offload_params = c.offload == Offload::kOptimizerAndParams;
    return s;
  }

  const Probe& probe(const PlanRequest& r, const PlanCandidate& c, int64_t batch,
                     int64_t grad_accum_in) {
    int64_t grad_accum = memory_grad_accum(r, c, grad_accum_in);
    ProbeKey key{static_cast<int64_t>(c.method),
                 c.dp,
                 c.tp,
                 c.pp,
                 c.vp,
                 static_cast<int64_t>(c.checkpointing),
                 static_cast<int64_t>(c.offload),
                 static_cast<int64_t>(c.finetune),
                 batch,
                 r.seq,
                 grad_accum,
                 r.nodes,
                 c.liger ? 1 : 0};
    auto it = memo_.find(key);
    if (it != memo_.end()) {
      ++memo_hits_;
      return it->second;
    }
    Probe p;
    ++estimates_;
    try {
      Estimate e = estimator_(model_, setup_for(r, c, batch, grad_accum), gpu_);
      if (c.method != Method::kSingle && e.ranks.empty()) {
        p.error = "not modelled yet: estimate() gives no per-rank result for " +
                  std::string(method_name(c.method)) + " (issue 5)";
      } else {
        p.ok = true;
        p.peak = e.peak.device_bytes;
        p.allocated = e.peak.allocated_bytes;
        for (Phase ph : {Phase::kForward, Phase::kLoss, Phase::kBackward})
          p.activation = std::max(p.activation, e.phase_peaks[static_cast<size_t>(ph)]);
        p.trainable = e.trainable_params;
        const PeakInfo* worst = &e.peak;
        uint64_t most = 0;
        for (const RankEstimate& rank : e.ranks) {
          if (rank.peak.device_bytes >= most) {
            most = rank.peak.device_bytes;
            p.role = rank.role;
            worst = &rank.peak;
          }
        }
        size_t big = 0;
        for (size_t i = 1; i < worst->components.size(); ++i) {
          if (worst->components[i] > worst->components[big])
            big = i;
        }
        p.largest = std::string(component_name(static_cast<Component>(big))) + " " +
                    gib(static_cast<double>(worst->components[big]));
      }
    } catch (const Error& e) {
      p.error = std::string("not modelled yet: ") + e.what();
    }
    return memo_.emplace(key, std::move(p)).first->second;
  }

 private:
  const ModelSpec& model_;
  const GpuSpec& gpu_;
  plan_detail::ModelStats stats_;
  EstimateFn estimator_;
  static std::array<int64_t, 8> slope_key(const PlanCandidate& c) {
    int64_t style = c.method == Method::kMegatron ? 1 : c.method == Method::kColossal1d ? 2 : 0;
    return {style,
            c.tp,
            c.pp,
            static_cast<int64_t>(c.checkpointing),
            static_cast<int64_t>(c.finetune),
            c.dp,
            c.vp,
            c.liger ? 1 : 0};
  }

  std::map<ProbeKey, Probe> memo_;
  std::map<std::array<int64_t, 8>, double> slopes_;
  size_t estimates_ = 0;
  size_t memo_hits_ = 0;
};

bool data_parallel_only(Method m) {
  return m == Method::kDdp || m == Method::kZero1 || m == Method::kZero2 || m == Method::kZero3 ||
         m == Method::kFsdp || m == Method::kGemini;
}

std::vector<Method> methods_of(const PlanRequest& r) {
  if (!r.methods.empty())
    return r.methods;
  if (r.colossalai)
    return {Method::kGemini, Method::kColossal1d};
  if (r.gpus == 1)
    return {Method::kSingle};
  if (r.base.framework != Framework::kHf)
    return {Method::kFsdp};  // torchtune's distributed recipes, LitGPT's Fabric strategy
  return {Method::kDdp,   Method::kZero1, Method::kZero2,
          Method::kZero3, Method::kFsdp,  Method::kMegatron};
}

struct Layout {
  int dp, tp, pp;
  int vp = 1;
};

std::vector<Layout> layouts_of(Method m, int n) {
  std::vector<Layout> out;
  if (m == Method::kSingle) {
    if (n == 1)
      out.push_back({1, 1, 1});
    return out;
  }
  if (data_parallel_only(m)) {
    out.push_back({n, 1, 1});
    return out;
  }
  for (int tp = 1; tp <= n; ++tp) {
    if (n % tp != 0)
      continue;
    for (int pp = 1; pp <= n / tp; ++pp) {
      if ((n / tp) % pp != 0)
        continue;
      int dp = n / tp / pp;
      if (m == Method::kColossal1d && (pp != 1 || tp == 1))
        continue;  // ColossalAI 1D TP (with Gemini across dp), no pipeline
      if (m == Method::kMegatron && tp * pp == 1)
        continue;  // plain data parallelism is ddp
      out.push_back({dp, tp, pp});
    }
  }
  return out;
}

/// With allow_interleaved, megatron pipelines also run interleaved with 2
/// model chunks per rank where the layers split into 2·pp equal virtual
/// stages, unless the request asks for GPipe; a request whose base schedule
/// is interleaved searches its own V instead of plain 1F1B.
std::vector<Layout> with_virtual_stages(std::vector<Layout> layouts, Method m,
                                        const ModelSpec& model, const PlanRequest& r) {
  const ParallelSetup& base = r.base.parallel;
  bool asked = base.schedule == PipelineSchedule::kInterleaved;
  if (m != Method::kMegatron || base.schedule == PipelineSchedule::kGpipe ||
      !(asked || r.allow_interleaved))
    return layouts;
  int v = asked ? base.virtual_stages : 2;
  std::vector<Layout> out;
  for (const Layout& l : layouts) {
    if (!asked || l.pp == 1)
      out.push_back(l);
    if (l.pp > 1 && v > 1 && (asked || model.num_layers % (2 * l.pp) == 0))
      out.push_back({l.dp, l.tp, l.pp, v});
  }
  return out;
}

std::vector<Offload> offloads_of(Method m, bool allowed) {
  std::vector<Offload> out{Offload::kNone};
  if (!allowed)
    return out;
  if (m == Method::kZero1 || m == Method::kZero2 || m == Method::kZero3 || m == Method::kFsdp ||
      m == Method::kGemini) {
    out.push_back(Offload::kOptimizer);
  }
  if (m == Method::kZero3 || m == Method::kFsdp || m == Method::kGemini)
    out.push_back(Offload::kOptimizerAndParams);
  return out;
}

/// Why a layout cannot run this model, or "".
std::string invalid_layout(const ModelSpec& model, const PlanCandidate& c) {
  if (c.tp > 1) {
    for (const LayerSpec& l : model.layers) {
      const AttentionSpec& a = l.attention;
      // ColossalAI 1D TP splits each linear's input features, not heads.
      if (c.method == Method::kMegatron && a.num_heads % c.tp != 0) {
        return "invalid layout: " + std::to_string(a.num_heads) +
               " attention heads not divisible by tp=" + std::to_string(c.tp);
      }
      if (c.method == Method::kMegatron && a.num_kv_heads > 0 && a.num_kv_heads % c.tp != 0 &&
          c.tp % a.num_kv_heads != 0) {
        return "invalid layout: " + std::to_string(a.num_kv_heads) +
               " key/value heads neither divisible by nor dividing tp=" + std::to_string(c.tp);
      }
    }
    if (model.hidden_size % c.tp != 0) {
      return "invalid layout: hidden size " + std::to_string(model.hidden_size) +
             " not divisible by tp=" + std::to_string(c.tp);
    }
  }
  if (c.pp > model.num_layers) {
    return "invalid layout: " + std::to_string(c.pp) + " pipeline stages for " +
           std::to_string(model.num_layers) + " layers";
  }
  if (c.vp > 1 && model.num_layers % (static_cast<int64_t>(c.pp) * c.vp) != 0) {
    return "invalid layout: " + std::to_string(model.num_layers) +
           " layers do not split into pp=" + std::to_string(c.pp) +
           " x vp=" + std::to_string(c.vp) + " virtual stages";
  }
  if (c.liger && !liger_runs_on(c.method, c.tp, c.pp)) {
    return "Liger kernels run under the Hugging Face Trainer's data-parallel methods only";
  }
  if ((c.method == Method::kGemini || c.method == Method::kColossal1d) &&
      c.finetune != FinetuneMode::kFull) {
    // ColossalAI gemini_plugin.py: support_lora() is False, enable_lora
    // raises NotImplementedError (14b0d4c7e through 4f9953be3).
    return "LoRA with Gemini: ColossalAI's GeminiPlugin does not support LoRA";
  }
  if (c.finetune == FinetuneMode::kQlora && (c.tp > 1 || c.pp > 1)) {
    return "QLoRA under tensor or pipeline parallelism: no framework offers it";
  }
  return "";
}

/// A lower bound of the model states one rank holds (full fine-tuning only):
/// weights, gradients and AdamW moments, divided the way the method shards
/// them, without buffers, activations or allocator rounding. Never more than
/// what the simulation counts; used to skip hopeless families.
double state_lower_bound(const PlanCandidate& c, const TrainingSetup& base, double params) {
  if (c.finetune != FinetuneMode::kFull)
    return 0;
  bool half = base.precision == Precision::kBf16 || base.precision == Precision::kFp16;
  double w = half ? 2 : 4;
  double g = w;
  double opt = 0;
  switch (base.optimizer) {
    case OptimizerKind::kAdamW:
    case OptimizerKind::kAdamWForeach:
    case OptimizerKind::kAdamWFused:
    case OptimizerKind::kAdamWForLoop:
      opt = half ? 4 : 8;
      break;
    default:
      opt = 0;
  }
  if (c.method == Method::kGemini || c.method == Method::kColossal1d) {
    w = 2;  // fp16 chunks; the fp32 master copy counted with the states
    g = 0;  // gradients reuse the fp16 chunk
    opt += 4;
  }
  if (c.offload != Offload::kNone)
    opt = 0;
  if (c.offload == Offload::kOptimizerAndParams)
    w = 0;
  double local = params / (c.tp * c.pp);
  double dp = c.dp;
  switch (c.method) {
    case Method::kZero1:
      return local * (w + g + opt / dp);
    case Method::kZero2:
      return local * (w + (g + opt) / dp);
    case Method::kZero3:
    case Method::kFsdp:
    case Method::kGemini:
    case Method::kColossal1d:
      return local * (w + g + opt) / dp;
    default:
      return local * (w + g + opt);
  }
}

struct Family {
  PlanCandidate c;
  std::vector<int64_t> batches;  ///< allowed micro-batches, ascending
  int64_t per_replica = 0;       ///< global batch / dp (0: free)
};

int64_t grad_accum_for(const PlanRequest& r, const Family& f, int64_t batch) {
  if (f.per_replica > 0)
    return f.per_replica / batch;
  if (f.c.pp > 1)
    return r.pipeline_micro_batches > 0 ? r.pipeline_micro_batches : 4 * f.c.pp;
  return 1;
}

/// Every (fine-tuning mode, Liger) pair, modes outermost.
std::vector<std::pair<FinetuneMode, bool>> combinations(const std::vector<FinetuneMode>& modes,
                                                        const std::vector<bool>& ligers) {
  std::vector<std::pair<FinetuneMode, bool>> out;
  for (FinetuneMode ft : modes) {
    for (bool liger : ligers)
      out.emplace_back(ft, liger);
  }
  return out;
}

std::vector<Family> enumerate(const ModelSpec& model, const PlanRequest& r, int64_t batch_cap) {
  std::vector<Family> out;
  // torchtune and LitGPT checkpoint without reentrancy (torch.utils.checkpoint
  // use_reentrant=False); a recipe's own mode is kept.
  CheckpointMode on = r.base.framework == Framework::kHf ? CheckpointMode::kReentrant
                                                         : CheckpointMode::kNonReentrant;
  std::vector<CheckpointMode> ckpts{CheckpointMode::kOff};
  if (r.colossalai)
    ckpts = {CheckpointMode::kReentrant};
  else if (r.from_recipe && r.base.checkpointing != CheckpointMode::kOff)
    ckpts = {r.base.checkpointing};
  else if (r.allow_ckpt)
    ckpts.push_back(on);
  std::vector<FinetuneMode> modes{r.from_recipe ? r.base.finetune : FinetuneMode::kFull};
  for (auto [allowed, mode] : {std::pair{r.allow_lora, FinetuneMode::kLora},
                               std::pair{r.allow_qlora, FinetuneMode::kQlora}}) {
    if (allowed && std::find(modes.begin(), modes.end(), mode) == modes.end())
      modes.push_back(mode);
  }
  std::vector<bool> ligers{r.base.fw.liger};
  if (r.allow_liger && !r.base.fw.liger && r.base.framework == Framework::kHf &&
      trace::liger_patches(model))
    ligers.push_back(true);
  for (Method m : methods_of(r)) {
    for (const Layout& l : with_virtual_stages(layouts_of(m, r.gpus), m, model, r)) {
      if (r.max_pp > 0 && l.pp > r.max_pp)
        continue;
      for (Offload off : offloads_of(m, r.allow_offload)) {
        for (CheckpointMode ck : ckpts) {
          for (auto [ft, liger] : combinations(modes, ligers)) {
            if (liger && !r.base.fw.liger && !liger_runs_on(m, l.tp, l.pp))
              continue;  // Liger is tried only where it runs
            Family f;
            f.c.liger = liger;
            f.c.method = m;
            f.c.dp = l.dp;
            f.c.tp = l.tp;
            f.c.pp = l.pp;
            f.c.vp = l.vp;
            f.c.offload = off;
            f.c.checkpointing = ck;
            f.c.finetune = ft;
            f.c.sequence_parallel = m == Method::kMegatron && l.tp > 1 && r.seq % l.tp == 0 &&
                                    sequence_parallel_modelled(model, ft);
            f.c.rejected_reason = invalid_layout(model, f.c);
            if (r.global_batch > 0) {
              if (r.global_batch % l.dp != 0) {
                if (f.c.rejected_reason.empty()) {
                  f.c.rejected_reason = "global batch " + std::to_string(r.global_batch) +
                                        " not divisible by dp=" + std::to_string(l.dp);
                }
              } else {
                f.per_replica = r.global_batch / l.dp;
                for (int64_t b = 1; b <= std::min(f.per_replica, batch_cap); ++b) {
                  // interleaved: a multiple of pp micro-batches per step
                  if (f.per_replica % b == 0 && (l.vp == 1 || (f.per_replica / b) % l.pp == 0))
                    f.batches.push_back(b);
                }
                if (f.batches.empty() && f.c.rejected_reason.empty()) {
                  f.c.rejected_reason =
                      "no micro-batch gives a multiple of pp=" + std::to_string(l.pp) +
                      " micro-batches per step (interleaved schedule)";
                }
              }
            } else {
              for (int64_t b = 1; b <= batch_cap; ++b)
                f.batches.push_back(b);
            }
            out.push_back(std::move(f));
          }
        }
      }
    }
  }
  return out;
}

/// Largest index into f.batches that fits the budget (-1: none). The peak
/// is monotone in the micro-batch; the search predicts the boundary from the
/// linear growth of the activation phases' peak (measured at the first two
/// micro-batches, or shared by a family with the same activation layout),
/// confirms it with exact estimates on both sides, and gallops then bisects
/// when the prediction misses. Fills the reason when nothing fits.
int search(Searcher& s, const PlanRequest& r, Family& f, uint64_t budget,
           std::vector<uint64_t>* peaks) {
  auto& bs = f.batches;
  auto n = static_cast<int>(bs.size());
  peaks->assign(bs.size(), 0);
  bool error = false;
  const Probe* last = nullptr;
  auto fits = [&](int i) -> bool {
    const Probe& p = s.probe(r, f.c, bs[static_cast<size_t>(i)],
                             grad_accum_for(r, f, bs[static_cast<size_t>(i)]));
    ++f.c.estimates;
    last = &p;
    if (!p.ok) {
      error = true;
      if (f.c.rejected_reason.empty())
        f.c.rejected_reason = p.error;
      return false;
    }
    (*peaks)[static_cast<size_t>(i)] = p.peak;
    if (i == 0) {
      f.c.trainable_params = p.trainable;
      f.c.role = p.role;
      if (p.peak > budget) {
        f.c.peak_bytes = p.peak;
        f.c.rejected_reason =
            "micro-batch " + std::to_string(bs[0]) + " needs " + gib(static_cast<double>(p.peak)) +
            (p.role.empty() ? "" : " on " + p.role) + " (largest: " + p.largest + "), " +
            gib(static_cast<double>(p.peak - budget)) + " over the budget";
      }
    }
    return p.peak <= budget;
  };
  if (n == 0 || !fits(0))
    return -1;
  if (n == 1)
    return 0;
  Probe first = *last;
  int lo = 0;
  int hi = n;  // first index known not to fit (n: none known)
  double slope = s.slope(f.c);
  const Probe* ref = &first;
  Probe second;
  if (slope == 0) {
    bool ok = fits(1);
    if (error)
      return -1;
    second = *last;
    ref = &second;
    if (!ok)
      return 0;
    lo = 1;
    auto db = static_cast<double>(bs[1] - bs[0]);
    slope = (static_cast<double>(second.activation) - static_cast<double>(first.activation)) / db;
    if (slope <= 0)  // no phase peaks: the device peak's own growth, stored negative
      slope = -(static_cast<double>(second.peak) - static_cast<double>(first.peak)) / db;
    s.set_slope(f.c, slope);
  }
  // Exact points (micro-batch, device peak) seen so far, for the secant.
  std::vector<std::pair<double, double>> points;
  for (int i = 0; i <= lo; ++i)
    points.emplace_back(static_cast<double>(bs[static_cast<size_t>(i)]),
                        static_cast<double>((*peaks)[static_cast<size_t>(i)]));
  auto index_at = [&](double b) {
    if (!(b >= 0))  // negative or NaN: no usable prediction
      return -1;
    b = std::min(b, static_cast<double>(bs.back()));
    auto it = std::upper_bound(bs.begin(), bs.end(), static_cast<int64_t>(std::floor(b)));
    return static_cast<int>(it - bs.begin()) - 1;
  };
  int next = -1;
  if (slope != 0) {
    // The device peak grows once the activation phases exceed the rest of the
    // step (the optimizer's peak, say), then about one for one with them.
    double base = ref->activation > 0
                      ? static_cast<double>(ref->peak) - static_cast<double>(ref->allocated) +
                            static_cast<double>(ref->activation)
                      : static_cast<double>(ref->peak);
    next = index_at(static_cast<double>(bs[static_cast<size_t>(lo)]) +
                    (static_cast<double>(budget) - base) / std::abs(slope));
  }
  // Secant steps on the device peak, kept inside the bracket (lo, hi); where
  // the secant has no positive slope (fragmentation makes the reserved peak
  // only nearly monotone), double up while unbounded, else bisect.
  for (int round = 0; round < 40 && hi - lo > 1; ++round) {
    if (next < 0)
      next = hi == n ? lo + std::max(1, lo) : lo + (hi - lo) / 2;
    int probe = std::clamp(next, lo + 1, hi == n ? n - 1 : hi - 1);
    bool ok = fits(probe);
    if (error)
      return -1;
    points.emplace_back(static_cast<double>(bs[static_cast<size_t>(probe)]),
                        static_cast<double>(last->peak));
    if (ok)
      lo = probe;
    else
      hi = probe;
    if (lo == n - 1)
      return lo;
    const auto& a = points[points.size() - 2];
    const auto& b = points.back();
    double sl = (b.second - a.second) / (b.first - a.first);
    next = round < 6 && sl > 0 ? index_at(b.first + (static_cast<double>(budget) - b.second) / sl)
                               : -1;
  }
  if (points.size() >= 2 && hi < n) {
    const auto& a = points[points.size() - 2];
    const auto& b = points.back();
    double sl = (b.second - a.second) / (b.first - a.first);
    if (sl > 0)
      s.set_slope(f.c, -sl);  // near the boundary: the device peak's own growth
  }
  return lo;
}

void validate(const PlanRequest& r) {
  if (r.gpus < 1 || r.gpus > 4096)
    throw Error("--gpus", "", "expected between 1 and 4096 GPUs");
  if (r.nodes < 1 || r.nodes > r.gpus || r.gpus % r.nodes != 0) {
    throw Error("--nodes", "", "expected a node count that divides --gpus");
  }
  if (r.seq < 2 || r.seq > (1 << 24))
    throw Error("--seq", "", "expected a sequence length between 2 and 2^24");
  if (r.global_batch < 0 || r.global_batch > (1 << 24))
    throw Error("--global-batch", "", "expected a sample count between 1 and 2^24");
  if (r.dataset_tokens < 0)
    throw Error("--dataset-tokens", "", "expected a non-negative token count");
  if (!(r.margin >= 0 && r.margin < 1))
    throw Error("--margin", "", "expected a percentage between 0 and 100 (exclusive)");
  if (r.max_pp < 0)
    throw Error("--max-pp", "", "expected a non-negative stage count (0: no limit)");
  if (r.max_micro_batch < 1 || r.max_micro_batch > (1 << 20))
    throw Error("--max-micro-batch", "", "expected between 1 and 2^20");
  for (Method m : r.methods) {
    if (m == Method::kSingle && r.gpus != 1)
      throw Error("--methods", "", "single needs --gpus 1");
  }
}

Plan run_plan(Searcher& s, const ModelSpec& model, const PlanRequest& r, const GpuSpec& gpu,
              bool stop_at_first_fit) {
  validate(r);
  Plan plan;
  plan.capacity_bytes = gpu.capacity_bytes;
  plan.budget_bytes =
      static_cast<uint64_t>(static_cast<double>(gpu.capacity_bytes) * (1.0 - r.margin));
  std::vector<Family> families = enumerate(model, r, r.max_micro_batch);
  size_t estimates_before = s.estimates();
  size_t hits_before = s.memo_hits();
  std::vector<PlanCandidate> fit, rejected;
  std::vector<uint64_t> peaks;
  for (Family& f : families) {
    PlanCandidate& c = f.c;
    plan.configurations += f.batches.size();
    if (c.rejected_reason.empty()) {
      double bound = state_lower_bound(c, r.base, s.stats().params);
      if (bound > static_cast<double>(plan.budget_bytes)) {
        c.rejected_reason = "model states alone need at least " + gib(bound) +
                            " per GPU, over the budget " +
                            gib(static_cast<double>(plan.budget_bytes));
      }
    }
    if (!c.rejected_reason.empty()) {
      rejected.push_back(c);
      continue;
    }
    int best_index = search(s, r, f, plan.budget_bytes, &peaks);
    if (best_index < 0) {
      if (c.rejected_reason.empty())
        c.rejected_reason = "no micro-batch allowed by the global batch";
      rejected.push_back(c);
      continue;
    }
    c.max_micro_batch = f.batches[static_cast<size_t>(best_index)];
    c.fits = true;
    // The fastest micro-batch up to the boundary. The reserved peak is only
    // nearly monotone (fragmentation), so a choice below the boundary that
    // was not probed is confirmed by an exact estimate.
    struct Trial {
      double tokens_per_s;
      int index;
      StepTime time;
      int64_t grad_accum;
    };
    std::vector<Trial> trials;
    for (int i = 0; i <= best_index; ++i) {
      PlanCandidate trial = c;
      trial.micro_batch = f.batches[static_cast<size_t>(i)];
      trial.grad_accum = grad_accum_for(r, f, trial.micro_batch);
      TrainingSetup setup = s.setup_for(r, trial, trial.micro_batch, trial.grad_accum);
      StepTime t = plan_detail::step_time(s.stats(), setup, trial, gpu, r.nodes, r.time);
      trials.push_back({t.tokens_per_s, i, t, trial.grad_accum});
    }
    std::stable_sort(trials.begin(), trials.end(), [](const Trial& a, const Trial& b) {
      return a.tokens_per_s > b.tokens_per_s;
    });
    for (const Trial& t : trials) {
      auto at = static_cast<size_t>(t.index);
      if (peaks[at] == 0) {
        const Probe& p = s.probe(r, c, f.batches[at], t.grad_accum);
        ++c.estimates;
        peaks[at] = p.ok ? p.peak : UINT64_MAX;
      }
      if (peaks[at] <= plan.budget_bytes) {
        c.micro_batch = f.batches[at];
        c.grad_accum = t.grad_accum;
        c.time = t.time;
        c.peak_bytes = peaks[at];
        break;
      }
    }
    c.headroom_bytes = gpu.capacity_bytes > c.peak_bytes ? gpu.capacity_bytes - c.peak_bytes : 0;
    fit.push_back(c);
    if (stop_at_first_fit)
      break;
  }
  // Fastest first; speeds within 0.5 % (one bucket of a geometric grid, so
  // the order stays transitive) are a tie the lower peak wins: the model does
  // not resolve finer differences, and headroom is worth having.
  auto bucket = [](const PlanCandidate& c) {
    return c.time.tokens_per_s > 0 ? std::floor(std::log(c.time.tokens_per_s) / std::log(1.005))
                                   : -1e9;
  };
  std::stable_sort(fit.begin(), fit.end(), [&](const PlanCandidate& a, const PlanCandidate& b) {
    double ba = bucket(a);
    double bb = bucket(b);
    if (ba != bb)
      return ba > bb;
    return a.peak_bytes < b.peak_bytes;
  });
  plan.choice = fit.empty() ? -1 : 0;
  plan.candidates = std::move(fit);
  for (PlanCandidate& c : rejected)
    plan.candidates.push_back(std::move(c));
  plan.estimates = s.estimates() - estimates_before;
  plan.memo_hits = s.memo_hits() - hits_before;
  if (plan.choice >= 0 && r.dataset_tokens > 0) {
    const PlanCandidate& c = plan.candidates[0];
    plan.epoch_s =
        static_cast<double>(r.dataset_tokens) / (c.time.tokens_per_s * c.dp * c.tp * c.pp);
  }
  if (r.base.precision == Precision::kBf16Mixed && gpu.bf16_tflops <= 0) {
    plan.notes.push_back(gpu.name +
                         " has no bf16 tensor cores: step times use its fp32 rate; "
                         "consider --precision fp16-mixed");
  }
  return plan;
}

}  // namespace

std::string_view offload_name(Offload o) {
  switch (o) {
    case Offload::kNone:
      return "none";
    case Offload::kOptimizer:
      return "optimizer";
    case Offload::kOptimizerAndParams:
      return "optimizer+params";
  }
  return "";
}

std::string_view finetune_name(FinetuneMode f) {
  switch (f) {
    case FinetuneMode::kFull:
      return "full";
    case FinetuneMode::kLora:
      return "lora";
    case FinetuneMode::kQlora:
      return "qlora";
  }
  return "";
}

std::string candidate_label(const PlanCandidate& c) {
  std::string s(method_name(c.method));
  if (c.method != Method::kSingle) {
    s += " dp=" + std::to_string(c.dp);
    if (c.tp > 1)
      s += " tp=" + std::to_string(c.tp);
    if (c.pp > 1)
      s += " pp=" + std::to_string(c.pp);
    if (c.vp > 1)
      s += " vp=" + std::to_string(c.vp);
  }
  if (c.sequence_parallel)
    s += " +sp";
  if (c.checkpointing != CheckpointMode::kOff)
    s += " +ckpt";
  if (c.finetune != FinetuneMode::kFull)
    s += " +" + std::string(finetune_name(c.finetune));
  if (c.offload == Offload::kOptimizer)
    s += " +offload-opt";
  if (c.offload == Offload::kOptimizerAndParams)
    s += " +offload-all";
  if (c.liger)
    s += " +liger";
  return s;
}

Plan plan(const ModelSpec& model, const PlanRequest& request, const GpuSpec& gpu) {
  Searcher s(model, request, gpu);
  return run_plan(s, model, request, gpu, false);
}

int64_t max_seq(const ModelSpec& model, const PlanRequest& request, const GpuSpec& gpu, Plan* out) {
  validate(request);
  Searcher s(model, request, gpu);
  PlanRequest r = request;
  r.max_micro_batch = 1;
  r.global_batch = 0;
  int64_t limit = model.max_position_embeddings > 0 ? model.max_position_embeddings : (1 << 20);
  auto feasible = [&](int64_t seq) {
    r.seq = seq;
    return run_plan(s, model, r, gpu, true).choice >= 0;
  };
  int64_t best = 0;
  if (feasible(2)) {
    // Exponential then binary search over multiples of 64 (of 2 below 64).
    int64_t lo = 2;
    int64_t hi = 0;
    for (int64_t seq = 64; seq <= limit; seq *= 2) {
      if (feasible(seq)) {
        lo = seq;
      } else {
        hi = seq;
        break;
      }
    }
    if (hi == 0) {
      hi = limit + 1;
      if (lo != limit && feasible(limit))
        lo = limit;
    }
    int64_t unit = lo >= 64 ? 64 : 2;
    while (hi - lo > unit) {
      int64_t mid = lo + (hi - lo) / 2 / unit * unit;
      if (mid <= lo)
        mid = lo + unit;
      if (mid >= hi)
        break;
      if (feasible(mid))
        lo = mid;
      else
        hi = mid;
    }
    best = lo;
  }
  if (out != nullptr) {
    PlanRequest final_request = request;
    final_request.seq = best > 0 ? best : request.seq;
    *out = run_plan(s, model, final_request, gpu, false);
    out->estimates = s.estimates();
    out->memo_hits = s.memo_hits();
    out->max_seq = best;
  }
  return best;
}

int min_gpus(const ModelSpec& model, const PlanRequest& request, const GpuSpec& gpu, Plan* out) {
  validate(request);
  Searcher s(model, request, gpu);
  int per_node = request.gpus / request.nodes;
  int found = 0;
  PlanRequest r = request;
  for (int n = 1; n <= request.gpus && found == 0; ++n) {
    if (n > per_node && n % per_node != 0)
      continue;
    r.gpus = n;
    r.nodes = n > per_node ? n / per_node : 1;
    r.methods.clear();
    for (Method m : request.methods) {
      if ((m == Method::kSingle) == (n == 1))
        r.methods.push_back(m);
    }
    if (!request.methods.empty() && r.methods.empty())
      continue;
    if (run_plan(s, model, r, gpu, true).choice >= 0)
      found = n;
  }
  if (out != nullptr) {
    PlanRequest final_request = r;
    if (found == 0) {
      final_request = request;
    }
    *out = run_plan(s, model, final_request, gpu, false);
    out->estimates = s.estimates();
    out->memo_hits = s.memo_hits();
    out->min_gpus = found;
  }
  return found;
}

}  // namespace llmem
