// Hugging Face safetensors: a defensive reader (single file or sharded checkpoint) and a streaming
// writer. Format (https://huggingface.co/docs/safetensors):
//
//   u64 little-endian N | N bytes of UTF-8 JSON header | data section
//   header: { "<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//             "__metadata__": {"<key>": "<string>"} }     offsets relative to the data section
//
// Everything read from a file is checked before use: the header size against a limit and the file
// size, the JSON, every entry's fields, byte size = numel x element size, offsets inside the data
// section, no two tensors overlapping. Any violation is a kvlab::FormatError (exit 3) naming the
// file, the tensor and what was found versus expected. Data is read tensor by tensor with pread, so
// a reader holds one tensor in memory at a time, never the file.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kvlab/core/h5.hpp"
#include "kvlab/llm/read_only_file.hpp"

namespace kvlab::llm {

/// Header larger than this is refused as corrupt (the official library uses the same 100 MB).
inline constexpr std::uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

struct SafetensorsTensor {
  std::string name;
  std::string dtype;               ///< as in the header: "F32", "BF16", "F8_E4M3", ...
  std::optional<h5::DType> type;   ///< nullopt: a dtype kvlab cannot read (F8_*, ...)
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;         ///< byte offsets relative to the data section
  std::uint64_t end = 0;
  std::uint64_t nbytes() const { return end - begin; }
};

/// "F32" -> f32, "BF16" -> bf16, ... nullopt for dtypes without a kvlab element type.
std::optional<h5::DType> safetensors_dtype(const std::string& s);
/// f32 -> "F32", ...
const char* safetensors_dtype_name(h5::DType t);

/// One open .safetensors file.
class SafetensorsFile {
 public:
  /// Opens and validates the header (not the data). FormatError on any inconsistency.
  static SafetensorsFile open(const std::filesystem::path& path,
                              std::uint64_t max_header_bytes = kSafetensorsMaxHeaderBytes);
  SafetensorsFile(SafetensorsFile&&) noexcept = default;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept = default;

  const std::string& path() const { return path_; }
  /// Tensors in ascending offset order.
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  const SafetensorsTensor* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  /// Reads one tensor's bytes (t.nbytes() of them) into `out`.
  void read_raw(const SafetensorsTensor& t, void* out) const;
  /// Reads a tensor as a CPU at::Tensor in its own dtype (FormatError for unsupported dtypes or
  /// a missing name).
  at::Tensor read(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  ReadOnlyFile file_;
  std::uint64_t data_start_ = 0;
  std::uint64_t data_size_ = 0;
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

/// A checkpoint directory: `model.safetensors.index.json` (sharded: weight_map name -> shard file)
/// when present, else `model.safetensors`. Shards are opened and validated up front.
class SafetensorsCheckpoint {
 public:
  static SafetensorsCheckpoint open_dir(const std::filesystem::path& dir);
  /// The file the checkpoint was opened from (index or model.safetensors), for messages.
  const std::string& source() const { return source_; }
  std::vector<std::string> names() const;  ///< sorted
  const SafetensorsTensor* find(const std::string& name) const;
  void read_raw(const std::string& name, void* out) const;
  at::Tensor read(const std::string& name) const;
  std::size_t shard_count() const { return shards_.size(); }

 private:
  std::string source_;
  std::vector<SafetensorsFile> shards_;
  std::map<std::string, std::size_t> where_;  // tensor name -> shard index
};

struct SafetensorsSpec {
  std::string name;
  h5::DType type;
  std::vector<std::int64_t> shape;
};

/// Writes a .safetensors file: the header from `specs` (tensors packed back to back in that
/// order), then each tensor's bytes from `fill(i, buffer)` (buffer already sized to the tensor's
/// byte size), so only one tensor is in memory at a time. Writes `<out>.partial.<pid>` and renames
/// it into place. `metadata` defaults to {"format": "pt"}, which transformers requires.
void write_safetensors(const std::filesystem::path& out, const std::vector<SafetensorsSpec>& specs,
                       const std::function<void(std::size_t, std::vector<char>&)>& fill,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});
/// Convenience: writes CPU tensors (any supported dtype) in name order.
void write_safetensors(const std::filesystem::path& out,
                       const std::map<std::string, at::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace kvlab::llm
