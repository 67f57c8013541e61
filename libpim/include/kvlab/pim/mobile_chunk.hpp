// mobile-plan chunk: splits one component graph into contiguous chunks (in the graph's
// topological order) whose weights each fit a size cap, as Core ML needs for the Neural Engine.
// Two algorithms: Apple's bisection rule (ml-stable-diffusion's chunk_mlprogram.py, applied
// recursively while a chunk is over the cap) and an exact DP minimising the activation bytes that
// cross chunk boundaries (skip connections included).
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "kvlab/core/netdesc.hpp"

namespace kvlab::pim {

struct ChunkOptions {
  double cap_mb = 1024;        ///< weight cap per chunk, MB (1e6 bytes)
  int wbits = 16;              ///< weight bits (16: fp16, 8: int8)
  std::string algo = "dp";     ///< apple-bisect or dp
  int chunks = 0;              ///< dp: exactly this many chunks (0: whatever minimises the bytes)
  int act_bytes = 2;           ///< bytes per activation element at the boundaries (fp16)
};

struct Chunk {
  int first = 0, last = 0;     ///< layer index range [first, last]
  double weight_bytes = 0;
  std::vector<int> inputs_from_before;  ///< layers of earlier chunks this chunk reads
  std::vector<int> pipeline_inputs;     ///< graph input layers it reads (fed by the pipeline)
};

struct ChunkPlan {
  std::string algo;
  std::vector<Chunk> chunks;
  /// Sum over cuts of the bytes of tensors produced before the cut and read after it (a skip
  /// connection crossing two cuts counts at both: it is live across each).
  double boundary_bytes = 0;
  int boundary_tensors = 0;    ///< (tensor, cut) pairs
  double total_weight_bytes = 0;
};

/// Weight bytes of one layer at `wbits` (norm/embedding parameters stay fp16).
double layer_weight_bytes(const core::NetLayer& l, int wbits);
/// Splits `net`. UsageError (exit 2) when one op alone exceeds the cap or `chunks` cannot fit.
ChunkPlan chunk_net(const core::NetDesc& net, const ChunkOptions& opt);
/// Evaluates a given partition (cut after each index in `cuts`, ascending).
ChunkPlan evaluate_cuts(const core::NetDesc& net, const std::vector<int>& cuts, int wbits,
                        int act_bytes);

std::string format_chunks(const core::NetDesc& net, const ChunkPlan& p, const ChunkOptions& opt);
nlohmann::json chunks_json(const core::NetDesc& net, const ChunkPlan& p);

}  // namespace kvlab::pim
