// RetroAttention ("Retrospective Sparse Attention for Efficient Long-Context Generation", arXiv
// 2508.09001) on Quest page selection, as a CachePolicy. There is no public reference code: this is
// a reconstruction (docs/kv-methods-quest-retro.md lists every unverified choice; each is an
// option). At every decode step, the attention outputs of the last w-1 steps (kept per layer with
// their log-sum-exp) are revised with the pages this step loaded that those past queries had not
// seen (causally limited), merged by log-sum-exp; the corrected outputs then flow through the
// block (o_proj, residual, MLP) and re-embed the past tokens' K/V in the later layers.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kvlab/compress/quest.hpp"

namespace kvlab::compress {

/// Which query a past token uses for its supplementary attention (paper: unverified).
enum class RetroPastQuery {
  updated,   ///< re-projected from its corrected hidden state (and its K/V re-embedded likewise)
  original,  ///< the query it had when it was decoded
};

struct RetroOptions {
  /// Page selection (page size, dense layers, GQA mapping, budget rule). RetroAttention's page
  /// size and dense layers are unverified; Quest's defaults (16, 2) are used.
  QuestOptions quest;
  /// Retrospective window w (--retro-window): the current query plus the w-1 previous decode
  /// queries. The paper's experiments use 2 (ablation 2, 4, 8). w = 1 is exactly Quest.
  std::int64_t window = 2;
  /// Default relative budget for retro when the harness gives none (--budget not set):
  /// 0.15 x the current context, at least 256 tokens (the paper's setting). The harness resolves
  /// the budget; these are copied into quest.budget_ratio / budget_min_tokens when it passes 0.
  double default_budget_ratio = 0.15;
  std::int64_t default_budget_min_tokens = 256;
  /// Weight of the supplementary softmax mass in the merge (--retro-merge-weight). 1 is the exact
  /// log-sum-exp union (attention of the past query over old UNION new entries); the paper's
  /// weighting (its Appendix C.2) is unverified. Must be > 0.
  double merge_weight = 1.0;
  /// Past query for supplementary attention (--retro-past-query updated|original).
  RetroPastQuery past_query = RetroPastQuery::updated;
  /// Re-embed the past tokens' K/V in later layers from the corrected outputs
  /// (--retro-update-kv). Off: only the cached outputs are revised (ablation).
  bool update_kv = true;
};

/// RetroAttention. Create the cache with cache_options(). Decode steps must be one token per
/// sequence (T = 1); a forward of T > 1 tokens (prefill, or a chunk) is dense and closes the window.
class RetroPolicy : public QuestPolicy {
 public:
  /// budget_tokens > 0: fixed per-step token budget; 0: the relative budget of
  /// o.quest.budget_ratio, or when that is 0 too, of default_budget_ratio / _min_tokens.
  /// Bad options: UsageError naming the option.
  RetroPolicy(const RetroOptions& o, std::int64_t budget_tokens);

  std::string name() const override { return "retro"; }
  std::optional<at::Tensor> attend(llm::AttentionStep& s) override;
  void after_attention(llm::AttentionStep& s, const at::Tensor& out) override;
  void after_forward(llm::KVCache& cache, llm::Phase phase) override;

  const RetroOptions& retro_options() const { return ropt_; }
  /// Effective-KV-exposure statistics: stats().exposure_ratio() is retro's exposure relative to
  /// Quest's for the same queries; stats().supplementary_entries the extra entries read.
  const SparseReadStats& exposure() const { return stats(); }
  /// The cached (possibly revised) attention output and log-sum-exp of decode step `step`
  /// (0-based since the sequence started) at `layer`, while that step is in the window
  /// (nullopt otherwise, and lse undefined for dense layers): what the next steps merge into.
  std::optional<AttentionWithLse> cached_output(std::int64_t step, std::int64_t layer) const;
  /// Forgets the window (a new sequence). Called automatically when a forward starts on an empty
  /// cache.
  void reset();

  /// Log-sum-exp merge of two partial attentions over disjoint key sets: (o_a, lse_a) and
  /// (o_b, lse_b), o [..., D], lse [...] float32. Returns the attention over the union:
  /// o = (e^lse_a o_a + e^lse_b o_b) / (e^lse_a + e^lse_b), lse = logaddexp(lse_a, lse_b).
  /// An lse of -inf is an empty set (its o is ignored). log_weight_b is added to lse_b first
  /// (0: exact union).
  static AttentionWithLse lse_merge(const at::Tensor& o_a, const at::Tensor& lse_a,
                                    const at::Tensor& o_b, const at::Tensor& lse_b,
                                    double log_weight_b = 0.0);

 private:
  struct Entry;  // one past decode step in the window
  void start_step(const llm::AttentionStep& s);
  void reembed(llm::AttentionStep& s);
  void propagate(const llm::AttentionStep& s);

  RetroOptions ropt_;
  std::int64_t step_ = -1;           // decode step index (0-based) of the current forward
  bool decoding_ = false;            // the current forward is a decode step
  std::vector<std::shared_ptr<Entry>> window_;  // past steps, oldest first (at most w-1)
  std::shared_ptr<Entry> cur_;       // the current step's entry
  std::vector<at::Tensor> last_loaded_;  // per layer: [B, H, P] int64, step a page was last loaded
  at::Tensor inv_freq_;              // RoPE frequencies (from the step's config)
};

}  // namespace kvlab::compress
