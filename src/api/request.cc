// Copyright 2026 The llmem Authors.
// Requests (include/llmem/request.h): JSON option objects to a model, a
// training setup and a GPU.

#include "llmem/request.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "llmem/deepspeed.h"
#include "llmem/error.h"
#include "llmem/estimate.h"
#include "llmem/fsdp_config.h"
#include "llmem/recipe.h"
#include "llmem/report.h"

#include "config/config_reader.h"
#include "model/suggest.h"

namespace llmem {
namespace {

constexpr const char* kLigerHfOnly =
    "Liger kernels are modelled for --framework hf (the Trainer's use_liger_kernel)";

using nlohmann::json;

// Every key, in the order of the documentation. Keep request_keys() and the
// parser below in step.
const std::vector<std::string>& all_keys() {
  static const std::vector<std::string> kKeys = {
      // model and GPU
      "model", "gpu", "gpu_mem", "device",
      // the step
      "batch", "seq", "grad_accum", "precision", "optimizer", "attention", "grad_ckpt", "ckpt_mode",
      "dropout", "freeze_layers", "freeze_embeddings", "framework", "recipe", "optimizer_in_bwd",
      "activation_offload", "paged_optimizer", "output_chunks", "lm_head_chunk", "sdpa_mask",
      "packed", "compile", "liger",
      // LoRA / QLoRA
      "lora", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "lora_dtype", "quant",
      "quant_compute", "no_double_quant", "quant_block", "no_prepare_kbit",
      // PyTorch
      "torch_version", "transformers_version", "bitsandbytes_version", "expandable_segments",
      "max_split_size_mb",
      // distributed layout
      "method", "dp", "tp", "pp", "gpus_per_node", "schedule", "virtual_stages",
      "sequence_parallel", "offload", "offload_optimizer", "offload_params", "ddp_bucket_mb",
      "gradient_as_bucket_view", "reduce_bucket_size", "allgather_bucket_size",
      "stage3_prefetch_bucket_size", "stage3_max_live_parameters", "contiguous_gradients",
      "overlap_comm", "zero_impl", "fsdp_sharding", "fsdp_version", "limit_all_gathers",
      "embedding_units", "deepspeed_config", "fsdp_config",
      // output
      "estimator", "chunk_elems"};
  return kKeys;
}

// PEFT LoraConfig fields that leave memory as llmem models it whatever their
// value (peft/tuners/lora/config.py).
constexpr const char* kLoraIgnored[] = {"task_type",
                                        "peft_type",
                                        "auto_mapping",
                                        "base_model_name_or_path",
                                        "revision",
                                        "inference_mode",
                                        "fan_in_fan_out",
                                        "init_lora_weights",
                                        "use_rslora",
                                        "layers_pattern",
                                        "megatron_config",
                                        "megatron_core",
                                        "loftq_config",
                                        "eva_config",
                                        "corda_config",
                                        "runtime_config",
                                        "lora_ga_config",
                                        "alora_invocation_tokens",
                                        "ensure_weight_tying",
                                        "qalora_group_size"};
// LoraConfig fields llmem models only at their default ("unset") value.
constexpr const char* kLoraDefaultOnly[] = {
    "use_dora",          "modules_to_save", "layers_to_transform", "rank_pattern",
    "alpha_pattern",     "exclude_modules", "layer_replication",   "trainable_token_indices",
    "target_parameters", "lora_bias",       "use_qalora",          "bias"};

std::string underscored(std::string_view option) {
  std::string out(option);
  for (char& ch : out) {
    if (ch == '-')
      ch = '_';
  }
  return out;
}

std::string dashed(std::string_view key) {
  std::string out = "--";
  for (char ch : key)
    out.push_back(ch == '_' ? '-' : ch);
  return out;
}

// A short rendering of a JSON value for messages.
std::string shown(const json& v) {
  std::string text = v.dump();
  if (text.size() > 60) {
    size_t cut = 57;
    while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80)
      --cut;  // not inside a UTF-8 sequence
    text = text.substr(0, cut) + "...";
  }
  return text;
}

// The text after "<source>: " and "key '<key>': " in an Error's what().
std::string message_of(const Error& e) {
  std::string what = e.what();
  size_t skip = 0;
  if (!e.source().empty())
    skip += e.source().size() + 2;
  if (!e.key().empty())
    skip += e.key().size() + 8;  // "key 'K': "
  return skip <= what.size() ? what.substr(skip) : what;
}

// Names that training scripts use for llmem's keys (Trainer arguments, PEFT,
// common spellings); only ever suggested, never accepted.
constexpr std::pair<const char*, const char*> kKeyAliases[] = {
    {"batch_size", "batch"},
    {"per_device_train_batch_size", "batch"},
    {"micro_batch_size", "batch"},
    {"seq_len", "seq"},
    {"seq_length", "seq"},
    {"sequence_length", "seq"},
    {"max_seq_length", "seq"},
    {"max_seq_len", "seq"},
    {"max_length", "seq"},
    {"gradient_accumulation_steps", "grad_accum"},
    {"gradient_checkpointing", "grad_ckpt"},
    {"optim", "optimizer"},
    {"attn_implementation", "attention"},
    {"rank", "r"},
    {"alpha", "lora_alpha"},
    {"target_modules", "lora_targets"},
    {"targets", "target_modules"},
    {"bf16", "precision"},
    {"fp16", "precision"},
};

// The key the user probably meant: an alias, the nearest by edit distance, or
// a known key that begins the name ("batchsize" -> "batch").
std::string suggest_key(const std::string& key, const std::vector<std::string>& known) {
  auto is_known = [&](const std::string& k) {
    return std::find(known.begin(), known.end(), k) != known.end();
  };
  for (const auto& [alias, meant] : kKeyAliases) {
    if (key == alias && is_known(meant))
      return meant;
  }
  std::string nearest = model::nearest(key, known);
  if (!nearest.empty())
    return nearest;
  for (const std::string& k : known) {
    if (k.size() >= 3 && key.rfind(k, 0) == 0 && k.size() > nearest.size())
      nearest = k;
  }
  return nearest;
}

class Context {
 public:
  explicit Context(const RequestOptions& options) : options_(options) {}

