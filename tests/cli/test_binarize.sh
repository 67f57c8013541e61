#!/usr/bin/env bash
# End-to-end: kvlab binarize on the bundled byte-level model (import-hf -> binarize --steps 0 and a
# short distillation -> eval and generate on the packed artifact; bits per weight vs file size;
# inspect --validate), the memory options (bfloat16 state, gradient checkpointing, micro-batches)
# and scripts/bench-binarize-train at a tiny shape, usage/format errors, SIGTERM -> checkpoint ->
# --resume auto.
source "$(dirname "$0")/lib.sh"
export KVLAB_THREADS=1
M="$SRC/data/kjv-byte-llama"
HELD="$M/heldout.txt"
head -c 20000 "$HELD" > "$T/train.txt"

expect_exit 0 "$KVLAB" --progress none import-hf "$M" -o "$T/fp.h5"
expect_exit 0 "$KVLAB" --progress none --json binarize "$T/fp.h5" --steps 0 -o "$T/init.h5"
$PY - "$T/init.h5" "$T/stdout" <<'PY' || fail "bits per weight / file size"
import h5py, json, os, sys
path, out = sys.argv[1], json.load(open(sys.argv[2]))
with h5py.File(path, "r") as f:
    g = f["linears"]
    assert g.attrs["method"] == "mos" and g.attrs["experts"] == 4
    bpw = float(g.attrs["bits_per_weight"])
    assert 1.0 < bpw < 2.0, bpw  # hidden 192: scales and routers weigh more than at 7B (1.04); 1.82 here
    n = int(g.attrs["linear_weights"])
    payload = 0
    for name, d in f["weights"].items():
        assert "_proj" not in name, name  # every block linear is packed
        payload += d.size * d.dtype.itemsize
    lin = 0
    for name, grp in g.items():
        assert grp.attrs["kind"] == "binary-mos"
        assert grp["packed"].dtype == "uint8" and grp["s_in"].dtype == "float16"
        lin += sum(grp[k].size * grp[k].dtype.itemsize for k in grp)
    assert lin == int(g.attrs["linear_bytes"]), (lin, g.attrs["linear_bytes"])
    assert abs(8 * lin / n - bpw) < 1e-9
size = os.path.getsize(path)
assert payload + lin <= size < payload + lin + 256 * 1024, (size, payload, lin)
assert out["bits_per_weight"] == bpw and out["steps"] == 0
PY
expect_exit 0 "$KVLAB" inspect --validate "$T/init.h5"
expect_stdout "valid"
expect_exit 0 "$KVLAB" --progress none eval "$T/init.h5" --data "$HELD" --seq-len 128 --max-windows 4
expect_stdout "ppl"
expect_exit 0 "$KVLAB" --progress none generate "$T/init.h5" -p "In the beginning" -n 8
# Short distillation (OneBit-style, 4 steps) and a sign baseline; both load and evaluate.
expect_exit 0 "$KVLAB" --progress none binarize "$T/fp.h5" --data "$T/train.txt" --experts 1 \
  --seq-len 64 --batch-size 2 --steps 4 --lr 1e-3 -o "$T/onebit.h5"
expect_stdout "4 of 4 steps"
[ -e "$T/onebit.h5.checkpoint.h5" ] && fail "checkpoint left after success"
# Memory options: bfloat16 state with stochastic rounding, checkpointed blocks, micro-batches of 1.
expect_exit 0 "$KVLAB" --progress none --json binarize "$T/fp.h5" --data "$T/train.txt" --experts 1 \
  --seq-len 64 --batch-size 2 --steps 4 --lr 1e-3 --state-dtype bfloat16 --grad-checkpoint on \
  --micro-batch-size 1 -o "$T/bf16.h5"
