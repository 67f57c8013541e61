#!/usr/bin/env bash
# The README's second command, and what .ci/run runs: installs what is missing, builds, and runs
# every CPU test (ctest labels unit and cli; gpu tests run only on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
cd "${KVLAB_BUILD_DIR:-build}"
ctest --output-on-failure -j"${KVLAB_JOBS:-$(nproc)}" -LE gpu "$@"
