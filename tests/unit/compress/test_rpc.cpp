// RPC (docs/kv-methods-rpc-fastkv.md): the selection equals the official RPCCluster.compress_kv on
// the golden tensors of tests/data/kv-official/rpc.h5 (scripts/make-golden-rpc-fastkv.py), the
// decode schedule and selector buffer reproduce what the official decode path feeds it (quirk on)
// or the last R queries (quirk off), and on the trained fixture model memory really shrinks,
// quality stays close to full KV, and batch 2 with different prompt lengths equals per-row runs.
#include <doctest/doctest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <memory>
#include <string>

#include "../llm/tiny_model.hpp"
#include "../test_util.hpp"
#include "fixture.hpp"
#include "kvlab/compress/fastkv.hpp"
#include "kvlab/compress/rpc.hpp"
#include "kvlab/core/h5.hpp"
#include "kvlab/core/tensor_io.hpp"
#include "kvlab/llm/decode_graph.hpp"
#include "kvlab/llm/import_export.hpp"

using namespace kvlab;
using compress::RpcOptions;
using compress::RpcPolicy;

namespace {

h5::File golden() {
  return h5::File::open(test::source_path("tests/data/kv-official/rpc.h5"));
}

RpcOptions golden_options(const h5::Group& root, const h5::Group& c) {
  RpcOptions o;
  o.interval = root.attr_int("P");
  o.window = root.attr_int("R");
  o.ratio = static_cast<double>(root.attr_int("c"));
  o.aggregation = c.attr_int("aggregation_group") ? "group" : "all";
  o.pooling = c.attr_int("pooling_max") ? "maxpool" : "avgpool";
  o.duplicate_current_query = c.attr_int("duplicate_current_query") != 0;
  return o;
}

// Bytes of held-out text as token ids [n].
at::Tensor text_ids(std::int64_t offset, std::int64_t n) {
  const std::string text = test::read_file(test::source_path("data/kjv-byte-llama/heldout.txt"));
  REQUIRE(static_cast<std::int64_t>(text.size()) >= offset + n);
  at::Tensor ids = at::empty({n}, at::kLong);
  for (std::int64_t i = 0; i < n; ++i)
    ids[i] = static_cast<std::int64_t>(static_cast<unsigned char>(text[offset + i]));
  return ids;
}

struct Run {
  at::Tensor nll;  // [B, N] per decode step (teacher forced)
  std::uint64_t bytes = 0;
  std::int64_t entries = 0;
  std::int64_t layer0_len = 0;
};

// Left-padded batch: row r has prompts[r] tokens, then `gen` teacher-forced decode steps of `cont`.
// static_steps: the decode steps run through llm::StaticDecoder (the graph path, eager here on the
// CPU) instead of Model::forward with the policy's hooks.
Run decode_run(const llm::Model& m, llm::CachePolicy* policy, const std::vector<at::Tensor>& prompts,
               const std::vector<at::Tensor>& conts, std::int64_t gen, bool static_steps = false,
               std::vector<at::Tensor>* layer_positions = nullptr) {
  const std::int64_t b = static_cast<std::int64_t>(prompts.size());
  std::int64_t lmax = 0;
  for (const auto& p : prompts) lmax = std::max(lmax, p.size(0));
  at::Tensor tok = at::zeros({b, lmax}, at::kLong), pos = at::full({b, lmax}, -1, at::kLong);
  for (std::int64_t r = 0; r < b; ++r) {
    const std::int64_t l = prompts[static_cast<std::size_t>(r)].size(0);
    tok[r].narrow(0, lmax - l, l).copy_(prompts[static_cast<std::size_t>(r)]);
    pos[r].narrow(0, lmax - l, l).copy_(at::arange(l, at::kLong));
  }
  llm::KVCache cache = m.make_cache(b);
  llm::ForwardOptions fo;
  fo.policy = policy;
  fo.logits = llm::LogitsMode::last;
  at::Tensor logits = m.forward(tok, pos, cache, fo);
  std::unique_ptr<llm::StaticDecoder> sd;
  if (static_steps)
    sd = std::make_unique<llm::StaticDecoder>(m, cache, policy, gen, /*use_graph=*/false,
                                              /*segment=*/50);
  Run run;
  run.nll = at::empty({b, gen});
  for (std::int64_t i = 0; i < gen; ++i) {
    at::Tensor next = at::empty({b, 1}, at::kLong), npos = at::empty({b, 1}, at::kLong);
    for (std::int64_t r = 0; r < b; ++r) {
      next[r][0] = conts[static_cast<std::size_t>(r)][i];
      npos[r][0] = prompts[static_cast<std::size_t>(r)].size(0) + i;
    }
    at::Tensor lp = at::log_softmax(logits, -1);
    run.nll.select(1, i).copy_(-lp.gather(1, next).squeeze(1));
    logits = sd ? sd->step(next, npos).clone() : m.forward(next, npos, cache, fo);
  }
  if (layer_positions)
    for (std::int64_t l = 0; l < cache.num_layers(); ++l)
      layer_positions->push_back(cache.layer(l).positions().clone());
  run.bytes = cache.bytes();
  run.entries = cache.entries();
  run.layer0_len = cache.layer(0).length();
  return run;
}

}  // namespace

