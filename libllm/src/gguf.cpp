#include "kvlab/llm/gguf.hpp"

#include <c10/util/Half.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>

#include "kvlab/core/error.hpp"

namespace kvlab::llm {
namespace fs = std::filesystem;

// ------------------------------------------------------------------------------- types --

std::string ggml_type_name(std::uint32_t t) {
  switch (static_cast<GgmlType>(t)) {
    case GgmlType::F32: return "F32";
    case GgmlType::F16: return "F16";
    case GgmlType::Q4_0: return "Q4_0";
    case GgmlType::Q4_1: return "Q4_1";
    case GgmlType::Q5_0: return "Q5_0";
    case GgmlType::Q5_1: return "Q5_1";
    case GgmlType::Q8_0: return "Q8_0";
    case GgmlType::Q8_1: return "Q8_1";
    case GgmlType::Q2_K: return "Q2_K";
    case GgmlType::Q3_K: return "Q3_K";
    case GgmlType::Q4_K: return "Q4_K";
    case GgmlType::Q5_K: return "Q5_K";
    case GgmlType::Q6_K: return "Q6_K";
    case GgmlType::Q8_K: return "Q8_K";
    case GgmlType::BF16: return "BF16";
  }
  return fmt::format("type {}", t);
}

bool ggml_type_supported(std::uint32_t t) {
  switch (static_cast<GgmlType>(t)) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16: case GgmlType::Q8_0:
    case GgmlType::Q4_0: case GgmlType::Q4_1: case GgmlType::Q4_K: case GgmlType::Q6_K:
      return true;
    default: return false;
  }
}

std::optional<std::pair<std::uint64_t, std::uint64_t>> ggml_block(std::uint32_t t) {
  // (elements per block, bytes per block), from ggml.c's type_traits.
  switch (static_cast<GgmlType>(t)) {
    case GgmlType::F32: return {{1, 4}};
    case GgmlType::F16: return {{1, 2}};
    case GgmlType::BF16: return {{1, 2}};
    case GgmlType::Q4_0: return {{32, 18}};
    case GgmlType::Q4_1: return {{32, 20}};
    case GgmlType::Q5_0: return {{32, 22}};
    case GgmlType::Q5_1: return {{32, 24}};
    case GgmlType::Q8_0: return {{32, 34}};
    case GgmlType::Q8_1: return {{32, 36}};
    case GgmlType::Q2_K: return {{256, 84}};
    case GgmlType::Q3_K: return {{256, 110}};
    case GgmlType::Q4_K: return {{256, 144}};
    case GgmlType::Q5_K: return {{256, 176}};
    case GgmlType::Q6_K: return {{256, 210}};
    case GgmlType::Q8_K: return {{256, 292}};
  }
  return std::nullopt;
}

std::size_t GgufValue::size() const {
  if (!ints.empty()) return ints.size();
  if (!floats.empty()) return floats.size();
  return strings.size();
}

bool GgufValue::is_int() const {
  switch (type) {
    case GgufType::UINT8: case GgufType::INT8: case GgufType::UINT16: case GgufType::INT16:
    case GgufType::UINT32: case GgufType::INT32: case GgufType::UINT64: case GgufType::INT64:
    case GgufType::BOOL:
      return true;
    default: return false;
  }
}

bool GgufValue::is_float() const {
  return type == GgufType::FLOAT32 || type == GgufType::FLOAT64;
}

std::uint64_t GgufTensorInfo::numel() const {
  std::uint64_t n = 1;
  for (auto d : ne) n *= d;
  return n;
}

std::vector<std::int64_t> GgufTensorInfo::shape() const {
  std::vector<std::int64_t> s;
  for (auto it = ne.rbegin(); it != ne.rend(); ++it) s.push_back(static_cast<std::int64_t>(*it));
  return s;
}

// ------------------------------------------------------------------------------ reader --

namespace {

constexpr std::uint64_t kMaxDims = 4;  // GGML_MAX_DIMS

/// Sequential, bounds-checked reads of the header region through a buffer.
class Cursor {
 public:
  explicit Cursor(const ReadOnlyFile& f) : file_(f), size_(f.size()), path_(f.path()) {}
  std::uint64_t pos() const { return pos_; }
  std::uint64_t remaining() const { return size_ - pos_; }

