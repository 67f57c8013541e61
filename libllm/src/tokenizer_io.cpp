// Tokenizer storage and import (tokenizer.hpp): the /tokenizer group of a model artifact
// (docs/formats/model.md), HF tokenizer.json / tokenizer_config.json / tokenizer.model, GGUF
// tokenizer.ggml.* metadata, and tokenizer.json export.
#include <fmt/format.h>
#include <hdf5.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>

#include "kvlab/core/artifact.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/core/h5.hpp"
#include "kvlab/llm/gguf.hpp"
#include "kvlab/llm/model_io.hpp"
#include "kvlab/llm/tokenizer.hpp"

namespace kvlab::llm {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The pre-tokenizer patterns of the original tokenizer.json files (llama.cpp's GGUF `pre` names).
const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  KVLAB_THROW_IF(!f, FormatError, "{}: cannot open", p.string());
  return std::string(std::istreambuf_iterator<char>(f), {});
}

json parse_json(const fs::path& p) {
  try {
    return json::parse(slurp(p));
  } catch (const json::exception& e) {
    KVLAB_THROW(FormatError, "{}: not valid JSON: {}", p.string(), e.what());
  }
}

std::string snake(const std::string& s) {
  std::string o;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (std::isupper(static_cast<unsigned char>(s[i]))) {
      if (i) o.push_back('_');
      o.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(s[i]))));
    } else {
      o.push_back(s[i]);
    }
  }
  return o;
}

std::string camel(const std::string& s) {
  std::string o;
  bool up = true;
  for (char c : s) {
    if (c == '_') {
      up = true;
      continue;
    }
    o.push_back(up ? static_cast<char>(std::toupper(static_cast<unsigned char>(c))) : c);
    up = false;
  }
  return o;
}

std::string regex_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (std::string("\\^$.|?*+()[]{}").find(c) != std::string::npos) o.push_back('\\');
    o.push_back(c);
  }
  return o;
}

void pre_from_json(const json& j, const std::string& where, std::vector<PreTokenizerStep>& out,
                   bool& byte_level) {
  if (j.is_null()) return;
  const std::string type = j.value("type", "");
  if (type == "Sequence") {
    for (const auto& s : j.at("pretokenizers")) pre_from_json(s, where, out, byte_level);
  } else if (type == "ByteLevel") {
    PreTokenizerStep s;
    s.kind = PreTokenizerStep::Kind::byte_level;
    s.add_prefix_space = j.value("add_prefix_space", false);
    s.use_regex = j.value("use_regex", true);
    out.push_back(s);
    byte_level = true;
  } else if (type == "Split") {
    PreTokenizerStep s;
    s.kind = PreTokenizerStep::Kind::split;
    const json& p = j.at("pattern");
    if (p.contains("Regex")) s.pattern = p.at("Regex").get<std::string>();
    else s.pattern = regex_escape(p.at("String").get<std::string>());
    s.behavior = snake(j.value("behavior", "Isolated"));
    KVLAB_THROW_IF(j.value("invert", false) && s.behavior != "isolated", FormatError,
                   "{}: pre-tokenizer Split with invert and behavior {} is not supported", where,
                   s.behavior);
    out.push_back(s);
  } else if (type == "Digits") {
    PreTokenizerStep s;
    s.kind = PreTokenizerStep::Kind::digits;
    s.individual_digits = j.value("individual_digits", false);
    out.push_back(s);
  } else {
    KVLAB_THROW(FormatError,
                "{}: pre-tokenizer \"{}\" is not supported (kvlab runs Sequence, Split, ByteLevel "
                "and Digits; SentencePiece-style models need their tokenizer.model beside it)",
                where, type);
  }
}

std::string normalizer_from_json(const json& j, const std::string& where) {
  if (j.is_null()) return "";
  const std::string type = j.value("type", "");
  if (type == "NFC") return "nfc";
  if (type == "Sequence") {
    std::string r;
    for (const auto& n : j.at("normalizers")) {
      const std::string x = normalizer_from_json(n, where);
      KVLAB_THROW_IF(!r.empty() && !x.empty(), FormatError, "{}: more than one normalizer", where);
      r = x.empty() ? r : x;
    }
    return r;
  }
  KVLAB_THROW(FormatError, "{}: normalizer \"{}\" is not supported with byte-level BPE (none or NFC)",
              where, type);
}

std::string token_content(const json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_object() && j.contains("content")) return j.at("content").get<std::string>();
  return "";
}

std::int64_t find_token(const TokenizerData& d, const std::string& s) {
  if (s.empty()) return -1;
  for (const auto& a : d.added)
    if (a.content == s) return a.id;
  for (std::size_t i = 0; i < d.tokens.size(); ++i)
    if (d.tokens[i] == s) return static_cast<std::int64_t>(i);
  return -1;
}

