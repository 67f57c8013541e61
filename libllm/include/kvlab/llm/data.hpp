// Token-id files for eval, kv-eval and the other LLM commands: nanoGPT's raw .bin (uint16 or
// uint32), NumPy .npy (integer, C order), an integer HDF5 dataset, and raw UTF-8 text for
// byte-level models (id = byte value). Every reader validates sizes, types and the id range
// against the model's vocabulary and throws kvlab::FormatError naming the file otherwise.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace kvlab::core {
class Progress;
}

namespace kvlab::llm {

enum class TokenFileFormat { automatic, bin_u16, bin_u32, npy, hdf5, text };

/// CLI names: "auto", "bin-u16", "bin-u32", "npy", "h5", "text".
const std::map<std::string, TokenFileFormat>& token_file_format_names();
const char* token_file_format_name(TokenFileFormat f);

struct TokenFileOptions {
  TokenFileFormat format = TokenFileFormat::automatic;
  std::string dataset = "tokens";  ///< HDF5 dataset path (when the file has several)
};

struct TokenData {
  at::Tensor ids;  ///< int64, 1-D (2-D files are flattened row by row) or 2-D with keep_rows
  TokenFileFormat format = TokenFileFormat::automatic;  ///< the format actually read
  std::string path;
  std::vector<std::int64_t> shape;  ///< as stored
};

/// Reads token ids (low level: prefer read_model_data). `vocab_size` > 0 checks every id is in [0, vocab_size); `byte_level` says the
/// model reads raw bytes (text files are refused otherwise). Automatic format: .bin -> uint16 when
/// vocab_size <= 65536 else uint32; .npy; .h5/.hdf5 (or the HDF5 signature); .txt/.text/.md or
/// any other file -> text.
TokenData read_tokens(const std::filesystem::path& path, const TokenFileOptions& opt,
                      std::int64_t vocab_size, bool byte_level);

/// THE entry point for every command that reads a data file for a model (eval, kv-eval,
/// prune-blocks, binarize, ...): token-id files (.bin uint16/uint32, .npy, HDF5) are read as
/// read_tokens does; UTF-8 text is encoded with the tokenizer stored in the model artifact's
/// /tokenizer group (docs/formats/model.md), or as raw bytes for byte-level models without one.
/// Ids are checked against the model's vocabulary. `model_artifact` is a `model` artifact path
/// (only /params and /tokenizer are read, never the weights). FormatError/UsageError naming the
/// file otherwise (e.g. text given to a model that has no tokenizer).
TokenData read_model_data(const std::filesystem::path& data, const TokenFileOptions& opt,
                          const std::filesystem::path& model_artifact);

class Tokenizer;

struct TokenizeOptions {
  std::string format = "bin";  ///< "bin" (raw little-endian ids) or "h5" (dataset "tokens")
  bool add_bos = false;        ///< prepend the tokenizer's BOS id
  bool add_eos = false;        ///< append its EOS id
  std::size_t chunk_bytes = std::size_t{1} << 20;  ///< text read per step
};

struct TokenizeResult {
  std::uint64_t bytes = 0;  ///< text bytes read
  std::int64_t tokens = 0;
  int width = 2;            ///< bytes per id: 2 (uint16) when vocab_size <= 65536, else 4
  double seconds = 0;       ///< wall time of the whole call
};

/// Tokenizes a UTF-8 text file into a token file for `vocab_size` (uint16 when <= 65536, else
/// uint32), streaming in chunks: "bin" keeps memory at one chunk; "h5" collects the ids (4 bytes per
/// token) and writes an HDF5 file with one dataset "tokens". Written atomically (a partial file is
/// renamed into place on success). read_tokens reads both back.
TokenizeResult tokenize_file(const Tokenizer& t, std::int64_t vocab_size,
                             const std::filesystem::path& text, const std::filesystem::path& out,
                             const TokenizeOptions& opt, core::Progress& progress);

/// Bytes of a UTF-8 string as ids 0..255, and back (ids >= 256 are special tokens and skipped).
std::vector<std::int64_t> bytes_to_ids(const std::string& s);
std::string ids_to_bytes(const std::vector<std::int64_t>& ids);

/// "1,450, 2" -> {1, 450, 2}; UsageError naming `what` on anything else.
std::vector<std::int64_t> parse_id_list(const std::string& s, const std::string& what);

/// Writes a 1-D int64 array as .npy (tests and scripts).
void write_npy_i64(const std::filesystem::path& path, const std::vector<std::int64_t>& v,
                   const std::vector<std::int64_t>& shape = {});

}  // namespace kvlab::llm
