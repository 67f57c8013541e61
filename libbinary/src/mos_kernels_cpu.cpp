// Fused CPU forward of a packed BinaryMoS layer for a few rows of x (mos_kernels.hpp).
//
// Per call the rows of x are staged once as float xs = round(x * s_in) (with the router and the
// scale mixing of E > 1 done here too, in plain loops: at decode the ATen calls they would take
// cost more than their arithmetic), zero-padded to a multiple of 64 columns, with their sums
// T = sum_j xs_j. Each output row then reads its packed bits once and accumulates only the
// columns whose bit is set, S = sum_{bit set} xs_j, so that (x * s_in) sign(W)^T = 2 S - T:
// AVX-512 adds 16 columns under a 16-bit mask per instruction (the bits are the mask), AVX2
// builds an 8-lane mask per byte, the scalar fallback tests bit by bit. Zero-padded xs makes
// padding bits harmless. Several independent accumulators per row keep the adders busy.
#include "mos_kernels.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "kvlab/core/error.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define KVLAB_MOS_X86 1
#include <immintrin.h>
#endif

namespace kvlab::binary {

namespace {

std::atomic<int> g_isa{static_cast<int>(MosCpuIsa::Auto)};

bool cpu_has(MosCpuIsa isa) {
  switch (isa) {
    case MosCpuIsa::Scalar: return true;
#ifdef KVLAB_MOS_X86
    case MosCpuIsa::Avx2: return __builtin_cpu_supports("avx2");
    case MosCpuIsa::Avx512: return __builtin_cpu_supports("avx512f");
#endif
    default: return false;
  }
}

}  // namespace

bool mos_cpu_isa_supported(MosCpuIsa isa) { return isa == MosCpuIsa::Auto || cpu_has(isa); }

void set_mos_cpu_isa(MosCpuIsa isa) {
  KVLAB_THROW_IF(!mos_cpu_isa_supported(isa), UsageError,
                 "binary kernels: this CPU does not support {}; use auto or a lower level",
                 mos_cpu_isa_name(isa));
  g_isa.store(static_cast<int>(isa));
}

MosCpuIsa mos_cpu_isa() {
  const auto req = static_cast<MosCpuIsa>(g_isa.load());
  if (req != MosCpuIsa::Auto) return req;
  if (cpu_has(MosCpuIsa::Avx512)) return MosCpuIsa::Avx512;
  if (cpu_has(MosCpuIsa::Avx2)) return MosCpuIsa::Avx2;
  return MosCpuIsa::Scalar;
}

const char* mos_cpu_isa_name(MosCpuIsa isa) {
  switch (isa) {
    case MosCpuIsa::Auto: return "auto";
    case MosCpuIsa::Avx512: return "avx512";
    case MosCpuIsa::Avx2: return "avx2";
    case MosCpuIsa::Scalar: return "scalar";
  }
  return "?";
}

namespace detail {

namespace {

template <typename T>
inline float to_f(T v) { return static_cast<float>(v); }
/// v rounded to T and back: where the ATen expression materialises a tensor of dtype T.
template <typename T>
inline float round_to(float v) { return static_cast<float>(T(v)); }
template <>
inline float round_to<float>(float v) { return v; }

constexpr std::int64_t kColAlign = 64;  // xs rows padded to whole 64-bit words of bits

/// Everything the per-row kernels read.
template <typename T>
struct Ctx {
  const float* xs = nullptr;     // [M, in_pad], zero beyond in
  const float* total = nullptr;  // [M] sum of xs
  const float* g = nullptr;      // [M, E] gates (rounded to T), null when E == 1
  const std::uint8_t* bits = nullptr;
  const T* s_out = nullptr;      // [E, out]
  const T* bias = nullptr;       // [out] or null
  T* y = nullptr;                // [M, out]
  std::int64_t m = 0, in = 0, in_pad = 0, kb = 0, out = 0, experts = 1;
};

/// The epilogue of output row r for x row m, given S (the sum over set bits).
template <typename T>
inline void finish(const Ctx<T>& c, std::int64_t r, std::int64_t m, float s) {
  float v = round_to<T>(2.f * s - c.total[m]);
  float so;
  if (c.g == nullptr) {
    so = to_f(c.s_out[r]);
  } else {
    float a = 0.f;
    for (std::int64_t e = 0; e < c.experts; ++e)
      a += c.g[m * c.experts + e] * to_f(c.s_out[e * c.out + r]);
    so = round_to<T>(a);
  }
  v = round_to<T>(v * so);
  if (c.bias) v = round_to<T>(v + to_f(c.bias[r]));
  c.y[m * c.out + r] = T(v);
}

/// The row's bits as 64-bit words: word w of row `row` (bytes past kb read as 0).
inline std::uint64_t word_at(const std::uint8_t* row, std::int64_t w, std::int64_t kb) {
  std::uint64_t v = 0;
  const std::int64_t off = w * 8;
  std::memcpy(&v, row + off, static_cast<std::size_t>(std::min<std::int64_t>(8, kb - off)));
  return v;  // little-endian: byte k -> bits 8k..8k+7, so bit j of the word is column 64w + j
}

template <typename T>
void rows_scalar(const Ctx<T>& c, std::int64_t r0, std::int64_t r1) {
  for (std::int64_t r = r0; r < r1; ++r) {
    const std::uint8_t* row = c.bits + r * c.kb;
    for (std::int64_t m = 0; m < c.m; ++m) {
      const float* xs = c.xs + m * c.in_pad;
      float s0 = 0.f, s1 = 0.f;
      for (std::int64_t k = 0; k < c.kb; ++k) {
        const unsigned b = row[k];
        const float* xv = xs + 8 * k;
        for (int j = 0; j < 8; j += 2) {
          s0 += ((b >> j) & 1u) ? xv[j] : 0.f;
          s1 += ((b >> (j + 1)) & 1u) ? xv[j + 1] : 0.f;
        }
      }
      finish(c, r, m, s0 + s1);
    }
  }
}

#ifdef KVLAB_MOS_X86

// RB output rows at once, NACC accumulators per (row, x row): RB * M * NACC independent add
// chains (>= 8 to cover the add latency), at most 16 vector registers of accumulators.
template <int M>
constexpr int rows_at_once() { return M <= 2 ? 2 : 1; }
template <int M>
constexpr int accs() { return M <= 2 ? 4 : M <= 4 ? 2 : 1; }

template <typename T, int M, int RB>
__attribute__((target("avx512f"))) void block_avx512(const Ctx<T>& c, std::int64_t r) {
  constexpr int NACC = accs<M>();
  __m512 acc[RB][M][NACC];
  for (int i = 0; i < RB; ++i)
    for (int m = 0; m < M; ++m)
      for (int a = 0; a < NACC; ++a) acc[i][m][a] = _mm512_setzero_ps();
  const std::int64_t words = c.in_pad / 64, full = c.kb / 8;
  for (std::int64_t w = 0; w < words; ++w) {
    std::uint64_t b[RB];
    for (int i = 0; i < RB; ++i) {
      const std::uint8_t* row = c.bits + (r + i) * c.kb;
      if (w < full) std::memcpy(&b[i], row + 8 * w, 8);
      else b[i] = word_at(row, w, c.kb);
    }
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) {
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        const __m512 xv = _mm512_loadu_ps(c.xs + m * c.in_pad + 64 * w + 16 * q);
        for (int i = 0; i < RB; ++i) {
          __m512& a = acc[i][m][q % NACC];
          a = _mm512_mask_add_ps(a, static_cast<__mmask16>(b[i] >> (16 * q)), a, xv);
        }
      }
    }
  }
  for (int i = 0; i < RB; ++i)
    for (int m = 0; m < M; ++m) {
      __m512 s = acc[i][m][0];
      for (int a = 1; a < NACC; ++a) s = _mm512_add_ps(s, acc[i][m][a]);
      // (stored and summed here: GCC 12's _mm512_reduce_add_ps warns -Wmaybe-uninitialized)
      alignas(64) float t[16];
      _mm512_store_ps(t, s);
      float v = 0.f;
      for (int k = 0; k < 16; ++k) v += t[k];
      finish(c, r + i, m, v);
    }
}

template <typename T, int M>
void rows_avx512(const Ctx<T>& c, std::int64_t r0, std::int64_t r1) {
  constexpr int RB = rows_at_once<M>();
  std::int64_t r = r0;
  for (; r + RB <= r1; r += RB) block_avx512<T, M, RB>(c, r);
  for (; r < r1; ++r) block_avx512<T, M, 1>(c, r);
}

template <typename T, int M, int RB>
__attribute__((target("avx2"))) void block_avx2(const Ctx<T>& c, std::int64_t r) {
  constexpr int NACC = accs<M>();
  __m256 acc[RB][M][NACC];
  for (int i = 0; i < RB; ++i)
    for (int m = 0; m < M; ++m)
      for (int a = 0; a < NACC; ++a) acc[i][m][a] = _mm256_setzero_ps();
  const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const std::int64_t words = c.in_pad / 64, full = c.kb / 8;
  for (std::int64_t w = 0; w < words; ++w) {
    std::uint64_t b[RB];
    for (int i = 0; i < RB; ++i) {
      const std::uint8_t* row = c.bits + (r + i) * c.kb;
      if (w < full) std::memcpy(&b[i], row + 8 * w, 8);
      else b[i] = word_at(row, w, c.kb);
    }
#pragma GCC unroll 8
    for (int q = 0; q < 8; ++q) {  // byte q of the word: 8 columns
      __m256 mask[RB];
      for (int i = 0; i < RB; ++i) {
        const __m256i v = _mm256_set1_epi32(static_cast<int>((b[i] >> (8 * q)) & 0xffu));
        mask[i] = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(v, sel), sel));
      }
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        const __m256 xv = _mm256_loadu_ps(c.xs + m * c.in_pad + 64 * w + 8 * q);
        for (int i = 0; i < RB; ++i) {
          __m256& a = acc[i][m][q % NACC];
          a = _mm256_add_ps(a, _mm256_and_ps(mask[i], xv));
        }
      }
    }
  }
  for (int i = 0; i < RB; ++i)
    for (int m = 0; m < M; ++m) {
      __m256 s = acc[i][m][0];
      for (int a = 1; a < NACC; ++a) s = _mm256_add_ps(s, acc[i][m][a]);
      alignas(32) float t[8];
      _mm256_store_ps(t, s);
      finish(c, r + i, m, ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7])));
    }
}

