#include "kvlab/core/runtime.hpp"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <hdf5.h>
#include <link.h>
#include <sched.h>
#include <sys/resource.h>
#include <torch/version.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "kvlab/core/error.hpp"
#include "kvlab/core/version.hpp"

#ifdef KVLAB_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime_api.h>
#endif

namespace kvlab::core {

BuildInfo build_info() {
  BuildInfo b;
  b.kvlab_version = KVLAB_VERSION;
  b.git_sha = KVLAB_GIT_SHA;
  b.torch_version = TORCH_VERSION;
  unsigned maj = 0, min = 0, rel = 0;
  H5get_libversion(&maj, &min, &rel);
  b.hdf5_version = fmt::format("{}.{}.{}", maj, min, rel);
#ifdef KVLAB_WITH_CUDA
  b.cuda_version = fmt::format("{}.{}", CUDART_VERSION / 1000, (CUDART_VERSION % 1000) / 10);
#else
  b.cuda_version = "none";
#endif
  return b;
}

int available_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return 1;
}

void set_threads(int n) {
  KVLAB_THROW_IF(n < 1, UsageError, "--threads {}: must be at least 1", n);
  at::set_num_threads(n);
}

int get_threads() { return at::get_num_threads(); }

std::string DeviceSpec::str() const { return cuda ? fmt::format("cuda:{}", index) : "cpu"; }

DeviceSpec parse_device(const std::string& s) {
  DeviceSpec d;
  if (s == "cpu") return d;
  if (s == "cuda") {
    d.cuda = true;
    return d;
  }
  if (s.rfind("cuda:", 0) == 0) {
    const std::string n = s.substr(5);
    const bool digits = !n.empty() && n.size() < 4 &&
                        std::all_of(n.begin(), n.end(), [](char c) { return c >= '0' && c <= '9'; });
    KVLAB_THROW_IF(!digits, UsageError, "--device {}: expected cpu, cuda or cuda:N", s);
    d.cuda = true;
    d.index = std::stoi(n);
    return d;
  }
  KVLAB_THROW(UsageError, "--device {}: expected cpu, cuda or cuda:N", s);
}

bool cuda_available() { return at::hasCUDA(); }

int cuda_device_count() {
#ifdef KVLAB_WITH_CUDA
  return at::hasCUDA() ? static_cast<int>(c10::cuda::device_count()) : 0;
#else
  return 0;
#endif
}

void check_device(const DeviceSpec& d) {
  if (!d.cuda) return;
#ifndef KVLAB_WITH_CUDA
  KVLAB_THROW(UsageError,
              "--device {}: this kvlab was built against a CPU-only LibTorch ({}); rebuild against "
              "a CUDA LibTorch (see README, 'On a GPU node') or use --device cpu",
              d.str(), TORCH_VERSION);
#else
  const int n = cuda_device_count();
  KVLAB_THROW_IF(n == 0, UsageError, "--device {}: no CUDA device is visible; use --device cpu",
                 d.str());
  KVLAB_THROW_IF(d.index >= n, UsageError, "--device {}: only {} CUDA device(s) visible (0..{})",
                 d.str(), n, n - 1);
#endif
}

void set_seed(std::uint64_t seed) {
  at::manual_seed(seed);  // seeds CPU and, when present, every CUDA generator
}

std::uint64_t peak_rss_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<std::uint64_t>(ru.ru_maxrss) * 1024;  // Linux reports KiB
}

std::uint64_t peak_cuda_bytes() {
#ifdef KVLAB_WITH_CUDA
  if (!at::hasCUDA()) return 0;
  std::uint64_t peak = 0;
  const int n = cuda_device_count();
  for (int i = 0; i < n; ++i) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(i);
    peak += static_cast<std::uint64_t>(
        stats.allocated_bytes[static_cast<std::size_t>(c10::CachingAllocator::StatType::AGGREGATE)]
            .peak);
  }
  return peak;
#else
  return 0;
#endif
}

std::string human_bytes(std::uint64_t b) {
  const double v = static_cast<double>(b);
  if (v >= 1e9) return fmt::format("{:.2f} GB", v / 1e9);
  if (v >= 1e6) return fmt::format("{:.0f} MB", v / 1e6);
  if (v >= 1e3) return fmt::format("{:.0f} KB", v / 1e3);
  return fmt::format("{} B", b);
}

std::string human_seconds(double s) {
  if (s < 60) return fmt::format("{:.1f} s", s);
  const auto t = static_cast<long>(s + 0.5);
  if (t < 3600) return fmt::format("{} min {:02d} s", t / 60, t % 60);
  return fmt::format("{} h {:02d} min", t / 3600, (t % 3600) / 60);
}

BlasInfo blas_info() {
  BlasInfo info;
  std::set<std::string> libs;
  auto cb = [](dl_phdr_info* i, size_t, void* data) -> int {
    const std::string name = i->dlpi_name ? i->dlpi_name : "";
    const std::string base = std::filesystem::path(name).filename().string();
    if (base.find("blas") != std::string::npos || base.find("mkl") != std::string::npos ||
        base.find("lapack") != std::string::npos) {
      std::error_code ec;
      auto real = std::filesystem::canonical(name, ec);
      static_cast<std::set<std::string>*>(data)->insert(ec ? name : real.string());
    }
    return 0;
  };
  dl_iterate_phdr(cb, &libs);
  info.libraries.assign(libs.begin(), libs.end());
  if (void* sym = dlsym(RTLD_DEFAULT, "sgemm_")) {
    Dl_info di{};
    if (dladdr(sym, &di) && di.dli_fname) {
      std::error_code ec;
      auto real = std::filesystem::canonical(di.dli_fname, ec);
      info.sgemm_library = ec ? di.dli_fname : real.string();
    }
  }
  using cfg_fn = char* (*)();
  if (auto f = reinterpret_cast<cfg_fn>(dlsym(RTLD_DEFAULT, "openblas_get_config"))) {
    if (const char* c = f()) info.openblas_config = c;
  }
  return info;
}

bool BlasInfo::is_reference() const {
  if (!sgemm_library.empty())  // Debian's reference BLAS lives in .../blas/libblas.so.3
    return sgemm_library.find("/blas/libblas") != std::string::npos;
  if (!openblas_config.empty()) return false;
  for (const auto& l : libraries)
    if (l.find("openblas") != std::string::npos || l.find("mkl") != std::string::npos ||
        l.find("blis") != std::string::npos || l.find("atlas") != std::string::npos)
      return false;
  for (const auto& l : libraries)
    if (l.find("blas") != std::string::npos) return true;
  return false;
}

std::string BlasInfo::summary() const {
  std::string blas_lib = sgemm_library;
  if (blas_lib.empty())
    for (const auto& l : libraries)
      if (l.find("lapack") == std::string::npos) blas_lib = l;
  if (is_reference()) return fmt::format("reference BLAS, slow ({})", blas_lib);
  if (!openblas_config.empty() && blas_lib.find("openblas") != std::string::npos)
    return fmt::format("{} ({})", openblas_config, blas_lib);
  if (blas_lib.empty() || blas_lib.find("libtorch") != std::string::npos)
    return fmt::format("BLAS linked into LibTorch (MKL in PyPI builds) ({})",
                       blas_lib.empty() ? "static" : blas_lib);
  return blas_lib;
}

}  // namespace kvlab::core
