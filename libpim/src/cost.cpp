#include "kvlab/pim/cost.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace kvlab::pim {

const char* objective_name(Objective o) {
  switch (o) {
    case Objective::latency:
      return "latency";
    case Objective::energy:
      return "energy";
    case Objective::edp:
      return "edp";
  }
  return "?";
}

struct CostModel::Cache {
  // te[i][j - i]: cached (time, energy) of range [i, j]; NaN = not computed yet.
  std::vector<std::vector<std::pair<double, double>>> te;
  std::pair<double, double> resident{NAN, NAN};
};

CostModel::CostModel(const Mapping& m, const HwConfig& hw, const CostOptions& opt)
    : map_(m), hw_(hw), opt_(opt), cache_(std::make_unique<Cache>()) {
  const int n = units();
  max_end_.assign(static_cast<std::size_t>(n), 0);
  // Two-pointer sweep: crossbars are non-negative, so feasibility is monotone.
  std::int64_t sum = 0;
  int j = -1;
  for (int i = 0; i < n; ++i) {
    if (j < i - 1) {
      j = i - 1;
      sum = 0;
    }
    while (j + 1 < n && sum + map_.units[static_cast<std::size_t>(j + 1)].xbars <= map_.capacity) {
      ++j;
      sum += map_.units[static_cast<std::size_t>(j)].xbars;
    }
    max_end_[static_cast<std::size_t>(i)] = j;  // j >= i: every unit fits alone (mapping split it)
    if (j >= i) sum -= map_.units[static_cast<std::size_t>(i)].xbars;
  }
  cache_->te.resize(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i)
    cache_->te[static_cast<std::size_t>(i)].assign(
        static_cast<std::size_t>(max_end_[static_cast<std::size_t>(i)] - i + 1), {NAN, NAN});
}

CostModel::~CostModel() = default;

double CostModel::objective(double t_ns, double e_pj) const {
  switch (opt_.objective) {
    case Objective::latency:
      return t_ns;
    case Objective::energy:
      return e_pj;
    case Objective::edp:
      return t_ns * e_pj;
  }
  return t_ns;
}