template <typename T, int M>
void rows_avx2(const Ctx<T>& c, std::int64_t r0, std::int64_t r1) {
  constexpr int RB = rows_at_once<M>();
  std::int64_t r = r0;
  for (; r + RB <= r1; r += RB) block_avx2<T, M, RB>(c, r);
  for (; r < r1; ++r) block_avx2<T, M, 1>(c, r);
}

template <typename T, int M>
void rows_simd(MosCpuIsa isa, const Ctx<T>& c, std::int64_t r0, std::int64_t r1) {
  if (isa == MosCpuIsa::Avx512) rows_avx512<T, M>(c, r0, r1);
  else rows_avx2<T, M>(c, r0, r1);
}

#endif  // KVLAB_MOS_X86

template <typename T>
void rows(MosCpuIsa isa, const Ctx<T>& c, std::int64_t r0, std::int64_t r1) {
#ifdef KVLAB_MOS_X86
  if (isa != MosCpuIsa::Scalar && c.m > 8) {  // groups of up to 8 rows of x
    for (std::int64_t m0 = 0; m0 < c.m; m0 += 8) {
      Ctx<T> s = c;
      s.m = std::min<std::int64_t>(8, c.m - m0);
      s.xs = c.xs + m0 * c.in_pad;
      s.total = c.total + m0;
      if (c.g) s.g = c.g + m0 * c.experts;
      s.y = c.y + m0 * c.out;
      rows<T>(isa, s, r0, r1);
    }
    return;
  }
  if (isa != MosCpuIsa::Scalar) {
    switch (c.m) {
      case 1: return rows_simd<T, 1>(isa, c, r0, r1);
      case 2: return rows_simd<T, 2>(isa, c, r0, r1);
      case 3: return rows_simd<T, 3>(isa, c, r0, r1);
      case 4: return rows_simd<T, 4>(isa, c, r0, r1);
      case 5: return rows_simd<T, 5>(isa, c, r0, r1);
      case 6: return rows_simd<T, 6>(isa, c, r0, r1);
      case 7: return rows_simd<T, 7>(isa, c, r0, r1);
      case 8: return rows_simd<T, 8>(isa, c, r0, r1);
      default: break;
    }
  }
#endif
  rows_scalar<T>(c, r0, r1);
}

