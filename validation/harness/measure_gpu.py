#!/usr/bin/env python3
"""Measure the peak GPU memory of one fine-tuning step on CUDA (llmem validation, GPU tier).

Same terms as `llmem estimate`:

    python3 validation/harness/measure_gpu.py --model validation/configs/gpu-llama-2-7b-2l.json \
        --batch 4 --seq 1024 --precision bf16-mixed --optimizer adamw --attention sdpa

The model is a Hugging Face config.json (or a directory holding one; a data/models/*.json catalog file
with a "config" object also works), built with random weights and no downloads:

  hf      transformers (CONFIG_MAPPING[model_type].from_dict + AutoModelForCausalLM.from_config, built
          directly on the GPU in the training dtype) and peft (get_peft_model, LoraConfig) when importable;
  mirror  otherwise validation/harness/models.py, the CPU tier's op-for-op re-implementation of the
          Transformers v4.57 training forward (llama, mistral, qwen2, gpt2, opt), with its LoRA; `--attention
          sdpa` is patched in here (sdpa_attention_forward of v4.57: no materialized mask, is_causal=True).

The step is HF-Trainer shaped: autocast around forward+loss for mixed precision (GradScaler for fp16-mixed),
`loss = model(input_ids, attention_mask, labels)["loss"]` (output object dropped), loss.backward(),
optimizer.step(), optimizer.zero_grad(set_to_none=True). Step 1 is the warm-up (optimizer states created),
step N (default 2) is the measured one; step 1 is recorded too.

Per phase (forward = model call until the lm_head output; loss = until the loss is returned; backward;
optimizer = step + zero_grad): torch.cuda.reset_peak_memory_stats() at the phase start,
torch.cuda.max_memory_allocated() / max_memory_reserved() (and memory_stats()["requested_bytes.all.peak"])
at the phase end, and the device memory used from NVML (pynvml, else `nvidia-smi --query-gpu=memory.used`)
sampled at the phase end. CUDA context estimate: NVML used after CUDA init minus NVML used before minus
torch.cuda.memory_reserved().

--method ddp|fsdp emulates one rank of a world of --world-size ranks on this one GPU with PyTorch's fake
process group (torch >= 2.2): the collectives are no-ops, the memory of rank 0 is real (DDP gradient
buckets; FSDP FULL_SHARD flat parameters, shards, unsharded all-gather buffers).

--dry-run: CPU only, no CUDA call at all, shapes shrunk (hidden 64, 2 layers, vocab 1024, batch <= 2,
seq <= 32); every counter is reported as 0. It exercises the whole step code path (phases, LoRA,
checkpointing, optimizers, sdpa, fake process group where torch has it).

Prints one JSON object; "status" is ok, oom, skipped or error.
"""
import argparse
import contextlib
import datetime
import functools
import gc
import inspect
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
PHASES = ("forward", "loss", "backward", "optimizer")
PRECISIONS = ("fp32", "fp16-mixed", "bf16-mixed", "bf16", "fp16")
OPTIMIZERS = ("adamw", "adamw-foreach", "adamw-fused", "adamw-forloop", "sgd", "sgd-momentum")

DEFAULT_LORA_TARGETS = {  # PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING (as measure_cpu.py)
    "llama": "q_proj,v_proj", "mistral": "q_proj,v_proj", "qwen2": "q_proj,v_proj",
    "gpt2": "c_attn", "opt": "q_proj,v_proj",
    "bloom": "query_key_value", "gpt_neo": "q_proj,v_proj", "gpt_bigcode": "c_attn", "codegen": "qkv_proj",
}
MIRROR_SDPA = ("llama", "mistral", "qwen2", "gpt2", "opt")  # families whose sdpa path the fallback patches in

# Before torch is imported (also in a parent that forks runs): never touch the CUDA runtime for
# torch.cuda.is_available() checks made by libraries at import time, so that forked children can init CUDA.
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

import torch  # noqa: E402


def torch_ge(major, minor):
    try:
        v = torch.__version__.split("+")[0].split(".")
        return (int(v[0]), int(v[1])) >= (major, minor)
    except Exception:
        return False


# ---- libraries -------------------------------------------------------------------------------------
_LIBS = {}


def transformers_lib():
    """The transformers module or None (imported once; a forking parent imports it up front)."""
    if "transformers" not in _LIBS:
        try:
            import transformers
            transformers.logging.set_verbosity_error()
            _LIBS["transformers"] = transformers
        except Exception:
            _LIBS["transformers"] = None
    return _LIBS["transformers"]


def peft_available():
    import importlib.util
    return importlib.util.find_spec("peft") is not None


def peft_lib():
    """The peft module or None. Imported only by a run that needs it (LoRA): importing peft can import
    bitsandbytes, which initializes CUDA, and a forking parent must not."""
    if "peft" not in _LIBS:
        try:
            import peft
            _LIBS["peft"] = peft
        except Exception:
            _LIBS["peft"] = None
    return _LIBS["peft"]


