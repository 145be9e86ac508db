"""Pipeline stages (2-stage 1F1B / GPipe over point-to-point sends) and Megatron-style tensor parallelism
(tp ranks) on top of models.py's tiny llama / gpt2, for the CPU tier's distributed rows (dist_cpu.py).

Pipeline: stage s holds decoder layers [first, end) (split evenly, the first stages take the remainder);
the first stage embeds, the last holds the final norm, lm_head and HF's ForCausalLMLoss. The ops are
LlamaModel / GPT2Model's forward cut at the stage boundary (no KV cache: a pipeline stage is not
LlamaModel.forward, and torch.distributed.pipelining / Megatron never build one). Each stage computes its
own position ids, rotary tables and eager causal mask from the micro-batch's attention_mask. The hidden
state is received into a fresh buffer that becomes a leaf requiring grad; the stage output is kept (with
its graph) until its backward, which starts from the gradient received for it; the gradient of the
received input is sent back. A tied head (gpt2) is a copy of its own on the last stage; after the last
backward of the step the two copies' gradients are all-reduced (Megatron's embedding-group all-reduce).

Tensor parallelism (Megatron-LM layout): q/k/v and gate/up column-parallel, o_proj/down_proj
row-parallel (output all-reduced in place), heads split across ranks, vocabulary-parallel embedding
(masked lookup + all-reduce), vocab-parallel lm_head (column-parallel, outputs not gathered) and the
vocab-parallel cross-entropy of megatron.core.tensor_parallel.cross_entropy (max and sum-exp all-reduced,
the logits buffer reused in place for exp and softmax, softmax saved for backward). Norm weights are
replicated. Loss: per-token losses times a loss mask over the mask sum (Megatron's loss_func) on the
labels shifted as HF does, so it equals the dense model's ForCausalLMLoss.

Sequence parallelism (apply_megatron_sp, megatron_sp_forward; Megatron-LM d98e8a64ddf3, see the section
below): the residual stream, norms and residual adds on s/tp tokens, column-parallel inputs all-gathered
into a persistent global buffer (the sharded input saved, re-gathered in backward), row-parallel outputs
and the embedding reduce-scattered, norm-weight gradients all-reduced after the last backward.
"""
from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import models


# ============================================================================================
# pipeline
def stage_layers(n_layers, pp, s):
    base, extra = divmod(n_layers, pp)
    first = s * base + min(s, extra)
    return first, first + base + (1 if s < extra else 0)


