#!/usr/bin/python3
"""Measure peak live bytes of a fine-tuning step on CPU, per phase (llmem validation, CPU tier).

Two independent counts, from two identical runs in the same process (same seed, same ops):

  mallinfo  glibc mallinfo2() (uordblks + hblkhd) sampled after every aten op from a
            TorchDispatchMode and at each phase boundary, minus the process baseline taken before
            the model is built. M_MMAP_THRESHOLD is fixed with mallopt so glibc's dynamic threshold
            cannot move. Includes malloc chunk overhead and CPU-side metadata (TensorImpl,
            StorageImpl, autograd nodes, Python objects >512 B), misses allocations that live only
            inside one op (sampled between ops).
  storage   exact: the c10 CPU allocator's own alloc/free report (legacy autograd profiler with
            profile_memory=True; every allocation and free with its requested nbytes, in order), plus
            the storages alive when recording starts (parameters, buffers, inputs, found with gc).
            Counts every tensor storage, including autograd-saved tensors, autocast cast caches and
            op-internal temporaries; no malloc overhead, no metadata.

Run:  /usr/bin/python3 validation/harness/measure_cpu.py --config validation/configs/tiny-llama.json \
          --batch 2 --seq 64 --precision bf16-mixed --optimizer adamw
Prints one JSON object.
"""
import ctypes
import os
import sys

# ---- glibc setup must happen before torch is imported ------------------------------------------
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's initial default, now fixed (no dynamic raise)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2
if _libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) != 1:
    raise RuntimeError("mallopt(M_MMAP_THRESHOLD) failed")


def malloc_used():
    m = _libc.mallinfo2()
    return m.uordblks + m.hblkhd


import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

# oneDNN's bf16 kernels, which PyTorch picks on CPUs with AVX512-BF16 or AMX
# (mkldnn_bf16_device_check), keep scratchpads and reordered weights in malloc
# memory outside the c10 allocator, and may copy inputs differently. The tier
# measures PyTorch's own kernels, the same on every CPU (the committed rows
# were measured on CPUs without those features), so oneDNN stays off.
torch.backends.mkldnn.enabled = False

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402

PHASES = ("forward", "loss", "backward", "optimizer")
REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

DEFAULT_LORA_TARGETS = {
    "llama": "q_proj,v_proj", "mistral": "q_proj,v_proj", "qwen2": "q_proj,v_proj",
    "gpt2": "c_attn", "opt": "q_proj,v_proj",
    # PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    "bloom": "query_key_value", "gpt_neo": "q_proj,v_proj", "gpt_bigcode": "c_attn", "codegen": "qkv_proj",
    "gemma": "q_proj,v_proj", "gemma2": "q_proj,v_proj",
    "mixtral": "q_proj,v_proj",  # PEFT's; it has no qwen2_moe entry (target_modules must be given)
    "qwen2_moe": "q_proj,v_proj",
    "gpt_neox": "query_key_value", "falcon": "query_key_value", "stablelm": "q_proj,v_proj",
    "olmo": "q_proj,v_proj",  # PEFT has no olmo default: llama's
}


# ---- mallinfo sampler ---------------------------------------------------------------------------
class MallocSampler(TorchDispatchMode):
    """Samples mallinfo2 after every aten op; keeps the max per (step, phase)."""

    def __init__(self, baseline):
        super().__init__()
        self.baseline = baseline
        self.key = None
        self.peaks = {}
        self.n_ops = 0

    def sample(self):
        v = malloc_used() - self.baseline
        if self.key is not None and v > self.peaks.get(self.key, -1 << 62):
            self.peaks[self.key] = v

    def set_phase(self, key):
        self.sample()          # end of the previous phase
        self.key = key
        self.sample()          # start of the new one

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.detach.default and not isinstance(args[0], torch.Tensor):
            # torch 1.13 bug: with a Python dispatch mode, non-reentrant checkpointing unpacks a saved
            # wrapped-number (0-dim) tensor as a Python float; rebuild the 0-dim tensor (<=8 bytes).
            args = (torch.tensor(args[0]),) + tuple(args[1:])
        out = func(*args, **(kwargs or {}))
        self.n_ops += 1
        self.sample()
        return out


# ---- exact storage counter ----------------------------------------------------------------------
def live_storage_bytes():
    """Bytes of distinct storages of all tensors reachable through gc (start-of-recording baseline)."""
    seen = {}
    for o in gc.get_objects():
        try:
            if isinstance(o, torch.Tensor) and o.device.type == "cpu":
                s = o.storage()
                seen[s.data_ptr()] = s.nbytes()
        except Exception:
            pass
    seen.pop(0, None)
    return sum(seen.values())


