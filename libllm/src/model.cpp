#include "kvlab/llm/model.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "kvlab/core/error.hpp"
#include "kvlab/core/runtime.hpp"
#include "kvlab/llm/attention.hpp"
#include "kvlab/llm/rope.hpp"
#include "cuda_kernels.hpp"

namespace kvlab::llm {

// ---------------------------------------------------------------- Linear

DenseLinear::DenseLinear(at::Tensor weight, std::optional<at::Tensor> bias)
    : w_(std::move(weight)), b_(bias ? *bias : at::Tensor()) {
  TORCH_CHECK(w_.dim() == 2, "DenseLinear: weight must be 2-D");
}

at::Tensor DenseLinear::forward(const at::Tensor& x) const { return at::linear(x, w_, b_); }

void Block::fuse_weights() {
  auto dense = [](const std::shared_ptr<Linear>& l) {
    return dynamic_cast<const DenseLinear*>(l.get()) != nullptr;
  };
  // Concatenates the weights (and biases: all or none) of `ls` along the output dimension and
  // replaces each layer by a view into the result.
  // Concatenates the weights (and biases: all or none) of `ls` along the output dimension and
  // replaces each layer by a view into the result.
  auto fuse = [](std::vector<std::shared_ptr<Linear>*> ls) {
    std::vector<at::Tensor> ws, bs;
    for (auto* l : ls) {
      ws.push_back((*l)->dense_weight());
      if (auto b = (*l)->bias()) bs.push_back(*b);
    }
    if (!bs.empty() && bs.size() != ls.size()) return;
    for (const at::Tensor& w : ws)
      if (w.scalar_type() != ws[0].scalar_type() || w.size(1) != ws[0].size(1)) return;
    const at::Tensor w = at::cat(ws, 0);
    const at::Tensor b = bs.empty() ? at::Tensor() : at::cat(bs, 0);
    std::int64_t row = 0;
    for (std::size_t i = 0; i < ls.size(); ++i) {
      const std::int64_t n = ws[i].size(0);
      std::optional<at::Tensor> bi;
      if (b.defined()) bi = b.narrow(0, row, n);
      *ls[i] = std::make_shared<DenseLinear>(w.narrow(0, row, n), bi);
      row += n;
    }
  };
  if (dense(q_proj) && dense(k_proj) && dense(v_proj)) fuse({&q_proj, &k_proj, &v_proj});
  if (dense(gate_proj) && dense(up_proj) && !gate_proj->bias() && !up_proj->bias())
    fuse({&gate_proj, &up_proj});
}

namespace {
// The weights (or biases) `ts`, when they are row blocks stored one after another in one
// allocation: the whole as one tensor (a view), else undefined.
at::Tensor adjacent_rows(const std::vector<at::Tensor>& ts) {
  const at::Tensor& a = ts[0];
  if (!a.is_contiguous()) return {};
  const std::int64_t cols = a.dim() == 2 ? a.size(1) : 1;
  std::int64_t rows = 0;
  for (const at::Tensor& t : ts) {
    if (!t.is_contiguous() || t.dim() != a.dim() || t.scalar_type() != a.scalar_type() ||
        (t.dim() == 2 && t.size(1) != cols) || !t.storage().is_alias_of(a.storage()) ||
        t.storage_offset() != a.storage_offset() + rows * cols)
      return {};
    rows += t.size(0);
  }
  if (a.dim() == 2) return a.as_strided({rows, cols}, {cols, 1}, a.storage_offset());
  return a.as_strided({rows}, {1}, a.storage_offset());
}
}  // namespace

bool Block::qkv_fused(at::Tensor* w, at::Tensor* b) const {
  if (q_proj->kind() != "dense" || k_proj->kind() != "dense" || v_proj->kind() != "dense")
    return false;
  const at::Tensor fw =
      adjacent_rows({q_proj->dense_weight(), k_proj->dense_weight(), v_proj->dense_weight()});
  if (!fw.defined()) return false;
  at::Tensor fb;
  const auto bq = q_proj->bias(), bk = k_proj->bias(), bv = v_proj->bias();
  if (bq || bk || bv) {
    if (!bq || !bk || !bv) return false;
    fb = adjacent_rows({*bq, *bk, *bv});
    if (!fb.defined()) return false;
  }
  if (w) *w = fw;
  if (b) *b = fb;
  return true;
}

bool Block::gate_up_fused(at::Tensor* w) const {
  if (gate_proj->kind() != "dense" || up_proj->kind() != "dense" || gate_proj->bias() ||
      up_proj->bias())
    return false;
  const at::Tensor fw = adjacent_rows({gate_proj->dense_weight(), up_proj->dense_weight()});
  if (!fw.defined()) return false;
  if (w) *w = fw;
  return true;}

std::optional<at::Tensor> DenseLinear::bias() const {
  if (b_.defined()) return b_;
  return std::nullopt;
}

std::uint64_t DenseLinear::bytes() const {
  std::uint64_t n = static_cast<std::uint64_t>(w_.numel()) * w_.element_size();
  if (b_.defined()) n += static_cast<std::uint64_t>(b_.numel()) * b_.element_size();
  return n;
}

// ---------------------------------------------------------------- dtypes

c10::ScalarType parse_dtype(const std::string& name, const std::string& what) {
  if (name == "float32" || name == "fp32") return at::kFloat;
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  if (name == "float16" || name == "fp16") return at::kHalf;
  KVLAB_THROW(UsageError, "{}: dtype \"{}\" is not supported; use float32, bfloat16 or float16",
              what, name);
}

const char* dtype_name(c10::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    default: return "other";
  }
}

