// prune-blocks: calibration windows (Python-random parity), the remove-count rules, the cached
// search against the plain recomputing search on the trained fixture model, the golden removal
// order of SLEB's official code (tests/data/sleb), the one-shot metrics and the pruned artifact.
#include <doctest/doctest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "../llm/tiny_model.hpp"
#include "../test_util.hpp"
#include "fixture.hpp"
#include "kvlab/compress/prune.hpp"
#include "kvlab/core/h5.hpp"
#include "kvlab/llm/data.hpp"
#include "kvlab/llm/import_export.hpp"

using namespace kvlab;
using compress::PruneMetric;
using compress::PruneOptions;

namespace {

// Byte ids of the committed KJV calibration text (Genesis; not in the held-out split).
at::Tensor calib_ids() {
  const std::string text = test::read_file(test::source_path("tests/data/sleb/calib.txt"));
  REQUIRE(text.size() > 4096);
  return at::tensor(llm::bytes_to_ids(text), at::kLong);
}

/// `n` calibration windows of `len` bytes from the SLEB calibration text.
at::Tensor calib_windows(std::int64_t n, std::int64_t len) {
  compress::CalibOptions co;
  co.windows = n;
  co.len = len;
  return compress::make_calibration_windows(calib_ids(), co, "calib.txt");
}

}  // namespace

TEST_CASE("prune: window starts reproduce Python's random.seed + randint") {
  // python3 -c "import random; random.seed(0); print([random.randint(0, 1000) for _ in range(5)])"
  CHECK(compress::python_randint(0, 0, 1000, 5) == std::vector<std::int64_t>{864, 394, 776, 911, 430});
  CHECK(compress::python_randint(1234, 0, 214970, 5) ==
        std::vector<std::int64_t>{203991, 115535, 30631, 1963, 23761});
  CHECK(compress::python_randint(0, 0, std::int64_t(1) << 33, 3) ==
        std::vector<std::int64_t>{7921731533, 1806341205, 6490875490});
}

TEST_CASE("prune: calibration windows and their errors") {
  at::Tensor ids = at::arange(100, at::kLong);
  compress::CalibOptions o;
  o.len = 30;
  o.windows = 5;
  o.sampling = compress::CalibSampling::contiguous;
  at::Tensor w = compress::make_calibration_windows(ids, o, "x.txt");
  CHECK(w.sizes() == at::IntArrayRef({3, 30}));  // floor(100 / 30), capped by nothing
  CHECK(w[2][0].item<std::int64_t>() == 60);
  o.sampling = compress::CalibSampling::random;
  o.seed = 0;
  w = compress::make_calibration_windows(ids, o, "x.txt");
  CHECK(w.sizes() == at::IntArrayRef({5, 30}));
  const auto starts = compress::python_randint(0, 0, 100 - 30 - 1, 5);
  for (int i = 0; i < 5; ++i) CHECK(w[i][0].item<std::int64_t>() == starts[i]);
  o.len = 200;
  const std::string msg = test::error_of([&] { compress::make_calibration_windows(ids, o, "x.txt"); }, 2);
  CHECK(msg.find("x.txt") != std::string::npos);
  CHECK(msg.find("100 tokens") != std::string::npos);
  CHECK(msg.find("--calib-len") != std::string::npos);
}

TEST_CASE("prune: remove counts, ratios (ceil, as SLEB's latency.py) and protection") {
  PruneOptions o;
  o.remove_ratio = 0.1;
  CHECK(compress::resolve_remove_count(8, o) == 1);
  o.remove_ratio = 0.2;
  CHECK(compress::resolve_remove_count(8, o) == 2);
  CHECK(compress::resolve_remove_count(10, o) == 2);
  CHECK(compress::resolve_remove_count(32, o) == 7);
  o.remove_ratio = 0.3;
  CHECK(compress::resolve_remove_count(8, o) == 3);
  o.remove_ratio = 0;
  o.remove = 7;
  std::string msg = test::error_of([&] { compress::resolve_remove_count(8, o); }, 2);
  CHECK(msg.find("at most 6") != std::string::npos);
  o.remove = 9;
  msg = test::error_of([&] { compress::resolve_remove_count(8, o); }, 2);
  CHECK(msg.find("only 8") != std::string::npos);
  o.remove = 0;
  test::error_of([&] { compress::resolve_remove_count(8, o); }, 2);
}

