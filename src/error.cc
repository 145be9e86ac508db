// Copyright 2026 The llmem Authors.

#include "llmem/error.h"

namespace llmem {
namespace {

std::string compose(const std::string& source, const std::string& key, const std::string& message) {
  std::string out;
  if (!source.empty())
    out += source + ": ";
  if (!key.empty())
    out += "key '" + key + "': ";
  return out + message;
}

}  // namespace

Error::Error(std::string source, std::string key, const std::string& message)
    : std::runtime_error(compose(source, key, message)),
      source_(std::move(source)),
      key_(std::move(key)) {}

}  // namespace llmem
