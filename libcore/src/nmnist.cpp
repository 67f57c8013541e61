// N-MNIST event reader and binning (nmnist.hpp).
#include "kvlab/core/nmnist.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>

#include "kvlab/core/error.hpp"

namespace kvlab::core {

namespace fs = std::filesystem;

std::vector<NmnistEvent> parse_nmnist_events(const std::string& bytes, const std::string& what) {
  KVLAB_THROW_IF(bytes.size() % 5 != 0, FormatError,
                 "{}: {} bytes is not a multiple of 5 (N-MNIST events are 5 bytes each); the file "
                 "is truncated or not an N-MNIST recording",
                 what, bytes.size());
  std::vector<NmnistEvent> ev(bytes.size() / 5);
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  for (std::size_t i = 0; i < ev.size(); ++i, p += 5) {
    KVLAB_THROW_IF(p[0] >= kNmnistSide || p[1] >= kNmnistSide, FormatError,
                   "{}: event {} (byte offset {}) has x={} y={}, expected both in 0..{} (the 34x34 "
                   "ATIS sensor); the file is corrupt or not N-MNIST",
                   what, i, i * 5, p[0], p[1], kNmnistSide - 1);
    ev[i].x = p[0];
    ev[i].y = p[1];
    ev[i].polarity = static_cast<std::uint8_t>(p[2] >> 7);
    ev[i].t_us = (static_cast<std::uint32_t>(p[2] & 0x7F) << 16) |
                 (static_cast<std::uint32_t>(p[3]) << 8) | p[4];
  }
  return ev;
}

std::vector<NmnistEvent> read_nmnist_events(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  KVLAB_THROW_IF(!f, FormatError, "{}: cannot open the N-MNIST recording; check the path",
                 path.string());
  const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  return parse_nmnist_events(bytes, path.string());
}

std::string encode_nmnist_events(const std::vector<NmnistEvent>& events) {
  std::string out;
  out.reserve(events.size() * 5);
  for (const auto& e : events) {
    out.push_back(static_cast<char>(e.x));
    out.push_back(static_cast<char>(e.y));
    out.push_back(static_cast<char>(((e.polarity & 1) << 7) | ((e.t_us >> 16) & 0x7F)));
    out.push_back(static_cast<char>((e.t_us >> 8) & 0xFF));
    out.push_back(static_cast<char>(e.t_us & 0xFF));
  }
  return out;
}

std::int64_t nmnist_bin(std::uint32_t t_us, std::int64_t time_length, double window_ms) {
  if (t_us / 1000.0 >= window_ms) return -1;
  const double bin_us = 1000.0 * (window_ms / static_cast<double>(time_length));
  const auto b = static_cast<std::int64_t>(std::floor(t_us / bin_us));
  return std::min(b, time_length - 1);
}

std::vector<std::uint32_t> bin_nmnist_compact(const std::vector<NmnistEvent>& events,
                                              std::int64_t time_length, double window_ms) {
  KVLAB_THROW_IF(time_length < 1, UsageError, "--time-steps {}: expected >= 1", time_length);
  KVLAB_THROW_IF(!(window_ms > 0), UsageError, "--nmnist-window-ms {}: expected > 0", window_ms);
  std::vector<std::uint32_t> idx;
  idx.reserve(events.size());
  constexpr std::uint32_t plane = kNmnistSide * kNmnistSide;
  for (const auto& e : events) {
    const std::int64_t t = nmnist_bin(e.t_us, time_length, window_ms);
    if (t < 0) continue;
    idx.push_back(static_cast<std::uint32_t>(t) * 2 * plane + e.polarity * plane +
                  e.x * kNmnistSide + e.y);
  }
  std::sort(idx.begin(), idx.end());
  idx.erase(std::unique(idx.begin(), idx.end()), idx.end());
  return idx;
}

at::Tensor bin_nmnist_events(const std::vector<NmnistEvent>& events, std::int64_t time_length,
                             double window_ms) {
  at::Tensor out = at::zeros({time_length * kNmnistFeatures});
  float* p = out.data_ptr<float>();
  for (auto i : bin_nmnist_compact(events, time_length, window_ms)) p[i] = 1.f;
  return out.view({time_length, 2, kNmnistSide, kNmnistSide});
}

at::Tensor NmnistDataset::batch(const std::vector<std::int64_t>& index) const {
  const auto B = static_cast<std::int64_t>(index.size());
  at::Tensor out = at::zeros({time_length, B, kNmnistFeatures});
  float* p = out.data_ptr<float>();
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::uint32_t f : samples.at(static_cast<std::size_t>(index[static_cast<std::size_t>(b)]))) {
      const std::int64_t t = f / kNmnistFeatures, k = f % kNmnistFeatures;
      p[(t * B + b) * kNmnistFeatures + k] = 1.f;
    }
  }
  return out;
}

namespace {

std::vector<fs::path> class_files(const fs::path& dir) {
  std::vector<fs::path> files;
  if (!fs::is_directory(dir)) return files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && e.path().extension() == ".bin") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

bool is_nmnist_root(const fs::path& dir) {
  for (const char* split : {"Train", "Test"})
    if (fs::is_directory(dir / split / "0")) return true;
  return false;
}

NmnistDataset read_nmnist_split(const fs::path& split_dir, std::int64_t time_length,
                                double window_ms, std::int64_t limit) {
  std::vector<std::vector<fs::path>> per_class(10);
  std::size_t total = 0;
  for (int c = 0; c < 10; ++c) {
    per_class[static_cast<std::size_t>(c)] = class_files(split_dir / std::to_string(c));
    total += per_class[static_cast<std::size_t>(c)].size();
  }
  KVLAB_THROW_IF(total == 0, UsageError,
                 "--data {}: no N-MNIST recordings found (expected class folders 0/..9/ of .bin "
                 "files, as in the unzipped Train.zip / Test.zip)",
                 split_dir.string());
  NmnistDataset ds;
  ds.time_length = time_length;
  ds.window_ms = window_ms;
  ds.files.push_back(split_dir.string());
  std::vector<std::int64_t> labels;
  const std::size_t want = limit > 0 ? std::min<std::size_t>(static_cast<std::size_t>(limit), total)
                                     : total;
  for (std::size_t k = 0; ds.samples.size() < want; ++k) {  // round-robin over the classes
    for (int c = 0; c < 10 && ds.samples.size() < want; ++c) {
      const auto& files = per_class[static_cast<std::size_t>(c)];
      if (k >= files.size()) continue;
      ds.samples.push_back(bin_nmnist_compact(read_nmnist_events(files[k]), time_length, window_ms));
      labels.push_back(c);
    }
  }
  ds.labels = at::tensor(labels, at::kLong);
  return ds;
}

}  // namespace kvlab::core
