// Copyright 2026 The llmem Authors.
// The architecture registry: one entry per model family.
//
// Adding a family means adding one entry (see docs/adding-an-architecture.md):
// a reader that turns config keys into LayerSpecs, with Hugging Face's
// defaults, and a builder that lists the tensors with their state-dict names.

#ifndef LLMEM_SRC_MODEL_ARCH_H_
#define LLMEM_SRC_MODEL_ARCH_H_

#include <string>
#include <vector>

#include "llmem/model.h"

#include "config/config_reader.h"

namespace llmem::model {

struct Architecture {
  const char* family;
  std::vector<std::string> model_types;
  const char* defaults_source;
  /// Fills the scalar fields and `layers` of the spec from the config.
  void (*read)(config::ConfigReader& reader, ModelSpec& spec);
  /// Appends parameters and buffers in state-dict order.
  void (*build)(ModelSpec& spec);
};

/// Families whose code follows GPT-2/OPT-era layouts (arch_gpt.cc).
void register_gpt_families(std::vector<Architecture>* registry);
/// Families whose code follows the Llama layout, including MoE and MLA (arch_llama.cc).
void register_llama_families(std::vector<Architecture>* registry);

const std::vector<Architecture>& registry();

/// Shared reading helpers.
void read_common(config::ConfigReader& reader, ModelSpec& spec, const char* src);
/// Throws unless `divisor` divides `value`.
void require_divides(const config::ConfigReader& reader, const char* divisor_key, int64_t divisor,
                     const char* value_key, int64_t value);
/// Rejects sizes beyond any real model and widths that would overflow.
void validate(const config::ConfigReader& reader, const ModelSpec& spec);
/// Fills spec.layers with `count` copies of `layer`.
void repeat_layer(ModelSpec& spec, const LayerSpec& layer);

}  // namespace llmem::model

#endif  // LLMEM_SRC_MODEL_ARCH_H_
