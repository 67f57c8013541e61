#!/usr/bin/env python3
"""Measures the testbed model (docs/testbed.md) in kvlab and in transformers on the same token ids.

  perplexity: held-out KJV text (data/kjv-byte-llama/heldout.txt) tokenized once by kvlab
              (`kvlab tokenize`, the model's own tokenizer), kvlab eval's protocol (non-overlapping
              windows of --seq-len tokens, no BOS, mean NLL of seq_len-1 predictions per window,
              first --windows windows), the same windows through transformers;
  pass keys:  `kvlab kv-eval MODEL --method full --task retrieval` (the prompt built as text through
              the model's tokenizer: held-out KJV filler words, " The pass key is K. Remember it.
              K is the pass key." at each depth, "\\nWhat is the pass key? The pass key is" last,
              exactly 1k/2k/4k tokens); kv-eval writes every prompt's ids and its greedy output
              (--retrieval-prompts), and transformers generates greedily from the same ids. A trial
              is correct when the decoded output, leading spaces dropped, starts with the 5 digits
              and no sixth digit follows (kv-eval's rule, re-checked here on both outputs).

transformers side: AutoModelForCausalLM loaded from the same GGUF (transformers dequantises the Q4_1
weights itself; needs the `gguf` package), float32, eager attention; its tokenizer only decodes.

  python3 scripts/testbed-compare.py --kvlab build/bin/kvlab --model smollm2.h5 \\
      --gguf ~/.cache/kvlab/testbed/SmolLM2-135M-Instruct.Q4_1.gguf [--no-hf] > results.json
"""
import argparse
import array
import json
import math
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def answer_correct(output, key):
    """kv-eval's text rule: leading whitespace dropped, starts with the key, no digit after it."""
    s = output.lstrip(" \n\t\r\f\v")
    if not s.startswith(key):
        return False
    return len(s) == len(key) or not s[len(key)].isdigit() or not s[len(key)].isascii()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kvlab", required=True)
    ap.add_argument("--model", required=True, help="kvlab model artifact (import-gguf output)")
    ap.add_argument("--gguf", required=True, help="the GGUF it was imported from")
    ap.add_argument("--heldout", default=os.path.join(HERE, "..", "data", "kjv-byte-llama", "heldout.txt"))
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--windows", type=int, default=20, help="perplexity windows (0: skip perplexity)")
    ap.add_argument("--lengths", default="1024,2048,4096", help="pass-key prompt lengths in tokens")
    ap.add_argument("--depths", default="0.1,0.5,0.9", help="key depths (fractions of the filler)")
    ap.add_argument("--samples", type=int, default=4, help="pass keys per (length, depth)")
    ap.add_argument("--seed", type=int, default=0, help="kvlab's --seed (which filler, keys and depths)")
    ap.add_argument("--no-hf", action="store_true", help="kvlab only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=None, help="keep the token file and prompts here")
    a = ap.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="testbed-")
    os.makedirs(work, exist_ok=True)
    res = {"model": a.model, "gguf": os.path.basename(a.gguf), "seq_len": a.seq_len, "windows": a.windows,
           "lengths": a.lengths, "depths": a.depths, "samples_per_cell": a.samples,
           "seed": a.seed}
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))

    def kv(*args):
        r = subprocess.run([a.kvlab, "--json", "--progress", "none", "--threads", str(a.threads),
                            "--seed", str(a.seed), *args],
                           capture_output=True, text=True, env=env)
        if r.returncode:
            sys.exit(f"kvlab {' '.join(args[:2])} failed ({r.returncode}): {r.stderr[-2000:]}")
        return json.loads(r.stdout)

    hf = None
    if not a.no_hf:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        torch.set_num_threads(a.threads)
        d, f = os.path.dirname(os.path.abspath(a.gguf)), os.path.basename(a.gguf)
        hf_tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        hf = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32,
                                                  attn_implementation="eager")
        hf.eval()

    # ---- perplexity on kvlab's token ids
    if a.windows > 0:
        tokens = os.path.join(work, "heldout.bin")
        t = kv("tokenize", a.model, "--text", a.heldout, "-o", tokens, "--force")
        width = 2 if t["dtype"] == "uint16" else 4
        ids = array.array("H" if width == 2 else "I")
        with open(tokens, "rb") as fh:
            ids.frombytes(fh.read())
        res["heldout_tokens"] = len(ids)
        t0 = time.time()
        e = kv("eval", a.model, "--data", tokens, "--seq-len", str(a.seq_len), "--max-windows", str(a.windows),
               "--dtype", "float32")
        res["kvlab_ppl"] = e["ppl"]
        res["kvlab_ppl_ci"] = [e["ppl_ci_low"], e["ppl_ci_high"]]
        res["kvlab_eval_seconds"] = time.time() - t0
        print(f"kvlab ppl {e['ppl']:.4f}", file=sys.stderr)
        if hf is not None:
            t0 = time.time()
            losses = []
            with torch.no_grad():
                for w in range(min(a.windows, len(ids) // a.seq_len)):
                    x = torch.tensor([list(ids[w * a.seq_len:(w + 1) * a.seq_len])])
                    lg = hf(x).logits.float()
                    losses.append(torch.nn.functional.cross_entropy(lg[0, :-1], x[0, 1:]).item())
            res["hf_ppl"] = math.exp(sum(losses) / len(losses))
            res["hf_eval_seconds"] = time.time() - t0
            print(f"transformers ppl {res['hf_ppl']:.4f}", file=sys.stderr)

    # ---- pass keys: kv-eval retrieval, then transformers on the same prompt ids
    prompts = os.path.join(work, "passkey-prompts.jsonl")
    t0 = time.time()
    r = kv("kv-eval", a.model, "--method", "full", "--task", "retrieval", "--data", a.heldout,
           "--retrieval-context", a.lengths, "--retrieval-depth", a.depths,
           "--retrieval-samples", str(a.samples), "--retrieval-prompts", prompts, "--dtype", "float32")
    res["kvlab_kv_eval_seconds"] = time.time() - t0
    cell = r["cells"][0]
    res["kvlab_retrieval"] = {"score": cell["score"], "samples": cell["samples"], "details": cell["details"]}
    rows = [json.loads(line) for line in open(prompts)]
    per = {}
    t0 = time.time()
    for row in rows:
        c = per.setdefault(str(row["context"]), {"trials": 0, "kvlab_correct": 0, "kvlab_recheck": 0,
                                                 "hf_correct": 0, "same_output_ids": 0})
        c["trials"] += 1
        c["kvlab_correct"] += bool(row["correct"])
        c["kvlab_recheck"] += answer_correct(row["output_text"], row["key"])
        if hf is not None:
            x = torch.tensor([row["prompt_ids"]])
            n = len(row["output_ids"])
            with torch.no_grad():
                y = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                                do_sample=False, pad_token_id=hf_tok.eos_token_id or 0)
            out = y[0, x.shape[1]:].tolist()
            text = hf_tok.decode(out, skip_special_tokens=True)
            c["hf_correct"] += answer_correct(text, row["key"])
            c["same_output_ids"] += out == row["output_ids"]
            print(f"ctx {row['context']} depth {row['depth']} key {row['key']}: kvlab {row['output_text']!r} "
                  f"({row['correct']}), transformers {text!r}", file=sys.stderr)
    if hf is not None:
        res["hf_generate_seconds"] = time.time() - t0
    res["passkey"] = per
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
