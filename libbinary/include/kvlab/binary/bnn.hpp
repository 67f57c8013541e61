// Binary neural network training (bnn-train): architectures (a real-valued reference, XNOR-Net,
// Bi-Real-Net and ReActNet style), activation binarizers (sign with a clipped straight-through
// gradient, ApproxSign, RSign, a fixed threshold shift, INSTA-Th, INSTA-Th+, INSTA-PReLU), scaled
// sign weights, the ReActNet recipes (two-step, Adam with linear decay, distillation), checkpoints,
// the cost report (BOPs, FLOPs, OPs, size, fraction of +1 activations) and the bit-packed
// inference check. Method details and what is unverified: docs/bnn-train.md.
//
// The bnn-model artifact (docs/formats/bnn-model.md): /params holds the options that rebuild the
// network, /weights/<module path> every parameter and buffer, /report the measurements.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "kvlab/core/artifact.hpp"
#include "kvlab/core/checkpoint.hpp"
#include "kvlab/core/datasets.hpp"
#include "kvlab/core/progress.hpp"
#include "kvlab/core/runtime.hpp"

namespace kvlab::binary {

enum class BnnArch { real, xnor, bireal, reactnet };
/// `automatic` picks the architecture's usual binarizer: xnor -> sign, bireal -> approx,
/// reactnet -> rsign (real -> none).
enum class BnnAct { automatic, sign, approx, rsign, shift, insta_th, insta_th_plus, insta_prelu };
/// The straight-through gradient of sign: clipped identity (1 on |x| <= 1) or ApproxSign's
/// piecewise polynomial (2 - 2|x| on |x| <= 1). automatic: clipped for sign/shift, approx else.
enum class BnnSte { automatic, clipped, approx };
/// INSTA statistic s[n,c]: mean-diff = instance mean minus batch mean (running mean at test
/// time; the arXiv v1 description), cubic = E[x^3] over the feature map (the ICCV version).
/// automatic: mean-diff for insta-th / insta-prelu, cubic for insta-th-plus.
enum class InstaStat { automatic, mean_diff, cubic };
/// single: one stage; two-step: binary activations + real weights, then fully binary (ReActNet).
enum class BnnRecipe { single, two_step };

const std::map<std::string, BnnArch>& bnn_arch_names();
const std::map<std::string, BnnAct>& bnn_act_names();
const std::map<std::string, BnnSte>& bnn_ste_names();
const std::map<std::string, InstaStat>& insta_stat_names();
const std::map<std::string, BnnRecipe>& bnn_recipe_names();
std::string to_string(BnnArch a);
std::string to_string(BnnAct a);
std::string to_string(BnnSte s);
std::string to_string(InstaStat s);
std::string to_string(BnnRecipe r);

/// What defines the network (stored in the artifact; enough to rebuild it).
struct BnnNetConfig {
  BnnArch arch = BnnArch::bireal;
  BnnAct act = BnnAct::automatic;
  BnnSte ste = BnnSte::automatic;
  InstaStat insta_stat = InstaStat::automatic;
  int width = 16;            ///< channels of the first stage (doubles per stage)
  int stages = 3;            ///< stages; every stage after the first halves the resolution
  int depth = 1;             ///< binary blocks per stage
  double shift = 0.0;        ///< act shift: threshold delta of sign(x - delta), every layer
  std::vector<double> shift_per_layer;  ///< act shift: one delta per binary activation
  int insta_reduction = 4;   ///< INSTA-Th+ MLP reduction r (hidden = max(C / r, 2))
  bool binary_weights = true;  ///< false: binary activations with real weights (two-step step 1)
  // Set from the data:
  std::int64_t in_channels = 1, in_size = 28, classes = 10;
};

struct BnnOptions {
  BnnNetConfig net;
  BnnRecipe recipe = BnnRecipe::single;
  int epochs = 3;             ///< per stage (two-step trains 2 x epochs)
  int batch_size = 128;
  double lr = 1e-3;           ///< Adam learning rate, decayed linearly to 0 over each stage
  double weight_decay = 1e-5; ///< for stages with real weights; fully binary stages use 0
  std::int64_t train_limit = 0;  ///< use the first N training images (0: all)
  std::int64_t test_limit = 0;   ///< evaluate on the first N test images (0: all)
  std::string augment = "auto";  ///< crop+flip: auto (CIFAR only), on, off
  std::string teacher;        ///< a bnn-model to distil from (soft cross-entropy, no label term)
  std::string checkpoint;     ///< checkpoint file ("" : no periodic checkpoints)
  std::int64_t checkpoint_every = 0;  ///< steps between checkpoints (0: at each epoch end)
  std::string resume;         ///< checkpoint to resume from ("" : fresh start)
  bool check_packed = true;   ///< run the bit-packed path on the test set and compare (on the CPU)
  std::uint64_t seed = 0;
  /// Where training and evaluation run. The network is built on the CPU (so a seed gives the same
  /// initial weights on every device) and moved; batches are assembled on the CPU and moved.
  core::DeviceSpec device;
};

struct BnnLayerReport {
  std::string name;   ///< module path, e.g. "blocks.2.conv"
  std::string type;   ///< binary-conv, real-conv, binary-linear, real-linear, insta-mlp
  std::int64_t macs = 0;  ///< multiply-accumulates per image
  std::int64_t params = 0;
  bool binary = false;
};

struct BnnReport {
  std::string dataset;
  std::int64_t train_images = 0, test_images = 0;
  double test_accuracy = 0.0;
  double train_loss = 0.0, train_accuracy = 0.0;  ///< last epoch, running
  std::vector<double> epoch_loss, epoch_train_accuracy, epoch_test_accuracy;
  std::vector<double> epoch_seconds;  ///< wall time of each epoch, its test evaluation included
  std::int64_t bops = 0;   ///< binary MACs per image
  std::int64_t flops = 0;  ///< real-valued MACs per image (conv, linear, INSTA MLPs)
  double ops = 0.0;        ///< bops / 64 + flops
  std::int64_t size_bits = 0, binary_params = 0, real_params = 0;
  std::vector<BnnLayerReport> layers;
  std::vector<std::string> act_names;       ///< binary activation modules, in forward order
  std::vector<double> act_plus_fraction;    ///< fraction of +1 outputs on the test set
  std::vector<double> act_threshold_mean;   ///< mean threshold used (shift, alpha, INSTA)
  /// The bit-packed path (CPU kernels) vs the float-simulated network, both on the CPU: a
  /// CUDA-trained network is moved to the CPU for this check.
  bool packed_checked = false;
  double packed_accuracy = 0.0, packed_agreement = 0.0;
  bool packed_logits_equal = false;
  double train_seconds = 0.0;
  std::string device = "cpu";  ///< where it trained ("cpu", "cuda:0")
  std::int64_t steps = 0;
  bool stopped = false;          ///< stopped by SIGTERM/SIGUSR1 (a checkpoint was written)
  std::string checkpoint_written;
  std::string resumed_from;
};

struct BnnResult {
  BnnNetConfig net;            ///< resolved (act/ste/stat no longer automatic)
  core::NamedTensors weights;  ///< final parameters and buffers
  BnnReport report;
};

/// Resolves `automatic` choices and checks combinations; UsageError naming the option otherwise.
BnnNetConfig resolve_net(BnnNetConfig c);

/// Trains (or resumes) a network on `data` with `opt`. Checkpoints (opt.checkpoint) are written
/// with `prov`. Stops early, writing a checkpoint, when progress.stop_requested().
BnnResult train_bnn(const core::TrainTest& data, const BnnOptions& opt, const core::Provenance& prov,
                    core::Progress& progress);

/// Writes the bnn-model artifact (format 1.0) atomically.
void write_bnn_model(const std::filesystem::path& out, const BnnResult& r, const BnnOptions& opt,
                     const core::Provenance& prov);

/// A bnn-model read back: its network config and weights.
struct BnnModelFile {
  core::ArtifactHeader header;
  BnnNetConfig net;
  core::NamedTensors weights;
  double test_accuracy = 0.0;
  std::string dataset;
};
BnnModelFile read_bnn_model(const std::filesystem::path& path);

/// Predictions of a network on uint8 images [N, C, H, W] (normalised like training), on the CPU:
/// logits [N, classes]. packed = true runs binary layers through the XNOR-popcount kernels.
at::Tensor bnn_logits(const BnnNetConfig& net, const core::NamedTensors& weights,
                      const std::string& dataset, const at::Tensor& images, bool packed,
                      int batch_size = 500);

/// The run summary the front end prints: a human-readable table, or JSON (--json).
std::string bnn_report_text(const BnnResult& r);
std::string bnn_report_json(const BnnResult& r);

inline constexpr std::uint32_t kBnnModelVersion = 1;

}  // namespace kvlab::binary
