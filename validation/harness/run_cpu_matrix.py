#!/usr/bin/python3
"""Run the prepared CPU-tier matrix and write validation/data/cpu_tier.csv.

    /usr/bin/python3 validation/harness/run_cpu_matrix.py            # whole matrix (~5 min + ~1 min distributed, 2 idle cores)
    /usr/bin/python3 validation/harness/run_cpu_matrix.py --only llama --out /tmp/x.csv
    /usr/bin/python3 validation/harness/run_cpu_matrix.py --no-distributed

Each run is its own process (fresh mallinfo baseline); two at a time, one intra-op thread each.
Distributed rows (DDP, ZeRO-1, gloo, 2 local ranks) come from dist_cpu.py.
"""
import argparse
import concurrent.futures as cf
import csv
import datetime
import json
import os
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
PY = "/usr/bin/python3"

PUBLISHED_COLS = ["source_url", "model", "params_b", "gpus", "gpu_type", "method", "world_size", "tp",
                  "precision", "optimizer", "micro_batch", "seq_len", "grad_ckpt", "finetune", "lora_rank",
                  "attention_impl", "measured_what", "peak_gib", "notes"]
EXTRA_COLS = ["peak_bytes", "peak_forward_bytes", "peak_loss_bytes", "peak_backward_bytes",
              "peak_optimizer_bytes", "first_step_peak_bytes", "storage_peak_bytes", "lora_alpha",
              "lora_dropout", "lora_targets", "torch_version", "command", "date",
              # distributed layouts: pipeline stages (method ddp with pp 2 = pipeline over DDP with dp 1),
              # 1f1b / gpipe, micro-batches per step
              "pp", "schedule", "grad_accum",
              # Megatron sequence parallelism (1) on a tp > 1 row; empty elsewhere
              "sequence_parallel",
              # the transformers release whose causal-LM loss was measured (empty: v4.57's ForCausalLMLoss)
              "transformers_version"]
COLUMNS = PUBLISHED_COLS + EXTRA_COLS

FAMILIES = ["llama", "mistral", "qwen2", "gpt2", "opt", "bloom", "gpt_neo", "gpt_bigcode", "codegen", "gemma", "gemma2",
            "qwen3", "phi3", "phi", "mixtral", "qwen2_moe",
            "gpt_neox", "falcon", "stablelm", "olmo"]
LORA_TARGETS = {"llama": "q_proj,v_proj", "mistral": "q_proj,v_proj", "qwen2": "q_proj,k_proj,v_proj,o_proj",
                "gpt2": "c_attn", "opt": "q_proj,v_proj",
                # PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
                "bloom": "query_key_value", "gpt_neo": "q_proj,v_proj", "gpt_bigcode": "c_attn",
                "codegen": "qkv_proj", "gemma": "q_proj,v_proj", "gemma2": "q_proj,v_proj",
                # qwen3, phi: PEFT's defaults; phi3 has none in PEFT (get_peft_model asks for target_modules):
                # every linear layer, so that both fused projections carry an adapter
                "qwen3": "q_proj,v_proj", "phi": "q_proj,v_proj,fc1,fc2",
                "phi3": "qkv_proj,o_proj,gate_up_proj,down_proj",
                # mixtral: PEFT's; PEFT has no qwen2_moe entry, so its Qwen2 one (q_proj, v_proj)
                "mixtral": "q_proj,v_proj", "qwen2_moe": "q_proj,v_proj",
                "gpt_neox": "query_key_value", "gpt_neox_seq": "query_key_value", "falcon": "query_key_value",
                "falcon_newarch": "query_key_value",
                "stablelm": "q_proj,v_proj", "stablelm_12b": "q_proj,v_proj",
                "olmo": "q_proj,v_proj"}  # PEFT has no olmo default (target_modules required): llama's


def cfg(fam):
    return "validation/configs/tiny-%s.json" % fam.replace("_", "-")


