#!/usr/bin/env bash
# The issue-8 ordering experiment: perplexity of fp / sign / OneBit-style (E = 1) / BinaryMoS (E = 4)
# after the same `kvlab binarize` training budget, with a learning-rate sweep and several seeds.
#
#   scripts/binarize-ordering.sh --kvlab build/bin/kvlab --device cpu --threads 1 \
#       --model data/kjv-byte-llama --kjv-split /tmp/kjv --heldout data/kjv-byte-llama/heldout.txt \
#       --steps 300 --seq-len 128 --batch-size 4 --lrs 5e-4,2e-3,8e-3 --seeds 0,1,2 \
#       --eval-windows 32 --val-windows 12 --with-init --out /tmp/ordering
#   (or --train FILE [--val FILE] instead of --kjv-split; docs/binarize.md has the runs and the GPU command)
#
# --model: a model artifact (.h5), a Hugging Face directory (imported with import-hf) or a .gguf
# file (import-gguf); imported once into OUT/fp.h5. For every seed x lr x method (sign, onebit =
# --experts 1, mos = --experts 4) it runs
#   kvlab --seed S [--threads T] --device D binarize FP --data TRAIN --seq-len --batch-size --steps --lr ...
#   kvlab [--threads T] --device D eval MODEL --data HELDOUT --seq-len --max-windows --dtype -o report.h5
# (and the same eval on --val when given), identical budgets for all methods. fp is evaluated once.
#
# Output in --out:
#   runs.jsonl   one JSON line per run: method, experts, lr, seed, budget, ppl + 95 % interval (over
#                windows, as `kvlab eval` prints it), mean loss, bits/weight, file bytes, binarize
#                seconds, wall seconds, val ppl (if --val)
#   windows/     per-window held-out losses of every run (h5dump of the eval report; skipped with a
#                warning when h5dump is not installed)
#   results.md   tables: every run; same-lr comparison; per-method best lr of the sweep (chosen on
#                --val if given, else on held-out, which is optimistic and flagged); paired
#                per-window differences between methods (same windows, so much tighter than the
#                per-model intervals); the ordering verdict
#   results.json the same tables as JSON
# A run whose JSON line is already in runs.jsonl is skipped, so an interrupted sweep resumes and more
# seeds / lrs can be added later with the same --out. --report-only rebuilds results.md only.
#
# Options (defaults in brackets):
#   --kvlab PATH [build/bin/kvlab]   --device cpu|cuda|cuda:N [cpu]   --threads N [kvlab's default]
#   --methods sign,onebit,mos [all]  --steps N [300]  --seq-len N [128]  --batch-size N [4]
#   --lrs a,b,... [5e-4]   --seeds a,b,... [0]   --train-dtype auto|float32|bfloat16 [auto]
#   --eval-seq-len N [1024]  --eval-windows N [0 = all]  --val-windows N [same as --eval-windows]
#   --eval-dtype D [float32]  --with-init (also evaluate each method's --steps 0 initialisation)
#   --binarize-args "..." (extra binarize options, same for every run)  --keep-models
#   --label TEXT (model name in the tables)  --report-only
#   --time-budget SECONDS: before each seed x lr group of methods, stop (and write the report) when
#       the elapsed time plus the longest group so far would exceed it
#   --pretokenize: tokenize --heldout / --val once with the source model's tokenizer (kvlab tokenize,
#       HDF5 ids) and evaluate every model on those ids (needed for a model with a tokenizer: the
#       binarized artifact does not carry the source's /tokenizer, so eval cannot read text for it)
#   --parallel: run the methods of a group at the same time (for a small model on a GPU, whose
#       steps are launch-bound; their wall and binarize seconds then include the sharing)
#   --kjv-split DIR: use DIR/kjv-train.txt and DIR/kjv-val.txt as --train / --val (unless given),
#       writing them first when absent from `bible -l0 gen1:1-rev22:21` (Debian bible-kjv) with
#       scripts/train-fixture.py's split: train = text[:vcut], val = text[vcut:cut], held-out =
#       text[cut:] (cut = 95 %, vcut = cut - 2 %, both moved back to a line start), checked
#       byte-identical to data/kjv-byte-llama/heldout.txt. The fixture model was trained on train
#       (plus synthetic pass-key samples); val only chose its checkpoint; held-out was never seen.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"

