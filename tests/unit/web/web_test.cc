// Copyright 2026 The llmem Authors.
// `llmem serve`'s request handling, without sockets.

#include "web.h"

#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "llmem/model.h"

#include "cli.h"

namespace llmem::web {
namespace {

using nlohmann::json;

std::string cli_out(std::vector<const char*> args) {
  args.insert(args.begin(), "llmem");
  std::ostringstream out;
  std::ostringstream err;
  int code = cli::run(static_cast<int>(args.size()), args.data(), out, err);
  EXPECT_EQ(code, cli::kExitOk) << err.str();
  return out.str();
}

/// The status and the "field" of an error answer.
std::pair<int, std::string> error_of(const Response& r) {
  EXPECT_EQ(r.content_type, "application/json");
  json j = json::parse(r.body);
  EXPECT_TRUE(j.contains("error")) << r.body;
  return {r.status, j.value("field", "")};
}

TEST(Web, ServesThePage) {
  Response page = handle("GET", "/", "");
  EXPECT_EQ(page.status, 200);
  EXPECT_EQ(page.content_type, "text/html; charset=utf-8");
  EXPECT_NE(page.body.find("<form"), std::string::npos);
  for (const char* asset : {"/app.js", "/style.css", "/index.html"}) {
    Response r = handle("GET", asset, "");
    EXPECT_EQ(r.status, 200) << asset;
    EXPECT_FALSE(r.body.empty()) << asset;
  }
  for (const EmbeddedFile& f : embedded_assets()) {
    EXPECT_EQ(std::string(f.text).find("http://"), std::string::npos) << f.name;
    EXPECT_EQ(std::string(f.text).find("https://"), std::string::npos) << f.name;
  }
}

TEST(Web, ModelsAndGpus) {
  Response models = handle("GET", "/api/models", "");
  ASSERT_EQ(models.status, 200);
  EXPECT_EQ(models.body, cli_out({"models", "--format", "json"}));
  Response gpus = handle("GET", "/api/gpus", "");
  ASSERT_EQ(gpus.status, 200);
  json g = json::parse(gpus.body);
  ASSERT_TRUE(g["gpus"].is_array());
  bool a100 = false;
  for (const json& x : g["gpus"])
    a100 = a100 || x["name"] == "A100-80GB";
  EXPECT_TRUE(a100);
}

TEST(Web, EstimateAnswersTheCliJson) {
  Response r = handle("POST", "/api/estimate",
                      R"({"model": "facebook/opt-1.3b", "batch": 4, "seq": 512,
                          "grad_ckpt": true, "lora_rank": 8, "lora_targets": ["q_proj", "v_proj"]})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.content_type, "application/json");
  EXPECT_EQ(r.body, cli_out({"estimate", "--model", "facebook/opt-1.3b", "--batch", "4", "--seq",
                             "512", "--grad-ckpt", "--lora-rank", "8", "--lora-targets",
                             "q_proj,v_proj", "--format", "json"}));
  Response off = handle("POST", "/api/estimate",
                        R"({"model": "facebook/opt-125m", "grad_ckpt": false, "gpu": null})");
  ASSERT_EQ(off.status, 200) << off.body;
  EXPECT_EQ(off.body, cli_out({"estimate", "--model", "facebook/opt-125m", "--format", "json"}));
}

TEST(Web, EstimateOtherFormats) {
  Response csv =
      handle("POST", "/api/estimate", R"({"model": "facebook/opt-125m", "format": "csv"})");
  ASSERT_EQ(csv.status, 200) << csv.body;
  EXPECT_EQ(csv.body.rfind("event,step,phase", 0), 0u);
  Response html =
      handle("POST", "/api/estimate", R"({"model": "facebook/opt-125m", "format": "html"})");
  ASSERT_EQ(html.status, 200);
  EXPECT_EQ(html.content_type, "text/html; charset=utf-8");
  EXPECT_EQ(error_of(handle("POST", "/api/estimate",
                            R"({"model": "facebook/opt-125m", "format": "table"})")),
            std::make_pair(400, std::string("format")));
}

TEST(Web, PastedConfig) {
  const CatalogEntry* opt = nullptr;
  for (const CatalogEntry& e : catalog())
    opt = e.name == "facebook/opt-125m" ? &e : opt;
  ASSERT_NE(opt, nullptr);
  json req = {{"model", json::parse(opt->config_json)}, {"batch", 2}};
  Response r = handle("POST", "/api/estimate", req.dump());
  ASSERT_EQ(r.status, 200) << r.body;
  json j = json::parse(r.body);
  EXPECT_EQ(j["model"]["family"], "opt");
  json cli = json::parse(
      cli_out({"estimate", "--model", "facebook/opt-125m", "--batch", "2", "--format", "json"}));
  EXPECT_EQ(j["peak"], cli["peak"]);
  Response inspect = handle("POST", "/api/inspect", json{{"model", req["model"]}}.dump());
  ASSERT_EQ(inspect.status, 200) << inspect.body;
  EXPECT_EQ(json::parse(inspect.body)["params"], 125239296);
  // A broken config: the field is "model", the message names the config's key.
  req["model"]["hidden_size"] = "wide";
  for (const char* path : {"/api/inspect", "/api/estimate"}) {
    Response bad = handle("POST", path, json{{"model", req["model"]}}.dump());
    EXPECT_EQ(error_of(bad), std::make_pair(400, std::string("model"))) << path;
    EXPECT_NE(bad.body.find("hidden_size"), std::string::npos) << bad.body;
  }
}

