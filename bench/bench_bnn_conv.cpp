// Benchmark: one binary 3x3 convolution on the bit-packed XNOR + popcount kernel (including the
// packing of its input) against the float convolution of the same shape (at::conv2d, LibTorch's
// CPU backend) at 1 thread. Run through scripts/bench-bnn-conv.
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
double best_ms(F&& f, int reps) {
  double best = 1e30;
  f();  // warm-up
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}
}  // namespace

int main(int argc, char** argv) {
  at::set_num_threads(1);
  const int reps = argc > 1 ? std::atoi(argv[1]) : 5;
  struct Shape { long n, c, h, out; };
  const std::vector<Shape> shapes = {{1, 64, 56, 64}, {1, 128, 28, 128}, {1, 256, 14, 256},
                                     {1, 512, 7, 512}, {16, 32, 28, 32}, {16, 64, 14, 64}};
  fmt::print("popcount: {}; LibTorch threads: {}\n", kvlab::binary::popcount_kind(),
             at::get_num_threads());
  fmt::print("{:>4} {:>5} {:>4} {:>5} | {:>10} {:>10} {:>10} | {:>7} {:>7}\n", "N", "C", "HxW",
             "out", "float ms", "packed ms", "kernel ms", "speedup", "kernel");
  int bad = 0;
  for (const Shape& s : shapes) {
    const at::Tensor x = (at::randn({s.n, s.c, s.h, s.h}) >= 0).to(at::kFloat).mul(2).sub(1);
    const at::Tensor w = at::randn({s.out, s.c, 3, 3});
    const at::Tensor ws = (w >= 0).to(at::kFloat).mul(2).sub(1);
    const kvlab::binary::PackedWeights pw = kvlab::binary::pack_weights(w);
    at::Tensor ref, got;
    const double tf = best_ms([&] { ref = at::conv2d(x, ws, {}, 1, 1); }, reps);
    const double tp = best_ms([&] {
      got = kvlab::binary::binary_conv2d_packed(kvlab::binary::pack_activations(x), s.c, pw, 1, 1);
    }, reps);
    const at::Tensor xp = kvlab::binary::pack_activations(x);
    const double tk = best_ms([&] { got = kvlab::binary::binary_conv2d_packed(xp, s.c, pw, 1, 1); }, reps);
    if (!at::equal(ref, got)) ++bad;
    fmt::print("{:>4} {:>5} {:>4} {:>5} | {:>10.3f} {:>10.3f} {:>10.3f} | {:>6.1f}x {:>6.1f}x\n", s.n,
               s.c, s.h, s.out, tf, tp, tk, tf / tp, tf / tk);
  }
  fmt::print("outputs identical to the float convolution: {}\n", bad == 0 ? "yes" : "NO");
  return bad == 0 ? 0 : 1;
}
