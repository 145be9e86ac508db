// Copyright 2026 The llmem Authors.

#include "llmem/validate.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "llmem/error.h"
#include "llmem/estimate.h"
#include "llmem/gpu.h"
#include "llmem/model.h"

#include "trace/framework.h"
#include "validate/known_gaps.h"

namespace llmem {
namespace {

// RFC 4180 CSV: quoted fields may hold commas, quotes ("") and newlines.
std::vector<std::vector<std::string>> parse_csv(const std::string& text, const std::string& file,
                                                std::vector<int>* lines) {
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> row;
  std::string field;
  bool quoted = false;
  int line = 1;
  int row_line = 1;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (quoted) {
      if (c == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          field.push_back('"');
          ++i;
        } else {
          quoted = false;
        }
      } else {
        if (c == '\n')
          ++line;
        field.push_back(c);
      }
      continue;
    }
    if (c == '"' && field.empty()) {
      quoted = true;
    } else if (c == ',') {
      row.push_back(std::move(field));
      field.clear();
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n')
        ++i;
      row.push_back(std::move(field));
      field.clear();
      if (!(row.size() == 1 && row[0].empty())) {
        rows.push_back(std::move(row));
        lines->push_back(row_line);
      }
      row.clear();
      ++line;
      row_line = line;
    } else {
      field.push_back(c);
    }
  }
  if (quoted)
    throw Error(file, "", "unterminated quoted field starting on line " + std::to_string(row_line));
  if (!field.empty() || !row.empty()) {
    row.push_back(std::move(field));
    rows.push_back(std::move(row));
    lines->push_back(row_line);
  }
  return rows;
}

