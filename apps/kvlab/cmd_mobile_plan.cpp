// kvlab mobile-plan: deploy a latent-diffusion pipeline to phones as the mobile Stable Diffusion
// paper did: op graph from diffusers configs, delegate checks + rewrites, fp16 GELU sweep, weight
// chunking, memory/latency plan, ONNX export. Subcommands of one command; algorithms in libpim.
#include <fmt/format.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/core/log.hpp"
#include "kvlab/core/netdesc.hpp"
#include "kvlab/pim/mobile_chunk.hpp"
#include "kvlab/pim/mobile_delegate.hpp"
#include "kvlab/pim/mobile_gelu.hpp"
#include "kvlab/pim/mobile_graph.hpp"
#include "kvlab/pim/mobile_onnx.hpp"
#include "kvlab/pim/mobile_plan.hpp"
#include "kvlab/pim/mobile_weights.hpp"

namespace kvlab::cli {

namespace {

namespace fs = std::filesystem;

const std::vector<std::string> kTargets = {"tflite-gpu", "coreml-ane", "qnn-npu"};
const std::vector<std::string> kDevices = {"snapdragon-8-gen-1", "snapdragon-8-gen-2", "apple-a16"};
const std::vector<std::string> kComponents = {"text_encoder", "unet", "vae_decoder"};

// Options every model-reading subcommand shares.
struct ModelArgs {
  std::string dir;
  pim::GraphOptions graph;
  std::string profile_dir = "data/mobile";
};

void add_model_options(CLI::App* cmd, ModelArgs& m) {
  cmd->add_option("model",
                  m.dir,
                  "diffusers pipeline directory with text_encoder/, unet/, vae/ config.json "
                  "(bundled: data/diffusion/sd21, data/diffusion/sd15, data/diffusion/tiny)")
      ->required();
  cmd->add_option("--res", m.graph.resolution, "image side in pixels (0: the VAE's sample_size)")
      ->check(CLI::Range(0, 8192))
      ->capture_default_str();
  cmd->add_option("--text-len",
                  m.graph.text_len,
                  "text tokens (0: the text encoder's max_position_embeddings)")
      ->check(CLI::Range(0, 4096))
      ->capture_default_str();
}

void add_profile_dir(CLI::App* cmd, ModelArgs& m) {
  cmd->add_option("--profile-dir",
                  m.profile_dir,
                  "directory holding targets/, devices/ and reference-rows.json")
      ->capture_default_str();
}

// Writes text to `path` atomically (temp file in the same directory, then rename).
void write_text_atomic(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".partial." + std::to_string(::getpid());
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    KVLAB_THROW_IF(!f, IoError, "{}: cannot write", tmp.string());
    f << text;
    f.close();
    KVLAB_THROW_IF(!f, IoError, "{}: write failed", tmp.string());
  }
  fs::rename(tmp, path);
}

std::vector<const pim::ComponentGraph*> pick(const pim::PipelineGraph& g, const std::string& c) {
  std::vector<const pim::ComponentGraph*> out;
  for (const auto& comp : g.components)
    if (c == "all" || comp.component == c) out.push_back(&comp);
  return out;
}

void register_graph(CLI::App* parent, GlobalOptions& global) {
  struct Args {
    ModelArgs m;
    bool per_op = false;
    std::string component = "all";
    std::string export_net;
    bool force = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = parent->add_subcommand(
      "graph",
      "op-level graph of the pipeline (text encoder, UNet, VAE decoder) from its config.json "
      "files: per-op shapes, parameters, FLOPs, activation bytes");
  add_model_options(cmd, a->m);
  cmd->add_flag("--per-op", a->per_op, "list every op, not only the per-component totals");
  cmd->add_option("--component", a->component, "component to show: all, text_encoder, unet, vae_decoder")
      ->check(CLI::IsMember({"all", "text_encoder", "unet", "vae_decoder"}))
      ->capture_default_str();
  cmd->add_option("--export-net",
                  a->export_net,
                  "write the --component's graph as kvlab-network JSON (docs/formats/network.md)");
  cmd->add_flag("--force", a->force, "overwrite the --export-net file if it exists");
  cmd->callback([a, &global] {
    global.action = [a, &global] {
      const auto g = pim::build_pipeline_graph(a->m.dir, a->m.graph);
      if (!a->export_net.empty()) {
        KVLAB_THROW_IF(a->component == "all",
                       UsageError,
                       "--export-net needs one --component (text_encoder, unet or vae_decoder)");
        core::check_output_path(a->export_net, {}, a->force);
        write_text_atomic(a->export_net, core::net_to_json_text(g.component(a->component).net));
        log::info("wrote {}", a->export_net);
      }
      pim::PipelineGraph shown = g;
      shown.components.clear();
      for (const auto* c : pick(g, a->component)) shown.components.push_back(*c);
      if (global.json)
        fmt::print("{}\n", pim::graph_json(shown, a->per_op).dump(2));
      else
        fmt::print("{}", pim::format_graph(shown, a->per_op));
    };
  });
}

void register_delegate(CLI::App* parent, GlobalOptions& global) {
  struct Args {
    ModelArgs m;
    std::string target = "tflite-gpu";
    std::string target_file;
    pim::DelegateOptions opt;
    std::string component = "all";
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = parent->add_subcommand(
      "delegate",
      "check every op against a mobile runtime's target profile, count accelerator/CPU "
      "partitions, apply the rewrite passes and report before/after");
  add_model_options(cmd, a->m);
  add_profile_dir(cmd, a->m);
  cmd->add_option("--target", a->target, "target profile: tflite-gpu, coreml-ane or qnn-npu")
      ->check(CLI::IsMember(kTargets))
      ->capture_default_str();
  cmd->add_option("--target-file", a->target_file, "a custom target profile JSON (overrides --target)");
  cmd->add_option("--act-dtype", a->opt.act_dtype, "activation dtype: fp16 or fp32")
      ->check(CLI::IsMember({"fp16", "fp32"}))
      ->capture_default_str();
  cmd->add_option("--wbits", a->opt.wbits, "weight bits: 16 (fp16) or 8 (int8)")
      ->check(CLI::IsMember({16, 8}))
      ->capture_default_str();
  cmd->add_option("--gelu", a->opt.gelu, "stable GELU replacement: tanh-clamped or sigmoid")
      ->check(CLI::IsMember({"tanh-clamped", "sigmoid"}))
      ->capture_default_str();
  cmd->add_option("--component", a->component, "component: all, text_encoder, unet, vae_decoder")
      ->check(CLI::IsMember({"all", "text_encoder", "unet", "vae_decoder"}))
      ->capture_default_str();
  cmd->callback([a, &global] {
    global.action = [a, &global] {
      const fs::path tp = !a->target_file.empty()
                              ? fs::path(a->target_file)
                              : fs::path(a->m.profile_dir) / "targets" / (a->target + ".json");
      const auto target = pim::read_target_profile(tp);
      const auto g = pim::build_pipeline_graph(a->m.dir, a->m.graph);
      std::vector<pim::DelegateReport> before, after;
      std::vector<pim::RewriteStats> stats;
      for (const auto* c : pick(g, a->component)) {
        before.push_back(pim::check_delegate(c->net, target, a->opt, c->component));
        stats.emplace_back();
        const auto rw = pim::rewrite_for_target(c->net, target, a->opt, stats.back());
        after.push_back(pim::check_delegate(rw, target, a->opt, c->component));
      }
      if (global.json)
        fmt::print("{}\n", pim::delegate_json(before, after, stats, target).dump(2));
      else
        fmt::print("{}", pim::format_delegate(before, after, stats, target));
    };
  });
}

void register_gelu(CLI::App* parent, GlobalOptions& global) {
  auto opt = std::make_shared<pim::GeluOptions>();
  CLI::App* cmd = parent->add_subcommand(
      "gelu",
      "emulated-fp16 sweep of GELU variants (erf, naive tanh, clamped tanh, x*sigmoid(1.702x)): "
      "max error vs fp64 and the first input giving Inf/NaN");
  cmd->add_option("--dtype", opt->dtype, "emulated dtype of every intermediate: fp16 or fp32")
      ->check(CLI::IsMember({"fp16", "fp32"}))
      ->capture_default_str();
  cmd->add_option("--min", opt->lo, "smallest input swept")
      ->check(CLI::Range(-65504.0, 65504.0))
      ->capture_default_str();
  cmd->add_option("--max", opt->hi, "largest input swept")
      ->check(CLI::Range(-65504.0, 65504.0))
      ->capture_default_str();
  cmd->add_option("--clamp", opt->clamp, "tanh-clamped: |z| limit before exp(2z)")
      ->check(CLI::Range(0.5, 5.5))
      ->capture_default_str();
  cmd->callback([opt, &global] {
    global.action = [opt, &global] {
      const auto s = pim::gelu_sweep(*opt);
      if (global.json)
        fmt::print("{}\n", pim::gelu_json(s).dump(2));
      else
        fmt::print("{}", pim::format_gelu(s));
    };
  });
}

void register_chunk(CLI::App* parent, GlobalOptions& global) {
  struct Args {
    ModelArgs m;
    pim::ChunkOptions opt;
    std::string component = "unet";
    std::string target;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = parent->add_subcommand(
      "chunk",
      "split a component into chunks whose weights fit a size cap: Apple's bisection rule or "
      "an exact DP minimising the bytes crossing chunk boundaries");
  add_model_options(cmd, a->m);
  add_profile_dir(cmd, a->m);
  cmd->add_option("--component", a->component, "component to split: text_encoder, unet, vae_decoder")
      ->check(CLI::IsMember(kComponents))
      ->capture_default_str();
  cmd->add_option("--cap-mb", a->opt.cap_mb, "weight cap per chunk, MB (1e6 bytes)")
      ->check(CLI::Range(0.001, 1e7))
      ->capture_default_str();
  cmd->add_option("--algo", a->opt.algo, "apple-bisect or dp")
      ->check(CLI::IsMember({"apple-bisect", "dp"}))
      ->capture_default_str();
  cmd->add_option("--chunks", a->opt.chunks, "dp: exactly this many chunks (0: fewest boundary bytes)")
      ->check(CLI::Range(0, 64))
      ->capture_default_str();
  cmd->add_option("--wbits", a->opt.wbits, "weight bits: 16 (fp16) or 8 (int8)")
      ->check(CLI::IsMember({16, 8}))
      ->capture_default_str();
  cmd->add_option("--target", a->target, "apply this target's rewrite passes first: tflite-gpu, coreml-ane, qnn-npu")
      ->check(CLI::IsMember(kTargets));
  cmd->callback([a, &global] {
    global.action = [a, &global] {
      const auto g = pim::build_pipeline_graph(a->m.dir, a->m.graph);
      core::NetDesc net = g.component(a->component).net;
      if (!a->target.empty()) {
        pim::RewriteStats st;
        net = pim::rewrite_for_target(
            net,
            pim::read_target_profile(fs::path(a->m.profile_dir) / "targets" / (a->target + ".json")),
            {},
            st);
      }
      const auto plan = pim::chunk_net(net, a->opt);
      if (global.json)
        fmt::print("{}\n", pim::chunks_json(net, plan).dump(2));
      else
        fmt::print("{}", pim::format_chunks(net, plan, a->opt));
    };
  });
}

void register_plan(CLI::App* parent, GlobalOptions& global) {
  struct Args {
    ModelArgs m;
    std::string device = "snapdragon-8-gen-2";
    std::string device_file;
    pim::PlanOptions opt;
    bool no_references = false;
    std::string output;
    bool force = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = parent->add_subcommand(
      "plan",
      "peak memory of all-resident, sequential and prefetching schedules and a roofline latency "
      "per component on a device profile, beside the published reference rows; writes a "
      "mobile-plan artifact with -o");
  add_model_options(cmd, a->m);
  add_profile_dir(cmd, a->m);
  cmd->add_option("--device",
                  a->device,
                  "device profile: snapdragon-8-gen-1, snapdragon-8-gen-2 or apple-a16")
      ->check(CLI::IsMember(kDevices))
      ->capture_default_str();
  cmd->add_option("--device-file", a->device_file, "a custom device profile JSON (overrides --device)");
  cmd->add_option("--steps", a->opt.steps, "denoising steps")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  cmd->add_flag("--cfg-distilled",
                a->opt.cfg_distilled,
                "guidance-distilled UNet: one UNet call per step instead of two");
  cmd->add_option("--wbits", a->opt.wbits, "weight bits: 16 (fp16) or 8 (int8); activations fp16")
      ->check(CLI::IsMember({16, 8}))
      ->capture_default_str();
  cmd->add_option("--prune-frac", a->opt.prune_frac, "fraction of UNet conv/linear weights pruned")
      ->check(CLI::Range(0.0, 0.95))
      ->capture_default_str();
  cmd->add_flag("--no-references", a->no_references, "do not print the published reference rows");
  add_output_option(cmd, a->output, a->force, "mobile-plan artifact to write (.h5; optional)");
  cmd->callback([a, &global] {
    global.action = [a, &global] {
      const fs::path dp = !a->device_file.empty()
                              ? fs::path(a->device_file)
                              : fs::path(a->m.profile_dir) / "devices" / (a->device + ".json");
      const fs::path rp = fs::path(a->m.profile_dir) / "reference-rows.json";
      std::vector<std::string> in_files = {dp.string()};
      if (!a->output.empty()) core::check_output_path(a->output, in_files, a->force);
      const auto device = pim::read_device_profile(dp);
      const auto refs = a->no_references ? std::vector<pim::ReferenceRow>{}
                                         : pim::read_reference_rows(rp);
      const auto g = pim::build_pipeline_graph(a->m.dir, a->m.graph);
      const auto p = pim::plan_pipeline(g, device, a->opt, refs);
      if (global.json)
        fmt::print("{}\n", pim::plan_json(p).dump(2));
      else
        fmt::print("{}", pim::format_plan(p));
      if (!a->output.empty()) {
        std::vector<core::InputRef> inputs;
        for (const auto& c : g.components) inputs.push_back({c.config.string(), "file", "", 0});
        inputs.push_back({dp.string(), "file", "", 0});
        pim::write_mobile_plan(a->output, p, global.provenance(inputs));
        log::info("wrote {}", a->output);
      }
    };
  });
}

void register_export(CLI::App* parent, GlobalOptions& global) {
  struct Args {
    ModelArgs m;
    std::string component = "all";
    std::string target = "tflite-gpu";
    pim::DelegateOptions rewrite;
    pim::ChunkOptions chunk;
    std::string weights;
    std::string output;
    bool force = false;
  };
  auto a = std::make_shared<Args>();
  a->chunk.wbits = 16;
  CLI::App* cmd = parent->add_subcommand(
      "export",
      "write the rewritten, chunked graph as ONNX models (one per chunk, fp32; weights from a "
      "diffusers safetensors checkpoint with --weights, else random from --seed; initializers "
      "named after the diffusers parameters) plus manifest.json, into a directory");
  add_model_options(cmd, a->m);
  add_profile_dir(cmd, a->m);
  cmd->add_option("--component", a->component, "component: all, text_encoder, unet, vae_decoder")
      ->check(CLI::IsMember({"all", "text_encoder", "unet", "vae_decoder"}))
      ->capture_default_str();
  cmd->add_option("--target", a->target, "rewrite passes of this target: tflite-gpu or qnn-npu (4-D GroupNorm)")
      ->check(CLI::IsMember({"tflite-gpu", "qnn-npu"}))
      ->capture_default_str();
  cmd->add_option("--gelu", a->rewrite.gelu, "stable GELU replacement: tanh-clamped or sigmoid")
      ->check(CLI::IsMember({"tanh-clamped", "sigmoid"}))
      ->capture_default_str();
  cmd->add_option("--cap-mb", a->chunk.cap_mb, "weight cap per chunk at fp16, MB")
      ->check(CLI::Range(0.001, 1e7))
      ->capture_default_str();
  cmd->add_option("--algo", a->chunk.algo, "chunking: apple-bisect or dp")
      ->check(CLI::IsMember({"apple-bisect", "dp"}))
      ->capture_default_str();
  cmd->add_option("--chunks", a->chunk.chunks, "dp: exactly this many chunks (0: fewest boundary bytes)")
      ->check(CLI::Range(0, 64))
      ->capture_default_str();
  cmd->add_option("--weights",
                  a->weights,
                  "diffusers safetensors weights: a pipeline directory (text_encoder/, unet/, vae/ "
                  "each holding model.safetensors or diffusion_pytorch_model.safetensors, F32/F16/"
                  "BF16, sharded or not), or with one --component its directory or file; every "
                  "missing, extra or mis-shaped tensor exits 3 (default: random weights from --seed)");
  add_output_option(cmd, a->output, a->force, "output directory (ONNX chunks + manifest.json)")
      ->required();
  cmd->callback([a, &global] {
    global.action = [a, &global] {
      const auto target = pim::read_target_profile(fs::path(a->m.profile_dir) / "targets" /
                                                   (a->target + ".json"));
      const auto g = pim::build_pipeline_graph(a->m.dir, a->m.graph);
      KVLAB_THROW_IF(fs::exists(a->output) && !a->force,
                     UsageError,
                     "{} already exists; pass --force to replace it",
                     a->output);
      std::vector<std::pair<std::string, std::vector<pim::OnnxChunk>>> out;
      std::map<std::string, std::string> sources;
      const auto comps = pick(g, a->component);
      // Every checkpoint is located and checked before anything is exported.
      std::vector<std::optional<pim::ComponentWeights>> weights(comps.size());
      if (!a->weights.empty())
        for (std::size_t i = 0; i < comps.size(); ++i) {
          const auto file = pim::find_component_checkpoint(a->weights, comps[i]->component,
                                                           a->component != "all");
          weights[i] = pim::ComponentWeights::open(file, comps[i]->component,
                                                   pim::component_params(comps[i]->net));
          log::info("{}: weights from {}{}", comps[i]->component, weights[i]->source(),
                    weights[i]->ignored() ? fmt::format(" ({} tensor(s) not used by the graph, "
                                                        "e.g. the VAE encoder)",
                                                        weights[i]->ignored())
                                          : std::string());
        }
      for (std::size_t i = 0; i < comps.size(); ++i) {
        const auto* c = comps[i];
        pim::OnnxExportOptions eo;
        eo.seed = global.seed;
        eo.weights = weights[i] ? &*weights[i] : nullptr;
        sources[c->component] =
            weights[i] ? weights[i]->source() : fmt::format("random (seed {})", global.seed);
        pim::RewriteStats st;
        const auto net = pim::rewrite_for_target(c->net, target, a->rewrite, st);
        const auto plan = pim::chunk_net(net, a->chunk);
        out.emplace_back(c->component, pim::export_onnx(net, plan, c->component, eo));
        fmt::print("{}: {} chunk(s):", c->component, plan.chunks.size());
        for (const auto& ch : out.back().second) fmt::print(" {} ({} nodes)", ch.file, ch.nodes);
        fmt::print("\n");
      }
      pim::write_onnx_dir(a->output, out, a->force, sources);
      log::info("wrote {}", a->output);
    };
  });
}

}  // namespace

void register_mobile_plan(CLI::App& app, GlobalOptions& global) {
  CLI::App* cmd = app.add_subcommand(
      "mobile-plan",
      "Plan deploying a latent-diffusion pipeline (SD 1.5/2.1) to phones, as the mobile Stable "
      "Diffusion paper did: graph, delegate, gelu, chunk, plan, export");
  cmd->require_subcommand(1);
  register_graph(cmd, global);
  register_delegate(cmd, global);
  register_gelu(cmd, global);
  register_chunk(cmd, global);
  register_plan(cmd, global);
  register_export(cmd, global);
}

}  // namespace kvlab::cli
