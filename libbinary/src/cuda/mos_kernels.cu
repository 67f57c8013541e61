// Fused CUDA forward of a packed BinaryMoS layer for a few rows of x (cuda/mos_kernels.hpp;
// docs/binarize.md, "Storage and inference").
//
// Decode reads each weight once, so the layer is bound by how fast its packed bits stream from
// HBM (1 bit per weight, 16x less than bf16) and by the instructions spent per weight. One warp
// owns kRowsPerWarp output rows; its lanes split the columns in 128-column chunks, one 128-bit
// load of packed bits per row and chunk (coalesced: 32 lanes read 512 consecutive bytes of a
// row). For each 8 columns a lane forms xs = round(x * s_in) in fp32 from x and s_in (read
// through L1: they are shared by every warp) and, for every row, adds only the columns whose bit
// is set: S = sum_{bit set} xs_j, one predicated add per weight; with T = sum_j xs_j the product
// (x * s_in) sign(W)^T is 2 S - T. A warp shuffle reduction, then one lane per (row, x row)
// applies s_out (mixed from the gates for E > 1), the bias and the roundings of mos_forward's
// ATen expression. For E > 1 a first kernel (one block per x row) computes the gates
// softmax(round(x W_r^T)) and the mixed s_in; s_out is mixed in the epilogue. Nothing is
// staged in shared memory, so any width fits, and nothing touches the host: the launches are
// CUDA-graph capture safe.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "mos_kernels.hpp"

namespace kvlab::binary::cuda {

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

/// x rounded to T and back: where mos_forward's ATen expression materialises a tensor.
template <typename T>
__device__ __forceinline__ float round_to(float x) { return to_f<T>(from_f<T>(x)); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/// Block-wide sum (blockDim.x a multiple of 32); every thread gets the result.
__device__ float block_sum(float v, float* smem32) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();  // smem32 may still be read by a previous reduction
  if (lane == 0) smem32[warp] = v;
  __syncthreads();
  v = lane < warps ? smem32[lane] : 0.f;
  return warp_sum(v);
}

/// 8 consecutive elements of T as float from a 16-byte aligned address.
template <typename T>
__device__ __forceinline__ void load8(const T* p, float* out) {
  if constexpr (sizeof(T) == 4) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(p));
    const float4 b = __ldg(reinterpret_cast<const float4*>(p) + 1);
    out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w;
    out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
  } else {
    const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
    const T* h = reinterpret_cast<const T*>(&u);
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = to_f<T>(h[i]);
  }
}

/// Columns col..col+7 of a row of `in` elements: vector load (kVec: in % 128 == 0, rows aligned)
/// or element loads with zero past the end.
template <typename T, bool kVec>
__device__ __forceinline__ void load8_at(const T* __restrict__ row, int col, int in, float* out) {
  if constexpr (kVec) {
    load8<T>(row + col, out);
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = col + i < in ? to_f<T>(row[col + i]) : 0.f;
  }
}

constexpr int kWarps = 4;        // warps per block
constexpr int kRowsPerWarp = 4;  // output rows per warp
constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;
constexpr int kMaxM = 8;         // x rows per launch (kRowsPerWarp * kMaxM <= 32 epilogue lanes)
constexpr int kRouterThreads = 256;
static_assert(kRowsPerWarp * kMaxM <= 32, "one epilogue lane per (row, x row)");

/// Gates g[m, e] = round(softmax(round(x_m W_r^T))_e) (float32 softmax as mos_forward) and the
/// mixed input scales si[m, :] = round(sum_e g[m, e] S_in[e, :]). One block per x row.
template <typename T>
__global__ void __launch_bounds__(kRouterThreads)
mos_router_kernel(const T* __restrict__ x, const T* __restrict__ router, const T* __restrict__ s_in,
                  int in, int experts, float* __restrict__ g, T* __restrict__ si) {
  __shared__ float red[32];
  __shared__ float logit[kMaxExperts];
  __shared__ float gate[kMaxExperts];
  const int m = blockIdx.x;
  const T* xr = x + static_cast<size_t>(m) * in;
  for (int e = 0; e < experts; ++e) {
    const T* wr = router + static_cast<size_t>(e) * in;
    float a = 0.f;
    for (int j = threadIdx.x; j < in; j += blockDim.x) a += to_f<T>(xr[j]) * to_f<T>(wr[j]);
    a = block_sum(a, red);
    if (threadIdx.x == 0) logit[e] = round_to<T>(a);
  }
  __syncthreads();
  if (threadIdx.x < experts) {
    float mx = -INFINITY;
    for (int e = 0; e < experts; ++e) mx = fmaxf(mx, logit[e]);
    float den = 0.f;
    for (int e = 0; e < experts; ++e) den += expf(logit[e] - mx);
    const float ge = round_to<T>(expf(logit[threadIdx.x] - mx) / den);
    gate[threadIdx.x] = ge;
    g[static_cast<size_t>(m) * experts + threadIdx.x] = ge;
  }
  __syncthreads();
  T* sr = si + static_cast<size_t>(m) * in;
  for (int j = threadIdx.x; j < in; j += blockDim.x) {
    float a = 0.f;
    for (int e = 0; e < experts; ++e) a += gate[e] * to_f<T>(s_in[static_cast<size_t>(e) * in + j]);
    sr[j] = from_f<T>(a);
  }
}

