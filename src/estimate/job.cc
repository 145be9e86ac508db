// Copyright 2026 The llmem Authors.

#include "llmem/job.h"

#include <string>
#include <utility>

#include "llmem/error.h"

#include "model/suggest.h"

namespace llmem {
namespace {

template <typename E, size_t N>
E parse_enum(std::string_view text, const std::string& option,
             const std::pair<const char*, E> (&names)[N]) {
  std::vector<std::string> known;
  for (const auto& [name, value] : names) {
    if (text == name)
      return value;
    known.push_back(name);
  }
  std::string message = "unknown value \"" + std::string(text) + "\"";
  std::string nearest = model::nearest(text, known);
  if (!nearest.empty())
    message += " (did you mean \"" + nearest + "\"?)";
  throw Error(option, "", message + "; expected one of " + model::join(known, ", "));
}

template <typename E, size_t N>
std::string_view enum_name(E value, const std::pair<const char*, E> (&names)[N]) {
  for (const auto& [name, v] : names) {
    if (v == value)
      return name;
  }
  return "";
}

constexpr std::pair<const char*, Precision> kPrecisions[] = {{"fp32", Precision::kFp32},
                                                             {"fp16-mixed", Precision::kFp16Mixed},
                                                             {"bf16-mixed", Precision::kBf16Mixed},
                                                             {"bf16", Precision::kBf16},
                                                             {"fp16", Precision::kFp16}};

constexpr std::pair<const char*, OptimizerKind> kOptimizers[] = {
    {"adamw", OptimizerKind::kAdamW},
    {"adamw-foreach", OptimizerKind::kAdamWForeach},
    {"adamw-fused", OptimizerKind::kAdamWFused},
    {"adamw-forloop", OptimizerKind::kAdamWForLoop},
    {"sgd", OptimizerKind::kSgd},
    {"sgd-momentum", OptimizerKind::kSgdMomentum},
    {"adafactor", OptimizerKind::kAdafactor},
    {"adamw-8bit", OptimizerKind::kAdamW8bit},
    {"paged-adamw-8bit", OptimizerKind::kPagedAdamW8bit}};

constexpr std::pair<const char*, AttentionImpl> kAttention[] = {
    {"eager", AttentionImpl::kEager},
    {"sdpa", AttentionImpl::kSdpa},
    {"flash_attention_2", AttentionImpl::kFlashAttention2},
    {"sdpa-flash", AttentionImpl::kSdpaFlash},
    {"sdpa-efficient", AttentionImpl::kSdpaEfficient},
    {"sdpa-math", AttentionImpl::kSdpaMath}};

constexpr std::pair<const char*, CheckpointMode> kCheckpointing[] = {
    {"off", CheckpointMode::kOff},
    {"reentrant", CheckpointMode::kReentrant},
    {"non-reentrant", CheckpointMode::kNonReentrant}};

constexpr std::pair<const char*, Method> kMethods[] = {
    {"single", Method::kSingle},    {"ddp", Method::kDdp},
    {"zero1", Method::kZero1},      {"zero2", Method::kZero2},
    {"zero3", Method::kZero3},      {"fsdp", Method::kFsdp},
    {"gemini", Method::kGemini},    {"colossalai-1d", Method::kColossal1d},
    {"megatron", Method::kMegatron}};

constexpr std::pair<const char*, Framework> kFrameworks[] = {
    {"hf", Framework::kHf}, {"torchtune", Framework::kTorchtune}, {"litgpt", Framework::kLitgpt}};

}  // namespace

Framework parse_framework(std::string_view text, const std::string& option) {
  return parse_enum(text, option, kFrameworks);
}
std::string_view framework_name(Framework f) {
  return enum_name(f, kFrameworks);
}

Method parse_method(std::string_view text, const std::string& option) {
  return parse_enum(text, option, kMethods);
}
std::string_view method_name(Method m) {
  return enum_name(m, kMethods);
}
Precision parse_precision(std::string_view text, const std::string& option) {
  return parse_enum(text, option, kPrecisions);
}
OptimizerKind parse_optimizer(std::string_view text, const std::string& option) {
  return parse_enum(text, option, kOptimizers);
}
AttentionImpl parse_attention(std::string_view text, const std::string& option) {
  return parse_enum(text, option, kAttention);
}
CheckpointMode parse_checkpointing(std::string_view text, const std::string& option) {
  return parse_enum(text, option, kCheckpointing);
}
std::string_view precision_name(Precision p) {
  return enum_name(p, kPrecisions);
}
std::string_view optimizer_name(OptimizerKind o) {
  return enum_name(o, kOptimizers);
}
std::string_view attention_name(AttentionImpl a) {
  return enum_name(a, kAttention);
}

}  // namespace llmem
