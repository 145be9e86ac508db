#!/usr/bin/python3
"""Distributed CPU rows: DDP and ZeRO-1 (torch.distributed.optim.ZeroRedundancyOptimizer), 2 pipeline stages
(--method pp, --schedule 1f1b|gpipe, --grad-accum m micro-batches) and Megatron-style tensor parallelism tp 2
(--method megatron; --sequence-parallel adds Megatron's sequence parallelism: the residual stream, norms and
residual adds on [s/tp, b, h], inputs of column-parallel linears all-gathered into a persistent global buffer,
row-parallel outputs and the embedding reduce-scattered; both in parallel_cpu.py), gloo backend, 2 local ranks (torch.multiprocessing). Each rank measures its own mallinfo2 peak per phase exactly as
measure_cpu.py does (baseline taken in the rank before the model is built).

    /usr/bin/python3 validation/harness/dist_cpu.py --config validation/configs/tiny-llama.json \
        --method ddp --precision fp32 --optimizer adamw

Prints one JSON object per rank. Only mallinfo is measured here (the storage run is single-process only:
gloo allocates on its own threads, so the single-thread alloc/free ordering does not hold).
"""
import argparse
import datetime
import json
import os
import socket
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import measure_cpu as mc  # noqa: E402  (sets mallopt before torch is imported)
import models  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as tmp  # noqa: E402


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def _worker(rank, world, argv, port, outdir):
    args = parser().parse_args(argv)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % port, rank=rank, world_size=world)
    if args.sequence_parallel and args.method != "megatron":
        raise ValueError("--sequence-parallel needs --method megatron")
    if args.method in ("pp", "megatron"):
        if args.lora_rank or (args.grad_ckpt and args.method == "pp"):
            raise ValueError("--method %s: no --lora-rank%s in this harness"
                             % (args.method, " / --grad-ckpt" if args.method == "pp" else ""))
        return _worker_parallel(rank, world, args, outdir)
    import gc
    gc.collect()
    baseline = mc.malloc_used()
    sampler = mc.MallocSampler(baseline)
    a = mc.parser().parse_args(["--config", args.config, "--batch", str(args.batch), "--seq", str(args.seq),
                                "--precision", args.precision, "--optimizer", "sgd", "--seed", str(args.seed)]
                               + (["--grad-ckpt"] if args.grad_ckpt else [])
                               + (["--lora-rank", str(args.lora_rank), "--lora-alpha", str(args.lora_alpha)]
                                  if args.lora_rank else []))
    with open(args.config) as f:
        cfg = json.load(f)
    model, _, batch, hook = mc.build(a, cfg)
    # gloo cannot broadcast bool tensors (gpt2's causal `bias` buffer): leave bool buffers out of DDP's sync
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, [n for n, b in model.named_buffers() if b.dtype == torch.bool])
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    params = [p for p in ddp.parameters() if p.requires_grad]
    if args.method == "ddp":
        opt = torch.optim.AdamW(params, lr=1e-4, foreach=False)
    else:
        from torch.distributed.optim import ZeroRedundancyOptimizer
        opt = ZeroRedundancyOptimizer(params, optimizer_class=torch.optim.AdamW, lr=1e-4, foreach=False)
    # different data per rank, as a DistributedSampler would give
    g = torch.Generator().manual_seed(args.seed + 1 + rank)
    ids = torch.randint(0, cfg["vocab_size"], (args.batch, args.seq), generator=g)
    batch = (ids, torch.ones_like(ids), ids.clone())

    def mark_phase(key):
        sampler.set_phase(key)
        models.PHASE_HOOK = (lambda name: sampler.set_phase((key[0], name))) if key[1] == "forward" else None

    a.steps = args.steps
    with sampler:
        mc.train_steps(ddp, opt, batch, a, mark_phase)
    res = mc._summ(sampler.peaks, args.steps)
    res.update(rank=rank, torch_version=torch.__version__,
               param_bytes=sum(p.numel() * p.element_size() for p in model.parameters()))
    with open(os.path.join(outdir, "rank%d.json" % rank), "w") as f:
        json.dump(res, f)
    dist.barrier()
    dist.destroy_process_group()


def _micro_batches(args, cfg, rank):
    """--grad-accum micro-batches of --batch sequences (the same on every rank of a pipeline or a
    tensor-parallel group: one data-parallel replica)."""
    out = []
    for k in range(args.grad_accum):
        g = torch.Generator().manual_seed(args.seed + 1 + k)
        ids = torch.randint(0, cfg["vocab_size"], (args.batch, args.seq), generator=g)
        out.append((ids, torch.ones_like(ids), ids.clone()))
    return out


