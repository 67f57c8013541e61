#!/usr/bin/env python3
"""Loads a directory written by `kvlab export-hf` with transformers and checks it against the
golden model it came from: every tensor bit-identical to the original checkpoint's, and (when the
golden dir has golden.safetensors) fp32 logits within --tol of the reference logits.

usage: check_hf_export.py EXPORTED_DIR GOLDEN_DIR [EXPORTED_DIR GOLDEN_DIR ...] [--tol 1e-4]
(several pairs in one run, so transformers is imported once). Exit 0 ok, 1 mismatch. Prints one
line per pair."""
import argparse
import glob
import os
import sys

import torch
import transformers
from safetensors.torch import load_file

ap = argparse.ArgumentParser()
ap.add_argument("pairs", nargs="+", help="EXPORTED_DIR GOLDEN_DIR pairs")
ap.add_argument("--tol", type=float, default=1e-4)
cli = ap.parse_args()
if len(cli.pairs) % 2:
    sys.exit("give EXPORTED_DIR GOLDEN_DIR pairs")


def check(exported, golden, tol):
    orig = {}
    for f in sorted(glob.glob(os.path.join(golden, "*.safetensors"))):
        if os.path.basename(f) != "golden.safetensors":
            orig.update(load_file(f))
    exp = load_file(os.path.join(exported, "model.safetensors"))
    if set(orig) != set(exp):
        print(f"{exported}: tensor names differ: only original {sorted(set(orig) - set(exp))[:5]}, "
              f"only exported {sorted(set(exp) - set(orig))[:5]}")
        return False
    for k in orig:
        a, b = orig[k], exp[k]
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a.view(torch.uint8) if a.numel() else a,
                                                                       b.view(torch.uint8) if b.numel() else b):
            print(f"{exported}: {k}: exported tensor differs ({a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)})")
            return False

    model = transformers.AutoModelForCausalLM.from_pretrained(exported, attn_implementation="eager")
    model.eval()
    gold = os.path.join(golden, "golden.safetensors")
    if not os.path.exists(gold):
        print(f"{exported}: {len(exp)} tensors bit-identical; loads in transformers "
              f"{transformers.__version__} ({next(model.parameters()).dtype})")
        return True
    g = load_file(gold)
    with torch.no_grad():
        logits = model.float()(g["input_ids"]).logits
    err = (logits - g["logits"]).abs().max().item()
    print(f"{exported}: {len(exp)} tensors bit-identical; transformers {transformers.__version__} "
          f"logits max |diff| {err:.3g} (tol {tol})")
    return err <= tol


ok = all([check(cli.pairs[i], cli.pairs[i + 1], cli.tol) for i in range(0, len(cli.pairs), 2)])
sys.exit(0 if ok else 1)
