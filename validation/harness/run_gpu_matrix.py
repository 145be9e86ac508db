#!/usr/bin/env python3
"""Run the prepared GPU-tier matrix and write validation/data/gpu_tier.csv (llmem validation, GPU tier).

    python3 validation/harness/run_gpu_matrix.py --out $OUT/gpu_tier.csv      # ~80 runs, < 8 min on an H200
    python3 validation/harness/run_gpu_matrix.py --list                       # the matrix, nothing run
    python3 validation/harness/run_gpu_matrix.py --only L7- --limit 5         # a subset (substring of run ids)
    /usr/bin/python3 validation/harness/run_gpu_matrix.py --dry-run --limit 3 --out /tmp/x.csv   # CPU plumbing

Every run is a fresh process (clean caching allocator, fresh CUDA context): by default forked from this
process, which has imported torch (and transformers/peft) but never initialized CUDA; --mode exec starts
a new interpreter per run instead (slower: every run pays the imports). A forked run that fails with an
error other than an OOM is retried once with exec; if that works the rest of the matrix uses exec.

Rows are written as each run ends (a timeout or a kill leaves the rows so far), three per successful run,
one per counter, so that `llmem validate` compares like with like:
    measured_what = torch.cuda.max_memory_allocated | torch.cuda.max_memory_reserved | nvidia-smi memory.used
Failed runs get one row with measured_what = oom | error | skipped (...), which llmem validate skips.
The full JSON of every run goes to the same path with .jsonl instead of .csv.

Runs are ordered by priority; a wall-clock budget (--budget-s, default 450 s) stops launching new runs
so that the whole command ends within 8 minutes; a per-run timeout (--timeout, default 90 s) kills a stuck
run.
"""
import argparse
import csv
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time

T_START = time.time()
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import measure_gpu  # noqa: E402  (sets PYTORCH_NVML_BASED_CUDA_CHECK, imports torch without CUDA init)

PUBLISHED_COLS = ["source_url", "model", "params_b", "gpus", "gpu_type", "method", "world_size", "tp",
                  "precision", "optimizer", "micro_batch", "seq_len", "grad_ckpt", "finetune", "lora_rank",
                  "attention_impl", "measured_what", "peak_gib", "notes"]
EXTRA_COLS = ["peak_bytes", "reserved_bytes", "device_bytes", "peak_forward_bytes", "peak_loss_bytes",
              "peak_backward_bytes", "peak_optimizer_bytes", "first_step_peak_bytes", "lora_alpha", "lora_dropout",
              "lora_targets", "torch_version", "cuda_version", "gpu_name", "command", "date",
              # beyond the brief's list
              "requested_peak_bytes", "context_bytes", "driver_version", "alloc_conf", "impl", "wall_s"]
COLUMNS = PUBLISHED_COLS + EXTRA_COLS

COUNTERS = [  # (result key, measured_what)
    ("allocated", "torch.cuda.max_memory_allocated"),
    ("reserved", "torch.cuda.max_memory_reserved"),
    ("device", "nvidia-smi memory.used"),
]

CONFIGS = {
    "L7": "validation/configs/gpu-llama-2-7b-2l.json",      # Llama-2-7B widths, 2 layers (0.67 B)
    "L1": "validation/configs/gpu-llama-3.2-1b-4l.json",    # Llama-3.2-1B, 4 layers, GQA, vocab 128256, tied (0.51 B)
    "M7": "validation/configs/gpu-mistral-7b-2l.json",      # Mistral-7B-v0.1, 2 layers, GQA (0.70 B)
    "Q5": "validation/configs/gpu-qwen2.5-0.5b-8l.json",    # Qwen2.5-0.5B, 8 layers, GQA, qkv bias, vocab 151936
    "O13": "validation/configs/gpu-opt-1.3b.json",          # OPT-1.3B, all 24 layers (1.32 B), dropout 0.1
    "G2L": "validation/configs/gpu-gpt2-large.json",        # GPT-2 large, all 36 layers (0.77 B), dropout 0.1
}
ALL_LINEAR = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def spec(m, b, s, prec="bf16-mixed", attn="sdpa", opt="adamw", gc=False, nr=False, lora=0, targets=None,
         alpha=None, method="single", ws=1, alloc=None, prio=3):
    return dict(model=m, batch=b, seq=s, precision=prec, attention=attn, optimizer=opt, grad_ckpt=gc,
                non_reentrant=nr, lora_rank=lora, lora_alpha=alpha if alpha is not None else (2 * lora if lora else 0),
                lora_dropout=0.0, lora_targets=targets, method=method, world_size=ws, alloc_conf=alloc, prio=prio)


