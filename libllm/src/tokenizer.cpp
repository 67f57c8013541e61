// The tokenizer algorithms (tokenizer.hpp): byte, byte-level BPE (PCRE2 pre-tokenisation, ICU
// NFC) and SentencePiece. Storage and import live in tokenizer_io.cpp.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "kvlab/llm/tokenizer.hpp"

#include <fmt/format.h>
#include <pcre2.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <fstream>
#include <array>
#include <map>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "kvlab/core/error.hpp"
#include "kvlab/core/progress.hpp"

namespace kvlab::llm {

namespace {

void utf8_append(std::string& s, std::uint32_t cp) {
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    s.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    s.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Decodes one UTF-8 code point at s[i]; advances i. Invalid bytes decode as themselves + 0x110000
// (so they never equal a valid code point).
std::uint32_t utf8_next(std::string_view s, std::size_t& i) {
  const auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) {
    ++i;
    return c;
  }
  const int n = (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : -1;
  if (n < 0 || i + static_cast<std::size_t>(n) >= s.size()) {
    ++i;
    return 0x110000u + c;
  }
  std::uint32_t cp = c & (0x3Fu >> n);
  for (int k = 1; k <= n; ++k) {
    const auto d = static_cast<unsigned char>(s[i + static_cast<std::size_t>(k)]);
    if ((d >> 6) != 2) {
      ++i;
      return 0x110000u + c;
    }
    cp = (cp << 6) | (d & 0x3Fu);
  }
  i += static_cast<std::size_t>(n) + 1;
  return cp;
}

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes map to themselves, the others to 256+n.
const std::array<std::uint32_t, 256>& byte_to_cp() {
  static const std::array<std::uint32_t, 256> t = [] {
    std::array<std::uint32_t, 256> m{};
    std::array<bool, 256> direct{};
    for (int b = '!'; b <= '~'; ++b) direct[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
    std::uint32_t n = 0;
    for (int b = 0; b < 256; ++b) m[b] = direct[b] ? static_cast<std::uint32_t>(b) : 256 + n++;
    return m;
  }();
  return t;
}

const std::array<std::string, 256>& byte_to_str() {
  static const std::array<std::string, 256> t = [] {
    std::array<std::string, 256> s;
    for (int b = 0; b < 256; ++b) utf8_append(s[b], byte_to_cp()[b]);
    return s;
  }();
  return t;
}

const std::unordered_map<std::uint32_t, unsigned char>& cp_to_byte() {
  static const std::unordered_map<std::uint32_t, unsigned char> t = [] {
    std::unordered_map<std::uint32_t, unsigned char> m;
    for (int b = 0; b < 256; ++b) m[byte_to_cp()[b]] = static_cast<unsigned char>(b);
    return m;
  }();
  return t;
}

bool ascii_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

bool is_ws(std::uint32_t cp) {
  return cp == ' ' || (cp >= 0x09 && cp <= 0x0D) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

std::string nfc(std::string_view s) {
  bool ascii = true;
  for (char c : s) ascii = ascii && static_cast<unsigned char>(c) < 0x80;
  if (ascii) return std::string(s);
  UErrorCode err = U_ZERO_ERROR;
  const UNormalizer2* n = unorm2_getNFCInstance(&err);
  KVLAB_THROW_IF(U_FAILURE(err), IoError, "ICU: cannot load the NFC normalizer ({})", u_errorName(err));
  std::int32_t len16 = 0;
  err = U_ZERO_ERROR;
  u_strFromUTF8WithSub(nullptr, 0, &len16, s.data(), static_cast<std::int32_t>(s.size()), 0xFFFD,
                       nullptr, &err);
  std::vector<UChar> in(static_cast<std::size_t>(len16) + 1);
  err = U_ZERO_ERROR;
  u_strFromUTF8WithSub(in.data(), len16 + 1, &len16, s.data(), static_cast<std::int32_t>(s.size()),
                       0xFFFD, nullptr, &err);
  KVLAB_THROW_IF(U_FAILURE(err), FormatError, "NFC: cannot convert text to UTF-16 ({})", u_errorName(err));
  std::vector<UChar> out(static_cast<std::size_t>(len16) * 3 + 16);
  err = U_ZERO_ERROR;
  const std::int32_t olen = unorm2_normalize(n, in.data(), len16, out.data(),
                                             static_cast<std::int32_t>(out.size()), &err);
  KVLAB_THROW_IF(U_FAILURE(err), FormatError, "NFC normalisation failed ({})", u_errorName(err));
  std::int32_t len8 = 0;
  err = U_ZERO_ERROR;
  u_strToUTF8(nullptr, 0, &len8, out.data(), olen, &err);
  std::string r(static_cast<std::size_t>(len8), '\0');
  err = U_ZERO_ERROR;
  u_strToUTF8(r.data(), len8, &len8, out.data(), olen, &err);
  return r;
}

// Oniguruma (tokenizer.json) -> PCRE2: Oniguruma's \s also matches U+0085 (NEL); PCRE2's does
// not, so \s becomes [\s\x{85}] (inside a class: \s\x{85}) and \S becomes [^\s\x{85}].
std::string onig_to_pcre2(const std::string& p) {
  std::string out;
  bool in_class = false;
  for (std::size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char d = p[i + 1];
      if (d == 's') out += in_class ? "\\s\\x{85}" : "[\\s\\x{85}]";
      else if (d == 'S' && !in_class) out += "[^\\s\\x{85}]";
      else out += p.substr(i, 2);
      ++i;
      continue;
    }
    if (c == '[' && !in_class) in_class = true;
    else if (c == ']' && in_class) in_class = false;
    out.push_back(c);
  }
  return out;
}

class Regex {
 public:
  explicit Regex(const std::string& pattern) {
    int err = 0;
    PCRE2_SIZE off = 0;
    const std::string p = onig_to_pcre2(pattern);
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p.data()), p.size(),
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &off, nullptr);
    if (!code_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      KVLAB_THROW(FormatError, "tokenizer pre-tokenizer regex \"{}\": PCRE2 cannot compile it at "
                  "offset {}: {}", pattern, off, reinterpret_cast<const char*>(msg));
    }
    // JIT when the platform has it; the interpreter otherwise (same matches).
    jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;
  }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  ~Regex() { pcre2_code_free(code_); }

  /// Calls f(begin, end) for each match in s (non-overlapping, left to right).
  template <class F>
  void for_each(std::string_view s, F&& f) const {
    // One match data (the ovector) and one match context with a 1 MiB JIT stack per thread,
    // reused by every call (no allocation per match).
    thread_local struct Ctx {
      pcre2_match_data* md = pcre2_match_data_create(4, nullptr);
      pcre2_match_context* mc = pcre2_match_context_create(nullptr);
      pcre2_jit_stack* js = pcre2_jit_stack_create(32 * 1024, 1024 * 1024, nullptr);
      Ctx() { if (mc && js) pcre2_jit_stack_assign(mc, nullptr, js); }
      ~Ctx() {
        pcre2_jit_stack_free(js);
        pcre2_match_context_free(mc);
        pcre2_match_data_free(md);
      }
    } ctx;
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(ctx.md);
    std::size_t start = 0;
    while (start <= s.size()) {
      const int rc = jit_ ? pcre2_jit_match(code_, subject, s.size(), start, 0, ctx.md, ctx.mc)
                          : pcre2_match(code_, subject, s.size(), start, 0, ctx.md, ctx.mc);
      if (rc < 0) {
        if (rc == PCRE2_ERROR_NOMATCH) break;
        KVLAB_THROW(FormatError, "tokenizer: PCRE2 match error {}", rc);
      }
      const std::size_t b = ov[0], e = ov[1];
      if (e == b) {  // empty match: step one code point
        if (b >= s.size()) break;
        std::size_t j = b;
        utf8_next(s, j);
        start = j;
        continue;
      }
      f(b, e);
      start = e;
    }
  }

 private:
  pcre2_code* code_ = nullptr;
  bool jit_ = false;
};

// ------------------------------------------------------------------------ hash tables --
// Open-addressing tables keyed by byte strings looked up by string_view (C++17's unordered_map
// cannot look up a std::string key without building one) or by a token pair; no allocation per
// lookup.

inline std::uint64_t mix64(std::uint64_t h) {
  h ^= h >> 32;
  h *= 0xd6e8feb86659fd93ULL;
  h ^= h >> 32;
  return h;
}

inline std::uint64_t hash_bytes(const char* p, std::size_t n) {
  std::uint64_t h = 0x9E3779B97F4A7C15ULL ^ (n * 0xff51afd7ed558ccdULL);
  while (n >= 8) {
    std::uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ w) * 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 29;
    p += 8;
    n -= 8;
  }
  std::uint64_t w = 0;
  std::memcpy(&w, p, n);
  return mix64((h ^ w) * 0x94d049bb133111ebULL);
}

/// Byte string -> int32 (the first value stored for a key wins, as unordered_map::emplace).
class StrIndex {
 public:
  void reserve(std::size_t n) {
    std::size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    slots_.assign(cap, Slot{});
    mask_ = cap - 1;
  }
  /// Returns false when the key was already there (its value is kept).
  bool emplace(std::string_view k, std::int32_t v) {
    if (2 * (size_ + 1) > slots_.size()) grow();
    const std::uint64_t h = hash_bytes(k.data(), k.size());
    for (std::size_t i = h & mask_;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.len < 0) {
        s = {h, static_cast<std::uint32_t>(arena_.size()), static_cast<std::int32_t>(k.size()), v};
        arena_.append(k);
        ++size_;
        return true;
      }
      if (s.hash == h && key(s) == k) return false;
    }
  }
  /// The value of `k`, or -1.
  std::int32_t find(std::string_view k) const {
    if (slots_.empty()) return -1;
    const std::uint64_t h = hash_bytes(k.data(), k.size());
    for (std::size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.len < 0) return -1;
      if (s.hash == h && key(s) == k) return s.value;
    }
  }
  std::size_t size() const { return size_; }

 private:
  struct Slot {
    std::uint64_t hash = 0;
    std::uint32_t off = 0;
    std::int32_t len = -1;  // -1: empty
    std::int32_t value = 0;
  };
  std::string_view key(const Slot& s) const {
    return std::string_view(arena_).substr(s.off, static_cast<std::size_t>(s.len));
  }
  void grow() {
    std::vector<Slot> old;
    old.swap(slots_);
    reserve(std::max<std::size_t>(16, old.size()));
    for (const Slot& s : old) {
      if (s.len < 0) continue;
      for (std::size_t i = s.hash & mask_;; i = (i + 1) & mask_)
        if (slots_[i].len < 0) {
          slots_[i] = s;
          break;
        }
    }
  }
  std::string arena_;
  std::vector<Slot> slots_;
  std::size_t mask_ = 0, size_ = 0;
};

