// mobile-plan export validated by Debian's libonnx (libonnx-dev 1.12, the library the issue
// names): every exported chunk of the tiny configs (random weights) and of the round-trip
// checkpoint (--weights) parses as an onnx::ModelProto, passes onnx::checker::check_model, and
// passes strict shape inference with type checks (inferred shapes must merge with the value
// infos kvlab declares for the chunk inputs and outputs). Built only where CMake finds ONNX
// (tests/CMakeLists.txt).
#include <doctest/doctest.h>

#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>

#include <set>

#include "../test_util.hpp"
#include "kvlab/pim/mobile_chunk.hpp"
#include "kvlab/pim/mobile_delegate.hpp"
#include "kvlab/pim/mobile_graph.hpp"
#include "kvlab/pim/mobile_onnx.hpp"
#include "kvlab/pim/mobile_weights.hpp"

using namespace kvlab;

namespace {

// Checks every chunk; returns the number of nodes seen.
std::size_t check_all(const std::vector<pim::OnnxChunk>& chunks) {
  std::size_t nodes = 0;
  for (const auto& ch : chunks) {
    CAPTURE(ch.file);
    onnx::ModelProto m;
    REQUIRE(m.ParseFromString(ch.bytes));
    CHECK(m.ir_version() == 8);
    REQUIRE(m.opset_import_size() == 1);
    CHECK(m.opset_import(0).version() == 17);
    CHECK(static_cast<std::size_t>(m.graph().node_size()) == ch.nodes);
    CHECK(static_cast<std::size_t>(m.graph().output_size()) == ch.outputs.size());
    try {
      onnx::checker::check_model(m);
      onnx::shape_inference::InferShapes(m, onnx::OpSchemaRegistry::Instance(),
                                         onnx::ShapeInferenceOptions(true, 1, true));
    } catch (const std::exception& e) {
      FAIL_CHECK(ch.file << ": " << e.what());
    }
    // Every graph output got a shape from inference or declaration; ranks match what kvlab said.
    for (const auto& o : m.graph().output()) {
      CAPTURE(o.name());
      CHECK(o.type().tensor_type().has_shape());
    }
    nodes += static_cast<std::size_t>(m.graph().node_size());
  }
  return nodes;
}

std::vector<pim::OnnxChunk> export_component(const pim::ComponentGraph& c,
                                             double cap_mb,
                                             const pim::ComponentWeights* w) {
  const auto target =
      pim::read_target_profile(test::source_path("data/mobile/targets/tflite-gpu.json"));
  pim::RewriteStats st;
  const auto net = pim::rewrite_for_target(c.net, target, {}, st);
  pim::ChunkOptions co;
  co.cap_mb = cap_mb;
  pim::OnnxExportOptions eo;
  eo.seed = 11;
  eo.weights = w;
  return pim::export_onnx(net, pim::chunk_net(net, co), c.component, eo);
}

}  // namespace

TEST_CASE("onnx::checker and strict shape inference accept every exported chunk (tiny, random weights)") {
  const auto g = pim::build_pipeline_graph(test::source_path("data/diffusion/tiny"), {});
  for (const auto& c : g.components) {
    CAPTURE(c.component);
    const auto chunks = export_component(c, 0.5, nullptr);
    CHECK(check_all(chunks) > 50);
  }
}

TEST_CASE("onnx::checker accepts the chunks exported with checkpoint weights (round-trip pipeline)") {
  const std::string rt = test::source_path("tests/data/mobile/roundtrip");
  const auto g = pim::build_pipeline_graph(rt, {});
  for (const auto& c : g.components) {
    CAPTURE(c.component);
    const auto w = pim::ComponentWeights::open(pim::find_component_checkpoint(rt, c.component, false),
                                               c.component, pim::component_params(c.net));
    const auto chunks = export_component(c, 0.1, &w);
    check_all(chunks);
  }
}

TEST_CASE("onnx::checker rejects a broken chunk (the check can fail)") {
  const auto g = pim::build_pipeline_graph(test::source_path("data/diffusion/tiny"), {});
  const auto chunks = export_component(g.component("vae_decoder"), 0.5, nullptr);
  onnx::ModelProto m;
  REQUIRE(m.ParseFromString(chunks.front().bytes));
  onnx::ModelProto unknown_op = m;
  unknown_op.mutable_graph()->mutable_node(0)->set_op_type("NoSuchOp");
  CHECK_THROWS(onnx::checker::check_model(unknown_op));
  onnx::ModelProto dangling = m;
  dangling.mutable_graph()->mutable_node(0)->set_input(0, "not_produced_anywhere");
  CHECK_THROWS(onnx::checker::check_model(dangling));
  // A declared output shape that contradicts inference fails strict shape inference.
  onnx::ModelProto wrong_shape = m;
  auto* dims = wrong_shape.mutable_graph()->mutable_output(0)->mutable_type()->mutable_tensor_type()->mutable_shape();
  dims->mutable_dim(1)->set_dim_value(dims->dim(1).dim_value() + 1);
  CHECK_THROWS(onnx::shape_inference::InferShapes(wrong_shape, onnx::OpSchemaRegistry::Instance(),
                                                  onnx::ShapeInferenceOptions(true, 1, true)));
}
