// The KV cache, built for compression (docs/generate.md, "The KV cache").
//
// Layout, per layer: keys and values [B, Hkv, C, D] (C = capacity >= L = slots in use) and the
// ORIGINAL token position of every slot, positions [B, Hkv, C] int64, -1 marking an empty slot
// (left padding, or a hole left when heads keep different numbers of entries). Every (batch row,
// KV head) of a layer has the same slot count L; a head that keeps fewer entries than another has
// trailing empty slots, which attention masks out. This "padded per-head" layout keeps appends a
// plain slice copy and attention one dense batched kernel, while gather/evict really reallocate the
// layer to max-kept slots (memory shrinks to the largest head's budget, not to the average).
// Layers are independent: each may hold a different L (layer-wise budgets, token propagation).
//
// Attention masks by position: a query at position p sees a slot iff slot_pos >= 0 and
// slot_pos <= p (and slot_pos > p - window with a sliding window). RoPE is applied to keys before
// they enter the cache, with their original positions, so a key stays correct after its
// neighbours are evicted. Optional per-page key min/max metadata (Quest) covers slots
// [i * page_size, (i + 1) * page_size) and is kept current by every mutation.
//
// Compression methods implement CachePolicy; the model calls its hooks during every forward.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace kvlab::llm {

struct ModelConfig;
class KVCache;
class Model;

struct KVCacheOptions {
  std::int64_t page_size = 0;  ///< > 0: keep per-page key min/max (Quest); 0: none
  std::int64_t initial_capacity = 0;  ///< slots to allocate up front per layer (0: grow on demand)
};

/// One layer's cache. Tensors live on the model's device in the model's dtype.
class LayerKV {
 public:
  LayerKV() = default;
  LayerKV(std::int64_t batch, std::int64_t kv_heads, std::int64_t head_dim, at::TensorOptions opt,
          const KVCacheOptions& o);

  std::int64_t batch() const { return batch_; }
  std::int64_t kv_heads() const { return heads_; }
  std::int64_t head_dim() const { return dim_; }
  /// Slots in use, L (the same for every batch row and KV head).
  std::int64_t length() const { return len_; }
  std::int64_t capacity() const { return k_.defined() ? k_.size(2) : 0; }

  /// Views [B, Hkv, L, D] and [B, Hkv, L] of the slots in use (no copy).
  at::Tensor keys() const;
  at::Tensor values() const;
  at::Tensor positions() const;
  /// [B, Hkv, L] bool: slot holds an entry.
  at::Tensor valid() const;
  /// Entries held per (row, head) [B, Hkv] int64.
  at::Tensor entry_counts() const;
  /// True when some slot in use is empty (then attention needs a mask).
  bool has_holes() const { return holes_; }

  /// Appends T tokens: k, v [B, Hkv, T, D] (keys already rotated at `pos`), pos [B, T] int64
  /// (negative = padding: stored as an empty slot). `padded` says whether pos holds a negative
  /// entry (nullopt: checked here, which synchronises a GPU). Grows capacity by a quarter.
  void append(const at::Tensor& k, const at::Tensor& v, const at::Tensor& pos,
              std::optional<bool> padded = std::nullopt);

  /// Keeps, for each (row, head), the slots `idx` [B, Hkv, N] names, in that order; idx < 0 leaves
  /// an empty slot. The layer is reallocated to exactly N slots: memory is freed. Page metadata is
  /// recomputed.
  void gather(const at::Tensor& idx);
  /// Removes the slots where drop [B, Hkv, L] is true (and already-empty slots), keeping the order
  /// of the rest; heads that keep fewer entries get trailing empty slots. Returns entries kept.
  std::int64_t evict(const at::Tensor& drop);
  /// Drops every empty slot that all heads of all rows share at the end (after evictions).
  void shrink_to_fit();

  /// Overwrites existing slots: slots [B, Hkv, N] (slot indices < L; negative entries skipped),
  /// k, v [B, Hkv, N, D]. Positions are unchanged. (RetroAttention rewrites past K/V.)
  void overwrite(const at::Tensor& slots, const at::Tensor& k, const at::Tensor& v);
  /// Slot indices [B, Hkv, N] holding positions pos [B, N] (-1 where that position is not held).
  at::Tensor find_slots(const at::Tensor& pos) const;
  /// Replaces the whole content: k, v [B, Hkv, L, D], pos [B, Hkv, L] (negative = empty).
  void assign(const at::Tensor& k, const at::Tensor& v, const at::Tensor& pos);
  /// Pre-allocates room for `slots` slots in total.
  void reserve(std::int64_t slots);

  // --- graph-safe decode (DecodeGraph): no host synchronisation, no reallocation ---
  /// The whole allocated storage [B, Hkv, C, D] / [B, Hkv, C] (slots >= length() are empty: -1).
  const at::Tensor& storage_keys() const { return k_; }
  const at::Tensor& storage_values() const { return v_; }
  const at::Tensor& storage_positions() const { return pos_; }
  /// Writes one token per row into slot `slot` ([1] int64 on the cache's device, = length() when
  /// replayed): k, v [B, Hkv, 1, D], pos [B, 1] (>= 0). The host-side length is not touched (it
  /// cannot be, inside a CUDA graph): call commit_written(1) after the step. Needs capacity() >
  /// length() and no page metadata.
  void write_slot(const at::Tensor& slot, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& pos);
  /// Accounts for `n` slots write_slot filled after the current length.
  void commit_written(std::int64_t n);
  void clear();

  // --- page metadata (page_size > 0) ---
  std::int64_t page_size() const { return page_size_; }
  std::int64_t page_count() const;
  /// Element-wise key min / max per page [B, Hkv, P, D] (empty slots excluded; a page with no
  /// entry holds +inf / -inf).
  at::Tensor page_min() const;
  at::Tensor page_max() const;

