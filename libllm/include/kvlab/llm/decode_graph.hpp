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

namespace kvlab::llm {

class Model;
class KVCache;
class CachePolicy;

class DecodeGraph {
 public:
  /// Why a graph cannot replay decode steps for this model, cache and policy ("" when it can;
  /// the CPU is a reason only when `need_cuda`).
  static std::string unsupported_reason(const Model& model, const KVCache& cache,
                                        const CachePolicy* policy, bool need_cuda = true);

  /// Prepares `steps` decode steps after the cache's current content: reserves that many slots
  /// in every layer and, when `use_graph` (CUDA only), runs one warm-up step and captures one.
  /// UsageError when unsupported_reason() is not empty.
  DecodeGraph(const Model& model, KVCache& cache, std::int64_t steps, bool use_graph);
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

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvlab::llm
