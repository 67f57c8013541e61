// kvlab selfcheck: build information, the BLAS in use and its matmul speed (and the GPU's).
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/core/log.hpp"
#include "kvlab/core/selfcheck.hpp"

namespace kvlab::cli {

void register_selfcheck(CLI::App& app, GlobalOptions& global) {
  struct Args {
    core::SelfcheckOptions opt;
    double min_gflops = 0.0;
    std::string output;
    bool force = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "selfcheck", "Report the build, the BLAS in use and float32 matmul GFLOP/s (and GPU TFLOP/s)");
  cmd->add_option("--size", args->opt.matmul_size, "matrix size n of the n x n float32 matmul")
      ->check(CLI::Range(16, 16384));
  cmd->add_option("--repeats", args->opt.repeats, "timed repetitions (the best is reported)")
      ->check(CLI::Range(1, 1000));
  cmd->add_option("--min-gflops", args->min_gflops,
                  "exit 1 when the best CPU GFLOP/s is below this (0: no check)")
      ->check(CLI::Range(0.0, 1e6));
  add_output_option(cmd, args->output, args->force,
                    "also write a selfcheck-report artifact here (.h5; optional)");
  cmd->callback([args, &global] {
    global.action = [args, &global] {
      if (!args->output.empty()) core::check_output_path(args->output, {}, args->force);
      args->opt.device = global.dev;
      auto progress = global.make_progress();
      const core::SelfcheckResult r = core::run_selfcheck(args->opt, *progress);
      if (global.json) {
        nlohmann::json j = {{"kvlab", r.build.kvlab_version}, {"git", r.build.git_sha},
                            {"libtorch", r.build.torch_version}, {"hdf5", r.build.hdf5_version},
                            {"cuda", r.build.cuda_version}, {"threads", r.threads},
                            {"cores", r.cores}, {"blas", r.blas.summary()},
                            {"blas_libraries", r.blas.libraries},
                            {"matmul_size", args->opt.matmul_size},
                            {"gflops_best", r.best_gflops}, {"gflops", r.gflops}};
        if (!r.cuda_name.empty()) {
          j["cuda_device"] = r.cuda_name;
          j["cuda_bf16_tflops"] = r.cuda_tflops;
        }
        fmt::print("{}\n", j.dump(2));
      } else {
        fmt::print("kvlab     {} (git {})\n", r.build.kvlab_version, r.build.git_sha);
        fmt::print("libtorch  {}   hdf5 {}   cuda {}\n", r.build.torch_version,
                   r.build.hdf5_version, r.build.cuda_version);
        fmt::print("threads   {} of {} cores\n", r.threads, r.cores);
        fmt::print("blas      {}\n", r.blas.summary());
        fmt::print("matmul    {0}x{0}x{0} float32: {1:.1f} GFLOP/s (best of {2})\n",
                   args->opt.matmul_size, r.best_gflops, r.gflops.size());
        if (!r.cuda_name.empty())
          fmt::print("gpu       {}: 8192^3 bf16 matmul {:.0f} TFLOP/s\n", r.cuda_name,
                     r.cuda_tflops);
      }
      if (r.blas.is_reference())
        log::warn("LibTorch is using the slow reference BLAS; run scripts/install-deps.sh "
                  "(installs libopenblas0-openmp)");
      if (!args->output.empty())
        core::write_selfcheck_report(args->output, r, args->opt, global.provenance({}));
      KVLAB_THROW_IF(args->min_gflops > 0 && r.best_gflops < args->min_gflops, Error,
                     "--min-gflops {}: measured only {:.1f} GFLOP/s with {}", args->min_gflops,
                     r.best_gflops, r.blas.summary());
    };
  });
}

}  // namespace kvlab::cli
