// kvlab artifacts with weights as pim-compile input: a bnn-model (docs/formats/bnn-model.md) or
// an LLM model (docs/formats/model.md), described as a network IR. Read with libcore's HDF5 API
// only (libpim depends on neither libbinary nor libllm); only the attributes and dataset shapes
// the mapping needs are read, never the weights themselves. Mapping: docs/pim-compile.md.
#pragma once

#include <cstdint>
#include <filesystem>

#include "kvlab/core/netdesc.hpp"

namespace kvlab::pim {

/// Context length assumed for the weight-free attention products of an LLM (their shapes only
/// size activation traffic; they take no crossbars). 0: the model's max_position_embeddings.
struct ArtifactNetOptions {
  std::int64_t llm_context = 0;
};

/// A bnn-model artifact as a network: every conv / linear of /report/layer_names in forward order,
/// shapes from /weights/<module path>/weight and /report/layer_macs; binary-* layers get
/// weight_bits 1 (one cell each), real-* layers the chip's weight bits; an INSTA MLP becomes a
/// global pool and two real fc layers. FormatError (exit 3) naming the file on any inconsistency.
core::NetDesc bnn_model_net(const std::filesystem::path& path);

/// An LLM model artifact as the network run once per generated token (input [1, hidden]): per
/// block q,k,v,o,gate,up,down as fc on [1, F], attention scores / values as weight-free matmuls;
/// then lm_head (the embedding matrix when tied). Reads /params attributes only.
core::NetDesc llm_model_net(const std::filesystem::path& path, const ArtifactNetOptions& opt = {});

/// Dispatches on the artifact kind (bnn-model or model); FormatError naming the file and its kind
/// for any other kvlab artifact.
core::NetDesc artifact_net(const std::filesystem::path& path, const ArtifactNetOptions& opt = {});

}  // namespace kvlab::pim
