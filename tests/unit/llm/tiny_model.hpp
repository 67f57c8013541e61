// Random tiny decoder models built in memory for the runtime tests (no file I/O).
#pragma once

#include <ATen/ATen.h>

#include "kvlab/llm/model.hpp"

namespace kvlab::test {

inline llm::ModelConfig tiny_llm_config(llm::Arch arch = llm::Arch::llama, bool tied = false) {
  llm::ModelConfig c;
  c.arch = arch;
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = tied;
  c.attention_bias = arch == llm::Arch::qwen2;
  if (arch == llm::Arch::llama) {
    c.rope_scaling.type = "llama3";
    c.rope_scaling.factor = 8.0;
    c.rope_scaling.original_max_position_embeddings = 16;  // small, so scaling matters here
  }
  c.eos_token_ids = {1};
  return c;
}

/// Random weights with std 0.2 (norm weights around 1) from a seeded generator.
inline llm::ModelFile tiny_llm_file(const llm::ModelConfig& c, std::uint64_t seed = 7) {
  at::manual_seed(seed);
  llm::ModelFile f;
  f.config = c;
  for (const auto& [name, shape] : c.expected_tensors()) {
    at::Tensor t = name.find("norm") != std::string::npos
                       ? 1.0 + 0.1 * at::randn(shape, at::kFloat)
                       : 0.2 * at::randn(shape, at::kFloat);
    f.weights[name] = t;
  }
  for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) f.original_layer_indices.push_back(i);
  return f;
}

inline llm::Model tiny_llm(llm::Arch arch = llm::Arch::llama, bool tied = false) {
  return llm::Model::from_file(tiny_llm_file(tiny_llm_config(arch, tied)));
}

/// Positions 0..T-1 for every row, [B, T].
inline at::Tensor arange_positions(std::int64_t b, std::int64_t t, std::int64_t start = 0) {
  return at::arange(start, start + t, at::kLong).unsqueeze(0).expand({b, t}).contiguous();
}

}  // namespace kvlab::test