std::string lower(std::string s) {
  for (char& c : s)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
bool has(const std::string& haystack, const char* needle) {
  return lower(haystack).find(needle) != std::string::npos;
}

struct Skip {
  std::string reason;
};

/// A version column ("2.4", "4.28.1") as major * 100 + minor; empty or
/// unreadable text leaves `version` as it is.
void read_version(const std::string& text, int* version) {
  int major = 0;
  int minor = 0;
  if (std::sscanf(text.c_str(), "%d.%d", &major, &minor) == 2)
    *version = major * 100 + minor;
}

const GpuSpec* match_gpu(const std::string& text) {
  std::string t = lower(text);
  // Longest catalog name or alias contained in the text.
  const GpuSpec* best = nullptr;
  size_t best_len = 0;
  auto norm = [](std::string s) {
    std::string out;
    for (char c : lower(std::move(s))) {
      if (std::isalnum(static_cast<unsigned char>(c)))
        out.push_back(c);
    }
    return out;
  };
  std::string tn = norm(t);
  for (const GpuSpec& g : gpu_catalog()) {
    std::vector<std::string> names = g.aliases;
    names.push_back(g.name);
    for (const std::string& n : names) {
      std::string nn = norm(n);
      if (!nn.empty() && tn.find(nn) != std::string::npos && nn.size() > best_len) {
        best = &g;
        best_len = nn.size();
      }
    }
  }
  return best;
}

// torchtune and LitGPT rows: what the source says about the recipe that the
// generic columns do not (the commit, compile, chunked loss, offloading).
void express_framework(const std::map<std::string, std::string>& r, Framework fw,
                       TrainingSetup* s) {
  auto get = [&](const char* key) {
    auto it = r.find(key);
    return it == r.end() ? std::string() : it->second;
  };
  std::string url = get("source_url");
  std::string notes = get("notes");
  std::string opt = lower(get("optimizer"));
  std::string ckpt = lower(get("grad_ckpt"));
  std::string seq = get("seq_len");
  std::string method = lower(get("method"));
  bool distributed = !method.empty() && method != "single";
  if (has(notes, "low confidence") || has(notes, "confidence=low"))
    throw Skip{"the source's setup is unclear (row marked low confidence)"};
  // The "Memory and training speed" table of torchtune's README at 1814feb
  // (2024-11) says: "all the below numbers are provided for batch size 2
  // (without gradient accumulation), a dataset packed to sequence length 2048,
  // and torch compile enabled".
  bool readme_compiled = has(url, "1814feb") && has(get("attention_impl"), "packed");
  bool compiled = (has(notes, "compile") && !has(notes, "no compile")) || readme_compiled ||
                  has(get("attention_impl"), "compile");
  if (compiled && fw != Framework::kTorchtune)
    throw Skip{"torch.compile is modelled for torchtune's per-layer compile only"};
  if (!seq.empty() && !std::isdigit(static_cast<unsigned char>(seq[0]))) {
    // "<=512 (alpaca, unpacked)": each batch is padded to its longest sample,
    // truncated at max_seq_len. Alpaca's longest samples are well over 512
    // tokens (1079 with Falcon's tokenizer: LitGPT tutorials/prepare_dataset.md),
    // so over a run some batch reaches the cap, and that batch sets the peak.
    // A cap above that length (<=4096) is never reached: the longest batch is
    // not known.
    int64_t cap = seq.rfind("<=", 0) == 0 ? std::atoll(seq.c_str() + 2) : 0;
    if (!has(seq, "alpaca") || cap <= 0 || cap > 1024) {
      throw Skip{
          "unpacked variable-length batches: the longest batch, which sets the peak, is not "
          "stated (" +
          seq + ")"};
    }
    s->seq = cap;
  }
  apply_framework_defaults(fw, s);
  s->fw.compile = compiled;
  // torchtune 0217d44c2 (2024-04): utils.wrap_compile(model) compiled the
  // whole model (the partitioner's rules hold layer by layer inside it) and
  // the recipe's loss ran eagerly.
  s->fw.compile_loss = compiled && !has(url, "0217d44c2");
  // "+packed dataset", "packed, compile, ..." or "torchtune SDPA/flex (packed)".
  s->fw.packed =
      fw == Framework::kTorchtune &&
      ((has(notes, "packed") && !has(notes, "unpacked")) || has(get("attention_impl"), "packed"));
  if (fw == Framework::kTorchtune) {
    // Before CEWithChunkedOutputLoss (torchtune PR #1390, 2024-08) the recipes
    // used nn.CrossEntropyLoss on the whole fp32 output; the early recipes
    // (commit 5cbc1967b, the LoRA tutorials) also shifted with
    // logits[..., :-1, :].contiguous() and kept `logits` bound into the next step.
    // The README's Llama-3.1 table ran the configs as shipped: every one of
    // them (recipes/configs/llama3_1/*.yaml at 1814feb) sets loss:
    // CEWithChunkedOutputLoss but 405B_qlora.yaml (the table's QLoRA row on
    // 8 GPUs), which sets torch.nn.CrossEntropyLoss.
    bool readme_405b_qlora = readme_compiled && distributed && lower(get("finetune")) == "qlora";
    bool chunked = has(notes, "chunked c") || (readme_compiled && !readme_405b_qlora);
    if (!chunked)
      s->fw.output_chunks = 0;
    bool early = has(url, "5cbc1967b") || has(url, "0217d44c2") || has(url, "tutorials/");
    s->fw.logits_shift_copy = early;
    s->fw.nf4_legacy = early;  // torchao-nightly 2024.3.25 / torchao 0.1
    s->fw.logits_outlive_step = early;
    if (has(opt, "backward") || has(opt, "in_bwd"))
      s->fw.optimizer_in_bwd = true;
    if (has(ckpt, "offload"))
      s->fw.activation_offload = true;
    // bitsandbytes (torchtune pins none): 8-bit states keep one fp32 absmax
    // per 2048 elements up to 0.43.3 and per 256 from 0.44.0 (2024-09-23).
    // Only the Llama-3.2-3B table (README PR #2003, 2024-11-18) is later; the
    // Llama-3.1 table came with PR #1664 (30b8519e8, merged 2024-09-24), the
    // others in March-April 2024.
    s->fw.bnb_block = has(url, "1814feb") && !readme_compiled ? 256 : 2048;
    // training.shard_model: FSDP2 fully_shard; the 2024-03/04 recipes
    // (5cbc1967b, 0217d44c2) wrapped the model in FSDP1.
    s->parallel.fsdp_version = early ? 1 : 2;
    // The full-finetune distributed configs of that README (llama3_1/8B_full.yaml,
    // 70B_full.yaml at 1814feb) shard tok_embeddings and output as units of
    // their own (custom_sharded_layers).
    if (distributed && has(url, "1814feb") && lower(get("finetune")) == "full")
      s->parallel.embedding_units = true;
    if (distributed && (has(lower(notes), "fsdp_cpu_offload=true") || has(opt, "cpu offload"))) {
      s->parallel.offload_params = true;
      s->parallel.offload_optimizer = true;
    }
  } else if (has(get("precision"), "bf16-mixed")) {
    // LitGPT --precision bf16-mixed: fp32 weights (adapters too) under
    // autocast; log_softmax autocasts to fp32.
    s->fw.loss_fp32 = true;
  }
  if (has(opt, "paged"))
    s->fw.paged_optimizer = true;  // bnb paged states: cudaMallocManaged, off the counters
  // Every config_hub/finetune YAML sets global_batch_size above micro_batch_size
  // (tiny-llama/full.yaml: 32 / 4), so gradients accumulate over micro-batches;
  // the steady-state peak is the same for any count of 2 or more.
  if (fw == Framework::kLitgpt && has(url, "config_hub"))
    s->grad_accum = 2;
  // config_hub/finetune/README.md's table was last changed on 2024-09-27
  // (litgpt 00af8b0d), before QLoRA swapped in a StableEmbedding (#1770,
  // 2024-10-04); the tutorials are older still.
  if (fw == Framework::kLitgpt)
    s->fw.stable_embedding = false;
  // Those measurements ran with bitsandbytes==0.42.0 (litgpt pyproject.toml
  // until d2ed13c3, 2024-12-28): 2048-element absmax blocks of the 8-bit
  // states, and MatMul4Bit keeping its input on ctx.tensors (until 0.43.2).
  if (fw == Framework::kLitgpt) {
    s->fw.bnb_block = 2048;
    s->fw.bnb_matmul_keeps_input = true;
  }
  // litgpt/lora.py GPT.forward at 00af8b0d returned the chunked head's output
  // uncapped; per-chunk soft-capping came with PR #1891 (17a58dfa, 2024-12-31).
  if (fw == Framework::kLitgpt)
    s->fw.chunked_logit_softcap = false;
  if (fw == Framework::kLitgpt && has(url, "tutorials/prepare_dataset.md")) {
    // The Falcon-7B figures were added by lit-gpt 29de2828 (2023-09-27, PR #588),
    // whose README asks for the torch 2.1.0 release candidate. lit_gpt/model.py
    // CausalSelfAttention then expanded K/V only `if n_query_groups != 1`, so
    // Falcon's single K/V head reached SDPA unexpanded (training passed
    // mask=None, is_causal=True); the fused kernels need equal head counts and
    // PyTorch ran the math kernel. PR #667 (50b1974b, 2023-10-24) expands them
    // in training ("flash attention requires it").
    s->torch_version = 201;
    s->fw.mqa_kv_unexpanded = true;
  }
  if (fw == Framework::kLitgpt && distributed) {
    // With devices > 1 the micro-batches per step are global_batch_size /
    // (micro_batch_size * devices) (TrainArgs.gradient_accumulation_iters);
    // global_batch_size of the config_hub/finetune files the rows name
    // (litgpt 26857050f): gemma-2b/full.yaml 16, phi-2/full.yaml 8,
    // stablelm-base-alpha-3b/full.yaml 8.
    static const std::pair<const char*, int64_t> kGlobal[] = {
        {"google/gemma-2b", 16}, {"microsoft/phi-2", 8}, {"stabilityai/stablelm-base-alpha-3b", 8}};
    int64_t global = 0;
    for (const auto& [model, g] : kGlobal) {
      if (get("model") == model && has(notes, "full.yaml"))
        global = g;
    }
    if (global == 0)
      throw Skip{"the config_hub file (and so its global_batch_size) is not named"};
    int64_t micro = std::atoll(get("micro_batch").c_str());
    int64_t world = std::atoll(get("world_size").c_str());
    if (micro <= 0 || world <= 0)
      throw Skip{"micro_batch or world_size not given"};
    s->grad_accum = std::max<int64_t>(1, global / (micro * world));
  }
}

// The LoRA targets a framework row names in its notes ("LoRA q,v,output_proj +
// MLP", "LoRA targets: query,value", "q,k,v,proj,mlp,head", "all linear layers
// incl. output proj"); no mention keeps the framework's default.
void framework_lora_targets_from_notes(Framework fw, const std::string& notes, TrainingSetup* s) {
  std::string n = lower(notes);
  // "lora" as a word ("lora_finetune_single_device", "phi-3/lora.yaml" are not it).
  size_t at = n.find("lora ");
  size_t colon = n.find("lora targets:");
  if (colon != std::string::npos)
    at = colon + 8;
  std::string text = at == std::string::npos ? "" : n.substr(at + 4);
  for (const char* stop : {";", "(", "alpha"}) {
    size_t e = text.find(stop);
    if (e != std::string::npos && e > 0)
      text = text.substr(0, e);
  }
  std::vector<std::string> names;
  auto word = [&](const char* w) {
    // a whole token: q, k, v, mlp ... separated by anything not alphanumeric
    std::string t = " " + text + " ";
    for (char& c : t) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_')
        c = ' ';
    }
    return t.find(std::string(" ") + w + " ") != std::string::npos;
  };
  bool all = has(text, "all linear");
  if (fw == Framework::kTorchtune) {
    if (all || word("q"))
      names.push_back("q_proj");
    if (all || word("k"))
      names.push_back("k_proj");
    if (all || word("v"))
      names.push_back("v_proj");
    if (all || word("output_proj"))
      names.push_back("output_proj");
    if (all || word("mlp"))
      names.push_back("mlp");
    if (all || has(text, "final output"))
      names.push_back("output");
  } else {
    if (word("q") || word("query"))
      names.push_back("query");
    if (word("k") || word("key"))
      names.push_back("key");
    if (word("v") || word("value"))
      names.push_back("value");
    if (word("proj"))
      names.push_back("projection");
    if (word("mlp"))
      names.push_back("mlp");
    if (word("head"))
      names.push_back("head");
  }
  if (names.empty())
    return;
  s->lora.targets.clear();
  for (const std::string& name : names) {
    for (const std::string& hf : trace::hf_module_names(fw, name))
      s->lora.targets.push_back(hf);
  }
}

