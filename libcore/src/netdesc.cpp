#include "kvlab/core/netdesc.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>

#include "kvlab/core/error.hpp"

namespace kvlab::core {

using json = nlohmann::json;

namespace {

struct OpAlias {
  const char* name;
  NetOp op;
  const char* fn;
};

// Canonical names first (net_op_name returns these), then aliases.
constexpr OpAlias kOps[] = {
    {"input", NetOp::input, ""},
    {"conv", NetOp::conv, ""},
    {"fc", NetOp::fc, ""},
    {"matmul", NetOp::matmul, ""},
    {"pool", NetOp::pool, ""},
    {"add", NetOp::add, ""},
    {"mul", NetOp::mul, ""},
    {"concat", NetOp::concat, ""},
    {"act", NetOp::act, ""},
    {"norm", NetOp::norm, ""},
    {"softmax", NetOp::softmax, ""},
    {"reshape", NetOp::reshape, ""},
    // aliases
    {"linear", NetOp::fc, ""},
    {"dense", NetOp::fc, ""},
    {"dwconv", NetOp::conv, "depthwise"},
    {"maxpool", NetOp::pool, "max"},
    {"avgpool", NetOp::pool, "avg"},
    {"global_avgpool", NetOp::pool, "global_avg"},
    {"global_maxpool", NetOp::pool, "global_max"},
    {"sum", NetOp::add, ""},
    {"eltwise", NetOp::add, ""},
    {"relu", NetOp::act, "relu"},
    {"relu6", NetOp::act, "relu6"},
    {"sigmoid", NetOp::act, "sigmoid"},
    {"tanh", NetOp::act, "tanh"},
    {"gelu", NetOp::act, "gelu"},
    {"silu", NetOp::act, "silu"},
    {"batchnorm", NetOp::norm, "batch"},
    {"layernorm", NetOp::norm, "layer"},
    {"groupnorm", NetOp::norm, "group"},
    {"rmsnorm", NetOp::norm, "rms"},
    {"lrn", NetOp::norm, "lrn"},
    {"flatten", NetOp::reshape, "flatten"},
    {"dropout", NetOp::reshape, "dropout"},
    {"identity", NetOp::reshape, "identity"},
};

std::int64_t prod(const std::vector<std::int64_t>& s) {
  std::int64_t p = 1;
  for (auto d : s) p *= d;
  return p;
}

std::string shape_s(const std::vector<std::int64_t>& s) {
  return fmt::format("[{}]", fmt::join(s, ", "));
}

}  // namespace

const char* net_op_name(NetOp op) {
  for (const auto& a : kOps)
    if (a.op == op) return a.name;
  return "?";
}

std::optional<NetOp> net_op_from_name(const std::string& name, std::string* fn_out) {
  for (const auto& a : kOps) {
    if (name == a.name) {
      if (fn_out) *fn_out = a.fn;
      return a.op;
    }
  }
  return std::nullopt;
}

// --- NetLayer / NetDesc ------------------------------------------------------------------------

std::int64_t NetLayer::weight_count() const {
  if (op == NetOp::conv)
    return static_cast<std::int64_t>(kernel_h) * kernel_w *
           (in_channels / std::max<std::int64_t>(groups, 1)) * out_channels;
  if (op == NetOp::fc) return in_channels * out_channels;
  return 0;
}

std::int64_t NetLayer::out_numel() const {
  return shape.empty() ? 0 : prod(shape);
}

std::int64_t NetLayer::positions() const {
  if (!has_weights() || out_channels <= 0) return 0;
  return out_numel() / out_channels;
}

std::int64_t NetLayer::macs() const {
  if (op == NetOp::conv) return positions() * weight_count();
  if (op == NetOp::fc) return positions() * weight_count();
  return 0;
}

int NetDesc::find(const std::string& n) const {
  for (std::size_t i = 0; i < layers.size(); ++i)
    if (layers[i].name == n) return static_cast<int>(i);
  return -1;
}

std::vector<std::vector<int>> NetDesc::consumers() const {
  std::vector<std::vector<int>> c(layers.size());
  for (std::size_t i = 0; i < layers.size(); ++i)
    for (int p : layers[i].inputs)
      if (p >= 0 && static_cast<std::size_t>(p) < layers.size())
        c[p].push_back(static_cast<int>(i));
  return c;
}

std::int64_t NetDesc::weight_count() const {
  std::int64_t n = 0;
  for (const auto& l : layers) n += l.weight_count();
  return n;
}

std::int64_t NetDesc::weight_layer_count() const {
  return std::count_if(
      layers.begin(), layers.end(), [](const NetLayer& l) { return l.has_weights(); });
}

std::int64_t NetDesc::macs() const {
  std::int64_t n = 0;
  for (const auto& l : layers) n += l.macs();
  return n;
}

// --- finalize: edges and shape inference --------------------------------------------------------

void finalize_net(NetDesc& net, const std::string& where) {
  KVLAB_THROW_IF(net.layers.empty(), FormatError, "{}: the network has no layers", where);
  std::set<std::string> names;
  for (std::size_t i = 0; i < net.layers.size(); ++i) {
    NetLayer& l = net.layers[i];
    const std::string at =
        fmt::format("{}: layer {} \"{}\" ({})", where, i, l.name, net_op_name(l.op));
    KVLAB_THROW_IF(l.name.empty(), FormatError, "{}: layer {} has no name", where, i);
    KVLAB_THROW_IF(!names.insert(l.name).second,
                   FormatError,
                   "{}: duplicate layer name; every layer needs a unique name",
                   at);
    for (int p : l.inputs)
      KVLAB_THROW_IF(p < 0 || static_cast<std::size_t>(p) >= i,
                     FormatError,
                     "{}: input index {} is not an earlier layer; list layers in topological order "
                     "(every producer before its consumers)",
                     at,
                     p);
    const std::size_t n_in = l.inputs.size();
    auto need_inputs = [&](std::size_t lo, std::size_t hi) {
      KVLAB_THROW_IF(n_in < lo || n_in > hi,
                     FormatError,
                     "{}: has {} input(s), expected {}",
                     at,
                     n_in,
                     lo == hi    ? fmt::format("{}", lo)
                     : hi > 1000 ? fmt::format("at least {}", lo)
                                 : fmt::format("{} to {}", lo, hi));
    };
    auto in_shape = [&](std::size_t k) -> const std::vector<std::int64_t>& {
      return net.layers[static_cast<std::size_t>(l.inputs[k])].shape;
    };
    auto need_rank3 = [&](const std::vector<std::int64_t>& s) {
      KVLAB_THROW_IF(s.size() != 3,
                     FormatError,
                     "{}: input shape is {} but this op needs a [C, H, W] feature map",
                     at,
                     shape_s(s));
    };
    std::vector<std::int64_t> inferred;
    bool infer = true;
    switch (l.op) {
      case NetOp::input:
        need_inputs(0, 0);
        KVLAB_THROW_IF(
            l.shape.empty(),
            FormatError,
            "{}: an input layer needs \"shape\" (one sample, no batch axis, e.g. [3, 224, 224])",
            at);
        infer = false;
        break;
      case NetOp::conv: {
        need_inputs(1, 1);
        const auto& s = in_shape(0);
        need_rank3(s);
        KVLAB_THROW_IF(l.in_channels != 0 && l.in_channels != s[0],
                       FormatError,
                       "{}: in_channels is {} but the input has {} channels",
                       at,
                       l.in_channels,
                       s[0]);
        l.in_channels = s[0];
        if (l.groups == 0) l.groups = l.in_channels;  // depthwise
        if (l.out_channels == 0 && l.fn == "depthwise") l.out_channels = l.in_channels;
        KVLAB_THROW_IF(l.out_channels <= 0, FormatError, "{}: out_channels must be > 0", at);
        KVLAB_THROW_IF(l.groups < 1 || l.in_channels % l.groups || l.out_channels % l.groups,
                       FormatError,
                       "{}: groups {} must divide in_channels {} and out_channels {}",
                       at,
                       l.groups,
                       l.in_channels,
                       l.out_channels);
        KVLAB_THROW_IF(l.kernel_h < 1 || l.kernel_w < 1 || l.stride_h < 1 || l.stride_w < 1 ||
                           l.dilation_h < 1 || l.dilation_w < 1 || l.pad_top < 0 ||
                           l.pad_bottom < 0 || l.pad_left < 0 || l.pad_right < 0,
                       FormatError,
                       "{}: kernel, stride and dilation must be >= 1 and pads >= 0",
                       at);
        const std::int64_t oh =
            (s[1] + l.pad_top + l.pad_bottom - l.dilation_h * (l.kernel_h - 1) - 1) / l.stride_h +
            1;
        const std::int64_t ow =
            (s[2] + l.pad_left + l.pad_right - l.dilation_w * (l.kernel_w - 1) - 1) / l.stride_w +
            1;
        KVLAB_THROW_IF(oh < 1 || ow < 1,
                       FormatError,
                       "{}: a {}x{} kernel does not fit the {}x{} input",
                       at,
                       l.kernel_h,
                       l.kernel_w,
                       s[1],
                       s[2]);
        inferred = {l.out_channels, oh, ow};
        break;
      }
      case NetOp::fc: {
        need_inputs(1, 1);
        const auto& s = in_shape(0);
        KVLAB_THROW_IF(l.out_channels <= 0, FormatError, "{}: out_features must be > 0", at);
        const std::int64_t last = s.back(), all = prod(s);
        if (l.in_channels == 0) l.in_channels = s.size() == 3 ? all : last;
        if (s.size() != 3 && l.in_channels == last) {
          inferred = s;
          inferred.back() = l.out_channels;
        } else if (l.in_channels == all) {
          inferred = {l.out_channels};
        } else {
          KVLAB_THROW(FormatError,
                      "{}: in_features is {} but the input {} has {} features on its last axis "
                      "and {} in all",
                      at,
                      l.in_channels,
                      shape_s(s),
                      last,
                      all);
        }
        break;
      }
      case NetOp::pool: {
        need_inputs(1, 1);
        const auto& s = in_shape(0);
        need_rank3(s);
        if (l.fn.rfind("global_", 0) == 0) {
          l.global = true;
          l.fn = l.fn.substr(7);
        }
        if (l.fn.empty()) l.fn = "max";
        KVLAB_THROW_IF(l.fn != "max" && l.fn != "avg",
                       FormatError,
                       "{}: pool fn is \"{}\", expected max or avg",
                       at,
                       l.fn);
        if (l.global) {
          l.kernel_h = static_cast<int>(s[1]);
          l.kernel_w = static_cast<int>(s[2]);
          l.stride_h = l.stride_w = 1;
          l.pad_top = l.pad_bottom = l.pad_left = l.pad_right = 0;
          inferred = {s[0], 1, 1};
          break;
        }
        auto out = [&](std::int64_t in, int k, int st, int p0, int p1) {
          const std::int64_t span = in + p0 + p1 - k;
          std::int64_t o = (l.ceil_mode ? (span + st - 1) / st : span / st) + 1;
          if (l.ceil_mode && (o - 1) * st >= in + p0)
            --o;  // PyTorch: last window must start inside
          return o;
        };
        const std::int64_t oh = out(s[1], l.kernel_h, l.stride_h, l.pad_top, l.pad_bottom);
        const std::int64_t ow = out(s[2], l.kernel_w, l.stride_w, l.pad_left, l.pad_right);
        KVLAB_THROW_IF(oh < 1 || ow < 1 || l.stride_h < 1 || l.stride_w < 1,
                       FormatError,
                       "{}: a {}x{} window does not fit the {}x{} input",
                       at,
                       l.kernel_h,
                       l.kernel_w,
                       s[1],
                       s[2]);
        inferred = {s[0], oh, ow};
        break;
      }
      case NetOp::add:
      case NetOp::mul:
        need_inputs(2, 1 << 20);
        for (std::size_t k = 1; k < n_in; ++k) {
          // Input 0 has the full shape; a later input may broadcast to it (same rank, each axis
          // equal or 1: a [C,1,1] per-channel bias, as in a diffusion UNet's time embedding).
          const auto& s = in_shape(k);
          bool ok = s.size() == in_shape(0).size();
          for (std::size_t a = 0; ok && a < s.size(); ++a)
            ok = s[a] == in_shape(0)[a] || s[a] == 1;
          KVLAB_THROW_IF(!ok,
                         FormatError,
                         "{}: input {} has shape {} but input 0 has {}; elementwise inputs must "
                         "match (or broadcast: same rank, axes equal or 1)",
                         at,
                         k,
                         shape_s(s),
                         shape_s(in_shape(0)));
        }
        inferred = in_shape(0);
        break;
      case NetOp::concat: {
        need_inputs(1, 1 << 20);
        inferred = in_shape(0);
        for (std::size_t k = 1; k < n_in; ++k) {
          const auto& s = in_shape(k);
          const bool ok = s.size() == inferred.size() &&
                          std::equal(s.begin() + 1, s.end(), inferred.begin() + 1);
          KVLAB_THROW_IF(
              !ok,
              FormatError,
              "{}: input {} has shape {}, which cannot be concatenated on axis 0 with {}",
              at,
              k,
              shape_s(s),
              shape_s(in_shape(0)));
          inferred[0] += s[0];
        }
        break;
      }
      case NetOp::act:
        need_inputs(1, 1);
        if (l.fn.empty()) l.fn = "relu";
        inferred = in_shape(0);
        break;
      case NetOp::norm:
        need_inputs(1, 1);
        inferred = in_shape(0);
        break;
      case NetOp::softmax:
        need_inputs(1, 1);
        inferred = in_shape(0);
        break;
      case NetOp::reshape: {
        need_inputs(1, 1);
        if (l.fn.empty()) l.fn = "identity";
        const auto& s = in_shape(0);
        if (l.fn == "flatten") {
          inferred = {prod(s)};
        } else if (l.fn == "upsample") {
          // Nearest-neighbour upsampling of a [C, H, W] map by stride_h x stride_w.
          need_rank3(s);
          inferred = {s[0], s[1] * l.stride_h, s[2] * l.stride_w};
        } else if (l.fn == "reshape") {
          KVLAB_THROW_IF(l.shape.empty(), FormatError, "{}: fn reshape needs \"shape\"", at);
          KVLAB_THROW_IF(prod(l.shape) != prod(s),
                         FormatError,
                         "{}: reshape to {} ({} elements) from {} ({} elements)",
                         at,
                         shape_s(l.shape),
                         prod(l.shape),
                         shape_s(s),
                         prod(s));
          infer = false;
        } else {
          inferred = s;
        }
        break;
      }
      case NetOp::matmul:
        need_inputs(1, 2);
        KVLAB_THROW_IF(l.shape.empty(),
                       FormatError,
                       "{}: matmul needs its output \"shape\" (it is not inferred)",
                       at);
        infer = false;
        break;
    }
    if (infer) {
      KVLAB_THROW_IF(!l.shape.empty() && l.shape != inferred,
                     FormatError,
                     "{}: shape is given as {} but the parameters give {}",
                     at,
                     shape_s(l.shape),
                     shape_s(inferred));
      l.shape = inferred;
    }
    for (auto d : l.shape)
      KVLAB_THROW_IF(
          d <= 0, FormatError, "{}: shape {} has a non-positive axis", at, shape_s(l.shape));
    KVLAB_THROW_IF(l.weight_bits < 0 || l.weight_bits > 64,
                   FormatError,
                   "{}: weight_bits is {}, expected 0 (target default) to 64",
                   at,
                   l.weight_bits);
  }
}

// --- JSON: kvlab dialect ---------------------------------------------------------------------

namespace {

std::int64_t get_int(const json& v, const std::string& at, const char* key) {
  KVLAB_THROW_IF(!v.is_number_integer(),
                 FormatError,
                 "{}: \"{}\" must be an integer, found {}",
                 at,
                 key,
                 v.dump());
  return v.get<std::int64_t>();
}

// int or [h, w]
void get_pair(const json& v, const std::string& at, const char* key, int& h, int& w) {
  if (v.is_array()) {
    KVLAB_THROW_IF(v.size() != 2, FormatError, "{}: \"{}\" must be an integer or [h, w]", at, key);
    h = static_cast<int>(get_int(v[0], at, key));
    w = static_cast<int>(get_int(v[1], at, key));
  } else {
    h = w = static_cast<int>(get_int(v, at, key));
  }
}

std::vector<std::int64_t> get_shape(const json& v, const std::string& at) {
  KVLAB_THROW_IF(!v.is_array() || v.empty(),
                 FormatError,
                 "{}: \"shape\" must be a non-empty list of integers (one sample, no batch axis)",
                 at);
  std::vector<std::int64_t> s;
  for (const auto& d : v) s.push_back(get_int(d, at, "shape"));
  return s;
}

NetDesc parse_kvlab(const json& j, const std::string& where) {
  static const std::set<std::string> top_keys = {
      "format", "version", "name", "description", "layers"};
  for (const auto& [k, _] : j.items())
    KVLAB_THROW_IF(
        !top_keys.count(k),
        FormatError,
        "{}: unknown top-level key \"{}\" (expected format, version, name, description, layers)",
        where,
        k);
  if (j.contains("format"))
    KVLAB_THROW_IF(j["format"] != "kvlab-network",
                   FormatError,
                   "{}: \"format\" is {} but expected \"kvlab-network\"",
                   where,
                   j["format"].dump());
  if (j.contains("version")) {
    KVLAB_THROW_IF(!j["version"].is_number_integer(),
                   FormatError,
                   "{}: \"version\" must be an integer",
                   where);
    const int v = j["version"].get<int>();
    KVLAB_THROW_IF(
        v > 1,
        FormatError,
        "{}: kvlab-network version {} is newer than this kvlab understands (1); upgrade kvlab",
        where,
        v);
  }
  KVLAB_THROW_IF(!j.contains("layers") || !j["layers"].is_array(),
                 FormatError,
                 "{}: expected a \"layers\" list (see docs/formats/network.md)",
                 where);
  NetDesc net;
  net.source = where;
  net.name = j.value("name", std::filesystem::path(where).stem().string());
  static const std::set<std::string> layer_keys = {"name",
                                                   "op",
                                                   "fn",
                                                   "inputs",
                                                   "shape",
                                                   "in_channels",
                                                   "out_channels",
                                                   "in_features",
                                                   "out_features",
                                                   "kernel",
                                                   "stride",
                                                   "pad",
                                                   "dilation",
                                                   "groups",
                                                   "bias",
                                                   "global",
                                                   "ceil_mode",
                                                   "weight_bits",
                                                   "attrs"};
  std::map<std::string, int> index;
  for (std::size_t i = 0; i < j["layers"].size(); ++i) {
    const json& e = j["layers"][i];
    const std::string at = fmt::format("{}: layers[{}]", where, i);
    KVLAB_THROW_IF(!e.is_object(), FormatError, "{}: each layer must be a JSON object", at);
    KVLAB_THROW_IF(!e.contains("name") || !e["name"].is_string(),
                   FormatError,
                   "{}: needs a string \"name\"",
                   at);
    NetLayer l;
    l.name = e["name"].get<std::string>();
    const std::string atn = fmt::format("{} \"{}\"", at, l.name);
    for (const auto& [k, _] : e.items())
      KVLAB_THROW_IF(!layer_keys.count(k),
                     FormatError,
                     "{}: unknown key \"{}\" (see docs/formats/network.md for the layer keys)",
                     atn,
                     k);
    KVLAB_THROW_IF(
        !e.contains("op") || !e["op"].is_string(), FormatError, "{}: needs a string \"op\"", atn);
    const std::string opname = e["op"].get<std::string>();
    std::string fn;
    const auto op = net_op_from_name(opname, &fn);
    KVLAB_THROW_IF(
        !op,
        FormatError,
        "{}: unknown op \"{}\"; expected one of input, conv, fc, matmul, pool, add, mul, "
        "concat, act, norm, softmax, reshape (or an alias listed in docs/formats/network.md)",
        atn,
        opname);
    l.op = *op;
    l.fn = e.contains("fn") ? e["fn"].get<std::string>() : fn;
    if (fn == "depthwise") {
      l.groups = 0;  // resolved to in_channels by finalize
      l.fn = "depthwise";
    }
    if (e.contains("inputs")) {
      KVLAB_THROW_IF(!e["inputs"].is_array(),
                     FormatError,
                     "{}: \"inputs\" must be a list of layer names",
                     atn);
      for (const auto& in : e["inputs"]) {
        KVLAB_THROW_IF(
            !in.is_string(), FormatError, "{}: \"inputs\" must be a list of layer names", atn);
        auto it = index.find(in.get<std::string>());
        KVLAB_THROW_IF(it == index.end(),
                       FormatError,
                       "{}: input \"{}\" is not an earlier layer; list producers before consumers",
                       atn,
                       in.get<std::string>());
        l.inputs.push_back(it->second);
      }
    } else if (l.op != NetOp::input) {
      KVLAB_THROW_IF(
          i == 0, FormatError, "{}: the first layer has no predecessor; give \"inputs\"", atn);
      l.inputs.push_back(static_cast<int>(i) - 1);
    }
    if (e.contains("shape")) l.shape = get_shape(e["shape"], atn);
    for (const char* k : {"in_channels", "in_features"})
      if (e.contains(k)) l.in_channels = get_int(e[k], atn, k);
    for (const char* k : {"out_channels", "out_features"})
      if (e.contains(k)) l.out_channels = get_int(e[k], atn, k);
    if (e.contains("kernel")) get_pair(e["kernel"], atn, "kernel", l.kernel_h, l.kernel_w);
    if (e.contains("stride")) get_pair(e["stride"], atn, "stride", l.stride_h, l.stride_w);
    if (e.contains("dilation"))
      get_pair(e["dilation"], atn, "dilation", l.dilation_h, l.dilation_w);
    if (e.contains("pad")) {
      const json& p = e["pad"];
      if (p.is_array() && p.size() == 4) {
        l.pad_top = static_cast<int>(get_int(p[0], atn, "pad"));
        l.pad_bottom = static_cast<int>(get_int(p[1], atn, "pad"));
        l.pad_left = static_cast<int>(get_int(p[2], atn, "pad"));
        l.pad_right = static_cast<int>(get_int(p[3], atn, "pad"));
      } else {
        int ph = 0, pw = 0;
        get_pair(p, atn, "pad", ph, pw);
        l.pad_top = l.pad_bottom = ph;
        l.pad_left = l.pad_right = pw;
      }
    }
    if (e.contains("groups")) l.groups = get_int(e["groups"], atn, "groups");
    for (const char* k : {"bias", "global", "ceil_mode"})
      if (e.contains(k))
        KVLAB_THROW_IF(!e[k].is_boolean(), FormatError, "{}: \"{}\" must be true or false", atn, k);
    l.bias = e.value("bias", l.has_weights());
    l.global = e.value("global", false);
    l.ceil_mode = e.value("ceil_mode", false);
    if (e.contains("weight_bits"))
      l.weight_bits = static_cast<int>(get_int(e["weight_bits"], atn, "weight_bits"));
    if (e.contains("attrs")) {
      KVLAB_THROW_IF(!e["attrs"].is_object(), FormatError, "{}: \"attrs\" must be an object", atn);
      for (const auto& [k, v] : e["attrs"].items())
        l.attrs[k] = v.is_string() ? v.get<std::string>() : v.dump();
    }
    index[l.name] = static_cast<int>(i);
    net.layers.push_back(std::move(l));
  }
  finalize_net(net, where);
  return net;
}

// --- JSON: PIMCOMP-NN node_list dialect -------------------------------------------------------

NetDesc parse_pimcomp(const json& j, const std::string& where) {
  NetDesc net;
  net.source = where;
  net.name = std::filesystem::path(where).stem().string();
  const json& nodes = j["node_list"];
  KVLAB_THROW_IF(!nodes.is_array(), FormatError, "{}: \"node_list\" must be a list", where);
  std::map<std::int64_t, int> by_index;  // PIMCOMP's node position -> our layer index
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    const json& n = nodes[i];
    const std::string at = fmt::format("{}: node_list[{}]", where, i);
    KVLAB_THROW_IF(!n.is_object() || !n.contains("operation") || !n.contains("name"),
                   FormatError,
                   "{}: a node needs \"name\" and \"operation\"",
                   at);
    const std::string opn = n["operation"].get<std::string>();
    NetLayer l;
    l.name = n["name"].get<std::string>();
    l.attrs["source_op"] = opn;
    const json p = n.value("param", json::object());
    auto pi = [&](const char* k, std::int64_t d) -> std::int64_t {
      return p.contains(k) ? p[k].get<std::int64_t>() : d;
    };
    if (opn == "OP_INPUT") {
      l.op = NetOp::input;
    } else if (opn == "OP_CONV") {
      l.op = NetOp::conv;
      l.in_channels = pi("input_channel", 0);
      l.out_channels = pi("output_channel", 0);
      l.kernel_h = static_cast<int>(pi("kernel_h", 1));
      l.kernel_w = static_cast<int>(pi("kernel_w", 1));
      l.stride_h = static_cast<int>(pi("stride_h", 1));
      l.stride_w = static_cast<int>(pi("stride_w", 1));
      l.pad_top = static_cast<int>(pi("pad_h0", 0));
      l.pad_bottom = static_cast<int>(pi("pad_h1", 0));
      l.pad_left = static_cast<int>(pi("pad_w0", 0));
      l.pad_right = static_cast<int>(pi("pad_w1", 0));
      l.dilation_h = static_cast<int>(pi("dilation_h", 1));
      l.dilation_w = static_cast<int>(pi("dilation_w", 1));
      l.groups = pi("group", 1);
      l.bias = pi("with_bias", 0) != 0;
    } else if (opn == "OP_FC") {
      l.op = NetOp::fc;
      l.in_channels = pi("num_input", 0);
      l.out_channels = pi("num_output", 0);
      l.bias = pi("with_bias", 0) != 0;
    } else if (opn == "OP_POOL") {
      l.op = NetOp::pool;
      l.fn = pi("pool_method", 0) == 0 ? "max" : "avg";
      l.global = pi("global", 0) != 0;
      l.kernel_h = static_cast<int>(pi("kernel_h", 1));
      l.kernel_w = static_cast<int>(pi("kernel_w", 1));
      l.stride_h = static_cast<int>(pi("stride_h", 1));
      l.stride_w = static_cast<int>(pi("stride_w", 1));
      l.pad_top = static_cast<int>(pi("pad_h0", 0));
      l.pad_bottom = static_cast<int>(pi("pad_h1", 0));
      l.pad_left = static_cast<int>(pi("pad_w0", 0));
      l.pad_right = static_cast<int>(pi("pad_w1", 0));
    } else if (opn == "OP_ELTWISE") {
      l.op = NetOp::add;  // PIMCOMP-NN lowers residual sums to OP_ELTWISE
    } else if (opn == "OP_CONCAT") {
      l.op = NetOp::concat;
    } else if (opn == "OP_RELU") {
      l.op = NetOp::act;
      l.fn = "relu";
    } else if (opn == "OP_CLIP") {
      l.op = NetOp::act;
      l.fn = "relu6";
    } else if (opn == "OP_LRN") {
      l.op = NetOp::norm;
      l.fn = "lrn";
    } else if (opn == "OP_SOFTMAX") {
      l.op = NetOp::softmax;
    } else if (opn == "OP_FLATTEN" || opn == "OP_RESHAPE") {
      l.op = NetOp::reshape;
      l.fn = "flatten";
    } else if (opn == "OP_DROPOUT") {
      l.op = NetOp::reshape;
      l.fn = "dropout";
    } else {
      KVLAB_THROW(FormatError,
                  "{} \"{}\": PIMCOMP-NN operation {} is not supported by kvlab",
                  at,
                  l.name,
                  opn);
    }
    if (n.value("with_act", 0) != 0) l.attrs["fused_act"] = "relu";
    // output_dim carries a leading batch axis of 1.
    if (n.contains("output_dim") && n["output_dim"].is_array() && n["output_dim"].size() >= 2) {
      for (std::size_t k = 1; k < n["output_dim"].size(); ++k)
        l.shape.push_back(n["output_dim"][k].get<std::int64_t>());
      if (l.op == NetOp::reshape) l.shape.clear();  // flatten: inferred (PIMCOMP writes [1, N])
    }
    if (n.contains("provider_index"))
      for (const auto& pidx : n["provider_index"]) {
        auto it = by_index.find(pidx.get<std::int64_t>());
        KVLAB_THROW_IF(it == by_index.end(),
                       FormatError,
                       "{} \"{}\": provider_index {} is not an earlier node",
                       at,
                       l.name,
                       pidx.dump());
        l.inputs.push_back(it->second);
      }
    by_index[n.value("new_node_index", n.value("index", static_cast<std::int64_t>(i)))] =
        static_cast<int>(net.layers.size());
    net.layers.push_back(std::move(l));
  }
  finalize_net(net, where);
  return net;
}

}  // namespace

