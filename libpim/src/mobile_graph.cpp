// Op-level graphs of CLIP text encoders, diffusers UNet2DConditionModel and AutoencoderKL decoders,
// layer for layer as transformers/diffusers define them (parameter counts are checked against
// golden numbers from those packages: tests/data/mobile/golden-params.json).
#include "kvlab/pim/mobile_graph.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>

#include "kvlab/core/error.hpp"

namespace kvlab::pim {

using core::NetDesc;
using core::NetLayer;
using core::NetOp;
using json = nlohmann::json;
using Shape = std::vector<std::int64_t>;

namespace {

// --- config access with kvlab's messages ------------------------------------------------------

struct Cfg {
  const json& j;
  std::string where;

  bool has(const char* key) const { return j.contains(key) && !j.at(key).is_null(); }
  std::int64_t integer(const char* key, std::optional<std::int64_t> def = std::nullopt) const {
    if (!has(key)) {
      KVLAB_THROW_IF(!def, FormatError, "{}: missing key \"{}\" (an integer)", where, key);
      return *def;
    }
    const json& v = j.at(key);
    KVLAB_THROW_IF(!v.is_number_integer() || v.get<std::int64_t>() <= 0,
                   FormatError,
                   "{}: \"{}\" must be a positive integer, found {}",
                   where,
                   key,
                   v.dump());
    return v.get<std::int64_t>();
  }
  double real(const char* key, double def) const {
    if (!has(key)) return def;
    const json& v = j.at(key);
    KVLAB_THROW_IF(
        !v.is_number(), FormatError, "{}: \"{}\" must be a number, found {}", where, key, v.dump());
    return v.get<double>();
  }
  bool boolean(const char* key, bool def) const {
    if (!has(key)) return def;
    const json& v = j.at(key);
    KVLAB_THROW_IF(
        !v.is_boolean(), FormatError, "{}: \"{}\" must be true/false, found {}", where, key, v.dump());
    return v.get<bool>();
  }
  std::string string(const char* key, std::optional<std::string> def = std::nullopt) const {
    if (!has(key)) {
      KVLAB_THROW_IF(!def, FormatError, "{}: missing key \"{}\" (a string)", where, key);
      return *def;
    }
    const json& v = j.at(key);
    KVLAB_THROW_IF(
        !v.is_string(), FormatError, "{}: \"{}\" must be a string, found {}", where, key, v.dump());
    return v.get<std::string>();
  }
  std::vector<std::int64_t> ints(const char* key) const {
    KVLAB_THROW_IF(!has(key), FormatError, "{}: missing key \"{}\" (a list of integers)", where, key);
    const json& v = j.at(key);
    KVLAB_THROW_IF(!v.is_array() || v.empty(),
                   FormatError,
                   "{}: \"{}\" must be a non-empty list of integers, found {}",
                   where,
                   key,
                   v.dump());
    std::vector<std::int64_t> out;
    for (const auto& e : v) {
      KVLAB_THROW_IF(!e.is_number_integer() || e.get<std::int64_t>() <= 0,
                     FormatError,
                     "{}: \"{}\" must hold positive integers, found {}",
                     where,
                     key,
                     v.dump());
      out.push_back(e.get<std::int64_t>());
    }
    return out;
  }
  std::vector<std::string> strings(const char* key) const {
    KVLAB_THROW_IF(!has(key), FormatError, "{}: missing key \"{}\" (a list of strings)", where, key);
    const json& v = j.at(key);
    KVLAB_THROW_IF(!v.is_array() || v.empty(),
                   FormatError,
                   "{}: \"{}\" must be a non-empty list of strings, found {}",
                   where,
                   key,
                   v.dump());
    std::vector<std::string> out;
    for (const auto& e : v) {
      KVLAB_THROW_IF(!e.is_string(),
                     FormatError,
                     "{}: \"{}\" must hold strings, found {}",
                     where,
                     key,
                     v.dump());
      out.push_back(e.get<std::string>());
    }
    return out;
  }
  /// An int or a per-block list (diffusers' attention_head_dim / num_attention_heads).
  std::vector<std::int64_t> int_or_list(const char* key, std::size_t n) const {
    const json& v = j.at(key);
    if (v.is_number_integer()) return std::vector<std::int64_t>(n, integer(key));
    auto out = ints(key);
    KVLAB_THROW_IF(out.size() != n,
                   FormatError,
                   "{}: \"{}\" has {} entries but block_out_channels has {}",
                   where,
                   key,
                   out.size(),
                   n);
    return out;
  }
};

json read_config(const std::filesystem::path& p) {
  std::ifstream f(p);
  KVLAB_THROW_IF(!f,
                 FormatError,
                 "{}: cannot open the config (a model directory holds text_encoder/, unet/ and "
                 "vae/ with a config.json each, as diffusers saves a pipeline)",
                 p.string());
  try {
    json j = json::parse(f);
    KVLAB_THROW_IF(!j.is_object(), FormatError, "{}: expected a JSON object", p.string());
    return j;
  } catch (const json::parse_error& e) {
    KVLAB_THROW(FormatError, "{}: not valid JSON ({})", p.string(), e.what());
  }
}

// --- a builder that tracks shapes while it adds layers ------------------------------------------

class G {
 public:
  G(std::string name, std::string source) : b_(std::move(name), std::move(source)) {}

