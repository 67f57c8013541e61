// Reasoning Path Compression: see rpc.hpp and docs/kv-methods-rpc-fastkv.md.
#include "kvlab/compress/rpc.hpp"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "kvlab/core/error.hpp"

namespace kvlab::compress {

namespace {

// repeat_kv: attention head h reads KV head h / G.
at::Tensor repeat_kv(const at::Tensor& x, std::int64_t groups) {
  if (groups == 1) return x;
  const auto b = x.size(0), h = x.size(1), l = x.size(2), d = x.size(3);
  return x.unsqueeze(2).expand({b, h, groups, l, d}).reshape({b, h * groups, l, d});
}

// q [B, H, T, D] . k [B, Hkv, L, D]^T -> [B, H, T, L], the GQA group's queries batched against
// their KV head (the same products as repeat_kv + matmul, without materialising H copies of K).
at::Tensor grouped_scores(const at::Tensor& q, const at::Tensor& k) {
  const auto b = q.size(0), h = q.size(1), t = q.size(2), d = q.size(3);
  const auto hkv = k.size(1), l = k.size(2);
  at::Tensor qg = q.reshape({b, hkv, (h / hkv) * t, d});
  return at::matmul(qg, k.transpose(2, 3)).view({b, h, t, l});
}

at::Tensor pool1d(const at::Tensor& s, const std::string& pooling, std::int64_t kernel) {
  if (pooling == "avgpool")
    return at::avg_pool1d(s, {kernel}, {1}, {kernel / 2}, /*ceil_mode=*/false,
                          /*count_include_pad=*/true);
  return at::max_pool1d(s, {kernel}, {1}, {kernel / 2});
}

}  // namespace

RpcPolicy::RpcPolicy(const RpcOptions& o, std::int64_t budget_tokens)
    : opt_(o), budget_(budget_tokens > 0 ? budget_tokens : 0) {
  KVLAB_THROW_IF(o.interval < 1, UsageError,
                 "--rpc-interval {}: the compression interval P must be >= 1 (official 1024)",
                 o.interval);
  KVLAB_THROW_IF(o.window < 1 || o.window > o.interval, UsageError,
                 "--rpc-window {}: the selector window R must be in [1, P = {}] (official 32)",
                 o.window, o.interval);
  KVLAB_THROW_IF(!(o.ratio >= 1.0) || !std::isfinite(o.ratio), UsageError,
                 "--rpc-ratio {}: the compression ratio c must be >= 1 (official 4)", o.ratio);
  t_ = static_cast<std::int64_t>(static_cast<double>(o.interval) / o.ratio);
  KVLAB_THROW_IF(t_ < 1, UsageError,
                 "--rpc-interval {} / --rpc-ratio {} keeps T = {} tokens per compression; "
                 "choose P >= c",
                 o.interval, o.ratio, t_);
  KVLAB_THROW_IF(o.selectors != "recent", UsageError,
                 "--rpc-selectors '{}': only 'recent' (the last R decode queries) is supported, as "
                 "in the official decode path",
                 o.selectors);
  KVLAB_THROW_IF(o.aggregation != "all" && o.aggregation != "group", UsageError,
                 "--rpc-aggregation '{}': expected 'all' or 'group'", o.aggregation);
  KVLAB_THROW_IF(o.pooling != "avgpool" && o.pooling != "maxpool", UsageError,
                 "--rpc-pooling '{}': expected 'avgpool' or 'maxpool'", o.pooling);
  KVLAB_THROW_IF(o.kernel_size < 1 || o.kernel_size % 2 == 0, UsageError,
                 "--rpc-kernel-size {}: the pooling kernel must be odd and >= 1 (official 7)",
                 o.kernel_size);
  KVLAB_THROW_IF(!o.keep_prompt, UsageError,
                 "--rpc-keep-prompt false: RPC never compresses the prompt (official behaviour); "
                 "use a prefill method (snapkv, fastkv) for the prompt");
}

void RpcPolicy::reset() {
  layers_.clear();
  compressions_ = 0;
}

RpcPolicy::LayerState& RpcPolicy::state(std::int64_t layer) {
  if (static_cast<std::int64_t>(layers_.size()) <= layer)
    layers_.resize(static_cast<std::size_t>(layer + 1));
  return layers_[static_cast<std::size_t>(layer)];
}

void RpcPolicy::before_attention(llm::AttentionStep& s) {
  LayerState& st = state(s.layer);
  const std::int64_t len = s.kv->length();
  if (s.phase == llm::Phase::prefill) {
    // Official: any multi-token forward records the whole cache as the prompt and restarts.
    st.prompt_len = len;
    st.kept = 0;
    st.compressions = 0;
    st.queries.clear();
    st.trigger = false;
    return;
  }
  if (st.prompt_len < 0) st.prompt_len = 0;  // decoding without a prompt (official: 0)
  // Tokens generated since the last compression, the R carried over excluded; the official code
  // counts the cache before this token's update: target = L - prompt - num_comp * T - R.
  const std::int64_t before = len - 1;
  const std::int64_t target = before - st.prompt_len - st.kept - opt_.window;
  const std::int64_t p = opt_.interval, r = opt_.window;
  // Official: cache the query when target > P - R (R - 1 queries, the current one among them),
  // then append the current one again. Fixed: cache when target >= P - R (the last R queries).
  const bool cache_it = opt_.duplicate_current_query ? target > p - r : target >= p - r;
  // A copy: the runtime may reuse its query buffer between steps (static decode paths).
  if (cache_it) st.queries.push_back(s.q.clone());
  st.trigger = target == p - 1;
}

void RpcPolicy::after_attention(llm::AttentionStep& s, const at::Tensor& out) {
  LayerState& st = state(s.layer);
  if (!st.trigger) return;
  st.trigger = false;
  std::vector<at::Tensor> sel = st.queries;
  if (opt_.duplicate_current_query || sel.empty()) sel.push_back(s.q);
  st.queries.clear();
  compress_layer(*s.kv, st, at::cat(sel, 2));
}

void RpcPolicy::compress_layer(llm::LayerKV& kv, LayerState& st, const at::Tensor& selectors) {
  std::int64_t keep = st.kept + t_;
  if (budget_ > 0) keep = std::min(keep, budget_);
  const std::int64_t len = kv.length(), r = opt_.window, prompt = st.prompt_len;
  at::Tensor valid = kv.has_holes() ? kv.valid() : at::Tensor();
  at::Tensor idx = select(kv.keys(), selectors, prompt, r, keep, opt_, valid);  // [B, 1|Hkv, k]
  const std::int64_t b = kv.batch(), h = kv.kv_heads();
  at::TensorOptions lo = idx.options();
  at::Tensor full = at::cat({at::arange(prompt, lo).view({1, 1, prompt}).expand({b, h, prompt}),
                             (idx + prompt).expand({b, h, keep}),
                             at::arange(len - r, len, lo).view({1, 1, r}).expand({b, h, r})},
                            2);
  kv.gather(full);
  // Room for the next interval, so the P appends until the next compression never reallocate.
  kv.reserve(kv.length() + opt_.interval);
  st.kept = keep;
  ++st.compressions;
  ++compressions_;
}

std::int64_t RpcPolicy::static_decode_steps(const llm::KVCache& cache) const {
  // Every layer compresses on the same schedule; the decode step whose append makes the cache
  // prompt + kept + R + P long triggers (before_attention: target == P - 1).
  if (cache.num_layers() == 0) return -1;
  const std::int64_t len = cache.layer(0).length();
  std::int64_t prompt = 0, kept = 0;
  if (!layers_.empty()) {
    const LayerState& st = layers_.front();
    for (const LayerState& o : layers_)
      if (o.prompt_len != st.prompt_len || o.kept != st.kept || o.trigger) return -1;
    prompt = std::max<std::int64_t>(st.prompt_len, 0);
    kept = st.kept;
  }
  const std::int64_t n = prompt + kept + opt_.window + opt_.interval - len;
  return n >= 1 ? n : -1;
}

void RpcPolicy::after_static_decode(llm::KVCache& cache, const std::vector<at::Tensor>& queries) {
  TORCH_CHECK(static_cast<std::int64_t>(queries.size()) == cache.num_layers(),
              "RpcPolicy::after_static_decode: one query buffer per layer expected");
  const std::int64_t r = opt_.window;
  for (std::int64_t li = 0; li < cache.num_layers(); ++li) {
    LayerState& st = state(li);
    if (st.prompt_len < 0) st.prompt_len = 0;
    // The selectors as the eager hooks collect them: queries cached by earlier eager steps, then
    // the recorded ones; the last R (fixed), or the last R-1 and the current one again (the
    // official quirk).
    std::vector<at::Tensor> parts = st.queries;
    parts.push_back(queries[static_cast<std::size_t>(li)]);
    at::Tensor all = at::cat(parts, 2);
    st.queries.clear();
    const std::int64_t n = all.size(2);
    at::Tensor sel;
    if (opt_.duplicate_current_query) {
      const std::int64_t m = std::min(n, r - 1);  // the last R-1, the current one among them
      sel = at::cat({all.narrow(2, n - m, m), all.narrow(2, n - 1, 1)}, 2);
    } else {
      sel = all.narrow(2, n - std::min(n, r), std::min(n, r));
    }
    compress_layer(cache.layer(li), st, sel);
  }
}

at::Tensor RpcPolicy::select(const at::Tensor& keys, const at::Tensor& selectors,
                             std::int64_t prompt_len, std::int64_t window, std::int64_t keep,
                             const RpcOptions& o, const at::Tensor& valid) {
  const std::int64_t b = keys.size(0), hkv = keys.size(1), len = keys.size(2), d = keys.size(3);
  const std::int64_t h = selectors.size(1);
  TORCH_CHECK(h % hkv == 0, "RpcPolicy::select: ", h, " query heads for ", hkv, " KV heads");
  const std::int64_t g = h / hkv;
  const std::int64_t region = len - window - prompt_len;
  TORCH_CHECK(region >= keep && keep >= 0, "RpcPolicy::select: top-", keep, " of a region of ",
              region, " tokens");
  // As RPCCluster.compress_kv, in the tensors' dtype: scores of every selector against the
  // compressible region [prompt, L - R), softmax over that region only (fp32, cast back), summed
  // over the selectors.
  at::Tensor a = grouped_scores(selectors.to(keys.scalar_type()), keys.narrow(2, prompt_len, region)) /
                 std::sqrt(static_cast<double>(d));
  at::Tensor vr;
  if (valid.defined()) {
    vr = repeat_kv(valid.narrow(2, prompt_len, region).unsqueeze(-1), g).squeeze(-1);  // [B,H,Lc]
    a = a.masked_fill(vr.unsqueeze(2).logical_not(), -1e30);
  }
  a = at::softmax(a, -1, at::kFloat).to(keys.scalar_type());
  at::Tensor s = a.sum(-2);  // [B, H, Lc]
  if (o.aggregation == "all")
    s = s.view({b, -1, 1, region}).mean(-3);  // [B, 1, Lc]
  else
    s = s.view({b, -1, g, region}).mean(-2);  // [B, Hkv, Lc]
  s = pool1d(s, o.pooling, o.kernel_size);
  if (valid.defined()) {
    at::Tensor vk = valid.narrow(2, prompt_len, region);
    if (o.aggregation == "all") vk = vk.any(1, /*keepdim=*/true);
    s = s.masked_fill(vk.logical_not(), -std::numeric_limits<double>::infinity());
  }
  return std::get<0>(std::get<1>(s.topk(keep, -1, /*largest=*/true)).sort(-1));
}

}  // namespace kvlab::compress
