// Copyright 2026 The llmem Authors.

#include "cli.h"

#include <ostream>
#include <string>

#include <CLI/CLI.hpp>

#include "llmem/error.h"
#include "llmem/model.h"
#include "llmem/report.h"

namespace llmem::cli {
namespace {

struct InspectOptions {
  std::string model;
  std::string format = "table";
  bool tensors = false;
};

struct ModelsOptions {
  std::string format = "table";
};

int run_inspect(const InspectOptions& o, std::ostream& out, std::ostream& err) {
  ModelSpec spec = load_model(o.model);
  if (o.format == "json") {
    out << inspect_json(spec);
    for (const std::string& w : spec.warnings)
      err << "warning: " << w << "\n";
  } else {
    out << inspect_table(spec, o.tensors);
  }
  return kExitOk;
}

int run_models(const ModelsOptions& o, std::ostream& out) {
  out << (o.format == "json" ? models_json() : models_table());
  return kExitOk;
}

int run_architectures(std::ostream& out) {
  for (const ArchitectureInfo& a : list_architectures()) {
    out << a.family << "  (model_type";
    for (const std::string& t : a.model_types)
      out << " " << t;
    out << ")  defaults: " << a.defaults_source << "\n";
  }
  return kExitOk;
}

}  // namespace

int run(int argc, const char* const* argv, std::ostream& out, std::ostream& err) {
  CLI::App app{"llmem: predict the peak GPU memory of fine-tuning a transformer LLM"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "llmem 0.1.0");

  InspectOptions inspect;
  CLI::App* inspect_cmd =
      app.add_subcommand("inspect", "Show a model's normalized description and tensor inventory");
  inspect_cmd
      ->add_option("--model,-m", inspect.model,
                   "Catalog name (facebook/opt-1.3b), config.json, or checkpoint directory")
      ->required();
  inspect_cmd->add_option("--format", inspect.format, "table or json")
      ->check(CLI::IsMember({"table", "json"}));
  inspect_cmd->add_flag("--tensors", inspect.tensors, "List every tensor (table format)");

  ModelsOptions models;
  CLI::App* models_cmd = app.add_subcommand("models", "List the built-in model catalog");
  models_cmd->add_option("--format", models.format, "table or json")
      ->check(CLI::IsMember({"table", "json"}));

  CLI::App* arch_cmd =
      app.add_subcommand("architectures", "List the supported architectures (model_type values)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e, out, err);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e, out, err);
  } catch (const CLI::ParseError& e) {
    app.exit(e, out, err);
    return kExitBadInput;
  }

  try {
    if (inspect_cmd->parsed())
      return run_inspect(inspect, out, err);
    if (models_cmd->parsed())
      return run_models(models, out);
    if (arch_cmd->parsed())
      return run_architectures(out);
  } catch (const Error& e) {
    err << "llmem: error: " << e.what() << "\n";
    return kExitBadInput;
  }
  return kExitBadInput;
}

}  // namespace llmem::cli
