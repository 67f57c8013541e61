#!/usr/bin/env python3
"""Golden numbers for `kvlab mobile-plan` (issue 12), made with the PyPI packages.

  params   instantiate every bundled config (data/diffusion/<model>/{text_encoder,unet,vae}) from its
           config.json only (random init, no weights are downloaded) and count parameters the way
           diffusers/transformers report them: sum(p.numel() for p in module.parameters()).
           Writes tests/data/mobile/golden-params.json.

  onnx KVLAB
           the ONNX round trip on the tiny config (run by hand: CI has no onnxruntime): runs
           `KVLAB mobile-plan export data/diffusion/tiny` (random fp32 weights named after the
           diffusers parameters, several chunks per component), loads those weights into the
           diffusers/transformers models, runs the exported chunks in sequence with onnxruntime
           and compares with the unrewritten models' outputs. Writes
           tests/data/mobile/onnx-roundtrip.json (the max differences).

  param-shapes
           every parameter's name and shape as the diffusers/transformers modules hold them
           (instantiated on the meta device: nothing allocated), per bundled model and component
           (text encoder without the "text_model." prefix; vae_decoder = decoder.* +
           post_quant_conv.*): what `mobile-plan export --weights` expects of a checkpoint.
           Writes tests/data/mobile/golden-param-shapes.json.

  checkpoint
           the committed round-trip pipeline tests/data/mobile/roundtrip/ (run by hand; CI only
           reads it): a micro diffusers pipeline (the tiny configs with narrower UNet and VAE)
           with random weights, saved by diffusers/transformers save_pretrained as a real
           pipeline directory: {text_encoder,unet,vae}/config.json + model.safetensors (BF16) /
           diffusion_pytorch_model.safetensors (UNet F16, VAE F32), and reference.npz: fixed
           inputs and the models' own outputs on them, computed in fp32 from the weights as stored
           ("<c>.out" with the models' erf GELU, "<c>.out_tanh" with GELU(approximate='tanh')).
           scripts/check-onnx-roundtrip.py (onnxruntime + numpy, in CI) compares
           `kvlab mobile-plan export --weights` with it.

Usage: /tmp/venv-mobile/bin/python scripts/make-golden-diffusion.py params
       /tmp/venv-mobile/bin/python scripts/make-golden-diffusion.py param-shapes
       /tmp/venv-mobile/bin/python scripts/make-golden-diffusion.py onnx build/bin/kvlab
       /tmp/venv-mobile/bin/python scripts/make-golden-diffusion.py checkpoint
(the venv: python3 -m venv /tmp/venv-mobile, a .pth pointing at a torch+transformers venv,
 pip install diffusers onnxruntime onnx)
"""
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "diffusion"
OUT = ROOT / "tests" / "data" / "mobile"


def count(module):
    return int(sum(p.numel() for p in module.parameters()))


def load_models(model_dir):
    import diffusers
    import transformers
    te_cfg = transformers.CLIPTextConfig.from_json_file(str(model_dir / "text_encoder" / "config.json"))
    te = transformers.CLIPTextModel(te_cfg)
    unet = diffusers.UNet2DConditionModel.from_config(
        diffusers.UNet2DConditionModel.load_config(str(model_dir / "unet")))
    vae = diffusers.AutoencoderKL.from_config(
        diffusers.AutoencoderKL.load_config(str(model_dir / "vae")))
    return te, unet, vae


def params():
    import diffusers
    import torch
    import transformers
    torch.manual_seed(0)
    out = {"made_by": "scripts/make-golden-diffusion.py params",
           "diffusers": diffusers.__version__, "transformers": transformers.__version__,
           "torch": torch.__version__, "models": {}}
    for model_dir in sorted(p for p in DATA.iterdir() if p.is_dir()):
        te, unet, vae = load_models(model_dir)
        decoder = count(vae.decoder) + (count(vae.post_quant_conv) if vae.post_quant_conv is not None else 0)
        out["models"][model_dir.name] = {
            "text_encoder": count(te),
            "unet": count(unet),
            "vae_decoder": decoder,  # decoder + post_quant_conv: what mobile-plan's vae_decoder holds
            "vae_total": count(vae),
            "unet_children": {n: count(m) for n, m in unet.named_children()},
        }
        print(model_dir.name, {k: v for k, v in out["models"][model_dir.name].items() if k != "unet_children"})
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "golden-params.json").write_text(json.dumps(out, indent=1) + "\n")