/// (left id, right id) -> (merge rank, merged id), for byte-level BPE merges.
class PairIndex {
 public:
  void reserve(std::size_t n) {
    std::size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    slots_.assign(cap, Slot{});
    mask_ = cap - 1;
  }
  /// Keeps the first (lowest-rank) entry of a pair, as unordered_map::emplace.
  void emplace(std::int32_t a, std::int32_t b, std::int32_t rank, std::int32_t id) {
    const std::uint64_t k = key(a, b);
    for (std::size_t i = mix64(k) & mask_;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.rank < 0) {
        s = {k, rank, id};
        return;
      }
      if (s.key == k) return;
    }
  }
  /// {rank, merged id}, or rank -1.
  std::pair<std::int32_t, std::int32_t> find(std::int32_t a, std::int32_t b) const {
    const std::uint64_t k = key(a, b);
    for (std::size_t i = mix64(k) & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.rank < 0) return {-1, -1};
      if (s.key == k) return {s.rank, s.id};
    }
  }

 private:
  static std::uint64_t key(std::int32_t a, std::int32_t b) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
  }
  struct Slot {
    std::uint64_t key = 0;
    std::int32_t rank = -1, id = -1;
  };
  std::vector<Slot> slots_;
  std::size_t mask_ = 0;
};

