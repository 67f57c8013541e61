#!/usr/bin/env bash
# The README's first command: installs what is missing, builds, and runs the demo pipeline on the
# bundled data. Safe to re-run (installs and builds are incremental).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
K=build/bin/kvlab
out=build/demo
mkdir -p "$out"

echo "== 1. this build, its BLAS and its speed"
$K selfcheck -o "$out/selfcheck.h5" --force

echo "== 2. the artifact it wrote"
$K inspect --validate "$out/selfcheck.h5"
