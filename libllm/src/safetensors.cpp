#include "kvlab/llm/safetensors.hpp"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>

#include <nlohmann/json.hpp>

#include "kvlab/core/error.hpp"
#include "kvlab/core/tensor_io.hpp"

namespace kvlab::llm {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct DtypeRow {
  const char* name;
  std::size_t size;
  std::optional<h5::DType> type;
};

// Every dtype of the safetensors spec, with its element size, so byte sizes can be checked even
// for dtypes kvlab cannot read.
const std::vector<DtypeRow>& dtype_table() {
  static const std::vector<DtypeRow> t = {
      {"F64", 8, h5::DType::f64},   {"F32", 4, h5::DType::f32},  {"F16", 2, h5::DType::f16},
      {"BF16", 2, h5::DType::bf16}, {"I64", 8, h5::DType::i64},  {"I32", 4, h5::DType::i32},
      {"I16", 2, h5::DType::i16},   {"I8", 1, h5::DType::i8},    {"U64", 8, h5::DType::u64},
      {"U32", 4, h5::DType::u32},   {"U16", 2, h5::DType::u16},  {"U8", 1, h5::DType::u8},
      {"BOOL", 1, h5::DType::boolean},
      {"F8_E4M3", 1, std::nullopt}, {"F8_E5M2", 1, std::nullopt}, {"F8_E8M0", 1, std::nullopt},
      {"C64", 8, std::nullopt},
  };
  return t;
}

const DtypeRow* find_dtype(const std::string& s) {
  for (const auto& r : dtype_table())
    if (s == r.name) return &r;
  return nullptr;
}

// a * b, or nullopt on overflow past 2^62 (no real tensor gets close).
std::optional<std::uint64_t> mul_checked(std::uint64_t a, std::uint64_t b) {
  constexpr std::uint64_t kMax = std::uint64_t{1} << 62;
  if (a != 0 && b > kMax / a) return std::nullopt;
  return a * b;
}


std::uint64_t get_u64(const json& v, const std::string& where, const char* field) {
  KVLAB_THROW_IF(!v.is_number_unsigned() && !(v.is_number_integer() && v.get<std::int64_t>() >= 0),
                 FormatError, "{}: {} must be a non-negative integer, found {}", where, field,
                 v.dump());
  return v.get<std::uint64_t>();
}

}  // namespace

std::optional<h5::DType> safetensors_dtype(const std::string& s) {
  const DtypeRow* r = find_dtype(s);
  return r ? r->type : std::nullopt;
}

const char* safetensors_dtype_name(h5::DType t) {
  for (const auto& r : dtype_table())
    if (r.type && *r.type == t) return r.name;
  return "?";
}

// ------------------------------------------------------------------------------ reading --

