// Copyright 2026 The llmem Authors.
// Resolving a model reference (catalog name, config file or checkpoint
// directory) and cross-checking checkpoints against the inventory.

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>

#include "llmem/error.h"
#include "llmem/model.h"

#include "config/config_reader.h"
#include "model/suggest.h"

namespace llmem {
namespace {

namespace fs = std::filesystem;

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw Error(path.string(), "", "cannot open the file for reading");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad())
    throw Error(path.string(), "", "error while reading the file");
  return buffer.str();
}

std::string lower(std::string_view s) {
  std::string out;
  for (char c : s)
    out.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  return out;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0)
      out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

std::string name_list(const std::vector<std::string>& names) {
  std::string out;
  size_t shown = std::min<size_t>(names.size(), 5);
  for (size_t i = 0; i < shown; ++i)
    out += (i > 0 ? ", " : "") + names[i];
  if (names.size() > shown)
    out += ", … (" + std::to_string(names.size()) + " in all)";
  return out;
}

// Reads the JSON header of a .safetensors file: 8-byte little-endian length,
// then that many bytes of JSON. The weights are never read.
void read_safetensors_header(const fs::path& path, std::vector<CheckpointTensor>* out,
                             uint64_t* bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw Error(path.string(), "", "cannot open the file for reading");
  unsigned char prefix[8] = {};
  in.read(reinterpret_cast<char*>(prefix), 8);
  if (in.gcount() != 8)
    throw Error(path.string(), "", "not a safetensors file (shorter than 8 bytes)");
  uint64_t length = 0;
  for (int i = 7; i >= 0; --i)
    length = (length << 8) | prefix[i];
  std::error_code ec;
  uint64_t file_size = fs::file_size(path, ec);
  if (ec || length > file_size - 8 || length > (uint64_t{100} << 20)) {
    throw Error(path.string(), "",
                "not a safetensors file (header length " + std::to_string(length) +
                    " does not fit the file)");
  }
  std::string header(length, '\0');
  in.read(header.data(), static_cast<std::streamsize>(length));
  nlohmann::json json = config::parse_json(header, path.string());
  if (!json.is_object())
    throw Error(path.string(), "", "safetensors header is not a JSON object");
  for (const auto& [name, entry] : json.items()) {
    if (name == "__metadata__")
      continue;
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
        !entry["dtype"].is_string() || !entry["shape"].is_array()) {
      throw Error(path.string(), name, "expected {\"dtype\": ..., \"shape\": [...]} in the header");
    }
    CheckpointTensor t;
    t.name = name;
    t.known_shape = true;
    for (const auto& d : entry["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) {
        throw Error(path.string(), name, "expected non-negative integer dimensions");
      }
      t.shape.push_back(d.get<int64_t>());
    }
    if (!parse_dtype(entry["dtype"].get<std::string>(), &t.dtype))
      t.dtype = DType::kFloat32;
    if (entry.contains("data_offsets") && entry["data_offsets"].is_array() &&
        entry["data_offsets"].size() == 2 && entry["data_offsets"][0].is_number_unsigned() &&
        entry["data_offsets"][1].is_number_unsigned()) {
      *bytes += entry["data_offsets"][1].get<uint64_t>() - entry["data_offsets"][0].get<uint64_t>();
    }
    out->push_back(std::move(t));
  }
}

// Reads a *.index.json: names from weight_map, bytes from metadata.total_size.
void read_index(const fs::path& path, std::vector<CheckpointTensor>* out, uint64_t* total) {
  nlohmann::json json = config::parse_json(read_file(path), path.string());
  if (!json.is_object())
    throw Error(path.string(), "", "expected a JSON object");
  if (json.contains("metadata") && json["metadata"].is_object()) {
    const auto& meta = json["metadata"];
    if (meta.contains("total_size")) {
      if (!meta["total_size"].is_number_unsigned()) {
        throw Error(path.string(), "metadata.total_size", "expected a non-negative integer");
      }
      *total = meta["total_size"].get<uint64_t>();
    }
  }
  if (json.contains("weight_map")) {
    if (!json["weight_map"].is_object()) {
      throw Error(path.string(), "weight_map", "expected an object of tensor name -> file");
    }
    for (const auto& [name, file] : json["weight_map"].items()) {
      CheckpointTensor t;
      t.name = name;
      out->push_back(std::move(t));
    }
  }
}