$PY - "$T/stdout" <<'PY' || fail "bfloat16-state report"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["state_dtype"] == "bfloat16" and r["grad_checkpoint"] is True, r
assert r["micro_batch_size"] == 1 and r["tokens_per_step"] == 128 and r["steps"] == 4, r
assert r["peak_device_bytes"] == 0 and r["seconds_per_step"] > 0, r  # CPU: no CUDA memory
PY
expect_exit 0 "$KVLAB" --progress none eval "$T/bf16.h5" --data "$HELD" --seq-len 128 --max-windows 2
expect_stdout "ppl"
# The benchmark script end to end at a tiny shape on the CPU (one JSON object, every run ok).
expect_exit 0 "$PY" "$SRC/scripts/bench-binarize-train" --kvlab "$KVLAB" --device cpu --shape tiny \
  --seq-len 32 --batch-size 2 --steps 2 --configs fp32,fp32-ckpt,bf16-ckpt,bf16-ckpt-full \
  --workdir "$T/bench"
$PY - "$T/stdout" <<'PY' || fail "bench-binarize-train output"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["shape"] == "tiny" and r["steps"] == 2 and len(r["runs"]) == 4, r
for run in r["runs"]:
    assert run["status"] == "ok" and run["steps"] == 2 and run["peak_device_bytes"] == 0, run
    assert run["seconds_per_step"] > 0 and run["tokens_per_step"] == 64, run
assert [x["micro_batch_size"] for x in r["runs"]] == [0, 0, 1, 0], r
PY
expect_exit 0 "$KVLAB" --progress none binarize "$T/fp.h5" --method sign --steps 0 -o "$T/sign.h5"
expect_exit 0 "$KVLAB" --progress none eval "$T/sign.h5" --data "$HELD" --seq-len 128 --max-windows 2

# Usage errors (2) and format errors (3).
expect_exit 2 "$KVLAB" binarize "$T/fp.h5" -o "$T/x.h5"
expect_stderr "--data is required"
expect_exit 2 "$KVLAB" binarize "$T/fp.h5" --steps 0 --experts 0 -o "$T/x.h5"
expect_exit 2 "$KVLAB" binarize "$T/fp.h5" --steps 0 --method ternary -o "$T/x.h5"
expect_exit 2 "$KVLAB" binarize "$T/fp.h5" --steps 0 --state-dtype float16 -o "$T/x.h5"
expect_stderr "--state-dtype"
expect_exit 2 "$KVLAB" binarize "$T/fp.h5" --steps 0 --grad-checkpoint yes -o "$T/x.h5"
expect_stderr "--grad-checkpoint"
expect_exit 2 "$KVLAB" binarize "$T/fp.h5" --steps 0 --micro-batch-size -1 -o "$T/x.h5"
expect_exit 2 "$KVLAB" binarize "$T/fp.h5" --steps 0 -o "$T/init.h5"
expect_stderr "already exists"
expect_exit 2 "$KVLAB" binarize "$T/fp.h5" --data "$T/train.txt" --seq-len 100000 -o "$T/x.h5"
expect_stderr "--seq-len"
expect_exit 3 "$KVLAB" binarize "$T/train.txt" --steps 0 -o "$T/x.h5"
expect_exit 2 "$KVLAB" binarize "$T/init.h5" --steps 0 -o "$T/x.h5"
expect_stderr "already has"
[ -e "$T/x.h5" ] && fail "output written on error"

# SIGTERM: checkpoint written, exit 1 with the remedy; --resume auto completes the run.
"$KVLAB" --progress none binarize "$T/fp.h5" --data "$T/train.txt" --seq-len 64 --batch-size 2 \
  --steps 400 -o "$T/sig.h5" >"$T/stdout" 2>"$T/stderr" &
pid=$!
sleep 4
kill -TERM $pid
wait $pid; rc=$?
n_checks=$((n_checks + 1))
[ "$rc" -eq 1 ] || fail "SIGTERM: expected exit 1, got $rc"
expect_stderr "--resume auto"
[ -e "$T/sig.h5.checkpoint.h5" ] || fail "no checkpoint after SIGTERM"
[ -e "$T/sig.h5" ] && fail "output written by a stopped run"
expect_exit 2 "$KVLAB" --progress none binarize "$T/fp.h5" --data "$T/train.txt" --seq-len 64 \
  --batch-size 2 --steps 401 --resume auto -o "$T/sig.h5"
expect_stderr "written with options"
pass
