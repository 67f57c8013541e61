// Process-level runtime: build information, threads, device, seed, resource usage, BLAS.
// The front end resolves the global options (--threads, --device, --seed) and applies them here;
// libraries receive the resolved values, never read the environment.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvlab::core {

struct BuildInfo {
  std::string kvlab_version;
  std::string git_sha;
  std::string torch_version;
  std::string hdf5_version;
  std::string cuda_version;  // "none" for a CPU LibTorch
};
BuildInfo build_info();

/// Cores this process may use (sched_getaffinity), at least 1.
int available_cores();
/// Sets LibTorch's intra-op (and OpenMP/BLAS) threads. n >= 1.
void set_threads(int n);
int get_threads();

/// A parsed --device value.
struct DeviceSpec {
  bool cuda = false;
  int index = 0;
  std::string str() const;
};
/// Parses "cpu", "cuda", "cuda:N"; UsageError naming --device otherwise.
DeviceSpec parse_device(const std::string& s);
/// Throws UsageError when CUDA is asked for but this build or machine has none.
void check_device(const DeviceSpec& d);
bool cuda_available();
int cuda_device_count();

/// Seeds LibTorch's CPU (and CUDA) generators.
void set_seed(std::uint64_t seed);

/// Peak resident set size of this process in bytes (getrusage).
std::uint64_t peak_rss_bytes();
/// Peak CUDA memory allocated through LibTorch's caching allocator on every device, in bytes;
/// 0 when CUDA is unused or unavailable.
std::uint64_t peak_cuda_bytes();

/// "1.2 GB", "850 MB", "12 KB".
std::string human_bytes(std::uint64_t b);
/// "3.2 s", "4 min 05 s", "1 h 02 min".
std::string human_seconds(double s);

/// Which BLAS the process actually resolved (shared objects loaded whose name contains "blas"
/// or "mkl", with symlinks followed), and OpenBLAS's own config string when it is OpenBLAS.
struct BlasInfo {
  std::vector<std::string> libraries;
  std::string sgemm_library;    // the shared object that provides sgemm_, as the loader resolved it
  std::string openblas_config;  // empty unless OpenBLAS
  std::string summary() const;  // "OpenBLAS 0.3.21 (openmp) /usr/lib/.../libopenblas.so.0"
  bool is_reference() const;    // the slow netlib reference BLAS
};
BlasInfo blas_info();

}  // namespace kvlab::core
