// Fused CUDA time loops of the LIF and ANTLR neurons (src/cuda/scan_kernels.cu), compiled only
// into a CUDA build (KVLAB_WITH_CUDA). Private to libsnn: network.cpp calls them for CUDA float32
// contiguous tensors and falls back to per-step ATen ops otherwise. One thread per (batch, neuron)
// walks all T steps (src/cuda/scan_threads.cuh); one launch per layer and direction instead of a
// few hundred small ATen kernels.
//
// All [T, B, N] arguments are float32, contiguous, on the same CUDA device; carries are [B, N].
#pragma once

#ifdef KVLAB_WITH_CUDA

#include <ATen/core/Tensor.h>

#include "kvlab/snn/network.hpp"

namespace kvlab::snn::cuda {

/// Whether the fused kernels take these tensors (CUDA, float32, contiguous).
bool supports(const at::Tensor& t);

/// LIF forward over x's T steps: U[t] = U[t-1] beta + (x[t] + bias) - theta s[t-1], s = U > theta,
/// rounded as the ATen expression. bias [N] or undefined. Carries cu, cs [B, N] updated in place.
void lif_forward(const at::Tensor& x, const at::Tensor& bias, at::Tensor& u_out,
                 at::Tensor& s_out, at::Tensor& cu, at::Tensor& cs, const NeuronOptions& n);

/// LIF BPTT: du[t] = sigma'(U[t] - theta) dl_ds[t] + beta du[t+1]. When dsum is defined ([B, N])
/// it receives sum_t du[t].
void lif_backward(const at::Tensor& u, const at::Tensor& dl_ds, at::Tensor& du, at::Tensor& dsum,
                  const NeuronOptions& n);

/// ANTLR neuron forward (network.cpp, antlr_scan): x = beta_i W s_in [T, B, N], c = beta_bias b
/// [B, N]; carries ci, cv, cs [B, N] updated in place.
void antlr_forward(const at::Tensor& x, const at::Tensor& c, at::Tensor& i_out, at::Tensor& v_out,
                   at::Tensor& vp_out, at::Tensor& s_out, at::Tensor& ci, at::Tensor& cv,
                   at::Tensor& cs, const NeuronOptions& n);

/// ANTLR backward through time (network.cpp, antlr_backward_scan); ef2 and dsum (sum_t vdep,
/// [B, N]) are filled when defined.
void antlr_backward(const at::Tensor& g, const at::Tensor& s, at::Tensor& vdep, at::Tensor& igrad,
                    at::Tensor& ef2, at::Tensor& dsum, const NeuronOptions& n);

}  // namespace kvlab::snn::cuda

#endif  // KVLAB_WITH_CUDA
