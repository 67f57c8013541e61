// Bit-packed XNOR + popcount kernels (see bnn_packed.hpp). Three builds of the convolution are
// chosen at run time: AVX-512 VPOPCNTDQ (strides 1 and 2), scalar with the POPCNT instruction,
// and portable.
//
// The AVX-512 kernel vectorises over output pixels: activations are stored word-planar per padded
// row ([row][word][pixel]), so 8 neighbouring pixels' words are one contiguous 512-bit load, and
// a tile of 4 output channels x 32 output pixels accumulates in 16 registers. For every tap and
// word it loads 4 pixel vectors, broadcasts 4 weight words and does 16 XOR + VPOPCNTQ + ADD; the
// epilogue converts 8 sums at a time to float and stores them contiguously into the NCHW output.
// Padding pixels are zero words, so no tap is ever skipped inside the loops; the border outputs
// are corrected afterwards by the exact contribution of their padding taps (PackedWeights::
// pad_dot). There is no im2col: each packed input word is read straight from the packed image.
#include "kvlab/binary/bnn_packed.hpp"

#include <ATen/ATen.h>
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "kvlab/core/error.hpp"

namespace kvlab::binary {

namespace {

inline std::int64_t words_for(std::int64_t c) { return (c + 63) / 64; }

bool has_avx512_popcnt() {
  static const bool v = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vpopcntdq");
  }();
  return v;
}

bool has_popcnt() {
  static const bool v = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("popcnt") != 0;
  }();
  return v;
}

#define KVLAB_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq,avx512vpopcntdq,popcnt")))

// ---------------------------------------------------------------------------- packing --

/// Channels [lo, hi) of one image row (`src` = channel lo's row, `cs` floats between channels)
/// into `w` words at dst (bit ci - lo of each pixel's word).
inline __attribute__((always_inline)) void pack_row_scalar(const float* src, std::int64_t cs,
                                                           std::int64_t nch, std::int64_t w,
                                                           std::uint64_t* dst) {
  for (std::int64_t ci = 0; ci < nch; ++ci) {
    const float* s = src + ci * cs;
    const std::uint64_t bit = std::uint64_t{1} << ci;
    for (std::int64_t x = 0; x < w; ++x) dst[x] |= s[x] >= 0.0f ? bit : 0;
  }
}

KVLAB_AVX512 void pack_row_avx512(const float* src, std::int64_t cs, std::int64_t nch,
                                  std::int64_t w, std::uint64_t* dst) {
  const __m512 zero = _mm512_setzero_ps();
  for (std::int64_t x0 = 0; x0 < w; x0 += 16) {
    const std::int64_t m = std::min<std::int64_t>(16, w - x0);
    const __mmask16 lm = static_cast<__mmask16>(m == 16 ? 0xFFFF : (1u << m) - 1);
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, bit = _mm512_set1_epi64(1);
    for (std::int64_t ci = 0; ci < nch; ++ci) {
      const __m512 v = _mm512_maskz_loadu_ps(lm, src + ci * cs + x0);
      const __mmask16 k = _mm512_mask_cmp_ps_mask(lm, v, zero, _CMP_GE_OQ);
      a0 = _mm512_mask_or_epi64(a0, static_cast<__mmask8>(k), a0, bit);
      a1 = _mm512_mask_or_epi64(a1, static_cast<__mmask8>(k >> 8), a1, bit);
      bit = _mm512_add_epi64(bit, bit);
    }
    _mm512_mask_storeu_epi64(dst + x0, static_cast<__mmask8>(lm), a0);
    if (m > 8) _mm512_mask_storeu_epi64(dst + x0 + 8, static_cast<__mmask8>(lm >> 8), a1);
  }
}

// ------------------------------------------------------------------ AVX-512 convolution --

struct ConvGeom {
  const PackedImage* x;
  const PackedWeights* w;
  std::int64_t ho, wo;
  float* out;  // [n][out][ho][wo]
};