// --- SentencePiece ModelProto wire format (sentencepiece_model.proto), for GGUF llama vocabs.
void pb_varint(std::string& o, std::uint64_t v) {
  while (v >= 0x80) {
    o.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  o.push_back(static_cast<char>(v));
}
void pb_tag(std::string& o, int field, int wire) { pb_varint(o, static_cast<std::uint64_t>(field << 3 | wire)); }
void pb_int(std::string& o, int field, std::int64_t v) {
  pb_tag(o, field, 0);
  pb_varint(o, static_cast<std::uint64_t>(v));
}
void pb_bytes(std::string& o, int field, const std::string& s) {
  pb_tag(o, field, 2);
  pb_varint(o, s.size());
  o += s;
}
void pb_float(std::string& o, int field, float f) {
  pb_tag(o, field, 5);
  char b[4];
  std::memcpy(b, &f, 4);
  o.append(b, 4);
}

std::string build_spm_proto(const TokenizerData& d, bool add_dummy_prefix) {
  std::string m;
  bool bytes = false;
  for (std::size_t i = 0; i < d.tokens.size(); ++i) {
    std::string p;
    pb_bytes(p, 1, d.tokens[i]);
    pb_float(p, 2, i < d.scores.size() ? d.scores[i] : 0.0F);
    const int t = i < d.token_types.size() ? d.token_types[i] : 1;
    pb_int(p, 3, t >= 1 && t <= 6 ? t : 1);
    bytes = bytes || t == 6;
    pb_bytes(m, 1, p);  // ModelProto.pieces
  }
  std::string ts;                                 // TrainerSpec
  pb_int(ts, 3, 2);                               // model_type = BPE
  pb_int(ts, 4, static_cast<std::int64_t>(d.tokens.size()));  // vocab_size
  pb_int(ts, 35, bytes ? 1 : 0);                  // byte_fallback
  pb_int(ts, 40, d.unk_id);                       // unk_id
  pb_int(ts, 41, d.bos_id);                       // bos_id
  pb_int(ts, 42, d.eos_id);                       // eos_id
  pb_int(ts, 43, d.pad_id);                       // pad_id
  pb_bytes(m, 2, ts);
  std::string ns;                                 // NormalizerSpec
  pb_bytes(ns, 1, "identity");                    // name
  pb_int(ns, 3, add_dummy_prefix ? 1 : 0);        // add_dummy_prefix
  pb_int(ns, 4, 0);                               // remove_extra_whitespaces
  pb_int(ns, 5, 1);                               // escape_whitespaces
  pb_bytes(m, 3, ns);
  return m;
}

void fill_from_spm(TokenizerData& d, const std::string& where) {
  const SpmProto p = parse_spm_proto(d.spm_model, where);
  d.tokens = p.pieces;
  d.scores = p.scores;
  d.token_types.assign(p.types.begin(), p.types.end());
  if (d.bos_id < 0) d.bos_id = p.bos_id;
  if (d.eos_id < 0) d.eos_id = p.eos_id;
  if (d.unk_id < 0) d.unk_id = p.unk_id;
  if (d.pad_id < 0) d.pad_id = p.pad_id;
}

struct Wire {
  std::string_view s;
  std::size_t i = 0;
  const std::string& where;
  std::uint64_t varint() {
    std::uint64_t v = 0;
    for (int sh = 0; sh < 64; sh += 7) {
      KVLAB_THROW_IF(i >= s.size(), FormatError, "{}: truncated SentencePiece model (varint)", where);
      const auto c = static_cast<unsigned char>(s[i++]);
      v |= static_cast<std::uint64_t>(c & 0x7F) << sh;
      if (!(c & 0x80)) return v;
    }
    KVLAB_THROW(FormatError, "{}: malformed varint in the SentencePiece model", where);
  }
  std::string_view bytes() {
    const std::uint64_t n = varint();
    KVLAB_THROW_IF(n > s.size() - i, FormatError, "{}: truncated SentencePiece model (field of {} bytes)", where, n);
    const auto r = s.substr(i, n);
    i += n;
    return r;
  }
  // Calls f(field, wire type) for each field; f must consume the value or return false to skip it.
  template <class F>
  void each(F&& f) {
    while (i < s.size()) {
      const std::uint64_t key = varint();
      const int field = static_cast<int>(key >> 3), wt = static_cast<int>(key & 7);
      if (f(field, wt)) continue;
      if (wt == 0) varint();
      else if (wt == 1) i += 8;
      else if (wt == 2) bytes();
      else if (wt == 5) i += 4;
      else KVLAB_THROW(FormatError, "{}: unsupported protobuf wire type {} in the SentencePiece model", where, wt);
      KVLAB_THROW_IF(i > s.size(), FormatError, "{}: truncated SentencePiece model", where);
    }
  }
};

}  // namespace

