"""Training-forward re-implementations of Hugging Face Transformers v4.57 causal LMs.

Written for the llmem CPU measurement tier. Each class follows the v4.57 modeling code
(commit 3553f0bc2301) op for op and keeps the same Python names alive for the same spans,
because which tensors a name keeps alive decides what autograd and the caller hold at each
instant. Only the training path is kept: eager attention, no KV reuse across calls, no
output_attentions / output_hidden_states. The KV cache *is* built during training when
config.use_cache is true and gradient checkpointing is off, exactly as HF does (it copies K and
V per layer with torch.cat). Families: llama, mistral, qwen2 (shared decoder), gpt2, opt, bloom, gpt_neo,
gpt_bigcode, codegen, mixtral, qwen2_moe (and, in their own sections, gemma, gemma2, qwen3, phi3, phi).

Also: PEFT-style LoRA (peft.tuners.lora.layer.Linear forward), HF-style gradient checkpointing
(GradientCheckpointingLayer + torch.utils.checkpoint), ForCausalLMLoss.
"""
import math
from functools import partial

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

# --------------------------------------------------------------------------------------------
# phase hook: the harness sets this to a callable(name) to mark phase changes inside forward
PHASE_HOOK = None


def _mark(name):
    if PHASE_HOOK is not None:
        PHASE_HOOK(name)


# --------------------------------------------------------------------------------------------
# config
_DEFAULTS = {
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=None, hidden_act="silu",
                  max_position_embeddings=2048, initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True,
                  pad_token_id=None, tie_word_embeddings=False, rope_theta=10000.0, rope_scaling=None,
                  attention_bias=False, attention_dropout=0.0, mlp_bias=False, head_dim=None),
    "mistral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, hidden_act="silu",
                    max_position_embeddings=4096 * 32, initializer_range=0.02, rms_norm_eps=1e-6,
                    use_cache=True, pad_token_id=None, tie_word_embeddings=False, rope_theta=10000.0,
                    sliding_window=4096, attention_dropout=0.0, head_dim=None),
    "qwen2": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, hidden_act="silu",
                  max_position_embeddings=32768, initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True,
                  tie_word_embeddings=False, rope_theta=10000.0, rope_scaling=None, use_sliding_window=False,
                  sliding_window=4096, max_window_layers=28, layer_types=None, attention_dropout=0.0,
                  pad_token_id=None),
    "gpt2": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
                 activation_function="gelu_new", resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1,
                 layer_norm_epsilon=1e-5, initializer_range=0.02, scale_attn_weights=True, use_cache=True,
                 scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
                 tie_word_embeddings=True, add_cross_attention=False),
    "opt": dict(vocab_size=50272, hidden_size=768, num_hidden_layers=12, ffn_dim=3072,
                max_position_embeddings=2048, do_layer_norm_before=True, _remove_final_layer_norm=False,
                word_embed_proj_dim=None, dropout=0.1, attention_dropout=0.0, num_attention_heads=12,
                activation_function="relu", layerdrop=0.0, init_std=0.02, use_cache=True, pad_token_id=1,
                enable_bias=True, layer_norm_elementwise_affine=True, tie_word_embeddings=True),
    # BloomConfig (tie_word_embeddings: PretrainedConfig default True)
    "bloom": dict(vocab_size=250880, hidden_size=64, n_layer=2, n_head=8, layer_norm_epsilon=1e-5,
                  initializer_range=0.02, use_cache=True, apply_residual_connection_post_layernorm=False,
                  hidden_dropout=0.0, attention_dropout=0.0, pretraining_tp=1, slow_but_exact=False,
                  tie_word_embeddings=True),
    "gpt_neo": dict(vocab_size=50257, max_position_embeddings=2048, hidden_size=2048, num_layers=24,
                    attention_types=[[["global", "local"], 12]], num_heads=16, intermediate_size=None,
                    window_size=256, activation_function="gelu_new", resid_dropout=0.0, embed_dropout=0.0,
                    attention_dropout=0.0, layer_norm_epsilon=1e-5, initializer_range=0.02, use_cache=True,
                    tie_word_embeddings=True),
    "gpt_bigcode": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
                        activation_function="gelu_pytorch_tanh", resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1,
                        layer_norm_epsilon=1e-5, initializer_range=0.02, scale_attn_weights=True, use_cache=True,
                        attention_softmax_in_fp32=True, scale_attention_softmax_in_fp32=True, multi_query=True,
                        add_cross_attention=False, tie_word_embeddings=True),
    "codegen": dict(vocab_size=50400, n_positions=2048, n_ctx=2048, n_embd=4096, n_layer=28, n_head=16,
                    rotary_dim=64, n_inner=None, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                    attn_pdrop=0.0, layer_norm_epsilon=1e-5, initializer_range=0.02, use_cache=True,
                    tie_word_embeddings=False),
}
_GPT2_STYLE = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer",
               "num_attention_heads": "n_head", "max_position_embeddings": "n_positions"}
_ALIASES = {"gpt2": _GPT2_STYLE, "gpt_bigcode": _GPT2_STYLE, "codegen": _GPT2_STYLE,  # config attribute_map
            "bloom": {"num_hidden_layers": "n_layer", "num_attention_heads": "n_head"},
            "gpt_neo": {"num_attention_heads": "num_heads", "num_hidden_layers": "num_layers"}}


class Config:
    """HF-config-like attribute bag built from a config.json dict plus the family defaults."""

    def __init__(self, d):
        mt = d["model_type"]
        if mt not in _DEFAULTS:
            raise ValueError(f"unsupported model_type {mt!r}")
        merged = dict(_DEFAULTS[mt])
        merged.update(d)
        if mt == "bloom" and "n_embed" in merged:  # BloomConfig pops n_embed as the old name of hidden_size
            merged["hidden_size"] = merged.pop("n_embed")
        for k, v in merged.items():
            setattr(self, k, v)
        for alias, real in _ALIASES.get(mt, {}).items():
            setattr(self, alias, getattr(self, real))
        if mt in ("llama", "mistral", "qwen2") and self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if mt == "opt" and self.word_embed_proj_dim is None:
            self.word_embed_proj_dim = self.hidden_size
        if mt == "qwen2":
            # Qwen2Config: sliding_window only when use_sliding_window; layer_types default
            self.sliding_window = self.sliding_window if self.use_sliding_window else None
            if self.layer_types is None:
                self.layer_types = [
                    "sliding_attention" if self.sliding_window is not None and i >= self.max_window_layers
                    else "full_attention" for i in range(self.num_hidden_layers)]
        if mt == "gpt_neo":  # GPTNeoConfig.expand_attention_types_params
            self.attention_layers = [t for types, n in self.attention_types for _ in range(n) for t in types]
            if len(self.attention_layers) != self.num_layers:
                raise ValueError("len(attention_layers) != num_layers")
        _neox_family_config(self)
        self._attn_implementation = "eager"


# --------------------------------------------------------------------------------------------
# activations (transformers.activations)
class NewGELUActivation(nn.Module):
    def forward(self, input):
        return 0.5 * input * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (input + 0.044715 * torch.pow(input, 3.0))))


class GELUActivation(nn.Module):
    def forward(self, input):
        return F.gelu(input)


class SiLUActivation(nn.Module):
    def forward(self, input):
        return F.silu(input)


class GELUTanh(nn.Module):
    """activations.GELUTanh ("gelu_pytorch_tanh"): functools.partial(F.gelu, approximate="tanh")."""
    def forward(self, input):
        return F.gelu(input, approximate="tanh")


def act_fn(name):
    return {"gelu_new": NewGELUActivation, "gelu": GELUActivation, "silu": SiLUActivation,
            "swish": nn.SiLU, "relu": nn.ReLU, "gelu_pytorch_tanh": GELUTanh}[name]()


# --------------------------------------------------------------------------------------------
# KV cache (cache_utils.DynamicLayer / DynamicSlidingWindowLayer / DynamicCache)
class DynamicLayer:
    def __init__(self):
        self.keys = self.values = None

    def update(self, key_states, value_states):
        if self.keys is None:
            self.keys = torch.tensor([], dtype=key_states.dtype, device=key_states.device)
            self.values = torch.tensor([], dtype=key_states.dtype, device=key_states.device)
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        return self.keys, self.values


class DynamicSlidingWindowLayer(DynamicLayer):
    def __init__(self, sliding_window):
        super().__init__()
        self.sliding_window = sliding_window

    def update(self, key_states, value_states):
        if self.keys is None:
            self.keys = torch.tensor([], dtype=key_states.dtype, device=key_states.device)
            self.values = torch.tensor([], dtype=key_states.dtype, device=key_states.device)
        full_key_states = torch.cat([self.keys, key_states], dim=-2)
        full_value_states = torch.cat([self.values, value_states], dim=-2)
        self.keys = full_key_states[:, :, -self.sliding_window + 1:, :]
        self.values = full_value_states[:, :, -self.sliding_window + 1:, :]
        return full_key_states, full_value_states


class DynamicCache:
    def __init__(self, config):
        sliding_window = getattr(config, "sliding_window", None)
        layer_types = getattr(config, "layer_types", None)
        if layer_types is None:
            layer_types = ["sliding_attention" if sliding_window is not None else "full_attention"
                           for _ in range(config.num_hidden_layers)]
        self.layers = [DynamicSlidingWindowLayer(sliding_window) if t == "sliding_attention" else DynamicLayer()
                       for t in layer_types]

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
        return self.layers[layer_idx].update(key_states, value_states)

    def get_seq_length(self):
        return 0  # training: always called before any update


# --------------------------------------------------------------------------------------------
# masks (masking_utils, torch < 2.6 path: sdpa_mask_older_torch + eager_mask)
def _eager_causal_mask(input_embeds, attention_mask, cache_position, sliding_window=None):
    batch_size, dtype = input_embeds.shape[0], input_embeds.dtype
    kv_length, kv_offset = input_embeds.shape[1], 0
    if attention_mask is not None and attention_mask.ndim == 2:
        attention_mask = attention_mask.to(device=cache_position.device, dtype=torch.bool)
    padding_mask = attention_mask
    if attention_mask is not None:
        mask_indices = torch.arange(kv_length, device=attention_mask.device)
        mask_indices += kv_offset
        padding_mask = attention_mask[:, mask_indices]
    kv_arange = torch.arange(kv_length, device=cache_position.device)
    kv_arange += kv_offset
    causal = kv_arange[None, :] <= cache_position[:, None]
    if sliding_window is not None:
        causal = causal & (kv_arange[None, :] > cache_position[:, None] - sliding_window)
    causal_mask = causal[None, None, :, :].expand(batch_size, -1, -1, -1)
    if padding_mask is not None:
        causal_mask = causal_mask * padding_mask[:, None, None, :]
    min_dtype = torch.finfo(dtype).min
    return torch.where(causal_mask, torch.tensor(0.0, device=causal_mask.device, dtype=dtype), min_dtype)


# --------------------------------------------------------------------------------------------
# loss (loss/loss_utils.py ForCausalLMLoss + fixed_cross_entropy, num_items_in_batch=None)
def ForCausalLMLoss(logits, labels, vocab_size, ignore_index=-100):
    logits = logits.float()
    labels = F.pad(labels, (0, 1), value=ignore_index)
    shift_labels = labels[..., 1:].contiguous()
    logits = logits.view(-1, vocab_size)
    shift_labels = shift_labels.view(-1)
    shift_labels = shift_labels.to(logits.device)
    loss = F.cross_entropy(logits, shift_labels, ignore_index=ignore_index, reduction="mean")
    return loss


# --------------------------------------------------------------------------------------------
# Older releases computed the loss inside each model's forward. TRANSFORMERS_VERSION (a (major,
# minor) tuple, set by measure_cpu.py --transformers-version; None = v4.57) selects that code.
TRANSFORMERS_VERSION = None
# The first release whose forward calls self.loss_function (ForCausalLMLoss): 4.46 for the llama-
# style families (commit c1c7e89620, PR #34191), 4.49 for the GPT-era ones (commits 9afb904b15 and
# 28f73bc307, February 2025).
LOSS_FUNCTION_SINCE = {"llama": (4, 46), "mistral": (4, 46), "qwen2": (4, 46), "gpt2": (4, 49),
                       "opt": (4, 49), "bloom": (4, 49), "gpt_neo": (4, 49), "gpt_bigcode": (4, 49),
                       "codegen": (4, 49)}


def in_model_loss(model_type):
    since = LOSS_FUNCTION_SINCE.get(model_type)
    return TRANSFORMERS_VERSION is not None and since is not None and TRANSFORMERS_VERSION < since


def InModelCausalLMLoss(logits, labels, vocab_size):
    """The loss as the forwards of v4.45 (llama style) and v4.48 (GPT era) wrote it: a contiguous
    copy of the shifted logits, then nn.CrossEntropyLoss (which autocast runs in fp32)."""
    shift_logits = logits[..., :-1, :].contiguous()
    shift_labels = labels[..., 1:].contiguous()
    loss_fct = nn.CrossEntropyLoss()
    shift_logits = shift_logits.view(-1, vocab_size)
    shift_labels = shift_labels.view(-1)
    shift_labels = shift_labels.to(shift_logits.device)
    return loss_fct(shift_logits, shift_labels)


def causal_lm_loss(model_type, logits, labels, vocab_size):
    if in_model_loss(model_type):
        return InModelCausalLMLoss(logits, labels, vocab_size)
    return ForCausalLMLoss(logits, labels, vocab_size=vocab_size)


# --------------------------------------------------------------------------------------------
class GradientCheckpointingLayer(nn.Module):
    gradient_checkpointing = False

    def __call__(self, *args, **kwargs):
        if self.gradient_checkpointing and self.training:
            for k in ("past_key_value", "past_key_values", "layer_past"):
                if k in kwargs and kwargs[k] is not None:
                    kwargs[k] = None
            if "use_cache" in kwargs and kwargs["use_cache"]:
                kwargs["use_cache"] = False
            return self._gradient_checkpointing_func(partial(super().__call__, **kwargs), *args)
        return super().__call__(*args, **kwargs)


class Output(dict):
    """Stand-in for ModelOutput: attribute and key access to the same objects."""
    __getattr__ = dict.get


# ============================================================================================
# llama / mistral / qwen2
class RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class RotaryEmbedding(nn.Module):
    def __init__(self, config):
        super().__init__()
        base = config.rope_theta
        dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float) / dim))
        self.attention_scaling = 1.0
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.original_inv_freq = self.inv_freq

    @torch.no_grad()
    def forward(self, x, position_ids):
        inv_freq_expanded = self.inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1).to(x.device)
        position_ids_expanded = position_ids[:, None, :].float()
        with torch.autocast(device_type="cpu", enabled=False):
            freqs = (inv_freq_expanded.float() @ position_ids_expanded.float()).transpose(1, 2)
            emb = torch.cat((freqs, freqs), dim=-1)
            cos = emb.cos() * self.attention_scaling
            sin = emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed, k_embed


class LlamaMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        bias = getattr(config, "mlp_bias", False)
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.act_fn = act_fn(config.hidden_act)

    def forward(self, x):
        down_proj = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
        return down_proj


def repeat_kv(hidden_states, n_rep):
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


def llama_eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0):
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        causal_mask = attention_mask[:, :, :, : key_states.shape[-2]]
        attn_weights = attn_weights + causal_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)
    attn_output = attn_output.transpose(1, 2).contiguous()
    return attn_output, attn_weights


class LlamaAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim ** -0.5
        self.attention_dropout = config.attention_dropout
        mt = config.model_type
        qkv_bias = True if mt == "qwen2" else (getattr(config, "attention_bias", False) if mt == "llama" else False)
        o_bias = getattr(config, "attention_bias", False) if mt == "llama" else False
        H, nh, nkv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
        self.q_proj = nn.Linear(H, nh * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(H, nkv * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(H, nkv * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(nh * self.head_dim, H, bias=o_bias)

    def forward(self, hidden_states, position_embeddings, attention_mask, past_key_values=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if past_key_values is not None:
            key_states, value_states = past_key_values.update(key_states, value_states, self.layer_idx)
        attn_output, attn_weights = llama_eager_attention_forward(
            self, query_states, key_states, value_states, attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling)
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        attn_output = self.o_proj(attn_output)
        return attn_output, attn_weights


class LlamaDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_idx)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False, cache_position=None, position_embeddings=None, **kwargs):
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states, _ = self.self_attn(hidden_states=hidden_states, attention_mask=attention_mask,
                                          past_key_values=past_key_values,
                                          position_embeddings=position_embeddings)
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states = self.mlp(hidden_states)
        hidden_states = residual + hidden_states
        return hidden_states


class LlamaModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)
        self.gradient_checkpointing = False

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        # check_model_inputs: use_cache from config, forced off under gradient checkpointing in training
        if use_cache is None:
            use_cache = self.config.use_cache
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False
        inputs_embeds = self.embed_tokens(input_ids)
        past_key_values = DynamicCache(self.config) if use_cache else None
        cache_position = torch.arange(0, 0 + inputs_embeds.shape[1], device=inputs_embeds.device)
        position_ids = cache_position.unsqueeze(0)
        mt = self.config.model_type
        sw = self.config.sliding_window if mt == "mistral" else None
        if mt == "qwen2":
            masks = {"full_attention": _eager_causal_mask(inputs_embeds, attention_mask, cache_position)}
            if "sliding_attention" in self.config.layer_types:
                masks["sliding_attention"] = _eager_causal_mask(inputs_embeds, attention_mask, cache_position,
                                                                self.config.sliding_window)
        else:
            masks = {"full_attention": _eager_causal_mask(inputs_embeds, attention_mask, cache_position, sw)}
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        for i, decoder_layer in enumerate(self.layers[: self.config.num_hidden_layers]):
            lt = self.config.layer_types[i] if mt == "qwen2" else "full_attention"
            hidden_states = decoder_layer(hidden_states, attention_mask=masks[lt], position_ids=position_ids,
                                          past_key_values=past_key_values, use_cache=use_cache,
                                          cache_position=cache_position,
                                          position_embeddings=position_embeddings)
        hidden_states = self.norm(hidden_states)
        return Output(last_hidden_state=hidden_states, past_key_values=past_key_values if use_cache else None)


class LlamaForCausalLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def forward(self, input_ids, attention_mask=None, labels=None, use_cache=None, logits_to_keep=0):
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None)
        logits = self.lm_head(hidden_states[:, slice_indices, :])
        loss = None
        if labels is not None:
            _mark("loss")
            if in_model_loss(self.config.model_type) and (
                    self.config.model_type != "llama" or TRANSFORMERS_VERSION >= (4, 31)):
                logits = logits.float()  # since the Llama 2 PR (07360b6c9c, v4.31); mistral, qwen2 always
            loss = causal_lm_loss(self.config.model_type, logits, labels, self.config.vocab_size)
        return Output(loss=loss, logits=logits, past_key_values=outputs.past_key_values)


