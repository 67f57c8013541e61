// The bundled byte-level fixture model (data/kjv-byte-llama), imported once per test binary and
// shared by the compress tests.
#pragma once

#include <filesystem>

#include "../test_util.hpp"
#include "kvlab/core/progress.hpp"
#include "kvlab/llm/import_export.hpp"
#include "kvlab/llm/model.hpp"

namespace kvlab::test {

/// The fixture's model artifact (bfloat16 weights, as shipped).
inline const std::filesystem::path& fixture_artifact() {
  static const std::filesystem::path p = [] {
    const auto out = scratch("kjv-fixture.h5");
    core::NullProgress np;
    llm::import_hf(source_path("data/kjv-byte-llama"), out, {}, core::Provenance{}, np);
    return out;
  }();
  return p;
}

/// The fixture model on the CPU, computing in float32.
inline const llm::Model& fixture_model_f32() {
  static const llm::Model m = llm::load_model(fixture_artifact(), {"cpu", "float32"});
  return m;
}

}  // namespace kvlab::test
