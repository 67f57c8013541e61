#!/usr/bin/env bash
# End-to-end: kvlab prune-blocks on the trained fixture: a smaller model artifact that validates,
# names what was removed, and that eval, generate and export-hf accept (and transformers loads,
# with the same loss as kvlab); refusals for too many blocks and too-short calibration data.
source "$(dirname "$0")/lib.sh"

expect_exit 0 "$KVLAB" --progress none import-hf "$SRC/data/kjv-byte-llama" -o "$T/kjv.h5"
CAL="$SRC/tests/data/sleb/calib.txt"

# SLEB, 2 of 8 blocks, a few short windows (fast).
expect_exit 0 "$KVLAB" --json --threads 1 --progress none prune-blocks "$T/kjv.h5" --calib "$CAL" \
  --remove-ratio 0.2 --calib-windows 3 --calib-len 256 --dtype float32 -o "$T/p.h5"
$PY - "$T/stdout" "$T/p.h5" "$T/kjv.h5" <<'PY' || fail "prune-blocks JSON / artifact"
import json, os, sys, h5py
j = json.load(open(sys.argv[1]))
assert j["metric"] == "sleb" and len(j["removed"]) == 2 and j["blocks_after"] == 6, j
assert 0 not in j["removed"] and 7 not in j["removed"], j  # protected first/last blocks
assert j["plain_block_forwards"] == 6 * 7 + 5 * 6 and j["block_forwards"] == 8 + 21 + 15, j
assert os.path.getsize(sys.argv[2]) < os.path.getsize(sys.argv[3])
with h5py.File(sys.argv[2]) as f:
    assert f.attrs["kvlab.kind"] == "model"
    p = f["params"].attrs
    assert p["num_hidden_layers"] == 6
    assert sorted(list(p["original_layer_indices"]) + j["removed"]) == list(range(8))
    g = f["prune_blocks"]
    assert list(g.attrs["removed_original_indices"]) == j["removed"]
    assert g["scores"].shape == (2, 8)
    assert "model.layers.5.mlp.up_proj.weight" in f["weights"] and "model.layers.6.mlp.up_proj.weight" not in f["weights"]
    assert f["provenance/inputs/0"].attrs["kind"] == "model"
PY
expect_exit 0 "$KVLAB" inspect --validate "$T/p.h5"
expect_stdout "valid"

# The pruned model works everywhere a model does.
expect_exit 0 "$KVLAB" --json --threads 1 --progress none eval "$T/p.h5" --data "$SRC/data/kjv-byte-llama/heldout.txt" \
  --seq-len 256 --max-windows 2 --dtype float32
cp "$T/stdout" "$T/eval.json"
expect_exit 0 "$KVLAB" --threads 1 --progress none generate "$T/p.h5" --prompt "In the beginning" --max-new-tokens 8
expect_exit 0 "$KVLAB" --progress none export-hf "$T/p.h5" -o "$T/hf"
$PY -c 'import json,sys; c=json.load(open(sys.argv[1])); assert c["num_hidden_layers"]==6, c' "$T/hf/config.json" \
  || fail "exported config.json does not say 6 layers"

# Every metric and the plain search run; ppl-oneshot/plain agree with the cached search.
for m in ppl-oneshot block-influence angular; do
  expect_exit 0 "$KVLAB" --json --threads 1 --progress none prune-blocks "$T/kjv.h5" --calib "$CAL" --metric $m \
    --remove 2 --calib-windows 2 --calib-len 128 --dtype float32 -o "$T/p-$m.h5"
  expect_stdout "\"metric\":\"$m\""
done
expect_exit 0 "$KVLAB" --json --threads 1 --progress none prune-blocks "$T/kjv.h5" --calib "$CAL" --search plain \
  --remove-ratio 0.2 --calib-windows 3 --calib-len 256 --dtype float32 -o "$T/p-plain.h5"
$PY - "$T/stdout" "$T/p.h5" <<'PY' || fail "plain and cached searches disagree"
import json, sys, h5py
j = json.load(open(sys.argv[1]))
with h5py.File(sys.argv[2]) as f:
    assert list(f["prune_blocks"].attrs["removed_original_indices"]) == j["removed"], j
assert j["block_forwards"] == j["plain_block_forwards"] == 72, j
PY