/// Per-thread staging buffers, reused across calls (no allocation per decode step).
struct Staging {
  std::vector<float> xs, total, g, logits;
};
Staging& staging() {
  thread_local Staging s;
  return s;
}

template <typename T>
at::Tensor gemv(const at::Tensor& x, const at::Tensor& bits, std::int64_t in,
                const at::Tensor& s_in, const at::Tensor& s_out, const at::Tensor& router,
                const at::Tensor& bias) {
  const std::int64_t m = x.size(0), out = bits.size(0), e = s_in.size(0);
  const std::int64_t in_pad = (in + kColAlign - 1) / kColAlign * kColAlign;
  Staging& st = staging();
  st.xs.assign(static_cast<std::size_t>(m * in_pad), 0.f);
  st.total.assign(static_cast<std::size_t>(m), 0.f);
  st.g.assign(static_cast<std::size_t>(m * e), 0.f);
  st.logits.assign(static_cast<std::size_t>(e), 0.f);
  const T* xp = x.data_ptr<T>();
  const T* sip = s_in.data_ptr<T>();
  const T* rp = e > 1 ? router.data_ptr<T>() : nullptr;
  for (std::int64_t i = 0; i < m; ++i) {
    const T* xr = xp + i * in;
    float* xs = st.xs.data() + i * in_pad;
    float* g = st.g.data() + i * e;
    if (e > 1) {
      // g = softmax(round(x W_r^T)) in float32, rounded to T (mos_forward's expression).
      float mx = -INFINITY;
      for (std::int64_t k = 0; k < e; ++k) {
        const T* wr = rp + k * in;
        float a = 0.f;
        for (std::int64_t j = 0; j < in; ++j) a += to_f(xr[j]) * to_f(wr[j]);
        st.logits[k] = round_to<T>(a);
        mx = std::max(mx, st.logits[k]);
      }
      float den = 0.f;
      for (std::int64_t k = 0; k < e; ++k) den += std::exp(st.logits[k] - mx);
      for (std::int64_t k = 0; k < e; ++k) g[k] = round_to<T>(std::exp(st.logits[k] - mx) / den);
    }
    float tot = 0.f;
    for (std::int64_t j = 0; j < in; ++j) {
      float si;
      if (e > 1) {
        float a = 0.f;
        for (std::int64_t k = 0; k < e; ++k) a += g[k] * to_f(sip[k * in + j]);
        si = round_to<T>(a);
      } else {
        si = to_f(sip[j]);
      }
      xs[j] = round_to<T>(to_f(xr[j]) * si);
      tot += xs[j];
    }
    st.total[i] = tot;
  }
  at::Tensor y = at::empty({m, out}, x.options());
  Ctx<T> c;
  c.xs = st.xs.data();
  c.total = st.total.data();
  c.g = e > 1 ? st.g.data() : nullptr;
  c.bits = bits.data_ptr<std::uint8_t>();
  c.s_out = s_out.data_ptr<T>();
  c.bias = bias.defined() ? bias.data_ptr<T>() : nullptr;
  c.y = y.data_ptr<T>();
  c.m = m;
  c.in = in;
  c.in_pad = in_pad;
  c.kb = bits.size(1);
  c.out = out;
  c.experts = e;
  const MosCpuIsa isa = mos_cpu_isa();
  // About 256K weights per task: small layers stay on the calling thread.
  const std::int64_t grain = std::max<std::int64_t>(16, (std::int64_t{1} << 18) / std::max<std::int64_t>(in, 1));
  at::parallel_for(0, out, grain, [&](std::int64_t r0, std::int64_t r1) { rows<T>(isa, c, r0, r1); });
  return y;
}

}  // namespace

