#!/usr/bin/env bash
# End-to-end: kvlab pim-compile (issue 11) against the built binary: the README command, the
# artifact, JSON, determinism, network files, and the exit codes of impossible inputs.
source "$(dirname "$0")/lib.sh"
HW="$SRC/data/hw/compass-small.json"

# The README command: the table with ratios to layerwise, in seconds.
start=$(date +%s)
expect_exit 0 "$KVLAB" --progress none pim-compile --net vgg16 --hw "$HW" --compare layerwise,greedy,ga
[ $(( $(date +%s) - start )) -lt 30 ] || fail "pim-compile on vgg16 took more than 30 s"
expect_stdout "network  vgg16 (zoo:vgg16): 16 weight layers"
expect_stdout "33,804 crossbars at 8-bit weights on 2-bit cells"
expect_stdout "compass-small: 256 crossbars"
expect_stdout "layerwise "
expect_stdout "1.00x throughput / 1.00x EDP"
grep -qE '^greedy .*x throughput / .*x EDP' "$T/stdout" || fail "no greedy row"
grep -qE '^ga .*x throughput / .*x EDP' "$T/stdout" || fail "no ga row"

# A pim-plan artifact that validates; --force rules; no partial files.
expect_exit 0 "$KVLAB" --progress none --seed 5 pim-compile --net squeezenet --hw "$HW" --compare all -o "$T/plan.h5"
expect_exit 0 "$KVLAB" inspect --validate "$T/plan.h5"
expect_stdout "kvlab pim-plan artifact, format 1.0"
expect_stdout "valid: conforms to the pim-plan v1 schema"
expect_exit 2 "$KVLAB" pim-compile --net squeezenet --hw "$HW" -o "$T/plan.h5"
expect_stderr "already exists; pass --force"
expect_exit 2 "$KVLAB" pim-compile --net squeezenet --hw "$HW" -o "$HW"

# Same seed, same plan (every plan dataset identical); --json parses and carries the ratios.
expect_exit 0 "$KVLAB" --progress none --seed 5 pim-compile --net squeezenet --hw "$HW" --compare all -o "$T/plan2.h5"
$PY - "$T/plan.h5" "$T/plan2.h5" <<'PY' || fail "same seed gave different plans"
import h5py, sys, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
for s in a["plans"]:
    for d in ("first_unit", "last_unit", "xbars", "t_compute_ns", "unit_replication"):
        assert np.array_equal(a["plans"][s][d][()], b["plans"][s][d][()]), (s, d)
assert list(a["plans"]) == ["dp", "ga", "greedy", "layerwise"], list(a["plans"])
PY
expect_exit 0 "$KVLAB" --json --progress none pim-compile --net resnet18 --hw "$HW" --compare layerwise,greedy,dp,ga --objective edp
$PY - "$T/stdout" <<'PY' || fail "--json output"
import json, sys
d = json.load(open(sys.argv[1]))
r = {x["search"]: x for x in d["results"]}
assert d["crossbars"] == 2864 and d["hw"]["capacity"] == 256, d["crossbars"]
assert abs(r["layerwise"]["throughput_x"] - 1) < 1e-12
e = {k: v["pj_per_inference"] * v["ns_per_inference"] for k, v in r.items()}
assert e["dp"] <= e["ga"] * (1 + 1e-9) <= e["greedy"] * (1 + 1e-9) ** 2, e
assert r["dp"]["exact"]
PY

# A chip large enough for the whole network: one partition, no reloads.
echo '{"cores": 1000}' > "$T/big.json"
expect_exit 0 "$KVLAB" --json --progress none pim-compile --net vgg16 --hw "$T/big.json" --compare greedy,dp,ga
$PY - "$T/stdout" <<'PY' || fail "big chip"
import json, sys
d = json.load(open(sys.argv[1]))
for x in d["results"]:
    if x["search"] != "layerwise":
        assert x["partitions"] == 1 and x["reloads"] == 0 and x["dram_weight_bytes"] == 0, x["search"]
PY

# Network description files: kvlab JSON (both examples), --export-net round trip, --dry-run.
for f in tiny-chain tiny-branches resnet18; do
  expect_exit 0 "$KVLAB" --progress none pim-compile "$SRC/data/nets/$f.json" --hw "$HW" --compare greedy,dp
done
expect_exit 0 "$KVLAB" --progress none pim-compile --net mobilenetv2 --export-net "$T/mnv2.json" --dry-run
expect_stdout "total: 8,146 crossbars in 53 weight layers"
expect_exit 0 "$KVLAB" --progress none pim-compile "$T/mnv2.json" --dry-run
expect_stdout "total: 8,146 crossbars in 53 weight layers"

# Impossible inputs: exit 2 (the network cannot fit even split) or 3 (a bad file), with a reason.
echo '{"cores": 1}' > "$T/one-core.json"
expect_exit 2 "$KVLAB" pim-compile --net vgg16 --hw "$T/one-core.json"
expect_stderr 'layer "fc6" cannot fit on this chip even split by output columns'
echo '{"cores": 0}' > "$T/zero.json"
expect_exit 3 "$KVLAB" pim-compile --net vgg16 --hw "$T/zero.json"
expect_stderr "the chip has zero crossbars"
echo '{"xbar_rows": 128, "corez": 4}' > "$T/typo.json"
expect_exit 3 "$KVLAB" pim-compile --net vgg16 --hw "$T/typo.json"
expect_stderr 'unknown key "corez"'
expect_exit 3 "$KVLAB" pim-compile "$T/missing.json"
expect_stderr "missing.json: no such file"
echo '{"layers": [{"name": "x", "op": "input", "shape": [3, 8, 8]}, {"name": "c", "op": "conv", "out_channels": 4, "kernel": 9}]}' > "$T/bad-net.json"
expect_exit 3 "$KVLAB" pim-compile "$T/bad-net.json"
expect_stderr "a 9x9 kernel does not fit the 8x8 input"
expect_exit 3 "$KVLAB" pim-compile "$T/plan.h5"
expect_stderr "a kvlab pim-plan artifact has no network to compile"

# An LLM model artifact: its linear layers per generated token (kjv fixture: 8 blocks x 7 + lm_head).
expect_exit 0 "$KVLAB" --progress none import-hf "$SRC/data/kjv-byte-llama" -o "$T/x.h5"
expect_exit 0 "$KVLAB" --progress none pim-compile "$T/x.h5" --hw "$HW"
expect_stdout "57 weight layers"
expect_stdout "978 crossbars at 8-bit weights on 2-bit cells"
# The plan names the model artifact as its parent (kind and uuid), so inspect follows the lineage.
expect_exit 0 "$KVLAB" --progress none pim-compile "$T/x.h5" --hw "$HW" --search greedy -o "$T/x.plan.h5"
expect_exit 0 "$KVLAB" inspect "$T/x.plan.h5"
expect_stdout "x.h5 (model, "
expect_exit 2 "$KVLAB" pim-compile
expect_stderr "give a network"
expect_exit 2 "$KVLAB" pim-compile --net vgg17
expect_exit 2 "$KVLAB" pim-compile --net vgg16 --compare greedy,annealing
expect_exit 2 "$KVLAB" pim-compile --net vgg16 --batch 0

ls "$T" | grep -q partial && fail "partial files left behind"
pass