// The offload part of a method string. A bare "offload" on ZeRO-3 is what
// PEFT v0.2.0's accelerate DeepSpeed config for the *_ds_zero3_offload.py
// scripts sets (offload_optimizer_device and offload_param_device cpu; the
// README rows say "CPU offload of params and optimizer"); on ZeRO-1/2 only the
// optimizer can go. "(params, optim ...)" names the parts. FSDP's
// "cpu_offload" is CPUOffload(offload_params=True), which moves parameters,
// gradients and optimizer states together.
void express_offload(const std::string& text, const std::string& method, ParallelSetup* p) {
  std::string t = lower(text);
  if (t.rfind("offload", 0) != 0 && t.rfind("cpu_offload", 0) != 0)
    throw Skip{"method \"" + method + "\": \"" + text + "\" is not an offload llmem knows"};
  if (has(t, "nvme"))
    throw Skip{"method \"" + method + "\": NVMe offload not modelled"};
  bool sharded_params = p->method == Method::kZero3 || p->method == Method::kFsdp;
  size_t open = t.find('(');
  if (open == std::string::npos) {
    p->offload_optimizer = true;
    p->offload_params = sharded_params;
    return;
  }
  std::string parts = t.substr(open);
  p->offload_params = has(parts, "param");
  p->offload_optimizer = has(parts, "optim");
  if (!p->offload_params && !p->offload_optimizer)
    throw Skip{"method \"" + method + "\": the offloaded parts are not named"};
}

// The layout of a distributed row: data parallelism over world_size / tp.
// The CPU tier's zero1 rows (dist_cpu.py) use torch's ZeroRedundancyOptimizer.
void express_layout(const std::string& method, const std::string& world, const std::string& tp,
                    const std::string& command, ParallelSetup* p) {
  // "zero3+offload", "zero3+offload(params,optim to CPU)", "fsdp+cpu_offload":
  // the method, then what goes to host memory.
  std::string base = method;
  std::string offload;
  size_t plus = method.find('+');
  if (plus != std::string::npos) {
    base = method.substr(0, plus);
    offload = method.substr(plus + 1);
  }
  try {
    p->method = parse_method(base, "method");
  } catch (const Error&) {
    throw Skip{"distributed method \"" + method + "\" not modelled yet"};
  }
  if (!offload.empty())
    express_offload(offload, method, p);
  if (world.empty())
    throw Skip{"world_size not given"};
  p->tp = tp.empty() ? 1 : std::stoi(tp);
  int n = std::stoi(world);
  if (p->tp < 1 || n % p->tp != 0)
    throw Skip{"world_size is not a multiple of tp"};
  p->dp = n / p->tp;
  p->torch_zero = has(command, "dist_cpu.py") && p->method == Method::kZero1;
}

