// snn-model artifact I/O (model_io.hpp).
#include "kvlab/snn/model_io.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "kvlab/core/error.hpp"
#include "kvlab/core/tensor_io.hpp"

namespace kvlab::snn {

const std::vector<std::string>& snn_model_report_keys() {
  static const std::vector<std::string> k = {
      "accuracy", "accuracy_count", "accuracy_first", "loss", "spikes_per_sample",
      "output_spikes_per_sample", "necessary_spikes_per_sample", "latency_mean",
      "silent_output_fraction", "steps_per_sample", "test_samples", "train_samples", "steps",
      "interrupted", "seconds"};
  return k;
}

const std::vector<std::string>& snn_model_history_keys() {
  static const std::vector<std::string> k = {
      "epoch", "lr", "train_loss", "train_accuracy", "train_spikes_per_sample", "test_accuracy",
      "test_spikes_per_sample", "test_latency_mean", "seconds"};
  return k;
}

void write_snn_model(const std::filesystem::path& out, const SnnTrainResult& r,
                     const SnnTrainOptions& o, const core::Provenance& prov) {
  core::ArtifactWriter w(out, kSnnModelKind, kSnnModelVersion, 0, prov);
  auto& p = w.params();
  const auto& n = r.net.neuron;
  p.set_attr("rule", rule_name(o.rule));
  p.set_attr("loss", loss_name(o.loss.kind));
  p.set_attr("neuron_model", neuron_model_name(r.net.model));
  p.set_attr("surrogate", surrogate_name(n.surrogate));
  p.set_attr("encoding", encoding_name(o.encoding));
  p.set_attr("dataset", r.dataset);
  p.set_attr("sizes", r.net.sizes);
  p.set_attr("time_steps", o.time_steps);
  p.set_attr("epochs", o.epochs);
  p.set_attr("batch_size", o.batch_size);
  p.set_attr("seed", static_cast<std::int64_t>(o.seed));
  const std::vector<std::pair<const char*, double>> nums = {
      {"alpha_i", n.alpha_i}, {"alpha_v", n.alpha_v}, {"beta_i", n.beta_i},
      {"beta_v", n.beta_v}, {"beta_bias", n.beta_bias}, {"surr_alpha", n.surr_alpha},
      {"surr_beta", n.surr_beta}, {"v_prime_min", n.v_prime_min}, {"lif_beta", n.lif_beta},
      {"threshold", n.threshold}, {"atan_alpha", n.atan_alpha},
      {"fast_sigmoid_slope", n.fast_sigmoid_slope}, {"lambda_act", o.rule_opt.lambda_act},
      {"lambda_timing", o.rule_opt.lambda_timing}, {"timing_penalty", o.rule_opt.timing_penalty},
      {"grad_clip", o.rule_opt.grad_clip}, {"softmax_beta", o.loss.softmax_beta},
      {"lambda_nospike", o.loss.lambda_nospike}, {"lr", o.lr}};
  for (const auto& [k, v] : nums) p.set_attr(k, v);
  p.set_attr("options_json", options_json(o));
  for (std::size_t l = 0; l < r.net.layers.size(); ++l) {
    h5::Group g = w.root().require_group(fmt::format("layers/{:03d}", l));
    core::write_tensor(g, "weight", r.net.layers[l].weight.to(at::kCPU).contiguous(), {"out", "in"});
    core::write_tensor(g, "bias", r.net.layers[l].bias.to(at::kCPU).contiguous(), {"out"});
  }
  h5::Group rep = w.root().require_group("report");
  const auto& m = r.test;
  rep.set_attr("accuracy", m.accuracy);
  rep.set_attr("accuracy_count", m.accuracy_count);
  rep.set_attr("accuracy_first", m.accuracy_first);
  rep.set_attr("loss", m.loss);
  rep.set_attr("spikes_per_sample", m.spikes_per_sample);
  rep.set_attr("output_spikes_per_sample", m.output_spikes_per_sample);
  rep.set_attr("necessary_spikes_per_sample", m.necessary_spikes_per_sample);
  rep.set_attr("latency_mean", m.latency_mean);
  rep.set_attr("silent_output_fraction", m.silent_output_fraction);
  rep.set_attr("steps_per_sample", m.steps_per_sample);
  rep.set_attr("test_samples", m.samples);
  rep.set_attr("train_samples", r.train_samples);
  rep.set_attr("steps", r.steps);
  rep.set_attr("interrupted", static_cast<std::int64_t>(r.interrupted));
  rep.set_attr("seconds", r.seconds);
  h5::Group hist = w.root().require_group("history");
  std::vector<std::vector<double>> cols(snn_model_history_keys().size());
  for (const auto& e : r.history) {
    const double row[] = {static_cast<double>(e.epoch), e.lr, e.train_loss, e.train_accuracy,
                          e.train_spikes_per_sample, e.test.accuracy, e.test.spikes_per_sample,
                          e.test.latency_mean, e.seconds};
    for (std::size_t i = 0; i < cols.size(); ++i) cols[i].push_back(row[i]);
  }
  for (std::size_t i = 0; i < cols.size(); ++i)
    hist.write_vec(snn_model_history_keys()[i], cols[i], {"epoch"});
  w.commit();
}

SnnModel read_snn_model(const std::filesystem::path& path) {
  const auto r = core::ArtifactReader::open(path, kSnnModelKind, 1, kSnnModelVersion);
  SnnModel m;
  m.header = r.header();
  const h5::Group p = r.params();
  const std::string rule = p.attr_string("rule"), loss = p.attr_string("loss");
  KVLAB_THROW_IF(!kRuleNames.count(rule), FormatError, "{}: unknown rule \"{}\" in /params",
                 path.string(), rule);
  KVLAB_THROW_IF(!kLossNames.count(loss), FormatError, "{}: unknown loss \"{}\" in /params",
                 path.string(), loss);
  m.rule = kRuleNames.at(rule);
  m.loss = kLossNames.at(loss);
  m.time_steps = p.attr_int("time_steps");
  auto& net = m.net;
  net.model = p.attr_string("neuron_model") == "lif" ? NeuronModel::lif : NeuronModel::antlr;
  const auto sizes = std::get<std::vector<std::int64_t>>(p.attr("sizes"));
  net.sizes = sizes;
  auto& n = net.neuron;
  n.alpha_i = p.attr_double("alpha_i");
  n.alpha_v = p.attr_double("alpha_v");
  n.beta_i = p.attr_double("beta_i");
  n.beta_v = p.attr_double("beta_v");
  n.beta_bias = p.attr_double("beta_bias");
  n.beta_auto = false;  // stored resolved
  n.surr_alpha = p.attr_double("surr_alpha");
  n.surr_beta = p.attr_double("surr_beta");
  n.v_prime_min = p.attr_double("v_prime_min");
  n.lif_beta = p.attr_double("lif_beta");
  n.threshold = p.attr_double("threshold");
  n.atan_alpha = p.attr_double("atan_alpha");
  n.fast_sigmoid_slope = p.attr_double("fast_sigmoid_slope");
  const std::string sg = p.attr_string("surrogate");
  KVLAB_THROW_IF(!kSurrogateNames.count(sg), FormatError, "{}: unknown surrogate \"{}\"",
                 path.string(), sg);
  n.surrogate = kSurrogateNames.at(sg);
  KVLAB_THROW_IF(sizes.size() < 2, FormatError, "{}: /params/sizes has {} entries, expected >= 2",
                 path.string(), sizes.size());
  for (std::size_t l = 0; l + 1 < sizes.size(); ++l) {
    const h5::Group g = r.root().group(fmt::format("layers/{:03d}", l));
    Layer layer;
    layer.weight = core::read_tensor(g, "weight", at::kFloat,
                                     std::vector<std::int64_t>{sizes[l + 1], sizes[l]});
    layer.bias = core::read_tensor(g, "bias", at::kFloat, std::vector<std::int64_t>{sizes[l + 1]});
    net.layers.push_back(std::move(layer));
  }
  const h5::Group rep = r.root().group("report");
  m.report.accuracy = rep.attr_double("accuracy");
  m.report.accuracy_count = rep.attr_double("accuracy_count");
  m.report.accuracy_first = rep.attr_double("accuracy_first");
  m.report.loss = rep.attr_double("loss");
  m.report.spikes_per_sample = rep.attr_double("spikes_per_sample");
  m.report.output_spikes_per_sample = rep.attr_double("output_spikes_per_sample");
  m.report.necessary_spikes_per_sample = rep.attr_double("necessary_spikes_per_sample");
  m.report.latency_mean = rep.attr_double("latency_mean");
  m.report.silent_output_fraction = rep.attr_double("silent_output_fraction");
  m.report.steps_per_sample = rep.attr_double("steps_per_sample");
  m.report.samples = rep.attr_int("test_samples");
  return m;
}

}  // namespace kvlab::snn
