// Quest and RetroAttention: the exact identities of docs/kv-methods-quest-retro.md (page-score
// bound, log-sum-exp merge = dense attention over the union, retro w=1 = quest bit for bit, an
// all-pages budget = full attention), what quest reads versus stores, and retro's effective KV
// exposure against quest's on a decode run of the trained fixture model.
#include <doctest/doctest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <map>

#include "../llm/tiny_model.hpp"
#include "../test_util.hpp"
#include "fixture.hpp"
#include "kvlab/compress/quest.hpp"
#include "kvlab/compress/retro.hpp"
#include "kvlab/llm/attention.hpp"
#include "kvlab/llm/data.hpp"
#include "kvlab/llm/import_export.hpp"

using namespace kvlab;
using compress::QuestOptions;
using compress::QuestPolicy;
using compress::RetroOptions;
using compress::RetroPolicy;

namespace {

// Prefill ids[:, :prefill] densely, then decode the rest one token at a time (teacher forced, so
// every policy sees the same inputs). Returns the float32 logits of every decode step [N, V].
at::Tensor decode_run(const llm::Model& m, llm::CachePolicy* policy, const llm::KVCacheOptions& co,
                      const at::Tensor& ids, std::int64_t prefill, llm::KVCache* keep = nullptr) {
  llm::KVCache cache = m.make_cache(1, co);
  llm::ForwardOptions fo;
  fo.policy = policy;
  fo.logits = llm::LogitsMode::last;
  std::vector<at::Tensor> out;
  m.forward(ids.narrow(1, 0, prefill), test::arange_positions(1, prefill), cache, fo);
  for (std::int64_t i = prefill; i < ids.size(1); ++i)
    out.push_back(m.forward(ids.narrow(1, i, 1), test::arange_positions(1, 1, i), cache, fo));
  if (keep) *keep = std::move(cache);
  return at::cat(out, 0);
}

QuestOptions tiny_quest() {
  QuestOptions o;
  o.page_size = 4;
  o.dense_layers = 1;  // the tiny model has 3 layers: 2 sparse
  o.min_pages = 1;
  return o;
}

at::Tensor tiny_ids(std::int64_t n, std::uint64_t seed) {
  at::manual_seed(seed);
  return at::randint(2, 64, {1, n}, at::kLong);
}

}  // namespace

TEST_CASE("quest: the page score upper-bounds q.k of every key in its page, tight for one key") {
  at::manual_seed(3);
  const std::int64_t b = 2, hk = 2, g = 3, d = 16, len = 37;
  for (std::int64_t page : {1, 5, 16}) {
    llm::KVCacheOptions co;
    co.page_size = page;
    llm::LayerKV kv(b, hk, d, at::TensorOptions().dtype(at::kFloat), co);
    at::Tensor pos = test::arange_positions(b, len).clone();
    pos[1].narrow(0, 0, 7).fill_(-1);  // row 1: 7 empty (left-padding) slots
    kv.append(at::randn({b, hk, len, d}), at::randn({b, hk, len, d}), pos);
    at::Tensor q = at::randn({b, hk * g, d});
    at::Tensor s = compress::quest_page_scores(q, kv.page_min(), kv.page_max());
    REQUIRE(s.sizes() == at::IntArrayRef({b, hk * g, kv.page_count()}));
    // Every q.k (head h uses KV head h / g), by page.
    at::Tensor k = kv.keys().repeat_interleave(g, 1);                      // [B, H, L, D]
    at::Tensor qk = at::matmul(k, q.unsqueeze(-1)).squeeze(-1);            // [B, H, L]
    qk = qk.masked_fill(kv.positions().repeat_interleave(g, 1).lt(0),
                        -std::numeric_limits<float>::infinity());
    const std::int64_t padded = kv.page_count() * page;
    qk = at::constant_pad_nd(qk, {0, padded - len}, -std::numeric_limits<double>::infinity());
    at::Tensor best = std::get<0>(qk.view({b, hk * g, kv.page_count(), page}).max(-1));
    at::Tensor finite = at::isfinite(best);
    // Bound: score >= max q.k (up to float rounding of two different summation orders).
    CHECK((s - best).masked_select(finite).min().item<float>() >= -1e-4F);
    // Pages with no entry score -inf.
    CHECK(s.masked_select(finite.logical_not()).eq(-std::numeric_limits<float>::infinity()).all().item<bool>());
    if (page == 1)  // one key per page: the bound is exact
      CHECK((s - best).masked_select(finite).abs().max().item<float>() < 1e-4F);
    else  // and not trivially loose or tight: some pages are strictly above
      CHECK((s - best).masked_select(finite).max().item<float>() > 1e-2F);
  }
  CHECK(compress::quest_page_count(256, 16, 3, 100) == 16);
  CHECK(compress::quest_page_count(16, 16, 3, 100) == 3);  // Quest's max(3, budget // page)
  CHECK(compress::quest_page_count(4096, 16, 3, 10) == 10);
}

