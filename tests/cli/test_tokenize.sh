#!/usr/bin/env bash
# kvlab tokenize: text -> uint16/uint32 .bin or HDF5 with a model artifact's tokenizer or a GGUF
# vocabulary; the files read back through eval; refusals. (Exactness: test_tokenizer_golden.cpp.)
source "$(dirname "$0")/lib.sh"

expect_exit 0 "$KVLAB" import-hf "$SRC/data/kjv-byte-llama" -o "$T/byte.h5"
head -c 20000 "$SRC/data/kjv-byte-llama/heldout.txt" > "$T/text.txt"

# Byte-level model: uint16 ids = bytes; eval on the .bin equals eval on the text.
expect_exit 0 "$KVLAB" --progress none tokenize "$T/byte.h5" --text "$T/text.txt" -o "$T/t.bin"
expect_stdout "20000 tokens (uint16, byte)"
[ "$(stat -c %s "$T/t.bin")" = 40000 ] || fail "byte-level .bin is not 2 bytes per byte"
expect_exit 0 "$KVLAB" --json --progress none eval "$T/byte.h5" --data "$T/t.bin" --seq-len 256 --max-windows 3
cp "$T/stdout" "$T/a.json"
expect_exit 0 "$KVLAB" --json --progress none eval "$T/byte.h5" --data "$T/text.txt" --seq-len 256 --max-windows 3
$PY -c 'import json,sys; a=json.load(open(sys.argv[1])); b=json.load(open(sys.argv[2])); assert abs(a["ppl"]-b["ppl"])<1e-9, (a, b)' \
  "$T/a.json" "$T/stdout" || fail "eval on tokenize's .bin differs from eval on the text"

# GPT-2 vocabulary from a GGUF file (llama.cpp's vocab-only file, stored in the test data).
$PY - "$SRC/tests/data/tokenizers/ggml-vocab-gpt-2.gguf.h5" "$T/gpt2.gguf" <<'PY'
import sys, h5py
open(sys.argv[2], "wb").write(h5py.File(sys.argv[1])["gguf"][()].tobytes())
PY
printf 'Hello world<|endoftext|> 2024' > "$T/hello.txt"
expect_exit 0 "$KVLAB" --json --progress none tokenize "$T/gpt2.gguf" --text "$T/hello.txt" -o "$T/h.bin"
expect_stdout '"dtype":"uint16"'
$PY -c 'import sys,struct; b=open(sys.argv[1],"rb").read(); ids=list(struct.unpack("<%dH"%(len(b)//2), b)); assert ids==[15496,995,50256,48609], ids' \
  "$T/h.bin" || fail "GPT-2 ids differ from HF's"
expect_exit 0 "$KVLAB" --progress none tokenize "$T/gpt2.gguf" --text "$T/hello.txt" -o "$T/h.h5" --format h5 --add-eos
$PY -c 'import sys,h5py; t=h5py.File(sys.argv[1])["tokens"]; assert t.dtype=="uint16" and list(t[()])==[15496,995,50256,48609,50256], t[()]' \
  "$T/h.h5" || fail "--format h5 / --add-eos"

# Refusals: existing output (2), missing --text (2), a GGUF without a vocabulary is not a tokenizer.
expect_exit 2 "$KVLAB" tokenize "$T/byte.h5" --text "$T/text.txt" -o "$T/t.bin"
expect_stderr "--force"
expect_exit 2 "$KVLAB" tokenize "$T/byte.h5" -o "$T/u.bin"
expect_exit 2 "$KVLAB" tokenize "$T/byte.h5" --text "$T/text.txt" -o "$T/u.bin" --format csv
[ ! -e "$T/u.bin" ] || fail "a refused run left an output"
pass
