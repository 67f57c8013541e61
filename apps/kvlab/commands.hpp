// The kvlab command table and the options every subcommand shares.
//
// Each cmd_<name>.cpp registers one subcommand: it binds an options struct (whose defaults live in
// the library header) to CLI11 and sets `global.action` to a closure that opens inputs, calls one
// library function, writes one artifact and prints one summary. main() parses, applies the global
// options, then runs the action, so nothing runs during parsing (the CLI contract test relies on
// that to walk every command without side effects).
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kvlab/core/artifact.hpp"
#include "kvlab/core/progress.hpp"
#include "kvlab/core/runtime.hpp"
#include "kvlab/core/schema.hpp"

namespace kvlab::cli {

struct GlobalOptions {
  int threads = 0;  ///< 0: $SLURM_CPUS_PER_TASK when set, else every core this process may use
  std::string device = "cpu";
  std::uint64_t seed = 0;
  std::string log_level = "info";
  std::string progress = "auto";
  bool json = false;

  // Filled by main / apply().
  std::vector<std::string> argv;
  CLI::App* app = nullptr;
  std::string command_name;
  core::DeviceSpec dev;
  std::function<void()> action;

  /// Resolves threads/device/seed/log level and applies them to the process.
  void apply();
  std::unique_ptr<core::Progress> make_progress() const;
  /// Provenance for an artifact written by the active command.
  core::Provenance provenance(const std::vector<core::InputRef>& inputs) const;
};

struct Command {
  const char* name;
  void (*register_fn)(CLI::App&, GlobalOptions&);
  bool writes;  ///< writes an artifact: must take -o/--output (checked by the contract test)
};

/// Every registered subcommand, in --help order.
const std::vector<Command>& commands();

/// Builds the full CLI (global options + every subcommand) bound to `global`.
std::unique_ptr<CLI::App> build_app(GlobalOptions& global);

/// Parses, runs the command, maps exceptions to exit codes. No exception escapes.
int run(int argc, const char* const* argv);

/// Registers the schemas of every library (for inspect --validate).
core::SchemaRegistry all_schemas();

/// Adds the standard -o/--output and --force options; returns the -o option.
CLI::Option* add_output_option(CLI::App* cmd, std::string& output, bool& force,
                               const std::string& what);

// One per subcommand file.
void register_inspect(CLI::App& app, GlobalOptions& global);
void register_selfcheck(CLI::App& app, GlobalOptions& global);
void register_import_hf(CLI::App& app, GlobalOptions& global);
void register_import_gguf(CLI::App& app, GlobalOptions& global);
void register_export_hf(CLI::App& app, GlobalOptions& global);
void register_pim_compile(CLI::App& app, GlobalOptions& global);
void register_mobile_plan(CLI::App& app, GlobalOptions& global);
void register_bnn_train(CLI::App& app, GlobalOptions& global);
void register_binarize(CLI::App& app, GlobalOptions& global);
void register_snn_train(CLI::App& app, GlobalOptions& global);
void register_eval(CLI::App& app, GlobalOptions& global);
void register_generate(CLI::App& app, GlobalOptions& global);
void register_tokenize(CLI::App& app, GlobalOptions& global);
void register_bench_decode(CLI::App& app, GlobalOptions& global);
void register_kv_eval(CLI::App& app, GlobalOptions& global);
void register_prune_blocks(CLI::App& app, GlobalOptions& global);

}  // namespace kvlab::cli
