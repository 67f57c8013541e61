#include "kvlab/llm/config.hpp"

#include <fmt/format.h>

#include "kvlab/core/error.hpp"

namespace kvlab::llm {

const char* arch_name(Arch a) {
  switch (a) {
    case Arch::llama: return "llama";
    case Arch::mistral: return "mistral";
    case Arch::qwen2: return "qwen2";
  }
  return "?";
}

namespace {

std::int64_t req_int(const nlohmann::json& j, const char* k, const std::string& where) {
  KVLAB_THROW_IF(!j.contains(k) || !j[k].is_number_integer(), FormatError,
                 "{}: field \"{}\" is missing or not an integer; is this a transformers config.json?",
                 where, k);
  return j[k].get<std::int64_t>();
}

std::vector<std::int64_t> id_list(const nlohmann::json& v) {
  std::vector<std::int64_t> out;
  if (v.is_number_integer()) out.push_back(v.get<std::int64_t>());
  if (v.is_array())
    for (const auto& x : v)
      if (x.is_number_integer()) out.push_back(x.get<std::int64_t>());
  return out;
}

}  // namespace

ModelConfig ModelConfig::from_hf_json(const nlohmann::json& j, const std::string& where) {
  KVLAB_THROW_IF(!j.is_object(), FormatError, "{}: expected a JSON object", where);
  ModelConfig c;
  const std::string mt = j.value("model_type", std::string());
  if (mt == "llama") c.arch = Arch::llama;
  else if (mt == "mistral") c.arch = Arch::mistral;
  else if (mt == "qwen2") c.arch = Arch::qwen2;
  else
    KVLAB_THROW(FormatError,
                "{}: model_type \"{}\" is not supported (kvlab runs llama, mistral and qwen2)",
                where, mt);
  c.vocab_size = req_int(j, "vocab_size", where);
  c.hidden_size = req_int(j, "hidden_size", where);
  c.intermediate_size = req_int(j, "intermediate_size", where);
  c.num_hidden_layers = req_int(j, "num_hidden_layers", where);
  c.num_attention_heads = req_int(j, "num_attention_heads", where);
  c.num_key_value_heads = j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null()
                              ? req_int(j, "num_key_value_heads", where)
                              : c.num_attention_heads;
  c.head_dim = j.contains("head_dim") && j["head_dim"].is_number_integer()
                   ? j["head_dim"].get<std::int64_t>()
                   : (c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0);
  c.max_position_embeddings = j.value("max_position_embeddings", std::int64_t{2048});
  c.rms_norm_eps = j.value("rms_norm_eps", 1e-6);
  c.rope_theta = j.value("rope_theta", 10000.0);
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object() &&
      j["rope_parameters"].contains("rope_theta"))  // transformers >= 5 moves it here
    c.rope_theta = j["rope_parameters"]["rope_theta"].get<double>();
  const nlohmann::json* rs = nullptr;
  if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) rs = &j["rope_scaling"];
  else if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) rs = &j["rope_parameters"];
  if (rs) {
    const std::string t = rs->value("rope_type", rs->value("type", std::string("default")));
    if (t == "llama3" || t == "linear") {
      c.rope_scaling.type = t;
      c.rope_scaling.factor = rs->value("factor", 1.0);
      c.rope_scaling.low_freq_factor = rs->value("low_freq_factor", 1.0);
      c.rope_scaling.high_freq_factor = rs->value("high_freq_factor", 4.0);
      c.rope_scaling.original_max_position_embeddings =
          rs->value("original_max_position_embeddings", std::int64_t{8192});
    } else {
      KVLAB_THROW_IF(t != "default", FormatError,
                     "{}: rope_scaling type \"{}\" is not supported (supported: llama3, linear)",
                     where, t);
    }
  }
  c.tie_word_embeddings = j.value("tie_word_embeddings", false);
  c.attention_bias = c.arch == Arch::qwen2 ? true : j.value("attention_bias", false);
  if (j.contains("sliding_window") && j["sliding_window"].is_number_integer() &&
      (c.arch == Arch::mistral || j.value("use_sliding_window", false)))
    c.sliding_window = j["sliding_window"].get<std::int64_t>();
  if (j.contains("bos_token_id") && j["bos_token_id"].is_number_integer())
    c.bos_token_id = j["bos_token_id"].get<std::int64_t>();
  if (j.contains("eos_token_id")) c.eos_token_ids = id_list(j["eos_token_id"]);
  c.torch_dtype = j.value("torch_dtype", j.value("dtype", std::string("float32")));
  c.validate(where);
  return c;
}