  void read(void* out, std::uint64_t n, const std::string& what) {
    KVLAB_THROW_IF(n > remaining(), FormatError,
                   "{}: truncated: {} needs {} bytes at offset {} but the file ends at {}", path_,
                   what, n, pos_, size_);
    auto* o = static_cast<char*>(out);
    while (n > 0) {
      if (buf_pos_ >= buf_.size()) fill();
      const std::uint64_t k = std::min<std::uint64_t>(n, buf_.size() - buf_pos_);
      std::memcpy(o, buf_.data() + buf_pos_, static_cast<std::size_t>(k));
      o += k;
      buf_pos_ += static_cast<std::size_t>(k);
      pos_ += k;
      n -= k;
    }
  }
  template <class T>
  T get(const std::string& what) {
    T v;
    read(&v, sizeof v, what);  // GGUF is little-endian, as is every machine kvlab runs on
    return v;
  }
  std::string str(const std::string& what) {
    const auto n = get<std::uint64_t>(what + " length");
    KVLAB_THROW_IF(n > remaining(), FormatError,
                   "{}: {} claims a {}-byte string at offset {} but only {} bytes remain; the "
                   "file is corrupt or truncated",
                   path_, what, n, pos_, remaining());
    std::string s(static_cast<std::size_t>(n), '\0');
    read(s.data(), n, what);
    return s;
  }

 private:
  void fill() {
    buf_.resize(static_cast<std::size_t>(std::min<std::uint64_t>(1 << 20, remaining())));
    file_.pread_all(buf_.data(), buf_.size(), pos_, "the header");
    buf_pos_ = 0;
  }
  const ReadOnlyFile& file_;
  std::uint64_t size_;
  std::string path_;
  std::uint64_t pos_ = 0;
  std::vector<char> buf_;
  std::size_t buf_pos_ = 0;
};

std::uint64_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::UINT8: case GgufType::INT8: case GgufType::BOOL: return 1;
    case GgufType::UINT16: case GgufType::INT16: return 2;
    case GgufType::UINT32: case GgufType::INT32: case GgufType::FLOAT32: return 4;
    case GgufType::UINT64: case GgufType::INT64: case GgufType::FLOAT64: return 8;
    case GgufType::STRING: return 8;  // at least its length field
    case GgufType::ARRAY: return 12;  // at least type + count
  }
  return 0;
}

void read_scalar(Cursor& c, GgufType t, GgufValue& v, const std::string& what) {
  switch (t) {
    case GgufType::UINT8: v.ints.push_back(c.get<std::uint8_t>(what)); break;
    case GgufType::INT8: v.ints.push_back(c.get<std::int8_t>(what)); break;
    case GgufType::UINT16: v.ints.push_back(c.get<std::uint16_t>(what)); break;
    case GgufType::INT16: v.ints.push_back(c.get<std::int16_t>(what)); break;
    case GgufType::UINT32: v.ints.push_back(c.get<std::uint32_t>(what)); break;
    case GgufType::INT32: v.ints.push_back(c.get<std::int32_t>(what)); break;
    case GgufType::UINT64: v.ints.push_back(static_cast<std::int64_t>(c.get<std::uint64_t>(what))); break;
    case GgufType::INT64: v.ints.push_back(c.get<std::int64_t>(what)); break;
    case GgufType::BOOL: v.ints.push_back(c.get<std::uint8_t>(what) != 0); break;
    case GgufType::FLOAT32: v.floats.push_back(c.get<float>(what)); break;
    case GgufType::FLOAT64: v.floats.push_back(c.get<double>(what)); break;
    case GgufType::STRING: v.strings.push_back(c.str(what)); break;
    case GgufType::ARRAY: break;  // handled by the caller
  }
}

bool valid_type(std::uint32_t t) { return t <= static_cast<std::uint32_t>(GgufType::FLOAT64); }

