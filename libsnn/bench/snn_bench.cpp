// kvlab-snn-bench: the Open Neuromorphic SNN library benchmark for kvlab's LIF layer
// (one Linear + one LIF layer, input [T, batch, n], loss = sum of output spikes, forward +
// backward), printed as one JSON line so scripts/bench-snn can put it beside snnTorch and
// SpikingJelly. Not a kvlab subcommand: a measurement tool that links libsnn.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "kvlab/core/runtime.hpp"
#include "kvlab/snn/network.hpp"

#ifdef KVLAB_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

using namespace kvlab;

namespace {

void sync(const at::Device& d) {
#ifdef KVLAB_WITH_CUDA
  if (d.is_cuda()) c10::cuda::device_synchronize();
#endif
  (void)d;
}

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: kvlab-snn-bench --neurons N [--batch 16] [--steps 500] [--repeats 20] "
               "[--warmup 3] [--device cpu|cuda[:i]] [--threads K] [--impl fused|aten] "
               "[--tf32 0|1] [--max-seconds S]\n"
               "  --impl aten: the per-step ATen time loop (the reference) instead of the fused one\n"
               "  --tf32 1: let cuBLAS run the float32 GEMMs in TF32 (off by default, as PyTorch)\n"
               "  --max-seconds S: stop timing after S seconds of timed runs (at least 3 runs)\n");
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  std::int64_t n = 0, batch = 16, steps = 500, repeats = 20, warmup = 3;
  int threads = 0;
  bool tf32 = false;
  double max_seconds = 0;
  std::string device = "cpu", impl = "fused";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) usage();
    const std::string v = argv[++i];
    if (a == "--neurons") n = std::stoll(v);
    else if (a == "--batch") batch = std::stoll(v);
    else if (a == "--steps") steps = std::stoll(v);
    else if (a == "--repeats") repeats = std::stoll(v);
    else if (a == "--warmup") warmup = std::stoll(v);
    else if (a == "--device") device = v;
    else if (a == "--threads") threads = std::stoi(v);
    else if (a == "--impl") impl = v;
    else if (a == "--tf32") tf32 = v == "1";
    else if (a == "--max-seconds") max_seconds = std::stod(v);
    else usage();
  }
  if (n < 1 || batch < 1 || steps < 1 || repeats < 1 || (impl != "fused" && impl != "aten")) usage();
  const snn::ScanImpl scan = impl == "aten" ? snn::ScanImpl::aten : snn::ScanImpl::fused;
  try {
    if (threads > 0) core::set_threads(threads);
    const core::DeviceSpec ds = core::parse_device(device);
    core::check_device(ds);
    const at::Device dev = ds.cuda ? at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(ds.index))
                                   : at::Device(at::kCPU);
    at::globalContext().setAllowTF32CuBLAS(tf32);
    at::manual_seed(0);
    snn::NeuronOptions nopt;  // LIF beta 0.95, threshold 1, atan surrogate (snnTorch defaults)
    snn::Network net = snn::make_network({n, n}, snn::NeuronModel::lif, nopt, steps);
    for (auto& l : net.layers) {
      l.weight = l.weight.to(dev);
      l.bias = (at::rand({n}) * 0.2 - 0.1).to(dev);  // nn.Linear-like nonzero bias
    }
    const at::Tensor x = at::rand({steps, batch, n}).to(dev);
    // dL/dS of loss = sum of the output spikes: ones, broadcast from one value as autograd's
    // SumBackward gives it to snnTorch and SpikingJelly (nothing [T, B, n] is materialised).
    const at::Tensor ones = at::ones({1, 1, 1}, x.options()).expand({steps, batch, n});
    snn::RuleOptions ro;
    ro.rule = snn::Rule::surrogate;
    ro.grad_clip = 0;
    ro.scan = scan;
    snn::SimOptions so;
    so.scan = scan;
    std::vector<double> fwd_ms, total_ms;
    double spikes = 0, timed_ms = 0;
    for (std::int64_t r = 0; r < warmup + repeats; ++r) {
      sync(dev);
      const auto t0 = std::chrono::steady_clock::now();
      const snn::ForwardResult fw = snn::forward(net, x, so);
      sync(dev);
      const auto t1 = std::chrono::steady_clock::now();
      const snn::Gradients g = snn::backward(net, fw, ones, {}, ro);
      sync(dev);
      const auto t2 = std::chrono::steady_clock::now();
      if (r >= warmup) {
        fwd_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
        total_ms.push_back(std::chrono::duration<double, std::milli>(t2 - t0).count());
        timed_ms += total_ms.back();
      }
      if (r == 0) spikes = fw.output().mean().item<double>();
      (void)g;
      if (max_seconds > 0 && total_ms.size() >= 3 && timed_ms > max_seconds * 1e3) break;
    }
    auto median = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v[v.size() / 2];
    };
    // One size per process (scripts/bench-snn), so process peaks are this size's peaks.
    const bool cuda = dev.is_cuda();
    const std::uint64_t mem = cuda ? core::peak_cuda_bytes() : core::peak_rss_bytes();
    const std::string mem_kind = cuda ? "peak_cuda_allocated" : "peak_rss";
    std::printf("%s\n",
                fmt::format("{{\"library\": \"kvlab\", \"device\": \"{}\", \"neurons\": {}, "
                            "\"batch\": {}, \"steps\": {}, \"threads\": {}, \"fwd_ms\": {:.3f}, "
                            "\"fwd_bwd_ms\": {:.3f}, \"memory_bytes\": {}, \"memory_kind\": \"{}\", "
                            "\"spike_rate\": {:.4f}, \"repeats\": {}, \"scan\": \"{}\", "
                            "\"tf32\": {}}}",
                            ds.str(), n, batch, steps, core::get_threads(), median(fwd_ms),
                            median(total_ms), mem, mem_kind, spikes, total_ms.size(),
                            snn::scan_backend(dev, scan), tf32 ? "true" : "false")
                    .c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvlab-snn-bench: error: %s\n", e.what());
    return 1;
  }
}