// The peak of the rank a row measured ("rank=K" in its notes), or the worst.
const PeakInfo& rank_peak(const Estimate& e, const std::string& notes) {
  size_t at = notes.find("rank=");
  if (at == std::string::npos)
    return e.peak;
  int rank = std::atoi(notes.c_str() + at + 5);
  for (const RankEstimate& r : e.ranks) {
    if (std::find(r.ranks.begin(), r.ranks.end(), rank) != r.ranks.end())
      return r.peak;
  }
  return e.peak;
}

// The framework options a row's setting line shows beyond the generic
// columns (torchtune's flag table differs in nothing else).
std::string framework_flags(const TrainingSetup& s) {
  std::string out;
  if (s.fw.packed)
    out += " packed";
  if (s.fw.compile || s.fw.compile_loss)
    out += " compile";
  if (s.framework == Framework::kTorchtune && s.fw.output_chunks > 0)
    out += " chunked-ce";
  if (s.fw.optimizer_in_bwd)
    out += " optim-in-bwd";
  if (s.fw.activation_offload)
    out += " act-offload";
  if (s.optimizer == OptimizerKind::kAdamW8bit)
    out += " adamw8bit";
  if (s.fw.sdpa_attn_mask && s.framework == Framework::kHf)
    out += " sdpa-mask";
  if (s.fw.liger)
    out += s.fw.liger_flce_2024 ? " liger-0.1" : " liger";
  if (s.fw.liger && !s.fw.liger_modules)
    out += "(rope,flce)";
  return out;
}

