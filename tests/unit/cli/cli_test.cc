// Copyright 2026 The llmem Authors.
// The CLI in-process: outputs, JSON contract and exit codes.

#include "cli.h"

#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli/run_cli.h"

namespace llmem::cli {
namespace {

using testing::Result;
using testing::run_cli;

TEST(Cli, InspectJsonContract) {
  Result r = run_cli({"inspect", "--model", "facebook/opt-1.3b", "--format", "json"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["params"].get<int64_t>(), 1315758080);
  EXPECT_EQ(j["model_type"], "opt");
  EXPECT_EQ(j["vocab_size"].get<int64_t>(), 50272);
  EXPECT_EQ(j["hidden_size"].get<int64_t>(), 2048);
  EXPECT_EQ(j["layers"].get<int64_t>(), 24);
  ASSERT_TRUE(j["tensors"].is_array());
  int64_t sum = 0;
  bool tied = false;
  for (const auto& t : j["tensors"]) {
    ASSERT_TRUE(t.contains("name") && t.contains("shape") && t.contains("params"));
    sum += t["params"].get<int64_t>();
    if (t.contains("tied_to"))
      tied = t["tied_to"] == "model.decoder.embed_tokens.weight";
  }
  EXPECT_EQ(sum, 1315758080);
  EXPECT_TRUE(tied);
}

TEST(Cli, InspectTableShowsCountAndLayers) {
  Result r = run_cli({"inspect", "--model", "deepseek-ai/DeepSeek-V2-Lite"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_NE(r.out.find("15,706,484,224"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("layers 1-26"), std::string::npos) << r.out;
}

TEST(Cli, ModelsListsTheCatalog) {
  Result r = run_cli({"models", "--format", "json"});
  ASSERT_EQ(r.code, kExitOk);
  nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_GE(j["models"].size(), 45u);
}

TEST(Cli, BadInputExitsWithTwo) {
  Result r = run_cli({"inspect", "--model", "facebook/opt-1.3c"});
  EXPECT_EQ(r.code, kExitBadInput);
  EXPECT_NE(r.err.find("did you mean \"facebook/opt-1.3b\""), std::string::npos) << r.err;
  r = run_cli({"inspect", "--model", LLMEM_TEST_DATA_DIR "/bad/truncated.json"});
  EXPECT_EQ(r.code, kExitBadInput);
  EXPECT_NE(r.err.find("truncated.json: malformed JSON at line 5"), std::string::npos) << r.err;
  r = run_cli({"inspect"});
  EXPECT_EQ(r.code, kExitBadInput);
  r = run_cli({"inspect", "--model", "x", "--format", "xml"});
  EXPECT_EQ(r.code, kExitBadInput);
  r = run_cli({"frobnicate"});
  EXPECT_EQ(r.code, kExitBadInput);
}

TEST(Cli, BadInputOfThisSessionsOptionsExitsWithTwo) {
  // Sequence parallelism outside Megatron, an unknown attention kernel, a
  // Gemma-2 config with a negative soft-capping value.
  Result r = run_cli({"estimate", "--model", "meta-llama/Llama-2-7b-hf", "--method", "ddp", "--dp",
                      "2", "--sequence-parallel"});
  EXPECT_EQ(r.code, kExitBadInput);
  EXPECT_NE(r.err.find("--sequence-parallel"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("Megatron's"), std::string::npos) << r.err;
  r = run_cli({"estimate", "--model", "meta-llama/Llama-2-7b-hf", "--method", "megatron", "--tp",
               "2", "--seq", "1023", "--sequence-parallel"});
  EXPECT_EQ(r.code, kExitBadInput);
  EXPECT_NE(r.err.find("must divide by tp"), std::string::npos) << r.err;
  r = run_cli({"estimate", "--model", "meta-llama/Llama-2-7b-hf", "--attention", "sdpa-fast"});
  EXPECT_EQ(r.code, kExitBadInput);
  EXPECT_NE(r.err.find("--attention"), std::string::npos) << r.err;
  // Packing outside torchtune; a version that is not MAJOR.MINOR.
  r = run_cli({"estimate", "--model", "meta-llama/Llama-3.2-1B", "--packed"});
  EXPECT_EQ(r.code, kExitBadInput);
  EXPECT_NE(r.err.find("torchtune"), std::string::npos) << r.err;
  r = run_cli({"estimate", "--model", "meta-llama/Llama-3.2-1B", "--compile"});
  EXPECT_EQ(r.code, kExitBadInput);
  EXPECT_NE(r.err.find("compile"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("torchtune"), std::string::npos) << r.err;
  r = run_cli({"estimate", "--model", "meta-llama/Llama-2-7b-hf", "--method", "ddp", "--dp", "2",
               "--embedding-units"});
  EXPECT_EQ(r.code, kExitBadInput);
  EXPECT_NE(r.err.find("--embedding-units"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("FSDP"), std::string::npos) << r.err;
  r = run_cli({"estimate", "--model", "facebook/opt-125m", "--transformers-version", "latest"});
  EXPECT_EQ(r.code, kExitBadInput);
  EXPECT_NE(r.err.find("MAJOR.MINOR"), std::string::npos) << r.err;
}

TEST(Cli, LigerOutsideTheTrainersDataParallelLayoutsIsBadInput) {
  // Liger's fused cross-entropy needs the whole head: no tensor parallelism.
  Result r = run_cli({"estimate", "--model", "meta-llama/Llama-3.2-1B", "--method", "megatron",
                      "--tp", "2", "--liger"});
  EXPECT_EQ(r.code, kExitBadInput);
  EXPECT_NE(r.err.find("--liger"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("data-parallel methods"), std::string::npos) << r.err;
  // The Trainer's switch: not for torchtune, in estimate or plan.
  r = run_cli(
      {"estimate", "--model", "meta-llama/Llama-3.2-1B", "--framework", "torchtune", "--liger"});
  EXPECT_EQ(r.code, kExitBadInput);
  EXPECT_NE(r.err.find("--liger: Liger kernels are modelled for --framework hf"), std::string::npos)
      << r.err;
  r = run_cli({"plan", "--model", "meta-llama/Llama-3.2-1B", "--gpus", "1", "--framework",
               "torchtune", "--liger"});
  EXPECT_EQ(r.code, kExitBadInput);
  EXPECT_NE(r.err.find("Liger kernels are modelled for --framework hf"), std::string::npos)
      << r.err;
}

TEST(Cli, BadBitsandbytesVersionIsBadInput) {
  Result r = run_cli({"estimate", "--model", "meta-llama/Llama-3.2-1B", "--lora-rank", "8",
                      "--quant", "nf4", "--bitsandbytes-version", "1.2"});
  EXPECT_EQ(r.code, kExitBadInput);
  EXPECT_NE(r.err.find("--bitsandbytes-version"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("expected 0.MINOR[.PATCH] such as 0.45.5"), std::string::npos) << r.err;
  r = run_cli({"estimate", "--model", "meta-llama/Llama-3.2-1B", "--lora-rank", "8", "--quant",
               "nf4", "--bitsandbytes-version", "0.42.0"});
  EXPECT_EQ(r.code, 0) << r.err;
}

TEST(Cli, GeminiWithLoraIsBadInput) {
  // ColossalAI's GeminiPlugin does not support LoRA (gemini_plugin.py:
  // support_lora() False, enable_lora raises NotImplementedError).
  Result r = run_cli({"estimate", "--model", "facebook/opt-1.3b", "--gpu", "V100-16GB", "--batch",
                      "2", "--seq", "512", "--method", "gemini", "--dp", "4", "--lora-rank", "8"});
  EXPECT_EQ(r.code, kExitBadInput);
  EXPECT_NE(r.err.find("--lora-rank"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("GeminiPlugin does not support LoRA"), std::string::npos) << r.err;
  r = run_cli({"estimate", "--model", "facebook/opt-1.3b", "--method", "gemini", "--dp", "2",
               "--lora-rank", "8", "--quant", "nf4"});
  EXPECT_EQ(r.code, kExitBadInput);
  EXPECT_NE(r.err.find("--quant"), std::string::npos) << r.err;
  // Frozen layers and embeddings are modelled: whole fp16 tensors outside
  // the chunks, no fallback note.
  r = run_cli({"estimate", "--model", "facebook/opt-1.3b", "--method", "gemini", "--dp", "4",
               "--freeze-layers", "12", "--freeze-embeddings"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_EQ(r.out.find("not simulated"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("frozen elements kept whole"), std::string::npos) << r.out;
}

TEST(Cli, HelpExitsZero) {
  Result r = run_cli({"--help"});
  EXPECT_EQ(r.code, kExitOk);
  EXPECT_NE(r.out.find("inspect"), std::string::npos);
}

}  // namespace
}  // namespace llmem::cli

namespace llmem::cli {
namespace {

TEST(Cli, EstimateJsonContract) {
  Result r = run_cli({"estimate", "--model", "meta-llama/Llama-3.2-1B", "--batch", "2", "--seq",
                      "512", "--gpu", "RTX4090", "--attention", "sdpa", "--format", "json"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out);
  uint64_t sum = 0;
  for (const auto& [k, v] : j["components"].items())
    sum += v.get<uint64_t>();
  EXPECT_EQ(sum, j["peak"]["allocated_bytes"].get<uint64_t>());
  EXPECT_GE(j["peak"]["reserved_bytes"].get<uint64_t>(), sum);
  EXPECT_GT(j["peak"]["device_bytes"].get<uint64_t>(), j["peak"]["reserved_bytes"].get<uint64_t>());
  EXPECT_TRUE(j["peak"]["phase"].is_string());
  EXPECT_TRUE(j["fits"].is_boolean());
  EXPECT_GT(j["gpu"]["capacity_bytes"].get<uint64_t>(), 20ull << 30);
  EXPECT_EQ(j["model"]["params"].get<int64_t>(), j["model"]["trainable_params"].get<int64_t>());
}

TEST(Cli, EstimateOtherFormats) {
  Result csv = run_cli({"estimate", "--model", "facebook/opt-125m", "--format", "csv"});
  ASSERT_EQ(csv.code, kExitOk) << csv.err;
  EXPECT_EQ(csv.out.rfind("event,step,phase,layer,allocated_bytes,reserved_bytes\n", 0), 0u);
  Result svg = run_cli({"estimate", "--model", "facebook/opt-125m", "--format", "svg"});
  ASSERT_EQ(svg.code, kExitOk);
  EXPECT_EQ(svg.out.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.out.find("</svg>"), std::string::npos);
  Result both = run_cli({"estimate", "--model", "facebook/opt-1.3b", "--estimator", "both",
                         "--format", "json", "--grad-ckpt"});
  ASSERT_EQ(both.code, kExitOk) << both.err;
  nlohmann::json j = nlohmann::json::parse(both.out);
  uint64_t parts = 0;
  for (const char* k : {"m_base", "m_p", "m_os", "m_out", "m_lm"})
    parts += j["paper"][k].get<uint64_t>();
  EXPECT_EQ(parts, j["paper"]["peak_bytes"].get<uint64_t>());
  EXPECT_TRUE(j["llmem"]["device_bytes"].is_number());
}

TEST(Cli, EstimateBadInput) {
  Result r = run_cli({"estimate", "--model", "facebook/opt-125m", "--gpu", "A100-81GB"});
  EXPECT_EQ(r.code, kExitBadInput);
  EXPECT_NE(r.err.find("unknown GPU \"A100-81GB\""), std::string::npos) << r.err;
  r = run_cli({"estimate", "--model", "facebook/opt-125m", "--precision", "bf17"});
  EXPECT_EQ(r.code, kExitBadInput);
  EXPECT_NE(r.err.find("--precision: unknown value \"bf17\" (did you mean \"bf16\"?)"),
            std::string::npos)
      << r.err;
  r = run_cli({"estimate", "--model", "facebook/opt-125m", "--batch", "0"});
  EXPECT_EQ(r.code, kExitBadInput);
  r = run_cli({"estimate", "--model", "facebook/opt-125m", "--batch", "abc"});
  EXPECT_EQ(r.code, kExitBadInput);
  r = run_cli({"estimate", "--model", LLMEM_TEST_DATA_DIR "/stablelm-parallel.json"});
  EXPECT_EQ(r.code, 0) << r.err;  // traced since the CPU tier measured the variant
  r = run_cli({"validate", "/nonexistent.csv"});
  EXPECT_EQ(r.code, kExitBadInput);
}

}  // namespace
}  // namespace llmem::cli

namespace llmem::cli {
namespace {

TEST(Cli, QloraOptions) {
  Result r = run_cli({"estimate", "--model", "meta-llama/Llama-3.2-1B", "--quant", "nf4",
                      "--lora-rank", "8", "--format", "json"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["setup"]["finetune"], "qlora");
  r = run_cli({"estimate", "--model", "meta-llama/Llama-3.2-1B", "--quant", "nf4"});
  EXPECT_EQ(r.code, kExitBadInput);
  EXPECT_NE(r.err.find("give --lora-rank too"), std::string::npos) << r.err;
  r = run_cli(
      {"estimate", "--model", "meta-llama/Llama-3.2-1B", "--quant", "int3", "--lora-rank", "8"});
  EXPECT_EQ(r.code, kExitBadInput);
  r = run_cli({"estimate", "--model", "meta-llama/Llama-3.2-1B", "--quant", "nf4", "--lora-rank",
               "8", "--quant-block", "3"});
  EXPECT_EQ(r.code, kExitBadInput);
  r = run_cli({"estimate", "--model", "meta-llama/Llama-3.2-1B", "--freeze-layers", "-2"});
  EXPECT_EQ(r.code, kExitBadInput);
  // fp32 compute only changes transient dequantized weights (>=); base-dtype
  // adapters save less than fp32 ones.
  auto peak = [](std::vector<const char*> extra) {
    std::vector<const char*> args = {"estimate", "--model",     "meta-llama/Llama-3.2-1B",
                                     "--quant",  "nf4",         "--lora-rank",
                                     "64",       "--precision", "bf16",
                                     "--format", "json"};
    args.insert(args.end(), extra.begin(), extra.end());
    Result res = run_cli(args);
    EXPECT_EQ(res.code, kExitOk) << res.err;
    return nlohmann::json::parse(res.out)["phase_peaks"]["forward"].get<uint64_t>();
  };
  uint64_t base = peak({});
  EXPECT_GE(peak({"--quant-compute", "fp32"}), base);
  EXPECT_LT(peak({"--lora-dtype", "base"}), base);
  r = run_cli({"estimate", "--model", "meta-llama/Llama-3.2-1B", "--lora-rank", "8", "--lora-dtype",
               "int8"});
  EXPECT_EQ(r.code, kExitBadInput);
}

}  // namespace
}  // namespace llmem::cli

namespace llmem::cli {
namespace {

TEST(Cli, DistributedRanksContract) {
  Result r = run_cli({"estimate", "--model", "meta-llama/Llama-3.2-1B", "--gpu", "A100-80GB",
                      "--method", "zero3", "--dp", "4", "--format", "json"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out);
  ASSERT_TRUE(j["ranks"].is_array());
  ASSERT_EQ(j["ranks"].size(), 1u);
  const nlohmann::json& role = j["ranks"][0];
  EXPECT_EQ(role["ranks"], nlohmann::json({0, 1, 2, 3}));
  EXPECT_EQ(role["device_bytes"], j["peak"]["device_bytes"]);
  for (const char* key : {"allocated_bytes", "reserved_bytes", "components"})
    EXPECT_TRUE(role.contains(key)) << key;
  EXPECT_EQ(j["setup"]["method"], "zero3");
  Result table =
      run_cli({"estimate", "--model", "meta-llama/Llama-3.2-1B", "--method", "ddp", "--dp", "2"});
  ASSERT_EQ(table.code, kExitOk) << table.err;
  EXPECT_NE(table.out.find("per rank (ddp, dp 2"), std::string::npos) << table.out;
  Result bad = run_cli({"estimate", "--model", "meta-llama/Llama-3.2-1B", "--method", "ddpp"});
  EXPECT_EQ(bad.code, kExitBadInput);
  EXPECT_NE(bad.err.find("did you mean \"ddp\""), std::string::npos) << bad.err;
  Result tp = run_cli(
      {"estimate", "--model", "meta-llama/Llama-3.2-1B", "--method", "megatron", "--tp", "5"});
  EXPECT_EQ(tp.code, kExitBadInput);
  EXPECT_NE(tp.err.find("not divisible by tp 5"), std::string::npos) << tp.err;
}

TEST(Cli, InterleavedScheduleOptions) {
  // Llama-2-7B: 32 layers; pp 4 x V 2 = 8 virtual stages of 4 layers.
  std::vector<const char*> ok = {"estimate",
                                 "--model",
                                 "meta-llama/Llama-2-7b-hf",
                                 "--method",
                                 "megatron",
                                 "--pp",
                                 "4",
                                 "--schedule",
                                 "interleaved",
                                 "--virtual-stages",
                                 "2",
                                 "--grad-accum",
                                 "8",
                                 "--seq",
                                 "256",
                                 "--format",
                                 "json"};
  Result r = run_cli(ok);
  ASSERT_EQ(r.code, kExitOk) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["ranks"].size(), 4u);
  EXPECT_EQ(j["ranks"][0]["role"], "stage 0 (layers 0-3, 16-19)");
  EXPECT_EQ(j["ranks"][3]["role"], "stage 3 (layers 12-15, 28-31)");
  EXPECT_EQ(j["setup"]["schedule"], "interleaved");
  EXPECT_EQ(j["setup"]["virtual_stages"], 2);
  // Each refusal names its option.
  auto refused = [&](std::vector<const char*> args, const std::string& needle) {
    Result bad = run_cli(args);
    EXPECT_EQ(bad.code, kExitBadInput) << needle;
    EXPECT_NE(bad.err.find(needle), std::string::npos) << bad.err;
  };
  std::vector<const char*> base = {
      "estimate", "--model", "meta-llama/Llama-2-7b-hf", "--method", "megatron", "--seq", "256"};
  auto with = [&](std::vector<const char*> extra) {
    std::vector<const char*> a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  refused(with({"--pp", "4", "--virtual-stages", "2"}), "need --schedule interleaved");
  refused(with({"--pp", "4", "--schedule", "interleaved", "--virtual-stages", "0"}),
          "--virtual-stages");
  refused(with({"--pp", "4", "--schedule", "interleaved", "--grad-accum", "8"}),
          "at least 2 model chunks");
  refused(with({"--pp", "4", "--schedule", "interleaved", "--virtual-stages", "3", "--grad-accum",
                "8"}),
          "32 decoder layers do not split into pp x V = 4 x 3");
  refused(with({"--pp", "4", "--schedule", "interleaved", "--virtual-stages", "2", "--grad-accum",
                "6"}),
          "multiple of pp = 4");
  refused(with({"--tp", "2", "--schedule", "interleaved", "--virtual-stages", "2"}),
          "at least 2 pipeline stages");
  refused({"estimate", "--model", "meta-llama/Llama-2-7b-hf", "--method", "ddp", "--dp", "2",
           "--pp", "2", "--schedule", "interleaved", "--virtual-stages", "2", "--grad-accum", "2"},
          "use --method megatron");
  refused(with({"--pp", "4", "--schedule", "interleave"}), "did you mean \"interleaved\"");
}

TEST(Cli, RecipeSetsTheFrameworkAndWarnsOnStderr) {
  Result r = run_cli({"estimate", "--model", "meta-llama/Llama-3.2-3B", "--recipe",
                      LLMEM_TEST_DATA_DIR "/recipes/torchtune-llama3_2-3B_lora_single_device.yaml",
                      "--seq", "512", "--format", "json"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_NE(r.err.find("warning:"), std::string::npos);
  EXPECT_NE(r.err.find("loss._component_"), std::string::npos);
  nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_GT(j["model"]["trainable_params"].get<int64_t>(), 0);
}

TEST(Cli, TorchtuneShardedQlora) {
  // --framework torchtune --method fsdp --quant nf4: FSDP2 over NF4 weights
  // (docs/frameworks.md); before, an input error.
  Result r = run_cli({"estimate", "--model", "meta-llama/Llama-3.2-1B", "--framework", "torchtune",
                      "--method", "fsdp", "--dp", "8", "--quant", "nf4", "--lora-rank", "8",
                      "--batch", "1", "--seq", "128", "--format", "json"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["setup"]["finetune"], "qlora");
  EXPECT_EQ(j["setup"]["method"], "fsdp");
  bool noted = false;
  for (const auto& n : j["notes"])
    noted = noted || n.get<std::string>().find("torchtune sharded QLoRA") != std::string::npos;
  EXPECT_TRUE(noted) << r.out;
  // FSDP1 is not what torchtune runs: a bad-input exit that names the option.
  Result v1 = run_cli({"estimate", "--model", "meta-llama/Llama-3.2-1B", "--framework", "torchtune",
                       "--method", "fsdp", "--dp", "8", "--quant", "nf4", "--lora-rank", "8",
                       "--fsdp-version", "1"});
  EXPECT_EQ(v1.code, kExitBadInput);
  EXPECT_NE(v1.err.find("--fsdp-version"), std::string::npos) << v1.err;
  EXPECT_NE(v1.err.find("FSDP2"), std::string::npos) << v1.err;
  // The 405B QLoRA config (torchtune 1814feb): 8 ranks from its header,
  // QLoRA from its qlora_ builder, nn.CrossEntropyLoss (no output chunks),
  // and a warning that its `fsdp:` map is read by no recipe.
  Result cfg = run_cli({"estimate", "--model", "meta-llama/Llama-3.1-405B", "--recipe",
                        LLMEM_TEST_DATA_DIR "/recipes/torchtune-llama3_1-405B_qlora-1814feb.yaml",
                        "--seq", "2048", "--format", "json"});
  ASSERT_EQ(cfg.code, kExitOk) << cfg.err;
  EXPECT_NE(cfg.err.find("'fsdp'"), std::string::npos) << cfg.err;
  EXPECT_NE(cfg.err.find("fsdp_cpu_offload"), std::string::npos) << cfg.err;
  nlohmann::json q = nlohmann::json::parse(cfg.out);
  EXPECT_EQ(q["setup"]["finetune"], "qlora");
  EXPECT_EQ(q["setup"]["dp"], 8);
  EXPECT_EQ(q["setup"]["lora_rank"], 16);
  EXPECT_EQ(q["setup"]["batch"], 1);
  // NF4 shards of 405B over 8 ranks, about 0.516 byte per weight over 8 (24.1 GiB),
  // against 94.6 GiB of bf16 shards.
  double params = q["components"]["parameters"].get<double>() / (1u << 30);
  EXPECT_GT(params, 24.0);
  EXPECT_LT(params, 26.0);
}

TEST(Cli, FrameworkOptionIsChecked) {
  Result r = run_cli({"estimate", "--model", "meta-llama/Llama-3.2-1B", "--framework", "keras"});
  EXPECT_EQ(r.code, kExitBadInput);
  r = run_cli({"estimate", "--model", "meta-llama/Llama-3.2-1B", "--framework", "litgpt",
               "--lora-rank", "8", "--lora-targets", "query,value,head"});
  EXPECT_EQ(r.code, kExitOk) << r.err;
  r = run_cli({"estimate", "--model", "meta-llama/Llama-3.2-1B", "--recipe",
               LLMEM_TEST_DATA_DIR "/recipes/missing.yaml"});
  EXPECT_EQ(r.code, kExitBadInput);
  EXPECT_NE(r.err.find("missing.yaml"), std::string::npos);
}

TEST(Cli, FsdpConfigSetsTheMethodAndWarnsOnStderr) {
  Result r = run_cli({"estimate", "--model", "meta-llama/Llama-3.2-1B", "--fsdp-config",
                      LLMEM_TEST_DATA_DIR "/fsdp/shard-grad-op-offload.yaml", "--format", "json"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["setup"]["method"], "fsdp");
  EXPECT_NE(r.err.find("warning:"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("fsdp_backward_prefetch"), std::string::npos) << r.err;
  Result bad = run_cli({"estimate", "--model", "meta-llama/Llama-3.2-1B", "--fsdp-config",
                        LLMEM_TEST_DATA_DIR "/fsdp/bad-distributed-type.yaml"});
  EXPECT_EQ(bad.code, kExitBadInput);
  EXPECT_NE(bad.err.find("distributed_type"), std::string::npos) << bad.err;
}

}  // namespace
}  // namespace llmem::cli
