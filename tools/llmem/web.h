// Copyright 2026 The llmem Authors.
// The request handling of `llmem serve`, without sockets: a request (method,
// path, query, body) in, a status, content type and body out. serve.cc puts
// it behind cpp-httplib; the unit tests call it directly.

#ifndef LLMEM_TOOLS_LLMEM_WEB_H_
#define LLMEM_TOOLS_LLMEM_WEB_H_

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace llmem::web {

/// Largest request body accepted; larger ones get 413.
inline constexpr size_t kMaxBodyBytes = size_t{1} << 20;

/// Deepest nesting of arrays and objects accepted in a request body (400 beyond).
inline constexpr int kMaxNesting = 32;

struct Response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
};

/// Routes:
///   GET  /, /app.js, /style.css   the page (embedded assets)
///   GET  /api/models              `llmem models --format json`
///   GET  /api/gpus                the GPU catalog
///   POST /api/estimate            body: a JSON object whose keys are estimate's long options
///                                 with '-' -> '_' ({"model": "facebook/opt-1.3b", "batch": 4});
///                                 answers `llmem estimate --format json` (or "format": csv,
///                                 svg or html)
///   POST /api/inspect             body: {"model": name or config.json object}
/// "model" is a catalog name or a config.json object; the server opens no local
/// files. Bad requests get 4xx with {"error": "...", "field": "..."}; nothing
/// throws out of handle().
Response handle(std::string_view method, std::string_view path, std::string_view body);

/// A JSON error body: {"error": message, "field": field} (field left out when empty).
std::string error_json(const std::string& message, const std::string& field);

/// One embedded file of web/ (generated at build time).
struct EmbeddedFile {
  std::string_view name;
  std::string_view text;
};
const std::vector<EmbeddedFile>& embedded_assets();

}  // namespace llmem::web

#endif  // LLMEM_TOOLS_LLMEM_WEB_H_
