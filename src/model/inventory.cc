// Copyright 2026 The llmem Authors.

#include "model/inventory.h"

#include <cmath>
#include <utility>

#include "llmem/error.h"

namespace llmem::model {

int64_t checked_mul(int64_t a, int64_t b, const std::string& source) {
  int64_t result = 0;
  if (__builtin_mul_overflow(a, b, &result)) {
    throw Error(source, "",
                "sizes overflow 64 bits (" + std::to_string(a) + " × " + std::to_string(b) +
                    "); check the config's dimensions");
  }
  return result;
}

int64_t checked_add(int64_t a, int64_t b, const std::string& source) {
  int64_t result = 0;
  if (__builtin_add_overflow(a, b, &result)) {
    throw Error(source, "", "sizes overflow 64 bits; check the config's dimensions");
  }
  return result;
}

std::string layer_prefix(const std::string& stem, int layer) {
  return stem + "." + std::to_string(layer) + ".";
}

TensorSpec Inventory::make(const std::string& name, std::vector<int64_t> shape, TensorRole role,
                           int layer) const {
  TensorSpec t;
  t.name = name;
  t.numel = 1;
  for (int64_t d : shape)
    t.numel = checked_mul(t.numel, d, spec_->source);
  t.shape = std::move(shape);
  t.dtype = spec_->dtype;
  t.role = role;
  t.layer = layer;
  return t;
}

void Inventory::param(const std::string& name, std::vector<int64_t> shape, TensorRole role,
                      int layer) {
  spec_->tensors.push_back(make(name, std::move(shape), role, layer));
}

void Inventory::linear(const std::string& prefix, int64_t out, int64_t in, bool bias,
                       TensorRole role, int layer) {
  param(prefix + ".weight", {out, in}, role, layer);
  if (bias)
    param(prefix + ".bias", {out}, role, layer);
}

void Inventory::conv1d(const std::string& prefix, int64_t in, int64_t out, TensorRole role,
                       int layer) {
  param(prefix + ".weight", {in, out}, role, layer);
  param(prefix + ".bias", {out}, role, layer);
}

void Inventory::norm(const std::string& prefix, int64_t dim, NormKind kind, int layer) {
  switch (kind) {
    case NormKind::kLayerNorm:
      param(prefix + ".weight", {dim}, TensorRole::kNorm, layer);
      param(prefix + ".bias", {dim}, TensorRole::kNorm, layer);
      break;
    case NormKind::kLayerNormNoBias:
    case NormKind::kRMSNorm:
      param(prefix + ".weight", {dim}, TensorRole::kNorm, layer);
      break;
    case NormKind::kNonParametric:
      break;
  }
}

void Inventory::tied(const std::string& name, std::vector<int64_t> shape,
                     const std::string& tied_to, TensorRole role) {
  TensorSpec t = make(name, std::move(shape), role, -1);
  t.tied_to = tied_to;
  spec_->tensors.push_back(std::move(t));
}

void Inventory::lm_head(const std::string& name, int64_t vocab, int64_t width,
                        const std::string& embedding, bool bias) {
  std::string weight = name + ".weight";
  if (spec_->tie_word_embeddings) {
    tied(weight, {vocab, width}, embedding, TensorRole::kLmHead);
  } else {
    param(weight, {vocab, width}, TensorRole::kLmHead);
  }
  if (bias)
    param(name + ".bias", {vocab}, TensorRole::kLmHead);
}

void Inventory::buffer(const std::string& name, std::vector<int64_t> shape, DType dtype,
                       bool persistent, int layer) {
  TensorSpec t = make(name, std::move(shape), TensorRole::kAttention, layer);
  t.dtype = dtype;
  t.persistent = persistent;
  spec_->buffers.push_back(std::move(t));
}

void Inventory::rotary(const std::string& name, const AttentionSpec& attention) {
  int64_t head =
      attention.kind == AttentionKind::kMLA ? attention.qk_rope_head_dim : attention.head_dim;
  auto rotated =
      static_cast<int64_t>(std::llround(static_cast<double>(head) * attention.rotary_fraction));
  if (attention.kind == AttentionKind::kMLA)
    rotated = head;
  if (rotated >= 2)
    buffer(name, {rotated / 2}, DType::kFloat32, false);
}

void Inventory::causal_mask(const std::string& name, int64_t positions, int layer) {
  buffer(name, {1, 1, positions, positions}, DType::kBool, false, layer);
}

}  // namespace llmem::model