  const RequestOptions& options() const { return options_; }
  bool cli() const { return options_.style == KeyStyle::kCli; }

  /// How a message mentions `key`: "--lora-rank" or "lora_rank".
  std::string name(std::string_view key) const { return cli() ? dashed(key) : std::string(key); }

  [[noreturn]] void fail(std::string_view key, const std::string& message) const {
    if (cli())
      throw Error(dashed(key), "", message);
    throw Error(options_.source, std::string(key), message);
  }

  /// Rethrows the Error in flight: one that names a CLI option ("--gpu", as
  /// library functions do) is restated in this request's style.
  [[noreturn]] void restyle() const {
    try {
      throw;
    } catch (const Error& e) {
      if (!cli() && e.key().empty() && e.source().rfind("--", 0) == 0) {
        throw Error(options_.source, underscored(e.source().substr(2)), message_of(e));
      }
      throw;
    }
  }

 private:
  const RequestOptions& options_;
};

// A value that leaves a PEFT option at its default: null, false, "none", empty.
bool is_default(const json& v) {
  return v.is_null() || v == false || (v.is_string() && v == "none") ||
         ((v.is_array() || v.is_object()) && v.empty());
}

/// Typed access to the keys of one JSON object; null counts as absent.
class Fields {
 public:
  Fields(const json& object, const Context& c, std::string prefix = "")
      : object_(object), c_(c), prefix_(std::move(prefix)) {}

  const json* get(const char* key) const {
    auto it = object_.find(key);
    if (it == object_.end() || it->is_null())
      return nullptr;
    return &*it;
  }
  bool has(const char* key) const { return get(key) != nullptr; }

  [[noreturn]] void fail(const char* key, const std::string& message) const {
    c_.fail(prefix_ + key, message);
  }

  int64_t integer(const char* key, int64_t fallback, int64_t lo, int64_t hi,
                  const std::string& expected) const {
    const json* v = get(key);
    if (v == nullptr)
      return fallback;
    if (!v->is_number_integer() ||
        (v->is_number_unsigned() &&
         v->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))) {
      fail(key, "expected an integer, got " + shown(*v));
    }
    int64_t value = v->get<int64_t>();
    if (value < lo || value > hi)
      fail(key, expected + ", got " + std::to_string(value));
    return value;
  }

  double number(const char* key, double fallback, double lo, double hi,
                const std::string& expected) const {
    const json* v = get(key);
    if (v == nullptr)
      return fallback;
    if (!v->is_number())
      fail(key, "expected a number, got " + shown(*v));
    double value = v->get<double>();
    if (!std::isfinite(value) || value < lo || value > hi)
      fail(key, expected + ", got " + shown(*v));
    return value;
  }

  bool boolean(const char* key, bool fallback) const {
    const json* v = get(key);
    if (v == nullptr)
      return fallback;
    if (!v->is_boolean())
      fail(key, "expected true or false, got " + shown(*v));
    return v->get<bool>();
  }

  std::string text(const char* key, const std::string& fallback) const {
    const json* v = get(key);
    if (v == nullptr)
      return fallback;
    if (!v->is_string())
      fail(key, "expected a string, got " + shown(*v));
    return v->get<std::string>();
  }

  /// One of `names`; returns its index. The message matches parse_method's.
  size_t choice(const char* key, const std::string& fallback,
                std::initializer_list<const char*> names) const {
    return choose(key, text(key, fallback), names);
  }
  size_t choose(const char* key, const std::string& value,
                std::initializer_list<const char*> names) const {
    std::vector<std::string> known;
    for (const char* n : names) {
      if (value == n)
        return known.size();
      known.push_back(n);
    }
    std::string message = "unknown value \"" + value + "\"";
    std::string nearest = model::nearest(value, known);
    if (!nearest.empty())
      message += " (did you mean \"" + nearest + "\"?)";
    fail(key, message + "; expected one of " + model::join(known, ", "));
  }

  /// A list of strings, or one comma-separated string.
  std::vector<std::string> names(const char* key, const std::string& what = "module names") const {
    const json* v = get(key);
    std::vector<std::string> out;
    if (v == nullptr)
      return out;
    auto add = [&](const std::string& item) {
      if (item.empty())
        fail(key, "expected " + what + ", got an empty name");
      out.push_back(item);
    };
    if (v->is_string()) {
      std::string s = v->get<std::string>();
      size_t start = 0;
      while (start <= s.size()) {
        size_t comma = s.find(',', start);
        if (comma == std::string::npos)
          comma = s.size();
        add(s.substr(start, comma - start));
        start = comma + 1;
      }
      return out;
    }
    if (!v->is_array())
      fail(key, "expected a list of " + what + ", got " + shown(*v));
    for (const json& item : *v) {
      if (!item.is_string())
        fail(key, "expected a list of " + what + ", got " + shown(item) + " in it");
      add(item.get<std::string>());
    }
    return out;
  }

