"""Training-forward re-implementations of Hugging Face Transformers v4.57 causal LMs.

Written for the llmem CPU measurement tier. Each class follows the v4.57 modeling code
(commit 3553f0bc2301) op for op and keeps the same Python names alive for the same spans,
because which tensors a name keeps alive decides what autograd and the caller hold at each
instant. Only the training path is kept: eager attention, no KV reuse across calls, no
output_attentions / output_hidden_states. The KV cache *is* built during training when
config.use_cache is true and gradient checkpointing is off, exactly as HF does (it copies K and
V per layer with torch.cat). Families: llama, mistral, qwen2 (shared decoder), gpt2, opt.

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
}
_ALIASES = {"gpt2": {"hidden_size": "n_embd", "num_hidden_layers": "n_layer",
                     "num_attention_heads": "n_head", "max_position_embeddings": "n_positions"}}


class Config:
    """HF-config-like attribute bag built from a config.json dict plus the family defaults."""

    def __init__(self, d):
        mt = d["model_type"]
        if mt not in _DEFAULTS:
            raise ValueError(f"unsupported model_type {mt!r}")
        merged = dict(_DEFAULTS[mt])
        merged.update(d)
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


def act_fn(name):
    return {"gelu_new": NewGELUActivation, "gelu": GELUActivation, "silu": SiLUActivation,
            "swish": nn.SiLU, "relu": nn.ReLU}[name]()


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
            loss = ForCausalLMLoss(logits=logits, labels=labels, vocab_size=self.config.vocab_size)
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
            loss = ForCausalLMLoss(logits, labels, vocab_size=self.config.vocab_size)
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
            loss = ForCausalLMLoss(logits, labels, vocab_size=self.config.vocab_size)
        return Output(loss=loss, logits=logits, past_key_values=outputs.past_key_values)


# ============================================================================================
MODEL_CLASSES = {"llama": LlamaForCausalLM, "mistral": LlamaForCausalLM, "qwen2": LlamaForCausalLM,
                 "gpt2": GPT2LMHeadModel, "opt": OPTForCausalLM}


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
