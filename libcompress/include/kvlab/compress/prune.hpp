// prune-blocks: choose transformer blocks to remove (SLEB and three one-shot alternatives) on
// calibration windows, and write the pruned model as a `model` artifact with the blocks physically
// removed (docs/prune-blocks.md). The search runs on libllm's Model; nothing here prints.
//
// Extra group the pruned model artifact carries (docs/formats/model.md, docs/prune-blocks.md):
//   /prune_blocks   attrs metric, search, removed_original_indices (removal order),
//                   kept_original_indices, num_blocks_before, num_blocks_after, protect_first,
//                   protect_last, calib_windows, calib_len, calib_sampling, calib_seed,
//                   block_forwards, plain_block_forwards, seconds, block_calls;
//                   batched search also: candidate_group, rescored, fallback_rounds,
//                   max_batch_deviation, tie_tolerance
//   /prune_blocks/scores   float64 [rounds, num_blocks_before]  score of each candidate (by its
//                          ORIGINAL index; NaN = not a candidate that round); axis_labels
//                          ["round", "original_block"]
//   /prune_blocks/removed  int64 [removed]  = removed_original_indices
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "kvlab/core/artifact.hpp"
#include "kvlab/core/progress.hpp"
#include "kvlab/llm/model.hpp"

namespace kvlab::compress {

enum class PruneMetric {
  sleb,             ///< iterative greedy: each round removes the block whose skipping gives the
                    ///< lowest summed calibration NLL on the current model (SLEB's sleb())
  ppl_oneshot,      ///< the same score once on the dense model; remove the K lowest
  block_influence,  ///< ShortGPT BI = 1 - mean_token cos(block input, block output); K lowest
  angular,          ///< Gromov et al.: arccos(cos(x_l, x_{l+K}))/pi at each window's last token,
                    ///< mean over windows; remove the K consecutive blocks l..l+K-1 of least
};
/// CLI names: "sleb", "ppl-oneshot", "block-influence", "angular".
const std::map<std::string, PruneMetric>& prune_metric_names();
const char* prune_metric_name(PruneMetric m);

enum class CalibSampling {
  random,      ///< `windows` starts drawn like SLEB's data_utils (GPTQ style): Python
               ///< random.seed(seed); start = random.randint(0, n - len - 1) per window
  contiguous,  ///< non-overlapping windows from the start, min(windows, n / len) of them: what
               ///< SLEB's get_loss scores on its (pre-joined) calibration text
};
const std::map<std::string, CalibSampling>& calib_sampling_names();
const char* calib_sampling_name(CalibSampling s);

struct CalibOptions {
  std::int64_t windows = 128;  ///< SLEB paper: 128 samples
  std::int64_t len = 2048;     ///< SLEB: model.seqlen = 2048
  CalibSampling sampling = CalibSampling::random;
  std::uint64_t seed = 0;      ///< SLEB: seed=0
};

/// Cuts calibration windows [W, len] (int64, CPU) out of a 1-D token stream. UsageError naming
/// `source` when the stream is shorter than one window (random sampling needs len + 1 tokens).
at::Tensor make_calibration_windows(const at::Tensor& ids, const CalibOptions& o,
                                    const std::string& source);

/// Python's random.seed(seed) followed by `count` x random.randint(lo, hi) (CPython's MT19937,
/// init_by_array and _randbelow), so window starts match SLEB/GPTQ data loaders bit for bit.
std::vector<std::int64_t> python_randint(std::uint64_t seed, std::int64_t lo, std::int64_t hi,
                                         std::int64_t count);

enum class SearchMode {
  cached,   ///< keep the hidden states entering every alive block across candidates and rounds;
            ///< a candidate j only runs the blocks after j (identical picks, fewer block forwards)
  plain,    ///< SLEB's reference loop: every candidate is a full forward of the model without it
  batched,  ///< cached, and the candidates of a round run together: block k runs once on the
            ///< concatenated states of every candidate j < k of a group (a wavefront), groups
            ///< sized by a memory budget; the winner and its near-ties are then re-scored one at a
            ///< time as `cached` does, so the picks are cached's (docs/prune-blocks.md)
};
const std::map<std::string, SearchMode>& search_mode_names();
const char* search_mode_name(SearchMode s);

struct PruneOptions {
  PruneMetric metric = PruneMetric::sleb;
  std::int64_t remove = 0;    ///< blocks to remove (> 0), or 0 to use remove_ratio
  double remove_ratio = 0.0;  ///< fraction of blocks; count = ceil(ratio * N) (SLEB latency.py)
  std::int64_t protect_first = 1;  ///< SLEB early_barrier: the first alive blocks never removed
  std::int64_t protect_last = 1;   ///< SLEB latter_barrier: the last alive blocks never removed
  SearchMode search = SearchMode::cached;
  std::int64_t batch_windows = 1;  ///< calibration windows per forward (SLEB: bs=1)
  /// batched search: candidates per group (0: as many as batch_memory_mb allows).
  std::int64_t batch_candidates = 0;
  /// batched search: memory budget of a group's block call, in MiB (0: 60 % of the free device
  /// memory left after the LM head on CUDA, kCpuBatchMemoryMB on the CPU).
  std::int64_t batch_memory_mb = 0;
  /// batched search: candidates whose batched losses lie within tie_tolerance x |best loss| of
  /// the best (chained) are re-scored one at a time; a re-scored candidate whose batched loss was
  /// off by more than half of that makes the whole round re-scored (see PruneResult).
  double tie_tolerance = 1e-4;
  CalibOptions calib;
};

/// Resolves --remove / --remove-ratio against a model of `num_blocks` blocks and checks it
/// against the protected blocks: UsageError (exit 2) when nothing or too much would be removed.
std::int64_t resolve_remove_count(std::int64_t num_blocks, const PruneOptions& o);

struct PruneResult {
  PruneMetric metric = PruneMetric::sleb;
  std::vector<std::int64_t> removed;  ///< ORIGINAL block indices, in removal order
  std::vector<std::int64_t> kept;     ///< ORIGINAL indices of the blocks left, in order
  /// scores[r][i]: round r's score of original block i (for angular: of the run starting at i);
  /// NaN when i was not a candidate. SLEB: one row per round; one-shot metrics: one row.
  std::vector<std::vector<double>> scores;
  std::int64_t num_blocks_before = 0;
  std::int64_t block_forwards = 0;        ///< block forwards run (one = one block over all windows)
  std::int64_t plain_block_forwards = 0;  ///< what SLEB's reference loop needs for the same picks
  std::int64_t calib_windows = 0, calib_len = 0;
  double seconds = 0;
  /// Block invocations actually made (each: one block over one batch of sequences, whatever
  /// its size): plain/cached make one per block per window batch and candidate; batched one per
  /// block per window batch and candidate group.
  std::int64_t block_calls = 0;
  std::int64_t candidate_group = 0;  ///< batched: largest candidate group used (0 otherwise)
  std::int64_t rescored = 0;         ///< batched: candidates re-scored one at a time
  std::int64_t fallback_rounds = 0;  ///< batched: rounds re-scored whole (deviation > tol / 2)
  double max_batch_deviation = 0;    ///< batched: max |batched - single| / |single| loss seen
};

/// Default memory budget of the batched search on the CPU, in MiB.
inline constexpr std::int64_t kCpuBatchMemoryMB = 2048;

/// Chooses the blocks to remove. `windows` [W, L] int64 (make_calibration_windows). The model is
/// not modified. Deterministic for fixed inputs on the CPU.
PruneResult select_blocks(const llm::Model& model, const at::Tensor& windows,
                          const PruneOptions& o, core::Progress& progress);

/// Writes `source` with the blocks of `r` physically removed (kept blocks renumbered 0..M-1),
/// in the source's stored dtype, as a `model` artifact at `out` (atomic), with the /prune_blocks
/// group above, the source's hf_config and its /tokenizer group (copied from `source_path`).
core::ArtifactHeader write_pruned_model(const std::filesystem::path& out,
                                        const std::filesystem::path& source_path,
                                        const llm::ModelFile& source, const PruneResult& r,
                                        const PruneOptions& o, const core::Provenance& prov);

}  // namespace kvlab::compress
