// The ANTLR and LIF neurons' forward simulation against a plain scalar re-implementation of the
// reference equations, the auto-scaled gain, and the exactness of the early stop.
#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "kvlab/core/error.hpp"
#include "kvlab/snn/network.hpp"

using namespace kvlab;
using namespace kvlab::snn;

namespace {

// Scalar ANTLR layer, written directly from antlr.py's forward loop.
void antlr_ref(const at::Tensor& x /*[T,B,In]*/, const at::Tensor& w, const at::Tensor& b,
               const NeuronOptions& n, at::Tensor& s_out, at::Tensor& v_out, at::Tensor& vp_out) {
  const auto T = x.size(0), B = x.size(1), In = x.size(2), N = w.size(0);
  s_out = at::zeros({T, B, N});
  v_out = at::zeros({T, B, N});
  vp_out = at::zeros({T, B, N});
  auto X = x.accessor<float, 3>();
  auto W = w.accessor<float, 2>();
  auto S = s_out.accessor<float, 3>();
  auto V = v_out.accessor<float, 3>();
  auto VP = vp_out.accessor<float, 3>();
  for (int64_t bb = 0; bb < B; ++bb)
    for (int64_t k = 0; k < N; ++k) {
      double I = 0, v = 0, s = 0;
      for (int64_t t = 0; t < T; ++t) {
        double syn = 0;
        for (int64_t j = 0; j < In; ++j) syn += W[k][j] * X[t][bb][j];
        const double iprev = I, vprev = v, sprev = s;
        I = n.beta_i * syn + (t ? iprev * (1 - sprev) * n.alpha_i : 0.0);
        v = I * n.beta_v + b[k].item<double>() * n.beta_bias + (t ? vprev * (1 - sprev) * n.alpha_v : 0.0);
        const double vp = t ? v - vprev * (1 - sprev) : v;
        s = v >= 1 ? 1 : 0;
        S[t][bb][k] = static_cast<float>(s);
        V[t][bb][k] = static_cast<float>(v);
        VP[t][bb][k] = static_cast<float>(std::max(vp, 1e-2));
      }
    }
}

}  // namespace

TEST_CASE("beta_auto: one input spike of weight 1 peaks exactly at the threshold") {
  for (int64_t T : {300, 50}) {
    const NeuronOptions n = resolve_neuron(NeuronOptions{}, T);
    Network net = make_network({1, 1}, NeuronModel::antlr, NeuronOptions{}, T);
    net.layers[0].weight.fill_(1.0);
    at::Tensor x = at::zeros({T, 1, 1});
    x[0][0][0] = 1;
    const auto fw = forward(net, x);
    const double peak = fw.layers[0].v.max().item<double>();
    CHECK(peak == doctest::Approx(1.0).epsilon(1e-5));
    CHECK(n.beta_v == doctest::Approx(n.beta_bias));
    if (T == 300) {
      // eps(t) = (t+1) 0.99^t for alpha_i = alpha_v peaks at t = 99 and 100 (equal values).
      CHECK(1.0 / n.beta_v == doctest::Approx(100 * std::pow(0.99, 99)).epsilon(1e-9));
    }
  }
}

TEST_CASE("ANTLR forward matches the reference equations (spikes, resets, V', bias)") {
  at::manual_seed(3);
  const int64_t T = 40, B = 3, In = 7, N = 5;
  Network net = make_network({In, N}, NeuronModel::antlr, NeuronOptions{}, T);
  net.layers[0].weight = at::rand({N, In}) * 0.9;
  net.layers[0].bias = at::rand({N}) * 0.3 - 0.1;
  const at::Tensor x = (at::rand({T, B, In}) < 0.2).to(at::kFloat);
  const auto fw = forward(net, x);
  at::Tensor s, v, vp;
  antlr_ref(x, net.layers[0].weight, net.layers[0].bias, net.neuron, s, v, vp);
  CHECK(s.sum().item<double>() > 5);  // the case exercises resets
  CHECK(at::equal(fw.layers[0].s, s));
  CHECK(at::allclose(fw.layers[0].v, v, 1e-4, 1e-5));
  CHECK(at::allclose(fw.layers[0].v_prime, vp, 1e-4, 1e-5));
  CHECK(fw.term_length == T);
}

TEST_CASE("LIF forward: subtract reset, strict threshold, bias per step (snnTorch Leaky)") {
  NeuronOptions n;
  n.lif_beta = 0.5;
  Network net = make_network({1, 1}, NeuronModel::lif, n, 10);
  net.layers[0].weight.fill_(0.8);
  net.layers[0].bias.fill_(0.0);
  at::Tensor x = at::zeros({4, 1, 1});
  x[0][0][0] = 1;
  x[1][0][0] = 1;
  x[2][0][0] = 1;
  const auto fw = forward(net, x);
  // U0 = 0.8; U1 = 0.4 + 0.8 = 1.2 -> spike; U2 = 0.6 + 0.8 - 1 = 0.4 (the reset is subtracted
  // on the step after the spike); U3 = 0.2 + 0 - 0 = 0.2.
  const auto u = fw.layers[0].v.flatten();
  CHECK(u[0].item<float>() == doctest::Approx(0.8));
  CHECK(u[1].item<float>() == doctest::Approx(1.2));
  CHECK(u[2].item<float>() == doctest::Approx(0.4));
  CHECK(u[3].item<float>() == doctest::Approx(0.2));
  CHECK(at::equal(fw.layers[0].s.flatten(), at::tensor({0.f, 1.f, 0.f, 0.f})));
}

TEST_CASE("early stop: ends on the step every output has spiked, identical prefix") {
  at::manual_seed(5);
  const int64_t T = 200;
  Network net = make_network({20, 30, 4}, NeuronModel::antlr, NeuronOptions{}, T, 0.0);
  net.layers[0].weight = at::rand({30, 20}) * 1.5;
  net.layers[1].weight = at::rand({4, 30}) * 0.8;
  const at::Tensor x = (at::rand({T, 6, 20}) < 0.1).to(at::kFloat);
  const auto full = forward(net, x);
  for (int64_t chunk : {1, 7, 32, 500}) {
    SimOptions so;
    so.early_stop = true;
    so.chunk = chunk;
    const auto es = forward(net, x, so);
    const at::Tensor cum = full.output().cumsum(0);
    const at::Tensor all = (cum > 0).flatten(1).all(1);
    REQUIRE(all.any().item<bool>());
    const int64_t expect = all.to(at::kLong).argmax().item<int64_t>() + 1;
    CHECK(es.term_length == expect);
    CHECK(es.term_length < T);
    for (size_t l = 0; l < 2; ++l)
      CHECK(at::equal(es.layers[l].s, full.layers[l].s.narrow(0, 0, expect)));
  }
}

TEST_CASE("network construction and shape errors") {
  CHECK_THROWS_AS(make_network({10}, NeuronModel::antlr, {}, 10), UsageError);
  Network net = make_network({10, 3}, NeuronModel::antlr, {}, 10);
  CHECK(net.layers[0].weight.abs().max().item<double>() <= 1.0 / std::sqrt(10.0) + 1e-7);
  CHECK(net.layers[0].bias.abs().sum().item<double>() == 0.0);
  CHECK_THROWS_AS(forward(net, at::zeros({5, 2, 9})), UsageError);
  const auto fw = forward(net, at::zeros({5, 2, 10}));
  RuleOptions ro;
  ro.rule = Rule::surrogate;  // needs the LIF neuron
  CHECK_THROWS_AS(backward(net, fw, at::zeros({5, 2, 3}), {}, ro), UsageError);
}
