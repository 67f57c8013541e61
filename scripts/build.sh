#!/usr/bin/env bash
# Configures and builds kvlab into build/ (or $KVLAB_BUILD_DIR). Extra args go to cmake configure,
# e.g. scripts/build.sh -DCMAKE_PREFIX_PATH="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')"
set -euo pipefail
cd "$(dirname "$0")/.."
B="${KVLAB_BUILD_DIR:-build}"
gen=()
command -v ninja >/dev/null && [ ! -f "$B/CMakeCache.txt" ] && gen=(-G Ninja)
cmake -S . -B "$B" "${gen[@]}" -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-Release}" "$@" >/dev/null
cmake --build "$B" -j"${KVLAB_JOBS:-$(nproc)}"
