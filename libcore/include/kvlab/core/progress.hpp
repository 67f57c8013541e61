// Progress reporting. Libraries report through the Progress interface and never print; the front
// end chooses the rendering:
//   - bar:   a redrawn bar with rate and ETA on a terminal (\r, only when stderr is a TTY);
//   - lines: append-only timestamped lines for Slurm logs and CI (a line every 10 % or every
//            `interval` seconds, whichever comes first; never \r);
//   - none:  silent.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace kvlab::core {

using Metrics = std::vector<std::pair<std::string, double>>;

class Progress {
 public:
  virtual ~Progress() = default;
  /// A named stage of a multi-stage job: "=== 2/4 scoring blocks ===".
  virtual void stage(const std::string& name, int index, int count) = 0;
  /// Starts a counted task of `total` units (total <= 0: unknown).
  virtual void begin(const std::string& what, std::int64_t total, const std::string& unit) = 0;
  /// Reports `done` units finished, with running metrics (loss, ppl, ...).
  virtual void update(std::int64_t done, const Metrics& metrics = {}) = 0;
  /// Ends the current task (prints its final line with metrics).
  virtual void end(const Metrics& metrics = {}) = 0;
  /// Set by a signal handler (SIGTERM/SIGUSR1): long loops should checkpoint and stop.
  virtual bool stop_requested() const { return false; }
};

class NullProgress : public Progress {
 public:
  void stage(const std::string&, int, int) override {}
  void begin(const std::string&, std::int64_t, const std::string&) override {}
  void update(std::int64_t, const Metrics& = {}) override {}
  void end(const Metrics& = {}) override {}
};

enum class ProgressMode { automatic, bar, lines, none };

/// Renders progress to a FILE* (stderr in the CLI).
class StreamProgress : public Progress {
 public:
  /// `mode` automatic picks bar when `out` is a terminal, lines otherwise.
  StreamProgress(std::FILE* out, ProgressMode mode, double line_interval_s = 30.0);
  void stage(const std::string& name, int index, int count) override;
  void begin(const std::string& what, std::int64_t total, const std::string& unit) override;
  void update(std::int64_t done, const Metrics& metrics = {}) override;
  void end(const Metrics& metrics = {}) override;
  bool stop_requested() const override;
  ProgressMode mode() const { return mode_; }

 private:
  using Clock = std::chrono::steady_clock;
  void emit_line(std::int64_t done, const Metrics& m, bool final);
  void draw_bar(std::int64_t done, const Metrics& m);
  std::FILE* out_;
  ProgressMode mode_;
  double interval_;
  std::string what_, unit_;
  std::int64_t total_ = 0, last_done_ = 0;
  int last_decile_ = -1;
  Clock::time_point start_, last_emit_, last_draw_;
  bool active_ = false;
  Metrics last_metrics_;
};

/// "ETA 3 min 05 s" from elapsed seconds and the fraction done; empty when unknown.
std::string eta_string(double elapsed_s, double fraction);
std::string format_metrics(const Metrics& m);

/// Process-wide stop flag, set by the CLI's SIGTERM/SIGUSR1 handler and read by stop_requested().
void request_stop();
bool stop_flag();
void clear_stop();

}  // namespace kvlab::core
