// Copyright 2026 The llmem Authors.
// Reading a DeepSpeed JSON config (the file passed to deepspeed.initialize or
// to the Hugging Face Trainer's --deepspeed) into a training setup.

#ifndef LLMEM_DEEPSPEED_H_
#define LLMEM_DEEPSPEED_H_

#include <string>
#include <string_view>
#include <vector>

#include "llmem/job.h"

namespace llmem {

/// Applies `text` (a DeepSpeed config) to `setup`: the ZeRO stage becomes the
/// method (stage 0: ddp), offload devices, bucket sizes, bf16/fp16, the
/// micro-batch and accumulation steps when they are numbers ("auto" keeps
/// what `setup` has, as the Hugging Face integration fills it from the
/// Trainer's arguments). Returns a warning for every key that matters for
/// memory but is not modelled. Throws llmem::Error naming `source` and the
/// key for malformed JSON, wrong types and impossible values.
std::vector<std::string> apply_deepspeed_config(std::string_view text, const std::string& source,
                                                TrainingSetup* setup);

}  // namespace llmem

#endif  // LLMEM_DEEPSPEED_H_
