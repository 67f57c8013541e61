#include "kvlab/pim/hardware.hpp"

#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "kvlab/core/error.hpp"

namespace kvlab::pim {

using json = nlohmann::json;

namespace {

// One table drives the defaults' sources, the JSON reader and hw_fields(), so they cannot drift.
struct Field {
  const char* name;
  std::function<double(const HwConfig&)> get;
  std::function<void(HwConfig&, double)> set;
  bool integer;
  const char* source;
};

#define KVLAB_HW_INT(f, src)                                      \
  Field {                                                         \
#f, [](const HwConfig& h) { return static_cast<double>(h.f); }, \
        [](HwConfig& h, double v) { h.f = static_cast<decltype(h.f)>(v); }, true, src \
  }
#define KVLAB_HW_REAL(f, src)                                                                      \
  Field {                                                                                          \
#f, [](const HwConfig& h) { return h.f; }, [](HwConfig & h, double v) { h.f = v; }, false, src \
  }

const std::vector<Field>& fields() {
  static const std::vector<Field> t = {
      KVLAB_HW_INT(xbar_rows,
                   "PIMCOMP-NN config.json xbar_size [128,128] (also PUMA MVMU_DIM 128)"),
      KVLAB_HW_INT(xbar_cols, "PIMCOMP-NN config.json xbar_size [128,128]"),
      KVLAB_HW_INT(cell_bits, "PIMCOMP-NN config.json cell_precision 2 (PUMA xbar_bits 2)"),
      KVLAB_HW_INT(weight_bits,
                   "issue 11 test convention (8-bit weights on 2-bit cells); PIMCOMP-NN uses 16"),
      KVLAB_HW_INT(act_bits, "kvlab assumption: 8-bit activations, matching the 8-bit weights"),
      KVLAB_HW_INT(dac_bits, "PIMCOMP-NN config.json dac_resolution 1 (bit-serial inputs)"),
      KVLAB_HW_INT(adc_bits, "PIMCOMP-NN config.json adc_resolution 8 (informational)"),
      KVLAB_HW_INT(xbars_per_core, "PIMCOMP-NN config.json xbar_array_count 64"),
      KVLAB_HW_INT(cores, "PIMCOMP-NN config.json core_cnt 136"),
      KVLAB_HW_INT(
          buffer_bytes_per_core,
          "PUMA simulator include/config.py: a tile of num_ima 8 x num_matrix 2 x 8 physical "
          "crossbars (phy2log_ratio 16/2) = 128 crossbars shares a 64 KB eDRAM ('same as "
          "isaac') -> 32 KB per 64 crossbars"),
      KVLAB_HW_REAL(clock_ghz, "PIMCOMP-NN evaluation/EvaluationConfig.h Frequency 1 GHz"),
      KVLAB_HW_REAL(mvm_step_ns,
                    "PUMA simulator include/constants.py xbar_ip_lat 100 ns (ISAAC's 100 ns "
                    "crossbar read cycle), one 1-bit input step"),
      KVLAB_HW_REAL(mvm_step_pj,
                    "PUMA simulator include/constants.py xbar_ip_pow 1.37*2.0 mW lumped with "
                    "peripherals, x 100 ns = 274 pJ per step"),
      KVLAB_HW_REAL(write_row_cycles,
                    "kvlab assumption [unverified]: an SRAM crossbar row is written in one cycle "
                    "(COMPASS targets SRAM PIM; its write constants are not public)"),
      KVLAB_HW_REAL(write_row_pj,
                    "derived: Horowitz ISSCC'14 45 nm 8 KB SRAM 64-bit access ~10 pJ, x 4 for a "
                    "256-bit row (128 columns x 2 bits) [unverified for PIM arrays]"),
      KVLAB_HW_INT(write_ports, "kvlab assumption: one row write port per core (0 = cores)"),
      KVLAB_HW_REAL(dram_gbps,
                    "PIMCOMP-NN evaluation/EvaluationConfig.h GLOBAL_MEMORY_bandwidth 64 GB/s"),
      KVLAB_HW_REAL(dram_pj_per_bit,
                    "Horowitz ISSCC'14 45 nm DRAM ~1.3-2.6 nJ per 64-bit access (640 pJ per 32 "
                    "bits as reproduced in Han et al. 2016) -> 20 pJ/bit, low end"),
      KVLAB_HW_REAL(vector_bytes_per_ns,
                    "PIMCOMP-NN EvaluationConfig.h VECTOR_process_bytes 64 B per "
                    "VECTOR_unit_latency 10 ns"),
      KVLAB_HW_REAL(vector_pj_per_byte,
                    "PUMA simulator include/constants.py alu_pow_others_dyn 0.373*32/45 mW at 1 ns "
                    "per 8-bit element"),
      KVLAB_HW_REAL(static_mw_per_core,
                    "PIMCOMP-NN config.json adc_static_power 0.322 mW x adc_count 16 per core "
                    "(ADC leakage only)"),
  };
  return t;
}

#undef KVLAB_HW_INT
#undef KVLAB_HW_REAL

}  // namespace

HwConfig default_hw() {
  HwConfig h;
  for (const auto& f : fields()) h.sources[f.name] = f.source;
  return h;
}

std::vector<std::pair<std::string, double>> hw_fields(const HwConfig& hw) {
  std::vector<std::pair<std::string, double>> out;
  for (const auto& f : fields()) out.emplace_back(f.name, f.get(hw));
  return out;
}

void validate_hw(const HwConfig& h, const std::string& where) {
  auto bad = [&](bool cond, const char* field, const std::string& expect, double v) {
    KVLAB_THROW_IF(cond, FormatError, "{}: {} is {} but must be {}", where, field, v, expect);
  };
  bad(h.xbar_rows < 1, "xbar_rows", ">= 1", static_cast<double>(h.xbar_rows));
  bad(h.xbar_cols < 1, "xbar_cols", ">= 1", static_cast<double>(h.xbar_cols));
  KVLAB_THROW_IF(h.cores < 1 || h.xbars_per_core < 1,
                 FormatError,
                 "{}: the chip has zero crossbars (cores {} x xbars_per_core {}); a PIM chip needs "
                 "at least one crossbar: set both to >= 1",
                 where,
                 h.cores,
                 h.xbars_per_core);
  bad(h.cell_bits < 1 || h.cell_bits > 16, "cell_bits", "1..16", h.cell_bits);
  bad(h.weight_bits < 1 || h.weight_bits > 64, "weight_bits", "1..64", h.weight_bits);
  bad(h.act_bits < 1 || h.act_bits > 64, "act_bits", "1..64", h.act_bits);
  bad(h.dac_bits < 1 || h.dac_bits > 64, "dac_bits", "1..64", h.dac_bits);
  bad(h.adc_bits < 1 || h.adc_bits > 64, "adc_bits", "1..64", h.adc_bits);
  bad(h.buffer_bytes_per_core < 0,
      "buffer_bytes_per_core",
      ">= 0",
      static_cast<double>(h.buffer_bytes_per_core));
  bad(!(h.clock_ghz > 0), "clock_ghz", "> 0", h.clock_ghz);
  bad(!(h.mvm_step_ns > 0), "mvm_step_ns", "> 0", h.mvm_step_ns);
  bad(!(h.mvm_step_pj >= 0), "mvm_step_pj", ">= 0", h.mvm_step_pj);
  bad(!(h.write_row_cycles >= 0), "write_row_cycles", ">= 0", h.write_row_cycles);
  bad(!(h.write_row_pj >= 0), "write_row_pj", ">= 0", h.write_row_pj);
  bad(h.write_ports < 0,
      "write_ports",
      ">= 0 (0: one per core)",
      static_cast<double>(h.write_ports));
  bad(!(h.dram_gbps > 0), "dram_gbps", "> 0", h.dram_gbps);
  bad(!(h.dram_pj_per_bit >= 0), "dram_pj_per_bit", ">= 0", h.dram_pj_per_bit);
  bad(!(h.vector_bytes_per_ns > 0), "vector_bytes_per_ns", "> 0", h.vector_bytes_per_ns);
  bad(!(h.vector_pj_per_byte >= 0), "vector_pj_per_byte", ">= 0", h.vector_pj_per_byte);
  bad(!(h.static_mw_per_core >= 0), "static_mw_per_core", ">= 0", h.static_mw_per_core);
}

HwConfig read_hw_json(const std::filesystem::path& path) {
  const std::string where = path.string();
  std::ifstream f(path);
  KVLAB_THROW_IF(!f,
                 FormatError,
                 "{}: no such file or not readable (expected a hardware JSON, see data/hw/)",
                 where);
  json j;
  try {
    j = json::parse(f);
  } catch (const json::parse_error& e) {
    KVLAB_THROW(FormatError, "{}: not valid JSON ({})", where, e.what());
  }
  KVLAB_THROW_IF(!j.is_object(), FormatError, "{}: a hardware config must be a JSON object", where);
  HwConfig h = default_hw();
  h.name = path.stem().string();
  for (const auto& [key, v] : j.items()) {
    if (key == "format") {
      KVLAB_THROW_IF(v != "kvlab-pim-hw",
                     FormatError,
                     "{}: \"format\" is {} but expected \"kvlab-pim-hw\"",
                     where,
                     v.dump());
      continue;
    }
    if (key == "version") {
      KVLAB_THROW_IF(!v.is_number_integer() || v.get<int>() > 1,
                     FormatError,
                     "{}: kvlab-pim-hw version {} is not supported (this kvlab reads 1)",
                     where,
                     v.dump());
      continue;
    }
    if (key == "name" || key == "description") {
      KVLAB_THROW_IF(!v.is_string(), FormatError, "{}: \"{}\" must be a string", where, key);
      (key == "name" ? h.name : h.description) = v.get<std::string>();
      continue;
    }
    const Field* fld = nullptr;
    for (const auto& x : fields())
      if (key == x.name) fld = &x;
    if (!fld) {
      std::string known;
      for (const auto& x : fields()) known += std::string(known.empty() ? "" : ", ") + x.name;
      KVLAB_THROW(FormatError,
                  "{}: unknown key \"{}\"; known keys: name, description, {}",
                  where,
                  key,
                  known);
    }
    json val = v;
    std::string source = fmt::format("{} (value given without a source)", where);
    if (v.is_object()) {
      for (const auto& [k2, _] : v.items())
        KVLAB_THROW_IF(
            k2 != "value" && k2 != "source",
            FormatError,
            "{}: \"{}\" has key \"{}\"; expected {{\"value\": ..., \"source\": \"...\"}}",
            where,
            key,
            k2);
      KVLAB_THROW_IF(!v.contains("value"), FormatError, "{}: \"{}\" needs a \"value\"", where, key);
      val = v["value"];
      if (v.contains("source")) {
        KVLAB_THROW_IF(!v["source"].is_string(),
                       FormatError,
                       "{}: \"{}\".source must be a string",
                       where,
                       key);
        source = v["source"].get<std::string>();
      }
    }
    KVLAB_THROW_IF(!val.is_number(),
                   FormatError,
                   "{}: \"{}\" must be a number, found {}",
                   where,
                   key,
                   val.dump());
    const double d = val.get<double>();
    KVLAB_THROW_IF(!std::isfinite(d), FormatError, "{}: \"{}\" is not finite", where, key);
    KVLAB_THROW_IF(fld->integer && d != std::floor(d),
                   FormatError,
                   "{}: \"{}\" must be an integer, found {}",
                   where,
                   key,
                   d);
    fld->set(h, d);
    h.sources[key] = source;
    h.from_file.push_back(key);
  }
  validate_hw(h, where);
  return h;
}

}  // namespace kvlab::pim
