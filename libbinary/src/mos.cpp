// BinaryMoS layers: initialisation, the reference forward, bit packing and the packed llm::Linear
// (docs/binarize.md, docs/formats/model.md "Packed linear layers").
#include "kvlab/binary/mos.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>

#include "kvlab/core/error.hpp"
#include "mos_kernels.hpp"
#ifdef KVLAB_WITH_CUDA
#include "cuda/mos_kernels.hpp"
#endif

namespace kvlab::binary {

#ifdef KVLAB_WITH_CUDA
static_assert(cuda::kMaxExperts == kMosCudaMaxExperts, "mos.hpp and cuda/mos_kernels.hpp disagree");
#endif

MosParams init_mos(const at::Tensor& w, std::int64_t experts, const std::optional<at::Tensor>& bias) {
  KVLAB_THROW_IF(experts < 1, UsageError, "--experts {}: must be at least 1", experts);
  TORCH_CHECK(w.dim() == 2, "init_mos: weight must be 2-D");
  const at::Tensor wf = w.detach().to(at::kFloat);
  // torch.linalg.svd(|W|) as the official code (full_matrices=False); only the first triple used.
  auto [u, s, vh] = at::linalg_svd(wf.abs(), /*full_matrices=*/false);
  const at::Tensor r = s.narrow(0, 0, 1).sqrt();                // [1]
  const at::Tensor out_scale = (u.narrow(1, 0, 1) * r).t();      // [1, out]
  const at::Tensor in_scale = r.unsqueeze(1) * vh.narrow(0, 0, 1);  // [1, in]
  MosParams p;
  p.weight = wf.clone();
  p.s_out = out_scale.repeat({experts, 1}).contiguous();
  p.s_in = in_scale.repeat({experts, 1}).contiguous();
  if (experts > 1) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(w.size(1)));
    p.router = at::empty({experts, w.size(1)}, wf.options()).uniform_(-bound, bound);
  }
  if (bias) p.bias = bias->detach().to(at::kFloat).clone();
  return p;
}

MosParams init_sign(const at::Tensor& w, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(w.dim() == 2, "init_sign: weight must be 2-D");
  const at::Tensor wf = w.detach().to(at::kFloat);
  MosParams p;
  p.weight = wf.clone();
  p.s_out = wf.abs().mean(1).unsqueeze(0).contiguous();  // [1, out]
  p.s_in = at::ones({1, w.size(1)}, wf.options());
  if (bias) p.bias = bias->detach().to(at::kFloat).clone();
  return p;
}

at::Tensor sign_pm1(const at::Tensor& w) {
  return at::where(w.ge(0), at::ones({}, w.options()), at::full({}, -1.0, w.options()));
}

at::Tensor ste_sign(const at::Tensor& w) {
  const at::Tensor wc = w.clamp(-1.0, 1.0);
  return wc + (sign_pm1(w) - wc).detach();
}

at::Tensor mos_forward(const at::Tensor& x, const at::Tensor& signs, const at::Tensor& s_in,
                       const at::Tensor& s_out, const at::Tensor& router, const at::Tensor& bias) {
  const auto dt = x.scalar_type();
  const std::int64_t in = signs.size(1), out = signs.size(0);
  std::vector<std::int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = out;
  const at::Tensor x2 = x.reshape({-1, in});
  at::Tensor si, so;
  if (router.defined()) {
    // gate = softmax(x W_r^T) in float32, cast back to the activation dtype (official code).
    const at::Tensor g = at::softmax(at::matmul(x2, router.to(dt).t()), -1, at::kFloat).to(dt);
    si = at::matmul(g, s_in.to(dt));
    so = at::matmul(g, s_out.to(dt));
  } else {
    si = s_in.to(dt).select(0, 0);
    so = s_out.to(dt).select(0, 0);
  }
  at::Tensor y = at::matmul(x2 * si, signs.to(dt).t()) * so;
  if (bias.defined()) y = y + bias.to(dt);
  return y.view(out_shape);
}

