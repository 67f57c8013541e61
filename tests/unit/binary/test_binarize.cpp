// BinaryMoS layers and kvlab binarize: bit packing, the packed forward against the float
// reference, initialisation, the STE, packed storage in a model artifact (load_model, logits,
// bits per weight and file size), distillation, kill-and-resume giving identical weights, gradient
// checkpointing and micro-batches giving the same step, bfloat16 state with stochastic rounding.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <doctest/doctest.h>

#include <filesystem>

#include "mos_test_util.hpp"
#include "../llm/tiny_model.hpp"
#include "../test_util.hpp"
#include "kvlab/binary/binarize.hpp"
#include "kvlab/binary/mos.hpp"
#include "kvlab/core/artifact.hpp"
#include "kvlab/llm/data.hpp"
#include "kvlab/llm/import_export.hpp"
#include "kvlab/llm/model_io.hpp"
#include "kvlab/llm/tokenizer.hpp"

using namespace kvlab;

namespace {

core::Provenance test_prov() { return core::Provenance{}; }

// Stops after `at` updates (what a SIGTERM does through the CLI's stop flag).
class StopAfter : public core::NullProgress {
 public:
  explicit StopAfter(std::int64_t at) : at_(at) {}
  void update(std::int64_t done, const core::Metrics& = {}) override { done_ = done; }
  bool stop_requested() const override { return done_ >= at_; }

 private:
  std::int64_t at_, done_ = 0;
};

using test::random_params;

// Largest difference between two runs' latent tensors, over the names containing `only` (all: "").
double max_latent_diff(const binary::BinarizeResult& a, const binary::BinarizeResult& b,
                       const std::string& only = "", const std::string& skip = "\n") {
  REQUIRE(a.latent.size() == b.latent.size());
  double d = 0;
  for (std::size_t i = 0; i < a.latent.size(); ++i) {
    REQUIRE(a.latent[i].first == b.latent[i].first);
    const std::string& name = a.latent[i].first;
    if (name.find(only) == std::string::npos || name.find(skip) != std::string::npos) continue;
    d = std::max(d, (a.latent[i].second.to(at::kFloat) - b.latent[i].second.to(at::kFloat))
                        .abs().max().item<double>());
  }
  return d;
}

at::Tensor half_round(const at::Tensor& t) {
  return t.defined() ? t.to(at::kHalf).to(at::kFloat) : t;
}

}  // namespace

TEST_CASE("pack_signs / unpack_signs round trip, sign(0) = +1, widths not a multiple of 8") {
  at::manual_seed(1);
  for (std::int64_t in : {1, 7, 8, 9, 64, 100}) {
    CAPTURE(in);
    at::Tensor w = at::randn({5, in});
    w.index_put_({0, 0}, 0.0);
    const at::Tensor p = binary::pack_signs(w);
    CHECK((p.scalar_type() == at::kByte));
    CHECK((p.sizes() == at::IntArrayRef({5, (in + 7) / 8})));
    const at::Tensor u = binary::unpack_signs(p, in, at::kFloat);
    CHECK(at::equal(u, binary::sign_pm1(w)));
    CHECK(u[0][0].item<float>() == 1.0f);
  }
  // Bit j of byte k is column 8k + j (LSB first): the documented layout.
  at::Tensor w = -at::ones({1, 16});
  w.index_put_({0, 0}, 1.0);
  w.index_put_({0, 9}, 1.0);
  const at::Tensor p = binary::pack_signs(w);
  CHECK(p[0][0].item<std::uint8_t>() == 1);
  CHECK(p[0][1].item<std::uint8_t>() == 2);
}