def hf_libs():
    return transformers_lib(), (peft_lib() if peft_available() else None)


def mirror():
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    import models
    return models


def preimport(model_types=(), impl="auto"):
    """Import everything a run needs without initializing CUDA (for a parent that forks runs)."""
    if impl != "mirror":
        tr = transformers_lib()
        if tr is not None:
            for mt in model_types:
                try:
                    cfg_cls = tr.CONFIG_MAPPING[mt]
                    tr.AutoModelForCausalLM._model_mapping[cfg_cls]  # triggers the lazy modeling import
                except Exception:
                    pass
    mirror()
    import torch.utils.checkpoint  # noqa: F401
    try:
        import torch.distributed  # noqa: F401
        import torch.testing._internal.distributed.fake_pg  # noqa: F401
        import torch.distributed.fsdp  # noqa: F401
    except Exception:
        pass


# ---- config --------------------------------------------------------------------------------------------
def load_config(path):
    p = os.path.join(path, "config.json") if os.path.isdir(path) else path
    with open(p) as f:
        d = json.load(f)
    if "model_type" not in d and isinstance(d.get("config"), dict):  # data/models/*.json catalog entry
        d = d["config"]
    if "model_type" not in d:
        raise ValueError("%s: no model_type" % p)
    return d


def shrink_config(d):
    """Tiny shapes for --dry-run: same model_type and keys, hidden 64, 4 heads, 2 layers, vocab 1024."""
    d = dict(d)
    hidden, heads, layers = 64, 4, 2
    nh = next((d[k] for k in ("num_attention_heads", "n_head", "num_heads") if d.get(k)), heads)
    for k in ("hidden_size", "n_embd", "n_embed", "d_model"):
        if k in d:
            d[k] = hidden
    for k in ("num_attention_heads", "n_head", "num_heads"):
        if k in d:
            d[k] = heads
    if d["model_type"] in ("llama", "mistral", "qwen2", "opt") and "num_attention_heads" not in d:
        d["num_attention_heads"] = heads
    for k in ("num_hidden_layers", "n_layer", "num_layers"):
        if k in d:
            d[k] = layers
    if d["model_type"] in ("llama", "mistral", "qwen2", "opt") and "num_hidden_layers" not in d:
        d["num_hidden_layers"] = layers
    if d.get("num_key_value_heads") is not None:
        d["num_key_value_heads"] = heads if d["num_key_value_heads"] == nh else 2
    for k in ("intermediate_size", "ffn_dim", "n_inner"):
        if d.get(k) is not None:
            d[k] = 2 * hidden
    if "head_dim" in d:
        d["head_dim"] = hidden // heads
    if d.get("rotary_dim") is not None:  # codegen / gptj: at most the head size
        d["rotary_dim"] = min(d["rotary_dim"], hidden // heads)
    if d.get("word_embed_proj_dim") is not None:
        d["word_embed_proj_dim"] = hidden
    if d["model_type"] == "gpt_neo":
        kinds = (d.get("attention_types") or [[["global", "local"], 1]])[0][0]
        d["attention_types"] = [[kinds, max(1, layers // len(kinds))]]
        d["attention_layers"] = [kinds[i % len(kinds)] for i in range(layers)]
    if d.get("max_window_layers") is not None:
        d["max_window_layers"] = min(d["max_window_layers"], layers)
    d.pop("layer_types", None)
    d["vocab_size"] = 1024
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if isinstance(d.get(k), int) and d[k] >= 1024:
            d[k] = 1
    return d


# ---- memory counters -----------------------------------------------------------------------------------
class DeviceUsed:
    """Device memory used (bytes): pynvml if importable, else nvidia-smi (MiB resolution)."""

    def __init__(self):
        self.source = None
        self.handle = None
        self.smi_id = None
        self.driver = None
        try:
            import pynvml
            pynvml.nvmlInit()
            self.nvml = pynvml
            self.source = "pynvml"
        except Exception:
            self.nvml = None
            if shutil.which("nvidia-smi"):
                self.source = "nvidia-smi"
        vis = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
        self.bind(vis if vis else "0")

    def bind(self, ident):
        """ident: an NVML index ("0") or a UUID ("GPU-...")."""
        self.smi_id = ident
        if self.nvml is not None:
            try:
                if ident.startswith("GPU-") or ident.startswith("MIG-"):
                    try:
                        self.handle = self.nvml.nvmlDeviceGetHandleByUUID(ident)
                    except Exception:
                        self.handle = self.nvml.nvmlDeviceGetHandleByUUID(ident.encode())
                else:
                    self.handle = self.nvml.nvmlDeviceGetHandleByIndex(int(ident))
                d = self.nvml.nvmlSystemGetDriverVersion()
                self.driver = d.decode() if isinstance(d, bytes) else d
            except Exception:
                self.handle = None

    def used(self):
        """NVML v2 `used` (= total - free - reserved: what nvidia-smi prints as memory.used on current drivers)
        when the bindings and driver have it, else NVML v1 `used` (= total - free), else nvidia-smi."""
        if self.nvml is not None and self.handle is not None:
            v2 = getattr(self.nvml, "nvmlMemory_v2", None)
            if v2 is not None and self.source != "pynvml-v1":
                try:
                    return int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle, version=v2).used)
                except Exception:
                    self.source = "pynvml-v1"
            try:
                if self.source == "pynvml":
                    self.source = "pynvml-v1"
                return int(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used)
            except Exception:
                pass
        return self.smi_used()

    def all_views(self):
        """Every reading at once, to reconcile the NVML versions with nvidia-smi."""
        out = {}
        if self.nvml is not None and self.handle is not None:
            try:
                m = self.nvml.nvmlDeviceGetMemoryInfo(self.handle)
                out.update(nvml_v1_used=int(m.used), nvml_total=int(m.total))
            except Exception:
                pass
            v2 = getattr(self.nvml, "nvmlMemory_v2", None)
            if v2 is not None:
                try:
                    m = self.nvml.nvmlDeviceGetMemoryInfo(self.handle, version=v2)
                    out.update(nvml_v2_used=int(m.used), nvml_v2_reserved=int(m.reserved))
                except Exception:
                    pass
        out["nvidia_smi_used"] = self.smi_used()
        return out

    def smi_used(self):
        if not shutil.which("nvidia-smi"):
            return None
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used,driver_version", "--format=csv,noheader,nounits",
                                  "-i", str(self.smi_id)], capture_output=True, text=True, timeout=20).stdout
            mib, drv = [x.strip() for x in out.strip().splitlines()[0].split(",")[:2]]
            self.driver = self.driver or drv
            return int(float(mib)) * 1024 * 1024
        except Exception:
            return None