// ---------------------------------------------------------------- Model

namespace {

at::Device to_device(const std::string& s) {
  const core::DeviceSpec d = core::parse_device(s);
  if (!d.cuda) return at::Device(at::kCPU);
  core::check_device(d);
  return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(d.index));
}

// LibTorch 1.13 has no float16 matmul on the CPU: refuse early with a remedy instead of failing
// deep inside the first forward.
void check_dtype_supported(at::Device dev, c10::ScalarType t) {
  if (t != at::kHalf || !dev.is_cpu()) return;
  try {
    at::Tensor a = at::ones({2, 2}, at::TensorOptions().dtype(at::kHalf));
    (void)at::mm(a, a);
  } catch (const std::exception&) {
    KVLAB_THROW(UsageError,
                "--dtype float16: this LibTorch has no float16 matrix multiply on the CPU; use "
                "float32 or bfloat16 on the CPU, or float16 on CUDA");
  }
}

}  // namespace

Model Model::from_file(const ModelFile& f, const ModelOptions& o) {
  f.config.validate("model");
  const at::Device dev = to_device(o.device);
  c10::ScalarType dtype = at::kFloat;
  if (o.dtype == "auto") {
    const auto it = f.weights.find("model.embed_tokens.weight");
    dtype = it != f.weights.end() ? it->second.scalar_type() : at::kFloat;
    if (dtype != at::kFloat && dtype != at::kBFloat16 && dtype != at::kHalf) dtype = at::kFloat;
  } else {
    dtype = parse_dtype(o.dtype, "--dtype");
  }
  check_dtype_supported(dev, dtype);
  const auto topt = at::TensorOptions().device(dev).dtype(dtype);
  // Every tensor the config expects, with its shape.
  std::map<std::string, std::vector<std::int64_t>> expected;
  for (const auto& [name, shape] : f.config.expected_tensors()) expected[name] = shape;
  auto get = [&](const std::string& name) {
    const auto it = f.weights.find(name);
    KVLAB_THROW_IF(it == f.weights.end(), FormatError,
                   "model: weight \"{}\" is missing; the model file does not match its config "
                   "(re-import it)",
                   name);
    const auto e = expected.find(name);
    if (e != expected.end())
      KVLAB_THROW_IF(it->second.sizes().vec() != e->second, FormatError,
                     "model: weight \"{}\" has shape [{}] but the config implies [{}]", name,
                     fmt::join(it->second.sizes(), ", "), fmt::join(e->second, ", "));
    return it->second.to(topt).contiguous();
  };
  Model m = build(f.config, dev, dtype, f.original_layer_indices, get, &f.linears);
  m.tokenizer_ = f.tokenizer;
  return m;
}

