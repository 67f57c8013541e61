// DecodeGraph's static decode step (the step a CUDA graph captures) against Model::forward: the
// same logits for every architecture (GQA, llama3 RoPE, Qwen2 biases, Mistral's sliding window),
// a left-padded batch, and the cache left exactly as forward leaves it. On a CUDA machine the
// captured graph is checked against eager decoding too.
#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "kvlab/core/error.hpp"
#include "kvlab/llm/attention.hpp"
#include "kvlab/llm/decode_graph.hpp"
#include "kvlab/llm/generate.hpp"
#include "tiny_model.hpp"

using namespace kvlab;

namespace {

/// Prefills `pb` and decodes `steps` greedy tokens, by forward() or through a DecodeGraph.
/// Returns the stacked logits [steps, B, V] and leaves the cache in `cache`.
at::Tensor decode(const llm::Model& m, const llm::PaddedBatch& pb, std::int64_t steps, bool via_graph,
                  bool use_cuda_graph, llm::KVCache& cache) {
  cache = m.make_cache(pb.tokens.size(0));
  llm::ForwardOptions fo;
  fo.logits = llm::LogitsMode::last;
  at::Tensor lg = m.forward(pb.tokens, pb.positions, cache, fo);
  std::unique_ptr<llm::DecodeGraph> g;
  if (via_graph) g = std::make_unique<llm::DecodeGraph>(m, cache, steps, use_cuda_graph);
  std::vector<at::Tensor> out;
  for (std::int64_t s = 0; s < steps; ++s) {
    at::Tensor tok = lg.argmax(-1).cpu().view({-1, 1});
    std::vector<std::int64_t> np = cache.next_positions();
    at::Tensor pos = at::tensor(np, at::kLong).view({-1, 1});
    lg = via_graph ? g->step(tok, pos) : m.forward(tok, pos, cache, fo);
    out.push_back(lg.cpu());
  }
  return at::stack(out);
}

double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

}  // namespace

TEST_CASE("DecodeGraph: the static step equals forward() decoding, for every architecture") {
  for (llm::Arch arch : {llm::Arch::llama, llm::Arch::qwen2, llm::Arch::mistral}) {
    CAPTURE(static_cast<int>(arch));
    llm::ModelConfig c = test::tiny_llm_config(arch);
    if (arch == llm::Arch::mistral) c.sliding_window = 6;  // shorter than prompt + steps
    const llm::Model m = llm::Model::from_file(test::tiny_llm_file(c));
    const llm::PaddedBatch pb = llm::left_pad({{3, 14, 15, 9, 26, 5, 35}, {8, 9}}, 0);
    llm::KVCache ce, cg;
    const at::Tensor eager = decode(m, pb, 9, false, false, ce);
    const at::Tensor graph = decode(m, pb, 9, true, false, cg);
    CHECK(max_diff(eager, graph) < 1e-5);
    CHECK(at::equal(eager.argmax(-1), graph.argmax(-1)));
    // The cache ends up the same: lengths, positions, keys, next positions.
    CHECK(cg.next_positions() == ce.next_positions());
    for (std::int64_t l = 0; l < m.num_layers(); ++l) {
      REQUIRE(cg.layer(l).length() == ce.layer(l).length());
      CHECK(at::equal(cg.layer(l).positions(), ce.layer(l).positions()));
      CHECK(max_diff(cg.layer(l).keys(), ce.layer(l).keys()) < 1e-5);
    }
  }
}

TEST_CASE("DecodeGraph: refuses what it cannot replay, and a cache changed behind its back") {
  const llm::Model m = test::tiny_llm();
  llm::KVCache cache = m.make_cache(1);
  llm::FullAttention full;
  CHECK(llm::DecodeGraph::unsupported_reason(m, cache, &full, false).find("policy") != std::string::npos);
  CHECK(llm::DecodeGraph::unsupported_reason(m, cache, nullptr, true) != "");  // CPU model
  llm::KVCache paged = m.make_cache(1, {/*page_size=*/4});
  CHECK(llm::DecodeGraph::unsupported_reason(m, paged, nullptr, false).find("page") != std::string::npos);
  CHECK_THROWS_AS(llm::DecodeGraph(m, paged, 4, false), UsageError);

  m.forward(at::tensor({1, 2, 3}, at::kLong).view({1, 3}), test::arange_positions(1, 3), cache);
  llm::DecodeGraph g(m, cache, 2, false);
  g.step(at::tensor({4}, at::kLong).view({1, 1}), at::tensor({3}, at::kLong).view({1, 1}));
  CHECK(g.steps_left() == 1);
  m.forward(at::tensor({5}, at::kLong).view({1, 1}), at::tensor({4}, at::kLong).view({1, 1}), cache);
  CHECK_THROWS(g.step(at::tensor({6}, at::kLong).view({1, 1}), at::tensor({5}, at::kLong).view({1, 1})));
}

