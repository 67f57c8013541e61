#!/usr/bin/env bash
# End-to-end: kvlab mobile-plan (issue 12) against the built binary: the five README steps on the
# bundled SD 2.1 configs (each in seconds), JSON output, the plan artifact, and the exit codes of
# malformed configs and impossible caps.
source "$(dirname "$0")/lib.sh"
SD21="$SRC/data/diffusion/sd21"
PD="$SRC/data/mobile"
GOLD="$SRC/tests/data/mobile/golden-params.json"

start=$(date +%s)
# 1. graph: parameter counts equal diffusers/transformers' (golden numbers).
expect_exit 0 "$KVLAB" --progress none mobile-plan graph "$SD21"
for c in text_encoder unet vae_decoder; do
  want=$($PY -c "import json;print(json.load(open('$GOLD'))['models']['sd21']['$c'])")
  grep -qE "^$c +[0-9]+ +$want " "$T/stdout" || fail "graph: $c params != $want"
done
expect_exit 0 "$KVLAB" --json --progress none mobile-plan graph "$SD21" --component unet --per-op
$PY - "$T/stdout" <<'PY' || fail "graph --json"
import json, sys
d = json.load(open(sys.argv[1]))
u = d["components"][0]
assert u["component"] == "unet" and u["params"] == 865910724, u["params"]
assert sum(o["params"] for o in u["op_list"]) == u["params"]
assert d["latent"] == 64 and d["resolution"] == 512
PY
# --export-net writes the IR that pim-compile reads.
expect_exit 0 "$KVLAB" --progress none mobile-plan graph "$SRC/data/diffusion/tiny" --component vae_decoder --export-net "$T/vae.json"
$PY -c "import json;d=json.load(open('$T/vae.json'));assert d['format']=='kvlab-network', d" || fail "export-net"

# 2. delegate: tflite-gpu needs the rewrites; after them the UNet is one GPU partition.
expect_exit 0 "$KVLAB" --json --progress none mobile-plan delegate "$SD21" --target tflite-gpu --profile-dir "$PD"
$PY - "$T/stdout" <<'PY' || fail "delegate --json"
import json, sys
d = {c["component"]: c for c in json.load(open(sys.argv[1]))["components"]}
u = d["unet"]
assert u["before"]["cpu_ops"] > 0 and u["before"]["partitions"] > 50, u["before"]
assert u["after"]["cpu_ops"] == 0 and u["after"]["partitions"] == 1, u["after"]
assert u["rewrites"]["groupnorm"] == 61 and u["rewrites"]["gelu"] == 16, u["rewrites"]
assert d["text_encoder"]["rewrites"]["gelu"] == 23
PY
expect_exit 0 "$KVLAB" --progress none mobile-plan delegate "$SD21" --target qnn-npu --wbits 8 --profile-dir "$PD"
expect_stdout "target qnn-npu"

# 3. gelu: the naive tanh form overflows to NaN near x = 4.03 in fp16.
expect_exit 0 "$KVLAB" --json --progress none mobile-plan gelu --dtype fp16
$PY - "$T/stdout" <<'PY' || fail "gelu --json"
import json, sys
v = {r["variant"]: r for r in json.load(open(sys.argv[1]))["variants"]}
assert 3.95 < v["tanh-naive"]["first_nonfinite_pos"] < 4.1, v["tanh-naive"]
for k in ("erf", "tanh-clamped", "sigmoid"):
    assert v[k]["nonfinite"] == 0, k
PY

# 4. chunk: Apple's bisection and the DP under 1 GB; an impossible cap exits 2.
expect_exit 0 "$KVLAB" --json --progress none mobile-plan chunk "$SD21" --cap-mb 1024 --algo apple-bisect
cp "$T/stdout" "$T/apple.json"
expect_exit 0 "$KVLAB" --json --progress none mobile-plan chunk "$SD21" --cap-mb 1024 --algo dp --chunks 2
$PY - "$T/apple.json" "$T/stdout" <<'PY' || fail "chunk --json"
import json, sys
a, d = (json.load(open(p)) for p in sys.argv[1:3])
for p in (a, d):
    assert len(p["chunks"]) == 2
    assert all(c["weight_bytes"] <= 1024e6 for c in p["chunks"])
    assert p["chunks"][0]["first"] == 0 and p["chunks"][-1]["last"] == p["ops"] - 1
    assert p["chunks"][1]["first"] == p["chunks"][0]["last"] + 1