NetDesc parse_net_json(const json& j, const std::string& where) {
  KVLAB_THROW_IF(
      !j.is_object(), FormatError, "{}: a network description must be a JSON object", where);
  try {
    if (j.contains("node_list")) return parse_pimcomp(j, where);
    return parse_kvlab(j, where);
  } catch (const json::exception& e) {
    KVLAB_THROW(FormatError, "{}: unexpected JSON value type ({})", where, e.what());
  }
}

NetDesc read_net_json(const std::filesystem::path& path) {
  const std::string where = path.string();
  std::ifstream f(path);
  KVLAB_THROW_IF(!f, FormatError, "{}: no such file or not readable", where);
  json j;
  try {
    j = json::parse(f);
  } catch (const json::parse_error& e) {
    KVLAB_THROW(FormatError, "{}: not valid JSON ({})", where, e.what());
  }
  return parse_net_json(j, where);
}

namespace {

template <class J>
J net_to_json_impl(const NetDesc& net) {
  using json = J;
  json layers = json::array();
  for (std::size_t i = 0; i < net.layers.size(); ++i) {
    const NetLayer& l = net.layers[i];
    json e = json::object();
    e["name"] = l.name;  // keys in reading order (ordered_json keeps it)
    e["op"] = net_op_name(l.op);
    if (!l.fn.empty()) e["fn"] = l.fn;
    if (l.op != NetOp::input) {
      json ins = json::array();
      for (int p : l.inputs) ins.push_back(net.layers[static_cast<std::size_t>(p)].name);
      e["inputs"] = ins;
    }
    auto pair = [](int h, int w) { return h == w ? json(h) : json::array({h, w}); };
    if (l.op == NetOp::conv) {
      e["in_channels"] = l.in_channels;
      e["out_channels"] = l.out_channels;
      e["kernel"] = pair(l.kernel_h, l.kernel_w);
      e["stride"] = pair(l.stride_h, l.stride_w);
      if (l.pad_top == l.pad_bottom && l.pad_left == l.pad_right)
        e["pad"] = pair(l.pad_top, l.pad_left);
      else
        e["pad"] = json::array({l.pad_top, l.pad_bottom, l.pad_left, l.pad_right});
      if (l.dilation_h != 1 || l.dilation_w != 1) e["dilation"] = pair(l.dilation_h, l.dilation_w);
      e["groups"] = l.groups;
      e["bias"] = l.bias;
    } else if (l.op == NetOp::fc) {
      e["in_features"] = l.in_channels;
      e["out_features"] = l.out_channels;
      e["bias"] = l.bias;
    } else if (l.op == NetOp::pool) {
      if (l.global) {
        e["global"] = true;
      } else {
        e["kernel"] = pair(l.kernel_h, l.kernel_w);
        e["stride"] = pair(l.stride_h, l.stride_w);
        if (l.pad_top == l.pad_bottom && l.pad_left == l.pad_right)
          e["pad"] = pair(l.pad_top, l.pad_left);
        else
          e["pad"] = json::array({l.pad_top, l.pad_bottom, l.pad_left, l.pad_right});
        if (l.ceil_mode) e["ceil_mode"] = true;
      }
    }
    if (l.weight_bits) e["weight_bits"] = l.weight_bits;
    e["shape"] = l.shape;
    if (!l.attrs.empty()) e["attrs"] = l.attrs;
    layers.push_back(std::move(e));
  }
  json j = json::object();
  j["format"] = "kvlab-network";
  j["version"] = 1;
  j["name"] = net.name;
  j["layers"] = std::move(layers);
  return j;
}

}  // namespace

