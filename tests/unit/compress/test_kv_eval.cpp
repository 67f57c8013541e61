// kv-eval harness: budget parsing and its errors, the grid on the trained fixture model
// (full retrieves the pass key >= 90 %, compression frees KV memory), the kv-report round trip
// and schema, and the refusal of another artifact kind.
#include <doctest/doctest.h>

#include <ATen/ATen.h>

#include <cmath>

#include "kvlab/compress/kv_eval.hpp"
#include "kvlab/compress/schemas.hpp"
#include "kvlab/core/progress.hpp"
#include "kvlab/core/schema.hpp"
#include "kvlab/llm/import_export.hpp"
#include "../test_util.hpp"
#include "fixture.hpp"

using namespace kvlab;

namespace {

compress::KvTaskInputs fixture_inputs() {
  return compress::load_kv_task_inputs(test::fixture_model_f32(), test::fixture_artifact().string(),
                                       test::source_path("data/kjv-byte-llama/heldout.txt"), {}, "");
}

}  // namespace

TEST_CASE("budgets: ratios, percentages, token counts and their errors") {
  auto b = compress::parse_budget("0.25");
  CHECK(b.is_ratio);
  CHECK(b.ratio == doctest::Approx(0.25));
  CHECK(b.resolve(1000, "t") == 250);
  b = compress::parse_budget("10%");
  CHECK(b.ratio == doctest::Approx(0.1));
  b = compress::parse_budget("1");
  CHECK(b.is_ratio);
  CHECK(b.resolve(77, "t") == 77);
  b = compress::parse_budget("512");
  CHECK(!b.is_ratio);
  CHECK(b.resolve(1024, "t") == 512);
  std::string e = test::error_of([&] { (void)b.resolve(300, "task retrieval"); }, 2);
  CHECK(e.find("above the context of task retrieval (300 tokens)") != std::string::npos);
  for (const char* bad : {"0", "0.0", "1.5", "-0.2", "150%", "abc", "", "0.5x", "nan"}) {
    CAPTURE(bad);
    e = test::error_of([&] { (void)compress::parse_budget(bad); }, 2);
    CHECK(e.find("--budget") != std::string::npos);
  }
  compress::KvEvalOptions o;
  o.methods = {"full", "nope"};
  e = test::error_of([&] { compress::check_kv_eval_options(o); }, 2);
  CHECK(e.find("--method nope: unknown KV-cache method") != std::string::npos);
  o.methods = {"snapkv"};
  o.tasks = {"ppl", "sing"};
  test::error_of([&] { compress::check_kv_eval_options(o); }, 2);
}

TEST_CASE("retrieval samples follow the fixture's pass-key format") {
  compress::RetrievalOptions ro;
  ro.context_lengths = {300};
  ro.depths = {0.5};
  ro.samples = 2;
  const auto s = compress::make_retrieval_samples(fixture_inputs(), ro, 0);
  REQUIRE(s.size() == 2);
  CHECK(s[0].prompt.size() == 300);
  CHECK(s[0].prompt.front() == 256);  // BOS
  const std::string text = llm::ids_to_bytes(s[0].prompt);
  const std::string key = llm::ids_to_bytes(s[0].answer);
  CHECK(key.size() == 5);
  CHECK(text.find(" The pass key is " + key + ". Remember it. " + key + " is the pass key. ") != std::string::npos);
  CHECK(text.size() >= 40);
  CHECK(text.substr(text.size() - 39) == "\nWhat is the pass key? The pass key is ");
  CHECK(s[0].answer != s[1].answer);
}

