// FastKV: see fastkv.hpp and docs/kv-methods-rpc-fastkv.md.
#include "kvlab/compress/fastkv.hpp"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "kvlab/core/error.hpp"
#include "kvlab/llm/config.hpp"

namespace kvlab::compress {

namespace {

at::Tensor repeat_kv(const at::Tensor& x, std::int64_t groups) {
  if (groups == 1) return x;
  const auto b = x.size(0), h = x.size(1), l = x.size(2), d = x.size(3);
  return x.unsqueeze(2).expand({b, h, groups, l, d}).reshape({b, h * groups, l, d});
}

}  // namespace

FastKVPolicy::FastKVPolicy(const FastKVOptions& o, std::int64_t budget_tokens)
    : opt_(o), budget_(budget_tokens > 0 ? budget_tokens : 0) {
  KVLAB_THROW_IF(o.tsp_layer < -1, UsageError,
                 "--fastkv-tsp-layer {}: expected a layer index (official 15) or -1 for no "
                 "token-selective propagation",
                 o.tsp_layer);
  KVLAB_THROW_IF(o.mode != "proportional" && o.mode != "constant", UsageError,
                 "--fastkv-mode '{}': expected 'proportional' or 'constant'", o.mode);
  KVLAB_THROW_IF(o.window < 1, UsageError, "--fastkv-window {}: must be >= 1 (official 8)",
                 o.window);
  KVLAB_THROW_IF(o.kernel_size < 1 || o.kernel_size % 2 == 0, UsageError,
                 "--fastkv-kernel-size {}: the pooling kernel must be odd and >= 1 (official 7)",
                 o.kernel_size);
  KVLAB_THROW_IF(o.pooling != "avgpool" && o.pooling != "maxpool", UsageError,
                 "--fastkv-pooling '{}': expected 'maxpool' or 'avgpool'", o.pooling);
  KVLAB_THROW_IF(!(o.tsp_rate > 0.0 && o.tsp_rate <= 1.0), UsageError,
                 "--fastkv-tsp-rate {}: must be in (0, 1] (official 0.2)", o.tsp_rate);
  KVLAB_THROW_IF(!(o.retain_rate > 0.0 && o.retain_rate <= o.tsp_rate), UsageError,
                 "--fastkv-retain-rate {}: must be in (0, --fastkv-tsp-rate = {}] (official 0.1 "
                 "with tsp rate 0.2)",
                 o.retain_rate, o.tsp_rate);
  // The official constructor asserts max_capacity_prompt - window_size > 0.
  KVLAB_THROW_IF(o.max_capacity <= o.window, UsageError,
                 "--fastkv-max-capacity {}: must exceed --fastkv-window {} (official 512 > 8)",
                 o.max_capacity, o.window);
  KVLAB_THROW_IF(o.tsp_length <= o.window, UsageError,
                 "--fastkv-tsp-length {}: must exceed --fastkv-window {} (official 2048 > 8)",
                 o.tsp_length, o.window);
  KVLAB_THROW_IF(budget_ > 0 && budget_ <= o.window, UsageError,
                 "fastkv budget {} tokens: must exceed --fastkv-window {}", budget_, o.window);
}

FastKVSelection FastKVPolicy::select(const at::Tensor& keys, const at::Tensor& queries,
                                     std::int64_t budget, std::int64_t tsp_length,
                                     const FastKVOptions& o, const at::Tensor& valid) {
  FastKVSelection r;
  const std::int64_t b = keys.size(0), hkv = keys.size(1), len = keys.size(2), d = keys.size(3);
  const std::int64_t h = queries.size(1), w = o.window;
  TORCH_CHECK(h % hkv == 0, "FastKVPolicy::select: ", h, " query heads for ", hkv, " KV heads");
  const std::int64_t g = h / hkv;
  if (len < budget) return r;  // official: q_len < max_capacity_prompt -> no compression, no TSP
  TORCH_CHECK(len > w, "FastKVPolicy::select: ", len, " tokens for a window of ", w);
  // Deviation (documented): a budget at or below the window keeps the window only; the official
  // code asks topk for a negative count there and fails.
  budget = std::max(budget, w);
  const c10::ScalarType dt = queries.scalar_type();
  at::Tensor q = queries.narrow(2, queries.size(2) - w, w);
  // The GQA group's window queries batched against their KV head: the products of repeat_kv +
  // matmul without materialising H copies of K.
  at::Tensor a = at::matmul(q.reshape({b, hkv, g * w, d}), keys.to(dt).transpose(2, 3))
                     .view({b, h, w, len}) /
                 std::sqrt(static_cast<double>(d));  // [B, H, w, L]
  // Causal mask inside the w x w block: + finfo(dtype).min above the diagonal, as the official.
  {
    const double lowest = dt == at::kFloat    ? std::numeric_limits<float>::lowest()
                          : dt == at::kDouble ? std::numeric_limits<double>::lowest()
                          : dt == at::kHalf   ? -65504.0
                                              : -3.3895313892515355e38;  // bfloat16
    at::Tensor blk = at::triu(at::full({w, w}, lowest, a.options()), 1);
    a.narrow(3, len - w, w).add_(blk);
    if (valid.defined()) {
      at::Tensor vh = repeat_kv(valid.unsqueeze(-1), g).squeeze(-1);  // [B, H, L]
      a.masked_fill_(vh.unsqueeze(2).logical_not(), lowest);
    }
  }
  a = at::softmax(a, -1, at::kFloat).to(dt);
  at::Tensor s = a.narrow(3, 0, len - w).sum(-2);  // [B, H, L - w]
  if (o.pooling == "avgpool")
    s = at::avg_pool1d(s, {o.kernel_size}, {1}, {o.kernel_size / 2}, false, true);
  else
    s = at::max_pool1d(s, {o.kernel_size}, {1}, {o.kernel_size / 2});
  s = s.view({b, hkv, g, len - w}).sum(-2);  // GQA-aware: one score per KV head
  if (valid.defined())
    s = s.masked_fill(valid.narrow(2, 0, len - w).logical_not(),
                      -std::numeric_limits<double>::infinity());
  at::Tensor top = std::get<1>(s.topk(budget - w, -1));  // score order, highest first
  at::TensorOptions lo = top.options();
  at::Tensor win = at::arange(len - w, len, lo);
  r.kept = at::cat({top, win.view({1, 1, w}).expand({b, hkv, w})}, 2);
  if (tsp_length > 0 && len > tsp_length) {
    const std::int64_t n = std::max(tsp_length, w);
    at::Tensor t = std::get<1>(s.sum(-2).topk(n - w, -1));  // summed over KV heads: [B, n - w]
    r.tsp = std::get<0>(at::cat({t, win.view({1, w}).expand({b, w})}, 1).sort(1));
  }
  return r;
}

void FastKVPolicy::after_attention(llm::AttentionStep& s, const at::Tensor& out) {
  llm::LayerKV& kv = *s.kv;
  const std::int64_t t = s.q.size(2);
  if (s.layer == 0) {
    // A fresh prefill: a multi-token forward whose tokens are all the first layer holds.
    active_ = s.phase == llm::Phase::prefill && kv.length() == t;
    tsp_ = at::Tensor();
    if (active_) {
      prompt_len_ = t;
      last_tsp_len_ = 0;
      const std::int64_t layers = s.config->num_hidden_layers;
      KVLAB_THROW_IF(opt_.tsp_layer >= layers, UsageError,
                     "--fastkv-tsp-layer {} is not a layer of this {}-layer model; choose 0..{} "
                     "(official 15 of 32, about the middle) or -1 for no propagation",
                     opt_.tsp_layer, layers, layers - 1);
    }
  }
  if (!active_ || s.phase != llm::Phase::prefill || kv.length() != t) return;
  const bool proportional = opt_.mode == "proportional";
  const bool after_tsp = opt_.tsp_layer >= 0 && s.layer > opt_.tsp_layer;
  std::int64_t budget = budget_;
  if (budget <= 0) {
    if (proportional) {
      // compress_fastkv: retain_rate up to the TSP layer, retain_rate / tsp_rate after it.
      const double rate = after_tsp ? opt_.retain_rate / opt_.tsp_rate : opt_.retain_rate;
      budget = static_cast<std::int64_t>(static_cast<double>(t) * rate);
    } else {
      budget = opt_.max_capacity;
    }
  }
  std::int64_t tsp_len = 0;
  if (s.layer == opt_.tsp_layer)
    tsp_len = proportional ? static_cast<std::int64_t>(static_cast<double>(t) * opt_.tsp_rate)
                           : opt_.tsp_length;
  if (t <= opt_.window) return;  // nothing outside the window
  at::Tensor valid = kv.has_holes() ? kv.valid() : at::Tensor();
  FastKVSelection sel = select(kv.keys(), s.q, budget, tsp_len, opt_, valid);
  if (!sel.kept.defined()) return;
  kv.gather(sel.kept);
  if (sel.tsp.defined()) {
    tsp_ = sel.tsp;
    last_tsp_len_ = sel.tsp.size(1);
  }
}

std::optional<at::Tensor> FastKVPolicy::select_tokens(std::int64_t layer, const at::Tensor& hidden,
                                                      const at::Tensor& pos) {
  if (!active_ || layer != opt_.tsp_layer || !tsp_.defined()) return std::nullopt;
  at::Tensor idx = tsp_;
  tsp_ = at::Tensor();
  return idx;
}

}  // namespace kvlab::compress
