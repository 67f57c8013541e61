// im2col crossbar mapping: the zoo counts of issue 11 and the reference notes, the formula on
// hand-checked layers, layer splitting, and the impossible cases.
#include <doctest/doctest.h>

#include "kvlab/core/error.hpp"
#include "kvlab/pim/mapping.hpp"
#include "kvlab/pim/zoo.hpp"

using namespace kvlab;

TEST_CASE("zoo crossbar counts at 128x128, 8-bit weights, 2-bit cells") {
  const pim::HwConfig hw = pim::default_hw();
  REQUIRE(hw.xbar_rows == 128);
  REQUIRE(hw.weight_bits == 8);
  REQUIRE(hw.cell_bits == 2);
  struct Want {
    const char* net;
    std::int64_t xbars, weight_layers, weights, largest, mvms, splits;
  };
  // Issue 11 gives the first three crossbar counts; all six match PIMCOMP-NN's model JSONs
  // (pim_mobile.md section 1.4). MVMs = sum of OH*OW*groups; ResNet50 is torchvision's v1.5
  // (PIMCOMP-NN's v1 has 58,311) and AlexNet takes the original 227x227 input (4,991 at 224).
  const Want want[] = {
      {"vgg16", 33804, 16, 138344128, 25088, 137791, 1},
      {"resnet18", 2864, 21, 11678912, 576, 30234, 0},
      {"squeezenet", 359, 26, 1231552, 128, 37042, 0},
      {"mobilenetv2", 8146, 53, 3469760, 960, 2359841, 0},
      {"resnet50", 6260, 54, 25502912, 576, 61398, 0},
      {"alexnet", 14921, 8, 60954656, 9216, 5331, 1},
  };
  for (const auto& w : want) {
    CAPTURE(w.net);
    const auto net = pim::zoo_net(w.net);
    const auto m = pim::map_network(net, hw);
    CHECK(m.total_xbars == w.xbars);
    CHECK(net.weight_layer_count() == w.weight_layers);
    CHECK(net.weight_count() == w.weights);
    CHECK(m.largest_layer_xbars == w.largest);
    std::int64_t mvms = 0;
    for (const auto& l : m.layers) mvms += l.positions * l.groups;
    CHECK(mvms == w.mvms);
    CHECK(m.split_layers ==
          w.splits);  // the default chip has 8,704 crossbars: only fc6 of VGG16/AlexNet is larger
  }
}

TEST_CASE("the im2col formula on hand-checked layers") {
  pim::HwConfig hw = pim::default_hw();
  core::NetBuilder b("t");
  b.input("x", {64, 56, 56});
  b.conv("c", -1, 128, 3, 1, 1);
  b.conv("dw", -1, 128, 3, 1, 1, 128);
  b.reshape("f", -1, "flatten");
  b.fc("fc", -1, 100);
  const auto net = b.finish();
  const auto c = pim::map_layer(net.layers[1], 1, hw);
  CHECK(c.rows == 576);  // 3*3*64
  CHECK(c.cols == 512);  // 128 * 8/2
  CHECK(c.row_blocks == 5);
  CHECK(c.col_blocks == 4);
  CHECK(c.xbars == 20);
  CHECK(c.write_rows == 4 * 576);
  CHECK(c.positions == 56 * 56);
  const auto dw = pim::map_layer(net.layers[2], 2, hw);
  CHECK(dw.groups == 128);
  CHECK(dw.rows == 9);
  CHECK(dw.xbars == 128);  // one crossbar per channel: the depthwise waste PIM papers report
  const auto fc = pim::map_layer(net.layers[4], 4, hw);
  CHECK(fc.rows == 128 * 56 * 56);
  CHECK(fc.xbars == (128 * 56 * 56 / 128) * 4);  // 400 cols -> 4 col blocks
  // A 1-bit layer (BNN) takes one cell per weight.
  auto l = net.layers[1];
  l.weight_bits = 1;
  CHECK(pim::map_layer(l, 1, hw).cols == 128);
  CHECK(pim::map_layer(l, 1, hw).xbars == 5);
}

TEST_CASE("layers larger than the chip are split into balanced column slices") {
  pim::HwConfig hw = pim::default_hw();
  hw.cores = 4;  // 256 crossbars
  const auto net = pim::zoo_net("vgg16");
  const auto m = pim::map_network(net, hw);
  const int fc6 = net.find("fc6");
  const auto& lm = m.layers[static_cast<std::size_t>(m.layer_map[static_cast<std::size_t>(fc6)])];
  CHECK(lm.row_blocks == 196);  // 25088 / 128
  CHECK(lm.slices == 128);      // one 196-crossbar column group per 256-crossbar partition
  std::int64_t sum = 0, n = 0;
  double frac = 0;
  for (const auto& u : m.units) {
    CHECK(u.xbars <= m.capacity);
    if (u.layer == fc6) {
      sum += u.xbars;
      frac += u.out_frac;
      ++n;
    }
  }
  CHECK(n == 128);
  CHECK(sum == 25088);
  CHECK(frac == doctest::Approx(1.0));
  // Every unit of a weight layer reads every unit of its producer layer.
  const auto& first_fc7 = *std::find_if(m.units.begin(), m.units.end(), [&](const pim::Unit& u) {
    return u.layer == net.find("fc7");
  });
  CHECK(first_fc7.in_units.size() == 1);  // relu6
}

TEST_CASE("a network that cannot fit even layer-split is a usage error (exit 2)") {
  pim::HwConfig hw = pim::default_hw();
  hw.cores = 1;
  hw.xbars_per_core = 64;  // fc6's column group needs 196 crossbars
  try {
    pim::map_network(pim::zoo_net("vgg16"), hw);
    FAIL("expected MappingError");
  } catch (const pim::MappingError& e) {
    CHECK(e.exit_code() == kExitUsage);
    CHECK(std::string(e.what()).find("layer \"fc6\" cannot fit on this chip even split") !=
          std::string::npos);
    CHECK(std::string(e.what()).find("at least 196 crossbars") != std::string::npos);
  }
  CHECK_NOTHROW(pim::map_network(pim::zoo_net("resnet18"), hw));  // 36-crossbar groups fit
}
