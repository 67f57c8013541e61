// The hand-written backward passes against independent derivations on tiny networks:
//  - activation rule and LIF surrogate BPTT == LibTorch autograd through a straight-through spike
//    (Heaviside forward, surrogate derivative backward, reset masks detached);
//  - timing rule == the hand-derived dt_spike/dw = -(dV/dw) / V', and its propagation to a hidden
//    layer == the explicit central-difference PSP-kernel formula;
//  - ANTLR on one layer == lambda_act * activation + lambda_timing * timing;
//  - silent-neuron penalty and gradient clamping;
//  - latency / count / spike-train loss gradients against finite differences and autograd.
#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "kvlab/snn/loss.hpp"
#include "kvlab/snn/network.hpp"

using namespace kvlab::snn;

namespace {

// Straight-through spike: forward H(x >= 0) (or > 0), backward dG/dx.
at::Tensor st_spike(const at::Tensor& x, const at::Tensor& G, bool strict) {
  const at::Tensor h = (strict ? (x > 0) : (x >= 0)).to(at::kFloat);
  return h.detach() + (G - G.detach());  // exactly h in the forward pass
}

// Autograd model of an ANTLR network with the exp surrogate (activation rule semantics).
std::vector<at::Tensor> antlr_autograd_spikes(const Network& net, const at::Tensor& x,
                                              std::vector<at::Tensor>& w, std::vector<at::Tensor>& b) {
  const auto& n = net.neuron;
  const int64_t T = x.size(0);
  at::Tensor prev_layer = x;
  std::vector<at::Tensor> outs;
  for (size_t l = 0; l < net.layers.size(); ++l) {
    std::vector<at::Tensor> s_t;
    at::Tensor I, V, S;
    for (int64_t t = 0; t < T; ++t) {
      at::Tensor syn = at::matmul(prev_layer[t], w[l].t()) * n.beta_i;
      if (t == 0) {
        I = syn;
        V = I * n.beta_v + b[l] * n.beta_bias;
      } else {
        const at::Tensor keep = (1 - S).detach();
        I = syn + I * keep * n.alpha_i;
        V = I * n.beta_v + b[l] * n.beta_bias + V * keep * n.alpha_v;
      }
      const at::Tensor d = V - 1;
      const at::Tensor G = n.surr_alpha * at::sign(d) * (1 - at::exp(-n.surr_beta * d.abs())) / n.surr_beta;
      S = st_spike(d, G, /*strict=*/false);
      s_t.push_back(S);
    }
    prev_layer = at::stack(s_t);
    outs.push_back(prev_layer);
  }
  return outs;
}

at::Tensor lif_autograd_out(const Network& net, const at::Tensor& x, std::vector<at::Tensor>& w,
                            std::vector<at::Tensor>& b) {
  const auto& n = net.neuron;
  const int64_t T = x.size(0);
  at::Tensor prev_layer = x;
  for (size_t l = 0; l < net.layers.size(); ++l) {
    std::vector<at::Tensor> s_t;
    at::Tensor U, S;
    for (int64_t t = 0; t < T; ++t) {
      at::Tensor in = at::matmul(prev_layer[t], w[l].t()) + b[l];
      U = t == 0 ? in : U * n.lif_beta + in - S.detach() * n.threshold;
      const at::Tensor d = U - n.threshold;
      at::Tensor G;
      if (n.surrogate == Surrogate::atan) {
        G = at::atan(d * (M_PI / 2 * n.atan_alpha)) / M_PI;
      } else {
        G = d / (1 + n.fast_sigmoid_slope * d.abs());
      }
      S = st_spike(d, G, /*strict=*/true);
      s_t.push_back(S);
    }
    prev_layer = at::stack(s_t);
  }
  return prev_layer;
}

std::vector<at::Tensor> leaf_copies(const Network& net, bool weights) {
  std::vector<at::Tensor> v;
  for (const auto& l : net.layers) v.push_back((weights ? l.weight : l.bias).clone().set_requires_grad(true));
  return v;
}

Network random_net(NeuronModel m, const NeuronOptions& n, int64_t T, uint64_t seed) {
  at::manual_seed(seed);
  Network net = make_network({12, 9, 4}, m, n, T);
  net.layers[0].weight = at::rand({9, 12}) * 1.2 - 0.2;
  net.layers[1].weight = at::rand({4, 9}) * 1.0 - 0.2;
  net.layers[0].bias = at::rand({9}) * 0.2 - 0.1;
  net.layers[1].bias = at::rand({4}) * 0.2 - 0.1;
  return net;
}

}  // namespace

