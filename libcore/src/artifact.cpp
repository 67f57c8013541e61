#include "kvlab/core/artifact.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <random>

#include "kvlab/core/error.hpp"
#include "kvlab/core/runtime.hpp"

namespace kvlab::core {
namespace fs = std::filesystem;

std::string make_uuid() {
  static thread_local std::mt19937_64 rng{std::random_device{}() ^
                                          static_cast<std::uint64_t>(::getpid())};
  std::uint64_t a = rng(), b = rng();
  a = (a & 0xffffffffffff0fffULL) | 0x0000000000004000ULL;  // version 4
  b = (b & 0x3fffffffffffffffULL) | 0x8000000000000000ULL;  // variant 10
  return fmt::format("{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", a >> 32, (a >> 16) & 0xffff,
                     a & 0xffff, b >> 48, b & 0xffffffffffffULL);
}

std::string utc_now() {
  const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string software_string() {
  const BuildInfo b = build_info();
  return fmt::format("kvlab {} (git {}; libtorch {}; hdf5 {}; cuda {})", b.kvlab_version,
                     b.git_sha, b.torch_version, b.hdf5_version, b.cuda_version);
}

ArtifactHeader read_header(const h5::File& f) {
  h5::Group root = f.root();
  ArtifactHeader h;
  h.path = f.path();
  KVLAB_THROW_IF(!root.has_attr("kvlab.kind"), FormatError,
                 "{}: HDF5 file without a kvlab.kind attribute, so not a kvlab artifact; give a "
                 "file a kvlab command wrote",
                 f.path());
  h.kind = root.attr_string("kvlab.kind");
  h.format_version = static_cast<std::uint32_t>(root.attr_int("kvlab.format_version"));
  h.format_minor = root.has_attr("kvlab.format_minor")
                       ? static_cast<std::uint32_t>(root.attr_int("kvlab.format_minor"))
                       : 0;
  auto opt = [&](const char* k) { return root.has_attr(k) ? root.attr_string(k) : std::string(); };
  h.uuid = opt("kvlab.uuid");
  h.created = opt("kvlab.created");
  h.software = opt("kvlab.software");
  h.command = opt("kvlab.command");
  h.config = opt("kvlab.config");
  if (root.has_group("provenance/inputs")) {
    h5::Group ins = root.group("provenance/inputs");
    for (const auto& name : ins.children()) {
      h5::Group g = ins.group(name);
      InputRef r;
      r.path = g.has_attr("path") ? g.attr_string("path") : "";
      r.kind = g.has_attr("kind") ? g.attr_string("kind") : "";
      r.uuid = g.has_attr("uuid") ? g.attr_string("uuid") : "";
      r.format_version =
          g.has_attr("format_version") ? static_cast<std::uint32_t>(g.attr_int("format_version")) : 0;
      h.inputs.push_back(r);
    }
  }
  return h;
}

// ------------------------------------------------------------------------------- writer --

ArtifactWriter::ArtifactWriter(fs::path out, std::string kind, std::uint32_t format_version,
                               std::uint32_t format_minor, const Provenance& prov)
    : out_(std::move(out)) {
  partial_ = out_;
  partial_ += fmt::format(".partial.{}", ::getpid());
  file_ = std::make_unique<h5::File>(h5::File::create(partial_));
  root_ = std::make_unique<h5::Group>(file_->root());
  header_.path = out_.string();
  header_.kind = std::move(kind);
  header_.format_version = format_version;
  header_.format_minor = format_minor;
  header_.uuid = make_uuid();
  header_.created = utc_now();
  header_.software = software_string();
  header_.command = prov.command;
  header_.config = prov.config;
  header_.inputs = prov.inputs;
  h5::Group& r = *root_;
  r.set_attr("kvlab.kind", header_.kind);
  r.set_attr("kvlab.format_version", header_.format_version);
  r.set_attr("kvlab.format_minor", header_.format_minor);
  r.set_attr("kvlab.uuid", header_.uuid);
  r.set_attr("kvlab.created", header_.created);
  r.set_attr("kvlab.software", header_.software);
  r.set_attr("kvlab.command", header_.command);
  r.set_attr("kvlab.config", header_.config);
  params_ = std::make_unique<h5::Group>(r.require_group("params"));
  h5::Group ins = r.require_group("provenance/inputs");
  for (std::size_t i = 0; i < prov.inputs.size(); ++i) {
    h5::Group g = ins.require_group(std::to_string(i));
    g.set_attr("path", prov.inputs[i].path);
    g.set_attr("kind", prov.inputs[i].kind);
    g.set_attr("uuid", prov.inputs[i].uuid);
    g.set_attr("format_version", prov.inputs[i].format_version);
  }
}

ArtifactWriter::~ArtifactWriter() {
  if (committed_) return;
  params_.reset();
  root_.reset();
  file_.reset();
  std::error_code ec;
  fs::remove(partial_, ec);
}

ArtifactHeader ArtifactWriter::commit() {
  KVLAB_THROW_IF(committed_, IoError, "{}: artifact committed twice", out_.string());
  file_->flush();
  params_.reset();
  root_.reset();
  file_->close();
  file_.reset();
  std::error_code ec;
  fs::rename(partial_, out_, ec);
  KVLAB_THROW_IF(ec, IoError, "{}: cannot rename {} into place: {}", out_.string(),
                 partial_.string(), ec.message());
  committed_ = true;
  return header_;
}

// ------------------------------------------------------------------------------- reader --

namespace {
// "out.h5.partial.1234": what a writer leaves while it runs (and a killed job leaves behind).
bool is_partial_name(const fs::path& p) {
  const std::string n = p.filename().string();
  const auto k = n.rfind(".partial.");
  if (k == std::string::npos || k + 9 >= n.size()) return false;
  return n.find_first_not_of("0123456789", k + 9) == std::string::npos;
}
}  // namespace

ArtifactReader ArtifactReader::open_any(const fs::path& path) {
  std::error_code ec;
  KVLAB_THROW_IF(is_partial_name(path), FormatError,
                 "{}: is an incomplete file left by a kvlab job that was interrupted while "
                 "writing; delete it and re-run the command that writes {}",
                 path.string(), path.stem().stem().string());
  if (!fs::exists(path, ec)) {
    const auto partials = leftover_partials(path);
    KVLAB_THROW_IF(!partials.empty(), FormatError,
                   "{}: no such file, but {} is there: the job writing it was interrupted; "
                   "re-run it (and delete the partial file)",
                   path.string(), partials.front().string());
  }
  auto f = std::make_unique<h5::File>(h5::File::open(path));
  ArtifactHeader h = read_header(*f);
  return ArtifactReader(std::move(f), std::move(h));
}

ArtifactReader ArtifactReader::open(const fs::path& path, const std::string& kind,
                                    std::uint32_t min_version, std::uint32_t max_version) {
  ArtifactReader r = open_any(path);
  const ArtifactHeader& h = r.header();
  KVLAB_THROW_IF(h.kind != kind, FormatError,
                 "{}: artifact kind is \"{}\" but this command needs \"{}\"; run 'kvlab inspect "
                 "{}' to see what it is",
                 path.string(), h.kind, kind, path.string());
  KVLAB_THROW_IF(h.format_version > max_version, FormatError,
                 "{}: {} format_version {} is newer than this kvlab supports ({}); upgrade kvlab",
                 path.string(), h.kind, h.format_version, max_version);
  KVLAB_THROW_IF(h.format_version < min_version, FormatError,
                 "{}: {} format_version {} (written by {}) is no longer readable; re-create it "
                 "with this kvlab",
                 path.string(), h.kind, h.format_version, h.software);
  return r;
}

// --------------------------------------------------------------------------- path checks --

void check_output_path(const fs::path& out, const std::vector<std::string>& inputs, bool force) {
  std::error_code ec;
  const std::string o = out.string();
  KVLAB_THROW_IF(o.empty(), UsageError, "-o/--output: empty path");
  for (const auto& in : inputs) {
    if (fs::exists(out, ec) && fs::exists(in, ec) && fs::equivalent(out, in, ec)) {
      KVLAB_THROW(UsageError,
                  "-o/--output {}: is the same file as the input {}; choose another output path",
                  o, in);
    }
  }
  KVLAB_THROW_IF(fs::is_directory(out, ec), UsageError,
                 "-o/--output {}: is a directory; give a file path", o);
  KVLAB_THROW_IF(fs::exists(out, ec) && !force, UsageError,
                 "-o/--output {}: already exists; pass --force to overwrite it", o);
  const fs::path dir = out.has_parent_path() ? out.parent_path() : fs::path(".");
  KVLAB_THROW_IF(!fs::is_directory(dir, ec), UsageError,
                 "-o/--output {}: directory {} does not exist; create it first", o, dir.string());
}

std::vector<fs::path> leftover_partials(const fs::path& out) {
  std::vector<fs::path> found;
  const fs::path dir = out.has_parent_path() ? out.parent_path() : fs::path(".");
  const std::string prefix = out.filename().string() + ".partial.";
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind(prefix, 0) == 0) found.push_back(e.path());
  }
  return found;
}

}  // namespace kvlab::core
