// Invalid inputs: every way an artifact can be bad gives a FormatError (exit 3) whose message
// names the file, says what was found versus expected, and what to do.
#include <doctest/doctest.h>

#include <filesystem>

#include "../test_util.hpp"
#include "kvlab/core/artifact.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/core/schema.hpp"

using kvlab::test::error_of;

using namespace kvlab;
namespace fs = std::filesystem;

namespace {

fs::path good_artifact(const std::string& name, const std::string& kind = "selfcheck-report",
                       std::uint32_t version = 1) {
  const fs::path out = test::scratch(name);
  fs::remove(out);
  core::ArtifactWriter w(out, kind, version, 0, {"kvlab selfcheck", "", {}});
  w.params().set_attr("matmul_size", std::int64_t{64});
  w.params().set_attr("threads", std::int64_t{1});
  w.root().set_attr("blas", "x");
  w.root().set_attr("torch_version", "y");
  w.root().set_attr("device", "cpu");
  w.root().write_vec("gflops", std::vector<double>(100, 1.0));
  w.commit();
  return out;
}


auto open_selfcheck(const fs::path& p) {
  return [p] { core::ArtifactReader::open(p, "selfcheck-report", 1, 1); };
}

}  // namespace

TEST_CASE("missing file") {
  const fs::path p = test::scratch("does-not-exist.h5");
  CHECK(error_of(open_selfcheck(p), kExitBadFile) == p.string() + ": no such file; check the path");
}

TEST_CASE("not an HDF5 file") {
  const fs::path p = test::scratch("text.h5");
  test::write_file(p, "just some text\n");
  CHECK(error_of(open_selfcheck(p), kExitBadFile) ==
        p.string() + ": not an HDF5 file, so not a kvlab artifact; give the .h5 file a kvlab "
                     "command wrote");
}

TEST_CASE("truncated file") {
  const fs::path good = good_artifact("to-truncate.h5");
  const std::string bytes = test::read_file(good);
  const fs::path p = test::scratch("truncated.h5");
  test::write_file(p, bytes.substr(0, bytes.size() / 3));
  CHECK(error_of(open_selfcheck(p), kExitBadFile) ==
        p.string() + ": HDF5 signature present but the file cannot be opened (truncated or "
                     "corrupt); re-create it with the command that wrote it");
}

TEST_CASE("HDF5 but not a kvlab artifact") {
  const fs::path p = test::scratch("plain.h5");
  { h5::File::create(p).root().write_vec("x", std::vector<float>{1.f}); }
  CHECK(error_of(open_selfcheck(p), kExitBadFile) ==
        p.string() + ": HDF5 file without a kvlab.kind attribute, so not a kvlab artifact; give "
                     "a file a kvlab command wrote");
}

TEST_CASE("wrong kind") {
  const fs::path p = good_artifact("wrong-kind.h5");
  auto open_model = [p] { core::ArtifactReader::open(p, "model", 1, 1); };
  CHECK(error_of(open_model, kExitBadFile) ==
        p.string() + ": artifact kind is \"selfcheck-report\" but this command needs \"model\"; "
                     "run 'kvlab inspect " + p.string() + "' to see what it is");
}

TEST_CASE("future format_version") {
  const fs::path p = good_artifact("future.h5", "selfcheck-report", 7);
  CHECK(error_of(open_selfcheck(p), kExitBadFile) ==
        p.string() + ": selfcheck-report format_version 7 is newer than this kvlab supports (1); "
                     "upgrade kvlab");
}

TEST_CASE("missing dataset and wrong dtype are schema violations and read errors") {
  core::SchemaRegistry reg;
  core::register_schemas(reg);
  {
    const fs::path p = test::scratch("missing-ds.h5");
    fs::remove(p);
    core::ArtifactWriter w(p, "selfcheck-report", 1, 0, {"kvlab selfcheck", "", {}});
    w.params().set_attr("matmul_size", std::int64_t{64});
    w.params().set_attr("threads", std::int64_t{1});
    w.root().set_attr("blas", "x");
    w.root().set_attr("torch_version", "y");
    w.root().set_attr("device", "cpu");
    w.commit();
    const auto r = core::ArtifactReader::open(p, "selfcheck-report", 1, 1);
    CHECK(core::validate(r, reg) == std::vector<std::string>{"dataset /gflops is missing"});
    const std::string msg = error_of([&] { r.root().read_vec<double>("gflops"); }, kExitBadFile);
    CHECK(msg == p.string() + ":/gflops: required dataset is missing; the file is incomplete or of "
                              "another kind");
  }
  {
    const fs::path p = test::scratch("wrong-dtype.h5");
    fs::remove(p);
    core::ArtifactWriter w(p, "selfcheck-report", 1, 0, {"kvlab selfcheck", "", {}});
    w.params().set_attr("matmul_size", "big");  // wrong attribute type too
    w.params().set_attr("threads", std::int64_t{1});
    w.root().set_attr("blas", "x");
    w.root().set_attr("torch_version", "y");
    w.root().set_attr("device", "cpu");
    w.root().write_vec("gflops", std::vector<float>{1.f, 2.f});
    w.commit();
    const auto r = core::ArtifactReader::open(p, "selfcheck-report", 1, 1);
    CHECK(core::validate(r, reg) ==
          std::vector<std::string>{
              "/params attribute matmul_size should be an integer but is big",
              "dataset /gflops has element type float32, expected float64"});
    const std::string msg = error_of([&] { r.root().read_vec<double>("gflops"); }, kExitBadFile);
    CHECK(msg == p.string() + ":/gflops: dataset has element type float32 but float64 is "
                              "expected; the file was written by another tool or an "
                              "incompatible kvlab");
  }
}

TEST_CASE("leftover .partial file") {
  const fs::path out = test::scratch("interrupted.h5");
  fs::remove(out);
  const fs::path partial = test::scratch("interrupted.h5.partial.4242");
  test::write_file(partial, "\x89HDF\r\n\x1a\n partial");
  CHECK(error_of(open_selfcheck(out), kExitBadFile) ==
        out.string() + ": no such file, but " + partial.string() +
            " is there: the job writing it was interrupted; re-run it (and delete the partial "
            "file)");
  CHECK(error_of(open_selfcheck(partial), kExitBadFile) ==
        partial.string() + ": is an incomplete file left by a kvlab job that was interrupted "
                           "while writing; delete it and re-run the command that writes "
                           "interrupted.h5");
  CHECK(core::leftover_partials(out) == std::vector<fs::path>{partial});
}

TEST_CASE("unknown kinds fail validation by name") {
  const fs::path p = good_artifact("unknown-kind.h5", "mystery", 1);
  core::SchemaRegistry reg;
  core::register_schemas(reg);
  const auto r = core::ArtifactReader::open_any(p);
  const auto problems = core::validate(r, reg);
  REQUIRE(problems.size() == 1);
  CHECK(problems[0] == "unknown artifact kind \"mystery\" (this kvlab knows: selfcheck-report)");
}
