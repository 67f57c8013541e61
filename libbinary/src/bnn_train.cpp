// bnn-train: modules, training loop, evaluation, cost report, packed check and the bnn-model
// artifact. The only translation unit of libbinary's BNN half that includes <torch/torch.h>.
#include <torch/torch.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <numeric>
#include <random>
#include <sstream>

#include "kvlab/binary/bnn.hpp"
#include "kvlab/binary/bnn_packed.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/core/tensor_io.hpp"

namespace kvlab::binary {

// ------------------------------------------------------------------------------ names --

const std::map<std::string, BnnArch>& bnn_arch_names() {
  static const std::map<std::string, BnnArch> m = {{"real", BnnArch::real},
                                                   {"xnor", BnnArch::xnor},
                                                   {"bireal", BnnArch::bireal},
                                                   {"reactnet", BnnArch::reactnet}};
  return m;
}
const std::map<std::string, BnnAct>& bnn_act_names() {
  static const std::map<std::string, BnnAct> m = {
      {"auto", BnnAct::automatic},       {"sign", BnnAct::sign},
      {"approx", BnnAct::approx},        {"rsign", BnnAct::rsign},
      {"shift", BnnAct::shift},          {"insta-th", BnnAct::insta_th},
      {"insta-th-plus", BnnAct::insta_th_plus}, {"insta-prelu", BnnAct::insta_prelu}};
  return m;
}
const std::map<std::string, BnnSte>& bnn_ste_names() {
  static const std::map<std::string, BnnSte> m = {
      {"auto", BnnSte::automatic}, {"clipped", BnnSte::clipped}, {"approx", BnnSte::approx}};
  return m;
}
const std::map<std::string, InstaStat>& insta_stat_names() {
  static const std::map<std::string, InstaStat> m = {{"auto", InstaStat::automatic},
                                                     {"mean-diff", InstaStat::mean_diff},
                                                     {"cubic", InstaStat::cubic}};
  return m;
}
const std::map<std::string, BnnRecipe>& bnn_recipe_names() {
  static const std::map<std::string, BnnRecipe> m = {{"single", BnnRecipe::single},
                                                     {"two-step", BnnRecipe::two_step}};
  return m;
}

namespace {
template <class E>
std::string name_of(const std::map<std::string, E>& m, E v) {
  for (const auto& [k, x] : m)
    if (x == v) return k;
  return "?";
}
template <class E>
E parse_name(const std::map<std::string, E>& m, const std::string& s, const std::string& file,
             const char* what) {
  auto it = m.find(s);
  KVLAB_THROW_IF(it == m.end(), FormatError, "{}: unknown {} \"{}\"; upgrade kvlab", file, what, s);
  return it->second;
}
}  // namespace

std::string to_string(BnnArch a) { return name_of(bnn_arch_names(), a); }
std::string to_string(BnnAct a) { return a == BnnAct::automatic ? "none" : name_of(bnn_act_names(), a); }
std::string to_string(BnnSte s) { return name_of(bnn_ste_names(), s); }
std::string to_string(InstaStat s) { return name_of(insta_stat_names(), s); }
std::string to_string(BnnRecipe r) { return name_of(bnn_recipe_names(), r); }

BnnNetConfig resolve_net(BnnNetConfig c) {
  KVLAB_THROW_IF(c.width < 1 || c.stages < 1 || c.depth < 1, UsageError,
                 "--width, --stages and --depth must be >= 1");
  KVLAB_THROW_IF(c.in_size >> (c.stages - 1) < 2, UsageError,
                 "--stages {}: {}x{} images become smaller than 2x2; use fewer stages", c.stages,
                 c.in_size, c.in_size);
  if (c.arch == BnnArch::real) {
    KVLAB_THROW_IF(c.act != BnnAct::automatic, UsageError,
                   "--act {}: the real-valued reference net (--arch real) has no binary "
                   "activations; drop --act",
                   to_string(c.act));
    c.ste = BnnSte::automatic;
    c.insta_stat = InstaStat::automatic;
    return c;
  }
  if (c.act == BnnAct::automatic) {
    c.act = c.arch == BnnArch::xnor ? BnnAct::sign
            : c.arch == BnnArch::bireal ? BnnAct::approx
                                        : BnnAct::rsign;
  }
  KVLAB_THROW_IF(c.act == BnnAct::insta_prelu && c.arch != BnnArch::reactnet, UsageError,
                 "--act insta-prelu replaces ReActNet's RPReLU; use it with --arch reactnet");
  KVLAB_THROW_IF(c.act != BnnAct::shift && (c.shift != 0.0 || !c.shift_per_layer.empty()),
                 UsageError, "--shift/--shift-per-layer need --act shift (got --act {})",
                 to_string(c.act));
  if (c.ste == BnnSte::automatic)
    c.ste = (c.act == BnnAct::sign || c.act == BnnAct::shift) ? BnnSte::clipped : BnnSte::approx;
  const bool insta = c.act == BnnAct::insta_th || c.act == BnnAct::insta_th_plus ||
                     c.act == BnnAct::insta_prelu;
  if (!insta) {
    KVLAB_THROW_IF(c.insta_stat != InstaStat::automatic, UsageError,
                   "--insta-stat needs an INSTA binarizer (--act insta-th, insta-th-plus or "
                   "insta-prelu)");
  } else if (c.insta_stat == InstaStat::automatic) {
    c.insta_stat = c.act == BnnAct::insta_th_plus ? InstaStat::cubic : InstaStat::mean_diff;
  }
  return c;
}

// ---------------------------------------------------------------------------- modules --
namespace {

using torch::Tensor;
namespace nn = torch::nn;

/// +1 where x >= 0, -1 elsewhere (sign with sign(0) = +1, as the packed kernels count it).
Tensor pm1(const Tensor& x) { return (x >= 0).to(x.scalar_type()).mul_(2).sub_(1); }

/// sign(x) forward; the chosen straight-through gradient backward. fwd + (s - s.detach()) is
/// exactly fwd in the forward pass (ReActNet's fwd.detach() - s.detach() + s can be off by an ulp).
Tensor sign_ste(const Tensor& x, BnnSte ste) {
  Tensor fwd = pm1(x.detach());
  if (!torch::GradMode::is_enabled() || !x.requires_grad()) return fwd;
  Tensor xc = x.clamp(-1, 1);
  Tensor s = ste == BnnSte::clipped ? xc : torch::where(xc < 0, xc * xc + 2 * xc, -xc * xc + 2 * xc);
  return fwd + (s - s.detach());
}

struct ActSpec {
  BnnAct act;
  BnnSte ste;
  InstaStat stat;
  double shift;
  int reduction;
};

struct BinActImpl : nn::Module {
  BinActImpl(std::int64_t c, ActSpec s) : spec(s), channels(c) {
    const bool insta = s.act == BnnAct::insta_th || s.act == BnnAct::insta_th_plus ||
                       s.act == BnnAct::insta_prelu;
    if (s.act == BnnAct::rsign || insta) alpha = register_parameter("alpha", torch::zeros({1, c, 1, 1}));
    if (s.act == BnnAct::insta_th || s.act == BnnAct::insta_prelu)
      beta = register_parameter("beta", torch::zeros({1, c, 1, 1}));
    if (s.act == BnnAct::insta_th_plus) {
      hidden = std::max<std::int64_t>(c / s.reduction, 2);
      fc1 = register_module("fc1", nn::Linear(c, hidden));
      fc2 = register_module("fc2", nn::Linear(hidden, c));
      torch::NoGradGuard ng;
      fc2->weight.zero_();  // starts as RSign; the MLP learns the instance-dependent part
      fc2->bias.zero_();
    }
    if (insta && s.stat == InstaStat::mean_diff)
      running_mean = register_buffer("running_mean", torch::zeros({c}));
  }
  bool insta() const { return beta.defined() || fc1; }

