// The `model` artifact: reading, writing and the streaming writer importers use.
// Layout and attribute list: docs/formats/model.md (test_model_io.cpp checks the writer emits
// every key listed there).
#include "kvlab/llm/model_io.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <set>

#include "kvlab/core/error.hpp"
#include "kvlab/core/schema.hpp"
#include "kvlab/core/tensor_io.hpp"

namespace kvlab::llm {
namespace {

std::vector<std::int64_t> int_list(const h5::Group& g, const std::string& name) {
  const h5::AttrValue v = g.attr(name);
  if (const auto* i = std::get_if<std::int64_t>(&v)) return {*i};
  if (const auto* l = std::get_if<std::vector<std::int64_t>>(&v)) return *l;
  KVLAB_THROW(FormatError, "{}:{}: attribute '{}' should be a list of integers but is {}", g.file(),
              g.path(), name, h5::attr_to_string(v));
}

std::vector<std::int64_t> identity_layers(std::int64_t n) {
  std::vector<std::int64_t> v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = i;
  return v;
}

const char* weight_dtype_name(h5::DType t) {
  switch (t) {
    case h5::DType::f32: return "float32";
    case h5::DType::f16: return "float16";
    case h5::DType::bf16: return "bfloat16";
    default: return nullptr;
  }
}

}  // namespace

void write_model_params(h5::Group& p, const ModelConfig& c, const std::string& dtype,
                        const std::string& hf_config,
                        const std::vector<std::int64_t>& original_layer_indices) {
  p.set_attr("arch", arch_name(c.arch));
  p.set_attr("vocab_size", c.vocab_size);
  p.set_attr("hidden_size", c.hidden_size);
  p.set_attr("intermediate_size", c.intermediate_size);
  p.set_attr("num_hidden_layers", c.num_hidden_layers);
  p.set_attr("num_attention_heads", c.num_attention_heads);
  p.set_attr("num_key_value_heads", c.num_key_value_heads);
  p.set_attr("head_dim", c.head_dim);
  p.set_attr("max_position_embeddings", c.max_position_embeddings);
  p.set_attr("rms_norm_eps", c.rms_norm_eps);
  p.set_attr("rope_theta", c.rope_theta);
  p.set_attr("rope_scaling_type", c.rope_scaling.type);
  p.set_attr("rope_scaling_factor", c.rope_scaling.factor);
  p.set_attr("rope_scaling_low_freq_factor", c.rope_scaling.low_freq_factor);
  p.set_attr("rope_scaling_high_freq_factor", c.rope_scaling.high_freq_factor);
  p.set_attr("rope_scaling_original_max_position_embeddings",
             c.rope_scaling.original_max_position_embeddings);
  p.set_attr("tie_word_embeddings", c.tie_word_embeddings);
  p.set_attr("attention_bias", c.attention_bias);
  // Optional fields: -1 stands for "absent" so every attribute is always present (simpler for
  // h5py users and for the schema check than optional attributes).
  p.set_attr("sliding_window", c.sliding_window ? *c.sliding_window : std::int64_t{-1});
  p.set_attr("bos_token_id", c.bos_token_id ? *c.bos_token_id : std::int64_t{-1});
  p.set_attr("eos_token_ids", c.eos_token_ids.empty() ? std::vector<std::int64_t>{-1}
                                                     : c.eos_token_ids);
  p.set_attr("torch_dtype", c.torch_dtype);
  p.set_attr("dtype", dtype);
  p.set_attr("hf_config", hf_config.empty() ? c.to_hf_json().dump(2) : hf_config);
  p.set_attr("original_layer_indices", original_layer_indices.empty()
                                           ? identity_layers(c.num_hidden_layers)
                                           : original_layer_indices);
}

ModelConfig read_model_config(const h5::Group& p) {
  ModelConfig c;
  const std::string where = fmt::format("{}:{}", p.file(), p.path());
  const std::string arch = p.attr_string("arch");
  if (arch == "llama") c.arch = Arch::llama;
  else if (arch == "mistral") c.arch = Arch::mistral;
  else if (arch == "qwen2") c.arch = Arch::qwen2;
  else
    KVLAB_THROW(FormatError, "{}: arch \"{}\" is not one this kvlab runs (llama, mistral, qwen2)",
                where, arch);
  c.vocab_size = p.attr_int("vocab_size");
  c.hidden_size = p.attr_int("hidden_size");
  c.intermediate_size = p.attr_int("intermediate_size");
  c.num_hidden_layers = p.attr_int("num_hidden_layers");
  c.num_attention_heads = p.attr_int("num_attention_heads");
  c.num_key_value_heads = p.attr_int("num_key_value_heads");
  c.head_dim = p.attr_int("head_dim");
  c.max_position_embeddings = p.attr_int("max_position_embeddings");
  c.rms_norm_eps = p.attr_double("rms_norm_eps");
  c.rope_theta = p.attr_double("rope_theta");
  c.rope_scaling.type = p.attr_string("rope_scaling_type");
  c.rope_scaling.factor = p.attr_double("rope_scaling_factor");
  c.rope_scaling.low_freq_factor = p.attr_double("rope_scaling_low_freq_factor");
  c.rope_scaling.high_freq_factor = p.attr_double("rope_scaling_high_freq_factor");
  c.rope_scaling.original_max_position_embeddings =
      p.attr_int("rope_scaling_original_max_position_embeddings");
  KVLAB_THROW_IF(c.rope_scaling.type != "none" && c.rope_scaling.type != "llama3" &&
                     c.rope_scaling.type != "linear",
                 FormatError, "{}: rope_scaling_type \"{}\" is not supported (none, llama3, linear)",
                 where, c.rope_scaling.type);
  c.tie_word_embeddings = p.attr_int("tie_word_embeddings") != 0;
  c.attention_bias = p.attr_int("attention_bias") != 0;
  if (const std::int64_t sw = p.attr_int("sliding_window"); sw >= 0) c.sliding_window = sw;
  if (const std::int64_t b = p.attr_int("bos_token_id"); b >= 0) c.bos_token_id = b;
  for (std::int64_t e : int_list(p, "eos_token_ids"))
    if (e >= 0) c.eos_token_ids.push_back(e);
  c.torch_dtype = p.attr_string("torch_dtype");
  c.validate(where);
  return c;
}

void check_model_tensors(const ModelConfig& c,
                         const std::map<std::string, std::vector<std::int64_t>>& shapes,
                         const std::string& where) {
  std::vector<std::string> problems;
  std::set<std::string> expected_names;
  for (const auto& [name, shape] : c.expected_tensors()) {
    expected_names.insert(name);
    const auto it = shapes.find(name);
    if (it == shapes.end()) {
      problems.push_back(fmt::format("tensor {} is missing", name));
    } else if (it->second != shape) {
      problems.push_back(fmt::format("tensor {} has shape {} but the config needs {}", name,
                                     h5::shape_str(it->second), h5::shape_str(shape)));
    }
  }
  for (const auto& [name, shape] : shapes)
    if (!expected_names.count(name))
      problems.push_back(fmt::format("tensor {} {} is not part of a {} model with {} layers{}",
                                     name, h5::shape_str(shape), arch_name(c.arch),
                                     c.num_hidden_layers,
                                     c.tie_word_embeddings ? " and tied embeddings" : ""));
  if (problems.empty()) return;
  const std::size_t shown = std::min<std::size_t>(problems.size(), 4);
  std::vector<std::string> first(problems.begin(), problems.begin() + static_cast<long>(shown));
  KVLAB_THROW(FormatError, "{}: {}{}; the weights do not match the config (is config.json from the same checkpoint?)",
              where, fmt::join(first, "; "),
              problems.size() > shown ? fmt::format(" (and {} more problems)", problems.size() - shown)
                                      : std::string());
}

// ------------------------------------------------------------------------------ reading --

namespace {
ModelFile params_of(const core::ArtifactReader& r, const std::filesystem::path& path) {
  ModelFile m;
  m.header = r.header();
  const h5::Group p = r.params();
  m.config = read_model_config(p);
  m.hf_config = p.has_attr("hf_config") ? p.attr_string("hf_config") : std::string();
  m.original_layer_indices = int_list(p, "original_layer_indices");
  m.tokenizer = read_tokenizer(r.root());
  KVLAB_THROW_IF(static_cast<std::int64_t>(m.original_layer_indices.size()) !=
                     m.config.num_hidden_layers,
                 FormatError,
                 "{}: original_layer_indices lists {} blocks but num_hidden_layers is {}; the file "
                 "is inconsistent, re-create it",
                 path.string(), m.original_layer_indices.size(), m.config.num_hidden_layers);
  return m;
}
}  // namespace

ModelFile read_model_params(const std::filesystem::path& path) {
  return params_of(core::ArtifactReader::open(path, kModelKind, 1, kModelFormatVersion), path);
}

ModelFile read_model(const std::filesystem::path& path) {
  auto r = core::ArtifactReader::open(path, kModelKind, 1, kModelFormatVersion);
  ModelFile m = params_of(r, path);
  const h5::Group root = r.root();
  KVLAB_THROW_IF(!root.has_group("weights"), FormatError,
                 "{}: model artifact without a /weights group; the file is incomplete, re-create it",
                 path.string());
  const h5::Group w = root.group("weights");
  std::map<std::string, std::vector<std::int64_t>> shapes;
  for (const auto& name : w.children()) shapes[name] = w.info(name).shape;
  m.linears = read_linears(root, path.string());  // packed layers (linear_registry.hpp)
  auto all_shapes = shapes;
  add_linear_shapes(m.linears, all_shapes);
  check_model_tensors(m.config, all_shapes, path.string() + ":/weights");
  for (const auto& [name, shape] : shapes) {
    const h5::DatasetInfo info = w.info(name);
    KVLAB_THROW_IF(!info.dtype || !weight_dtype_name(*info.dtype), FormatError,
                   "{}:/weights/{}: stored as {} but weights must be float32, bfloat16 or float16",
                   path.string(), name, info.type_desc);
    m.weights[name] = core::read_tensor(w, name);
  }
  return m;
}

// ------------------------------------------------------------------------------- schema --

void add_model_schema(core::SchemaRegistry& reg) {
  core::Schema s;
  s.kind = kModelKind;
  s.min_version = 1;
  s.max_version = kModelFormatVersion;
  s.doc = "docs/formats/model.md";
  using core::AttrType;
  for (const char* a : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                        "num_attention_heads", "num_key_value_heads", "head_dim",
                        "max_position_embeddings", "rope_scaling_original_max_position_embeddings",
                        "tie_word_embeddings", "attention_bias", "sliding_window", "bos_token_id"})
    s.params.push_back({a, AttrType::integer});
  for (const char* a : {"rms_norm_eps", "rope_theta", "rope_scaling_factor",
                        "rope_scaling_low_freq_factor", "rope_scaling_high_freq_factor"})
    s.params.push_back({a, AttrType::number});
  for (const char* a : {"arch", "rope_scaling_type", "torch_dtype", "dtype", "hf_config"})
    s.params.push_back({a, AttrType::string});
  s.params.push_back({"eos_token_ids", AttrType::integers});
  s.params.push_back({"original_layer_indices", AttrType::integers});
  s.datasets = {{"weights/*", {h5::DType::f32, h5::DType::bf16, h5::DType::f16}, -1}};
  s.check = [](const core::ArtifactReader& r, std::vector<std::string>& problems) {
    try {
      const ModelConfig c = read_model_config(r.params());
      const h5::Group w = r.root().group("weights");
      std::map<std::string, std::vector<std::int64_t>> shapes;
      for (const auto& name : w.children()) shapes[name] = w.info(name).shape;
      add_linear_shapes(read_linears(r.root(), "/linears"), shapes);
      check_model_tensors(c, shapes, "/weights");
      const auto layers = int_list(r.params(), "original_layer_indices");
      if (static_cast<std::int64_t>(layers.size()) != c.num_hidden_layers)
        problems.push_back(fmt::format("original_layer_indices has {} entries for {} layers",
                                       layers.size(), c.num_hidden_layers));
    } catch (const Error& e) {
      problems.push_back(e.what());
    }
  };
  reg.add(std::move(s));
}

