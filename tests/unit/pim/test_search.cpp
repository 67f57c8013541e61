// Partitioning searches and the cost model: the ordering dp <= ga <= greedy <= layerwise on
// chain networks, exactness of dp against brute force, the resident (fits-on-chip) case, GA
// determinism, and the basic invariants of the cost model.
#include <doctest/doctest.h>

#include <functional>

#include "kvlab/core/progress.hpp"
#include "kvlab/pim/compile.hpp"
#include "kvlab/pim/zoo.hpp"

using namespace kvlab;

namespace {

pim::HwConfig chip(std::int64_t cores) {
  pim::HwConfig hw = pim::default_hw();
  hw.cores = cores;
  return hw;
}

// A synthetic chain: conv/relu blocks with pools, sized so a few share a small chip.
core::NetDesc chain(int blocks) {
  core::NetBuilder b("chain");
  b.input("x", {16, 32, 32});
  for (int k = 0; k < blocks; ++k) {
    b.conv("conv" + std::to_string(k), -1, 32 + 16 * (k % 4), 3, 1, 1);
    b.act("relu" + std::to_string(k), -1);
    if (k % 3 == 2) b.pool("pool" + std::to_string(k), -1, "max", 2, 2);
  }
  b.global_pool("gap", -1);
  b.reshape("flat", -1, "flatten");
  b.fc("fc", -1, 10);
  return b.finish();
}

struct Case {
  std::string name;
  core::NetDesc net;
  pim::HwConfig hw;
};

std::vector<Case> chain_cases() {
  return {{"vgg16/256", pim::zoo_net("vgg16"), chip(4)},
          {"vgg16/8704", pim::zoo_net("vgg16"), chip(136)},
          {"alexnet/256", pim::zoo_net("alexnet"), chip(4)},
          {"alexnet/1024", pim::zoo_net("alexnet"), chip(16)},
          {"chain9/64", chain(9), chip(1)},
          {"chain12/128", chain(12), chip(2)}};
}

}  // namespace

TEST_CASE("cost(dp) <= cost(ga) <= cost(greedy) <= cost(layerwise) on chain networks") {
  core::NullProgress np;
  for (const auto& c : chain_cases()) {
    for (auto obj : {pim::Objective::latency, pim::Objective::energy, pim::Objective::edp}) {
      CAPTURE(c.name);
      CAPTURE(pim::objective_name(obj));
      const pim::Mapping m = pim::map_network(c.net, c.hw);
      pim::CostOptions co;
      co.objective = obj;
      const pim::CostModel cm(m, c.hw, co);
      pim::GaOptions go;
      go.generations = 60;
      const auto lw = pim::search_layerwise(cm), gr = pim::search_greedy(cm),
                 dp = pim::search_dp(cm), ga = pim::search_ga(cm, go, np);
      for (const auto* o : {&lw, &gr, &dp, &ga}) CHECK(pim::is_valid_partitioning(cm, o->ends));
      const double f_lw = cm.objective_of(lw.ends), f_gr = cm.objective_of(gr.ends),
                   f_dp = cm.objective_of(dp.ends), f_ga = cm.objective_of(ga.ends);
      const double eps = 1e-9 * f_lw;
      CHECK(dp.exact);
      CHECK(f_dp <= f_ga + eps);
      CHECK(f_ga <= f_gr + eps);
      CHECK(f_gr <= f_lw + eps);
      // totals() (uncached, per-partition detail) agrees with the cached objective.
      CHECK(cm.totals(dp.ends).objective == doctest::Approx(f_dp).epsilon(1e-12));
    }
  }
}

TEST_CASE("dp is exact: brute force over every partitioning of small networks") {
  for (const auto& [net, hw] :
       {std::pair{chain(5), chip(1)}, std::pair{pim::zoo_net("squeezenet"), chip(1)}}) {
    const pim::Mapping m = pim::map_network(net, hw);
    for (auto obj : {pim::Objective::latency, pim::Objective::energy, pim::Objective::edp}) {
      pim::CostOptions co;
      co.objective = obj;
      co.replicate = obj == pim::Objective::latency;  // replication keeps ranges independent
      const pim::CostModel cm(m, hw, co);
      const int n = cm.units();
      // Exhaustive search over cut sets restricted to the first 16 unit boundaries, the rest
      // fixed greedily, would not be exhaustive; so enumerate only when n is small, else skip.
      if (n > 18) {
        // squeezenet on 64 crossbars has ~66 units: check dp against every GA seed instead.
        core::NullProgress np;
        const auto dp = pim::search_dp(cm);
        pim::GaOptions go;
        go.generations = 100;
        for (std::uint64_t seed : {1u, 2u, 3u}) {
          go.seed = seed;
          CHECK(cm.objective_of(dp.ends) <=
                cm.objective_of(pim::search_ga(cm, go, np).ends) * (1 + 1e-12));
        }
        continue;
      }
      double best = 1e300;
      for (std::uint32_t mask = 0; mask < (1u << (n - 1)); ++mask) {
        std::vector<int> ends;
        for (int k = 0; k < n - 1; ++k)
          if (mask >> k & 1) ends.push_back(k);
        ends.push_back(n - 1);
        if (!pim::is_valid_partitioning(cm, ends)) continue;
        best = std::min(best, cm.objective_of(ends));
      }
      CHECK(cm.objective_of(pim::search_dp(cm).ends) == doctest::Approx(best).epsilon(1e-12));
    }
  }
}

