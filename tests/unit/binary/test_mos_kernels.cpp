// The fused packed-layer kernels (libbinary/src/mos_kernels_cpu.cpp, src/cuda/mos_kernels.cu)
// against the reference forward with unpacked signs (mos_forward): E = 1 and E = 4, with and
// without bias, widths that are not multiples of 8/32/64/128 (padding bits), 1 to 8 rows, fp32,
// bf16 and fp16, every CPU instruction set this machine has; forward's choice between the fused
// and the tile-unpack path. CUDA cases run where LibTorch has CUDA (a CUDA build), else skip.
#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include <vector>

#include "mos_test_util.hpp"
#include "../test_util.hpp"
#include "kvlab/binary/mos.hpp"

using namespace kvlab;

namespace {

using test::random_params;

at::Tensor half_round(const at::Tensor& t) {
  return t.defined() ? t.to(at::kHalf).to(at::kFloat) : t;
}

/// mos_forward in x's dtype with the layer's parameters as stored (fp16-rounded scales): the
/// expression whose roundings the fused kernels reproduce.
at::Tensor reference(const binary::MosParams& p, const binary::PackedMosLinear& l, const at::Tensor& x) {
  const at::Tensor signs = binary::unpack_signs(l.packed().cpu(), l.in_features(), at::kFloat);
  const auto d = x.device();
  auto on = [&](const at::Tensor& t) { return t.defined() ? half_round(t).to(d) : t; };
  return binary::mos_forward(x, signs.to(d), on(p.s_in), on(p.s_out), on(p.router), on(p.bias));
}

/// max |a - b| / max |b| in float32.
double rel_err(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor af = a.to(at::kCPU, at::kFloat), bf = b.to(at::kCPU, at::kFloat);
  const double scale = std::max(bf.abs().max().item<double>(), 1e-6);
  return (af - bf).abs().max().item<double>() / scale;
}

double tolerance(c10::ScalarType dt) { return dt == at::kFloat ? 2e-5 : 2e-2; }

std::vector<binary::MosCpuIsa> cpu_isas() {
  std::vector<binary::MosCpuIsa> v;
  for (auto isa : {binary::MosCpuIsa::Avx512, binary::MosCpuIsa::Avx2, binary::MosCpuIsa::Scalar})
    if (binary::mos_cpu_isa_supported(isa)) v.push_back(isa);
  return v;
}

/// Resets the process-wide ISA choice when a test case ends, pass or fail.
struct IsaReset {
  ~IsaReset() { binary::set_mos_cpu_isa(binary::MosCpuIsa::Auto); }
};

/// Runs the fused path of every combination on `dev` against the reference.
void check_fused_matches_reference(at::Device dev, const std::vector<c10::ScalarType>& dtypes,
                                   const std::vector<std::int64_t>& widths) {
  for (const auto dt : dtypes)
    for (std::int64_t e : {1, 4})
      for (bool bias : {false, true})
        for (std::int64_t in : widths) {
          const std::int64_t out = 19;  // odd: a partial block of rows on every path
          const binary::MosParams p = random_params(in, out, e, bias);
          const auto layer = binary::PackedMosLinear::pack(p, dev, dt);
          for (std::int64_t m : {std::int64_t{1}, std::int64_t{3}, binary::kMosFusedMaxRows, std::int64_t{13}}) {
            const std::string dtype = c10::toString(dt);
            CAPTURE(dtype);
            CAPTURE(e);
            CAPTURE(bias);
            CAPTURE(in);
            CAPTURE(m);
            const at::Tensor x = at::randn({m, in}).to(dev, dt);
            REQUIRE(layer->fused_supports(x));
            const at::Tensor got = layer->forward_fused(x);
            REQUIRE((got.device().type() == dev.type()));  // "cuda" names no index, got is on cuda:0
            REQUIRE((got.scalar_type() == dt));
            REQUIRE((got.sizes() == at::IntArrayRef({m, out})));
            const at::Tensor ref = reference(p, *layer, x);
            CHECK(rel_err(got, ref) <= tolerance(dt));
            // The tile path agrees too (the same reference, another summation order).
            CHECK(rel_err(layer->forward_unpacked(x), ref) <= tolerance(dt));
          }
        }
}

}  // namespace