PartCost CostModel::compute(int i, int j, bool resident, const std::vector<int>* rep_in) const {
  ++evaluations_;
  const auto& U = map_.units;
  const double B = static_cast<double>(opt_.batch);
  const double bw = hw_.dram_gbps;  // bytes per ns
  PartCost pc;
  pc.first = i;
  pc.last = j;
  pc.resident = resident;
  const int len = j - i + 1;
  pc.rep = rep_in ? *rep_in : std::vector<int>(static_cast<std::size_t>(len), 1);

  double in_bytes = 0, out_bytes = 0;
  std::vector<std::pair<double, double>> internal;  // (line buffer bytes, tensor bytes) per sample
  std::vector<int> ext_seen;
  // Stage times (per sample): a weight layer's slices in one partition form one stage.
  std::vector<double> stage(static_cast<std::size_t>(len), 0.0),
      dist(static_cast<std::size_t>(len), 0.0);
  double max_stage = 0, fill = 0;
  std::vector<char> read_from(static_cast<std::size_t>(i),
                              0);  // producers before i already counted
  for (int u = i; u <= j; ++u) {
    const Unit& x = U[static_cast<std::size_t>(u)];
    const int r = pc.rep[static_cast<std::size_t>(u - i)];
    pc.xbars += x.xbars * r;
    pc.write_rows += x.write_rows * r;
    pc.weight_bytes += x.weight_bytes;  // replicas are written from one DRAM read
    pc.e_mvm_pj += B * x.mvm_pj;
    pc.e_vec_pj += B * x.vec_bytes * hw_.vector_pj_per_byte;
    const double t = x.weighted() ? x.t_ns / r : x.t_ns;
    stage[static_cast<std::size_t>(u - i)] = t;
    double start = 0;
    for (int p : x.in_units) {
      if (p < i) {
        if (!read_from[static_cast<std::size_t>(p)]) {
          read_from[static_cast<std::size_t>(p)] = 1;
          in_bytes += U[static_cast<std::size_t>(p)].out_bytes;
        }
      } else {
        start = std::max(start, dist[static_cast<std::size_t>(p - i)]);
      }
    }
    for (int e : x.in_ext)
      if (std::find(ext_seen.begin(), ext_seen.end(), e) == ext_seen.end()) {
        ext_seen.push_back(e);
        in_bytes += map_.ext_bytes[static_cast<std::size_t>(e)];
      }
    // Slices of one layer run side by side: they share the producer's start.
    dist[static_cast<std::size_t>(u - i)] = start + t;
    fill = std::max(fill, dist[static_cast<std::size_t>(u - i)]);
    max_stage = std::max(max_stage, t);
    bool leaves = x.net_output, stays = false;
    for (int c : x.out_units) (c > j ? leaves : stays) = true;
    if (leaves) out_bytes += x.out_bytes;
    if (stays) internal.emplace_back(x.line_bytes, x.out_bytes);
  }
  pc.bottleneck_ns = max_stage;
  pc.t_compute_ns = fill + (B - 1) * max_stage;
  pc.act_in_bytes = B * in_bytes;
  pc.act_out_bytes = B * out_bytes;
  // Buffer allocation: line buffers smallest first (stable: ties keep unit order); a tensor whose
  // line buffer no longer fits spills whole, written to DRAM and read back once per sample.
  std::stable_sort(internal.begin(), internal.end(), [](const auto& a, const auto& b) {
    return a.first < b.first;
  });
  double free_buf = static_cast<double>(hw_.buffer_bytes()), spill = 0;
  for (const auto& [line, bytes] : internal) {
    if (line <= free_buf)
      free_buf -= line;
    else
      spill += bytes;
  }
  pc.spill_bytes = 2.0 * B * spill;
  pc.t_in_ns = pc.act_in_bytes / bw;
  pc.t_out_ns = pc.act_out_bytes / bw;
  pc.t_spill_ns = pc.spill_bytes / bw;
  pc.e_act_dram_pj =
      (pc.act_in_bytes + pc.act_out_bytes + pc.spill_bytes) * 8.0 * hw_.dram_pj_per_bit;

  const double t_array = std::ceil(static_cast<double>(pc.write_rows) /
                                   static_cast<double>(hw_.effective_write_ports())) *
                         hw_.write_row_ns();
  const double t_load = std::max(t_array, pc.weight_bytes / bw);
  const double e_load_w = static_cast<double>(pc.write_rows) * hw_.write_row_pj;
  const double e_load_d = pc.weight_bytes * 8.0 * hw_.dram_pj_per_bit;
  if (resident) {
    pc.t_program_ns = t_load;
    pc.e_program_pj = e_load_w + e_load_d;
  } else {
    pc.t_load_ns = t_load;
    pc.e_write_pj = e_load_w;
    pc.e_weight_dram_pj = e_load_d;
  }
  pc.e_static_pj = hw_.static_mw() * pc.time_ns();  // mW * ns = pJ
  return pc;
}

// Weight replication: water-filling of the leftover crossbars. For a target stage time tau every
// weight unit gets ceil(t / tau) copies; tau is lowered along a geometric ladder from the current
// bottleneck to the smallest value that fits, and the ladder point with the best objective (for
// this partition alone) is kept. Vector stages cannot be replicated and bound the ladder.
void CostModel::replicate(PartCost& pc, bool resident) const {
  const auto& U = map_.units;
  const int i = pc.first, j = pc.last, len = j - i + 1;
  double vec_max = 0, w_max = 0;
  std::int64_t base = 0;
  for (int u = i; u <= j; ++u) {
    const Unit& x = U[static_cast<std::size_t>(u)];
    base += x.xbars;
    if (x.weighted())
      w_max = std::max(w_max, x.t_ns);
    else
      vec_max = std::max(vec_max, x.t_ns);
  }
  if (w_max <= vec_max || base >= map_.capacity) return;
  auto reps_for = [&](double tau, std::vector<int>& rep) {
    std::int64_t used = 0;
    for (int u = i; u <= j; ++u) {
      const Unit& x = U[static_cast<std::size_t>(u)];
      int r = 1;
      if (x.weighted() && x.t_ns > tau)
        r = static_cast<int>(std::min<double>(std::ceil(x.t_ns / tau), 1 << 20));
      rep[static_cast<std::size_t>(u - i)] = r;
      used += x.xbars * r;
    }
    return used;
  };
  std::vector<int> rep(static_cast<std::size_t>(len), 1);
  // Smallest feasible tau by bisection on [vec_max, w_max].
  double lo = std::max(vec_max, w_max * 1e-9), hi = w_max;
  if (reps_for(lo, rep) > map_.capacity) {
    for (int it = 0; it < 60; ++it) {
      const double mid = std::sqrt(lo * hi);
      if (reps_for(mid, rep) <= map_.capacity)
        hi = mid;
      else
        lo = mid;
    }
    lo = hi;
  }
  const double tau_min = lo;
  PartCost best = pc;
  double best_obj = objective(pc.time_ns(), pc.energy_pj());
  constexpr int kSteps = 16;
  for (int s = 1; s <= kSteps; ++s) {
    const double tau = w_max * std::pow(tau_min / w_max, static_cast<double>(s) / kSteps);
    if (reps_for(tau, rep) > map_.capacity) continue;
    PartCost c = compute(i, j, resident, &rep);
    const double o = objective(c.time_ns(), c.energy_pj());
    if (o < best_obj) {
      best_obj = o;
      best = std::move(c);
    }
  }
  pc = std::move(best);
}

