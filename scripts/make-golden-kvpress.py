#!/usr/bin/env python3
"""Golden kept-index sets from NVIDIA kvpress for tests/unit/compress/test_kvpress_golden.cpp.

A random tiny Llama with GQA (fp32, seed 0) is saved as an HF directory next to the goldens; for
each press, one prefill of a fixed random prompt runs under kvpress and the kept entries of every
layer and KV head are recovered by matching the compressed cache's keys against the full cache's
(exact fp32 equality). kvlab's C++ test runs its own methods on the same weights and prompt and
compares the index SETS (kvpress leaves the cache in score order; kvlab keeps position order).

Run in a venv with kvpress (the project never imports it):
  python3 -m venv /tmp/venv-kvpress && echo /tmp/venv-golden/lib/python3.11/site-packages \\
      > /tmp/venv-kvpress/lib/python3.11/site-packages/golden.pth
  /tmp/venv-kvpress/bin/pip install kvpress cachetools datasets
  /tmp/venv-kvpress/bin/python scripts/make-golden-kvpress.py --out tests/data/kvpress
"""
import argparse
import importlib.metadata
import json
import os

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

import kvpress
from kvpress import KnormPress, PyramidKVPress, SnapKVPress, StreamingLLMPress, TOVAPress


def kept_indices(full_keys, kept_keys):
    """For every KV head, the indices into full_keys [1, H, L, D] of the rows of kept_keys."""
    out = []
    for h in range(full_keys.shape[1]):
        f, k = full_keys[0, h], kept_keys[0, h]
        eq = (k[:, None, :] == f[None, :, :]).all(-1)  # [n_kept, L], exact fp32 equality
        assert torch.all(eq.sum(-1) == 1), "a kept key matches no (or several) original keys exactly"
        idx = eq.int().argmax(-1)
        assert len(set(idx.tolist())) == len(idx), "duplicate matches"
        out.append(sorted(idx.tolist()))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/data/kvpress")
    ap.add_argument("--length", type=int, default=96)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256, max_position_embeddings=512,
                      rope_theta=10000.0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval().to(torch.float32)
    # Larger random weights than the default init (std 0.02) so attention is far from uniform and
    # the scores have no near-ties.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" not in n:
                p.normal_(0.0, 0.2)
    mdir = os.path.join(args.out, "tiny-llama")
    model.save_pretrained(mdir, safe_serialization=True)
    ids = torch.randint(3, 256, (1, args.length), generator=torch.Generator().manual_seed(1))

    with torch.no_grad():
        full = DynamicCache()
        model.model(input_ids=ids, past_key_values=full)
        full_keys = [full.layers[i].keys.clone() for i in range(cfg.num_hidden_layers)]

    presses = {
        "snapkv": [SnapKVPress(compression_ratio=r, window_size=16, kernel_size=5) for r in (0.5, 0.75)],
        "pyramidkv": [PyramidKVPress(compression_ratio=r, window_size=16, kernel_size=5, beta=20) for r in (0.5,)],
        "streaming": [StreamingLLMPress(compression_ratio=r, n_sink=4) for r in (0.5, 0.75)],
        "tova": [TOVAPress(compression_ratio=r) for r in (0.5, 0.75)],
        "knorm": [KnormPress(compression_ratio=r) for r in (0.5, 0.75)],
    }
    cases = []
    for name, plist in presses.items():
        for press in plist:
            cache = DynamicCache()
            with torch.no_grad(), press(model):
                model.model(input_ids=ids, past_key_values=cache)
            layers = [kept_indices(full_keys[i], cache.layers[i].keys) for i in range(cfg.num_hidden_layers)]
            opts = {k: v for k, v in vars(press).items() if isinstance(v, (int, float, str, bool))}
            cases.append({"method": name, "compression_ratio": press.compression_ratio,
                          "options": opts, "kept": layers})
    with open(os.path.join(args.out, "golden.json"), "w") as f:
        json.dump({"kvpress_version": importlib.metadata.version("kvpress"),
                   "transformers_version": __import__("transformers").__version__,
                   "torch_version": torch.__version__, "input_ids": ids[0].tolist(), "cases": cases}, f)
    print("wrote", len(cases), "cases")


if __name__ == "__main__":
    main()
