// kvlab inspect: print any artifact (kind, versions, lineage, params, datasets); --validate checks
// it against its kind's schema and exits 3 on a violation.
#include <fmt/format.h>

#include "commands.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/core/inspect.hpp"

namespace kvlab::cli {

void register_inspect(CLI::App& app, GlobalOptions& global) {
  struct Args {
    std::string file;
    bool validate = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("inspect", "Print a kvlab artifact: kind, versions, lineage, "
                                                "params and datasets");
  // No ExistingFile check: a missing input is a bad-input error (exit 3), reported by the reader.
  cmd->add_option("file", args->file, "artifact to print (.h5)")->required();
  cmd->add_flag("--validate", args->validate,
                "check the artifact against its kind's schema; exit 3 if it does not conform");
  cmd->callback([args, &global] {
    global.action = [args, &global] {
      const auto reader = core::ArtifactReader::open_any(args->file);
      core::ArtifactSummary s = core::summarize(reader);
      if (args->validate) {
        s.validated = true;
        s.problems = core::validate(reader, all_schemas());
      }
      if (global.json)
        fmt::print("{}\n", core::to_json(s).dump(2));
      else
        fmt::print("{}", core::to_text(s));
      KVLAB_THROW_IF(!s.problems.empty(), FormatError,
                     "{}: does not conform to the {} schema ({} problem(s), listed above)",
                     args->file, s.header.kind, s.problems.size());
    };
  });
}

}  // namespace kvlab::cli
