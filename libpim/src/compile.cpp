#include "kvlab/pim/compile.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>

#include "kvlab/core/error.hpp"

namespace kvlab::pim {

namespace {

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

std::string thousands(std::int64_t v) {
  std::string s = std::to_string(v < 0 ? -v : v);
  for (int k = static_cast<int>(s.size()) - 3; k > 0; k -= 3)
    s.insert(static_cast<std::size_t>(k), ",");
  return v < 0 ? "-" + s : s;
}

const SearchResult* CompileResult::find(const std::string& search) const {
  for (const auto& r : results)
    if (r.search == search) return &r;
  return nullptr;
}

CompileResult compile(const core::NetDesc& net,
                      const HwConfig& hw,
                      const CompileOptions& opt,
                      core::Progress& progress) {
  KVLAB_THROW_IF(opt.cost.batch < 1, UsageError, "--batch {}: expected >= 1", opt.cost.batch);
  KVLAB_THROW_IF(
      opt.searches.empty(), UsageError, "no search requested; use --search or --compare");
  for (const auto& s : opt.searches) {
    const auto& names = search_names();
    KVLAB_THROW_IF(std::find(names.begin(), names.end(), s) == names.end(),
                   UsageError,
                   "unknown search \"{}\"; expected layerwise, greedy, dp or ga",
                   s);
  }
  CompileResult r;
  r.net = net;
  r.hw = hw;
  r.opt = opt;
  validate_hw(hw, hw.name);
  const auto t0 = std::chrono::steady_clock::now();
  r.mapping = map_network(net, hw);
  r.map_ms = ms_since(t0);
  KVLAB_THROW_IF(r.mapping.units.empty(),
                 UsageError,
                 "{}: the network has no layers besides its inputs",
                 net.name);

  std::vector<std::string> order = {"layerwise"};
  for (const auto& s : opt.searches)
    if (std::find(order.begin(), order.end(), s) == order.end()) order.push_back(s);
  const bool layerwise_requested =
      std::find(opt.searches.begin(), opt.searches.end(), "layerwise") != opt.searches.end();

  for (std::size_t k = 0; k < order.size(); ++k) {
    const std::string& name = order[k];
    progress.stage(name, static_cast<int>(k) + 1, static_cast<int>(order.size()));
    const auto ts = std::chrono::steady_clock::now();
    CostModel cm(r.mapping, hw, opt.cost);  // a fresh cache per search: honest compile times
    SearchResult sr;
    sr.search = name;
    if (name == "layerwise")
      sr.outcome = search_layerwise(cm);
    else if (name == "greedy")
      sr.outcome = search_greedy(cm);
    else if (name == "dp")
      sr.outcome = search_dp(cm);
    else
      sr.outcome = search_ga(cm, opt.ga, progress);
    sr.totals = cm.totals(sr.outcome.ends);
    sr.compile_ms = ms_since(ts);
    sr.parts = cm.parts(sr.outcome.ends);
    sr.requested = name != "layerwise" || layerwise_requested;
    r.results.push_back(std::move(sr));
  }
  return r;
}

namespace {

std::string fmt_count(double v) {
  if (v >= 1e9) return fmt::format("{:.2f} G", v / 1e9);
  if (v >= 1e6) return fmt::format("{:.2f} M", v / 1e6);
  if (v >= 1e3) return fmt::format("{:.1f} k", v / 1e3);
  return fmt::format("{:.0f}", v);
}

std::string fmt_sig(double v) {
  if (v == 0) return "0";
  if (v >= 1000) return fmt::format("{:.0f}", v);
  if (v >= 100) return fmt::format("{:.1f}", v);
  if (v >= 10) return fmt::format("{:.2f}", v);
  if (v >= 1) return fmt::format("{:.3f}", v);
  return fmt::format("{:.3g}", v);
}

}  // namespace

std::string format_summary(const CompileResult& r) {
  const auto& M = r.mapping;
  const auto& hw = r.hw;
  std::string out;
  out += fmt::format("network  {} ({}): {} weight layers, {} M weights, {} MMAC/inference\n",
                     r.net.name,
                     r.net.source,
                     r.net.weight_layer_count(),
                     fmt::format("{:.2f}", r.net.weight_count() / 1e6),
                     fmt::format("{:.0f}", r.net.macs() / 1e6));
  out += fmt::format(
      "mapping  {} crossbars at {}-bit weights on {}-bit cells (largest layer {}); {} units",
      thousands(M.total_xbars),
      hw.weight_bits,
      hw.cell_bits,
      thousands(M.largest_layer_xbars),
      M.units.size());
  if (M.split_layers) out += fmt::format(", {} layer(s) split by output columns", M.split_layers);
  out += "\n";
  out += fmt::format(
      "chip     {}: {} crossbars ({} cores x {} of {}x{}), DRAM {} GB/s, buffer {} KB; {}\n",
      hw.name,
      thousands(hw.capacity()),
      hw.cores,
      hw.xbars_per_core,
      hw.xbar_rows,
      hw.xbar_cols,
      fmt_sig(hw.dram_gbps),
      hw.buffer_bytes() / 1024,
      M.total_xbars <= hw.capacity()
          ? "the network fits on chip"
          : fmt::format("network is {:.1f}x the chip",
                        static_cast<double>(M.total_xbars) / static_cast<double>(hw.capacity())));
  out += fmt::format(
      "constants {} of {} from the --hw file, the rest built-in defaults; none is COMPASS's own "
      "(unpublished): sources in docs/pim-compile.md and the plan's /hw/sources\n",
      hw.from_file.size(),
      hw_fields(hw).size());
  out += fmt::format(
      "run      batch {}, objective {}{}, GA population {} x {} generations, seed {}\n\n",
      r.opt.cost.batch,
      objective_name(r.opt.cost.objective),
      r.opt.cost.replicate ? ", weight replication on" : "",
      r.opt.ga.population,
      r.opt.ga.generations,
      r.opt.ga.seed);
  out += fmt::format("{:<10} {:>5} {:>5} {:>9} {:>16} {:>11} {:>9} {:>9} {:>12}  {:<30} {:>9}\n",
                     "search",
                     "parts",
                     "util",
                     "writes",
                     "DRAM w/act MB",
                     "batch ms",
                     "inf/s",
                     "mJ/inf",
                     "EDP mJ*ms",
                     "vs layerwise",
                     "compile");
  const Totals& b = r.baseline().totals;
  for (const auto& s : r.results) {
    const Totals& t = s.totals;
    const double thr_x = b.throughput > 0 ? t.throughput / b.throughput : 0;
    const double edp_x = t.edp > 0 ? b.edp / t.edp : 0;
    std::string name = s.search;
    if (s.search == "dp" && !s.outcome.exact) name += "~";
    out += fmt::format(
        "{:<10} {:>5} {:>5.2f} {:>9} {:>16} {:>11} {:>9} {:>9} {:>12}  {:<30} {:>9}\n",
        name,
        t.partitions,
        t.mean_util,
        fmt_count(t.write_rows),
        fmt::format("{:.1f} / {:.1f}", t.dram_weight_bytes / 1e6, t.dram_act_bytes / 1e6),
        fmt_sig(t.batch_ns / 1e6),
        fmt_sig(t.throughput),
        fmt_sig(t.pj_per_inf / 1e9),
        fmt_sig(t.edp / 1e15),
        fmt::format("{:.2f}x throughput / {:.2f}x EDP", thr_x, edp_x),
        fmt::format("{:.1f} ms", s.compile_ms));
  }
  out +=
      "\nutil: mean crossbars used / chip per partition; writes: crossbar rows programmed per "
      "batch;"
      "\nEDP per inference; 'x EDP' is the saving (layerwise EDP / this EDP).\n";
  const auto* one = r.results.size() > 1 ? &r.results.back() : nullptr;
  if (one && one->totals.reloads == 0)
    out += fmt::format(
        "{}: the whole network stays on chip (no weight reloads; one-time programming {:.3f} ms)\n",
        one->search,
        one->totals.t_program_ns / 1e6);
  return out;
}

nlohmann::json summary_json(const CompileResult& r) {
  using json = nlohmann::json;
  json hwj = json::object();
  for (const auto& [k, v] : hw_fields(r.hw)) hwj[k] = v;
  hwj["name"] = r.hw.name;
  hwj["capacity"] = r.hw.capacity();
  hwj["sources"] = r.hw.sources;
  hwj["from_file"] = r.hw.from_file;
  json results = json::array();
  const Totals& b = r.baseline().totals;
  for (const auto& s : r.results) {
    const Totals& t = s.totals;
    json parts = json::array();
    for (const auto& p : s.parts)
      parts.push_back({{"first_unit", p.first},
                       {"last_unit", p.last},
                       {"xbars", p.xbars},
                       {"time_ns", p.time_ns()},
                       {"energy_pj", p.energy_pj()}});
    results.push_back({
        {"search", s.search},
        {"requested", s.requested},
        {"partitions", t.partitions},
        {"reloads", t.reloads},
        {"throughput_per_s", t.throughput},
        {"batch_ns", t.batch_ns},
        {"ns_per_inference", t.ns_per_inf},
        {"pj_per_inference", t.pj_per_inf},
        {"edp_pj_ns", t.edp},
        {"throughput_x", b.throughput > 0 ? t.throughput / b.throughput : 0.0},
        {"edp_x", t.edp > 0 ? b.edp / t.edp : 0.0},
        {"dram_weight_bytes", t.dram_weight_bytes},
        {"dram_act_bytes", t.dram_act_bytes},
        {"write_rows", t.write_rows},
        {"mean_util", t.mean_util},
        {"objective", t.objective},
        {"compile_ms", s.compile_ms},
        {"exact", s.outcome.exact},
        {"generations", s.outcome.generations_run},
        {"evaluations", s.outcome.evaluations},
        {"time_ns",
         {{"load", t.t_load_ns}, {"activations", t.t_act_ns}, {"compute", t.t_compute_ns}}},
        {"energy_pj",
         {{"write", t.e_write_pj},
          {"weight_dram", t.e_weight_dram_pj},
          {"mvm", t.e_mvm_pj},
          {"vector", t.e_vec_pj},
          {"act_dram", t.e_act_dram_pj},
          {"static", t.e_static_pj}}},
        {"parts", parts},
    });
  }
  return json{{"network", r.net.name},
              {"network_source", r.net.source},
              {"weight_layers", r.net.weight_layer_count()},
              {"weights", r.net.weight_count()},
              {"crossbars", r.mapping.total_xbars},
              {"largest_layer_crossbars", r.mapping.largest_layer_xbars},
              {"units", r.mapping.units.size()},
              {"hw", hwj},
              {"batch", r.opt.cost.batch},
              {"objective", objective_name(r.opt.cost.objective)},
              {"replicate", r.opt.cost.replicate},
              {"seed", r.opt.ga.seed},
              {"results", results}};
}

}  // namespace kvlab::pim
