#include "kvlab/llm/data.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <unistd.h>
#include <fstream>
#include <regex>

#include "kvlab/core/error.hpp"
#include "kvlab/core/h5.hpp"
#include "kvlab/core/progress.hpp"
#include "kvlab/llm/model_io.hpp"
#include "kvlab/llm/tokenizer.hpp"

namespace kvlab::llm {

namespace fs = std::filesystem;

const std::map<std::string, TokenFileFormat>& token_file_format_names() {
  static const std::map<std::string, TokenFileFormat> m = {
      {"auto", TokenFileFormat::automatic}, {"bin-u16", TokenFileFormat::bin_u16},
      {"bin-u32", TokenFileFormat::bin_u32}, {"npy", TokenFileFormat::npy},
      {"h5", TokenFileFormat::hdf5},         {"text", TokenFileFormat::text}};
  return m;
}

const char* token_file_format_name(TokenFileFormat f) {
  for (const auto& [k, v] : token_file_format_names())
    if (v == f) return k.c_str();
  return "?";
}

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  KVLAB_THROW_IF(!f, FormatError, "{}: cannot open the data file", p.string());
  return std::string(std::istreambuf_iterator<char>(f), {});
}

template <class T>
at::Tensor from_raw(const char* data, std::int64_t n) {
  std::vector<T> v(static_cast<std::size_t>(n));
  if (n) std::memcpy(v.data(), data, static_cast<std::size_t>(n) * sizeof(T));
  at::Tensor out = at::empty({n}, at::kLong);
  auto* o = out.data_ptr<std::int64_t>();
  for (std::int64_t i = 0; i < n; ++i) o[i] = static_cast<std::int64_t>(v[static_cast<std::size_t>(i)]);
  return out;
}

at::Tensor read_bin(const fs::path& p, int width) {
  const std::string s = slurp(p);
  KVLAB_THROW_IF(s.size() % static_cast<std::size_t>(width) != 0, FormatError,
                 "{}: {} bytes is not a whole number of uint{} token ids; is this a nanoGPT .bin "
                 "of that width? (--data-format bin-u16 or bin-u32)",
                 p.string(), s.size(), width * 8);
  const auto n = static_cast<std::int64_t>(s.size()) / width;
  return width == 2 ? from_raw<std::uint16_t>(s.data(), n) : from_raw<std::uint32_t>(s.data(), n);
}

// NumPy format 1.0/2.0/3.0: magic "\x93NUMPY", major, minor, header length (u16 or u32), then a
// Python dict literal {'descr': '<u2', 'fortran_order': False, 'shape': (n,), }.
at::Tensor read_npy(const fs::path& p, std::vector<std::int64_t>& shape) {
  const std::string s = slurp(p);
  const std::string where = p.string();
  KVLAB_THROW_IF(s.size() < 10 || s.compare(0, 6, "\x93NUMPY") != 0, FormatError,
                 "{}: not a .npy file (no \\x93NUMPY magic)", where);
  const int major = static_cast<unsigned char>(s[6]);
  std::size_t hl = 0, off = 0;
  if (major == 1) {
    hl = static_cast<unsigned char>(s[8]) | (static_cast<std::size_t>(static_cast<unsigned char>(s[9])) << 8);
    off = 10;
  } else if (major == 2 || major == 3) {
    KVLAB_THROW_IF(s.size() < 12, FormatError, "{}: truncated .npy header", where);
    for (int i = 0; i < 4; ++i) hl |= static_cast<std::size_t>(static_cast<unsigned char>(s[8 + i])) << (8 * i);
    off = 12;
  } else {
    KVLAB_THROW(FormatError, "{}: .npy format version {} is not supported (1, 2 or 3)", where, major);
  }
  KVLAB_THROW_IF(off + hl > s.size(), FormatError, "{}: .npy header runs past the end of the file",
                 where);
  const std::string h = s.substr(off, hl);
  std::smatch m;
  KVLAB_THROW_IF(!std::regex_search(h, m, std::regex("'descr'\\s*:\\s*'([<>|=]?)([a-z])(\\d+)'")),
                 FormatError, "{}: .npy header has no 'descr': {}", where, h);
  const std::string endian = m[1], kind = m[2];
  const int size = std::stoi(m[3]);
  KVLAB_THROW_IF(endian == ">" && size > 1, FormatError,
                 "{}: big-endian .npy arrays are not supported; save with '<' byte order", where);
  KVLAB_THROW_IF(kind != "u" && kind != "i", FormatError,
                 "{}: .npy dtype '{}{}' is not an integer type; token ids must be int or uint",
                 where, kind, size);
  KVLAB_THROW_IF(std::regex_search(h, std::regex("'fortran_order'\\s*:\\s*True")), FormatError,
                 "{}: Fortran-ordered .npy arrays are not supported; save a C-ordered array", where);
  KVLAB_THROW_IF(!std::regex_search(h, m, std::regex("'shape'\\s*:\\s*\\(([^)]*)\\)")), FormatError,
                 "{}: .npy header has no 'shape'", where);
  std::int64_t n = 1;
  const std::string dims = m[1];
  static const std::regex kNumber("\\d+");
  std::sregex_iterator it(dims.begin(), dims.end(), kNumber), end;
  for (; it != end; ++it) {
    shape.push_back(std::stoll(it->str()));
    n *= shape.back();
  }
  const std::size_t data = off + hl;
  KVLAB_THROW_IF(s.size() - data != static_cast<std::size_t>(n) * static_cast<std::size_t>(size),
                 FormatError, "{}: .npy shape ({}) of {}-byte ids needs {} bytes, the file has {}",
                 where, fmt::join(shape, ", "), size, n * size, s.size() - data);
  const char* d = s.data() + data;
  if (kind == "u") {
    if (size == 1) return from_raw<std::uint8_t>(d, n);
    if (size == 2) return from_raw<std::uint16_t>(d, n);
    if (size == 4) return from_raw<std::uint32_t>(d, n);
    if (size == 8) return from_raw<std::uint64_t>(d, n);
  } else {
    if (size == 1) return from_raw<std::int8_t>(d, n);
    if (size == 2) return from_raw<std::int16_t>(d, n);
    if (size == 4) return from_raw<std::int32_t>(d, n);
    if (size == 8) return from_raw<std::int64_t>(d, n);
  }
  KVLAB_THROW(FormatError, "{}: .npy integer size {} is not supported", where, size);
}

