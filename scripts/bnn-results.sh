#!/usr/bin/env bash
# The results table of docs/bnn-train.md in one command: Fashion-MNIST test accuracy of the real
# net, a plain BNN, a threshold-shift sweep, ReActNet RSign and INSTA-Th / INSTA-Th+ /
# INSTA-PReLU, 3 seeds each, the same epochs for every run; trainings run concurrently (default:
# 10 at a time, on one GPU or the CPU cores). Writes to OUT_DIR:
#   runs/<config>-<seed>.{h5,json,log}   every run's bnn-model artifact, JSON report and log
#   results.json, results.md             the table: mean ± sample std over seeds, per-seed values
#
#   scripts/bnn-results.sh OUT_DIR [options]
#     --kvlab PATH        kvlab binary (default: build/bin/kvlab)
#     --data DIR          Fashion-MNIST IDX directory (default: /usr/share/datasets/fashion-mnist)
#     --device D          cuda, cuda:N or cpu (default: cuda)
#     --jobs N            concurrent trainings (default: 10)
#     --epochs N          epochs per run; without it, a short calibration picks the most epochs
#                         that fit --budget
#     --budget S          seconds for all the runs after the calibration (default: 300)
#     --max-epochs N      cap for the calibrated epochs (default: 40)
#     --width W --stages S --depth D --batch-size B --lr LR   (default: 32 3 1 256 2e-3)
#     --train-limit N --test-limit N                          (default: 0 0 = all)
#     --seeds "1 2 3"     seeds (default: 1 2 3)
#     --with-xnor         also XNOR-Net rows (sign and the shift sweep)
#     --packed-check      run each network's bit-packed CPU check (off: the unit tests cover it)
#     --threads N         CPU threads per training (default: 1)
#
# The lead's GPU command (one H100; Fashion-MNIST carried in build-gpu-data/fashion):
#   scripts/bnn-results.sh bnn-results --kvlab build-gpu/bin/kvlab --data build-gpu-data/fashion
# A CPU smoke test of the whole pipeline:
#   scripts/bnn-results.sh /tmp/bnn-smoke --kvlab build/bin/kvlab --device cpu --jobs 2 \
#     --epochs 1 --train-limit 512 --test-limit 500 --width 4 --stages 2 --batch-size 64
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
[ $# -ge 1 ] || usage 2 >&2
case "$1" in -h|--help) usage 0 ;; -*) echo "bnn-results.sh: OUT_DIR first (got $1)" >&2; exit 2 ;; esac
OUT=$1; shift
KVLAB=build/bin/kvlab
DATA=/usr/share/datasets/fashion-mnist
DEVICE=cuda
JOBS=10
EPOCHS=
BUDGET=300
MAX_EPOCHS=40
WIDTH=32; STAGES=3; DEPTH=1; BATCH=256; LR=2e-3
TRAIN_LIMIT=0; TEST_LIMIT=0
SEEDS="1 2 3"
WITH_XNOR=0; PACKED=0; THREADS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --kvlab) KVLAB=$2; shift ;;
    --data) DATA=$2; shift ;;
    --device) DEVICE=$2; shift ;;
    --jobs) JOBS=$2; shift ;;
    --epochs) EPOCHS=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    --max-epochs) MAX_EPOCHS=$2; shift ;;
    --width) WIDTH=$2; shift ;;
    --stages) STAGES=$2; shift ;;
    --depth) DEPTH=$2; shift ;;
    --batch-size) BATCH=$2; shift ;;
    --lr) LR=$2; shift ;;
    --train-limit) TRAIN_LIMIT=$2; shift ;;
    --test-limit) TEST_LIMIT=$2; shift ;;
    --seeds) SEEDS=$2; shift ;;
    --with-xnor) WITH_XNOR=1 ;;
    --packed-check) PACKED=1 ;;
    --threads) THREADS=$2; shift ;;
    -h|--help) usage 0 ;;
    *) echo "bnn-results.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -x "$KVLAB" ] || { echo "bnn-results.sh: --kvlab $KVLAB is not an executable; build kvlab first" >&2; exit 2; }