def param_shapes():
    import diffusers
    import torch
    import transformers
    out = {"made_by": "scripts/make-golden-diffusion.py param-shapes",
           "diffusers": diffusers.__version__, "transformers": transformers.__version__, "models": {}}
    for model_dir in sorted(p for p in DATA.iterdir() if p.is_dir()):
        with torch.device("meta"):
            te, unet, vae = load_models(model_dir)
        out["models"][model_dir.name] = {
            "text_encoder": {k[len("text_model."):] if k.startswith("text_model.") else k: list(v.shape)
                             for k, v in te.named_parameters()},
            "unet": {k: list(v.shape) for k, v in unet.named_parameters()},
            "vae_decoder": {k: list(v.shape) for k, v in vae.named_parameters()
                            if k.startswith("decoder.") or k.startswith("post_quant_conv.")}}
        print(model_dir.name, {k: len(v) for k, v in out["models"][model_dir.name].items()})
    (OUT / "golden-param-shapes.json").write_text(json.dumps(out, separators=(",", ":")) + "\n")


def state_dict_from_onnx(models):
    """diffusers/transformers state dict from the exported initializers (see mobile_onnx.hpp)."""
    import numpy as np
    from onnx import numpy_helper
    sd, halves = {}, {}
    for m in models:
        for t in m.graph.initializer:
            if t.name.startswith("const/"):
                continue
            a = numpy_helper.to_array(t)
            name = t.name
            if name.endswith(".weight_t"):
                base, a = name[: -len(".weight_t")], a.T
                kind = "weight"
            else:
                base, kind = name.rsplit(".", 1)
            if base.endswith(".value") or base.endswith(".gate"):
                proj, half = base.rsplit(".", 1)
                halves.setdefault((proj, kind), {})[half] = a
                continue
            if a.ndim == 3 and a.shape[-1] == 1:  # 4-D GroupNorm affine [G, C/G, 1]
                a = a.reshape(-1)
            sd[base + "." + kind] = a
    for (proj, kind), h in halves.items():  # GEGLU: value rows first, then gate rows
        sd[proj + "." + kind] = np.concatenate([h["value"], h["gate"]], axis=0)
    return sd


def run_chunks(sessions, manifest_chunks, feeds):
    env = dict(feeds)
    for sess, c in zip(sessions, manifest_chunks):
        outs = sess.run(c["outputs"], {k: env[k] for k in c["inputs"]})
        env.update(zip(c["outputs"], outs))
    return env


