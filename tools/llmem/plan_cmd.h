// Copyright 2026 The llmem Authors.
// `llmem plan`: the fastest training configuration that fits (issue 6).

#ifndef LLMEM_TOOLS_LLMEM_PLAN_CMD_H_
#define LLMEM_TOOLS_LLMEM_PLAN_CMD_H_

#include <iosfwd>
#include <memory>

namespace CLI {
class App;
}

namespace llmem::cli {

struct PlanOptions;

/// Registers the `plan` subcommand on `app`; run() after parsing when parsed().
class PlanCommand {
 public:
  explicit PlanCommand(CLI::App& app);
  ~PlanCommand();
  PlanCommand(const PlanCommand&) = delete;
  PlanCommand& operator=(const PlanCommand&) = delete;

  bool parsed() const;
  /// Exit code: 0 something fits, 1 nothing does; throws llmem::Error on bad input.
  int run(std::ostream& out, std::ostream& err) const;

 private:
  CLI::App* cmd_;
  std::unique_ptr<PlanOptions> o_;
};

}  // namespace llmem::cli

#endif  // LLMEM_TOOLS_LLMEM_PLAN_CMD_H_
