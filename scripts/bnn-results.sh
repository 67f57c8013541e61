#!/usr/bin/env bash
# Reproduces the results table of docs/bnn-train.md: Fashion-MNIST test accuracy of the real net,
# a plain BNN, a threshold-shift sweep, ReActNet RSign, INSTA-Th and INSTA-Th+, 3 seeds each, the
# same epochs for all. Prints a markdown table (mean +- std over seeds) on stdout.
#   scripts/bnn-results.sh [KVLAB] [EPOCHS] [TRAIN_LIMIT] [WIDTH] [STAGES] [TEST_LIMIT]
set -euo pipefail
KVLAB=${1:-build/bin/kvlab}
EPOCHS=${2:-2}
LIMIT=${3:-5000}
WIDTH=${4:-8}
STAGES=${5:-3}
TEST_LIMIT=${6:-0}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
common="--epochs $EPOCHS --train-limit $LIMIT --test-limit $TEST_LIMIT --width $WIDTH --stages $STAGES --batch-size 64 --lr 2e-3"
configs=(
  "real|--arch real"
  "bireal-sign|--arch bireal --act sign"
  "bireal-shift-0.2|--arch bireal --act shift --shift 0.2"
  "bireal-shift-0.4|--arch bireal --act shift --shift 0.4"
  "bireal-shift-neg0.2|--arch bireal --act shift --shift -0.2"
  "reactnet-rsign|--arch reactnet --act rsign"
  "reactnet-insta-th|--arch reactnet --act insta-th"
  "reactnet-insta-th-plus|--arch reactnet --act insta-th-plus"
)
for c in "${configs[@]}"; do
  name=${c%%|*}; opts=${c#*|}
  for seed in 1 2 3; do
    echo "$KVLAB --threads 1 --seed $seed --json --progress none bnn-train $opts $common -o $out/$name-$seed.h5" >&2
    $KVLAB --threads 1 --seed $seed --json --progress none bnn-train $opts $common \
      -o "$out/$name-$seed.h5" > "$out/$name-$seed.json"
  done
done
python3 - "$out" "${configs[@]}" <<'PY'
import json, statistics, sys
d = sys.argv[1]
print("| config | test acc (%) mean ± std | +1 fraction (mean over layers) | BOPs | FLOPs | OPs | size (KiB) | s/run |")
print("|---|---|---|---|---|---|---|---|")
for c in sys.argv[2:]:
    name, opts = c.split("|", 1)
    rs = [json.load(open(f"{d}/{name}-{s}.json")) for s in (1, 2, 3)]
    acc = [100 * r["test_accuracy"] for r in rs]
    plus = [statistics.mean(a["plus_fraction"] for a in r["activations"]) for r in rs if r["activations"]]
    r = rs[0]
    print(f"| `{opts}` | {statistics.mean(acc):.2f} ± {statistics.stdev(acc):.2f} | "
          f"{statistics.mean(plus):.3f} | {r['bops']:.3g} | {r['flops']:.3g} | {r['ops']:.3g} | "
          f"{r['size_bits'] / 8192:.1f} | {statistics.mean(x['train_seconds'] for x in rs):.1f} |"
          if plus else
          f"| `{opts}` | {statistics.mean(acc):.2f} ± {statistics.stdev(acc):.2f} | - | {r['bops']:.3g} | "
          f"{r['flops']:.3g} | {r['ops']:.3g} | {r['size_bits'] / 8192:.1f} | "
          f"{statistics.mean(x['train_seconds'] for x in rs):.1f} |")
PY
