#include "kvlab/compress/quest.hpp"

#include <ATen/ATen.h>
#include <ATen/TensorIndexing.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "kvlab/core/error.hpp"
#include "kvlab/llm/config.hpp"

namespace kvlab::compress {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

void check_quest_options(const QuestOptions& o, const char* method) {
  KVLAB_THROW_IF(o.page_size < 1, UsageError,
                 "{}: page size {} is not positive; use --quest-page-size 16 (Quest's default) or "
                 "another value >= 1",
                 method, o.page_size);
  KVLAB_THROW_IF(o.dense_layers < 0, UsageError,
                 "{}: dense layers {} is negative; use --quest-dense-layers 0 or more (Quest: 2)",
                 method, o.dense_layers);
  KVLAB_THROW_IF(o.min_pages < 1, UsageError,
                 "{}: minimum pages {} is not positive; use --quest-min-pages 1 or more (Quest: 3)",
                 method, o.min_pages);
  KVLAB_THROW_IF(!(o.budget_ratio >= 0.0 && o.budget_ratio <= 1.0), UsageError,
                 "{}: budget ratio {} is outside [0, 1]; use e.g. --quest-budget-ratio 0.15",
                 method, o.budget_ratio);
  KVLAB_THROW_IF(o.budget_min_tokens < 0, UsageError,
                 "{}: minimum budget {} tokens is negative; use --quest-budget-min 256 or 0",
                 method, o.budget_min_tokens);
}

}  // namespace

at::Tensor quest_page_scores(const at::Tensor& q, const at::Tensor& page_min,
                             const at::Tensor& page_max) {
  TORCH_CHECK(q.dim() == 3 && page_min.dim() == 4 && page_max.sizes() == page_min.sizes(),
              "quest_page_scores: q must be [B, H, D] and page_min/page_max [B, Hkv, P, D]");
  const std::int64_t b = q.size(0), h = q.size(1), d = q.size(2);
  const std::int64_t hk = page_min.size(1), p = page_min.size(2);
  TORCH_CHECK(h % hk == 0 && page_min.size(3) == d && page_min.size(0) == b,
              "quest_page_scores: shapes do not match");
  const std::int64_t g = h / hk;
  at::Tensor qf = q.to(at::kFloat).reshape({b, hk, g, d});
  at::Tensor mn = page_min.to(at::kFloat), mx = page_max.to(at::kFloat);
  // A page with no entry holds +inf / -inf: score it -inf (and keep NaN out of the matmuls).
  at::Tensor has = mn.select(-1, 0).le(mx.select(-1, 0));  // [B, Hkv, P]
  mn = at::where(has.unsqueeze(-1), mn, at::zeros({}, mn.options()));
  mx = at::where(has.unsqueeze(-1), mx, at::zeros({}, mx.options()));
  // sum_i max(q_i m_i, q_i M_i) = sum_i relu(q_i) M_i + min(q_i, 0) m_i (M_i >= m_i): Quest's
  // sign trick, as two matmuls.
  at::Tensor score = at::matmul(qf.clamp_min(0), mx.transpose(-1, -2)) +
                     at::matmul(qf.clamp_max(0), mn.transpose(-1, -2));  // [B, Hkv, G, P]
  score = score.masked_fill(has.logical_not().unsqueeze(2), -kInf);
  return score.reshape({b, h, p});
}

std::int64_t quest_page_count(std::int64_t budget_tokens, std::int64_t page_size,
                              std::int64_t min_pages, std::int64_t pages) {
  return std::min(std::max(min_pages, budget_tokens / page_size), pages);
}

AttentionWithLse attention_with_lse(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& visible, double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.sizes() == k.sizes() && visible.dim() == 4,
              "attention_with_lse: q [B, H, T, D], k/v [B, H, S, D], visible [B, H, T, S]");
  at::Tensor scores = (at::matmul(q, k.transpose(-1, -2)) * scale).to(at::kFloat);
  scores = scores.masked_fill(visible.logical_not(), -kInf);
  at::Tensor any = visible.any(-1);                        // [B, H, T]
  at::Tensor lse = at::logsumexp(scores, -1);              // -inf where nothing is visible
  lse = at::where(any, lse, at::full({}, -kInf, lse.options()));
  // The same numerics as the runtime's manual path: float32 softmax, cast, matmul.
  at::Tensor p = at::softmax(scores, -1, at::kFloat);
  p = at::where(any.unsqueeze(-1), p, at::zeros({}, p.options()));
  at::Tensor out = at::matmul(p.to(v.scalar_type()), v);
  return {out, lse};
}

// ---------------------------------------------------------------- QuestPolicy

QuestPolicy::QuestPolicy(const QuestOptions& o, std::int64_t budget_tokens)
    : opt_(o), budget_(budget_tokens) {
  check_quest_options(o, "quest");
  KVLAB_THROW_IF(budget_tokens < 0, UsageError,
                 "quest: token budget {} is negative; give a budget > 0 tokens or a ratio", budget_tokens);
  KVLAB_THROW_IF(budget_tokens == 0 && o.budget_ratio <= 0.0, UsageError,
                 "quest: no budget (0 tokens and budget ratio 0); give a token budget > 0 or "
                 "--quest-budget-ratio in (0, 1]");
}

llm::KVCacheOptions QuestPolicy::cache_options() const {
  llm::KVCacheOptions o;
  o.page_size = opt_.page_size;
  return o;
}

std::int64_t QuestPolicy::budget_for(std::int64_t context) const {
  if (budget_ > 0) return budget_;
  const auto rel = static_cast<std::int64_t>(std::floor(opt_.budget_ratio * static_cast<double>(context)));
  return std::max(opt_.budget_min_tokens, std::max<std::int64_t>(rel, 1));
}

