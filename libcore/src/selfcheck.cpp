#include "kvlab/core/selfcheck.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>

#include "kvlab/core/error.hpp"

#ifdef KVLAB_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

namespace kvlab::core {

SelfcheckResult run_selfcheck(const SelfcheckOptions& opt, Progress& progress) {
  KVLAB_THROW_IF(opt.matmul_size < 16 || opt.matmul_size > 16384, UsageError,
                 "--size {}: expected 16..16384", opt.matmul_size);
  SelfcheckResult r;
  r.build = build_info();
  r.threads = get_threads();
  r.cores = available_cores();
  r.device = opt.device.str();
  const int64_t n = opt.matmul_size;
  at::Tensor a = at::randn({n, n});
  at::Tensor b = at::randn({n, n});
  at::Tensor c = at::matmul(a, b);  // warm-up; also makes the BLAS library load
  r.blas = blas_info();
  progress.begin("matmul", opt.repeats, "runs");
  for (int i = 0; i < opt.repeats; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    at::matmul_out(c, a, b);
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    r.gflops.push_back(2.0 * n * n * n / s / 1e9);
    progress.update(i + 1, {{"GFLOP/s", r.gflops.back()}});
  }
  r.best_gflops = *std::max_element(r.gflops.begin(), r.gflops.end());
  progress.end();
#ifdef KVLAB_WITH_CUDA
  if (opt.device.cuda) {
    const at::Device dev(at::kCUDA, static_cast<c10::DeviceIndex>(opt.device.index));
    r.cuda_name = at::cuda::getDeviceProperties(opt.device.index)->name;
    const int64_t m = 8192;
    auto o = at::TensorOptions().dtype(at::kBFloat16).device(dev);
    at::Tensor x = at::randn({m, m}, o), y = at::randn({m, m}, o);
    at::Tensor z = at::matmul(x, y);
    at::cuda::getCurrentCUDAStream(opt.device.index).synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    constexpr int reps = 20;
    for (int i = 0; i < reps; ++i) at::matmul_out(z, x, y);
    at::cuda::getCurrentCUDAStream(opt.device.index).synchronize();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    r.cuda_tflops = reps * 2.0 * m * m * m / s / 1e12;
  }
#endif
  return r;
}

void write_selfcheck_report(const std::filesystem::path& out, const SelfcheckResult& r,
                            const SelfcheckOptions& opt, const Provenance& prov) {
  ArtifactWriter w(out, "selfcheck-report", 1, 0, prov);
  w.params().set_attr("matmul_size", static_cast<std::int64_t>(opt.matmul_size));
  w.params().set_attr("repeats", static_cast<std::int64_t>(opt.repeats));
  w.params().set_attr("threads", static_cast<std::int64_t>(r.threads));
  w.root().set_attr("blas", r.blas.summary());
  w.root().set_attr("blas_libraries", r.blas.libraries);
  w.root().set_attr("torch_version", r.build.torch_version);
  w.root().set_attr("device", r.device);
  w.root().set_attr("cores", static_cast<std::int64_t>(r.cores));
  w.root().set_attr("best_gflops", r.best_gflops);
  if (!r.cuda_name.empty()) {
    w.root().set_attr("cuda_device", r.cuda_name);
    w.root().set_attr("cuda_bf16_tflops", r.cuda_tflops);
  }
  w.root().write_vec("gflops", r.gflops, {"run"});
  w.commit();
}

}  // namespace kvlab::core
