// Quest: query-aware sparse attention over KV pages (Tang et al., ICML 2024), as a CachePolicy.
// Keys live in pages of `page_size` slots with element-wise key min/max (LayerKV page metadata);
// at every decode step each query head scores every page with the upper bound
// sum_i max(q_i*min_i, q_i*max_i) and attends only to the top pages that fit the token budget.
// Nothing is evicted: the budget limits what each step READS, not what the cache STORES.
// docs/kv-methods-quest-retro.md describes the method, the options and the deviations.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>

#include "kvlab/llm/kv_cache.hpp"

namespace kvlab::compress {

/// How the query heads of a GQA group map to their KV head's pages.
enum class QuestGqa {
  per_head,     ///< every query head scores and selects its own pages (Quest's code: after repeat_kv)
  kv_head_max,  ///< one selection per KV head from the max of its query heads' page scores
};

/// Options shared by quest and retro (RetroOptions embeds one). The CLI flag each binds to is
/// the harness's business; the names suggested here are what docs/kv-methods-quest-retro.md uses.
struct QuestOptions {
  /// Tokens per page (--quest-page-size). Quest's LongBench scripts use 16 (`--chunk_size 16`).
  std::int64_t page_size = 16;
  /// The first `dense_layers` layers attend densely (--quest-dense-layers). Quest: 2.
  std::int64_t dense_layers = 2;
  /// Fewest pages selected per step (--quest-min-pages). Quest's code: max(3, budget // page).
  std::int64_t min_pages = 3;
  /// Relative budget (--quest-budget-ratio): when > 0 AND the constructor's budget_tokens is 0,
  /// the per-step budget is max(budget_min_tokens, floor(budget_ratio x current context)), which
  /// grows with the context (RetroAttention's setting: 0.15, at least 256).
  double budget_ratio = 0.0;
  /// Floor of the relative budget (--quest-budget-min), in tokens.
  std::int64_t budget_min_tokens = 256;
  /// GQA page selection (--quest-gqa per-head|kv-head-max).
  QuestGqa gqa = QuestGqa::per_head;
};

/// Counters over the decode steps a policy has run (since construction or reset_stats()).
/// "Sparse queries" are (decode step, batch row, sparse layer, query head) tuples; dense layers
/// and prefill are not counted. Entries are KV entries a query may see causally.
struct SparseReadStats {
  std::int64_t decode_steps = 0;     ///< decode forwards seen
  std::int64_t sparse_queries = 0;   ///< (step, row, sparse layer, query head) tuples
  double entries_visible = 0;        ///< sum over sparse queries of the entries the cache held
  double entries_read = 0;           ///< ... of the entries in the pages selected (visible ones)
  /// RetroAttention only (0 for quest): entries read by supplementary attention of past queries.
  double supplementary_entries = 0;
  /// Effective KV exposure: sum over sparse queries of the DISTINCT entries that entered its
  /// attention output (own selection + every supplementary merge while it stayed in the window).
  /// For quest this equals entries_read.
  double exposure = 0;
  /// exposure / entries_read: effective KV exposure relative to what Quest exposes for the same
  /// queries (1 for quest; the paper reports 1.17x-1.60x for RetroAttention).
  double exposure_ratio() const { return entries_read > 0 ? exposure / entries_read : 0.0; }
  /// entries_read / entries_visible: the fraction of the held cache a sparse query reads.
  double read_fraction() const { return entries_visible > 0 ? entries_read / entries_visible : 0.0; }
  /// Mean distinct entries per sparse query (exposure / sparse_queries).
  double exposure_per_query() const {
    return sparse_queries > 0 ? exposure / static_cast<double>(sparse_queries) : 0.0;
  }
};

/// Quest page scores: q [B, H, D] (query heads), page_min/page_max [B, Hkv, P, D] (H a multiple
/// of Hkv; head h uses KV head h / (H / Hkv)). Returns float32 [B, H, P] with
/// score = sum_i max(q_i*min_i, q_i*max_i), an upper bound on q.k for every key of the page;
/// pages holding no entry score -inf.
at::Tensor quest_page_scores(const at::Tensor& q, const at::Tensor& page_min,
                             const at::Tensor& page_max);

/// Pages a step selects for a budget of `budget_tokens` among `pages` pages:
/// min(max(min_pages, budget_tokens / page_size), pages) (Quest's num_pages rule).
std::int64_t quest_page_count(std::int64_t budget_tokens, std::int64_t page_size,
                              std::int64_t min_pages, std::int64_t pages);

/// Attention of q [B, H, T, D] over explicit per-query-head keys/values k, v [B, H, S, D] where
/// visible [B, H, T, S] (bool) says which keys each query may see. Returns the output
/// [B, H, T, D] (q's dtype) and the log-sum-exp of the scaled scores lse [B, H, T] float32
/// (-inf and output 0 where a query sees nothing). Softmax in float32 like the runtime.
struct AttentionWithLse {
  at::Tensor out, lse;
};
AttentionWithLse attention_with_lse(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& visible, double scale);

/// Query-aware page selection. Create the cache with cache_options() (page metadata on).
class QuestPolicy : public llm::CachePolicy {
 public:
  /// budget_tokens > 0: the token budget of every decode step; 0: the relative budget of
  /// options.budget_ratio (then > 0 is required). Bad options: UsageError naming the option.
  QuestPolicy(const QuestOptions& o, std::int64_t budget_tokens);

