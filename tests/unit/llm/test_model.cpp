// The decoder runtime: shapes, cache identities (prefill == step-by-step decode; evicting nothing
// or gathering everything == full; eviction keeps original positions, checked against a decode
// step re-derived by hand), batched left-padded decode == per-sequence decode, block removal,
// dtypes, and the policy hooks.
#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include <cmath>

#include "kvlab/core/error.hpp"
#include "kvlab/llm/model.hpp"
#include "kvlab/llm/rope.hpp"
#include "tiny_model.hpp"

using namespace kvlab;
using test::arange_positions;

namespace {

double max_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

// One decode step of token `tok` at position `p` for batch row 0, computed by hand from the
// weights, attending in layer l, KV head h to exactly the (position, k, v) entries the cache holds
// (read back from it) plus the new token. Double precision throughout.
at::Tensor reference_decode(const llm::Model& m, const llm::KVCache& cache, std::int64_t tok,
                            std::int64_t p) {
  const auto& c = m.config();
  const auto D = c.head_dim, H = c.num_attention_heads, HK = c.num_key_value_heads, G = H / HK;
  auto dbl = [](const at::Tensor& t) { return t.to(at::kDouble); };
  auto norm = [&](const at::Tensor& x, const at::Tensor& w) {
    return dbl(w) * x * at::rsqrt(x.pow(2).mean() + c.rms_norm_eps);
  };
  auto lin = [&](const llm::Linear& l, const at::Tensor& x) {
    at::Tensor y = at::mv(dbl(l.dense_weight()), x);
    if (auto b = l.bias()) y = y + dbl(*b);
    return y;
  };
  at::Tensor inv = dbl(llm::rope_inv_freq(c));
  auto rope = [&](const at::Tensor& x) {  // x [D] at position p
    at::Tensor ang = inv * double(p);
    at::Tensor x1 = x.narrow(0, 0, D / 2), x2 = x.narrow(0, D / 2, D / 2);
    return at::cat({x1 * ang.cos() - x2 * ang.sin(), x2 * ang.cos() + x1 * ang.sin()});
  };
  const auto f = m.to_file();
  at::Tensor x = dbl(f.weights.at("model.embed_tokens.weight")[tok]);
  for (std::int64_t l = 0; l < m.num_layers(); ++l) {
    const auto& blk = m.blocks()[static_cast<std::size_t>(l)];
    const auto& kv = cache.layer(l);
    at::Tensor xn = norm(x, blk.input_layernorm);
    at::Tensor q = lin(*blk.q_proj, xn).view({H, D}), k = lin(*blk.k_proj, xn).view({HK, D}),
               v = lin(*blk.v_proj, xn).view({HK, D});
    std::vector<at::Tensor> heads;
    for (std::int64_t h = 0; h < H; ++h) {
      const std::int64_t g = h / G;
      at::Tensor qh = rope(q[h]);
      std::vector<at::Tensor> keys{rope(k[g])}, vals{v[g]};
      for (std::int64_t s = 0; s < kv.length(); ++s)
        if (kv.positions()[0][g][s].item<std::int64_t>() >= 0) {
          keys.push_back(dbl(kv.keys()[0][g][s]));
          vals.push_back(dbl(kv.values()[0][g][s]));
        }
      at::Tensor w = at::softmax(at::mv(at::stack(keys), qh) / std::sqrt(double(D)), 0);
      heads.push_back(at::mv(at::stack(vals).t(), w));
    }
    x = x + lin(*blk.o_proj, at::cat(heads));
    at::Tensor x2 = norm(x, blk.post_attention_layernorm);
    x = x + lin(*blk.down_proj, at::silu(lin(*blk.gate_proj, x2)) * lin(*blk.up_proj, x2));
  }
  at::Tensor hn = norm(x, f.weights.at("model.norm.weight"));
  const auto& head = c.tie_word_embeddings ? f.weights.at("model.embed_tokens.weight")
                                           : f.weights.at("lm_head.weight");
  return at::mv(dbl(head), hn);
}

at::Tensor tokens_of(std::initializer_list<std::int64_t> v) {
  return at::tensor(std::vector<std::int64_t>(v), at::kLong).view({1, -1});
}

// Evicts something different in every layer and head: heads keep different numbers of entries.
class ScatterEvict : public llm::CachePolicy {
 public:
  std::string name() const override { return "scatter-evict"; }
  void after_attention(llm::AttentionStep& s, const at::Tensor&) override {
    if (s.phase != llm::Phase::prefill) return;
    at::Tensor pos = s.kv->positions();
    const std::int64_t mod = 2 + s.layer;
    at::Tensor head = at::arange(s.kv->kv_heads(), at::kLong).view({1, -1, 1});
    // Drop position p in head h when (p + h) % mod == 0, but keep the newest token.
    at::Tensor drop = (pos + head).remainder(mod).eq(0).logical_and(pos.lt(pos.max()));
    s.kv->evict(drop);
  }
};

}  // namespace