# ============================================================================================
# gpt2
class Conv1D(nn.Module):
    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.nx = nx
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x):
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        x = x.view(size_out)
        return x


def gpt2_eager_attention_forward(module, query, key, value, attention_mask, **kwargs):
    attn_weights = torch.matmul(query, key.transpose(-1, -2))
    if module.scale_attn_weights:
        attn_weights = attn_weights / torch.full([], value.size(-1) ** 0.5, dtype=attn_weights.dtype,
                                                 device=attn_weights.device)
    if module.scale_attn_by_inverse_layer_idx:
        attn_weights = attn_weights / float(module.layer_idx + 1)
    query_length, key_length = query.size(-2), key.size(-2)
    causal_mask = module.bias[:, :, key_length - query_length: key_length, :key_length]
    mask_value = torch.finfo(attn_weights.dtype).min
    mask_value = torch.full([], mask_value, dtype=attn_weights.dtype, device=attn_weights.device)
    attn_weights = torch.where(causal_mask, attn_weights.to(attn_weights.dtype), mask_value)
    if attention_mask is not None:
        causal_mask = attention_mask[:, :, :, : key.shape[-2]]
        attn_weights = attn_weights + causal_mask
    attn_weights = F.softmax(attn_weights, dim=-1)
    attn_weights = attn_weights.type(value.dtype)
    attn_weights = module.attn_dropout(attn_weights)
    attn_output = torch.matmul(attn_weights, value)
    attn_output = attn_output.transpose(1, 2)
    return attn_output, attn_weights


class GPT2Attention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.config = config
        mp = config.max_position_embeddings
        self.register_buffer("bias", torch.tril(torch.ones((mp, mp), dtype=torch.bool)).view(1, 1, mp, mp),
                             persistent=False)
        self.register_buffer("masked_bias", torch.tensor(-1e4), persistent=False)
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.split_size = self.embed_dim
        self.scale_attn_weights = config.scale_attn_weights
        self.scale_attn_by_inverse_layer_idx = config.scale_attn_by_inverse_layer_idx
        self.layer_idx = layer_idx
        if config.reorder_and_upcast_attn:
            raise NotImplementedError("reorder_and_upcast_attn")
        self.c_attn = Conv1D(3 * self.embed_dim, self.embed_dim)
        self.c_proj = Conv1D(self.embed_dim, self.embed_dim)
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states, past_key_values=None, cache_position=None, attention_mask=None, **kwargs):
        query_states, key_states, value_states = self.c_attn(hidden_states).split(self.split_size, dim=2)
        shape_kv = (*key_states.shape[:-1], -1, self.head_dim)
        key_states = key_states.view(shape_kv).transpose(1, 2)
        value_states = value_states.view(shape_kv).transpose(1, 2)
        shape_q = (*query_states.shape[:-1], -1, self.head_dim)
        query_states = query_states.view(shape_q).transpose(1, 2)
        if past_key_values is not None:
            key_states, value_states = past_key_values.update(key_states, value_states, self.layer_idx)
        attn_output, attn_weights = gpt2_eager_attention_forward(
            self, query_states, key_states, value_states, attention_mask,
            dropout=self.attn_dropout.p if self.training else 0.0)
        attn_output = attn_output.reshape(*attn_output.shape[:-2], -1).contiguous()
        attn_output = self.c_proj(attn_output)
        attn_output = self.resid_dropout(attn_output)
        return attn_output, attn_weights


class GPT2MLP(nn.Module):
    def __init__(self, intermediate_size, config):
        super().__init__()
        embed_dim = config.hidden_size
        self.c_fc = Conv1D(intermediate_size, embed_dim)
        self.c_proj = Conv1D(embed_dim, intermediate_size)
        self.act = act_fn(config.activation_function)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states):
        hidden_states = self.c_fc(hidden_states)
        hidden_states = self.act(hidden_states)
        hidden_states = self.c_proj(hidden_states)
        hidden_states = self.dropout(hidden_states)
        return hidden_states


class GPT2Block(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx):
        super().__init__()
        hidden_size = config.hidden_size
        inner_dim = config.n_inner if config.n_inner is not None else 4 * hidden_size
        self.ln_1 = nn.LayerNorm(hidden_size, eps=config.layer_norm_epsilon)
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(hidden_size, eps=config.layer_norm_epsilon)
        self.mlp = GPT2MLP(inner_dim, config)

    def forward(self, hidden_states, past_key_values=None, cache_position=None, attention_mask=None,
                encoder_hidden_states=None, encoder_attention_mask=None, use_cache=False,
                output_attentions=False, **kwargs):
        residual = hidden_states
        hidden_states = self.ln_1(hidden_states)
        attn_output, self_attn_weights = self.attn(hidden_states, past_key_values=past_key_values,
                                                   cache_position=cache_position, attention_mask=attention_mask)
        hidden_states = attn_output + residual
        residual = hidden_states
        hidden_states = self.ln_2(hidden_states)
        feed_forward_hidden_states = self.mlp(hidden_states)
        hidden_states = residual + feed_forward_hidden_states
        outputs = (hidden_states,)
        return outputs


class GPT2Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.wte = nn.Embedding(config.vocab_size, self.embed_dim)
        self.wpe = nn.Embedding(config.max_position_embeddings, self.embed_dim)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([GPT2Block(config, i) for i in range(config.num_hidden_layers)])
        self.ln_f = nn.LayerNorm(self.embed_dim, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        input_shape = input_ids.size()
        input_ids = input_ids.view(-1, input_shape[-1])
        batch_size = input_ids.shape[0]
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False
        past_key_values = DynamicCache(self.config) if use_cache else None
        inputs_embeds = self.wte(input_ids)
        cache_position = torch.arange(0, 0 + inputs_embeds.shape[1], device=inputs_embeds.device)
        position_ids = cache_position.unsqueeze(0)
        position_embeds = self.wpe(position_ids)
        hidden_states = inputs_embeds + position_embeds.to(inputs_embeds.device)
        if attention_mask is not None and attention_mask.ndim < 4:
            attention_mask = attention_mask.view(batch_size, -1)
        causal_mask = _eager_causal_mask(inputs_embeds, attention_mask, cache_position)
        encoder_attention_mask = None
        hidden_states = self.drop(hidden_states)
        output_shape = (-1,) + input_shape[1:] + (hidden_states.size(-1),)
        for i, block in enumerate(self.h):
            outputs = block(hidden_states,
                            past_key_values if not (self.gradient_checkpointing and self.training) else None,
                            cache_position, causal_mask, None,
                            encoder_attention_mask=encoder_attention_mask, use_cache=use_cache,
                            output_attentions=False)
            hidden_states = outputs[0]
        hidden_states = self.ln_f(hidden_states)
        hidden_states = hidden_states.view(output_shape)
        past_key_values = past_key_values if use_cache else None
        return Output(last_hidden_state=hidden_states, past_key_values=past_key_values)


class GPT2LMHeadModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    def get_input_embeddings(self):
        return self.transformer.wte

    def forward(self, input_ids, attention_mask=None, labels=None, use_cache=None, logits_to_keep=0):
        transformer_outputs = self.transformer(input_ids, attention_mask=attention_mask, use_cache=use_cache)
        hidden_states = transformer_outputs[ "last_hidden_state"]
        slice_indices = slice(-logits_to_keep, None)
        logits = self.lm_head(hidden_states[:, slice_indices, :])
        loss = None
        if labels is not None:
            _mark("loss")
            loss = causal_lm_loss(self.config.model_type, logits, labels, self.config.vocab_size)
        return Output(loss=loss, logits=logits, past_key_values=transformer_outputs.past_key_values)


# ============================================================================================
# opt
class OPTLearnedPositionalEmbedding(nn.Embedding):
    def __init__(self, num_embeddings, embedding_dim):
        self.offset = 2
        super().__init__(num_embeddings + self.offset, embedding_dim)

    def forward(self, attention_mask, past_key_values_length=0, position_ids=None):
        if position_ids is None:
            position_ids = torch.cumsum(attention_mask, dim=1)
            position_ids = (position_ids * attention_mask - 1).long()
            position_ids = position_ids[:, past_key_values_length:]
        return super().forward(position_ids + self.offset)


def opt_eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value)
    attn_output = attn_output.transpose(1, 2).contiguous()
    return attn_output, attn_weights


class OPTAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.dropout = config.attention_dropout
        self.layer_idx = layer_idx
        self.head_dim = self.embed_dim // self.num_heads
        self.scaling = self.head_dim ** -0.5
        b = config.enable_bias
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=b)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=b)
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=b)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=b)

    def forward(self, hidden_states, past_key_values=None, attention_mask=None, **kwargs):
        bsz, tgt_len, _ = hidden_states.size()
        query_states = self.q_proj(hidden_states) * self.scaling
        query_states = query_states.view(bsz, -1, self.num_heads, self.head_dim).transpose(1, 2)
        key_states = self.k_proj(hidden_states)
        value_states = self.v_proj(hidden_states)
        key_states = key_states.view(bsz, -1, self.num_heads, self.head_dim).transpose(1, 2)
        value_states = value_states.view(bsz, -1, self.num_heads, self.head_dim).transpose(1, 2)
        if past_key_values is not None:
            key_states, value_states = past_key_values.update(key_states, value_states, self.layer_idx)
        attn_output, attn_weights = opt_eager_attention_forward(
            self, query_states, key_states, value_states, attention_mask,
            dropout=0.0 if not self.training else self.dropout, scaling=1.0)
        attn_output = attn_output.reshape(bsz, tgt_len, -1).contiguous()
        attn_output = self.out_proj(attn_output)
        attn_weights = None
        return attn_output, attn_weights


class OPTDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.embed_dim = config.hidden_size
        self.self_attn = OPTAttention(config, layer_idx)
        self.do_layer_norm_before = config.do_layer_norm_before
        self.dropout = config.dropout
        self.activation_fn = act_fn(config.activation_function)
        ea = config.layer_norm_elementwise_affine
        self.self_attn_layer_norm = nn.LayerNorm(self.embed_dim, elementwise_affine=ea)
        self.fc1 = nn.Linear(self.embed_dim, config.ffn_dim, bias=config.enable_bias)
        self.fc2 = nn.Linear(config.ffn_dim, self.embed_dim, bias=config.enable_bias)
        self.final_layer_norm = nn.LayerNorm(self.embed_dim, elementwise_affine=ea)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, output_attentions=False,
                use_cache=False, position_ids=None, cache_position=None, **kwargs):
        residual = hidden_states
        if self.do_layer_norm_before:
            hidden_states = self.self_attn_layer_norm(hidden_states)
        hidden_states, self_attn_weights = self.self_attn(hidden_states=hidden_states,
                                                          past_key_values=past_key_values,
                                                          attention_mask=attention_mask)
        hidden_states = F.dropout(hidden_states, p=self.dropout, training=self.training)
        hidden_states = residual + hidden_states
        if not self.do_layer_norm_before:
            hidden_states = self.self_attn_layer_norm(hidden_states)
        hidden_states_shape = hidden_states.shape
        hidden_states = hidden_states.reshape(-1, hidden_states.size(-1))
        residual = hidden_states
        if self.do_layer_norm_before:
            hidden_states = self.final_layer_norm(hidden_states)
        hidden_states = self.fc1(hidden_states)
        hidden_states = self.activation_fn(hidden_states)
        hidden_states = self.fc2(hidden_states)
        hidden_states = F.dropout(hidden_states, p=self.dropout, training=self.training)
        hidden_states = (residual + hidden_states).view(hidden_states_shape)
        if not self.do_layer_norm_before:
            hidden_states = self.final_layer_norm(hidden_states)
        outputs = (hidden_states,)
        return outputs


class OPTDecoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.word_embed_proj_dim, config.pad_token_id)
        self.embed_positions = OPTLearnedPositionalEmbedding(config.max_position_embeddings, config.hidden_size)
        self.project_out = (nn.Linear(config.hidden_size, config.word_embed_proj_dim, bias=False)
                            if config.word_embed_proj_dim != config.hidden_size else None)
        self.project_in = (nn.Linear(config.word_embed_proj_dim, config.hidden_size, bias=False)
                           if config.word_embed_proj_dim != config.hidden_size else None)
        if config.do_layer_norm_before and not config._remove_final_layer_norm:
            self.final_layer_norm = nn.LayerNorm(config.hidden_size,
                                                 elementwise_affine=config.layer_norm_elementwise_affine)
        else:
            self.final_layer_norm = None
        self.layers = nn.ModuleList([OPTDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    @staticmethod
    def _prepare_4d(attention_mask, sequence_length, target_length, dtype, cache_position, batch_size):
        min_dtype = torch.finfo(dtype).min
        causal_mask = torch.full((sequence_length, target_length), fill_value=min_dtype, dtype=dtype,
                                 device=cache_position.device)
        if sequence_length != 1:
            causal_mask = torch.triu(causal_mask, diagonal=1)
        causal_mask *= torch.arange(target_length, device=cache_position.device) > cache_position.reshape(-1, 1)
        causal_mask = causal_mask[None, None, :, :].expand(batch_size, 1, -1, -1)
        if attention_mask is not None:
            causal_mask = causal_mask.clone()
            mask_length = attention_mask.shape[-1]
            padding_mask = causal_mask[:, :, :, :mask_length] + attention_mask[:, None, None, :].to(causal_mask.device)
            padding_mask = padding_mask == 0
            causal_mask[:, :, :, :mask_length] = causal_mask[:, :, :, :mask_length].masked_fill(padding_mask, min_dtype)
        return causal_mask

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False
        input_ids = input_ids.view(-1, input_ids.shape[-1])
        inputs_embeds = self.embed_tokens(input_ids)
        past_key_values = DynamicCache(self.config) if use_cache else None
        past_seen_tokens = 0
        cache_position = torch.arange(past_seen_tokens, past_seen_tokens + inputs_embeds.shape[1],
                                      device=inputs_embeds.device)
        if attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[0], past_seen_tokens + inputs_embeds.shape[1],
                                        device=inputs_embeds.device)
        target_length = attention_mask.shape[-1]
        causal_mask = self._prepare_4d(attention_mask, inputs_embeds.shape[1], target_length, inputs_embeds.dtype,
                                       cache_position, inputs_embeds.shape[0])
        position_ids = torch.cumsum(attention_mask, dim=1)
        position_ids = (position_ids * attention_mask - 1).long()
        position_ids = position_ids[:, past_seen_tokens:]
        pos_embeds = self.embed_positions(attention_mask, past_seen_tokens, position_ids=position_ids)
        if self.project_in is not None:
            inputs_embeds = self.project_in(inputs_embeds)
        hidden_states = inputs_embeds + pos_embeds.to(inputs_embeds.device)
        for idx, decoder_layer in enumerate(self.layers):
            if self.training:
                dropout_probability = torch.rand([])
                if dropout_probability < self.config.layerdrop:
                    continue
            layer_outputs = decoder_layer(hidden_states, attention_mask=causal_mask, position_ids=position_ids,
                                          past_key_values=past_key_values, output_attentions=False,
                                          use_cache=use_cache, cache_position=cache_position)
            hidden_states = layer_outputs[0]
        if self.final_layer_norm is not None:
            hidden_states = self.final_layer_norm(hidden_states)
        if self.project_out is not None:
            hidden_states = self.project_out(hidden_states)
        return Output(last_hidden_state=hidden_states, past_key_values=past_key_values)


class OPTModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.decoder = OPTDecoder(config)

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        d = self.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)
        return Output(last_hidden_state=d.last_hidden_state, past_key_values=d.past_key_values)


class OPTForCausalLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = OPTModel(config)
        self.lm_head = nn.Linear(config.word_embed_proj_dim, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.decoder.embed_tokens.weight

    def get_input_embeddings(self):
        return self.model.decoder.embed_tokens

    def forward(self, input_ids, attention_mask=None, labels=None, use_cache=None):
        outputs = self.model.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)
        logits = self.lm_head(outputs["last_hidden_state"]).contiguous()
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            _mark("loss")
            loss = causal_lm_loss(self.config.model_type, logits, labels, self.config.vocab_size)
        return Output(loss=loss, logits=logits, past_key_values=outputs.past_key_values)


# ============================================================================================
# shared by bloom / gpt_neo / codegen: GPTJModel._update_causal_mask (eager branch, no compilable cache)
# + _prepare_4d_causal_attention_mask_with_cache_position (the same function OPT carries)
def gptj_update_causal_mask(attention_mask, input_tensor, cache_position):
    seq_len = input_tensor.shape[1]
    target_length = attention_mask.shape[-1] if isinstance(attention_mask, torch.Tensor) else seq_len + 1
    return OPTDecoder._prepare_4d(attention_mask, seq_len, target_length, input_tensor.dtype, cache_position,
                                  input_tensor.shape[0])