/// y[m, row] for M x rows and kRowsPerWarp rows per warp (see the file comment). si rows are
/// si_stride apart (0: one shared s_in row); g [M, experts] or null (E == 1: s_out row 0).
template <typename T, int M, bool kVec>
__global__ void __launch_bounds__(kThreads)
mos_gemv_kernel(const T* __restrict__ x, const T* __restrict__ si, long long si_stride,
                const uint4* __restrict__ bits, int row_words, int in, int out,
                const float* __restrict__ g, const T* __restrict__ s_out, int experts,
                const T* __restrict__ bias, T* __restrict__ y) {
  constexpr int R = kRowsPerWarp;
  const int lane = threadIdx.x & 31;
  const int row0 = (blockIdx.x * kWarps + (threadIdx.x >> 5)) * R;
  if (row0 >= out) return;  // whole warps only; no block-wide synchronisation below
  const uint4* wr[R];
#pragma unroll
  for (int r = 0; r < R; ++r)  // rows past the end re-read the last row; their results are dropped
    wr[r] = bits + static_cast<size_t>(min(row0 + r, out - 1)) * row_words;
  float acc[R][M], tot[M];
#pragma unroll
  for (int m = 0; m < M; ++m) {
    tot[m] = 0.f;
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r][m] = 0.f;
  }
  const int chunks = (in + 127) >> 7;  // 128 columns per 16 bytes of bits
  for (int c = lane; c < chunks; c += 32) {
    unsigned w[R][4];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const uint4 b = __ldg(wr[r] + c);
      w[r][0] = b.x; w[r][1] = b.y; w[r][2] = b.z; w[r][3] = b.w;
    }
#pragma unroll
    for (int h = 0; h < 16; ++h) {  // columns col..col+7: byte h & 3 of word h >> 2
      const int col = c * 128 + h * 8;
      if (!kVec && col >= in) break;
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float xv[8], sv[8];
        load8_at<T, kVec>(x + static_cast<size_t>(m) * in, col, in, xv);
        load8_at<T, kVec>(si + m * si_stride, col, in, sv);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const float xs = round_to<T>(xv[i] * sv[i]);  // 0 past the end
          tot[m] += xs;
#pragma unroll
          for (int r = 0; r < R; ++r)
            if ((w[r][h >> 2] >> ((h & 3) * 8 + i)) & 1u) acc[r][m] += xs;
        }
      }
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m) {
    tot[m] = warp_sum(tot[m]);
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r][m] = warp_sum(acc[r][m]);
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const int row = row0 + r;
      if (lane != r * M + m || row >= out) continue;
      float v = round_to<T>(2.f * acc[r][m] - tot[m]);  // the GEMM output in T
      float so;
      if (g != nullptr) {
        float a = 0.f;
        for (int e = 0; e < experts; ++e)
          a += g[m * experts + e] * to_f<T>(s_out[static_cast<size_t>(e) * out + row]);
        so = round_to<T>(a);
      } else {
        so = to_f<T>(s_out[row]);
      }
      v = round_to<T>(v * so);
      if (bias != nullptr) v = round_to<T>(v + to_f<T>(bias[row]));
      y[static_cast<size_t>(m) * out + row] = from_f<T>(v);
    }
  }
}

template <typename F>
void dispatch(c10::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: f(float{}); break;
    case at::kBFloat16: f(__nv_bfloat16{}); break;
    case at::kHalf: f(__half{}); break;
    default: TORCH_CHECK(false, "kvlab binary CUDA kernels: unsupported dtype ", t);
  }
}

template <typename T>
const T* cptr(const at::Tensor& t) { return t.defined() ? reinterpret_cast<const T*>(t.data_ptr()) : nullptr; }

bool aligned16(const at::Tensor& t) {
  return reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 16 == 0;
}

}  // namespace