TEST_CASE("retro: the log-sum-exp merge of disjoint key sets is dense attention over the union") {
  at::manual_seed(11);
  const std::int64_t b = 2, h = 4, t = 3, sn = 29, d = 8;
  at::Tensor q = at::randn({b, h, t, d}), k = at::randn({b, h, sn, d}), v = at::randn({b, h, sn, d});
  const double scale = 1.0 / std::sqrt(8.0);
  at::Tensor in_a = at::rand({b, h, t, sn}).lt(0.4);
  at::Tensor in_b = at::rand({b, h, t, sn}).lt(0.5).logical_and(in_a.logical_not());
  in_b[0][1][2].fill_(false);  // one query whose second set is empty
  in_a[1][3][0].fill_(false);  // and one whose first set is empty
  at::Tensor uni = in_a.logical_or(in_b);
  auto a = compress::attention_with_lse(q, k, v, in_a, scale);
  auto bb = compress::attention_with_lse(q, k, v, in_b, scale);
  auto m = RetroPolicy::lse_merge(a.out, a.lse, bb.out, bb.lse);
  // Reference in float64: softmax over the union with a mask.
  at::Tensor sc = at::matmul(q.to(at::kDouble), k.to(at::kDouble).transpose(-1, -2)) * scale;
  sc = sc.masked_fill(uni.logical_not(), -std::numeric_limits<double>::infinity());
  at::Tensor ref = at::matmul(at::softmax(sc, -1), v.to(at::kDouble));
  at::Tensor ref_lse = at::logsumexp(sc, -1);
  CHECK(at::allclose(m.out.to(at::kDouble), ref, 1e-5, 1e-6));
  CHECK(at::allclose(m.lse.to(at::kDouble), ref_lse, 1e-5, 1e-6));
  // The same against the runtime's dense attention when the union is every key.
  at::Tensor all_b = in_a.logical_not();
  auto c = compress::attention_with_lse(q, k, v, all_b, scale);
  auto full = RetroPolicy::lse_merge(a.out, a.lse, c.out, c.lse);
  llm::AttentionOptions ao;
  ao.force_manual = true;
  at::Tensor kp = at::zeros({b, h, sn}, at::kLong);
  at::Tensor qp = at::full({b, t}, 100, at::kLong);
  at::Tensor dense = llm::attention(q, k, v, kp, qp, ao);
  CHECK(at::allclose(full.out, dense, 1e-5, 1e-6));
  // Merging an empty set changes nothing, bit for bit.
  auto none = compress::attention_with_lse(q, k, v, at::zeros_like(in_a), scale);
  auto same = RetroPolicy::lse_merge(a.out, a.lse, none.out, none.lse);
  CHECK(at::equal(same.out, a.out));
  CHECK(at::equal(same.lse, a.lse));
}

TEST_CASE("quest/retro: retro with w=1 equals quest bit for bit; both read less than they store") {
  const llm::Model m = test::tiny_llm();
  const at::Tensor ids = tiny_ids(56, 5);
  QuestPolicy quest(tiny_quest(), /*budget_tokens=*/8);
  RetroOptions ro;
  ro.quest = tiny_quest();
  ro.window = 1;
  RetroPolicy retro1(ro, /*budget_tokens=*/8);
  llm::KVCache cache;
  at::Tensor lq = decode_run(m, &quest, quest.cache_options(), ids, 24, &cache);
  at::Tensor lr = decode_run(m, &retro1, retro1.cache_options(), ids, 24);
  CHECK(at::equal(lq, lr));
  at::Tensor lf = decode_run(m, nullptr, {}, ids, 24);
  // The sparse path is really taken: 8 of up to 56 tokens change the logits.
  CHECK((lq - lf).abs().max().item<float>() > 1e-3F);
  // Nothing evicted: every layer still holds all 56 tokens per KV head.
  CHECK(cache.entries() == 3 * 2 * 56);
  const auto& st = quest.stats();
  CHECK(st.decode_steps == 32);
  CHECK(st.sparse_queries == 32 * 2 * 4);       // steps x sparse layers x query heads
  CHECK(st.entries_read <= st.sparse_queries * 8.0);  // 2 pages of 4
  CHECK(st.read_fraction() < 0.5);
  CHECK(st.exposure == st.entries_read);
  CHECK(st.supplementary_entries == 0);
  CHECK(retro1.stats().exposure == st.exposure);
}