  /// s[n, c]: the per-instance statistic that INSTA thresholds use.
  Tensor statistic(const Tensor& x) {
    if (spec.stat == InstaStat::cubic) return x.pow(3).mean({2, 3});
    Tensor mu = x.mean({2, 3});
    if (is_training()) {
      Tensor bm = mu.mean(0);
      {
        torch::NoGradGuard ng;
        running_mean.mul_(0.9).add_(bm.detach(), 0.1);  // BN's momentum 0.1
      }
      return mu - bm;
    }
    return mu - running_mean;
  }

  Tensor forward(const Tensor& x) {
    Tensor th;
    last_stat = Tensor();
    switch (spec.act) {
      case BnnAct::shift:
        if (spec.shift != 0.0) th = torch::full({1}, spec.shift, x.options());
        break;
      case BnnAct::rsign: th = alpha; break;
      case BnnAct::insta_th:
      case BnnAct::insta_prelu:
        last_stat = statistic(x);
        th = alpha + beta * last_stat.view({x.size(0), channels, 1, 1});
        break;
      case BnnAct::insta_th_plus:
        last_stat = statistic(x);
        th = alpha + fc2(torch::relu(fc1(last_stat))).view({x.size(0), channels, 1, 1});
        break;
      default: break;
    }
    Tensor out = sign_ste(th.defined() ? x - th : x, spec.ste);
    if (record) {
      plus += (out > 0).sum().item<std::int64_t>();
      total += out.numel();
      th_sum += th.defined() ? th.detach().mean().item<double>() * x.size(0) : 0.0;
      th_count += x.size(0);
    }
    return out;
  }

