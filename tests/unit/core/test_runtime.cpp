// Runtime plumbing: device parsing, threads, sizes, the selfcheck measurement and its artifact.
#include <doctest/doctest.h>

#include <filesystem>

#include "../test_util.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/core/runtime.hpp"
#include "kvlab/core/schema.hpp"
#include "kvlab/core/selfcheck.hpp"

using namespace kvlab;

TEST_CASE("device parsing") {
  CHECK_FALSE(core::parse_device("cpu").cuda);
  CHECK(core::parse_device("cuda").cuda);
  CHECK(core::parse_device("cuda:3").index == 3);
  CHECK(core::parse_device("cuda:3").str() == "cuda:3");
  CHECK_THROWS_WITH_AS(core::parse_device("gpu"), "--device gpu: expected cpu, cuda or cuda:N",
                       UsageError);
  CHECK_THROWS_AS(core::parse_device("cuda:x"), UsageError);
  CHECK_THROWS_AS(core::parse_device("cuda:"), UsageError);
  if (!core::cuda_available()) CHECK_THROWS_AS(core::check_device(core::parse_device("cuda")), UsageError);
}

TEST_CASE("threads and sizes") {
  core::set_threads(1);
  CHECK(core::get_threads() == 1);
  CHECK_THROWS_AS(core::set_threads(0), UsageError);
  CHECK(core::available_cores() >= 1);
  CHECK(core::human_bytes(1500) == "2 KB");
  CHECK(core::human_bytes(2'500'000'000ULL) == "2.50 GB");
  CHECK(core::peak_rss_bytes() > 1'000'000);
}

TEST_CASE("selfcheck measures a matmul and writes a valid report") {
  core::set_threads(1);
  core::SelfcheckOptions opt;
  opt.matmul_size = 128;
  opt.repeats = 2;
  core::NullProgress np;
  const core::SelfcheckResult r = core::run_selfcheck(opt, np);
  CHECK(r.gflops.size() == 2);
  CHECK(r.best_gflops > 0.01);
  CHECK(r.threads == 1);
  CHECK_FALSE(r.build.torch_version.empty());
  const auto out = test::scratch("selfcheck.h5");
  std::filesystem::remove(out);
  core::write_selfcheck_report(out, r, opt, {"kvlab selfcheck", "", {}});
  const auto rd = core::ArtifactReader::open(out, "selfcheck-report", 1, 1);
  core::SchemaRegistry reg;
  core::register_schemas(reg);
  CHECK(core::validate(rd, reg).empty());
  CHECK(rd.params().attr_int("matmul_size") == 128);
  opt.matmul_size = 8;
  CHECK_THROWS_AS(core::run_selfcheck(opt, np), UsageError);
}
