// Benchmark of the decode-time and prefill-time KV-cache methods (issue 5, Deliver item 5), on a
// model of a real shape with random weights (Model::random), one process, side by side:
//  (a) RPC vs full KV: decode throughput at batch B generating N tokens after a short prompt (the
//      official benchmark/throughput.py setting: input 128 tokens, batch 8..32, output 4k..32k);
//  (b) FastKV vs full prefill: time to first token (prefill + first sampled token) at batch 1 for
//      each context, plus FastKV without TSP (per-layer compression only) to show TSP's share;
//  (c) the cost of each RPC compression step: per-step times (every step synchronises, as any
//      sampler must), compressing steps against the median plain step, as a fraction of the total
//      decode time.
// Writes one JSON object (stdout, and --output). Run through scripts/bench-kv; docs in
// docs/kv-methods-rpc-fastkv.md ("Benchmark").
#include <ATen/ATen.h>
#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string>
#include <vector>

#include "kvlab/compress/fastkv.hpp"
#include "kvlab/compress/rpc.hpp"
#include "kvlab/core/runtime.hpp"
#include "kvlab/llm/decode_graph.hpp"
#include "kvlab/llm/model.hpp"
#include "bench_shapes.hpp"

#ifdef KVLAB_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;
using namespace kvlab;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

llm::ModelConfig shape_config(const std::string& shape) {
  if (shape == "llama-3.1-8b") return bench::llama31_8b();
  llm::ModelConfig c;
  if (shape == "qwen2-7b") {
    c.arch = llm::Arch::qwen2;
    c.vocab_size = 152064;
    c.hidden_size = 3584;
    c.intermediate_size = 18944;
    c.num_hidden_layers = 28;
    c.num_attention_heads = 28;
    c.num_key_value_heads = 4;
    c.head_dim = 128;
    c.max_position_embeddings = 131072;
    c.rms_norm_eps = 1e-6;
    c.rope_theta = 1000000.0;
    c.attention_bias = true;
  } else {  // tiny: the CPU smoke test
    c.arch = llm::Arch::llama;
    c.vocab_size = 256;
    c.hidden_size = 64;
    c.intermediate_size = 128;
    c.num_hidden_layers = 4;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 16;
    c.max_position_embeddings = 1 << 20;
    c.rms_norm_eps = 1e-5;
  }
  c.torch_dtype = "bfloat16";
  return c;
}

struct Args {
  std::string device = "cuda", shape = "llama-3.1-8b", dtype = "bfloat16", output, parts = "all";
  std::int64_t batch = 16, prompt = 128, decode_tokens = 8192;
  std::vector<std::int64_t> contexts = {32768, 131072};
  std::int64_t prefill_repeats = 2;
  std::uint64_t seed = 0;
  compress::RpcOptions rpc;
  compress::FastKVOptions fastkv;
  std::int64_t tsp_layer = -2;  // -2: official 15, or the middle layer of a smaller model
  std::vector<std::string> fastkv_modes = {"proportional", "constant"};
  bool eager = false;  // (a) every decode step through Model::forward with the policy's hooks
};

struct Sync {
  bool cuda;
  at::Device dev;
  void operator()() const {
    if (cuda) (void)at::zeros({1}, at::TensorOptions().device(dev)).cpu();
  }
};

