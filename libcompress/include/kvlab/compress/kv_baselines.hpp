// The standard KV-cache compression baselines of kv-eval (docs/kv-eval.md), as CachePolicy
// implementations over libllm's KV cache: full, streaming (StreamingLLM), h2o (Heavy-Hitter
// Oracle), tova, snapkv, pyramidkv and knorm. Every method physically frees memory: the kept
// entries are gathered into a smaller layer (LayerKV::gather), never masked.
//
// Budget: `budget_tokens` is the number of KV entries each layer keeps per KV head (PyramidKV:
// the average over layers). Prefill methods (snapkv, pyramidkv, knorm) compress once, after the
// attention of the first forward (the prompt), as NVIDIA kvpress does (its ScorerPress hook runs
// after attention, so the prompt's own attention saw the full cache); decoding then appends
// freely. Decode-time methods (streaming, h2o, tova) compress the prompt the same way and then keep
// the cache at the budget while decoding, evicting after each step's attention.
//
// Scores follow kvpress 0.5.x exactly where kvpress has the method (snapkv, pyramidkv, streaming,
// tova, knorm; tests/unit/compress/test_kvpress_golden.cpp checks the kept sets against kvpress).
// H2O is not in kvpress: it follows the H2O paper (accumulated attention, heavy hitters + recent
// window, half of the budget each), with the sum over each KV head's GQA group.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kvlab/llm/kv_cache.hpp"

namespace kvlab::compress {

/// Options of the baselines (defaults: kvpress's, and H2O's for h2o).
struct BaselineOptions {
  std::int64_t streaming_sinks = 4;   ///< StreamingLLM attention sinks (kvpress n_sink 4)
  std::int64_t snapkv_window = 64;    ///< SnapKV observation window (kvpress 64)
  std::int64_t snapkv_kernel = 5;     ///< SnapKV avg-pool kernel (kvpress 5)
  std::int64_t pyramidkv_window = 64; ///< PyramidKV window (kvpress 64)
  std::int64_t pyramidkv_kernel = 5;  ///< PyramidKV kernel (kvpress 5)
  std::int64_t pyramidkv_beta = 20;   ///< PyramidKV pyramid steepness (kvpress 20)
  double h2o_heavy_ratio = 0.5;       ///< share of the budget for heavy hitters (H2O: half)
};

/// Scores [B, Hkv, L] (higher = keep) for the kvpress-style scorers. Slots that hold no entry
/// get -inf. `q` is the step's post-RoPE queries [B, H, T, D] (T >= 1), `q_pos` [B, T].
at::Tensor snapkv_scores(const llm::LayerKV& kv, const at::Tensor& q, const at::Tensor& q_pos,
                         std::int64_t window, std::int64_t kernel);
at::Tensor tova_scores(const llm::LayerKV& kv, const at::Tensor& q, const at::Tensor& q_pos);
at::Tensor knorm_scores(const llm::LayerKV& kv);
at::Tensor streaming_scores(const llm::LayerKV& kv, std::int64_t sinks);

/// PyramidKV's per-layer budget (kvpress get_layer_budget, KVCache-Factory's formula) for a prompt
/// of `q_len` tokens whose average budget is `budget` tokens.
std::int64_t pyramidkv_layer_budget(std::int64_t q_len, std::int64_t budget, std::int64_t window,
                                    std::int64_t beta, std::int64_t layer, std::int64_t n_layers);

/// Keeps the `n_keep` highest-scoring entries of every (row, KV head) (scores [B, Hkv, L]; -inf
/// = never keep), in position order; rows with fewer entries keep what they have. Frees memory.
/// Returns the gathered slot indices [B, Hkv, N] (-1 = empty slot), for state kept beside the cache.
at::Tensor keep_top(llm::LayerKV& kv, const at::Tensor& scores, std::int64_t n_keep);

/// One of the baselines. Construct through make_baseline().
class BaselinePolicy : public llm::CachePolicy {
 public:
  enum class Kind { full, streaming, h2o, tova, snapkv, pyramidkv, knorm };
  BaselinePolicy(Kind kind, const BaselineOptions& o, std::int64_t budget_tokens);

  std::string name() const override;
  void after_attention(llm::AttentionStep& s, const at::Tensor& out) override;
  bool decode_time() const;

 private:
  void prefill(llm::AttentionStep& s);
  void decode(llm::AttentionStep& s);
  void h2o_step(llm::AttentionStep& s);
  Kind kind_;
  BaselineOptions opt_;
  std::int64_t budget_;
  std::vector<at::Tensor> h2o_acc_;  ///< per layer: accumulated attention [B, Hkv, L] (h2o)
};

/// "full", "streaming", "h2o", "tova", "snapkv", "pyramidkv", "knorm" -> a policy; UsageError
/// otherwise. budget_tokens must be >= 1 for every method but full.
std::unique_ptr<llm::CachePolicy> make_baseline(const std::string& name, const BaselineOptions& o,
                                                std::int64_t budget_tokens);

}  // namespace kvlab::compress
