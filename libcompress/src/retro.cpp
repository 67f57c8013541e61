#include "kvlab/compress/retro.hpp"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "kvlab/core/error.hpp"
#include "kvlab/llm/attention.hpp"
#include "kvlab/llm/config.hpp"
#include "kvlab/llm/model.hpp"
#include "kvlab/llm/rope.hpp"

namespace kvlab::compress {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

QuestOptions resolved_quest(const RetroOptions& o, std::int64_t budget_tokens) {
  QuestOptions q = o.quest;
  if (budget_tokens == 0 && q.budget_ratio <= 0.0) {
    q.budget_ratio = o.default_budget_ratio;
    q.budget_min_tokens = o.default_budget_min_tokens;
  }
  return q;
}

// transformers' LlamaRMSNorm, as Model::rms_norm computes it (float32 statistics, cast back,
// then scale). Coupling: must match libllm/src/model.cpp; the all-pages test (retro == full)
// would not catch a mismatch (nothing is recomputed there), the w=2 quality runs would.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  at::Tensor h = x.to(at::kFloat);
  at::Tensor var = h.pow(2).mean(-1, /*keepdim=*/true);
  h = h * at::rsqrt(var + eps);
  return w * h.to(x.scalar_type());
}

}  // namespace

/// One past decode step in the retrospective window: its per-layer input hidden state, query,
/// attention output and log-sum-exp (the output cache of the paper, one entry of w-1).
struct RetroPolicy::Entry {
  std::int64_t step = 0;
  at::Tensor pos;                 // [B] int64 position of this token
  std::vector<at::Tensor> x;      // per layer: [B, C] input of the layer (latest, corrected)
  std::vector<at::Tensor> q;      // per layer: [B, H, D] query (rotated)
  std::vector<at::Tensor> o;      // per layer: [B, H, D] attention output (merged)
  std::vector<at::Tensor> lse;    // per layer: [B, H] float32 (sparse layers)
  std::vector<char> dirty;        // per layer: the input changed in this step's pass
};

RetroPolicy::RetroPolicy(const RetroOptions& o, std::int64_t budget_tokens)
    : QuestPolicy(resolved_quest(o, budget_tokens), budget_tokens), ropt_(o) {
  KVLAB_THROW_IF(o.window < 1, UsageError,
                 "retro: window {} is not positive; use --retro-window 2 (the paper's default), "
                 "or 1 for plain Quest",
                 o.window);
  KVLAB_THROW_IF(!(o.merge_weight > 0.0) || !std::isfinite(o.merge_weight), UsageError,
                 "retro: merge weight {} is not a positive number; use --retro-merge-weight 1 "
                 "(the exact log-sum-exp union)",
                 o.merge_weight);
  KVLAB_THROW_IF(!(o.default_budget_ratio > 0.0 && o.default_budget_ratio <= 1.0), UsageError,
                 "retro: default budget ratio {} is outside (0, 1]; the paper uses 0.15",
                 o.default_budget_ratio);
}

void RetroPolicy::reset() {
  step_ = -1;
  window_.clear();
  cur_.reset();
  last_loaded_.clear();
}

std::optional<AttentionWithLse> RetroPolicy::cached_output(std::int64_t step,
                                                           std::int64_t layer) const {
  for (const auto& e : window_)
    if (e->step == step && layer >= 0 && layer < static_cast<std::int64_t>(e->o.size()))
      return AttentionWithLse{e->o[static_cast<std::size_t>(layer)],
                              e->lse[static_cast<std::size_t>(layer)]};
  return std::nullopt;
}

