// kvlab binarize: BinaryMoS / OneBit-style / sign 1-bit binarization of an LLM's block linears,
// distilled from the original model, written as a model artifact with packed layers
// (libbinary/binarize.hpp, docs/binarize.md).
#include <fmt/format.h>

#include <filesystem>

#include "commands.hpp"
#include "kvlab/binary/binarize.hpp"
#include "kvlab/binary/mos.hpp"
#include "kvlab/core/checkpoint.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/llm/data.hpp"

namespace kvlab::cli {

void register_binarize(CLI::App& app, GlobalOptions& global) {
  binary::register_linear_kinds();  // every command can then load binarized models
  struct Args {
    binary::BinarizeOptions opt;  // defaults live in the library header
    llm::TokenFileOptions file;
    std::string model, data, output, checkpoint, resume;
    bool force = false, keep_checkpoint = false;
  };
  auto a = std::make_shared<Args>();
  binary::BinarizeOptions& o = a->opt;
  CLI::App* cmd = app.add_subcommand(
      "binarize", "1-bit weights for every block linear (BinaryMoS, OneBit-style, sign) with "
                  "distillation from the original model; writes a packed model artifact");
  cmd->add_option("model", a->model, "model artifact to binarize (.h5)")->required()->check(CLI::ExistingFile);
  cmd->add_option("--data", a->data, "training text/tokens (as eval --data); not needed with --steps 0")
      ->check(CLI::ExistingFile);
  cmd->add_option("--data-format", a->file.format, "how to read --data (auto: by extension)")
      ->transform(CLI::CheckedTransformer(llm::token_file_format_names(), CLI::ignore_case));
  cmd->add_option("--data-dataset", a->file.dataset, "dataset path inside an HDF5 --data file");
  cmd->add_option("--method", o.method, "mos (BinaryMoS; --experts 1: OneBit-style) or sign "
                                        "(per-output-channel scale)")
      ->transform(CLI::CheckedTransformer(binary::binarize_method_names(), CLI::ignore_case))
      ->capture_default_str();
  cmd->add_option("--experts", o.experts, "scale experts E of --method mos")
      ->check(CLI::Range(1, 64))->capture_default_str();
  cmd->add_option("--seq-len", o.seq_len, "tokens per training block")
      ->check(CLI::Range(2, 1 << 20))->capture_default_str();
  cmd->add_option("--batch-size", o.batch_size, "blocks per optimizer step")
      ->check(CLI::Range(1, 1 << 16))->capture_default_str();
  cmd->add_option("--epochs", o.epochs, "passes over --data (when --steps < 0)")
      ->check(CLI::Range(1, 1 << 20))->capture_default_str();
  cmd->add_option("--steps", o.steps, "optimizer steps (-1: from --epochs; 0: initialisation only)")
      ->check(CLI::Range(std::int64_t{-1}, std::int64_t{1} << 40))->capture_default_str();
  cmd->add_option("--lr", o.lr, "AdamW peak learning rate (cosine decay)")
      ->check(CLI::Range(0.0, 1.0))->capture_default_str();
  cmd->add_option("--warmup-ratio", o.warmup_ratio, "fraction of steps of linear warm-up")
      ->check(CLI::Range(0.0, 1.0))->capture_default_str();
  cmd->add_option("--weight-decay", o.weight_decay, "AdamW decoupled weight decay")
      ->check(CLI::Range(0.0, 1.0))->capture_default_str();
  cmd->add_option("--max-grad-norm", o.max_grad_norm, "gradient clipping norm (0: off)")
      ->check(CLI::Range(0.0, 1e6))->capture_default_str();
  cmd->add_option("--l2l-loss-scale", o.l2l_loss_scale, "weight of the summed hidden-state MSE")
      ->check(CLI::Range(0.0, 1e6))->capture_default_str();
  cmd->add_option("--dtype", o.dtype, "compute dtype of the teacher and student forwards (auto: "
                                      "float32 on CPU, bfloat16 on CUDA); the trained state's is "
                                      "--state-dtype")
      ->check(CLI::IsMember({"auto", "float32", "bfloat16", "float16"}))->capture_default_str();
  cmd->add_option("--state-dtype", o.state_dtype,
                  "dtype of the latent weights, their gradients and AdamW moments: float32 (master "
                  "weights, as the reference) or bfloat16 (updates in float32, stored with "
                  "stochastic rounding: half the memory, needed for a 7B model on one 80 GB card); "
                  "scales and routers stay float32")
      ->check(CLI::IsMember({"float32", "bfloat16"}))->capture_default_str();
  cmd->add_option("--grad-checkpoint", o.grad_checkpoint,
                  "gradient checkpointing of the student's blocks: keep each block's input only "
                  "and recompute the block in the backward (auto: on on CUDA, off on CPU)")
      ->check(CLI::IsMember({"auto", "on", "off"}))->capture_default_str();
  cmd->add_option("--micro-batch-size", o.micro_batch_size,
                  "sequences per forward/backward, gradients accumulated over the --batch-size "
                  "of a step (0: the whole batch at once)")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{1} << 16))->capture_default_str();
  cmd->add_option("--checkpoint", a->checkpoint, "checkpoint file (default: <output>.checkpoint.h5)");
  cmd->add_option("--checkpoint-every", o.checkpoint_every, "steps between checkpoints (0: only on SIGTERM/SIGUSR1)")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{1} << 40))->capture_default_str();
  cmd->add_option("--resume", a->resume, "resume from a checkpoint: auto or a file");
  cmd->add_flag("--keep-checkpoint", a->keep_checkpoint, "keep the checkpoint after success");
  add_output_option(cmd, a->output, a->force, "binarized model artifact to write (.h5)")->required();

  cmd->callback([a, &global] {
    global.action = [a, &global] {
      core::check_output_path(a->output, {a->model, a->data}, a->force);
      KVLAB_THROW_IF(a->opt.steps != 0 && a->data.empty(), UsageError,
                     "--data is required for training; give a text/token file, or --steps 0 for "
                     "initialisation only");
      a->opt.device = global.dev.str();
      a->opt.seed = global.seed;
      a->opt.checkpoint = a->checkpoint.empty() ? a->output + ".checkpoint.h5" : a->checkpoint;
      if (auto r = core::resolve_resume(a->resume, a->opt.checkpoint)) a->opt.resume = r->string();
      const llm::ModelFile f = llm::read_model(a->model);
      std::vector<core::InputRef> inputs{f.header.as_input()};
      at::Tensor ids;
      if (a->opt.steps != 0) {
        ids = llm::read_model_data(a->data, a->file, a->model).ids;
        inputs.push_back({a->data, "file", "", 0});
      }
      const auto prov = global.provenance(inputs);
      const auto res = binary::binarize_model(f, ids, a->opt, prov, *global.make_progress());
      KVLAB_THROW_IF(res.stopped, Error, "stopped by a signal after {} steps; checkpoint saved to "
                     "{}; rerun the same command with --resume auto to continue", res.steps,
                     res.checkpoint_written);
      binary::write_binarized_model(a->output, res, a->opt, f.hf_config, prov);
      if (!a->keep_checkpoint && std::filesystem::exists(a->opt.checkpoint))
        std::filesystem::remove(a->opt.checkpoint);
      fmt::print("{}\n", global.json ? binary::binarize_report_json(res, a->opt)
                                     : binary::binarize_report_text(res, a->opt));
    };
  });
}

}  // namespace kvlab::cli