class Stage(nn.Module):
    """One pipeline stage cut out of a built full model (the rest is dropped)."""

    def __init__(self, full, pp, s):
        super().__init__()
        cfg = full.config
        self.config = cfg
        self.mt = cfg.model_type
        self.first, self.last = s == 0, s == pp - 1
        n = cfg.num_hidden_layers
        lo, hi = stage_layers(n, pp, s)
        self.layer_range = (lo, hi)
        if self.mt in ("llama", "mistral", "qwen2"):
            body = full.model
            self.layers = nn.ModuleList(list(body.layers)[lo:hi])
            self.rotary_emb = body.rotary_emb
            if self.first:
                self.embed_tokens = body.embed_tokens
            if self.last:
                self.norm = body.norm
                self.lm_head = full.lm_head
        elif self.mt == "gpt2":
            body = full.transformer
            self.h = nn.ModuleList(list(body.h)[lo:hi])
            if self.first:
                self.wte, self.wpe, self.drop = body.wte, body.wpe, body.drop
            if self.last:
                self.ln_f = body.ln_f
                self.lm_head = full.lm_head
                if cfg.tie_word_embeddings and not self.first:
                    # the tied head on a later stage: a copy of its own (same values)
                    self.lm_head.weight = nn.Parameter(body.wte.weight.detach().clone())
        else:
            raise ValueError("pipeline stages: llama-style and gpt2 only, not %s" % self.mt)
        self.tied_copy = self.mt == "gpt2" and cfg.tie_word_embeddings and pp > 1

    def tied_grad(self):
        if not self.tied_copy:
            return None
        return (self.wte.weight if self.first else self.lm_head.weight).grad

    def forward(self, x, attention_mask, labels=None):
        """x: input_ids on the first stage, the received hidden state elsewhere. Returns the loss on the
        last stage, the hidden state otherwise."""
        if self.mt == "gpt2":
            return self._gpt2(x, attention_mask, labels)
        return self._llama(x, attention_mask, labels)

    def _llama(self, x, attention_mask, labels):
        cfg = self.config
        inputs_embeds = self.embed_tokens(x) if self.first else x
        cache_position = torch.arange(0, 0 + inputs_embeds.shape[1], device=inputs_embeds.device)
        position_ids = cache_position.unsqueeze(0)
        sw = cfg.sliding_window if self.mt == "mistral" else None
        mask = models._eager_causal_mask(inputs_embeds, attention_mask, cache_position, sw)
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask=mask, position_ids=position_ids,
                                  past_key_values=None, use_cache=False, cache_position=cache_position,
                                  position_embeddings=position_embeddings)
        if not self.last:
            return hidden_states
        hidden_states = self.norm(hidden_states)
        logits = self.lm_head(hidden_states[:, slice(0, None), :])
        models._mark("loss")
        return models.ForCausalLMLoss(logits=logits, labels=labels, vocab_size=cfg.vocab_size)

    def _gpt2(self, x, attention_mask, labels):
        cfg = self.config
        if self.first:
            input_shape = x.size()
            input_ids = x.view(-1, input_shape[-1])
            batch_size = input_ids.shape[0]
            inputs_embeds = self.wte(input_ids)
            cache_position = torch.arange(0, 0 + inputs_embeds.shape[1], device=inputs_embeds.device)
            position_ids = cache_position.unsqueeze(0)
            position_embeds = self.wpe(position_ids)
            hidden_states = inputs_embeds + position_embeds.to(inputs_embeds.device)
        else:
            input_shape = x.shape[:-1]
            batch_size = x.shape[0]
            inputs_embeds = hidden_states = x
            cache_position = torch.arange(0, 0 + x.shape[1], device=x.device)
        if attention_mask is not None and attention_mask.ndim < 4:
            attention_mask = attention_mask.view(batch_size, -1)
        causal_mask = models._eager_causal_mask(inputs_embeds, attention_mask, cache_position)
        if self.first:
            hidden_states = self.drop(hidden_states)
        output_shape = (-1,) + tuple(input_shape[1:]) + (hidden_states.size(-1),)
        for block in self.h:
            outputs = block(hidden_states, None, cache_position, causal_mask, None,
                            encoder_attention_mask=None, use_cache=False, output_attentions=False)
            hidden_states = outputs[0]
        if not self.last:
            return hidden_states
        hidden_states = self.ln_f(hidden_states)
        hidden_states = hidden_states.view(output_shape)
        logits = self.lm_head(hidden_states[:, slice(0, None), :])
        models._mark("loss")
        return models.ForCausalLMLoss(logits, labels, vocab_size=cfg.vocab_size)


def schedule_ops(schedule, pp, s, m):
    """[("F", k) / ("B", k)] for stage s. 1F1B: pp-s-1 warm-up forwards, then one forward, one backward
    (so min(pp - s, m) forwards are in flight at the first backward), then the cool-down backwards.
    GPipe: every forward, then every backward, oldest first (torch's ScheduleGPipe order)."""
    if schedule == "gpipe":
        return [("F", k) for k in range(m)] + [("B", k) for k in range(m)]
    warm = min(pp - s - 1, m)
    ops = [("F", k) for k in range(warm)]
    f, b = warm, 0
    while f < m:
        ops += [("F", f), ("B", b)]
        f, b = f + 1, b + 1
    ops += [("B", k) for k in range(b, m)]
    return ops


