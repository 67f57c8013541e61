// The analytical cost simulator of pim-compile: the cost of one partition (a contiguous unit
// range) and of a whole partitioning, for a batch of B samples. Formulas: docs/pim-compile.md.
//
// Per partition p (weights replaced from DRAM before it runs, for every batch):
//   load    T = max(ceil(rows_written / write_ports) * t_row, weight_bytes / BW)
//           E = rows_written * e_row + weight_bits * e_dram
//   in/out  activations crossing the partition's boundary: each tensor produced earlier and read
//           here is read once (skip connections included); each tensor produced here and read
//           later, or a network output, is written once.  T = bytes / BW, E = bits * e_dram
//   compute layer-pipelined: T = fill + (B - 1) * max_stage, fill = longest stage path;
//           stage = positions * t_mvm / replication (weight layers) or bytes / vector rate
//   spill   internal tensors get line buffers in the on-chip buffer, smallest first; a tensor
//           whose line buffer does not fit goes through DRAM (written and read back)
//   static  chip leakage * T
// A single partition holding the whole network keeps its weights: no reloads in steady state
// (the one-time programming is reported apart). The cost of a partitioning is the sum over
// partitions, so the DP over contiguous ranges is exact under this model.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kvlab/pim/hardware.hpp"
#include "kvlab/pim/mapping.hpp"

namespace kvlab::pim {

enum class Objective { latency, energy, edp };
const char* objective_name(Objective o);

struct CostOptions {
  std::int64_t batch = 16;  ///< samples per weight reload (write amortisation)
  Objective objective = Objective::latency;
  bool replicate = false;  ///< fill leftover crossbars with copies of bottleneck layers
};

/// Cost of one partition (unit range [first, last], inclusive) for one batch.
struct PartCost {
  int first = 0, last = 0;
  bool resident = false;        ///< the whole network, weights kept on chip
  std::int64_t xbars = 0;       ///< crossbars used, replicas included
  std::int64_t write_rows = 0;  ///< crossbar rows programmed (write instructions)
  double weight_bytes = 0;      ///< weights read from DRAM
  double act_in_bytes = 0, act_out_bytes = 0, spill_bytes = 0;
  double t_load_ns = 0, t_in_ns = 0, t_compute_ns = 0, t_spill_ns = 0, t_out_ns = 0;
  double e_write_pj = 0, e_weight_dram_pj = 0, e_mvm_pj = 0, e_vec_pj = 0, e_act_dram_pj = 0,
         e_static_pj = 0;
  double t_program_ns = 0, e_program_pj = 0;  ///< one-time programming of a resident partition
  double bottleneck_ns = 0;                   ///< slowest pipeline stage per sample
  std::vector<int> rep;                       ///< replication factor per unit (size last-first+1)

  double time_ns() const { return t_load_ns + t_in_ns + t_compute_ns + t_spill_ns + t_out_ns; }
  double energy_pj() const {
    return e_write_pj + e_weight_dram_pj + e_mvm_pj + e_vec_pj + e_act_dram_pj + e_static_pj;
  }
};

/// Totals of a partitioning.
struct Totals {
  int partitions = 0;
  std::int64_t reloads = 0;  ///< partition weight loads per batch (0 when resident)
  double batch_ns = 0, batch_pj = 0;
  double throughput = 0;  ///< inferences per second
  double ns_per_inf = 0, pj_per_inf = 0;
  double edp = 0;  ///< per inference: pj_per_inf * ns_per_inf (pJ*ns)
  double dram_weight_bytes = 0, dram_act_bytes = 0;  ///< per batch (act includes spills)
  double write_rows = 0;                             ///< per batch
  double mean_util = 0;  ///< mean over partitions of crossbars used / capacity
  double t_load_ns = 0, t_act_ns = 0, t_compute_ns = 0;
  double e_write_pj = 0, e_weight_dram_pj = 0, e_mvm_pj = 0, e_vec_pj = 0, e_act_dram_pj = 0,
         e_static_pj = 0;
  double t_program_ns = 0;
  double objective = 0;  ///< the value the searches minimise
};

/// Partition costs of one mapped network on one chip, with the validity map (the feasible unit
/// ranges) and a cache of range costs shared by every search.
class CostModel {
 public:
  CostModel(const Mapping& m, const HwConfig& hw, const CostOptions& opt);
  ~CostModel();
  CostModel(const CostModel&) = delete;
  CostModel& operator=(const CostModel&) = delete;

  int units() const { return static_cast<int>(map_.units.size()); }
  const Mapping& mapping() const { return map_; }
  const HwConfig& hw() const { return hw_; }
  const CostOptions& options() const { return opt_; }

  /// Validity map: the last unit that can share a partition starting at unit i (crossbars of
  /// units i..max_end(i) fit the chip). Monotone non-decreasing in i.
  int max_end(int i) const { return max_end_[static_cast<std::size_t>(i)]; }
  bool valid(int i, int j) const { return i <= j && j <= max_end(i); }
  /// The whole network fits one partition.
  bool fits_whole() const { return units() > 0 && max_end(0) == units() - 1; }

  /// Full cost of range [i, j] (valid). `resident`: whole network kept on chip.
  PartCost part(int i, int j, bool resident = false) const;
  /// (time, energy) of range [i, j] as a non-resident partition, cached.
  std::pair<double, double> part_te(int i, int j) const;
  /// (batch time, batch energy) of a partitioning from the cache (the resident rule applied).
  std::pair<double, double> total_te(const std::vector<int>& ends) const;
  /// Objective of a partitioning (cached ranges): what the searches minimise.
  double objective_of(const std::vector<int>& ends) const {
    const auto te = total_te(ends);
    return objective(te.first, te.second);
  }

  /// Totals of a partitioning given as the last unit of each partition (strictly increasing,
  /// ending at units()-1). Throws std::invalid_argument when a range is not valid.
  Totals totals(const std::vector<int>& ends) const;
  /// Objective value from batch time and energy.
  double objective(double t_ns, double e_pj) const;
  /// Per-partition details of a partitioning.
  std::vector<PartCost> parts(const std::vector<int>& ends) const;
  std::int64_t evaluations() const { return evaluations_; }

 private:
  PartCost compute(int i, int j, bool resident, const std::vector<int>* rep) const;
  void replicate(PartCost& pc, bool resident) const;

  const Mapping& map_;
  HwConfig hw_;
  CostOptions opt_;
  std::vector<int> max_end_;
  struct Cache;
  std::unique_ptr<Cache> cache_;
  mutable std::int64_t evaluations_ = 0;
};

}  // namespace kvlab::pim
