// prune-blocks: calibration windows, the four block metrics, SLEB's greedy search (plain and
// prefix-cached), and the pruned model writer. docs/prune-blocks.md states the algorithm and
// where it follows or departs from SLEB's official code.
#include "kvlab/compress/prune.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <hdf5.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>

#include "kvlab/core/error.hpp"
#include "kvlab/core/h5.hpp"
#include "kvlab/llm/block_forward.hpp"
#include "kvlab/llm/model_io.hpp"

namespace kvlab::compress {

// ---------------------------------------------------------------- names

const std::map<std::string, PruneMetric>& prune_metric_names() {
  static const std::map<std::string, PruneMetric> m = {
      {"sleb", PruneMetric::sleb},
      {"ppl-oneshot", PruneMetric::ppl_oneshot},
      {"block-influence", PruneMetric::block_influence},
      {"angular", PruneMetric::angular}};
  return m;
}

const char* prune_metric_name(PruneMetric m) {
  switch (m) {
    case PruneMetric::sleb: return "sleb";
    case PruneMetric::ppl_oneshot: return "ppl-oneshot";
    case PruneMetric::block_influence: return "block-influence";
    case PruneMetric::angular: return "angular";
  }
  return "?";
}

const std::map<std::string, CalibSampling>& calib_sampling_names() {
  static const std::map<std::string, CalibSampling> m = {{"random", CalibSampling::random},
                                                         {"contiguous", CalibSampling::contiguous}};
  return m;
}

const char* calib_sampling_name(CalibSampling s) {
  return s == CalibSampling::random ? "random" : "contiguous";
}

const std::map<std::string, SearchMode>& search_mode_names() {
  static const std::map<std::string, SearchMode> m = {{"cached", SearchMode::cached},
                                                      {"plain", SearchMode::plain},
                                                      {"batched", SearchMode::batched}};
  return m;
}

const char* search_mode_name(SearchMode s) {
  switch (s) {
    case SearchMode::cached: return "cached";
    case SearchMode::plain: return "plain";
    case SearchMode::batched: return "batched";
  }
  return "?";
}

// ---------------------------------------------------------------- calibration windows

namespace {

// CPython's random.seed(int): MT19937 init_by_array over the 32-bit words of |seed|. The state is
// loaded into std::mt19937 through its standard textual representation (the n state words; the
// engine then twists before its first output, as CPython does after seeding).
std::mt19937 python_mt(std::uint64_t seed) {
  constexpr int n = 624;
  std::vector<std::uint32_t> key;
  for (std::uint64_t s = seed; s != 0; s >>= 32) key.push_back(static_cast<std::uint32_t>(s));
  if (key.empty()) key.push_back(0);
  std::uint32_t mt[n];
  mt[0] = 19650218U;
  for (int i = 1; i < n; ++i)
    mt[i] = 1812433253U * (mt[i - 1] ^ (mt[i - 1] >> 30)) + static_cast<std::uint32_t>(i);
  int i = 1;
  std::size_t j = 0;
  for (std::size_t k = std::max<std::size_t>(n, key.size()); k; --k) {
    mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1664525U)) + key[j] +
            static_cast<std::uint32_t>(j);
    ++i;
    ++j;
    if (i >= n) {
      mt[0] = mt[n - 1];
      i = 1;
    }
    if (j >= key.size()) j = 0;
  }
  for (int k = n - 1; k; --k) {
    mt[i] = (mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1566083941U)) -
            static_cast<std::uint32_t>(i);
    ++i;
    if (i >= n) {
      mt[0] = mt[n - 1];
      i = 1;
    }
  }
  mt[0] = 0x80000000U;
  std::stringstream ss;
  for (int k = 0; k < n; ++k) ss << mt[k] << ' ';
  std::mt19937 eng;
  ss >> eng;
  return eng;
}

// random.getrandbits(k), 1 <= k <= 64: 32-bit words, least significant first; the last word keeps
// its top bits.
std::uint64_t getrandbits(std::mt19937& eng, int k) {
  std::uint64_t r = 0;
  for (int shift = 0; k > 0; shift += 32, k -= 32) {
    std::uint64_t w = eng();
    if (k < 32) w >>= (32 - k);
    r |= w << shift;
  }
  return r;
}

}  // namespace

std::vector<std::int64_t> python_randint(std::uint64_t seed, std::int64_t lo, std::int64_t hi,
                                         std::int64_t count) {
  KVLAB_THROW_IF(hi < lo, UsageError, "python_randint: empty range [{}, {}]", lo, hi);
  std::mt19937 eng = python_mt(seed);
  const std::uint64_t n = static_cast<std::uint64_t>(hi - lo) + 1;
  int k = 0;
  while ((n >> k) != 0 && k < 64) ++k;  // n.bit_length()
  std::vector<std::int64_t> out;
  out.reserve(static_cast<std::size_t>(count));
  for (std::int64_t c = 0; c < count; ++c) {
    std::uint64_t r = getrandbits(eng, k);
    while (r >= n) r = getrandbits(eng, k);
    out.push_back(lo + static_cast<std::int64_t>(r));
  }
  return out;
}

