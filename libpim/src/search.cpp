#include "kvlab/pim/search.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <random>

namespace kvlab::pim {

const std::vector<std::string>& search_names() {
  static const std::vector<std::string> n = {"layerwise", "greedy", "dp", "ga"};
  return n;
}

bool is_valid_partitioning(const CostModel& cm, const std::vector<int>& ends) {
  if (ends.empty() || ends.back() != cm.units() - 1) return false;
  int s = 0;
  for (int e : ends) {
    if (!cm.valid(s, e)) return false;
    s = e + 1;
  }
  return true;
}

SearchOutcome search_layerwise(const CostModel& cm) {
  SearchOutcome o;
  const auto& U = cm.mapping().units;
  const int n = cm.units();
  bool seen_weight = false;
  for (int u = 0; u < n; ++u) {
    if (U[static_cast<std::size_t>(u)].weighted()) {
      if (seen_weight) o.ends.push_back(u - 1);
      seen_weight = true;
    }
  }
  o.ends.push_back(n - 1);
  o.exact = false;
  return o;
}

SearchOutcome search_greedy(const CostModel& cm) {
  SearchOutcome o;
  const auto& U = cm.mapping().units;
  const int n = cm.units();
  const std::int64_t cap = cm.mapping().capacity;
  std::int64_t used = 0;
  for (int u = 0; u < n; ++u) {
    const std::int64_t x = U[static_cast<std::size_t>(u)].xbars;
    if (x > 0 && used + x > cap && used > 0) {
      o.ends.push_back(u - 1);
      used = 0;
    }
    used += x;
  }
  o.ends.push_back(n - 1);
  return o;
}

namespace {

std::vector<int> reconstruct(const std::vector<int>& from, int n) {
  std::vector<int> ends;
  for (int j = n; j > 0; j = from[static_cast<std::size_t>(j)]) ends.push_back(j - 1);
  std::reverse(ends.begin(), ends.end());
  return ends;
}

// Exact DP for an additive objective (latency or energy): best[j] = min over valid [i, j-1].
SearchOutcome dp_additive(const CostModel& cm, bool use_time) {
  const int n = cm.units();
  std::vector<double> best(static_cast<std::size_t>(n + 1),
                           std::numeric_limits<double>::infinity());
  std::vector<int> from(static_cast<std::size_t>(n + 1), -1);
  best[0] = 0;
  SearchOutcome o;
  for (int j = 0; j < n; ++j) {
    for (int i = j; i >= 0 && cm.max_end(i) >= j; --i) {
      const auto te = cm.part_te(i, j);
      ++o.evaluations;
      const double v = best[static_cast<std::size_t>(i)] + (use_time ? te.first : te.second);
      if (v < best[static_cast<std::size_t>(j + 1)]) {  // strict: ties keep the longest range
        best[static_cast<std::size_t>(j + 1)] = v;
        from[static_cast<std::size_t>(j + 1)] = i;
      }
    }
  }
  o.ends = reconstruct(from, n);
  o.exact = true;
  return o;
}

// Exact DP for EDP = T * E: keep the Pareto front of (T, E) for every prefix; the product is
// monotone in both, so its minimum lies on the final front. Fronts are thinned (and the result
// marked inexact) only past kMaxFront points.
SearchOutcome dp_pareto(const CostModel& cm) {
  constexpr std::size_t kMaxFront = 4096;
  struct Pt {
    double t, e;
    int from_i, from_k;
  };
  const int n = cm.units();
  std::vector<std::vector<Pt>> front(static_cast<std::size_t>(n + 1));
  front[0].push_back({0, 0, -1, -1});
  SearchOutcome o;
  o.exact = true;
  for (int j = 0; j < n; ++j) {
    std::vector<Pt> cand;
    for (int i = j; i >= 0 && cm.max_end(i) >= j; --i) {
      const auto te = cm.part_te(i, j);
      ++o.evaluations;
      const auto& f = front[static_cast<std::size_t>(i)];
      for (std::size_t k = 0; k < f.size(); ++k)
        cand.push_back({f[k].t + te.first, f[k].e + te.second, i, static_cast<int>(k)});
    }
    std::sort(cand.begin(), cand.end(), [](const Pt& a, const Pt& b) {
      return a.t != b.t ? a.t < b.t : (a.e != b.e ? a.e < b.e : a.from_i > b.from_i);
    });
    std::vector<Pt> keep;
    double min_e = std::numeric_limits<double>::infinity();
    for (const auto& p : cand)
      if (p.e < min_e) {
        keep.push_back(p);
        min_e = p.e;
      }
    if (keep.size() > kMaxFront) {
      o.exact = false;
      std::vector<Pt> thin;
      const double step = static_cast<double>(keep.size() - 1) / static_cast<double>(kMaxFront - 1);
      for (std::size_t k = 0; k < kMaxFront; ++k)
        thin.push_back(keep[static_cast<std::size_t>(std::llround(k * step))]);
      keep.swap(thin);
    }
    front[static_cast<std::size_t>(j + 1)] = std::move(keep);
  }
  const auto& f = front[static_cast<std::size_t>(n)];
  std::size_t best = 0;
  for (std::size_t k = 1; k < f.size(); ++k)
    if (f[k].t * f[k].e < f[best].t * f[best].e) best = k;
  std::vector<int> ends;
  int j = n, k = static_cast<int>(best);
  while (j > 0) {
    const Pt& p = front[static_cast<std::size_t>(j)][static_cast<std::size_t>(k)];
    ends.push_back(j - 1);
    j = p.from_i;
    k = p.from_k;
  }
  std::reverse(ends.begin(), ends.end());
  o.ends = std::move(ends);
  return o;
}

}  // namespace

SearchOutcome search_dp(const CostModel& cm) {
  SearchOutcome o = cm.options().objective == Objective::edp
                        ? dp_pareto(cm)
                        : dp_additive(cm, cm.options().objective == Objective::latency);
  // A network that fits whole runs as one resident partition (no reloads): a different cost
  // than the same range reloaded each batch, so compare it explicitly.
  if (cm.fits_whole()) {
    const std::vector<int> one = {cm.units() - 1};
    if (cm.objective_of(one) <= cm.objective_of(o.ends)) o.ends = one;
  }
  return o;
}

// --- genetic algorithm -------------------------------------------------------------------------

namespace {

class Ga {
 public:
  using Cuts = std::vector<char>;  // cuts[k] = 1: a partition ends at unit k (k < n-1)