/// OCB output channels x PB vectors of 8 output pixels of output row oy, from ox0 on.
template <int S, int PB, int OCB>
KVLAB_AVX512 void conv_tile(const ConvGeom& g, std::int64_t img, std::int64_t oc, std::int64_t oy,
                            std::int64_t ox0) {
  const PackedImage& x = *g.x;
  const PackedWeights& w = *g.w;
  const std::int64_t words = w.words, taps = w.kh * w.kw, ostride = taps * words;
  __m512i acc[OCB][PB];
#pragma GCC unroll 4
  for (int o = 0; o < OCB; ++o)
#pragma GCC unroll 4
    for (int j = 0; j < PB; ++j) acc[o][j] = _mm512_setzero_si512();
  for (std::int64_t ky = 0; ky < w.kh; ++ky) {
    for (std::int64_t wi = 0; wi < words; ++wi) {
      const std::uint64_t* xl = x.line(img, oy * S + ky, wi) + ox0 * S;
      const std::uint64_t* wk = w.bits.data() + (oc * taps + ky * w.kw) * words + wi;
      for (std::int64_t kx = 0; kx < w.kw; ++kx) {
        __m512i xv[PB];
#pragma GCC unroll 4
        for (int j = 0; j < PB; ++j) {
          if constexpr (S == 1) {
            xv[j] = _mm512_loadu_si512(xl + kx + 8 * j);
          } else {
            const __m512i even = _mm512_set_epi64(14, 12, 10, 8, 6, 4, 2, 0);
            const __m512i lo = _mm512_loadu_si512(xl + kx + 16 * j);
            const __m512i hi = _mm512_loadu_si512(xl + kx + 16 * j + 8);
            xv[j] = _mm512_permutex2var_epi64(lo, even, hi);
          }
        }
        const std::uint64_t* wt = wk + kx * words;
#pragma GCC unroll 4
        for (int o = 0; o < OCB; ++o) {
          const __m512i wv = _mm512_set1_epi64(static_cast<long long>(wt[o * ostride]));
#pragma GCC unroll 4
          for (int j = 0; j < PB; ++j)
            acc[o][j] = _mm512_add_epi64(acc[o][j], _mm512_popcnt_epi64(_mm512_xor_si512(xv[j], wv)));
        }
      }
    }
  }
  const __m256 base = _mm256_set1_ps(static_cast<float>(taps * x.channels));
  float* on = g.out + (img * w.out + oc) * g.ho * g.wo + oy * g.wo + ox0;
#pragma GCC unroll 4
  for (int o = 0; o < OCB; ++o) {
#pragma GCC unroll 4
    for (int j = 0; j < PB; ++j) {
      const std::int64_t rem = g.wo - ox0 - 8 * j;
      const __mmask8 m = static_cast<__mmask8>(rem >= 8 ? 0xFF : (1u << rem) - 1);
      const __m256 f = _mm512_cvtepi64_ps(acc[o][j]);
      const __m256 r = _mm256_sub_ps(base, _mm256_add_ps(f, f));  // small integers: exact
      _mm256_mask_storeu_ps(on + o * g.ho * g.wo + 8 * j, m, r);
    }
  }
}

using TileFn = void (*)(const ConvGeom&, std::int64_t, std::int64_t, std::int64_t, std::int64_t);

template <int S, int PB>
TileFn pick_ocb(std::int64_t ocb) {
  switch (ocb) {
    case 1: return &conv_tile<S, PB, 1>;
    case 2: return &conv_tile<S, PB, 2>;
    case 3: return &conv_tile<S, PB, 3>;
    default: return &conv_tile<S, PB, 4>;
  }
}
template <int S>
TileFn pick_tile(std::int64_t pb, std::int64_t ocb) {
  switch (pb) {
    case 1: return pick_ocb<S, 1>(ocb);
    case 2: return pick_ocb<S, 2>(ocb);
    case 3: return pick_ocb<S, 3>(ocb);
    default: return pick_ocb<S, 4>(ocb);
  }
}

void conv_avx512(const ConvGeom& g, int stride) {
  const std::int64_t out = g.w->out;
  for (std::int64_t img = 0; img < g.x->n; ++img)
    for (std::int64_t oy = 0; oy < g.ho; ++oy)
      for (std::int64_t oc = 0; oc < out; oc += 4) {
        const std::int64_t ocb = std::min<std::int64_t>(4, out - oc);
        for (std::int64_t ox0 = 0; ox0 < g.wo; ox0 += 32) {
          const std::int64_t pb = std::min<std::int64_t>(4, (g.wo - ox0 + 7) / 8);
          const TileFn f = stride == 1 ? pick_tile<1>(pb, ocb) : pick_tile<2>(pb, ocb);
          f(g, img, oc, oy, ox0);
        }
      }
}

