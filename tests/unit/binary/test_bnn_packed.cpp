// The bit-packed XNOR + popcount kernels give exactly the float convolution / matmul of the same
// +-1 tensors (zero padding, strides, channel counts that are not multiples of 64).
#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include "kvlab/binary/bnn_packed.hpp"
#include "kvlab/core/error.hpp"

using namespace kvlab;

namespace {
at::Tensor pm1(const at::Tensor& x) { return (x >= 0).to(at::kFloat).mul(2).sub(1); }
}  // namespace

TEST_CASE("packed binary conv equals float conv of +-1 tensors exactly") {
  at::manual_seed(3);
  // Channel counts that are not multiples of 64, output channels that are not multiples of the
  // 4-channel tile, rows wider than the 32-pixel tile with ragged tails, non-square images,
  // strides 1 and 2 (AVX-512 kernel) and 3 (scalar kernel), padding 0-2, 1x1 to 5x5 kernels.
  struct Case { std::int64_t n, c, h, w, out; int k, stride, pad; };
  for (const Case& t : {Case{2, 3, 7, 7, 5, 3, 1, 1}, Case{1, 64, 9, 9, 8, 3, 2, 1},
                        Case{2, 100, 6, 6, 7, 3, 1, 1}, Case{1, 130, 5, 5, 4, 1, 1, 0},
                        Case{1, 256, 8, 8, 3, 3, 2, 1}, Case{3, 17, 5, 5, 2, 3, 1, 0},
                        Case{1, 64, 12, 45, 6, 3, 1, 1}, Case{1, 70, 11, 70, 9, 3, 2, 1},
                        Case{2, 40, 10, 13, 5, 5, 1, 2}, Case{1, 33, 9, 37, 3, 3, 3, 1},
                        Case{1, 128, 7, 7, 33, 3, 1, 1}, Case{1, 64, 56, 56, 64, 3, 1, 1}}) {
    CAPTURE(t.c);
    CAPTURE(t.w);
    CAPTURE(t.out);
    CAPTURE(t.k);
    CAPTURE(t.stride);
    CAPTURE(t.pad);
    const at::Tensor x = pm1(at::randn({t.n, t.c, t.h, t.w}));
    const at::Tensor w = at::randn({t.out, t.c, t.k, t.k});
    const at::Tensor ref = at::conv2d(x, pm1(w), {}, t.stride, t.pad);
    const binary::PackedWeights pw = binary::pack_weights(w);
    const at::Tensor got = binary::binary_conv2d_packed(binary::pack_image(x, t.pad), pw, t.stride);
    REQUIRE(got.sizes() == ref.sizes());
    CHECK(at::equal(got, ref));
  }
}

TEST_CASE("packing reads the sign of raw floats: zero and -0 count as +1") {
  at::Tensor x = at::randn({1, 70, 5, 19});
  x.index_put_({0, 3, 2, at::indexing::Slice()}, 0.0f);
  x.index_put_({0, 65, 1, at::indexing::Slice()}, -0.0f);
  const at::Tensor w = at::randn({4, 70, 3, 3});
  const at::Tensor ref = at::conv2d(pm1(x), pm1(w), {}, 1, 1);
  const at::Tensor got = binary::binary_conv2d_packed(binary::pack_image(x, 1), binary::pack_weights(w), 1);
  CHECK(at::equal(got, ref));
  CHECK_THROWS_AS(binary::binary_conv2d_packed(binary::pack_image(x.slice(1, 0, 69), 1),
                                               binary::pack_weights(w), 1),
                  UsageError);
}

TEST_CASE("packed binary linear equals float matmul of +-1 tensors exactly") {
  at::manual_seed(4);
  for (std::int64_t f : {1, 63, 64, 65, 200}) {
    CAPTURE(f);
    const at::Tensor x = pm1(at::randn({5, f}));
    const at::Tensor w = at::randn({7, f});
    const at::Tensor ref = at::matmul(x, pm1(w).t());
    const at::Tensor got =
        binary::binary_linear_packed(binary::pack_activations(x), f, binary::pack_weights(w));
    CHECK(at::equal(got, ref));
  }
}

TEST_CASE("packing: a zero counts as +1 and unused high bits stay clear") {
  const at::Tensor x = at::tensor({0.0f, -1.0f, 2.0f}).view({1, 3});
  const at::Tensor p = binary::pack_activations(x);
  CHECK(p.item<std::int64_t>() == 0b101);
  CHECK(std::string(binary::popcount_kind()).size() > 0);
}
