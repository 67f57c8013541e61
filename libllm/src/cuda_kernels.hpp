// Fused CUDA kernels of the decode path (src/cuda/decode_kernels.cu), compiled only into a
// CUDA build (KVLAB_WITH_CUDA). Private to libllm: callers fall back to ATen where these do not
// apply (CPU tensors, unsupported shapes).
#pragma once

#ifdef KVLAB_WITH_CUDA

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

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

// ---- batch-1 decode step (one token of one sequence) ----

/// Whether the GEMV kernels below take w [N, K] for inputs of dtype t: w on CUDA in t
/// (fp32/bf16/fp16), contiguous and 16-byte aligned, K a multiple of 16 bytes, N a multiple of
/// `rows_multiple`. x must be a contiguous CUDA vector of K elements (checked by each call).
bool gemv_weight_supported(const at::Tensor& w, c10::ScalarType t, int rows_multiple);

/// [W_0 x' + b_0, W_1 x' + b_1, ...] back to back in one [sum N_i] tensor (one to three weights,
/// N_i multiples of 4; an undefined bias is none): q/k/v in one launch. x' = x, or
/// rms_norm(x, norm_w, eps) (rounded as rms_norm above) when norm_w is defined.
at::Tensor gemv(const at::Tensor& x, const std::vector<at::Tensor>& ws,
                const std::vector<at::Tensor>& biases, const at::Tensor& norm_w = {},
                double eps = 0.0);

/// resid + W x (W x rounded to the dtype first, as `x + linear(...)`), shaped like resid.
at::Tensor gemv_residual(const at::Tensor& x, const at::Tensor& w, const at::Tensor& resid);

/// silu(gate x') * (up x'), each intermediate rounded as the ATen expression: [N]; x' as in gemv.
at::Tensor gemv_gate_up(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up,
                        const at::Tensor& norm_w = {}, double eps = 0.0);

/// RoPE (cos/sin [B, 1, D]) of the q and k heads in qkv (B rows of [Hq + 2 Hkv] x D, from gemv
/// or one fused q/k/v GEMM), k and v written into the cache storage [B, Hkv, L, D] at slot[0] and
/// qpos[b] into the positions [B, Hkv, L]; returns q [B, Hq, 1, D].
at::Tensor rope_write(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin,
                      const at::Tensor& slot, const at::Tensor& qpos, std::int64_t hq,
                      std::int64_t hkv, std::int64_t dim, const at::Tensor& ks,
                      const at::Tensor& vs, const at::Tensor& ps);

}  // namespace kvlab::llm::cuda

#endif  // KVLAB_WITH_CUDA
