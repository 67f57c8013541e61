// Native tokenizers (docs/tokenize.md), stored inside `model` artifacts under /tokenizer
// (docs/formats/model.md) so a model file is self-contained:
//
//   byte   ids 0..255 are raw bytes (the bundled kjv-byte-llama fixture); BOS/EOS above 255
//   bpe    byte-level BPE as Hugging Face `tokenizers` runs it (GPT-2, Llama-3, Qwen2, SmolLM2):
//          added/special tokens split out first (leftmost-longest; lstrip/rstrip/single_word),
//          optional NFC normalizer (ICU), the pre-tokenizer sequence (Split regexes run by PCRE2
//          with UTF + UCP and JIT, Digits, ByteLevel), the GPT-2 byte-to-unicode map, merges by
//          rank (lowest rank first, leftmost first; `ignore_merges` as Llama-3), byte-level decode
//   spm    SentencePiece BPE (Llama-2 family), reimplemented as libsentencepiece encodes (word by
//          word where the vocabulary makes that exact; docs/tokenize.md), from a
//          tokenizer.model file or a ModelProto rebuilt from a GGUF llama vocabulary
//
// Sources: an HF directory (tokenizer.json + tokenizer_config.json [+ tokenizer.model]), a GGUF
// file (tokenizer.ggml.*), or a model artifact's /tokenizer group. Everything a tokenizer needs
// is plain data (TokenizerData), so it round-trips through HDF5 and back to tokenizer.json.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kvlab::h5 {
class Group;
}
namespace kvlab::core {
class Progress;
}

namespace kvlab::llm {

class GgufFile;

/// One added (or special) token: split out of the text before pre-tokenisation.
struct AddedToken {
  std::int64_t id = 0;
  std::string content;
  bool special = false;      ///< skipped by decode(skip_special = true)
  bool lstrip = false;       ///< also swallows whitespace on its left
  bool rstrip = false;       ///< ... and on its right
  bool single_word = false;  ///< only matches when not inside a word
  bool normalized = false;   ///< HF: matched on normalized text (kvlab matches raw text; see docs)
};

/// One pre-tokenizer step of HF `tokenizers` (applied in order to every current piece).
struct PreTokenizerStep {
  enum class Kind { split, byte_level, digits };
  Kind kind = Kind::split;
  std::string pattern;            ///< split: the regex (Oniguruma syntax as in tokenizer.json)
  std::string behavior = "isolated";  ///< split: isolated | removed | merged_with_previous |
                                      ///< merged_with_next | contiguous
  bool add_prefix_space = false;  ///< byte_level
  bool use_regex = true;          ///< byte_level: split with the GPT-2 pattern first
  bool individual_digits = true;  ///< digits
};

/// Everything stored in /tokenizer.
struct TokenizerData {
  std::string model = "byte";  ///< "byte" | "bpe" | "spm"
  std::vector<std::string> tokens;        ///< id -> token string (bpe: byte-to-unicode form)
  std::vector<std::int32_t> token_types;  ///< GGUF convention: 1 normal, 2 unknown, 3 control,
                                          ///< 4 user-defined, 5 unused, 6 byte (may be empty)
  std::vector<float> scores;              ///< spm piece scores (may be empty)
  std::vector<std::string> merges;        ///< bpe: "left right", rank = index
  std::vector<AddedToken> added;
  std::vector<PreTokenizerStep> pre_tokenizer;
  std::string normalizer;  ///< "" (none) or "nfc"
  bool ignore_merges = false;
  std::int64_t bos_id = -1, eos_id = -1, unk_id = -1, pad_id = -1;
  bool add_bos = false, add_eos = false;  ///< the model's convention (HF post-processor)
  std::string chat_template;              ///< Jinja text, kept for export (not rendered)
  std::string spm_model;                  ///< spm: serialized SentencePiece ModelProto
  std::string source;                     ///< where it was imported from
  std::string pre_name;                   ///< GGUF tokenizer.ggml.pre, when known
};

class Tokenizer {
 public:
  /// Builds a tokenizer (compiles regexes, loads SentencePiece). FormatError on bad data.
  static std::shared_ptr<const Tokenizer> create(TokenizerData d);
  virtual ~Tokenizer() = default;

  /// Appends the ids of `text` (no BOS/EOS added). Safe to call from several threads at once:
  /// bpe/spm keep a word cache (pre-token -> ids) that one call at a time uses; a concurrent call
  /// runs uncached, with the same ids.
  virtual void encode_append(std::string_view text, std::vector<std::int64_t>& out) const = 0;
  /// Ids of `text`; `add_special` adds BOS/EOS as the model's convention says (add_bos/add_eos).
  std::vector<std::int64_t> encode(std::string_view text, bool add_special = false) const;
  /// Text of ids; `skip_special` drops control/special tokens (BOS/EOS, added special tokens).
  virtual std::string decode(const std::vector<std::int64_t>& ids,
                             bool skip_special = false) const = 0;
  /// True when decode(encode(x)) == x for every valid UTF-8 x (byte; bpe without NFC).
  virtual bool lossless() const = 0;

