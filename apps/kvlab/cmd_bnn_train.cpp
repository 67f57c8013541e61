// kvlab bnn-train: train a binary neural network (threshold shifting, INSTA-BNN, ReActNet recipes)
// on Fashion-MNIST / MNIST / CIFAR-10 and write a bnn-model artifact. Algorithms: libbinary/bnn.
#include <fmt/format.h>

#include <filesystem>

#include "commands.hpp"
#include "kvlab/binary/bnn.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/core/log.hpp"

namespace kvlab::cli {

void register_bnn_train(CLI::App& app, GlobalOptions& global) {
  struct Args {
    binary::BnnOptions opt;  // defaults live in the library header
    std::string data = core::kDefaultFashionMnistDir, output, checkpoint, resume;
    bool force = false, real_weights = false, keep_checkpoint = false, no_packed_check = false;
  };
  auto a = std::make_shared<Args>();
  binary::BnnNetConfig& n = a->opt.net;
  CLI::App* cmd = app.add_subcommand(
      "bnn-train", "Train a binary neural network (XNOR/Bi-Real/ReActNet, threshold shift, "
                   "INSTA-BNN) on IDX or CIFAR-10 data, on --device cpu or cuda[:i]; writes a "
                   "bnn-model artifact");
  cmd->add_option("--data", a->data, "dataset directory: IDX files (MNIST/Fashion-MNIST, .gz or "
                                     "raw) or CIFAR-10 binary batches");
  cmd->add_option("--arch", n.arch, "architecture: real, xnor, bireal, reactnet")
      ->transform(CLI::CheckedTransformer(binary::bnn_arch_names(), CLI::ignore_case));
  cmd->add_option("--act", n.act, "activation binarizer: auto, sign, approx, rsign, shift, "
                                  "insta-th, insta-th-plus, insta-prelu")
      ->transform(CLI::CheckedTransformer(binary::bnn_act_names(), CLI::ignore_case));
  cmd->add_option("--ste", n.ste, "straight-through gradient of sign: auto, clipped, approx")
      ->transform(CLI::CheckedTransformer(binary::bnn_ste_names(), CLI::ignore_case));
  cmd->add_option("--insta-stat", n.insta_stat, "INSTA statistic: auto, mean-diff, cubic")
      ->transform(CLI::CheckedTransformer(binary::insta_stat_names(), CLI::ignore_case));
  cmd->add_option("--width", n.width, "channels of the first stage")->check(CLI::Range(1, 1024));
  cmd->add_option("--stages", n.stages, "stages (each after the first halves the resolution)")
      ->check(CLI::Range(1, 6));
  cmd->add_option("--depth", n.depth, "binary blocks per stage")->check(CLI::Range(1, 32));
  cmd->add_option("--shift", n.shift, "threshold shift delta of sign(x - delta) (--act shift)")
      ->check(CLI::Range(-4.0, 4.0));
  cmd->add_option("--shift-per-layer", n.shift_per_layer,
                  "one delta per binary activation, comma-separated (--act shift)")
      ->delimiter(',')->check(CLI::Range(-4.0, 4.0));
  cmd->add_option("--insta-reduction", n.insta_reduction, "INSTA-Th+ MLP reduction ratio r")
      ->check(CLI::Range(1, 1024));
  cmd->add_flag("--real-weights", a->real_weights, "binary activations with real-valued weights");
  cmd->add_option("--recipe", a->opt.recipe, "single, or two-step (real weights, then binary)")
      ->transform(CLI::CheckedTransformer(binary::bnn_recipe_names(), CLI::ignore_case));
  cmd->add_option("--epochs", a->opt.epochs, "epochs per stage")->check(CLI::Range(1, 100000));
  cmd->add_option("--batch-size", a->opt.batch_size, "images per step")->check(CLI::Range(1, 65536));
  cmd->add_option("--lr", a->opt.lr, "Adam learning rate (linear decay to 0 per stage)")
      ->check(CLI::Range(1e-8, 10.0));
  cmd->add_option("--weight-decay", a->opt.weight_decay,
                  "weight decay while weights are real (fully binary stages use 0)")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--train-limit", a->opt.train_limit, "use the first N training images (0: all)")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{1} << 40));
  cmd->add_option("--test-limit", a->opt.test_limit, "evaluate on the first N test images (0: all)")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{1} << 40));
  cmd->add_option("--augment", a->opt.augment, "random crop + flip: auto (CIFAR only), on, off")
      ->check(CLI::IsMember({"auto", "on", "off"}));
  cmd->add_option("--teacher", a->opt.teacher, "bnn-model to distil from (soft cross-entropy)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--checkpoint", a->checkpoint, "checkpoint file (default: <output>.checkpoint.h5)");
  cmd->add_option("--checkpoint-every", a->opt.checkpoint_every,
                  "steps between checkpoints (0: at the end of each epoch only)")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{1} << 40));
  cmd->add_option("--resume", a->resume, "resume from a checkpoint: auto or a file");
  cmd->add_flag("--keep-checkpoint", a->keep_checkpoint, "keep the checkpoint after success");
  cmd->add_flag("--no-packed-check", a->no_packed_check,
                "skip the bit-packed inference check (CPU kernels; after a --device cuda run it "
                "moves the network to the CPU)");
  add_output_option(cmd, a->output, a->force, "bnn-model artifact to write (.h5)")->required();

  cmd->callback([a, &global] {
    global.action = [a, &global] {
      core::check_output_path(a->output, {a->opt.teacher, a->data}, a->force);
      a->opt.net.binary_weights = !a->real_weights;
      a->opt.check_packed = !a->no_packed_check;
      a->opt.seed = global.seed;
      a->opt.device = global.dev;  // cpu or cuda[:i]; the packed check always runs on the CPU
      a->opt.checkpoint = a->checkpoint.empty() ? a->output + ".checkpoint.h5" : a->checkpoint;
      if (auto r = core::resolve_resume(a->resume, a->opt.checkpoint)) a->opt.resume = r->string();
      const core::TrainTest data = core::load_image_dataset(a->data);
      std::vector<core::InputRef> inputs;
      for (const auto& f : data.train.files) inputs.push_back({f, "file", "", 0});
      for (const auto& f : data.test.files) inputs.push_back({f, "file", "", 0});
      if (!a->opt.teacher.empty()) inputs.push_back(binary::read_bnn_model(a->opt.teacher).header.as_input());
      auto progress = global.make_progress();
      const auto res = binary::train_bnn(data, a->opt, global.provenance(inputs), *progress);
      KVLAB_THROW_IF(res.report.stopped, Error, "stopped by a signal after {} steps; checkpoint "
                     "saved to {}; rerun the same command with --resume auto to continue",
                     res.report.steps, res.report.checkpoint_written);
      binary::write_bnn_model(a->output, res, a->opt, global.provenance(inputs));
      if (!a->keep_checkpoint && !res.report.checkpoint_written.empty())
        std::filesystem::remove(res.report.checkpoint_written);
      fmt::print("{}\n", global.json ? binary::bnn_report_json(res) : binary::bnn_report_text(res));
    };
  });
}

}  // namespace kvlab::cli
