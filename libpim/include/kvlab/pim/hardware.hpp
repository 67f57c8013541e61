// The crossbar PIM chip that pim-compile targets: organisation, precisions and the latency/energy
// constants of the cost model, each with the source of its default (docs/pim-compile.md lists
// them; data/hw/*.json restate them). JSON reader with per-field sources.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace kvlab::pim {

struct HwConfig {
  std::string name = "pimcomp-default";
  std::string description =
      "PIMCOMP-NN's chip organisation (136 cores x 64 crossbars of 128x128, 2-bit cells) with "
      "PUMA/ISAAC crossbar timing and energy";

  // Organisation.
  std::int64_t xbar_rows = 128;  ///< crossbar word lines (inputs)
  std::int64_t xbar_cols = 128;  ///< crossbar bit lines (outputs)
  int cell_bits = 2;             ///< bits stored per cell
  int weight_bits = 8;           ///< default weight precision (a layer may override)
  int act_bits = 8;              ///< activation precision (DRAM traffic, input bit-serial steps)
  int dac_bits = 1;              ///< input bits applied per MVM step
  int adc_bits = 8;              ///< reported; folded into the MVM constants
  std::int64_t xbars_per_core = 64;
  std::int64_t cores = 136;
  std::int64_t buffer_bytes_per_core = 32768;  ///< on-chip activation buffer

  // Timing and energy.
  double clock_ghz = 1.0;
  double mvm_step_ns = 100.0;     ///< one crossbar MVM step (dac_bits of every input), incl. ADC
  double mvm_step_pj = 274.0;     ///< energy of one such step of one crossbar, incl. peripherals
  double write_row_cycles = 1.0;  ///< cycles to program one crossbar row (one write instruction)
  double write_row_pj = 40.0;     ///< energy to program one crossbar row
  std::int64_t write_ports =
      0;                    ///< crossbar rows programmed concurrently chip-wide (0: one per core)
  double dram_gbps = 64.0;  ///< external memory bandwidth, GB/s (= bytes per ns)
  double dram_pj_per_bit = 20.0;     ///< external memory access energy
  double vector_bytes_per_ns = 6.4;  ///< one core's vector unit (pool, add, activation, ...)
  double vector_pj_per_byte = 0.265;
  double static_mw_per_core = 5.152;  ///< leakage, charged for the whole chip over the run time

  /// Field name -> where its default (or file) value comes from.
  std::map<std::string, std::string> sources;
  /// Fields whose value came from a file rather than the built-in default.
  std::vector<std::string> from_file;

  std::int64_t capacity() const { return xbars_per_core * cores; }
  /// Columns one weight occupies: ceil(weight_bits / cell_bits).
  int cells_per_weight(int wbits) const { return (wbits + cell_bits - 1) / cell_bits; }
  /// MVM steps per input vector: ceil(act_bits / dac_bits).
  int input_steps() const { return (act_bits + dac_bits - 1) / dac_bits; }
  double mvm_ns() const { return input_steps() * mvm_step_ns; }
  double mvm_pj() const { return input_steps() * mvm_step_pj; }
  double write_row_ns() const { return write_row_cycles / clock_ghz; }
  std::int64_t effective_write_ports() const { return write_ports > 0 ? write_ports : cores; }
  std::int64_t buffer_bytes() const { return buffer_bytes_per_core * cores; }
  double static_mw() const { return static_mw_per_core * static_cast<double>(cores); }
};

/// The built-in defaults, with their sources filled in.
HwConfig default_hw();

/// Reads a hardware JSON file (docs/pim-compile.md, data/hw/*.json). Each field is a number or
/// {"value": number, "source": "..."}; absent fields keep their default. FormatError (exit 3)
/// for unknown keys, wrong types, or values that make no chip (zero crossbars, ...).
HwConfig read_hw_json(const std::filesystem::path& path);

/// Checks that the config describes a usable chip; FormatError naming `where` otherwise.
void validate_hw(const HwConfig& hw, const std::string& where);

/// Numeric fields in a fixed order (for the artifact and --json): name, value.
std::vector<std::pair<std::string, double>> hw_fields(const HwConfig& hw);

}  // namespace kvlab::pim
