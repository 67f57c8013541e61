// mobile-plan graph: parameter counts equal diffusers/transformers' (golden numbers made by
// scripts/make-golden-diffusion.py), shapes, FLOP conventions and config errors.
#include <doctest/doctest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "../test_util.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/pim/mobile_graph.hpp"

using namespace kvlab;
using nlohmann::json;

namespace {
json golden() {
  std::ifstream f(test::source_path("tests/data/mobile/golden-params.json"));
  return json::parse(f);
}
}  // namespace

TEST_CASE("mobile graph: parameter counts equal diffusers/transformers for every bundled config") {
  const json g = golden();
  for (const char* model : {"sd15", "sd21", "tiny"}) {
    CAPTURE(model);
    const auto pg =
        pim::build_pipeline_graph(test::source_path(std::string("data/diffusion/") + model), {});
    const json& m = g.at("models").at(model);
    CHECK(pim::net_params(pg.component("text_encoder").net) == m.at("text_encoder").get<std::int64_t>());
    CHECK(pim::net_params(pg.component("unet").net) == m.at("unet").get<std::int64_t>());
    CHECK(pim::net_params(pg.component("vae_decoder").net) == m.at("vae_decoder").get<std::int64_t>());
  }
}

TEST_CASE("mobile graph: SD 2.1 shapes, heads and FLOPs") {
  const auto pg = pim::build_pipeline_graph(test::source_path("data/diffusion/sd21"), {});
  CHECK(pg.resolution == 512);
  CHECK(pg.latent == 64);
  CHECK(pg.text_len == 77);
  const auto& unet = pg.component("unet").net;
  CHECK(unet.layers.back().shape == std::vector<std::int64_t>{4, 64, 64});
  // SD 2.1: attention_head_dim [5,10,20,20] is the head count; 320 channels -> 5 heads of 64.
  const int sc = unet.find("down_blocks.0.attentions.0.transformer_blocks.0.attn1.scores");
  REQUIRE(sc >= 0);
  CHECK(unet.layers[static_cast<std::size_t>(sc)].shape == std::vector<std::int64_t>{5, 4096, 4096});
  const int x = unet.find("down_blocks.0.attentions.0.transformer_blocks.0.attn2.scores");
  CHECK(unet.layers[static_cast<std::size_t>(x)].shape == std::vector<std::int64_t>{5, 4096, 77});
  const auto& vae = pg.component("vae_decoder").net;
  CHECK(vae.layers.back().shape == std::vector<std::int64_t>{3, 512, 512});
  // conv FLOPs: 2 * MACs + bias adds.
  const auto& conv_in = unet.layers[static_cast<std::size_t>(unet.find("conv_in"))];
  CHECK(pim::op_cost(conv_in).flops == doctest::Approx(2.0 * 64 * 64 * 320 * 4 * 9 + 320 * 64 * 64));
  // The UNet at 512x512 is ~0.4 TFLOP (2 x ~0.2 TMAC) per call.
  CHECK(pim::net_flops(unet) > 0.6e12);
  CHECK(pim::net_flops(unet) < 1.0e12);
  // A smaller resolution shrinks the latent, not the parameters.
  const auto small = pim::build_pipeline_graph(test::source_path("data/diffusion/sd21"), {256, 0});
  CHECK(small.latent == 32);
  CHECK(pim::net_params(small.component("unet").net) == pim::net_params(unet));
}

TEST_CASE("mobile graph: malformed configs are FormatErrors naming the file and key") {
  const auto dir = test::scratch("mobile-bad");
  for (const char* c : {"text_encoder", "unet", "vae"}) {
    std::filesystem::create_directories(dir / c);
    std::filesystem::copy_file(test::source_path(std::string("data/diffusion/tiny/") + c + "/config.json"),
                               dir / c / "config.json",
                               std::filesystem::copy_options::overwrite_existing);
  }
  const auto unet = dir / "unet" / "config.json";
  json j = json::parse(test::read_file(unet));
  j.erase("cross_attention_dim");
  test::write_file(unet, j.dump());
  auto msg = test::error_of([&] { pim::build_pipeline_graph(dir, {}); }, 3);
  CHECK(msg.find("unet/config.json") != std::string::npos);
  CHECK(msg.find("cross_attention_dim") != std::string::npos);
  j["cross_attention_dim"] = 32;
  j["down_block_types"] = {"CrossAttnDownBlock2D", "AttnDownBlock2D"};
  test::write_file(unet, j.dump());
  msg = test::error_of([&] { pim::build_pipeline_graph(dir, {}); }, 3);
  CHECK(msg.find("AttnDownBlock2D") != std::string::npos);
  test::write_file(unet, "{\"block_out_channels\": [32, ");
  msg = test::error_of([&] { pim::build_pipeline_graph(dir, {}); }, 3);
  CHECK(msg.find("not valid JSON") != std::string::npos);
  test::error_of([&] { pim::build_pipeline_graph(dir / "missing", {}); }, 2);
}