def matrix():
    runs = []

    def add(fam, precision="fp32", batch=2, seq=32, gc=False, lora=False, optimizer="adamw", extra=()):
        a = ["--config", cfg(fam), "--batch", str(batch), "--seq", str(seq), "--precision", precision,
             "--optimizer", optimizer, "--seed", "0", "--steps", "2"]
        if gc:
            a.append("--grad-ckpt")
        if lora:
            a += ["--lora-rank", "8", "--lora-alpha", "16", "--lora-dropout", "0.0",
                  "--lora-targets", LORA_TARGETS[fam]]
        a += list(extra)
        runs.append((fam, a))

    # llama first: the end-to-end slice
    for fam in FAMILIES:
        for precision in ("fp32", "bf16-mixed", "bf16"):
            for lora in (False, True):
                for gc in (False, True):
                    add(fam, precision, gc=gc, lora=lora)
    # (batch, seq) sizes (trimmed to full fp32 + LoRA bf16-mixed when the four GPT-era families were added)
    for fam in ("llama",):
        for batch, seq in ((1, 96), (4, 8)):
            add(fam, "fp32", batch, seq)
            add(fam, "bf16-mixed", batch, seq, lora=True)
    add("gpt2", "bf16-mixed", 1, 96, lora=True)
    # falcon's new_decoder_architecture (Falcon-40B/180B layout: grouped K/V broadcast to every head, two norms)
    for precision, lora in (("fp32", False), ("bf16-mixed", True), ("bf16", False), ("bf16", True)):
        for gc in ((False, True) if precision != "bf16" else (False,)):
            add("falcon_newarch", precision, gc=gc, lora=lora)
    # GPT-NeoX with use_parallel_residual=false (sequential: x + attn, then + mlp(ln2(.)))
    add("gpt_neox_seq", "fp32")
    add("gpt_neox_seq", "bf16-mixed", lora=True)
    add("gpt_neox_seq", "bf16-mixed", gc=True, lora=True)
    add("gpt_neox_seq", "bf16")
    # StableLM in the stablelm-2-12b layout: per-head qk LayerNorms, parallel residual, GQA. No
    # bf16-mixed: torch 1.13's CPU autocast leaves layer_norm alone, and the bf16 q/k projections
    # meet the fp32 per-head LayerNorm weights ("expected scalar type BFloat16 but found Float").
    for precision in ("fp32", "bf16"):
        for lora in (False, True):
            for gc in (False, True):
                add("stablelm_12b", precision, gc=gc, lora=lora)
    add("qwen2", "bf16-mixed", 1, 96, lora=True)
    add("opt", "bf16-mixed", 1, 96, lora=True)
    # gemma2's sliding window (16 in tiny-gemma2) not cutting (seq 8) and cutting far (seq 96)
    add("gemma2", "fp32", 4, 8)
    add("gemma2", "bf16-mixed", 1, 96, lora=True)
    # KV cache built by the training forward (config use_cache=true) vs forced off
    add("mistral", "fp32", extra=("--use-cache", "off"))
    add("mistral", "bf16-mixed", lora=True, extra=("--use-cache", "off"))
    # optimizers, checkpoint variant, adapters in fp32, LoRA dropout
    for optimizer in ("sgd", "sgd-momentum", "adamw-foreach"):
        add("llama", "fp32", optimizer=optimizer)
    add("llama", "bf16", optimizer="adamw-foreach")
    add("llama", "fp32", gc=True, extra=("--non-reentrant",))
    add("llama", "bf16-mixed", gc=True, lora=True, extra=("--non-reentrant",))
    add("llama", "bf16", lora=True, extra=("--lora-dtype", "fp32"))
    add("llama", "fp32", lora=True, extra=("--lora-dropout", "0.1"))
    add("gpt2", "fp32", lora=True, extra=("--lora-dropout", "0.1"))
    # the loss inside the model's forward: the last release before each family called ForCausalLMLoss
    for fam, version in (("llama", "4.45"), ("mistral", "4.45"), ("qwen2", "4.45"), ("gpt2", "4.48"),
                         ("bloom", "4.48"), ("gpt_neo", "4.48"), ("gpt_bigcode", "4.48"), ("codegen", "4.48")):
        add(fam, "bf16-mixed", 2, 96, lora=True, extra=("--transformers-version", version))
        add(fam, "bf16", 2, 96, extra=("--transformers-version", version))
    add("llama", "fp32", 2, 96, extra=("--transformers-version", "4.45"))
    return runs


def run_one(args_list):
    cmd = [PY, os.path.join(HERE, "measure_cpu.py")] + args_list
    t = time.time()
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError("failed: %s\n%s" % (" ".join(cmd), p.stderr[-3000:]))
    return json.loads(p.stdout.strip().splitlines()[-1]), time.time() - t


def param_count(config_path, lora):
    # parameter count of the base model (llmem's params_b), from a built model; cached per config
    sys.path.insert(0, HERE)
    import models  # noqa
    import torch
    with open(os.path.join(REPO, config_path)) as f:
        d = json.load(f)
    torch.manual_seed(0)
    m = models.build_model(d)
    return sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())