TEST_CASE("a chip large enough for everything gives one partition and no reloads") {
  core::NullProgress np;
  for (const char* name : {"resnet18", "squeezenet", "vgg16"}) {
    CAPTURE(name);
    const auto net = pim::zoo_net(name);
    const pim::HwConfig hw = chip(1000);  // 64,000 crossbars > VGG16's 33,804
    pim::CompileOptions opt;
    opt.searches = {"greedy", "dp", "ga"};
    const auto r = pim::compile(net, hw, opt, np);
    for (const auto& s : r.results) {
      CAPTURE(s.search);
      if (s.search == "layerwise") {
        CHECK(s.totals.partitions == static_cast<int>(r.net.weight_layer_count()));
        continue;
      }
      CHECK(s.totals.partitions == 1);
      CHECK(s.totals.reloads == 0);
      CHECK(s.totals.write_rows == 0);
      CHECK(s.totals.dram_weight_bytes == 0);
      CHECK(s.totals.t_load_ns == 0);
      CHECK(s.totals.t_program_ns > 0);  // reported apart, once
      CHECK(s.parts.at(0).resident);
    }
  }
}

TEST_CASE("same seed, same plan; the GA never loses to its greedy seed") {
  core::NullProgress np;
  const auto net = pim::zoo_net("resnet18");
  const auto hw = chip(4);
  const pim::Mapping m = pim::map_network(net, hw);
  pim::CostOptions co;
  co.objective = pim::Objective::edp;
  co.replicate = true;
  const pim::CostModel cm(m, hw, co);
  pim::GaOptions go;
  go.seed = 42;
  const auto a = pim::search_ga(cm, go, np), b = pim::search_ga(cm, go, np);
  CHECK(a.ends == b.ends);
  CHECK(a.generations_run == b.generations_run);
  CHECK(cm.objective_of(a.ends) == cm.objective_of(b.ends));
  CHECK(cm.objective_of(a.ends) <= cm.objective_of(pim::search_greedy(cm).ends));
  go.seed = 43;
  CHECK(pim::is_valid_partitioning(cm, pim::search_ga(cm, go, np).ends));
}

TEST_CASE("cost model invariants") {
  const auto net = pim::zoo_net("squeezenet");
  const auto hw = chip(4);
  const pim::Mapping m = pim::map_network(net, hw);
  pim::CostOptions co;
  co.batch = 8;
  const pim::CostModel cm(m, hw, co);
  // Validity map: monotone, and every range it admits fits the chip.
  for (int i = 0; i < cm.units(); ++i) {
    CHECK(cm.max_end(i) >= i);
    if (i > 0) CHECK(cm.max_end(i) >= cm.max_end(i - 1));
    std::int64_t x = 0;
    for (int u = i; u <= cm.max_end(i); ++u) x += m.units[static_cast<std::size_t>(u)].xbars;
    CHECK(x <= m.capacity);
    if (cm.max_end(i) + 1 < cm.units())
      CHECK(x + m.units[static_cast<std::size_t>(cm.max_end(i) + 1)].xbars > m.capacity);
  }
  const auto ends = pim::search_layerwise(cm).ends;
  const auto t = cm.totals(ends);
  const auto parts = cm.parts(ends);
  double w = 0, mvm = 0;
  std::int64_t rows = 0;
  for (const auto& p : parts) {
    w += p.weight_bytes;
    mvm += p.e_mvm_pj;
    rows += p.write_rows;
  }
  // Every weight is loaded once per batch; MVM energy is the same for every partitioning.
  CHECK(w == doctest::Approx(static_cast<double>(net.weight_count())));
  std::int64_t want_rows = 0;
  for (const auto& l : m.layers) want_rows += l.write_rows;
  CHECK(rows == want_rows);
  const auto g = cm.totals(pim::search_greedy(cm).ends);
  CHECK(g.e_mvm_pj == doctest::Approx(mvm));
  CHECK(t.throughput == doctest::Approx(8.0 / t.batch_ns * 1e9));
  CHECK(t.edp == doctest::Approx(t.pj_per_inf * t.ns_per_inf));
  // A bigger batch amortises the same weight loads over more samples.
  pim::CostOptions co2 = co;
  co2.batch = 64;
  const pim::CostModel cm2(m, hw, co2);
  CHECK(cm2.totals(ends).t_load_ns == doctest::Approx(t.t_load_ns));
  CHECK(cm2.totals(ends).throughput > t.throughput);
}

TEST_CASE("compile rejects unknown searches and bad batches") {
  core::NullProgress np;
  pim::CompileOptions opt;
  opt.searches = {"annealing"};
  CHECK_THROWS_WITH_AS(pim::compile(pim::zoo_net("squeezenet"), chip(4), opt, np),
                       doctest::Contains("unknown search \"annealing\""),
                       UsageError);
  opt.searches = {"ga"};
  opt.cost.batch = 0;
  CHECK_THROWS_AS(pim::compile(pim::zoo_net("squeezenet"), chip(4), opt, np), UsageError);
  pim::HwConfig hw = chip(0);
  opt.cost.batch = 1;
  CHECK_THROWS_WITH_AS(pim::compile(pim::zoo_net("squeezenet"), hw, opt, np),
                       doctest::Contains("zero crossbars"),
                       FormatError);
}