TEST_CASE("packed BinaryMoS forward equals the float reference forward") {
  at::manual_seed(2);
  struct Case { std::int64_t in, out, e; bool bias; std::int64_t tile; };
  for (const Case& c : {Case{37, 20, 4, false, 0}, Case{64, 48, 1, true, 0},
                        Case{64, 48, 4, true, 7}, Case{13, 9, 2, false, 1}}) {
    CAPTURE(c.in);
    CAPTURE(c.e);
    CAPTURE(c.tile);
    const binary::MosParams p = random_params(c.in, c.out, c.e, c.bias);
    auto packed = binary::PackedMosLinear::pack(p, at::kCPU, at::kFloat);
    packed->set_tile_rows(c.tile);
    const at::Tensor x = at::randn({2, 3, c.in});
    // Reference: the official formula with sign(W) and the fp16-stored scales.
    const at::Tensor ref = binary::mos_forward(x, binary::sign_pm1(p.weight), half_round(p.s_in),
                                               half_round(p.s_out), half_round(p.router),
                                               half_round(p.bias));
    const at::Tensor got = packed->forward(x);
    REQUIRE((got.sizes() == ref.sizes()));
    CHECK(at::allclose(got, ref, 1e-5, 1e-5));
    // A record round trip computes the same thing.
    binary::PackedMosLinear back(packed->record(), at::kCPU, at::kFloat);
    back.set_tile_rows(c.tile);
    CHECK(at::equal(back.forward(x), packed->forward(x)));
    // Tiling changes only the float summation order.
    back.set_tile_rows(0);
    CHECK(at::allclose(back.forward(x), got, 1e-5, 1e-5));
    // E = 1: the dense equivalent is exact.
    if (c.e == 1) {
      at::Tensor d = at::linear(x, packed->dense_weight(), *packed->bias());
      CHECK(at::allclose(d, got, 1e-5, 1e-5));
    }
  }
  // The token-adaptive scales matter: with distinct experts, changing only the router changes y.
  binary::MosParams p = random_params(16, 8, 4, false);
  const at::Tensor x = at::randn({4, 16});
  const at::Tensor a = binary::mos_forward(x, binary::sign_pm1(p.weight), p.s_in, p.s_out, p.router, {});
  const at::Tensor b = binary::mos_forward(x, binary::sign_pm1(p.weight), p.s_in, p.s_out, -p.router, {});
  CHECK_FALSE(at::allclose(a, b));
}

TEST_CASE("init_mos: rank-1 SVD of |W| in every expert; output independent of the router") {
  at::manual_seed(3);
  const at::Tensor w = at::randn({24, 40}) * 0.05;
  const binary::MosParams p = binary::init_mos(w, 4);
  CHECK((p.s_in.sizes() == at::IntArrayRef({4, 40})));
  CHECK((p.s_out.sizes() == at::IntArrayRef({4, 24})));
  CHECK((p.router.sizes() == at::IntArrayRef({4, 40})));
  CHECK(p.router.abs().max().item<double>() <= 1.0 / std::sqrt(40.0) + 1e-7);
  for (int e = 1; e < 4; ++e) {
    CHECK(at::equal(p.s_in[e], p.s_in[0]));
    CHECK(at::equal(p.s_out[e], p.s_out[0]));
  }
  // s_out s_in^T is the best rank-1 approximation of |W| (compare with the SVD truncation).
  auto [u, s, vh] = at::linalg_svd(w.abs(), false);
  const at::Tensor r1 = s[0] * at::outer(u.select(1, 0), vh.select(0, 0));
  CHECK(at::allclose(at::outer(p.s_out[0], p.s_in[0]), r1, 1e-5, 1e-6));
  // It is a better magnitude model than a per-row mean: the rank-1 error is smaller.
  const at::Tensor m = w.abs().mean(1, true).expand_as(w);
  CHECK((r1 - w.abs()).pow(2).sum().item<double>() < (m - w.abs()).pow(2).sum().item<double>());
  const at::Tensor x = at::randn({5, 40});
  const at::Tensor y1 = binary::mos_forward(x, binary::sign_pm1(p.weight), p.s_in, p.s_out, p.router, {});
  const at::Tensor y2 = binary::mos_forward(x, binary::sign_pm1(p.weight), p.s_in, p.s_out, p.router * 5, {});
  CHECK(at::allclose(y1, y2, 1e-5, 1e-6));
  // E = 1 has no router; sign: mean |W| per output row and unit input scales.
  CHECK_FALSE(binary::init_mos(w, 1).router.defined());
  const binary::MosParams sg = binary::init_sign(w);
  CHECK(at::allclose(sg.s_out[0], w.abs().mean(1)));
  CHECK(at::equal(sg.s_in, at::ones({1, 40})));
}

