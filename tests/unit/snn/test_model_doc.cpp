// docs/formats/snn-model.md and the writer agree: every /report attribute and /history dataset
// the writer emits is documented (STYLE: a cross-file coupling gets a test).
#include <doctest/doctest.h>

#include "../test_util.hpp"
#include "kvlab/snn/model_io.hpp"

TEST_CASE("snn-model doc lists every report attribute and history dataset the writer emits") {
  const std::string doc = kvlab::test::read_file(kvlab::test::source_path("docs/formats/snn-model.md"));
  REQUIRE(!doc.empty());
  for (const auto& k : kvlab::snn::snn_model_report_keys()) {
    CAPTURE(k);
    CHECK(doc.find("`" + k + "`") != std::string::npos);
  }
  for (const auto& k : kvlab::snn::snn_model_history_keys()) {
    CAPTURE(k);
    CHECK(doc.find("`" + k + "`") != std::string::npos);
  }
}
