// The fused time loops (libsnn/src/cuda/scan_kernels.cu) against the per-step ATen path
// (ScanImpl::aten), on random inputs with T not a multiple of the prefetch depth (8) and batch x
// neurons not a multiple of the CUDA block (64):
//  - on the CPU, the kernels' per-thread loops (scan_threads.cuh, __host__ __device__) run for
//    every (batch, neuron): this checks their indexing and rounding without a GPU;
//  - on a GPU ("CUDA" test cases, skipped without one), the real kernels through forward() and
//    backward(): spikes and membranes bit-identical, gradients within float tolerance, for the
//    LIF neuron (three surrogates) and the ANTLR neuron (activation, timing and ANTLR rules, with
//    the chunked early-stop simulation carrying state across launches).
#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include <cstdint>
#include <vector>

#include "../../../libsnn/src/cuda/scan_threads.cuh"
#include "kvlab/snn/loss.hpp"
#include "kvlab/snn/network.hpp"

using namespace kvlab::snn;

namespace {

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kCPU).to(at::kDouble) - b.to(at::kCPU).to(at::kDouble)).abs().max().item<double>();
}

double max_abs(const at::Tensor& a) { return a.to(at::kCPU).to(at::kDouble).abs().max().item<double>(); }

// |a - b| <= rtol * max|b| + atol, elementwise over the whole tensor.
bool close(const at::Tensor& a, const at::Tensor& b, double rtol = 1e-4, double atol = 1e-6) {
  return max_abs_diff(a, b) <= rtol * max_abs(b) + atol;
}

bool same(const at::Tensor& a, const at::Tensor& b) {
  return at::equal(a.to(at::kCPU).contiguous(), b.to(at::kCPU).contiguous());
}

// A network whose first layer sees U(0, scale) currents and spikes at a useful rate.
Network lif_net(const std::vector<std::int64_t>& sizes, Surrogate sg) {
  NeuronOptions n;
  n.surrogate = sg;
  Network net = make_network(sizes, NeuronModel::lif, n, 1);
  for (auto& l : net.layers) l.bias = at::rand({l.weight.size(0)}) * 0.2 - 0.1;
  return net;
}

Network to_device(Network net, const at::Device& d) {
  for (auto& l : net.layers) {
    l.weight = l.weight.to(d);
    l.bias = l.bias.to(d);
  }
  return net;
}

}  // namespace