AttentionWithLse RetroPolicy::lse_merge(const at::Tensor& o_a, const at::Tensor& lse_a,
                                        const at::Tensor& o_b, const at::Tensor& lse_b,
                                        double log_weight_b) {
  at::Tensor lb = log_weight_b != 0.0 ? lse_b + log_weight_b : lse_b;
  at::Tensor lse = at::logaddexp(lse_a, lb);
  // Both empty: lse -inf; keep o_a (0) and avoid -inf - -inf.
  at::Tensor safe = at::where(at::isinf(lse), at::zeros({}, lse.options()), lse);
  at::Tensor wa = at::exp(lse_a - safe).unsqueeze(-1);
  at::Tensor wb = at::exp(lb - safe).unsqueeze(-1);
  at::Tensor ob = at::where(wb.gt(0), o_b.to(at::kFloat), at::zeros({}, wb.options()));
  at::Tensor o = (wa * o_a.to(at::kFloat) + wb * ob).to(o_a.scalar_type());
  return {o, lse};
}

void RetroPolicy::start_step(const llm::AttentionStep& s) {
  ++step_;
  const auto layers = static_cast<std::size_t>(s.model ? s.model->num_layers()
                                                       : s.config->num_hidden_layers);
  cur_ = std::make_shared<Entry>();
  cur_->step = step_;
  cur_->pos = s.q_pos.select(1, 0).clone();
  cur_->x.resize(layers);
  cur_->q.resize(layers);
  cur_->o.resize(layers);
  cur_->lse.resize(layers);
  cur_->dirty.assign(layers, 0);
  for (auto& e : window_) std::fill(e->dirty.begin(), e->dirty.end(), 0);
  if (last_loaded_.size() != layers) last_loaded_.assign(layers, at::Tensor());
  if (!inv_freq_.defined()) inv_freq_ = llm::rope_inv_freq(*s.config).to(s.q.device());
}

// Re-embeds the K/V (and, with past_query == updated, the query) of the window's tokens whose
// input to this layer changed, and overwrites their cache slots.
void RetroPolicy::reembed(llm::AttentionStep& s) {
  std::vector<Entry*> rows;
  for (auto& e : window_)
    if (e->dirty[static_cast<std::size_t>(s.layer)]) rows.push_back(e.get());
  if (rows.empty()) return;
  const auto l = static_cast<std::size_t>(s.layer);
  const llm::Block& blk = s.model->blocks()[l];
  const llm::ModelConfig& cfg = *s.config;
  const std::int64_t b = s.q.size(0), n = static_cast<std::int64_t>(rows.size());
  const std::int64_t h = cfg.num_attention_heads, hk = cfg.num_key_value_heads, d = cfg.head_dim;
  std::vector<at::Tensor> xs, ps;
  for (Entry* e : rows) {
    xs.push_back(e->x[l]);
    ps.push_back(e->pos);
  }
  at::Tensor x = at::stack(xs, 1);    // [B, n, C]
  at::Tensor pos = at::stack(ps, 1);  // [B, n]
  at::Tensor xn = rms_norm(x, blk.input_layernorm, cfg.rms_norm_eps);
  const llm::RopeTables rt = llm::rope_tables(inv_freq_, pos, x.scalar_type());
  at::Tensor k = llm::apply_rope(blk.k_proj->forward(xn).view({b, n, hk, d}).transpose(1, 2), rt);
  at::Tensor v = blk.v_proj->forward(xn).view({b, n, hk, d}).transpose(1, 2);
  s.kv->overwrite(s.kv->find_slots(pos), k, v);
  if (ropt_.past_query == RetroPastQuery::updated) {
    at::Tensor q = llm::apply_rope(blk.q_proj->forward(xn).view({b, n, h, d}).transpose(1, 2), rt);
    for (std::int64_t j = 0; j < n; ++j) rows[static_cast<std::size_t>(j)]->q[l] = q.select(2, j);
  }
}

