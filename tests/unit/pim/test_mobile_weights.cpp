// mobile-plan export --weights: the parameter list of a component graph, the checkpoint file
// lookup, the checks of a checkpoint against the graph (missing / unexpected / mis-shaped tensors
// name the tensor, the expected and the found shape), the name mapping diffusers/transformers
// apply on load, F16/BF16 conversion, and the exported initializers holding the checkpoint's
// values (GEGLU halves split, Linear weights transposed, GroupNorm affines as [G, C/G, 1]).
#include <doctest/doctest.h>

#include <ATen/ATen.h>

#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "../test_util.hpp"
#include "kvlab/llm/safetensors.hpp"
#include "kvlab/pim/mobile_chunk.hpp"
#include "kvlab/pim/mobile_delegate.hpp"
#include "kvlab/pim/mobile_graph.hpp"
#include "kvlab/pim/mobile_onnx.hpp"
#include "kvlab/pim/mobile_weights.hpp"

using namespace kvlab;
namespace fs = std::filesystem;

namespace {

const char* kRoundtrip = "tests/data/mobile/roundtrip";

std::map<std::string, at::Tensor> load_all(const fs::path& file) {
  auto f = llm::SafetensorsFile::open(file);
  std::map<std::string, at::Tensor> out;
  for (const auto& t : f.tensors()) out[t.name] = f.read(t.name);
  return out;
}

const pim::ComponentGraph& comp(const pim::PipelineGraph& g, const std::string& name) {
  return g.component(name);
}

// Initializer `name` of a serialized ModelProto as floats (minimal protobuf walk: ModelProto.graph
// = 7, GraphProto.initializer = 5, TensorProto.name = 8, raw_data = 9).
struct Reader {
  const std::string& s;
  std::size_t i = 0;
  std::uint64_t varint() {
    std::uint64_t v = 0;
    for (int shift = 0;; shift += 7) {
      const auto b = static_cast<unsigned char>(s.at(i++));
      v |= static_cast<std::uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
  }
  // Calls f(field, bytes) for each length-delimited field; skips the others.
  template <class F>
  void each(F&& f) {
    while (i < s.size()) {
      const auto key = varint();
      const int wire = static_cast<int>(key & 7);
      if (wire == 0) {
        varint();
      } else if (wire == 5) {
        i += 4;
      } else if (wire == 2) {
        const auto n = varint();
        f(static_cast<int>(key >> 3), s.substr(i, n));
        i += n;
      } else {
        FAIL("unexpected wire type");
      }
    }
  }
};

std::map<std::string, std::vector<float>> initializers(const std::vector<pim::OnnxChunk>& chunks) {
  std::map<std::string, std::vector<float>> out;
  for (const auto& ch : chunks) {
    Reader model{ch.bytes};
    model.each([&](int field, const std::string& graph) {
      if (field != 7) return;
      Reader g{graph};
      g.each([&](int gf, const std::string& tensor) {
        if (gf != 5) return;
        std::string name, raw;
        Reader t{tensor};
        t.each([&](int tf, const std::string& b) {
          if (tf == 8) name = b;
          if (tf == 9) raw = b;
        });
        std::vector<float> v(raw.size() / 4);
        std::memcpy(v.data(), raw.data(), v.size() * 4);
        out[name] = v;
      });
    });
  }
  return out;
}

std::vector<float> as_floats(const at::Tensor& t) {
  const auto f = t.to(at::kFloat).contiguous();
  return std::vector<float>(f.data_ptr<float>(), f.data_ptr<float>() + f.numel());
}

}  // namespace

TEST_CASE("mobile weights: component_params covers every parameter once, torch shapes") {
  const auto g = pim::build_pipeline_graph(test::source_path("data/diffusion/tiny"), {});
  const auto target =
      pim::read_target_profile(test::source_path("data/mobile/targets/tflite-gpu.json"));
  for (const auto& c : g.components) {
    CAPTURE(c.component);
    pim::RewriteStats st;
    const auto rewritten = pim::rewrite_for_target(c.net, target, {}, st);
    for (const auto* net : {&c.net, &rewritten}) {
      std::int64_t n = 0;
      std::map<std::string, std::vector<std::int64_t>> by_name;
      for (const auto& p : pim::component_params(*net)) {
        std::int64_t k = 1;
        for (auto d : p.shape) k *= d;
        n += k;
        CHECK(by_name.emplace(p.name, p.shape).second);  // each name once
      }
      CHECK(n == pim::net_params(c.net));
      if (c.component == "unet") {
        // GEGLU: one fused Linear(C, 2 x 4C); GroupNorm affine [C]; conv [out, in, kh, kw].
        CHECK(by_name.at("down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.weight") ==
              std::vector<std::int64_t>{256, 32});
        CHECK(by_name.at("down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.bias") ==
              std::vector<std::int64_t>{256});
        CHECK(by_name.at("conv_norm_out.weight") == std::vector<std::int64_t>{32});
        CHECK(by_name.at("conv_in.weight") == std::vector<std::int64_t>{32, 4, 3, 3});
        CHECK(by_name.count("time_embedding.linear_1.weight") == 1);
      }
      if (c.component == "text_encoder")
        CHECK(by_name.at("embeddings.token_embedding.weight") == std::vector<std::int64_t>{100, 32});
    }
  }
}

TEST_CASE("mobile weights: parameter names and shapes equal diffusers/transformers' for sd15, sd21, tiny") {
  // golden-param-shapes.json: named_parameters() of the modules instantiated from the same configs
  // (scripts/make-golden-diffusion.py param-shapes), i.e. what a real checkpoint holds.
  std::ifstream f(test::source_path("tests/data/mobile/golden-param-shapes.json"));
  const auto gold = nlohmann::json::parse(f)["models"];
  for (const char* model : {"sd15", "sd21", "tiny"}) {
    const auto g = pim::build_pipeline_graph(test::source_path(std::string("data/diffusion/") + model), {});
    for (const auto& c : g.components) {
      CAPTURE(model);
      CAPTURE(c.component);
      const auto& want = gold.at(model).at(c.component);
      std::size_t matched = 0;
      for (const auto& p : pim::component_params(c.net)) {
        CAPTURE(p.name);
        REQUIRE(want.contains(p.name));
        CHECK(want.at(p.name).get<std::vector<std::int64_t>>() == p.shape);
        ++matched;
      }
      CHECK(matched == want.size());  // nothing diffusers holds is left out
    }
  }
}

TEST_CASE("mobile weights: checkpoint lookup in pipeline, component directories and files") {
  const fs::path rt = test::source_path(kRoundtrip);
  CHECK(pim::find_component_checkpoint(rt, "unet", false) == rt / "unet" / "diffusion_pytorch_model.safetensors");
  CHECK(pim::find_component_checkpoint(rt, "text_encoder", false) == rt / "text_encoder" / "model.safetensors");
  CHECK(pim::find_component_checkpoint(rt, "vae_decoder", false) == rt / "vae" / "diffusion_pytorch_model.safetensors");
  CHECK(pim::find_component_checkpoint(rt / "vae", "vae_decoder", true) ==
        rt / "vae" / "diffusion_pytorch_model.safetensors");
  const auto f = rt / "unet" / "diffusion_pytorch_model.safetensors";
  CHECK(pim::find_component_checkpoint(f, "unet", true) == f);
  auto msg = test::error_of([&] { pim::find_component_checkpoint(f, "unet", false); }, 2);
  CHECK(msg.find("--component") != std::string::npos);
  msg = test::error_of([&] { pim::find_component_checkpoint(rt / "unet", "unet", false); }, 2);
  CHECK(msg.find("unet/diffusion_pytorch_model.safetensors") != std::string::npos);
  msg = test::error_of([&] { pim::find_component_checkpoint(rt / "nowhere", "unet", true); }, 2);
  CHECK(msg.find("no such file") != std::string::npos);
}

TEST_CASE("mobile weights: the committed F16/BF16/F32 checkpoints match their graphs") {
  const fs::path rt = test::source_path(kRoundtrip);
  const auto g = pim::build_pipeline_graph(rt, {});
  for (const auto& c : g.components) {
    CAPTURE(c.component);
    const auto file = pim::find_component_checkpoint(rt, c.component, false);
    const auto w = pim::ComponentWeights::open(file, c.component, pim::component_params(c.net));
    // The VAE checkpoint also holds the encoder half (encoder.*, quant_conv.*), which is skipped.
    if (c.component == "vae_decoder") CHECK(w.ignored() > 10);
    else CHECK(w.ignored() == 0);
    // Values equal ATen's own conversion of the same tensors.
    const auto all = load_all(file);
    int compared = 0;
    for (const auto& p : pim::component_params(c.net)) {
      const auto got = w.read(p.name);
      const auto want = as_floats(all.at(p.name));
      REQUIRE(got.size() == want.size());
      CHECK(std::memcmp(got.data(), want.data(), got.size() * 4) == 0);
      ++compared;
    }
    CHECK(compared == static_cast<int>(all.size() - w.ignored()));
  }
}

TEST_CASE("mobile weights: missing, unexpected, mis-shaped tensors and bad dtypes exit 3 naming them") {
  const fs::path rt = test::source_path(kRoundtrip);
  const auto g = pim::build_pipeline_graph(rt, {});
  const auto expected = pim::component_params(comp(g, "unet").net);
  auto sd = load_all(rt / "unet" / "diffusion_pytorch_model.safetensors");
  sd.erase("conv_in.bias");                                         // missing
  sd["time_embedding.linear_3.weight"] = at::zeros({4, 4});         // unexpected
  sd["conv_out.weight"] = sd["conv_out.weight"].reshape({4, 16, 9, 1}).clone();  // mis-shaped
  sd["conv_norm_out.bias"] = sd["conv_norm_out.bias"].to(at::kDouble);           // unsupported dtype
  const auto bad = test::scratch("bad-unet.safetensors");
  llm::write_safetensors(bad, sd);
  const auto msg =
      test::error_of([&] { pim::ComponentWeights::open(bad, "unet", expected); }, 3);
  CHECK(msg.find(bad.string()) != std::string::npos);
  CHECK(msg.find("4 problem(s)") != std::string::npos);
  CHECK(msg.find("missing tensor \"conv_in.bias\" (expected shape [16])") != std::string::npos);
  CHECK(msg.find("unexpected tensor \"time_embedding.linear_3.weight\" (shape [4, 4])") != std::string::npos);
  CHECK(msg.find("tensor \"conv_out.weight\": expected shape [4, 16, 3, 3], found [4, 16, 9, 1]") !=
        std::string::npos);
  CHECK(msg.find("tensor \"conv_norm_out.bias\": dtype F64") != std::string::npos);
}

TEST_CASE("mobile weights: transformers' text_model. prefix and position_ids, diffusers' deprecated VAE names") {
  const fs::path rt = test::source_path(kRoundtrip);
  const auto g = pim::build_pipeline_graph(rt, {});
  // An older transformers checkpoint: "text_model." prefix and the position_ids buffer.
  auto te = load_all(rt / "text_encoder" / "model.safetensors");
  std::map<std::string, at::Tensor> old_te;
  for (const auto& [k, v] : te) old_te["text_model." + k] = v;
  old_te["text_model.embeddings.position_ids"] = at::arange(16, at::kLong).reshape({1, 16});
  const auto te_file = test::scratch("old-te.safetensors");
  llm::write_safetensors(te_file, old_te);
  const auto tw = pim::ComponentWeights::open(te_file, "text_encoder", pim::component_params(comp(g, "text_encoder").net));
  CHECK(tw.ignored() == 1);
  CHECK(tw.read("final_layer_norm.weight") == as_floats(te.at("final_layer_norm.weight")));

  // An older diffusers VAE: query/key/value/proj_attn, stored as 1x1 convolutions.
  auto vae = load_all(rt / "vae" / "diffusion_pytorch_model.safetensors");
  const std::string p = "decoder.mid_block.attentions.0.";
  const std::map<std::string, std::string> renames = {
      {"to_q", "query"}, {"to_k", "key"}, {"to_v", "value"}, {"to_out.0", "proj_attn"}};
  for (const auto& [now, old] : renames) {
    for (const char* kind : {".weight", ".bias"}) {
      auto t = vae.at(p + now + kind);
      vae.erase(p + now + kind);
      if (std::string(kind) == ".weight") t = t.reshape({t.size(0), t.size(1), 1, 1});
      vae[p + old + kind] = t;
    }
  }
  const auto vae_file = test::scratch("old-vae.safetensors");
  llm::write_safetensors(vae_file, vae);
  const auto vw = pim::ComponentWeights::open(vae_file, "vae_decoder", pim::component_params(comp(g, "vae_decoder").net));
  CHECK(vw.read(p + "to_q.weight") == as_floats(vae.at(p + "query.weight")));
  CHECK(vw.read(p + "to_out.0.bias") == as_floats(vae.at(p + "proj_attn.bias")));
  // A 1x1-conv shape is only accepted under the deprecated names.
  auto v2 = load_all(rt / "vae" / "diffusion_pytorch_model.safetensors");
  v2[p + "to_q.weight"] = v2[p + "to_q.weight"].reshape({16, 16, 1, 1});
  const auto v2_file = test::scratch("bad-vae.safetensors");
  llm::write_safetensors(v2_file, v2);
  const auto msg = test::error_of(
      [&] { pim::ComponentWeights::open(v2_file, "vae_decoder", pim::component_params(comp(g, "vae_decoder").net)); }, 3);
  CHECK(msg.find("expected shape [16, 16], found [16, 16, 1, 1]") != std::string::npos);
}

TEST_CASE("mobile weights: exported initializers hold the checkpoint's values") {
  const fs::path rt = test::source_path(kRoundtrip);
  const auto g = pim::build_pipeline_graph(rt, {});
  const auto target =
      pim::read_target_profile(test::source_path("data/mobile/targets/tflite-gpu.json"));
  const auto& c = comp(g, "unet");
  const auto w = pim::ComponentWeights::open(rt / "unet" / "diffusion_pytorch_model.safetensors", "unet",
                                             pim::component_params(c.net));
  pim::RewriteStats st;
  const auto net = pim::rewrite_for_target(c.net, target, {}, st);
  pim::ChunkOptions co;
  co.cap_mb = 0.1;
  const auto plan = pim::chunk_net(net, co);
  CHECK(plan.chunks.size() > 2);
  pim::OnnxExportOptions eo;
  eo.weights = &w;
  const auto chunks = pim::export_onnx(net, plan, "unet", eo);
  const auto init = initializers(chunks);
  const auto sd = load_all(rt / "unet" / "diffusion_pytorch_model.safetensors");
  // GEGLU: value = rows [0, 4C), gate = rows [4C, 8C) of the fused proj, each stored [in, out].
  const std::string ff = "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj";
  const auto fused = as_floats(sd.at(ff + ".weight"));  // [128, 16]
  const auto fused_b = as_floats(sd.at(ff + ".bias"));
  const auto& val = init.at(ff + ".value.weight_t");
  const auto& gate = init.at(ff + ".gate.weight_t");
  REQUIRE(val.size() == 64 * 16);
  REQUIRE(gate.size() == 64 * 16);
  for (int i = 0; i < 16; ++i)
    for (int r = 0; r < 64; ++r) {
      REQUIRE(val[i * 64 + r] == fused[r * 16 + i]);
      REQUIRE(gate[i * 64 + r] == fused[(64 + r) * 16 + i]);
    }
  CHECK(init.at(ff + ".gate.bias") == std::vector<float>(fused_b.begin() + 64, fused_b.end()));
  // Conv weights as stored; the 4-D GroupNorm affine [G, C/G, 1] in torch's [C] order.
  CHECK(init.at("conv_in.weight") == as_floats(sd.at("conv_in.weight")));
  CHECK(init.at("conv_norm_out.weight") == as_floats(sd.at("conv_norm_out.weight")));
  // Every checkpoint tensor went into some chunk (GEGLU halves counted once, as their source).
  std::int64_t elems = 0;
  for (const auto& ch : chunks) elems += ch.weight_elems;
  CHECK(elems == pim::net_params(c.net));
}

TEST_CASE("mobile weights: a sharded checkpoint (index.json + shards) opens like one file") {
  const fs::path rt = test::source_path(kRoundtrip);
  const auto g = pim::build_pipeline_graph(rt, {});
  const auto expected = pim::component_params(comp(g, "unet").net);
  const auto sd = load_all(rt / "unet" / "diffusion_pytorch_model.safetensors");
  const fs::path dir = test::scratch("sharded-unet");
  fs::create_directories(dir);
  std::map<std::string, at::Tensor> a, b;
  nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
  int i = 0;
  for (const auto& [k, v] : sd) {
    const bool first = i++ % 2 == 0;
    (first ? a : b)[k] = v;
    index["weight_map"][k] = first ? "diffusion_pytorch_model-00001-of-00002.safetensors"
                                   : "diffusion_pytorch_model-00002-of-00002.safetensors";
  }
  llm::write_safetensors(dir / "diffusion_pytorch_model-00001-of-00002.safetensors", a);
  llm::write_safetensors(dir / "diffusion_pytorch_model-00002-of-00002.safetensors", b);
  test::write_file(dir / "diffusion_pytorch_model.safetensors.index.json", index.dump());
  const auto file = pim::find_component_checkpoint(dir, "unet", true);
  CHECK(file == dir / "diffusion_pytorch_model.safetensors.index.json");
  const auto w = pim::ComponentWeights::open(file, "unet", expected);
  for (const auto& p : expected) CHECK(w.read(p.name) == as_floats(sd.at(p.name)));
  // A shard path outside the index's directory is refused.
  index["weight_map"]["conv_in.weight"] = "../elsewhere.safetensors";
  test::write_file(dir / "bad.safetensors.index.json", index.dump());
  const auto msg = test::error_of([&] { pim::ComponentWeights::open(dir / "bad.safetensors.index.json", "unet", expected); }, 3);
  CHECK(msg.find("../elsewhere.safetensors") != std::string::npos);
}