SpmProto parse_spm_proto(const std::string& bytes, const std::string& where) {
  SpmProto p;
  Wire w{bytes, 0, where};
  w.each([&](int field, int wt) {
    if (wt != 2) return false;
    Wire m{w.bytes(), 0, where};
    if (field == 1) {  // SentencePiece { piece = 1; score = 2; type = 3 }
      std::string piece;
      float score = 0;
      int type = 1;
      m.each([&](int f, int t) {
        if (f == 1 && t == 2) piece = std::string(m.bytes());
        else if (f == 2 && t == 5) {
          KVLAB_THROW_IF(m.i + 4 > m.s.size(), FormatError, "{}: truncated piece score", where);
          std::memcpy(&score, m.s.data() + m.i, 4);
          m.i += 4;
        } else if (f == 3 && t == 0) type = static_cast<int>(m.varint());
        else return false;
        return true;
      });
      p.pieces.push_back(piece);
      p.scores.push_back(score);
      p.types.push_back(type);
    } else if (field == 2) {  // TrainerSpec
      m.each([&](int f, int t) {
        if (t != 0) return false;
        const auto v = static_cast<std::int64_t>(m.varint());
        if (f == 3) p.model_type = static_cast<int>(v);
        else if (f == 35) p.byte_fallback = v != 0;
        else if (f == 40) p.unk_id = static_cast<std::int32_t>(v);
        else if (f == 41) p.bos_id = static_cast<std::int32_t>(v);
        else if (f == 42) p.eos_id = static_cast<std::int32_t>(v);
        else if (f == 43) p.pad_id = static_cast<std::int32_t>(v);
        return true;
      });
    } else if (field == 3) {  // NormalizerSpec
      m.each([&](int f, int t) {
        if (f == 1 && t == 2) p.normalizer = std::string(m.bytes());
        else if (f == 2 && t == 2) p.has_charsmap = !m.bytes().empty();
        else if (t == 0 && (f == 3 || f == 4 || f == 5)) {
          const bool v = m.varint() != 0;
          (f == 3 ? p.add_dummy_prefix : f == 4 ? p.remove_extra_whitespaces : p.escape_whitespaces) = v;
        } else return false;
        return true;
      });
    } else {
      return true;  // other messages (self-test data, denormalizer): consumed, ignored
    }
    return true;
  });
  KVLAB_THROW_IF(p.pieces.empty(), FormatError, "{}: not a SentencePiece model (no pieces)", where);
  return p;
}

namespace {

json pre_to_json(const PreTokenizerStep& s) {
  if (s.kind == PreTokenizerStep::Kind::byte_level)
    return {{"type", "ByteLevel"}, {"add_prefix_space", s.add_prefix_space}, {"trim_offsets", true},
            {"use_regex", s.use_regex}};
  if (s.kind == PreTokenizerStep::Kind::digits)
    return {{"type", "Digits"}, {"individual_digits", s.individual_digits}};
  return {{"type", "Split"}, {"pattern", {{"Regex", s.pattern}}}, {"behavior", camel(s.behavior)},
          {"invert", false}};
}

PreTokenizerStep pre_from_kvlab_json(const json& j) {
  PreTokenizerStep s;
  const std::string k = j.at("type");
  s.kind = k == "byte_level" ? PreTokenizerStep::Kind::byte_level
           : k == "digits"   ? PreTokenizerStep::Kind::digits
                             : PreTokenizerStep::Kind::split;
  s.pattern = j.value("pattern", "");
  s.behavior = j.value("behavior", "isolated");
  s.add_prefix_space = j.value("add_prefix_space", false);
  s.use_regex = j.value("use_regex", true);
  s.individual_digits = j.value("individual_digits", true);
  return s;
}

json pre_to_kvlab_json(const PreTokenizerStep& s) {
  const char* k = s.kind == PreTokenizerStep::Kind::byte_level ? "byte_level"
                  : s.kind == PreTokenizerStep::Kind::digits   ? "digits"
                                                               : "split";
  json j = {{"type", k}};
  if (s.kind == PreTokenizerStep::Kind::split) j["pattern"] = s.pattern, j["behavior"] = s.behavior;
  if (s.kind == PreTokenizerStep::Kind::byte_level)
    j["add_prefix_space"] = s.add_prefix_space, j["use_regex"] = s.use_regex;
  if (s.kind == PreTokenizerStep::Kind::digits) j["individual_digits"] = s.individual_digits;
  return j;
}

}  // namespace

// ---------------------------------------------------------------------------- HF import --

