// mobile-plan export: the rewritten, chunked component graph as ONNX models (one per chunk),
// written as protobuf wire format directly (ModelProto/GraphProto/NodeProto/TensorProto subset,
// opset 17, fp32 weights), plus a manifest JSON listing each chunk's inputs and outputs in run
// order. Initializers are named after the diffusers/transformers parameters they hold; their
// values come from a safetensors checkpoint (mobile_weights.hpp) or are seeded random.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "kvlab/core/netdesc.hpp"
#include "kvlab/pim/mobile_chunk.hpp"
#include "kvlab/pim/mobile_weights.hpp"

namespace kvlab::pim {

struct OnnxExportOptions {
  std::uint64_t seed = 0;  ///< random weights: deterministic per parameter name and seed
  /// Weights from a checkpoint (opened against component_params of the same net); null: random.
  const ComponentWeights* weights = nullptr;
};

struct OnnxChunk {
  std::string file;  ///< file name inside the output directory
  std::vector<std::string> inputs, outputs;
  std::size_t nodes = 0;
  std::int64_t weight_elems = 0;  ///< elements of parameter initializers (not constants)
  std::string bytes;              ///< the serialized ModelProto
};

/// Lowers `net` (after rewrite_for_target: GroupNorm must be in the 4-D form) chunk by chunk.
/// FormatError when an op has no ONNX lowering.
std::vector<OnnxChunk> export_onnx(const core::NetDesc& net,
                                   const ChunkPlan& plan,
                                   const std::string& component,
                                   const OnnxExportOptions& opt);

/// Writes the chunks and manifest.json into `dir` atomically (a sibling temp directory renamed
/// over `dir`); `dir` must not exist unless `force`. `weights` (component -> where its weights
/// came from: a checkpoint path or "random (seed N)") is recorded in the manifest.
void write_onnx_dir(const std::filesystem::path& dir,
                    const std::vector<std::pair<std::string, std::vector<OnnxChunk>>>& components,
                    bool force,
                    const std::map<std::string, std::string>& weights = {});

}  // namespace kvlab::pim
