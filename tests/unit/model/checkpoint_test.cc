// Copyright 2026 The llmem Authors.
// Checkpoint cross-check: safetensors headers and index files against the inventory.

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "llmem/error.h"
#include "llmem/model.h"

#include "test_util.h"

namespace llmem {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("llmem_ckpt_" +
            std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    json config = {{"model_type", "llama"},    {"vocab_size", 100},      {"hidden_size", 8},
                   {"intermediate_size", 16},  {"num_hidden_layers", 1}, {"num_attention_heads", 2},
                   {"torch_dtype", "bfloat16"}};
    std::ofstream(dir_ / "config.json") << config.dump();
    spec_ = parse_config(config.dump(), "config.json");
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes a header-only safetensors file (8-byte length + JSON; no weights).
  void write_safetensors(const json& header, const std::string& name = "model.safetensors") {
    std::string text = header.dump();
    uint64_t n = text.size();
    std::ofstream out(dir_ / name, std::ios::binary);
    for (int i = 0; i < 8; ++i)
      out.put(static_cast<char>((n >> (8 * i)) & 0xff));
    out << text;
  }

  json header_matching_inventory() {
    json h = json::object();
    uint64_t offset = 0;
    for (const TensorSpec& t : spec_.tensors) {
      if (!t.tied_to.empty())
        continue;
      uint64_t bytes = static_cast<uint64_t>(t.numel) * 2;
      h[t.name] = {
          {"dtype", "BF16"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
      offset += bytes;
    }
    h["__metadata__"] = {{"format", "pt"}};
    return h;
  }

  fs::path dir_;
  ModelSpec spec_;
};

TEST_F(CheckpointTest, MatchingHeaderGivesNoWarning) {
  write_safetensors(header_matching_inventory());
  ModelSpec s = load_model(dir_.string());
  EXPECT_TRUE(s.warnings.empty()) << s.warnings.front();
}

TEST_F(CheckpointTest, DisagreementsNameTheTensors) {
  json h = header_matching_inventory();
  h["model.layers.0.mlp.up_proj.weight"]["shape"] = {32, 8};
  h.erase("model.norm.weight");
  h["model.layers.0.self_attn.extra.weight"] = {
      {"dtype", "BF16"}, {"shape", {8}}, {"data_offsets", {0, 16}}};
  h["model.layers.0.input_layernorm.weight"]["dtype"] = "F32";
  write_safetensors(h);
  ModelSpec s = load_model(dir_.string());
  std::string all;
  for (const std::string& w : s.warnings)
    all += w + "\n";
  EXPECT_NE(all.find("model.layers.0.mlp.up_proj.weight [32, 8] (inventory [16, 8])"),
            std::string::npos)
      << all;
  EXPECT_NE(all.find("inventory tensors missing from the checkpoint: model.norm.weight"),
            std::string::npos)
      << all;
  EXPECT_NE(all.find("tensors the inventory does not have: model.layers.0.self_attn.extra.weight"),
            std::string::npos)
      << all;
  EXPECT_NE(all.find("1 tensors are stored as float32 but torch_dtype says bfloat16"),
            std::string::npos)
      << all;
}

TEST_F(CheckpointTest, IndexTotalSizeIsChecked) {
  json index = {{"metadata", {{"total_size", 12345}}}, {"weight_map", json::object()}};
  std::ofstream(dir_ / "model.safetensors.index.json") << index.dump();
  ModelSpec s = load_model(dir_.string());
  ASSERT_EQ(s.warnings.size(), 1u);
  EXPECT_NE(s.warnings[0].find("declared size 12345 bytes differs from the inventory's"),
            std::string::npos)
      << s.warnings[0];
}

TEST_F(CheckpointTest, CorruptHeadersAreErrors) {
  std::ofstream(dir_ / "model.safetensors", std::ios::binary) << "abc";
  EXPECT_THROW(load_model(dir_.string()), Error);
  std::string huge(8, '\xff');
  std::ofstream(dir_ / "model.safetensors", std::ios::binary) << huge << "{}";
  try {
    load_model(dir_.string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not fit the file"), std::string::npos) << e.what();
  }
  write_safetensors(json{{"x", {{"dtype", "F16"}, {"shape", "oops"}}}});
  EXPECT_THROW(load_model(dir_.string()), Error);
  std::ofstream(dir_ / "model.safetensors", std::ios::binary)
      << std::string("\x05\0\0\0\0\0\0\0{bad}", 13);
  try {
    load_model(dir_.string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("malformed JSON"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace llmem
