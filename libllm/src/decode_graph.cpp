#include "kvlab/llm/decode_graph.hpp"

#include <ATen/ATen.h>

#include <vector>

#include "kvlab/core/error.hpp"
#include "kvlab/llm/kv_cache.hpp"
#include "kvlab/llm/model.hpp"

#ifdef KVLAB_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

namespace kvlab::llm {

struct DecodeGraph::Impl {
  const Model* model = nullptr;
  KVCache* cache = nullptr;
  std::int64_t batch = 0, length = 0, end = 0;  // slots in use; slots reserved
  at::Tensor tokens, positions, slot, logits;   // static inputs and output, on the device
  std::vector<const void*> storage;             // each layer's K storage, to detect reallocation
  bool graphed = false;
#ifdef KVLAB_WITH_CUDA
  std::unique_ptr<at::cuda::CUDAGraph> graph;
#endif

  void run_static() { logits = model->decode_static(tokens, positions, slot, *cache); }
};

std::string DecodeGraph::unsupported_reason(const Model& model, const KVCache& cache,
                                            const CachePolicy* policy, bool need_cuda) {
  if (policy != nullptr) return "a KV-cache policy is active (graphs replay full attention only)";
  if (need_cuda && !model.device().is_cuda()) return "the model is not on a CUDA device";
#ifndef KVLAB_WITH_CUDA
  if (need_cuda) return "this kvlab was built without CUDA";
#endif
  if (cache.options().page_size > 0) return "the cache keeps page metadata";
  if (cache.num_layers() == 0) return "the model has no blocks";
  for (std::int64_t i = 1; i < cache.num_layers(); ++i)
    if (cache.layer(i).length() != cache.layer(0).length())
      return "the cache's layers hold different numbers of slots";
  return "";
}

DecodeGraph::DecodeGraph(const Model& model, KVCache& cache, std::int64_t steps, bool use_graph)
    : impl_(std::make_unique<Impl>()) {
  const std::string why = unsupported_reason(model, cache, nullptr, use_graph);
  KVLAB_THROW_IF(!why.empty(), UsageError, "cannot replay decode steps as a graph: {}", why);
  KVLAB_THROW_IF(steps < 1, UsageError, "DecodeGraph: steps must be >= 1, got {}", steps);
  Impl& m = *impl_;
  m.model = &model;
  m.cache = &cache;
  m.batch = cache.batch();
  m.length = cache.layer(0).length();
  m.end = m.length + steps;
  cache.reserve(m.end);
  for (std::int64_t i = 0; i < cache.num_layers(); ++i)
    m.storage.push_back(cache.layer(i).storage_keys().data_ptr());

  const auto lopt = at::TensorOptions().device(model.device()).dtype(at::kLong);
  m.tokens = at::zeros({m.batch, 1}, lopt);
  m.positions = at::empty({m.batch, 1}, lopt);
  for (std::int64_t i = 0; i < m.batch; ++i)
    m.positions[i][0] = cache.next_positions()[static_cast<std::size_t>(i)];
  m.slot = at::full({1}, m.length, lopt);
  if (!use_graph) return;
#ifdef KVLAB_WITH_CUDA
  c10::cuda::CUDAGuard device_guard(model.device());
  c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
  cudaDeviceSynchronize();
  {
    c10::cuda::CUDAStreamGuard stream_guard(side);
    // The warm-up initialises cuBLAS and the allocator outside the capture. Its write to slot
    // `length` is overwritten by the first real step before anything reads it.
    m.run_static();
    cudaDeviceSynchronize();
    m.graph = std::make_unique<at::cuda::CUDAGraph>();
    m.graph->capture_begin();
    m.run_static();
    m.graph->capture_end();
  }
  cudaDeviceSynchronize();
  m.graphed = true;
#endif
}

DecodeGraph::~DecodeGraph() = default;

std::int64_t DecodeGraph::steps_left() const { return impl_->end - impl_->length; }
bool DecodeGraph::graphed() const { return impl_->graphed; }

at::Tensor DecodeGraph::step(const at::Tensor& tokens, const at::Tensor& positions) {
  Impl& m = *impl_;
  TORCH_CHECK(tokens.dim() == 2 && tokens.size(0) == m.batch && tokens.size(1) == 1 &&
                  positions.sizes() == tokens.sizes(),
              "DecodeGraph::step: tokens and positions must both be [", m.batch, ", 1]");
  TORCH_CHECK(m.length < m.end, "DecodeGraph::step: the reserved steps are used up");
  for (std::int64_t i = 0; i < m.cache->num_layers(); ++i) {
    const LayerKV& l = m.cache->layer(i);
    TORCH_CHECK(l.length() == m.length && l.storage_keys().data_ptr() == m.storage[i],
                "DecodeGraph::step: the cache was changed outside the graph (layer ", i, ")");
  }
  at::Tensor pos_cpu = positions.to(at::kCPU, at::kLong);
  m.tokens.copy_(tokens);
  m.positions.copy_(pos_cpu);
  m.slot.fill_(m.length);
#ifdef KVLAB_WITH_CUDA
  if (m.graphed) {
    m.graph->replay();
  } else {
    m.run_static();
  }
#else
  m.run_static();
#endif
  for (std::int64_t i = 0; i < m.cache->num_layers(); ++i) m.cache->layer(i).commit_written(1);
  ++m.length;
  std::vector<std::int64_t> next = m.cache->next_positions();
  auto p = pos_cpu.accessor<std::int64_t, 2>();
  for (std::int64_t i = 0; i < m.batch; ++i)
    next[static_cast<std::size_t>(i)] = std::max(next[static_cast<std::size_t>(i)], p[i][0] + 1);
  m.cache->set_next_positions(std::move(next));
  return m.logits;
}

}  // namespace kvlab::llm
