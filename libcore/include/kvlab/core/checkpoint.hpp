// Training checkpoints: the `checkpoint` artifact every training command (bnn-train, snn-train)
// writes periodically and on SIGTERM/SIGUSR1, and reads back with --resume. Schema
// (docs/formats/checkpoint.md):
//
//   /                attrs kvlab.* (kind "checkpoint", format 1.0)
//   /params          trainer (str), stage (str), epoch, step, step_in_epoch (int),
//                    options_json (str: the trainer's options, checked on resume)
//   /model/<a>/<b>   float tensors, one per named parameter or buffer ("a.b" -> "a/b")
//   /optimizer/...   the optimizer state as named tensors, same naming rule
//   /rng/torch_cpu   uint8: LibTorch's default CPU generator state
//   /state           attrs: extra scalars (double) and text (str) the trainer needs, e.g. the
//                    data-order generator and the learning-rate schedule position
//
// Writes are atomic (ArtifactWriter: .partial.<pid> + rename), so a job killed while saving keeps
// its previous checkpoint. The optimizer state is stored as plain datasets (not a torch::serialize
// archive) so it stays readable by h5py and across LibTorch versions.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kvlab/core/artifact.hpp"
#include "kvlab/core/h5.hpp"

namespace kvlab::core {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

inline constexpr std::uint32_t kCheckpointVersion = 1;

struct Checkpoint {
  std::string trainer;             ///< the command that wrote it ("bnn-train")
  std::string stage;               ///< a multi-stage recipe's current stage ("" if one stage)
  std::int64_t epoch = 0;          ///< epochs completed in the current stage
  std::int64_t step = 0;           ///< optimizer steps taken in total
  std::int64_t step_in_epoch = 0;  ///< batches of the current epoch already done
  std::string options_json;        ///< the trainer's options (resume refuses a mismatch)
  NamedTensors model;
  NamedTensors optimizer;
  at::Tensor torch_rng;  ///< uint8 CPU generator state (torch_rng_state()); may be undefined
  std::map<std::string, double> scalars;
  std::map<std::string, std::string> text;
};

/// Writes `ckpt` atomically to `path`, replacing an older checkpoint there.
void write_checkpoint(const std::filesystem::path& path, const Checkpoint& ckpt,
                      const Provenance& prov);

/// Reads a checkpoint; FormatError when it is not a checkpoint artifact, was written by another
/// trainer than `trainer` (empty: any), or is malformed.
Checkpoint read_checkpoint(const std::filesystem::path& path, const std::string& trainer = "");

/// Resolves --resume: "" -> none; "auto" -> `default_path` when it exists, else none; anything
/// else -> that file, which must exist (UsageError naming --resume otherwise).
std::optional<std::filesystem::path> resolve_resume(const std::string& resume,
                                                    const std::filesystem::path& default_path);

/// Writes tensors under `group` ("a.b.c" is stored as <group>/a/b/c), contiguous CPU copies.
void write_named_tensors(h5::Group& root, const std::string& group, const NamedTensors& tensors);
/// Reads every dataset below `group`, names rebuilt with '.' separators, sorted by name.
NamedTensors read_named_tensors(const h5::Group& root, const std::string& group);

/// Copies `src` into the tensors of `dst` by name. FormatError (naming `file`) when a name is
/// missing in `src` or a shape differs; extra entries in `src` are an error too (strict).
void load_named_tensors(const NamedTensors& src, const NamedTensors& dst, const std::string& file);

/// LibTorch's default CPU generator state, and restoring it.
at::Tensor torch_rng_state();
void set_torch_rng_state(const at::Tensor& state);

}  // namespace kvlab::core