def matrix():
    R = []
    a = R.append
    # ---- priority 1: every family at its anchor shape, the precisions, attention, the main knobs, DDP/FSDP
    for prec in ("bf16-mixed", "fp32", "bf16", "fp16-mixed"):
        for attn in ("sdpa", "eager"):
            if prec == "fp16-mixed" and attn == "eager":
                continue
            a(spec("L7", 4, 1024, prec, attn, prio=1))
    a(spec("L7", 4, 1024, "fp16", "sdpa", prio=1))
    a(spec("L7", 4, 1024, gc=True, prio=1))
    a(spec("L7", 4, 1024, lora=16, prio=1))
    a(spec("L7", 4, 1024, opt="adamw-fused", prio=1))
    a(spec("L1", 4, 1024, prio=1))
    a(spec("L1", 4, 1024, attn="eager", prio=1))
    a(spec("L1", 4, 1024, "fp32", prio=1))
    a(spec("O13", 4, 512, prio=1))
    a(spec("O13", 4, 512, attn="eager", prio=1))
    a(spec("O13", 2, 512, "fp32", prio=1))
    a(spec("G2L", 4, 1024, prio=1))
    a(spec("G2L", 4, 1024, attn="eager", prio=1))
    a(spec("G2L", 2, 512, "fp32", "eager", prio=1))
    a(spec("Q5", 4, 1024, prio=1))
    a(spec("Q5", 4, 1024, attn="eager", prio=1))
    a(spec("M7", 4, 1024, prio=1))
    a(spec("L7", 4, 1024, method="ddp", ws=2, prio=1))
    a(spec("L7", 4, 1024, method="fsdp", ws=2, prio=1))
    # ---- priority 2: Llama-2-7B-wide sweeps (checkpointing, LoRA, optimizers, batch x seq), more layouts
    a(spec("L7", 4, 1024, attn="eager", gc=True, prio=2))
    a(spec("L7", 4, 1024, gc=True, nr=True, prio=2))
    a(spec("L7", 4, 1024, "fp32", gc=True, prio=2))
    a(spec("L7", 4, 1024, attn="eager", lora=16, prio=2))
    a(spec("L7", 4, 1024, "bf16", lora=16, prio=2))
    a(spec("L7", 4, 1024, "fp32", lora=16, prio=2))
    a(spec("L7", 4, 1024, gc=True, lora=16, prio=2))
    a(spec("L7", 4, 1024, gc=True, nr=True, lora=16, prio=2))
    a(spec("L7", 4, 1024, lora=64, targets=ALL_LINEAR, prio=2))
    for opt in ("adamw-foreach", "adamw-forloop", "sgd", "sgd-momentum"):
        a(spec("L7", 4, 1024, opt=opt, prio=2))
    a(spec("L7", 4, 1024, "fp32", opt="adamw-fused", prio=2))
    for b, s in ((1, 512), (1, 2048), (2, 1024), (8, 512), (4, 2048), (8, 2048)):
        a(spec("L7", b, s, prio=2))
    for b, s in ((1, 2048), (8, 512)):
        a(spec("L7", b, s, attn="eager", prio=2))
    a(spec("L7", 4, 1024, method="ddp", ws=4, prio=2))
    a(spec("L7", 4, 1024, method="fsdp", ws=4, prio=2))
    a(spec("L7", 4, 1024, "fp32", method="ddp", ws=2, prio=2))
    a(spec("L7", 4, 1024, "fp32", method="fsdp", ws=4, prio=2))
    a(spec("L7", 4, 1024, lora=16, method="ddp", ws=2, prio=2))
    a(spec("L7", 4, 1024, gc=True, method="fsdp", ws=4, prio=2))
    # ---- priority 3: the other families' sweeps, allocator settings
    a(spec("L1", 4, 1024, "bf16", prio=3))
    a(spec("L1", 8, 2048, gc=True, prio=3))
    a(spec("L1", 4, 1024, lora=16, prio=3))
    a(spec("L1", 8, 2048, prio=3))
    a(spec("L1", 1, 2048, attn="eager", prio=3))
    a(spec("L1", 4, 1024, opt="adamw-fused", prio=3))
    a(spec("O13", 8, 1024, prio=3))
    a(spec("O13", 4, 1024, "bf16", prio=3))
    a(spec("O13", 4, 2048, attn="eager", gc=True, prio=3))
    a(spec("O13", 4, 1024, attn="eager", lora=16, prio=3))
    a(spec("O13", 8, 2048, gc=True, lora=16, prio=3))
    a(spec("O13", 4, 512, opt="adamw-fused", prio=3))
    a(spec("O13", 4, 512, "fp16-mixed", prio=3))
    a(spec("O13", 2, 512, "fp32", "eager", prio=3))
    a(spec("G2L", 4, 1024, "fp32", prio=3))
    a(spec("G2L", 8, 1024, attn="eager", gc=True, prio=3))
    a(spec("G2L", 4, 1024, attn="eager", lora=16, targets="c_attn", prio=3))
    a(spec("G2L", 4, 512, "bf16", "eager", prio=3))
    a(spec("G2L", 4, 1024, "fp16-mixed", "eager", prio=3))
    a(spec("Q5", 2, 1024, "fp32", prio=3))
    a(spec("Q5", 8, 2048, gc=True, prio=3))
    a(spec("Q5", 4, 2048, lora=16, targets="q_proj,k_proj,v_proj,o_proj", prio=3))
    a(spec("Q5", 4, 1024, "bf16", prio=3))
    a(spec("M7", 2, 1024, attn="eager", prio=3))
    a(spec("M7", 4, 2048, lora=16, prio=3))
    a(spec("M7", 2, 512, "fp32", prio=3))
    es = "expandable_segments:True"
    a(spec("L7", 4, 1024, alloc=es, prio=3))
    a(spec("L7", 4, 1024, attn="eager", alloc=es, prio=3))
    a(spec("O13", 4, 512, attn="eager", alloc=es, prio=3))
    R.sort(key=lambda r: r["prio"])  # stable: the order above within a priority
    for r in R:
        r["id"] = run_id(r)
    return R