kvlab="$here/build/bin/kvlab"; device=cpu; threads=""; model=""; train=""; heldout=""; val=""
methods="sign,onebit,mos"; steps=300; seq_len=128; batch=4; lrs="5e-4"; seeds="0"; train_dtype=auto
eval_seq=1024; eval_windows=0; val_windows=""; eval_dtype=float32; with_init=0; extra=""; keep=0
out=""; label=""; report_only=0; time_budget=0; kjv_split=""; parallel=0; pretok=0
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --kvlab) kvlab="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    --train) train="$2"; shift 2 ;;
    --heldout) heldout="$2"; shift 2 ;;
    --val) val="$2"; shift 2 ;;
    --methods) methods="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --seq-len) seq_len="$2"; shift 2 ;;
    --batch-size) batch="$2"; shift 2 ;;
    --lrs|--lr) lrs="$2"; shift 2 ;;
    --seeds|--seed) seeds="$2"; shift 2 ;;
    --train-dtype) train_dtype="$2"; shift 2 ;;
    --eval-seq-len) eval_seq="$2"; shift 2 ;;
    --eval-windows) eval_windows="$2"; shift 2 ;;
    --val-windows) val_windows="$2"; shift 2 ;;
    --eval-dtype) eval_dtype="$2"; shift 2 ;;
    --with-init) with_init=1; shift ;;
    --binarize-args) extra="$2"; shift 2 ;;
    --keep-models) keep=1; shift ;;
    --label) label="$2"; shift 2 ;;
    --out|-o) out="$2"; shift 2 ;;
    --report-only) report_only=1; shift ;;
    --time-budget) time_budget="$2"; shift 2 ;;
    --kjv-split) kjv_split="$2"; shift 2 ;;
    --parallel) parallel=1; shift ;;
    --pretokenize) pretok=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "binarize-ordering: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
die() { echo "binarize-ordering: $*" >&2; exit 2; }
[ -n "$out" ] || die "--out DIR is required"
val_windows="${val_windows:-$eval_windows}"
mkdir -p "$out/models" "$out/logs" "$out/windows"
runs="$out/runs.jsonl"; touch "$runs"
have_h5dump=1; command -v h5dump >/dev/null || have_h5dump=0

report() {
  python3 - "$out" <<'PY'
import json, math, os, sys, itertools
out = sys.argv[1]
rows = [json.loads(l) for l in open(os.path.join(out, "runs.jsonl")) if l.strip()]
NAMES = {"fp": "fp (source, no binarization)", "sign": "sign (--method sign)",
         "onebit": "OneBit-style (--experts 1)", "mos": "BinaryMoS (--experts 4)"}
ORDER = ["fp", "sign", "onebit", "mos"]
def wl(r, split="heldout"):
    p = os.path.join(out, "windows", r["tag"] + ("" if split == "heldout" else "." + split) + ".txt")
    if not os.path.exists(p):
        return None
    v = [float(x) for x in open(p).read().replace(",", " ").split()]
    return v or None
def ci(r, key="ppl"):
    return f'{r[key]:.3f} ({r[key + "_ci_low"]:.3f}-{r[key + "_ci_high"]:.3f})'
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042]
def bpw(r):
    return "source dtype" if r["kind"] == "fp" or r.get("bits_per_weight") is None else f'{r["bits_per_weight"]:.3f}'
def mstat(xs):
    """mean and the half-width of its 95 % interval (Student t, df = n - 1)."""
    n = len(xs); m = sum(xs) / n
    if n < 2:
        return m, float("nan")
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    return m, (T975[n - 2] if n - 1 <= len(T975) else 1.96) * sd / math.sqrt(n)
trained = [r for r in rows if r["kind"] == "trained"]
fp = [r for r in rows if r["kind"] == "fp"]
init = [r for r in rows if r["kind"] == "init"]
meta = (trained or init or fp or [{}])[0]
res = {"meta": {k: meta.get(k) for k in ("label", "device", "threads", "steps", "seq_len", "batch_size",
                                          "tokens", "train_dtype", "eval_seq_len", "eval_windows",
                                          "eval_dtype", "kvlab_version")}}
