// Chunking of a component graph under a weight cap (see mobile_chunk.hpp).
#include "kvlab/pim/mobile_chunk.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "kvlab/core/error.hpp"
#include "kvlab/pim/mobile_graph.hpp"

namespace kvlab::pim {

using core::NetDesc;
using core::NetLayer;
using core::NetOp;

double layer_weight_bytes(const NetLayer& l, int wbits) {
  const OpCost c = op_cost(l);
  const double w = static_cast<double>(l.weight_count());
  // conv/fc weights at wbits; biases, norm affine and embedding tables stay fp16.
  return w * wbits / 8.0 + static_cast<double>(c.params - l.weight_count()) * 2.0;
}

namespace {

// last_use[i]: the largest consumer index of layer i (-1: none).
std::vector<int> last_uses(const NetDesc& net) {
  std::vector<int> last(net.layers.size(), -1);
  for (std::size_t i = 0; i < net.layers.size(); ++i)
    for (int p : net.layers[i].inputs) last[static_cast<std::size_t>(p)] = static_cast<int>(i);
  return last;
}

bool is_graph_input(const NetLayer& l) { return l.op == NetOp::input; }

// crossing[c]: bytes of tensors produced at index <= c (not graph inputs) and read after c.
std::vector<double> crossing_bytes(const NetDesc& net, int act_bytes, std::vector<int>* counts) {
  const std::size_t n = net.layers.size();
  const auto last = last_uses(net);
  std::vector<double> diff(n + 1, 0.0);
  std::vector<int> cdiff(n + 1, 0);
  for (std::size_t i = 0; i < n; ++i) {
    if (is_graph_input(net.layers[i]) || last[i] <= static_cast<int>(i)) continue;
    const double b = static_cast<double>(net.layers[i].out_numel()) * act_bytes;
    diff[i] += b;  // live across cuts i .. last-1
    diff[static_cast<std::size_t>(last[i])] -= b;
    cdiff[i] += 1;
    cdiff[static_cast<std::size_t>(last[i])] -= 1;
  }
  std::vector<double> out(n, 0.0);
  double run = 0;
  int crun = 0;
  if (counts) counts->assign(n, 0);
  for (std::size_t c = 0; c < n; ++c) {
    run += diff[c];
    crun += cdiff[c];
    out[c] = run;
    if (counts) (*counts)[c] = crun;
  }
  return out;
}

}  // namespace

ChunkPlan evaluate_cuts(const NetDesc& net, const std::vector<int>& cuts, int wbits, int act_bytes) {
  std::vector<int> counts;
  const auto cross = crossing_bytes(net, act_bytes, &counts);
  ChunkPlan p;
  int first = 0;
  std::vector<int> ends = cuts;
  ends.push_back(static_cast<int>(net.layers.size()) - 1);
  for (int end : ends) {
    Chunk c;
    c.first = first;
    c.last = end;
    for (int i = first; i <= end; ++i) {
      const NetLayer& l = net.layers[static_cast<std::size_t>(i)];
      c.weight_bytes += layer_weight_bytes(l, wbits);
      for (int q : l.inputs) {
        auto& dst = is_graph_input(net.layers[static_cast<std::size_t>(q)]) ? c.pipeline_inputs
                                                                               : c.inputs_from_before;
        if (q < first && std::find(dst.begin(), dst.end(), q) == dst.end()) dst.push_back(q);
      }
    }
    p.total_weight_bytes += c.weight_bytes;
    p.chunks.push_back(c);
    first = end + 1;
  }
  for (int c : cuts) {
    p.boundary_bytes += cross[static_cast<std::size_t>(c)];
    p.boundary_tensors += counts[static_cast<std::size_t>(c)];
  }
  return p;
}

namespace {

// Apple's rule on the layer range [lo, hi]: walk in order; after the cumulative weight passes half
// of the range's weight, cut after the first op whose (single) output has exactly one consumer.
// Returns the cut index, or -1 when no op qualifies.
int apple_cut(const NetDesc& net, const std::vector<std::vector<int>>& consumers, int lo, int hi,
              int wbits) {
  double total = 0;
  for (int i = lo; i <= hi; ++i) total += layer_weight_bytes(net.layers[static_cast<std::size_t>(i)], wbits);
  double cum = 0;
  for (int i = lo; i < hi; ++i) {
    const NetLayer& l = net.layers[static_cast<std::size_t>(i)];
    cum += layer_weight_bytes(l, wbits);
    if (cum > total / 2 && !is_graph_input(l) && consumers[static_cast<std::size_t>(i)].size() == 1)
      return i;
  }
  return -1;
}

}  // namespace

ChunkPlan chunk_net(const NetDesc& net, const ChunkOptions& opt) {
  KVLAB_THROW_IF(opt.wbits != 16 && opt.wbits != 8,
                 UsageError,
                 "--wbits {} is not supported; expected 16 or 8",
                 opt.wbits);
  const double cap = opt.cap_mb * 1e6;
  const int n = static_cast<int>(net.layers.size());
  std::vector<double> w(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    w[static_cast<std::size_t>(i)] = layer_weight_bytes(net.layers[static_cast<std::size_t>(i)], opt.wbits);
    KVLAB_THROW_IF(w[static_cast<std::size_t>(i)] > cap,
                   UsageError,
                   "--cap-mb {}: op \"{}\" alone holds {:.1f} MB of weights at {} bits, more than "
                   "the cap; no chunking can fit it (raise --cap-mb to at least {:.1f} or use "
                   "--wbits 8)",
                   opt.cap_mb,
                   net.layers[static_cast<std::size_t>(i)].name,
                   w[static_cast<std::size_t>(i)] / 1e6,
                   opt.wbits,
                   std::ceil(w[static_cast<std::size_t>(i)] / 1e5) / 10);
  }
  ChunkPlan plan;
  if (opt.algo == "apple-bisect") {
    KVLAB_THROW_IF(opt.chunks != 0,
                   UsageError,
                   "--chunks applies to --algo dp only (apple-bisect halves until every chunk fits)");
    const auto consumers = net.consumers();
    std::vector<std::pair<int, int>> todo = {{0, n - 1}}, done;
    while (!todo.empty()) {
      auto [lo, hi] = todo.back();
      todo.pop_back();
      double tw = 0;
      for (int i = lo; i <= hi; ++i) tw += w[static_cast<std::size_t>(i)];
      // Apple splits the UNet once, unconditionally (--chunk-unet: two chunks); kvlab then keeps
      // bisecting any chunk still over the cap.
      const bool whole = lo == 0 && hi == n - 1;
      if (tw <= cap && !whole) {
        done.push_back({lo, hi});
        continue;
      }
      const int c = apple_cut(net, consumers, lo, hi, opt.wbits);
      KVLAB_THROW_IF(c < 0,
                     UsageError,
                     "--algo apple-bisect: no single-consumer op to cut at in layers {}..{} "
                     "({:.1f} MB > cap); use --algo dp",
                     lo,
                     hi,
                     tw / 1e6);
      todo.push_back({c + 1, hi});
      todo.push_back({lo, c});
    }
    std::sort(done.begin(), done.end());
    std::vector<int> cuts;
    for (std::size_t k = 0; k + 1 < done.size(); ++k) cuts.push_back(done[k].second);
    plan = evaluate_cuts(net, cuts, opt.wbits, opt.act_bytes);
  } else if (opt.algo == "dp") {
    const auto cross = crossing_bytes(net, opt.act_bytes, nullptr);
    std::vector<double> prefix(static_cast<std::size_t>(n) + 1, 0.0);
    for (int i = 0; i < n; ++i) prefix[static_cast<std::size_t>(i) + 1] = prefix[static_cast<std::size_t>(i)] + w[static_cast<std::size_t>(i)];
    const double inf = std::numeric_limits<double>::infinity();
    auto weight = [&](int i, int j) {  // layers [i, j)
      return prefix[static_cast<std::size_t>(j)] - prefix[static_cast<std::size_t>(i)];
    };
    auto cut_cost = [&](int i) { return i > 0 ? cross[static_cast<std::size_t>(i) - 1] : 0.0; };
    // from[k][j]: start of the last chunk in the best split of layers [0, j) into k chunks (k = 0
    // row unused); with --chunks 0 one row: any number of chunks, ties broken by fewer chunks.
    const int kfix = opt.chunks;
    int best_k = 0;
    std::vector<std::vector<int>> from;
    if (kfix == 0) {
      std::vector<double> best(static_cast<std::size_t>(n) + 1, inf);
      std::vector<int> count(static_cast<std::size_t>(n) + 1, 0);
      from.assign(1, std::vector<int>(static_cast<std::size_t>(n) + 1, -1));
      best[0] = 0;
      for (int j = 1; j <= n; ++j)
        for (int i = j - 1; i >= 0 && weight(i, j) <= cap; --i) {
          if (best[static_cast<std::size_t>(i)] == inf) continue;
          const double c = best[static_cast<std::size_t>(i)] + cut_cost(i);
          const int cnt = count[static_cast<std::size_t>(i)] + 1;
          if (c < best[static_cast<std::size_t>(j)] ||
              (c == best[static_cast<std::size_t>(j)] && cnt < count[static_cast<std::size_t>(j)])) {
            best[static_cast<std::size_t>(j)] = c;
            count[static_cast<std::size_t>(j)] = cnt;
            from[0][static_cast<std::size_t>(j)] = i;
          }
        }
      KVLAB_THROW_IF(best[static_cast<std::size_t>(n)] == inf, UsageError,
                     "--cap-mb {}: no feasible chunking", opt.cap_mb);
      std::vector<int> cuts;
      for (int j = n; j > 0;) {
        const int i = from[0][static_cast<std::size_t>(j)];
        if (i > 0) cuts.push_back(i - 1);
        j = i;
      }
      std::reverse(cuts.begin(), cuts.end());
      plan = evaluate_cuts(net, cuts, opt.wbits, opt.act_bytes);
      plan.algo = opt.algo;
      return plan;
    }
    std::vector<double> prev(static_cast<std::size_t>(n) + 1, inf), cur;
    prev[0] = 0;
    from.assign(static_cast<std::size_t>(kfix) + 1, std::vector<int>(static_cast<std::size_t>(n) + 1, -1));
    for (int k = 1; k <= kfix; ++k) {
      cur.assign(static_cast<std::size_t>(n) + 1, inf);
      for (int j = 1; j <= n; ++j)
        for (int i = j - 1; i >= 0 && weight(i, j) <= cap; --i) {
          if (prev[static_cast<std::size_t>(i)] == inf) continue;
          const double c = prev[static_cast<std::size_t>(i)] + cut_cost(i);
          if (c < cur[static_cast<std::size_t>(j)]) {
            cur[static_cast<std::size_t>(j)] = c;
            from[static_cast<std::size_t>(k)][static_cast<std::size_t>(j)] = i;
          }
        }
      prev.swap(cur);
    }
    KVLAB_THROW_IF(prev[static_cast<std::size_t>(n)] == inf,
                   UsageError,
                   "--chunks {}: the weights ({:.1f} MB) cannot be split into {} chunks of at most "
                   "{} MB; use more chunks or a larger --cap-mb",
                   kfix,
                   prefix[static_cast<std::size_t>(n)] / 1e6,
                   kfix,
                   opt.cap_mb);
    best_k = kfix;
    std::vector<int> cuts;
    int j = n;
    for (int k = best_k; k > 0; --k) {
      const int i = from[static_cast<std::size_t>(k)][static_cast<std::size_t>(j)];
      if (i > 0) cuts.push_back(i - 1);
      j = i;
    }
    std::reverse(cuts.begin(), cuts.end());
    plan = evaluate_cuts(net, cuts, opt.wbits, opt.act_bytes);
  } else {
    KVLAB_THROW(UsageError, "--algo {} is unknown; expected apple-bisect or dp", opt.algo);
  }
  plan.algo = opt.algo;
  return plan;
}

std::string format_chunks(const NetDesc& net, const ChunkPlan& p, const ChunkOptions& opt) {
  std::string out = fmt::format(
      "{}: {} ops, {:.1f} MB of weights at {} bits; cap {} MB; algorithm {}: {} chunk(s), "
      "{:.2f} MB crossing the boundaries ({} tensor-cut pairs)\n",
      net.name,
      net.layers.size(),
      p.total_weight_bytes / 1e6,
      opt.wbits,
      opt.cap_mb,
      p.algo,
      p.chunks.size(),
      p.boundary_bytes / 1e6,
      p.boundary_tensors);
  out += fmt::format("{:<6} {:>6} {:>6} {:>11}  {:<40} {}\n", "chunk", "first", "last", "weights MB",
                     "last op", "reads from earlier chunks");
  for (std::size_t k = 0; k < p.chunks.size(); ++k) {
    const auto& c = p.chunks[k];
    std::string reads;
    for (int q : c.inputs_from_before)
      reads += (reads.empty() ? "" : ", ") + net.layers[static_cast<std::size_t>(q)].name;
    out += fmt::format("{:<6} {:>6} {:>6} {:>11.1f}  {:<40} {}\n",
                       k,
                       c.first,
                       c.last,
                       c.weight_bytes / 1e6,
                       net.layers[static_cast<std::size_t>(c.last)].name,
                       reads.empty() ? "-" : reads);
  }
  return out;
}

nlohmann::json chunks_json(const NetDesc& net, const ChunkPlan& p) {
  nlohmann::json cs = nlohmann::json::array();
  for (const auto& c : p.chunks) {
    nlohmann::json reads = nlohmann::json::array();
    for (int q : c.inputs_from_before) reads.push_back(net.layers[static_cast<std::size_t>(q)].name);
    cs.push_back({{"first", c.first},
                  {"last", c.last},
                  {"last_op", net.layers[static_cast<std::size_t>(c.last)].name},
                  {"weight_bytes", c.weight_bytes},
                  {"reads_from_earlier", reads}});
  }
  return {{"component", net.name},
          {"algo", p.algo},
          {"ops", net.layers.size()},
          {"total_weight_bytes", p.total_weight_bytes},
          {"boundary_bytes", p.boundary_bytes},
          {"boundary_tensors", p.boundary_tensors},
          {"chunks", cs}};
}

}  // namespace kvlab::pim
