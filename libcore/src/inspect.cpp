#include "kvlab/core/inspect.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <filesystem>
#include <functional>

namespace kvlab::core {
namespace fs = std::filesystem;

namespace {

void walk(const h5::Group& g, const std::string& prefix, std::vector<DatasetSummary>& out) {
  for (const auto& c : g.children()) {
    const std::string p = prefix + "/" + c;
    if (g.has_group(c)) {
      walk(g.group(c), p, out);
    } else if (g.has_dataset(c)) {
      const h5::DatasetInfo i = g.info(c);
      out.push_back({p, i.type_desc, i.shape, g.axis_labels(c)});
    }
  }
}

void follow(const std::vector<InputRef>& inputs, int depth, int max_depth,
            std::vector<LineageEntry>& out) {
  for (const auto& in : inputs) {
    LineageEntry e{depth, in, "ok"};
    std::vector<InputRef> parents;
    std::error_code ec;
    if (in.uuid.empty()) {
      e.status = "file";
    } else if (!fs::exists(in.path, ec)) {
      e.status = "missing";
    } else {
      try {
        const ArtifactReader p = ArtifactReader::open_any(in.path);
        if (p.header().uuid != in.uuid) e.status = "changed";
        else parents = p.header().inputs;
      } catch (const std::exception&) {
        e.status = "changed";
      }
    }
    out.push_back(e);
    if (depth < max_depth) follow(parents, depth + 1, max_depth, out);
  }
}

}  // namespace

ArtifactSummary summarize(const ArtifactReader& r, int max_depth) {
  ArtifactSummary s;
  s.header = r.header();
  std::error_code ec;
  s.file_bytes = static_cast<std::uint64_t>(fs::file_size(s.header.path, ec));
  h5::Group root = r.root();
  for (const auto& a : root.attr_names())
    if (a.rfind("kvlab.", 0) != 0) s.root_attrs.emplace_back(a, h5::attr_to_string(root.attr(a)));
  if (root.has_group("params")) {
    h5::Group p = root.group("params");
    for (const auto& a : p.attr_names()) s.params.emplace_back(a, h5::attr_to_string(p.attr(a)));
  }
  walk(root, "", s.datasets);
  follow(s.header.inputs, 1, max_depth, s.lineage);
  return s;
}

std::string to_text(const ArtifactSummary& s) {
  const ArtifactHeader& h = s.header;
  std::string o;
  o += fmt::format("{}: kvlab {} artifact, format {}.{}, {} bytes\n", h.path, h.kind,
                   h.format_version, h.format_minor, s.file_bytes);
  o += fmt::format("  uuid      {}\n  created   {}\n  software  {}\n  command   {}\n", h.uuid,
                   h.created, h.software, h.command);
  if (!s.lineage.empty()) {
    o += "lineage:\n";
    for (const auto& e : s.lineage)
      o += fmt::format("  {}{} ({}{}){}\n", std::string(2 * (e.depth - 1), ' '), e.ref.path,
                       e.ref.kind, e.ref.uuid.empty() ? "" : ", " + e.ref.uuid.substr(0, 8),
                       e.status == "ok" || e.status == "file" ? "" : "  [" + e.status + "]");
  }
  if (!s.params.empty()) {
    o += "params:\n";
    for (const auto& [k, v] : s.params) o += fmt::format("  {} = {}\n", k, v);
  }
  if (!s.root_attrs.empty()) {
    o += "attributes:\n";
    for (const auto& [k, v] : s.root_attrs) o += fmt::format("  {} = {}\n", k, v);
  }
  if (!s.datasets.empty()) {
    o += "datasets:\n";
    std::size_t w = 0;
    for (const auto& d : s.datasets) w = std::max(w, d.path.size());
    for (const auto& d : s.datasets) {
      o += fmt::format("  {:<{}}  {:<8} {}", d.path, w, d.dtype, h5::shape_str(d.shape));
      if (!d.axis_labels.empty()) o += fmt::format("  ({})", fmt::join(d.axis_labels, ", "));
      o += "\n";
    }
  }
  if (s.validated) {
    if (s.problems.empty()) {
      o += fmt::format("valid: conforms to the {} v{} schema\n", h.kind, h.format_version);
    } else {
      o += fmt::format("INVALID: {} problem(s):\n", s.problems.size());
      for (const auto& p : s.problems) o += "  - " + p + "\n";
    }
  }
  return o;
}

nlohmann::json to_json(const ArtifactSummary& s) {
  using nlohmann::json;
  const ArtifactHeader& h = s.header;
  json j;
  j["path"] = h.path;
  j["kind"] = h.kind;
  j["format_version"] = h.format_version;
  j["format_minor"] = h.format_minor;
  j["uuid"] = h.uuid;
  j["created"] = h.created;
  j["software"] = h.software;
  j["command"] = h.command;
  j["config"] = h.config;
  j["file_bytes"] = s.file_bytes;
  j["lineage"] = json::array();
  for (const auto& e : s.lineage)
    j["lineage"].push_back({{"depth", e.depth}, {"path", e.ref.path}, {"kind", e.ref.kind},
                            {"uuid", e.ref.uuid}, {"format_version", e.ref.format_version},
                            {"status", e.status}});
  j["params"] = json::object();
  for (const auto& [k, v] : s.params) j["params"][k] = v;
  j["attributes"] = json::object();
  for (const auto& [k, v] : s.root_attrs) j["attributes"][k] = v;
  j["datasets"] = json::array();
  for (const auto& d : s.datasets)
    j["datasets"].push_back(
        {{"path", d.path}, {"dtype", d.dtype}, {"shape", d.shape}, {"axis_labels", d.axis_labels}});
  if (s.validated) {
    j["valid"] = s.problems.empty();
    j["problems"] = s.problems;
  }
  return j;
}

}  // namespace kvlab::core
