// Copyright 2026 The llmem Authors.
// DeepSpeed config keys: deepspeed/runtime/config.py, deepspeed/runtime/zero/config.py
// and offload_config.py (names and defaults).

#include "llmem/deepspeed.h"

#include <set>

#include "llmem/error.h"

#include "config/config_reader.h"

namespace llmem {
namespace {

using nlohmann::json;

bool is_auto(const json& v) {
  return v.is_string() && v.get<std::string>() == "auto";
}

// Top-level keys that do not change memory (accepted silently).
const std::set<std::string>& harmless_keys() {
  static const std::set<std::string> keys = {"train_batch_size",   "gradient_clipping",
                                             "steps_per_print",    "wall_clock_breakdown",
                                             "scheduler",          "zero_allow_untested_optimizer",
                                             "prescale_gradients", "logging",
                                             "tensorboard",        "wandb",
                                             "csv_monitor",        "comms_logger",
                                             "flops_profiler",     "memory_breakdown",
                                             "dump_state",         "seed"};
  return keys;
}

// ZeRO keys modelled (or harmless for memory).
const std::set<std::string>& zero_keys() {
  static const std::set<std::string> keys = {"stage",
                                             "offload_optimizer",
                                             "offload_param",
                                             "reduce_bucket_size",
                                             "allgather_bucket_size",
                                             "stage3_prefetch_bucket_size",
                                             "stage3_max_live_parameters",
                                             "contiguous_gradients",
                                             "overlap_comm",
                                             "reduce_scatter",
                                             "allgather_partitions",
                                             "stage3_gather_16bit_weights_on_model_save",
                                             "stage3_max_reuse_distance",
                                             "round_robin_gradients"};
  return keys;
}

std::string offload_device(const json& section, const std::string& source, const std::string& key) {
  if (section.is_null())
    return "none";
  if (!section.is_object())
    throw Error(source, key, "expected an object with \"device\"");
  auto it = section.find("device");
  if (it == section.end() || it->is_null())
    return "none";
  if (!it->is_string())
    throw Error(source, key + ".device", "expected \"none\", \"cpu\" or \"nvme\"");
  std::string d = it->get<std::string>();
  if (d != "none" && d != "cpu" && d != "nvme")
    throw Error(source, key + ".device",
                "expected \"none\", \"cpu\" or \"nvme\", not \"" + d + "\"");
  return d;
}

int64_t size_or_auto(const json& obj, const char* key, int64_t fallback, const std::string& source,
                     const std::string& path) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null() || is_auto(*it))
    return fallback;
  double v = 0;
  if (it->is_number_integer()) {
    v = static_cast<double>(it->get<int64_t>());
  } else if (it->is_number_float()) {
    v = it->get<double>();  // DeepSpeed configs often write 5e8
  } else {
    throw Error(source, path + key, "expected a number or \"auto\"");
  }
  if (!(v >= 1) || v > 1e15)
    throw Error(source, path + key, "expected a positive count below 1e15");
  return static_cast<int64_t>(v);
}

bool flag_or_auto(const json& obj, const char* key, bool fallback, const std::string& source,
                  const std::string& path) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null() || is_auto(*it))
    return fallback;
  if (!it->is_boolean())
    throw Error(source, path + key, "expected true, false or \"auto\"");
  return it->get<bool>();
}

}  // namespace