assert d["boundary_bytes"] <= a["boundary_bytes"]
PY
expect_exit 2 "$KVLAB" --progress none mobile-plan chunk "$SD21" --cap-mb 5
expect_stderr "alone holds"

# 5. plan: 20 steps fp16 vs int8, an artifact that validates, --force rules.
expect_exit 0 "$KVLAB" --progress none mobile-plan plan "$SD21" --device snapdragon-8-gen-2 --steps 20 --wbits 16 --profile-dir "$PD" -o "$T/plan.h5"
expect_stdout "published reference rows (reported by their sources, not simulated by kvlab)"
expect_stdout "sequential"
expect_exit 0 "$KVLAB" inspect --validate "$T/plan.h5"
expect_stdout "valid"
expect_exit 2 "$KVLAB" --progress none mobile-plan plan "$SD21" --profile-dir "$PD" -o "$T/plan.h5"
expect_stderr "already exists; pass --force"
expect_exit 0 "$KVLAB" --json --progress none mobile-plan plan "$SD21" --steps 8 --cfg-distilled --wbits 8 --profile-dir "$PD"
$PY - "$T/stdout" <<'PY' || fail "plan --json"
import json, sys
d = json.load(open(sys.argv[1]))
c = {x["component"]: x for x in d["components"]}
assert c["unet"]["calls"] == 8 and c["text_encoder"]["calls"] == 1
s = {x["schedule"]: x for x in d["schedules"]}
assert s["sequential"]["peak_bytes"] < s["all-resident"]["peak_bytes"]
assert all(r["status"].startswith("reported") for r in d["reference_rows"])
PY
[ $(( $(date +%s) - start )) -lt 60 ] || fail "the five steps took more than 60 s"

# 6. export: ONNX chunks + manifest (chunks chain); an existing output needs --force.
expect_exit 0 "$KVLAB" --seed 3 --progress none mobile-plan export "$SRC/data/diffusion/tiny" --profile-dir "$PD" --cap-mb 0.2 -o "$T/onnx"
$PY - "$T/onnx" <<'PY' || fail "export manifest"
import json, os, sys
m = json.load(open(os.path.join(sys.argv[1], "manifest.json")))
u = m["components"]["unet"]
assert len(u) > 1, len(u)
seen = {"sample", "time_proj", "encoder_hidden_states"}
for c in u:
    assert set(c["inputs"]) <= seen, (c["file"], set(c["inputs"]) - seen)
    seen |= set(c["outputs"])
    assert os.path.getsize(os.path.join(sys.argv[1], c["file"])) > 0
assert "conv_out" in u[-1]["outputs"]
PY
expect_exit 2 "$KVLAB" --progress none mobile-plan export "$SRC/data/diffusion/tiny" --profile-dir "$PD" -o "$T/onnx"
expect_stderr "already exists"
[ -z "$(ls "$T" | grep partial)" ] || fail "partial files left behind"

# Bad input: malformed config (3), unknown option value (2), missing directory (2).
mkdir -p "$T/bad/text_encoder" "$T/bad/unet" "$T/bad/vae"
cp "$SRC/data/diffusion/tiny/text_encoder/config.json" "$T/bad/text_encoder/"
cp "$SRC/data/diffusion/tiny/vae/config.json" "$T/bad/vae/"
echo '{"block_out_channels": "wide"}' > "$T/bad/unet/config.json"
expect_exit 3 "$KVLAB" --progress none mobile-plan graph "$T/bad"
expect_stderr "unet/config.json"
expect_stderr "block_out_channels"
expect_exit 2 "$KVLAB" --progress none mobile-plan delegate "$SD21" --target tpu
expect_exit 2 "$KVLAB" --progress none mobile-plan graph "$T/nowhere"
expect_exit 2 "$KVLAB" --progress none mobile-plan plan "$SD21" --wbits 4
pass