[ -d "$DATA" ] || { echo "bnn-results.sh: --data $DATA is not a directory" >&2; exit 2; }
for v in jobs:$JOBS budget:$BUDGET max-epochs:$MAX_EPOCHS threads:$THREADS epochs:${EPOCHS:-1}; do
  [[ ${v#*:} =~ ^[1-9][0-9]*$ ]] || { echo "bnn-results.sh: --${v%%:*} must be a positive integer" >&2; exit 2; }
done
command -v python3 >/dev/null || { echo "bnn-results.sh: python3 is needed for the table" >&2; exit 2; }
mkdir -p "$OUT/runs"
runs=$OUT/runs
now_ns() { date +%s%N; }
secs_since() { local d=$(( $(now_ns) - $1 )); printf '%d.%03d' $((d / 1000000000)) $((d / 1000000 % 1000)); }
t_start=$(now_ns)

# name|options, heaviest first (the queue packs better).
configs=(
  "reactnet-insta-prelu|--arch reactnet --act insta-prelu"
  "reactnet-insta-th-plus|--arch reactnet --act insta-th-plus"
  "reactnet-insta-th|--arch reactnet --act insta-th"
  "reactnet-rsign|--arch reactnet --act rsign"
  "bireal-shift-neg0.4|--arch bireal --act shift --shift -0.4"
  "bireal-shift-neg0.2|--arch bireal --act shift --shift -0.2"
  "bireal-sign|--arch bireal --act sign"
  "bireal-shift-0.2|--arch bireal --act shift --shift 0.2"
  "bireal-shift-0.4|--arch bireal --act shift --shift 0.4"
  "real|--arch real"
)
if [ "$WITH_XNOR" = 1 ]; then
  configs+=(
    "xnor-shift-neg0.2|--arch xnor --act shift --shift -0.2"
    "xnor-sign|--arch xnor --act sign"
    "xnor-shift-0.2|--arch xnor --act shift --shift 0.2"
    "xnor-shift-0.4|--arch xnor --act shift --shift 0.4"
  )
fi
net="--width $WIDTH --stages $STAGES --depth $DEPTH --batch-size $BATCH --lr $LR"
extra=$([ "$PACKED" = 1 ] || echo --no-packed-check)

# One training: writes <tag>.json (the report), .log (stderr), .secs (wall time) or .failed.
run_one() {  # tag epochs train_limit test_limit seed options...
  local tag=$1 ep=$2 trl=$3 tel=$4 seed=$5; shift 5
  local t0; t0=$(now_ns)
  if "$KVLAB" --device "$DEVICE" --threads "$THREADS" --seed "$seed" --json --progress lines \
      bnn-train --data "$DATA" "$@" $net --epochs "$ep" --train-limit "$trl" --test-limit "$tel" \
      $extra --force -o "$runs/$tag.h5" >"$runs/$tag.json" 2>"$runs/$tag.log"; then
    secs_since "$t0" >"$runs/$tag.secs"
  else
    touch "$runs/$tag.failed"
    echo "bnn-results.sh: FAILED $tag (see $runs/$tag.log)" >&2
  fi
}

# Runs "tag|epochs|train_limit|test_limit|seed|options" lines, JOBS at a time.
run_all() {
  local line
  for line in "$@"; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
    IFS='|' read -r tag ep trl tel seed opts <<<"$line"
    # shellcheck disable=SC2086  # options are split on purpose
    run_one "$tag" "$ep" "$trl" "$tel" "$seed" $opts &
  done
  wait
}

nseeds=$(wc -w <<<"$SEEDS")
nruns=$(( ${#configs[@]} * nseeds ))
if [ -z "$EPOCHS" ]; then
  # Calibration: JOBS concurrent copies of the heaviest configuration, 2 epochs of CAL_STEPS
  # steps; the second epoch's time (warm cuDNN, the same contention as the real runs) scales to
  # a full epoch, the rest of each run's wall time is its start-up (process, data, CUDA context,
  # final evaluation).
  CAL_STEPS=50
  cal=()
  for i in $(seq 1 "$JOBS"); do cal+=("calibrate-$i|2|$((CAL_STEPS * BATCH))|1000|$i|${configs[0]#*|}"); done
  echo "bnn-results.sh: calibrating ($JOBS concurrent runs of ${configs[0]%%|*}, 2 x $CAL_STEPS steps)" >&2
  run_all "${cal[@]}"
  ls "$runs"/calibrate-*.failed >/dev/null 2>&1 && { echo "bnn-results.sh: calibration failed" >&2; exit 1; }
  EPOCHS=$(python3 - "$runs" "$JOBS" "$CAL_STEPS" "$BATCH" "$TRAIN_LIMIT" "$BUDGET" "$MAX_EPOCHS" "$nruns" <<'PY'
import glob, json, math, sys
d, jobs, cal, batch, limit, budget, cap, nruns = sys.argv[1], *map(float, sys.argv[2:])
n_train = 60000 if limit <= 0 else min(limit, 60000)
epoch, start = 0.0, 0.0
for f in glob.glob(f"{d}/calibrate-*.json"):
    r = json.load(open(f))
    wall = float(open(f[:-5] + ".secs").read())
    epoch = max(epoch, r["epoch_seconds"][1] / cal * math.ceil(n_train / batch))
    start = max(start, wall - sum(r["epoch_seconds"]))
waves = math.ceil(nruns / jobs)
e = int((budget - waves * start) / (waves * epoch)) if epoch > 0 else 1
e = max(1, min(int(cap), e))
print(f"calibration: {epoch:.2f} s per full epoch under {int(jobs)}-way concurrency, {start:.1f} s "
      f"start-up per run, {waves} waves -> {e} epochs (~{waves * (start + e * epoch):.0f} s)",
      file=sys.stderr)
print(e)
PY
)
  rm -f "$runs"/calibrate-*
fi

echo "bnn-results.sh: $nruns runs (${#configs[@]} configurations x seeds $SEEDS), $EPOCHS epochs, $JOBS at a time on $DEVICE" >&2
lines=()
for seed in $SEEDS; do
  for c in "${configs[@]}"; do lines+=("${c%%|*}-$seed|$EPOCHS|$TRAIN_LIMIT|$TEST_LIMIT|$seed|${c#*|}"); done
done
t_cal=$(secs_since "$t_start")
t_runs=$(now_ns)
run_all "${lines[@]}"
t_runs=$(secs_since "$t_runs")
nfail=$(find "$runs" -name '*.failed' | wc -l)

machine=$( (nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1) || true)
[ -n "$machine" ] || machine=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
version=$("$KVLAB" --version 2>/dev/null | head -1 || true)
python3 - "$OUT" "$EPOCHS" "$SEEDS" "$DEVICE" "$JOBS" "$machine" "$version" \
  "$t_cal" "$t_runs" \
  "$net --train-limit $TRAIN_LIMIT --test-limit $TEST_LIMIT" "${configs[@]}" <<'PY'
import json, math, statistics, sys
out, epochs, seeds, device, jobs, machine, version, t_cal, t_runs, common = sys.argv[1:11]
configs = [c.split("|", 1) for c in sys.argv[11:]]
seeds = [int(s) for s in seeds.split()]

def mean_std(xs):
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else float("nan"))

rows, dataset = [], "?"
for name, opts in configs:
    rs, secs, missing = [], [], []
    for s in seeds:
        try:
            rs.append(json.load(open(f"{out}/runs/{name}-{s}.json")))
            secs.append(float(open(f"{out}/runs/{name}-{s}.secs").read()))
        except (OSError, ValueError):
            missing.append(s)
    row = {"name": name, "options": opts, "seeds": [s for s in seeds if s not in missing],
           "missing_seeds": missing}
    if rs:
        acc = [100 * r["test_accuracy"] for r in rs]
        row["test_accuracy"] = acc
        row["mean"], row["std"] = mean_std(acc)
        layers = [[a["plus_fraction"] for a in r["activations"]] for r in rs]
        if layers[0]:
            row["plus_fraction_per_layer"] = [statistics.mean(l[i] for l in layers) for i in range(len(layers[0]))]
            row["plus_fraction"] = statistics.mean(row["plus_fraction_per_layer"])
        r0 = rs[0]
        dataset = r0["dataset"]
        for k in ("bops", "flops", "ops", "size_bits", "steps", "train_images", "test_images"):
            row[k] = r0[k]
        row["epoch_test_accuracy_mean"] = [100 * statistics.mean(r["epoch_test_accuracy"][e] for r in rs)
                                           for e in range(len(r0["epoch_test_accuracy"]))]
        row["seconds_per_run"] = statistics.mean(secs)
        row["train_seconds"] = statistics.mean(r["train_seconds"] for r in rs)
    rows.append(row)

by = {r["name"]: r for r in rows}
def base_of(name):
    if name.startswith("bireal-shift"): return "bireal-sign"
    if name.startswith("xnor-shift"): return "xnor-sign"
    if name.startswith("reactnet-insta"): return "reactnet-rsign"
    return None
for r in rows:
    b = by.get(base_of(r["name"]) or "")
    if b and "mean" in r and "mean" in b:
        r["baseline"] = b["name"]
        r["delta"] = r["mean"] - b["mean"]
        # Welch's t of the difference of means (3 seeds: read it as a rough signal-to-noise).
        se = math.sqrt(r["std"] ** 2 / len(r["test_accuracy"]) + b["std"] ** 2 / len(b["test_accuracy"])) \
            if len(r["test_accuracy"]) > 1 and len(b["test_accuracy"]) > 1 else float("nan")
        r["delta_t"] = r["delta"] / se if se and se == se and se > 0 else None

settings = {"epochs": int(epochs), "seeds": seeds, "device": device, "concurrent_runs": int(jobs),
            "machine": machine, "kvlab": version, "common_options": common,
            "calibration_seconds": float(t_cal), "runs_seconds": float(t_runs),
            "dataset": dataset}
json.dump({"settings": settings, "rows": rows}, open(f"{out}/results.json", "w"), indent=2)

def f(x, p=2):
    return "-" if x is None or (isinstance(x, float) and x != x) else f"{x:.{p}f}"
md = []
md.append(f"{dataset}, {epochs} epochs per run, seeds {', '.join(map(str, seeds))}; "
          f"`{common}`; {device} ({machine}), {jobs} runs at a time; "
          f"calibration {float(t_cal):.0f} s + runs {float(t_runs):.0f} s. {version}")
md.append("")
md.append("| config | test acc (%) mean ± std | per seed | Δ vs baseline (Welch t) | +1 fraction | BOPs | FLOPs | OPs | size (KiB) | s/run |")
md.append("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    if "mean" not in r:
        md.append(f"| `{r['options']}` | (no run finished) | | | | | | | | |")
        continue
    delta = f"{r['delta']:+.2f} vs {r['baseline']} (t {f(r.get('delta_t'), 1)})" if "delta" in r else "-"
    md.append(f"| `{r['options']}` | {r['mean']:.2f} ± {f(r['std'])} | "
              f"{' / '.join(f'{a:.2f}' for a in r['test_accuracy'])} | {delta} | "
              f"{f(r.get('plus_fraction'), 3)} | {r['bops']:.3g} | {r['flops']:.3g} | {r['ops']:.3g} | "
              f"{r['size_bits'] / 8192:.1f} | {r['seconds_per_run']:.0f} |")
md.append("")
md.append("+1 fraction per binary layer (mean over seeds):")
md.append("")
for r in rows:
    if r.get("plus_fraction_per_layer"):
        md.append(f"- {r['name']}: " + " ".join(f"{x:.3f}" for x in r["plus_fraction_per_layer"]))
open(f"{out}/results.md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
PY
echo "bnn-results.sh: wrote $OUT/results.json and $OUT/results.md ($nfail failed runs)" >&2
[ "$nfail" -eq 0 ]