/// Pre-token (or SentencePiece word) -> its ids, bounded (cleared when full). Guarded by the
/// owning tokenizer's mutex, taken once per encode call with try_lock: a call that finds it
/// busy (another thread encoding) runs uncached, with the same ids. A slot (16 bytes) holds the
/// hash and where the entry's key and ids lie, next to each other, in one arena; callers
/// prefetch the slots and entries of the words a few places ahead (the table outgrows the CPU
/// caches on varied text, and the lookups would otherwise wait on memory).
class WordCache {
 public:
  static constexpr std::size_t kMaxKey = 64;
  static std::uint64_t hash(std::string_view k) { return hash_bytes(k.data(), k.size()); }

  void prefetch_slot(std::uint64_t h) const {
    if (!slots_.empty()) __builtin_prefetch(&slots_[h & mask_]);
  }
  void prefetch_entry(std::uint64_t h) const {
    if (slots_.empty()) return;
    const Slot& s = slots_[h & mask_];
    if (s.klen != kEmpty) __builtin_prefetch(arena_.data() + s.off);
  }
  bool find(std::string_view k, std::uint64_t h, std::vector<std::int64_t>& out) const {
    if (slots_.empty()) return false;
    for (std::size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.klen == kEmpty) return false;
      if (s.hash == h && s.klen == k.size() && std::memcmp(arena_.data() + s.off, k.data(), k.size()) == 0) {
        const char* p = arena_.data() + s.off + s.klen;
        for (std::uint32_t j = 0; j < s.nids; ++j) {
          std::int32_t id;
          std::memcpy(&id, p + 4 * j, 4);
          out.push_back(id);
        }
        return true;
      }
    }
  }
  void insert(std::string_view k, std::uint64_t h, const std::int64_t* ids, std::size_t n) {
    if (k.size() > kMaxKey || n > kMaxKey) return;
    if (size_ >= kMaxEntries) clear();
    if (2 * (size_ + 1) > slots_.size()) grow();
    std::size_t i = h & mask_;
    for (;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.klen == kEmpty) break;
      if (s.hash == h && s.klen == k.size() && std::memcmp(arena_.data() + s.off, k.data(), k.size()) == 0) return;
    }
    slots_[i] = {h, static_cast<std::uint32_t>(arena_.size()), static_cast<std::uint16_t>(k.size()),
                 static_cast<std::uint16_t>(n)};
    arena_.append(k);
    for (std::size_t j = 0; j < n; ++j) {
      const auto id = static_cast<std::int32_t>(ids[j]);
      arena_.append(reinterpret_cast<const char*>(&id), 4);
    }
    ++size_;
  }

 private:
  static constexpr std::uint16_t kEmpty = 0xFFFF;
  static constexpr std::size_t kMaxEntries = std::size_t{1} << 20;
  struct Slot {
    std::uint64_t hash = 0;
    std::uint32_t off = 0;
    std::uint16_t klen = kEmpty, nids = 0;
  };
  void clear() {
    std::fill(slots_.begin(), slots_.end(), Slot{});
    arena_.clear();
    size_ = 0;
  }
  void grow() {
    std::vector<Slot> old;
    old.swap(slots_);
    const std::size_t cap = std::max<std::size_t>(std::size_t{1} << 14, 2 * old.size());
    slots_.assign(cap, Slot{});
    mask_ = cap - 1;
    for (const Slot& s : old) {
      if (s.klen == kEmpty) continue;
      for (std::size_t i = s.hash & mask_;; i = (i + 1) & mask_)
        if (slots_[i].klen == kEmpty) {
          slots_[i] = s;
          break;
        }
    }
  }
  std::vector<Slot> slots_;
  std::string arena_;  // per entry: key bytes, then its ids as int32
  std::size_t mask_ = 0, size_ = 0;
};

// Appends the ids of each word: from the cache when there (the slots and entries of later words
// prefetched), else computed by `compute(word, out)` and cached. `hashes` is scratch space.
template <class F>
void encode_words(const std::vector<std::string_view>& words, WordCache* cache,
                  std::vector<std::uint64_t>& hashes, std::vector<std::int64_t>& out, F&& compute) {
  if (!cache) {
    for (std::string_view p : words)
      if (!p.empty()) compute(p, out);
    return;
  }
  constexpr std::size_t kAhead = 8;
  const std::size_t n = words.size();
  hashes.resize(n);
  for (std::size_t i = 0; i < n; ++i) hashes[i] = WordCache::hash(words[i]);
  for (std::size_t i = 0; i < std::min(n, kAhead); ++i) cache->prefetch_slot(hashes[i]);
  for (std::size_t i = 0; i < n; ++i) {
    if (i + kAhead < n) cache->prefetch_slot(hashes[i + kAhead]);
    if (i + kAhead / 2 < n) cache->prefetch_entry(hashes[i + kAhead / 2]);
    const std::string_view p = words[i];
    if (p.empty() || cache->find(p, hashes[i], out)) continue;
    const std::size_t n0 = out.size();
    compute(p, out);
    cache->insert(p, hashes[i], out.data() + n0, out.size() - n0);
  }
}

// HF ByteLevel's own regex (use_regex = true).
const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// -------------------------------------------------------------------------------- byte --

class ByteTokenizer final : public Tokenizer {
 public:
  explicit ByteTokenizer(TokenizerData d) : Tokenizer(std::move(d)) {}
  void encode_append(std::string_view text, std::vector<std::int64_t>& out) const override {
    out.reserve(out.size() + text.size());
    for (unsigned char c : text) out.push_back(c);
  }
  std::string decode(const std::vector<std::int64_t>& ids, bool skip_special) const override {
    std::string s;
    for (auto i : ids) {
      if (i >= 0 && i < 256) s.push_back(static_cast<char>(static_cast<unsigned char>(i)));
      else if (!skip_special && i >= 0 && i < vocab_size() && !d_.tokens[static_cast<std::size_t>(i)].empty())
        s += d_.tokens[static_cast<std::size_t>(i)];
    }
    return s;
  }
  bool lossless() const override { return true; }
  std::size_t split_point(std::string_view text) const override { return text.size(); }
};

// ------------------------------------------------------------------------ added tokens --