// Turns one row into a setup, or explains why it cannot be expressed.
void express(const std::map<std::string, std::string>& r, TrainingSetup* s, std::string* counter,
             GpuSpec* gpu, std::string* gpu_note) {
  auto get = [&](const char* key) {
    auto it = r.find(key);
    return it == r.end() ? std::string() : it->second;
  };
  std::string url = get("source_url");
  std::string notes = get("notes");
  Framework fw = has(url, "torchtune") ? Framework::kTorchtune
                 : has(url, "litgpt")  ? Framework::kLitgpt
                                       : Framework::kHf;
  if (fw != Framework::kHf)
    express_framework(r, fw, s);
  if (has(url, "deepspeed-chat")) {
    // The DeepSpeed-Chat training logs are of April 2023 (the step-1 OPT
    // log: 2023-04-18): transformers 4.28 was current. OPT's eager attention
    // then clamped the masked scores (kept until v4.49).
    s->transformers_version = 428;
  }
  read_version(get("transformers_version"), &s->transformers_version);
  if (has(url, "peft/blob/v0.2.0/")) {
    // PEFT v0.2.0's README: "DeepSpeed version required v0.8.0" (February
    // 2023; DeepSpeed 0.9.0 came in April).
    s->parallel.deepspeed_minor = 8;
  }
  std::string method = lower(get("method"));
  if (has(url, "2404.10933") || has(get("precision"), "colossalai")) {
    // The LLMem paper's runs: ColossalAI GeminiDDP on every GPU, one GPU included.
    s->parallel.method = Method::kGemini;
    std::string world = get("world_size");
    s->parallel.dp = world.empty() ? 1 : std::max(1, std::stoi(world));
  } else if (!method.empty() && method != "single") {
    express_layout(method, get("world_size"), get("tp"), get("command"), &s->parallel);
    std::string pp = get("pp");
    if (!pp.empty()) {
      s->parallel.pp = std::stoi(pp);
      if (s->parallel.pp < 1 || s->parallel.dp % s->parallel.pp != 0)
        throw Skip{"world_size is not a multiple of tp * pp"};
      s->parallel.dp /= s->parallel.pp;
    }
    if (lower(get("schedule")) == "gpipe")
      s->parallel.schedule = PipelineSchedule::kGpipe;
    std::string sp = lower(get("sequence_parallel"));
    s->parallel.sequence_parallel = sp == "1" || sp == "true" || sp == "on";
  }
  std::string gpu_type = get("gpu_type");
  s->device = lower(gpu_type) == "cpu" ? Device::kCpu : Device::kCuda;
  if (s->device == Device::kCuda && !(fw != Framework::kHf && gpu_type.empty())) {
    const GpuSpec* g = match_gpu(gpu_type);
    int class_gb = 0;
    if (g == nullptr && std::sscanf(lower(gpu_type).c_str(), "%dgb-class", &class_gb) == 1 &&
        class_gb > 0) {
      // "24GB-class GPUs": the card is not named. What the card changes in an
      // estimate is its CUDA context (the catalog's 400 MiB is the same for
      // every card: data/gpus.json context_source) and its cuBLAS workspace
      // (8 MiB before Hopper, 32 MiB on it); a custom card of that size takes
      // the A100's, so the row can be off by the difference (< 0.1 GiB).
      *gpu = custom_gpu(class_gb);
      *gpu_note = " (" + std::to_string(class_gb) + " GB card, context as A100)";
    } else if (g == nullptr && gpu_type.empty() && has(notes, "same fsdp-qlora run")) {
      // PEFT's fsdp.md gives this run (35.6 GB per GPU) next to the 2x24 GB
      // offload run without naming its cards; they cannot be the 24 GB ones.
      // The card's size does not enter the peak; its context is the
      // catalog's (the same for every card), so the A100-80GB stands in.
      *gpu = find_gpu("A100-80GB");
      *gpu_note = " (card not named, A100-80GB context)";
    } else if (g == nullptr) {
      throw Skip{"GPU type \"" + gpu_type + "\" not in the catalog"};
    } else {
      *gpu = *g;
    }
  }
  std::string precision = lower(get("precision"));
  std::string finetune = lower(get("finetune"));
  bool hf_qlora = fw == Framework::kHf && (has(precision, "nf4") || finetune == "qlora");
  if (hf_qlora && !has(precision, "quant storage bf16"))
    throw Skip{"QLoRA: the quant storage dtype is not stated"};
  // PEFT's examples/sft recipe behind docs/source/accelerate/{fsdp,deepspeed}.md
  // (examples/sft/utils.py create_and_prepare_model) loads the model in
  // bnb_4bit_quant_storage's dtype when quantizing and in float32 otherwise;
  // --bf16 True then runs the Trainer under bf16 autocast (FSDP's
  // MixedPrecision, or DeepSpeed's bf16 section). Both are bf16-mixed here;
  // the sharded-QLoRA path keeps the quantized model's frozen weights 16-bit.
  bool peft_sft = fw == Framework::kHf && has(url, "peft/blob/main/docs/source/accelerate/");
  if (precision == "fp32") {
    s->precision = Precision::kFp32;
  } else if (has(precision, "bf16-mixed") || has(precision, "autocast") ||
             has(precision, "bf16 mixed") || (peft_sft && has(precision, "bf16"))) {
    s->precision = Precision::kBf16Mixed;
  } else if (has(precision, "fp16") && (has(precision, "amp") || has(precision, "mixed"))) {
    s->precision = Precision::kFp16Mixed;
  } else if (has(precision, "bf16")) {
    if (has(precision, "?"))
      throw Skip{"precision not stated clearly: " + get("precision")};
    s->precision = Precision::kBf16;
  } else if (precision == "fp16") {
    s->precision = Precision::kFp16;
  } else {
    throw Skip{"precision \"" + get("precision") + "\" not understood"};
  }
  std::string opt = lower(get("optimizer"));
  if (fw == Framework::kHf && (has(opt, "backward") || has(opt, "in_bwd")))
    throw Skip{"optimizer in backward not modelled"};
  if (fw == Framework::kHf && has(opt, "paged"))
    s->fw.paged_optimizer = true;  // bnb paged states: cudaMallocManaged, off the counters
  if (opt == "adamw-foreach" || opt == "adamw-fused" || opt == "adamw-forloop" ||
      opt == "sgd-momentum" || opt == "sgd") {
    s->optimizer = parse_optimizer(opt, "optimizer");
  } else if (has(opt, "adam8bit") || has(opt, "adamw8bit")) {
    s->optimizer = OptimizerKind::kAdamW8bit;
  } else if (has(opt, "adafactor")) {
    s->optimizer = OptimizerKind::kAdafactor;
  } else if (has(opt, "sgd")) {
    s->optimizer = has(opt, "momentum") ? OptimizerKind::kSgdMomentum : OptimizerKind::kSgd;
  } else if (opt.empty() || has(opt, "adamw") || has(opt, "hybridadam")) {
    s->optimizer = OptimizerKind::kAdamW;
  } else {
    throw Skip{"optimizer \"" + get("optimizer") + "\" not modelled"};
  }
  // Every Llama-3.1 and Llama-3.2 config of torchtune 1814feb that uses
  // torch.optim.AdamW sets fused: True (recipes/configs/llama3_1/*.yaml,
  // llama3_2/*.yaml; 70B_full only recommends it and steps on the CPU).
  if (fw == Framework::kTorchtune && has(url, "1814feb") && s->optimizer == OptimizerKind::kAdamW)
    s->optimizer = OptimizerKind::kAdamWFused;
  read_version(get("torch_version"), &s->torch_version);
  std::string ckpt = lower(get("grad_ckpt"));
  if (fw == Framework::kHf && has(ckpt, "offload"))
    throw Skip{"activation offloading not modelled"};
  if (ckpt.rfind("on", 0) == 0) {
    // torchtune and LitGPT wrap each block in a non-reentrant checkpoint.
    s->checkpointing = has(ckpt, "non-reentrant") || fw != Framework::kHf
                           ? CheckpointMode::kNonReentrant
                           : CheckpointMode::kReentrant;
  }
  if (finetune == "lora" || finetune == "qlora") {
    s->finetune = finetune == "qlora" ? FinetuneMode::kQlora : FinetuneMode::kLora;
    std::string rank = get("lora_rank");
    if (rank.empty())
      throw Skip{"LoRA rank not given"};
    s->lora.rank = std::stoll(rank);
    std::string targets = fw != Framework::kHf ? "" : get("lora_targets");
    std::stringstream ss(targets);
    std::string t;
    while (std::getline(ss, t, ',')) {
      t.erase(std::remove_if(t.begin(), t.end(), ::isspace), t.end());
      if (!t.empty())
        s->lora.targets.push_back(t);
    }
    // A row without a lora_targets column that names PEFT's "all-linear" in its
    // notes, or a row of PEFT's examples/sft docs: every launch command of
    // docs/source/accelerate/fsdp.md and deepspeed.md (LoRA since PEFT PR #1489,
    // QLoRA since #1550) gives --lora_target_modules "all-linear".
    if (fw == Framework::kHf && s->lora.targets.empty() &&
        (has(lower(notes), "all-linear") || peft_sft))
      s->lora.targets.push_back("all-linear");
    if (!get("lora_dropout").empty())
      s->lora.dropout = std::stod(get("lora_dropout"));
    else if (peft_sft)
      s->lora.dropout = 0.1;  // every launch command of those docs: --lora_dropout 0.1
    // Adapters kept in the base weights' dtype (PEFT autocast_adapter_dtype=False),
    // as the CPU harness records in its notes.
    if (has(notes, "lora_dtype=base"))
      s->lora.adapter_fp32 = false;
  } else if (finetune != "full") {
    throw Skip{"fine-tuning mode \"" + get("finetune") + "\" not modelled"};
  }
  if (fw != Framework::kHf)
    framework_lora_targets_from_notes(fw, notes, s);
  std::string attn = lower(get("attention_impl"));
  s->attention = has(attn, "eager")   ? AttentionImpl::kEager
                 : has(attn, "flash") ? AttentionImpl::kFlashAttention2
                                      : AttentionImpl::kSdpa;
  if (fw == Framework::kHf) {
    // "sdpa (padded batch mask)": the collator pads, so SDPA gets attn_mask.
    if (has(attn, "mask"))
      s->fw.sdpa_attn_mask = true;
    // The liger column: Liger's version, and "after from_pretrained" when the
    // run patched the classes after building the model (its 2024 examples).
    std::string liger = lower(get("liger"));
    if (!liger.empty() && liger != "no" && liger != "off") {
      s->fw.liger = true;
      s->fw.liger_flce_2024 = liger.rfind("0.1", 0) == 0;
      s->fw.liger_modules = !has(liger, "after from_pretrained");
    }
  }
  std::string mb = get("micro_batch");
  std::string seq = get("seq_len");
  if (mb.empty() || seq.empty())
    throw Skip{"micro-batch or sequence length not given"};
  s->batch = std::stoll(mb);
  if (seq.rfind("<=", 0) != 0)
    s->seq = std::stoll(seq);  // "<=N": the cap the longest batch reaches (express_framework)
  else if (fw == Framework::kHf)
    throw Skip{"unpacked variable-length batches (" + seq + ")"};
  if (!get("grad_accum").empty()) {
    s->grad_accum = std::stoll(get("grad_accum"));
  } else if (fw == Framework::kHf) {
    // "GA 4" in the notes: the Trainer's gradient_accumulation_steps.
    std::string n = lower(notes);
    size_t at = n.find("ga ");
    if (at != std::string::npos &&
        (at == 0 || !std::isalnum(static_cast<unsigned char>(n[at - 1]))) && at + 3 < n.size() &&
        std::isdigit(static_cast<unsigned char>(n[at + 3])))
      s->grad_accum = std::atoll(n.c_str() + at + 3);
  }
  std::string what = lower(get("measured_what"));
  if (what == "oom")
    throw Skip{"row records an OOM, not a peak"};
  if (what == "cpu_peak_live_bytes" || has(what, "max_memory_allocated") || has(what, "active")) {
    *counter = "allocated";
  } else if (has(what, "reserved")) {
    *counter = "reserved";
  } else if (has(what, "nvidia-smi") || has(what, "gputil")) {
    *counter = "device";
  } else if (has(what, "torchtune") && has(what, "not named")) {
    // torchtune's memory logger (torchtune/utils/memory.py get_memory_stats at
    // 0217d44c2, torchtune/training/memory.py later) reports peak active,
    // allocated and reserved; a README table quoting one of them without
    // saying which is compared with the whole band.
    *counter = "unnamed";
  } else {
    throw Skip{"counter not named (" + get("measured_what") + ")"};
  }
}

