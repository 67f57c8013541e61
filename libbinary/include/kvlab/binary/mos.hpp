// BinaryMoS linear layers (docs/binarize.md): y = ((x * s_in(x)) sign(W)^T) * s_out(x) (+ b) with
// token-adaptive scales s = softmax(x W_r^T) S mixing E scale experts (E = 1: OneBit-style fixed
// scales; method sign: plain sign with one scale per output channel). Three forms share one
// formula (mos_forward):
//   - MosParams: float tensors (latent weight, scales, router) for initialisation and training;
//   - PackedMosLinear: the llm::Linear of a binarized model: sign bits packed 8 per byte plus
//     scales/router/bias, forward from the packed bits: a fused binary GEMV for a few rows of x
//     (decode; CPU AVX-512/AVX2/scalar in mos_kernels_cpu.cpp, CUDA in cuda/mos_kernels.cu),
//     else unpacked per tile of output rows and multiplied with ATen (prefill);
//   - its LinearRecord (kind "binary-mos") in a model artifact's /linears group, scales fp16.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>

#include "kvlab/llm/linear_registry.hpp"
#include "kvlab/llm/model.hpp"

namespace kvlab::binary {

inline constexpr const char* kMosLinearKind = "binary-mos";

/// The float parameters of one BinaryMoS layer.
struct MosParams {
  at::Tensor weight;  ///< [out, in] latent weight; only its signs matter at inference
  at::Tensor s_in;    ///< [E, in]  input-channel scale experts
  at::Tensor s_out;   ///< [E, out] output-channel scale experts
  at::Tensor router;  ///< [E, in]  gate weight (no bias); undefined when E == 1
  at::Tensor bias;    ///< [out] or undefined
  std::int64_t experts() const { return s_in.size(0); }
};

/// BinaryMoS / OneBit initialisation from a dense weight (official do_train=True path): rank-1
/// SVD of |W| (float32), out = U[:,0] sqrt(S0), in = sqrt(S0) Vh[0,:], copied into every expert;
/// router [E, in] ~ U(-1/sqrt(in), 1/sqrt(in)) (nn.Linear's default Kaiming-uniform bound) drawn
/// from LibTorch's default generator; experts == 1: no router. Outputs are float32 on w's device.
MosParams init_mos(const at::Tensor& w, std::int64_t experts,
                   const std::optional<at::Tensor>& bias = std::nullopt);
/// Plain sign baseline: s_out = mean |W| per output row, s_in = 1, one expert, no router.
MosParams init_sign(const at::Tensor& w, const std::optional<at::Tensor>& bias = std::nullopt);

/// +1 where w >= 0, -1 elsewhere (sign(0) = +1: the packed form has no third value; the official
/// code's torch.sign gives 0 there), in w's dtype.
at::Tensor sign_pm1(const at::Tensor& w);

/// The official STEBinary as an expression: forward sign_pm1(w), gradient 1[-1 < w < 1] (the
/// gradient of clamp(w, -1, 1); at exactly |w| = 1 ATen's clamp passes the gradient, a measure-zero
/// difference).
at::Tensor ste_sign(const at::Tensor& w);

/// The reference forward with an explicit +-1 matrix `signs` [out, in] (any float dtype; all
/// parameters are cast to x's dtype; softmax of the router logits in float32 as the official
/// code). x: [..., in] -> [..., out].
at::Tensor mos_forward(const at::Tensor& x, const at::Tensor& signs, const at::Tensor& s_in,
                       const at::Tensor& s_out, const at::Tensor& router, const at::Tensor& bias);

/// Packs signs 8 per byte: out[r, k] bit j (LSB first) = (w[r, 8k + j] >= 0); [out, ceil(in/8)]
/// uint8 on w's device. Padding bits are 0.
at::Tensor pack_signs(const at::Tensor& w);
/// The inverse as +-1 of `dtype` [rows, in] on packed's device (a 256-entry lookup table).
at::Tensor unpack_signs(const at::Tensor& packed, std::int64_t in, c10::ScalarType dtype);

/// Instruction set of the fused CPU kernels. Auto (the default) takes the best one the CPU has
/// (AVX-512F, else AVX2, else the portable scalar loop); the others force one, for tests and
/// measurements.
enum class MosCpuIsa { Auto, Avx512, Avx2, Scalar };
/// UsageError when the CPU (or this build) lacks `isa`. Process-wide.
void set_mos_cpu_isa(MosCpuIsa isa);
bool mos_cpu_isa_supported(MosCpuIsa isa);
/// The ISA the CPU kernels use now (never Auto).
MosCpuIsa mos_cpu_isa();
const char* mos_cpu_isa_name(MosCpuIsa isa);

/// Rows of x (tokens) up to which PackedMosLinear::forward takes the fused kernel by default, on
/// CUDA and on the CPU; above, the tile-unpack ATen path. On the CPU the fused kernel's time grows
/// linearly with the rows (one masked add per 16 weights and row) while the unpack + bf16 GEMM
/// path's hardly does: at 4096 x 4096 (1 thread, AVX-512) fused 0.36 / 0.81 / 2.1 ms at 1 / 2 / 4
/// rows against 1.8 ms for the tile path (docs/binarize.md).
inline constexpr std::int64_t kMosFusedMaxRows = 8;
inline constexpr std::int64_t kMosFusedMaxRowsCpu = 2;
/// The CUDA kernel's limit on the number of experts (more: the ATen path).
inline constexpr std::int64_t kMosCudaMaxExperts = 64;

/// The packed inference layer.
class PackedMosLinear : public llm::Linear {
 public:
  /// From a record (fp16 scales); tensors moved to `dev`, scales/router/bias cast to `dtype`.
  PackedMosLinear(const llm::LinearRecord& r, at::Device dev, c10::ScalarType dtype);
  /// Packs float parameters (scales rounded to fp16 as stored, so a packed layer built here and
  /// one loaded from its record compute the same thing).
  static std::shared_ptr<PackedMosLinear> pack(const MosParams& p, at::Device dev,
                                               c10::ScalarType dtype);