L = []
L.append(f"# binarize ordering: {meta.get('label', '')}\n")
if trained:
    L.append(f"Budget: {meta['steps']} steps x batch {meta['batch_size']} x seq {meta['seq_len']} = "
             f"{meta['tokens']:,} training tokens per run; device {meta['device']}, threads "
             f"{meta.get('threads') or 'default'}, train dtype {meta['train_dtype']}; eval: "
             f"{meta['eval_windows_scored']} windows x {meta['eval_seq_len']} tokens "
             f"({meta['eval_dtype']}). kvlab {meta.get('kvlab_version', '?')}.\n")
L.append("## All runs (held-out ppl, 95 % interval over windows)\n")
L.append("| model | lr | seed | held-out ppl | val ppl | bits/weight | file bytes | binarize s | wall s |")
L.append("|---|---|---|---|---|---|---|---|---|")
for r in sorted(rows, key=lambda r: (ORDER.index(r["method"]), r["kind"] != "init", float(r.get("lr") or 0), r.get("seed") or 0)):
    name = NAMES[r["method"]] + (" init (--steps 0)" if r["kind"] == "init" else "")
    v = ci(r, "val_ppl") if "val_ppl" in r else "-"
    L.append(f'| {name} | {r.get("lr", "-")} | {r.get("seed", "-")} | {ci(r)} | {v} | '
             f'{bpw(r)} | {r["file_bytes"]} | {r.get("binarize_seconds") or 0:.1f} | '
             f'{r.get("wall_seconds", 0):.1f} |')
res["runs"] = rows
if not trained:
    open(os.path.join(out, "results.md"), "w").write("\n".join(L) + "\n")
    json.dump(res, open(os.path.join(out, "results.json"), "w"), indent=1)
    sys.exit(0)
methods = [m for m in ORDER if any(r["method"] == m for r in trained)]
lrs = sorted({r["lr"] for r in trained}, key=float)
seeds = sorted({r["seed"] for r in trained})
def group(m, lr, key="mean_loss"):
    return [r for r in trained if r["method"] == m and r["lr"] == lr]
def seedmean(rs, key):
    return sum(r[key] for r in rs) / len(rs)
# same-lr table: mean over seeds of the loss, ppl = exp(mean loss); seeds' ppl range
L.append("\n## Same learning rate for every method (held-out ppl; mean over seeds = exp(mean loss); [min-max over seeds]; one seed: 95 % interval over windows)\n")
L.append("| lr | " + " | ".join(NAMES[m] for m in methods) + " | order (best first) |")
L.append("|---|" + "---|" * len(methods) + "---|")
same = []
for lr in lrs:
    cells, means = [], {}
    for m in methods:
        g = group(m, lr)
        if not g:
            cells.append("-"); continue
        ml = seedmean(g, "mean_loss"); means[m] = ml
        if len(g) == 1:
            cells.append(ci(g[0]))
        else:
            ps = [r["ppl"] for r in g]
            cells.append(f"{math.exp(ml):.3f} [{min(ps):.3f}-{max(ps):.3f}] (n={len(g)})")
    order = " < ".join(m for m in sorted(means, key=means.get))
    L.append(f"| {lr} | " + " | ".join(cells) + f" | {order} |")
    same.append({"lr": lr, "mean_loss": means, "order": order})
res["same_lr"] = same
# best of sweep per method
sel_key = "val_mean_loss" if all("val_mean_loss" in r for r in trained) else "mean_loss"
sel_note = ("chosen on the validation text (--val)" if sel_key == "val_mean_loss"
            else "chosen on the held-out text itself (no --val): optimistic, the same text selects and scores")
best = {}
for m in methods:
    cand = [(seedmean(group(m, lr), sel_key), lr) for lr in lrs if group(m, lr)]
    best[m] = min(cand)[1]
