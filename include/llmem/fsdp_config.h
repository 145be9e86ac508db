// Copyright 2026 The llmem Authors.
// Reading an accelerate config with FSDP (the YAML `accelerate config` writes,
// passed to `accelerate launch --config_file`) into a training setup.

#ifndef LLMEM_FSDP_CONFIG_H_
#define LLMEM_FSDP_CONFIG_H_

#include <string>
#include <string_view>
#include <vector>

#include "llmem/job.h"

namespace llmem {

/// Applies `yaml_text` (an accelerate config with `distributed_type: FSDP`)
/// to `setup`: the method becomes FSDP with the sharding strategy (or FSDP2's
/// reshard_after_forward), the FSDP version, CPU offload (parameters and
/// optimizer), limit_all_gathers, activation checkpointing, the precision
/// from mixed_precision, and dp = num_processes (gpus_per_node =
/// num_processes / num_machines) when given. Returns a warning for every key
/// that may matter for memory but is not modelled. Throws llmem::Error naming
/// `source` and the key for malformed YAML, wrong types and impossible values.
std::vector<std::string> apply_fsdp_config(std::string_view yaml_text, const std::string& source,
                                           TrainingSetup* setup);

}  // namespace llmem

#endif  // LLMEM_FSDP_CONFIG_H_
