// kvlab binarize: BinaryMoS / OneBit-style / sign binarization with knowledge distillation
// (docs/binarize.md). Autograd runs through llm::Model::forward itself: the student is the
// runtime model with its block linears replaced by trainable layers (TrainMosLinear), so the
// teacher and the student share one forward implementation. AdamW and the schedule are written
// out here (a few ATen lines) so their state is plain tensors in the checkpoint. Memory options
// for large models: gradient checkpointing of the student's blocks (checkpointed_block, binarize_checkpoint.cpp),
// bfloat16 latent state with stochastic rounding, micro-batches.
#include "kvlab/binary/binarize.hpp"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>
#include <random>

#include "kvlab/binary/mos.hpp"
#include "kvlab/core/checkpoint.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/core/runtime.hpp"
#include "kvlab/llm/linear_registry.hpp"

namespace kvlab::binary {

const std::map<std::string, BinarizeMethod>& binarize_method_names() {
  static const std::map<std::string, BinarizeMethod> m{{"mos", BinarizeMethod::mos},
                                                       {"sign", BinarizeMethod::sign}};
  return m;
}

const char* binarize_method_name(BinarizeMethod m) {
  return m == BinarizeMethod::sign ? "sign" : "mos";
}

namespace {

constexpr const char* kTrainer = "binarize";

const char* const kLinearNames[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                    "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                    "mlp.down_proj"};

std::shared_ptr<llm::Linear>& block_linear(llm::Block& b, int i) {
  std::shared_ptr<llm::Linear>* l[] = {&b.q_proj, &b.k_proj,  &b.v_proj,  &b.o_proj,
                                       &b.gate_proj, &b.up_proj, &b.down_proj};
  return *l[i];
}

std::int64_t effective_experts(const BinarizeOptions& o) {
  return o.method == BinarizeMethod::sign ? 1 : o.experts;
}

// A BinaryMoS layer with float32 trainable parameters and the official straight-through
// estimator: forward sign(w), backward grad * 1[-1 < w < 1] (the clamp's gradient).
class TrainMosLinear : public llm::Linear {
 public:
  explicit TrainMosLinear(MosParams p) : p_(std::move(p)) {
    for (at::Tensor* t : trainable()) t->requires_grad_(true);
  }
  at::Tensor forward(const at::Tensor& x) const override {
    return mos_forward(x, ste_sign(p_.weight), p_.s_in, p_.s_out, p_.router, p_.bias);
  }
  std::int64_t in_features() const override { return p_.weight.size(1); }
  std::int64_t out_features() const override { return p_.weight.size(0); }
  std::string kind() const override { return "binary-mos-train"; }
  at::Tensor dense_weight() const override { return p_.weight.detach(); }
  std::optional<at::Tensor> bias() const override {
    if (p_.bias.defined()) return p_.bias;
    return std::nullopt;
  }
  std::uint64_t bytes() const override { return 0; }
  std::vector<at::Tensor*> trainable() {
    std::vector<at::Tensor*> v{&p_.weight, &p_.s_in, &p_.s_out};
    if (p_.router.defined()) v.push_back(&p_.router);
    return v;
  }
  MosParams& params() { return p_; }

 private:
  MosParams p_;
};

struct Param {
  std::string name;
  at::Tensor* value;
  at::Tensor m, v;  // AdamW moments
};

// HF get_cosine_schedule_with_warmup (num_cycles 0.5).
double lr_factor(std::int64_t step, std::int64_t warmup, std::int64_t total) {
  if (step < warmup) return static_cast<double>(step) / static_cast<double>(std::max<std::int64_t>(1, warmup));
  const double progress = static_cast<double>(step - warmup) /
                          static_cast<double>(std::max<std::int64_t>(1, total - warmup));
  return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * progress)));
}

