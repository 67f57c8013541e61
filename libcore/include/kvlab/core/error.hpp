// Typed errors and exit codes. Every user-facing failure in kvlab is one of these; main() maps
// them to the process exit code (0 ok, 1 runtime failure, 2 usage, 3 bad or incompatible file).
//
// Messages have three parts: what file or option, what was found versus expected, what to do:
//   "in.h5: artifact kind is \"eval-report\" but this command needs \"model\"; run 'kvlab inspect in.h5'"
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace kvlab {

inline constexpr int kExitOk = 0;
inline constexpr int kExitRuntime = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitBadFile = 3;

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg, int code = kExitRuntime)
      : std::runtime_error(msg), code_(code) {}
  int exit_code() const noexcept { return code_; }

 private:
  int code_;
};

/// Bad command line: an option value out of range, an impossible combination. Exit code 2.
class UsageError : public Error {
 public:
  explicit UsageError(const std::string& msg) : Error(msg, kExitUsage) {}
};

/// An input file that is missing, corrupt, of the wrong kind or an unsupported version. Exit 3:
/// "rebuild the upstream artifact", not a crash.
class FormatError : public Error {
 public:
  explicit FormatError(const std::string& msg) : Error(msg, kExitBadFile) {}
};

/// Failure to read or write where the input itself is fine (disk full, permission). Exit code 1.
class IoError : public Error {
 public:
  explicit IoError(const std::string& msg) : Error(msg, kExitRuntime) {}
};

namespace detail {
template <class E>
[[noreturn]] void throw_error(const char* file, int line, std::string msg) {
#ifndef NDEBUG
  msg += fmt::format(" [{}:{}]", file, line);
#endif
  throw E(msg);
}
}  // namespace detail

}  // namespace kvlab

/// KVLAB_THROW_IF(cond, FormatError, "{}: bad thing {}", path, x): throws kvlab::<Type> with the
/// formatted message when cond holds; debug builds append file:line.
#define KVLAB_THROW_IF(cond, Type, ...)                                                        \
  do {                                                                                         \
    if (cond) ::kvlab::detail::throw_error<::kvlab::Type>(__FILE__, __LINE__,                  \
                                                          ::fmt::format(__VA_ARGS__));         \
  } while (0)

#define KVLAB_THROW(Type, ...) KVLAB_THROW_IF(true, Type, __VA_ARGS__)
