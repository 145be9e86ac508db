// Copyright 2026 The llmem Authors.

#include "config/config_reader.h"

#include <cmath>
#include <sstream>

#include "llmem/error.h"

namespace llmem::config {
namespace {

std::string type_name(const nlohmann::json& value) {
  if (value.is_number_integer())
    return "an integer";
  if (value.is_number_float())
    return "a number";
  if (value.is_boolean())
    return "a boolean";
  if (value.is_string())
    return "a string";
  if (value.is_array())
    return "an array";
  if (value.is_object())
    return "an object";
  return "null";
}

std::string show(const nlohmann::json& value) {
  std::string text = value.dump();
  if (text.size() > 40)
    text = text.substr(0, 37) + "...";
  return text;
}

}  // namespace

nlohmann::json parse_json(std::string_view text, const std::string& source) {
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::parse_error& e) {
    // e.byte is the 1-based offset of the failing character.
    size_t offset = e.byte == 0 ? 0 : e.byte - 1;
    if (offset > text.size())
      offset = text.size();
    size_t line = 1;
    size_t column = 1;
    for (size_t i = 0; i < offset; ++i) {
      if (text[i] == '\n') {
        ++line;
        column = 1;
      } else {
        ++column;
      }
    }
    std::string what = e.what();
    // Drop nlohmann's "[json.exception.parse_error.101] parse error at line 1, column 2: " prefix.
    size_t colon = what.find(": ");
    if (colon != std::string::npos)
      what = what.substr(colon + 2);
    std::ostringstream message;
    message << "malformed JSON at line " << line << ", column " << column << ": " << what;
    throw Error(source, "", message.str());
  } catch (const nlohmann::json::exception& e) {
    // Numbers beyond double's range ("1e505") and similar.
    std::string what = e.what();
    size_t bracket = what.find("] ");
    if (bracket != std::string::npos)
      what = what.substr(bracket + 2);
    throw Error(source, "", "malformed JSON: " + what);
  }
}

ConfigReader::ConfigReader(const nlohmann::json& object, std::string source)
    : object_(object), source_(std::move(source)) {
  if (!object_.is_object()) {
    throw Error(source_, "", "expected a JSON object at the top level, got " + type_name(object_));
  }
}

void ConfigReader::fail(const std::string& key, const std::string& message) const {
  throw Error(source_, key, message);
}

const nlohmann::json* ConfigReader::find(Keys keys, std::string* found_as) const {
  for (const char* key : keys) {
    auto it = object_.find(key);
    if (it != object_.end() && !it->is_null()) {
      *found_as = key;
      return &*it;
    }
  }
  return nullptr;
}

bool ConfigReader::has(Keys keys) const {
  std::string found_as;
  return find(keys, &found_as) != nullptr;
}

bool ConfigReader::is_null(const char* key) const {
  auto it = object_.find(key);
  return it != object_.end() && it->is_null();
}

const nlohmann::json& ConfigReader::raw(Keys keys) const {
  static const nlohmann::json kNull;
  std::string found_as;
  const nlohmann::json* value = find(keys, &found_as);
  return value == nullptr ? kNull : *value;
}

void ConfigReader::record(Keys keys, const std::string& found_as, const std::string& value,
                          const char* default_source) {
  std::string canonical = *keys.begin();
  std::string origin;
  if (found_as.empty()) {
    origin = std::string("default: ") + default_source;
  } else if (found_as == canonical) {
    origin = "config";
  } else {
    origin = "config (alias " + found_as + ")";
  }
  for (Provenance& p : provenance_) {
    if (p.key == canonical) {
      p.value = value;
      p.origin = origin;
      return;
    }
  }
  provenance_.push_back({canonical, value, origin});
}

int64_t ConfigReader::integer(Keys keys, int64_t fallback, const char* default_source,
                              int64_t min) {
  std::string found_as;
  const nlohmann::json* value = find(keys, &found_as);
  if (value == nullptr) {
    record(keys, "", std::to_string(fallback), default_source);
    return fallback;
  }
  int64_t result = 0;
  if (value->is_number_integer()) {
    if (value->is_number_unsigned() && value->get<uint64_t>() > uint64_t{INT64_MAX}) {
      fail(found_as, "expected an integer below 2^63, got " + show(*value));
    }
    result = value->get<int64_t>();
  } else if (value->is_number_float()) {
    // Some configs write sizes as 4096.0; accept exact integers only.
    double d = value->get<double>();
    if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9.0e15) {
      fail(found_as, "expected an integer, got " + show(*value));
    }
    result = static_cast<int64_t>(d);
  } else {
    fail(found_as, "expected an integer, got " + type_name(*value) + " " + show(*value));
  }
  if (result < min) {
    fail(found_as, std::string("expected an integer ≥ ") + std::to_string(min) + ", got " +
                       std::to_string(result));
  }
  if (result > kMaxDimension) {
    fail(found_as, "value " + std::to_string(result) + " is implausibly large (limit 2^31)");
  }
  record(keys, found_as, std::to_string(result), default_source);
  return result;
}

