// Fused CUDA kernels for the decode step (libllm/src/cuda_kernels.hpp; docs/performance.md).
//
// A decode step at batch 1 is bound by kernel count, not by the arithmetic of the small ops:
// ATen's RMSNorm is eight kernels, RoPE about six per tensor, and SDPA's decode attention runs one
// thread block per (sequence, head), leaving most of an H100 idle at long contexts. These kernels
// compute the same values with one launch each, rounding exactly where the ATen expressions round
// (RMSNorm and RoPE), and a split-K ("flash-decoding") attention for one query per sequence.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <limits>
#include <type_traits>

#include "../cuda_kernels.hpp"

namespace kvlab::llm::cuda {

namespace {

template <typename T>
__device__ __forceinline__ float to_f(T x);
template <>
__device__ __forceinline__ float to_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <>
__device__ __forceinline__ float to_f<__half>(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }

/// x rounded to T and back: where an ATen expression in dtype T materialises an intermediate.
template <typename T>
__device__ __forceinline__ float round_to(float x) { return to_f<T>(from_f<T>(x)); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
/// Block-wide sum / max (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
template <bool kMax>
__device__ float block_reduce(float v, float* smem32) {
  v = kMax ? warp_max(v) : warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();  // smem32 may still be read by a previous reduction
  if (lane == 0) smem32[warp] = v;
  __syncthreads();
  v = lane < warps ? smem32[lane] : (kMax ? -INFINITY : 0.f);
  return kMax ? warp_max(v) : warp_sum(v);
}

// ---- RMSNorm: y = w * (x_f32 * rsqrt(mean(x_f32^2) + eps)).to(T), one block per row ----
template <typename T>
__global__ void rms_norm_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                                int cols, float eps) {
  __shared__ float red[32];
  const T* xr = x + static_cast<size_t>(blockIdx.x) * cols;
  T* yr = y + static_cast<size_t>(blockIdx.x) * cols;
  float ss = 0.f;
  for (int i = threadIdx.x; i < cols; i += blockDim.x) {
    const float v = to_f(xr[i]);
    ss += v * v;
  }
  ss = block_reduce<false>(ss, red);
  const float r = rsqrtf(ss / static_cast<float>(cols) + eps);
  for (int i = threadIdx.x; i < cols; i += blockDim.x)
    yr[i] = from_f<T>(to_f(w[i]) * round_to<T>(to_f(xr[i]) * r));
}

// ---- RoPE: y = x * cos + rotate_half(x) * sin, each product and the sum rounded to T ----
template <typename T>
__global__ void rope_kernel(const T* __restrict__ x, const T* __restrict__ cs, const T* __restrict__ sn,
                            T* __restrict__ y, long long n, int heads, int t_len, int dim,
                            long long sb, long long sh, long long st) {
  const int half = dim / 2;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int d = static_cast<int>(i % dim);
    const int t = static_cast<int>((i / dim) % t_len);
    const int h = static_cast<int>((i / (static_cast<long long>(dim) * t_len)) % heads);
    const long long b = i / (static_cast<long long>(dim) * t_len * heads);
    const T* row = x + b * sb + h * sh + t * st;
    const float xv = to_f(row[d]);
    const float rot = d < half ? -to_f(row[d + half]) : to_f(row[d - half]);
    const long long ct = (b * t_len + t) * dim + d;
    y[i] = from_f<T>(round_to<T>(xv * to_f(cs[ct])) + round_to<T>(rot * to_f(sn[ct])));
  }
}

// ---- decode attention: one query per sequence, split over the key slots ----
constexpr int kChunk = 256;   // key slots per block (one per thread in the scoring phase)
constexpr int kThreads = 256;
constexpr int kMaxGroup = 8;   // query heads per KV head (more: the ATen path)
constexpr int kMaxDim = 256;

template <typename T>
__device__ __forceinline__ void load8(const T* p, float* out);
template <>
__device__ __forceinline__ void load8<__nv_bfloat16>(const __nv_bfloat16* p, float* out) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat16* h = reinterpret_cast<const __nv_bfloat16*>(&u);
#pragma unroll
  for (int i = 0; i < 8; ++i) out[i] = __bfloat162float(h[i]);
}
template <>
__device__ __forceinline__ void load8<__half>(const __half* p, float* out) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const __half* h = reinterpret_cast<const __half*>(&u);
#pragma unroll
  for (int i = 0; i < 8; ++i) out[i] = __half2float(h[i]);
}
template <>
__device__ __forceinline__ void load8<float>(const float* p, float* out) {
  const float4 a = *reinterpret_cast<const float4*>(p);
  const float4 b = *reinterpret_cast<const float4*>(p + 4);
  out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w;
  out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
}