json net_to_json(const NetDesc& net) {
  return net_to_json_impl<json>(net);
}

std::string net_to_json_text(const NetDesc& net) {
  const auto j = net_to_json_impl<nlohmann::ordered_json>(net);
  std::string out = "{\n";
  for (const char* k : {"format", "version", "name"})
    out += fmt::format("  \"{}\": {},\n", k, j[k].dump());
  out += "  \"layers\": [\n";
  const auto& ls = j["layers"];
  for (std::size_t i = 0; i < ls.size(); ++i)
    out += "    " + ls[i].dump() + (i + 1 < ls.size() ? ",\n" : "\n");
  out += "  ]\n}\n";
  return out;
}

// --- NetBuilder ---------------------------------------------------------------------------------

NetBuilder::NetBuilder(std::string name, std::string source) {
  net_.name = std::move(name);
  net_.source = std::move(source);
}

int NetBuilder::resolve(int from) const {
  return from < 0 ? last() : from;
}

int NetBuilder::layer(NetLayer l) {
  net_.layers.push_back(std::move(l));
  return last();
}

int NetBuilder::input(const std::string& name, std::vector<std::int64_t> shape) {
  NetLayer l;
  l.name = name;
  l.op = NetOp::input;
  l.shape = std::move(shape);
  return layer(std::move(l));
}

