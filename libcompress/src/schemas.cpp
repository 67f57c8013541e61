#include "kvlab/compress/schemas.hpp"

#include "kvlab/compress/kv_eval.hpp"
#include "kvlab/core/error.hpp"

namespace kvlab::compress {

namespace {

void add_kv_report_schema(core::SchemaRegistry& reg) {
  core::Schema s;
  s.kind = kKvReportKind;
  s.min_version = s.max_version = kKvReportFormatVersion;
  s.doc = "docs/formats/kv-report.md";
  using core::AttrType;
  s.params = {{"model_path", AttrType::string}, {"data_path", AttrType::string},
              {"jsonl_path", AttrType::string}, {"dtype", AttrType::string},
              {"device", AttrType::string},     {"methods", AttrType::strings},
              {"budgets", AttrType::strings},   {"tasks", AttrType::strings},
              {"batch_size", AttrType::integer}, {"seed", AttrType::integer},
              {"task_settings", AttrType::string}, {"method_settings", AttrType::string}};
  for (const char* f : {"score", "score_stderr", "budget_ratio", "ttft_seconds",
                        "decode_tokens_per_second", "seconds"})
    s.datasets.push_back({std::string("cells/") + f, {h5::DType::f64}, 1});
  for (const char* f : {"budget_tokens", "context_tokens", "samples", "kv_bytes_peak", "peak_device_bytes"})
    s.datasets.push_back({std::string("cells/") + f, {h5::DType::i64}, 1});
  s.check = [](const core::ArtifactReader& r, std::vector<std::string>& problems) {
    // Every column has `count` entries and every details string is a JSON object of numbers.
    try {
      (void)read_kv_report(r.header().path);
    } catch (const Error& e) {
      problems.push_back(e.what());
    }
  };
  reg.add(std::move(s));
}

}  // namespace

void register_schemas(core::SchemaRegistry& reg) { add_kv_report_schema(reg); }

}  // namespace kvlab::compress
