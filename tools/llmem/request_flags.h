// Copyright 2026 The llmem Authors.
// Command-line options that form a request (include/llmem/request.h).

#ifndef LLMEM_TOOLS_LLMEM_REQUEST_FLAGS_H_
#define LLMEM_TOOLS_LLMEM_REQUEST_FLAGS_H_

#include <deque>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include <CLI/CLI.hpp>

#include "llmem/request.h"

namespace llmem::cli {

// The options of a command that form a request (include/llmem/request.h): each
// option's key is its long name with '-' replaced by '_'. Only options given
// on the command line go into the request, so every default lives in the
// request layer.
class RequestFlags {
 public:
  explicit RequestFlags(CLI::App* cmd) : cmd_(cmd) {}

  template <typename T>
  CLI::Option* option(const std::string& names, const std::string& help) {
    Entry& e = entries_.emplace_back(Entry{key_of(names), nullptr, T{}});
    e.option = cmd_->add_option(names, std::get<T>(e.value), help);
    return e.option;
  }
  CLI::Option* flag(const std::string& names, const std::string& help) {
    Entry& e = entries_.emplace_back(Entry{key_of(names), nullptr, false});
    e.option = cmd_->add_flag(names, std::get<bool>(e.value), help);
    return e.option;
  }

  /// The request's JSON text: the options that were given.
  std::string request() const {
    std::vector<std::pair<std::string, RequestValue>> fields;
    for (const Entry& e : entries_) {
      if (e.option->count() > 0)
        fields.emplace_back(e.key, e.value);
    }
    return request_json(fields);
  }

 private:
  struct Entry {
    std::string key;
    CLI::Option* option;
    RequestValue value;
  };

  // "--lora-rank,-r" -> "lora_rank".
  static std::string key_of(const std::string& names) {
    std::string key = names.substr(2, names.find(',') - 2);
    for (char& ch : key) {
      if (ch == '-')
        ch = '_';
    }
    return key;
  }

  CLI::App* cmd_;
  std::deque<Entry> entries_;  // stable addresses: CLI11 writes into the values
};

}  // namespace llmem::cli

#endif  // LLMEM_TOOLS_LLMEM_REQUEST_FLAGS_H_