TEST_CASE("kv-eval on the fixture: full retrieves >= 90%, compression frees memory, report round trip") {
  compress::KvEvalOptions o;
  o.methods = {"full", "snapkv", "h2o"};
  o.budgets = {"0.25"};
  o.tasks = {"retrieval", "ppl"};
  o.method.baseline.snapkv_window = 32;
  o.task.retrieval.context_lengths = {512};
  o.task.retrieval.depths = {0.25, 0.75};
  o.task.retrieval.samples = 5;
  o.task.ppl.prompt_tokens = 128;
  o.task.ppl.continuation_tokens = 32;
  o.task.ppl.samples = 2;
  o.task.batch_size = 2;
  core::NullProgress np;
  const auto in = fixture_inputs();
  const compress::KvEvalResult r = compress::run_kv_eval(test::fixture_model_f32(), in, o, np);
  REQUIRE(r.cells.size() == 6);
  const compress::KvCell& full = r.cells[0];
  CHECK(full.task == "retrieval");
  CHECK(full.method == "full");
  CHECK(full.outcome.samples == 10);
  MESSAGE("full retrieval accuracy " << full.outcome.score);
  CHECK(full.outcome.score >= 0.9);
  const compress::KvCell& snap = r.cells[1];
  CHECK(snap.method == "snapkv");
  CHECK(snap.outcome.budget_tokens == 128);
  CHECK(snap.outcome.kv_bytes_peak < full.outcome.kv_bytes_peak / 2);
  const compress::KvCell& ppl_full = r.cells[3];
  CHECK(ppl_full.task == "ppl");
  CHECK(ppl_full.outcome.score > 1.5);
  CHECK(ppl_full.outcome.score < 10.0);  // the fixture's held-out ppl is ~3.6
  CHECK(r.cells[5].outcome.kv_bytes_peak < ppl_full.outcome.kv_bytes_peak);  // h2o evicts

  const auto path = test::scratch("kv-report.h5");
  compress::write_kv_report(path, r, o, {"m.h5", "heldout.txt", "", "float32", "cpu"}, {});
  const compress::KvEvalResult back = compress::read_kv_report(path);
  REQUIRE(back.cells.size() == r.cells.size());
  for (std::size_t i = 0; i < r.cells.size(); ++i) {
    CHECK(back.cells[i].method == r.cells[i].method);
    CHECK(back.cells[i].budget == r.cells[i].budget);
    CHECK(back.cells[i].task == r.cells[i].task);
    CHECK(back.cells[i].outcome.score == r.cells[i].outcome.score);
    CHECK(back.cells[i].outcome.kv_bytes_peak == r.cells[i].outcome.kv_bytes_peak);
    CHECK(back.cells[i].outcome.budget_tokens == r.cells[i].outcome.budget_tokens);
    CHECK(back.cells[i].outcome.details == r.cells[i].outcome.details);
  }
  CHECK(std::isnan(back.cells[0].budget_ratio));
  CHECK(back.cells[1].budget_ratio == doctest::Approx(0.25));
  core::SchemaRegistry reg;
  compress::register_schemas(reg);
  const auto problems = core::validate(core::ArtifactReader::open_any(path), reg);
  CHECK(problems.empty());
  // Another kind is refused with exit 3, naming both kinds.
  const std::string e = test::error_of([] { (void)compress::read_kv_report(test::fixture_artifact()); }, 3);
  CHECK(e.find("kv-report") != std::string::npos);
}

TEST_CASE("absolute budgets above a task's context are refused before the grid runs") {
  compress::KvEvalOptions o;
  o.methods = {"snapkv"};
  o.budgets = {"4096"};
  o.tasks = {"ppl"};
  o.task.ppl.prompt_tokens = 64;
  core::NullProgress np;
  const std::string e = test::error_of([&] { (void)compress::run_kv_eval(test::fixture_model_f32(), fixture_inputs(), o, np); }, 2);
  CHECK(e.find("above the context of task ppl (64 tokens)") != std::string::npos);
}

