// Round trips through the HDF5 layer and the artifact writer/reader, for every element type.
#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "kvlab/core/artifact.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/core/h5.hpp"
#include "kvlab/core/inspect.hpp"
#include "kvlab/core/schema.hpp"
#include "kvlab/core/tensor_io.hpp"
#include "../test_util.hpp"

using namespace kvlab;
namespace fs = std::filesystem;

TEST_CASE("every element type round-trips bit-exactly through h5::Group") {
  const fs::path p = test::scratch("roundtrip.h5");
  const std::vector<std::uint8_t> bytes = {0, 1, 2, 127, 128, 200, 255, 7, 9, 3, 4, 5};
  using h5::DType;
  const std::vector<DType> all = {DType::f32, DType::f64, DType::f16, DType::bf16, DType::i8,
                                  DType::i16, DType::i32, DType::i64, DType::u8,  DType::u16,
                                  DType::u32, DType::u64};
  // Deterministic payloads: floats as real values (so NaN bit patterns are not involved).
  auto payload = [](DType t, std::int64_t n) {
    std::vector<std::uint8_t> buf(static_cast<std::size_t>(n) * h5::dtype_size(t));
    for (std::int64_t i = 0; i < n; ++i) {
      const double v = (i % 2 ? -1.0 : 1.0) * (0.5 + static_cast<double>(i) * 1.25);
      void* dst = buf.data() + static_cast<std::size_t>(i) * h5::dtype_size(t);
      switch (t) {
        case DType::f32: { float f = static_cast<float>(v); std::memcpy(dst, &f, 4); break; }
        case DType::f64: std::memcpy(dst, &v, 8); break;
        case DType::f16: { auto h = c10::Half(static_cast<float>(v)); std::memcpy(dst, &h, 2); break; }
        case DType::bf16: { auto h = c10::BFloat16(static_cast<float>(v)); std::memcpy(dst, &h, 2); break; }
        default: {
          const std::uint64_t x = 0x0123456789abcdefULL * static_cast<std::uint64_t>(i + 1);
          std::memcpy(dst, &x, h5::dtype_size(t));
        }
      }
    }
    return buf;
  };
  {
    h5::File f = h5::File::create(p);
    h5::Group r = f.root();
    for (DType t : all) r.write(std::string("arr/") + h5::dtype_name(t), t, {2, 3}, payload(t, 6).data(), {"row", "col"});
    r.write("arr/bool", DType::boolean, {4}, std::vector<std::uint8_t>{1, 0, 0, 1}.data());
    r.write("arr/empty", DType::f32, {0, 5}, nullptr);
  }
  h5::File f = h5::File::open(p);
  h5::Group r = f.root();
  for (DType t : all) {
    CAPTURE(h5::dtype_name(t));
    const std::string name = std::string("arr/") + h5::dtype_name(t);
    const h5::DatasetInfo i = r.info(name);
    REQUIRE(i.dtype.has_value());
    CHECK(*i.dtype == t);
    CHECK(i.shape == h5::Shape{2, 3});
    CHECK(r.axis_labels(name) == std::vector<std::string>{"row", "col"});
    std::vector<std::uint8_t> back(6 * h5::dtype_size(t));
    r.read(name, t, back.data());
    CHECK(back == payload(t, 6));
  }
  std::vector<std::uint8_t> b(4);
  r.read("arr/bool", DType::boolean, b.data());
  CHECK(b == std::vector<std::uint8_t>{1, 0, 0, 1});
  CHECK(r.info("arr/bool").dtype == DType::boolean);
  CHECK(r.info("arr/empty").shape == h5::Shape{0, 5});
  // 16-bit floats are real float types: HDF5 converts them to double for generic readers.
  const auto d = r.read_as_double("arr/bfloat16");
  CHECK(d[0] == doctest::Approx(0.5));
  CHECK(d[1] == doctest::Approx(-1.75));
  CHECK(r.read_as_double("arr/float16")[5] == doctest::Approx(-6.75));
  (void)bytes;
}

TEST_CASE("attributes keep their types") {
  const fs::path p = test::scratch("attrs.h5");
  {
    h5::File f = h5::File::create(p);
    h5::Group g = f.root().require_group("a/b");
    g.set_attr("s", "héllo");
    g.set_attr("i", std::int64_t{-42});
    g.set_attr("u", std::uint32_t{7});
    g.set_attr("d", 0.125);
    g.set_attr("flag", true);
    g.set_attr("ss", std::vector<std::string>{"x", "", "zz"});
    g.set_attr("ii", std::vector<std::int64_t>{1, 2, 3});
    g.set_attr("dd", std::vector<double>{1.5, -2.5});
  }
  h5::File f = h5::File::open(p);
  h5::Group g = f.root().group("a/b");
  CHECK(g.attr_string("s") == "héllo");
  CHECK(g.attr_int("i") == -42);
  CHECK(g.attr_int("u") == 7);
  CHECK(g.attr_double("d") == 0.125);
  CHECK(g.attr_int("flag") == 1);
  CHECK(g.attr_strings("ss") == std::vector<std::string>{"x", "", "zz"});
  CHECK(std::get<std::vector<std::int64_t>>(g.attr("ii")) == std::vector<std::int64_t>{1, 2, 3});
  CHECK(std::get<std::vector<double>>(g.attr("dd")) == std::vector<double>{1.5, -2.5});
  CHECK_THROWS_AS(g.attr_int("s"), FormatError);
  CHECK_THROWS_WITH_AS(g.attr("nope"), doctest::Contains("required attribute 'nope' is missing"),
                       FormatError);
}

