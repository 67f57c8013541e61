// Logging to stderr (never stdout: stdout carries results only). On a terminal lines are plain
// ("W message"); otherwise each line carries the elapsed time and level, like llama.cpp's
// "0.01.062 I message", so Slurm logs can be read after the fact.
#pragma once

#include <fmt/format.h>

#include <cstdio>
#include <string>

namespace kvlab::log {

enum class Level { debug = 0, info = 1, warn = 2, error = 3, off = 4 };

/// Parses "debug|info|warn|error|off".
bool parse_level(const std::string& s, Level& out);
void set_level(Level l);
Level level();
/// Where lines go (default stderr) and whether to add timestamps (default: when not a TTY).
void set_sink(std::FILE* f);
void set_timestamps(bool on);
/// Seconds since process start (the clock the timestamps use).
double elapsed();

void write(Level l, const std::string& msg);

template <class... A>
void debug(fmt::format_string<A...> f, A&&... a) {
  if (level() <= Level::debug) write(Level::debug, fmt::format(f, std::forward<A>(a)...));
}
template <class... A>
void info(fmt::format_string<A...> f, A&&... a) {
  if (level() <= Level::info) write(Level::info, fmt::format(f, std::forward<A>(a)...));
}
template <class... A>
void warn(fmt::format_string<A...> f, A&&... a) {
  if (level() <= Level::warn) write(Level::warn, fmt::format(f, std::forward<A>(a)...));
}
template <class... A>
void error(fmt::format_string<A...> f, A&&... a) {
  if (level() <= Level::error) write(Level::error, fmt::format(f, std::forward<A>(a)...));
}

}  // namespace kvlab::log