TEST_CASE("quest/retro: a budget covering every page reproduces full attention") {
  const llm::Model m = test::tiny_llm();
  const at::Tensor ids = tiny_ids(50, 9);
  const at::Tensor lf = decode_run(m, nullptr, {}, ids, 20);
  for (auto gqa : {compress::QuestGqa::per_head, compress::QuestGqa::kv_head_max}) {
    QuestOptions qo = tiny_quest();
    qo.gqa = gqa;
    QuestPolicy quest(qo, /*budget_tokens=*/64);
    CHECK(at::allclose(decode_run(m, &quest, quest.cache_options(), ids, 20), lf, 1e-5, 1e-5));
    CHECK(quest.stats().read_fraction() == doctest::Approx(1.0));
  }
  for (std::int64_t w : {2, 4}) {
    RetroOptions ro;
    ro.quest = tiny_quest();
    ro.window = w;
    RetroPolicy retro(ro, /*budget_tokens=*/64);
    CHECK(at::allclose(decode_run(m, &retro, retro.cache_options(), ids, 20), lf, 1e-5, 1e-5));
    // Every page is loaded at every step: a past query has nothing unseen.
    CHECK(retro.stats().supplementary_entries == 0);
    CHECK(retro.stats().exposure_ratio() == doctest::Approx(1.0));
  }
}

TEST_CASE("retro: w=2 revises past outputs and their later-layer K/V on a tiny model") {
  const llm::Model m = test::tiny_llm();
  const at::Tensor ids = tiny_ids(56, 5);
  QuestPolicy quest(tiny_quest(), 8);
  llm::KVCache cq, cr, cn;
  const at::Tensor lq = decode_run(m, &quest, quest.cache_options(), ids, 24, &cq);
  RetroOptions ro;
  ro.quest = tiny_quest();
  RetroPolicy retro(ro, 8);
  const at::Tensor lr = decode_run(m, &retro, retro.cache_options(), ids, 24, &cr);
  CHECK((lr - lq).abs().max().item<float>() > 1e-4F);
  CHECK(retro.stats().supplementary_entries > 0);
  CHECK(retro.stats().exposure_ratio() > 1.0);
  // Layers 0 and 1 keep every K/V as quest wrote it (layer 1's input never changes: layer 0 is
  // dense); layer 2's K/V of decoded tokens were re-embedded from the corrected layer-1 outputs,
  // its prompt K/V were not.
  CHECK(at::equal(cr.layer(0).keys(), cq.layer(0).keys()));
  CHECK(at::equal(cr.layer(1).keys(), cq.layer(1).keys()));
  CHECK(at::equal(cr.layer(2).keys().narrow(2, 0, 24), cq.layer(2).keys().narrow(2, 0, 24)));
  CHECK((cr.layer(2).keys().narrow(2, 24, 32) - cq.layer(2).keys().narrow(2, 24, 32))
            .abs().max().item<float>() > 1e-4F);
  CHECK((cr.layer(2).values().narrow(2, 24, 32) - cq.layer(2).values().narrow(2, 24, 32))
            .abs().max().item<float>() > 1e-4F);
  RetroOptions nokv = ro;
  nokv.update_kv = false;
  RetroPolicy retro_nokv(nokv, 8);
  const at::Tensor ln = decode_run(m, &retro_nokv, retro_nokv.cache_options(), ids, 24, &cn);
  // Without the K/V update the revised outputs never reach the logits: quest's logits exactly.
  CHECK(at::equal(ln, lq));
  CHECK(retro_nokv.stats().supplementary_entries > 0);
}