  /// Throws for a key outside `known` (with a suggestion).
  /// With `tolerated`, an unknown key whose value is a default (null, false,
  /// "none", empty) is appended there instead (fields of newer PEFT releases).
  void reject_unknown(const std::vector<std::string>& known,
                      std::vector<std::string>* tolerated = nullptr) const {
    std::set<std::string> set(known.begin(), known.end());
    for (const auto& [key, value] : object_.items()) {
      if (set.count(key) != 0)
        continue;
      if (tolerated != nullptr && is_default(value)) {
        tolerated->push_back(prefix_ + key);
        continue;
      }
      std::string message = "unknown key '" + prefix_ + key + "'";
      std::string nearest = suggest_key(key, known);
      if (!nearest.empty())
        message += " (did you mean '" + prefix_ + nearest + "'?)";
      if (c_.cli())
        throw Error(message);
      throw Error(c_.options().source, "", message);
    }
  }

 private:
  const json& object_;
  const Context& c_;
  std::string prefix_;
};

ModelSpec model_from(const json& value, const Context& c) {
  if (value.is_object()) {
    ModelSpec spec;
    try {
      spec = parse_config(value.dump(), "model");
    } catch (...) {
      c.restyle();
    }
    auto it = value.find("_name_or_path");
    spec.name = it != value.end() && it->is_string() && !it->get<std::string>().empty()
                    ? it->get<std::string>()
                    : "model";
    return spec;
  }
  if (!value.is_string()) {
    c.fail("model",
           "expected a catalog name, a config.json path or a config object, got " + shown(value));
  }
  std::string ref = value.get<std::string>();
  try {
    return load_model(ref);
  } catch (const Error& e) {
    // load_model names the reference itself; say which key held it.
    if (!c.cli() && e.key().empty() && e.source() == ref)
      c.fail("model", "\"" + ref + "\": " + message_of(e));
    c.restyle();
  }
}

