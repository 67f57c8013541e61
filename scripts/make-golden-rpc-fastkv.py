#!/usr/bin/env python3
"""Golden kept-index sets from the OFFICIAL RPC and FastKV selection functions.

Runs, on fixed seeded random tensors (small shapes with GQA: 4 query heads over 2 KV heads, batch
2, float32):
  - RPCCluster.compress_kv   (github.com/jiwonsong-dev/ReasoningPathCompression, rpc/rpc_utils.py)
  - FastKVCluster.update_kv  (github.com/dongwonjo/FastKV, baselines/fastkv/utils.py)
and writes their inputs and the slots they keep to rpc.h5 and fastkv.h5 in the output directory
(tests/data/kv-official/). The C++ tests (tests/unit/compress/test_rpc.cpp, test_fastkv.cpp) require
kvlab's selection to be identical. Nothing of the official code is copied: this script imports it
from a checkout given on the command line (a read-only export made outside the project).

The kept indices are recovered from the returned key tensors: every random key row is distinct, so
each kept row is matched to the one input slot it equals (exactly).

Usage (python with torch 2.x, transformers (for FastKV's `transformers.cache_utils` import), h5py):
  git -C <rpc mirror> archive HEAD | tar -x -C /tmp/rpc      # or a git clone
  git -C <fastkv mirror> archive HEAD baselines | tar -x -C /tmp/fastkv
  python3 scripts/make-golden-rpc-fastkv.py --rpc-repo /tmp/rpc --fastkv-repo /tmp/fastkv \\
      -o tests/data/kv-official
"""
import argparse
import importlib.util
import os
import subprocess
import sys
import types

import h5py
import numpy as np
import torch


def load_module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def git_head(repo):
    try:
        return subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:
        return "unknown (not a git checkout)"


def match_rows(kept, keys):
    """kept [B, H, N, D] rows of keys [B, H, L, D] -> slot indices [B, H, N] (exact equality)."""
    eq = (kept[:, :, :, None, :] == keys[:, :, None, :, :]).all(-1)  # [B, H, N, L]
    assert bool((eq.sum(-1) == 1).all()), "a kept key row does not match exactly one input slot"
    return eq.to(torch.int64).argmax(-1)


def rpc_cases(rpc_repo, out, commit):
    # rpc_utils imports flash_attn at module top (used only by the attention classes): stub it.
    sys.modules.setdefault("flash_attn", types.SimpleNamespace(flash_attn_func=None))
    mod = load_module("official_rpc_utils", os.path.join(rpc_repo, "rpc", "rpc_utils.py"))
    B, HKV, G, D = 2, 2, 2, 16
    H = HKV * G
    P, R, C = 16, 4, 4
    T = int(P / C)
    prompt = 5
    gen = torch.Generator().manual_seed(20250513)
    with h5py.File(os.path.join(out, "rpc.h5"), "w") as f:
        f.attrs["source"] = "RPCCluster.compress_kv, github.com/jiwonsong-dev/ReasoningPathCompression"
        f.attrs["source_commit"] = commit
        f.attrs["made_by"] = "scripts/make-golden-rpc-fastkv.py"
        f.attrs["P"], f.attrs["R"], f.attrs["c"], f.attrs["T"] = P, R, C, T
        f.attrs["prompt_len"] = prompt
        ci = 0
        for num_comp in (0, 2):
            L = prompt + num_comp * T + P + R
            keys = torch.randn(B, HKV, L, D, generator=gen)
            values = torch.randn(B, HKV, L, D, generator=gen)
            # One query per decode step since the prefill (only the last R matter).
            nq = L - prompt
            queries = torch.randn(B, H, nq, D, generator=gen)
            grp = f.create_group(f"input_{num_comp}")
            grp.create_dataset("keys", data=keys.numpy())
            grp.create_dataset("queries", data=queries.numpy())
            grp.attrs["num_comp"] = num_comp
            for aggregation in ("all", "group"):
                for pooling in ("avgpool", "maxpool"):
                    for duplicate in (1, 0):
                        cl = mod.RPCCluster(layer_idx=0, P=P, R=R, c=C, selectors="recent",
                                            aggregation=aggregation, kernel_size=7,
                                            pooling=pooling, num_key_value_groups=G)
                        cl.prompt_len = prompt
                        cl.num_comp = num_comp
                        cur = queries[:, :, -1:, :]
                        if duplicate:
                            # What qwen2_custom.py caches: the R-1 queries with target_length >
                            # P - R, the current (trigger) one among them; compress_kv then
                            # appends the current query again.
                            cl.cached_recent = queries[:, :, -(R - 1):, :].clone()
                        else:
                            # kvlab's fix: the R most recent queries, each once.
                            cl.cached_recent = queries[:, :, -R:-1, :].clone()
                        selectors = torch.cat([cl.cached_recent, cur], dim=-2)
                        k2, _ = cl.compress_kv(keys, values, cur)
                        keep = (num_comp + 1) * T
                        assert k2.shape[2] == prompt + keep + R
                        assert torch.equal(k2[:, :, :prompt], keys[:, :, :prompt])
                        assert torch.equal(k2[:, :, -R:], keys[:, :, -R:])
                        region = keys[:, :, prompt:L - R]
                        kept = match_rows(k2[:, :, prompt:prompt + keep], region)
                        g = f.create_group(f"case_{ci:02d}")
                        g.attrs["input"] = f"input_{num_comp}"
                        g.attrs["aggregation_group"] = int(aggregation == "group")
                        g.attrs["pooling_max"] = int(pooling == "maxpool")
                        g.attrs["duplicate_current_query"] = duplicate
                        g.attrs["num_comp"] = num_comp
                        g.attrs["keep"] = keep
                        g.create_dataset("selectors", data=selectors.numpy())
                        g.create_dataset("kept", data=kept.numpy())  # into [prompt, L - R)
                        ci += 1
    return ci