  /// forward_fused when x has 1..fused_max_rows() rows (tokens) and fused_supports(x), else
  /// forward_unpacked. x: [..., in] -> [..., out].
  at::Tensor forward(const at::Tensor& x) const override;
  /// The fused kernel (binary GEMV over the packed bits, router and scales included): CPU, or
  /// CUDA in a CUDA build; fp32/bf16/fp16. No host synchronisation, host-to-device copy or
  /// CPU tensor on CUDA (CUDA-graph capture safe). UsageError where !fused_supports(x).
  at::Tensor forward_fused(const at::Tensor& x) const;
  /// Tile-unpack path: +-1 tiles of output rows unpacked, multiplied with ATen.
  at::Tensor forward_unpacked(const at::Tensor& x) const;
  /// Whether forward_fused handles x (device, dtype, build; any number of rows).
  bool fused_supports(const at::Tensor& x) const;
  /// Rows of x up to which forward takes the fused kernel (0: never; negative: the device's
  /// default, kMosFusedMaxRows on CUDA, kMosFusedMaxRowsCpu on the CPU).
  void set_fused_max_rows(std::int64_t rows) { fused_max_rows_ = rows; }
  std::int64_t fused_max_rows() const {
    if (fused_max_rows_ >= 0) return fused_max_rows_;
    return packed_.device().is_cpu() ? kMosFusedMaxRowsCpu : kMosFusedMaxRows;
  }
  std::int64_t in_features() const override { return in_; }
  std::int64_t out_features() const override { return out_; }
  std::string kind() const override { return kMosLinearKind; }
  /// diag(mean_e s_out) sign(W) diag(mean_e s_in): exact for E == 1 (and at initialisation, when
  /// all experts are equal); for trained E > 1 layers an input-independent approximation.
  at::Tensor dense_weight() const override;
  std::optional<at::Tensor> bias() const override;
  std::uint64_t bytes() const override;

  llm::LinearRecord record() const;
  std::int64_t experts() const { return s_in_.size(0); }
  /// Output rows unpacked at a time (0: about 4M weights per tile); a memory/speed trade-off that
  /// changes results only by float summation order.
  void set_tile_rows(std::int64_t rows) { tile_rows_ = rows; }
  const at::Tensor& packed() const { return packed_; }

 private:
  PackedMosLinear() = default;
  at::Tensor packed_, s_in_, s_out_, router_, bias_;
  /// CUDA only: the bits with rows padded to 16 bytes (the kernel's 128-bit loads; packed_
  /// itself where its rows already are), and the +-1 lookup table of the tile path, both made
  /// once here so that forward never copies from the host.
  at::Tensor bits16_, sign_table_;
  std::int64_t in_ = 0, out_ = 0, tile_rows_ = 0, fused_max_rows_ = -1;
};

/// Bytes a stored layer takes in a model artifact's datasets: packed bits, fp16 scales, fp16
/// router (E > 1), fp16 bias. bits per weight = 8 * bytes / (in * out).
std::uint64_t mos_stored_bytes(std::int64_t in, std::int64_t out, std::int64_t experts,
                               bool bias);

/// Registers kind "binary-mos" with libllm's linear registry (idempotent). Call once at start-up
/// before loading binarized models (the kvlab binary does; tests do).
void register_linear_kinds();

}  // namespace kvlab::binary