# ============================================================================================
# bloom (models/bloom/modeling_bloom.py)
def bloom_build_alibi_tensor(attention_mask, num_heads, dtype):
    batch_size, seq_length = attention_mask.shape
    dev = attention_mask.device
    p2 = 2 ** math.floor(math.log2(num_heads))
    base = torch.tensor(2 ** (-(2 ** -(math.log2(p2) - 3))), device=dev, dtype=torch.float32)
    powers = torch.arange(1, 1 + p2, device=dev, dtype=torch.int32)
    slopes = torch.pow(base, powers)
    if p2 != num_heads:
        extra_base = torch.tensor(2 ** (-(2 ** -(math.log2(2 * p2) - 3))), device=dev, dtype=torch.float32)
        n_rest = min(p2, num_heads - p2)
        extra_powers = torch.arange(1, 1 + 2 * n_rest, 2, device=dev, dtype=torch.int32)
        slopes = torch.cat([slopes, torch.pow(extra_base, extra_powers)], dim=0)
    arange_tensor = ((attention_mask.cumsum(dim=-1) - 1) * attention_mask)[:, None, :]
    alibi = slopes[..., None] * arange_tensor
    return alibi.reshape(batch_size * num_heads, 1, seq_length).to(dtype)


def bloom_dropout_add(x, residual, prob, training):
    out = F.dropout(x, p=prob, training=training)
    out = residual + out
    return out


def _bloom_gelu_fwd(x):
    return x * 0.5 * (1.0 + torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x)))


def _bloom_gelu_bwd(g, x):
    x = x[0]  # ctx.saved_tensors is a 1-tuple
    tanh_out = torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x))
    ff = 0.5 * x * ((1 - tanh_out * tanh_out) * (0.79788456 + 0.1070322243 * x * x)) + 0.5 * (1 + tanh_out)
    return ff * g


class BloomGeLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input):
        ctx.save_for_backward(input)
        return _bloom_gelu_fwd(input)

    @staticmethod
    def backward(ctx, grad_output):
        input = ctx.saved_tensors
        tmp = _bloom_gelu_bwd(grad_output, input)
        return tmp


class BloomGelu(nn.Module):
    def forward(self, x):
        if self.training:
            return BloomGeLUFunction.apply(x)
        return _bloom_gelu_fwd(x)


class BloomAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.pretraining_tp = config.pretraining_tp
        self.slow_but_exact = config.slow_but_exact
        self.hidden_size = config.hidden_size
        self.num_heads = config.n_head
        self.head_dim = self.hidden_size // self.num_heads
        self.split_size = self.hidden_size
        self.hidden_dropout = config.hidden_dropout
        self.inv_norm_factor = 1.0 / math.sqrt(self.head_dim)
        self.beta = 1.0
        self.layer_idx = layer_idx
        self.query_key_value = nn.Linear(self.hidden_size, 3 * self.hidden_size, bias=True)
        self.dense = nn.Linear(self.hidden_size, self.hidden_size)
        self.attention_dropout = nn.Dropout(config.attention_dropout)

    def _reshape(self, fused_qkv):
        b, s, _ = fused_qkv.shape
        fused_qkv = fused_qkv.view(b, s, self.num_heads, 3, self.head_dim)
        query_layer = fused_qkv[..., 0, :].transpose(1, 2)
        key_layer = fused_qkv[..., 1, :].transpose(1, 2)
        value_layer = fused_qkv[..., 2, :].transpose(1, 2)
        return query_layer, key_layer, value_layer

    def _merge_heads(self, x):
        bh, s, _ = x.shape
        b = bh // self.num_heads
        x = x.view(b, self.num_heads, s, self.head_dim)
        x = x.permute(0, 2, 1, 3)
        return x.reshape(b, s, self.num_heads * self.head_dim)

    def forward(self, hidden_states, residual, alibi, attention_mask, layer_past=None, use_cache=False,
                output_attentions=False, cache_position=None):
        batch_size, q_length, _ = hidden_states.shape
        fused_qkv = self.query_key_value(hidden_states)
        query_layer, key_layer, value_layer = self._reshape(fused_qkv)
        if layer_past is not None:
            key_layer, value_layer = layer_past.update(key_layer, value_layer, self.layer_idx)
        query_layer = query_layer.reshape(batch_size * self.num_heads, -1, self.head_dim)
        key_layer = key_layer.reshape(batch_size * self.num_heads, -1, self.head_dim).transpose(-1, -2)
        value_layer = value_layer.reshape(batch_size * self.num_heads, -1, self.head_dim)
        attention_scores = alibi.baddbmm(batch1=query_layer, batch2=key_layer, beta=self.beta,
                                         alpha=self.inv_norm_factor)
        attn_weights = attention_scores.view(batch_size, self.num_heads, q_length, -1)
        if attention_mask is not None:
            causal_mask = attention_mask[:, :, :, : key_layer.shape[-1]]
            attn_weights = attn_weights + causal_mask
        attention_probs = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_layer.dtype)
        attention_probs = self.attention_dropout(attention_probs)
        attention_probs_reshaped = attention_probs.view(batch_size * self.num_heads, q_length, -1)
        context_layer = torch.bmm(attention_probs_reshaped, value_layer)
        context_layer = self._merge_heads(context_layer)
        if self.pretraining_tp > 1 and self.slow_but_exact:
            raise NotImplementedError("pretraining_tp > 1 with slow_but_exact")
        output_tensor = self.dense(context_layer)
        output_tensor = bloom_dropout_add(output_tensor, residual, self.hidden_dropout, self.training)
        return output_tensor, attention_probs


class BloomMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        h = config.hidden_size
        self.pretraining_tp = config.pretraining_tp
        self.slow_but_exact = config.slow_but_exact
        self.dense_h_to_4h = nn.Linear(h, 4 * h)
        self.gelu_impl = BloomGelu()
        self.dense_4h_to_h = nn.Linear(4 * h, h)
        self.hidden_dropout = config.hidden_dropout

    def forward(self, hidden_states, residual):
        hidden_states = self.gelu_impl(self.dense_h_to_4h(hidden_states))
        if self.pretraining_tp > 1 and self.slow_but_exact:
            raise NotImplementedError("pretraining_tp > 1 with slow_but_exact")
        intermediate_output = self.dense_4h_to_h(hidden_states)
        output = bloom_dropout_add(intermediate_output, residual, self.hidden_dropout, self.training)
        return output


class BloomBlock(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx):
        super().__init__()
        h = config.hidden_size
        self.input_layernorm = nn.LayerNorm(h, eps=config.layer_norm_epsilon)
        self.num_heads = config.n_head
        self.self_attention = BloomAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(h, eps=config.layer_norm_epsilon)
        self.mlp = BloomMLP(config)
        self.apply_residual_connection_post_layernorm = config.apply_residual_connection_post_layernorm
        self.hidden_dropout = config.hidden_dropout

    def forward(self, hidden_states, alibi, attention_mask, layer_past=None, use_cache=False,
                output_attentions=False, cache_position=None):
        layernorm_output = self.input_layernorm(hidden_states)
        residual = layernorm_output if self.apply_residual_connection_post_layernorm else hidden_states
        attention_output, attn_weights = self.self_attention(
            layernorm_output, residual, layer_past=layer_past, attention_mask=attention_mask, alibi=alibi,
            use_cache=use_cache, output_attentions=output_attentions, cache_position=cache_position)
        layernorm_output = self.post_attention_layernorm(attention_output)
        residual = layernorm_output if self.apply_residual_connection_post_layernorm else attention_output
        output = self.mlp(layernorm_output, residual)
        return output, attn_weights


class BloomModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.num_heads = config.n_head
        self.word_embeddings = nn.Embedding(config.vocab_size, self.embed_dim)
        self.word_embeddings_layernorm = nn.LayerNorm(self.embed_dim, eps=config.layer_norm_epsilon)
        self.h = nn.ModuleList([BloomBlock(config, i) for i in range(config.num_hidden_layers)])
        self.ln_f = nn.LayerNorm(self.embed_dim, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False
        inputs_embeds = self.word_embeddings(input_ids)
        past_key_values = DynamicCache(self.config) if use_cache else None
        batch_size, seq_length, _ = inputs_embeds.shape
        past_length = 0
        seq_length_with_past = seq_length + past_length
        cache_position = torch.arange(past_length, past_length + seq_length, device=inputs_embeds.device)
        hidden_states = self.word_embeddings_layernorm(inputs_embeds)
        if attention_mask is None:
            attention_mask = torch.ones((batch_size, seq_length_with_past), device=hidden_states.device)
        else:
            attention_mask = attention_mask.to(hidden_states.device)
        alibi = bloom_build_alibi_tensor(attention_mask, self.num_heads, dtype=hidden_states.dtype)
        causal_mask = gptj_update_causal_mask(attention_mask, inputs_embeds, cache_position)
        for i, block in enumerate(self.h):
            outputs = block(hidden_states, layer_past=past_key_values, attention_mask=causal_mask,
                            use_cache=use_cache, output_attentions=False, alibi=alibi,
                            cache_position=cache_position)
            hidden_states = outputs[0]
        hidden_states = self.ln_f(hidden_states)
        return Output(last_hidden_state=hidden_states, past_key_values=past_key_values)


class BloomForCausalLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = BloomModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.word_embeddings.weight

    def get_input_embeddings(self):
        return self.transformer.word_embeddings

    def forward(self, input_ids, attention_mask=None, labels=None, use_cache=None):
        transformer_outputs = self.transformer(input_ids, attention_mask=attention_mask, use_cache=use_cache)
        hidden_states = transformer_outputs["last_hidden_state"]
        lm_logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            labels = labels.to(lm_logits.device)
            _mark("loss")
            loss = causal_lm_loss(self.config.model_type, lm_logits, labels, self.config.vocab_size)
        return Output(loss=loss, logits=lm_logits, past_key_values=transformer_outputs.past_key_values)


# ============================================================================================
# gpt_neo (models/gpt_neo/modeling_gpt_neo.py)
class GPTNeoSelfAttention(nn.Module):
    def __init__(self, config, attention_type, layer_id):
        super().__init__()
        self.config = config
        mp = config.max_position_embeddings
        bias = torch.tril(torch.ones((mp, mp), dtype=bool)).view(1, 1, mp, mp)
        if attention_type == "local":
            bias = torch.bitwise_xor(bias, torch.tril(bias, -config.window_size))
        self.register_buffer("bias", bias, persistent=False)
        self.register_buffer("masked_bias", torch.tensor(-1e9), persistent=False)
        self.attn_dropout = nn.Dropout(float(config.attention_dropout))
        self.resid_dropout = nn.Dropout(float(config.resid_dropout))
        self.is_causal = True
        self.layer_id = layer_id
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=False)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=False)
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=False)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=True)

    def _split_heads(self, tensor, num_heads, attn_head_size):
        tensor = tensor.view(tensor.size()[:-1] + (num_heads, attn_head_size))
        return tensor.permute(0, 2, 1, 3)

    def _merge_heads(self, tensor, num_heads, attn_head_size):
        tensor = tensor.permute(0, 2, 1, 3).contiguous()
        return tensor.view(tensor.size()[:-2] + (num_heads * attn_head_size,))

    def _attn(self, query, key, value, attention_mask=None):
        # the v4.57 code keeps QK^T and the softmax in fp32
        query = query.to(torch.float32)
        key = key.to(torch.float32)
        attn_weights = torch.matmul(query, key.transpose(-1, -2))
        query_length, key_length = query.size(-2), key.size(-2)
        causal_mask = self.bias[:, :, key_length - query_length: key_length, :key_length]
        mask_value = torch.finfo(attn_weights.dtype).min
        mask_value = torch.tensor(mask_value, dtype=attn_weights.dtype, device=attn_weights.device)
        attn_weights = torch.where(causal_mask, attn_weights, mask_value)
        if attention_mask is not None:
            causal_mask = attention_mask[:, :, :, : key.shape[-2]]
            attn_weights = attn_weights + causal_mask
        attn_weights = F.softmax(attn_weights, dim=-1)
        attn_weights = attn_weights.to(value.dtype)
        attn_weights = self.attn_dropout(attn_weights)
        attn_output = torch.matmul(attn_weights, value)
        return attn_output, attn_weights

    def forward(self, hidden_states, attention_mask=None, layer_past=None, use_cache=False,
                output_attentions=False, cache_position=None):
        query = self.q_proj(hidden_states)
        key = self.k_proj(hidden_states)
        value = self.v_proj(hidden_states)
        query = self._split_heads(query, self.num_heads, self.head_dim)
        key = self._split_heads(key, self.num_heads, self.head_dim)
        value = self._split_heads(value, self.num_heads, self.head_dim)
        if layer_past is not None:
            key, value = layer_past.update(key, value, self.layer_id)
        attn_output, attn_weights = self._attn(query, key, value, attention_mask)
        attn_output = self._merge_heads(attn_output, self.num_heads, self.head_dim)
        attn_output = self.out_proj(attn_output)
        attn_output = self.resid_dropout(attn_output)
        return attn_output, attn_weights


class GPTNeoAttention(nn.Module):
    def __init__(self, config, layer_id=0):
        super().__init__()
        self.layer_id = layer_id
        self.attention_layers = config.attention_layers
        self.attention_type = self.attention_layers[layer_id]
        if self.attention_type not in ("global", "local"):
            raise NotImplementedError(self.attention_type)
        self.attention = GPTNeoSelfAttention(config, self.attention_type, layer_id)

    def forward(self, hidden_states, layer_past=None, attention_mask=None, use_cache=False,
                output_attentions=False, cache_position=None):
        return self.attention(hidden_states, attention_mask=attention_mask, layer_past=layer_past,
                              use_cache=use_cache, output_attentions=output_attentions,
                              cache_position=cache_position)


class GPTNeoMLP(nn.Module):
    def __init__(self, intermediate_size, config):
        super().__init__()
        embed_dim = config.hidden_size
        self.c_fc = nn.Linear(embed_dim, intermediate_size)
        self.c_proj = nn.Linear(intermediate_size, embed_dim)
        self.act = act_fn(config.activation_function)
        self.dropout = nn.Dropout(float(config.resid_dropout))

    def forward(self, hidden_states):
        hidden_states = self.c_fc(hidden_states)
        hidden_states = self.act(hidden_states)
        hidden_states = self.c_proj(hidden_states)
        hidden_states = self.dropout(hidden_states)
        return hidden_states


class GPTNeoBlock(GradientCheckpointingLayer):
    def __init__(self, config, layer_id):
        super().__init__()
        h = config.hidden_size
        inner_dim = config.intermediate_size if config.intermediate_size is not None else 4 * h
        self.ln_1 = nn.LayerNorm(h, eps=config.layer_norm_epsilon)
        self.attn = GPTNeoAttention(config, layer_id)
        self.ln_2 = nn.LayerNorm(h, eps=config.layer_norm_epsilon)
        self.mlp = GPTNeoMLP(inner_dim, config)

    def forward(self, hidden_states, layer_past=None, attention_mask=None, use_cache=False,
                output_attentions=False, cache_position=None):
        residual = hidden_states
        hidden_states = self.ln_1(hidden_states)
        attn_output, attn_weights = self.attn(hidden_states, layer_past=layer_past, attention_mask=attention_mask,
                                              use_cache=use_cache, output_attentions=output_attentions,
                                              cache_position=cache_position)
        hidden_states = attn_output + residual
        residual = hidden_states
        hidden_states = self.ln_2(hidden_states)
        feed_forward_hidden_states = self.mlp(hidden_states)
        hidden_states = residual + feed_forward_hidden_states
        return hidden_states, attn_weights


class GPTNeoModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.wte = nn.Embedding(config.vocab_size, self.embed_dim)
        self.wpe = nn.Embedding(config.max_position_embeddings, self.embed_dim)
        self.drop = nn.Dropout(float(config.embed_dropout))
        self.h = nn.ModuleList([GPTNeoBlock(config, layer_id=i) for i in range(config.num_layers)])
        self.ln_f = nn.LayerNorm(self.embed_dim, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False
        inputs_embeds = self.wte(input_ids)
        past_key_values = DynamicCache(self.config) if use_cache else None
        seq_length = inputs_embeds.shape[1]
        cache_position = torch.arange(0, 0 + seq_length, device=inputs_embeds.device)
        position_ids = cache_position.unsqueeze(0)
        causal_mask = gptj_update_causal_mask(attention_mask, inputs_embeds, cache_position)
        position_embeds = self.wpe(position_ids)
        hidden_states = inputs_embeds + position_embeds
        hidden_states = self.drop(hidden_states)
        output_shape = (-1, seq_length, hidden_states.size(-1))
        for i, block in enumerate(self.h):
            outputs = block(hidden_states, layer_past=past_key_values, attention_mask=causal_mask,
                            use_cache=use_cache, output_attentions=False, cache_position=cache_position)
            hidden_states = outputs[0]
        hidden_states = self.ln_f(hidden_states)
        hidden_states = hidden_states.view(output_shape)
        return Output(last_hidden_state=hidden_states, past_key_values=past_key_values)


class GPTNeoForCausalLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = GPTNeoModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    def get_input_embeddings(self):
        return self.transformer.wte

    def forward(self, input_ids, attention_mask=None, labels=None, use_cache=None):
        transformer_outputs = self.transformer(input_ids, attention_mask=attention_mask, use_cache=use_cache)
        hidden_states = transformer_outputs["last_hidden_state"]
        lm_logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            labels = labels.to(lm_logits.device)
            _mark("loss")
            lm_logits = lm_logits.to(torch.float32)
            loss = causal_lm_loss(self.config.model_type, lm_logits, labels, self.config.vocab_size)
            lm_logits = lm_logits.to(hidden_states.dtype)
            loss = loss.to(hidden_states.dtype)
        return Output(loss=loss, logits=lm_logits, past_key_values=transformer_outputs.past_key_values)


# ============================================================================================
# gpt_bigcode (models/gpt_bigcode/modeling_gpt_bigcode.py)
# v4.57 note: GPTBigCodeBlock is a plain nn.Module (not GradientCheckpointingLayer) and GPTBigCodeModel.forward
# never reads self.gradient_checkpointing, so gradient_checkpointing_enable() only sets flags: no layer is
# checkpointed and use_cache is not forced off (fixed upstream after v4.57, PR #41818).
def bigcode_eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        causal_mask = attention_mask[:, :, :, : key_states.shape[-2]]
        attn_weights = attn_weights + causal_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)
    attn_output = attn_output.transpose(1, 2).contiguous()
    return attn_output, attn_weights


class GPTBigCodeAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.config = config
        self.mask_value = None
        self.multi_query = config.multi_query
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.kv_heads = 1 if self.multi_query else self.num_heads
        self.kv_dim = self.kv_heads * self.head_dim
        self.num_key_value_groups = self.num_heads // self.kv_heads
        self.split_size = self.embed_dim
        self.is_causal = True
        self.scale_attn_weights = config.scale_attn_weights
        self.scaling = self.head_dim ** -0.5 if config.scale_attn_weights else 1.0
        self.layer_idx = layer_idx
        self.c_attn = nn.Linear(self.embed_dim, self.embed_dim + 2 * self.kv_dim)
        self.c_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.attn_dropout = config.attn_pdrop
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states, layer_past=None, attention_mask=None, use_cache=False,
                output_attentions=False, cache_position=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        if self.multi_query:
            query, key, value = (self.c_attn(hidden_states).unsqueeze(1)
                                 .split((self.embed_dim, self.kv_dim, self.kv_dim), dim=3))
            query = query.view(*input_shape, -1, self.head_dim).transpose(1, 2)
        else:
            query, key, value = (self.c_attn(hidden_states)
                                 .view(*hidden_states.shape[:2], self.num_heads, 3 * self.head_dim)
                                 .transpose(1, 2).split(3 * [self.head_dim], dim=3))
        if layer_past is not None:
            key, value = layer_past.update(key, value, self.layer_idx)
        attn_output, attn_weights = bigcode_eager_attention_forward(
            self, query, key, value, attention_mask,
            dropout=0.0 if not self.training else self.attn_dropout, scaling=self.scaling)
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        attn_output = self.c_proj(attn_output)
        attn_output = self.resid_dropout(attn_output)
        return attn_output, attn_weights


class GPTBigCodeMLP(nn.Module):
    def __init__(self, intermediate_size, config):
        super().__init__()
        embed_dim = config.hidden_size
        self.c_fc = nn.Linear(embed_dim, intermediate_size)
        self.c_proj = nn.Linear(intermediate_size, embed_dim)
        self.act = act_fn(config.activation_function)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states):
        hidden_states = self.c_fc(hidden_states)
        hidden_states = self.act(hidden_states)
        hidden_states = self.c_proj(hidden_states)
        hidden_states = self.dropout(hidden_states)
        return hidden_states


class GPTBigCodeBlock(nn.Module):  # sic: not a GradientCheckpointingLayer in v4.57
    def __init__(self, config, layer_idx):
        super().__init__()
        h = config.hidden_size
        self.inner_dim = config.n_inner if config.n_inner is not None else 4 * h
        self.ln_1 = nn.LayerNorm(h, eps=config.layer_norm_epsilon)
        self.attn = GPTBigCodeAttention(config, layer_idx=layer_idx)
        self.ln_2 = nn.LayerNorm(h, eps=config.layer_norm_epsilon)
        if config.add_cross_attention:
            raise NotImplementedError("cross attention")
        self.mlp = GPTBigCodeMLP(self.inner_dim, config)

    def forward(self, hidden_states, layer_past=None, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, use_cache=False, output_attentions=False, cache_position=None,
                **kwargs):
        residual = hidden_states
        hidden_states = self.ln_1(hidden_states)
        attn_outputs = self.attn(hidden_states, layer_past=layer_past, attention_mask=attention_mask,
                                 use_cache=use_cache, output_attentions=output_attentions,
                                 cache_position=cache_position, **kwargs)
        attn_output = attn_outputs[0]
        outputs = attn_outputs[1:]
        hidden_states = attn_output + residual
        residual = hidden_states
        hidden_states = self.ln_2(hidden_states)
        feed_forward_hidden_states = self.mlp(hidden_states)
        hidden_states = residual + feed_forward_hidden_states
        return (hidden_states,) + outputs


class GPTBigCodeModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.multi_query = config.multi_query
        self.embed_dim = config.hidden_size
        self.wte = nn.Embedding(config.vocab_size, self.embed_dim)
        self.wpe = nn.Embedding(config.max_position_embeddings, self.embed_dim)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([GPTBigCodeBlock(config, layer_idx=i) for i in range(config.num_hidden_layers)])
        self.ln_f = nn.LayerNorm(self.embed_dim, eps=config.layer_norm_epsilon)
        mp = config.max_position_embeddings
        self.register_buffer("bias", torch.tril(torch.ones((mp, mp), dtype=torch.bool)), persistent=False)
        self.gradient_checkpointing = False  # set by gradient_checkpointing_enable, never read (v4.57)

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        input_shape = input_ids.size()
        input_ids = input_ids.view(-1, input_shape[-1])
        past_key_values = DynamicCache(self.config) if use_cache else None
        inputs_embeds = self.wte(input_ids)
        cache_position = torch.arange(0, 0 + inputs_embeds.shape[1], device=inputs_embeds.device)
        position_ids = cache_position.unsqueeze(0)
        causal_mask = _eager_causal_mask(inputs_embeds, attention_mask, cache_position)  # create_causal_mask
        encoder_attention_mask = None
        position_embeds = self.wpe(position_ids)
        hidden_states = inputs_embeds + position_embeds.to(inputs_embeds.device)
        hidden_states = self.drop(hidden_states)
        output_shape = input_shape + (hidden_states.size(-1),)
        for i, block in enumerate(self.h):
            outputs = block(hidden_states, past_key_values, causal_mask, None,
                            encoder_attention_mask=encoder_attention_mask, use_cache=use_cache,
                            output_attentions=False, cache_position=cache_position)
            hidden_states = outputs[0]
        hidden_states = self.ln_f(hidden_states)
        hidden_states = hidden_states.view(output_shape)
        return Output(last_hidden_state=hidden_states, past_key_values=past_key_values)


class GPTBigCodeForCausalLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = GPTBigCodeModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    def get_input_embeddings(self):
        return self.transformer.wte

    def forward(self, input_ids, attention_mask=None, labels=None, use_cache=None):
        transformer_outputs = self.transformer(input_ids, attention_mask=attention_mask, use_cache=use_cache)
        hidden_states = transformer_outputs["last_hidden_state"]
        lm_logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            _mark("loss")
            loss = causal_lm_loss(self.config.model_type, lm_logits, labels, self.config.vocab_size)
        return Output(loss=loss, logits=lm_logits, past_key_values=transformer_outputs.past_key_values)


# ============================================================================================
# codegen (models/codegen/modeling_codegen.py; rotary helpers are GPT-J's)
def create_sinusoidal_positions(num_pos, dim):
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.int64) / dim))
    sinusoid_inp = torch.einsum("i , j -> i j", torch.arange(num_pos, dtype=torch.int64).float(), inv_freq).float()
    return torch.cat((torch.sin(sinusoid_inp), torch.cos(sinusoid_inp)), dim=1)


def rotate_every_two(x):
    x1 = x[:, :, :, ::2]
    x2 = x[:, :, :, 1::2]
    x = torch.stack((-x2, x1), dim=-1)
    return x.flatten(-2)


def gptj_apply_rotary_pos_emb(tensor, sin, cos):
    sin = torch.repeat_interleave(sin[:, :, None, :], 2, 3)
    cos = torch.repeat_interleave(cos[:, :, None, :], 2, 3)
    return (tensor * cos) + (rotate_every_two(tensor) * sin)


class CodeGenAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        max_positions = config.max_position_embeddings
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)
        self.layer_idx = layer_idx
        self.embed_dim = config.hidden_size
        self.num_attention_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_attention_heads
        # plain tensor attributes (neither parameters nor buffers): model.to(dtype) leaves them in fp32
        self.scale_attn = torch.sqrt(torch.tensor(self.head_dim, dtype=torch.float32)).to(torch.get_default_dtype())
        self.qkv_proj = nn.Linear(self.embed_dim, self.embed_dim * 3, bias=False)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=False)
        self.rotary_dim = config.rotary_dim
        pos_embd_dim = self.rotary_dim or self.embed_dim
        self.embed_positions = create_sinusoidal_positions(max_positions, pos_embd_dim)

    def _split_heads(self, x, n_head, dim_head, mp_num):
        reshaped = x.reshape(x.shape[:-1] + (n_head // mp_num, dim_head))
        reshaped = reshaped.reshape(x.shape[:-2] + (-1,) + reshaped.shape[-1:])
        return reshaped

    def _merge_heads(self, tensor, num_attention_heads, attn_head_size):
        if len(tensor.shape) == 5:
            tensor = tensor.permute(0, 1, 3, 2, 4).contiguous()
        elif len(tensor.shape) == 4:
            tensor = tensor.permute(0, 2, 1, 3).contiguous()
        else:
            raise ValueError(len(tensor.shape))
        return tensor.view(tensor.size()[:-2] + (num_attention_heads * attn_head_size,))

    def _attn(self, query, key, value, attention_mask=None):
        query = query.to(torch.float32)
        key = key.to(torch.float32)
        attn_weights = torch.matmul(query, key.transpose(-1, -2))
        if attention_mask is not None:
            causal_mask = attention_mask[:, :, :, : key.shape[-2]]
            attn_weights += causal_mask
        attn_weights = attn_weights / self.scale_attn
        attn_weights = nn.Softmax(dim=-1)(attn_weights)
        attn_weights = attn_weights.to(value.dtype)
        attn_weights = self.attn_dropout(attn_weights)
        attn_output = torch.matmul(attn_weights, value)
        return attn_output, attn_weights

    def forward(self, hidden_states, layer_past=None, attention_mask=None, position_ids=None, use_cache=False,
                output_attentions=False, cache_position=None):
        qkv = self.qkv_proj(hidden_states)
        mp_num = 4  # logical TPU-v4 cores of the original checkpoints
        qkv_split = qkv.reshape(qkv.shape[:-1] + (mp_num, -1))
        local_dim = self.head_dim * self.num_attention_heads // mp_num
        query, value, key = torch.split(qkv_split, local_dim, dim=-1)
        query = self._split_heads(query, self.num_attention_heads, self.head_dim, mp_num=mp_num)
        key = self._split_heads(key, self.num_attention_heads, self.head_dim, mp_num=mp_num)
        value = self._split_heads(value, self.num_attention_heads, self.head_dim, mp_num=mp_num)
        value = value.permute(0, 2, 1, 3)
        embed_positions = self.embed_positions
        if embed_positions.device != position_ids.device:
            embed_positions = embed_positions.to(position_ids.device)
            self.embed_positions = embed_positions
        sincos = embed_positions[position_ids]
        sin, cos = torch.split(sincos, sincos.shape[-1] // 2, dim=-1)
        if self.rotary_dim is not None:
            k_rot = key[:, :, :, : self.rotary_dim]
            k_pass = key[:, :, :, self.rotary_dim:]
            q_rot = query[:, :, :, : self.rotary_dim]
            q_pass = query[:, :, :, self.rotary_dim:]
            k_rot = gptj_apply_rotary_pos_emb(k_rot, sin, cos)
            q_rot = gptj_apply_rotary_pos_emb(q_rot, sin, cos)
            key = torch.cat([k_rot, k_pass], dim=-1)
            query = torch.cat([q_rot, q_pass], dim=-1)
        else:
            key = gptj_apply_rotary_pos_emb(key, sin, cos)
            query = gptj_apply_rotary_pos_emb(query, sin, cos)
        key = key.permute(0, 2, 1, 3)
        query = query.permute(0, 2, 1, 3)
        if layer_past is not None:
            key, value = layer_past.update(key.to(hidden_states.dtype), value, self.layer_idx)
        attn_output, attn_weights = self._attn(query, key, value, attention_mask)
        attn_output = self._merge_heads(attn_output, self.num_attention_heads, self.head_dim)
        attn_output = self.out_proj(attn_output)
        attn_output = self.resid_dropout(attn_output)
        return attn_output, attn_weights


class CodeGenMLP(nn.Module):
    def __init__(self, intermediate_size, config):
        super().__init__()
        embed_dim = config.n_embd
        self.fc_in = nn.Linear(embed_dim, intermediate_size)
        self.fc_out = nn.Linear(intermediate_size, embed_dim)
        self.act = act_fn(config.activation_function)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states):
        hidden_states = self.fc_in(hidden_states)
        hidden_states = self.act(hidden_states)
        hidden_states = self.fc_out(hidden_states)
        hidden_states = self.dropout(hidden_states)
        return hidden_states


class CodeGenBlock(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx):
        super().__init__()
        inner_dim = config.n_inner if config.n_inner is not None else 4 * config.n_embd
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CodeGenAttention(config, layer_idx)
        self.mlp = CodeGenMLP(inner_dim, config)

    def forward(self, hidden_states, layer_past=None, attention_mask=None, position_ids=None, use_cache=False,
                output_attentions=False, cache_position=None):
        residual = hidden_states
        hidden_states = self.ln_1(hidden_states)
        attn_outputs, attn_weights = self.attn(hidden_states=hidden_states, layer_past=layer_past,
                                               attention_mask=attention_mask, position_ids=position_ids,
                                               use_cache=use_cache, output_attentions=output_attentions,
                                               cache_position=cache_position)
        feed_forward_hidden_states = self.mlp(hidden_states)
        hidden_states = attn_outputs + feed_forward_hidden_states + residual
        return hidden_states, attn_weights


class CodeGenModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_dim = config.n_embd
        self.vocab_size = config.vocab_size
        self.wte = nn.Embedding(config.vocab_size, self.embed_dim)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([CodeGenBlock(config, layer_idx=i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(self.embed_dim, eps=config.layer_norm_epsilon)
        self.rotary_dim = min(config.rotary_dim, config.n_ctx // config.num_attention_heads)
        self.gradient_checkpointing = False

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False
        inputs_embeds = self.wte(input_ids)
        past_key_values = DynamicCache(self.config) if use_cache else None
        seq_length = inputs_embeds.shape[1]
        cache_position = torch.arange(0, 0 + seq_length, device=inputs_embeds.device)
        position_ids = cache_position.unsqueeze(0)
        causal_mask = gptj_update_causal_mask(attention_mask, inputs_embeds, cache_position)
        hidden_states = inputs_embeds
        hidden_states = self.drop(hidden_states)
        output_shape = (-1, seq_length, hidden_states.size(-1))
        for i, block in enumerate(self.h):
            outputs = block(hidden_states, layer_past=past_key_values, attention_mask=causal_mask,
                            position_ids=position_ids, use_cache=use_cache, output_attentions=False,
                            cache_position=cache_position)
            hidden_states = outputs[0]
        hidden_states = self.ln_f(hidden_states)
        hidden_states = hidden_states.view(output_shape)
        return Output(last_hidden_state=hidden_states, past_key_values=past_key_values)


class CodeGenForCausalLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = CodeGenModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size)  # with bias
        if config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    def get_input_embeddings(self):
        return self.transformer.wte

    def forward(self, input_ids, attention_mask=None, labels=None, use_cache=None):
        transformer_outputs = self.transformer(input_ids, attention_mask=attention_mask, use_cache=use_cache)
        hidden_states = transformer_outputs["last_hidden_state"]
        lm_logits = self.lm_head(hidden_states).to(torch.float32)
        loss = None
        if labels is not None:
            labels = labels.to(lm_logits.device)
            _mark("loss")
            loss = causal_lm_loss(self.config.model_type, lm_logits, labels, self.config.vocab_size)
            loss = loss.to(hidden_states.dtype)
        return Output(loss=loss, logits=lm_logits, past_key_values=transformer_outputs.past_key_values)


# ============================================================================================
# gemma, gemma2 (models/gemma/modeling_gemma.py, models/gemma2/modeling_gemma2.py and their
# configuration_*.py, commit 3553f0bc2301). Both: RMSNorm computing in fp32 with (1 + weight) and the cast
# after the product, the embedding multiplied by sqrt(hidden_size) held as a 0-dim tensor in the embedding's
# dtype, head_dim from the config (num_heads * head_dim != hidden_size), GeGLU MLP, tied lm_head.
# gemma2 adds the post-attention / pre- and post-feed-forward norms, tanh soft-capping of the attention
# scores and of the logits, query_pre_attn_scalar for the scaling, sliding-window and global layers
# alternating (layer_types), and builds no KV cache in training (Gemma2Model.forward: `not self.training`).
_DEFAULTS["gemma"] = dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                          num_attention_heads=16, num_key_value_heads=16, head_dim=256,
                          hidden_act="gelu_pytorch_tanh", max_position_embeddings=8192, initializer_range=0.02,
                          rms_norm_eps=1e-6, use_cache=True, pad_token_id=0, tie_word_embeddings=True,
                          rope_theta=10000.0, attention_bias=False, attention_dropout=0.0, layer_types=None)
_DEFAULTS["gemma2"] = dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                           num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                           hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192,
                           initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True, pad_token_id=0,
                           tie_word_embeddings=True, rope_theta=10000.0, attention_bias=False,
                           attention_dropout=0.0, query_pre_attn_scalar=256, sliding_window=4096, layer_types=None,
                           final_logit_softcapping=30.0, attn_logit_softcapping=50.0)


def _gemma_layer_types(config):
    """GemmaConfig: every layer full_attention; Gemma2Config: sliding_attention on even layers
    (`bool((i + 1) % 2)`), full_attention on odd ones."""
    if config.layer_types is None:
        if config.model_type == "gemma2":
            config.layer_types = ["sliding_attention" if (i + 1) % 2 else "full_attention"
                                  for i in range(config.num_hidden_layers)]
        else:
            config.layer_types = ["full_attention"] * config.num_hidden_layers
    if len(config.layer_types) != config.num_hidden_layers:
        raise ValueError("len(layer_types) != num_hidden_layers")


class GemmaRMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def _norm(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x):
        output = self._norm(x.float())
        output = output * (1.0 + self.weight.float())  # product in fp32, cast afterwards (unlike llama)
        return output.type_as(x)


class GemmaMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        H, inter = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(H, inter, bias=False)
        self.up_proj = nn.Linear(H, inter, bias=False)
        self.down_proj = nn.Linear(inter, H, bias=False)
        # GemmaMLP reads hidden_act, Gemma2MLP hidden_activation
        self.act_fn = act_fn(config.hidden_activation if config.model_type == "gemma2" else config.hidden_act)

    def forward(self, x):
        down_proj = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
        return down_proj


def gemma_eager_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                                  softcap=None, **kwargs):
    """gemma: llama's eager_attention_forward; gemma2: the same with scores / cap, tanh, * cap before the
    mask (the sliding window only changes the mask's values, not its shape)."""
    if scaling is None:
        scaling = module.head_dim ** -0.5
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if softcap is not None:
        attn_weights = attn_weights / softcap
        attn_weights = torch.tanh(attn_weights)
        attn_weights = attn_weights * softcap
    if attention_mask is not None:
        causal_mask = attention_mask[:, :, :, : key_states.shape[-2]]
        attn_weights = attn_weights + causal_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)
    attn_output = attn_output.transpose(1, 2).contiguous()
    return attn_output, attn_weights


class GemmaAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.gemma2 = config.model_type == "gemma2"
        self.scaling = (config.query_pre_attn_scalar if self.gemma2 else self.head_dim) ** -0.5
        self.attention_dropout = config.attention_dropout
        H, nh, nkv, b = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.attention_bias
        self.q_proj = nn.Linear(H, nh * self.head_dim, bias=b)
        self.k_proj = nn.Linear(H, nkv * self.head_dim, bias=b)
        self.v_proj = nn.Linear(H, nkv * self.head_dim, bias=b)
        self.o_proj = nn.Linear(nh * self.head_dim, H, bias=b)
        if self.gemma2:
            self.attn_logit_softcapping = config.attn_logit_softcapping
            self.sliding_window = (config.sliding_window if config.layer_types[layer_idx] == "sliding_attention"
                                   else None)

    def forward(self, hidden_states, position_embeddings, attention_mask, past_key_values=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if past_key_values is not None:
            key_states, value_states = past_key_values.update(key_states, value_states, self.layer_idx)
        if self.gemma2:
            attn_output, attn_weights = gemma_eager_attention_forward(
                self, query_states, key_states, value_states, attention_mask,
                dropout=self.attention_dropout if self.training else 0.0, scaling=self.scaling,
                sliding_window=self.sliding_window, softcap=self.attn_logit_softcapping)
        else:
            attn_output, attn_weights = gemma_eager_attention_forward(
                self, query_states, key_states, value_states, attention_mask,
                dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling)
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        attn_output = self.o_proj(attn_output)
        return attn_output, attn_weights


class GemmaDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.self_attn = GemmaAttention(config, layer_idx)
        self.mlp = GemmaMLP(config)
        self.input_layernorm = GemmaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = GemmaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.attention_type = config.layer_types[layer_idx]

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False, cache_position=None, position_embeddings=None, **kwargs):
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states, _ = self.self_attn(hidden_states=hidden_states, attention_mask=attention_mask,
                                          past_key_values=past_key_values,
                                          position_embeddings=position_embeddings)
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states = self.mlp(hidden_states)
        hidden_states = residual + hidden_states
        return hidden_states


class Gemma2DecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attention_type = config.layer_types[layer_idx]
        self.self_attn = GemmaAttention(config, layer_idx)
        self.mlp = GemmaMLP(config)
        eps = config.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(config.hidden_size, eps=eps)
        self.post_attention_layernorm = GemmaRMSNorm(config.hidden_size, eps=eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(config.hidden_size, eps=eps)
        self.post_feedforward_layernorm = GemmaRMSNorm(config.hidden_size, eps=eps)

    def forward(self, hidden_states, position_embeddings, attention_mask=None, position_ids=None,
                past_key_values=None, output_attentions=False, use_cache=False, cache_position=None, **kwargs):
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states, self_attn_weights = self.self_attn(hidden_states=hidden_states,
                                                          position_embeddings=position_embeddings,
                                                          attention_mask=attention_mask,
                                                          past_key_values=past_key_values)
        hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.pre_feedforward_layernorm(hidden_states)
        hidden_states = self.mlp(hidden_states)
        hidden_states = self.post_feedforward_layernorm(hidden_states)
        hidden_states = residual + hidden_states
        outputs = (hidden_states,)  # sic: a tuple in v4.57 (gemma's layer returns the tensor)
        return outputs


class GemmaModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.gemma2 = config.model_type == "gemma2"
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        layer_cls = Gemma2DecoderLayer if self.gemma2 else GemmaDecoderLayer
        self.layers = nn.ModuleList([layer_cls(config, i) for i in range(config.num_hidden_layers)])
        self.norm = GemmaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)
        self.gradient_checkpointing = False

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        # check_model_inputs (both): use_cache from config, forced off under gradient checkpointing
        if use_cache is None:
            use_cache = self.config.use_cache
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False
        inputs_embeds = self.embed_tokens(input_ids)
        past_key_values = None
        if use_cache and (not self.gemma2 or not self.training):  # gemma2: no cache in training
            past_key_values = DynamicCache(self.config)
        cache_position = torch.arange(0, 0 + inputs_embeds.shape[1], device=inputs_embeds.device)
        position_ids = cache_position.unsqueeze(0)
        if self.gemma2:  # both masks are built whatever the layer types
            causal_mask_mapping = {
                "full_attention": _eager_causal_mask(inputs_embeds, attention_mask, cache_position),
                "sliding_attention": _eager_causal_mask(inputs_embeds, attention_mask, cache_position,
                                                        self.config.sliding_window)}
        else:
            causal_mask_mapping = {"full_attention": _eager_causal_mask(inputs_embeds, attention_mask,
                                                                        cache_position)}
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        normalizer = torch.tensor(self.config.hidden_size ** 0.5, dtype=hidden_states.dtype)
        hidden_states = hidden_states * normalizer
        for decoder_layer in self.layers[: self.config.num_hidden_layers]:
            if self.gemma2:
                layer_outputs = decoder_layer(hidden_states, position_embeddings=position_embeddings,
                                              attention_mask=causal_mask_mapping[decoder_layer.attention_type],
                                              position_ids=position_ids, past_key_values=past_key_values,
                                              output_attentions=False, use_cache=use_cache,
                                              cache_position=cache_position)
                hidden_states = layer_outputs[0]
            else:
                hidden_states = decoder_layer(hidden_states,
                                              attention_mask=causal_mask_mapping[decoder_layer.attention_type],
                                              position_ids=position_ids, past_key_values=past_key_values,
                                              use_cache=use_cache, cache_position=cache_position,
                                              position_embeddings=position_embeddings)
        hidden_states = self.norm(hidden_states)
        return Output(last_hidden_state=hidden_states, past_key_values=past_key_values if use_cache else None)


class GemmaForCausalLM(nn.Module):
    """GemmaForCausalLM and Gemma2ForCausalLM (the latter soft-caps the logits: / cap, tanh, * cap)."""

    def __init__(self, config):
        super().__init__()
        _gemma_layer_types(config)
        self.config = config
        self.model = GemmaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def forward(self, input_ids, attention_mask=None, labels=None, use_cache=None, logits_to_keep=0):
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None)
        logits = self.lm_head(hidden_states[:, slice_indices, :])
        cap = getattr(self.config, "final_logit_softcapping", None) if self.config.model_type == "gemma2" else None
        if cap is not None:
            logits = logits / cap
            logits = torch.tanh(logits)
            logits = logits * cap
        loss = None
        if labels is not None:
            _mark("loss")
            loss = ForCausalLMLoss(logits=logits, labels=labels, vocab_size=self.config.vocab_size)
        return Output(loss=loss, logits=logits, past_key_values=outputs.past_key_values)