namespace {

// Wraps a RetroPolicy and records, per (decode step, sparse layer), the pages Quest selected and
// the query, so a test can rebuild what each past query has seen.
struct Recorder : llm::CachePolicy {
  explicit Recorder(RetroPolicy& r) : retro(r) {}
  std::string name() const override { return "recorder"; }
  std::optional<at::Tensor> attend(llm::AttentionStep& s) override {
    if (s.phase == llm::Phase::decode) {
      if (s.layer == 0) ++step;
      if (!retro.is_dense_layer(s.layer)) {
        pages[{step, s.layer}] = retro.select(s).pages;
        queries[{step, s.layer}] = s.q.clone();
        qpos[step] = s.q_pos.clone();
      }
    } else if (s.layer == 0) {
      step = -1;
    }
    return retro.attend(s);
  }
  void after_attention(llm::AttentionStep& s, const at::Tensor& out) override {
    retro.after_attention(s, out);
  }
  void after_forward(llm::KVCache& c, llm::Phase p) override { retro.after_forward(c, p); }
  RetroPolicy& retro;
  std::int64_t step = -1;
  std::map<std::pair<std::int64_t, std::int64_t>, at::Tensor> pages, queries;
  std::map<std::int64_t, at::Tensor> qpos;
};

}  // namespace

TEST_CASE("retro: a past output becomes attention over the union of the pages loaded in its window") {
  // Without the K/V update nothing a past query sees changes, so after w-1 later steps its cached
  // output must equal its attention over (its pages U the pages of every later step), causally
  // limited: the last-loaded records and the merge together, checked against a masked dense
  // attention built from the recorded selections.
  const llm::Model m = test::tiny_llm();
  const at::Tensor ids = tiny_ids(60, 21);
  RetroOptions ro;
  ro.quest = tiny_quest();
  ro.window = 4;
  ro.update_kv = false;
  ro.past_query = compress::RetroPastQuery::original;
  RetroPolicy retro(ro, 8);
  Recorder rec(retro);
  llm::KVCache cache;
  decode_run(m, &rec, retro.cache_options(), ids, 30, &cache);
  const std::int64_t last = rec.step, page = 4, g = 2;
  REQUIRE(last == 29);
  int merged = 0;
  for (std::int64_t s = last - 2; s <= last; ++s) {  // the window after the run: 3 past steps
    for (std::int64_t l = 1; l < 3; ++l) {
      auto got = retro.cached_output(s, l);
      REQUIRE(got.has_value());
      const llm::LayerKV& kv = cache.layer(l);
      at::Tensor seen = at::zeros({1, 4, kv.page_count()}, at::kBool);
      for (std::int64_t u = s; u <= last; ++u)
        seen.scatter_(2, rec.pages.at({u, l}), true);
      at::Tensor slot_seen = seen.repeat_interleave(page, 2).narrow(2, 0, kv.length());  // [1, H, L]
      at::Tensor kpos = kv.positions().repeat_interleave(g, 1);                          // [1, H, L]
      at::Tensor vis = slot_seen.logical_and(kpos.ge(0))
                           .logical_and(kpos.le(rec.qpos.at(s).view({1, 1, 1})))
                           .unsqueeze(2);  // [1, H, 1, L]
      auto want = compress::attention_with_lse(rec.queries.at({s, l}), kv.keys().repeat_interleave(g, 1),
                                               kv.values().repeat_interleave(g, 1), vis,
                                               1.0 / std::sqrt(8.0));
      CHECK(at::allclose(got->out, want.out.select(2, 0), 1e-5, 1e-6));
      CHECK(at::allclose(got->lse, want.lse.select(2, 0), 1e-5, 1e-6));
      // And it did gain entries over its own selection (otherwise this checks nothing new).
      at::Tensor own = at::zeros_like(seen).scatter_(2, rec.pages.at({s, l}), true);
      if (s < last && seen.sum().item<std::int64_t>() > own.sum().item<std::int64_t>()) ++merged;
    }
  }
  CHECK(merged > 0);
  CHECK_FALSE(retro.cached_output(last - 3, 1).has_value());  // left the window
}