class CudaMem:
    def __init__(self, dev_index):
        self.dev = dev_index
        self.device = DeviceUsed()

    def sync(self):
        torch.cuda.synchronize(self.dev)

    def phase_start(self):
        self.sync()
        torch.cuda.reset_peak_memory_stats(self.dev)

    def phase_end(self):
        self.sync()
        st = torch.cuda.memory_stats(self.dev)
        return {"allocated": torch.cuda.max_memory_allocated(self.dev),
                "reserved": torch.cuda.max_memory_reserved(self.dev),
                "requested": st.get("requested_bytes.all.peak"),
                "device": self.device.used(),
                "allocated_end": torch.cuda.memory_allocated(self.dev),
                "reserved_end": torch.cuda.memory_reserved(self.dev)}

    def now(self):
        self.sync()
        return {"allocated": torch.cuda.memory_allocated(self.dev), "reserved": torch.cuda.memory_reserved(self.dev)}


class DryMem:
    """--dry-run: no CUDA call; every counter is 0."""

    def __init__(self):
        self.device = None

    def phase_start(self):
        pass

    def phase_end(self):
        return {"allocated": 0, "reserved": 0, "requested": 0, "device": 0, "allocated_end": 0, "reserved_end": 0}

    def now(self):
        return {"allocated": 0, "reserved": 0}

    def sync(self):
        pass


# ---- mirror patches (applied in this process only; models.py is not modified) ---------------------------
def _sdpa(query, key, value, is_causal, scale, dropout_p, enable_gqa, training):
    F = torch.nn.functional
    if hasattr(F, "scaled_dot_product_attention"):
        kw = {}
        if scale is not None:
            kw["scale"] = scale
        if enable_gqa:
            kw["enable_gqa"] = True
        return F.scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=dropout_p,
                                              is_causal=is_causal, **kw)
    # torch < 2.0 (the CPU dry run only): the math path, same result, not the same memory
    scale = scale if scale is not None else query.shape[-1] ** -0.5
    w = torch.matmul(query, key.transpose(-2, -1)) * scale
    if is_causal:
        s, t = w.shape[-2], w.shape[-1]
        mask = torch.ones(s, t, dtype=torch.bool, device=w.device).tril()
        w = w.masked_fill(~mask, torch.finfo(w.dtype).min)
    w = torch.softmax(w, dim=-1)
    w = F.dropout(w, p=dropout_p, training=training)
    return torch.matmul(w, value)


