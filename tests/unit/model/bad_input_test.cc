// Copyright 2026 The llmem Authors.
// Bad input: each case gets one clear message naming the source and the key.

#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "llmem/error.h"
#include "llmem/model.h"

#include "test_util.h"

namespace llmem {
namespace {

using nlohmann::json;

json tiny_llama() {
  return {{"model_type", "llama"},    {"vocab_size", 1000},
          {"hidden_size", 64},        {"intermediate_size", 128},
          {"num_hidden_layers", 2},   {"num_attention_heads", 4},
          {"num_key_value_heads", 2}, {"max_position_embeddings", 128}};
}

// Parses `config` and returns the error message, failing if none is thrown.
std::string error_of_text(const std::string& text) {
  try {
    parse_config(text, "cfg.json");
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error for " << text;
  return "";
}

std::string error_of(const json& config) {
  return error_of_text(config.dump());
}

TEST(BadInput, MalformedJsonReportsLineAndColumn) {
  std::string text = "{\n  \"model_type\": \"llama\",\n  \"hidden_size\": 40 96\n}";
  EXPECT_EQ(error_of_text(text).rfind("cfg.json: malformed JSON at line 3, column 22", 0), 0u)
      << error_of_text(text);
  EXPECT_NE(error_of_text("{\"a\": 1,").find("malformed JSON at line 1"), std::string::npos);
  EXPECT_NE(error_of_text("").find("malformed JSON"), std::string::npos);
}

TEST(BadInput, NumbersBeyondDoubleRange) {
  // Found by the fuzzer: nlohmann throws out_of_range, not parse_error.
  EXPECT_EQ(error_of_text("{\"rms_norm_eps\": 1e505}"),
            "cfg.json: malformed JSON: number overflow parsing '1e505'");
}

TEST(BadInput, TopLevelMustBeAnObject) {
  EXPECT_NE(error_of_text("[1, 2]").find("expected a JSON object at the top level"),
            std::string::npos);
}

TEST(BadInput, MissingModelType) {
  json c = tiny_llama();
  c.erase("model_type");
  EXPECT_EQ(error_of(c),
            "cfg.json: key 'model_type': required key is missing (expected a string "
            "such as \"llama\"; \"architectures\" does not name a known class either)");
  // The class name in "architectures" is enough.
  c["architectures"] = {"LlamaForCausalLM"};
  EXPECT_EQ(testing::spec_of(c).family, "llama");
}

TEST(BadInput, UnknownModelTypeListsSupportedAndSuggests) {
  json c = tiny_llama();
  c["model_type"] = "lama";
  std::string e = error_of(c);
  EXPECT_NE(e.find("key 'model_type': unknown model_type \"lama\" (did you mean \"llama\"?)"),
            std::string::npos)
      << e;
  EXPECT_NE(e.find("supported: opt, biogpt"), std::string::npos) << e;
  c["model_type"] = "t5";
  EXPECT_EQ(error_of(c).find("did you mean"), std::string::npos);
}

TEST(BadInput, WrongTypes) {
  json c = tiny_llama();
  c["hidden_size"] = "4096";
  EXPECT_EQ(error_of(c), "cfg.json: key 'hidden_size': expected an integer, got a string \"4096\"");
  c = tiny_llama();
  c["tie_word_embeddings"] = 1;
  EXPECT_EQ(error_of(c),
            "cfg.json: key 'tie_word_embeddings': expected true or false, got an integer 1");
  c = tiny_llama();
  c["hidden_size"] = 64.5;
  EXPECT_EQ(error_of(c), "cfg.json: key 'hidden_size': expected an integer, got 64.5");
  c = tiny_llama();
  c["model_type"] = 7;
  EXPECT_EQ(error_of(c), "cfg.json: key 'model_type': expected a string, got an integer 7");
  c = tiny_llama();
  c["attention_dropout"] = "high";
  EXPECT_NE(error_of(c).find("key 'attention_dropout': expected a number"), std::string::npos);
}

TEST(BadInput, NonsensicalSizes) {
  json c = tiny_llama();
  c["num_hidden_layers"] = 0;
  EXPECT_EQ(error_of(c), "cfg.json: key 'num_hidden_layers': expected an integer ≥ 1, got 0");
  c = tiny_llama();
  c["vocab_size"] = -5;
  EXPECT_EQ(error_of(c), "cfg.json: key 'vocab_size': expected an integer ≥ 1, got -5");
  c = tiny_llama();
  c["num_hidden_layers"] = 100000;
  EXPECT_NE(error_of(c).find("expected at most 1024 layers"), std::string::npos);
  c = tiny_llama();
  c["hidden_size"] = int64_t{1} << 40;
  EXPECT_NE(error_of(c).find("key 'hidden_size': value 1099511627776 is implausibly large"),
            std::string::npos);
  c = tiny_llama();
  c["attention_dropout"] = 1.5;
  EXPECT_NE(error_of(c).find("expected a probability in [0, 1)"), std::string::npos);
}

TEST(BadInput, HeadsMustDivide) {
  json c = tiny_llama();
  c["num_attention_heads"] = 5;
  c["num_key_value_heads"] = 5;
  EXPECT_EQ(error_of(c),
            "cfg.json: key 'num_attention_heads': num_attention_heads = 5 must "
            "divide hidden_size = 64");
  c = tiny_llama();
  c["num_key_value_heads"] = 3;
  EXPECT_EQ(error_of(c),
            "cfg.json: key 'num_key_value_heads': num_key_value_heads = 3 must "
            "divide num_attention_heads = 4");
  json gpt2 = {{"model_type", "gpt2"}, {"n_embd", 100}, {"n_head", 12}};
  EXPECT_NE(error_of(gpt2).find("key 'n_head': n_head = 12 must divide n_embd = 100"),
            std::string::npos);
}

TEST(BadInput, SizesThatOverflow64Bits) {
  json c = tiny_llama();
  c["hidden_size"] = int64_t{1} << 31;
  c["intermediate_size"] = int64_t{1} << 31;
  c["num_attention_heads"] = 1;
  c["num_key_value_heads"] = 1;
  c["num_hidden_layers"] = 8;
  EXPECT_NE(error_of(c).find("sizes overflow 64 bits"), std::string::npos) << error_of(c);
  json big = {{"model_type", "mixtral"},
              {"hidden_size", int64_t{1} << 31},
              {"intermediate_size", int64_t{1} << 31},
              {"num_attention_heads", 1},
              {"num_key_value_heads", 1},
              {"num_local_experts", 8}};
  EXPECT_NE(error_of(big).find("sizes overflow 64 bits"), std::string::npos);
}

TEST(BadInput, FamilySpecificChecks) {
  json c = tiny_llama();
  c["model_type"] = "mixtral";
  c["num_local_experts"] = 4;
  c["num_experts_per_tok"] = 8;
  EXPECT_EQ(error_of(c),
            "cfg.json: key 'num_experts_per_tok': expected at most "
            "num_local_experts = 4, got 8");
  json neo = {{"model_type", "gpt_neo"},
              {"hidden_size", 64},
              {"num_heads", 4},
              {"num_layers", 3},
              {"attention_types", {{{"global", "local"}, 1}}}};
  EXPECT_EQ(error_of(neo),
            "cfg.json: key 'attention_types': describes 2 layers but num_layers "
            "is 3");
  neo["attention_types"] = "global";
  EXPECT_NE(error_of(neo).find("key 'attention_types': expected a list"), std::string::npos);
  json layer_types = tiny_llama();
  layer_types["model_type"] = "qwen2";
  layer_types["layer_types"] = {"full_attention"};
  EXPECT_NE(error_of(layer_types)
                .find("key 'layer_types': lists 1 layers but "
                      "num_hidden_layers is 2"),
            std::string::npos);
  json gptj = {{"model_type", "gptj"}, {"n_embd", 64}, {"n_head", 4}, {"rotary_dim", 32}};
  EXPECT_EQ(error_of(gptj),
            "cfg.json: key 'rotary_dim': expected at most the head size 16, got 32");
  json dtype = tiny_llama();
  dtype["torch_dtype"] = "float8";
  EXPECT_EQ(error_of(dtype),
            "cfg.json: key 'torch_dtype': expected float32, float16 or "
            "bfloat16, got \"float8\"");
}

TEST(BadInput, NullMeansAbsentAsInHuggingFace) {
  json c = tiny_llama();
  c["num_key_value_heads"] = nullptr;
  EXPECT_EQ(testing::spec_of(c).layers[0].attention.num_kv_heads, 4);
}

TEST(BadInput, UnreadableAndMissingPaths) {
  try {
    load_model("/nonexistent/dir/config.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a catalog name, and no such file or directory"),
              std::string::npos);
  }
  std::filesystem::path dir = std::filesystem::temp_directory_path() / "llmem_empty_dir_test";
  std::filesystem::create_directories(dir);
  try {
    load_model(dir.string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("directory has no config.json"), std::string::npos);
  }
  std::filesystem::remove_all(dir);
}

TEST(BadInput, RegressionInputsFromFuzzing) {
  // Every input that once crashed the reader; each must give an llmem::Error or a spec.
  std::filesystem::path dir = std::filesystem::path(LLMEM_TEST_DATA_DIR) / "fuzz-regressions";
  int count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    SCOPED_TRACE(entry.path().string());
    std::string text = testing::read_text(entry.path().string());
    try {
      parse_config(text, entry.path().filename().string());
    } catch (const Error&) {
    }
    ++count;
  }
  EXPECT_GE(count, 1);
}

}  // namespace
}  // namespace llmem
