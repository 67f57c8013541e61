// kvlab generate: greedy or sampled continuation of a batch of prompts (libllm generate). Text in
// and out for every model with a tokenizer (the model artifact's /tokenizer, or bytes for
// byte-level models), token ids otherwise. Prints results; writes no artifact.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/llm/data.hpp"
#include "kvlab/llm/generate.hpp"
#include "kvlab/llm/tokenizer.hpp"

namespace kvlab::cli {

void register_generate(CLI::App& app, GlobalOptions& global) {
  struct Args {
    std::string model, dtype = "auto";
    std::vector<std::string> prompts, prompt_ids;
    bool output_ids = false;
    llm::GenerateOptions gen;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "generate",
      "Continue prompts with a model: greedy or sampled (temperature, top-k, top-p, --seed).\n"
      "Models with a tokenizer (imported with tokenizer.json / tokenizer.model / a GGUF vocabulary,\n"
      "and byte-level models) take and print UTF-8 text; the prompt is encoded with the model's\n"
      "BOS convention. Models without one take and print token ids (--prompt-ids).");
  cmd->add_option("model", args->model, "model artifact (.h5)")->required()->check(CLI::ExistingFile);
  cmd->add_option("-p,--prompt", args->prompts, "prompt text (models with a tokenizer; repeat for a batch)");
  cmd->add_option("--prompt-ids", args->prompt_ids,
                  "prompt as comma-separated token ids, e.g. 1,450,2 (repeat for a batch)");
  cmd->add_option("-n,--max-new-tokens", args->gen.max_new_tokens, "tokens to generate per prompt")
      ->check(CLI::Range(0, 1 << 20));
  cmd->add_option("--temperature", args->gen.sampling.temperature, "sampling temperature (0: greedy)")
      ->check(CLI::Range(0.0, 100.0));
  cmd->add_option("--top-k", args->gen.sampling.top_k, "sample among the k most likely tokens (0: off)")
      ->check(CLI::Range(0, 1 << 24));
  cmd->add_option("--top-p", args->gen.sampling.top_p, "nucleus sampling mass (1: off)")
      ->check(CLI::Range(1e-6, 1.0));
  cmd->add_option("--stop-token", args->gen.stop_tokens, "token id that ends a sequence (repeatable)")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{1} << 40));
  cmd->add_flag("--ignore-eos", args->gen.ignore_eos, "do not stop at the model's EOS token ids");
  cmd->add_flag("--output-ids", args->output_ids, "print token ids instead of text");
  cmd->add_option("--dtype", args->dtype, "compute dtype (auto: as stored)")
      ->check(CLI::IsMember({"auto", "float32", "bfloat16", "float16"}));
  cmd->callback([args, &global] {
    global.action = [args, &global] {
      const llm::Model model = llm::load_model(args->model, {global.dev.str(), args->dtype});
      const auto tok = llm::model_tokenizer(args->model);  // nullptr: ids only
      const bool text = tok && !args->output_ids;
      std::vector<std::vector<std::int64_t>> prompts;
      KVLAB_THROW_IF(!args->prompts.empty() && !tok, UsageError,
                     "--prompt: {} has no tokenizer (vocab {}; re-import it with its tokenizer.json "
                     "or GGUF vocabulary); give --prompt-ids",
                     args->model, model.config().vocab_size);
      for (const auto& p : args->prompts) prompts.push_back(tok->encode(p, true));
      for (const auto& p : args->prompt_ids) prompts.push_back(llm::parse_id_list(p, "--prompt-ids"));
      KVLAB_THROW_IF(prompts.empty(), UsageError, "give at least one --prompt or --prompt-ids");
      args->gen.seed = global.seed;
      const llm::GenerateResult r = llm::generate(model, prompts, args->gen, nullptr, *global.make_progress());
      const double tps = r.decode_seconds > 0 ? r.generated_tokens / r.decode_seconds : 0.0;
      nlohmann::json outs = nlohmann::json::array();
      for (std::size_t i = 0; i < r.outputs.size(); ++i) {
        const auto& g = r.outputs[i];
        nlohmann::json o = {{"tokens", g.tokens}, {"stop_reason", g.stop_reason}};
        if (text) o["text"] = tok->decode(g.tokens, true);
        outs.push_back(o);
        if (!global.json) fmt::print("{}\n", text ? tok->decode(prompts[i], true) + tok->decode(g.tokens, true)
                                                  : fmt::format("{}", fmt::join(g.tokens, ",")));
      }
      if (global.json)
        fmt::print("{}\n", nlohmann::json{{"outputs", outs}, {"prefill_seconds", r.prefill_seconds},
                                          {"decode_seconds", r.decode_seconds}, {"decode_tokens_per_second", tps},
                                          {"kv_bytes_peak", r.kv_bytes_peak}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    };
  });
}

}  // namespace kvlab::cli