uint64_t measured_bytes(const std::map<std::string, std::string>& r) {
  auto get = [&](const char* key) {
    auto it = r.find(key);
    return it == r.end() ? std::string() : it->second;
  };
  // The CPU tier's exact live-storage count is what the CPU estimate models.
  if (!get("storage_peak_bytes").empty())
    return std::stoull(get("storage_peak_bytes"));
  if (!get("peak_bytes").empty())
    return std::stoull(get("peak_bytes"));
  std::string gib = get("peak_gib");
  if (gib.empty())
    throw Skip{"no measured value"};
  return static_cast<uint64_t>(std::llround(std::stod(gib) * 1073741824.0));
}

// A relative config path in a measurement file is relative to the repository
// root the file lives in: try the file's directory and each of its parents.
std::string resolve_model(const std::string& model, const std::string& file) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (model.empty() || fs::path(model).is_absolute() || fs::exists(model, ec))
    return model;
  if (model.find(".json") == std::string::npos && model.find("./") == std::string::npos) {
    return model;  // a catalog name
  }
  for (fs::path dir = fs::absolute(fs::path(file), ec).parent_path(); !dir.empty();
       dir = dir.parent_path()) {
    if (fs::exists(dir / model, ec))
      return (dir / model).string();
    if (dir == dir.parent_path())
      break;
  }
  return model;
}

// Models measured under one name whose architecture the catalog holds under
// another: TinyLlama-1.1B-Chat-v1.0 is a fine-tune of the 3T-token
// checkpoint with the same config (data/models/TinyLlama--TinyLlama-1.1B-Chat-v1.0.json
// records that it was chosen in place of it).
std::string stand_in(const std::string& model) {
  if (model == "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T")
    return "TinyLlama/TinyLlama-1.1B-Chat-v1.0";
  // Qwen2-7B and Qwen2.5-7B publish the same shapes in their config.json
  // (hidden 3584, 28 layers of 28 query and 4 key/value heads, MLP 18944,
  // vocabulary 152064, untied head) and 131072 max_position_embeddings, which
  // sizes the per-layer rotary tables of transformers before 4.45 (Qwen2-7B's
  // config.json, transformers_version 4.41.2, as copied into downstream configs).
  if (model == "Qwen/Qwen2-7B")
    return "Qwen/Qwen2.5-7B";
  return model;
}