at::Tensor mos_gemv_cpu(const at::Tensor& x, const at::Tensor& bits, std::int64_t in,
                        const at::Tensor& s_in, const at::Tensor& s_out, const at::Tensor& router,
                        const at::Tensor& bias) {
  const auto dt = x.scalar_type();
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.size(1) == in && x.is_contiguous(),
              "mos_gemv_cpu: x must be a contiguous CPU [M, ", in, "] tensor");
  TORCH_CHECK(bits.scalar_type() == at::kByte && bits.dim() == 2 && bits.is_contiguous() &&
                  bits.size(1) == (in + 7) / 8,
              "mos_gemv_cpu: bits must be contiguous uint8 [out, ", (in + 7) / 8, "]");
  const std::int64_t e = s_in.size(0);
  TORCH_CHECK(s_in.scalar_type() == dt && s_out.scalar_type() == dt && s_in.is_contiguous() &&
                  s_out.is_contiguous() && s_in.size(1) == in && s_out.size(1) == bits.size(0) &&
                  s_out.size(0) == e && (e == 1 || (router.defined() && router.scalar_type() == dt &&
                                                    router.is_contiguous())) &&
                  (!bias.defined() || (bias.scalar_type() == dt && bias.is_contiguous())),
              "mos_gemv_cpu: scales, router and bias must be contiguous and in x's dtype");
  switch (dt) {
    case at::kFloat: return gemv<float>(x, bits, in, s_in, s_out, router, bias);
    case at::kBFloat16: return gemv<c10::BFloat16>(x, bits, in, s_in, s_out, router, bias);
    case at::kHalf: return gemv<c10::Half>(x, bits, in, s_in, s_out, router, bias);
    default: TORCH_CHECK(false, "mos_gemv_cpu: unsupported dtype ", dt);
  }
}

