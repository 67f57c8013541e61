// The `model` artifact (docs/formats/model.md): a decoder-only LLM's configuration and weights.
//
//   /params                 attrs: arch, vocab_size, hidden_size, ..., (every ModelConfig field),
//                           hf_config (the config.json text, for export), dtype,
//                           original_layer_indices (int list: which original block each block was;
//                           0..n-1 unless blocks were pruned)
//   /weights/<hf name>      one dataset per tensor, named exactly as in HF safetensors
//                           ("model.layers.0.self_attn.q_proj.weight"), stored in its own dtype
//                           (float32/bfloat16/float16), row-major
//   /tokenizer              the tokenizer (tokenizer.hpp: byte, bpe or spm), so a model file is
//                           self-contained; /tokenizer/gguf keeps a GGUF file's raw tokenizer.ggml.*
// The full attribute list is in docs/formats/model.md; test_model_io.cpp checks the writer emits
// every key that page lists.
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "kvlab/core/artifact.hpp"
#include "kvlab/core/h5.hpp"
#include "kvlab/core/schema.hpp"
#include "kvlab/llm/config.hpp"
#include "kvlab/llm/tokenizer.hpp"
#include "kvlab/llm/linear_registry.hpp"

namespace kvlab::llm {

inline constexpr const char* kModelKind = "model";
inline constexpr std::uint32_t kModelFormatVersion = 1;
/// format_minor 2: the /tokenizer group (tokenizer.hpp; 1 is binarize /linears). Older files,
/// without it, stay readable.
inline constexpr std::uint32_t kModelFormatMinor = 2;

struct ModelFile {
  ModelConfig config;
  std::map<std::string, at::Tensor> weights;  ///< HF names -> CPU tensors
  std::vector<std::int64_t> original_layer_indices;
  core::ArtifactHeader header;  ///< filled by read_model
  /// The source config.json text (extra HF fields survive export); "" when unknown.
  std::string hf_config;
  /// The tokenizer (/tokenizer, tokenizer.hpp) when the model has one; every writer keeps it.
  std::optional<TokenizerData> tokenizer;
  /// Non-dense layers stored in /linears (linear_registry.hpp), by HF prefix; their .weight/.bias
  /// are then absent from `weights`.
  std::map<std::string, LinearRecord> linears;
};

/// Reads a `model` artifact (kind/version checked; every expected tensor present with the right
/// shape, else FormatError naming it).
ModelFile read_model(const std::filesystem::path& path);
/// Writes a `model` artifact atomically.
core::ArtifactHeader write_model(const std::filesystem::path& path, const ModelFile& m,
                                 const core::Provenance& prov);

/// Reads only /params of a model artifact (no weights): the configuration, the source config.json
/// text and original_layer_indices. `m.weights` stays empty.
ModelFile read_model_params(const std::filesystem::path& path);

/// Writes /params of a model artifact (every ModelConfig field, dtype, hf_config,
/// original_layer_indices). `dtype` names the weights' element type ("float32", "bfloat16",
/// "float16", or "mixed").
void write_model_params(h5::Group& params, const ModelConfig& c, const std::string& dtype,
                        const std::string& hf_config,
                        const std::vector<std::int64_t>& original_layer_indices);
/// The inverse of write_model_params (FormatError naming the attribute when one is missing).
ModelConfig read_model_config(const h5::Group& params);

/// Checks a set of named tensor shapes against config.expected_tensors(): every expected tensor
/// present with its shape, nothing unexpected. `where` names the source for messages
/// ("model.safetensors"). Throws FormatError listing the first problems found.
void check_model_tensors(const ModelConfig& c,
                         const std::map<std::string, std::vector<std::int64_t>>& shapes,
                         const std::string& where);

/// Registers the `model` schema (for `kvlab inspect --validate`): the /params attributes of
/// docs/formats/model.md and /weights matching the config.
void add_model_schema(core::SchemaRegistry& reg);

/// Streaming writer of a `model` artifact: one tensor at a time, so importers keep peak memory at
/// one tensor rather than one model. Nothing appears at `path` until commit(), which also checks
/// that every expected tensor was added.
class ModelWriter {
 public:
  ModelWriter(const std::filesystem::path& path, const ModelConfig& c,
              const core::Provenance& prov, std::string hf_config = {},
              std::vector<std::int64_t> original_layer_indices = {});
  /// Adds one weight from raw row-major memory (`t`: f32, f16 or bf16). FormatError when the name
  /// is not an expected tensor of the config or the shape differs.
  void add(const std::string& name, h5::DType t, const std::vector<std::int64_t>& shape,
           const void* data);
  void add(const std::string& name, const at::Tensor& t);
  /// The root group, for extra groups such as /tokenizer.
  h5::Group& root() { return w_.root(); }
  core::ArtifactHeader commit();

 private:
  core::ArtifactWriter w_;
  ModelConfig config_;
  std::map<std::string, std::vector<std::int64_t>> expected_;
  std::map<std::string, std::vector<std::int64_t>> added_;
  std::vector<std::int64_t> layers_;
  std::string hf_config_;
  std::string dtype_;
};

}  // namespace kvlab::llm