TokenizerData tokenizer_from_hf(const fs::path& in) {
  const fs::path dir = fs::is_directory(in) ? in : in.parent_path();
  const fs::path tj = fs::is_directory(in) ? dir / "tokenizer.json" : in;
  const fs::path tm = dir / "tokenizer.model", tc = dir / "tokenizer_config.json";
  TokenizerData d;
  d.source = fs::exists(tj) ? tj.string() : tm.string();
  json cfg = fs::exists(tc) ? parse_json(tc) : json::object();
  if (fs::exists(tj)) {
    const json j = parse_json(tj);
    const std::string where = tj.string();
    const json& model = j.at("model");
    const std::string mtype = model.value("type", "BPE");
    bool byte_level = false;
    pre_from_json(j.value("pre_tokenizer", json()), where, d.pre_tokenizer, byte_level);
    if (j.contains("decoder") && j.at("decoder").is_object() && j.at("decoder").value("type", "") == "ByteLevel")
      byte_level = true;
    if (mtype == "BPE" && byte_level) {
      d.model = "bpe";
      d.normalizer = normalizer_from_json(j.value("normalizer", json()), where);
      d.ignore_merges = model.value("ignore_merges", false);
      KVLAB_THROW_IF(model.value("continuing_subword_prefix", json()).is_string() ||
                         model.value("end_of_word_suffix", json()).is_string(),
                     FormatError, "{}: BPE with a subword prefix/suffix is not supported", where);
      std::int64_t n = 0;
      for (const auto& [tok, id] : model.at("vocab").items()) n = std::max<std::int64_t>(n, id.get<std::int64_t>() + 1);
      for (const auto& a : j.value("added_tokens", json::array())) n = std::max<std::int64_t>(n, a.at("id").get<std::int64_t>() + 1);
      d.tokens.assign(static_cast<std::size_t>(n), "");
      d.token_types.assign(static_cast<std::size_t>(n), 5);
      for (const auto& [tok, id] : model.at("vocab").items()) {
        d.tokens[id.get<std::size_t>()] = tok;
        d.token_types[id.get<std::size_t>()] = 1;
      }
      for (const auto& m : model.at("merges")) {
        if (m.is_string()) d.merges.push_back(m.get<std::string>());
        else d.merges.push_back(m.at(0).get<std::string>() + " " + m.at(1).get<std::string>());
      }
    } else if (fs::exists(tm)) {
      d.model = "spm";
    } else {
      KVLAB_THROW(FormatError, "{}: a {} model{} is not supported; kvlab runs byte-level BPE from "
                  "tokenizer.json and SentencePiece from tokenizer.model (none beside it)",
                  where, mtype, byte_level ? "" : " without a ByteLevel pre-tokenizer");
    }
    for (const auto& a : j.value("added_tokens", json::array())) {
      AddedToken t;
      t.id = a.at("id").get<std::int64_t>();
      t.content = a.at("content").get<std::string>();
      t.special = a.value("special", false);
      t.lstrip = a.value("lstrip", false);
      t.rstrip = a.value("rstrip", false);
      t.single_word = a.value("single_word", false);
      t.normalized = a.value("normalized", false);
      d.added.push_back(t);
      if (d.model == "bpe") {
        d.tokens[static_cast<std::size_t>(t.id)] = t.content;
        d.token_types[static_cast<std::size_t>(t.id)] = t.special ? 3 : 4;
      }
    }
    // Post-processor: TemplateProcessing "single" -> BOS/EOS convention.
    std::function<void(const json&)> post = [&](const json& p) {
      if (!p.is_object()) return;
      const std::string t = p.value("type", "");
      if (t == "Sequence") {
        for (const auto& q : p.at("processors")) post(q);
      } else if (t == "TemplateProcessing") {
        const json& single = p.at("single");
        if (!single.empty() && single.front().contains("SpecialToken")) {
          d.add_bos = true;
          cfg["__bos"] = single.front().at("SpecialToken").at("id");
        }
        if (single.size() > 1 && single.back().contains("SpecialToken")) {
          d.add_eos = true;
          cfg["__eos"] = single.back().at("SpecialToken").at("id");
        }
      }
    };
    post(j.value("post_processor", json()));
  } else if (fs::exists(tm)) {
    d.model = "spm";
  } else {
    KVLAB_THROW(FormatError, "{}: no tokenizer.json or tokenizer.model", dir.string());
  }
  if (d.model == "spm") {
    KVLAB_THROW_IF(!fs::exists(tm), FormatError, "{}: SentencePiece model needs tokenizer.model",
                   dir.string());
    d.spm_model = slurp(tm);
    d.source = tm.string();
    d.add_bos = cfg.value("add_bos_token", true);
    fill_from_spm(d, tm.string());
  }
  // tokenizer_config.json: bos/eos, add_bos_token/add_eos_token, chat_template.
  d.bos_id = -1;
  std::string bos = token_content(cfg.value("bos_token", json())), eos = token_content(cfg.value("eos_token", json()));
  if (cfg.contains("__bos")) bos = cfg["__bos"].get<std::string>();
  if (!bos.empty()) d.bos_id = find_token(d, bos);
  if (!eos.empty()) d.eos_id = find_token(d, eos);
  if (cfg.contains("__eos") && d.eos_id < 0) d.eos_id = find_token(d, cfg["__eos"].get<std::string>());
  if (cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean()) d.add_bos = cfg["add_bos_token"].get<bool>();
  if (cfg.contains("add_eos_token") && cfg["add_eos_token"].is_boolean()) d.add_eos = cfg["add_eos_token"].get<bool>();
  if (d.model == "spm") {  // SentencePiece's own ids when the config names none
    const SpmProto p = parse_spm_proto(d.spm_model, d.source);
    if (d.bos_id < 0) d.bos_id = p.bos_id;
    if (d.eos_id < 0) d.eos_id = p.eos_id;
  }
  if (d.add_bos && d.bos_id < 0) d.add_bos = false;
  const json ct = cfg.value("chat_template", json());
  if (ct.is_string()) {
    d.chat_template = ct.get<std::string>();
  } else if (ct.is_array()) {
    for (const auto& t : ct)
      if (d.chat_template.empty() || t.value("name", "") == "default") d.chat_template = t.value("template", "");
  }
  const std::string pad = token_content(cfg.value("pad_token", json()));
  if (!pad.empty()) d.pad_id = find_token(d, pad);
  const std::string unk = token_content(cfg.value("unk_token", json()));
  if (!unk.empty() && d.unk_id < 0) d.unk_id = find_token(d, unk);
  return d;
}

