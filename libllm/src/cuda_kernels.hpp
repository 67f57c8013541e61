// Fused CUDA kernels of the decode path (src/cuda/decode_kernels.cu), compiled only into a
// CUDA build (KVLAB_WITH_CUDA). Private to libllm: callers fall back to ATen where these do not
// apply (CPU tensors, unsupported shapes).
#pragma once

#ifdef KVLAB_WITH_CUDA

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace kvlab::llm::cuda {

/// w * (x_f32 * rsqrt(mean(x_f32^2) + eps)).to(x's dtype), rounded as that ATen expression.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps);

/// x * cos + rotate_half(x) * sin for x [B, H, T, D] (any strides, D contiguous), cos/sin
/// [B, T, D]; each product and the sum rounded to x's dtype as ATen does. Returns it contiguous.
at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

/// Whether decode_attention handles q [B, H, 1, D] against k [B, Hkv, L, D].
bool decode_attention_supports(const at::Tensor& q, const at::Tensor& k);

/// softmax(q k^T * scale) v for one query per sequence over the slots a query may see (slot
/// position >= 0, <= the query's, and > query - window when window > 0), split over the slots
/// and merged by log-sum-exp. q [B, H, 1, D]; k, v [B, Hkv, L, D] (rows contiguous); kpos
/// [B, Hkv, L] int64; qpos [B, 1] int64. Returns [B, H, 1, D] in q's dtype.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& kpos, const at::Tensor& qpos, std::int64_t window,
                            double scale);

}  // namespace kvlab::llm::cuda

#endif  // KVLAB_WITH_CUDA
