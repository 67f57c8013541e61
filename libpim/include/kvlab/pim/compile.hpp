// pim-compile's library entry point: map a network onto a crossbar chip, run the requested
// partitioning searches (layerwise is always run: it is the baseline of every ratio), and
// summarise them as a table or JSON. The front end only binds options and prints.
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "kvlab/core/netdesc.hpp"
#include "kvlab/core/progress.hpp"
#include "kvlab/pim/cost.hpp"
#include "kvlab/pim/hardware.hpp"
#include "kvlab/pim/mapping.hpp"
#include "kvlab/pim/search.hpp"

namespace kvlab::pim {

struct CompileOptions {
  CostOptions cost;
  GaOptions ga;
  /// Searches to run, in order (names from search_names()); layerwise is added first if absent.
  std::vector<std::string> searches = {"ga"};
};

struct SearchResult {
  std::string search;
  SearchOutcome outcome;
  Totals totals;
  std::vector<PartCost> parts;
  double compile_ms = 0;  ///< wall time of this search, cost-model cache included
  bool requested = true;  ///< false for a layerwise baseline the user did not ask for
};

struct CompileResult {
  core::NetDesc net;
  HwConfig hw;
  Mapping mapping;
  CompileOptions opt;
  std::vector<SearchResult> results;  ///< layerwise first
  double map_ms = 0;

  const SearchResult* find(const std::string& search) const;
  const SearchResult& baseline() const { return results.front(); }
};

/// Throws MappingError (exit 2) when the network cannot be mapped onto the chip, UsageError for
/// an unknown search name or a batch < 1.
CompileResult compile(const core::NetDesc& net,
                      const HwConfig& hw,
                      const CompileOptions& opt,
                      core::Progress& progress);

/// Human-readable summary: the network, the chip and one row per search with the ratios to
/// layerwise in the paper's "x throughput / x EDP" form.
std::string format_summary(const CompileResult& r);
/// The same as JSON (for --json).
nlohmann::json summary_json(const CompileResult& r);

/// "1,234,567"
std::string thousands(std::int64_t v);

}  // namespace kvlab::pim
