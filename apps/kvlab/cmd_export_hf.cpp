// kvlab export-hf: a `model` artifact -> a Hugging Face directory (config.json + model.safetensors)
// that transformers' from_pretrained loads. All the work is llm::export_hf.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "kvlab/core/runtime.hpp"
#include "kvlab/llm/import_export.hpp"

namespace kvlab::cli {

void register_export_hf(CLI::App& app, GlobalOptions& global) {
  struct Args {
    std::string model, output;
    bool force = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "export-hf", "Export a model artifact as a Hugging Face directory (config.json + "
                   "model.safetensors, weights bit-exact in their stored dtype)");
  cmd->add_option("model", args->model, "model artifact (.h5)")->required();
  add_output_option(cmd, args->output, args->force,
                    "directory to write (created; a non-empty one needs --force)")
      ->required();
  cmd->callback([args, &global] {
    global.action = [args, &global] {
      llm::check_output_dir(args->output, args->force);
      auto progress = global.make_progress();
      const auto r = llm::export_hf(args->model, args->output, *progress);
      if (global.json)
        fmt::print("{}\n", nlohmann::json{{"output", args->output},
                                          {"config", r.config_json.string()},
                                          {"safetensors", r.safetensors.string()},
                                          {"layers", r.config.num_hidden_layers},
                                          {"tensors", r.tensors}, {"bytes", r.bytes}}
                               .dump(2));
      else
        fmt::print("{}: config.json + model.safetensors ({} layers, {} tensors, {})\n",
                   args->output, r.config.num_hidden_layers, r.tensors, core::human_bytes(r.bytes));
    };
  });
}

}  // namespace kvlab::cli
