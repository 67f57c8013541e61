// Forward simulation and the hand-written backward passes (network.hpp). The per-layer time
// recurrences are fused into one loop over (time, batch x neurons) on CPU, parallel over neurons,
// and into one kernel per layer and direction on CUDA (src/cuda/scan_kernels.cu); the synaptic
// input of all time steps of a layer is one matmul, the weight gradient another. Other devices,
// and ScanImpl::aten, run the same recurrences as per-step ATen ops.
#include "kvlab/snn/network.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "cuda_kernels.hpp"
#include "kvlab/core/error.hpp"

namespace kvlab::snn {

const char* rule_name(Rule r) {
  switch (r) {
    case Rule::activation: return "activation";
    case Rule::timing: return "timing";
    case Rule::antlr: return "antlr";
    case Rule::surrogate: return "surrogate";
  }
  return "?";
}

const char* surrogate_name(Surrogate s) {
  switch (s) {
    case Surrogate::exp: return "exp";
    case Surrogate::fast_sigmoid: return "fast-sigmoid";
    case Surrogate::atan: return "atan";
  }
  return "?";
}

const char* neuron_model_name(NeuronModel m) { return m == NeuronModel::antlr ? "antlr" : "lif"; }

NeuronModel neuron_model_for(Rule r) {
  return r == Rule::surrogate ? NeuronModel::lif : NeuronModel::antlr;
}

std::vector<double> psp_kernel(double alpha_i, double alpha_v, std::int64_t time_length) {
  std::vector<double> eps(static_cast<std::size_t>(std::max<std::int64_t>(time_length, 0)));
  for (std::int64_t t = 0; t < time_length; ++t) {
    double sum = 0.0;
    for (std::int64_t k = 0; k <= t; ++k)
      sum += std::pow(alpha_i, static_cast<double>(k)) * std::pow(alpha_v, static_cast<double>(t - k));
    eps[static_cast<std::size_t>(t)] = sum;
  }
  return eps;
}

NeuronOptions resolve_neuron(NeuronOptions n, std::int64_t time_length) {
  if (n.beta_auto) {
    const auto eps = psp_kernel(n.alpha_i, n.alpha_v, time_length);
    KVLAB_THROW_IF(eps.empty(), UsageError, "--time-steps {}: expected at least 1", time_length);
    const double peak = *std::max_element(eps.begin(), eps.end());
    n.beta_i = 1.0;
    n.beta_v = 1.0 / peak;
    n.beta_bias = 1.0 / peak;
  }
  return n;
}

Network make_network(const std::vector<std::int64_t>& sizes, NeuronModel model,
                     const NeuronOptions& neuron, std::int64_t time_length,
                     double weight_init_std) {
  KVLAB_THROW_IF(sizes.size() < 2, UsageError,
                 "network needs at least an input and an output size, got {} sizes", sizes.size());
  for (auto s : sizes)
    KVLAB_THROW_IF(s < 1 || s > (1 << 24), UsageError, "layer size {} out of range 1..16777216", s);
  Network net;
  net.model = model;
  net.neuron = model == NeuronModel::antlr ? resolve_neuron(neuron, time_length) : neuron;
  net.sizes = sizes;
  for (std::size_t l = 0; l + 1 < sizes.size(); ++l) {
    const std::int64_t in = sizes[l], out = sizes[l + 1];
    Layer layer;
    if (weight_init_std > 0) {
      layer.weight = at::randn({out, in}) * weight_init_std;
    } else {
      // nn.Linear's kaiming_uniform_(a = sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
      const double bound = 1.0 / std::sqrt(static_cast<double>(in));
      layer.weight = at::rand({out, in}) * (2 * bound) - bound;
    }
    layer.bias = at::zeros({out});
    net.layers.push_back(std::move(layer));
  }
  return net;
}

at::Tensor lif_surrogate_grad(const at::Tensor& x, const NeuronOptions& n) {
  switch (n.surrogate) {
    case Surrogate::exp: return at::exp(-n.surr_beta * x.abs()) * n.surr_alpha;
    case Surrogate::fast_sigmoid: return 1.0 / (n.fast_sigmoid_slope * x.abs() + 1.0).pow(2);
    case Surrogate::atan: {
      const double k = M_PI / 2 * n.atan_alpha;
      return (n.atan_alpha / 2) / (1.0 + (k * x).pow(2));
    }
  }
  return x;
}

const char* scan_backend(const at::Device& device, ScanImpl impl) {
  if (impl == ScanImpl::aten) return "aten";
  if (device.is_cpu()) return "cpu-fused";
#ifdef KVLAB_WITH_CUDA
  if (device.is_cuda()) return "cuda-fused";
#endif
  return "aten";
}

namespace {

bool cpu_fast(const at::Tensor& t) {
  return t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous();
}

#ifdef KVLAB_WITH_CUDA
// Whether the fused CUDA kernels take all these tensors (undefined ones are skipped).
bool cuda_fast(std::initializer_list<const at::Tensor*> ts) {
  for (const at::Tensor* t : ts)
    if (t->defined() && !cuda::supports(*t)) return false;
  return true;
}
#endif

constexpr std::int64_t kGrain = 2048;

// ---- ANTLR neuron: one chunk of the forward recurrence. Carries (cI, cV, cS: the previous step's
// I, V, s) are updated in place; zero carries give the t = 0 case exactly.
void antlr_scan(const at::Tensor& x, const at::Tensor& c, at::Tensor i_out, at::Tensor v_out,
                at::Tensor vp_out, at::Tensor s_out, at::Tensor& cI, at::Tensor& cV,
                at::Tensor& cS, const NeuronOptions& n, ScanImpl impl) {
  const std::int64_t T = x.size(0);
  const float ai = static_cast<float>(n.alpha_i), av = static_cast<float>(n.alpha_v),
              bv = static_cast<float>(n.beta_v), vmin = static_cast<float>(n.v_prime_min);
#ifdef KVLAB_WITH_CUDA
  if (impl == ScanImpl::fused &&
      cuda_fast({&x, &c, &i_out, &v_out, &vp_out, &s_out, &cI, &cV, &cS})) {
    cuda::antlr_forward(x, c, i_out, v_out, vp_out, s_out, cI, cV, cS, n);
    return;
  }
#endif
  if (impl == ScanImpl::fused && cpu_fast(x) && cpu_fast(c) && cpu_fast(i_out) && cpu_fast(cI)) {
    const std::int64_t BN = x.numel() / std::max<std::int64_t>(T, 1);
    const float* X = x.data_ptr<float>();
    const float* C = c.data_ptr<float>();
    float *I = i_out.data_ptr<float>(), *V = v_out.data_ptr<float>(),
          *VP = vp_out.data_ptr<float>(), *S = s_out.data_ptr<float>();
    float *pI = cI.data_ptr<float>(), *pV = cV.data_ptr<float>(), *pS = cS.data_ptr<float>();
    at::parallel_for(0, BN, kGrain, [&](std::int64_t j0, std::int64_t j1) {
      for (std::int64_t t = 0; t < T; ++t) {
        const std::int64_t o = t * BN;
        for (std::int64_t j = j0; j < j1; ++j) {
          const float keep = 1.f - pS[j];
          const float vprev = pV[j] * keep;
          const float cur = X[o + j] + ai * pI[j] * keep;
          const float v = bv * cur + C[j] + av * vprev;
          const float vp = v - vprev;
          const float s = v >= 1.f ? 1.f : 0.f;
          I[o + j] = cur;
          V[o + j] = v;
          VP[o + j] = vp < vmin ? vmin : vp;
          S[o + j] = s;
          pI[j] = cur;
          pV[j] = v;
          pS[j] = s;
        }
      }
    });
    return;
  }
  for (std::int64_t t = 0; t < T; ++t) {
    const at::Tensor keep = 1 - cS;
    const at::Tensor vprev = cV * keep;
    cI = x[t] + cI * keep * n.alpha_i;
    cV = cI * n.beta_v + c + vprev * n.alpha_v;
    cS = (cV >= 1).to(cV.scalar_type());
    i_out[t].copy_(cI);
    v_out[t].copy_(cV);
    vp_out[t].copy_((cV - vprev).clamp_min(n.v_prime_min));
    s_out[t].copy_(cS);
  }
}

// ---- LIF neuron (snnTorch Leaky, subtract reset): U[t] = beta U[t-1] + (x[t] + b) - theta s[t-1].
// x is the synaptic input W s_in without the bias; bias [N] (undefined: none).
void lif_scan(const at::Tensor& x, const at::Tensor& bias, at::Tensor u_out, at::Tensor s_out,
              at::Tensor& cU, at::Tensor& cS, const NeuronOptions& n, ScanImpl impl) {
  const std::int64_t T = x.size(0);
  const float beta = static_cast<float>(n.lif_beta), th = static_cast<float>(n.threshold);
#ifdef KVLAB_WITH_CUDA
  if (impl == ScanImpl::fused && cuda_fast({&x, &bias, &u_out, &s_out, &cU, &cS})) {
    cuda::lif_forward(x, bias, u_out, s_out, cU, cS, n);
    return;
  }
#endif
  if (impl == ScanImpl::fused && cpu_fast(x) && cpu_fast(u_out) && cpu_fast(s_out) &&
      cpu_fast(cU) && cpu_fast(cS) && (!bias.defined() || cpu_fast(bias))) {
    const std::int64_t BN = x.numel() / std::max<std::int64_t>(T, 1);
    // The bias per (batch, neuron), so the inner loop indexes it like the carries.
    const at::Tensor bias_bn = bias.defined() ? bias.expand(cU.sizes()).contiguous() : at::Tensor();
    const float* X = x.data_ptr<float>();
    const float* Bias = bias_bn.defined() ? bias_bn.data_ptr<float>() : nullptr;
    float *U = u_out.data_ptr<float>(), *S = s_out.data_ptr<float>();
    float *pU = cU.data_ptr<float>(), *pS = cS.data_ptr<float>();
    at::parallel_for(0, BN, kGrain, [&](std::int64_t j0, std::int64_t j1) {
      for (std::int64_t t = 0; t < T; ++t) {
        const std::int64_t o = t * BN;
        for (std::int64_t j = j0; j < j1; ++j) {
          const float xin = Bias ? X[o + j] + Bias[j] : X[o + j];
          const float u = beta * pU[j] + xin - th * pS[j];
          const float s = u > th ? 1.f : 0.f;
          U[o + j] = u;
          S[o + j] = s;
          pU[j] = u;
          pS[j] = s;
        }
      }
    });
    return;
  }
  const at::Tensor xb = bias.defined() ? x + bias : x;
  for (std::int64_t t = 0; t < T; ++t) {
    cU = cU * n.lif_beta + xb[t] - cS * n.threshold;
    cS = (cU > n.threshold).to(cU.scalar_type());
    u_out[t].copy_(cU);
    s_out[t].copy_(cS);
  }
}

// ---- ANTLR backward through time ('SRM' style: the reset is a constant mask):
//   vdep[t] = g[t] + alpha_v (1 - s[t]) vdep[t+1]
//   igrad[t] = beta_v vdep[t] + alpha_i (1 - s[t]) igrad[t+1]
// and, when ef2 is defined, the reference's two traces whose result is
//   ef2[t] = beta_v sum_tau g[t + tau] (-eps'(tau)),  eps'(tau) = (eps(tau+1) - eps(tau-1)) / 2,
// so that dL/dT of a presynaptic spike at t is beta_i W^T ef2[t] (tprop_dLdV_to_dLdT):
//   ef1[t] = (1 - s[t]) (g[t+1] / 2 + alpha_v ef1[t+1]) - alpha_v g[t] / 2
//   ef2[t] = alpha_i (1 - s[t]) ef2[t+1] - beta_v alpha_i g[t] / 2 + beta_v ef1[t]
// On CUDA, `vdep_sum` ([B, N], when given) receives sum_t vdep[t]; elsewhere it stays undefined.
void antlr_backward_scan(const at::Tensor& g, const at::Tensor& s, at::Tensor vdep,
                         at::Tensor igrad, at::Tensor ef2, const NeuronOptions& n, ScanImpl impl,
                         at::Tensor* vdep_sum = nullptr) {
  const std::int64_t T = g.size(0);
  const bool want_ef = ef2.defined();
  const float ai = static_cast<float>(n.alpha_i), av = static_cast<float>(n.alpha_v),
              bv = static_cast<float>(n.beta_v);
#ifdef KVLAB_WITH_CUDA
  if (impl == ScanImpl::fused && cuda_fast({&g, &s, &vdep, &igrad, &ef2})) {
    at::Tensor dsum;
    if (vdep_sum) dsum = at::empty({g.size(1), g.size(2)}, g.options());
    cuda::antlr_backward(g, s, vdep, igrad, ef2, dsum, n);
    if (vdep_sum) *vdep_sum = dsum;
    return;
  }
#endif
  if (impl == ScanImpl::fused && cpu_fast(g) && cpu_fast(s) && cpu_fast(vdep)) {
    const std::int64_t BN = g.numel() / std::max<std::int64_t>(T, 1);
    const float *G = g.data_ptr<float>(), *S = s.data_ptr<float>();
    float *VD = vdep.data_ptr<float>(), *IG = igrad.data_ptr<float>();
    float* E2 = want_ef ? ef2.data_ptr<float>() : nullptr;
    at::parallel_for(0, BN, kGrain, [&](std::int64_t j0, std::int64_t j1) {
      const std::size_t m = static_cast<std::size_t>(j1 - j0);
      std::vector<float> cvd(m, 0.f), cig(m, 0.f), ce1(m, 0.f), ce2(m, 0.f), cg(m, 0.f);
      for (std::int64_t t = T - 1; t >= 0; --t) {
        const std::int64_t o = t * BN;
        for (std::int64_t j = j0; j < j1; ++j) {
          const std::size_t k = static_cast<std::size_t>(j - j0);
          const float keep = 1.f - S[o + j];
          const float gt = G[o + j];
          const float vd = gt + av * keep * cvd[k];
          const float ig = bv * vd + ai * keep * cig[k];
          VD[o + j] = vd;
          IG[o + j] = ig;
          cvd[k] = vd;
          cig[k] = ig;
          if (E2) {
            const float e1 = keep * (0.5f * cg[k] + av * ce1[k]) - 0.5f * av * gt;
            const float e2 = ai * keep * ce2[k] - 0.5f * bv * ai * gt + bv * e1;
            E2[o + j] = e2;
            ce1[k] = e1;
            ce2[k] = e2;
            cg[k] = gt;
          }
        }
      }
    });
    return;
  }
  at::Tensor cvd = at::zeros_like(g[0]), cig = at::zeros_like(g[0]), ce1 = at::zeros_like(g[0]),
             ce2 = at::zeros_like(g[0]), cg = at::zeros_like(g[0]);
  for (std::int64_t t = T - 1; t >= 0; --t) {
    const at::Tensor keep = 1 - s[t];
    cvd = g[t] + cvd * keep * n.alpha_v;
    cig = cvd * n.beta_v + cig * keep * n.alpha_i;
    vdep[t].copy_(cvd);
    igrad[t].copy_(cig);
    if (want_ef) {
      ce1 = keep * (cg * 0.5 + ce1 * n.alpha_v) - g[t] * (0.5 * n.alpha_v);
      ce2 = ce2 * keep * n.alpha_i - g[t] * (0.5 * n.beta_v * n.alpha_i) + ce1 * n.beta_v;
      ef2[t].copy_(ce2);
      cg = g[t];
    }
  }
}

// ---- LIF BPTT (reset detached, as snnTorch): dU[t] = h[t] + beta dU[t+1].
void lif_backward_scan(const at::Tensor& h, at::Tensor du, const NeuronOptions& n, ScanImpl impl) {
  const std::int64_t T = h.size(0);
  const float beta = static_cast<float>(n.lif_beta);
  if (impl == ScanImpl::fused && cpu_fast(h) && cpu_fast(du)) {
    const std::int64_t BN = h.numel() / std::max<std::int64_t>(T, 1);
    const float* H = h.data_ptr<float>();
    float* D = du.data_ptr<float>();
    at::parallel_for(0, BN, kGrain, [&](std::int64_t j0, std::int64_t j1) {
      std::vector<float> c(static_cast<std::size_t>(j1 - j0), 0.f);
      for (std::int64_t t = T - 1; t >= 0; --t) {
        const std::int64_t o = t * BN;
        for (std::int64_t j = j0; j < j1; ++j) {
          const std::size_t k = static_cast<std::size_t>(j - j0);
          c[k] = H[o + j] + beta * c[k];
          D[o + j] = c[k];
        }
      }
    });
    return;
  }
  at::Tensor c = at::zeros_like(h[0]);
  for (std::int64_t t = T - 1; t >= 0; --t) {
    c = h[t] + c * n.lif_beta;
    du[t].copy_(c);
  }
}

// LIF BPTT with the surrogate fused in: dU[t] = sigma'(U[t] - theta) dL/dS[t] + beta dU[t+1].
// On CUDA one kernel, which also leaves sum_t dU[t] ([B, N]) in `du_sum`; on CPU a parallel loop
// (du_sum stays undefined). Returns false when neither fast path applies.
// dl_ds may be strided on CUDA (e.g. the expanded ones of a spike-sum loss: nothing materialised).
bool lif_backward_fused(const at::Tensor& u, const at::Tensor& dl_ds_in, at::Tensor du,
                        at::Tensor& du_sum, const NeuronOptions& n) {
#ifdef KVLAB_WITH_CUDA
  if (cuda_fast({&u, &du}) && dl_ds_in.is_cuda() && dl_ds_in.scalar_type() == at::kFloat) {
    du_sum = at::empty({u.size(1), u.size(2)}, u.options());
    cuda::lif_backward(u, dl_ds_in, du, du_sum, n);
    return true;
  }
#endif
  if (!(cpu_fast(u) && cpu_fast(du) && dl_ds_in.device().is_cpu())) return false;
  // A loss gradient broadcast from one value (all strides 0) is read as that value.
  const bool scalar_g = dl_ds_in.dim() == 3 && dl_ds_in.stride(0) == 0 && dl_ds_in.stride(1) == 0 &&
                        dl_ds_in.stride(2) == 0;
  const at::Tensor dl_ds = scalar_g ? dl_ds_in : dl_ds_in.contiguous();
  const std::int64_t T = u.size(0);
  const std::int64_t BN = u.numel() / std::max<std::int64_t>(T, 1);
  const float beta = static_cast<float>(n.lif_beta), th = static_cast<float>(n.threshold);
  const float ka = static_cast<float>(M_PI / 2 * n.atan_alpha), ha = static_cast<float>(n.atan_alpha / 2);
  const float slope = static_cast<float>(n.fast_sigmoid_slope);
  const float sa = static_cast<float>(n.surr_alpha), sb = static_cast<float>(n.surr_beta);
  const Surrogate kind = n.surrogate;
  const float *U = u.data_ptr<float>(), *G = dl_ds.data_ptr<float>();
  float* D = du.data_ptr<float>();
  at::parallel_for(0, BN, kGrain, [&](std::int64_t j0, std::int64_t j1) {
    std::vector<float> c(static_cast<std::size_t>(j1 - j0), 0.f);
    for (std::int64_t t = T - 1; t >= 0; --t) {
      const std::int64_t o = t * BN;
      for (std::int64_t j = j0; j < j1; ++j) {
        const float x = U[o + j] - th;
        float sg;
        if (kind == Surrogate::atan) {
          const float z = ka * x;
          sg = ha / (1.f + z * z);
        } else if (kind == Surrogate::fast_sigmoid) {
          const float z = slope * std::fabs(x) + 1.f;
          sg = 1.f / (z * z);
        } else {
          sg = sa * std::exp(-sb * std::fabs(x));
        }
        const std::size_t k = static_cast<std::size_t>(j - j0);
        c[k] = sg * (scalar_g ? G[0] : G[o + j]) + beta * c[k];
        D[o + j] = c[k];
      }
    }
  });
  return true;
}

// out [T, B, out] (contiguous) = [T, B, in] x W[out, in]^T: one GEMM over all T x B rows,
// written straight into the layer's trace (the scans then overwrite it in place, step by step).
void synaptic_into(const at::Tensor& s, const at::Tensor& w, at::Tensor out) {
  const auto T = s.size(0), B = s.size(1);
  at::Tensor o2 = out.view({T * B, w.size(0)});
  at::mm_out(o2, s.reshape({T * B, s.size(2)}), w.t());
}

}  // namespace

ForwardResult forward(const Network& net, const at::Tensor& input, const SimOptions& opt) {
  KVLAB_THROW_IF(input.dim() != 3 || input.size(2) != net.sizes.front(), UsageError,
                 "snn forward: input must be [time, batch, {}], got {}", net.sizes.front(),
                 c10::str(input.sizes()));
  const std::int64_t T = input.size(0), B = input.size(1);
  const bool antlr = net.model == NeuronModel::antlr;
  const auto& n = net.neuron;
  ForwardResult fw;
  fw.time_length = T;
  const auto fopt = input.options().dtype(at::kFloat);
  const at::Tensor in = input.to(at::kFloat).contiguous();

  struct Carry {
    at::Tensor i, v, s, c;
  };
  std::vector<Carry> carry;
  for (std::size_t l = 0; l < net.layers.size(); ++l) {
    const std::int64_t N = net.sizes[l + 1];
    LayerTrace tr;
    tr.v = at::empty({T, B, N}, fopt);
    tr.s = at::empty({T, B, N}, fopt);
    Carry c;
    c.v = at::zeros({B, N}, fopt);
    c.s = at::zeros({B, N}, fopt);
    if (antlr) {
      tr.i = at::empty({T, B, N}, fopt);
      tr.v_prime = at::empty({T, B, N}, fopt);
      c.i = at::zeros({B, N}, fopt);
      c.c = (net.layers[l].bias * n.beta_bias).expand({B, N}).contiguous();
    }
    fw.layers.push_back(std::move(tr));
    carry.push_back(std::move(c));
  }

  const std::int64_t chunk = opt.early_stop ? std::max<std::int64_t>(opt.chunk, 1) : T;
  at::Tensor out_cum = at::zeros({B, net.outputs()}, fopt);
  std::int64_t term = T;
  for (std::int64_t t0 = 0; t0 < T; t0 += chunk) {
    const std::int64_t len = std::min(chunk, T - t0);
    at::Tensor prev = in.narrow(0, t0, len);
    for (std::size_t l = 0; l < net.layers.size(); ++l) {
      auto& tr = fw.layers[l];
      auto& c = carry[l];
      // The synaptic input goes into I (ANTLR) or U (LIF) of these steps, and the scan replaces it
      // step by step (each step's input is read before that step's state is written), so no
      // separate [T, B, N] input tensor is allocated.
      if (antlr) {
        at::Tensor x = tr.i.narrow(0, t0, len);
        synaptic_into(prev, net.layers[l].weight, x);
        if (n.beta_i != 1.0) x.mul_(n.beta_i);
        antlr_scan(x, c.c, x, tr.v.narrow(0, t0, len), tr.v_prime.narrow(0, t0, len),
                   tr.s.narrow(0, t0, len), c.i, c.v, c.s, n, opt.scan);
      } else {
        // The bias is added inside the fused loops (x + b, rounded as the ATen expression).
        at::Tensor x = tr.v.narrow(0, t0, len);
        synaptic_into(prev, net.layers[l].weight, x);
        lif_scan(x, net.layers[l].bias.to(at::kFloat).contiguous(), x, tr.s.narrow(0, t0, len),
                 c.v, c.s, n, opt.scan);
      }
      prev = tr.s.narrow(0, t0, len);
    }
    if (opt.early_stop) {
      // Step t is the last one when every output of every sample has spiked at some step <= t.
      const at::Tensor cum = prev.cumsum(0) + out_cum;
      const at::Tensor all = (cum > 0).flatten(1).all(1).to(at::kLong);  // [len]
      if (all.any().item<bool>()) {
        term = t0 + all.argmax().item<std::int64_t>() + 1;
        break;
      }
      out_cum = cum[len - 1];
    }
  }
  fw.term_length = term;
  fw.input = in.narrow(0, 0, term);
  for (auto& tr : fw.layers) {
    tr.v = tr.v.narrow(0, 0, term);
    tr.s = tr.s.narrow(0, 0, term);
    if (tr.i.defined()) tr.i = tr.i.narrow(0, 0, term);
    if (tr.v_prime.defined()) tr.v_prime = tr.v_prime.narrow(0, 0, term);
  }
  return fw;
}

Gradients backward(const Network& net, const ForwardResult& fw, const at::Tensor& dl_ds_out,
                   const at::Tensor& dl_dt_out, const RuleOptions& opt) {
  const bool lif = net.model == NeuronModel::lif;
  KVLAB_THROW_IF(lif != (opt.rule == Rule::surrogate), UsageError,
                 "rule {} needs the {} neuron, but the network uses the {} neuron",
                 rule_name(opt.rule), neuron_model_name(neuron_model_for(opt.rule)),
                 neuron_model_name(net.model));
  const auto& n = net.neuron;
  const std::size_t L = net.layers.size();
  const bool act_path = opt.rule == Rule::activation || opt.rule == Rule::antlr || lif;
  const bool tim_path = opt.rule == Rule::timing || opt.rule == Rule::antlr;
  const double lam_act = opt.rule == Rule::antlr ? opt.lambda_act : 1.0;
  const double lam_tim = opt.rule == Rule::antlr ? opt.lambda_timing : 1.0;
  const std::int64_t term = fw.term_length;

  Gradients gr;
  gr.weight.resize(L);
  gr.bias.resize(L);
  if (opt.keep_intermediates) {
    gr.dl_dv.resize(L);
    gr.dl_ds.resize(L);
    gr.dl_dt.resize(L);
  }
  auto fit = [&](const at::Tensor& t) -> at::Tensor {
    if (!t.defined()) return t;
    KVLAB_THROW_IF(t.dim() != 3 || t.size(0) < term || t.size(1) != fw.output().size(1) ||
                       t.size(2) != fw.output().size(2),
                   UsageError, "snn backward: loss gradient shape {} does not match the output {}",
                   c10::str(t.sizes()), c10::str(fw.output().sizes()));
    return t.narrow(0, 0, term).to(at::kFloat);  // possibly strided (a broadcast gradient)
  };
  at::Tensor dl_ds = act_path ? fit(dl_ds_out) : at::Tensor();
  at::Tensor dl_dt = tim_path ? fit(dl_dt_out) : at::Tensor();

  for (std::size_t li = L; li-- > 0;) {
    const LayerTrace& tr = fw.layers[li];
    const at::Tensor& w = net.layers[li].weight;
    const at::Tensor& s_in = li == 0 ? fw.input : fw.layers[li - 1].s;
    const std::int64_t N = w.size(0), In = w.size(1);
    if (opt.keep_intermediates) {
      gr.dl_ds[li] = dl_ds;
      gr.dl_dt[li] = dl_dt;
    }
    at::Tensor drive_grad;  // dL/d(synaptic input) per step, [term, B, N]
    at::Tensor ef2;
    if (lif) {
      at::Tensor du = at::empty_like(tr.v);
      at::Tensor du_sum;  // sum_t dU, [B, N], when the fused CUDA kernel produced it
      if (opt.keep_intermediates || !dl_ds.defined() || opt.scan == ScanImpl::aten ||
          !lif_backward_fused(tr.v.contiguous(), dl_ds, du, du_sum, n)) {
        at::Tensor h = dl_ds.defined() ? lif_surrogate_grad(tr.v - n.threshold, n) * dl_ds
                                       : at::zeros_like(tr.v);
        h = h.contiguous();
        if (opt.keep_intermediates) gr.dl_dv[li] = h;
        lif_backward_scan(h, du, n, opt.scan);
      }
      drive_grad = du;
      gr.weight[li] = at::matmul(du.reshape({-1, N}).t(), s_in.reshape({-1, In}));
      gr.bias[li] = du_sum.defined() ? du_sum.sum(0) : du.sum(at::IntArrayRef{0, 1});
    } else {
      at::Tensor g = at::zeros_like(tr.v);
      if (act_path && dl_ds.defined()) {
        // bpAct: dL/dV = surr_alpha exp(-surr_beta |V - 1|) dL/dS
        g.add_(at::exp((tr.v - 1.0).abs() * (-n.surr_beta)) * (n.surr_alpha * lam_act) * dl_ds);
      }
      if (tim_path && dl_dt.defined()) {
        // bpTiming: dL/dV = -dL/dT / V' on the steps where the neuron spiked, 0 elsewhere.
        g.add_(tr.s * dl_dt / tr.v_prime * (-lam_tim));
      }
      g = g.contiguous();
      if (opt.keep_intermediates) gr.dl_dv[li] = g;
      at::Tensor vdep = at::empty_like(g), igrad = at::empty_like(g);
      if (tim_path && li > 0) ef2 = at::empty_like(g);
      at::Tensor vdep_sum;  // sum_t vdep, [B, N], when the fused CUDA kernel produced it
      antlr_backward_scan(g, tr.s.contiguous(), vdep, igrad, ef2, n, opt.scan, &vdep_sum);
      drive_grad = igrad;
      gr.weight[li] =
          at::matmul(igrad.reshape({-1, N}).t(), s_in.reshape({-1, In})) * n.beta_i;
      gr.bias[li] = (vdep_sum.defined() ? vdep_sum.sum(0) : vdep.sum(at::IntArrayRef{0, 1})) *
                    n.beta_bias;
      if (opt.rule == Rule::timing && opt.timing_penalty != 0) {
        // Silent neurons get their incoming weights raised (prop_dLdI_to_dLdW, is_timing):
        // dW[n, :] -= timing_penalty / fan_in * (fraction of samples where n never spiked).
        const at::Tensor silent = (tr.s.sum(0) > 0).logical_not().to(at::kFloat).mean(0);
        gr.weight[li].sub_(silent.unsqueeze(1) * (opt.timing_penalty / static_cast<double>(In)));
      }
    }
    // NaNs in dW become 0 (the reference's guard against the timing path's division by V'; the
    // LIF BPTT divides by nothing, so it skips this pass over the [out, in] gradient).
    if (!lif) gr.weight[li].masked_fill_(at::isnan(gr.weight[li]), 0.0);
    if (opt.grad_clip > 0) {
      gr.weight[li].clamp_(-opt.grad_clip, opt.grad_clip);
      gr.bias[li].clamp_(-opt.grad_clip, opt.grad_clip);
    }
    if (li == 0) break;
    // To the layer below.
    const double bi = lif ? 1.0 : n.beta_i;
    const std::int64_t B = drive_grad.size(1);
    dl_ds = act_path ? (at::matmul(drive_grad.reshape({-1, N}), w) * bi).reshape({term, B, In})
                     : at::Tensor();
    dl_dt = tim_path ? (at::matmul(ef2.reshape({-1, N}), w) * bi).reshape({term, B, In}) *
                           fw.layers[li - 1].s
                     : at::Tensor();
  }
  return gr;
}

}  // namespace kvlab::snn
