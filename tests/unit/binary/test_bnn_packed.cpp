// The bit-packed XNOR + popcount kernels give exactly the float convolution / matmul of the same
// +-1 tensors (zero padding, strides, channel counts that are not multiples of 64).
#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include "kvlab/binary/bnn_packed.hpp"

using namespace kvlab;

namespace {
at::Tensor pm1(const at::Tensor& x) { return (x >= 0).to(at::kFloat).mul(2).sub(1); }
}  // namespace

TEST_CASE("packed binary conv equals float conv of +-1 tensors exactly") {
  at::manual_seed(3);
  struct Case { std::int64_t n, c, h, out; int k, stride, pad; };
  for (const Case& t : {Case{2, 3, 7, 5, 3, 1, 1}, Case{1, 64, 9, 8, 3, 2, 1},
                        Case{2, 100, 6, 7, 3, 1, 1}, Case{1, 130, 5, 4, 1, 1, 0},
                        Case{1, 256, 8, 3, 3, 2, 1}, Case{3, 17, 5, 2, 3, 1, 0}}) {
    CAPTURE(t.c);
    CAPTURE(t.stride);
    const at::Tensor x = pm1(at::randn({t.n, t.c, t.h, t.h}));
    const at::Tensor w = at::randn({t.out, t.c, t.k, t.k});
    const at::Tensor ref = at::conv2d(x, pm1(w), {}, t.stride, t.pad);
    const binary::PackedWeights pw = binary::pack_weights(w);
    const at::Tensor got =
        binary::binary_conv2d_packed(binary::pack_activations(x), t.c, pw, t.stride, t.pad);
    REQUIRE(got.sizes() == ref.sizes());
    CHECK(at::equal(got, ref));
  }
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