// PEFT: a string target_modules is a regular expression matched against
// whole module names (re.fullmatch); "all-linear" is every linear layer but
// the output layer. llmem targets modules by name in every layer, so the
// expression must pick a name in all layers or in none.
std::vector<std::string> targets_from_pattern(const std::string& pattern, const ModelSpec& model,
                                              const Fields& f) {
  std::regex re;
  bool all_linear = pattern == "all-linear";
  if (!all_linear) {
    try {
      re = std::regex(pattern, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      f.fail("target_modules", "not a valid regular expression: " + std::string(e.what()));
    }
  }
  std::map<std::string, std::pair<int, int>> modules;  // name -> (matched, all)
  const std::string suffix = ".weight";
  for (const TensorSpec& t : model.tensors) {
    if (t.layer < 0 || t.shape.size() != 2 || t.name.size() <= suffix.size() ||
        t.name.compare(t.name.size() - suffix.size(), suffix.size(), suffix) != 0) {
      continue;
    }
    std::string prefix = t.name.substr(0, t.name.size() - suffix.size());
    std::string module = prefix.substr(prefix.rfind('.') + 1);
    auto& [matched, all] = modules[module];
    ++all;
    if (all_linear || std::regex_match(prefix, re))
      ++matched;
  }
  std::vector<std::string> out;
  for (const auto& [module, counts] : modules) {
    if (counts.first == 0)
      continue;
    if (counts.first != counts.second) {
      f.fail("target_modules", "\"" + pattern + "\" matches '" + module +
                                   "' in some layers only; llmem adapts a module in every layer");
    }
    out.push_back(module);
  }
  if (out.empty())
    f.fail("target_modules", "\"" + pattern + "\" matches no linear module of " + model.name);
  return out;
}

void read_peft_lora(const json& value, const Context& c, const ModelSpec& model, LoraSetup* lora,
                    int64_t* rank, std::vector<std::string>* warnings) {
  if (!value.is_object())
    c.fail("lora", "expected a PEFT LoraConfig as an object, got " + shown(value));
  Fields f(value, c, "lora.");
  std::vector<std::string> known = {"r", "lora_alpha", "lora_dropout", "target_modules"};
  known.insert(known.end(), std::begin(kLoraIgnored), std::end(kLoraIgnored));
  known.insert(known.end(), std::begin(kLoraDefaultOnly), std::end(kLoraDefaultOnly));
  std::vector<std::string> tolerated;
  f.reject_unknown(known, &tolerated);
  for (const std::string& key : tolerated) {
    warnings->push_back(c.name(key) + ": not a LoraConfig field llmem knows; ignored at its " +
                        "default value");
  }
  if (f.has("peft_type") && f.text("peft_type", "") != "LORA")
    f.fail("peft_type", "expected \"LORA\", got " + shown(*f.get("peft_type")));
  for (const char* key : kLoraDefaultOnly) {
    const json* v = f.get(key);
    if (v == nullptr || is_default(*v))
      continue;
    f.fail(key, "not modelled yet (only its default is), got " + shown(*v));
  }
  *rank = f.integer("r", 8, 1, 1 << 20, "expected a positive rank");
  lora->alpha = f.number("lora_alpha", 8, -1e9, 1e9, "expected a number");
  lora->dropout = f.number("lora_dropout", 0, 0, 1, "expected a probability between 0 and 1");
  const json* targets = f.get("target_modules");
  if (targets != nullptr && targets->is_string())
    lora->targets = targets_from_pattern(targets->get<std::string>(), model, f);
  else
    lora->targets = f.names("target_modules");
}

/// "2.4" -> 204 for the version key `key` (torch_version, transformers_version).
int version_from(const char* key, const char* example, const Fields& f) {
  std::string text = f.text(key, "");
  int major = 0;
  int minor = 0;
  if (std::sscanf(text.c_str(), "%d.%d", &major, &minor) != 2 || major < 1 || major > 9 ||
      minor < 0 || minor > 99) {
    f.fail(key, std::string("expected MAJOR.MINOR such as ") + example + ", got \"" + text + "\"");
  }
  return major * 100 + minor;
}

/// "0.43.2" -> 4302 (bitsandbytes_version: 0.MINOR[.PATCH]).
int bnb_version_from(const Fields& f) {
  std::string text = f.text("bitsandbytes_version", "");
  int major = -1;
  int minor = 0;
  int patch = 0;
  int n = std::sscanf(text.c_str(), "%d.%d.%d", &major, &minor, &patch);
  if (n < 2 || major != 0 || minor < 1 || minor > 99 || patch < 0 || patch > 99)
    f.fail("bitsandbytes_version", "expected 0.MINOR[.PATCH] such as 0.45.5, got \"" + text + "\"");
  return minor * 100 + (n == 3 ? patch : 0);
}

// framework: the profile's defaults (apply_framework_defaults); recipe: a
// torchtune or LitGPT YAML (read_recipe_file), which names its framework and
// whose warnings go to Request::warnings. Both before every other key, which
// then overrides them.
// `fw`'s defaults, then the recipe file if the request names one (it must be
// a file of that framework when the request also names the framework).
void apply_framework(const Fields& f, const Context& c, Framework fw, TrainingSetup* s,
                     std::vector<std::string>* warnings) {
  apply_framework_defaults(fw, s);
  if (!f.has("recipe"))
    return;
  // Errors inside the file name the file and its key, after the request's key.
  RecipeResult recipe;
  try {
    recipe = read_recipe_file(f.text("recipe", ""), s);
  } catch (const Error& e) {
    f.fail("recipe", e.what());
  }
  if (f.has("framework") && recipe.framework != fw) {
    f.fail("framework", "the recipe is a " + std::string(framework_name(recipe.framework)) +
                            " file, not " + c.name("framework") + " " +
                            std::string(framework_name(fw)));
  }
  for (std::string& w : recipe.warnings)
    warnings->push_back(std::move(w));
}

void read_framework(const Fields& f, const Context& c, Request* r) {
  constexpr Framework kFrameworks[] = {Framework::kHf, Framework::kTorchtune, Framework::kLitgpt};
  Framework fw = kFrameworks[f.choice("framework", "hf", {"hf", "torchtune", "litgpt"})];
  apply_framework(f, c, fw, &r->setup, &r->warnings);
}

void read_step(const Fields& f, const Context& c, TrainingSetup* s) {
  s->batch = f.integer("batch", s->batch, 1, 1 << 20, "expected a micro-batch between 1 and 2^20");
  s->seq = f.integer("seq", s->seq, 2, 1 << 24, "expected a sequence length between 2 and 2^24");
  s->grad_accum = f.integer("grad_accum", s->grad_accum, 1, 1024,
                            "expected between 1 and 1024 micro-batches per step");
  try {
    if (f.has("precision"))
      s->precision = parse_precision(f.text("precision", ""), "--precision");
    if (f.has("optimizer"))
      s->optimizer = parse_optimizer(f.text("optimizer", ""), "--optimizer");
    if (f.has("attention"))
      s->attention = parse_attention(f.text("attention", ""), "--attention");
    if (f.boolean("grad_ckpt", false)) {
      s->checkpointing = parse_checkpointing(f.text("ckpt_mode", "reentrant"), "--ckpt-mode");
    } else if (f.has("ckpt_mode")) {
      f.fail("ckpt_mode", "has no effect without " + c.name("grad_ckpt"));
    }
  } catch (...) {
    c.restyle();
  }
  s->dropout =
      f.number("dropout", s->dropout, 0, 1, "expected a dropout probability between 0 and 1");
  s->device = f.choice("device", "cuda", {"cuda", "cpu"}) == 0 ? Device::kCuda : Device::kCpu;
  // The framework (and its recipe) were applied first (read_framework); the
  // options given here override them.
  if (f.boolean("optimizer_in_bwd", false))
    s->fw.optimizer_in_bwd = true;
  if (f.boolean("activation_offload", false))
    s->fw.activation_offload = true;
  if (f.boolean("paged_optimizer", false))
    s->fw.paged_optimizer = true;
  if (f.boolean("packed", false)) {
    if (s->framework != Framework::kTorchtune)
      f.fail("packed", "packed sequences are modelled for --framework torchtune");
    s->fw.packed = true;
  }
  if (f.boolean("compile", false)) {
    if (s->framework != Framework::kTorchtune)
      f.fail("compile", "torch.compile is modelled for --framework torchtune (compile=True)");
    s->fw.compile = true;
    s->fw.compile_loss = true;
  }
  if (f.boolean("liger", false)) {
    if (s->framework != Framework::kHf)
      f.fail("liger", kLigerHfOnly);
    s->fw.liger = true;
  }
  if (f.boolean("sdpa_mask", false))
    s->fw.sdpa_attn_mask = true;
  s->fw.output_chunks = f.integer("output_chunks", s->fw.output_chunks, 0, 1 << 20,
                                  "expected a chunk count (0: off)");
  s->fw.lm_head_chunk_tokens = f.integer("lm_head_chunk", s->fw.lm_head_chunk_tokens, 0, 1 << 24,
                                         "expected a chunk size in tokens (0: off)");
  s->torch_version =
      f.has("torch_version") ? version_from("torch_version", "2.4", f) : s->torch_version;
  s->transformers_version = f.has("transformers_version")
                                ? version_from("transformers_version", "4.57", f)
                                : s->transformers_version;
  if (f.has("bitsandbytes_version")) {
    // 2048-element absmax blocks of the 8-bit optimizer states up to 0.43.3
    // (256 from 0.44.0, PR #1365); MatMul4Bit's input kept on the graph
    // before 0.43.2 (PR #1270).
    int v = bnb_version_from(f);
    s->fw.bnb_block = v < 4400 ? 2048 : 256;
    s->fw.bnb_matmul_keeps_input = v < 4302;
  }
  s->allocator.expandable_segments = f.boolean("expandable_segments", false);
  if (f.has("max_split_size_mb")) {
    double mb = f.number("max_split_size_mb", 0, 20, 1e9,
                         "expected at least 20 (PyTorch rejects smaller max_split_size_mb)");
    s->allocator.max_split_size = static_cast<uint64_t>(mb * 1048576.0);
  }
}

void read_finetune(const Fields& f, const json& object, const Context& c, const ModelSpec& model,
                   TrainingSetup* s, std::vector<std::string>* warnings) {
  int64_t rank = 0;
  if (f.has("lora")) {
    for (const char* key : {"lora_rank", "lora_alpha", "lora_dropout", "lora_targets"}) {
      if (f.has(key))
        f.fail(key, "give either " + c.name("lora") + " (a LoraConfig) or " + key + ", not both");
    }
    read_peft_lora(object.at("lora"), c, model, &s->lora, &rank, warnings);
  } else {
    rank = f.integer("lora_rank", 0, 0, 1 << 20, "expected a non-negative rank (0: no LoRA)");
    s->lora.alpha = f.number("lora_alpha", s->lora.alpha, -1e9, 1e9, "expected a number");
    s->lora.dropout =
        f.number("lora_dropout", s->lora.dropout, 0, 1, "expected a probability between 0 and 1");
    if (f.has("lora_targets")) {
      // A framework's own module names (torchtune output_proj, LitGPT query, ...).
      s->lora.targets.clear();
      for (const std::string& t : f.names("lora_targets")) {
        for (const std::string& hf : framework_module_names(s->framework, t))
          s->lora.targets.push_back(hf);
      }
    }
  }
  if (f.has("lora_dtype"))
    s->lora.adapter_fp32 = f.choice("lora_dtype", "fp32", {"fp32", "base"}) == 0;

  if (f.has("quant")) {
    size_t kind = f.choice("quant", "nf4", {"nf4", "fp4"});
    if (rank <= 0) {
      f.fail("quant", "QLoRA trains LoRA adapters: give " + c.name("lora_rank") + " too");
    }
    s->finetune = FinetuneMode::kQlora;
    s->quant.nf4 = kind == 0;
    if (f.has("no_double_quant"))
      s->quant.double_quant = !f.boolean("no_double_quant", false);
    s->quant.block = f.integer("quant_block", s->quant.block, 16, 4096,
                               "expected a block size between 16 and 4096");
    if (f.has("no_prepare_kbit"))
      s->quant.prepare_kbit = !f.boolean("no_prepare_kbit", false);
    s->quant.compute_fp32 = f.choice("quant_compute", "bf16", {"bf16", "fp16", "fp32"}) == 2;
  }
  if (rank > 0) {
    if (s->finetune != FinetuneMode::kQlora)
      s->finetune = FinetuneMode::kLora;
    s->lora.rank = rank;
  }
  s->freeze_layers = f.integer("freeze_layers", 0, 0, model.num_layers,
                               "expected a non-negative count of at most the model's " +
                                   std::to_string(model.num_layers) + " layers");
  s->freeze_embeddings = f.boolean("freeze_embeddings", false);
}

void read_parallel(const Fields& f, const Context& c, ParallelSetup* p) {
  if (f.has("method")) {
    try {
      p->method = parse_method(f.text("method", ""), "--method");
    } catch (...) {
      c.restyle();
    }
  }
  p->dp = static_cast<int>(f.integer("dp", p->dp, 1, 1 << 16, "expected between 1 and 65536"));
  p->tp = static_cast<int>(f.integer("tp", p->tp, 1, 1024, "expected between 1 and 1024"));
  p->pp = static_cast<int>(f.integer("pp", p->pp, 1, 1024, "expected between 1 and 1024"));
  p->gpus_per_node = static_cast<int>(
      f.integer("gpus_per_node", p->gpus_per_node, 1, 64, "expected between 1 and 64"));
  constexpr PipelineSchedule kSchedules[] = {PipelineSchedule::k1F1B, PipelineSchedule::kGpipe,
                                             PipelineSchedule::kInterleaved};
  p->schedule = kSchedules[f.choice("schedule", "1f1b", {"1f1b", "gpipe", "interleaved"})];
  p->virtual_stages = static_cast<int>(f.integer("virtual_stages", p->virtual_stages, 1, 1024,
                                                 "expected between 1 and 1024 model chunks per "
                                                 "pipeline rank"));
  p->sequence_parallel = f.boolean("sequence_parallel", p->sequence_parallel);
  p->offload_optimizer = f.boolean("offload_optimizer", p->offload_optimizer);
  p->offload_params = f.boolean("offload_params", p->offload_params);
  for (const std::string& what : f.names("offload", "optimizer, params")) {
    if (f.choose("offload", what, {"optimizer", "params"}) == 0)
      p->offload_optimizer = true;
    else
      p->offload_params = true;
  }
  p->ddp_bucket_mb =
      f.number("ddp_bucket_mb", p->ddp_bucket_mb, 1e-3, 1e6, "expected a positive size in MiB");
  p->gradient_as_bucket_view = f.boolean("gradient_as_bucket_view", p->gradient_as_bucket_view);
  constexpr int64_t kMaxElems = int64_t{1} << 40;
  const std::string positive = "expected a positive number of elements";
  p->reduce_bucket_size =
      f.integer("reduce_bucket_size", p->reduce_bucket_size, 1, kMaxElems, positive);
  p->allgather_bucket_size =
      f.integer("allgather_bucket_size", p->allgather_bucket_size, 1, kMaxElems, positive);
  p->stage3_prefetch_bucket_size = f.integer(
      "stage3_prefetch_bucket_size", p->stage3_prefetch_bucket_size, 0, kMaxElems, positive);
  p->stage3_max_live_parameters = f.integer("stage3_max_live_parameters",
                                            p->stage3_max_live_parameters, 0, kMaxElems, positive);
  p->contiguous_gradients = f.boolean("contiguous_gradients", p->contiguous_gradients);
  if (f.has("overlap_comm"))
    p->overlap_comm = f.boolean("overlap_comm", false) ? 1 : 0;
  p->torch_zero = f.choice("zero_impl", "deepspeed", {"deepspeed", "torch"}) == 1;
  // The CLI's spelling (full-shard); torch's (FULL_SHARD, full_shard) too.
  // Not given: the framework's (or its recipe's) strategy stays.
  if (f.has("fsdp_sharding")) {
    std::string sharding = f.text("fsdp_sharding", "full-shard");
    for (char& ch : sharding)
      ch = ch == '_' ? '-' : static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    constexpr FsdpSharding kSharding[] = {FsdpSharding::kFullShard, FsdpSharding::kShardGradOp,
                                          FsdpSharding::kHybridShard, FsdpSharding::kNoShard};
    p->fsdp_sharding = kSharding[f.choose(
        "fsdp_sharding", sharding, {"full-shard", "shard-grad-op", "hybrid-shard", "no-shard"})];
  }
  p->fsdp_version =
      static_cast<int>(f.integer("fsdp_version", p->fsdp_version, 1, 2, "expected 1 or 2"));
  p->limit_all_gathers = f.boolean("limit_all_gathers", p->limit_all_gathers);
  if (f.boolean("embedding_units", false)) {
    if (p->method != Method::kFsdp && !f.has("fsdp_config"))
      f.fail("embedding_units", "the embedding and head as units of their own need FSDP");
    p->embedding_units = true;
  }
}

// deepspeed_config / fsdp_config: a path to the file, or the config itself as
// an object (an accelerate YAML config reads JSON too, so an object is passed
// as its JSON text). Applied after the other keys, as they set the method and
// its knobs (include/llmem/deepspeed.h, include/llmem/fsdp_config.h).
using ConfigReaderFn = std::vector<std::string> (*)(std::string_view, const std::string&,
                                                    TrainingSetup*);
void apply_config_file(const char* key, const char* what, ConfigReaderFn read, const json& value,
                       const Context& c, Request* r) {
  std::string text;
  std::string source = key;
  if (value.is_object()) {
    text = value.dump();
  } else if (value.is_string()) {
    source = value.get<std::string>();
    std::ifstream in(source, std::ios::binary);
    if (!in)
      c.fail(key, "cannot open \"" + source + "\" for reading");
    std::ostringstream buffer;
    buffer << in.rdbuf();
    text = buffer.str();
  } else {
    c.fail(key, std::string("expected a path to ") + what + " or the config object, got " +
                    shown(value));
  }
  try {
    std::vector<std::string> warnings = read(text, source, &r->setup);
    r->warnings.insert(r->warnings.end(), warnings.begin(), warnings.end());
  } catch (...) {
    c.restyle();
  }
}

// Parses JSON text and refuses documents nested deeper than any request or
// config needs: rendering and comparing JSON recurse, so depth must be bounded
// before any of that happens (the web API takes requests from anyone).
json parse_bounded(std::string_view text, const Context& c) {
  constexpr size_t kMaxDepth = 64;
  json j;
  try {
    j = config::parse_json(text, c.options().source);
  } catch (...) {
    c.restyle();
  }
  std::vector<std::pair<const json*, size_t>> stack = {{&j, 0}};
  while (!stack.empty()) {
    auto [v, depth] = stack.back();
    stack.pop_back();
    if (depth > kMaxDepth) {
      throw Error(c.options().source, "",
                  "JSON nested deeper than " + std::to_string(kMaxDepth) + " levels");
    }
    if (v->is_structured()) {
      for (const json& child : *v)
        stack.emplace_back(&child, depth + 1);
    }
  }
  return j;
}

json parse_object(std::string_view text, const Context& c) {
  json j = parse_bounded(text, c);
  if (!j.is_object()) {
    throw Error(c.options().source, "", "expected a JSON object of options, got " + shown(j));
  }
  return j;
}

// The GPU of a request: a catalog name (gpu) or a size (gpu_mem), not both.
GpuSpec gpu_from(const Fields& f, const Context& c) {
  try {
    if (f.has("gpu") && f.has("gpu_mem"))
      f.fail("gpu_mem", "give " + c.name("gpu") + " or " + c.name("gpu_mem") + ", not both");
    if (f.has("gpu_mem"))
      return custom_gpu(f.number("gpu_mem", 0, -1e300, 1e300, ""));
    return find_gpu(f.text("gpu", "A100-80GB"));
  } catch (...) {
    c.restyle();
  }
}

// A request's JSON object: only `keys`, with a model.
json request_object(std::string_view text, const Context& c, const std::vector<std::string>& keys) {
  json j = parse_object(text, c);
  Fields(j, c).reject_unknown(keys);
  if (!j.contains("model") || j.at("model").is_null())
    c.fail("model", "required: a catalog name, a config.json path or a config object");
  return j;
}

}  // namespace

