// Latency and rate encoders (encode.hpp).
#include "kvlab/snn/encode.hpp"

#include <ATen/ATen.h>

#include "kvlab/core/error.hpp"

namespace kvlab::snn {

const char* encoding_name(Encoding e) { return e == Encoding::latency ? "latency" : "rate"; }

at::Tensor latency_encode(const at::Tensor& x, std::int64_t time_length, std::int64_t max_timing,
                          std::int64_t min_timing) {
  KVLAB_THROW_IF(x.dim() != 2, UsageError, "latency_encode: expected [batch, features], got {}",
                 c10::str(x.sizes()));
  KVLAB_THROW_IF(time_length < 1, UsageError, "--time-steps {}: expected >= 1", time_length);
  const at::Tensor xf = x.to(at::kFloat);
  // float2spikes: value = (max - min) x + min; skip_zero sets zeros to -1; spike where
  // t == value.int() (truncation toward zero, as Python's int()).
  at::Tensor step = (xf * static_cast<double>(max_timing - min_timing) +
                     static_cast<double>(min_timing)).to(at::kInt).to(at::kLong);
  step = at::where(xf == 0, at::full_like(step, -1), step);
  const at::Tensor t = at::arange(time_length, step.options()).view({-1, 1, 1});
  return (t == step.unsqueeze(0)).to(at::kFloat);
}

at::Tensor rate_encode(const at::Tensor& x, std::int64_t time_length, double max_rate) {
  KVLAB_THROW_IF(x.dim() != 2, UsageError, "rate_encode: expected [batch, features], got {}",
                 c10::str(x.sizes()));
  KVLAB_THROW_IF(max_rate < 0 || max_rate > 1, UsageError,
                 "--max-rate {}: a spike probability per step must be in [0, 1]", max_rate);
  const at::Tensor p = (x.to(at::kFloat) * max_rate).clamp(0.0, 1.0);
  return at::bernoulli(p.unsqueeze(0).expand({time_length, x.size(0), x.size(1)}).contiguous());
}

}  // namespace kvlab::snn
