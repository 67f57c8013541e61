// Model shapes the GPU benchmarks share (random weights; the same numbers as
// scripts/bench-decode's config.json shapes).
#pragma once

#include "kvlab/llm/config.hpp"

namespace kvlab::bench {

/// Llama-3.1-8B: 32 blocks, hidden 4096, GQA 32/8, head_dim 128, vocab 128256, llama3 RoPE scaling.
inline llm::ModelConfig llama31_8b() {
  llm::ModelConfig c;
  c.arch = llm::Arch::llama;
  c.vocab_size = 128256;
  c.hidden_size = 4096;
  c.intermediate_size = 14336;
  c.num_hidden_layers = 32;
  c.num_attention_heads = 32;
  c.num_key_value_heads = 8;
  c.head_dim = 128;
  c.max_position_embeddings = 131072;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 500000.0;
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 8192;
  c.torch_dtype = "bfloat16";
  return c;
}

}  // namespace kvlab::bench