int NetBuilder::conv(const std::string& name,
                     int from,
                     std::int64_t out_channels,
                     int kernel,
                     int stride,
                     int pad,
                     std::int64_t groups,
                     bool bias) {
  NetLayer l;
  l.name = name;
  l.op = NetOp::conv;
  l.inputs = {resolve(from)};
  l.out_channels = out_channels;
  l.kernel_h = l.kernel_w = kernel;
  l.stride_h = l.stride_w = stride;
  l.pad_top = l.pad_bottom = l.pad_left = l.pad_right = pad;
  l.groups = groups;
  l.bias = bias;
  return layer(std::move(l));
}

int NetBuilder::fc(const std::string& name, int from, std::int64_t out_features, bool bias) {
  NetLayer l;
  l.name = name;
  l.op = NetOp::fc;
  l.inputs = {resolve(from)};
  l.out_channels = out_features;
  l.bias = bias;
  return layer(std::move(l));
}

int NetBuilder::pool(const std::string& name,
                     int from,
                     const std::string& fn,
                     int kernel,
                     int stride,
                     int pad,
                     bool ceil_mode) {
  NetLayer l;
  l.name = name;
  l.op = NetOp::pool;
  l.fn = fn;
  l.inputs = {resolve(from)};
  l.kernel_h = l.kernel_w = kernel;
  l.stride_h = l.stride_w = stride;
  l.pad_top = l.pad_bottom = l.pad_left = l.pad_right = pad;
  l.ceil_mode = ceil_mode;
  return layer(std::move(l));
}