at::Tensor mos_gemv(const at::Tensor& x, const at::Tensor& bits, std::int64_t in,
                    const at::Tensor& s_in, const at::Tensor& s_out, const at::Tensor& router,
                    const at::Tensor& bias) {
  const auto dt = x.scalar_type();
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.size(1) == in && x.is_contiguous(),
              "kvlab mos_gemv: x must be a contiguous CUDA [M, ", in, "] tensor");
  TORCH_CHECK(bits.device() == x.device() && bits.scalar_type() == at::kByte && bits.dim() == 2 &&
                  bits.is_contiguous() && bits.size(1) % 16 == 0 && bits.size(1) * 8 >= in &&
                  aligned16(bits),
              "kvlab mos_gemv: bits must be contiguous uint8 [out, k] with k a multiple of 16, "
              "k >= ceil(in / 8), on x's device");
  const std::int64_t m = x.size(0), out = bits.size(0), e = s_in.size(0);
  TORCH_CHECK(e >= 1 && e <= kMaxExperts, "kvlab mos_gemv: 1 to ", kMaxExperts, " experts, got ", e);
  const auto ok = [&](const at::Tensor& t, std::int64_t rows, std::int64_t cols) {
    return t.device() == x.device() && t.scalar_type() == dt && t.is_contiguous() &&
           t.numel() == rows * cols;
  };
  TORCH_CHECK(ok(s_in, e, in) && ok(s_out, e, out) && (e == 1 || (router.defined() && ok(router, e, in))) &&
                  (!bias.defined() || ok(bias, 1, out)),
              "kvlab mos_gemv: s_in [E, in], s_out [E, out], router [E, in] (E > 1) and bias [out] "
              "must be contiguous, in x's dtype, on x's device");
  TORCH_CHECK(in < (std::int64_t{1} << 30) && out < (std::int64_t{1} << 30),
              "kvlab mos_gemv: layer too large for 32-bit column/row indices");
  at::Tensor y = at::empty({m, out}, x.options());
  if (m == 0 || out == 0) return y;
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor g, si = s_in;
  long long si_stride = 0;
  if (e > 1) {
    g = at::empty({m, e}, x.options().dtype(at::kFloat));
    si = at::empty({m, in}, x.options());
    si_stride = in;
    dispatch(dt, [&](auto tag) {
      using T = decltype(tag);
      mos_router_kernel<T><<<static_cast<unsigned>(m), kRouterThreads, 0, stream>>>(
          cptr<T>(x), cptr<T>(router), cptr<T>(s_in), static_cast<int>(in), static_cast<int>(e),
          reinterpret_cast<float*>(g.data_ptr()), reinterpret_cast<T*>(si.data_ptr()));
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const bool vec = in % 128 == 0 && aligned16(x) && aligned16(si);
  const unsigned blocks = static_cast<unsigned>((out + kRowsPerBlock - 1) / kRowsPerBlock);
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    for (std::int64_t m0 = 0; m0 < m; m0 += kMaxM) {
      const int mc = static_cast<int>(std::min<std::int64_t>(kMaxM, m - m0));
      const T* xp = cptr<T>(x) + m0 * in;
      const T* sp = cptr<T>(si) + m0 * si_stride;
      const float* gp = e > 1 ? reinterpret_cast<const float*>(g.data_ptr()) + m0 * e : nullptr;
      T* yp = reinterpret_cast<T*>(y.data_ptr()) + m0 * out;
      auto launch = [&](auto mm, auto vv) {
        constexpr int kM = decltype(mm)::value;
        constexpr bool kV = decltype(vv)::value;
        mos_gemv_kernel<T, kM, kV><<<blocks, kThreads, 0, stream>>>(
            xp, sp, si_stride, reinterpret_cast<const uint4*>(bits.data_ptr()),
            static_cast<int>(bits.size(1) / 16), static_cast<int>(in), static_cast<int>(out), gp,
            cptr<T>(s_out), static_cast<int>(e), cptr<T>(bias), yp);
      };
      auto by_m = [&](auto vv) {
        switch (mc) {
          case 1: launch(std::integral_constant<int, 1>{}, vv); break;
          case 2: launch(std::integral_constant<int, 2>{}, vv); break;
          case 3: launch(std::integral_constant<int, 3>{}, vv); break;
          case 4: launch(std::integral_constant<int, 4>{}, vv); break;
          case 5: launch(std::integral_constant<int, 5>{}, vv); break;
          case 6: launch(std::integral_constant<int, 6>{}, vv); break;
          case 7: launch(std::integral_constant<int, 7>{}, vv); break;
          default: launch(std::integral_constant<int, 8>{}, vv); break;
        }
      };
      if (vec) by_m(std::true_type{});
      else by_m(std::false_type{});
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return y;
}

}  // namespace kvlab::binary::cuda