def patch_mirror(M, attention, device_type):
    """RotaryEmbedding: disable autocast for the device in use (HF does; the mirror names "cpu").
    sdpa: Transformers v4.57 sdpa_attention_forward, and no materialized mask (all-ones attention_mask and
    a causal model: create_causal_mask / OPT _update_causal_mask return None, so SDPA runs is_causal=True)."""

    @torch.no_grad()
    def rotary_forward(self, x, position_ids):
        inv_freq_expanded = self.inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1).to(x.device)
        position_ids_expanded = position_ids[:, None, :].float()
        dt = x.device.type if x.device.type != "mps" else "cpu"
        with torch.autocast(device_type=dt, enabled=False):
            freqs = (inv_freq_expanded.float() @ position_ids_expanded.float()).transpose(1, 2)
            emb = torch.cat((freqs, freqs), dim=-1)
            cos = emb.cos() * self.attention_scaling
            sin = emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)

    names = ("llama_eager_attention_forward", "gpt2_eager_attention_forward", "opt_eager_attention_forward",
             "_eager_causal_mask")
    if not hasattr(M, "_measure_gpu_originals"):  # restore first: a process may measure several runs
        M._measure_gpu_originals = {n: getattr(M, n) for n in names}
        M._measure_gpu_originals["_prepare_4d"] = M.OPTDecoder.__dict__["_prepare_4d"]
        M._measure_gpu_originals["rotary"] = M.RotaryEmbedding.forward
    for n in names:
        setattr(M, n, M._measure_gpu_originals[n])
    M.OPTDecoder._prepare_4d = M._measure_gpu_originals["_prepare_4d"]
    M.RotaryEmbedding.forward = rotary_forward if device_type != "cpu" else M._measure_gpu_originals["rotary"]
    if attention != "sdpa":
        return
    gqa_ok = torch_ge(2, 5) and device_type == "cuda"

    def llama_sdpa(module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
        groups = module.num_key_value_groups
        enable_gqa = gqa_ok and attention_mask is None and groups > 1
        if not enable_gqa:
            key = M.repeat_kv(key, groups)
            value = M.repeat_kv(value, groups)
        is_causal = query.shape[2] > 1 and attention_mask is None
        out = _sdpa(query, key, value, is_causal, scaling, dropout, enable_gqa, module.training)
        return out.transpose(1, 2).contiguous(), None

    def gpt2_sdpa(module, query, key, value, attention_mask, dropout=0.0, **kw):
        scaling = None if module.scale_attn_weights else 1.0
        if module.scale_attn_by_inverse_layer_idx:
            scaling = (scaling or value.size(-1) ** -0.5) / float(module.layer_idx + 1)
        is_causal = query.shape[2] > 1 and attention_mask is None
        out = _sdpa(query, key, value, is_causal, scaling, dropout, False, module.training)
        return out.transpose(1, 2).contiguous(), None

    def opt_sdpa(module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
        is_causal = query.shape[2] > 1 and attention_mask is None
        out = _sdpa(query, key, value, is_causal, scaling, dropout, False, module.training)
        return out.transpose(1, 2).contiguous(), None

    M.llama_eager_attention_forward = llama_sdpa
    M.gpt2_eager_attention_forward = gpt2_sdpa
    M.opt_eager_attention_forward = opt_sdpa
    M._eager_causal_mask = lambda *a, **k: None
    M.OPTDecoder._prepare_4d = staticmethod(lambda *a, **k: None)


# ---- build ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def default_dtype(dt):
    old = torch.get_default_dtype()
    if dt is not None and dt != old:
        torch.set_default_dtype(dt)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def device_ctx(device):
    if device.type == "cuda" and torch_ge(2, 0):
        return torch.device(device)
    return contextlib.nullcontext()


def unique_params(model):
    return list({id(p): p for p in model.parameters()}.values())


def choose_impl(args, mt):
    if args.impl == "mirror":
        return "mirror"
    tr = transformers_lib()
    hf_ok = tr is not None and torch_ge(2, 0) and (not args.lora_rank or peft_lib() is not None)
    if args.impl == "hf":
        if not hf_ok:
            raise RuntimeError("--impl hf: transformers%s not importable (or torch < 2.0)"
                               % (" + peft" if args.lora_rank else ""))
        return "hf"
    if hf_ok:
        return "hf"
    if mt not in mirror().MODEL_CLASSES:
        raise RuntimeError("model_type %r: transformers is not importable and models.py does not have it" % mt)
    return "mirror"


def build_hf(args, d, dtype, device):
    tr = transformers_lib()
    pf = peft_lib() if args.lora_rank else None
    d = dict(d)
    d.pop("torch_dtype", None)
    d.pop("dtype", None)
    try:
        cfg = tr.CONFIG_MAPPING[d["model_type"]].from_dict(d)
    except (AttributeError, KeyError):
        cfg = tr.AutoConfig.for_model(**d)
    try:
        newer = tuple(int(x) for x in tr.__version__.split(".")[:2]) >= (4, 56)
    except Exception:
        newer = True
    kw = {"dtype" if newer else "torch_dtype": dtype, "attn_implementation": args.attention}
    with device_ctx(device), default_dtype(dtype):  # built on the GPU, in the training dtype
        model = tr.AutoModelForCausalLM.from_config(cfg, **kw)
    model.to(device)
    if any(p.dtype != dtype for p in model.parameters() if p.is_floating_point()):
        model.to(dtype)
    nparams = sum(p.numel() for p in unique_params(model))
    lm_head = model.get_output_embeddings()
    if args.grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": not args.non_reentrant})
    if args.lora_rank:
        if args.grad_ckpt:
            model.enable_input_require_grads()
        lc = pf.LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                           target_modules=args.lora_targets.split(","), bias="none", task_type="CAUSAL_LM",
                           fan_in_fan_out=d["model_type"] == "gpt2")
        with device_ctx(device):
            model = pf.get_peft_model(model, lc)
        model.to(device)
    info = {"impl": "hf", "transformers_version": tr.__version__,
            "attn_implementation": getattr(getattr(model, "config", None), "_attn_implementation", None),
            "peft_version": pf.__version__ if (pf is not None and args.lora_rank) else None}
    return model, lm_head, nparams, info


def build_mirror(args, d, dtype, device):
    M = mirror()
    if args.attention == "sdpa" and d["model_type"] not in MIRROR_SDPA:
        raise RuntimeError("the fallback models.py has eager attention only for model_type %r; --attention sdpa "
                           "needs transformers (or one of %s)" % (d["model_type"], ", ".join(MIRROR_SDPA)))
    patch_mirror(M, args.attention, device.type)
    with device_ctx(device), default_dtype(dtype):
        model = M.build_model(d)
    model.to(device)
    nparams = sum(p.numel() for p in unique_params(model))
    lm_head = model.lm_head
    if args.lora_rank:
        # PEFT get_peft_model(autocast_adapter_dtype=True): adapters in fp32 on an fp16/bf16 base
        ad = torch.float32 if dtype in (torch.bfloat16, torch.float16) else None
        with device_ctx(device), default_dtype(dtype):
            M.apply_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout, args.lora_targets.split(","), ad)
        model.to(device)
    if args.grad_ckpt:
        M.gradient_checkpointing_enable(model, use_reentrant=not args.non_reentrant)
        if args.lora_rank:
            M.enable_input_require_grads(model)
    return model, lm_head, nparams, {"impl": "mirror", "transformers_version": None, "peft_version": None}