class AddedMatcher {
 public:
  void build(const std::vector<AddedToken>& added) {
    tokens_ = added;
    nodes_.assign(1, Node{});
    for (std::size_t k = 0; k < added.size(); ++k) {
      const std::string& c = added[k].content;
      if (c.empty()) continue;
      first_[static_cast<unsigned char>(c[0])] = true;
      int n = 0;
      for (unsigned char ch : c) {
        auto it = nodes_[static_cast<std::size_t>(n)].next.find(ch);
        if (it == nodes_[static_cast<std::size_t>(n)].next.end()) {
          nodes_.push_back(Node{});
          const int m = static_cast<int>(nodes_.size()) - 1;
          nodes_[static_cast<std::size_t>(n)].next[ch] = m;
          n = m;
        } else {
          n = it->second;
        }
      }
      nodes_[static_cast<std::size_t>(n)].token = static_cast<int>(k);
    }
  }
  bool empty() const { return tokens_.empty(); }

  struct Segment {
    std::string_view text;  // when token < 0
    std::int64_t token = -1;
  };
  // Leftmost-longest split of `s` into text segments and added tokens.
  void split(std::string_view s, std::vector<Segment>& out) const {
    std::size_t seg = 0, i = 0;
    while (i < s.size()) {
      if (!first_[static_cast<unsigned char>(s[i])]) {
        ++i;
        continue;
      }
      int n = 0, best = -1;
      std::size_t best_end = 0;
      for (std::size_t j = i; j < s.size(); ++j) {
        auto it = nodes_[static_cast<std::size_t>(n)].next.find(static_cast<unsigned char>(s[j]));
        if (it == nodes_[static_cast<std::size_t>(n)].next.end()) break;
        n = it->second;
        const int t = nodes_[static_cast<std::size_t>(n)].token;
        if (t >= 0 && (!tokens_[static_cast<std::size_t>(t)].single_word || word_ok(s, i, j + 1))) {
          best = t;
          best_end = j + 1;
        }
      }
      if (best < 0) {
        ++i;
        continue;
      }
      const AddedToken& a = tokens_[static_cast<std::size_t>(best)];
      std::size_t b = i, e = best_end;
      if (a.lstrip)
        while (b > seg && is_ws(static_cast<unsigned char>(s[b - 1]))) --b;
      if (a.rstrip)
        while (e < s.size() && is_ws(static_cast<unsigned char>(s[e]))) ++e;
      if (b > seg) out.push_back({s.substr(seg, b - seg), -1});
      out.push_back({{}, a.id});
      seg = i = e;
    }
    if (seg < s.size()) out.push_back({s.substr(seg), -1});
  }

 private:
  static bool word_char(unsigned char c) { return ascii_alpha(static_cast<char>(c)) || (c >= '0' && c <= '9') || c == '_' || c >= 0x80; }
  static bool word_ok(std::string_view s, std::size_t b, std::size_t e) {
    return (b == 0 || !word_char(static_cast<unsigned char>(s[b - 1]))) &&
           (e >= s.size() || !word_char(static_cast<unsigned char>(s[e])));
  }
  struct Node {
    std::map<unsigned char, int> next;
    int token = -1;
  };
  std::vector<AddedToken> tokens_;
  std::vector<Node> nodes_;
  std::array<bool, 256> first_{};
};

// -------------------------------------------------------------------------- byte-level BPE --

