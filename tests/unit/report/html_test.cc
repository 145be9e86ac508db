// Copyright 2026 The llmem Authors.
// `estimate --format html`: one well-formed, self-contained page whose numbers are the JSON's.

#include <cctype>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "llmem/estimate.h"
#include "llmem/gpu.h"
#include "llmem/model.h"
#include "llmem/report.h"

#include "report/charts.h"

namespace llmem {
namespace {

struct Rendered {
  std::string html;
  nlohmann::json json;
};

Rendered render(const std::string& model_name, const TrainingSetup& setup, const GpuSpec& gpu,
                bool with_ranks = false) {
  ModelSpec model = load_model(model_name);
  Estimate e = estimate(model, setup, gpu);
  if (with_ranks) {
    RankEstimate r;
    r.role = "stage <0>";
    r.ranks = {0, 2};
    r.peak = e.peak;
    r.notes = {"a note"};
    e.ranks.push_back(r);
  }
  return {estimate_html(model, setup, gpu, e),
          nlohmann::json::parse(estimate_json(model, setup, gpu, e))};
}

/// Checks that every element opened is closed in order (void elements aside).
/// A plain scanner: std::regex recurses per character and overflows the
/// stack (under ASan) on long SVG attributes.
void expect_well_formed(const std::string& html) {
  static const std::vector<std::string> kVoid = {"meta", "br", "hr", "img", "input", "link"};
  std::vector<std::string> open;
  for (size_t at = html.find('<'); at != std::string::npos; at = html.find('<', at + 1)) {
    size_t end = html.find('>', at);
    ASSERT_NE(end, std::string::npos) << "unterminated tag at offset " << at;
    size_t p = at + 1;
    bool closing = p < end && html[p] == '/';
    if (closing)
      ++p;
    size_t name_end = p;
    while (name_end < end && std::isalnum(static_cast<unsigned char>(html[name_end])) != 0)
      ++name_end;
    if (name_end == p || std::isalpha(static_cast<unsigned char>(html[p])) == 0)
      continue;  // <!DOCTYPE ...>, comments, a '<' in text
    std::string name = html.substr(p, name_end - p);
    bool self_closing = html[end - 1] == '/';
    if (self_closing || std::find(kVoid.begin(), kVoid.end(), name) != kVoid.end())
      continue;
    if (closing) {
      ASSERT_FALSE(open.empty()) << "closing </" << name << "> with nothing open";
      ASSERT_EQ(open.back(), name) << "at offset " << at;
      open.pop_back();
    } else {
      open.push_back(name);
    }
  }
  EXPECT_TRUE(open.empty()) << "unclosed <" << (open.empty() ? "" : open.back()) << ">";
}

std::string tagged(const std::string& key, int64_t value) {
  return "data-key=\"" + key + "\">" + with_commas(value) + "<";
}

TEST(EstimateHtml, SelfContainedAndWellFormed) {
  TrainingSetup setup;
  setup.batch = 4;
  setup.seq = 512;
  Rendered r = render("facebook/opt-1.3b", setup, find_gpu("A100-80GB"));
  EXPECT_EQ(r.html.rfind("<!DOCTYPE html>", 0), 0u);
  expect_well_formed(r.html);
  EXPECT_EQ(r.html.find("http://"), std::string::npos);
  EXPECT_EQ(r.html.find("https://"), std::string::npos);
  EXPECT_EQ(r.html.find("<script"), std::string::npos);
  EXPECT_EQ(r.html.find("<link"), std::string::npos);
  EXPECT_EQ(r.html.find("src="), std::string::npos);
  EXPECT_NE(r.html.find("<svg class=\"breakdown\""), std::string::npos);
  EXPECT_NE(r.html.find("<svg class=\"timeline\""), std::string::npos);
  EXPECT_NE(r.html.find("<polyline"), std::string::npos);
  EXPECT_NE(r.html.find(r.json["fits"].get<bool>() ? ">FITS<" : ">DOES NOT FIT<"),
            std::string::npos);
}

TEST(EstimateHtml, NumbersEqualTheJson) {
  TrainingSetup setup;
  setup.batch = 2;
  setup.seq = 1024;
  setup.checkpointing = CheckpointMode::kReentrant;
  Rendered r = render("Qwen/Qwen2.5-0.5B", setup, find_gpu("RTX4090"));
  const nlohmann::json& j = r.json;
  for (const char* k : {"allocated_bytes", "reserved_bytes", "device_bytes"}) {
    EXPECT_NE(r.html.find(tagged(std::string("peak.") + k, j["peak"][k].get<int64_t>())),
              std::string::npos)
        << k;
  }
  for (const auto& [name, bytes] : j["components"].items()) {
    EXPECT_NE(r.html.find(tagged("components." + name, bytes.get<int64_t>())), std::string::npos)
        << name;
  }
  for (const auto& [name, bytes] : j["phase_peaks"].items()) {
    EXPECT_NE(r.html.find(tagged("phase_peaks." + name, bytes.get<int64_t>())), std::string::npos)
        << name;
  }
  EXPECT_NE(r.html.find(tagged("gpu.capacity_bytes", j["gpu"]["capacity_bytes"].get<int64_t>())),
            std::string::npos);
  EXPECT_NE(r.html.find(tagged("headroom_bytes", j["headroom_bytes"].get<int64_t>())),
            std::string::npos);
  EXPECT_NE(r.html.find("RTX4090"), std::string::npos);
}

TEST(EstimateHtml, DoesNotFitAndRanksAndEscaping) {
  TrainingSetup setup;
  setup.batch = 8;
  setup.seq = 2048;
  Rendered r = render("meta-llama/Llama-3.1-8B", setup, custom_gpu(16), true);
  expect_well_formed(r.html);
  EXPECT_FALSE(r.json["fits"].get<bool>());
  EXPECT_NE(r.html.find(">DOES NOT FIT<"), std::string::npos);
  EXPECT_NE(r.html.find("<h2>Per rank</h2>"), std::string::npos);
  EXPECT_NE(r.html.find("stage &lt;0&gt;"), std::string::npos);
  EXPECT_NE(r.html.find("<td>0,2</td>"), std::string::npos);
  EXPECT_NE(r.html.find(tagged("headroom_bytes", r.json["headroom_bytes"].get<int64_t>())),
            std::string::npos);
}

TEST(EstimateHtml, DistributedLayoutShowsRanksAndNccl) {
  TrainingSetup setup;
  setup.batch = 1;
  setup.seq = 1024;
  setup.checkpointing = CheckpointMode::kReentrant;
  setup.parallel.method = Method::kDdp;
  setup.parallel.dp = 2;
  setup.parallel.pp = 2;
  Rendered r = render("meta-llama/Llama-3.2-1B", setup, find_gpu("H100-80GB"));
  expect_well_formed(r.html);
  ASSERT_TRUE(r.json.contains("ranks"));
  EXPECT_NE(r.html.find("<h2>Per rank</h2>"), std::string::npos);
  EXPECT_NE(r.html.find("class=\"rankbar\""), std::string::npos);
  int64_t comm = r.json["gpu"].value("comm_bytes", int64_t{0});
  if (comm > 0) {
    EXPECT_NE(r.html.find(tagged("gpu.comm_bytes", comm)), std::string::npos);
  }
}

TEST(EstimateHtml, EveryComponentHasItsOwnColour) {
  std::set<std::string_view> seen = {report::kCachedColor, report::kContextColor};
  for (size_t c = 0; c < static_cast<size_t>(Component::kCount); ++c) {
    std::string_view color = report::component_color(static_cast<Component>(c));
    EXPECT_TRUE(std::regex_match(std::string(color), std::regex("#[0-9a-f]{6}"))) << c;
    EXPECT_TRUE(seen.insert(color).second) << "colour used twice: " << color;
  }
}

TEST(EstimateHtml, CpuDevice) {
  TrainingSetup setup;
  setup.device = Device::kCpu;
  Rendered r = render("facebook/opt-125m", setup, find_gpu("A100-80GB"));
  expect_well_formed(r.html);
  EXPECT_NE(r.html.find(">CPU<"), std::string::npos);
  EXPECT_EQ(r.html.find("headroom_bytes"), std::string::npos);
}

}  // namespace
}  // namespace llmem
