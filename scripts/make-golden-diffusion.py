#!/usr/bin/env python3
"""Golden numbers for `kvlab mobile-plan` (issue 12), made with the PyPI packages.

  params   instantiate every bundled config (data/diffusion/<model>/{text_encoder,unet,vae}) from its
           config.json only (random init, no weights are downloaded) and count parameters the way
           diffusers/transformers report them: sum(p.numel() for p in module.parameters()).
           Writes tests/data/mobile/golden-params.json.

Usage: /tmp/venv-mobile/bin/python scripts/make-golden-diffusion.py params
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


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "params"
    {"params": params}[cmd]()