class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(TokenizerData d) : Tokenizer(std::move(d)) {
    vocab_.reserve(d_.tokens.size());
    raw_vocab_.reserve(d_.tokens.size());
    std::string raw;
    for (std::size_t i = 0; i < d_.tokens.size(); ++i) {
      vocab_.emplace(d_.tokens[i], static_cast<std::int32_t>(i));
      // The same token keyed by its raw bytes (byte-to-unicode undone), for ignore_merges:
      // mapped(piece) == token exactly when piece == unmapped(token), the map being a bijection.
      if (unmap(d_.tokens[i], raw)) raw_vocab_.emplace(raw, static_cast<std::int32_t>(i));
    }
    for (int b = 0; b < 256; ++b) byte_id_[b] = vocab_.find(byte_to_str()[b]);
    merges_.reserve(d_.merges.size());
    for (std::size_t r = 0; r < d_.merges.size(); ++r) {
      const std::string& m = d_.merges[r];
      const auto sp = m.find(' ');
      KVLAB_THROW_IF(sp == std::string::npos, FormatError,
                     "tokenizer merge {} \"{}\" is not \"left right\"", r, m);
      const std::int32_t a = vocab_.find(std::string_view(m).substr(0, sp));
      const std::int32_t b = vocab_.find(std::string_view(m).substr(sp + 1));
      const std::int32_t c = vocab_.find(m.substr(0, sp) + m.substr(sp + 1));
      if (a < 0 || b < 0 || c < 0) continue;  // as HF: unusable
      merges_.emplace(a, b, static_cast<std::int32_t>(r), c);
    }
    special_.assign(d_.tokens.size(), 0);
    for (const auto& a : d_.added) {
      KVLAB_THROW_IF(a.id < 0 || a.id >= vocab_size(), FormatError,
                     "tokenizer added token \"{}\" has id {} outside the vocabulary [0, {})",
                     a.content, a.id, vocab_size());
      special_[static_cast<std::size_t>(a.id)] = a.special ? 2 : 1;
    }
    added_.build(d_.added);
    for (const auto& s : d_.pre_tokenizer) {
      Step st{s.kind, Behavior::isolated, s.add_prefix_space, s.individual_digits, nullptr};
      if (s.kind == PreTokenizerStep::Kind::split) {
        st.behavior = s.behavior == "isolated"               ? Behavior::isolated
                      : s.behavior == "removed"              ? Behavior::removed
                      : s.behavior == "merged_with_previous" ? Behavior::merged_with_previous
                      : s.behavior == "merged_with_next"     ? Behavior::merged_with_next
                      : s.behavior == "contiguous"           ? Behavior::contiguous
                                                             : Behavior::unknown;
        KVLAB_THROW_IF(st.behavior == Behavior::unknown, FormatError,
                       "tokenizer: Split behavior \"{}\" is not supported", s.behavior);
        st.re = std::make_shared<Regex>(s.pattern);
      } else if (s.kind == PreTokenizerStep::Kind::byte_level) {
        if (s.use_regex) st.re = std::make_shared<Regex>(kGpt2Pattern);
      } else {  // digits: ASCII pieces split by hand (\p{N} is [0-9] there), others by PCRE2
        st.re = std::make_shared<Regex>(s.individual_digits ? "\\p{N}" : "\\p{N}+");
      }
      steps_.push_back(std::move(st));
    }
    KVLAB_THROW_IF(!d_.normalizer.empty() && d_.normalizer != "nfc", FormatError,
                   "tokenizer normalizer \"{}\" is not supported (none or nfc)", d_.normalizer);
  }

  void encode_append(std::string_view text, std::vector<std::int64_t>& out) const override {
    // The word cache for the whole call (skipped when another thread holds it).
    std::unique_lock<std::mutex> lk(cache_mu_, std::try_to_lock);
    WordCache* cache = lk.owns_lock() ? &cache_ : nullptr;
    std::vector<AddedMatcher::Segment> segs;
    if (added_.empty()) segs.push_back({text, -1});
    else added_.split(text, segs);
    std::vector<std::string_view> pieces, next;
    std::deque<std::string> owned;  // pieces given a prefix space
    Work w;
    for (const auto& sg : segs) {
      if (sg.token >= 0) {
        out.push_back(sg.token);
        continue;
      }
      std::string normalized;
      std::string_view base = sg.text;
      if (d_.normalizer == "nfc") {
        normalized = nfc(sg.text);
        base = normalized;
      }
      pieces.clear();
      pieces.push_back(base);
      for (const Step& st : steps_) {
        next.clear();
        for (std::string_view p : pieces) {
          if (st.kind == PreTokenizerStep::Kind::byte_level && st.add_prefix_space &&
              (p.empty() || p[0] != ' ')) {
            owned.push_back(" " + std::string(p));
            p = owned.back();
          }
          if (st.kind == PreTokenizerStep::Kind::digits) split_digits(st, p, next);
          else if (st.re) split(*st.re, st.behavior, p, next);
          else next.push_back(p);
        }
        pieces.swap(next);
      }
      encode_words(pieces, cache, w.hashes, out,
                   [&](std::string_view p, std::vector<std::int64_t>& o) { bpe(p, o, w); });
      owned.clear();
    }
  }

  std::string decode(const std::vector<std::int64_t>& ids, bool skip_special) const override {
    std::string s;
    for (auto i : ids) {
      if (i < 0 || i >= vocab_size()) continue;
      const auto u = static_cast<std::size_t>(i);
      if (special_[u]) {
        if (!(skip_special && special_[u] == 2)) s += d_.tokens[u];
        continue;
      }
      const std::string& t = d_.tokens[u];
      std::size_t k = 0;
      while (k < t.size()) {
        const std::size_t k0 = k;
        const std::uint32_t cp = utf8_next(t, k);
        auto it = cp_to_byte().find(cp);
        if (it != cp_to_byte().end()) s.push_back(static_cast<char>(it->second));
        else s.append(t, k0, k - k0);
      }
    }
    return s;
  }

  bool lossless() const override { return d_.normalizer.empty(); }

 private:
  enum class Behavior { isolated, removed, merged_with_previous, merged_with_next, contiguous, unknown };
  struct Step {
    PreTokenizerStep::Kind kind;
    Behavior behavior;
    bool add_prefix_space;
    bool individual_digits;
    std::shared_ptr<Regex> re;
  };
  // Scratch space of one encode call, reused for every word.
  struct Sym {
    std::int32_t id, prev, next;
  };
  struct Cand {
    std::int32_t rank, pos, new_id;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  struct Work {
    std::vector<Sym> sy;
    std::vector<Cand> heap;
    std::vector<std::uint64_t> hashes;
  };

  // Token string (byte-to-unicode form) -> raw bytes; false when a character is not one of the
  // 256 byte characters (such a token never equals a mapped piece).
  static bool unmap(const std::string& t, std::string& raw) {
    raw.clear();
    for (std::size_t k = 0; k < t.size();) {
      const std::uint32_t cp = utf8_next(t, k);
      auto it = cp_to_byte().find(cp);
      if (it == cp_to_byte().end()) return false;
      raw.push_back(static_cast<char>(it->second));
    }
    return true;
  }

  // Split with behaviour `b`: the pieces of p as views into p.
  static void split(const Regex& re, Behavior b, std::string_view p, std::vector<std::string_view>& out) {
    if (b == Behavior::isolated) {  // the common case: matches and the text between them
      std::size_t last = 0;
      re.for_each(p, [&](std::size_t mb, std::size_t me) {
        if (mb > last) out.push_back(p.substr(last, mb - last));
        out.push_back(p.substr(mb, me - mb));
        last = me;
      });
      if (last < p.size()) out.push_back(p.substr(last));
      return;
    }
    // pieces as (begin, end, is_match)
    thread_local std::vector<std::tuple<std::size_t, std::size_t, bool>> parts;
    parts.clear();
    std::size_t last = 0;
    re.for_each(p, [&](std::size_t mb, std::size_t me) {
      if (mb > last) parts.emplace_back(last, mb, false);
      parts.emplace_back(mb, me, true);
      last = me;
    });
    if (last < p.size()) parts.emplace_back(last, p.size(), false);
    auto put = [&](std::size_t x, std::size_t y) { out.push_back(p.substr(x, y - x)); };
    if (b == Behavior::removed) {
      for (auto& [x, y, m] : parts)
        if (!m) put(x, y);
    } else if (b == Behavior::contiguous) {
      // consecutive matches merge into one piece
      std::size_t cb = 0, ce = 0;
      bool open = false;
      for (auto& [x, y, m] : parts) {
        if (m && open && x == ce) { ce = y; continue; }
        if (open) put(cb, ce), open = false;
        if (m) cb = x, ce = y, open = true;
        else put(x, y);
      }
      if (open) put(cb, ce);
    } else if (b == Behavior::merged_with_previous) {
      std::size_t cb = 0;
      for (auto& [x, y, m] : parts)
        if (m) put(cb, y), cb = y;
      if (cb < p.size()) put(cb, p.size());
    } else {  // merged_with_next
      std::size_t cb = 0;
      for (auto& [x, y, m] : parts)
        if (m && x > cb) put(cb, x), cb = x;
      if (cb < p.size()) put(cb, p.size());
    }
  }

  // HF Digits: \p{N} isolated, one by one or in runs. For ASCII text \p{N} is exactly [0-9], so
  // such pieces are split by hand; a piece with any non-ASCII byte goes through PCRE2.
  static void split_digits(const Step& st, std::string_view p, std::vector<std::string_view>& out) {
    for (char c : p)
      if (static_cast<unsigned char>(c) >= 0x80) {
        split(*st.re, Behavior::isolated, p, out);
        return;
      }
    std::size_t last = 0;
    for (std::size_t i = 0; i < p.size();) {
      if (p[i] < '0' || p[i] > '9') {
        ++i;
        continue;
      }
      std::size_t e = i + 1;
      if (!st.individual_digits)
        while (e < p.size() && p[e] >= '0' && p[e] <= '9') ++e;
      if (i > last) out.push_back(p.substr(last, i - last));
      out.push_back(p.substr(i, e - i));
      last = i = e;
    }
    if (last < p.size()) out.push_back(p.substr(last));
  }

  // Merges by rank, lowest first and leftmost among equals: a heap of candidate pairs over a
  // linked list of symbols; a popped pair is used only if both symbols still exist unchanged.
  void bpe(std::string_view p, std::vector<std::int64_t>& out, Work& w) const {
    if (d_.ignore_merges) {
      const std::int32_t id = raw_vocab_.find(p);
      if (id >= 0) {
        out.push_back(id);
        return;
      }
    }
    auto& sy = w.sy;
    sy.clear();
    for (unsigned char c : p) {
      const std::int32_t id = byte_id_[c];
      KVLAB_THROW_IF(id < 0 && d_.unk_id < 0, FormatError,
                     "tokenizer: byte 0x{:02x} has no token (\"{}\") and there is no unk token",
                     c, byte_to_str()[c]);
      const auto n = static_cast<std::int32_t>(sy.size());
      sy.push_back({id < 0 ? static_cast<std::int32_t>(d_.unk_id) : id, n - 1, n + 1});
    }
    sy.back().next = -1;
    if (sy.size() == 1) {
      out.push_back(sy[0].id);
      return;
    }
    auto& heap = w.heap;
    heap.clear();
    auto push = [&](std::int32_t pos) {
      if (pos < 0) return;
      const std::int32_t nx = sy[static_cast<std::size_t>(pos)].next;
      if (nx < 0) return;
      const auto [rank, id] = merges_.find(sy[static_cast<std::size_t>(pos)].id, sy[static_cast<std::size_t>(nx)].id);
      if (rank < 0) return;
      heap.push_back({rank, pos, id});
      std::push_heap(heap.begin(), heap.end(), std::greater<Cand>());
    };
    for (std::int32_t i = 0; i + 1 < static_cast<std::int32_t>(sy.size()); ++i) push(i);
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), std::greater<Cand>());
      const Cand c = heap.back();
      heap.pop_back();
      Sym& a = sy[static_cast<std::size_t>(c.pos)];
      if (a.id < 0 || a.next < 0) continue;  // merged away / last symbol
      Sym& b = sy[static_cast<std::size_t>(a.next)];
      const auto [rank, id] = merges_.find(a.id, b.id);
      if (rank != c.rank || id != c.new_id) continue;  // stale
      a.id = c.new_id;
      const std::int32_t bn = b.next;
      b.id = -1;
      a.next = bn;
      if (bn >= 0) sy[static_cast<std::size_t>(bn)].prev = c.pos;
      push(a.prev);
      push(c.pos);
    }
    for (std::int32_t i = 0; i >= 0; i = sy[static_cast<std::size_t>(i)].next)
      out.push_back(sy[static_cast<std::size_t>(i)].id);
  }

  StrIndex vocab_, raw_vocab_;
  PairIndex merges_;
  std::array<std::int32_t, 256> byte_id_{};
  std::vector<std::uint8_t> special_;  // 0 normal, 1 added, 2 added special
  AddedMatcher added_;
  std::vector<Step> steps_;
  mutable std::mutex cache_mu_;
  mutable WordCache cache_;
};

