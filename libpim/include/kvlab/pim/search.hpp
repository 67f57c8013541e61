// Partitioning searches over a CostModel. A partitioning is the list of each partition's last
// unit (contiguous ranges in the topological unit order).
//   layerwise  one weight layer (or slice) per partition; non-weight layers join their producer's
//   greedy     fill the chip in order: cut before the first weight unit that does not fit
//   dp         exact minimum of the objective over all valid contiguous partitionings (Pareto DP
//              for edp; not in the COMPASS paper, a correctness oracle)
//   ga         COMPASS-style genetic algorithm: validity map, repair, four mutation operators,
//              one-point crossover, tournament selection, elitism; seeded with greedy and
//              layerwise (so it never returns worse than greedy). Operators are kvlab's reading
//              of the paper's summary [unverified]: see docs/pim-compile.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvlab/core/progress.hpp"
#include "kvlab/pim/cost.hpp"

namespace kvlab::pim {

struct GaOptions {
  int population = 64;
  int generations = 200;
  int patience = 60;  ///< stop after this many generations without improvement (0: never)
  int tournament = 3;
  int elite = 2;
  double crossover = 0.9;  ///< probability a child is a crossover of two parents
  double mutation = 0.5;   ///< probability a child is mutated (one operator)
  std::uint64_t seed = 0;
};

struct SearchOutcome {
  std::vector<int> ends;
  bool exact = false;            ///< dp: no Pareto front was thinned
  int generations_run = 0;       ///< ga
  std::int64_t evaluations = 0;  ///< partitionings (ga) or ranges (dp) evaluated
};

SearchOutcome search_layerwise(const CostModel& cm);
SearchOutcome search_greedy(const CostModel& cm);
SearchOutcome search_dp(const CostModel& cm);
SearchOutcome search_ga(const CostModel& cm, const GaOptions& opt, core::Progress& progress);

/// Names accepted by --search: layerwise, greedy, dp, ga.
const std::vector<std::string>& search_names();

/// Checks that `ends` is a valid partitioning of cm (every range fits the chip).
bool is_valid_partitioning(const CostModel& cm, const std::vector<int>& ends);

}  // namespace kvlab::pim
