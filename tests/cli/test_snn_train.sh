#!/usr/bin/env bash
# End-to-end: kvlab snn-train on the installed Fashion-MNIST and on a generated N-MNIST tree:
# a short run beats chance, the artifact validates, resume (after an epoch and after SIGTERM
# mid-epoch) reproduces an uninterrupted run bit for bit, bad inputs exit 2/3.
source "$(dirname "$0")/lib.sh"
FM=/usr/share/datasets/fashion-mnist
[ -f "$FM/train-images-idx3-ubyte.gz" ] || fail "Debian's dataset-fashion-mnist is missing (scripts/install-deps.sh)"
K=("$KVLAB" --threads 1 --progress lines)
SMALL=(--hidden 64 --time-steps 40 --train-limit 640 --test-limit 300)
TINY=(--hidden 64 --time-steps 40 --train-limit 160 --test-limit 100)

# A short run: above chance, valid artifact, JSON summary.
expect_exit 0 "${K[@]}" --json snn-train "${SMALL[@]}" --epochs 1 -o "$T/a.h5"
$PY -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["accuracy"] > 0.3, d; assert d["spikes_per_sample"] > 0, d' "$T/stdout" \
  || fail "snn-train accuracy not above chance"
expect_stderr "kvlab snn-train: done in"
expect_exit 0 "$KVLAB" inspect --validate "$T/a.h5"
expect_stdout "valid: conforms to the snn-model v1 schema"
[ -f "$T/a.h5.ckpt.h5" ] || fail "no default checkpoint next to the output"
expect_exit 0 "$KVLAB" inspect "$T/a.h5.ckpt.h5"
expect_stdout "checkpoint"

# Every rule runs (timing with its penalty, surrogate on the LIF neuron with the count loss).
for rule in activation timing surrogate; do
  expect_exit 0 "${K[@]}" snn-train "${TINY[@]}" --epochs 1 --rule $rule \
    --loss count -o "$T/r_$rule.h5"
  expect_stdout "$rule count on fashion-mnist"
done
expect_exit 0 "${K[@]}" snn-train "${TINY[@]}" --epochs 1 --loss spike-train \
  --encoding rate --max-target-spikes 3 -o "$T/st.h5"

# Resume after an epoch == two epochs straight (bitwise).
expect_exit 0 "${K[@]}" snn-train "${SMALL[@]}" --epochs 2 -o "$T/two.h5"
expect_exit 0 "${K[@]}" snn-train "${SMALL[@]}" --epochs 1 --checkpoint "$T/ck.h5" -o "$T/one.h5"
expect_exit 0 "${K[@]}" snn-train "${SMALL[@]}" --epochs 2 --checkpoint "$T/ck.h5" --resume auto -o "$T/two_r.h5"
expect_stderr "resumed from"
cmp_weights() {
  $PY - "$1" "$2" <<'PY' || fail "weights differ: $1 $2"
import h5py, sys, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
for l in a["layers"]:
    for k in ("weight", "bias"):
        assert np.array_equal(a["layers"][l][k][()], b["layers"][l][k][()]), (l, k)
assert np.array_equal(a["history/test_accuracy"][()], b["history/test_accuracy"][()])
PY
}
cmp_weights "$T/two.h5" "$T/two_r.h5"

# SIGTERM mid-epoch: final checkpoint, exit 1, no model; --resume auto finishes identically.
LONG=(--hidden 64 --time-steps 40 --train-limit 4000 --test-limit 100 --epochs 1)
expect_exit 0 "${K[@]}" snn-train "${LONG[@]}" -o "$T/long.h5"
"${K[@]}" snn-train "${LONG[@]}" --checkpoint-every 5 -o "$T/long_r.h5" >"$T/stdout" 2>"$T/stderr" &
pid=$!
for _ in $(seq 1 600); do [ -f "$T/long_r.h5.ckpt.h5" ] && break; sleep 0.05; done
kill -TERM $pid
wait $pid; rc=$?
n_checks=$((n_checks + 1))
if [ $rc -eq 1 ]; then
  expect_stderr "stopped by a signal"
  [ -f "$T/long_r.h5" ] && fail "an interrupted run left a model behind"
  expect_exit 0 "${K[@]}" snn-train "${LONG[@]}" --resume auto -o "$T/long_r.h5"
  cmp_weights "$T/long.h5" "$T/long_r.h5"
else
  [ $rc -eq 0 ] || fail "SIGTERM run exited $rc"
  echo "note: the run finished before SIGTERM arrived; mid-epoch resume not exercised" >&2
fi

# Options that change training are refused on resume.
expect_exit 2 "${K[@]}" snn-train "${SMALL[@]}" --epochs 2 --lr 0.01 --checkpoint "$T/ck.h5" --resume auto -o "$T/x.h5"
expect_stderr "different options"

# N-MNIST: a generated tree in the real 5-byte format trains; a malformed file exits 3.
$PY - "$T/nmnist" <<'PY'
import os, sys, random
root = sys.argv[1]
random.seed(0)
def ev(x, y, p, t):
    return bytes([x, y, (p << 7) | ((t >> 16) & 0x7F), (t >> 8) & 0xFF, t & 0xFF])
for split, n in (("Train", 6), ("Test", 2)):
    for c in range(10):
        d = os.path.join(root, split, str(c)); os.makedirs(d, exist_ok=True)
        for k in range(n):
            evs = sorted((random.randrange(300000), c * 3 + random.randrange(3), random.randrange(34), random.randrange(2)) for _ in range(200))
            with open(os.path.join(d, "%05d.bin" % (c * 100 + k)), "wb") as f:
                f.write(b"".join(ev(x, y, p, t) for t, x, y, p in evs))
PY
expect_exit 0 "${K[@]}" snn-train --data "$T/nmnist" --hidden 32 --time-steps 30 --epochs 1 -o "$T/nm.h5"
expect_stdout "on n-mnist"
expect_exit 0 "$KVLAB" inspect --validate "$T/nm.h5"
printf 'abcdefg' > "$T/nmnist/Train/3/00999.bin"
expect_exit 3 "${K[@]}" snn-train --data "$T/nmnist" --hidden 32 --time-steps 30 --epochs 1 -o "$T/nm2.h5"
expect_stderr "00999.bin: 7 bytes is not a multiple of 5"
[ -f "$T/nm2.h5" ] && fail "a failed run left an output"

# Usage errors: missing data dir, bad enum, existing output.
expect_exit 2 "${K[@]}" snn-train --data "$T/nowhere" -o "$T/y.h5"
expect_stderr "--data"
expect_exit 2 "${K[@]}" snn-train --rule hebbian -o "$T/y.h5"
expect_exit 2 "${K[@]}" snn-train "${SMALL[@]}" -o "$T/a.h5"
expect_stderr "already exists; pass --force"
ls "$T" | grep -q partial && fail "partial files left behind"
pass
