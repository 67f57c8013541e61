// The bnn-train summary (text table and JSON) printed by the front end.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <nlohmann/json.hpp>

#include "kvlab/binary/bnn.hpp"

namespace kvlab::binary {

std::string bnn_report_text(const BnnResult& r) {
  const BnnReport& p = r.report;
  std::string s;
  s += fmt::format("model        {} / {} (ste {}), width {}, {} stages x {} blocks\n",
                   to_string(r.net.arch), to_string(r.net.act),
                   r.net.arch == BnnArch::real ? "none" : to_string(r.net.ste), r.net.width,
                   r.net.stages, r.net.depth);
  s += fmt::format("data         {}: {} train / {} test images\n", p.dataset, p.train_images,
                   p.test_images);
  s += fmt::format("test acc     {:.2f} %   (train loss {:.4f}, train acc {:.2f} %, {} steps, "
                   "{:.1f} s on {})\n",
                   100.0 * p.test_accuracy, p.train_loss, 100.0 * p.train_accuracy, p.steps,
                   p.train_seconds, p.device);
  s += fmt::format("cost         BOPs {:.4g}  FLOPs {:.4g}  OPs {:.4g}  size {:.1f} KiB ({} binary "
                   "+ {} real params)\n",
                   static_cast<double>(p.bops), static_cast<double>(p.flops), p.ops,
                   static_cast<double>(p.size_bits) / 8192.0, p.binary_params, p.real_params);
  if (!p.act_names.empty()) {
    std::vector<std::string> f;
    for (double x : p.act_plus_fraction) f.push_back(fmt::format("{:.3f}", x));
    s += fmt::format("+1 fraction  {}\n", fmt::join(f, " "));
  }
  if (p.packed_checked)
    s += fmt::format("packed (CPU) accuracy {:.2f} %, agreement with float {:.2f} %, logits {}\n",
                     100.0 * p.packed_accuracy, 100.0 * p.packed_agreement,
                     p.packed_logits_equal ? "bit-identical" : "differ");
  return s;
}

std::string bnn_report_json(const BnnResult& r) {
  const BnnReport& p = r.report;
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& l : p.layers)
    layers.push_back({{"name", l.name}, {"type", l.type}, {"macs", l.macs}, {"params", l.params}});
  nlohmann::json acts = nlohmann::json::array();
  for (std::size_t i = 0; i < p.act_names.size(); ++i)
    acts.push_back({{"name", p.act_names[i]},
                    {"plus_fraction", p.act_plus_fraction[i]},
                    {"threshold_mean", p.act_threshold_mean[i]}});
  nlohmann::json j = {{"arch", to_string(r.net.arch)},
                      {"act", to_string(r.net.act)},
                      {"dataset", p.dataset},
                      {"train_images", p.train_images},
                      {"test_images", p.test_images},
                      {"test_accuracy", p.test_accuracy},
                      {"train_loss", p.train_loss},
                      {"train_accuracy", p.train_accuracy},
                      {"epoch_test_accuracy", p.epoch_test_accuracy},
                      {"epoch_seconds", p.epoch_seconds},
                      {"bops", p.bops},
                      {"flops", p.flops},
                      {"ops", p.ops},
                      {"size_bits", p.size_bits},
                      {"binary_params", p.binary_params},
                      {"real_params", p.real_params},
                      {"layers", layers},
                      {"activations", acts},
                      {"steps", p.steps},
                      {"device", p.device},
                      {"train_seconds", p.train_seconds}};
  if (p.packed_checked) {
    j["packed_accuracy"] = p.packed_accuracy;
    j["packed_agreement"] = p.packed_agreement;
    j["packed_logits_equal"] = p.packed_logits_equal;
  }
  return j.dump(2);
}

}  // namespace kvlab::binary