TEST_CASE("ste_sign: sign forward, gradient passed only where |w| < 1") {
  at::Tensor w = at::tensor({-2.0f, -0.5f, 0.0f, 0.3f, 1.5f}).requires_grad_(true);
  const at::Tensor y = binary::ste_sign(w);
  CHECK(at::equal(y.detach(), at::tensor({-1.0f, -1.0f, 1.0f, 1.0f, 1.0f})));
  (y * at::tensor({1.0f, 2.0f, 3.0f, 4.0f, 5.0f})).sum().backward();
  CHECK(at::equal(w.grad(), at::tensor({0.0f, 2.0f, 3.0f, 4.0f, 0.0f})));
}

TEST_CASE("bits per weight: about 1.04 for Llama-2-7B shapes (the reference's 1.036)") {
  llm::ModelConfig c;
  c.hidden_size = 4096;
  c.intermediate_size = 11008;
  c.num_attention_heads = 32;
  c.num_key_value_heads = 32;
  c.head_dim = 128;
  const double mos = binary::binarized_bits_per_weight(c, binary::BinarizeMethod::mos, 4);
  const double one = binary::binarized_bits_per_weight(c, binary::BinarizeMethod::mos, 1);
  CHECK(mos == doctest::Approx(1.036).epsilon(0.002));
  CHECK(one < mos);
  CHECK(one > 1.0);
  // The packed 7B total of the reference (1.363 GB with fp16 embed + head): linears by our
  // arithmetic + 2 x 32000 x 4096 fp16.
  const double linear_params = 32.0 * (4 * 4096.0 * 4096 + 3 * 4096.0 * 11008);
  const double total_gb = (linear_params * mos / 8 + 2.0 * 2 * 32000 * 4096) / 1e9;
  CHECK(total_gb == doctest::Approx(1.363).epsilon(0.005));
}

TEST_CASE("binarize --steps 0: packed artifact loads, gives the same logits, size matches bits") {
  binary::register_linear_kinds();
  llm::ModelConfig c = test::tiny_llm_config();
  c.hidden_size = 128;
  c.intermediate_size = 352;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 32;
  c.num_hidden_layers = 2;
  c.vocab_size = 260;
  llm::ModelFile f = test::tiny_llm_file(c);
  f.tokenizer = llm::byte_tokenizer_data(c.vocab_size, 256, 257);  // travels with the weights
  for (std::int64_t e : {4, 1}) {
    CAPTURE(e);
    binary::BinarizeOptions o;
    o.steps = 0;
    o.experts = e;
    core::NullProgress np;
    const binary::BinarizeResult r = binary::binarize_model(f, {}, o, test_prov(), np);
    const auto path = test::scratch("bin_e" + std::to_string(e) + ".h5");
    std::filesystem::remove(path);
    binary::write_binarized_model(path, r, o, "", test_prov());
    const llm::Model loaded = llm::load_model(path, {});
    REQUIRE(loaded.blocks()[0].q_proj->kind() == "binary-mos");
    const std::optional<llm::TokenizerData> tk = llm::read_model(path).tokenizer;
    REQUIRE(tk.has_value());
    CHECK(tk->tokens == f.tokenizer->tokens);
    CHECK(tk->eos_id == 257);
    CHECK(loaded.blocks()[1].down_proj->kind() == "binary-mos");
    const at::Tensor tok = at::randint(0, c.vocab_size, {2, 9}, at::kLong);
    const at::Tensor pos = test::arange_positions(2, 9);
    auto run = [&](const llm::Model& m) {
      llm::KVCache cache = m.make_cache(2);
      return m.forward(tok, pos, cache);
    };
    const at::Tensor got = run(loaded);
    CHECK(at::equal(got, run(*r.model)));
    // The unpacked float reference: every layer as a dense layer of its +-1 signs and scales
    // (exact at initialisation: all experts equal).
    llm::Model dense = llm::Model::from_file(f);
    for (std::size_t i = 0; i < dense.blocks().size(); ++i) {
      const llm::Block& pb = loaded.blocks()[i];
      llm::Block& db = dense.blocks()[i];
      std::pair<std::shared_ptr<llm::Linear>*, const std::shared_ptr<llm::Linear>*> pairs[] = {
          {&db.q_proj, &pb.q_proj}, {&db.k_proj, &pb.k_proj}, {&db.v_proj, &pb.v_proj},
          {&db.o_proj, &pb.o_proj}, {&db.gate_proj, &pb.gate_proj}, {&db.up_proj, &pb.up_proj},
          {&db.down_proj, &pb.down_proj}};
      for (auto& [d, p] : pairs) *d = std::make_shared<llm::DenseLinear>((*p)->dense_weight());
    }
    CHECK(at::allclose(run(dense), got, 1e-4, 1e-4));
    // Storage: bits per weight from the arithmetic; the file is its payload plus HDF5 metadata.
    CHECK(r.bits_per_weight == doctest::Approx(binary::binarized_bits_per_weight(c, o.method, e)));
    std::uint64_t dense_bytes = 0;
    for (const auto& [name, t] : f.weights)
      if (name.find("_proj") == std::string::npos) dense_bytes += t.numel() * t.element_size();
    const double payload = static_cast<double>(r.linear_bytes + dense_bytes);
    const double size = static_cast<double>(std::filesystem::file_size(path));
    CAPTURE(size);
    CAPTURE(payload);
    CHECK(size >= payload);
    CHECK(size < payload + 64 * 1024);  // 14 layer groups + params: HDF5 metadata only
    CHECK(static_cast<double>(r.linear_bytes) * 8 /
              static_cast<double>(r.linear_weights) == doctest::Approx(r.bits_per_weight));
    // inspect --validate's schema check accepts it (packed layers count as present).
    core::SchemaRegistry reg;
    llm::add_model_schema(reg);
    const auto problems = core::validate(core::ArtifactReader::open(path, "model", 1, 1), reg);
    CHECK(problems.empty());
  }
}

