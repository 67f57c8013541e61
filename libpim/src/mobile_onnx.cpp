// ONNX export of mobile-plan graphs (mobile_onnx.hpp). Protobuf wire format written by hand:
// field numbers from onnx/onnx.proto (ModelProto, GraphProto, NodeProto, AttributeProto,
// TensorProto, ValueInfoProto, TypeProto, TensorShapeProto, OperatorSetIdProto).
#include "kvlab/pim/mobile_onnx.hpp"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fmt/format.h>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "kvlab/core/error.hpp"
#include "kvlab/pim/mobile_graph.hpp"

namespace kvlab::pim {

using core::NetDesc;
using core::NetLayer;
using core::NetOp;

namespace {

// --- protobuf wire format -------------------------------------------------------------------------

class Pb {
 public:
  void varint(std::uint64_t v) {
    while (v >= 0x80) {
      buf_.push_back(static_cast<char>((v & 0x7f) | 0x80));
      v >>= 7;
    }
    buf_.push_back(static_cast<char>(v));
  }
  void tag(int field, int wire) { varint((static_cast<std::uint64_t>(field) << 3) | wire); }
  void i64(int field, std::int64_t v) {
    tag(field, 0);
    varint(static_cast<std::uint64_t>(v));
  }
  void f32(int field, float v) {
    tag(field, 5);
    char b[4];
    std::memcpy(b, &v, 4);
    buf_.append(b, 4);
  }
  void bytes(int field, const std::string& s) {
    tag(field, 2);
    varint(s.size());
    buf_ += s;
  }
  void msg(int field, const Pb& m) { bytes(field, m.buf_); }
  const std::string& str() const { return buf_; }

 private:
  std::string buf_;
};

enum : int { kFloat = 1, kInt64 = 7 };

Pb attr_int(const std::string& name, std::int64_t v) {
  Pb a;
  a.bytes(1, name);
  a.i64(3, v);
  a.i64(20, 2);  // INT
  return a;
}
Pb attr_float(const std::string& name, float v) {
  Pb a;
  a.bytes(1, name);
  a.f32(2, v);
  a.i64(20, 1);  // FLOAT
  return a;
}
Pb attr_string(const std::string& name, const std::string& v) {
  Pb a;
  a.bytes(1, name);
  a.bytes(4, v);
  a.i64(20, 3);  // STRING
  return a;
}
Pb attr_ints(const std::string& name, const std::vector<std::int64_t>& v) {
  Pb a;
  a.bytes(1, name);
  for (auto x : v) a.i64(8, x);
  a.i64(20, 7);  // INTS
  return a;
}

Pb value_info(const std::string& name, int elem, const std::vector<std::int64_t>& shape) {
  Pb dims;
  for (auto d : shape) {
    Pb dim;
    dim.i64(1, d);
    dims.msg(1, dim);
  }
  Pb tensor;
  tensor.i64(1, elem);
  tensor.msg(2, dims);
  Pb type;
  type.msg(1, tensor);
  Pb vi;
  vi.bytes(1, name);
  vi.msg(2, type);
  return vi;
}

// --- one chunk's graph ---------------------------------------------------------------------------

struct Builder {
  std::uint64_t seed = 0;
  const ComponentWeights* weights = nullptr;
  std::vector<Pb> nodes, inits;
  std::set<std::string> init_names;
  std::int64_t weight_elems = 0;
  int counter = 0;

  std::string tmp(const std::string& base) { return base + "/" + std::to_string(counter++); }