// -------------------------------------------------------------------------- GGUF import --

std::optional<TokenizerData> tokenizer_from_gguf(const GgufFile& f) {
  const std::string k = "tokenizer.ggml.";
  if (!f.has(k + "model") || !f.has(k + "tokens")) return std::nullopt;
  const std::string where = f.path();
  const std::string model = f.get_string(k + "model");
  TokenizerData d;
  d.source = where;
  const GgufValue& toks = f.metadata().at(k + "tokens");
  KVLAB_THROW_IF(toks.type != GgufType::STRING || !toks.is_array, FormatError,
                 "{}: tokenizer.ggml.tokens is not a string array", where);
  d.tokens = toks.strings;
  if (f.has(k + "token_type")) {
    for (auto t : f.metadata().at(k + "token_type").ints) d.token_types.push_back(static_cast<std::int32_t>(t));
    KVLAB_THROW_IF(d.token_types.size() != d.tokens.size(), FormatError,
                   "{}: {} token types for {} tokens", where, d.token_types.size(), d.tokens.size());
  }
  if (f.has(k + "scores"))
    for (auto s : f.metadata().at(k + "scores").floats) d.scores.push_back(static_cast<float>(s));
  auto id = [&](const char* key) { return f.has(k + key) ? f.get_int(k + key) : std::int64_t{-1}; };
  d.bos_id = id("bos_token_id");
  d.eos_id = id("eos_token_id");
  d.unk_id = id("unknown_token_id");
  d.pad_id = id("padding_token_id");
  d.pre_name = f.has(k + "pre") ? f.get_string(k + "pre") : "";
  if (f.has("tokenizer.chat_template")) d.chat_template = f.get_string("tokenizer.chat_template");
  if (model == "gpt2") {
    d.model = "bpe";
    KVLAB_THROW_IF(!f.has(k + "merges"), FormatError, "{}: a gpt2 (BPE) tokenizer without merges", where);
    d.merges = f.metadata().at(k + "merges").strings;
    const std::string& pre = d.pre_name;
    PreTokenizerStep bl;
    bl.kind = PreTokenizerStep::Kind::byte_level;
    if (pre == "gpt-2" || pre == "default" || pre.empty()) {
      d.pre_tokenizer = {bl};
    } else if (pre == "llama-bpe" || pre == "llama-v3") {
      PreTokenizerStep s;
      s.pattern = kLlama3Pattern;
      bl.use_regex = false;
      d.pre_tokenizer = {s, bl};
      d.ignore_merges = true;
      d.add_bos = true;
    } else if (pre == "qwen2") {
      PreTokenizerStep s;
      s.pattern = kQwen2Pattern;
      bl.use_regex = false;
      d.pre_tokenizer = {s, bl};
      d.normalizer = "nfc";
    } else if (pre == "smollm") {
      PreTokenizerStep s;
      s.kind = PreTokenizerStep::Kind::digits;
      s.individual_digits = true;
      d.pre_tokenizer = {s, bl};
    } else {
      KVLAB_THROW(FormatError, "{}: GGUF pre-tokenizer \"{}\" is not supported (gpt-2, llama-bpe, "
                  "qwen2, smollm); import the HF checkpoint with its tokenizer.json instead",
                  where, pre);
    }
    for (std::size_t i = 0; i < d.token_types.size(); ++i)
      if (d.token_types[i] == 3 || d.token_types[i] == 4) {
        AddedToken a;
        a.id = static_cast<std::int64_t>(i);
        a.content = d.tokens[i];
        a.special = d.token_types[i] == 3;
        d.added.push_back(a);
      }
  } else if (model == "llama") {
    d.model = "spm";
    KVLAB_THROW_IF(d.scores.size() != d.tokens.size(), FormatError,
                   "{}: a llama (SentencePiece) vocabulary needs one score per token", where);
    bool prefix = true;
    if (f.has(k + "add_space_prefix")) prefix = f.get_int(k + "add_space_prefix") != 0;
    if (d.unk_id < 0)
      for (std::size_t i = 0; i < d.token_types.size(); ++i)
        if (d.token_types[i] == 2) d.unk_id = static_cast<std::int64_t>(i);
    d.spm_model = build_spm_proto(d, prefix);
    d.add_bos = true;
  } else {
    KVLAB_THROW(FormatError, "{}: GGUF tokenizer model \"{}\" is not supported (gpt2, llama)", where,
                model);
  }
  if (f.has(k + "add_bos_token")) d.add_bos = f.get_int(k + "add_bos_token") != 0;
  if (f.has(k + "add_eos_token")) d.add_eos = f.get_int(k + "add_eos_token") != 0;
  if (d.add_bos && d.bos_id < 0) d.add_bos = false;
  return d;
}

