// FastKV (docs/kv-methods-rpc-fastkv.md): the selection equals the official FastKVCluster.update_kv
// on the golden tensors of tests/data/kv-official/fastkv.h5 (scripts/make-golden-rpc-fastkv.py),
// the policy computes the official per-layer budgets and TSP lengths, and on the trained fixture
// model token-selective propagation really shortens the later layers' token count, every layer's
// cache really shrinks, and the continuation stays sane.
#include <doctest/doctest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <string>

#include "../llm/tiny_model.hpp"
#include "../test_util.hpp"
#include "fixture.hpp"
#include "kvlab/compress/fastkv.hpp"
#include "kvlab/core/h5.hpp"
#include "kvlab/core/tensor_io.hpp"
#include "kvlab/llm/import_export.hpp"

using namespace kvlab;
using compress::FastKVOptions;
using compress::FastKVPolicy;

namespace {

h5::File golden() {
  return h5::File::open(test::source_path("tests/data/kv-official/fastkv.h5"));
}

FastKVOptions golden_options(const h5::Group& root, const h5::Group& c) {
  FastKVOptions o;
  o.window = root.attr_int("window");
  o.kernel_size = root.attr_int("kernel_size");
  o.mode = c.attr_int("proportional") ? "proportional" : "constant";
  o.retain_rate = c.attr_double("retain_rate");
  o.tsp_rate = c.attr_double("tsp_rate");
  o.max_capacity = c.attr_int("max_capacity");
  o.tsp_length = c.attr_int("tsp_length_option");
  o.pooling = c.attr_int("pooling_max") ? "maxpool" : "avgpool";
  return o;
}

at::Tensor text_ids(std::int64_t offset, std::int64_t n) {
  const std::string text = test::read_file(test::source_path("data/kjv-byte-llama/heldout.txt"));
  REQUIRE(static_cast<std::int64_t>(text.size()) >= offset + n);
  at::Tensor ids = at::empty({1, n}, at::kLong);
  for (std::int64_t i = 0; i < n; ++i)
    ids[0][i] = static_cast<std::int64_t>(static_cast<unsigned char>(text[offset + i]));
  return ids;
}

}  // namespace

TEST_CASE("fastkv: selection equals the official FastKVCluster.update_kv on the golden tensors") {
  h5::File f = golden();
  const h5::Group root = f.root();
  at::Tensor keys = core::read_tensor(root, "keys"), queries = core::read_tensor(root, "queries");
  std::int64_t cases = 0, with_tsp = 0;
  for (const std::string& name : root.children()) {
    if (name.rfind("case_", 0) != 0) continue;
    const h5::Group c = root.group(name);
    CAPTURE(name);
    const FastKVOptions o = golden_options(root, c);
    compress::FastKVSelection s =
        FastKVPolicy::select(keys, queries, c.attr_int("budget"), c.attr_int("tsp_length"), o);
    REQUIRE(s.kept.defined() == (c.attr_int("compressed") != 0));
    if (s.kept.defined()) CHECK(at::equal(s.kept, core::read_tensor(c, "kept")));  // same order
    REQUIRE(s.tsp.defined() == (c.attr_int("has_tsp") != 0));
    if (s.tsp.defined()) {
      CHECK(at::equal(s.tsp, core::read_tensor(c, "tsp")));
      ++with_tsp;
    }
    ++cases;
  }
  CHECK(cases == 8);
  CHECK(with_tsp == 4);
}

TEST_CASE("fastkv: the policy uses the official per-layer budgets and TSP length") {
  // Drive the hooks over LayerKVs holding the golden keys (a fresh prefill of L = 48 tokens):
  // layer 1 is the TSP layer, layer 2 comes after it. Each golden case records the budget and the
  // TSP length the official code derived from its settings.
  h5::File f = golden();
  const h5::Group root = f.root();
  at::Tensor keys = core::read_tensor(root, "keys"), queries = core::read_tensor(root, "queries");
  const std::int64_t b = keys.size(0), hkv = keys.size(1), len = keys.size(2), d = keys.size(3);
  llm::ModelConfig cfg = test::tiny_llm_config();
  cfg.num_hidden_layers = 3;
  std::int64_t checked = 0;
  for (const std::string& name : root.children()) {
    if (name.rfind("case_", 0) != 0) continue;
    const h5::Group c = root.group(name);
    CAPTURE(name);
    FastKVOptions o = golden_options(root, c);
    o.tsp_layer = 1;
    FastKVPolicy pol(o, 0);
    const std::int64_t layer = c.attr_int("after_tsp") ? 2 : c.attr_int("tsp_layer") ? 1 : 0;
    std::optional<at::Tensor> tsp;
    for (std::int64_t li = 0; li <= layer; ++li) {
      llm::LayerKV kv(b, hkv, d, at::TensorOptions().dtype(at::kFloat), {});
      kv.append(keys, keys, test::arange_positions(b, len));
      llm::AttentionStep st;
      st.layer = li;
      st.phase = llm::Phase::prefill;
      st.q = queries;
      st.q_pos = test::arange_positions(b, len);
      st.kv = &kv;
      st.config = &cfg;
      pol.after_attention(st, at::Tensor());
      tsp = pol.select_tokens(li, at::Tensor(), st.q_pos);
      if (li < layer) continue;
      if (c.attr_int("compressed")) {
        CHECK(kv.length() == c.attr_int("budget"));
        CHECK(at::equal(kv.positions(), core::read_tensor(c, "kept")));
      } else {
        CHECK(kv.length() == len);
      }
      CHECK(tsp.has_value() == (c.attr_int("has_tsp") != 0));
      if (tsp) CHECK(at::equal(*tsp, core::read_tensor(c, "tsp")));
      ++checked;
    }
  }
  CHECK(checked == 8);
}

