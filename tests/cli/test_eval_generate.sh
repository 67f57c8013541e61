#!/usr/bin/env bash
# End-to-end: kvlab eval and generate on a golden transformers model imported with import-hf
# (byte-level vocabulary of 256, so raw text works), their outputs, artifacts and refusals.
source "$(dirname "$0")/lib.sh"

expect_exit 0 "$KVLAB" import-hf "$SRC/tests/data/golden/qwen2" -o "$T/m.h5"
printf 'In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness was upon the face of the deep.%.0s' 1 2 3 > "$T/text.txt"

# eval on raw text: one line, a valid eval-report, JSON that parses and agrees with the artifact.
expect_exit 0 "$KVLAB" --threads 1 --progress none eval "$T/m.h5" --data "$T/text.txt" --seq-len 64 -o "$T/r.h5"
expect_stdout "ppl "
expect_stdout "6 windows x 64 tokens"
expect_exit 0 "$KVLAB" inspect --validate "$T/r.h5"
expect_stdout "valid: conforms to the eval-report v1 schema"
expect_exit 0 "$KVLAB" --json --threads 1 --progress none eval "$T/m.h5" --data "$T/text.txt" --seq-len 64 --chunk-size 16 --batch-size 4
$PY - "$T/stdout" "$T/r.h5" <<'PY' || fail "eval --json disagrees with the report"
import json, sys, h5py, math
j = json.load(open(sys.argv[1]))
with h5py.File(sys.argv[2]) as f:
    assert f.attrs["kvlab.kind"] == "eval-report"
    assert abs(f.attrs["ppl"] - j["ppl"]) < 1e-3 * j["ppl"], (f.attrs["ppl"], j["ppl"])
    wl = f["window_loss"][:]
    assert len(wl) == j["windows"] == 6
    assert abs(math.exp(wl.mean()) - j["ppl"]) < 1e-3 * j["ppl"]
    assert f["params"].attrs["seq_len"] == 64 and "non-overlapping" in f["params"].attrs["protocol"]
PY
# The same data as a nanoGPT uint16 .bin gives the same perplexity.
$PY - "$T/text.txt" "$T/text.bin" <<'PY'
import sys, struct
b = open(sys.argv[1], "rb").read()
open(sys.argv[2], "wb").write(struct.pack("<%dH" % len(b), *b))
PY
expect_exit 0 "$KVLAB" --json --progress none eval "$T/m.h5" --data "$T/text.bin" --seq-len 64
$PY -c 'import json,sys; a=json.load(open(sys.argv[1])); assert a["windows"]==6' "$T/stdout" || fail "bin windows"

# Refusals: too-short data (2), out-of-vocabulary ids (3), existing output (2), missing data (2).
expect_exit 2 "$KVLAB" eval "$T/m.h5" --data "$T/text.txt" --seq-len 100000
expect_stderr "fewer than one window of --seq-len 100000"
printf '\x00\x10\x00\x00' > "$T/big.bin"
expect_exit 3 "$KVLAB" eval "$T/m.h5" --data "$T/big.bin" --data-format bin-u32 --seq-len 2
expect_stderr "token id 4096 at index 0 is outside the model's vocabulary [0, 256)"
expect_exit 2 "$KVLAB" eval "$T/m.h5" --data "$T/text.txt" --seq-len 64 -o "$T/r.h5"
expect_stderr "already exists; pass --force"
expect_exit 2 "$KVLAB" eval "$T/m.h5" --data "$T/nope.txt"
expect_exit 3 "$KVLAB" eval "$T/text.txt" --data "$T/text.txt"

# generate: text in/out, a batch, JSON, seeded sampling reproducible, bad ids refused.
expect_exit 0 "$KVLAB" --progress none generate "$T/m.h5" -p "In the" -p "And God" -n 8
[ "$(wc -l < "$T/stdout")" -eq 2 ] || fail "generate printed $(wc -l < "$T/stdout") lines for 2 prompts"
expect_stdout "In the"
expect_exit 0 "$KVLAB" --json --seed 5 --progress none generate "$T/m.h5" --prompt-ids 10,20,30 -n 6 --temperature 0.8 --top-k 50 --top-p 0.9
cp "$T/stdout" "$T/s1.json"
expect_exit 0 "$KVLAB" --json --seed 5 --progress none generate "$T/m.h5" --prompt-ids 10,20,30 -n 6 --temperature 0.8 --top-k 50 --top-p 0.9
$PY - "$T/s1.json" "$T/stdout" <<'PY' || fail "seeded sampling is not reproducible"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
assert a["outputs"][0]["tokens"] == b["outputs"][0]["tokens"] and len(a["outputs"][0]["tokens"]) == 6
PY
expect_exit 0 "$KVLAB" --progress none generate "$T/m.h5" --prompt-ids 1,2 -n 3 --stop-token 7 --output-ids
expect_exit 2 "$KVLAB" generate "$T/m.h5" --prompt-ids 1,x
expect_stderr "expected comma-separated non-negative token ids"
expect_exit 2 "$KVLAB" generate "$T/m.h5" --prompt-ids 1 --top-p 0
expect_exit 2 "$KVLAB" generate "$T/m.h5"
expect_stderr "give at least one --prompt or --prompt-ids"
expect_exit 2 "$KVLAB" generate "$T/m.h5" --prompt-ids 300
expect_stderr "outside the model's vocabulary"

# bench-decode on a tiny shape (the GPU run uses scripts/bench-decode).
expect_exit 0 "$KVLAB" --json --progress none bench-decode --config "$SRC/tests/data/golden/llama-gqa/config.json" --dtype float32 --batch 2 --context 16 --decode-tokens 4 --repeats 1 --hbm-gbps 100
$PY -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["decode_tokens_per_second"]>0 and d["roofline_fraction"]>0' "$T/stdout" || fail "bench-decode JSON"

ls "$T" | grep -q partial && fail "partial files left behind"
pass
