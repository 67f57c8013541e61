// llama.cpp's GGUF file format (v2 and v3, little-endian): a defensive reader and the ggml
// dequantisation kernels kvlab imports with. Layout (ggml/docs/gguf.md):
//
//   "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//   n_kv x   { string key | u32 value_type | value }           string = u64 length + bytes
//   n_tensors x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
//   padding to general.alignment (default 32) | tensor data (offsets relative to here)
//
// ne[0] is the fastest-varying dimension, so a tensor's PyTorch shape is ne reversed. Every count,
// length and offset read from the file is checked against the file size before use; a violation
// is a kvlab::FormatError (exit 3) naming the file, the key or tensor and the offset.
#pragma once

#include "kvlab/llm/read_only_file.hpp"

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace kvlab::llm {

/// ggml tensor types (ggml.h enum ggml_type) that kvlab names in messages.
enum class GgmlType : std::uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9, Q2_K = 10,
  Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15, BF16 = 30,
};
/// "Q4_K", or "type 23" for a type without a name here.
std::string ggml_type_name(std::uint32_t t);
/// True for the types kvlab dequantises: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K.
bool ggml_type_supported(std::uint32_t t);

/// GGUF metadata value types.
enum class GgufType : std::uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};

/// One metadata value. Scalars are vectors of length 1 with is_array false. Integers and bools
/// land in `ints`, floats in `floats`, strings in `strings`. Nested arrays are parsed (and
/// bounds-checked) but their contents are not kept (`nested` is set).
struct GgufValue {
  GgufType type = GgufType::UINT8;  ///< element type (for arrays: of the elements)
  bool is_array = false;
  bool nested = false;
  std::vector<std::int64_t> ints;
  std::vector<double> floats;
  std::vector<std::string> strings;
  std::size_t size() const;
  bool is_int() const;   ///< any integer type or bool
  bool is_float() const;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<std::uint64_t> ne;  ///< ggml order: ne[0] fastest
  std::uint32_t type = 0;
  std::uint64_t offset = 0;       ///< relative to the data section
  std::uint64_t nbytes = 0;
  std::uint64_t numel() const;
  std::vector<std::int64_t> shape() const;  ///< PyTorch order (ne reversed)
};

class GgufFile {
 public:
  /// Opens and validates header, metadata and tensor infos (not the data).
  static GgufFile open(const std::filesystem::path& path);
  GgufFile(GgufFile&&) noexcept = default;
  GgufFile& operator=(GgufFile&&) noexcept = default;

  const std::string& path() const { return path_; }
  std::uint32_t version() const { return version_; }
  std::uint64_t alignment() const { return alignment_; }
  const std::map<std::string, GgufValue>& metadata() const { return kv_; }
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find(const std::string& name) const;

  // Typed metadata access: FormatError naming the key when missing or of another type.
  bool has(const std::string& key) const { return kv_.count(key) > 0; }
  std::int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;  ///< accepts integers too
  std::string get_string(const std::string& key) const;

  /// Reads a tensor's raw bytes (t.nbytes).
  void read_raw(const GgufTensorInfo& t, void* out) const;
  /// Reads and dequantises a tensor to float32, row-major in shape() order. FormatError for a type
  /// kvlab does not dequantise.
  std::vector<float> read_f32(const GgufTensorInfo& t) const;

 private:
  GgufFile() = default;
  std::string path_;
  ReadOnlyFile file_;
  std::uint32_t version_ = 0;
  std::uint64_t alignment_ = 32;
  std::uint64_t data_start_ = 0;
  std::map<std::string, GgufValue> kv_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, std::size_t> index_;
};

/// Block size (elements) and bytes per block of a ggml type; nullopt when unknown.
std::optional<std::pair<std::uint64_t, std::uint64_t>> ggml_block(std::uint32_t t);

/// Dequantises `n` elements (a multiple of the type's block size) from `src` to `dst`, computing
/// exactly what ggml's dequantize_row_<type> (and gguf-py's quants.dequantize) compute.
void ggml_dequantize(std::uint32_t type, const void* src, float* dst, std::int64_t n);

/// Undoes convert_hf_to_gguf.py's permute() of Q/K projection rows (llama.cpp's interleaved rope
/// layout -> Hugging Face rotate-half layout): `w` is [n_head * head_dim, cols] row-major.
void gguf_unpermute_rows(float* w, std::int64_t rows, std::int64_t cols, std::int64_t n_head);

}  // namespace kvlab::llm
