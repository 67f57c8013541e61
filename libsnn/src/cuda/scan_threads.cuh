// The per-(batch, neuron) time loops of the fused CUDA scans (scan_kernels.cu): one thread owns
// one (batch, neuron) pair and walks all T steps, keeping the state in registers and loading the
// next kPrefetch steps' inputs before computing them (the loads do not depend on the recurrence,
// so eight are in flight at once instead of one per step).
//
// __host__ __device__ so the same loops can be run on the CPU to check the indexing; the
// forward recurrences round every operation exactly where the per-step ATen expressions in
// network.cpp round (no fused multiply-add), so their spikes equal the ATen path's bit for bit.
// Layout: [T, BN] row-major (BN = batch x neurons), element (t, j) at t * BN + j.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define KVLAB_SNN_HD __host__ __device__ __forceinline__
#define KVLAB_SNN_UNROLL _Pragma("unroll")
#else
#define KVLAB_SNN_HD inline
#define KVLAB_SNN_UNROLL
#endif

namespace kvlab::snn::scan {

constexpr int kPrefetch = 8;

// Correctly rounded float ops that the compiler may not contract into an FMA.
KVLAB_SNN_HD float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
KVLAB_SNN_HD float sub_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
KVLAB_SNN_HD float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
// Plain loads (not __ldg): the forward scans run in place, x aliasing U or I.
KVLAB_SNN_HD float load(const float* p) { return *p; }

/// Surrogate kinds, as kvlab::snn::Surrogate.
enum : int { kSurrExp = 0, kSurrFastSigmoid = 1, kSurrAtan = 2 };

// ---- LIF forward (snnTorch Leaky, subtract reset), as network.cpp's ATen loop:
//   U[t] = (U[t-1] * beta + (x[t] + b)) - s[t-1] * theta;  s[t] = U[t] > theta
// x may be u itself (in place: step t's input is read before U[t] is written).
struct LifForwardArgs {
  const float* x;     ///< [T, BN] synaptic input (W s_in, without the bias)
  const float* bias;  ///< [N] or null
  float* u;           ///< [T, BN] out
  float* s;           ///< [T, BN] out
  float* cu;          ///< [BN] carry in/out: U[-1]
  float* cs;          ///< [BN] carry in/out: s[-1]
  std::int64_t T, BN, N;
  float beta, th;
};

KVLAB_SNN_HD void lif_forward_thread(const LifForwardArgs& a, std::int64_t j) {
  const std::int64_t BN = a.BN;
  const float b = a.bias ? a.bias[j % a.N] : 0.f;
  const bool has_bias = a.bias != nullptr;
  float pu = a.cu[j], ps = a.cs[j];
  const float* x = a.x + j;
  float* u = a.u + j;
  float* s = a.s + j;
  std::int64_t t = 0;
  for (; t + kPrefetch <= a.T; t += kPrefetch) {
    float xv[kPrefetch];
KVLAB_SNN_UNROLL
    for (int k = 0; k < kPrefetch; ++k) xv[k] = load(x + (t + k) * BN);
KVLAB_SNN_UNROLL
    for (int k = 0; k < kPrefetch; ++k) {
      const float xin = has_bias ? add_rn(xv[k], b) : xv[k];
      const float uu = sub_rn(add_rn(mul_rn(pu, a.beta), xin), mul_rn(ps, a.th));
      const float ss = uu > a.th ? 1.f : 0.f;
      u[(t + k) * BN] = uu;
      s[(t + k) * BN] = ss;
      pu = uu;
      ps = ss;
    }
  }
  for (; t < a.T; ++t) {
    const float xv = load(x + t * BN);
    const float xin = has_bias ? add_rn(xv, b) : xv;
    const float uu = sub_rn(add_rn(mul_rn(pu, a.beta), xin), mul_rn(ps, a.th));
    const float ss = uu > a.th ? 1.f : 0.f;
    u[t * BN] = uu;
    s[t * BN] = ss;
    pu = uu;
    ps = ss;
  }
  a.cu[j] = pu;
  a.cs[j] = ps;
}

// ---- LIF BPTT (reset detached): dU[t] = sigma'(U[t] - theta) dL/dS[t] + beta dU[t+1].
struct LifBackwardArgs {
  const float* u;  ///< [T, BN] membrane
  const float* g;  ///< dL/dS [T, B, N] with strides gs_t, gs_b, gs_n (0 for a broadcast loss)
  float* du;       ///< [T, BN] out
  float* dsum;     ///< [BN] out: sum_t dU[t] (the bias gradient before the batch sum), or null
  std::int64_t T, BN, N;
  std::int64_t gs_t, gs_b, gs_n;
  float beta, th;
  float ka, ha;       ///< atan: ha / (1 + (ka x)^2)
  float slope;        ///< fast sigmoid: 1 / (slope |x| + 1)^2
  float sa, sb;       ///< exp: sa exp(-sb |x|)
};

template <int Kind>
KVLAB_SNN_HD float surrogate(const LifBackwardArgs& a, float x) {
  if (Kind == kSurrAtan) {
    const float z = a.ka * x;
    return a.ha / (1.f + z * z);
  } else if (Kind == kSurrFastSigmoid) {
    const float z = a.slope * fabsf(x) + 1.f;
    return 1.f / (z * z);
  } else {
    return a.sa * expf(-a.sb * fabsf(x));
  }
}

template <int Kind>
KVLAB_SNN_HD void lif_backward_thread(const LifBackwardArgs& a, std::int64_t j) {
  const std::int64_t BN = a.BN;
  const float* u = a.u + j;
  const float* g = a.g + (j / a.N) * a.gs_b + (j % a.N) * a.gs_n;
  const std::int64_t gt = a.gs_t;
  float* du = a.du + j;
  float c = 0.f, acc = 0.f;
  std::int64_t hi = a.T;  // steps [0, hi) remain, walked downwards
  for (; hi >= kPrefetch; hi -= kPrefetch) {
    float uv[kPrefetch], gv[kPrefetch];
KVLAB_SNN_UNROLL
    for (int k = 0; k < kPrefetch; ++k) {
      uv[k] = load(u + (hi - 1 - k) * BN);
      gv[k] = load(g + (hi - 1 - k) * gt);
    }
KVLAB_SNN_UNROLL
    for (int k = 0; k < kPrefetch; ++k) {
      const float h = surrogate<Kind>(a, uv[k] - a.th) * gv[k];
      c = add_rn(h, mul_rn(c, a.beta));
      du[(hi - 1 - k) * BN] = c;
      acc += c;
    }
  }
  for (std::int64_t t = hi - 1; t >= 0; --t) {
    const float h = surrogate<Kind>(a, load(u + t * BN) - a.th) * load(g + t * gt);
    c = add_rn(h, mul_rn(c, a.beta));
    du[t * BN] = c;
    acc += c;
  }
  if (a.dsum) a.dsum[j] = acc;
}

// ---- ANTLR neuron forward, as network.cpp's ATen loop:
//   keep = 1 - s[t-1]; vprev = V[t-1] keep
//   I[t] = x[t] + (I[t-1] keep) alpha_i
//   V[t] = (I[t] beta_v + c) + vprev alpha_v;  s[t] = V[t] >= 1;  V'[t] = max(V[t] - vprev, vmin)
struct AntlrForwardArgs {
  const float* x;  ///< [T, BN] beta_i W s_in (may be i itself: in place)
  const float* c;  ///< [BN] beta_bias b, per (batch, neuron)
  float *i, *v, *vp, *s;  ///< [T, BN] out
  float *ci, *cv, *cs;    ///< [BN] carries in/out
  std::int64_t T, BN;
  float ai, av, bv, vmin;
};

KVLAB_SNN_HD void antlr_forward_step(const AntlrForwardArgs& a, float xv, float cc, float& pi,
                                     float& pv, float& ps, std::int64_t o) {
  const float keep = 1.f - ps;
  const float vprev = pv * keep;
  const float cur = add_rn(xv, mul_rn(pi * keep, a.ai));
  const float vv = add_rn(add_rn(mul_rn(cur, a.bv), cc), mul_rn(vprev, a.av));
  const float d = sub_rn(vv, vprev);
  const float ss = vv >= 1.f ? 1.f : 0.f;
  a.i[o] = cur;
  a.v[o] = vv;
  a.vp[o] = d < a.vmin ? a.vmin : d;
  a.s[o] = ss;
  pi = cur;
  pv = vv;
  ps = ss;
}

KVLAB_SNN_HD void antlr_forward_thread(const AntlrForwardArgs& a, std::int64_t j) {
  const std::int64_t BN = a.BN;
  const float cc = a.c[j];
  float pi = a.ci[j], pv = a.cv[j], ps = a.cs[j];
  const float* x = a.x + j;
  std::int64_t t = 0;
  for (; t + kPrefetch <= a.T; t += kPrefetch) {
    float xv[kPrefetch];
KVLAB_SNN_UNROLL
    for (int k = 0; k < kPrefetch; ++k) xv[k] = load(x + (t + k) * BN);
KVLAB_SNN_UNROLL
    for (int k = 0; k < kPrefetch; ++k) antlr_forward_step(a, xv[k], cc, pi, pv, ps, (t + k) * BN + j);
  }
  for (; t < a.T; ++t) antlr_forward_step(a, load(x + t * BN), cc, pi, pv, ps, t * BN + j);
  a.ci[j] = pi;
  a.cv[j] = pv;
  a.cs[j] = ps;
}

// ---- ANTLR backward through time (network.cpp, antlr_backward_scan):
//   vdep[t] = g[t] + alpha_v (1 - s[t]) vdep[t+1];  igrad[t] = beta_v vdep[t] + alpha_i (1 - s[t]) igrad[t+1]
//   ef1[t] = (1 - s[t]) (g[t+1] / 2 + alpha_v ef1[t+1]) - alpha_v g[t] / 2
//   ef2[t] = alpha_i (1 - s[t]) ef2[t+1] - beta_v alpha_i g[t] / 2 + beta_v ef1[t]
struct AntlrBackwardArgs {
  const float* g;  ///< [T, BN] dL/dV
  const float* s;  ///< [T, BN] spikes
  float *vdep, *igrad;  ///< [T, BN] out
  float* ef2;           ///< [T, BN] out, or null
  float* dsum;          ///< [BN] out: sum_t vdep[t], or null
  std::int64_t T, BN;
  float ai, av, bv;
};

KVLAB_SNN_HD void antlr_backward_step(const AntlrBackwardArgs& a, float gt, float st, float& cvd,
                                      float& cig, float& ce1, float& ce2, float& cg, float& acc,
                                      std::int64_t o) {
  const float keep = 1.f - st;
  const float vd = gt + cvd * keep * a.av;
  const float ig = vd * a.bv + cig * keep * a.ai;
  a.vdep[o] = vd;
  a.igrad[o] = ig;
  cvd = vd;
  cig = ig;
  acc += vd;
  if (a.ef2) {
    const float e1 = keep * (cg * 0.5f + ce1 * a.av) - gt * (0.5f * a.av);
    const float e2 = ce2 * keep * a.ai - gt * (0.5f * a.bv * a.ai) + e1 * a.bv;
    a.ef2[o] = e2;
    ce1 = e1;
    ce2 = e2;
    cg = gt;
  }
}

KVLAB_SNN_HD void antlr_backward_thread(const AntlrBackwardArgs& a, std::int64_t j) {
  const std::int64_t BN = a.BN;
  const float* g = a.g + j;
  const float* s = a.s + j;
  float cvd = 0.f, cig = 0.f, ce1 = 0.f, ce2 = 0.f, cg = 0.f, acc = 0.f;
  std::int64_t hi = a.T;
  for (; hi >= kPrefetch; hi -= kPrefetch) {
    float gv[kPrefetch], sv[kPrefetch];
KVLAB_SNN_UNROLL
    for (int k = 0; k < kPrefetch; ++k) {
      gv[k] = load(g + (hi - 1 - k) * BN);
      sv[k] = load(s + (hi - 1 - k) * BN);
    }
KVLAB_SNN_UNROLL
    for (int k = 0; k < kPrefetch; ++k)
      antlr_backward_step(a, gv[k], sv[k], cvd, cig, ce1, ce2, cg, acc, (hi - 1 - k) * BN + j);
  }
  for (std::int64_t t = hi - 1; t >= 0; --t)
    antlr_backward_step(a, load(g + t * BN), load(s + t * BN), cvd, cig, ce1, ce2, cg, acc,
                        t * BN + j);
  if (a.dsum) a.dsum[j] = acc;
}

}  // namespace kvlab::snn::scan