  const Shape& shape(int i) const { return shapes_.at(static_cast<std::size_t>(i)); }

  int input(const std::string& name, Shape s, std::int64_t params = 0) {
    NetLayer l;
    l.name = name;
    l.op = NetOp::input;
    l.shape = s;
    if (params) l.attrs["params"] = std::to_string(params);
    return add(std::move(l), s);
  }
  int conv(const std::string& name, int from, std::int64_t out, int k, int stride, int pad) {
    const Shape& s = shape(from);
    NetLayer l;
    l.name = name;
    l.op = NetOp::conv;
    l.inputs = {from};
    l.out_channels = out;
    l.kernel_h = l.kernel_w = k;
    l.stride_h = l.stride_w = stride;
    l.pad_top = l.pad_bottom = l.pad_left = l.pad_right = pad;
    l.bias = true;
    l.attrs["src"] = name;
    return add(std::move(l),
               {out, (s[1] + 2 * pad - k) / stride + 1, (s[2] + 2 * pad - k) / stride + 1});
  }
  int fc(const std::string& name, int from, std::int64_t out, bool bias, std::string src = "") {
    Shape s = shape(from);
    NetLayer l;
    l.name = name;
    l.op = NetOp::fc;
    l.inputs = {from};
    l.out_channels = out;
    l.bias = bias;
    l.attrs["src"] = src.empty() ? name : src;
    s.back() = out;
    return add(std::move(l), s);
  }
  int norm(const std::string& name, int from, const std::string& fn, std::int64_t groups, double eps) {
    const Shape& s = shape(from);
    NetLayer l;
    l.name = name;
    l.op = NetOp::norm;
    l.fn = fn;
    l.inputs = {from};
    const std::int64_t c = fn == "group" ? s[0] : s.back();
    l.attrs["params"] = std::to_string(2 * c);
    l.attrs["eps"] = fmt::format("{}", eps);
    l.attrs["src"] = name;
    if (fn == "group") l.attrs["groups"] = std::to_string(groups);
    return add(std::move(l), s);
  }
  int act(const std::string& name, int from, const std::string& fn) {
    NetLayer l;
    l.name = name;
    l.op = NetOp::act;
    l.fn = fn;
    l.inputs = {from};
    return add(std::move(l), shape(from));
  }
  int binary(const std::string& name, NetOp op, int a, int b) {
    NetLayer l;
    l.name = name;
    l.op = op;
    l.inputs = {a, b};
    return add(std::move(l), shape(a));
  }
  int concat(const std::string& name, int a, int b) {
    NetLayer l;
    l.name = name;
    l.op = NetOp::concat;
    l.inputs = {a, b};
    Shape s = shape(a);
    s[0] += shape(b)[0];
    return add(std::move(l), s);
  }
  int reshape(const std::string& name, int from, Shape to, const std::string& perm = "") {
    NetLayer l;
    l.name = name;
    l.op = NetOp::reshape;
    l.fn = "reshape";
    l.inputs = {from};
    l.shape = to;
    if (!perm.empty()) l.attrs["perm"] = perm;
    return add(std::move(l), to);
  }
  int upsample(const std::string& name, int from) {
    const Shape& s = shape(from);
    NetLayer l;
    l.name = name;
    l.op = NetOp::reshape;
    l.fn = "upsample";
    l.inputs = {from};
    l.stride_h = l.stride_w = 2;
    return add(std::move(l), {s[0], s[1] * 2, s[2] * 2});
  }
  int matmul(const std::string& name, int a, int b, Shape out, std::int64_t k, bool transpose_b) {
    NetLayer l;
    l.name = name;
    l.op = NetOp::matmul;
    l.inputs = {a, b};
    l.shape = out;
    l.attrs["k"] = std::to_string(k);
    if (transpose_b) l.attrs["transpose_b"] = "1";
    return add(std::move(l), out);
  }
  int softmax(const std::string& name, int from) {
    NetLayer l;
    l.name = name;
    l.op = NetOp::softmax;
    l.inputs = {from};
    return add(std::move(l), shape(from));
  }
  NetLayer& at(int i) { return b_.at(i); }
  NetDesc finish() { return b_.finish(); }