Request parse_request(std::string_view json_text, const RequestOptions& options) {
  Context c(options);
  json j = request_object(json_text, c, all_keys());
  Fields f(j, c);
  Request r;
  r.options = options;
  r.model = model_from(j.at("model"), c);
  read_framework(f, c, &r);
  read_step(f, c, &r.setup);
  read_finetune(f, j, c, r.model, &r.setup, &r.warnings);
  read_parallel(f, c, &r.setup.parallel);
  if (f.has("deepspeed_config") && f.has("fsdp_config")) {
    c.fail("fsdp_config",
           "give " + c.name("deepspeed_config") + " or " + c.name("fsdp_config") + ", not both");
  }
  if (f.has("deepspeed_config"))
    apply_config_file("deepspeed_config", "a DeepSpeed JSON config", &apply_deepspeed_config,
                      j.at("deepspeed_config"), c, &r);
  if (f.has("fsdp_config"))
    apply_config_file("fsdp_config", "an accelerate FSDP config", &apply_fsdp_config,
                      j.at("fsdp_config"), c, &r);

  r.gpu = gpu_from(f, c);
  constexpr EstimatorKind kEstimators[] = {EstimatorKind::kLlmem, EstimatorKind::kPaper,
                                           EstimatorKind::kBoth};
  r.estimator = kEstimators[f.choice("estimator", "llmem", {"llmem", "paper", "both"})];
  r.chunk_elems = f.integer("chunk_elems", 0, 0, int64_t{1} << 40,
                            "expected a non-negative chunk size in elements (0: automatic)");
  return r;
}

