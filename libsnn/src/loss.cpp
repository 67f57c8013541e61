// Losses and decoding (loss.hpp), following antlr.py's calc_loss / backward_custom.
#include "kvlab/snn/loss.hpp"

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "kvlab/core/error.hpp"

namespace kvlab::snn {

const char* loss_name(LossKind k) {
  switch (k) {
    case LossKind::count: return "count";
    case LossKind::spike_train: return "spike-train";
    case LossKind::latency: return "latency";
  }
  return "?";
}

namespace {

void check_out(const at::Tensor& out, const at::Tensor& labels) {
  KVLAB_THROW_IF(out.dim() != 3, UsageError, "snn loss: output must be [time, batch, classes]");
  KVLAB_THROW_IF(labels.dim() != 1 || labels.size(0) != out.size(1), UsageError,
                 "snn loss: {} labels for a batch of {}", labels.numel(), out.size(1));
}

// term - t_first per neuron (term for a spike at step 0, 1 at the last step, 0: never fired).
at::Tensor time_to_go(const at::Tensor& out) {
  const std::int64_t term = out.size(0);
  const at::Tensor ramp =
      at::arange(term, 0, -1, out.options().dtype(at::kFloat)).view({term, 1, 1});
  return std::get<0>((out.to(at::kFloat) * ramp).max(0));
}

}  // namespace

at::Tensor first_spike_times(const at::Tensor& out) {
  const at::Tensor tl = time_to_go(out).to(at::kLong);
  return at::where(tl > 0, out.size(0) - tl, at::full_like(tl, -1));
}

at::Tensor predict_count(const at::Tensor& out) { return out.sum(0).argmax(1); }

at::Tensor predict_first(const at::Tensor& out) { return time_to_go(out).argmax(1); }

LossResult latency_loss(const at::Tensor& out, const at::Tensor& labels, const LossOptions& o) {
  check_out(out, labels);
  const std::int64_t term = out.size(0), B = out.size(1), C = out.size(2);
  const auto fopt = out.options().dtype(at::kFloat);
  const at::Tensor lab = labels.to(out.device(), at::kLong);
  const at::Tensor tl = time_to_go(out);                  // [B, C]
  const at::Tensor z = tl * o.softmax_beta;               // logits
  const at::Tensor logp = at::log_softmax(z, 1);
  const double ce = -logp.gather(1, lab.view({-1, 1})).sum().item<double>() / B;
  // dCE/dz = (softmax - onehot) / B; zero for neurons that never fired (their z is constant 0).
  at::Tensor sm_grad = (logp.exp() - at::one_hot(lab, C).to(at::kFloat)) / static_cast<double>(B);
  sm_grad.masked_fill_(tl == 0, 0.0);
  // dz/dt_first = -softmax_beta, placed at each neuron's first-spike step.
  const at::Tensor idx = (term - tl).clamp(0, term - 1).to(at::kLong);  // [B, C]
  at::Tensor dl_dt = at::zeros({term, B, C}, fopt);
  dl_dt.scatter_(0, idx.unsqueeze(0), (sm_grad * (-o.softmax_beta)).unsqueeze(0));
  // No-spike penalty: lambda / B for every sample whose target neuron never fired; its dL/dS is
  // -lambda / B at the target neuron on every step (more spikes there lower the loss).
  const at::Tensor target_silent =
      (out.sum(0).gather(1, lab.view({-1, 1})) == 0).to(at::kFloat).view({-1});  // [B]
  const at::Tensor l_ns = target_silent * (o.lambda_nospike / static_cast<double>(B));
  at::Tensor ds = at::zeros({B, C}, fopt).scatter_(1, lab.view({-1, 1}), -l_ns.view({-1, 1}));
  LossResult r;
  r.loss = ce + l_ns.sum().item<double>();
  r.dl_ds = ds.unsqueeze(0).expand({term, B, C}).contiguous();
  r.dl_dt = dl_dt;
  return r;
}

LossResult count_loss(const at::Tensor& out, const at::Tensor& target_counts,
                      std::int64_t time_length) {
  const std::int64_t term = out.size(0), B = out.size(1), C = out.size(2);
  const double norm = static_cast<double>(time_length) * static_cast<double>(B);
  const at::Tensor diff = out.to(at::kFloat).sum(0) - target_counts.to(at::kFloat);  // [B, C]
  LossResult r;
  r.loss = diff.pow(2).sum().item<double>() / norm;
  r.dl_ds = (diff * (2.0 / norm)).unsqueeze(0).expand({term, B, C}).contiguous();
  r.dl_dt = at::zeros({term, B, C}, out.options().dtype(at::kFloat));
  return r;
}

LossResult spike_train_loss(const at::Tensor& out, const at::Tensor& target, double alpha_exp,
                            std::int64_t alpha_extend, std::int64_t time_length) {
  KVLAB_THROW_IF(alpha_exp <= 0 || alpha_exp >= 1, UsageError,
                 "--alpha-exp {}: the spike-train kernel needs 0 < alpha < 1", alpha_exp);
  const std::int64_t term = out.size(0), B = out.size(1), C = out.size(2);
  const auto fopt = out.options().dtype(at::kFloat);
  // Kernel alpha^k for k < min(T, 1000), cut where it falls to 1e-6 (as the reference).
  std::vector<float> kern;
  for (std::int64_t k = 0; k < std::min<std::int64_t>(time_length, 1000); ++k) {
    const double v = std::pow(alpha_exp, static_cast<double>(k));
    if (v <= 1e-6) break;
    kern.push_back(static_cast<float>(v));
  }
  const std::int64_t K = static_cast<std::int64_t>(kern.size());
  const at::Tensor kt = at::tensor(kern, fopt);
  // Error train over the full T (steps after an early stop carry no output spikes).
  at::Tensor err = -target.to(at::kFloat).narrow(0, 0, time_length).clone();
  err.narrow(0, 0, term).add_(out.to(at::kFloat));
  // Causal filtering: f[tau] = sum_k kern[k] err[tau - k], tau in [0, T + extend).
  const std::int64_t Tf = time_length + alpha_extend;
  const at::Tensor e = err.permute({1, 2, 0}).reshape({B * C, 1, time_length});
  at::Tensor f = at::conv1d(e, kt.flip(0).view({1, 1, K}), {}, 1, K - 1);  // length T + K - 1
  if (f.size(2) >= Tf) {
    f = f.narrow(2, 0, Tf);
  } else {
    f = at::constant_pad_nd(f, {0, Tf - f.size(2)}, 0);
  }
  const double norm = static_cast<double>(time_length) * static_cast<double>(B);
  LossResult r;
  r.loss = f.pow(2).sum().item<double>() / norm;
  // dL/dS[t] = 2/norm sum_k kern[k] f[t + k]
  at::Tensor ds = at::conv1d(f, kt.view({1, 1, K})) * (2.0 / norm);  // length Tf - K + 1
  ds = ds.size(2) >= term ? ds.narrow(2, 0, term) : at::constant_pad_nd(ds, {0, term - ds.size(2)}, 0);
  // dL/dT[t] = -2/norm sum_j kern'[j] f[t + j - 1], kern'[j] = (kern[j] - kern[j-2]) / 2, only
  // where the neuron spiked.
  std::vector<float> kp(static_cast<std::size_t>(K + 2), 0.f);
  for (std::int64_t j = 0; j < K + 2; ++j) {
    const float a = j < K ? kern[static_cast<std::size_t>(j)] : 0.f;
    const float b = j >= 2 ? kern[static_cast<std::size_t>(j - 2)] : 0.f;
    kp[static_cast<std::size_t>(j)] = (a - b) / 2;
  }
  const at::Tensor fpad = at::constant_pad_nd(f, {1, K + 2}, 0);  // fpad[u] = f[u - 1]
  at::Tensor dt = at::conv1d(fpad, at::tensor(kp, fopt).view({1, 1, K + 2})).narrow(2, 0, term) *
                  (-2.0 / norm);
  auto back = [&](const at::Tensor& x) {
    return x.reshape({B, C, term}).permute({2, 0, 1}).contiguous();
  };
  r.dl_ds = back(ds);
  r.dl_dt = back(dt) * out.to(at::kFloat);
  return r;
}

at::Tensor label_spike_train(const at::Tensor& labels, std::int64_t classes, std::int64_t T,
                             const LossOptions& o) {
  const std::int64_t B = labels.size(0);
  at::Tensor tr = at::zeros({T, B, classes});
  const at::Tensor lab = labels.to(at::kCPU, at::kLong).contiguous();
  auto place = [&](std::int64_t b, std::int64_t c, std::int64_t count) {
    for (std::int64_t k = 0; k < count; ++k) {
      const std::int64_t t = std::min(T - 1, (k + 1) * T / (count + 1));
      tr[t][b][c] = 1.0;
    }
  };
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t c = 0; c < classes; ++c)
      place(b, c, c == lab[b].item<std::int64_t>() ? o.max_target_spikes : o.min_target_spikes);
  return tr.to(labels.device());
}

LossResult compute_loss(const at::Tensor& out, const at::Tensor& labels, const LossOptions& o,
                        std::int64_t time_length) {
  check_out(out, labels);
  const std::int64_t C = out.size(2);
  switch (o.kind) {
    case LossKind::latency: return latency_loss(out, labels, o);
    case LossKind::count: {
      const at::Tensor lab = labels.to(out.device(), at::kLong);
      at::Tensor tgt = at::full({out.size(1), C}, static_cast<double>(o.min_target_spikes),
                                out.options().dtype(at::kFloat));
      tgt.scatter_(1, lab.view({-1, 1}), static_cast<double>(o.max_target_spikes));
      return count_loss(out, tgt, time_length);
    }
    case LossKind::spike_train:
      return spike_train_loss(out, label_spike_train(labels, C, time_length, o).to(out.device()),
                              o.alpha_exp, o.alpha_extend, time_length);
  }
  return {};
}

}  // namespace kvlab::snn
