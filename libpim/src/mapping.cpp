#include "kvlab/pim/mapping.hpp"

#include <algorithm>

namespace kvlab::pim {

using core::NetLayer;
using core::NetOp;

namespace {

std::int64_t ceil_div(std::int64_t a, std::int64_t b) {
  return (a + b - 1) / b;
}

// Rows of a [C, H, W] tensor that must sit in the buffer while consumer `c` streams over it.
double line_bytes_for(const NetLayer& producer, const NetLayer& c, double bytes) {
  const auto& s = producer.shape;
  if (s.size() != 3) return bytes;  // vectors and token sequences: whole tensor
  const double row = bytes / static_cast<double>(s[1]);
  switch (c.op) {
    case NetOp::conv:
      return row * static_cast<double>(std::min<std::int64_t>(s[1], c.kernel_h + c.stride_h - 1));
    case NetOp::pool:
      if (c.global) return bytes;
      return row * static_cast<double>(std::min<std::int64_t>(s[1], c.kernel_h + c.stride_h - 1));
    case NetOp::act:
    case NetOp::add:
    case NetOp::mul:
    case NetOp::concat:
      return row;
    case NetOp::norm:
      return (c.fn == "batch" || c.fn == "lrn") ? row : bytes;
    case NetOp::reshape:
      return c.fn == "flatten" || c.fn == "reshape" ? bytes : row;
    default:
      return bytes;  // fc, matmul, softmax: the whole tensor
  }
}

}  // namespace

LayerMap map_layer(const NetLayer& l, int index, const HwConfig& hw) {
  LayerMap m;
  m.layer = index;
  m.weight_bits = l.weight_bits > 0 ? l.weight_bits : hw.weight_bits;
  const int cpw = hw.cells_per_weight(m.weight_bits);
  m.groups = l.op == NetOp::conv ? l.groups : 1;
  m.rows = l.op == NetOp::conv
               ? static_cast<std::int64_t>(l.kernel_h) * l.kernel_w * (l.in_channels / m.groups)
               : l.in_channels;
  m.cols = l.out_channels / m.groups * cpw;
  m.row_blocks = ceil_div(m.rows, hw.xbar_rows);
  m.col_blocks = ceil_div(m.cols, hw.xbar_cols);
  m.ags = m.groups * m.col_blocks;
  m.xbars = m.ags * m.row_blocks;
  m.positions = l.positions();
  m.write_rows = m.ags * m.rows;
  m.weight_bytes = static_cast<double>(l.weight_count()) * m.weight_bits / 8.0;
  const double cells =
      static_cast<double>(m.xbars) * static_cast<double>(hw.xbar_rows * hw.xbar_cols);
  m.cell_util = cells > 0 ? static_cast<double>(l.weight_count()) * cpw / cells : 0.0;
  return m;
}

Mapping map_network(const core::NetDesc& net, const HwConfig& hw) {
  Mapping M;
  M.capacity = hw.capacity();
  M.layer_map.assign(net.layers.size(), -1);
  M.ext_bytes.assign(net.layers.size(), 0.0);
  const double abytes = hw.act_bits / 8.0;
  const auto consumers = net.consumers();
  std::vector<std::vector<int>> units_of(net.layers.size());

  for (std::size_t i = 0; i < net.layers.size(); ++i) {
    const NetLayer& l = net.layers[i];
    const double out_bytes = static_cast<double>(l.out_numel()) * abytes;
    if (l.op == NetOp::input) {
      M.ext_bytes[i] = out_bytes;
      continue;
    }
    double line = 0;
    for (int c : consumers[i])
      line = std::max(line, line_bytes_for(l, net.layers[static_cast<std::size_t>(c)], out_bytes));
    double in_bytes = 0;
    for (int p : l.inputs)
      in_bytes += static_cast<double>(net.layers[static_cast<std::size_t>(p)].out_numel()) * abytes;

    if (!l.has_weights()) {
      Unit u;
      u.layer = static_cast<int>(i);
      u.out_bytes = out_bytes;
      u.line_bytes = line;
      switch (l.op) {
        case NetOp::pool:
        case NetOp::act:
        case NetOp::add:
        case NetOp::mul:
        case NetOp::matmul:
          u.vec_bytes = in_bytes;
          break;
        case NetOp::norm:
        case NetOp::softmax:
          u.vec_bytes = 2 * in_bytes;  // a reduction pass and a normalising pass
          break;
        default:
          u.vec_bytes = 0;  // concat, reshape: placement only
      }
      u.t_ns = u.vec_bytes / hw.vector_bytes_per_ns;
      units_of[i].push_back(static_cast<int>(M.units.size()));
      M.units.push_back(std::move(u));
      continue;
    }

    LayerMap lm = map_layer(l, static_cast<int>(i), hw);
    KVLAB_THROW_IF(
        lm.row_blocks > M.capacity,
        pim::MappingError,
        "layer \"{}\" cannot fit on this chip even split by output columns: one column "
        "group needs {} crossbars ({} im2col rows / {} rows per crossbar) but the chip "
        "has {} ({} cores x {}); use a --hw with at least {} crossbars or larger crossbars",
        l.name,
        lm.row_blocks,
        lm.rows,
        hw.xbar_rows,
        M.capacity,
        hw.cores,
        hw.xbars_per_core,
        lm.row_blocks);
    std::int64_t n = 1;
    if (lm.xbars > M.capacity) {
      const std::int64_t per = M.capacity / lm.row_blocks;  // AGs per slice
      n = ceil_div(lm.ags, per);
      ++M.split_layers;
    }
    lm.slices = static_cast<int>(n);
    M.total_xbars += lm.xbars;
    M.largest_layer_xbars = std::max(M.largest_layer_xbars, lm.xbars);
    for (std::int64_t k = 0; k < n; ++k) {
      Unit u;
      u.layer = static_cast<int>(i);
      u.slice = static_cast<int>(k);
      u.slices = static_cast<int>(n);
      u.ags = lm.ags / n + (k < lm.ags % n ? 1 : 0);  // balanced slices
      const double frac = static_cast<double>(u.ags) / static_cast<double>(lm.ags);
      u.xbars = u.ags * lm.row_blocks;
      u.write_rows = u.ags * lm.rows;
      u.weight_bytes = lm.weight_bytes * frac;
      u.out_frac = frac;
      u.positions = lm.positions;
      u.t_ns = static_cast<double>(lm.positions) * hw.mvm_ns();
      u.mvm_pj = static_cast<double>(lm.positions) * static_cast<double>(u.xbars) * hw.mvm_pj();
      u.out_bytes = out_bytes * frac;
      u.line_bytes = line * frac;
      units_of[i].push_back(static_cast<int>(M.units.size()));
      M.units.push_back(std::move(u));
    }
    M.layer_map[i] = static_cast<int>(M.layers.size());
    M.layers.push_back(lm);
  }

  // Unit-level edges.
  for (std::size_t i = 0; i < net.layers.size(); ++i) {
    const NetLayer& l = net.layers[i];
    for (int uid : units_of[i]) {
      Unit& u = M.units[static_cast<std::size_t>(uid)];
      for (int p : l.inputs) {
        if (net.layers[static_cast<std::size_t>(p)].op == NetOp::input) {
          if (std::find(u.in_ext.begin(), u.in_ext.end(), p) == u.in_ext.end())
            u.in_ext.push_back(p);
        } else {
          for (int pu : units_of[static_cast<std::size_t>(p)]) {
            if (std::find(u.in_units.begin(), u.in_units.end(), pu) == u.in_units.end()) {
              u.in_units.push_back(pu);
              M.units[static_cast<std::size_t>(pu)].out_units.push_back(uid);
            }
          }
        }
      }
    }
  }
  for (auto& u : M.units) u.net_output = u.out_units.empty();
  return M;
}

}  // namespace kvlab::pim
