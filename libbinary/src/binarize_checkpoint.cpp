// Gradient checkpointing of one block for kvlab binarize (binarize.hpp: checkpointed_block).
// LibTorch C++ has no torch.utils.checkpoint; this is its reentrant variant as a custom autograd
// Function. A file of its own so that only it pays for the autograd headers.
#include "kvlab/binary/binarize.hpp"

#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstdint>

namespace kvlab::binary {

at::Tensor run_block(const BlockCall& call, const at::Tensor& x) {
  const llm::Model& one = *call.one;
  llm::KVCache cache = one.make_cache(x.size(0));
  std::vector<at::Tensor> hs;
  llm::ForwardOptions fo;
  fo.logits = llm::LogitsMode::none;
  fo.hidden_states = &hs;
  fo.input_hidden = x;
  one.forward(call.tokens, call.positions, cache, fo);
  return hs.at(0);
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class CheckpointedBlock : public torch::autograd::Function<CheckpointedBlock> {
 public:
  // Function::apply runs this with grad mode off: no graph, nothing but x kept for the backward.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const BlockCall* call,
                            at::TensorList params) {
    // params repeats call->params as an argument so that the engine routes their gradients.
    (void)params;
    ctx->save_for_backward({x});
    // The caller keeps the call alive until loss.backward() returns; an IValue cannot hold a
    // pointer, so it travels as an integer.
    ctx->saved_data["call"] = static_cast<std::int64_t>(reinterpret_cast<std::intptr_t>(call));
    ctx->saved_data["x_requires_grad"] = x.requires_grad();
    return run_block(*call, x);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto* call =
        reinterpret_cast<const BlockCall*>(static_cast<std::intptr_t>(ctx->saved_data["call"].toInt()));
    const bool x_grad = ctx->saved_data["x_requires_grad"].toBool();
    const at::Tensor x = ctx->get_saved_variables()[0].detach().requires_grad_(x_grad);
    variable_list inputs;
    if (x_grad) inputs.push_back(x);
    inputs.insert(inputs.end(), call->params.begin(), call->params.end());
    at::Tensor y;
    {
      at::AutoGradMode on(true);
      y = run_block(*call, x);
    }
    const at::Tensor g = grad_out[0].defined() ? grad_out[0] : at::zeros_like(y);
    const variable_list grads = torch::autograd::grad({y}, inputs, {g}, /*retain_graph=*/false,
                                                      /*create_graph=*/false, /*allow_unused=*/true);
    // One entry per forward argument: x, the call (not a tensor), then each parameter.
    variable_list out{x_grad ? grads[0] : at::Tensor(), at::Tensor()};
    out.insert(out.end(), grads.begin() + (x_grad ? 1 : 0), grads.end());
    return out;
  }
};

}  // namespace

at::Tensor checkpointed_block(const BlockCall& call, const at::Tensor& x) {
  return CheckpointedBlock::apply(x, &call, at::TensorList(call.params));
}

}  // namespace kvlab::binary
