// The CLI contract: walks the real CLI::App and every registered subcommand.
#include <doctest/doctest.h>

#include <cctype>
#include <set>
#include <string>
#include <vector>

#include "commands.hpp"
#include "kvlab/core/error.hpp"

using namespace kvlab;

namespace {

bool kebab(const std::string& s) {
  if (s.empty() || s.front() == '-' || s.back() == '-') return false;
  for (char c : s)
    if (!(std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) || c == '-'))
      return false;
  return s.find("--") == std::string::npos;
}

int run_args(std::vector<const char*> args) {
  args.insert(args.begin(), "kvlab");
  return cli::run(static_cast<int>(args.size()), args.data());
}

void check_options(const CLI::App* app, std::set<std::string>& envs) {
  for (const CLI::Option* o : app->get_options()) {
    const std::string name = o->get_name();
    CAPTURE(app->get_name());
    CAPTURE(name);
    if (name == "--help" || name == "--version") continue;
    CHECK_FALSE(o->get_description().empty());
    for (const auto& l : o->get_lnames()) CHECK(kebab(l));
    for (const auto& s : o->get_snames()) CHECK(s.size() == 1);
    if (!o->get_envname().empty()) {
      CHECK(o->get_envname().rfind("KVLAB_", 0) == 0);
      CHECK(envs.insert(o->get_envname()).second);  // unique
    }
  }
}

}  // namespace

TEST_CASE("every option has help, kebab-case names and unique KVLAB_ variables") {
  cli::GlobalOptions g;
  auto app = cli::build_app(g);
  std::set<std::string> envs;
  check_options(app.get(), envs);
  for (const char* v : {"KVLAB_THREADS", "KVLAB_DEVICE", "KVLAB_SEED", "KVLAB_LOG_LEVEL",
                        "KVLAB_PROGRESS", "KVLAB_JSON"})
    CHECK(envs.count(v) == 1);
  const auto subs = app->get_subcommands([](CLI::App*) { return true; });
  REQUIRE(subs.size() == cli::commands().size());
  for (const CLI::App* sub : subs) {
    CAPTURE(sub->get_name());
    CHECK(kebab(sub->get_name()));
    CHECK_FALSE(sub->get_description().empty());
    check_options(sub, envs);
  }
}

TEST_CASE("commands that write take -o/--output and --force") {
  cli::GlobalOptions g;
  auto app = cli::build_app(g);
  for (const auto& c : cli::commands()) {
    CAPTURE(c.name);
    CLI::App* sub = app->get_subcommand(c.name);
    const bool has_o = sub->get_option_no_throw("--output") != nullptr;
    CHECK(has_o == c.writes);
    if (c.writes) {
      CHECK(sub->get_option("--output")->check_sname("o"));
      CHECK(sub->get_option_no_throw("--force") != nullptr);
    }
  }
}

TEST_CASE("--help exits 0 for kvlab and every subcommand") {
  CHECK(run_args({"--help"}) == kExitOk);
  CHECK(run_args({"--version"}) == kExitOk);
  for (const auto& c : cli::commands()) {
    CAPTURE(c.name);
    CHECK(run_args({c.name, "--help"}) == kExitOk);
  }
}

TEST_CASE("usage errors exit 2") {
  CHECK(run_args({}) == kExitUsage);                          // no subcommand
  CHECK(run_args({"no-such-command"}) == kExitUsage);
  CHECK(run_args({"--threads", "-1", "inspect", "x.h5"}) == kExitUsage);
  CHECK(run_args({"--threads", "many", "inspect", "x.h5"}) == kExitUsage);
  CHECK(run_args({"--progress", "sometimes", "inspect", "x.h5"}) == kExitUsage);
  CHECK(run_args({"--device", "tpu", "inspect", "x.h5"}) == kExitUsage);
  CHECK(run_args({"inspect"}) == kExitUsage);                 // missing positional
  CHECK(run_args({"selfcheck", "--size", "3"}) == kExitUsage);
  CHECK(run_args({"inspect", "x.h5", "--bogus"}) == kExitUsage);
}

TEST_CASE("a missing input file exits 3") {
  CHECK(run_args({"--log-level", "off", "inspect", "/nonexistent/file.h5"}) == kExitBadFile);
}