def fastkv_cases(fastkv_repo, out, commit):
    mod = load_module("official_fastkv_utils",
                      os.path.join(fastkv_repo, "baselines", "fastkv", "utils.py"))
    B, HKV, G, D, L, W = 2, 2, 2, 16, 48, 8
    H = HKV * G
    gen = torch.Generator().manual_seed(20250203)
    keys = torch.randn(B, HKV, L, D, generator=gen)
    values = torch.randn(B, HKV, L, D, generator=gen)
    queries = torch.randn(B, H, L, D, generator=gen)
    # (mode, retain_rate, tsp_rate, max_capacity_prompt, tsp_len, tsp_layer, pooling, after_tsp)
    cases = [
        ("proportional", 0.25, 0.5, 512, 2048, True, "maxpool", False),
        ("proportional", 0.25, 0.5, 512, 2048, True, "avgpool", False),
        ("proportional", 0.25, 0.5, 512, 2048, False, "maxpool", False),
        ("proportional", 0.25, 0.5, 512, 2048, False, "avgpool", True),
        ("constant", 0.1, 0.2, 20, 30, True, "maxpool", False),
        ("constant", 0.1, 0.2, 20, 30, True, "avgpool", False),
        ("constant", 0.1, 0.2, 64, 30, True, "maxpool", False),  # L < budget: no compression
        ("constant", 0.1, 0.2, 20, 2048, True, "maxpool", False),  # L <= tsp_len: no TSP
    ]
    with h5py.File(os.path.join(out, "fastkv.h5"), "w") as f:
        f.attrs["source"] = "FastKVCluster.update_kv, github.com/dongwonjo/FastKV"
        f.attrs["source_commit"] = commit
        f.attrs["made_by"] = "scripts/make-golden-rpc-fastkv.py"
        f.attrs["window"] = W
        f.attrs["kernel_size"] = 7
        f.create_dataset("keys", data=keys.numpy())
        f.create_dataset("queries", data=queries.numpy())
        for ci, (mode, rr, tr, cap, tl, tsp_layer, pooling, after) in enumerate(cases):
            cl = mod.FastKVCluster(window_size=W, max_capacity_prompt=cap, kernel_size=7,
                                   pooling=pooling, tsp_layer=tsp_layer, tsp_length=tl,
                                   tsp_rate=tr, retain_rate=rr, eviction_mode=mode)
            if after:  # compress_fastkv: layers after the TSP layer use retain_rate / tsp_rate
                cl.retain_rate = rr / tr
            k2, _, tsp = cl.update_kv(keys, queries, values, None, G, 0)
            g = f.create_group(f"case_{ci:02d}")
            g.attrs["proportional"] = int(mode == "proportional")
            g.attrs["retain_rate"] = rr
            g.attrs["tsp_rate"] = tr
            g.attrs["max_capacity"] = cap
            g.attrs["tsp_length_option"] = tl
            g.attrs["tsp_layer"] = int(tsp_layer)
            g.attrs["after_tsp"] = int(after)
            g.attrs["pooling_max"] = int(pooling == "maxpool")
            # The budget and TSP length the official code used (after update_kv set them).
            g.attrs["budget"] = int(cl.max_capacity_prompt)
            g.attrs["tsp_length"] = int(cl.tsp_length) if tsp_layer else 0
            compressed = k2.shape[2] != L or not torch.equal(k2, keys)
            g.attrs["compressed"] = int(compressed)
            if compressed:
                g.create_dataset("kept", data=match_rows(k2, keys).numpy())  # official order
            g.attrs["has_tsp"] = int(tsp is not None)
            if tsp is not None:
                g.create_dataset("tsp", data=tsp.numpy())
    return len(cases)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rpc-repo", required=True, help="checkout of ReasoningPathCompression")
    ap.add_argument("--fastkv-repo", required=True, help="checkout of FastKV")
    ap.add_argument("--rpc-commit", default=None, help="commit of the RPC checkout (if not git)")
    ap.add_argument("--fastkv-commit", default=None, help="commit of the FastKV checkout")
    ap.add_argument("-o", "--output", required=True, help="output directory")
    a = ap.parse_args()
    os.makedirs(a.output, exist_ok=True)
    torch.set_grad_enabled(False)
    n1 = rpc_cases(a.rpc_repo, a.output, a.rpc_commit or git_head(a.rpc_repo))
    n2 = fastkv_cases(a.fastkv_repo, a.output, a.fastkv_commit or git_head(a.fastkv_repo))
    print(f"wrote {n1} RPC cases and {n2} FastKV cases to {a.output} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