TEST_CASE("a packed model without the registered kind is refused with a FormatError") {
  llm::LinearRecord r;
  r.kind = "no-such-kind";
  r.in_features = r.out_features = 4;
  const std::string msg = test::error_of(
      [&] { llm::make_linear(r, at::kCPU, at::kFloat, "model.layers.0.mlp.up_proj"); }, 3);
  CHECK(msg.find("no-such-kind") != std::string::npos);
  CHECK(msg.find("model.layers.0.mlp.up_proj") != std::string::npos);
}

TEST_CASE("distillation lowers the loss; killed-and-resumed training ends with the same weights") {
  binary::register_linear_kinds();
  const llm::ModelConfig c = test::tiny_llm_config();
  const llm::ModelFile f = test::tiny_llm_file(c);
  at::manual_seed(11);
  const at::Tensor ids = at::randint(0, c.vocab_size, {16 * 10}, at::kLong);
  binary::BinarizeOptions o;
  o.seq_len = 16;
  o.batch_size = 3;  // 10 blocks: a partial last batch per epoch
  o.steps = 8;
  o.lr = 5e-3;
  o.checkpoint = test::scratch("resume.ckpt.h5").string();
  std::filesystem::remove(o.checkpoint);
  core::NullProgress np;
  const binary::BinarizeResult full = binary::binarize_model(f, ids, o, test_prov(), np);
  CHECK(full.steps == 8);
  CHECK(full.loss.back() < full.loss.front());

  StopAfter stop(3);
  const binary::BinarizeResult part = binary::binarize_model(f, ids, o, test_prov(), stop);
  CHECK(part.stopped);
  CHECK(part.steps == 3);
  REQUIRE(std::filesystem::exists(o.checkpoint));
  binary::BinarizeOptions ro = o;
  ro.resume = o.checkpoint;
  const binary::BinarizeResult rest = binary::binarize_model(f, ids, ro, test_prov(), np);
  CHECK(rest.steps == 8);
  REQUIRE(rest.latent.size() == full.latent.size());
  for (std::size_t i = 0; i < full.latent.size(); ++i) {
    CAPTURE(full.latent[i].first);
    CHECK(rest.latent[i].first == full.latent[i].first);
    CHECK(at::equal(rest.latent[i].second, full.latent[i].second));  // bitwise
  }
  // The loss of the resumed steps is the tail of the uninterrupted run's.
  REQUIRE(rest.loss.size() == 5);
  CHECK(rest.loss.back() == full.loss.back());

  // A resume with different options is refused.
  binary::BinarizeOptions bad = ro;
  bad.experts = 2;
  StopAfter stop2(1);
  binary::BinarizeOptions o2 = o;
  (void)binary::binarize_model(f, ids, o2, test_prov(), stop2);
  CHECK(test::error_of([&] { binary::binarize_model(f, ids, bad, test_prov(), np); }, 2)
            .find("--resume") != std::string::npos);
}

