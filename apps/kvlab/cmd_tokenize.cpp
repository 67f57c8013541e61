// kvlab tokenize: UTF-8 text -> a token-id file (uint16/uint32 .bin, or HDF5) with the tokenizer of
// a model artifact, an HF directory / tokenizer.json / tokenizer.model, or a GGUF file
// (llm::tokenize_file; docs/tokenize.md). Prints one summary line (JSON with --json).
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "kvlab/core/h5.hpp"
#include "kvlab/llm/data.hpp"
#include "kvlab/llm/model_io.hpp"
#include "kvlab/llm/tokenizer.hpp"

namespace kvlab::cli {

void register_tokenize(CLI::App& app, GlobalOptions& global) {
  struct Args {
    std::string source, text, output;
    bool force = false;
    llm::TokenizeOptions opt;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "tokenize", "Tokenize UTF-8 text into token ids (uint16/uint32 .bin or HDF5) with a model's "
                  "tokenizer, streaming (docs/tokenize.md)");
  cmd->add_option("source", args->source,
                  "model artifact (.h5), HF directory, tokenizer.json, tokenizer.model or .gguf")
      ->required()->check(CLI::ExistingPath);
  cmd->add_option("--text", args->text, "UTF-8 text file to tokenize")->required()->check(CLI::ExistingFile);
  add_output_option(cmd, args->output, args->force,
                    "token file to write (.bin: uint16 when the vocabulary has <= 65536 ids, else "
                    "uint32; .h5 with --format h5)")->required();
  cmd->add_option("--format", args->opt.format, "bin (raw little-endian ids) or h5 (dataset \"tokens\")")
      ->check(CLI::IsMember({"bin", "h5"}))->capture_default_str();
  cmd->add_flag("--add-bos", args->opt.add_bos, "prepend the tokenizer's BOS token");
  cmd->add_flag("--add-eos", args->opt.add_eos, "append the tokenizer's EOS token");
  cmd->add_option("--chunk-bytes", args->opt.chunk_bytes, "text bytes read per step (bounds memory)")
      ->check(CLI::Range(std::size_t{64}, std::size_t{1} << 32))->capture_default_str();
  cmd->callback([args, &global] {
    global.action = [args, &global] {
      core::check_output_path(args->output, {args->source, args->text}, args->force);
      const auto tok = llm::load_tokenizer(args->source);
      const bool artifact = h5::is_hdf5(args->source);
      const std::int64_t vocab = artifact ? llm::read_model_params(args->source).config.vocab_size : tok->vocab_size();
      const auto r = llm::tokenize_file(*tok, vocab, args->text, args->output, args->opt, *global.make_progress());
      const double mbs = r.seconds > 0 ? r.bytes / 1e6 / r.seconds : 0.0;
      const std::string dtype = r.width == 2 ? "uint16" : "uint32";
      if (global.json)
        fmt::print("{}\n", nlohmann::json{{"output", args->output}, {"tokenizer", tok->data().model},
                                          {"bytes", r.bytes}, {"tokens", r.tokens}, {"dtype", dtype},
                                          {"format", args->opt.format}, {"seconds", r.seconds},
                                          {"mb_per_second", mbs}}.dump());
      else
        fmt::print("{}: {} tokens ({}, {}) from {} bytes of text, {:.2f} bytes/token, {:.1f} MB/s\n",
                   args->output, r.tokens, dtype, tok->data().model, r.bytes,
                   r.tokens ? static_cast<double>(r.bytes) / r.tokens : 0.0, mbs);
    };
  });
}

}  // namespace kvlab::cli
