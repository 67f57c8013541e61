// kv-eval's prompt builders for models with a real tokenizer (KvTaskInputs::tokenizer): the
// pass-key prompt is built as text (KJV filler words, the key sentence, the question), encoded
// at once and exactly `context` tokens long; the question keeps the space before the key when
// the tokenizer gives that space its own token before digits; answers are checked on decoded
// text. Uses the real
// SmolLM2 (byte-level BPE) and Llama-2 (SentencePiece) vocabularies of the golden tokenizer data.
#include <doctest/doctest.h>

#include <ATen/ATen.h>

#include <set>
#include <string>
#include <vector>

#include "../test_util.hpp"
#include "kvlab/compress/kv_tasks.hpp"
#include "kvlab/core/h5.hpp"
#include "kvlab/llm/gguf.hpp"
#include "kvlab/llm/tokenizer.hpp"

using namespace kvlab;

namespace {

std::shared_ptr<const llm::Tokenizer> vocab_tokenizer(const std::string& family) {
  h5::File f = h5::File::open(test::source_path("tests/data/tokenizers/ggml-vocab-" + family + ".gguf.h5"));
  const auto bytes = f.root().read_vec<std::uint8_t>("gguf");
  const auto p = test::scratch("kv-tasks-vocab-" + family + ".gguf");
  test::write_file(p, std::string(bytes.begin(), bytes.end()));
  auto d = llm::tokenizer_from_gguf(llm::GgufFile::open(p));
  REQUIRE(d);
  return llm::Tokenizer::create(*d);
}

const std::string& heldout() {
  static const std::string t = test::read_file(test::source_path("data/kjv-byte-llama/heldout.txt"));
  return t;
}

// Inputs as load_kv_task_inputs builds them for a model with a tokenizer; `bytes` of held-out KJV.
compress::KvTaskInputs text_inputs(const std::shared_ptr<const llm::Tokenizer>& tok, std::size_t bytes) {
  compress::KvTaskInputs in;
  in.tokenizer = tok;
  in.encode = [tok](const std::string& t) { return tok->encode(t); };
  in.decode = [tok](const std::vector<std::int64_t>& ids) { return tok->decode(ids, true); };
  in.bos = tok->data().add_bos ? tok->bos_id() : -1;
  in.text = at::tensor(tok->encode(heldout().substr(0, bytes)), at::kLong);
  in.text_path = "heldout.txt";
  return in;
}

const std::string kQuestion = "\nWhat is the pass key? The pass key is";

std::string needle(const std::string& key) {
  return "The pass key is " + key + ". Remember it. " + key + " is the pass key.";
}

}  // namespace

TEST_CASE("kv tasks: text pass-key prompts through a byte-level BPE tokenizer (SmolLM2)") {
  const auto tok = vocab_tokenizer("smollm2");
  const auto in = text_inputs(tok, heldout().size());
  CHECK(in.bos == -1);  // SmolLM2 adds no BOS (as `generate` encodes prompts)
  compress::RetrievalOptions ro;
  ro.context_lengths = {200, 512};
  ro.depths = {0.0, 0.5, 1.0};
  ro.samples = 2;
  const auto s = compress::make_retrieval_samples(in, ro, 3);
  REQUIRE(s.size() == 12);
  std::set<std::string> keys;
  for (const auto& x : s) {
    CAPTURE(x.context);
    CAPTURE(x.depth);
    CHECK(x.text_mode);
    CHECK(static_cast<std::int64_t>(x.prompt.size()) == x.context);  // exactly the context
    REQUIRE(x.key.size() == 5);
    keys.insert(x.key);
    // SmolLM2 splits digits one by one and "is 12345" encodes as ..."is", " ", "1", ...: the
    // prompt ends with the space's token and the answer is the five digits.
    const std::string text = tok->decode(x.prompt);
    CHECK(x.answer == tok->encode(x.key));
    CHECK(x.answer.size() == 5);
    std::vector<std::int64_t> whole = x.prompt;
    whole.insert(whole.end(), x.answer.begin(), x.answer.end());
    CHECK(tok->encode(text + x.key) == whole);  // the prompt + answer is one natural encoding
    // One natural encoding of the whole text (not ids spliced together).
    CHECK(tok->encode(text) == x.prompt);
    REQUIRE(text.size() > kQuestion.size() + 1);
    CHECK(text.substr(text.size() - kQuestion.size() - 1) == kQuestion + " ");
    const auto at = text.find(needle(x.key));
    REQUIRE(at != std::string::npos);
    const double frac = static_cast<double>(at) / static_cast<double>(text.size() - kQuestion.size() - 1);
    if (x.depth == 0.0) CHECK(at == 0);
    if (x.depth == 1.0) CHECK(text.find(needle(x.key) + kQuestion + " ") != std::string::npos);
    if (x.depth == 0.5) CHECK((frac > 0.3 && frac < 0.7));
    // The filler is the file's own text, cut at whole words.
    const std::string before = text.substr(0, at);
    if (before.size() > 1) {
      CHECK(before.back() == ' ');
      CHECK(heldout().find(before.substr(0, before.size() - 1)) != std::string::npos);
    }
    const std::size_t after = at + needle(x.key).size();
    const std::string rest = text.substr(after, text.size() - kQuestion.size() - 1 - after);
    if (!rest.empty()) {
      CHECK(rest[0] == ' ');
      CHECK(heldout().find(rest.substr(1)) != std::string::npos);
    }
  }
  CHECK(keys.size() >= 10);
  // Deterministic in the seed.
  const auto again = compress::make_retrieval_samples(in, ro, 3);
  const auto other = compress::make_retrieval_samples(in, ro, 4);
  for (std::size_t i = 0; i < s.size(); ++i) CHECK(again[i].prompt == s[i].prompt);
  CHECK(other[0].prompt != s[0].prompt);
}

