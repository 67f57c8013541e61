// at::Tensor <-> HDF5 datasets. Tensors are written row-major from CPU memory in their own dtype
// (float32, bfloat16 and float16 stay bit-exact); reads return CPU tensors.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <vector>

#include "kvlab/core/h5.hpp"

namespace kvlab::core {

/// Maps a tensor dtype to the HDF5 element type (UsageError for complex and other unsupported).
h5::DType h5_dtype(c10::ScalarType t);
c10::ScalarType torch_dtype(h5::DType t);

void write_tensor(h5::Group& g, const std::string& name, const at::Tensor& t,
                  const std::vector<std::string>& axis_labels = {}, bool compress = false);

/// Reads a dataset as a CPU tensor. With `expect`, a different stored dtype is a FormatError;
/// with `expect_shape`, so is a different shape.
at::Tensor read_tensor(const h5::Group& g, const std::string& name,
                       std::optional<c10::ScalarType> expect = std::nullopt,
                       const std::optional<std::vector<std::int64_t>>& expect_shape = std::nullopt);

}  // namespace kvlab::core