def decoder_layer_classes(model):
    """The class of the decoder layers: the largest ModuleList of identical modules."""
    best = None
    for m in model.modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) > 0:
            kinds = {type(c) for c in m}
            if len(kinds) == 1 and (best is None or len(m) > len(best)):
                best = m
    return {type(best[0])} if best is not None else set()


def init_fake_pg(world_size):
    """Returns None when the fake process group is up, else the reason it is not available."""
    if not torch_ge(2, 2):
        return "torch too old: the fake process group needs torch >= 2.2 (have %s)" % torch.__version__
    try:
        import torch.distributed as dist
        from torch.testing._internal.distributed.fake_pg import FakeStore
    except Exception as e:  # pragma: no cover
        return "torch too old: fake process group not importable (%s)" % e
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    return None


def wrap_distributed(args, model, device, dtype_mixed):
    if args.method == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        # HF Trainer: find_unused_parameters = not gradient checkpointing; default buckets (25 MiB),
        # gradient_as_bucket_view=False
        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                   find_unused_parameters=not args.grad_ckpt), "DDP(find_unused_parameters=%s)" % (not args.grad_ckpt)
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, ShardingStrategy, MixedPrecision
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
    layers = decoder_layer_classes(model)
    mp = None
    if dtype_mixed is not None:  # accelerate's FSDP default for bf16/fp16 mixed precision (+ autocast)
        mp = MixedPrecision(param_dtype=dtype_mixed, reduce_dtype=dtype_mixed, buffer_dtype=dtype_mixed)
    kw = dict(sharding_strategy=ShardingStrategy.FULL_SHARD,
              auto_wrap_policy=functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=layers),
              mixed_precision=mp, use_orig_params=True, limit_all_gathers=True, sync_module_states=False)
    if device.type == "cuda":
        kw["device_id"] = device.index
    m = FSDP(model, **kw)
    return m, "FSDP(FULL_SHARD, wrap=%s, use_orig_params, mixed=%s)" % (
        ",".join(sorted(c.__name__ for c in layers)), str(dtype_mixed).replace("torch.", "") if mp else "none")