TEST_CASE("rpc: selection equals the official RPCCluster.compress_kv on the golden tensors") {
  h5::File f = golden();
  const h5::Group root = f.root();
  const std::int64_t prompt = root.attr_int("prompt_len"), r = root.attr_int("R");
  std::int64_t cases = 0;
  for (const std::string& name : root.children()) {
    if (name.rfind("case_", 0) != 0) continue;
    const h5::Group c = root.group(name);
    CAPTURE(name);
    const h5::Group in = root.group(c.attr_string("input"));
    at::Tensor keys = core::read_tensor(in, "keys");
    at::Tensor sel = core::read_tensor(c, "selectors");
    at::Tensor want = core::read_tensor(c, "kept");  // [B, Hkv, keep], into [prompt, L - R)
    const RpcOptions o = golden_options(root, c);
    at::Tensor got = RpcPolicy::select(keys, sel, prompt, r, c.attr_int("keep"), o);
    CHECK(got.size(1) == (o.aggregation == "all" ? 1 : keys.size(1)));
    CHECK(at::equal(got.expand_as(want), want));
    ++cases;
  }
  CHECK(cases == 16);
}

TEST_CASE("rpc: the decode schedule and selector buffer reproduce the official inputs") {
  // Drive the policy hooks over a LayerKV with the golden keys: prefill 5 tokens, then one decode
  // step per remaining key with the golden per-step queries. The first compression must happen
  // exactly when P + R tokens have been generated, with the official selectors (the current query
  // duplicated) when the quirk is on and the last R queries when it is off: both were run through
  // the official compress_kv by the golden script.
  h5::File f = golden();
  const h5::Group root = f.root();
  const std::int64_t prompt = root.attr_int("prompt_len"), r = root.attr_int("R");
  const std::int64_t p = root.attr_int("P");
  std::int64_t cases = 0;
  for (const std::string& name : root.children()) {
    if (name.rfind("case_", 0) != 0) continue;
    const h5::Group c = root.group(name);
    if (c.attr_int("num_comp") != 0) continue;
    CAPTURE(name);
    const h5::Group in = root.group(c.attr_string("input"));
    at::Tensor keys = core::read_tensor(in, "keys");      // [B, Hkv, L, D]
    at::Tensor qs = core::read_tensor(in, "queries");     // [B, H, L - prompt, D]
    at::Tensor want = core::read_tensor(c, "kept");
    const std::int64_t b = keys.size(0), hkv = keys.size(1), len = keys.size(2), d = keys.size(3);
    RpcPolicy pol(golden_options(root, c), 0);
    llm::LayerKV kv(b, hkv, d, at::TensorOptions().dtype(at::kFloat), {});
    llm::AttentionStep st;
    st.kv = &kv;
    st.phase = llm::Phase::prefill;
    at::Tensor ppos = test::arange_positions(b, prompt);
    kv.append(keys.narrow(2, 0, prompt), keys.narrow(2, 0, prompt), ppos);
    st.q = at::randn({b, qs.size(1), prompt, d});
    st.q_pos = ppos;
    pol.before_attention(st);
    pol.after_attention(st, at::Tensor());
    st.phase = llm::Phase::decode;
    for (std::int64_t i = prompt; i < len; ++i) {
      at::Tensor k = keys.narrow(2, i, 1);
      kv.append(k, k, test::arange_positions(b, 1, i));
      st.q = qs.narrow(2, i - prompt, 1);
      st.q_pos = test::arange_positions(b, 1, i);
      pol.before_attention(st);
      pol.after_attention(st, at::Tensor());
      if (i < len - 1) REQUIRE(kv.length() == i + 1);  // nothing compressed before P + R
    }
    CHECK(len - prompt == p + r);
    CHECK(pol.compressions() == 1);
    const std::int64_t keep = c.attr_int("keep");
    REQUIRE(kv.length() == prompt + keep + r);
    at::Tensor kept_pos = kv.positions().narrow(2, prompt, keep) - prompt;
    CHECK(at::equal(kept_pos, want));
    CHECK(at::equal(kv.positions().narrow(2, 0, prompt), ppos.unsqueeze(1).expand({b, hkv, prompt})));
    CHECK(at::equal(kv.positions().narrow(2, prompt + keep, r),
                    at::arange(len - r, len, at::kLong).expand({b, hkv, r})));
    ++cases;
  }
  CHECK(cases == 8);
}

