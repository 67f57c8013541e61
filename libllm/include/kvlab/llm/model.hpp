// The decoder-only transformer (Llama 2/3/3.1, Mistral, Qwen2) as a functional forward over ATen
// tensors: RMSNorm, RoPE, GQA attention through the KV cache, SwiGLU MLP, tied or untied LM head.
// Numerics follow transformers' eager implementation (RMSNorm in float32, softmax in float32) so
// logits match it (tests/unit/llm/test_golden_logits.cpp).
//
// Linear layers are objects behind the abstract Linear interface, so binarize can swap in packed
// 1-bit layers; Model::blocks() is a plain vector, so prune-blocks can remove blocks.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kvlab/llm/config.hpp"
#include "kvlab/llm/kv_cache.hpp"
#include "kvlab/llm/model_io.hpp"

namespace kvlab::llm {

struct RopeTables;
struct AttentionOptions;

/// y = x W^T (+ b). Implementations: DenseLinear here, packed binary layers in libbinary.
class Linear {
 public:
  virtual ~Linear() = default;
  virtual at::Tensor forward(const at::Tensor& x) const = 0;
  virtual std::int64_t in_features() const = 0;
  virtual std::int64_t out_features() const = 0;
  virtual std::string kind() const = 0;  ///< "dense", ...
  /// The layer as a dense [out, in] weight (dequantised for compressed layers), for export and
  /// analysis.
  virtual at::Tensor dense_weight() const = 0;
  virtual std::optional<at::Tensor> bias() const { return std::nullopt; }
  /// Bytes of parameters this layer holds.
  virtual std::uint64_t bytes() const = 0;
};

class DenseLinear : public Linear {
 public:
  DenseLinear(at::Tensor weight, std::optional<at::Tensor> bias = std::nullopt);
  at::Tensor forward(const at::Tensor& x) const override;
  std::int64_t in_features() const override { return w_.size(1); }
  std::int64_t out_features() const override { return w_.size(0); }
  std::string kind() const override { return "dense"; }
  at::Tensor dense_weight() const override { return w_; }
  std::optional<at::Tensor> bias() const override;
  std::uint64_t bytes() const override;

 private:
  at::Tensor w_, b_;
};

struct Block {
  std::int64_t original_index = 0;  ///< index of this block in the original (unpruned) model
  at::Tensor input_layernorm, post_attention_layernorm;  ///< [hidden]
  std::shared_ptr<Linear> q_proj, k_proj, v_proj, o_proj;
  std::shared_ptr<Linear> gate_proj, up_proj, down_proj;
  /// On CUDA, dense q/k/v (and gate/up) weights are stored back to back in one allocation (the
  /// layers hold views into it, no extra memory), so that one GEMM computes all three (two).
  /// fuse_weights() arranges that at load; qkv_fused() / gate_up_fused() return the combined
  /// weight (and bias) only while the layers still are such adjacent views (a caller may swap a
  /// layer: nothing else keeps the old weights alive).
  bool qkv_fused(at::Tensor* w = nullptr, at::Tensor* b = nullptr) const;
  bool gate_up_fused(at::Tensor* w = nullptr) const;
  void fuse_weights();
};

struct ModelOptions {
  std::string device = "cpu";  ///< "cpu", "cuda", "cuda:N"
  /// Compute dtype: "auto" (the checkpoint's), "float32", "bfloat16", "float16".
  std::string dtype = "auto";
};

enum class LogitsMode { all, last, none };

struct ForwardOptions {
  LogitsMode logits = LogitsMode::all;
  CachePolicy* policy = nullptr;  ///< nullptr: full attention
  /// When set, receives the hidden state after every block ([B, T', C]; for prune-blocks).
  std::vector<at::Tensor>* hidden_states = nullptr;
  /// prune-blocks: when defined ([B, T, C], model dtype), the input of block `first_block`; the
  /// embedding and the blocks before `first_block` are not run (tokens still give the shape).
  at::Tensor input_hidden;
  std::int64_t first_block = 0;
};

/// Options of Model::decode_static (DecodeGraph sets them).
struct StaticDecodeOptions {
  /// Slots of each layer's storage that attention reads (0: the whole storage). Slots in
  /// [length, span) must be empty or written by this segment's steps.
  std::int64_t span = 0;
  /// Every layer holds the same positions in the same slots (full attention from one prefill):
  /// one attention mask serves all layers. false after per-layer compression (RPC).
  bool shared_positions = true;
  /// Query recording for decode-time compression (RPC's selector window): when set, layer l's
  /// post-RoPE query [B, H, 1, D] is written into (*query_ring)[l] [B, H, R, D] at index
  /// ring_slot ([1] int64 on the device).
  const std::vector<at::Tensor>* query_ring = nullptr;
  at::Tensor ring_slot;
};

class Model {
 public:
  /// Builds the model from HF-named weights (copied to the device and dtype). Missing or
  /// misshapen tensors: FormatError naming them; an unsupported dtype/device: UsageError.
  static Model from_file(const ModelFile& f, const ModelOptions& o = {});
  /// A model of this configuration with random weights made directly on the device (normal,
  /// std 0.02; norms 1): for benchmarks, where no checkpoint is needed.
  static Model random(const ModelConfig& cfg, const ModelOptions& o, std::uint64_t seed);

