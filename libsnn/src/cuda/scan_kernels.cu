// Fused CUDA time loops of the spiking neurons (libsnn/src/cuda_kernels.hpp).
//
// On a GPU the per-step ATen loop costs a few hundred small kernel launches per layer and
// direction (500 steps x 3-8 ops), which is what made kvlab 2-30x slower than SpikingJelly on the
// Open Neuromorphic benchmark. Here each layer's recurrence is one launch: thread j owns one
// (batch, neuron) pair, keeps U (or I, V, s) in registers and walks the T steps; loads at step t
// are coalesced across the warp (consecutive j are consecutive addresses). The synaptic input of
// all steps is still one GEMM before the loop (network.cpp), and the weight gradient one GEMM after.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cmath>

#include "../cuda_kernels.hpp"
#include "scan_threads.cuh"

namespace kvlab::snn::cuda {

namespace {

// 64 threads per block: a 16 x 512 layer (8192 threads) still spreads over 128 SMs.
constexpr int kBlock = 64;

__global__ void lif_forward_kernel(scan::LifForwardArgs a) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < a.BN) scan::lif_forward_thread(a, j);
}

template <int Kind>
__global__ void lif_backward_kernel(scan::LifBackwardArgs a) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < a.BN) scan::lif_backward_thread<Kind>(a, j);
}

__global__ void antlr_forward_kernel(scan::AntlrForwardArgs a) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < a.BN) scan::antlr_forward_thread(a, j);
}

__global__ void antlr_backward_kernel(scan::AntlrBackwardArgs a) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < a.BN) scan::antlr_backward_thread(a, j);
}

unsigned blocks_for(std::int64_t bn) {
  return static_cast<unsigned>((bn + kBlock - 1) / kBlock);
}

// [T, B, N] (or [T, BN]) tensors: T = size(0), BN = the rest.
std::int64_t steps_of(const at::Tensor& t) { return t.dim() == 0 ? 1 : t.size(0); }
std::int64_t row_of(const at::Tensor& t) {
  std::int64_t r = 1;
  for (std::int64_t d = 1; d < t.dim(); ++d) r *= t.size(d);
  return r;
}

void check(const at::Tensor& t, const at::Tensor& ref, std::int64_t numel, const char* what) {
  TORCH_CHECK(supports(t), "snn cuda scan: ", what, " must be a contiguous float32 CUDA tensor");
  TORCH_CHECK(t.device() == ref.device(), "snn cuda scan: ", what, " is on ", t.device(),
              ", expected ", ref.device());
  TORCH_CHECK(t.numel() == numel, "snn cuda scan: ", what, " has ", t.numel(),
              " elements, expected ", numel);
}

}  // namespace

bool supports(const at::Tensor& t) {
  return t.defined() && t.is_cuda() && t.scalar_type() == at::kFloat && t.is_contiguous();
}

