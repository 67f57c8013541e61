// kvlab binarize (docs/binarize.md): every linear layer of an LLM's blocks becomes a BinaryMoS
// layer (mos.hpp), initialised from the dense weight, then trained by knowledge distillation from
// the original model as the official BinaryMoS code does (KL on logits, batchmean, plus
// l2l_loss_scale x summed per-layer hidden-state MSE; AdamW with a cosine schedule and linear
// warm-up; embeddings, norms and head frozen), and written as a `model` artifact whose block
// linears are packed 1-bit layers (/linears, docs/formats/model.md).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kvlab/core/artifact.hpp"
#include "kvlab/core/progress.hpp"
#include "kvlab/llm/model.hpp"

namespace kvlab::binary {

enum class BinarizeMethod { mos, sign };
/// CLI names: "mos", "sign".
const std::map<std::string, BinarizeMethod>& binarize_method_names();
const char* binarize_method_name(BinarizeMethod m);

/// Defaults are the official main.py's (batch 4, seq 2048, 3 epochs, lr 2e-5, cosine, warm-up
/// ratio 0.03, AdamW (0.9, 0.999), weight decay 0, l2l scale 10, seed 42, E = 4) and HF Trainer's
/// (gradient clipping at norm 1, eps 1e-8).
struct BinarizeOptions {
  BinarizeMethod method = BinarizeMethod::mos;
  std::int64_t experts = 4;        ///< scale experts (mos); 1 = OneBit-style
  std::int64_t seq_len = 2048;     ///< tokens per training block (group_texts)
  std::int64_t batch_size = 4;     ///< blocks per step
  std::int64_t epochs = 3;         ///< passes over the data when steps < 0
  std::int64_t steps = -1;         ///< optimizer steps: < 0 from epochs, 0 = initialisation only
  double lr = 2e-5;
  double warmup_ratio = 0.03;      ///< warm-up steps = ceil(ratio * steps) (HF)
  double weight_decay = 0.0;
  double max_grad_norm = 1.0;      ///< 0: no clipping
  double l2l_loss_scale = 10.0;    ///< weight of the summed hidden-state MSE
  std::string device = "cpu";
  /// Compute dtype of teacher and student forwards ("auto": float32 on the CPU, bfloat16 on CUDA).
  std::string dtype = "auto";
  /// Dtype of the latent weight matrices, their gradients and AdamW moments: "float32" (master
  /// weights, as the reference) or "bfloat16" (each update computed in float32 and stored with
  /// stochastic rounding, stochastic_round_bf16; halves the 7B state to fit one 80 GB card).
  /// Scales and routers stay float32 either way.
  std::string state_dtype = "float32";
  /// Gradient checkpointing of the student's blocks: "auto" (on on CUDA, off on the CPU), "on",
  /// "off". Keeps only each block's input and recomputes the block in the backward; the same
  /// gradients up to float summation order.
  std::string grad_checkpoint = "auto";
  /// Sequences per forward/backward (0: the whole batch); the gradients of a step's micro-batches
  /// accumulate before the update (the loss is the same sum, so results differ only by rounding).
  std::int64_t micro_batch_size = 0;
  std::uint64_t seed = 42;         ///< router init and data order
  std::int64_t checkpoint_every = 0;  ///< steps between checkpoints (0: only on a stop signal)
  std::string checkpoint;          ///< checkpoint path ("" : none)
  std::string resume;              ///< checkpoint to resume from ("" : start fresh)
};

struct BinarizeResult {
  std::shared_ptr<llm::Model> model;  ///< CPU, source dtype, packed block linears
  std::int64_t steps = 0, total_steps = 0;
  bool stopped = false;               ///< a stop signal ended training (checkpoint written)
  std::string checkpoint_written;
  std::vector<double> loss;           ///< per optimizer step (this run's steps only)
  double final_loss = 0, seconds = 0;
  std::int64_t linear_weights = 0;    ///< binarized weights (sum of in x out)
  std::uint64_t linear_bytes = 0;     ///< their stored bytes (packed bits + fp16 scales/routers)
  double bits_per_weight = 0;         ///< 8 * linear_bytes / linear_weights
  std::int64_t tokens_per_step = 0;
  bool grad_checkpoint = false;       ///< whether the student's blocks were checkpointed
  std::vector<double> step_seconds;   ///< wall time of each optimizer step of this run
  std::uint64_t peak_device_bytes = 0;  ///< peak CUDA memory of the process (0 on the CPU)
  /// The trained float parameters (latent weights, scales, routers) by name, on the CPU.
  std::vector<std::pair<std::string, at::Tensor>> latent;
};

/// Binarizes and distils. `f` is the source model (read_model); `ids` a 1-D int64 token stream
/// (only needed when training: steps != 0). `prov` goes into checkpoints.
BinarizeResult binarize_model(const llm::ModelFile& f, const at::Tensor& ids,
                              const BinarizeOptions& opt, const core::Provenance& prov,
                              core::Progress& progress);

/// Writes the binarized model (a `model` artifact, format 1.1, /linears holds the packed layers
/// and the summary attributes method, experts, bits_per_weight, linear_weights, linear_bytes,
/// steps, final_loss).
core::ArtifactHeader write_binarized_model(const std::filesystem::path& path,
                                           const BinarizeResult& r, const BinarizeOptions& opt,
                                           const std::string& hf_config,
                                           const core::Provenance& prov);

/// Gradient checkpointing of one transformer block (binarize_checkpoint.cpp; LibTorch C++ has no
/// torch.utils.checkpoint). The block is a function of its input: `one` is a one-block view of a
/// model (a Model copy with every other block removed, sharing the layers), tokens/positions
/// [B, T] as for Model::forward, params the block's trainable tensors.
struct BlockCall {
  const llm::Model* one = nullptr;
  at::Tensor tokens, positions;
  std::vector<at::Tensor> params;
};
/// The block's output for input x ([B, T, C]) computed without a graph, keeping only x: the
/// backward re-runs the block with autograd on and returns the gradients of x and call.params,
/// which the engine accumulates into their .grad as without checkpointing. `call` (and the model
/// it points to) must outlive the backward.
at::Tensor checkpointed_block(const BlockCall& call, const at::Tensor& x);
/// The same block with an ordinary autograd forward (no checkpointing).
at::Tensor run_block(const BlockCall& call, const at::Tensor& x);

/// float32 -> bfloat16 with stochastic rounding: a value between two bfloat16 neighbours rounds
/// away from zero with probability (distance to the lower-magnitude one) / (their spacing), so the
/// expectation is the value itself and updates smaller than a bfloat16 ulp still move a weight on
/// average. Uses LibTorch's default generator of x's device.
at::Tensor stochastic_round_bf16(const at::Tensor& x);

/// One-line summary and its JSON form.
std::string binarize_report_text(const BinarizeResult& r, const BinarizeOptions& opt);
std::string binarize_report_json(const BinarizeResult& r, const BinarizeOptions& opt);

/// Bits per binarized weight of a model's block linears under `method`/`experts` (no biases), by
/// the storage arithmetic (mos_stored_bytes): e.g. about 1.04 for Llama-2-7B's shapes.
double binarized_bits_per_weight(const llm::ModelConfig& c, BinarizeMethod method,
                                 std::int64_t experts);

}  // namespace kvlab::binary