void ModelConfig::validate(const std::string& where) const {
  KVLAB_THROW_IF(vocab_size <= 0 || hidden_size <= 0 || intermediate_size <= 0 ||
                     num_hidden_layers <= 0 || num_attention_heads <= 0 ||
                     num_key_value_heads <= 0 || head_dim <= 0,
                 FormatError, "{}: sizes must be positive (vocab {}, hidden {}, layers {}, heads {})",
                 where, vocab_size, hidden_size, num_hidden_layers, num_attention_heads);
  KVLAB_THROW_IF(num_attention_heads % num_key_value_heads != 0, FormatError,
                 "{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", where,
                 num_attention_heads, num_key_value_heads);
  KVLAB_THROW_IF(head_dim % 2 != 0, FormatError, "{}: head_dim {} must be even for RoPE", where,
                 head_dim);
}

nlohmann::json ModelConfig::to_hf_json() const {
  nlohmann::json j;
  static const char* const kArchClass[] = {"LlamaForCausalLM", "MistralForCausalLM",
                                           "Qwen2ForCausalLM"};
  j["architectures"] = {kArchClass[static_cast<int>(arch)]};
  j["model_type"] = arch_name(arch);
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  j["hidden_act"] = "silu";
  j["tie_word_embeddings"] = tie_word_embeddings;
  if (arch == Arch::llama) {
    j["attention_bias"] = attention_bias;
    j["mlp_bias"] = false;
  }
  if (rope_scaling.type != "none") {
    j["rope_scaling"] = {{"rope_type", rope_scaling.type}, {"factor", rope_scaling.factor}};
    if (rope_scaling.type == "llama3") {
      j["rope_scaling"]["low_freq_factor"] = rope_scaling.low_freq_factor;
      j["rope_scaling"]["high_freq_factor"] = rope_scaling.high_freq_factor;
      j["rope_scaling"]["original_max_position_embeddings"] =
          rope_scaling.original_max_position_embeddings;
    }
  } else {
    j["rope_scaling"] = nullptr;
  }
  if (arch == Arch::mistral) j["sliding_window"] = sliding_window ? nlohmann::json(*sliding_window) : nlohmann::json(nullptr);
  if (arch == Arch::qwen2) {
    j["use_sliding_window"] = false;
    j["sliding_window"] = sliding_window ? *sliding_window : max_position_embeddings;
  }
  if (bos_token_id) j["bos_token_id"] = *bos_token_id;
  if (eos_token_ids.size() == 1) j["eos_token_id"] = eos_token_ids[0];
  else if (!eos_token_ids.empty()) j["eos_token_id"] = eos_token_ids;
  j["torch_dtype"] = torch_dtype;
  return j;
}

std::vector<std::pair<std::string, std::vector<std::int64_t>>> ModelConfig::expected_tensors() const {
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> t;
  const std::int64_t q = num_attention_heads * head_dim, kv = num_key_value_heads * head_dim;
  t.push_back({"model.embed_tokens.weight", {vocab_size, hidden_size}});
  for (std::int64_t i = 0; i < num_hidden_layers; ++i) {
    const std::string p = fmt::format("model.layers.{}.", i);
    t.push_back({p + "input_layernorm.weight", {hidden_size}});
    t.push_back({p + "self_attn.q_proj.weight", {q, hidden_size}});
    t.push_back({p + "self_attn.k_proj.weight", {kv, hidden_size}});
    t.push_back({p + "self_attn.v_proj.weight", {kv, hidden_size}});
    if (attention_bias) {
      t.push_back({p + "self_attn.q_proj.bias", {q}});
      t.push_back({p + "self_attn.k_proj.bias", {kv}});
      t.push_back({p + "self_attn.v_proj.bias", {kv}});
    }
    t.push_back({p + "self_attn.o_proj.weight", {hidden_size, q}});
    t.push_back({p + "post_attention_layernorm.weight", {hidden_size}});
    t.push_back({p + "mlp.gate_proj.weight", {intermediate_size, hidden_size}});
    t.push_back({p + "mlp.up_proj.weight", {intermediate_size, hidden_size}});
    t.push_back({p + "mlp.down_proj.weight", {hidden_size, intermediate_size}});
  }
  t.push_back({"model.norm.weight", {hidden_size}});
  if (!tie_word_embeddings) t.push_back({"lm_head.weight", {vocab_size, hidden_size}});
  return t;
}

}  // namespace kvlab::llm
