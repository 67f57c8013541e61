#include "kvlab/llm/sampling.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <limits>

#include "kvlab/core/error.hpp"

namespace kvlab::llm {

at::Tensor warp_logits(const at::Tensor& logits_in, const SamplingOptions& o) {
  at::Tensor logits = logits_in.to(at::kCPU, at::kFloat);
  const double ninf = -std::numeric_limits<double>::infinity();
  if (o.temperature > 0) logits = logits / o.temperature;
  const std::int64_t v = logits.size(-1);
  if (o.top_k > 0 && o.top_k < v) {
    // transformers' TopKLogitsWarper: remove everything below the k-th largest value.
    at::Tensor kth = std::get<0>(logits.topk(o.top_k, -1)).narrow(-1, o.top_k - 1, 1);
    logits = logits.masked_fill(logits.lt(kth), ninf);
  }
  if (o.top_p < 1.0) {
    // transformers' TopPLogitsWarper: sort ascending, drop tokens whose cumulative probability
    // is <= 1 - top_p, always keep the most likely token.
    auto sorted = logits.sort(-1, /*descending=*/false);
    at::Tensor sl = std::get<0>(sorted), si = std::get<1>(sorted);
    at::Tensor cum = sl.softmax(-1).cumsum(-1);
    at::Tensor remove_sorted = cum.le(1.0 - o.top_p);
    remove_sorted.narrow(-1, v - 1, 1).fill_(false);
    at::Tensor remove = remove_sorted.scatter(-1, si, remove_sorted);
    logits = logits.masked_fill(remove, ninf);
  }
  return logits;
}

Sampler::Sampler(const SamplingOptions& o, std::uint64_t seed)
    : o_(o), gen_(at::detail::createCPUGenerator(seed)) {
  KVLAB_THROW_IF(o.temperature < 0, UsageError, "--temperature {}: must be >= 0", o.temperature);
  KVLAB_THROW_IF(o.top_p <= 0 || o.top_p > 1, UsageError, "--top-p {}: must be in (0, 1]", o.top_p);
  KVLAB_THROW_IF(o.top_k < 0, UsageError, "--top-k {}: must be >= 0", o.top_k);
}

std::vector<std::int64_t> Sampler::next(const at::Tensor& logits_in) {
  at::Tensor logits = logits_in.to(at::kCPU, at::kFloat);
  at::Tensor ids;
  if (o_.temperature <= 0) {
    ids = logits.argmax(-1);
  } else {
    at::Tensor probs = warp_logits(logits, o_).softmax(-1);
    ids = at::multinomial(probs, 1, /*replacement=*/false, gen_).squeeze(-1);
  }
  std::vector<std::int64_t> out(static_cast<std::size_t>(ids.numel()));
  for (std::int64_t i = 0; i < ids.numel(); ++i) out[static_cast<std::size_t>(i)] = ids[i].item<std::int64_t>();
  return out;
}

}  // namespace kvlab::llm