TEST_CASE("kv tasks: text pass-key prompts through SentencePiece (Llama-2): BOS, exact length") {
  const auto tok = vocab_tokenizer("llama-spm");
  const auto in = text_inputs(tok, 60000);
  REQUIRE(in.bos == 1);  // Llama-2 adds BOS
  compress::RetrievalOptions ro;
  ro.context_lengths = {300};
  ro.depths = {0.25, 0.75};
  ro.samples = 2;
  const auto s = compress::make_retrieval_samples(in, ro, 0);
  REQUIRE(s.size() == 4);
  for (const auto& x : s) {
    CHECK(x.prompt.size() == 300);
    CHECK(x.prompt[0] == 1);
    const std::string text = tok->decode(x.prompt, /*skip_special=*/true);
    CHECK(text.find(" " + needle(x.key) + " ") != std::string::npos);
    CHECK(text.find(kQuestion, text.size() - kQuestion.size() - 1) != std::string::npos);
    CHECK(!x.answer.empty());
  }
}

TEST_CASE("kv tasks: GPT-2 merges the space into the key's first token, so the question ends at \"is\"") {
  const auto tok = vocab_tokenizer("gpt-2");
  const auto in = text_inputs(tok, 40000);
  compress::RetrievalOptions ro;
  ro.context_lengths = {256};
  ro.depths = {0.5};
  ro.samples = 2;
  for (const auto& x : compress::make_retrieval_samples(in, ro, 1)) {
    CHECK(x.prompt.size() == 256);
    const std::string text = tok->decode(x.prompt);
    CHECK(text.substr(text.size() - kQuestion.size()) == kQuestion);
    std::vector<std::int64_t> ans;
    tok->encode_continuation(" " + x.key, ans);
    CHECK(x.answer == ans);  // " 12345" (GPT-2: one or two tokens, the space included)
    CHECK(tok->decode(x.answer) == " " + x.key);
  }
}

TEST_CASE("kv tasks: text answers, and filler files that are too short") {
  CHECK(compress::text_answer_correct(" 12345.", "12345"));
  CHECK(compress::text_answer_correct("12345", "12345"));
  CHECK(compress::text_answer_correct("\n 12345 is the key", "12345"));
  CHECK_FALSE(compress::text_answer_correct(" 123456", "12345"));
  CHECK_FALSE(compress::text_answer_correct(" 1234", "12345"));
  CHECK_FALSE(compress::text_answer_correct(" The key is 12345", "12345"));
  CHECK_FALSE(compress::text_answer_correct("", "12345"));

  const auto tok = vocab_tokenizer("smollm2");
  const auto in = text_inputs(tok, 2000);  // about 450 tokens
  compress::RetrievalOptions ro;
  ro.context_lengths = {1024};
  ro.depths = {0.5};
  ro.samples = 1;
  const std::string e = test::error_of([&] { (void)compress::make_retrieval_samples(in, ro, 0); }, 2);
  CHECK(e.find("--retrieval-context 1024") != std::string::npos);
  CHECK(e.find("heldout.txt") != std::string::npos);
}