ModelSpec load_model_json(std::string_view json_value, const RequestOptions& options) {
  Context c(options);
  return model_from(parse_bounded(json_value, c), c);
}

std::string estimate_request_json(const Request& request) {
  Context c(request.options);
  try {
    if (request.estimator == EstimatorKind::kLlmem) {
      Estimate e = estimate(request.model, request.setup, request.gpu);
      return estimate_json(request.model, request.setup, request.gpu, e);
    }
    PaperEstimate p =
        paper_estimate(request.model, request.setup, request.gpu, request.chunk_elems);
    if (request.estimator == EstimatorKind::kPaper)
      return paper_json(p, nullptr);
    Estimate e = estimate(request.model, request.setup, request.gpu);
    return paper_json(p, &e);
  } catch (...) {
    c.restyle();
  }
}

std::string request_json(const std::vector<std::pair<std::string, RequestValue>>& fields) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  for (const auto& [key, value] : fields) {
    std::visit([&, &k = key](const auto& v) { j[k] = v; }, value);
  }
  return j.dump();
}

const std::vector<std::string>& request_keys() {
  return all_keys();
}

const std::vector<std::string>& plan_request_keys() {
  static const std::vector<std::string> kKeys = {
      "model",        "gpus",           "gpu",       "gpu_mem",         "nodes",     "seq",
      "global_batch", "dataset_tokens", "methods",   "allow",           "margin",    "top",
      "max_seq",      "min_gpus",       "paper",     "paper_literal",   "framework", "precision",
      "optimizer",    "attention",      "lora_rank", "max_micro_batch", "max_pp",    "efficiency",
      "recipe",       "liger"};
  return kKeys;
}

