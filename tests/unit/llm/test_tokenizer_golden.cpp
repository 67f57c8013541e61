// Exactness of kvlab's tokenizers against Hugging Face `tokenizers` (golden data made by
// scripts/make-golden-tokenizers.py from real vocabularies: llama.cpp's vocab-only GGUF files and
// SmolLM2's; see tests/data/tokenizers/README.md):
//  - llama.cpp's .inp/.out test strings (ids made by the original HF tokenizers),
//  - a ~4 MB corpus (KJV, Unicode, code, numbers, whitespace runs), block by block: token counts and
//    FNV-1a 64 hashes of the ids equal HF's,
//  - decode(encode(x)) == x for every block where the tokenizer is lossless.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <thread>
#include <string>
#include <vector>

#include "kvlab/core/h5.hpp"
#include "kvlab/llm/gguf.hpp"
#include "kvlab/llm/tokenizer.hpp"
#include "../test_util.hpp"

using namespace kvlab;

namespace {

std::string data_dir() { return test::source_path("tests/data/tokenizers"); }

// The vocab-only GGUF stored (deflated) in ggml-vocab-<family>.gguf.h5, as a tokenizer.
std::shared_ptr<const llm::Tokenizer> family_tokenizer(const std::string& family) {
  h5::File f = h5::File::open(data_dir() + "/ggml-vocab-" + family + ".gguf.h5");
  const auto bytes = f.root().read_vec<std::uint8_t>("gguf");
  const auto p = test::scratch("vocab-" + family + ".gguf");
  test::write_file(p, std::string(bytes.begin(), bytes.end()));
  const auto g = llm::GgufFile::open(p);
  auto d = llm::tokenizer_from_gguf(g);
  REQUIRE(d);
  return llm::Tokenizer::create(*d);
}

std::uint64_t fnv64(const std::vector<std::int64_t>& ids) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (auto id : ids) {
    const auto v = static_cast<std::uint32_t>(id);
    for (int k = 0; k < 4; ++k) {
      h ^= (v >> (8 * k)) & 0xFF;
      h *= 0x100000001b3ULL;
    }
  }
  return h;
}

std::vector<std::string> split_tests(const std::string& s, const std::string& sep) {
  std::vector<std::string> out;
  std::size_t a = 0;
  for (;;) {
    const auto b = s.find(sep, a);
    if (b == std::string::npos) {
      out.push_back(s.substr(a));
      return out;
    }
    out.push_back(s.substr(a, b - a));
    a = b + sep.size();
  }
}

