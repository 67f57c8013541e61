// Fused forward of a packed BinaryMoS layer for a few rows of x (the decode case), CPU side
// (mos_kernels_cpu.cpp; the CUDA kernels are in cuda/mos_kernels.cu). Private to libbinary:
// PackedMosLinear::forward (mos.cpp) picks these for small M and the tile-unpack ATen path
// otherwise. Docs: docs/binarize.md, "Storage and inference".
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "kvlab/binary/mos.hpp"

namespace kvlab::binary::detail {

/// y = round(round(round((x * s_in) sign(W)^T) * s_out) + bias) for x [M, in] (contiguous, CPU,
/// fp32/bf16/fp16), rounding to x's dtype where the ATen expression of mos_forward materialises
/// a tensor, accumulating in fp32. bits: [out, ceil(in/8)] uint8 contiguous (LSB first, 1 = +1;
/// padding bits are ignored). s_in [E, in], s_out [E, out], router [E, in] (E > 1; else
/// undefined), bias [out] or undefined, all in x's dtype and contiguous. Returns [M, out].
/// Multithreaded over output rows (at::parallel_for); ISA as mos_cpu_isa().
at::Tensor mos_gemv_cpu(const at::Tensor& x, const at::Tensor& bits, std::int64_t in,
                        const at::Tensor& s_in, const at::Tensor& s_out, const at::Tensor& router,
                        const at::Tensor& bias);

/// sign bits of packed [rows, ceil(in/8)] (CPU, any strides) as +-1 [rows, in] of `dtype`,
/// written directly (no lookup-table gather); multithreaded.
at::Tensor unpack_signs_cpu(const at::Tensor& packed, std::int64_t in, c10::ScalarType dtype);

}  // namespace kvlab::binary::detail
