// Copyright 2026 The llmem Authors.
// The built-in catalog: data/models/*.json compiled into the library.

#include <algorithm>
#include <string>

#include "llmem/error.h"
#include "llmem/model.h"

#include "config/config_reader.h"
#include "model/catalog_data.h"

namespace llmem {
namespace {

CatalogEntry parse_entry(const model::EmbeddedFile& file) {
  std::string source = "catalog file data/models/" + std::string(file.name);
  nlohmann::json json = config::parse_json(file.text, source);
  config::ConfigReader r(json, source);
  CatalogEntry e;
  e.name = r.text({"name"}, "", "");
  if (e.name.empty())
    r.fail("name", "required key is missing");
  e.source = r.text({"source"}, "", "");
  if (e.source.empty())
    r.fail("source", "every catalog entry must say where its values come from");
  e.verbatim = r.flag({"verbatim"}, true, "");
  if (r.has({"params"})) {
    const nlohmann::json& p = r.raw({"params"});
    if (!p.is_number_unsigned())
      r.fail("params", "expected a positive integer");
    e.published_params = p.get<int64_t>();
    e.params_basis = r.text({"params_basis"}, "unique", "");
    e.params_source = r.text({"params_source"}, "", "");
  }
  const nlohmann::json& config = r.raw({"config"});
  if (!config.is_object())
    r.fail("config", "expected the config.json object");
  e.config_json = config.dump(2);
  return e;
}

}  // namespace

const std::vector<CatalogEntry>& catalog() {
  static const std::vector<CatalogEntry> kCatalog = [] {
    std::vector<CatalogEntry> entries;
    for (const model::EmbeddedFile& file : model::embedded_catalog()) {
      entries.push_back(parse_entry(file));
    }
    std::sort(entries.begin(), entries.end(),
              [](const CatalogEntry& a, const CatalogEntry& b) { return a.name < b.name; });
    return entries;
  }();
  return kCatalog;
}

}  // namespace llmem
