// Next-token selection: greedy (temperature 0) or sampling with temperature, top-k and top-p,
// applied in transformers' order (temperature, then top-k, then top-p). Sampling runs on the CPU
// with its own seeded generator, so a seed gives the same tokens on CPU and CUDA.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/Generator.h>

#include <cstdint>
#include <vector>

namespace kvlab::llm {

struct SamplingOptions {
  double temperature = 0.0;  ///< 0: greedy (argmax)
  std::int64_t top_k = 0;    ///< 0: off
  double top_p = 1.0;        ///< 1: off; keeps the smallest set of tokens with mass >= top_p
};

/// Logits [B, V] with the tokens top-k / top-p remove set to -inf, divided by the temperature.
at::Tensor warp_logits(const at::Tensor& logits, const SamplingOptions& o);

class Sampler {
 public:
  Sampler(const SamplingOptions& o, std::uint64_t seed);
  /// One token per row of logits [B, V] (any device).
  std::vector<std::int64_t> next(const at::Tensor& logits);

 private:
  SamplingOptions o_;
  at::Generator gen_;
};

}  // namespace kvlab::llm
