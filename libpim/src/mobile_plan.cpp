// Memory schedules and roofline latency of a diffusion pipeline on a phone (mobile_plan.hpp).
#include "kvlab/pim/mobile_plan.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "kvlab/core/error.hpp"
#include "kvlab/core/h5.hpp"
#include "kvlab/pim/mobile_chunk.hpp"

namespace kvlab::pim {

using core::NetDesc;
using core::NetOp;
using json = nlohmann::json;

namespace {

json read_json_file(const std::filesystem::path& path, const char* what) {
  std::ifstream f(path);
  KVLAB_THROW_IF(!f, FormatError, "{}: cannot open the {}", path.string(), what);
  try {
    return json::parse(f);
  } catch (const json::parse_error& e) {
    KVLAB_THROW(FormatError, "{}: not valid JSON ({})", path.string(), e.what());
  }
}

double positive(const json& j, const char* key, const std::string& where, bool required,
                double def = 0) {
  if (!j.contains(key)) {
    KVLAB_THROW_IF(required, FormatError, "{}: missing \"{}\" (a positive number)", where, key);
    return def;
  }
  KVLAB_THROW_IF(!j.at(key).is_number() || j.at(key).get<double>() <= 0,
                 FormatError,
                 "{}: \"{}\" must be a positive number, found {}",
                 where,
                 key,
                 j.at(key).dump());
  return j.at(key).get<double>();
}

}  // namespace

DeviceProfile read_device_profile(const std::filesystem::path& path) {
  const std::string where = path.string();
  const json j = read_json_file(path, "device profile (bundled: data/mobile/devices/*.json)");
  KVLAB_THROW_IF(!j.is_object() || j.value("format", "") != "kvlab-mobile-device",
                 FormatError,
                 "{}: \"format\" must be \"kvlab-mobile-device\" (docs/formats/mobile-device.md)",
                 where);
  KVLAB_THROW_IF(j.value("version", 0) != 1, FormatError, "{}: version must be 1", where);
  DeviceProfile d;
  d.name = j.value("name", "");
  KVLAB_THROW_IF(d.name.empty(), FormatError, "{}: \"name\" is missing", where);
  d.description = j.value("description", "");
  d.accelerator = j.value("accelerator", "");
  d.peak_fp16_tflops = positive(j, "peak_fp16_tflops", where, true);
  d.dram_gbps = positive(j, "dram_gbps", where, true);
  d.storage_gbps = positive(j, "storage_gbps", where, true);
  d.ram_gb = positive(j, "ram_gb", where, true);
  d.compute_efficiency = positive(j, "compute_efficiency", where, false, d.compute_efficiency);
  d.memory_efficiency = positive(j, "memory_efficiency", where, false, d.memory_efficiency);
  d.app_memory_fraction = positive(j, "app_memory_fraction", where, false, d.app_memory_fraction);
  for (double v : {d.compute_efficiency, d.memory_efficiency, d.app_memory_fraction})
    KVLAB_THROW_IF(v > 1, FormatError, "{}: efficiencies and fractions must be <= 1", where);
  KVLAB_THROW_IF(!j.contains("sources") || !j.at("sources").is_array() || j.at("sources").empty(),
                 FormatError,
                 "{}: \"sources\" must cite where each number comes from",
                 where);
  for (const auto& s : j.at("sources")) d.sources.push_back(s.is_string() ? s.get<std::string>() : s.dump());
  return d;
}

std::vector<ReferenceRow> read_reference_rows(const std::filesystem::path& path) {
  const std::string where = path.string();
  const json j = read_json_file(path, "reference rows (data/mobile/reference-rows.json)");
  KVLAB_THROW_IF(!j.contains("rows") || !j.at("rows").is_array(),
                 FormatError,
                 "{}: expected {{\"rows\": [...]}}",
                 where);
  std::vector<ReferenceRow> out;
  for (const auto& r : j.at("rows")) {
    ReferenceRow x;
    x.source = r.value("source", "");
    x.model = r.value("model", "");
    x.device = r.value("device", "");
    x.runtime = r.value("runtime", "");
    x.precision = r.value("precision", "");
    x.what = r.value("what", "");
    x.steps = r.value("steps", 0);
    x.unit = r.value("unit", "");
    x.status = r.value("status", "");
    x.url = r.value("url", "");
    KVLAB_THROW_IF(!r.contains("value") || !r.at("value").is_number(),
                   FormatError,
                   "{}: row \"{}\" has no numeric \"value\"",
                   where,
                   x.what);
    x.value = r.at("value").get<double>();
    KVLAB_THROW_IF(x.status.rfind("reported", 0) != 0,
                   FormatError,
                   "{}: row \"{}\": status must start with \"reported\" (published numbers only)",
                   where,
                   x.what);
    out.push_back(x);
  }
  return out;
}

double live_activation_peak(const NetDesc& net, int act_bytes) {
  const std::size_t n = net.layers.size();
  std::vector<int> last(n, -1);
  for (std::size_t i = 0; i < n; ++i)
    for (int p : net.layers[i].inputs) last[static_cast<std::size_t>(p)] = static_cast<int>(i);
  // When op i runs, live = outputs j < i with last[j] >= i, plus its own output.
  std::vector<double> release(n + 1, 0.0);
  double live = 0, peak = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double out = static_cast<double>(net.layers[i].out_numel()) * act_bytes;
    live += out;
    peak = std::max(peak, live);
    const std::size_t free_at = last[i] < 0 ? i : static_cast<std::size_t>(last[i]);
    release[free_at] += out;
    live -= release[i];  // outputs whose last consumer was op i are freed after it
  }
  return peak;
}