  Ga(const CostModel& cm, const GaOptions& opt)
      : cm_(cm), opt_(opt), n_(cm.units()), rng_(opt.seed) {}

  std::uint64_t below(std::uint64_t m) { return m <= 1 ? 0 : rng_() % m; }
  double uniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

  Cuts from_ends(const std::vector<int>& ends) const {
    Cuts c(static_cast<std::size_t>(std::max(n_ - 1, 0)), 0);
    for (int e : ends)
      if (e < n_ - 1) c[static_cast<std::size_t>(e)] = 1;
    return c;
  }
  std::vector<int> to_ends(const Cuts& c) const {
    std::vector<int> ends;
    for (int k = 0; k < n_ - 1; ++k)
      if (c[static_cast<std::size_t>(k)]) ends.push_back(k);
    ends.push_back(n_ - 1);
    return ends;
  }

  // Repair with the validity map: a partition that runs past max_end(start) is cut there.
  void repair(Cuts& c) const {
    int s = 0;
    for (int k = 0; k < n_; ++k) {
      const bool end = k == n_ - 1 || c[static_cast<std::size_t>(k)];
      if (k > cm_.max_end(s)) {  // [s, k] does not fit: cut at the last unit that does
        c[static_cast<std::size_t>(k - 1)] = 1;
        s = k;
      }
      if (end) s = k + 1;
    }
  }

  Cuts random_individual() {
    Cuts c(static_cast<std::size_t>(std::max(n_ - 1, 0)), 0);
    int s = 0;
    while (s < n_) {
      const int hi = cm_.max_end(s);
      const int e = s + static_cast<int>(below(static_cast<std::uint64_t>(hi - s + 1)));
      if (e < n_ - 1) c[static_cast<std::size_t>(e)] = 1;
      s = e + 1;
    }
    return c;
  }

  std::vector<int> cut_positions(const Cuts& c) const {
    std::vector<int> p;
    for (int k = 0; k < n_ - 1; ++k)
      if (c[static_cast<std::size_t>(k)]) p.push_back(k);
    return p;
  }

  // The four mutation operators (kvlab's reading of COMPASS; the paper's are unverified).
  void mutate(Cuts& c) {
    if (n_ < 2) return;
    const std::vector<int> cuts = cut_positions(c);
    const int op = static_cast<int>(below(4));
    if (op == 0 && !cuts.empty()) {  // shift: move one boundary by 1..4 units
      const std::size_t idx = below(cuts.size());
      const int k = cuts[idx];
      const int lo = idx == 0 ? 0 : cuts[idx - 1] + 1;
      const int hi = idx + 1 < cuts.size() ? cuts[idx + 1] - 1 : n_ - 2;
      const int d = 1 + static_cast<int>(below(4));
      const int k2 = std::clamp(uniform() < 0.5 ? k - d : k + d, lo, hi);
      c[static_cast<std::size_t>(k)] = 0;
      c[static_cast<std::size_t>(k2)] = 1;
    } else if (op == 1) {  // split: add a boundary inside a random partition of >= 2 units
      const int k = static_cast<int>(below(static_cast<std::uint64_t>(n_ - 1)));
      c[static_cast<std::size_t>(k)] = 1;
    } else if (op == 2 && !cuts.empty()) {  // merge: remove a boundary (repair re-cuts if too big)
      c[static_cast<std::size_t>(cuts[below(cuts.size())])] = 0;
    } else if (!cuts.empty()) {  // redraw: move a boundary anywhere both neighbours stay valid
      const std::size_t idx = below(cuts.size());
      const int s = idx == 0 ? 0 : cuts[idx - 1] + 1;
      const int e = idx + 1 < cuts.size() ? cuts[idx + 1] : n_ - 1;
      std::vector<int> ok;
      for (int k = s; k < e; ++k)
        if (k <= cm_.max_end(s) && e <= cm_.max_end(k + 1)) ok.push_back(k);
      if (!ok.empty()) {
        c[static_cast<std::size_t>(cuts[idx])] = 0;
        c[static_cast<std::size_t>(ok[below(ok.size())])] = 1;
      }
    }
    repair(c);
  }

