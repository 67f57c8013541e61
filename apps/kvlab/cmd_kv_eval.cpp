// kvlab kv-eval: the method x budget x task grid of KV-cache compression on one model, loaded once
// (libcompress run_kv_eval); prints one row per cell (JSON with --json) and writes a kv-report
// artifact with -o. docs/kv-eval.md.
#include <fmt/format.h>

#include "commands.hpp"
#include "kvlab/compress/kv_eval.hpp"

namespace kvlab::cli {

void register_kv_eval(CLI::App& app, GlobalOptions& global) {
  struct Args {
    std::string model, data, jsonl, output, dtype = "auto", scoring = "exact";
    bool force = false;
    llm::TokenFileOptions file;
    compress::KvEvalOptions eval;
  };
  auto args = std::make_shared<Args>();
  auto& e = args->eval;
  auto& b = e.method.baseline;
  auto& t = e.task;
  CLI::App* cmd = app.add_subcommand(
      "kv-eval", "Compare KV-cache compression methods x budgets x tasks on one model (docs/kv-eval.md)");
  cmd->add_option("model", args->model, "model artifact (.h5)")->required()->check(CLI::ExistingFile);
  cmd->add_option("--method", e.methods, "methods, comma-separated: full, streaming, h2o, tova, snapkv, pyramidkv, knorm, rpc, fastkv, quest, retro")
      ->delimiter(',')->capture_default_str();
  cmd->add_option("--budget", e.budgets, "KV budgets, comma-separated: a ratio of the context in (0, 1] (0.25 or 25%) or a token count (512)")
      ->delimiter(',')->capture_default_str();
  cmd->add_option("--task", e.tasks, "tasks, comma-separated: ppl, retrieval, long-gen, jsonl, speed")
      ->delimiter(',')->check(CLI::IsMember({"ppl", "retrieval", "long-gen", "jsonl", "speed"}))->capture_default_str();
  cmd->add_option("--data", args->data, "haystack / perplexity text or token file (e.g. data/kjv-byte-llama/heldout.txt)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--data-format", args->file.format, "how to read --data (auto: by extension)")
      ->transform(CLI::CheckedTransformer(llm::token_file_format_names(), CLI::ignore_case));
  cmd->add_option("--jsonl", args->jsonl, "prompts for the jsonl task: {\"prompt\" | \"prompt_ids\", \"answer\" | \"answer_ids\"} per line")
      ->check(CLI::ExistingFile);
  cmd->add_option("--dtype", args->dtype, "compute dtype (auto: as stored)")
      ->check(CLI::IsMember({"auto", "float32", "bfloat16", "float16"}));
  cmd->add_option("--batch-size", t.batch_size, "sequences per batch")->check(CLI::Range(1, 4096))->capture_default_str();
  // tasks
  cmd->add_option("--retrieval-context", t.retrieval.context_lengths, "retrieval prompt lengths in tokens, comma-separated")
      ->delimiter(',')->check(CLI::Range(16, 1 << 24))->capture_default_str();
  cmd->add_option("--retrieval-depth", t.retrieval.depths, "needle depths in [0, 1], comma-separated")
      ->delimiter(',')->check(CLI::Range(0.0, 1.0))->capture_default_str();
  cmd->add_option("--retrieval-samples", t.retrieval.samples, "samples per (context, depth)")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  cmd->add_option("--retrieval-prompts", t.retrieval.prompts_path, "retrieval: write the prompts, answers and outputs (JSONL, one line per sample) to FILE");
  cmd->add_option("--ppl-prompt", t.ppl.prompt_tokens, "ppl: prefilled (compressed) tokens")->check(CLI::Range(1, 1 << 24))->capture_default_str();
  cmd->add_option("--ppl-continuation", t.ppl.continuation_tokens, "ppl: tokens scored one by one")->check(CLI::Range(1, 1 << 24))->capture_default_str();
  cmd->add_option("--ppl-samples", t.ppl.samples, "ppl: windows")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  cmd->add_option("--long-gen-lead", t.long_gen.lead_tokens, "long-gen: text tokens before the key")->check(CLI::Range(0, 1 << 20))->capture_default_str();
  cmd->add_option("--long-gen-tokens", t.long_gen.generate_tokens, "long-gen: tokens generated between the key and the question")
      ->check(CLI::Range(8, 1 << 24))->capture_default_str();
  cmd->add_option("--long-gen-samples", t.long_gen.samples, "long-gen: samples")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  cmd->add_option("--jsonl-scoring", args->scoring, "jsonl: exact (trimmed output == answer) or contains")
      ->check(CLI::IsMember({"exact", "contains"}))->capture_default_str();
  cmd->add_option("--jsonl-max-new-tokens", t.jsonl.max_new_tokens, "jsonl: tokens generated per answer")->check(CLI::Range(1, 1 << 24))->capture_default_str();
  cmd->add_option("--jsonl-samples", t.jsonl.samples, "jsonl: generations per prompt (pass@1 averaged)")->check(CLI::Range(1, 1 << 16))->capture_default_str();
  cmd->add_option("--jsonl-temperature", t.jsonl.temperature, "jsonl: sampling temperature (0: greedy)")->check(CLI::Range(0.0, 100.0))->capture_default_str();
  cmd->add_option("--jsonl-top-p", t.jsonl.top_p, "jsonl: nucleus sampling mass")->check(CLI::Range(0.0, 1.0))->capture_default_str();
  cmd->add_option("--jsonl-top-k", t.jsonl.top_k, "jsonl: top-k sampling (0: off)")->check(CLI::Range(0, 1 << 24))->capture_default_str();
  cmd->add_flag("--jsonl-stop-at-newline", t.jsonl.stop_at_newline, "jsonl: cut each answer at its first newline");
  cmd->add_option("--jsonl-max-prompts", t.jsonl.max_prompts, "jsonl: only the first N prompts (0: all)")->check(CLI::Range(0, 1 << 30))->capture_default_str();
  cmd->add_option("--speed-context", t.speed.context, "speed: prompt tokens")->check(CLI::Range(1, 1 << 24))->capture_default_str();
  cmd->add_option("--speed-decode", t.speed.decode_tokens, "speed: timed decode steps")->check(CLI::Range(1, 1 << 24))->capture_default_str();
  cmd->add_option("--speed-batch", t.speed.batch, "speed: batch size")->check(CLI::Range(1, 4096))->capture_default_str();
  // methods (defaults: kvpress / the official code)
  cmd->add_option("--streaming-sinks", b.streaming_sinks, "streaming: attention-sink tokens")->check(CLI::Range(0, 1 << 20))->capture_default_str();
  cmd->add_option("--snapkv-window", b.snapkv_window, "snapkv: observation window")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  cmd->add_option("--snapkv-kernel", b.snapkv_kernel, "snapkv: avg-pool kernel (odd)")->check(CLI::Range(1, 1023))->capture_default_str();
  cmd->add_option("--pyramidkv-window", b.pyramidkv_window, "pyramidkv: observation window")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  cmd->add_option("--pyramidkv-kernel", b.pyramidkv_kernel, "pyramidkv: avg-pool kernel (odd)")->check(CLI::Range(1, 1023))->capture_default_str();
  cmd->add_option("--pyramidkv-beta", b.pyramidkv_beta, "pyramidkv: pyramid steepness")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  cmd->add_option("--h2o-heavy-ratio", b.h2o_heavy_ratio, "h2o: share of the budget for heavy hitters (rest: recent)")->check(CLI::Range(0.0, 1.0))->capture_default_str();
  auto& rp = e.method.rpc;
  cmd->add_option("--rpc-interval", rp.interval, "rpc: P, generated tokens between compressions")->check(CLI::Range(1, 1 << 24))->capture_default_str();
  cmd->add_option("--rpc-window", rp.window, "rpc: R, selector queries / uncompressed recent tokens")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  cmd->add_option("--rpc-ratio", rp.ratio, "rpc: c, compression ratio of the generated part (T = P / c)")->check(CLI::Range(1.0, 1e6))->capture_default_str();
  cmd->add_option("--rpc-selectors", rp.selectors, "rpc: selector queries")->check(CLI::IsMember({"recent"}))->capture_default_str();
  cmd->add_option("--rpc-aggregation", rp.aggregation, "rpc: head aggregation: all (one set per layer) or group (per KV head)")
      ->check(CLI::IsMember({"all", "group"}))->capture_default_str();
  cmd->add_option("--rpc-pooling", rp.pooling, "rpc: score pooling")->check(CLI::IsMember({"avgpool", "maxpool"}))->capture_default_str();
  cmd->add_option("--rpc-kernel-size", rp.kernel_size, "rpc: pooling kernel (odd)")->check(CLI::Range(1, 1023))->capture_default_str();
  cmd->add_flag("--rpc-duplicate-query", rp.duplicate_current_query, "rpc: reproduce the official duplicated-current-query quirk");
  auto& fk = e.method.fastkv;
  cmd->add_option("--fastkv-tsp-layer", fk.tsp_layer, "fastkv: token-selective-propagation layer (-1: off)")->check(CLI::Range(-1, 4096))->capture_default_str();
  cmd->add_option("--fastkv-mode", fk.mode, "fastkv: proportional or constant budgets")->check(CLI::IsMember({"proportional", "constant"}))->capture_default_str();
  cmd->add_option("--fastkv-retain-rate", fk.retain_rate, "fastkv: KV retain rate (proportional mode, no --budget)")->check(CLI::Range(0.0, 1.0))->capture_default_str();
  cmd->add_option("--fastkv-max-capacity", fk.max_capacity, "fastkv: KV entries per layer (constant mode)")->check(CLI::Range(1, 1 << 24))->capture_default_str();
  cmd->add_option("--fastkv-tsp-rate", fk.tsp_rate, "fastkv: propagated-token rate (proportional mode)")->check(CLI::Range(0.0, 1.0))->capture_default_str();
  cmd->add_option("--fastkv-tsp-length", fk.tsp_length, "fastkv: propagated tokens (constant mode)")->check(CLI::Range(1, 1 << 24))->capture_default_str();
  cmd->add_option("--fastkv-window", fk.window, "fastkv: observation window")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  cmd->add_option("--fastkv-kernel-size", fk.kernel_size, "fastkv: pooling kernel (odd)")->check(CLI::Range(1, 1023))->capture_default_str();
  cmd->add_option("--fastkv-pooling", fk.pooling, "fastkv: score pooling")->check(CLI::IsMember({"maxpool", "avgpool"}))->capture_default_str();
  auto& qo = e.method.quest;
  cmd->add_option("--quest-page-size", qo.page_size, "quest/retro: tokens per page")->check(CLI::Range(1, 1 << 16))->capture_default_str();
  cmd->add_option("--quest-dense-layers", qo.dense_layers, "quest/retro: first layers attending densely")->check(CLI::Range(0, 4096))->capture_default_str();
  cmd->add_option("--quest-min-pages", qo.min_pages, "quest/retro: fewest pages per step")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  cmd->add_option("--quest-gqa", qo.gqa, "quest/retro: page selection per query head or per KV head (max)")
      ->transform(CLI::CheckedTransformer(std::map<std::string, compress::QuestGqa>{{"per-head", compress::QuestGqa::per_head}, {"kv-head-max", compress::QuestGqa::kv_head_max}}));
  auto& ro = e.method.retro;
  cmd->add_option("--retro-window", ro.window, "retro: retrospective window w (1 = quest)")->check(CLI::Range(1, 64))->capture_default_str();
  cmd->add_option("--retro-merge-weight", ro.merge_weight, "retro: weight of the supplementary softmax mass (1 = exact union)")->check(CLI::Range(1e-6, 1e6))->capture_default_str();
  cmd->add_option("--retro-past-query", ro.past_query, "retro: past query for supplementary attention")
      ->transform(CLI::CheckedTransformer(std::map<std::string, compress::RetroPastQuery>{{"updated", compress::RetroPastQuery::updated}, {"original", compress::RetroPastQuery::original}}));
  cmd->add_option("--retro-update-kv", ro.update_kv, "retro: re-embed past K/V from corrected outputs (true/false)")->capture_default_str();
  add_output_option(cmd, args->output, args->force, "kv-report artifact to write (.h5; optional)");
  cmd->callback([args, &global] {
    global.action = [args, &global] {
      auto& a = *args;
      a.eval.task.jsonl.scoring = a.scoring == "contains" ? compress::JsonlScoring::contains : compress::JsonlScoring::exact;
      a.eval.task.seed = global.seed;
      compress::check_kv_eval_options(a.eval);  // bad methods/budgets fail before the model loads
      if (!a.output.empty()) core::check_output_path(a.output, {a.model, a.data, a.jsonl}, a.force);
      core::ArtifactHeader mh;
      const llm::Model model = llm::load_model(a.model, {global.dev.str(), a.dtype}, &mh);
      const auto in = compress::load_kv_task_inputs(model, a.model, a.data, a.file, a.jsonl);
      const auto r = compress::run_kv_eval(model, in, a.eval, *global.make_progress());
      if (!a.output.empty()) {
        std::vector<core::InputRef> inputs = {mh.as_input()};
        if (!a.data.empty()) inputs.push_back({a.data, "file", "", 0});
        if (!a.jsonl.empty()) inputs.push_back({a.jsonl, "file", "", 0});
        compress::write_kv_report(a.output, r, a.eval, {a.model, a.data, a.jsonl, llm::dtype_name(model.dtype()), global.dev.str()},
                                  global.provenance(inputs));
      }
      fmt::print("{}", global.json ? compress::kv_eval_json(r) + "\n" : compress::format_kv_table(r));
    };
  });
}

}  // namespace kvlab::cli
