// kvlab eval: perplexity of a model on a token file (libllm evaluate_perplexity); writes an
// eval-report artifact with -o and prints one line (JSON with --json).
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "kvlab/llm/data.hpp"
#include "kvlab/llm/eval.hpp"

namespace kvlab::cli {

void register_eval(CLI::App& app, GlobalOptions& global) {
  struct Args {
    std::string model, data, output, dtype = "auto";
    bool force = false;
    llm::TokenFileOptions file;
    llm::EvalOptions eval;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "eval", "Perplexity of a model on held-out data (non-overlapping windows; docs/eval.md)");
  cmd->add_option("model", args->model, "model artifact (.h5)")->required()->check(CLI::ExistingFile);
  cmd->add_option("--data", args->data,
                  "token file (nanoGPT .bin uint16/uint32, .npy, HDF5 dataset) or UTF-8 text, "
                  "encoded with the model's tokenizer (bytes for byte-level models)")
      ->required()->check(CLI::ExistingFile);
  cmd->add_option("--data-format", args->file.format, "how to read --data (auto: by extension)")
      ->transform(CLI::CheckedTransformer(llm::token_file_format_names(), CLI::ignore_case));
  cmd->add_option("--data-dataset", args->file.dataset, "dataset path inside an HDF5 --data file");
  cmd->add_option("--seq-len", args->eval.seq_len, "window length in tokens")
      ->check(CLI::Range(2, 1 << 24));
  cmd->add_option("--batch-size", args->eval.batch_size, "windows per forward")
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--chunk-size", args->eval.chunk_size,
                  "tokens per forward inside a window, through the KV cache (0: whole window)")
      ->check(CLI::Range(0, 1 << 24));
  cmd->add_option("--max-windows", args->eval.max_windows, "score only the first N windows (0: all)")
      ->check(CLI::Range(0, 1 << 30));
  cmd->add_option("--dtype", args->dtype, "compute dtype (auto: as stored)")
      ->check(CLI::IsMember({"auto", "float32", "bfloat16", "float16"}));
  add_output_option(cmd, args->output, args->force, "eval-report artifact to write (.h5; optional)");
  cmd->callback([args, &global] {
    global.action = [args, &global] {
      if (!args->output.empty()) core::check_output_path(args->output, {args->model, args->data}, args->force);
      core::ArtifactHeader mh;
      const llm::Model model = llm::load_model(args->model, {global.dev.str(), args->dtype}, &mh);
      const llm::TokenData data = llm::read_model_data(args->data, args->file, args->model);
      const llm::EvalResult r = llm::evaluate_perplexity(model, data.ids, args->eval, *global.make_progress());
      if (!args->output.empty())
        llm::write_eval_report(args->output, r, args->eval,
                               {args->model, args->data, llm::token_file_format_name(data.format),
                                llm::dtype_name(model.dtype()), global.dev.str()},
                               global.provenance({mh.as_input(), {args->data, "file", "", 0}}));
      if (global.json)
        fmt::print("{}\n", nlohmann::json{{"ppl", r.ppl}, {"ppl_ci_low", r.ppl_ci_low}, {"ppl_ci_high", r.ppl_ci_high},
                                          {"mean_loss", r.mean_loss}, {"loss_stderr", r.loss_stderr},
                                          {"bits_per_token", r.bits_per_token}, {"windows", r.window_loss.size()},
                                          {"seq_len", args->eval.seq_len}, {"tokens_scored", r.tokens_scored},
                                          {"tokens_per_second", r.tokens_per_second}}.dump());
      else
        fmt::print("ppl {:.4f} (95% CI {:.4f}-{:.4f})  loss {:.4f} nats/token  {} windows x {} tokens  {:.0f} tokens/s\n",
                   r.ppl, r.ppl_ci_low, r.ppl_ci_high, r.mean_loss, r.window_loss.size(), args->eval.seq_len, r.tokens_per_second);
    };
  });
}

}  // namespace kvlab::cli
