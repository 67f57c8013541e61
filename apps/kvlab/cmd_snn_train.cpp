// kvlab snn-train: train a spiking network with the activation, timing, ANTLR or surrogate rule
// (libsnn trainer.hpp); writes an snn-model artifact and prints accuracy, spikes and latency.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/snn/model_io.hpp"
#include "kvlab/snn/trainer.hpp"

namespace kvlab::cli {

void register_snn_train(CLI::App& app, GlobalOptions& global) {
  struct Args {
    snn::SnnTrainOptions opt;  // defaults live in the library header
    std::string output;
    bool force = false;
    bool no_early_stop = false;
  };
  auto args = std::make_shared<Args>();
  auto& o = args->opt;
  CLI::App* cmd = app.add_subcommand(
      "snn-train", "Train a spiking network (activation / timing / ANTLR / surrogate-gradient "
                   "rule) on Fashion-MNIST, MNIST or N-MNIST; writes an snn-model artifact");
  cmd->add_option("--data", o.data, "IDX dataset directory (Fashion-MNIST/MNIST, gzipped or raw) "
                                    "or N-MNIST root with Train/ and Test/ class folders");
  cmd->add_option("--hidden", o.hidden, "hidden layer sizes, e.g. --hidden 800 (784-800-10)")
      ->check(CLI::Range(1, 1000000))->delimiter(',');
  cmd->add_option("--rule", o.rule, "learning rule")
      ->transform(CLI::CheckedTransformer(snn::kRuleNames, CLI::ignore_case));
  cmd->add_option("--loss", o.loss.kind, "loss: latency (first-spike CE), count or spike-train")
      ->transform(CLI::CheckedTransformer(snn::kLossNames, CLI::ignore_case));
  cmd->add_option("--encoding", o.encoding, "image coding: latency (one spike) or rate")
      ->transform(CLI::CheckedTransformer(snn::kEncodingNames, CLI::ignore_case));
  cmd->add_option("--time-steps", o.time_steps, "simulation steps T")->check(CLI::Range(1, 100000));
  cmd->add_option("--epochs", o.epochs, "training epochs")->check(CLI::Range(0, 100000));
  cmd->add_option("--batch-size", o.batch_size, "training batch")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--test-batch-size", o.test_batch_size, "evaluation batch")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--lr", o.lr, "Adam learning rate")->check(CLI::Range(0.0, 10.0));
  cmd->add_option("--weight-decay", o.weight_decay, "Adam L2 weight decay")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--lr-step", o.lr_step, "StepLR: epochs between decays")->check(CLI::Range(1, 100000));
  cmd->add_option("--lr-gamma", o.lr_gamma, "StepLR decay factor")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--train-limit", o.train_limit, "use the first N training samples (0: all)")
      ->check(CLI::Range(0L, 100000000L));
  cmd->add_option("--test-limit", o.test_limit, "evaluate on the first N test samples (0: all)")
      ->check(CLI::Range(0L, 100000000L));
  cmd->add_option("--alpha-i", o.neuron.alpha_i, "ANTLR neuron current decay")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--alpha-v", o.neuron.alpha_v, "ANTLR neuron voltage decay")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--surr-alpha", o.neuron.surr_alpha, "activation surrogate scale")->check(CLI::Range(0.0, 100.0));
  cmd->add_option("--surr-beta", o.neuron.surr_beta, "activation surrogate sharpness")->check(CLI::Range(0.0, 100.0));
  cmd->add_option("--surrogate", o.neuron.surrogate, "LIF surrogate derivative (--rule surrogate)")
      ->transform(CLI::CheckedTransformer(snn::kSurrogateNames, CLI::ignore_case));
  cmd->add_option("--lif-beta", o.neuron.lif_beta, "LIF membrane decay (--rule surrogate)")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--lambda-act", o.rule_opt.lambda_act, "ANTLR weight of the activation path")->check(CLI::Range(0.0, 100.0));
  cmd->add_option("--lambda-timing", o.rule_opt.lambda_timing, "ANTLR weight of the timing path")->check(CLI::Range(0.0, 100.0));
  cmd->add_option("--timing-penalty", o.rule_opt.timing_penalty, "timing rule: push of silent neurons' weights")->check(CLI::Range(0.0, 1e6));
  cmd->add_option("--grad-clip", o.rule_opt.grad_clip, "elementwise gradient clamp (0: off)")->check(CLI::Range(0.0, 1e6));
  cmd->add_option("--softmax-beta", o.loss.softmax_beta, "latency loss: softmax inverse temperature")->check(CLI::Range(0.0, 100.0));
  cmd->add_option("--lambda-nospike", o.loss.lambda_nospike, "latency loss: silent-target penalty")->check(CLI::Range(0.0, 100.0));
  cmd->add_option("--max-target-spikes", o.loss.max_target_spikes, "count/spike-train target of the true class")->check(CLI::Range(0, 10000));
  cmd->add_option("--min-target-spikes", o.loss.min_target_spikes, "count/spike-train target of other classes")->check(CLI::Range(0, 10000));
  cmd->add_option("--alpha-exp", o.loss.alpha_exp, "spike-train loss kernel decay")->check(CLI::Range(0.01, 0.999));
  cmd->add_option("--max-input-timing", o.max_input_timing, "latency code: step of intensity 1")->check(CLI::Range(0, 100000));
  cmd->add_option("--min-input-timing", o.min_input_timing, "latency code: step of intensity ~0")->check(CLI::Range(0, 100000));
  cmd->add_option("--max-rate", o.max_rate, "rate code: spike probability per step at intensity 1")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--nmnist-window-ms", o.nmnist_window_ms, "N-MNIST: recording window binned into T steps (ms)")->check(CLI::Range(1.0, 10000.0));
  cmd->add_option("--weight-init-std", o.weight_init_std, "N(0, std) weight init (0: nn.Linear uniform)")->check(CLI::Range(0.0, 100.0));
  cmd->add_flag("--no-early-stop", args->no_early_stop, "latency loss: simulate all T steps");
  cmd->add_option("--checkpoint", o.checkpoint, "checkpoint file (default: <output>.ckpt.h5)");
  cmd->add_option("--checkpoint-every", o.checkpoint_every, "optimizer steps between checkpoints (0: each epoch)")->check(CLI::Range(0L, 1000000000L));
  cmd->add_option("--resume", o.resume, "resume: auto (the checkpoint file if present) or a checkpoint path");
  add_output_option(cmd, args->output, args->force, "snn-model artifact to write (.h5)")->required();
  cmd->callback([args, &global] {
    global.action = [args, &global] {
      auto& o = args->opt;
      core::check_output_path(args->output, {}, args->force);
      if (o.checkpoint.empty()) o.checkpoint = args->output + ".ckpt.h5";
      o.early_stop = !args->no_early_stop;
      o.device = global.dev;
      o.seed = global.seed;
      auto progress = global.make_progress();
      const auto r = snn::train_snn(o, *progress, global.provenance({}));
      KVLAB_THROW_IF(r.interrupted, Error, "stopped by a signal after {} steps; checkpoint {} "
                     "written, no model; rerun with --resume auto", r.steps, o.checkpoint);
      snn::write_snn_model(args->output, r, o, global.provenance({}));
      const auto& m = r.test;
      if (global.json) {
        fmt::print("{}\n", nlohmann::json{{"output", args->output}, {"dataset", r.dataset},
            {"rule", snn::rule_name(o.rule)}, {"loss", snn::loss_name(o.loss.kind)},
            {"accuracy", m.accuracy}, {"accuracy_count", m.accuracy_count},
            {"accuracy_first", m.accuracy_first}, {"spikes_per_sample", m.spikes_per_sample},
            {"necessary_spikes_per_sample", m.necessary_spikes_per_sample},
            {"latency_mean", m.latency_mean}, {"test_samples", m.samples}, {"steps", r.steps},
            {"seconds", r.seconds}}.dump(2));
      } else {
        fmt::print("{} {} on {}: accuracy {:.4f} (count {:.4f}, first {:.4f}), spikes/sample "
                   "{:.1f} ({:.1f} before the decision), latency {:.2f} steps, {} test samples "
                   "-> {}\n", snn::rule_name(o.rule), snn::loss_name(o.loss.kind), r.dataset,
                   m.accuracy, m.accuracy_count, m.accuracy_first, m.spikes_per_sample,
                   m.necessary_spikes_per_sample, m.latency_mean, m.samples, args->output);
      }
    };
  });
}

}  // namespace kvlab::cli
