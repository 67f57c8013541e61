// GGUF: dequantisation bit-exact against gguf-py's reference numbers (tests/data/golden/gguf),
// the import of llama-untied in F32/F16/Q8_0/Q4_0 (Q/K un-permuted back to HF layout), the kept
// tokenizer metadata, and malformed files refused with FormatError, never a crash.
#include <doctest/doctest.h>

#include <ATen/ATen.h>

#include <cstring>
#include <random>

#include "../test_util.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/core/progress.hpp"
#include "kvlab/llm/gguf.hpp"
#include "kvlab/llm/import_export.hpp"
#include "kvlab/llm/model_io.hpp"
#include "kvlab/llm/safetensors.hpp"

using namespace kvlab;
namespace fs = std::filesystem;

namespace {

std::string golden(const std::string& rel) {
  return test::source_path("tests/data/golden/" + rel);
}

at::Tensor as_tensor(const std::vector<float>& v, const std::vector<std::int64_t>& shape) {
  return at::from_blob(const_cast<float*>(v.data()), shape, at::kFloat).clone();
}

template <class T>
void put(std::string& s, std::size_t off, T v) {
  std::memcpy(&s[off], &v, sizeof v);
}

void expect_format_error(const std::string& bytes, const std::string& name,
                         const std::string& needle) {
  const fs::path p = test::scratch(name);
  test::write_file(p, bytes);
  CAPTURE(name);
  CHECK_THROWS_WITH_AS(llm::GgufFile::open(p), doctest::Contains(needle.c_str()), FormatError);
}

}  // namespace

TEST_CASE("dequantisation matches gguf-py for F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q4_K Q6_K bit-exactly") {
  const auto f = llm::GgufFile::open(golden("gguf/quant-types.gguf"));
  const auto expected = llm::SafetensorsFile::open(golden("gguf/quant-types.expected.safetensors"));
  REQUIRE(f.tensors().size() == 8);
  for (const auto& t : f.tensors()) {
    CAPTURE(t.name);
    CAPTURE(llm::ggml_type_name(t.type));
    const at::Tensor got = as_tensor(f.read_f32(t), t.shape());
    const at::Tensor want = expected.read(t.name);
    REQUIRE(got.sizes() == want.sizes());
    CHECK(at::equal(got, want));  // bitwise: same float ops in the same order as ggml
  }
}

TEST_CASE("un-permute inverts convert_hf_to_gguf's Q/K permutation") {
  // 2 heads of head_dim 4, 3 columns: GGUF row h*4 + 2i + s holds HF row h*4 + 2s + i.
  std::vector<float> w(8 * 3);
  for (int r = 0; r < 8; ++r)
    for (int c = 0; c < 3; ++c) w[r * 3 + c] = static_cast<float>(r * 10 + c);
  llm::gguf_unpermute_rows(w.data(), 8, 3, 2);
  const int gguf_row_of_hf[8] = {0, 2, 1, 3, 4, 6, 5, 7};
  for (int r = 0; r < 8; ++r) CHECK(w[r * 3] == doctest::Approx(gguf_row_of_hf[r] * 10));
}

TEST_CASE("import-gguf of llama-untied reproduces the HF weights (F32 exact, F16/Q8_0/Q4_0 as gguf-py)") {
  const auto hf = llm::SafetensorsFile::open(golden("llama-untied/model.safetensors"));
  core::NullProgress progress;
  for (const std::string q : {"f32", "f16", "q8_0", "q4_0"}) {
    CAPTURE(q);
    const fs::path out = test::scratch("gguf-" + q + ".h5");
    const auto r = llm::import_gguf(golden("gguf/llama-untied-" + q + ".gguf"), out, {}, {},
                                    progress);
    CHECK(r.tensors == 21);
    const llm::ModelFile m = llm::read_model(out);
    CHECK(m.config.num_hidden_layers == 2);
    CHECK(m.config.num_key_value_heads == 4);
    CHECK(m.config.rope_theta == 500000.0);
    CHECK(m.config.rms_norm_eps == 1e-6);
    CHECK_FALSE(m.config.tie_word_embeddings);
    std::optional<llm::SafetensorsFile> exp;
    if (q == "q8_0" || q == "q4_0")
      exp = llm::SafetensorsFile::open(golden("gguf/llama-untied-" + q + ".expected.safetensors"));
    for (const auto& [name, w] : m.weights) {
      CAPTURE(name);
      at::Tensor want = hf.read(name);
      if (exp) want = exp->read(name);
      else if (q == "f16" && want.dim() == 2) want = want.to(at::kHalf).to(at::kFloat);
      CHECK(at::equal(w, want));
    }
    // The tokenizer metadata is kept for the tokenizer issue.
    auto reader = core::ArtifactReader::open(out, "model", 1, 1);
    const h5::Group tok = reader.root().group("tokenizer/gguf");
    CHECK(tok.attr_string("model") == "llama");
    CHECK(tok.attr_int("bos_token_id") == 1);
    CHECK(tok.info("tokens").shape == h5::Shape{256});
    CHECK(tok.read_vec<float>("scores").size() == 256);
    CHECK(tok.read_vec<std::int32_t>("token_type")[3] == 6);
  }
}