L.append(f"\n## Per-method best learning rate of the sweep ({sel_note})\n")
L.append("| model | best lr | held-out ppl (mean over seeds) | per seed |")
L.append("|---|---|---|---|")
bestrows = {}
for m in methods:
    g = group(m, best[m]); ml = seedmean(g, "mean_loss"); bestrows[m] = g
    per = ", ".join(f'{r["seed"]}: {ci(r)}' for r in sorted(g, key=lambda r: r["seed"]))
    L.append(f"| {NAMES[m]} | {best[m]} | {math.exp(ml):.3f} | {per} |")
for r in fp:
    L.append(f"| {NAMES['fp']} | - | {ci(r)} | - |")
res["best_lr"] = {m: {"lr": best[m], "ppl": math.exp(seedmean(bestrows[m], "mean_loss"))} for m in methods}
# paired per-window differences
def paired(ga, gb):
    """Per matched seed: mean over windows of (loss A - loss B) with its 95 % interval over windows;
    combined: the same on the seed-averaged per-window losses."""
    sa = {r["seed"]: wl(r) for r in ga}; sb = {r["seed"]: wl(r) for r in gb}
    common = sorted(s for s in sa if s in sb and sa[s] and sb[s])
    if not common:
        return None
    n = min(min(len(sa[s]), len(sb[s])) for s in common)
    per = []
    for s in common:
        m, h = mstat([sa[s][w] - sb[s][w] for w in range(n)])
        per.append({"seed": s, "mean_diff_nats": m, "ci95_nats": h})
    d = [sum(sa[s][w] - sb[s][w] for s in common) / len(common) for w in range(n)]
    m, h = mstat(d)
    return {"seeds": len(common), "windows": n, "mean_diff_nats": m, "ci95_nats": h, "per_seed": per,
            "ppl_ratio": math.exp(m), "ppl_ratio_low": math.exp(m - h), "ppl_ratio_high": math.exp(m + h)}
def verdict(p):
    """A better / B better only when the window-paired interval excludes 0 in every seed on its own."""
    if p is None or any(math.isnan(x["ci95_nats"]) for x in p["per_seed"]):
        return "n/a"
    one = " (one seed)" if p["seeds"] == 1 else f" (all {p['seeds']} seeds)"
    if all(x["mean_diff_nats"] + x["ci95_nats"] < 0 for x in p["per_seed"]): return "A better" + one
    if all(x["mean_diff_nats"] - x["ci95_nats"] > 0 for x in p["per_seed"]): return "B better" + one
    if all(abs(x["mean_diff_nats"]) <= x["ci95_nats"] for x in p["per_seed"]): return "tie (interval covers 1)"
    return "mixed across seeds"
pairs = [("mos", "onebit"), ("onebit", "sign"), ("mos", "sign")]
pairs = [(a, b) for a, b in pairs if a in methods and b in methods]
L.append("\n## Paired per-window comparison (same held-out windows; ppl ratio A/B = exp(mean loss difference), 95 % interval over windows; seeds averaged per window)\n")
L.append("A ratio below 1 means A is better. Window noise is paired out; a verdict other than tie needs "
         "the interval to exclude 1 in every seed on its own (seed-to-seed variation is only covered "
         "when several seeds ran).\n")
L.append("| A vs B | lr | seeds | ppl ratio A/B, seed-averaged (95 %) | per seed | verdict |")
L.append("|---|---|---|---|---|---|")
pres = []
for a, b in pairs:
    for lr in lrs + ["best"]:
        ga = bestrows[a] if lr == "best" else group(a, lr)
        gb = bestrows[b] if lr == "best" else group(b, lr)
        if not ga or not gb:
            continue
        p = paired(ga, gb)
        lrtxt = f"best ({best[a]} vs {best[b]})" if lr == "best" else lr
        if p is None:
            L.append(f"| {a} vs {b} | {lrtxt} | - | (no per-window losses) | - | n/a |"); continue
        v = verdict(p)
        per = ", ".join(f'{x["seed"]}: {math.exp(x["mean_diff_nats"]):.4f} '
                        f'({math.exp(x["mean_diff_nats"] - x["ci95_nats"]):.4f}-{math.exp(x["mean_diff_nats"] + x["ci95_nats"]):.4f})'
                        for x in p["per_seed"])
        L.append(f'| {a} vs {b} | {lrtxt} | {p["seeds"]} | {p["ppl_ratio"]:.4f} '
                 f'({p["ppl_ratio_low"]:.4f}-{p["ppl_ratio_high"]:.4f}) | {per} | {v} |')
        pres.append(dict(p, a=a, b=b, lr=lrtxt, verdict=v))