// ------------------------------------------------------------------------------ writing --

ModelWriter::ModelWriter(const std::filesystem::path& path, const ModelConfig& c,
                         const core::Provenance& prov, std::string hf_config,
                         std::vector<std::int64_t> original_layer_indices)
    : w_(path, kModelKind, kModelFormatVersion, kModelFormatMinor, prov),
      config_(c),
      layers_(std::move(original_layer_indices)),
      hf_config_(std::move(hf_config)) {
  c.validate(path.string());
  if (layers_.empty()) layers_ = identity_layers(c.num_hidden_layers);
  KVLAB_THROW_IF(static_cast<std::int64_t>(layers_.size()) != c.num_hidden_layers, UsageError,
                 "{}: {} original_layer_indices for {} layers", path.string(), layers_.size(),
                 c.num_hidden_layers);
  for (const auto& [name, shape] : c.expected_tensors()) expected_[name] = shape;
  w_.root().require_group("weights");
}

void ModelWriter::add(const std::string& name, h5::DType t, const std::vector<std::int64_t>& shape,
                      const void* data) {
  const auto it = expected_.find(name);
  KVLAB_THROW_IF(it == expected_.end(), FormatError,
                 "tensor {} {} is not part of a {} model with {} layers", name,
                 h5::shape_str(shape), arch_name(config_.arch), config_.num_hidden_layers);
  KVLAB_THROW_IF(it->second != shape, FormatError,
                 "tensor {} has shape {} but the config needs {}", name, h5::shape_str(shape),
                 h5::shape_str(it->second));
  KVLAB_THROW_IF(added_.count(name), FormatError, "tensor {} is given twice", name);
  const char* dn = weight_dtype_name(t);
  KVLAB_THROW_IF(!dn, UsageError, "tensor {}: element type {} is not a weight type", name,
                 h5::dtype_name(t));
  if (dtype_.empty()) dtype_ = dn;
  else if (dtype_ != dn) dtype_ = "mixed";
  h5::Group w = w_.root().group("weights");
  w.write(name, t, shape, data);
  added_[name] = shape;
}

void ModelWriter::add(const std::string& name, const at::Tensor& t) {
  const at::Tensor c = t.detach().to(at::kCPU).contiguous();
  add(name, core::h5_dtype(c.scalar_type()), std::vector<std::int64_t>(c.sizes().begin(), c.sizes().end()),
      c.data_ptr());
}

core::ArtifactHeader ModelWriter::commit() {
  check_model_tensors(config_, added_, w_.partial_path().string());
  write_model_params(w_.params(), config_, dtype_, hf_config_, layers_);
  return w_.commit();
}

core::ArtifactHeader write_model(const std::filesystem::path& path, const ModelFile& m,
                                 const core::Provenance& prov) {
  ModelWriter w(path, m.config, prov, m.hf_config, m.original_layer_indices);
  for (const auto& [name, t] : m.weights) w.add(name, t);
  if (m.tokenizer) write_tokenizer(w.root(), *m.tokenizer);
  return w.commit();
}

}  // namespace kvlab::llm