def pipeline_step(stage, micro, schedule, rank, pp, hidden_shape, hidden_dtype, autocast, mark, step):
    """One optimizer step's forwards and backwards on this stage over the micro-batches `micro`
    [(ids, mask, labels)]. Returns the sum of the micro-batch losses / m on the last stage (a float)."""
    m = len(micro)
    prev, nxt = rank - 1, rank + 1
    inflight = {}   # k -> (received input leaf or None, output or loss, send handle)
    total = 0.0
    for op, k in schedule_ops(schedule, pp, rank, m):
        ids, mask, labels = micro[k]
        if op == "F":
            mark((step, "forward"))
            if stage.first:
                x = None
                inp = ids
            else:
                x = torch.empty(hidden_shape, dtype=hidden_dtype)
                dist.recv(x, src=prev)
                x.requires_grad_(True)
                inp = x
            if autocast:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = stage(inp, mask, labels)
            else:
                out = stage(inp, mask, labels)
            handle = None
            if stage.last:
                out = out / m
                total += float(out.detach())
            else:
                handle = dist.isend(out.detach(), dst=nxt)
            del inp
            inflight[k] = (x, out, handle)
            del x, out, handle
        else:
            mark((step, "backward"))
            x, out, handle = inflight.pop(k)
            if stage.last:
                out.backward()
            else:
                g = torch.empty_like(out, memory_format=torch.contiguous_format)
                dist.recv(g, src=nxt)
                handle.wait()
                torch.autograd.backward(out, g)
                del g
            del out, handle
            if x is not None:
                dist.send(x.grad, dst=prev)
                x.grad = None
            del x
    if stage.tied_copy:
        mark((step, "backward"))
        dist.all_reduce(stage.tied_grad())
    return total


# ============================================================================================
# Megatron-style tensor parallelism
def _all_reduce(t, op=dist.ReduceOp.SUM):
    """In-place all-reduce. gloo (torch 1.13) has no bfloat16: a 16-bit tensor is reduced through an fp32
    copy (a transient of twice its size that NCCL would not need; at most [b, s, h] fp32 here)."""
    if t.dtype in (torch.bfloat16, torch.float16):
        t32 = t.float()
        dist.all_reduce(t32, op=op)
        t.copy_(t32)
        del t32
    else:
        dist.all_reduce(t, op=op)


class _CopyToTP(torch.autograd.Function):
    """Identity forward; all-reduce of the input gradient in backward (copy_to_tensor_model_parallel_region)."""

    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, g):
        _all_reduce(g)
        return g


class _ReduceFromTP(torch.autograd.Function):
    """All-reduce in place in forward; identity backward (reduce_from_tensor_model_parallel_region)."""

    @staticmethod
    def forward(ctx, x):
        _all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, g):
        return g


class ColumnParallelLinear(nn.Module):
    sequence_parallel = False   # set by apply_megatron_sp: input [b, s/tp, in], gathered (see _LinearSP)

    def __init__(self, dense, tp, rank):
        super().__init__()
        out = dense.weight.shape[0] // tp
        sl = slice(rank * out, (rank + 1) * out)
        self.weight = nn.Parameter(dense.weight.detach()[sl].clone())
        self.bias = nn.Parameter(dense.bias.detach()[sl].clone()) if dense.bias is not None else None

    def forward(self, x):
        if self.sequence_parallel:
            w, b = self.weight, self.bias
            if torch.is_autocast_cpu_enabled():   # autocast's cached weight cast (an autograd node of its own)
                w, b = _autocast_cached(w), (_autocast_cached(b) if b is not None else None)
            return _LinearSP.apply(x, w, b)
        return F.linear(_CopyToTP.apply(x), self.weight, self.bias)


class RowParallelLinear(nn.Module):
    sequence_parallel = False   # set by apply_megatron_sp: output reduce-scattered to [b, s/tp, out]

    def __init__(self, dense, tp, rank):
        super().__init__()
        inp = dense.weight.shape[1] // tp
        self.weight = nn.Parameter(dense.weight.detach()[:, rank * inp:(rank + 1) * inp].clone())
        self.bias = nn.Parameter(dense.bias.detach().clone()) if dense.bias is not None else None

    def forward(self, x):
        if self.sequence_parallel:
            out = _ReduceScatterToSP.apply(F.linear(x, self.weight))
        else:
            out = _ReduceFromTP.apply(F.linear(x, self.weight))
        return out + self.bias if self.bias is not None else out


