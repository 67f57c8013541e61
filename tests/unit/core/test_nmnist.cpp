// N-MNIST reader: a recording written byte by byte in the real 5-byte format, binning into T steps
// ([t, polarity, x, y] as the reference), the class-folder split reader, and malformed files.
#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include <filesystem>
#include <string>

#include "kvlab/core/error.hpp"
#include "kvlab/core/nmnist.hpp"
#include "../test_util.hpp"

using namespace kvlab;
namespace fs = std::filesystem;

namespace {

// One event, packed by hand: x, y, polarity bit 7 + timestamp bits 22..16, bits 15..8, bits 7..0.
std::string ev(unsigned x, unsigned y, unsigned pol, unsigned t) {
  std::string s(5, '\0');
  s[0] = static_cast<char>(x);
  s[1] = static_cast<char>(y);
  s[2] = static_cast<char>((pol << 7) | ((t >> 16) & 0x7F));
  s[3] = static_cast<char>((t >> 8) & 0xFF);
  s[4] = static_cast<char>(t & 0xFF);
  return s;
}

}  // namespace

TEST_CASE("N-MNIST: decodes the 40-bit events (x, y, polarity, 23-bit microseconds)") {
  const auto p = test::scratch("rec.bin");
  test::write_file(p, ev(0, 0, 1, 0) + ev(33, 12, 0, 1234) + ev(5, 33, 1, 0x7FFFFF) +
                          ev(7, 8, 0, 299999) + ev(7, 8, 0, 300000));
  const auto e = core::read_nmnist_events(p);
  REQUIRE(e.size() == 5);
  CHECK(e[0].polarity == 1);
  CHECK(e[1].x == 33);
  CHECK(e[1].y == 12);
  CHECK(e[1].polarity == 0);
  CHECK(e[1].t_us == 1234);
  CHECK(e[2].t_us == 0x7FFFFF);
  CHECK(e[2].polarity == 1);
  CHECK(core::encode_nmnist_events(e) == test::read_file(p));

  // T = 300 over 300 ms: 1 ms bins; events at or after 300 ms are dropped.
  const at::Tensor f = core::bin_nmnist_events(e, 300);
  REQUIRE(f.sizes() == at::IntArrayRef({300, 2, 34, 34}));
  CHECK(f.sum().item<double>() == 3.0);
  CHECK(f[0][1][0][0].item<float>() == 1.f);     // [t, polarity, x, y]
  CHECK(f[1][0][33][12].item<float>() == 1.f);   // 1234 us -> bin 1
  CHECK(f[299][0][7][8].item<float>() == 1.f);   // 299999 us -> last bin
  // T = 7: bins of 300/7 ms; 299999 us -> bin 6; 42857 us would be bin 0, 42858 bin 1.
  CHECK(core::nmnist_bin(42857, 7, 300) == 0);
  CHECK(core::nmnist_bin(42858, 7, 300) == 1);
  CHECK(core::nmnist_bin(299999, 7, 300) == 6);
  CHECK(core::nmnist_bin(300000, 7, 300) == -1);
  // Duplicate events in one bin are one spike.
  CHECK(core::bin_nmnist_compact({e[1], e[1]}, 10, 300).size() == 1);
}

TEST_CASE("N-MNIST: malformed recordings are FormatErrors naming the file") {
  const auto p = test::scratch("bad.bin");
  test::write_file(p, ev(1, 2, 0, 10) + "abc");
  CHECK_THROWS_WITH_AS(core::read_nmnist_events(p),
                       doctest::Contains("8 bytes is not a multiple of 5"), FormatError);
  test::write_file(p, ev(1, 2, 0, 10) + ev(34, 2, 0, 11));
  CHECK_THROWS_WITH_AS(core::read_nmnist_events(p), doctest::Contains("event 1 (byte offset 5) has x=34"),
                       FormatError);
  CHECK_THROWS_AS(core::read_nmnist_events(test::scratch("missing.bin")), FormatError);
  CHECK(core::read_nmnist_events((test::write_file(p, ""), p)).empty());
}

TEST_CASE("N-MNIST: split directory with class folders, round-robin limit, dense batches") {
  const fs::path root = test::scratch("nmnist");
  for (int c = 0; c < 10; ++c) {
    fs::create_directories(root / "Train" / std::to_string(c));
    for (int k = 0; k < 2; ++k)
      test::write_file(root / "Train" / std::to_string(c) / (std::to_string(10 * c + k) + ".bin"),
                       ev(c, k, k, 1000 * (c + 1)) + ev(c, k, 1, 150000));
  }
  fs::create_directories(root / "Test" / "0");
  CHECK(core::is_nmnist_root(root));
  CHECK_FALSE(core::is_nmnist_root(root / "Train"));
  const auto all = core::read_nmnist_split(root / "Train", 30);
  CHECK(all.size() == 20);
  const auto lim = core::read_nmnist_split(root / "Train", 30, 300.0, 12);
  REQUIRE(lim.size() == 12);
  // Round-robin: classes 0..9 then 0, 1.
  CHECK(at::equal(lim.labels, at::tensor({0L, 1L, 2L, 3L, 4L, 5L, 6L, 7L, 8L, 9L, 0L, 1L})));
  const at::Tensor b = lim.batch({3, 10});  // class 3 file 0, class 0 file 1
  REQUIRE(b.sizes() == at::IntArrayRef({30, 2, 2312}));
  CHECK(b.sum().item<double>() == 4.0);
  // class 3, event (x=3, y=0, pol 0, t=4 ms) -> bin 0; (3, 0, pol 1, 150 ms) -> bin 15.
  CHECK(b[0][0][0 * 1156 + 3 * 34 + 0].item<float>() == 1.f);
  CHECK(b[15][0][1 * 1156 + 3 * 34 + 0].item<float>() == 1.f);
  CHECK(b[0][1][1 * 1156 + 0 * 34 + 1].item<float>() == 1.f);
  CHECK_THROWS_AS(core::read_nmnist_split(root / "Test", 30), UsageError);
  test::write_file(root / "Train" / "4" / "99.bin", "xyz");
  CHECK_THROWS_AS(core::read_nmnist_split(root / "Train", 30), FormatError);
}
