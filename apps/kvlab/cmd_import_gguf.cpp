// kvlab import-gguf: a llama.cpp GGUF file of a Llama-architecture model -> a `model` artifact
// (dequantised; tokenizer metadata kept). All the work is llm::import_gguf.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "kvlab/core/runtime.hpp"
#include "kvlab/llm/import_export.hpp"

namespace kvlab::cli {

void register_import_gguf(CLI::App& app, GlobalOptions& global) {
  struct Args {
    std::string file, output;
    bool force = false;
    llm::ImportGgufOptions opt;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "import-gguf", "Import a llama.cpp GGUF file (Llama architecture; F32, F16, BF16, Q8_0, Q4_0, "
                     "Q4_1, Q4_K, Q6_K tensors are dequantised) into a model artifact");
  cmd->add_option("file", args->file, "GGUF file (.gguf)")->required();
  add_output_option(cmd, args->output, args->force, "model artifact to write (.h5)")->required();
  cmd->add_option("--dtype", args->opt.dtype,
                  "dtype to store the dequantised weights in (auto: float32)")
      ->check(CLI::IsMember(llm::kImportDtypes))
      ->capture_default_str();
  cmd->callback([args, &global] {
    global.action = [args, &global] {
      core::check_output_path(args->output, {args->file}, args->force);
      auto progress = global.make_progress();
      const auto r = llm::import_gguf(args->file, args->output, args->opt,
                                      global.provenance({{args->file, "file", "", 0}}), *progress);
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
