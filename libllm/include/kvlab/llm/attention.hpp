// Scaled dot-product attention of queries over one layer's KV cache, with grouped-query attention
// (GQA) done without materialising repeated K/V: the G query heads that share a KV head are
// stacked along the query axis ([B, Hkv, G*T, D]) and attend to the KV head once.
//
// Masking is by ORIGINAL position (see kv_cache.hpp): query at p sees slot s iff pos[s] >= 0,
// pos[s] <= p and (sliding window) pos[s] > p - window. Query positions must increase along T.
// Paths: at::scaled_dot_product_attention on LibTorch >= 2.0 (flash / memory-efficient kernels
// on CUDA when no mask is needed), a manual matmul-softmax-matmul (softmax in float32, like
// transformers' eager attention) on LibTorch 1.13 and for attention_probs.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace kvlab::llm {

class LayerKV;

struct AttentionOptions {
  double scale = 0.0;                          ///< 0: 1 / sqrt(head_dim)
  std::optional<std::int64_t> sliding_window;  ///< Mistral
  bool queries_padded = false;                 ///< some q_pos < 0 (left padding)
  /// The cache held nothing before this step's keys were appended (and nothing was evicted
  /// since): a plain causal prefill, which needs no explicit mask.
  bool fresh = false;
  /// Some key slot is empty (pos < 0); nullopt: checked (synchronises a GPU).
  std::optional<bool> key_holes;
  bool force_manual = false;  ///< use the manual path even where SDPA exists (tests)
  /// A precomputed attention_mask(k_pos, q_pos, sliding_window) [B, Hkv, T, L], reused across
  /// layers that share their slot positions (DecodeGraph); undefined: computed when needed.
  at::Tensor mask;
};

/// out [B, H, T, D] = softmax(q k^T * scale + mask) v over the cache's slots in use.
/// q [B, H, T, D] (H a multiple of the cache's KV heads), q_pos [B, T] int64 on q's device.
at::Tensor attention(const at::Tensor& q, const LayerKV& kv, const at::Tensor& q_pos,
                     const AttentionOptions& opt);

/// The same attention over explicit k, v [B, Hkv, L, D] and key positions [B, Hkv, L].
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& k_pos, const at::Tensor& q_pos, const AttentionOptions& opt);

/// Visibility mask [B, Hkv, T, L] (true = attend) from key and query positions.
at::Tensor attention_mask(const at::Tensor& k_pos, const at::Tensor& q_pos,
                          std::optional<std::int64_t> sliding_window);

/// Attention probabilities [B, H, T, L] in float32 (masked entries 0), for policies that score
/// entries by attention (SnapKV, H2O, TOVA, RPC). Always the manual path.
at::Tensor attention_probs(const at::Tensor& q, const LayerKV& kv, const at::Tensor& q_pos,
                           const AttentionOptions& opt);

/// Whether this build uses at::scaled_dot_product_attention (LibTorch >= 2.0).
bool has_sdpa();

/// Whether attention() runs q [B, H, 1, D] against k [B, Hkv, L, D] through kvlab's fused CUDA
/// decode kernel (split over the slots, masked by position; a CUDA build only).
bool fused_decode_attention(const at::Tensor& q, const at::Tensor& k);

}  // namespace kvlab::llm