// ------------------------------------------------------------------------------ export --

std::string tokenizer_to_hf_json(const TokenizerData& d) {
  if (d.model != "bpe") return "";
  json vocab = json::object();
  std::set<std::int64_t> added;
  for (const auto& a : d.added) added.insert(a.id);
  for (std::size_t i = 0; i < d.tokens.size(); ++i)
    if (!added.count(static_cast<std::int64_t>(i)) && !d.tokens[i].empty()) vocab[d.tokens[i]] = i;
  json merges = json::array();
  for (const auto& m : d.merges) {
    const auto sp = m.find(' ');
    merges.push_back({m.substr(0, sp), m.substr(sp + 1)});
  }
  json at = json::array();
  for (const auto& a : d.added)
    at.push_back({{"id", a.id}, {"content", a.content}, {"single_word", a.single_word},
                  {"lstrip", a.lstrip}, {"rstrip", a.rstrip}, {"normalized", a.normalized},
                  {"special", a.special}});
  json pre = json::array();
  for (const auto& s : d.pre_tokenizer) pre.push_back(pre_to_json(s));
  json post = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}};
  if ((d.add_bos && d.bos_id >= 0) || (d.add_eos && d.eos_id >= 0)) {
    json single = json::array(), pair = json::array(), special = json::object();
    auto tok = [&](std::int64_t id) {
      special[d.tokens[static_cast<std::size_t>(id)]] = {{"id", d.tokens[static_cast<std::size_t>(id)]},
                                                         {"ids", {id}}, {"tokens", {d.tokens[static_cast<std::size_t>(id)]}}};
      return json{{"SpecialToken", {{"id", d.tokens[static_cast<std::size_t>(id)]}, {"type_id", 0}}}};
    };
    if (d.add_bos && d.bos_id >= 0) single.push_back(tok(d.bos_id));
    single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
    if (d.add_eos && d.eos_id >= 0) single.push_back(tok(d.eos_id));
    pair = single;
    pair.push_back({{"Sequence", {{"id", "B"}, {"type_id", 1}}}});
    post = {{"type", "Sequence"},
            {"processors", {post, {{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair},
                                   {"special_tokens", special}}}}};
  }
  json j = {{"version", "1.0"},
            {"truncation", nullptr},
            {"padding", nullptr},
            {"added_tokens", at},
            {"normalizer", d.normalizer == "nfc" ? json{{"type", "NFC"}} : json()},
            {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", pre}}},
            {"post_processor", post},
            {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
            {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
                       {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
                       {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", d.ignore_merges},
                       {"vocab", vocab}, {"merges", merges}}}};
  return j.dump(2, ' ', false, json::error_handler_t::replace);
}

std::string tokenizer_config_to_hf_json(const TokenizerData& d) {
  json c = json::object();
  auto tok = [&](std::int64_t id) {
    return id >= 0 && id < static_cast<std::int64_t>(d.tokens.size()) ? json(d.tokens[static_cast<std::size_t>(id)]) : json();
  };
  c["bos_token"] = tok(d.bos_id);
  c["eos_token"] = tok(d.eos_id);
  if (d.pad_id >= 0) c["pad_token"] = tok(d.pad_id);
  if (d.unk_id >= 0) c["unk_token"] = tok(d.unk_id);
  c["add_bos_token"] = d.add_bos;
  c["add_eos_token"] = d.add_eos;
  c["tokenizer_class"] = d.model == "spm" ? "LlamaTokenizer" : "PreTrainedTokenizerFast";
  if (!d.chat_template.empty()) c["chat_template"] = d.chat_template;
  return c.dump(2, ' ', false, json::error_handler_t::replace);
}

// ----------------------------------------------------------------------------- HDF5 --

namespace {
std::string gwhere(const h5::Group& g, const std::string& name) {
  return fmt::format("{}:{}/{}", g.file(), g.path(), name);
}
}  // namespace

void write_string_dataset(h5::Group& g, const std::string& name, const std::vector<std::string>& v) {
  h5::Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), H5T_VARIABLE);
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  const hsize_t n = v.size();
  h5::Handle sp(H5Screate_simple(1, &n, nullptr), H5Sclose);
  h5::Handle ds(H5Dcreate2(g.id(), name.c_str(), type.get(), sp.get(), H5P_DEFAULT, H5P_DEFAULT,
                           H5P_DEFAULT),
                H5Dclose);
  KVLAB_THROW_IF(!ds.valid(), IoError, "{}:{}/{}: cannot create dataset", g.file(), g.path(), name);
  std::vector<const char*> ptrs;
  ptrs.reserve(v.size());
  for (const auto& s : v) ptrs.push_back(s.c_str());
  KVLAB_THROW_IF(!v.empty() && H5Dwrite(ds.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT,
                                        ptrs.data()) < 0,
                 IoError, "{}:{}/{}: write failed", g.file(), g.path(), name);
}

