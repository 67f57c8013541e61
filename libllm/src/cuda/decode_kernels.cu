// Fused CUDA kernels for the decode step (libllm/src/cuda_kernels.hpp; docs/performance.md).
//
// A decode step at batch 1 is bound by kernel count and by how well each kernel streams HBM, not
// by arithmetic: ATen's RMSNorm is eight kernels, RoPE about six per tensor, cuBLAS's batch-1
// GEMMs leave bandwidth unused and need separate kernels for biases, residual adds and SwiGLU, and
// SDPA's decode attention runs one thread block per (sequence, head), leaving most of an H100 idle
// at long contexts. These kernels compute the same values with fewer launches, rounding where the
// ATen expressions round (RMSNorm, RoPE, the linear outputs and the epilogues): batch-1 GEMVs with
// the input RMSNorm fused in and bias / residual / SwiGLU epilogues, RoPE fused with the cache
// write, and a split-K ("flash-decoding") attention for one query per sequence.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

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

/// 8 elements of T as raw 16-byte words (two for fp32), loaded now and converted later so that
/// many loads are in flight before the first one is used.
template <typename T>
struct Raw8 {
  static constexpr int kWords = sizeof(T) == 4 ? 2 : 1;
  uint4 u[kWords];
  __device__ __forceinline__ void load(const T* p) {
#pragma unroll
    for (int i = 0; i < kWords; ++i) u[i] = __ldg(reinterpret_cast<const uint4*>(p) + i);
  }
  __device__ __forceinline__ void to_float(float* out) const {
    const T* h = reinterpret_cast<const T*>(u);
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = to_f(h[i]);
  }
};

/// Grid (splits, B * Hkv), kAttnWarps warps. Writes, per query head and split, the split's max
/// score m, the sum of exp(score - m) and the unnormalised output sum_j exp(score_j - m) v_j.
///
/// Flash-decoding with independent warps: each warp owns `batches` x kRowsPerBatch consecutive
/// slots of the split and streams them with an online softmax, so no warp ever waits on another
/// until the final merge. A key/value row is read by TPR = D / 8 adjacent lanes with 16-byte loads
/// (coalesced); a warp holds 32 / TPR rows per pass, and the K and V loads of kBatch passes are all
/// issued before the first is used (the memory-level parallelism a long-context decode step is
/// bound by). G >= the query heads per KV head (a power of two; `group` is the real count).
constexpr int kAttnWarps = 4;
/// Passes whose loads a warp issues together: 8, or 4 where registers would not hold 8 (eight
/// query heads per KV head, or fp32 rows of two 16-byte words).
template <typename T, int G>
__host__ __device__ constexpr int attn_batch() { return G >= 8 || sizeof(T) == 4 ? 4 : 8; }

template <typename T, int TPR, int G>
__global__ void __launch_bounds__(kAttnWarps * 32)
decode_attn_partial(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                    const long long* __restrict__ kpos, const long long* __restrict__ qpos,
                    float* __restrict__ pm, float* __restrict__ pl, float* __restrict__ pacc,
                    int hkv, int group, int slots, long long ksb, long long ksh,
                    long long vsb, long long vsh, long long psb, long long psh, long long window,
                    float scale, int splits, int batches) {
  constexpr int dim = TPR * 8;
  constexpr int rows = 32 / TPR;               // rows per warp pass
  constexpr int kBatch = attn_batch<T, G>();
  constexpr int kRowsPerBatch = rows * kBatch;
  __shared__ float sm_m[kAttnWarps][G], sm_l[kAttnWarps][G];
  __shared__ float sm_acc[kAttnWarps][G][dim];
  const int split = blockIdx.x;
  const int b = blockIdx.y / hkv, hk = blockIdx.y % hkv;
  const int heads = hkv * group;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int r = lane / TPR, dv = lane % TPR;
  const long long qp = qpos[b];

  float qr[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (g < group) {
      load8<T>(q + (static_cast<long long>(b) * heads + hk * group + g) * dim + dv * 8, qr[g]);
#pragma unroll
      for (int e = 0; e < 8; ++e) qr[g][e] *= scale;
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) qr[g][e] = 0.f;
    }
  }
  const T* kb = k + b * ksb + hk * ksh + dv * 8;
  const T* vb = v + b * vsb + hk * vsh + dv * 8;
  const long long* pb = kpos + b * psb + hk * psh;

  float m[G], l[G], acc[G][8];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[g][e] = 0.f;
  }
  const int warp_start = (split * kAttnWarps + warp) * batches * kRowsPerBatch;
  for (int bt = 0; bt < batches; ++bt) {
    const int base = warp_start + bt * kRowsPerBatch;
    if (base >= slots) break;  // warp-uniform
    Raw8<T> kr[kBatch], vr[kBatch];
    bool ok[kBatch];
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      const int j = base + i * rows + r;
      const long long p = j < slots ? pb[j] : -1;
      ok[i] = p >= 0 && p <= qp && (window <= 0 || p > qp - window);
      if (ok[i]) {
        kr[i].load(kb + static_cast<long long>(j) * dim);
        vr[i].load(vb + static_cast<long long>(j) * dim);
      }
    }
    float sc[kBatch][G];
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      float kv8[8];
      if (ok[i]) kr[i].to_float(kv8);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float t = 0.f;
        if (ok[i]) {
#pragma unroll
          for (int e = 0; e < 8; ++e) t += qr[g][e] * kv8[e];
        }