def _worker_parallel(rank, world, args, outdir):
    """pp: rank = pipeline stage (world 2, dp 1). megatron: rank = tensor-parallel rank (tp 2, dp 1)."""
    import gc
    import parallel_cpu as par
    gc.collect()
    baseline = mc.malloc_used()
    sampler = mc.MallocSampler(baseline)
    with open(args.config) as f:
        cfg = json.load(f)
    torch.manual_seed(args.seed)
    full = models.build_model(cfg)   # same weights as the single-process run, then cut to this rank's part
    if args.precision == "bf16":
        full.to(torch.bfloat16)
    full.train()
    if args.method == "pp":
        model = par.Stage(full, world, rank)
    elif args.sequence_parallel:
        model = par.apply_megatron_sp(full, world, rank)
    else:
        model = par.apply_megatron(full, world, rank)
    if args.grad_ckpt:   # megatron: every decoder layer recomputed (reentrant), as HF / Megatron's full recompute
        models.gradient_checkpointing_enable(model, use_reentrant=True)
    del full
    gc.collect()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, foreach=False)
    micro = _micro_batches(args, cfg, rank)
    autocast = args.precision == "bf16-mixed"
    forward = par.megatron_sp_forward if args.sequence_parallel else par.megatron_forward
    hidden = cfg.get("hidden_size", cfg.get("n_embd"))
    hdtype = torch.bfloat16 if args.precision == "bf16" else torch.float32

    def mark_phase(key):
        sampler.set_phase(key)
        models.PHASE_HOOK = (lambda name: sampler.set_phase((key[0], name))) if key[1] == "forward" else None

    losses = []
    grads = None
    with sampler:
        for step in range(1, args.steps + 1):
            if args.method == "pp":
                loss = par.pipeline_step(model, micro, args.schedule, rank, world, (args.batch, args.seq, hidden),
                                         hdtype, autocast, mark_phase, step)
            else:
                loss = 0.0
                for ids, mask, labels in micro:
                    mark_phase((step, "forward"))
                    if autocast:
                        with torch.autocast("cpu", dtype=torch.bfloat16):
                            out = forward(model, ids, mask, labels)
                    else:
                        out = forward(model, ids, mask, labels)
                    out = out / len(micro)
                    loss += float(out.detach())
                    mark_phase((step, "backward"))
                    out.backward()
                    del out
                if args.sequence_parallel:
                    par.finalize_sp_grads(model)   # norm-weight gradients summed over the tp ranks
            if args.record_grads and step == 1:   # test only: perturbs the measured peaks
                grads = {n: float(p.grad.double().pow(2).sum()) for n, p in model.named_parameters()
                         if p.grad is not None}
            mark_phase((step, "optimizer"))
            opt.step()
            opt.zero_grad(set_to_none=True)
            mark_phase((step, "end"))
            losses.append(loss)
    models.PHASE_HOOK = None
    res = mc._summ(sampler.peaks, args.steps)
    if grads is not None:
        res["grad_sq"] = grads
    res.update(rank=rank, torch_version=torch.__version__, losses=losses,
               param_bytes=sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values()))
    with open(os.path.join(outdir, "rank%d.json" % rank), "w") as f:
        json.dump(res, f)
    dist.barrier()
    dist.destroy_process_group()


def command_line(args):
    parts = ["/usr/bin/python3", "validation/harness/dist_cpu.py", "--config", args.config, "--method", args.method,
             "--batch", str(args.batch), "--seq", str(args.seq), "--precision", args.precision,
             "--seed", str(args.seed), "--steps", str(args.steps)]
    if args.grad_ckpt:
        parts.append("--grad-ckpt")
    if args.lora_rank:
        parts += ["--lora-rank", str(args.lora_rank), "--lora-alpha", str(args.lora_alpha)]
    if args.method in ("pp", "megatron"):
        parts += ["--grad-accum", str(args.grad_accum)]
    if args.sequence_parallel:
        parts.append("--sequence-parallel")
    if args.method == "pp":
        parts += ["--schedule", args.schedule]
    return " ".join(parts)