void read_value(Cursor& c, GgufType t, GgufValue& v, const std::string& what, int depth,
                const std::string& path) {
  if (t != GgufType::ARRAY) {
    v.type = t;
    read_scalar(c, t, v, what);
    return;
  }
  KVLAB_THROW_IF(depth > 8, FormatError, "{}: {}: arrays nested more than 8 deep", path, what);
  const auto et = c.get<std::uint32_t>(what + " element type");
  KVLAB_THROW_IF(!valid_type(et), FormatError,
                 "{}: {}: array element type {} is not a GGUF value type (0..12)", path, what, et);
  const auto n = c.get<std::uint64_t>(what + " element count");
  const std::uint64_t min_bytes = scalar_size(static_cast<GgufType>(et));
  KVLAB_THROW_IF(min_bytes > 0 && n > c.remaining() / min_bytes, FormatError,
                 "{}: {}: array claims {} elements at offset {} but only {} bytes remain; the "
                 "file is corrupt or truncated",
                 path, what, n, c.pos(), c.remaining());
  if (depth == 0) {
    v.is_array = true;
    v.type = static_cast<GgufType>(et);
  }
  if (static_cast<GgufType>(et) == GgufType::ARRAY) {
    v.nested = true;
    GgufValue scratch;
    for (std::uint64_t i = 0; i < n; ++i)
      read_value(c, GgufType::ARRAY, scratch, what, depth + 1, path);
    return;
  }
  if (depth > 0) {  // contents of nested arrays are skipped (but bounds-checked)
    GgufValue scratch;
    for (std::uint64_t i = 0; i < n; ++i) read_scalar(c, static_cast<GgufType>(et), scratch, what);
    return;
  }
  for (std::uint64_t i = 0; i < n; ++i) read_scalar(c, static_cast<GgufType>(et), v, what);
}

}  // namespace

