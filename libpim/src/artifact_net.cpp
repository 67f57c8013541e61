// bnn-model and LLM model artifacts as network IR (see artifact_net.hpp). Reads attributes and
// dataset shapes with libcore's HDF5 API; no libbinary / libllm dependency.
#include "kvlab/pim/artifact_net.hpp"

#include <fmt/format.h>

#include <cmath>
#include <string>
#include <vector>

#include "kvlab/core/artifact.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/core/h5.hpp"

namespace kvlab::pim {

namespace {

std::string module_path(const std::string& name) {
  std::string p = name;
  for (char& c : p)
    if (c == '.') c = '/';
  return p;
}

/// What the builder needs to know of a layer's output before finalize: channels (features for a
/// vector) and the side of a square map (0 for a vector or a pooled [C,1,1]).
struct Out {
  std::int64_t ch = 0, side = 0;
  bool conv_like = false;  // a feature map a conv / shortcut can read
};

}  // namespace

core::NetDesc bnn_model_net(const std::filesystem::path& path) {
  const std::string file = path.string();
  core::ArtifactReader r = core::ArtifactReader::open(path, "bnn-model", 1, 1);
  const h5::Group p = r.params();
  const h5::Group root = r.root();
  KVLAB_THROW_IF(!root.has_group("report") || !root.has_group("weights"),
                 FormatError,
                 "{}: bnn-model without /report or /weights (docs/formats/bnn-model.md)",
                 file);
  const h5::Group rep = root.group("report");
  const h5::Group w = root.group("weights");
  const std::vector<std::string> names = rep.attr_strings("layer_names");
  const std::vector<std::string> types = rep.attr_strings("layer_types");
  const std::vector<std::int64_t> macs = rep.read_vec<std::int64_t>("layer_macs");
  KVLAB_THROW_IF(names.size() != types.size() || names.size() != macs.size(),
                 FormatError,
                 "{}: /report has {} layer_names, {} layer_types and {} layer_macs; they should "
                 "be equal",
                 file,
                 names.size(),
                 types.size(),
                 macs.size());
  const std::int64_t in_ch = p.attr_int("in_channels");
  const std::int64_t in_size = p.attr_int("in_size");
  const std::string arch = p.attr_string("arch");

  core::NetBuilder b(fmt::format("bnn-{}", arch), file);
  b.input("input", {in_ch, in_size, in_size});
  std::vector<Out> outs{{in_ch, in_size, true}};
  auto add_out = [&](int idx, Out o) {
    outs.resize(static_cast<std::size_t>(idx) + 1);
    outs[static_cast<std::size_t>(idx)] = o;
  };
  // Producer of a layer that reads `ch` channels: the most recent layer with that many output
  // channels (a block's shortcut conv reads the block input, not its main conv's output).
  auto producer = [&](std::int64_t ch, bool spatial) {
    for (int i = b.last(); i >= 0; --i) {
      const Out& o = outs[static_cast<std::size_t>(i)];
      if (o.conv_like && o.ch == ch && (!spatial || o.side > 0)) return i;
    }
    return -1;
  };
  auto weight_shape = [&](const std::string& name) {
    const std::string wp = module_path(name) + "/weight";
    KVLAB_THROW_IF(!w.has_dataset(wp),
                   FormatError,
                   "{}: /report names layer '{}' but there is no /weights/{}",
                   file,
                   name,
                   wp);
    return w.info(wp).shape;
  };
  for (std::size_t i = 0; i < names.size(); ++i) {
    const std::string& name = names[i];
    const std::string& type = types[i];
    const bool bin = type.rfind("binary-", 0) == 0;
    if (type == "binary-conv" || type == "real-conv") {
      const auto s = weight_shape(name);
      KVLAB_THROW_IF(s.size() != 4 || s[2] != s[3] || s[0] <= 0 || s[1] <= 0,
                     FormatError,
                     "{}: /weights/{}/weight should be [out, in, k, k] for a conv",
                     file,
                     module_path(name));
      const std::int64_t out = s[0], in = s[1], k = s[2];
      const std::int64_t per_pos = out * in * k * k;
      const std::int64_t pos = macs[i] / per_pos;
      const auto oh = static_cast<std::int64_t>(std::llround(std::sqrt(static_cast<double>(pos))));
      const int from = producer(in, true);
      KVLAB_THROW_IF(macs[i] % per_pos != 0 || oh * oh != pos || from < 0,
                     FormatError,
                     "{}: layer '{}' ({}): {} MACs for a {}x{}x{}x{} weight is not a square "
                     "output map fed by a {}-channel layer",
                     file,
                     name,
                     type,
                     macs[i],
                     out,
                     in,
                     k,
                     k,
                     in);
      const std::int64_t h = outs[static_cast<std::size_t>(from)].side;
      const int pad = static_cast<int>((k - 1) / 2);
      int stride = 0;
      for (int st = 1; st <= h; ++st)
        if ((h + 2 * pad - k) / st + 1 == oh) {
          stride = st;
          break;
        }
      KVLAB_THROW_IF(stride == 0,
                     FormatError,
                     "{}: layer '{}': no stride maps its {}x{} input to its {}x{} output",
                     file,
                     name,
                     h,
                     h,
                     oh,
                     oh);
      const int l = b.conv(name, from, out, static_cast<int>(k), stride, pad, 1, false);
      b.at(l).weight_bits = bin ? 1 : 0;
      b.at(l).attrs["source_op"] = type;
      add_out(l, {out, oh, true});
    } else if (type == "binary-linear" || type == "real-linear") {
      const auto s = weight_shape(name);
      KVLAB_THROW_IF(s.size() != 2 || s[0] <= 0 || s[1] <= 0,
                     FormatError,
                     "{}: /weights/{}/weight should be [out, in] for a linear layer",
                     file,
                     module_path(name));
      const std::int64_t out = s[0], in = s[1];
      int from = b.last();
      const Out& prev = outs[static_cast<std::size_t>(from)];
      if (prev.conv_like || prev.ch != in) {
        const int src = producer(in, true);
        KVLAB_THROW_IF(src < 0,
                       FormatError,
                       "{}: layer '{}' reads {} features but no earlier layer has {} channels",
                       file,
                       name,
                       in,
                       in);
        from = b.global_pool(name + ".pool", src, "avg");
        add_out(from, {in, 0, false});
      }
      const int l = b.fc(name, from, out, true);
      b.at(l).weight_bits = bin ? 1 : 0;
      b.at(l).attrs["source_op"] = type;
      add_out(l, {out, 0, false});
    } else if (type == "insta-mlp") {
      // INSTA threshold MLP: global average -> fc1 -> fc2, real-valued, beside the main path.
      const auto s1 = weight_shape(name + ".fc1");
      const auto s2 = weight_shape(name + ".fc2");
      KVLAB_THROW_IF(s1.size() != 2 || s2.size() != 2 || s2[1] != s1[0] || s2[0] != s1[1],
                     FormatError,
                     "{}: INSTA MLP '{}': fc1/fc2 weights are not [h, c] and [c, h]",
                     file,
                     name);
      const int src = producer(s1[1], true);
      KVLAB_THROW_IF(src < 0,
                     FormatError,
                     "{}: INSTA MLP '{}' reads {} channels but no earlier layer has them",
                     file,
                     name,
                     s1[1]);
      const int pl = b.global_pool(name + ".pool", src, "avg");
      add_out(pl, {s1[1], 0, false});
      const int f1 = b.fc(name + ".fc1", pl, s1[0], true);
      b.at(f1).attrs["source_op"] = type;
      add_out(f1, {s1[0], 0, false});
      const int f2 = b.fc(name + ".fc2", f1, s2[0], true);
      b.at(f2).attrs["source_op"] = type;
      add_out(f2, {s2[0], 0, false});
    } else {
      KVLAB_THROW(FormatError,
                  "{}: /report layer '{}' has unknown type '{}' (expected binary-conv, real-conv, "
                  "binary-linear, real-linear or insta-mlp)",
                  file,
                  name,
                  type);
    }
  }
  KVLAB_THROW_IF(b.last() == 0, FormatError, "{}: /report lists no layers", file);
  return b.finish();
}

core::NetDesc llm_model_net(const std::filesystem::path& path, const ArtifactNetOptions& opt) {
  const std::string file = path.string();
  core::ArtifactReader r = core::ArtifactReader::open(path, "model", 1, 1);
  const h5::Group p = r.params();
  auto pos_int = [&](const char* k) {
    const std::int64_t v = p.attr_int(k);
    KVLAB_THROW_IF(v <= 0, FormatError, "{}: /params {} is {}; it should be positive", file, k, v);
    return v;
  };
  const std::string arch = p.has_attr("arch") ? p.attr_string("arch") : std::string("llm");
  const std::int64_t vocab = pos_int("vocab_size");
  const std::int64_t hidden = pos_int("hidden_size");
  const std::int64_t inter = pos_int("intermediate_size");
  const std::int64_t blocks = pos_int("num_hidden_layers");
  const std::int64_t heads = pos_int("num_attention_heads");
  const std::int64_t kv_heads = pos_int("num_key_value_heads");
  const std::int64_t head_dim = pos_int("head_dim");
  const std::int64_t ctx =
      opt.llm_context > 0 ? opt.llm_context : pos_int("max_position_embeddings");
  bool qkv_bias = false;
  if (p.has_attr("attention_bias")) {
    const h5::AttrValue v = p.attr("attention_bias");
    if (const auto* iv = std::get_if<std::int64_t>(&v)) qkv_bias = *iv != 0;
  }

  core::NetBuilder b(fmt::format("{}-{}L-token", arch, blocks), file);
  int x = b.input("token", {1, hidden});
  auto seq = [&](const std::string& name, std::vector<std::int64_t> shape) {
    core::NetLayer l;
    l.name = name;
    l.shape = std::move(shape);
    return l;
  };
  for (std::int64_t i = 0; i < blocks; ++i) {
    const std::string pre = fmt::format("model.layers.{}.", i);
    const int n1 = b.norm(pre + "input_layernorm", x, "rms");
    const int q = b.fc(pre + "self_attn.q_proj", n1, heads * head_dim, qkv_bias);
    const int k = b.fc(pre + "self_attn.k_proj", n1, kv_heads * head_dim, qkv_bias);
    const int v = b.fc(pre + "self_attn.v_proj", n1, kv_heads * head_dim, qkv_bias);
    // Scores of the new token against the cached keys, then the weighted sum of cached values:
    // activation x activation products, no crossbar weights.
    core::NetLayer sc = seq(pre + "self_attn.scores", {1, heads * ctx});
    sc.op = core::NetOp::matmul;
    sc.inputs = {q, k};
    const int s = b.layer(sc);
    const int sm = b.softmax(pre + "self_attn.softmax", s);
    core::NetLayer av = seq(pre + "self_attn.values", {1, heads * head_dim});
    av.op = core::NetOp::matmul;
    av.inputs = {sm, v};
    const int a = b.layer(av);
    const int o = b.fc(pre + "self_attn.o_proj", a, hidden, false);
    const int r1 = b.add(pre + "attn_residual", {x, o});
    const int n2 = b.norm(pre + "post_attention_layernorm", r1, "rms");
    const int g = b.fc(pre + "mlp.gate_proj", n2, inter, false);
    const int u = b.fc(pre + "mlp.up_proj", n2, inter, false);
    const int ga = b.act(pre + "mlp.act", g, "silu");
    core::NetLayer m = seq(pre + "mlp.mul", {});
    m.op = core::NetOp::mul;
    m.inputs = {ga, u};
    const int mu = b.layer(m);
    const int d = b.fc(pre + "mlp.down_proj", mu, hidden, false);
    x = b.add(pre + "mlp_residual", {r1, d});
  }
  const int fn = b.norm("model.norm", x, "rms");
  b.fc("lm_head", fn, vocab, false);
  return b.finish();
}

core::NetDesc artifact_net(const std::filesystem::path& path, const ArtifactNetOptions& opt) {
  std::string kind;
  {
    const h5::File f = h5::File::open(path);
    kind = core::read_header(f).kind;
  }
  if (kind == "bnn-model") return bnn_model_net(path);
  if (kind == "model") return llm_model_net(path, opt);
  KVLAB_THROW(FormatError,
              "{}: a kvlab {} artifact has no network to compile; pim-compile takes a bnn-model "
              "(kvlab bnn-train), an LLM model (kvlab import-hf) or a network JSON "
              "(docs/formats/network.md)",
              path.string(),
              kind);
}

}  // namespace kvlab::pim