  ActSpec spec;
  std::int64_t channels;
  std::int64_t hidden = 0;
  Tensor alpha, beta, running_mean, last_stat;
  nn::Linear fc1{nullptr}, fc2{nullptr};
  bool record = false;
  std::int64_t plus = 0, total = 0, th_count = 0;
  double th_sum = 0.0;
};
TORCH_MODULE(BinAct);

/// A convolution that is real (float input, float weights) or binary (+-1 input; weights
/// sign(W) x mean|W| per output channel, or real weights in two-step's first step).
struct QConvImpl : nn::Module {
  QConvImpl(std::int64_t in, std::int64_t out, int k, int stride, int pad, bool binary)
      : in(in), out(out), k(k), stride(stride), pad(pad), binary(binary) {
    weight = register_parameter("weight", torch::empty({out, in, k, k}));
    torch::NoGradGuard ng;
    // torch's Conv2d default for every conv. ReActNet's HardBinaryConv uses rand * 0.001, which it
    // only ever trains from a step-1 checkpoint; from scratch with Adam those tiny weights flip
    // sign on almost every step (deviation documented in docs/bnn-train.md).
    nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  }
  Tensor forward(const Tensor& x) {
    Tensor y;
    if (!binary || !binary_weights) {
      y = torch::conv2d(x, weight, {}, stride, pad);
    } else {
      Tensor scale = weight.detach().abs().mean({1, 2, 3}).clamp_min(1e-12);
      if (packed) {
        if (!packed_valid) {
          pw = pack_weights(weight);
          packed_valid = true;
        }
        // CPU kernels: a CUDA input is read back (bnn-train runs the packed check on the CPU).
        y = binary_conv2d_packed(pack_image(x, pad), pw, stride).to(x.device());
      } else if (torch::GradMode::is_enabled() && weight.requires_grad()) {
        // Forward sign(W); backward the clipped STE with ReActNet's gradient scale (dL/dW =
        // dL/d(scale * sign W) on |W| <= 1): hence the division by the detached scale.
        Tensor wc = weight.clamp(-1, 1);
        Tensor ws = pm1(weight.detach()) + (wc - wc.detach()) / scale.view({-1, 1, 1, 1});
        y = torch::conv2d(x, ws, {}, stride, pad);
      } else {
        y = torch::conv2d(x, pm1(weight.detach()), {}, stride, pad);
      }
      y = y * scale.view({1, -1, 1, 1});
    }
    last_ho = y.size(2);
    last_wo = y.size(3);
    return y;
  }
  std::int64_t in, out;
  int k, stride, pad;
  bool binary;
  bool binary_weights = true, packed = false, packed_valid = false;
  PackedWeights pw;
  std::int64_t last_ho = 0, last_wo = 0;
  Tensor weight;
};
TORCH_MODULE(QConv);

struct QLinearImpl : nn::Module {
  QLinearImpl(std::int64_t in, std::int64_t out, bool binary) : in(in), out(out), binary(binary) {
    weight = register_parameter("weight", torch::empty({out, in}));
    torch::NoGradGuard ng;
    nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
    if (!binary) {
      bias = register_parameter("bias", torch::empty({out}));
      const double b = 1.0 / std::sqrt(static_cast<double>(in));
      bias.uniform_(-b, b);
    }
  }
  Tensor forward(const Tensor& x) {
    if (!binary) return torch::linear(x, weight, bias);
    if (!binary_weights) return torch::linear(x, weight);
    Tensor scale = weight.detach().abs().mean(1).clamp_min(1e-12);
    Tensor y;
    if (packed) {
      if (!packed_valid) {
        pw = pack_weights(weight);
        packed_valid = true;
      }
      y = binary_linear_packed(pack_activations(x), in, pw).to(x.device());
    } else if (torch::GradMode::is_enabled() && weight.requires_grad()) {
      Tensor wc = weight.clamp(-1, 1);
      y = torch::linear(x, pm1(weight.detach()) + (wc - wc.detach()) / scale.view({-1, 1}));
    } else {
      y = torch::linear(x, pm1(weight.detach()));
    }
    return y * scale.view({1, -1});
  }
  std::int64_t in, out;
  bool binary;
  bool binary_weights = true, packed = false, packed_valid = false;
  PackedWeights pw;
  Tensor weight, bias;
};
TORCH_MODULE(QLinear);

struct BlockImpl : nn::Module {
  BlockImpl(BnnArch arch, std::int64_t in, std::int64_t out, int stride, ActSpec spec)
      : arch(arch) {
    const bool real = arch == BnnArch::real;
    if (arch == BnnArch::xnor) bn_in = register_module("bn_in", nn::BatchNorm2d(in));
    if (!real) act = register_module("act", BinAct(in, spec));
    conv = register_module("conv", QConv(in, out, 3, stride, 1, !real));
    bn = register_module("bn", nn::BatchNorm2d(out));
    if (arch != BnnArch::xnor && (stride != 1 || in != out)) {
      // Real shortcut: Bi-Real / ReActNet downsample with AvgPool + real 1x1 conv + BN; the real
      // ResNet with a strided 1x1 conv.
      if (!real && stride != 1) pool = true;
      down = register_module("down", QConv(in, out, 1, real ? stride : 1, 0, false));
      down_bn = register_module("down_bn", nn::BatchNorm2d(out));
    }
    if (arch == BnnArch::reactnet) {
      bias1 = register_parameter("bias1", torch::zeros({1, out, 1, 1}));
      prelu = register_module("prelu", nn::PReLU(nn::PReLUOptions().num_parameters(out)));
      bias2 = register_parameter("bias2", torch::zeros({1, out, 1, 1}));
      if (spec.act == BnnAct::insta_prelu) {
        gamma1 = register_parameter("gamma1", torch::zeros({1, out, 1, 1}));
        gamma2 = register_parameter("gamma2", torch::zeros({1, out, 1, 1}));
      }
    }
  }
  Tensor shortcut(const Tensor& x) {
    if (!down) return x;
    Tensor s = pool ? torch::avg_pool2d(x, 2, 2) : x;
    return down_bn(down(s));
  }
  Tensor forward(const Tensor& x) {
    switch (arch) {
      case BnnArch::real: return torch::relu(bn(conv(x)) + shortcut(x));
      case BnnArch::xnor: {
        Tensor z = bn_in(x);
        Tensor y = conv(act(z));
        // XNOR-Net's activation scale K: mean |z| over channels, averaged over each window.
        Tensor k = torch::avg_pool2d(z.abs().mean(1, true), 3, conv->stride, 1);
        return torch::relu(bn(y * k));
      }
      case BnnArch::bireal: return bn(conv(act(x))) + shortcut(x);
      case BnnArch::reactnet: {
        Tensor y = bn(conv(act(x))) + shortcut(x);
        Tensor b1 = bias1, b2 = bias2;
        if (gamma1.defined()) {  // INSTA-PReLU: shifts move with the block input's statistic
          // Statistics reuse: the binarizer's s[n,c] of the block input; where the width
          // changes (downsampling blocks) the instance mean of the block output instead.
          Tensor s = act->last_stat.size(1) == y.size(1)
                         ? act->last_stat.view({x.size(0), -1, 1, 1})
                         : y.mean({2, 3}, true);
          b1 = b1 + gamma1 * s;
          b2 = b2 + gamma2 * s;
        }
        return prelu(y + b1) + b2;
      }
    }
    return x;
  }
  BnnArch arch;
  bool pool = false;
  BinAct act{nullptr};
  QConv conv{nullptr}, down{nullptr};
  nn::BatchNorm2d bn{nullptr}, bn_in{nullptr}, down_bn{nullptr};
  nn::PReLU prelu{nullptr};
  Tensor bias1, bias2, gamma1, gamma2;
};
TORCH_MODULE(Block);

std::int64_t count_acts(const BnnNetConfig& c) {
  if (c.arch == BnnArch::real) return 0;
  return static_cast<std::int64_t>(c.stages) * c.depth + (c.arch == BnnArch::xnor ? 1 : 0);
}

struct NetImpl : nn::Module {
  explicit NetImpl(const BnnNetConfig& c) : cfg(c) {
    const std::int64_t nacts = count_acts(c);
    KVLAB_THROW_IF(!c.shift_per_layer.empty() &&
                       static_cast<std::int64_t>(c.shift_per_layer.size()) != nacts,
                   UsageError, "--shift-per-layer: {} values given but the network has {} binary "
                   "activations ({} stages x {} blocks{})",
                   c.shift_per_layer.size(), nacts, c.stages, c.depth,
                   c.arch == BnnArch::xnor ? " + the binary FC layer" : "");
    std::int64_t ai = 0;
    auto spec = [&]() {
      const double shift = c.shift_per_layer.empty() ? c.shift : c.shift_per_layer[ai];
      ++ai;
      return ActSpec{c.act, c.ste, c.insta_stat, shift, c.insta_reduction};
    };
    stem = register_module("stem", QConv(c.in_channels, c.width, 3, 1, 1, false));
    stem_bn = register_module("stem_bn", nn::BatchNorm2d(c.width));
    blocks = register_module("blocks", nn::ModuleList());
    std::int64_t ch = c.width;
    for (int s = 0; s < c.stages; ++s) {
      const std::int64_t out = static_cast<std::int64_t>(c.width) << s;
      for (int d = 0; d < c.depth; ++d) {
        const int stride = (s > 0 && d == 0) ? 2 : 1;
        blocks->push_back(Block(c.arch, ch, out, stride, spec()));
        ch = out;
      }
    }
    if (c.arch == BnnArch::xnor) {
      head_bn = register_module("head_bn", nn::BatchNorm2d(ch));
      head_act = register_module("head_act", BinAct(ch, spec()));
      head_fc = register_module("head_fc", QLinear(ch, ch, true));
    }
    fc = register_module("fc", QLinear(ch, c.classes, false));
  }
  Tensor forward(Tensor x) {
    x = stem_bn(stem(x));
    if (cfg.arch == BnnArch::real || cfg.arch == BnnArch::xnor) x = torch::relu(x);
    for (auto& m : *blocks) x = m->as<BlockImpl>()->forward(x);
    x = torch::adaptive_avg_pool2d(x, {1, 1});
    if (cfg.arch == BnnArch::xnor) x = torch::relu(head_fc(head_act(head_bn(x)).flatten(1)));
    else x = x.flatten(1);
    return fc(x);
  }
  BnnNetConfig cfg;
  QConv stem{nullptr};
  nn::BatchNorm2d stem_bn{nullptr}, head_bn{nullptr};
  nn::ModuleList blocks{nullptr};
  BinAct head_act{nullptr};
  QLinear head_fc{nullptr}, fc{nullptr};
};
TORCH_MODULE(Net);

template <class F>
void for_modules(Net& net, F&& f) {
  for (const auto& item : net->named_modules()) f(item.key(), item.value());
}

void set_binary_weights(Net& net, bool on) {
  for_modules(net, [&](const std::string&, const std::shared_ptr<nn::Module>& m) {
    if (auto* c = dynamic_cast<QConvImpl*>(m.get())) c->binary_weights = on;
    if (auto* l = dynamic_cast<QLinearImpl*>(m.get())) l->binary_weights = on;
  });
}

void set_packed(Net& net, bool on) {
  for_modules(net, [&](const std::string&, const std::shared_ptr<nn::Module>& m) {
    if (auto* c = dynamic_cast<QConvImpl*>(m.get())) {
      c->packed = on && c->binary && c->binary_weights;
      c->packed_valid = false;
    }
    if (auto* l = dynamic_cast<QLinearImpl*>(m.get())) {
      l->packed = on && l->binary && l->binary_weights;
      l->packed_valid = false;
    }
  });
}

void set_record(Net& net, bool on) {
  for_modules(net, [&](const std::string&, const std::shared_ptr<nn::Module>& m) {
    if (auto* a = dynamic_cast<BinActImpl*>(m.get())) {
      a->record = on;
      a->plus = a->total = a->th_count = 0;
      a->th_sum = 0.0;
    }
  });
}

core::NamedTensors state_of(Net& net) {
  core::NamedTensors out;
  for (const auto& p : net->named_parameters()) out.emplace_back(p.key(), p.value());
  for (const auto& b : net->named_buffers()) out.emplace_back(b.key(), b.value());
  return out;
}

/// state_of on the CPU (the live tensors themselves for a CPU network).
core::NamedTensors cpu_state(Net& net) {
  core::NamedTensors out = state_of(net);
  for (auto& kv : out) kv.second = kv.second.to(torch::kCPU);
  return out;
}

/// CUDA runs read the running loss and accuracy back every this many steps (each read waits for
/// the GPU); CPU runs every step.
constexpr std::int64_t kCudaProgressEvery = 50;

struct Norm {
  std::vector<double> mean, std;
};
Norm norm_for(const std::string& dataset, std::int64_t channels) {
  if (dataset == "fashion-mnist") return {{0.2860}, {0.3530}};
  if (dataset == "mnist") return {{0.1307}, {0.3081}};
  if (dataset == "cifar-10") return {{0.4914, 0.4822, 0.4465}, {0.2470, 0.2435, 0.2616}};
  return {std::vector<double>(static_cast<std::size_t>(channels), 0.5),
          std::vector<double>(static_cast<std::size_t>(channels), 0.5)};
}

/// Per-channel normalisation as [1, C, 1, 1] float32 tensors on the training device: (x - mean)
/// / std, the same float operations as core::to_float's normalisation.
struct Normalizer {
  Tensor mean, std;
  Normalizer(const Norm& n, const torch::Device& dev) {
    const auto c = static_cast<std::int64_t>(n.mean.size());
    mean = torch::tensor(std::vector<float>(n.mean.begin(), n.mean.end())).view({1, c, 1, 1}).to(dev);
    std = torch::tensor(std::vector<float>(n.std.begin(), n.std.end())).view({1, c, 1, 1}).to(dev);
  }
  Tensor operator()(const Tensor& x) const { return (x - mean) / std; }
};

/// Logits of `net` on uint8 images, batch by batch, in eval mode, computed on `dev` (where the
/// net is) and returned on the CPU.
Tensor logits_of(Net& net, const Tensor& images, const Norm& norm, int batch,
                 const torch::Device& dev = torch::kCPU) {
  torch::NoGradGuard ng;
  net->eval();
  const Normalizer normalize(norm, dev);
  std::vector<Tensor> outs;
  for (std::int64_t i = 0; i < images.size(0); i += batch) {
    const std::int64_t j = std::min<std::int64_t>(images.size(0), i + batch);
    outs.push_back(net->forward(normalize(core::to_float(images.slice(0, i, j).to(dev)))).to(torch::kCPU));
  }
  return torch::cat(outs, 0);
}

double accuracy(const Tensor& logits, const Tensor& labels) {
  return logits.argmax(1).eq(labels).to(torch::kDouble).mean().item<double>();
}

void fill_costs(Net& net, BnnReport& rep) {
  rep.layers.clear();
  rep.bops = rep.flops = rep.binary_params = rep.real_params = 0;
  for_modules(net, [&](const std::string& name, const std::shared_ptr<nn::Module>& m) {
    if (auto* c = dynamic_cast<QConvImpl*>(m.get())) {
      const bool bin = c->binary && c->binary_weights;
      const std::int64_t macs = c->in * c->out * c->k * c->k * c->last_ho * c->last_wo;
      rep.layers.push_back({name, bin ? "binary-conv" : "real-conv", macs, c->weight.numel(), bin});
      (bin ? rep.bops : rep.flops) += macs;
    } else if (auto* l = dynamic_cast<QLinearImpl*>(m.get())) {
      const bool bin = l->binary && l->binary_weights;
      const std::int64_t macs = l->in * l->out;
      rep.layers.push_back({name, bin ? "binary-linear" : "real-linear", macs, l->weight.numel(), bin});
      (bin ? rep.bops : rep.flops) += macs;
    } else if (auto* a = dynamic_cast<BinActImpl*>(m.get())) {
      if (a->fc1) {
        const std::int64_t macs = 2 * a->channels * a->hidden;
        rep.layers.push_back({name, "insta-mlp", macs, macs + a->channels + a->hidden, false});
        rep.flops += macs;
      }
    }
  });
  // Size: binary weights 1 bit, every other parameter 32 bits; BatchNorm running statistics are
  // not counted (they fold into the affine transform at inference), INSTA running means are.
  for (const auto& p : net->named_parameters()) {
    bool bin = false;
    for (const auto& l : rep.layers)
      if (l.binary && p.key() == l.name + ".weight") bin = true;
    (bin ? rep.binary_params : rep.real_params) += p.value().numel();
  }
  for (const auto& b : net->named_buffers())
    if (b.key().find("running_mean") != std::string::npos &&
        b.key().find(".act.") != std::string::npos)
      rep.real_params += b.value().numel();
  rep.size_bits = rep.binary_params + 32 * rep.real_params;
  rep.ops = static_cast<double>(rep.bops) / 64.0 + static_cast<double>(rep.flops);
}

nlohmann::json options_json(const BnnOptions& o, const BnnNetConfig& n) {
  return {{"arch", to_string(n.arch)},     {"act", to_string(n.act)},
          {"ste", to_string(n.ste)},       {"insta_stat", to_string(n.insta_stat)},
          {"width", n.width},              {"stages", n.stages},
          {"depth", n.depth},              {"shift", n.shift},
          {"shift_per_layer", n.shift_per_layer}, {"insta_reduction", n.insta_reduction},
          {"binary_weights", n.binary_weights},   {"recipe", to_string(o.recipe)},
          {"epochs", o.epochs},            {"batch_size", o.batch_size},
          {"lr", o.lr},                    {"weight_decay", o.weight_decay},
          {"train_limit", o.train_limit},  {"augment", o.augment},
          {"teacher", o.teacher},          {"seed", o.seed}};
}

std::string join_doubles(const std::vector<double>& v) {
  std::ostringstream s;
  s.precision(17);
  for (double x : v) s << x << ' ';
  return s.str();
}
std::vector<double> split_doubles(const std::string& t) {
  std::istringstream s(t);
  std::vector<double> v;
  double x;
  while (s >> x) v.push_back(x);
  return v;
}

/// The key of a parameter in Optimizer::state(): LibTorch 1.x keys by the TensorImpl address as a
/// string (c10::guts::to_string, i.e. ostream <<), 2.x by the address itself.
template <class Map>
typename Map::key_type state_key(const Map&, const Tensor& p) {
  using Key = typename Map::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream os;
    os << p.unsafeGetTensorImpl();
    return os.str();
  } else {
    return static_cast<Key>(p.unsafeGetTensorImpl());
  }
}

/// Adam's state as named CPU tensors ("<param>.step", ".exp_avg", ".exp_avg_sq"), so that a
/// checkpoint written on one device resumes on the other.
core::NamedTensors adam_state(torch::optim::Adam& adam, Net& net) {
  core::NamedTensors out;
  auto& st = adam.state();
  for (const auto& p : net->named_parameters()) {
    auto it = st.find(state_key(st, p.value()));
    if (it == st.end()) continue;
    const auto& s = static_cast<const torch::optim::AdamParamState&>(*it->second);
    out.emplace_back(p.key() + ".step", torch::tensor({static_cast<std::int64_t>(s.step())}, torch::kLong));
    out.emplace_back(p.key() + ".exp_avg", s.exp_avg().detach().to(torch::kCPU));
    out.emplace_back(p.key() + ".exp_avg_sq", s.exp_avg_sq().detach().to(torch::kCPU));
  }
  return out;
}

void load_adam_state(torch::optim::Adam& adam, Net& net, const core::NamedTensors& saved,
                     const std::string& file) {
  std::map<std::string, Tensor> by_name(saved.begin(), saved.end());
  auto& st = adam.state();
  std::size_t used = 0;
  for (const auto& p : net->named_parameters()) {
    const std::string& k = p.key();
    if (!by_name.count(k + ".step")) continue;
    KVLAB_THROW_IF(!by_name.count(k + ".exp_avg") || !by_name.count(k + ".exp_avg_sq"), FormatError,
                   "{}: optimizer state of {} is incomplete; start without --resume", file, k);
    const Tensor& m = by_name.at(k + ".exp_avg");
    const Tensor& v = by_name.at(k + ".exp_avg_sq");
    KVLAB_THROW_IF(m.sizes() != p.value().sizes() || v.sizes() != p.value().sizes(), FormatError,
                   "{}: optimizer state of {} has the wrong shape; start without --resume", file, k);
    auto ps = std::make_unique<torch::optim::AdamParamState>();
    ps->step(by_name.at(k + ".step").to(torch::kCPU).view({-1})[0].item<std::int64_t>());
    ps->exp_avg(m.to(p.value().device(), p.value().scalar_type()).clone());
    ps->exp_avg_sq(v.to(p.value().device(), p.value().scalar_type()).clone());
    st[state_key(st, p.value())] = std::move(ps);
    used += 3;
  }
  KVLAB_THROW_IF(used != saved.size(), FormatError,
                 "{}: the optimizer state names parameters this network does not have; start "
                 "without --resume",
                 file);
}

/// Checkpoints written before the optimizer state was stored by name: one "adam" entry holding a
/// torch::serialize archive of CPU tensors.
void load_optimizer_archive(torch::optim::Optimizer& opt, const Tensor& bytes, const std::string& file) {
  try {
    const Tensor b = bytes.contiguous();
    std::istringstream is(std::string(reinterpret_cast<const char*>(b.data_ptr<std::uint8_t>()),
                                      static_cast<std::size_t>(b.numel())));
    torch::serialize::InputArchive ar;
    ar.load_from(is);
    opt.load(ar);
  } catch (const c10::Error& e) {
    KVLAB_THROW(FormatError, "{}: the optimizer state cannot be read ({}); start without --resume",
                file, std::string(e.what()).substr(0, 200));
  }
}

}  // namespace

