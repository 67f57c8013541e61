// The registry of non-dense Linear kinds and the /linears group of a `model` artifact
// (docs/formats/model.md, "Packed linear layers").
#include "kvlab/llm/linear_registry.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <mutex>

#include "kvlab/core/error.hpp"
#include "kvlab/core/tensor_io.hpp"
#include "kvlab/llm/model.hpp"
#include "kvlab/llm/model_io.hpp"
#include "kvlab/llm/tokenizer.hpp"

namespace kvlab::llm {
namespace {

struct Entry {
  LinearLoader load;
  LinearSaver save;
};

std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
std::map<std::string, Entry>& registry() {
  static std::map<std::string, Entry> r;
  return r;
}

Entry find_entry(const std::string& kind) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  const auto it = registry().find(kind);
  return it == registry().end() ? Entry{} : it->second;
}

// Attribute names that are part of every record, not kind-specific integers.
bool reserved_attr(const std::string& a) {
  return a == "kind" || a == "in_features" || a == "out_features";
}

}  // namespace

void register_linear_kind(const std::string& kind, LinearLoader loader, LinearSaver saver) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  registry()[kind] = Entry{std::move(loader), std::move(saver)};
}

bool linear_kind_registered(const std::string& kind) {
  return static_cast<bool>(find_entry(kind).load);
}

std::shared_ptr<Linear> make_linear(const LinearRecord& r, at::Device dev, c10::ScalarType dtype,
                                    const std::string& where) {
  const Entry e = find_entry(r.kind);
  KVLAB_THROW_IF(!e.load, FormatError,
                 "{}: linear layer kind \"{}\" is not known to this program (known: the layers "
                 "its libraries register, e.g. binary-mos from libbinary); use the kvlab binary "
                 "or link libbinary and call binary::register_linear_kinds()",
                 where, r.kind);
  auto l = e.load(r, dev, dtype);
  KVLAB_THROW_IF(!l || l->in_features() != r.in_features || l->out_features() != r.out_features,
                 FormatError, "{}: the {} layer does not have the stored shape [{}, {}]", where,
                 r.kind, r.out_features, r.in_features);
  return l;
}

LinearRecord linear_record(const Linear& l) {
  const Entry e = find_entry(l.kind());
  KVLAB_THROW_IF(!e.save, UsageError, "linear layer kind \"{}\" cannot be saved (no registered "
                 "saver); dense layers go to /weights", l.kind());
  return e.save(l);
}

std::map<std::string, LinearRecord> read_linears(const h5::Group& root, const std::string& where) {
  std::map<std::string, LinearRecord> out;
  if (!root.has_group("linears")) return out;
  const h5::Group g = root.group("linears");
  for (const auto& prefix : g.children()) {
    KVLAB_THROW_IF(!g.has_group(prefix), FormatError,
                   "{}:/linears/{}: expected a group (one per packed layer), found a dataset; "
                   "re-create the file with kvlab binarize", where, prefix);
    const h5::Group lg = g.group(prefix);
    LinearRecord r;
    r.kind = lg.attr_string("kind");
    r.in_features = lg.attr_int("in_features");
    r.out_features = lg.attr_int("out_features");
    KVLAB_THROW_IF(r.in_features <= 0 || r.out_features <= 0, FormatError,
                   "{}:/linears/{}: in_features {} / out_features {} must be positive", where,
                   prefix, r.in_features, r.out_features);
    for (const auto& a : lg.attr_names()) {
      if (reserved_attr(a)) continue;
      const h5::AttrValue v = lg.attr(a);
      if (const auto* i = std::get_if<std::int64_t>(&v)) r.ints[a] = *i;
    }
    for (const auto& d : lg.children())
      if (lg.has_dataset(d)) r.tensors[d] = core::read_tensor(lg, d);
    out[prefix] = std::move(r);
  }
  return out;
}

void write_linear(h5::Group& root, const std::string& prefix, const LinearRecord& r) {
  h5::Group lg = root.require_group("linears").require_group(prefix);
  lg.set_attr("kind", r.kind);
  lg.set_attr("in_features", r.in_features);
  lg.set_attr("out_features", r.out_features);
  for (const auto& [k, v] : r.ints) lg.set_attr(k, v);
  for (const auto& [k, t] : r.tensors) core::write_tensor(lg, k, t.detach().to(at::kCPU).contiguous());
}

void add_linear_shapes(const std::map<std::string, LinearRecord>& records,
                       std::map<std::string, std::vector<std::int64_t>>& shapes) {
  for (const auto& [prefix, r] : records) {
    shapes[prefix + ".weight"] = {r.out_features, r.in_features};
    if (r.tensors.count("bias")) shapes[prefix + ".bias"] = {r.out_features};
  }
}

core::ArtifactHeader write_model_with_linears(const std::filesystem::path& path, const Model& m,
                                              const core::Provenance& prov,
                                              const std::string& hf_config,
                                              const std::function<void(h5::Group&)>& extra) {
  // Records first (they fail early for an unsaveable kind, before any file exists).
  std::map<std::string, LinearRecord> records;
  for (std::int64_t i = 0; i < m.num_layers(); ++i) {
    const Block& b = m.blocks()[static_cast<std::size_t>(i)];
    const std::string p = fmt::format("model.layers.{}.", i);
    const std::pair<const char*, const std::shared_ptr<Linear>*> lins[] = {
        {"self_attn.q_proj", &b.q_proj}, {"self_attn.k_proj", &b.k_proj},
        {"self_attn.v_proj", &b.v_proj}, {"self_attn.o_proj", &b.o_proj},
        {"mlp.gate_proj", &b.gate_proj}, {"mlp.up_proj", &b.up_proj},
        {"mlp.down_proj", &b.down_proj}};
    for (const auto& [n, l] : lins)
      if ((*l)->kind() != "dense") records[p + n] = linear_record(**l);
  }
  // Dense tensors: the model's own export, minus what the packed layers replace. (to_file()
  // materialises dense_weight() of the packed layers too; they are dropped right away.)
  ModelFile f = m.to_file();
  std::map<std::string, std::vector<std::int64_t>> shapes;
  core::ArtifactWriter w(path, kModelKind, kModelFormatVersion, /*format_minor=*/1, prov);
  h5::Group weights = w.root().require_group("weights");
  std::string dtype;
  for (const auto& [name, t] : f.weights) {
    const auto dot = name.rfind('.');
    if (records.count(name.substr(0, dot))) continue;
    core::write_tensor(weights, name, t);
    shapes[name] = t.sizes().vec();
    const std::string dn = dtype_name(t.scalar_type());
    dtype = dtype.empty() ? dn : (dtype == dn ? dtype : "mixed");
  }
  for (const auto& [prefix, r] : records) write_linear(w.root(), prefix, r);
  add_linear_shapes(records, shapes);
  check_model_tensors(f.config, shapes, w.partial_path().string());
  write_model_params(w.params(), f.config, dtype, hf_config.empty() ? f.hf_config : hf_config,
                     f.original_layer_indices);
  // The tokenizer travels with the weights (docs/formats/model.md), as write_model does.
  if (f.tokenizer) write_tokenizer(w.root(), *f.tokenizer);
  if (extra) extra(w.root());
  return w.commit();
}

}  // namespace kvlab::llm
