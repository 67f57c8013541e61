// mobile-plan export's weights from a diffusers/transformers safetensors checkpoint: the
// parameters a component graph holds (named and shaped as the PyTorch modules hold them), the
// checkpoint file of a component, and a reader that checks the checkpoint against the graph
// (every missing, unexpected or mis-shaped tensor is a FormatError naming it) and hands out fp32
// values (F32, F16 and BF16 tensors; the file is read through libllm's safetensors reader).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "kvlab/core/netdesc.hpp"
#include "kvlab/llm/safetensors.hpp"

namespace kvlab::pim {

/// One parameter as the diffusers/transformers module holds it: the state-dict name relative to
/// the component (no "text_model." prefix) and the torch shape ([out, in] for Linear,
/// [out, in/groups, kh, kw] for Conv2d, [C] for norm affines, [rows, dim] for embeddings).
struct ParamSpec {
  std::string name;
  std::vector<std::int64_t> shape;
};

/// The parameters of a component graph (before or after the delegate rewrites: "group" and
/// "group4d" norms both give [C] affines; the two GEGLU halves give their one fused
/// projection), in first-use order. Their element counts add up to net_params(net).
std::vector<ParamSpec> component_params(const core::NetDesc& net);

/// The checkpoint file of `component` (text_encoder, unet or vae_decoder) under `path`:
///  - a file (.safetensors, or a .safetensors.index.json naming shards): itself (only when
///    `single_component`: one file cannot hold three components);
///  - a directory holding a checkpoint file (a component directory): that file (only when
///    `single_component`);
///  - a pipeline directory: <path>/<text_encoder|unet|vae>/ holding one.
/// Checkpoint file names tried in a directory, in order: diffusion_pytorch_model.safetensors,
/// model.safetensors, their .safetensors.index.json (sharded), then the .fp16 variants.
/// UsageError (exit 2) naming `path` and the names tried when there is none.
std::filesystem::path find_component_checkpoint(const std::filesystem::path& path,
                                                const std::string& component,
                                                bool single_component);

/// A component's checkpoint, checked against the graph's parameters.
class ComponentWeights {
 public:
  /// Opens `file` (one .safetensors, or a .safetensors.index.json with a weight_map) and checks
  /// it against `expected`. Checkpoint names are mapped the way diffusers/transformers load them:
  /// text_encoder drops the "text_model." prefix and ignores the "embeddings.position_ids"
  /// buffer; vae_decoder ignores the AutoencoderKL encoder half ("encoder.*", "quant_conv.*")
  /// and accepts the deprecated attention names (query/key/value/proj_attn, with [C, C, 1, 1]
  /// weights) that diffusers converts on load. Every missing, unexpected or mis-shaped tensor,
  /// and every dtype other than F32/F16/BF16, is listed in one FormatError (exit 3) naming the
  /// file, the tensor, the expected and the actual shape.
  static ComponentWeights open(const std::filesystem::path& file,
                               const std::string& component,
                               const std::vector<ParamSpec>& expected);

  ComponentWeights(ComponentWeights&&) noexcept = default;
  ComponentWeights& operator=(ComponentWeights&&) noexcept = default;

  /// The fp32 values of parameter `name` (a ParamSpec name), row-major in torch layout.
  /// FormatError for a name the graph does not hold.
  std::vector<float> read(const std::string& name) const;
  /// The file the checkpoint was opened from (for messages and the manifest).
  const std::string& source() const { return source_; }
  /// Checkpoint tensors that were ignored (the VAE encoder half, position_ids).
  std::size_t ignored() const { return ignored_; }

 private:
  ComponentWeights() = default;
  struct Where {
    std::size_t shard = 0;
    std::size_t tensor = 0;  // index into shards_[shard].tensors()
  };
  std::string source_;
  std::vector<llm::SafetensorsFile> shards_;
  std::map<std::string, Where> where_;  // ParamSpec name -> tensor
  std::size_t ignored_ = 0;
};

}  // namespace kvlab::pim