PlanQuery parse_plan_request(std::string_view json_text, const RequestOptions& options) {
  Context c(options);
  json j = request_object(json_text, c, plan_request_keys());
  Fields f(j, c);
  if (!f.has("gpus"))
    f.fail("gpus", "required: the number of GPUs");
  PlanQuery q;
  q.options = options;
  q.model = model_from(j.at("model"), c);
  q.gpu = gpu_from(f, c);
  PlanRequest& r = q.request;
  r.gpus = static_cast<int>(f.integer("gpus", 1, 1, 65536, "expected between 1 and 65536 GPUs"));
  r.nodes = static_cast<int>(f.integer("nodes", 1, 1, 8192, "expected between 1 and 8192 nodes"));
  // The framework: hf, the paper's ColossalAI, or torchtune / LitGPT with
  // their defaults and, given a recipe, everything it sets; the plan then
  // searches what the recipe leaves to the launch (layout, micro-batch).
  size_t framework = f.choice("framework", "hf", {"hf", "colossalai", "torchtune", "litgpt"});
  r.colossalai = framework == 1;
  if (r.colossalai && f.has("recipe"))
    f.fail("recipe", "a recipe is a torchtune or LitGPT file; not with " + c.name("framework") +
                         " colossalai");
  constexpr Framework kFrameworks[] = {Framework::kHf, Framework::kHf, Framework::kTorchtune,
                                       Framework::kLitgpt};
  apply_framework(f, c, kFrameworks[framework], &r.base, &q.warnings);
  r.from_recipe = f.has("recipe");
  bool hf = r.base.framework == Framework::kHf;
  r.seq = f.integer("seq", r.from_recipe ? r.base.seq : 512, 2, int64_t{1} << 24,
                    "expected a sequence length of 2 to 2^24");
  r.global_batch =
      f.integer("global_batch", 0, 1, int64_t{1} << 30, "expected a positive sample count");
  r.dataset_tokens =
      f.integer("dataset_tokens", 0, 0, int64_t{1} << 50, "expected a non-negative token count");
  r.margin = f.number("margin", 5, 0, 99.999, "expected a percentage in [0, 100)") / 100;
  q.top = static_cast<int>(f.integer("top", 10, 0, 1 << 20, "expected a non-negative count"));
  r.max_micro_batch =
      f.integer("max_micro_batch", 1024, 1, 1 << 20, "expected a micro-batch of 1 to 2^20");
  r.max_pp = static_cast<int>(f.integer("max_pp", 0, 0, 1024, "expected 0 (no limit) to 1024"));
  r.time.compute_efficiency = f.number("efficiency", 0.5, 1e-6, 1, "expected a share in (0, 1]");
  try {
    for (const std::string& m : f.names("methods", "method names")) {
      if (m == "tp")
        r.methods.push_back(r.colossalai ? Method::kColossal1d : Method::kMegatron);
      else if (m == "dp")
        r.methods.push_back(r.colossalai ? Method::kGemini : Method::kDdp);
      else
        r.methods.push_back(parse_method(m, "--methods"));
    }
  } catch (...) {
    c.restyle();
  }
  for (const std::string& a :
       f.names("allow", "lora, qlora, ckpt, offload, interleaved or liger")) {
    size_t k = f.choose("allow", a, {"lora", "qlora", "ckpt", "offload", "interleaved", "liger"});
    (k == 0   ? r.allow_lora
     : k == 1 ? r.allow_qlora
     : k == 2 ? r.allow_ckpt
     : k == 3 ? r.allow_offload
     : k == 4 ? r.allow_interleaved
              : r.allow_liger) = true;
  }
  if (f.boolean("liger", false)) {
    if (!hf || r.colossalai)
      f.fail("liger", kLigerHfOnly);
    r.base.fw.liger = true;
  }
  // torchtune and LitGPT keep their own (or the recipe's) precision,
  // optimizer and attention unless the request names them.
  std::string precision = f.text("precision", "");
  if (precision.empty() && hf)
    precision = r.colossalai || q.gpu.bf16_tflops <= 0 ? "fp16-mixed" : "bf16-mixed";
  try {
    if (!precision.empty())
      r.base.precision = parse_precision(precision, "--precision");
    if (f.has("optimizer") || hf)
      r.base.optimizer = parse_optimizer(f.text("optimizer", "adamw"), "--optimizer");
    if (f.has("attention") || hf)
      r.base.attention = parse_attention(f.text("attention", "eager"), "--attention");
  } catch (...) {
    c.restyle();
  }
  if (f.has("lora_rank") || hf || r.base.lora.rank <= 0) {
    r.base.lora.rank = f.integer("lora_rank", 16, 1, 65536, "expected a rank between 1 and 65536");
  }
  q.max_seq = f.boolean("max_seq", false);
  q.min_gpus = f.boolean("min_gpus", false);
  if (q.max_seq && q.min_gpus)
    f.fail("max_seq", "ask one inverse question at a time (not with " + c.name("min_gpus") + ")");
  q.paper = f.boolean("paper", false);
  q.paper_literal = f.boolean("paper_literal", false);
  return q;
}

PlanAnswer run_plan_request(const PlanQuery& q) {
  Context c(q.options);
  try {
    Plan p;
    PlanRequest shown = q.request;
    const PlanRequest& r = q.request;
    if (q.max_seq) {
      int64_t s = max_seq(q.model, r, q.gpu, &p);
      if (s > 0)
        shown.seq = s;
    } else if (q.min_gpus) {
      int n = min_gpus(q.model, r, q.gpu, &p);
      if (n > 0) {
        shown.gpus = n;
        shown.nodes = n > r.gpus / r.nodes ? n / (r.gpus / r.nodes) : 1;
      }
    } else {
      p = plan(q.model, r, q.gpu);
    }
    PaperPlan paper;
    bool with_paper = q.paper || q.paper_literal;
    if (with_paper)
      paper = paper_plan(q.model, shown.gpus, shown.seq, q.gpu, q.paper_literal);
    PlanAnswer a;
    a.json = plan_json(q.model, shown, q.gpu, p, with_paper ? &paper : nullptr, q.top);
    a.table = plan_table(q.model, shown, q.gpu, p, with_paper ? &paper : nullptr, q.top);
    a.fits = p.choice >= 0;
    return a;
  } catch (...) {
    c.restyle();
  }
}

}  // namespace llmem