# ============================================================================================
# qwen3, phi3, phi (helper phiqwen3). Own code written from transformers v4.57 (commit 3553f0bc2301):
# models/qwen3/{modeling,configuration}_qwen3.py, models/phi3/{modeling,configuration}_phi3.py,
# models/phi/{modeling,configuration}_phi.py, modeling_rope_utils._compute_default_rope_parameters.
_DEFAULTS.update({
    # Qwen3Config.__init__ defaults
    "qwen3": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, head_dim=128, hidden_act="silu",
                  max_position_embeddings=32768, initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True,
                  tie_word_embeddings=False, rope_theta=10000.0, rope_scaling=None, attention_bias=False,
                  use_sliding_window=False, sliding_window=4096, max_window_layers=28, layer_types=None,
                  attention_dropout=0.0, pad_token_id=None),
    # Phi3Config.__init__ defaults
    "phi3": dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=None, resid_pdrop=0.0, embd_pdrop=0.0,
                 attention_dropout=0.0, hidden_act="silu", max_position_embeddings=4096,
                 original_max_position_embeddings=4096, initializer_range=0.02, rms_norm_eps=1e-5,
                 use_cache=True, tie_word_embeddings=False, rope_theta=10000.0, rope_scaling=None,
                 partial_rotary_factor=1.0, pad_token_id=32000, sliding_window=None),
    # PhiConfig.__init__ defaults (pad_token_id: PretrainedConfig's None)
    "phi": dict(vocab_size=51200, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                num_attention_heads=32, num_key_value_heads=None, resid_pdrop=0.0, embd_pdrop=0.0,
                attention_dropout=0.0, hidden_act="gelu_new", max_position_embeddings=2048,
                initializer_range=0.02, layer_norm_eps=1e-5, use_cache=True, tie_word_embeddings=False,
                rope_theta=10000.0, rope_scaling=None, partial_rotary_factor=0.5, qk_layernorm=False,
                pad_token_id=None),
})


def _phiqwen3_finish_config(config):
    """The parts of Qwen3Config / Phi3Config / PhiConfig.__init__ that derive attributes."""
    if config.num_key_value_heads is None:
        config.num_key_value_heads = config.num_attention_heads
    if config.model_type == "qwen3" and not getattr(config, "_pq_done", False):
        config.sliding_window = config.sliding_window if config.use_sliding_window else None
        if config.layer_types is None:
            config.layer_types = [
                "sliding_attention" if config.sliding_window is not None and i >= config.max_window_layers
                else "full_attention" for i in range(config.num_hidden_layers)]
        config._pq_done = True
    return config


class PartialRotaryEmbedding(RotaryEmbedding):
    """Phi3RotaryEmbedding / PhiRotaryEmbedding with rope_type default: inv_freq over
    int(head_dim * partial_rotary_factor) channels; cos/sin are (B, S, that many)."""

    def __init__(self, config):
        super().__init__(config)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        dim = int(head_dim * getattr(config, "partial_rotary_factor", 1.0))
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.original_inv_freq = self.inv_freq