TEST_CASE("quest/retro: a batch with left padding decodes; all pages reproduce batched full") {
  const llm::Model m = test::tiny_llm();
  const std::int64_t b = 2, n = 40, prefill = 18, pad = 5;
  const at::Tensor ids = at::cat({tiny_ids(n, 31), tiny_ids(n, 32)}, 0);
  at::Tensor pos = test::arange_positions(b, n).clone();
  pos[1] -= pad;  // row 1: its first 5 tokens are left padding
  pos.clamp_min_(-1);
  auto run = [&](llm::CachePolicy* p, const llm::KVCacheOptions& co) {
    llm::KVCache cache = m.make_cache(b, co);
    llm::ForwardOptions fo;
    fo.policy = p;
    fo.logits = llm::LogitsMode::last;
    std::vector<at::Tensor> out;
    m.forward(ids.narrow(1, 0, prefill), pos.narrow(1, 0, prefill), cache, fo);
    for (std::int64_t i = prefill; i < n; ++i)
      out.push_back(m.forward(ids.narrow(1, i, 1), pos.narrow(1, i, 1), cache, fo));
    return at::stack(out, 1);  // [B, N, V]
  };
  const at::Tensor lf = run(nullptr, {});
  QuestPolicy all(tiny_quest(), 64);
  CHECK(at::allclose(run(&all, all.cache_options()), lf, 1e-5, 1e-5));
  RetroOptions ro;
  ro.quest = tiny_quest();
  RetroPolicy retro_all(ro, 64);
  CHECK(at::allclose(run(&retro_all, retro_all.cache_options()), lf, 1e-5, 1e-5));
  RetroPolicy retro(ro, 8);
  const at::Tensor lr = run(&retro, retro.cache_options());
  CHECK(at::isfinite(lr).all().item<bool>());
  CHECK(retro.stats().supplementary_entries > 0);
  CHECK(retro.stats().sparse_queries == (n - prefill) * b * 2 * 4);
}

TEST_CASE("quest/retro: bad options and a cache without page metadata are usage errors") {
  QuestOptions bad;
  bad.page_size = 0;
  CHECK(test::error_of([&] { QuestPolicy p(bad, 64); }, 2).find("--quest-page-size") != std::string::npos);
  CHECK(test::error_of([&] { QuestPolicy p(QuestOptions{}, 0); }, 2).find("budget") != std::string::npos);
  RetroOptions ro;
  ro.window = 0;
  CHECK(test::error_of([&] { RetroPolicy p(ro, 64); }, 2).find("--retro-window") != std::string::npos);
  ro.window = 2;
  ro.merge_weight = 0;
  CHECK(test::error_of([&] { RetroPolicy p(ro, 64); }, 2).find("--retro-merge-weight") != std::string::npos);
  // Retro without a budget falls back to the paper's 0.15 x context, at least 256.
  RetroPolicy rel(RetroOptions{}, 0);
  CHECK(rel.budget_for(1000) == 256);
  CHECK(rel.budget_for(10000) == 1500);
  const llm::Model m = test::tiny_llm();
  QuestPolicy quest(tiny_quest(), 8);
  const std::string msg = test::error_of(
      [&] { decode_run(m, &quest, /*no page metadata*/ {}, tiny_ids(20, 1), 10); }, 2);
  CHECK(msg.find("cache_options") != std::string::npos);
}

TEST_CASE("retro: effective KV exposure exceeds quest's on a fixture-model decode run") {
  const llm::Model& m = test::fixture_model_f32();
  const std::string text = test::read_file(test::source_path("data/kjv-byte-llama/heldout.txt"));
  REQUIRE(text.size() > 800);
  const at::Tensor ids = at::tensor(llm::bytes_to_ids(text.substr(0, 640)), at::kLong).unsqueeze(0);
  const std::int64_t prefill = 576, budget = 64;  // 64 of 576-640 tokens: 10-11 %
  QuestPolicy quest(QuestOptions{}, budget);
  RetroPolicy retro(RetroOptions{}, budget);
  const at::Tensor lq = decode_run(m, &quest, quest.cache_options(), ids, prefill);
  const at::Tensor lr = decode_run(m, &retro, retro.cache_options(), ids, prefill);
  const at::Tensor lf = decode_run(m, nullptr, {}, ids, prefill);
  const auto& sq = quest.stats();
  const auto& sr = retro.stats();
  CHECK(sq.sparse_queries == sr.sparse_queries);
  CHECK(sr.exposure > sq.exposure);
  CHECK(sr.exposure_ratio() > 1.0);
  CHECK(sq.exposure_ratio() == doctest::Approx(1.0));
  // Negative log-likelihood of the 64 continuation bytes under each method, for the record.
  auto nll = [&](const at::Tensor& lg) {
    at::Tensor tgt = ids.narrow(1, prefill + 1, ids.size(1) - prefill - 1).squeeze(0);
    at::Tensor lp = at::log_softmax(lg.narrow(0, 0, tgt.size(0)), -1);
    return -lp.gather(1, tgt.unsqueeze(1)).mean().item<double>();
  };
  MESSAGE("fixture, budget 64 of ~600: exposure quest ", sq.exposure_per_query(), " retro ",
          sr.exposure_per_query(), " per query (ratio ", sr.exposure_ratio(), "); read fraction ",
          sq.read_fraction(), "; nll full ", nll(lf), " quest ", nll(lq), " retro ", nll(lr));
}
