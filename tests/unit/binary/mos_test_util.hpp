// Shared by the binary unit tests: random BinaryMoS parameters of a given shape.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "kvlab/binary/mos.hpp"

namespace kvlab::test {

/// Latent weight ~ N(0, 1), input scales in [0.5, 1.5), output scales in [0.01, 0.11), router
/// ~ 0.3 N(0, 1) for e > 1, bias ~ N(0, 1) when asked.
inline binary::MosParams random_params(std::int64_t in, std::int64_t out, std::int64_t e,
                                       bool bias) {
  binary::MosParams p;
  p.weight = at::randn({out, in});
  p.s_in = at::rand({e, in}) + 0.5;
  p.s_out = at::rand({e, out}) * 0.1 + 0.01;
  if (e > 1) p.router = at::randn({e, in}) * 0.3;
  if (bias) p.bias = at::randn({out});
  return p;
}

}  // namespace kvlab::test