TEST_CASE("malformed GGUF files are refused with FormatError") {
  const std::string raw = test::read_file(golden("gguf/llama-untied-q4_0.gguf"));
  REQUIRE(raw.size() > 1000);
  SUBCASE("bad magic") {
    std::string b = raw;
    b[0] = 'X';
    expect_format_error(b, "magic.gguf", "magic is \"XGUF\" but a GGUF file starts with \"GGUF\"");
  }
  SUBCASE("too short") { expect_format_error(raw.substr(0, 10), "short.gguf", "only 10 bytes"); }
  SUBCASE("unsupported version") {
    std::string b = raw;
    put<std::uint32_t>(b, 4, 1);
    expect_format_error(b, "v1.gguf", "GGUF version 1 is not supported");
    put<std::uint32_t>(b, 4, 0x03000000);
    expect_format_error(b, "be.gguf", "big-endian GGUF is not supported");
  }
  SUBCASE("absurd counts") {
    std::string b = raw;
    put<std::uint64_t>(b, 8, std::uint64_t{1} << 40);
    expect_format_error(b, "ntensors.gguf", "tensor count 1099511627776 cannot fit");
    b = raw;
    put<std::uint64_t>(b, 16, std::uint64_t{1} << 50);
    expect_format_error(b, "nkv.gguf", "metadata count 1125899906842624 cannot fit");
  }
  SUBCASE("huge string length") {
    std::string b = raw;
    put<std::uint64_t>(b, 24, std::uint64_t{1} << 60);  // length of the first key
    expect_format_error(b, "strlen.gguf", "claims a 1152921504606846976-byte string");
  }
  SUBCASE("bad value type") {
    std::string b = raw;
    std::uint64_t klen;
    std::memcpy(&klen, &b[24], 8);
    put<std::uint32_t>(b, 32 + klen, 99);
    expect_format_error(b, "vtype.gguf", "has value type 99");
  }
  SUBCASE("truncated anywhere: always a FormatError") {
    for (std::size_t cut : {24ul, 40ul, 100ul, 1000ul, 3000ul, raw.size() / 2, raw.size() - 1}) {
      CAPTURE(cut);
      const fs::path p = test::scratch("cut.gguf");
      test::write_file(p, raw.substr(0, cut));
      CHECK_THROWS_AS(llm::GgufFile::open(p), FormatError);
    }
  }
}

TEST_CASE("unsupported tensor types and architectures are refused at import") {
  core::NullProgress progress;
  // quant-types.gguf has no llama.* metadata: refused naming the key.
  CHECK_THROWS_WITH_AS(llm::import_gguf(golden("gguf/quant-types.gguf"), test::scratch("x.h5"), {},
                                        {}, progress),
                       doctest::Contains("metadata key llama.embedding_length is missing"),
                       FormatError);
  std::string raw = test::read_file(golden("gguf/llama-untied-f32.gguf"));
  const auto f = llm::GgufFile::open(golden("gguf/llama-untied-f32.gguf"));
  CHECK(f.version() == 3);
  CHECK(f.get_string("general.architecture") == "llama");
  // general.architecture patched to "mamba": refused. Layout: key, u32 type, u64 length, value.
  const std::size_t arch = raw.find("general.architecture");
  REQUIRE(arch != std::string::npos);
  std::string b = raw;
  b.replace(arch + 20 + 4 + 8, 5, "mamba");
  const fs::path p = test::scratch("mamba.gguf");
  test::write_file(p, b);
  CHECK_THROWS_WITH_AS(llm::import_gguf(p, test::scratch("y.h5"), {}, {}, progress),
                       doctest::Contains("general.architecture is \"mamba\""), FormatError);
  CHECK_FALSE(fs::exists(test::scratch("y.h5")));
  // token_embd.weight re-typed as Q5_0 (ggml type 6): listed, but refused at import.
  const std::size_t emb = raw.rfind("token_embd.weight");
  REQUIRE(emb != std::string::npos);
  b = raw;
  put<std::uint32_t>(b, emb + 17 + 4 + 2 * 8, 6);
  test::write_file(p, b);
  CHECK_THROWS_WITH_AS(llm::import_gguf(p, test::scratch("y.h5"), {}, {}, progress),
                       doctest::Contains("token_embd.weight is Q5_0, which kvlab does not dequantise"),
                       FormatError);
}

TEST_CASE("random corruption of a GGUF header never crashes") {
  const std::string raw = test::read_file(golden("gguf/llama-untied-q8_0.gguf"));
  const auto good = llm::GgufFile::open(golden("gguf/llama-untied-q8_0.gguf"));
  std::mt19937 rng(7);
  int refused = 0;
  const std::size_t header_end = 4096;  // metadata + tensor infos of this small file
  for (int trial = 0; trial < 300; ++trial) {
    std::string b = raw;
    for (int k = 0; k < 1 + trial % 3; ++k) b[rng() % header_end] = static_cast<char>(rng() & 0xff);
    const fs::path p = test::scratch("fuzz.gguf");
    test::write_file(p, b);
    try {
      const auto f = llm::GgufFile::open(p);
      for (const auto& t : f.tensors())
        if (llm::ggml_type_supported(t.type)) (void)f.read_f32(t);
    } catch (const FormatError&) {
      ++refused;
    }
  }
  CHECK(refused > 0);
}
