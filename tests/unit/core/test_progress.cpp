// Progress rendering: lines mode never uses \r (Slurm logs), reports every 10 %, ends with a
// summary; bar mode redraws in place.
#include <doctest/doctest.h>

#include <cstdio>
#include <string>

#include "kvlab/core/log.hpp"
#include "kvlab/core/progress.hpp"
#include "kvlab/core/runtime.hpp"

using namespace kvlab;

namespace {
std::string slurp(std::FILE* f) {
  std::fflush(f);
  std::rewind(f);
  std::string s;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  return s;
}
int count(const std::string& s, const std::string& sub) {
  int c = 0;
  for (std::size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + 1)) ++c;
  return c;
}
}  // namespace

TEST_CASE("lines mode: append-only, timestamped, every 10 percent") {
  std::FILE* f = std::tmpfile();
  log::set_sink(f);
  log::set_timestamps(true);
  {
    core::StreamProgress p(f, core::ProgressMode::lines, 1e9);
    p.stage("scoring blocks", 2, 4);
    p.begin("windows", 100, "win");
    for (int i = 1; i <= 100; ++i) p.update(i, {{"loss", 2.5}});
    p.end({{"ppl", 12.25}});
  }
  const std::string out = slurp(f);
  log::set_sink(nullptr);
  std::fclose(f);
  CHECK(out.find('\r') == std::string::npos);
  CHECK(count(out, "=== 2/4 scoring blocks ===") == 1);
  CHECK(count(out, "windows: ") == 10);  // 10 %..90 % and the final line
  CHECK(count(out, "(50%)") == 1);
  CHECK(out.find("loss=2.5") != std::string::npos);
  CHECK(out.find("100/100 win (100%)") != std::string::npos);
  CHECK(out.find("ppl=12.25") != std::string::npos);
  // Each line starts with the elapsed time and the level letter: "0:00:00.001 I ..."
  CHECK(out.rfind("0:00:", 0) == 0);
  CHECK(out.find(" I ") != std::string::npos);
}

TEST_CASE("bar mode redraws with carriage returns and ends the line") {
  std::FILE* f = std::tmpfile();
  {
    core::StreamProgress p(f, core::ProgressMode::bar);
    p.begin("train", 10, "steps");
    for (int i = 1; i <= 10; ++i) p.update(i);
    p.end();
  }
  const std::string out = slurp(f);
  std::fclose(f);
  CHECK(out.find('\r') != std::string::npos);
  CHECK(out.find("[##############################] 10/10 steps") != std::string::npos);
  CHECK(out.back() == '\n');
}

TEST_CASE("automatic mode picks lines for a file") {
  std::FILE* f = std::tmpfile();
  core::StreamProgress p(f, core::ProgressMode::automatic);
  CHECK(p.mode() == core::ProgressMode::lines);
  std::fclose(f);
}

TEST_CASE("eta and metric formatting") {
  CHECK(core::eta_string(10.0, 0.5) == "ETA 10.0 s");
  CHECK(core::eta_string(60.0, 0.25) == "ETA 3 min 00 s");
  CHECK(core::eta_string(1.0, 0.0).empty());
  CHECK(core::format_metrics({{"loss", 1.23456}, {"acc", 0.5}}) == "loss=1.235 acc=0.5");
  CHECK(core::human_seconds(7500) == "2 h 05 min");
}

TEST_CASE("stop flag") {
  core::NullProgress n;
  CHECK_FALSE(n.stop_requested());
  std::FILE* f = std::tmpfile();
  core::StreamProgress p(f, core::ProgressMode::none);
  CHECK_FALSE(p.stop_requested());
  core::request_stop();
  CHECK(p.stop_requested());
  core::clear_stop();
  std::fclose(f);
}
