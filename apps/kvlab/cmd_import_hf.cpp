// kvlab import-hf: a Hugging Face checkpoint directory (config.json + safetensors) -> a `model`
// artifact. All the work is llm::import_hf.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "kvlab/core/runtime.hpp"
#include "kvlab/llm/import_export.hpp"

namespace kvlab::cli {

void register_import_hf(CLI::App& app, GlobalOptions& global) {
  struct Args {
    std::string dir, output;
    bool force = false;
    llm::ImportHfOptions opt;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "import-hf", "Import a Hugging Face Llama/Mistral/Qwen2 checkpoint directory (config.json + "
                   "model.safetensors or a sharded index) into a model artifact");
  cmd->add_option("dir", args->dir, "checkpoint directory (what save_pretrained wrote)")
      ->required();
  add_output_option(cmd, args->output, args->force, "model artifact to write (.h5)")->required();
  cmd->add_option("--dtype", args->opt.dtype,
                  "weight dtype to store: auto keeps each tensor's own (bit-exact)")
      ->check(CLI::IsMember(llm::kImportDtypes))
      ->capture_default_str();
  cmd->callback([args, &global] {
    global.action = [args, &global] {
      core::check_output_path(args->output, {args->dir}, args->force);
      auto progress = global.make_progress();
      const auto r = llm::import_hf(args->dir, args->output, args->opt,
                                    global.provenance({{args->dir, "file", "", 0}}), *progress);
      if (global.json)
        fmt::print("{}\n", nlohmann::json{{"output", args->output}, {"source", r.source},
                                          {"arch", llm::arch_name(r.config.arch)},
                                          {"layers", r.config.num_hidden_layers},
                                          {"tensors", r.tensors}, {"parameters", r.parameters},
                                          {"dtype", r.dtype}, {"bytes", r.bytes_written},
                                          {"uuid", r.header.uuid}}
                               .dump(2));
      else
        fmt::print("{}: {} with {} layers, {} tensors, {:.2f} M parameters ({}, {}) from {}\n",
                   args->output, llm::arch_name(r.config.arch), r.config.num_hidden_layers,
                   r.tensors, r.parameters / 1e6, r.dtype, core::human_bytes(r.bytes_written),
                   r.source);
    };
  });
}

}  // namespace kvlab::cli
