// kv-eval: the method x budget x task grid of KV-cache compression on one loaded model
// (docs/kv-eval.md), its table / JSON rendering, and the `kv-report` artifact
// (docs/formats/kv-report.md):
//
//   /params        attrs model_path, data_path, jsonl_path, dtype, device, methods[], budgets[],
//                  tasks[], batch_size, seed, task_settings (JSON), method_settings (JSON)
//   /cells         attrs method[], budget[], task[], metric[], settings[] (JSON per cell),
//                  details[] (JSON per cell); one entry per cell, in run order
//   /cells/score, score_stderr, budget_ratio (NaN: absolute or full), ttft_seconds,
//          decode_tokens_per_second, seconds                      float64 [cells]
//   /cells/budget_tokens, context_tokens, samples, kv_bytes_peak,
//          peak_device_bytes                                      int64   [cells]
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "kvlab/compress/kv_methods.hpp"
#include "kvlab/compress/kv_tasks.hpp"
#include "kvlab/core/artifact.hpp"
#include "kvlab/core/progress.hpp"
#include "kvlab/llm/model.hpp"

namespace kvlab::compress {

inline constexpr const char* kKvReportKind = "kv-report";
inline constexpr std::uint32_t kKvReportFormatVersion = 1;

struct KvEvalOptions {
  std::vector<std::string> methods = {"full", "streaming", "snapkv"};
  std::vector<std::string> budgets = {"0.25"};
  std::vector<std::string> tasks = {"retrieval"};
  KvMethodOptions method;
  KvTaskSettings task;
};

struct KvCell {
  std::string method, budget, task, metric;  ///< budget "" for full
  double budget_ratio = 0;                    ///< NaN when absolute or full
  std::string settings;                       ///< method options (JSON)
  std::string details;                        ///< task breakdowns (JSON)
  TaskOutcome outcome;
};

struct KvEvalResult {
  std::vector<KvCell> cells;
};

/// Checks method names, budgets and tasks (UsageError, exit 2) without running anything; the
/// front end calls it before loading the model.
void check_kv_eval_options(const KvEvalOptions& o);

/// Runs the grid: for every task, `full` once and every other method at every budget.
/// Absolute budgets above a task's context are refused before the first cell runs.
KvEvalResult run_kv_eval(const llm::Model& model, const KvTaskInputs& in, const KvEvalOptions& o,
                         core::Progress& progress);

/// One row per cell: task, method, budget, tokens, metric, score, KV bytes, time.
std::string format_kv_table(const KvEvalResult& r);
/// The cells as a JSON array (for --json).
std::string kv_eval_json(const KvEvalResult& r);

struct KvReportInfo {
  std::string model_path, data_path, jsonl_path, dtype, device;
};

core::ArtifactHeader write_kv_report(const std::filesystem::path& out, const KvEvalResult& r,
                                     const KvEvalOptions& o, const KvReportInfo& info,
                                     const core::Provenance& prov);

/// Reads a kv-report (FormatError for another kind or version).
KvEvalResult read_kv_report(const std::filesystem::path& path);

}  // namespace kvlab::compress