// Carries the corrected outputs of this layer through the rest of the block (o_proj, residual,
// MLP) to the window tokens' inputs of the next layer, for the rows in `changed`.
void RetroPolicy::propagate(const llm::AttentionStep& s) {
  const auto l = static_cast<std::size_t>(s.layer);
  if (l + 1 >= cur_->x.size()) return;
  std::vector<Entry*> rows;
  for (auto& e : window_)
    if (e->dirty[l]) rows.push_back(e.get());
  if (rows.empty()) return;
  const llm::Block& blk = s.model->blocks()[l];
  const llm::ModelConfig& cfg = *s.config;
  const std::int64_t b = s.q.size(0), n = static_cast<std::int64_t>(rows.size());
  std::vector<at::Tensor> xs, os;
  for (Entry* e : rows) {
    xs.push_back(e->x[l]);
    os.push_back(e->o[l].reshape({b, -1}));
  }
  at::Tensor x = at::stack(xs, 1), o = at::stack(os, 1);  // [B, n, C], [B, n, H*D]
  at::Tensor hdn = x + blk.o_proj->forward(o);
  at::Tensor hn = rms_norm(hdn, blk.post_attention_layernorm, cfg.rms_norm_eps);
  hdn = hdn + blk.down_proj->forward(at::silu(blk.gate_proj->forward(hn)) * blk.up_proj->forward(hn));
  for (std::int64_t j = 0; j < n; ++j) {
    Entry* e = rows[static_cast<std::size_t>(j)];
    e->x[l + 1] = hdn.select(1, j);
    e->dirty[l + 1] = 1;
  }
}

