#include "kvlab/llm/eval.hpp"

#include <ATen/ATen.h>

#include <chrono>
#include <cmath>

#include "kvlab/core/error.hpp"
#include "kvlab/core/tensor_io.hpp"

namespace kvlab::llm {

at::Tensor score_tokens(const Model& model, const at::Tensor& tokens, std::int64_t chunk_size,
                        CachePolicy* policy) {
  TORCH_CHECK(tokens.dim() == 2 && tokens.size(1) >= 2, "score_tokens: tokens must be [B, T>=2]");
  const std::int64_t b = tokens.size(0), t = tokens.size(1);
  const std::int64_t chunk = chunk_size > 0 ? chunk_size : t;
  KVCache cache = model.make_cache(b);
  cache.reserve(t);
  at::Tensor toks = tokens.to(at::kLong);
  at::Tensor targets_all = toks.to(model.device());
  std::vector<at::Tensor> parts;
  ForwardOptions fo;
  fo.policy = policy;
  for (std::int64_t s = 0; s < t - 1; s += chunk) {
    const std::int64_t n = std::min(chunk, t - 1 - s);  // the last token predicts nothing
    at::Tensor pos = at::arange(s, s + n, at::kLong).unsqueeze(0).expand({b, n});
    at::Tensor logits = model.forward(toks.narrow(1, s, n), pos, cache, fo);  // [B, n, V]
    at::Tensor tgt = targets_all.narrow(1, s + 1, n);
    at::Tensor lp = at::log_softmax(logits, -1);
    parts.push_back(-lp.gather(2, tgt.unsqueeze(-1)).squeeze(-1));
  }
  return at::cat(parts, 1).to(at::kCPU);
}

EvalResult evaluate_perplexity(const Model& model, const at::Tensor& ids_in, const EvalOptions& opt,
                               core::Progress& progress) {
  KVLAB_THROW_IF(opt.seq_len < 2, UsageError, "--seq-len {}: must be at least 2", opt.seq_len);
  KVLAB_THROW_IF(opt.batch_size < 1, UsageError, "--batch-size {}: must be at least 1", opt.batch_size);
  at::Tensor ids = ids_in.reshape({-1}).to(at::kLong);
  EvalResult r;
  r.tokens_total = ids.numel();
  KVLAB_THROW_IF(r.tokens_total < opt.seq_len, UsageError,
                 "the data holds {} tokens, fewer than one window of --seq-len {}; pass a smaller "
                 "--seq-len or more data",
                 r.tokens_total, opt.seq_len);
  std::int64_t windows = r.tokens_total / opt.seq_len;
  r.tokens_dropped = r.tokens_total - windows * opt.seq_len;
  if (opt.max_windows > 0 && windows > opt.max_windows) windows = opt.max_windows;
  const auto t0 = std::chrono::steady_clock::now();
  progress.begin("scoring windows", windows, "window");
  double sum = 0;
  for (std::int64_t w = 0; w < windows; w += opt.batch_size) {
    const std::int64_t nb = std::min(opt.batch_size, windows - w);
    at::Tensor batch = ids.narrow(0, w * opt.seq_len, nb * opt.seq_len).view({nb, opt.seq_len});
    at::Tensor nll = score_tokens(model, batch, opt.chunk_size).to(at::kDouble);
    at::Tensor mean = nll.mean(1);
    for (std::int64_t i = 0; i < nb; ++i) {
      r.window_loss.push_back(mean[i].item<double>());
      r.window_start.push_back((w + i) * opt.seq_len);
      sum += r.window_loss.back();
    }
    const double run = sum / static_cast<double>(r.window_loss.size());
    progress.update(w + nb, {{"ppl", std::exp(run)}});
    KVLAB_THROW_IF(progress.stop_requested(), Error, "stopped by a signal after {} windows",
                   r.window_loss.size());
  }
  const auto n = static_cast<double>(r.window_loss.size());
  r.mean_loss = sum / n;
  double var = 0;
  for (double x : r.window_loss) var += (x - r.mean_loss) * (x - r.mean_loss);
  r.loss_stderr = n > 1 ? std::sqrt(var / (n - 1) / n) : 0.0;
  r.ppl = std::exp(r.mean_loss);
  r.ppl_ci_low = std::exp(r.mean_loss - 1.96 * r.loss_stderr);
  r.ppl_ci_high = std::exp(r.mean_loss + 1.96 * r.loss_stderr);
  r.bits_per_token = r.mean_loss / std::log(2.0);
  r.tokens_scored = static_cast<std::int64_t>(r.window_loss.size()) * (opt.seq_len - 1);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.tokens_per_second =
      r.seconds > 0 ? static_cast<double>(r.window_loss.size() * opt.seq_len) / r.seconds : 0;
  progress.end({{"ppl", r.ppl}});
  return r;
}

core::ArtifactHeader write_eval_report(const std::filesystem::path& out, const EvalResult& r,
                                       const EvalOptions& opt, const EvalReportInfo& info,
                                       const core::Provenance& prov) {
  core::ArtifactWriter w(out, kEvalReportKind, kEvalReportFormatVersion, 0, prov);
  auto& p = w.params();
  p.set_attr("seq_len", opt.seq_len);
  p.set_attr("batch_size", opt.batch_size);
  p.set_attr("chunk_size", opt.chunk_size);
  p.set_attr("max_windows", opt.max_windows);
  p.set_attr("protocol", kEvalProtocol);
  p.set_attr("dtype", info.dtype);
  p.set_attr("device", info.device);
  p.set_attr("model_path", info.model_path);
  p.set_attr("data_path", info.data_path);
  p.set_attr("data_format", info.data_format);
  auto& root = w.root();
  root.set_attr("ppl", r.ppl);
  root.set_attr("mean_loss", r.mean_loss);
  root.set_attr("loss_stderr", r.loss_stderr);
  root.set_attr("ppl_ci_low", r.ppl_ci_low);
  root.set_attr("ppl_ci_high", r.ppl_ci_high);
  root.set_attr("bits_per_token", r.bits_per_token);
  root.set_attr("windows", static_cast<std::int64_t>(r.window_loss.size()));
  root.set_attr("tokens_total", r.tokens_total);
  root.set_attr("tokens_scored", r.tokens_scored);
  root.set_attr("tokens_dropped", r.tokens_dropped);
  root.set_attr("seconds", r.seconds);
  root.set_attr("tokens_per_second", r.tokens_per_second);
  root.write_vec("window_loss", r.window_loss, {"window"});
  root.write_vec("window_start", r.window_start, {"window"});
  return w.commit();
}

}  // namespace kvlab::llm
