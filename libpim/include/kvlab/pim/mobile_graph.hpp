// mobile-plan's op-level graphs of a latent-diffusion pipeline (text encoder, UNet, VAE decoder),
// built from the diffusers/transformers config.json files of a model directory onto the shared
// network IR (core::NetDesc), plus the per-op cost conventions (parameters, FLOPs, activation
// bytes) every other mobile-plan pass reads. docs/mobile-plan.md describes the conventions.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "kvlab/core/netdesc.hpp"

namespace kvlab::pim {

/// Layer attributes mobile-plan relies on (NetLayer::attrs), shared by the builder and the passes:
///  "params"  parameters a layer holds beyond conv/fc weights+biases (norm affine, embeddings)
///  "perm"    reshape: axes of the input (one sample, no batch axis) are permuted first, then
///            reshaped to `shape` ("1,0,2")
///  "k"       matmul: the contracted length (FLOPs = 2 * out_numel * k)
///  "groups"  norm fn=group: the number of groups; "eps": the norm's epsilon
///  "split"   fc: this fc is rows [a, b) of a fused source projection "name:a:b" (GEGLU halves)
///  "src"     the diffusers/transformers parameter prefix the layer's weights come from

struct GraphOptions {
  int resolution = 0;  ///< image side in pixels; 0: the VAE config's sample_size
  int text_len = 0;    ///< text tokens; 0: the text encoder's max_position_embeddings
};

struct ComponentGraph {
  std::string component;  ///< text_encoder | unet | vae_decoder
  std::filesystem::path config;
  core::NetDesc net;
};

struct PipelineGraph {
  std::string model;  ///< the model directory's name
  std::filesystem::path dir;
  int resolution = 0;
  int latent = 0;  ///< latent side = resolution / VAE scale factor
  int text_len = 0;
  std::vector<ComponentGraph> components;
  const ComponentGraph& component(const std::string& name) const;
};

/// Reads <dir>/{text_encoder,unet,vae}/config.json and builds the three component graphs.
/// FormatError (exit 3) naming the file and key on a malformed or unsupported config.
PipelineGraph build_pipeline_graph(const std::filesystem::path& dir, const GraphOptions& opt);

// The builders on parsed configs (`where` names the file in errors).
core::NetDesc build_clip_text_encoder(const nlohmann::json& cfg,
                                      const std::string& where,
                                      int text_len);
core::NetDesc build_unet(const nlohmann::json& cfg,
                         const std::string& where,
                         int latent,
                         int text_len,
                         std::int64_t context_dim);
core::NetDesc build_vae_decoder(const nlohmann::json& cfg, const std::string& where, int latent);

/// Per-op cost conventions (one sample; activations counted at `act_bytes` per element).
struct OpCost {
  std::int64_t params = 0;  ///< parameters held by the op (weights, biases, affine, tables)
  double flops = 0;         ///< conv/fc/matmul: 2 x MACs; elementwise ops: per-element constants
  std::int64_t out_elems = 0;
};
OpCost op_cost(const core::NetLayer& l);
std::int64_t net_params(const core::NetDesc& net);
double net_flops(const core::NetDesc& net);
/// Largest single activation (elements) and sum of all op outputs (elements).
std::int64_t net_peak_activation(const core::NetDesc& net);

/// The op's type key used by target profiles: "conv", "fc", "act:gelu", "norm:group",
/// "reshape:transpose" (a reshape with a non-identity perm), ...
std::string op_key(const core::NetLayer& l);
/// Tensor rank (with the batch axis) the op needs once lowered to a mobile runtime's primitives.
/// A GroupNorm on [C,H,W] lowers to a 5-D [N,G,C/G,H,W] reshape; the rewritten "group4d" form to 4.
int op_lowered_rank(const core::NetLayer& l);

/// Text table: per-component totals, and with `per_op` every op.
std::string format_graph(const PipelineGraph& g, bool per_op);
nlohmann::json graph_json(const PipelineGraph& g, bool per_op);

}  // namespace kvlab::pim