#pragma unroll
        for (int o = TPR / 2; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
        sc[i][g] = ok[i] ? t : -INFINITY;
      }
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float mb = m[g];
#pragma unroll
      for (int i = 0; i < kBatch; ++i) mb = fmaxf(mb, sc[i][g]);
      if (mb == -INFINITY) continue;  // nothing visible yet for this row lane
      const float f = __expf(m[g] - mb);  // m = -inf: 0
      l[g] *= f;
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[g][e] *= f;
      m[g] = mb;
    }
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      if (!ok[i]) continue;
      float vv[8];
      vr[i].to_float(vv);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const float pr = __expf(sc[i][g] - m[g]);
        l[g] += pr;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[g][e] += pr * vv[e];
      }
    }
  }
  // Merge the row lanes of the warp (lanes TPR apart hold other rows, same dims).
#pragma unroll
  for (int o = TPR; o < 32; o <<= 1) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[g], o);
      const float lo = __shfl_xor_sync(0xffffffffu, l[g], o);
      const float mn = fmaxf(m[g], mo);
      const float f1 = mn == -INFINITY ? 0.f : __expf(m[g] - mn);
      const float f2 = mn == -INFINITY ? 0.f : __expf(mo - mn);
      l[g] = l[g] * f1 + lo * f2;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float ao = __shfl_xor_sync(0xffffffffu, acc[g][e], o);
        acc[g][e] = acc[g][e] * f1 + ao * f2;
      }
      m[g] = mn;
    }
  }
  if (lane < TPR) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      if (lane == 0) {
        sm_m[warp][g] = m[g];
        sm_l[warp][g] = l[g];
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) sm_acc[warp][g][dv * 8 + e] = acc[g][e];
    }
  }
  __syncthreads();
  // Merge the warps: one thread per (group head, dim).
  for (int i = threadIdx.x; i < group * dim; i += blockDim.x) {
    const int g = i / dim, d = i % dim;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kAttnWarps; ++w) mx = fmaxf(mx, sm_m[w][g]);
    float lsum = 0.f, a = 0.f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kAttnWarps; ++w) {
        const float f = __expf(sm_m[w][g] - mx);
        lsum += f * sm_l[w][g];
        a += f * sm_acc[w][g][d];
      }
    }
    const long long o = (static_cast<long long>(b) * heads + hk * group + g) * splits + split;
    pacc[o * dim + d] = a;
    if (d == 0) {
      pm[o] = mx;
      pl[o] = lsum;
    }
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

// ---- batch-1 GEMV of the decode step: y = W x (+ bias | + residual | silu(gate) * up) ----
//
// One block computes R output rows; its 256 threads split the K dimension in 16-byte chunks (each
// weight row is streamed once with vector loads, two chunks in flight per row and thread), then
// reduce through shuffles and shared memory. cuBLAS's batch-1 kernels leave a third of the HBM
// bandwidth unused at these shapes and need separate kernels for the bias, the residual add and
// SwiGLU; here each is an epilogue. Products accumulate in fp32; the epilogues round where the
// ATen expressions materialise (linear output, then the add / silu / product).
constexpr int kGemvThreads = 256;

struct GemvSeg {
  const void* w = nullptr;     // [rows, K] row-major
  const void* bias = nullptr;  // [rows] or null
  void* out = nullptr;         // [rows]
  int rows = 0;
};

