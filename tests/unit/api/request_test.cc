// Copyright 2026 The llmem Authors.
// The request layer: every key, and every way a request can be wrong.

#include "llmem/request.h"

#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "llmem/error.h"

namespace llmem {
namespace {

using nlohmann::json;

Request parse(const json& j) {
  return parse_request(j.dump());
}

json base(json extra = json::object()) {
  json j = {{"model", "facebook/opt-125m"}};
  j.update(extra);
  return j;
}

// The message of the Error that parsing `j` throws, or "" when none.
std::string error_of(const json& j, RequestOptions options = {}) {
  try {
    parse_request(j.dump(), options);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_ERROR(request, text)                                               \
  do {                                                                            \
    std::string message_ = error_of(request);                                     \
    EXPECT_NE(message_.find(text), std::string::npos) << "message: " << message_; \
  } while (0)

TEST(Request, DefaultsMatchTheCli) {
  Request r = parse(base());
  EXPECT_EQ(r.model.name, "facebook/opt-125m");
  EXPECT_EQ(r.gpu.name, "A100-80GB");
  TrainingSetup d;
  EXPECT_EQ(r.setup.batch, d.batch);
  EXPECT_EQ(r.setup.seq, d.seq);
  EXPECT_EQ(r.setup.precision, Precision::kBf16Mixed);
  EXPECT_EQ(r.setup.optimizer, OptimizerKind::kAdamW);
  EXPECT_EQ(r.setup.attention, AttentionImpl::kEager);
  EXPECT_EQ(r.setup.checkpointing, CheckpointMode::kOff);
  EXPECT_EQ(r.setup.finetune, FinetuneMode::kFull);
  EXPECT_EQ(r.setup.device, Device::kCuda);
  EXPECT_EQ(r.setup.dropout, -1);
  EXPECT_EQ(r.setup.torch_version, 204);
  EXPECT_EQ(r.setup.parallel.method, Method::kSingle);
  EXPECT_EQ(r.estimator, EstimatorKind::kLlmem);
  EXPECT_EQ(r.chunk_elems, 0);
}

TEST(Request, NullIsAbsent) {
  Request r = parse(base({{"batch", nullptr}, {"gpu", nullptr}, {"lora", nullptr}}));
  EXPECT_EQ(r.setup.batch, 1);
  EXPECT_EQ(r.gpu.name, "A100-80GB");
  EXPECT_EQ(r.setup.finetune, FinetuneMode::kFull);
}

TEST(Request, StepKeys) {
  Request r = parse(base({{"batch", 4},
                          {"seq", 1024},
                          {"grad_accum", 8},
                          {"precision", "fp16-mixed"},
                          {"optimizer", "adamw-fused"},
                          {"attention", "sdpa"},
                          {"grad_ckpt", true},
                          {"ckpt_mode", "non-reentrant"},
                          {"dropout", 0.1},
                          {"freeze_layers", 3},
                          {"freeze_embeddings", true},
                          {"framework", "torchtune"},
                          {"torch_version", "2.1.0+cu121"},
                          {"expandable_segments", true},
                          {"max_split_size_mb", 128},
                          {"device", "cpu"},
                          {"gpu", "rtx4090"},
                          {"estimator", "both"},
                          {"chunk_elems", 4096}}));
  const TrainingSetup& s = r.setup;
  EXPECT_EQ(s.batch, 4);
  EXPECT_EQ(s.seq, 1024);
  EXPECT_EQ(s.grad_accum, 8);
  EXPECT_EQ(s.precision, Precision::kFp16Mixed);
  EXPECT_EQ(s.optimizer, OptimizerKind::kAdamWFused);
  EXPECT_EQ(s.attention, AttentionImpl::kSdpa);
  EXPECT_EQ(s.checkpointing, CheckpointMode::kNonReentrant);
  EXPECT_DOUBLE_EQ(s.dropout, 0.1);
  EXPECT_EQ(s.freeze_layers, 3);
  EXPECT_TRUE(s.freeze_embeddings);
  EXPECT_EQ(s.framework, Framework::kTorchtune);
  EXPECT_EQ(s.torch_version, 201);
  EXPECT_TRUE(s.allocator.expandable_segments);
  EXPECT_EQ(s.allocator.max_split_size, 128ull << 20);
  EXPECT_EQ(s.device, Device::kCpu);
  EXPECT_EQ(r.gpu.name, "RTX4090");
  EXPECT_EQ(r.estimator, EstimatorKind::kBoth);
  EXPECT_EQ(r.chunk_elems, 4096);
  EXPECT_EQ(parse(base({{"grad_ckpt", true}})).setup.checkpointing, CheckpointMode::kReentrant);
  EXPECT_EQ(parse(base({{"estimator", "paper"}})).estimator, EstimatorKind::kPaper);
  EXPECT_EQ(parse(base({{"framework", "litgpt"}})).setup.framework, Framework::kLitgpt);
}

TEST(Request, GpuMem) {
  Request r = parse(base({{"gpu_mem", 24}}));
  EXPECT_EQ(r.gpu.name, "custom");
  EXPECT_EQ(r.gpu.capacity_bytes, 24ull << 30);
}

TEST(Request, LoraKeys) {
  Request r = parse(base({{"lora_rank", 16},
                          {"lora_alpha", 32},
                          {"lora_dropout", 0.05},
                          {"lora_targets", {"q_proj", "v_proj"}},
                          {"lora_dtype", "base"}}));
  EXPECT_EQ(r.setup.finetune, FinetuneMode::kLora);
  EXPECT_EQ(r.setup.lora.rank, 16);
  EXPECT_DOUBLE_EQ(r.setup.lora.alpha, 32);
  EXPECT_DOUBLE_EQ(r.setup.lora.dropout, 0.05);
  EXPECT_EQ(r.setup.lora.targets, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_FALSE(r.setup.lora.adapter_fp32);
  r = parse(base({{"lora_rank", 8}, {"lora_targets", "q_proj,k_proj"}}));
  EXPECT_EQ(r.setup.lora.targets, (std::vector<std::string>{"q_proj", "k_proj"}));
  EXPECT_TRUE(r.setup.lora.adapter_fp32);
  EXPECT_EQ(parse(base({{"lora_rank", 0}})).setup.finetune, FinetuneMode::kFull);
}

TEST(Request, QloraKeys) {
  Request r = parse(base({{"lora_rank", 8},
                          {"quant", "fp4"},
                          {"quant_compute", "fp32"},
                          {"no_double_quant", true},
                          {"quant_block", 128},
                          {"no_prepare_kbit", true}}));
  EXPECT_EQ(r.setup.finetune, FinetuneMode::kQlora);
  EXPECT_FALSE(r.setup.quant.nf4);
  EXPECT_TRUE(r.setup.quant.compute_fp32);
  EXPECT_FALSE(r.setup.quant.double_quant);
  EXPECT_EQ(r.setup.quant.block, 128);
  EXPECT_FALSE(r.setup.quant.prepare_kbit);
  r = parse(base({{"lora_rank", 8}, {"quant", "nf4"}}));
  EXPECT_TRUE(r.setup.quant.nf4);
  EXPECT_TRUE(r.setup.quant.double_quant);
  EXPECT_FALSE(r.setup.quant.compute_fp32);
}

TEST(Request, PeftLoraConfig) {
  json lora = {{"r", 16},
               {"lora_alpha", 32},
               {"lora_dropout", 0.1},
               {"target_modules", {"q_proj", "v_proj"}},
               {"bias", "none"},
               {"task_type", "CAUSAL_LM"},
               {"peft_type", "LORA"},
               {"use_dora", false},
               {"modules_to_save", nullptr},
               {"rank_pattern", json::object()},
               {"fan_in_fan_out", false}};
  Request r = parse(base({{"lora", lora}}));
  EXPECT_EQ(r.setup.finetune, FinetuneMode::kLora);
  EXPECT_EQ(r.setup.lora.rank, 16);
  EXPECT_DOUBLE_EQ(r.setup.lora.alpha, 32);
  EXPECT_DOUBLE_EQ(r.setup.lora.dropout, 0.1);
  EXPECT_EQ(r.setup.lora.targets, (std::vector<std::string>{"q_proj", "v_proj"}));
  // A string is a regular expression over full module names (re.fullmatch).
  r = parse(base({{"lora", {{"r", 4}, {"target_modules", ".*\\.(q_proj|k_proj)"}}}}));
  EXPECT_EQ(r.setup.lora.targets, (std::vector<std::string>{"k_proj", "q_proj"}));
  r = parse(base({{"lora", {{"r", 4}, {"target_modules", "all-linear"}}}}));
  EXPECT_EQ(r.setup.lora.targets,
            (std::vector<std::string>{"fc1", "fc2", "k_proj", "out_proj", "q_proj", "v_proj"}));
  // Defaults: PEFT's r=8 and the family's targets.
  r = parse(base({{"lora", json::object()}}));
  EXPECT_EQ(r.setup.lora.rank, 8);
  EXPECT_TRUE(r.setup.lora.targets.empty());
  r = parse(base({{"lora", {{"r", 8}}}, {"quant", "nf4"}}));
  EXPECT_EQ(r.setup.finetune, FinetuneMode::kQlora);
}

TEST(Request, ModelAsConfigObject) {
  json config = {{"model_type", "llama"},    {"_name_or_path", "my/tiny-llama"},
                 {"hidden_size", 256},       {"intermediate_size", 688},
                 {"num_attention_heads", 4}, {"num_hidden_layers", 2},
                 {"vocab_size", 1000},       {"torch_dtype", "bfloat16"}};
  Request r = parse({{"model", config}, {"batch", 2}});
  EXPECT_EQ(r.model.name, "my/tiny-llama");
  EXPECT_EQ(r.model.num_layers, 2);
  EXPECT_EQ(r.model.source, "model");
  config.erase("_name_or_path");
  EXPECT_EQ(parse({{"model", config}}).model.name, "model");
  EXPECT_EQ(load_model_json(config.dump()).hidden_size, 256);
  EXPECT_EQ(load_model_json("\"facebook/opt-125m\"").name, "facebook/opt-125m");
  EXPECT_ERROR(json({{"model", {{"model_type", "llama"}, {"hidden_size", -1}}}}),
               "model: key 'hidden_size'");
}

TEST(Request, ParallelKeys) {
  Request r = parse(base({{"method", "zero3"},
                          {"dp", 4},
                          {"tp", 2},
                          {"pp", 2},
                          {"gpus_per_node", 4},
                          {"schedule", "gpipe"},
                          {"sequence_parallel", true},
                          {"offload_optimizer", true},
                          {"offload_params", true},
                          {"ddp_bucket_mb", 50},
                          {"gradient_as_bucket_view", true},
                          {"reduce_bucket_size", 1000},
                          {"allgather_bucket_size", 2000},
                          {"stage3_prefetch_bucket_size", 3000},
                          {"stage3_max_live_parameters", 4000},
                          {"contiguous_gradients", false},
                          {"zero_impl", "torch"},
                          {"fsdp_sharding", "hybrid-shard"},
                          {"fsdp_version", 2},
                          {"limit_all_gathers", false}}));
  const ParallelSetup& p = r.setup.parallel;
  EXPECT_EQ(p.method, Method::kZero3);
  EXPECT_EQ(p.gpus(), 16);
  EXPECT_EQ(p.gpus_per_node, 4);
  EXPECT_EQ(p.schedule, PipelineSchedule::kGpipe);
  EXPECT_TRUE(p.sequence_parallel && p.offload_optimizer && p.offload_params);
  EXPECT_DOUBLE_EQ(p.ddp_bucket_mb, 50);
  EXPECT_TRUE(p.gradient_as_bucket_view);
  EXPECT_EQ(p.reduce_bucket_size, 1000);
  EXPECT_EQ(p.allgather_bucket_size, 2000);
  EXPECT_EQ(p.stage3_prefetch_bucket_size, 3000);
  EXPECT_EQ(p.stage3_max_live_parameters, 4000);
  EXPECT_FALSE(p.contiguous_gradients);
  EXPECT_TRUE(p.torch_zero);
  EXPECT_EQ(p.fsdp_sharding, FsdpSharding::kHybridShard);
  EXPECT_EQ(parse(base({{"fsdp_sharding", "SHARD_GRAD_OP"}})).setup.parallel.fsdp_sharding,
            FsdpSharding::kShardGradOp);
  EXPECT_FALSE(parse(base()).setup.parallel.torch_zero);
  const ParallelSetup& o = parse(base({{"offload", {"params", "optimizer"}}})).setup.parallel;
  EXPECT_TRUE(o.offload_params && o.offload_optimizer);
  EXPECT_TRUE(parse(base({{"offload", "optimizer"}})).setup.parallel.offload_optimizer);
  EXPECT_FALSE(parse(base({{"offload", "optimizer"}})).setup.parallel.offload_params);
  EXPECT_EQ(p.fsdp_version, 2);
  EXPECT_FALSE(p.limit_all_gathers);
  EXPECT_TRUE(parse(base({{"method", "fsdp"}, {"dp", 2}, {"embedding_units", true}}))
                  .setup.parallel.embedding_units);
  EXPECT_NE(error_of(base({{"method", "ddp"}, {"dp", 2}, {"embedding_units", true}}))
                .find("embedding_units"),
            std::string::npos);
  EXPECT_EQ(p.virtual_stages, 1);
  const ParallelSetup& v =
      parse(base({{"schedule", "interleaved"}, {"virtual_stages", 2}})).setup.parallel;
  EXPECT_EQ(v.schedule, PipelineSchedule::kInterleaved);
  EXPECT_EQ(v.virtual_stages, 2);
}

TEST(Request, EveryDocumentedKeyIsAccepted) {
  // Each key with a valid value parses (the unknown-key check and the parser agree).
  json values = {{"gpu", "H100-80GB"},
                 {"gpu_mem", 40},
                 {"device", "cuda"},
                 {"batch", 2},
                 {"seq", 64},
                 {"grad_accum", 2},
                 {"precision", "fp32"},
                 {"optimizer", "sgd"},
                 {"attention", "eager"},
                 {"grad_ckpt", true},
                 {"ckpt_mode", "reentrant"},
                 {"dropout", 0},
                 {"freeze_layers", 1},
                 {"freeze_embeddings", false},
                 {"framework", "hf"},
                 {"lora", {{"r", 2}}},
                 {"lora_rank", 2},
                 {"lora_alpha", 4},
                 {"lora_dropout", 0},
                 {"lora_targets", {"q_proj"}},
                 {"lora_dtype", "fp32"},
                 {"quant", "nf4"},
                 {"quant_compute", "bf16"},
                 {"no_double_quant", false},
                 {"quant_block", 64},
                 {"no_prepare_kbit", false},
                 {"torch_version", "2.4"},
                 {"transformers_version", "4.28"},
                 {"bitsandbytes_version", "0.43.1"},
                 {"expandable_segments", false},
                 {"max_split_size_mb", 20},
                 {"method", "ddp"},
                 {"dp", 2},
                 {"tp", 1},
                 {"pp", 1},
                 {"gpus_per_node", 8},
                 {"schedule", "1f1b"},
                 {"virtual_stages", 1},
                 {"sequence_parallel", false},
                 {"offload", "optimizer"},
                 {"offload_optimizer", false},
                 {"offload_params", false},
                 {"ddp_bucket_mb", 25},
                 {"gradient_as_bucket_view", false},
                 {"reduce_bucket_size", 1},
                 {"allgather_bucket_size", 1},
                 {"stage3_prefetch_bucket_size", 1},
                 {"stage3_max_live_parameters", 1},
                 {"contiguous_gradients", true},
                 {"overlap_comm", true},
                 {"zero_impl", "torch"},
                 {"fsdp_sharding", "no-shard"},
                 {"fsdp_version", 1},
                 {"limit_all_gathers", true},
                 {"embedding_units", false},
                 {"deepspeed_config", {{"zero_optimization", {{"stage", 1}}}}},
                 {"fsdp_config", {{"distributed_type", "FSDP"}}},
                 {"estimator", "llmem"},
                 {"chunk_elems", 0},
                 {"recipe", LLMEM_TEST_DATA_DIR "/recipes/litgpt-llama-2-7b-lora.yaml"},
                 {"optimizer_in_bwd", false},
                 {"activation_offload", false},
                 {"paged_optimizer", false},
                 {"sdpa_mask", true},
                 {"packed", false},
                 {"compile", false},
                 {"liger", false},
                 {"output_chunks", 0},
                 {"lm_head_chunk", 0}};
  for (const std::string& key : request_keys()) {
    if (key == "model")
      continue;
    ASSERT_TRUE(values.contains(key)) << key;
    json j = base({{key, values[key]}});
    if (key == "quant")
      j["lora_rank"] = 4;
    if (key == "ckpt_mode")
      j["grad_ckpt"] = true;
    EXPECT_EQ(error_of(j), "") << key;
  }
  EXPECT_EQ(values.size() + 1, request_keys().size());
}

TEST(Request, UnknownKeysAreSuggested) {
  EXPECT_EQ(error_of(base({{"batchsize", 4}})),
            "request: unknown key 'batchsize' (did you mean 'batch'?)");
  EXPECT_EQ(error_of(base({{"zzzzzzzz", 4}})), "request: unknown key 'zzzzzzzz'");
  EXPECT_EQ(error_of(base({{"gradient_accumulation_steps", 4}})),
            "request: unknown key 'gradient_accumulation_steps' (did you mean 'grad_accum'?)");
  EXPECT_ERROR(base({{"max_seq_length", 4}}), "(did you mean 'seq'?)");
  EXPECT_ERROR(base({{"lora", {{"rank", 4}}}}), "unknown key 'lora.rank' (did you mean 'lora.r'?)");
  // A field of a newer PEFT at its default is tolerated, with a warning.
  Request r = parse(base({{"lora", {{"r", 4}, {"future_option", nullptr}, {"other", false}}}}));
  ASSERT_EQ(r.warnings.size(), 2u);
  EXPECT_EQ(r.warnings[0],
            "lora.future_option: not a LoraConfig field llmem knows; ignored at its default value");
  EXPECT_ERROR(base({{"lora", {{"future_option", 3}}}}), "unknown key 'lora.future_option'");
}

TEST(Request, WrongTypes) {
  EXPECT_EQ(error_of(base({{"batch", "4"}})),
            "request: key 'batch': expected an integer, got \"4\"");
  EXPECT_ERROR(base({{"batch", 4.5}}), "key 'batch': expected an integer, got 4.5");
  EXPECT_ERROR(base({{"batch", true}}), "key 'batch': expected an integer, got true");
  EXPECT_ERROR(base({{"seq", json::array()}}), "key 'seq': expected an integer");
  EXPECT_ERROR(base({{"grad_ckpt", 1}}), "key 'grad_ckpt': expected true or false, got 1");
  EXPECT_ERROR(base({{"precision", 16}}), "key 'precision': expected a string, got 16");
  EXPECT_ERROR(base({{"lora_alpha", "x"}}), "key 'lora_alpha': expected a number");
  EXPECT_ERROR(base({{"lora_targets", 3}}), "key 'lora_targets': expected a list of module names");
  EXPECT_ERROR(base({{"lora_targets", {"q_proj", 1}}}), "key 'lora_targets'");
  EXPECT_ERROR(base({{"lora_targets", "q_proj,,v_proj"}}), "key 'lora_targets'");
  EXPECT_ERROR(json({{"model", 12}}), "key 'model': expected a catalog name");
  EXPECT_ERROR(base({{"lora", "r=8"}}), "key 'lora': expected a PEFT LoraConfig");
  EXPECT_ERROR(base({{"lora", {{"r", "8"}}}}), "key 'lora.r': expected an integer");
  EXPECT_ERROR(base({{"lora", {{"target_modules", 5}}}}), "key 'lora.target_modules'");
  EXPECT_ERROR(base({{"batch", 18446744073709551615ull}}), "key 'batch': expected an integer");
}

TEST(Request, OutOfRange) {
  EXPECT_EQ(error_of(base({{"batch", 0}})),
            "request: key 'batch': expected a micro-batch between 1 and 2^20, got 0");
  EXPECT_ERROR(base({{"batch", -3}}), "key 'batch': expected a micro-batch");
  EXPECT_ERROR(base({{"seq", 1}}), "key 'seq': expected a sequence length");
  EXPECT_ERROR(base({{"grad_accum", 0}}), "key 'grad_accum'");
  EXPECT_ERROR(base({{"lora_rank", -1}}), "key 'lora_rank': expected a non-negative rank");
  EXPECT_ERROR(base({{"lora_dropout", 1.5}}), "key 'lora_dropout'");
  EXPECT_ERROR(base({{"dropout", -0.5}}), "key 'dropout'");
  EXPECT_ERROR(base({{"freeze_layers", -2}}), "key 'freeze_layers'");
  EXPECT_ERROR(base({{"freeze_layers", 13}}), "at most the model's 12 layers");
  EXPECT_ERROR(base({{"lora_rank", 8}, {"quant", "nf4"}, {"quant_block", 3}}),
               "key 'quant_block': expected a block size between 16 and 4096, got 3");
  EXPECT_ERROR(base({{"max_split_size_mb", 5}}), "key 'max_split_size_mb'");
  EXPECT_ERROR(base({{"gpu_mem", 0}}), "key 'gpu_mem': expected a memory size in GiB");
  EXPECT_ERROR(base({{"gpu_mem", -4}}), "key 'gpu_mem'");
  EXPECT_ERROR(base({{"dp", 0}}), "key 'dp'");
  EXPECT_ERROR(base({{"tp", -1}}), "key 'tp'");
  EXPECT_ERROR(base({{"pp", 0}}), "key 'pp'");
  EXPECT_ERROR(base({{"gpus_per_node", 0}}), "key 'gpus_per_node'");
  EXPECT_ERROR(base({{"ddp_bucket_mb", 0}}), "key 'ddp_bucket_mb'");
  EXPECT_ERROR(base({{"reduce_bucket_size", 0}}), "key 'reduce_bucket_size'");
  EXPECT_ERROR(base({{"allgather_bucket_size", -1}}), "key 'allgather_bucket_size'");
  EXPECT_ERROR(base({{"stage3_prefetch_bucket_size", -1}}), "key 'stage3_prefetch_bucket_size'");
  EXPECT_ERROR(base({{"stage3_max_live_parameters", -1}}), "key 'stage3_max_live_parameters'");
  EXPECT_ERROR(base({{"fsdp_version", 3}}), "key 'fsdp_version': expected 1 or 2, got 3");
  EXPECT_ERROR(base({{"chunk_elems", -1}}), "key 'chunk_elems'");
  EXPECT_ERROR(base({{"lora", {{"r", 0}}}}), "key 'lora.r': expected a positive rank");
  EXPECT_ERROR(base({{"lora", {{"lora_dropout", 2}}}}), "key 'lora.lora_dropout'");
}

TEST(Request, UnknownValues) {
  EXPECT_EQ(error_of(base({{"precision", "bf17"}})),
            "request: key 'precision': unknown value \"bf17\" (did you mean \"bf16\"?); expected "
            "one of fp32, fp16-mixed, bf16-mixed, bf16, fp16");
  EXPECT_ERROR(base({{"optimizer", "adamx"}}), "key 'optimizer': unknown value \"adamx\"");
  EXPECT_ERROR(base({{"attention", "flash"}}), "key 'attention': unknown value");
  EXPECT_ERROR(base({{"grad_ckpt", true}, {"ckpt_mode", "sometimes"}}), "key 'ckpt_mode'");
  EXPECT_ERROR(
      base({{"device", "gpu"}}),
      "key 'device': unknown value \"gpu\" (did you mean \"cpu\"?); expected one of cuda, cpu");
  EXPECT_ERROR(base({{"framework", "hff"}}), "key 'framework': unknown value \"hff\"");
  EXPECT_ERROR(base({{"lora_rank", 8}, {"quant", "int3"}}), "key 'quant': unknown value");
  EXPECT_ERROR(base({{"lora_rank", 8}, {"quant", "nf4"}, {"quant_compute", "int8"}}),
               "key 'quant_compute'");
  EXPECT_ERROR(base({{"lora_rank", 8}, {"lora_dtype", "int8"}}), "key 'lora_dtype'");
  EXPECT_ERROR(base({{"torch_version", "two"}}),
               "key 'torch_version': expected MAJOR.MINOR such as 2.4");
  EXPECT_ERROR(base({{"transformers_version", "latest"}}),
               "key 'transformers_version': expected MAJOR.MINOR such as 4.57");
  for (const char* bad : {"1.0", "0.x", "0.43.200", "latest", "0"})
    EXPECT_ERROR(base({{"bitsandbytes_version", bad}}),
                 "key 'bitsandbytes_version': expected 0.MINOR[.PATCH] such as 0.45.5");
  EXPECT_ERROR(base({{"method", "zero4"}}),
               "key 'method': unknown value \"zero4\" (did you mean \"zero1\"?)");
  EXPECT_ERROR(base({{"schedule", "interleave"}}),
               "key 'schedule': unknown value \"interleave\" (did you mean \"interleaved\"?)");
  EXPECT_ERROR(base({{"virtual_stages", 0}}), "key 'virtual_stages': expected between 1 and 1024");
  EXPECT_ERROR(base({{"fsdp_sharding", "full"}}), "key 'fsdp_sharding'");
  EXPECT_ERROR(base({{"zero_impl", "colossal"}}), "key 'zero_impl'");
  EXPECT_ERROR(base({{"offload", "gpu"}}), "key 'offload': unknown value \"gpu\"");
  EXPECT_ERROR(base({{"offload", 3}}), "key 'offload': expected a list of optimizer, params");
  EXPECT_ERROR(base({{"estimator", "guess"}}), "key 'estimator'");
  EXPECT_ERROR(base({{"gpu", "A100-81GB"}}),
               "request: key 'gpu': unknown GPU \"A100-81GB\" (did you mean");
}

TEST(Request, Conflicts) {
  EXPECT_ERROR(base({{"quant", "nf4"}}),
               "key 'quant': QLoRA trains LoRA adapters: give lora_rank too");
  EXPECT_ERROR(base({{"ckpt_mode", "reentrant"}}), "key 'ckpt_mode': has no effect without");
  EXPECT_ERROR(base({{"gpu", "RTX4090"}, {"gpu_mem", 24}}), "give gpu or gpu_mem, not both");
  EXPECT_ERROR(base({{"framework", "torchtune"}, {"liger", true}}),
               "key 'liger': Liger kernels are modelled for --framework hf");
  EXPECT_TRUE(parse_request(base({{"liger", true}}).dump()).setup.fw.liger);
  EXPECT_ERROR(base({{"lora", {{"r", 8}}}, {"lora_rank", 4}}),
               "key 'lora_rank': give either lora (a LoraConfig) or lora_rank, not both");
}

TEST(Request, PeftFieldsLlmemDoesNotModel) {
  EXPECT_ERROR(base({{"lora", {{"use_dora", true}}}}), "key 'lora.use_dora': not modelled");
  EXPECT_ERROR(base({{"lora", {{"bias", "all"}}}}), "key 'lora.bias': not modelled");
  EXPECT_ERROR(base({{"lora", {{"modules_to_save", {"lm_head"}}}}}), "key 'lora.modules_to_save'");
  EXPECT_ERROR(base({{"lora", {{"layers_to_transform", {0, 1}}}}}),
               "key 'lora.layers_to_transform'");
  EXPECT_ERROR(base({{"lora", {{"peft_type", "IA3"}}}}), "key 'lora.peft_type'");
  EXPECT_ERROR(base({{"lora", {{"target_modules", "q_proj"}}}}),
               "key 'lora.target_modules': \"q_proj\" matches no linear module");
  EXPECT_ERROR(base({{"lora", {{"target_modules", ".*layers\\.0\\..*q_proj"}}}}),
               "matches 'q_proj' in some layers only");
  EXPECT_ERROR(base({{"lora", {{"target_modules", "(("}}}}),
               "key 'lora.target_modules': not a valid regular expression");
}

TEST(Request, BadDocumentsAndModels) {
  EXPECT_ERROR(json::array({1, 2}), "request: expected a JSON object of options, got [1,2]");
  try {
    parse_request("{\"model\": ");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("request: malformed JSON", 0), 0u) << e.what();
  }
  std::string deep = "{\"model\": \"facebook/opt-125m\", \"batch\": " + std::string(100000, '[') +
                     std::string(100000, ']') + "}";
  try {
    parse_request(deep);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "request: JSON nested deeper than 64 levels");
  }
  EXPECT_THROW(load_model_json(std::string(1000, '[') + std::string(1000, ']')), Error);
  EXPECT_EQ(error_of(json::object()),
            "request: key 'model': required: a catalog name, a config.json path or a config "
            "object");
  EXPECT_ERROR(json({{"model", "facebook/opt-1.3c"}}),
               "request: key 'model': \"facebook/opt-1.3c\": not a catalog name, and no such "
               "file or directory (did you mean \"facebook/opt-1.3b\"?)");
  EXPECT_ERROR(json({{"model", ""}}), "key 'model': expected a catalog name");
  EXPECT_ERROR(json({{"model", {{"model_type", "llamaa"}}}}),
               "model: key 'model_type': unknown model_type \"llamaa\"");
  EXPECT_ERROR(json({{"model", LLMEM_TEST_DATA_DIR "/bad/truncated.json"}}),
               "truncated.json\": malformed JSON at line 5");
}

TEST(Request, CliStyleNamesOptions) {
  RequestOptions cli{.style = KeyStyle::kCli};
  EXPECT_EQ(error_of(base({{"batch", 0}}), cli),
            "--batch: expected a micro-batch between 1 and 2^20, got 0");
  EXPECT_EQ(error_of(base({{"quant", "nf4"}}), cli),
            "--quant: QLoRA trains LoRA adapters: give --lora-rank too");
  EXPECT_NE(error_of(base({{"precision", "bf17"}}), cli)
                .find("--precision: unknown value \"bf17\" (did you mean \"bf16\"?)"),
            std::string::npos);
  EXPECT_EQ(error_of(json({{"model", "facebook/opt-1.3c"}}), cli)
                .rfind("facebook/opt-1.3c: not a catalog name", 0),
            0u);
  RequestOptions named{.source = "estimate()"};
  EXPECT_EQ(error_of(base({{"seq", 1}}), named).rfind("estimate(): key 'seq'", 0), 0u);
}

TEST(Request, EstimateJsonAndRunTimeErrors) {
  Request r = parse(base({{"batch", 2}, {"seq", 128}}));
  json j = json::parse(estimate_request_json(r));
  EXPECT_EQ(j["setup"]["batch"], 2);
  EXPECT_GT(j["peak"]["device_bytes"].get<uint64_t>(), 0u);
  json p = json::parse(estimate_request_json(parse(base({{"estimator", "both"}}))));
  EXPECT_TRUE(p.contains("paper"));
  EXPECT_TRUE(p.contains("llmem"));
  EXPECT_FALSE(
      json::parse(estimate_request_json(parse(base({{"estimator", "paper"}})))).contains("llmem"));
  // Raised while simulating, in the request's style.
  Request bad = parse(base({{"lora_rank", 8}, {"lora_targets", {"nope"}}}));
  try {
    estimate_request_json(bad);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "request: key 'lora_targets': no module of this model matches the LoRA targets");
    EXPECT_EQ(e.key(), "lora_targets");
  }
}

TEST(Request, RequestJsonRoundTrips) {
  std::string text = request_json({{"model", std::string("facebook/opt-125m")},
                                   {"batch", int64_t{3}},
                                   {"lora_alpha", 16.0},
                                   {"grad_ckpt", true},
                                   {"lora_targets", std::vector<std::string>{"q_proj"}}});
  EXPECT_EQ(text, R"({"model":"facebook/opt-125m","batch":3,"lora_alpha":16.0,"grad_ckpt":true,)"
                  R"("lora_targets":["q_proj"]})");
  Request r = parse_request(text);
  EXPECT_EQ(r.setup.batch, 3);
  EXPECT_EQ(r.setup.checkpointing, CheckpointMode::kReentrant);
}

}  // namespace
}  // namespace llmem

