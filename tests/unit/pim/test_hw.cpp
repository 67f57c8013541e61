// Hardware configs: data/hw files restate the built-in defaults with sources, and bad configs
// are FormatErrors (exit 3).
#include <doctest/doctest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "../test_util.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/pim/hardware.hpp"

using namespace kvlab;

TEST_CASE("data/hw/pimcomp-default.json equals the built-in defaults, every field sourced") {
  const pim::HwConfig def = pim::default_hw();
  const pim::HwConfig file = pim::read_hw_json(test::source_path("data/hw/pimcomp-default.json"));
  const auto a = pim::hw_fields(def), b = pim::hw_fields(file);
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    CAPTURE(a[i].first);
    CHECK(a[i].second == b[i].second);
    CHECK(file.sources.at(a[i].first) == def.sources.at(a[i].first));  // same words in both places
    CHECK_FALSE(def.sources.at(a[i].first).empty());
  }
  CHECK(file.from_file.size() == a.size());
  CHECK(def.capacity() == 8704);
}

TEST_CASE("data/hw/compass-small.json is too small for the three COMPASS networks") {
  const pim::HwConfig hw = pim::read_hw_json(test::source_path("data/hw/compass-small.json"));
  CHECK(hw.name == "compass-small");
  CHECK(hw.capacity() == 256);
  CHECK(hw.capacity() < 359);  // SqueezeNet
  CHECK(hw.sources.at("cores").find("kvlab choice") != std::string::npos);
}

TEST_CASE("bad hardware configs exit 3 with the field and the fix") {
  const auto p = test::scratch("hw.json");
  auto err = [&](const std::string& text) -> std::string {
    test::write_file(p, text);
    try {
      pim::read_hw_json(p);
    } catch (const FormatError& e) {
      CHECK(e.exit_code() == kExitBadFile);
      return e.what();
    }
    return "";
  };
  CHECK(err(R"({"cores": 0})").find("zero crossbars") != std::string::npos);
  CHECK(err(R"({"xbars_per_core": {"value": 0, "source": "test"}})").find("zero crossbars") !=
        std::string::npos);
  CHECK(err(R"({"corez": 4})").find("unknown key \"corez\"") != std::string::npos);
  CHECK(err(R"({"cores": 2.5})").find("must be an integer") != std::string::npos);
  CHECK(err(R"({"dram_gbps": -1})").find("dram_gbps is -1 but must be > 0") != std::string::npos);
  CHECK(err(R"({"cores": "many"})").find("must be a number") != std::string::npos);
  CHECK(err(R"({"cores": {"val": 4}})").find("expected {\"value\"") != std::string::npos);
  CHECK(err("[1, 2]").find("must be a JSON object") != std::string::npos);
  CHECK(err("{").find("not valid JSON") != std::string::npos);
  CHECK(err(R"({"cores": 4, "name": "mine"})").empty());
  const pim::HwConfig ok = pim::read_hw_json(p);
  CHECK(ok.name == "mine");
  CHECK(ok.cores == 4);
  CHECK(ok.sources.at("cores").find("value given without a source") != std::string::npos);
  CHECK_THROWS_AS(pim::read_hw_json("/nonexistent/hw.json"), FormatError);
}