double op_roofline_ms(const NetDesc& net, int layer, const DeviceProfile& d, int wbits) {
  const auto& l = net.layers[static_cast<std::size_t>(layer)];
  if (l.op == NetOp::input) return 0;
  const OpCost c = op_cost(l);
  double bytes = layer_weight_bytes(l, wbits) + static_cast<double>(c.out_elems) * 2;
  for (int p : l.inputs) bytes += static_cast<double>(net.layers[static_cast<std::size_t>(p)].out_numel()) * 2;
  const double t_compute = c.flops / (d.peak_fp16_tflops * 1e12 * d.compute_efficiency);
  const double t_memory = bytes / (d.dram_gbps * 1e9 * d.memory_efficiency);
  return std::max(t_compute, t_memory) * 1e3;
}

MobilePlan plan_pipeline(const PipelineGraph& g,
                         const DeviceProfile& device,
                         const PlanOptions& opt,
                         std::vector<ReferenceRow> references) {
  KVLAB_THROW_IF(opt.steps < 1, UsageError, "--steps {} must be >= 1", opt.steps);
  KVLAB_THROW_IF(opt.wbits != 16 && opt.wbits != 8,
                 UsageError,
                 "--wbits {} is not supported; expected 16 or 8",
                 opt.wbits);
  KVLAB_THROW_IF(opt.prune_frac < 0 || opt.prune_frac >= 1,
                 UsageError,
                 "--prune-frac {} must be in [0, 1)",
                 opt.prune_frac);
  MobilePlan p;
  p.model = g.model;
  p.device = device;
  p.opt = opt;
  p.resolution = g.resolution;
  p.references = std::move(references);
  for (const auto& c : g.components) {
    ComponentPlan cp;
    cp.component = c.component;
    cp.params = net_params(c.net);
    const bool unet = c.component == "unet";
    const double keep = unet ? 1.0 - opt.prune_frac : 1.0;
    double compute_ms = 0;
    for (std::size_t i = 0; i < c.net.layers.size(); ++i) {
      const auto& l = c.net.layers[i];
      cp.weight_bytes += layer_weight_bytes(l, opt.wbits) * (l.has_weights() ? keep : 1.0);
      cp.flops += op_cost(l).flops * (l.has_weights() ? keep : 1.0);
      double ms = op_roofline_ms(c.net, static_cast<int>(i), device, opt.wbits);
      if (l.has_weights()) ms *= keep;
      const OpCost oc = op_cost(l);
      const double t_compute =
          oc.flops / (device.peak_fp16_tflops * 1e12 * device.compute_efficiency) * 1e3;
      if (t_compute >= ms - 1e-12 && ms > 0) compute_ms += ms;
      cp.ms_per_call += ms;
    }
    cp.compute_bound_share = cp.ms_per_call > 0 ? compute_ms / cp.ms_per_call : 0;
    cp.act_peak_bytes = live_activation_peak(c.net, 2);
    const int guidance = opt.cfg_distilled ? 1 : 2;
    cp.calls = unet ? opt.steps * guidance : c.component == "text_encoder" ? guidance : 1;
    cp.total_ms = cp.ms_per_call * cp.calls;
    cp.load_ms = cp.weight_bytes / (device.storage_gbps * 1e9) * 1e3;
    p.compute_ms += cp.total_ms;
    p.components.push_back(cp);
  }
  for (const auto& c : p.components)
    if (c.component == "unet") p.unet_share = p.compute_ms > 0 ? c.total_ms / p.compute_ms : 0;
  // Persistent buffers between components: text embeddings (per guidance branch) and latents.
  const auto& unet_net = g.component("unet").net;
  const auto& ctx = unet_net.layers[static_cast<std::size_t>(unet_net.find("encoder_hidden_states"))];
  const auto& sample = unet_net.layers[static_cast<std::size_t>(unet_net.find("sample"))];
  const double persistent = 2.0 * (static_cast<double>(ctx.out_numel()) * (opt.cfg_distilled ? 1 : 2) +
                                   2.0 * static_cast<double>(sample.out_numel()));
  double sum_w = 0, max_act = 0, seq_peak = 0, pre_peak = 0, loads = 0;
  for (std::size_t i = 0; i < p.components.size(); ++i) {
    const auto& c = p.components[i];
    sum_w += c.weight_bytes;
    max_act = std::max(max_act, c.act_peak_bytes);
    seq_peak = std::max(seq_peak, c.weight_bytes + c.act_peak_bytes);
    const double next = i + 1 < p.components.size() ? p.components[i + 1].weight_bytes : 0;
    pre_peak = std::max(pre_peak, c.weight_bytes + c.act_peak_bytes + next);
    loads += c.load_ms;
  }
  // Prefetch: the next component loads while the current one computes.
  double pre_ms = p.components.front().load_ms;
  for (std::size_t i = 0; i < p.components.size(); ++i) {
    const double next = i + 1 < p.components.size() ? p.components[i + 1].load_ms : 0;
    pre_ms += std::max(p.components[i].total_ms, next);
  }
  p.schedules = {
      {"all-resident", sum_w + max_act + persistent, p.compute_ms,
       "all weights stay loaded (loaded once at app start: " + fmt::format("{:.0f} ms", loads) + ")"},
      {"sequential", seq_peak + persistent, p.compute_ms + loads,
       "load, run, unload each component in turn (the paper's pipelined loading)"},
      {"prefetch", pre_peak + persistent, pre_ms,
       "as sequential, loading the next component while the current one runs"}};
  return p;
}

