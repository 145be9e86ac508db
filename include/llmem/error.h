// Copyright 2026 The llmem Authors.
// Errors raised by the llmem library.
//
// The library never prints or exits. Every failure caused by input (a config
// file, a catalog name, an option value) is reported by throwing llmem::Error,
// whose message names the source (file or catalog entry), the key and what was
// expected. Front ends catch it and map it to an exit code (2 in the CLI).

#ifndef LLMEM_ERROR_H_
#define LLMEM_ERROR_H_

#include <stdexcept>
#include <string>

namespace llmem {

class Error : public std::runtime_error {
 public:
  /// `source` names where the bad input came from (a path, "catalog entry
  /// facebook/opt-1.3b", "option --batch"); `key` the JSON key or option, and
  /// may be empty. what() is "<source>: <key>: <message>" with empty parts
  /// left out.
  Error(std::string source, std::string key, const std::string& message);
  explicit Error(const std::string& message) : Error("", "", message) {}

  const std::string& source() const { return source_; }
  const std::string& key() const { return key_; }

 private:
  std::string source_;
  std::string key_;
};

}  // namespace llmem

#endif  // LLMEM_ERROR_H_