TEST_CASE("checkpointed_block: the same block outputs and parameter/input gradients") {
  const llm::ModelConfig c = test::tiny_llm_config();
  const llm::ModelFile f = test::tiny_llm_file(c);
  llm::Model m = llm::Model::from_file(f);
  // Every block linear becomes a dense layer with a trainable weight.
  std::vector<std::vector<at::Tensor>> params(static_cast<std::size_t>(m.num_layers()));
  for (std::size_t li = 0; li < params.size(); ++li) {
    llm::Block& b = m.blocks()[li];
    for (std::shared_ptr<llm::Linear>* l : {&b.q_proj, &b.k_proj, &b.v_proj, &b.o_proj,
                                            &b.gate_proj, &b.up_proj, &b.down_proj}) {
      at::Tensor w = (*l)->dense_weight().clone().requires_grad_(true);
      *l = std::make_shared<llm::DenseLinear>(w);
      params[li].push_back(w);
    }
  }
  std::vector<llm::Model> views;
  for (std::int64_t li = 0; li < m.num_layers(); ++li) {
    llm::Model one = m;
    std::vector<std::int64_t> others;
    for (std::int64_t j = 0; j < m.num_layers(); ++j)
      if (j != li) others.push_back(j);
    one.remove_blocks(others);
    views.push_back(one);
  }
  at::manual_seed(5);
  const at::Tensor tok = at::randint(0, c.vocab_size, {2, 11}, at::kLong);
  const at::Tensor pos = test::arange_positions(2, 11);
  const at::Tensor x0 = m.embed_tokens(tok).detach().requires_grad_(true);
  struct Out {
    std::vector<at::Tensor> hidden, grads;
    double loss = 0;
  };
  auto run = [&](bool ckpt) {
    std::vector<binary::BlockCall> calls(views.size());
    Out o;
    at::Tensor x = x0, loss = at::zeros({});
    for (std::size_t li = 0; li < views.size(); ++li) {
      calls[li] = {&views[li], tok, pos, params[li]};
      x = ckpt ? binary::checkpointed_block(calls[li], x) : binary::run_block(calls[li], x);
      o.hidden.push_back(x.detach().clone());
      loss = loss + 3.0 * x.pow(2).mean();  // every block's output feeds the loss (the l2l term)
    }
    loss = loss + x.sin().sum();
    loss.backward();
    o.loss = loss.item<double>();
    o.grads.push_back(x0.grad().clone());
    x0.mutable_grad().zero_();
    for (auto& ps : params)
      for (auto& p : ps) {
        o.grads.push_back(p.grad().clone());
        p.mutable_grad().zero_();
      }
    return o;
  };
  const Out plain = run(false), ckpt = run(true);
  // The block-wise forward is the model's own forward.
  std::vector<at::Tensor> hs;
  llm::ForwardOptions fo;
  fo.hidden_states = &hs;
  llm::KVCache cache = m.make_cache(2);
  {
    c10::NoGradGuard ng;
    m.forward(tok, pos, cache, fo);
  }
  REQUIRE(hs.size() == plain.hidden.size());
  CHECK(ckpt.loss == plain.loss);
  for (std::size_t i = 0; i < hs.size(); ++i) {
    CHECK(at::equal(plain.hidden[i], hs[i]));
    CHECK(at::equal(ckpt.hidden[i], hs[i]));
  }
  REQUIRE(ckpt.grads.size() == plain.grads.size());
  for (std::size_t i = 0; i < plain.grads.size(); ++i) {
    CAPTURE(i);
    CHECK(plain.grads[i].abs().max().item<double>() > 1e-4);  // every weight and x0 get a gradient
    CHECK((ckpt.grads[i] - plain.grads[i]).abs().max().item<double>() <=
          1e-6 * plain.grads[i].abs().max().item<double>());
  }
}