Model Model::random(const ModelConfig& cfg, const ModelOptions& o, std::uint64_t seed) {
  cfg.validate("model");
  const at::Device dev = to_device(o.device);
  const c10::ScalarType dtype = o.dtype == "auto" ? at::kBFloat16 : parse_dtype(o.dtype, "--dtype");
  check_dtype_supported(dev, dtype);
  const auto topt = at::TensorOptions().device(dev).dtype(dtype);
  std::map<std::string, std::vector<std::int64_t>> expected;
  for (const auto& [name, shape] : cfg.expected_tensors()) expected[name] = shape;
  at::manual_seed(seed);
  auto get = [&](const std::string& name) {
    const auto& shape = expected.at(name);
    if (name.find("norm") != std::string::npos) return at::ones(shape, topt);
    return at::randn(shape, topt) * 0.02;
  };
  return build(cfg, dev, dtype, {}, get);
}

Model Model::build(const ModelConfig& cfg, at::Device dev, c10::ScalarType dtype,
                   const std::vector<std::int64_t>& original, const Getter& get,
                   const std::map<std::string, LinearRecord>* linears) {
  Model m;
  m.cfg_ = cfg;
  m.device_ = dev;
  m.dtype_ = dtype;
  m.embed_ = get("model.embed_tokens.weight");
  m.final_norm_ = get("model.norm.weight");
  if (m.cfg_.tie_word_embeddings) m.lm_head_ = std::make_shared<DenseLinear>(m.embed_);
  else m.lm_head_ = std::make_shared<DenseLinear>(get("lm_head.weight"));
  for (std::int64_t i = 0; i < m.cfg_.num_hidden_layers; ++i) {
    const std::string p = fmt::format("model.layers.{}.", i);
    Block b;
    b.original_index = i < static_cast<std::int64_t>(original.size())
                           ? original[static_cast<std::size_t>(i)]
                           : i;
    b.input_layernorm = get(p + "input_layernorm.weight");
    b.post_attention_layernorm = get(p + "post_attention_layernorm.weight");
    auto lin = [&](const std::string& n, bool bias) -> std::shared_ptr<Linear> {
      if (linears)  // a packed layer (linear_registry.hpp) replaces the dense weight
        if (const auto it = linears->find(p + n); it != linears->end())
          return make_linear(it->second, dev, dtype, p + n);
      std::optional<at::Tensor> bt;
      if (bias) bt = get(p + n + ".bias");
      return std::make_shared<DenseLinear>(get(p + n + ".weight"), bt);
    };
    const bool ab = m.cfg_.attention_bias;
    b.q_proj = lin("self_attn.q_proj", ab);
    b.k_proj = lin("self_attn.k_proj", ab);
    b.v_proj = lin("self_attn.v_proj", ab);
    b.o_proj = lin("self_attn.o_proj", false);
    b.gate_proj = lin("mlp.gate_proj", false);
    b.up_proj = lin("mlp.up_proj", false);
    b.down_proj = lin("mlp.down_proj", false);
    if (dev.is_cuda()) b.fuse_weights();
    m.blocks_.push_back(std::move(b));
  }
  m.inv_freq_ = rope_inv_freq(m.cfg_).to(m.device_);
  return m;
}

Model load_model(const std::filesystem::path& path, const ModelOptions& o,
                 core::ArtifactHeader* header) {
  ModelFile f = read_model(path);
  if (header) *header = f.header;
  return Model::from_file(f, o);
}

void Model::remove_blocks(std::vector<std::int64_t> indices) {
  std::sort(indices.begin(), indices.end());
  indices.erase(std::unique(indices.begin(), indices.end()), indices.end());
  for (auto it = indices.rbegin(); it != indices.rend(); ++it) {
    KVLAB_THROW_IF(*it < 0 || *it >= num_layers(), UsageError,
                   "remove_blocks: block {} does not exist (the model has {})", *it, num_layers());
    blocks_.erase(blocks_.begin() + *it);
  }
  cfg_.num_hidden_layers = num_layers();
}

bool Model::byte_level() const { return cfg_.vocab_size >= 256 && cfg_.vocab_size < 512; }

KVCache Model::make_cache(std::int64_t batch, const KVCacheOptions& o) const {
  return KVCache(cfg_, num_layers(), batch, at::TensorOptions().device(device_).dtype(dtype_), o);
}