class VocabParallelEmbedding(nn.Module):
    def __init__(self, dense, tp, rank):
        super().__init__()
        v = dense.weight.shape[0] // tp
        self.start, self.end = rank * v, (rank + 1) * v
        self.weight = nn.Parameter(dense.weight.detach()[self.start:self.end].clone())

    def forward(self, input_):
        input_mask = (input_ < self.start) | (input_ >= self.end)
        masked_input = input_.clone() - self.start
        masked_input[input_mask] = 0
        output_parallel = F.embedding(masked_input, self.weight)
        output_parallel[input_mask, :] = 0.0
        return _ReduceFromTP.apply(output_parallel)


class _VocabParallelCE(torch.autograd.Function):
    """megatron.core.tensor_parallel.cross_entropy._VocabParallelCrossEntropy (label_smoothing 0)."""

    @staticmethod
    def forward(ctx, vocab_parallel_logits, target, start, end):
        vocab_parallel_logits = vocab_parallel_logits.float()
        logits_max = torch.max(vocab_parallel_logits, dim=-1)[0]
        _all_reduce(logits_max, op=dist.ReduceOp.MAX)
        vocab_parallel_logits -= logits_max.unsqueeze(dim=-1)     # in place, as Megatron
        target_mask = (target < start) | (target >= end)
        masked_target = target.clone() - start
        masked_target[target_mask] = 0
        partition = vocab_parallel_logits.size()[-1]
        logits_2d = vocab_parallel_logits.view(-1, partition)
        masked_target_1d = masked_target.view(-1)
        arange_1d = torch.arange(start=0, end=logits_2d.size()[0], device=logits_2d.device)
        predicted_logits_1d = logits_2d[arange_1d, masked_target_1d]
        predicted_logits_1d = predicted_logits_1d.clone().contiguous()
        predicted_logits = predicted_logits_1d.view_as(target)
        predicted_logits[target_mask] = 0.0
        exp_logits = vocab_parallel_logits
        torch.exp(vocab_parallel_logits, out=exp_logits)
        sum_exp_logits = exp_logits.sum(dim=-1)
        _all_reduce(predicted_logits)
        _all_reduce(sum_exp_logits)
        loss = torch.log(sum_exp_logits) - predicted_logits
        exp_logits.div_(sum_exp_logits.unsqueeze(dim=-1))
        ctx.save_for_backward(exp_logits, target_mask, masked_target_1d)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        softmax, target_mask, masked_target_1d = ctx.saved_tensors
        grad_input = softmax
        partition = softmax.size()[-1]
        grad_2d = grad_input.view(-1, partition)
        arange_1d = torch.arange(start=0, end=grad_2d.size()[0], device=grad_2d.device)
        softmax_update = 1.0 - target_mask.view(-1).float()
        grad_2d[arange_1d, masked_target_1d] -= softmax_update
        grad_input.mul_(grad_output.unsqueeze(dim=-1))
        return grad_input, None, None, None


def megatron_loss(logits, labels, start, end, ignore_index=-100):
    """Vocab-parallel CE on HF-shifted labels; mean over the non-ignored tokens (Megatron's loss_func)."""
    labels = F.pad(labels, (0, 1), value=ignore_index)
    shift_labels = labels[..., 1:].contiguous()
    loss_mask = (shift_labels != ignore_index).float()
    target = shift_labels.masked_fill(shift_labels == ignore_index, 0)
    losses = _VocabParallelCE.apply(logits, target, start, end)
    return torch.sum(losses.view(-1) * loss_mask.view(-1)) / loss_mask.sum()


