// Model import and export: a Hugging Face checkpoint directory or a llama.cpp GGUF file -> a
// `model` artifact, and a `model` artifact -> a Hugging Face directory (config.json +
// model.safetensors) that transformers loads. Imports stream: one tensor at a time goes from the
// source file to the HDF5 output, so peak memory is about one tensor, not one model.
// User guide: docs/import-export.md.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "kvlab/core/artifact.hpp"
#include "kvlab/core/progress.hpp"
#include "kvlab/llm/config.hpp"

namespace kvlab::llm {

class GgufFile;

/// Output element type of an import: keep the source's dtype, or convert every weight.
inline const std::vector<std::string> kImportDtypes = {"auto", "float32", "bfloat16", "float16"};

struct ImportHfOptions {
  /// "auto" keeps each tensor's stored dtype (bit-exact); otherwise every weight is converted.
  std::string dtype = "auto";
};

struct ImportGgufOptions {
  /// Quantised GGUF tensors are dequantised to float32 and then stored in this dtype ("auto" =
  /// float32; F16/BF16 source tensors are converted exactly when the target can hold them).
  std::string dtype = "float32";
};

struct ImportResult {
  ModelConfig config;
  std::int64_t tensors = 0;
  std::int64_t parameters = 0;
  std::uint64_t bytes_written = 0;  ///< weight bytes in the artifact
  std::string dtype;                ///< "float32", "bfloat16", "float16" or "mixed"
  std::string source;               ///< the file read (model.safetensors, index, or .gguf)
  core::ArtifactHeader header;
};

/// Reads `dir`/config.json and `dir`/model.safetensors (or the sharded
/// model.safetensors.index.json) and writes a `model` artifact to `out`. Every tensor the config
/// needs must be present with its shape and a float dtype (F32/BF16/F16); anything else is a
/// FormatError naming the tensor. RoPE `inv_freq` buffers of old checkpoints are skipped.
/// tokenizer.json (+ tokenizer_config.json) or tokenizer.model, when present, go to /tokenizer.
ImportResult import_hf(const std::filesystem::path& dir, const std::filesystem::path& out,
                       const ImportHfOptions& opt, const core::Provenance& prov,
                       core::Progress& progress);

/// Reads a GGUF file of a Llama-architecture model (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K
/// tensors), dequantises, undoes llama.cpp's Q/K row permutation, maps names to Hugging Face's
/// and writes a `model` artifact; the tokenizer (gpt2 BPE or llama SentencePiece vocabulary)
/// goes to /tokenizer (tokenizer.hpp; an unsupported one is skipped with a warning) and the raw
/// tokenizer.ggml.* metadata to /tokenizer/gguf.
ImportResult import_gguf(const std::filesystem::path& file, const std::filesystem::path& out,
                         const ImportGgufOptions& opt, const core::Provenance& prov,
                         core::Progress& progress);

/// The configuration a GGUF file's llama.* metadata describes (FormatError naming missing keys).
ModelConfig gguf_model_config(const GgufFile& f);

struct ExportResult {
  ModelConfig config;
  std::int64_t tensors = 0;
  std::uint64_t bytes = 0;
  std::filesystem::path config_json;
  std::filesystem::path safetensors;
  std::vector<std::filesystem::path> tokenizer_files;  ///< tokenizer.json/.model + config
};

struct TokenizerData;
/// Writes a tokenizer in HF form into `dir`: tokenizer.json (byte-level BPE) or tokenizer.model
/// (SentencePiece), plus tokenizer_config.json; nothing for byte-level. Returns the files written.
std::vector<std::filesystem::path> write_hf_tokenizer(const TokenizerData& t,
                                                      const std::filesystem::path& dir);

/// Output-directory hygiene for export-hf: refuses a path that is a file, a directory that does not
/// exist and cannot be created (parent missing), and a non-empty directory unless `force`.
void check_output_dir(const std::filesystem::path& dir, bool force);

/// Writes `dir`/config.json and `dir`/model.safetensors from a `model` artifact (creating `dir`).
/// The config is the source config.json with every field kvlab knows replaced by the artifact's
/// values (so a pruned model exports its real num_hidden_layers). Tensors are copied bit-exactly
/// in their stored dtype, one at a time. A stale sharded index in `dir` is removed.
ExportResult export_hf(const std::filesystem::path& model, const std::filesystem::path& dir,
                       core::Progress& progress);

}  // namespace kvlab::llm
