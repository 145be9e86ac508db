// Copyright 2026 The llmem Authors.
// Every config.json in ../shared/hf-configs gives the published parameter count
// (params.tsv there), read the way `llmem inspect --model DIR` reads it.

#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include <gtest/gtest.h>

#include "llmem/model.h"

namespace llmem {
namespace {

namespace fs = std::filesystem;

std::map<std::string, int64_t> published_counts() {
  std::map<std::string, int64_t> counts;
  std::ifstream in(std::string(LLMEM_SHARED_DIR) + "/hf-configs/params.tsv");
  std::string folder;
  int64_t count = 0;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#')
      continue;
    size_t tab = line.find('\t');
    folder = line.substr(0, tab);
    count = std::stoll(line.substr(tab + 1));
    counts[folder] = count;
  }
  return counts;
}

TEST(SharedConfigs, ParameterCountsMatchPublished) {
  fs::path root = fs::path(LLMEM_SHARED_DIR) / "hf-configs";
  if (!fs::exists(root))
    GTEST_SKIP() << "no shared/hf-configs beside the checkout";
  std::map<std::string, int64_t> counts = published_counts();
  ASSERT_GE(counts.size(), 16u);
  int checked = 0;
  for (const auto& entry : fs::directory_iterator(root)) {
    if (!entry.is_directory())
      continue;
    std::string folder = entry.path().filename().string();
    SCOPED_TRACE(folder);
    ModelSpec spec = load_model(entry.path().string());
    auto it = counts.find(folder);
    ASSERT_NE(it, counts.end()) << "params.tsv has no row for " << folder;
    EXPECT_EQ(spec.params(), it->second);
    ++checked;
  }
  EXPECT_EQ(checked, static_cast<int>(counts.size()));
}

TEST(SharedConfigs, IndexSizesAreExplained) {
  fs::path root = fs::path(LLMEM_SHARED_DIR) / "hf-configs";
  if (!fs::exists(root))
    GTEST_SKIP() << "no shared/hf-configs beside the checkout";
  // phi-2 and Mixtral: total_size is exactly params × 2 bytes, no warning.
  EXPECT_TRUE(load_model((root / "microsoft--phi-2").string()).warnings.empty());
  EXPECT_TRUE(load_model((root / "mistralai--Mixtral-8x7B-v0.1").string()).warnings.empty());
  // Falcon-7B's old checkpoint stores lm_head apart from the tied embedding:
  // 14,434,379,520 = 2 × (6,921,720,704 + 65,024 × 4,544).
  ModelSpec falcon = load_model((root / "tiiuae--falcon-7b").string());
  ASSERT_EQ(falcon.warnings.size(), 1u);
  EXPECT_NE(falcon.warnings[0].find("tied output embedding stored separately"), std::string::npos)
      << falcon.warnings[0];
}

}  // namespace
}  // namespace llmem
