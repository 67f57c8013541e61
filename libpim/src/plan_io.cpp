#include "kvlab/pim/plan_io.hpp"

#include <fmt/format.h>

namespace kvlab::pim {

const std::vector<std::string>& plan_partition_datasets() {
  static const std::vector<std::string> n = {
      "first_unit",   "last_unit",        "xbars",         "utilization", "write_rows",
      "weight_bytes", "act_in_bytes",     "act_out_bytes", "spill_bytes", "t_start_ns",
      "t_load_ns",    "t_in_ns",          "t_compute_ns",  "t_spill_ns",  "t_out_ns",
      "e_write_pj",   "e_weight_dram_pj", "e_mvm_pj",      "e_vec_pj",    "e_act_dram_pj",
      "e_static_pj",  "bottleneck_ns"};
  return n;
}

const std::vector<std::string>& plan_total_attrs() {
  static const std::vector<std::string> n = {"partitions",
                                             "reloads",
                                             "throughput",
                                             "batch_ns",
                                             "ns_per_inference",
                                             "pj_per_inference",
                                             "edp",
                                             "throughput_x",
                                             "edp_x",
                                             "dram_weight_bytes",
                                             "dram_act_bytes",
                                             "write_rows",
                                             "mean_util",
                                             "objective",
                                             "compile_ms",
                                             "exact",
                                             "generations",
                                             "evaluations",
                                             "t_load_ns",
                                             "t_act_ns",
                                             "t_compute_ns",
                                             "t_program_ns",
                                             "e_write_pj",
                                             "e_weight_dram_pj",
                                             "e_mvm_pj",
                                             "e_vec_pj",
                                             "e_act_dram_pj",
                                             "e_static_pj"};
  return n;
}

void write_plan(const std::filesystem::path& out,
                const CompileResult& r,
                const core::Provenance& prov) {
  core::ArtifactWriter w(out, "pim-plan", kPlanFormatVersion, kPlanFormatMinor, prov);
  auto& P = w.params();
  P.set_attr("network", r.net.name);
  P.set_attr("network_source", r.net.source);
  P.set_attr("hw", r.hw.name);
  P.set_attr("batch", static_cast<std::int64_t>(r.opt.cost.batch));
  P.set_attr("objective", std::string(objective_name(r.opt.cost.objective)));
  P.set_attr("replicate", static_cast<std::int64_t>(r.opt.cost.replicate ? 1 : 0));
  P.set_attr("seed", static_cast<std::int64_t>(r.opt.ga.seed));
  std::vector<std::string> searches;
  for (const auto& s : r.results) searches.push_back(s.search);
  P.set_attr("searches", searches);
  P.set_attr("ga_population", static_cast<std::int64_t>(r.opt.ga.population));
  P.set_attr("ga_generations", static_cast<std::int64_t>(r.opt.ga.generations));
  P.set_attr("ga_patience", static_cast<std::int64_t>(r.opt.ga.patience));
  P.set_attr("ga_crossover", r.opt.ga.crossover);
  P.set_attr("ga_mutation", r.opt.ga.mutation);

  h5::Group hw = w.root().require_group("hw");
  hw.set_attr("name", r.hw.name);
  hw.set_attr("description", r.hw.description);
  hw.set_attr("capacity", static_cast<std::int64_t>(r.hw.capacity()));
  h5::Group src = hw.require_group("sources");
  for (const auto& [k, v] : hw_fields(r.hw)) {
    hw.set_attr(k, v);
    auto it = r.hw.sources.find(k);
    src.set_attr(k, it == r.hw.sources.end() ? std::string("default") : it->second);
  }

  const auto& net = r.net;
  const auto& M = r.mapping;
  h5::Group ng = w.root().require_group("network");
  std::vector<std::string> names, ops;
  std::vector<std::int64_t> lx, lw, lp, ln;
  for (std::size_t i = 0; i < net.layers.size(); ++i) {
    const auto& l = net.layers[i];
    names.push_back(l.name);
    ops.push_back(l.fn.empty() ? core::net_op_name(l.op)
                               : fmt::format("{}:{}", core::net_op_name(l.op), l.fn));
    const int m = M.layer_map[i];
    lx.push_back(m >= 0 ? M.layers[static_cast<std::size_t>(m)].xbars : 0);
    lw.push_back(l.weight_count());
    lp.push_back(l.positions());
    ln.push_back(l.out_numel());
  }
  ng.set_attr("name", net.name);
  ng.set_attr("source", net.source);
  ng.set_attr("layer_names", names);
  ng.set_attr("layer_ops", ops);
  ng.write_vec("layer_xbars", lx, {"layer"});
  ng.write_vec("layer_weights", lw, {"layer"});
  ng.write_vec("layer_positions", lp, {"layer"});
  ng.write_vec("layer_out_numel", ln, {"layer"});

  h5::Group ug = w.root().require_group("units");
  std::vector<std::int32_t> ul, us;
  std::vector<std::int64_t> ux, uw;
  std::vector<double> ut, ub, uo;
  for (const auto& u : M.units) {
    ul.push_back(u.layer);
    us.push_back(u.slice);
    ux.push_back(u.xbars);
    uw.push_back(u.write_rows);
    ut.push_back(u.t_ns);
    ub.push_back(u.weight_bytes);
    uo.push_back(u.out_bytes);
  }
  ug.write_vec("unit_layer", ul, {"unit"});
  ug.write_vec("unit_slice", us, {"unit"});
  ug.write_vec("unit_xbars", ux, {"unit"});
  ug.write_vec("unit_write_rows", uw, {"unit"});
  ug.write_vec("unit_t_ns", ut, {"unit"});
  ug.write_vec("unit_weight_bytes", ub, {"unit"});
  ug.write_vec("unit_out_bytes", uo, {"unit"});

  const Totals& base = r.baseline().totals;
  for (const auto& s : r.results) {
    h5::Group g = w.root().require_group("plans/" + s.search);
    const Totals& t = s.totals;
    g.set_attr("search", s.search);
    g.set_attr("requested", static_cast<std::int64_t>(s.requested));
    g.set_attr("partitions", static_cast<std::int64_t>(t.partitions));
    g.set_attr("reloads", static_cast<std::int64_t>(t.reloads));
    g.set_attr("throughput", t.throughput);
    g.set_attr("batch_ns", t.batch_ns);
    g.set_attr("ns_per_inference", t.ns_per_inf);
    g.set_attr("pj_per_inference", t.pj_per_inf);
    g.set_attr("edp", t.edp);
    g.set_attr("throughput_x", base.throughput > 0 ? t.throughput / base.throughput : 0.0);
    g.set_attr("edp_x", t.edp > 0 ? base.edp / t.edp : 0.0);
    g.set_attr("dram_weight_bytes", t.dram_weight_bytes);
    g.set_attr("dram_act_bytes", t.dram_act_bytes);
    g.set_attr("write_rows", t.write_rows);
    g.set_attr("mean_util", t.mean_util);
    g.set_attr("objective", t.objective);
    g.set_attr("compile_ms", s.compile_ms);
    g.set_attr("exact", static_cast<std::int64_t>(s.outcome.exact));
    g.set_attr("generations", static_cast<std::int64_t>(s.outcome.generations_run));
    g.set_attr("evaluations", static_cast<std::int64_t>(s.outcome.evaluations));
    g.set_attr("t_load_ns", t.t_load_ns);
    g.set_attr("t_act_ns", t.t_act_ns);
    g.set_attr("t_compute_ns", t.t_compute_ns);
    g.set_attr("t_program_ns", t.t_program_ns);
    g.set_attr("e_write_pj", t.e_write_pj);
    g.set_attr("e_weight_dram_pj", t.e_weight_dram_pj);
    g.set_attr("e_mvm_pj", t.e_mvm_pj);
    g.set_attr("e_vec_pj", t.e_vec_pj);
    g.set_attr("e_act_dram_pj", t.e_act_dram_pj);
    g.set_attr("e_static_pj", t.e_static_pj);

    std::vector<std::int64_t> fu, lu, xb, wr;
    std::vector<double> util, wb, ai, ao, sp, ts, tl, ti, tc, tsp, to, ew, ed, em, ev, ea, es, bn;
    std::vector<std::int32_t> upart(M.units.size(), -1), urep(M.units.size(), 1);
    std::vector<std::string> layers_of;
    double clock = 0;
    for (std::size_t k = 0; k < s.parts.size(); ++k) {
      const PartCost& p = s.parts[k];
      fu.push_back(p.first);
      lu.push_back(p.last);
      xb.push_back(p.xbars);
      util.push_back(static_cast<double>(p.xbars) / static_cast<double>(M.capacity));
      wr.push_back(p.write_rows);
      wb.push_back(p.weight_bytes);
      ai.push_back(p.act_in_bytes);
      ao.push_back(p.act_out_bytes);
      sp.push_back(p.spill_bytes);
      ts.push_back(clock);
      clock += p.time_ns();
      tl.push_back(p.t_load_ns);
      ti.push_back(p.t_in_ns);
      tc.push_back(p.t_compute_ns);
      tsp.push_back(p.t_spill_ns);
      to.push_back(p.t_out_ns);
      ew.push_back(p.e_write_pj);
      ed.push_back(p.e_weight_dram_pj);
      em.push_back(p.e_mvm_pj);
      ev.push_back(p.e_vec_pj);
      ea.push_back(p.e_act_dram_pj);
      es.push_back(p.e_static_pj);
      bn.push_back(p.bottleneck_ns);
      for (int u = p.first; u <= p.last; ++u) {
        upart[static_cast<std::size_t>(u)] = static_cast<std::int32_t>(k);
        urep[static_cast<std::size_t>(u)] = p.rep[static_cast<std::size_t>(u - p.first)];
      }
      const auto& U = M.units;
      const auto& a = U[static_cast<std::size_t>(p.first)];
      const auto& b = U[static_cast<std::size_t>(p.last)];
      auto label = [&](const Unit& u) {
        const std::string& nm = net.layers[static_cast<std::size_t>(u.layer)].name;
        return u.slices > 1 ? fmt::format("{}[{}/{}]", nm, u.slice + 1, u.slices) : nm;
      };
      layers_of.push_back(p.first == p.last ? label(a) : label(a) + " .. " + label(b));
    }
    const std::vector<std::string> lbl = {"partition"};
    g.write_vec("first_unit", fu, lbl);
    g.write_vec("last_unit", lu, lbl);
    g.write_vec("xbars", xb, lbl);
    g.write_vec("utilization", util, lbl);
    g.write_vec("write_rows", wr, lbl);
    g.write_vec("weight_bytes", wb, lbl);
    g.write_vec("act_in_bytes", ai, lbl);
    g.write_vec("act_out_bytes", ao, lbl);
    g.write_vec("spill_bytes", sp, lbl);
    g.write_vec("t_start_ns", ts, lbl);
    g.write_vec("t_load_ns", tl, lbl);
    g.write_vec("t_in_ns", ti, lbl);
    g.write_vec("t_compute_ns", tc, lbl);
    g.write_vec("t_spill_ns", tsp, lbl);
    g.write_vec("t_out_ns", to, lbl);
    g.write_vec("e_write_pj", ew, lbl);
    g.write_vec("e_weight_dram_pj", ed, lbl);
    g.write_vec("e_mvm_pj", em, lbl);
    g.write_vec("e_vec_pj", ev, lbl);
    g.write_vec("e_act_dram_pj", ea, lbl);
    g.write_vec("e_static_pj", es, lbl);
    g.write_vec("bottleneck_ns", bn, lbl);
    g.write_vec("unit_partition", upart, {"unit"});
    g.write_vec("unit_replication", urep, {"unit"});
    // Partition labels as a dataset-free attribute would overflow HDF5's 64 KB attribute limit
    // for long plans; keep only a short form per partition.
    if (layers_of.size() <= 512) g.set_attr("partition_layers", layers_of);
  }
  w.commit();
}

}  // namespace kvlab::pim
