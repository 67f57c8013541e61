// HF-exactness: every golden model under tests/data/golden/ (random tiny Llama with GQA and llama3
// rope scaling, untied Llama, sharded Mistral, Qwen2 with q/k/v bias; made by
// scripts/make-golden-models.py with transformers, fp32, CPU, eager attention) must give
// max |logit difference| <= 1e-4 in fp32 on the CPU, and the same 8 greedy tokens per sequence.
#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "../test_util.hpp"
#include "kvlab/llm/generate.hpp"
#include "kvlab/llm/model.hpp"
#include "kvlab/llm/safetensors.hpp"

using namespace kvlab;

namespace {

llm::ModelFile load_hf_dir(const std::string& dir) {
  std::ifstream f(dir + "/config.json");
  REQUIRE(f.good());
  llm::ModelFile m;
  m.config = llm::ModelConfig::from_hf_json(nlohmann::json::parse(f), dir + "/config.json");
  const auto ckpt = llm::SafetensorsCheckpoint::open_dir(dir);
  for (const auto& [name, shape] : m.config.expected_tensors()) m.weights[name] = ckpt.read(name);
  return m;
}

}  // namespace

TEST_CASE("golden: logits and greedy continuations match transformers") {
  for (const char* name : {"llama-gqa", "llama-untied", "mistral", "qwen2"}) {
    CAPTURE(name);
    const std::string dir = test::source_path(std::string("tests/data/golden/") + name);
    const llm::Model model = llm::Model::from_file(load_hf_dir(dir));
    const auto golden = llm::SafetensorsFile::open(dir + "/golden.safetensors");
    const at::Tensor ids = golden.read("input_ids");
    const at::Tensor want = golden.read("logits");
    const at::Tensor greedy = golden.read("greedy_ids");
    const std::int64_t b = ids.size(0), t = ids.size(1);
    auto cache = model.make_cache(b);
    const at::Tensor pos = at::arange(t, at::kLong).unsqueeze(0).expand({b, t}).contiguous();
    const at::Tensor got = model.forward(ids, pos, cache);
    const double diff = (got - want).abs().max().item<double>();
    MESSAGE(std::string(name) << ": max |logit diff| = " << diff);
    CHECK(diff <= 1e-4);
    // The same logits when scored one token at a time through the cache.
    auto c2 = model.make_cache(b);
    double step_diff = 0;
    for (std::int64_t i = 0; i < t; ++i) {
      at::Tensor lg = model.forward(ids.narrow(1, i, 1), pos.narrow(1, i, 1), c2, {llm::LogitsMode::last});
      step_diff = std::max(step_diff, (lg - want.select(1, i)).abs().max().item<double>());
    }
    CHECK(step_diff <= 1e-4);

    llm::GenerateOptions o;
    o.max_new_tokens = greedy.size(1);
    o.ignore_eos = true;
    std::vector<std::vector<std::int64_t>> prompts;
    for (std::int64_t i = 0; i < b; ++i) {
      const at::Tensor row = ids[i].contiguous();
      prompts.emplace_back(row.data_ptr<std::int64_t>(), row.data_ptr<std::int64_t>() + t);
    }
    core::NullProgress np;
    const auto r = llm::generate(model, prompts, o, nullptr, np);
    for (std::int64_t i = 0; i < b; ++i) {
      const at::Tensor row = greedy[i].contiguous();
      const std::vector<std::int64_t> want_ids(row.data_ptr<std::int64_t>(), row.data_ptr<std::int64_t>() + row.numel());
      CHECK(r.outputs[static_cast<std::size_t>(i)].tokens == want_ids);
    }
  }
}
