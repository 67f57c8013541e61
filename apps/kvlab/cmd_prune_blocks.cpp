// kvlab prune-blocks: choose transformer blocks to remove on calibration data (compress::
// select_blocks: SLEB or a one-shot metric) and write the smaller model (write_pruned_model).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "kvlab/compress/prune.hpp"
#include "kvlab/llm/data.hpp"

namespace kvlab::cli {

void register_prune_blocks(CLI::App& app, GlobalOptions& global) {
  struct Args {
    std::string model, calib, output, dtype = "auto";
    bool force = false;
    llm::TokenFileOptions file;
    compress::PruneOptions prune;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "prune-blocks",
      "Remove transformer blocks chosen on calibration data (SLEB and alternatives; "
      "docs/prune-blocks.md); writes a smaller model artifact");
  cmd->add_option("model", args->model, "model artifact (.h5)")->required()->check(CLI::ExistingFile);
  cmd->add_option("--calib", args->calib,
                  "calibration data: token file (.bin/.npy/HDF5) or UTF-8 text (the model's "
                  "tokenizer, or bytes for byte-level models)")
      ->required()->check(CLI::ExistingFile);
  cmd->add_option("--calib-format", args->file.format, "how to read --calib (auto: by extension)")
      ->transform(CLI::CheckedTransformer(llm::token_file_format_names(), CLI::ignore_case));
  cmd->add_option("--calib-dataset", args->file.dataset, "dataset path inside an HDF5 --calib file");
  auto* rm = cmd->add_option("--remove", args->prune.remove, "number of blocks to remove")
                 ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--remove-ratio", args->prune.remove_ratio,
                  "fraction of blocks to remove; count = ceil(ratio x blocks)")
      ->check(CLI::Range(0.0, 1.0))->excludes(rm);
  cmd->add_option("--metric", args->prune.metric, "block selection metric")
      ->transform(CLI::CheckedTransformer(compress::prune_metric_names(), CLI::ignore_case))
      ->capture_default_str();
  cmd->add_option("--calib-windows", args->prune.calib.windows, "calibration windows")
      ->check(CLI::Range(1, 1 << 20))->capture_default_str();
  cmd->add_option("--calib-len", args->prune.calib.len, "tokens per calibration window")
      ->check(CLI::Range(2, 1 << 24))->capture_default_str();
  cmd->add_option("--calib-sampling", args->prune.calib.sampling,
                  "random: seeded window starts (--seed), as SLEB/GPTQ loaders; contiguous: "
                  "non-overlapping windows from the start, as SLEB's get_loss")
      ->transform(CLI::CheckedTransformer(compress::calib_sampling_names(), CLI::ignore_case));
  cmd->add_option("--protect-first", args->prune.protect_first,
                  "leading blocks never removed (SLEB early_barrier)")
      ->check(CLI::Range(0, 1 << 20))->capture_default_str();
  cmd->add_option("--protect-last", args->prune.protect_last,
                  "trailing blocks never removed (SLEB latter_barrier)")
      ->check(CLI::Range(0, 1 << 20))->capture_default_str();
  cmd->add_option("--search", args->prune.search,
                  "cached: reuse the hidden states before each candidate (same picks, fewer "
                  "block forwards); batched: cached, with a round's candidates run together "
                  "block by block (fewer, larger block calls; the winner and near-ties are "
                  "re-scored alone, so the picks are cached's); plain: SLEB's full recomputation")
      ->transform(CLI::CheckedTransformer(compress::search_mode_names(), CLI::ignore_case));
  cmd->add_option("--batch-windows", args->prune.batch_windows, "calibration windows per forward")
      ->check(CLI::Range(1, 1 << 16))->capture_default_str();
  cmd->add_option("--batch-candidates", args->prune.batch_candidates,
                  "--search batched: candidates per group (0: as many as --batch-memory allows)")
      ->check(CLI::Range(0, 1 << 20))->capture_default_str();
  cmd->add_option("--batch-memory", args->prune.batch_memory_mb,
                  fmt::format("--search batched: memory budget of one batched block call, MiB (0: "
                              "60 % of the free device memory on CUDA, {} on the CPU)",
                              compress::kCpuBatchMemoryMB))
      ->check(CLI::Range(0, 1 << 30))->capture_default_str();
  cmd->add_option("--tie-tolerance", args->prune.tie_tolerance,
                  "--search batched: candidates within this fraction of the best loss are "
                  "re-scored one at a time (docs/prune-blocks.md)")
      ->check(CLI::Range(0.0, 1.0))->capture_default_str();
  cmd->add_option("--dtype", args->dtype,
                  "compute dtype of the search (the output keeps the stored dtype)")
      ->check(CLI::IsMember({"auto", "float32", "bfloat16", "float16"}))->capture_default_str();
  add_output_option(cmd, args->output, args->force, "pruned model artifact to write (.h5)")->required();
  cmd->callback([args, &global] {
    global.action = [args, &global] {
      core::check_output_path(args->output, {args->model, args->calib}, args->force);
      const llm::ModelFile source = llm::read_model(args->model);
      const llm::Model model = llm::Model::from_file(source, {global.dev.str(), args->dtype});
      const llm::TokenData data = llm::read_model_data(args->calib, args->file, args->model);
      args->prune.calib.seed = global.seed;
      const at::Tensor windows = compress::make_calibration_windows(data.ids, args->prune.calib, args->calib);
      const compress::PruneResult r = compress::select_blocks(model, windows, args->prune, *global.make_progress());
      compress::write_pruned_model(args->output, args->model, source, r, args->prune,
                                   global.provenance({source.header.as_input(), {args->calib, "file", "", 0}}));
      const double ratio = static_cast<double>(r.plain_block_forwards) / static_cast<double>(r.block_forwards);
      const auto bytes_in = std::filesystem::file_size(args->model), bytes_out = std::filesystem::file_size(args->output);
      if (global.json)
        fmt::print("{}\n", nlohmann::json{{"metric", compress::prune_metric_name(r.metric)}, {"removed", r.removed},
                                          {"kept", r.kept}, {"blocks_before", r.num_blocks_before},
                                          {"blocks_after", r.kept.size()}, {"scores", r.scores},
                                          {"search", compress::search_mode_name(args->prune.search)},
                                          {"block_forwards", r.block_forwards}, {"plain_block_forwards", r.plain_block_forwards},
                                          {"block_calls", r.block_calls}, {"candidate_group", r.candidate_group},
                                          {"rescored", r.rescored}, {"fallback_rounds", r.fallback_rounds},
                                          {"max_batch_deviation", r.max_batch_deviation},
                                          {"calib_windows", r.calib_windows}, {"calib_len", r.calib_len},
                                          {"seconds", r.seconds}, {"bytes_in", bytes_in}, {"bytes_out", bytes_out}}.dump());
      else
        fmt::print("removed blocks [{}] ({} -> {} blocks, {}); {} block forwards ({} for the plain search, {:.2f}x fewer) "
                   "in {} block calls{}; {} x {} calibration tokens; {:.1f} s; {} -> {} bytes\n",
                   fmt::join(r.removed, ", "), r.num_blocks_before, r.kept.size(), compress::prune_metric_name(r.metric),
                   r.block_forwards, r.plain_block_forwards, ratio, r.block_calls,
                   args->prune.search == compress::SearchMode::batched && r.candidate_group > 0
                       ? fmt::format(" (groups of up to {} candidates; {} re-scored alone, {} rounds redone, "
                                     "max batched deviation {:.1e})",
                                     r.candidate_group, r.rescored, r.fallback_rounds, r.max_batch_deviation)
                       : std::string(),
                   r.calib_windows, r.calib_len, r.seconds, bytes_in, bytes_out);
    };
  });
}

}  // namespace kvlab::cli
