#include "kvlab/llm/import_export.hpp"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <regex>
#include <set>

#include <nlohmann/json.hpp>

#include "kvlab/core/error.hpp"
#include "kvlab/core/log.hpp"
#include "kvlab/core/tensor_io.hpp"
#include "kvlab/llm/gguf.hpp"
#include "kvlab/llm/model_io.hpp"
#include "kvlab/llm/safetensors.hpp"
#include "kvlab/llm/tokenizer.hpp"

namespace kvlab::llm {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::optional<h5::DType> target_dtype(const std::string& s) {
  if (s == "float32") return h5::DType::f32;
  if (s == "bfloat16") return h5::DType::bf16;
  if (s == "float16") return h5::DType::f16;
  return std::nullopt;
}

bool is_weight_dtype(h5::DType t) {
  return t == h5::DType::f32 || t == h5::DType::bf16 || t == h5::DType::f16;
}

float load_float(h5::DType t, const char* p, std::size_t i) {
  switch (t) {
    case h5::DType::bf16: {
      c10::BFloat16 v;
      std::memcpy(&v, p + 2 * i, 2);
      return static_cast<float>(v);
    }
    case h5::DType::f16: {
      c10::Half v;
      std::memcpy(&v, p + 2 * i, 2);
      return static_cast<float>(v);
    }
    default: {
      float v;
      std::memcpy(&v, p + 4 * i, 4);
      return v;
    }
  }
}

void store_float(h5::DType t, char* p, std::size_t i, float x) {
  switch (t) {
    case h5::DType::bf16: {
      const c10::BFloat16 v(x);  // round to nearest even, as LibTorch's .to(kBFloat16)
      std::memcpy(p + 2 * i, &v, 2);
      return;
    }
    case h5::DType::f16: {
      const c10::Half v(x);
      std::memcpy(p + 2 * i, &v, 2);
      return;
    }
    default: std::memcpy(p + 4 * i, &x, 4);
  }
}

/// Converts a row-major buffer between weight dtypes and hands the result to `sink`. Narrowing
/// (f32 -> bf16/f16) happens in place, so a conversion costs no second buffer; widening needs one.
void convert(char* buf, h5::DType from, h5::DType to, std::int64_t numel,
             const std::function<void(const void*, std::size_t)>& sink) {
  const auto n = static_cast<std::size_t>(numel);
  if (from == to) return sink(buf, n * h5::dtype_size(from));
  if (h5::dtype_size(to) <= h5::dtype_size(from)) {
    // Element i is read before it is written, and writes never run ahead of unread elements.
    for (std::size_t i = 0; i < n; ++i) store_float(to, buf, i, load_float(from, buf, i));
    return sink(buf, n * h5::dtype_size(to));
  }
  std::vector<char> out(n * h5::dtype_size(to));
  for (std::size_t i = 0; i < n; ++i) store_float(to, out.data(), i, load_float(from, buf, i));
  sink(out.data(), out.size());
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  KVLAB_THROW_IF(!in, FormatError, "{}: cannot open", p.string());
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

// ------------------------------------------------------------------------------ import-hf --

ImportResult import_hf(const fs::path& dir, const fs::path& out, const ImportHfOptions& opt,
                       const core::Provenance& prov, core::Progress& progress) {
  std::error_code ec;
  KVLAB_THROW_IF(!fs::is_directory(dir, ec), FormatError,
                 "{}: not a directory; give the Hugging Face checkpoint directory (config.json + "
                 "model.safetensors)",
                 dir.string());
  const std::optional<h5::DType> to = target_dtype(opt.dtype);
  KVLAB_THROW_IF(opt.dtype != "auto" && !to, UsageError,
                 "--dtype {}: expected auto, float32, bfloat16 or float16", opt.dtype);
  const fs::path cfg_path = dir / "config.json";
  KVLAB_THROW_IF(!fs::exists(cfg_path, ec), FormatError,
                 "{}: no config.json; is this a Hugging Face checkpoint directory?", dir.string());
  const std::string cfg_text = read_text(cfg_path);
  json cfg_json;
  try {
    cfg_json = json::parse(cfg_text);
  } catch (const json::parse_error& e) {
    KVLAB_THROW(FormatError, "{}: not valid JSON ({})", cfg_path.string(), e.what());
  }
  const ModelConfig config = ModelConfig::from_hf_json(cfg_json, cfg_path.string());

  progress.stage("reading the checkpoint header", 1, 2);
  const SafetensorsCheckpoint ck = SafetensorsCheckpoint::open_dir(dir);
  std::map<std::string, std::vector<std::int64_t>> shapes;
  std::vector<std::string> skipped;
  for (const auto& name : ck.names()) {
    // Old checkpoints store RoPE's inv_freq buffer; kvlab recomputes it from the config. A tied
    // model may carry a redundant lm_head copy.
    static const std::string kInvFreq = "rotary_emb.inv_freq";
    if (name.size() >= kInvFreq.size() &&
        name.compare(name.size() - kInvFreq.size(), kInvFreq.size(), kInvFreq) == 0) {
      skipped.push_back(name);
      continue;
    }
    if (config.tie_word_embeddings && name == "lm_head.weight") {
      skipped.push_back(name);
      continue;
    }
    shapes[name] = ck.find(name)->shape;
  }
  check_model_tensors(config, shapes, ck.source());
  for (const auto& [name, shape] : shapes) {
    const SafetensorsTensor* t = ck.find(name);
    KVLAB_THROW_IF(!t->type || !is_weight_dtype(*t->type), FormatError,
                   "{}: tensor {} has dtype {}; kvlab imports F32, BF16 and F16 weights (convert "
                   "the checkpoint with transformers first)",
                   ck.source(), name, t->dtype);
  }
  if (!skipped.empty())
    log::info("import-hf: skipping {} tensor(s) kvlab does not need: {}", skipped.size(),
              fmt::join(skipped, ", "));

  progress.stage("writing the model artifact", 2, 2);
  ModelConfig stored = config;
  if (to) stored.torch_dtype = opt.dtype;
  ModelWriter w(out, stored, prov, cfg_text);
  ImportResult r;
  r.source = ck.source();
  progress.begin("tensors", static_cast<std::int64_t>(shapes.size()), "tensors");
  std::vector<char> buf;
  std::set<std::string> dtypes;
  for (const auto& [name, shape] : config.expected_tensors()) {
    const SafetensorsTensor* t = ck.find(name);
    buf.resize(static_cast<std::size_t>(t->nbytes()));
    ck.read_raw(name, buf.data());
    const h5::DType dt = to ? *to : *t->type;
    convert(buf.data(), *t->type, dt, h5::numel(shape), [&](const void* p, std::size_t n) {
      w.add(name, dt, shape, p);
      r.bytes_written += n;
    });
    dtypes.insert(h5::dtype_name(dt));
    r.parameters += h5::numel(shape);
    progress.update(++r.tensors);
  }
  progress.end();
  if (fs::exists(dir / "tokenizer.json") || fs::exists(dir / "tokenizer.model"))
    write_tokenizer(w.root(), tokenizer_from_hf(dir));
  r.header = w.commit();
  r.config = stored;
  r.dtype = dtypes.size() == 1 ? *dtypes.begin() : "mixed";
  return r;
}

// ---------------------------------------------------------------------------- import-gguf --

namespace {

// llama.cpp tensor names (llama-arch.cpp, LLM_ARCH_LLAMA) -> Hugging Face names.
std::string hf_name_of(const std::string& g) {
  static const std::map<std::string, std::string> top = {
      {"token_embd.weight", "model.embed_tokens.weight"},
      {"output_norm.weight", "model.norm.weight"},
      {"output.weight", "lm_head.weight"}};
  static const std::map<std::string, std::string> layer = {
      {"attn_norm.weight", "input_layernorm.weight"},
      {"attn_q.weight", "self_attn.q_proj.weight"},
      {"attn_k.weight", "self_attn.k_proj.weight"},
      {"attn_v.weight", "self_attn.v_proj.weight"},
      {"attn_output.weight", "self_attn.o_proj.weight"},
      {"ffn_norm.weight", "post_attention_layernorm.weight"},
      {"ffn_gate.weight", "mlp.gate_proj.weight"},
      {"ffn_up.weight", "mlp.up_proj.weight"},
      {"ffn_down.weight", "mlp.down_proj.weight"}};
  if (const auto it = top.find(g); it != top.end()) return it->second;
  static const std::regex re(R"(blk\.(\d+)\.(.+))");
  std::smatch m;
  if (std::regex_match(g, m, re)) {
    if (const auto it = layer.find(m[2].str()); it != layer.end())
      return fmt::format("model.layers.{}.{}", m[1].str(), it->second);
  }
  return {};
}

// Llama 3.1's rope scaling, as transformers' _compute_llama3_parameters computes the per-frequency
// divisor; llama.cpp stores exactly these divisors as the rope_freqs.weight tensor.
std::vector<double> llama3_factors(const ModelConfig& c) {
  std::vector<double> f;
  const double pi = 3.14159265358979323846;
  const auto& s = c.rope_scaling;
  const double low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
  const double high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
  for (std::int64_t i = 0; i < c.head_dim; i += 2) {
    const double freq = 1.0 / std::pow(c.rope_theta, static_cast<double>(i) / c.head_dim);
    const double wavelen = 2 * pi / freq;
    if (wavelen < high_wavelen) {
      f.push_back(1.0);
    } else if (wavelen > low_wavelen) {
      f.push_back(s.factor);
    } else {
      const double smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) /
                            (s.high_freq_factor - s.low_freq_factor);
      f.push_back(1.0 / ((1 - smooth) / s.factor + smooth));
    }
  }
  return f;
}

void write_gguf_tokenizer(const GgufFile& f, h5::Group& root) {
  const std::string prefix = "tokenizer.ggml.";
  std::vector<std::pair<std::string, const GgufValue*>> keys;
  for (const auto& [k, v] : f.metadata())
    if (k.rfind(prefix, 0) == 0) keys.push_back({k.substr(prefix.size()), &v});
  if (keys.empty()) return;
  h5::Group g = root.require_group("tokenizer/gguf");
  g.set_attr("source", f.path());
  for (const auto& [k, v] : keys) {
    std::string name = k;
    for (char& ch : name)
      if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '_')) ch = '_';
    if (v->nested) continue;  // nothing kvlab's tokenizers use is a nested array
    if (v->is_array) {
      if (v->type == GgufType::STRING) {
        write_string_dataset(g, name, v->strings);
      } else if (v->is_float()) {
        std::vector<float> x(v->floats.begin(), v->floats.end());
        g.write(name, h5::DType::f32, {static_cast<std::int64_t>(x.size())}, x.data());
      } else {
        std::vector<std::int32_t> x;
        bool fits = true;
        for (auto i : v->ints) {
          fits = fits && i >= INT32_MIN && i <= INT32_MAX;
          x.push_back(static_cast<std::int32_t>(i));
        }
        if (fits)
          g.write(name, h5::DType::i32, {static_cast<std::int64_t>(x.size())}, x.data());
        else
          g.write(name, h5::DType::i64, {static_cast<std::int64_t>(v->ints.size())},
                  v->ints.data());
      }
    } else if (v->type == GgufType::STRING) {
      g.set_attr(name, v->strings.at(0));
    } else if (v->is_float()) {
      g.set_attr(name, v->floats.at(0));
    } else if (v->type == GgufType::BOOL) {
      g.set_attr(name, v->ints.at(0) != 0);
    } else {
      g.set_attr(name, v->ints.at(0));
    }
  }
}

}  // namespace