std::string format_plan(const MobilePlan& p) {
  std::string out = fmt::format(
      "{} on {} ({}), {}x{}, {} steps, {}, {} weights / fp16 activations{}\n",
      p.model,
      p.device.name,
      p.device.accelerator,
      p.resolution,
      p.resolution,
      p.opt.steps,
      p.opt.cfg_distilled ? "CFG-distilled (1 UNet call/step)" : "classifier-free guidance (2 UNet calls/step)",
      p.opt.wbits == 8 ? "int8" : "fp16",
      p.opt.prune_frac > 0 ? fmt::format(", UNet pruned {:.0f}%", p.opt.prune_frac * 100) : "");
  out += fmt::format("roofline: {:.2f} TFLOPS fp16 x {:.2f}, {:.1f} GB/s DRAM x {:.2f}, storage {:.1f} GB/s "
                     "(device profile; see its sources)\n\n",
                     p.device.peak_fp16_tflops,
                     p.device.compute_efficiency,
                     p.device.dram_gbps,
                     p.device.memory_efficiency,
                     p.device.storage_gbps);
  out += fmt::format("{:<13} {:>14} {:>10} {:>11} {:>13} {:>12} {:>6} {:>10} {:>8}\n",
                     "component",
                     "params",
                     "weight MB",
                     "act peak MB",
                     "GFLOPs/call",
                     "ms/call",
                     "calls",
                     "total ms",
                     "load ms");
  for (const auto& c : p.components)
    out += fmt::format("{:<13} {:>14} {:>10.1f} {:>11.1f} {:>13.1f} {:>12.1f} {:>6} {:>10.0f} {:>8.0f}\n",
                       c.component,
                       c.params,
                       c.weight_bytes / 1e6,
                       c.act_peak_bytes / 1e6,
                       c.flops / 1e9,
                       c.ms_per_call,
                       c.calls,
                       c.total_ms,
                       c.load_ms);
  out += fmt::format("compute total {:.2f} s per image; UNet {:.1f}% of it\n\n",
                     p.compute_ms / 1e3,
                     p.unet_share * 100);
  out += fmt::format("{:<13} {:>10} {:>12}  {}\n", "schedule", "peak MB", "latency s", "");
  for (const auto& s : p.schedules)
    out += fmt::format("{:<13} {:>10.0f} {:>12.2f}  {}{}\n",
                       s.name,
                       s.peak_bytes / 1e6,
                       s.latency_ms / 1e3,
                       s.note,
                       s.peak_bytes > p.device.ram_gb * 1e9 * p.device.app_memory_fraction
                           ? fmt::format(" [over {:.0f}% of {} GB RAM]",
                                         p.device.app_memory_fraction * 100,
                                         p.device.ram_gb)
                           : "");
  if (!p.references.empty()) {
    out += "\npublished reference rows (reported by their sources, not simulated by kvlab):\n";
    for (const auto& r : p.references)
      out += fmt::format("  [{}] {} | {} | {} | {} | {}{} | {} {} — {}\n",
                         r.status,
                         r.source,
                         r.model,
                         r.device,
                         r.runtime,
                         r.precision,
                         r.steps > 0 ? fmt::format(", {} steps", r.steps) : "",
                         r.value,
                         r.unit,
                         r.what);
  }
  return out;
}

