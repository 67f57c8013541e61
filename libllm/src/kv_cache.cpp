#include "kvlab/llm/kv_cache.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>

#include "kvlab/llm/config.hpp"

namespace kvlab::llm {

namespace {
std::uint64_t nbytes(const at::Tensor& t) {
  return t.defined() ? static_cast<std::uint64_t>(t.numel()) * t.element_size() : 0;
}
std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }
}  // namespace

LayerKV::LayerKV(std::int64_t batch, std::int64_t kv_heads, std::int64_t head_dim,
                 at::TensorOptions opt, const KVCacheOptions& o)
    : batch_(batch), heads_(kv_heads), dim_(head_dim), page_size_(o.page_size) {
  TORCH_CHECK(batch > 0 && kv_heads > 0 && head_dim > 0, "LayerKV: sizes must be positive");
  TORCH_CHECK(o.page_size >= 0, "LayerKV: page_size must be >= 0");
  k_ = at::empty({batch, kv_heads, 0, head_dim}, opt);
  v_ = at::empty({batch, kv_heads, 0, head_dim}, opt);
  pos_ = at::full({batch, kv_heads, 0}, -1, opt.dtype(at::kLong));
  if (page_size_ > 0) {
    kmin_ = at::empty({batch, kv_heads, 0, head_dim}, opt);
    kmax_ = at::empty({batch, kv_heads, 0, head_dim}, opt);
  }
  if (o.initial_capacity > 0) reserve(o.initial_capacity);
}

at::Tensor LayerKV::keys() const { return k_.narrow(2, 0, len_); }
at::Tensor LayerKV::values() const { return v_.narrow(2, 0, len_); }
at::Tensor LayerKV::positions() const { return pos_.narrow(2, 0, len_); }
at::Tensor LayerKV::valid() const { return positions().ge(0); }
at::Tensor LayerKV::entry_counts() const { return valid().sum(-1); }

void LayerKV::reserve(std::int64_t slots) {
  if (slots <= capacity()) return;
  auto realloc = [&](at::Tensor& t, std::int64_t cap, double fill, bool do_fill) {
    std::vector<std::int64_t> shape = t.sizes().vec();
    shape[2] = cap;
    at::Tensor n = do_fill ? at::full(shape, fill, t.options()) : at::empty(shape, t.options());
    const std::int64_t keep = std::min<std::int64_t>(t.size(2), cap);
    if (keep > 0) n.narrow(2, 0, keep).copy_(t.narrow(2, 0, keep));
    t = n;
  };
  // Zeros, not garbage: an empty slot's value is multiplied by a zero attention weight, and
  // 0 * NaN would poison the output (attention over the whole storage, DecodeGraph).
  realloc(k_, slots, 0, true);
  realloc(v_, slots, 0, true);
  realloc(pos_, slots, -1, true);
  if (page_size_ > 0) {
    const std::int64_t pages = ceil_div(slots, page_size_);
    realloc(kmin_, pages, std::numeric_limits<double>::infinity(), true);
    realloc(kmax_, pages, -std::numeric_limits<double>::infinity(), true);
  }
}

void LayerKV::grow(std::int64_t needed) {
  if (needed <= capacity()) return;
  // Grow by a quarter (not doubling): at long contexts a doubled cache would not fit.
  const std::int64_t cap = capacity();
  reserve(std::max(needed, cap + std::max<std::int64_t>(64, cap / 4)));
}

void LayerKV::append(const at::Tensor& k, const at::Tensor& v, const at::Tensor& pos,
                     std::optional<bool> padded) {
  TORCH_CHECK(k.dim() == 4 && k.size(0) == batch_ && k.size(1) == heads_ && k.size(3) == dim_,
              "LayerKV::append: keys must be [", batch_, ", ", heads_, ", T, ", dim_, "], got ",
              k.sizes());
  TORCH_CHECK(v.sizes() == k.sizes(), "LayerKV::append: values shape ", v.sizes(),
              " differs from keys ", k.sizes());
  const std::int64_t t = k.size(2);
  TORCH_CHECK(pos.dim() == 2 && pos.size(0) == batch_ && pos.size(1) == t,
              "LayerKV::append: positions must be [", batch_, ", ", t, "], got ", pos.sizes());
  grow(len_ + t);
  k_.narrow(2, len_, t).copy_(k);
  v_.narrow(2, len_, t).copy_(v);
  pos_.narrow(2, len_, t).copy_(pos.to(pos_.device(), at::kLong).unsqueeze(1).expand({batch_, heads_, t}));
  const std::int64_t first = len_;
  len_ += t;
  mark_holes(padded ? *padded : pos.lt(0).any().item<bool>());
  update_pages(first, len_);
}

