// snn-train's training loop (trainer.hpp): data, Adam + StepLR, checkpoints, evaluation.
#include "kvlab/snn/trainer.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>

#include "kvlab/core/checkpoint.hpp"
#include "kvlab/core/datasets.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/core/log.hpp"
#include "kvlab/core/nmnist.hpp"

namespace kvlab::snn {

namespace fs = std::filesystem;

// ------------------------------------------------------------------------------------ metrics

void MetricsAccumulator::add(const ForwardResult& fw, const at::Tensor& labels, double loss) {
  const at::Tensor out = fw.output();
  const std::int64_t term = fw.term_length, B = out.size(1);
  const at::Tensor lab = labels.to(out.device(), at::kLong);
  correct_count_ += (predict_count(out) == lab).sum().item<std::int64_t>();
  correct_first_ += (predict_first(out) == lab).sum().item<std::int64_t>();
  // First output spike of each sample (term when none), as calc_first_stime.
  const at::Tensor fst = first_spike_times(out);                          // [B, C], -1 silent
  const at::Tensor any = (fst >= 0).any(1);                               // [B]
  const at::Tensor first = at::where(fst >= 0, fst, at::full_like(fst, term)).amin(1);  // [B]
  with_output_ += any.sum().item<std::int64_t>();
  latency_sum_ += at::where(any, first, at::zeros_like(first)).sum().item<double>();
  const at::Tensor steps = at::arange(term, first.options()).view({term, 1});
  const at::Tensor upto = (steps <= first.view({1, B})).to(at::kFloat);  // [term, B]
  for (std::size_t l = 0; l + 1 < fw.layers.size(); ++l) {
    const at::Tensor per_step = fw.layers[l].s.sum(2);  // [term, B]
    spikes_ += per_step.sum().item<double>();
    necessary_ += (per_step * upto).sum().item<double>();
  }
  out_spikes_ += out.sum().item<double>();
  loss_sum_ += loss * static_cast<double>(B);
  steps_ += static_cast<double>(term) * static_cast<double>(B);
  n_ += B;
}

EvalMetrics MetricsAccumulator::finish() const {
  EvalMetrics m;
  m.samples = n_;
  if (n_ == 0) return m;
  const double n = static_cast<double>(n_);
  m.loss = loss_sum_ / n;
  m.accuracy_count = static_cast<double>(correct_count_) / n;
  m.accuracy_first = static_cast<double>(correct_first_) / n;
  m.accuracy = kind_ == LossKind::latency ? m.accuracy_first : m.accuracy_count;
  m.spikes_per_sample = spikes_ / n;
  m.output_spikes_per_sample = out_spikes_ / n;
  m.necessary_spikes_per_sample = necessary_ / n;
  m.latency_mean = with_output_ > 0 ? latency_sum_ / static_cast<double>(with_output_) : 0.0;
  m.silent_output_fraction = static_cast<double>(n_ - with_output_) / n;
  m.steps_per_sample = steps_ / n;
  return m;
}

// --------------------------------------------------------------------------------------- data

namespace {

/// One split of either dataset, producing encoded input batches [T, B, F] on demand.
struct Split {
  core::ImageDataset images;  // IDX / CIFAR
  core::NmnistDataset events;  // N-MNIST
  bool nmnist = false;
  std::int64_t size() const { return nmnist ? events.size() : images.size(); }
  std::int64_t features() const {
    if (nmnist) return core::kNmnistFeatures;
    return images.images.numel() / std::max<std::int64_t>(images.size(), 1);
  }
  at::Tensor labels(const std::vector<std::int64_t>& idx) const {
    const at::Tensor i = at::tensor(idx, at::kLong);
    return (nmnist ? events.labels : images.labels).index_select(0, i);
  }
  at::Tensor input(const std::vector<std::int64_t>& idx, const SnnTrainOptions& o) const {
    if (nmnist) return events.batch(idx);
    const at::Tensor i = at::tensor(idx, at::kLong);
    const at::Tensor x =
        images.images.index_select(0, i).reshape({static_cast<std::int64_t>(idx.size()), -1})
            .to(at::kFloat) / 255.0;
    return o.encoding == Encoding::latency
               ? latency_encode(x, o.time_steps, o.max_input_timing, o.min_input_timing)
               : rate_encode(x, o.time_steps, o.max_rate);
  }
};

struct Data {
  Split train, test;
  std::string name;
  std::vector<std::string> files;
  std::int64_t classes = 10;
};

Data load_data(const SnnTrainOptions& o) {
  Data d;
  const fs::path dir(o.data);
  KVLAB_THROW_IF(!fs::is_directory(dir), UsageError,
                 "--data {}: not a directory (expected an IDX dataset directory such as {} or an "
                 "N-MNIST root with Train/ and Test/)",
                 o.data, core::kDefaultFashionMnistDir);
  if (core::is_nmnist_root(dir)) {
    d.name = "n-mnist";
    d.train.nmnist = d.test.nmnist = true;
    d.train.events =
        core::read_nmnist_split(dir / "Train", o.time_steps, o.nmnist_window_ms, o.train_limit);
    d.test.events =
        core::read_nmnist_split(dir / "Test", o.time_steps, o.nmnist_window_ms, o.test_limit);
    d.files = {(dir / "Train").string(), (dir / "Test").string()};
    return d;
  }
  core::TrainTest tt = core::load_image_dataset(dir);
  d.name = tt.train.name;
  d.classes = tt.train.classes;
  d.train.images = tt.train.head(o.train_limit);
  d.test.images = tt.test.head(o.test_limit);
  d.files = tt.train.files;
  d.files.insert(d.files.end(), tt.test.files.begin(), tt.test.files.end());
  return d;
}

// ------------------------------------------------------------------------------------- Adam

// PyTorch's torch.optim.Adam (betas 0.9/0.999, eps 1e-8, L2 weight decay added to the gradient).
struct Adam {
  std::vector<at::Tensor> m, v;
  std::int64_t step = 0;
};

std::vector<at::Tensor*> params_of(Network& net) {
  std::vector<at::Tensor*> p;
  for (auto& l : net.layers) {
    p.push_back(&l.weight);
    p.push_back(&l.bias);
  }
  return p;
}

std::vector<std::string> param_names(const Network& net) {
  std::vector<std::string> n;
  for (std::size_t l = 0; l < net.layers.size(); ++l) {
    n.push_back(fmt::format("layers.{}.weight", l));
    n.push_back(fmt::format("layers.{}.bias", l));
  }
  return n;
}

void adam_step(Adam& a, const std::vector<at::Tensor*>& params, const std::vector<at::Tensor>& grads,
               double lr, double weight_decay) {
  constexpr double b1 = 0.9, b2 = 0.999, eps = 1e-8;
  ++a.step;
  const double bc1 = 1 - std::pow(b1, static_cast<double>(a.step));
  const double bc2 = 1 - std::pow(b2, static_cast<double>(a.step));
  for (std::size_t i = 0; i < params.size(); ++i) {
    at::Tensor g = grads[i];
    if (weight_decay != 0) g = g + *params[i] * weight_decay;
    a.m[i].mul_(b1).add_(g, 1 - b1);
    a.v[i].mul_(b2).addcmul_(g, g, 1 - b2);
    const at::Tensor denom = (a.v[i].sqrt() / std::sqrt(bc2)).add_(eps);
    params[i]->addcdiv_(a.m[i], denom, -lr / bc1);
  }
}

std::vector<at::Tensor> flat_grads(const Gradients& g) {
  std::vector<at::Tensor> out;
  for (std::size_t l = 0; l < g.weight.size(); ++l) {
    out.push_back(g.weight[l]);
    out.push_back(g.bias[l]);
  }
  return out;
}

void validate(const SnnTrainOptions& o) {
  KVLAB_THROW_IF(o.time_steps < 1 || o.time_steps > 100000, UsageError,
                 "--time-steps {}: expected 1..100000", o.time_steps);
  KVLAB_THROW_IF(o.batch_size < 1 || o.test_batch_size < 1, UsageError,
                 "--batch-size / --test-batch-size must be >= 1");
  KVLAB_THROW_IF(o.epochs < 0, UsageError, "--epochs {}: expected >= 0", o.epochs);
  KVLAB_THROW_IF(o.lr_step < 1, UsageError, "--lr-step {}: expected >= 1", o.lr_step);
  KVLAB_THROW_IF(o.encoding == Encoding::latency &&
                     (o.min_input_timing >= o.time_steps || o.max_input_timing >= o.time_steps),
                 UsageError,
                 "--min-input-timing {} / --max-input-timing {}: latency-coded inputs must spike "
                 "within --time-steps {}",
                 o.min_input_timing, o.max_input_timing, o.time_steps);
  for (auto h : o.hidden)
    KVLAB_THROW_IF(h < 1 || h > 1000000, UsageError, "--hidden {}: expected 1..1000000", h);
}

at::Device torch_device(const core::DeviceSpec& d) {
  return d.cuda ? at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(d.index)) : at::Device(at::kCPU);
}

std::vector<std::int64_t> permutation(std::int64_t n, std::uint64_t seed, std::int64_t epoch) {
  std::vector<std::int64_t> p(static_cast<std::size_t>(n));
  std::iota(p.begin(), p.end(), 0);
  std::mt19937_64 rng(seed * 1000003ULL + static_cast<std::uint64_t>(epoch));
  std::shuffle(p.begin(), p.end(), rng);
  return p;
}

SimOptions sim_options(const SnnTrainOptions& o) {
  SimOptions s;
  s.early_stop = o.early_stop && o.loss.kind == LossKind::latency;
  return s;
}

EvalMetrics evaluate(const Network& net, const Split& split, const SnnTrainOptions& o,
                     at::Device dev, core::Progress& progress) {
  MetricsAccumulator acc(o.loss.kind);
  const std::int64_t n = split.size();
  progress.begin("evaluate", (n + o.test_batch_size - 1) / o.test_batch_size, "batches");
  std::int64_t done = 0;
  for (std::int64_t s = 0; s < n; s += o.test_batch_size) {
    std::vector<std::int64_t> idx(static_cast<std::size_t>(std::min(o.test_batch_size, n - s)));
    std::iota(idx.begin(), idx.end(), s);
    const at::Tensor x = split.input(idx, o).to(dev);
    const at::Tensor y = split.labels(idx).to(dev);
    const ForwardResult fw = forward(net, x, sim_options(o));
    const LossResult lr = compute_loss(fw.output(), y, o.loss, o.time_steps);
    acc.add(fw, y, lr.loss);
    progress.update(++done);
  }
  const EvalMetrics m = acc.finish();
  progress.end({{"acc", m.accuracy}, {"spikes", m.spikes_per_sample}, {"latency", m.latency_mean}});
  return m;
}

nlohmann::json metrics_json(const EvalMetrics& m) {
  return {{"samples", m.samples}, {"loss", m.loss}, {"accuracy", m.accuracy},
          {"accuracy_count", m.accuracy_count}, {"accuracy_first", m.accuracy_first},
          {"spikes_per_sample", m.spikes_per_sample},
          {"output_spikes_per_sample", m.output_spikes_per_sample},
          {"necessary_spikes_per_sample", m.necessary_spikes_per_sample},
          {"latency_mean", m.latency_mean}, {"silent_output_fraction", m.silent_output_fraction},
          {"steps_per_sample", m.steps_per_sample}};
}

EvalMetrics metrics_from_json(const nlohmann::json& j) {
  EvalMetrics m;
  m.samples = j.at("samples");
  m.loss = j.at("loss");
  m.accuracy = j.at("accuracy");
  m.accuracy_count = j.at("accuracy_count");
  m.accuracy_first = j.at("accuracy_first");
  m.spikes_per_sample = j.at("spikes_per_sample");
  m.output_spikes_per_sample = j.at("output_spikes_per_sample");
  m.necessary_spikes_per_sample = j.at("necessary_spikes_per_sample");
  m.latency_mean = j.at("latency_mean");
  m.silent_output_fraction = j.at("silent_output_fraction");
  m.steps_per_sample = j.at("steps_per_sample");
  return m;
}

struct TrainState {
  std::int64_t epoch = 0;          // epochs completed
  std::int64_t step_in_epoch = 0;  // batches of the current epoch done
  // running sums of the current epoch (kept across a resume)
  double loss_sum = 0, correct = 0, spikes = 0, seen = 0, epoch_seconds = 0;
};

void save_checkpoint(const SnnTrainOptions& o, const Network& net, const Adam& adam,
                     const TrainState& st, const std::vector<EpochRecord>& history,
                     const core::Provenance& prov) {
  core::Checkpoint c;
  c.trainer = "snn-train";
  c.epoch = st.epoch;
  c.step = adam.step;
  c.step_in_epoch = st.step_in_epoch;
  c.options_json = options_json(o);
  const auto names = param_names(net);
  auto params = params_of(const_cast<Network&>(net));
  for (std::size_t i = 0; i < names.size(); ++i) {
    c.model.emplace_back(names[i], *params[i]);
    c.optimizer.emplace_back("m." + names[i], adam.m[i]);
    c.optimizer.emplace_back("v." + names[i], adam.v[i]);
  }
  c.torch_rng = core::torch_rng_state();
  c.scalars = {{"loss_sum", st.loss_sum}, {"correct", st.correct}, {"spikes", st.spikes},
               {"seen", st.seen}, {"epoch_seconds", st.epoch_seconds}};
  nlohmann::json h = nlohmann::json::array();
  for (const auto& r : history)
    h.push_back({{"epoch", r.epoch}, {"lr", r.lr}, {"train_loss", r.train_loss},
                 {"train_accuracy", r.train_accuracy},
                 {"train_spikes_per_sample", r.train_spikes_per_sample},
                 {"test", metrics_json(r.test)}, {"seconds", r.seconds}});
  c.text = {{"history", h.dump()}};
  core::write_checkpoint(o.checkpoint, c, prov);
}

void load_checkpoint(const fs::path& path, const SnnTrainOptions& o, Network& net, Adam& adam,
                     TrainState& st, std::vector<EpochRecord>& history) {
  const core::Checkpoint c = core::read_checkpoint(path, "snn-train");
  KVLAB_THROW_IF(c.options_json != options_json(o), UsageError,
                 "--resume {}: the checkpoint was written with different options ({}) than this "
                 "run ({}); rerun with the same options or without --resume",
                 path.string(), c.options_json, options_json(o));
  const auto names = param_names(net);
  auto params = params_of(net);
  core::NamedTensors model, optim;
  for (std::size_t i = 0; i < names.size(); ++i) {
    model.emplace_back(names[i], *params[i]);
    optim.emplace_back("m." + names[i], adam.m[i]);
    optim.emplace_back("v." + names[i], adam.v[i]);
  }
  core::load_named_tensors(c.model, model, path.string());
  core::load_named_tensors(c.optimizer, optim, path.string());
  if (c.torch_rng.defined()) core::set_torch_rng_state(c.torch_rng);
  adam.step = c.step;
  st.epoch = c.epoch;
  st.step_in_epoch = c.step_in_epoch;
  auto sc = [&](const char* k) {
    auto it = c.scalars.find(k);
    return it == c.scalars.end() ? 0.0 : it->second;
  };
  st.loss_sum = sc("loss_sum");
  st.correct = sc("correct");
  st.spikes = sc("spikes");
  st.seen = sc("seen");
  st.epoch_seconds = sc("epoch_seconds");
  history.clear();
  if (auto it = c.text.find("history"); it != c.text.end()) {
    for (const auto& r : nlohmann::json::parse(it->second)) {
      EpochRecord e;
      e.epoch = r.at("epoch");
      e.lr = r.at("lr");
      e.train_loss = r.at("train_loss");
      e.train_accuracy = r.at("train_accuracy");
      e.train_spikes_per_sample = r.at("train_spikes_per_sample");
      e.test = metrics_from_json(r.at("test"));
      e.seconds = r.at("seconds");
      history.push_back(e);
    }
  }
}

}  // namespace