// ------------------------------------------------------------------ scalar convolution --

inline __attribute__((always_inline)) void conv_scalar_body(const ConvGeom& g, int s) {
  const PackedImage& x = *g.x;
  const PackedWeights& w = *g.w;
  const std::int64_t words = w.words, taps = w.kh * w.kw;
  const float base = static_cast<float>(taps * x.channels);
  for (std::int64_t img = 0; img < x.n; ++img)
    for (std::int64_t oc = 0; oc < w.out; ++oc)
      for (std::int64_t oy = 0; oy < g.ho; ++oy) {
        float* o = g.out + ((img * w.out + oc) * g.ho + oy) * g.wo;
        for (std::int64_t ox = 0; ox < g.wo; ++ox) {
          std::int64_t acc = 0;
          for (std::int64_t ky = 0; ky < w.kh; ++ky)
            for (std::int64_t wi = 0; wi < words; ++wi) {
              const std::uint64_t* xl = x.line(img, oy * s + ky, wi) + ox * s;
              const std::uint64_t* wk = w.bits.data() + (oc * taps + ky * w.kw) * words + wi;
              for (std::int64_t kx = 0; kx < w.kw; ++kx)
                acc += __builtin_popcountll(xl[kx] ^ wk[kx * words]);
            }
          o[ox] = base - 2.0f * static_cast<float>(acc);
        }
      }
}
__attribute__((target("popcnt"))) void conv_popcnt(const ConvGeom& g, int s) { conv_scalar_body(g, s); }
void conv_portable(const ConvGeom& g, int s) { conv_scalar_body(g, s); }

/// Removes what the padding taps (zero words, i.e. -1 inputs) added to the border outputs: the
/// float network's zero padding contributes nothing. Outputs are grouped by which kernel rows
/// and columns fall into the padding; each group's correction per output channel is summed once.
void fix_borders(const ConvGeom& g, int s) {
  const PackedImage& x = *g.x;
  const PackedWeights& w = *g.w;
  if (x.pad == 0) return;
  auto outside = [](std::int64_t o, std::int64_t k, int st, std::int64_t pad, std::int64_t size) {
    std::uint32_t m = 0;
    for (std::int64_t i = 0; i < k; ++i) {
      const std::int64_t p = o * st + i - pad;  // unpadded coordinate of the tap
      if (p < 0 || p >= size) m |= 1u << i;
    }
    return m;
  };
  std::vector<std::uint32_t> ym(static_cast<std::size_t>(g.ho)), xm(static_cast<std::size_t>(g.wo));
  for (std::int64_t i = 0; i < g.ho; ++i) ym[static_cast<std::size_t>(i)] = outside(i, w.kh, s, x.pad, x.h);
  for (std::int64_t i = 0; i < g.wo; ++i) xm[static_cast<std::size_t>(i)] = outside(i, w.kw, s, x.pad, x.w);
  std::vector<std::pair<std::uint32_t, std::uint32_t>> groups;  // (row mask, column mask)
  std::vector<std::pair<std::int64_t, std::size_t>> pixels;    // (oy * wo + ox, group)
  for (std::int64_t oy = 0; oy < g.ho; ++oy)
    for (std::int64_t ox = 0; ox < g.wo; ++ox) {
      const auto key = std::make_pair(ym[static_cast<std::size_t>(oy)], xm[static_cast<std::size_t>(ox)]);
      if (key.first == 0 && key.second == 0) continue;
      auto it = std::find(groups.begin(), groups.end(), key);
      if (it == groups.end()) it = groups.insert(groups.end(), key);
      pixels.emplace_back(oy * g.wo + ox, static_cast<std::size_t>(it - groups.begin()));
    }
  if (pixels.empty()) return;
  const std::int64_t taps = w.kh * w.kw;
  std::vector<float> corr(groups.size() * static_cast<std::size_t>(w.out), 0.0f);
  for (std::size_t gi = 0; gi < groups.size(); ++gi)
    for (std::int64_t oc = 0; oc < w.out; ++oc) {
      std::int64_t sum = 0;
      for (std::int64_t ky = 0; ky < w.kh; ++ky)
        for (std::int64_t kx = 0; kx < w.kw; ++kx)
          if ((groups[gi].first >> ky & 1u) || (groups[gi].second >> kx & 1u))
            sum += w.pad_dot[static_cast<std::size_t>(oc * taps + ky * w.kw + kx)];
      corr[gi * static_cast<std::size_t>(w.out) + static_cast<std::size_t>(oc)] = static_cast<float>(sum);
    }
  for (std::int64_t img = 0; img < x.n; ++img)
    for (std::int64_t oc = 0; oc < w.out; ++oc) {
      float* o = g.out + (img * w.out + oc) * g.ho * g.wo;
      for (const auto& [p, gi] : pixels) o[p] -= corr[gi * static_cast<std::size_t>(w.out) + static_cast<std::size_t>(oc)];
    }
}

