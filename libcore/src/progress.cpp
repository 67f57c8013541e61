#include "kvlab/core/progress.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>

#include "kvlab/core/log.hpp"
#include "kvlab/core/runtime.hpp"

namespace kvlab::core {
namespace {
std::atomic<bool> g_stop{false};
}

void request_stop() { g_stop.store(true); }
bool stop_flag() { return g_stop.load(); }
void clear_stop() { g_stop.store(false); }

std::string eta_string(double elapsed_s, double fraction) {
  if (fraction <= 0.0 || fraction >= 1.0 || elapsed_s <= 0.0) return {};
  return "ETA " + human_seconds(elapsed_s * (1.0 - fraction) / fraction);
}

std::string format_metrics(const Metrics& m) {
  std::string s;
  for (const auto& [k, v] : m) {
    if (!s.empty()) s += " ";
    s += fmt::format("{}={:.4g}", k, v);
  }
  return s;
}

StreamProgress::StreamProgress(std::FILE* out, ProgressMode mode, double line_interval_s)
    : out_(out), mode_(mode), interval_(line_interval_s) {
  if (mode_ == ProgressMode::automatic)
    mode_ = (out_ && isatty(fileno(out_))) ? ProgressMode::bar : ProgressMode::lines;
}

bool StreamProgress::stop_requested() const { return stop_flag(); }

void StreamProgress::stage(const std::string& name, int index, int count) {
  if (mode_ == ProgressMode::none) return;
  if (count > 0)
    log::info("=== {}/{} {} ===", index, count, name);
  else
    log::info("=== {} ===", name);
}

void StreamProgress::begin(const std::string& what, std::int64_t total, const std::string& unit) {
  what_ = what;
  unit_ = unit;
  total_ = total;
  last_done_ = 0;
  last_decile_ = 0;
  start_ = last_emit_ = last_draw_ = Clock::now();
  active_ = true;
  last_metrics_.clear();
}

void StreamProgress::update(std::int64_t done, const Metrics& metrics) {
  if (!active_ || mode_ == ProgressMode::none) return;
  last_done_ = done;
  last_metrics_ = metrics;
  const auto now = Clock::now();
  if (mode_ == ProgressMode::bar) {
    if (std::chrono::duration<double>(now - last_draw_).count() >= 0.1 || done == total_) {
      draw_bar(done, metrics);
      last_draw_ = now;
    }
    return;
  }
  const int decile = total_ > 0 ? static_cast<int>(10 * done / total_) : 0;
  const double since = std::chrono::duration<double>(now - last_emit_).count();
  if (((total_ > 0 && decile > last_decile_) || since >= interval_) && done != total_) {
    last_decile_ = decile;
    emit_line(done, metrics, false);
    last_emit_ = now;
  }
}

void StreamProgress::end(const Metrics& metrics) {
  if (!active_) return;
  active_ = false;
  if (mode_ == ProgressMode::none) return;
  const Metrics& m = metrics.empty() ? last_metrics_ : metrics;
  if (mode_ == ProgressMode::bar) {
    draw_bar(total_ > 0 ? total_ : last_done_, m);
    std::fputc('\n', out_);
    std::fflush(out_);
    return;
  }
  emit_line(total_ > 0 ? total_ : last_done_, m, true);
}

void StreamProgress::emit_line(std::int64_t done, const Metrics& m, bool final) {
  const double el = std::chrono::duration<double>(Clock::now() - start_).count();
  std::string line = what_ + ": ";
  if (total_ > 0)
    line += fmt::format("{}/{} {} ({:.0f}%)", done, total_, unit_, 100.0 * done / total_);
  else
    line += fmt::format("{} {}", done, unit_);
  if (el > 0 && done > 0) line += fmt::format(", {:.3g} {}/s", done / el, unit_);
  if (!final && total_ > 0) {
    const std::string eta = eta_string(el, static_cast<double>(done) / total_);
    if (!eta.empty()) line += ", " + eta;
  }
  if (final) line += ", " + human_seconds(el);
  if (!m.empty()) line += ", " + format_metrics(m);
  log::info("{}", line);
}

void StreamProgress::draw_bar(std::int64_t done, const Metrics& m) {
  const double el = std::chrono::duration<double>(Clock::now() - start_).count();
  const double frac = total_ > 0 ? std::clamp(static_cast<double>(done) / total_, 0.0, 1.0) : 0.0;
  constexpr int width = 30;
  const int filled = static_cast<int>(frac * width);
  std::string bar(static_cast<std::size_t>(filled), '#');
  bar.append(static_cast<std::size_t>(width - filled), '.');
  std::string line = fmt::format("\r{} [{}] ", what_, bar);
  if (total_ > 0)
    line += fmt::format("{}/{} {}", done, total_, unit_);
  else
    line += fmt::format("{} {}", done, unit_);
  if (el > 0 && done > 0) line += fmt::format(" {:.3g} {}/s", done / el, unit_);
  const std::string eta = eta_string(el, frac);
  if (!eta.empty()) line += " " + eta;
  if (!m.empty()) line += " " + format_metrics(m);
  line += "\x1b[K";  // clear to end of line
  std::fputs(line.c_str(), out_);
  std::fflush(out_);
}

}  // namespace kvlab::core