void LayerKV::write_slot(const at::Tensor& slot, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& pos) {
  TORCH_CHECK(page_size_ == 0, "LayerKV::write_slot: page metadata is not kept current here");
  TORCH_CHECK(k.dim() == 4 && k.size(0) == batch_ && k.size(1) == heads_ && k.size(2) == 1 &&
                  k.size(3) == dim_ && v.sizes() == k.sizes(),
              "LayerKV::write_slot: keys and values must be [", batch_, ", ", heads_, ", 1, ", dim_,
              "], got ", k.sizes(), " and ", v.sizes());
  k_.index_copy_(2, slot, k);
  v_.index_copy_(2, slot, v);
  pos_.index_copy_(2, slot, pos.view({batch_, 1, 1}).expand({batch_, heads_, 1}));
}

void LayerKV::commit_written(std::int64_t n) {
  TORCH_CHECK(n >= 0 && len_ + n <= capacity(), "LayerKV::commit_written: ", n,
              " slots past length ", len_, " exceed the capacity ", capacity());
  len_ += n;
}

void LayerKV::mark_holes(bool holes) { holes_ = holes_ || holes; }

void LayerKV::recompute_holes() { holes_ = len_ > 0 && positions().lt(0).any().item<bool>(); }

void LayerKV::gather(const at::Tensor& idx_in) {
  TORCH_CHECK(idx_in.dim() == 3 && idx_in.size(0) == batch_ && idx_in.size(1) == heads_,
              "LayerKV::gather: indices must be [", batch_, ", ", heads_, ", N], got ",
              idx_in.sizes());
  at::Tensor idx = idx_in.to(pos_.device(), at::kLong);
  const std::int64_t n = idx.size(2);
  if (n > 0) {
    TORCH_CHECK(idx.max().item<std::int64_t>() < len_, "LayerKV::gather: slot index out of range (",
                len_, " slots)");
  }
  at::Tensor safe = idx.clamp_min(0);
  at::Tensor e = safe.unsqueeze(-1).expand({batch_, heads_, n, dim_});
  at::Tensor nk = keys().gather(2, e).contiguous();
  at::Tensor nv = values().gather(2, e).contiguous();
  at::Tensor np = positions().gather(2, safe).masked_fill(idx.lt(0), -1).contiguous();
  k_ = nk;
  v_ = nv;
  pos_ = np;
  len_ = n;
  if (page_size_ > 0) {
    const std::int64_t pages = ceil_div(n, page_size_);
    kmin_ = at::full({batch_, heads_, pages, dim_}, std::numeric_limits<double>::infinity(),
                     k_.options());
    kmax_ = at::full({batch_, heads_, pages, dim_}, -std::numeric_limits<double>::infinity(),
                     k_.options());
    update_pages(0, len_);
  }
  recompute_holes();
}

std::int64_t LayerKV::evict(const at::Tensor& drop) {
  TORCH_CHECK(drop.dim() == 3 && drop.size(0) == batch_ && drop.size(1) == heads_ &&
                  drop.size(2) == len_,
              "LayerKV::evict: mask must be [", batch_, ", ", heads_, ", ", len_, "], got ",
              drop.sizes());
  at::Tensor keep = drop.to(pos_.device(), at::kBool).logical_not().logical_and(valid());
  at::Tensor counts = keep.sum(-1);
  const std::int64_t n = len_ == 0 ? 0 : counts.max().item<std::int64_t>();
  // Kept slots first, in their original order: sort by (kept ? slot : L + slot).
  at::Tensor slot = at::arange(len_, pos_.options()).view({1, 1, len_});
  at::Tensor key = at::where(keep, slot, slot + len_);
  at::Tensor order = std::get<1>(key.sort(-1)).narrow(2, 0, n);
  at::Tensor rank = at::arange(n, pos_.options()).view({1, 1, n});
  at::Tensor idx = at::where(rank.lt(counts.unsqueeze(-1)), order, at::full_like(order, -1));
  gather(idx);
  return counts.sum().item<std::int64_t>();
}