def apply_megatron(model, tp, rank):
    """Turn a built dense llama-style model into this rank's tensor-parallel shard (in place)."""
    cfg = model.config
    if cfg.model_type not in ("llama", "mistral", "qwen2"):
        raise ValueError("megatron tp: llama-style models only")
    if cfg.tie_word_embeddings:
        raise ValueError("megatron tp: untied embeddings only")
    for layer in model.model.layers:
        at, mlp = layer.self_attn, layer.mlp
        for n in ("q_proj", "k_proj", "v_proj"):
            setattr(at, n, ColumnParallelLinear(getattr(at, n), tp, rank))
        at.o_proj = RowParallelLinear(at.o_proj, tp, rank)
        mlp.gate_proj = ColumnParallelLinear(mlp.gate_proj, tp, rank)
        mlp.up_proj = ColumnParallelLinear(mlp.up_proj, tp, rank)
        mlp.down_proj = RowParallelLinear(mlp.down_proj, tp, rank)
    model.model.embed_tokens = VocabParallelEmbedding(model.model.embed_tokens, tp, rank)
    model.lm_head = ColumnParallelLinear(model.lm_head, tp, rank)
    model.vocab_range = (model.model.embed_tokens.start, model.model.embed_tokens.end)
    return model


def megatron_forward(model, input_ids, attention_mask, labels):
    """LlamaForCausalLM.forward with the vocab-parallel head and loss; no KV cache (Megatron has none)."""
    outputs = model.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    hidden_states = outputs.last_hidden_state
    logits = model.lm_head(hidden_states[:, slice(0, None), :])
    models._mark("loss")
    start, end = model.vocab_range
    return megatron_loss(logits, labels, start, end)


# ============================================================================================
# Megatron-style sequence parallelism (tp ranks, --sequence-parallel)
#
# Followed: NVIDIA/Megatron-LM d98e8a64ddf34856e74b24714e3bedb2f5a39553 (2026-08-22):
#   megatron/core/tensor_parallel/mappings.py  _gather_along_first_dim, _reduce_scatter_along_first_dim,
#       _ReduceScatterToSequenceParallelRegion (forward reduce-scatter into a fresh torch.empty [s/tp],
#       backward all-gather into a fresh torch.empty [s]; use_global_buffer False by default)
#   megatron/core/tensor_parallel/layers.py  LinearWithGradAccumulationAndAsyncCommunication
#       (sequence_parallel=True), ColumnParallelLinear, RowParallelLinear.forward (reduce-scatter instead of
#       all-reduce), VocabParallelEmbedding.forward (reduce_scatter_embeddings: the masked lookup is
#       reduce-scattered, not all-reduced)
#   megatron/core/models/common/embeddings/language_model_embedding.py  (reduce_scatter_embeddings for
#       rotary models; clone_scatter_output_in_embedding=True clones the [s/tp] output)
#   megatron/core/distributed/finalize_model_grads.py  _allreduce_non_tensor_model_parallel_grads (norm
#       weights' gradients, partial per rank under SP, coalesced and all-reduced after the last backward)
#   megatron/core/utils.py  GlobalMemoryBuffer (one persistent flat tensor per (name, dtype), grown to the
#       largest request, viewed per call)
#
# Layout: the harness keeps HF's [b, s, h] (as the non-SP megatron rows do) and shards the sequence along
# dim 1; Megatron shards dim 0 of [s, b, h]. Every tensor has the same size either way; what the layout
# leaves out are Megatron's layout-only transposes (the embedding's transpose(0, 1).contiguous(), which its
# non-SP path has too, and the [s b] label / loss transposes), and it keeps HF's eager-attention copies
# (the [b, nh, s, hd] views of q, k, v are copied for the bmm's) exactly as in the non-SP rows, so an SP
# row differs from its non-SP twin only by sequence parallelism. The residual stream, norms and residual
# adds live on [b, s/tp, h]. Hidden dropout is 0 for llama (Megatron's dropout calls then return their
# input), so none is run.
#
# gloo (torch 1.13) has neither reduce_scatter nor _allgather_base, so:
#   all-gather     = zero the [s] output, copy this rank's [s/tp] shard into its slice, all-reduce it in
#                    place (no transient in fp32; bf16 goes through _all_reduce's fp32 copy of [s]).
#   reduce-scatter = allocate the [s/tp] output (as Megatron does before the collective), all-reduce the
#                    full-length input in place (it is a dead temporary at every call site: a linear
#                    output, a fresh input gradient, the masked embedding lookup), copy this rank's slice
#                    out. No transient in fp32; bf16 through the fp32 copy of [s].
SEQ_DIM = 1

