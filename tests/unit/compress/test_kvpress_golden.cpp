// kvlab's snapkv, pyramidkv, streaming, tova and knorm keep exactly the entries NVIDIA kvpress
// keeps: golden kept-index sets made by scripts/make-golden-kvpress.py (kvpress 0.5.5,
// transformers 5.2, fp32) on a random tiny Llama with GQA (3 layers, 4 query / 2 KV heads).
#include <doctest/doctest.h>

#include <ATen/ATen.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "kvlab/compress/kv_baselines.hpp"
#include "kvlab/core/progress.hpp"
#include "kvlab/llm/import_export.hpp"
#include "kvlab/llm/model.hpp"
#include "../test_util.hpp"

using namespace kvlab;

namespace {

const llm::Model& golden_model() {
  static const llm::Model m = [] {
    const auto out = test::scratch("kvpress-tiny.h5");
    core::NullProgress np;
    llm::import_hf(test::source_path("tests/data/kvpress/tiny-llama"), out, {}, {}, np);
    return llm::load_model(out, {"cpu", "float32"});
  }();
  return m;
}

nlohmann::json golden() {
  std::ifstream f(test::source_path("tests/data/kvpress/golden.json"));
  return nlohmann::json::parse(f);
}

}  // namespace

TEST_CASE("kvpress golden: kept index sets of snapkv, pyramidkv, streaming, tova, knorm") {
  const nlohmann::json g = golden();
  const llm::Model& model = golden_model();
  const auto ids = g.at("input_ids").get<std::vector<std::int64_t>>();
  const auto l = static_cast<std::int64_t>(ids.size());
  at::Tensor tok = at::tensor(ids, at::kLong).view({1, l});
  at::Tensor pos = at::arange(l, at::kLong).view({1, l});
  int checked = 0;
  for (const auto& c : g.at("cases")) {
    const std::string method = c.at("method");
    const double ratio = c.at("compression_ratio");
    CAPTURE(method);
    CAPTURE(ratio);
    compress::BaselineOptions o;
    const auto& opt = c.at("options");
    if (opt.contains("window_size")) o.snapkv_window = o.pyramidkv_window = opt.at("window_size");
    if (opt.contains("kernel_size")) o.snapkv_kernel = o.pyramidkv_kernel = opt.at("kernel_size");
    if (opt.contains("beta")) o.pyramidkv_beta = opt.at("beta");
    if (opt.contains("n_sink")) o.streaming_sinks = opt.at("n_sink");
    // kvpress keeps int(L * (1 - ratio)) entries (PyramidKV: that many on average over layers).
    const auto budget = static_cast<std::int64_t>(static_cast<double>(l) * (1.0 - ratio));
    auto policy = compress::make_baseline(method, o, budget);
    llm::KVCache cache = model.make_cache(1);
    llm::ForwardOptions fo;
    fo.policy = policy.get();
    fo.logits = llm::LogitsMode::none;
    model.forward(tok, pos, cache, fo);
    const auto& kept = c.at("kept");
    REQUIRE(static_cast<std::int64_t>(kept.size()) == model.num_layers());
    for (std::int64_t layer = 0; layer < model.num_layers(); ++layer) {
      at::Tensor p = cache.layer(layer).positions();  // [1, Hkv, n]
      REQUIRE(static_cast<std::int64_t>(kept[layer].size()) == p.size(1));
      for (std::int64_t h = 0; h < p.size(1); ++h) {
        at::Tensor mine = std::get<0>(p[0][h].sort());
        const auto want = kept[layer][h].get<std::vector<std::int64_t>>();
        CAPTURE(layer);
        CAPTURE(h);
        REQUIRE(mine.numel() == static_cast<std::int64_t>(want.size()));
        std::vector<std::int64_t> got(mine.data_ptr<std::int64_t>(), mine.data_ptr<std::int64_t>() + mine.numel());
        CHECK(got == want);
        ++checked;
      }
      // Memory really shrank to the kept entries.
      CHECK(cache.layer(layer).length() == static_cast<std::int64_t>(kept[layer][0].size()));
    }
  }
  CHECK(checked == 9 * 3 * 2);
}