// ---------------------------------------------------------------------- SentencePiece --

// SentencePiece BPE (model_type 2) as libsentencepiece's bpe_model.cc encodes (reimplemented:
// Debian's libsentencepiece carries its own protobuf symbols, which clash with LibTorch's
// libprotobuf at load time): identity normalizer, optional dummy prefix, spaces -> U+2581; start
// from UTF-8 characters, repeatedly merge the adjacent pair whose concatenation is a piece of the
// highest score (ties: leftmost); symbols that are not pieces fall back to <0xXX> byte pieces (or
// unk). Control/unknown/byte pieces never form by merging.
class SpmTokenizer final : public Tokenizer {
 public:
  explicit SpmTokenizer(TokenizerData d) : Tokenizer(std::move(d)) {
    const SpmProto p = parse_spm_proto(d_.spm_model, d_.source);
    KVLAB_THROW_IF(p.model_type != 2, FormatError,
                   "tokenizer ({}): SentencePiece model type {} is not supported (only BPE, type 2, "
                   "as Llama-2)", d_.source, p.model_type);
    KVLAB_THROW_IF(p.has_charsmap, FormatError,
                   "tokenizer ({}): SentencePiece normalizer \"{}\" with a precompiled charsmap is not "
                   "supported (identity only, as Llama-2)", d_.source, p.normalizer);
    add_dummy_prefix_ = p.add_dummy_prefix;
    remove_extra_ws_ = p.remove_extra_whitespaces;
    escape_ws_ = p.escape_whitespaces;
    byte_fallback_ = p.byte_fallback;
    unk_ = p.unk_id;
    types_ = p.types;
    pieces_ = p.pieces;
    space_ = escape_ws_ ? "\xE2\x96\x81" : " ";  // U+2581
    mergeable_.reserve(p.pieces.size());
    all_.reserve(p.pieces.size());
    words_ok_ = true;
    for (std::size_t i = 0; i < p.pieces.size(); ++i) {
      const int t = p.types[i];
      if (t == 1 || t == 4 || t == 5) {
        mergeable_.emplace(p.pieces[i], static_cast<std::int32_t>(i));
        if (space_after_text(p.pieces[i])) words_ok_ = false;
      }
      all_.emplace(p.pieces[i], static_cast<std::int32_t>(i));
      scores_.push_back(p.scores[i]);
    }
    for (int b = 0; b < 256; ++b) byte_[b] = all_.find(fmt::format("<0x{:02X}>", b));
    std::vector<std::int64_t> whole, parts;
    encode_append("Abc def", whole);
    encode_append("Abc", parts);
    encode_append("def", parts);
    stream_ok_ = whole == parts;
  }

