// Copyright 2026 The llmem Authors.

#include "serve.h"

#include <ostream>
#include <string>
#include <string_view>

#include <CLI/CLI.hpp>

#include "cli.h"
#include "web.h"
#include <httplib.h>

namespace llmem::cli {

CLI::App* add_serve_command(CLI::App& app, ServeOptions* options) {
  CLI::App* cmd = app.add_subcommand(
      "serve", "Serve the web page and the JSON API (/api/estimate, /api/models, /api/inspect)");
  cmd->add_option("--host", options->host,
                  "Address to bind (default 127.0.0.1: this machine only)");
  cmd->add_option("--port", options->port, "TCP port (0: any free port)")
      ->check(CLI::Range(0, 65535));
  return cmd;
}

#ifdef LLMEM_NO_HTTPLIB
int run_serve(const ServeOptions&, std::ostream&, std::ostream& err) {
  err << "llmem: error: serve: this llmem was built without cpp-httplib (libcpp-httplib-dev)\n";
  return kExitBadInput;
}
#else
int run_serve(const ServeOptions& options, std::ostream& out, std::ostream& err) {
  httplib::Server server;
  server.set_payload_max_length(web::kMaxBodyBytes);
  // httplib's default sets SO_REUSEPORT, which lets a second server bind the
  // same port silently; SO_REUSEADDR alone still allows a quick restart.
  server.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  auto respond = [](const httplib::Request& req, httplib::Response& res, std::string_view body) {
    web::Response r = web::handle(req.method, req.path, body);
    res.status = r.status;
    res.set_header("Cache-Control", "no-store");
    res.set_header("X-Content-Type-Options", "nosniff");
    res.set_content(r.body, r.content_type);
  };
  auto without_body = [respond](const httplib::Request& req, httplib::Response& res) {
    respond(req, res, "");
  };
  // Bodies are read raw, whatever their Content-Type says: httplib would
  // otherwise parse (and cap at 8 KiB) bodies sent as form data, which is what
  // `curl -d` declares. httplib has already refused bodies over the limit.
  auto with_body = [respond](const httplib::Request& req, httplib::Response& res,
                             const httplib::ContentReader& content) {
    if (req.is_multipart_form_data()) {
      res.status = 415;
      res.set_content(web::error_json("send the request as a JSON body, not a form", ""),
                      "application/json");
      return;
    }
    std::string body;
    bool fits = true;
    bool read = content([&](const char* data, size_t size) {
      fits = body.size() + size <= web::kMaxBodyBytes;
      if (fits)
        body.append(data, size);
      return fits;
    });
    // httplib refuses a declared length over the limit without calling us.
    if (!fits || (!read && req.get_header_value<uint64_t>("Content-Length") > web::kMaxBodyBytes)) {
      res.status = 413;
      res.set_content(web::error_json("the request body is larger than 1 MiB", ""),
                      "application/json");
      return;
    }
    if (!read) {
      res.status = 400;
      res.set_content(web::error_json("the request body could not be read", ""),
                      "application/json");
      return;
    }
    respond(req, res, body);
  };
  for (const char* pattern : {"/.*", "/"}) {
    server.Get(pattern, without_body);
    server.Post(pattern, with_body);
    server.Put(pattern, with_body);
    server.Patch(pattern, with_body);
    server.Delete(pattern, without_body);
  }
  // Errors httplib answers itself (413 for oversize bodies, 400 for broken
  // requests) get the API's JSON error body too.
  server.set_error_handler([](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty())
      return;
    std::string message = res.status == 413 ? "the request body is larger than 1 MiB"
                                            : "HTTP " + std::to_string(res.status);
    res.set_content(web::error_json(message, ""), "application/json");
  });
  server.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
        res.status = 500;
        res.set_content(web::error_json("internal error", ""), "application/json");
      });
  int port = options.port;
  if (port == 0) {
    port = server.bind_to_any_port(options.host);
  } else if (!server.bind_to_port(options.host, port)) {
    port = -1;
  }
  if (port < 0) {
    err << "llmem: error: --host/--port: cannot listen on " << options.host << ":" << options.port
        << "\n";
    return kExitBadInput;
  }
  out << "llmem serve: http://" << options.host << ":" << port << "/" << std::endl;
  return server.listen_after_bind() ? kExitOk : kExitBadInput;
}
#endif  // LLMEM_NO_HTTPLIB

}  // namespace llmem::cli
