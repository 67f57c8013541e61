// Perplexity evaluation with the standard protocol (docs/eval.md) and the `eval-report` artifact
// (docs/formats/eval-report.md):
//
//   /params   attrs seq_len, batch_size, chunk_size, max_windows, protocol, dtype, device,
//             model_path, data_path, data_format
//   /         attrs ppl, mean_loss, loss_stderr, ppl_ci_low, ppl_ci_high, bits_per_token,
//             windows, tokens_total, tokens_scored, tokens_dropped, seconds, tokens_per_second
//   /window_loss   float64 [windows]  mean next-token NLL (nats) of each window
//   /window_start  int64   [windows]  index of each window's first token in the data
//
// Protocol: the token stream is cut into floor(N / seq_len) non-overlapping windows of seq_len
// tokens (the tail is dropped and counted); each window is scored independently from an empty
// cache (no BOS added, no context carried over); a window's loss is the mean NLL of its
// seq_len - 1 next-token predictions; the reported loss is the mean of the window losses and the
// perplexity its exp. The error bar is the standard error of the window losses, mapped to a 95 %
// interval exp(mean +- 1.96 se).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "kvlab/core/artifact.hpp"
#include "kvlab/core/progress.hpp"
#include "kvlab/llm/model.hpp"

namespace kvlab::llm {

inline constexpr const char* kEvalReportKind = "eval-report";
inline constexpr std::uint32_t kEvalReportFormatVersion = 1;
inline constexpr const char* kEvalProtocol =
    "non-overlapping windows of seq_len tokens, tail dropped; each window scored from an empty "
    "cache without BOS; window loss = mean NLL of its seq_len-1 next-token predictions; "
    "loss = mean of window losses; ppl = exp(loss); 95% CI = exp(loss +- 1.96 * stderr of "
    "window losses)";

struct EvalOptions {
  std::int64_t seq_len = 2048;   ///< window length in tokens
  std::int64_t batch_size = 1;   ///< windows per forward
  std::int64_t chunk_size = 0;   ///< > 0: teacher-force each window through the cache in chunks
  std::int64_t max_windows = 0;  ///< > 0: score only the first this many windows
};

struct EvalResult {
  std::vector<double> window_loss;
  std::vector<std::int64_t> window_start;
  double mean_loss = 0, loss_stderr = 0, ppl = 0, ppl_ci_low = 0, ppl_ci_high = 0;
  double bits_per_token = 0;
  std::int64_t tokens_total = 0, tokens_scored = 0, tokens_dropped = 0;
  double seconds = 0, tokens_per_second = 0;
};

/// Next-token NLL [B, T-1] (float32, nats) of tokens[:, 1:] given their prefixes, teacher-forced
/// through a fresh KV cache in chunks of `chunk_size` tokens (0: one forward). `policy` (may be
/// null) is the cache policy applied while scoring.
at::Tensor score_tokens(const Model& model, const at::Tensor& tokens, std::int64_t chunk_size,
                        CachePolicy* policy = nullptr);

/// Perplexity of a 1-D token stream under the protocol above. UsageError when the data holds
/// fewer than seq_len tokens.
EvalResult evaluate_perplexity(const Model& model, const at::Tensor& ids, const EvalOptions& opt,
                               core::Progress& progress);

struct EvalReportInfo {
  std::string model_path, data_path, data_format, dtype, device;
};

core::ArtifactHeader write_eval_report(const std::filesystem::path& out, const EvalResult& r,
                                       const EvalOptions& opt, const EvalReportInfo& info,
                                       const core::Provenance& prov);

}  // namespace kvlab::llm