// ----------------------------------------------------------------------- linear layer --

struct LinearArgs {
  const std::uint64_t* x;
  std::int64_t n, words, features;
  const PackedWeights* wt;
  float* out;
};

inline __attribute__((always_inline)) void linear_body(const LinearArgs& a) {
  const std::int64_t W = a.words;
  for (std::int64_t n = 0; n < a.n; ++n) {
    const std::uint64_t* x = a.x + n * W;
    for (std::int64_t o = 0; o < a.wt->out; ++o) {
      const std::uint64_t* w = a.wt->bits.data() + o * W;
      std::int64_t acc = 0;
      for (std::int64_t i = 0; i < W; ++i) acc += __builtin_popcountll(x[i] ^ w[i]);
      a.out[n * a.wt->out + o] = static_cast<float>(a.features) - 2.0f * static_cast<float>(acc);
    }
  }
}

__attribute__((target("popcnt"))) void linear_popcnt(const LinearArgs& a) { linear_body(a); }
void linear_portable(const LinearArgs& a) { linear_body(a); }

}  // namespace

const char* popcount_kind() {
  return has_avx512_popcnt() ? "avx512 vpopcntdq" : has_popcnt() ? "hardware popcnt" : "portable";
}

PackedWeights pack_weights(const at::Tensor& w_in) {
  KVLAB_THROW_IF(w_in.dim() != 4 && w_in.dim() != 2, UsageError,
                 "pack_weights: expected [out, in, kh, kw] or [out, in], got {} dims", w_in.dim());
  const at::Tensor w = w_in.detach().to(at::kCPU, at::kFloat).contiguous();
  PackedWeights p;
  p.out = w.size(0);
  p.in = w.size(1);
  p.kh = w.dim() == 4 ? w.size(2) : 1;
  p.kw = w.dim() == 4 ? w.size(3) : 1;
  KVLAB_THROW_IF(p.kh > 32 || p.kw > 32, UsageError, "pack_weights: kernels up to 32x32, got {}x{}",
                 p.kh, p.kw);
  p.words = words_for(p.in);
  const std::int64_t taps = p.kh * p.kw;
  p.bits.assign(static_cast<std::size_t>(p.out * taps * p.words), 0);
  p.pad_dot.assign(static_cast<std::size_t>(p.out * taps), 0);
  const float* src = w.data_ptr<float>();
  for (std::int64_t o = 0; o < p.out; ++o)
    for (std::int64_t t = 0; t < taps; ++t) {
      std::uint64_t* dst = p.bits.data() + (o * taps + t) * p.words;
      std::int64_t ones = 0;
      for (std::int64_t ci = 0; ci < p.in; ++ci)
        if (src[(o * p.in + ci) * taps + t] >= 0.0f) {
          dst[ci / 64] |= std::uint64_t{1} << (ci % 64);
          ++ones;
        }
      p.pad_dot[static_cast<std::size_t>(o * taps + t)] = static_cast<std::int32_t>(p.in - 2 * ones);
    }
  return p;
}