int64_t ConfigReader::size(Keys keys, int64_t fallback, const char* default_source) {
  return integer(keys, fallback, default_source, 1);
}

int64_t ConfigReader::required_size(Keys keys) {
  if (!has(keys)) {
    std::string names;
    for (const char* key : keys)
      names += names.empty() ? key : std::string(" or ") + key;
    fail(*keys.begin(),
         "required key is missing (expected a positive integer under " + names + ")");
  }
  return integer(keys, 0, "", 1);
}

int64_t ConfigReader::count(Keys keys, int64_t fallback, const char* default_source) {
  return integer(keys, fallback, default_source, 0);
}

std::optional<int64_t> ConfigReader::optional_size(Keys keys) {
  if (!has(keys))
    return std::nullopt;
  return integer(keys, 0, "", 1);
}

double ConfigReader::number(Keys keys, double fallback, const char* default_source) {
  std::string found_as;
  const nlohmann::json* value = find(keys, &found_as);
  if (value == nullptr) {
    record(keys, "", std::to_string(fallback), default_source);
    return fallback;
  }
  if (!value->is_number()) {
    fail(found_as, "expected a number, got " + type_name(*value) + " " + show(*value));
  }
  double result = value->get<double>();
  if (!std::isfinite(result))
    fail(found_as, "expected a finite number");
  record(keys, found_as, value->dump(), default_source);
  return result;
}

double ConfigReader::probability(Keys keys, double fallback, const char* default_source) {
  double p = number(keys, fallback, default_source);
  if (p < 0 || p >= 1) {
    std::string found_as;
    find(keys, &found_as);
    fail(found_as, "expected a probability in [0, 1), got " + std::to_string(p));
  }
  return p;
}

bool ConfigReader::flag(Keys keys, bool fallback, const char* default_source) {
  std::string found_as;
  const nlohmann::json* value = find(keys, &found_as);
  if (value == nullptr) {
    record(keys, "", fallback ? "true" : "false", default_source);
    return fallback;
  }
  if (!value->is_boolean()) {
    fail(found_as, "expected true or false, got " + type_name(*value) + " " + show(*value));
  }
  bool result = value->get<bool>();
  record(keys, found_as, result ? "true" : "false", default_source);
  return result;
}

std::string ConfigReader::text(Keys keys, const std::string& fallback, const char* default_source) {
  std::string found_as;
  const nlohmann::json* value = find(keys, &found_as);
  if (value == nullptr) {
    record(keys, "", fallback, default_source);
    return fallback;
  }
  if (!value->is_string()) {
    fail(found_as, "expected a string, got " + type_name(*value) + " " + show(*value));
  }
  std::string result = value->get<std::string>();
  record(keys, found_as, result, default_source);
  return result;
}

std::vector<int64_t> ConfigReader::int_list(Keys keys) {
  std::string found_as;
  const nlohmann::json* value = find(keys, &found_as);
  std::vector<int64_t> result;
  if (value == nullptr)
    return result;
  if (!value->is_array()) {
    fail(found_as, "expected an array of integers, got " + type_name(*value));
  }
  for (const auto& item : *value) {
    if (!item.is_number_integer()) {
      fail(found_as, "expected an array of integers, found " + type_name(item) + " " + show(item));
    }
    result.push_back(item.get<int64_t>());
  }
  record(keys, found_as, value->dump(), "");
  return result;
}

std::vector<std::string> ConfigReader::string_list(Keys keys) {
  std::string found_as;
  const nlohmann::json* value = find(keys, &found_as);
  std::vector<std::string> result;
  if (value == nullptr)
    return result;
  if (!value->is_array())
    fail(found_as, "expected an array of strings, got " + type_name(*value));
  for (const auto& item : *value) {
    if (!item.is_string()) {
      fail(found_as, "expected an array of strings, found " + type_name(item) + " " + show(item));
    }
    result.push_back(item.get<std::string>());
  }
  return result;
}

}  // namespace llmem::config