void LayerKV::shrink_to_fit() {
  std::int64_t last = 0;
  if (len_ > 0) {
    at::Tensor any = valid().any(0).any(0);  // [L]
    at::Tensor nz = any.nonzero();
    last = nz.numel() == 0 ? 0 : nz.max().item<std::int64_t>() + 1;
  }
  if (last == capacity()) return;
  at::Tensor idx = at::arange(last, pos_.options()).view({1, 1, last}).expand({batch_, heads_, last});
  gather(idx);
}

void LayerKV::overwrite(const at::Tensor& slots_in, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(slots_in.dim() == 3 && slots_in.size(0) == batch_ && slots_in.size(1) == heads_,
              "LayerKV::overwrite: slots must be [", batch_, ", ", heads_, ", N], got ",
              slots_in.sizes());
  const std::int64_t n = slots_in.size(2);
  TORCH_CHECK(k.dim() == 4 && k.size(2) == n && v.sizes() == k.sizes(),
              "LayerKV::overwrite: keys/values must be [B, Hkv, ", n, ", D]");
  if (n == 0) return;
  at::Tensor slots = slots_in.to(pos_.device(), at::kLong);
  TORCH_CHECK(slots.max().item<std::int64_t>() < len_,
              "LayerKV::overwrite: slot index out of range (", len_, " slots)");
  // Skipped entries are written to a scratch slot past the end (never read), so no two writes
  // of one call target the same live slot.
  grow(len_ + 1);
  at::Tensor target = at::where(slots.lt(0), at::full_like(slots, len_), slots);
  at::Tensor e = target.unsqueeze(-1).expand({batch_, heads_, n, dim_});
  k_.scatter_(2, e, k.to(k_.dtype()));
  v_.scatter_(2, e, v.to(v_.dtype()));
  update_pages(0, len_);
}

at::Tensor LayerKV::find_slots(const at::Tensor& pos_in) const {
  TORCH_CHECK(pos_in.dim() == 2 && pos_in.size(0) == batch_, "LayerKV::find_slots: positions must be [",
              batch_, ", N]");
  at::Tensor pos = pos_in.to(pos_.device(), at::kLong);
  const std::int64_t n = pos.size(1);
  if (len_ == 0) return at::full({batch_, heads_, n}, -1, pos_.options());
  at::Tensor eq = positions().unsqueeze(2).eq(pos.view({batch_, 1, n, 1}))
                      .logical_and(pos.view({batch_, 1, n, 1}).ge(0));  // [B, H, N, L]
  at::Tensor has = eq.any(-1);
  at::Tensor idx = eq.to(at::kInt).argmax(-1);
  return at::where(has, idx, at::full_like(idx, -1));
}

void LayerKV::assign(const at::Tensor& k, const at::Tensor& v, const at::Tensor& pos) {
  TORCH_CHECK(k.dim() == 4 && k.size(0) == batch_ && k.size(1) == heads_ && k.size(3) == dim_ &&
                  v.sizes() == k.sizes(),
              "LayerKV::assign: keys/values must be [", batch_, ", ", heads_, ", L, ", dim_, "]");
  TORCH_CHECK(pos.dim() == 3 && pos.size(0) == batch_ && pos.size(1) == heads_ &&
                  pos.size(2) == k.size(2),
              "LayerKV::assign: positions must be [", batch_, ", ", heads_, ", ", k.size(2), "]");
  k_ = k.to(k_.options()).contiguous().clone();
  v_ = v.to(v_.options()).contiguous().clone();
  pos_ = pos.to(pos_.options()).contiguous().clone();
  len_ = k.size(2);
  if (page_size_ > 0) {
    const std::int64_t pages = ceil_div(len_, page_size_);
    kmin_ = at::full({batch_, heads_, pages, dim_}, std::numeric_limits<double>::infinity(), k_.options());
    kmax_ = at::full({batch_, heads_, pages, dim_}, -std::numeric_limits<double>::infinity(), k_.options());
    update_pages(0, len_);
  }
  recompute_holes();
}

