// The `model` artifact (docs/formats/model.md): a decoder-only LLM's configuration and weights.
//
//   /params                 attrs: arch, vocab_size, hidden_size, ..., (every ModelConfig field),
//                           hf_config (the config.json text, for export), dtype,
//                           original_layer_indices (int list: which original block each block was;
//                           0..n-1 unless blocks were pruned)
//   /weights/<hf name>      one dataset per tensor, named exactly as in HF safetensors
//                           ("model.layers.0.self_attn.q_proj.weight"), stored in its own dtype
//                           (float32/bfloat16/float16), row-major
//   /tokenizer/...          (tokenizer issue) the tokenizer, so a model file is self-contained
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "kvlab/core/artifact.hpp"
#include "kvlab/llm/config.hpp"

namespace kvlab::llm {

inline constexpr const char* kModelKind = "model";
inline constexpr std::uint32_t kModelFormatVersion = 1;

struct ModelFile {
  ModelConfig config;
  std::map<std::string, at::Tensor> weights;  ///< HF names -> CPU tensors
  std::vector<std::int64_t> original_layer_indices;
  core::ArtifactHeader header;  ///< filled by read_model
};

/// Reads a `model` artifact (kind/version checked; every expected tensor present with the right
/// shape, else FormatError naming it).
ModelFile read_model(const std::filesystem::path& path);
/// Writes a `model` artifact atomically.
core::ArtifactHeader write_model(const std::filesystem::path& path, const ModelFile& m,
                                 const core::Provenance& prov);

}  // namespace kvlab::llm
