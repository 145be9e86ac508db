// Copyright 2026 The llmem Authors.
// "Did you mean" suggestions for names given by users.

#ifndef LLMEM_SRC_MODEL_SUGGEST_H_
#define LLMEM_SRC_MODEL_SUGGEST_H_

#include <string>
#include <string_view>
#include <vector>

namespace llmem::model {

/// Case-insensitive edit distance.
size_t edit_distance(std::string_view a, std::string_view b);
/// The candidate closest to `name`, or "" when none is reasonably close.
std::string nearest(std::string_view name, const std::vector<std::string>& candidates);
std::string join(const std::vector<std::string>& items, std::string_view separator);

}  // namespace llmem::model

#endif  // LLMEM_SRC_MODEL_SUGGEST_H_