TEST_CASE("gradient checkpointing and micro-batches give the same training step") {
  binary::register_linear_kinds();
  const llm::ModelConfig c = test::tiny_llm_config();
  const llm::ModelFile f = test::tiny_llm_file(c);
  at::manual_seed(12);
  const at::Tensor ids = at::randint(0, c.vocab_size, {16 * 6}, at::kLong);
  core::NullProgress np;
  for (std::int64_t e : {1, 4}) {
    CAPTURE(e);
    binary::BinarizeOptions o;
    o.experts = e;
    o.seq_len = 16;
    o.batch_size = 3;
    o.steps = 1;
    o.lr = 1e-3;
    o.warmup_ratio = 0;  // the step moves the weights (with warm-up the first lr is 0)
    o.grad_checkpoint = "off";
    const binary::BinarizeResult plain = binary::binarize_model(f, ids, o, test_prov(), np);
    CHECK_FALSE(plain.grad_checkpoint);
    binary::BinarizeOptions o0 = o;
    o0.steps = 0;
    const binary::BinarizeResult init = binary::binarize_model(f, {}, o0, test_prov(), np);
    CHECK(max_latent_diff(plain, init, ".weight") > 0.9e-3);  // Adam's first step: about lr
    struct Variant { const char* gc; std::int64_t micro; };
    for (const Variant v : {Variant{"on", 0}, Variant{"off", 1}, Variant{"on", 1}, Variant{"on", 2}}) {
      CAPTURE(v.gc);
      CAPTURE(v.micro);
      binary::BinarizeOptions ov = o;
      ov.grad_checkpoint = v.gc;
      ov.micro_batch_size = v.micro;
      const binary::BinarizeResult r = binary::binarize_model(f, ids, ov, test_prov(), np);
      CHECK(r.grad_checkpoint == (std::string(v.gc) == "on"));
      REQUIRE(r.loss.size() == 1);
      if (v.micro == 0) CHECK(r.loss[0] == plain.loss[0]);  // the same forward, bitwise
      CHECK(r.loss[0] == doctest::Approx(plain.loss[0]).epsilon(1e-6));
      // Checkpointing: the same sums in the same order, equal to 1e-6 (float32 rounding). Micro-
      // batches sum the batch's gradient in another order; Adam's first step divides by |g| + eps,
      // so gradients near zero turn that rounding into moves up to a few 1e-6 (0.3 % of lr here).
      CHECK(max_latent_diff(r, plain, "", "router") < (v.micro == 0 ? 1e-6 : 1e-5));
      // At initialisation every expert is the same, so the output does not depend on the router
      // and its gradient is zero up to rounding noise, which Adam's first step (g / (|g| + eps))
      // turns into moves of up to lr: the routers agree only to lr.
      if (e > 1) CHECK(max_latent_diff(r, plain, "router") <= o.lr * 1.001);
    }
  }
  // Bad values are usage errors.
  binary::BinarizeOptions bad;
  bad.seq_len = 16;
  bad.grad_checkpoint = "maybe";
  CHECK(test::error_of([&] { binary::binarize_model(f, ids, bad, test_prov(), np); }, 2)
            .find("--grad-checkpoint") != std::string::npos);
  bad.grad_checkpoint = "auto";
  bad.state_dtype = "float16";
  CHECK(test::error_of([&] { binary::binarize_model(f, ids, bad, test_prov(), np); }, 2)
            .find("--state-dtype") != std::string::npos);
}

