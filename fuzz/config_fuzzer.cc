// Copyright 2026 The llmem Authors.
// Feeds arbitrary bytes to the config reader. Bad input must end in
// llmem::Error; any other exception, crash or sanitizer report is a bug.
// Inputs that once failed are kept in tests/data/fuzz-regressions/.

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "llmem/error.h"
#include "llmem/model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    llmem::ModelSpec spec = llmem::parse_config(text, "fuzz.json");
    (void)spec.params();
  } catch (const llmem::Error&) {
  }
  return 0;
}