TEST_CASE("prune: the cached search picks exactly what the plain recomputing search picks") {
  const llm::Model& model = test::fixture_model_f32();
  const at::Tensor windows = calib_windows(3, 256);
  core::NullProgress np;
  for (PruneMetric metric : {PruneMetric::sleb, PruneMetric::ppl_oneshot}) {
    PruneOptions o;
    o.metric = metric;
    o.remove = 3;
    o.batch_windows = 2;
    o.search = compress::SearchMode::plain;
    const auto plain = compress::select_blocks(model, windows, o, np);
    o.search = compress::SearchMode::cached;
    const auto cached = compress::select_blocks(model, windows, o, np);
    CAPTURE(compress::prune_metric_name(metric));
    CHECK(cached.removed == plain.removed);
    REQUIRE(cached.scores.size() == plain.scores.size());
    for (std::size_t r = 0; r < plain.scores.size(); ++r)
      for (std::size_t i = 0; i < plain.scores[r].size(); ++i) {
        if (std::isnan(plain.scores[r][i])) {
          CHECK(std::isnan(cached.scores[r][i]));
        } else {
          CHECK(cached.scores[r][i] == doctest::Approx(plain.scores[r][i]).epsilon(1e-5));
        }
      }
    // The plain search counts what it ran; the cached one reports the same figure for it.
    CHECK(plain.block_forwards == plain.plain_block_forwards);
    CHECK(cached.plain_block_forwards == plain.block_forwards);
    if (metric == PruneMetric::sleb) {
      // 8 blocks, 3 rounds of 6, 5, 4 candidates: plain 6*7 + 5*6 + 4*5 = 92; cached: one full
      // pass (8) + sum over candidates j of the blocks after j (21 + 15 + 10) = 54.
      CHECK(plain.block_forwards == 92);
      CHECK(cached.block_forwards == 54);
      CHECK(cached.scores.size() == 3);
    }
    CHECK(cached.kept.size() == 5);
  }
}

namespace {

// Block calls the batched search's sweeps make: per round of m alive blocks, per window batch,
// one call per block k > g0 of each candidate group [g0, g0 + group) (candidates lo..m-2 with
// the default protection).
std::int64_t sweep_calls(std::int64_t n, std::int64_t rounds, std::int64_t group,
                         std::int64_t window_batches) {
  std::int64_t calls = 0;
  for (std::int64_t i = 0; i < rounds; ++i) {
    const std::int64_t m = n - i, lo = 1, hi = m - 1;
    const std::int64_t g = group > 0 ? group : hi - lo;
    for (std::int64_t g0 = lo; g0 < hi; g0 += g) calls += m - 1 - g0;
  }
  return calls * window_batches;
}

}  // namespace