# Autocast's cast cache, for the weights _LinearSP receives already cast: autocast casts an fp32 leaf that
# requires grad once per autocast region (also under no_grad) and holds the copy until the region ends;
# F.linear would do that inside _LinearSP, but the copy must be an input of the Function to be saved, as
# autograd saves it for an autocast F.linear. Emptied where the harness's autocast region ends (end of
# megatron_sp_forward) and where torch's checkpoint leaves its recompute's autocast region.
_AUTOCAST_CACHE = {}


def _autocast_cached(p):
    c = _AUTOCAST_CACHE.get(p)
    if c is None:
        c = _AUTOCAST_CACHE[p] = p.to(torch.get_autocast_cpu_dtype())
    return c


class GlobalMemoryBuffer:
    """megatron.core.utils.GlobalMemoryBuffer: a persistent flat buffer per (name, dtype)."""

    def __init__(self):
        self.buffer = {}

    def get_tensor(self, shape, dtype, name):
        n = 1
        for d in shape:
            n *= d
        cur = self.buffer.get((name, dtype))
        if cur is None or cur.numel() < n:
            self.buffer[(name, dtype)] = torch.empty(n, dtype=dtype)
        return self.buffer[(name, dtype)][0:n].view(*shape)


GLOBAL_MEMORY_BUFFER = GlobalMemoryBuffer()


def _full_shape(shard):
    shape = list(shard.shape)
    shape[SEQ_DIM] *= dist.get_world_size()
    return shape


def _sp_gather(inp, out=None):
    """All-gather along the sequence dim into `out` (fresh torch.empty when None)."""
    rank = dist.get_rank()
    n = inp.shape[SEQ_DIM]
    if out is None:
        out = torch.empty(_full_shape(inp), dtype=inp.dtype)
    out.zero_()
    out.narrow(SEQ_DIM, rank * n, n).copy_(inp)
    _all_reduce(out)
    return out


def _sp_reduce_scatter(full):
    """Reduce-scatter along the sequence dim into a fresh [s/tp] tensor (`full` is reduced in place)."""
    tp, rank = dist.get_world_size(), dist.get_rank()
    if full.shape[SEQ_DIM] % tp:
        raise ValueError("sequence parallel: sequence length %d not divisible by tp %d"
                         % (full.shape[SEQ_DIM], tp))
    n = full.shape[SEQ_DIM] // tp
    shape = list(full.shape)
    shape[SEQ_DIM] = n
    out = torch.empty(shape, dtype=full.dtype)
    _all_reduce(full)
    out.copy_(full.narrow(SEQ_DIM, rank * n, n))
    return out


class _ReduceScatterToSP(torch.autograd.Function):
    """reduce_scatter_to_sequence_parallel_region: forward reduce-scatter, backward all-gather (fresh)."""

    @staticmethod
    def forward(ctx, x):
        return _sp_reduce_scatter(x)

    @staticmethod
    def backward(ctx, g):
        return _sp_gather(g.contiguous())