at::Tensor Model::rms_norm(const at::Tensor& x, const at::Tensor& w) const {
  // transformers' LlamaRMSNorm: float32 statistics, cast back, then scale.
#ifdef KVLAB_WITH_CUDA
  if (x.is_cuda() && w.scalar_type() == x.scalar_type()) return cuda::rms_norm(x, w, cfg_.rms_norm_eps);
#endif
  at::Tensor h = x.to(at::kFloat);
  at::Tensor var = h.pow(2).mean(-1, /*keepdim=*/true);
  h = h * at::rsqrt(var + cfg_.rms_norm_eps);
  return w * h.to(x.scalar_type());
}

Model::Qkv Model::project_qkv(const Block& blk, const at::Tensor& x, const RopeTables& rt) const {
  const std::int64_t b = x.size(0), t = x.size(1);
  const std::int64_t h_q = cfg_.num_attention_heads, h_kv = cfg_.num_key_value_heads,
                     d = cfg_.head_dim;
  at::Tensor xn = rms_norm(x, blk.input_layernorm);
  at::Tensor q, k, v;
  at::Tensor qkv_w, qkv_b;
  if (blk.qkv_fused(&qkv_w, &qkv_b)) {  // one GEMM for the three
    const at::Tensor qkv = at::linear(xn, qkv_w, qkv_b);
    q = qkv.narrow(-1, 0, h_q * d).view({b, t, h_q, d}).transpose(1, 2);
    k = qkv.narrow(-1, h_q * d, h_kv * d).view({b, t, h_kv, d}).transpose(1, 2);
    v = qkv.narrow(-1, (h_q + h_kv) * d, h_kv * d).view({b, t, h_kv, d}).transpose(1, 2);
  } else {
    q = blk.q_proj->forward(xn).view({b, t, h_q, d}).transpose(1, 2);
    k = blk.k_proj->forward(xn).view({b, t, h_kv, d}).transpose(1, 2);
    v = blk.v_proj->forward(xn).view({b, t, h_kv, d}).transpose(1, 2);
  }
  return {apply_rope(q, rt).contiguous(), apply_rope(k, rt), v};
}

at::Tensor Model::finish_block(const Block& blk, const at::Tensor& x, const at::Tensor& attn) const {
  const std::int64_t b = x.size(0), t = x.size(1);
  at::Tensor h = x + blk.o_proj->forward(attn.transpose(1, 2).reshape(
                         {b, t, cfg_.num_attention_heads * cfg_.head_dim}));
  at::Tensor hn = rms_norm(h, blk.post_attention_layernorm);
  at::Tensor gate_up_w;
  if (blk.gate_up_fused(&gate_up_w)) {  // one GEMM for gate and up
    const at::Tensor gu = at::linear(hn, gate_up_w);
    const std::int64_t f = gu.size(-1) / 2;
    return h + blk.down_proj->forward(at::silu(gu.narrow(-1, 0, f)) * gu.narrow(-1, f, f));
  }
  return h + blk.down_proj->forward(at::silu(blk.gate_proj->forward(hn)) * blk.up_proj->forward(hn));
}

