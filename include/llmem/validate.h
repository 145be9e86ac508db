// Copyright 2026 The llmem Authors.
// Comparing estimates with measured peaks (llmem validate).

#ifndef LLMEM_VALIDATE_H_
#define LLMEM_VALIDATE_H_

#include <cstdint>
#include <string>
#include <vector>

namespace llmem {

/// One measured row and what llmem estimates for it.
struct ValidationRow {
  std::string file;
  int line = 0;  ///< line in the file (1 = header)
  std::string source_url;
  std::string model;
  std::string setting;  ///< short description of the configuration
  std::string measured_what;
  std::string counter;  ///< allocated | reserved | device
  uint64_t measured_bytes = 0;
  uint64_t estimated_bytes = 0;
  double error_pct = 0;        ///< (estimated - measured) / measured; negative = under-prediction
  std::string skipped_reason;  ///< non-empty: not compared, and why
};

struct ValidationSummary {
  int compared = 0;
  int skipped = 0;
  double median_abs_pct = 0;
  double p90_abs_pct = 0;
  double max_abs_pct = 0;
  int under_predictions = 0;  ///< rows with error_pct < 0
  int under_predictions_beyond_1pct = 0;
};

struct ValidationReport {
  std::vector<ValidationRow> rows;
  ValidationSummary summary;
};

/// Reads measured rows in the columns of shared/validation/published.csv
/// (extra columns such as peak_bytes and storage_peak_bytes are used when
/// present), estimates each row whose setting llmem can express, and
/// compares like with like. Throws llmem::Error for a malformed file.
ValidationReport validate_csv(const std::string& text, const std::string& file);
/// Recomputes the summary over `rows`.
ValidationSummary summarize(const std::vector<ValidationRow>& rows);

std::string validation_table(const ValidationReport& report);
std::string validation_json(const ValidationReport& report);

}  // namespace llmem

#endif  // LLMEM_VALIDATE_H_