def run(argv):
    args = parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        tmp.spawn(_worker, args=(2, argv, _free_port(), d), nprocs=2, join=True)
        out = []
        for r in range(2):
            with open(os.path.join(d, "rank%d.json" % r)) as f:
                out.append(json.load(f))
    for o in out:
        o["command"] = command_line(args)
        o["date"] = datetime.date.today().isoformat()
    return args, out


def parser():
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--method", choices=["ddp", "zero1", "pp", "megatron"], default="ddp",
                   help="pp: 2 pipeline stages (dp 1); megatron: tensor parallelism tp 2 (dp 1)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (pp, megatron)")
    p.add_argument("--schedule", choices=["1f1b", "gpipe"], default="1f1b")
    p.add_argument("--sequence-parallel", action="store_true",
                   help="megatron: Megatron-LM sequence parallelism (--seq divisible by tp 2)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--precision", choices=["fp32", "bf16-mixed", "bf16"], default="fp32")
    p.add_argument("--grad-ckpt", action="store_true")
    p.add_argument("--lora-rank", type=int, default=0)
    p.add_argument("--lora-alpha", type=float, default=16)
    p.add_argument("--record-grads", action="store_true",
                   help="tests: report each parameter's squared gradient sum after step 1 (not for measuring)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=2)
    return p


DIST_RUNS = [
    ["--config", "validation/configs/tiny-llama.json", "--method", "ddp", "--precision", "fp32"],
    ["--config", "validation/configs/tiny-llama.json", "--method", "zero1", "--precision", "fp32"],
    ["--config", "validation/configs/tiny-llama.json", "--method", "ddp", "--precision", "bf16-mixed"],
    ["--config", "validation/configs/tiny-llama.json", "--method", "zero1", "--precision", "bf16-mixed"],
    ["--config", "validation/configs/tiny-gpt2.json", "--method", "ddp", "--precision", "fp32"],
    ["--config", "validation/configs/tiny-gpt2.json", "--method", "zero1", "--precision", "fp32"],
    # 2 pipeline stages (dp 1), 4 micro-batches; Megatron tensor parallelism tp 2 (dp 1)
    ["--config", "validation/configs/tiny-llama.json", "--method", "pp", "--precision", "fp32",
     "--grad-accum", "4", "--schedule", "1f1b"],
    ["--config", "validation/configs/tiny-llama.json", "--method", "pp", "--precision", "bf16-mixed",
     "--grad-accum", "4", "--schedule", "1f1b"],
    ["--config", "validation/configs/tiny-llama.json", "--method", "pp", "--precision", "fp32",
     "--grad-accum", "4", "--schedule", "gpipe"],
    ["--config", "validation/configs/tiny-gpt2.json", "--method", "pp", "--precision", "fp32",
     "--grad-accum", "4", "--schedule", "1f1b"],
    ["--config", "validation/configs/tiny-llama.json", "--method", "megatron", "--precision", "fp32"],
    ["--config", "validation/configs/tiny-llama.json", "--method", "megatron", "--precision", "bf16-mixed"],
    # Megatron tp 2 with sequence parallelism (and the non-SP twin at the longer sequence)
    ["--config", "validation/configs/tiny-llama.json", "--method", "megatron", "--precision", "fp32",
     "--sequence-parallel"],
    ["--config", "validation/configs/tiny-llama.json", "--method", "megatron", "--precision", "bf16-mixed",
     "--sequence-parallel"],
    ["--config", "validation/configs/tiny-llama.json", "--method", "megatron", "--precision", "fp32",
     "--seq", "64"],
    ["--config", "validation/configs/tiny-llama.json", "--method", "megatron", "--precision", "fp32",
     "--seq", "64", "--sequence-parallel"],
    ["--config", "validation/configs/tiny-llama.json", "--method", "megatron", "--precision", "bf16-mixed",
     "--seq", "64"],
    ["--config", "validation/configs/tiny-llama.json", "--method", "megatron", "--precision", "bf16-mixed",
     "--seq", "64", "--sequence-parallel"],
    # ... under full recompute (every decoder layer checkpointed, reentrant)
    ["--config", "validation/configs/tiny-llama.json", "--method", "megatron", "--precision", "fp32", "--grad-ckpt"],
    ["--config", "validation/configs/tiny-llama.json", "--method", "megatron", "--precision", "fp32", "--grad-ckpt",
     "--sequence-parallel"],
    ["--config", "validation/configs/tiny-llama.json", "--method", "megatron", "--precision", "bf16-mixed",
     "--grad-ckpt"],
    ["--config", "validation/configs/tiny-llama.json", "--method", "megatron", "--precision", "bf16-mixed",
     "--grad-ckpt", "--sequence-parallel"],
]


def stage_layers_of(cfg, stage):
    import parallel_cpu
    n = cfg.get("num_hidden_layers", cfg.get("n_layer"))
    return parallel_cpu.stage_layers(n, 2, stage)


def matrix_rows(runs=None):
    """CSV rows for `runs` (argv lists; default DIST_RUNS)."""
    rows = []
    cwd = os.getcwd()
    os.chdir(mc.REPO)
    try:
        for argv in (DIST_RUNS if runs is None else runs):
            args, outs = run(argv)
            with open(args.config) as f:
                cfg = json.load(f)
            torch.manual_seed(0)
            m = models.build_model(cfg)
            nparams = sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())
            del m
            pp = args.method == "pp"
            for o in outs:
                if pp:
                    lo, hi = stage_layers_of(cfg, o["rank"])
                    how = ("pipeline stage %d of 2 (layers %d-%d), %s over %d micro-batches, dp 1; p2p "
                           "send/recv, fresh receive buffers, no KV cache%s"
                           % (o["rank"], lo, hi - 1, args.schedule.upper(), args.grad_accum,
                              "; tied head copied to the last stage, grads all-reduced"
                              if cfg.get("tie_word_embeddings", cfg["model_type"] == "gpt2") else ""))
                elif args.method == "megatron":
                    how = ("tp rank %d of 2 (Megatron layout: column/row-parallel q,k,v,o/gate,up,down, "
                           "vocab-parallel embedding, head and cross-entropy), dp 1, no KV cache; gloo "
                           "reduces bf16 through an fp32 copy" % o["rank"])
                    if args.grad_ckpt:
                        how += "; every decoder layer recomputed (reentrant checkpoint of its input)"
                    if args.sequence_parallel:
                        how += ("; sequence parallel (Megatron-LM d98e8a6, in HF's [b s h] layout: residual "
                                "stream, norms and residual adds on s/tp tokens; norm-weight grads all-reduced; "
                                "column-parallel inputs all-gathered into a persistent "
                                "global buffer, sharded input saved and re-gathered in backward; row-parallel "
                                "outputs and embedding reduce-scattered; gloo emulates all-gather and "
                                "reduce-scatter with an in-place all-reduce of the full-length tensor, no "
                                "transient beyond the fp32 copy of bf16)")
                else:
                    how = "DDP default buckets (gradient_as_bucket_view=False)"
                rows.append({
                    "source_url": "", "model": args.config, "params_b": "%.6f" % (nparams / 1e9), "gpus": 2,
                    "gpu_type": "cpu", "method": "ddp" if pp else args.method, "world_size": 2,
                    "tp": 2 if args.method == "megatron" else 1,
                    "precision": args.precision, "optimizer": "adamw", "micro_batch": args.batch,
                    "seq_len": args.seq, "grad_ckpt": "on" if args.grad_ckpt else "off",
                    "finetune": "lora" if args.lora_rank else "full", "lora_rank": args.lora_rank or "",
                    "attention_impl": "eager", "measured_what": "cpu_peak_live_bytes",
                    "peak_gib": "%.6f" % (o["peak_bytes"] / 2 ** 30),
                    "notes": "rank=%d of 2; gloo; mallinfo2 only (no storage count); %s" % (o["rank"], how),
                    "peak_bytes": o["peak_bytes"], "peak_forward_bytes": o["peak_forward_bytes"],
                    "peak_loss_bytes": o["peak_loss_bytes"], "peak_backward_bytes": o["peak_backward_bytes"],
                    "peak_optimizer_bytes": o["peak_optimizer_bytes"],
                    "first_step_peak_bytes": o["first_step_peak_bytes"], "storage_peak_bytes": "",
                    "lora_alpha": "", "lora_dropout": "", "lora_targets": "",
                    "torch_version": o["torch_version"], "command": o["command"], "date": o["date"],
                    "pp": 2 if pp else 1, "schedule": args.schedule if pp else "",
                    "grad_accum": args.grad_accum,
                    "sequence_parallel": 1 if args.sequence_parallel else "",
                })
    finally:
        os.chdir(cwd)
    return rows


if __name__ == "__main__":
    args, outs = run(sys.argv[1:])
    for o in outs:
        print(json.dumps(o))