TEST_CASE("model: prefill at once == prefill then token-by-token decode") {
  for (auto arch : {llm::Arch::llama, llm::Arch::qwen2, llm::Arch::mistral}) {
    CAPTURE(llm::arch_name(arch));
    llm::Model m = test::tiny_llm(arch, /*tied=*/arch == llm::Arch::mistral);
    at::Tensor toks = tokens_of({5, 9, 2, 33, 17, 8, 60, 1, 0, 44});
    auto c1 = m.make_cache(1);
    at::Tensor full = m.forward(toks, arange_positions(1, 10), c1);
    CHECK(full.sizes() == at::IntArrayRef({1, 10, 64}));
    auto c2 = m.make_cache(1);
    m.forward(toks.narrow(1, 0, 4), arange_positions(1, 4), c2);
    for (std::int64_t t = 4; t < 10; ++t) {
      at::Tensor lg = m.forward(toks.narrow(1, t, 1), arange_positions(1, 1, t), c2,
                                {llm::LogitsMode::last});
      CHECK(max_diff(lg[0], full[0][t]) < 1e-5);
    }
    CHECK(c2.next_positions()[0] == 10);
  }
}

TEST_CASE("model: evicting nothing and gathering every entry both equal the full cache") {
  llm::Model m = test::tiny_llm();
  at::Tensor toks = tokens_of({3, 4, 5, 6, 7, 8, 9, 10, 11});
  auto full = m.make_cache(1), ev = m.make_cache(1), ga = m.make_cache(1);
  for (auto* c : {&full, &ev, &ga}) m.forward(toks, arange_positions(1, 9), *c, {llm::LogitsMode::none});
  for (std::int64_t l = 0; l < m.num_layers(); ++l) {
    ev.layer(l).evict(at::zeros({1, 2, 9}, at::kBool));
    ga.layer(l).gather(at::arange(9, at::kLong).view({1, 1, 9}).expand({1, 2, 9}));
  }
  for (std::int64_t step = 0; step < 3; ++step) {
    at::Tensor t = tokens_of({20 + step}), p = arange_positions(1, 1, 9 + step);
    at::Tensor a = m.forward(t, p, full, {llm::LogitsMode::last});
    CHECK(at::equal(a, m.forward(t, p, ev, {llm::LogitsMode::last})));
    CHECK(at::equal(a, m.forward(t, p, ga, {llm::LogitsMode::last})));
  }
}

TEST_CASE("model: after eviction, decode == attention over just the kept keys at their positions") {
  for (auto arch : {llm::Arch::llama, llm::Arch::qwen2}) {
    CAPTURE(llm::arch_name(arch));
    llm::Model m = test::tiny_llm(arch);
    at::Tensor toks = tokens_of({11, 3, 50, 7, 7, 21, 2, 9, 40, 13, 5, 6});
    ScatterEvict pol;
    auto cache = m.make_cache(1);
    llm::ForwardOptions fo;
    fo.policy = &pol;
    fo.logits = llm::LogitsMode::none;
    m.forward(toks, arange_positions(1, 12), cache, fo);
    // Heads really hold different numbers of entries, and memory shrank.
    at::Tensor counts = cache.layer(0).entry_counts();
    CHECK(counts[0][0].item<std::int64_t>() != counts[0][1].item<std::int64_t>());
    CHECK(cache.entries() < 12 * 2 * m.num_layers());
    // The cache after decoding must be checked against the reference computed before it.
    at::Tensor want = reference_decode(m, cache, /*tok=*/30, /*p=*/12);
    at::Tensor got = m.forward(tokens_of({30}), arange_positions(1, 1, 12), cache,
                               {llm::LogitsMode::last});
    CHECK(max_diff(got[0], want) < 1e-4);
    // The same decode with the gap in positions kept: not what a model that forgot positions
    // (re-numbering kept entries 0..n-1) would give.
    CHECK(cache.next_positions()[0] == 13);
  }
}