  /// Bytes held by this layer's tensors (capacity, metadata included): the true footprint.
  std::uint64_t bytes() const;

 private:
  void grow(std::int64_t needed);
  void update_pages(std::int64_t first_slot, std::int64_t last_slot);  // [first, last)
  void recompute_holes();
  void mark_holes(bool holes);

  std::int64_t batch_ = 0, heads_ = 0, dim_ = 0, len_ = 0, page_size_ = 0;
  at::Tensor k_, v_, pos_;    // [B, Hkv, C, D], [B, Hkv, C]
  at::Tensor kmin_, kmax_;    // [B, Hkv, ceil(C / page), D]
  bool holes_ = false;
};

/// The cache of a whole model: one LayerKV per block, plus how many tokens each sequence has seen.
class KVCache {
 public:
  KVCache() = default;
  KVCache(const ModelConfig& cfg, std::int64_t layers, std::int64_t batch, at::TensorOptions opt,
          const KVCacheOptions& o = {});

  std::int64_t num_layers() const { return static_cast<std::int64_t>(layers_.size()); }
  std::int64_t batch() const { return batch_; }
  LayerKV& layer(std::int64_t i) { return layers_.at(static_cast<std::size_t>(i)); }
  const LayerKV& layer(std::int64_t i) const { return layers_.at(static_cast<std::size_t>(i)); }
  const KVCacheOptions& options() const { return opt_; }

  /// Next position of each sequence (= tokens it has seen, padding excluded).
  const std::vector<std::int64_t>& next_positions() const { return next_pos_; }
  void set_next_positions(std::vector<std::int64_t> p) { next_pos_ = std::move(p); }

  /// True bytes held by every layer.
  std::uint64_t bytes() const;
  /// Total entries held over every layer, row and head.
  std::int64_t entries() const;
  void reserve(std::int64_t slots);
  void clear();

 private:
  std::vector<LayerKV> layers_;
  std::int64_t batch_ = 0;
  KVCacheOptions opt_;
  std::vector<std::int64_t> next_pos_;
};

enum class Phase {
  prefill,  ///< a forward of T >= 1 tokens that starts a sequence or continues it by a chunk
  decode,   ///< one new token per sequence
};

/// What a policy sees inside one layer's attention.
struct AttentionStep {
  std::int64_t layer = 0;
  Phase phase = Phase::prefill;
  at::Tensor hidden;  ///< [B, T, C] the layer's input hidden states (before input_layernorm)
  at::Tensor q;       ///< [B, H, T, D] queries after RoPE
  at::Tensor q_pos;   ///< [B, T] query positions (negative = padding)
  LayerKV* kv = nullptr;  ///< this layer's cache, the current step's K/V already appended
  const ModelConfig* config = nullptr;
  /// The model running this forward (its blocks, for policies that recompute past tokens
  /// through a layer: RetroAttention's retrospective K/V update).
  const Model* model = nullptr;
};

/// A KV-cache compression method. The model calls the hooks in this order for every layer of
/// every forward (prefill, decode step, scoring chunk):
///   append K/V -> before_attention -> attend (or the built-in attention) -> after_attention,
/// then select_tokens after the layer's MLP, and after_forward once the logits exist.
/// Default implementations do nothing: FullAttention is the default policy.
class CachePolicy {
 public:
  virtual ~CachePolicy() = default;
  virtual std::string name() const = 0;
  /// May evict, gather or overwrite entries; this step's attention then reads the result
  /// (decode-time methods such as RPC).
  virtual void before_attention(AttentionStep& s) {}
  /// Replaces the attention computation (query-aware page loading such as Quest): return the
  /// output [B, H, T, D] or nullopt for the built-in dense attention.
  virtual std::optional<at::Tensor> attend(AttentionStep& s) { return std::nullopt; }
  /// Sees this step's attention output; may evict (prefill methods in kvpress's sense: the
  /// prompt's own attention used the full cache).
  virtual void after_attention(AttentionStep& s, const at::Tensor& out) {}
  /// Token-selective propagation (FastKV): after layer `layer`, return the indices [B, T'] (sorted,
  /// into the T tokens of this forward) of the tokens later layers should process; their hidden
  /// states and positions are gathered. nullopt keeps every token.
  virtual std::optional<at::Tensor> select_tokens(std::int64_t layer, const at::Tensor& hidden,
                                                  const at::Tensor& pos) {
    return std::nullopt;
  }
  /// After the whole forward (all layers, logits computed).
  virtual void after_forward(KVCache& cache, Phase phase) {}

  // --- static decoding (StaticDecoder: decode steps replayed as a CUDA graph) ---
  // A policy that acts only every so many decode steps (RPC) can let those steps run as plain
  // full attention over its cache, which a graph replays, and act between them. The result must
  // equal running its hooks in every step (tests check RPC's).
  /// Decode steps that may run as plain attention from now on, the step after which the policy
  /// acts included (>= 1); -1 (the default): the policy needs its hooks in every decode step.
  virtual std::int64_t static_decode_steps(const KVCache& cache) const { return -1; }
  /// How many of the most recent post-RoPE queries per layer the policy needs when it acts.
  virtual std::int64_t static_decode_queries() const { return 0; }
  /// Acts after the step static_decode_steps() named: queries[l] = layer l's most recent queries
  /// [B, H, N, D], oldest first (N <= static_decode_queries(); fewer when fewer steps ran).
  virtual void after_static_decode(KVCache& cache, const std::vector<at::Tensor>& queries) {}
};

/// Full attention: keeps every entry.
class FullAttention : public CachePolicy {
 public:
  std::string name() const override { return "full"; }
  std::int64_t static_decode_steps(const KVCache&) const override;
};

}  // namespace kvlab::llm