  const ModelConfig& config() const { return cfg_; }
  at::Device device() const { return device_; }
  c10::ScalarType dtype() const { return dtype_; }
  std::int64_t num_layers() const { return static_cast<std::int64_t>(blocks_.size()); }
  std::vector<Block>& blocks() { return blocks_; }
  const std::vector<Block>& blocks() const { return blocks_; }
  /// Removes blocks by their current index (prune-blocks).
  void remove_blocks(std::vector<std::int64_t> indices);
  /// True when ids 0..255 are raw bytes (vocab 256..511 with no tokenizer; docs/generate.md).
  bool byte_level() const;
  /// The tokenizer read with the model file (ModelFile::tokenizer), kept by to_file().
  const std::optional<TokenizerData>& tokenizer() const { return tokenizer_; }

  /// An empty cache for `batch` sequences, on the model's device and dtype.
  KVCache make_cache(std::int64_t batch, const KVCacheOptions& o = {}) const;

  /// Runs T tokens per sequence through every block, appending their K/V to `cache`.
  /// tokens, positions [B, T] int64 (any device); positions < 0 mark left padding. Positions must
  /// increase along T. Returns float32 logits [B, T, V] (all), [B, V] (last) or an undefined
  /// tensor (none). With token-selective propagation, T is what the policy kept.
  at::Tensor forward(const at::Tensor& tokens, const at::Tensor& positions, KVCache& cache,
                     const ForwardOptions& o = {}) const;

  /// One decode step of full attention that never synchronises with the host nor reallocates, so
  /// that a CUDA graph can capture it (DecodeGraph): tokens, positions [B, 1] int64 on the model's
  /// device (positions >= 0), slot [1] int64 on the device = the slot every layer writes (each
  /// layer's length(), all equal). Attention reads the first `so.span` slots of each layer's
  /// storage (all of it when 0), masked by position. Each layer's host-side length is left
  /// unchanged: the caller commits the written slot. Returns float32 logits [B, V] of the step.
  at::Tensor decode_static(const at::Tensor& tokens, const at::Tensor& positions,
                           const at::Tensor& slot, KVCache& cache,
                           const StaticDecodeOptions& so = {}) const;
  /// Whether decode_static may use the batch-1 fused CUDA block (GEMV kernels with the bias,
  /// residual and SwiGLU epilogues, RoPE fused with the cache write; docs/performance.md). On by
  /// default; off gives the ATen/cuBLAS step (the benchmark's ablation, the tests' reference).
  void set_fused_decode(bool on) { fused_decode_ = on; }
  bool fused_decode() const { return fused_decode_; }
  /// Whether decode_static runs every block of this cache through the fused kernels.
  bool uses_fused_decode(const KVCache& cache) const;
  /// The token embeddings [B, T, C] (the input of block 0), for prune-blocks.
  at::Tensor embed_tokens(const at::Tensor& tokens) const;
  /// The weights under their HF names, on the CPU in the model's dtype, with the current block
  /// list (renumbered) and original indices: what write_model / export-hf need.
  ModelFile to_file() const;
  /// Bytes of all parameters.
  std::uint64_t weight_bytes() const;

 private:
  Model() = default;
  using Getter = std::function<at::Tensor(const std::string& name)>;
  static Model build(const ModelConfig& cfg, at::Device dev, c10::ScalarType dtype,
                     const std::vector<std::int64_t>& original, const Getter& get,
                     const std::map<std::string, LinearRecord>* linears = nullptr);
  at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w) const;
  struct Qkv {
    at::Tensor q, k, v;  ///< [B, H, T, D] (q contiguous, q and k rotated), [B, Hkv, T, D] x2
  };
  /// A block's attention input side: norm, q/k/v projections, RoPE.
  Qkv project_qkv(const Block& blk, const at::Tensor& x, const RopeTables& rt) const;
  /// The rest of a block after attention: o_proj, residual, norm, SwiGLU MLP, residual.
  at::Tensor finish_block(const Block& blk, const at::Tensor& x, const at::Tensor& attn) const;

  /// decode_static's fused batch-1 block (CUDA only): returns the block's output, or an
  /// undefined tensor where the kernels do not apply (the caller takes the ATen path).
  bool fused_block_ok(const Block& blk, const LayerKV& kv, std::int64_t batch) const;
  /// decode_static's batched CUDA block (B >= 1, fused q/k/v and gate/up weights): one GEMM for
  /// q/k/v, RoPE fused with the cache write, the fused decode attention, o_proj and down_proj
  /// accumulated into the residual in place. Undefined where it does not apply.
  at::Tensor decode_block_batched(const Block& blk, const at::Tensor& x, const RopeTables& rt,
                                  const at::Tensor& positions, const at::Tensor& slot,
                                  LayerKV& kv, std::int64_t span, const AttentionOptions& ao,
                                  at::Tensor* q_out) const;
  at::Tensor decode_block_fused(const Block& blk, const at::Tensor& x, const RopeTables& rt,
                                const at::Tensor& positions, const at::Tensor& slot,
                                LayerKV& kv, std::int64_t span, const AttentionOptions& ao,
                                at::Tensor* q_out) const;

  ModelConfig cfg_;
  at::Device device_{at::kCPU};
  bool fused_decode_ = true;
  c10::ScalarType dtype_ = at::kFloat;
  at::Tensor embed_, final_norm_, inv_freq_;
  std::shared_ptr<Linear> lm_head_;
  std::vector<Block> blocks_;
  std::optional<TokenizerData> tokenizer_;
};

/// Reads a `model` artifact (read_model: kind, version and tensors checked) and builds the model
/// on the device; `header` receives the artifact's header for provenance.
Model load_model(const std::filesystem::path& path, const ModelOptions& o,
                 core::ArtifactHeader* header = nullptr);

/// "float32" | "bfloat16" | "float16" -> scalar type; UsageError naming `what` otherwise.
c10::ScalarType parse_dtype(const std::string& name, const std::string& what);
const char* dtype_name(c10::ScalarType t);

}  // namespace kvlab::llm