GgufFile GgufFile::open(const fs::path& path) {
  GgufFile f;
  f.path_ = path.string();
  const std::string& p = f.path_;
  f.file_ = ReadOnlyFile::open(p);
  const std::uint64_t size = f.file_.size();
  Cursor c(f.file_);
  KVLAB_THROW_IF(size < 24, FormatError,
                 "{}: only {} bytes; a GGUF file starts with a 24-byte header (magic, version, "
                 "counts); the file is truncated or not GGUF",
                 p, size);
  char magic[4];
  c.read(magic, 4, "the magic");
  if (std::memcmp(magic, "GGUF", 4) != 0) {
    std::string shown;
    for (char ch : magic)
      shown += std::isprint(static_cast<unsigned char>(ch))
                   ? std::string(1, ch)
                   : fmt::format("\\x{:02x}", static_cast<unsigned char>(ch));
    KVLAB_THROW(FormatError,
                "{}: magic is \"{}\" but a GGUF file starts with \"GGUF\"; not a GGUF file "
                "(old GGML/GGJT files must be converted with llama.cpp first)",
                p, shown);
  }
  f.version_ = c.get<std::uint32_t>("the version");
  KVLAB_THROW_IF(f.version_ >= 0x01000000u, FormatError,
                 "{}: version field {:#x} looks byte-swapped: big-endian GGUF is not supported", p,
                 f.version_);
  KVLAB_THROW_IF(f.version_ != 2 && f.version_ != 3, FormatError,
                 "{}: GGUF version {} is not supported (kvlab reads versions 2 and 3); re-convert "
                 "the model with a current llama.cpp",
                 p, f.version_);
  const auto n_tensors = c.get<std::uint64_t>("the tensor count");
  const auto n_kv = c.get<std::uint64_t>("the metadata count");
  // Each metadata pair needs >= 8 (key length) + 4 (type) + 1 bytes; each tensor info >= 8 + 4 +
  // 8 + 4 + 8 bytes. Counts that cannot fit in the file are corrupt, not a reason to allocate.
  KVLAB_THROW_IF(n_kv > c.remaining() / 13, FormatError,
                 "{}: metadata count {} cannot fit in a {}-byte file; the header is corrupt", p,
                 n_kv, size);
  KVLAB_THROW_IF(n_tensors > c.remaining() / 32, FormatError,
                 "{}: tensor count {} cannot fit in a {}-byte file; the header is corrupt", p,
                 n_tensors, size);

  for (std::uint64_t i = 0; i < n_kv; ++i) {
    const std::string key = c.str(fmt::format("metadata key {}", i));
    const auto t = c.get<std::uint32_t>(fmt::format("the type of {}", key));
    KVLAB_THROW_IF(!valid_type(t), FormatError,
                   "{}: metadata {} has value type {} at offset {}; GGUF types are 0..12, the file "
                   "is corrupt",
                   p, key, t, c.pos() - 4);
    GgufValue v;
    read_value(c, static_cast<GgufType>(t), v, "metadata " + key, 0, p);
    KVLAB_THROW_IF(f.kv_.count(key), FormatError, "{}: metadata key {} appears twice", p, key);
    f.kv_[key] = std::move(v);
  }
  if (f.kv_.count("general.alignment")) {
    const GgufValue& a = f.kv_["general.alignment"];
    KVLAB_THROW_IF(!a.is_int() || a.is_array || a.ints.empty(), FormatError,
                   "{}: general.alignment must be an integer", p);
    const std::int64_t al = a.ints[0];
    KVLAB_THROW_IF(al <= 0 || (al & (al - 1)) != 0 || al > (1 << 20), FormatError,
                   "{}: general.alignment {} is not a power of two up to 1 MiB", p, al);
    f.alignment_ = static_cast<std::uint64_t>(al);
  }

  for (std::uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = c.str(fmt::format("tensor name {}", i));
    const std::string where = fmt::format("{}: tensor {}", p, t.name);
    const auto nd = c.get<std::uint32_t>("n_dims of " + t.name);
    KVLAB_THROW_IF(nd == 0 || nd > kMaxDims, FormatError, "{}: {} dimensions (ggml allows 1..4)",
                   where, nd);
    std::uint64_t numel = 1;
    for (std::uint32_t d = 0; d < nd; ++d) {
      const auto v = c.get<std::uint64_t>("ne of " + t.name);
      KVLAB_THROW_IF(v == 0 || v > (std::uint64_t{1} << 40) || numel > (std::uint64_t{1} << 50) / v,
                     FormatError, "{}: dimension {} = {} is zero or absurd; the file is corrupt",
                     where, d, v);
      numel *= v;
      t.ne.push_back(v);
    }
    t.type = c.get<std::uint32_t>("type of " + t.name);
    t.offset = c.get<std::uint64_t>("offset of " + t.name);
    const auto blk = ggml_block(t.type);
    if (blk) {
      KVLAB_THROW_IF(t.ne[0] % blk->first != 0, FormatError,
                     "{}: row length {} is not a multiple of the {} block size {}", where, t.ne[0],
                     ggml_type_name(t.type), blk->first);
      t.nbytes = numel / blk->first * blk->second;
    }
    KVLAB_THROW_IF(t.offset % f.alignment_ != 0, FormatError,
                   "{}: data offset {} is not a multiple of the alignment {}", where, t.offset,
                   f.alignment_);
    KVLAB_THROW_IF(f.index_.count(t.name), FormatError, "{}: appears twice", where);
    f.index_[t.name] = f.tensors_.size();
    f.tensors_.push_back(std::move(t));
  }
  f.data_start_ = (c.pos() + f.alignment_ - 1) / f.alignment_ * f.alignment_;
  const std::uint64_t data_size = size >= f.data_start_ ? size - f.data_start_ : 0;
  std::vector<const GgufTensorInfo*> by_off;
  for (const auto& t : f.tensors_) {
    // Unknown types (nbytes 0) are refused only when read, so metadata of such files can still be
    // listed; their extent is unknown, so they are left out of the overlap check.
    KVLAB_THROW_IF(t.offset > data_size || t.nbytes > data_size - t.offset, FormatError,
                   "{}: tensor {} ({} bytes at data offset {}) runs past the end of the file (data "
                   "section {} bytes); the file is truncated",
                   p, t.name, t.nbytes, t.offset, data_size);
    if (t.nbytes > 0) by_off.push_back(&t);
  }
  std::sort(by_off.begin(), by_off.end(),
            [](const GgufTensorInfo* a, const GgufTensorInfo* b) { return a->offset < b->offset; });
  for (std::size_t i = 1; i < by_off.size(); ++i) {
    const auto* a = by_off[i - 1];
    const auto* b = by_off[i];
    KVLAB_THROW_IF(b->offset < a->offset + a->nbytes, FormatError,
                   "{}: tensors {} [{}, {}) and {} [{}, {}) overlap; the file is corrupt", p,
                   a->name, a->offset, a->offset + a->nbytes, b->name, b->offset,
                   b->offset + b->nbytes);
  }
  return f;
}

