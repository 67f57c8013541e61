// forward_blocks: a Model restricted to a block range, run through Model::forward from given
// hidden states; device_free_bytes: cudaMemGetInfo plus the caching allocator's unused reserve.
#include "kvlab/llm/block_forward.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <new>
#include <vector>

#include "kvlab/core/error.hpp"

#ifdef KVLAB_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#endif

namespace kvlab::llm {

at::Tensor forward_blocks(const Model& model, const at::Tensor& hidden, const at::Tensor& positions,
                          std::int64_t first, std::int64_t last) {
  const std::int64_t n = model.num_layers();
  KVLAB_THROW_IF(first < 0 || last < first || last > n, UsageError,
                 "forward_blocks: block range [{}, {}) is outside the model's {} blocks", first,
                 last, n);
  TORCH_CHECK(hidden.dim() == 3, "forward_blocks: hidden must be [N, T, C]");
  if (first == last) return hidden;
  const std::int64_t b = hidden.size(0), t = hidden.size(1);
  // The blocks share their weights with `model`: the copy costs a vector of handles.
  Model sub = model;
  std::vector<std::int64_t> drop;
  for (std::int64_t i = 0; i < n; ++i)
    if (i < first || i >= last) drop.push_back(i);
  sub.remove_blocks(drop);
  at::Tensor pos = positions.to(at::kLong);
  if (pos.size(0) != b) pos = pos.expand({b, t});
  // Tokens only give the shape (and pass the vocabulary check): the input is `hidden`.
  const at::Tensor tokens = at::zeros({1, 1}, at::kLong).expand({b, t});
  KVCache cache = sub.make_cache(b);
  std::vector<at::Tensor> outs;
  ForwardOptions fo;
  fo.logits = LogitsMode::none;
  fo.hidden_states = &outs;
  fo.input_hidden = hidden;
  fo.first_block = 0;
  sub.forward(tokens, pos, cache, fo);
  return outs.back();
}

std::optional<std::uint64_t> device_free_bytes(at::Device device) {
#ifdef KVLAB_WITH_CUDA
  if (device.is_cuda()) {
    const int index = device.has_index() ? device.index() : c10::cuda::current_device();
    std::size_t free = 0, total = 0;
    cudaError_t err;
    {
      const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(index));
      err = cudaMemGetInfo(&free, &total);
    }
    if (err != cudaSuccess) return std::nullopt;
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(index);
    constexpr auto agg = static_cast<std::size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    const std::int64_t unused = stats.reserved_bytes[agg].current - stats.allocated_bytes[agg].current;
    return static_cast<std::uint64_t>(free) + static_cast<std::uint64_t>(std::max<std::int64_t>(unused, 0));
  }
#else
  (void)device;
#endif
  return std::nullopt;
}

void release_cached_device_memory() {
#ifdef KVLAB_WITH_CUDA
  c10::cuda::CUDACachingAllocator::emptyCache();
#endif
}

bool is_out_of_memory(const std::exception& e) {
  if (dynamic_cast<const std::bad_alloc*>(&e)) return true;
  const char* w = e.what();
  return std::strstr(w, "out of memory") != nullptr || std::strstr(w, "can't allocate memory") != nullptr;
}

}  // namespace kvlab::llm