/// Grid (splits, B * Hkv), kThreads threads. Writes, per query head and split, the chunk's
/// running max m, the sum of exp(score - m) and the unnormalised output sum_j exp(score_j - m) v_j.
/// Each key row is read by TPR = D / 8 adjacent threads with 16-byte loads (coalesced), so a
/// block streams kThreads / TPR rows at a time; partial dot products meet through shuffles.
template <typename T, int TPR>
__global__ void __launch_bounds__(kThreads)
decode_attn_partial(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                    const long long* __restrict__ kpos, const long long* __restrict__ qpos,
                    float* __restrict__ pm, float* __restrict__ pl, float* __restrict__ pacc,
                    int hkv, int group, int slots, long long ksb, long long ksh,
                    long long vsb, long long vsh, long long psb, long long psh, long long window,
                    float scale, int splits) {
  constexpr int dim = TPR * 8;
  constexpr int rows = kThreads / TPR;  // key rows in flight per block
  constexpr int warps = kThreads / 32;
  __shared__ float sc[kMaxGroup * kChunk];
  __shared__ float part[warps * dim];
  __shared__ float red[32];
  const int split = blockIdx.x;
  const int b = blockIdx.y / hkv, hk = blockIdx.y % hkv;
  const int heads = hkv * group;
  const int start = split * kChunk;
  const int len = min(kChunk, slots - start);
  const long long qp = qpos[b];
  const int r = threadIdx.x / TPR, dv = threadIdx.x % TPR;

  float qr[kMaxGroup][8];
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) {
    if (g < group) {
      load8<T>(q + (static_cast<long long>(b) * heads + hk * group + g) * dim + dv * 8, qr[g]);
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) qr[g][e] = 0.f;
    }
  }
  const T* kb = k + b * ksb + hk * ksh + dv * 8;
  const T* vb = v + b * vsb + hk * vsh + dv * 8;
  const long long* pb = kpos + b * psb + hk * psh;

  // Every lane runs the same number of passes (the shuffles below need the whole warp).
  for (int j0 = 0; j0 < len; j0 += rows) {
    const int j = j0 + r;
    const long long p = j < len ? pb[start + j] : -1;
    const bool ok = p >= 0 && p <= qp && (window <= 0 || p > qp - window);
    float s[kMaxGroup];
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) s[g] = 0.f;
    if (ok) {
      float kv8[8];
      load8<T>(kb + static_cast<long long>(start + j) * dim, kv8);
#pragma unroll
      for (int g = 0; g < kMaxGroup; ++g)
#pragma unroll
        for (int e = 0; e < 8; ++e) s[g] += qr[g][e] * kv8[e];
    }
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g)
#pragma unroll
      for (int o = TPR / 2; o > 0; o >>= 1) s[g] += __shfl_xor_sync(0xffffffffu, s[g], o);
    if (dv == 0 && j < len) {
#pragma unroll
      for (int g = 0; g < kMaxGroup; ++g)
        if (g < group) sc[g * kChunk + j] = ok ? s[g] * scale : -INFINITY;
    }
  }
  __syncthreads();

  for (int g = 0; g < group; ++g) {
    float m = -INFINITY;
    for (int j = threadIdx.x; j < len; j += blockDim.x) m = fmaxf(m, sc[g * kChunk + j]);
    m = block_reduce<true>(m, red);
    float l = 0.f;
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
      const float e = m == -INFINITY ? 0.f : __expf(sc[g * kChunk + j] - m);
      sc[g * kChunk + j] = e;
      l += e;
    }
    l = block_reduce<false>(l, red);
    if (threadIdx.x == 0) {
      const long long o = (static_cast<long long>(b) * heads + hk * group + g) * splits + split;
      pm[o] = m;
      pl[o] = l;
    }
  }
  __syncthreads();

  float acc[kMaxGroup][8];
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g)
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[g][e] = 0.f;
  for (int j = r; j < len; j += rows) {
    bool any = false;
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) any = any || (g < group && sc[g * kChunk + j] != 0.f);
    if (!any) continue;  // masked or empty slot: its value is never read
    float vv[8];
    load8<T>(vb + static_cast<long long>(start + j) * dim, vv);
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) {
      if (g < group) {
        const float w = sc[g * kChunk + j];
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[g][e] += w * vv[e];
      }
    }
  }
  // Sum the row lanes: first inside each warp (lanes TPR apart), then across warps in smem.
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) {
    if (g >= group) break;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      float a = acc[g][e];
      for (int o = 16; o >= TPR; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
      if (lane < TPR) part[warp * dim + dv * 8 + e] = a;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < dim; d += blockDim.x) {
      float t = 0.f;
      for (int w = 0; w < warps; ++w) t += part[w * dim + d];
      pacc[((static_cast<long long>(b) * heads + hk * group + g) * splits + split) * dim + d] = t;
    }
    __syncthreads();
  }
}

