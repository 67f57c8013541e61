#!/usr/bin/env bash
# The ONNX round trip of issue 12: `kvlab mobile-plan export --weights` on a micro diffusers
# pipeline whose checkpoints diffusers/transformers wrote (tests/data/mobile/roundtrip: text
# encoder BF16, UNet F16, VAE F32), the rewritten chunks run in sequence with onnxruntime and
# compared with the diffusers models' own outputs (reference.npz, made by
# scripts/make-golden-diffusion.py checkpoint). onnxruntime comes from the venv that
# scripts/install-deps.sh creates (.venv-ci; KVLAB_ONNX_PYTHON overrides; without it the test
# fails under CI=true and is skipped, exit 77, elsewhere). Also the exit codes of
# --weights: a checkpoint that does not match the graph (3), no checkpoint / one file for all (2).
source "$(dirname "$0")/lib.sh"
RT="$SRC/tests/data/mobile/roundtrip"
PD="$SRC/data/mobile"
ORTPY="${KVLAB_ONNX_PYTHON:-$SRC/.venv-ci/bin/python}"
if ! "$ORTPY" -c 'import onnxruntime, numpy' 2>/dev/null; then
  msg="no onnxruntime: $ORTPY cannot import onnxruntime and numpy (run scripts/install-deps.sh, which creates .venv-ci, or set KVLAB_ONNX_PYTHON)"
  # CI (CI=true) must run the round trip; elsewhere (a GPU host without PyPI) ctest shows a skip.
  [ "${CI:-}" = true ] && fail "$msg"
  echo "SKIP: $msg" >&2
  exit 77
fi

start=$(date +%s)
# Export with the checkpoint's weights, several chunks per component (2 / 14 / 2).
expect_exit 0 "$KVLAB" --progress none mobile-plan export "$RT" --weights "$RT" --profile-dir "$PD" --cap-mb 0.04 -o "$T/onnx"
expect_stdout "unet:"
expect_stderr "unet: weights from $RT/unet/diffusion_pytorch_model.safetensors"
$PY - "$T/onnx/manifest.json" "$RT" <<'PY' || fail "manifest weights / chunk counts"
import json, sys
m = json.load(open(sys.argv[1]))
w = m["weights"]
assert w["unet"] == sys.argv[2] + "/unet/diffusion_pytorch_model.safetensors", w
assert w["text_encoder"].endswith("text_encoder/model.safetensors"), w
assert [len(m["components"][c]) >= n for c, n in (("text_encoder", 2), ("unet", 8), ("vae_decoder", 2))] == [True] * 3, m["components"].keys()
PY
# The round trip: every component within fp tolerance of the diffusers/transformers models.
expect_exit 0 "$ORTPY" "$SRC/scripts/check-onnx-roundtrip.py" "$T/onnx" "$RT/reference.npz" --json
cat "$T/stdout" >&2
$PY - "$T/stdout" <<'PY' || fail "round trip"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["ok"] is True
c = d["components"]
assert set(c) == {"text_encoder", "unet", "vae_decoder"}, set(c)
assert c["unet"]["chunks"] >= 8 and c["text_encoder"]["chunks"] >= 2 and c["unet"]["shape"] == [1, 4, 8, 8], c["unet"]
assert c["vae_decoder"]["shape"] == [1, 3, 16, 16] and c["text_encoder"]["shape"] == [1, 16, 32]
for k, r in c.items():
    assert r["max_abs_diff_out_tanh"] <= r["tol_out_tanh"], (k, r)
    assert r["max_abs_diff_out"] <= r["tol_out"], (k, r)
PY
# A random-weight export must NOT pass the same check (the comparison can fail).
expect_exit 0 "$KVLAB" --seed 5 --progress none mobile-plan export "$RT" --component unet --profile-dir "$PD" -o "$T/random"
expect_exit 1 "$ORTPY" "$SRC/scripts/check-onnx-roundtrip.py" "$T/random" "$RT/reference.npz"

# One component from its directory or its file.
expect_exit 0 "$KVLAB" --progress none mobile-plan export "$RT" --component vae_decoder --weights "$RT/vae" --profile-dir "$PD" -o "$T/vae"
expect_exit 0 "$ORTPY" "$SRC/scripts/check-onnx-roundtrip.py" "$T/vae" "$RT/reference.npz"
expect_stdout "vae_decoder: 1 chunk(s)"

# A checkpoint that does not match the graph: exit 3 naming the tensor, expected and found shape.
mkdir -p "$T/bad/unet"
"$ORTPY" - "$RT/unet/diffusion_pytorch_model.safetensors" "$T/bad/unet/diffusion_pytorch_model.safetensors" <<'PY'
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
h["conv_out.weight"]["shape"] = [4, 16, 9, 1]  # same bytes, wrong shape
del h["conv_in.bias"]                           # its bytes stay, unreferenced
hb = json.dumps(h).encode()
open(sys.argv[2], "wb").write(struct.pack("<Q", len(hb)) + hb + b[8 + n:])
PY
expect_exit 3 "$KVLAB" --progress none mobile-plan export "$RT" --component unet --weights "$T/bad/unet" --profile-dir "$PD" -o "$T/bad-out"
expect_stderr "bad/unet/diffusion_pytorch_model.safetensors"
expect_stderr 'tensor "conv_out.weight": expected shape [4, 16, 3, 3], found [4, 16, 9, 1]'
expect_stderr 'missing tensor "conv_in.bias" (expected shape [16])'
[ ! -e "$T/bad-out" ] || fail "an output was written for a bad checkpoint"
# A checkpoint of another model (the micro UNet's weights for the tiny config).
expect_exit 3 "$KVLAB" --progress none mobile-plan export "$SRC/data/diffusion/tiny" --component unet --weights "$RT/unet" --profile-dir "$PD" -o "$T/bad-out"
expect_stderr 'tensor "conv_in.weight": expected shape [32, 4, 3, 3], found [16, 4, 3, 3]'
# Usage errors: no checkpoint there; one file for all three components.
expect_exit 2 "$KVLAB" --progress none mobile-plan export "$RT" --weights "$SRC/data/diffusion/tiny" --profile-dir "$PD" -o "$T/bad-out"
expect_stderr "no checkpoint for text_encoder"
expect_exit 2 "$KVLAB" --progress none mobile-plan export "$RT" --weights "$RT/unet/diffusion_pytorch_model.safetensors" --profile-dir "$PD" -o "$T/bad-out"
expect_stderr "pass --component"
[ -z "$(ls "$T" | grep partial)" ] || fail "partial files left behind"
elapsed=$(( $(date +%s) - start ))
echo "round trip + checks: ${elapsed} s" >&2
[ "$elapsed" -lt 90 ] || fail "took ${elapsed} s (budget 90 s)"
pass
