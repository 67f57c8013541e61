// Benchmark: one binary 3x3 convolution (stride 1, zero padding 1) on the bit-packed XNOR +
// popcount kernel (with and without the packing of its float input) against the float
// convolution of the same shape (at::conv2d, LibTorch's CPU backend) at 1 thread; best of REPEATS
// after a warm-up. Run through scripts/bench-bnn-conv.
//
// Two allocation patterns, the same for both paths: "reused", each call's output is released
// before the next call (the allocator hands the same memory back: steady-state inference), and
// "fresh", the previous output is still alive when the next call allocates (glibc then maps new
// pages for outputs of this size, so every call also pays page faults on its output: about
// 0.1 ms for the 0.8 MB output of the 64-channel 56x56 layer on the VM this was written on).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <vector>

#include "kvlab/binary/bnn_packed.hpp"

namespace {
template <class F>
double best_ms(F&& f, int reps, bool keep_previous) {
  double best = 1e30;
  at::Tensor held = f();  // warm-up
  for (int i = 0; i < reps; ++i) {
    if (!keep_previous) held.reset();
    const auto t0 = std::chrono::steady_clock::now();
    at::Tensor out = f();
    best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    held = std::move(out);  // kept alive until after the next call in "fresh" mode
  }
  return best;
}
}  // namespace

int main(int argc, char** argv) {
  at::set_num_threads(1);
  const int reps = argc > 1 ? std::atoi(argv[1]) : 50;
  struct Shape { long n, c, h, out; };
  const std::vector<Shape> shapes = {{1, 64, 56, 64}, {1, 128, 28, 128}, {1, 256, 14, 256},
                                     {1, 512, 7, 512}, {16, 32, 28, 32}, {16, 64, 14, 64}};
  fmt::print("popcount: {}; LibTorch threads: {}; best of {}\n", kvlab::binary::popcount_kind(),
             at::get_num_threads(), reps);
  int bad = 0;
  for (const bool keep : {false, true}) {
    fmt::print("\n{} outputs\n", keep ? "fresh (previous output alive during the call)"
                                      : "reused (output released before the next call)");
    fmt::print("{:>4} {:>5} {:>4} {:>5} | {:>10} {:>10} {:>10} | {:>7} {:>7}\n", "N", "C", "HxW",
               "out", "float ms", "packed ms", "kernel ms", "speedup", "kernel");
    for (const Shape& s : shapes) {
      const at::Tensor x = (at::randn({s.n, s.c, s.h, s.h}) >= 0).to(at::kFloat).mul(2).sub(1);
      const at::Tensor w = at::randn({s.out, s.c, 3, 3});
      const at::Tensor ws = (w >= 0).to(at::kFloat).mul(2).sub(1);
      const kvlab::binary::PackedWeights pw = kvlab::binary::pack_weights(w);
      const double tf = best_ms([&] { return at::conv2d(x, ws, {}, 1, 1); }, reps, keep);
      const double tp = best_ms(
          [&] { return kvlab::binary::binary_conv2d_packed(kvlab::binary::pack_image(x, 1), pw, 1); },
          reps, keep);
      const kvlab::binary::PackedImage xp = kvlab::binary::pack_image(x, 1);
      const double tk =
          best_ms([&] { return kvlab::binary::binary_conv2d_packed(xp, pw, 1); }, reps, keep);
      if (!at::equal(at::conv2d(x, ws, {}, 1, 1), kvlab::binary::binary_conv2d_packed(xp, pw, 1))) ++bad;
      fmt::print("{:>4} {:>5} {:>4} {:>5} | {:>10.3f} {:>10.3f} {:>10.3f} | {:>6.1f}x {:>6.1f}x\n",
                 s.n, s.c, s.h, s.out, tf, tp, tk, tf / tp, tf / tk);
    }
  }
  fmt::print("\noutputs identical to the float convolution: {}\n", bad == 0 ? "yes" : "NO");
  return bad == 0 ? 0 : 1;
}