res["paired"] = pres
# verdict on the paper's ordering mos < onebit < sign
def holds(lrtag):
    ps = {(p["a"], p["b"]): p for p in pres if p["lr"] == lrtag or (lrtag == "best" and p["lr"].startswith("best"))}
    need = [("mos", "onebit"), ("onebit", "sign")]
    if not all(k in ps for k in need):
        return "n/a"
    v = [ps[k]["verdict"] for k in need]
    if all(x.startswith("A better") for x in v):
        return "holds: " + ", ".join(f"{k[0]} vs {k[1]}: {x}" for k, x in zip(need, v))
    if any(x.startswith("B better") for x in v):
        return "reversed in at least one step: " + ", ".join(f"{k[0]} vs {k[1]}: {x}" for k, x in zip(need, v))
    return "not shown: " + ", ".join(f"{k[0]} vs {k[1]}: {x}" for k, x in zip(need, v))
L.append("\n## Paper's ordering BinaryMoS < OneBit < sign\n")
res["ordering"] = {}
for lr in lrs + ["best"]:
    h = holds(lr); res["ordering"][lr] = h
    L.append(f"* lr {lr}: {h}")
if len(seeds) < 2:
    L.append("\nOne seed only: the intervals cover window-to-window noise, not seed-to-seed variation.")
open(os.path.join(out, "results.md"), "w").write("\n".join(L) + "\n")
json.dump(res, open(os.path.join(out, "results.json"), "w"), indent=1)
PY
}

if [ "$report_only" = 1 ]; then report; cat "$out/results.md"; exit 0; fi

[ -x "$kvlab" ] || die "no kvlab at $kvlab (build it or pass --kvlab)"
if [ -n "$kjv_split" ]; then
  if [ ! -f "$kjv_split/kjv-train.txt" ] || [ ! -f "$kjv_split/kjv-val.txt" ]; then
    command -v bible >/dev/null || die "--kjv-split: no $kjv_split/kjv-train.txt and no 'bible' (apt-get install bible-kjv)"
    mkdir -p "$kjv_split"
    bible -l0 gen1:1-rev22:21 | python3 -c '
import sys
d, held = sys.argv[1], sys.argv[2]
t = sys.stdin.buffer.read()
cut = int(len(t) * 0.95); cut = t.rfind(b"\n", 0, cut) + 1 or cut
vcut = int(cut - len(t) * 0.02); vcut = t.rfind(b"\n", 0, vcut) + 1 or vcut
if t[cut:] != open(held, "rb").read():
    sys.exit("--kjv-split: the held-out part of bible -l0 differs from " + held)
open(d + "/kjv-train.txt", "wb").write(t[:vcut]); open(d + "/kjv-val.txt", "wb").write(t[vcut:cut])
' "$kjv_split" "$here/data/kjv-byte-llama/heldout.txt"
  fi
  train="${train:-$kjv_split/kjv-train.txt}"; val="${val:-$kjv_split/kjv-val.txt}"
fi
[ -n "$model" ] || die "--model is required"
[ -n "$heldout" ] && [ -f "$heldout" ] || die "--heldout FILE is required"
[ -n "$train" ] && [ -f "$train" ] || die "--train FILE is required"
[ -z "$val" ] || [ -f "$val" ] || die "no --val file $val"
[ "$have_h5dump" = 1 ] || echo "binarize-ordering: h5dump not found: no per-window losses, no paired comparison" >&2
label="${label:-$(basename "$model")}"