TEST_CASE("tensors round-trip in their own dtype") {
  const fs::path p = test::scratch("tensors.h5");
  at::manual_seed(1);
  const at::Tensor f32 = at::randn({3, 4, 5});
  const at::Tensor bf16 = at::randn({7, 3}).to(at::kBFloat16);
  const at::Tensor f16 = at::randn({2, 9}).to(at::kHalf);
  const at::Tensor i64 = at::arange(10);
  const at::Tensor u8 = at::randint(0, 255, {16}).to(at::kByte);
  const at::Tensor bo = at::rand({5}) > 0.5;
  const at::Tensor strided = at::randn({6, 6}).t();  // non-contiguous
  {
    h5::File f = h5::File::create(p);
    h5::Group r = f.root();
    core::write_tensor(r, "f32", f32, {"a", "b", "c"});
    core::write_tensor(r, "bf16", bf16);
    core::write_tensor(r, "f16", f16);
    core::write_tensor(r, "i64", i64);
    core::write_tensor(r, "u8", u8);
    core::write_tensor(r, "bool", bo);
    core::write_tensor(r, "strided", strided, {}, /*compress=*/true);
  }
  h5::File f = h5::File::open(p);
  h5::Group r = f.root();
  CHECK(at::equal(core::read_tensor(r, "f32", at::kFloat), f32));
  const at::Tensor b = core::read_tensor(r, "bf16");
  CHECK(static_cast<int>(b.scalar_type()) == static_cast<int>(at::kBFloat16));
  CHECK(at::equal(b.view(at::kShort), bf16.view(at::kShort)));  // bit-exact
  CHECK(at::equal(core::read_tensor(r, "f16").view(at::kShort), f16.view(at::kShort)));
  CHECK(at::equal(core::read_tensor(r, "i64"), i64));
  CHECK(at::equal(core::read_tensor(r, "u8"), u8));
  CHECK(at::equal(core::read_tensor(r, "bool"), bo));
  CHECK(at::equal(core::read_tensor(r, "strided"), strided));
  CHECK_THROWS_WITH_AS(core::read_tensor(r, "f32", at::kBFloat16),
                       doctest::Contains("stored as float32 but BFloat16 is expected"), FormatError);
  CHECK_THROWS_WITH_AS(core::read_tensor(r, "f32", std::nullopt, std::vector<std::int64_t>{3, 4}),
                       doctest::Contains("shape [3, 4, 5] but [3, 4] is expected"), FormatError);
}

TEST_CASE("artifact writer stamps the root schema and commits atomically") {
  const fs::path out = test::scratch("art.h5");
  fs::remove(out);
  core::Provenance prov{"kvlab test --x 1", "x = 1\n", {{"in.h5", "model", "abcd", 1}}};
  core::ArtifactHeader h;
  {
    core::ArtifactWriter w(out, "selfcheck-report", 1, 2, prov);
    CHECK(fs::exists(w.partial_path()));
    CHECK_FALSE(fs::exists(out));  // nothing at the output path before commit
    w.params().set_attr("matmul_size", std::int64_t{64});
    w.params().set_attr("threads", std::int64_t{1});
    w.root().set_attr("blas", "x");
    w.root().set_attr("torch_version", "y");
    w.root().set_attr("device", "cpu");
    w.root().write_vec("gflops", std::vector<double>{1.0, 2.0});
    h = w.commit();
    CHECK_FALSE(fs::exists(w.partial_path()));
  }
  REQUIRE(fs::exists(out));
  const auto r = core::ArtifactReader::open(out, "selfcheck-report", 1, 1);
  CHECK(r.header().uuid == h.uuid);
  CHECK(r.header().uuid.size() == 36);
  CHECK(r.header().format_minor == 2);
  CHECK(r.header().command == "kvlab test --x 1");
  CHECK(r.header().config == "x = 1\n");
  CHECK(r.header().created.size() == 20);
  CHECK(r.header().software.rfind("kvlab ", 0) == 0);
  REQUIRE(r.header().inputs.size() == 1);
  CHECK(r.header().inputs[0].kind == "model");
  CHECK(r.header().inputs[0].uuid == "abcd");
  core::SchemaRegistry reg;
  core::register_schemas(reg);
  CHECK(core::validate(r, reg).empty());
  const core::ArtifactSummary s = core::summarize(r);
  CHECK(s.datasets.size() == 1);
  CHECK(s.lineage.size() == 1);
  CHECK(s.lineage[0].status == "missing");
  CHECK(core::to_json(s)["kind"] == "selfcheck-report");
}

TEST_CASE("an abandoned writer leaves neither the output nor a partial file") {
  const fs::path out = test::scratch("abandoned.h5");
  fs::remove(out);
  fs::path partial;
  try {
    core::ArtifactWriter w(out, "selfcheck-report", 1, 0, {});
    partial = w.partial_path();
    w.root().write_vec("x", std::vector<float>{1, 2, 3});
    throw std::runtime_error("job killed");
  } catch (const std::runtime_error&) {
  }
  CHECK_FALSE(fs::exists(out));
  CHECK_FALSE(fs::exists(partial));
}

TEST_CASE("output path hygiene") {
  const fs::path in = test::scratch("in.txt");
  test::write_file(in, "x");
  CHECK_THROWS_WITH_AS(core::check_output_path(in, {in.string()}, true),
                       doctest::Contains("is the same file as the input"), UsageError);
  CHECK_THROWS_WITH_AS(core::check_output_path(in, {}, false),
                       doctest::Contains("already exists; pass --force"), UsageError);
  CHECK_NOTHROW(core::check_output_path(in, {}, true));
  CHECK_THROWS_WITH_AS(core::check_output_path(test::scratch("nodir/x.h5"), {}, false),
                       doctest::Contains("does not exist; create it first"), UsageError);
}
