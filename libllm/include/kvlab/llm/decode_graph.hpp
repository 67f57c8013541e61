// Decode steps of full attention replayed as one CUDA graph (docs/performance.md, "Decode").
//
// At batch 1 a decode step of an 8B model is a few hundred small kernels; launched one by one from
// the host, their launch cost, not HBM bandwidth, sets the speed. DecodeGraph captures one whole
// step (Model::decode_static: every block, the LM head) once and replays it per token: the host
// only copies the new token ids and positions in. The step writes each layer's new K/V into the
// slot after the layer's current length and attends over the layer's whole storage masked by
// position, so nothing in it depends on the host (no reallocation, no synchronisation).
//
// Applies to full attention (no CachePolicy), a cache without page metadata whose layers all hold
// the same number of slots. On the CPU (or with use_graph = false) the same static step runs
// eagerly, which is how the tests check it against Model::forward.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace kvlab::llm {

class Model;
class KVCache;
class CachePolicy;

struct DecodeGraphOptions {
  /// Capture and replay a CUDA graph (CUDA only); false runs the same static step eagerly.
  bool use_graph = true;
  /// Keep each layer's last `record_queries` post-RoPE queries (recent_queries()).
  std::int64_t record_queries = 0;
};

class DecodeGraph {
 public:
  /// Why a graph cannot replay decode steps for this model, cache and policy ("" when it can;
  /// the CPU is a reason only when `need_cuda`).
  static std::string unsupported_reason(const Model& model, const KVCache& cache,
                                        const CachePolicy* policy, bool need_cuda = true);

  /// Prepares `steps` decode steps after the cache's current content: reserves that many slots
  /// in every layer and, when `use_graph` (CUDA only), runs one warm-up step and captures one.
  /// UsageError when unsupported_reason() is not empty.
  /// Attention reads only the slots up to the last reserved one (not the whole storage). Layers
  /// may hold different positions (after per-layer compression): each then gets its own mask.
  DecodeGraph(const Model& model, KVCache& cache, std::int64_t steps, bool use_graph);
  DecodeGraph(const Model& model, KVCache& cache, std::int64_t steps, const DecodeGraphOptions& o);
  ~DecodeGraph();
  DecodeGraph(const DecodeGraph&) = delete;
  DecodeGraph& operator=(const DecodeGraph&) = delete;

  /// One decode step: tokens, positions [B, 1] int64 (any device; positions >= 0). Appends the
  /// step's K/V to the cache (lengths and next positions updated) and returns float32 logits
  /// [B, V] on the model's device, valid until the next step.
  at::Tensor step(const at::Tensor& tokens, const at::Tensor& positions);

  /// Steps left before the reserved slots run out.
  std::int64_t steps_left() const;
  /// Whether steps replay a captured CUDA graph (false: the static step runs eagerly).
  bool graphed() const;
  /// Per layer, the queries [B, H, N, D] of the last N = min(record_queries, steps run) steps,
  /// oldest first (copies). Empty when no queries are recorded.
  std::vector<at::Tensor> recent_queries() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Decode steps under a KV-cache policy, replayed as CUDA graphs between the policy's actions
/// (docs/performance.md, "Decode"). Full attention (policy nullptr or FullAttention) runs in
/// segments of `segment` steps, each one graph attending only over the slots filled so far; a
/// policy that acts every so many steps (CachePolicy::static_decode_steps, e.g. RPC) runs plain
/// graph steps up to its action, then acts on the cache (compression) outside the graph, and a new
/// graph is captured over the compressed cache. The results equal Model::forward with the policy
/// (tests); only where the steps run differs.
class StaticDecoder {
 public:
  /// Why `policy` cannot decode statically on this model and cache ("" when it can).
  static std::string unsupported_reason(const Model& model, const KVCache& cache,
                                        const CachePolicy* policy, bool need_cuda = true);
  /// Prepares up to `max_steps` decode steps after the cache's current content (reserving them
  /// all for full attention, so the cache never reallocates). UsageError when unsupported.
  StaticDecoder(const Model& model, KVCache& cache, CachePolicy* policy, std::int64_t max_steps,
                bool use_graph, std::int64_t segment = 1024);
  ~StaticDecoder();
  StaticDecoder(const StaticDecoder&) = delete;
  StaticDecoder& operator=(const StaticDecoder&) = delete;

  /// One decode step, as DecodeGraph::step; the policy acts after it when its time has come.
  /// Returns float32 logits [B, V], valid until the next step.
  at::Tensor step(const at::Tensor& tokens, const at::Tensor& positions);
  /// Whether the steps replay CUDA graphs.
  bool graphed() const { return use_graph_; }
  /// Graphs (segments) prepared so far, and the policy's actions.
  std::int64_t segments() const { return segments_; }
  std::int64_t policy_actions() const { return actions_; }
  /// Seconds spent in the policy's actions, and in preparing (capturing) the graph after each.
  double action_seconds() const { return action_seconds_; }
  double capture_seconds() const { return capture_seconds_; }

 private:
  void start_segment();
  const Model& model_;
  KVCache& cache_;
  CachePolicy* policy_;
  std::int64_t max_steps_, segment_, done_ = 0, until_action_ = -1, segments_ = 0, actions_ = 0;
  bool use_graph_;
  double action_seconds_ = 0, capture_seconds_ = 0;
  std::unique_ptr<DecodeGraph> graph_;
};

}  // namespace kvlab::llm