std::vector<std::string> apply_deepspeed_config(std::string_view text, const std::string& source,
                                                TrainingSetup* setup) {
  json j = config::parse_json(text, source);
  if (!j.is_object())
    throw Error(source, "", "expected a JSON object (a DeepSpeed config)");
  std::vector<std::string> warnings;
  ParallelSetup& p = setup->parallel;
  int dp = p.dp;

  // Precision: bf16 / fp16 sections ("enabled" may be "auto": the Trainer's flag).
  auto enabled = [&](const char* section) {
    auto it = j.find(section);
    if (it == j.end() || it->is_null())
      return false;
    if (!it->is_object())
      throw Error(source, section, "expected an object with \"enabled\"");
    return flag_or_auto(*it, "enabled", false, source, std::string(section) + ".");
  };
  bool bf16 = enabled("bf16") || enabled("bfloat16");
  bool fp16 = enabled("fp16");
  if (bf16 && fp16)
    throw Error(source, "bf16", "bf16 and fp16 cannot both be enabled");
  if (bf16)
    setup->precision = Precision::kBf16Mixed;
  if (fp16)
    setup->precision = Precision::kFp16Mixed;

  setup->batch = size_or_auto(j, "train_micro_batch_size_per_gpu", setup->batch, source, "");
  setup->grad_accum = size_or_auto(j, "gradient_accumulation_steps", setup->grad_accum, source, "");

  int stage = 0;
  auto zit = j.find("zero_optimization");
  if (zit != j.end() && !zit->is_null()) {
    const json& z = *zit;
    if (!z.is_object())
      throw Error(source, "zero_optimization", "expected an object");
    auto st = z.find("stage");
    if (st != z.end() && !st->is_null()) {
      if (!st->is_number_integer() || st->get<int64_t>() < 0 || st->get<int64_t>() > 3)
        throw Error(source, "zero_optimization.stage", "expected 0, 1, 2 or 3");
      stage = static_cast<int>(st->get<int64_t>());
    }
    std::string opt_dev = offload_device(z.value("offload_optimizer", json()), source,
                                         "zero_optimization.offload_optimizer");
    std::string param_dev =
        offload_device(z.value("offload_param", json()), source, "zero_optimization.offload_param");
    // Legacy booleans (cpu_offload, cpu_offload_params) of older configs.
    if (flag_or_auto(z, "cpu_offload", false, source, "zero_optimization."))
      opt_dev = "cpu";
    if (flag_or_auto(z, "cpu_offload_params", false, source, "zero_optimization."))
      param_dev = "cpu";
    p.offload_optimizer = opt_dev != "none";
    p.offload_params = param_dev != "none";
    if (opt_dev == "nvme" || param_dev == "nvme")
      warnings.push_back(source + ": NVMe offload is modelled as CPU offload (GPU side only)");
    p.reduce_bucket_size =
        size_or_auto(z, "reduce_bucket_size", p.reduce_bucket_size, source, "zero_optimization.");
    p.allgather_bucket_size = size_or_auto(z, "allgather_bucket_size", p.allgather_bucket_size,
                                           source, "zero_optimization.");
    p.stage3_prefetch_bucket_size =
        size_or_auto(z, "stage3_prefetch_bucket_size", p.stage3_prefetch_bucket_size, source,
                     "zero_optimization.");
    p.stage3_max_live_parameters =
        size_or_auto(z, "stage3_max_live_parameters", p.stage3_max_live_parameters, source,
                     "zero_optimization.");
    p.contiguous_gradients = flag_or_auto(z, "contiguous_gradients", p.contiguous_gradients, source,
                                          "zero_optimization.");
    auto oc = z.find("overlap_comm");
    if (oc != z.end() && !oc->is_null() && !is_auto(*oc))
      p.overlap_comm = flag_or_auto(z, "overlap_comm", false, source, "zero_optimization.") ? 1 : 0;
    for (const auto& [key, value] : z.items()) {
      if (zero_keys().count(key) == 0 && key != "cpu_offload" && key != "cpu_offload_params") {
        warnings.push_back(source + ": zero_optimization." + key + " is not modelled");
      }
    }
  }
  if (stage >= 1 && stage <= 3) {
    p.method = stage == 1 ? Method::kZero1 : stage == 2 ? Method::kZero2 : Method::kZero3;
  } else {
    p.method = Method::kDdp;  // the engine all-reduces whole gradients
  }
  p.torch_zero = false;
  p.dp = dp;

  auto oit = j.find("optimizer");
  if (oit != j.end() && oit->is_object()) {
    std::string type = oit->value("type", std::string());
    for (char& c : type)
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (type == "adam" || type == "adamw" || type == "fusedadam" || type == "cpuadam") {
      setup->optimizer = OptimizerKind::kAdamW;
    } else if (!type.empty()) {
      warnings.push_back(source + ": optimizer \"" + oit->value("type", std::string()) +
                         "\" is modelled as Adam (two fp32 states)");
    }
  }
  if (j.contains("activation_checkpointing")) {
    warnings.push_back(source +
                       ": activation_checkpointing (partitioned or CPU checkpoints) is not "
                       "modelled; use --grad-ckpt for the model's own checkpointing");
  }
  for (const auto& [key, value] : j.items()) {
    bool known = key == "bf16" || key == "bfloat16" || key == "fp16" ||
                 key == "zero_optimization" || key == "optimizer" ||
                 key == "activation_checkpointing" || key == "train_micro_batch_size_per_gpu" ||
                 key == "gradient_accumulation_steps" || harmless_keys().count(key) > 0;
    if (!known)
      warnings.push_back(source + ": " + key + " is not modelled");
  }
  return warnings;
}

}  // namespace llmem