at::Tensor make_calibration_windows(const at::Tensor& ids_in, const CalibOptions& o,
                                    const std::string& source) {
  KVLAB_THROW_IF(o.len < 2, UsageError, "--calib-len {}: a window needs at least 2 tokens", o.len);
  KVLAB_THROW_IF(o.windows < 1, UsageError, "--calib-windows {}: need at least 1", o.windows);
  at::Tensor ids = ids_in.reshape({-1}).to(at::kCPU, at::kLong).contiguous();
  const std::int64_t n = ids.numel();
  if (o.sampling == CalibSampling::contiguous) {
    KVLAB_THROW_IF(n < o.len, UsageError,
                   "{}: the calibration data has {} tokens, fewer than one window of {} "
                   "(--calib-len); give a longer file or a smaller --calib-len",
                   source, n, o.len);
    const std::int64_t w = std::min(o.windows, n / o.len);
    return ids.slice(0, 0, w * o.len).view({w, o.len}).clone();
  }
  KVLAB_THROW_IF(n < o.len + 1, UsageError,
                 "{}: the calibration data has {} tokens but random windows of {} tokens "
                 "(--calib-len) need at least {}; give a longer file or a smaller --calib-len",
                 source, n, o.len, o.len + 1);
  const auto starts = python_randint(o.seed, 0, n - o.len - 1, o.windows);
  std::vector<at::Tensor> rows;
  rows.reserve(starts.size());
  for (std::int64_t s : starts) rows.push_back(ids.slice(0, s, s + o.len));
  return at::stack(rows).contiguous();
}

std::int64_t resolve_remove_count(std::int64_t num_blocks, const PruneOptions& o) {
  KVLAB_THROW_IF(o.remove < 0, UsageError, "--remove {}: must be positive", o.remove);
  KVLAB_THROW_IF(o.remove > 0 && o.remove_ratio > 0, UsageError,
                 "give either --remove or --remove-ratio, not both");
  KVLAB_THROW_IF(o.remove_ratio < 0 || o.remove_ratio >= 1, UsageError,
                 "--remove-ratio {}: must be in (0, 1)", o.remove_ratio);
  KVLAB_THROW_IF(o.protect_first < 0 || o.protect_last < 0, UsageError,
                 "--protect-first/--protect-last must be >= 0");
  std::int64_t k = o.remove;
  if (k == 0) {
    KVLAB_THROW_IF(o.remove_ratio <= 0, UsageError,
                   "say how many blocks to remove: --remove N or --remove-ratio R");
    // SLEB's latency.py: int(np.ceil(num_blocks * removal_ratio)); the epsilon keeps 0.2 * 10
    // at 2, not 3, despite binary floating point.
    k = static_cast<std::int64_t>(std::ceil(o.remove_ratio * static_cast<double>(num_blocks) - 1e-9));
    k = std::max<std::int64_t>(k, 1);
  }
  const std::int64_t removable = num_blocks - o.protect_first - o.protect_last;
  KVLAB_THROW_IF(k >= num_blocks, UsageError,
                 "cannot remove {} blocks: the model has only {} (at least one must stay)", k,
                 num_blocks);
  KVLAB_THROW_IF(k > removable, UsageError,
                 "cannot remove {} blocks: the model has {} blocks and {} of them are protected "
                 "(--protect-first {}, --protect-last {}), so at most {} can be removed; lower "
                 "--remove/--remove-ratio or the protection",
                 k, num_blocks, o.protect_first + o.protect_last, o.protect_first,
                 o.protect_last, std::max<std::int64_t>(removable, 0));
  return k;
}

// ---------------------------------------------------------------- the search

namespace {

using States = std::vector<at::Tensor>;  // per window batch: a [B, L, C] tensor

struct Runner {
  const llm::Model& base;
  std::vector<at::Tensor> batches;  // [B, L] token windows, on the model's device
  at::Tensor positions;             // [1, L]
  std::int64_t windows = 0;         // W
  std::int64_t forwards = 0;        // block forwards run, over all windows
  mutable std::int64_t calls = 0;   // block invocations (one block over one batch)

  Runner(const llm::Model& m, const at::Tensor& windows, std::int64_t bw) : base(m) {
    const std::int64_t w = windows.size(0), len = windows.size(1);
    this->windows = w;
    for (std::int64_t s = 0; s < w; s += bw)
      batches.push_back(windows.slice(0, s, std::min(w, s + bw)).to(m.device()));
    positions = at::arange(len, at::kLong).unsqueeze(0);
  }

  at::Tensor pos(std::int64_t b) const { return positions.expand({b, positions.size(1)}); }

