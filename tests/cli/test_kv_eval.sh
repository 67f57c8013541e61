#!/usr/bin/env bash
# End-to-end: kvlab kv-eval on the bundled fixture model at tiny sizes: the grid table, --json,
# the kv-report artifact (inspect --validate, h5py agrees with the JSON), scripts/plot, and the
# refusals (unknown method, bad budgets, absolute budget above the context, wrong artifact kind).
source "$(dirname "$0")/lib.sh"

expect_exit 0 "$KVLAB" import-hf "$SRC/data/kjv-byte-llama" -o "$T/m.h5"
DATA="$SRC/data/kjv-byte-llama/heldout.txt"
SMALL=(--retrieval-context 400 --retrieval-depth 0.5 --retrieval-samples 2 --ppl-prompt 96
       --ppl-continuation 16 --ppl-samples 2 --snapkv-window 16 --pyramidkv-window 16)

expect_exit 0 "$KVLAB" --threads 1 --progress none kv-eval "$T/m.h5" --data "$DATA" \
  --method full,snapkv,streaming --budget 0.25,64 --task retrieval,ppl "${SMALL[@]}" -o "$T/r.h5"
expect_stdout "retrieval  full"
expect_stdout "retrieval  snapkv        0.25"
expect_stdout "ppl        streaming       64"
[ "$(grep -c '^retrieval\|^ppl' "$T/stdout")" -eq 10 ] || fail "expected 10 cells (2 tasks x (1 + 2 x 2))"
expect_exit 0 "$KVLAB" inspect --validate "$T/r.h5"
expect_stdout "valid: conforms to the kv-report v1 schema"

expect_exit 0 "$KVLAB" --json --threads 1 --progress none kv-eval "$T/m.h5" --data "$DATA" \
  --method full,snapkv,streaming --budget 0.25,64 --task retrieval,ppl "${SMALL[@]}"
$PY - "$T/stdout" "$T/r.h5" <<'PY' || fail "kv-eval --json disagrees with the report"
import json, sys, h5py
j = json.load(open(sys.argv[1]))["cells"]
with h5py.File(sys.argv[2]) as f:
    assert f.attrs["kvlab.kind"] == "kv-report"
    c = f["cells"]
    assert len(j) == int(c.attrs["count"]) == 10
    for i, cell in enumerate(j):
        assert c.attrs["method"][i] == cell["method"] and c.attrs["task"][i] == cell["task"]
        assert abs(c["score"][i] - cell["score"]) < 1e-9, (i, c["score"][i], cell["score"])
        assert c["kv_bytes_peak"][i] == cell["kv_bytes_peak"]
    full = [x for x in j if x["method"] == "full" and x["task"] == "ppl"][0]
    snap = [x for x in j if x["method"] == "snapkv" and x["task"] == "ppl" and x["budget"] == "0.25"][0]
    assert snap["budget_tokens"] == 24 and snap["kv_bytes_peak"] < full["kv_bytes_peak"]
    assert [x for x in j if x["method"] == "snapkv" and x["budget"] == "64"][0]["budget_tokens"] == 64
PY

# scripts/plot: accuracy- and memory-vs-budget PNGs.
if $PY -c 'import matplotlib' 2>/dev/null; then
  expect_exit 0 "$PY" "$SRC/scripts/plot" "$T/r.h5" -o "$T/plots"
  [ -s "$T/plots/quality-vs-budget.png" ] && [ -s "$T/plots/memory-vs-budget.png" ] || fail "plots missing"
  expect_exit 3 "$PY" "$SRC/scripts/plot" "$T/m.h5" -o "$T/plots2"
  expect_stderr "kind"
fi

# Refusals.
expect_exit 2 "$KVLAB" kv-eval "$T/m.h5" --data "$DATA" --method snapkvv --task ppl
expect_stderr "unknown KV-cache method"
expect_exit 2 "$KVLAB" kv-eval "$T/m.h5" --data "$DATA" --method snapkv --budget 1.5 --task ppl
expect_stderr "a ratio must be in (0, 1]"
expect_exit 2 "$KVLAB" kv-eval "$T/m.h5" --data "$DATA" --method snapkv --budget 0 --task ppl
expect_exit 2 "$KVLAB" kv-eval "$T/m.h5" --data "$DATA" --method snapkv --budget 100000 --task ppl --ppl-prompt 64
expect_stderr "above the context of task ppl (64 tokens)"
expect_exit 3 "$KVLAB" kv-eval "$T/r.h5" --data "$DATA" --method full --task ppl
expect_stderr "kv-report"
expect_exit 2 "$KVLAB" kv-eval "$T/m.h5" --method full --task ppl
expect_stderr "--data"
expect_exit 2 "$KVLAB" kv-eval "$T/m.h5" --data "$DATA" --method full --task ppl -o "$T/r.h5"
expect_stderr "exists"
pass
