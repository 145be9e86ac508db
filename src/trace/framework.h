// Copyright 2026 The llmem Authors.
// The torchtune and LitGPT profiles: what their training loops do
// differently from the Hugging Face Trainer, as steps on the symbolic Graph
// that program.cc calls at its framework hooks (the LM head, the loss).

#ifndef LLMEM_SRC_TRACE_FRAMEWORK_H_
#define LLMEM_SRC_TRACE_FRAMEWORK_H_

#include <functional>
#include <string>
#include <vector>

#include "llmem/job.h"

#include "trace/graph.h"

namespace llmem::trace {

/// The framework's default LoRA targets, as the trace's (Hugging Face)
/// module names; empty for the hf profile (PEFT's per-family default).
std::vector<std::string> framework_lora_targets(Framework f);

/// A framework module name ("output_proj", "query", "mlp", "head", ...) as
/// the Hugging Face module names the trace uses; unknown names pass through.
std::vector<std::string> hf_module_names(Framework f, const std::string& name);

/// The LM head over slices of the final hidden state `hn` ([tokens, width]):
/// torchtune's TransformerDecoder.chunked_output (hn.tensor_split(chunks,
/// dim=1)) or LitGPT's GPT.forward(lm_head_chunk_size) (x.split(size, dim=1)).
/// `head` applies the output projection to one slice view; the logits slices
/// are returned in order (the caller holds one reference to each).
std::vector<Tid> chunked_head(Graph& g, Tid hn, int64_t width, int64_t batch, int64_t seq,
                              const FrameworkSetup& fw, const std::function<Tid(Tid)>& head);

/// A compiled F.cross_entropy over `rows` rows of `logits` (torchtune
/// compile_loss): inductor's graph saves its input as it came and the per-row
/// max and log-sum-exp (reductions), no log-softmax, and its backward writes
/// one gradient in the input's dtype. Returns the scalar; `logits` and
/// `labels` stay with the caller.
Tid compiled_cross_entropy(Graph& g, Tid logits, Tid labels, int64_t rows);

/// The loss over logits slices: torchtune CEWithChunkedOutputLoss (each slice
/// .float() then F.cross_entropy, reduction sum) or LitGPT
/// chunked_cross_entropy (each slice in its own dtype, reduction none, cat,
/// sum). Returns the scalar loss; the slices stay with the caller.
Tid chunked_loss(Graph& g, const std::vector<Tid>& logits, int64_t batch, int64_t seq,
                 int64_t vocab, const FrameworkSetup& fw);

/// LitGPT full fine-tuning (litgpt/finetune/full.py): the head runs once and
/// chunked_cross_entropy(logits[..., :-1, :], targets[..., 1:]) reshapes the
/// shifted logits to rows (a copy when batch > 1) and runs F.cross_entropy
/// on slices of `chunk` rows in the logits' dtype. `logits` stays with the caller.
Tid flat_chunked_loss(Graph& g, Tid logits, int64_t batch, int64_t seq, int64_t vocab,
                      int64_t chunk);

}  // namespace llmem::trace

#endif  // LLMEM_SRC_TRACE_FRAMEWORK_H_
