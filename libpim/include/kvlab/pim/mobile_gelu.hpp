// mobile-plan gelu: the GELU variants a mobile graph can use, evaluated in emulated fp16 (every
// intermediate rounded to IEEE binary16, round-to-nearest-even) over every fp16 input in a range:
// max error versus fp64 erf-GELU and the first input where each variant produces Inf/NaN.
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace kvlab::pim {

/// Rounds a double to the nearest IEEE binary16 value (ties to even), returned as a double:
/// overflow gives +-Inf, tiny values go subnormal then to signed zero, NaN stays NaN.
double round_fp16(double x);

/// The variants, by name: erf (exact), tanh-naive (tanh as (e^{2z}-1)/(e^{2z}+1)), tanh-clamped
/// (the same with z clamped to [-clamp, clamp]), sigmoid (x / (1 + e^{-1.702 x})).
std::vector<std::string> gelu_variants();
/// One variant at x; with fp16 every intermediate is rounded to binary16, otherwise fp64.
double gelu_eval(const std::string& variant, double x, bool fp16, double clamp = 5.0);
/// fp64 erf GELU.
double gelu_exact(double x);

struct GeluOptions {
  double lo = -100, hi = 100;
  std::string dtype = "fp16";  ///< fp16 or fp32 (fp32: every intermediate rounded to float)
  double clamp = 5.0;          ///< tanh-clamped: |z| limit
};

struct GeluRow {
  std::string variant;
  double max_abs_err = 0;   ///< over finite outputs, vs fp64 erf-GELU at the same input
  double max_abs_err_at = 0;
  double max_rel_err = 0;   ///< over |gelu(x)| >= 1e-2
  long nonfinite = 0;       ///< inputs giving Inf/NaN
  bool has_pos = false, has_neg = false;
  double first_nonfinite_pos = 0;  ///< smallest x >= 0 giving Inf/NaN (when has_pos)
  double first_nonfinite_neg = 0;  ///< largest x <= 0 giving Inf/NaN (when has_neg)
  std::string first_kind;          ///< "nan" or "inf" at first_nonfinite_pos (or neg)
};

struct GeluSweep {
  GeluOptions opt;
  long points = 0;  ///< inputs swept: every finite binary16 value in [lo, hi] (for both dtypes)
  double floor_err = 0;  ///< max |round(gelu_exact(x)) - gelu_exact(x)|: the best any variant can do
  std::vector<GeluRow> rows;
};

GeluSweep gelu_sweep(const GeluOptions& opt);
std::string format_gelu(const GeluSweep& s);
nlohmann::json gelu_json(const GeluSweep& s);

}  // namespace kvlab::pim
