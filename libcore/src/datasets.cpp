// IDX (MNIST / Fashion-MNIST) and CIFAR-10 binary readers, and CIFAR augmentation.
#include "kvlab/core/datasets.hpp"

#include <ATen/ATen.h>
#include <fmt/ranges.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>

#include "kvlab/core/error.hpp"

namespace kvlab::core {
namespace fs = std::filesystem;

namespace {

const std::vector<std::string> kFashionClasses = {"T-shirt/top", "Trouser", "Pullover", "Dress",
                                                  "Coat",        "Sandal",  "Shirt",    "Sneaker",
                                                  "Bag",         "Ankle boot"};
const std::vector<std::string> kDigitClasses = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};
const std::vector<std::string> kCifarClasses = {"airplane", "automobile", "bird",  "cat",  "deer",
                                                "dog",      "frog",       "horse", "ship", "truck"};

// A gzip-or-raw reader (zlib's gzread passes uncompressed files through unchanged).
class GzFile {
 public:
  explicit GzFile(const fs::path& p) : path_(p.string()) {
    std::error_code ec;
    KVLAB_THROW_IF(!fs::exists(p, ec), FormatError, "{}: no such file", path_);
    KVLAB_THROW_IF(fs::is_directory(p, ec), FormatError, "{}: is a directory, expected a file",
                   path_);
    f_ = gzopen(path_.c_str(), "rb");
    KVLAB_THROW_IF(f_ == nullptr, FormatError, "{}: cannot open for reading", path_);
  }
  GzFile(const GzFile&) = delete;
  GzFile& operator=(const GzFile&) = delete;
  ~GzFile() {
    if (f_) gzclose(f_);
  }
  // Reads up to n bytes; returns how many were read. FormatError on a corrupt gzip stream.
  std::size_t read_some(void* out, std::size_t n) {
    std::size_t done = 0;
    auto* p = static_cast<unsigned char*>(out);
    while (done < n) {
      const unsigned chunk = static_cast<unsigned>(std::min<std::size_t>(n - done, 1u << 30));
      const int r = gzread(f_, p + done, chunk);
      if (r < 0) {
        int errnum = 0;
        const char* msg = gzerror(f_, &errnum);
        KVLAB_THROW(FormatError, "{}: corrupt gzip stream ({}); re-download the file", path_,
                    msg ? msg : "unknown error");
      }
      if (r == 0) break;
      done += static_cast<std::size_t>(r);
    }
    return done;
  }
  void read_exact(void* out, std::size_t n, const char* what) {
    const std::size_t got = read_some(out, n);
    KVLAB_THROW_IF(got != n, FormatError,
                   "{}: truncated: {} needs {} bytes but only {} remain; re-download the file",
                   path_, what, n, got);
  }
  bool at_end() {
    unsigned char c;
    return read_some(&c, 1) == 0;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  gzFile f_ = nullptr;
};

std::uint32_t be32(const unsigned char* b) {
  return (std::uint32_t(b[0]) << 24) | (std::uint32_t(b[1]) << 16) | (std::uint32_t(b[2]) << 8) |
         std::uint32_t(b[3]);
}

std::string find_variant(const fs::path& dir, const std::string& stem) {
  std::error_code ec;
  for (const char* suffix : {"", ".gz"}) {
    const fs::path p = dir / (stem + suffix);
    if (fs::is_regular_file(p, ec)) return p.string();
  }
  return {};
}

}  // namespace

ImageDataset ImageDataset::head(std::int64_t n) const {
  ImageDataset d = *this;
  if (n > 0 && n < size()) {
    d.images = images.slice(0, 0, n);
    d.labels = labels.slice(0, 0, n);
  }
  return d;
}

at::Tensor read_idx(const fs::path& path) {
  GzFile f(path);
  unsigned char hdr[4];
  const std::size_t got = f.read_some(hdr, 4);
  KVLAB_THROW_IF(got < 4, FormatError,
                 "{}: truncated: {} bytes, too short for an IDX header (4-byte magic); "
                 "re-download the file",
                 f.path(), got);
  KVLAB_THROW_IF(hdr[0] != 0 || hdr[1] != 0, FormatError,
                 "{}: not an IDX file: magic bytes {:02x} {:02x} {:02x} {:02x}, expected "
                 "00 00 08 <dims>; pass an MNIST/Fashion-MNIST IDX file",
                 f.path(), hdr[0], hdr[1], hdr[2], hdr[3]);
  KVLAB_THROW_IF(hdr[2] != 0x08, FormatError,
                 "{}: IDX element type 0x{:02x} is not supported (expected 0x08, unsigned byte)",
                 f.path(), hdr[2]);
  const int ndim = hdr[3];
  KVLAB_THROW_IF(ndim < 1 || ndim > 4, FormatError,
                 "{}: IDX header has {} dimensions, expected 1 to 4", f.path(), ndim);
  std::vector<unsigned char> dimbuf(static_cast<std::size_t>(4 * ndim));
  f.read_exact(dimbuf.data(), dimbuf.size(), "the IDX dimension header");
  std::vector<std::int64_t> dims;
  std::int64_t total = 1;
  for (int i = 0; i < ndim; ++i) {
    const std::uint32_t d = be32(&dimbuf[static_cast<std::size_t>(4 * i)]);
    KVLAB_THROW_IF(d == 0 || d > (1u << 28), FormatError,
                   "{}: IDX dimension {} is {}, expected 1..2^28", f.path(), i, d);
    dims.push_back(static_cast<std::int64_t>(d));
    total *= static_cast<std::int64_t>(d);
    KVLAB_THROW_IF(total > (std::int64_t(1) << 34), FormatError,
                   "{}: IDX dimensions {} describe more than 16 GiB of data", f.path(),
                   fmt::join(dims, "x"));
  }
  at::Tensor out = at::empty(dims, at::kByte);
  f.read_exact(out.data_ptr<std::uint8_t>(), static_cast<std::size_t>(total),
               "the IDX payload");
  KVLAB_THROW_IF(!f.at_end(), FormatError,
                 "{}: extra bytes after the {} payload declared by the IDX header", f.path(),
                 fmt::join(dims, "x"));
  return out;
}

ImageDataset read_idx_pair(const fs::path& images, const fs::path& labels, int classes) {
  at::Tensor img = read_idx(images);
  at::Tensor lab = read_idx(labels);
  KVLAB_THROW_IF(img.dim() != 3, FormatError,
                 "{}: IDX image file has {} dimensions, expected 3 (N, rows, cols); is it a "
                 "label file?",
                 images.string(), img.dim());
  KVLAB_THROW_IF(lab.dim() != 1, FormatError,
                 "{}: IDX label file has {} dimensions, expected 1 (N); is it an image file?",
                 labels.string(), lab.dim());
  KVLAB_THROW_IF(img.size(0) != lab.size(0), FormatError,
                 "{} holds {} images but {} holds {} labels; the two files must match",
                 images.string(), img.size(0), labels.string(), lab.size(0));
  const int maxlab = lab.max().item<int>();
  KVLAB_THROW_IF(maxlab >= classes, FormatError,
                 "{}: label {} found, expected labels 0..{}", labels.string(), maxlab,
                 classes - 1);
  ImageDataset d;
  d.images = img.unsqueeze(1).contiguous();
  d.labels = lab.to(at::kLong);
  d.classes = classes;
  d.files = {images.string(), labels.string()};
  return d;
}

ImageDataset read_cifar10(const std::vector<fs::path>& batches) {
  constexpr std::int64_t kRecord = 1 + 3 * 32 * 32;
  KVLAB_THROW_IF(batches.empty(), UsageError, "read_cifar10: no batch files given");
  std::vector<at::Tensor> imgs, labs;
  ImageDataset d;
  for (const auto& p : batches) {
    GzFile f(p);
    std::vector<unsigned char> buf;
    std::vector<unsigned char> chunk(1 << 20);
    while (true) {
      const std::size_t n = f.read_some(chunk.data(), chunk.size());
      buf.insert(buf.end(), chunk.begin(), chunk.begin() + static_cast<std::ptrdiff_t>(n));
      if (n < chunk.size()) break;
    }
    const auto size = static_cast<std::int64_t>(buf.size());
    KVLAB_THROW_IF(size == 0 || size % kRecord != 0, FormatError,
                   "{}: {} bytes is not a whole number of CIFAR-10 records ({} bytes each: "
                   "1 label + 3x32x32 pixels); re-download cifar-10-binary.tar.gz",
                   p.string(), size, kRecord);
    const std::int64_t n = size / kRecord;
    at::Tensor img = at::empty({n, 3, 32, 32}, at::kByte);
    at::Tensor lab = at::empty({n}, at::kLong);
    auto* ip = img.data_ptr<std::uint8_t>();
    auto* lp = lab.data_ptr<std::int64_t>();
    for (std::int64_t i = 0; i < n; ++i) {
      const unsigned char* r = buf.data() + i * kRecord;
      KVLAB_THROW_IF(r[0] > 9, FormatError,
                     "{}: record {} has label {}, expected 0..9 (is this the CIFAR-100 "
                     "binary format?)",
                     p.string(), i, int(r[0]));
      lp[i] = r[0];
      std::memcpy(ip + i * (kRecord - 1), r + 1, kRecord - 1);
    }
    imgs.push_back(img);
    labs.push_back(lab);
    d.files.push_back(p.string());
  }
  d.name = "cifar-10";
  d.images = at::cat(imgs, 0);
  d.labels = at::cat(labs, 0);
  d.classes = 10;
  d.class_names = kCifarClasses;
  return d;
}

TrainTest load_image_dataset(const fs::path& dir, DatasetFormat format) {
  std::error_code ec;
  KVLAB_THROW_IF(!fs::is_directory(dir, ec), UsageError,
                 "--data {}: not a directory; give the directory holding the IDX files or the "
                 "CIFAR-10 binary batches",
                 dir.string());
  TrainTest tt;
  const std::string tri = find_variant(dir, "train-images-idx3-ubyte");
  if ((format == DatasetFormat::automatic && !tri.empty()) || format == DatasetFormat::idx) {
    const std::string trl = find_variant(dir, "train-labels-idx1-ubyte");
    const std::string tei = find_variant(dir, "t10k-images-idx3-ubyte");
    const std::string tel = find_variant(dir, "t10k-labels-idx1-ubyte");
    for (const auto& [p, stem] : std::vector<std::pair<std::string, std::string>>{
             {tri, "train-images-idx3-ubyte"}, {trl, "train-labels-idx1-ubyte"},
             {tei, "t10k-images-idx3-ubyte"}, {tel, "t10k-labels-idx1-ubyte"}}) {
      KVLAB_THROW_IF(p.empty(), UsageError,
                     "--data {}: {}[.gz] is missing; an IDX dataset directory needs the train "
                     "and t10k image and label files",
                     dir.string(), stem);
    }
    tt.train = read_idx_pair(tri, trl);
    tt.test = read_idx_pair(tei, tel);
    KVLAB_THROW_IF(tt.train.images.size(2) != tt.test.images.size(2) ||
                       tt.train.images.size(3) != tt.test.images.size(3),
                   FormatError, "{} and {}: train and test images differ in size", tri, tei);
    std::string lower = fs::absolute(dir).lexically_normal().string();
    std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
    const bool fashion = lower.find("fashion") != std::string::npos;
    for (ImageDataset* d : {&tt.train, &tt.test}) {
      d->name = fashion ? "fashion-mnist" : "mnist";
      d->class_names = fashion ? kFashionClasses : kDigitClasses;
    }
    return tt;
  }
  fs::path cdir = dir;
  if (!fs::exists(cdir / "test_batch.bin", ec) && fs::is_directory(dir / "cifar-10-batches-bin", ec))
    cdir = dir / "cifar-10-batches-bin";
  if ((format == DatasetFormat::automatic && fs::exists(cdir / "test_batch.bin", ec)) ||
      format == DatasetFormat::cifar10) {
    std::vector<fs::path> train;
    for (int i = 1; i <= 5; ++i) {
      const fs::path p = cdir / fmt::format("data_batch_{}.bin", i);
      KVLAB_THROW_IF(!fs::exists(p, ec), UsageError,
                     "--data {}: {} is missing; a CIFAR-10 directory needs data_batch_1..5.bin "
                     "and test_batch.bin",
                     dir.string(), p.filename().string());
      train.push_back(p);
    }
    KVLAB_THROW_IF(!fs::exists(cdir / "test_batch.bin", ec), UsageError,
                   "--data {}: test_batch.bin is missing", dir.string());
    tt.train = read_cifar10(train);
    tt.test = read_cifar10({cdir / "test_batch.bin"});
    return tt;
  }
  KVLAB_THROW(UsageError,
              "--data {}: found neither IDX files (train-images-idx3-ubyte[.gz], ...) nor "
              "CIFAR-10 binary batches (data_batch_1.bin, ..., test_batch.bin); for Fashion-MNIST "
              "install Debian's dataset-fashion-mnist ({})",
              dir.string(), kDefaultFashionMnistDir);
}

at::Tensor to_float(const at::Tensor& images_u8, const std::vector<double>& mean,
                    const std::vector<double>& std) {
  at::Tensor x = images_u8.to(at::kFloat).div_(255.0);
  if (!mean.empty()) {
    const auto c = x.size(1);
    KVLAB_THROW_IF(static_cast<std::int64_t>(mean.size()) != c ||
                       static_cast<std::int64_t>(std.size()) != c,
                   UsageError, "to_float: {} channels but {} means and {} stds", c, mean.size(),
                   std.size());
    at::Tensor m = at::tensor(std::vector<float>(mean.begin(), mean.end())).view({1, c, 1, 1});
    at::Tensor s = at::tensor(std::vector<float>(std.begin(), std.end())).view({1, c, 1, 1});
    x = (x - m) / s;
  }
  return x;
}

at::Tensor augment_crop_flip(const at::Tensor& batch, int pad, std::mt19937_64& rng) {
  KVLAB_THROW_IF(batch.dim() != 4, UsageError, "augment_crop_flip: expected [N, C, H, W], got {}",
                 batch.dim());
  const std::int64_t n = batch.size(0), h = batch.size(2), w = batch.size(3);
  at::Tensor padded = at::constant_pad_nd(batch, {pad, pad, pad, pad}, 0.0);
  at::Tensor out = at::empty_like(batch);
  std::uniform_int_distribution<int> off(0, 2 * pad);
  std::bernoulli_distribution flip(0.5);
  for (std::int64_t i = 0; i < n; ++i) {
    const int dy = off(rng), dx = off(rng);
    at::Tensor crop = padded[i].slice(1, dy, dy + h).slice(2, dx, dx + w);
    if (flip(rng)) crop = crop.flip({2});
    out[i].copy_(crop);
  }
  return out;
}

}  // namespace kvlab::core
