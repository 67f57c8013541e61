// GELU variants in emulated fp16/fp32. Emulation: every arithmetic result and every libm result
// (exp, erf) is computed in double and then rounded once to the target format. For + - * / that is
// exactly the correctly rounded fp16 operation (double has more than 2*11+2 bits, so the double
// rounding is innocuous); for exp/erf it is the correctly rounded value of the (near-exact) libm
// result, i.e. an ideal fp16 exp/erf. Real kernels may be less accurate, never more overflow-safe.
#include "kvlab/pim/mobile_gelu.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "kvlab/core/error.hpp"

namespace kvlab::pim {

double round_fp16(double x) {
  if (std::isnan(x) || std::isinf(x) || x == 0) return x;
  const double a = std::fabs(x);
  // Largest finite binary16 is 65504; halfway to the next (65536) rounds to even = Inf.
  if (a >= 65520.0) return std::copysign(std::numeric_limits<double>::infinity(), x);
  int e = std::ilogb(a);  // a in [2^e, 2^(e+1))
  if (e < -14) e = -14;   // subnormals share the exponent of the smallest normal
  const double ulp = std::ldexp(1.0, e - 10);
  const double r = std::nearbyint(a / ulp) * ulp;  // a/ulp is exact (power-of-two scaling)
  return std::copysign(r, x);
}

namespace {

double round_to(double x, bool fp16) {
  return fp16 ? round_fp16(x) : static_cast<double>(static_cast<float>(x));
}

}  // namespace

std::vector<std::string> gelu_variants() {
  return {"erf", "tanh-naive", "tanh-clamped", "sigmoid"};
}

double gelu_exact(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }

double gelu_eval(const std::string& v, double x, bool fp16, double clamp) {
  auto r = [&](double y) { return round_to(y, fp16); };
  x = r(x);
  if (v == "erf") {
    const double t = r(x * r(1.0 / std::sqrt(2.0)));
    const double e = r(std::erf(t));
    return r(r(0.5 * x) * r(1.0 + e));
  }
  if (v == "tanh-naive" || v == "tanh-clamped") {
    double u = r(x * x);
    u = r(u * x);
    u = r(r(0.044715) * u);
    u = r(x + u);
    double z = r(r(std::sqrt(2.0 / M_PI)) * u);
    if (v == "tanh-clamped") z = std::isnan(z) ? z : std::fmin(std::fmax(z, -clamp), clamp);
    const double e = r(std::exp(r(2.0 * z)));
    const double th = r(r(e - 1.0) / r(e + 1.0));
    return r(r(0.5 * x) * r(1.0 + th));
  }
  if (v == "sigmoid") {
    const double e = r(std::exp(r(r(-1.702) * x)));
    return r(x / r(1.0 + e));
  }
  KVLAB_THROW(UsageError,
              "GELU variant \"{}\" is unknown; expected erf, tanh-naive, tanh-clamped or sigmoid",
              v);
}

GeluSweep gelu_sweep(const GeluOptions& opt) {
  KVLAB_THROW_IF(!(opt.lo < opt.hi),
                 UsageError,
                 "--min {} must be below --max {}",
                 opt.lo,
                 opt.hi);
  KVLAB_THROW_IF(opt.dtype != "fp16" && opt.dtype != "fp32",
                 UsageError,
                 "--dtype {} is not supported; expected fp16 or fp32",
                 opt.dtype);
  const bool fp16 = opt.dtype == "fp16";
  GeluSweep s;
  s.opt = opt;
  // Every finite binary16 value in [lo, hi], in increasing order: negatives from the most
  // negative, then zero and positives. Built from bit patterns so no value is skipped.
  std::vector<double> xs;
  for (int sign = 1; sign >= 0; --sign) {
    std::vector<double> half;
    for (std::uint32_t bits = 0; bits < 0x7c00; ++bits) {
      const int exp = static_cast<int>(bits >> 10), man = static_cast<int>(bits & 0x3ff);
      const double mag = exp == 0 ? std::ldexp(man, -24) : std::ldexp(1024 + man, exp - 25);
      half.push_back(sign ? -mag : mag);
    }
    if (sign) {
      for (auto it = half.rbegin(); it != half.rend(); ++it)
        if (*it != 0 && *it >= opt.lo && *it <= opt.hi) xs.push_back(*it);
    } else {
      for (double x : half)
        if (x >= opt.lo && x <= opt.hi) xs.push_back(x);
    }
  }
  s.points = static_cast<long>(xs.size());
  for (double x : xs) {
    const double ref = gelu_exact(x);
    s.floor_err = std::fmax(s.floor_err, std::fabs(round_to(ref, fp16) - ref));
  }
  for (const auto& v : gelu_variants()) {
    GeluRow row;
    row.variant = v;
    for (double x : xs) {
      const double y = gelu_eval(v, x, fp16, opt.clamp);
      const double ref = gelu_exact(x);
      if (!std::isfinite(y)) {
        ++row.nonfinite;
        if (x >= 0 && !row.has_pos) {
          row.has_pos = true;
          row.first_nonfinite_pos = x;
          row.first_kind = std::isnan(y) ? "nan" : "inf";
        }
        if (x <= 0) {  // ascending order: the last one seen is the one closest to zero
          row.has_neg = true;
          row.first_nonfinite_neg = x;
          if (!row.has_pos) row.first_kind = std::isnan(y) ? "nan" : "inf";
        }
        continue;
      }
      const double err = std::fabs(y - ref);
      if (err > row.max_abs_err) {
        row.max_abs_err = err;
        row.max_abs_err_at = x;
      }
      if (std::fabs(ref) >= 1e-2) row.max_rel_err = std::fmax(row.max_rel_err, err / std::fabs(ref));
    }
    s.rows.push_back(row);
  }
  return s;
}

std::string format_gelu(const GeluSweep& s) {
  std::string out = fmt::format(
      "GELU in emulated {} (every intermediate rounded, ties to even), {} inputs in [{}, {}] "
      "(every finite binary16 value); reference: fp64 erf GELU; rounding floor {:.3g}\n",
      s.opt.dtype,
      s.points,
      s.opt.lo,
      s.opt.hi,
      s.floor_err);
  out += fmt::format("{:<14} {:>12} {:>10} {:>12} {:>10} {:>16} {:>16}\n",
                     "variant",
                     "max abs err",
                     "at x",
                     "max rel err",
                     "non-finite",
                     "first x>=0 bad",
                     "first x<=0 bad");
  for (const auto& r : s.rows)
    out += fmt::format("{:<14} {:>12.3g} {:>10.4g} {:>12.3g} {:>10} {:>16} {:>16}\n",
                       r.variant,
                       r.max_abs_err,
                       r.max_abs_err_at,
                       r.max_rel_err,
                       r.nonfinite,
                       r.has_pos ? fmt::format("{:.4g}", r.first_nonfinite_pos) : "none",
                       r.has_neg ? fmt::format("{:.4g}", r.first_nonfinite_neg) : "none");
  if (s.opt.dtype == "fp16")
    out += fmt::format("tanh-clamped clamps z = sqrt(2/pi)(x + 0.044715 x^3) to +-{}\n", s.opt.clamp);
  return out;
}

nlohmann::json gelu_json(const GeluSweep& s) {
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& r : s.rows) {
    nlohmann::json j = {{"variant", r.variant},
                        {"max_abs_err", r.max_abs_err},
                        {"max_abs_err_at", r.max_abs_err_at},
                        {"max_rel_err", r.max_rel_err},
                        {"nonfinite", r.nonfinite},
                        {"first_nonfinite_pos", nullptr},
                        {"first_nonfinite_neg", nullptr}};
    if (r.has_pos) j["first_nonfinite_pos"] = r.first_nonfinite_pos;
    if (r.has_neg) j["first_nonfinite_neg"] = r.first_nonfinite_neg;
    rows.push_back(j);
  }
  return {{"dtype", s.opt.dtype},
          {"min", s.opt.lo},
          {"max", s.opt.hi},
          {"clamp", s.opt.clamp},
          {"points", s.points},
          {"rounding_floor", s.floor_err},
          {"variants", rows}};
}

}  // namespace kvlab::pim
