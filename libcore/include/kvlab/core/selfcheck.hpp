// `kvlab selfcheck`: what this build and machine can do. Measures float32 matmul GFLOP/s at the
// configured thread count and reports the BLAS actually loaded, so a slow reference BLAS (Debian's
// default libblas.so.3) is caught before a long job runs on it.
#pragma once

#include <string>
#include <vector>

#include "kvlab/core/artifact.hpp"
#include "kvlab/core/progress.hpp"
#include "kvlab/core/runtime.hpp"

namespace kvlab::core {

struct SelfcheckOptions {
  int matmul_size = 1024;  ///< n of the n x n x n float32 matmul
  int repeats = 5;         ///< timed repetitions after one warm-up; the best is reported
  DeviceSpec device;       ///< also time the matmul there when CUDA
};

struct SelfcheckResult {
  BuildInfo build;
  BlasInfo blas;
  int threads = 1;
  int cores = 1;
  std::string device;
  std::vector<double> gflops;  ///< one per repetition
  double best_gflops = 0.0;
  double cuda_tflops = 0.0;    ///< bf16 matmul on the device, when CUDA
  std::string cuda_name;
};

SelfcheckResult run_selfcheck(const SelfcheckOptions& opt, Progress& progress);
void write_selfcheck_report(const std::filesystem::path& out, const SelfcheckResult& r,
                            const SelfcheckOptions& opt, const Provenance& prov);

}  // namespace kvlab::core
