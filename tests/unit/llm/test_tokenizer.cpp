// Tokenizer unit tests: the BPE algorithm on a hand-made vocabulary, added tokens, /tokenizer
// storage in model artifacts (write_model, Model::to_file), tokenizer.json round trip, streaming
// and read_model_data on text. Exactness against HF: test_tokenizer_golden.cpp.
#include <doctest/doctest.h>

#include "kvlab/core/artifact.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/llm/data.hpp"
#include "kvlab/llm/model.hpp"
#include "kvlab/llm/tokenizer.hpp"
#include "../test_util.hpp"
#include "tiny_model.hpp"

using namespace kvlab;

namespace {

// GPT-2's byte-to-unicode string of byte b.
std::string b2u(int b) {
  const bool direct = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  int cp = b;
  if (!direct) {
    int n = 0;
    for (int x = 0; x < b; ++x)
      if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) ++n;
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) s.push_back(static_cast<char>(cp));
  else {
    s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return s;
}

// 256 byte tokens, a few merges, one special token: ids 256.. in merge order, <|end|> last.
llm::TokenizerData toy_bpe() {
  llm::TokenizerData d;
  d.model = "bpe";
  for (int b = 0; b < 256; ++b) d.tokens.push_back(b2u(b));
  const std::string sp = b2u(' ');  // "Ġ"
  for (const auto& [l, r] : std::vector<std::pair<std::string, std::string>>{
           {"a", "a"}, {"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {sp, "w"}, {sp + "w", "o"},
           {"aa", "a"}}) {
    d.merges.push_back(l + " " + r);
    d.tokens.push_back(l + r);
  }
  d.tokens.push_back("<|end|>");
  d.added.push_back({static_cast<std::int64_t>(d.tokens.size() - 1), "<|end|>", true});
  d.token_types.assign(d.tokens.size(), 1);
  d.token_types.back() = 3;
  llm::PreTokenizerStep bl;
  bl.kind = llm::PreTokenizerStep::Kind::byte_level;
  d.pre_tokenizer = {bl};
  d.eos_id = static_cast<std::int64_t>(d.tokens.size() - 1);
  return d;
}

std::int64_t id_of(const llm::TokenizerData& d, const std::string& t) {
  for (std::size_t i = 0; i < d.tokens.size(); ++i)
    if (d.tokens[i] == t) return static_cast<std::int64_t>(i);
  return -1;
}

}  // namespace

TEST_CASE("tokenizer: byte-level BPE merges by rank, leftmost first; added tokens split out first") {
  const auto d = toy_bpe();
  const auto t = llm::Tokenizer::create(d);
  // "hello": h e -> he (rank 1), l l -> ll (2), he ll -> hell (3), hell o -> hello (4)
  CHECK(t->encode("hello") == std::vector<std::int64_t>{id_of(d, "hello")});
  // "aaaa": a a (rank 0) merges leftmost first: (aa)(aa); "aa a" (rank 7) never applies
  CHECK(t->encode("aaaa") == std::vector<std::int64_t>{id_of(d, "aa"), id_of(d, "aa")});
  // "aaa": (aa) a, then aa a -> aaa
  CHECK(t->encode("aaa") == std::vector<std::int64_t>{id_of(d, "aaa")});
  // the GPT-2 pattern keeps the space with the word: " wo" -> Ġwo
  CHECK(t->encode("hello wo") == std::vector<std::int64_t>{id_of(d, "hello"), id_of(d, b2u(' ') + "wo")});
  // the special token is matched in raw text, never merged into words
  const auto ids = t->encode("aa<|end|>hello");
  CHECK(ids == std::vector<std::int64_t>{id_of(d, "aa"), d.eos_id, id_of(d, "hello")});
  CHECK(t->decode(ids) == "aa<|end|>hello");
  CHECK(t->decode(ids, true) == "aahello");
  // every byte, including invalid UTF-8 and NUL, round-trips
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  CHECK(t->decode(t->encode(all)) == all);
  CHECK(t->lossless());
}

TEST_CASE("tokenizer: BOS/EOS convention with add_special") {
  auto d = toy_bpe();
  d.bos_id = id_of(d, "aa");
  d.add_bos = true;
  const auto t = llm::Tokenizer::create(d);
  CHECK(t->encode("hello", true) == std::vector<std::int64_t>{d.bos_id, id_of(d, "hello")});
  CHECK(t->encode("hello", false) == std::vector<std::int64_t>{id_of(d, "hello")});
}

TEST_CASE("tokenizer: stored in the model artifact, kept by write_model and Model::to_file") {
  auto c = test::tiny_llm_config();
  c.vocab_size = 300;
  auto f = test::tiny_llm_file(c);
  f.tokenizer = toy_bpe();
  f.tokenizer->chat_template = "{{ messages }}";
  const auto p = test::scratch("tok-model.h5");
  llm::write_model(p, f, core::Provenance{});
  const auto back = llm::read_model(p);
  REQUIRE(back.tokenizer);
  CHECK(back.tokenizer->tokens == f.tokenizer->tokens);
  CHECK(back.tokenizer->merges == f.tokenizer->merges);
  CHECK(back.tokenizer->added.size() == 1);
  CHECK(back.tokenizer->added[0].special);
  CHECK(back.tokenizer->eos_id == f.tokenizer->eos_id);
  CHECK(back.tokenizer->chat_template == "{{ messages }}");
  CHECK(llm::read_model_params(p).tokenizer);
  // a model built from the file and written again (prune-blocks, binarize) keeps it
  const auto m = llm::Model::from_file(back);
  const auto again = test::scratch("tok-model-2.h5");
  llm::write_model(again, m.to_file(), core::Provenance{});
  const auto t = llm::load_tokenizer(again);
  CHECK(t->encode("hello") == std::vector<std::int64_t>{id_of(*f.tokenizer, "hello")});

  // read_model_data: text is encoded with the model's tokenizer; ids files as before
  const auto txt = test::scratch("tok-data.txt");
  test::write_file(txt, "hello wo aaaa");
  const auto data = llm::read_model_data(txt, {}, again);
  CHECK(data.format == llm::TokenFileFormat::text);
  CHECK(data.ids.numel() == 5);  // hello, Ġwo, Ġ, aa, aa
  CHECK(data.ids[0].item<std::int64_t>() == id_of(*f.tokenizer, "hello"));

  // a model without a tokenizer and not byte-level refuses text with a clear message
  auto f2 = test::tiny_llm_file(test::tiny_llm_config());
  const auto p2 = test::scratch("tok-none.h5");
  llm::write_model(p2, f2, core::Provenance{});
  CHECK(test::error_of([&] { llm::read_model_data(txt, {}, p2); }, 2).find("no tokenizer") != std::string::npos);
  CHECK(test::error_of([&] { llm::load_tokenizer(p2); }, 2).find("no tokenizer") != std::string::npos);
}

TEST_CASE("tokenizer: byte-level models without /tokenizer read text as bytes") {
  auto c = test::tiny_llm_config();
  c.vocab_size = 259;
  c.bos_token_id = 256;
  c.eos_token_ids = {257};
  const auto p = test::scratch("tok-byte.h5");
  llm::write_model(p, test::tiny_llm_file(c), core::Provenance{});
  const auto t = llm::load_tokenizer(p);
  CHECK(t->encode("Hi\xc3\xa9") == std::vector<std::int64_t>{'H', 'i', 0xc3, 0xa9});
  CHECK(t->decode({'H', 'i', 257}) == "Hi");
  CHECK(t->bos_id() == 256);
  const auto txt = test::scratch("tok-byte.txt");
  test::write_file(txt, "abc");
  CHECK(llm::read_model_data(txt, {}, p).ids.numel() == 3);
}

TEST_CASE("tokenizer: tokenizer.json export and import round-trip") {
  auto d = toy_bpe();
  d.bos_id = 256;
  d.add_bos = true;
  const auto dir = test::scratch("tok-hf");
  std::filesystem::create_directories(dir);
  test::write_file(dir / "tokenizer.json", llm::tokenizer_to_hf_json(d));
  test::write_file(dir / "tokenizer_config.json", llm::tokenizer_config_to_hf_json(d));
  const auto back = llm::tokenizer_from_hf(dir);
  CHECK(back.model == "bpe");
  CHECK(back.tokens == d.tokens);
  CHECK(back.merges == d.merges);
  CHECK(back.bos_id == 256);
  CHECK(back.add_bos);
  CHECK(back.eos_id == d.eos_id);
  const auto a = llm::Tokenizer::create(d), b = llm::Tokenizer::create(back);
  CHECK(a->encode("hello aaa<|end|> wo", true) == b->encode("hello aaa<|end|> wo", true));
}

TEST_CASE("tokenizer: unsupported components are FormatErrors naming the file") {
  const auto dir = test::scratch("tok-bad");
  std::filesystem::create_directories(dir);
  test::write_file(dir / "tokenizer.json",
                   R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                       "pre_tokenizer": {"type": "Whitespace"}, "decoder": {"type": "ByteLevel"}})");
  const std::string e = test::error_of([&] { llm::tokenizer_from_hf(dir); }, 3);
  CHECK(e.find("Whitespace") != std::string::npos);
  CHECK(e.find("tokenizer.json") != std::string::npos);
  test::write_file(dir / "tokenizer.json", "{not json");
  CHECK(test::error_of([&] { llm::tokenizer_from_hf(dir); }, 3).find("not valid JSON") != std::string::npos);
  auto d = toy_bpe();
  llm::PreTokenizerStep s;
  s.pattern = "(unclosed";
  d.pre_tokenizer.insert(d.pre_tokenizer.begin(), s);
  CHECK(test::error_of([&] { llm::Tokenizer::create(d); }, 3).find("PCRE2") != std::string::npos);
}

TEST_CASE("tokenizer: streaming a file in small chunks gives the ids of the whole text") {
  const auto t = llm::Tokenizer::create(toy_bpe());
  std::string text;
  for (int i = 0; i < 400; ++i) text += i % 7 ? "hello wo aaa, " : "hello\n\n  <|end|> wo\t";
  const auto p = test::scratch("tok-stream.txt");
  test::write_file(p, text);
  std::vector<std::int64_t> ids;
  int chunks = 0;
  const auto n = llm::encode_text_file(*t, p, [&](const std::vector<std::int64_t>& c) {
    ids.insert(ids.end(), c.begin(), c.end());
    ++chunks;
  }, nullptr, 100);
  CHECK(n == text.size());
  CHECK(chunks > 10);
  CHECK(ids == t->encode(text));
}
