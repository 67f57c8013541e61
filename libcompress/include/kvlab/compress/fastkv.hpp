// FastKV (Jo et al., arXiv 2502.01068), as the official code at HEAD (github.com/dongwonjo/FastKV,
// baselines/fastkv/utils.py FastKVCluster.update_kv + compress_fastkv, llama_model.py) does it, at
// prefill:
//  - every layer up to the TSP layer attends over the whole prompt and then keeps, per KV head,
//    the top (budget - w) tokens by the last w queries' attention (softmax over all keys, summed
//    over the window, pooled, summed over the GQA group) plus the last w tokens (GQA-aware
//    compression; memory is freed);
//  - at the TSP layer the same scores summed over KV heads pick the tsp_length tokens (last w
//    always in) whose hidden states and position ids alone go on to the later layers
//    (token-selective propagation, CachePolicy::select_tokens);
//  - later layers compress their (shorter) caches the same way.
// Decoding is plain attention over the compressed caches. Method page:
// docs/kv-methods-rpc-fastkv.md.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>

#include "kvlab/llm/kv_cache.hpp"

namespace kvlab::compress {

/// FastKV settings. Defaults are the official eval defaults at HEAD (eval/run_longbench.py and the
/// shipped scripts/eval_*.sh, which use proportional mode). Suggested kv-eval flags in brackets.
struct FastKVOptions {
  /// The TSP layer (0-based; official tsp_idx 15 for the 32-layer Llama-3.1-8B, i.e. the middle).
  /// Must be a layer of the model; -1 turns token-selective propagation off (per-layer
  /// compression only). [--fastkv-tsp-layer]
  std::int64_t tsp_layer = 15;
  /// "proportional" (budgets are rates of the prompt length; the shipped scripts) or "constant"
  /// (budgets are token counts; run_longbench.py's argparse default). Official scripts:
  /// "proportional". [--fastkv-mode]
  std::string mode = "proportional";
  /// Proportional mode: KV entries kept per layer = int(L * retain_rate) up to the TSP layer, and
  /// int(L' * retain_rate / tsp_rate) of the L' propagated tokens after it (about 0.1 L in every
  /// layer). Official 0.1. [--fastkv-retain-rate]
  double retain_rate = 0.1;
  /// Constant mode: KV entries kept per layer (max_capacity_prompt). Official 512.
  /// [--fastkv-max-capacity]
  std::int64_t max_capacity = 512;
  /// Proportional mode: tokens propagated past the TSP layer = int(L * tsp_rate). Official 0.2.
  /// [--fastkv-tsp-rate]
  double tsp_rate = 0.2;
  /// Constant mode: tokens propagated past the TSP layer. Official 2048. [--fastkv-tsp-length]
  std::int64_t tsp_length = 2048;
  /// w, the observation window: the last w queries score, the last w tokens are always kept.
  /// Official 8. [--fastkv-window]
  std::int64_t window = 8;
  /// Pooling kernel (odd; padding kernel/2, stride 1). Official 7. [--fastkv-kernel-size]
  std::int64_t kernel_size = 7;
  /// "maxpool" or "avgpool" (count_include_pad). Official HEAD scripts: "maxpool" (the May-2025
  /// scripts and FastKVCluster's own default: avgpool). [--fastkv-pooling]
  std::string pooling = "maxpool";
};

/// What one layer's update_kv chooses.
struct FastKVSelection {
  /// Kept slots [B, Hkv, budget] in the official order: the top (budget - w) by score, highest
  /// first, then the last w in order. Undefined when the prompt is shorter than the budget (no
  /// compression, no TSP, as the official code).
  at::Tensor kept;
  /// Token indices [B, tsp_length] (ascending) that propagate, when TSP happens at this layer.
  at::Tensor tsp;
};

/// The FastKV policy. One instance serves one cache. It acts only on a fresh prefill (a
/// multi-token forward into empty layer caches), like the official code; decode steps and later
/// chunks attend over what was kept.
class FastKVPolicy : public llm::CachePolicy {
 public:
  /// budget_tokens > 0: every layer keeps budget_tokens KV entries (constant mode's
  /// max_capacity_prompt = budget_tokens, whatever `mode`); the TSP length still follows `mode`.
  /// budget_tokens <= 0: budgets from the options (mode, retain_rate / max_capacity).
  /// Invalid options: UsageError naming the flag.
  FastKVPolicy(const FastKVOptions& o, std::int64_t budget_tokens);

  std::string name() const override { return "fastkv"; }
  void after_attention(llm::AttentionStep& s, const at::Tensor& out) override;
  std::optional<at::Tensor> select_tokens(std::int64_t layer, const at::Tensor& hidden,
                                          const at::Tensor& pos) override;

  const FastKVOptions& options() const { return opt_; }
  /// Tokens the last prefill propagated past the TSP layer (0: no TSP happened).
  std::int64_t propagated_tokens() const { return last_tsp_len_; }

  /// The pure selection (FastKVCluster.update_kv): keys [B, Hkv, L, D], queries [B, H, L, D]
  /// (post-RoPE; only the last w are used), KV budget, TSP length (<= 0: this is not the TSP
  /// layer). `valid` [B, Hkv, L] (or undefined) masks empty (padding) slots out. Exposed for the
  /// fidelity tests.
  static FastKVSelection select(const at::Tensor& keys, const at::Tensor& queries,
                                std::int64_t budget, std::int64_t tsp_length,
                                const FastKVOptions& o, const at::Tensor& valid = at::Tensor());

 private:
  FastKVOptions opt_;
  std::int64_t budget_ = 0;
  bool active_ = false;           ///< the current forward is a fresh prefill
  std::int64_t prompt_len_ = 0;   ///< L of the current prefill
  at::Tensor tsp_;                ///< indices chosen at the TSP layer in this forward
  std::int64_t last_tsp_len_ = 0;
};

}  // namespace kvlab::compress
