// Copyright 2026 The llmem Authors.

#include "web.h"

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include <nlohmann/json.hpp>

#include "llmem/error.h"
#include "llmem/gpu.h"
#include "llmem/model.h"
#include "llmem/report.h"

#include "cli.h"
#include <unistd.h>

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

json parse_object(std::string_view body) {
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
}

ModelSpec load_request_model(const json& m) {
  try {
    if (m.is_object())
      return parse_config(m.dump(), "model");
    return load_model(m.get<std::string>());
  } catch (const Error& e) {
    throw BadRequest{400, e.what(), "model"};
  }
}

/// A config.json object written to a private temporary file for the CLI, removed on scope exit.
class TempConfig {
 public:
  explicit TempConfig(const json& config) {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "llmem-serve-XXXXXX.json").string();
    int fd = mkstemps(pattern.data(), 5);
    if (fd < 0)
      throw BadRequest{500, "cannot create a temporary file", ""};
    close(fd);
    path_ = pattern;
    std::ofstream(path_) << config.dump();
  }
  ~TempConfig() { std::remove(path_.c_str()); }
  TempConfig(const TempConfig&) = delete;
  TempConfig& operator=(const TempConfig&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

void replace_all(std::string* text, const std::string& from, const std::string& to) {
  if (from.empty())
    return;
  for (size_t at = text->find(from); at != std::string::npos; at = text->find(from, at)) {
    text->replace(at, from.size(), to);
    at += to.size();
  }
}

/// The option a CLI message is about ("--batch: ..." -> "batch"), or "model".
std::string field_of(const std::string& message) {
  static const std::regex kOption("--([a-z0-9][a-z0-9-]*)");
  std::smatch m;
  if (std::regex_search(message, m, kOption) && m[1] != "help") {
    std::string field = m[1];
    for (char& c : field)
      c = c == '-' ? '_' : c;
    return field;
  }
  if (message.find("model") != std::string::npos || message.find("config") != std::string::npos)
    return "model";
  return "";
}

// ---------------------------------------------------------------------------
// POST /api/estimate. Until the request layer (include/llmem/request.h)
// lands, the request becomes the command line `llmem estimate --key=value ...`
// so that the answer is the CLI's, byte for byte.

std::string option_value(const std::string& key, const json& v) {
  if (v.is_string())
    return v.get<std::string>();
  if (v.is_boolean())
    return v.get<bool>() ? "true" : "false";
  if (v.is_number())
    return v.dump();
  if (v.is_array() && key == "lora_targets") {
    std::string joined;
    for (const json& x : v) {
      if (!x.is_string() && !x.is_number())
        throw BadRequest{400, "key '" + key + "': expected a list of strings", key};
      joined += (joined.empty() ? "" : ",") + (x.is_string() ? x.get<std::string>() : x.dump());
    }
    return joined;
  }
  throw BadRequest{400, "key '" + key + "': expected a string, number or boolean", key};
}

Response estimate_via_cli(const json& req) {
  check_model_value(req);
  std::vector<std::string> args = {"llmem", "estimate"};
  std::string format = "json";
  std::unique_ptr<TempConfig> temp;
  for (const auto& [key, value] : req.items()) {
    static const std::regex kKey("[a-z][a-z0-9_]*");
    if (!std::regex_match(key, kKey))
      throw BadRequest{400, "key '" + key + "': not an estimate option", key};
    if (value.is_null())
      continue;
    std::string text;
    if (key == "model" && value.is_object()) {
      temp = std::make_unique<TempConfig>(value);
      text = temp->path();
    } else {
      text = option_value(key, value);
    }
    if (key == "format") {
      if (text != "json" && text != "csv" && text != "svg" && text != "html")
        throw BadRequest{400, "key 'format': expected json, csv, svg or html", key};
      format = text;
    }
    std::string option = key;
    for (char& c : option)
      c = c == '_' ? '-' : c;
    args.push_back("--" + option + "=" + text);
  }
  if (!req.contains("format"))
    args.emplace_back("--format=json");
  std::vector<const char*> argv;
  for (const std::string& a : args)
    argv.push_back(a.c_str());
  std::ostringstream out;
  std::ostringstream err;
  int code = cli::run(static_cast<int>(argv.size()), argv.data(), out, err);
  std::string body = out.str();
  std::string message = err.str();
  if (temp) {
    replace_all(&body, temp->path(), "config.json");
    replace_all(&message, temp->path(), "model");
  }
  if (code != cli::kExitOk) {
    if (message.empty())
      message = body;
    replace_all(&message, "llmem: error: ", "");
    replace_all(&message, "Run with --help for more information.", "");
    while (!message.empty() && (message.back() == '\n' || message.back() == ' '))
      message.pop_back();
    replace_all(&message, "\n", "; ");
    std::string field = field_of(message);
    if (message.starts_with("The following argument")) {
      message = "key '" + field + "': not an estimate option";
    } else if (message.starts_with("Could not convert")) {
      message = "key '" + field + "': " + message;
    } else if (!field.empty() && field != "model") {
      std::string option = "--" + field;
      for (char& c : option)
        c = c == '_' ? '-' : c;
      if (message.starts_with(option + ": "))
        message = "key '" + field + "': " + message.substr(option.size() + 2);
    }
    throw BadRequest{400, message, field};
  }
  const std::string_view type = format == "json"  ? "application/json"
                                : format == "csv" ? "text/csv; charset=utf-8"
                                : format == "svg" ? "image/svg+xml"
                                                  : "text/html; charset=utf-8";
  return {200, std::string(type), body};
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
  const bool api = path == "/api/estimate" || path == "/api/inspect";
  if (api && method != "POST")
    throw BadRequest{405, "use POST for " + std::string(path), ""};
  if (api && body.size() > kMaxBodyBytes)
    throw BadRequest{413, "the request body is larger than 1 MiB", ""};
  if (path == "/api/estimate")
    return estimate_via_cli(parse_object(body));
  if (path == "/api/inspect")
    return inspect(parse_object(body));
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
    std::string field = e.key().empty() ? field_of(e.what()) : e.key();
    return {400, "application/json", error_json(e.what(), field)};
  } catch (const std::exception& e) {
    return {500, "application/json", error_json(std::string("internal error: ") + e.what(), "")};
  }
}

}  // namespace llmem::web
