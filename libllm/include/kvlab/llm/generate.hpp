// Text generation through the KV cache: a batch of prompts is left-padded (padding slots hold
// position -1 and are never attended), prefilled in one forward, then decoded one token per
// sequence per step, greedy or sampled, until max_new_tokens or a stop token. A CachePolicy may
// compress the cache while decoding. Also the decode benchmark behind scripts/bench-decode.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvlab/core/progress.hpp"
#include "kvlab/llm/model.hpp"
#include "kvlab/llm/sampling.hpp"

namespace kvlab::llm {

struct GenerateOptions {
  std::int64_t max_new_tokens = 64;
  std::vector<std::int64_t> stop_tokens;  ///< extra stop ids (the model's EOS ids are added
                                          ///< unless ignore_eos)
  bool ignore_eos = false;
  SamplingOptions sampling;
  std::uint64_t seed = 0;
  std::int64_t pad_id = 0;  ///< id fed for padding and for finished rows (never attended/used)
  KVCacheOptions cache;
  /// Replay decode steps as a CUDA graph where possible (CUDA, no policy, no page metadata;
  /// DecodeGraph). Same tokens as eager decoding, up to float rounding.
  bool cuda_graphs = true;
};

struct Generation {
  std::vector<std::int64_t> tokens;  ///< new tokens, the stop token included when one was hit
  std::string stop_reason;           ///< "stop-token" or "max-new-tokens"
};

struct GenerateResult {
  std::vector<Generation> outputs;
  double prefill_seconds = 0, decode_seconds = 0;
  std::int64_t prompt_tokens = 0, generated_tokens = 0, decode_steps = 0;
  std::uint64_t kv_bytes_peak = 0;  ///< largest true cache size seen
  bool cuda_graph = false;          ///< decode steps replayed a CUDA graph
};

GenerateResult generate(const Model& model, const std::vector<std::vector<std::int64_t>>& prompts,
                        const GenerateOptions& opt, CachePolicy* policy, core::Progress& progress);

/// Prompts [B, T] left-padded with pad_id, positions (-1 on padding).
struct PaddedBatch {
  at::Tensor tokens, positions;
};
PaddedBatch left_pad(const std::vector<std::vector<std::int64_t>>& prompts, std::int64_t pad_id);

// ---- decode benchmark (scripts/bench-decode) ----

struct BenchOptions {
  std::int64_t batch = 1;
  std::int64_t context = 4096;        ///< prompt tokens per sequence
  std::int64_t decode_tokens = 128;   ///< timed decode steps
  std::int64_t repeats = 3;           ///< timed runs after one warm-up; the median is reported
  std::uint64_t seed = 0;
  bool cuda_graphs = true;  ///< replay decode steps as a CUDA graph where possible
};

struct BenchResult {
  double prefill_seconds = 0;          ///< median
  double decode_seconds_per_step = 0;  ///< median over runs of (decode time / steps)
  double decode_tokens_per_second = 0; ///< batch / decode_seconds_per_step
  std::uint64_t weight_bytes = 0;
  /// Weight bytes one decode step reads: all but an untied input embedding table (one row of it
  /// is read per token); the roofline's weight term.
  std::uint64_t weight_bytes_read_per_step = 0;
  bool fused_decode = false;  ///< every block ran the fused batch-1 kernels (Model::uses_fused_decode)
  std::uint64_t kv_bytes_read_per_step = 0;  ///< K+V bytes attention reads at the mean context
  std::uint64_t kv_bytes_allocated = 0;
  bool cuda_graph = false;  ///< decode steps replayed a CUDA graph (capture time not counted)
  std::vector<double> prefill_runs, decode_runs;
};

/// Times prefill of `context` random tokens per sequence and `decode_tokens` greedy decode steps.
BenchResult bench_decode(const Model& model, const BenchOptions& opt, core::Progress& progress);

}  // namespace kvlab::llm
