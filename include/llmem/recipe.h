// Copyright 2026 The llmem Authors.
// Reading a torchtune recipe config or a LitGPT config_hub YAML into a
// TrainingSetup (llmem estimate --recipe FILE).

#ifndef LLMEM_RECIPE_H_
#define LLMEM_RECIPE_H_

#include <string>
#include <vector>

#include "llmem/job.h"

namespace llmem {

struct RecipeResult {
  Framework framework = Framework::kHf;
  /// The checkpoint the recipe names (torchtune checkpointer.checkpoint_dir,
  /// LitGPT checkpoint_dir), for the user to match with --model.
  std::string checkpoint;
  /// One line per key whose effect on memory llmem does not model, naming
  /// the key and why; keys known not to change memory (paths, learning rates,
  /// logging) are not listed.
  std::vector<std::string> warnings;
};

/// Parses `text` (YAML) as a recipe read from `file`: detects the framework,
/// applies its defaults (apply_framework_defaults) and every option the
/// recipe sets. Throws llmem::Error naming the file and key for malformed
/// YAML or a value of the wrong type.
RecipeResult read_recipe(const std::string& text, const std::string& file, TrainingSetup* setup);
/// read_recipe on a file's contents.
RecipeResult read_recipe_file(const std::string& path, TrainingSetup* setup);

/// A framework's module name (torchtune "output_proj", LitGPT "query",
/// "mlp", "head") as the Hugging Face module names the trace uses.
std::vector<std::string> framework_module_names(Framework f, const std::string& name);

}  // namespace llmem

#endif  // LLMEM_RECIPE_H_
