#include "kvlab/snn/schemas.hpp"

#include <fmt/format.h>

#include "kvlab/snn/model_io.hpp"

namespace kvlab::snn {

void register_schemas(core::SchemaRegistry& reg) {
  using core::AttrType;
  core::Schema s;
  s.kind = kSnnModelKind;
  s.min_version = 1;
  s.max_version = kSnnModelVersion;
  s.doc = "docs/formats/snn-model.md";
  for (const char* k : {"rule", "loss", "neuron_model", "surrogate", "encoding", "dataset",
                        "options_json"})
    s.params.push_back({k, AttrType::string});
  s.params.push_back({"sizes", AttrType::integers});
  for (const char* k : {"time_steps", "epochs", "batch_size", "seed"})
    s.params.push_back({k, AttrType::integer});
  for (const char* k : {"alpha_i", "alpha_v", "beta_i", "beta_v", "beta_bias", "surr_alpha",
                        "surr_beta", "v_prime_min", "lif_beta", "threshold", "atan_alpha",
                        "fast_sigmoid_slope", "lambda_act", "lambda_timing", "timing_penalty",
                        "grad_clip", "softmax_beta", "lambda_nospike", "lr"})
    s.params.push_back({k, AttrType::number});
  s.datasets.push_back({"layers/*/weight", {h5::DType::f32}, 2});
  s.datasets.push_back({"layers/*/bias", {h5::DType::f32}, 1});
  for (const auto& k : snn_model_history_keys())
    s.datasets.push_back({"history/" + k, {h5::DType::f64}, 1});
  s.check = [](const core::ArtifactReader& r, std::vector<std::string>& problems) {
    const h5::Group root = r.root();
    if (!root.has_group("report")) {
      problems.push_back("missing group /report");
    } else {
      const h5::Group rep = root.group("report");
      for (const auto& k : snn_model_report_keys())
        if (!rep.has_attr(k)) problems.push_back(fmt::format("/report lacks attribute {}", k));
    }
    // Layer shapes must chain: sizes[l] -> sizes[l+1].
    const h5::Group p = r.params();
    if (!p.has_attr("sizes")) return;
    const auto v = p.attr("sizes");
    if (!std::holds_alternative<std::vector<std::int64_t>>(v)) return;
    const auto& sizes = std::get<std::vector<std::int64_t>>(v);
    for (std::size_t l = 0; l + 1 < sizes.size(); ++l) {
      const std::string g = fmt::format("layers/{:03d}", l);
      if (!root.has_group(g) || !root.group(g).has_dataset("weight")) {
        problems.push_back(fmt::format("/{} missing for sizes {}", g, l));
        continue;
      }
      const auto info = root.group(g).info("weight");
      if (info.shape != h5::Shape{sizes[l + 1], sizes[l]})
        problems.push_back(fmt::format("/{}/weight has shape {}, expected [{}, {}]", g,
                                       h5::shape_str(info.shape), sizes[l + 1], sizes[l]));
    }
  };
  reg.add(std::move(s));
}

}  // namespace kvlab::snn
