// Copyright 2026 The llmem Authors.

#include "web.h"

#include <algorithm>
#include <cctype>
#include <exception>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "llmem/error.h"
#include "llmem/gpu.h"
#include "llmem/model.h"
#include "llmem/report.h"
#include "llmem/request.h"

namespace llmem::web {
namespace {

using nlohmann::json;

/// A 4xx answer; thrown inside the handlers and turned into a Response.
struct BadRequest {
  int status;
  std::string message;
  std::string field;
};

Response json_response(std::string body) {
  return {200, "application/json", std::move(body)};
}

std::string_view content_type_of(std::string_view name) {
  if (name.ends_with(".html"))
    return "text/html; charset=utf-8";
  if (name.ends_with(".js"))
    return "text/javascript; charset=utf-8";
  if (name.ends_with(".css"))
    return "text/css; charset=utf-8";
  if (name.ends_with(".svg"))
    return "image/svg+xml";
  return "application/octet-stream";
}

/// Deepest nesting of arrays and objects in JSON text (strings skipped).
/// Checked before parsing: deeply nested values would exhaust the stack of
/// the recursive code that walks them later (dump, the request layer).
int nesting_depth(std::string_view text) {
  int depth = 0;
  int deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

json parse_object(std::string_view body) {
  if (nesting_depth(body) > kMaxNesting)
    throw BadRequest{400, "the request nests arrays and objects deeper than 32 levels", ""};
  json req;
  try {
    req = json::parse(body);
  } catch (const json::parse_error& e) {
    throw BadRequest{400, std::string("the request body is not valid JSON: ") + e.what(), ""};
  }
  if (!req.is_object())
    throw BadRequest{400, "the request body must be a JSON object", ""};
  return req;
}

/// The server reads no local files: a model is a catalog name or a config.json object.
void check_model_value(const json& req) {
  if (!req.contains("model"))
    throw BadRequest{400, "key 'model': required (a catalog name or a config.json object)",
                     "model"};
  const json& m = req["model"];
  if (m.is_string()) {
    std::error_code ec;
    const std::string name = m.get<std::string>();
    if (name.empty() || name.find("..") != std::string::npos || name.front() == '/' ||
        name.front() == '.' || std::filesystem::exists(name, ec)) {
      throw BadRequest{400,
                       "key 'model': expected a catalog name; the server opens no local files "
                       "(paste the config.json as a JSON object instead)",
                       "model"};
    }
  } else if (!m.is_object()) {
    throw BadRequest{400, "key 'model': expected a catalog name or a config.json object", "model"};
  }
  // Other keys that the request layer reads as a path or an object.
  for (const char* key : {"deepspeed_config", "fsdp_config"}) {
    if (req.contains(key) && req[key].is_string()) {
      throw BadRequest{400,
                       std::string("key '") + key +
                           "': the server opens no local files; give the config as a JSON object",
                       key};
    }
  }
}

ModelSpec load_request_model(const json& m) {
  try {
    return load_model_json(m.dump(), {.style = KeyStyle::kJson, .source = "request"});
  } catch (const Error& e) {
    throw BadRequest{400, e.what(), "model"};
  }
}

/// The key a message is about ("unknown key 'x'", "--batch: ..." -> "batch"), or "model".
std::string field_of(const std::string& message) {
  // Plain scans (std::regex recurses per character: long messages could
  // exhaust the stack).
  size_t key = message.find("key '");
  if (key != std::string::npos) {
    size_t end = message.find('\'', key + 5);
    if (end != std::string::npos && end > key + 5)
      return message.substr(key + 5, end - key - 5);
  }
  for (size_t at = message.find("--"); at != std::string::npos; at = message.find("--", at + 2)) {
    size_t end = at + 2;
    while (end < message.size() &&
           (std::islower(static_cast<unsigned char>(message[end])) != 0 ||
            std::isdigit(static_cast<unsigned char>(message[end])) != 0 || message[end] == '-')) {
      ++end;
    }
    if (end == at + 2 || message[at + 2] == '-')
      continue;
    std::string field = message.substr(at + 2, end - at - 2);
    if (field == "help")
      continue;
    for (char& c : field)
      c = c == '-' ? '_' : c;
    return field;
  }
  if (message.find("model") != std::string::npos || message.find("config") != std::string::npos)
    return "model";
  return "";
}

// ---------------------------------------------------------------------------
// POST /api/estimate: the request layer (include/llmem/request.h), as the CLI
// and the Python package use it, so a key means the same everywhere.

Response estimate_response(json req) {
  check_model_value(req);
  std::string format = "json";
  if (req.contains("format")) {
    const json& f = req["format"];
    if (!f.is_null()) {
      if (!f.is_string() || (f != "json" && f != "csv" && f != "svg" && f != "html"))
        throw BadRequest{400, "key 'format': expected json, csv, svg or html", "format"};
      format = f.get<std::string>();
    }
    req.erase("format");
  }
  Request r = parse_request(req.dump(), {.style = KeyStyle::kJson, .source = "request"});
  if (format == "json")
    return json_response(estimate_request_json(r));
  if (r.estimator != EstimatorKind::kLlmem)
    throw BadRequest{400, "key 'format': the paper estimator answers only json", "format"};
  Estimate e = estimate(r.model, r.setup, r.gpu);
  if (format == "csv")
    return {200, "text/csv; charset=utf-8", estimate_csv(e)};
  if (format == "svg")
    return {200, "image/svg+xml", estimate_svg(r.model, r.gpu, e)};
  return {200, "text/html; charset=utf-8", estimate_html(r.model, r.setup, r.gpu, e)};
}

// POST /api/plan: the plan command's request (parse_plan_request); the answer
// is `llmem plan --format json` (200 whether or not something fits: see "choice").
Response plan_response(const json& req) {
  check_model_value(req);
  PlanQuery q = parse_plan_request(req.dump(), {.style = KeyStyle::kJson, .source = "request"});
  return json_response(run_plan_request(q).json);
}

// ---------------------------------------------------------------------------

Response inspect(const json& req) {
  check_model_value(req);
  for (const auto& [key, value] : req.items()) {
    if (key != "model")
      throw BadRequest{400, "key '" + key + "': inspect takes only 'model'", key};
  }
  return json_response(inspect_json(load_request_model(req["model"])));
}

const std::string& gpus_json() {
  static const std::string kText = [] {
    json list = json::array();
    for (const GpuSpec& g : gpu_catalog()) {
      list.push_back({{"name", g.name},
                      {"aliases", g.aliases},
                      {"architecture", g.architecture},
                      {"capacity_bytes", g.capacity_bytes},
                      {"context_bytes", g.context_bytes}});
    }
    return json{{"schema_version", kSchemaVersion}, {"gpus", list}}.dump(2) + "\n";
  }();
  return kText;
}

Response route(std::string_view method, std::string_view path, std::string_view body) {
  const bool get = method == "GET" || method == "HEAD";
  if (get) {
    if (path == "/api/models") {
      static const std::string kModels = models_json();
      return json_response(kModels);
    }
    if (path == "/api/gpus")
      return json_response(gpus_json());
    std::string_view name = path == "/" ? "index.html" : path.substr(1);
    for (const EmbeddedFile& f : embedded_assets()) {
      if (f.name == name)
        return {200, std::string(content_type_of(name)), std::string(f.text)};
    }
  }
  const bool api = path == "/api/estimate" || path == "/api/inspect" || path == "/api/plan";
  if (api && method != "POST")
    throw BadRequest{405, "use POST for " + std::string(path), ""};
  if (api && body.size() > kMaxBodyBytes)
    throw BadRequest{413, "the request body is larger than 1 MiB", ""};
  if (path == "/api/estimate")
    return estimate_response(parse_object(body));
  if (path == "/api/inspect")
    return inspect(parse_object(body));
  if (path == "/api/plan")
    return plan_response(parse_object(body));
  if (path == "/api/models" || path == "/api/gpus")
    throw BadRequest{405, "use GET for " + std::string(path), ""};
  throw BadRequest{404, "no such resource: " + std::string(path), ""};
}

}  // namespace

std::string error_json(const std::string& message, const std::string& field) {
  json j = {{"error", message}};
  if (!field.empty())
    j["field"] = field;
  // Messages may quote invalid UTF-8 from the request: replace it rather than throw.
  return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

Response handle(std::string_view method, std::string_view path, std::string_view body) {
  try {
    return route(method, path, body);
  } catch (const BadRequest& e) {
    return {e.status, "application/json", error_json(e.message, e.field)};
  } catch (const Error& e) {
    // Errors inside a pasted config.json are about the request's "model".
    std::string field = e.source() == "model" ? "model"
                        : e.key().empty()     ? field_of(e.what())
                                              : e.key();
    return {400, "application/json", error_json(e.what(), field)};
  } catch (const std::exception& e) {
    return {500, "application/json", error_json(std::string("internal error: ") + e.what(), "")};
  }
}

}  // namespace llmem::web
