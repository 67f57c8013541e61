// mobile-plan gelu (emulated fp16 sweep) and delegate (op checks, partitions, rewrite passes).
#include <doctest/doctest.h>

#include <cmath>

#include "../test_util.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/pim/mobile_delegate.hpp"
#include "kvlab/pim/mobile_gelu.hpp"
#include "kvlab/pim/mobile_graph.hpp"

using namespace kvlab;

TEST_CASE("round_fp16: binary16 rounding, overflow and subnormals") {
  CHECK(pim::round_fp16(1.0) == 1.0);
  CHECK(pim::round_fp16(65504.0) == 65504.0);
  CHECK(pim::round_fp16(65519.0) == 65504.0);
  CHECK(std::isinf(pim::round_fp16(65520.0)));
  CHECK(pim::round_fp16(1.0 + std::ldexp(1.0, -11)) == 1.0);  // tie -> even
  CHECK(pim::round_fp16(1.0 + 3 * std::ldexp(1.0, -11)) == 1.0 + std::ldexp(1.0, -9));
  CHECK(pim::round_fp16(std::ldexp(1.0, -24)) == std::ldexp(1.0, -24));  // smallest subnormal
  CHECK(pim::round_fp16(std::ldexp(1.0, -26)) == 0.0);
  CHECK(pim::round_fp16(0.1) == 0.0999755859375);  // 0x2e66
}

TEST_CASE("gelu sweep: naive tanh overflows near x = 4.03 in fp16; stable forms stay finite") {
  const auto s = pim::gelu_sweep({});
  REQUIRE(s.rows.size() == 4);
  CHECK(s.points > 30000);
  auto row = [&](const std::string& v) {
    for (const auto& r : s.rows)
      if (r.variant == v) return r;
    FAIL("no row");
    return pim::GeluRow{};
  };
  const auto naive = row("tanh-naive");
  REQUIRE(naive.has_pos);
  // e^{2z} > 65504 once z > ln(65504)/2 = 5.545, i.e. x ~= 4.03 for z = sqrt(2/pi)(x+0.044715x^3).
  CHECK(naive.first_nonfinite_pos > 3.95);
  CHECK(naive.first_nonfinite_pos < 4.1);
  CHECK(naive.first_kind == "nan");
  for (const char* v : {"erf", "tanh-clamped", "sigmoid"}) {
    CAPTURE(v);
    CHECK(row(v).nonfinite == 0);
  }
  CHECK(row("tanh-clamped").max_abs_err < 2e-2);  // fp16 rounding dominates near |x| = 100
  CHECK(row("sigmoid").max_abs_err > row("tanh-clamped").max_abs_err);
  // In fp64 the naive form is fine far beyond 4.03 (the overflow is an fp16 effect).
  CHECK(std::isfinite(pim::gelu_eval("tanh-naive", 10.0, /*fp16=*/false)));
  CHECK(std::isnan(pim::gelu_eval("tanh-naive", 4.1, /*fp16=*/true)));
  CHECK(pim::gelu_eval("tanh-naive", 3.9, true) == doctest::Approx(pim::gelu_exact(3.9)).epsilon(1e-2));
  test::error_of([] { pim::gelu_sweep({1.0, -1.0}); }, 2);
}

TEST_CASE("delegate: tflite-gpu needs the GroupNorm and GELU rewrites; after them one partition") {
  const auto target =
      pim::read_target_profile(test::source_path("data/mobile/targets/tflite-gpu.json"));
  const auto pg = pim::build_pipeline_graph(test::source_path("data/diffusion/sd21"), {});
  const pim::DelegateOptions opt;
  const auto& unet = pg.component("unet").net;
  const auto before = pim::check_delegate(unet, target, opt, "unet");
  CHECK(before.cpu_ops > 0);
  CHECK(before.partitions > 50);  // 61 GroupNorms + 16 GELUs interleave with GPU ops
  pim::RewriteStats st;
  const auto rewritten = pim::rewrite_for_target(unet, target, opt, st);
  CHECK(st.groupnorm == 61);
  CHECK(st.gelu == 16);
  CHECK(st.attention_rewritten == 0);
  CHECK(pim::net_params(rewritten) == pim::net_params(unet));  // rewrites keep parameters
  const auto after = pim::check_delegate(rewritten, target, opt, "unet");
  CHECK(after.cpu_ops == 0);
  CHECK(after.partitions == 1);
  CHECK(after.transitions == 0);
  // Text encoder: the token gather stays on the CPU (one CPU partition, then the GPU).
  pim::RewriteStats ts;
  const auto te = pim::rewrite_for_target(pg.component("text_encoder").net, target, opt, ts);
  const auto te_after = pim::check_delegate(te, target, opt, "text_encoder");
  CHECK(te_after.cpu_ops == 1);
  CHECK(te_after.partitions == 2);
  CHECK(ts.gelu == 23);
  // qnn-npu lists only int8 weights: fp16 weights send every weight op to the CPU.
  const auto qnn = pim::read_target_profile(test::source_path("data/mobile/targets/qnn-npu.json"));
  const auto q16 = pim::check_delegate(rewritten, qnn, opt, "unet");
  pim::DelegateOptions o8;
  o8.wbits = 8;
  const auto q8 = pim::check_delegate(rewritten, qnn, o8, "unet");
  CHECK(q16.cpu_ops > 0);
  CHECK(q8.cpu_ops == 0);
}

TEST_CASE("delegate: malformed target profiles are FormatErrors") {
  const auto p = test::scratch("bad-target.json");
  test::write_file(p, R"({"format": "kvlab-mobile-target", "version": 1, "name": "x"})");
  auto msg = test::error_of([&] { pim::read_target_profile(p); }, 3);
  CHECK(msg.find("max_rank") != std::string::npos);
  test::write_file(p, R"({"format": "other"})");
  msg = test::error_of([&] { pim::read_target_profile(p); }, 3);
  CHECK(msg.find("kvlab-mobile-target") != std::string::npos);
}