def onnx_roundtrip(kvlab):
    import subprocess
    import tempfile
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    tiny = DATA / "tiny"
    out = pathlib.Path(tempfile.mkdtemp()) / "tiny-onnx"
    subprocess.run([kvlab, "--seed", "7", "mobile-plan", "export", str(tiny), "--profile-dir",
                    str(ROOT / "data" / "mobile"), "--cap-mb", "0.2", "-o", str(out)], check=True)
    manifest = json.loads((out / "manifest.json").read_text())
    te, unet, vae = load_models(tiny)
    torch.manual_seed(0)
    result = {"made_by": "scripts/make-golden-diffusion.py onnx", "onnxruntime": ort.__version__,
              "exporter": kvlab, "cap_mb": 0.2, "seed": 7,
              "note": "exported graph uses the stable GELU (tanh, z clamped to +-5); 'exact' compares "
                      "with the unrewritten erf-GELU models, 'tanh' with GELU(approximate='tanh')",
              "components": {}}
    for comp, model in (("text_encoder", te), ("unet", unet), ("vae_decoder", vae)):
        chunks = manifest["components"][comp]
        models = [onnx.load(str(out / c["file"])) for c in chunks]
        for m in models:
            onnx.checker.check_model(m)
        sd = state_dict_from_onnx(models)
        if comp == "text_encoder":  # transformers 4.x prefixes "text_model."; match the model's keys
            prefix = "text_model." if any(k.startswith("text_model.") for k in model.state_dict()) else ""
            sd = {prefix + k: v for k, v in sd.items()}
        missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, strict=False)
        assert not unexpected, unexpected
        if comp == "vae_decoder":
            missing = [k for k in missing if not (k.startswith("encoder.") or k.startswith("quant_conv."))]
        assert not missing, missing
        model.eval()
        sessions = [ort.InferenceSession(str(out / c["file"]), providers=["CPUExecutionProvider"]) for c in chunks]
        with torch.no_grad():
            if comp == "text_encoder":
                ids = torch.randint(0, te.config.vocab_size, (1, te.config.max_position_embeddings))
                ref = lambda: model(ids).last_hidden_state
                feeds = {"input_ids": ids.numpy()}
                last = "final_layer_norm"
            elif comp == "unet":
                lat = unet.config.sample_size
                sample = torch.randn(1, unet.config.in_channels, lat, lat)
                ctx = torch.randn(1, te.config.max_position_embeddings, te.config.hidden_size)
                t = torch.tensor([500])
                ref = lambda: model(sample, t, encoder_hidden_states=ctx).sample
                feeds = {"sample": sample.numpy(), "encoder_hidden_states": ctx.numpy(),
                         "time_proj": model.time_proj(t).numpy()}
                last = "conv_out"
            else:
                lat = vae.config.sample_size // 2 ** (len(vae.config.block_out_channels) - 1)
                z = torch.randn(1, vae.config.latent_channels, lat, lat)
                ref = lambda: model.decode(z).sample
                feeds = {"latent": z.numpy()}
                last = "decoder.conv_out"
            exact = ref().numpy()
            gelus = [m for m in model.modules() if m.__class__.__name__ in ("GELU", "GEGLU")]
            for m in model.modules():  # the tanh form: torch's GELU(approximate='tanh')
                if m.__class__.__name__ == "GEGLU":
                    m.gelu = lambda g: torch.nn.functional.gelu(g, approximate="tanh")
            if comp == "text_encoder":
                import transformers.activations as A
                for layer in (model.text_model if hasattr(model, "text_model") else model).encoder.layers:
                    if isinstance(layer.mlp.activation_fn, A.GELUActivation):
                        layer.mlp.activation_fn = A.NewGELUActivation()
            tanh = ref().numpy()
        env = run_chunks(sessions, chunks, feeds)
        got = env[last]
        result["components"][comp] = {
            "chunks": len(chunks), "nodes": sum(c["nodes"] for c in chunks),
            "max_abs_ref": float(np.abs(exact).max()),
            "max_abs_diff_exact": float(np.abs(got - exact).max()),
            "max_abs_diff_tanh": float(np.abs(got - tanh).max()),
            "gelu_modules": len(gelus)}
        print(comp, result["components"][comp])
    (OUT / "onnx-roundtrip.json").write_text(json.dumps(result, indent=1) + "\n")


def set_gelu_tanh(comp, model):
    """Switches a model's GELUs to GELU(approximate='tanh'), the form mobile-plan's export uses
    (its z is clamped to +-5, which changes nothing at fp32 for these inputs)."""
    import torch
    for m in model.modules():
        if m.__class__.__name__ == "GEGLU":
            m.gelu = lambda g: torch.nn.functional.gelu(g, approximate="tanh")
    if comp == "text_encoder":
        import transformers.activations as A
        for layer in (model.text_model if hasattr(model, "text_model") else model).encoder.layers:
            if isinstance(layer.mlp.activation_fn, A.GELUActivation):
                layer.mlp.activation_fn = A.NewGELUActivation()


