// Non-dense Linear layers in a `model` artifact, without libllm depending on the libraries that
// implement them (libbinary's packed 1-bit layers). A layer stored packed lives in
//
//   /linears/<hf prefix>    group, e.g. /linears/model.layers.0.self_attn.q_proj
//       attrs  kind (str), in_features, out_features (int), plus kind-specific integer attributes
//       datasets  the kind's tensors (any element type), row-major
//
// and its "<hf prefix>.weight" (and ".bias") are then absent from /weights. Each kind registers a
// loader (record -> Linear on a device/dtype) and a saver (Linear -> record) at start-up
// (libbinary: binary::register_linear_kinds(); the kvlab binary calls it while registering its
// commands). read_model collects the records; Model::from_file builds them through the registry.
// Layout: docs/formats/model.md, "Packed linear layers".
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kvlab/core/artifact.hpp"
#include "kvlab/core/h5.hpp"

namespace kvlab::llm {

class Linear;
class Model;

/// One stored non-dense layer, as read from / written to /linears/<prefix>.
struct LinearRecord {
  std::string kind;
  std::int64_t in_features = 0, out_features = 0;
  std::map<std::string, at::Tensor> tensors;   ///< CPU tensors, stored element types
  std::map<std::string, std::int64_t> ints;    ///< kind-specific integer attributes
};

using LinearLoader =
    std::function<std::shared_ptr<Linear>(const LinearRecord&, at::Device, c10::ScalarType)>;
using LinearSaver = std::function<LinearRecord(const Linear&)>;

/// Registers (or replaces) the loader and saver of a layer kind. Thread-safe.
void register_linear_kind(const std::string& kind, LinearLoader loader, LinearSaver saver);
bool linear_kind_registered(const std::string& kind);

/// Builds a stored layer on `dev`/`dtype`; FormatError naming `where` when its kind has no loader.
std::shared_ptr<Linear> make_linear(const LinearRecord& r, at::Device dev, c10::ScalarType dtype,
                                    const std::string& where);
/// The record of a non-dense layer (its kind's saver); UsageError for a kind without one.
LinearRecord linear_record(const Linear& l);

/// Reads every /linears/<prefix> group under `root` (none: empty map). FormatError naming `where`.
std::map<std::string, LinearRecord> read_linears(const h5::Group& root, const std::string& where);
/// Writes `r` as `/linears/<prefix>` under `root`.
void write_linear(h5::Group& root, const std::string& prefix, const LinearRecord& r);
/// Adds "<prefix>.weight" [out, in] (and "<prefix>.bias" [out] when the record has "bias") for
/// each record, so the config's expected-tensor check counts packed layers as present.
void add_linear_shapes(const std::map<std::string, LinearRecord>& records,
                       std::map<std::string, std::vector<std::int64_t>>& shapes);

/// Writes `m` as a `model` artifact (format 1.1) atomically: dense tensors in /weights, every
/// block linear whose kind() is not "dense" in /linears. `extra` (may be empty) is called with the
/// root group before commit, for kind-specific summary attributes.
core::ArtifactHeader write_model_with_linears(const std::filesystem::path& path, const Model& m,
                                              const core::Provenance& prov,
                                              const std::string& hf_config,
                                              const std::function<void(h5::Group&)>& extra = {});

}  // namespace kvlab::llm