TEST_CASE("DecodeGraph: a captured CUDA graph replays eager decoding" * doctest::skip(!at::hasCUDA())) {
  llm::ModelConfig c = test::tiny_llm_config(llm::Arch::llama);
  const llm::Model m = llm::Model::from_file(test::tiny_llm_file(c), {"cuda", "float32"});
  const llm::PaddedBatch pb = llm::left_pad({{3, 14, 15, 9, 26}, {7, 8, 9}}, 0);
  llm::KVCache ce, cg;
  const at::Tensor eager = decode(m, pb, 12, false, false, ce);
  const at::Tensor graph = decode(m, pb, 12, true, true, cg);
  CHECK(max_diff(eager, graph) < 1e-4);
  CHECK(at::equal(eager.argmax(-1), graph.argmax(-1)));
}

TEST_CASE("fused CUDA decode attention == the masked reference, holes and a window included" *
          doctest::skip(!at::hasCUDA())) {
  at::manual_seed(3);
  for (auto dt : {at::kFloat, at::kBFloat16}) {
    CAPTURE(dt);
    const auto o = at::TensorOptions().device(at::kCUDA).dtype(dt);
    // 701 slots: three splits, the last one ragged (odd rows in flight per warp at D = 128).
    const std::int64_t b = 2, hk = 2, g = 4, l = 701, d = 128;
    at::Tensor q = at::randn({b, hk * g, 1, d}, o), k = at::randn({b, hk, l, d}, o),
               v = at::randn({b, hk, l, d}, o);
    at::Tensor kpos = at::arange(l, at::TensorOptions().device(at::kCUDA).dtype(at::kLong))
                          .view({1, 1, l}).repeat({b, hk, 1});
    kpos.index_put_({0, 1, at::indexing::Slice(100, 300)}, -1);  // a hole in one head
    kpos.index_put_({1, at::indexing::Slice(), at::indexing::Slice(650, l)}, -1);  // empty tail
    at::Tensor qpos = at::tensor({700, 640}, at::kLong).view({b, 1}).to(at::kCUDA);
    for (std::optional<std::int64_t> window : {std::optional<std::int64_t>{}, std::optional<std::int64_t>{257}}) {
      llm::AttentionOptions fused, ref;
      fused.sliding_window = ref.sliding_window = window;
      fused.key_holes = ref.key_holes = true;
      ref.force_manual = true;
      REQUIRE(llm::fused_decode_attention(q, k));
      const at::Tensor a = llm::attention(q, k, v, kpos, qpos, fused).to(at::kFloat);
      const at::Tensor r = llm::attention(q, k, v, kpos, qpos, ref).to(at::kFloat);
      CHECK(max_diff(a, r) < (dt == at::kFloat ? 1e-5 : 2e-2));
    }
  }
}

TEST_CASE("CUDA model == CPU model: prefill and decode through the fused kernels and the graph" *
          doctest::skip(!at::hasCUDA())) {
  llm::ModelConfig c = test::tiny_llm_config(llm::Arch::mistral);
  c.sliding_window = 6;
  const llm::ModelFile f = test::tiny_llm_file(c);
  const llm::Model cpu = llm::Model::from_file(f), gpu = llm::Model::from_file(f, {"cuda", "float32"});
  const llm::PaddedBatch pb = llm::left_pad({{3, 14, 15, 9, 26, 5, 35}, {8, 9}}, 0);
  llm::KVCache cc, cg;
  const at::Tensor ref = decode(cpu, pb, 10, false, false, cc);
  CHECK(max_diff(ref, decode(gpu, pb, 10, false, false, cg)) < 1e-4);
  CHECK(max_diff(ref, decode(gpu, pb, 10, true, true, cg)) < 1e-4);
}

