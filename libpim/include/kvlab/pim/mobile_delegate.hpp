// mobile-plan delegate: checks every op of a component graph against a mobile runtime's target
// profile (supported op kinds, tensor rank, dtypes; data/mobile/targets/*.json), counts the
// accelerator/CPU partitions, and applies the rewrite passes (GroupNorm to a 4-D form, GELU to a
// stable form, attention reshapes at rank <= 4). Format of a profile: docs/formats/mobile-target.md.
#pragma once

#include <filesystem>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "kvlab/core/netdesc.hpp"

namespace kvlab::pim {

struct TargetProfile {
  std::string name;
  std::string description;
  int max_rank = 4;                           ///< highest tensor rank (with batch) on the accelerator
  std::vector<std::string> ops;               ///< supported op keys (op_key())
  std::vector<std::string> activation_dtypes;  ///< fp16, fp32, int8, int16
  std::vector<std::string> weight_dtypes;
  std::map<std::string, std::string> notes;   ///< op key -> why (un)supported, with its source
  std::vector<std::string> sources;
  bool supports(const std::string& key) const;
};

TargetProfile read_target_profile(const std::filesystem::path& path);

struct DelegateOptions {
  std::string act_dtype = "fp16";
  int wbits = 16;  ///< weight bits: 16 (fp16) or 8 (int8)
  /// GELU replacement: "tanh-clamped" (tanh approximation with its argument clamped, |err| ~1e-3)
  /// or "sigmoid" (x * sigmoid(1.702 x), |err| ~2e-2).
  std::string gelu = "tanh-clamped";
};

struct OpVerdict {
  int layer = 0;
  bool accel = true;
  std::string reason;  ///< why it falls back to the CPU (empty when on the accelerator)
};

struct DelegateReport {
  std::string component;
  int ops = 0;          ///< ops checked (graph inputs without a gather are not ops)
  int accel_ops = 0;
  int cpu_ops = 0;
  int partitions = 0;   ///< maximal runs of consecutive ops on one side (accelerator or CPU)
  int accel_partitions = 0;
  int transitions = 0;  ///< accelerator <-> CPU switches along the topological order
  std::map<std::string, int> cpu_by_reason;
  std::vector<OpVerdict> verdicts;
};

/// Checks every op of `net` against the profile.
DelegateReport check_delegate(const core::NetDesc& net,
                              const TargetProfile& target,
                              const DelegateOptions& opt,
                              const std::string& component);

struct RewriteStats {
  int groupnorm = 0;   ///< GroupNorm ops rewritten to the 4-D form
  int gelu = 0;        ///< erf GELUs replaced
  int attention_checked = 0;
  int attention_rewritten = 0;  ///< attention reshapes above max_rank rewritten (kvlab's graphs: 0)
};

/// The rewrite passes. GroupNorm [C,H,W] becomes reshape [G, C/G, H*W] -> norm fn=group4d
/// (normalise over the last two axes, per-channel affine) -> reshape [C,H,W]: rank 4 with the
/// batch instead of the 5-D [N,G,C/G,H,W] lowering. GELU(erf) becomes opt.gelu. Attention
/// reshapes/transposes lowered above target.max_rank are split into rank-4 steps.
core::NetDesc rewrite_for_target(const core::NetDesc& net,
                                 const TargetProfile& target,
                                 const DelegateOptions& opt,
                                 RewriteStats& stats);

std::string format_delegate(const std::vector<DelegateReport>& before,
                            const std::vector<DelegateReport>& after,
                            const std::vector<RewriteStats>& stats,
                            const TargetProfile& target);
nlohmann::json delegate_json(const std::vector<DelegateReport>& before,
                             const std::vector<DelegateReport>& after,
                             const std::vector<RewriteStats>& stats,
                             const TargetProfile& target);

}  // namespace kvlab::pim
