// Running a range of a Model's blocks on given hidden states (no embedding, no LM head), and how
// much device memory is still free: what prune-blocks' batched SLEB search needs to run one block
// on the concatenated states of several candidates (docs/prune-blocks.md).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

#include "kvlab/llm/model.hpp"

namespace kvlab::llm {

/// Runs blocks [first, last) of `model` (current indices) on `hidden` [N, T, C] (model dtype, any
/// device) at `positions` [N, T] or [1, T] int64 (>= 0, increasing along T; CPU is cheapest), as
/// Model::forward does with a fresh KV cache (a causal prefill of the T tokens). Returns the
/// output hidden state [N, T, C] on the model's device; `hidden` itself when first == last.
/// Bit-identical to the same blocks inside Model::forward for the same batch.
at::Tensor forward_blocks(const Model& model, const at::Tensor& hidden, const at::Tensor& positions,
                          std::int64_t first, std::int64_t last);

/// Bytes that can still be allocated on `device`: for CUDA, the driver's free memory plus what
/// LibTorch's caching allocator holds reserved but unused; std::nullopt for the CPU (or a build
/// without CUDA).
std::optional<std::uint64_t> device_free_bytes(at::Device device);

/// Returns the CUDA caching allocator's unused blocks to the driver (after an out-of-memory
/// error, before retrying smaller); nothing on the CPU.
void release_cached_device_memory();

/// True when `e` (a c10::Error or std::bad_alloc what()) reports a failed allocation ("out of
/// memory" on CUDA, "can't allocate memory" on the CPU).
bool is_out_of_memory(const std::exception& e);

}  // namespace kvlab::llm
