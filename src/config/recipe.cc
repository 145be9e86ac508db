// Copyright 2026 The llmem Authors.
// torchtune recipe configs (recipes/configs/**.yaml, read by the recipes in
// recipes/*.py through cfg.get / config.instantiate) and LitGPT config_hub
// YAMLs (config_hub/finetune/*/*.yaml, the arguments of litgpt/finetune/*.py
// setup()).

#include "llmem/recipe.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "llmem/error.h"

#include "trace/framework.h"
#include <yaml-cpp/yaml.h>

namespace llmem {
namespace {

class Reader {
 public:
  Reader(const std::string& file, const std::string& text, TrainingSetup* s, RecipeResult* r)
      : file_(file), text_(text), s_(s), r_(r) {}

  template <typename T>
  T as(const YAML::Node& n, const std::string& key, const char* expected) {
    try {
      return n.as<T>();
    } catch (const YAML::Exception&) {
      throw Error(file_, key,
                  std::string("expected ") + expected + " (line " +
                      std::to_string(n.Mark().line + 1) + ")");
    }
  }
  bool flag(const YAML::Node& n, const std::string& key) {
    if (n.IsNull())
      return false;
    return as<bool>(n, key, "true or false");
  }
  int64_t count(const YAML::Node& n, const std::string& key) {
    auto v = as<int64_t>(n, key, "an integer");
    if (v < 0)
      throw Error(file_, key, "expected a non-negative integer");
    return v;
  }
  void warn(const std::string& key, const std::string& why) {
    r_->warnings.push_back(file_ + ": key '" + key + "': " + why);
  }
  std::string str(const YAML::Node& n, const std::string& key) {
    if (n.IsNull())
      return "";
    return as<std::string>(n, key, "a string");
  }

  void torchtune(const YAML::Node& root);
  void litgpt(const YAML::Node& root);

 private:
  // Keys that do not change GPU memory (paths, learning rates, logging, data
  // sources): read silently.
  static bool no_memory_effect(const std::string& key) {
    static const std::set<std::string> keys = {"output_dir",
                                               "out_dir",
                                               "seed",
                                               "shuffle",
                                               "epochs",
                                               "max_steps_per_epoch",
                                               "metric_logger",
                                               "log_every_n_steps",
                                               "log_peak_memory_stats",
                                               "lr_scheduler",
                                               "resume_from_checkpoint",
                                               "save_adapter_weights_only",
                                               "checkpointer",
                                               "device",
                                               "profiler",
                                               "log_level",
                                               "logger_name",
                                               "eval",
                                               "run_val_every_n_steps",
                                               "dataset_val",
                                               "save_every_n_steps",
                                               "base_model_path",
                                               "data",
                                               "log_interval",
                                               "save_interval",
                                               "lr_warmup_steps",
                                               "lr_warmup_fraction",
                                               "max_tokens",
                                               "max_steps",
                                               "min_lr",
                                               "max_norm",
                                               "clip_grad_norm",
                                               "tokenizer_dir",
                                               "checkpoint_dir",
                                               "num_nodes",
                                               "access_token",
                                               "resume",
                                               "collate_fn",
                                               "max_time"};
    return keys.count(key) > 0;
  }
  void lora_targets_torchtune(const YAML::Node& model);
  void optimizer(const YAML::Node& opt, const std::string& key, bool torchtune);

  /// torchtune: the `tune run [--nproc_per_node N] <recipe>` line of the
  /// config's header comment; true if it names a *_distributed recipe.
  bool torchtune_launch(int64_t* nproc) const;
  /// torchtune distributed recipe keys (training.shard_model's arguments).
  void torchtune_fsdp(const std::string& key, const YAML::Node& v);
  /// torchtune `compile`: a bool (model and loss), or since 2025 a map
  /// {model, loss, optimizer_step, scale_grads} (recipes/
  /// full_finetune_distributed.py at bd2a0fc7c: model and loss default true).
  void read_compile(const YAML::Node& v);

