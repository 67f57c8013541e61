#include "kvlab/core/tensor_io.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "kvlab/core/error.hpp"

namespace kvlab::core {

h5::DType h5_dtype(c10::ScalarType t) {
  switch (t) {
    case at::kFloat: return h5::DType::f32;
    case at::kDouble: return h5::DType::f64;
    case at::kHalf: return h5::DType::f16;
    case at::kBFloat16: return h5::DType::bf16;
    case at::kChar: return h5::DType::i8;
    case at::kShort: return h5::DType::i16;
    case at::kInt: return h5::DType::i32;
    case at::kLong: return h5::DType::i64;
    case at::kByte: return h5::DType::u8;
    case at::kBool: return h5::DType::boolean;
    default: break;
  }
  KVLAB_THROW(UsageError, "tensor dtype {} cannot be stored in a kvlab artifact",
              c10::toString(t));
}

c10::ScalarType torch_dtype(h5::DType t) {
  switch (t) {
    case h5::DType::f32: return at::kFloat;
    case h5::DType::f64: return at::kDouble;
    case h5::DType::f16: return at::kHalf;
    case h5::DType::bf16: return at::kBFloat16;
    case h5::DType::i8: return at::kChar;
    case h5::DType::i16: return at::kShort;
    case h5::DType::i32: return at::kInt;
    case h5::DType::i64: return at::kLong;
    case h5::DType::u8: return at::kByte;
    case h5::DType::boolean: return at::kBool;
    // LibTorch 1.13 has no uint16/32/64 tensors: widen to the next signed type on read.
    case h5::DType::u16: return at::kInt;
    case h5::DType::u32: return at::kLong;
    case h5::DType::u64: return at::kLong;
  }
  return at::kFloat;
}

void write_tensor(h5::Group& g, const std::string& name, const at::Tensor& t,
                  const std::vector<std::string>& axis_labels, bool compress) {
  const at::Tensor c = t.detach().to(at::kCPU).contiguous();
  std::vector<std::int64_t> shape(c.sizes().begin(), c.sizes().end());
  g.write(name, h5_dtype(c.scalar_type()), shape, c.data_ptr(), axis_labels, compress);
}

at::Tensor read_tensor(const h5::Group& g, const std::string& name,
                       std::optional<c10::ScalarType> expect,
                       const std::optional<std::vector<std::int64_t>>& expect_shape) {
  const h5::DatasetInfo info = g.info(name);
  const std::string where = fmt::format("{}:{}/{}", g.file(), g.path() == "/" ? "" : g.path(), name);
  KVLAB_THROW_IF(!info.dtype, FormatError, "{}: element type {} cannot be read as a tensor", where,
                 info.type_desc);
  if (expect) {
    KVLAB_THROW_IF(torch_dtype(*info.dtype) != *expect || *info.dtype == h5::DType::u16 ||
                       *info.dtype == h5::DType::u32 || *info.dtype == h5::DType::u64,
                   FormatError, "{}: stored as {} but {} is expected", where, info.type_desc,
                   c10::toString(*expect));
  }
  if (expect_shape) {
    KVLAB_THROW_IF(info.shape != *expect_shape, FormatError, "{}: shape {} but {} is expected",
                   where, h5::shape_str(info.shape), h5::shape_str(*expect_shape));
  }
  const h5::DType dt = *info.dtype;
  if (dt == h5::DType::u16 || dt == h5::DType::u32 || dt == h5::DType::u64) {
    // Read raw, then widen.
    const auto n = static_cast<std::size_t>(h5::numel(info.shape));
    at::Tensor out = at::empty(info.shape, at::TensorOptions().dtype(torch_dtype(dt)));
    if (dt == h5::DType::u16) {
      std::vector<std::uint16_t> v(n);
      g.read(name, dt, v.data());
      auto* p = out.data_ptr<std::int32_t>();
      for (std::size_t i = 0; i < n; ++i) p[i] = v[i];
    } else {
      std::vector<std::uint64_t> v(n);
      if (dt == h5::DType::u32) {
        std::vector<std::uint32_t> w(n);
        g.read(name, dt, w.data());
        std::copy(w.begin(), w.end(), v.begin());
      } else {
        g.read(name, dt, v.data());
      }
      auto* p = out.data_ptr<std::int64_t>();
      for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<std::int64_t>(v[i]);
    }
    return out;
  }
  at::Tensor out = at::empty(info.shape, at::TensorOptions().dtype(torch_dtype(dt)));
  g.read(name, dt, out.data_ptr());
  return out;
}

}  // namespace kvlab::core