at::Tensor pack_signs(const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2, "pack_signs: weight must be 2-D");
  const std::int64_t rows = w.size(0), in = w.size(1), k8 = (in + 7) / 8;
  at::Tensor bits = w.ge(0).to(at::kByte);
  if (k8 * 8 != in) bits = at::constant_pad_nd(bits, {0, k8 * 8 - in}, 0);
  bits = bits.view({rows, k8, 8});
  const at::Tensor weights =
      at::tensor(std::vector<std::int64_t>{1, 2, 4, 8, 16, 32, 64, 128}).to(w.device(), at::kByte);
  // sum of bit * 2^j fits a byte; sum over uint8 is computed in int64 by default.
  return (bits * weights).sum(-1).to(at::kByte).contiguous();
}

namespace {
// [256, 8] lookup table: entry b holds bit j of b as +-1 (built on the host: not for forward).
at::Tensor sign_table(at::Device dev, c10::ScalarType dtype) {
  std::vector<float> t(256 * 8);
  for (int b = 0; b < 256; ++b)
    for (int j = 0; j < 8; ++j) t[static_cast<std::size_t>(b * 8 + j)] = ((b >> j) & 1) ? 1.f : -1.f;
  return at::tensor(t).view({256, 8}).to(dev, dtype);
}

at::Tensor unpack_with_table(const at::Tensor& table, const at::Tensor& packed, std::int64_t in) {
  const std::int64_t rows = packed.size(0), k8 = packed.size(1);
  at::Tensor u = at::embedding(table, packed.to(at::kLong)).view({rows, k8 * 8});
  return k8 * 8 == in ? u : u.narrow(1, 0, in);
}
}  // namespace

at::Tensor unpack_signs(const at::Tensor& packed, std::int64_t in, c10::ScalarType dtype) {
  if (packed.device().is_cpu()) return detail::unpack_signs_cpu(packed, in, dtype);
  return unpack_with_table(sign_table(packed.device(), dtype), packed, in);
}

// ------------------------------------------------------------------------ PackedMosLinear --

PackedMosLinear::PackedMosLinear(const llm::LinearRecord& r, at::Device dev, c10::ScalarType dtype) {
  auto need = [&](const char* name) -> const at::Tensor& {
    const auto it = r.tensors.find(name);
    KVLAB_THROW_IF(it == r.tensors.end(), FormatError,
                   "binary-mos layer: dataset \"{}\" is missing; re-create the file with kvlab "
                   "binarize", name);
    return it->second;
  };
  in_ = r.in_features;
  out_ = r.out_features;
  const at::Tensor& p = need("packed");
  const at::Tensor& si = need("s_in");
  const at::Tensor& so = need("s_out");
  KVLAB_THROW_IF(p.scalar_type() != at::kByte || p.dim() != 2 || p.size(0) != out_ ||
                     p.size(1) != (in_ + 7) / 8,
                 FormatError, "binary-mos layer: packed is {} {} but [{}, {}] uint8 was expected",
                 c10::toString(p.scalar_type()), fmt::format("[{}]", fmt::join(p.sizes(), ", ")), out_, (in_ + 7) / 8);
  KVLAB_THROW_IF(si.dim() != 2 || si.size(1) != in_ || so.dim() != 2 || so.size(1) != out_ ||
                     so.size(0) != si.size(0) || si.size(0) < 1,
                 FormatError, "binary-mos layer: s_in {} / s_out {} do not match [E, {}] / [E, {}]",
                 fmt::format("[{}]", fmt::join(si.sizes(), ", ")), fmt::format("[{}]", fmt::join(so.sizes(), ", ")), in_, out_);
  const std::int64_t e = si.size(0);
  packed_ = p.to(dev).contiguous();
  s_in_ = si.to(dev, dtype).contiguous();
  s_out_ = so.to(dev, dtype).contiguous();
  if (e > 1) {
    const at::Tensor& rt = need("router");
    KVLAB_THROW_IF(rt.dim() != 2 || rt.size(0) != e || rt.size(1) != in_, FormatError,
                   "binary-mos layer: router is {} but [{}, {}] was expected",
                   fmt::format("[{}]", fmt::join(rt.sizes(), ", ")), e, in_);
    router_ = rt.to(dev, dtype).contiguous();
  }
  if (const auto it = r.tensors.find("bias"); it != r.tensors.end()) {
    KVLAB_THROW_IF(it->second.numel() != out_, FormatError,
                   "binary-mos layer: bias has {} elements, expected {}", it->second.numel(), out_);
    bias_ = it->second.to(dev, dtype).contiguous();
  }
  if (dev.is_cuda()) {
    const std::int64_t k8 = packed_.size(1), k16 = (k8 + 15) / 16 * 16;
    if (k16 == k8) {
      bits16_ = packed_;
    } else {
      bits16_ = at::zeros({out_, k16}, packed_.options());
      bits16_.narrow(1, 0, k8).copy_(packed_);
    }
    sign_table_ = sign_table(dev, dtype);
  }
}

