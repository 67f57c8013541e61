// The `model` artifact: round trip (bit-exact per dtype), the streaming writer's checks, the
// reader's refusals, and the doc page listing every /params key the writer emits.
#include <doctest/doctest.h>

#include <ATen/ATen.h>

#include <regex>

#include "../test_util.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/core/h5.hpp"
#include "kvlab/llm/model_io.hpp"

using namespace kvlab;

namespace {

llm::ModelConfig tiny_config(bool tied, llm::Arch arch = llm::Arch::llama) {
  llm::ModelConfig c;
  c.arch = arch;
  c.vocab_size = 32;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 4;
  c.tie_word_embeddings = tied;
  c.attention_bias = arch == llm::Arch::qwen2;
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8.0;
  c.bos_token_id = 1;
  c.eos_token_ids = {2, 3};
  return c;
}

llm::ModelFile random_model(const llm::ModelConfig& c, at::ScalarType dt) {
  llm::ModelFile m;
  m.config = c;
  at::manual_seed(0);
  for (const auto& [name, shape] : c.expected_tensors())
    m.weights[name] = at::randn(shape).to(dt);
  return m;
}

}  // namespace

TEST_CASE("model artifact round-trips config and weights bit-exactly in every dtype") {
  for (auto dt : {at::kFloat, at::kBFloat16, at::kHalf}) {
    CAPTURE(c10::toString(dt));
    for (bool tied : {false, true}) {
      const auto c = tiny_config(tied, tied ? llm::Arch::qwen2 : llm::Arch::llama);
      const auto m = random_model(c, dt);
      const auto path = test::scratch(fmt::format("rt_{}_{}.h5", c10::toString(dt), tied));
      llm::write_model(path, m, {});
      const auto r = llm::read_model(path);
      CHECK(r.config.to_hf_json() == c.to_hf_json());
      CHECK((r.original_layer_indices == std::vector<std::int64_t>{0, 1}));
      REQUIRE(r.weights.size() == m.weights.size());
      for (const auto& [name, t] : m.weights) {
        CAPTURE(name);
        REQUIRE(r.weights.count(name));
        CHECK((r.weights.at(name).scalar_type() == dt));
        CHECK(at::equal(r.weights.at(name), t));
      }
      CHECK(r.header.kind == "model");
    }
  }
}

TEST_CASE("ModelWriter refuses unknown, mis-shaped, duplicate and missing tensors") {
  const auto c = tiny_config(false);
  const auto path = test::scratch("writer.h5");
  {
    llm::ModelWriter w(path, c, {});
    CHECK_THROWS_WITH_AS(w.add("model.layers.7.mlp.up_proj.weight", at::zeros({24, 16})),
                         doctest::Contains("is not part of a llama model with 2 layers"),
                         FormatError);
    CHECK_THROWS_WITH_AS(w.add("model.norm.weight", at::zeros({17})),
                         doctest::Contains("has shape [17] but the config needs [16]"), FormatError);
    w.add("model.norm.weight", at::zeros({16}));
    CHECK_THROWS_WITH_AS(w.add("model.norm.weight", at::zeros({16})),
                         doctest::Contains("given twice"), FormatError);
    CHECK_THROWS_WITH_AS(w.commit(), doctest::Contains("tensor model.embed_tokens.weight is missing"),
                         FormatError);
  }
  CHECK_FALSE(std::filesystem::exists(path));  // nothing half-written
  CHECK(core::leftover_partials(path).empty());
}

TEST_CASE("read_model refuses a model whose weights do not match its config") {
  const auto c = tiny_config(false);
  auto m = random_model(c, at::kFloat);
  const auto path = test::scratch("mismatch.h5");
  llm::write_model(path, m, {});
  {
    const hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    REQUIRE(f >= 0);
    CHECK(H5Ldelete(f, "/weights/model.layers.1.mlp.up_proj.weight", H5P_DEFAULT) >= 0);
    H5Fclose(f);
  }
  CHECK_THROWS_WITH_AS(llm::read_model(path),
                       doctest::Contains("tensor model.layers.1.mlp.up_proj.weight is missing"),
                       FormatError);
}

TEST_CASE("docs/formats/model.md lists every /params key the writer emits") {
  const auto c = tiny_config(true);
  const auto path = test::scratch("doc.h5");
  llm::write_model(path, random_model(c, at::kFloat), {});
  const auto r = core::ArtifactReader::open(path, "model", 1, 1);
  const std::string doc = test::read_file(test::source_path("docs/formats/model.md"));
  REQUIRE_FALSE(doc.empty());
  for (const auto& key : r.params().attr_names()) {
    CAPTURE(key);
    CHECK(doc.find("`" + key + "`") != std::string::npos);
  }
}