def make_optimizer(args, params, dry):
    notes = []
    sig = inspect.signature(torch.optim.AdamW.__init__).parameters
    lr = 5e-5
    o = args.optimizer
    if o == "adamw":
        return torch.optim.AdamW(params, lr=lr), notes
    if o == "adamw-foreach":
        return torch.optim.AdamW(params, lr=lr, foreach=True), notes
    if o == "adamw-forloop":
        return torch.optim.AdamW(params, lr=lr, foreach=False), notes
    if o == "adamw-fused":
        if "fused" in sig and not (dry and not torch_ge(2, 4)):
            return torch.optim.AdamW(params, lr=lr, fused=True), notes
        notes.append("dry-run: fused AdamW unavailable here, ran foreach=False")
        return torch.optim.AdamW(params, lr=lr, foreach=False), notes
    if o == "sgd":
        return torch.optim.SGD(params, lr=1e-3), notes
    if o == "sgd-momentum":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9), notes
    raise ValueError(o)


def _oom_types():
    t = [RuntimeError]
    if hasattr(torch.cuda, "OutOfMemoryError"):
        t.insert(0, torch.cuda.OutOfMemoryError)
    return tuple(t)


def is_oom(e):
    return (hasattr(torch.cuda, "OutOfMemoryError") and isinstance(e, torch.cuda.OutOfMemoryError)) or \
        "out of memory" in str(e).lower()