namespace {

/// For each byte value, its 8 bits as +-1 in the bit pattern U of the target dtype: one 16- or
/// 32-byte copy per byte of bits (+-1 are exact in every float format; pos/neg are their bits).
template <typename U, U kPos, U kNeg>
const U* sign_rows() {
  static const std::vector<U> t = [] {
    std::vector<U> v(256 * 8);
    for (int b = 0; b < 256; ++b)
      for (int j = 0; j < 8; ++j) v[static_cast<std::size_t>(b * 8 + j)] = ((b >> j) & 1) ? kPos : kNeg;
    return v;
  }();
  return t.data();
}

template <typename U, U kPos, U kNeg>
void unpack_rows(const std::uint8_t* src, std::int64_t kb, std::int64_t in, U* dst,
                 std::int64_t rows) {
  const U* table = sign_rows<U, kPos, kNeg>();
  const std::int64_t grain =
      std::max<std::int64_t>(1, (std::int64_t{1} << 16) / std::max<std::int64_t>(in, 1));
  at::parallel_for(0, rows, grain, [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
      const std::uint8_t* b = src + r * kb;
      U* o = dst + r * in;
      const std::int64_t whole = in / 8;
      for (std::int64_t k = 0; k < whole; ++k) std::memcpy(o + 8 * k, table + 8 * b[k], 8 * sizeof(U));
      for (std::int64_t j = whole * 8; j < in; ++j) o[j] = ((b[j >> 3] >> (j & 7)) & 1u) ? kPos : kNeg;
    }
  });
}

}  // namespace

at::Tensor unpack_signs_cpu(const at::Tensor& packed, std::int64_t in, c10::ScalarType dtype) {
  const at::Tensor p = packed.contiguous();
  const std::int64_t rows = p.size(0), kb = p.size(1);
  TORCH_CHECK(p.scalar_type() == at::kByte && kb * 8 >= in,
              "unpack_signs: packed must be uint8 [rows, ceil(in/8)]");
  const std::uint8_t* src = p.data_ptr<std::uint8_t>();
  at::Tensor u = at::empty({rows, in}, p.options().dtype(dtype));
  switch (dtype) {
    case at::kFloat:
      unpack_rows<std::uint32_t, 0x3F800000u, 0xBF800000u>(
          src, kb, in, static_cast<std::uint32_t*>(u.data_ptr()), rows);
      return u;
    case at::kBFloat16:
      unpack_rows<std::uint16_t, 0x3F80, 0xBF80>(src, kb, in, static_cast<std::uint16_t*>(u.data_ptr()), rows);
      return u;
    case at::kHalf:
      unpack_rows<std::uint16_t, 0x3C00, 0xBC00>(src, kb, in, static_cast<std::uint16_t*>(u.data_ptr()), rows);
      return u;
    default:
      return unpack_signs_cpu(p, in, at::kFloat).to(dtype);
  }
}

}  // namespace detail
}  // namespace kvlab::binary