// Blocks of epoch `e` in a fixed pseudo-random order (Fisher-Yates over mt19937_64 seeded by
// seed and epoch, so a resumed run sees exactly the same order).
std::vector<std::int64_t> epoch_order(std::int64_t n, std::uint64_t seed, std::int64_t e) {
  std::vector<std::int64_t> v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = i;
  std::mt19937_64 g(seed * 0x9E3779B97F4A7C15ull + static_cast<std::uint64_t>(e));
  for (std::int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<std::int64_t>(g() % static_cast<std::uint64_t>(i + 1));
    std::swap(v[static_cast<std::size_t>(i)], v[static_cast<std::size_t>(j)]);
  }
  return v;
}

std::string options_json(const BinarizeOptions& o) {
  nlohmann::json j{{"method", binarize_method_name(o.method)},
                        {"experts", effective_experts(o)},
                        {"seq_len", o.seq_len},
                        {"batch_size", o.batch_size},
                        {"epochs", o.epochs},
                        {"steps", o.steps},
                        {"lr", o.lr},
                        {"warmup_ratio", o.warmup_ratio},
                        {"weight_decay", o.weight_decay},
                        {"max_grad_norm", o.max_grad_norm},
                        {"l2l_loss_scale", o.l2l_loss_scale},
                        {"seed", o.seed}};
  // Only when not the default, so float32 checkpoints of earlier versions still resume.
  if (o.state_dtype != "float32") j["state_dtype"] = o.state_dtype;
  return j.dump();
}

// Seed of the stochastic rounding of step `step`: a function of (seed, step) only, so that a
// resumed bfloat16-state run rounds exactly as an uninterrupted one.
std::uint64_t rounding_seed(std::uint64_t seed, std::int64_t step) {
  return seed * 0x9E3779B97F4A7C15ull + 0xD1B54A32D192ED03ull * static_cast<std::uint64_t>(step + 1);
}

at::Tensor rms_norm_f32(const at::Tensor& x, const at::Tensor& w, double eps) {
  at::Tensor h = x.to(at::kFloat);
  h = h * at::rsqrt(h.pow(2).mean(-1, true) + eps);
  return w.to(at::kFloat) * h;
}

}  // namespace

at::Tensor stochastic_round_bf16(const at::Tensor& x) {
  // bfloat16 is the top 16 bits of float32. Adding a uniform 16-bit integer to the float32 bit
  // pattern and clearing the low 16 bits carries into the kept part with probability (low bits) /
  // 2^16: the magnitude rounds up with exactly the probability that makes the mean unbiased, for
  // either sign (the sign bit is not touched by the carry of a finite value).
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const at::Tensor r = at::randint(0, 1 << 16, xf.sizes(), xf.options().dtype(at::kInt));
  const at::Tensor bits = (xf.view(at::kInt) + r).bitwise_and_(static_cast<std::int64_t>(-65536));
  return bits.view(at::kFloat).to(at::kBFloat16);  // exact: the low 16 bits are zero
}

double binarized_bits_per_weight(const llm::ModelConfig& c, BinarizeMethod method,
                                 std::int64_t experts) {
  const std::int64_t e = method == BinarizeMethod::sign ? 1 : experts;
  const std::int64_t h = c.hidden_size, q = c.num_attention_heads * c.head_dim,
                     kv = c.num_key_value_heads * c.head_dim, f = c.intermediate_size;
  const std::pair<std::int64_t, std::int64_t> shapes[] = {{h, q}, {h, kv}, {h, kv}, {q, h},
                                                          {h, f}, {h, f},  {f, h}};
  double bytes = 0, weights = 0;
  for (const auto& [in, out] : shapes) {
    bytes += static_cast<double>(mos_stored_bytes(in, out, e, false));
    weights += static_cast<double>(in) * static_cast<double>(out);
  }
  return 8.0 * bytes / weights;
}

