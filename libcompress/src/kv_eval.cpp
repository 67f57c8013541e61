#include "kvlab/compress/kv_eval.hpp"

#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "kvlab/core/error.hpp"
#include "kvlab/core/runtime.hpp"

namespace kvlab::compress {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

nlohmann::json task_settings_json(const KvTaskSettings& s) {
  return {
      {"retrieval", {{"context_lengths", s.retrieval.context_lengths}, {"depths", s.retrieval.depths},
                     {"samples", s.retrieval.samples}}},
      {"ppl", {{"prompt_tokens", s.ppl.prompt_tokens}, {"continuation_tokens", s.ppl.continuation_tokens},
               {"samples", s.ppl.samples}}},
      {"long_gen", {{"lead_tokens", s.long_gen.lead_tokens}, {"generate_tokens", s.long_gen.generate_tokens},
                    {"samples", s.long_gen.samples}}},
      {"jsonl", {{"scoring", s.jsonl.scoring == JsonlScoring::exact ? "exact" : "contains"},
                 {"max_new_tokens", s.jsonl.max_new_tokens}, {"samples", s.jsonl.samples},
                 {"temperature", s.jsonl.temperature}, {"top_p", s.jsonl.top_p}, {"top_k", s.jsonl.top_k},
                 {"stop_at_newline", s.jsonl.stop_at_newline}, {"max_prompts", s.jsonl.max_prompts}}},
      {"speed", {{"context", s.speed.context}, {"decode_tokens", s.speed.decode_tokens}, {"batch", s.speed.batch}}},
      {"batch_size", s.batch_size},
      {"seed", s.seed},
  };
}

nlohmann::json details_json(const TaskOutcome& t) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [k, v] : t.details) j[k] = v;
  return j;
}

nlohmann::json cell_json(const KvCell& c) {
  const TaskOutcome& t = c.outcome;
  nlohmann::json j = {{"task", c.task}, {"method", c.method}, {"budget", c.budget},
                      {"budget_tokens", t.budget_tokens}, {"context_tokens", t.context_tokens},
                      {"metric", c.metric}, {"score", t.score}, {"score_stderr", t.score_stderr},
                      {"samples", t.samples}, {"kv_bytes_peak", t.kv_bytes_peak},
                      {"seconds", t.seconds}, {"settings", nlohmann::json::parse(c.settings)},
                      {"details", nlohmann::json::parse(c.details)}};
  if (!std::isnan(c.budget_ratio)) j["budget_ratio"] = c.budget_ratio;
  if (c.task == "speed") {
    j["ttft_seconds"] = t.ttft_seconds;
    j["decode_tokens_per_second"] = t.decode_tokens_per_second;
    j["peak_device_bytes"] = t.peak_device_bytes;
  }
  return j;
}

}  // namespace

void check_kv_eval_options(const KvEvalOptions& o) {
  KVLAB_THROW_IF(o.methods.empty(), UsageError, "--method: give at least one method");
  KVLAB_THROW_IF(o.tasks.empty(), UsageError, "--task: give at least one task");
  for (const auto& m : o.methods) (void)find_kv_method(m);
  bool needs_budget = false;
  for (const auto& m : o.methods) needs_budget = needs_budget || find_kv_method(m).uses_budget;
  KVLAB_THROW_IF(needs_budget && o.budgets.empty(), UsageError, "--budget: give at least one budget");
  for (const auto& b : o.budgets) (void)parse_budget(b);
  const auto& known = kv_task_names();
  for (const auto& t : o.tasks)
    KVLAB_THROW_IF(std::find(known.begin(), known.end(), t) == known.end(), UsageError,
                   "--task {}: unknown task; known tasks: ppl, retrieval, long-gen, jsonl, speed", t);
  // Constructing each policy once validates the method options (UsageError naming the flag),
  // with a budget every method accepts (fastkv refuses budgets within its window; the real
  // budgets are checked per cell).
  llm::ModelConfig dummy;
  for (const auto& m : o.methods) (void)make_kv_policy(m, o.method, std::int64_t{1} << 20, dummy);
}

