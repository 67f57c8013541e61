// Decoder-only transformer configuration (Llama 2/3/3.1, Mistral, Qwen2), read from and written
// to Hugging Face `config.json`. This is the one in-memory description every libllm component
// shares: the importers fill it, the model is built from it, the exporter writes it back.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace kvlab::llm {

enum class Arch { llama, mistral, qwen2 };
const char* arch_name(Arch a);  // "llama", "mistral", "qwen2" (HF model_type)

/// HF `rope_scaling`. type "none" (absent), "llama3" (Llama 3.1 frequency-dependent scaling),
/// "linear" (position interpolation), "dynamic" is refused (not implemented).
struct RopeScaling {
  std::string type = "none";
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  std::int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  Arch arch = Arch::llama;
  std::int64_t vocab_size = 0;
  std::int64_t hidden_size = 0;
  std::int64_t intermediate_size = 0;
  std::int64_t num_hidden_layers = 0;
  std::int64_t num_attention_heads = 0;
  std::int64_t num_key_value_heads = 0;  // GQA; equals num_attention_heads for MHA
  std::int64_t head_dim = 0;             // defaults to hidden_size / num_attention_heads
  std::int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v biases (Qwen2: true)
  std::optional<std::int64_t> sliding_window;  // Mistral (when set and smaller than the context)
  std::optional<std::int64_t> bos_token_id;
  std::vector<std::int64_t> eos_token_ids;
  std::string torch_dtype = "float32";  // dtype the checkpoint was stored in

  /// Parses HF config.json. `where` names the file for messages. Unsupported model_type,
  /// missing or inconsistent fields -> kvlab::FormatError (exit 3) saying which field.
  static ModelConfig from_hf_json(const nlohmann::json& j, const std::string& where);
  /// HF config.json for this configuration (transformers loads it).
  nlohmann::json to_hf_json() const;
  /// Throws FormatError when the numbers are inconsistent (heads not dividing, ...).
  void validate(const std::string& where) const;

  /// HF tensor names and shapes every checkpoint of this config must hold (untied lm_head only
  /// when !tie_word_embeddings; biases only when attention_bias).
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> expected_tensors() const;
};

}  // namespace kvlab::llm