g=(--progress none --device "$device")
[ -n "$threads" ] && g+=(--threads "$threads")
version="$("$kvlab" --version 2>/dev/null | head -1 || true)"

fp="$out/fp.h5"
if [ ! -f "$fp" ]; then
  if [ -d "$model" ]; then "$kvlab" --progress none import-hf "$model" -o "$fp.partial.h5" --force >&2
  elif [[ "$model" == *.gguf ]]; then "$kvlab" --progress none import-gguf "$model" -o "$fp.partial.h5" --force >&2
  else cp "$model" "$fp.partial.h5"; fi
  mv "$fp.partial.h5" "$fp"   # (the artifact's lineage names the .partial path)
fi

if [ "$pretok" = 1 ]; then
  for split in heldout val; do
    f="${!split}"; [ -n "$f" ] || continue
    ids="$out/$split.ids.h5"
    [ -f "$ids" ] || "$kvlab" --progress none tokenize "$fp" --text "$f" --format h5 -o "$ids" >&2
    printf -v "$split" '%s' "$ids"
  done
fi

done_tag() { grep -q "\"tag\": *\"$1\"" "$runs"; }

# evaluate MODEL on FILE with WINDOWS: prints eval's JSON; per-window losses to windows/TAG[.SPLIT].txt
evaluate() {  # tag split file windows model
  local tag="$1" split="$2" file="$3" win="$4" m="$5" suffix=""
  [ "$split" = heldout ] || suffix=".$split"
  local rep="$out/logs/$tag$suffix.eval.h5"
  "$kvlab" --json "${g[@]}" eval "$m" --data "$file" --seq-len "$eval_seq" --max-windows "$win" \
      --dtype "$eval_dtype" -o "$rep" --force 2>"$out/logs/$tag$suffix.eval.err" || {
    echo "binarize-ordering: $tag: eval failed, see $out/logs/$tag$suffix.eval.err:" >&2
    tail -3 "$out/logs/$tag$suffix.eval.err" >&2; return 1; }
  if [ "$have_h5dump" = 1 ]; then
    h5dump -m "%.10g" -d /window_loss -y -o "$out/windows/$tag$suffix.txt" "$rep" >/dev/null
  fi
  rm -f "$rep"
}

# one run: kind (fp/init/trained) method lr seed
one() {
  local kind="$1" method="$2" lr="$3" seed="$4" tag m args=() bj="{}" t0 t1 ej vj="null"
  case "$kind" in
    fp) tag=fp ;;
    init) tag="$method-init-s$seed" ;;
    *) tag="$method-lr$lr-s$seed" ;;
  esac
  done_tag "$tag" && { echo "binarize-ordering: $tag already in $runs, skipped" >&2; return 0; }
  case "$method" in
    sign) args=(--method sign) ;;
    onebit) args=(--method mos --experts 1) ;;
    mos) args=(--method mos --experts 4) ;;
  esac
  t0=$(date +%s.%N)
  if [ "$kind" = fp ]; then
    m="$fp"
  else
    m="$out/models/$tag.h5"
    local tr=(--steps 0)
    [ "$kind" = trained ] && tr=(--data "$train" --seq-len "$seq_len" --batch-size "$batch" --steps "$steps"
                                 --lr "$lr" --dtype "$train_dtype")
    # shellcheck disable=SC2086
    bj="$("$kvlab" --json --seed "$seed" "${g[@]}" binarize "$fp" "${args[@]}" "${tr[@]}" $extra -o "$m" \
          --force 2>"$out/logs/$tag.binarize.err")" || { echo "binarize-ordering: $tag: binarize failed, see $out/logs/$tag.binarize.err" >&2; tail -5 "$out/logs/$tag.binarize.err" >&2; exit 1; }
  fi
  t1=$(date +%s.%N)
  ej="$(evaluate "$tag" heldout "$heldout" "$eval_windows" "$m")" || exit 1
  if [ -n "$val" ]; then vj="$(evaluate "$tag" val "$val" "$val_windows" "$m")" || exit 1; fi
  local bytes; bytes=$(stat -c %s "$m")
  python3 - "$runs" <<PY
