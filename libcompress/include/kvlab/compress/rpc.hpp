// Reasoning Path Compression (RPC; Song et al., arXiv 2505.13866, NeurIPS 2025), as the official
// code (github.com/jiwonsong-dev/ReasoningPathCompression, rpc/rpc_utils.py RPCCluster +
// rpc/qwen2_custom.py) does it: during decoding, every P generated tokens, each layer scores the
// generated tokens outside the last R with the last R queries, keeps the top (k+1)*T of them
// (T = P / c, k = compressions so far; re-selected from scratch among the kept and the new ones),
// and keeps the prompt and the last R tokens whole. Memory is freed (LayerKV::gather).
// Method page: docs/kv-methods-rpc-fastkv.md (algorithm, quirks, deviations).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kvlab/llm/kv_cache.hpp"

namespace kvlab::compress {

/// RPC settings. Defaults are the official library defaults (set_rpc_config / init_rpc), which the
/// shipped evaluation scripts also use. Suggested kv-eval flags in brackets.
struct RpcOptions {
  /// P, the compression interval: generated tokens between two compressions. Official 1024.
  /// [--rpc-interval]
  std::int64_t interval = 1024;
  /// R, the selector window: the last R queries score the tokens, and the last R tokens are never
  /// compressed (the official "buffer"). Official 32. [--rpc-window]
  std::int64_t window = 32;
  /// c, the compression ratio of the generated part: each compression adds T = int(P / c) kept
  /// tokens. Official 4. [--rpc-ratio]
  double ratio = 4.0;
  /// Which queries select: "recent" (the last R decode queries; the only selector the official
  /// decode path implements). Official "recent". [--rpc-selectors]
  std::string selectors = "recent";
  /// How attention heads share an index set: "all" (mean over every attention head: one index set
  /// per layer and row, shared by all KV heads) or "group" (mean over each KV head's GQA group:
  /// one set per KV head). Official "all". [--rpc-aggregation]
  std::string aggregation = "all";
  /// Pooling over token scores: "avgpool" (count_include_pad, as F.avg_pool1d) or "maxpool".
  /// Official "avgpool". [--rpc-pooling]
  std::string pooling = "avgpool";
  /// Pooling kernel (odd; padding kernel/2, stride 1). Official 7. [--rpc-kernel-size]
  std::int64_t kernel_size = 7;
  /// Keep the prompt uncompressed (a multi-token forward defines the prompt). The official code
  /// never compresses the prompt; false is not supported and is refused. [--rpc-keep-prompt]
  bool keep_prompt = true;
  /// Reproduce the official selector quirk: the official code caches R-1 recent queries and then
  /// appends the current query again, so the current query is counted twice and the R-th most
  /// recent one is missing. false (default): the selectors are exactly the last R queries.
  /// [--rpc-duplicate-query]
  bool duplicate_current_query = false;
};

/// The RPC policy. One instance serves one cache (all layers, all rows); per-layer state (prompt
/// length, kept count, recent-query buffer) lives inside. Batch > 1: every row compresses on the
/// same schedule (as in the official code) with its own top-k.
class RpcPolicy : public llm::CachePolicy {
 public:
  /// budget_tokens > 0 caps the generated tokens a compression keeps (the top-k size, prompt and
  /// the R window excluded): kept = min((k+1)*T, budget_tokens), so the cache stops growing at
  /// prompt + budget + R + P. budget_tokens <= 0: no cap (the official growing budget).
  /// Invalid options: UsageError naming the flag.
  RpcPolicy(const RpcOptions& o, std::int64_t budget_tokens);

  std::string name() const override { return "rpc"; }
  void before_attention(llm::AttentionStep& s) override;
  void after_attention(llm::AttentionStep& s, const at::Tensor& out) override;
  /// Static decoding (llm::StaticDecoder): the steps up to the next compression run as plain graph
  /// steps recording the last R queries; the compression then runs between graphs, exactly as the
  /// hooks would have done it in the triggering step.
  std::int64_t static_decode_steps(const llm::KVCache& cache) const override;
  std::int64_t static_decode_queries() const override { return opt_.window; }
  void after_static_decode(llm::KVCache& cache, const std::vector<at::Tensor>& queries) override;

  const RpcOptions& options() const { return opt_; }
  /// T = int(P / c).
  std::int64_t step_tokens() const { return t_; }
  /// Compressions done so far, summed over layers (a decode step that compresses adds num_layers).
  std::int64_t compressions() const { return compressions_; }
  /// Forget all per-layer state (a new batch of sequences).
  void reset();

  /// The pure selection (RPCCluster.compress_kv): keys [B, Hkv, L, D] (slots in use; prompt
  /// first, last R = the window), selectors [B, H, R', D] (post-RoPE), prompt_len, keep (top-k
  /// size). Returns kept slot indices [B, Hkv', keep] into [prompt_len, L - window), ascending;
  /// Hkv' = 1 for "all" (shared by every KV head), Hkv for "group". `valid` [B, Hkv, L] (or
  /// undefined) masks empty slots out. Exposed for the fidelity tests.
  static at::Tensor select(const at::Tensor& keys, const at::Tensor& selectors,
                           std::int64_t prompt_len, std::int64_t window, std::int64_t keep,
                           const RpcOptions& o, const at::Tensor& valid = at::Tensor());

 private:
  struct LayerState {
    std::int64_t prompt_len = -1;  ///< slots of the prompt (-1: no prefill seen yet)
    std::int64_t kept = 0;         ///< generated tokens kept by the last compression
    std::int64_t compressions = 0;
    std::vector<at::Tensor> queries;  ///< recent selector queries [B, H, 1, D], oldest first
    bool trigger = false;             ///< this step compresses (set in before_attention)
  };
  LayerState& state(std::int64_t layer);
  /// One layer's compression with these selectors [B, H, R', D].
  void compress_layer(llm::LayerKV& kv, LayerState& st, const at::Tensor& selectors);

  RpcOptions opt_;
  std::int64_t budget_ = 0, t_ = 0, compressions_ = 0;
  std::vector<LayerState> layers_;
};

}  // namespace kvlab::compress
