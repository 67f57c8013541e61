// Artifacts: one HDF5 file = one artifact of one kind. Schema of the root (docs/formats/README.md):
//
//   /                       attrs kvlab.kind (str), kvlab.format_version (u32, structural),
//                           kvlab.format_minor (u32, additive), kvlab.uuid, kvlab.created (UTC,
//                           ISO 8601), kvlab.software, kvlab.command (full argv), kvlab.config
//                           (resolved options, TOML)
//   /params                 typed attributes: the parameters that produced the artifact
//   /provenance/inputs/<i>  attrs path, kind, uuid, format_version: each parent artifact or file
//
// Versioning rule: a reader accepts format_version in [min, max] it knows; format_minor only adds
// (new optional attributes or datasets), so any minor is accepted.
//
// Writers write `<out>.partial.<pid>` and rename it over `<out>` only in commit(): a killed job
// never leaves a plausible file at the output path. Readers check kind, then version, then data.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kvlab/core/h5.hpp"

namespace kvlab::core {

struct InputRef {
  std::string path;
  std::string kind;  // artifact kind, or "file" for a non-artifact input (text, safetensors, ...)
  std::string uuid;  // empty for non-artifact inputs
  std::uint32_t format_version = 0;
};

struct ArtifactHeader {
  std::string path;
  std::string kind;
  std::uint32_t format_version = 0;
  std::uint32_t format_minor = 0;
  std::string uuid;
  std::string created;
  std::string software;
  std::string command;
  std::string config;
  std::vector<InputRef> inputs;

  InputRef as_input() const { return {path, kind, uuid, format_version}; }
};

/// What the front end knows about the invocation; stamped into every artifact it writes.
struct Provenance {
  std::string command;  // full argv, shell-quoted
  std::string config;   // resolved options (TOML)
  std::vector<InputRef> inputs;
};

/// "kvlab 0.1.0 (git abc123; libtorch 1.13.1; hdf5 1.10.8; cuda none)"
std::string software_string();
/// Random RFC 4122 v4 UUID.
std::string make_uuid();
/// Current UTC time, "2026-11-26T08:13:44Z".
std::string utc_now();

/// Reads the root attributes and provenance of any kvlab artifact (no kind check).
ArtifactHeader read_header(const h5::File& f);

class ArtifactWriter {
 public:
  ArtifactWriter(std::filesystem::path out, std::string kind, std::uint32_t format_version,
                 std::uint32_t format_minor, const Provenance& prov);
  ArtifactWriter(const ArtifactWriter&) = delete;
  ArtifactWriter& operator=(const ArtifactWriter&) = delete;
  /// Removes the partial file unless commit() succeeded.
  ~ArtifactWriter();

  h5::Group& root() { return *root_; }
  h5::Group& params() { return *params_; }
  const std::filesystem::path& partial_path() const { return partial_; }
  /// Flushes, closes and renames the partial file onto the output path. Returns the header.
  ArtifactHeader commit();

 private:
  std::filesystem::path out_;
  std::filesystem::path partial_;
  std::unique_ptr<h5::File> file_;
  std::unique_ptr<h5::Group> root_;
  std::unique_ptr<h5::Group> params_;
  ArtifactHeader header_;
  bool committed_ = false;
};

class ArtifactReader {
 public:
  /// Opens `path`, checks it is a kvlab artifact of `kind` with format_version in
  /// [min_version, max_version]; FormatError (exit 3) with a remedy otherwise.
  static ArtifactReader open(const std::filesystem::path& path, const std::string& kind,
                             std::uint32_t min_version, std::uint32_t max_version);
  /// Opens any kvlab artifact (for inspect).
  static ArtifactReader open_any(const std::filesystem::path& path);

  const ArtifactHeader& header() const { return header_; }
  h5::Group root() const { return file_->root(); }
  h5::Group params() const { return file_->root().group("params"); }

 private:
  ArtifactReader(std::unique_ptr<h5::File> f, ArtifactHeader h)
      : file_(std::move(f)), header_(std::move(h)) {}
  std::unique_ptr<h5::File> file_;
  ArtifactHeader header_;
};

/// Output-path hygiene, shared by every writing command:
/// - refuses an output that is the same file as any input (UsageError),
/// - refuses an existing output unless `force` (UsageError),
/// - refuses a directory that does not exist (UsageError).
void check_output_path(const std::filesystem::path& out, const std::vector<std::string>& inputs,
                       bool force);

/// Lists `<out>.partial.*` files left next to `out` by killed jobs (kvlab never reads them).
std::vector<std::filesystem::path> leftover_partials(const std::filesystem::path& out);

}  // namespace kvlab::core
