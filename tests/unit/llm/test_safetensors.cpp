// The safetensors reader and writer: round trip, the golden checkpoints (single and sharded), and
// every kind of corrupt file exits 3 (FormatError) with a precise message, never a crash.
#include <doctest/doctest.h>

#include <ATen/ATen.h>

#include <random>

#include "../test_util.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/llm/safetensors.hpp"

using namespace kvlab;
namespace fs = std::filesystem;

namespace {

// A safetensors file from a header text and a data section.
std::string st_bytes(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

fs::path st_file(const std::string& name, const std::string& header, const std::string& data) {
  const fs::path p = test::scratch(name);
  test::write_file(p, st_bytes(header, data));
  return p;
}

void expect_format_error(const fs::path& p, const std::string& needle) {
  CAPTURE(p.string());
  CHECK_THROWS_WITH_AS(llm::SafetensorsFile::open(p), doctest::Contains(needle.c_str()),
                       FormatError);
}

}  // namespace

TEST_CASE("safetensors writer and reader round-trip every dtype bit-exactly") {
  at::manual_seed(0);
  std::map<std::string, at::Tensor> ts = {
      {"a.f32", at::randn({3, 5})},
      {"b.bf16", at::randn({7}).to(at::kBFloat16)},
      {"c.f16", at::randn({2, 2, 2}).to(at::kHalf)},
      {"d.i64", at::arange(10, at::kLong).reshape({2, 5})},
      {"e.empty", at::zeros({0, 4})},
  };
  const fs::path p = test::scratch("rt.safetensors");
  llm::write_safetensors(p, ts);
  const auto f = llm::SafetensorsFile::open(p);
  CHECK(f.metadata().at("format") == "pt");
  REQUIRE(f.tensors().size() == ts.size());
  for (const auto& [name, t] : ts) {
    CAPTURE(name);
    const at::Tensor r = f.read(name);
    CHECK((r.scalar_type() == t.scalar_type()));
    CHECK(at::equal(r, t));
  }
  // Header padded so the data section is 8-byte aligned, as the official writer does.
  const std::string raw = test::read_file(p);
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(raw[i]);
  CHECK((8 + n) % 8 == 0);
}

TEST_CASE("golden checkpoints open, single-file and sharded") {
  const auto single =
      llm::SafetensorsCheckpoint::open_dir(test::source_path("tests/data/golden/llama-gqa"));
  CHECK(single.shard_count() == 1);
  CHECK((single.find("model.embed_tokens.weight")->shape == std::vector<std::int64_t>{256, 64}));
  const auto sharded =
      llm::SafetensorsCheckpoint::open_dir(test::source_path("tests/data/golden/mistral"));
  CHECK(sharded.shard_count() == 3);
  CHECK(sharded.names().size() == 21);
  CHECK(sharded.read("lm_head.weight").sizes() == at::IntArrayRef({256, 64}));
}

TEST_CASE("corrupt safetensors files are refused with precise messages") {
  const std::string ok_entry = R"("w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]})";
  const std::string data24(24, '\1');

  SUBCASE("shorter than the length prefix") {
    const fs::path p = test::scratch("tiny.safetensors");
    test::write_file(p, "abc");
    expect_format_error(p, "only 3 bytes");
  }
  SUBCASE("absurd header size") {
    std::string raw(8, '\xff');
    raw += "{}";
    const fs::path p = test::scratch("absurd.safetensors");
    test::write_file(p, raw);
    expect_format_error(p, "exceeds the 100000000 byte limit");
  }
  SUBCASE("header longer than the file") {
    std::string raw = st_bytes("{" + ok_entry + "}", data24);
    raw[0] = static_cast<char>(0xe8);  // 1000 + ...
    raw[1] = static_cast<char>(0x03);
    const fs::path p = test::scratch("longhdr.safetensors");
    test::write_file(p, raw.substr(0, 200));
    expect_format_error(p, "bytes follow it; the file is truncated");
  }
  SUBCASE("bad header JSON") {
    expect_format_error(st_file("badjson.safetensors", "{\"w\": {\"dtype\": ", data24),
                        "the header is not valid JSON");
  }
  SUBCASE("header JSON not an object") {
    expect_format_error(st_file("array.safetensors", "[1, 2, 3]", ""),
                        "the header is JSON array but must be an object");
  }
  SUBCASE("entry without dtype") {
    expect_format_error(
        st_file("nodtype.safetensors", R"({"w":{"shape":[2,3],"data_offsets":[0,24]}})", data24),
        "tensor w: \"dtype\" is missing");
  }
  SUBCASE("unknown dtype") {
    expect_format_error(
        st_file("q4.safetensors", R"({"w":{"dtype":"Q4","shape":[2,3],"data_offsets":[0,24]}})",
                data24),
        "tensor w: unknown dtype \"Q4\"");
  }
  SUBCASE("negative dimension") {
    expect_format_error(
        st_file("neg.safetensors", R"({"w":{"dtype":"F32","shape":[-2,3],"data_offsets":[0,24]}})",
                data24),
        "every shape entry must be a non-negative integer, found -2");
  }
  SUBCASE("byte size disagrees with shape") {
    expect_format_error(
        st_file("size.safetensors", R"({"w":{"dtype":"F32","shape":[2,4],"data_offsets":[0,24]}})",
                data24),
        "F32 [2, 4] needs 32 bytes but data_offsets [0, 24] span 24");
  }
  SUBCASE("offsets out of range") {
    expect_format_error(
        st_file("oob.safetensors", R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[24,48]}})",
                data24),
        "tensor w: data_offsets [24, 48] run past the end of the data section (24 bytes)");
  }
  SUBCASE("offsets reversed") {
    expect_format_error(
        st_file("rev.safetensors", R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})",
                data24),
        "end before they begin");
  }
  SUBCASE("overlapping tensors") {
    expect_format_error(
        st_file("overlap.safetensors",
                R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
                data24),
        "tensors a [0, 16] and b [8, 24] overlap");
  }
  SUBCASE("absurdly large shape") {
    expect_format_error(
        st_file("huge.safetensors",
                R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,24]}})",
                data24),
        "is absurdly large");
  }
  SUBCASE("truncated golden file") {
    const std::string raw =
        test::read_file(test::source_path("tests/data/golden/llama-gqa/model.safetensors"));
    const fs::path p = test::scratch("trunc.safetensors");
    test::write_file(p, raw.substr(0, raw.size() / 2));
    expect_format_error(p, "run past the end of the data section");
  }
  SUBCASE("unsupported dtype is listed but refused when read") {
    const auto f = llm::SafetensorsFile::open(st_file(
        "f8.safetensors", R"({"w":{"dtype":"F8_E4M3","shape":[24],"data_offsets":[0,24]}})",
        data24));
    CHECK_THROWS_WITH_AS(f.read("w"), doctest::Contains("has dtype F8_E4M3, which kvlab cannot read"),
                         FormatError);
  }
}