TEST_CASE("rpc: invalid options are usage errors naming the flag") {
  RpcOptions o;
  o.window = 0;
  CHECK(test::error_of([&] { RpcPolicy(o, 0); }, 2).find("--rpc-window") != std::string::npos);
  o = RpcOptions{};
  o.aggregation = "none";
  CHECK(test::error_of([&] { RpcPolicy(o, 0); }, 2).find("--rpc-aggregation") !=
        std::string::npos);
  o = RpcOptions{};
  o.kernel_size = 4;
  CHECK(test::error_of([&] { RpcPolicy(o, 0); }, 2).find("--rpc-kernel-size") !=
        std::string::npos);
  o = RpcOptions{};
  o.ratio = 0.5;
  CHECK(test::error_of([&] { RpcPolicy(o, 0); }, 2).find("--rpc-ratio") != std::string::npos);
  o = RpcOptions{};
  o.keep_prompt = false;
  CHECK(test::error_of([&] { RpcPolicy(o, 0); }, 2).find("--rpc-keep-prompt") != std::string::npos);
  RpcPolicy ok(RpcOptions{}, 0);
  CHECK(ok.step_tokens() == 256);  // T = P / c = 1024 / 4
}

TEST_CASE("rpc: fixture model, batch 2 with left padding: memory shrinks, quality holds, rows "
          "equal single runs") {
  const llm::Model& m = test::fixture_model_f32();
  RpcOptions o;
  o.interval = 64;
  o.window = 8;
  o.ratio = 4;  // T = 16
  const std::int64_t gen = 200;
  std::vector<at::Tensor> prompts = {text_ids(0, 90), text_ids(5000, 60)};
  std::vector<at::Tensor> conts = {text_ids(90, gen), text_ids(5060, gen)};
  RpcPolicy rpc(o, 0);
  Run r2 = decode_run(m, &rpc, prompts, conts, gen);
  Run full = decode_run(m, nullptr, prompts, conts, gen);
  // The decode forwards append conts[0..gen-1]. Compressions when the cache holds P + R = 72
  // generated tokens, then every P more: at 72, 136 and 200 -> three per layer.
  CHECK(rpc.compressions() == 3 * m.num_layers());
  // Layer length: prompt slots (90, left padding included) + kept 3T + R = 90 + 48 + 8.
  CHECK(r2.layer0_len == 90 + 48 + 8);
  CHECK(full.layer0_len == 90 + gen);
  // Entries: rows hold 90 / 60 prompt tokens, each 48 + 8 generated ones, in every layer and head.
  CHECK(r2.entries == m.num_layers() * 2 * (90 + 60 + 2 * 56));
  CHECK(r2.bytes < full.bytes);
  const double nll_full = full.nll.mean().item<double>(), nll_rpc = r2.nll.mean().item<double>();
  MESSAGE("fixture NLL/byte over " << gen << " generated bytes: full " << nll_full << ", rpc "
                                   << nll_rpc << "; KV bytes full " << full.bytes << ", rpc "
                                   << r2.bytes);
  CHECK(std::isfinite(nll_rpc));
  CHECK(nll_rpc < nll_full + 0.5);
  // Identical before the first compression (steps 0..72: the trigger step attends uncompressed).
  CHECK(at::allclose(r2.nll.narrow(1, 0, 73), full.nll.narrow(1, 0, 73), 1e-4, 1e-4));
  // Batch 2 equals each row run alone (the schedule depends on generated tokens only).
  for (std::size_t row = 0; row < 2; ++row) {
    RpcPolicy one(o, 0);
    Run r1 = decode_run(m, &one, {prompts[row]}, {conts[row]}, gen);
    CHECK(at::allclose(r1.nll[0], r2.nll[static_cast<std::int64_t>(row)], 1e-4, 1e-4));
  }
  // A budget cap stops the growth: kept = min(k T, 20).
  RpcPolicy capped(o, 20);
  Run rc = decode_run(m, &capped, {prompts[0]}, {conts[0]}, gen);
  CHECK(rc.layer0_len == 90 + 20 + 8);
}

