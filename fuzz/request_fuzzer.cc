// Copyright 2026 The llmem Authors.
// Feeds arbitrary bytes to the request layer (the JSON behind every CLI
// option, the Python package and `llmem serve`) and runs the estimates it
// accepts. Bad input must end in llmem::Error; any other exception, crash or
// sanitizer report is a bug.

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "llmem/error.h"
#include "llmem/request.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    llmem::Request r = llmem::parse_request(text, {.source = "fuzz.json"});
    (void)llmem::estimate_request_json(r);
  } catch (const llmem::Error&) {
  }
  return 0;
}