// --------------------------------------------------------------------------- training --

BnnResult train_bnn(const core::TrainTest& data, const BnnOptions& opt_in,
                    const core::Provenance& prov, core::Progress& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  BnnOptions opt = opt_in;
  KVLAB_THROW_IF(opt.epochs < 1, UsageError, "--epochs must be >= 1");
  KVLAB_THROW_IF(opt.batch_size < 1, UsageError, "--batch-size must be >= 1");
  KVLAB_THROW_IF(data.train.images.size(2) != data.train.images.size(3), UsageError,
                 "{}: only square images are supported ({}x{})", data.train.name,
                 data.train.images.size(2), data.train.images.size(3));
  opt.net.in_channels = data.train.images.size(1);
  opt.net.in_size = data.train.images.size(2);
  opt.net.classes = data.train.classes;
  opt.net = resolve_net(opt.net);
  KVLAB_THROW_IF(opt.recipe == BnnRecipe::two_step && opt.net.arch == BnnArch::real, UsageError,
                 "--recipe two-step binarizes activations then weights; --arch real has neither");
  KVLAB_THROW_IF(opt.augment != "auto" && opt.augment != "on" && opt.augment != "off", UsageError,
                 "--augment {}: expected auto, on or off", opt.augment);
  const bool augment = opt.augment == "on" || (opt.augment == "auto" && data.train.name == "cifar-10");
  const core::ImageDataset train = data.train.head(opt.train_limit);
  const core::ImageDataset test = data.test.head(opt.test_limit);
  const Norm norm = norm_for(train.name, opt.net.in_channels);
  const nlohmann::json ojson = options_json(opt, opt.net);

  BnnResult res;
  res.net = opt.net;
  BnnReport& rep = res.report;
  rep.dataset = train.name;
  rep.train_images = train.size();
  rep.test_images = test.size();

  // Built (and initialised from LibTorch's CPU generator) on the CPU, then moved: a CUDA run
  // starts from the same weights as a CPU run with the same seed.
  const torch::Device dev = opt.device.cuda
                                ? torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(opt.device.index))
                                : torch::Device(torch::kCPU);
  rep.device = opt.device.str();
  Net net(opt.net);
  net->to(dev);

  // Teacher for distillation (ReActNet's DistributionLoss: soft cross-entropy, no label term).
  Net teacher{nullptr};
  if (!opt.teacher.empty()) {
    const BnnModelFile t = read_bnn_model(opt.teacher);
    KVLAB_THROW_IF(t.net.classes != opt.net.classes || t.net.in_channels != opt.net.in_channels ||
                       t.net.in_size != opt.net.in_size,
                   UsageError,
                   "--teacher {}: it takes {}x{}x{} inputs and {} classes, but the data has "
                   "{}x{}x{} and {}; train the teacher on the same dataset",
                   opt.teacher, t.net.in_channels, t.net.in_size, t.net.in_size, t.net.classes,
                   opt.net.in_channels, opt.net.in_size, opt.net.in_size, opt.net.classes);
    teacher = Net(t.net);
    set_binary_weights(teacher, t.net.binary_weights);
    core::load_named_tensors(t.weights, state_of(teacher), opt.teacher);
    teacher->to(dev);
    teacher->eval();
  }

  struct Stage {
    std::string name;
    bool binary_weights;
    double wd;
  };
  std::vector<Stage> stages;
  const bool bw = opt.net.arch != BnnArch::real && opt.net.binary_weights;
  if (opt.recipe == BnnRecipe::two_step)
    stages = {{"step1", false, opt.weight_decay}, {"step2", true, 0.0}};
  else
    stages = {{"", bw, bw ? 0.0 : opt.weight_decay}};

  // Resume.
  std::size_t stage0 = 0;
  int epoch0 = 0;
  std::int64_t batch0 = 0;
  std::mt19937_64 aug_rng(opt.seed ^ 0x9e3779b97f4a7c15ULL);
  core::Checkpoint ck;
  bool resumed = false;
  if (!opt.resume.empty()) {
    ck = core::read_checkpoint(opt.resume, "bnn-train");
    const nlohmann::json saved = nlohmann::json::parse(ck.options_json, nullptr, false);
    std::vector<std::string> diffs;
    for (const auto& [k, v] : ojson.items())
      if (!saved.is_object() || !saved.contains(k) || saved[k] != v)
        diffs.push_back(fmt::format("{} ({} in the checkpoint, {} now)", k,
                                    saved.is_object() && saved.contains(k) ? saved[k].dump() : "-",
                                    v.dump()));
    KVLAB_THROW_IF(!diffs.empty(), UsageError,
                   "--resume {}: the checkpoint was written with different options: {}; rerun "
                   "with the original options or without --resume",
                   opt.resume, fmt::join(diffs, ", "));
    for (std::size_t i = 0; i < stages.size(); ++i)
      if (stages[i].name == ck.stage) stage0 = i;
    set_binary_weights(net, stages[stage0].binary_weights);
    core::load_named_tensors(ck.model, state_of(net), opt.resume);
    epoch0 = static_cast<int>(ck.epoch);
    batch0 = ck.step_in_epoch;
    rep.steps = ck.step;
    if (ck.torch_rng.defined()) core::set_torch_rng_state(ck.torch_rng);
    if (ck.text.count("aug_rng")) {
      std::istringstream is(ck.text.at("aug_rng"));
      is >> aug_rng;
    }
    rep.epoch_loss = split_doubles(ck.text.count("epoch_loss") ? ck.text.at("epoch_loss") : "");
    rep.epoch_train_accuracy =
        split_doubles(ck.text.count("epoch_train_accuracy") ? ck.text.at("epoch_train_accuracy") : "");
    rep.epoch_test_accuracy =
        split_doubles(ck.text.count("epoch_test_accuracy") ? ck.text.at("epoch_test_accuracy") : "");
    rep.epoch_seconds =
        split_doubles(ck.text.count("epoch_seconds") ? ck.text.at("epoch_seconds") : "");
    rep.resumed_from = opt.resume;
    resumed = true;
  }

  const std::int64_t n = train.size();
  const std::int64_t nbatches = (n + opt.batch_size - 1) / opt.batch_size;
  const Tensor train_images = train.images, train_labels = train.labels;
  // On CUDA without augmentation the (uint8) training set, its labels and each epoch's order live
  // on the GPU, so a step copies nothing from the host and never waits for the GPU (a copy from
  // pageable host memory would synchronise the stream every step). With augmentation (CPU code,
  // seeded) batches are built on the CPU and sent through pinned memory.
  const bool data_on_device = dev.is_cuda() && !augment;
  const Tensor train_images_dev = data_on_device ? train_images.to(dev) : train_images;
  const Tensor train_labels_dev = train_labels.to(dev);

  for (std::size_t si = stage0; si < stages.size(); ++si) {
    const Stage& st = stages[si];
    set_binary_weights(net, st.binary_weights);
    if (stages.size() > 1)
      progress.stage(st.binary_weights ? "step 2: binary weights and activations"
                                       : "step 1: binary activations, real weights",
                     static_cast<int>(si) + 1, static_cast<int>(stages.size()));
    torch::optim::Adam adam(net->parameters(),
                            torch::optim::AdamOptions(opt.lr).weight_decay(st.wd));
    const bool restore_opt = resumed && si == stage0 && !ck.optimizer.empty();
    if (restore_opt) {
      if (ck.optimizer.size() == 1 && ck.optimizer.front().first == "adam")  // older checkpoints
        load_optimizer_archive(adam, ck.optimizer.front().second, opt.resume);
      else
        load_adam_state(adam, net, ck.optimizer, opt.resume);
    }

    auto save = [&](int epoch, std::int64_t batch) {
      core::Checkpoint c;
      c.trainer = "bnn-train";
      c.stage = st.name;
      c.epoch = epoch;
      c.step = rep.steps;
      c.step_in_epoch = batch;
      c.options_json = ojson.dump();
      c.model = state_of(net);
      c.optimizer = adam_state(adam, net);
      c.torch_rng = core::torch_rng_state();
      std::ostringstream rs;
      rs << aug_rng;
      c.text["aug_rng"] = rs.str();
      c.text["epoch_loss"] = join_doubles(rep.epoch_loss);
      c.text["epoch_train_accuracy"] = join_doubles(rep.epoch_train_accuracy);
      c.text["epoch_test_accuracy"] = join_doubles(rep.epoch_test_accuracy);
      c.text["epoch_seconds"] = join_doubles(rep.epoch_seconds);
      core::write_checkpoint(opt.checkpoint, c, prov);
      rep.checkpoint_written = opt.checkpoint;
    };

    const int e_start = si == stage0 ? epoch0 : 0;
    for (int e = e_start; e < opt.epochs; ++e) {
      // ReActNet: LambdaLR(1 - epoch / epochs), stepped once per epoch.
      const double lr = opt.lr * (1.0 - static_cast<double>(e) / opt.epochs);
      for (auto& g : adam.param_groups())
        static_cast<torch::optim::AdamOptions&>(g.options()).lr(lr);
      std::mt19937_64 order(opt.seed * 1000003ULL + si * 7919ULL + static_cast<std::uint64_t>(e));
      std::vector<std::int64_t> perm(static_cast<std::size_t>(n));
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), order);
      const Tensor perm_t = torch::from_blob(perm.data(), {n}, torch::kLong);
      const Tensor perm_dev = perm_t.to(dev);  // a copy on CUDA; perm_t itself on the CPU

      const auto te = std::chrono::steady_clock::now();
      const Normalizer normalize(norm, dev);
      net->train();
      progress.begin(fmt::format("epoch {}/{}{}", e + 1, opt.epochs,
                                 st.name.empty() ? "" : " (" + st.name + ")"),
                     nbatches, "batch");
      // Running sums stay on the device: on CUDA they are read back (a synchronisation) every
      // kCudaProgressEvery steps, at the end of the epoch and on a stop; on the CPU every step.
      const auto dopt = torch::TensorOptions().device(dev);
      Tensor loss_acc = torch::zeros({}, dopt.dtype(torch::kDouble));
      Tensor correct_acc = torch::zeros({}, dopt.dtype(torch::kLong));
      double loss_sum = 0.0;
      std::int64_t correct = 0, seen = 0;
      const std::int64_t b_start = (si == stage0 && e == e_start) ? batch0 : 0;
      for (std::int64_t b = b_start; b < nbatches; ++b) {
        const std::int64_t lo = b * opt.batch_size, hi = std::min(n, lo + opt.batch_size);
        const Tensor idx_dev = perm_dev.slice(0, lo, hi);
        Tensor x;
        if (data_on_device || !dev.is_cuda()) {
          x = core::to_float(train_images_dev.index_select(0, idx_dev));
          if (augment) x = core::augment_crop_flip(x, 4, aug_rng);  // CPU runs only
          x = normalize(x);
        } else {
          x = core::to_float(train_images.index_select(0, perm_t.slice(0, lo, hi)));
          x = core::augment_crop_flip(x, 4, aug_rng);
          x = normalize(x.pin_memory().to(dev, /*non_blocking=*/true));
        }
        const Tensor y = train_labels_dev.index_select(0, idx_dev);
        const Tensor logits = net->forward(x);
        Tensor loss;
        if (teacher) {
          Tensor tl;
          {
            torch::NoGradGuard ng;
            tl = teacher->forward(x);
          }
          loss = -(torch::softmax(tl, 1) * torch::log_softmax(logits, 1)).sum(1).mean();
        } else {
          loss = torch::nn::functional::cross_entropy(logits, y);
        }
        adam.zero_grad();
        loss.backward();
        adam.step();
        ++rep.steps;
        const std::int64_t bs = hi - lo;
        loss_acc += loss.detach().to(torch::kDouble) * static_cast<double>(bs);
        correct_acc += logits.detach().argmax(1).eq(y).sum();
        seen += bs;
        auto read_sums = [&] {
          loss_sum = loss_acc.item<double>();
          correct = correct_acc.item<std::int64_t>();
        };
        if (!dev.is_cuda() || b + 1 == nbatches || (b + 1 - b_start) % kCudaProgressEvery == 0) {
          read_sums();
          progress.update(b + 1 - b_start, {{"loss", loss_sum / seen},
                                            {"acc", static_cast<double>(correct) / seen}});
        }
        const bool stop = progress.stop_requested();
        if (stop) read_sums();
        if (!opt.checkpoint.empty() &&
            (stop || (opt.checkpoint_every > 0 && rep.steps % opt.checkpoint_every == 0)))
          save(e, b + 1);
        if (stop) {
          progress.end({{"loss", loss_sum / seen}});
          rep.stopped = true;
          res.weights = cpu_state(net);
          rep.train_seconds =
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          return res;
        }
      }
      rep.train_loss = seen ? loss_sum / seen : 0.0;
      rep.train_accuracy = seen ? static_cast<double>(correct) / seen : 0.0;
      const double test_acc = accuracy(logits_of(net, test.images, norm, 500, dev), test.labels);
      rep.epoch_loss.push_back(rep.train_loss);
      rep.epoch_train_accuracy.push_back(rep.train_accuracy);
      rep.epoch_test_accuracy.push_back(test_acc);
      rep.epoch_seconds.push_back(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - te).count());
      progress.end({{"loss", rep.train_loss}, {"train_acc", rep.train_accuracy},
                    {"test_acc", test_acc}});
      if (!opt.checkpoint.empty()) save(e + 1, 0);
    }
    epoch0 = 0;
  }

  // Final evaluation with the +1 fraction per binary activation.
  set_record(net, true);
  const Tensor logits = logits_of(net, test.images, norm, 500, dev);
  rep.test_accuracy = accuracy(logits, test.labels);
  for_modules(net, [&](const std::string& name, const std::shared_ptr<nn::Module>& m) {
    if (auto* a = dynamic_cast<BinActImpl*>(m.get())) {
      rep.act_names.push_back(name);
      rep.act_plus_fraction.push_back(a->total ? static_cast<double>(a->plus) / a->total : 0.0);
      rep.act_threshold_mean.push_back(a->th_count ? a->th_sum / a->th_count : 0.0);
    }
  });
  set_record(net, false);
  fill_costs(net, rep);

  // The deployment path: the same network with every binary layer on the packed kernels. They
  // are CPU code: a network trained on CUDA is moved to the CPU, and the packed logits are
  // compared with the float-simulated network's logits computed there (CUDA's float logits
  // differ from the CPU's in rounding).
  if (opt.check_packed && rep.bops > 0) {
    Tensor flog = logits;
    if (dev.is_cuda()) {
      net->to(torch::kCPU);
      flog = logits_of(net, test.images, norm, 500);
    }
    set_packed(net, true);
    const Tensor plog = logits_of(net, test.images, norm, 500);
    set_packed(net, false);
    rep.packed_checked = true;
    rep.packed_accuracy = accuracy(plog, test.labels);
    rep.packed_agreement =
        plog.argmax(1).eq(flog.argmax(1)).to(torch::kDouble).mean().item<double>();
    rep.packed_logits_equal = torch::equal(plog, flog);
  }
  res.weights = cpu_state(net);
  rep.train_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