KvEvalResult run_kv_eval(const llm::Model& model, const KvTaskInputs& in, const KvEvalOptions& o,
                         core::Progress& progress) {
  check_kv_eval_options(o);
  std::vector<Budget> budgets;
  for (const auto& b : o.budgets) budgets.push_back(parse_budget(b));
  // Every task's context first: an absolute budget above it fails now, not after hours of work.
  for (const auto& t : o.tasks) {
    const std::int64_t ctx = kv_task_min_context(t, o.task, in, model);
    for (const auto& m : o.methods)
      if (find_kv_method(m).uses_budget)
        for (const auto& b : budgets) (void)b.resolve(ctx, "task " + t);
  }
  struct Plan {
    std::string task, method;
    const Budget* budget;
  };
  std::vector<Plan> plan;
  for (const auto& t : o.tasks)
    for (const auto& m : o.methods) {
      if (!find_kv_method(m).uses_budget) {
        plan.push_back({t, m, nullptr});
        continue;
      }
      for (const auto& b : budgets) plan.push_back({t, m, &b});
    }
  KvEvalResult r;
  for (std::size_t i = 0; i < plan.size(); ++i) {
    const Plan& p = plan[i];
    progress.stage(fmt::format("{} {} {}", p.task, p.method, p.budget ? p.budget->text : "-"),
                   static_cast<int>(i + 1), static_cast<int>(plan.size()));
    std::vector<std::shared_ptr<llm::CachePolicy>> used;  // for the methods' own statistics
    PolicyMaker make = [&](std::int64_t context, std::int64_t* budget_tokens, llm::KVCacheOptions* cache) {
      const std::int64_t bt = p.budget ? p.budget->resolve(context, "task " + p.task) : 0;
      if (budget_tokens) *budget_tokens = bt;
      std::shared_ptr<llm::CachePolicy> pol = make_kv_policy(p.method, o.method, bt, model.config());
      if (cache) *cache = kv_cache_options(*pol);
      used.push_back(pol);
      return pol;
    };
    KvCell c;
    c.task = p.task;
    c.method = p.method;
    c.budget = p.budget ? p.budget->text : "";
    c.budget_ratio = p.budget && p.budget->is_ratio ? p.budget->ratio : kNaN;
    c.settings = kv_method_settings(p.method, o.method);
    c.outcome = run_kv_task(p.task, model, in, o.task, make, progress);
    c.metric = c.outcome.metric;
    for (const auto& [k, v] : kv_policy_stats(used)) c.outcome.details[k] = v;
    used.clear();
    c.details = details_json(c.outcome).dump();
    r.cells.push_back(std::move(c));
    KVLAB_THROW_IF(progress.stop_requested(), Error, "stopped by a signal after {} of {} cells",
                   r.cells.size(), plan.size());
  }
  return r;
}

std::string format_kv_table(const KvEvalResult& r) {
  std::string s = fmt::format("{:<10} {:<10} {:>7} {:>7} {:<24} {:>10} {:>9} {:>10} {:>8}\n", "task",
                              "method", "budget", "tokens", "metric", "score", "+-", "kv_peak", "seconds");
  for (const auto& c : r.cells) {
    const TaskOutcome& t = c.outcome;
    s += fmt::format("{:<10} {:<10} {:>7} {:>7} {:<24} {:>10.4f} {:>9.4f} {:>10} {:>8.2f}\n", c.task,
                     c.method, c.budget.empty() ? "-" : c.budget, t.budget_tokens ? std::to_string(t.budget_tokens) : "-",
                     c.metric, t.score, t.score_stderr, core::human_bytes(t.kv_bytes_peak), t.seconds);
    if (c.task == "speed")
      s += fmt::format("{:<10} {:<10} ttft {:.4f} s, decode {:.1f} tokens/s, peak device {}\n", "", "",
                       t.ttft_seconds, t.decode_tokens_per_second,
                       t.peak_device_bytes ? core::human_bytes(t.peak_device_bytes) : "n/a (CPU)");
  }
  return s;
}

std::string kv_eval_json(const KvEvalResult& r) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& c : r.cells) a.push_back(cell_json(c));
  return nlohmann::json{{"cells", a}}.dump();
}

