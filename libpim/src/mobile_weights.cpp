// Weights from a diffusers/transformers safetensors checkpoint for mobile-plan export
// (mobile_weights.hpp).
#include "kvlab/pim/mobile_weights.hpp"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstring>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "kvlab/core/error.hpp"

namespace kvlab::pim {

using core::NetDesc;
using core::NetLayer;
using core::NetOp;
namespace fs = std::filesystem;

namespace {

std::string src_of(const NetLayer& l) {
  auto it = l.attrs.find("src");
  return it == l.attrs.end() ? l.name : it->second;
}

std::string shape_text(const std::vector<std::int64_t>& s) {
  return fmt::format("[{}]", fmt::join(s, ", "));
}

std::int64_t numel(const std::vector<std::int64_t>& s) {
  std::int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

const char* subdir_of(const std::string& component) {
  if (component == "text_encoder") return "text_encoder";
  if (component == "unet") return "unet";
  if (component == "vae_decoder") return "vae";
  KVLAB_THROW(UsageError, "unknown component \"{}\" (text_encoder, unet or vae_decoder)", component);
}

const std::vector<std::string>& checkpoint_names() {
  static const std::vector<std::string> names = {
      "diffusion_pytorch_model.safetensors",       "model.safetensors",
      "diffusion_pytorch_model.safetensors.index.json", "model.safetensors.index.json",
      "diffusion_pytorch_model.fp16.safetensors",  "model.fp16.safetensors",
      "diffusion_pytorch_model.fp16.safetensors.index.json", "model.fp16.safetensors.index.json"};
  return names;
}

std::optional<fs::path> checkpoint_in(const fs::path& dir) {
  for (const auto& n : checkpoint_names())
    if (fs::is_regular_file(dir / n)) return dir / n;
  return std::nullopt;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// The graph name of a checkpoint tensor, as diffusers/transformers map it on load; nullopt: a
// tensor the component ignores. `deprecated` is set for the old VAE attention names.
std::optional<std::string> graph_name(const std::string& component, std::string name, bool& deprecated) {
  deprecated = false;
  if (component == "text_encoder") {
    if (starts_with(name, "text_model.")) name = name.substr(11);
    if (name == "embeddings.position_ids") return std::nullopt;  // a buffer, not a parameter
    return name;
  }
  if (component == "vae_decoder") {
    if (starts_with(name, "encoder.") || starts_with(name, "quant_conv.")) return std::nullopt;
    // diffusers' _convert_deprecated_attention_blocks: query/key/value/proj_attn of attention
    // blocks are to_q/to_k/to_v/to_out.0.
    static const std::pair<const char*, const char*> kOld[] = {
        {".query.", ".to_q."}, {".key.", ".to_k."}, {".value.", ".to_v."}, {".proj_attn.", ".to_out.0."}};
    if (name.find(".attentions.") != std::string::npos)
      for (const auto& [from, to] : kOld) {
        const auto pos = name.find(from);
        if (pos != std::string::npos) {
          name.replace(pos, std::strlen(from), to);
          deprecated = true;
          break;
        }
      }
  }
  return name;
}

}  // namespace

std::vector<ParamSpec> component_params(const NetDesc& net) {
  std::vector<ParamSpec> out;
  std::map<std::string, std::size_t> index;
  auto add = [&](const std::string& name, std::vector<std::int64_t> shape, const NetLayer& l) {
    auto it = index.find(name);
    if (it == index.end()) {
      index[name] = out.size();
      out.push_back({name, std::move(shape)});
      return;
    }
    // The second GEGLU half: the fused projection holds the larger row range.
    auto& s = out[it->second].shape;
    KVLAB_THROW_IF(s.size() != shape.size(),
                   FormatError,
                   "layer \"{}\": parameter \"{}\" is shared with a different rank",
                   l.name,
                   name);
    if (!s.empty()) s[0] = std::max(s[0], shape[0]);
  };
  for (const NetLayer& l : net.layers) {
    const std::string s = src_of(l);
    switch (l.op) {
      case NetOp::input:
        if (l.attrs.count("params")) {
          const std::int64_t d = l.shape.back();
          add(s + ".weight", {std::stoll(l.attrs.at("params")) / d, d}, l);
        }
        break;
      case NetOp::conv:
        add(s + ".weight", {l.out_channels, l.in_channels / l.groups, l.kernel_h, l.kernel_w}, l);
        if (l.bias) add(s + ".bias", {l.out_channels}, l);
        break;
      case NetOp::fc: {
        std::int64_t rows = l.out_channels;
        if (l.attrs.count("split")) {  // "a:b": rows [a, b) of the fused projection
          const std::string& sp = l.attrs.at("split");
          rows = std::stoll(sp.substr(sp.find(':') + 1));
        }
        add(s + ".weight", {rows, l.in_channels}, l);
        if (l.bias) add(s + ".bias", {rows}, l);
        break;
      }
      case NetOp::norm: {
        const std::int64_t c = l.fn == "group"     ? l.shape[0]
                               : l.fn == "group4d" ? l.shape[0] * l.shape[1]
                                                   : l.shape.back();
        add(s + ".weight", {c}, l);
        add(s + ".bias", {c}, l);
        break;
      }
      default:
        break;
    }
  }
  return out;
}

fs::path find_component_checkpoint(const fs::path& path, const std::string& component, bool single_component) {
  const char* sub = subdir_of(component);
  KVLAB_THROW_IF(!fs::exists(path), UsageError, "--weights {}: no such file or directory", path.string());
  if (!fs::is_directory(path)) {
    KVLAB_THROW_IF(!single_component,
                   UsageError,
                   "--weights {} is one file; pass --component (text_encoder, unet or vae_decoder), "
                   "or a pipeline directory with text_encoder/, unet/, vae/",
                   path.string());
    return path;
  }
  if (auto f = checkpoint_in(path / sub)) return *f;
  if (single_component)
    if (auto f = checkpoint_in(path)) return *f;
  KVLAB_THROW(UsageError,
              "--weights {}: no checkpoint for {} (looked for {}/{} and the other names: {}{})",
              path.string(),
              component,
              sub,
              checkpoint_names().front(),
              fmt::join(checkpoint_names(), ", "),
              single_component ? "; also directly in the directory" : "");
}

ComponentWeights ComponentWeights::open(const fs::path& file,
                                        const std::string& component,
                                        const std::vector<ParamSpec>& expected) {
  ComponentWeights w;
  w.source_ = file.string();
  std::vector<fs::path> shard_paths;
  if (ends_with(file.string(), ".json")) {
    std::ifstream f(file);
    KVLAB_THROW_IF(!f, IoError, "{}: cannot open", file.string());
    nlohmann::json j;
    try {
      f >> j;
    } catch (const nlohmann::json::exception& e) {
      KVLAB_THROW(FormatError, "{}: not valid JSON ({})", file.string(), e.what());
    }
    KVLAB_THROW_IF(!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object(),
                   FormatError,
                   "{}: a sharded-checkpoint index needs a \"weight_map\" object",
                   file.string());
    std::set<std::string> seen;
    for (const auto& [name, shard] : j["weight_map"].items()) {
      KVLAB_THROW_IF(!shard.is_string(),
                     FormatError,
                     "{}: weight_map[\"{}\"] is not a file name",
                     file.string(),
                     name);
      const std::string s = shard.get<std::string>();
      KVLAB_THROW_IF(s.find('/') != std::string::npos,
                     FormatError,
                     "{}: shard \"{}\" is not a file in the index's directory",
                     file.string(),
                     s);
      if (seen.insert(s).second) shard_paths.push_back(file.parent_path() / s);
    }
  } else {
    shard_paths.push_back(file);
  }
  for (const auto& p : shard_paths) w.shards_.push_back(llm::SafetensorsFile::open(p));

  std::map<std::string, const ParamSpec*> want;
  for (const auto& p : expected) want[p.name] = &p;
  std::vector<std::string> problems;
  std::set<std::string> reported;  // graph names with a shape or dtype problem
  for (std::size_t s = 0; s < w.shards_.size(); ++s) {
    const auto& ts = w.shards_[s].tensors();
    for (std::size_t i = 0; i < ts.size(); ++i) {
      const auto& t = ts[i];
      bool deprecated = false;
      const auto name = graph_name(component, t.name, deprecated);
      if (!name) {
        ++w.ignored_;
        continue;
      }
      auto it = want.find(*name);
      if (it == want.end()) {
        problems.push_back(fmt::format("unexpected tensor \"{}\" (shape {}): the {} graph has no such "
                                       "parameter",
                                       t.name,
                                       shape_text(t.shape),
                                       component));
        continue;
      }
      KVLAB_THROW_IF(w.where_.count(*name),
                     FormatError,
                     "{}: tensor \"{}\" appears twice (as \"{}\")",
                     file.string(),
                     *name,
                     t.name);
      const auto& e = it->second->shape;
      bool ok = t.shape == e;
      // The deprecated VAE attention projections were stored as 1x1 convolutions.
      if (!ok && deprecated && t.shape.size() == 4 && e.size() == 2 && t.shape[0] == e[0] &&
          t.shape[1] == e[1] && t.shape[2] == 1 && t.shape[3] == 1)
        ok = true;
      if (!ok) {
        reported.insert(*name);
        problems.push_back(fmt::format("tensor \"{}\": expected shape {}, found {}",
                                       t.name,
                                       shape_text(e),
                                       shape_text(t.shape)));
        continue;
      }
      if (t.dtype != "F32" && t.dtype != "F16" && t.dtype != "BF16") {
        reported.insert(*name);
        problems.push_back(fmt::format("tensor \"{}\": dtype {} (export reads F32, F16 and BF16)",
                                       t.name,
                                       t.dtype));
        continue;
      }
      w.where_[*name] = {s, i};
    }
  }
  for (const auto& p : expected)
    if (!w.where_.count(p.name) && !reported.count(p.name))
      problems.push_back(fmt::format("missing tensor \"{}\" (expected shape {})", p.name, shape_text(p.shape)));
  if (!problems.empty()) {
    std::string msg;
    const std::size_t shown = std::min<std::size_t>(problems.size(), 20);
    for (std::size_t i = 0; i < shown; ++i) msg += "\n  " + problems[i];
    if (shown < problems.size()) msg += fmt::format("\n  ... and {} more", problems.size() - shown);
    KVLAB_THROW(FormatError,
                "{}: does not match the {} graph built from the model's config.json ({} problem(s)):{}",
                file.string(),
                component,
                problems.size(),
                msg);
  }
  return w;
}

std::vector<float> ComponentWeights::read(const std::string& name) const {
  auto it = where_.find(name);
  KVLAB_THROW_IF(it == where_.end(), FormatError, "{}: no tensor for parameter \"{}\"", source_, name);
  const auto& f = shards_[it->second.shard];
  const auto& t = f.tensors()[it->second.tensor];
  const std::size_t n = static_cast<std::size_t>(numel(t.shape));
  std::vector<float> out(n);
  if (t.dtype == "F32") {
    f.read_raw(t, out.data());
  } else if (t.dtype == "F16") {
    std::vector<c10::Half> raw(n);
    f.read_raw(t, raw.data());
    for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<float>(raw[i]);
  } else if (t.dtype == "BF16") {
    std::vector<c10::BFloat16> raw(n);
    f.read_raw(t, raw.data());
    for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<float>(raw[i]);
  } else {
    KVLAB_THROW(FormatError, "{}: tensor \"{}\" has dtype {}", source_, t.name, t.dtype);
  }
  return out;
}

}  // namespace kvlab::pim