  std::string name() const override { return "quest"; }
  std::optional<at::Tensor> attend(llm::AttentionStep& s) override;
  void after_forward(llm::KVCache& cache, llm::Phase phase) override;

  /// The page size the cache must keep metadata for.
  std::int64_t page_size() const { return opt_.page_size; }
  /// KVCacheOptions the cache must be created with (page_size set).
  llm::KVCacheOptions cache_options() const;
  /// The token budget for a query that sees `context` entries.
  std::int64_t budget_for(std::int64_t context) const;
  const QuestOptions& options() const { return opt_; }
  std::int64_t budget_tokens() const { return budget_; }

  /// Counters so far. The per-step sums stay on the model's device until read here (one
  /// synchronisation per call, none per step).
  const SparseReadStats& stats() const;
  void reset_stats();

  /// One layer's sparse decode attention for the current queries (T = 1): selection, gather,
  /// attention. `selected` receives the pages [B, H, n] (sorted ascending), `sel_keys` the slot
  /// index of every gathered key [B, H, n*page] (>= L for the pad of a last partial page). Shared
  /// with RetroPolicy so that retro with w = 1 computes exactly what quest computes.
  struct Selection {
    at::Tensor pages;     ///< [B, H, n] int64, ascending
    at::Tensor slots;     ///< [B, H, S] int64 slot indices (S = n * page_size), clamped to L-1
    at::Tensor in_range;  ///< [B, H, S] bool: slot < L
    at::Tensor k, v;      ///< [B, H, S, D] gathered keys/values
    at::Tensor pos;       ///< [B, H, S] int64 original positions (-1: empty or out of range)
  };
  Selection select(const llm::AttentionStep& s) const;
  /// Visibility [B, H, T, S] of a selection's keys for queries at q_pos [B, T] (causal, sliding
  /// window from the step's config).
  static at::Tensor visible(const Selection& sel, const at::Tensor& q_pos,
                            const llm::AttentionStep& s);
  bool is_dense_layer(std::int64_t layer) const { return layer < opt_.dense_layers; }

 protected:
  /// Adds a step's sums to the device-side accumulators: visible, read, supplementary entries
  /// and exposure (tensors of any shape; summed), plus `queries` sparse queries.
  void account(std::int64_t queries, const at::Tensor& visible, const at::Tensor& read,
               const at::Tensor& supplementary, const at::Tensor& exposure);
  /// The attention scale of the step (1/sqrt(head_dim), as the runtime).
  static double scale_of(const llm::AttentionStep& s);

  QuestOptions opt_;
  std::int64_t budget_ = 0;
  mutable SparseReadStats stats_;
  mutable at::Tensor acc_;  // float64 [4] on the device: visible, read, supplementary, exposure
};

}  // namespace kvlab::compress
