// A read-only regular file opened for positioned reads: the one owner of the file descriptor that
// the safetensors and GGUF readers share (open with kvlab's messages, pread_all, close on scope exit).
#pragma once

#include <cstdint>
#include <string>

namespace kvlab::llm {

class ReadOnlyFile {
 public:
  ReadOnlyFile() = default;
  /// Opens `path`; FormatError (exit 3) when it is missing, not a regular file or unreadable.
  static ReadOnlyFile open(const std::string& path);
  ReadOnlyFile(ReadOnlyFile&& o) noexcept;
  ReadOnlyFile& operator=(ReadOnlyFile&& o) noexcept;
  ReadOnlyFile(const ReadOnlyFile&) = delete;
  ReadOnlyFile& operator=(const ReadOnlyFile&) = delete;
  ~ReadOnlyFile();

  std::uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }
  /// Reads exactly n bytes at `off`; FormatError naming `what` when the file ends first.
  void pread_all(void* out, std::uint64_t n, std::uint64_t off, const std::string& what) const;

 private:
  int fd_ = -1;
  std::uint64_t size_ = 0;
  std::string path_;
};

}  // namespace kvlab::llm
