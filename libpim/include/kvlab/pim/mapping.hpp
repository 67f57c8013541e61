// Weight-to-crossbar mapping (im2col) and the unit list the partitioner works on.
//
// Per weight layer (PIMCOMP-NN backend/CrossbarPartition.cpp, physical variant):
//   rows       = kernel_h * kernel_w * in_channels / groups      (fc: in_features)
//   cols       = out_channels / groups * ceil(weight_bits / cell_bits)
//   row_blocks = ceil(rows / xbar_rows), col_blocks = ceil(cols / xbar_cols)
//   crossbars  = groups * row_blocks * col_blocks
// One column of row_blocks crossbars is an array group (AG). A layer with more crossbars than the
// chip is split by AGs (output columns, so partial sums never leave the chip) into balanced
// slices; a layer whose single AG exceeds the chip cannot be mapped (MappingError, exit 2).
// Every non-input layer becomes one unit (weight layers: one per slice); partitions are contiguous
// unit ranges in this topological order.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvlab/core/error.hpp"
#include "kvlab/core/netdesc.hpp"
#include "kvlab/pim/hardware.hpp"

namespace kvlab::pim {

/// Mapping for one weight layer (whole layer, before slicing).
struct LayerMap {
  int layer = -1;         ///< index in the NetDesc
  int weight_bits = 0;    ///< effective precision (layer override or the chip's)
  std::int64_t rows = 0;  ///< im2col rows per group
  std::int64_t cols = 0;  ///< physical columns per group
  std::int64_t groups = 1;
  std::int64_t row_blocks = 0;
  std::int64_t col_blocks = 0;  ///< per group
  std::int64_t ags = 0;         ///< array groups = groups * col_blocks
  std::int64_t xbars = 0;       ///< ags * row_blocks
  std::int64_t positions = 0;   ///< MVMs per crossbar per sample (OH*OW for conv)
  std::int64_t write_rows = 0;  ///< crossbar rows programmed = ags * rows (write instructions)
  double weight_bytes = 0;      ///< weights * weight_bits / 8 (no biases)
  double cell_util = 0;         ///< weight cells used / cells in its crossbars
  int slices = 1;               ///< units it was split into
};

/// One schedulable piece: a whole non-weight layer, a whole weight layer, or an AG slice of one.
struct Unit {
  int layer = -1;             ///< index in the NetDesc
  int slice = 0, slices = 1;  ///< slice k of n (weight layers larger than the chip)
  std::int64_t xbars = 0;
  std::int64_t ags = 0;
  std::int64_t write_rows = 0;
  double weight_bytes = 0;
  double out_frac = 1;         ///< share of the layer's output this unit produces
  std::int64_t positions = 0;  ///< MVM rounds per sample
  double t_ns = 0;             ///< per-sample stage time, no replication
  double mvm_pj = 0;           ///< MVM energy per sample
  double vec_bytes = 0;        ///< bytes through a vector unit per sample
  double out_bytes = 0;        ///< bytes of its output per sample (act_bits)
  double line_bytes = 0;       ///< on-chip buffer its output needs while its consumers run
  bool weighted() const { return xbars > 0; }
  std::vector<int> in_units;   ///< producer units
  std::vector<int> in_ext;     ///< network-input layers it reads (NetDesc indices)
  std::vector<int> out_units;  ///< consumer units
  bool net_output = false;     ///< no consumer: its output leaves the chip
};

struct Mapping {
  std::vector<LayerMap> layers;  ///< weight layers, in network order
  std::vector<int> layer_map;    ///< NetDesc index -> index in `layers` (-1: none)
  std::vector<Unit> units;
  std::vector<double> ext_bytes;  ///< NetDesc index -> bytes of a network input per sample
  std::int64_t capacity = 0;      ///< crossbars on the chip
  std::int64_t total_xbars = 0;   ///< sum over weight layers
  std::int64_t largest_layer_xbars = 0;
  std::int64_t split_layers = 0;  ///< layers split into several slices
};

/// A network that cannot be mapped onto this chip even layer-split (exit 2: choose another --hw).
class MappingError : public UsageError {
 public:
  explicit MappingError(const std::string& m) : UsageError(m) {}
};

/// Crossbars of one weight layer (no slicing); `wbits` 0 takes the layer's or the chip's.
LayerMap map_layer(const core::NetLayer& l, int index, const HwConfig& hw);

/// Maps every layer and builds the unit list. Throws MappingError when a layer's array group
/// needs more crossbars than the chip has.
Mapping map_network(const core::NetDesc& net, const HwConfig& hw);

}  // namespace kvlab::pim