TEST_CASE("activation rule == autograd through the exp surrogate (count loss, 2 layers)") {
  const int64_t T = 30, B = 3;
  Network net = random_net(NeuronModel::antlr, NeuronOptions{}, T, 11);
  const at::Tensor x = (at::rand({T, B, 12}) < 0.25).to(at::kFloat);
  const at::Tensor labels = at::tensor({0L, 2L, 3L});
  LossOptions lo;
  lo.kind = LossKind::count;
  lo.max_target_spikes = 3;
  const auto fw = forward(net, x);
  REQUIRE(fw.layers[0].s.sum().item<double>() > 10);  // hidden spikes, resets included
  const LossResult loss = compute_loss(fw.output(), labels, lo, T);
  RuleOptions ro;
  ro.rule = Rule::activation;
  ro.grad_clip = 0;
  const Gradients g = backward(net, fw, loss.dl_ds, loss.dl_dt, ro);

  auto w = leaf_copies(net, true), b = leaf_copies(net, false);
  const auto outs = antlr_autograd_spikes(net, x, w, b);
  CHECK(at::equal(outs[0].detach(), fw.layers[0].s));
  CHECK(at::equal(outs.back().detach(), fw.output()));
  at::Tensor target = at::zeros({B, 4});
  target.scatter_(1, labels.view({-1, 1}), 3.0);
  const at::Tensor L = (outs.back().sum(0) - target).pow(2).sum() / double(T * B);
  CHECK(L.item<double>() == doctest::Approx(loss.loss));
  L.backward();
  for (size_t l = 0; l < 2; ++l) {
    CHECK(g.weight[l].abs().sum().item<double>() > 0);
    CHECK(at::allclose(g.weight[l], w[l].grad(), 1e-4, 1e-6));
    CHECK(at::allclose(g.bias[l], b[l].grad(), 1e-4, 1e-6));
  }
}

TEST_CASE("surrogate rule (LIF BPTT) == autograd for atan and fast sigmoid") {
  for (Surrogate sg : {Surrogate::atan, Surrogate::fast_sigmoid}) {
    CAPTURE(surrogate_name(sg));
    NeuronOptions n;
    n.surrogate = sg;
    n.lif_beta = 0.9;
    const int64_t T = 25, B = 2;
    Network net = random_net(NeuronModel::lif, n, T, 12);
    const at::Tensor x = (at::rand({T, B, 12}) < 0.3).to(at::kFloat);
    const auto fw = forward(net, x);
    REQUIRE(fw.layers[0].s.sum().item<double>() > 5);
    LossOptions lo;
    lo.kind = LossKind::spike_train;
    lo.max_target_spikes = 4;
    const at::Tensor labels = at::tensor({1L, 3L});
    const LossResult loss = compute_loss(fw.output(), labels, lo, T);
    RuleOptions ro;
    ro.rule = Rule::surrogate;
    ro.grad_clip = 0;
    const Gradients g = backward(net, fw, loss.dl_ds, {}, ro);

    auto w = leaf_copies(net, true), b = leaf_copies(net, false);
    const at::Tensor out = lif_autograd_out(net, x, w, b);
    CHECK(at::equal(out.detach(), fw.output()));
    // dL/dS is linear in S for the spike-train loss: back-propagate it as given.
    out.backward(loss.dl_ds);
    for (size_t l = 0; l < 2; ++l) {
      CHECK(g.weight[l].abs().sum().item<double>() > 0);
      CHECK(at::allclose(g.weight[l], w[l].grad(), 1e-4, 1e-6));
      CHECK(at::allclose(g.bias[l], b[l].grad(), 1e-4, 1e-6));
    }
  }
}

