#include "kvlab/core/h5.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <mutex>

#include "kvlab/core/error.hpp"

namespace kvlab::h5 {
namespace {

// Custom 16-bit float types. HDF5 converts between arbitrary IEEE-like float layouts in software,
// so other tools can read these as float.
Handle make_float16(bool bf16) {
  hid_t t = H5Tcopy(H5T_IEEE_F32LE);
  if (bf16) {
    // spos, epos, esize, mpos, msize
    H5Tset_fields(t, 15, 7, 8, 0, 7);
    H5Tset_precision(t, 16);
    H5Tset_size(t, 2);
    H5Tset_ebias(t, 127);
  } else {
    H5Tset_fields(t, 15, 10, 5, 0, 10);
    H5Tset_precision(t, 16);
    H5Tset_size(t, 2);
    H5Tset_ebias(t, 15);
  }
  return Handle(t, H5Tclose);
}

Handle make_bool() {
  hid_t t = H5Tenum_create(H5T_NATIVE_INT8);
  std::int8_t f = 0, tr = 1;
  H5Tenum_insert(t, "FALSE", &f);
  H5Tenum_insert(t, "TRUE", &tr);
  return Handle(t, H5Tclose);
}

// Memory/file type for a DType. Returned handle owns a copy.
Handle type_for(DType t) {
  hid_t base = -1;
  switch (t) {
    case DType::f32: base = H5T_IEEE_F32LE; break;
    case DType::f64: base = H5T_IEEE_F64LE; break;
    case DType::f16: return make_float16(false);
    case DType::bf16: return make_float16(true);
    case DType::i8: base = H5T_STD_I8LE; break;
    case DType::i16: base = H5T_STD_I16LE; break;
    case DType::i32: base = H5T_STD_I32LE; break;
    case DType::i64: base = H5T_STD_I64LE; break;
    case DType::u8: base = H5T_STD_U8LE; break;
    case DType::u16: base = H5T_STD_U16LE; break;
    case DType::u32: base = H5T_STD_U32LE; break;
    case DType::u64: base = H5T_STD_U64LE; break;
    case DType::boolean: return make_bool();
  }
  return Handle(H5Tcopy(base), H5Tclose);
}

std::string describe_type(hid_t t) {
  switch (H5Tget_class(t)) {
    case H5T_INTEGER: return fmt::format("{}-bit {}integer", 8 * H5Tget_size(t),
                                         H5Tget_sign(t) == H5T_SGN_NONE ? "unsigned " : "");
    case H5T_FLOAT: return fmt::format("{}-bit float", 8 * H5Tget_size(t));
    case H5T_STRING: return "string";
    case H5T_COMPOUND: return "compound";
    case H5T_ENUM: return "enum";
    case H5T_ARRAY: return "array";
    case H5T_OPAQUE: return "opaque";
    case H5T_REFERENCE: return "reference";
    case H5T_VLEN: return "variable-length";
    default: return "unknown type";
  }
}

std::optional<DType> classify(hid_t t) {
  const H5T_class_t c = H5Tget_class(t);
  const std::size_t sz = H5Tget_size(t);
  if (H5Tget_order(t) == H5T_ORDER_BE && c != H5T_ENUM) return std::nullopt;
  if (c == H5T_INTEGER) {
    const bool sgn = H5Tget_sign(t) != H5T_SGN_NONE;
    switch (sz) {
      case 1: return sgn ? DType::i8 : DType::u8;
      case 2: return sgn ? DType::i16 : DType::u16;
      case 4: return sgn ? DType::i32 : DType::u32;
      case 8: return sgn ? DType::i64 : DType::u64;
      default: return std::nullopt;
    }
  }
  if (c == H5T_FLOAT) {
    if (sz == 4) return DType::f32;
    if (sz == 8) return DType::f64;
    if (sz == 2) {
      std::size_t spos, epos, esize, mpos, msize;
      H5Tget_fields(t, &spos, &epos, &esize, &mpos, &msize);
      if (esize == 8 && msize == 7) return DType::bf16;
      if (esize == 5 && msize == 10) return DType::f16;
    }
    return std::nullopt;
  }
  if (c == H5T_ENUM && sz == 1 && H5Tget_nmembers(t) == 2) return DType::boolean;
  return std::nullopt;
}

std::string obj_path(const std::string& base, const std::string& name) {
  if (base == "/" || base.empty()) return "/" + name;
  return base + "/" + name;
}

}  // namespace

std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::f64: case DType::i64: case DType::u64: return 8;
    case DType::f32: case DType::i32: case DType::u32: return 4;
    case DType::f16: case DType::bf16: case DType::i16: case DType::u16: return 2;
    case DType::i8: case DType::u8: case DType::boolean: return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
    case DType::i8: return "int8";
    case DType::i16: return "int16";
    case DType::i32: return "int32";
    case DType::i64: return "int64";
    case DType::u8: return "uint8";
    case DType::u16: return "uint16";
    case DType::u32: return "uint32";
    case DType::u64: return "uint64";
    case DType::boolean: return "bool";
  }
  return "?";
}

