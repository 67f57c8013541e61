// Helpers shared by the unit tests: a scratch directory per test binary, small file writers.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "kvlab/core/error.hpp"

namespace kvlab::test {

/// A path inside a per-process scratch directory under the build tree.
inline std::filesystem::path scratch(const std::string& name) {
  static const std::filesystem::path dir = [] {
    auto d = std::filesystem::path(KVLAB_BINARY_DIR) / "test-tmp" /
             ("unit-" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir / name;
}

inline void write_file(const std::filesystem::path& p, const std::string& content) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f << content;
}

inline std::string read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

/// Runs `f`, requires a kvlab::Error with exit code `code`, returns its message.
template <class F>
std::string error_of(F&& f, int code) {
  try {
    f();
  } catch (const Error& e) {
    CHECK(e.exit_code() == code);
    return e.what();
  }
  FAIL("no error thrown");
  return {};
}

inline std::string source_path(const std::string& rel) {
  return std::string(KVLAB_SOURCE_DIR) + "/" + rel;
}

}  // namespace kvlab::test
