// The checkpoint artifact (see checkpoint.hpp and docs/formats/checkpoint.md).
#include "kvlab/core/checkpoint.hpp"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <fmt/ranges.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <mutex>

#include "kvlab/core/error.hpp"
#include "kvlab/core/tensor_io.hpp"

namespace kvlab::core {
namespace fs = std::filesystem;

namespace {

std::string to_path(const std::string& name) {
  std::string p = name;
  std::replace(p.begin(), p.end(), '.', '/');
  return p;
}

void collect(const h5::Group& g, const std::string& prefix, NamedTensors& out) {
  for (const auto& c : g.children()) {
    const std::string name = prefix.empty() ? c : prefix + "." + c;
    if (g.has_group(c)) {
      collect(g.group(c), name, out);
    } else {
      out.emplace_back(name, read_tensor(g, c));
    }
  }
}

}  // namespace

void write_named_tensors(h5::Group& root, const std::string& group, const NamedTensors& tensors) {
  h5::Group g = root.require_group(group);
  for (const auto& [name, t] : tensors) {
    KVLAB_THROW_IF(name.empty() || name.find('/') != std::string::npos, UsageError,
                   "write_named_tensors: bad tensor name \"{}\"", name);
    const std::string p = to_path(name);
    const auto slash = p.rfind('/');
    if (slash != std::string::npos) g.require_group(p.substr(0, slash));
    write_tensor(g, p, t.detach().to(at::kCPU).contiguous());
  }
}

NamedTensors read_named_tensors(const h5::Group& root, const std::string& group) {
  NamedTensors out;
  if (!root.has_group(group)) return out;
  collect(root.group(group), "", out);
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

void load_named_tensors(const NamedTensors& src, const NamedTensors& dst, const std::string& file) {
  std::map<std::string, const at::Tensor*> by_name;
  for (const auto& [n, t] : src) by_name[n] = &t;
  for (const auto& [n, t] : dst) {
    auto it = by_name.find(n);
    KVLAB_THROW_IF(it == by_name.end(), FormatError,
                   "{}: tensor \"{}\" is missing; the file was written for a different "
                   "architecture or options",
                   file, n);
    const at::Tensor& s = *it->second;
    KVLAB_THROW_IF(s.sizes() != t.sizes(), FormatError,
                   "{}: tensor \"{}\" has shape {} but the model expects {}; the file was written "
                   "for a different architecture or width",
                   file, n, fmt::join(s.sizes(), "x"), fmt::join(t.sizes(), "x"));
    c10::NoGradGuard ng;
    t.copy_(s.to(t.scalar_type()));
    by_name.erase(it);
  }
  KVLAB_THROW_IF(!by_name.empty(), FormatError,
                 "{}: {} tensor(s) the model does not have (first: \"{}\"); the file was written "
                 "for a different architecture or options",
                 file, by_name.size(), by_name.begin()->first);
}

void write_checkpoint(const fs::path& path, const Checkpoint& ck, const Provenance& prov) {
  ArtifactWriter w(path, "checkpoint", kCheckpointVersion, 0, prov);
  h5::Group& p = w.params();
  p.set_attr("trainer", ck.trainer);
  p.set_attr("stage", ck.stage);
  p.set_attr("epoch", ck.epoch);
  p.set_attr("step", ck.step);
  p.set_attr("step_in_epoch", ck.step_in_epoch);
  p.set_attr("options_json", ck.options_json);
  write_named_tensors(w.root(), "model", ck.model);
  write_named_tensors(w.root(), "optimizer", ck.optimizer);
  h5::Group rng = w.root().require_group("rng");
  if (ck.torch_rng.defined()) write_tensor(rng, "torch_cpu", ck.torch_rng.contiguous());
  h5::Group st = w.root().require_group("state");
  for (const auto& [k, v] : ck.scalars) st.set_attr(k, v);
  for (const auto& [k, v] : ck.text) st.set_attr(k, v);
  w.commit();
}

Checkpoint read_checkpoint(const fs::path& path, const std::string& trainer) {
  ArtifactReader r = ArtifactReader::open(path, "checkpoint", kCheckpointVersion, kCheckpointVersion);
  Checkpoint ck;
  const h5::Group p = r.params();
  ck.trainer = p.attr_string("trainer");
  KVLAB_THROW_IF(!trainer.empty() && ck.trainer != trainer, FormatError,
                 "{}: checkpoint was written by {} but this is {}; pass a {} checkpoint to "
                 "--resume",
                 path.string(), ck.trainer, trainer, trainer);
  ck.stage = p.attr_string("stage");
  ck.epoch = p.attr_int("epoch");
  ck.step = p.attr_int("step");
  ck.step_in_epoch = p.attr_int("step_in_epoch");
  ck.options_json = p.attr_string("options_json");
  KVLAB_THROW_IF(ck.epoch < 0 || ck.step < 0 || ck.step_in_epoch < 0, FormatError,
                 "{}: negative epoch/step counters ({}, {}, {})", path.string(), ck.epoch, ck.step,
                 ck.step_in_epoch);
  const h5::Group root = r.root();
  KVLAB_THROW_IF(!root.has_group("model"), FormatError,
                 "{}: group /model is missing; the checkpoint is incomplete", path.string());
  ck.model = read_named_tensors(root, "model");
  ck.optimizer = read_named_tensors(root, "optimizer");
  if (root.has_group("rng") && root.group("rng").has_dataset("torch_cpu"))
    ck.torch_rng = read_tensor(root.group("rng"), "torch_cpu", at::kByte);
  if (root.has_group("state")) {
    const h5::Group st = root.group("state");
    for (const auto& n : st.attr_names()) {
      const h5::AttrValue v = st.attr(n);
      if (const auto* d = std::get_if<double>(&v)) ck.scalars[n] = *d;
      else if (const auto* i = std::get_if<std::int64_t>(&v)) ck.scalars[n] = static_cast<double>(*i);
      else if (const auto* s = std::get_if<std::string>(&v)) ck.text[n] = *s;
    }
  }
  return ck;
}

std::optional<fs::path> resolve_resume(const std::string& resume, const fs::path& default_path) {
  std::error_code ec;
  if (resume.empty()) return std::nullopt;
  if (resume == "auto") {
    if (fs::exists(default_path, ec)) return default_path;
    return std::nullopt;
  }
  KVLAB_THROW_IF(!fs::exists(resume, ec), UsageError,
                 "--resume {}: no such checkpoint; pass an existing checkpoint file or 'auto'",
                 resume);
  return fs::path(resume);
}

at::Tensor torch_rng_state() {
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_torch_rng_state(const at::Tensor& state) {
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

}  // namespace kvlab::core
