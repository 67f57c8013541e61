#!/usr/bin/env python3
"""Train the tiny byte-level Llama fixture (issue 3, Deliver item 6).

A deep, thin Llama (default 8 blocks, hidden 192, GQA 6/2 heads, vocab 256 bytes + 3 specials) trained
on the King James Bible (`bible -l0 gen1:1-rev22:21`, Debian bible-kjv) mixed with synthetic pass-key
retrieval examples, so that with the full KV cache it retrieves a 5-digit key placed anywhere in a
1-2k-byte context. Writes an HF directory (config.json + model.safetensors) that `kvlab import-hf`
reads, the held-out text (the last --heldout-frac of the Bible, never trained on), and
train-report.json with the held-out bits/byte, perplexity and pass-key accuracy.

Byte-level ids: 0..255 are raw bytes, 256 = BOS, 257 = EOS, 258 = PAD (kvlab treats a vocabulary of
256..511 as byte-level).

  CPU smoke test (seconds):  python3 scripts/train-fixture.py --out /tmp/fx --steps 5 --seq-len 128 \\
                                 --batch-size 2 --eval-passkeys 4 --device cpu
  Real run (GPU, ~1 h):      python3 scripts/train-fixture.py --out data/kjv-byte-llama --device cuda

Needs torch and transformers (pip, in a venv).
"""
import argparse
import json
import math
import os
import random
import subprocess
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

BOS, EOS, PAD = 256, 257, 258
VOCAB = 259


def bible_text(path):
    if path:
        return open(path, "rb").read()
    return subprocess.run(["bible", "-l0", "gen1:1-rev22:21"], check=True, capture_output=True).stdout


def passkey_example(filler, rng, min_len, max_len):
    """Filler text with a pass-key sentence at a random depth, then the question and the answer.
    Returns (bytes, answer_start): the answer's 5 digits are the last 5 bytes before the final '.'."""
    key = "%05d" % rng.randrange(100000)
    n = rng.randint(min_len, max_len)
    start = rng.randrange(0, len(filler) - n - 1)
    hay = filler[start:start + n]
    needle = b" The pass key is " + key.encode() + b". Remember it. " + key.encode() + b" is the pass key. "
    depth = rng.randint(0, len(hay))
    q = b"\nWhat is the pass key? The pass key is "
    text = hay[:depth] + needle + hay[depth:] + q
    return text + key.encode() + b".\n", len(text)


def make_batch(train, filler, args, rng, device):
    rows, weights = [], []
    for _ in range(args.batch_size):
        if rng.random() < args.passkey_frac:
            ex, ans = passkey_example(filler, rng, args.passkey_min, min(args.passkey_max, args.seq_len - 120))
            ids = [BOS] + list(ex)
            w = [1.0] * len(ids)
            for i in range(ans + 1, ans + 6):  # the answer digits (shifted by the BOS)
                w[i] = args.answer_weight
            ids = ids[: args.seq_len + 1]
            w = w[: args.seq_len + 1]
            pad = args.seq_len + 1 - len(ids)
            ids += [PAD] * pad
            w += [0.0] * pad
        else:
            s = rng.randrange(0, len(train) - args.seq_len - 1)
            ids = list(train[s: s + args.seq_len + 1])
            w = [1.0] * len(ids)
        rows.append(ids)
        weights.append(w)
    x = torch.tensor(rows, dtype=torch.long, device=device)
    w = torch.tensor(weights, dtype=torch.float32, device=device)
    return x, w


@torch.no_grad()
def heldout_bits_per_byte(model, held, seq_len, device, max_windows):
    model.eval()
    losses = []
    n = len(held) // seq_len
    for i in range(min(n, max_windows)):
        x = torch.tensor(list(held[i * seq_len:(i + 1) * seq_len]), device=device).unsqueeze(0)
        logits = model(x).logits.float()
        losses.append(torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:]).item())
    model.train()
    loss = sum(losses) / max(1, len(losses))
    return loss / math.log(2), math.exp(loss), len(losses)