template <typename T>
__device__ __forceinline__ float dot16(const uint4& wq, const uint4& xq) {
  constexpr int E = 16 / sizeof(T);
  const T* w = reinterpret_cast<const T*>(&wq);
  const T* x = reinterpret_cast<const T*>(&xq);
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < E; ++i) s += to_f(w[i]) * to_f(x[i]);
  return s;
}

enum GemvMode { kPlain = 0, kResidual = 1, kGateUp = 2 };

/// x, or RMSNorm(x) when `nw` (the norm weight) is given: each element rounded as
/// rms_norm_kernel rounds it, from r = rsqrt(mean(x^2) + eps) computed by the whole block.
template <typename T>
__device__ __forceinline__ uint4 norm16(const uint4& xq, const uint4* nwq, int c, float r) {
  constexpr int E = 16 / sizeof(T);
  if (nwq == nullptr) return xq;
  const uint4 wq = __ldg(nwq + c);
  uint4 out;
  const T* xv = reinterpret_cast<const T*>(&xq);
  const T* wv = reinterpret_cast<const T*>(&wq);
  T* o = reinterpret_cast<T*>(&out);
#pragma unroll
  for (int i = 0; i < E; ++i) o[i] = from_f<T>(to_f(wv[i]) * round_to<T>(to_f(xv[i]) * r));
  return out;
}

template <typename T, int R, int MODE>
__global__ void __launch_bounds__(kGemvThreads)
gemv_kernel(GemvSeg s0, GemvSeg s1, GemvSeg s2, const T* __restrict__ x,
            const T* __restrict__ resid, const T* __restrict__ norm_w, float eps, int K) {
  constexpr int NW = MODE == kGateUp ? 2 * R : R;  // weight rows read by this block
  constexpr int E = 16 / sizeof(T);
  int row = blockIdx.x * R;
  GemvSeg seg = s0;
  if (MODE == kPlain && row >= s0.rows) {
    row -= s0.rows;
    seg = s1;
    if (row >= s1.rows) {
      row -= s1.rows;
      seg = s2;
    }
  }
  const uint4* wr[NW];
#pragma unroll
  for (int i = 0; i < R; ++i)
    wr[i] = reinterpret_cast<const uint4*>(static_cast<const T*>(seg.w) + static_cast<size_t>(row + i) * K);
  if (MODE == kGateUp) {
#pragma unroll
    for (int i = 0; i < R; ++i)
      wr[(R + i) % NW] = reinterpret_cast<const uint4*>(static_cast<const T*>(s1.w) +
                                                        static_cast<size_t>(row + i) * K);
  }
  const uint4* xq = reinterpret_cast<const uint4*>(x);
  const uint4* nwq = reinterpret_cast<const uint4*>(norm_w);
  float r = 1.f;
  if (norm_w != nullptr) {  // the input's RMSNorm, computed by every block (x is in L2)
    __shared__ float red_ss[32];
    float ss = 0.f;
    for (int i = threadIdx.x; i < K; i += kGemvThreads) {
      const float t = to_f(x[i]);
      ss += t * t;
    }
    ss = block_reduce<false>(ss, red_ss);
    r = rsqrtf(ss / static_cast<float>(K) + eps);
  }
  float acc[NW];
#pragma unroll
  for (int i = 0; i < NW; ++i) acc[i] = 0.f;
  const int chunks = K / E;
  int c = threadIdx.x;
  for (; c + kGemvThreads < chunks; c += 2 * kGemvThreads) {
    uint4 wa[NW], wb[NW];
#pragma unroll
    for (int i = 0; i < NW; ++i) {
      wa[i] = __ldg(wr[i] + c);
      wb[i] = __ldg(wr[i] + c + kGemvThreads);
    }
    const uint4 xa = norm16<T>(__ldg(xq + c), nwq, c, r);
    const uint4 xb = norm16<T>(__ldg(xq + c + kGemvThreads), nwq, c + kGemvThreads, r);
#pragma unroll
    for (int i = 0; i < NW; ++i) acc[i] += dot16<T>(wa[i], xa) + dot16<T>(wb[i], xb);
  }
  if (c < chunks) {
    const uint4 xa = norm16<T>(__ldg(xq + c), nwq, c, r);
#pragma unroll
    for (int i = 0; i < NW; ++i) acc[i] += dot16<T>(__ldg(wr[i] + c), xa);
  }
  __shared__ float red[kGemvThreads / 32][NW];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int i = 0; i < NW; ++i) {
    const float v = warp_sum(acc[i]);
    if (lane == 0) red[warp][i] = v;
  }
  __syncthreads();
  if (threadIdx.x < R) {
    const int i = threadIdx.x;
    float a = 0.f;
#pragma unroll
    for (int w = 0; w < kGemvThreads / 32; ++w) a += red[w][i];
    T* out = static_cast<T*>(seg.out);
    if (MODE == kPlain) {
      if (seg.bias) a += to_f(static_cast<const T*>(seg.bias)[row + i]);
      out[row + i] = from_f<T>(a);
    } else if (MODE == kResidual) {
      out[row + i] = from_f<T>(to_f(resid[row + i]) + round_to<T>(a));
    } else {
      float u = 0.f;
#pragma unroll
      for (int w = 0; w < kGemvThreads / 32; ++w) u += red[w][(R + i) % NW];
      const float g = round_to<T>(a);
      const float s = round_to<T>(g / (1.f + __expf(-g)));
      out[row + i] = from_f<T>(s * round_to<T>(u));
    }
  }
}