void lif_forward(const at::Tensor& x, const at::Tensor& bias, at::Tensor& u_out,
                 at::Tensor& s_out, at::Tensor& cu, at::Tensor& cs, const NeuronOptions& n) {
  const std::int64_t T = steps_of(x), BN = row_of(x), N = cu.dim() > 0 ? cu.size(-1) : 1;
  check(x, x, T * BN, "x");
  check(u_out, x, T * BN, "u");
  check(s_out, x, T * BN, "s");
  check(cu, x, BN, "U carry");
  check(cs, x, BN, "s carry");
  if (bias.defined()) check(bias, x, N, "bias");
  if (T == 0 || BN == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  scan::LifForwardArgs a{x.data_ptr<float>(),
                         bias.defined() ? bias.data_ptr<float>() : nullptr,
                         u_out.data_ptr<float>(),
                         s_out.data_ptr<float>(),
                         cu.data_ptr<float>(),
                         cs.data_ptr<float>(),
                         T,
                         BN,
                         N,
                         static_cast<float>(n.lif_beta),
                         static_cast<float>(n.threshold)};
  lif_forward_kernel<<<blocks_for(BN), kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void lif_backward(const at::Tensor& u, const at::Tensor& dl_ds, at::Tensor& du, at::Tensor& dsum,
                  const NeuronOptions& n) {
  const std::int64_t T = steps_of(u), BN = row_of(u);
  check(u, u, T * BN, "U");
  check(du, u, T * BN, "dU");
  // dL/dS may be strided (a broadcast loss gradient such as sum's, or a narrowed window).
  TORCH_CHECK(dl_ds.is_cuda() && dl_ds.scalar_type() == at::kFloat && dl_ds.device() == u.device() &&
                  dl_ds.dim() == 3 && u.dim() == 3 && dl_ds.sizes() == u.sizes(),
              "snn cuda scan: dL/dS must be a float32 CUDA tensor of U's shape ", u.sizes(),
              ", got ", dl_ds.sizes());
  if (dsum.defined()) check(dsum, u, BN, "dU sum");
  if (T == 0 && dsum.defined()) dsum.zero_();
  if (T == 0 || BN == 0) return;
  const c10::cuda::CUDAGuard guard(u.device());
  scan::LifBackwardArgs a{};
  a.u = u.data_ptr<float>();
  a.g = dl_ds.data_ptr<float>();
  a.du = du.data_ptr<float>();
  a.dsum = dsum.defined() ? dsum.data_ptr<float>() : nullptr;
  a.T = T;
  a.BN = BN;
  a.N = u.size(2);
  a.gs_t = dl_ds.stride(0);
  a.gs_b = dl_ds.stride(1);
  a.gs_n = dl_ds.stride(2);
  a.beta = static_cast<float>(n.lif_beta);
  a.th = static_cast<float>(n.threshold);
  a.ka = static_cast<float>(M_PI / 2 * n.atan_alpha);
  a.ha = static_cast<float>(n.atan_alpha / 2);
  a.slope = static_cast<float>(n.fast_sigmoid_slope);
  a.sa = static_cast<float>(n.surr_alpha);
  a.sb = static_cast<float>(n.surr_beta);
  const auto stream = at::cuda::getCurrentCUDAStream();
  switch (n.surrogate) {
    case Surrogate::atan:
      lif_backward_kernel<scan::kSurrAtan><<<blocks_for(BN), kBlock, 0, stream>>>(a);
      break;
    case Surrogate::fast_sigmoid:
      lif_backward_kernel<scan::kSurrFastSigmoid><<<blocks_for(BN), kBlock, 0, stream>>>(a);
      break;
    case Surrogate::exp:
      lif_backward_kernel<scan::kSurrExp><<<blocks_for(BN), kBlock, 0, stream>>>(a);
      break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void antlr_forward(const at::Tensor& x, const at::Tensor& c, at::Tensor& i_out, at::Tensor& v_out,
                   at::Tensor& vp_out, at::Tensor& s_out, at::Tensor& ci, at::Tensor& cv,
                   at::Tensor& cs, const NeuronOptions& n) {
  const std::int64_t T = steps_of(x), BN = row_of(x);
  check(x, x, T * BN, "x");
  check(c, x, BN, "bias drive");
  check(i_out, x, T * BN, "I");
  check(v_out, x, T * BN, "V");
  check(vp_out, x, T * BN, "V'");
  check(s_out, x, T * BN, "s");
  check(ci, x, BN, "I carry");
  check(cv, x, BN, "V carry");
  check(cs, x, BN, "s carry");
  if (T == 0 || BN == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  scan::AntlrForwardArgs a{};
  a.x = x.data_ptr<float>();
  a.c = c.data_ptr<float>();
  a.i = i_out.data_ptr<float>();
  a.v = v_out.data_ptr<float>();
  a.vp = vp_out.data_ptr<float>();
  a.s = s_out.data_ptr<float>();
  a.ci = ci.data_ptr<float>();
  a.cv = cv.data_ptr<float>();
  a.cs = cs.data_ptr<float>();
  a.T = T;
  a.BN = BN;
  a.ai = static_cast<float>(n.alpha_i);
  a.av = static_cast<float>(n.alpha_v);
  a.bv = static_cast<float>(n.beta_v);
  a.vmin = static_cast<float>(n.v_prime_min);
  antlr_forward_kernel<<<blocks_for(BN), kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void antlr_backward(const at::Tensor& g, const at::Tensor& s, at::Tensor& vdep, at::Tensor& igrad,
                    at::Tensor& ef2, at::Tensor& dsum, const NeuronOptions& n) {
  const std::int64_t T = steps_of(g), BN = row_of(g);
  check(g, g, T * BN, "dL/dV");
  check(s, g, T * BN, "s");
  check(vdep, g, T * BN, "vdep");
  check(igrad, g, T * BN, "dL/dI");
  if (ef2.defined()) check(ef2, g, T * BN, "ef2");
  if (dsum.defined()) check(dsum, g, BN, "vdep sum");
  if (T == 0 && dsum.defined()) dsum.zero_();
  if (T == 0 || BN == 0) return;
  const c10::cuda::CUDAGuard guard(g.device());
  scan::AntlrBackwardArgs a{};
  a.g = g.data_ptr<float>();
  a.s = s.data_ptr<float>();
  a.vdep = vdep.data_ptr<float>();
  a.igrad = igrad.data_ptr<float>();
  a.ef2 = ef2.defined() ? ef2.data_ptr<float>() : nullptr;
  a.dsum = dsum.defined() ? dsum.data_ptr<float>() : nullptr;
  a.T = T;
  a.BN = BN;
  a.ai = static_cast<float>(n.alpha_i);
  a.av = static_cast<float>(n.alpha_v);
  a.bv = static_cast<float>(n.beta_v);
  antlr_backward_kernel<<<blocks_for(BN), kBlock, 0, at::cuda::getCurrentCUDAStream()>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace kvlab::snn::cuda