/// Grid B * H, block dim threads: merges the splits by their log-sum-exp.
template <typename T>
__global__ void decode_attn_combine(const float* __restrict__ pm, const float* __restrict__ pl,
                                    const float* __restrict__ pacc, T* __restrict__ out, int dim,
                                    int splits) {
  const long long bh = blockIdx.x;
  float m = -INFINITY;
  for (int s = 0; s < splits; ++s) m = fmaxf(m, pm[bh * splits + s]);
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    float num = 0.f, den = 0.f;
    if (m != -INFINITY) {
      for (int s = 0; s < splits; ++s) {
        const float ms = pm[bh * splits + s];
        if (ms == -INFINITY) continue;
        const float f = __expf(ms - m);
        den += f * pl[bh * splits + s];
        num += f * pacc[(bh * splits + s) * dim + d];
      }
    }
    out[bh * dim + d] = from_f<T>(den > 0.f ? num / den : 0.f);
  }
}

template <typename F>
void dispatch(c10::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: f(float{}); break;
    case at::kBFloat16: f(__nv_bfloat16{}); break;
    case at::kHalf: f(__half{}); break;
    default: TORCH_CHECK(false, "kvlab CUDA kernels: unsupported dtype ", t);
  }
}

template <typename T>
T* ptr(const at::Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); }
template <typename T>
const T* cptr(const at::Tensor& t) { return reinterpret_cast<const T*>(t.data_ptr()); }

}  // namespace