SafetensorsFile SafetensorsFile::open(const fs::path& path, std::uint64_t max_header_bytes) {
  SafetensorsFile f;
  f.path_ = path.string();
  const std::string& p = f.path_;
  f.file_ = ReadOnlyFile::open(p);
  const std::uint64_t file_size = f.file_.size();
  KVLAB_THROW_IF(file_size < 8, FormatError,
                 "{}: only {} bytes, but a safetensors file starts with an 8-byte header length; "
                 "the file is truncated or not safetensors",
                 p, file_size);
  unsigned char len_bytes[8];
  f.file_.pread_all(len_bytes, 8, 0, "the header length");
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];  // little-endian
  KVLAB_THROW_IF(n > max_header_bytes, FormatError,
                 "{}: header length {} bytes exceeds the {} byte limit; the file is corrupt or not "
                 "safetensors",
                 p, n, max_header_bytes);
  KVLAB_THROW_IF(n > file_size - 8, FormatError,
                 "{}: header length {} bytes but only {} bytes follow it; the file is truncated, "
                 "download it again",
                 p, n, file_size - 8);
  KVLAB_THROW_IF(n < 2, FormatError, "{}: header length {} is too small for a JSON object", p, n);
  std::string text(static_cast<std::size_t>(n), '\0');
  f.file_.pread_all(text.data(), n, 8, "the header");
  f.data_start_ = 8 + n;
  f.data_size_ = file_size - 8 - n;

  json h;
  try {
    h = json::parse(text);
  } catch (const json::parse_error& e) {
    KVLAB_THROW(FormatError, "{}: the header is not valid JSON ({}); the file is corrupt", p,
                e.what());
  }
  KVLAB_THROW_IF(!h.is_object(), FormatError,
                 "{}: the header is JSON {} but must be an object of tensors", p, h.type_name());
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const json& e = it.value();
    if (name == "__metadata__") {
      KVLAB_THROW_IF(!e.is_object(), FormatError, "{}: __metadata__ must be an object", p);
      for (auto m = e.begin(); m != e.end(); ++m) {
        KVLAB_THROW_IF(!m.value().is_string(), FormatError,
                       "{}: __metadata__ value of \"{}\" must be a string", p, m.key());
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = fmt::format("{}: tensor {}", p, name);
    KVLAB_THROW_IF(!e.is_object(), FormatError, "{}: entry must be an object, found {}", where,
                   e.type_name());
    KVLAB_THROW_IF(!e.contains("dtype") || !e["dtype"].is_string(), FormatError,
                   "{}: \"dtype\" is missing or not a string", where);
    KVLAB_THROW_IF(!e.contains("shape") || !e["shape"].is_array(), FormatError,
                   "{}: \"shape\" is missing or not an array", where);
    KVLAB_THROW_IF(!e.contains("data_offsets") || !e["data_offsets"].is_array() ||
                       e["data_offsets"].size() != 2,
                   FormatError, "{}: \"data_offsets\" must be an array [begin, end]", where);
    SafetensorsTensor t;
    t.name = name;
    t.dtype = e["dtype"].get<std::string>();
    const DtypeRow* row = find_dtype(t.dtype);
    KVLAB_THROW_IF(!row, FormatError, "{}: unknown dtype \"{}\" (the safetensors spec has F64, "
                   "F32, F16, BF16, I64..U8, BOOL, F8_*)", where, t.dtype);
    t.type = row->type;
    std::uint64_t numel = 1;
    for (const json& d : e["shape"]) {
      const std::uint64_t v = get_u64(d, where, "every shape entry");
      const auto m = mul_checked(numel, v);
      KVLAB_THROW_IF(!m, FormatError, "{}: shape {} is absurdly large; the file is corrupt", where,
                     e["shape"].dump());
      numel = *m;
      t.shape.push_back(static_cast<std::int64_t>(v));
    }
    t.begin = get_u64(e["data_offsets"][0], where, "data_offsets[0]");
    t.end = get_u64(e["data_offsets"][1], where, "data_offsets[1]");
    KVLAB_THROW_IF(t.end < t.begin, FormatError, "{}: data_offsets [{}, {}] end before they begin",
                   where, t.begin, t.end);
    const auto bytes = mul_checked(numel, row->size);
    KVLAB_THROW_IF(!bytes || *bytes != t.nbytes(), FormatError,
                   "{}: {} {} needs {} bytes but data_offsets [{}, {}] span {}; the header is "
                   "corrupt",
                   where, t.dtype, h5::shape_str(t.shape), bytes ? *bytes : 0, t.begin, t.end,
                   t.nbytes());
    KVLAB_THROW_IF(t.end > f.data_size_, FormatError,
                   "{}: data_offsets [{}, {}] run past the end of the data section ({} bytes); "
                   "the file is truncated, download it again",
                   where, t.begin, t.end, f.data_size_);
    f.tensors_.push_back(std::move(t));
  }
  std::sort(f.tensors_.begin(), f.tensors_.end(),
            [](const SafetensorsTensor& a, const SafetensorsTensor& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  const SafetensorsTensor* prev = nullptr;
  for (const auto& t : f.tensors_) {
    if (t.nbytes() == 0) continue;
    KVLAB_THROW_IF(prev && t.begin < prev->end, FormatError,
                   "{}: tensors {} [{}, {}] and {} [{}, {}] overlap; the header is corrupt", p,
                   prev->name, prev->begin, prev->end, t.name, t.begin, t.end);
    prev = &t;
  }
  for (std::size_t i = 0; i < f.tensors_.size(); ++i) f.index_[f.tensors_[i].name] = i;
  return f;
}

const SafetensorsTensor* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

void SafetensorsFile::read_raw(const SafetensorsTensor& t, void* out) const {
  file_.pread_all(out, t.nbytes(), data_start_ + t.begin, "tensor " + t.name);
}

at::Tensor SafetensorsFile::read(const std::string& name) const {
  const SafetensorsTensor* t = find(name);
  KVLAB_THROW_IF(!t, FormatError, "{}: no tensor named {}", path_, name);
  KVLAB_THROW_IF(!t->type, FormatError,
                 "{}: tensor {} has dtype {}, which kvlab cannot read (F32, BF16, F16, F64, "
                 "integers, BOOL)",
                 path_, name, t->dtype);
  at::Tensor out =
      at::empty(t->shape, at::TensorOptions().dtype(core::torch_dtype(*t->type)));
  if (*t->type == h5::DType::u16 || *t->type == h5::DType::u32 || *t->type == h5::DType::u64) {
    // LibTorch 1.13 has no unsigned 16/32/64-bit tensors: widen.
    std::vector<char> raw(t->nbytes());
    read_raw(*t, raw.data());
    const auto n = static_cast<std::size_t>(out.numel());
    if (*t->type == h5::DType::u16) {
      auto* o = out.data_ptr<std::int32_t>();
      for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t v;
        std::memcpy(&v, raw.data() + 2 * i, 2);
        o[i] = v;
      }
    } else {
      auto* o = out.data_ptr<std::int64_t>();
      for (std::size_t i = 0; i < n; ++i) {
        if (*t->type == h5::DType::u32) {
          std::uint32_t v;
          std::memcpy(&v, raw.data() + 4 * i, 4);
          o[i] = v;
        } else {
          std::uint64_t v;
          std::memcpy(&v, raw.data() + 8 * i, 8);
          o[i] = static_cast<std::int64_t>(v);
        }
      }
    }
    return out;
  }
  read_raw(*t, out.data_ptr());
  return out;
}

// --------------------------------------------------------------------------- checkpoint --

SafetensorsCheckpoint SafetensorsCheckpoint::open_dir(const fs::path& dir) {
  SafetensorsCheckpoint c;
  std::error_code ec;
  KVLAB_THROW_IF(!fs::is_directory(dir, ec), FormatError,
                 "{}: not a directory; give the Hugging Face checkpoint directory (config.json + "
                 "model.safetensors)",
                 dir.string());
  const fs::path index = dir / "model.safetensors.index.json";
  const fs::path single = dir / "model.safetensors";
  if (fs::exists(index, ec)) {
    c.source_ = index.string();
    std::ifstream in(index);
    json j;
    try {
      j = json::parse(in);
    } catch (const json::parse_error& e) {
      KVLAB_THROW(FormatError, "{}: not valid JSON ({})", c.source_, e.what());
    }
    KVLAB_THROW_IF(!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object(),
                   FormatError, "{}: no \"weight_map\" object; is this a safetensors index?",
                   c.source_);
    std::map<std::string, std::size_t> shard_of_file;
    std::map<std::string, std::size_t> listed;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      KVLAB_THROW_IF(!it.value().is_string(), FormatError,
                     "{}: weight_map entry {} must be a file name string", c.source_, it.key());
      const std::string file = it.value().get<std::string>();
      KVLAB_THROW_IF(file.empty() || file.find('/') != std::string::npos ||
                         file.find('\\') != std::string::npos || file == "." || file == "..",
                     FormatError,
                     "{}: weight_map entry {} names \"{}\"; shards must be plain file names in the "
                     "same directory",
                     c.source_, it.key(), file);
      auto [sit, inserted] = shard_of_file.emplace(file, c.shards_.size());
      if (inserted) c.shards_.push_back(SafetensorsFile::open(dir / file));
      listed[it.key()] = sit->second;
    }
    KVLAB_THROW_IF(c.shards_.empty(), FormatError, "{}: weight_map is empty", c.source_);
    for (const auto& [name, shard] : listed) {
      KVLAB_THROW_IF(!c.shards_[shard].find(name), FormatError,
                     "{}: lists tensor {} in {}, but that shard does not contain it; the "
                     "checkpoint is incomplete",
                     c.source_, name, c.shards_[shard].path());
    }
    // Every tensor of every shard, each in exactly one shard.
    for (std::size_t s = 0; s < c.shards_.size(); ++s) {
      for (const auto& t : c.shards_[s].tensors()) {
        const auto prev = c.where_.find(t.name);
        KVLAB_THROW_IF(prev != c.where_.end(), FormatError,
                       "{}: tensor {} is stored in both {} and {}", c.source_, t.name,
                       c.shards_[prev->second].path(), c.shards_[s].path());
        c.where_[t.name] = s;
      }
    }
  } else if (fs::exists(single, ec)) {
    c.source_ = single.string();
    c.shards_.push_back(SafetensorsFile::open(single));
    for (const auto& t : c.shards_[0].tensors()) c.where_[t.name] = 0;
  } else {
    KVLAB_THROW(FormatError,
                "{}: neither model.safetensors nor model.safetensors.index.json is there (kvlab "
                "reads safetensors checkpoints, not pytorch_model.bin); save the model with "
                "save_pretrained(..., safe_serialization=True)",
                dir.string());
  }
  return c;
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> v;
  for (const auto& [n, s] : where_) v.push_back(n);
  return v;
}

