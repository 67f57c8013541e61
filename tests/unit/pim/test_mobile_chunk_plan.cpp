// mobile-plan chunk (Apple bisection, exact DP, impossible caps) and plan (schedules, roofline,
// device profiles, the mobile-plan artifact).
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include "../test_util.hpp"
#include "kvlab/core/artifact.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/pim/mobile_chunk.hpp"
#include "kvlab/pim/mobile_graph.hpp"
#include "kvlab/pim/mobile_plan.hpp"

using namespace kvlab;

namespace {
const pim::PipelineGraph& sd21() {
  static const auto g = pim::build_pipeline_graph(test::source_path("data/diffusion/sd21"), {});
  return g;
}

// Every chunk is under the cap and the chunks partition the ops (contiguous, in order, all).
void check_partition(const core::NetDesc& net, const pim::ChunkPlan& p, double cap_mb, int wbits) {
  REQUIRE(!p.chunks.empty());
  int next = 0;
  double total = 0;
  for (const auto& c : p.chunks) {
    CHECK(c.first == next);
    CHECK(c.last >= c.first);
    CHECK(c.weight_bytes <= cap_mb * 1e6);
    double w = 0;
    for (int i = c.first; i <= c.last; ++i)
      w += pim::layer_weight_bytes(net.layers[static_cast<std::size_t>(i)], wbits);
    CHECK(w == doctest::Approx(c.weight_bytes));
    total += w;
    next = c.last + 1;
  }
  CHECK(next == static_cast<int>(net.layers.size()));
  CHECK(total == doctest::Approx(static_cast<double>(pim::net_params(net)) * 2).epsilon(1e-9));
}
}  // namespace

TEST_CASE("chunk: SD 2.1 UNet under Apple's 1 GB cap; DP never worse than the bisection") {
  const auto& unet = sd21().component("unet").net;
  pim::ChunkOptions apple;
  apple.cap_mb = 1024;
  apple.algo = "apple-bisect";
  const auto a = pim::chunk_net(unet, apple);
  CHECK(a.chunks.size() == 2);  // 1.73 GB of fp16 weights: two chunks, as ml-stable-diffusion
  check_partition(unet, a, 1024, 16);
  CHECK(a.boundary_tensors > 1);  // the skip connections cross the cut
  pim::ChunkOptions dp = apple;
  dp.algo = "dp";
  dp.chunks = 2;
  const auto d = pim::chunk_net(unet, dp);
  CHECK(d.chunks.size() == 2);
  check_partition(unet, d, 1024, 16);
  CHECK(d.boundary_bytes <= a.boundary_bytes);
  // The DP is exact: brute force over every single cut position agrees.
  double best = 1e300;
  for (int c = 0; c + 1 < static_cast<int>(unet.layers.size()); ++c) {
    const auto p = pim::evaluate_cuts(unet, {c}, 16, 2);
    if (p.chunks[0].weight_bytes <= 1024e6 && p.chunks[1].weight_bytes <= 1024e6)
      best = std::min(best, p.boundary_bytes);
  }
  CHECK(d.boundary_bytes == doctest::Approx(best));
  // A smaller cap needs more chunks; all still under the cap.
  dp.chunks = 0;
  dp.cap_mb = 300;
  const auto d3 = pim::chunk_net(unet, dp);
  CHECK(d3.chunks.size() >= 6);
  check_partition(unet, d3, 300, 16);
  apple.cap_mb = 300;
  const auto a3 = pim::chunk_net(unet, apple);
  check_partition(unet, a3, 300, 16);
}