  std::string file_;
  std::string text_;
  TrainingSetup* s_;
  RecipeResult* r_;
};

void Reader::optimizer(const YAML::Node& opt, const std::string& key, bool torchtune) {
  // torchtune: {_component_: torch.optim.AdamW, fused: True, lr: ...};
  // LitGPT: "AdamW" or {class_path: torch.optim.AdamW, init_args: {...}}.
  std::string cls;
  YAML::Node args = opt;
  if (opt.IsScalar()) {
    cls = str(opt, key);
  } else if (opt.IsMap()) {
    cls = str(opt[torchtune ? "_component_" : "class_path"],
              key + (torchtune ? "._component_" : ".class_path"));
    if (!torchtune)
      args = opt["init_args"];
  }
  std::string name = cls.substr(cls.rfind('.') == std::string::npos ? 0 : cls.rfind('.') + 1);
  bool paged = name.rfind("Paged", 0) == 0;
  if (paged)
    s_->fw.paged_optimizer = true;
  if (name == "AdamW" || name == "Adam" || name == "PagedAdamW" || name == "PagedAdam") {
    s_->optimizer = OptimizerKind::kAdamW;
    if (args.IsMap() && args["fused"] && flag(args["fused"], key + ".fused"))
      s_->optimizer = OptimizerKind::kAdamWFused;
    if (args.IsMap() && args["foreach"] && !args["foreach"].IsNull() &&
        !flag(args["foreach"], key + ".foreach"))
      s_->optimizer = OptimizerKind::kAdamWForLoop;
  } else if (name == "AdamW8bit" || name == "PagedAdamW8bit" || name == "Adam8bit") {
    s_->optimizer =
        name == "PagedAdamW8bit" ? OptimizerKind::kPagedAdamW8bit : OptimizerKind::kAdamW8bit;
  } else if (name == "SGD") {
    bool momentum = args.IsMap() && args["momentum"] &&
                    as<double>(args["momentum"], key + ".momentum", "a number") > 0;
    s_->optimizer = momentum ? OptimizerKind::kSgdMomentum : OptimizerKind::kSgd;
  } else if (!cls.empty()) {
    warn(key, "optimizer \"" + cls + "\" not modelled; AdamW assumed");
  }
}

void Reader::lora_targets_torchtune(const YAML::Node& model) {
  std::vector<std::string> names;
  if (model["lora_attn_modules"]) {
    const YAML::Node& list = model["lora_attn_modules"];
    if (!list.IsSequence())
      throw Error(file_, "model.lora_attn_modules", "expected a list of module names");
    for (const YAML::Node& n : list)
      names.push_back(str(n, "model.lora_attn_modules"));
  }
  if (model["apply_lora_to_mlp"] && flag(model["apply_lora_to_mlp"], "model.apply_lora_to_mlp"))
    names.push_back("mlp");
  if (model["apply_lora_to_output"] &&
      flag(model["apply_lora_to_output"], "model.apply_lora_to_output"))
    names.push_back("output");
  if (names.empty())
    return;
  s_->lora.targets.clear();
  for (const std::string& n : names) {
    for (const std::string& hf : trace::hf_module_names(Framework::kTorchtune, n))
      s_->lora.targets.push_back(hf);
  }
}

bool Reader::torchtune_launch(int64_t* nproc) const {
  // recipes/configs/**.yaml open with a comment such as
  //   tune run --nproc_per_node 4 full_finetune_distributed --config llama3_1/8B_full
  std::istringstream lines(text_);
  std::string line;
  while (std::getline(lines, line)) {
    size_t hash = line.find_first_not_of(" \t");
    if (hash == std::string::npos || line[hash] != '#')
      continue;
    size_t run = line.find("tune run");
    if (run == std::string::npos)
      continue;
    bool distributed = line.find("_distributed", run) != std::string::npos;
    size_t n = line.find("--nproc_per_node", run);
    if (n != std::string::npos) {
      size_t digits = line.find_first_of("0123456789", n);
      size_t space = line.find_first_not_of(" =\t", n + 16);
      if (digits != std::string::npos && digits == space)
        *nproc = std::stoll(line.substr(digits, 6));
    }
    return distributed;
  }
  return false;
}

void Reader::read_compile(const YAML::Node& v) {
  if (!v.IsMap()) {
    s_->fw.compile = s_->fw.compile_loss = flag(v, "compile");
    return;
  }
  s_->fw.compile = s_->fw.compile_loss = true;
  for (const auto& kv : v) {
    std::string part = kv.first.as<std::string>();
    std::string key = "compile." + part;
    if (part == "model") {
      s_->fw.compile = flag(kv.second, key);
    } else if (part == "loss") {
      s_->fw.compile_loss = flag(kv.second, key);
    } else if (part == "scale_grads") {
      flag(kv.second, key);  // a compiled gradient scaling keeps nothing
    } else if (part == "optimizer_step") {
      if (flag(kv.second, key))
        warn(key, "a compiled optimizer step is not modelled; traced eagerly (an upper bound)");
    } else {
      warn(key, "not modelled");
    }
  }
}

void Reader::torchtune_fsdp(const std::string& key, const YAML::Node& v) {
  ParallelSetup& p = s_->parallel;
  if (key == "fsdp_cpu_offload") {
    // training.shard_model(cpu_offload=True): CPUOffloadPolicy, parameters,
    // gradients and the optimizer step on the CPU.
    bool off = flag(v, key);
    p.offload_params = off;
    p.offload_optimizer = off;
  } else if (key == "fsdp_reshard_after_forward") {
    p.fsdp_sharding = flag(v, key) ? FsdpSharding::kFullShard : FsdpSharding::kShardGradOp;
  } else if (key == "fsdp_sharding_strategy") {
    std::string name = str(v, key);
    if (name == "FULL_SHARD")
      p.fsdp_sharding = FsdpSharding::kFullShard;
    else if (name == "SHARD_GRAD_OP")
      p.fsdp_sharding = FsdpSharding::kShardGradOp;
    else if (name == "NO_SHARD")
      p.fsdp_sharding = FsdpSharding::kNoShard;
    else if (name == "HYBRID_SHARD")
      p.fsdp_sharding = FsdpSharding::kHybridShard;
    else
      throw Error(
          file_, key,
          "expected FULL_SHARD, SHARD_GRAD_OP, NO_SHARD or HYBRID_SHARD, got \"" + name + "\"");
  } else if (key == "custom_sharded_layers") {
    // training.get_shard_conditions: modules whose name matches an entry get
    // a fully_shard of their own (training/_distributed.py at 1814feb).
    if (v.IsNull())
      return;
    if (!v.IsSequence())
      throw Error(file_, key, "expected a list of module names, e.g. ['tok_embeddings', 'output']");
    bool embed = false, head = false;
    for (const YAML::Node& n : v) {
      std::string name = str(n, key);
      bool is_embed = name == "tok_embeddings" || name.ends_with(".tok_embeddings");
      bool is_head = name == "output" || name.ends_with(".output");
      embed = embed || is_embed;
      head = head || is_head;
      if (!is_embed && !is_head)
        warn(key,
             "\"" + name + "\" as a unit of its own is not modelled (traced in the root unit)");
    }
    p.embedding_units = embed || head;
    if (embed != head) {
      warn(key, std::string("only \"") + (embed ? "tok_embeddings" : "output") +
                    "\" is listed; traced with both the embedding and the head as units of their "
                    "own");
    }
  } else {  // tensor_parallel_dim, data_parallel_shard_dim, data_parallel_replicate_dim
    if (!v.IsNull() && v.IsScalar() && v.as<std::string>() != "1" &&
        !(key == "data_parallel_shard_dim" && v.as<std::string>() == "-1"))
      warn(key, "tensor parallelism and device meshes are not modelled for torchtune");
  }
}

void Reader::torchtune(const YAML::Node& root) {
  apply_framework_defaults(Framework::kTorchtune, s_);
  r_->framework = Framework::kTorchtune;
  int64_t nproc = 0;
  bool distributed = torchtune_launch(&nproc);
  for (const char* key : {"fsdp_cpu_offload", "fsdp_sharding_strategy",
                          "fsdp_reshard_after_forward", "custom_sharded_layers"}) {
    if (root[key])
      distributed = true;
  }
  if (distributed) {
    // recipes/full_finetune_distributed.py, lora_finetune_distributed.py:
    // FSDP over every process (training.shard_model).
    s_->parallel.method = Method::kFsdp;
    if (nproc > 0) {
      s_->parallel.dp = static_cast<int>(nproc);
    } else {
      warn("tune run",
           "a distributed recipe whose --nproc_per_node is not in the config; give --dp");
    }
  }
  s_->fw.output_chunks = 0;  // nn.CrossEntropyLoss unless the loss says otherwise
  int64_t max_seq = 0;
  bool packed = false;
  for (const auto& kv : root) {
    std::string key = kv.first.as<std::string>();
    const YAML::Node& v = kv.second;
    if (key == "model") {
      std::string comp = str(v["_component_"], "model._component_");
      std::string fn = comp.substr(comp.rfind('.') == std::string::npos ? 0 : comp.rfind('.') + 1);
      if (fn.rfind("qlora_", 0) == 0)
        s_->finetune = FinetuneMode::kQlora;
      else if (fn.rfind("lora_", 0) == 0)
        s_->finetune = FinetuneMode::kLora;
      else
        s_->finetune = FinetuneMode::kFull;
      for (const auto& mk : v) {
        std::string k = mk.first.as<std::string>();
        std::string full = "model." + k;
        if (k == "_component_" || k == "lora_attn_modules" || k == "apply_lora_to_mlp" ||
            k == "apply_lora_to_output") {
          continue;
        } else if (k == "lora_rank") {
          s_->lora.rank = count(mk.second, full);
        } else if (k == "lora_alpha") {
          s_->lora.alpha = as<double>(mk.second, full, "a number");
        } else if (k == "lora_dropout") {
          s_->lora.dropout = as<double>(mk.second, full, "a number");
        } else if (k == "quantize_base") {
          if (flag(mk.second, full))
            s_->finetune = FinetuneMode::kQlora;
        } else {
          warn(full, "not modelled (the model builder's argument changes nothing llmem traces)");
        }
      }
      lora_targets_torchtune(v);
    } else if (key == "batch_size") {
      s_->batch = count(v, key);
    } else if (key == "gradient_accumulation_steps") {
      s_->grad_accum = count(v, key);
    } else if (key == "dtype") {
      std::string d = str(v, key);
      if (d == "bf16")
        s_->precision = Precision::kBf16;
      else if (d == "fp32")
        s_->precision = Precision::kFp32;
      else
        throw Error(file_, key, "expected bf16 or fp32, got \"" + d + "\"");
    } else if (key == "enable_activation_checkpointing") {
      s_->checkpointing = flag(v, key) ? CheckpointMode::kNonReentrant : CheckpointMode::kOff;
    } else if (key == "enable_activation_offloading") {
      s_->fw.activation_offload = flag(v, key);
    } else if (key == "optimizer_in_bwd") {
      s_->fw.optimizer_in_bwd = flag(v, key);
    } else if (key == "optimizer") {
      optimizer(v, key, true);
      for (const auto& ok : v) {
        std::string k = ok.first.as<std::string>();
        if (k != "_component_" && k != "fused" && k != "foreach" && k != "lr" &&
            k != "weight_decay" && k != "betas" && k != "eps" && k != "momentum") {
          warn("optimizer." + k, "not modelled");
        }
      }
    } else if (key == "loss") {
      std::string comp = str(v["_component_"], "loss._component_");
      if (comp.find("CEWithChunkedOutputLoss") != std::string::npos) {
        s_->fw.output_chunks =
            v["num_output_chunks"] ? count(v["num_output_chunks"], "loss.num_output_chunks") : 8;
      } else if (comp == "torch.nn.CrossEntropyLoss" ||
                 comp == "torch.nn.modules.loss.CrossEntropyLoss") {
        s_->fw.output_chunks = 0;
      } else {
        s_->fw.output_chunks = 8;
        // LinearCrossEntropyLoss projects and upcasts chunk by chunk without
        // keeping the bf16 slices: CEWithChunkedOutputLoss is its upper bound.
        warn("loss._component_", "\"" + comp +
                                     "\" not modelled; traced as CEWithChunkedOutputLoss "
                                     "with 8 chunks (an upper bound by the bf16 logits)");
      }
    } else if (key == "tokenizer") {
      if (v["max_seq_len"] && !v["max_seq_len"].IsNull())
        max_seq = count(v["max_seq_len"], "tokenizer.max_seq_len");
    } else if (key == "dataset") {
      if (v.IsMap() && v["packed"])
        packed = flag(v["packed"], "dataset.packed");
    } else if (key == "compile") {
      read_compile(v);
    } else if (key == "fsdp_cpu_offload" || key == "fsdp_sharding_strategy" ||
               key == "custom_sharded_layers" || key == "fsdp_reshard_after_forward" ||
               key == "tensor_parallel_dim" || key == "data_parallel_shard_dim" ||
               key == "data_parallel_replicate_dim") {
      torchtune_fsdp(key, v);
    } else if (key == "fsdp") {
      // llama3_1/405B_qlora.yaml (1814feb and later) has `fsdp: {cpu_offload:
      // False}`, but lora_finetune_distributed reads cfg.get("fsdp_cpu_offload"):
      // the map reaches no code.
      warn(key, "lora_finetune_distributed reads fsdp_cpu_offload, not this map; ignored");
    } else if (!no_memory_effect(key)) {
      warn(key, "not modelled");
    }
  }
  s_->fw.packed = packed;
  if (max_seq > 0) {
    s_->seq = max_seq;
    if (!packed) {
      warn("dataset.packed",
           "unpacked batches are padded to their longest sample; estimated at "
           "tokenizer.max_seq_len, the longest possible");
    }
  } else {
    warn("tokenizer.max_seq_len",
         "not set: the peak depends on the dataset's longest sample; "
         "give --seq");
  }
}

void Reader::litgpt(const YAML::Node& root) {
  apply_framework_defaults(Framework::kLitgpt, s_);
  r_->framework = Framework::kLitgpt;
  s_->finetune = root["lora_r"] ? FinetuneMode::kLora : FinetuneMode::kFull;
  std::vector<std::string> lora;  // LitGPT flag names that are true
  std::map<std::string, bool> flags = {{"lora_query", true}, {"lora_key", false},
                                       {"lora_value", true}, {"lora_projection", false},
                                       {"lora_mlp", false},  {"lora_head", false}};
  int64_t devices = 1;
  int64_t global_batch = 0;
  for (const auto& kv : root) {
    std::string key = kv.first.as<std::string>();
    const YAML::Node& v = kv.second;
    if (key == "precision") {
      std::string p = str(v, key);
      if (p == "bf16-true") {
        s_->precision = Precision::kBf16;
      } else if (p == "bf16-mixed") {
        s_->precision = Precision::kBf16Mixed;
        s_->fw.loss_fp32 = true;  // log_softmax autocasts to fp32
        s_->lora.adapter_fp32 = true;
      } else if (p == "32-true") {
        s_->precision = Precision::kFp32;
      } else if (p == "16-true") {
        s_->precision = Precision::kFp16;
      } else if (!p.empty()) {
        throw Error(file_, key, "expected bf16-true, bf16-mixed, 32-true or 16-true");
      }
    } else if (key == "quantize") {
      std::string q = str(v, key);
      if (q.empty())
        continue;
      if (q.rfind("bnb.nf4", 0) == 0 || q.rfind("bnb.fp4", 0) == 0) {
        s_->finetune = FinetuneMode::kQlora;
        s_->quant.nf4 = q.rfind("bnb.nf4", 0) == 0;
        s_->quant.double_quant = q.size() > 3 && q.substr(q.size() - 3) == "-dq";
        s_->fw.paged_optimizer = true;  // instantiate_bnb_optimizer: bnb PagedAdamW
      } else {
        warn(key, "\"" + q + "\" not modelled");
      }
    } else if (key == "devices") {
      if (v.IsScalar() && v.as<std::string>() == "auto") {
        warn(key, "\"auto\": every visible GPU; give --dp (one GPU traced without it)");
      } else if (!v.IsNull()) {
        devices = count(v, key);
      }
      if (devices > 1) {
        // litgpt/finetune/*.py: devices > 1 selects FSDPStrategy (Fabric FSDP1).
        s_->parallel.method = Method::kFsdp;
        s_->parallel.dp = static_cast<int>(devices);
      }
    } else if (key == "lora_r") {
      s_->lora.rank = count(v, key);
    } else if (key == "lora_alpha") {
      s_->lora.alpha = as<double>(v, key, "a number");
    } else if (key == "lora_dropout") {
      s_->lora.dropout = as<double>(v, key, "a number");
    } else if (flags.count(key) > 0) {
      flags[key] = flag(v, key);
    } else if (key == "train") {
      for (const auto& tk : v) {
        std::string k = tk.first.as<std::string>();
        std::string full = "train." + k;
        if (k == "micro_batch_size") {
          s_->batch = count(tk.second, full);
        } else if (k == "global_batch_size") {
          global_batch = count(tk.second, full);
        } else if (k == "max_seq_length") {
          if (!tk.second.IsNull())
            s_->seq = count(tk.second, full);
        } else if (k == "tie_embeddings") {
          if (flag(tk.second, full))
            warn(full, "tied embeddings not modelled for LitGPT (lm_head traced separate)");
        } else if (!no_memory_effect(k)) {
          warn(full, "not modelled");
        }
      }
    } else if (key == "optimizer") {
      optimizer(v, key, false);
    } else if (!no_memory_effect(key)) {
      warn(key, "not modelled");
    }
  }
  if (global_batch > 0 && s_->batch > 0)
    s_->grad_accum = std::max<int64_t>(1, global_batch / (s_->batch * devices));
  if (s_->finetune != FinetuneMode::kFull) {
    static const std::pair<const char*, const char*> names[] = {
        {"lora_query", "query"},           {"lora_key", "key"}, {"lora_value", "value"},
        {"lora_projection", "projection"}, {"lora_mlp", "mlp"}, {"lora_head", "head"}};
    s_->lora.targets.clear();
    for (const auto& [flag_name, module] : names) {
      if (!flags[flag_name])
        continue;
      for (const std::string& hf : trace::hf_module_names(Framework::kLitgpt, module))
        s_->lora.targets.push_back(hf);
    }
  }
  if (!root["train"] || !root["train"]["max_seq_length"] ||
      root["train"]["max_seq_length"].IsNull()) {
    warn("train.max_seq_length",
         "not set: the peak depends on the dataset's longest sample; "
         "give --seq");
  }
}

}  // namespace

std::vector<std::string> framework_module_names(Framework f, const std::string& name) {
  return trace::hf_module_names(f, name);
}

RecipeResult read_recipe(const std::string& text, const std::string& file, TrainingSetup* setup) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    throw Error(file, "",
                "not valid YAML (line " + std::to_string(e.mark.line + 1) + ", column " +
                    std::to_string(e.mark.column + 1) + "): " + e.msg);
  }
  if (!root.IsMap())
    throw Error(file, "", "expected a YAML mapping of recipe options");
  RecipeResult result;
  Reader reader(file, text, setup, &result);
  try {
    if (root["model"] && root["model"].IsMap() && root["model"]["_component_"]) {
      reader.torchtune(root);
      if (root["checkpointer"] && root["checkpointer"]["checkpoint_dir"])
        result.checkpoint =
            reader.str(root["checkpointer"]["checkpoint_dir"], "checkpointer.checkpoint_dir");
    } else if (root["checkpoint_dir"] || root["precision"] || root["train"]) {
      reader.litgpt(root);
      if (root["checkpoint_dir"])
        result.checkpoint = reader.str(root["checkpoint_dir"], "checkpoint_dir");
    } else {
      throw Error(file, "",
                  "neither a torchtune recipe config (model._component_) nor a LitGPT "
                  "config_hub file (checkpoint_dir, precision, train)");
    }
  } catch (const YAML::Exception& e) {
    throw Error(file, "", std::string("unexpected YAML structure: ") + e.what());
  }
  return result;
}

RecipeResult read_recipe_file(const std::string& path, TrainingSetup* setup) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw Error(path, "", "cannot open the file for reading");
  std::ostringstream text;
  text << in.rdbuf();
  return read_recipe(text.str(), path, setup);
}

}  // namespace llmem