TEST_CASE("fastkv: invalid options are usage errors naming the flag") {
  FastKVOptions o;
  o.mode = "rate";
  CHECK(test::error_of([&] { FastKVPolicy(o, 0); }, 2).find("--fastkv-mode") != std::string::npos);
  o = FastKVOptions{};
  o.pooling = "sum";
  CHECK(test::error_of([&] { FastKVPolicy(o, 0); }, 2).find("--fastkv-pooling") !=
        std::string::npos);
  o = FastKVOptions{};
  o.retain_rate = 0.5;  // above the tsp rate 0.2
  CHECK(test::error_of([&] { FastKVPolicy(o, 0); }, 2).find("--fastkv-retain-rate") !=
        std::string::npos);
  o = FastKVOptions{};
  o.tsp_layer = -2;
  CHECK(test::error_of([&] { FastKVPolicy(o, 0); }, 2).find("--fastkv-tsp-layer") !=
        std::string::npos);
  // The official default TSP layer (15) does not exist in the 8-layer fixture model.
  const llm::Model& m = test::fixture_model_f32();
  FastKVPolicy pol(FastKVOptions{}, 0);
  llm::KVCache cache = m.make_cache(1);
  llm::ForwardOptions fo;
  fo.policy = &pol;
  CHECK(test::error_of([&] { m.forward(text_ids(0, 100), test::arange_positions(1, 100), cache, fo); },
                       2)
            .find("--fastkv-tsp-layer 15") != std::string::npos);
}

TEST_CASE("fastkv: fixture model: TSP shortens later layers, caches shrink, output stays sane") {
  const llm::Model& m = test::fixture_model_f32();
  const std::int64_t n = 600, gen = 64, tsp_layer = 3;
  at::Tensor ids = text_ids(2000, n + gen);
  FastKVOptions o;  // official proportional defaults: retain 0.1, tsp rate 0.2, window 8, maxpool
  o.tsp_layer = tsp_layer;
  auto run = [&](llm::CachePolicy* pol, std::vector<at::Tensor>* hs, llm::KVCache& cache) {
    llm::ForwardOptions fo;
    fo.policy = pol;
    fo.logits = llm::LogitsMode::last;
    fo.hidden_states = hs;
    at::Tensor logits = m.forward(ids.narrow(1, 0, n), test::arange_positions(1, n), cache, fo);
    fo.hidden_states = nullptr;
    std::vector<double> nll;
    for (std::int64_t i = 0; i < gen; ++i) {
      at::Tensor next = ids.narrow(1, n + i, 1);
      nll.push_back(-at::log_softmax(logits, -1)[0][next[0][0].item<std::int64_t>()]
                         .item<double>());
      logits = m.forward(next, test::arange_positions(1, 1, n + i), cache, fo);
    }
    double s = 0;
    for (double v : nll) s += v;
    return s / static_cast<double>(gen);
  };
  FastKVPolicy pol(o, 0);
  std::vector<at::Tensor> hs_fast, hs_full;
  llm::KVCache cf = m.make_cache(1), cfull = m.make_cache(1);
  const double nll_fast = run(&pol, &hs_fast, cf);
  const double nll_full = run(nullptr, &hs_full, cfull);
  const std::int64_t tsp_len = static_cast<std::int64_t>(n * 0.2);  // 120
  CHECK(pol.propagated_tokens() == tsp_len);
  REQUIRE(hs_fast.size() == static_cast<std::size_t>(m.num_layers()));
  for (std::int64_t li = 0; li < m.num_layers(); ++li) {
    CAPTURE(li);
    CHECK(hs_fast[static_cast<std::size_t>(li)].size(1) == (li < tsp_layer ? n : tsp_len));
    CHECK(hs_full[static_cast<std::size_t>(li)].size(1) == n);
    // Per-layer KV after the prefill + gen decode tokens: int(L * 0.1) up to the TSP layer,
    // int(L' * 0.1 / 0.2) after it, each plus the decode tokens.
    const std::int64_t kept = li <= tsp_layer ? static_cast<std::int64_t>(n * 0.1)
                                              : static_cast<std::int64_t>(tsp_len * (0.1 / 0.2));
    CHECK(cf.layer(li).length() == kept + gen);
    CHECK(cfull.layer(li).length() == n + gen);
  }
  // Layers before the TSP layer see the same tokens: identical hidden states there.
  CHECK(at::allclose(hs_fast[0], hs_full[0], 1e-5, 1e-5));
  // Original positions survive TSP: the last layer keeps the prompt's last window at positions
  // n - 8 .. n - 1, then the decode tokens at n, n + 1, ...
  {
    const std::int64_t kept = static_cast<std::int64_t>(tsp_len * (0.1 / 0.2));
    at::Tensor p = cf.layer(m.num_layers() - 1).positions()[0][0];
    CHECK(at::equal(p.narrow(0, kept - 8, 8 + gen), at::arange(n - 8, n + gen, at::kLong)));
    CHECK(p.narrow(0, 0, kept - 8).lt(n - 8).all().item<bool>());
  }
  MESSAGE("fixture NLL/byte over " << gen << " bytes after a " << n << "-byte prompt: full "
                                   << nll_full << ", fastkv " << nll_fast << "; KV bytes full "
                                   << cfull.bytes() << ", fastkv " << cf.bytes());
  CHECK(cf.bytes() * 3 < cfull.bytes());
  CHECK(std::isfinite(nll_fast));
  CHECK(nll_fast < nll_full + 1.0);
  CHECK(nll_fast < std::log(258.0) / 2);  // far better than chance (uniform over the bytes)
}