// Relative error of the estimate; for an unnamed counter, the distance from
// the measured value to the nearer end of [allocated, reserved].
double band_error_pct(const ValidationRow& row) {
  auto pct = [&](uint64_t est) {
    return 100.0 * (static_cast<double>(est) - static_cast<double>(row.measured_bytes)) /
           static_cast<double>(row.measured_bytes);
  };
  if (!row.band() || row.measured_bytes < row.estimated_bytes)
    return pct(row.estimated_bytes);
  if (row.measured_bytes > row.estimated_reserved_bytes)
    return pct(row.estimated_reserved_bytes);
  return 0;
}

}  // namespace

ValidationSummary summarize(const std::vector<ValidationRow>& rows) {
  ValidationSummary s;
  std::vector<double> errors;
  for (const ValidationRow& r : rows) {
    if (!r.skipped_reason.empty()) {
      ++s.skipped;
      continue;
    }
    if (r.band()) {
      ++s.band_rows;
      if (std::fabs(r.error_pct) <= 1.0)
        ++s.band_within;
      continue;
    }
    ++s.compared;
    errors.push_back(std::fabs(r.error_pct));
    if (r.error_pct < 0)
      ++s.under_predictions;
    if (r.error_pct < -1.0)
      ++s.under_predictions_beyond_1pct;
  }
  if (!errors.empty()) {
    std::sort(errors.begin(), errors.end());
    size_t n = errors.size();
    s.median_abs_pct = n % 2 == 1 ? errors[n / 2] : (errors[n / 2 - 1] + errors[n / 2]) / 2;
    s.p90_abs_pct =
        errors[std::min(n - 1, static_cast<size_t>(std::ceil(0.9 * static_cast<double>(n))) - 1)];
    s.max_abs_pct = errors.back();
  }
  return s;
}

ValidationReport validate_csv(const std::string& text, const std::string& file) {
  std::vector<int> lines;
  std::vector<std::vector<std::string>> table = parse_csv(text, file, &lines);
  if (table.empty())
    throw Error(file, "", "empty file: expected a header row");
  const std::vector<std::string>& header = table[0];
  for (const char* required : {"model", "micro_batch", "seq_len", "measured_what"}) {
    if (std::find(header.begin(), header.end(), required) == header.end()) {
      throw Error(file, required, "missing column (expected the columns of published.csv)");
    }
  }
  ValidationReport report;
  std::string previous_notes;
  for (size_t i = 1; i < table.size(); ++i) {
    std::map<std::string, std::string> r;
    for (size_t c = 0; c < header.size() && c < table[i].size(); ++c)
      r[header[c]] = table[i][c];
    // A row that builds on the one before it ("previous + ...", torchtune's
    // cumulative flag table; "same as LoRA row") inherits that row's flags.
    std::string& notes = r["notes"];
    if (has(notes, "previous +") || has(notes, "same as lora row"))
      notes += "; " + previous_notes;
    previous_notes = notes;
    ValidationRow row;
    row.file = file;
    row.line = lines[i];
    row.source_url = r["source_url"];
    row.model = r["model"];
    row.measured_what = r["measured_what"];
    try {
      TrainingSetup setup;
      GpuSpec gpu = find_gpu("A100-80GB");
      std::string gpu_note;
      express(r, &setup, &row.counter, &gpu, &gpu_note);
      row.measured_bytes = measured_bytes(r);
      ModelSpec model;
      try {
        model = load_model(resolve_model(stand_in(row.model), file));
      } catch (const Error& e) {
        throw Skip{std::string("model: ") + e.what()};
      }
      Estimate e;
      try {
        e = estimate(model, setup, gpu);
      } catch (const Error& err) {
        throw Skip{err.what()};
      }
      const PeakInfo& peak = rank_peak(e, r["notes"]);
      // torchtune logs memory right after model init with
      // get_memory_stats(reset_stats=True) (torchtune/training/memory.py;
      // memory_stats_log at 5cbc1967b): reset_peak_memory_stats drops the load
      // phase's allocated and active peaks, while the segments loading cut
      // stay reserved, so only the reserved counter keeps the load phase.
      uint64_t allocated = peak.allocated_bytes;
      if (setup.framework == Framework::kTorchtune && e.ranks.empty())
        allocated = std::max(e.first_step_peak, e.steady_step_peak);
      row.estimated_bytes = row.counter == "reserved" ? peak.reserved_bytes
                            : row.counter == "device" ? peak.device_bytes
                                                      : allocated;
      if (row.band())
        row.estimated_reserved_bytes = peak.reserved_bytes;
      row.setting =
          (setup.framework != Framework::kHf ? std::string(framework_name(setup.framework)) + " "
                                             : std::string()) +
          std::string(precision_name(setup.precision)) + " b" + std::to_string(setup.batch) + " s" +
          std::to_string(setup.seq) + (setup.checkpointing != CheckpointMode::kOff ? " ckpt" : "") +
          (setup.finetune == FinetuneMode::kLora    ? " lora"
           : setup.finetune == FinetuneMode::kQlora ? " qlora"
                                                    : "") +
          (setup.parallel.method != Method::kSingle
               ? " " + std::string(method_name(setup.parallel.method)) + " dp" +
                     std::to_string(setup.parallel.dp) +
                     (setup.parallel.tp > 1 ? " tp" + std::to_string(setup.parallel.tp) : "") +
                     (setup.parallel.sequence_parallel ? " sp" : "") +
                     (setup.parallel.pp > 1
                          ? " pp" + std::to_string(setup.parallel.pp) +
                                (setup.parallel.schedule == PipelineSchedule::kGpipe ? " gpipe"
                                                                                     : " 1f1b")
                          : "")
               : "") +
          (setup.parallel.offload_params      ? " offload(params,optim)"
           : setup.parallel.offload_optimizer ? " offload(optim)"
                                              : "") +
          framework_flags(setup) + gpu_note;
      row.error_pct = band_error_pct(row);
      row.why = known_gap(row.source_url, row.model, row.setting, setup);
    } catch (const Skip& s) {
      row.skipped_reason = s.reason;
    } catch (const std::invalid_argument&) {
      row.skipped_reason = "a numeric column does not hold a number";
    } catch (const std::out_of_range&) {
      row.skipped_reason = "a numeric column is out of range";
    }
    report.rows.push_back(std::move(row));
  }
  report.summary = summarize(report.rows);
  return report;
}