PartCost CostModel::part(int i, int j, bool resident) const {
  if (i < 0 || j >= units() || !valid(i, j))
    throw std::invalid_argument("CostModel::part: unit range is not a valid partition");
  PartCost pc = compute(i, j, resident, nullptr);
  if (opt_.replicate) replicate(pc, resident);
  return pc;
}

std::pair<double, double> CostModel::part_te(int i, int j) const {
  auto& slot = cache_->te[static_cast<std::size_t>(i)].at(static_cast<std::size_t>(j - i));
  if (std::isnan(slot.first)) {
    const PartCost pc = part(i, j, false);
    slot = {pc.time_ns(), pc.energy_pj()};
  }
  return slot;
}

std::pair<double, double> CostModel::total_te(const std::vector<int>& ends) const {
  if (ends.size() == 1 && fits_whole()) {
    auto& r = cache_->resident;
    if (std::isnan(r.first)) {
      const PartCost pc = part(0, units() - 1, true);
      r = {pc.time_ns(), pc.energy_pj()};
    }
    return r;
  }
  double t = 0, e = 0;
  int s = 0;
  for (int x : ends) {
    const auto te = part_te(s, x);
    t += te.first;
    e += te.second;
    s = x + 1;
  }
  return {t, e};
}

std::vector<PartCost> CostModel::parts(const std::vector<int>& ends) const {
  std::vector<PartCost> out;
  const bool resident = ends.size() == 1 && fits_whole();
  int s = 0;
  for (int e : ends) {
    out.push_back(part(s, e, resident));
    s = e + 1;
  }
  return out;
}

Totals CostModel::totals(const std::vector<int>& ends) const {
  if (ends.empty() || ends.back() != units() - 1)
    throw std::invalid_argument("CostModel::totals: partition ends must finish at the last unit");
  Totals t;
  const std::vector<PartCost> ps = parts(ends);
  t.partitions = static_cast<int>(ps.size());
  const bool resident = ps.size() == 1 && ps[0].resident;
  t.reloads = resident ? 0 : static_cast<std::int64_t>(ps.size());
  double util = 0;
  for (const auto& p : ps) {
    t.batch_ns += p.time_ns();
    t.batch_pj += p.energy_pj();
    t.dram_weight_bytes += p.weight_bytes * (resident ? 0.0 : 1.0);
    t.dram_act_bytes += p.act_in_bytes + p.act_out_bytes + p.spill_bytes;
    t.write_rows += resident ? 0.0 : static_cast<double>(p.write_rows);
    util += static_cast<double>(p.xbars) / static_cast<double>(map_.capacity);
    t.t_load_ns += p.t_load_ns;
    t.t_act_ns += p.t_in_ns + p.t_out_ns + p.t_spill_ns;
    t.t_compute_ns += p.t_compute_ns;
    t.e_write_pj += p.e_write_pj;
    t.e_weight_dram_pj += p.e_weight_dram_pj;
    t.e_mvm_pj += p.e_mvm_pj;
    t.e_vec_pj += p.e_vec_pj;
    t.e_act_dram_pj += p.e_act_dram_pj;
    t.e_static_pj += p.e_static_pj;
    t.t_program_ns += p.t_program_ns;
  }
  const double B = static_cast<double>(opt_.batch);
  t.mean_util = util / static_cast<double>(ps.size());
  t.throughput = t.batch_ns > 0 ? B / t.batch_ns * 1e9 : 0.0;
  t.ns_per_inf = t.batch_ns / B;
  t.pj_per_inf = t.batch_pj / B;
  t.edp = t.ns_per_inf * t.pj_per_inf;
  t.objective = objective(t.batch_ns, t.batch_pj);
  return t;
}

}  // namespace kvlab::pim