# ---- measurement ---------------------------------------------------------------------------------------
def measure(args):
    t_start = time.time()
    dry = args.dry_run
    res = {"status": "ok", "dry_run": dry, "method": args.method, "world_size": args.world_size,
           "torch_version": torch.__version__, "cuda_version": getattr(torch.version, "cuda", None),
           "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""), "notes": []}
    d = load_config(args.model)
    mt = d["model_type"]
    batch, seq = args.batch, args.seq
    if dry:
        d = shrink_config(d)
        batch, seq = min(batch, 2), min(seq, 32)
        res["notes"].append("dry-run: CPU, shapes shrunk (hidden 64, 2 layers, vocab 1024, batch %d, seq %d), "
                            "counters 0" % (batch, seq))
    if not args.lora_targets:
        args.lora_targets = DEFAULT_LORA_TARGETS.get(mt, "q_proj,v_proj")

    # precision -> (weight dtype, autocast dtype)
    lowp = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if dry and args.precision in ("fp16", "fp16-mixed") and not torch_ge(2, 1):
        res["notes"].append("dry-run: fp16 computed as bf16 (CPU torch %s has no fp16 kernels/autocast)"
                            % torch.__version__)
        lowp["fp16"] = torch.bfloat16
    weight_dtype = {"fp32": torch.float32, "bf16-mixed": torch.float32, "fp16-mixed": torch.float32,
                    "bf16": torch.bfloat16, "fp16": lowp["fp16"]}[args.precision]
    autocast_dtype = {"bf16-mixed": torch.bfloat16, "fp16-mixed": lowp["fp16"]}.get(args.precision)

    # ---- device, CUDA init, context estimate
    if dry:
        device = torch.device("cpu")
        mem = DryMem()
        torch.set_num_threads(1)
        res.update(gpu_name="cpu (dry-run)", driver_version=None, device_source=None, context_bytes=0)
    else:
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA not available (use --dry-run on a machine without a GPU)")
        if args.alloc_conf is not None:
            os.environ["PYTORCH_CUDA_ALLOC_CONF"] = args.alloc_conf
            res["alloc_conf"] = args.alloc_conf
        dev_index = 0
        mem = CudaMem(dev_index)
        used_before = mem.device.used()
        if args.alloc_conf and hasattr(torch.cuda.memory, "_set_allocator_settings"):
            # the env var is read when the allocator config is first built; this also covers a config
            # already built in a forking parent
            try:
                torch.cuda.memory._set_allocator_settings(args.alloc_conf)
                res["alloc_conf_set_via"] = "env + torch.cuda.memory._set_allocator_settings"
            except Exception as e:
                res["alloc_conf_set_via"] = "env only (_set_allocator_settings: %s)" % e
        torch.cuda.set_device(dev_index)
        device = torch.device("cuda", dev_index)
        x = torch.zeros(1, device=device)
        torch.cuda.synchronize()
        props = torch.cuda.get_device_properties(dev_index)
        uuid = getattr(props, "uuid", None)
        if uuid is not None:
            u = str(uuid)
            mem.device.bind(u if u.startswith("GPU-") or u.startswith("MIG-") else "GPU-" + u)
            if mem.device.used() is None:
                mem.device.bind(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0")
        used_after = mem.device.used()
        reserved0 = torch.cuda.memory_reserved(dev_index)
        res.update(gpu_name=torch.cuda.get_device_name(dev_index), gpu_total_bytes=props.total_memory,
                   device_source=mem.device.source, device_used_before_init=used_before,
                   device_used_after_init=used_after, reserved_after_init=reserved0,
                   context_bytes=(used_after - (used_before or 0) - reserved0) if used_after is not None else None,
                   cudnn_version=torch.backends.cudnn.version())
        del x
        res["driver_version"] = mem.device.driver

    # ---- distributed
    if args.method != "single":
        why = init_fake_pg(args.world_size)
        if why is not None:
            res.update(status="skipped", reason=why)
            return res

    # ---- build
    impl = choose_impl(args, mt)
    builder = build_hf if impl == "hf" else build_mirror
    model, lm_head, nparams, info = builder(args, d, weight_dtype, device)
    res.update(info)
    res["model_type"] = mt
    res["params"] = nparams
    res["trainable_params"] = sum(p.numel() for p in unique_params(model) if p.requires_grad)
    res["param_bytes"] = sum(p.numel() * p.element_size() for p in unique_params(model))
    res["lora_targets"] = args.lora_targets if args.lora_rank else ""
    if args.lora_rank:
        res["notes"].append("lora adapters %s" % ("fp32 (PEFT autocast_adapter_dtype)"
                                                   if weight_dtype != torch.float32 else "fp32"))
    model.train()

    phase_hook = {"fn": None}

    def lm_head_done(mod, inp, out):  # the logits exist: the loss phase starts
        if phase_hook["fn"] is not None:
            phase_hook["fn"]("loss")

    lm_head.register_forward_hook(lm_head_done)
    wrapped = model
    if args.method != "single":
        wrapped, how = wrap_distributed(args, model, device, autocast_dtype)
        res["notes"].append("%s on a fake process group (world %d, rank 0); no NCCL buffers"
                            % (how, args.world_size))
    params = [p for p in wrapped.parameters() if p.requires_grad]
    opt, onotes = make_optimizer(args, params, dry)
    res["notes"] += onotes

    scaler = None
    if args.precision == "fp16-mixed" and not dry:
        if args.method == "fsdp":
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
            scaler = ShardedGradScaler()
        elif hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler") and torch_ge(2, 3):
            scaler = torch.amp.GradScaler("cuda")
        else:
            scaler = torch.cuda.amp.GradScaler()

    g = torch.Generator().manual_seed(args.seed + 1)
    vocab = d.get("vocab_size")
    input_ids = torch.randint(0, vocab, (batch, seq), generator=g).to(device)
    attention_mask = torch.ones(batch, seq, dtype=torch.long).to(device)
    labels = input_ids.clone()

    gc.collect()
    if not dry:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # the pool then holds what is live, as after loading a checkpoint to the GPU
    res["after_build"] = mem.now()

    # ---- steps
    steps = []
    cur = {"key": None, "rec": None}

    def mark(step, phase):
        if cur["key"] is not None:
            cur["rec"][cur["key"][1]] = mem.phase_end()
        if phase == "end":
            cur["key"] = None
            return
        cur["key"] = (step, phase)
        mem.phase_start()

    def autocast():
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=autocast_dtype)

    try:
        for step in range(1, args.steps + 1):
            rec = {}
            cur["rec"] = rec
            if step == args.steps:
                res["step_start"] = mem.now()
            t0 = time.time()
            phase_hook["fn"] = lambda name, s=step: mark(s, name)
            mark(step, "forward")
            with autocast():
                loss = wrapped(input_ids=input_ids, attention_mask=attention_mask, labels=labels)["loss"]
            phase_hook["fn"] = None
            mark(step, "backward")
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
            if step == args.steps:
                res["loss"] = float(loss.detach().float().item())
            del loss
            mark(step, "optimizer")
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
            mark(step, "end")
            mem.sync()
            steps.append({"step": step, "phases": rec, "wall_s": round(time.time() - t0, 4)})
    except _oom_types() as e:
        if not is_oom(e):
            raise
        if cur["key"] is not None and cur["rec"] is not None:
            try:
                cur["rec"][cur["key"][1]] = mem.phase_end()
            except Exception:
                pass
        res.update(status="oom", error=str(e).splitlines()[0][:400], oom_at=list(cur["key"] or []),
                   partial_steps=steps + [{"step": (cur["key"] or [0])[0], "phases": cur["rec"]}])
        return res

    def summary(st):
        ph = st["phases"]
        out = {}
        for c in ("allocated", "reserved", "requested", "device"):
            vals = {p: ph[p][c] for p in PHASES if p in ph}
            out[c] = {"peak": max((v for v in vals.values() if v is not None), default=None), "phases": vals}
        out["peak_phase"] = max(PHASES, key=lambda p: ph[p]["allocated"] if p in ph else -1)
        return out

    last, first = summary(steps[-1]), summary(steps[0])
    res["steps"] = steps
    for c in ("allocated", "reserved", "requested", "device"):
        res["peak_%s_bytes" % c] = last[c]["peak"]
        res["phase_%s_bytes" % c] = last[c]["phases"]
        res["first_step_peak_%s_bytes" % c] = first[c]["peak"]
    res["peak_phase"] = last["peak_phase"]
    if not dry:
        st = torch.cuda.memory_stats(device)
        res["num_alloc_retries"] = st.get("num_alloc_retries")
        res["num_device_alloc"] = st.get("num_device_alloc")
        res["num_ooms"] = st.get("num_ooms")
        res["reserved_end"] = torch.cuda.memory_reserved(device)
        end_used = mem.device.used()
        res["device_used_end"] = end_used
        res["nonalloc_bytes_end"] = end_used - res["reserved_end"] if end_used is not None else None
        res["device_source"] = mem.device.source
        res["device_views_end"] = mem.device.all_views()  # NVML v1/v2 and nvidia-smi side by side
        res["nvidia_smi_end_bytes"] = res["device_views_end"].get("nvidia_smi_used")
    res["wall_s"] = round(time.time() - t_start, 3)
    return res


# ---- CLI -----------------------------------------------------------------------------------------------
def command_line(args):
    rel = os.path.relpath(os.path.abspath(args.model), REPO)
    parts = ["python3", "validation/harness/measure_gpu.py", "--model", rel, "--batch", str(args.batch),
             "--seq", str(args.seq), "--precision", args.precision, "--optimizer", args.optimizer,
             "--attention", args.attention]
    if args.grad_ckpt:
        parts.append("--grad-ckpt")
        if args.non_reentrant:
            parts.append("--non-reentrant")
    if args.lora_rank:
        parts += ["--lora-rank", str(args.lora_rank), "--lora-alpha", "%g" % args.lora_alpha,
                  "--lora-dropout", "%g" % args.lora_dropout, "--lora-targets", args.lora_targets]
    if args.method != "single":
        parts += ["--method", args.method, "--world-size", str(args.world_size)]
    if args.alloc_conf is not None:
        parts += ["--alloc-conf", args.alloc_conf]
    if args.impl != "auto":
        parts += ["--impl", args.impl]
    if args.seed != 0:
        parts += ["--seed", str(args.seed)]
    if args.steps != 2:
        parts += ["--steps", str(args.steps)]
    if args.dry_run:
        parts.append("--dry-run")
    return " ".join(shlex.quote(p) for p in parts)


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", "--config", dest="model", required=True, help="config.json or a directory with one")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--precision", choices=PRECISIONS, default="bf16-mixed")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw",
                   help="adamw = torch.optim.AdamW defaults (foreach on CUDA); -foreach/-fused/-forloop force it")
    p.add_argument("--attention", choices=("eager", "sdpa"), default="eager")
    p.add_argument("--grad-ckpt", action="store_true", help="HF gradient checkpointing per decoder layer")
    p.add_argument("--non-reentrant", action="store_true", help="checkpoint(use_reentrant=False)")
    p.add_argument("--lora-rank", type=int, default=0)
    p.add_argument("--lora-alpha", type=float, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--lora-targets", default=None, help="comma list (default q_proj,v_proj; gpt2 c_attn)")
    p.add_argument("--method", choices=("single", "ddp", "fsdp"), default="single",
                   help="ddp/fsdp: one rank of --world-size, emulated on this GPU with the fake process group")
    p.add_argument("--world-size", type=int, default=1)
    p.add_argument("--alloc-conf", default=None, help="PYTORCH_CUDA_ALLOC_CONF for this run")
    p.add_argument("--impl", choices=("auto", "hf", "mirror"), default="auto",
                   help="auto: transformers(+peft) when importable, else validation/harness/models.py")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=2, help="the last step is the measured one (>= 2)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, no CUDA calls, counters 0")
    return p


