#!/usr/bin/env bash
# End-to-end: import-hf / import-gguf / export-hf on the golden models, corrupt inputs (exit 3 with
# a precise message, never a crash), output-path hygiene, and - when a python with transformers is
# available - export-hf's output loaded by transformers giving the golden logits.
source "$(dirname "$0")/lib.sh"
G="$SRC/tests/data/golden"

# --- every golden model imports, validates, exports --------------------------------------------
for m in llama-gqa llama-bf16 llama-untied mistral qwen2; do
  expect_exit 0 "$KVLAB" --progress none import-hf "$G/$m" -o "$T/$m.h5"
  expect_stdout "$T/$m.h5: "
  expect_exit 0 "$KVLAB" --progress none export-hf "$T/$m.h5" -o "$T/hf-$m"
  [ -f "$T/hf-$m/config.json" ] && [ -f "$T/hf-$m/model.safetensors" ] || fail "export-hf $m wrote no files"
done
expect_exit 0 "$KVLAB" --json --progress none import-hf "$G/mistral" -o "$T/mistral.h5" --force
expect_stdout '"tensors": 21'
expect_stdout 'model.safetensors.index.json'

for f in qwen2.h5 llama-bf16.h5; do
  expect_exit 0 "$KVLAB" inspect --validate "$T/$f"
  expect_stdout "valid: conforms to the model v1 schema"
done
# (every GGUF type is covered by the unit tests; here the binary's path for two)
for q in f32 q4_0; do
  expect_exit 0 "$KVLAB" --progress none import-gguf "$G/gguf/llama-untied-$q.gguf" -o "$T/gguf-$q.h5"
done
expect_exit 0 "$KVLAB" inspect --validate "$T/gguf-q4_0.h5"
expect_exit 0 "$KVLAB" --progress none export-hf "$T/gguf-f32.h5" -o "$T/hf-gguf-f32"

# --- output hygiene ------------------------------------------------------------------------------
expect_exit 2 "$KVLAB" export-hf "$T/qwen2.h5" -o "$T/hf-qwen2"
expect_stderr "directory is not empty; pass --force"
expect_exit 0 "$KVLAB" --progress none export-hf "$T/qwen2.h5" -o "$T/hf-qwen2" --force
expect_exit 2 "$KVLAB" export-hf "$T/qwen2.h5" -o "$T/qwen2.h5" --force
expect_stderr "is not a directory"
expect_exit 2 "$KVLAB" import-hf "$G/qwen2" -o "$T/qwen2.h5"
expect_stderr "already exists; pass --force"
expect_exit 2 "$KVLAB" import-hf "$G/qwen2" -o "$T/x.h5" --dtype int8
expect_exit 3 "$KVLAB" import-hf "$T/nowhere" -o "$T/x.h5"
expect_stderr "nowhere: not a directory"
expect_exit 3 "$KVLAB" export-hf "$T/missing.h5" -o "$T/hf-missing"