at::Tensor Model::decode_static(const at::Tensor& tokens, const at::Tensor& positions,
                                const at::Tensor& slot, KVCache& cache,
                                const StaticDecodeOptions& so) const {
  TORCH_CHECK(tokens.dim() == 2 && tokens.size(1) == 1 && positions.sizes() == tokens.sizes(),
              "Model::decode_static: tokens and positions must both be [B, 1]");
  TORCH_CHECK(cache.num_layers() == num_layers() && cache.batch() == tokens.size(0),
              "Model::decode_static: the cache does not match the model and batch");
  TORCH_CHECK(!so.query_ring || (static_cast<std::int64_t>(so.query_ring->size()) == num_layers() &&
                                 so.ring_slot.defined()),
              "Model::decode_static: query_ring needs one buffer per layer and a ring_slot");
  at::Tensor x = at::embedding(embed_, tokens);  // [B, 1, C]
  const RopeTables rt = rope_tables(inv_freq_, positions, dtype_);
  AttentionOptions ao;
  ao.sliding_window = cfg_.sliding_window;
  ao.key_holes = true;  // the storage past length() is empty: always mask, never ask the device
  for (std::int64_t li = 0; li < num_layers(); ++li) {
    const Block& blk = blocks_[static_cast<std::size_t>(li)];
    LayerKV& kv = cache.layer(li);
    const std::int64_t span = so.span > 0 ? std::min(so.span, kv.capacity()) : kv.capacity();
    const at::Tensor ks = kv.storage_keys().narrow(2, 0, span);
    const at::Tensor vs = kv.storage_values().narrow(2, 0, span);
    const at::Tensor ps = kv.storage_positions().narrow(2, 0, span);
    at::Tensor qrec;  // this layer's query, when recorded
    if (fused_decode_) {
      at::Tensor y = decode_block_fused(blk, x, rt, positions, slot, kv, span, ao,
                                        so.query_ring ? &qrec : nullptr);
      if (y.defined()) {
        if (so.query_ring)
          (*so.query_ring)[static_cast<std::size_t>(li)].index_copy_(2, so.ring_slot, qrec);
        x = y;
        continue;
      }
    }
    if (fused_decode_) {
      at::Tensor y = decode_block_batched(blk, x, rt, positions, slot, kv, span, ao,
                                          so.query_ring ? &qrec : nullptr);
      if (y.defined()) {
        if (so.query_ring)
          (*so.query_ring)[static_cast<std::size_t>(li)].index_copy_(2, so.ring_slot, qrec);
        x = y;
        continue;
      }
    }
    auto [q, k, v] = project_qkv(blk, x, rt);
    kv.write_slot(slot, k, v, positions);
    if (so.query_ring) (*so.query_ring)[static_cast<std::size_t>(li)].index_copy_(2, so.ring_slot, q);
    // One mask serves every layer when they all hold the same positions (full attention); the
    // fused CUDA decode attention needs none (it masks by position itself).
    if ((li == 0 || !so.shared_positions) && !fused_decode_attention(q, ks))
      ao.mask = attention_mask(ps, positions, cfg_.sliding_window);
    at::Tensor out = attention(q, ks, vs, ps, positions, ao);
    x = finish_block(blk, x, out);
  }
#ifdef KVLAB_WITH_CUDA
  if (fused_decode_ && x.is_cuda() && x.size(0) == 1 && lm_head_->kind() == "dense" &&
      cuda::gemv_weight_supported(lm_head_->dense_weight(), x.scalar_type(), 4) &&
      final_norm_.is_contiguous() && final_norm_.scalar_type() == x.scalar_type()) {
    const std::optional<at::Tensor> b = lm_head_->bias();
    return cuda::gemv(x.reshape({-1}), {lm_head_->dense_weight()}, {b ? *b : at::Tensor()},
                      final_norm_, cfg_.rms_norm_eps)
        .view({1, -1})
        .to(at::kFloat);
  }
#endif
  return lm_head_->forward(rms_norm(x.select(1, 0), final_norm_)).to(at::kFloat);
}

bool Model::fused_block_ok(const Block& blk, const LayerKV& kv, std::int64_t batch) const {
#ifdef KVLAB_WITH_CUDA
  // Batch 1 on CUDA, plain dense layers (binarized or other swapped layers take the ATen path),
  // no page metadata to keep current, and the fused split-K attention able to read the storage.
  if (!device_.is_cuda() || batch != 1 || kv.page_size() != 0) return false;
  const Linear* lin[] = {blk.q_proj.get(), blk.k_proj.get(), blk.v_proj.get(), blk.o_proj.get(),
                         blk.gate_proj.get(), blk.up_proj.get(), blk.down_proj.get()};
  for (int i = 0; i < 7; ++i) {
    // q/k/v may carry a bias (Qwen2); o_proj and the MLP never do in the supported families.
    if (lin[i]->kind() != "dense" || (i >= 3 && lin[i]->bias()) ||
        !cuda::gemv_weight_supported(lin[i]->dense_weight(), dtype_, i == 4 || i == 5 ? 2 : 4))
      return false;
  }
  if (lin[4]->dense_weight().sizes() != lin[5]->dense_weight().sizes()) return false;
  for (const at::Tensor* w : {&blk.input_layernorm, &blk.post_attention_layernorm})
    if (!w->is_contiguous() || w->scalar_type() != dtype_ || !w->is_cuda()) return false;
  const at::Tensor q = at::empty({1, cfg_.num_attention_heads, 1, cfg_.head_dim},
                                 at::TensorOptions().device(device_).dtype(dtype_));
  return fused_decode_attention(q, kv.storage_keys()) && kv.storage_positions().stride(2) == 1;
#else
  (void)blk, (void)kv, (void)batch;
  return false;
#endif
}