ModelSpec load_directory(const fs::path& dir) {
  fs::path config = dir / "config.json";
  if (!fs::exists(config)) {
    throw Error(dir.string(), "", "directory has no config.json");
  }
  ModelSpec spec = parse_config(read_file(config), config.string());
  spec.name = dir.string();
  std::vector<CheckpointTensor> tensors;
  uint64_t total = 0;
  uint64_t header_bytes = 0;
  std::vector<fs::path> shards;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() == ".safetensors")
      shards.push_back(entry.path());
  }
  std::sort(shards.begin(), shards.end());
  for (const fs::path& shard : shards)
    read_safetensors_header(shard, &tensors, &header_bytes);
  std::vector<CheckpointTensor> index_tensors;
  std::string checked;
  for (const char* index : {"model.safetensors.index.json", "pytorch_model.bin.index.json"}) {
    if (fs::exists(dir / index)) {
      read_index(dir / index, &index_tensors, &total);
      checked = (dir / index).string();
      break;
    }
  }
  if (!shards.empty()) {
    if (total == 0)
      total = header_bytes;
    checked = shards.size() == 1 ? shards[0].string() : dir.string() + "/*.safetensors";
  } else {
    tensors = std::move(index_tensors);
  }
  if (!checked.empty())
    cross_check_checkpoint(tensors, total, checked, &spec);
  return spec;
}

const CatalogEntry* find_catalog(const std::string& ref, std::vector<std::string>* names) {
  std::string key = lower(ref);
  const CatalogEntry* by_short_name = nullptr;
  int short_matches = 0;
  for (const CatalogEntry& e : catalog()) {
    std::string name = lower(e.name);
    names->push_back(e.name);
    std::string dashed = name;
    size_t slash = dashed.find('/');
    if (slash != std::string::npos)
      dashed.replace(slash, 1, "--");
    if (key == name || key == dashed)
      return &e;
    if (slash != std::string::npos && key == name.substr(slash + 1)) {
      by_short_name = &e;
      ++short_matches;
    }
  }
  return short_matches == 1 ? by_short_name : nullptr;
}

}  // namespace

