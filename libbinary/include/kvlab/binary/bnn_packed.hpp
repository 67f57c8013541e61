// Bit-packed XNOR + popcount kernels for binary convolution and linear layers on the CPU: the
// deployment path of bnn-train's networks. A +1 is a set bit, a -1 a clear bit; channels are packed
// 64 to a word per pixel ([N, H, W, words] for activations, [out, kh, kw, words] for weights),
// with the unused high bits of the last word zero in both, so they never count.
//
// For +-1 vectors a and w of length C: a.w = C - 2 * popcount(a XOR w). Zero padding (which the
// float-simulated network uses: a padded tap contributes 0) is handled exactly by counting only the
// taps inside the image, so the packed result equals the float convolution of the same +-1 tensors
// bit for bit (both are small integers). Scales (mean|W| per output channel, XNOR-Net's K) are
// applied afterwards in float by the caller, identically in both paths.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace kvlab::binary {

struct PackedWeights {
  std::int64_t out = 0, in = 0, kh = 1, kw = 1;
  std::int64_t words = 0;             ///< 64-bit words per (tap) channel vector: ceil(in / 64)
  std::vector<std::uint64_t> bits;    ///< [out][kh][kw][words]
  /// The same bits transposed to [kh][kw][words][out_pad] (out padded to a multiple of 32 with
  /// zero words) for the AVX-512 kernel, which vectorises over output channels.
  std::int64_t out_pad = 0;
  std::vector<std::uint64_t> bits_t;
};

/// Packs a float weight tensor [out, in, kh, kw] (or [out, in] for linear) by sign (w >= 0 -> 1).
PackedWeights pack_weights(const at::Tensor& w);

/// Packs a float activation tensor [N, C, H, W] (or [N, C]) by sign (x >= 0 -> 1) into a uint64
/// tensor stored as int64: [N, H, W, words] (or [N, words]).
at::Tensor pack_activations(const at::Tensor& x);

/// Binary convolution of packed activations ([N, H, W, words], `channels` real channels) with
/// packed weights: returns float32 [N, out, Ho, Wo] holding the exact integer dot products of the
/// +-1 values with zero padding `pad` and stride `stride`.
at::Tensor binary_conv2d_packed(const at::Tensor& x_packed, std::int64_t channels,
                                const PackedWeights& w, int stride, int pad);

/// Binary linear layer: packed [N, words] times packed [out, in] -> float32 [N, out] dots.
at::Tensor binary_linear_packed(const at::Tensor& x_packed, std::int64_t features,
                                const PackedWeights& w);

/// Which kernel runs on this CPU ("avx512 vpopcntdq", "hardware popcnt" or "portable").
const char* popcount_kind();

}  // namespace kvlab::binary
