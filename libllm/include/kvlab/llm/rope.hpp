// Rotary position embedding (RoPE) as Hugging Face transformers computes it: the default
// frequencies, `linear` position interpolation and Llama 3.1's `llama3` frequency-dependent scaling.
// Positions are explicit per token, so a KV entry keeps the rotation of its original position after
// the cache evicts its neighbours.
#pragma once

#include <ATen/core/Tensor.h>

#include "kvlab/llm/config.hpp"

namespace kvlab::llm {

/// Inverse frequencies [head_dim / 2], float32 on CPU, exactly as transformers'
/// ROPE_INIT_FUNCTIONS compute them (default, linear, llama3).
at::Tensor rope_inv_freq(const ModelConfig& cfg);

/// cos and sin tables for `positions` [B, T] (int64, any device): each [B, T, head_dim], computed in
/// float32 (freqs = pos * inv_freq, emb = cat(freqs, freqs)) and cast to `dtype`. Negative
/// positions (padding) are treated as 0.
struct RopeTables {
  at::Tensor cos, sin;
};
RopeTables rope_tables(const at::Tensor& inv_freq, const at::Tensor& positions,
                       c10::ScalarType dtype);

/// x [B, H, T, D] rotated: x * cos + rotate_half(x) * sin, with cos/sin [B, T, D].
at::Tensor apply_rope(const at::Tensor& x, const RopeTables& t);

}  // namespace kvlab::llm
