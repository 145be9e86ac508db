// Copyright 2026 The llmem Authors.
// The CLI in-process: outputs, JSON contract and exit codes.

#include "cli.h"

#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace llmem::cli {
namespace {

struct Result {
  int code;
  std::string out;
  std::string err;
};

Result run_cli(std::vector<const char*> args) {
  args.insert(args.begin(), "llmem");
  std::ostringstream out;
  std::ostringstream err;
  int code = run(static_cast<int>(args.size()), args.data(), out, err);
  return {code, out.str(), err.str()};
}

TEST(Cli, InspectJsonContract) {
  Result r = run_cli({"inspect", "--model", "facebook/opt-1.3b", "--format", "json"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["params"].get<int64_t>(), 1315758080);
  EXPECT_EQ(j["model_type"], "opt");
  EXPECT_EQ(j["vocab_size"].get<int64_t>(), 50272);
  EXPECT_EQ(j["hidden_size"].get<int64_t>(), 2048);
  EXPECT_EQ(j["layers"].get<int64_t>(), 24);
  ASSERT_TRUE(j["tensors"].is_array());
  int64_t sum = 0;
  bool tied = false;
  for (const auto& t : j["tensors"]) {
    ASSERT_TRUE(t.contains("name") && t.contains("shape") && t.contains("params"));
    sum += t["params"].get<int64_t>();
    if (t.contains("tied_to"))
      tied = t["tied_to"] == "model.decoder.embed_tokens.weight";
  }
  EXPECT_EQ(sum, 1315758080);
  EXPECT_TRUE(tied);
}

TEST(Cli, InspectTableShowsCountAndLayers) {
  Result r = run_cli({"inspect", "--model", "deepseek-ai/DeepSeek-V2-Lite"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_NE(r.out.find("15,706,484,224"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("layers 1-26"), std::string::npos) << r.out;
}

TEST(Cli, ModelsListsTheCatalog) {
  Result r = run_cli({"models", "--format", "json"});
  ASSERT_EQ(r.code, kExitOk);
  nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_GE(j["models"].size(), 45u);
}

TEST(Cli, BadInputExitsWithTwo) {
  Result r = run_cli({"inspect", "--model", "facebook/opt-1.3c"});
  EXPECT_EQ(r.code, kExitBadInput);
  EXPECT_NE(r.err.find("did you mean \"facebook/opt-1.3b\""), std::string::npos) << r.err;
  r = run_cli({"inspect", "--model", LLMEM_TEST_DATA_DIR "/bad/truncated.json"});
  EXPECT_EQ(r.code, kExitBadInput);
  EXPECT_NE(r.err.find("truncated.json: malformed JSON at line 5"), std::string::npos) << r.err;
  r = run_cli({"inspect"});
  EXPECT_EQ(r.code, kExitBadInput);
  r = run_cli({"inspect", "--model", "x", "--format", "xml"});
  EXPECT_EQ(r.code, kExitBadInput);
  r = run_cli({"frobnicate"});
  EXPECT_EQ(r.code, kExitBadInput);
}

TEST(Cli, HelpExitsZero) {
  Result r = run_cli({"--help"});
  EXPECT_EQ(r.code, kExitOk);
  EXPECT_NE(r.out.find("inspect"), std::string::npos);
}

}  // namespace
}  // namespace llmem::cli
