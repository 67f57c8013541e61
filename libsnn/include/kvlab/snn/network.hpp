// Spiking networks of fully connected layers: the ANTLR neuron (Kim, Kim & Kim, NeurIPS 2020) and
// a standard LIF neuron, their forward simulation (vectorised across batch and neurons, the time
// recurrence fused in one loop per layer: a parallel C++ loop on CPU, one CUDA kernel on a GPU)
// and their hand-written backward passes:
//   - activation-based (surrogate exp(-surr_beta |V - 1|)), timing-based (-dL/dt / V'), and
//     ANTLR (their weighted sum), all with the reference's 'SRM' propagation (no gradient through
//     the reset), the timing penalty for silent neurons and elementwise gradient clamping;
//   - surrogate-gradient BPTT on the LIF neuron (fast sigmoid, atan, exp), as snnTorch computes it.
// Method details: ../shared/reference/bnn_snn.md section 3 and docs/snn-train.md.
//
// Tensor layout everywhere: [time, batch, features], float32, row-major.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace kvlab::snn {

/// Which neuron the layers use. The surrogate rule runs on the LIF neuron, the other rules on the
/// ANTLR neuron.
enum class NeuronModel { antlr, lif };
/// Learning rule.
enum class Rule { activation, timing, antlr, surrogate };
/// Surrogate derivative of the Heaviside spike function (LIF neuron; the ANTLR neuron always uses
/// the reference's exp).
enum class Surrogate { exp, fast_sigmoid, atan };

inline const std::map<std::string, Rule> kRuleNames = {{"activation", Rule::activation},
                                                       {"timing", Rule::timing},
                                                       {"antlr", Rule::antlr},
                                                       {"surrogate", Rule::surrogate}};
inline const std::map<std::string, Surrogate> kSurrogateNames = {
    {"exp", Surrogate::exp}, {"fast-sigmoid", Surrogate::fast_sigmoid}, {"atan", Surrogate::atan}};
const char* rule_name(Rule r);
const char* surrogate_name(Surrogate s);
const char* neuron_model_name(NeuronModel m);
NeuronModel neuron_model_for(Rule r);

/// Neuron constants; defaults are the official ANTLR code's (main.py) and snnTorch's Leaky.
struct NeuronOptions {
  // --- ANTLR neuron: I[t] = beta_i W s[t] + alpha_i I[t-1] (1 - s[t-1])
  //                   V[t] = beta_v I[t] + beta_bias b + alpha_v V[t-1] (1 - s[t-1]); s = V >= 1
  double alpha_i = 0.99;
  double alpha_v = 0.99;
  double beta_i = 1.0;
  double beta_v = 1.0;     ///< replaced by 1 / max_t eps(t) when beta_auto
  double beta_bias = 1.0;  ///< replaced by 1 / max_t eps(t) when beta_auto
  bool beta_auto = true;   ///< one input spike of weight 1 peaks exactly at the threshold
  double surr_alpha = 1.0;  ///< activation-path surrogate: surr_alpha exp(-surr_beta |V - 1|)
  double surr_beta = 3.0;
  double v_prime_min = 1e-2;  ///< clamp of the membrane slope V' used by the timing path
  // --- LIF neuron (snnTorch Leaky, subtract reset): U[t] = beta U[t-1] + W s[t] + b - theta s[t-1];
  //     s = U > theta
  double lif_beta = 0.95;
  double threshold = 1.0;
  Surrogate surrogate = Surrogate::atan;
  double atan_alpha = 2.0;            ///< snnTorch atan: (alpha/2) / (1 + (pi/2 alpha U)^2)
  double fast_sigmoid_slope = 25.0;   ///< snnTorch fast_sigmoid: 1 / (slope |U| + 1)^2
};

/// eps(t) = sum_{k<=t} alpha_i^k alpha_v^(t-k), t = 0..T-1: the PSP of one input spike (unscaled).
std::vector<double> psp_kernel(double alpha_i, double alpha_v, std::int64_t time_length);
/// Resolves beta_auto (beta_v = beta_bias = 1 / max eps over the simulated window).
NeuronOptions resolve_neuron(NeuronOptions n, std::int64_t time_length);

struct Layer {
  at::Tensor weight;  ///< float32 [out, in]
  at::Tensor bias;    ///< float32 [out]
};