  void encode_append(std::string_view text, std::vector<std::int64_t>& out) const override {
    if (text.empty()) return;
    std::string_view t = text;
    if (remove_extra_ws_) {
      while (!t.empty() && t.front() == ' ') t.remove_prefix(1);
      while (!t.empty() && t.back() == ' ') t.remove_suffix(1);
      if (t.empty()) return;
    }
    std::string s;
    s.reserve(t.size() + t.size() / 4 + 3);
    if (add_dummy_prefix_) s += space_;
    for (std::size_t i = 0; i < t.size(); ++i) {
      if (t[i] == ' ') {
        if (remove_extra_ws_ && i > 0 && t[i - 1] == ' ') continue;
        s += space_;
      } else {
        s.push_back(t[i]);
      }
    }
    Work w;
    if (!words_ok_) {
      bpe(s, out, w);
      return;
    }
    // Words: a run of spaces and the text up to the next space. No mergeable piece has a space
    // after other text (checked at load), so no symbol ever spans two words and the merges of
    // one word never depend on another's: BPE word by word gives the ids of BPE over the whole.
    std::unique_lock<std::mutex> lk(cache_mu_, std::try_to_lock);
    WordCache* cache = lk.owns_lock() ? &cache_ : nullptr;
    const std::string_view sv(s);
    const std::size_t n = space_.size();
    std::vector<std::string_view> words;
    for (std::size_t b = 0; b < sv.size();) {
      std::size_t e = b;
      while (e < sv.size() && sv.compare(e, n, space_) == 0) e += n;  // leading spaces
      e = sv.find(space_, e);
      if (e == std::string_view::npos) e = sv.size();
      words.push_back(sv.substr(b, e - b));
      b = e;
    }
    std::vector<std::uint64_t> hashes;
    encode_words(words, cache, hashes, out,
                 [&](std::string_view word, std::vector<std::int64_t>& o) { bpe(word, o, w); });
  }
  void encode_continuation(std::string_view text, std::vector<std::int64_t>& out) const override {
    if (!text.empty() && text[0] == ' ') text.remove_prefix(1);
    encode_append(text, out);
  }
  std::string decode(const std::vector<std::int64_t>& ids, bool skip_special) const override {
    std::string s;
    bool first = true;
    for (auto i : ids) {
      if (i < 0 || i >= static_cast<std::int64_t>(pieces_.size())) continue;
      const auto u = static_cast<std::size_t>(i);
      const int t = types_[u];
      if (t == 3) {
        if (!skip_special) s += pieces_[u];
        continue;
      }
      if (t == 6) {
        s.push_back(static_cast<char>(std::stoi(pieces_[u].substr(3, 2), nullptr, 16)));
        first = false;
        continue;
      }
      std::string p = t == 2 ? std::string(" \xE2\x81\x87 ") : pieces_[u];
      static const std::string kSpace = "\xE2\x96\x81";
      for (std::size_t k = p.find(kSpace); k != std::string::npos; k = p.find(kSpace, k + 1))
        p.replace(k, kSpace.size(), " ");
      if (first && add_dummy_prefix_ && !p.empty() && p[0] == ' ') p.erase(0, 1);
      first = false;
      s += p;
    }
    return s;
  }
  bool lossless() const override { return false; }  // byte pieces cover bytes, but not specials
  std::size_t split_point(std::string_view text) const override {
    return stream_ok_ ? Tokenizer::split_point(text) : 0;
  }

 private:
  struct Sym {
    std::uint32_t b, n;
    std::int32_t prev, next;
  };
  struct Cand {
    float score;
    std::int32_t left, right;
    std::uint32_t len;
  };
  struct Work {
    std::vector<Sym> sy;
    std::vector<Cand> heap;
  };

  // True when the piece has the space symbol after some other text ("a▁b", "x▁").
  bool space_after_text(std::string_view piece) const {
    bool text = false;
    for (std::size_t i = 0; i < piece.size();) {
      if (piece.compare(i, space_.size(), space_) == 0) {
        if (text) return true;
        i += space_.size();
      } else {
        text = true;
        ++i;
      }
    }
    return false;
  }