at::Tensor read_h5(const fs::path& p, const std::string& dataset, std::vector<std::int64_t>& shape) {
  h5::File f = h5::File::open(p);
  h5::Group root = f.root();
  std::string name = dataset;
  if (!root.has_dataset(name)) {
    std::vector<std::string> ds;
    for (const auto& c : root.children())
      if (root.has_dataset(c)) ds.push_back(c);
    KVLAB_THROW_IF(ds.size() != 1, FormatError,
                   "{}: no dataset \"{}\"; the file's top-level datasets are [{}]: pass "
                   "--data-dataset NAME",
                   p.string(), dataset, fmt::join(ds, ", "));
    name = ds[0];
  }
  const h5::DatasetInfo info = root.info(name);
  shape = info.shape;
  const std::int64_t n = h5::numel(info.shape);
  KVLAB_THROW_IF(!info.dtype, FormatError, "{}:/{}: element type {} is not an integer type",
                 p.string(), name, info.type_desc);
  using h5::DType;
  const DType t = *info.dtype;
  std::vector<char> buf(static_cast<std::size_t>(n) * h5::dtype_size(t));
  switch (t) {
    case DType::u8: case DType::u16: case DType::u32: case DType::u64:
    case DType::i8: case DType::i16: case DType::i32: case DType::i64:
      root.read(name, t, buf.data());
      break;
    default:
      KVLAB_THROW(FormatError, "{}:/{}: element type {} is not an integer type; token ids must be "
                  "integers", p.string(), name, h5::dtype_name(t));
  }
  switch (t) {
    case DType::u8: return from_raw<std::uint8_t>(buf.data(), n);
    case DType::u16: return from_raw<std::uint16_t>(buf.data(), n);
    case DType::u32: return from_raw<std::uint32_t>(buf.data(), n);
    case DType::u64: return from_raw<std::uint64_t>(buf.data(), n);
    case DType::i8: return from_raw<std::int8_t>(buf.data(), n);
    case DType::i16: return from_raw<std::int16_t>(buf.data(), n);
    case DType::i32: return from_raw<std::int32_t>(buf.data(), n);
    default: return from_raw<std::int64_t>(buf.data(), n);
  }
}

TokenFileFormat resolve_format(const fs::path& path, TokenFileFormat f, std::int64_t vocab_size) {
  if (f != TokenFileFormat::automatic) return f;
  const std::string ext = path.extension().string();
  if (ext == ".bin") return vocab_size > 65536 ? TokenFileFormat::bin_u32 : TokenFileFormat::bin_u16;
  if (ext == ".npy") return TokenFileFormat::npy;
  if (ext == ".h5" || ext == ".hdf5" || h5::is_hdf5(path)) return TokenFileFormat::hdf5;
  return TokenFileFormat::text;
}

}  // namespace

