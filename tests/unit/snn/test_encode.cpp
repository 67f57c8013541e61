// Latency and rate encoders.
#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include "kvlab/core/error.hpp"
#include "kvlab/snn/encode.hpp"

using namespace kvlab::snn;

TEST_CASE("latency code: one spike at int(24 - 24 x), zero pixels silent (float2spikes)") {
  const at::Tensor x = at::tensor({1.0f, 0.5f, 0.0f, 0.02f, 0.999f}).view({1, 5});
  const at::Tensor s = latency_encode(x, 30);
  REQUIRE(s.sizes() == at::IntArrayRef({30, 1, 5}));
  const at::Tensor per = s.sum(0).flatten();
  CHECK(at::equal(per, at::tensor({1.f, 1.f, 0.f, 1.f, 1.f})));
  CHECK(s[0][0][0].item<float>() == 1.f);
  CHECK(s[12][0][1].item<float>() == 1.f);
  CHECK(s[23][0][3].item<float>() == 1.f);  // 24 - 0.48 = 23.52 -> 23
  CHECK(s[0][0][4].item<float>() == 1.f);   // 0.024 -> 0
  // A window shorter than the code drops late spikes.
  CHECK(latency_encode(x, 10).sum().item<double>() == 2.0);  // steps 0 and 0 only
  CHECK_THROWS_AS(latency_encode(at::zeros({3}), 10), kvlab::UsageError);
}

TEST_CASE("rate code: Bernoulli with p = max_rate * x") {
  at::manual_seed(1);
  const at::Tensor x = at::tensor({0.0f, 0.25f, 1.0f}).view({1, 3});
  const at::Tensor s = rate_encode(x, 4000, 0.8);
  const at::Tensor rate = s.mean(0).flatten();
  CHECK(rate[0].item<double>() == 0.0);
  CHECK(rate[1].item<double>() == doctest::Approx(0.2).epsilon(0.1));
  CHECK(rate[2].item<double>() == doctest::Approx(0.8).epsilon(0.05));
  CHECK_THROWS_AS(rate_encode(x, 10, 1.5), kvlab::UsageError);
}