  /// Multi-head attention as diffusers/transformers compute it: q from x [T,C], k/v from ctx
  /// [S,Cc], heads x dim_head, scores scaled by 1/sqrt(dim_head) (folded into the softmax input
  /// in the export), output projection back to C. Returns the output projection's index.
  int attention(const std::string& p,
                int x,
                int ctx,
                std::int64_t heads,
                std::int64_t dim_head,
                bool qkv_bias,
                const std::string& q_name,
                const std::string& k_name,
                const std::string& v_name,
                const std::string& out_name,
                bool causal = false) {
    const std::int64_t t = shape(x)[0], c = shape(x)[1], s = shape(ctx)[0];
    const std::int64_t inner = heads * dim_head;
    const int q = fc(p + q_name, x, inner, qkv_bias);
    const int k = fc(p + k_name, ctx, inner, qkv_bias);
    const int v = fc(p + v_name, ctx, inner, qkv_bias);
    const int qh = reshape(p + "q_heads", q, {heads, t, dim_head}, "");
    const int kh = reshape(p + "k_heads", k, {heads, s, dim_head}, "");
    const int vh = reshape(p + "v_heads", v, {heads, s, dim_head}, "");
    // The [T, h*d] -> [h, T, d] split is a reshape to [T, h, d] and a transpose; recorded as one
    // reshape with perm applied after the split (see "perm" above: split first, then permute).
    for (int i : {qh, kh, vh}) at(i).attrs["split_heads"] = std::to_string(heads);
    const int sc = matmul(p + "scores", qh, kh, {heads, t, s}, dim_head, true);
    at(sc).attrs["scale"] = fmt::format("{}", 1.0 / std::sqrt(static_cast<double>(dim_head)));
    if (causal) at(sc).attrs["causal"] = "1";
    const int pr = softmax(p + "probs", sc);
    const int o = matmul(p + "context", pr, vh, {heads, t, dim_head}, s, false);
    const int om = reshape(p + "merge_heads", o, {t, inner}, "");
    at(om).attrs["merge_heads"] = std::to_string(heads);
    return fc(p + out_name, om, c, true);
  }