BinarizeResult binarize_model(const llm::ModelFile& f, const at::Tensor& ids,
                              const BinarizeOptions& opt, const core::Provenance& prov,
                              core::Progress& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  KVLAB_THROW_IF(opt.method == BinarizeMethod::mos && opt.experts < 1, UsageError,
                 "--experts {}: must be at least 1", opt.experts);
  KVLAB_THROW_IF(opt.state_dtype != "float32" && opt.state_dtype != "bfloat16", UsageError,
                 "--state-dtype {}: expected float32 or bfloat16", opt.state_dtype);
  KVLAB_THROW_IF(opt.grad_checkpoint != "auto" && opt.grad_checkpoint != "on" &&
                     opt.grad_checkpoint != "off",
                 UsageError, "--grad-checkpoint {}: expected auto, on or off", opt.grad_checkpoint);
  KVLAB_THROW_IF(opt.micro_batch_size < 0, UsageError,
                 "--micro-batch-size {}: must be 0 (the whole batch) or positive",
                 opt.micro_batch_size);
  KVLAB_THROW_IF(!f.linears.empty(), UsageError,
                 "binarize: the model already has {} packed layers (it was binarized); give the "
                 "original model artifact", f.linears.size());
  register_linear_kinds();
  const core::DeviceSpec ds = core::parse_device(opt.device);
  const std::string cdtype = opt.dtype != "auto" ? opt.dtype : (ds.cuda ? "bfloat16" : "float32");
  const at::Device dev = ds.cuda ? at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(ds.index))
                                 : at::Device(at::kCPU);
  const std::int64_t experts = effective_experts(opt);
  const bool bf16_state = opt.state_dtype == "bfloat16";
  const bool ckpt = opt.grad_checkpoint == "on" || (opt.grad_checkpoint == "auto" && ds.cuda);
  at::manual_seed(opt.seed);

  // Data: group_texts into seq_len blocks (the tail is dropped), as the official data loader.
  std::int64_t n_blocks = 0, steps_per_epoch = 0, total = 0;
  if (opt.steps != 0) {
    KVLAB_THROW_IF(!ids.defined() || ids.dim() != 1, UsageError,
                   "binarize: training needs --data (a token stream); use --steps 0 for "
                   "initialisation only");
    n_blocks = ids.numel() / opt.seq_len;
    KVLAB_THROW_IF(n_blocks < 1, UsageError,
                   "--data holds {} tokens, fewer than one --seq-len block of {}; give more data "
                   "or a smaller --seq-len", ids.numel(), opt.seq_len);
    steps_per_epoch = (n_blocks + opt.batch_size - 1) / opt.batch_size;
    total = opt.steps > 0 ? opt.steps : opt.epochs * steps_per_epoch;
  }
  const std::int64_t warmup = static_cast<std::int64_t>(std::ceil(opt.warmup_ratio * static_cast<double>(total)));

  // Student: the runtime model with trainable binary layers initialised from the dense weights.
  const llm::ModelOptions mo{opt.device, cdtype};
  auto student = std::make_shared<llm::Model>(llm::Model::from_file(f, mo));
  std::vector<Param> params;
  std::vector<std::shared_ptr<TrainMosLinear>> layers;
  {
    c10::NoGradGuard ng;
    for (std::int64_t li = 0; li < student->num_layers(); ++li) {
      for (int k = 0; k < 7; ++k) {
        const std::string prefix = fmt::format("model.layers.{}.{}", li, kLinearNames[k]);
        const at::Tensor w = f.weights.at(prefix + ".weight").to(dev);
        std::optional<at::Tensor> b;
        if (const auto it = f.weights.find(prefix + ".bias"); it != f.weights.end()) b = it->second.to(dev);
        MosParams p = opt.method == BinarizeMethod::sign ? init_sign(w, b) : init_mos(w, experts, b);
        if (bf16_state) p.weight = p.weight.to(at::kBFloat16);  // round to nearest once
        auto layer = std::make_shared<TrainMosLinear>(std::move(p));
        block_linear(student->blocks()[static_cast<std::size_t>(li)], k) = layer;
        layers.push_back(layer);
      }
    }
  }
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const std::string prefix = fmt::format("model.layers.{}.{}", i / 7, kLinearNames[i % 7]);
    const char* names[] = {"weight", "s_in", "s_out", "router"};
    const auto tr = layers[i]->trainable();
    for (std::size_t j = 0; j < tr.size(); ++j)
      // AdamW moments only when training (--steps 0 of a 7B model must not hold 2 x 26 GB).
      params.push_back({prefix + "." + names[j], tr[j],
                        total > 0 ? at::zeros_like(*tr[j]) : at::Tensor(),
                        total > 0 ? at::zeros_like(*tr[j]) : at::Tensor()});
  }

  // One-block views of the student for gradient checkpointing: Model copies share the layers.
  std::vector<llm::Model> views;
  std::vector<std::vector<at::Tensor>> block_params(static_cast<std::size_t>(student->num_layers()));
  for (std::size_t i = 0; i < layers.size(); ++i)
    for (at::Tensor* t : layers[i]->trainable()) block_params[i / 7].push_back(*t);
  if (ckpt && total > 0) {
    views.reserve(block_params.size());
    for (std::int64_t li = 0; li < student->num_layers(); ++li) {
      llm::Model one = *student;
      std::vector<std::int64_t> others;
      for (std::int64_t j = 0; j < student->num_layers(); ++j)
        if (j != li) others.push_back(j);
      one.remove_blocks(others);
      views.push_back(std::move(one));
    }
  }

  BinarizeResult res;
  res.total_steps = total;
  res.grad_checkpoint = ckpt && total > 0;
  std::int64_t step = 0;
  if (!opt.resume.empty()) {
    const core::Checkpoint ck = core::read_checkpoint(opt.resume, kTrainer);
    KVLAB_THROW_IF(ck.options_json != options_json(opt), UsageError,
                   "--resume {}: the checkpoint was written with options {} but this run has {}; "
                   "rerun with the same options or without --resume",
                   opt.resume, ck.options_json, options_json(opt));
    core::NamedTensors dst_m, dst_o;
    for (auto& p : params) {
      dst_m.emplace_back(p.name, *p.value);
      dst_o.emplace_back(p.name + ".exp_avg", p.m);
      dst_o.emplace_back(p.name + ".exp_avg_sq", p.v);
    }
    {
      c10::NoGradGuard ng;
      core::load_named_tensors(ck.model, dst_m, opt.resume);
      if (total > 0) core::load_named_tensors(ck.optimizer, dst_o, opt.resume);
    }
    step = ck.step;
  }
  auto save = [&](std::int64_t s) {
    core::Checkpoint c;
    c.trainer = kTrainer;
    c.step = s;
    c.epoch = steps_per_epoch ? s / steps_per_epoch : 0;
    c.step_in_epoch = steps_per_epoch ? s % steps_per_epoch : 0;
    c.options_json = options_json(opt);
    for (auto& p : params) {
      c.model.emplace_back(p.name, p.value->detach());
      c.optimizer.emplace_back(p.name + ".exp_avg", p.m);
      c.optimizer.emplace_back(p.name + ".exp_avg_sq", p.v);
    }
    core::write_checkpoint(opt.checkpoint, c, prov);
    res.checkpoint_written = opt.checkpoint;
  };

  if (total > 0 && step < total) {
    const llm::Model teacher = llm::Model::from_file(f, mo);
    const at::Tensor final_norm = f.weights.at("model.norm.weight").to(dev);
    const double eps = f.config.rms_norm_eps;
    const at::Tensor data = ids.to(at::kLong);
    progress.begin("distilling", total, "steps");
    std::int64_t cached_epoch = -1;
    std::vector<std::int64_t> order;
    while (step < total) {
      const auto t_step = std::chrono::steady_clock::now();
      const std::int64_t e = step / steps_per_epoch, k = step % steps_per_epoch;
      if (e != cached_epoch) order = epoch_order(n_blocks, opt.seed, e), cached_epoch = e;
      const std::int64_t b0 = k * opt.batch_size, nb = std::min(opt.batch_size, n_blocks - b0);
      std::vector<at::Tensor> rows;
      for (std::int64_t i = 0; i < nb; ++i)
        rows.push_back(data.narrow(0, order[static_cast<std::size_t>(b0 + i)] * opt.seq_len, opt.seq_len));
      const at::Tensor tok = at::stack(rows).to(dev);
      const at::Tensor pos = at::arange(opt.seq_len, at::TensorOptions().dtype(at::kLong)).unsqueeze(0).expand({nb, opt.seq_len}).contiguous();
      // Micro-batches: each one's loss is its share of the batch loss (KL summed / nb, MSE means
      // weighted n / nb), so the accumulated gradients are those of the whole batch.
      const std::int64_t mb = opt.micro_batch_size > 0 ? std::min(opt.micro_batch_size, nb) : nb;
      double lv = 0, kdv = 0, msev = 0;
      for (std::int64_t m0 = 0; m0 < nb; m0 += mb) {
        const std::int64_t n = std::min(mb, nb - m0);
        const at::Tensor tok_m = n == nb ? tok : tok.narrow(0, m0, n);
        const at::Tensor pos_m = n == nb ? pos : pos.narrow(0, m0, n);
        llm::ForwardOptions fo;
        std::vector<at::Tensor> hs_t, hs_s;
        at::Tensor logits_t, logits_s;
        {
          c10::NoGradGuard ng;
          llm::KVCache cache = teacher.make_cache(n);
          fo.hidden_states = &hs_t;
          logits_t = teacher.forward(tok_m, pos_m, cache, fo);
        }
        std::vector<BlockCall> calls;  // alive until backward() returns
        if (ckpt) {
          // Block by block, each a checkpointed function: its output is both the next block's
          // input and the hidden state of the l2l loss, so the loss's gradient reaches it.
          calls.resize(views.size());
          at::Tensor x = student->embed_tokens(tok_m);
          for (std::size_t li = 0; li < views.size(); ++li) {
            calls[li] = {&views[li], tok_m, pos_m, block_params[li]};
            x = checkpointed_block(calls[li], x);
            hs_s.push_back(x);
          }
          llm::KVCache cache_s = student->make_cache(n);
          llm::ForwardOptions fl;  // no blocks left: the final norm and the head
          fl.input_hidden = x;
          fl.first_block = student->num_layers();
          logits_s = student->forward(tok_m, pos_m, cache_s, fl);
        } else {
          llm::KVCache cache_s = student->make_cache(n);
          fo.hidden_states = &hs_s;
          logits_s = student->forward(tok_m, pos_m, cache_s, fo);
        }
        // KL(teacher || student), reduction batchmean: summed over tokens and vocab, / batch.
        const at::Tensor lt = at::log_softmax(logits_t, -1);
        const at::Tensor kd = (lt.exp() * (lt - at::log_softmax(logits_s, -1))).sum() / static_cast<double>(nb);
        // HF hidden_states[1:]: every block's output, the last one after the final norm.
        at::Tensor mse = at::zeros({}, logits_s.options());
        const std::size_t nl = hs_s.size();
        for (std::size_t l = 0; l < nl; ++l) {
          at::Tensor hs = hs_s[l].to(at::kFloat), ht = hs_t[l].to(at::kFloat);
          if (l + 1 == nl) hs = rms_norm_f32(hs_s[l], final_norm, eps), ht = rms_norm_f32(hs_t[l], final_norm, eps);
          mse = mse + (hs - ht).pow(2).mean();
        }
        if (n != nb) mse = mse * (static_cast<double>(n) / static_cast<double>(nb));
        const at::Tensor loss = kd + opt.l2l_loss_scale * mse;
        loss.backward();
        lv += loss.item<double>();
        kdv += kd.item<double>();
        msev += mse.item<double>();
      }
      {
        c10::NoGradGuard ng;
        double coef = 1.0;
        if (opt.max_grad_norm > 0) {  // torch.nn.utils.clip_grad_norm_ (HF Trainer default 1.0)
          at::Tensor sq = at::zeros({}, at::TensorOptions().dtype(at::kFloat).device(dev));
          for (auto& p : params) {
            if (!p.value->grad().defined()) continue;
            const at::Tensor& g = p.value->grad();
            sq = sq + (g.scalar_type() == at::kFloat ? g : g.to(at::kFloat)).pow(2).sum();
          }
          const double norm = std::sqrt(sq.item<double>());
          const double c = opt.max_grad_norm / (norm + 1e-6);
          if (c < 1.0) {
            coef = c;
            for (auto& p : params)  // bfloat16 gradients are scaled in float32 below
              if (p.value->grad().defined() && p.value->grad().scalar_type() == at::kFloat)
                p.value->mutable_grad().mul_(coef);
          }
        }
        // torch.optim.AdamW (betas 0.9/0.999, eps 1e-8), lr from the schedule for this step.
        const double lr = opt.lr * lr_factor(step, warmup, total);
        const double t = static_cast<double>(step + 1), b1 = 0.9, b2 = 0.999;
        const double bc1 = 1.0 - std::pow(b1, t), bc2 = 1.0 - std::pow(b2, t);
        if (bf16_state) at::manual_seed(rounding_seed(opt.seed, step));
        for (auto& p : params) {
          at::Tensor& w = *p.value;
          if (!w.grad().defined()) continue;
          if (w.scalar_type() != at::kFloat) {
            // bfloat16 state: the same update in float32, then stochastic rounding of the
            // weight and both moments (round-to-nearest would lose every update below half an
            // ulp, e.g. the exp_avg_sq decay by 0.999 and any lr x step < 2^-9 |w|).
            at::Tensor g = w.grad().to(at::kFloat);
            if (coef < 1.0) g.mul_(coef);
            const at::Tensor m = p.m.to(at::kFloat).mul_(b1).add_(g, 1.0 - b1);
            const at::Tensor v = p.v.to(at::kFloat).mul_(b2).addcmul_(g, g, 1.0 - b2);
            at::Tensor w32 = w.to(at::kFloat);
            if (opt.weight_decay > 0) w32.mul_(1.0 - lr * opt.weight_decay);
            w32.addcdiv_(m, (v.sqrt() / std::sqrt(bc2)).add_(1e-8), -lr / bc1);
            w.copy_(stochastic_round_bf16(w32));
            p.m.copy_(stochastic_round_bf16(m));
            p.v.copy_(stochastic_round_bf16(v));
            w.mutable_grad().zero_();
            continue;
          }
          const at::Tensor g = w.grad();
          if (opt.weight_decay > 0) w.mul_(1.0 - lr * opt.weight_decay);
          p.m.mul_(b1).add_(g, 1.0 - b1);
          p.v.mul_(b2).addcmul_(g, g, 1.0 - b2);
          const at::Tensor denom = (p.v.sqrt() / std::sqrt(bc2)).add_(1e-8);
          w.addcdiv_(p.m, denom, -lr / bc1);
          w.mutable_grad().zero_();
        }
      }
      ++step;
      ++res.steps;
      res.loss.push_back(lv);
      res.final_loss = lv;
      res.tokens_per_step = nb * opt.seq_len;
      res.step_seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t_step).count());
      progress.update(step, {{"loss", lv}, {"kd", kdv}, {"mse", msev}});
      const bool stop = progress.stop_requested();
      if (!opt.checkpoint.empty() &&
          (stop || (opt.checkpoint_every > 0 && step % opt.checkpoint_every == 0 && step < total)))
        save(step);
      if (stop && step < total) {
        res.stopped = true;
        break;
      }
    }
    progress.end({{"loss", res.final_loss}});
  }
  res.peak_device_bytes = core::peak_cuda_bytes();
  res.steps = step;
  for (auto& p : params) res.latent.emplace_back(p.name, p.value->detach().to(at::kCPU));

  // The packed model: the source model on the CPU in its stored dtype, block linears packed.
  auto out = std::make_shared<llm::Model>(llm::Model::from_file(f, {"cpu", "auto"}));
  for (std::size_t i = 0; i < layers.size(); ++i) {
    MosParams p = layers[i]->params();
    MosParams c;
    c.weight = p.weight.detach().to(at::kCPU);
    c.s_in = p.s_in.detach().to(at::kCPU);
    c.s_out = p.s_out.detach().to(at::kCPU);
    if (p.router.defined()) c.router = p.router.detach().to(at::kCPU);
    if (p.bias.defined()) c.bias = p.bias.detach().to(at::kCPU);
    auto packed = PackedMosLinear::pack(c, at::kCPU, out->dtype());
    res.linear_weights += packed->in_features() * packed->out_features();
    res.linear_bytes += mos_stored_bytes(packed->in_features(), packed->out_features(),
                                         packed->experts(), c.bias.defined());
    block_linear(out->blocks()[i / 7], static_cast<int>(i % 7)) = packed;
  }
  res.bits_per_weight = res.linear_weights ? 8.0 * static_cast<double>(res.linear_bytes) /
                                                 static_cast<double>(res.linear_weights)
                                           : 0.0;
  res.model = out;
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