TEST_CASE("fused CPU kernel equals the unpacked reference: every ISA, E 1/4, bias, odd widths") {
  at::manual_seed(11);
  IsaReset reset;
  const auto isas = cpu_isas();
  REQUIRE(!isas.empty());  // the scalar loop at least
  for (const auto isa : isas) {
    const std::string isa_name = binary::mos_cpu_isa_name(isa);
    CAPTURE(isa_name);
    binary::set_mos_cpu_isa(isa);
    CHECK((binary::mos_cpu_isa() == isa));
    // (fp16 below: LibTorch 1.13 has no fp16 matmul on the CPU for the reference)
    check_fused_matches_reference(at::kCPU, {at::kFloat, at::kBFloat16}, {37, 100, 200, 130, 256});
  }
}

TEST_CASE("fused CPU kernel in fp16 against the float32 reference") {
  at::manual_seed(16);
  IsaReset reset;
  for (const auto isa : cpu_isas()) {
    const std::string isa_name = binary::mos_cpu_isa_name(isa);
    CAPTURE(isa_name);
    binary::set_mos_cpu_isa(isa);
    for (std::int64_t e : {1, 4}) {
      const binary::MosParams p = random_params(/*in=*/200, /*out=*/23, e, /*bias=*/true);
      const auto layer = binary::PackedMosLinear::pack(p, at::kCPU, at::kHalf);
      const at::Tensor x = at::randn({3, 200});
      const at::Tensor got = layer->forward_fused(x.to(at::kHalf));
      CHECK((got.scalar_type() == at::kHalf));
      CHECK(rel_err(got, reference(p, *layer, x)) <= tolerance(at::kHalf));
    }
  }
}

TEST_CASE("fused CPU kernel: every ISA gives the same float32 result up to summation order") {
  at::manual_seed(12);
  IsaReset reset;
  const binary::MosParams p = random_params(/*in=*/333, /*out=*/41, /*e=*/4, /*bias=*/true);
  const auto layer = binary::PackedMosLinear::pack(p, at::kCPU, at::kFloat);
  const at::Tensor x = at::randn({5, 333});
  binary::set_mos_cpu_isa(binary::MosCpuIsa::Scalar);
  const at::Tensor ref = layer->forward_fused(x);
  for (const auto isa : cpu_isas()) {
    const std::string isa_name = binary::mos_cpu_isa_name(isa);
    CAPTURE(isa_name);
    binary::set_mos_cpu_isa(isa);
    CHECK(at::allclose(layer->forward_fused(x), ref, 1e-5, 1e-5));
  }
}

TEST_CASE("fused kernel ignores the padding bits of the last byte of a row") {
  at::manual_seed(13);
  IsaReset reset;
  const std::int64_t in = 45, out = 7;  // 6 bytes per row, 3 padding bits
  const binary::MosParams p = random_params(in, out, 1, false);
  const auto clean = binary::PackedMosLinear::pack(p, at::kCPU, at::kFloat);
  llm::LinearRecord r = clean->record();
  r.tensors["packed"] = r.tensors["packed"].clone();   // (a CPU layer's record shares its bits)
  r.tensors["packed"].select(1, 5).bitwise_or_(0xE0);  // bits 45..47 set: past the width
  REQUIRE(r.tensors["packed"][0][5].item<int>() >= 0xE0);
  for (const at::Device dev : {at::Device(at::kCPU), at::Device(at::kCUDA)}) {
    if (dev.is_cuda() && !at::hasCUDA()) continue;
    CAPTURE(dev.str());
    binary::PackedMosLinear dirty(r, dev, at::kFloat);
    const auto clean_dev = binary::PackedMosLinear::pack(p, dev, at::kFloat);
    for (std::int64_t m : {1, 8}) {
      const at::Tensor x = at::randn({m, in}).to(dev);
      if (dev.is_cpu()) {
        for (const auto isa : cpu_isas()) {
          binary::set_mos_cpu_isa(isa);
          CHECK(at::equal(dirty.forward_fused(x), clean_dev->forward_fused(x)));
        }
      } else {
        CHECK(at::equal(dirty.forward_fused(x), clean_dev->forward_fused(x)));
      }
      CHECK(rel_err(dirty.forward_fused(x), reference(p, *clean_dev, x)) <= tolerance(at::kFloat));
    }
  }
}