  Cuts crossover(const Cuts& a, const Cuts& b) {
    Cuts c = a;
    if (n_ > 2) {
      const std::size_t x = 1 + below(static_cast<std::uint64_t>(n_ - 2));
      std::copy(b.begin() + static_cast<std::ptrdiff_t>(x),
                b.end(),
                c.begin() + static_cast<std::ptrdiff_t>(x));
    }
    repair(c);
    return c;
  }

  double fitness(const Cuts& c) {
    auto it = memo_.find(c);
    if (it != memo_.end()) return it->second;
    ++evals_;
    const double f = cm_.objective_of(to_ends(c));
    memo_.emplace(c, f);
    return f;
  }

  SearchOutcome run(const std::vector<std::vector<int>>& seeds, core::Progress& progress) {
    SearchOutcome o;
    if (n_ <= 1) {
      o.ends = {n_ - 1};
      return o;
    }
    const int P = std::max(opt_.population, 4);
    std::vector<Cuts> pop;
    for (const auto& s : seeds) pop.push_back(from_ends(s));
    while (static_cast<int>(pop.size()) < P) pop.push_back(random_individual());
    std::vector<double> fit(pop.size());
    for (std::size_t k = 0; k < pop.size(); ++k) fit[k] = fitness(pop[k]);
    auto order_of = [&]() {
      std::vector<std::size_t> idx(pop.size());
      for (std::size_t k = 0; k < idx.size(); ++k) idx[k] = k;
      std::stable_sort(
          idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return fit[a] < fit[b]; });
      return idx;
    };
    double best = *std::min_element(fit.begin(), fit.end());
    int since = 0;
    progress.begin("ga", opt_.generations, "generations");
    int g = 0;
    for (; g < opt_.generations; ++g) {
      const auto idx = order_of();
      std::vector<Cuts> next;
      for (int k = 0; k < std::min(opt_.elite, P); ++k)
        next.push_back(pop[idx[static_cast<std::size_t>(k)]]);
      auto pick = [&]() -> const Cuts& {
        std::size_t w = below(pop.size());
        for (int t = 1; t < opt_.tournament; ++t) {
          const std::size_t c = below(pop.size());
          if (fit[c] < fit[w]) w = c;
        }
        return pop[w];
      };
      while (static_cast<int>(next.size()) < P) {
        Cuts child = uniform() < opt_.crossover ? crossover(pick(), pick()) : pick();
        if (uniform() < opt_.mutation) mutate(child);
        next.push_back(std::move(child));
      }
      pop.swap(next);
      for (std::size_t k = 0; k < pop.size(); ++k) fit[k] = fitness(pop[k]);
      const double b = *std::min_element(fit.begin(), fit.end());
      if (b < best) {
        best = b;
        since = 0;
      } else {
        ++since;
      }
      progress.update(g + 1, {{"best", best}});
      if (opt_.patience > 0 && since >= opt_.patience) {
        ++g;
        break;
      }
    }
    progress.end({{"best", best}, {"generations_run", static_cast<double>(g)}});
    const auto idx = order_of();
    o.ends = to_ends(pop[idx[0]]);
    o.generations_run = g;
    o.evaluations = evals_;
    return o;
  }

 private:
  const CostModel& cm_;
  GaOptions opt_;
  int n_;
  std::mt19937_64 rng_;
  std::map<Cuts, double> memo_;
  std::int64_t evals_ = 0;
};

}  // namespace

SearchOutcome search_ga(const CostModel& cm, const GaOptions& opt, core::Progress& progress) {
  Ga ga(cm, opt);
  // Seeds: the two baselines (COMPASS starts from baseline partitionings [unverified]); elitism
  // then guarantees the result is no worse than greedy.
  const std::vector<std::vector<int>> seeds = {search_greedy(cm).ends, search_layerwise(cm).ends};
  SearchOutcome o = ga.run(seeds, progress);
  return o;
}

}  // namespace kvlab::pim