TEST_CASE("rpc: static decode steps (the CUDA-graph path) equal the per-step hooks") {
  // llm::StaticDecoder runs RPC's plain steps as full-attention static steps recording the last R
  // queries and compresses between them; on the CPU the same static step runs eagerly. Kept
  // positions in every layer, the NLL of every step and the cache must equal the hook path, for
  // both aggregations, the official query quirk on and off, a budget cap and left padding.
  const llm::Model& m = test::fixture_model_f32();
  const std::int64_t gen = 170;
  const std::vector<at::Tensor> prompts = {text_ids(100, 70), text_ids(7000, 45)};
  const std::vector<at::Tensor> conts = {text_ids(170, gen), text_ids(7045, gen)};
  struct Case {
    const char* aggregation;
    bool quirk;
    std::int64_t budget;
  };
  for (const Case& c : {Case{"all", false, 0}, Case{"all", true, 0}, Case{"group", false, 0},
                        Case{"group", true, 24}}) {
    CAPTURE(c.aggregation);
    CAPTURE(c.quirk);
    CAPTURE(c.budget);
    RpcOptions o;
    o.interval = 48;
    o.window = 8;
    o.ratio = 3;  // T = 16
    o.aggregation = c.aggregation;
    o.duplicate_current_query = c.quirk;
    RpcPolicy hooks(o, c.budget), graphs(o, c.budget);
    std::vector<at::Tensor> pos_hooks, pos_graphs;
    Run a = decode_run(m, &hooks, prompts, conts, gen, false, &pos_hooks);
    Run b = decode_run(m, &graphs, prompts, conts, gen, true, &pos_graphs);
    // Compressions at 56, 104 and 152 generated tokens, in every layer.
    CHECK(hooks.compressions() == 3 * m.num_layers());
    CHECK(graphs.compressions() == hooks.compressions());
    CHECK(b.layer0_len == a.layer0_len);
    CHECK(b.entries == a.entries);
    REQUIRE(pos_graphs.size() == pos_hooks.size());
    for (std::size_t l = 0; l < pos_hooks.size(); ++l) CHECK(at::equal(pos_graphs[l], pos_hooks[l]));
    CHECK(at::allclose(b.nll, a.nll, 1e-4, 1e-4));
  }
  // Full attention runs statically; a policy that needs its hooks every step is refused by name.
  const llm::KVCache cache = m.make_cache(1);
  CHECK(llm::StaticDecoder::unsupported_reason(m, cache, nullptr, false).empty());
  compress::FastKVPolicy fastkv(compress::FastKVOptions{}, 0);
  CHECK(llm::StaticDecoder::unsupported_reason(m, cache, &fastkv, false).find("'fastkv'") !=
        std::string::npos);
}