TEST_CASE("stochastic_round_bf16: bfloat16 neighbours only, unbiased, exact values kept") {
  at::manual_seed(13);
  // 1 + 2^-9 lies a quarter of a bfloat16 ulp (2^-7) above 1: rounds to 1 + 2^-7 one time in 4.
  // Round-to-nearest always gives 1 (error 2^-9 = 0.00195); the mean of stochastic roundings
  // stays within a few standard errors (2^-7 sqrt(3/16) / sqrt(n) = 7.6e-6) of the value.
  for (double x : {1.0 + std::ldexp(1.0, -9), -(1.0 + std::ldexp(1.0, -9)), 3e-3}) {
    CAPTURE(x);
    const at::Tensor v = at::full({200000}, x, at::kFloat);
    const at::Tensor r = binary::stochastic_round_bf16(v);
    CHECK((r.scalar_type() == at::kBFloat16));
    const at::Tensor rf = r.to(at::kFloat);
    const double mean = rf.mean().item<double>();
    const double ulp = std::ldexp(1.0, std::ilogb(std::abs(x)) - 7);
    CHECK(std::abs(mean - x) < 0.01 * ulp);
    CHECK(std::abs(v.to(at::kBFloat16).to(at::kFloat)[0].item<double>() - x) > 0.2 * ulp);  // RNE is off
    // Only the two neighbours occur.
    const double lo = std::trunc(x / ulp) * ulp, hi = lo + (x > 0 ? ulp : -ulp);
    CHECK((rf.eq(lo) | rf.eq(hi)).all().item<bool>());
    CHECK(rf.eq(hi).any().item<bool>());
    CHECK(rf.eq(lo).any().item<bool>());
  }
  // Many values at once: each one's mean over 20000 roundings is within 3 % of its ulp.
  const at::Tensor x = at::randn({64}) * 0.01;
  const at::Tensor m = binary::stochastic_round_bf16(x.unsqueeze(0).expand({20000, 64})).to(at::kFloat).mean(0);
  const at::Tensor ulp = at::pow(2.0, at::floor(at::log2(x.abs())) - 7);
  CHECK(((m - x).abs() / ulp).max().item<double>() < 0.03);
  // Values that are already bfloat16 never move; zero stays zero.
  const at::Tensor e = at::randn({1000}).to(at::kBFloat16);
  CHECK(at::equal(binary::stochastic_round_bf16(e.to(at::kFloat)), e));
  CHECK(binary::stochastic_round_bf16(at::zeros({4})).abs().sum().item<double>() == 0.0);
}

TEST_CASE("bfloat16 state: the fixture model trains; killed-and-resumed gives the same weights") {
  binary::register_linear_kinds();
  const auto src = test::scratch("bf16_fixture.h5");
  std::filesystem::remove(src);
  core::NullProgress np;
  llm::import_hf(test::source_path("data/kjv-byte-llama"), src, {}, {}, np);
  const llm::ModelFile f = llm::read_model(src);
  const at::Tensor ids = llm::read_model_data(test::source_path("data/kjv-byte-llama/heldout.txt"),
                                              {}, src).ids.narrow(0, 0, 64 * 24);
  binary::BinarizeOptions o;
  o.experts = 1;
  o.seq_len = 64;
  o.batch_size = 2;
  o.steps = 10;
  o.lr = 5e-4;
  o.state_dtype = "bfloat16";
  o.grad_checkpoint = "on";
  o.checkpoint = test::scratch("bf16.ckpt.h5").string();
  std::filesystem::remove(o.checkpoint);
  const binary::BinarizeResult r = binary::binarize_model(f, ids, o, test_prov(), np);
  REQUIRE(r.loss.size() == 10);
  CAPTURE(r.loss.front());
  CAPTURE(r.loss.back());
  // Step 0 has the warm-up's lr 0 (the initial loss); ten steps later it is well below that.
  CHECK(r.loss.back() < 0.8 * r.loss.front());
  const auto w = std::find_if(r.latent.begin(), r.latent.end(),
                              [](const auto& p) { return p.first == "model.layers.0.mlp.up_proj.weight"; });
  REQUIRE(w != r.latent.end());
  CHECK((w->second.scalar_type() == at::kBFloat16));
  const auto s = std::find_if(r.latent.begin(), r.latent.end(),
                              [](const auto& p) { return p.first == "model.layers.0.mlp.up_proj.s_in"; });
  REQUIRE(s != r.latent.end());
  CHECK((s->second.scalar_type() == at::kFloat));  // scales stay float32

  // The rounding is seeded by (seed, step): a resumed run rounds as the uninterrupted one.
  StopAfter stop(2);
  binary::BinarizeOptions short_o = o;
  (void)binary::binarize_model(f, ids, short_o, test_prov(), stop);
  REQUIRE(std::filesystem::exists(o.checkpoint));
  binary::BinarizeOptions ro = o;
  ro.resume = o.checkpoint;
  const binary::BinarizeResult rest = binary::binarize_model(f, ids, ro, test_prov(), np);
  CHECK(rest.steps == 10);
  CHECK(max_latent_diff(rest, r) == 0.0);
  // A float32-state checkpoint does not resume a bfloat16-state run.
  binary::BinarizeOptions fo = ro;
  fo.state_dtype = "float32";
  CHECK(test::error_of([&] { binary::binarize_model(f, ids, fo, test_prov(), np); }, 2)
            .find("state_dtype") != std::string::npos);
}