class _LinearSP(torch.autograd.Function):
    """LinearWithGradAccumulationAndAsyncCommunication with sequence_parallel=True (no grad-accumulation
    fusion). Saves the SEQUENCE-SHARDED input [b, s/tp, in] and the weight; all-gathers the input into the
    global "mpu" buffer for the matmul; in backward re-gathers it into the same buffer for the weight
    gradient, computes the full-length input gradient [b, s, in] and reduce-scatters it into a fresh
    [b, s/tp, in]. Under CPU autocast (the harness's bf16-mixed) the caller passes the weight already cast
    to bf16 by an autograd-visible .to() (as autocast's F.linear has it: the bf16 copy is saved here, its
    gradient is cast back to fp32 by a ToCopyBackward node of its own); the forward runs inside autocast
    and the backward re-enters it (Megatron's custom_fwd / custom_bwd), so the gathered fp32 input is cast
    to bf16 for each matmul (a transient [b, s, in] bf16)."""

    @staticmethod
    def forward(ctx, inp, weight, bias):
        ctx.autocast = torch.is_autocast_cpu_enabled()
        ctx.save_for_backward(inp, weight)
        ctx.use_bias = bias is not None
        total_input = _sp_gather(inp, GLOBAL_MEMORY_BUFFER.get_tensor(_full_shape(inp), inp.dtype, "mpu"))
        return F.linear(total_input, weight, bias)

    @staticmethod
    def backward(ctx, grad_output):
        inp, w = ctx.saved_tensors
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=ctx.autocast):
            total_input = _sp_gather(inp, GLOBAL_MEMORY_BUFFER.get_tensor(_full_shape(inp), inp.dtype, "mpu"))
            grad_input = grad_output.matmul(w)
            sub_grad_input = _sp_reduce_scatter(grad_input)
            # prepare_input_tensors_for_wgrad_compute: contiguous grad_output, both viewed 2-D
            grad_output = grad_output.contiguous()
            go = grad_output.view(-1, grad_output.shape[-1])
            ti = total_input.view(-1, total_input.shape[-1])
            grad_weight = go.t().matmul(ti)
            grad_bias = go.sum(dim=0) if ctx.use_bias else None
        return sub_grad_input, grad_weight, grad_bias


def _sp_embedding(emb, input_):
    """VocabParallelEmbedding with reduce_scatter_embeddings + LanguageModelEmbedding's clone: [b, s/tp, h]."""
    input_mask = (input_ < emb.start) | (input_ >= emb.end)
    masked_input = input_.clone() - emb.start
    masked_input[input_mask] = 0
    output_parallel = F.embedding(masked_input, emb.weight)
    output_parallel[input_mask, :] = 0.0
    output = _ReduceScatterToSP.apply(output_parallel)
    del output_parallel
    return output.clone()   # clone_scatter_output_in_embedding (default True)


def _sp_decoder_layer(layer, hidden_states, mask, position_embeddings):
    """LlamaDecoderLayer (HF v4.57 ops) on the sequence-parallel residual stream [b, s/tp, h]."""
    if layer.gradient_checkpointing and layer.training and torch.is_grad_enabled():
        # the recompute inside torch's checkpoint backward: its autocast region ends with this call
        try:
            return _sp_decoder_layer_ops(layer, hidden_states, mask, position_embeddings)
        finally:
            _AUTOCAST_CACHE.clear()
    return _sp_decoder_layer_ops(layer, hidden_states, mask, position_embeddings)


def _sp_decoder_layer_ops(layer, hidden_states, mask, position_embeddings):
    residual = hidden_states
    hidden_states = layer.input_layernorm(hidden_states)
    at = layer.self_attn
    q = at.q_proj(hidden_states)       # [b, s, nh/tp * hd]: each gathers its input into the global buffer
    k = at.k_proj(hidden_states)
    v = at.v_proj(hidden_states)
    del hidden_states
    input_shape = q.shape[:-1]
    hidden_shape = (*input_shape, -1, at.head_dim)
    query_states = q.view(hidden_shape).transpose(1, 2)
    key_states = k.view(hidden_shape).transpose(1, 2)
    value_states = v.view(hidden_shape).transpose(1, 2)
    del q, k, v
    cos, sin = position_embeddings
    query_states, key_states = models.apply_rotary_pos_emb(query_states, key_states, cos, sin)
    attn_output, attn_weights = models.llama_eager_attention_forward(
        at, query_states, key_states, value_states, mask,
        dropout=0.0 if not at.training else at.attention_dropout, scaling=at.scaling)
    del query_states, key_states, value_states, attn_weights
    attn_output = attn_output.reshape(*input_shape, -1).contiguous()
    hidden_states = at.o_proj(attn_output)   # row-parallel: reduce-scattered to [b, s/tp, h]
    del attn_output
    hidden_states = residual + hidden_states
    residual = hidden_states
    hidden_states = layer.post_attention_layernorm(hidden_states)
    hidden_states = layer.mlp(hidden_states)   # gate/up gather, down reduce-scatters
    hidden_states = residual + hidden_states
    return hidden_states


