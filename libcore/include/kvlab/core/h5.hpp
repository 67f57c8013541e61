// Thin RAII layer over the HDF5 C API (cluster HDF5 builds often lack the C++ bindings).
//
// Arrays are row-major; every dataset written through this layer may carry an `axis_labels`
// string-array attribute. Element types map to HDF5 as follows (all little-endian):
//   f32/f64            IEEE float
//   f16                IEEE half: a 16-bit float type (sign 15, exponent 10..14, mantissa 0..9)
//   bf16               bfloat16: a 16-bit float type (sign 15, exponent 7..14, mantissa 0..6,
//                      bias 127); h5py and h5dump read it as a float
//   i8..i64, u8..u64   integers
//   bool               the enum h5py uses (int8: FALSE=0, TRUE=1)
// Strings are variable-length UTF-8 (h5py reads them as str).
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace kvlab::h5 {

enum class DType { f32, f64, f16, bf16, i8, i16, i32, i64, u8, u16, u32, u64, boolean };

std::size_t dtype_size(DType t);
/// "float32", "bfloat16", "uint8", "bool", ...
const char* dtype_name(DType t);
std::optional<DType> dtype_from_name(const std::string& name);

using Shape = std::vector<std::int64_t>;
std::int64_t numel(const Shape& s);
std::string shape_str(const Shape& s);  // "[2, 3]"

/// A typed attribute value, as read back from a file.
using AttrValue = std::variant<std::int64_t, double, std::string, std::vector<std::int64_t>,
                               std::vector<double>, std::vector<std::string>>;
std::string attr_to_string(const AttrValue& v);

/// Owning hid_t with the right close function.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& o) noexcept : id_(o.id_), closer_(o.closer_) { o.id_ = H5I_INVALID_HID; }
  Handle& operator=(Handle&& o) noexcept;
  ~Handle() { reset(); }
  void reset();
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
};

struct DatasetInfo {
  std::optional<DType> dtype;  // nullopt: a type kvlab does not map (e.g. compound)
  std::string type_desc;       // human-readable HDF5 type, for messages
  Shape shape;
};

/// A group (or the file's root group). Paths may be nested: "params/x" or "layers/000/k".
/// All errors throw kvlab::FormatError (bad content) or kvlab::IoError (write failures) naming
/// the file and the object path.
class Group {
 public:
  Group(Handle h, std::string file, std::string path);
  const std::string& path() const { return path_; }
  const std::string& file() const { return file_; }
  hid_t id() const { return h_.get(); }

  bool has(const std::string& name) const;       // any link (group or dataset)
  bool has_group(const std::string& name) const;
  bool has_dataset(const std::string& name) const;
  Group group(const std::string& name) const;          // open existing; FormatError if missing
  Group require_group(const std::string& name);        // open or create (with intermediates)
  std::vector<std::string> children() const;           // direct member names, sorted

  // --- attributes ---
  void set_attr(const std::string& name, const std::string& v);
  void set_attr(const std::string& name, const char* v) { set_attr(name, std::string(v)); }
  void set_attr(const std::string& name, std::int64_t v);
  void set_attr(const std::string& name, int v) { set_attr(name, static_cast<std::int64_t>(v)); }
  void set_attr(const std::string& name, std::uint32_t v);
  void set_attr(const std::string& name, double v);
  void set_attr(const std::string& name, bool v);
  void set_attr(const std::string& name, const std::vector<std::string>& v);
  void set_attr(const std::string& name, const std::vector<std::int64_t>& v);
  void set_attr(const std::string& name, const std::vector<double>& v);
  bool has_attr(const std::string& name) const;
  std::vector<std::string> attr_names() const;
  AttrValue attr(const std::string& name) const;  // FormatError if missing or unsupported type
  std::string attr_string(const std::string& name) const;
  std::int64_t attr_int(const std::string& name) const;
  double attr_double(const std::string& name) const;  // accepts integer attributes too
  std::vector<std::string> attr_strings(const std::string& name) const;

  // --- datasets ---
  /// Writes a row-major array. `data` holds numel(shape) elements of `t`. For DType::boolean the
  /// buffer is one byte per element (0 or 1). Large datasets are chunked and compressed only when
  /// `compress` is set.
  void write(const std::string& name, DType t, const Shape& shape, const void* data,
             const std::vector<std::string>& axis_labels = {}, bool compress = false);
  DatasetInfo info(const std::string& name) const;
  /// Reads into `out` (numel * dtype_size bytes). Throws FormatError when the stored element type
  /// differs from `expect` (no silent conversion) or the dataset is missing.
  void read(const std::string& name, DType expect, void* out) const;
  /// Reads converting to float32/float64/int64 (for inspect and generic tooling).
  std::vector<double> read_as_double(const std::string& name) const;
  std::vector<std::string> axis_labels(const std::string& name) const;

  template <class T>
  void write_vec(const std::string& name, const std::vector<T>& v,
                 const std::vector<std::string>& labels = {});
  template <class T>
  std::vector<T> read_vec(const std::string& name) const;

 private:
  std::string where(const std::string& name) const;  // "file.h5:/a/b"
  Handle h_;
  std::string file_;
  std::string path_;
};

enum class Mode { read, create };

/// An open HDF5 file. open() never creates; create() truncates.
class File {
 public:
  static File open(const std::filesystem::path& p);    // FormatError: missing, not HDF5, corrupt
  static File create(const std::filesystem::path& p);  // IoError on failure
  Group root() const;
  const std::string& path() const { return path_; }
  void flush();
  void close() { h_.reset(); }

 private:
  File(Handle h, std::string path) : h_(std::move(h)), path_(std::move(path)) {}
  Handle h_;
  std::string path_;
};

/// True when the file starts with the HDF5 signature (does not open it).
bool is_hdf5(const std::filesystem::path& p);

/// Turns off HDF5's automatic error-stack printing (kvlab reports errors itself). Idempotent.
void silence_hdf5_errors();

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }
template <> constexpr DType dtype_of<std::int8_t>() { return DType::i8; }
template <> constexpr DType dtype_of<std::int16_t>() { return DType::i16; }
template <> constexpr DType dtype_of<std::int32_t>() { return DType::i32; }
template <> constexpr DType dtype_of<std::int64_t>() { return DType::i64; }
template <> constexpr DType dtype_of<std::uint8_t>() { return DType::u8; }
template <> constexpr DType dtype_of<std::uint16_t>() { return DType::u16; }
template <> constexpr DType dtype_of<std::uint32_t>() { return DType::u32; }
template <> constexpr DType dtype_of<std::uint64_t>() { return DType::u64; }

template <class T>
void Group::write_vec(const std::string& name, const std::vector<T>& v,
                      const std::vector<std::string>& labels) {
  write(name, dtype_of<T>(), {static_cast<std::int64_t>(v.size())}, v.data(), labels);
}

template <class T>
std::vector<T> Group::read_vec(const std::string& name) const {
  const DatasetInfo i = info(name);
  std::vector<T> out(static_cast<std::size_t>(numel(i.shape)));
  read(name, dtype_of<T>(), out.data());
  return out;
}

}  // namespace kvlab::h5