std::string options_json(const SnnTrainOptions& o) {
  // Everything that changes the training trajectory (not: epochs, checkpointing, device).
  const auto& n = o.neuron;
  const auto& r = o.rule_opt;
  const auto& l = o.loss;
  nlohmann::json j = {
      {"data", o.data}, {"hidden", o.hidden}, {"rule", rule_name(o.rule)},
      {"loss", loss_name(l.kind)}, {"softmax_beta", l.softmax_beta},
      {"lambda_nospike", l.lambda_nospike}, {"max_target_spikes", l.max_target_spikes},
      {"min_target_spikes", l.min_target_spikes}, {"alpha_exp", l.alpha_exp},
      {"alpha_extend", l.alpha_extend}, {"encoding", encoding_name(o.encoding)},
      {"max_input_timing", o.max_input_timing}, {"min_input_timing", o.min_input_timing},
      {"max_rate", o.max_rate}, {"nmnist_window_ms", o.nmnist_window_ms},
      {"time_steps", o.time_steps}, {"batch_size", o.batch_size}, {"lr", o.lr},
      {"weight_decay", o.weight_decay}, {"lr_step", o.lr_step}, {"lr_gamma", o.lr_gamma},
      {"train_limit", o.train_limit}, {"weight_init_std", o.weight_init_std},
      {"early_stop", o.early_stop}, {"alpha_i", n.alpha_i}, {"alpha_v", n.alpha_v},
      {"beta_i", n.beta_i}, {"beta_v", n.beta_v}, {"beta_bias", n.beta_bias},
      {"beta_auto", n.beta_auto}, {"surr_alpha", n.surr_alpha}, {"surr_beta", n.surr_beta},
      {"lif_beta", n.lif_beta}, {"threshold", n.threshold},
      {"surrogate", surrogate_name(n.surrogate)}, {"atan_alpha", n.atan_alpha},
      {"fast_sigmoid_slope", n.fast_sigmoid_slope}, {"lambda_act", r.lambda_act},
      {"lambda_timing", r.lambda_timing}, {"timing_penalty", r.timing_penalty},
      {"grad_clip", r.grad_clip}, {"seed", o.seed}};
  return j.dump();
}

