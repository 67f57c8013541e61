// snn-train: trains a fully connected spiking network on Fashion-MNIST / MNIST (IDX, latency or
// rate coded) or N-MNIST (event bins) with the activation, timing, ANTLR or surrogate rule, with
// Adam + StepLR as the official ANTLR trainer, checkpoints and resume; evaluates accuracy, spikes
// per sample and decision latency. The `snn-model` artifact I/O lives in model_io.hpp.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvlab/core/artifact.hpp"
#include "kvlab/core/progress.hpp"
#include "kvlab/core/runtime.hpp"
#include "kvlab/snn/encode.hpp"
#include "kvlab/snn/loss.hpp"
#include "kvlab/snn/network.hpp"

namespace kvlab::snn {

struct SnnTrainOptions {
  std::string data = "/usr/share/datasets/fashion-mnist";  ///< IDX dir or N-MNIST root
  std::vector<std::int64_t> hidden = {800};  ///< hidden layer sizes (the paper's 784-800-10)
  Rule rule = Rule::antlr;
  LossOptions loss;
  Encoding encoding = Encoding::latency;
  std::int64_t max_input_timing = 0;   ///< latency code: step of intensity 1
  std::int64_t min_input_timing = 24;  ///< latency code: step of intensity -> 0
  double max_rate = 1.0;               ///< rate code: spike probability per step at intensity 1
  double nmnist_window_ms = 300.0;     ///< N-MNIST: the first 300 ms are binned into T steps
  std::int64_t time_steps = 300;
  std::int64_t batch_size = 16;
  std::int64_t test_batch_size = 256;
  std::int64_t epochs = 20;
  double lr = 1e-3;                  ///< Adam
  double weight_decay = 0.0;
  std::int64_t lr_step = 10;         ///< StepLR step (epochs)
  double lr_gamma = 0.1;
  std::int64_t train_limit = 0;      ///< > 0: use only the first N training samples
  std::int64_t test_limit = 0;       ///< > 0: evaluate on the first N test samples
  double weight_init_std = 0.0;      ///< > 0: N(0, std) weights instead of nn.Linear's uniform
  bool early_stop = true;            ///< latency loss: stop once every output has spiked
  NeuronOptions neuron;
  RuleOptions rule_opt;              ///< .rule is overwritten by `rule`
  // Checkpoints (empty path: none).
  std::string checkpoint;
  std::int64_t checkpoint_every = 0;  ///< optimizer steps between checkpoints (0: every epoch)
  std::string resume;                 ///< "", "auto" or a checkpoint path
  core::DeviceSpec device;
  std::uint64_t seed = 0;
};

/// Test-set (or any evaluation) metrics. "Spikes" count the hidden layers' spikes over the
/// simulated window (the reference's num_spike_total minus the output layer, which is reported
/// separately); "necessary" spikes are those emitted up to each sample's first output spike.
struct EvalMetrics {
  std::int64_t samples = 0;
  double loss = 0.0;
  double accuracy = 0.0;        ///< with the loss's natural decoding (first for latency, else count)
  double accuracy_count = 0.0;  ///< most output spikes
  double accuracy_first = 0.0;  ///< earliest output spike
  double spikes_per_sample = 0.0;
  double output_spikes_per_sample = 0.0;
  double necessary_spikes_per_sample = 0.0;
  double latency_mean = 0.0;         ///< mean step of the first output spike (samples with one)
  double silent_output_fraction = 0.0;  ///< samples whose outputs never spiked
  double steps_per_sample = 0.0;     ///< simulated steps (early stop)
};

struct EpochRecord {
  std::int64_t epoch = 0;
  double lr = 0.0;
  double train_loss = 0.0;
  double train_accuracy = 0.0;
  double train_spikes_per_sample = 0.0;
  EvalMetrics test;
  double seconds = 0.0;
};

struct SnnTrainResult {
  Network net;
  EvalMetrics test;
  std::vector<EpochRecord> history;
  std::string dataset;        ///< "fashion-mnist", "mnist", "n-mnist"
  std::vector<std::string> data_files;
  std::int64_t train_samples = 0;
  std::int64_t steps = 0;     ///< optimizer steps in total (including resumed ones)
  bool interrupted = false;   ///< stopped by SIGTERM/SIGUSR1 after writing a checkpoint
  std::string resumed_from;
  double seconds = 0.0;
};

/// Validates the options (UsageError naming the option), loads the data, trains, evaluates.
/// `prov` is stamped into the checkpoints it writes.
SnnTrainResult train_snn(const SnnTrainOptions& opt, core::Progress& progress,
                         const core::Provenance& prov);

/// Accumulates evaluation metrics batch by batch (train_snn's evaluation; usable on its own).
class MetricsAccumulator {
 public:
  explicit MetricsAccumulator(LossKind kind) : kind_(kind) {}
  /// Adds one simulated batch with its labels (int64 [batch]) and its mean loss.
  void add(const ForwardResult& fw, const at::Tensor& labels, double loss);
  EvalMetrics finish() const;

 private:
  LossKind kind_;
  std::int64_t n_ = 0, correct_count_ = 0, correct_first_ = 0, with_output_ = 0;
  double loss_sum_ = 0, spikes_ = 0, out_spikes_ = 0, necessary_ = 0, latency_sum_ = 0,
         steps_ = 0;
};

/// The options as JSON (checked on --resume, stored in the artifact's params).
std::string options_json(const SnnTrainOptions& opt);

}  // namespace kvlab::snn