def checkpoint():
    """The micro round-trip pipeline with weights, and the reference outputs (see the doc string)."""
    import shutil
    import diffusers
    import numpy as np
    import torch
    import transformers
    out = OUT / "roundtrip"
    tiny = DATA / "tiny"
    te_cfg = json.loads((tiny / "text_encoder" / "config.json").read_text())
    unet_cfg = json.loads((tiny / "unet" / "config.json").read_text())
    vae_cfg = json.loads((tiny / "vae" / "config.json").read_text())
    # Narrower than data/diffusion/tiny so that the three checkpoints stay near 1 MB.
    unet_cfg.update(block_out_channels=[16, 32], attention_head_dim=[2, 4], norm_num_groups=8)
    vae_cfg.update(block_out_channels=[16, 16], norm_num_groups=8)
    torch.manual_seed(0)
    te = transformers.CLIPTextModel(transformers.CLIPTextConfig(**te_cfg))
    unet = diffusers.UNet2DConditionModel.from_config(unet_cfg)
    vae = diffusers.AutoencoderKL.from_config(vae_cfg)
    # Random values for every parameter, norm affines included (their defaults, 1 and 0, would
    # not show a misplaced affine).
    with torch.no_grad():
        for model in (te, unet, vae):
            for name, p in model.named_parameters():
                if "norm" in name and name.endswith(".weight") and p.ndim == 1:
                    p.copy_(1 + 0.2 * torch.randn_like(p))
                elif p.ndim == 1:
                    p.copy_(0.2 * torch.randn_like(p))
                else:
                    fan_in = p[0].numel()
                    p.copy_(torch.randn_like(p) / fan_in ** 0.5)
    if out.exists():
        shutil.rmtree(out)
    te.to(torch.bfloat16).save_pretrained(out / "text_encoder", safe_serialization=True)
    unet.to(torch.float16).save_pretrained(out / "unet", safe_serialization=True)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    # Reload as stored (rounded to BF16/F16), in fp32, and compute the references.
    te = transformers.CLIPTextModel.from_pretrained(out / "text_encoder", dtype=torch.float32).eval()
    unet = diffusers.UNet2DConditionModel.from_pretrained(out / "unet", torch_dtype=torch.float32).eval()
    vae = diffusers.AutoencoderKL.from_pretrained(out / "vae", torch_dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(1)
    t_len = te.config.max_position_embeddings
    ids = torch.randint(0, te.config.vocab_size, (1, t_len), generator=g)
    lat = unet.config.sample_size
    sample = torch.randn(1, unet.config.in_channels, lat, lat, generator=g)
    ctx = torch.randn(1, t_len, te.config.hidden_size, generator=g)
    t = torch.tensor([500])
    z = torch.randn(1, vae.config.latent_channels, lat, lat, generator=g)
    ref = {"text_encoder.input_ids": ids.numpy().astype(np.int64),
           "unet.sample": sample.numpy(), "unet.encoder_hidden_states": ctx.numpy(),
           "unet.time_proj": unet.time_proj(t).numpy(), "vae_decoder.latent": z.numpy()}
    runs = {"text_encoder": (te, lambda m: m(ids).last_hidden_state),
            "unet": (unet, lambda m: m(sample, t, encoder_hidden_states=ctx).sample),
            "vae_decoder": (vae, lambda m: m.decode(z).sample)}
    with torch.no_grad():
        for comp, (model, fn) in runs.items():
            ref[comp + ".out"] = fn(model).numpy()
            set_gelu_tanh(comp, model)
            ref[comp + ".out_tanh"] = fn(model).numpy()
            print(comp, "max |out|", float(np.abs(ref[comp + ".out"]).max()),
                  "erf vs tanh", float(np.abs(ref[comp + ".out"] - ref[comp + ".out_tanh"]).max()))
    np.savez_compressed(out / "reference.npz", **{k: v.astype(np.float32) if v.dtype == np.float64 else v
                                                  for k, v in ref.items()})
    (out / "made-by.json").write_text(json.dumps({
        "made_by": "scripts/make-golden-diffusion.py checkpoint", "diffusers": diffusers.__version__,
        "transformers": transformers.__version__, "torch": torch.__version__,
        "dtypes": {"text_encoder": "BF16", "unet": "F16", "vae": "F32"},
        "params": {"text_encoder": count(te), "unet": count(unet), "vae_total": count(vae),
                   "vae_decoder": count(vae.decoder) + count(vae.post_quant_conv)}}, indent=1) + "\n")
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({total} bytes)")


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "params"
    if cmd == "onnx":
        onnx_roundtrip(sys.argv[2])
    else:
        {"params": params, "param-shapes": param_shapes, "checkpoint": checkpoint}[cmd]()
