// Copyright 2026 The llmem Authors.
// Typed, provenance-recording access to the keys of a config.json object.

#ifndef LLMEM_SRC_CONFIG_CONFIG_READER_H_
#define LLMEM_SRC_CONFIG_CONFIG_READER_H_

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "llmem/model.h"

namespace llmem::config {

/// Parses JSON text; on failure throws Error naming the source with the line
/// and column of the fault.
nlohmann::json parse_json(std::string_view text, const std::string& source);

/// Reads keys of one JSON object. A key may have aliases (the first name is the
/// canonical one); JSON null counts as absent, as Hugging Face treats None.
/// Each read records where its value came from. Every accessor throws Error
/// naming the source and the key when the value has the wrong type or range.
class ConfigReader {
 public:
  using Keys = std::initializer_list<const char*>;

  ConfigReader(const nlohmann::json& object, std::string source);

  const std::string& source() const { return source_; }
  bool has(Keys keys) const;
  /// The key is present with a JSON null (has() treats that as absent).
  bool is_null(const char* key) const;

  /// Integer ≥ 1 (sizes, counts). `default_source` names the Hugging Face
  /// class whose default applies when the key is absent.
  int64_t size(Keys keys, int64_t fallback, const char* default_source);
  int64_t required_size(Keys keys);
  /// Integer ≥ 0 (0 allowed, e.g. a rank of 0 meaning "none").
  int64_t count(Keys keys, int64_t fallback, const char* default_source);
  std::optional<int64_t> optional_size(Keys keys);
  double probability(Keys keys, double fallback, const char* default_source);
  double number(Keys keys, double fallback, const char* default_source);
  bool flag(Keys keys, bool fallback, const char* default_source);
  std::string text(Keys keys, const std::string& fallback, const char* default_source);
  /// A JSON array of integers (e.g. mlp_only_layers), empty when absent.
  std::vector<int64_t> int_list(Keys keys);
  /// A JSON array of strings (e.g. layer_types), empty when absent.
  std::vector<std::string> string_list(Keys keys);
  /// The raw value (for nested structures such as rope_scaling); null when absent.
  const nlohmann::json& raw(Keys keys) const;

  /// Throws Error("<source>: <key>: <message>").
  [[noreturn]] void fail(const std::string& key, const std::string& message) const;

  std::vector<Provenance> take_provenance() { return std::move(provenance_); }

 private:
  /// Returns the value and the name it was found under, or nullptr.
  const nlohmann::json* find(Keys keys, std::string* found_as) const;
  void record(Keys keys, const std::string& found_as, const std::string& value,
              const char* default_source);
  int64_t integer(Keys keys, int64_t fallback, const char* default_source, int64_t min);

  const nlohmann::json& object_;
  std::string source_;
  std::vector<Provenance> provenance_;
};

/// Largest size llmem accepts for any single dimension; larger values are
/// treated as a mistake rather than a model (2^31: no published config comes
/// within a factor of 1000 of it).
inline constexpr int64_t kMaxDimension = int64_t{1} << 31;

}  // namespace llmem::config

#endif  // LLMEM_SRC_CONFIG_CONFIG_READER_H_
