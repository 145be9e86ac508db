// Copyright 2026 The llmem Authors.
// Helpers shared by the model tests.

#ifndef LLMEM_TESTS_UNIT_MODEL_TEST_UTIL_H_
#define LLMEM_TESTS_UNIT_MODEL_TEST_UTIL_H_

#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "llmem/model.h"

namespace llmem::testing {

inline std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

/// Parses a config given as a JSON object.
inline ModelSpec spec_of(const nlohmann::json& config) {
  return parse_config(config.dump(), "test.json");
}

inline const TensorSpec* find_tensor(const ModelSpec& spec, const std::string& name) {
  for (const TensorSpec& t : spec.tensors) {
    if (t.name == name)
      return &t;
  }
  return nullptr;
}

}  // namespace llmem::testing

#endif  // LLMEM_TESTS_UNIT_MODEL_TEST_UTIL_H_
