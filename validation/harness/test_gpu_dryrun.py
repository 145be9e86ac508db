#!/usr/bin/env python3
"""Self-test of the GPU-tier harness without a GPU (plain script; exit status 1 on failure, < 60 s).

    /usr/bin/python3 validation/harness/test_gpu_dryrun.py

1. run_gpu_matrix.py --dry-run --limit 3 (forked runs): the CSV has the published.csv columns then the added
   ones, three rows per run (allocated, reserved, nvidia-smi; "(dry-run)", counters 0), the JSONL has every
   phase of both steps.
2. run_gpu_matrix.py --dry-run --only <a DDP run> --limit 1 --mode exec: a "skipped (torch too old)" row on
   torch < 2.2, three rows on a newer torch (the fake process group runs on CPU too).
3. measure_gpu.py --dry-run on validation/configs/tiny-llama.json with LoRA, checkpointing, sdpa and fused
   AdamW: one JSON object, status ok, both steps with all four phases.
4. `llmem validate` on the CSV of 1 when a built llmem is there: it reads the file and skips every row.
"""
import csv
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
PY = sys.executable
PUBLISHED_CSV = os.path.join(REPO, "..", "shared", "validation", "published.csv")
PUBLISHED_COLS = ["source_url", "model", "params_b", "gpus", "gpu_type", "method", "world_size", "tp",
                  "precision", "optimizer", "micro_batch", "seq_len", "grad_ckpt", "finetune", "lora_rank",
                  "attention_impl", "measured_what", "peak_gib", "notes"]
REQUIRED_EXTRA = ["peak_bytes", "reserved_bytes", "device_bytes", "peak_forward_bytes", "peak_loss_bytes",
                  "peak_backward_bytes", "peak_optimizer_bytes", "first_step_peak_bytes", "lora_alpha",
                  "lora_dropout", "lora_targets", "torch_version", "cuda_version", "gpu_name", "command", "date"]
WHATS = ["torch.cuda.max_memory_allocated (dry-run)", "torch.cuda.max_memory_reserved (dry-run)",
         "nvidia-smi memory.used (dry-run)"]
PHASES = ["forward", "loss", "backward", "optimizer"]
FAILS = []


def check(cond, msg):
    print(("ok   " if cond else "FAIL ") + msg, flush=True)
    if not cond:
        FAILS.append(msg)
    return cond


def run(cmd, timeout=50):
    t = time.time()
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return p, time.time() - t


def read_csv(path):
    with open(path, newline="") as f:
        r = csv.reader(f)
        header = next(r)
        rows = [dict(zip(header, row)) for row in r]
    return header, rows


def torch_ge_2_2():
    p = subprocess.run([PY, "-c", "import torch;v=torch.__version__.split('.');print(int(v[0])*100+int(v[1]))"],
                       capture_output=True, text=True)
    return int(p.stdout.strip() or 0) >= 202


def test_matrix(tmp):
    out = os.path.join(tmp, "gpu_tier.csv")
    p, dt = run([PY, "validation/harness/run_gpu_matrix.py", "--dry-run", "--limit", "3", "--out", out])
    print(p.stdout[-3000:])
    if not check(p.returncode == 0, "run_gpu_matrix --dry-run --limit 3 exits 0 (%.1fs)\n%s" % (dt, p.stderr[-3000:])):
        return None
    check("summary: 3 runs done" in p.stdout, "summary printed for 3 runs")
    header, rows = read_csv(out)
    published = PUBLISHED_COLS
    if os.path.exists(PUBLISHED_CSV):
        with open(PUBLISHED_CSV, newline="") as f:
            published = next(csv.reader(f))
    check(header[:len(published)] == published, "CSV starts with the columns of published.csv (%d)" % len(published))
    extra = header[len(published):]
    check(extra[:len(REQUIRED_EXTRA)] == REQUIRED_EXTRA, "then the added columns in order: %s" % ", ".join(extra))
    check(len(rows) == 9, "9 rows (3 runs x 3 counters), got %d" % len(rows))
    for i, row in enumerate(rows):
        check(row["measured_what"] == WHATS[i % 3], "row %d measured_what %r" % (i + 1, row["measured_what"]))
    for row in rows:
        check(row["peak_bytes"] == "0" and row["reserved_bytes"] == "0" and row["device_bytes"] == "0",
              "dry-run counters are 0 (%s)" % row["measured_what"])
        check(all(row["peak_%s_bytes" % ph] == "0" for ph in PHASES), "per-phase columns filled")
        check(os.path.exists(os.path.join(REPO, row["model"])) and row["model"].startswith("validation/configs/gpu-"),
              "model %s is a config path relative to the repo root" % row["model"])
        check(row["micro_batch"] == "4" and row["seq_len"] == "1024", "matrix batch/seq kept in the row")
        check(row["gpu_type"] == "cpu (dry-run)" and row["method"] == "single" and row["gpus"] == "1",
              "gpu_type / method / gpus")
        check("measure_gpu.py" in row["command"] and "--dry-run" in row["command"], "command reproduces the run")
        check(float(row["params_b"]) > 0 and row["torch_version"] and row["date"], "params_b, torch_version, date")
    check({r["precision"] for r in rows} == {"bf16-mixed", "fp32"} and {r["attention_impl"] for r in rows} ==
          {"sdpa", "eager"}, "the first runs cover precision x attention")
    jsonl = out[:-4] + ".jsonl"
    with open(jsonl) as f:
        recs = [json.loads(line) for line in f]
    check(len(recs) == 3, "JSONL has 3 runs")
    for rec in recs:
        res = rec["result"]
        check(res["status"] == "ok", "%s status ok" % rec["id"])
        steps = res.get("steps", [])
        check([s["step"] for s in steps] == [1, 2] and all(list(s["phases"]) == PHASES for s in steps),
              "%s: steps 1 and 2, phases %s in order" % (rec["id"], PHASES))
        check(res.get("loss") is not None and res["loss"] == res["loss"], "%s: a finite loss" % rec["id"])
    return out