ModelConfig gguf_model_config(const GgufFile& f) {
  const std::string arch = f.has("general.architecture") ? f.get_string("general.architecture") : "";
  KVLAB_THROW_IF(arch != "llama", FormatError,
                 "{}: general.architecture is \"{}\"; import-gguf reads Llama-architecture GGUF "
                 "files only (use import-hf on the original checkpoint for others)",
                 f.path(), arch);
  const std::string a = arch + ".";
  ModelConfig c;
  c.arch = Arch::llama;
  c.hidden_size = f.get_int(a + "embedding_length");
  c.intermediate_size = f.get_int(a + "feed_forward_length");
  c.num_hidden_layers = f.get_int(a + "block_count");
  c.num_attention_heads = f.get_int(a + "attention.head_count");
  c.num_key_value_heads = f.has(a + "attention.head_count_kv")
                              ? f.get_int(a + "attention.head_count_kv")
                              : c.num_attention_heads;
  KVLAB_THROW_IF(c.num_attention_heads <= 0, FormatError, "{}: {}attention.head_count is {}",
                 f.path(), a, c.num_attention_heads);
  c.head_dim = f.has(a + "attention.key_length") ? f.get_int(a + "attention.key_length")
                                                 : c.hidden_size / c.num_attention_heads;
  if (f.has(a + "rope.dimension_count")) {
    const std::int64_t rd = f.get_int(a + "rope.dimension_count");
    KVLAB_THROW_IF(rd != c.head_dim, FormatError,
                   "{}: {}rope.dimension_count {} differs from the head size {}; partial rotary "
                   "embeddings are not supported",
                   f.path(), a, rd, c.head_dim);
  }
  c.max_position_embeddings =
      f.has(a + "context_length") ? f.get_int(a + "context_length") : std::int64_t{2048};
  c.rms_norm_eps = f.has(a + "attention.layer_norm_rms_epsilon")
                       ? f.get_float(a + "attention.layer_norm_rms_epsilon")
                       : 1e-5;
  // GGUF stores float32; HF configs hold the decimal (1e-5, not 9.99999974e-06): round to 7
  // significant digits so config.json exports read naturally. Computation is unaffected in fp32.
  c.rms_norm_eps = std::stod(fmt::format("{:.7g}", c.rms_norm_eps));
  c.rope_theta = f.has(a + "rope.freq_base") ? f.get_float(a + "rope.freq_base") : 10000.0;
  c.rope_theta = std::stod(fmt::format("{:.7g}", c.rope_theta));
  if (f.has(a + "rope.scaling.type")) {
    const std::string t = f.get_string(a + "rope.scaling.type");
    if (t == "linear") {
      c.rope_scaling.type = "linear";
      c.rope_scaling.factor = f.get_float(a + "rope.scaling.factor");
    } else {
      KVLAB_THROW_IF(t != "none", FormatError,
                     "{}: {}rope.scaling.type \"{}\" is not supported (none, linear; llama3 comes "
                     "from rope_freqs.weight)",
                     f.path(), a, t);
    }
  }
  const GgufTensorInfo* emb = f.find("token_embd.weight");
  KVLAB_THROW_IF(!emb, FormatError, "{}: tensor token_embd.weight is missing", f.path());
  c.vocab_size = f.has(a + "vocab_size") ? f.get_int(a + "vocab_size")
                                         : emb->shape().at(0);
  c.tie_word_embeddings = f.find("output.weight") == nullptr;
  c.attention_bias = false;
  if (f.has("tokenizer.ggml.bos_token_id")) c.bos_token_id = f.get_int("tokenizer.ggml.bos_token_id");
  if (f.has("tokenizer.ggml.eos_token_id"))
    c.eos_token_ids = {f.get_int("tokenizer.ggml.eos_token_id")};
  c.validate(f.path());
  return c;
}