def run_id(r):
    p = {"bf16-mixed": "bf16m", "fp16-mixed": "fp16m"}.get(r["precision"], r["precision"])
    parts = [r["model"], "b%ds%d" % (r["batch"], r["seq"]), p, r["attention"]]
    if r["grad_ckpt"]:
        parts.append("ckpt-nr" if r["non_reentrant"] else "ckpt")
    if r["lora_rank"]:
        parts.append("lora%d%s" % (r["lora_rank"], "-" + r["lora_targets"].replace(",", "+") if r["lora_targets"] else ""))
    if r["optimizer"] != "adamw":
        parts.append(r["optimizer"])
    if r["method"] != "single":
        parts.append("%s%d" % (r["method"], r["world_size"]))
    if r["alloc_conf"]:
        parts.append("expseg" if "expandable" in r["alloc_conf"] else "allocconf")
    return "-".join(parts)


def argv_for(r, dry):
    a = ["--model", CONFIGS[r["model"]], "--batch", str(r["batch"]), "--seq", str(r["seq"]),
         "--precision", r["precision"], "--optimizer", r["optimizer"], "--attention", r["attention"]]
    if r["grad_ckpt"]:
        a.append("--grad-ckpt")
        if r["non_reentrant"]:
            a.append("--non-reentrant")
    if r["lora_rank"]:
        a += ["--lora-rank", str(r["lora_rank"]), "--lora-alpha", str(r["lora_alpha"]),
              "--lora-dropout", str(r["lora_dropout"])]
        if r["lora_targets"]:
            a += ["--lora-targets", r["lora_targets"]]
    if r["method"] != "single":
        a += ["--method", r["method"], "--world-size", str(r["world_size"])]
    if r["alloc_conf"]:
        a += ["--alloc-conf", r["alloc_conf"]]
    if dry:
        a.append("--dry-run")
    return a


