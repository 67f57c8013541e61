// Bit-packed XNOR + popcount kernels for binary convolution and linear layers on the CPU: the
// deployment path of bnn-train's networks (a CPU inference path: networks trained on CUDA run it
// after moving to the CPU). A +1 is a set bit, a -1 a clear bit; channels are packed 64 to a
// 64-bit word, with the unused high bits of the last word zero in activations and weights alike,
// so they never count.
//
// For +-1 vectors a and w of length C: a.w = C - 2 * popcount(a XOR w). The float-simulated
// network pads with zeros (a padded tap contributes 0); the convolution kernel reads padded pixels
// as all-zero words (-1 values, contributing C - 2 popcount(w_tap) = -sum(w_tap)) and subtracts
// exactly that from the border outputs afterwards, so the packed result equals the float
// convolution of the same +-1 tensors bit for bit (both are small integers). Scales (mean|W| per
// output channel, XNOR-Net's K) are applied afterwards in float by the caller, identically in
// both paths.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace kvlab::binary {

struct PackedWeights {
  std::int64_t out = 0, in = 0, kh = 1, kw = 1;
  std::int64_t words = 0;             ///< 64-bit words per (tap) channel vector: ceil(in / 64)
  std::vector<std::uint64_t> bits;    ///< [out][kh][kw][words]
  /// C - 2 popcount(bits of the tap) = the dot product of an all -1 input with the tap's weights
  /// (what a zero-padding pixel read as a zero word adds): [out][kh][kw].
  std::vector<std::int32_t> pad_dot;
};

/// Packs a float weight tensor [out, in, kh, kw] (or [out, in] for linear) by sign (w >= 0 -> 1).
PackedWeights pack_weights(const at::Tensor& w);

/// Activations packed for the convolution kernel, zero padding included: per image, padded row
/// (h + 2 pad of them) and 64-channel word, `row` words: the w + 2 pad pixels of the padded row,
/// then zero slack so that vector loads never leave the buffer. Padding pixels are zero words.
struct PackedImage {
  std::int64_t n = 0, channels = 0, h = 0, w = 0, pad = 0, words = 0, row = 0;
  std::vector<std::uint64_t> bits;  ///< [n][h + 2 pad][words][row]
  const std::uint64_t* line(std::int64_t img, std::int64_t y, std::int64_t word) const {
    return bits.data() + ((img * (h + 2 * pad) + y) * words + word) * row;
  }
};

/// Packs a float activation tensor [N, C, H, W] (on any device; read on the CPU) by sign
/// (x >= 0 -> 1) for a convolution with zero padding `pad`.
PackedImage pack_image(const at::Tensor& x, int pad);

/// Packs a float activation tensor [N, C] by sign (x >= 0 -> 1) into a uint64 tensor stored as
/// int64 [N, words] (the linear layer's input).
at::Tensor pack_activations(const at::Tensor& x);

/// Binary convolution of packed activations with packed weights (stride `stride`, the padding
/// the image was packed with): float32 [N, out, Ho, Wo] on the CPU holding the exact integer dot
/// products of the +-1 values.
at::Tensor binary_conv2d_packed(const PackedImage& x, const PackedWeights& w, int stride);

/// Binary linear layer: packed [N, words] times packed [out, in] -> float32 [N, out] dots.
at::Tensor binary_linear_packed(const at::Tensor& x_packed, std::int64_t features,
                                const PackedWeights& w);

/// Which convolution kernel runs on this CPU ("avx512 vpopcntdq", "hardware popcnt" or
/// "portable").
const char* popcount_kind();

}  // namespace kvlab::binary
