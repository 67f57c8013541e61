// The network-description IR: a plain, library-neutral layer list (op type, parameters, per-sample
// output shapes, producer/consumer edges) that every hardware-mapping command consumes
// (pim-compile, later mobile-plan) and that model-owning libraries (libllm, libbinary) can emit
// without depending on libpim. File format (JSON): docs/formats/network.md.
//
// Invariants after finalize_net(): names are unique; every producer index is smaller than its
// consumer's index (the list is topologically sorted); every layer has its output shape; conv and
// fc layers know their input channels/features.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

namespace kvlab::core {

/// Operation kinds. Ops with weights are conv and fc; matmul multiplies two activations (attention
/// scores), so it has no static weights. The variant of an op (relu vs gelu, max vs avg pool,
/// flatten vs dropout) is in NetLayer::fn.
enum class NetOp {
  input,    ///< network input; shape required
  conv,     ///< 2-D convolution; grouped and depthwise through groups
  fc,       ///< fully connected / linear, applied to the last axis (a [C,H,W] input is flattened)
  matmul,   ///< activation x activation product (no static weights); shape required
  pool,     ///< fn max|avg; global covers the whole input
  add,      ///< elementwise sum (residuals); later inputs may broadcast (axes equal or 1)
  mul,      ///< elementwise product of same-shaped inputs
  concat,   ///< concatenation along axis 0 (channels)
  act,      ///< elementwise activation: fn relu|relu6|sigmoid|tanh|gelu|silu|...
  norm,     ///< normalisation: fn batch|layer|group|rms|lrn
  softmax,  ///< softmax over the last axis
  reshape,  ///< no arithmetic: fn flatten|dropout|identity|reshape (needs a shape)|upsample
            ///< (nearest, [C,H,W] by stride_h x stride_w)
};

const char* net_op_name(NetOp op);
/// Parses an op name, accepting aliases: relu/relu6/gelu/... -> act (fn set), linear/dense -> fc,
/// maxpool/avgpool/global_avgpool -> pool, flatten/dropout/identity -> reshape, batchnorm/
/// layernorm/groupnorm/lrn -> norm, dwconv -> conv (depthwise), sum/eltwise -> add. Returns the
/// implied fn in `fn_out` (empty when none).
std::optional<NetOp> net_op_from_name(const std::string& name, std::string* fn_out = nullptr);

struct NetLayer {
  std::string name;
  NetOp op = NetOp::reshape;
  std::string fn;           ///< op variant (see NetOp); empty: the op's default
  std::vector<int> inputs;  ///< producer layer indices, each smaller than this layer's index
  /// Output shape of one sample (no batch axis): [C, H, W] for feature maps, [F] for vectors,
  /// [T, F] for a sequence of T tokens. Inferred by finalize_net() for all ops but input, matmul
  /// and reshape(fn=reshape); when given for another op it is checked against the inference.
  std::vector<std::int64_t> shape;

  // conv / fc / pool parameters (ignored by other ops).
  std::int64_t in_channels = 0;   ///< conv: input channels; fc: input features (0: infer)
  std::int64_t out_channels = 0;  ///< conv: output channels; fc: output features
  int kernel_h = 1, kernel_w = 1;
  int stride_h = 1, stride_w = 1;
  int pad_top = 0, pad_bottom = 0, pad_left = 0, pad_right = 0;
  int dilation_h = 1, dilation_w = 1;
  std::int64_t groups = 1;  ///< conv groups (in_channels for depthwise)
  bool bias = false;
  bool global = false;     ///< pool over the whole spatial extent
  bool ceil_mode = false;  ///< pool output size rounds up (Caffe, torchvision's SqueezeNet)
  /// Weight precision of this layer in bits; 0 = the target's default (e.g. the PIM chip's
  /// weight_bits). A BNN layer says 1.
  int weight_bits = 0;
  /// Free-form key/values carried through unchanged (e.g. "fused_act", "source_op").
  std::map<std::string, std::string> attrs;