PackedImage pack_image(const at::Tensor& x_in, int pad) {
  KVLAB_THROW_IF(x_in.dim() != 4, UsageError, "pack_image: expected [N, C, H, W], got {} dims",
                 x_in.dim());
  KVLAB_THROW_IF(pad < 0, UsageError, "pack_image: negative padding {}", pad);
  const at::Tensor x = x_in.detach().to(at::kCPU, at::kFloat).contiguous();
  PackedImage p;
  p.n = x.size(0);
  p.channels = x.size(1);
  p.h = x.size(2);
  p.w = x.size(3);
  p.pad = pad;
  p.words = words_for(p.channels);
  const std::int64_t wp = p.w + 2 * pad;
  p.row = (wp + 16 + 7) / 8 * 8;  // slack: stride-1/2 vector loads of the last tile stay inside
  p.bits.assign(static_cast<std::size_t>(p.n * (p.h + 2 * pad) * p.words * p.row), 0);
  const float* src = x.data_ptr<float>();
  const std::int64_t hw = p.h * p.w;
  const bool avx = has_avx512_popcnt();
  for (std::int64_t img = 0; img < p.n; ++img)
    for (std::int64_t y = 0; y < p.h; ++y)
      for (std::int64_t wi = 0; wi < p.words; ++wi) {
        const std::int64_t lo = wi * 64, nch = std::min<std::int64_t>(p.channels, lo + 64) - lo;
        const float* s = src + (img * p.channels + lo) * hw + y * p.w;
        std::uint64_t* dst = const_cast<std::uint64_t*>(p.line(img, y + pad, wi)) + pad;
        if (avx) pack_row_avx512(s, hw, nch, p.w, dst);
        else pack_row_scalar(s, hw, nch, p.w, dst);
      }
  return p;
}

at::Tensor pack_activations(const at::Tensor& x_in) {
  KVLAB_THROW_IF(x_in.dim() != 2, UsageError, "pack_activations: expected [N, C], got {} dims",
                 x_in.dim());
  const at::Tensor x = x_in.detach().to(at::kCPU, at::kFloat).contiguous();
  const std::int64_t n = x.size(0), c = x.size(1), words = words_for(c);
  at::Tensor out = at::zeros({n, words}, at::kLong);
  auto* dst = reinterpret_cast<std::uint64_t*>(out.data_ptr<std::int64_t>());
  const float* src = x.data_ptr<float>();
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t ci = 0; ci < c; ++ci)
      dst[i * words + ci / 64] |= static_cast<std::uint64_t>(src[i * c + ci] >= 0.0f) << (ci % 64);
  return out;
}

at::Tensor binary_conv2d_packed(const PackedImage& x, const PackedWeights& w, int stride) {
  KVLAB_THROW_IF(x.channels != w.in || x.words != w.words, UsageError,
                 "binary_conv2d_packed: {} input channels but the weights take {}", x.channels, w.in);
  KVLAB_THROW_IF(stride < 1, UsageError, "binary_conv2d_packed: stride {} < 1", stride);
  const std::int64_t ho = (x.h + 2 * x.pad - w.kh) / stride + 1;
  const std::int64_t wo = (x.w + 2 * x.pad - w.kw) / stride + 1;
  KVLAB_THROW_IF(ho < 1 || wo < 1, UsageError,
                 "binary_conv2d_packed: a {}x{} kernel does not fit a {}x{} image padded by {}",
                 w.kh, w.kw, x.h, x.w, x.pad);
  at::Tensor out = at::empty({x.n, w.out, ho, wo}, at::kFloat);
  if (out.numel() == 0) return out;
  const ConvGeom g{&x, &w, ho, wo, out.data_ptr<float>()};
  if (has_avx512_popcnt() && stride <= 2) conv_avx512(g, stride);
  else if (has_popcnt()) conv_popcnt(g, stride);
  else conv_portable(g, stride);
  fix_borders(g, stride);
  return out;
}

at::Tensor binary_linear_packed(const at::Tensor& xp, std::int64_t features, const PackedWeights& w) {
  KVLAB_THROW_IF(xp.dim() != 2 || xp.scalar_type() != at::kLong || !xp.is_contiguous(), UsageError,
                 "binary_linear_packed: activations must be packed [N, words] int64");
  KVLAB_THROW_IF(features != w.in || xp.size(1) != w.words, UsageError,
                 "binary_linear_packed: {} input features but the weights take {}", features, w.in);
  at::Tensor out = at::empty({xp.size(0), w.out}, at::kFloat);
  LinearArgs a{reinterpret_cast<const std::uint64_t*>(xp.data_ptr<std::int64_t>()), xp.size(0),
               w.words, features, &w, out.data_ptr<float>()};
  if (has_popcnt()) linear_popcnt(a);
  else linear_portable(a);
  return out;
}

}  // namespace kvlab::binary
