// Copyright 2026 The llmem Authors.
// Runs the command line in-process for tests: exit code, stdout, stderr.

#ifndef LLMEM_TESTS_UNIT_CLI_RUN_CLI_H_
#define LLMEM_TESTS_UNIT_CLI_RUN_CLI_H_

#include <sstream>
#include <string>
#include <vector>

#include "cli.h"

namespace llmem::cli::testing {

struct Result {
  int code;
  std::string out;
  std::string err;
};

inline Result run_cli(std::vector<const char*> args) {
  args.insert(args.begin(), "llmem");
  std::ostringstream out;
  std::ostringstream err;
  int code = run(static_cast<int>(args.size()), args.data(), out, err);
  return {code, out.str(), err.str()};
}

}  // namespace llmem::cli::testing

#endif  // LLMEM_TESTS_UNIT_CLI_RUN_CLI_H_