core::ArtifactHeader write_binarized_model(const std::filesystem::path& path,
                                           const BinarizeResult& r, const BinarizeOptions& opt,
                                           const std::string& hf_config,
                                           const core::Provenance& prov) {
  KVLAB_THROW_IF(!r.model, UsageError, "write_binarized_model: no model");
  return llm::write_model_with_linears(path, *r.model, prov, hf_config, [&](h5::Group& root) {
    h5::Group g = root.require_group("linears");
    g.set_attr("method", binarize_method_name(opt.method));
    g.set_attr("experts", effective_experts(opt));
    g.set_attr("bits_per_weight", r.bits_per_weight);
    g.set_attr("linear_weights", r.linear_weights);
    g.set_attr("linear_bytes", static_cast<std::int64_t>(r.linear_bytes));
    g.set_attr("steps", r.steps);
    g.set_attr("final_loss", r.final_loss);
  });
}

namespace {
// Mean wall time of a training step, leaving out the first (allocator warm-up, kernel selection)
// when there are more; 0 without training.
double seconds_per_step(const BinarizeResult& r) {
  const auto& s = r.step_seconds;
  if (s.empty()) return 0.0;
  const std::size_t first = s.size() > 1 ? 1 : 0;
  double sum = 0;
  for (std::size_t i = first; i < s.size(); ++i) sum += s[i];
  return sum / static_cast<double>(s.size() - first);
}
}  // namespace