core::ArtifactHeader write_kv_report(const std::filesystem::path& out, const KvEvalResult& r,
                                     const KvEvalOptions& o, const KvReportInfo& info,
                                     const core::Provenance& prov) {
  core::ArtifactWriter w(out, kKvReportKind, kKvReportFormatVersion, 0, prov);
  h5::Group& p = w.params();
  p.set_attr("model_path", info.model_path);
  p.set_attr("data_path", info.data_path);
  p.set_attr("jsonl_path", info.jsonl_path);
  p.set_attr("dtype", info.dtype);
  p.set_attr("device", info.device);
  p.set_attr("methods", o.methods);
  p.set_attr("budgets", o.budgets);
  p.set_attr("tasks", o.tasks);
  p.set_attr("batch_size", o.task.batch_size);
  p.set_attr("seed", static_cast<std::int64_t>(o.task.seed));
  p.set_attr("task_settings", task_settings_json(o.task).dump());
  nlohmann::json ms = nlohmann::json::object();
  for (const auto& m : kv_methods()) ms[m.name] = nlohmann::json::parse(kv_method_settings(m.name, o.method));
  p.set_attr("method_settings", ms.dump());

  h5::Group c = w.root().require_group("cells");
  std::vector<std::string> method, budget, task, metric, settings, details;
  std::vector<double> score, se, ratio, ttft, tps, secs;
  std::vector<std::int64_t> btok, ctx, samples, kvb, dev;
  for (const auto& x : r.cells) {
    const TaskOutcome& t = x.outcome;
    method.push_back(x.method);
    budget.push_back(x.budget);
    task.push_back(x.task);
    metric.push_back(x.metric);
    settings.push_back(x.settings);
    details.push_back(x.details);
    score.push_back(t.score);
    se.push_back(t.score_stderr);
    ratio.push_back(x.budget_ratio);
    ttft.push_back(t.ttft_seconds);
    tps.push_back(t.decode_tokens_per_second);
    secs.push_back(t.seconds);
    btok.push_back(t.budget_tokens);
    ctx.push_back(t.context_tokens);
    samples.push_back(t.samples);
    kvb.push_back(static_cast<std::int64_t>(t.kv_bytes_peak));
    dev.push_back(static_cast<std::int64_t>(t.peak_device_bytes));
  }
  c.set_attr("count", static_cast<std::int64_t>(r.cells.size()));
  c.set_attr("method", method);
  c.set_attr("budget", budget);
  c.set_attr("task", task);
  c.set_attr("metric", metric);
  c.set_attr("settings", settings);
  c.set_attr("details", details);
  const std::vector<std::string> lab = {"cell"};
  c.write_vec("score", score, lab);
  c.write_vec("score_stderr", se, lab);
  c.write_vec("budget_ratio", ratio, lab);
  c.write_vec("ttft_seconds", ttft, lab);
  c.write_vec("decode_tokens_per_second", tps, lab);
  c.write_vec("seconds", secs, lab);
  c.write_vec("budget_tokens", btok, lab);
  c.write_vec("context_tokens", ctx, lab);
  c.write_vec("samples", samples, lab);
  c.write_vec("kv_bytes_peak", kvb, lab);
  c.write_vec("peak_device_bytes", dev, lab);
  return w.commit();
}

KvEvalResult read_kv_report(const std::filesystem::path& path) {
  const core::ArtifactReader rd =
      core::ArtifactReader::open(path, kKvReportKind, kKvReportFormatVersion, kKvReportFormatVersion);
  const h5::Group c = rd.root().group("cells");
  const auto n = static_cast<std::size_t>(c.attr_int("count"));
  const auto method = c.attr_strings("method"), budget = c.attr_strings("budget"),
             task = c.attr_strings("task"), metric = c.attr_strings("metric"),
             settings = c.attr_strings("settings"), details = c.attr_strings("details");
  const auto score = c.read_vec<double>("score"), se = c.read_vec<double>("score_stderr"),
             ratio = c.read_vec<double>("budget_ratio"), ttft = c.read_vec<double>("ttft_seconds"),
             tps = c.read_vec<double>("decode_tokens_per_second"), secs = c.read_vec<double>("seconds");
  const auto btok = c.read_vec<std::int64_t>("budget_tokens"), ctx = c.read_vec<std::int64_t>("context_tokens"),
             samples = c.read_vec<std::int64_t>("samples"), kvb = c.read_vec<std::int64_t>("kv_bytes_peak"),
             dev = c.read_vec<std::int64_t>("peak_device_bytes");
  for (const std::size_t len : {method.size(), budget.size(), task.size(), metric.size(), settings.size(),
                                details.size(), score.size(), se.size(), ratio.size(), ttft.size(), tps.size(),
                                secs.size(), btok.size(), ctx.size(), samples.size(), kvb.size(), dev.size()})
    KVLAB_THROW_IF(len != n, FormatError,
                   "{}: /cells holds {} entries in one column but count is {}; the file is corrupt "
                   "(re-run kv-eval)", path.string(), len, n);
  KvEvalResult r;
  for (std::size_t i = 0; i < n; ++i) {
    KvCell x;
    x.method = method[i];
    x.budget = budget[i];
    x.task = task[i];
    x.metric = metric[i];
    x.settings = settings[i];
    x.details = details[i];
    x.budget_ratio = ratio[i];
    TaskOutcome& t = x.outcome;
    t.metric = metric[i];
    t.score = score[i];
    t.score_stderr = se[i];
    t.ttft_seconds = ttft[i];
    t.decode_tokens_per_second = tps[i];
    t.seconds = secs[i];
    t.budget_tokens = btok[i];
    t.context_tokens = ctx[i];
    t.samples = samples[i];
    t.kv_bytes_peak = static_cast<std::uint64_t>(kvb[i]);
    t.peak_device_bytes = static_cast<std::uint64_t>(dev[i]);
    try {
      const nlohmann::json d = nlohmann::json::parse(details[i]);  // must outlive items()
      for (auto it = d.begin(); it != d.end(); ++it) t.details[it.key()] = it.value().get<double>();
    } catch (const std::exception& e) {
      KVLAB_THROW(FormatError, "{}: cell {} details are not a JSON object of numbers ({})", path.string(), i, e.what());
    }
    r.cells.push_back(std::move(x));
  }
  return r;
}

}  // namespace kvlab::compress