at::Tensor rms_norm(const at::Tensor& x_in, const at::Tensor& w, double eps) {
  const at::Tensor x = x_in.contiguous();
  const int cols = static_cast<int>(x.size(-1));
  const long long rows = x.numel() / cols;
  at::Tensor y = at::empty_like(x);
  if (rows == 0) return y;
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  dispatch(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    rms_norm_kernel<T><<<static_cast<unsigned>(rows), 256, 0, stream>>>(
        cptr<T>(x), cptr<T>(w.contiguous()), ptr<T>(y), cols, static_cast<float>(eps));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

at::Tensor rope(const at::Tensor& x, const at::Tensor& cos_in, const at::Tensor& sin_in) {
  TORCH_CHECK(x.dim() == 4 && x.stride(3) == 1, "kvlab rope: x must be [B, H, T, D], D contiguous");
  const at::Tensor cs = cos_in.contiguous(), sn = sin_in.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  const long long n = y.numel();
  if (n == 0) return y;
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const unsigned blocks = static_cast<unsigned>(std::min<long long>((n + 255) / 256, 65535));
  dispatch(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    rope_kernel<T><<<blocks, 256, 0, stream>>>(cptr<T>(x), cptr<T>(cs), cptr<T>(sn), ptr<T>(y), n,
                                               static_cast<int>(x.size(1)), static_cast<int>(x.size(2)),
                                               static_cast<int>(x.size(3)), x.stride(0), x.stride(1),
                                               x.stride(2));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

bool decode_attention_supports(const at::Tensor& q, const at::Tensor& k) {
  const auto t = q.scalar_type();
  const std::int64_t d = q.size(3), g = q.size(1) / k.size(1);
  const bool pow2 = d >= 8 && d <= kMaxDim && (d & (d - 1)) == 0;  // D / 8 threads per key row
  return q.is_cuda() && q.size(2) == 1 && pow2 && g <= kMaxGroup &&
         (t == at::kFloat || t == at::kBFloat16 || t == at::kHalf) && k.scalar_type() == t;
}

at::Tensor decode_attention(const at::Tensor& q_in, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& kpos, const at::Tensor& qpos_in,
                            std::int64_t window, double scale) {
  const at::Tensor q = q_in.contiguous();
  const at::Tensor qpos = qpos_in.reshape({-1}).to(at::kLong).contiguous();
  const int b = static_cast<int>(q.size(0)), heads = static_cast<int>(q.size(1));
  const int dim = static_cast<int>(q.size(3)), hkv = static_cast<int>(k.size(1));
  const int slots = static_cast<int>(k.size(2));
  TORCH_CHECK(k.stride(3) == 1 && k.stride(2) == dim && v.stride(3) == 1 && v.stride(2) == dim &&
                  kpos.stride(2) == 1,
              "kvlab decode attention: K/V rows and positions must be contiguous along the slots");
  at::Tensor out = at::empty_like(q);
  const int splits = std::max(1, (slots + kChunk - 1) / kChunk);
  const auto fopt = q.options().dtype(at::kFloat);
  at::Tensor pm = at::empty({b * heads * splits}, fopt), pl = at::empty({b * heads * splits}, fopt);
  at::Tensor pacc = at::empty({static_cast<std::int64_t>(b) * heads * splits * dim}, fopt);
  const c10::cuda::CUDAGuard guard(q.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  dispatch(q.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    if (slots > 0) {
      auto launch = [&](auto tpr) {
        constexpr int kTpr = decltype(tpr)::value;
        decode_attn_partial<T, kTpr><<<dim3(splits, b * hkv), kThreads, 0, stream>>>(
            cptr<T>(q), cptr<T>(k), cptr<T>(v), cptr<long long>(kpos), cptr<long long>(qpos),
            ptr<float>(pm), ptr<float>(pl), ptr<float>(pacc), hkv, heads / hkv, slots,
            k.stride(0), k.stride(1), v.stride(0), v.stride(1), kpos.stride(0), kpos.stride(1),
            window, static_cast<float>(scale), splits);
      };
      switch (dim / 8) {
        case 1: launch(std::integral_constant<int, 1>{}); break;
        case 2: launch(std::integral_constant<int, 2>{}); break;
        case 4: launch(std::integral_constant<int, 4>{}); break;
        case 8: launch(std::integral_constant<int, 8>{}); break;
        case 16: launch(std::integral_constant<int, 16>{}); break;
        default: launch(std::integral_constant<int, 32>{}); break;
      }
    } else {
      pm.fill_(-INFINITY);
    }
    decode_attn_combine<T><<<b * heads, std::min(dim, 256), 0, stream>>>(
        ptr<float>(pm), ptr<float>(pl), ptr<float>(pacc), ptr<T>(out), dim, splits);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace kvlab::llm::cuda