TEST_CASE("sharded index errors name the shard and tensor") {
  const fs::path dir = test::scratch("shard_bad");
  fs::create_directories(dir);
  test::write_file(dir / "model.safetensors.index.json",
                   R"({"weight_map": {"w": "model-00001-of-00002.safetensors"}})");
  CHECK_THROWS_WITH_AS(llm::SafetensorsCheckpoint::open_dir(dir),
                       doctest::Contains("model-00001-of-00002.safetensors: no such file"),
                       FormatError);
  test::write_file(dir / "model-00001-of-00002.safetensors",
                   st_bytes(R"({"v":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                            std::string(4, '\0')));
  CHECK_THROWS_WITH_AS(llm::SafetensorsCheckpoint::open_dir(dir),
                       doctest::Contains("lists tensor w in"), FormatError);
  test::write_file(dir / "model.safetensors.index.json",
                   R"({"weight_map": {"w": "../../etc/passwd"}})");
  CHECK_THROWS_WITH_AS(llm::SafetensorsCheckpoint::open_dir(dir),
                       doctest::Contains("shards must be plain file names"), FormatError);
  test::write_file(dir / "model.safetensors.index.json", "{\"weight_map\": ");
  CHECK_THROWS_WITH_AS(llm::SafetensorsCheckpoint::open_dir(dir),
                       doctest::Contains("not valid JSON"), FormatError);
  const fs::path empty = test::scratch("shard_none");
  fs::create_directories(empty);
  CHECK_THROWS_WITH_AS(llm::SafetensorsCheckpoint::open_dir(empty),
                       doctest::Contains("neither model.safetensors nor"), FormatError);
}

TEST_CASE("random corruption of a real header never crashes: it opens or throws FormatError") {
  const std::string raw =
      test::read_file(test::source_path("tests/data/golden/qwen2/model.safetensors"));
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(raw[i]);
  std::mt19937 rng(42);
  int refused = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::string bad = raw;
    const int flips = 1 + trial % 4;
    for (int k = 0; k < flips; ++k) {
      const std::size_t pos = rng() % (8 + n);
      bad[pos] = static_cast<char>(rng() & 0xff);
    }
    const fs::path p = test::scratch("fuzz.safetensors");
    test::write_file(p, bad);
    try {
      const auto f = llm::SafetensorsFile::open(p);
      for (const auto& t : f.tensors())
        if (t.type) (void)f.read(t.name);
    } catch (const FormatError&) {
      ++refused;
    }
  }
  CHECK(refused > 0);
}