def test_distributed(tmp):
    out = os.path.join(tmp, "dist.csv")
    p, dt = run([PY, "validation/harness/run_gpu_matrix.py", "--dry-run", "--only", "sdpa-ddp2", "--limit", "1",
                 "--mode", "exec", "--out", out])
    print(p.stdout[-1500:])
    header, rows = read_csv(out)
    if torch_ge_2_2():
        check(len(rows) == 3 and rows[0]["method"] == "ddp" and rows[0]["world_size"] == "2",
              "DDP (fake process group) gives 3 rows on this torch (%.1fs)" % dt)
    else:
        check(len(rows) == 1 and rows[0]["measured_what"] == "skipped (torch too old) (dry-run)"
              and rows[0]["method"] == "ddp", "DDP row on torch < 2.2 says skipped: torch too old (%.1fs): %s"
              % (dt, rows[0]["measured_what"] if rows else "no row"))
        check("torch too old" in rows[0]["notes"], "the reason is in notes")
        check(p.returncode == 0, "a skipped row is not a failure (exit 0)")


def test_measure():
    cmd = [PY, "validation/harness/measure_gpu.py", "--model", "validation/configs/tiny-llama.json", "--dry-run",
           "--batch", "2", "--seq", "16", "--precision", "bf16-mixed", "--attention", "sdpa", "--grad-ckpt",
           "--lora-rank", "4", "--lora-alpha", "8", "--optimizer", "adamw-fused"]
    p, dt = run(cmd)
    if not check(p.returncode == 0, "measure_gpu.py --dry-run exits 0 (%.1fs)\n%s" % (dt, p.stderr[-2000:])):
        return
    lines = [ln for ln in p.stdout.strip().splitlines() if ln.startswith("{")]
    check(len(lines) == 1, "one JSON object on stdout")
    res = json.loads(lines[-1])
    check(res["status"] == "ok" and res["dry_run"] is True, "status ok, dry_run")
    check(res["peak_allocated_bytes"] == 0 and res["peak_reserved_bytes"] == 0 and res["peak_device_bytes"] == 0,
          "counters 0")
    check([s["step"] for s in res["steps"]] == [1, 2] and all(list(s["phases"]) == PHASES for s in res["steps"]),
          "both steps, four phases")
    check(res["trainable_params"] < res["params"] and res["lora_targets"] == "q_proj,v_proj",
          "LoRA: only adapters trainable (%d of %d)" % (res["trainable_params"], res["params"]))
    check(res["impl"] in ("mirror", "hf"), "model code recorded: %s" % res["impl"])
    check("--grad-ckpt" in res["command"] and "--lora-rank 4" in res["command"], "command line recorded")


def test_validate(csv_path):
    for b in ("build/ci/tools/llmem/llmem", "build/release/tools/llmem/llmem", "build/tools/llmem/llmem"):
        exe = os.path.join(REPO, b)
        if os.path.exists(exe):
            p, dt = run([exe, "validate", csv_path])
            check(p.returncode == 0 and "compared 0, skipped 9" in p.stdout,
                  "llmem validate reads the dry-run CSV and skips its rows: %s" % p.stdout.strip().splitlines()[-1:])
            return
    print("skip llmem validate (no built llmem)")


def main():
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        out = test_matrix(tmp)
        test_distributed(tmp)
        test_measure()
        if out:
            test_validate(out)
    print("%d failure(s) in %.1fs" % (len(FAILS), time.time() - t0))
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
