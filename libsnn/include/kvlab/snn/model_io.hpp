// The `snn-model` artifact: a trained spiking network with its neuron constants, the options that
// produced it and its evaluation report. Schema (docs/formats/snn-model.md):
//
//   /params                 attrs: rule, loss, neuron_model, surrogate, encoding, dataset (str);
//                           sizes (int list); time_steps, epochs, batch_size, seed (int);
//                           alpha_i, alpha_v, beta_i, beta_v, beta_bias, surr_alpha, surr_beta,
//                           v_prime_min, lif_beta, threshold, atan_alpha, fast_sigmoid_slope,
//                           lambda_act, lambda_timing, timing_penalty, grad_clip, softmax_beta,
//                           lambda_nospike, lr (float); options_json (str)
//   /layers/<NNN>/weight    float32 [out, in]   axis_labels ["out", "in"]
//   /layers/<NNN>/bias      float32 [out]       axis_labels ["out"]
//   /report                 attrs: accuracy, accuracy_count, accuracy_first, loss,
//                           spikes_per_sample, output_spikes_per_sample,
//                           necessary_spikes_per_sample, latency_mean, silent_output_fraction,
//                           steps_per_sample (float); test_samples, train_samples, steps,
//                           interrupted (int); seconds (float)
//   /history/<name>         float64 [epochs] per epoch: epoch, lr, train_loss, train_accuracy,
//                           train_spikes_per_sample, test_accuracy, test_spikes_per_sample,
//                           test_latency_mean, seconds
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "kvlab/core/artifact.hpp"
#include "kvlab/snn/trainer.hpp"

namespace kvlab::snn {

inline constexpr const char* kSnnModelKind = "snn-model";
inline constexpr std::uint32_t kSnnModelVersion = 1;

/// Every /report attribute the writer emits (docs/formats/snn-model.md lists the same; a test
/// checks both).
const std::vector<std::string>& snn_model_report_keys();
/// Every /history dataset the writer emits.
const std::vector<std::string>& snn_model_history_keys();

void write_snn_model(const std::filesystem::path& out, const SnnTrainResult& r,
                     const SnnTrainOptions& opt, const core::Provenance& prov);

struct SnnModel {
  core::ArtifactHeader header;
  Network net;
  Rule rule = Rule::antlr;
  LossKind loss = LossKind::latency;
  std::int64_t time_steps = 0;
  EvalMetrics report;
};

/// Reads an snn-model artifact (FormatError on the wrong kind/version or malformed layers).
SnnModel read_snn_model(const std::filesystem::path& path);

}  // namespace kvlab::snn