std::optional<DType> dtype_from_name(const std::string& name) {
  for (DType t : {DType::f32, DType::f64, DType::f16, DType::bf16, DType::i8, DType::i16,
                  DType::i32, DType::i64, DType::u8, DType::u16, DType::u32, DType::u64,
                  DType::boolean})
    if (name == dtype_name(t)) return t;
  return std::nullopt;
}

std::int64_t numel(const Shape& s) {
  std::int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

std::string shape_str(const Shape& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

std::string attr_to_string(const AttrValue& v) {
  struct V {
    std::string operator()(std::int64_t x) const { return std::to_string(x); }
    std::string operator()(double x) const { return fmt::format("{}", x); }
    std::string operator()(const std::string& x) const { return x; }
    std::string operator()(const std::vector<std::int64_t>& x) const {
      return fmt::format("[{}]", fmt::join(x, ", "));
    }
    std::string operator()(const std::vector<double>& x) const {
      return fmt::format("[{}]", fmt::join(x, ", "));
    }
    std::string operator()(const std::vector<std::string>& x) const {
      std::string s = "[";
      for (std::size_t i = 0; i < x.size(); ++i) s += (i ? ", \"" : "\"") + x[i] + "\"";
      return s + "]";
    }
  };
  return std::visit(V{}, v);
}

Handle& Handle::operator=(Handle&& o) noexcept {
  if (this != &o) {
    reset();
    id_ = o.id_;
    closer_ = o.closer_;
    o.id_ = H5I_INVALID_HID;
  }
  return *this;
}

void Handle::reset() {
  if (id_ >= 0 && closer_) closer_(id_);
  id_ = H5I_INVALID_HID;
}

void silence_hdf5_errors() {
  static std::once_flag once;
  std::call_once(once, [] { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); });
}

bool is_hdf5(const std::filesystem::path& p) {
  // The superblock may sit at 0, 512, 1024, ... ; kvlab writes it at 0, but check like HDF5 does.
  static const unsigned char sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
  std::ifstream f(p, std::ios::binary);
  if (!f) return false;
  f.seekg(0, std::ios::end);
  const auto size = static_cast<std::uint64_t>(f.tellg());
  for (std::uint64_t off = 0; off + 8 <= size; off = off ? off * 2 : 512) {
    unsigned char buf[8];
    f.seekg(static_cast<std::streamoff>(off));
    if (!f.read(reinterpret_cast<char*>(buf), 8)) return false;
    if (std::memcmp(buf, sig, 8) == 0) return true;
  }
  return false;
}

File File::open(const std::filesystem::path& p) {
  silence_hdf5_errors();
  const std::string s = p.string();
  std::error_code ec;
  KVLAB_THROW_IF(!std::filesystem::exists(p, ec), FormatError,
                 "{}: no such file; check the path", s);
  KVLAB_THROW_IF(std::filesystem::is_directory(p, ec), FormatError,
                 "{}: is a directory, expected a kvlab artifact (.h5)", s);
  KVLAB_THROW_IF(!is_hdf5(p), FormatError,
                 "{}: not an HDF5 file, so not a kvlab artifact; give the .h5 file a kvlab "
                 "command wrote",
                 s);
  hid_t id = H5Fopen(s.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  KVLAB_THROW_IF(id < 0, FormatError,
                 "{}: HDF5 signature present but the file cannot be opened (truncated or "
                 "corrupt); re-create it with the command that wrote it",
                 s);
  return File(Handle(id, H5Fclose), s);
}

File File::create(const std::filesystem::path& p) {
  silence_hdf5_errors();
  const std::string s = p.string();
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  // Newest format features readable by HDF5 >= 1.10 (and h5py builds of the last years).
  H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST);
  hid_t id = H5Fcreate(s.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  H5Pclose(fapl);
  KVLAB_THROW_IF(id < 0, IoError,
                 "{}: cannot create file; check that the directory exists and is writable", s);
  return File(Handle(id, H5Fclose), s);
}

Group File::root() const {
  hid_t g = H5Gopen2(h_.get(), "/", H5P_DEFAULT);
  KVLAB_THROW_IF(g < 0, FormatError, "{}: cannot open the root group", path_);
  return Group(Handle(g, H5Gclose), path_, "/");
}

void File::flush() {
  KVLAB_THROW_IF(H5Fflush(h_.get(), H5F_SCOPE_GLOBAL) < 0, IoError,
                 "{}: flush failed (disk full?)", path_);
}

Group::Group(Handle h, std::string file, std::string path)
    : h_(std::move(h)), file_(std::move(file)), path_(std::move(path)) {}

std::string Group::where(const std::string& name) const {
  return fmt::format("{}:{}", file_, obj_path(path_, name));
}

bool Group::has(const std::string& name) const {
  // Walk component by component: H5Lexists fails on a missing intermediate.
  std::string cur;
  std::size_t start = 0;
  while (start <= name.size()) {
    const std::size_t slash = name.find('/', start);
    const std::string part = name.substr(start, slash == std::string::npos ? std::string::npos
                                                                           : slash - start);
    cur += (cur.empty() ? "" : "/") + part;
    if (H5Lexists(h_.get(), cur.c_str(), H5P_DEFAULT) <= 0) return false;
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return true;
}

static H5O_type_t object_type(hid_t loc, const std::string& name) {
  H5O_info_t info;
#if H5_VERSION_GE(1, 12, 0)
  if (H5Oget_info_by_name3(loc, name.c_str(), &info, H5O_INFO_BASIC, H5P_DEFAULT) < 0)
    return H5O_TYPE_UNKNOWN;
#else
  if (H5Oget_info_by_name(loc, name.c_str(), &info, H5P_DEFAULT) < 0) return H5O_TYPE_UNKNOWN;
#endif
  return info.type;
}

bool Group::has_group(const std::string& name) const {
  return has(name) && object_type(h_.get(), name) == H5O_TYPE_GROUP;
}

bool Group::has_dataset(const std::string& name) const {
  return has(name) && object_type(h_.get(), name) == H5O_TYPE_DATASET;
}

Group Group::group(const std::string& name) const {
  KVLAB_THROW_IF(!has_group(name), FormatError,
                 "{}: required group is missing; the file is incomplete or of another kind",
                 where(name));
  hid_t g = H5Gopen2(h_.get(), name.c_str(), H5P_DEFAULT);
  KVLAB_THROW_IF(g < 0, FormatError, "{}: cannot open group", where(name));
  return Group(Handle(g, H5Gclose), file_, obj_path(path_, name));
}

Group Group::require_group(const std::string& name) {
  if (has_group(name)) return group(name);
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  hid_t g = H5Gcreate2(h_.get(), name.c_str(), lcpl, H5P_DEFAULT, H5P_DEFAULT);
  H5Pclose(lcpl);
  KVLAB_THROW_IF(g < 0, IoError, "{}: cannot create group", where(name));
  return Group(Handle(g, H5Gclose), file_, obj_path(path_, name));
}

std::vector<std::string> Group::children() const {
  std::vector<std::string> names;
  auto cb = [](hid_t, const char* n, const H5L_info_t*, void* d) -> herr_t {
    static_cast<std::vector<std::string>*>(d)->emplace_back(n);
    return 0;
  };
  H5Literate(h_.get(), H5_INDEX_NAME, H5_ITER_INC, nullptr, cb, &names);
  std::sort(names.begin(), names.end());
  return names;
}

// ---------------------------------------------------------------------------- attributes --

namespace {

void write_attr_raw(hid_t loc, const std::string& name, hid_t type, hid_t space, const void* buf,
                    const std::string& where) {
  if (H5Aexists(loc, name.c_str()) > 0) H5Adelete(loc, name.c_str());
  Handle a(H5Acreate2(loc, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  KVLAB_THROW_IF(!a.valid(), IoError, "{}: cannot create attribute '{}'", where, name);
  KVLAB_THROW_IF(H5Awrite(a.get(), type, buf) < 0, IoError, "{}: cannot write attribute '{}'",
                 where, name);
}

Handle vlen_str_type() {
  Handle t(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(t.get(), H5T_VARIABLE);
  H5Tset_cset(t.get(), H5T_CSET_UTF8);
  return t;
}

Handle scalar_space() { return Handle(H5Screate(H5S_SCALAR), H5Sclose); }
Handle vec_space(std::size_t n) {
  hsize_t d = n;
  return Handle(H5Screate_simple(1, &d, nullptr), H5Sclose);
}

}  // namespace

void Group::set_attr(const std::string& name, const std::string& v) {
  Handle t = vlen_str_type();
  const char* p = v.c_str();
  write_attr_raw(id(), name, t.get(), scalar_space().get(), &p, where(""));
}

void Group::set_attr(const std::string& name, std::int64_t v) {
  write_attr_raw(id(), name, H5T_STD_I64LE, scalar_space().get(), &v, where(""));
}

void Group::set_attr(const std::string& name, std::uint32_t v) {
  write_attr_raw(id(), name, H5T_STD_U32LE, scalar_space().get(), &v, where(""));
}

void Group::set_attr(const std::string& name, double v) {
  write_attr_raw(id(), name, H5T_IEEE_F64LE, scalar_space().get(), &v, where(""));
}

void Group::set_attr(const std::string& name, bool v) {
  Handle t = make_bool();
  std::int8_t b = v ? 1 : 0;
  write_attr_raw(id(), name, t.get(), scalar_space().get(), &b, where(""));
}

void Group::set_attr(const std::string& name, const std::vector<std::string>& v) {
  Handle t = vlen_str_type();
  std::vector<const char*> ptrs;
  for (const auto& s : v) ptrs.push_back(s.c_str());
  write_attr_raw(id(), name, t.get(), vec_space(v.size()).get(), ptrs.data(), where(""));
}

void Group::set_attr(const std::string& name, const std::vector<std::int64_t>& v) {
  write_attr_raw(id(), name, H5T_STD_I64LE, vec_space(v.size()).get(), v.data(), where(""));
}

void Group::set_attr(const std::string& name, const std::vector<double>& v) {
  write_attr_raw(id(), name, H5T_IEEE_F64LE, vec_space(v.size()).get(), v.data(), where(""));
}

bool Group::has_attr(const std::string& name) const { return H5Aexists(id(), name.c_str()) > 0; }

std::vector<std::string> Group::attr_names() const {
  std::vector<std::string> names;
  auto cb = [](hid_t, const char* n, const H5A_info_t*, void* d) -> herr_t {
    static_cast<std::vector<std::string>*>(d)->emplace_back(n);
    return 0;
  };
  H5Aiterate2(id(), H5_INDEX_NAME, H5_ITER_INC, nullptr, cb, &names);
  return names;
}

AttrValue Group::attr(const std::string& name) const {
  KVLAB_THROW_IF(!has_attr(name), FormatError,
                 "{}: required attribute '{}' is missing; the file is incomplete or was not "
                 "written by kvlab",
                 where(""), name);
  Handle a(H5Aopen(id(), name.c_str(), H5P_DEFAULT), H5Aclose);
  Handle t(H5Aget_type(a.get()), H5Tclose);
  Handle sp(H5Aget_space(a.get()), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(sp.get());
  const auto n = static_cast<std::size_t>(H5Sget_simple_extent_npoints(sp.get()));
  KVLAB_THROW_IF(rank > 1, FormatError, "{}: attribute '{}' has rank {}, expected a scalar or 1-D",
                 where(""), name, rank);
  const H5T_class_t c = H5Tget_class(t.get());
  if (c == H5T_STRING) {
    std::vector<std::string> out;
    if (H5Tis_variable_str(t.get()) > 0) {
      Handle mt = vlen_str_type();
      std::vector<char*> ptrs(n, nullptr);
      KVLAB_THROW_IF(H5Aread(a.get(), mt.get(), ptrs.data()) < 0, FormatError,
                     "{}: cannot read attribute '{}'", where(""), name);
      for (char* p : ptrs) out.emplace_back(p ? p : "");
      H5Dvlen_reclaim(mt.get(), sp.get(), H5P_DEFAULT, ptrs.data());
    } else {
      const std::size_t w = H5Tget_size(t.get());
      std::vector<char> buf(w * n + 1, 0);
      H5Aread(a.get(), t.get(), buf.data());
      for (std::size_t i = 0; i < n; ++i) {
        std::string s(buf.data() + i * w, w);
        s.erase(std::find(s.begin(), s.end(), '\0'), s.end());
        out.push_back(s);
      }
    }
    if (rank == 0) return out.empty() ? std::string() : out[0];
    return out;
  }
  if (c == H5T_INTEGER || c == H5T_ENUM) {
    std::vector<std::int64_t> v(n);
    KVLAB_THROW_IF(H5Aread(a.get(), H5T_NATIVE_INT64, v.data()) < 0 && c == H5T_INTEGER,
                   FormatError, "{}: cannot read attribute '{}'", where(""), name);
    if (c == H5T_ENUM) {  // bool enum: read raw int8
      std::vector<std::int8_t> b(n);
      H5Aread(a.get(), t.get(), b.data());
      for (std::size_t i = 0; i < n; ++i) v[i] = b[i];
    }
    if (rank == 0) return v.at(0);
    return v;
  }
  if (c == H5T_FLOAT) {
    std::vector<double> v(n);
    KVLAB_THROW_IF(H5Aread(a.get(), H5T_NATIVE_DOUBLE, v.data()) < 0, FormatError,
                   "{}: cannot read attribute '{}'", where(""), name);
    if (rank == 0) return v.at(0);
    return v;
  }
  KVLAB_THROW(FormatError, "{}: attribute '{}' has an unsupported type ({})", where(""), name,
              describe_type(t.get()));
}

std::string Group::attr_string(const std::string& name) const {
  AttrValue v = attr(name);
  if (auto* s = std::get_if<std::string>(&v)) return *s;
  KVLAB_THROW(FormatError, "{}: attribute '{}' should be a string but is {}", where(""), name,
              attr_to_string(v));
}

std::int64_t Group::attr_int(const std::string& name) const {
  AttrValue v = attr(name);
  if (auto* i = std::get_if<std::int64_t>(&v)) return *i;
  KVLAB_THROW(FormatError, "{}: attribute '{}' should be an integer but is {}", where(""), name,
              attr_to_string(v));
}

double Group::attr_double(const std::string& name) const {
  AttrValue v = attr(name);
  if (auto* d = std::get_if<double>(&v)) return *d;
  if (auto* i = std::get_if<std::int64_t>(&v)) return static_cast<double>(*i);
  KVLAB_THROW(FormatError, "{}: attribute '{}' should be a number but is {}", where(""), name,
              attr_to_string(v));
}

std::vector<std::string> Group::attr_strings(const std::string& name) const {
  AttrValue v = attr(name);
  if (auto* s = std::get_if<std::vector<std::string>>(&v)) return *s;
  if (auto* s = std::get_if<std::string>(&v)) return {*s};
  KVLAB_THROW(FormatError, "{}: attribute '{}' should be a list of strings but is {}", where(""),
              name, attr_to_string(v));
}

// ------------------------------------------------------------------------------ datasets --

void Group::write(const std::string& name, DType t, const Shape& shape, const void* data,
                  const std::vector<std::string>& axis_labels, bool compress) {
  KVLAB_THROW_IF(!axis_labels.empty() && axis_labels.size() != shape.size(), IoError,
                 "{}: {} axis labels for a rank-{} array", where(name), axis_labels.size(),
                 shape.size());
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  Handle sp(shape.empty() ? H5Screate(H5S_SCALAR)
                          : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
            H5Sclose);
  Handle type = type_for(t);
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  const std::int64_t n = numel(shape);
  if (compress && !shape.empty() && n * static_cast<std::int64_t>(dtype_size(t)) > (1 << 16)) {
    // Chunk along the first axis, ~1 MiB per chunk.
    std::vector<hsize_t> chunk(dims);
    const std::int64_t row = n / std::max<std::int64_t>(1, shape[0]);
    chunk[0] = static_cast<hsize_t>(std::clamp<std::int64_t>(
        (1 << 20) / std::max<std::int64_t>(1, row * static_cast<std::int64_t>(dtype_size(t))), 1,
        shape[0]));
    H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data());
    H5Pset_shuffle(dcpl.get());
    H5Pset_deflate(dcpl.get(), 4);
  }
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  if (has(name)) H5Ldelete(id(), name.c_str(), H5P_DEFAULT);
  Handle ds(H5Dcreate2(id(), name.c_str(), type.get(), sp.get(), lcpl, dcpl.get(), H5P_DEFAULT),
            H5Dclose);
  H5Pclose(lcpl);
  KVLAB_THROW_IF(!ds.valid(), IoError, "{}: cannot create dataset", where(name));
  if (n > 0) {
    KVLAB_THROW_IF(H5Dwrite(ds.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0, IoError,
                   "{}: write failed (disk full?)", where(name));
  }
  if (!axis_labels.empty()) {
    Handle st = vlen_str_type();
    std::vector<const char*> ptrs;
    for (const auto& s : axis_labels) ptrs.push_back(s.c_str());
    write_attr_raw(ds.get(), "axis_labels", st.get(), vec_space(ptrs.size()).get(), ptrs.data(),
                   where(name));
  }
}

DatasetInfo Group::info(const std::string& name) const {
  KVLAB_THROW_IF(!has_dataset(name), FormatError,
                 "{}: required dataset is missing; the file is incomplete or of another kind",
                 where(name));
  Handle ds(H5Dopen2(id(), name.c_str(), H5P_DEFAULT), H5Dclose);
  KVLAB_THROW_IF(!ds.valid(), FormatError, "{}: cannot open dataset", where(name));
  Handle t(H5Dget_type(ds.get()), H5Tclose);
  Handle sp(H5Dget_space(ds.get()), H5Sclose);
  DatasetInfo out;
  out.dtype = classify(t.get());
  out.type_desc = out.dtype ? dtype_name(*out.dtype) : describe_type(t.get());
  const int rank = H5Sget_simple_extent_ndims(sp.get());
  std::vector<hsize_t> dims(static_cast<std::size_t>(std::max(rank, 0)));
  if (rank > 0) H5Sget_simple_extent_dims(sp.get(), dims.data(), nullptr);
  out.shape.assign(dims.begin(), dims.end());
  return out;
}

void Group::read(const std::string& name, DType expect, void* out) const {
  const DatasetInfo i = info(name);
  KVLAB_THROW_IF(!i.dtype || *i.dtype != expect, FormatError,
                 "{}: dataset has element type {} but {} is expected; the file was written by "
                 "another tool or an incompatible kvlab",
                 where(name), i.type_desc, dtype_name(expect));
  Handle ds(H5Dopen2(id(), name.c_str(), H5P_DEFAULT), H5Dclose);
  Handle type = type_for(expect);
  if (numel(i.shape) == 0) return;
  KVLAB_THROW_IF(H5Dread(ds.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0,
                 FormatError, "{}: read failed (file truncated or corrupt)", where(name));
}

std::vector<double> Group::read_as_double(const std::string& name) const {
  const DatasetInfo i = info(name);
  KVLAB_THROW_IF(!i.dtype, FormatError, "{}: element type {} is not numeric", where(name),
                 i.type_desc);
  std::vector<double> out(static_cast<std::size_t>(numel(i.shape)));
  if (out.empty()) return out;
  Handle ds(H5Dopen2(id(), name.c_str(), H5P_DEFAULT), H5Dclose);
  if (*i.dtype == DType::boolean) {
    std::vector<std::int8_t> b(out.size());
    read(name, DType::boolean, b.data());
    std::copy(b.begin(), b.end(), out.begin());
    return out;
  }
  KVLAB_THROW_IF(H5Dread(ds.get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0,
                 FormatError, "{}: read failed (file truncated or corrupt)", where(name));
  return out;
}

std::vector<std::string> Group::axis_labels(const std::string& name) const {
  Handle ds(H5Dopen2(id(), name.c_str(), H5P_DEFAULT), H5Dclose);
  KVLAB_THROW_IF(!ds.valid(), FormatError, "{}: cannot open dataset", where(name));
  Group g(std::move(ds), file_, obj_path(path_, name));  // attributes work the same on datasets
  Group* gp = &g;
  std::vector<std::string> out;
  if (gp->has_attr("axis_labels")) out = gp->attr_strings("axis_labels");
  return out;
}

}  // namespace kvlab::h5
