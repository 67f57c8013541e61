// Generation: greedy decoding through the cache == argmax of a from-scratch forward at every step;
// batched left-padded generation == one prompt at a time; stop tokens; sampling warpers against
// hand-computed cases; seeded sampling is reproducible and follows the distribution.
#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include <cmath>

#include "kvlab/core/error.hpp"
#include "kvlab/llm/generate.hpp"
#include "kvlab/llm/sampling.hpp"
#include "tiny_model.hpp"

using namespace kvlab;

namespace {
std::vector<std::int64_t> gen1(const llm::Model& m, const std::vector<std::int64_t>& prompt,
                               llm::GenerateOptions o) {
  core::NullProgress np;
  return llm::generate(m, {prompt}, o, nullptr, np).outputs[0].tokens;
}
}  // namespace

TEST_CASE("generate: greedy through the cache == argmax of a fresh full forward each step") {
  llm::Model m = test::tiny_llm(llm::Arch::llama);
  llm::GenerateOptions o;
  o.max_new_tokens = 8;
  o.ignore_eos = true;
  std::vector<std::int64_t> seq = {3, 14, 15, 9, 26};
  const auto got = gen1(m, seq, o);
  REQUIRE(got.size() == 8);
  for (std::int64_t t : got) {
    auto c = m.make_cache(1);
    const auto n = static_cast<std::int64_t>(seq.size());
    at::Tensor lg = m.forward(at::tensor(seq, at::kLong).view({1, n}), test::arange_positions(1, n), c,
                              {llm::LogitsMode::last});
    CHECK(lg.argmax(-1).item<std::int64_t>() == t);
    seq.push_back(t);
  }
}

TEST_CASE("generate: a left-padded batch gives each prompt's own continuation") {
  llm::Model m = test::tiny_llm(llm::Arch::qwen2);
  llm::GenerateOptions o;
  o.max_new_tokens = 6;
  o.ignore_eos = true;
  const std::vector<std::vector<std::int64_t>> prompts = {{1, 2, 3, 4, 5, 6, 7}, {9}, {40, 41, 42}};
  core::NullProgress np;
  const auto r = llm::generate(m, prompts, o, nullptr, np);
  REQUIRE(r.outputs.size() == 3);
  for (std::size_t i = 0; i < prompts.size(); ++i) CHECK(r.outputs[i].tokens == gen1(m, prompts[i], o));
  CHECK(r.prompt_tokens == 11);
  CHECK(r.generated_tokens == 18);
  CHECK(r.kv_bytes_peak > 0);
}

TEST_CASE("generate: stop tokens end a sequence, the model's EOS by default") {
  llm::Model m = test::tiny_llm();
  llm::GenerateOptions o;
  o.max_new_tokens = 6;
  o.ignore_eos = true;
  const auto free_run = gen1(m, {5, 6, 7}, o);
  o.stop_tokens = {free_run[2]};
  const auto stopped = gen1(m, {5, 6, 7}, o);
  const auto first = std::find(free_run.begin(), free_run.end(), free_run[2]) - free_run.begin();
  CHECK(stopped.size() == static_cast<std::size_t>(first + 1));
  core::NullProgress np;
  CHECK(llm::generate(m, {{5, 6, 7}}, o, nullptr, np).outputs[0].stop_reason == "stop-token");
  o.stop_tokens = {};
  o.max_new_tokens = 2;
  CHECK(llm::generate(m, {{5, 6, 7}}, o, nullptr, np).outputs[0].stop_reason == "max-new-tokens");
  CHECK_THROWS_AS(llm::generate(m, {{}}, o, nullptr, np), UsageError);
}

TEST_CASE("sampling: temperature, top-k and top-p as transformers applies them") {
  at::Tensor lg = at::log(at::tensor({0.5, 0.3, 0.15, 0.05}, at::kFloat)).view({1, 4});
  const double inf = std::numeric_limits<double>::infinity();
  llm::SamplingOptions o;
  o.temperature = 1.0;
  o.top_p = 0.75;  // 0.5 + 0.3 reaches 0.75: the two best tokens remain
  at::Tensor w = llm::warp_logits(lg, o);
  CHECK(std::isfinite(w[0][1].item<float>()));
  CHECK(w[0][2].item<float>() == -inf);
  o.top_p = 0.5;  // exactly the best token's mass: transformers keeps only it
  w = llm::warp_logits(lg, o);
  CHECK(std::isfinite(w[0][0].item<float>()));
  CHECK(w[0][1].item<float>() == -inf);
  o.top_p = 1.0;
  o.top_k = 3;
  w = llm::warp_logits(lg, o);
  CHECK(w[0][3].item<float>() == -inf);
  CHECK(std::isfinite(w[0][2].item<float>()));
  o.top_k = 0;
  o.temperature = 2.0;
  CHECK(at::allclose(llm::warp_logits(lg, o), lg / 2));
}

TEST_CASE("sampling: seeded, reproducible, and distributed like softmax(logits / T)") {
  const std::int64_t n = 4000;
  at::Tensor lg = at::log(at::tensor({0.6, 0.3, 0.1}, at::kFloat)).view({1, 3}).expand({n, 3});
  llm::SamplingOptions o;
  o.temperature = 1.0;
  llm::Sampler a(o, 5), b(o, 5), c(o, 6);
  const auto xa = a.next(lg), xb = b.next(lg), xc = c.next(lg);
  CHECK(xa == xb);
  CHECK(xa != xc);
  std::vector<double> freq(3, 0);
  for (auto x : xa) freq[static_cast<std::size_t>(x)] += 1.0 / n;
  CHECK(freq[0] == doctest::Approx(0.6).epsilon(0.06));
  CHECK(freq[2] == doctest::Approx(0.1).epsilon(0.2));
  o.top_k = 1;  // top-1 sampling is greedy
  llm::Sampler g(o, 9);
  for (auto x : g.next(lg.narrow(0, 0, 50))) CHECK(x == 0);
  o = {};
  o.top_p = 0;
  CHECK_THROWS_AS(llm::Sampler(o, 1), UsageError);
}

TEST_CASE("generate: the same seed gives the same sampled text") {
  llm::Model m = test::tiny_llm();
  llm::GenerateOptions o;
  o.max_new_tokens = 10;
  o.ignore_eos = true;
  o.sampling.temperature = 1.5;
  o.sampling.top_p = 0.9;
  o.seed = 42;
  const auto a = gen1(m, {1, 2}, o), b = gen1(m, {1, 2}, o);
  CHECK(a == b);
  o.seed = 43;
  CHECK(gen1(m, {1, 2}, o) != a);
}
