// mobile-plan export: the ONNX protobuf kvlab writes, decoded here by a minimal wire-format reader:
// every parameter is exported exactly once, chunks chain (each input is a pipeline input or an
// earlier chunk's output), GroupNorm/GELU arrive rewritten.
#include <doctest/doctest.h>

#include <cstring>
#include <map>
#include <set>

#include "../test_util.hpp"
#include "kvlab/pim/mobile_chunk.hpp"
#include "kvlab/pim/mobile_delegate.hpp"
#include "kvlab/pim/mobile_graph.hpp"
#include "kvlab/pim/mobile_onnx.hpp"

using namespace kvlab;

namespace {

struct Field {
  int num = 0, wire = 0;
  std::uint64_t v = 0;
  std::string bytes;
};

std::vector<Field> decode(const std::string& s) {
  std::vector<Field> out;
  std::size_t i = 0;
  auto varint = [&]() {
    std::uint64_t v = 0;
    int shift = 0;
    while (true) {
      REQUIRE(i < s.size());
      const auto b = static_cast<unsigned char>(s[i++]);
      v |= static_cast<std::uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) break;
      shift += 7;
    }
    return v;
  };
  while (i < s.size()) {
    Field f;
    const auto key = varint();
    f.num = static_cast<int>(key >> 3);
    f.wire = static_cast<int>(key & 7);
    if (f.wire == 0) {
      f.v = varint();
    } else if (f.wire == 2) {
      const auto n = varint();
      REQUIRE(i + n <= s.size());
      f.bytes = s.substr(i, n);
      i += n;
    } else if (f.wire == 5) {
      i += 4;
    } else {
      FAIL("unexpected wire type");
    }
    out.push_back(f);
  }
  return out;
}

std::string field_str(const std::vector<Field>& fs, int num) {
  for (const auto& f : fs)
    if (f.num == num) return f.bytes;
  return "";
}

}  // namespace

TEST_CASE("export: tiny pipeline to chained ONNX chunks holding every parameter once") {
  const auto pg = pim::build_pipeline_graph(test::source_path("data/diffusion/tiny"), {});
  const auto target =
      pim::read_target_profile(test::source_path("data/mobile/targets/tflite-gpu.json"));
  for (const auto& c : pg.components) {
    CAPTURE(c.component);
    pim::RewriteStats st;
    const auto net = pim::rewrite_for_target(c.net, target, {}, st);
    pim::ChunkOptions co;
    co.cap_mb = 0.5;  // several chunks even for the tiny configs
    const auto plan = pim::chunk_net(net, co);
    const auto chunks = pim::export_onnx(net, plan, c.component, {});
    REQUIRE(chunks.size() == plan.chunks.size());
    std::int64_t weight_bytes = 0, elems = 0;
    std::set<std::string> available = {"input_ids", "sample", "time_proj", "encoder_hidden_states",
                                       "latent"};
    std::map<std::string, int> ops;
    for (const auto& ch : chunks) {
      for (const auto& in : ch.inputs) CHECK(available.count(in) == 1);
      for (const auto& o : ch.outputs) available.insert(o);
      elems += ch.weight_elems;
      const auto model = decode(ch.bytes);
      const auto graph = decode(field_str(model, 7));
      for (const auto& f : graph) {
        if (f.num == 5) {  // initializer
          const auto t = decode(f.bytes);
          if (field_str(t, 8).rfind("const/", 0) != 0) weight_bytes += static_cast<std::int64_t>(field_str(t, 9).size());
        } else if (f.num == 1) {
          ++ops[field_str(decode(f.bytes), 4)];
        }
      }
    }
    CHECK(elems == pim::net_params(c.net));
    CHECK(weight_bytes == 4 * pim::net_params(c.net));
    CHECK(available.count(net.layers.back().name) == 1);  // the last chunk outputs the result
    CHECK(ops.count("Erf") == 0);                          // GELU arrives in its stable form
    if (c.component != "text_encoder") {
      CHECK(ops["LayerNormalization"] >= st.groupnorm);  // GroupNorm as 4-D LayerNormalization
      CHECK(ops["Conv"] > 0);
    }
  }
}
