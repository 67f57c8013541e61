#include "kvlab/compress/kv_baselines.hpp"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "kvlab/core/error.hpp"
#include "kvlab/llm/attention.hpp"
#include "kvlab/llm/config.hpp"

namespace kvlab::compress {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Window attention as kvpress's compute_window_attention: the last `w` queries against every
// key, softmax in float32, masked by position (a query at p sees keys at positions <= p, which
// for one unpadded prompt is kvpress's triu(diagonal = L - w + 1)). Returns [B, H, w, L].
at::Tensor window_probs(const llm::LayerKV& kv, const at::Tensor& q, const at::Tensor& q_pos,
                        std::int64_t w) {
  const std::int64_t b = q.size(0), h = q.size(1), t = q.size(2), d = q.size(3);
  const std::int64_t hkv = kv.kv_heads(), g = h / hkv, l = kv.length();
  at::Tensor qw = q.narrow(2, t - w, w).to(at::kFloat);
  at::Tensor qp = q_pos.narrow(1, t - w, w);
  at::Tensor k = kv.keys().to(at::kFloat);  // [B, Hkv, L, D]
  at::Tensor kr = k.unsqueeze(2).expand({b, hkv, g, l, d}).reshape({b, h, l, d});  // repeat_kv
  at::Tensor a = at::matmul(qw, kr.transpose(2, 3)) / std::sqrt(static_cast<double>(d));
  at::Tensor mask = llm::attention_mask(kv.positions(), qp, std::nullopt);  // [B, Hkv, w, L]
  mask = mask.unsqueeze(2).expand({b, hkv, g, w, l}).reshape({b, h, w, l});
  a = a.masked_fill(mask.logical_not(), -kInf);
  return at::softmax(a, -1).nan_to_num(0.0);
}

at::Tensor mask_invalid(const llm::LayerKV& kv, at::Tensor scores) {
  return scores.masked_fill(kv.valid().logical_not(), -kInf);
}

// Recency as a score (the most recent entries win): the fallback when the prompt is no longer
// than the observation window.
at::Tensor recency_scores(const llm::LayerKV& kv) {
  return mask_invalid(kv, kv.positions().to(at::kFloat));
}

llm::AttentionOptions probs_options(const llm::AttentionStep& s) {
  llm::AttentionOptions ao;
  if (s.config) ao.sliding_window = s.config->sliding_window;
  ao.queries_padded = s.q_pos.lt(0).any().item<bool>();
  return ao;
}

}  // namespace

at::Tensor snapkv_scores(const llm::LayerKV& kv, const at::Tensor& q, const at::Tensor& q_pos,
                         std::int64_t window, std::int64_t kernel) {
  const std::int64_t b = q.size(0), h = q.size(1), hkv = kv.kv_heads(), g = h / hkv;
  const std::int64_t l = kv.length();
  const std::int64_t w = std::min(window, q.size(2));
  if (l <= w) return recency_scores(kv);
  at::Tensor a = window_probs(kv, q, q_pos, w).narrow(3, 0, l - w);  // [B, H, w, L-w]
  at::Tensor s = a.mean(-2);                                         // mean over window queries
  s = at::avg_pool1d(s, {kernel}, {1}, {kernel / 2}, /*ceil_mode=*/false,
                     /*count_include_pad=*/true);
  s = s.view({b, hkv, g, l - w}).mean(2);                            // GQA mean
  const double top = s.max().item<double>() + 1.0;                   // the window is always kept
  s = at::constant_pad_nd(s, {0, w}, top);
  return mask_invalid(kv, s);
}

at::Tensor tova_scores(const llm::LayerKV& kv, const at::Tensor& q, const at::Tensor& q_pos) {
  const std::int64_t b = q.size(0), hkv = kv.kv_heads(), l = kv.length();
  if (l <= 1) return recency_scores(kv);
  at::Tensor a = window_probs(kv, q, q_pos, 1).narrow(3, 0, l - 1);  // [B, H, 1, L-1]
  at::Tensor s = a.squeeze(2).mean(1, /*keepdim=*/true);              // mean over all heads
  s = s.expand({b, hkv, l - 1}).contiguous();                         // one set for every KV head
  const double top = s.max().item<double>() + 1.0;                    // the last token is kept
  s = at::constant_pad_nd(s, {0, 1}, top);
  return mask_invalid(kv, s);
}

at::Tensor knorm_scores(const llm::LayerKV& kv) {
  return mask_invalid(kv, -kv.keys().to(at::kFloat).norm(2, -1));
}