TEST_CASE("model: batched left-padded prefill and decode == each sequence alone") {
  llm::Model m = test::tiny_llm(llm::Arch::qwen2);
  std::vector<std::vector<std::int64_t>> prompts = {{4, 8, 15, 16, 23, 42}, {7, 7}, {1, 2, 3, 4}};
  const std::int64_t B = 3, T = 6;
  at::Tensor toks = at::zeros({B, T}, at::kLong), pos = at::full({B, T}, -1, at::kLong);
  for (std::int64_t b = 0; b < B; ++b) {
    const auto& p = prompts[static_cast<std::size_t>(b)];
    const std::int64_t n = static_cast<std::int64_t>(p.size());
    for (std::int64_t i = 0; i < n; ++i) {
      toks[b][T - n + i] = p[static_cast<std::size_t>(i)];
      pos[b][T - n + i] = i;
    }
  }
  auto bc = m.make_cache(B);
  at::Tensor lb = m.forward(toks, pos, bc, {llm::LogitsMode::last});
  std::vector<llm::KVCache> singles;
  for (std::int64_t b = 0; b < B; ++b) {
    const auto& p = prompts[static_cast<std::size_t>(b)];
    singles.push_back(m.make_cache(1));
    at::Tensor ls = m.forward(at::tensor(p, at::kLong).view({1, -1}),
                              arange_positions(1, static_cast<std::int64_t>(p.size())),
                              singles.back(), {llm::LogitsMode::last});
    CHECK(max_diff(lb[b], ls[0]) < 1e-5);
  }
  for (int step = 0; step < 4; ++step) {
    at::Tensor nt = at::tensor({10 + step, 20 + step, 30 + step}, at::kLong).view({B, 1});
    at::Tensor np = at::zeros({B, 1}, at::kLong);
    for (std::int64_t b = 0; b < B; ++b) np[b][0] = bc.next_positions()[static_cast<std::size_t>(b)];
    at::Tensor lbd = m.forward(nt, np, bc, {llm::LogitsMode::last});
    for (std::int64_t b = 0; b < B; ++b) {
      auto& sc = singles[static_cast<std::size_t>(b)];
      at::Tensor lsd = m.forward(nt.narrow(0, b, 1), np.narrow(0, b, 1), sc, {llm::LogitsMode::last});
      CHECK(max_diff(lbd[b], lsd[0]) < 1e-5);
    }
  }
}

TEST_CASE("model: blocks can be removed; to_file renumbers and keeps original indices") {
  llm::Model m = test::tiny_llm();
  m.remove_blocks({1});
  CHECK(m.num_layers() == 2);
  CHECK(m.config().num_hidden_layers == 2);
  llm::ModelFile f = m.to_file();
  CHECK((f.original_layer_indices == std::vector<std::int64_t>{0, 2}));
  CHECK(f.weights.count("model.layers.1.mlp.up_proj.weight") == 1);
  CHECK(f.weights.count("model.layers.2.mlp.up_proj.weight") == 0);
  llm::Model m2 = llm::Model::from_file(f);
  auto c1 = m.make_cache(1), c2 = m2.make_cache(1);
  at::Tensor t = tokens_of({1, 2, 3});
  CHECK(at::equal(m.forward(t, arange_positions(1, 3), c1), m2.forward(t, arange_positions(1, 3), c2)));
  CHECK(m2.blocks()[1].original_index == 2);
  CHECK_THROWS_AS(m.remove_blocks({5}), UsageError);
}

TEST_CASE("model: linear layers are swappable modules") {
  // A Linear that doubles its output: swapping it in must change the logits, proving the forward
  // goes through the interface and not through cached weights.
  struct Doubled : llm::Linear {
    std::shared_ptr<llm::Linear> inner;
    explicit Doubled(std::shared_ptr<llm::Linear> l) : inner(std::move(l)) {}
    at::Tensor forward(const at::Tensor& x) const override { return 2 * inner->forward(x); }
    std::int64_t in_features() const override { return inner->in_features(); }
    std::int64_t out_features() const override { return inner->out_features(); }
    std::string kind() const override { return "doubled"; }
    at::Tensor dense_weight() const override { return 2 * inner->dense_weight(); }
    std::uint64_t bytes() const override { return inner->bytes(); }
  };
  llm::Model m = test::tiny_llm();
  at::Tensor t = tokens_of({1, 2, 3});
  auto c1 = m.make_cache(1);
  at::Tensor a = m.forward(t, arange_positions(1, 3), c1);
  m.blocks()[0].down_proj = std::make_shared<Doubled>(m.blocks()[0].down_proj);
  auto c2 = m.make_cache(1);
  at::Tensor b = m.forward(t, arange_positions(1, 3), c2);
  CHECK(max_diff(a, b) > 1e-3);
  // Exporting the swapped model and reloading it as dense gives the same logits.
  llm::Model m2 = llm::Model::from_file(m.to_file());
  auto c3 = m2.make_cache(1);
  CHECK(max_diff(b, m2.forward(t, arange_positions(1, 3), c3)) < 1e-5);
}

