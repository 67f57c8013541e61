// Dataset readers: IDX (raw and gzipped) and CIFAR-10 binary round trips on synthetic files, every
// malformed-file case (exit 3 naming the file and the problem), the directory loader, and the
// crop+flip augmentation. The real Fashion-MNIST files are read when Debian's package is present.
#include <ATen/ATen.h>
#include <zlib.h>
#include <doctest/doctest.h>

#include <filesystem>
#include <random>

#include "../test_util.hpp"
#include "kvlab/core/datasets.hpp"
#include "kvlab/core/error.hpp"

using kvlab::test::error_of;

using namespace kvlab;
namespace fs = std::filesystem;

namespace {

std::string be32(std::uint32_t v) {
  return {char(v >> 24), char((v >> 16) & 0xff), char((v >> 8) & 0xff), char(v & 0xff)};
}

std::string idx_images(int n, int h, int w, std::uint8_t base = 0) {
  std::string s = std::string("\0\0\x08\x03", 4) + be32(n) + be32(h) + be32(w);
  for (int i = 0; i < n * h * w; ++i) s += char(std::uint8_t(base + i));
  return s;
}

std::string idx_labels(const std::vector<int>& labels) {
  std::string s = std::string("\0\0\x08\x01", 4) + be32(static_cast<std::uint32_t>(labels.size()));
  for (int l : labels) s += char(l);
  return s;
}

void write_gz(const fs::path& p, const std::string& content) {
  gzFile f = gzopen(p.string().c_str(), "wb");
  REQUIRE(f != nullptr);
  gzwrite(f, content.data(), static_cast<unsigned>(content.size()));
  gzclose(f);
}


fs::path fresh_dir(const std::string& name) {
  const fs::path d = test::scratch(name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

}  // namespace

TEST_CASE("IDX: raw and gzipped files read back the same bytes and dims") {
  const fs::path raw = test::scratch("imgs.idx");
  const fs::path gz = test::scratch("imgs.idx.gz");
  const std::string content = idx_images(3, 4, 5, 7);
  test::write_file(raw, content);
  write_gz(gz, content);
  for (const auto& p : {raw, gz}) {
    const at::Tensor t = core::read_idx(p);
    CHECK(t.sizes() == at::IntArrayRef({3, 4, 5}));
    CHECK((t.scalar_type() == at::kByte));
    CHECK(t[0][0][0].item<int>() == 7);
    CHECK(t[2][3][4].item<int>() == std::uint8_t(7 + 59));
  }
}

TEST_CASE("IDX: malformed files are FormatErrors naming the file and the problem") {
  const fs::path p = test::scratch("bad.idx");
  test::write_file(p, "\x01\x02");
  CHECK(error_of([&] { core::read_idx(p); }, kExitBadFile).find("bad.idx: truncated") !=
        std::string::npos);
  test::write_file(p, "GIF89a-not-idx-at-all");
  CHECK(error_of([&] { core::read_idx(p); }, kExitBadFile).find("not an IDX file") !=
        std::string::npos);
  test::write_file(p, std::string("\0\0\x0D\x01", 4) + be32(2) + "abcdefgh");
  CHECK(error_of([&] { core::read_idx(p); }, kExitBadFile).find("element type 0x0d") !=
        std::string::npos);
  test::write_file(p, std::string("\0\0\x08\x09", 4));
  CHECK(error_of([&] { core::read_idx(p); }, kExitBadFile).find("9 dimensions") !=
        std::string::npos);
  std::string trunc = idx_images(2, 4, 4);
  trunc.resize(trunc.size() - 5);
  test::write_file(p, trunc);
  const std::string m = error_of([&] { core::read_idx(p); }, kExitBadFile);
  CHECK(m.find("truncated: the IDX payload needs 32 bytes but only 27 remain") != std::string::npos);
  test::write_file(p, idx_images(1, 2, 2) + "xx");
  CHECK(error_of([&] { core::read_idx(p); }, kExitBadFile).find("extra bytes") != std::string::npos);
  // A gzip stream cut in half.
  const fs::path gz = test::scratch("cut.idx.gz");
  write_gz(gz, idx_images(50, 28, 28));
  std::string bytes = test::read_file(gz);
  bytes.resize(bytes.size() / 2);
  test::write_file(gz, bytes);
  const std::string g = error_of([&] { core::read_idx(gz); }, kExitBadFile);
  CHECK(g.find("cut.idx.gz") != std::string::npos);
  CHECK(error_of([&] { core::read_idx(test::scratch("nope.idx")); }, kExitBadFile)
            .find("no such file") != std::string::npos);
}

TEST_CASE("IDX pair: count mismatch, bad label and swapped files are rejected") {
  const fs::path im = test::scratch("pair-images.idx"), lb = test::scratch("pair-labels.idx");
  test::write_file(im, idx_images(3, 2, 2));
  test::write_file(lb, idx_labels({1, 2}));
  CHECK(error_of([&] { core::read_idx_pair(im, lb); }, kExitBadFile)
            .find("holds 3 images but") != std::string::npos);
  test::write_file(lb, idx_labels({1, 2, 12}));
  CHECK(error_of([&] { core::read_idx_pair(im, lb); }, kExitBadFile).find("label 12 found") !=
        std::string::npos);
  test::write_file(lb, idx_labels({1, 2, 9}));
  CHECK(error_of([&] { core::read_idx_pair(lb, im); }, kExitBadFile).find("is it a label file") !=
        std::string::npos);
  const core::ImageDataset d = core::read_idx_pair(im, lb);
  CHECK(d.images.sizes() == at::IntArrayRef({3, 1, 2, 2}));
  CHECK((d.labels.scalar_type() == at::kLong));
  CHECK(d.labels[2].item<int>() == 9);
  CHECK(d.head(2).size() == 2);
}

TEST_CASE("CIFAR-10 binary batches: records, labels and malformed sizes") {
  const fs::path p = test::scratch("batch.bin");
  std::string rec;
  for (int r = 0; r < 2; ++r) {
    rec += char(r == 0 ? 3 : 8);
    for (int i = 0; i < 3072; ++i) rec += char((i + r) & 0xff);
  }
  test::write_file(p, rec);
  const core::ImageDataset d = core::read_cifar10({p});
  CHECK(d.images.sizes() == at::IntArrayRef({2, 3, 32, 32}));
  CHECK(d.labels[0].item<int>() == 3);
  CHECK(d.labels[1].item<int>() == 8);
  CHECK(d.images[1][0][0][0].item<int>() == 1);
  CHECK(d.images[0][2][31][31].item<int>() == (3071 & 0xff));  // planar: B plane, last pixel
  CHECK(d.class_names[3] == "cat");
  test::write_file(p, rec.substr(0, rec.size() - 100));
  CHECK(error_of([&] { core::read_cifar10({p}); }, kExitBadFile)
            .find("not a whole number of CIFAR-10 records") != std::string::npos);
  rec[0] = char(42);
  test::write_file(p, rec);
  CHECK(error_of([&] { core::read_cifar10({p}); }, kExitBadFile).find("has label 42") !=
        std::string::npos);
}

TEST_CASE("load_image_dataset: IDX and CIFAR directories, and a directory with neither") {
  const fs::path idx = fresh_dir("fashion-toy");
  write_gz(idx / "train-images-idx3-ubyte.gz", idx_images(4, 6, 6));
  write_gz(idx / "train-labels-idx1-ubyte.gz", idx_labels({0, 1, 2, 3}));
  test::write_file(idx / "t10k-images-idx3-ubyte", idx_images(2, 6, 6));  // raw works too
  test::write_file(idx / "t10k-labels-idx1-ubyte", idx_labels({4, 5}));
  const core::TrainTest tt = core::load_image_dataset(idx);
  CHECK(tt.train.size() == 4);
  CHECK(tt.test.size() == 2);
  CHECK(tt.train.name == "fashion-mnist");
  CHECK(tt.train.class_names[9] == "Ankle boot");
  fs::remove(idx / "t10k-labels-idx1-ubyte");
  CHECK(error_of([&] { core::load_image_dataset(idx); }, kExitUsage)
            .find("t10k-labels-idx1-ubyte[.gz] is missing") != std::string::npos);

  const fs::path cif = fresh_dir("cifar-toy") / "cifar-10-batches-bin";
  fs::create_directories(cif);
  std::string rec(1, char(1));
  rec += std::string(3072, char(9));
  for (int i = 1; i <= 5; ++i) test::write_file(cif / fmt::format("data_batch_{}.bin", i), rec);
  test::write_file(cif / "test_batch.bin", rec + rec);
  const core::TrainTest c = core::load_image_dataset(cif.parent_path());
  CHECK(c.train.size() == 5);
  CHECK(c.test.size() == 2);
  CHECK(c.train.name == "cifar-10");

  const fs::path empty = fresh_dir("empty-data");
  CHECK(error_of([&] { core::load_image_dataset(empty); }, kExitUsage).find("found neither") !=
        std::string::npos);
}

TEST_CASE("augment_crop_flip: shapes kept, pixels come from the padded image, seeded") {
  at::Tensor x = at::arange(2 * 3 * 8 * 8, at::kFloat).view({2, 3, 8, 8}).add_(1.0);
  std::mt19937_64 a(5), b(5);
  const at::Tensor y1 = core::augment_crop_flip(x, 2, a);
  const at::Tensor y2 = core::augment_crop_flip(x, 2, b);
  CHECK(y1.sizes() == x.sizes());
  CHECK(at::equal(y1, y2));
  // Every nonzero output value exists in the same image (crop/flip only move pixels).
  for (int i = 0; i < 2; ++i) {
    const at::Tensor vals = y1[i].flatten();
    const at::Tensor nz = vals.masked_select(vals.ne(0));
    CHECK(at::isin(nz, x[i].flatten()).all().item<bool>());
  }
  // Without padding only flips happen: each image equals itself or its mirror.
  std::mt19937_64 c(1);
  const at::Tensor y3 = core::augment_crop_flip(x, 0, c);
  for (int i = 0; i < 2; ++i)
    CHECK((at::equal(y3[i], x[i]) || at::equal(y3[i], x[i].flip({2}))));
}

TEST_CASE("the installed Fashion-MNIST (Debian dataset-fashion-mnist) reads with the right sizes") {
  if (!fs::exists(fs::path(core::kDefaultFashionMnistDir) / "t10k-images-idx3-ubyte.gz")) {
    MESSAGE("dataset-fashion-mnist not installed; skipped");
    return;
  }
  const core::TrainTest tt = core::load_image_dataset(core::kDefaultFashionMnistDir);
  CHECK(tt.train.images.sizes() == at::IntArrayRef({60000, 1, 28, 28}));
  CHECK(tt.test.images.sizes() == at::IntArrayRef({10000, 1, 28, 28}));
  CHECK(tt.test.labels.bincount().eq(1000).all().item<bool>());  // 1000 per class
  CHECK(tt.train.name == "fashion-mnist");
}