const GgufTensorInfo* GgufFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::int64_t GgufFile::get_int(const std::string& key) const {
  const auto it = kv_.find(key);
  KVLAB_THROW_IF(it == kv_.end(), FormatError, "{}: metadata key {} is missing", path_, key);
  KVLAB_THROW_IF(!it->second.is_int() || it->second.is_array || it->second.ints.empty(),
                 FormatError, "{}: metadata {} should be an integer", path_, key);
  return it->second.ints[0];
}

double GgufFile::get_float(const std::string& key) const {
  const auto it = kv_.find(key);
  KVLAB_THROW_IF(it == kv_.end(), FormatError, "{}: metadata key {} is missing", path_, key);
  const GgufValue& v = it->second;
  KVLAB_THROW_IF(v.is_array || (v.ints.empty() && v.floats.empty()) || !(v.is_int() || v.is_float()),
                 FormatError, "{}: metadata {} should be a number", path_, key);
  return v.is_float() ? v.floats[0] : static_cast<double>(v.ints[0]);
}

std::string GgufFile::get_string(const std::string& key) const {
  const auto it = kv_.find(key);
  KVLAB_THROW_IF(it == kv_.end(), FormatError, "{}: metadata key {} is missing", path_, key);
  KVLAB_THROW_IF(it->second.type != GgufType::STRING || it->second.is_array ||
                     it->second.strings.empty(),
                 FormatError, "{}: metadata {} should be a string", path_, key);
  return it->second.strings[0];
}

void GgufFile::read_raw(const GgufTensorInfo& t, void* out) const {
  file_.pread_all(out, t.nbytes, data_start_ + t.offset, "tensor " + t.name);
}

std::vector<float> GgufFile::read_f32(const GgufTensorInfo& t) const {
  KVLAB_THROW_IF(!ggml_type_supported(t.type), FormatError,
                 "{}: tensor {} is {}, which kvlab does not dequantise (supported: F32, F16, BF16, "
                 "Q8_0, Q4_0, Q4_1, Q4_K, Q6_K); re-quantise with llama-quantize to one of those",
                 path_, t.name, ggml_type_name(t.type));
  std::vector<unsigned char> raw(static_cast<std::size_t>(t.nbytes));
  read_raw(t, raw.data());
  std::vector<float> out(static_cast<std::size_t>(t.numel()));
  ggml_dequantize(t.type, raw.data(), out.data(), static_cast<std::int64_t>(out.size()));
  return out;
}

// ------------------------------------------------------------------------- dequantise --
// Transcribed from ggml/src/ggml-quants.c (dequantize_row_*), same float operations in the same
// order, so results are bit-identical to ggml and to gguf-py's numpy versions.