TEST_CASE("prune: the batched search picks exactly what the plain search picks, any group size") {
  const llm::Model& model = test::fixture_model_f32();
  const at::Tensor windows = calib_windows(3, 256);
  core::NullProgress np;
  for (PruneMetric metric : {PruneMetric::sleb, PruneMetric::ppl_oneshot}) {
    PruneOptions o;
    o.metric = metric;
    o.remove = 3;
    o.batch_windows = 2;  // window batches of 2 and 1
    o.search = compress::SearchMode::plain;
    const auto plain = compress::select_blocks(model, windows, o, np);
    o.search = compress::SearchMode::cached;
    const auto cached = compress::select_blocks(model, windows, o, np);
    const std::int64_t rounds = metric == PruneMetric::sleb ? 3 : 1;
    // Candidates per round: 6, 5, 4. Group 1; 2 (does not divide 5); 4 (divides none);
    // 6 (one group); 0 (from the memory budget: all of them on the CPU for this model).
    for (std::int64_t group : {1, 2, 4, 6, 0}) {
      o.search = compress::SearchMode::batched;
      o.batch_candidates = group;
      const auto b = compress::select_blocks(model, windows, o, np);
      CAPTURE(compress::prune_metric_name(metric));
      CAPTURE(group);
      CHECK(b.removed == plain.removed);
      CHECK(b.removed == cached.removed);
      REQUIRE(b.scores.size() == cached.scores.size());
      for (std::size_t r = 0; r < cached.scores.size(); ++r)
        for (std::size_t i = 0; i < cached.scores[r].size(); ++i) {
          if (std::isnan(cached.scores[r][i])) {
            CHECK(std::isnan(b.scores[r][i]));
          } else if (group == 1) {
            // Groups of one candidate run the cached search's computations: bit for bit.
            CHECK(b.scores[r][i] == cached.scores[r][i]);
          } else {
            // float32 on the CPU: a larger batch changes the last bits of some block outputs
            // (up to ~1e-7 of a summed loss here), far below the 1e-4 tie tolerance.
            CHECK(b.scores[r][i] == doctest::Approx(cached.scores[r][i]).epsilon(1e-6));
            CHECK(b.scores[r][i] == doctest::Approx(plain.scores[r][i]).epsilon(1e-5));
          }
        }
      // The winners were re-scored alone: their scores are the cached search's, exactly.
      if (metric == PruneMetric::sleb)
        for (std::size_t r = 0; r < b.removed.size(); ++r)
          CHECK(b.scores[r][static_cast<std::size_t>(b.removed[r])] ==
                cached.scores[r][static_cast<std::size_t>(cached.removed[r])]);
      CHECK(b.plain_block_forwards == plain.block_forwards);
      CHECK(b.candidate_group == (group > 0 ? group : 6));
      CHECK(b.rescored >= rounds);  // at least the winner of every round
      CHECK(b.fallback_rounds == 0);
      CHECK(b.max_batch_deviation < 1e-6);
      if (group == 1) CHECK(b.max_batch_deviation == 0.0);
      // Block forwards: the cached count plus those of the candidates re-scored alone (at
      // least the winner of every round, which has >= 1 block after it).
      CHECK(b.block_forwards >= cached.block_forwards + rounds);
      // Block calls: the dense pass (8 blocks x 2 window batches), the sweeps' group calls, and
      // 2 calls per block forward of the re-scoring.
      CHECK(b.block_calls == 16 + sweep_calls(8, rounds, group, 2) +
                                 2 * (b.block_forwards - cached.block_forwards));
      CHECK(cached.block_calls == 2 * cached.block_forwards);
      if (group == 1) CHECK(b.block_calls == 2 * b.block_forwards);
      // (ppl-oneshot re-scores its K = 3 best alone, which on 8 blocks costs what the one
      // batched round saved: no fewer calls there.)
      if (group != 1 && metric == PruneMetric::sleb) CHECK(b.block_calls < cached.block_calls);
      // 16 dense + 30 sweep + the re-scoring's vs 108 (SLEB, 3 of 8 blocks, one group).
      if (group == 0 && metric == PruneMetric::sleb) CHECK(3 * b.block_calls < 2 * cached.block_calls);
    }
    // Every candidate a near-tie (tolerance 1): each is re-scored alone, same picks.
    o.batch_candidates = 4;
    o.tie_tolerance = 1.0;
    const auto all = compress::select_blocks(model, windows, o, np);
    CHECK(all.removed == plain.removed);
    CHECK(all.rescored == (metric == PruneMetric::sleb ? 6 + 5 + 4 : 6));
    // ... which costs what the cached search ran once more, less the dense pass (8).
    CHECK(all.block_forwards == 2 * cached.block_forwards - 8);
    // Tolerance 0: any deviation seen on a re-scored winner makes its round fall back to
    // scoring every candidate alone; the picks stay the same.
    o.batch_candidates = 6;
    o.tie_tolerance = 0;
    const auto strict = compress::select_blocks(model, windows, o, np);
    CHECK(strict.removed == plain.removed);
    CHECK(strict.rescored >= (metric == PruneMetric::sleb ? 3 : 1));
    CHECK((strict.max_batch_deviation > 0) == (strict.fallback_rounds > 0));
    if (strict.fallback_rounds == rounds)
      CHECK(strict.rescored == (metric == PruneMetric::sleb ? 6 + 5 + 4 : 6));
    o.tie_tolerance = 1e-4;
  }
}

TEST_CASE("prune: batched group size from the memory budget, and option errors") {
  const llm::Model& model = test::fixture_model_f32();
  const at::Tensor windows = calib_windows(2, 128);
  core::NullProgress np;
  PruneOptions o;
  o.remove = 1;
  o.search = compress::SearchMode::batched;
  o.batch_memory_mb = 1;  // below one sequence of this model: groups of 1
  auto r = compress::select_blocks(model, windows, o, np);
  CHECK(r.candidate_group == 1);
  o.batch_memory_mb = 4096;  // room for all 6 candidates
  r = compress::select_blocks(model, windows, o, np);
  CHECK(r.candidate_group == 6);
  o.batch_candidates = -1;
  CHECK(test::error_of([&] { compress::select_blocks(model, windows, o, np); }, 2).find("--batch-candidates") != std::string::npos);
  o.batch_candidates = 0;
  o.tie_tolerance = -1;
  CHECK(test::error_of([&] { compress::select_blocks(model, windows, o, np); }, 2).find("--tie-tolerance") != std::string::npos);
}