TEST_CASE("forward takes the fused kernel up to fused_max_rows rows, the tile path above") {
  at::manual_seed(14);
  const std::int64_t in = 72, out = 33;
  const binary::MosParams p = random_params(in, out, 4, true);
  auto layer = binary::PackedMosLinear::pack(p, at::kCPU, at::kBFloat16);
  CHECK(layer->fused_max_rows() == binary::kMosFusedMaxRowsCpu);
  // [B, T, in] with B * T = the limit: fused, shape kept.
  const std::int64_t lim = layer->fused_max_rows();
  const at::Tensor x6 = at::randn({1, lim, in}).to(at::kBFloat16);
  const at::Tensor y6 = layer->forward(x6);
  CHECK((y6.sizes() == at::IntArrayRef({1, lim, out})));
  CHECK(at::equal(y6, layer->forward_fused(x6)));
  // One row more: the tile path.
  const at::Tensor x9 = at::randn({1, lim + 1, in}).to(at::kBFloat16);
  CHECK(at::equal(layer->forward(x9), layer->forward_unpacked(x9)));
  // Raising the limit moves those rows to the fused kernel; 0 turns it off; -1 restores it.
  layer->set_fused_max_rows(lim + 1);
  CHECK(at::equal(layer->forward(x9), layer->forward_fused(x9)));
  layer->set_fused_max_rows(0);
  const at::Tensor x1 = at::randn({1, 1, in}).to(at::kBFloat16);
  CHECK(at::equal(layer->forward(x1), layer->forward_unpacked(x1)));
  layer->set_fused_max_rows(-1);
  CHECK(at::equal(layer->forward(x1), layer->forward_fused(x1)));
  if (at::hasCUDA())
    CHECK(binary::PackedMosLinear::pack(p, at::kCUDA, at::kBFloat16)->fused_max_rows() ==
          binary::kMosFusedMaxRows);
  // The fused and tile paths agree to bf16 rounding.
  CHECK(rel_err(layer->forward_fused(x9), layer->forward_unpacked(x9)) <= tolerance(at::kBFloat16));
}

TEST_CASE("fused kernel: a float32 input on a bf16 layer, and inputs it refuses") {
  at::manual_seed(15);
  const binary::MosParams p = random_params(/*in=*/64, /*out=*/8, /*e=*/1, /*bias=*/false);
  const auto layer = binary::PackedMosLinear::pack(p, at::kCPU, at::kBFloat16);
  // Parameters are cast to the activation dtype (bf16-rounded scales used in float32).
  const at::Tensor x = at::randn({1, 64});
  const at::Tensor got = layer->forward_fused(x);
  CHECK((got.scalar_type() == at::kFloat));
  CHECK(rel_err(got, layer->forward_unpacked(x)) <= 1e-5);
  // float64 has no fused kernel: forward falls back, forward_fused says so.
  const at::Tensor xd = at::randn({1, 64}, at::kDouble);
  CHECK_FALSE(layer->fused_supports(xd));
  CHECK((layer->forward(xd).scalar_type() == at::kDouble));
  const std::string msg = test::error_of([&] { layer->forward_fused(xd); }, 2);
  CHECK(msg.find("no fused kernel") != std::string::npos);
  CHECK(msg.find("Double") != std::string::npos);
}

TEST_CASE("fused CUDA kernel equals the unpacked reference (CUDA builds only)") {
  if (!at::hasCUDA()) {
    MESSAGE("skipped: LibTorch without CUDA");
    return;
  }
  at::manual_seed(21);
  // 130 and 37: the element-load path; 256 and 4096: the 128-bit path (in % 128 == 0).
  check_fused_matches_reference(at::kCUDA, {at::kFloat, at::kBFloat16, at::kHalf},
                                {37, 130, 256, 4096});
}

TEST_CASE("fused CUDA kernel: more than 8 rows, and agreement with the CPU kernel (CUDA builds only)") {
  if (!at::hasCUDA()) {
    MESSAGE("skipped: LibTorch without CUDA");
    return;
  }
  at::manual_seed(22);
  const binary::MosParams p = random_params(/*in=*/512, /*out=*/300, /*e=*/4, /*bias=*/true);
  const auto gpu = binary::PackedMosLinear::pack(p, at::kCUDA, at::kFloat);
  const auto cpu = binary::PackedMosLinear::pack(p, at::kCPU, at::kFloat);
  const at::Tensor x = at::randn({19, 512});  // three launches of up to 8 rows
  const at::Tensor yg = gpu->forward_fused(x.cuda());
  CHECK(rel_err(yg, cpu->forward_fused(x)) <= 2e-5);
  CHECK(rel_err(yg, reference(p, *gpu, x.cuda())) <= 2e-5);
  // Decode-shaped input [1, 1, in] in bf16 through forward (fused at one row).
  const auto gpu16 = binary::PackedMosLinear::pack(p, at::kCUDA, at::kBFloat16);
  const at::Tensor x1 = at::randn({1, 1, 512}).to(at::kCUDA, at::kBFloat16);
  CHECK(at::equal(gpu16->forward(x1), gpu16->forward_fused(x1)));
  CHECK(rel_err(gpu16->forward(x1), reference(p, *gpu16, x1)) <= tolerance(at::kBFloat16));
}
