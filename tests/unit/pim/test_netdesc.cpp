// The network-description IR (libcore netdesc): JSON dialects, shape inference, edge checks.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include "../test_util.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/core/netdesc.hpp"
#include "kvlab/pim/zoo.hpp"

using namespace kvlab;
using nlohmann::json;

namespace {

std::string error_of(const json& j) {
  try {
    core::parse_net_json(j, "net.json");
  } catch (const FormatError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("kvlab-network JSON: implicit chain inputs, aliases and inferred shapes") {
  const auto net = core::read_net_json(test::source_path("data/nets/tiny-chain.json"));
  CHECK(net.name == "tiny-chain");
  REQUIRE(net.layers.size() == 14);
  const auto& conv1 = net.layers[1];
  CHECK(conv1.op == core::NetOp::conv);
  CHECK(conv1.in_channels == 3);
  CHECK(conv1.shape == std::vector<std::int64_t>{64, 32, 32});
  CHECK(net.layers[2].op == core::NetOp::act);
  CHECK(net.layers[2].fn == "relu");
  CHECK(net.layers[5].shape == std::vector<std::int64_t>{128, 16, 16});  // maxpool 2/2
  CHECK(net.layers[11].shape == std::vector<std::int64_t>{512, 1, 1});   // global avg pool
  CHECK(net.layers[13].in_channels == 512);
  CHECK(net.layers[13].shape == std::vector<std::int64_t>{10});
  CHECK(net.weight_layer_count() == 5);
  CHECK(net.weight_count() == 27 * 64 + 576 * 128 + 1152 * 256 + 2304 * 512 + 512 * 10);
}

TEST_CASE("kvlab-network JSON: branches, depthwise groups and a 1-bit layer") {
  const auto net = core::read_net_json(test::source_path("data/nets/tiny-branches.json"));
  const auto c = net.consumers();
  const int res = net.find("res"), stem = net.find("stem_relu");
  REQUIRE(res >= 0);
  CHECK(net.layers[static_cast<std::size_t>(res)].inputs.size() == 2);
  CHECK(c[static_cast<std::size_t>(stem)].size() == 2);  // dw and the residual add
  CHECK(net.layers[static_cast<std::size_t>(net.find("dw"))].groups == 32);
  CHECK(net.layers[static_cast<std::size_t>(net.find("cat"))].shape ==
        std::vector<std::int64_t>{96, 16, 16});
  CHECK(net.layers[static_cast<std::size_t>(net.find("binary"))].weight_bits == 1);
}

TEST_CASE("net_to_json round-trips every zoo network") {
  for (const auto& name : pim::zoo_names()) {
    CAPTURE(name);
    const auto a = pim::zoo_net(name);
    const auto b = core::parse_net_json(core::net_to_json(a), "roundtrip");
    REQUIRE(a.layers.size() == b.layers.size());
    for (std::size_t i = 0; i < a.layers.size(); ++i) {
      CHECK(a.layers[i].name == b.layers[i].name);
      CHECK(a.layers[i].op == b.layers[i].op);
      CHECK(a.layers[i].inputs == b.layers[i].inputs);
      CHECK(a.layers[i].shape == b.layers[i].shape);
      CHECK(a.layers[i].weight_count() == b.layers[i].weight_count());
    }
  }
}

TEST_CASE("PIMCOMP-NN node_list JSON is accepted") {
  const json j = json::parse(R"({"node_list": [
    {"index": 0, "name": "data", "operation": "OP_INPUT", "output_dim": [1, 3, 8, 8], "provider_index": []},
    {"index": 1, "name": "conv", "operation": "OP_CONV", "output_dim": [1, 16, 8, 8], "provider_index": [0],
     "param": {"input_channel": 3, "output_channel": 16, "kernel_h": 3, "kernel_w": 3, "stride_h": 1, "stride_w": 1,
               "pad_h0": 1, "pad_h1": 1, "pad_w0": 1, "pad_w1": 1, "with_bias": 1}, "with_act": 1},
    {"index": 2, "name": "pool", "operation": "OP_POOL", "output_dim": [1, 16, 1, 1], "provider_index": [1],
     "param": {"global": 1, "pool_method": 1, "kernel_h": 8, "kernel_w": 8, "stride_h": 1, "stride_w": 1}},
    {"index": 3, "name": "flat", "operation": "OP_FLATTEN", "output_dim": [1, 16], "provider_index": [2]},
    {"index": 4, "name": "fc", "operation": "OP_FC", "output_dim": [1, 10], "provider_index": [3],
     "param": {"num_input": 16, "num_output": 10, "with_bias": 1}}
  ]})");
  const auto net = core::parse_net_json(j, "pimcomp.json");
  REQUIRE(net.layers.size() == 5);
  CHECK(net.layers[1].attrs.at("fused_act") == "relu");
  CHECK(net.layers[2].fn == "avg");
  CHECK(net.layers[2].global);
  CHECK(net.layers[4].shape == std::vector<std::int64_t>{10});
  CHECK(net.weight_count() == 27 * 16 + 160);
}

TEST_CASE("bad network descriptions are FormatErrors that name the layer and the fix") {
  json base = json::parse(R"({"layers": [
      {"name": "x", "op": "input", "shape": [3, 8, 8]},
      {"name": "c", "op": "conv", "out_channels": 4, "kernel": 3}]})");
  CHECK(error_of(base).empty());
  json j = base;
  j["layers"][1]["op"] = "convolve";
  CHECK(error_of(j).find("unknown op \"convolve\"") != std::string::npos);
  j = base;
  j["layers"][1]["inputs"] = {"later"};
  CHECK(error_of(j).find("input \"later\" is not an earlier layer") != std::string::npos);
  j = base;
  j["layers"][1]["name"] = "x";
  CHECK(error_of(j).find("duplicate layer name") != std::string::npos);
  j = base;
  j["layers"][1]["shape"] = {4, 8, 8};  // no pad: 6x6
  CHECK(error_of(j).find("shape is given as [4, 8, 8] but the parameters give [4, 6, 6]") !=
        std::string::npos);
  j = base;
  j["layers"][0].erase("shape");
  CHECK(error_of(j).find("needs \"shape\"") != std::string::npos);
  j = base;
  j["layers"][1]["groups"] = 2;
  CHECK(error_of(j).find("groups 2 must divide in_channels 3") != std::string::npos);
  j = base;
  j["layers"][1]["kernal"] = 3;
  CHECK(error_of(j).find("unknown key \"kernal\"") != std::string::npos);
  j = base;
  j["version"] = 2;
  CHECK(error_of(j).find("newer than this kvlab understands") != std::string::npos);
  CHECK_THROWS_AS(core::read_net_json("/nonexistent/net.json"), FormatError);
  const auto bad = test::scratch("bad.json");
  test::write_file(bad, "{ not json");
  CHECK_THROWS_WITH_AS(core::read_net_json(bad), doctest::Contains("not valid JSON"), FormatError);
}