bool Model::uses_fused_decode(const KVCache& cache) const {
  if (!fused_decode_ || cache.num_layers() != num_layers()) return false;
  for (std::int64_t li = 0; li < num_layers(); ++li)
    if (!fused_block_ok(blocks_[static_cast<std::size_t>(li)], cache.layer(li), cache.batch()))
      return false;
  return true;
}

at::Tensor Model::decode_block_batched(const Block& blk, const at::Tensor& x, const RopeTables& rt,
                                       const at::Tensor& positions, const at::Tensor& slot,
                                       LayerKV& kv, std::int64_t span, const AttentionOptions& ao,
                                       at::Tensor* q_out) const {
#ifdef KVLAB_WITH_CUDA
  const std::int64_t b = x.size(0), c = x.size(2);
  const std::int64_t h_q = cfg_.num_attention_heads, h_kv = cfg_.num_key_value_heads,
                     d = cfg_.head_dim;
  at::Tensor qkv_w, qkv_b, gate_up_w;
  if (!x.is_cuda() || !blk.qkv_fused(&qkv_w, &qkv_b) || !blk.gate_up_fused(&gate_up_w) ||
      kv.page_size() != 0 ||
      blk.o_proj->kind() != "dense" || blk.down_proj->kind() != "dense" || blk.o_proj->bias() ||
      blk.down_proj->bias() || kv.storage_positions().stride(2) != 1 ||
      rt.cos.numel() != b * d)
    return {};
  const at::Tensor& ks = kv.storage_keys();
  const at::Tensor qshape = at::empty({b, h_q, 1, d}, x.options());
  if (!fused_decode_attention(qshape, ks)) return {};
  const at::Tensor xn = rms_norm(x, blk.input_layernorm);
  const at::Tensor qkv = at::linear(xn, qkv_w, qkv_b).contiguous();  // [B, 1, N]
  const at::Tensor q = cuda::rope_write(qkv, rt.cos, rt.sin, slot, positions, h_q, h_kv, d, ks,
                                        kv.storage_values(), kv.storage_positions());
  if (q_out) *q_out = q;
  const at::Tensor attn = attention(q, ks.narrow(2, 0, span), kv.storage_values().narrow(2, 0, span),
                                    kv.storage_positions().narrow(2, 0, span), positions, ao);
  // The residual stream is this step's own tensor: o_proj and down_proj accumulate into it.
  at::Tensor h = x.reshape({b, c});
  h.addmm_(attn.reshape({b, h_q * d}), blk.o_proj->dense_weight().t());
  const at::Tensor hn = rms_norm(h, blk.post_attention_layernorm);
  const at::Tensor gu = at::linear(hn, gate_up_w);
  const std::int64_t f = gu.size(-1) / 2;
  h.addmm_(at::silu(gu.narrow(-1, 0, f)) * gu.narrow(-1, f, f), blk.down_proj->dense_weight().t());
  return h.view({b, 1, c});
#else
  (void)blk, (void)x, (void)rt, (void)positions, (void)slot, (void)kv, (void)span, (void)ao;
  (void)q_out;
  return {};
#endif
}