  void node(const std::string& op,
            const std::vector<std::string>& in,
            const std::vector<std::string>& out,
            const std::vector<Pb>& attrs = {}) {
    Pb n;
    for (const auto& s : in) n.bytes(1, s);
    for (const auto& s : out) n.bytes(2, s);
    n.bytes(3, out.front() + ":" + op);
    n.bytes(4, op);
    for (const auto& a : attrs) n.msg(5, a);
    nodes.push_back(n);
  }
  void init_f32(const std::string& name, const std::vector<std::int64_t>& dims,
                const std::vector<float>& v, bool is_weight) {
    if (!init_names.insert(name).second) return;
    Pb t;
    for (auto d : dims) t.i64(1, d);
    t.i64(2, kFloat);
    t.bytes(8, name);
    t.bytes(9, std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float)));
    inits.push_back(t);
    if (is_weight) weight_elems += static_cast<std::int64_t>(v.size());
  }
  void init_i64(const std::string& name, const std::vector<std::int64_t>& dims,
                const std::vector<std::int64_t>& v) {
    if (!init_names.insert(name).second) return;
    Pb t;
    for (auto d : dims) t.i64(1, d);
    t.i64(2, kInt64);
    t.bytes(8, name);
    t.bytes(9, std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(std::int64_t)));
    inits.push_back(t);
  }
  std::string scalar(float v) {
    const std::string name = fmt::format("const/f{}", v);
    init_f32(name, {}, {v}, false);
    return name;
  }
  std::string shape_const(const std::vector<std::int64_t>& s) {
    std::string name = "const/shape";
    for (auto d : s) name += "_" + std::to_string(d);
    init_i64(name, {static_cast<std::int64_t>(s.size())}, s);
    return name;
  }
  // Deterministic random parameter: uniform(-a, a) (+ offset), from seed and name.
  std::vector<float> random(const std::string& name, std::int64_t n, float a, float offset = 0) {
    std::seed_seq sq{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32),
                     static_cast<std::uint32_t>(std::hash<std::string>{}(name))};
    std::mt19937 rng(sq);
    std::uniform_real_distribution<float> u(-a, a);
    std::vector<float> v(static_cast<std::size_t>(n));
    for (auto& x : v) x = offset + u(rng);
    return v;
  }
};

std::vector<std::int64_t> batched(const std::vector<std::int64_t>& s) {
  std::vector<std::int64_t> o = {1};
  o.insert(o.end(), s.begin(), s.end());
  return o;
}

std::string src_of(const NetLayer& l) {
  auto it = l.attrs.find("src");
  return it == l.attrs.end() ? l.name : it->second;
}

