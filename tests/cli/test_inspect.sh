#!/usr/bin/env bash
# End-to-end: kvlab inspect and selfcheck against the built binary (exit codes and messages).
source "$(dirname "$0")/lib.sh"

# Missing file: exit 3, naming it.
expect_exit 3 "$KVLAB" inspect "$T/missing.h5"
expect_stderr "missing.h5: no such file"

# A text file: exit 3, saying it is not an HDF5 artifact.
echo "hello" > "$T/notes.txt"
expect_exit 3 "$KVLAB" inspect "$T/notes.txt"
expect_stderr "notes.txt: not an HDF5 file, so not a kvlab artifact"

# Help works and exits 0.
expect_exit 0 "$KVLAB" --help
expect_stdout "Exit codes"
expect_exit 0 "$KVLAB" inspect --help

# selfcheck writes a valid artifact; inspect reads and validates it; JSON parses.
expect_exit 0 "$KVLAB" --threads 1 --progress lines selfcheck --size 64 --repeats 2 -o "$T/sc.h5"
expect_stdout "GFLOP/s"
expect_stderr "kvlab selfcheck: done in"
expect_exit 0 "$KVLAB" inspect --validate "$T/sc.h5"
expect_stdout "kvlab selfcheck-report artifact, format 1.0"
expect_stdout "valid: conforms to the selfcheck-report v1 schema"
expect_exit 0 "$KVLAB" --json inspect "$T/sc.h5"
$PY -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["kind"]=="selfcheck-report", d' "$T/stdout" \
  || fail "inspect --json is not valid JSON"

# Refuses to overwrite without --force; overwrites with it.
expect_exit 2 "$KVLAB" selfcheck --size 64 --repeats 1 -o "$T/sc.h5"
expect_stderr "already exists; pass --force"
expect_exit 0 "$KVLAB" selfcheck --size 64 --repeats 1 -o "$T/sc.h5" --force

# Environment variables set global options; a bad one is a usage error.
KVLAB_THREADS=abc expect_exit 2 "$KVLAB" inspect "$T/sc.h5"
KVLAB_JSON=1 expect_exit 0 "$KVLAB" inspect "$T/sc.h5"
expect_stdout '"kind": "selfcheck-report"'
SLURM_CPUS_PER_TASK=1 expect_exit 0 "$KVLAB" --json selfcheck --size 32 --repeats 1
expect_stdout '"threads": 1'

# Schema violation: --validate exits 3 (the kind attribute edited with h5py).
$PY - "$T/sc.h5" <<'PY'
import h5py, sys
with h5py.File(sys.argv[1], "r+") as f:
    f.attrs["kvlab.kind"] = "mystery"
PY
expect_exit 3 "$KVLAB" inspect --validate "$T/sc.h5"
expect_stdout 'unknown artifact kind "mystery"'

# --min-gflops that cannot be met: runtime failure, exit 1.
expect_exit 1 "$KVLAB" selfcheck --size 32 --repeats 1 --min-gflops 999999
expect_stderr "--min-gflops"

# No partial files left anywhere.
ls "$T" | grep -q partial && fail "partial files left behind"
pass