json plan_json(const MobilePlan& p) {
  json comps = json::array();
  for (const auto& c : p.components)
    comps.push_back({{"component", c.component},
                     {"params", c.params},
                     {"weight_bytes", c.weight_bytes},
                     {"act_peak_bytes", c.act_peak_bytes},
                     {"flops_per_call", c.flops},
                     {"ms_per_call", c.ms_per_call},
                     {"compute_bound_share", c.compute_bound_share},
                     {"calls", c.calls},
                     {"total_ms", c.total_ms},
                     {"load_ms", c.load_ms}});
  json sch = json::array();
  for (const auto& s : p.schedules)
    sch.push_back({{"schedule", s.name},
                   {"peak_bytes", s.peak_bytes},
                   {"latency_ms", s.latency_ms},
                   {"note", s.note}});
  json refs = json::array();
  for (const auto& r : p.references)
    refs.push_back({{"source", r.source},
                    {"model", r.model},
                    {"device", r.device},
                    {"runtime", r.runtime},
                    {"precision", r.precision},
                    {"what", r.what},
                    {"steps", r.steps},
                    {"value", r.value},
                    {"unit", r.unit},
                    {"status", r.status},
                    {"url", r.url}});
  return {{"model", p.model},
          {"device", p.device.name},
          {"resolution", p.resolution},
          {"steps", p.opt.steps},
          {"cfg_distilled", p.opt.cfg_distilled},
          {"wbits", p.opt.wbits},
          {"prune_frac", p.opt.prune_frac},
          {"components", comps},
          {"compute_ms", p.compute_ms},
          {"unet_share", p.unet_share},
          {"schedules", sch},
          {"reference_rows", refs}};
}

