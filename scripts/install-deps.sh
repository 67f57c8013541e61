#!/usr/bin/env bash
# Installs every build and test dependency of kvlab on Debian 12 / Ubuntu 24.04 with apt.
# Idempotent: packages already present are skipped. Uses sudo only when not root.
#
#   scripts/install-deps.sh            build + test dependencies (CPU LibTorch from Debian)
#   scripts/install-deps.sh --no-torch everything but libtorch-dev (GPU hosts bring a CUDA LibTorch)
#   scripts/install-deps.sh --no-venv  no .venv-ci (hosts without PyPI; see below)
#
# The fast BLAS matters: Debian's libtorch links the generic libblas.so.3, which is the reference
# BLAS unless an optimised one is installed (5.7 vs ~96 GFLOP/s for a 1024^2 sgemm on 2 cores).
# libopenblas0-openmp registers itself as the libblas.so.3 alternative; `kvlab selfcheck` reports
# which BLAS is in use and its GFLOP/s.
#
# Also creates .venv-ci/ in the repository (git-ignored; KVLAB_CI_VENV overrides the path): a
# Python venv with onnxruntime + numpy from PyPI, for the mobile-plan ONNX round-trip test
# (tests/cli/test_mobile_onnx_roundtrip.sh, which fails without it). kvlab itself never needs it.
# A failed pip install only warns, so the packages above still install on a host without PyPI.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

with_torch=1
with_venv=1
for a in "$@"; do
  case "$a" in
    --no-torch) with_torch=0 ;;
    --no-venv) with_venv=0 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "install-deps.sh: unknown option '$a' (see --help)" >&2; exit 2 ;;
  esac
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps.sh: not root and no sudo; run as root" >&2; exit 1; }
  SUDO="sudo"
fi

pkgs=(
  build-essential cmake ninja-build pkg-config git
  libcli11-dev libfmt-dev zlib1g-dev libeigen3-dev libhdf5-dev hdf5-tools doctest-dev nlohmann-json3-dev
  libpcre2-dev libicu-dev
  libopenblas0-openmp
  python3 python3-numpy python3-h5py python3-matplotlib python3-venv
  dataset-fashion-mnist bible-kjv-text bible-kjv
)
# libonnx-dev: the onnx::checker test of mobile-plan's export (built only where CMake finds ONNX;
# with Debian's LibTorch, which shares its libprotobuf).
[ "$with_torch" = 1 ] && pkgs+=(libtorch-dev libonnx-dev libprotobuf-dev)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "install-deps.sh: all ${#pkgs[@]} packages already installed" >&2
fi

# Make sure the optimised BLAS is the one libblas.so.3 resolves to (another package may have
# switched the alternative back to the reference BLAS).
arch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
ob="/usr/lib/$arch/openblas-openmp/libblas.so.3"
if [ -e "$ob" ]; then
  cur=$(readlink -f "/usr/lib/$arch/libblas.so.3" || true)
  if [ "$cur" != "$(readlink -f "$ob")" ]; then
    $SUDO update-alternatives --set "libblas.so.3-$arch" "$ob" >/dev/null
    $SUDO update-alternatives --set "liblapack.so.3-$arch" "/usr/lib/$arch/openblas-openmp/liblapack.so.3" >/dev/null 2>&1 || true
  fi
fi

# The ONNX round-trip test's venv (onnxruntime's wheels bundle the runtime; numpy comes with it).
# Debian's python3 (python3-venv above), not whatever python3 is first on PATH.
venv="${KVLAB_CI_VENV:-$root/.venv-ci}"
py=/usr/bin/python3
[ -x "$py" ] || py=python3
if [ "$with_venv" = 0 ]; then
  :
elif "$venv/bin/python" -c 'import onnxruntime, numpy' 2>/dev/null; then
  echo "install-deps.sh: $venv has onnxruntime" >&2
else
  echo "install-deps.sh: creating $venv (onnxruntime, numpy from PyPI)" >&2
  rm -rf "$venv"
  if ! { "$py" -m venv "$venv" &&
         "$venv/bin/pip" install -q --disable-pip-version-check --no-cache-dir \
           "onnxruntime>=1.16,<2" "numpy>=1.24,<3"; }; then
    echo "install-deps.sh: WARNING: could not create $venv with onnxruntime (no PyPI?);" \
         "the ONNX round-trip test (cli_mobile_onnx_roundtrip) will fail" >&2
  fi
fi
echo "install-deps.sh: done" >&2