TEST_CASE("chunk: an op larger than the cap is a usage error naming it") {
  const auto& unet = sd21().component("unet").net;
  pim::ChunkOptions o;
  o.cap_mb = 5;  // a 1280x1280 3x3 conv holds 29.5 MB in fp16
  const auto msg = test::error_of([&] { pim::chunk_net(unet, o); }, 2);
  CHECK(msg.find("--cap-mb 5") != std::string::npos);
  CHECK(msg.find("alone holds") != std::string::npos);
  o.cap_mb = 1024;
  o.chunks = 1;  // 1.73 GB cannot fit one 1 GB chunk
  CHECK(test::error_of([&] { pim::chunk_net(unet, o); }, 2).find("--chunks 1") != std::string::npos);
}

TEST_CASE("plan: schedules, linear scaling in steps, CFG distillation halves the UNet") {
  const auto dev = pim::read_device_profile(test::source_path("data/mobile/devices/snapdragon-8-gen-2.json"));
  const auto refs = pim::read_reference_rows(test::source_path("data/mobile/reference-rows.json"));
  CHECK(refs.size() >= 10);
  pim::PlanOptions o;
  o.steps = 20;
  const auto p20 = pim::plan_pipeline(sd21(), dev, o, refs);
  REQUIRE(p20.components.size() == 3);
  const auto& unet = p20.components[1];
  CHECK(unet.component == "unet");
  CHECK(unet.calls == 40);
  CHECK(unet.weight_bytes == doctest::Approx(865910724.0 * 2).epsilon(1e-3));
  CHECK(p20.unet_share > 0.8);
  o.steps = 10;
  const auto p10 = pim::plan_pipeline(sd21(), dev, o, {});
  CHECK(p10.components[1].total_ms == doctest::Approx(unet.total_ms / 2));
  o.cfg_distilled = true;
  const auto pd = pim::plan_pipeline(sd21(), dev, o, {});
  CHECK(pd.components[1].total_ms == doctest::Approx(unet.total_ms / 4));
  // Sequential loading bounds memory below all-resident; prefetch sits between.
  const auto& s = p20.schedules;
  REQUIRE(s.size() == 3);
  CHECK(s[1].peak_bytes < s[0].peak_bytes);
  CHECK(s[2].peak_bytes >= s[1].peak_bytes);
  CHECK(s[2].peak_bytes <= s[0].peak_bytes + 1);
  CHECK(s[2].latency_ms <= s[1].latency_ms);
  // int8 weights halve the UNet's weight bytes and do not slow anything down.
  o = {};
  o.wbits = 8;
  const auto p8 = pim::plan_pipeline(sd21(), dev, o, {});
  CHECK(p8.components[1].weight_bytes < 0.51 * unet.weight_bytes);
  CHECK(p8.compute_ms <= p20.compute_ms);
  // The liveness peak on a chain is the largest producer+consumer pair.
  const auto& te = sd21().component("text_encoder").net;
  CHECK(pim::live_activation_peak(te, 2) > 0);
}

TEST_CASE("plan: the mobile-plan artifact and bad device profiles") {
  const auto dev = pim::read_device_profile(test::source_path("data/mobile/devices/apple-a16.json"));
  const auto p = pim::plan_pipeline(sd21(), dev, {}, {});
  const auto out = test::scratch("plan.mobile-plan.h5");
  std::filesystem::remove(out);
  core::Provenance prov;
  pim::write_mobile_plan(out, p, prov);
  const auto r = core::ArtifactReader::open(out, "mobile-plan", pim::kMobilePlanFormatVersion, 1);
  CHECK(r.header().kind == "mobile-plan");
  CHECK(r.params().attr_string("device") == "apple-a16");
  CHECK(r.root().read_as_double("components/total_ms").size() == 3);
  const auto bad = test::scratch("bad-device.json");
  test::write_file(bad, R"({"format": "kvlab-mobile-device", "version": 1, "name": "x",
    "peak_fp16_tflops": -1, "dram_gbps": 1, "storage_gbps": 1, "ram_gb": 1, "sources": ["a"]})");
  CHECK(test::error_of([&] { pim::read_device_profile(bad); }, 3).find("peak_fp16_tflops") !=
        std::string::npos);
}