  // SentencePiece BPE over s: symbols start as UTF-8 characters; repeatedly merge the adjacent
  // pair whose concatenation is a mergeable piece of the highest score (ties: leftmost).
  void bpe(std::string_view s, std::vector<std::int64_t>& out, Work& w) const {
    if (s.empty()) return;
    auto& sy = w.sy;
    sy.clear();
    for (std::size_t i = 0; i < s.size();) {
      std::size_t j = i;
      utf8_next(s, j);
      const auto k = static_cast<std::int32_t>(sy.size());
      sy.push_back({static_cast<std::uint32_t>(i), static_cast<std::uint32_t>(j - i), k - 1, k + 1});
      i = j;
    }
    sy.back().next = -1;
    auto worse = [](const Cand& a, const Cand& b) {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    };
    auto& heap = w.heap;
    heap.clear();
    auto push = [&](std::int32_t l, std::int32_t r) {
      if (l < 0 || r < 0) return;
      const Sym& a = sy[static_cast<std::size_t>(l)];
      const Sym& b = sy[static_cast<std::size_t>(r)];
      const std::int32_t id = mergeable_.find(s.substr(a.b, a.n + b.n));
      if (id < 0) return;
      heap.push_back({scores_[static_cast<std::size_t>(id)], l, r, a.n + b.n});
      std::push_heap(heap.begin(), heap.end(), worse);
    };
    for (std::int32_t i = 0; i + 1 < static_cast<std::int32_t>(sy.size()); ++i) push(i, i + 1);
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), worse);
      const Cand c = heap.back();
      heap.pop_back();
      Sym& a = sy[static_cast<std::size_t>(c.left)];
      Sym& b = sy[static_cast<std::size_t>(c.right)];
      if (a.n == 0 || b.n == 0 || a.n + b.n != c.len || a.next != c.right) continue;  // stale
      a.n += b.n;
      b.n = 0;
      a.next = b.next;
      if (b.next >= 0) sy[static_cast<std::size_t>(b.next)].prev = c.left;
      push(a.prev, c.left);
      push(c.left, a.next);
    }
    for (std::int32_t i = 0; i >= 0; i = sy[static_cast<std::size_t>(i)].next) {
      const Sym& x = sy[static_cast<std::size_t>(i)];
      const std::string_view piece = s.substr(x.b, x.n);
      const std::int32_t id = all_.find(piece);
      if (id >= 0 && types_[static_cast<std::size_t>(id)] != 3) {
        out.push_back(id);
      } else if (byte_fallback_) {
        for (unsigned char ch : piece) {
          KVLAB_THROW_IF(byte_[ch] < 0, FormatError, "tokenizer ({}): no byte piece <0x{:02X}>", d_.source, ch);
          out.push_back(byte_[ch]);
        }
      } else {
        out.push_back(unk_);
      }
    }
  }

  StrIndex mergeable_, all_;
  std::vector<std::string> pieces_;
  std::vector<int> types_;
  std::vector<float> scores_;
  std::array<std::int32_t, 256> byte_{};
  std::string space_;
  bool add_dummy_prefix_ = true, remove_extra_ws_ = false, escape_ws_ = true, byte_fallback_ = false;
  bool words_ok_ = false;  // BPE word by word is exact (see encode_append)
  std::int64_t unk_ = 0;
  bool stream_ok_ = false;
  mutable std::mutex cache_mu_;
  mutable WordCache cache_;
};

}  // namespace

std::vector<std::int64_t> Tokenizer::encode(std::string_view text, bool add_special) const {
  std::vector<std::int64_t> out;
  if (add_special && d_.add_bos && d_.bos_id >= 0) out.push_back(d_.bos_id);
  encode_append(text, out);
  if (add_special && d_.add_eos && d_.eos_id >= 0) out.push_back(d_.eos_id);
  return out;
}

std::size_t Tokenizer::split_point(std::string_view t) const {
  // " " between two ASCII letters: no pre-tokenizer pattern kvlab supports crosses it.
  for (std::size_t p = t.size() > 2 ? t.size() - 2 : 0; p >= 1 && p + 1 < t.size(); --p)
    if (t[p] == ' ' && ascii_alpha(t[p - 1]) && ascii_alpha(t[p + 1])) return p;
  return 0;
}

std::shared_ptr<const Tokenizer> Tokenizer::create(TokenizerData d) {
  if (d.model == "byte") return std::make_shared<ByteTokenizer>(std::move(d));
  if (d.model == "bpe") return std::make_shared<BpeTokenizer>(std::move(d));
  if (d.model == "spm") return std::make_shared<SpmTokenizer>(std::move(d));
  KVLAB_THROW(FormatError, "tokenizer ({}): model \"{}\" is not supported (byte, bpe, spm)", d.source,
              d.model);
}

std::uint64_t encode_text_file(const Tokenizer& t, const std::filesystem::path& path,
                               const std::function<void(const std::vector<std::int64_t>&)>& sink,
                               core::Progress* progress, std::size_t chunk_bytes) {
  std::ifstream f(path, std::ios::binary);
  KVLAB_THROW_IF(!f, FormatError, "{}: cannot open the text file", path.string());
  std::error_code ec;
  const auto total = std::filesystem::file_size(path, ec);
  if (progress) progress->begin("tokenizing", ec ? 0 : static_cast<std::int64_t>(total), "B");
  chunk_bytes = std::max<std::size_t>(chunk_bytes, 64);
  std::string buf;
  std::vector<std::int64_t> ids;
  std::uint64_t read = 0;
  bool first = true, eof = false;
  auto emit = [&](std::string_view text) {
    ids.clear();
    if (first) t.encode_append(text, ids);
    else t.encode_continuation(text, ids);
    first = false;
    sink(ids);
  };
  while (!eof) {
    const std::size_t old = buf.size();
    buf.resize(old + chunk_bytes);
    f.read(buf.data() + old, static_cast<std::streamsize>(chunk_bytes));
    const auto got = static_cast<std::size_t>(f.gcount());
    buf.resize(old + got);
    read += got;
    eof = got < chunk_bytes;
    KVLAB_THROW_IF(f.bad(), IoError, "{}: read error", path.string());
    if (eof) break;
    const std::size_t p = t.split_point(buf);
    if (p == 0 || p >= buf.size()) {
      if (p == 0) continue;  // no split point yet: read more
      emit(buf);
      buf.clear();
    } else {
      emit(std::string_view(buf).substr(0, p));
      buf.erase(0, p);
    }
    if (progress) progress->update(static_cast<std::int64_t>(read - buf.size()));
  }
  if (!buf.empty() || first) emit(buf);
  if (progress) progress->end();
  return read;
}

TokenizerData byte_tokenizer_data(std::int64_t vocab_size, std::int64_t bos_id,
                                  std::int64_t eos_id) {
  TokenizerData d;
  d.model = "byte";
  d.tokens.resize(static_cast<std::size_t>(std::max<std::int64_t>(vocab_size, 256)));
  d.token_types.assign(d.tokens.size(), 3);
  for (int b = 0; b < 256; ++b) {
    d.tokens[static_cast<std::size_t>(b)] = fmt::format("<0x{:02X}>", b);
    d.token_types[static_cast<std::size_t>(b)] = 6;
  }
  d.bos_id = bos_id;
  d.eos_id = eos_id;
  d.source = "byte-level";
  return d;
}

}  // namespace kvlab::llm
