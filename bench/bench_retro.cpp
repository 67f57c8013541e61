// Benchmark: time per decode step of full attention, quest and retro (w = 2, 4, 8) on one model,
// after a prefill of --context tokens, with the same teacher-forced tokens for every method. The
// overhead of retro over quest is what RetroAttention's paper reports (< 1 ms/token at w = 2 on a
// GPU). docs/kv-methods-quest-retro.md has the numbers and how to run it.
//
//   bench_retro MODEL.h5|HF_DIR [--device cpu|cuda] [--dtype float32|bfloat16] [--context 1024]
//               [--steps 64] [--budget 0.15] [--page 16] [--windows 2,4,8] [--threads N]
//   bench_retro --llama8b --device cuda --dtype bfloat16 ...   (random Llama-3.1-8B-shaped weights)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "kvlab/compress/quest.hpp"
#include "kvlab/compress/retro.hpp"
#include "kvlab/core/progress.hpp"
#include "kvlab/llm/import_export.hpp"
#include "kvlab/llm/model.hpp"
#include "bench_shapes.hpp"

using namespace kvlab;

namespace {

struct Result {
  double ms_per_step = 0;
  double read_fraction = 0, exposure_ratio = 0;
};

Result run(const llm::Model& m, llm::CachePolicy* policy, const llm::KVCacheOptions& co,
           const at::Tensor& ids, std::int64_t context, std::int64_t steps) {
  llm::KVCache cache = m.make_cache(1, co);
  cache.reserve(context + steps);
  llm::ForwardOptions fo;
  fo.policy = policy;
  fo.logits = llm::LogitsMode::last;
  auto pos = [](std::int64_t a, std::int64_t n) { return at::arange(a, a + n, at::kLong).unsqueeze(0); };
  at::Tensor lg = m.forward(ids.narrow(1, 0, context), pos(0, context), cache, fo);
  (void)lg.sum().item<float>();  // synchronise (a GPU too)
  // 2 warm-up steps, then the timed ones.
  const std::int64_t warm = 2;
  double ms = 0;
  for (std::int64_t i = 0; i < steps + warm; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    lg = m.forward(ids.narrow(1, context + i, 1), pos(context + i, 1), cache, fo);
    (void)lg.sum().item<float>();
    if (i >= warm)
      ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  }
  Result r;
  r.ms_per_step = ms / static_cast<double>(steps);
  if (auto* q = dynamic_cast<compress::QuestPolicy*>(policy)) {
    r.read_fraction = q->stats().read_fraction();
    r.exposure_ratio = q->stats().exposure_ratio();
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path, device = "cpu", dtype = "float32", windows = "2,4,8";
  std::int64_t context = 1024, steps = 64, page = 16;
  double budget = 0.15;
  int threads = 0;
  bool l8b = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        fmt::print(stderr, "bench_retro: {} needs a value\n", a);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--device") device = next();
    else if (a == "--dtype") dtype = next();
    else if (a == "--context") context = std::stoll(next());
    else if (a == "--steps") steps = std::stoll(next());
    else if (a == "--budget") budget = std::stod(next());
    else if (a == "--page") page = std::stoll(next());
    else if (a == "--windows") windows = next();
    else if (a == "--threads") threads = std::stoi(next());
    else if (a == "--llama8b") l8b = true;
    else if (!a.empty() && a[0] != '-') model_path = a;
    else {
      fmt::print(stderr, "bench_retro: unknown option {}\n", a);
      return 2;
    }
  }
  if (model_path.empty() && !l8b) {
    fmt::print(stderr, "usage: bench_retro MODEL.h5 | --llama8b [--device cuda] [--dtype bfloat16] "
                       "[--context N] [--steps N] [--budget R|N] [--page N] [--windows 2,4,8]\n");
    return 2;
  }
  if (threads > 0) at::set_num_threads(threads);
  try {
    const llm::ModelOptions mo{device, dtype};
    if (!l8b && std::filesystem::is_directory(model_path)) {  // an HF directory: import it first
      const auto tmp = std::filesystem::temp_directory_path() / "bench_retro_model.h5";
      core::NullProgress np;
      llm::import_hf(model_path, tmp, {}, core::Provenance{}, np);
      model_path = tmp.string();
    }
    const llm::Model m = l8b ? llm::Model::random(bench::llama31_8b(), mo, 0) : llm::load_model(model_path, mo);
    at::manual_seed(0);
    const std::int64_t vocab = std::min<std::int64_t>(m.config().vocab_size, 256);
    const at::Tensor ids = at::randint(0, vocab, {1, context + steps + 2}, at::kLong);
    // A budget <= 1 is a ratio of the context (at least 256 tokens, RetroAttention's rule);
    // otherwise tokens.
    const std::int64_t budget_tokens =
        budget <= 1.0 ? std::max<std::int64_t>(256, static_cast<std::int64_t>(budget * context))
                      : static_cast<std::int64_t>(budget);
    fmt::print("model {} ({} layers, {} heads / {} KV heads, head_dim {}), device {}, dtype {}, "
               "threads {}\ncontext {}, {} timed decode steps, budget {} tokens, page {}\n",
               l8b ? "random Llama-3.1-8B-shaped" : model_path, m.num_layers(),
               m.config().num_attention_heads, m.config().num_key_value_heads, m.config().head_dim,
               device, llm::dtype_name(m.dtype()), at::get_num_threads(), context, steps,
               budget_tokens, page);
    fmt::print("{:<10} {:>12} {:>14} {:>12} {:>10}\n", "method", "ms/step", "vs quest ms", "read frac",
               "exposure");
    const Result full = run(m, nullptr, {}, ids, context, steps);
    fmt::print("{:<10} {:>12.3f} {:>14} {:>12} {:>10}\n", "full", full.ms_per_step, "", "1", "");
    compress::QuestOptions qo;
    qo.page_size = page;
    compress::QuestPolicy quest(qo, budget_tokens);
    const Result rq = run(m, &quest, quest.cache_options(), ids, context, steps);
    fmt::print("{:<10} {:>12.3f} {:>14} {:>12.3f} {:>10.3f}\n", "quest", rq.ms_per_step, "",
               rq.read_fraction, rq.exposure_ratio);
    std::stringstream ws(windows);
    std::string w;
    while (std::getline(ws, w, ',')) {
      compress::RetroOptions ro;
      ro.quest = qo;
      ro.window = std::stoll(w);
      compress::RetroPolicy retro(ro, budget_tokens);
      const Result rr = run(m, &retro, retro.cache_options(), ids, context, steps);
      fmt::print("{:<10} {:>12.3f} {:>+14.3f} {:>12.3f} {:>10.3f}\n", "retro w=" + w,
                 rr.ms_per_step, rr.ms_per_step - rq.ms_per_step, rr.read_fraction,
                 rr.exposure_ratio);
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench_retro: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