 private:
  int add(NetLayer l, Shape s) {
    const int i = b_.layer(std::move(l));
    shapes_.push_back(std::move(s));
    return i;
  }
  core::NetBuilder b_;
  std::vector<Shape> shapes_;
};

std::string gelu_fn(const std::string& hidden_act, const std::string& where) {
  if (hidden_act == "gelu") return "gelu";
  if (hidden_act == "quick_gelu") return "gelu_sigmoid";  // x * sigmoid(1.702 x)
  if (hidden_act == "gelu_new" || hidden_act == "gelu_pytorch_tanh") return "gelu_tanh";
  KVLAB_THROW(FormatError,
              "{}: hidden_act \"{}\" is not supported; expected gelu, quick_gelu, gelu_new or "
              "gelu_pytorch_tanh",
              where,
              hidden_act);
}

// --- UNet / VAE blocks ---------------------------------------------------------------------------

struct ResOpts {
  std::int64_t groups = 32;
  double eps = 1e-5;
  int temb = -1;  // index of the time embedding vector (after silu happens inside), -1: none
};

int resnet(G& g, const std::string& p, int x, std::int64_t out, const ResOpts& o) {
  const std::int64_t in = g.shape(x)[0];
  int h = g.norm(p + "norm1", x, "group", o.groups, o.eps);
  h = g.act(p + "act1", h, "silu");
  h = g.conv(p + "conv1", h, out, 3, 1, 1);
  if (o.temb >= 0) {
    int t = g.act(p + "temb_act", o.temb, "silu");
    t = g.fc(p + "time_emb_proj", t, out, true);
    t = g.reshape(p + "temb_map", t, {out, 1, 1});
    h = g.binary(p + "temb_add", NetOp::add, h, t);
  }
  h = g.norm(p + "norm2", h, "group", o.groups, o.eps);
  h = g.act(p + "act2", h, "silu");
  h = g.conv(p + "conv2", h, out, 3, 1, 1);
  const int skip = in != out ? g.conv(p + "conv_shortcut", x, out, 1, 1, 0) : x;
  return g.binary(p + "residual", NetOp::add, h, skip);
}

int transformer2d(G& g,
                  const std::string& p,
                  int x,
                  int ctx,
                  std::int64_t heads,
                  std::int64_t dim_head,
                  std::int64_t groups,
                  bool linear_proj) {
  const Shape s = g.shape(x);
  const std::int64_t c = s[0], hw = s[1] * s[2];
  int h = g.norm(p + "norm", x, "group", groups, 1e-6);
  if (linear_proj) {
    h = g.reshape(p + "to_tokens", h, {hw, c}, "1,2,0");
    h = g.fc(p + "proj_in", h, c, true);
  } else {
    h = g.conv(p + "proj_in", h, c, 1, 1, 0);
    h = g.reshape(p + "to_tokens", h, {hw, c}, "1,2,0");
  }
  const std::string b = p + "transformer_blocks.0.";
  int n = g.norm(b + "norm1", h, "layer", 0, 1e-5);
  int a = g.attention(b + "attn1.", n, n, heads, dim_head, false, "to_q", "to_k", "to_v", "to_out.0");
  h = g.binary(b + "attn1.residual", NetOp::add, a, h);
  n = g.norm(b + "norm2", h, "layer", 0, 1e-5);
  a = g.attention(b + "attn2.", n, ctx, heads, dim_head, false, "to_q", "to_k", "to_v", "to_out.0");
  h = g.binary(b + "attn2.residual", NetOp::add, a, h);
  n = g.norm(b + "norm3", h, "layer", 0, 1e-5);
  // GEGLU: one Linear(C, 2*4C) whose first half is the value and second half the gate; kept as
  // two fc ops over the same input (identical parameters and FLOPs, no split op needed).
  const std::int64_t inner = 4 * c;
  const std::string proj = b + "ff.net.0.proj";
  const int val = g.fc(proj + ".value", n, inner, true, proj);
  g.at(val).attrs["split"] = fmt::format("0:{}", inner);
  const int gate = g.fc(proj + ".gate", n, inner, true, proj);
  g.at(gate).attrs["split"] = fmt::format("{}:{}", inner, 2 * inner);
  const int ga = g.act(b + "ff.gelu", gate, "gelu");
  const int gm = g.binary(b + "ff.geglu", NetOp::mul, val, ga);
  a = g.fc(b + "ff.net.2", gm, c, true);
  h = g.binary(b + "ff.residual", NetOp::add, a, h);
  if (linear_proj) {
    h = g.fc(p + "proj_out", h, c, true);
    h = g.reshape(p + "to_map", h, {c, s[1], s[2]}, "1,0");
  } else {
    h = g.reshape(p + "to_map", h, {c, s[1], s[2]}, "1,0");
    h = g.conv(p + "proj_out", h, c, 1, 1, 0);
  }
  return g.binary(p + "residual", NetOp::add, h, x);
}

// VAE mid-block attention (diffusers Attention with group_norm, one head, biases).
int vae_attention(G& g, const std::string& p, int x, std::int64_t groups) {
  const Shape s = g.shape(x);
  const std::int64_t c = s[0], hw = s[1] * s[2];
  int h = g.norm(p + "group_norm", x, "group", groups, 1e-6);
  h = g.reshape(p + "to_tokens", h, {hw, c}, "1,2,0");
  h = g.attention(p, h, h, 1, c, true, "to_q", "to_k", "to_v", "to_out.0");
  h = g.reshape(p + "to_map", h, {c, s[1], s[2]}, "1,0");
  return g.binary(p + "residual", NetOp::add, h, x);
}

}  // namespace

const ComponentGraph& PipelineGraph::component(const std::string& name) const {
  for (const auto& c : components)
    if (c.component == name) return c;
  KVLAB_THROW(UsageError,
              "component \"{}\" is not in the pipeline graph; expected text_encoder, unet or "
              "vae_decoder",
              name);
}

NetDesc build_clip_text_encoder(const json& cfg, const std::string& where, int text_len) {
  const Cfg c{cfg, where};
  const std::int64_t d = c.integer("hidden_size"), ff = c.integer("intermediate_size");
  const std::int64_t heads = c.integer("num_attention_heads"), layers = c.integer("num_hidden_layers");
  const std::int64_t vocab = c.integer("vocab_size"), max_pos = c.integer("max_position_embeddings");
  const double eps = c.real("layer_norm_eps", 1e-5);
  const std::string act = gelu_fn(c.string("hidden_act", std::string("quick_gelu")), where);
  KVLAB_THROW_IF(d % heads,
                 FormatError,
                 "{}: hidden_size {} is not divisible by num_attention_heads {}",
                 where,
                 d,
                 heads);
  const std::int64_t t = text_len > 0 ? text_len : max_pos;
  KVLAB_THROW_IF(t > max_pos,
                 UsageError,
                 "text length {} exceeds max_position_embeddings {} of {}",
                 t,
                 max_pos,
                 where);
  G g("text_encoder", where);
  // The token-embedding gather and the position table are inputs that hold parameters.
  const int tok = g.input("embeddings.token_embedding", {t, d}, vocab * d);
  const int pos = g.input("embeddings.position_embedding", {t, d}, max_pos * d);
  int h = g.binary("embeddings.add", NetOp::add, tok, pos);
  for (std::int64_t i = 0; i < layers; ++i) {
    const std::string p = fmt::format("encoder.layers.{}.", i);
    int n = g.norm(p + "layer_norm1", h, "layer", 0, eps);
    int a = g.attention(p + "self_attn.", n, n, heads, d / heads, true, "q_proj", "k_proj", "v_proj",
                        "out_proj", /*causal=*/true);
    h = g.binary(p + "attn_residual", NetOp::add, a, h);
    n = g.norm(p + "layer_norm2", h, "layer", 0, eps);
    int m = g.fc(p + "mlp.fc1", n, ff, true);
    m = g.act(p + "mlp.act", m, act);
    m = g.fc(p + "mlp.fc2", m, d, true);
    h = g.binary(p + "mlp_residual", NetOp::add, m, h);
  }
  g.norm("final_layer_norm", h, "layer", 0, eps);
  return g.finish();
}

NetDesc build_unet(const json& cfg,
                   const std::string& where,
                   int latent,
                   int text_len,
                   std::int64_t context_dim) {
  const Cfg c{cfg, where};
  const auto blocks = c.ints("block_out_channels");
  const auto downs = c.strings("down_block_types");
  const auto ups = c.strings("up_block_types");
  const std::size_t nb = blocks.size();
  KVLAB_THROW_IF(downs.size() != nb || ups.size() != nb,
                 FormatError,
                 "{}: down_block_types ({}) and up_block_types ({}) must have one entry per "
                 "block_out_channels ({})",
                 where,
                 downs.size(),
                 ups.size(),
                 nb);
  const std::int64_t in_ch = c.integer("in_channels", 4), out_ch = c.integer("out_channels", 4);
  const std::int64_t layers = c.integer("layers_per_block", 2);
  const std::int64_t groups = c.integer("norm_num_groups", 32);
  const double eps = c.real("norm_eps", 1e-5);
  const std::int64_t cross = c.integer("cross_attention_dim");
  const bool linear = c.boolean("use_linear_projection", false);
  KVLAB_THROW_IF(c.string("act_fn", std::string("silu")) != "silu",
                 FormatError,
                 "{}: act_fn \"{}\" is not supported (expected silu)",
                 where,
                 c.string("act_fn"));
  KVLAB_THROW_IF(cross != context_dim,
                 FormatError,
                 "{}: cross_attention_dim {} does not match the text encoder's hidden_size {}",
                 where,
                 cross,
                 context_dim);
  for (const char* key : {"class_embed_type", "addition_embed_type", "encoder_hid_dim",
                          "time_cond_proj_dim", "num_class_embeds"})
    KVLAB_THROW_IF(c.has(key),
                   FormatError,
                   "{}: \"{}\" is set; mobile-plan builds the SD 1.x/2.x UNet only (remove it or "
                   "use a supported config)",
                   where,
                   key);
  KVLAB_THROW_IF(c.has("transformer_layers_per_block") &&
                     cfg.at("transformer_layers_per_block") != json(1),
                 FormatError,
                 "{}: transformer_layers_per_block {} is not supported (SD 1.x/2.x use 1)",
                 where,
                 cfg.at("transformer_layers_per_block").dump());
  for (std::int64_t b : blocks)
    KVLAB_THROW_IF(b % groups,
                   FormatError,
                   "{}: block_out_channels entry {} is not divisible by norm_num_groups {}",
                   where,
                   b,
                   groups);
  // diffusers' naming quirk: attention_head_dim in SD configs is the number of heads when
  // num_attention_heads is absent (UNet2DConditionModel: num_attention_heads or attention_head_dim).
  const std::vector<std::int64_t> heads =
      c.has("num_attention_heads") ? c.int_or_list("num_attention_heads", nb)
                                   : c.int_or_list("attention_head_dim", nb);
  const std::int64_t temb_dim = blocks[0] * 4;
  G g("unet", where);
  const int sample = g.input("sample", {in_ch, latent, latent});
  const int tproj = g.input("time_proj", {blocks[0]});  // sinusoidal, computed on the host
  const int ctx = g.input("encoder_hidden_states", {text_len, cross});
  int temb = g.fc("time_embedding.linear_1", tproj, temb_dim, true);
  temb = g.act("time_embedding.act", temb, "silu");
  temb = g.fc("time_embedding.linear_2", temb, temb_dim, true);
  const ResOpts ro{groups, eps, temb};
  auto attn = [&](const std::string& p, int x, std::size_t level) {
    const std::int64_t ch = g.shape(x)[0];
    KVLAB_THROW_IF(ch % heads[level],
                   FormatError,
                   "{}: {} channels are not divisible by {} attention heads",
                   where,
                   ch,
                   heads[level]);
    return transformer2d(g, p, x, ctx, heads[level], ch / heads[level], groups, linear);
  };
  int h = g.conv("conv_in", sample, blocks[0], 3, 1, 1);
  std::vector<int> skips = {h};
  for (std::size_t i = 0; i < nb; ++i) {
    KVLAB_THROW_IF(downs[i] != "CrossAttnDownBlock2D" && downs[i] != "DownBlock2D",
                   FormatError,
                   "{}: down_block_types[{}] is \"{}\"; expected CrossAttnDownBlock2D or "
                   "DownBlock2D",
                   where,
                   i,
                   downs[i]);
    const bool cross_block = downs[i] == "CrossAttnDownBlock2D";
    for (std::int64_t j = 0; j < layers; ++j) {
      const std::string p = fmt::format("down_blocks.{}.", i);
      h = resnet(g, p + fmt::format("resnets.{}.", j), h, blocks[i], ro);
      if (cross_block) h = attn(p + fmt::format("attentions.{}.", j), h, i);
      skips.push_back(h);
    }
    if (i + 1 < nb) {
      KVLAB_THROW_IF(g.shape(h)[1] % 2,
                     UsageError,
                     "latent side {} cannot be halved {} times; use a resolution divisible by {}",
                     latent,
                     nb - 1,
                     8 << (nb - 1));
      h = g.conv(fmt::format("down_blocks.{}.downsamplers.0.conv", i), h, blocks[i], 3, 2, 1);
      skips.push_back(h);
    }
  }
  h = resnet(g, "mid_block.resnets.0.", h, blocks[nb - 1], ro);
  h = attn("mid_block.attentions.0.", h, nb - 1);
  h = resnet(g, "mid_block.resnets.1.", h, blocks[nb - 1], ro);
  for (std::size_t i = 0; i < nb; ++i) {
    KVLAB_THROW_IF(ups[i] != "CrossAttnUpBlock2D" && ups[i] != "UpBlock2D",
                   FormatError,
                   "{}: up_block_types[{}] is \"{}\"; expected CrossAttnUpBlock2D or UpBlock2D",
                   where,
                   i,
                   ups[i]);
    const std::size_t level = nb - 1 - i;
    const bool cross_block = ups[i] == "CrossAttnUpBlock2D";
    for (std::int64_t j = 0; j <= layers; ++j) {
      const std::string p = fmt::format("up_blocks.{}.", i);
      const int skip = skips.back();
      skips.pop_back();
      h = g.concat(p + fmt::format("cat.{}", j), h, skip);
      h = resnet(g, p + fmt::format("resnets.{}.", j), h, blocks[level], ro);
      if (cross_block) h = attn(p + fmt::format("attentions.{}.", j), h, level);
    }
    if (i + 1 < nb) {
      h = g.upsample(fmt::format("up_blocks.{}.upsamplers.0.upsample", i), h);
      h = g.conv(fmt::format("up_blocks.{}.upsamplers.0.conv", i), h, blocks[level], 3, 1, 1);
    }
  }
  h = g.norm("conv_norm_out", h, "group", groups, eps);
  h = g.act("conv_act", h, "silu");
  g.conv("conv_out", h, out_ch, 3, 1, 1);
  return g.finish();
}

NetDesc build_vae_decoder(const json& cfg, const std::string& where, int latent) {
  const Cfg c{cfg, where};
  const auto blocks = c.ints("block_out_channels");
  const auto ups = c.strings("up_block_types");
  const std::size_t nb = blocks.size();
  KVLAB_THROW_IF(ups.size() != nb,
                 FormatError,
                 "{}: up_block_types has {} entries but block_out_channels has {}",
                 where,
                 ups.size(),
                 nb);
  for (const auto& u : ups)
    KVLAB_THROW_IF(u != "UpDecoderBlock2D",
                   FormatError,
                   "{}: up block type \"{}\" is not supported (expected UpDecoderBlock2D)",
                   where,
                   u);
  const std::int64_t lat = c.integer("latent_channels", 4), out_ch = c.integer("out_channels", 3);
  const std::int64_t layers = c.integer("layers_per_block", 1);
  const std::int64_t groups = c.integer("norm_num_groups", 32);
  for (std::int64_t b : blocks)
    KVLAB_THROW_IF(b % groups,
                   FormatError,
                   "{}: block_out_channels entry {} is not divisible by norm_num_groups {}",
                   where,
                   b,
                   groups);
  const bool post_quant = c.boolean("use_post_quant_conv", true);
  const bool mid_attn = c.boolean("mid_block_add_attention", true);
  G g("vae_decoder", where);
  int h = g.input("latent", {lat, latent, latent});
  if (post_quant) h = g.conv("post_quant_conv", h, lat, 1, 1, 0);
  h = g.conv("decoder.conv_in", h, blocks[nb - 1], 3, 1, 1);
  const ResOpts ro{groups, 1e-6, -1};
  h = resnet(g, "decoder.mid_block.resnets.0.", h, blocks[nb - 1], ro);
  if (mid_attn) h = vae_attention(g, "decoder.mid_block.attentions.0.", h, groups);
  h = resnet(g, "decoder.mid_block.resnets.1.", h, blocks[nb - 1], ro);
  for (std::size_t i = 0; i < nb; ++i) {
    const std::int64_t out = blocks[nb - 1 - i];
    for (std::int64_t j = 0; j <= layers; ++j)
      h = resnet(g, fmt::format("decoder.up_blocks.{}.resnets.{}.", i, j), h, out, ro);
    if (i + 1 < nb) {
      h = g.upsample(fmt::format("decoder.up_blocks.{}.upsamplers.0.upsample", i), h);
      h = g.conv(fmt::format("decoder.up_blocks.{}.upsamplers.0.conv", i), h, out, 3, 1, 1);
    }
  }
  h = g.norm("decoder.conv_norm_out", h, "group", groups, 1e-6);
  h = g.act("decoder.conv_act", h, "silu");
  g.conv("decoder.conv_out", h, out_ch, 3, 1, 1);
  return g.finish();
}

PipelineGraph build_pipeline_graph(const std::filesystem::path& dir, const GraphOptions& opt) {
  KVLAB_THROW_IF(!std::filesystem::is_directory(dir),
                 UsageError,
                 "{}: not a directory; give a diffusers pipeline directory holding "
                 "text_encoder/config.json, unet/config.json and vae/config.json (bundled: "
                 "data/diffusion/sd15, data/diffusion/sd21)",
                 dir.string());
  PipelineGraph pg;
  pg.dir = dir;
  pg.model = std::filesystem::absolute(dir).lexically_normal().filename().string();
  if (pg.model.empty())
    pg.model = std::filesystem::absolute(dir).lexically_normal().parent_path().filename().string();
  const auto te_path = dir / "text_encoder" / "config.json";
  const auto unet_path = dir / "unet" / "config.json";
  const auto vae_path = dir / "vae" / "config.json";
  const json te = read_config(te_path), unet = read_config(unet_path), vae = read_config(vae_path);
  const Cfg vc{vae, vae_path.string()};
  const std::size_t vae_blocks = vc.ints("block_out_channels").size();
  const int scale = 1 << (vae_blocks - 1);
  const int res = opt.resolution > 0 ? opt.resolution : static_cast<int>(vc.integer("sample_size", 512));
  KVLAB_THROW_IF(res % scale,
                 UsageError,
                 "--res {} is not divisible by the VAE scale factor {}",
                 res,
                 scale);
  pg.resolution = res;
  pg.latent = res / scale;
  const Cfg tc{te, te_path.string()};
  pg.text_len = opt.text_len > 0 ? opt.text_len : static_cast<int>(tc.integer("max_position_embeddings"));
  pg.components.push_back(
      {"text_encoder", te_path, build_clip_text_encoder(te, te_path.string(), pg.text_len)});
  pg.components.push_back({"unet",
                           unet_path,
                           build_unet(unet, unet_path.string(), pg.latent, pg.text_len,
                                      tc.integer("hidden_size"))});
  pg.components.push_back(
      {"vae_decoder", vae_path, build_vae_decoder(vae, vae_path.string(), pg.latent)});
  return pg;
}

// --- cost conventions ---------------------------------------------------------------------------

namespace {
std::int64_t attr_int(const NetLayer& l, const char* key) {
  auto it = l.attrs.find(key);
  return it == l.attrs.end() ? 0 : std::stoll(it->second);
}
}  // namespace

OpCost op_cost(const NetLayer& l) {
  OpCost c;
  c.out_elems = l.out_numel();
  c.params = l.weight_count() + l.bias_count() + attr_int(l, "params");
  const double n = static_cast<double>(c.out_elems);
  switch (l.op) {
    case NetOp::conv:
    case NetOp::fc:
      c.flops = 2.0 * static_cast<double>(l.macs()) + (l.bias ? n : 0.0);
      break;
    case NetOp::matmul:
      c.flops = 2.0 * n * static_cast<double>(attr_int(l, "k"));
      break;
    case NetOp::softmax:
      c.flops = 5.0 * n;  // max, subtract, exp, sum, divide
      break;
    case NetOp::norm:
      c.flops = 8.0 * n;  // mean, centre, square, mean, rsqrt, scale, affine (2)
      break;
    case NetOp::act:
      c.flops = l.fn == "silu" ? 4.0 * n : l.fn.rfind("gelu", 0) == 0 ? 8.0 * n : n;
      break;
    case NetOp::add:
    case NetOp::mul:
      c.flops = n * static_cast<double>(l.inputs.size() - 1);
      break;
    default:
      c.flops = 0;
  }
  return c;
}

std::int64_t net_params(const NetDesc& net) {
  std::int64_t s = 0;
  for (const auto& l : net.layers) s += op_cost(l).params;
  return s;
}

double net_flops(const NetDesc& net) {
  double s = 0;
  for (const auto& l : net.layers) s += op_cost(l).flops;
  return s;
}

std::int64_t net_peak_activation(const NetDesc& net) {
  std::int64_t m = 0;
  for (const auto& l : net.layers) m = std::max(m, l.out_numel());
  return m;
}

std::string op_key(const NetLayer& l) {
  std::string k = core::net_op_name(l.op);
  if (l.op == NetOp::reshape) {
    if (l.attrs.count("perm") || l.attrs.count("split_heads") || l.attrs.count("merge_heads"))
      return "reshape:transpose";
    return "reshape:" + (l.fn == "upsample" ? l.fn : std::string("reshape"));
  }
  if (l.op == NetOp::act || l.op == NetOp::norm) return k + ":" + l.fn;
  return k;
}

int op_lowered_rank(const NetLayer& l) {
  const int rank = static_cast<int>(l.shape.size()) + 1;  // + batch
  if (l.op == NetOp::norm && l.fn == "group") return rank + 1;  // [N,G,C/G,H,W]
  return rank;
}

// --- reports ---------------------------------------------------------------------------------------

namespace {
std::string human(double v) {
  const char* units[] = {"", "K", "M", "G", "T"};
  int u = 0;
  while (std::abs(v) >= 1000 && u < 4) {
    v /= 1000;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f}", v) : fmt::format("{:.2f}{}", v, units[u]);
}
std::string shape_str(const Shape& s) {
  std::string o = "[";
  for (std::size_t i = 0; i < s.size(); ++i) o += (i ? "," : "") + std::to_string(s[i]);
  return o + "]";
}
}  // namespace

std::string format_graph(const PipelineGraph& g, bool per_op) {
  std::string out = fmt::format("model {} ({}): {}x{} image, {}x{} latent, {} text tokens\n",
                                g.model,
                                g.dir.string(),
                                g.resolution,
                                g.resolution,
                                g.latent,
                                g.latent,
                                g.text_len);
  if (per_op) {
    for (const auto& c : g.components) {
      out += fmt::format("\n== {} ==\n{:<4} {:<58} {:<18} {:<16} {:>12} {:>10} {:>10}\n",
                         c.component,
                         "#",
                         "op",
                         "type",
                         "shape",
                         "params",
                         "FLOPs",
                         "act KiB");
      for (std::size_t i = 0; i < c.net.layers.size(); ++i) {
        const auto& l = c.net.layers[i];
        const OpCost oc = op_cost(l);
        out += fmt::format("{:<4} {:<58} {:<18} {:<16} {:>12} {:>10} {:>10.1f}\n",
                           i,
                           l.name,
                           op_key(l),
                           shape_str(l.shape),
                           oc.params,
                           human(oc.flops),
                           static_cast<double>(oc.out_elems) * 2 / 1024);
      }
    }
    out += "\n";
  }
  out += fmt::format("{:<14} {:>6} {:>15} {:>10} {:>12} {:>16}\n",
                     "component",
                     "ops",
                     "params",
                     "fp16 MB",
                     "GFLOPs/call",
                     "peak act MB fp16");
  std::int64_t tp = 0;
  for (const auto& c : g.components) {
    const std::int64_t p = net_params(c.net);
    tp += p;
    out += fmt::format("{:<14} {:>6} {:>15} {:>10.1f} {:>12.1f} {:>16.1f}\n",
                       c.component,
                       c.net.layers.size(),
                       p,
                       static_cast<double>(p) * 2 / 1e6,
                       net_flops(c.net) / 1e9,
                       static_cast<double>(net_peak_activation(c.net)) * 2 / 1e6);
  }
  out += fmt::format("{:<14} {:>6} {:>15} {:>10.1f}\n",
                     "total",
                     "",
                     tp,
                     static_cast<double>(tp) * 2 / 1e6);
  return out;
}

json graph_json(const PipelineGraph& g, bool per_op) {
  json j = {{"model", g.model},
            {"dir", g.dir.string()},
            {"resolution", g.resolution},
            {"latent", g.latent},
            {"text_len", g.text_len}};
  json comps = json::array();
  for (const auto& c : g.components) {
    json cj = {{"component", c.component},
               {"config", c.config.string()},
               {"ops", c.net.layers.size()},
               {"params", net_params(c.net)},
               {"flops", net_flops(c.net)},
               {"peak_activation_elems", net_peak_activation(c.net)}};
    if (per_op) {
      json ops = json::array();
      for (const auto& l : c.net.layers) {
        const OpCost oc = op_cost(l);
        ops.push_back({{"name", l.name},
                       {"type", op_key(l)},
                       {"shape", l.shape},
                       {"params", oc.params},
                       {"flops", oc.flops},
                       {"out_elems", oc.out_elems}});
      }
      cj["op_list"] = ops;
    }
    comps.push_back(cj);
  }
  j["components"] = comps;
  return j;
}

}  // namespace kvlab::pim
