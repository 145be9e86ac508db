// Copyright 2026 The llmem Authors.
// Feeds arbitrary bytes to the recipe reader (torchtune and LitGPT YAML) and
// estimates what it accepts. Bad input must end in llmem::Error; any other
// exception, crash or sanitizer report is a bug.

#include <cstddef>
#include <cstdint>
#include <string>

#include "llmem/error.h"
#include "llmem/estimate.h"
#include "llmem/gpu.h"
#include "llmem/model.h"
#include "llmem/recipe.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const llmem::ModelSpec model = llmem::load_model("meta-llama/Llama-3.2-1B");
  std::string text(reinterpret_cast<const char*>(data), size);
  try {
    llmem::TrainingSetup setup;
    llmem::read_recipe(text, "fuzz.yaml", &setup);
    // The simulation is symbolic: any accepted size costs the same time.
    (void)llmem::estimate(model, setup, llmem::find_gpu("A100-80GB"));
  } catch (const llmem::Error&) {
  }
  return 0;
}