void lower(Builder& b, const NetDesc& net, int idx) {
  const NetLayer& l = net.layers[static_cast<std::size_t>(idx)];
  const std::string y = l.name;
  std::vector<std::string> x;
  for (int p : l.inputs) x.push_back(net.layers[static_cast<std::size_t>(p)].name);
  auto in_shape = [&](int k) -> const std::vector<std::int64_t>& {
    return net.layers[static_cast<std::size_t>(l.inputs[static_cast<std::size_t>(k)])].shape;
  };
  switch (l.op) {
    case NetOp::input: {
      if (!l.attrs.count("params")) return;  // a graph input: declared by the caller
      const std::int64_t rows = std::stoll(l.attrs.at("params")) / l.shape[1];
      const std::string table = src_of(l) + ".weight";
      b.init_f32(table, {rows, l.shape[1]},
                 b.weights ? b.weights->read(table) : b.random(table, rows * l.shape[1], 0.5f), true);
      if (l.name.find("token_embedding") != std::string::npos) {
        b.node("Gather", {table, "input_ids"}, {y});
      } else {
        std::vector<std::int64_t> ids(static_cast<std::size_t>(l.shape[0]));
        for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int64_t>(i);
        const std::string pid = "const/position_ids";
        b.init_i64(pid, {1, l.shape[0]}, ids);  // [1, T]: the gather gives [1, T, d] like the tokens
        b.node("Gather", {table, pid}, {y});
      }
      return;
    }
    case NetOp::conv: {
      const std::string s = src_of(l);
      const std::int64_t fan_in = l.in_channels / l.groups * l.kernel_h * l.kernel_w;
      const float a = 1.0f / std::sqrt(static_cast<float>(fan_in));
      b.init_f32(s + ".weight", {l.out_channels, l.in_channels / l.groups, l.kernel_h, l.kernel_w},
                 b.weights ? b.weights->read(s + ".weight") : b.random(s + ".weight", l.weight_count(), a),
                 true);
      std::vector<std::string> in = {x[0], s + ".weight"};
      if (l.bias) {
        b.init_f32(s + ".bias", {l.out_channels},
                   b.weights ? b.weights->read(s + ".bias") : b.random(s + ".bias", l.out_channels, a),
                   true);
        in.push_back(s + ".bias");
      }
      b.node("Conv", in, {y},
             {attr_ints("kernel_shape", {l.kernel_h, l.kernel_w}),
              attr_ints("strides", {l.stride_h, l.stride_w}),
              attr_ints("pads", {l.pad_top, l.pad_left, l.pad_bottom, l.pad_right}),
              attr_int("group", l.groups)});
      return;
    }
    case NetOp::fc: {
      // Weight stored MatMul-ready as [in, out] under "<layer>.weight_t" (torch keeps [out, in]);
      // a GEGLU half is "<proj>.value" / "<proj>.gate" (rows [a, b) of the fused projection).
      const std::string s = l.attrs.count("split") ? l.name : src_of(l);
      const float a = 1.0f / std::sqrt(static_cast<float>(l.in_channels));
      std::int64_t row0 = 0;  // first row of this fc in the (fused) torch weight
      if (l.attrs.count("split")) row0 = std::stoll(l.attrs.at("split"));
      std::vector<float> w, bias;
      if (b.weights) {
        // torch Linear [rows, in] -> rows [row0, row0 + out) transposed to [in, out].
        const auto full = b.weights->read(src_of(l) + ".weight");
        const std::int64_t in = l.in_channels, out = l.out_channels;
        w.resize(static_cast<std::size_t>(in * out));
        for (std::int64_t r = 0; r < out; ++r)
          for (std::int64_t i = 0; i < in; ++i)
            w[static_cast<std::size_t>(i * out + r)] = full[static_cast<std::size_t>((row0 + r) * in + i)];
        if (l.bias) {
          const auto fb = b.weights->read(src_of(l) + ".bias");
          bias.assign(fb.begin() + row0, fb.begin() + row0 + out);
        }
      } else {
        w = b.random(s + ".weight_t", l.weight_count(), a);
        if (l.bias) bias = b.random(s + ".bias", l.out_channels, a);
      }
      b.init_f32(s + ".weight_t", {l.in_channels, l.out_channels}, w, true);
      if (!l.bias) {
        b.node("MatMul", {x[0], s + ".weight_t"}, {y});
        return;
      }
      const std::string mm = b.tmp(y);
      b.node("MatMul", {x[0], s + ".weight_t"}, {mm});
      b.init_f32(s + ".bias", {l.out_channels}, bias, true);
      b.node("Add", {mm, s + ".bias"}, {y});
      return;
    }
    case NetOp::matmul: {
      if (l.attrs.count("transpose_b")) {
        const std::string kt = b.tmp(y), mm = b.tmp(y);
        b.node("Transpose", {x[1]}, {kt}, {attr_ints("perm", {0, 1, 3, 2})});
        b.node("MatMul", {x[0], kt}, {mm});
        const float scale = l.attrs.count("scale") ? std::stof(l.attrs.at("scale")) : 1.0f;
        if (!l.attrs.count("causal")) {
          b.node("Mul", {mm, b.scalar(scale)}, {y});
          return;
        }
        const std::string sc = b.tmp(y);
        b.node("Mul", {mm, b.scalar(scale)}, {sc});
        const std::int64_t t = l.shape[1], s = l.shape[2];
        std::vector<float> mask(static_cast<std::size_t>(t * s), 0.0f);
        for (std::int64_t i = 0; i < t; ++i)
          for (std::int64_t j = i + 1; j < s; ++j) mask[static_cast<std::size_t>(i * s + j)] = -1e9f;
        const std::string mname = fmt::format("const/causal_mask_{}x{}", t, s);
        b.init_f32(mname, {t, s}, mask, false);
        b.node("Add", {sc, mname}, {y});
        return;
      }
      b.node("MatMul", {x[0], x[1]}, {y});
      return;
    }
    case NetOp::softmax:
      b.node("Softmax", {x[0]}, {y}, {attr_int("axis", -1)});
      return;
    case NetOp::add:
    case NetOp::mul: {
      const char* op = l.op == NetOp::add ? "Add" : "Mul";
      std::string acc = x[0];
      for (std::size_t k = 1; k < x.size(); ++k) {
        const std::string out = k + 1 == x.size() ? y : b.tmp(y);
        b.node(op, {acc, x[k]}, {out});
        acc = out;
      }
      return;
    }
    case NetOp::concat:
      b.node("Concat", x, {y}, {attr_int("axis", 1)});
      return;
    case NetOp::norm: {
      const std::string s = src_of(l);
      const float eps = std::stof(l.attrs.at("eps"));
      if (l.fn == "layer") {
        const std::int64_t c = l.shape.back();
        b.init_f32(s + ".weight", {c},
                   b.weights ? b.weights->read(s + ".weight") : b.random(s + ".weight", c, 0.1f, 1.0f), true);
        b.init_f32(s + ".bias", {c}, b.weights ? b.weights->read(s + ".bias") : b.random(s + ".bias", c, 0.1f),
                   true);
        b.node("LayerNormalization", {x[0], s + ".weight", s + ".bias"}, {y},
               {attr_int("axis", -1), attr_float("epsilon", eps)});
        return;
      }
      KVLAB_THROW_IF(l.fn != "group4d",
                     FormatError,
                     "export: norm \"{}\" ({}) has no ONNX lowering; export rewrites GroupNorm to "
                     "its 4-D form first (--target tflite-gpu or qnn-npu)",
                     l.name,
                     l.fn);
      // [1, G, C/G, HW]: normalise over axes 2..3, then the per-channel affine as [G, C/G, 1].
      const std::int64_t g = l.shape[0], cg = l.shape[1], hw = l.shape[2];
      const std::string ones = fmt::format("const/ones_{}x{}", cg, hw);
      const std::string zeros = fmt::format("const/zeros_{}x{}", cg, hw);
      b.init_f32(ones, {cg, hw}, std::vector<float>(static_cast<std::size_t>(cg * hw), 1.0f), false);
      b.init_f32(zeros, {cg, hw}, std::vector<float>(static_cast<std::size_t>(cg * hw), 0.0f), false);
      const std::string n = b.tmp(y), m = b.tmp(y);
      b.node("LayerNormalization", {x[0], ones, zeros}, {n},
             {attr_int("axis", 2), attr_float("epsilon", eps)});
      // torch's [C] affine is [G, C/G, 1] in the same memory order.
      b.init_f32(s + ".weight", {g, cg, 1},
                 b.weights ? b.weights->read(s + ".weight") : b.random(s + ".weight", g * cg, 0.1f, 1.0f),
                 true);
      b.init_f32(s + ".bias", {g, cg, 1},
                 b.weights ? b.weights->read(s + ".bias") : b.random(s + ".bias", g * cg, 0.1f), true);
      b.node("Mul", {n, s + ".weight"}, {m});
      b.node("Add", {m, s + ".bias"}, {y});
      return;
    }
    case NetOp::act: {
      const std::string& fn = l.fn;
      if (fn == "silu") {
        const std::string sg = b.tmp(y);
        b.node("Sigmoid", {x[0]}, {sg});
        b.node("Mul", {x[0], sg}, {y});
      } else if (fn == "gelu_sigmoid") {
        const std::string t = b.tmp(y), sg = b.tmp(y);
        b.node("Mul", {x[0], b.scalar(1.702f)}, {t});
        b.node("Sigmoid", {t}, {sg});
        b.node("Mul", {x[0], sg}, {y});
      } else if (fn == "gelu") {
        const std::string t = b.tmp(y), e = b.tmp(y), e1 = b.tmp(y), h = b.tmp(y);
        b.node("Mul", {x[0], b.scalar(static_cast<float>(1.0 / std::sqrt(2.0)))}, {t});
        b.node("Erf", {t}, {e});
        b.node("Add", {e, b.scalar(1.0f)}, {e1});
        b.node("Mul", {x[0], b.scalar(0.5f)}, {h});
        b.node("Mul", {h, e1}, {y});
      } else if (fn == "gelu_tanh_clamped") {
        // The mobile-safe form: tanh(z) = (e^{2z}-1)/(e^{2z}+1) with z clamped to [-5, 5].
        const std::string x2 = b.tmp(y), x3 = b.tmp(y), c3 = b.tmp(y), u = b.tmp(y), z = b.tmp(y),
                          zc = b.tmp(y), z2 = b.tmp(y), e = b.tmp(y), num = b.tmp(y),
                          den = b.tmp(y), th = b.tmp(y), th1 = b.tmp(y), h = b.tmp(y);
        b.node("Mul", {x[0], x[0]}, {x2});
        b.node("Mul", {x2, x[0]}, {x3});
        b.node("Mul", {x3, b.scalar(0.044715f)}, {c3});
        b.node("Add", {x[0], c3}, {u});
        b.node("Mul", {u, b.scalar(static_cast<float>(std::sqrt(2.0 / M_PI)))}, {z});
        b.node("Clip", {z, b.scalar(-5.0f), b.scalar(5.0f)}, {zc});
        b.node("Mul", {zc, b.scalar(2.0f)}, {z2});
        b.node("Exp", {z2}, {e});
        b.node("Sub", {e, b.scalar(1.0f)}, {num});
        b.node("Add", {e, b.scalar(1.0f)}, {den});
        b.node("Div", {num, den}, {th});
        b.node("Add", {th, b.scalar(1.0f)}, {th1});
        b.node("Mul", {x[0], b.scalar(0.5f)}, {h});
        b.node("Mul", {h, th1}, {y});
      } else {
        KVLAB_THROW(FormatError, "export: activation \"{}\" ({}) has no ONNX lowering", l.name, fn);
      }
      return;
    }
    case NetOp::reshape: {
      if (l.fn == "upsample") {
        const std::string sc = "const/scales_2x";
        b.init_f32(sc, {4}, {1.0f, 1.0f, static_cast<float>(l.stride_h), static_cast<float>(l.stride_w)},
                   false);
        b.node("Resize", {x[0], "", sc}, {y},
               {attr_string("mode", "nearest"),
                attr_string("coordinate_transformation_mode", "asymmetric"),
                attr_string("nearest_mode", "floor")});
        return;
      }
      if (l.fn != "reshape") {
        b.node("Identity", {x[0]}, {y});
        return;
      }
      const auto& s = in_shape(0);
      if (l.attrs.count("split_heads")) {  // [1,T,h*d] -> [1,T,h,d] -> [1,h,T,d]
        const std::int64_t h = std::stoll(l.attrs.at("split_heads"));
        const std::string r = b.tmp(y);
        b.node("Reshape", {x[0], b.shape_const({1, s[0], h, s[1] / h})}, {r});
        b.node("Transpose", {r}, {y}, {attr_ints("perm", {0, 2, 1, 3})});
        return;
      }
      if (l.attrs.count("merge_heads")) {  // [1,h,T,d] -> [1,T,h,d] -> [1,T,h*d]
        const std::string t = b.tmp(y);
        b.node("Transpose", {x[0]}, {t}, {attr_ints("perm", {0, 2, 1, 3})});
        b.node("Reshape", {t, b.shape_const(batched(l.shape))}, {y});
        return;
      }
      std::string cur = x[0];
      if (l.attrs.count("perm")) {
        std::vector<std::int64_t> perm = {0};
        const std::string& p = l.attrs.at("perm");
        for (std::size_t i = 0; i < p.size(); ++i)
          if (p[i] != ',') perm.push_back(p[i] - '0' + 1);
        // The perm applies to the input axes; when the input rank differs ([HW,C] -> [C,H,W])
        // the "1,0" perm transposes the 2-D token layout first.
        const std::string t = b.tmp(y);
        b.node("Transpose", {cur}, {t}, {attr_ints("perm", perm)});
        cur = t;
      }
      b.node("Reshape", {cur, b.shape_const(batched(l.shape))}, {y});
      return;
    }
    case NetOp::pool:
      break;
  }
  KVLAB_THROW(FormatError, "export: op \"{}\" ({}) has no ONNX lowering", l.name, op_key(l));
}

}  // namespace