std::string binarize_report_text(const BinarizeResult& r, const BinarizeOptions& opt) {
  return fmt::format(
      "binarized {} linear weights ({}, E={}): {:.4f} bits/weight, {:.2f} MiB packed; {} of {} "
      "steps, final loss {:.4f}; {:.1f} s{}",
      r.linear_weights, binarize_method_name(opt.method), effective_experts(opt),
      r.bits_per_weight, static_cast<double>(r.linear_bytes) / (1024.0 * 1024.0), r.steps,
      r.total_steps, r.final_loss, r.seconds,
      r.peak_device_bytes ? fmt::format(", peak CUDA {}", core::human_bytes(r.peak_device_bytes))
                          : std::string());
}

std::string binarize_report_json(const BinarizeResult& r, const BinarizeOptions& opt) {
  return nlohmann::json{{"method", binarize_method_name(opt.method)},
                        {"experts", effective_experts(opt)},
                        {"linear_weights", r.linear_weights},
                        {"linear_bytes", r.linear_bytes},
                        {"bits_per_weight", r.bits_per_weight},
                        {"steps", r.steps},
                        {"total_steps", r.total_steps},
                        {"final_loss", r.final_loss},
                        {"seconds", r.seconds},
                        {"seconds_per_step", seconds_per_step(r)},
                        {"tokens_per_step", r.tokens_per_step},
                        {"state_dtype", opt.state_dtype},
                        {"grad_checkpoint", r.grad_checkpoint},
                        {"micro_batch_size", opt.micro_batch_size},
                        {"peak_device_bytes", r.peak_device_bytes}}
      .dump();
}

}  // namespace kvlab::binary
