#!/usr/bin/env python3
"""Measures the testbed model (docs/testbed.md) in kvlab and in transformers on the same data.

  perplexity: held-out KJV text (data/kjv-byte-llama/heldout.txt), kvlab eval's protocol
              (non-overlapping windows of --seq-len tokens, no BOS, mean NLL of seq_len-1
              predictions per window, first --windows windows);
  pass keys:  the fixture's prompt format (data/README.md) with held-out KJV filler: the key sentence
              at a random depth, the question at the end; a trial is correct when the greedy
              continuation (8 new tokens) starts with the 5 digits. --passkeys trials per context
              length (1k/2k/4k tokens), identical prompts for both runtimes.

kvlab side: `kvlab eval --json` and `kvlab generate --json` on the imported artifact (text in; the
model's own tokenizer). transformers side: AutoModelForCausalLM/AutoTokenizer loaded from the same
GGUF (transformers dequantises it; needs the `gguf` package), float32, eager attention.

  python3 scripts/testbed-compare.py --kvlab build/bin/kvlab --model smollm2.h5 \
      --gguf ~/.cache/kvlab/testbed/SmolLM2-135M-Instruct.Q4_1.gguf [--no-hf] > results.json
"""
import argparse
import json
import math
import os
import random
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def passkey_prompts(tok_len, filler, n, length, rng):
    """Prompts of about `length` tokens (measured with tok_len) with a key at a random depth."""
    out = []
    for _ in range(n):
        key = "%05d" % rng.randrange(100000)
        needle = f" The pass key is {key}. Remember it. {key} is the pass key. "
        q = "\nWhat is the pass key? The pass key is "
        # grow the haystack (whole words) until the prompt reaches `length` tokens
        start = rng.randrange(0, len(filler) - 8 * length)
        nchar = 3 * length
        while True:
            hay = filler[start:start + nchar]
            hay = hay[: hay.rfind(" ")]
            depth = rng.randint(0, len(hay))
            depth = hay.rfind(" ", 0, depth) if depth else 0
            text = hay[:max(depth, 0)] + needle + hay[max(depth, 0):] + q
            t = tok_len(text)
            if t >= length or nchar > 7 * length:
                break
            nchar = int(nchar * length / max(t, 1)) + 16
        while tok_len(text) > length and len(hay) > 100:  # trim to at most `length` tokens
            hay = hay[: hay.rfind(" ", 0, len(hay) - 20)]
            d = min(max(depth, 0), len(hay))
            text = hay[:d] + needle + hay[d:] + q
        out.append((text, key))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kvlab", required=True)
    ap.add_argument("--model", required=True, help="kvlab model artifact (import-gguf output)")
    ap.add_argument("--gguf", required=True, help="the GGUF it was imported from")
    ap.add_argument("--heldout", default=os.path.join(HERE, "..", "data", "kjv-byte-llama", "heldout.txt"))
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--windows", type=int, default=20)
    ap.add_argument("--passkeys", type=int, default=10)
    ap.add_argument("--lengths", default="1024,2048,4096")
    ap.add_argument("--no-hf", action="store_true", help="kvlab only")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    res = {"model": a.model, "gguf": os.path.basename(a.gguf), "seq_len": a.seq_len, "windows": a.windows}
    text = open(a.heldout, encoding="utf-8").read()
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))

    def kv(*args):
        r = subprocess.run([a.kvlab, "--json", "--progress", "none", "--threads", str(a.threads), *args],
                           capture_output=True, text=True, env=env)
        if r.returncode:
            sys.exit(f"kvlab {' '.join(args[:2])} failed ({r.returncode}): {r.stderr[-2000:]}")
        return json.loads(r.stdout)

    t0 = time.time()
    e = kv("eval", a.model, "--data", a.heldout, "--seq-len", str(a.seq_len), "--max-windows", str(a.windows),
           "--dtype", "float32")
    res["kvlab_ppl"] = e["ppl"]
    res["kvlab_ppl_ci"] = [e["ppl_ci_low"], e["ppl_ci_high"]]
    res["kvlab_eval_seconds"] = time.time() - t0
    print(f"kvlab ppl {e['ppl']:.4f}", file=sys.stderr)

    hf = None
    if not a.no_hf:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        torch.set_num_threads(a.threads)
        d, f = os.path.dirname(os.path.abspath(a.gguf)), os.path.basename(a.gguf)
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        hf = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32, attn_implementation="eager")
        hf.eval()
        ids = tok(text, add_special_tokens=False).input_ids
        losses = []
        with torch.no_grad():
            for w in range(min(a.windows, len(ids) // a.seq_len)):
                x = torch.tensor([ids[w * a.seq_len:(w + 1) * a.seq_len]])
                lg = hf(x).logits.float()
                losses.append(torch.nn.functional.cross_entropy(lg[0, :-1], x[0, 1:]).item())
        m = sum(losses) / len(losses)
        res["hf_ppl"] = math.exp(m)
        print(f"transformers ppl {res['hf_ppl']:.4f}", file=sys.stderr)
        tok_len = lambda s: len(tok(s, add_special_tokens=True).input_ids)
    else:
        tok_len = lambda s: len(s) // 4

    rng = random.Random(7)
    res["passkey"] = {}
    for length in [int(x) for x in a.lengths.split(",")]:
        prompts = passkey_prompts(tok_len, text, a.passkeys, length, rng)
        ok_kv = ok_hf = 0
        ntok = []
        for p, key in prompts:
            g = kv("generate", a.model, "--prompt", p, "-n", "8", "--dtype", "float32")
            out = g["outputs"][0]["text"]
            ok_kv += out.strip().startswith(key)
            if hf is not None:
                x = tok(p, add_special_tokens=True, return_tensors="pt")
                ntok.append(x.input_ids.shape[1])
                with torch.no_grad():
                    y = hf.generate(**x, max_new_tokens=8, do_sample=False)
                ok_hf += tok.decode(y[0, x.input_ids.shape[1]:], skip_special_tokens=True).strip().startswith(key)
        r = {"trials": len(prompts), "kvlab_correct": ok_kv}
        if hf is not None:
            r["hf_correct"] = ok_hf
            r["prompt_tokens_mean"] = sum(ntok) / len(ntok)
        res["passkey"][str(length)] = r
        print(f"passkey {length}: {r}", file=sys.stderr)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
