// The pim-plan artifact (docs/formats/pim-plan.md): the network and chip, the mapping, and per
// search the partitioning with per-partition crossbars, writes, DRAM bytes, and the time and
// energy breakdown (what scripts/plot-pim draws).
//
//   /params                       network, network_source, hw, batch, objective, replicate, seed,
//                                 searches, ga_* (attrs)
//   /hw                           one attr per chip field; /hw/sources: one string attr per field
//   /network                      attrs layer_names, layer_ops; datasets layer_xbars,
//                                 layer_weights, layer_positions, layer_out_numel [layer]
//   /units                        unit_layer, unit_slice, unit_xbars, unit_write_rows, unit_t_ns,
//                                 unit_weight_bytes, unit_out_bytes [unit]
//   /plans/<search>               attrs: totals (throughput, batch_ns, edp, ratios, ...);
//                                 datasets [partition]: first_unit, last_unit, xbars, utilization,
//                                 write_rows, weight_bytes, act_in_bytes, act_out_bytes,
//                                 spill_bytes, t_start_ns, t_load_ns, t_in_ns, t_compute_ns,
//                                 t_spill_ns, t_out_ns, e_write_pj, e_weight_dram_pj, e_mvm_pj,
//                                 e_vec_pj, e_act_dram_pj, e_static_pj, bottleneck_ns;
//                                 [unit]: unit_partition, unit_replication
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "kvlab/core/artifact.hpp"
#include "kvlab/pim/compile.hpp"

namespace kvlab::pim {

inline constexpr std::uint32_t kPlanFormatVersion = 1;
inline constexpr std::uint32_t kPlanFormatMinor = 0;

/// Per-partition dataset names under /plans/<search> (the schema and the docs list the same).
const std::vector<std::string>& plan_partition_datasets();
/// Totals attributes on /plans/<search>.
const std::vector<std::string>& plan_total_attrs();

/// Writes the artifact atomically (.partial + rename).
void write_plan(const std::filesystem::path& out,
                const CompileResult& r,
                const core::Provenance& prov);

}  // namespace kvlab::pim
