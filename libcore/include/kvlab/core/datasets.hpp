// Image-classification datasets read straight from their distribution formats (no conversion
// step): MNIST / Fashion-MNIST IDX files (gzipped or raw) and CIFAR-10 binary batches, plus the
// CIFAR augmentation (random crop with zero padding + horizontal flip). Formats:
// ../shared/reference/bnn_snn.md section 5 and docs/bnn-train.md.
//
// Every malformed file is a kvlab::FormatError (exit 3) naming the file, what was found versus
// expected, and what to do. Images come back as uint8 [N, C, H, W] CPU tensors (planar, row-major),
// labels as int64 [N].
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace kvlab::core {

struct ImageDataset {
  std::string name;      ///< "fashion-mnist", "mnist", "cifar-10"
  at::Tensor images;     ///< uint8 [N, C, H, W]
  at::Tensor labels;     ///< int64 [N], values in [0, classes)
  int classes = 0;
  std::vector<std::string> class_names;
  std::vector<std::string> files;  ///< the files it was read from (for provenance)

  std::int64_t size() const { return images.defined() ? images.size(0) : 0; }
  /// The first `n` samples (n <= 0 or n >= size(): all of them). Shares storage.
  ImageDataset head(std::int64_t n) const;
};

struct TrainTest {
  ImageDataset train;
  ImageDataset test;
};

/// Reads one IDX file (magic 0x0000080D: ubyte, D dims), gzipped or raw (zlib reads both).
/// Returns uint8 with the stored dims. FormatError on a bad magic, a non-ubyte element type,
/// absurd dims or a truncated payload.
at::Tensor read_idx(const std::filesystem::path& path);

/// An IDX image file ([N, H, W] ubyte) + its label file ([N] ubyte, values < classes).
ImageDataset read_idx_pair(const std::filesystem::path& images, const std::filesystem::path& labels,
                           int classes = 10);

/// Reads CIFAR-10 binary batches (records of 1 label byte + 3*32*32 planar RGB bytes).
ImageDataset read_cifar10(const std::vector<std::filesystem::path>& batches);

/// Which format a dataset directory holds.
enum class DatasetFormat { automatic, idx, cifar10 };

/// Loads the train and test splits from a directory:
///  - IDX: {train,t10k}-{images-idx3,labels-idx1}-ubyte, each optionally with .gz
///    (Fashion-MNIST when the directory name contains "fashion", else MNIST class names);
///  - CIFAR-10: data_batch_{1..5}.bin + test_batch.bin (the directory itself or its
///    cifar-10-batches-bin/ subdirectory).
/// UsageError naming --data when the directory holds neither; FormatError for malformed files.
TrainTest load_image_dataset(const std::filesystem::path& dir,
                             DatasetFormat format = DatasetFormat::automatic);

/// The Debian dataset-fashion-mnist location (the default --data).
inline const char* kDefaultFashionMnistDir = "/usr/share/datasets/fashion-mnist";

/// Converts a uint8 batch to float32 in [0, 1], then normalises per channel with `mean`/`std`
/// (empty: no normalisation).
at::Tensor to_float(const at::Tensor& images_u8, const std::vector<double>& mean = {},
                    const std::vector<double>& std = {});

/// CIFAR-style augmentation on a float [N, C, H, W] batch: pads each image by `pad` zeros on
/// every side, takes a random HxW crop and flips it horizontally with probability 1/2. The
/// randomness comes from `rng`, so a run is reproducible from its seed.
at::Tensor augment_crop_flip(const at::Tensor& batch, int pad, std::mt19937_64& rng);

}  // namespace kvlab::core
