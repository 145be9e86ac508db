#!/usr/bin/python3
"""Quick self-test of the CPU measurement harness (plain script; exit status 1 on failure).

    /usr/bin/python3 validation/harness/test_harness.py

1. pure-parameter case, in process: build tiny-llama under the exact storage counter; live storage bytes
   after the build must equal parameter + buffer bytes exactly; mallinfo2 must be within the glibc
   chunk/metadata allowance of it.
2. one tiny configuration per family (subprocess, batch 1, seq 8, fp32 + one bf16-mixed LoRA + one grad-ckpt
   run): phase peaks positive and ordered sensibly, mallinfo2 and exact storage counts agree.
"""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import measure_cpu as mc  # noqa: E402  (mallopt before torch)
import models  # noqa: E402
import torch  # noqa: E402

FAILS = []


def check(cond, msg):
    print(("ok   " if cond else "FAIL ") + msg)
    if not cond:
        FAILS.append(msg)


def pure_parameter_case():
    torch.set_num_threads(1)
    with open(os.path.join(mc.REPO, "validation/configs/tiny-llama.json")) as f:
        cfg = json.load(f)
    import gc
    gc.collect()
    m0 = mc.malloc_used()
    counter = mc.StorageCounter()
    counter.start()
    base = counter.base
    counter.set_phase((0, "build"))
    torch.manual_seed(0)
    model = models.build_model(cfg)
    recs = torch.autograd._disable_profiler_legacy()
    live = base + sum(e.cpu_memory_usage() for th in recs for e in th if e.kind() == "memory_alloc")
    del recs
    gc.collect()
    m1 = mc.malloc_used()
    tensors = list({id(p): p for p in model.parameters()}.values()) + list(model.buffers())
    pbytes = sum(t.numel() * t.element_size() for t in tensors)
    check(live - base == pbytes,
          "pure parameters: exact storage count %d == parameter+buffer bytes %d" % (live - base, pbytes))
    # mallinfo2, same parameter shapes allocated as bare nn.Parameters (no profiler, no module objects)
    shapes = [(tuple(t.shape), t.dtype) for t in tensors]
    del model, tensors
    gc.collect()
    m0 = mc.malloc_used()
    ps = [torch.nn.Parameter(torch.empty(sh, dtype=dt)) for sh, dt in shapes]
    m1 = mc.malloc_used()
    # glibc: above the fixed mmap threshold a block is mmapped (page rounded, <= 4096 + 96 B extra);
    # below it a chunk is size + 8 rounded to 16; plus TensorImpl/StorageImpl (< 1 KiB per tensor)
    allowance = sum((4096 + 128 if p.numel() * p.element_size() + 128 >= mc.MMAP_THRESHOLD_BYTES else 96) + 1024
                    for p in ps)
    d = (m1 - m0) - pbytes
    check(0 <= d <= allowance,
          "pure parameters: mallinfo2 delta %d = params %d + glibc/metadata overhead %d (allowance %d, %d tensors)"
          % (m1 - m0, pbytes, d, allowance, len(ps)))


def run(cfg, *extra):
    cmd = [sys.executable, os.path.join(HERE, "measure_cpu.py"), "--config", "validation/configs/%s.json" % cfg,
           "--batch", "1", "--seq", "8"] + list(extra)
    p = subprocess.run(cmd, cwd=mc.REPO, capture_output=True, text=True)
    if p.returncode != 0:
        check(False, "%s %s: exit %d\n%s" % (cfg, " ".join(extra), p.returncode, p.stderr[-2000:]))
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def family_cases():
    cases = [(f, ("--precision", "fp32")) for f in ("tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-gpt2",
                                                      "tiny-opt")]
    cases += [("tiny-llama", ("--precision", "bf16-mixed", "--lora-rank", "4")),
              ("tiny-gpt2", ("--precision", "bf16", "--grad-ckpt")),
              ("tiny-opt", ("--precision", "fp32", "--grad-ckpt", "--non-reentrant", "--optimizer", "sgd"))]
    for cfg, extra in cases:
        r = run(cfg, *extra)
        if r is None:
            continue
        name = "%s %s" % (cfg, " ".join(extra))
        ph = [r["peak_%s_bytes" % p] for p in mc.PHASES]
        check(all(v > 0 for v in ph), name + ": all phase peaks positive %s" % ph)
        pb = r["param_bytes"]
        check(min(ph) >= pb, name + ": every phase peak >= parameter bytes %d" % pb)
        check(r["peak_loss_bytes"] >= r["peak_forward_bytes"],
              name + ": loss peak >= forward peak (activations + logits still alive)")
        check(r["peak_bytes"] == max(ph), name + ": step peak is the max of the phase peaks")
        s = r["storage"]
        for p in mc.PHASES:
            a, b = r["peak_%s_bytes" % p], s["peak_%s_bytes" % p]
            check(abs(a - b) <= 0.03 * b + 512 * 1024,
                  name + ": %s mallinfo2 %d vs exact storage %d (%+.2f%%)" % (p, a, b, 100.0 * (a - b) / b))
        if "--optimizer" not in extra:  # AdamW: two fp32/param-dtype states per trainable parameter
            check(r["peak_optimizer_bytes"] >= pb, name + ": optimizer peak includes states")


if __name__ == "__main__":
    pure_parameter_case()
    family_cases()
    print("%d failure(s)" % len(FAILS))
    sys.exit(1 if FAILS else 0)
