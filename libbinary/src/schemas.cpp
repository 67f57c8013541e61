#include "kvlab/binary/schemas.hpp"

#include <fmt/format.h>

#include <cmath>

namespace kvlab::binary {

namespace {

// bnn-model (docs/formats/bnn-model.md); keep in sync with write_bnn_model in bnn_train.cpp.
core::Schema bnn_model_schema() {
  using core::AttrType;
  core::Schema s;
  s.kind = "bnn-model";
  s.doc = "docs/formats/bnn-model.md";
  s.params = {{"arch", AttrType::string},          {"act", AttrType::string},
              {"ste", AttrType::string},           {"insta_stat", AttrType::string},
              {"width", AttrType::integer},        {"stages", AttrType::integer},
              {"depth", AttrType::integer},        {"shift", AttrType::number},
              {"shift_per_layer", AttrType::numbers, false},
              {"insta_reduction", AttrType::integer}, {"binary_weights", AttrType::integer},
              {"in_channels", AttrType::integer},  {"in_size", AttrType::integer},
              {"classes", AttrType::integer},      {"dataset", AttrType::string},
              {"recipe", AttrType::string},        {"epochs", AttrType::integer},
              {"batch_size", AttrType::integer},   {"lr", AttrType::number},
              {"weight_decay", AttrType::number},  {"seed", AttrType::integer}};
  s.datasets = {{"weights/fc/weight", {h5::DType::f32}, 2},
                {"weights/stem/weight", {h5::DType::f32}, 4},
                {"report/epoch_test_accuracy", {h5::DType::f64}, 1},
                {"report/act_plus_fraction", {h5::DType::f64}, 1},
                {"report/layer_macs", {h5::DType::i64}, 1}};
  s.check = [](const core::ArtifactReader& r, std::vector<std::string>& problems) {
    const h5::Group root = r.root();
    if (!root.has_group("report")) return;
    const h5::Group rep = root.group("report");
    for (const char* a : {"test_accuracy", "bops", "flops", "ops", "size_bits"})
      if (!rep.has_attr(a)) problems.push_back(fmt::format("/report attribute {} is missing", a));
    if (rep.has_attr("bops") && rep.has_attr("flops") && rep.has_attr("ops")) {
      const double want = rep.attr_double("bops") / 64.0 + rep.attr_double("flops");
      if (std::abs(rep.attr_double("ops") - want) > 1e-6 * (1.0 + want))
        problems.push_back(fmt::format("/report ops {} is not bops/64 + flops = {}",
                                       rep.attr_double("ops"), want));
    }
  };
  return s;
}

// checkpoint (docs/formats/checkpoint.md): written by libcore's write_checkpoint for every
// trainer; registered here because libcore's register_schemas belongs to the foundation.
core::Schema checkpoint_schema() {
  using core::AttrType;
  core::Schema s;
  s.kind = "checkpoint";
  s.doc = "docs/formats/checkpoint.md";
  s.params = {{"trainer", AttrType::string},      {"stage", AttrType::string},
              {"epoch", AttrType::integer},       {"step", AttrType::integer},
              {"step_in_epoch", AttrType::integer}, {"options_json", AttrType::string}};
  s.check = [](const core::ArtifactReader& r, std::vector<std::string>& problems) {
    if (!r.root().has_group("model")) problems.push_back("group /model is missing");
  };
  return s;
}

}  // namespace

void register_schemas(core::SchemaRegistry& reg) {
  reg.add(bnn_model_schema());
  reg.add(checkpoint_schema());
}

}  // namespace kvlab::binary