std::shared_ptr<PackedMosLinear> PackedMosLinear::pack(const MosParams& p, at::Device dev,
                                                       c10::ScalarType dtype) {
  llm::LinearRecord r;
  r.kind = kMosLinearKind;
  r.out_features = p.weight.size(0);
  r.in_features = p.weight.size(1);
  r.ints["experts"] = p.experts();
  auto h = [](const at::Tensor& t) { return t.detach().to(at::kCPU, at::kHalf).contiguous(); };
  r.tensors["packed"] = pack_signs(p.weight.detach()).to(at::kCPU);
  r.tensors["s_in"] = h(p.s_in);
  r.tensors["s_out"] = h(p.s_out);
  if (p.router.defined()) r.tensors["router"] = h(p.router);
  if (p.bias.defined()) r.tensors["bias"] = h(p.bias);
  return std::make_shared<PackedMosLinear>(r, dev, dtype);
}

bool PackedMosLinear::fused_supports(const at::Tensor& x) const {
  const auto dt = x.scalar_type();
  if (dt != at::kFloat && dt != at::kBFloat16 && dt != at::kHalf) return false;
  if (x.device() != packed_.device() || x.size(-1) != in_) return false;
  if (x.device().is_cpu()) return true;
#ifdef KVLAB_WITH_CUDA
  return x.is_cuda() && experts() <= kMosCudaMaxExperts;
#else
  return false;
#endif
}

at::Tensor PackedMosLinear::forward(const at::Tensor& x) const {
  const std::int64_t rows = in_ > 0 ? x.numel() / in_ : 0;
  if (rows >= 1 && rows <= fused_max_rows() && fused_supports(x)) return forward_fused(x);
  return forward_unpacked(x);
}

at::Tensor PackedMosLinear::forward_fused(const at::Tensor& x) const {
  KVLAB_THROW_IF(!fused_supports(x), UsageError,
                 "binary-mos layer: no fused kernel for a {} input [{}] on {} (layer [{}, {}] on {}); "
                 "use forward_unpacked",
                 c10::toString(x.scalar_type()), fmt::join(x.sizes(), ", "), x.device().str(),
                 out_, in_, packed_.device().str());
  const auto dt = x.scalar_type();
  std::vector<std::int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = out_;
  const at::Tensor x2 = x.reshape({-1, in_}).contiguous();
  // The parameters are stored in the layer's dtype; a different activation dtype casts them
  // (device to device on CUDA, so still capture safe).
  const auto cast = [&](const at::Tensor& t) { return t.defined() ? t.to(dt).contiguous() : t; };
  at::Tensor y;
#ifdef KVLAB_WITH_CUDA
  if (x2.is_cuda()) {
    y = cuda::mos_gemv(x2, bits16_, in_, cast(s_in_), cast(s_out_), cast(router_), cast(bias_));
    return y.view(out_shape);
  }
#endif
  y = detail::mos_gemv_cpu(x2, packed_, in_, cast(s_in_), cast(s_out_), cast(router_), cast(bias_));
  return y.view(out_shape);
}

