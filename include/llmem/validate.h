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
  /// allocated | reserved | device; "unnamed" when the source logged a peak
  /// without saying which counter (torchtune's README tables): such a row is
  /// compared with the band [allocated, reserved] and kept out of the
  /// error statistics.
  std::string counter;
  uint64_t measured_bytes = 0;
  uint64_t estimated_bytes = 0;           ///< for "unnamed": the allocated peak
  uint64_t estimated_reserved_bytes = 0;  ///< for "unnamed": the reserved peak
  double error_pct = 0;  ///< (estimated - measured) / measured; negative = under-prediction.
                         ///< For "unnamed": the distance to the nearer end of the band
                         ///< (0 inside it).
  bool band() const { return counter == "unnamed"; }
  std::string skipped_reason;  ///< non-empty: not compared, and why
  /// A compared row whose gap the model does not close: the best-supported
  /// reason from the row's sources (empty for the others).
  std::string why;
};

struct ValidationSummary {
  int compared = 0;
  int skipped = 0;
  double median_abs_pct = 0;
  double p90_abs_pct = 0;
  double max_abs_pct = 0;
  int under_predictions = 0;  ///< rows with error_pct < 0
  int under_predictions_beyond_1pct = 0;
  /// Rows whose counter is not named, compared with [allocated, reserved].
  int band_rows = 0;
  int band_within = 0;  ///< measured inside the band, within 1 % of either end
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
