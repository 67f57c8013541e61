#include "kvlab/llm/generate.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <set>

#include "kvlab/core/error.hpp"
#include "kvlab/llm/decode_graph.hpp"

namespace kvlab::llm {

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}
}  // namespace

PaddedBatch left_pad(const std::vector<std::vector<std::int64_t>>& prompts, std::int64_t pad_id) {
  std::int64_t t = 0;
  for (const auto& p : prompts) t = std::max<std::int64_t>(t, static_cast<std::int64_t>(p.size()));
  const auto b = static_cast<std::int64_t>(prompts.size());
  PaddedBatch pb{at::full({b, t}, pad_id, at::kLong), at::full({b, t}, -1, at::kLong)};
  auto tok = pb.tokens.accessor<std::int64_t, 2>();
  auto pos = pb.positions.accessor<std::int64_t, 2>();
  for (std::int64_t i = 0; i < b; ++i) {
    const auto& p = prompts[static_cast<std::size_t>(i)];
    const auto n = static_cast<std::int64_t>(p.size());
    for (std::int64_t j = 0; j < n; ++j) {
      tok[i][t - n + j] = p[static_cast<std::size_t>(j)];
      pos[i][t - n + j] = j;
    }
  }
  return pb;
}

GenerateResult generate(const Model& model, const std::vector<std::vector<std::int64_t>>& prompts,
                        const GenerateOptions& opt, CachePolicy* policy, core::Progress& progress) {
  KVLAB_THROW_IF(prompts.empty(), UsageError, "no prompt given");
  for (std::size_t i = 0; i < prompts.size(); ++i)
    KVLAB_THROW_IF(prompts[i].empty(), UsageError, "prompt {} is empty", i);
  KVLAB_THROW_IF(opt.max_new_tokens < 0, UsageError, "--max-new-tokens must be >= 0");
  std::set<std::int64_t> stop(opt.stop_tokens.begin(), opt.stop_tokens.end());
  if (!opt.ignore_eos) stop.insert(model.config().eos_token_ids.begin(), model.config().eos_token_ids.end());

  const auto b = static_cast<std::int64_t>(prompts.size());
  Sampler sampler(opt.sampling, opt.seed);
  GenerateResult r;
  r.outputs.resize(static_cast<std::size_t>(b));
  PaddedBatch pb = left_pad(prompts, opt.pad_id);
  for (const auto& p : prompts) r.prompt_tokens += static_cast<std::int64_t>(p.size());

  KVCache cache = model.make_cache(b, opt.cache);
  cache.reserve(pb.tokens.size(1) + opt.max_new_tokens);
  ForwardOptions fo;
  fo.policy = policy;
  fo.logits = LogitsMode::last;

  auto t0 = Clock::now();
  at::Tensor logits = model.forward(pb.tokens, pb.positions, cache, fo).cpu();
  r.prefill_seconds = since(t0);
  r.kv_bytes_peak = cache.bytes();
  // Full attention, and policies that act only every so many steps (RPC), replay CUDA graphs.
  std::unique_ptr<StaticDecoder> graph;
  if (opt.cuda_graphs && opt.max_new_tokens > 1 &&
      StaticDecoder::unsupported_reason(model, cache, policy).empty())
    graph = std::make_unique<StaticDecoder>(model, cache, policy, opt.max_new_tokens - 1, true);
  r.cuda_graph = graph != nullptr;
  std::vector<bool> done(static_cast<std::size_t>(b), opt.max_new_tokens == 0);
  progress.begin("decoding", opt.max_new_tokens, "token");
  t0 = Clock::now();
  for (std::int64_t step = 0; step < opt.max_new_tokens; ++step) {
    const std::vector<std::int64_t> next = sampler.next(logits);
    bool all_done = true;
    for (std::int64_t i = 0; i < b; ++i) {
      auto& g = r.outputs[static_cast<std::size_t>(i)];
      if (done[static_cast<std::size_t>(i)]) continue;
      g.tokens.push_back(next[static_cast<std::size_t>(i)]);
      ++r.generated_tokens;
      if (stop.count(next[static_cast<std::size_t>(i)])) {
        g.stop_reason = "stop-token";
        done[static_cast<std::size_t>(i)] = true;
      } else if (static_cast<std::int64_t>(g.tokens.size()) >= opt.max_new_tokens) {
        g.stop_reason = "max-new-tokens";
        done[static_cast<std::size_t>(i)] = true;
      }
      all_done = all_done && done[static_cast<std::size_t>(i)];
    }
    progress.update(step + 1);
    if (all_done) break;
    at::Tensor tok = at::empty({b, 1}, at::kLong), pos = at::empty({b, 1}, at::kLong);
    for (std::int64_t i = 0; i < b; ++i) {
      tok[i][0] = done[static_cast<std::size_t>(i)] ? opt.pad_id : next[static_cast<std::size_t>(i)];
      pos[i][0] = cache.next_positions()[static_cast<std::size_t>(i)];
    }
    logits = (graph ? graph->step(tok, pos) : model.forward(tok, pos, cache, fo)).cpu();
    ++r.decode_steps;
    r.kv_bytes_peak = std::max(r.kv_bytes_peak, cache.bytes());
  }
  for (auto& g : r.outputs)
    if (g.stop_reason.empty()) g.stop_reason = "max-new-tokens";
  r.decode_seconds = since(t0);
  progress.end({{"tokens", static_cast<double>(r.generated_tokens)}});
  return r;
}