std::vector<std::int64_t> bytes_to_ids(const std::string& s) {
  std::vector<std::int64_t> v;
  v.reserve(s.size());
  for (unsigned char c : s) v.push_back(c);
  return v;
}

std::string ids_to_bytes(const std::vector<std::int64_t>& ids) {
  std::string s;
  for (auto i : ids)
    if (i >= 0 && i < 256) s.push_back(static_cast<char>(static_cast<unsigned char>(i)));
  return s;
}

TokenData read_tokens(const fs::path& path, const TokenFileOptions& opt, std::int64_t vocab_size,
                      bool byte_level) {
  KVLAB_THROW_IF(!fs::exists(path), FormatError, "{}: no such data file", path.string());
  TokenData d;
  d.path = path.string();
  const TokenFileFormat f = resolve_format(path, opt.format, vocab_size);
  d.format = f;
  switch (f) {
    case TokenFileFormat::bin_u16: d.ids = read_bin(path, 2); break;
    case TokenFileFormat::bin_u32: d.ids = read_bin(path, 4); break;
    case TokenFileFormat::npy: d.ids = read_npy(path, d.shape); break;
    case TokenFileFormat::hdf5: d.ids = read_h5(path, opt.dataset, d.shape); break;
    case TokenFileFormat::text: {
      KVLAB_THROW_IF(!byte_level, UsageError,
                     "{}: read as raw text, but this model is not byte-level (vocab {}) and has no tokenizer; give "
                     "token ids (.bin, .npy, .h5) or pass --data-format",
                     path.string(), vocab_size);
      const std::vector<std::int64_t> v = bytes_to_ids(slurp(path));
      d.ids = at::tensor(v, at::kLong);
      break;
    }
    default: break;
  }
  if (d.shape.empty()) d.shape = {d.ids.numel()};
  if (vocab_size > 0 && d.ids.numel() > 0) {
    const std::int64_t lo = d.ids.min().item<std::int64_t>(), hi = d.ids.max().item<std::int64_t>();
    if (lo < 0 || hi >= vocab_size) {
      const std::int64_t bad = lo < 0 ? lo : hi;
      const std::int64_t at_ = d.ids.eq(bad).nonzero()[0][0].item<std::int64_t>();
      KVLAB_THROW(FormatError,
                  "{}: token id {} at index {} is outside the model's vocabulary [0, {}) (read as "
                  "{}); wrong tokenizer or wrong --data-format?",
                  path.string(), bad, at_, vocab_size, token_file_format_name(f));
    }
  }
  return d;
}

TokenData read_model_data(const fs::path& data, const TokenFileOptions& opt,
                          const fs::path& model_artifact) {
  const ModelFile m = read_model_params(model_artifact);
  const std::int64_t v = m.config.vocab_size;
  const bool byte_level = v >= 256 && v < 512;  // as Model::byte_level()
  KVLAB_THROW_IF(!fs::exists(data), FormatError, "{}: no such data file", data.string());
  if (!m.tokenizer || resolve_format(data, opt.format, v) != TokenFileFormat::text)
    return read_tokens(data, opt, v, byte_level);
  // UTF-8 text through the model's own tokenizer (no BOS/EOS added).
  const auto tok = Tokenizer::create(*m.tokenizer);
  std::vector<std::int64_t> ids;
  encode_text_file(*tok, data, [&](const std::vector<std::int64_t>& c) { ids.insert(ids.end(), c.begin(), c.end()); });
  TokenData d;
  d.path = data.string();
  d.format = TokenFileFormat::text;
  d.ids = at::tensor(ids, at::kLong);
  d.shape = {d.ids.numel()};
  if (!ids.empty()) {
    const auto [lo, hi] = std::minmax_element(ids.begin(), ids.end());
    KVLAB_THROW_IF(*lo < 0 || *hi >= v, FormatError,
                   "{}: the tokenizer of {} produced id {} outside the model's vocabulary [0, {}); "
                   "the model file is inconsistent, re-import it",
                   data.string(), model_artifact.string(), *lo < 0 ? *lo : *hi, v);
  }
  return d;
}