def apply_megatron_sp(model, tp, rank):
    """apply_megatron, then every column/row-parallel linear switched to its sequence-parallel form."""
    apply_megatron(model, tp, rank)
    for mod in model.modules():
        if isinstance(mod, (ColumnParallelLinear, RowParallelLinear)):
            mod.sequence_parallel = True
    # replicated parameters that only see this rank's s/tp tokens (norm weights, row-parallel biases)
    for mod in model.modules():
        if isinstance(mod, models.RMSNorm):
            mod.weight.sequence_parallel = True
        if isinstance(mod, RowParallelLinear) and mod.bias is not None:
            mod.bias.sequence_parallel = True
    model.sequence_parallel = True
    return model


def finalize_sp_grads(model):
    """finalize_model_grads' _allreduce_non_tensor_model_parallel_grads: after the step's last backward the
    gradients of parameters marked sequence_parallel are flattened into one coalesced tensor, all-reduced
    (sum) and copied back (a transient of their total size, plus the fp32 copy for bf16)."""
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
    params = [p for p in model.parameters() if getattr(p, "sequence_parallel", False) and p.grad is not None]
    if not params:
        return
    grads = [p.grad.data for p in params]
    coalesced = _flatten_dense_tensors(grads)
    _all_reduce(coalesced)
    for buf, synced in zip(grads, _unflatten_dense_tensors(coalesced, grads)):
        buf.copy_(synced)


def megatron_sp_forward(model, input_ids, attention_mask, labels):
    """megatron_forward with sequence parallelism on the llama layers; returns the mean token loss."""
    body, cfg = model.model, model.config
    b, s = input_ids.shape
    tp = dist.get_world_size()
    if s % tp:
        raise ValueError("sequence parallel: seq %d not divisible by tp %d" % (s, tp))
    hidden_states = _sp_embedding(body.embed_tokens, input_ids)            # [b, s/tp, h]
    dtype = body.embed_tokens.weight.dtype
    shape_only = torch.empty((b, s, 0), dtype=dtype)   # HF builds mask and rotary from inputs_embeds [b s h]
    cache_position = torch.arange(0, s)
    position_ids = cache_position.unsqueeze(0)
    sw = cfg.sliding_window if cfg.model_type == "mistral" else None
    mask = models._eager_causal_mask(shape_only, attention_mask, cache_position, sw)
    position_embeddings = body.rotary_emb(shape_only, position_ids)
    del shape_only
    for layer in body.layers:
        if layer.gradient_checkpointing and layer.training:
            # Megatron's full recompute (tensor_parallel.random.CheckpointFunction, one layer per checkpoint):
            # reentrant, keeps only the layer's [b, s/tp, h] input; torch's reentrant checkpoint is the same
            # mechanism and also restores the autocast state for the recompute
            hidden_states = layer._gradient_checkpointing_func(
                partial(_sp_decoder_layer, layer, mask=mask, position_embeddings=position_embeddings),
                hidden_states)
        else:
            hidden_states = _sp_decoder_layer(layer, hidden_states, mask, position_embeddings)
    hidden_states = body.norm(hidden_states)
    logits = model.lm_head(hidden_states)                                   # gathered: [b, s, V/tp]
    del hidden_states
    models._mark("loss")
    start, end = model.vocab_range
    loss = megatron_loss(logits, labels, start, end)
    _AUTOCAST_CACHE.clear()   # the caller's autocast region ends here
    return loss