at::Tensor Model::decode_block_fused(const Block& blk, const at::Tensor& x, const RopeTables& rt,
                                     const at::Tensor& positions, const at::Tensor& slot,
                                     LayerKV& kv, std::int64_t span, const AttentionOptions& ao,
                                     at::Tensor* q_out) const {
#ifdef KVLAB_WITH_CUDA
  if (!fused_block_ok(blk, kv, x.size(0))) return {};
  const std::int64_t h_q = cfg_.num_attention_heads, h_kv = cfg_.num_key_value_heads,
                     d = cfg_.head_dim;
  const Linear* lin[] = {blk.q_proj.get(), blk.k_proj.get(), blk.v_proj.get(), blk.o_proj.get(),
                         blk.gate_proj.get(), blk.up_proj.get(), blk.down_proj.get()};
  auto bias = [](const Linear* l) {
    const std::optional<at::Tensor> b = l->bias();
    return b ? *b : at::Tensor();
  };
  const at::Tensor& ks = kv.storage_keys();
  // The input RMSNorms run inside the GEMV blocks that consume them.
  const at::Tensor qkv = cuda::gemv(
      x.reshape({-1}), {lin[0]->dense_weight(), lin[1]->dense_weight(), lin[2]->dense_weight()},
      {bias(lin[0]), bias(lin[1]), bias(lin[2])}, blk.input_layernorm, cfg_.rms_norm_eps);
  const at::Tensor q = cuda::rope_write(qkv, rt.cos, rt.sin, slot, positions, h_q, h_kv, d, ks,
                                        kv.storage_values(), kv.storage_positions());
  if (q_out) *q_out = q;
  const at::Tensor attn = attention(q, ks.narrow(2, 0, span), kv.storage_values().narrow(2, 0, span),
                                    kv.storage_positions().narrow(2, 0, span), positions, ao)
                              .reshape({-1});
  const at::Tensor h = cuda::gemv_residual(attn, lin[3]->dense_weight(), x.contiguous());
  const at::Tensor act = cuda::gemv_gate_up(h.view({-1}), lin[4]->dense_weight(), lin[5]->dense_weight(),
                                            blk.post_attention_layernorm, cfg_.rms_norm_eps);
  return cuda::gemv_residual(act, lin[6]->dense_weight(), h);
#else
  (void)blk, (void)x, (void)rt, (void)positions, (void)slot, (void)kv, (void)span, (void)ao;
  (void)q_out;
  return {};
#endif
}

at::Tensor Model::forward(const at::Tensor& tokens_in, const at::Tensor& positions_in,
                          KVCache& cache, const ForwardOptions& o) const {
  TORCH_CHECK(tokens_in.dim() == 2 && positions_in.sizes() == tokens_in.sizes(),
              "Model::forward: tokens and positions must both be [B, T]");
  TORCH_CHECK(cache.num_layers() == num_layers() && cache.batch() == tokens_in.size(0),
              "Model::forward: cache has ", cache.num_layers(), " layers x batch ", cache.batch(),
              ", model has ", num_layers(), " layers and the input batch is ", tokens_in.size(0));
  const std::int64_t b = tokens_in.size(0);
  {
    at::Tensor tok_cpu = tokens_in.cpu();
    const std::int64_t lo = tok_cpu.numel() ? tok_cpu.min().item<std::int64_t>() : 0;
    const std::int64_t hi = tok_cpu.numel() ? tok_cpu.max().item<std::int64_t>() : 0;
    KVLAB_THROW_IF(lo < 0 || hi >= cfg_.vocab_size, UsageError,
                   "token id {} is outside the model's vocabulary [0, {})", lo < 0 ? lo : hi,
                   cfg_.vocab_size);
  }
  at::Tensor pos_cpu = positions_in.to(at::kCPU, at::kLong);
  const bool padded = pos_cpu.lt(0).any().item<bool>();
  at::Tensor tokens = tokens_in.to(device_, at::kLong);
  at::Tensor pos = pos_cpu.to(device_);
  const Phase phase = tokens.size(1) == 1 ? Phase::decode : Phase::prefill;

  TORCH_CHECK(o.first_block >= 0 && o.first_block <= num_layers() &&
                  (o.first_block == 0 || o.input_hidden.defined()),
              "Model::forward: first_block needs input_hidden and must be in [0, num_layers]");
  at::Tensor x = o.input_hidden.defined() ? o.input_hidden.to(device_, dtype_)
                                          : at::embedding(embed_, tokens);  // [B, T, C]
  RopeTables rt = rope_tables(inv_freq_, pos, dtype_);
  for (std::int64_t li = o.first_block; li < num_layers(); ++li) {
    const Block& blk = blocks_[static_cast<std::size_t>(li)];
    LayerKV& kv = cache.layer(li);
    const std::int64_t t = x.size(1);
    auto [q, k, v] = project_qkv(blk, x, rt);
    const bool empty_before = kv.length() == 0;
    kv.append(k, v, pos, padded);

    AttentionStep step;
    step.layer = li;
    step.phase = phase;
    step.hidden = x;
    step.q = q;
    step.q_pos = pos;
    step.kv = &kv;
    step.config = &cfg_;
    step.model = this;
    if (o.policy) o.policy->before_attention(step);
    std::optional<at::Tensor> out;
    if (o.policy) out = o.policy->attend(step);
    if (!out) {
      AttentionOptions ao;
      ao.sliding_window = cfg_.sliding_window;
      ao.queries_padded = padded;
      ao.fresh = empty_before && kv.length() == t && !kv.has_holes();
      out = attention(q, kv, pos, ao);
    }
    if (o.policy) o.policy->after_attention(step, *out);
    x = finish_block(blk, x, *out);
    if (o.policy) {
      if (auto sel = o.policy->select_tokens(li, x, pos)) {
        at::Tensor idx = sel->to(device_, at::kLong);
        x = x.gather(1, idx.unsqueeze(-1).expand({b, idx.size(1), x.size(2)}));
        pos = pos.gather(1, idx);
        rt = rope_tables(inv_freq_, pos, dtype_);
      }
    }
    if (o.hidden_states) o.hidden_states->push_back(x);
  }

  // Next position per sequence: one past the largest position it has seen.
  std::vector<std::int64_t> next = cache.next_positions();
  at::Tensor mx = std::get<0>(pos_cpu.max(1));
  for (std::int64_t i = 0; i < b; ++i)
    next[static_cast<std::size_t>(i)] =
        std::max(next[static_cast<std::size_t>(i)], mx[i].item<std::int64_t>() + 1);
  cache.set_next_positions(std::move(next));

  at::Tensor logits;
  if (o.logits != LogitsMode::none) {
    at::Tensor hsel = o.logits == LogitsMode::last ? x.select(1, x.size(1) - 1) : x;
    logits = lm_head_->forward(rms_norm(hsel, final_norm_)).to(at::kFloat);
  }
  if (o.policy) o.policy->after_forward(cache, phase);
  return logits;
}

