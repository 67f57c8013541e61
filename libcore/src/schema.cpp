#include "kvlab/core/schema.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "kvlab/core/error.hpp"

namespace kvlab::core {

void SchemaRegistry::add(Schema s) {
  const std::string k = s.kind;
  schemas_[k] = std::move(s);
}

const Schema* SchemaRegistry::find(const std::string& kind) const {
  auto it = schemas_.find(kind);
  return it == schemas_.end() ? nullptr : &it->second;
}

std::vector<std::string> SchemaRegistry::kinds() const {
  std::vector<std::string> out;
  for (const auto& [k, _] : schemas_) out.push_back(k);
  return out;
}

namespace {

const char* attr_type_name(AttrType t) {
  switch (t) {
    case AttrType::string: return "a string";
    case AttrType::integer: return "an integer";
    case AttrType::number: return "a number";
    case AttrType::strings: return "a list of strings";
    case AttrType::integers: return "a list of integers";
    case AttrType::numbers: return "a list of numbers";
  }
  return "?";
}

bool attr_matches(const h5::AttrValue& v, AttrType t) {
  switch (t) {
    case AttrType::string: return std::holds_alternative<std::string>(v);
    case AttrType::integer: return std::holds_alternative<std::int64_t>(v);
    case AttrType::number:
      return std::holds_alternative<double>(v) || std::holds_alternative<std::int64_t>(v);
    case AttrType::strings: return std::holds_alternative<std::vector<std::string>>(v);
    case AttrType::integers: return std::holds_alternative<std::vector<std::int64_t>>(v);
    case AttrType::numbers:
      return std::holds_alternative<std::vector<double>>(v) ||
             std::holds_alternative<std::vector<std::int64_t>>(v);
  }
  return false;
}

// Expands a path with `*` components into the concrete dataset paths that exist.
void expand(const h5::Group& root, const std::string& prefix, const std::vector<std::string>& parts,
            std::size_t i, std::vector<std::string>& out, std::vector<std::string>& missing_at) {
  if (i == parts.size()) {
    out.push_back(prefix);
    return;
  }
  const std::string join = prefix.empty() ? "" : prefix + "/";
  if (parts[i] == "*") {
    if (prefix.empty()) {
      for (const auto& c : root.children()) expand(root, c, parts, i + 1, out, missing_at);
      return;
    }
    if (!root.has_group(prefix)) {
      missing_at.push_back(prefix);
      return;
    }
    for (const auto& c : root.group(prefix).children())
      expand(root, join + c, parts, i + 1, out, missing_at);
  } else {
    expand(root, join + parts[i], parts, i + 1, out, missing_at);
  }
}

}  // namespace

std::vector<std::string> validate(const ArtifactReader& r, const SchemaRegistry& reg) {
  std::vector<std::string> problems;
  const ArtifactHeader& h = r.header();
  const Schema* s = reg.find(h.kind);
  if (!s) {
    problems.push_back(fmt::format("unknown artifact kind \"{}\" (this kvlab knows: {})", h.kind,
                                   fmt::join(reg.kinds(), ", ")));
    return problems;
  }
  if (h.format_version < s->min_version || h.format_version > s->max_version) {
    problems.push_back(fmt::format("{} format_version {} is outside what this kvlab reads ({}..{})",
                                   h.kind, h.format_version, s->min_version, s->max_version));
    return problems;
  }
  h5::Group root = r.root();
  for (const char* a : {"kvlab.uuid", "kvlab.created", "kvlab.software", "kvlab.command"}) {
    if (!root.has_attr(a)) problems.push_back(fmt::format("root attribute {} is missing", a));
  }
  if (!root.has_group("params")) {
    problems.push_back("group /params is missing");
  } else {
    h5::Group p = root.group("params");
    for (const auto& rule : s->params) {
      if (!p.has_attr(rule.name)) {
        if (rule.required) problems.push_back(fmt::format("/params attribute {} is missing", rule.name));
        continue;
      }
      const h5::AttrValue v = p.attr(rule.name);
      if (!attr_matches(v, rule.type))
        problems.push_back(fmt::format("/params attribute {} should be {} but is {}", rule.name,
                                       attr_type_name(rule.type), h5::attr_to_string(v)));
    }
  }
  for (const auto& rule : s->datasets) {
    std::vector<std::string> parts;
    std::size_t start = 0;
    while (true) {
      const std::size_t slash = rule.path.find('/', start);
      parts.push_back(rule.path.substr(start, slash - start));
      if (slash == std::string::npos) break;
      start = slash + 1;
    }
    std::vector<std::string> paths, missing_at;
    expand(root, "", parts, 0, paths, missing_at);
    if (rule.required && (paths.empty() || !missing_at.empty())) {
      problems.push_back(fmt::format("dataset /{} is missing", rule.path));
      continue;
    }
    for (const auto& p : paths) {
      if (!root.has_dataset(p)) {
        if (rule.required) problems.push_back(fmt::format("dataset /{} is missing", p));
        continue;
      }
      const h5::DatasetInfo info = root.info(p);
      if (!rule.dtypes.empty() &&
          (!info.dtype ||
           std::find(rule.dtypes.begin(), rule.dtypes.end(), *info.dtype) == rule.dtypes.end())) {
        std::vector<std::string> names;
        for (auto t : rule.dtypes) names.emplace_back(h5::dtype_name(t));
        problems.push_back(fmt::format("dataset /{} has element type {}, expected {}", p,
                                       info.type_desc, fmt::join(names, " or ")));
      }
      if (rule.rank >= 0 && static_cast<int>(info.shape.size()) != rule.rank)
        problems.push_back(fmt::format("dataset /{} has rank {} ({}), expected rank {}", p,
                                       info.shape.size(), h5::shape_str(info.shape), rule.rank));
    }
  }
  if (s->check && problems.empty()) s->check(r, problems);
  return problems;
}

void register_schemas(SchemaRegistry& reg) {
  Schema s;
  s.kind = "selfcheck-report";
  s.doc = "docs/formats/selfcheck-report.md";
  s.params = {{"matmul_size", AttrType::integer}, {"threads", AttrType::integer}};
  s.datasets = {{"gflops", {h5::DType::f64}, 1}};
  s.check = [](const ArtifactReader& r, std::vector<std::string>& problems) {
    h5::Group root = r.root();
    for (const char* a : {"blas", "torch_version", "device"})
      if (!root.has_attr(a)) problems.push_back(fmt::format("root attribute {} is missing", a));
  };
  reg.add(std::move(s));
}

}  // namespace kvlab::core
