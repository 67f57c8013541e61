// The pim-plan artifact: written atomically, valid against its schema, and documented key by key
// in docs/formats/pim-plan.md.
#include <doctest/doctest.h>

#include <filesystem>

#include "../test_util.hpp"
#include "kvlab/core/artifact.hpp"
#include "kvlab/core/schema.hpp"
#include "kvlab/pim/plan_io.hpp"
#include "kvlab/pim/schemas.hpp"
#include "kvlab/pim/zoo.hpp"

using namespace kvlab;

namespace {

pim::CompileResult small_result() {
  core::NullProgress np;
  pim::HwConfig hw = pim::default_hw();
  hw.cores = 4;
  hw.name = "compass-small";
  pim::CompileOptions opt;
  opt.searches = {"layerwise", "greedy", "dp", "ga"};
  opt.ga.generations = 20;
  return pim::compile(pim::zoo_net("squeezenet"), hw, opt, np);
}

}  // namespace

TEST_CASE("write_plan writes a valid pim-plan artifact") {
  const auto r = small_result();
  const auto out = test::scratch("plan.h5");
  std::filesystem::remove(out);
  core::Provenance prov;
  prov.command = "kvlab pim-compile --net squeezenet";
  pim::write_plan(out, r, prov);
  CHECK(core::leftover_partials(out).empty());
  const auto rd = core::ArtifactReader::open(out, "pim-plan", 1, pim::kPlanFormatVersion);
  core::SchemaRegistry reg;
  pim::register_schemas(reg);
  const auto problems = core::validate(rd, reg);
  CHECK(problems.empty());
  for (const auto& p : problems) MESSAGE(p);
  CHECK(rd.params().attr_string("network") == "squeezenet");
  CHECK(rd.params().attr_int("batch") == 16);
  for (const auto& s : r.results) {
    const auto g = rd.root().group("plans/" + s.search);
    CHECK(g.attr_int("partitions") == s.totals.partitions);
    CHECK(g.attr_double("throughput") == doctest::Approx(s.totals.throughput));
    const auto last = g.read_as_double("last_unit");
    REQUIRE(!last.empty());
    CHECK(last.back() == static_cast<double>(r.mapping.units.size() - 1));
    const auto t0 = g.read_as_double("t_start_ns");
    CHECK(t0.front() == 0.0);
  }
  CHECK(rd.root().group("hw").attr_double("cores") == 4.0);
  CHECK(rd.root().group("hw/sources").attr_string("cores").size() > 10);
}

TEST_CASE("a broken plan fails validation") {
  const auto r = small_result();
  const auto out = test::scratch("plan-broken.h5");
  std::filesystem::remove(out);
  pim::write_plan(out, r, {});
  // Rewrite one plan's last_unit so partitions no longer cover the units.
  {
    hid_t fid = H5Fopen(out.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    REQUIRE(fid >= 0);
    hid_t ds = H5Dopen2(fid, "/plans/greedy/last_unit", H5P_DEFAULT);
    REQUIRE(ds >= 0);
    std::vector<std::int64_t> v(static_cast<std::size_t>(r.find("greedy")->totals.partitions));
    H5Dread(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data());
    v.back() -= 1;
    H5Dwrite(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data());
    H5Dclose(ds);
    H5Fclose(fid);
  }
  const auto rd = core::ArtifactReader::open(out, "pim-plan", 1, pim::kPlanFormatVersion);
  core::SchemaRegistry reg;
  pim::register_schemas(reg);
  const auto problems = core::validate(rd, reg);
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].find("plans/greedy: partitions cover") != std::string::npos);
}

TEST_CASE("docs/formats/pim-plan.md lists every key the writer emits") {
  const std::string doc = test::read_file(test::source_path("docs/formats/pim-plan.md"));
  REQUIRE_FALSE(doc.empty());
  std::vector<std::string> keys = pim::plan_partition_datasets();
  for (const auto& a : pim::plan_total_attrs()) keys.push_back(a);
  for (const char* k : {"network",
                        "network_source",
                        "hw",
                        "batch",
                        "objective",
                        "replicate",
                        "seed",
                        "searches",
                        "ga_population",
                        "ga_generations",
                        "ga_patience",
                        "ga_crossover",
                        "ga_mutation",
                        "layer_names",
                        "layer_ops",
                        "layer_xbars",
                        "layer_weights",
                        "layer_positions",
                        "layer_out_numel",
                        "unit_layer",
                        "unit_slice",
                        "unit_xbars",
                        "unit_write_rows",
                        "unit_t_ns",
                        "unit_weight_bytes",
                        "unit_out_bytes",
                        "unit_partition",
                        "unit_replication",
                        "partition_layers",
                        "requested",
                        "capacity",
                        "description",
                        "sources"})
    keys.push_back(k);
  for (const auto& k : keys) {
    CAPTURE(k);
    CHECK(doc.find("`" + k + "`") != std::string::npos);
  }
}