std::vector<OnnxChunk> export_onnx(const NetDesc& net,
                                   const ChunkPlan& plan,
                                   const std::string& component,
                                   const OnnxExportOptions& opt) {
  std::vector<int> chunk_of(net.layers.size(), -1);
  for (std::size_t k = 0; k < plan.chunks.size(); ++k)
    for (int i = plan.chunks[k].first; i <= plan.chunks[k].last; ++i)
      chunk_of[static_cast<std::size_t>(i)] = static_cast<int>(k);
  const auto consumers = net.consumers();
  std::vector<OnnxChunk> out;
  for (std::size_t k = 0; k < plan.chunks.size(); ++k) {
    const Chunk& c = plan.chunks[k];
    Builder b;
    b.seed = opt.seed;
    b.weights = opt.weights;
    OnnxChunk oc;
    oc.file = fmt::format("{}.chunk{}.onnx", component, k);
    Pb graph;
    std::vector<Pb> inputs, outputs;
    std::set<std::string> declared;
    for (int i = c.first; i <= c.last; ++i) {
      const NetLayer& l = net.layers[static_cast<std::size_t>(i)];
      // Inputs of this chunk: graph inputs, and tensors of earlier chunks.
      std::vector<int> reads = l.inputs;
      for (int p : reads) {
        const NetLayer& pl = net.layers[static_cast<std::size_t>(p)];
        const bool outside = chunk_of[static_cast<std::size_t>(p)] != static_cast<int>(k);
        const bool plain_input = pl.op == NetOp::input && !pl.attrs.count("params");
        if ((outside || plain_input) && declared.insert(pl.name).second) {
          inputs.push_back(value_info(pl.name, kFloat, batched(pl.shape)));
          oc.inputs.push_back(pl.name);
        }
      }
      if (l.op == NetOp::input && l.attrs.count("params") &&
          l.name.find("token_embedding") != std::string::npos && declared.insert("input_ids").second) {
        inputs.push_back(value_info("input_ids", kInt64, {1, l.shape[0]}));
        oc.inputs.push_back("input_ids");
      }
      lower(b, net, i);
      bool needed_later = i + 1 == static_cast<int>(net.layers.size());
      for (int q : consumers[static_cast<std::size_t>(i)])
        if (chunk_of[static_cast<std::size_t>(q)] > static_cast<int>(k)) needed_later = true;
      if (needed_later && !(l.op == NetOp::input && !l.attrs.count("params"))) {
        outputs.push_back(value_info(l.name, kFloat, batched(l.shape)));
        oc.outputs.push_back(l.name);
      }
    }
    for (const auto& n : b.nodes) graph.msg(1, n);
    graph.bytes(2, oc.file);
    for (const auto& t : b.inits) graph.msg(5, t);
    for (const auto& v : inputs) graph.msg(11, v);
    for (const auto& v : outputs) graph.msg(12, v);
    Pb model;
    model.i64(1, 8);  // ir_version 8 (ONNX 1.10+)
    model.bytes(2, "kvlab mobile-plan");
    Pb opset;
    opset.bytes(1, "");
    opset.i64(2, 17);
    model.msg(8, opset);
    model.msg(7, graph);
    oc.nodes = b.nodes.size();
    oc.weight_elems = b.weight_elems;
    oc.bytes = model.str();
    // protobuf refuses messages of 2 GiB and more (onnxruntime and onnx cannot load them); the
    // cap is at fp16 and the export fp32, so a chunk near --cap-mb 1024 is the largest possible.
    KVLAB_THROW_IF(oc.bytes.size() >= (std::size_t{1} << 31),
                   UsageError,
                   "export: {} would be {:.2f} GB, over protobuf's 2 GiB message limit; lower "
                   "--cap-mb (the cap counts fp16 weights, the export writes fp32)",
                   oc.file,
                   static_cast<double>(oc.bytes.size()) / 1e9);
    out.push_back(std::move(oc));
  }
  return out;
}