namespace {
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}
}  // namespace

BenchResult bench_decode(const Model& model, const BenchOptions& opt, core::Progress& progress) {
  KVLAB_THROW_IF(opt.batch < 1 || opt.context < 1 || opt.decode_tokens < 1 || opt.repeats < 1,
                 UsageError, "bench: batch, context, decode tokens and repeats must be >= 1");
  at::Generator gen = at::detail::createCPUGenerator(opt.seed);
  const std::int64_t v = model.config().vocab_size;
  at::Tensor prompt = at::randint(v, {opt.batch, opt.context}, gen, at::kLong);
  at::Tensor ppos = at::arange(opt.context, at::kLong).unsqueeze(0).expand({opt.batch, opt.context}).contiguous();
  BenchResult r;
  r.weight_bytes = model.weight_bytes();
  const bool cuda = model.device().is_cuda();
  auto sync = [&] {
    if (cuda) (void)at::zeros({1}, at::TensorOptions().device(model.device())).cpu();
  };
  ForwardOptions fo;
  fo.logits = LogitsMode::last;
  progress.begin("bench runs", opt.repeats + 1, "run");
  for (std::int64_t run = 0; run <= opt.repeats; ++run) {
    KVCache cache = model.make_cache(opt.batch);
    cache.reserve(opt.context + opt.decode_tokens);
    sync();
    auto t0 = Clock::now();
    at::Tensor logits = model.forward(prompt, ppos, cache, fo);
    at::Tensor next = logits.argmax(-1).cpu().view({opt.batch, 1});
    const double prefill = since(t0);
    std::unique_ptr<DecodeGraph> graph;
    if (opt.cuda_graphs && DecodeGraph::unsupported_reason(model, cache, nullptr).empty())
      graph = std::make_unique<DecodeGraph>(model, cache, opt.decode_tokens, true);
    r.cuda_graph = graph != nullptr;
    r.fused_decode = graph != nullptr && model.uses_fused_decode(cache);
    t0 = Clock::now();
    for (std::int64_t s = 0; s < opt.decode_tokens; ++s) {
      at::Tensor pos = at::full({opt.batch, 1}, opt.context + s, at::kLong);
      logits = graph ? graph->step(next, pos) : model.forward(next, pos, cache, fo);
      next = logits.argmax(-1).cpu().view({opt.batch, 1});  // synchronises, as any sampler must
    }
    const double decode = since(t0) / static_cast<double>(opt.decode_tokens);
    if (run > 0) {  // run 0 warms up kernels and the allocator
      r.prefill_runs.push_back(prefill);
      r.decode_runs.push_back(decode);
    }
    r.kv_bytes_allocated = cache.bytes();
    progress.update(run + 1);
  }
  progress.end();
  r.prefill_seconds = median(r.prefill_runs);
  r.decode_seconds_per_step = median(r.decode_runs);
  r.decode_tokens_per_second = static_cast<double>(opt.batch) / r.decode_seconds_per_step;
  const auto& c = model.config();
  const std::uint64_t elem = model.dtype() == at::kFloat ? 4 : 2;
  const std::uint64_t embed = c.tie_word_embeddings ? 0 : static_cast<std::uint64_t>(c.vocab_size * c.hidden_size) * elem;
  r.weight_bytes_read_per_step = r.weight_bytes - std::min(r.weight_bytes, embed);
  const double mean_ctx = static_cast<double>(opt.context) + 0.5 * static_cast<double>(opt.decode_tokens);
  r.kv_bytes_read_per_step = static_cast<std::uint64_t>(
      2.0 * static_cast<double>(model.num_layers() * opt.batch * c.num_key_value_heads * c.head_dim * elem) * mean_ctx);
  return r;
}

}  // namespace kvlab::llm
