#include "kvlab/llm/decode_graph.hpp"

#include <ATen/ATen.h>

#include <chrono>
#include <vector>

#include <fmt/format.h>

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
  std::int64_t batch = 0, length = 0, start = 0, end = 0;  // slots in use; at start; reserved
  at::Tensor tokens, positions, slot, logits;   // static inputs and output, on the device
  std::vector<const void*> storage;             // each layer's K storage, to detect reallocation
  std::vector<at::Tensor> ring;                 // recorded queries per layer [B, H, R, D]
  at::Tensor ring_slot;                         // [1] on the device: (steps run) mod R
  StaticDecodeOptions so;
  bool graphed = false;
#ifdef KVLAB_WITH_CUDA
  std::unique_ptr<at::cuda::CUDAGraph> graph;
#endif

  void run_static() { logits = model->decode_static(tokens, positions, slot, *cache, so); }
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
    : DecodeGraph(model, cache, steps, DecodeGraphOptions{use_graph, 0}) {}

DecodeGraph::DecodeGraph(const Model& model, KVCache& cache, std::int64_t steps,
                         const DecodeGraphOptions& o)
    : impl_(std::make_unique<Impl>()) {
  const bool use_graph = o.use_graph;
  const std::string why = unsupported_reason(model, cache, nullptr, use_graph);
  KVLAB_THROW_IF(!why.empty(), UsageError, "cannot replay decode steps as a graph: {}", why);
  KVLAB_THROW_IF(steps < 1, UsageError, "DecodeGraph: steps must be >= 1, got {}", steps);
  Impl& m = *impl_;
  m.model = &model;
  m.cache = &cache;
  m.batch = cache.batch();
  m.length = cache.layer(0).length();
  m.start = m.length;
  m.end = m.length + steps;
  cache.reserve(m.end);
  for (std::int64_t i = 0; i < cache.num_layers(); ++i)
    m.storage.push_back(cache.layer(i).storage_keys().data_ptr());
  // Attend over the slots this graph can have filled, not the whole reservation.
  m.so.span = m.end;
  // One mask for all layers only where they hold the same positions (one host check per graph).
  const at::Tensor p0 = cache.layer(0).positions();
  for (std::int64_t i = 1; i < cache.num_layers() && m.so.shared_positions; ++i)
    m.so.shared_positions = at::equal(cache.layer(i).positions(), p0);
  KVLAB_THROW_IF(o.record_queries < 0, UsageError, "DecodeGraph: record_queries must be >= 0");
  if (o.record_queries > 0) {
    const ModelConfig& c = model.config();
    const auto qopt = at::TensorOptions().device(model.device()).dtype(model.dtype());
    for (std::int64_t i = 0; i < cache.num_layers(); ++i)
      m.ring.push_back(
          at::zeros({m.batch, c.num_attention_heads, o.record_queries, c.head_dim}, qopt));
    m.ring_slot = at::zeros({1}, at::TensorOptions().device(model.device()).dtype(at::kLong));
    m.so.query_ring = &m.ring;
    m.so.ring_slot = m.ring_slot;
  }

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

std::vector<at::Tensor> DecodeGraph::recent_queries() const {
  const Impl& m = *impl_;
  std::vector<at::Tensor> out;
  if (m.ring.empty()) return out;
  const std::int64_t r = m.ring[0].size(2), run = m.length - m.start;
  const std::int64_t n = std::min(r, run);
  for (const at::Tensor& q : m.ring) {
    // Step s wrote index s mod R: the oldest of the last n sits at (run - n) mod R.
    const at::Tensor idx =
        (at::arange(n, at::TensorOptions().dtype(at::kLong)) + (run - n)).remainder(r).to(q.device());
    out.push_back(q.index_select(2, idx));
  }
  return out;
}

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
  if (m.ring_slot.defined()) m.ring_slot.fill_((m.length - m.start) % m.ring[0].size(2));
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

std::string StaticDecoder::unsupported_reason(const Model& model, const KVCache& cache,
                                              const CachePolicy* policy, bool need_cuda) {
  if (policy && policy->static_decode_steps(cache) < 1)
    return fmt::format("the KV-cache policy '{}' needs its hooks in every decode step",
                       policy->name());
  return DecodeGraph::unsupported_reason(model, cache, nullptr, need_cuda);
}

StaticDecoder::StaticDecoder(const Model& model, KVCache& cache, CachePolicy* policy,
                             std::int64_t max_steps, bool use_graph, std::int64_t segment)
    : model_(model), cache_(cache), policy_(policy), max_steps_(max_steps),
      segment_(segment), use_graph_(use_graph) {
  const std::string why = unsupported_reason(model, cache, policy, use_graph);
  KVLAB_THROW_IF(!why.empty(), UsageError, "cannot run decode steps statically: {}", why);
  KVLAB_THROW_IF(max_steps < 1 || segment < 1, UsageError,
                 "StaticDecoder: max_steps and segment must be >= 1 (got {}, {})", max_steps,
                 segment);
  // Reserve up to the policy's first action (all steps for full attention) now: growing a large
  // cache later would copy it and briefly need twice its memory.
  const std::int64_t first = policy ? policy->static_decode_steps(cache) : max_steps;
  cache.reserve(cache.layer(0).length() + std::min(first, max_steps));
}

StaticDecoder::~StaticDecoder() = default;

void StaticDecoder::start_segment() {
  graph_.reset();  // frees the previous graph's memory pool first
  std::int64_t n = std::min(segment_, max_steps_ - done_);
  DecodeGraphOptions go;
  go.use_graph = use_graph_;
  if (policy_) {
    until_action_ = policy_->static_decode_steps(cache_);
    KVLAB_THROW_IF(until_action_ < 1, UsageError,
                   "the KV-cache policy '{}' stopped supporting static decode steps",
                   policy_->name());
    // A segment never crosses an action: the recorded queries must all come from one graph.
    if (until_action_ <= max_steps_ - done_) n = until_action_;
    go.record_queries = policy_->static_decode_queries();
  }
  graph_ = std::make_unique<DecodeGraph>(model_, cache_, n, go);
  ++segments_;
}

at::Tensor StaticDecoder::step(const at::Tensor& tokens, const at::Tensor& positions) {
  KVLAB_THROW_IF(done_ >= max_steps_, UsageError, "StaticDecoder: all {} steps are used",
                 max_steps_);
  if (!graph_ || graph_->steps_left() == 0) start_segment();
  at::Tensor logits = graph_->step(tokens, positions);
  ++done_;
  if (policy_ && --until_action_ == 0) {
    // Timed apart (one device synchronisation per action): the benchmark reports both parts.
    auto sync = [&] {
      if (model_.device().is_cuda()) (void)at::zeros({1}, at::TensorOptions().device(model_.device())).cpu();
    };
    sync();
    const auto t0 = std::chrono::steady_clock::now();
    logits = logits.clone();  // the graph's output buffer goes with the graph
    const std::vector<at::Tensor> q = graph_->recent_queries();
    graph_.reset();
    policy_->after_static_decode(cache_, q);
    ++actions_;
    sync();
    const auto t1 = std::chrono::steady_clock::now();
    action_seconds_ += std::chrono::duration<double>(t1 - t0).count();
    // The next graph now, so that its capture counts with the action that made it necessary.
    if (done_ < max_steps_) start_segment();
    capture_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  }
  return logits;
}

}  // namespace kvlab::llm