at::Tensor bnn_logits(const BnnNetConfig& cfg, const core::NamedTensors& weights,
                      const std::string& dataset, const at::Tensor& images, bool packed,
                      int batch_size) {
  Net net(cfg);
  set_binary_weights(net, cfg.binary_weights);
  core::load_named_tensors(weights, state_of(net), "bnn_logits");
  set_packed(net, packed);
  return logits_of(net, images, norm_for(dataset, cfg.in_channels), batch_size);
}

// ------------------------------------------------------------------------ artifact I/O --

void write_bnn_model(const std::filesystem::path& out, const BnnResult& r, const BnnOptions& opt,
                     const core::Provenance& prov) {
  core::ArtifactWriter w(out, "bnn-model", kBnnModelVersion, 0, prov);
  h5::Group& p = w.params();
  const BnnNetConfig& n = r.net;
  p.set_attr("arch", to_string(n.arch));
  p.set_attr("act", to_string(n.act));
  p.set_attr("ste", n.arch == BnnArch::real ? std::string("none") : to_string(n.ste));
  p.set_attr("insta_stat", n.insta_stat == InstaStat::automatic ? std::string("none")
                                                                  : to_string(n.insta_stat));
  p.set_attr("width", std::int64_t{n.width});
  p.set_attr("stages", std::int64_t{n.stages});
  p.set_attr("depth", std::int64_t{n.depth});
  p.set_attr("shift", n.shift);
  if (!n.shift_per_layer.empty()) p.set_attr("shift_per_layer", n.shift_per_layer);
  p.set_attr("insta_reduction", std::int64_t{n.insta_reduction});
  p.set_attr("binary_weights", std::int64_t{n.arch != BnnArch::real && n.binary_weights});
  p.set_attr("in_channels", n.in_channels);
  p.set_attr("in_size", n.in_size);
  p.set_attr("classes", n.classes);
  p.set_attr("dataset", r.report.dataset);
  p.set_attr("recipe", to_string(opt.recipe));
  p.set_attr("epochs", std::int64_t{opt.epochs});
  p.set_attr("batch_size", std::int64_t{opt.batch_size});
  p.set_attr("lr", opt.lr);
  p.set_attr("weight_decay", opt.weight_decay);
  p.set_attr("train_limit", opt.train_limit);
  p.set_attr("test_limit", opt.test_limit);
  p.set_attr("augment", opt.augment);
  p.set_attr("teacher", opt.teacher);
  p.set_attr("seed", static_cast<std::int64_t>(opt.seed));
  core::write_named_tensors(w.root(), "weights", r.weights);

  const BnnReport& rep = r.report;
  h5::Group g = w.root().require_group("report");
  g.set_attr("test_accuracy", rep.test_accuracy);
  g.set_attr("train_loss", rep.train_loss);
  g.set_attr("train_accuracy", rep.train_accuracy);
  g.set_attr("train_images", rep.train_images);
  g.set_attr("test_images", rep.test_images);
  g.set_attr("bops", rep.bops);
  g.set_attr("flops", rep.flops);
  g.set_attr("ops", rep.ops);
  g.set_attr("size_bits", rep.size_bits);
  g.set_attr("binary_params", rep.binary_params);
  g.set_attr("real_params", rep.real_params);
  g.set_attr("packed_checked", rep.packed_checked);
  g.set_attr("packed_accuracy", rep.packed_accuracy);
  g.set_attr("packed_agreement", rep.packed_agreement);
  g.set_attr("packed_logits_equal", rep.packed_logits_equal);
  g.set_attr("train_seconds", rep.train_seconds);
  g.set_attr("steps", rep.steps);
  g.set_attr("resumed_from", rep.resumed_from);
  g.write_vec("epoch_loss", rep.epoch_loss, {"epoch"});
  g.write_vec("epoch_train_accuracy", rep.epoch_train_accuracy, {"epoch"});
  g.write_vec("epoch_test_accuracy", rep.epoch_test_accuracy, {"epoch"});
  std::vector<std::string> lnames, ltypes;
  std::vector<std::int64_t> lmacs, lparams;
  for (const auto& l : rep.layers) {
    lnames.push_back(l.name);
    ltypes.push_back(l.type);
    lmacs.push_back(l.macs);
    lparams.push_back(l.params);
  }
  g.set_attr("layer_names", lnames);
  g.set_attr("layer_types", ltypes);
  g.write_vec("layer_macs", lmacs, {"layer"});
  g.write_vec("layer_params", lparams, {"layer"});
  if (!rep.act_names.empty()) g.set_attr("act_names", rep.act_names);
  g.write_vec("act_plus_fraction", rep.act_plus_fraction, {"activation"});
  g.write_vec("act_threshold_mean", rep.act_threshold_mean, {"activation"});
  w.commit();
}

