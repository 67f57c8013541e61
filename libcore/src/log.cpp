#include "kvlab/core/log.hpp"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>

namespace kvlab::log {
namespace {
const auto g_start = std::chrono::steady_clock::now();
std::atomic<Level> g_level{Level::info};
std::FILE* g_sink = nullptr;
int g_timestamps = -1;  // -1: decide from isatty on first write
std::mutex g_mu;

char level_char(Level l) {
  switch (l) {
    case Level::debug: return 'D';
    case Level::info: return 'I';
    case Level::warn: return 'W';
    case Level::error: return 'E';
    default: return '?';
  }
}
}  // namespace

bool parse_level(const std::string& s, Level& out) {
  if (s == "debug") out = Level::debug;
  else if (s == "info") out = Level::info;
  else if (s == "warn" || s == "warning") out = Level::warn;
  else if (s == "error") out = Level::error;
  else if (s == "off" || s == "none") out = Level::off;
  else return false;
  return true;
}

void set_level(Level l) { g_level.store(l); }
Level level() { return g_level.load(); }

void set_sink(std::FILE* f) {
  std::lock_guard<std::mutex> lk(g_mu);
  g_sink = f;
}

void set_timestamps(bool on) {
  std::lock_guard<std::mutex> lk(g_mu);
  g_timestamps = on ? 1 : 0;
}

double elapsed() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - g_start).count();
}

void write(Level l, const std::string& msg) {
  std::lock_guard<std::mutex> lk(g_mu);
  std::FILE* f = g_sink ? g_sink : stderr;
  if (g_timestamps < 0) g_timestamps = isatty(fileno(f)) ? 0 : 1;
  if (g_timestamps) {
    const double t = elapsed();
    const long ms = static_cast<long>(t * 1000.0);
    // h:mm:ss.mmm since start, then the level letter: "0:01:02.260 I message"
    fmt::print(f, "{}:{:02d}:{:02d}.{:03d} {} {}\n", ms / 3600000, (ms / 60000) % 60,
               (ms / 1000) % 60, ms % 1000, level_char(l), msg);
  } else if (l == Level::info) {
    fmt::print(f, "{}\n", msg);
  } else {
    fmt::print(f, "{}: {}\n", l == Level::warn ? "warning" : l == Level::error ? "error" : "debug",
               msg);
  }
  std::fflush(f);
}

}  // namespace kvlab::log
