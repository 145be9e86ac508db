// Copyright 2026 The llmem Authors.
// The llmem command line: parses arguments, calls the library, prints.

#ifndef LLMEM_TOOLS_LLMEM_CLI_H_
#define LLMEM_TOOLS_LLMEM_CLI_H_

#include <iosfwd>

namespace llmem::cli {

/// Exit codes: 0 success, 1 "does not fit" answers, 2 bad input or usage.
inline constexpr int kExitOk = 0;
inline constexpr int kExitDoesNotFit = 1;
inline constexpr int kExitBadInput = 2;

/// Runs the command line; writes results to `out` and messages to `err`.
int run(int argc, const char* const* argv, std::ostream& out, std::ostream& err);

}  // namespace llmem::cli

#endif  // LLMEM_TOOLS_LLMEM_CLI_H_
