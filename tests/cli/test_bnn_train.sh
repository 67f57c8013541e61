#!/usr/bin/env bash
# End-to-end: kvlab bnn-train on a short Fashion-MNIST run (artifact validates, above chance, packed
# path identical), usage and format errors, SIGTERM -> checkpoint -> --resume auto.
source "$(dirname "$0")/lib.sh"
D=/usr/share/datasets/fashion-mnist
if [ ! -e "$D/t10k-images-idx3-ubyte.gz" ]; then echo "dataset-fashion-mnist not installed; skipped"; exit 0; fi
export KVLAB_THREADS=1  # 2 OpenMP threads on a loaded 2-core CI box spin badly
small="--width 8 --stages 3 --epochs 2 --train-limit 3000 --test-limit 1000 --batch-size 64 --lr 2e-3"
tiny="--width 4 --stages 2 --epochs 1 --train-limit 500 --test-limit 200 --batch-size 64"

expect_exit 0 "$KVLAB" --threads 2 --seed 1 --progress lines bnn-train --arch reactnet $small -o "$T/bnn.h5"
expect_stdout "test acc"
expect_stdout "bit-identical"
expect_stdout "s on cpu)"
expect_stderr "epoch 2/2"
expect_exit 0 "$KVLAB" inspect --validate "$T/bnn.h5"
expect_stdout "valid: conforms to the bnn-model v1 schema"
$PY - "$T/bnn.h5" <<'PY' || fail "report checks"
import h5py, sys
with h5py.File(sys.argv[1], "r") as f:
    r = f["report"]
    assert r.attrs["test_accuracy"] > 0.30, r.attrs["test_accuracy"]  # chance 0.10; ~0.5 measured
    assert abs(r.attrs["ops"] - (r.attrs["bops"] / 64 + r.attrs["flops"])) < 1e-6 * r.attrs["ops"]
    assert r.attrs["packed_agreement"] == 1.0
    assert len(r["act_plus_fraction"]) == 3
    assert f["params"].attrs["arch"] == "reactnet"
PY
[ -e "$T/bnn.h5.checkpoint.h5" ] && fail "checkpoint left after success"

# JSON output parses; distillation from a real teacher; two-step recipe.
expect_exit 0 "$KVLAB" --seed 1 --json --progress none bnn-train --arch real $tiny -o "$T/teacher.h5"
$PY -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["bops"]==0 and d["arch"]=="real", d' "$T/stdout" || fail "json"
expect_exit 0 "$KVLAB" --progress none bnn-train --arch bireal --recipe two-step --teacher "$T/teacher.h5" $tiny -o "$T/kd.h5"

# --device cuda: trains on the GPU where there is one (the packed check then runs on the CPU);
# a CPU-only build or machine refuses it with exit 2.
"$KVLAB" --device cuda --progress none bnn-train --arch reactnet $tiny -o "$T/cuda.h5" >"$T/stdout" 2>"$T/stderr"
rc=$?
n_checks=$((n_checks + 1))
if [ "$rc" -eq 0 ]; then
  expect_stdout "s on cuda:0)"
  expect_stdout "bit-identical"
else
  [ "$rc" -eq 2 ] || fail "--device cuda: expected exit 0 or 2, got $rc"
  expect_stderr "--device cuda"
fi

# Usage errors (exit 2) and format errors (exit 3).
expect_exit 2 "$KVLAB" bnn-train --arch bireal --act insta-prelu -o "$T/x.h5"
expect_stderr "--arch reactnet"
expect_exit 2 "$KVLAB" bnn-train --act shift --shift 9 -o "$T/x.h5"
expect_exit 2 "$KVLAB" bnn-train --arch nonsense -o "$T/x.h5"
expect_exit 2 "$KVLAB" bnn-train --data "$T" -o "$T/x.h5"
expect_stderr "found neither IDX files"
expect_exit 2 "$KVLAB" bnn-train $tiny -o "$T/bnn.h5"
expect_stderr "already exists; pass --force"
mkdir -p "$T/bad"
printf 'garbage' | gzip > "$T/bad/train-images-idx3-ubyte.gz"
for f in train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do cp "$D/$f.gz" "$T/bad/"; done
expect_exit 3 "$KVLAB" bnn-train --data "$T/bad" -o "$T/x.h5"
expect_stderr "train-images-idx3-ubyte.gz"
expect_exit 3 "$KVLAB" bnn-train --teacher "$T/bad/t10k-labels-idx1-ubyte.gz" $tiny -o "$T/x.h5"

# SIGTERM: a checkpoint is written, exit 1 with the remedy; --resume auto finishes the run.
"$KVLAB" --progress none bnn-train --arch bireal --width 8 --stages 2 --epochs 2 --train-limit 4000 \
  --test-limit 500 -o "$T/sig.h5" >"$T/stdout" 2>"$T/stderr" &
pid=$!
for _ in $(seq 1 100); do [ -e "$T/sig.h5.checkpoint.h5" ] && break; sleep 0.2; done
kill -TERM $pid
wait $pid; rc=$?
n_checks=$((n_checks + 1))
[ "$rc" -eq 1 ] || fail "SIGTERM: expected exit 1, got $rc"
expect_stderr "--resume auto"
[ -e "$T/sig.h5" ] && fail "output written by a stopped run"
expect_exit 0 "$KVLAB" inspect --validate "$T/sig.h5.checkpoint.h5"
expect_exit 0 "$KVLAB" --progress none bnn-train --arch bireal --width 8 --stages 2 --epochs 2 \
  --train-limit 4000 --test-limit 500 -o "$T/sig.h5" --resume auto
expect_exit 0 "$KVLAB" inspect --validate "$T/sig.h5"

ls "$T" | grep -q partial && fail "partial files left behind"
pass