double QuestPolicy::scale_of(const llm::AttentionStep& s) {
  return 1.0 / std::sqrt(static_cast<double>(s.q.size(3)));
}

QuestPolicy::Selection QuestPolicy::select(const llm::AttentionStep& s) const {
  const llm::LayerKV& kv = *s.kv;
  KVLAB_THROW_IF(kv.page_size() != opt_.page_size, UsageError,
                 "{}: the KV cache keeps page metadata for pages of {} tokens but the method needs "
                 "{}; create the cache with the policy's cache_options()",
                 name(), kv.page_size(), opt_.page_size);
  const std::int64_t b = s.q.size(0), h = s.q.size(1), hk = kv.kv_heads(), g = h / hk;
  const std::int64_t len = kv.length(), page = opt_.page_size;
  at::Tensor q = s.q.select(2, s.q.size(2) - 1);  // [B, H, D]: the step's (last) query
  at::Tensor scores = quest_page_scores(q, kv.page_min(), kv.page_max());  // [B, H, P]
  const std::int64_t pages = scores.size(2);
  if (opt_.gqa == QuestGqa::kv_head_max)
    scores = std::get<0>(scores.view({b, hk, g, pages}).max(2, /*keepdim=*/true))
                 .expand({b, hk, g, pages})
                 .reshape({b, h, pages});
  const std::int64_t n = quest_page_count(budget_for(len), page, opt_.min_pages, pages);
  Selection sel;
  // Ascending page order: the gathered keys keep the cache's order (and memory locality).
  sel.pages = std::get<0>(std::get<1>(scores.topk(n, -1)).sort(-1));
  const auto lopt = sel.pages.options();
  at::Tensor slots =
      (sel.pages.unsqueeze(-1) * page + at::arange(page, lopt)).reshape({b, h, n * page});
  sel.in_range = slots.lt(len);
  sel.slots = slots.clamp_max(len - 1);
  using at::indexing::TensorIndex;
  at::Tensor bi = at::arange(b, lopt).view({b, 1, 1});
  at::Tensor hi = at::arange(h, lopt).div(g, "floor").view({1, h, 1});  // query head -> KV head
  sel.k = kv.keys().index({TensorIndex(bi), TensorIndex(hi), TensorIndex(sel.slots)});
  sel.v = kv.values().index({TensorIndex(bi), TensorIndex(hi), TensorIndex(sel.slots)});
  sel.pos = kv.positions()
                .index({TensorIndex(bi), TensorIndex(hi), TensorIndex(sel.slots)})
                .masked_fill(sel.in_range.logical_not(), -1);
  return sel;
}

at::Tensor QuestPolicy::visible(const Selection& sel, const at::Tensor& q_pos,
                                const llm::AttentionStep& s) {
  const std::int64_t b = q_pos.size(0), t = q_pos.size(1);
  at::Tensor kp = sel.pos.unsqueeze(2);         // [B, H, 1, S]
  at::Tensor qp = q_pos.view({b, 1, t, 1});     // [B, 1, T, 1]
  at::Tensor m = kp.ge(0).logical_and(kp.le(qp));
  if (s.config && s.config->sliding_window) m = m.logical_and(kp.gt(qp - *s.config->sliding_window));
  return m;
}

void QuestPolicy::account(std::int64_t queries, const at::Tensor& visible, const at::Tensor& read,
                          const at::Tensor& supplementary, const at::Tensor& exposure) {
  stats_.sparse_queries += queries;
  at::Tensor zero = at::zeros({}, read.options().dtype(at::kDouble));
  auto sum = [&](const at::Tensor& t) { return t.defined() ? t.sum().to(at::kDouble) : zero; };
  at::Tensor v = at::stack({sum(visible), sum(read), sum(supplementary), sum(exposure)});
  if (!acc_.defined() || acc_.device() != v.device()) {
    if (acc_.defined()) (void)stats();  // flush what another device accumulated
    acc_ = at::zeros({4}, v.options());
  }
  acc_.add_(v);
}

const SparseReadStats& QuestPolicy::stats() const {
  if (acc_.defined()) {
    at::Tensor a = acc_.cpu();
    const double* p = a.data_ptr<double>();
    stats_.entries_visible += p[0];
    stats_.entries_read += p[1];
    stats_.supplementary_entries += p[2];
    stats_.exposure += p[3];
    acc_.zero_();
  }
  return stats_;
}

void QuestPolicy::reset_stats() {
  stats_ = {};
  if (acc_.defined()) acc_.zero_();
}

std::optional<at::Tensor> QuestPolicy::attend(llm::AttentionStep& s) {
  if (s.phase != llm::Phase::decode || is_dense_layer(s.layer)) return std::nullopt;
  const Selection sel = select(s);
  const at::Tensor vis = visible(sel, s.q_pos, s);  // [B, H, 1, S]
  AttentionWithLse r = attention_with_lse(s.q, sel.k, sel.v, vis, scale_of(s));
  // What the whole cache would have shown these queries (per query head).
  const std::int64_t g = s.q.size(1) / s.kv->kv_heads();
  at::Tensor kp = s.kv->positions();
  at::Tensor held = kp.ge(0).logical_and(kp.le(s.q_pos.select(1, 0).view({-1, 1, 1})));
  if (s.config && s.config->sliding_window)
    held = held.logical_and(kp.gt(s.q_pos.select(1, 0).view({-1, 1, 1}) - *s.config->sliding_window));
  account(s.q.size(0) * s.q.size(1), held.sum() * g, vis, at::Tensor(), vis);
  return r.out;
}

void QuestPolicy::after_forward(llm::KVCache& cache, llm::Phase phase) {
  if (phase == llm::Phase::decode) ++stats_.decode_steps;
}

}  // namespace kvlab::compress
