// Copyright 2026 The llmem Authors.
// Building blocks for the per-architecture tensor inventories.

#ifndef LLMEM_SRC_MODEL_INVENTORY_H_
#define LLMEM_SRC_MODEL_INVENTORY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "llmem/model.h"

namespace llmem::model {

/// a * b, throwing Error naming `source` when the product overflows 64 bits.
int64_t checked_mul(int64_t a, int64_t b, const std::string& source);
int64_t checked_add(int64_t a, int64_t b, const std::string& source);

/// Appends tensors to a ModelSpec in state-dict order. Every element count is
/// computed with overflow checks.
class Inventory {
 public:
  explicit Inventory(ModelSpec* spec) : spec_(spec) {}

  void param(const std::string& name, std::vector<int64_t> shape, TensorRole role, int layer = -1);
  /// nn.Linear: weight [out, in], bias [out].
  void linear(const std::string& prefix, int64_t out, int64_t in, bool bias, TensorRole role,
              int layer = -1);
  /// GPT-2's Conv1D: weight [in, out], bias [out].
  void conv1d(const std::string& prefix, int64_t in, int64_t out, TensorRole role, int layer);
  void norm(const std::string& prefix, int64_t dim, NormKind kind, int layer = -1);
  /// A parameter that shares storage with `tied_to` (listed, not counted).
  void tied(const std::string& name, std::vector<int64_t> shape, const std::string& tied_to,
            TensorRole role);
  /// The output embedding: tied to `embedding` when the config ties them.
  void lm_head(const std::string& name, int64_t vocab, int64_t width, const std::string& embedding,
               bool bias = false);
  void buffer(const std::string& name, std::vector<int64_t> shape, DType dtype, bool persistent,
              int layer = -1);
  /// Rotary inverse frequencies: fp32 [rotated_dims / 2], not persistent.
  void rotary(const std::string& name, const AttentionSpec& attention);
  /// Bool causal mask [1, 1, n, n] (GPT-2-era attention modules), not persistent.
  void causal_mask(const std::string& name, int64_t positions, int layer);

 private:
  TensorSpec make(const std::string& name, std::vector<int64_t> shape, TensorRole role,
                  int layer) const;
  ModelSpec* spec_;
};

/// "prefix.layers.3." style helper.
std::string layer_prefix(const std::string& stem, int layer);

}  // namespace llmem::model

#endif  // LLMEM_SRC_MODEL_INVENTORY_H_
