// Copyright 2026 The llmem Authors.
// accelerate config keys: accelerate/commands/config/cluster.py (what
// `accelerate config` writes) and accelerate/utils/dataclasses.py
// (FullyShardedDataParallelPlugin: names, values and defaults).

#include "llmem/fsdp_config.h"

#include <algorithm>
#include <cctype>
#include <set>

#include "llmem/error.h"

#include <yaml-cpp/yaml.h>

namespace llmem {
namespace {

std::string upper(std::string s) {
  for (char& c : s)
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

// Top-level keys that do not change per-GPU memory (accepted silently).
const std::set<std::string>& harmless_top_keys() {
  static const std::set<std::string> keys = {"compute_environment",
                                             "debug",
                                             "downcast_bf16",
                                             "machine_rank",
                                             "main_process_ip",
                                             "main_process_port",
                                             "main_training_function",
                                             "rdzv_backend",
                                             "same_network",
                                             "tpu_env",
                                             "tpu_use_cluster",
                                             "tpu_use_sudo",
                                             "use_cpu",
                                             "gpu_ids",
                                             "enable_cpu_affinity",
                                             "deepspeed_config",
                                             "megatron_lm_config",
                                             "dynamo_config",
                                             "ipex_config",
                                             "mpirun_config",
                                             "tpu_name",
                                             "tpu_zone",
                                             "commands",
                                             "command_file",
                                             "num_cpu_threads_per_process"};
  return keys;
}

// fsdp_config keys that do not change memory as llmem models it.
const std::set<std::string>& harmless_fsdp_keys() {
  static const std::set<std::string> keys = {"fsdp_state_dict_type",
                                             "fsdp_sync_module_states",
                                             "fsdp_use_orig_params",
                                             "fsdp_cpu_ram_efficient_loading",
                                             "fsdp_transformer_layer_cls_to_wrap",
                                             "fsdp_min_num_params"};
  return keys;
}

class Reader {
 public:
  Reader(const std::string& source, std::vector<std::string>* warnings)
      : source_(source), warnings_(warnings) {}

  std::string line(const YAML::Node& n) const {
    if (n.Mark().is_null())
      return "";
    return " (line " + std::to_string(n.Mark().line + 1) + ")";
  }
  [[noreturn]] void fail(const YAML::Node& n, const std::string& key,
                         const std::string& message) const {
    throw Error(source_, key, message + line(n));
  }
  template <typename T>
  T as(const YAML::Node& n, const std::string& key, const char* expected) const {
    if (!n.IsScalar())
      fail(n, key, std::string("expected ") + expected);
    try {
      return n.as<T>();
    } catch (const YAML::Exception&) {
      fail(n, key, std::string("expected ") + expected + ", not \"" + n.Scalar() + "\"");
    }
  }
  bool flag(const YAML::Node& n, const std::string& key) const {
    return as<bool>(n, key, "true or false");
  }
  std::string text(const YAML::Node& n, const std::string& key) const {
    return as<std::string>(n, key, "a string");
  }
  int64_t count(const YAML::Node& n, const std::string& key, int64_t lo, int64_t hi) const {
    auto v = as<int64_t>(n, key, "an integer");
    if (v < lo || v > hi) {
      fail(n, key,
           "expected between " + std::to_string(lo) + " and " + std::to_string(hi) + ", not " +
               std::to_string(v));
    }
    return v;
  }
  void warn(const std::string& key, const std::string& why) {
    warnings_->push_back(source_ + ": " + key + " " + why);
  }

  // FULL_SHARD / SHARD_GRAD_OP / NO_SHARD / HYBRID_SHARD / HYBRID_SHARD_ZERO2,
  // or accelerate's older numeric form 1-5 (torch's ShardingStrategy order).
  FsdpSharding sharding(const YAML::Node& n, const std::string& key) {
    std::string s = upper(text(n, key));
    if (s == "1" || s == "FULL_SHARD")
      return FsdpSharding::kFullShard;
    if (s == "2" || s == "SHARD_GRAD_OP")
      return FsdpSharding::kShardGradOp;
    if (s == "3" || s == "NO_SHARD")
      return FsdpSharding::kNoShard;
    if (s == "4" || s == "HYBRID_SHARD")
      return FsdpSharding::kHybridShard;
    if (s == "5" || s == "HYBRID_SHARD_ZERO2") {
      warn(key,
           "HYBRID_SHARD_ZERO2 is modelled as HYBRID_SHARD (parameters resharded after "
           "forward)");
      return FsdpSharding::kHybridShard;
    }
    fail(n, key,
         "expected FULL_SHARD, SHARD_GRAD_OP, NO_SHARD, HYBRID_SHARD or HYBRID_SHARD_ZERO2 "
         "(or 1-5), not \"" +
             n.Scalar() + "\"");
  }

 private:
  std::string source_;
  std::vector<std::string>* warnings_;
};

void apply_fsdp_section(const YAML::Node& f, Reader& r, TrainingSetup* setup) {
  ParallelSetup& p = setup->parallel;
  if (f["fsdp_version"])
    p.fsdp_version = static_cast<int>(r.count(f["fsdp_version"], "fsdp_config.fsdp_version", 1, 2));
  if (f["fsdp_sharding_strategy"])
    p.fsdp_sharding = r.sharding(f["fsdp_sharding_strategy"], "fsdp_config.fsdp_sharding_strategy");
  if (const YAML::Node& n = f["fsdp_reshard_after_forward"]) {
    const std::string key = "fsdp_config.fsdp_reshard_after_forward";
    // FSDP2: a boolean; accelerate 1.x also takes a sharding strategy here for FSDP1.
    bool is_bool = false;
    if (n.IsScalar()) {
      std::string s = upper(n.Scalar());
      is_bool = s == "TRUE" || s == "FALSE";
    }
    if (is_bool) {
      p.fsdp_sharding = r.flag(n, key) ? FsdpSharding::kFullShard : FsdpSharding::kShardGradOp;
    } else {
      p.fsdp_sharding = r.sharding(n, key);
    }
  }
  if (f["fsdp_offload_params"]) {
    bool off = r.flag(f["fsdp_offload_params"], "fsdp_config.fsdp_offload_params");
    p.offload_params = off;  // CPUOffload(offload_params=True) moves the optimizer step too
    p.offload_optimizer = off;
  }
  if (f["fsdp_limit_all_gathers"])
    p.limit_all_gathers = r.flag(f["fsdp_limit_all_gathers"], "fsdp_config.fsdp_limit_all_gathers");
  if (f["fsdp_activation_checkpointing"]) {
    // accelerate applies torch's checkpoint_wrapper with CheckpointImpl.NO_REENTRANT.
    if (r.flag(f["fsdp_activation_checkpointing"], "fsdp_config.fsdp_activation_checkpointing"))
      setup->checkpointing = CheckpointMode::kNonReentrant;
  }
  for (const char* key : {"fsdp_backward_prefetch", "fsdp_backward_prefetch_policy"}) {
    if (!f[key])
      continue;
    const std::string name = std::string("fsdp_config.") + key;
    std::string v = upper(r.text(f[key], name));
    if (v != "BACKWARD_PRE" && v != "BACKWARD_POST" && v != "NO_PREFETCH" && v != "1" && v != "2" &&
        v != "3") {
      r.fail(
          f[key], name,
          "expected BACKWARD_PRE, BACKWARD_POST or NO_PREFETCH, not \"" + f[key].Scalar() + "\"");
    }
    if (v != "BACKWARD_PRE" && v != "1")
      r.warn(name, "= " + f[key].Scalar() + " is not modelled (modelled as BACKWARD_PRE)");
  }
  if (f["fsdp_forward_prefetch"] &&
      r.flag(f["fsdp_forward_prefetch"], "fsdp_config.fsdp_forward_prefetch")) {
    r.warn("fsdp_config.fsdp_forward_prefetch",
           "= true is not modelled (one more unit's parameters gathered in forward)");
  }
  if (f["fsdp_auto_wrap_policy"]) {
    const std::string key = "fsdp_config.fsdp_auto_wrap_policy";
    std::string v = upper(r.text(f["fsdp_auto_wrap_policy"], key));
    if (v != "TRANSFORMER_BASED_WRAP" && v != "SIZE_BASED_WRAP" && v != "NO_WRAP")
      r.fail(f["fsdp_auto_wrap_policy"], key,
             "expected TRANSFORMER_BASED_WRAP, SIZE_BASED_WRAP or NO_WRAP, not \"" +
                 f["fsdp_auto_wrap_policy"].Scalar() + "\"");
    if (v != "TRANSFORMER_BASED_WRAP")
      r.warn(key, "= " + v + " is not modelled (modelled as one unit per decoder layer)");
  }
  // Type checks for the keys that are accepted without effect.
  for (const char* key :
       {"fsdp_sync_module_states", "fsdp_use_orig_params", "fsdp_cpu_ram_efficient_loading"}) {
    if (f[key])
      r.flag(f[key], std::string("fsdp_config.") + key);
  }
  for (const auto& kv : f) {
    std::string key = kv.first.as<std::string>();
    bool known = harmless_fsdp_keys().count(key) > 0 || key == "fsdp_version" ||
                 key == "fsdp_sharding_strategy" || key == "fsdp_reshard_after_forward" ||
                 key == "fsdp_offload_params" || key == "fsdp_limit_all_gathers" ||
                 key == "fsdp_activation_checkpointing" || key == "fsdp_backward_prefetch" ||
                 key == "fsdp_backward_prefetch_policy" || key == "fsdp_forward_prefetch" ||
                 key == "fsdp_auto_wrap_policy";
    if (!known)
      r.warn("fsdp_config." + key, "is not modelled");
  }
}

}  // namespace

std::vector<std::string> apply_fsdp_config(std::string_view yaml_text, const std::string& source,
                                           TrainingSetup* setup) {
  YAML::Node loaded;
  try {
    loaded = YAML::Load(std::string(yaml_text));
  } catch (const YAML::ParserException& e) {
    throw Error(source, "",
                "not valid YAML (line " + std::to_string(e.mark.line + 1) + ", column " +
                    std::to_string(e.mark.column + 1) + "): " + e.msg);
  }
  const YAML::Node& root = loaded;  // const: lookups never add keys
  if (!root.IsMap())
    throw Error(source, "", "expected a YAML mapping (an accelerate config)");
  std::vector<std::string> warnings;
  Reader r(source, &warnings);
  ParallelSetup& p = setup->parallel;
  try {
    if (const YAML::Node& n = root["distributed_type"]) {
      std::string t = r.text(n, "distributed_type");
      if (upper(t) != "FSDP")
        r.fail(n, "distributed_type", "expected FSDP, not \"" + t + "\"");
    }
    if (const YAML::Node& n = root["mixed_precision"]) {
      std::string m = n.IsScalar() ? n.Scalar() : "";
      if (m == "no" || m == "false" || m == "False")
        setup->precision = Precision::kFp32;
      else if (m == "fp16")
        setup->precision = Precision::kFp16Mixed;
      else if (m == "bf16")
        setup->precision = Precision::kBf16Mixed;
      else if (m == "fp8") {
        setup->precision = Precision::kBf16Mixed;
        r.warn("mixed_precision", "= fp8 is modelled as bf16 (fp8 matmuls are not modelled)");
      } else {
        r.fail(n, "mixed_precision", "expected no, fp16, bf16 or fp8");
      }
    }
    int64_t machines = 1;
    if (root["num_machines"])
      machines = r.count(root["num_machines"], "num_machines", 1, 1 << 16);
    if (root["num_processes"]) {
      int64_t procs = r.count(root["num_processes"], "num_processes", 1, 1 << 16);
      if (procs % machines != 0)
        r.fail(root["num_processes"], "num_processes",
               "expected a multiple of num_machines (" + std::to_string(machines) + ")");
      if (procs / machines > 64)
        r.fail(root["num_processes"], "num_processes", "expected at most 64 processes per machine");
      p.dp = static_cast<int>(procs);
      p.gpus_per_node = static_cast<int>(procs / machines);
    }
    if (const YAML::Node& f = root["fsdp_config"]) {
      if (!f.IsMap() && !f.IsNull())
        r.fail(f, "fsdp_config", "expected a mapping of fsdp_* keys");
      if (f.IsMap())
        apply_fsdp_section(f, r, setup);
    }
    for (const auto& kv : root) {
      std::string key = kv.first.as<std::string>();
      bool known = key == "distributed_type" || key == "mixed_precision" || key == "num_machines" ||
                   key == "num_processes" || key == "fsdp_config" ||
                   harmless_top_keys().count(key) > 0;
      if (!known)
        r.warn(key, "is not modelled");
    }
  } catch (const YAML::Exception& e) {
    throw Error(source, "", std::string("unexpected YAML structure: ") + e.what());
  }
  p.method = Method::kFsdp;
  return warnings;
}

}  // namespace llmem
