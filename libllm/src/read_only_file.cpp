#include "kvlab/llm/read_only_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "kvlab/core/error.hpp"

namespace kvlab::llm {

ReadOnlyFile ReadOnlyFile::open(const std::string& p) {
  ReadOnlyFile f;
  f.path_ = p;
  f.fd_ = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  KVLAB_THROW_IF(f.fd_ < 0 && errno == ENOENT, FormatError, "{}: no such file", p);
  KVLAB_THROW_IF(f.fd_ < 0, FormatError, "{}: cannot open: {}", p, std::strerror(errno));
  struct stat st {};
  KVLAB_THROW_IF(::fstat(f.fd_, &st) != 0, IoError, "{}: cannot stat: {}", p, std::strerror(errno));
  KVLAB_THROW_IF(!S_ISREG(st.st_mode), FormatError, "{}: not a regular file", p);
  f.size_ = static_cast<std::uint64_t>(st.st_size);
  return f;
}

ReadOnlyFile::ReadOnlyFile(ReadOnlyFile&& o) noexcept { *this = std::move(o); }

ReadOnlyFile& ReadOnlyFile::operator=(ReadOnlyFile&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    size_ = o.size_;
    path_ = std::move(o.path_);
    o.fd_ = -1;
  }
  return *this;
}

ReadOnlyFile::~ReadOnlyFile() {
  if (fd_ >= 0) ::close(fd_);
}

void ReadOnlyFile::pread_all(void* out, std::uint64_t n, std::uint64_t off,
                             const std::string& what) const {
  auto* p = static_cast<char*>(out);
  while (n > 0) {
    const std::size_t chunk = static_cast<std::size_t>(std::min<std::uint64_t>(n, 1u << 30));
    const ssize_t r = ::pread(fd_, p, chunk, static_cast<off_t>(off));
    if (r < 0 && errno == EINTR) continue;
    KVLAB_THROW_IF(r < 0, IoError, "{}: cannot read {}: {}", path_, what, std::strerror(errno));
    KVLAB_THROW_IF(r == 0, FormatError,
                   "{}: unexpected end of file reading {} (the file is truncated or changed "
                   "while kvlab read it); copy it again",
                   path_, what);
    p += r;
    n -= static_cast<std::uint64_t>(r);
    off += static_cast<std::uint64_t>(r);
  }
}

}  // namespace kvlab::llm
