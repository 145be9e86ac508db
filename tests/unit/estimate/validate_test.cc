// Copyright 2026 The llmem Authors.
// llmem validate: how measured rows are expressed and compared.

#include "llmem/validate.h"

#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace llmem {
namespace {

constexpr const char* kHeader =
    "source_url,model,gpu_type,method,world_size,tp,precision,optimizer,micro_batch,seq_len,"
    "grad_ckpt,finetune,lora_rank,attention_impl,measured_what,peak_gib,notes\n";

// A torchtune README row whose counter is not named, measuring `gib`.
std::string unnamed_row(double gib) {
  return "https://github.com/pytorch/torchtune/blob/0217d44c2/README.md,openai-community/gpt2,"
         "A100 80GB,single,1,1,bf16 (pure),AdamW,2,256,off,full,,torchtune SDPA,"
         "torchtune peak memory (stat not named; GiB)," +
         std::to_string(gib) + ",confidence=medium\n";
}

TEST(Validate, UnnamedCounterIsComparedWithTheAllocatedReservedBand) {
  // One far below the band, one far above, then one at the allocated end.
  ValidationReport r =
      validate_csv(std::string(kHeader) + unnamed_row(0.001) + unnamed_row(1000), "t.csv");
  ASSERT_EQ(r.rows.size(), 2u);
  const ValidationRow& low = r.rows[0];
  const ValidationRow& high = r.rows[1];
  ASSERT_TRUE(low.skipped_reason.empty()) << low.skipped_reason;
  EXPECT_TRUE(low.band());
  EXPECT_EQ(low.counter, "unnamed");
  EXPECT_GT(low.estimated_reserved_bytes, low.estimated_bytes);
  // Below the band: measured against allocated, an over-prediction.
  EXPECT_NEAR(low.error_pct,
              100.0 * (double(low.estimated_bytes) - double(low.measured_bytes)) /
                  double(low.measured_bytes),
              1e-9);
  // Above the band: measured against reserved, an under-prediction.
  EXPECT_NEAR(high.error_pct,
              100.0 * (double(high.estimated_reserved_bytes) - double(high.measured_bytes)) /
                  double(high.measured_bytes),
              1e-9);
  EXPECT_LT(high.error_pct, -99.0);
  // Band rows stay out of the like-for-like statistics.
  EXPECT_EQ(r.summary.compared, 0);
  EXPECT_EQ(r.summary.band_rows, 2);
  EXPECT_EQ(r.summary.band_within, 0);

  // Inside the band: distance zero.
  double mid =
      (double(low.estimated_bytes) + double(low.estimated_reserved_bytes)) / 2 / 1073741824.0;
  ValidationReport in = validate_csv(std::string(kHeader) + unnamed_row(mid), "t.csv");
  ASSERT_EQ(in.rows.size(), 1u);
  EXPECT_EQ(in.rows[0].error_pct, 0.0);
  EXPECT_EQ(in.summary.band_within, 1);

  nlohmann::json j = nlohmann::json::parse(validation_json(r));
  EXPECT_FALSE(j["rows"][0].contains("error_pct"));
  EXPECT_TRUE(j["rows"][0].contains("band_error_pct"));
  EXPECT_EQ(j["rows"][0]["estimated_reserved_bytes"].get<uint64_t>(), low.estimated_reserved_bytes);
  EXPECT_EQ(j["summary"]["band_rows"], 2);
  EXPECT_NE(validation_table(r).find("counter not named: 2 rows"), std::string::npos);
}

TEST(Validate, AnUnnamedCounterOutsideTorchtuneIsSkipped) {
  std::string row =
      "https://example.com/x,openai-community/gpt2,A100 80GB,single,1,1,bf16,AdamW,2,256,off,full,"
      ",sdpa,peak memory (stat not named),3.0,confidence=high\n";
  ValidationReport r = validate_csv(std::string(kHeader) + row, "t.csv");
  ASSERT_EQ(r.rows.size(), 1u);
  EXPECT_NE(r.rows[0].skipped_reason.find("counter not named"), std::string::npos);
}

// The setting line of a one-row file, or "skipped: " and the reason.
std::string setting_of(const std::string& row) {
  ValidationReport r = validate_csv(std::string(kHeader) + row, "t.csv");
  if (r.rows.size() != 1)
    return "rows: " + std::to_string(r.rows.size());
  const ValidationRow& v = r.rows[0];
  return v.skipped_reason.empty() ? v.setting : "skipped: " + v.skipped_reason;
}

TEST(Validate, TorchtuneReadmeRowsRunCompiledPackedWithTheConfigsLoss) {
  // torchtune's README at 1814feb: the memory table was measured with a packed
  // dataset and torch.compile (the row says so only through "packed"), with
  // the configs as shipped: CEWithChunkedOutputLoss and fused AdamW.
  std::string row =
      "https://github.com/pytorch/torchtune/blob/1814feb17a9038e1a8053ce93111bd26774a8db6/"
      "README.md,meta-llama/Llama-3.2-1B,RTX 4090,single,1,1,bf16 (pure),AdamW,2,256,on,full,,"
      "torchtune SDPA/flex (packed),torch.cuda.max_memory_allocated,3.0,"
      "confidence=medium\n";
  std::string setting = setting_of(row);
  EXPECT_NE(setting.find("packed compile chunked-ce"), std::string::npos) << setting;
}

TEST(Validate, RowsBuildingOnThePreviousOneInheritItsFlags) {
  // The README's flag table: "+packed +compile", then "previous + ...".
  const std::string url =
      "https://github.com/pytorch/torchtune/blob/1814feb17a9038e1a8053ce93111bd26774a8db6/"
      "README.md,meta-llama/Llama-3.2-1B,A100,single,1,1,bf16 (pure),";
  std::string rows =
      url + "AdamW (torch),2,256,off,full,,torchtune SDPA/flex,peak active bytes,3.0,\"" +
      "confidence=high; +packed +compile\"\n" + url +
      "AdamW in backward,2,256,on,full,,torchtune SDPA/flex,peak active bytes,3.0,\"" +
      "confidence=high; previous + optimizer step in backward\"\n";
  ValidationReport r = validate_csv(std::string(kHeader) + rows, "t.csv");
  ASSERT_EQ(r.rows.size(), 2u);
  EXPECT_NE(r.rows[1].setting.find("ckpt packed compile"), std::string::npos) << r.rows[1].setting;
  EXPECT_NE(r.rows[1].setting.find("optim-in-bwd"), std::string::npos) << r.rows[1].setting;
}

TEST(Validate, WholeModelCompileRunsTheLossEagerly) {
  // torchtune 0217d44c2 compiled the whole model (utils.wrap_compile) and ran
  // the loss eagerly: the row is traced with compiled layers.
  std::string row =
      "https://github.com/pytorch/torchtune/blob/0217d44c2/README.md,meta-llama/Llama-3.2-1B,"
      "RTX 4090,single,1,1,bf16 (pure),AdamW,2,256,on,qlora,8,torchtune SDPA,"
      "torch.cuda.max_memory_allocated,3.0,\"confidence=medium; torch.compile on\"\n";
  std::string setting = setting_of(row);
  EXPECT_NE(setting.find("ckpt qlora compile"), std::string::npos) << setting;
}

TEST(Validate, ARegisteredGapIsShownWithItsRowOnly) {
  // torchtune 5cbc1967b's README row for 7B_full on "4" GPUs: the reason is
  // registered for that source, model and setting (src/validate/known_gaps.cc).
  auto row = [](const std::string& commit, const std::string& ranks) {
    return "https://github.com/pytorch/torchtune/blob/" + commit +
           "/README.md,meta-llama/Llama-2-7b-hf,A100,fsdp," + ranks +
           ",1,bf16 (pure),AdamW,2,\"<=512 (alpaca, unpacked)\",on,full,,torchtune SDPA,"
           "torch.cuda.max_memory_reserved (GB 1e9),11.19,confidence=high\n";
  };
  ValidationReport r = validate_csv(
      std::string(kHeader) + row("5cbc1967b", "4") + row("5cbc1967b", "8") + row("0217d44c2", "4"),
      "t.csv");
  ASSERT_EQ(r.rows.size(), 3u);
  for (const ValidationRow& v : r.rows)
    ASSERT_TRUE(v.skipped_reason.empty()) << v.skipped_reason;
  EXPECT_EQ(r.rows[0].setting, "torchtune bf16 b2 s512 ckpt fsdp dp4");
  EXPECT_NE(r.rows[0].why.find("probably on an 8-GPU node"), std::string::npos) << r.rows[0].why;
  EXPECT_EQ(r.rows[1].why, "");  // another setting
  EXPECT_EQ(r.rows[2].why, "");  // another source
  nlohmann::json j = nlohmann::json::parse(validation_json(r));
  EXPECT_EQ(j["rows"][0]["why"], r.rows[0].why);
  EXPECT_FALSE(j["rows"][1].contains("why"));
  EXPECT_NE(validation_table(r).find("    why: the bf16 model states"), std::string::npos);
}

TEST(Validate, LigerColumnSetsTheKernelsAndTheirVersion) {
  auto row = [](const std::string& liger) {
    return "https://example.com/liger,meta-llama/Llama-3.2-1B,A100 80GB,single,1,1,bf16-mixed,"
           "AdamW,2,256,on,full,,sdpa (padded batch mask),torch.cuda.max_memory_allocated,3.0,"
           "confidence=high," +
           liger + "\n";
  };
  std::string header = std::string(kHeader);
  header.insert(header.size() - 1, ",liger");
  auto setting = [&](const std::string& liger) {
    ValidationReport r = validate_csv(header + row(liger), "t.csv");
    return r.rows.size() == 1 ? r.rows[0].setting + r.rows[0].skipped_reason : std::string();
  };
  EXPECT_EQ(setting(""), "bf16-mixed b2 s256 ckpt sdpa-mask");
  EXPECT_EQ(setting("0.6.4"), "bf16-mixed b2 s256 ckpt sdpa-mask liger");
  EXPECT_EQ(setting("0.1 after from_pretrained"),
            "bf16-mixed b2 s256 ckpt sdpa-mask liger-0.1(rope,flce)");
}

TEST(Validate, AlpacaRowsCappedAtMaxSeqLenAreComparedAtTheCap) {
  auto row = [](const std::string& url, const std::string& seq) {
    return url + ",openai-community/gpt2,A100 80GB,single,1,1,bf16 (pure),AdamW,2,\"" + seq +
           "\",on,full,,torchtune SDPA,torch.cuda.max_memory_reserved,3.0,confidence=high\n";
  };
  const std::string tt = "https://github.com/pytorch/torchtune/blob/5cbc1967b/README.md";
  ValidationReport r = validate_csv(std::string(kHeader) + row(tt, "<=512 (alpaca, unpacked)") +
                                        row(tt, "<=4096 unpacked alpaca") +
                                        row("https://example.com/x", "<=512 (alpaca, unpacked)"),
                                    "t.csv");
  ASSERT_EQ(r.rows.size(), 3u);
  EXPECT_TRUE(r.rows[0].skipped_reason.empty()) << r.rows[0].skipped_reason;
  EXPECT_NE(r.rows[0].setting.find(" s512"), std::string::npos) << r.rows[0].setting;
  // alpaca's longest samples (about 1k tokens) never reach a 4096 cap
  EXPECT_NE(r.rows[1].skipped_reason.find("longest batch"), std::string::npos);
  EXPECT_NE(r.rows[2].skipped_reason.find("variable-length"), std::string::npos);
}

}  // namespace
}  // namespace llmem
