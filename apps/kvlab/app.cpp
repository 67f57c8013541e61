// The command table, global options, and the exception -> exit code mapping.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cerrno>
#include <csignal>
#include <limits>
#include <cstdlib>
#include <iostream>

#include "commands.hpp"
#include "kvlab/binary/schemas.hpp"
#include "kvlab/compress/schemas.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/core/log.hpp"
#include "kvlab/core/runtime.hpp"
#include "kvlab/core/version.hpp"
#include "kvlab/llm/schemas.hpp"
#include "kvlab/pim/schemas.hpp"
#include "kvlab/snn/schemas.hpp"

namespace kvlab::cli {

const std::vector<Command>& commands() {
  static const std::vector<Command> table = {
      // plumbing
      {"inspect", register_inspect, false},
      {"selfcheck", register_selfcheck, true},
      {"import-hf", register_import_hf, true},
      {"import-gguf", register_import_gguf, true},
      {"export-hf", register_export_hf, true},
      // the LLM runtime
      {"eval", register_eval, true},
      {"generate", register_generate, false},
      {"tokenize", register_tokenize, true},
      {"bench-decode", register_bench_decode, false},
      {"kv-eval", register_kv_eval, true},
      {"prune-blocks", register_prune_blocks, true},
      // binary and spiking networks
      {"bnn-train", register_bnn_train, true},
      {"binarize", register_binarize, true},
      {"snn-train", register_snn_train, true},
      // hardware-constrained compilation
      {"pim-compile", register_pim_compile, true},
      {"mobile-plan", register_mobile_plan, false},  // -o on its plan/export subcommands
  };
  return table;
}

core::SchemaRegistry all_schemas() {
  core::SchemaRegistry reg;
  core::register_schemas(reg);
  llm::register_schemas(reg);
  compress::register_schemas(reg);
  binary::register_schemas(reg);
  snn::register_schemas(reg);
  pim::register_schemas(reg);
  return reg;
}

CLI::Option* add_output_option(CLI::App* cmd, std::string& output, bool& force,
                               const std::string& what) {
  cmd->add_flag("--force", force, "overwrite the output file if it exists");
  return cmd->add_option("-o,--output", output, what);
}

namespace {

std::string shell_quote(const std::string& s) {
  if (!s.empty() && s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                        "0123456789-_./=:,+@%") == std::string::npos)
    return s;
  std::string o = "'";
  for (char c : s) o += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return o + "'";
}

void on_stop_signal(int sig) {
  core::request_stop();
  // A second signal of the same kind kills the process the default way.
  std::signal(sig, SIG_DFL);
}

}  // namespace

namespace {
// CLI11 versions differ in whether a malformed KVLAB_* value is an error; make it one everywhere.
void check_env_integer(const char* name, long lo, long hi) {
  const char* s = std::getenv(name);
  if (!s || !*s) return;
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(s, &end, 10);
  KVLAB_THROW_IF(errno != 0 || !end || *end != '\0' || v < lo || v > hi, UsageError,
                 "{}={}: expected an integer in [{}, {}]", name, s, lo, hi);
}
}  // namespace

void GlobalOptions::apply() {
  check_env_integer("KVLAB_THREADS", 0, 4096);
  check_env_integer("KVLAB_SEED", 0, std::numeric_limits<long>::max());
  KVLAB_THROW_IF(progress != "auto" && progress != "bar" && progress != "lines" && progress != "none",
                 UsageError, "--progress {}: expected auto, bar, lines or none", progress);
  log::Level lvl;
  KVLAB_THROW_IF(!log::parse_level(log_level, lvl), UsageError,
                 "--log-level {}: expected debug, info, warn, error or off", log_level);
  log::set_level(lvl);
  int n = threads;
  if (n == 0) {
    if (const char* s = std::getenv("SLURM_CPUS_PER_TASK")) {
      char* end = nullptr;
      const long v = std::strtol(s, &end, 10);
      if (end && *end == '\0' && v > 0) n = static_cast<int>(v);
    }
  }
  if (n == 0) n = core::available_cores();
  core::set_threads(n);
  dev = core::parse_device(device);
  core::check_device(dev);
  core::set_seed(seed);
}