at::Tensor streaming_scores(const llm::LayerKV& kv, std::int64_t sinks) {
  // kvpress scores 1 everywhere but 0 on [n_sink, n_sink + n_pruned): with n_kept entries kept
  // this is "the first n_sink positions plus the last n_kept - n_sink", i.e. sinks first, then
  // recency. Positions instead of slot indices, so left padding and decode-time eviction work.
  at::Tensor pos = kv.positions().to(at::kDouble);
  at::Tensor s = at::where(pos.lt(static_cast<double>(sinks)).logical_and(pos.ge(0)),
                           at::full_like(pos, 1e18), pos);
  return mask_invalid(kv, s);
}

std::int64_t pyramidkv_layer_budget(std::int64_t q_len, std::int64_t budget, std::int64_t window,
                                    std::int64_t beta, std::int64_t layer, std::int64_t n_layers) {
  // kvpress PyramidKVPress.get_layer_budget with q_len * (1 - compression_ratio) = budget.
  const double ql = static_cast<double>(q_len), w = static_cast<double>(window);
  const double max_capacity = w + static_cast<double>(budget);
  double min_num = (max_capacity - w) / static_cast<double>(beta);
  double max_num = (max_capacity - w) * 2 - min_num;
  if (max_num >= ql - w) {
    max_num = ql - w;
    min_num = (max_capacity - w) * 2 - max_num;
  }
  // Python's round() rounds half to even, as nearbyint does in the default rounding mode.
  if (!(ql >= max_num && max_num >= min_num && min_num >= w))
    return std::max<std::int64_t>(1, static_cast<std::int64_t>(std::nearbyint(static_cast<double>(budget))));
  const double steps = n_layers > 1 ? (max_num - min_num) / static_cast<double>(n_layers - 1) : 0.0;
  return static_cast<std::int64_t>(std::nearbyint(max_num - static_cast<double>(layer) * steps));
}

at::Tensor keep_top(llm::LayerKV& kv, const at::Tensor& scores, std::int64_t n_keep) {
  const std::int64_t l = kv.length();
  const std::int64_t n = std::min(n_keep, l);
  auto top = scores.to(at::kDouble).topk(n, -1);
  at::Tensor vals = std::get<0>(top), idx = std::get<1>(top);
  at::Tensor none = vals.isneginf();
  // Position order: sort the kept slot indices, empty picks (-inf) last.
  idx = at::where(none, at::full_like(idx, l), idx);
  idx = std::get<0>(idx.sort(-1));
  idx = at::where(idx.ge(l), at::full_like(idx, -1), idx);
  kv.gather(idx.to(kv.keys().device()));
  kv.shrink_to_fit();
  return idx.narrow(2, 0, kv.length());
}

BaselinePolicy::BaselinePolicy(Kind kind, const BaselineOptions& o, std::int64_t budget_tokens)
    : kind_(kind), opt_(o), budget_(budget_tokens) {
  KVLAB_THROW_IF(kind != Kind::full && budget_tokens < 1, UsageError,
                 "{}: the KV budget must be at least 1 token (got {})", name(), budget_tokens);
  KVLAB_THROW_IF(o.streaming_sinks < 0, UsageError, "--streaming-sinks must be >= 0");
  KVLAB_THROW_IF(o.snapkv_window < 1 || o.pyramidkv_window < 1, UsageError,
                 "--snapkv-window / --pyramidkv-window must be >= 1");
  KVLAB_THROW_IF(o.snapkv_kernel < 1 || o.snapkv_kernel % 2 == 0 || o.pyramidkv_kernel < 1 ||
                     o.pyramidkv_kernel % 2 == 0,
                 UsageError, "--snapkv-kernel / --pyramidkv-kernel must be odd and >= 1");
  KVLAB_THROW_IF(o.pyramidkv_beta < 1, UsageError, "--pyramidkv-beta must be >= 1");
  KVLAB_THROW_IF(!(o.h2o_heavy_ratio >= 0 && o.h2o_heavy_ratio <= 1), UsageError,
                 "--h2o-heavy-ratio must be in [0, 1]");
}

std::string BaselinePolicy::name() const {
  switch (kind_) {
    case Kind::full: return "full";
    case Kind::streaming: return "streaming";
    case Kind::h2o: return "h2o";
    case Kind::tova: return "tova";
    case Kind::snapkv: return "snapkv";
    case Kind::pyramidkv: return "pyramidkv";
    case Kind::knorm: return "knorm";
  }
  return "?";
}

bool BaselinePolicy::decode_time() const {
  return kind_ == Kind::streaming || kind_ == Kind::h2o || kind_ == Kind::tova;
}

void BaselinePolicy::after_attention(llm::AttentionStep& s, const at::Tensor& /*out*/) {
  if (kind_ == Kind::full) return;
  // The first forward of a sequence (the layer holds exactly this forward's tokens): the prompt.
  const bool first = s.phase == llm::Phase::prefill && s.kv->length() == s.q.size(2);
  if (first) prefill(s);
  else if (decode_time()) decode(s);
}

