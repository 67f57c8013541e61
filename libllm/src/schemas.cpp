#include "kvlab/llm/schemas.hpp"

#include "kvlab/llm/eval.hpp"
#include "kvlab/llm/model_io.hpp"

namespace kvlab::llm {

namespace {

// eval-report (docs/formats/eval-report.md); the writer is write_eval_report in eval.cpp.
void add_eval_report_schema(core::SchemaRegistry& reg) {
  core::Schema s;
  s.kind = kEvalReportKind;
  s.min_version = s.max_version = kEvalReportFormatVersion;
  s.doc = "docs/formats/eval-report.md";
  using core::AttrType;
  s.params = {{"seq_len", AttrType::integer},     {"batch_size", AttrType::integer},
              {"chunk_size", AttrType::integer},  {"max_windows", AttrType::integer},
              {"protocol", AttrType::string},     {"dtype", AttrType::string},
              {"device", AttrType::string},       {"model_path", AttrType::string},
              {"data_path", AttrType::string},    {"data_format", AttrType::string}};
  s.datasets = {{"window_loss", {h5::DType::f64}, 1}, {"window_start", {h5::DType::i64}, 1}};
  s.check = [](const core::ArtifactReader& r, std::vector<std::string>& problems) {
    const h5::Group root = r.root();
    for (const char* a : {"ppl", "mean_loss", "loss_stderr", "ppl_ci_low", "ppl_ci_high",
                          "windows", "tokens_total", "tokens_scored", "tokens_dropped"})
      if (!root.has_attr(a)) problems.push_back(std::string("root attribute ") + a + " is missing");
    if (root.has_attr("windows") && root.has_dataset("window_loss") &&
        root.info("window_loss").shape != h5::Shape{root.attr_int("windows")})
      problems.push_back("window_loss does not hold one value per window");
  };
  reg.add(std::move(s));
}

}  // namespace

void register_schemas(core::SchemaRegistry& reg) {
  add_eval_report_schema(reg);
  add_model_schema(reg);  // model_io.cpp
}

}  // namespace kvlab::llm