TEST_CASE("timing rule: dL/dw = -(dV/dw) / V' at the spike (hand-derived, one neuron)") {
  const int64_t T = 60, t0 = 2;
  Network net = make_network({1, 1}, NeuronModel::antlr, NeuronOptions{}, T);
  const auto& n = net.neuron;
  const double w = 1.7;
  net.layers[0].weight.fill_(w);
  at::Tensor x = at::zeros({T, 1, 1});
  x[t0][0][0] = 1;
  const auto fw = forward(net, x);
  const at::Tensor st = fw.output().flatten();
  REQUIRE(st.sum().item<double>() >= 1);
  const int64_t ts = st.argmax().item<int64_t>();  // first spike
  at::Tensor dl_dt = at::zeros({T, 1, 1});
  dl_dt[ts][0][0] = 1.0;  // L = t_spike
  RuleOptions ro;
  ro.rule = Rule::timing;
  ro.grad_clip = 0;
  ro.timing_penalty = 0;
  const Gradients g = backward(net, fw, {}, dl_dt, ro);
  const auto eps = psp_kernel(n.alpha_i, n.alpha_v, T);
  const double v_ts = w * n.beta_i * n.beta_v * eps[ts - t0];
  const double v_prev = w * n.beta_i * n.beta_v * eps[ts - t0 - 1];
  CHECK(fw.layers[0].v.flatten()[ts].item<double>() == doctest::Approx(v_ts).epsilon(1e-5));
  const double slope = std::max(v_ts - v_prev, 1e-2);
  const double dv_dw = n.beta_i * n.beta_v * eps[ts - t0];
  CHECK(g.weight[0].item<double>() == doctest::Approx(-dv_dw / slope).epsilon(1e-4));
  double dv_db = 0;
  for (int64_t k = 0; k <= ts; ++k) dv_db += std::pow(n.alpha_v, double(k));
  dv_db *= n.beta_bias;
  CHECK(g.bias[0].item<double>() == doctest::Approx(-dv_db / slope).epsilon(1e-4));
  // A stronger weight makes the neuron fire earlier: the sign is right.
  CHECK(g.weight[0].item<double>() < 0);
}

TEST_CASE("timing rule: dL/dT of hidden spikes == explicit PSP-kernel derivative formula") {
  const int64_t T = 80, B = 2, H = 6;
  at::manual_seed(21);
  Network net = make_network({5, H, 1}, NeuronModel::antlr, NeuronOptions{}, T);
  net.layers[0].weight = at::rand({H, 5}) * 2.0;
  net.layers[1].weight = at::rand({1, H}) * 0.8 + 0.2;
  const at::Tensor x = (at::rand({T, B, 5}) < 0.08).to(at::kFloat);
  const auto fw = forward(net, x);
  const at::Tensor out = fw.output();  // [T, B, 1]
  REQUIRE(fw.layers[0].s.sum().item<double>() > 4);
  at::Tensor dl_dt = at::zeros({T, B, 1});
  std::vector<int64_t> ts(B, -1);
  for (int64_t b = 0; b < B; ++b) {
    const at::Tensor sb = out.select(1, b).flatten();
    REQUIRE(sb.sum().item<double>() >= 1);
    ts[b] = sb.argmax().item<int64_t>();
    dl_dt[ts[b]][b][0] = 0.5 + b;  // gradient at the first output spike only
  }
  RuleOptions ro;
  ro.rule = Rule::timing;
  ro.grad_clip = 0;
  ro.timing_penalty = 0;
  ro.keep_intermediates = true;
  const Gradients g = backward(net, fw, {}, dl_dt, ro);
  const auto& n = net.neuron;
  auto eps = [&](int64_t t) { return t < 0 ? 0.0 : psp_kernel(n.alpha_i, n.alpha_v, t + 1)[t]; };
  const auto W = net.layers[1].weight;
  int checked = 0;
  for (int64_t b = 0; b < B; ++b) {
    const double gv = g.dl_dv[1][ts[b]][b][0].item<double>();  // -dL/dT / V' at the output spike
    CHECK(gv == doctest::Approx(-(0.5 + b) / fw.layers[1].v_prime[ts[b]][b][0].item<double>()));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const double got = g.dl_dt[0][t][b][h].item<double>();
        double want = 0;
        if (fw.layers[0].s[t][b][h].item<float>() == 1.f && t <= ts[b]) {
          const int64_t tau = ts[b] - t;
          const double deps = (eps(tau + 1) - eps(tau - 1)) / 2;
          want = n.beta_i * W[0][h].item<double>() * gv * (-n.beta_v * deps);
          ++checked;
        }
        CHECK(got == doctest::Approx(want).epsilon(1e-4).scale(1e-6));
      }
  }
  CHECK(checked > 2);
}