std::string validation_table(const ValidationReport& report) {
  std::ostringstream out;
  char line[512];
  for (const ValidationRow& r : report.rows) {
    if (r.skipped_reason.empty() && r.band()) {
      std::snprintf(line, sizeof(line),
                    "%s:%-4d %-40.40s %-36.36s %-9s meas %9.3f GiB est %9.3f..%.3f GiB %+7.2f%% "
                    "(band)\n",
                    r.file.c_str(), r.line, r.model.c_str(), r.setting.c_str(), r.counter.c_str(),
                    static_cast<double>(r.measured_bytes) / 1073741824.0,
                    static_cast<double>(r.estimated_bytes) / 1073741824.0,
                    static_cast<double>(r.estimated_reserved_bytes) / 1073741824.0, r.error_pct);
    } else if (r.skipped_reason.empty()) {
      std::snprintf(line, sizeof(line),
                    "%s:%-4d %-40.40s %-36.36s %-9s meas %9.3f GiB est %9.3f GiB %+7.2f%%\n",
                    r.file.c_str(), r.line, r.model.c_str(), r.setting.c_str(), r.counter.c_str(),
                    static_cast<double>(r.measured_bytes) / 1073741824.0,
                    static_cast<double>(r.estimated_bytes) / 1073741824.0, r.error_pct);
    } else {
      std::snprintf(line, sizeof(line), "%s:%-4d %-40.40s skipped: %s\n", r.file.c_str(), r.line,
                    r.model.c_str(), r.skipped_reason.c_str());
    }
    out << line;
    if (r.skipped_reason.empty() && !r.why.empty())
      out << "    why: " << r.why << "\n";
  }
  const ValidationSummary& s = report.summary;
  std::snprintf(line, sizeof(line),
                "\ncompared %d, skipped %d; |error| median %.2f%%, p90 %.2f%%, max %.2f%%; "
                "under-predictions %d (beyond 1%%: %d)\n",
                s.compared, s.skipped, s.median_abs_pct, s.p90_abs_pct, s.max_abs_pct,
                s.under_predictions, s.under_predictions_beyond_1pct);
  out << line;
  if (s.band_rows > 0) {
    std::snprintf(line, sizeof(line),
                  "counter not named: %d rows compared with [allocated, reserved], %d inside "
                  "(within 1%%)\n",
                  s.band_rows, s.band_within);
    out << line;
  }
  return out.str();
}

std::string validation_json(const ValidationReport& report) {
  nlohmann::ordered_json j;
  const ValidationSummary& s = report.summary;
  j["summary"] = {{"compared", s.compared},
                  {"skipped", s.skipped},
                  {"median_abs_pct", s.median_abs_pct},
                  {"p90_abs_pct", s.p90_abs_pct},
                  {"max_abs_pct", s.max_abs_pct},
                  {"under_predictions", s.under_predictions},
                  {"under_predictions_beyond_1pct", s.under_predictions_beyond_1pct},
                  {"band_rows", s.band_rows},
                  {"band_within", s.band_within}};
  nlohmann::ordered_json rows = nlohmann::ordered_json::array();
  for (const ValidationRow& r : report.rows) {
    nlohmann::ordered_json o;
    o["file"] = r.file;
    o["line"] = r.line;
    if (!r.source_url.empty())
      o["source_url"] = r.source_url;
    o["model"] = r.model;
    o["measured_what"] = r.measured_what;
    if (r.skipped_reason.empty() && r.band()) {
      // Kept apart from "error_pct" so that consumers averaging errors do not
      // mix band rows with like-for-like comparisons.
      o["counter"] = r.counter;
      o["setting"] = r.setting;
      o["measured_bytes"] = r.measured_bytes;
      o["estimated_allocated_bytes"] = r.estimated_bytes;
      o["estimated_reserved_bytes"] = r.estimated_reserved_bytes;
      o["band_error_pct"] = r.error_pct;
    } else if (r.skipped_reason.empty()) {
      o["counter"] = r.counter;
      o["setting"] = r.setting;
      o["measured_bytes"] = r.measured_bytes;
      o["estimated_bytes"] = r.estimated_bytes;
      o["error_pct"] = r.error_pct;
    } else {
      o["skipped_reason"] = r.skipped_reason;
    }
    if (r.skipped_reason.empty() && !r.why.empty())
      o["why"] = r.why;
    rows.push_back(o);
  }
  j["rows"] = rows;
  return j.dump(2) + "\n";
}

}  // namespace llmem