at::Tensor PackedMosLinear::forward_unpacked(const at::Tensor& x) const {
  const auto dt = x.scalar_type();
  std::vector<std::int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = out_;
  const at::Tensor x2 = x.reshape({-1, in_});
  at::Tensor si, so;
  if (router_.defined()) {
    const at::Tensor g = at::softmax(at::matmul(x2, router_.to(dt).t()), -1, at::kFloat).to(dt);
    si = at::matmul(g, s_in_.to(dt));
    so = at::matmul(g, s_out_.to(dt));
  } else {
    si = s_in_.to(dt).select(0, 0);
    so = s_out_.to(dt).select(0, 0);
  }
  const at::Tensor xs = x2 * si;
  // Unpack sign bits a tile of output rows at a time (bounded temporary memory: by default about
  // 4M weights per tile), multiply, and place the tile's columns. On the CPU the tile is written
  // directly (mos_kernels_cpu.cpp); elsewhere through the lookup table cached at construction.
  const auto unpack = [&](const at::Tensor& p) {
    if (p.device().is_cpu()) return detail::unpack_signs_cpu(p, in_, dt);
    return unpack_with_table(sign_table_.to(dt), p, in_);
  };
  const std::int64_t tile =
      tile_rows_ > 0 ? tile_rows_ : std::max<std::int64_t>(1, (std::int64_t{1} << 22) / in_);
  at::Tensor y;
  if (tile >= out_) {
    y = at::matmul(xs, unpack(packed_).t());
  } else {
    y = at::empty({x2.size(0), out_}, x2.options());
    for (std::int64_t r0 = 0; r0 < out_; r0 += tile) {
      const std::int64_t n = std::min(tile, out_ - r0);
      y.narrow(1, r0, n).copy_(at::matmul(xs, unpack(packed_.narrow(0, r0, n)).t()));
    }
  }
  y = y * so;
  if (bias_.defined()) y = y + bias_.to(dt);
  return y.view(out_shape);
}

at::Tensor PackedMosLinear::dense_weight() const {
  const auto dt = s_in_.scalar_type();
  return (s_out_.to(at::kFloat).mean(0).unsqueeze(1) * unpack_signs(packed_, in_, at::kFloat) *
          s_in_.to(at::kFloat).mean(0).unsqueeze(0))
      .to(dt);
}

std::optional<at::Tensor> PackedMosLinear::bias() const {
  if (bias_.defined()) return bias_;
  return std::nullopt;
}

std::uint64_t PackedMosLinear::bytes() const {
  std::uint64_t n = 0;
  for (const at::Tensor* t : {&packed_, &s_in_, &s_out_, &router_, &bias_})
    if (t->defined()) n += static_cast<std::uint64_t>(t->numel()) * t->element_size();
  return n;
}

llm::LinearRecord PackedMosLinear::record() const {
  llm::LinearRecord r;
  r.kind = kMosLinearKind;
  r.in_features = in_;
  r.out_features = out_;
  r.ints["experts"] = experts();
  auto h = [](const at::Tensor& t) { return t.detach().to(at::kCPU, at::kHalf).contiguous(); };
  r.tensors["packed"] = packed_.to(at::kCPU).contiguous();
  r.tensors["s_in"] = h(s_in_);
  r.tensors["s_out"] = h(s_out_);
  if (router_.defined()) r.tensors["router"] = h(router_);
  if (bias_.defined()) r.tensors["bias"] = h(bias_);
  return r;
}

std::uint64_t mos_stored_bytes(std::int64_t in, std::int64_t out, std::int64_t experts, bool bias) {
  const auto u = [](std::int64_t v) { return static_cast<std::uint64_t>(v); };
  std::uint64_t n = u(out) * u((in + 7) / 8) + 2 * u(experts) * (u(in) + u(out));
  if (experts > 1) n += 2 * u(experts) * u(in);
  if (bias) n += 2 * u(out);
  return n;
}

void register_linear_kinds() {
  llm::register_linear_kind(
      kMosLinearKind,
      [](const llm::LinearRecord& r, at::Device dev, c10::ScalarType dtype) -> std::shared_ptr<llm::Linear> {
        return std::make_shared<PackedMosLinear>(r, dev, dtype);
      },
      [](const llm::Linear& l) {
        const auto* p = dynamic_cast<const PackedMosLinear*>(&l);
        KVLAB_THROW_IF(!p, UsageError, "a layer of kind {} is not a PackedMosLinear", l.kind());
        return p->record();
      });
}

}  // namespace kvlab::binary