  /// A position in `text` (0 < p <= size) where encoding text[0,p) and text[p,..) separately
  /// gives the same ids as encoding the whole, or 0 when none is found (used for streaming).
  virtual std::size_t split_point(std::string_view text) const;
  /// Encodes a chunk that follows text already encoded up to a split_point().
  virtual void encode_continuation(std::string_view text, std::vector<std::int64_t>& out) const {
    encode_append(text, out);
  }

  const TokenizerData& data() const { return d_; }
  std::int64_t vocab_size() const { return static_cast<std::int64_t>(d_.tokens.size()); }
  std::int64_t bos_id() const { return d_.bos_id; }
  std::int64_t eos_id() const { return d_.eos_id; }

 protected:
  explicit Tokenizer(TokenizerData d) : d_(std::move(d)) {}
  TokenizerData d_;
};

/// Streams a UTF-8 text file through `t` in chunks of about `chunk_bytes` (cut at split_point(),
/// so the ids equal encoding the whole file at once); `sink` receives each chunk's ids in order.
/// Memory stays bounded by the chunk (plus a text run without a split point). Reports bytes to
/// `progress` when given. Returns the number of bytes read.
std::uint64_t encode_text_file(const Tokenizer& t, const std::filesystem::path& path,
                               const std::function<void(const std::vector<std::int64_t>&)>& sink,
                               core::Progress* progress = nullptr,
                               std::size_t chunk_bytes = std::size_t{1} << 20);

/// The fields of a serialized SentencePiece ModelProto (tokenizer.model) kvlab uses, read with a
/// small protobuf wire-format parser (no libprotobuf). FormatError naming `where` when malformed.
struct SpmProto {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<int> types;  ///< 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
  int model_type = 1;      ///< 1 unigram, 2 BPE, 3 word, 4 char
  bool byte_fallback = false;
  std::int64_t unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
  std::string normalizer;  ///< normalizer_spec.name
  bool has_charsmap = false;
  bool add_dummy_prefix = true, remove_extra_whitespaces = true, escape_whitespaces = true;
};
SpmProto parse_spm_proto(const std::string& bytes, const std::string& where);

/// The byte-level tokenizer of a vocabulary of `vocab_size` (256..511) with these BOS/EOS ids.
TokenizerData byte_tokenizer_data(std::int64_t vocab_size, std::int64_t bos_id,
                                  std::int64_t eos_id);

/// From an HF directory or a tokenizer.json path (tokenizer_config.json and tokenizer.model beside
/// it are used when present). FormatError naming the file and the unsupported component.
TokenizerData tokenizer_from_hf(const std::filesystem::path& dir_or_json);
/// From a GGUF file's tokenizer.ggml.* metadata; nullopt when it has none.
std::optional<TokenizerData> tokenizer_from_gguf(const GgufFile& f);
/// tokenizer.json text (HF `tokenizers` format) for a bpe tokenizer (export-hf); "" for others.
std::string tokenizer_to_hf_json(const TokenizerData& d);
/// tokenizer_config.json text (bos/eos tokens, add_bos_token, chat_template).
std::string tokenizer_config_to_hf_json(const TokenizerData& d);

/// Writes `d` as the /tokenizer group under `root`.
void write_tokenizer(h5::Group& root, const TokenizerData& d);
/// Reads /tokenizer under `root`; nullopt when there is none. FormatError when malformed.
std::optional<TokenizerData> read_tokenizer(const h5::Group& root);

/// The tokenizer of a `model` artifact (its /tokenizer group; byte-level models without one get
/// the byte tokenizer), an HF directory / tokenizer.json, or a GGUF file. UsageError naming the
/// path when there is none.
std::shared_ptr<const Tokenizer> load_tokenizer(const std::filesystem::path& p);
/// As load_tokenizer for a model artifact, but nullptr when the model has no tokenizer.
std::shared_ptr<const Tokenizer> model_tokenizer(const std::filesystem::path& model_artifact);

/// Writes/reads a 1-D dataset of UTF-8 strings (h5.hpp only has string attributes).
void write_string_dataset(h5::Group& g, const std::string& name,
                          const std::vector<std::string>& v);
std::vector<std::string> read_string_dataset(const h5::Group& g, const std::string& name);

}  // namespace kvlab::llm
