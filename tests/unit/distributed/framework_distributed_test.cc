// Copyright 2026 The llmem Authors.
// FSDP2 per-parameter sharding, LitGPT's Fabric FSDP and torchtune's
// distributed recipes: what one rank holds, the recipes that select them and
// the layouts the frameworks cannot run.

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "llmem/error.h"
#include "llmem/estimate.h"
#include "llmem/gpu.h"
#include "llmem/model.h"
#include "llmem/recipe.h"

#include "estimate/distributed.h"
#include "trace/events.h"
#include "trace/program.h"

namespace llmem {
namespace {

std::string recipe(const std::string& name) {
  return std::string(LLMEM_TEST_DATA_DIR) + "/recipes/" + name;
}

// Live bytes of each component when step 2's optimizer phase begins: the
// model states of a full step (parameter shards, reduced gradients, states).
std::vector<int64_t> live_at_step2_optimizer(const std::vector<trace::Event>& events) {
  std::vector<int64_t> live(static_cast<size_t>(Component::kCount), 0);
  for (const trace::Event& e : events) {
    if (e.step == 2 && e.phase == Phase::kOptimizer)
      break;
    live[static_cast<size_t>(e.component)] += e.alloc ? e.bytes : -e.bytes;
  }
  return live;
}

using test_util::max_live;

int64_t at(const std::vector<int64_t>& live, Component c) {
  return live[static_cast<size_t>(c)];
}

trace::RankPlan fsdp_plan(int n, bool fsdp2) {
  trace::RankPlan r;
  r.param_shards = r.grad_shards = r.state_shards = n;
  r.prefetch_layers = 1;
  r.per_param_shards = fsdp2;
  r.flat_param_grads = !fsdp2;
  return r;
}

TEST(FrameworkDistributed, Fsdp2PureBf16HoldsEightBytesPerParameterOverN) {
  // torchtune full_finetune_distributed: bf16 DTensor shards, bf16 reduced
  // gradients, bf16 AdamW moments: 2 + 2 + 4 bytes per parameter over N.
  // Every Llama-2-7B dim 0 divides by 8, so there is no padding.
  ModelSpec m = load_model("meta-llama/Llama-2-7b-hf");
  TrainingSetup s;
  apply_framework_defaults(Framework::kTorchtune, &s);
  s.batch = 1;
  s.seq = 256;
  trace::TraceResult t = trace::build_trace(m, s, fsdp_plan(8, true));
  std::vector<int64_t> live = live_at_step2_optimizer(t.events);
  int64_t psi = m.params();
  EXPECT_EQ(at(live, Component::kParameters), 2 * psi / 8);
  EXPECT_EQ(at(live, Component::kGradients), 2 * psi / 8);
  EXPECT_EQ(at(live, Component::kOptimizerStates), 4 * psi / 8);
  EXPECT_EQ(at(live, Component::kWeightCopies), 0);  // every unit resharded
  EXPECT_EQ(at(live, Component::kMasterWeights), 0);
}

TEST(FrameworkDistributed, Fsdp2PadsEachParameterOnDimZero) {
  // Over 3 ranks, FSDP2 gives rank 0 ceil(rows / 3) rows of every parameter;
  // FSDP1 splits each unit's flat parameter evenly, so it holds less.
  ModelSpec m = load_model("meta-llama/Llama-2-7b-hf");
  TrainingSetup s;
  apply_framework_defaults(Framework::kTorchtune, &s);
  s.batch = 1;
  s.seq = 128;
  int64_t padded = 0;
  for (const TensorSpec& t : m.tensors) {
    if (!t.tied_to.empty())
      continue;
    int64_t rows = t.shape.empty() ? 1 : t.shape[0];
    padded += (rows + 2) / 3 * (t.numel / rows);
  }
  std::vector<int64_t> v2 =
      live_at_step2_optimizer(trace::build_trace(m, s, fsdp_plan(3, true)).events);
  std::vector<int64_t> v1 =
      live_at_step2_optimizer(trace::build_trace(m, s, fsdp_plan(3, false)).events);
  EXPECT_EQ(at(v2, Component::kParameters), 2 * padded);
  EXPECT_EQ(at(v2, Component::kOptimizerStates), 4 * padded);
  EXPECT_GT(padded, (m.params() + 2) / 3);  // 4096 / 3 and 11008 / 3 leave remainders
  EXPECT_LT(at(v1, Component::kParameters), at(v2, Component::kParameters));
  // The all-gather: a flat output and the per-parameter copies, one unit
  // more than FSDP1's single gathered flat parameter.
  EXPECT_GT(
      max_live(trace::build_trace(m, s, fsdp_plan(3, true)).events, Component::kWeightCopies),
      max_live(trace::build_trace(m, s, fsdp_plan(3, false)).events, Component::kWeightCopies));
}

TEST(FrameworkDistributed, FsdpVersionTwoReachesTheTrace) {
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  TrainingSetup s;
  s.batch = 1;
  s.seq = 256;
  s.precision = Precision::kBf16;
  s.parallel.method = Method::kFsdp;
  s.parallel.dp = 3;
  Estimate one = estimate(m, s, find_gpu("A100-80GB"));
  s.parallel.fsdp_version = 2;
  Estimate two = estimate(m, s, find_gpu("A100-80GB"));
  EXPECT_NE(one.peak.allocated_bytes, two.peak.allocated_bytes);
  bool named = std::any_of(two.notes.begin(), two.notes.end(),
                           [](const std::string& n) { return n.rfind("FSDP2", 0) == 0; });
  EXPECT_TRUE(named);
}

TEST(FrameworkDistributed, LitgptNoSyncKeepsUnshardedGradientsWhileAccumulating) {
  // Fabric's no_backward_sync is FSDP1 no_sync(): before a step's last
  // micro-batch every unit's bf16 gradient stays whole (2 bytes per parameter).
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  TrainingSetup s;
  apply_framework_defaults(Framework::kLitgpt, &s);
  s.batch = 1;
  s.seq = 256;
  trace::RankPlan r = fsdp_plan(4, false);
  r.no_sync_accum = true;
  int64_t psi = 0;
  for (const TensorSpec& t : m.tensors)
    psi += t.numel;  // LitGPT unties the head: every tensor is a parameter
  s.grad_accum = 2;
  std::vector<trace::Event> events = trace::build_trace(m, s, r).events;
  // When step 2's second forward starts, every unit's flat gradient (one
  // padded flat parameter each) is still whole.
  int64_t live = 0;
  bool backward = false;
  int64_t kept = -1;
  for (const trace::Event& e : events) {
    if (e.step == 2 && e.phase == Phase::kBackward)
      backward = true;
    if (backward && e.phase == Phase::kForward) {
      kept = live;
      break;
    }
    if (e.component == Component::kGradients)
      live += e.alloc ? e.bytes : -e.bytes;
  }
  EXPECT_GE(kept, 2 * psi);
  EXPECT_LT(kept, 2 * psi + (1 << 20));
  // Synced, only the bf16 shards are left for the optimizer.
  std::vector<int64_t> at_step = live_at_step2_optimizer(events);
  EXPECT_NEAR(static_cast<double>(at(at_step, Component::kGradients)),
              2.0 * static_cast<double>(psi) / 4, 1 << 20);
}

TEST(FrameworkDistributed, LitgptFsdpCheckpointsEveryBlock) {
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  TrainingSetup s;
  apply_framework_defaults(Framework::kLitgpt, &s);
  s.batch = 2;
  s.seq = 1024;
  s.parallel.method = Method::kFsdp;
  s.parallel.dp = 2;
  Estimate fsdp = estimate(m, s, find_gpu("A100-80GB"));
  // The same ranks without LitGPT's activation_checkpointing_policy={Block}.
  trace::RankPlan r = fsdp_plan(2, false);
  r.no_sync_accum = true;
  Estimate plain = estimate_rank(m, s, find_gpu("A100-80GB"), r);
  EXPECT_LT(fsdp.peak.allocated_bytes, plain.peak.allocated_bytes);
  s.checkpointing = CheckpointMode::kNonReentrant;
  Estimate ckpt = estimate_rank(m, s, find_gpu("A100-80GB"), r);
  EXPECT_EQ(fsdp.peak.allocated_bytes, ckpt.peak.allocated_bytes);
}

TEST(FrameworkDistributed, FrameworksRejectLayoutsTheyCannotRun) {
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  GpuSpec gpu = find_gpu("A100-80GB");
  auto setup = [](Framework f, Method method) {
    TrainingSetup s;
    apply_framework_defaults(f, &s);
    s.batch = 1;
    s.seq = 128;
    s.parallel.method = method;
    s.parallel.dp = 2;
    return s;
  };
  EXPECT_THROW(estimate(m, setup(Framework::kTorchtune, Method::kDdp), gpu), Error);
  EXPECT_THROW(estimate(m, setup(Framework::kLitgpt, Method::kZero3), gpu), Error);
  TrainingSetup v2 = setup(Framework::kLitgpt, Method::kFsdp);
  v2.parallel.fsdp_version = 2;
  try {
    estimate(m, v2, gpu);
    ADD_FAILURE() << "LitGPT with FSDP2 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("FSDP1"), std::string::npos) << e.what();
  }
  TrainingSetup off = setup(Framework::kLitgpt, Method::kFsdp);
  off.parallel.offload_params = off.parallel.offload_optimizer = true;
  EXPECT_THROW(estimate(m, off, gpu), Error);
  TrainingSetup q = setup(Framework::kLitgpt, Method::kFsdp);
  q.finetune = FinetuneMode::kQlora;
  EXPECT_THROW(estimate(m, q, gpu), Error);
  // torchtune with fsdp_cpu_offload is a layout it runs.
  TrainingSetup tt = setup(Framework::kTorchtune, Method::kFsdp);
  tt.parallel.offload_params = tt.parallel.offload_optimizer = true;
  EXPECT_NO_THROW(estimate(m, tt, gpu));
}

TEST(FrameworkDistributed, TorchtuneOffloadAndOptimizerInBackwardLeaveNoStates) {
  // Row 7's layout: fsdp_cpu_offload + optimizer_in_bwd: no optimizer states
  // and no parameter shards on the GPU.
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  TrainingSetup s;
  apply_framework_defaults(Framework::kTorchtune, &s);
  s.batch = 1;
  s.seq = 128;
  s.fw.optimizer_in_bwd = true;
  trace::RankPlan r = fsdp_plan(8, true);
  r.offload_params = r.offload_optimizer = true;
  trace::TraceResult t = trace::build_trace(m, s, r);
  EXPECT_EQ(max_live(t.events, Component::kOptimizerStates), 0);
  EXPECT_EQ(max_live(t.events, Component::kParameters), 0);
  // On the GPU, optimizer_in_bwd steps each shard as it lands: bf16 states
  // of the shards, no gradient shard kept.
  r.offload_params = r.offload_optimizer = false;
  std::vector<int64_t> live = live_at_step2_optimizer(trace::build_trace(m, s, r).events);
  EXPECT_EQ(at(live, Component::kGradients), 0);
  EXPECT_GT(at(live, Component::kOptimizerStates), 0);
}

// torchtune lora_finetune_distributed with a qlora_* builder: FSDP2 over
// NF4Tensor weights (torchtune 1814feb training/_distributed.py
// load_from_full_model_state_dict keeps torch.chunk(dim=0)[rank] of each
// to_nf4 result; torchao nf4tensor.py splits quantized_data, quantized_scalers
// and quantization_factor by rows).
TrainingSetup torchtune_qlora_1b() {
  TrainingSetup s;
  apply_framework_defaults(Framework::kTorchtune, &s);
  s.finetune = FinetuneMode::kQlora;
  s.lora.rank = 8;
  s.batch = 1;
  s.seq = 128;
  return s;
}

TEST(FrameworkDistributed, TorchtuneQloraShardsNf4WeightsAndAdapters) {
  // Llama-3.2-1B over 8 ranks (every dim 0 divides by 8). Per layer, NF4
  // bytes n/2 + n/64 (int8 scalers) + 4·n/16384 (factors, as the
  // single-device trace counts them):
  //   q_proj, o_proj [2048, 2048]: 2,097,152 + 65,536 + 1,024 = 2,163,712
  //   k_proj, v_proj [512, 2048]:    524,288 + 16,384 +   256 =   540,928
  //   gate, up [8192, 2048], down [2048, 8192]:
  //                               8,388,608 + 262,144 + 4,096 = 8,654,848
  // layer: 2·2,163,712 + 2·540,928 + 3·8,654,848 = 31,373,824; 16 layers
  // over 8 ranks: 62,747,648 bytes. The bf16 rest over 8: the (tied)
  // embedding 128256·2048·2/8 = 65,667,072 and the norms (33 × 2048)·2/8 =
  // 16,896. LoRA r 8 (q, v, output_proj, mlp) in bf16: lora_a [8, in] is one
  // row per rank (in elements), lora_b [out, 8] out/8 rows (out elements):
  // q 4096 + v 2560 + o 4096 + gate 10240 + up 10240 + down 10240 = 41,472
  // per layer, 663,552 elements = 1,327,104 bytes per rank.
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  trace::TraceResult t = trace::build_trace(m, torchtune_qlora_1b(), fsdp_plan(8, true));
  std::vector<int64_t> live = live_at_step2_optimizer(t.events);
  EXPECT_EQ(at(live, Component::kParameters), 62'747'648 + 65'667'072 + 16'896 + 1'327'104);
  EXPECT_EQ(at(live, Component::kGradients), 1'327'104);        // reduced LoRA shards
  EXPECT_EQ(at(live, Component::kOptimizerStates), 2'654'208);  // bf16 exp_avg, exp_avg_sq
  EXPECT_EQ(at(live, Component::kWeightCopies), 0);             // every unit resharded
  // A layer's all-gather: its NF4 bytes whole, its two norms (2·2048 bf16)
  // and its adapters whole (41,472 · 8 elements, bf16): the flat output of
  // FSDP2's foreach_all_gather (uint8, the inputs' dtypes differ) and the
  // per-parameter copies it is split into.
  const int64_t layer = 31'373'824 + 8'192 + 663'552;
  int64_t gathers = 0;
  for (const trace::Event& e : t.events) {
    if (e.step == 2 && e.phase == Phase::kForward && e.alloc &&
        e.component == Component::kWeightCopies && e.bytes == layer)
      ++gathers;
  }
  EXPECT_EQ(gathers, 2 * 16);  // flat output and copies, once per layer in forward
}

TEST(FrameworkDistributed, TorchtuneQloraPadsNf4RowsLikeEveryDTensor) {
  // Over 3 ranks rank 0 holds ceil(rows / 3) rows of each NF4 weight: the
  // bytes of a row (NF4 bytes / rows) times 683 of 2048 rows, or 2731 of
  // 8192; rounded up per weight.
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  int64_t nf4 = 0;
  for (const TensorSpec& t : m.tensors) {
    if (t.layer < 0 || t.shape.size() != 2 || t.role == TensorRole::kNorm)
      continue;
    int64_t n = t.numel;
    int64_t bytes = n / 2 + n / 64 + (n / 64 / 256) * 4;
    int64_t rows = t.shape[0];
    nf4 += (bytes * ((rows + 2) / 3) + rows - 1) / rows;
  }
  // q_proj alone: 2,163,712 · 683 / 2048 = 721,589.5 -> 721,590.
  EXPECT_EQ((2'163'712LL * 683 + 2047) / 2048, 721'590);
  int64_t over8 = at(live_at_step2_optimizer(
                         trace::build_trace(m, torchtune_qlora_1b(), fsdp_plan(8, true)).events),
                     Component::kParameters) -
                  62'747'648;
  int64_t over3 = at(live_at_step2_optimizer(
                         trace::build_trace(m, torchtune_qlora_1b(), fsdp_plan(3, true)).events),
                     Component::kParameters);
  // The bf16 rest over 3 (rows padded the same way): embedding 42,752 rows,
  // norms 683 rows each, and the adapters (lora_a 3 of 8 rows, lora_b ceil(out / 3) rows).
  int64_t rest = 2 * (42'752 * 2048 + 33 * 683);
  int64_t lora = 0;
  for (const auto& [in, out] : std::vector<std::pair<int64_t, int64_t>>{
           {2048, 2048}, {2048, 512}, {2048, 2048}, {2048, 8192}, {2048, 8192}, {8192, 2048}})
    lora += 3 * in + (out + 2) / 3 * 8;
  EXPECT_EQ(over3, nf4 + rest + 2 * 16 * lora);
  EXPECT_GT(over3, over8);
}

TEST(FrameworkDistributed, TorchtuneLoraAdaptersAreShardedWithTheirLayer) {
  // lora_finetune_distributed without quantize_base: the adapters are FSDP2
  // DTensors of their layer too, so the step holds 1/8 of them (bf16), not
  // every rank the whole set.
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  TrainingSetup s = torchtune_qlora_1b();
  s.finetune = FinetuneMode::kLora;
  std::vector<int64_t> live =
      live_at_step2_optimizer(trace::build_trace(m, s, fsdp_plan(8, true)).events);
  int64_t base = 2 * (m.params() / 8);  // every dim 0 of the 1B divides by 8
  EXPECT_EQ(at(live, Component::kParameters), base + 1'327'104);
}

TEST(FrameworkDistributed, TorchtuneQloraEstimateNamesItsLayout) {
  ModelSpec m = load_model("meta-llama/Llama-3.2-1B");
  TrainingSetup s = torchtune_qlora_1b();
  s.parallel.method = Method::kFsdp;
  s.parallel.dp = 8;
  Estimate e = estimate(m, s, find_gpu("A100-80GB"));
  bool noted = std::any_of(e.notes.begin(), e.notes.end(), [](const std::string& n) {
    return n.find("torchtune sharded QLoRA") != std::string::npos;
  });
  EXPECT_TRUE(noted);
  // The NF4 shards (62.7 MB) instead of bf16 ones (2 · 973 M / 8 = 243 MB).
  EXPECT_LT(e.peak.components[static_cast<size_t>(Component::kParameters)], 160'000'000u);
  s.parallel.fsdp_version = 1;  // the torchtune profile's default is 2
  try {
    estimate(m, s, find_gpu("A100-80GB"));
    ADD_FAILURE() << "torchtune QLoRA under FSDP1 accepted";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("FSDP2"), std::string::npos) << err.what();
  }
}

TEST(FrameworkDistributedRecipe, TorchtuneFullDistributedConfig) {
  TrainingSetup s;
  RecipeResult r = read_recipe_file(recipe("torchtune-llama3_1-8B_full.yaml"), &s);
  EXPECT_EQ(r.framework, Framework::kTorchtune);
  EXPECT_EQ(s.parallel.method, Method::kFsdp);
  EXPECT_EQ(s.parallel.dp, 4);  // tune run --nproc_per_node 4 full_finetune_distributed
  EXPECT_EQ(s.parallel.fsdp_version, 2);
  EXPECT_EQ(s.finetune, FinetuneMode::kFull);
  EXPECT_EQ(s.checkpointing, CheckpointMode::kNonReentrant);
  // custom_sharded_layers: ['tok_embeddings', 'output'] is modelled: no warning.
  EXPECT_TRUE(s.parallel.embedding_units);
  for (const std::string& w : r.warnings) {
    EXPECT_EQ(w.find("distributed recipes are not modelled"), std::string::npos) << w;
    EXPECT_EQ(w.find("custom_sharded_layers"), std::string::npos) << w;
  }
}

TEST(FrameworkDistributedRecipe, CustomShardedLayers) {
  auto read = [](const std::string& value, TrainingSetup* s) {
    return read_recipe(
        "model:\n  _component_: torchtune.models.llama3_1.llama3_1_8b\n"
        "custom_sharded_layers: " +
            value + "\n",
        "x.yaml", s);
  };
  auto about_units = [](const RecipeResult& r) {
    std::vector<std::string> out;
    for (const std::string& w : r.warnings) {
      if (w.find("custom_sharded_layers") != std::string::npos)
        out.push_back(w);
    }
    return out;
  };
  TrainingSetup s;
  std::vector<std::string> w =
      about_units(read("['tok_embeddings', 'output', 'layers.0.mlp']", &s));
  EXPECT_TRUE(s.parallel.embedding_units);
  ASSERT_EQ(w.size(), 1u);  // the module llmem does not model as a unit
  EXPECT_NE(w[0].find("layers.0.mlp"), std::string::npos) << w[0];
  TrainingSetup both;
  EXPECT_TRUE(about_units(read("['tok_embeddings', 'output']", &both)).empty());
  TrainingSetup one;
  EXPECT_EQ(about_units(read("['decoder.tok_embeddings']", &one)).size(), 1u);  // one of two
  EXPECT_TRUE(one.parallel.embedding_units);
  TrainingSetup bad;
  try {
    read("tok_embeddings", &bad);
    ADD_FAILURE() << "a string is not a list";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("custom_sharded_layers"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("x.yaml"), std::string::npos) << e.what();
  }
}

TEST(FrameworkDistributedRecipe, TorchtuneLoraDistributedConfigFromItsHeader) {
  TrainingSetup s;
  RecipeResult r = read_recipe_file(recipe("torchtune-llama3_1-8B_lora.yaml"), &s);
  EXPECT_EQ(s.parallel.method, Method::kFsdp);
  EXPECT_EQ(s.parallel.dp, 2);  // tune run --nproc_per_node 2 lora_finetune_distributed
  EXPECT_EQ(s.finetune, FinetuneMode::kLora);
  // A single-device config stays on one GPU.
  TrainingSetup one;
  read_recipe_file(recipe("torchtune-llama3_2-3B_lora_single_device.yaml"), &one);
  EXPECT_EQ(one.parallel.method, Method::kSingle);
  EXPECT_EQ(one.parallel.dp, 1);
}

TEST(FrameworkDistributedRecipe, TorchtuneFsdpKeys) {
  TrainingSetup s;
  RecipeResult r = read_recipe(
      "model:\n  _component_: torchtune.models.llama3_2.llama3_2_1b\n"
      "tokenizer:\n  max_seq_len: 512\n"
      "fsdp_cpu_offload: True\nfsdp_reshard_after_forward: False\n",
      "tt.yaml", &s);
  EXPECT_EQ(s.parallel.method, Method::kFsdp);
  EXPECT_TRUE(s.parallel.offload_params);
  EXPECT_TRUE(s.parallel.offload_optimizer);
  EXPECT_EQ(s.parallel.fsdp_sharding, FsdpSharding::kShardGradOp);
  bool dp_warned = false;
  for (const std::string& w : r.warnings)
    dp_warned = dp_warned || w.find("--dp") != std::string::npos;
  EXPECT_TRUE(dp_warned);  // no tune run line: the GPU count is the user's
  TrainingSetup bad;
  try {
    read_recipe(
        "model:\n  _component_: torchtune.models.llama3_2.llama3_2_1b\n"
        "fsdp_sharding_strategy: HALF_SHARD\n",
        "bad.yaml", &bad);
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fsdp_sharding_strategy"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("bad.yaml"), std::string::npos);
  }
}

TEST(FrameworkDistributedRecipe, LitgptDevicesSelectFabricFsdp) {
  TrainingSetup s;
  RecipeResult r = read_recipe_file(recipe("litgpt-gemma-2b-full.yaml"), &s);
  EXPECT_EQ(r.framework, Framework::kLitgpt);
  EXPECT_EQ(s.parallel.method, Method::kFsdp);
  EXPECT_EQ(s.parallel.dp, 4);
  EXPECT_EQ(s.parallel.fsdp_version, 1);
  EXPECT_EQ(s.grad_accum, 4);  // global 16 / (micro 1 * 4 devices)
  for (const std::string& w : r.warnings)
    EXPECT_EQ(w.find("devices"), std::string::npos) << w;
  TrainingSetup phi;
  read_recipe_file(recipe("litgpt-phi-2-full.yaml"), &phi);
  EXPECT_EQ(phi.parallel.dp, 2);
  EXPECT_EQ(phi.grad_accum, 1);  // global 8 / (micro 4 * 2 devices)
  TrainingSetup one;
  read_recipe_file(recipe("litgpt-tiny-llama-full.yaml"), &one);
  EXPECT_EQ(one.parallel.method, Method::kSingle);
}

}  // namespace
}  // namespace llmem
