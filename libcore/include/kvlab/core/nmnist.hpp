// N-MNIST (Orchard et al. 2015) event recordings read straight from the distribution's .bin files,
// and their binning into T time steps (../shared/reference/bnn_snn.md section 5.3).
//
// File format: a sequence of 40-bit events, 5 bytes each:
//   byte 0 = x (0..33), byte 1 = y (0..33), byte 2 bit 7 = polarity (1 ON, 0 OFF),
//   timestamp (us) = (byte2 & 0x7F) << 16 | byte3 << 8 | byte4  (23 bits).
// A split directory (Train/ or Test/) holds class folders 0/ .. 9/ of NNNNN.bin files.
// Malformed files are a kvlab::FormatError (exit 3) naming the file and the offending event.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace kvlab::core {

inline constexpr int kNmnistSide = 34;
inline constexpr std::int64_t kNmnistFeatures = 2 * kNmnistSide * kNmnistSide;  // 2312

struct NmnistEvent {
  std::uint8_t x = 0;
  std::uint8_t y = 0;
  std::uint8_t polarity = 0;  ///< 1 ON, 0 OFF
  std::uint32_t t_us = 0;
};

/// Decodes the bytes of one recording; `what` names the source in error messages.
std::vector<NmnistEvent> parse_nmnist_events(const std::string& bytes, const std::string& what);
/// Reads one .bin recording (FormatError: size not a multiple of 5, x or y outside 0..33).
std::vector<NmnistEvent> read_nmnist_events(const std::filesystem::path& path);
/// Encodes events back to the 5-byte format (for fixtures and tests).
std::string encode_nmnist_events(const std::vector<NmnistEvent>& events);

/// Time bin of an event when the first `window_ms` of the recording is split into T bins
/// (ANTLR's nmnist_dataset.py: floor(t_us / (1000 window_ms / T))); -1 outside the window.
std::int64_t nmnist_bin(std::uint32_t t_us, std::int64_t time_length, double window_ms);

/// Sorted unique flat indices t * 2312 + polarity * 1156 + x * 34 + y of the occupied bins: the
/// binned sample in compact form (events outside the window are dropped).
std::vector<std::uint32_t> bin_nmnist_compact(const std::vector<NmnistEvent>& events,
                                              std::int64_t time_length, double window_ms);
/// Dense binary frames [T, 2, 34, 34] float32, indexed [t, polarity, x, y] as the reference.
at::Tensor bin_nmnist_events(const std::vector<NmnistEvent>& events, std::int64_t time_length,
                             double window_ms = 300.0);

/// One split, binned once at load time (a binning cache: no per-epoch decoding).
struct NmnistDataset {
  std::int64_t time_length = 0;
  double window_ms = 300.0;
  std::vector<std::vector<std::uint32_t>> samples;  ///< compact binned samples
  at::Tensor labels;                                ///< int64 [N]
  std::vector<std::string> files;                   ///< the split directory (for provenance)
  std::int64_t size() const { return static_cast<std::int64_t>(samples.size()); }
  /// Dense input of the samples `index` [B]: float32 [T, B, 2312].
  at::Tensor batch(const std::vector<std::int64_t>& index) const;
};

/// True when `dir` looks like an N-MNIST root (has Train/ or Test/ with class folders 0..9).
bool is_nmnist_root(const std::filesystem::path& dir);
/// Reads a split directory (class folders 0..9 of .bin files). `limit` > 0 keeps that many
/// files, taken round-robin over the classes so a small limit stays class-balanced. UsageError
/// when the directory has no class folders; FormatError for a malformed file.
NmnistDataset read_nmnist_split(const std::filesystem::path& split_dir, std::int64_t time_length,
                                double window_ms = 300.0, std::int64_t limit = 0);

}  // namespace kvlab::core