TEST_CASE("ANTLR on one layer == lambda_act * activation + lambda_timing * timing") {
  const int64_t T = 50, B = 4;
  at::manual_seed(31);
  Network net = make_network({10, 3}, NeuronModel::antlr, NeuronOptions{}, T);
  net.layers[0].weight = at::rand({3, 10}) * 1.5;
  const at::Tensor x = (at::rand({T, B, 10}) < 0.15).to(at::kFloat);
  const auto fw = forward(net, x);
  LossOptions lo;  // latency: both dL/dS (no-spike) and dL/dT
  const LossResult loss = compute_loss(fw.output(), at::tensor({0L, 1L, 2L, 1L}), lo, T);
  RuleOptions ro;
  ro.grad_clip = 0;
  ro.timing_penalty = 0;
  ro.rule = Rule::activation;
  const auto ga = backward(net, fw, loss.dl_ds, loss.dl_dt, ro);
  ro.rule = Rule::timing;
  const auto gt = backward(net, fw, loss.dl_ds, loss.dl_dt, ro);
  ro.rule = Rule::antlr;
  ro.lambda_act = 0.3;
  ro.lambda_timing = 2.0;
  const auto gx = backward(net, fw, loss.dl_ds, loss.dl_dt, ro);
  CHECK(gt.weight[0].abs().sum().item<double>() > 0);
  CHECK(at::allclose(gx.weight[0], ga.weight[0] * 0.3 + gt.weight[0] * 2.0, 1e-4, 1e-7));
  CHECK(at::allclose(gx.bias[0], ga.bias[0] * 0.3 + gt.bias[0] * 2.0, 1e-4, 1e-7));
}

TEST_CASE("timing penalty raises silent neurons' weights; gradient clamp; NaN-free") {
  const int64_t T = 20;
  Network net = make_network({4, 3}, NeuronModel::antlr, NeuronOptions{}, T);
  net.layers[0].weight.fill_(0.0);
  net.layers[0].weight[0].fill_(2.0);  // neuron 0 fires, 1 and 2 stay silent
  at::Tensor x = at::zeros({T, 2, 4});
  x[1].fill_(1.0);
  const auto fw = forward(net, x);
  REQUIRE(fw.output().select(2, 0).sum().item<double>() > 0);
  REQUIRE(fw.output().select(2, 1).sum().item<double>() == 0);
  RuleOptions ro;
  ro.rule = Rule::timing;
  ro.grad_clip = 0;
  ro.timing_penalty = 100;
  const auto g = backward(net, fw, {}, at::zeros({T, 2, 3}), ro);
  CHECK(g.weight[0][1][0].item<double>() == doctest::Approx(-100.0 / 4));
  CHECK(g.weight[0][0][0].item<double>() == doctest::Approx(0.0));
  ro.grad_clip = 1.0;
  const auto gc = backward(net, fw, {}, at::zeros({T, 2, 3}), ro);
  CHECK(gc.weight[0][1][0].item<double>() == doctest::Approx(-1.0));
  ro.rule = Rule::antlr;  // the penalty is the timing rule's only (as the reference)
  const auto ga = backward(net, fw, {}, at::zeros({T, 2, 3}), ro);
  CHECK(ga.weight[0].abs().sum().item<double>() == 0.0);
}

TEST_CASE("latency loss: value, dL/dT against finite differences, no-spike penalty") {
  const int64_t term = 12, B = 2, C = 3;
  at::Tensor out = at::zeros({term, B, C});
  out[2][0][0] = 1;
  out[5][0][1] = 1;
  out[7][0][0] = 1;  // second spike of neuron 0: ignored by the latency loss
  out[9][0][2] = 1;
  out[4][1][1] = 1;  // sample 1: neurons 0 and 2 silent, target 2 silent -> penalty
  const at::Tensor labels = at::tensor({1L, 2L});
  LossOptions lo;
  const LossResult r = latency_loss(out, labels, lo);
  // Closed form with continuous first-spike times.
  auto ce = [&](const std::vector<std::vector<double>>& tf) {
    double L = 0;
    for (int64_t b = 0; b < B; ++b) {
      std::vector<double> z(C);
      double mx = -1e9;
      for (int64_t c = 0; c < C; ++c) {
        z[c] = tf[b][c] < 0 ? 0.0 : lo.softmax_beta * (term - tf[b][c]);
        mx = std::max(mx, z[c]);
      }
      double se = 0;
      for (double v : z) se += std::exp(v - mx);
      L += -(z[labels[b].item<int64_t>()] - mx - std::log(se)) / B;
    }
    return L;
  };
  std::vector<std::vector<double>> tf = {{2, 5, 9}, {-1, 4, -1}};
  CHECK(r.loss == doctest::Approx(ce(tf) + lo.lambda_nospike / B));
  const double h = 1e-4;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c) {
      if (tf[b][c] < 0) {
        CHECK(r.dl_dt.select(1, b).select(1, c).abs().sum().item<double>() == 0.0);
        continue;
      }
      auto tp = tf, tm = tf;
      tp[b][c] += h;
      tm[b][c] -= h;
      const double fd = (ce(tp) - ce(tm)) / (2 * h);
      const int64_t t = static_cast<int64_t>(tf[b][c]);
      CHECK(r.dl_dt[t][b][c].item<double>() == doctest::Approx(fd).epsilon(1e-3));
      CHECK(r.dl_dt.select(1, b).select(1, c).abs().sum().item<double>() ==
            doctest::Approx(std::abs(fd)).epsilon(1e-3));
    }
  // No-spike term: dL/dS = -lambda/B at the silent target of sample 1, on every step.
  CHECK(at::allclose(r.dl_ds.select(1, 1).select(1, 2), at::full({term}, -lo.lambda_nospike / B)));
  CHECK(r.dl_ds.select(1, 0).abs().sum().item<double>() == 0.0);
  CHECK(at::equal(predict_first(out), at::tensor({0L, 1L})));
  CHECK(at::equal(predict_count(out), at::tensor({0L, 1L})));
  CHECK(at::equal(first_spike_times(out), at::tensor({2L, 5L, 9L, -1L, 4L, -1L}).view({2, 3})));
}

