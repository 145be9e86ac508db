// Copyright 2026 The llmem Authors.
// `llmem serve`: the local web page and JSON API (cpp-httplib over web.h).

#ifndef LLMEM_TOOLS_LLMEM_SERVE_H_
#define LLMEM_TOOLS_LLMEM_SERVE_H_

#include <iosfwd>
#include <string>

namespace CLI {
class App;
}

namespace llmem::cli {

struct ServeOptions {
  std::string host = "127.0.0.1";
  int port = 8080;  ///< 0: any free port (printed on the first line of output)
};

/// Adds the `serve` subcommand to `app`, filling `options`.
CLI::App* add_serve_command(CLI::App& app, ServeOptions* options);

/// Serves until the process is stopped. Prints "llmem serve: http://HOST:PORT/"
/// once listening; returns 2 when the address cannot be bound.
int run_serve(const ServeOptions& options, std::ostream& out, std::ostream& err);

}  // namespace llmem::cli

#endif  // LLMEM_TOOLS_LLMEM_SERVE_H_