struct Network {
  NeuronModel model = NeuronModel::antlr;
  NeuronOptions neuron;              ///< resolved (beta_auto applied)
  std::vector<std::int64_t> sizes;   ///< e.g. {784, 800, 10}
  std::vector<Layer> layers;
  std::int64_t outputs() const { return sizes.back(); }
};

/// Builds a network with PyTorch's default nn.Linear weight init, U(-1/sqrt(in), 1/sqrt(in)), or
/// N(0, weight_init_std) when weight_init_std > 0, and zero biases (as the reference). Uses the
/// default LibTorch generator (seeded by the front end).
Network make_network(const std::vector<std::int64_t>& sizes, NeuronModel model,
                     const NeuronOptions& neuron, std::int64_t time_length,
                     double weight_init_std = 0.0);

/// The states of one layer over the simulated window, each [term, batch, neurons]. For the LIF
/// neuron `v` is the membrane U and `i`, `v_prime` are undefined.
struct LayerTrace {
  at::Tensor i, v, v_prime, s;
};

/// How the per-layer time recurrences run. `fused`: one fused loop per layer and direction (a C++
/// loop parallel over neurons on CPU, one CUDA kernel per layer on a CUDA build's GPU); `aten`:
/// per-step ATen ops on any device (the reference the fused loops are tested against; slow on a
/// GPU: a few hundred kernel launches per layer). Where no fused loop applies (other devices,
/// non-contiguous tensors), `fused` falls back to `aten`.
enum class ScanImpl { fused, aten };

/// Which implementation `impl` resolves to for tensors on `device`: "cpu-fused", "cuda-fused" or
/// "aten".
const char* scan_backend(const at::Device& device, ScanImpl impl = ScanImpl::fused);

struct SimOptions {
  /// Stop once every output neuron of every sample has spiked (the reference does this for the
  /// latency loss). Time is simulated in chunks of `chunk` steps, so the stop is exact.
  bool early_stop = false;
  std::int64_t chunk = 32;
  ScanImpl scan = ScanImpl::fused;
};

struct ForwardResult {
  at::Tensor input;                 ///< [term, batch, in] (the simulated part of the input)
  std::vector<LayerTrace> layers;
  std::int64_t time_length = 0;     ///< T of the input
  std::int64_t term_length = 0;     ///< steps actually simulated (<= T)
  const at::Tensor& output() const { return layers.back().s; }
};

/// Simulates the network on `input` [T, batch, in] (0/1 spikes, float32, on the network's device).
ForwardResult forward(const Network& net, const at::Tensor& input, const SimOptions& opt = {});

struct RuleOptions {
  Rule rule = Rule::antlr;
  double lambda_act = 1.0;     ///< ANTLR weight of the activation path (hard-coded 1 in the reference)
  double lambda_timing = 1.0;  ///< ANTLR weight of the timing path (hard-coded 1 in the reference)
  double timing_penalty = 100.0;  ///< timing rule: weight push of silent neurons (0: off)
  double grad_clip = 1.0;         ///< elementwise clamp of every parameter gradient (0: off)
  bool keep_intermediates = false;  ///< fill Gradients::dl_dv / dl_ds / dl_dt (tests, analysis)
  ScanImpl scan = ScanImpl::fused;  ///< backward recurrences (SimOptions::scan)
};

struct Gradients {
  std::vector<at::Tensor> weight, bias;  ///< per layer, same shapes as the parameters
  // With keep_intermediates: per layer [term, batch, neurons] (undefined where a rule has none).
  std::vector<at::Tensor> dl_dv;  ///< dL/dV[t] before propagation through time
  std::vector<at::Tensor> dl_ds;  ///< dL/dS[t] arriving from above (activation path)
  std::vector<at::Tensor> dl_dt;  ///< dL/dT[t] arriving from above (timing path)
};

/// The hand-written backward pass of `rule`. `dl_ds` and `dl_dt` are the loss gradients with
/// respect to the output layer's spikes and spike times, [term, batch, outputs]; either may be
/// undefined (zero). The rule must match the network's neuron model (UsageError otherwise).
Gradients backward(const Network& net, const ForwardResult& fw, const at::Tensor& dl_ds,
                   const at::Tensor& dl_dt, const RuleOptions& opt);

/// The surrogate derivative sigma'(x) used by the LIF neuron, x = U - theta.
at::Tensor lif_surrogate_grad(const at::Tensor& x, const NeuronOptions& n);

}  // namespace kvlab::snn