  bool has_weights() const { return op == NetOp::conv || op == NetOp::fc; }
  /// Number of weights (no biases): kh*kw*(in/groups)*out for conv, in*out for fc; 0 otherwise.
  std::int64_t weight_count() const;
  std::int64_t bias_count() const { return has_weights() && bias ? out_channels : 0; }
  std::int64_t out_numel() const;
  /// Positions per sample at which the weights are applied: OH*OW for conv, the product of the
  /// leading axes for fc (1 for a vector, T for [T,F]); 0 for ops without weights.
  std::int64_t positions() const;
  /// Multiply-accumulates per sample (weights ops only; 0 otherwise).
  std::int64_t macs() const;
};

struct NetDesc {
  std::string name;
  std::string source;  ///< where it came from: "zoo:vgg16", a file path, an artifact path
  std::vector<NetLayer> layers;

  /// Index of the layer called `name`, -1 when absent.
  int find(const std::string& name) const;
  /// consumers()[i]: indices of the layers that read layer i's output.
  std::vector<std::vector<int>> consumers() const;
  std::int64_t weight_count() const;
  std::int64_t weight_layer_count() const;
  std::int64_t macs() const;
};

/// Checks edges (unique names, producers earlier in the list, arity per op), infers every missing
/// shape and channel count, and verifies given shapes against the inference. Throws
/// kvlab::FormatError naming `where` and the layer, with the found and expected values.
void finalize_net(NetDesc& net, const std::string& where);

/// Parses a network description. Two dialects are accepted:
///  - kvlab's own ({"format": "kvlab-network", "version": 1, "layers": [...]};
///  docs/formats/network.md);
///  - PIMCOMP-NN's node_list JSON ({"node_list": [...]}, the format of its models/JSON/*.json).
/// The result is finalized. FormatError (exit 3) naming `where` on any problem.
NetDesc parse_net_json(const nlohmann::json& j, const std::string& where);
/// Reads and parses a JSON network file (FormatError when missing or malformed).
NetDesc read_net_json(const std::filesystem::path& path);
/// kvlab-network JSON of a (finalized) network, every shape spelled out.
nlohmann::json net_to_json(const NetDesc& net);
/// The same as text for a file: keys in a fixed order, one layer per line.
std::string net_to_json_text(const NetDesc& net);

/// Builds a NetDesc in code (the built-in zoo, model artifacts). Layer methods return the new
/// layer's index; `from` is a producer index (-1: the previous layer). finish() finalizes.
class NetBuilder {
 public:
  explicit NetBuilder(std::string name, std::string source = "");
  int input(const std::string& name, std::vector<std::int64_t> shape);
  int conv(const std::string& name,
           int from,
           std::int64_t out_channels,
           int kernel,
           int stride = 1,
           int pad = 0,
           std::int64_t groups = 1,
           bool bias = true);
  int fc(const std::string& name, int from, std::int64_t out_features, bool bias = true);
  int pool(const std::string& name,
           int from,
           const std::string& fn,
           int kernel,
           int stride,
           int pad = 0,
           bool ceil_mode = false);
  int global_pool(const std::string& name, int from, const std::string& fn = "avg");
  int act(const std::string& name, int from, const std::string& fn = "relu");
  int norm(const std::string& name, int from, const std::string& fn);
  int add(const std::string& name, const std::vector<int>& from);
  int concat(const std::string& name, const std::vector<int>& from);
  int reshape(const std::string& name, int from, const std::string& fn = "flatten");
  int softmax(const std::string& name, int from);
  /// Any layer, as is (inputs must already be indices).
  int layer(NetLayer l);
  int last() const { return static_cast<int>(net_.layers.size()) - 1; }
  NetLayer& at(int i) { return net_.layers.at(static_cast<std::size_t>(i)); }
  NetDesc finish();

 private:
  int resolve(int from) const;
  NetDesc net_;
};

}  // namespace kvlab::core