BnnModelFile read_bnn_model(const std::filesystem::path& path) {
  core::ArtifactReader r =
      core::ArtifactReader::open(path, "bnn-model", kBnnModelVersion, kBnnModelVersion);
  BnnModelFile f;
  f.header = r.header();
  const h5::Group p = r.params();
  const std::string file = path.string();
  BnnNetConfig& n = f.net;
  n.arch = parse_name(bnn_arch_names(), p.attr_string("arch"), file, "architecture");
  const std::string act = p.attr_string("act");
  n.act = act == "none" ? BnnAct::automatic : parse_name(bnn_act_names(), act, file, "binarizer");
  const std::string ste = p.attr_string("ste");
  n.ste = ste == "none" ? BnnSte::automatic : parse_name(bnn_ste_names(), ste, file, "STE");
  const std::string stat = p.attr_string("insta_stat");
  n.insta_stat = stat == "none" ? InstaStat::automatic
                                : parse_name(insta_stat_names(), stat, file, "INSTA statistic");
  n.width = static_cast<int>(p.attr_int("width"));
  n.stages = static_cast<int>(p.attr_int("stages"));
  n.depth = static_cast<int>(p.attr_int("depth"));
  n.shift = p.attr_double("shift");
  if (p.has_attr("shift_per_layer")) {
    const h5::AttrValue spl = p.attr("shift_per_layer");
    if (const auto* v = std::get_if<std::vector<double>>(&spl)) n.shift_per_layer = *v;
  }
  n.insta_reduction = static_cast<int>(p.attr_int("insta_reduction"));
  n.binary_weights = p.attr_int("binary_weights") != 0 || n.arch == BnnArch::real;
  n.in_channels = p.attr_int("in_channels");
  n.in_size = p.attr_int("in_size");
  n.classes = p.attr_int("classes");
  KVLAB_THROW_IF(n.width < 1 || n.stages < 1 || n.depth < 1 || n.classes < 2 || n.in_size < 2 ||
                     n.in_channels < 1,
                 FormatError, "{}: implausible network parameters (width {}, stages {}, depth {}, "
                 "classes {}); re-create it with kvlab bnn-train",
                 file, n.width, n.stages, n.depth, n.classes);
  f.dataset = p.attr_string("dataset");
  f.weights = core::read_named_tensors(r.root(), "weights");
  KVLAB_THROW_IF(f.weights.empty(), FormatError, "{}: /weights is missing or empty", file);
  if (r.root().has_group("report"))
    f.test_accuracy = r.root().group("report").attr_double("test_accuracy");
  return f;
}

}  // namespace kvlab::binary
