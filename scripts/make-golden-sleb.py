#!/usr/bin/env python3
"""Golden removal order of SLEB's official selection (leapingjagg-dev/SLEB, sleb.py: sleb()) on the
kvlab fixture model, for tests/unit/compress/test_prune.cpp ("kvlab removes the blocks SLEB's
official code removes").

Nothing of SLEB is committed to kvlab. Run it on a checkout of the official repository:

    git clone https://github.com/leapingjagg-dev/SLEB /tmp/SLEB      # or any copy of it
    sed -i 's/torch.device("cuda:0")/torch.device("cpu")/' /tmp/SLEB/sleb.py   # the ONE source edit
    python3 -m venv /tmp/venv-sleb && /tmp/venv-sleb/bin/pip install torch transformers==4.37.2 \
        accelerate==0.26.1 fire safetensors         # SLEB's pinned versions (`datasets` is stubbed)
    /tmp/venv-sleb/bin/python scripts/make-golden-sleb.py --sleb /tmp/SLEB --sleb-commit <sha>

What it does, and every way it departs from `python -m sleb` (docs/prune-blocks.md repeats this):
  * the fixture (data/kjv-byte-llama, bf16) is written as a float32 HF directory, so the reference
    (torch_dtype='auto') and kvlab (--dtype float32) compute in the same precision;
  * sleb.get_trainloaders is replaced by the calibration tokens: the bytes of
    tests/data/sleb/calib.txt (KJV Genesis, part of the fixture's training split), no BOS, cut to
    WINDOWS * SEQLEN tokens; get_loss then scores numel // seqlen = WINDOWS windows, unchanged;
  * model.seqlen (hard-coded 2048 in get_llm) is set to SEQLEN after get_llm returns;
  * sleb.get_loss is wrapped to record each candidate's summed NLL at full precision (the code
    prints only 3 decimals); the values it returns to sleb() are untouched;
  * the one source edit: get_loss is called with device cuda:0 hard-coded; the copy uses cpu.
Everything else (the loop, barriers 1/1, the strict '<' tie rule, block_replace/turn_off) is the
official code as it is.
"""
import argparse
import io
import json
import os
import re
import sys
from contextlib import redirect_stdout

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sleb", required=True, help="checkout of leapingjagg-dev/SLEB (cuda:0 -> cpu in sleb.py)")
    ap.add_argument("--sleb-commit", default="unknown", help="commit of the checkout, recorded in the output")
    ap.add_argument("--seqlen", type=int, default=1024)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--remove", type=int, default=3)
    ap.add_argument("--work", default="/tmp/kvlab-golden-sleb")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests/data/sleb/golden.json"))
    a = ap.parse_args()

    from safetensors.torch import load_file, save_file
    import transformers

    # 1. The fixture as a float32 HF Llama ('llama' in the path: SLEB dispatches on the name).
    src = os.path.join(ROOT, "data/kjv-byte-llama")
    model_dir = os.path.join(a.work, "kjv-byte-llama-f32")
    os.makedirs(model_dir, exist_ok=True)
    w = {k: v.float().contiguous() for k, v in load_file(os.path.join(src, "model.safetensors")).items()}
    save_file(w, os.path.join(model_dir, "model.safetensors"), metadata={"format": "pt"})
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg["torch_dtype"] = "float32"
    cfg["dtype"] = "float32"
    cfg["rope_theta"] = cfg.get("rope_parameters", {}).get("rope_theta", 10000.0)
    json.dump(cfg, open(os.path.join(model_dir, "config.json"), "w"), indent=2)

    # 2. Calibration tokens: bytes of calib.txt, the first windows * seqlen of them.
    text = open(os.path.join(ROOT, "tests/data/sleb/calib.txt"), "rb").read()
    ntok = a.windows * a.seqlen
    assert len(text) >= ntok, f"calib.txt has {len(text)} bytes, need {ntok}"
    ids = torch.tensor(list(text[:ntok]), dtype=torch.long).unsqueeze(0)

    # 3. The official selection, with the substitutions listed above.
    # utils/data_utils imports `datasets` at module level; the monkeypatched get_trainloaders never
    # calls it, so a stub stands in when the package is not installed.
    try:
        import datasets  # noqa: F401
    except ImportError:
        import types
        stub = types.ModuleType("datasets")
        stub.load_dataset = lambda *args, **kw: (_ for _ in ()).throw(RuntimeError("no datasets"))
        sys.modules["datasets"] = stub
    sys.path.insert(0, a.sleb)
    os.chdir(a.work)
    import sleb as S  # noqa: E402  (the official sleb.py)

    assert 'torch.device("cpu")' in open(os.path.join(a.sleb, "sleb.py")).read(), \
        "edit sleb.py: cuda:0 -> cpu (see the docstring)"
    S.get_trainloaders = lambda *args, **kw: S.TokenizerWrapper(ids)
    orig_get_llm = S.get_llm

    def get_llm(name, *args, **kw):
        m = orig_get_llm(name, *args, **kw)
        m.seqlen = a.seqlen
        return m
    S.get_llm = get_llm
    recorded = []
    orig_get_loss = S.get_loss

    def get_loss(*args, **kw):
        v = orig_get_loss(*args, **kw)
        recorded.append(v)
        return v
    S.get_loss = get_loss

    buf = io.StringIO()
    with redirect_stdout(buf):
        S.sleb(model_name=model_dir, num_blocks=cfg["num_hidden_layers"], num_remove_blocks=a.remove,
               early_barrier=1, latter_barrier=1, seed=0, nsamples=128, eval_ppl=False,
               eval_zeroshot=False)
    log = buf.getvalue()
    sys.stderr.write(log)

    # 4. Removal order and per-round losses, paired with the candidates in the order sleb() ran them.
    order = json.loads(re.search(r"Block Removal Order: (\[.*\])", log).group(1))
    rounds, cur = [], None
    k = 0
    for line in log.splitlines():
        if line.startswith("Phase "):
            cur = {}
            rounds.append(cur)
        m = re.match(r"\[Block (\d+) \(Original block (\d+)\) removed\] Loss=", line)
        if m:
            cur[m.group(2)] = recorded[k]
            k += 1
    assert k == len(recorded), (k, len(recorded))
    out = {
        "source": f"leapingjagg-dev/SLEB@{a.sleb_commit} sleb.py sleb(), via scripts/make-golden-sleb.py",
        "model": "data/kjv-byte-llama as float32",
        "calib": "tests/data/sleb/calib.txt bytes, no BOS",
        "tokens": ntok, "seqlen": a.seqlen, "windows": a.windows,
        "num_blocks": cfg["num_hidden_layers"], "num_remove_blocks": a.remove,
        "early_barrier": 1, "latter_barrier": 1,
        "transformers": transformers.__version__, "torch": torch.__version__,
        "removal_order": order,
        "round_losses": rounds,
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(json.dumps({"removal_order": order}))


if __name__ == "__main__":
    main()