TEST_CASE("prune: block forwards of the cached search at Llama-2-7B scale (32 blocks, 7 removed)") {
  // A random 32-block model of tiny width: the counts do not depend on the weights.
  llm::ModelConfig c = test::tiny_llm_config();
  c.num_hidden_layers = 32;
  const llm::Model m = llm::Model::from_file(test::tiny_llm_file(c));
  const at::Tensor windows = at::randint(0, c.vocab_size, {1, 8}, at::kLong);
  PruneOptions o;
  o.remove = 7;
  o.search = compress::SearchMode::cached;
  core::NullProgress np;
  const auto r = compress::select_blocks(m, windows, o, np);
  CHECK(r.plain_block_forwards == 5320);  // sum_{i<7} (30 - i)(31 - i), the reference's cost
  CHECK(r.block_forwards == 2692);        // 32 + sum_{i<7} (30 - i)(31 - i) / 2
  CHECK(static_cast<double>(r.plain_block_forwards) / r.block_forwards >= 1.9);
  CHECK(r.removed.size() == 7);
  CHECK(r.block_calls == 2692);  // one window batch: one call per block forward
  // Batched, all candidates of a round in one group: the same picks in 32 dense + sum of
  // (m - 2) = 32 + 30 + ... + 24 sweep calls, plus the re-scored candidates' calls.
  o.search = compress::SearchMode::batched;
  const auto b = compress::select_blocks(m, windows, o, np);
  CHECK(b.removed == r.removed);
  CHECK(b.block_calls == 32 + 189 + (b.block_forwards - r.block_forwards));
  CHECK(b.block_calls < 400);
}

TEST_CASE("prune: kvlab removes the blocks SLEB's official code removes, in its order") {
  // tests/data/sleb/golden.json: scripts/make-golden-sleb.py ran the official sleb() loop
  // (leapingjagg-dev/SLEB) on the fixture converted to float32, with these windows.
  const auto golden = nlohmann::json::parse(test::read_file(test::source_path("tests/data/sleb/golden.json")));
  const std::string text = test::read_file(test::source_path("tests/data/sleb/calib.txt"));
  compress::CalibOptions co;
  co.len = golden.at("seqlen").get<std::int64_t>();
  co.windows = golden.at("windows").get<std::int64_t>();
  co.sampling = compress::CalibSampling::contiguous;  // get_loss: numel // seqlen windows
  std::vector<std::int64_t> ids = llm::bytes_to_ids(text);
  ids.resize(static_cast<std::size_t>(golden.at("tokens").get<std::int64_t>()));
  const at::Tensor windows = compress::make_calibration_windows(at::tensor(ids, at::kLong), co, "calib.txt");
  CHECK(windows.size(0) == co.windows);
  PruneOptions o;
  o.remove = golden.at("num_remove_blocks").get<std::int64_t>();
  core::NullProgress np;
  const auto r = compress::select_blocks(test::fixture_model_f32(), windows, o, np);
  CHECK(r.removed == golden.at("removal_order").get<std::vector<std::int64_t>>());
  // Per-round losses: the reference's summed NLL of every candidate.
  const auto losses = golden.at("round_losses");
  REQUIRE(losses.size() == r.scores.size());
  for (std::size_t i = 0; i < losses.size(); ++i)
    for (const auto& [blk, loss] : losses[i].items())
      CHECK(r.scores[i][std::stoul(blk)] == doctest::Approx(loss.get<double>()).epsilon(1e-4));
}

