#!/usr/bin/python3
"""Quick self-test of the CPU measurement harness (plain script; exit status 1 on failure).

    /usr/bin/python3 validation/harness/test_harness.py

1. pure-parameter case, in process: build tiny-llama under the exact storage counter; live storage bytes
   after the build must equal parameter + buffer bytes exactly; mallinfo2 must be within the glibc
   chunk/metadata allowance of it.
2. one tiny configuration per family (subprocess, batch 1, seq 8, fp32 + a few bf16-mixed LoRA / grad-ckpt
   runs): phase peaks positive and ordered sensibly, mallinfo2 and exact storage counts agree.
3. in process, bloom / gpt_neo / gpt_bigcode / codegen (and gemma / gemma2: head_dim, fp32 norms, normalizer,
   KV cache, soft-capping, sliding mask): the v4.57 details that decide memory (ALiBi shape,
   fp32 attention of gpt_neo and codegen, logits dtypes, MQA c_attn width, gpt_bigcode's no-op gradient
   checkpointing, codegen's non-buffer embed_positions), and a loss near ln(vocab) at random init; mixtral /
   qwen2_moe: router logits and aux loss, top-k renormalisation or not, dense layers, shared expert, both masks,
   and expert_counts summing to tokens x top_k. `--only tiny-mixtral,tiny-qwen2-moe` runs just those family cases.
4. two gloo ranks (dist_cpu.py): 2-stage pipeline (llama 1F1B, gpt2 GPipe with its tied head copied to the last
   stage) and Megatron tp=2 (llama), without and with sequence parallelism: step-1 and step-2 losses equal the
   dense single-process losses on the same micro-batches; with sequence parallelism (also under gradient
   checkpointing) every step-1 gradient equals the non-SP layout's (checks the norm-weight all-reduce).
   Only these: `test_harness.py --parallel`.
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
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

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


def family_cases(only=None):
    cases = [(f, ("--precision", "fp32")) for f in ("tiny-llama", "tiny-mistral", "tiny-qwen2", "tiny-gpt2",
                                                      "tiny-opt", "tiny-bloom", "tiny-gpt-neo", "tiny-gpt-bigcode",
                                                      "tiny-codegen", "tiny-gemma", "tiny-gemma2",
                                                      "tiny-qwen3", "tiny-phi3", "tiny-phi", "tiny-mixtral",
                                                      "tiny-qwen2-moe")]
    cases += [("tiny-bloom", ("--precision", "bf16-mixed", "--lora-rank", "4")),
              ("tiny-codegen", ("--precision", "bf16", "--grad-ckpt", "--lora-rank", "4")),
              ("tiny-llama", ("--precision", "bf16-mixed", "--lora-rank", "4")),
              ("tiny-gpt2", ("--precision", "bf16", "--grad-ckpt")),
              ("tiny-opt", ("--precision", "fp32", "--grad-ckpt", "--non-reentrant", "--optimizer", "sgd")),
              ("tiny-gemma2", ("--precision", "bf16-mixed", "--grad-ckpt", "--lora-rank", "4")),
              ("tiny-phi3", ("--precision", "bf16-mixed", "--grad-ckpt", "--lora-rank", "4",
                             "--lora-targets", "qkv_proj,gate_up_proj")),
              ("tiny-mixtral", ("--precision", "bf16-mixed", "--grad-ckpt", "--lora-rank", "4"))]
    cases += NEOX_CASES
    for cfg, extra in cases:
        if only is not None and cfg not in only:
            continue
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
        if cfg in ("tiny-mixtral", "tiny-qwen2-moe"):  # realised tokens per expert: every token routed top_k times
            counts = r.get("expert_counts", {})
            k = 2 if cfg == "tiny-mixtral" else 4
            check(len(counts) == 2 and all(sum(c) == 8 * k for c in counts.values()),
                  name + ": expert_counts of both sparse layers sum to tokens x top_k (%s)" % counts)
        if "--optimizer" not in extra:  # AdamW: two fp32/param-dtype states per trainable parameter
            check(r["peak_optimizer_bytes"] >= pb, name + ": optimizer peak includes states")


def _load(name):
    with open(os.path.join(mc.REPO, "validation/configs/%s.json" % name)) as f:
        return json.load(f)


def _fwd(model, seq=8, batch=1):
    torch.manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    return model(input_ids=ids, attention_mask=torch.ones(batch, seq, dtype=torch.long), labels=ids)


def _random_init_checks(name):
    """Builds config `name` at random init (seed 0): the fp32 loss is near ln(vocab) and backward reaches
    every parameter. Returns the model."""
    import math
    cfg = _load(name)
    torch.manual_seed(0)
    m = models.build_model(cfg).train()
    out = _fwd(m)
    lv = math.log(cfg["vocab_size"])
    check(abs(out["loss"].item() - lv) < 0.5,
          "%s: fp32 loss at random init %.3f ~ ln(vocab) %.3f" % (name, out["loss"].item(), lv))
    out["loss"].backward()
    check(all(p.grad is not None for p in m.parameters()), name + ": every parameter gets a gradient")
    return m


class _OpDtypes(TorchDispatchMode):
    """records (op name, output dtype) of every aten op"""
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            self.seen.append((str(func), out.dtype, tuple(out.shape)))
        return out


def new_family_details():
    import math
    torch.set_num_threads(1)
    for name in ("tiny-bloom", "tiny-gpt-neo", "tiny-gpt-bigcode", "tiny-codegen"):
        m = _random_init_checks(name)

    # bloom: ALiBi (B*heads, 1, S) in the dtype of the embedding-layernorm output; fused qkv; tied head
    m = models.build_model(_load("tiny-bloom")).train()
    ali = models.bloom_build_alibi_tensor(torch.ones(2, 8, dtype=torch.long), 4, torch.float32)
    check(tuple(ali.shape) == (8, 1, 8) and ali.dtype == torch.float32, "bloom: alibi shape %s" % (tuple(ali.shape),))
    qkv = m.transformer.h[0].self_attention.query_key_value
    check(qkv.out_features == 3 * 128 and qkv.bias is not None, "bloom: fused query_key_value 128 -> 384 with bias")
    check(m.lm_head.weight is m.transformer.word_embeddings.weight, "bloom: lm_head tied to word_embeddings")
    wrapped = models.apply_lora(m, 4, 8, 0.0, ["query_key_value"])
    check(len(wrapped) == 2, "bloom: LoRA wraps query_key_value in both layers")

    # gpt_neo: global/local layers, QK^T and softmax in fp32 on a bf16 model, logits cast back to bf16
    m = models.build_model(_load("tiny-gpt-neo")).train()
    check(m.config.attention_layers == ["global", "local"], "gpt_neo: attention_layers %s" % m.config.attention_layers)
    b0, b1 = m.transformer.h[0].attn.attention.bias, m.transformer.h[1].attn.attention.bias
    check(b0.dtype == torch.bool and tuple(b0.shape) == (1, 1, 2048, 2048) and not torch.equal(b0, b1),
          "gpt_neo: per-layer bool bias buffer (1,1,2048,2048), local one windowed")
    m.to(torch.bfloat16)
    rec = _OpDtypes()
    with rec:
        out = _fwd(m)
    bmm = [(d, sh) for op, d, sh in rec.seen if op.startswith("aten.bmm")]
    check((torch.float32, (4, 8, 8)) in bmm, "gpt_neo bf16: QK^T bmm runs in fp32 %s" % bmm[:2])
    check(out["logits"].dtype == torch.bfloat16 and out["loss"].dtype == torch.bfloat16,
          "gpt_neo bf16: logits and loss cast back to the hidden dtype")

    # gpt_bigcode: MQA c_attn width; gradient checkpointing is a no-op in v4.57 (cache still built)
    m = models.build_model(_load("tiny-gpt-bigcode")).train()
    check(m.transformer.h[0].attn.c_attn.out_features == 128 + 2 * 32, "gpt_bigcode: MQA c_attn 128 -> 192")
    models.gradient_checkpointing_enable(m)
    check(not any(isinstance(x, models.GradientCheckpointingLayer) for x in m.modules()),
          "gpt_bigcode: no GradientCheckpointingLayer (v4.57)")
    out = _fwd(m)
    kv = out["past_key_values"]
    check(kv is not None and tuple(kv.layers[0].keys.shape) == (1, 1, 8, 32),
          "gpt_bigcode: with checkpointing enabled the KV cache is still built, keys (B,1,S,hd)")

    # codegen: fp32 logits, embed_positions is a plain fp32 tensor (not a buffer), partial rotary
    m = models.build_model(_load("tiny-codegen")).train()
    att = m.transformer.h[0].attn
    check(att.rotary_dim == 16 and tuple(att.embed_positions.shape) == (2048, 16), "codegen: rotary_dim 16 tables")
    check(not any(b is att.embed_positions for b in m.buffers()), "codegen: embed_positions is not a buffer")
    check(m.lm_head.bias is not None and m.lm_head.weight is not m.transformer.wte.weight,
          "codegen: untied lm_head with bias")
    m.to(torch.bfloat16)
    check(att.embed_positions.dtype == torch.float32, "codegen: embed_positions stays fp32 under model.to(bf16)")
    rec = _OpDtypes()
    with rec:
        out = _fwd(m)
    bmm = [(d, sh) for op, d, sh in rec.seen if op.startswith("aten.bmm")]
    check((torch.float32, (4, 8, 8)) in bmm, "codegen bf16: QK^T bmm runs in fp32")
    check(out["logits"].dtype == torch.float32 and out["loss"].dtype == torch.bfloat16,
          "codegen bf16: logits fp32, loss cast to bf16")


def in_model_loss_details():
    """--transformers-version: the in-model loss of older releases gives the same value as ForCausalLMLoss
    and makes the copies it should (the shifted logits; fp32 logits first for llama-style families)."""
    for name, version, upcast in (("tiny-llama", (4, 45), True), ("tiny-gpt2", (4, 48), False)):
        torch.manual_seed(0)
        m = models.build_model(_load(name)).to(torch.bfloat16)
        models.TRANSFORMERS_VERSION = None
        new = _fwd(m, batch=2)
        models.TRANSFORMERS_VERSION = version
        try:
            with _OpDtypes() as rec:
                old = _fwd(m, batch=2)
        finally:
            models.TRANSFORMERS_VERSION = None
        # the same mean over the same tokens (gpt2 in bf16 sums in bf16 in the older form)
        check(abs(float(new["loss"]) - float(old["loss"])) < 0.05 * float(new["loss"]),
              "%s %s: in-model loss %.4f equals ForCausalLMLoss %.4f" % (name, version, float(old["loss"]),
                                                                         float(new["loss"])))
        v = m.config.vocab_size
        # two sequences: logits[..., :-1, :] is strided and .contiguous() copies (one is a view)
        clones = [(d, sh) for op, d, sh in rec.seen if op.startswith("aten.clone") and sh == (2, 7, v)]
        want = torch.float32 if upcast else torch.bfloat16
        check(clones == [(want, (2, 7, v))], "%s %s: one shifted contiguous copy in %s: %s" % (name, version, want,
                                                                                               clones))
        check(old["logits"].dtype == want, "%s %s: the output keeps %s logits" % (name, version, want))
def phiqwen3_details():
    """qwen3, phi3, phi: the v4.57 details that decide memory (shapes of the fused / per-head modules, the rotary
    width, where the norms and the dropouts run, biases), and a loss near ln(vocab) at random init."""
    import math
    torch.set_num_threads(1)
    for name in ("tiny-qwen3", "tiny-phi3", "tiny-phi"):
        m = _random_init_checks(name)

    # qwen3: head_dim 64 from the config (hidden 128 / 4 heads would be 32); q_norm / k_norm over head_dim on the
    # (B, S, heads, head_dim) view, before the transpose; no q/k/v/o bias; tied head; rotary over head_dim
    m = models.build_model(_load("tiny-qwen3")).train()
    at = m.model.layers[0].self_attn
    check(at.q_proj.out_features == 256 and at.k_proj.out_features == 128 and at.o_proj.in_features == 256,
          "qwen3: q_proj 128 -> 4x64, k_proj 128 -> 2x64, o_proj 256 -> 128")
    check(all(getattr(at, n).bias is None for n in ("q_proj", "k_proj", "v_proj", "o_proj")), "qwen3: no bias")
    check(tuple(at.q_norm.weight.shape) == (64,) and tuple(at.k_norm.weight.shape) == (64,),
          "qwen3: q_norm / k_norm weights (head_dim,)")
    check(m.lm_head.weight is m.model.embed_tokens.weight, "qwen3: lm_head tied to embed_tokens")
    check(m.model.rotary_emb.inv_freq.numel() == 32, "qwen3: rotary over head_dim 64 (32 frequencies)")
    rec = _OpDtypes()
    with rec:
        _fwd(m)
    pows = [sh for op, d, sh in rec.seen if op.startswith("aten.pow")]
    check(pows[:3] == [(1, 8, 128), (1, 8, 4, 64), (1, 8, 2, 64)],
          "qwen3: norms in order input_layernorm, q_norm (B,S,heads,hd), k_norm (B,S,kv,hd): %s" % pows[:3])

    # phi3: fused qkv_proj (4x32 + 2x2x32) and gate_up_proj (2x384), partial rotary 0.75 of head_dim 32 (24
    # channels, 12 frequencies), rotary cat with the pass-through part, two residual dropouts per layer
    m = models.build_model(_load("tiny-phi3")).train()
    at, mlp = m.model.layers[0].self_attn, m.model.layers[0].mlp
    check(at.qkv_proj.out_features == 256 and at.qkv_proj.bias is None, "phi3: qkv_proj 128 -> 256, no bias")
    check(mlp.gate_up_proj.out_features == 768, "phi3: gate_up_proj 128 -> 2x384")
    check(m.model.rotary_emb.inv_freq.numel() == 12, "phi3: partial rotary 0.75 x 32 = 24 channels")
    check(m.model.embed_tokens.padding_idx == 32000, "phi3: embed_tokens padding_idx = pad_token_id 32000")
    rec = _OpDtypes()
    with rec:
        _fwd(m)
    ops = [op for op, d, sh in rec.seen]
    check(sum(op.startswith("aten.bernoulli") for op in ops) == 4, "phi3: 2 resid dropouts per layer (p=0.1)")
    cats = [sh for op, d, sh in rec.seen if op.startswith("aten.cat") and len(sh) == 4 and sh[-1] == 32]
    check(len(cats) >= 4, "phi3: q and k rotary cat((rotated, pass)) to head_dim 32 in each layer: %s" % cats[:2])

    # phi: separate q/k/v with bias, dense with bias, lm_head with bias, partial rotary 0.4 x 32 = 12 channels,
    # parallel attention + MLP on one input_layernorm output, final_layernorm
    m = models.build_model(_load("tiny-phi")).train()
    at = m.model.layers[0].self_attn
    check(all(getattr(at, n).bias is not None for n in ("q_proj", "k_proj", "v_proj", "dense")),
          "phi: q/k/v/dense with bias")
    check(m.lm_head.bias is not None and m.lm_head.weight is not m.model.embed_tokens.weight,
          "phi: untied lm_head with bias")
    check(at.rotary_ndims == 12 and m.model.rotary_emb.inv_freq.numel() == 6, "phi: rotary_ndims 12")
    seen = []
    h1 = m.model.layers[0].self_attn.q_proj.register_forward_hook(lambda mod, i, o: seen.append(i[0]))
    h2 = m.model.layers[0].mlp.fc1.register_forward_hook(lambda mod, i, o: seen.append(i[0]))
    _fwd(m)
    h1.remove()
    h2.remove()
    check(len(seen) == 2 and seen[0] is seen[1], "phi: attention and MLP read the same input_layernorm output")



def moe_details():
    """mixtral / qwen2_moe: the v4.57 details that decide memory."""
    torch.set_num_threads(1)
    # mixtral: router logits recorded (output_router_logits) and the aux loss added; 4 experts, top-2, renormalised
    cfg = _load("tiny-mixtral")
    torch.manual_seed(0)
    m = models.build_model(cfg).train()
    out = _fwd(m)
    check(len(out["router_logits"]) == 2 and tuple(out["router_logits"][0].shape) == (8, 4),
          "mixtral: router_logits of both layers kept, (tokens, experts)")
    check(out["aux_loss"] is not None and out["aux_loss"].requires_grad,
          "mixtral: aux loss computed, with a gradient path to the routers")
    blk = m.model.layers[0].block_sparse_moe
    x = torch.randn(8, 128)
    idx, w = blk.route_tokens_to_experts(blk.gate(x))
    check(tuple(idx.shape) == (8, 2) and torch.allclose(w.sum(-1), torch.ones(8)), "mixtral: top-2 weights renormalised")
    # qwen2_moe: layer 2 dense (mlp_only_layers), shared expert with sigmoid gate, no renormalisation
    cfg = _load("tiny-qwen2-moe")
    torch.manual_seed(0)
    m = models.build_model(cfg).train()
    kinds = [type(layer.mlp).__name__ for layer in m.model.layers]
    check(kinds == ["Qwen2MoeSparseMoeBlock", "Qwen2MoeSparseMoeBlock", "MoeExpertMLP"],
          "qwen2_moe: mlp_only_layers [2] makes layer 2 dense (%s)" % kinds)
    blk = m.model.layers[0].mlp
    check(blk.shared_expert.gate_proj.out_features == 256 and blk.shared_expert_gate.out_features == 1
          and len(blk.experts) == 8 and blk.experts[0].gate_proj.out_features == 64,
          "qwen2_moe: 8 experts of 64, shared expert 256 with a 1-wide gate")
    x = torch.randn(8, 128)
    sel, w = blk.route_tokens_to_experts(x, blk.gate(x))
    check(tuple(sel.shape) == (8, 4) and bool((w.sum(-1) < 1).all()), "qwen2_moe: top-4 weights not renormalised")
    check(m.config.sliding_window == 0 and m.config.layer_types == ["full_attention"] * 3,
          "qwen2_moe: sliding_window 0 without use_sliding_window, all layers full attention")
    rec = _OpDtypes()
    with rec:
        out = _fwd(m)
    masks = [sh for op, d, sh in rec.seen if op.startswith("aten.where") and d == torch.float32 and sh == (1, 1, 8, 8)]
    check(len(masks) == 2, "qwen2_moe: both the full and the sliding 4-D masks are built (%d)" % len(masks))
    check(out["router_logits"] is None and out["aux_loss"] is None, "qwen2_moe: output_router_logits off")



def gemma_details():
    """gemma / gemma2 (v4.57 modeling_gemma.py, modeling_gemma2.py): the details that decide memory."""
    import math
    torch.set_num_threads(1)
    for name in ("tiny-gemma", "tiny-gemma2"):
        m = _random_init_checks(name)
        check(m.lm_head.weight is m.model.embed_tokens.weight, name + ": lm_head tied (GemmaConfig default)")
        att = m.model.layers[0].self_attn
        check(att.q_proj.out_features == 4 * 64 and att.o_proj.in_features == 256 and att.head_dim == 64,
              name + ": head_dim 64 from the config, q_proj 128 -> 256 (heads * head_dim != hidden)")
        # bf16 model: the normalizer is a bf16 0-dim tensor; the norms multiply by (1 + w) in fp32 and cast after
        m.to(torch.bfloat16)
        rec = _OpDtypes()
        with rec:
            _fwd(m)
        muls = [(d, sh) for op, d, sh in rec.seen if op.startswith("aten.mul")]
        hid = [d for d, sh in muls if sh == (1, 8, 128)]
        check(hid[0] == torch.bfloat16, "%s bf16: first [1, 8, 128] product (hidden * normalizer) in bf16" % name)
        check(sum(1 for d, sh in muls if d == torch.float32 and sh == (1, 8, 128)) >= 2 * (2 * m.config.num_hidden_layers
              * (2 if name == "tiny-gemma2" else 1) + 1), name + " bf16: every RMSNorm does both products in fp32")
    # gemma: KV cache in training (DynamicCache, MQA keys), none under gradient checkpointing
    m = models.build_model(_load("tiny-gemma")).train()
    kv = _fwd(m)["past_key_values"]
    check(kv is not None and tuple(kv.layers[0].keys.shape) == (1, 1, 8, 64), "gemma: training KV cache (1,1,8,64)")
    models.gradient_checkpointing_enable(m)
    check(_fwd(m)["past_key_values"] is None, "gemma: no KV cache under gradient checkpointing")
    # gemma2: layer types, no KV cache in training, soft-capping of scores and logits, sliding mask cuts
    cfg = _load("tiny-gemma2")
    m = models.build_model(cfg).train()
    check(m.config.layer_types == ["sliding_attention", "full_attention"], "gemma2: layer_types sliding, full")
    check(len([x for x in m.model.layers[0].modules() if isinstance(x, models.GemmaRMSNorm)]) == 4,
          "gemma2: four RMSNorms per layer")
    check(abs(m.model.layers[0].self_attn.scaling - 32 ** -0.5) < 1e-12, "gemma2: scaling query_pre_attn_scalar^-0.5")
    rec = _OpDtypes()
    with rec:
        out = _fwd(m, seq=32)
    check(out["past_key_values"] is None, "gemma2: no KV cache in training (Gemma2Model: `not self.training`)")
    tanh = [sh for op, d, sh in rec.seen if op.startswith("aten.tanh.")]
    check(tanh.count((1, 4, 32, 32)) == 2 and tanh.count((1, 32, 32000)) == 1,
          "gemma2: tanh on the scores of both layers and on the logits %s" % tanh)
    check(float(out["logits"].abs().max()) <= cfg["final_logit_softcapping"], "gemma2: |logits| <= final cap")
    cp = torch.arange(32)
    mk = models._eager_causal_mask(torch.zeros(1, 32, 8), torch.ones(1, 32, dtype=torch.long), cp, 16)
    neg = torch.finfo(torch.float32).min
    check(tuple(mk.shape) == (1, 1, 32, 32) and mk[0, 0, 20, 4] == neg and mk[0, 0, 20, 5] == 0,
          "gemma2: sliding mask (window 16) keeps kv > q - 16 only, same [b, 1, s, s] shape")


def parallel_cases():
    """Pipeline (2 stages, 1F1B and GPipe) and Megatron tp=2 over gloo: the step-1 loss (same weights, same
    micro-batches) equals the single-process dense model's mean micro-batch loss; the schedules' op lists."""
    import dist_cpu
    import parallel_cpu as par
    torch.set_num_threads(1)
    check(par.schedule_ops("1f1b", 2, 0, 4) == [("F", 0), ("F", 1), ("B", 0), ("F", 2), ("B", 1), ("F", 3),
                                                 ("B", 2), ("B", 3)], "1F1B stage 0 of 2, m=4: F0 F1 B0 F2 B1 F3 B2 B3")
    check(par.schedule_ops("1f1b", 2, 1, 4) == [x for k in range(4) for x in (("F", k), ("B", k))],
          "1F1B last stage: F B alternating")
    check(par.stage_layers(5, 2, 0) == (0, 3) and par.stage_layers(5, 2, 1) == (3, 5), "stage layers 5/2 -> 3+2")
    cwd = os.getcwd()
    os.chdir(mc.REPO)
    try:
        for fam, method, extra in (("llama", "pp", ["--schedule", "1f1b"]), ("gpt2", "pp", ["--schedule", "gpipe"]),
                                   ("llama", "megatron", []), ("llama", "megatron", ["--sequence-parallel"]),
                                   ("llama", "megatron", ["--sequence-parallel", "--grad-ckpt"])):
            c = "validation/configs/tiny-%s.json" % fam
            m = 3 if method == "pp" else 2
            argv = ["--config", c, "--method", method, "--batch", "1", "--seq", "8", "--grad-accum", str(m),
                    "--steps", "2"] + extra
            args, outs = dist_cpu.run(argv)
            with open(c) as f:
                cfg = json.load(f)
            torch.manual_seed(0)
            dense = models.build_model(cfg).train()
            opt = torch.optim.AdamW(dense.parameters(), lr=1e-4, foreach=False)
            ref = []
            for step in range(2):  # dense steps with gradient accumulation: checks the gradients too
                tot = 0.0
                for ids, mask, labels in dist_cpu._micro_batches(args, cfg, 0):
                    loss = dense(input_ids=ids, attention_mask=mask, labels=labels)["loss"] / m
                    loss.backward()
                    tot += float(loss)
                opt.step()
                opt.zero_grad()
                ref.append(tot)
            for step in range(2):
                got = outs[1]["losses"][step]
                check(abs(got - ref[step]) < 2e-5 * abs(ref[step]), "%s %s %s: step-%d loss %.7f == dense %.7f"
                      % (fam, method, " ".join(extra), step + 1, got, ref[step]))
            if method == "megatron":
                check(outs[0]["losses"] == outs[1]["losses"], "megatron: both tp ranks see the same loss")
            if "--sequence-parallel" in extra:
                # step-1 gradients of every parameter on each rank equal the non-SP layout's (the step-2 loss
                # barely moves when the norm-weight gradients are left partial, so check them directly)
                _, g_sp = dist_cpu.run(argv + ["--record-grads"])
                _, g_tp = dist_cpu.run([x for x in argv if x != "--sequence-parallel"] + ["--record-grads"])
                for r in range(2):
                    a, b = g_sp[r]["grad_sq"], g_tp[r]["grad_sq"]
                    bad = [n for n in a if abs(a[n] - b[n]) > 1e-4 * abs(b[n]) + 1e-12]
                    check(a.keys() == b.keys() and not bad, "megatron rank %d: step-1 gradients with and without "
                          "sequence parallelism agree (differ: %s)" % (r, bad[:4]))
            check(all(o["peak_bytes"] > 0 for o in outs), "%s %s: both ranks measured" % (fam, method))
    finally:
        os.chdir(cwd)


# ============================================================================================
# gpt_neox / falcon / stablelm / olmo (helper "neox"): the v4.57 details that decide memory
NEOX_CASES = [("tiny-gpt-neox", ("--precision", "fp32")), ("tiny-falcon", ("--precision", "fp32")),
              ("tiny-falcon-newarch", ("--precision", "bf16-mixed", "--lora-rank", "4")),
              ("tiny-stablelm", ("--precision", "fp32")), ("tiny-stablelm-12b", ("--precision", "bf16", "--lora-rank", "4")),
              ("tiny-olmo", ("--precision", "bf16", "--grad-ckpt"))]


def neox_family_details():
    import math
    torch.set_num_threads(1)
    for name in ("tiny-gpt-neox", "tiny-falcon", "tiny-falcon-newarch", "tiny-stablelm", "tiny-olmo"):
        m = _random_init_checks(name)

    # gpt_neox: per-head interleaved fused qkv ([b, s, heads, 3*hd]: q, k, v are views of it), rotary on 8 of 32
    # dims, untied embed_out, KV cache built in training (keys fp32 under bf16 autocast: rope promotes them)
    m = models.build_model(_load("tiny-gpt-neox")).train()
    att = m.gpt_neox.layers[0].attention
    check(att.query_key_value.out_features == 384 and att.query_key_value.bias is not None,
          "gpt_neox: fused query_key_value 128 -> 384 with bias")
    check(att.rotary_ndims == 8 and m.gpt_neox.rotary_emb.inv_freq.numel() == 4,
          "gpt_neox: rotary_pct 0.25 -> 8 rotary dims, inv_freq of 4")
    x = torch.randn(1, 8, 128)
    with torch.no_grad():
        qkv = att.query_key_value(x).view(1, 8, 4, 96).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)
        flat = att.query_key_value(x)
    check(torch.equal(q[0, 1], flat[0, :, 96:128]) and torch.equal(v[0, 1], flat[0, :, 160:192]),
          "gpt_neox: head 1's q / v are columns 96:128 / 160:192 of the fused output (per-head layout)")
    check(q.data_ptr() == qkv.data_ptr() and not v.is_contiguous(), "gpt_neox: q, k, v are strided views")
    check(m.embed_out.weight is not m.gpt_neox.embed_in.weight and m.embed_out.bias is None,
          "gpt_neox: untied embed_out without bias")
    check(m.gpt_neox.layers[0].use_parallel_residual, "gpt_neox: parallel residual")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _fwd(m)
    kv = out["past_key_values"].layers[0]
    check(tuple(kv.keys.shape) == (1, 4, 8, 32) and kv.keys.dtype == torch.float32 and kv.values.dtype == torch.float32,
          "gpt_neox bf16-mixed: KV cache keys/values (1,4,8,32) fp32 (%s, %s)" % (kv.keys.dtype, kv.values.dtype))

    # falcon: the 7B layout (multi-query: one K/V head, parallel attention, one LayerNorm) and the
    # new_decoder_architecture one (grouped K/V broadcast to every head, ln_attn + ln_mlp)
    m = models.build_model(_load("tiny-falcon")).train()
    att = m.transformer.h[0].self_attention
    check(att.query_key_value.out_features == 128 + 2 * 32 and att.query_key_value.bias is None,
          "falcon 7B layout: query_key_value 128 -> 192, no bias")
    check(hasattr(m.transformer.h[0], "input_layernorm") and not hasattr(m.transformer.h[0], "ln_mlp"),
          "falcon 7B layout: one LayerNorm per layer")
    check(m.lm_head.weight is m.transformer.word_embeddings.weight, "falcon: lm_head tied (PretrainedConfig default)")
    out = _fwd(m)
    check(tuple(out["past_key_values"].layers[0].keys.shape) == (1, 1, 8, 32), "falcon 7B layout: cached keys (1,1,8,32)")
    m = models.build_model(_load("tiny-falcon-newarch")).train()
    att = m.transformer.h[0].self_attention
    check(att.query_key_value.out_features == (4 + 2 * 2) * 32, "falcon new arch: query_key_value 128 -> 256")
    check(hasattr(m.transformer.h[0], "ln_attn") and hasattr(m.transformer.h[0], "ln_mlp"),
          "falcon new arch: ln_attn and ln_mlp")
    out = _fwd(m)
    check(tuple(out["past_key_values"].layers[0].keys.shape) == (1, 4, 8, 32),
          "falcon new arch: K/V broadcast to all 4 heads before the cache (1,4,8,32)")

    # stablelm: partial rotary, q/k/v bias (stablelm-2-1_6b layout), an unused rotary module (inv_freq buffer) in
    # every attention layer; the stablelm-2-12b options (per-head q/k LayerNorms without bias, GQA, parallel
    # residual with one norm) in process only
    m = models.build_model(_load("tiny-stablelm")).train()
    layer = m.model.layers[0]
    check(layer.self_attn.q_proj.bias is not None and layer.self_attn.o_proj.bias is None,
          "stablelm: q/k/v bias, o_proj without")
    check(layer.self_attn.rotary_ndims == 8 and layer.post_attention_layernorm is not None,
          "stablelm: 8 rotary dims of 32, sequential residual with post_attention_layernorm")
    check(sum(b.numel() for b in m.buffers()) == 3 * 4, "stablelm: 3 inv_freq buffers of 4 (model + 2 layers)")
    cfg12 = dict(_load("tiny-stablelm"), qk_layernorm=True, use_parallel_residual=True, num_key_value_heads=2)
    m = models.build_model(cfg12).train()
    layer = m.model.layers[0]
    out = _fwd(m)
    out["loss"].backward()
    check(all(p.grad is not None for p in m.parameters()), "stablelm 12b options: every parameter gets a gradient")
    check(len(layer.self_attn.q_layernorm.norms) == 4 and len(layer.self_attn.k_layernorm.norms) == 2 and
          not any("bias" in n for n, _ in layer.self_attn.q_layernorm.named_parameters()),
          "stablelm: per-head LayerNorms (4 q, 2 k heads), weight only")
    check(layer.post_attention_layernorm is None, "stablelm: parallel residual has no post_attention_layernorm")

    # olmo: LayerNorms without parameters, clip_qkv clamps the projections in place
    m = models.build_model(_load("tiny-olmo")).train()
    check(not any("norm" in n for n, _ in m.named_parameters()), "olmo: non-parametric LayerNorms")
    check(m.lm_head.weight is m.model.embed_tokens.weight, "olmo: tied lm_head")
    seen = []
    h = m.model.layers[0].self_attn.q_proj.register_forward_hook(lambda mod, i, o: seen.append(o))
    with torch.no_grad():
        m.model.layers[0].self_attn.q_proj.weight.mul_(1e4)
        _fwd(m)
    h.remove()
    check(seen and seen[0].abs().max().item() <= 8.0, "olmo: clip_qkv 8 clamps q_proj's output in place")
    m = models.build_model(_load("tiny-olmo")).train().to(torch.bfloat16)
    rec = _OpDtypes()
    with rec:
        _fwd(m)
    up = [sh for op, d, sh in rec.seen if op.startswith("aten._to_copy") and d == torch.float32 and sh == (1, 8, 128)]
    check(len(up) >= 5, "olmo bf16: each of the 5 LayerNorms upcasts its input to fp32 (%d copies)" % len(up))


if __name__ == "__main__":
    if sys.argv[1:] == ["--parallel"]:
        parallel_cases()
        print("%d failure(s)" % len(FAILS))
        sys.exit(1 if FAILS else 0)
    if sys.argv[1:2] == ["--only"]:  # e.g. --only tiny-mixtral,tiny-qwen2-moe: those family cases
        family_cases(only=sys.argv[2].split(","))
        print("%d failure(s)" % len(FAILS))
        sys.exit(1 if FAILS else 0)
    pure_parameter_case()
    parallel_cases()
    new_family_details()
    in_model_loss_details()
    gemma_details()
    phiqwen3_details()
    moe_details()
    neox_family_details()
    family_cases()
    print("%d failure(s)" % len(FAILS))
    sys.exit(1 if FAILS else 0)