# ---- qwen3 ----------------------------------------------------------------------------------
class Qwen3Attention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        # getattr(config, "head_dim", H // nh): Qwen3Config always sets head_dim (default 128)
        self.head_dim = config.head_dim if config.head_dim is not None else config.hidden_size // config.num_attention_heads
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim ** -0.5
        self.attention_dropout = config.attention_dropout
        H, nh, nkv, b = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.attention_bias
        self.q_proj = nn.Linear(H, nh * self.head_dim, bias=b)
        self.k_proj = nn.Linear(H, nkv * self.head_dim, bias=b)
        self.v_proj = nn.Linear(H, nkv * self.head_dim, bias=b)
        self.o_proj = nn.Linear(nh * self.head_dim, H, bias=b)
        self.q_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)  # per head, over head_dim
        self.k_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def forward(self, hidden_states, position_embeddings, attention_mask, past_key_values=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        # the norms run on the (B, S, heads, head_dim) view, before the transpose
        query_states = self.q_norm(self.q_proj(hidden_states).view(hidden_shape)).transpose(1, 2)
        key_states = self.k_norm(self.k_proj(hidden_states).view(hidden_shape)).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if past_key_values is not None:
            key_states, value_states = past_key_values.update(key_states, value_states, self.layer_idx)
        attn_output, attn_weights = llama_eager_attention_forward(
            self, query_states, key_states, value_states, attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling)
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        attn_output = self.o_proj(attn_output)
        return attn_output, attn_weights


class Qwen3DecoderLayer(LlamaDecoderLayer):
    def __init__(self, config, layer_idx):
        GradientCheckpointingLayer.__init__(self)
        self.self_attn = Qwen3Attention(config, layer_idx)
        self.mlp = LlamaMLP(config)  # Qwen3MLP: gate/up/down without bias
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.attention_type = config.layer_types[layer_idx]


class Qwen3Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([Qwen3DecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)  # dim = head_dim from the config
        self.gradient_checkpointing = False
        self.has_sliding_layers = "sliding_attention" in config.layer_types

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        if use_cache is None:  # check_model_inputs
            use_cache = self.config.use_cache
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False
        inputs_embeds = self.embed_tokens(input_ids)
        past_key_values = DynamicCache(self.config) if use_cache else None
        cache_position = torch.arange(0, 0 + inputs_embeds.shape[1], device=inputs_embeds.device)
        position_ids = cache_position.unsqueeze(0)
        causal_mask_mapping = {"full_attention": _eager_causal_mask(inputs_embeds, attention_mask, cache_position)}
        if self.has_sliding_layers:
            causal_mask_mapping["sliding_attention"] = _eager_causal_mask(
                inputs_embeds, attention_mask, cache_position, self.config.sliding_window)
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        for decoder_layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states = decoder_layer(hidden_states, attention_mask=causal_mask_mapping[decoder_layer.attention_type],
                                          position_ids=position_ids, past_key_values=past_key_values,
                                          use_cache=use_cache, cache_position=cache_position,
                                          position_embeddings=position_embeddings)
        hidden_states = self.norm(hidden_states)
        return Output(last_hidden_state=hidden_states, past_key_values=past_key_values if use_cache else None)


class Qwen3ForCausalLM(LlamaForCausalLM):
    """Qwen3ForCausalLM.forward is LlamaForCausalLM's (lm_head without bias, loss_function)."""

    def __init__(self, config):
        nn.Module.__init__(self)
        self.config = _phiqwen3_finish_config(config)
        self.model = Qwen3Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight


# ---- phi3 -----------------------------------------------------------------------------------
def partial_apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    """Phi3's apply_rotary_pos_emb: rotary on the first cos.shape[-1] channels, torch.cat with the rest
    (a cat even when the pass-through part is empty)."""
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    rotary_dim = cos.shape[-1]
    q_rot, q_pass = q[..., :rotary_dim], q[..., rotary_dim:]
    k_rot, k_pass = k[..., :rotary_dim], k[..., rotary_dim:]
    q_embed = torch.cat([(q_rot * cos) + (rotate_half(q_rot) * sin), q_pass], dim=-1)
    k_embed = torch.cat([(k_rot * cos) + (rotate_half(k_rot) * sin), k_pass], dim=-1)
    return q_embed, k_embed


class Phi3Attention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.scaling = self.head_dim ** -0.5
        self.attention_dropout = config.attention_dropout
        op_size = config.num_attention_heads * self.head_dim + 2 * (config.num_key_value_heads * self.head_dim)
        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=False)
        self.qkv_proj = nn.Linear(config.hidden_size, op_size, bias=False)

    def forward(self, hidden_states, position_embeddings, attention_mask, past_key_values=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        qkv = self.qkv_proj(hidden_states)
        query_pos = self.config.num_attention_heads * self.head_dim
        query_states = qkv[..., :query_pos]
        key_states = qkv[..., query_pos: query_pos + self.num_key_value_heads * self.head_dim]
        value_states = qkv[..., query_pos + self.num_key_value_heads * self.head_dim:]
        query_states = query_states.view(hidden_shape).transpose(1, 2)
        key_states = key_states.view(hidden_shape).transpose(1, 2)
        value_states = value_states.view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query_states, key_states = partial_apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if past_key_values is not None:
            key_states, value_states = past_key_values.update(key_states, value_states, self.layer_idx)
        attn_output, attn_weights = llama_eager_attention_forward(
            self, query_states, key_states, value_states, attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling)
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        attn_output = self.o_proj(attn_output)
        return attn_output, attn_weights


class Phi3MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.activation_fn = act_fn(config.hidden_act)

    def forward(self, hidden_states):
        up_states = self.gate_up_proj(hidden_states)
        gate, up_states = up_states.chunk(2, dim=-1)  # two views of gate_up_proj's output
        up_states = up_states * self.activation_fn(gate)
        return self.down_proj(up_states)


class Phi3DecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.self_attn = Phi3Attention(config, layer_idx)
        self.mlp = Phi3MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.resid_attn_dropout = nn.Dropout(config.resid_pdrop)
        self.resid_mlp_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False, cache_position=None, position_embeddings=None, **kwargs):
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states, self_attn_weights = self.self_attn(hidden_states=hidden_states, attention_mask=attention_mask,
                                                          past_key_values=past_key_values,
                                                          position_embeddings=position_embeddings)
        hidden_states = residual + self.resid_attn_dropout(hidden_states)
        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states = self.mlp(hidden_states)
        hidden_states = residual + self.resid_mlp_dropout(hidden_states)
        return hidden_states


class Phi3Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([Phi3DecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = PartialRotaryEmbedding(config)
        self.gradient_checkpointing = False

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        if use_cache is None:  # check_model_inputs
            use_cache = self.config.use_cache
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False
        inputs_embeds = self.embed_tokens(input_ids)  # no embedding dropout in v4.57 (embd_pdrop unused)
        past_key_values = DynamicCache(self.config) if use_cache else None
        cache_position = torch.arange(0, 0 + inputs_embeds.shape[1], device=inputs_embeds.device)
        position_ids = cache_position.unsqueeze(0)
        # create_causal_mask, or create_sliding_window_causal_mask when config.sliding_window is set
        causal_mask = _eager_causal_mask(inputs_embeds, attention_mask, cache_position, self.config.sliding_window)
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        for decoder_layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states = decoder_layer(hidden_states, attention_mask=causal_mask, position_ids=position_ids,
                                          past_key_values=past_key_values, use_cache=use_cache,
                                          cache_position=cache_position, position_embeddings=position_embeddings)
        hidden_states = self.norm(hidden_states)
        return Output(last_hidden_state=hidden_states, past_key_values=past_key_values if use_cache else None)


class Phi3ForCausalLM(LlamaForCausalLM):
    def __init__(self, config):
        nn.Module.__init__(self)
        self.config = _phiqwen3_finish_config(config)
        self.model = Phi3Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight


# ---- phi (Phi-1, Phi-1.5, Phi-2) --------------------------------------------------------------
class PhiAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim ** -0.5
        self.attention_dropout = config.attention_dropout
        H, nh, nkv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
        self.q_proj = nn.Linear(H, nh * self.head_dim, bias=True)
        self.k_proj = nn.Linear(H, nkv * self.head_dim, bias=True)
        self.v_proj = nn.Linear(H, nkv * self.head_dim, bias=True)
        self.dense = nn.Linear(nh * self.head_dim, H, bias=True)
        self.rotary_ndims = int(self.head_dim * config.partial_rotary_factor)
        self.qk_layernorm = config.qk_layernorm
        if self.qk_layernorm:
            self.q_layernorm = nn.LayerNorm(H // nh, eps=config.layer_norm_eps, elementwise_affine=True)
            self.k_layernorm = nn.LayerNorm(H // nh, eps=config.layer_norm_eps, elementwise_affine=True)

    def forward(self, hidden_states, position_embeddings, attention_mask, past_key_values=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        if self.qk_layernorm:
            query_states = self.q_layernorm(query_states)
            key_states = self.k_layernorm(key_states)
        cos, sin = position_embeddings
        query_rot, query_pass = query_states[..., : self.rotary_ndims], query_states[..., self.rotary_ndims:]
        key_rot, key_pass = key_states[..., : self.rotary_ndims], key_states[..., self.rotary_ndims:]
        query_rot, key_rot = apply_rotary_pos_emb(query_rot, key_rot, cos, sin)
        query_states = torch.cat((query_rot, query_pass), dim=-1)
        key_states = torch.cat((key_rot, key_pass), dim=-1)
        if past_key_values is not None:
            key_states, value_states = past_key_values.update(key_states, value_states, self.layer_idx)
        attn_output, attn_weights = llama_eager_attention_forward(
            self, query_states, key_states, value_states, attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling)
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        attn_output = self.dense(attn_output)
        return attn_output, attn_weights


class PhiMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.activation_fn = act_fn(config.hidden_act)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states):
        hidden_states = self.fc1(hidden_states)
        hidden_states = self.activation_fn(hidden_states)
        hidden_states = self.fc2(hidden_states)
        return hidden_states


class PhiDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.self_attn = PhiAttention(config, layer_idx)
        self.mlp = PhiMLP(config)
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                output_attentions=False, use_cache=False, cache_position=None, position_embeddings=None, **kwargs):
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        attn_outputs, self_attn_weights = self.self_attn(hidden_states=hidden_states, attention_mask=attention_mask,
                                                         past_key_values=past_key_values,
                                                         position_embeddings=position_embeddings)
        attn_outputs = self.resid_dropout(attn_outputs)
        # parallel block: the MLP reads the same input_layernorm output as the attention
        feed_forward_hidden_states = self.resid_dropout(self.mlp(hidden_states))
        hidden_states = attn_outputs + feed_forward_hidden_states + residual
        outputs = (hidden_states,)
        return outputs


class PhiModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([PhiDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.rotary_emb = PartialRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.embed_dropout = nn.Dropout(config.embd_pdrop)
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False
        inputs_embeds = self.embed_tokens(input_ids)
        past_key_values = DynamicCache(self.config) if use_cache else None
        cache_position = torch.arange(0, 0 + inputs_embeds.shape[1], device=inputs_embeds.device)
        position_ids = cache_position.unsqueeze(0)
        causal_mask = _eager_causal_mask(inputs_embeds, attention_mask, cache_position)
        inputs_embeds = self.embed_dropout(inputs_embeds)  # after the mask, before the layers
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        for decoder_layer in self.layers[: self.config.num_hidden_layers]:
            layer_outputs = decoder_layer(hidden_states, attention_mask=causal_mask, position_ids=position_ids,
                                          past_key_values=past_key_values, output_attentions=False,
                                          use_cache=use_cache, cache_position=cache_position,
                                          position_embeddings=position_embeddings)
            hidden_states = layer_outputs[0]
        hidden_states = self.final_layernorm(hidden_states)
        return Output(last_hidden_state=hidden_states, past_key_values=past_key_values if use_cache else None)


class PhiForCausalLM(LlamaForCausalLM):
    """PhiForCausalLM.forward is LlamaForCausalLM's; lm_head has a bias."""

    def __init__(self, config):
        nn.Module.__init__(self)
        self.config = _phiqwen3_finish_config(config)
        self.model = PhiModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight


# ============================================================================================
# mixtral / qwen2_moe (sparse mixture of experts)
# From models/mixtral/modeling_mixtral.py, models/qwen2_moe/modeling_qwen2_moe.py,
# models/*/configuration_*.py and utils/generic.py (check_model_inputs, OutputRecorder) at
# commit 3553f0bc2301. Attention, rotary, RMSNorm and the cache are the llama ones above.
_DEFAULTS["mixtral"] = dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, head_dim=None, hidden_act="silu", max_position_embeddings=4096 * 32,
    initializer_range=0.02, rms_norm_eps=1e-5, use_cache=True, pad_token_id=None, tie_word_embeddings=False,
    rope_theta=1e6, sliding_window=None, attention_dropout=0.0, num_experts_per_tok=2, num_local_experts=8,
    output_router_logits=False, router_aux_loss_coef=0.001, router_jitter_noise=0.0)
_DEFAULTS["qwen2_moe"] = dict(
    vocab_size=151936, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16,
    num_key_value_heads=16, hidden_act="silu", max_position_embeddings=32768, initializer_range=0.02,
    rms_norm_eps=1e-6, use_cache=True, tie_word_embeddings=False, rope_theta=10000.0, rope_scaling=None,
    use_sliding_window=False, sliding_window=4096, max_window_layers=28, attention_dropout=0.0,
    decoder_sparse_step=1, moe_intermediate_size=1408, shared_expert_intermediate_size=5632,
    num_experts_per_tok=4, num_experts=60, norm_topk_prob=False, output_router_logits=False,
    router_aux_loss_coef=0.001, mlp_only_layers=None, qkv_bias=True, layer_types=None, pad_token_id=None)

# measure_cpu.py sets this to a callable(layer_idx, counts) to record the realised tokens per expert
EXPERT_COUNT_HOOK = None


def _moe_config(config):
    """The parts of MixtralConfig / Qwen2MoeConfig.__init__ that derive attributes."""
    if config.num_key_value_heads is None:
        config.num_key_value_heads = config.num_attention_heads
    if config.model_type == "qwen2_moe":
        config.sliding_window = config.sliding_window if config.use_sliding_window else 0
        config.mlp_only_layers = [] if config.mlp_only_layers is None else config.mlp_only_layers
        if config.layer_types is None:
            config.layer_types = ["sliding_attention"
                                  if bool((i + 1) % 2) and i < config.max_window_layers and config.use_sliding_window
                                  else "full_attention" for i in range(config.num_hidden_layers)]


class MoeExpertMLP(nn.Module):
    """MixtralMLP (w1, w3, w2) or Qwen2MoeMLP (gate_proj, up_proj, down_proj)."""

    def __init__(self, config, intermediate_size, mixtral):
        super().__init__()
        H, act = config.hidden_size, config.hidden_act
        self.mixtral = mixtral
        if mixtral:
            self.w1 = nn.Linear(H, intermediate_size, bias=False)
            self.w2 = nn.Linear(intermediate_size, H, bias=False)
            self.w3 = nn.Linear(H, intermediate_size, bias=False)
        else:
            self.gate_proj = nn.Linear(H, intermediate_size, bias=False)
            self.up_proj = nn.Linear(H, intermediate_size, bias=False)
            self.down_proj = nn.Linear(intermediate_size, H, bias=False)
        self.act_fn = act_fn(act)

    def forward(self, x):
        if self.mixtral:
            current_hidden_states = self.act_fn(self.w1(x)) * self.w3(x)
            current_hidden_states = self.w2(current_hidden_states)
            return current_hidden_states
        down_proj = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
        return down_proj


class MoeExperts(nn.ModuleList):
    """MixtralExperts / Qwen2MoeExperts (an nn.ModuleList with a forward)."""

    def __init__(self, config, n, intermediate_size, mixtral, layer_idx):
        super().__init__()
        self.num_experts = n
        self.layer_idx = layer_idx
        for _ in range(n):
            self.append(MoeExpertMLP(config, intermediate_size, mixtral))

    def forward(self, hidden_states, top_k_index, top_k_weights):
        final_hidden_states = torch.zeros_like(hidden_states)
        expert_mask = torch.nn.functional.one_hot(top_k_index, num_classes=self.num_experts).permute(2, 1, 0)
        expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
        if EXPERT_COUNT_HOOK is not None:
            with torch.no_grad():
                EXPERT_COUNT_HOOK(self.layer_idx, [int(c) for c in expert_mask.sum(dim=(-1, -2))])
        for expert_idx in expert_hit:
            idx, top_x = torch.where(expert_mask[expert_idx].squeeze(0))
            current_state = hidden_states[None, top_x].reshape(-1, hidden_states.shape[-1])
            current_hidden_states = self[expert_idx](current_state) * top_k_weights[top_x, idx, None]
            final_hidden_states.index_add_(0, top_x, current_hidden_states.to(hidden_states.dtype))
        return final_hidden_states


class MixtralSparseMoeBlock(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.jitter_noise = config.router_jitter_noise
        self.gate = nn.Linear(config.hidden_size, config.num_local_experts, bias=False)
        self.experts = MoeExperts(config, config.num_local_experts, config.intermediate_size, True, layer_idx)

    def route_tokens_to_experts(self, router_logits):
        routing_weights = torch.nn.functional.softmax(router_logits.float(), dim=-1)
        top_k_weights, top_k_index = torch.topk(routing_weights, self.top_k, dim=-1)
        top_k_weights /= top_k_weights.sum(dim=-1, keepdim=True)
        return top_k_index, top_k_weights.to(router_logits.dtype)

    def forward(self, hidden_states):
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        if self.training and self.jitter_noise > 0:
            hidden_states *= torch.empty_like(hidden_states).uniform_(1.0 - self.jitter_noise, 1.0 + self.jitter_noise)
        hidden_states = hidden_states.view(-1, hidden_states.shape[-1])
        router_logits = self.gate(hidden_states)
        top_k_index, top_k_weights = self.route_tokens_to_experts(router_logits)
        hidden_states = self.experts(hidden_states, top_k_index, top_k_weights.to(hidden_states.dtype))
        hidden_states = hidden_states.reshape(batch_size, sequence_length, hidden_dim)
        return hidden_states


class Qwen2MoeSparseMoeBlock(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = MoeExperts(config, config.num_experts, config.moe_intermediate_size, False, layer_idx)
        self.num_experts_per_tok = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.shared_expert = MoeExpertMLP(config, config.shared_expert_intermediate_size, False)
        self.shared_expert_gate = torch.nn.Linear(config.hidden_size, 1, bias=False)

    def route_tokens_to_experts(self, hidden_states, router_logits):
        routing_weights = F.softmax(router_logits, dim=-1, dtype=torch.float)
        routing_weights, selected_experts = torch.topk(routing_weights, self.num_experts_per_tok, dim=-1)
        if self.norm_topk_prob:
            routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
        routing_weights = routing_weights.to(hidden_states.dtype)
        return selected_experts, routing_weights

    def forward(self, hidden_states):
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        hidden_states_reshaped = hidden_states.view(-1, hidden_dim)
        shared_expert_output = self.shared_expert(hidden_states_reshaped)
        router_logits = self.gate(hidden_states_reshaped)
        selected_experts, routing_weights = self.route_tokens_to_experts(hidden_states_reshaped, router_logits)
        expert_output = self.experts(hidden_states_reshaped, selected_experts, routing_weights)
        shared_expert_output = F.sigmoid(self.shared_expert_gate(hidden_states_reshaped)) * shared_expert_output
        expert_output += shared_expert_output
        expert_output = expert_output.reshape(batch_size, sequence_length, hidden_dim)
        return expert_output


class MoeDecoderLayer(GradientCheckpointingLayer):
    """MixtralDecoderLayer (block_sparse_moe) / Qwen2MoeDecoderLayer (mlp: sparse or dense)."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.self_attn = MoeAttention(config, layer_idx)
        self.mixtral = config.model_type == "mixtral"
        if self.mixtral:
            self.block_sparse_moe = MixtralSparseMoeBlock(config, layer_idx)
        elif (layer_idx not in config.mlp_only_layers) and (
                config.num_experts > 0 and (layer_idx + 1) % config.decoder_sparse_step == 0):
            self.mlp = Qwen2MoeSparseMoeBlock(config, layer_idx)
        else:
            self.mlp = MoeExpertMLP(config, config.intermediate_size, False)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False, cache_position=None, position_embeddings=None, **kwargs):
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states, _ = self.self_attn(hidden_states=hidden_states, attention_mask=attention_mask,
                                          past_key_values=past_key_values,
                                          position_embeddings=position_embeddings)
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states = self.block_sparse_moe(hidden_states) if self.mixtral else self.mlp(hidden_states)
        hidden_states = residual + hidden_states
        return hidden_states


class MoeAttention(LlamaAttention):
    """MixtralAttention (no biases) / Qwen2MoeAttention (q/k/v bias = config.qkv_bias)."""

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        bias = config.model_type == "qwen2_moe" and config.qkv_bias
        H, nh, nkv, d = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, self.head_dim
        self.q_proj = nn.Linear(H, nh * d, bias=bias)
        self.k_proj = nn.Linear(H, nkv * d, bias=bias)
        self.v_proj = nn.Linear(H, nkv * d, bias=bias)
        self.o_proj = nn.Linear(nh * d, H, bias=False)


class MoeModel(nn.Module):
    """MixtralModel / Qwen2MoeModel under check_model_inputs."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([MoeDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)
        self.gradient_checkpointing = False

    def forward(self, input_ids, attention_mask=None, use_cache=None, output_router_logits=False):
        if use_cache is None:
            use_cache = self.config.use_cache
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False
        # check_model_inputs with output_router_logits: OutputRecorder(nn.Linear, layer_name=...gate) wraps the
        # forward of every nn.Linear whose qualified name contains "block_sparse_moe.gate" (mixtral) or
        # "mlp.gate" (qwen2_moe: also a dense layer's mlp.gate_proj) and appends each output to a tuple
        collected = ()
        patched = []
        if output_router_logits:
            key = "block_sparse_moe.gate" if self.config.model_type == "mixtral" else "mlp.gate"

            def wrap(orig):
                def wrapped_forward(*args, **kwargs):
                    nonlocal collected
                    output = orig(*args, **kwargs)
                    collected += (output,)
                    return output
                return wrapped_forward

            for name, module in self.named_modules():
                if isinstance(module, nn.Linear) and key in name:
                    patched.append((module, module.forward))
                    module.forward = wrap(module.forward)
        try:
            mt = self.config.model_type
            if mt == "mixtral":
                if use_cache:
                    past_key_values = DynamicCache(self.config)
                inputs_embeds = self.embed_tokens(input_ids)
            else:
                inputs_embeds = self.embed_tokens(input_ids)
                if use_cache:
                    past_key_values = DynamicCache(self.config)
            if not use_cache:
                past_key_values = None
            cache_position = torch.arange(0, 0 + inputs_embeds.shape[1], device=inputs_embeds.device)
            position_ids = cache_position.unsqueeze(0)
            if mt == "mixtral":
                # create_causal_mask, or create_sliding_window_causal_mask when sliding_window is set
                causal_mask = _eager_causal_mask(inputs_embeds, attention_mask, cache_position,
                                                 self.config.sliding_window)
                masks = None
            else:
                # Qwen2MoeModel builds both masks on every call (no has_sliding_layers check); the sliding
                # one uses config.sliding_window, 0 unless use_sliding_window
                masks = {"full_attention": _eager_causal_mask(inputs_embeds, attention_mask, cache_position),
                         "sliding_attention": _eager_causal_mask(inputs_embeds, attention_mask, cache_position,
                                                                 self.config.sliding_window)}
            hidden_states = inputs_embeds
            position_embeddings = self.rotary_emb(hidden_states, position_ids)
            for i, decoder_layer in enumerate(self.layers[: self.config.num_hidden_layers]):
                mask = causal_mask if masks is None else masks[self.config.layer_types[i]]
                hidden_states = decoder_layer(hidden_states, attention_mask=mask, position_ids=position_ids,
                                              past_key_values=past_key_values, use_cache=use_cache,
                                              cache_position=cache_position,
                                              position_embeddings=position_embeddings)
            hidden_states = self.norm(hidden_states)
            out = Output(last_hidden_state=hidden_states,
                         past_key_values=past_key_values if (use_cache or mt == "mixtral") else None)
        finally:
            for module, orig in patched:
                module.forward = orig
        if output_router_logits:
            out["router_logits"] = collected
        return out


def load_balancing_loss_func(gate_logits, num_experts=None, top_k=2, attention_mask=None):
    """Same function in modeling_mixtral.py and modeling_qwen2_moe.py."""
    if gate_logits is None or not isinstance(gate_logits, tuple):
        return 0
    if isinstance(gate_logits, tuple):
        compute_device = gate_logits[0].device
        concatenated_gate_logits = torch.cat([layer_gate.to(compute_device) for layer_gate in gate_logits], dim=0)
    routing_weights = torch.nn.functional.softmax(concatenated_gate_logits, dim=-1)
    _, selected_experts = torch.topk(routing_weights, top_k, dim=-1)
    expert_mask = torch.nn.functional.one_hot(selected_experts, num_experts)
    if attention_mask is None:
        tokens_per_expert = torch.mean(expert_mask.float(), dim=0)
        router_prob_per_expert = torch.mean(routing_weights, dim=0)
    else:
        batch_size, sequence_length = attention_mask.shape
        num_hidden_layers = concatenated_gate_logits.shape[0] // (batch_size * sequence_length)
        expert_attention_mask = (
            attention_mask[None, :, :, None, None]
            .expand((num_hidden_layers, batch_size, sequence_length, top_k, num_experts))
            .reshape(-1, top_k, num_experts)
            .to(compute_device))
        tokens_per_expert = torch.sum(expert_mask.float() * expert_attention_mask, dim=0) / torch.sum(
            expert_attention_mask, dim=0)
        router_per_expert_attention_mask = (
            attention_mask[None, :, :, None]
            .expand((num_hidden_layers, batch_size, sequence_length, num_experts))
            .reshape(-1, num_experts)
            .to(compute_device))
        router_prob_per_expert = torch.sum(routing_weights * router_per_expert_attention_mask, dim=0) / torch.sum(
            router_per_expert_attention_mask, dim=0)
    overall_loss = torch.sum(tokens_per_expert * router_prob_per_expert.unsqueeze(0))
    return overall_loss * num_experts


class MoeForCausalLM(nn.Module):
    """MixtralForCausalLM / Qwen2MoeForCausalLM."""

    def __init__(self, config):
        super().__init__()
        _moe_config(config)
        self.config = config
        self.model = MoeModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.router_aux_loss_coef = config.router_aux_loss_coef
        mixtral = config.model_type == "mixtral"
        self.num_experts = config.num_local_experts if mixtral else config.num_experts
        self.num_experts_per_tok = config.num_experts_per_tok

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def forward(self, input_ids, attention_mask=None, labels=None, use_cache=None, output_router_logits=None,
                logits_to_keep=0):
        output_router_logits = (output_router_logits if output_router_logits is not None
                                else self.config.output_router_logits)
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache,
                             output_router_logits=output_router_logits)
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None)
        logits = self.lm_head(hidden_states[:, slice_indices, :])
        loss = None
        if labels is not None:
            _mark("loss")
            loss = ForCausalLMLoss(logits=logits, labels=labels, vocab_size=self.config.vocab_size)
        aux_loss = None
        if output_router_logits:
            aux_loss = load_balancing_loss_func(outputs.router_logits, self.num_experts, self.num_experts_per_tok,
                                                attention_mask)
            if labels is not None:
                loss += self.router_aux_loss_coef * aux_loss.to(loss.device)
        return Output(loss=loss, aux_loss=aux_loss, logits=logits, past_key_values=outputs.past_key_values,
                      router_logits=outputs.router_logits)


# ============================================================================================
# gpt_neox / falcon / stablelm / olmo (helper "neox"): v4.57 modeling code, transformers commit 3553f0bc2301,
# src/transformers/models/{gpt_neox,falcon,stablelm,olmo}/modeling_*.py and configuration_*.py
_DEFAULTS.update({
    # GPTNeoXConfig.__init__ (also sets partial_rotary_factor = rotary_pct, rope_theta = rotary_emb_base)
    "gpt_neox": dict(vocab_size=50432, hidden_size=6144, num_hidden_layers=44, num_attention_heads=64,
                     intermediate_size=24576, hidden_act="gelu", rotary_pct=0.25, rotary_emb_base=10000,
                     attention_dropout=0.0, hidden_dropout=0.0, max_position_embeddings=2048,
                     initializer_range=0.02, layer_norm_eps=1e-5, use_cache=True, tie_word_embeddings=False,
                     use_parallel_residual=True, rope_scaling=None, attention_bias=True),
})


def _neox_family_config(c):
    """Derived attributes the v4.57 config classes set in __init__."""
    if c.model_type == "gpt_neox":
        c.partial_rotary_factor = c.rotary_pct
        c.rope_theta = c.rotary_emb_base
    if c.model_type == "falcon":
        if "n_embed" in c.__dict__:  # FalconConfig pops n_embed, the old name of hidden_size
            c.hidden_size = c.__dict__.pop("n_embed")
        c.num_kv_heads = c.num_attention_heads if c.num_kv_heads is None else c.num_kv_heads
        c.ffn_hidden_size = c.hidden_size * 4 if c.ffn_hidden_size is None else c.ffn_hidden_size
    if c.model_type == "olmo" and c.num_key_value_heads is None:
        c.num_key_value_heads = c.num_attention_heads


class PartialRotaryEmbedding(RotaryEmbedding):
    """LlamaRotaryEmbedding with the default rope init of modeling_rope_utils._compute_default_rope_parameters:
    dim = int(head_dim * config.partial_rotary_factor) (GPTNeoX, StableLM). The cos/sin are [b, s, dim]."""

    def __init__(self, config):
        nn.Module.__init__(self)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        dim = int(head_dim * getattr(config, "partial_rotary_factor", 1.0))
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float) / dim))
        self.attention_scaling = 1.0
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.original_inv_freq = self.inv_freq


def partial_apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    """modeling_gpt_neox.apply_rotary_pos_emb (also StableLM's): rotate the first cos.shape[-1] dims, cat the rest."""
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    rotary_dim = cos.shape[-1]
    q_rot, q_pass = q[..., :rotary_dim], q[..., rotary_dim:]
    k_rot, k_pass = k[..., :rotary_dim], k[..., rotary_dim:]
    q_embed = (q_rot * cos) + (rotate_half(q_rot) * sin)
    k_embed = (k_rot * cos) + (rotate_half(k_rot) * sin)
    q_embed = torch.cat([q_embed, q_pass], dim=-1)
    k_embed = torch.cat([k_embed, k_pass], dim=-1)
    return q_embed, k_embed


def neox_eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """modeling_gpt_neox.eager_attention_forward (no repeat_kv)."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        causal_mask = attention_mask[:, :, :, : key.shape[-2]]
        attn_weights = attn_weights + causal_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value)
    attn_output = attn_output.transpose(1, 2).contiguous()
    return attn_output, attn_weights


class GPTNeoXMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.intermediate_size)
        self.dense_4h_to_h = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = act_fn(config.hidden_act)

    def forward(self, hidden_states):
        hidden_states = self.dense_h_to_4h(hidden_states)
        hidden_states = self.act(hidden_states)
        hidden_states = self.dense_4h_to_h(hidden_states)
        return hidden_states


class GPTNeoXAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.config = config
        self.head_size = config.hidden_size // config.num_attention_heads
        self.attention_dropout = config.attention_dropout
        self.rotary_ndims = int(self.head_size * config.rotary_pct)
        self.scaling = self.head_size ** -0.5
        self.layer_idx = layer_idx
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.attention_bias)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.attention_bias)

    def forward(self, hidden_states, attention_mask, layer_past=None, cache_position=None,
                position_embeddings=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, 3 * self.head_size)
        # per-head interleaved layout: [b, s, nh, 3*hd] -> [b, nh, s, 3*hd], q/k/v are views of it
        qkv = self.query_key_value(hidden_states).view(hidden_shape).transpose(1, 2)
        query_states, key_states, value_states = qkv.chunk(3, dim=-1)
        cos, sin = position_embeddings
        query_states, key_states = partial_apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if layer_past is not None:
            key_states, value_states = layer_past.update(key_states, value_states, self.layer_idx)
        attn_output, attn_weights = neox_eager_attention_forward(
            self, query_states, key_states, value_states, attention_mask, scaling=self.scaling,
            dropout=0.0 if not self.training else self.attention_dropout)
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        attn_output = self.dense(attn_output)
        return attn_output, attn_weights


class GPTNeoXLayer(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.use_parallel_residual = config.use_parallel_residual
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_attention_dropout = nn.Dropout(config.hidden_dropout)
        self.post_mlp_dropout = nn.Dropout(config.hidden_dropout)
        self.attention = GPTNeoXAttention(config, layer_idx)
        self.mlp = GPTNeoXMLP(config)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, use_cache=False, layer_past=None,
                output_attentions=False, cache_position=None, position_embeddings=None, **kwargs):
        attn_output, attn_weights = self.attention(self.input_layernorm(hidden_states), attention_mask=attention_mask,
                                                   layer_past=layer_past, cache_position=cache_position,
                                                   position_embeddings=position_embeddings)
        attn_output = self.post_attention_dropout(attn_output)
        if self.use_parallel_residual:
            mlp_output = self.mlp(self.post_attention_layernorm(hidden_states))
            mlp_output = self.post_mlp_dropout(mlp_output)
            hidden_states = mlp_output + attn_output + hidden_states
        else:
            attn_output = attn_output + hidden_states
            mlp_output = self.mlp(self.post_attention_layernorm(attn_output))
            mlp_output = self.post_mlp_dropout(mlp_output)
            hidden_states = mlp_output + attn_output
        outputs = (hidden_states,)
        return outputs


class GPTNeoXModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_in = nn.Embedding(config.vocab_size, config.hidden_size)
        self.emb_dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList([GPTNeoXLayer(config, i) for i in range(config.num_hidden_layers)])
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.rotary_emb = PartialRotaryEmbedding(config)
        self.gradient_checkpointing = False

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False
        inputs_embeds = self.embed_in(input_ids)
        past_key_values = DynamicCache(self.config) if use_cache else None
        cache_position = torch.arange(0, 0 + inputs_embeds.shape[1], device=inputs_embeds.device)
        position_ids = cache_position.unsqueeze(0)
        causal_mask = _eager_causal_mask(inputs_embeds, attention_mask, cache_position)
        hidden_states = self.emb_dropout(inputs_embeds)
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        for i, layer in enumerate(self.layers):
            outputs = layer(hidden_states, attention_mask=causal_mask, position_ids=position_ids,
                            layer_past=past_key_values, use_cache=use_cache, output_attentions=False,
                            cache_position=cache_position, position_embeddings=position_embeddings)
            hidden_states = outputs[0]
        hidden_states = self.final_layer_norm(hidden_states)
        return Output(last_hidden_state=hidden_states, past_key_values=past_key_values)


class GPTNeoXForCausalLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.gpt_neox = GPTNeoXModel(config)
        self.embed_out = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.embed_out.weight = self.gpt_neox.embed_in.weight

    def get_input_embeddings(self):
        return self.gpt_neox.embed_in

    def forward(self, input_ids, attention_mask=None, labels=None, use_cache=None, logits_to_keep=0):
        outputs = self.gpt_neox(input_ids, attention_mask=attention_mask, use_cache=use_cache)
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None)
        logits = self.embed_out(hidden_states[:, slice_indices, :])
        loss = None
        if labels is not None:
            _mark("loss")
            loss = ForCausalLMLoss(logits=logits, labels=labels, vocab_size=self.config.vocab_size)
        return Output(loss=loss, logits=logits, past_key_values=outputs.past_key_values)


# falcon (models/falcon/modeling_falcon.py; rotary path only: alibi=True raises)
_DEFAULTS["falcon"] = dict(  # FalconConfig.__init__ (tie_word_embeddings: PretrainedConfig default True)
    vocab_size=65024, hidden_size=4544, num_hidden_layers=32, num_attention_heads=71, num_ln_in_parallel_attn=None,
    layer_norm_epsilon=1e-5, initializer_range=0.02, use_cache=True, hidden_dropout=0.0, attention_dropout=0.0,
    num_kv_heads=None, alibi=False, new_decoder_architecture=False, multi_query=True, parallel_attn=True,
    bias=False, max_position_embeddings=2048, rope_theta=10000.0, rope_scaling=None, ffn_hidden_size=None,
    activation="gelu", tie_word_embeddings=True)


class FalconLinear(nn.Linear):
    """modeling_falcon.FalconLinear: matmul with weight.T, then a separate bias add."""

    def forward(self, input):
        hidden_states = input @ self.weight.T
        if self.bias is None:
            return hidden_states
        return hidden_states + self.bias


class FalconAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.hidden_size // self.num_heads
        self.layer_idx = layer_idx
        self.inv_norm_factor = 1.0 / math.sqrt(self.head_dim)
        if config.new_decoder_architecture:
            qkv_out_dim = (config.num_kv_heads * 2 + config.num_attention_heads) * self.head_dim
        elif config.multi_query:
            qkv_out_dim = self.hidden_size + 2 * self.head_dim
        else:
            qkv_out_dim = 3 * self.hidden_size
        self.query_key_value = FalconLinear(self.hidden_size, qkv_out_dim, bias=config.bias)
        self.new_decoder_architecture = config.new_decoder_architecture
        self.multi_query = config.multi_query
        self.dense = FalconLinear(self.hidden_size, self.hidden_size, bias=config.bias)
        self.attention_dropout = nn.Dropout(config.attention_dropout)
        self.num_kv_heads = config.num_kv_heads if (self.new_decoder_architecture or not self.multi_query) else 1

    def _split_heads(self, fused_qkv):
        if self.new_decoder_architecture:
            batch, seq_len, _ = fused_qkv.shape
            qkv = fused_qkv.view(batch, seq_len, -1, self.num_heads // self.num_kv_heads + 2, self.head_dim)
            query = qkv[:, :, :, :-2]
            key = qkv[:, :, :, [-2]]  # advanced indexing: a copy
            value = qkv[:, :, :, [-1]]
            key = torch.broadcast_to(key, query.shape)
            value = torch.broadcast_to(value, query.shape)
            query, key, value = [x.flatten(2, 3) for x in (query, key, value)]
            return query, key, value
        elif not self.multi_query:
            batch_size, seq_length, _ = fused_qkv.shape
            fused_qkv = fused_qkv.view(batch_size, seq_length, self.num_heads, 3, self.head_dim)
            return fused_qkv[..., 0, :], fused_qkv[..., 1, :], fused_qkv[..., 2, :]
        else:
            batch_size, seq_length, _ = fused_qkv.shape
            fused_qkv = fused_qkv.view(batch_size, seq_length, self.num_heads + 2, self.head_dim)
            return fused_qkv[..., :-2, :], fused_qkv[..., [-2], :], fused_qkv[..., [-1], :]

    def forward(self, hidden_states, alibi, attention_mask, position_ids=None, layer_past=None, use_cache=False,
                output_attentions=False, cache_position=None, position_embeddings=None):
        if alibi is not None:
            raise NotImplementedError("falcon alibi")
        fused_qkv = self.query_key_value(hidden_states)
        num_kv_heads = self.num_heads if self.new_decoder_architecture else self.num_kv_heads
        (query_layer, key_layer, value_layer) = self._split_heads(fused_qkv)
        batch_size, query_length, _, _ = query_layer.shape
        query_layer = query_layer.transpose(1, 2).reshape(batch_size, self.num_heads, query_length, self.head_dim)
        key_layer = key_layer.transpose(1, 2).reshape(batch_size, num_kv_heads, query_length, self.head_dim)
        value_layer = value_layer.transpose(1, 2).reshape(batch_size, num_kv_heads, query_length, self.head_dim)
        cos, sin = position_embeddings
        query_layer, key_layer = apply_rotary_pos_emb(query_layer, key_layer, cos, sin)
        if layer_past is not None:
            key_layer, value_layer = layer_past.update(key_layer, value_layer, self.layer_idx)
        if attention_mask is not None:
            attention_mask = attention_mask[:, :, :, : key_layer.shape[-2]]
        # eager (not sdpa): the explicit-softmax branch
        attention_scores = query_layer @ key_layer.transpose(-1, -2)
        attention_scores /= math.sqrt(self.head_dim)
        attention_scores = F.softmax(attention_scores + attention_mask, dim=-1, dtype=hidden_states.dtype)
        attn_output = attention_scores @ value_layer
        attn_output = attn_output.view(batch_size, self.num_heads, query_length, self.head_dim)
        attn_output = attn_output.permute(0, 2, 1, 3)
        attn_output = attn_output.reshape(batch_size, query_length, self.num_heads * self.head_dim)
        attn_output = self.dense(attn_output)
        return attn_output, attention_scores


class FalconMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense_h_to_4h = FalconLinear(config.hidden_size, config.ffn_hidden_size, bias=config.bias)
        self.act = act_fn(config.activation)
        self.dense_4h_to_h = FalconLinear(config.ffn_hidden_size, config.hidden_size, bias=config.bias)

    def forward(self, x):
        x = self.act(self.dense_h_to_4h(x))
        x = self.dense_4h_to_h(x)
        return x


class FalconDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx):
        super().__init__()
        hidden_size = config.hidden_size
        self.self_attention = FalconAttention(config, layer_idx)
        self.mlp = FalconMLP(config)
        self.config = config
        if config.num_ln_in_parallel_attn is None and config.new_decoder_architecture:
            config.num_ln_in_parallel_attn = 2
        if not config.parallel_attn:
            self.post_attention_layernorm = nn.LayerNorm(hidden_size, eps=config.layer_norm_epsilon)
            self.input_layernorm = nn.LayerNorm(hidden_size, eps=config.layer_norm_epsilon)
        elif config.num_ln_in_parallel_attn == 2:
            self.ln_attn = nn.LayerNorm(hidden_size, eps=config.layer_norm_epsilon)
            self.ln_mlp = nn.LayerNorm(hidden_size, eps=config.layer_norm_epsilon)
        else:
            self.input_layernorm = nn.LayerNorm(hidden_size, eps=config.layer_norm_epsilon)

    def forward(self, hidden_states, alibi, attention_mask, position_ids=None, layer_past=None, use_cache=False,
                output_attentions=False, cache_position=None, position_embeddings=None, **kwargs):
        c = self.config
        residual = hidden_states
        if c.new_decoder_architecture and c.num_ln_in_parallel_attn == 2:
            attention_layernorm_out = self.ln_attn(hidden_states)
            mlp_layernorm_out = self.ln_mlp(hidden_states)
        else:
            attention_layernorm_out = self.input_layernorm(hidden_states)
        attention_output, attn_weights = self.self_attention(
            attention_layernorm_out, layer_past=layer_past, attention_mask=attention_mask,
            position_ids=position_ids, alibi=alibi, use_cache=use_cache, output_attentions=output_attentions,
            cache_position=cache_position, position_embeddings=position_embeddings)
        if not c.new_decoder_architecture:
            if c.parallel_attn:
                mlp_layernorm_out = attention_layernorm_out
            else:
                residual = bloom_dropout_add(attention_output, residual, c.attention_dropout, training=self.training)
                mlp_layernorm_out = self.post_attention_layernorm(residual)
        if c.new_decoder_architecture and c.parallel_attn and c.num_ln_in_parallel_attn == 1:
            mlp_layernorm_out = attention_layernorm_out
        mlp_output = self.mlp(mlp_layernorm_out)
        if c.new_decoder_architecture or c.parallel_attn:
            mlp_output += attention_output
        output = bloom_dropout_add(mlp_output, residual, c.hidden_dropout, training=self.training)
        return output, attn_weights


class FalconModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.h = nn.ModuleList([FalconDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.rotary_emb = RotaryEmbedding(config)
        self.gradient_checkpointing = False

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False
        inputs_embeds = self.word_embeddings(input_ids)
        past_key_values = DynamicCache(self.config) if use_cache else None
        alibi = None
        seq_length = inputs_embeds.shape[1]
        cache_position = torch.arange(0, 0 + seq_length, device=inputs_embeds.device)
        position_ids = cache_position.unsqueeze(0)
        causal_mask = gptj_update_causal_mask(attention_mask, inputs_embeds, cache_position)
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        for i, block in enumerate(self.h):
            outputs = block(hidden_states, layer_past=past_key_values, attention_mask=causal_mask,
                            position_ids=position_ids, use_cache=use_cache, output_attentions=False, alibi=alibi,
                            cache_position=cache_position, position_embeddings=position_embeddings)
            hidden_states = outputs[0]
        hidden_states = self.ln_f(hidden_states)
        return Output(last_hidden_state=hidden_states, past_key_values=past_key_values)


class FalconForCausalLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = FalconModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.word_embeddings.weight

    def get_input_embeddings(self):
        return self.transformer.word_embeddings

    def forward(self, input_ids, attention_mask=None, labels=None, use_cache=None, logits_to_keep=0):
        transformer_outputs = self.transformer(input_ids, attention_mask=attention_mask, use_cache=use_cache)
        hidden_states = transformer_outputs["last_hidden_state"]
        slice_indices = slice(-logits_to_keep, None)
        lm_logits = self.lm_head(hidden_states[:, slice_indices, :])
        loss = None
        if labels is not None:
            _mark("loss")
            loss = ForCausalLMLoss(lm_logits, labels, vocab_size=self.config.vocab_size)
        return Output(loss=loss, logits=lm_logits, past_key_values=transformer_outputs.past_key_values)


# stablelm (models/stablelm/modeling_stablelm.py: StableLmAttention, the eager class)
_DEFAULTS["stablelm"] = dict(  # StableLmConfig.__init__
    vocab_size=50304, intermediate_size=6912, hidden_size=2560, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, hidden_act="silu", max_position_embeddings=4096, initializer_range=0.02,
    layer_norm_eps=1.0e-5, use_cache=True, tie_word_embeddings=False, rope_theta=10_000, rope_scaling=None,
    use_qkv_bias=False, qk_layernorm=False, use_parallel_residual=False, hidden_dropout=0.0,
    attention_dropout=0.0, partial_rotary_factor=0.25, pad_token_id=None)


class LayerNormNoBias(nn.Module):
    """nn.LayerNorm(dim, eps, bias=False) (torch >= 2.1) on torch 1.13: F.layer_norm with a weight and no bias,
    the same native_layer_norm call."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.normalized_shape = (dim,)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, None, self.eps)


class StableLmLayerNormPerHead(nn.Module):
    def __init__(self, dim, num_heads, eps=1e-5):
        super().__init__()
        self.norms = nn.ModuleList([LayerNormNoBias(dim, eps=eps) for _ in range(num_heads)])

    def forward(self, hidden_states):
        states_per_heads = torch.split(hidden_states, 1, dim=1)
        return torch.cat([norm(hidden_states) for norm, hidden_states in zip(self.norms, states_per_heads)], dim=1)


class StableLmAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.hidden_size // self.num_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.rotary_ndims = int(self.head_dim * config.partial_rotary_factor)
        b = config.use_qkv_bias
        self.q_proj = nn.Linear(self.hidden_size, self.num_heads * self.head_dim, bias=b)
        self.k_proj = nn.Linear(self.hidden_size, self.num_key_value_heads * self.head_dim, bias=b)
        self.v_proj = nn.Linear(self.hidden_size, self.num_key_value_heads * self.head_dim, bias=b)
        self.o_proj = nn.Linear(self.hidden_size, self.hidden_size, bias=False)
        self.qk_layernorm = config.qk_layernorm
        if self.qk_layernorm:
            self.q_layernorm = StableLmLayerNormPerHead(self.head_dim, self.num_heads, eps=config.layer_norm_eps)
            self.k_layernorm = StableLmLayerNormPerHead(self.head_dim, self.num_key_value_heads,
                                                        eps=config.layer_norm_eps)
        self.attention_dropout = nn.Dropout(config.attention_dropout)
        self.rotary_emb = PartialRotaryEmbedding(config)  # sic: one per layer too (an unused inv_freq buffer)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                output_attentions=False, use_cache=False, cache_position=None, position_embeddings=None):
        bsz, q_len, _ = hidden_states.size()
        query_states = self.q_proj(hidden_states)
        key_states = self.k_proj(hidden_states)
        value_states = self.v_proj(hidden_states)
        query_states = query_states.view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        key_states = key_states.view(bsz, q_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        value_states = value_states.view(bsz, q_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        if self.qk_layernorm:
            query_states = self.q_layernorm(query_states)
            key_states = self.k_layernorm(key_states)
        cos, sin = position_embeddings
        query_rot, query_pass = (query_states[..., : self.rotary_ndims], query_states[..., self.rotary_ndims:])
        key_rot, key_pass = (key_states[..., : self.rotary_ndims], key_states[..., self.rotary_ndims:])
        query_rot, key_rot = apply_rotary_pos_emb(query_rot, key_rot, cos, sin)
        query_states = torch.cat((query_rot, query_pass), dim=-1)
        key_states = torch.cat((key_rot, key_pass), dim=-1)
        if past_key_values is not None:
            key_states, value_states = past_key_values.update(key_states, value_states, self.layer_idx)
        key_states = repeat_kv(key_states, self.num_key_value_groups)
        value_states = repeat_kv(value_states, self.num_key_value_groups)
        attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) / math.sqrt(self.head_dim)
        if attention_mask is not None:
            causal_mask = attention_mask[:, :, :, : key_states.shape[-2]]
            attn_weights += causal_mask
        attn_weights = F.softmax(attn_weights, dtype=torch.float32, dim=-1).to(query_states.dtype)
        attn_weights = self.attention_dropout(attn_weights)
        attn_output = torch.matmul(attn_weights, value_states)
        attn_output = attn_output.transpose(1, 2).contiguous()
        attn_output = attn_output.reshape(bsz, q_len, self.hidden_size)
        attn_output = self.o_proj(attn_output)
        attn_weights = None  # output_attentions is False
        return attn_output, attn_weights


class StableLmDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.use_parallel_residual = config.use_parallel_residual
        self.self_attn = StableLmAttention(config, layer_idx)
        self.mlp = LlamaMLP(config)  # StableLmMLP: gate/up/down without bias, the same ops
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_attention_layernorm = None
        if not self.use_parallel_residual:
            self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                output_attentions=False, use_cache=False, cache_position=None, position_embeddings=None):
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        self_attn_output, self_attn_weights = self.self_attn(
            hidden_states=hidden_states, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, output_attentions=output_attentions, use_cache=use_cache,
            cache_position=cache_position, position_embeddings=position_embeddings)
        if self.use_parallel_residual:
            mlp_output = self.mlp(hidden_states)
            mlp_output = self.dropout(mlp_output)
            hidden_states = residual + self_attn_output + mlp_output
        else:
            residual = residual + self_attn_output
            mlp_output = self.mlp(self.post_attention_layernorm(residual))
            mlp_output = self.dropout(mlp_output)
            hidden_states = residual + mlp_output
        outputs = (hidden_states,)
        return outputs


class StableLmModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([StableLmDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.rotary_emb = PartialRotaryEmbedding(config)
        self.gradient_checkpointing = False

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False
        past_key_values = DynamicCache(self.config) if use_cache else None
        inputs_embeds = self.embed_tokens(input_ids)
        cache_position = torch.arange(0, 0 + inputs_embeds.shape[1], device=inputs_embeds.device)
        position_ids = cache_position.unsqueeze(0)
        causal_mask = gptj_update_causal_mask(attention_mask, inputs_embeds, cache_position)
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        for decoder_layer in self.layers:
            layer_outputs = decoder_layer(hidden_states, attention_mask=causal_mask, position_ids=position_ids,
                                          past_key_values=past_key_values, output_attentions=False,
                                          use_cache=use_cache, cache_position=cache_position,
                                          position_embeddings=position_embeddings)
            hidden_states = layer_outputs[0]
        hidden_states = self.norm(hidden_states)
        return Output(last_hidden_state=hidden_states, past_key_values=past_key_values)


class StableLmForCausalLM(LlamaForCausalLM):
    """StableLmForCausalLM.forward is LlamaForCausalLM's (model, lm_head on the kept slice, ForCausalLMLoss)."""

    def __init__(self, config):
        nn.Module.__init__(self)
        self.config = config
        self.model = StableLmModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight


# olmo (models/olmo/modeling_olmo.py)
_DEFAULTS["olmo"] = dict(  # OlmoConfig.__init__
    vocab_size=50304, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=None, hidden_act="silu", max_position_embeddings=2048, initializer_range=0.02,
    use_cache=True, pad_token_id=1, tie_word_embeddings=False, rope_theta=10000.0, rope_scaling=None,
    attention_bias=False, attention_dropout=0.0, clip_qkv=None)


class OlmoLayerNorm(nn.Module):
    """Non-parametric: F.layer_norm of the fp32 input without weight or bias, cast back."""

    def __init__(self, hidden_size):
        super().__init__()
        self.normalized_shape = (hidden_size,)

    def forward(self, hidden_states):
        orig_dtype = hidden_states.dtype
        return F.layer_norm(hidden_states.to(dtype=torch.float32), self.normalized_shape, None, None,
                            eps=1e-5).to(orig_dtype)


def olmo_apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    """modeling_olmo.apply_rotary_pos_emb: the llama formula, results cast back to q's / k's dtype."""
    q_type, k_type = q.dtype, k.dtype
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed.to(q_type), k_embed.to(k_type)


class OlmoAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim ** -0.5
        self.attention_dropout = config.attention_dropout
        b = config.attention_bias
        H, nh, nkv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
        self.q_proj = nn.Linear(H, nh * self.head_dim, bias=b)
        self.k_proj = nn.Linear(H, nkv * self.head_dim, bias=b)
        self.v_proj = nn.Linear(H, nkv * self.head_dim, bias=b)
        self.o_proj = nn.Linear(nh * self.head_dim, H, bias=b)

    def forward(self, hidden_states, position_embeddings, attention_mask, past_key_values=None,
                cache_position=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states)
        key_states = self.k_proj(hidden_states)
        value_states = self.v_proj(hidden_states)
        if self.config.clip_qkv is not None:
            query_states.clamp_(min=-self.config.clip_qkv, max=self.config.clip_qkv)
            key_states.clamp_(min=-self.config.clip_qkv, max=self.config.clip_qkv)
            value_states.clamp_(min=-self.config.clip_qkv, max=self.config.clip_qkv)
        query_states = query_states.view(hidden_shape).transpose(1, 2)
        key_states = key_states.view(hidden_shape).transpose(1, 2)
        value_states = value_states.view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query_states, key_states = olmo_apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if past_key_values is not None:
            key_states, value_states = past_key_values.update(key_states, value_states, self.layer_idx)
        attn_output, attn_weights = llama_eager_attention_forward(
            self, query_states, key_states, value_states, attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling)
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        attn_output = self.o_proj(attn_output)
        return attn_output, attn_weights


class OlmoDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.self_attn = OlmoAttention(config, layer_idx)
        self.mlp = LlamaMLP(config)  # OlmoMLP: the same gate/up/down ops
        self.input_layernorm = OlmoLayerNorm(config.hidden_size)
        self.post_attention_layernorm = OlmoLayerNorm(config.hidden_size)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False, cache_position=None, position_embeddings=None, **kwargs):
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states, _ = self.self_attn(hidden_states=hidden_states, attention_mask=attention_mask,
                                          past_key_values=past_key_values, cache_position=cache_position,
                                          position_embeddings=position_embeddings)
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states = self.mlp(hidden_states)
        hidden_states = residual + hidden_states
        return hidden_states


class OlmoModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([OlmoDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = OlmoLayerNorm(config.hidden_size)
        self.rotary_emb = RotaryEmbedding(config)
        self.gradient_checkpointing = False

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        if use_cache is None:
            use_cache = self.config.use_cache
        if self.gradient_checkpointing and self.training and use_cache:
            use_cache = False
        inputs_embeds = self.embed_tokens(input_ids)
        past_key_values = DynamicCache(self.config) if use_cache else None
        cache_position = torch.arange(0, 0 + inputs_embeds.shape[1], device=inputs_embeds.device)
        position_ids = cache_position.unsqueeze(0)
        causal_mask = _eager_causal_mask(inputs_embeds, attention_mask, cache_position)
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        for decoder_layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states = decoder_layer(hidden_states, attention_mask=causal_mask, position_ids=position_ids,
                                          past_key_values=past_key_values, cache_position=cache_position,
                                          position_embeddings=position_embeddings)
        hidden_states = self.norm(hidden_states)
        return Output(last_hidden_state=hidden_states, past_key_values=past_key_values)


class OlmoForCausalLM(LlamaForCausalLM):
    """OlmoForCausalLM.forward is LlamaForCausalLM's."""

    def __init__(self, config):
        nn.Module.__init__(self)
        self.config = config
        self.model = OlmoModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight


_NEOX_CLASSES = {"gpt_neox": GPTNeoXForCausalLM, "falcon": FalconForCausalLM, "stablelm": StableLmForCausalLM,
                 "olmo": OlmoForCausalLM}


# ============================================================================================
MODEL_CLASSES = {"llama": LlamaForCausalLM, "mistral": LlamaForCausalLM, "qwen2": LlamaForCausalLM,
                 "gpt2": GPT2LMHeadModel, "opt": OPTForCausalLM, "bloom": BloomForCausalLM,
                 "gpt_neo": GPTNeoForCausalLM, "gpt_bigcode": GPTBigCodeForCausalLM, "codegen": CodeGenForCausalLM,
                 "gemma": GemmaForCausalLM, "gemma2": GemmaForCausalLM,
                 "qwen3": Qwen3ForCausalLM, "phi3": Phi3ForCausalLM, "phi": PhiForCausalLM,
                 "mixtral": MoeForCausalLM, "qwen2_moe": MoeForCausalLM, **_NEOX_CLASSES}


def _init_weights(model, config):
    std = getattr(config, "initializer_range", None) or getattr(config, "init_std", 0.02)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, Conv1D)):
                m.weight.normal_(0.0, std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Embedding):
                m.weight.normal_(0.0, std)
                if m.padding_idx is not None:
                    m.weight[m.padding_idx].zero_()


def build_model(config_dict):
    """Random-init model from a HF config.json dict (no downloads)."""
    config = Config(config_dict)
    model = MODEL_CLASSES[config.model_type](config)
    _init_weights(model, config)
    return model


def gradient_checkpointing_enable(model, use_reentrant=True):
    """PreTrainedModel.gradient_checkpointing_enable: partial(checkpoint, use_reentrant=...) on every
    module that has a gradient_checkpointing attribute."""
    func = partial(torch.utils.checkpoint.checkpoint, use_reentrant=use_reentrant)
    for m in model.modules():
        if hasattr(m, "gradient_checkpointing"):
            m._gradient_checkpointing_func = func
            m.gradient_checkpointing = True


def enable_input_require_grads(model):
    """PreTrainedModel.enable_input_require_grads (PEFT calls it when gradient checkpointing is on)."""
    def make_inputs_require_grads(module, input, output):
        output.requires_grad_(True)
    return model.get_input_embeddings().register_forward_hook(make_inputs_require_grads)


# ============================================================================================
# LoRA (peft.tuners.lora.layer.Linear, single active adapter "default")
class LoraLinear(nn.Module):
    def __init__(self, base_layer, r, lora_alpha, lora_dropout, adapter_dtype=None):
        super().__init__()
        self.base_layer = base_layer
        if isinstance(base_layer, Conv1D):
            in_features, out_features = base_layer.weight.shape  # fan_in_fan_out=True
        else:
            in_features, out_features = base_layer.in_features, base_layer.out_features
        self.lora_dropout = nn.ModuleDict({"default": nn.Dropout(p=lora_dropout) if lora_dropout > 0.0
                                           else nn.Identity()})
        self.lora_A = nn.ModuleDict({"default": nn.Linear(in_features, r, bias=False)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(r, out_features, bias=False)})
        self.scaling = {"default": lora_alpha / r}
        nn.init.kaiming_uniform_(self.lora_A["default"].weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B["default"].weight)
        dtype = adapter_dtype or base_layer.weight.dtype
        self.lora_A.to(dtype)
        self.lora_B.to(dtype)

    def forward(self, x, *args, **kwargs):
        result = self.base_layer(x, *args, **kwargs)
        torch_result_dtype = result.dtype
        lora_A = self.lora_A["default"]
        lora_B = self.lora_B["default"]
        dropout = self.lora_dropout["default"]
        scaling = self.scaling["default"]
        if x.dtype != lora_A.weight.dtype:  # LoraLayer._cast_input_dtype
            x = x.to(dtype=lora_A.weight.dtype)
        result = result + lora_B(lora_A(dropout(x))) * scaling
        result = result.to(torch_result_dtype)
        return result


def apply_lora(model, r, alpha, dropout, targets, adapter_dtype=None):
    """get_peft_model(model, LoraConfig(...)): freeze every parameter, wrap target modules (matched by the
    last component of the module name), adapters trainable."""
    for p in model.parameters():
        p.requires_grad_(False)
    targets = set(targets)
    to_wrap = []
    for name, mod in model.named_modules():
        if name.split(".")[-1] in targets and isinstance(mod, (nn.Linear, Conv1D)):
            to_wrap.append(name)
    if not to_wrap:
        raise ValueError(f"no LoRA targets {sorted(targets)} found")
    for name in to_wrap:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoraLinear(getattr(parent, child), r, alpha, dropout, adapter_dtype))
    return to_wrap