void write_mobile_plan(const std::filesystem::path& out,
                       const MobilePlan& p,
                       const core::Provenance& prov) {
  core::ArtifactWriter w(out, "mobile-plan", kMobilePlanFormatVersion, kMobilePlanFormatMinor, prov);
  h5::Group& P = w.params();
  P.set_attr("model", p.model);
  P.set_attr("device", p.device.name);
  P.set_attr("resolution", static_cast<std::int64_t>(p.resolution));
  P.set_attr("steps", static_cast<std::int64_t>(p.opt.steps));
  P.set_attr("cfg_distilled", static_cast<std::int64_t>(p.opt.cfg_distilled ? 1 : 0));
  P.set_attr("wbits", static_cast<std::int64_t>(p.opt.wbits));
  P.set_attr("prune_frac", p.opt.prune_frac);
  h5::Group dev = w.root().require_group("device");
  dev.set_attr("name", p.device.name);
  dev.set_attr("description", p.device.description);
  dev.set_attr("accelerator", p.device.accelerator);
  dev.set_attr("peak_fp16_tflops", p.device.peak_fp16_tflops);
  dev.set_attr("dram_gbps", p.device.dram_gbps);
  dev.set_attr("storage_gbps", p.device.storage_gbps);
  dev.set_attr("ram_gb", p.device.ram_gb);
  dev.set_attr("compute_efficiency", p.device.compute_efficiency);
  dev.set_attr("memory_efficiency", p.device.memory_efficiency);
  dev.set_attr("sources", p.device.sources);
  h5::Group cg = w.root().require_group("components");
  std::vector<std::string> names;
  std::vector<std::int64_t> params, calls;
  std::vector<double> wb, act, flops, ms, total, load;
  for (const auto& c : p.components) {
    names.push_back(c.component);
    params.push_back(c.params);
    calls.push_back(c.calls);
    wb.push_back(c.weight_bytes);
    act.push_back(c.act_peak_bytes);
    flops.push_back(c.flops);
    ms.push_back(c.ms_per_call);
    total.push_back(c.total_ms);
    load.push_back(c.load_ms);
  }
  cg.set_attr("names", names);
  cg.write_vec("params", params, {"component"});
  cg.write_vec("calls", calls, {"component"});
  cg.write_vec("weight_bytes", wb, {"component"});
  cg.write_vec("act_peak_bytes", act, {"component"});
  cg.write_vec("flops_per_call", flops, {"component"});
  cg.write_vec("ms_per_call", ms, {"component"});
  cg.write_vec("total_ms", total, {"component"});
  cg.write_vec("load_ms", load, {"component"});
  h5::Group sg = w.root().require_group("schedules");
  std::vector<std::string> sn;
  std::vector<double> peak, lat;
  for (const auto& s : p.schedules) {
    sn.push_back(s.name);
    peak.push_back(s.peak_bytes);
    lat.push_back(s.latency_ms);
  }
  sg.set_attr("names", sn);
  sg.write_vec("peak_bytes", peak, {"schedule"});
  sg.write_vec("latency_ms", lat, {"schedule"});
  if (!p.references.empty()) {
  h5::Group rg = w.root().require_group("reference_rows");
  std::vector<std::string> rs, rw, ru, rst;
  std::vector<double> rv;
  for (const auto& r : p.references) {
    rs.push_back(r.source + " | " + r.model + " | " + r.device + " | " + r.runtime + " | " +
                 r.precision);
    rw.push_back(r.what);
    ru.push_back(r.unit);
    rst.push_back(r.status);
    rv.push_back(r.value);
  }
  rg.set_attr("sources", rs);
  rg.set_attr("what", rw);
  rg.set_attr("units", ru);
  rg.set_attr("status", rst);
  rg.write_vec("value", rv, {"row"});
  }
  w.root().set_attr("compute_ms", p.compute_ms);
  w.root().set_attr("unet_share", p.unet_share);
  w.commit();
}

}  // namespace kvlab::pim