std::optional<at::Tensor> RetroPolicy::attend(llm::AttentionStep& s) {
  const std::int64_t t = s.q.size(2);
  if (s.layer == 0 && s.kv->length() == t) reset();  // a new sequence
  if (s.phase != llm::Phase::decode) {
    // Prefill or a scoring chunk: dense, and the window closes (its outputs are final).
    if (s.layer == 0) {
      window_.clear();
      cur_.reset();
    }
    return std::nullopt;
  }
  KVLAB_THROW_IF(ropt_.update_kv && ropt_.window > 1 && s.model == nullptr, UsageError,
                 "retro: the runtime did not pass the model to the policy (AttentionStep::model); "
                 "retrospective K/V updates need it");
  if (s.layer == 0) start_step(s);
  const auto l = static_cast<std::size_t>(s.layer);
  if (ropt_.update_kv) reembed(s);
  // Copies: the runtime may reuse its hidden/query buffers between steps.
  cur_->x[l] = s.hidden.select(1, 0).clone();
  cur_->q[l] = s.q.select(2, 0).clone();

  if (is_dense_layer(s.layer)) {
    // Window tokens whose input changed (only after a sparse layer) get their dense output
    // recomputed exactly with their new query.
    std::vector<Entry*> rows;
    for (auto& e : window_)
      if (e->dirty[l]) rows.push_back(e.get());
    if (!rows.empty()) {
      std::vector<at::Tensor> qs, ps;
      for (Entry* e : rows) {
        qs.push_back(e->q[l]);
        ps.push_back(e->pos);
      }
      llm::AttentionOptions ao;
      ao.sliding_window = s.config->sliding_window;
      at::Tensor o = llm::attention(at::stack(qs, 2), *s.kv, at::stack(ps, 1), ao);
      for (std::size_t j = 0; j < rows.size(); ++j)
        rows[j]->o[l] = o.select(2, static_cast<std::int64_t>(j));
    }
    if (ropt_.update_kv) propagate(s);
    return std::nullopt;  // the current token: the runtime's dense attention
  }

  // Sparse layer: the current query exactly as Quest computes it.
  const Selection sel = select(s);
  const at::Tensor vis = visible(sel, s.q_pos, s);  // [B, H, 1, S]
  const double scale = scale_of(s);
  AttentionWithLse cur = attention_with_lse(s.q, sel.k, sel.v, vis, scale);
  cur_->lse[l] = cur.lse.select(2, 0);

  const std::int64_t b = s.q.size(0), h = s.q.size(1), npg = sel.pages.size(2);
  const std::int64_t page = opt_.page_size, pages = s.kv->page_count();
  at::Tensor& ll = last_loaded_[l];
  if (!ll.defined() || ll.size(0) != b || ll.size(1) != h) {
    ll = at::full({b, h, pages}, -1, sel.pages.options());
  } else if (ll.size(2) < pages) {
    ll = at::cat({ll, at::full({b, h, pages - ll.size(2)}, -1, ll.options())}, 2);
  }

  at::Tensor sup_vis;
  if (!window_.empty()) {
    // Supplementary attention: each past query over the pages loaded now that it has not seen
    // (last loaded before its own step), limited to keys at or before its position.
    const auto n = static_cast<std::int64_t>(window_.size());
    std::vector<at::Tensor> qs, ps, steps;
    for (auto& e : window_) {
      qs.push_back(e->q[l]);
      ps.push_back(e->pos);
    }
    at::Tensor qp = at::stack(qs, 2);   // [B, H, n, D]
    at::Tensor pp = at::stack(ps, 1);   // [B, n]
    std::vector<std::int64_t> st;
    for (auto& e : window_) st.push_back(e->step);
    at::Tensor step_of = at::tensor(st, sel.pages.options().device(at::kCPU)).to(sel.pages.device());
    at::Tensor ll_sel = ll.gather(2, sel.pages);                                // [B, H, npg]
    at::Tensor unseen = ll_sel.unsqueeze(2).lt(step_of.view({1, 1, n, 1}));    // [B, H, n, npg]
    unseen = unseen.unsqueeze(-1).expand({b, h, n, npg, page}).reshape({b, h, n, npg * page});
    sup_vis = visible(sel, pp, s).logical_and(unseen);                         // [B, H, n, S]
    AttentionWithLse sup = attention_with_lse(qp, sel.k, sel.v, sup_vis, scale);
    const double logw = std::log(ropt_.merge_weight);
    at::Tensor touched = sup_vis.any(-1).any(1).any(0).cpu();  // [n]: one sync
    for (std::int64_t j = 0; j < n; ++j) {
      if (!touched[j].item<bool>()) continue;
      Entry* e = window_[static_cast<std::size_t>(j)].get();
      AttentionWithLse m = lse_merge(e->o[l], e->lse[l], sup.out.select(2, j), sup.lse.select(2, j), logw);
      e->o[l] = m.out;
      e->lse[l] = m.lse;
      e->dirty[l] = 1;  // its output changed: the next layers' inputs change
    }
  }
  ll.scatter_(2, sel.pages, step_);

  const std::int64_t g = h / s.kv->kv_heads();
  at::Tensor kp = s.kv->positions();
  at::Tensor qpos = s.q_pos.select(1, 0).view({-1, 1, 1});
  at::Tensor held = kp.ge(0).logical_and(kp.le(qpos));
  if (s.config->sliding_window)
    held = held.logical_and(kp.gt(qpos - *s.config->sliding_window));
  at::Tensor exposed = sup_vis.defined() ? at::cat({vis.sum().view({1}), sup_vis.sum().view({1})})
                                         : vis;
  account(b * h, held.sum() * g, vis, sup_vis, exposed);

  if (ropt_.update_kv) propagate(s);
  return cur.out;
}

void RetroPolicy::after_attention(llm::AttentionStep& s, const at::Tensor& out) {
  if (s.phase == llm::Phase::decode && cur_) cur_->o[static_cast<std::size_t>(s.layer)] = out.select(2, 0).clone();
}

void RetroPolicy::after_forward(llm::KVCache& cache, llm::Phase phase) {
  QuestPolicy::after_forward(cache, phase);
  if (phase != llm::Phase::decode || !cur_) return;
  if (ropt_.window > 1) window_.push_back(cur_);
  while (static_cast<std::int64_t>(window_.size()) > ropt_.window - 1) window_.erase(window_.begin());
  cur_.reset();
}

}  // namespace kvlab::compress
