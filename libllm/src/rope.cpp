#include "kvlab/llm/rope.hpp"

#include <ATen/ATen.h>

#include <cmath>

#include "cuda_kernels.hpp"

namespace kvlab::llm {

at::Tensor rope_inv_freq(const ModelConfig& cfg) {
  const std::int64_t dim = cfg.head_dim;
  // transformers: 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
  at::Tensor exps = at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim);
  at::Tensor inv_freq = 1.0 / at::pow(cfg.rope_theta, exps);
  const RopeScaling& s = cfg.rope_scaling;
  if (s.type == "linear") {
    inv_freq = inv_freq / s.factor;
  } else if (s.type == "llama3") {
    // transformers' _compute_llama3_parameters, step by step (float32 throughout).
    const double old_ctx = static_cast<double>(s.original_max_position_embeddings);
    const double low_freq_wavelen = old_ctx / s.low_freq_factor;
    const double high_freq_wavelen = old_ctx / s.high_freq_factor;
    at::Tensor wavelen = 2 * M_PI / inv_freq;
    at::Tensor llama = at::where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq);
    at::Tensor smooth = (old_ctx / wavelen - s.low_freq_factor) /
                        (s.high_freq_factor - s.low_freq_factor);
    at::Tensor smoothed = (1 - smooth) * llama / s.factor + smooth * llama;
    at::Tensor medium = at::logical_not(wavelen < high_freq_wavelen)
                            .logical_and(at::logical_not(wavelen > low_freq_wavelen));
    inv_freq = at::where(medium, smoothed, llama);
  }
  return inv_freq.contiguous();
}

RopeTables rope_tables(const at::Tensor& inv_freq, const at::Tensor& positions,
                       c10::ScalarType dtype) {
  at::Tensor pos = positions.clamp_min(0).to(at::kFloat);                     // [B, T]
  at::Tensor f = inv_freq.to(positions.device());                             // [D/2]
  at::Tensor freqs = pos.unsqueeze(-1) * f.view({1, 1, -1});                  // [B, T, D/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);                               // [B, T, D]
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

at::Tensor apply_rope(const at::Tensor& x, const RopeTables& t) {
#ifdef KVLAB_WITH_CUDA
  if (x.is_cuda() && x.dim() == 4 && x.stride(3) == 1 && t.cos.scalar_type() == x.scalar_type())
    return cuda::rope(x, t.cos, t.sin);
#endif
  const std::int64_t half = x.size(-1) / 2;
  at::Tensor x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  at::Tensor rot = at::cat({-x2, x1}, -1);
  at::Tensor c = t.cos.unsqueeze(1), s = t.sin.unsqueeze(1);  // [B, 1, T, D]
  return x * c + rot * s;
}

}  // namespace kvlab::llm