# --- corrupt safetensors: each exits 3 with a precise message ------------------------------------
# make_bad NAME MODE: a copy of the qwen2 checkpoint with model.safetensors damaged one way.
make_bad() {
  mkdir -p "$T/bad-$1" && cp "$G/qwen2/config.json" "$T/bad-$1/"
  python3 - "$G/qwen2/model.safetensors" "$T/bad-$1/model.safetensors" "$2" <<'PY'
import json, struct, sys
src, dst, mode = sys.argv[1:]
raw = open(src, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
h, data = json.loads(raw[8:8 + n]), raw[8 + n:]
def out(h, data, n_override=None):
    t = json.dumps(h).encode()
    open(dst, "wb").write(struct.pack("<Q", n_override if n_override is not None else len(t)) + t + data)
if mode == "truncated":
    open(dst, "wb").write(raw[: len(raw) // 2])
elif mode == "badjson":
    t = json.dumps(h).encode()[:-7]
    open(dst, "wb").write(struct.pack("<Q", len(t)) + t + data)
elif mode == "absurd":
    out(h, data, n_override=1 << 40)
elif mode == "oob":
    e = h["model.norm.weight"]; b, x = e["data_offsets"]; e["data_offsets"] = [len(data) + 4, len(data) + 4 + x - b]
    out(h, data)
elif mode == "overlap":
    a, b = h["model.norm.weight"], h["model.embed_tokens.weight"]
    size = a["data_offsets"][1] - a["data_offsets"][0]
    a["data_offsets"] = [b["data_offsets"][0] + 4, b["data_offsets"][0] + 4 + size]
    out(h, data)
elif mode == "missing":
    del h["model.layers.1.mlp.down_proj.weight"]
    out(h, data)
elif mode == "shape":
    e = h["model.norm.weight"]; e["shape"] = [32, 2]
    out(h, data)
elif mode == "dtype":
    e = h["model.norm.weight"]; e["dtype"] = "I32"
    out(h, data)
PY
}
check_bad() {  # check_bad MODE MESSAGE
  make_bad "$1" "$1"
  expect_exit 3 "$KVLAB" --progress none import-hf "$T/bad-$1" -o "$T/bad-$1.h5"
  expect_stderr "$2"
  [ -e "$T/bad-$1.h5" ] && fail "bad-$1: an output file was left"
  true
}
check_bad truncated "run past the end of the data section"
check_bad badjson "the header is not valid JSON"
check_bad absurd "exceeds the 100000000 byte limit"
check_bad oob "tensor model.norm.weight: data_offsets"
check_bad overlap "overlap; the header is corrupt"
check_bad missing "tensor model.layers.1.mlp.down_proj.weight is missing"
check_bad shape "tensor model.norm.weight has shape [32, 2] but the config needs [64]"
check_bad dtype "tensor model.norm.weight has dtype I32; kvlab imports F32, BF16 and F16"
expect_stderr "model.safetensors"

# --- malformed GGUF -------------------------------------------------------------------------------
python3 - "$G/gguf/llama-untied-q4_0.gguf" "$T" <<'PY'
import struct, sys
raw = open(sys.argv[1], "rb").read(); t = sys.argv[2]
open(f"{t}/magic.gguf", "wb").write(b"GGML" + raw[4:])
open(f"{t}/trunc.gguf", "wb").write(raw[: len(raw) // 2])
open(f"{t}/counts.gguf", "wb").write(raw[:8] + struct.pack("<Q", 1 << 40) + raw[16:])
PY
expect_exit 3 "$KVLAB" import-gguf "$T/magic.gguf" -o "$T/g.h5"
expect_stderr 'magic is "GGML" but a GGUF file starts with "GGUF"'
expect_exit 3 "$KVLAB" import-gguf "$T/trunc.gguf" -o "$T/g.h5"
expect_stderr "the file is truncated"
expect_exit 3 "$KVLAB" import-gguf "$T/counts.gguf" -o "$T/g.h5"
expect_stderr "tensor count 1099511627776 cannot fit"
expect_exit 3 "$KVLAB" import-gguf "$G/gguf/quant-types.gguf" -o "$T/g.h5"
expect_stderr "metadata key llama.embedding_length is missing"

# --- transformers loads the export and gives the golden logits (optional) -----------------------
HFPY=""
for cand in /tmp/venv-golden/bin/python python3; do
  if "$cand" -c 'import transformers, torch, safetensors' 2>/dev/null; then HFPY=$cand; break; fi
done
if [ -n "$HFPY" ]; then
  pairs=()
  for m in llama-gqa llama-bf16 llama-untied mistral qwen2; do pairs+=("$T/hf-$m" "$G/$m"); done
  pairs+=("$T/hf-gguf-f32" "$G/llama-untied")   # import-gguf -> export-hf: the original weights
  "$HFPY" "$SRC/tests/cli/check_hf_export.py" "${pairs[@]}" >"$T/stdout" 2>"$T/stderr" \
    || fail "transformers check of export-hf's output"
  n_checks=$((n_checks + 6)); cat "$T/stdout"
else
  echo "SKIP: no python with transformers+torch+safetensors (/tmp/venv-golden or python3); the"
  echo "      transformers load of export-hf's output was not checked (see scripts/make-golden-models.py)"
fi

ls "$T" | grep -q partial && fail "partial files left behind"
pass
