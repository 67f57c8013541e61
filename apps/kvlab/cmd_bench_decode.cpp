// kvlab bench-decode: prefill time and decode tokens/s of a model with random weights built on the
// device from a transformers config.json (libllm bench_decode), as a fraction of the HBM roofline
// when --hbm-gbps is given. scripts/bench-decode runs it beside transformers.
#include <fmt/format.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/llm/generate.hpp"

namespace kvlab::cli {

void register_bench_decode(CLI::App& app, GlobalOptions& global) {
  struct Args {
    std::string config, dtype = "bfloat16";
    double hbm_gbps = 0;
    bool no_graphs = false;
    bool no_fused = false;
    llm::BenchOptions bench;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "bench-decode", "Time prefill and decode of a random-weight model of a given config.json shape");
  cmd->add_option("--config", args->config, "transformers config.json giving the model shape")
      ->required()->check(CLI::ExistingFile);
  cmd->add_option("--dtype", args->dtype, "weight and compute dtype")
      ->check(CLI::IsMember({"float32", "bfloat16", "float16"}));
  cmd->add_option("--batch", args->bench.batch, "sequences decoded together")->check(CLI::Range(1, 4096));
  cmd->add_option("--context", args->bench.context, "prompt tokens per sequence")->check(CLI::Range(1, 1 << 22));
  cmd->add_option("--decode-tokens", args->bench.decode_tokens, "timed decode steps")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--repeats", args->bench.repeats, "timed runs after a warm-up (median reported)")
      ->check(CLI::Range(1, 100));
  cmd->add_option("--hbm-gbps", args->hbm_gbps,
                  "device memory bandwidth in GB/s for the roofline (H100 SXM 3350, H200 4800; 0: none)")
      ->check(CLI::Range(0.0, 1e6));
  cmd->add_flag("--no-cuda-graphs", args->no_graphs,
                "launch every decode kernel from the host instead of replaying a CUDA graph");
  cmd->add_flag("--no-fused-decode", args->no_fused,
                "batch 1: run the decode step through ATen/cuBLAS instead of kvlab's fused GEMV "
                "kernels (the ablation)");
  cmd->callback([args, &global] {
    global.action = [args, &global] {
      std::ifstream f(args->config);
      nlohmann::json j = nlohmann::json::parse(f, nullptr, /*allow_exceptions=*/false);
      KVLAB_THROW_IF(j.is_discarded(), FormatError, "{}: not valid JSON", args->config);
      const auto cfg = llm::ModelConfig::from_hf_json(j, args->config);
      llm::Model model = llm::Model::random(cfg, {global.dev.str(), args->dtype}, global.seed);
      model.set_fused_decode(!args->no_fused);
      args->bench.seed = global.seed;
      args->bench.cuda_graphs = !args->no_graphs;
      const llm::BenchResult r = llm::bench_decode(model, args->bench, *global.make_progress());
      const double bytes = static_cast<double>(r.weight_bytes_read_per_step + r.kv_bytes_read_per_step);
      const double roof = args->hbm_gbps > 0 ? bytes / (args->hbm_gbps * 1e9) / r.decode_seconds_per_step : 0.0;
      nlohmann::json out = {{"device", global.dev.str()}, {"dtype", args->dtype}, {"batch", args->bench.batch},
                            {"context", args->bench.context}, {"decode_tokens", args->bench.decode_tokens},
                            {"prefill_seconds", r.prefill_seconds}, {"decode_ms_per_step", 1e3 * r.decode_seconds_per_step},
                            {"decode_tokens_per_second", r.decode_tokens_per_second}, {"weight_bytes", r.weight_bytes},
                            {"weight_bytes_read_per_step", r.weight_bytes_read_per_step}, {"fused_decode", r.fused_decode},
                            {"kv_bytes_read_per_step", r.kv_bytes_read_per_step}, {"roofline_fraction", roof}, {"cuda_graph", r.cuda_graph},
                            {"prefill_runs", r.prefill_runs}, {"decode_runs", r.decode_runs}};
      if (global.json) fmt::print("{}\n", out.dump());
      else fmt::print("batch {} context {}: prefill {:.3f} s, decode {:.2f} ms/step = {:.1f} tokens/s{}{}\n",
                      args->bench.batch, args->bench.context, r.prefill_seconds, 1e3 * r.decode_seconds_per_step,
                      r.decode_tokens_per_second, roof > 0 ? fmt::format(", {:.0f}% of HBM roofline", 100 * roof) : "",
                      r.cuda_graph ? (r.fused_decode ? " (CUDA graph, fused kernels)" : " (CUDA graph)") : "");
    };
  });
}

}  // namespace kvlab::cli