void cross_check_checkpoint(const std::vector<CheckpointTensor>& tensors, uint64_t total_size,
                            const std::string& source, ModelSpec* spec) {
  std::map<std::string, const TensorSpec*> known;
  for (const TensorSpec& t : spec->tensors)
    known[t.name] = &t;
  for (const TensorSpec& t : spec->buffers)
    known[t.name] = &t;
  // Base-model checkpoints (GPT-2's, Pythia's) drop the "transformer." style prefix.
  std::string prefix;
  if (!spec->tensors.empty()) {
    const std::string& first = spec->tensors.front().name;
    size_t dot = first.find('.');
    if (dot != std::string::npos)
      prefix = first.substr(0, dot + 1);
  }
  auto lookup = [&](const std::string& name) -> const TensorSpec* {
    auto it = known.find(name);
    if (it == known.end())
      it = known.find(prefix + name);
    return it == known.end() ? nullptr : it->second;
  };
  std::vector<std::string> unknown, shape_mismatch, stored_buffers, stored_tied;
  std::set<std::string> seen;
  uint64_t expected_bytes = 0;
  std::map<std::string, int> dtypes;
  for (const CheckpointTensor& c : tensors) {
    const TensorSpec* t = lookup(c.name);
    if (t == nullptr) {
      unknown.push_back(c.name);
      continue;
    }
    seen.insert(t->name);
    if (c.known_shape && c.shape != t->shape) {
      shape_mismatch.push_back(c.name + " " + shape_text(c.shape) + " (inventory " +
                               shape_text(t->shape) + ")");
    }
    if (c.known_shape)
      ++dtypes[std::string(dtype_name(c.dtype))];
    bool is_buffer = t->dtype != spec->dtype && (t->dtype == DType::kBool || !t->persistent);
    if (!t->tied_to.empty())
      stored_tied.push_back(c.name);
    for (const TensorSpec& b : spec->buffers) {
      if (&b == t)
        is_buffer = true;
    }
    if (is_buffer)
      stored_buffers.push_back(c.name);
    expected_bytes += static_cast<uint64_t>(t->numel) *
                      static_cast<uint64_t>(dtype_size(c.known_shape ? c.dtype : spec->dtype));
  }
  std::vector<std::string> missing;
  if (!tensors.empty()) {
    for (const TensorSpec& t : spec->tensors) {
      if (t.tied_to.empty() && seen.count(t.name) == 0)
        missing.push_back(t.name);
    }
  }
  auto warn = [&](const std::string& text) { spec->warnings.push_back(source + ": " + text); };
  if (!unknown.empty()) {
    warn("checkpoint stores tensors the inventory does not have: " + name_list(unknown));
  }
  if (!missing.empty()) {
    warn("inventory tensors missing from the checkpoint: " + name_list(missing));
  }
  if (!shape_mismatch.empty()) {
    warn("shapes differ from the inventory: " + name_list(shape_mismatch));
  }
  if (!stored_buffers.empty()) {
    warn("checkpoint also stores buffers, which are not parameters: " + name_list(stored_buffers));
  }
  if (!stored_tied.empty()) {
    warn("checkpoint stores tied weights separately: " + name_list(stored_tied));
  }
  for (const auto& [name, count] : dtypes) {
    if (name != dtype_name(spec->dtype) && name != "bool") {
      warn(std::to_string(count) + " tensors are stored as " + name + " but torch_dtype says " +
           std::string(dtype_name(spec->dtype)));
    }
  }
  if (total_size == 0)
    return;
  auto unique_bytes =
      static_cast<uint64_t>(spec->params()) * static_cast<uint64_t>(dtype_size(spec->dtype));
  if (tensors.empty()) {
    // Only the declared size is known: explain it with the inventory.
    uint64_t tied_bytes = 0;
    for (const TensorSpec& t : spec->tensors) {
      if (!t.tied_to.empty()) {
        tied_bytes +=
            static_cast<uint64_t>(t.numel) * static_cast<uint64_t>(dtype_size(spec->dtype));
      }
    }
    if (total_size == unique_bytes)
      return;
    if (tied_bytes > 0 && total_size == unique_bytes + tied_bytes) {
      warn("declared size " + std::to_string(total_size) +
           " bytes includes the tied output embedding stored separately (" +
           std::to_string(tied_bytes) + " bytes); parameters are counted once");
      return;
    }
    warn("declared size " + std::to_string(total_size) + " bytes differs from the inventory's " +
         std::to_string(unique_bytes) + " bytes in " + std::string(dtype_name(spec->dtype)) + " (" +
         std::to_string(spec->params()) + " parameters)");
    return;
  }
  if (expected_bytes != total_size && unknown.empty()) {
    warn("declared size " + std::to_string(total_size) + " bytes differs from the " +
         std::to_string(expected_bytes) + " bytes of the tensors it lists");
  }
}

ModelSpec load_model(const std::string& ref) {
  if (ref.empty())
    throw Error("--model", "", "expected a catalog name, a config.json or a directory");
  std::error_code ec;
  fs::path path(ref);
  if (fs::exists(path, ec)) {
    if (fs::is_directory(path, ec))
      return load_directory(path);
    ModelSpec spec = parse_config(read_file(path), path.string());
    spec.name = ref;
    return spec;
  }
  std::vector<std::string> names;
  if (const CatalogEntry* entry = find_catalog(ref, &names)) {
    ModelSpec spec = parse_config(entry->config_json, "catalog entry " + entry->name);
    spec.name = entry->name;
    return spec;
  }
  std::string message = "not a catalog name, and no such file or directory";
  std::string nearest = model::nearest(ref, names);
  if (nearest.empty()) {
    // Compare against the part after the organisation too.
    std::vector<std::string> short_names;
    for (const std::string& n : names)
      short_names.push_back(n.substr(n.find('/') + 1));
    std::string near_short = model::nearest(ref, short_names);
    for (const std::string& n : names) {
      if (!near_short.empty() && n.substr(n.find('/') + 1) == near_short)
        nearest = n;
    }
  }
  if (!nearest.empty())
    message += " (did you mean \"" + nearest + "\"?)";
  message += "; `llmem models` lists the catalog";
  throw Error(ref, "", message);
}

}  // namespace llmem
