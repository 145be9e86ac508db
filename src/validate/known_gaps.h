// Copyright 2026 The llmem Authors.
//
// Why a compared row of a published measurement disagrees with the estimate:
// the best-supported reason found by reading the framework's code at the
// measurement's date. One place for every reason; `llmem validate` shows it
// with the row ("why") and scripts/accuracy.py prints what validate says.

#ifndef LLMEM_SRC_VALIDATE_KNOWN_GAPS_H_
#define LLMEM_SRC_VALIDATE_KNOWN_GAPS_H_

#include <string>

#include "llmem/job.h"

namespace llmem {

/// The registered reason for a row, or "" when none is. `source_url` is the
/// row's source column, `model` its model column, `setting` the setting string
/// validate builds for it ("torchtune bf16 b2 s512 ckpt lora"). Nothing here
/// changes an estimate.
std::string known_gap(const std::string& source_url, const std::string& model,
                      const std::string& setting, const TrainingSetup& s);

}  // namespace llmem

#endif  // LLMEM_SRC_VALIDATE_KNOWN_GAPS_H_
