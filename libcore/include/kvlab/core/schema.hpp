// Per-kind schemas for `kvlab inspect --validate`. Each library registers the kinds it owns
// (llm::register_schemas, ...) into a registry that the front end builds explicitly, so nothing
// depends on static-initialisation order in static libraries.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "kvlab/core/artifact.hpp"
#include "kvlab/core/h5.hpp"

namespace kvlab::core {

enum class AttrType { string, integer, number, strings, integers, numbers };

struct AttrRule {
  std::string name;  // attribute name on /params
  AttrType type;
  bool required = true;
};

struct DatasetRule {
  /// Path relative to the root; a `*` component matches every child of that group
  /// (e.g. "layers/*/weight").
  std::string path;
  std::vector<h5::DType> dtypes;  // allowed element types (empty: any numeric)
  int rank = -1;                  // -1: any rank
  bool required = true;
};

struct Schema {
  std::string kind;
  std::uint32_t min_version = 1;
  std::uint32_t max_version = 1;
  std::string doc;  // docs/formats/<kind>.md
  std::vector<AttrRule> params;
  std::vector<DatasetRule> datasets;
  /// Extra checks (cross-dataset shapes, ...). Appends human-readable problems.
  std::function<void(const ArtifactReader&, std::vector<std::string>&)> check;
};

class SchemaRegistry {
 public:
  void add(Schema s);
  const Schema* find(const std::string& kind) const;
  std::vector<std::string> kinds() const;

 private:
  std::map<std::string, Schema> schemas_;
};

/// Checks an opened artifact against its kind's schema; returns the list of problems (empty:
/// valid). An unknown kind is itself a problem.
std::vector<std::string> validate(const ArtifactReader& r, const SchemaRegistry& reg);

/// Kinds owned by libcore (selfcheck-report).
void register_schemas(SchemaRegistry& reg);

}  // namespace kvlab::core