namespace {
// A tiny model where every fused CUDA decode kernel runs (head_dim 64, GEMV rows multiples of 4,
// K multiples of 16 bytes); Mistral with a sliding window shorter than the test's sequences.
llm::ModelConfig fused_kernel_config(llm::Arch arch) {
  llm::ModelConfig c = test::tiny_llm_config(arch);
  c.hidden_size = 256;
  c.intermediate_size = 512;
  c.head_dim = 64;
  c.vocab_size = 260;
  if (arch == llm::Arch::mistral) c.sliding_window = 6;
  return c;
}
}  // namespace

TEST_CASE("batched CUDA decode block (fused q/k/v GEMM, RoPE + cache write, decode attention) == "
          "the ATen decode step" *
          doctest::skip(!at::hasCUDA())) {
  // Batch 3, different tokens per row, every architecture: Model::decode_block_batched (used for
  // batch > 1, and for batch 1 where the GEMV kernels do not apply) against set_fused_decode(false).
  for (llm::Arch arch : {llm::Arch::llama, llm::Arch::qwen2, llm::Arch::mistral}) {
    const llm::ModelFile f = test::tiny_llm_file(fused_kernel_config(arch));
    for (const char* dt : {"float32", "bfloat16"}) {
      const int a = static_cast<int>(arch);
      CAPTURE(a);
      CAPTURE(dt);
      llm::Model m = llm::Model::from_file(f, {"cuda", dt});
      const std::int64_t b = 3;
      auto run = [&](bool fused) {
        m.set_fused_decode(fused);
        llm::KVCache cache = m.make_cache(b);
        llm::ForwardOptions fo;
        fo.logits = llm::LogitsMode::last;
        m.forward((at::arange(3 * 9, at::kLong).view({b, 9}) * 7) % 260, test::arange_positions(b, 9),
                  cache, fo);
        llm::DecodeGraph g(m, cache, 12, true);
        std::vector<at::Tensor> out;
        for (std::int64_t s = 0; s < 12; ++s)
          out.push_back(g.step((at::arange(b, at::kLong).view({b, 1}) * 11 + s * 37 + 5) % 260,
                               at::full({b, 1}, 9 + s, at::kLong))
                            .cpu());
        return at::stack(out);
      };
      const at::Tensor fused = run(true), ref = run(false);
      const double scale = std::max(1.0, ref.abs().max().item<double>());
      CHECK(fused.isfinite().all().item<bool>());
      CHECK(max_diff(fused, ref) < (std::string(dt) == "float32" ? 1e-4 : 3e-2) * scale);
    }
  }
}

TEST_CASE("fused batch-1 decode block == the ATen decode step, every architecture" *
          doctest::skip(!at::hasCUDA())) {
  // Shapes where every fused kernel runs (head_dim 64, GEMV rows multiples of 4, K multiples of
  // 16 bytes); teacher-forced tokens so that both runs see the same sequence.
  for (llm::Arch arch : {llm::Arch::llama, llm::Arch::qwen2, llm::Arch::mistral}) {
    const llm::ModelFile f = test::tiny_llm_file(fused_kernel_config(arch));
    for (const char* dt : {"float32", "bfloat16"}) {
      const int a = static_cast<int>(arch);
      CAPTURE(a);
      CAPTURE(dt);
      llm::Model m = llm::Model::from_file(f, {"cuda", dt});
      auto run = [&](bool fused) {
        m.set_fused_decode(fused);
        llm::KVCache cache = m.make_cache(1);
        llm::ForwardOptions fo;
        fo.logits = llm::LogitsMode::last;
        m.forward(at::arange(3, 12, at::kLong).view({1, -1}), test::arange_positions(1, 9), cache, fo);
        CHECK(m.uses_fused_decode(cache) == fused);
        llm::DecodeGraph g(m, cache, 12, true);
        std::vector<at::Tensor> out;
        for (std::int64_t s = 0; s < 12; ++s)
          out.push_back(g.step(at::tensor({(s * 37 + 5) % 260}, at::kLong).view({1, 1}),
                               at::tensor({9 + s}, at::kLong).view({1, 1}))
                            .cpu());
        return at::stack(out);
      };
      const at::Tensor fused = run(true), ref = run(false);
      const double scale = std::max(1.0, ref.abs().max().item<double>());
      CHECK(fused.isfinite().all().item<bool>());
      CHECK(max_diff(fused, ref) < (std::string(dt) == "float32" ? 1e-4 : 3e-2) * scale);
    }
  }
}