namespace {

inline float fp16(const unsigned char* p) {
  std::uint16_t h;
  std::memcpy(&h, p, 2);
  return static_cast<float>(c10::Half(h, c10::Half::from_bits()));  // exact
}

inline void get_scale_min_k4(int j, const unsigned char* q, std::uint8_t* d, std::uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = static_cast<std::uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<std::uint8_t>((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
  }
}

}  // namespace

void ggml_dequantize(std::uint32_t type, const void* src, float* y, std::int64_t n) {
  const auto* x = static_cast<const unsigned char*>(src);
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::F32:
      std::memcpy(y, x, static_cast<std::size_t>(n) * 4);
      return;
    case GgmlType::F16:
      for (std::int64_t i = 0; i < n; ++i) y[i] = fp16(x + 2 * i);
      return;
    case GgmlType::BF16:
      for (std::int64_t i = 0; i < n; ++i) {
        std::uint16_t b;
        std::memcpy(&b, x + 2 * i, 2);
        const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
        std::memcpy(&y[i], &u, 4);
      }
      return;
    case GgmlType::Q8_0: {  // block: f16 d, int8 qs[32]
      for (std::int64_t b = 0; b < n / 32; ++b, x += 34) {
        const float d = fp16(x);
        const auto* qs = reinterpret_cast<const std::int8_t*>(x + 2);
        for (int j = 0; j < 32; ++j) *y++ = qs[j] * d;
      }
      return;
    }
    case GgmlType::Q4_0: {  // block: f16 d, u8 qs[16]; low nibbles first
      for (std::int64_t b = 0; b < n / 32; ++b, x += 18) {
        const float d = fp16(x);
        const unsigned char* qs = x + 2;
        for (int j = 0; j < 16; ++j) {
          const int x0 = (qs[j] & 0x0F) - 8;
          const int x1 = (qs[j] >> 4) - 8;
          y[j] = x0 * d;
          y[j + 16] = x1 * d;
        }
        y += 32;
      }
      return;
    }
    case GgmlType::Q4_1: {  // block: f16 d, f16 m, u8 qs[16]
      for (std::int64_t b = 0; b < n / 32; ++b, x += 20) {
        const float d = fp16(x);
        const float m = fp16(x + 2);
        const unsigned char* qs = x + 4;
        for (int j = 0; j < 16; ++j) {
          const int x0 = qs[j] & 0x0F;
          const int x1 = qs[j] >> 4;
          y[j] = x0 * d + m;
          y[j + 16] = x1 * d + m;
        }
        y += 32;
      }
      return;
    }
    case GgmlType::Q4_K: {  // block: f16 d, f16 dmin, u8 scales[12], u8 qs[128]
      for (std::int64_t b = 0; b < n / 256; ++b, x += 144) {
        const float d = fp16(x);
        const float min = fp16(x + 2);
        const unsigned char* scales = x + 4;
        const unsigned char* q = x + 16;
        int is = 0;
        std::uint8_t sc, m;
        for (int j = 0; j < 256; j += 64) {
          get_scale_min_k4(is + 0, scales, &sc, &m);
          const float d1 = d * sc;
          const float m1 = min * m;
          get_scale_min_k4(is + 1, scales, &sc, &m);
          const float d2 = d * sc;
          const float m2 = min * m;
          for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
          for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
          q += 32;
          is += 2;
        }
      }
      return;
    }
    case GgmlType::Q6_K: {  // block: u8 ql[128], u8 qh[64], i8 scales[16], f16 d
      for (std::int64_t b = 0; b < n / 256; ++b, x += 210) {
        const float d = fp16(x + 208);
        const unsigned char* ql = x;
        const unsigned char* qh = x + 128;
        const auto* sc = reinterpret_cast<const std::int8_t*>(x + 192);
        for (int k = 0; k < 256; k += 128) {
          for (int l = 0; l < 32; ++l) {
            const int is = l / 16;
            const int q1 = static_cast<std::int8_t>((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int q2 = static_cast<std::int8_t>((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int q3 = static_cast<std::int8_t>((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int q4 = static_cast<std::int8_t>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l + 0] = d * sc[is + 0] * q1;
            y[l + 32] = d * sc[is + 2] * q2;
            y[l + 64] = d * sc[is + 4] * q3;
            y[l + 96] = d * sc[is + 6] * q4;
          }
          y += 128;
          ql += 64;
          qh += 32;
          sc += 8;
        }
      }
      return;
    }
    default: break;
  }
  KVLAB_THROW(FormatError, "ggml type {} cannot be dequantised by kvlab", ggml_type_name(type));
}

void gguf_unpermute_rows(float* w, std::int64_t rows, std::int64_t cols, std::int64_t n_head) {
  // convert_hf_to_gguf.py: w.reshape(n_head, 2, d/2, cols).swapaxes(1, 2).reshape(rows, cols), so
  // GGUF row h*d + 2*i + s holds HF row h*d + s*d/2 + i.
  KVLAB_THROW_IF(n_head <= 0 || rows % n_head != 0 || (rows / n_head) % 2 != 0, FormatError,
                 "cannot un-permute {} rows for {} heads (rows per head must be even)", rows,
                 n_head);
  const std::int64_t d = rows / n_head;
  std::vector<float> tmp(static_cast<std::size_t>(d * cols));
  for (std::int64_t h = 0; h < n_head; ++h) {
    float* base = w + h * d * cols;
    for (std::int64_t i = 0; i < d / 2; ++i)
      for (std::int64_t s = 0; s < 2; ++s)
        std::memcpy(&tmp[static_cast<std::size_t>((s * (d / 2) + i) * cols)],
                    base + (2 * i + s) * cols, static_cast<std::size_t>(cols) * sizeof(float));
    std::memcpy(base, tmp.data(), tmp.size() * sizeof(float));
  }
}

}  // namespace kvlab::llm