namespace llmem {
namespace {

// Every key, and every LoraConfig field, with a value of every JSON type:
// parsing either succeeds or throws llmem::Error naming that key.
TEST(Request, AnyValueOfAnyKeyEndsInAnErrorNamingIt) {
  const json values[] = {nullptr,
                         true,
                         false,
                         0,
                         -1,
                         1.5,
                         1e300,
                         int64_t{1} << 62,
                         "",
                         "x",
                         "q_proj,v_proj",
                         json::array(),
                         json::array({1}),
                         json::array({"a"}),
                         json::object(),
                         json({{"r", 4}})};
  std::vector<std::string> keys = request_keys();
  for (const char* field : {"r", "lora_alpha", "lora_dropout", "target_modules", "use_dora", "bias",
                            "modules_to_save", "peft_type", "task_type"}) {
    keys.push_back(std::string("lora.") + field);
  }
  int errors = 0;
  for (const std::string& key : keys) {
    for (const json& value : values) {
      json j = base();
      if (key.rfind("lora.", 0) == 0)
        j["lora"][key.substr(5)] = value;
      else
        j[key] = value;
      try {
        parse_request(j.dump());
      } catch (const Error& e) {
        ++errors;
        std::string what = e.what();
        EXPECT_TRUE(what.find("'" + key + "'") != std::string::npos ||
                    what.find("gpu or gpu_mem") != std::string::npos ||
                    what.find("'lora'") != std::string::npos ||
                    (key == "model" && what.rfind("model: ", 0) == 0))
            << j.dump() << " -> " << what;
      } catch (const std::exception& e) {
        ADD_FAILURE() << j.dump() << " threw a non-llmem exception: " << e.what();
      }
    }
  }
  EXPECT_GT(errors, 500);
}

}  // namespace
}  // namespace llmem