void LayerKV::clear() {
  len_ = 0;
  holes_ = false;
  k_ = k_.narrow(2, 0, 0).clone();
  v_ = v_.narrow(2, 0, 0).clone();
  pos_ = pos_.narrow(2, 0, 0).clone();
  if (page_size_ > 0) {
    kmin_ = kmin_.narrow(2, 0, 0).clone();
    kmax_ = kmax_.narrow(2, 0, 0).clone();
  }
}

std::int64_t LayerKV::page_count() const { return page_size_ > 0 ? ceil_div(len_, page_size_) : 0; }

at::Tensor LayerKV::page_min() const {
  TORCH_CHECK(page_size_ > 0, "LayerKV: page metadata is off (page_size 0)");
  return kmin_.narrow(2, 0, page_count());
}

at::Tensor LayerKV::page_max() const {
  TORCH_CHECK(page_size_ > 0, "LayerKV: page metadata is off (page_size 0)");
  return kmax_.narrow(2, 0, page_count());
}

void LayerKV::update_pages(std::int64_t first_slot, std::int64_t last_slot) {
  if (page_size_ <= 0 || last_slot <= first_slot) return;
  const std::int64_t p0 = first_slot / page_size_;
  const std::int64_t p1 = ceil_div(last_slot, page_size_);  // exclusive
  const std::int64_t s0 = p0 * page_size_;
  const std::int64_t s1 = std::min(p1 * page_size_, len_);
  at::Tensor k = k_.narrow(2, s0, s1 - s0);
  at::Tensor ok = pos_.narrow(2, s0, s1 - s0).ge(0).unsqueeze(-1);
  const double inf = std::numeric_limits<double>::infinity();
  at::Tensor lo = k.masked_fill(ok.logical_not(), inf);
  at::Tensor hi = k.masked_fill(ok.logical_not(), -inf);
  const std::int64_t pad = (p1 - p0) * page_size_ - (s1 - s0);
  if (pad > 0) {
    lo = at::cat({lo, at::full({batch_, heads_, pad, dim_}, inf, k.options())}, 2);
    hi = at::cat({hi, at::full({batch_, heads_, pad, dim_}, -inf, k.options())}, 2);
  }
  const std::int64_t np = p1 - p0;
  kmin_.narrow(2, p0, np).copy_(std::get<0>(lo.view({batch_, heads_, np, page_size_, dim_}).min(3)));
  kmax_.narrow(2, p0, np).copy_(std::get<0>(hi.view({batch_, heads_, np, page_size_, dim_}).max(3)));
}

std::uint64_t LayerKV::bytes() const {
  return nbytes(k_) + nbytes(v_) + nbytes(pos_) + nbytes(kmin_) + nbytes(kmax_);
}

KVCache::KVCache(const ModelConfig& cfg, std::int64_t layers, std::int64_t batch,
                 at::TensorOptions opt, const KVCacheOptions& o)
    : batch_(batch), opt_(o), next_pos_(static_cast<std::size_t>(batch), 0) {
  layers_.reserve(static_cast<std::size_t>(layers));
  for (std::int64_t i = 0; i < layers; ++i)
    layers_.emplace_back(batch, cfg.num_key_value_heads, cfg.head_dim, opt, o);
}

std::uint64_t KVCache::bytes() const {
  std::uint64_t b = 0;
  for (const auto& l : layers_) b += l.bytes();
  return b;
}

std::int64_t KVCache::entries() const {
  std::int64_t n = 0;
  for (const auto& l : layers_)
    if (l.length() > 0) n += l.valid().sum().item<std::int64_t>();
  return n;
}

void KVCache::reserve(std::int64_t slots) {
  for (auto& l : layers_) l.reserve(slots);
}

void KVCache::clear() {
  for (auto& l : layers_) l.clear();
  std::fill(next_pos_.begin(), next_pos_.end(), 0);
}

std::int64_t FullAttention::static_decode_steps(const KVCache&) const {
  return std::numeric_limits<std::int64_t>::max();
}

}  // namespace kvlab::llm