TEST_CASE("prune: one-shot similarity metrics") {
  const llm::Model& model = test::fixture_model_f32();
  const at::Tensor windows = calib_windows(2, 128);
  core::NullProgress np;
  PruneOptions o;
  o.remove = 2;
  o.metric = PruneMetric::block_influence;
  auto r = compress::select_blocks(model, windows, o, np);
  REQUIRE(r.scores.size() == 1);
  CHECK(std::isnan(r.scores[0][0]));
  CHECK(std::isnan(r.scores[0][7]));
  // The two removed blocks are the two lowest BI among blocks 1..6, lowest first.
  std::vector<std::pair<double, std::int64_t>> bi;
  for (std::int64_t i = 1; i < 7; ++i) {
    CHECK(r.scores[0][i] > 0);
    CHECK(r.scores[0][i] < 2);
    bi.emplace_back(r.scores[0][i], i);
  }
  std::sort(bi.begin(), bi.end());
  CHECK(r.removed == std::vector<std::int64_t>{bi[0].second, bi[1].second});
  CHECK(r.block_forwards == 8);

  // BI recomputed by hand for block 3 from the hidden states.
  {
    std::vector<at::Tensor> hs;
    llm::KVCache cache = model.make_cache(2);
    llm::ForwardOptions fo;
    fo.logits = llm::LogitsMode::none;
    fo.hidden_states = &hs;
    model.forward(windows, test::arange_positions(2, 128), cache, fo);
    const double expect = (1.0 - at::cosine_similarity(hs[2], hs[3], -1, 1e-8)).mean().item<double>();
    CHECK(r.scores[0][3] == doctest::Approx(expect).epsilon(1e-5));
  }

  o.metric = PruneMetric::angular;
  r = compress::select_blocks(model, windows, o, np);
  REQUIRE(r.removed.size() == 2);
  CHECK(r.removed[1] == r.removed[0] + 1);  // consecutive
  CHECK(r.removed[0] >= 1);
  CHECK(r.removed[1] <= 6);
  for (std::int64_t l = 1; l <= 5; ++l) {
    CHECK(r.scores[0][l] >= 0);
    CHECK(r.scores[0][l] <= 1);
    CHECK(r.scores[0][r.removed[0]] <= r.scores[0][l]);
  }
  CHECK(std::isnan(r.scores[0][6]));  // a run of 2 starting at 6 would touch protected block 7
}

TEST_CASE("prune: the pruned artifact is smaller, loads, and names what was removed") {
  const llm::ModelFile source = llm::read_model(test::fixture_artifact());
  compress::PruneResult r;
  r.metric = PruneMetric::sleb;
  r.removed = {5, 2};
  r.kept = {0, 1, 3, 4, 6, 7};
  r.num_blocks_before = 8;
  r.scores = {std::vector<double>(8, 1.0), std::vector<double>(8, 2.0)};
  r.block_forwards = 10;
  r.plain_block_forwards = 20;
  const auto out = test::scratch("pruned.h5");
  std::filesystem::remove(out);
  compress::write_pruned_model(out, test::fixture_artifact(), source, r, {}, core::Provenance{});
  CHECK(std::filesystem::file_size(out) < std::filesystem::file_size(test::fixture_artifact()));
  const llm::ModelFile pruned = llm::read_model(out);
  CHECK(pruned.config.num_hidden_layers == 6);
  CHECK(pruned.original_layer_indices == std::vector<std::int64_t>{0, 1, 3, 4, 6, 7});
  // Stored dtype kept (the fixture is bf16), and block 3 of the pruned file is original block 4.
  CHECK((pruned.weights.at("model.layers.3.mlp.up_proj.weight").scalar_type() ==
         source.weights.at("model.layers.4.mlp.up_proj.weight").scalar_type()));
  CHECK(at::equal(pruned.weights.at("model.layers.3.mlp.up_proj.weight"),
                  source.weights.at("model.layers.4.mlp.up_proj.weight")));
  const h5::File f = h5::File::open(out);
  const h5::Group g = f.root().group("prune_blocks");
  CHECK(g.attr_string("metric") == "sleb");
  CHECK(g.read_vec<std::int64_t>("removed") == std::vector<std::int64_t>{5, 2});
  CHECK(g.info("scores").shape == h5::Shape{2, 8});
  // The pruned model runs: same logits as the in-memory model with the same blocks removed.
  llm::Model a = llm::load_model(out, {"cpu", "float32"});
  llm::Model b = llm::Model::from_file(source, {"cpu", "float32"});
  b.remove_blocks({2, 5});
  const at::Tensor tok = at::randint(0, 256, {1, 16}, at::kLong);
  llm::KVCache ca = a.make_cache(1), cb = b.make_cache(1);
  CHECK(at::allclose(a.forward(tok, test::arange_positions(1, 16), ca),
                     b.forward(tok, test::arange_positions(1, 16), cb)));
}
