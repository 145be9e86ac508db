// Copyright 2026 The llmem Authors.
// The built-in catalog: every entry parses, has a source, and matches its
// published parameter count.

#include <cmath>
#include <set>
#include <string>

#include <gtest/gtest.h>

#include "llmem/error.h"
#include "llmem/model.h"

namespace llmem {
namespace {

TEST(Catalog, HasAtLeast45Models) {
  EXPECT_GE(catalog().size(), 45u);
}

TEST(Catalog, EveryEntryParsesAndNamesItsSource) {
  std::set<std::string> names;
  for (const CatalogEntry& e : catalog()) {
    SCOPED_TRACE(e.name);
    EXPECT_TRUE(names.insert(e.name).second) << "duplicate catalog name";
    EXPECT_FALSE(e.source.empty());
    ModelSpec spec = load_model(e.name);
    EXPECT_GT(spec.params(), 0);
    EXPECT_EQ(static_cast<int64_t>(spec.layers.size()), spec.num_layers);
  }
}

// Published counts come in two bases (see data/models/README.md): "unique"
// counts each parameter once; "checkpoint" counts what the published file
// stores, which may add a tied output embedding stored twice and buffers
// that old checkpoints saved (GPT-2's attn.bias masks).
TEST(Catalog, PublishedParameterCounts) {
  int checked = 0;
  for (const CatalogEntry& e : catalog()) {
    if (e.published_params == 0)
      continue;
    SCOPED_TRACE(e.name + " (" + e.params_source + ")");
    ModelSpec spec = load_model(e.name);
    int64_t unique = spec.params();
    if (e.params_basis == "checkpoint") {
      int64_t tied = 0;
      int64_t buffers = 0;
      for (const TensorSpec& t : spec.tensors)
        tied += t.tied_to.empty() ? 0 : t.numel;
      for (const TensorSpec& t : spec.buffers)
        buffers += t.dtype == DType::kBool ? t.numel : 0;
      std::set<int64_t> explained = {unique, unique + tied, unique + buffers,
                                     unique + tied + buffers};
      EXPECT_TRUE(explained.count(e.published_params) == 1)
          << "published " << e.published_params << ", unique " << unique << ", tied " << tied
          << ", mask buffers " << buffers;
    } else if (e.params_basis == "reference") {
      // A figure for another implementation of the same model; the entry's
      // params_source explains the gap, which must stay below 0.1 %.
      EXPECT_NE(e.params_source.find("NOTE"), std::string::npos);
      EXPECT_LT(std::abs(static_cast<double>(unique - e.published_params)),
                1e-3 * static_cast<double>(e.published_params));
    } else {
      EXPECT_EQ(e.params_basis, "unique");
      EXPECT_EQ(unique, e.published_params);
    }
    ++checked;
  }
  EXPECT_GE(checked, 10);
}

TEST(Catalog, LookupIsCaseInsensitiveAndAcceptsFolderNames) {
  EXPECT_EQ(load_model("FACEBOOK/OPT-1.3B").name, "facebook/opt-1.3b");
  EXPECT_EQ(load_model("facebook--opt-1.3b").name, "facebook/opt-1.3b");
  EXPECT_EQ(load_model("opt-1.3b").name, "facebook/opt-1.3b");
}

TEST(Catalog, UnknownNameSuggestsNearest) {
  try {
    load_model("facebook/opt-1.3c");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("did you mean \"facebook/opt-1.3b\""), std::string::npos) << what;
  }
}

TEST(Registry, EveryArchitectureHasACatalogModel) {
  std::set<std::string> families;
  for (const CatalogEntry& e : catalog())
    families.insert(load_model(e.name).family);
  for (const ArchitectureInfo& a : list_architectures()) {
    EXPECT_TRUE(families.count(a.family) == 1) << a.family << " has no catalog model";
  }
}

}  // namespace
}  // namespace llmem
