// Encoders from intensities in [0, 1] to input spike trains [T, batch, features] (float32 0/1).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>

namespace kvlab::snn {

enum class Encoding { latency, rate };
inline const std::map<std::string, Encoding> kEncodingNames = {{"latency", Encoding::latency},
                                                               {"rate", Encoding::rate}};
const char* encoding_name(Encoding e);

/// Time-to-first-spike coding as the ANTLR trainer (float2spikes, type 'latency'): each feature
/// x > 0 spikes once at step int((max_timing - min_timing) x + min_timing); x == 0 never spikes.
/// Defaults: intensity 1 at step 0, intensity -> 0 near step 24. `x` is [batch, features].
at::Tensor latency_encode(const at::Tensor& x, std::int64_t time_length,
                          std::int64_t max_timing = 0, std::int64_t min_timing = 24);

/// Rate (Bernoulli) coding: feature x spikes at each step with probability max_rate * x, drawn
/// from LibTorch's default generator (seeded by the front end).
at::Tensor rate_encode(const at::Tensor& x, std::int64_t time_length, double max_rate = 1.0);

}  // namespace kvlab::snn
