#!/usr/bin/env python3
"""Loads a directory written by `kvlab export-hf` with transformers and checks it against the
golden model it came from: every tensor bit-identical to the original checkpoint's, and (when the
golden dir has golden.safetensors) fp32 logits within --tol of the reference logits.

usage: check_hf_export.py EXPORTED_DIR GOLDEN_DIR [--tol 1e-4] [--layers N]
Exit 0 ok, 1 mismatch. Prints one line."""
import argparse
import glob
import os
import sys

import torch
import transformers
from safetensors.torch import load_file

ap = argparse.ArgumentParser()
ap.add_argument("exported")
ap.add_argument("golden")
ap.add_argument("--tol", type=float, default=1e-4)
args = ap.parse_args()

orig = {}
for f in sorted(glob.glob(os.path.join(args.golden, "*.safetensors"))):
    if os.path.basename(f) != "golden.safetensors":
        orig.update(load_file(f))
exp = load_file(os.path.join(args.exported, "model.safetensors"))
if set(orig) != set(exp):
    sys.exit(f"tensor names differ: only original {sorted(set(orig) - set(exp))[:5]}, "
             f"only exported {sorted(set(exp) - set(orig))[:5]}")
for k in orig:
    a, b = orig[k], exp[k]
    if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a.view(torch.uint8) if a.numel() else a,
                                                                   b.view(torch.uint8) if b.numel() else b):
        sys.exit(f"{k}: exported tensor differs ({a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)})")

model = transformers.AutoModelForCausalLM.from_pretrained(args.exported, attn_implementation="eager")
model.eval()
gold = os.path.join(args.golden, "golden.safetensors")
if not os.path.exists(gold):
    print(f"{args.exported}: {len(exp)} tensors bit-identical; loads in transformers "
          f"{transformers.__version__} ({next(model.parameters()).dtype})")
    sys.exit(0)
g = load_file(gold)
with torch.no_grad():
    logits = model.float()(g["input_ids"]).logits
err = (logits - g["logits"]).abs().max().item()
print(f"{args.exported}: {len(exp)} tensors bit-identical; transformers {transformers.__version__} "
      f"logits max |diff| {err:.3g} (tol {args.tol})")
sys.exit(0 if err <= args.tol else 1)
