#include "kvlab/pim/schemas.hpp"

#include <fmt/format.h>

#include "kvlab/pim/mobile_plan.hpp"
#include "kvlab/pim/plan_io.hpp"

namespace kvlab::pim {

void register_schemas(core::SchemaRegistry& reg) {
  using core::AttrType;
  core::Schema s;
  s.kind = "pim-plan";
  s.min_version = 1;
  s.max_version = kPlanFormatVersion;
  s.doc = "docs/formats/pim-plan.md";
  s.params = {{"network", AttrType::string},
              {"network_source", AttrType::string},
              {"hw", AttrType::string},
              {"batch", AttrType::integer},
              {"objective", AttrType::string},
              {"replicate", AttrType::integer},
              {"seed", AttrType::integer},
              {"searches", AttrType::strings},
              {"ga_population", AttrType::integer},
              {"ga_generations", AttrType::integer}};
  using h5::DType;
  const std::vector<DType> ints = {DType::i32, DType::i64};
  const std::vector<DType> reals = {DType::f64};
  s.datasets = {{"network/layer_xbars", ints, 1},
                {"network/layer_weights", ints, 1},
                {"network/layer_positions", ints, 1},
                {"network/layer_out_numel", ints, 1},
                {"units/unit_layer", ints, 1},
                {"units/unit_xbars", ints, 1},
                {"units/unit_write_rows", ints, 1},
                {"units/unit_t_ns", reals, 1}};
  for (const auto& d : plan_partition_datasets()) {
    const bool integer = d == "first_unit" || d == "last_unit" || d == "xbars" || d == "write_rows";
    s.datasets.push_back({"plans/*/" + d, integer ? ints : reals, 1});
  }
  s.datasets.push_back({"plans/*/unit_partition", ints, 1});
  s.datasets.push_back({"plans/*/unit_replication", ints, 1});
  s.check = [](const core::ArtifactReader& r, std::vector<std::string>& problems) {
    const h5::Group root = r.root();
    if (!root.has_group("plans") || !root.has_dataset("units/unit_layer")) return;
    const auto n_units = h5::numel(root.info("units/unit_layer").shape);
    for (const auto& name : root.group("plans").children()) {
      const h5::Group g = root.group("plans/" + name);
      if (!g.has_dataset("first_unit") || !g.has_dataset("last_unit")) continue;
      const auto n_parts = h5::numel(g.info("first_unit").shape);
      for (const auto& d : plan_partition_datasets())
        if (g.has_dataset(d) && h5::numel(g.info(d).shape) != n_parts)
          problems.push_back(fmt::format("plans/{}/{} has {} entries but first_unit has {}",
                                         name,
                                         d,
                                         h5::numel(g.info(d).shape),
                                         n_parts));
      const auto first = g.read_as_double("first_unit");
      const auto last = g.read_as_double("last_unit");
      double expect = 0;
      for (std::size_t k = 0; k < first.size() && k < last.size(); ++k) {
        if (first[k] != expect || last[k] < first[k]) {
          problems.push_back(
              fmt::format("plans/{}: partition {} covers units {}..{}, expected to start at {}",
                          name,
                          k,
                          first[k],
                          last[k],
                          expect));
          break;
        }
        expect = last[k] + 1;
      }
      if (static_cast<std::int64_t>(expect) != n_units)
        problems.push_back(
            fmt::format("plans/{}: partitions cover {} units of {}", name, expect, n_units));
    }
  };
  reg.add(std::move(s));

  // mobile-plan (docs/formats/mobile-plan.md).
  core::Schema m;
  m.kind = "mobile-plan";
  m.min_version = 1;
  m.max_version = kMobilePlanFormatVersion;
  m.doc = "docs/formats/mobile-plan.md";
  m.params = {{"model", AttrType::string},
              {"device", AttrType::string},
              {"resolution", AttrType::integer},
              {"steps", AttrType::integer},
              {"cfg_distilled", AttrType::integer},
              {"wbits", AttrType::integer}};
  for (const char* d : {"params", "calls"}) m.datasets.push_back({std::string("components/") + d, ints, 1});
  for (const char* d : {"weight_bytes", "act_peak_bytes", "flops_per_call", "ms_per_call",
                        "total_ms", "load_ms"})
    m.datasets.push_back({std::string("components/") + d, reals, 1});
  m.datasets.push_back({"schedules/peak_bytes", reals, 1});
  m.datasets.push_back({"schedules/latency_ms", reals, 1});
  m.check = [](const core::ArtifactReader& r, std::vector<std::string>& problems) {
    const h5::Group root = r.root();
    if (!root.has_dataset("components/total_ms") || !root.has_dataset("schedules/peak_bytes"))
      return;
    if (h5::numel(root.info("components/total_ms").shape) != 3)
      problems.push_back("components/total_ms must have 3 entries (text_encoder, unet, vae_decoder)");
    const auto peak = root.read_as_double("schedules/peak_bytes");
    // Sequential loading never needs more memory than keeping everything resident.
    if (peak.size() == 3 && peak[1] > peak[0])
      problems.push_back("schedules: the sequential peak exceeds the all-resident peak");
  };
  reg.add(std::move(m));
}

}  // namespace kvlab::pim