class StorageCounter:
    """c10 CPU allocator alloc/free stream from the legacy profiler (profile_memory=True)."""

    def __init__(self):
        self.key = None

    def start(self):
        gc.collect()
        self.base = live_storage_bytes()
        cfg = torch.autograd.ProfilerConfig(torch.autograd.ProfilerState.CPU, False, True, False, False, False,
                                            torch._C._profiler._ExperimentalConfig())
        torch.autograd._enable_profiler_legacy(cfg)

    def set_phase(self, key):
        with torch.autograd.profiler.record_function("PHASE::%d::%s" % key):
            pass

    def stop(self):
        recs = torch.autograd._disable_profiler_legacy()
        events = [e for th in recs for e in th]
        if len({e.thread_id() for e in events if e.kind() == "memory_alloc"}) > 1:
            raise RuntimeError("allocations on several threads; ordering not defined")
        peaks, cur, key = {}, self.base, None
        for e in events:
            k = e.kind()
            if k == "memory_alloc":
                cur += e.cpu_memory_usage()
                if key is not None and cur > peaks.get(key, -1):
                    peaks[key] = cur
            elif k == "push" and e.name().startswith("PHASE::"):
                _, step, ph = e.name().split("::")
                key = (int(step), ph)
                peaks[key] = max(peaks.get(key, -1), cur)
        return peaks


# ---- run ----------------------------------------------------------------------------------------
def build(args, cfg_dict):
    torch.manual_seed(args.seed)
    model = models.build_model(cfg_dict)
    if args.precision == "bf16":
        model.to(torch.bfloat16)
    model.train()
    mt = cfg_dict["model_type"]
    hook = None
    if args.lora_rank:
        targets = (args.lora_targets or DEFAULT_LORA_TARGETS[mt]).split(",")
        ad = {"base": None, "fp32": torch.float32}[args.lora_dtype]
        models.apply_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout, targets, ad)
    if args.grad_ckpt:
        models.gradient_checkpointing_enable(model, use_reentrant=not args.non_reentrant)
        if args.lora_rank:
            hook = models.enable_input_require_grads(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if args.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=1e-4, foreach=False)
    elif args.optimizer == "adamw-foreach":
        opt = torch.optim.AdamW(params, lr=1e-4, foreach=True)
    elif args.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=1e-3, foreach=False)
    elif args.optimizer == "sgd-momentum":
        opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, foreach=False)
    else:
        raise ValueError(args.optimizer)
    vocab = cfg_dict["vocab_size"]
    g = torch.Generator().manual_seed(args.seed + 1)
    input_ids = torch.randint(0, vocab, (args.batch, args.seq), generator=g)
    attention_mask = torch.ones(args.batch, args.seq, dtype=torch.long)  # what a tokenizer hands over
    labels = input_ids.clone()
    return model, opt, (input_ids, attention_mask, labels), hook


def train_steps(model, opt, batch, args, marker, before_step=None):
    """HF Trainer-shaped steps: outputs dropped before backward (compute_loss returns only the loss)."""
    input_ids, attention_mask, labels = batch
    autocast = args.precision == "bf16-mixed"
    use_cache = {"config": None, "on": True, "off": False}[getattr(args, "use_cache", "config")]
    for step in range(1, args.steps + 1):
        if before_step is not None:
            before_step(step)
        marker((step, "forward"))
        if autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                             use_cache=use_cache)["loss"]
        else:
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                         use_cache=use_cache)["loss"]
        marker((step, "backward"))
        loss.backward()
        del loss
        marker((step, "optimizer"))
        opt.step()
        opt.zero_grad(set_to_none=True)
        marker((step, "end"))


def _summ(peaks, steps):
    out = {}
    last = steps
    for ph in PHASES:
        out["peak_%s_bytes" % ph] = peaks.get((last, ph), 0)
    out["peak_bytes"] = max(out["peak_%s_bytes" % ph] for ph in PHASES)
    out["first_step_peak_bytes"] = max(peaks.get((1, ph), 0) for ph in PHASES)
    return out