SnnTrainResult train_snn(const SnnTrainOptions& opt, core::Progress& progress,
                         const core::Provenance& prov) {
  validate(opt);
  const auto t_start = std::chrono::steady_clock::now();
  SnnTrainOptions o = opt;
  o.rule_opt.rule = o.rule;
  if ((o.rule == Rule::activation || o.rule == Rule::surrogate) && o.loss.kind == LossKind::latency)
    log::warn("--rule {} with --loss latency: the activation path only sees the no-spike "
              "penalty of the latency loss (as in the reference); consider --loss count",
              rule_name(o.rule));
  if (o.rule == Rule::timing && o.loss.kind == LossKind::count)
    log::warn("--rule timing with --loss count: the count loss has no spike-time gradient, so "
              "only the silent-neuron penalty trains the network");

  progress.stage("loading data", 1, 3);
  Data data = load_data(o);
  SnnTrainResult res;
  res.dataset = data.name;
  res.data_files = data.files;
  res.train_samples = data.train.size();
  KVLAB_THROW_IF(data.train.size() == 0 || data.test.size() == 0, FormatError,
                 "--data {}: the train or test split is empty", o.data);
  log::info("snn-train: {} ({} train / {} test samples, {} features), rule {}, loss {}, T={}",
            data.name, data.train.size(), data.test.size(), data.train.features(),
            rule_name(o.rule), loss_name(o.loss.kind), o.time_steps);

  std::vector<std::int64_t> sizes = {data.train.features()};
  sizes.insert(sizes.end(), o.hidden.begin(), o.hidden.end());
  sizes.push_back(data.classes);
  const at::Device dev = torch_device(o.device);
  Network net = make_network(sizes, neuron_model_for(o.rule), o.neuron, o.time_steps,
                             o.weight_init_std);
  for (auto* p : params_of(net)) *p = p->to(dev);
  Adam adam;
  for (auto* p : params_of(net)) {
    adam.m.push_back(at::zeros_like(*p));
    adam.v.push_back(at::zeros_like(*p));
  }
  TrainState st;
  std::vector<EpochRecord> history;
  if (const auto rp = core::resolve_resume(o.resume, o.checkpoint)) {
    load_checkpoint(*rp, o, net, adam, st, history);
    res.resumed_from = rp->string();
    log::info("snn-train: resumed from {} at epoch {} (+{} batches), step {}", rp->string(),
              st.epoch, st.step_in_epoch, adam.step);
  }

  const auto params = params_of(net);
  const std::int64_t n_train = data.train.size();
  const std::int64_t batches = (n_train + o.batch_size - 1) / o.batch_size;
  const SimOptions sim = sim_options(o);
  std::int64_t since_ckpt = 0;
  progress.stage("training", 2, 3);
  for (; st.epoch < o.epochs; ++st.epoch) {
    const double lr = o.lr * std::pow(o.lr_gamma, static_cast<double>(st.epoch / o.lr_step));
    const auto perm = permutation(n_train, o.seed, st.epoch);
    const auto t_epoch = std::chrono::steady_clock::now();
    progress.begin(fmt::format("epoch {}/{}", st.epoch + 1, o.epochs), batches, "batches");
    for (std::int64_t b = st.step_in_epoch; b < batches; ++b) {
      const std::int64_t s0 = b * o.batch_size, len = std::min(o.batch_size, n_train - s0);
      std::vector<std::int64_t> idx(perm.begin() + s0, perm.begin() + s0 + len);
      const at::Tensor x = data.train.input(idx, o).to(dev);
      const at::Tensor y = data.train.labels(idx).to(dev);
      const ForwardResult fw = forward(net, x, sim);
      const LossResult loss = compute_loss(fw.output(), y, o.loss, o.time_steps);
      const Gradients g = backward(net, fw, loss.dl_ds, loss.dl_dt, o.rule_opt);
      adam_step(adam, params, flat_grads(g), lr, o.weight_decay);
      KVLAB_THROW_IF(!std::isfinite(loss.loss), Error,
                     "snn-train: the loss became {} at step {}; lower --lr", loss.loss, adam.step);
      const at::Tensor pred =
          o.loss.kind == LossKind::latency ? predict_first(fw.output()) : predict_count(fw.output());
      st.loss_sum += loss.loss * static_cast<double>(len);
      st.correct += (pred == y).sum().item<double>();
      for (std::size_t l = 0; l + 1 < fw.layers.size(); ++l)
        st.spikes += fw.layers[l].s.sum().item<double>();
      st.seen += static_cast<double>(len);
      st.step_in_epoch = b + 1;
      progress.update(b + 1, {{"loss", st.loss_sum / st.seen}, {"acc", st.correct / st.seen},
                              {"spikes", st.spikes / st.seen}});
      ++since_ckpt;
      const bool stop = progress.stop_requested();
      if (!o.checkpoint.empty() &&
          (stop || (o.checkpoint_every > 0 && since_ckpt >= o.checkpoint_every))) {
        st.epoch_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t_epoch).count();
        save_checkpoint(o, net, adam, st, history, prov);
        st.epoch_seconds -= std::chrono::duration<double>(std::chrono::steady_clock::now() - t_epoch).count();
        since_ckpt = 0;
      }
      if (stop) {
        progress.end();
        res.interrupted = true;
        log::warn("snn-train: stop requested; {} at epoch {} batch {}",
                  o.checkpoint.empty() ? "no --checkpoint path, nothing saved"
                                       : "checkpoint written to " + o.checkpoint,
                  st.epoch, b + 1);
        break;
      }
    }
    if (res.interrupted) break;
    progress.end({{"loss", st.loss_sum / std::max(st.seen, 1.0)},
                  {"acc", st.correct / std::max(st.seen, 1.0)}});
    EpochRecord rec;
    rec.epoch = st.epoch + 1;
    rec.lr = lr;
    rec.train_loss = st.loss_sum / std::max(st.seen, 1.0);
    rec.train_accuracy = st.correct / std::max(st.seen, 1.0);
    rec.train_spikes_per_sample = st.spikes / std::max(st.seen, 1.0);
    rec.test = evaluate(net, data.test, o, dev, progress);
    rec.seconds = st.epoch_seconds +
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - t_epoch).count();
    log::info("snn-train: epoch {}/{}: train loss {:.4f} acc {:.4f} | test acc {:.4f} spikes/sample "
              "{:.1f} latency {:.1f} | {:.1f} s",
              rec.epoch, o.epochs, rec.train_loss, rec.train_accuracy, rec.test.accuracy,
              rec.test.spikes_per_sample, rec.test.latency_mean, rec.seconds);
    history.push_back(rec);
    st = TrainState{st.epoch, 0};
    if (!o.checkpoint.empty()) {
      TrainState next = st;
      next.epoch = st.epoch + 1;
      save_checkpoint(o, net, adam, next, history, prov);
      since_ckpt = 0;
    }
  }

  res.steps = adam.step;
  res.history = history;
  if (!res.interrupted) {
    progress.stage("final evaluation", 3, 3);
    res.test = history.empty() || o.epochs == 0 ? evaluate(net, data.test, o, dev, progress)
                                                : history.back().test;
  }
  for (auto* p : params_of(net)) *p = p->to(at::kCPU);
  res.net = std::move(net);
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return res;
}

}  // namespace kvlab::snn
