// kvlab pim-compile: partition a network onto a crossbar PIM chip (COMPASS), compare searches,
// write a pim-plan artifact and print the summary table. Algorithms live in libpim.
#include <fmt/format.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/core/h5.hpp"
#include "kvlab/core/log.hpp"
#include "kvlab/core/netdesc.hpp"
#include "kvlab/core/artifact.hpp"
#include "kvlab/pim/artifact_net.hpp"
#include "kvlab/pim/compile.hpp"
#include "kvlab/pim/plan_io.hpp"
#include "kvlab/pim/zoo.hpp"

namespace kvlab::cli {

namespace {

std::string dry_run_report(const core::NetDesc& net,
                           const pim::Mapping& m,
                           const pim::HwConfig& hw) {
  std::string out = fmt::format("{:<28} {:<12} {:>14} {:>8} {:>6} {:>6} {:>9} {:>7}\n",
                                "layer",
                                "op",
                                "rows x cols",
                                "groups",
                                "AGs",
                                "x AG",
                                "crossbars",
                                "slices");
  for (const auto& lm : m.layers) {
    const auto& l = net.layers[static_cast<std::size_t>(lm.layer)];
    out += fmt::format("{:<28} {:<12} {:>14} {:>8} {:>6} {:>6} {:>9} {:>7}\n",
                       l.name,
                       core::net_op_name(l.op),
                       fmt::format("{}x{}", lm.rows, lm.cols),
                       lm.groups,
                       lm.ags,
                       lm.row_blocks,
                       pim::thousands(lm.xbars),
                       lm.slices);
  }
  out += fmt::format("total: {} crossbars in {} weight layers; chip {} has {} -> {}\n",
                     pim::thousands(m.total_xbars),
                     m.layers.size(),
                     hw.name,
                     pim::thousands(m.capacity),
                     m.total_xbars <= m.capacity ? "fits in one partition" : "needs partitioning");
  return out;
}

}  // namespace

void register_pim_compile(CLI::App& app, GlobalOptions& global) {
  struct Args {
    std::string network;  // description file (positional)
    std::string net;      // zoo name
    std::string hw_path;
    std::string output;
    bool force = false;
    bool dry_run = false;
    std::string search = "ga";
    std::vector<std::string> compare;
    std::string objective = "latency";
    std::string export_net;
    pim::CompileOptions opt;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "pim-compile",
      "Partition a network onto a crossbar processing-in-memory chip too small for it (COMPASS): "
      "map, search partitionings, simulate latency/energy/EDP; writes a pim-plan artifact");
  auto* pos =
      cmd->add_option("network",
                      args->network,
                      "network description file (.json: kvlab-network or PIMCOMP-NN node_list; "
                      "docs/formats/network.md) or a kvlab artifact with weights (.h5: "
                      "bnn-model, LLM model)");
  std::string zoo_list;
  for (const auto& n : pim::zoo_names()) zoo_list += (zoo_list.empty() ? "" : "|") + n;
  auto* net = cmd->add_option("--net", args->net, "built-in network: " + zoo_list)
                  ->check(CLI::IsMember(pim::zoo_names()));
  pos->excludes(net);
  net->excludes(pos);
  cmd->add_option(
      "--hw",
      args->hw_path,
      "hardware config JSON (data/hw/*.json); default: the built-in pimcomp-default chip");
  add_output_option(cmd, args->output, args->force, "pim-plan artifact to write (.h5; optional)");
  cmd->add_option("--search", args->search, "partitioning search: layerwise, greedy, dp or ga")
      ->check(CLI::IsMember({"layerwise", "greedy", "dp", "ga"}))
      ->capture_default_str();
  cmd->add_option("--compare",
                  args->compare,
                  "run several searches, comma-separated (e.g. layerwise,greedy,ga; 'all' = "
                  "layerwise,greedy,dp,ga); overrides --search")
      ->delimiter(',')
      ->check(CLI::IsMember({"layerwise", "greedy", "dp", "ga", "all"}));
  cmd->add_option(
         "--objective", args->objective, "what the searches minimise: latency, energy or edp")
      ->check(CLI::IsMember({"latency", "energy", "edp"}))
      ->capture_default_str();
  cmd->add_option("--batch", args->opt.cost.batch, "samples per weight reload (write amortisation)")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  cmd->add_flag("--replicate",
                args->opt.cost.replicate,
                "replicate bottleneck layers into each partition's leftover crossbars");
  cmd->add_option("--ga-population", args->opt.ga.population, "GA population size")
      ->check(CLI::Range(4, 100000))
      ->capture_default_str();
  cmd->add_option("--ga-generations", args->opt.ga.generations, "GA generations (at most)")
      ->check(CLI::Range(0, 1000000))
      ->capture_default_str();
  cmd->add_option("--ga-patience",
                  args->opt.ga.patience,
                  "stop the GA after this many generations without improvement (0: never)")
      ->check(CLI::Range(0, 1000000))
      ->capture_default_str();
  cmd->add_option("--ga-mutation", args->opt.ga.mutation, "probability a GA child is mutated")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("--ga-crossover", args->opt.ga.crossover, "probability a GA child is a crossover")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option(
      "--export-net",
      args->export_net,
      "also write the resolved network as kvlab-network JSON (every shape spelled out)");
  cmd->add_flag(
      "--dry-run",
      args->dry_run,
      "map the network and print the per-layer crossbar table; no search, nothing written");

  cmd->callback([args, &global] {
    global.action = [args, &global] {
      KVLAB_THROW_IF(
          args->network.empty() && args->net.empty(),
          UsageError,
          "give a network: a description file or --net NAME (see kvlab pim-compile --help)");
      std::vector<std::string> in_files;
      std::vector<core::InputRef> inputs;
      core::NetDesc net;
      if (!args->net.empty()) {
        net = pim::zoo_net(args->net);
      } else {
        const bool artifact = h5::is_hdf5(args->network);
        net = artifact ? pim::artifact_net(args->network) : core::read_net_json(args->network);
        in_files.push_back(args->network);
        // Record a parent artifact by kind and uuid so `kvlab inspect` can follow the lineage.
        inputs.push_back(artifact ? core::ArtifactReader::open_any(args->network).header().as_input()
                                  : core::InputRef{args->network, "file", "", 0});
      }
      pim::HwConfig hw = pim::default_hw();
      if (!args->hw_path.empty()) {
        hw = pim::read_hw_json(args->hw_path);
        in_files.push_back(args->hw_path);
        inputs.push_back({args->hw_path, "file", "", 0});
      } else {
        log::info("no --hw given: using the built-in {} chip (data/hw/pimcomp-default.json)",
                  hw.name);
      }
      if (!args->output.empty()) core::check_output_path(args->output, in_files, args->force);
      if (!args->export_net.empty()) {
        core::check_output_path(args->export_net, in_files, args->force);
        std::ofstream f(args->export_net);
        KVLAB_THROW_IF(!f, IoError, "--export-net {}: cannot write", args->export_net);
        f << core::net_to_json_text(net);
        KVLAB_THROW_IF(!f, IoError, "--export-net {}: write failed", args->export_net);
      }
      if (args->dry_run) {
        const pim::Mapping m = pim::map_network(net, hw);
        fmt::print("{}", dry_run_report(net, m, hw));
        return;
      }
      auto& opt = args->opt;
      opt.ga.seed = global.seed;
      opt.cost.objective = args->objective == "energy" ? pim::Objective::energy
                           : args->objective == "edp"  ? pim::Objective::edp
                                                       : pim::Objective::latency;
      opt.searches.clear();
      for (const auto& s : args->compare) {
        if (s == "all")
          opt.searches.insert(opt.searches.end(), {"layerwise", "greedy", "dp", "ga"});
        else
          opt.searches.push_back(s);
      }
      if (opt.searches.empty()) opt.searches.push_back(args->search);
      auto progress = global.make_progress();
      const pim::CompileResult r = pim::compile(net, hw, opt, *progress);
      if (global.json)
        fmt::print("{}\n", pim::summary_json(r).dump(2));
      else
        fmt::print("{}", pim::format_summary(r));
      if (!args->output.empty()) {
        pim::write_plan(args->output, r, global.provenance(inputs));
        log::info("wrote {}", args->output);
      }
    };
  });
}

}  // namespace kvlab::cli