const SafetensorsTensor* SafetensorsCheckpoint::find(const std::string& name) const {
  const auto it = where_.find(name);
  return it == where_.end() ? nullptr : shards_[it->second].find(name);
}

void SafetensorsCheckpoint::read_raw(const std::string& name, void* out) const {
  const auto it = where_.find(name);
  KVLAB_THROW_IF(it == where_.end(), FormatError, "{}: no tensor named {}", source_, name);
  const SafetensorsFile& f = shards_[it->second];
  f.read_raw(*f.find(name), out);
}

at::Tensor SafetensorsCheckpoint::read(const std::string& name) const {
  const auto it = where_.find(name);
  KVLAB_THROW_IF(it == where_.end(), FormatError, "{}: no tensor named {}", source_, name);
  return shards_[it->second].read(name);
}

// ------------------------------------------------------------------------------ writing --

void write_safetensors(const fs::path& out, const std::vector<SafetensorsSpec>& specs,
                       const std::function<void(std::size_t, std::vector<char>&)>& fill,
                       const std::map<std::string, std::string>& metadata) {
  json h = json::object();
  std::vector<std::uint64_t> sizes;
  std::uint64_t off = 0;
  for (const auto& s : specs) {
    KVLAB_THROW_IF(h.contains(s.name) || s.name == "__metadata__", UsageError,
                   "{}: tensor name {} given twice or reserved", out.string(), s.name);
    const char* dn = safetensors_dtype_name(s.type);
    KVLAB_THROW_IF(std::string(dn) == "?", UsageError, "{}: tensor {}: element type {} has no "
                   "safetensors dtype", out.string(), s.name, h5::dtype_name(s.type));
    const std::uint64_t n =
        static_cast<std::uint64_t>(h5::numel(s.shape)) * h5::dtype_size(s.type);
    h[s.name] = {{"dtype", dn}, {"shape", s.shape}, {"data_offsets", {off, off + n}}};
    sizes.push_back(n);
    off += n;
  }
  if (!metadata.empty()) h["__metadata__"] = metadata;
  std::string text = h.dump();
  // Pad with spaces so the data section starts 8-byte aligned (as the official writer does).
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');

  fs::path partial = out;
  partial += fmt::format(".partial.{}", ::getpid());
  struct Remover {
    fs::path p;
    bool armed = true;
    ~Remover() {
      std::error_code ec;
      if (armed) fs::remove(p, ec);
    }
  } remover{partial};
  std::ofstream f(partial, std::ios::binary | std::ios::trunc);
  KVLAB_THROW_IF(!f, IoError, "{}: cannot create: {}", partial.string(), std::strerror(errno));
  unsigned char len[8];
  std::uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>((n >> (8 * i)) & 0xff);
  f.write(reinterpret_cast<const char*>(len), 8);
  f.write(text.data(), static_cast<std::streamsize>(text.size()));
  std::vector<char> buf;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    buf.assign(static_cast<std::size_t>(sizes[i]), 0);
    fill(i, buf);
    KVLAB_THROW_IF(buf.size() != sizes[i], IoError, "{}: tensor {} produced {} bytes, expected {}",
                   out.string(), specs[i].name, buf.size(), sizes[i]);
    f.write(buf.data(), static_cast<std::streamsize>(buf.size()));
  }
  f.flush();
  KVLAB_THROW_IF(!f, IoError, "{}: write failed (disk full?)", partial.string());
  f.close();
  std::error_code ec;
  fs::rename(partial, out, ec);
  KVLAB_THROW_IF(ec, IoError, "{}: cannot rename {} into place: {}", out.string(),
                 partial.string(), ec.message());
  remover.armed = false;
}

void write_safetensors(const fs::path& out, const std::map<std::string, at::Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsSpec> specs;
  std::vector<at::Tensor> ts;
  for (const auto& [name, t] : tensors) {
    at::Tensor c = t.detach().to(at::kCPU).contiguous();
    specs.push_back({name, core::h5_dtype(c.scalar_type()),
                     std::vector<std::int64_t>(c.sizes().begin(), c.sizes().end())});
    ts.push_back(c);
  }
  write_safetensors(
      out, specs,
      [&](std::size_t i, std::vector<char>& buf) {
        if (!buf.empty()) std::memcpy(buf.data(), ts[i].data_ptr(), buf.size());
      },
      metadata);
}

}  // namespace kvlab::llm
