// What `kvlab inspect` shows of an artifact: header, lineage, params and every dataset.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "kvlab/core/artifact.hpp"
#include "kvlab/core/schema.hpp"

namespace kvlab::core {

struct DatasetSummary {
  std::string path;  // "/layers/000/weight"
  std::string dtype;
  h5::Shape shape;
  std::vector<std::string> axis_labels;
};

struct LineageEntry {
  int depth = 1;       // 1: a direct input; 2: an input of that input; ...
  InputRef ref;
  std::string status;  // "ok", "missing" (file gone), "changed" (uuid differs), "file"
};

struct ArtifactSummary {
  ArtifactHeader header;
  std::vector<std::pair<std::string, std::string>> params;      // name, value as text
  std::vector<std::pair<std::string, std::string>> root_attrs;  // non-kvlab.* root attributes
  std::vector<DatasetSummary> datasets;
  std::vector<LineageEntry> lineage;
  std::uint64_t file_bytes = 0;
  bool validated = false;
  std::vector<std::string> problems;  // from validate(), when validated
};

/// Summarises an opened artifact. Lineage follows each input's recorded path while the file is
/// still there and carries the recorded uuid, up to `max_depth` levels.
ArtifactSummary summarize(const ArtifactReader& r, int max_depth = 8);

std::string to_text(const ArtifactSummary& s);
nlohmann::json to_json(const ArtifactSummary& s);

}  // namespace kvlab::core