ImportResult import_gguf(const fs::path& file, const fs::path& out, const ImportGgufOptions& opt,
                         const core::Provenance& prov, core::Progress& progress) {
  const std::string dts = opt.dtype == "auto" ? "float32" : opt.dtype;
  const std::optional<h5::DType> to = target_dtype(dts);
  KVLAB_THROW_IF(!to, UsageError, "--dtype {}: expected float32, bfloat16 or float16", opt.dtype);
  progress.stage("reading the GGUF header", 1, 2);
  const GgufFile f = GgufFile::open(file);
  ModelConfig c = gguf_model_config(f);
  c.torch_dtype = dts;

  // Map every tensor; refuse what a Llama does not have.
  std::map<std::string, const GgufTensorInfo*> by_hf;
  std::map<std::string, std::vector<std::int64_t>> shapes;
  const GgufTensorInfo* rope_freqs = nullptr;
  for (const auto& t : f.tensors()) {
    if (t.name == "rope_freqs.weight") {
      rope_freqs = &t;
      continue;
    }
    const std::string hf = hf_name_of(t.name);
    KVLAB_THROW_IF(hf.empty(), FormatError,
                   "{}: tensor {} is not part of a Llama model kvlab knows; this GGUF is of "
                   "another architecture or variant",
                   f.path(), t.name);
    by_hf[hf] = &t;
    shapes[hf] = t.shape();
  }
  check_model_tensors(c, shapes, f.path());
  for (const auto& [hf, t] : by_hf)
    KVLAB_THROW_IF(!ggml_type_supported(t->type), FormatError,
                   "{}: tensor {} is {}, which kvlab does not dequantise (supported: F32, F16, "
                   "BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)",
                   f.path(), t->name, ggml_type_name(t->type));
  if (rope_freqs) {
    // llama.cpp stores Llama 3.1's rope scaling as per-frequency divisors. Recover the HF
    // parameters: the factor is the largest divisor; the other three are Meta's published values
    // (every Llama 3.x uses them), checked by recomputing all divisors.
    const std::vector<float> v = f.read_f32(*rope_freqs);
    KVLAB_THROW_IF(static_cast<std::int64_t>(v.size()) != c.head_dim / 2, FormatError,
                   "{}: rope_freqs.weight has {} entries but head_dim / 2 is {}", f.path(),
                   v.size(), c.head_dim / 2);
    const float mx = *std::max_element(v.begin(), v.end());
    bool all_one = true;
    for (float x : v) all_one = all_one && x == 1.0f;
    if (!all_one) {
      c.rope_scaling.type = "llama3";
      c.rope_scaling.factor = mx;
      c.rope_scaling.low_freq_factor = 1.0;
      c.rope_scaling.high_freq_factor = 4.0;
      c.rope_scaling.original_max_position_embeddings = 8192;
      const auto want = llama3_factors(c);
      double err = 0;
      for (std::size_t i = 0; i < v.size(); ++i)
        err = std::max(err, std::abs(v[i] - want[i]) / want[i]);
      KVLAB_THROW_IF(err > 1e-5, FormatError,
                     "{}: rope_freqs.weight does not match Llama 3 rope scaling with factor {} "
                     "(low 1, high 4, original context 8192; relative error {:.2g}); this rope "
                     "scaling is not supported",
                     f.path(), mx, err);
    }
  }

  progress.stage("dequantising and writing", 2, 2);
  ModelWriter w(out, c, prov);
  ImportResult r;
  r.source = f.path();
  progress.begin("tensors", static_cast<std::int64_t>(by_hf.size()), "tensors");
  for (const auto& [name, shape] : c.expected_tensors()) {
    const GgufTensorInfo* t = by_hf.at(name);
    std::vector<float> x = f.read_f32(*t);
    if (name.find("self_attn.q_proj.weight") != std::string::npos)
      gguf_unpermute_rows(x.data(), shape[0], shape[1], c.num_attention_heads);
    else if (name.find("self_attn.k_proj.weight") != std::string::npos)
      gguf_unpermute_rows(x.data(), shape[0], shape[1], c.num_key_value_heads);
    convert(reinterpret_cast<char*>(x.data()), h5::DType::f32, *to, h5::numel(shape), [&](const void* p, std::size_t n) {
      w.add(name, *to, shape, p);
      r.bytes_written += n;
    });
    r.parameters += h5::numel(shape);
    progress.update(++r.tensors);
  }
  progress.end();
  write_gguf_tokenizer(f, w.root());
  try {
    if (auto t = tokenizer_from_gguf(f)) write_tokenizer(w.root(), *t);
  } catch (const FormatError& e) {  // the weights are still useful with token ids
    log::warn("{}; the model is imported without a native tokenizer", e.what());
  }
  r.header = w.commit();
  r.config = c;
  r.dtype = dts;
  return r;
}