std::vector<std::string> read_string_dataset(const h5::Group& g, const std::string& name) {
  KVLAB_THROW_IF(!g.has_dataset(name), FormatError, "{}: missing", gwhere(g, name));
  h5::Handle ds(H5Dopen2(g.id(), name.c_str(), H5P_DEFAULT), H5Dclose);
  KVLAB_THROW_IF(!ds.valid(), FormatError, "{}: cannot open", gwhere(g, name));
  h5::Handle ft(H5Dget_type(ds.get()), H5Tclose);
  KVLAB_THROW_IF(H5Tget_class(ft.get()) != H5T_STRING || !H5Tis_variable_str(ft.get()), FormatError,
                 "{}: not a variable-length string dataset", gwhere(g, name));
  h5::Handle sp(H5Dget_space(ds.get()), H5Sclose);
  const hssize_t n = H5Sget_simple_extent_npoints(sp.get());
  std::vector<std::string> out;
  if (n <= 0) return out;
  h5::Handle mt(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(mt.get(), H5T_VARIABLE);
  H5Tset_cset(mt.get(), H5T_CSET_UTF8);
  std::vector<char*> ptrs(static_cast<std::size_t>(n), nullptr);
  KVLAB_THROW_IF(H5Dread(ds.get(), mt.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()) < 0,
                 FormatError, "{}: read failed", gwhere(g, name));
  out.reserve(ptrs.size());
  for (char* p : ptrs) out.emplace_back(p ? p : "");
  H5Dvlen_reclaim(mt.get(), sp.get(), H5P_DEFAULT, ptrs.data());
  return out;
}

void write_tokenizer(h5::Group& root, const TokenizerData& d) {
  h5::Group g = root.require_group("tokenizer");
  g.set_attr("model", d.model);
  g.set_attr("tokenizer_version", std::int64_t{1});
  g.set_attr("normalizer", d.normalizer);
  g.set_attr("ignore_merges", d.ignore_merges);
  g.set_attr("bos_token_id", d.bos_id);
  g.set_attr("eos_token_id", d.eos_id);
  g.set_attr("unk_token_id", d.unk_id);
  g.set_attr("pad_token_id", d.pad_id);
  g.set_attr("add_bos", d.add_bos);
  g.set_attr("add_eos", d.add_eos);
  g.set_attr("source", d.source);
  g.set_attr("pre_name", d.pre_name);
  json pre = json::array();
  for (const auto& s : d.pre_tokenizer) pre.push_back(pre_to_kvlab_json(s));
  g.set_attr("pre_tokenizer", pre.dump());
  write_string_dataset(g, "tokens", d.tokens);
  if (!d.token_types.empty()) g.write_vec("token_types", d.token_types);
  if (!d.scores.empty()) g.write_vec("scores", d.scores);
  if (!d.merges.empty()) write_string_dataset(g, "merges", d.merges);
  json added = json::array();
  for (const auto& a : d.added)
    added.push_back({{"id", a.id}, {"content", a.content}, {"special", a.special}, {"lstrip", a.lstrip},
                     {"rstrip", a.rstrip}, {"single_word", a.single_word}, {"normalized", a.normalized}});
  write_string_dataset(g, "added_tokens", {added.dump()});
  write_string_dataset(g, "chat_template", {d.chat_template});
  if (!d.spm_model.empty()) {
    std::vector<std::uint8_t> b(d.spm_model.begin(), d.spm_model.end());
    g.write_vec("spm_model", b);
  }
}

std::optional<TokenizerData> read_tokenizer(const h5::Group& root) {
  if (!root.has_group("tokenizer")) return std::nullopt;
  const h5::Group g = root.group("tokenizer");
  if (!g.has_attr("model")) return std::nullopt;  // only the raw /tokenizer/gguf copy (older files)
  TokenizerData d;
  d.model = g.attr_string("model");
  const std::int64_t v = g.has_attr("tokenizer_version") ? g.attr_int("tokenizer_version") : 1;
  KVLAB_THROW_IF(v != 1, FormatError, "{}: tokenizer_version {} is newer than this kvlab reads (1); "
                 "update kvlab", gwhere(g, ""), v);
  d.normalizer = g.attr_string("normalizer");
  d.ignore_merges = g.attr_int("ignore_merges") != 0;
  d.bos_id = g.attr_int("bos_token_id");
  d.eos_id = g.attr_int("eos_token_id");
  d.unk_id = g.attr_int("unk_token_id");
  d.pad_id = g.attr_int("pad_token_id");
  d.add_bos = g.attr_int("add_bos") != 0;
  d.add_eos = g.attr_int("add_eos") != 0;
  d.source = g.attr_string("source");
  d.pre_name = g.has_attr("pre_name") ? g.attr_string("pre_name") : "";
  try {
    for (const auto& s : json::parse(g.attr_string("pre_tokenizer"))) d.pre_tokenizer.push_back(pre_from_kvlab_json(s));
    d.tokens = read_string_dataset(g, "tokens");
    if (g.has_dataset("token_types")) d.token_types = g.read_vec<std::int32_t>("token_types");
    if (g.has_dataset("scores")) d.scores = g.read_vec<float>("scores");
    if (g.has_dataset("merges")) d.merges = read_string_dataset(g, "merges");
    for (const auto& a : json::parse(read_string_dataset(g, "added_tokens").at(0))) {
      AddedToken t;
      t.id = a.at("id");
      t.content = a.at("content");
      t.special = a.value("special", false);
      t.lstrip = a.value("lstrip", false);
      t.rstrip = a.value("rstrip", false);
      t.single_word = a.value("single_word", false);
      t.normalized = a.value("normalized", false);
      d.added.push_back(t);
    }
    d.chat_template = read_string_dataset(g, "chat_template").at(0);
  } catch (const json::exception& e) {
    KVLAB_THROW(FormatError, "{}: malformed tokenizer JSON: {}", gwhere(g, ""), e.what());
  } catch (const std::out_of_range&) {
    KVLAB_THROW(FormatError, "{}: empty added_tokens/chat_template dataset", gwhere(g, ""));
  }
  if (g.has_dataset("spm_model")) {
    const auto b = g.read_vec<std::uint8_t>("spm_model");
    d.spm_model.assign(b.begin(), b.end());
  }
  return d;
}

// ------------------------------------------------------------------------------ loading --

std::shared_ptr<const Tokenizer> model_tokenizer(const fs::path& p) {
  const ModelFile m = read_model_params(p);
  if (m.tokenizer) return Tokenizer::create(*m.tokenizer);
  const std::int64_t v = m.config.vocab_size;
  if (v >= 256 && v < 512)
    return Tokenizer::create(byte_tokenizer_data(v, m.config.bos_token_id.value_or(-1),
                                                 m.config.eos_token_ids.empty() ? -1 : m.config.eos_token_ids[0]));
  return nullptr;
}

std::shared_ptr<const Tokenizer> load_tokenizer(const fs::path& p) {
  KVLAB_THROW_IF(!fs::exists(p), UsageError, "{}: no such file or directory", p.string());
  if (fs::is_directory(p) || p.filename() == "tokenizer.json" || p.extension() == ".json")
    return Tokenizer::create(tokenizer_from_hf(p));
  if (p.extension() == ".model") {
    TokenizerData d;
    d.model = "spm";
    d.spm_model = slurp(p);
    d.source = p.string();
    d.add_bos = true;
    fill_from_spm(d, p.string());
    return Tokenizer::create(d);
  }
  if (p.extension() == ".gguf") {
    const GgufFile f = GgufFile::open(p);
    auto d = tokenizer_from_gguf(f);
    KVLAB_THROW_IF(!d, UsageError, "{}: the GGUF file has no tokenizer.ggml.* vocabulary", p.string());
    return Tokenizer::create(*d);
  }
  auto t = model_tokenizer(p);
  KVLAB_THROW_IF(!t, UsageError,
                 "{}: this model has no tokenizer (it was imported without tokenizer.json / GGUF "
                 "vocabulary); re-import it, or give token ids",
                 p.string());
  return t;
}

}  // namespace kvlab::llm