void check_family(const std::string& family) {
  const auto tok = family_tokenizer(family);
  // 1. llama.cpp's test strings, ids from the original HF tokenizer.
  if (family != "smollm2") {
    const std::string base = data_dir() + "/ggml-vocab-" + family + ".gguf";
    const auto tests = split_tests(test::read_file(base + ".inp"), "\n__ggml_vocab_test__\n");
    const auto want = split_tests(test::read_file(base + ".out"), "\n");
    REQUIRE(want.size() >= tests.size());
    int ok = 0;
    for (std::size_t i = 0; i < tests.size(); ++i) {
      std::vector<std::int64_t> exp;
      std::size_t p = 0;
      const std::string& w = want[i];
      while (p < w.size()) {
        while (p < w.size() && w[p] == ' ') ++p;
        if (p == w.size()) break;
        std::size_t q = p;
        while (q < w.size() && w[q] != ' ') ++q;
        exp.push_back(std::stoll(w.substr(p, q - p)));
        p = q;
      }
      const auto got = tok->encode(tests[i]);
      if (got == exp) ++ok;
      else MESSAGE(family << ": llama.cpp test " << i << " differs: \"" << tests[i] << "\"");
    }
    CHECK(ok == static_cast<int>(tests.size()));
  }
  // 2. The corpus, block by block.
  h5::File f = h5::File::open(data_dir() + "/golden.h5");
  const h5::Group root = f.root();
  const auto corpus = root.read_vec<std::uint8_t>("corpus");
  const auto block_bytes = root.read_vec<std::int64_t>("block_bytes");
  const h5::Group g = root.group(family);
  const auto counts = g.read_vec<std::int64_t>("counts");
  const auto hashes = g.read_vec<std::uint64_t>("fnv64");
  const auto first = g.read_vec<std::int32_t>("first_ids");
  REQUIRE(counts.size() == block_bytes.size());
  std::size_t off = 0, equal = 0, roundtrip = 0, first_bad = SIZE_MAX;
  std::int64_t tokens = 0;
  std::vector<std::int64_t> prefix;
  for (std::size_t b = 0; b < block_bytes.size(); ++b) {
    const std::string text(reinterpret_cast<const char*>(corpus.data()) + off,
                           static_cast<std::size_t>(block_bytes[b]));
    off += static_cast<std::size_t>(block_bytes[b]);
    const auto ids = tok->encode(text);
    tokens += static_cast<std::int64_t>(ids.size());
    if (static_cast<std::int64_t>(ids.size()) == counts[b] && fnv64(ids) == hashes[b]) ++equal;
    else if (first_bad == SIZE_MAX) first_bad = b;
    if (prefix.size() < first.size()) prefix.insert(prefix.end(), ids.begin(), ids.end());
    if (tok->decode(ids) == text) ++roundtrip;
  }
  CHECK(off == corpus.size());
  if (first_bad != SIZE_MAX) MESSAGE(family << ": first differing block " << first_bad);
  prefix.resize(std::min(prefix.size(), first.size()));
  CHECK(std::vector<std::int64_t>(first.begin(), first.begin() + static_cast<std::ptrdiff_t>(prefix.size())) == prefix);
  MESSAGE(family << ": " << equal << "/" << block_bytes.size() << " blocks equal HF, " << tokens
                 << " tokens, decode(encode(x)) == x on " << roundtrip << " blocks");
  CHECK(equal == block_bytes.size());
  if (tok->lossless()) CHECK(roundtrip == block_bytes.size());
}

}  // namespace

TEST_CASE("tokenizer golden: GPT-2 byte-level BPE equals HF tokenizers") { check_family("gpt-2"); }
TEST_CASE("tokenizer golden: Llama-3 byte-level BPE equals HF tokenizers") { check_family("llama-bpe"); }
TEST_CASE("tokenizer golden: Qwen2 byte-level BPE (NFC) equals HF tokenizers") { check_family("qwen2"); }
TEST_CASE("tokenizer golden: SmolLM2 byte-level BPE (digits) equals HF tokenizers") { check_family("smollm2"); }
TEST_CASE("tokenizer golden: Llama-2 SentencePiece equals HF tokenizers") { check_family("llama-spm"); }

TEST_CASE("tokenizer: the word cache and concurrent callers change no ids") {
  // The first call fills the word cache, the second reads it; two threads at once: one holds the
  // cache, the other runs uncached. All must give the same ids.
  h5::File f = h5::File::open(data_dir() + "/golden.h5");
  const auto corpus = f.root().read_vec<std::uint8_t>("corpus");
  const std::string text(reinterpret_cast<const char*>(corpus.data()), std::min<std::size_t>(corpus.size(), 300000));
  for (const std::string family : {"smollm2", "llama-spm"}) {
    CAPTURE(family);
    const auto tok = family_tokenizer(family);
    const auto cold = tok->encode(text);
    CHECK(cold.size() > 50000);
    CHECK(tok->encode(text) == cold);
    std::vector<std::int64_t> a, b;
    std::thread ta([&] { a = tok->encode(text); });
    std::thread tb([&] { b = tok->encode(text); });
    ta.join();
    tb.join();
    CHECK(a == cold);
    CHECK(b == cold);
  }
}