TEST_CASE("model: bfloat16 on the CPU tracks float32; float16 runs or is refused cleanly") {
  llm::ModelFile f = test::tiny_llm_file(test::tiny_llm_config());
  llm::Model m32 = llm::Model::from_file(f);
  llm::ModelOptions o;
  o.dtype = "bfloat16";
  llm::Model m16 = llm::Model::from_file(f, o);
  CHECK((m16.dtype() == at::kBFloat16));
  at::Tensor t = tokens_of({1, 5, 9, 13});
  auto c1 = m32.make_cache(1), c2 = m16.make_cache(1);
  at::Tensor a = m32.forward(t, arange_positions(1, 4), c1), b = m16.forward(t, arange_positions(1, 4), c2);
  CHECK((b.scalar_type() == at::kFloat));
  CHECK(max_diff(a, b) < 0.25 * a.abs().max().item<double>());
  CHECK((c2.layer(0).keys().scalar_type() == at::kBFloat16));
  o.dtype = "float16";
  try {
    llm::Model mh = llm::Model::from_file(f, o);
    auto c3 = mh.make_cache(1);
    CHECK(max_diff(a, mh.forward(t, arange_positions(1, 4), c3)) < 0.25 * a.abs().max().item<double>());
  } catch (const UsageError& e) {
    CHECK(std::string(e.what()).find("float16") != std::string::npos);
  }
  o.dtype = "int8";
  CHECK_THROWS_AS(llm::Model::from_file(f, o), UsageError);
}

TEST_CASE("model: missing or misshapen weights are format errors naming the tensor") {
  llm::ModelFile f = test::tiny_llm_file(test::tiny_llm_config());
  f.weights.erase("model.layers.1.self_attn.k_proj.weight");
  CHECK_THROWS_WITH_AS(llm::Model::from_file(f), doctest::Contains("model.layers.1.self_attn.k_proj.weight"),
                       FormatError);
  f = test::tiny_llm_file(test::tiny_llm_config());
  f.weights["model.norm.weight"] = at::ones({31});
  CHECK_THROWS_WITH_AS(llm::Model::from_file(f), doctest::Contains("[31]"), FormatError);
  llm::Model m = test::tiny_llm();
  auto c = m.make_cache(1);
  CHECK_THROWS_AS(m.forward(tokens_of({64}), arange_positions(1, 1), c), UsageError);
}

TEST_CASE("model: token-selective propagation gathers hidden states and positions") {
  // Keeps only the last two tokens after layer 0. The K/V of layers 1.. then hold just those,
  // at their original positions, and the last-token logits still come out.
  struct KeepLastTwo : llm::CachePolicy {
    std::string name() const override { return "keep-last-two"; }
    std::optional<at::Tensor> select_tokens(std::int64_t layer, const at::Tensor& h,
                                            const at::Tensor&) override {
      if (layer != 0 || h.size(1) < 3) return std::nullopt;
      return at::arange(h.size(1) - 2, h.size(1), at::kLong).view({1, 2});
    }
  } pol;
  llm::Model m = test::tiny_llm();
  auto c = m.make_cache(1);
  llm::ForwardOptions fo;
  fo.policy = &pol;
  fo.logits = llm::LogitsMode::last;
  at::Tensor lg = m.forward(tokens_of({1, 2, 3, 4, 5}), arange_positions(1, 5), c, fo);
  CHECK(lg.sizes() == at::IntArrayRef({1, 64}));
  CHECK(c.layer(0).length() == 5);
  CHECK(c.layer(1).length() == 2);
  CHECK(at::equal(c.layer(2).positions()[0][1], at::tensor({3, 4}, at::kLong)));
}