TEST_CASE("count and spike-train losses: gradients against autograd and a hand derivation") {
  const int64_t T = 40, B = 2, C = 3;
  at::manual_seed(41);
  const at::Tensor out = (at::rand({T, B, C}) < 0.1).to(at::kFloat);
  const at::Tensor labels = at::tensor({2L, 0L});
  LossOptions lo;
  lo.kind = LossKind::count;
  lo.max_target_spikes = 5;
  {
    const LossResult r = compute_loss(out, labels, lo, T);
    at::Tensor s = out.clone().set_requires_grad(true);
    at::Tensor tgt = at::zeros({B, C});
    tgt.scatter_(1, labels.view({-1, 1}), 5.0);
    const at::Tensor L = (s.sum(0) - tgt).pow(2).sum() / double(T * B);
    L.backward();
    CHECK(r.loss == doctest::Approx(L.item<double>()));
    CHECK(at::allclose(r.dl_ds, s.grad()));
    CHECK(r.dl_dt.abs().sum().item<double>() == 0.0);
  }
  lo.kind = LossKind::spike_train;
  lo.alpha_exp = 0.8;
  const LossResult r = compute_loss(out, labels, lo, T);
  const at::Tensor target = label_spike_train(labels, C, T, lo);
  CHECK(target.sum().item<double>() == 10.0);
  // Loss and dL/dS by autograd through an explicit causal filter.
  std::vector<double> k;
  for (int64_t i = 0; i < T && std::pow(lo.alpha_exp, double(i)) > 1e-6; ++i) k.push_back(std::pow(lo.alpha_exp, double(i)));
  const int64_t K = static_cast<int64_t>(k.size()), Tf = T + K - 1;
  at::Tensor s = out.clone().set_requires_grad(true);
  const at::Tensor err = s - target;
  std::vector<at::Tensor> f;
  for (int64_t tau = 0; tau < Tf; ++tau) {
    at::Tensor acc = at::zeros({B, C});
    for (int64_t j = 0; j < K; ++j)
      if (tau - j >= 0 && tau - j < T) acc = acc + err[tau - j] * k[j];
    f.push_back(acc);
  }
  const at::Tensor F = at::stack(f);
  const at::Tensor L = F.pow(2).sum() / double(T * B);
  L.backward();
  CHECK(r.loss == doctest::Approx(L.item<double>()).epsilon(1e-5));
  CHECK(at::allclose(r.dl_ds, s.grad(), 1e-4, 1e-6));
  // dL/dT of a spike at t: sum_tau 2 F[tau] / (T B) * d/dt kernel(tau - t), with the central
  // difference d/dt k(tau - t) = -(k(tau - t + 1) - k(tau - t - 1)) / 2.
  auto kk = [&](int64_t i) { return i < 0 || i >= K ? 0.0 : k[i]; };
  const at::Tensor Fd = F.detach();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c) {
        double want = 0;
        if (out[t][b][c].item<float>() == 1.f)
          for (int64_t tau = 0; tau < Tf; ++tau)
            want += 2 * Fd[tau][b][c].item<double>() / double(T * B) *
                    (-(kk(tau - t + 1) - kk(tau - t - 1)) / 2);
        CHECK(r.dl_dt[t][b][c].item<double>() == doctest::Approx(want).epsilon(1e-4).scale(1e-6));
      }
}