at::Tensor Model::embed_tokens(const at::Tensor& tokens) const {
  return at::embedding(embed_, tokens.to(device_, at::kLong));
}

ModelFile Model::to_file() const {
  ModelFile f;
  f.config = cfg_;
  f.tokenizer = tokenizer_;
  f.config.num_hidden_layers = num_layers();
  f.config.torch_dtype = dtype_name(dtype_);
  auto put = [&](const std::string& n, const at::Tensor& t) { f.weights[n] = t.to(at::kCPU).contiguous(); };
  put("model.embed_tokens.weight", embed_);
  put("model.norm.weight", final_norm_);
  if (!cfg_.tie_word_embeddings) put("lm_head.weight", lm_head_->dense_weight());
  for (std::int64_t i = 0; i < num_layers(); ++i) {
    const Block& b = blocks_[static_cast<std::size_t>(i)];
    const std::string p = fmt::format("model.layers.{}.", i);
    put(p + "input_layernorm.weight", b.input_layernorm);
    put(p + "post_attention_layernorm.weight", b.post_attention_layernorm);
    auto lin = [&](const std::string& n, const Linear& l) {
      put(p + n + ".weight", l.dense_weight());
      if (auto bias = l.bias()) put(p + n + ".bias", *bias);
    };
    lin("self_attn.q_proj", *b.q_proj);
    lin("self_attn.k_proj", *b.k_proj);
    lin("self_attn.v_proj", *b.v_proj);
    lin("self_attn.o_proj", *b.o_proj);
    lin("mlp.gate_proj", *b.gate_proj);
    lin("mlp.up_proj", *b.up_proj);
    lin("mlp.down_proj", *b.down_proj);
    f.original_layer_indices.push_back(b.original_index);
  }
  return f;
}

std::uint64_t Model::weight_bytes() const {
  auto nb = [](const at::Tensor& t) { return static_cast<std::uint64_t>(t.numel()) * t.element_size(); };
  std::uint64_t n = nb(embed_) + nb(final_norm_);
  if (!cfg_.tie_word_embeddings) n += lm_head_->bytes();
  for (const Block& b : blocks_) {
    n += nb(b.input_layernorm) + nb(b.post_attention_layernorm);
    for (const auto* l : {&b.q_proj, &b.k_proj, &b.v_proj, &b.o_proj, &b.gate_proj, &b.up_proj,
                          &b.down_proj})
      n += (*l)->bytes();
  }
  return n;
}

}  // namespace kvlab::llm
