// Bit-packed XNOR + popcount kernels (see bnn_packed.hpp). The inner loops are compiled twice:
// once for CPUs with the POPCNT instruction (selected at run time) and once portable.
#include "kvlab/binary/bnn_packed.hpp"

#include <ATen/ATen.h>
#include <immintrin.h>

#include <cstring>

#include "kvlab/core/error.hpp"

namespace kvlab::binary {

namespace {

inline std::int64_t words_for(std::int64_t c) { return (c + 63) / 64; }

// One output pixel row of dots for every output channel. `taps` holds pointers to the packed
// channel words of the valid (inside the image) taps and their tap index.
template <int kWords>
inline __attribute__((always_inline)) void conv_pixel(const std::uint64_t* const* taps,
                                                      const int* tap_idx, int ntaps,
                                                      const std::uint64_t* wbits,
                                                      std::int64_t tap_stride,
                                                      std::int64_t words, std::int64_t out_c,
                                                      std::int64_t oc_stride, float base,
                                                      float* out) {
  const std::int64_t W = kWords > 0 ? kWords : words;
  for (std::int64_t oc = 0; oc < out_c; ++oc) {
    const std::uint64_t* wb = wbits + oc * tap_stride;
    std::int64_t acc = 0;
    for (int t = 0; t < ntaps; ++t) {
      const std::uint64_t* a = taps[t];
      const std::uint64_t* b = wb + tap_idx[t] * W;
      for (std::int64_t i = 0; i < W; ++i) acc += __builtin_popcountll(a[i] ^ b[i]);
    }
    out[oc * oc_stride] = base - 2.0f * static_cast<float>(acc);
  }
}

struct ConvArgs {
  const std::uint64_t* x;
  std::int64_t n, h, w, words, channels;
  const PackedWeights* wt;
  int stride, pad;
  std::int64_t ho, wo;
  float* out;
};

inline __attribute__((always_inline)) void conv_body(const ConvArgs& a) {
  const PackedWeights& wt = *a.wt;
  const std::int64_t words = a.words;
  const std::int64_t tap_stride = wt.kh * wt.kw * words;
  std::vector<const std::uint64_t*> taps(static_cast<std::size_t>(wt.kh * wt.kw));
  std::vector<int> tap_idx(taps.size());
  for (std::int64_t n = 0; n < a.n; ++n) {
    const std::uint64_t* xn = a.x + n * a.h * a.w * words;
    float* on = a.out + n * wt.out * a.ho * a.wo;
    for (std::int64_t oy = 0; oy < a.ho; ++oy) {
      for (std::int64_t ox = 0; ox < a.wo; ++ox) {
        int nt = 0;
        for (std::int64_t ky = 0; ky < wt.kh; ++ky) {
          const std::int64_t iy = oy * a.stride - a.pad + ky;
          if (iy < 0 || iy >= a.h) continue;
          for (std::int64_t kx = 0; kx < wt.kw; ++kx) {
            const std::int64_t ix = ox * a.stride - a.pad + kx;
            if (ix < 0 || ix >= a.w) continue;
            taps[static_cast<std::size_t>(nt)] = xn + (iy * a.w + ix) * words;
            tap_idx[static_cast<std::size_t>(nt)] = static_cast<int>(ky * wt.kw + kx);
            ++nt;
          }
        }
        const float base = static_cast<float>(nt * a.channels);
        float* o = on + oy * a.wo + ox;
        const std::int64_t ocs = a.ho * a.wo;
        switch (words) {
          case 1: conv_pixel<1>(taps.data(), tap_idx.data(), nt, wt.bits.data(), tap_stride, words, wt.out, ocs, base, o); break;
          case 2: conv_pixel<2>(taps.data(), tap_idx.data(), nt, wt.bits.data(), tap_stride, words, wt.out, ocs, base, o); break;
          case 4: conv_pixel<4>(taps.data(), tap_idx.data(), nt, wt.bits.data(), tap_stride, words, wt.out, ocs, base, o); break;
          default: conv_pixel<0>(taps.data(), tap_idx.data(), nt, wt.bits.data(), tap_stride, words, wt.out, ocs, base, o); break;
        }
      }
    }
  }
}

__attribute__((target("popcnt"))) void conv_popcnt(const ConvArgs& a) { conv_body(a); }

// AVX-512 VPOPCNTDQ: vectorised over output channels (8 per register, 32 per block). For every
// output pixel and valid tap, one packed activation word is broadcast and XORed with the words of
// 32 output channels at once; the popcounts accumulate in four registers.
__attribute__((target("avx512f,avx512vpopcntdq"))) void conv_avx512(const ConvArgs& a) {
  const PackedWeights& wt = *a.wt;
  const std::int64_t words = a.words, op = wt.out_pad;
  std::vector<const std::uint64_t*> taps(static_cast<std::size_t>(wt.kh * wt.kw));
  std::vector<const std::uint64_t*> wrows(taps.size());
  alignas(64) std::int64_t acc_out[32];
  for (std::int64_t n = 0; n < a.n; ++n) {
    const std::uint64_t* xn = a.x + n * a.h * a.w * words;
    float* on = a.out + n * wt.out * a.ho * a.wo;
    for (std::int64_t oy = 0; oy < a.ho; ++oy) {
      for (std::int64_t ox = 0; ox < a.wo; ++ox) {
        int nt = 0;
        for (std::int64_t ky = 0; ky < wt.kh; ++ky) {
          const std::int64_t iy = oy * a.stride - a.pad + ky;
          if (iy < 0 || iy >= a.h) continue;
          for (std::int64_t kx = 0; kx < wt.kw; ++kx) {
            const std::int64_t ix = ox * a.stride - a.pad + kx;
            if (ix < 0 || ix >= a.w) continue;
            taps[static_cast<std::size_t>(nt)] = xn + (iy * a.w + ix) * words;
            wrows[static_cast<std::size_t>(nt)] = wt.bits_t.data() + (ky * wt.kw + kx) * words * op;
            ++nt;
          }
        }
        const float base = static_cast<float>(nt * a.channels);
        float* o = on + oy * a.wo + ox;
        const std::int64_t ocs = a.ho * a.wo;
        for (std::int64_t ob = 0; ob < op; ob += 32) {
          __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0;
          for (int t = 0; t < nt; ++t) {
            const std::uint64_t* xa = taps[static_cast<std::size_t>(t)];
            const std::uint64_t* wr = wrows[static_cast<std::size_t>(t)] + ob;
            for (std::int64_t wi = 0; wi < words; ++wi) {
              const __m512i xv = _mm512_set1_epi64(static_cast<long long>(xa[wi]));
              const std::uint64_t* w = wr + wi * op;
              c0 = _mm512_add_epi64(c0, _mm512_popcnt_epi64(_mm512_xor_si512(xv, _mm512_loadu_si512(w))));
              c1 = _mm512_add_epi64(c1, _mm512_popcnt_epi64(_mm512_xor_si512(xv, _mm512_loadu_si512(w + 8))));
              c2 = _mm512_add_epi64(c2, _mm512_popcnt_epi64(_mm512_xor_si512(xv, _mm512_loadu_si512(w + 16))));
              c3 = _mm512_add_epi64(c3, _mm512_popcnt_epi64(_mm512_xor_si512(xv, _mm512_loadu_si512(w + 24))));
            }
          }
          _mm512_store_si512(acc_out, c0);
          _mm512_store_si512(acc_out + 8, c1);
          _mm512_store_si512(acc_out + 16, c2);
          _mm512_store_si512(acc_out + 24, c3);
          const std::int64_t m = std::min<std::int64_t>(32, wt.out - ob);
          for (std::int64_t j = 0; j < m; ++j)
            o[(ob + j) * ocs] = base - 2.0f * static_cast<float>(acc_out[j]);
        }
      }
    }
  }
}
void conv_portable(const ConvArgs& a) { conv_body(a); }

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

bool has_avx512_popcnt() {
  static const bool v = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq");
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

// Packs rows of `c` floats (stride `cs` between channels) into words (bit i of word i/64 for
// channel i), writing `words` words at `dst`.
inline void pack_row(const float* src, std::int64_t c, std::int64_t cs, std::int64_t words,
                     std::uint64_t* dst) {
  for (std::int64_t wi = 0; wi < words; ++wi) {
    std::uint64_t v = 0;
    const std::int64_t lo = wi * 64, hi = std::min<std::int64_t>(c, lo + 64);
    for (std::int64_t ci = lo; ci < hi; ++ci)
      v |= static_cast<std::uint64_t>(src[ci * cs] >= 0.0f) << (ci - lo);
    dst[wi] = v;
  }
}

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
  p.words = words_for(p.in);
  p.bits.assign(static_cast<std::size_t>(p.out * p.kh * p.kw * p.words), 0);
  const float* src = w.data_ptr<float>();
  const std::int64_t taps = p.kh * p.kw;
  for (std::int64_t o = 0; o < p.out; ++o)
    for (std::int64_t t = 0; t < taps; ++t)
      pack_row(src + o * p.in * taps + t, p.in, taps, p.words,
               p.bits.data() + (o * taps + t) * p.words);
  p.out_pad = (p.out + 31) / 32 * 32;
  p.bits_t.assign(static_cast<std::size_t>(taps * p.words * p.out_pad), 0);
  for (std::int64_t o = 0; o < p.out; ++o)
    for (std::int64_t t = 0; t < taps; ++t)
      for (std::int64_t wi = 0; wi < p.words; ++wi)
        p.bits_t[static_cast<std::size_t>((t * p.words + wi) * p.out_pad + o)] =
            p.bits[static_cast<std::size_t>((o * taps + t) * p.words + wi)];
  return p;
}

at::Tensor pack_activations(const at::Tensor& x_in) {
  KVLAB_THROW_IF(x_in.dim() != 4 && x_in.dim() != 2, UsageError,
                 "pack_activations: expected [N, C, H, W] or [N, C], got {} dims", x_in.dim());
  const at::Tensor x = x_in.detach().to(at::kCPU, at::kFloat).contiguous();
  const std::int64_t n = x.size(0), c = x.size(1);
  const std::int64_t hw = x.dim() == 4 ? x.size(2) * x.size(3) : 1;
  const std::int64_t words = words_for(c);
  at::Tensor out = x.dim() == 4 ? at::empty({n, x.size(2), x.size(3), words}, at::kLong)
                                : at::empty({n, words}, at::kLong);
  auto* dst = reinterpret_cast<std::uint64_t*>(out.data_ptr<std::int64_t>());
  const float* src = x.data_ptr<float>();
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t p = 0; p < hw; ++p)
      pack_row(src + i * c * hw + p, c, hw, words, dst + (i * hw + p) * words);
  return out;
}

at::Tensor binary_conv2d_packed(const at::Tensor& xp, std::int64_t channels, const PackedWeights& w,
                                int stride, int pad) {
  KVLAB_THROW_IF(xp.dim() != 4 || xp.scalar_type() != at::kLong || !xp.is_contiguous(), UsageError,
                 "binary_conv2d_packed: activations must be packed [N, H, W, words] int64");
  KVLAB_THROW_IF(channels != w.in || xp.size(3) != w.words, UsageError,
                 "binary_conv2d_packed: {} input channels but the weights take {}", channels, w.in);
  const std::int64_t n = xp.size(0), h = xp.size(1), wd = xp.size(2);
  const std::int64_t ho = (h + 2 * pad - w.kh) / stride + 1;
  const std::int64_t wo = (wd + 2 * pad - w.kw) / stride + 1;
  at::Tensor out = at::empty({n, w.out, ho, wo}, at::kFloat);
  ConvArgs a{reinterpret_cast<const std::uint64_t*>(xp.data_ptr<std::int64_t>()),
             n, h, wd, w.words, channels, &w, stride, pad, ho, wo, out.data_ptr<float>()};
  if (has_avx512_popcnt()) conv_avx512(a);
  else if (has_popcnt()) conv_popcnt(a);
  else conv_portable(a);
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