TEST(Web, Inspect) {
  Response r = handle("POST", "/api/inspect", R"({"model": "facebook/opt-1.3b"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, cli_out({"inspect", "--model", "facebook/opt-1.3b", "--format", "json"}));
  EXPECT_EQ(error_of(handle("POST", "/api/inspect", R"({"model": "x/y", "batch": 1})")).second,
            "batch");
}

TEST(Web, PlanAnswersTheCliJson) {
  Response r = handle("POST", "/api/plan",
                      R"({"model": "facebook/opt-125m", "gpus": 2, "gpu": "RTX4090",
                          "methods": ["ddp", "zero2"], "seq": 256, "top": 2})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body,
            cli_out({"plan", "--model", "facebook/opt-125m", "--gpus", "2", "--gpu", "RTX4090",
                     "--methods", "ddp,zero2", "--seq", "256", "--top", "2", "--format", "json"}));
  EXPECT_FALSE(json::parse(r.body)["choice"].is_null());
  EXPECT_EQ(
      error_of(handle("POST", "/api/plan", R"({"model": "facebook/opt-125m", "gpus": -1})")).second,
      "gpus");
  EXPECT_EQ(handle("GET", "/api/plan", "").status, 405);
}

TEST(Web, BadRequestsNameTheField) {
  using P = std::pair<int, std::string>;
  EXPECT_EQ(error_of(handle("POST", "/api/estimate", "{\"model\": ")), P(400, ""));
  EXPECT_EQ(error_of(handle("POST", "/api/estimate", "[1, 2]")), P(400, ""));
  EXPECT_EQ(error_of(handle("POST", "/api/estimate", "")), P(400, ""));
  EXPECT_EQ(error_of(handle("POST", "/api/estimate", R"({"batch": 4})")), P(400, "model"));
  EXPECT_EQ(error_of(handle("POST", "/api/estimate", R"({"model": 7})")), P(400, "model"));
  EXPECT_EQ(error_of(handle("POST", "/api/estimate", R"({"model": "facebook/opt-1.3c"})")),
            P(400, "model"));
  EXPECT_EQ(error_of(handle("POST", "/api/estimate", R"({"model": "/etc/passwd"})")),
            P(400, "model"));
  EXPECT_EQ(error_of(handle("POST", "/api/estimate", R"({"model": "../x/config.json"})")),
            P(400, "model"));
  EXPECT_EQ(
      error_of(handle("POST", "/api/estimate",
                      R"({"model": "facebook/opt-125m", "deepspeed_config": "/etc/passwd"})")),
      P(400, "deepspeed_config"));
  EXPECT_EQ(error_of(handle("POST", "/api/estimate",
                            R"({"model": "facebook/opt-125m", "fsdp_config": "/etc/passwd"})")),
            P(400, "fsdp_config"));
  EXPECT_EQ(error_of(handle("POST", "/api/estimate",
                            R"({"model": "facebook/opt-125m", "batch": "four"})")),
            P(400, "batch"));
  EXPECT_EQ(
      error_of(handle("POST", "/api/estimate", R"({"model": "facebook/opt-125m", "batch": {}})")),
      P(400, "batch"));
  EXPECT_EQ(
      error_of(handle("POST", "/api/estimate", R"({"model": "facebook/opt-125m", "seq": true})")),
      P(400, "seq"));
  EXPECT_EQ(error_of(handle("POST", "/api/estimate",
                            R"({"model": "facebook/opt-125m", "precision": "fp8"})")),
            P(400, "precision"));
  EXPECT_EQ(error_of(handle("POST", "/api/estimate",
                            R"({"model": "facebook/opt-125m", "warp_drive": 1})")),
            P(400, "warp_drive"));
  EXPECT_EQ(error_of(handle("POST", "/api/estimate", R"({"model": "facebook/opt-125m", "X": 1})")),
            P(400, "X"));
  EXPECT_EQ(error_of(handle("POST", "/api/estimate", R"({"model": "facebook/opt-125m",
                                                         "gpu": "Voodoo2"})")),
            P(400, "gpu"));
}

TEST(Web, DeepNestingIsRefused) {
  std::string deep = R"({"model": "facebook/opt-125m", "lora": )";
  for (int i = 0; i < 100000; ++i)
    deep += R"({"a": )";
  deep += "1" + std::string(100001, '}');
  EXPECT_EQ(error_of(handle("POST", "/api/estimate", deep)).first, 400);
  EXPECT_EQ(error_of(handle("POST", "/api/inspect", "[" + std::string(1000, '[') + "]")).first,
            400);
  // Brackets inside strings do not count.
  Response r = handle(
      "POST", "/api/estimate",
      R"({"model": "facebook/opt-125m", "lora_targets": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"{"})");
  EXPECT_EQ(r.body.find("deeper than"), std::string::npos) << r.body;
}

TEST(Web, StatusCodes) {
  EXPECT_EQ(handle("POST", "/api/estimate", std::string(kMaxBodyBytes + 1, ' ')).status, 413);
  EXPECT_EQ(handle("GET", "/api/estimate", "").status, 405);
  EXPECT_EQ(handle("POST", "/api/models", "{}").status, 405);
  EXPECT_EQ(handle("GET", "/nope", "").status, 404);
  EXPECT_EQ(handle("GET", "/api/nope", "").status, 404);
  EXPECT_EQ(handle("DELETE", "/", "").status, 404);
}

}  // namespace
}  // namespace llmem::web
