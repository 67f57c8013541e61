// The `model` artifact: round trip (bit-exact per dtype), the streaming writer's checks, the
// reader's refusals, and the doc page listing every /params key the writer emits.
#include <doctest/doctest.h>

#include <ATen/ATen.h>

#include <regex>

#include "../test_util.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/core/h5.hpp"
#include "kvlab/core/progress.hpp"
#include "kvlab/llm/import_export.hpp"
#include "kvlab/llm/model_io.hpp"
#include "kvlab/llm/safetensors.hpp"

#include <nlohmann/json.hpp>

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

// ------------------------------------------------------------------ golden import/export --

namespace {
const char* const kGolden[] = {"llama-gqa", "llama-bf16", "llama-untied", "mistral", "qwen2"};

std::filesystem::path golden_dir(const std::string& name) {
  return test::source_path("tests/data/golden/" + name);
}
}  // namespace

TEST_CASE("import-hf of every golden model: weights equal the safetensors tensors bit-exactly") {
  core::NullProgress progress;
  for (const std::string name : kGolden) {
    CAPTURE(name);
    const auto out = test::scratch("golden-" + name + ".h5");
    const auto r = llm::import_hf(golden_dir(name), out, {}, {}, progress);
    const auto ck = llm::SafetensorsCheckpoint::open_dir(golden_dir(name));
    const llm::ModelFile m = llm::read_model(out);
    CHECK(r.tensors == static_cast<std::int64_t>(m.weights.size()));
    CHECK(m.weights.size() == ck.names().size());
    for (const auto& [w, t] : m.weights) {
      CAPTURE(w);
      const at::Tensor want = ck.read(w);
      CHECK((t.scalar_type() == want.scalar_type()));
      CHECK(at::equal(t, want));
    }
    CHECK(r.dtype == (name == "llama-bf16" ? "bfloat16" : "float32"));
  }
  const llm::ModelFile g = llm::read_model(test::scratch("golden-llama-gqa.h5"));
  CHECK(g.config.rope_scaling.type == "llama3");
  CHECK(g.config.rope_scaling.original_max_position_embeddings == 32);
  CHECK(g.config.num_key_value_heads == 2);
  CHECK(g.config.tie_word_embeddings);
  const llm::ModelFile q = llm::read_model(test::scratch("golden-qwen2.h5"));
  CHECK(q.config.attention_bias);
  CHECK(q.weights.count("model.layers.1.self_attn.k_proj.bias") == 1);
  // The artifact passes its own schema.
  core::SchemaRegistry reg;
  llm::add_model_schema(reg);
  CHECK(core::validate(core::ArtifactReader::open_any(test::scratch("golden-qwen2.h5")), reg).empty());
}

TEST_CASE("export-hf writes safetensors that re-import identically, bf16 bit-exact") {
  core::NullProgress progress;
  for (const std::string name : kGolden) {
    CAPTURE(name);
    const auto h5 = test::scratch("exp-src-" + name + ".h5");
    llm::import_hf(golden_dir(name), h5, {}, {}, progress);
    const auto dir = test::scratch("exp-" + name);
    llm::check_output_dir(dir, false);
    const auto r = llm::export_hf(h5, dir, progress);
    CHECK(std::filesystem::exists(dir / "config.json"));
    // Exported tensors equal the original checkpoint's, byte for byte.
    const auto orig = llm::SafetensorsCheckpoint::open_dir(golden_dir(name));
    const auto exp = llm::SafetensorsCheckpoint::open_dir(dir);
    CHECK(exp.names() == orig.names());
    for (const auto& n : orig.names()) {
      CAPTURE(n);
      CHECK(exp.find(n)->dtype == orig.find(n)->dtype);
      CHECK(at::equal(exp.read(n), orig.read(n)));
    }
    // And the config round-trips through transformers' format.
    const auto j = nlohmann::json::parse(test::read_file(dir / "config.json"));
    const auto c = llm::ModelConfig::from_hf_json(j, "config.json");
    CHECK(c.to_hf_json() == r.config.to_hf_json());
    // Re-import of the export gives the same artifact weights.
    const auto again = test::scratch("exp-again-" + name + ".h5");
    llm::import_hf(dir, again, {}, {}, progress);
    const auto a = llm::read_model(h5), b = llm::read_model(again);
    for (const auto& [n, t] : a.weights) CHECK(at::equal(t, b.weights.at(n)));
  }
  // A non-empty directory needs --force; a file is refused.
  CHECK_THROWS_WITH_AS(llm::check_output_dir(test::scratch("exp-qwen2"), false),
                       doctest::Contains("directory is not empty; pass --force"), UsageError);
  CHECK_NOTHROW(llm::check_output_dir(test::scratch("exp-qwen2"), true));
  CHECK_THROWS_WITH_AS(llm::check_output_dir(test::scratch("exp-src-qwen2.h5"), true),
                       doctest::Contains("is not a directory"), UsageError);
}