namespace llmem {
namespace {

TEST(Request, DeepSpeedConfig) {
  Request r = parse(base(
      {{"deepspeed_config", LLMEM_TEST_DATA_DIR "/deepspeed/zero3-offload-auto.json"}, {"dp", 4}}));
  EXPECT_EQ(r.setup.parallel.method, Method::kZero3);
  EXPECT_TRUE(r.setup.parallel.offload_optimizer);
  EXPECT_TRUE(r.setup.parallel.offload_params);
  json object = {{"zero_optimization", {{"stage", 2}}}, {"bf16", {{"enabled", true}}}};
  r = parse(base({{"deepspeed_config", object}, {"method", "ddp"}, {"dp", 2}}));
  EXPECT_EQ(r.setup.parallel.method, Method::kZero2);  // the config overrides method
  EXPECT_ERROR(base({{"deepspeed_config", "/nonexistent/ds.json"}}),
               "request: key 'deepspeed_config': cannot open \"/nonexistent/ds.json\"");
  EXPECT_ERROR(base({{"deepspeed_config", 2}}), "key 'deepspeed_config': expected a path");
  EXPECT_ERROR(base({{"deepspeed_config", LLMEM_TEST_DATA_DIR "/deepspeed/bad-stage.json"}}),
               "bad-stage.json: key 'zero_optimization.stage'");
  EXPECT_ERROR(base({{"deepspeed_config", {{"zero_optimization", {{"stage", 7}}}}}}),
               "deepspeed_config: key 'zero_optimization.stage'");
  // overlap_comm: DeepSpeed's default (-1) unless given; "auto" keeps it.
  EXPECT_EQ(r.setup.parallel.overlap_comm, -1);
  object["zero_optimization"]["overlap_comm"] = true;
  EXPECT_EQ(parse(base({{"deepspeed_config", object}})).setup.parallel.overlap_comm, 1);
  object["zero_optimization"]["overlap_comm"] = "auto";
  EXPECT_EQ(parse(base({{"deepspeed_config", object}})).setup.parallel.overlap_comm, -1);
  object["zero_optimization"]["overlap_comm"] = "yes";
  EXPECT_ERROR(base({{"deepspeed_config", object}}),
               "key 'zero_optimization.overlap_comm': expected true, false or \"auto\"");
  EXPECT_EQ(parse(base({{"overlap_comm", false}})).setup.parallel.overlap_comm, 0);
  EXPECT_ERROR(base({{"overlap_comm", "on"}}), "key 'overlap_comm': expected true or false");
}

TEST(Request, FsdpConfig) {
  Request r = parse(base({{"fsdp_config", LLMEM_TEST_DATA_DIR "/fsdp/full-shard-bf16.yaml"},
                          {"method", "ddp"},
                          {"dp", 2}}));
  EXPECT_EQ(r.setup.parallel.method, Method::kFsdp);  // the config overrides method and dp
  EXPECT_EQ(r.setup.parallel.dp, 8);
  EXPECT_EQ(r.setup.checkpointing, CheckpointMode::kNonReentrant);
  json object = {{"distributed_type", "FSDP"},
                 {"num_processes", 4},
                 {"fsdp_config",
                  {{"fsdp_version", 2},
                   {"fsdp_reshard_after_forward", false},
                   {"fsdp_backward_prefetch", "NO_PREFETCH"}}}};
  r = parse(base({{"fsdp_config", object}}));
  EXPECT_EQ(r.setup.parallel.method, Method::kFsdp);
  EXPECT_EQ(r.setup.parallel.fsdp_version, 2);
  EXPECT_EQ(r.setup.parallel.fsdp_sharding, FsdpSharding::kShardGradOp);
  EXPECT_EQ(r.setup.parallel.dp, 4);
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_NE(r.warnings[0].find("fsdp_config.fsdp_backward_prefetch"), std::string::npos);
  EXPECT_ERROR(base({{"fsdp_config", "/nonexistent/fsdp.yaml"}}),
               "request: key 'fsdp_config': cannot open \"/nonexistent/fsdp.yaml\"");
  EXPECT_ERROR(base({{"fsdp_config", 2}}), "key 'fsdp_config': expected a path");
  EXPECT_ERROR(base({{"fsdp_config", LLMEM_TEST_DATA_DIR "/fsdp/bad-sharding.yaml"}}),
               "bad-sharding.yaml: key 'fsdp_config.fsdp_sharding_strategy'");
  EXPECT_ERROR(base({{"fsdp_config", {{"distributed_type", "MULTI_GPU"}}}}),
               "fsdp_config: key 'distributed_type'");
  EXPECT_ERROR(base({{"fsdp_config", object}, {"deepspeed_config", json::object({{"fp16", {}}})}}),
               "key 'fsdp_config': give");
}

}  // namespace
}  // namespace llmem