void reset_peak(const at::Device& dev) {
#ifdef KVLAB_WITH_CUDA
  if (dev.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(dev.index() < 0 ? 0 : dev.index());
#endif
}

bool is_oom(const std::exception& e) {
  const std::string m = e.what();
  return m.find("out of memory") != std::string::npos ||
         m.find("CUDA out of memory") != std::string::npos;
}

// (a) + (c): prefill `prompt` random tokens per row, then N greedy decode steps, each timed.
json decode_run(const llm::Model& m, llm::CachePolicy* policy, compress::RpcPolicy* rpc,
                const Args& a, const Sync& sync) {
  json r;
  try {
    reset_peak(m.device());
    at::Generator gen = at::detail::createCPUGenerator(a.seed);
    at::Tensor prompt = at::randint(m.config().vocab_size, {a.batch, a.prompt}, gen, at::kLong);
    at::Tensor ppos =
        at::arange(a.prompt, at::kLong).unsqueeze(0).expand({a.batch, a.prompt}).contiguous();
    llm::KVCache cache = m.make_cache(a.batch);
    llm::ForwardOptions fo;
    fo.policy = policy;
    fo.logits = llm::LogitsMode::last;
    sync();
    auto t0 = Clock::now();
    at::Tensor logits = m.forward(prompt, ppos, cache, fo);
    at::Tensor next = logits.argmax(-1).cpu().view({a.batch, 1});
    r["prefill_seconds"] = since(t0);
    std::vector<double> step, plain, comp;
    std::uint64_t peak_kv = cache.bytes();
    // Default: CUDA graphs between RPC's compressions (llm::StaticDecoder), the same for full.
    std::unique_ptr<llm::StaticDecoder> graphs;
    const auto td = Clock::now();
    if (!a.eager && llm::StaticDecoder::unsupported_reason(m, cache, policy).empty())
      graphs = std::make_unique<llm::StaticDecoder>(m, cache, policy, a.decode_tokens, true);
    r["cuda_graphs"] = graphs != nullptr;
    for (std::int64_t s = 0; s < a.decode_tokens; ++s) {
      const std::int64_t before = rpc ? rpc->compressions() : 0;
      const auto ts = Clock::now();
      at::Tensor pos = at::full({a.batch, 1}, a.prompt + s, at::kLong);
      logits = graphs ? graphs->step(next, pos) : m.forward(next, pos, cache, fo);
      next = logits.argmax(-1).cpu().view({a.batch, 1});  // synchronises, as any sampler must
      const double dt = since(ts);
      step.push_back(dt);
      ((rpc && rpc->compressions() > before) ? comp : plain).push_back(dt);
      peak_kv = std::max(peak_kv, cache.bytes());
    }
    const double total = since(td);
    r["decode_seconds"] = total;
    r["decode_tokens_per_second"] = static_cast<double>(a.batch * a.decode_tokens) / total;
    r["decode_ms_per_step_median"] = 1e3 * median(step);
    r["kv_bytes_final"] = cache.bytes();
    r["kv_bytes_peak"] = peak_kv;
    r["kv_entries_final"] = cache.entries();
    r["layer0_slots_final"] = cache.layer(0).length();
    if (graphs) {
      r["graph_segments"] = graphs->segments();
      r["policy_action_seconds"] = graphs->action_seconds();
      r["graph_capture_after_action_seconds"] = graphs->capture_seconds();
    }
    r["peak_device_bytes"] = core::peak_cuda_bytes();
    if (rpc) {
      // (c) each compression step against the median plain step.
      const double base = median(plain);
      double extra = 0;
      json steps = json::array();
      for (double c : comp) {
        extra += c - base;
        steps.push_back(1e3 * c);
      }
      r["compression_steps"] = comp.size();
      r["compression_step_ms"] = steps;
      r["plain_step_ms_median"] = 1e3 * base;
      r["compression_extra_ms_mean"] = comp.empty() ? 0.0 : 1e3 * extra / comp.size();
      r["compression_cost_fraction_of_decode"] = extra / total;
    }
  } catch (const std::exception& e) {
    r = json{{"error", is_oom(e) ? "OOM" : e.what()}};
  }
  return r;
}

// (b): time to first token at batch 1: prefill of `ctx` random tokens + the first greedy token.
json prefill_run(const llm::Model& m, const std::function<std::unique_ptr<llm::CachePolicy>()>& mk,
                 std::int64_t ctx, std::int64_t repeats, const Args& a, const Sync& sync) {
  json r;
  try {
    at::Generator gen = at::detail::createCPUGenerator(a.seed + 1);
    at::Tensor prompt = at::randint(m.config().vocab_size, {1, ctx}, gen, at::kLong);
    at::Tensor pos = at::arange(ctx, at::kLong).unsqueeze(0);
    std::vector<double> runs;
    std::uint64_t kv = 0;
    std::int64_t propagated = 0;
    for (std::int64_t i = 0; i < repeats; ++i) {
      std::unique_ptr<llm::CachePolicy> pol = mk();
      llm::KVCache cache = m.make_cache(1);
      llm::ForwardOptions fo;
      fo.policy = pol.get();
      fo.logits = llm::LogitsMode::last;
      sync();
      const auto t0 = Clock::now();
      at::Tensor logits = m.forward(prompt, pos, cache, fo);
      (void)logits.argmax(-1).cpu();
      runs.push_back(since(t0));
      kv = cache.bytes();
      if (auto* f = dynamic_cast<compress::FastKVPolicy*>(pol.get()))
        propagated = f->propagated_tokens();
    }
    r["ttft_seconds_median"] = median(runs);
    r["ttft_seconds_runs"] = runs;
    r["kv_bytes"] = kv;
    if (propagated) r["tsp_tokens"] = propagated;
  } catch (const std::exception& e) {
    r = json{{"error", is_oom(e) ? "OOM" : e.what()}};
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  CLI::App app{"kvlab KV-cache method benchmark: RPC decode throughput, FastKV time to first "
               "token, compression-step cost (JSON)"};
  app.add_option("--device", a.device, "cpu | cuda | cuda:N")->capture_default_str();
  app.add_option("--shape", a.shape, "model shape (random weights)")
      ->check(CLI::IsMember({"llama-3.1-8b", "qwen2-7b", "tiny"}))
      ->capture_default_str();
  app.add_option("--dtype", a.dtype, "compute dtype")
      ->check(CLI::IsMember({"bfloat16", "float16", "float32"}))
      ->capture_default_str();
  app.add_option("--parts", a.parts, "which parts: all | decode | prefill")
      ->check(CLI::IsMember({"all", "decode", "prefill"}))
      ->capture_default_str();
  app.add_option("--batch", a.batch, "(a) decode batch")->check(CLI::Range(1, 1024))->capture_default_str();
  app.add_option("--prompt", a.prompt, "(a) prompt tokens per row")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--decode-tokens", a.decode_tokens, "(a) tokens generated per row")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--contexts", a.contexts, "(b) prefill contexts (tokens)")
      ->delimiter(',')
      ->check(CLI::Range(16, 1 << 20))
      ->capture_default_str();
  app.add_option("--prefill-repeats", a.prefill_repeats, "(b) timed runs per context (median)")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  app.add_option("--rpc-interval", a.rpc.interval, "RPC P")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  app.add_option("--rpc-window", a.rpc.window, "RPC R")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  app.add_option("--rpc-ratio", a.rpc.ratio, "RPC c")->check(CLI::Range(1.0, 1e6))->capture_default_str();
  app.add_option("--fastkv-tsp-layer", a.tsp_layer,
                 "FastKV TSP layer (default: the official 15, or the middle of a smaller model)")
      ->check(CLI::Range(-1, 1000));
  app.add_option("--fastkv-modes", a.fastkv_modes, "(b) FastKV budget modes to run")
      ->delimiter(',')
      ->check(CLI::IsMember({"proportional", "constant"}))
      ->capture_default_str();
  app.add_flag("--eager", a.eager,
               "(a) run every decode step through Model::forward with the policy's hooks (no CUDA "
               "graphs; the ablation)");
  app.add_option("--seed", a.seed, "weights and prompts")->capture_default_str();
  app.add_option("-o,--output", a.output, "also write the JSON here");
  CLI11_PARSE(app, argc, argv);

  try {
    const core::DeviceSpec ds = core::parse_device(a.device);
    core::check_device(ds);
    const llm::ModelConfig cfg = shape_config(a.shape);
    if (a.tsp_layer == -2)
      a.fastkv.tsp_layer = std::min<std::int64_t>(15, cfg.num_hidden_layers / 2 - 1);
    else
      a.fastkv.tsp_layer = a.tsp_layer;
    const auto t_load = Clock::now();
    llm::Model m = llm::Model::random(cfg, {ds.str(), a.dtype}, a.seed);
    const Sync sync{ds.cuda, m.device()};
    sync();
    json out;
    out["shape"] = a.shape;
    out["dtype"] = a.dtype;
    out["device"] = ds.str();
    out["build"] = {{"torch", core::build_info().torch_version},
                    {"cuda", core::build_info().cuda_version},
                    {"git", core::build_info().git_sha}};
    out["model_init_seconds"] = since(t_load);
    out["weight_bytes"] = m.weight_bytes();

    // Warm-up: kernels, cuBLAS handles and the caching allocator, with every method once.
    {
      Args w = a;
      w.batch = std::min<std::int64_t>(a.batch, 2);
      w.decode_tokens = std::min<std::int64_t>(a.decode_tokens, 8);
      (void)decode_run(m, nullptr, nullptr, w, sync);
      compress::FastKVPolicy f(a.fastkv, 0);
      llm::KVCache c = m.make_cache(1);
      llm::ForwardOptions fo;
      fo.policy = &f;
      fo.logits = llm::LogitsMode::last;
      const std::int64_t n = 512;
      (void)m.forward(at::randint(cfg.vocab_size, {1, n}, at::kLong),
                      at::arange(n, at::kLong).unsqueeze(0), c, fo);
      sync();
    }

    if (a.parts != "prefill") {
      // (a), (c): RPC first so that its peak device memory is not the full run's.
      compress::RpcPolicy rpc(a.rpc, 0);
      json d;
      d["batch"] = a.batch;
      d["prompt_tokens"] = a.prompt;
      d["decode_tokens"] = a.decode_tokens;
      d["rpc_options"] = {{"P", a.rpc.interval}, {"R", a.rpc.window}, {"c", a.rpc.ratio},
                          {"aggregation", a.rpc.aggregation}};
      d["rpc"] = decode_run(m, &rpc, &rpc, a, sync);
      std::cerr << "rpc decode: " << d["rpc"].dump() << "\n";
      d["full"] = decode_run(m, nullptr, nullptr, a, sync);
      std::cerr << "full decode: " << d["full"].dump() << "\n";
      if (!d["rpc"].contains("error") && !d["full"].contains("error"))
        d["speedup_tokens_per_second"] = d["rpc"]["decode_tokens_per_second"].get<double>() /
                                         d["full"]["decode_tokens_per_second"].get<double>();
      out["decode"] = d;
    }
    if (a.parts != "decode") {
      json p = json::array();
      for (std::int64_t ctx : a.contexts) {
        json row;
        row["context"] = ctx;
        row["full"] = prefill_run(m, [] { return std::make_unique<llm::FullAttention>(); }, ctx,
                                 a.prefill_repeats, a, sync);
        // Each budget mode of the official code: "proportional" (the shipped scripts: TSP rate
        // 0.2, retain 0.1) and "constant" (run_longbench.py's argparse default: TSP length 2048,
        // 512 KV entries per layer).
        for (const std::string& mode : a.fastkv_modes) {
          compress::FastKVOptions fo = a.fastkv;
          fo.mode = mode;
          json f;
          f["options"] = {{"tsp_layer", fo.tsp_layer}, {"mode", fo.mode},
                          {"retain_rate", fo.retain_rate}, {"tsp_rate", fo.tsp_rate},
                          {"max_capacity", fo.max_capacity}, {"tsp_length", fo.tsp_length},
                          {"window", fo.window}, {"pooling", fo.pooling}};
          f["run"] = prefill_run(
              m, [&] { return std::make_unique<compress::FastKVPolicy>(fo, 0); }, ctx,
              a.prefill_repeats, a, sync);
          // Per-layer compression without TSP, one run: how much of the saving TSP brings.
          compress::FastKVOptions no_tsp = fo;
          no_tsp.tsp_layer = -1;
          f["no_tsp"] = prefill_run(
              m, [&] { return std::make_unique<compress::FastKVPolicy>(no_tsp, 0); }, ctx, 1, a,
              sync);
          if (!row["full"].contains("error") && !f["run"].contains("error"))
            f["ttft_speedup"] = row["full"]["ttft_seconds_median"].get<double>() /
                                f["run"]["ttft_seconds_median"].get<double>();
          row["fastkv_" + mode] = f;
        }
        std::cerr << "prefill " << ctx << ": " << row.dump() << "\n";
        p.push_back(row);
      }
      out["prefill"] = p;
    }
    out["peak_rss_bytes"] = core::peak_rss_bytes();
    const std::string s = out.dump(1);
    std::cout << s << "\n";
    if (!a.output.empty()) {
      std::ofstream f(a.output);
      f << s << "\n";
      if (!f) {
        std::cerr << "bench_kv: cannot write " << a.output << "\n";
        return 1;
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "bench_kv: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
