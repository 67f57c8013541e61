// mobile-plan plan: peak memory of the all-resident, sequential (load/unload, the mobile SD
// paper's pipelined loading) and prefetching schedules, and a per-op roofline latency of every
// component on a device profile (data/mobile/devices/*.json), beside the published reference rows
// (data/mobile/reference-rows.json) labelled as reported. Artifact: docs/formats/mobile-plan.md.
#pragma once

#include <filesystem>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "kvlab/core/artifact.hpp"
#include "kvlab/pim/mobile_graph.hpp"

namespace kvlab::pim {

struct DeviceProfile {
  std::string name;
  std::string description;
  std::string accelerator;
  double peak_fp16_tflops = 0;   ///< accelerator fp16 peak (dense)
  double dram_gbps = 0;          ///< DRAM bandwidth, GB/s
  double storage_gbps = 0;       ///< model-file read bandwidth (UFS/NVMe), GB/s
  double ram_gb = 0;
  double compute_efficiency = 0.5;  ///< fraction of peak FLOPs a real kernel reaches
  double memory_efficiency = 0.7;   ///< fraction of DRAM bandwidth a real kernel reaches
  double app_memory_fraction = 0.5; ///< share of RAM an app may use before being killed
  std::vector<std::string> sources;
};

DeviceProfile read_device_profile(const std::filesystem::path& path);

struct ReferenceRow {
  std::string source, model, device, runtime, precision, what;
  int steps = 0;  ///< 0: not applicable / not stated
  double value = 0;
  std::string unit;    ///< "s", "ms", "ms/step", "MB"
  std::string status;  ///< "reported" (published) or "reported, unverified"
  std::string url;
};

std::vector<ReferenceRow> read_reference_rows(const std::filesystem::path& path);

struct PlanOptions {
  int steps = 20;
  bool cfg_distilled = false;  ///< one UNet call per step instead of two (CFG distillation)
  int wbits = 16;              ///< 16: fp16 weights; 8: int8 weights (fp16 activations)
  double prune_frac = 0;       ///< fraction of UNet weights pruned (weights and FLOPs scale)
};

struct ComponentPlan {
  std::string component;
  std::int64_t params = 0;
  double weight_bytes = 0;
  double act_peak_bytes = 0;  ///< peak live activations while it runs (fp16, liveness analysis)
  double flops = 0;           ///< per call
  double ms_per_call = 0;     ///< roofline
  double compute_bound_share = 0;  ///< fraction of its ms in compute-bound ops
  int calls = 0;
  double total_ms = 0;
  double load_ms = 0;  ///< weights from storage
};

struct SchedulePlan {
  std::string name;  ///< all-resident | sequential | prefetch
  double peak_bytes = 0;
  double latency_ms = 0;  ///< per image, including the loads this schedule puts on the path
  std::string note;
};

struct MobilePlan {
  std::string model;
  DeviceProfile device;
  PlanOptions opt;
  int resolution = 0;
  std::vector<ComponentPlan> components;
  std::vector<SchedulePlan> schedules;
  double compute_ms = 0;  ///< sum of component totals (no loading)
  double unet_share = 0;
  std::vector<ReferenceRow> references;
};

/// Peak bytes of simultaneously live op outputs when `net` runs in its list order (an output is
/// live from its producer until its last consumer), at `act_bytes` per element.
double live_activation_peak(const core::NetDesc& net, int act_bytes);
/// Roofline time of one op in ms: max(FLOPs / effective peak, bytes moved / effective bandwidth).
double op_roofline_ms(const core::NetDesc& net, int layer, const DeviceProfile& d, int wbits);

MobilePlan plan_pipeline(const PipelineGraph& g,
                         const DeviceProfile& device,
                         const PlanOptions& opt,
                         std::vector<ReferenceRow> references);

std::string format_plan(const MobilePlan& p);
nlohmann::json plan_json(const MobilePlan& p);

inline constexpr std::uint32_t kMobilePlanFormatVersion = 1;
inline constexpr std::uint32_t kMobilePlanFormatMinor = 0;
/// Writes a mobile-plan artifact (atomic). Layout: docs/formats/mobile-plan.md.
void write_mobile_plan(const std::filesystem::path& out,
                       const MobilePlan& p,
                       const core::Provenance& prov);

}  // namespace kvlab::pim