import json, sys
b = json.loads('''$bj''') if '''$bj'''.strip() else {}
e = json.loads('''$ej''')
v = json.loads('''$vj''')
r = {"tag": "$tag", "kind": "$kind", "method": "$method", "label": """$label""", "device": "$device",
     "threads": "$threads", "kvlab_version": """$version""", "file_bytes": $bytes,
     "wall_seconds": round($t1 - $t0, 3), "parallel": bool($parallel), "eval_seq_len": $eval_seq, "eval_windows": $eval_windows,
     "eval_windows_scored": e["windows"], "eval_dtype": "$eval_dtype",
     "ppl": e["ppl"], "ppl_ci_low": e["ppl_ci_low"], "ppl_ci_high": e["ppl_ci_high"],
     "mean_loss": e["mean_loss"], "loss_stderr": e["loss_stderr"], "eval_tokens_per_second": e.get("tokens_per_second")}
if "$kind" != "fp":
    r.update({"seed": $seed, "experts": b.get("experts"), "bits_per_weight": b["bits_per_weight"],
              "binarize_seconds": b.get("seconds"), "final_loss": b.get("final_loss")})
else:
    r.update({"bits_per_weight": None})  # the source's linears: its stored dtype (kvlab inspect)
if "$kind" == "trained":
    r.update({"lr": "$lr", "steps": $steps, "seq_len": $seq_len, "batch_size": $batch,
              "tokens": $steps * $seq_len * $batch, "train_dtype": "$train_dtype", "binarize_args": """$extra"""})
if v:
    r.update({"val_ppl": v["ppl"], "val_ppl_ci_low": v["ppl_ci_low"], "val_ppl_ci_high": v["ppl_ci_high"],
              "val_mean_loss": v["mean_loss"], "val_windows_scored": v["windows"]})
open(sys.argv[1], "a").write(json.dumps(r) + "\n")
print(f'binarize-ordering: {r["tag"]}: ppl {r["ppl"]:.4f} ({r["ppl_ci_low"]:.4f}-{r["ppl_ci_high"]:.4f})'
      + (f', val {r["val_ppl"]:.4f}' if v else '') + f', {r["bits_per_weight"] or 0:.3f} bits/weight, '
      f'{r["file_bytes"]} bytes, {r["wall_seconds"]:.1f} s wall', file=sys.stderr)
PY
  [ "$keep" = 1 ] || [ "$kind" = fp ] || rm -f "$m"
}

IFS=, read -r -a M <<<"$methods"
IFS=, read -r -a LR <<<"$lrs"
IFS=, read -r -a S <<<"$seeds"
for m in "${M[@]}"; do case "$m" in sign|onebit|mos) ;; *) die "unknown method $m (sign, onebit, mos)";; esac; done

one fp fp - 0
if [ "$with_init" = 1 ]; then
  for m in "${M[@]}"; do one init "$m" - "${S[0]}"; done
fi
# a group = the methods of one seed x lr; --parallel runs them at the same time (a small model leaves
# a GPU mostly idle: its steps are kernel-launch bound), else one after another
start=$(date +%s); longest=0
for s in "${S[@]}"; do
  for lr in "${LR[@]}"; do
    if [ "$time_budget" != 0 ] && [ "$longest" != 0 ]; then
      need=$(( $(date +%s) - start + longest ))
      if [ "$need" -gt "$time_budget" ]; then
        echo "binarize-ordering: --time-budget $time_budget s: stopping before seed $s lr $lr (would need ~$need s)" >&2
        break 2
      fi
    fi
    t=$(date +%s)
    if [ "$parallel" = 1 ]; then
      pids=()
      for m in "${M[@]}"; do one trained "$m" "$lr" "$s" & pids+=($!); done
      for p in "${pids[@]}"; do wait "$p" || die "a run of seed $s lr $lr failed (logs in $out/logs)"; done
    else
      for m in "${M[@]}"; do one trained "$m" "$lr" "$s"; report; done
    fi
    report
    d=$(( $(date +%s) - t )); [ "$d" -gt "$longest" ] && longest=$d
  done
done
report
cat "$out/results.md"