def row_from(fam, a, res, nparams):
    def opt(flag, default=None):
        return a[a.index(flag) + 1] if flag in a else default
    lora_rank = int(opt("--lora-rank", 0))
    gc = "--grad-ckpt" in a
    notes = ["storage_exact_peak=%d" % res["storage_peak_bytes"],
             "malloc_minus_storage=%+d" % (res["peak_bytes"] - res["storage_peak_bytes"]),
             "trainable_params=%d" % res["trainable_params"], "eager attention", "hf v4.57 op mirror",
             "torch.set_num_threads(1)"]
    if "--transformers-version" in a:
        notes.append("loss inside the forward as in transformers %s (shifted contiguous copy, "
                     "nn.CrossEntropyLoss); the rest of the forward as v4.57" % opt("--transformers-version"))
    if gc:
        notes.append("use_reentrant=%s" % ("False" if "--non-reentrant" in a else "True"))
    if lora_rank:
        notes.append("lora_dtype=%s" % opt("--lora-dtype", "base"))
    if res.get("expert_counts"):  # MoE: realised tokens per expert of each sparse layer, measured step
        notes.append("expert_counts=" + "|".join("L%s:%s" % (k, "/".join(str(c) for c in v))
                                                  for k, v in sorted(res["expert_counts"].items(),
                                                                     key=lambda kv: int(kv[0]))))
    return {
        "source_url": "", "model": opt("--config"), "params_b": "%.6f" % (nparams / 1e9), "gpus": 1,
        "gpu_type": "cpu", "method": "single", "world_size": 1, "tp": 1, "precision": opt("--precision"),
        "optimizer": opt("--optimizer"), "micro_batch": opt("--batch"), "seq_len": opt("--seq"),
        "grad_ckpt": "on" if gc else "off", "finetune": "lora" if lora_rank else "full",
        "lora_rank": lora_rank or "", "attention_impl": "eager", "measured_what": "cpu_peak_live_bytes",
        "peak_gib": "%.6f" % (res["peak_bytes"] / 2 ** 30), "notes": "; ".join(notes),
        "peak_bytes": res["peak_bytes"], "peak_forward_bytes": res["peak_forward_bytes"],
        "peak_loss_bytes": res["peak_loss_bytes"], "peak_backward_bytes": res["peak_backward_bytes"],
        "peak_optimizer_bytes": res["peak_optimizer_bytes"], "first_step_peak_bytes": res["first_step_peak_bytes"],
        "storage_peak_bytes": res["storage_peak_bytes"],
        "lora_alpha": opt("--lora-alpha", "") if lora_rank else "",
        "lora_dropout": opt("--lora-dropout", "") if lora_rank else "",
        "lora_targets": opt("--lora-targets", "") if lora_rank else "",
        "torch_version": res["torch_version"], "command": res["command"], "date": res["date"],
        "pp": 1, "schedule": "", "grad_accum": 1, "sequence_parallel": "",
        "transformers_version": opt("--transformers-version", ""),
    }


def distributed_only(out):
    t0 = time.time()
    with open(out, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["method"] == "single"]
    for r in rows:  # rows written before the distributed-layout columns existed
        r["pp"] = r.get("pp") or 1
        r["schedule"] = r.get("schedule") or ""
        r["grad_accum"] = r.get("grad_accum") or 1
        r["sequence_parallel"] = r.get("sequence_parallel") or ""
    sys.path.insert(0, HERE)
    import dist_cpu
    for r in dist_cpu.matrix_rows():
        rows.append(r)
        print("[%5.1fs] dist %s %s %s" % (time.time() - t0, r["method"], r["model"], r["notes"]), flush=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow(r)
    print("wrote %d rows to %s in %.1fs" % (len(rows), out, time.time() - t0))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(REPO, "validation", "data", "cpu_tier.csv"))
    ap.add_argument("--only", default=None, help="comma list of families")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-distributed", action="store_true")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--match", default=None,
                    help="keep only the runs whose arguments include this one (e.g. --transformers-version)")
    ap.add_argument("--distributed-only", action="store_true",
                    help="keep the single-process rows of --out as they are; rerun only the distributed ones")
    o = ap.parse_args()
    if o.distributed_only:
        return distributed_only(o.out)
    runs = matrix()
    if o.only:
        keep = set(o.only.split(","))
        runs = [r for r in runs if r[0] in keep]
    if o.match:
        runs = [r for r in runs if o.match in r[1]]
    if o.limit:
        runs = runs[: o.limit]
    t0 = time.time()
    nparams = {}
    rows = [None] * len(runs)
    with cf.ThreadPoolExecutor(o.jobs) as ex:
        futs = {ex.submit(run_one, a): i for i, (fam, a) in enumerate(runs)}
        for fut in cf.as_completed(futs):
            i = futs[fut]
            fam, a = runs[i]
            res, dt = fut.result()
            c = a[a.index("--config") + 1]
            if c not in nparams:
                nparams[c] = param_count(c, False)
            rows[i] = row_from(fam, a, res, nparams[c])
            print("[%5.1fs] %-70s peak=%d storage=%d (%.1fs)" % (time.time() - t0, " ".join(a[1:12]),
                  res["peak_bytes"], res["storage_peak_bytes"], dt), flush=True)
    def write():
        os.makedirs(os.path.dirname(o.out), exist_ok=True)
        with open(o.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            for r in rows:
                w.writerow(r)
    write()  # single-process rows first, so a distributed failure loses nothing
    if not o.no_distributed and (not o.only or "llama" in o.only):
        sys.path.insert(0, HERE)
        import dist_cpu
        for r in dist_cpu.matrix_rows():
            rows.append(r)
            print("[%5.1fs] dist %s %s rank peaks %s" % (time.time() - t0, r["method"], r["model"], r["notes"]),
                  flush=True)
    write()
    print("wrote %d rows to %s in %.1fs" % (len(rows), o.out, time.time() - t0))


if __name__ == "__main__":
    main()
