// Losses on output spike trains and their gradients with respect to spikes (dL/dS, for the
// activation path) and spike times (dL/dT, for the timing path), as the official ANTLR code
// computes them (antlr.py calc_loss / backward_custom), plus decoding and spike statistics.
// Layout: output spikes [term, batch, classes].
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>

namespace kvlab::snn {

enum class LossKind { count, spike_train, latency };
inline const std::map<std::string, LossKind> kLossNames = {
    {"count", LossKind::count}, {"spike-train", LossKind::spike_train}, {"latency", LossKind::latency}};
const char* loss_name(LossKind k);

struct LossOptions {
  LossKind kind = LossKind::latency;  ///< the reference's default target type
  // latency: logits z_k = softmax_beta (term - t_first,k), 0 for a silent output; CE(z, label)
  // + lambda_nospike [target neuron never fired]
  double softmax_beta = 0.166667;
  double lambda_nospike = 0.1;
  // count: MSE between spike counts and targets, / (T batch)
  std::int64_t max_target_spikes = 1;  ///< target count of the true class
  std::int64_t min_target_spikes = 0;  ///< target count of the other classes
  // spike-train: MSE after filtering both trains with alpha_exp^t, kernel extended by
  // alpha_extend steps (the reference leaves alpha_exp unset for this loss: kvlab uses 0.9, the
  // value commented out in antlr.py)
  double alpha_exp = 0.9;
  std::int64_t alpha_extend = 200;
};

struct LossResult {
  double loss = 0.0;
  at::Tensor dl_ds;  ///< [term, batch, classes]
  at::Tensor dl_dt;  ///< [term, batch, classes] (zero for the count loss)
};

/// Latency loss. `labels` int64 [batch].
LossResult latency_loss(const at::Tensor& out, const at::Tensor& labels, const LossOptions& o);
/// Count loss against per-neuron target counts [batch, classes]; normalised by time_length (the
/// configured T, as the reference) and batch.
LossResult count_loss(const at::Tensor& out, const at::Tensor& target_counts,
                      std::int64_t time_length);
/// Kernel-filtered spike-train loss against a target train [T, batch, classes].
LossResult spike_train_loss(const at::Tensor& out, const at::Tensor& target, double alpha_exp,
                            std::int64_t alpha_extend, std::int64_t time_length);

/// Target spike train of a class label for the spike-train loss: the true class fires
/// max_target_spikes times evenly spaced over [0, T), the others min_target_spikes times.
at::Tensor label_spike_train(const at::Tensor& labels, std::int64_t classes, std::int64_t T,
                             const LossOptions& o);

/// Dispatches on o.kind, building count / train targets from the labels.
LossResult compute_loss(const at::Tensor& out, const at::Tensor& labels, const LossOptions& o,
                        std::int64_t time_length);

/// Predictions: "count" (most spikes; ties to the lower index) and "first" (earliest first spike;
/// ties and all-silent to the lower index), int64 [batch].
at::Tensor predict_count(const at::Tensor& out);
at::Tensor predict_first(const at::Tensor& out);
/// Step of each output neuron's first spike, int64 [batch, classes]; -1 when it never fired.
at::Tensor first_spike_times(const at::Tensor& out);

}  // namespace kvlab::snn