# ---- running one measurement in a fresh process ----------------------------------------------------------
def run_forked(argv, timeout, log_path):
    sys.stdout.flush()
    sys.stderr.flush()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 0
        try:
            os.close(rfd)
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            res = measure_gpu.run(argv)
            data = json.dumps(res, default=str).encode()
        except BaseException as e:  # noqa: BLE001
            data = json.dumps({"status": "error", "error": "forked child: %r" % (e,)}).encode()
            code = 1
        try:
            view = memoryview(data)
            while view:
                n = os.write(wfd, view)
                view = view[n:]
            os.close(wfd)
        finally:
            os._exit(code)
    os.close(wfd)
    chunks, deadline, timed_out = [], time.time() + timeout, False
    while True:
        left = deadline - time.time()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([rfd], [], [], left)
        if ready:
            chunk = os.read(rfd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    os.close(rfd)
    if timed_out:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.waitpid(pid, 0)
    if timed_out:
        time.sleep(1.0)  # let the driver release the killed process's memory
        return {"status": "error", "error": "timeout after %.0f s" % timeout}
    try:
        return json.loads(b"".join(chunks).decode())
    except Exception:
        return {"status": "error", "error": "forked child returned no JSON (crashed?)"}


def run_exec(argv, timeout, log_path):
    cmd = [sys.executable, os.path.join(HERE, "measure_gpu.py")] + argv
    env = dict(os.environ)
    if "--alloc-conf" in argv:  # set before the interpreter starts, the surest way
        env["PYTORCH_CUDA_ALLOC_CONF"] = argv[argv.index("--alloc-conf") + 1]
    try:
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        with open(log_path, "w") as f:
            f.write(str(e.stderr or ""))
        time.sleep(1.0)
        return {"status": "error", "error": "timeout after %.0f s" % timeout}
    with open(log_path, "w") as f:
        f.write(p.stderr)
    for line in reversed(p.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except Exception:
                break
    return {"status": "error", "error": "exit %d, no JSON; stderr: %s" % (p.returncode, p.stderr[-500:])}


def failed(res):
    """An error that is not an OOM, a skip or a timeout (those are answers, not breakage)."""
    return res.get("status") == "error" and "timeout" not in res.get("error", "")


def fork_trouble(res):
    e = (res.get("error", "") + res.get("traceback", "")).lower()
    return any(k in e for k in ("no json", "forked child", "fork", "initialization error", "re-initialize",
                                "cuda driver", "cudaerror"))


def log_tail(path, n=1500):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


# ---- rows ------------------------------------------------------------------------------------------------
def fmt_gib(b):
    return "%.6f" % (b / 2 ** 30) if isinstance(b, (int, float)) else ""


def base_row(r, res):
    lora = r["lora_rank"]
    gc = r["grad_ckpt"]
    return {
        "source_url": "", "model": CONFIGS[r["model"]],
        "params_b": "%.6f" % (res["params"] / 1e9) if res.get("params") else "",
        "gpus": r["world_size"], "gpu_type": res.get("gpu_name") or "",
        "method": r["method"], "world_size": r["world_size"], "tp": 1, "precision": r["precision"],
        "optimizer": r["optimizer"], "micro_batch": r["batch"], "seq_len": r["seq"],
        "grad_ckpt": ("on (non-reentrant)" if r["non_reentrant"] else "on") if gc else "off",
        "finetune": "lora" if lora else "full", "lora_rank": lora or "", "attention_impl": r["attention"],
        "lora_alpha": ("%g" % r["lora_alpha"]) if lora else "",
        "lora_dropout": ("%g" % r["lora_dropout"]) if lora else "",
        "lora_targets": res.get("lora_targets", "") if lora else "",
        "torch_version": res.get("torch_version", ""), "cuda_version": res.get("cuda_version") or "",
        "gpu_name": res.get("gpu_name") or "", "command": res.get("command", ""), "date": res.get("date", ""),
        "driver_version": res.get("driver_version") or "", "alloc_conf": res.get("alloc_conf", ""),
        "impl": impl_text(res), "wall_s": res.get("wall_s", ""),
        "context_bytes": res.get("context_bytes") if res.get("context_bytes") is not None else "",
    }


def impl_text(res):
    if res.get("impl") == "hf":
        t = "hf transformers %s" % res.get("transformers_version")
        if res.get("peft_version"):
            t += " peft %s" % res["peft_version"]
        return t
    if res.get("impl") == "mirror":
        return "mirror validation/harness/models.py"
    return ""


def rows_for(r, res, dry):
    suffix = " (dry-run)" if dry else ""
    b = base_row(r, res)
    st = res.get("status")
    if st != "ok":
        row = dict(b)
        if st == "oom":
            what = "oom"
        elif st == "skipped":
            what = "skipped (%s)" % ("torch too old" if "too old" in res.get("reason", "") else "not available")
        else:
            what = "error"
        row.update(measured_what=what + suffix, peak_gib="",
                   notes="; ".join(x for x in [res.get("reason") or res.get("error", ""),
                                               "oom at step %s %s" % tuple(res["oom_at"]) if res.get("oom_at") else ""]
                                   if x))
        return [row]
    common_notes = ["impl=%s" % impl_text(res), "step %d of %d measured (step 1 warm-up)" % (2, 2),
                    "peak phase (allocated)=%s" % res.get("peak_phase"),
                    "trainable_params=%s" % res.get("trainable_params")]
    if r["grad_ckpt"]:
        common_notes.append("use_reentrant=%s" % (not r["non_reentrant"]))
    common_notes += res.get("notes", [])
    if res.get("context_bytes") is not None and not dry:
        common_notes.append("cuda_context_bytes=%s" % res["context_bytes"])
    if res.get("nonalloc_bytes_end") is not None:
        common_notes.append("device_minus_reserved_at_end=%s" % res["nonalloc_bytes_end"])
    if res.get("num_alloc_retries"):
        common_notes.append("num_alloc_retries=%s" % res["num_alloc_retries"])
    out = []
    for key, what in COUNTERS:
        peak = res.get("peak_%s_bytes" % key)
        if peak is None:
            continue  # e.g. no NVML and no nvidia-smi: no device row
        phases = res.get("phase_%s_bytes" % key) or {}
        notes = list(common_notes)
        if key == "device":
            src = res.get("device_source")
            notes.append("device memory.used sampled at phase ends via %s" % {
                "pynvml": "NVML nvmlDeviceGetMemoryInfo v2 .used (= nvidia-smi memory.used)",
                "pynvml-v1": "NVML nvmlDeviceGetMemoryInfo v1 .used (total - free; includes driver-reserved)",
                "nvidia-smi": "nvidia-smi --query-gpu=memory.used (MiB)"}.get(src, src or "-"))
            if res.get("nvidia_smi_end_bytes") is not None:
                notes.append("nvidia-smi at step end=%s" % res["nvidia_smi_end_bytes"])
        row = dict(b)
        row.update({
            "measured_what": what + suffix, "peak_gib": fmt_gib(peak), "notes": "; ".join(notes),
            "peak_bytes": peak,
            "reserved_bytes": res.get("peak_reserved_bytes", ""),
            "device_bytes": res.get("peak_device_bytes") if res.get("peak_device_bytes") is not None else "",
            "requested_peak_bytes": res.get("peak_requested_bytes") if res.get("peak_requested_bytes") is not None
            else "",
            "first_step_peak_bytes": res.get("first_step_peak_%s_bytes" % key, ""),
        })
        for ph in measure_gpu.PHASES:
            v = phases.get(ph)
            row["peak_%s_bytes" % ph] = v if v is not None else ""
        out.append(row)
    return out


# ---- main ------------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="CSV path (default validation/data/gpu_tier.csv; "
                                                "with --dry-run a file in the temp folder)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, no CUDA calls, counters 0")
    ap.add_argument("--limit", type=int, default=0, help="only the first N runs (after --only)")
    ap.add_argument("--only", default=None, help="comma list of substrings of run ids (see --list)")
    ap.add_argument("--mode", choices=("fork", "exec"), default="fork")
    ap.add_argument("--timeout", type=float, default=90.0, help="per-run timeout, seconds")
    ap.add_argument("--budget-s", type=float, default=450.0, help="launch no run after this many seconds")
    ap.add_argument("--impl", choices=("auto", "hf", "mirror"), default="auto")
    ap.add_argument("--list", action="store_true", help="print the matrix and exit")
    o = ap.parse_args(argv)
    t0 = T_START

    runs = matrix()
    if o.only:
        keys = [k for k in o.only.split(",") if k]
        runs = [r for r in runs if any(k in r["id"] for k in keys)]
    if o.limit:
        runs = runs[: o.limit]
    if o.list:
        for i, r in enumerate(runs):
            print("%3d p%d %-58s %s" % (i + 1, r["prio"], r["id"], " ".join(argv_for(r, o.dry_run))))
        print("%d runs" % len(runs))
        return 0

    out = o.out or (os.path.join(tempfile.gettempdir(), "gpu_tier_dryrun.csv") if o.dry_run
                    else os.path.join(REPO, "validation", "data", "gpu_tier.csv"))
    out = os.path.abspath(out)
    jsonl = (out[:-4] if out.endswith(".csv") else out) + ".jsonl"
    os.makedirs(os.path.dirname(out), exist_ok=True)
    logdir = (out[:-4] if out.endswith(".csv") else out) + ".logs"  # one stdout/stderr log per run
    os.makedirs(logdir, exist_ok=True)

    import torch
    print("llmem GPU tier: %d runs, torch %s (CUDA build %s), mode %s%s, out %s" % (
        len(runs), torch.__version__, getattr(torch.version, "cuda", None), o.mode, ", DRY RUN" if o.dry_run else "",
        out), flush=True)
    if not o.dry_run and not measure_gpu.torch_ge(2, 4):
        print("warning: torch %s < 2.4; the matrix is planned for >= 2.4" % torch.__version__, flush=True)
    types = sorted({measure_gpu.load_config(os.path.join(REPO, CONFIGS[r["model"]]))["model_type"] for r in runs})
    if o.mode == "fork":
        measure_gpu.preimport(types, o.impl)
    tr = measure_gpu.transformers_lib() if o.impl != "mirror" else None
    print("model code: %s" % ("transformers %s%s" % (tr.__version__, ", peft found" if measure_gpu.peft_available()
                                                     else ", no peft (LoRA runs use the mirror)")
                              if tr is not None else "mirror validation/harness/models.py (transformers not importable"
                              " or --impl mirror)"), flush=True)
    if o.mode == "fork" and torch.cuda.is_initialized():
        print("warning: an import initialized CUDA in this process; forked runs could not use it: --mode exec",
              flush=True)
        o.mode = "exec"
    print("imports done in %.1fs" % (time.time() - t0), flush=True)

    fcsv = open(out, "w", newline="")
    w = csv.DictWriter(fcsv, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    fcsv.flush()
    fj = open(jsonl, "w")

    mode = o.mode
    impl = o.impl
    hf_in_use = tr is not None and measure_gpu.torch_ge(2, 0)
    hf_failures = 0
    results = []
    not_run = []
    nrows = 0
    for i, r in enumerate(runs):
        elapsed = time.time() - t0
        left = o.budget_s - elapsed
        if left < 5:
            not_run.append(r)
            continue
        argv_ = argv_for(r, o.dry_run) + (["--impl", impl] if impl != "auto" else [])
        log_path = os.path.join(logdir, "%03d-%s.log" % (i + 1, r["id"]))
        timeout = max(5.0, min(o.timeout, left + 30.0))  # a run launched in budget may finish past it by <= 30 s
        t = time.time()
        res = (run_forked if mode == "fork" else run_exec)(argv_, timeout, log_path)
        how = mode
        if mode == "fork" and failed(res) and fork_trouble(res):
            res2 = run_exec(argv_, timeout, log_path + ".exec")
            how = "fork failed, exec"
            if not failed(res2):
                print("    forked run failed (%s); exec worked: exec mode from here on" % res.get("error", "")[:200],
                      flush=True)
                mode = "exec"
            res = res2
        if failed(res) and impl == "auto" and hf_in_use:
            # the transformers path broke (version skew, ...): retry on the op-for-op mirror, keep the data flowing
            hf_error = res.get("error", "")
            res2 = (run_forked if mode == "fork" else run_exec)(argv_ + ["--impl", "mirror"], timeout,
                                                                log_path + ".mirror")
            if not failed(res2):
                res = res2
                res.setdefault("notes", []).append("transformers path failed (%s); measured with the mirror"
                                                   % hf_error[:200])
                how += ", hf failed, mirror"
                hf_failures += 1
                if hf_failures >= 3:
                    print("    the transformers path failed 3 times where the mirror worked: --impl mirror from here on",
                          flush=True)
                    impl = "mirror"
        dt = time.time() - t
        if res.get("status") == "error":
            res.setdefault("log_tail", log_tail(log_path))
        rows = rows_for(r, res, o.dry_run)
        for row in rows:
            w.writerow(row)
        fcsv.flush()
        os.fsync(fcsv.fileno())
        nrows += len(rows)
        fj.write(json.dumps({"id": r["id"], "spec": r, "argv": argv_, "how": how, "result": res}, default=str) + "\n")
        fj.flush()
        results.append((r, res, dt))
        st = res.get("status")
        if st == "ok":
            msg = "alloc %7.3f  reserved %7.3f  device %s GiB" % (
                res["peak_allocated_bytes"] / 2 ** 30, res["peak_reserved_bytes"] / 2 ** 30,
                "%7.3f" % (res["peak_device_bytes"] / 2 ** 30) if res.get("peak_device_bytes") is not None else "   -   ")
        elif st == "skipped":
            msg = "skipped: %s" % res.get("reason", "")
        else:
            msg = "%s: %s" % (st.upper() if st else "ERROR", (res.get("error") or "")[:160])
        print("[%6.1fs] %3d/%d %-58s %s (%.1fs)" % (time.time() - t0, i + 1, len(runs), r["id"], msg, dt), flush=True)
    fcsv.close()
    fj.close()

    # ---- summary
    by = {}
    for r, res, dt in results:
        by.setdefault(res.get("status", "error"), []).append(r["id"])
    print("\nsummary: %d runs done in %.1fs (%s); %d rows -> %s (JSON: %s; logs: %s)" % (
        len(results), time.time() - t0, ", ".join("%s %d" % (k, len(v)) for k, v in sorted(by.items())),
        nrows, out, jsonl, logdir))
    ok = [(r, res) for r, res, dt in results if res.get("status") == "ok"]
    if ok and not o.dry_run:
        def ratio(a, b):
            return a / b if b else float("nan")
        rr = sorted(ratio(res["peak_reserved_bytes"], res["peak_allocated_bytes"]) for r, res in ok)
        print("reserved/allocated: min %.3f median %.3f max %.3f" % (rr[0], rr[len(rr) // 2], rr[-1]))
        dv = [res["peak_device_bytes"] - res["peak_reserved_bytes"] for r, res in ok
              if res.get("peak_device_bytes") is not None]
        if dv:
            dv.sort()
            print("device - reserved (MiB): min %.0f median %.0f max %.0f" % (
                dv[0] / 2 ** 20, dv[len(dv) // 2] / 2 ** 20, dv[-1] / 2 ** 20))
        ctx = [res.get("context_bytes") for r, res in ok if res.get("context_bytes") is not None]
        if ctx:
            print("CUDA context estimate (MiB): %s" % sorted({round(c / 2 ** 20) for c in ctx}))
    for k in ("oom", "error", "skipped"):
        for rid in by.get(k, []):
            print("  %s: %s" % (k, rid))
    if not_run:
        print("not run (budget %.0fs reached): %d: %s" % (o.budget_s, len(not_run), ", ".join(r["id"] for r in not_run)))
    return 0 if results and not by.get("error") else 1


if __name__ == "__main__":
    sys.exit(main())
