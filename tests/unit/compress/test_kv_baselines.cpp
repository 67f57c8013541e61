// The baselines on a tiny random model: budgets hold while decoding (batch > 1, left padding),
// memory is really freed, the kvpress scoring rules (window kept, sinks kept, pyramid budgets).
#include <doctest/doctest.h>

#include <ATen/ATen.h>

#include "kvlab/compress/kv_baselines.hpp"
#include "kvlab/compress/kv_methods.hpp"
#include "kvlab/core/progress.hpp"
#include "kvlab/llm/generate.hpp"
#include "../llm/tiny_model.hpp"
#include "../test_util.hpp"

using namespace kvlab;

namespace {
// Checks the cache after every forward: each layer holds at most `cap` entries per (row, head).
class CapCheck : public llm::CachePolicy {
 public:
  CapCheck(std::unique_ptr<llm::CachePolicy> inner, std::int64_t cap) : inner_(std::move(inner)), cap_(cap) {}
  std::string name() const override { return inner_->name(); }
  void after_attention(llm::AttentionStep& s, const at::Tensor& out) override {
    inner_->after_attention(s, out);
    max_entries = std::max(max_entries, s.kv->entry_counts().max().item<std::int64_t>());
    max_len = std::max(max_len, s.kv->length());
  }
  std::int64_t max_entries = 0, max_len = 0;

 private:
  std::unique_ptr<llm::CachePolicy> inner_;
  std::int64_t cap_;
};
}  // namespace

TEST_CASE("decode-time baselines keep the budget while decoding, batch 2 with left padding") {
  const llm::Model m = test::tiny_llm();
  for (const char* name : {"h2o", "tova", "streaming"}) {
    CAPTURE(name);
    const std::int64_t budget = 12;
    CapCheck pol(compress::make_baseline(name, {}, budget), budget);
    std::vector<std::vector<std::int64_t>> prompts = {std::vector<std::int64_t>(30, 5), std::vector<std::int64_t>(22, 7)};
    for (std::size_t i = 0; i < prompts[0].size(); ++i) prompts[0][i] = static_cast<std::int64_t>(3 + i % 50);
    llm::GenerateOptions go;
    go.max_new_tokens = 20;
    go.ignore_eos = true;
    core::NullProgress np;
    const auto g = llm::generate(m, prompts, go, &pol, np);
    CHECK(g.outputs[0].tokens.size() == 20);
    CHECK(g.outputs[1].tokens.size() == 20);
    CHECK(pol.max_entries <= budget);
    // The layer itself shrank (true memory), apart from the one slot appended before eviction.
    CHECK(pol.max_len <= budget + 1);
  }
}

TEST_CASE("prefill-only baselines compress the prompt once; decoding appends") {
  const llm::Model m = test::tiny_llm();
  for (const char* name : {"snapkv", "knorm", "pyramidkv"}) {
    CAPTURE(name);
    compress::BaselineOptions o;
    o.snapkv_window = o.pyramidkv_window = 4;
    o.pyramidkv_beta = 2;  // budget 10 / beta >= window: a real pyramid (15, 10, 5)
    auto pol = compress::make_baseline(name, o, 10);
    llm::KVCache cache = m.make_cache(1);
    llm::ForwardOptions fo;
    fo.policy = pol.get();
    at::Tensor tok = at::arange(3, 43, at::kLong).view({1, 40});
    m.forward(tok, test::arange_positions(1, 40), cache, fo);
    std::int64_t total = 0;
    for (std::int64_t l = 0; l < m.num_layers(); ++l) total += cache.layer(l).length();
    CHECK(total == 10 * m.num_layers());  // pyramidkv: the layer budgets average to the budget
    if (std::string(name) == "pyramidkv") CHECK(cache.layer(0).length() > cache.layer(2).length());
    const std::int64_t len0 = cache.layer(0).length();
    m.forward(at::full({1, 1}, 5, at::kLong), at::full({1, 1}, 40, at::kLong), cache, fo);
    CHECK(cache.layer(0).length() == len0 + 1);
  }
}

TEST_CASE("snapkv keeps its window and streaming its sinks") {
  const llm::Model m = test::tiny_llm();
  compress::BaselineOptions o;
  o.snapkv_window = 6;
  for (const char* name : {"snapkv", "streaming"}) {
    auto pol = compress::make_baseline(name, o, 8);
    llm::KVCache cache = m.make_cache(1);
    llm::ForwardOptions fo;
    fo.policy = pol.get();
    m.forward(at::arange(3, 35, at::kLong).view({1, 32}), test::arange_positions(1, 32), cache, fo);
    at::Tensor p = cache.layer(1).positions()[0][0];
    auto has = [&](std::int64_t x) { return p.eq(x).any().item<bool>(); };
    if (std::string(name) == "snapkv") {
      for (std::int64_t x = 26; x < 32; ++x) CHECK(has(x));
    } else {
      for (std::int64_t x : {0, 1, 2, 3, 28, 29, 30, 31}) CHECK(has(x));
    }
  }
}

TEST_CASE("pyramidkv layer budgets follow kvpress's formula") {
  // q_len 96, budget 48, window 16, beta 20, 3 layers: kvpress keeps 80, 48, 16.
  CHECK(compress::pyramidkv_layer_budget(96, 48, 16, 20, 0, 3) == 80);
  CHECK(compress::pyramidkv_layer_budget(96, 48, 16, 20, 1, 3) == 48);
  CHECK(compress::pyramidkv_layer_budget(96, 48, 16, 20, 2, 3) == 16);
  // Too small for the pyramid: the uniform budget.
  CHECK(compress::pyramidkv_layer_budget(96, 4, 16, 20, 0, 3) == 4);
}

TEST_CASE("method registry: unknown names and bad options are usage errors") {
  const std::string e = test::error_of([] { (void)compress::find_kv_method("snapk"); }, 2);
  CHECK(e.find("unknown KV-cache method") != std::string::npos);
  CHECK(e.find("snapkv") != std::string::npos);
  compress::BaselineOptions o;
  o.snapkv_kernel = 4;
  test::error_of([&] { (void)compress::make_baseline("snapkv", o, 8); }, 2);
  test::error_of([] { (void)compress::make_baseline("h2o", {}, 0); }, 2);
}