def measure(args):
    cfg_path = args.config
    with open(cfg_path) as f:
        cfg_dict = json.load(f)
    torch.set_num_threads(args.threads)

    # --- run 1: mallinfo ---
    gc.collect()
    baseline = malloc_used()
    sampler = MallocSampler(baseline)
    model, opt, batch, hook = build(args, cfg_dict)
    param_bytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    after_build = malloc_used() - baseline

    def mark_phase(key):
        sampler.set_phase(key)
        models.PHASE_HOOK = (lambda name: sampler.set_phase((key[0], name))) if key[1] == "forward" else None

    with sampler:
        train_steps(model, opt, batch, args, mark_phase)
    models.PHASE_HOOK = None
    malloc_res = _summ(sampler.peaks, args.steps)
    n_ops = sampler.n_ops
    if hook is not None:
        hook.remove()
    del model, opt, batch, hook, sampler
    gc.collect()

    # --- run 2: exact storage bytes ---
    storage_res = None
    if not args.no_storage:
        model, opt, batch, hook = build(args, cfg_dict)
        counter = StorageCounter()
        on = [False]

        def mark_phase2(key):
            if on[0]:
                counter.set_phase(key)
            models.PHASE_HOOK = ((lambda name: counter.set_phase((key[0], name)))
                                 if key[1] == "forward" and on[0] else None)

        def before_step(step):
            if step == args.steps:  # record the steady-state step only (faster; step 1 is in the mallinfo run)
                counter.start()
                on[0] = True

        # realised tokens per expert of the measured step's forward (MoE families; the recomputation of
        # a checkpointed layer routes the same tokens)
        expert_counts = {}

        def count_hook(layer, counts):
            if on[0]:
                expert_counts.setdefault(str(layer), counts)

        models.EXPERT_COUNT_HOOK = count_hook
        train_steps(model, opt, batch, args, mark_phase2, before_step)
        models.PHASE_HOOK = None
        models.EXPERT_COUNT_HOOK = None
        storage_base = counter.base
        storage_res = _summ(counter.stop(), args.steps)
        storage_res.pop("first_step_peak_bytes")
        del model, opt, batch, hook

    res = dict(malloc_res)
    if not args.no_storage and expert_counts:
        res["expert_counts"] = expert_counts
    res.update(
        storage_peak_bytes=storage_res["peak_bytes"] if storage_res else None,
        storage=storage_res,
        storage_start_bytes=storage_base if storage_res else None,
        param_bytes=param_bytes, buffer_bytes=buffer_bytes, trainable_params=trainable,
        malloc_after_build_bytes=after_build, n_ops_measured=n_ops,
        torch_version=torch.__version__, mmap_threshold=MMAP_THRESHOLD_BYTES,
    )
    return res


def command_line(args):
    rel = os.path.relpath(os.path.abspath(args.config), REPO)
    parts = ["/usr/bin/python3", "validation/harness/measure_cpu.py", "--config", rel,
             "--batch", str(args.batch), "--seq", str(args.seq), "--precision", args.precision,
             "--optimizer", args.optimizer, "--seed", str(args.seed), "--steps", str(args.steps)]
    if args.grad_ckpt:
        parts.append("--grad-ckpt")
        if args.non_reentrant:
            parts.append("--non-reentrant")
    if args.lora_rank:
        parts += ["--lora-rank", str(args.lora_rank), "--lora-alpha", str(args.lora_alpha),
                  "--lora-dropout", str(args.lora_dropout)]
        if args.lora_targets:
            parts += ["--lora-targets", args.lora_targets]
        if args.lora_dtype != "base":
            parts += ["--lora-dtype", args.lora_dtype]
    if args.use_cache != "config":
        parts += ["--use-cache", args.use_cache]
    if args.transformers_version:
        parts += ["--transformers-version", args.transformers_version]
    if args.threads != 1:
        parts += ["--threads", str(args.threads)]
    return " ".join(shlex.quote(p) for p in parts)


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="HF config.json")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--precision", choices=["fp32", "bf16-mixed", "bf16"], default="fp32")
    p.add_argument("--optimizer", choices=["adamw", "adamw-foreach", "sgd", "sgd-momentum"], default="adamw")
    p.add_argument("--grad-ckpt", action="store_true", help="HF gradient checkpointing per decoder layer")
    p.add_argument("--non-reentrant", action="store_true", help="checkpoint(use_reentrant=False)")
    p.add_argument("--lora-rank", type=int, default=0)
    p.add_argument("--lora-alpha", type=float, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--lora-targets", default=None, help="comma list of module names (default: PEFT's "
                                                       "per-family targets, e.g. q_proj,v_proj; gpt2 c_attn)")
    p.add_argument("--lora-dtype", choices=["base", "fp32"], default="base",
                   help="adapter dtype: same as base weights (default) or fp32 (PEFT autocast_adapter_dtype)")
    p.add_argument("--use-cache", choices=["config", "on", "off"], default="config",
                   help="KV cache during the training forward: config.use_cache (HF default behaviour), or forced")
    p.add_argument("--transformers-version", default=None,
                   help="X.Y: compute the loss as that release's forward did (inside the model, a shifted "
                        "contiguous copy, nn.CrossEntropyLoss) before each family moved to ForCausalLMLoss "
                        "(4.46 llama-style, 4.49 GPT-era); the rest of the forward stays v4.57's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=2, help="measured steady-state step is the last one")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-storage", action="store_true", help="skip the exact storage-count run")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if args.steps < 2:
        raise SystemExit("--steps must be >= 2 (step 1 is the warm-up)")
    if args.transformers_version:
        models.TRANSFORMERS_VERSION = tuple(int(x) for x in args.transformers_version.split(".")[:2])
    res = measure(args)
    res["command"] = command_line(args)
    res["date"] = datetime.date.today().isoformat()
    print(json.dumps(res))


if __name__ == "__main__":
    main()