// ------------------------------------------------------------------------------ export-hf --

namespace {
void write_file_atomic(const fs::path& p, const std::string& text) {
  fs::path partial = p;
  partial += fmt::format(".partial.{}", ::getpid());
  {
    std::ofstream o(partial, std::ios::binary | std::ios::trunc);
    o << text;
    KVLAB_THROW_IF(!o, IoError, "{}: write failed", partial.string());
  }
  std::error_code ec;
  fs::rename(partial, p, ec);
  KVLAB_THROW_IF(ec, IoError, "{}: cannot rename into place: {}", p.string(), ec.message());
}
}  // namespace

std::vector<fs::path> write_hf_tokenizer(const TokenizerData& t, const fs::path& dir) {
  std::vector<fs::path> out;
  if (t.model == "bpe") {
    write_file_atomic(dir / "tokenizer.json", tokenizer_to_hf_json(t) + "\n");
    out.push_back(dir / "tokenizer.json");
  } else if (t.model == "spm") {
    write_file_atomic(dir / "tokenizer.model", t.spm_model);
    out.push_back(dir / "tokenizer.model");
  } else {
    return out;  // byte-level: nothing HF can load
  }
  write_file_atomic(dir / "tokenizer_config.json", tokenizer_config_to_hf_json(t) + "\n");
  out.push_back(dir / "tokenizer_config.json");
  return out;
}