# The batched search (groups of 4 candidates: 6 = 4 + 2, 5 = 4 + 1) picks what the cached one
# picks, in fewer block calls: dense 8 x 3 window batches, sweeps (6 + 2) + (5 + 1) calls per
# window batch, plus 3 calls per block forward of the candidates re-scored alone.
expect_exit 0 "$KVLAB" --json --threads 1 --progress none prune-blocks "$T/kjv.h5" --calib "$CAL" --search batched \
  --batch-candidates 4 --remove-ratio 0.2 --calib-windows 3 --calib-len 256 --dtype float32 -o "$T/p-batched.h5"
$PY - "$T/stdout" "$T/p.h5" "$T/p-batched.h5" <<'PY' || fail "batched and cached searches disagree"
import json, sys, h5py
j = json.load(open(sys.argv[1]))
with h5py.File(sys.argv[2]) as f:
    cached = list(f["prune_blocks"].attrs["removed_original_indices"])
    cached_scores = f["prune_blocks/scores"][()]
assert j["removed"] == cached, (j, cached)
assert j["search"] == "batched" and j["candidate_group"] == 4 and j["rescored"] >= 2, j
assert j["fallback_rounds"] == 0 and j["max_batch_deviation"] < 1e-6, j
extra = j["block_forwards"] - 44
assert extra >= 2 and j["block_calls"] == 24 + 3 * 14 + 3 * extra < 44 * 3, j
with h5py.File(sys.argv[3]) as f:
    g = f["prune_blocks"]
    assert g.attrs["search"] == "batched" and g.attrs["candidate_group"] == 4, dict(g.attrs)
    s = g["scores"][()]
    ok = cached_scores == cached_scores  # not NaN
    assert ((s != s) == ~ok).all() and (abs(s[ok] - cached_scores[ok]) <= 1e-6 * abs(cached_scores[ok])).all()
PY
expect_exit 2 "$KVLAB" prune-blocks "$T/kjv.h5" --calib "$CAL" --remove 1 --search batched --tie-tolerance 2 -o "$T/x.h5"
expect_stderr "tie-tolerance"

# Refusals: too many blocks (2), more than the unprotected ones (2), calibration shorter than a
# window (2), both --remove and --remove-ratio (2), existing output (2), a non-model input (3).
expect_exit 2 "$KVLAB" prune-blocks "$T/kjv.h5" --calib "$CAL" --remove 9 -o "$T/x.h5"
expect_stderr "cannot remove 9 blocks: the model has only 8"
expect_exit 2 "$KVLAB" prune-blocks "$T/kjv.h5" --calib "$CAL" --remove 7 -o "$T/x.h5"
expect_stderr "at most 6 can be removed"
head -c 100 "$CAL" > "$T/short.txt"
expect_exit 2 "$KVLAB" prune-blocks "$T/kjv.h5" --calib "$T/short.txt" --remove 1 -o "$T/x.h5"
expect_stderr "short.txt: the calibration data has 100 tokens"
expect_exit 2 "$KVLAB" prune-blocks "$T/kjv.h5" --calib "$CAL" --remove 1 --remove-ratio 0.2 -o "$T/x.h5"
expect_exit 2 "$KVLAB" prune-blocks "$T/kjv.h5" --calib "$CAL" --remove 1 -o "$T/p.h5"
expect_exit 3 "$KVLAB" prune-blocks "$CAL" --calib "$CAL" --remove 1 -o "$T/x.h5"
[ ! -e "$T/x.h5" ] || fail "a refused run left $T/x.h5"

# transformers loads the export; its loss on the same windows equals kvlab eval's.
HFPY=""
for cand in /tmp/venv-golden/bin/python python3; do
  if "$cand" -c 'import transformers, torch, safetensors' 2>/dev/null; then HFPY=$cand; break; fi
done
if [ -n "$HFPY" ]; then
  "$HFPY" - "$T/hf" "$SRC/data/kjv-byte-llama/heldout.txt" "$T/eval.json" >"$T/stdout" 2>"$T/stderr" <<'PY' || fail "transformers check"
import json, sys, torch, transformers
m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], attn_implementation="eager", torch_dtype=torch.float32)
assert m.config.num_hidden_layers == 6
ids = torch.tensor(list(open(sys.argv[2], "rb").read()[:512])).view(2, 256)
with torch.no_grad():
    logits = m(ids).logits.float()
loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1)).item()
k = json.load(open(sys.argv[3]))["mean_loss"]
assert abs(loss - k) < 1e-4, (loss, k)
print(f"transformers loss {loss:.6f} = kvlab {k:.6f}")
PY
  n_checks=$((n_checks + 1))
else
  echo "SKIP: no python with transformers+torch+safetensors; the transformers check did not run"
fi
pass