void write_onnx_dir(const std::filesystem::path& dir,
                    const std::vector<std::pair<std::string, std::vector<OnnxChunk>>>& components,
                    bool force,
                    const std::map<std::string, std::string>& weights) {
  namespace fs = std::filesystem;
  KVLAB_THROW_IF(fs::exists(dir) && !force,
                 UsageError,
                 "{} already exists; pass --force to replace it",
                 dir.string());
  const fs::path tmp = dir.string() + ".partial." + std::to_string(::getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  nlohmann::json manifest = {{"format", "kvlab-onnx-chunks"}, {"version", 1}};
  nlohmann::json comps = nlohmann::json::object();
  for (const auto& [name, chunks] : components) {
    nlohmann::json cs = nlohmann::json::array();
    for (const auto& c : chunks) {
      std::ofstream f(tmp / c.file, std::ios::binary);
      f.write(c.bytes.data(), static_cast<std::streamsize>(c.bytes.size()));
      f.close();
      KVLAB_THROW_IF(!f, IoError, "{}: write failed", (tmp / c.file).string());
      cs.push_back({{"file", c.file},
                    {"inputs", c.inputs},
                    {"outputs", c.outputs},
                    {"nodes", c.nodes},
                    {"weight_elems", c.weight_elems}});
    }
    comps[name] = cs;
  }
  manifest["components"] = comps;
  if (!weights.empty()) manifest["weights"] = weights;
  {
    std::ofstream f(tmp / "manifest.json");
    f << manifest.dump(1) << "\n";
    KVLAB_THROW_IF(!f, IoError, "{}: write failed", (tmp / "manifest.json").string());
  }
  if (fs::exists(dir)) fs::remove_all(dir);
  fs::rename(tmp, dir);
}

}  // namespace kvlab::pim
