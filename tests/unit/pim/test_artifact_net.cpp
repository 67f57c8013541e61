// bnn-model and LLM model artifacts as pim-compile networks (libpim reads them with libcore only).
#include <doctest/doctest.h>

#include <filesystem>

#include "kvlab/core/artifact.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/pim/artifact_net.hpp"
#include "kvlab/pim/hardware.hpp"
#include "kvlab/pim/mapping.hpp"

using namespace kvlab;
namespace fs = std::filesystem;

namespace {
void weight(h5::Group& w, const std::string& path, const h5::Shape& shape) {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  std::vector<float> z(static_cast<std::size_t>(n), 0.f);
  w.write(path, h5::DType::f32, shape, z.data());
}
}  // namespace

TEST_CASE("a minimal bnn-model maps binary layers at 1 bit, real ones at the chip's bits") {
  const fs::path p = fs::temp_directory_path() / "kvlab_test_pim_bnn.h5";
  {
    core::ArtifactWriter w(p, "bnn-model", 1, 0, {});
    w.params().set_attr("arch", "bireal");
    w.params().set_attr("in_channels", std::int64_t{1});
    w.params().set_attr("in_size", std::int64_t{8});
    h5::Group wg = w.root().require_group("weights");
    weight(wg, "stem/weight", {4, 1, 3, 3});
    weight(wg, "blocks/0/conv/weight", {8, 4, 3, 3});
    weight(wg, "blocks/0/down/weight", {8, 4, 1, 1});
    weight(wg, "fc/weight", {10, 8});
    h5::Group r = w.root().require_group("report");
    r.set_attr("layer_names",
               std::vector<std::string>{"stem", "blocks.0.conv", "blocks.0.down", "fc"});
    r.set_attr("layer_types",
               std::vector<std::string>{"real-conv", "binary-conv", "real-conv", "real-linear"});
    r.write_vec("layer_macs",
                std::vector<std::int64_t>{4 * 9 * 64, 8 * 4 * 9 * 16, 8 * 4 * 16, 80});
    w.commit();
  }
  const core::NetDesc net = pim::artifact_net(p);
  CHECK(net.weight_layer_count() == 4);
  const auto& c = net.layers[static_cast<std::size_t>(net.find("blocks.0.conv"))];
  CHECK(c.weight_bits == 1);
  CHECK(c.stride_h == 2);
  CHECK(c.shape == std::vector<std::int64_t>{8, 4, 4});
  CHECK(net.layers[static_cast<std::size_t>(net.find("blocks.0.down"))].inputs ==
        std::vector<int>{net.find("stem")});
  pim::HwConfig hw = pim::default_hw();
  const pim::Mapping m = pim::map_network(net, hw);
  for (const auto& lm : m.layers)
    if (net.layers[static_cast<std::size_t>(lm.layer)].name == "blocks.0.conv") {
      CHECK(lm.cols == 8);  // 8 outputs x 1 cell
    }
  fs::remove(p);
}

TEST_CASE("an LLM model maps its linear layers per token; other artifacts are refused") {
  const fs::path p = fs::temp_directory_path() / "kvlab_test_pim_llm.h5";
  {
    core::ArtifactWriter w(p, "model", 1, 0, {});
    auto& pr = w.params();
    pr.set_attr("arch", "llama");
    pr.set_attr("vocab_size", std::int64_t{259});
    pr.set_attr("hidden_size", std::int64_t{192});
    pr.set_attr("intermediate_size", std::int64_t{512});
    pr.set_attr("num_hidden_layers", std::int64_t{8});
    pr.set_attr("num_attention_heads", std::int64_t{6});
    pr.set_attr("num_key_value_heads", std::int64_t{2});
    pr.set_attr("head_dim", std::int64_t{32});
    pr.set_attr("max_position_embeddings", std::int64_t{4096});
    w.commit();
  }
  const core::NetDesc net = pim::artifact_net(p);
  CHECK(net.weight_layer_count() == 8 * 7 + 1);
  pim::HwConfig hw = pim::default_hw();
  hw.xbar_rows = hw.xbar_cols = 128;
  hw.weight_bits = 8;
  hw.cell_bits = 2;
  CHECK(pim::map_network(net, hw).total_xbars == 978);  // the kjv fixture's shapes
  fs::remove(p);

  {
    core::ArtifactWriter w(p, "pim-plan", 1, 0, {});
    w.commit();
  }
  CHECK_THROWS_AS(pim::artifact_net(p), FormatError);
  fs::remove(p);
}