TEST_CASE("fused CUDA thread loops, run on the CPU, == the per-step ATen path (LIF and ANTLR)") {
  at::manual_seed(11);
  const std::int64_t T = 45, B = 3, In = 20, N = 43;  // T = 5 x 8 + 5, B x N = 129
  for (const bool with_bias : {true, false}) {
    // ---- LIF forward: spikes and U bit for bit.
    Network net = lif_net({In, N}, Surrogate::atan);
    if (!with_bias) net.layers[0].bias.zero_();
    const at::Tensor x_in = at::rand({T, B, In}) * 1.5;
    SimOptions ref_opt;
    ref_opt.scan = ScanImpl::aten;
    const ForwardResult ref = forward(net, x_in, ref_opt);
    const at::Tensor syn =
        at::matmul(x_in.reshape({T * B, In}), net.layers[0].weight.t()).reshape({T, B, N}).contiguous();
    at::Tensor u = at::empty({T, B, N}), s = at::empty({T, B, N});
    at::Tensor cu = at::zeros({B, N}), cs = at::zeros({B, N});
    scan::LifForwardArgs fa{syn.data_ptr<float>(),
                            with_bias ? net.layers[0].bias.data_ptr<float>() : nullptr,
                            u.data_ptr<float>(),
                            s.data_ptr<float>(),
                            cu.data_ptr<float>(),
                            cs.data_ptr<float>(),
                            T,
                            B * N,
                            N,
                            static_cast<float>(net.neuron.lif_beta),
                            static_cast<float>(net.neuron.threshold)};
    for (std::int64_t j = 0; j < B * N; ++j) scan::lif_forward_thread(fa, j);
    const double rate = ref.output().mean().item<double>();
    CHECK(rate > 0.02);
    CHECK(rate < 0.9);
    CHECK(same(s, ref.layers[0].s));
    CHECK(same(u, ref.layers[0].v));
    CHECK(same(cu, u[T - 1]));

    // ---- LIF backward (atan): dU and its time sum.
    const at::Tensor g = at::randn({T, B, N});
    at::Tensor du = at::empty({T, B, N}), dsum = at::empty({B, N});
    scan::LifBackwardArgs ba{};
    ba.u = u.data_ptr<float>();
    ba.g = g.data_ptr<float>();
    ba.du = du.data_ptr<float>();
    ba.dsum = dsum.data_ptr<float>();
    ba.T = T;
    ba.BN = B * N;
    ba.N = N;
    ba.gs_t = B * N;
    ba.gs_b = N;
    ba.gs_n = 1;
    ba.beta = static_cast<float>(net.neuron.lif_beta);
    ba.th = static_cast<float>(net.neuron.threshold);
    ba.ka = static_cast<float>(M_PI / 2 * net.neuron.atan_alpha);
    ba.ha = static_cast<float>(net.neuron.atan_alpha / 2);
    for (std::int64_t j = 0; j < B * N; ++j) scan::lif_backward_thread<scan::kSurrAtan>(ba, j);
    at::Tensor du_ref = at::empty({T, B, N});
    {
      const at::Tensor h = lif_surrogate_grad(u - net.neuron.threshold, net.neuron) * g;
      at::Tensor c = at::zeros({B, N});
      for (std::int64_t t = T - 1; t >= 0; --t) {
        c = h[t] + c * net.neuron.lif_beta;
        du_ref[t].copy_(c);
      }
    }
    CHECK(close(du, du_ref));
    CHECK(close(dsum, du_ref.sum(0)));

    // The same with dL/dS = 0.5 broadcast (all strides 0), as a spike-sum loss gives it.
    const float half = 0.5f;
    ba.g = &half;
    ba.gs_t = ba.gs_b = ba.gs_n = 0;
    for (std::int64_t j = 0; j < B * N; ++j) scan::lif_backward_thread<scan::kSurrAtan>(ba, j);
    {
      const at::Tensor h = lif_surrogate_grad(u - net.neuron.threshold, net.neuron) * 0.5;
      at::Tensor c = at::zeros({B, N});
      for (std::int64_t t = T - 1; t >= 0; --t) {
        c = h[t] + c * net.neuron.lif_beta;
        du_ref[t].copy_(c);
      }
    }
    CHECK(close(du, du_ref));
    CHECK(max_abs(du) > 0);
  }

  // ---- ANTLR forward and backward (with ef2).
  Network anet = make_network({In, N}, NeuronModel::antlr, NeuronOptions{}, T);
  anet.layers[0].weight.mul_(3.0);
  anet.layers[0].bias = at::rand({N}) * 0.3;
  const at::Tensor spikes_in = (at::rand({T, B, In}) < 0.3).to(at::kFloat);
  SimOptions ref_opt;
  ref_opt.scan = ScanImpl::aten;
  const ForwardResult ref = forward(anet, spikes_in, ref_opt);
  const auto& nn = anet.neuron;
  at::Tensor x = at::matmul(spikes_in.reshape({T * B, In}), anet.layers[0].weight.t()).reshape({T, B, N});
  if (nn.beta_i != 1.0) x.mul_(nn.beta_i);
  x = x.contiguous();
  const at::Tensor c = (anet.layers[0].bias * nn.beta_bias).expand({B, N}).contiguous();
  at::Tensor I = at::empty({T, B, N}), V = at::empty({T, B, N}), VP = at::empty({T, B, N}),
             S = at::empty({T, B, N});
  at::Tensor ci = at::zeros({B, N}), cv = at::zeros({B, N}), cs = at::zeros({B, N});
  scan::AntlrForwardArgs fa{};
  fa.x = x.data_ptr<float>();
  fa.c = c.data_ptr<float>();
  fa.i = I.data_ptr<float>();
  fa.v = V.data_ptr<float>();
  fa.vp = VP.data_ptr<float>();
  fa.s = S.data_ptr<float>();
  fa.ci = ci.data_ptr<float>();
  fa.cv = cv.data_ptr<float>();
  fa.cs = cs.data_ptr<float>();
  fa.T = T;
  fa.BN = B * N;
  fa.ai = static_cast<float>(nn.alpha_i);
  fa.av = static_cast<float>(nn.alpha_v);
  fa.bv = static_cast<float>(nn.beta_v);
  fa.vmin = static_cast<float>(nn.v_prime_min);
  for (std::int64_t j = 0; j < B * N; ++j) scan::antlr_forward_thread(fa, j);
  const double rate = ref.output().mean().item<double>();
  CHECK(rate > 0.02);
  CHECK(rate < 0.9);
  CHECK(same(S, ref.layers[0].s));
  CHECK(same(V, ref.layers[0].v));
  CHECK(same(I, ref.layers[0].i));
  CHECK(same(VP, ref.layers[0].v_prime));

  // Backward: the traces against the ATen recursions (network.cpp's reference loop).
  const at::Tensor g = at::randn({T, B, N});
  at::Tensor vdep = at::empty({T, B, N}), igrad = at::empty({T, B, N}), ef2 = at::empty({T, B, N}),
             dsum = at::empty({B, N});
  scan::AntlrBackwardArgs ba{};
  ba.g = g.data_ptr<float>();
  ba.s = S.data_ptr<float>();
  ba.vdep = vdep.data_ptr<float>();
  ba.igrad = igrad.data_ptr<float>();
  ba.ef2 = ef2.data_ptr<float>();
  ba.dsum = dsum.data_ptr<float>();
  ba.T = T;
  ba.BN = B * N;
  ba.ai = fa.ai;
  ba.av = fa.av;
  ba.bv = fa.bv;
  for (std::int64_t j = 0; j < B * N; ++j) scan::antlr_backward_thread(ba, j);
  at::Tensor vd_ref = at::empty({T, B, N}), ig_ref = at::empty({T, B, N}), e2_ref = at::empty({T, B, N});
  {
    at::Tensor cvd = at::zeros({B, N}), cig = at::zeros({B, N}), ce1 = at::zeros({B, N}),
               ce2 = at::zeros({B, N}), cg = at::zeros({B, N});
    for (std::int64_t t = T - 1; t >= 0; --t) {
      const at::Tensor keep = 1 - S[t];
      cvd = g[t] + cvd * keep * nn.alpha_v;
      cig = cvd * nn.beta_v + cig * keep * nn.alpha_i;
      ce1 = keep * (cg * 0.5 + ce1 * nn.alpha_v) - g[t] * (0.5 * nn.alpha_v);
      ce2 = ce2 * keep * nn.alpha_i - g[t] * (0.5 * nn.beta_v * nn.alpha_i) + ce1 * nn.beta_v;
      cg = g[t];
      vd_ref[t].copy_(cvd);
      ig_ref[t].copy_(cig);
      e2_ref[t].copy_(ce2);
    }
  }
  CHECK(close(vdep, vd_ref));
  CHECK(close(igrad, ig_ref));
  CHECK(close(ef2, e2_ref));
  CHECK(close(dsum, vd_ref.sum(0)));
}

