// Fused CUDA forward of a packed BinaryMoS layer for a few rows of x (cuda/mos_kernels.cu),
// compiled only into a CUDA build (KVLAB_WITH_CUDA). Private to libbinary: PackedMosLinear
// (mos.cpp) calls it for small M, the tile-unpack ATen path otherwise.
#pragma once

#ifdef KVLAB_WITH_CUDA

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace kvlab::binary::cuda {

/// Most experts the router kernel takes (shared-memory arrays); = binary::kMosCudaMaxExperts
/// (mos.hpp, static_assert in mos.cpp).
constexpr int kMaxExperts = 64;

/// y = round(round(round((x * s_in) sign(W)^T) * s_out) + bias), rounded to x's dtype where
/// mos_forward's ATen expression materialises, fp32 accumulation. x [M, in] contiguous CUDA
/// (fp32/bf16/fp16, any M >= 1; fastest for M <= 8); bits [out, k16] uint8, rows padded to a
/// multiple of 16 bytes (k16 >= ceil(in/8)); s_in [E, in], s_out [E, out], router [E, in]
/// (E > 1, E <= kMosCudaMaxExperts; else undefined), bias [out] or undefined, all contiguous in
/// x's dtype. Returns [M, out]. Launches on the current stream; no host synchronisation and no
/// host memory (CUDA-graph capture safe).
at::Tensor mos_gemv(const at::Tensor& x, const at::Tensor& bits, std::int64_t in,
                    const at::Tensor& s_in, const at::Tensor& s_out, const at::Tensor& router,
                    const at::Tensor& bias);

}  // namespace kvlab::binary::cuda

#endif  // KVLAB_WITH_CUDA