// ---- RoPE of this step's q and k, and k, v, position written into the cache slot (batch 1) ----
template <typename T>
__global__ void rope_write_kernel(const T* __restrict__ qkv, const T* __restrict__ cs,
                                  const T* __restrict__ sn, const long long* __restrict__ slot,
                                  const long long* __restrict__ qpos, T* __restrict__ q_out,
                                  T* __restrict__ ks, T* __restrict__ vs, long long* __restrict__ ps,
                                  int hq, int hkv, int dim, long long ksh, long long vsh,
                                  long long psh, long long ksb, long long vsb, long long psb) {
  // Row b = blockIdx.y of a batch: its q/k/v, cos/sin and position, its cache rows.
  const int n = (hq + 2 * hkv) * dim;
  const long long b = blockIdx.y;
  qkv += b * n;
  cs += b * dim;
  sn += b * dim;
  q_out += b * static_cast<long long>(hq) * dim;
  ks += b * ksb;
  vs += b * vsb;
  ps += b * psb;
  qpos += b;
  const long long sl = slot[0];
  const int half = dim / 2;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const int h = i / dim, d = i % dim;
    if (h >= hq + hkv) {  // value: copied into the slot
      const int hv = h - hq - hkv;
      vs[hv * vsh + sl * dim + d] = qkv[i];
      if (d == 0) ps[hv * psh + sl] = qpos[0];
      continue;
    }
    const T* row = qkv + static_cast<long long>(h) * dim;
    const float xv = to_f(row[d]);
    const float rot = d < half ? -to_f(row[d + half]) : to_f(row[d - half]);
    const T y = from_f<T>(round_to<T>(xv * to_f(cs[d])) + round_to<T>(rot * to_f(sn[d])));
    if (h < hq) q_out[i] = y;
    else ks[(h - hq) * ksh + sl * dim + d] = y;
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
  // Rows per warp batch (attn_batch passes of 32 / TPR rows); batches per warp chosen so that
  // the grid has about two blocks per SM (more splits at short contexts, longer warps at long
  // ones).
  const int group = heads / hkv;
  const int gmax = group <= 1 ? 1 : group <= 2 ? 2 : group <= 4 ? 4 : kMaxGroup;
  const int pass_batch = gmax >= 8 || q.element_size() == 4 ? 4 : 8;
  const int rows_per_batch = pass_batch * (32 / (dim / 8));
  const long long pairs = static_cast<long long>(b) * hkv;
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const long long row_batches = (slots + rows_per_batch - 1) / rows_per_batch;
  const int batches = static_cast<int>(std::clamp<long long>(
      (row_batches * pairs + 2LL * sms * kAttnWarps - 1) / (2LL * sms * kAttnWarps), 1, 64));
  const int splits = std::max(1, static_cast<int>((row_batches + static_cast<long long>(batches) * kAttnWarps - 1) /
                                                  (static_cast<long long>(batches) * kAttnWarps)));
  const auto fopt = q.options().dtype(at::kFloat);
  at::Tensor pm = at::empty({b * heads * splits}, fopt), pl = at::empty({b * heads * splits}, fopt);
  at::Tensor pacc = at::empty({static_cast<std::int64_t>(b) * heads * splits * dim}, fopt);
  const c10::cuda::CUDAGuard guard(q.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  dispatch(q.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    if (slots > 0) {
      auto launch_g = [&](auto tpr, auto gmax) {
        constexpr int kTpr = decltype(tpr)::value;
        constexpr int kG = decltype(gmax)::value;
        decode_attn_partial<T, kTpr, kG><<<dim3(splits, b * hkv), kAttnWarps * 32, 0, stream>>>(
            cptr<T>(q), cptr<T>(k), cptr<T>(v), cptr<long long>(kpos), cptr<long long>(qpos),
            ptr<float>(pm), ptr<float>(pl), ptr<float>(pacc), hkv, heads / hkv, slots,
            k.stride(0), k.stride(1), v.stride(0), v.stride(1), kpos.stride(0), kpos.stride(1),
            window, static_cast<float>(scale), splits, batches);
      };
      auto launch = [&](auto tpr) {  // gmax above: the same choice
        if (gmax == 1) launch_g(tpr, std::integral_constant<int, 1>{});
        else if (gmax == 2) launch_g(tpr, std::integral_constant<int, 2>{});
        else if (gmax == 4) launch_g(tpr, std::integral_constant<int, 4>{});
        else launch_g(tpr, std::integral_constant<int, kMaxGroup>{});
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

namespace {

bool aligned16(const at::Tensor& t) {
  return reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 16 == 0;
}

template <int R, int MODE>
void launch_gemv(c10::ScalarType st, const GemvSeg& s0, const GemvSeg& s1, const GemvSeg& s2,
                 int total_rows, const at::Tensor& x, const at::Tensor* resid,
                 const at::Tensor& norm_w, double eps, int k) {
  TORCH_CHECK(!norm_w.defined() || (norm_w.numel() == k && norm_w.is_contiguous() &&
                                    norm_w.scalar_type() == st && aligned16(norm_w)),
              "kvlab gemv: the norm weight must be a contiguous, aligned [", k, "] tensor");
  auto stream = at::cuda::getCurrentCUDAStream();
  dispatch(st, [&](auto tag) {
    using T = decltype(tag);
    gemv_kernel<T, R, MODE><<<static_cast<unsigned>(total_rows / R), kGemvThreads, 0, stream>>>(
        s0, s1, s2, cptr<T>(x), resid ? cptr<T>(*resid) : nullptr,
        norm_w.defined() ? cptr<T>(norm_w) : nullptr, static_cast<float>(eps), k);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

GemvSeg seg_of(const at::Tensor& w, const at::Tensor* bias, at::Tensor& out, std::int64_t offset) {
  GemvSeg s;
  s.w = w.data_ptr();
  s.bias = bias && bias->defined() ? bias->data_ptr() : nullptr;
  s.out = static_cast<char*>(out.data_ptr()) + offset * out.element_size();
  s.rows = static_cast<int>(w.size(0));
  return s;
}

}  // namespace

bool gemv_weight_supported(const at::Tensor& w, c10::ScalarType t, int rows_multiple) {
  if (!w.is_cuda() || w.scalar_type() != t || w.dim() != 2 || !w.is_contiguous()) return false;
  if (t != at::kFloat && t != at::kBFloat16 && t != at::kHalf) return false;
  const std::int64_t e = 16 / w.element_size();
  return w.size(1) % e == 0 && w.size(0) % rows_multiple == 0 && aligned16(w);
}

namespace {
void check_x(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.is_cuda() && x.is_contiguous() && x.numel() == w.size(1) &&
                  x.scalar_type() == w.scalar_type() && aligned16(x),
              "kvlab gemv: x must be a contiguous, aligned CUDA vector of ", w.size(1),
              " elements in the weight's dtype");
}
}  // namespace

at::Tensor gemv(const at::Tensor& x, const std::vector<at::Tensor>& ws,
                const std::vector<at::Tensor>& biases, const at::Tensor& norm_w, double eps) {
  TORCH_CHECK(!ws.empty() && ws.size() <= 3 && biases.size() == ws.size(),
              "kvlab gemv: one to three weights, one bias slot each");
  std::int64_t total = 0;
  for (const auto& w : ws) {
    check_x(x, w);
    total += w.size(0);
  }
  at::Tensor out = at::empty({total}, x.options());
  const c10::cuda::CUDAGuard guard(x.device());
  GemvSeg seg[3];
  std::int64_t off = 0;
  for (std::size_t i = 0; i < ws.size(); ++i) {
    seg[i] = seg_of(ws[i], &biases[i], out, off);
    off += ws[i].size(0);
  }
  launch_gemv<4, kPlain>(x.scalar_type(), seg[0], seg[1], seg[2], static_cast<int>(total), x, nullptr,
                         norm_w, eps, static_cast<int>(x.numel()));
  return out;
}

at::Tensor gemv_residual(const at::Tensor& x, const at::Tensor& w, const at::Tensor& resid) {
  TORCH_CHECK(resid.is_contiguous() && resid.numel() == w.size(0) && resid.scalar_type() == x.scalar_type(),
              "kvlab gemv_residual: the residual must be a contiguous [", w.size(0), "] tensor");
  check_x(x, w);
  at::Tensor out = at::empty_like(resid);
  const c10::cuda::CUDAGuard guard(x.device());
  const GemvSeg s = seg_of(w, nullptr, out, 0);
  launch_gemv<4, kResidual>(x.scalar_type(), s, GemvSeg{}, GemvSeg{}, s.rows, x, &resid,
                            at::Tensor(), 0.0, static_cast<int>(x.numel()));
  return out;
}

at::Tensor gemv_gate_up(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up,
                        const at::Tensor& norm_w, double eps) {
  TORCH_CHECK(gate.sizes() == up.sizes(), "kvlab gemv_gate_up: gate and up weights differ in shape");
  check_x(x, gate);
  at::Tensor out = at::empty({gate.size(0)}, x.options());
  const c10::cuda::CUDAGuard guard(x.device());
  GemvSeg g = seg_of(gate, nullptr, out, 0), u = seg_of(up, nullptr, out, 0);
  launch_gemv<2, kGateUp>(x.scalar_type(), g, u, GemvSeg{}, g.rows, x, nullptr, norm_w, eps,
                          static_cast<int>(x.numel()));
  return out;
}

at::Tensor rope_write(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin,
                      const at::Tensor& slot, const at::Tensor& qpos, std::int64_t hq,
                      std::int64_t hkv, std::int64_t dim, const at::Tensor& ks,
                      const at::Tensor& vs, const at::Tensor& ps) {
  const std::int64_t b = ks.size(0);
  TORCH_CHECK(qkv.is_contiguous() && qkv.numel() == b * (hq + 2 * hkv) * dim &&
                  cos.numel() == b * dim && sin.numel() == b * dim && slot.numel() == 1 &&
                  qpos.numel() == b,
              "kvlab rope_write: ", b, " rows of q/k/v of ", hq, "+2x", hkv, " heads x ", dim,
              " expected");
  TORCH_CHECK(ks.stride(3) == 1 && ks.stride(2) == dim && vs.size(0) == b && vs.stride(3) == 1 &&
                  vs.stride(2) == dim && ps.size(0) == b && ps.stride(2) == 1 &&
                  ks.scalar_type() == qkv.scalar_type() && ps.scalar_type() == at::kLong,
              "kvlab rope_write: the cache storage must be [B, Hkv, L, D] with contiguous rows");
  at::Tensor q = at::empty({b, hq, 1, dim}, qkv.options());
  const at::Tensor cs = cos.contiguous(), sn = sin.contiguous();
  const at::Tensor sl = slot.to(at::kLong).contiguous(), qp = qpos.to(at::kLong).contiguous();
  const c10::cuda::CUDAGuard guard(qkv.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const int n = static_cast<int>((hq + 2 * hkv) * dim);
  dispatch(qkv.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    rope_write_kernel<T><<<dim3((n + 255) / 256, static_cast<unsigned>(b)), 256, 0, stream>>>(
        cptr<T>(qkv), cptr<T>(cs), cptr<T>(sn), cptr<long long>(sl), cptr<long long>(qp), ptr<T>(q),
        ptr<T>(ks), ptr<T>(vs), ptr<long long>(ps), static_cast<int>(hq), static_cast<int>(hkv),
        static_cast<int>(dim), ks.stride(1), vs.stride(1), ps.stride(1), ks.stride(0),
        vs.stride(0), ps.stride(0));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return q;
}

}  // namespace kvlab::llm::cuda