TokenizeResult tokenize_file(const Tokenizer& t, std::int64_t vocab_size, const fs::path& text,
                             const fs::path& out, const TokenizeOptions& opt,
                             core::Progress& progress) {
  KVLAB_THROW_IF(opt.format != "bin" && opt.format != "h5", UsageError,
                 "--format {}: expected bin or h5", opt.format);
  KVLAB_THROW_IF(!fs::exists(text), UsageError, "--text {}: no such file", text.string());
  const auto t0 = std::chrono::steady_clock::now();
  TokenizeResult r;
  r.width = std::max(vocab_size, t.vocab_size()) > 65536 ? 4 : 2;
  const std::int64_t limit = std::int64_t{1} << (8 * r.width);
  fs::path partial = out;
  partial += fmt::format(".partial.{}", ::getpid());
  std::ofstream bin;
  std::vector<std::uint32_t> all;
  if (opt.format == "bin") {
    bin.open(partial, std::ios::binary | std::ios::trunc);
    KVLAB_THROW_IF(!bin, IoError, "{}: cannot write", partial.string());
  }
  std::vector<char> buf;
  auto put = [&](const std::vector<std::int64_t>& ids) {
    if (opt.format == "h5") {
      for (auto i : ids) all.push_back(static_cast<std::uint32_t>(i));
    } else {
      buf.resize(ids.size() * static_cast<std::size_t>(r.width));
      for (std::size_t k = 0; k < ids.size(); ++k) {
        const auto v = static_cast<std::uint32_t>(ids[k]);
        for (int b = 0; b < r.width; ++b)
          buf[k * static_cast<std::size_t>(r.width) + static_cast<std::size_t>(b)] = static_cast<char>((v >> (8 * b)) & 0xFF);
      }
      bin.write(buf.data(), static_cast<std::streamsize>(buf.size()));
    }
    for (auto i : ids)
      KVLAB_THROW_IF(i < 0 || i >= limit, FormatError, "{}: token id {} does not fit uint{}",
                     text.string(), i, 8 * r.width);
    r.tokens += static_cast<std::int64_t>(ids.size());
  };
  try {
    if (opt.add_bos && t.bos_id() >= 0) put({t.bos_id()});
    r.bytes = encode_text_file(t, text, put, &progress, opt.chunk_bytes);
    if (opt.add_eos && t.eos_id() >= 0) put({t.eos_id()});
    if (opt.format == "bin") {
      bin.close();
      KVLAB_THROW_IF(!bin, IoError, "{}: write failed (disk full?)", partial.string());
    } else {
      h5::File f = h5::File::create(partial);
      h5::Group root = f.root();
      if (r.width == 2) {
        std::vector<std::uint16_t> v(all.begin(), all.end());
        root.write_vec("tokens", v);
      } else {
        root.write_vec("tokens", all);
      }
      f.close();
    }
    std::error_code ec;
    fs::rename(partial, out, ec);
    KVLAB_THROW_IF(ec, IoError, "{}: cannot rename into place: {}", out.string(), ec.message());
  } catch (...) {
    std::error_code ec;
    fs::remove(partial, ec);
    throw;
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

std::vector<std::int64_t> parse_id_list(const std::string& s, const std::string& what) {
  std::vector<std::int64_t> out;
  std::size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == ',')) ++i;
    if (i == s.size()) break;
    std::size_t j = i;
    while (j < s.size() && s[j] >= '0' && s[j] <= '9') ++j;
    KVLAB_THROW_IF(j == i || j - i > 12 || (j < s.size() && s[j] != ',' && s[j] != ' '), UsageError,
                   "{} \"{}\": expected comma-separated non-negative token ids, e.g. 1,450,2",
                   what, s);
    out.push_back(std::stoll(s.substr(i, j - i)));
    i = j;
  }
  KVLAB_THROW_IF(out.empty(), UsageError, "{} \"{}\": no token id given", what, s);
  return out;
}

void write_npy_i64(const fs::path& path, const std::vector<std::int64_t>& v,
                   const std::vector<std::int64_t>& shape_in) {
  std::vector<std::int64_t> shape = shape_in.empty() ? std::vector<std::int64_t>{static_cast<std::int64_t>(v.size())} : shape_in;
  std::string dims = fmt::format("{}", fmt::join(shape, ", "));
  if (shape.size() == 1) dims += ",";
  std::string h = fmt::format("{{'descr': '<i8', 'fortran_order': False, 'shape': ({}), }}", dims);
  const std::size_t total = 10 + h.size() + 1;
  h.append((64 - total % 64) % 64, ' ');
  h.push_back('\n');
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  KVLAB_THROW_IF(!f, IoError, "{}: cannot write", path.string());
  f.write("\x93NUMPY\x01\x00", 8);
  const auto hl = static_cast<std::uint16_t>(h.size());
  const char lenb[2] = {static_cast<char>(hl & 0xff), static_cast<char>(hl >> 8)};
  f.write(lenb, 2);
  f << h;
  f.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * 8));
}

}  // namespace kvlab::llm