void BaselinePolicy::prefill(llm::AttentionStep& s) {
  llm::LayerKV& kv = *s.kv;
  const std::int64_t l = kv.length();
  if (kind_ == Kind::h2o) {
    h2o_step(s);
    return;
  }
  if (l <= budget_ && kind_ != Kind::pyramidkv) return;
  switch (kind_) {
    case Kind::streaming: keep_top(kv, streaming_scores(kv, opt_.streaming_sinks), budget_); break;
    case Kind::tova: keep_top(kv, tova_scores(kv, s.q, s.q_pos), budget_); break;
    case Kind::knorm: keep_top(kv, knorm_scores(kv), budget_); break;
    case Kind::snapkv:
      keep_top(kv, snapkv_scores(kv, s.q, s.q_pos, opt_.snapkv_window, opt_.snapkv_kernel), budget_);
      break;
    case Kind::pyramidkv: {
      if (l <= budget_) return;  // kvpress: compression_ratio 0 keeps everything
      const std::int64_t n_layers = s.config ? s.config->num_hidden_layers : 1;
      const std::int64_t n = pyramidkv_layer_budget(l, budget_, opt_.pyramidkv_window,
                                                    opt_.pyramidkv_beta, s.layer, n_layers);
      keep_top(kv, snapkv_scores(kv, s.q, s.q_pos, opt_.pyramidkv_window, opt_.pyramidkv_kernel), n);
      break;
    }
    default: break;
  }
}

void BaselinePolicy::decode(llm::AttentionStep& s) {
  llm::LayerKV& kv = *s.kv;
  const std::int64_t l = kv.length();
  if (kind_ == Kind::h2o) {
    h2o_step(s);
    return;
  }
  if (l <= budget_) return;
  switch (kind_) {
    case Kind::streaming: keep_top(kv, streaming_scores(kv, opt_.streaming_sinks), budget_); break;
    case Kind::tova: keep_top(kv, tova_scores(kv, s.q, s.q_pos), budget_); break;
    default: break;
  }
}

void BaselinePolicy::h2o_step(llm::AttentionStep& s) {
  // H2O: every query's attention adds to its keys' running score (summed over the KV head's
  // query group); the prompt's queries all count. Entries beyond the budget are evicted: the
  // most recent `recent` entries stay, then the heavy hitters by accumulated score.
  llm::LayerKV& kv = *s.kv;
  const std::int64_t l = kv.length();
  const auto li = static_cast<std::size_t>(s.layer);
  if (h2o_acc_.size() <= li) h2o_acc_.resize(li + 1);
  at::Tensor& acc = h2o_acc_[li];
  at::Tensor p = llm::attention_probs(s.q, kv, s.q_pos, probs_options(s));  // [B, H, T, L]
  const std::int64_t b = p.size(0), hkv = kv.kv_heads();
  at::Tensor add = p.sum(2).view({b, hkv, -1, l}).sum(2);
  if (!acc.defined() || acc.size(0) != b) acc = at::zeros_like(add);
  if (acc.size(2) < l) acc = at::constant_pad_nd(acc, {0, l - acc.size(2)}, 0.0);
  acc = acc + add;
  if (l <= budget_) return;
  const auto heavy = static_cast<std::int64_t>(
      std::floor(opt_.h2o_heavy_ratio * static_cast<double>(budget_)));
  const std::int64_t recent = budget_ - heavy;
  at::Tensor pos = kv.positions();
  at::Tensor newest = std::get<0>(pos.max(-1, /*keepdim=*/true));
  at::Tensor is_recent = pos.gt(newest - recent).logical_and(pos.ge(0));
  at::Tensor sc = at::where(is_recent, at::full_like(acc, 1e30), acc);
  at::Tensor idx = keep_top(kv, mask_invalid(kv, sc.to(at::kDouble)), budget_);
  at::Tensor kept = acc.gather(2, idx.clamp_min(0).to(acc.device()));
  acc = kept.masked_fill(idx.lt(0).to(acc.device()), 0.0);
}

std::unique_ptr<llm::CachePolicy> make_baseline(const std::string& name, const BaselineOptions& o,
                                                std::int64_t budget_tokens) {
  using K = BaselinePolicy::Kind;
  K k;
  if (name == "full") k = K::full;
  else if (name == "streaming") k = K::streaming;
  else if (name == "h2o") k = K::h2o;
  else if (name == "tova") k = K::tova;
  else if (name == "snapkv") k = K::snapkv;
  else if (name == "pyramidkv") k = K::pyramidkv;
  else if (name == "knorm") k = K::knorm;
  else
    KVLAB_THROW(UsageError, "unknown baseline method \"{}\"", name);
  return std::make_unique<BaselinePolicy>(k, o, budget_tokens);
}

}  // namespace kvlab::compress
