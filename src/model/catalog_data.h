// Copyright 2026 The llmem Authors.
// Files of data/models/ embedded at build time (cmake/embed_catalog.cmake).

#ifndef LLMEM_SRC_MODEL_CATALOG_DATA_H_
#define LLMEM_SRC_MODEL_CATALOG_DATA_H_

#include <string_view>
#include <vector>

namespace llmem::model {

struct EmbeddedFile {
  std::string_view name;  ///< file name within data/models/
  std::string_view text;
};

const std::vector<EmbeddedFile>& embedded_catalog();
/// data/gpus.json.
const std::vector<EmbeddedFile>& embedded_gpus();

}  // namespace llmem::model

#endif  // LLMEM_SRC_MODEL_CATALOG_DATA_H_