TEST_CASE("scan_backend names the implementation a device gets") {
  CHECK(std::string(scan_backend(at::Device(at::kCPU))) == "cpu-fused");
  CHECK(std::string(scan_backend(at::Device(at::kCPU), ScanImpl::aten)) == "aten");
}

namespace {

// forward() and backward() with ScanImpl::fused against ScanImpl::aten on `dev`.
void check_lif_fused_vs_aten(const at::Device& dev) {
  struct Shape {
    std::int64_t T, B, in, hidden, out;
  };
  // T = 8k + r; batch x neurons = 64k + r; the last one is the benchmark's layer at 500 steps.
  for (const Shape sh : {Shape{37, 3, 50, 67, 13}, Shape{101, 5, 130, 129, 7}, Shape{500, 16, 512, 512, 0}}) {
    for (const Surrogate sg : {Surrogate::atan, Surrogate::fast_sigmoid, Surrogate::exp}) {
      CAPTURE(sh.T);
      CAPTURE(sh.hidden);
      CAPTURE(surrogate_name(sg));
      at::manual_seed(sh.T + static_cast<int>(sg));
      std::vector<std::int64_t> sizes{sh.in, sh.hidden};
      if (sh.out > 0) sizes.push_back(sh.out);
      const Network net = to_device(lif_net(sizes, sg), dev);
      const at::Tensor x = (at::rand({sh.T, sh.B, sh.in}) * 1.5).to(dev);
      SimOptions fused_opt, ref_opt;
      ref_opt.scan = ScanImpl::aten;
      const ForwardResult fw = forward(net, x, fused_opt), ref = forward(net, x, ref_opt);
      for (std::size_t l = 0; l < net.layers.size(); ++l) {
        CAPTURE(l);
        CHECK(same(fw.layers[l].s, ref.layers[l].s));
        CHECK(same(fw.layers[l].v, ref.layers[l].v));
        const double rate = ref.layers[l].s.mean().item<double>();
        CHECK(rate > 0.005);
        CHECK(rate < 0.95);
      }
      const auto out_sizes = fw.output().sizes();
      const auto fo = fw.output().options();
      // A dense loss gradient, the broadcast ones of a spike-sum loss, and a non-contiguous one.
      const std::vector<at::Tensor> grads = {
          at::randn(out_sizes, fo), at::ones({1, 1, 1}, fo).expand(out_sizes),
          at::randn({out_sizes[0], out_sizes[2], out_sizes[1]}, fo).transpose(1, 2)};
      for (const at::Tensor& dl_ds : grads) {
        CAPTURE(dl_ds.is_contiguous());
        RuleOptions ro, ro_ref;
        ro.rule = ro_ref.rule = Rule::surrogate;
        ro.grad_clip = ro_ref.grad_clip = 0;
        ro_ref.scan = ScanImpl::aten;
        const Gradients gr = backward(net, fw, dl_ds, {}, ro);
        const Gradients gref = backward(net, ref, dl_ds.contiguous(), {}, ro_ref);
        for (std::size_t l = 0; l < net.layers.size(); ++l) {
          CAPTURE(l);
          CHECK(close(gr.weight[l], gref.weight[l], 1e-4, 1e-5));
          CHECK(close(gr.bias[l], gref.bias[l], 1e-4, 1e-5));
          CHECK(max_abs(gref.weight[l]) > 0);
        }
      }
    }
  }
}

void check_antlr_fused_vs_aten(const at::Device& dev) {
  const std::int64_t T = 101, B = 5, In = 60, H = 67, O = 10;
  at::manual_seed(3);
  Network cpu_net = make_network({In, H, O}, NeuronModel::antlr, NeuronOptions{}, T);
  cpu_net.layers[0].weight.mul_(4.0);
  cpu_net.layers[1].weight.abs_().mul_(2.0);  // excitatory: every output fires, the early stop triggers
  cpu_net.layers[0].bias = at::rand({H}) * 0.2;
  cpu_net.layers[1].bias = at::rand({O}) * 0.2;
  const Network net = to_device(cpu_net, dev);
  const at::Tensor x = (at::rand({T, B, In}) < 0.2).to(at::kFloat).to(dev);
  for (const bool early_stop : {false, true}) {
    CAPTURE(early_stop);
    SimOptions fused_opt, ref_opt;
    fused_opt.early_stop = ref_opt.early_stop = early_stop;
    fused_opt.chunk = ref_opt.chunk = 29;  // carries cross launches at odd steps
    ref_opt.scan = ScanImpl::aten;
    const ForwardResult fw = forward(net, x, fused_opt), ref = forward(net, x, ref_opt);
    REQUIRE(fw.term_length == ref.term_length);
    if (early_stop) CHECK(fw.term_length < T);
    for (std::size_t l = 0; l < net.layers.size(); ++l) {
      CAPTURE(l);
      CHECK(same(fw.layers[l].s, ref.layers[l].s));
      CHECK(same(fw.layers[l].v, ref.layers[l].v));
      CHECK(same(fw.layers[l].i, ref.layers[l].i));
      CHECK(same(fw.layers[l].v_prime, ref.layers[l].v_prime));
      CHECK(ref.layers[l].s.sum().item<double>() > 0);
    }
    const at::Tensor labels = at::arange(B, at::kLong).remainder(O);
    const LossResult loss = latency_loss(fw.output(), labels.to(dev), LossOptions{});
    const at::Tensor dl_ds = at::randn(fw.output().sizes(), fw.output().options()) * 0.1;
    for (const Rule rule : {Rule::activation, Rule::timing, Rule::antlr}) {
      CAPTURE(rule_name(rule));
      RuleOptions ro, ro_ref;
      ro.rule = ro_ref.rule = rule;
      ro.grad_clip = ro_ref.grad_clip = 0;
      ro_ref.scan = ScanImpl::aten;
      const Gradients gr = backward(net, fw, dl_ds, loss.dl_dt, ro);
      const Gradients gref = backward(net, ref, dl_ds, loss.dl_dt, ro_ref);
      for (std::size_t l = 0; l < net.layers.size(); ++l) {
        CAPTURE(l);
        CHECK(close(gr.weight[l], gref.weight[l], 1e-4, 1e-5));
        CHECK(close(gr.bias[l], gref.bias[l], 1e-4, 1e-5));
      }
      CHECK(max_abs(gref.weight[0]) > 0);
    }
  }
}

}  // namespace

TEST_CASE("CPU fused loops == per-step ATen through forward/backward (LIF and ANTLR)") {
  check_lif_fused_vs_aten(at::Device(at::kCPU));
  check_antlr_fused_vs_aten(at::Device(at::kCPU));
}

TEST_CASE("CUDA fused LIF == per-step ATen: spikes exact, BPTT gradients (3 surrogates)" *
          doctest::skip(!at::hasCUDA())) {
  const at::Device dev(at::kCUDA, 0);
  CHECK(std::string(scan_backend(dev)) == "cuda-fused");
  check_lif_fused_vs_aten(dev);
}

TEST_CASE("CUDA fused ANTLR neuron == per-step ATen: spikes exact, activation/timing/ANTLR gradients" *
          doctest::skip(!at::hasCUDA())) {
  check_antlr_fused_vs_aten(at::Device(at::kCUDA, 0));
}