TEST_CASE("a model with fewer blocks exports the right num_hidden_layers") {
  core::NullProgress progress;
  const auto src = test::scratch("prune-src.h5");
  llm::import_hf(golden_dir("llama-gqa"), src, {}, {}, progress);
  llm::ModelFile m = llm::read_model(src);
  // Drop block 1 of 3: block 2 becomes block 1 (what prune-blocks will do).
  llm::ModelFile p = m;
  p.weights.clear();
  for (const auto& [n, t] : m.weights) {
    if (n.rfind("model.layers.1.", 0) == 0) continue;
    std::string k = n;
    if (k.rfind("model.layers.2.", 0) == 0) k = "model.layers.1." + k.substr(15);
    p.weights[k] = t;
  }
  p.config.num_hidden_layers = 2;
  p.original_layer_indices = {0, 2};
  const auto pruned = test::scratch("pruned.h5");
  llm::write_model(pruned, p, {});
  const auto dir = test::scratch("pruned-hf");
  llm::export_hf(pruned, dir, progress);
  const auto j = nlohmann::json::parse(test::read_file(dir / "config.json"));
  CHECK(j["num_hidden_layers"] == 2);
  CHECK(j["rope_parameters"]["rope_type"] == "llama3");
  const auto back = test::scratch("pruned-back.h5");
  llm::import_hf(dir, back, {}, {}, progress);
  const auto r = llm::read_model(back);
  CHECK(r.config.num_hidden_layers == 2);
  CHECK(at::equal(r.weights.at("model.layers.1.mlp.up_proj.weight"),
                  m.weights.at("model.layers.2.mlp.up_proj.weight")));
  CHECK((llm::read_model(pruned).original_layer_indices == std::vector<std::int64_t>{0, 2}));
}

TEST_CASE("import-hf refuses checkpoints that do not match their config") {
  core::NullProgress progress;
  const auto ck = llm::SafetensorsCheckpoint::open_dir(golden_dir("qwen2"));
  std::map<std::string, at::Tensor> ts;
  for (const auto& n : ck.names()) ts[n] = ck.read(n);
  const std::string cfg = test::read_file(golden_dir("qwen2") / "config.json");
  auto make = [&](const std::string& tag, std::map<std::string, at::Tensor> t) {
    const auto d = test::scratch("bad-" + tag);
    std::filesystem::create_directories(d);
    test::write_file(d / "config.json", cfg);
    llm::write_safetensors(d / "model.safetensors", t);
    return d;
  };
  const auto out = test::scratch("bad.h5");
  SUBCASE("missing tensor") {
    auto t = ts;
    t.erase("model.layers.1.self_attn.q_proj.bias");
    CHECK_THROWS_WITH_AS(llm::import_hf(make("missing", t), out, {}, {}, progress),
                         doctest::Contains("tensor model.layers.1.self_attn.q_proj.bias is missing"),
                         FormatError);
  }
  SUBCASE("wrong shape versus the config") {
    auto t = ts;
    t["model.norm.weight"] = at::ones({65});
    CHECK_THROWS_WITH_AS(llm::import_hf(make("shape", t), out, {}, {}, progress),
                         doctest::Contains("tensor model.norm.weight has shape [65] but the config needs [64]"),
                         FormatError);
  }
  SUBCASE("unexpected tensor") {
    auto t = ts;
    t["model.layers.2.mlp.up_proj.weight"] = at::ones({128, 64});
    CHECK_THROWS_WITH_AS(llm::import_hf(make("extra", t), out, {}, {}, progress),
                         doctest::Contains("is not part of a qwen2 model with 2 layers"),
                         FormatError);
  }
  SUBCASE("unsupported dtype") {
    auto t = ts;
    t["model.norm.weight"] = t["model.norm.weight"].to(at::kDouble);
    CHECK_THROWS_WITH_AS(llm::import_hf(make("f64", t), out, {}, {}, progress),
                         doctest::Contains("tensor model.norm.weight has dtype F64; kvlab imports F32, BF16 and F16"),
                         FormatError);
  }
  SUBCASE("bad config.json") {
    const auto d = make("cfg", ts);
    test::write_file(d / "config.json", "{\"model_type\": \"llama\",");
    CHECK_THROWS_WITH_AS(llm::import_hf(d, out, {}, {}, progress),
                         doctest::Contains("config.json: not valid JSON"), FormatError);
  }
  CHECK_FALSE(std::filesystem::exists(out));
  CHECK(core::leftover_partials(out).empty());
}

TEST_CASE("import-hf --dtype converts; auto keeps bf16 bit-exact") {
  core::NullProgress progress;
  const auto out = test::scratch("conv.h5");
  llm::ImportHfOptions o;
  o.dtype = "bfloat16";
  const auto r = llm::import_hf(golden_dir("llama-untied"), out, o, {}, progress);
  CHECK(r.dtype == "bfloat16");
  const auto m = llm::read_model(out);
  const auto ck = llm::SafetensorsCheckpoint::open_dir(golden_dir("llama-untied"));
  CHECK(at::equal(m.weights.at("lm_head.weight"), ck.read("lm_head.weight").to(at::kBFloat16)));
  CHECK(m.config.torch_dtype == "bfloat16");
}