  // Summed token NLL of batch `bi` for `model` (SLEB get_loss: a window's mean CE over its L-1
  // predictions times L, summed), from `input` entering block `first` (undefined: from the
  // embedding). `outs` (optional) receives the output of every block run.
  double loss(const llm::Model& model, std::size_t bi, const at::Tensor& input, std::int64_t first,
              std::vector<at::Tensor>* outs) const {
    const at::Tensor& tok = batches[bi];
    const std::int64_t b = tok.size(0), len = tok.size(1);
    llm::KVCache cache = model.make_cache(b);
    llm::ForwardOptions fo;
    fo.logits = llm::LogitsMode::all;
    fo.hidden_states = outs;
    fo.input_hidden = input;
    fo.first_block = first;
    at::Tensor logits = model.forward(tok, pos(b), cache, fo);  // [B, L, V] float32
    calls += model.num_layers() - first;
    double sum = 0;
    for (std::int64_t i = 0; i < b; ++i) {
      at::Tensor lg = logits[i].slice(0, 0, len - 1);
      at::Tensor tgt = tok[i].slice(0, 1, len).to(lg.device());
      sum += at::cross_entropy_loss(lg, tgt).item<double>() * static_cast<double>(len);
    }
    return sum;
  }
};

llm::Model without(const llm::Model& m, std::int64_t j) {
  llm::Model c = m;  // blocks share their weights: a cheap copy
  c.remove_blocks({j});
  return c;
}

// Strict "<" and ascending j, as sleb(): the lowest index wins ties. min_loss starts at 1e99;
// a NaN never compares less, so all-NaN rounds are refused instead of silently removing
// alive[-1] as the reference would.
struct Best {
  double loss = 1e99;
  std::int64_t j = -1;
};

std::vector<double> nan_row(std::int64_t n) {
  return std::vector<double>(static_cast<std::size_t>(n), std::numeric_limits<double>::quiet_NaN());
}

void check_best(const Best& best, std::int64_t round) {
  KVLAB_THROW_IF(best.j < 0, Error,
                 "prune-blocks: every candidate of round {} has a non-finite calibration loss "
                 "(NaN/inf); the model or its dtype overflows on this data (try --dtype float32)",
                 round + 1);
}

// ---- the batched search (SearchMode::batched)

// Bytes one sequence (one window of one candidate) of a batched block call needs at its peak:
// the group's running state and the block's input/output copies and residual temporaries, q and
// the attention output, k/v and their KV-cache copies, the SwiGLU intermediates; on the CPU the
// attention also materialises float32 scores and probabilities [H, L, L] (CUDA: fused SDPA).
std::uint64_t bytes_per_sequence(const llm::Model& m, std::int64_t len) {
  const llm::ModelConfig& c = m.config();
  const auto es = static_cast<std::uint64_t>(c10::elementSize(m.dtype()));
  const auto l = static_cast<std::uint64_t>(len);
  const auto hq = static_cast<std::uint64_t>(c.num_attention_heads * c.head_dim);
  const auto hkv = static_cast<std::uint64_t>(c.num_key_value_heads * c.head_dim);
  std::uint64_t b = es * l *
                    (6 * static_cast<std::uint64_t>(c.hidden_size) + 2 * hq + 4 * hkv +
                     3 * static_cast<std::uint64_t>(c.intermediate_size));
  if (!m.device().is_cuda()) b += 8 * static_cast<std::uint64_t>(c.num_attention_heads) * l * l;
  return b;
}

// Candidates per group for `count` candidates of `run` (PruneOptions::batch_candidates, or what
// the memory budget allows), at least 1.
std::int64_t group_size(const Runner& run, const llm::Model& current, std::int64_t count,
                        const PruneOptions& o) {
  if (o.batch_candidates > 0) return std::max<std::int64_t>(1, std::min(count, o.batch_candidates));
  std::int64_t b = 0;
  for (const auto& t : run.batches) b = std::max(b, t.size(0));
  const std::int64_t len = run.positions.size(1);
  double budget = 0;
  if (o.batch_memory_mb > 0) {
    budget = static_cast<double>(o.batch_memory_mb) * 1048576.0;
  } else if (const auto free = llm::device_free_bytes(current.device())) {
    // Leave room for the LM head of one window batch (float32 logits, log-softmax, a copy).
    const double head = 3.0 * 4.0 * static_cast<double>(b * len * current.config().vocab_size);
    budget = std::max(0.0, 0.6 * (static_cast<double>(*free) - head));
  } else {
    budget = static_cast<double>(kCpuBatchMemoryMB) * 1048576.0;
  }
  const double per = static_cast<double>(b) * static_cast<double>(bytes_per_sequence(current, len));
  const auto g = static_cast<std::int64_t>(budget / per);
  return std::max<std::int64_t>(1, std::min(count, g));
}

// SLEB losses of candidates [lo, hi) of `current` (m blocks) from the stored states, `group`
// candidates at a time. Candidate j skips block j: it enters block j+1 with states[j]. For a
// group [g0, g1), block k runs once on the concatenated states of the candidates j < k of the
// group (ascending j, so they are a prefix of the group's buffer; candidate k-1 joins at block k
// with states[k-1]); after the last block each candidate's slice goes through the LM head. An
// allocation failure halves the group and redoes it (until 1). NaN outside [lo, hi).
std::vector<double> batched_sweep(Runner& run, const llm::Model& current,
                                  const std::vector<States>& states, std::int64_t lo,
                                  std::int64_t hi, std::int64_t& group, core::Progress& progress,
                                  PruneResult& r) {
  const std::int64_t m = current.num_layers();
  const std::size_t nb = run.batches.size();
  std::vector<double> loss = nan_row(m);
  std::int64_t seq_blocks = 0;  // one = one block over one window of one candidate
  for (std::int64_t g0 = lo; g0 < hi;) {
    const std::int64_t g1 = std::min(hi, g0 + group);
    r.candidate_group = std::max(r.candidate_group, g1 - g0);
    std::vector<double> part(static_cast<std::size_t>(g1 - g0), 0.0);
    try {
      for (std::size_t bi = 0; bi < nb; ++bi) {
        const at::Tensor& s0 = states[static_cast<std::size_t>(g0)][bi];
        const std::int64_t b = s0.size(0);
        at::Tensor x = at::empty({(g1 - g0) * b, s0.size(1), s0.size(2)}, s0.options());
        for (std::int64_t kb = g0 + 1; kb <= m; ++kb) {
          if (kb - 1 < g1)
            x.narrow(0, (kb - 1 - g0) * b, b).copy_(states[static_cast<std::size_t>(kb - 1)][bi]);
          if (kb == m) break;
          const std::int64_t live = std::min(kb, g1) - g0;
          at::Tensor xs = x.narrow(0, 0, live * b);
          xs.copy_(llm::forward_blocks(current, xs, run.positions, kb, kb + 1));
          ++run.calls;
          seq_blocks += live * b;
        }
        for (std::int64_t j = g0; j < g1; ++j)
          part[static_cast<std::size_t>(j - g0)] +=
              run.loss(current, bi, x.narrow(0, (j - g0) * b, b), m, nullptr);
      }
    } catch (const std::exception& e) {
      if (group == 1 || !llm::is_out_of_memory(e)) throw;
      llm::release_cached_device_memory();
      group = std::max<std::int64_t>(1, group / 2);
      continue;  // the same group start, smaller
    }
    for (std::int64_t j = g0; j < g1; ++j)
      loss[static_cast<std::size_t>(j)] = part[static_cast<std::size_t>(j - g0)];
    g0 = g1;
    progress.update(g0 - lo, {{"group", static_cast<double>(group)}});
  }
  run.forwards += seq_blocks / run.windows;  // exact unless a group was redone
  return loss;
}

// The candidates whose order among the `k` best (or membership in them) batching noise of at
// most tol / 2 per loss could change: sorted by batched loss, candidates are chained while
// neighbours are within `tol`; every chain that starts among the first k ranks is returned
// (always the best one), plus every candidate whose batched loss is not finite.
std::vector<std::int64_t> near_ties(const std::vector<double>& v, std::int64_t lo, std::int64_t hi,
                                    std::int64_t k, double tol) {
  std::vector<std::pair<double, std::int64_t>> s;
  std::vector<std::int64_t> out;
  for (std::int64_t j = lo; j < hi; ++j) {
    const double x = v[static_cast<std::size_t>(j)];
    if (std::isfinite(x)) s.emplace_back(x, j);
    else out.push_back(j);
  }
  std::sort(s.begin(), s.end());
  for (std::size_t i = 0; i < s.size() && static_cast<std::int64_t>(i) < k;) {
    std::size_t e = i + 1;
    while (e < s.size() && s[e].first - s[e - 1].first <= tol) ++e;
    for (std::size_t q = i; q < e; ++q) out.push_back(s[q].second);
    i = e;
  }
  std::sort(out.begin(), out.end());
  return out;
}

// SLEB's greedy loop, or one scoring round of it (one_shot). Returns the rows of scores and the
// removal order. alive holds ORIGINAL indices of the current model's blocks.
void greedy_search(Runner& run, std::int64_t k, const PruneOptions& o, bool one_shot,
                   core::Progress& progress, PruneResult& r) {
  const llm::Model& dense = run.base;
  const std::int64_t n = dense.num_layers();
  std::vector<std::int64_t> alive(static_cast<std::size_t>(n));
  std::iota(alive.begin(), alive.end(), 0);
  llm::Model current = dense;
  const std::size_t nb = run.batches.size();
  const bool cached = o.search != SearchMode::plain;  // states kept (cached and batched)
  const bool batched = o.search == SearchMode::batched;
  std::int64_t group = 0;  // batched: candidates per group (shrinks on allocation failures)
  // states[p][bi]: hidden state entering alive block p (cached mode).
  std::vector<States> states;
  if (cached) {
    states.assign(static_cast<std::size_t>(n), States(nb));
    for (std::size_t bi = 0; bi < nb; ++bi) {
      states[0][bi] = dense.embed_tokens(run.batches[bi]);
      std::vector<at::Tensor> outs;
      llm::KVCache cache = dense.make_cache(run.batches[bi].size(0));
      llm::ForwardOptions fo;
      fo.logits = llm::LogitsMode::none;
      fo.hidden_states = &outs;
      dense.forward(run.batches[bi], run.pos(run.batches[bi].size(0)), cache, fo);
      for (std::int64_t p = 1; p < n; ++p)
        states[static_cast<std::size_t>(p)][bi] = outs[static_cast<std::size_t>(p - 1)];
    }
    run.forwards += n;
    run.calls += n * static_cast<std::int64_t>(nb);
  }
  const std::int64_t rounds = one_shot ? 1 : k;
  std::vector<std::pair<double, std::int64_t>> oneshot_scores;  // (loss, alive index)
  for (std::int64_t i = 0; i < rounds; ++i) {
    const std::int64_t m = n - i;  // alive blocks (sleb's search_bound)
    const std::int64_t lo = o.protect_first, hi = m - o.protect_last;
    const bool keep_outs = !one_shot && i + 1 < rounds;  // the winner's outputs: next states
    progress.stage(fmt::format("round {}/{}: scoring {} candidate blocks", i + 1, rounds, hi - lo),
                   static_cast<int>(i + 1), static_cast<int>(rounds));
    progress.begin("candidates", hi - lo, "blocks");
    std::vector<double> row = nan_row(n);
    Best best;
    std::vector<States> best_outs, cand_outs;  // cached: block outputs of the best candidate
    // Candidate j scored alone from the stored state entering it (the cached search).
    auto single = [&](std::int64_t j, bool outs_wanted) {
      double loss = 0;
      cand_outs.assign(nb, States());
      for (std::size_t bi = 0; bi < nb; ++bi) {
        std::vector<at::Tensor> outs;
        loss += run.loss(current, bi, states[static_cast<std::size_t>(j)][bi], j + 1,
                         outs_wanted ? &outs : nullptr);
        cand_outs[bi] = std::move(outs);
      }
      run.forwards += m - 1 - j;
      return loss;
    };
    std::vector<double> val(static_cast<std::size_t>(m), std::numeric_limits<double>::quiet_NaN());
    if (batched) {
      // The budget is re-read every round; an earlier allocation failure caps it.
      const std::int64_t fit = group_size(run, current, hi - lo, o);
      group = group == 0 ? fit : std::min(group, fit);
      const std::vector<double> bl = batched_sweep(run, current, states, lo, hi, group, progress, r);
      val = bl;
      double lowest = std::numeric_limits<double>::infinity();
      for (std::int64_t j = lo; j < hi; ++j)
        if (std::isfinite(bl[static_cast<std::size_t>(j)]))
          lowest = std::min(lowest, bl[static_cast<std::size_t>(j)]);
      const double tol = std::isfinite(lowest) ? o.tie_tolerance * std::fabs(lowest) : 0.0;
      std::vector<char> exact(static_cast<std::size_t>(m), 0);
      bool off = false;  // a re-scored loss moved by more than tol / 2: the premise failed
      auto rescore = [&](std::int64_t j) {
        const double l = single(j, keep_outs);
        const double b = bl[static_cast<std::size_t>(j)];
        if (std::isfinite(l) && std::isfinite(b)) {
          r.max_batch_deviation =
              std::max(r.max_batch_deviation, std::fabs(b - l) / std::max(std::fabs(l), 1e-300));
          if (std::fabs(b - l) > tol / 2) off = true;
        } else if (std::isfinite(l) != std::isfinite(b)) {
          off = true;
        }
        val[static_cast<std::size_t>(j)] = l;
        exact[static_cast<std::size_t>(j)] = 1;
        ++r.rescored;
        if (l < best.loss || (l == best.loss && j < best.j)) {
          best = {l, j};
          if (keep_outs) best_outs.swap(cand_outs);
        }
      };
      for (std::int64_t j : near_ties(bl, lo, hi, one_shot ? k : 1, tol)) rescore(j);
      if (off) {  // trust no batched loss of this round: score the rest alone too
        ++r.fallback_rounds;
        for (std::int64_t j = lo; j < hi; ++j)
          if (!exact[static_cast<std::size_t>(j)]) rescore(j);
      }
      // The picks (the K lowest losses, lowest index on ties; K = 1 for SLEB) must be re-scored
      // candidates; with the premise above they always are, but one that is not is re-scored
      // rather than trusted, and the order taken again.
      for (;;) {
        std::vector<std::pair<double, std::int64_t>> order;
        for (std::int64_t j = lo; j < hi; ++j)
          if (std::isfinite(val[static_cast<std::size_t>(j)]))
            order.emplace_back(val[static_cast<std::size_t>(j)], j);
        std::sort(order.begin(), order.end());
        std::int64_t stray = -1;
        for (std::size_t q = 0; q < order.size() && static_cast<std::int64_t>(q) < (one_shot ? k : 1); ++q)
          if (!exact[static_cast<std::size_t>(order[q].second)]) {
            stray = order[q].second;
            break;
          }
        if (stray < 0) break;
        rescore(stray);
      }
      for (std::int64_t j = lo; j < hi; ++j) {
        r.plain_block_forwards += m - 1;
        row[static_cast<std::size_t>(alive[static_cast<std::size_t>(j)])] =
            val[static_cast<std::size_t>(j)];
        if (one_shot) oneshot_scores.emplace_back(val[static_cast<std::size_t>(j)], j);
      }
    }
    for (std::int64_t j = batched ? hi : lo; j < hi; ++j) {
      double loss = 0;
      if (cached) {
        loss = single(j, keep_outs);
      } else {
        const llm::Model cand = without(current, j);
        for (std::size_t bi = 0; bi < nb; ++bi) loss += run.loss(cand, bi, {}, 0, nullptr);
        run.forwards += m - 1;
      }
      r.plain_block_forwards += m - 1;
      row[static_cast<std::size_t>(alive[static_cast<std::size_t>(j)])] = loss;
      if (one_shot) oneshot_scores.emplace_back(loss, j);
      if (loss < best.loss) {
        best = {loss, j};
        if (cached) best_outs.swap(cand_outs);
      }
      progress.update(j - lo + 1, {{"loss", loss}, {"best", best.loss}});
    }
    progress.end();
    r.scores.push_back(row);
    if (one_shot) break;
    check_best(best, i);
    const std::int64_t jb = best.j;
    r.removed.push_back(alive[static_cast<std::size_t>(jb)]);
    alive.erase(alive.begin() + jb);
    current.remove_blocks({jb});
    if (cached && i + 1 < rounds) {
      // States entering blocks <= jb are unchanged; the block outputs of the winning candidate's
      // run (blocks jb+1.. of the old model = jb.. of the new) enter positions jb+1.. .
      std::vector<States> next(static_cast<std::size_t>(m - 1), States(nb));
      for (std::int64_t p = 0; p <= jb && p < m - 1; ++p)
        next[static_cast<std::size_t>(p)] = std::move(states[static_cast<std::size_t>(p)]);
      for (std::int64_t q = jb; q + 1 < m - 1; ++q)
        for (std::size_t bi = 0; bi < nb; ++bi)
          next[static_cast<std::size_t>(q + 1)][bi] =
              best_outs[bi][static_cast<std::size_t>(q - jb)];
      states.swap(next);
    }
  }
  if (one_shot) {
    for (const auto& [loss, j] : oneshot_scores)
      KVLAB_THROW_IF(!std::isfinite(loss), Error,
                     "prune-blocks: candidate block {} has a non-finite calibration loss; try "
                     "--dtype float32", alive[static_cast<std::size_t>(j)]);
    std::stable_sort(oneshot_scores.begin(), oneshot_scores.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    for (std::int64_t q = 0; q < k; ++q)
      r.removed.push_back(alive[static_cast<std::size_t>(oneshot_scores[static_cast<std::size_t>(q)].second)]);
  }
}

// Hidden states entering every block (index 0 = embeddings) and after the last, one batch.
std::vector<at::Tensor> all_states(Runner& run, std::size_t bi) {
  const llm::Model& m = run.base;
  std::vector<at::Tensor> outs{m.embed_tokens(run.batches[bi])};
  llm::KVCache cache = m.make_cache(run.batches[bi].size(0));
  llm::ForwardOptions fo;
  fo.logits = llm::LogitsMode::none;
  fo.hidden_states = &outs;
  m.forward(run.batches[bi], run.pos(run.batches[bi].size(0)), cache, fo);
  run.calls += m.num_layers();
  return outs;
}

void similarity_search(Runner& run, std::int64_t k, const PruneOptions& o, PruneResult& r,
                       core::Progress& progress) {
  const std::int64_t n = run.base.num_layers();
  const bool angular = o.metric == PruneMetric::angular;
  const std::int64_t span = angular ? k : 1;  // blocks between the compared states
  // Candidates: start l with blocks l..l+span-1 inside [protect_first, n - protect_last).
  const std::int64_t lo = o.protect_first, hi = n - o.protect_last - span + 1;
  std::vector<double> sum(static_cast<std::size_t>(n), 0.0);
  double count = 0;
  progress.begin("calibration batches", static_cast<std::int64_t>(run.batches.size()), "batches");
  for (std::size_t bi = 0; bi < run.batches.size(); ++bi) {
    const auto st = all_states(run, bi);
    for (std::int64_t l = lo; l < hi; ++l) {
      at::Tensor a = st[static_cast<std::size_t>(l)].to(at::kFloat);
      at::Tensor b = st[static_cast<std::size_t>(l + span)].to(at::kFloat);
      if (angular) {  // the last token of each window (Gromov et al.)
        a = a.select(1, a.size(1) - 1);
        b = b.select(1, b.size(1) - 1);
      }
      at::Tensor cos = at::cosine_similarity(a, b, -1, 1e-8).to(at::kDouble);
      at::Tensor s = angular ? at::arccos(cos.clamp(-1.0, 1.0)) / M_PI : 1.0 - cos;
      sum[static_cast<std::size_t>(l)] += s.sum().item<double>();
      if (l == lo) count += static_cast<double>(s.numel());
    }
    progress.update(static_cast<std::int64_t>(bi) + 1);
  }
  progress.end();
  run.forwards += n;  // one full forward over the calibration windows
  std::vector<double> row = nan_row(n);
  std::vector<std::pair<double, std::int64_t>> sc;
  for (std::int64_t l = lo; l < hi; ++l) {
    const double v = sum[static_cast<std::size_t>(l)] / count;
    row[static_cast<std::size_t>(l)] = v;
    sc.emplace_back(v, l);
  }
  r.scores.push_back(row);
  for (const auto& [v, l] : sc)
    KVLAB_THROW_IF(!std::isfinite(v), Error,
                   "prune-blocks: block {} has a non-finite {} score; try --dtype float32", l,
                   prune_metric_name(o.metric));
  std::stable_sort(sc.begin(), sc.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  if (angular) {
    for (std::int64_t q = 0; q < k; ++q) r.removed.push_back(sc.front().second + q);
  } else {
    for (std::int64_t q = 0; q < k; ++q) r.removed.push_back(sc[static_cast<std::size_t>(q)].second);
  }
}

}  // namespace

PruneResult select_blocks(const llm::Model& model, const at::Tensor& windows,
                          const PruneOptions& o, core::Progress& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  KVLAB_THROW_IF(windows.dim() != 2 || windows.size(0) < 1 || windows.size(1) < 2, UsageError,
                 "prune-blocks: calibration windows must be [W >= 1, L >= 2]");
  KVLAB_THROW_IF(o.batch_windows < 1, UsageError, "--batch-windows {}: need at least 1",
                 o.batch_windows);
  KVLAB_THROW_IF(o.batch_candidates < 0, UsageError, "--batch-candidates {}: must be >= 0",
                 o.batch_candidates);
  KVLAB_THROW_IF(o.batch_memory_mb < 0, UsageError, "--batch-memory {}: must be >= 0",
                 o.batch_memory_mb);
  KVLAB_THROW_IF(!(o.tie_tolerance >= 0) || !std::isfinite(o.tie_tolerance), UsageError,
                 "--tie-tolerance {}: must be a finite number >= 0", o.tie_tolerance);
  const std::int64_t n = model.num_layers();
  const std::int64_t k = resolve_remove_count(n, o);
  PruneResult r;
  r.metric = o.metric;
  r.num_blocks_before = n;
  r.calib_windows = windows.size(0);
  r.calib_len = windows.size(1);
  Runner run(model, windows, o.batch_windows);
  // Original indices of the model's blocks (the input may already be pruned).
  std::vector<std::int64_t> orig;
  for (const auto& b : model.blocks()) orig.push_back(b.original_index);
  if (o.metric == PruneMetric::sleb || o.metric == PruneMetric::ppl_oneshot) {
    greedy_search(run, k, o, o.metric == PruneMetric::ppl_oneshot, progress, r);
  } else {
    similarity_search(run, k, o, r, progress);
    r.plain_block_forwards = n;
  }
  r.block_forwards = run.forwards;
  r.block_calls = run.calls;
  // Current -> original indices (the search works on the model's current numbering).
  for (auto& i : r.removed) i = orig[static_cast<std::size_t>(i)];
  // Score rows are indexed by the input model's block index; re-index them by original index.
  const std::int64_t width = *std::max_element(orig.begin(), orig.end()) + 1;
  for (auto& row : r.scores) {
    std::vector<double> y = nan_row(width);
    for (std::size_t i = 0; i < row.size(); ++i) y[static_cast<std::size_t>(orig[i])] = row[i];
    row.swap(y);
  }
  for (std::int64_t i : orig)
    if (std::find(r.removed.begin(), r.removed.end(), i) == r.removed.end()) r.kept.push_back(i);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

// ---------------------------------------------------------------- output

core::ArtifactHeader write_pruned_model(const std::filesystem::path& out,
                                        const std::filesystem::path& source_path,
                                        const llm::ModelFile& source, const PruneResult& r,
                                        const PruneOptions& o, const core::Provenance& prov) {
  // The blocks are dropped from the stored weights directly (what Model::remove_blocks + to_file
  // do, without building the model): kept blocks are renumbered 0..M-1, every tensor keeps its
  // stored dtype and bits, whatever dtype the search ran in (float16 has no CPU matmul in
  // LibTorch 1.13, so building the model here could fail for no reason).
  const std::int64_t n = source.config.num_hidden_layers;
  std::vector<std::int64_t> orig = source.original_layer_indices;
  if (orig.empty())
    for (std::int64_t i = 0; i < n; ++i) orig.push_back(i);
  llm::ModelFile f;
  f.config = source.config;
  f.hf_config = source.hf_config;
  std::map<std::int64_t, std::int64_t> new_index;  // old current index -> new
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t oi = orig[static_cast<std::size_t>(i)];
    if (std::find(r.removed.begin(), r.removed.end(), oi) != r.removed.end()) continue;
    new_index[i] = static_cast<std::int64_t>(f.original_layer_indices.size());
    f.original_layer_indices.push_back(oi);
  }
  KVLAB_THROW_IF(static_cast<std::int64_t>(f.original_layer_indices.size() + r.removed.size()) != n,
                 Error, "prune-blocks: the removal list [{}] does not match the model's blocks",
                 fmt::join(r.removed, ", "));
  f.config.num_hidden_layers = static_cast<std::int64_t>(f.original_layer_indices.size());
  static const std::string prefix = "model.layers.";
  for (const auto& [name, t] : source.weights) {
    if (name.rfind(prefix, 0) != 0) {
      f.weights[name] = t;
      continue;
    }
    const std::size_t dot = name.find('.', prefix.size());
    const std::int64_t i = std::stoll(name.substr(prefix.size(), dot - prefix.size()));
    const auto it = new_index.find(i);
    if (it != new_index.end())
      f.weights[fmt::format("{}{}{}", prefix, it->second, name.substr(dot))] = t;
  }
  llm::ModelWriter w(out, f.config, prov, f.hf_config, f.original_layer_indices);
  for (const auto& [name, t] : f.weights) w.add(name, t);
  h5::Group g = w.root().require_group("prune_blocks");
  g.set_attr("metric", prune_metric_name(r.metric));
  g.set_attr("search", search_mode_name(o.search));
  g.set_attr("removed_original_indices", r.removed);
  g.set_attr("kept_original_indices", r.kept);
  g.set_attr("num_blocks_before", r.num_blocks_before);
  g.set_attr("num_blocks_after", static_cast<std::int64_t>(r.kept.size()));
  g.set_attr("protect_first", o.protect_first);
  g.set_attr("protect_last", o.protect_last);
  g.set_attr("calib_windows", r.calib_windows);
  g.set_attr("calib_len", r.calib_len);
  g.set_attr("calib_sampling", calib_sampling_name(o.calib.sampling));
  g.set_attr("calib_seed", static_cast<std::int64_t>(o.calib.seed));
  g.set_attr("block_forwards", r.block_forwards);
  g.set_attr("plain_block_forwards", r.plain_block_forwards);
  g.set_attr("seconds", r.seconds);
  g.set_attr("block_calls", r.block_calls);
  if (o.search == SearchMode::batched) {
    g.set_attr("candidate_group", r.candidate_group);
    g.set_attr("rescored", r.rescored);
    g.set_attr("fallback_rounds", r.fallback_rounds);
    g.set_attr("max_batch_deviation", r.max_batch_deviation);
    g.set_attr("tie_tolerance", o.tie_tolerance);
  }
  const std::int64_t rows = static_cast<std::int64_t>(r.scores.size());
  std::vector<double> flat;
  for (const auto& row : r.scores) flat.insert(flat.end(), row.begin(), row.end());
  const std::int64_t width = rows ? static_cast<std::int64_t>(r.scores[0].size()) : 0;
  g.write("scores", h5::DType::f64, {rows, width}, flat.data(),
          {"round", "original_block"});
  g.write_vec("removed", r.removed);
  // The tokenizer travels with the weights (docs/formats/model.md).
  const h5::File src = h5::File::open(source_path);
  if (src.root().has_group("tokenizer") && !w.root().has_group("tokenizer")) {
    const herr_t e = H5Ocopy(src.root().id(), "tokenizer", w.root().id(), "tokenizer",
                             H5P_DEFAULT, H5P_DEFAULT);
    KVLAB_THROW_IF(e < 0, IoError, "{}: cannot copy /tokenizer from {}", out.string(),
                   source_path.string());
  }
  return w.commit();
}

}  // namespace kvlab::compress