@torch.no_grad()
def passkey_accuracy(model, filler, n, rng, device, min_len, max_len):
    model.eval()
    ok = 0
    for _ in range(n):
        ex, ans = passkey_example(filler, rng, min_len, max_len)
        ids = torch.tensor([[BOS] + list(ex[:ans])], device=device)
        out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=PAD)
        ok += bytes(out[0, ids.shape[1]:].tolist()) == ex[ans:ans + 5]
    model.train()
    return ok / max(1, n)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output HF directory")
    ap.add_argument("--text", help="training text file (default: bible -l0 gen1:1-rev22:21)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--intermediate", type=int, default=512)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=12000)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--passkey-frac", type=float, default=0.25, help="fraction of training rows that are pass-key examples")
    ap.add_argument("--passkey-min", type=int, default=200)
    ap.add_argument("--passkey-max", type=int, default=2000)
    ap.add_argument("--answer-weight", type=float, default=5.0, help="loss weight of the answer digits")
    ap.add_argument("--heldout-frac", type=float, default=0.05)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--eval-windows", type=int, default=50)
    ap.add_argument("--eval-passkeys", type=int, default=200)
    ap.add_argument("--save-dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-frac", type=float, default=0.02,
                    help="validation slice before the held-out text, used to pick the checkpoint")
    ap.add_argument("--eval-passkeys-during", type=int, default=40,
                    help="pass-key examples per evaluation during training")
    ap.add_argument("--time-limit", type=float, default=0.0,
                    help="seconds of training (0: none); the cosine schedule then follows whichever of "
                         "steps or time is further along, so a time-limited run still anneals")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    text = bible_text(args.text)
    cut = int(len(text) * (1 - args.heldout_frac))
    cut = text.rfind(b"\n", 0, cut) + 1 or cut
    vcut = int(cut - len(text) * args.val_frac)
    vcut = text.rfind(b"\n", 0, vcut) + 1 or vcut
    # train | validation (checkpoint selection) | held-out (the reported numbers; never seen)
    train, val, held = text[:vcut], text[vcut:cut], text[cut:]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "heldout.txt"), "wb") as f:
        f.write(held)

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=args.hidden, intermediate_size=args.intermediate,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, max_position_embeddings=4096,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
                      bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    device = torch.device(args.device)
    model = LlamaForCausalLM(cfg).to(device)
    nparam = sum(p.numel() for p in model.parameters())
    print(f"model: {args.layers} blocks, hidden {args.hidden}, {nparam / 1e6:.2f} M parameters; train {len(train)} bytes, held-out {len(held)} bytes", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    t0 = time.time()

    def progress(s):  # fraction of the run done: by steps, or by time when --time-limit is set
        p = s / args.steps
        if args.time_limit > 0:
            p = max(p, (time.time() - t0) / args.time_limit)
        return min(1.0, p)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * progress(s))))
    amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    done_steps = 0
    best = None  # (score, step, state_dict)
    for step in range(1, args.steps + 1):
        x, w = make_batch(train, train, args, rng, device)
        with amp:
            logits = model(x[:, :-1]).logits.float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1), reduction="none")
        ww = w[:, 1:].reshape(-1)
        loss = (nll * ww).sum() / ww.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        done_steps = step
        if args.time_limit > 0 and time.time() - t0 >= args.time_limit:
            print(f"step {step}: time limit {args.time_limit:.0f} s reached, loss {loss.item():.4f}", flush=True)
            break
        if step % 50 == 0 or step == args.steps:
            print(f"step {step}/{args.steps} loss {loss.item():.4f} lr {sched.get_last_lr()[0]:.2e} {time.time() - t0:.0f} s", flush=True)
        if step % args.eval_every == 0:
            # The byte model overfits the 4 MB Bible within a few dozen epochs; keep the checkpoint
            # with the best validation bits/byte among those that already retrieve pass keys.
            vbpb, vppl, _ = heldout_bits_per_byte(model, val, min(args.seq_len, 1024), device, 10)
            vacc = passkey_accuracy(model, train, args.eval_passkeys_during, random.Random(step), device,
                                    min(1000, args.passkey_max), min(args.passkey_max, args.seq_len - 120))
            score = (vacc >= 0.9, -vbpb)
            better = best is None or score > best[0]
            print(f"  validation {vbpb:.3f} bits/byte (ppl {vppl:.2f}), pass-key {vacc:.2f}{' *' if better else ''}", flush=True)
            if better:
                best = (score, step, {k: v.detach().clone() for k, v in model.state_dict().items()})

    if best is not None:
        vbpb, vppl, _ = heldout_bits_per_byte(model, val, min(args.seq_len, 1024), device, 10)
        vacc = passkey_accuracy(model, train, args.eval_passkeys_during, random.Random(done_steps), device,
                                min(1000, args.passkey_max), min(args.passkey_max, args.seq_len - 120))
        if (vacc >= 0.9, -vbpb) < best[0]:
            print(f"restoring the checkpoint of step {best[1]} (better on validation)", flush=True)
            model.load_state_dict(best[2])
            chosen_step = best[1]
        else:
            chosen_step = done_steps
    else:
        chosen_step = done_steps
    eval_len = min(args.seq_len, 1024)
    bpb, ppl, windows = heldout_bits_per_byte(model, held, eval_len, device, args.eval_windows)
    hi = min(args.passkey_max, args.seq_len - 120)
    lo = min(1000, hi)  # the target: a key anywhere in a 1-2k-byte context
    acc = passkey_accuracy(model, train, args.eval_passkeys, random.Random(args.seed + 1), device, lo, hi)
    report = {"heldout_bits_per_byte": bpb, "heldout_ppl": ppl, "heldout_windows": windows,
              "heldout_window": eval_len, "uniform_ppl": 256, "passkey_accuracy": acc,
              "passkey_examples": args.eval_passkeys,
              "passkey_context_bytes": [lo, hi],
              "parameters": nparam, "steps": done_steps, "chosen_step": chosen_step, "train_seconds": round(time.time() - t0), "args": vars(args)}
    print(json.dumps(report, indent=1))
    model.to(getattr(torch, args.save_dtype)).save_pretrained(args.out, safe_serialization=True)
    for extra in ("generation_config.json",):
        p = os.path.join(args.out, extra)
        if os.path.exists(p):
            os.remove(p)
    with open(os.path.join(args.out, "train-report.json"), "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