TEST_CASE("jsonl and speed tasks run on the fixture") {
  const auto jl = test::scratch("tasks.jsonl");
  // The fixture's pass-key format (it answers these); the second answer cannot come out.
  test::write_file(jl, "{\"prompt\": \"And God said, Let there be light. The pass key is 31415. Remember it. 31415 is the pass key. "
                       "And there was light.\\nWhat is the pass key? The pass key is \", \"answer\": \"31415\"}\n"
                       "{\"prompt_ids\": [256, 65, 110, 100], \"answer\": \"zzzzzz\"}\n");
  compress::KvEvalOptions o;
  o.methods = {"full", "tova"};
  o.budgets = {"0.5"};
  o.tasks = {"jsonl", "speed"};
  o.task.jsonl.max_new_tokens = 5;
  o.task.jsonl.scoring = compress::JsonlScoring::contains;
  o.task.speed.context = 64;
  o.task.speed.decode_tokens = 4;
  core::NullProgress np;
  const auto in = compress::load_kv_task_inputs(test::fixture_model_f32(), test::fixture_artifact().string(), "", {}, jl.string());
  const auto r = compress::run_kv_eval(test::fixture_model_f32(), in, o, np);
  REQUIRE(r.cells.size() == 4);
  CHECK(r.cells[0].metric == "pass@1");
  CHECK(r.cells[0].outcome.score == doctest::Approx(0.5));  // the key yes, "zzzzzz" no
  CHECK(r.cells[2].task == "speed");
  CHECK(r.cells[2].outcome.decode_tokens_per_second > 0);
  CHECK(r.cells[2].outcome.ttft_seconds > 0);
  CHECK(r.cells[3].outcome.kv_bytes_peak < r.cells[2].outcome.kv_bytes_peak);
  // A malformed line names the file and line.
  test::write_file(jl, "{\"prompt\": \"a\", \"answer\": \"b\"}\nnot json\n");
  const std::string e = test::error_of([&] { (void)compress::read_jsonl_tasks(jl.string(), llm::bytes_to_ids); }, 3);
  CHECK(e.find("tasks.jsonl:2") != std::string::npos);
}

TEST_CASE("rpc, fastkv, quest and retro through the harness: identities, and memory freed") {
  compress::KvEvalOptions o;
  o.methods = {"full", "quest", "retro", "rpc", "fastkv"};
  o.budgets = {"1", "0.25"};  // "1": the whole context
  o.tasks = {"ppl"};
  o.task.ppl.prompt_tokens = 192;
  o.task.ppl.continuation_tokens = 96;
  o.task.ppl.samples = 2;
  o.task.batch_size = 2;
  o.method.retro.window = 1;  // w = 1: retro must equal quest bit for bit
  o.method.rpc.interval = 32;  // compress three times inside the continuation
  o.method.rpc.window = 8;
  o.method.fastkv.tsp_layer = 3;  // the official 15 is for 32 layers; the fixture has 8
  core::NullProgress np;
  const compress::KvEvalResult r = compress::run_kv_eval(test::fixture_model_f32(), fixture_inputs(), o, np);
  REQUIRE(r.cells.size() == 9);
  auto cell = [&](const std::string& m, const std::string& b) -> const compress::KvCell& {
    for (const auto& c : r.cells)
      if (c.method == m && c.budget == b) return c;
    FAIL("no cell " << m << " " << b);
    return r.cells[0];
  };
  const compress::KvCell& full = cell("full", "");
  for (const auto& c : r.cells) {
    CAPTURE(c.method);
    CAPTURE(c.budget);
    CHECK(c.task == "ppl");
    CHECK(c.outcome.samples == 2);
    CHECK(std::isfinite(c.outcome.score));
    CHECK(c.outcome.score > 1.5);
    CHECK(c.outcome.score < 2 * full.outcome.score);
  }
  // The budget resolves against the prompt (192), so even "1" reads less than the growing cache:
  // a larger budget must come closer to full. (Budgets covering every page equal full exactly:
  // test_quest_retro.cpp, on the policies.)
  const double q1 = cell("quest", "1").outcome.score, q25 = cell("quest", "0.25").outcome.score;
  CHECK(std::abs(q1 - full.outcome.score) < std::abs(q25 - full.outcome.score));
  // Retro with a window of 1 has nothing to revise: quest, bit for bit, at every budget.
  CHECK(cell("retro", "1").outcome.score == q1);
  CHECK(cell("retro", "0.25").outcome.score == q25);
  // Quest and retro evict nothing; rpc (decode-time) and fastkv (prefill) free memory.
  CHECK(cell("quest", "0.25").outcome.kv_bytes_peak >= full.outcome.kv_bytes_peak);
  CHECK(cell("rpc", "0.25").outcome.kv_bytes_peak < full.outcome.kv_bytes_peak);
  CHECK(cell("fastkv", "0.25").outcome.kv_bytes_peak < full.outcome.kv_bytes_peak);
  CHECK(cell("rpc", "0.25").outcome.kv_bytes_peak < cell("quest", "0.25").outcome.kv_bytes_peak);
}