std::unique_ptr<core::Progress> GlobalOptions::make_progress() const {
  core::ProgressMode m = core::ProgressMode::automatic;
  if (progress == "bar") m = core::ProgressMode::bar;
  else if (progress == "lines") m = core::ProgressMode::lines;
  else if (progress == "none") m = core::ProgressMode::none;
  return std::make_unique<core::StreamProgress>(stderr, m);
}

core::Provenance GlobalOptions::provenance(const std::vector<core::InputRef>& inputs) const {
  core::Provenance p;
  std::vector<std::string> q;
  for (const auto& a : argv) q.push_back(shell_quote(a));
  p.command = fmt::format("{}", fmt::join(q, " "));
  if (app) p.config = app->config_to_str(/*default_also=*/true, /*write_description=*/false);
  p.inputs = inputs;
  return p;
}

std::unique_ptr<CLI::App> build_app(GlobalOptions& g) {
  auto app = std::make_unique<CLI::App>(
      "kvlab: KV-cache compression, block pruning, 1-bit LLMs, binary and spiking networks, PIM "
      "compilation.\nOne binary of subcommands that pass HDF5 artifacts (see 'kvlab inspect').",
      "kvlab");
  app->footer(
      "Exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 bad or incompatible input file.\n"
      "Every global option can also be set by its KVLAB_* environment variable.");
  app->set_version_flag("--version", fmt::format("kvlab {} (git {})", KVLAB_VERSION, KVLAB_GIT_SHA));
  app->require_subcommand(1);
  app->fallthrough();  // global options may follow the subcommand name
  app->option_defaults()->always_capture_default();

  app->add_option("--threads", g.threads,
                  "CPU threads (0: $SLURM_CPUS_PER_TASK when set, else all cores allowed)")
      ->check(CLI::Range(0, 4096))
      ->envname("KVLAB_THREADS");
  app->add_option("--device", g.device, "compute device: cpu, cuda or cuda:N")
      ->envname("KVLAB_DEVICE");
  app->add_option("--seed", g.seed, "random seed (same inputs + seed on CPU: identical artifacts)")
      ->envname("KVLAB_SEED");
  app->add_option("--log-level", g.log_level, "stderr log level")
      ->check(CLI::IsMember({"debug", "info", "warn", "error", "off"}))
      ->envname("KVLAB_LOG_LEVEL");
  app->add_option("--progress", g.progress,
                  "progress display: auto (bar on a terminal, lines otherwise), bar, lines, none")
      ->check(CLI::IsMember({"auto", "bar", "lines", "none"}))
      ->envname("KVLAB_PROGRESS");
  app->add_flag("--json", g.json, "print results as JSON on stdout instead of a table")
      ->envname("KVLAB_JSON");

  for (const auto& c : commands()) c.register_fn(*app, g);
  return app;
}

int run(int argc, const char* const* argv) {
  GlobalOptions g;
  g.argv.assign(argv, argv + argc);
  std::unique_ptr<CLI::App> app;
  try {
    app = build_app(g);
    g.app = app.get();
    app->parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app->exit(e);  // prints help/version (0) or the error
    return rc == 0 ? kExitOk : kExitUsage;
  }
  for (CLI::App* sub : app->get_subcommands()) g.command_name = sub->get_name();
  try {
    g.apply();
    std::signal(SIGTERM, on_stop_signal);
    std::signal(SIGUSR1, on_stop_signal);
    if (g.action) g.action();
    std::string usage = fmt::format("kvlab {}: done in {}, peak RSS {}", g.command_name,
                                    core::human_seconds(log::elapsed()),
                                    core::human_bytes(core::peak_rss_bytes()));
    if (const auto cuda = core::peak_cuda_bytes()) usage += ", peak CUDA " + core::human_bytes(cuda);
    log::info("{}", usage);
    return kExitOk;
  } catch (const Error& e) {
    fmt::print(stderr, "kvlab {}: error: {}\n", g.command_name, e.what());
    return e.exit_code();
  } catch (const std::bad_alloc&) {
    fmt::print(stderr, "kvlab {}: error: out of memory (peak RSS {}); use a smaller setting\n",
               g.command_name, core::human_bytes(core::peak_rss_bytes()));
    return kExitRuntime;
  } catch (const std::exception& e) {  // c10::Error and anything else
    fmt::print(stderr, "kvlab {}: internal error: {}\n", g.command_name, e.what());
    return kExitRuntime;
  }
}

}  // namespace kvlab::cli