namespace {
// A weight-free layer with one input (pooling, activation, normalisation).
NetLayer unary_layer(const std::string& name, NetOp op, const std::string& fn, int input) {
  NetLayer l;
  l.name = name;
  l.op = op;
  l.fn = fn;
  l.inputs = {input};
  return l;
}
}  // namespace

int NetBuilder::global_pool(const std::string& name, int from, const std::string& fn) {
  NetLayer l = unary_layer(name, NetOp::pool, fn, resolve(from));
  l.global = true;
  return layer(std::move(l));
}

int NetBuilder::act(const std::string& name, int from, const std::string& fn) {
  return layer(unary_layer(name, NetOp::act, fn, resolve(from)));
}

int NetBuilder::norm(const std::string& name, int from, const std::string& fn) {
  return layer(unary_layer(name, NetOp::norm, fn, resolve(from)));
}

int NetBuilder::add(const std::string& name, const std::vector<int>& from) {
  NetLayer l;
  l.name = name;
  l.op = NetOp::add;
  for (int f : from) l.inputs.push_back(resolve(f));
  return layer(std::move(l));
}

int NetBuilder::concat(const std::string& name, const std::vector<int>& from) {
  NetLayer l;
  l.name = name;
  l.op = NetOp::concat;
  for (int f : from) l.inputs.push_back(resolve(f));
  return layer(std::move(l));
}

int NetBuilder::reshape(const std::string& name, int from, const std::string& fn) {
  NetLayer l;
  l.name = name;
  l.op = NetOp::reshape;
  l.fn = fn;
  l.inputs = {resolve(from)};
  return layer(std::move(l));
}

int NetBuilder::softmax(const std::string& name, int from) {
  NetLayer l;
  l.name = name;
  l.op = NetOp::softmax;
  l.inputs = {resolve(from)};
  return layer(std::move(l));
}

NetDesc NetBuilder::finish() {
  NetDesc out = net_;
  finalize_net(out, out.source.empty() ? out.name : out.source);
  return out;
}

}  // namespace kvlab::core