def normalize(args):
    if args.steps < 2:
        raise SystemExit("--steps must be >= 2 (step 1 is the warm-up)")
    if args.method == "single":
        args.world_size = 1
    elif args.world_size < 2:
        raise SystemExit("--method %s needs --world-size >= 2" % args.method)
    return args


def run(argv):
    """Parse argv, measure, never raise: the JSON object (status error with the traceback on failure)."""
    args = normalize(parser().parse_args(argv))
    try:
        res = measure(args)
    except Exception as e:
        res = {"status": "oom" if is_oom(e) else "error", "error": ("%s: %s" % (type(e).__name__, e))[:1000],
               "traceback": traceback.format_exc()[-4000:], "torch_version": torch.__version__,
               "dry_run": args.dry_run}
    if args.lora_rank and not res.get("lora_targets"):
        res["lora_targets"] = args.lora_targets or ""
    res["command"] = command_line(args)
    res["date"] = datetime.date.today().isoformat()
    return res


def main(argv=None):
    res = run(sys.argv[1:] if argv is None else argv)
    sys.stdout.flush()
    print(json.dumps(res, default=str))
    return 0 if res["status"] in ("ok", "skipped") else (3 if res["status"] == "oom" else 1)


if __name__ == "__main__":
    sys.exit(main())
