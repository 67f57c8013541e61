#include "kvlab/llm/attention.hpp"

#include <ATen/ATen.h>
#include <torch/version.h>

#include <cmath>
#include <limits>

#include "kvlab/llm/kv_cache.hpp"
#include "cuda_kernels.hpp"

#if TORCH_VERSION_MAJOR >= 2
#define KVLAB_HAS_SDPA 1
#else
#define KVLAB_HAS_SDPA 0
#endif
// enable_gqa appeared in LibTorch 2.5.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5)
#define KVLAB_SDPA_GQA 1
#else
#define KVLAB_SDPA_GQA 0
#endif

namespace kvlab::llm {

bool has_sdpa() { return KVLAB_HAS_SDPA != 0; }

bool fused_decode_attention(const at::Tensor& q, const at::Tensor& k) {
#ifdef KVLAB_WITH_CUDA
  // The warp-level decode attention masks by position itself (no mask tensor) and was measured
  // faster than SDPA up to batch 16 x 8 KV heads on an H100 (docs/performance.md); beyond that,
  // unmeasured, SDPA's kernel.
  constexpr std::int64_t kMaxPairs = 128;
  return q.dim() == 4 && k.dim() == 4 && q.size(1) % k.size(1) == 0 &&
         q.size(0) * k.size(1) <= kMaxPairs &&
         cuda::decode_attention_supports(q, k) && k.stride(3) == 1 && k.stride(2) == k.size(3);
#else
  (void)q;
  (void)k;
  return false;
#endif
}

at::Tensor attention_mask(const at::Tensor& k_pos, const at::Tensor& q_pos,
                          std::optional<std::int64_t> sliding_window) {
  const std::int64_t b = q_pos.size(0), t = q_pos.size(1);
  at::Tensor kp = k_pos.unsqueeze(2);           // [B, Hkv, 1, L]
  at::Tensor qp = q_pos.view({b, 1, t, 1});     // [B, 1, T, 1]
  at::Tensor m = kp.ge(0).logical_and(kp.le(qp));
  if (sliding_window) m = m.logical_and(kp.gt(qp - *sliding_window));
  // A padding query sees every slot: its output is discarded, and a fully masked row would
  // produce NaN in fused kernels.
  return m.logical_or(qp.lt(0));
}

namespace {

at::Tensor manual(const at::Tensor& qs, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& mask5, std::int64_t g, double scale, bool probs_only) {
  // qs [B, Hkv, G*T, D]; mask5 [B, Hkv, 1, T, L] or undefined.
  const std::int64_t b = qs.size(0), hk = qs.size(1), gt = qs.size(2), l = k.size(2);
  at::Tensor scores = at::matmul(qs, k.transpose(-1, -2)) * scale;  // [B, Hkv, G*T, L]
  if (mask5.defined()) {
    scores = scores.view({b, hk, g, gt / g, l})
                 .masked_fill(mask5.logical_not(), -std::numeric_limits<double>::infinity())
                 .view({b, hk, gt, l});
  }
  at::Tensor p = at::softmax(scores, -1, at::kFloat);
  if (probs_only) return p;
  return at::matmul(p.to(v.scalar_type()), v);
}

}  // namespace

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& k_pos, const at::Tensor& q_pos, const AttentionOptions& opt) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4, "attention: q and k must be 4-D");
  const std::int64_t b = q.size(0), h = q.size(1), t = q.size(2), d = q.size(3);
  const std::int64_t hk = k.size(1), l = k.size(2);
  TORCH_CHECK(h % hk == 0, "attention: ", h, " query heads are not a multiple of ", hk, " KV heads");
  const std::int64_t g = h / hk;
  const double scale = opt.scale > 0 ? opt.scale : 1.0 / std::sqrt(static_cast<double>(d));
  if (l == 0) return at::zeros_like(q);

#ifdef KVLAB_WITH_CUDA
  if (!opt.force_manual && !opt.queries_padded && fused_decode_attention(q, k) && k_pos.stride(2) == 1)
    return cuda::decode_attention(q, k, v, k_pos, q_pos,
                                  opt.sliding_window ? *opt.sliding_window : 0, scale);
#endif
  const bool window_matters = opt.sliding_window && l > *opt.sliding_window;
  // A plain causal prefill: the cache holds exactly this step's T keys, in query order.
  const bool causal_fresh = opt.fresh && l == t && !opt.queries_padded && !window_matters;
  // One query per sequence, newest position, every slot valid and visible.
  const bool need_mask = !causal_fresh && (t > 1 || opt.queries_padded || window_matters ||
                                           (opt.key_holes ? *opt.key_holes
                                                          : k_pos.lt(0).any().item<bool>()));
  at::Tensor qs = q.reshape({b, hk, g * t, d});  // head h = kv_head * G + g (transformers' repeat_kv)

#if KVLAB_HAS_SDPA
  if (!opt.force_manual) {
    if (causal_fresh && t > 1) {
#if KVLAB_SDPA_GQA
      return at::scaled_dot_product_attention(q, k, v, {}, 0.0, true, scale, /*enable_gqa=*/g > 1);
#else
      at::Tensor kr = g > 1 ? k.repeat_interleave(g, 1) : k;
      at::Tensor vr = g > 1 ? v.repeat_interleave(g, 1) : v;
      return at::scaled_dot_product_attention(q, kr, vr, {}, 0.0, true, scale);
#endif
    }
    at::Tensor mask;
    if (need_mask) {
      mask = (opt.mask.defined() ? opt.mask : attention_mask(k_pos, q_pos, opt.sliding_window))
                 .unsqueeze(2)
                 .expand({b, hk, g, t, l})
                 .reshape({b, hk, g * t, l});
    }
    // An undefined tensor is not "no mask" for LibTorch >= 2.x's checks: pass an empty optional.
    const c10::optional<at::Tensor> attn_mask =
        mask.defined() ? c10::optional<at::Tensor>(mask) : c10::nullopt;
    at::Tensor o = at::scaled_dot_product_attention(qs, k, v, attn_mask, 0.0, false, scale);
    return o.reshape({b, h, t, d});  // fused kernels may return a non-contiguous layout
  }
#endif
  at::Tensor mask5;
  if (need_mask || causal_fresh)
    mask5 = (opt.mask.defined() && !causal_fresh ? opt.mask
                                                 : attention_mask(k_pos, q_pos, opt.sliding_window))
                .unsqueeze(2);
  return manual(qs, k, v, mask5, g, scale, false).view({b, h, t, d});
}

at::Tensor attention(const at::Tensor& q, const LayerKV& kv, const at::Tensor& q_pos,
                     const AttentionOptions& opt) {
  AttentionOptions o = opt;
  if (!o.key_holes) o.key_holes = kv.has_holes();
  return attention(q, kv.keys(), kv.values(), kv.positions(), q_pos, o);
}

at::Tensor attention_probs(const at::Tensor& q, const LayerKV& kv, const at::Tensor& q_pos,
                           const AttentionOptions& opt) {
  const std::int64_t b = q.size(0), h = q.size(1), t = q.size(2), d = q.size(3);
  const std::int64_t hk = kv.kv_heads(), l = kv.length(), g = h / hk;
  const double scale = opt.scale > 0 ? opt.scale : 1.0 / std::sqrt(static_cast<double>(d));
  at::Tensor mask5 = attention_mask(kv.positions(), q_pos, opt.sliding_window).unsqueeze(2);
  at::Tensor p = manual(q.reshape({b, hk, g * t, d}), kv.keys(), kv.values(), mask5, g, scale, true);
  return p.view({b, h, t, l});
}

}  // namespace kvlab::llm