void check_output_dir(const fs::path& dir, bool force) {
  std::error_code ec;
  const std::string d = dir.string();
  KVLAB_THROW_IF(d.empty(), UsageError, "-o/--output: empty path");
  if (fs::exists(dir, ec)) {
    KVLAB_THROW_IF(!fs::is_directory(dir, ec), UsageError,
                   "-o/--output {}: exists and is not a directory; export-hf writes a directory",
                   d);
    KVLAB_THROW_IF(!fs::is_empty(dir, ec) && !force, UsageError,
                   "-o/--output {}: directory is not empty; pass --force to write into it "
                   "(config.json and model.safetensors are replaced)",
                   d);
  } else {
    const fs::path parent = dir.has_parent_path() ? dir.parent_path() : fs::path(".");
    KVLAB_THROW_IF(!fs::is_directory(parent, ec), UsageError,
                   "-o/--output {}: parent directory {} does not exist; create it first", d,
                   parent.string());
  }
}

ExportResult export_hf(const fs::path& model, const fs::path& dir, core::Progress& progress) {
  const ModelFile m = read_model_params(model);
  const auto reader = core::ArtifactReader::open(model, kModelKind, 1, kModelFormatVersion);
  KVLAB_THROW_IF(!reader.root().has_group("weights"), FormatError,
                 "{}: model artifact without /weights; re-create it", model.string());
  const h5::Group wg = reader.root().group("weights");
  std::vector<SafetensorsSpec> specs;
  std::map<std::string, std::vector<std::int64_t>> shapes;
  std::set<std::string> dtypes;
  for (const auto& name : wg.children()) {
    const h5::DatasetInfo info = wg.info(name);
    KVLAB_THROW_IF(!info.dtype || !is_weight_dtype(*info.dtype), FormatError,
                   "{}:/weights/{}: stored as {}; weights must be float32, bfloat16 or float16",
                   model.string(), name, info.type_desc);
    specs.push_back({name, *info.dtype, info.shape});
    shapes[name] = info.shape;
    dtypes.insert(h5::dtype_name(*info.dtype));
  }
  check_model_tensors(m.config, shapes, model.string() + ":/weights");

  // config.json: the source config with every field kvlab knows replaced, so extra HF fields
  // survive and the artifact's values (layer count after pruning, ...) win.
  json cfg = json::object();
  if (!m.hf_config.empty()) {
    try {
      cfg = json::parse(m.hf_config);
    } catch (const json::parse_error&) {
      cfg = json::object();
    }
    if (!cfg.is_object()) cfg = json::object();
  }
  const json ours = m.config.to_hf_json();
  for (auto it = ours.begin(); it != ours.end(); ++it) cfg[it.key()] = it.value();
  // transformers >= 5 keeps rope settings in rope_parameters; keep it consistent with ours.
  if (cfg.contains("rope_parameters") && cfg["rope_parameters"].is_object()) {
    json rp = {{"rope_theta", m.config.rope_theta}};
    if (ours.contains("rope_scaling") && ours["rope_scaling"].is_object()) {
      for (auto it = ours["rope_scaling"].begin(); it != ours["rope_scaling"].end(); ++it)
        rp[it.key()] = it.value();
    } else {
      rp["rope_type"] = "default";
    }
    cfg["rope_parameters"] = rp;
    if (cfg["rope_scaling"].is_null()) cfg.erase("rope_scaling");
  }
  // Per-layer lists (Qwen2's layer_types) follow the blocks that are left.
  if (cfg.contains("layer_types") && cfg["layer_types"].is_array() &&
      static_cast<std::int64_t>(cfg["layer_types"].size()) != m.config.num_hidden_layers) {
    json kept = json::array();
    for (std::int64_t i : m.original_layer_indices)
      if (i >= 0 && i < static_cast<std::int64_t>(cfg["layer_types"].size()))
        kept.push_back(cfg["layer_types"][static_cast<std::size_t>(i)]);
    if (static_cast<std::int64_t>(kept.size()) == m.config.num_hidden_layers)
      cfg["layer_types"] = kept;
    else
      cfg.erase("layer_types");
  }
  const std::string dt = dtypes.size() == 1 ? *dtypes.begin() : "float32";
  cfg["torch_dtype"] = dt;
  if (cfg.contains("dtype")) cfg["dtype"] = dt;

  std::error_code ec;
  fs::create_directories(dir, ec);
  KVLAB_THROW_IF(ec, IoError, "{}: cannot create directory: {}", dir.string(), ec.message());
  // A sharded index left from an earlier export would take precedence over model.safetensors.
  static const std::regex shard_re(R"(model-\d+-of-\d+\.safetensors)");
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (n == "model.safetensors.index.json" || std::regex_match(n, shard_re)) {
      log::warn("export-hf: removing stale {} from {}", n, dir.string());
      fs::remove(e.path(), ec);
    }
  }
  // No config.json until the weights are complete: a failed export leaves no loadable directory.
  fs::remove(dir / "config.json", ec);
  ExportResult r;
  r.config = m.config;
  r.safetensors = dir / "model.safetensors";
  r.config_json = dir / "config.json";
  progress.begin("tensors", static_cast<std::int64_t>(specs.size()), "tensors");
  write_safetensors(
      r.safetensors, specs,
      [&](std::size_t i, std::vector<char>& buf) {
        wg.read(specs[i].name, specs[i].type, buf.data());
        r.bytes += buf.size();
        progress.update(static_cast<std::int64_t>(i + 1));
      },
      {{"format", "pt"}, {"kvlab_source", model.filename().string()}});
  progress.end();
  r.tensors = static_cast<std::int64_t>(specs.size());
  // config.json last, written atomically: a directory with a config.json is complete.
  fs::path partial = r.config_json;
  partial += fmt::format(".partial.{}", ::getpid());
  {
    std::ofstream o(partial, std::ios::trunc);
    o << cfg.dump(2) << "\n";
    KVLAB_THROW_IF(!o, IoError, "{}: write failed", partial.string());
  }
  fs::rename(partial, r.config_json, ec);
  KVLAB_THROW_IF(ec, IoError, "{}: cannot rename into place: {}", r.config_json.string(),
                 ec.message());
  if (m.tokenizer) r.tokenizer_files = write_hf_tokenizer(*m.tokenizer, dir);
  return r;
}

}  // namespace kvlab::llm
