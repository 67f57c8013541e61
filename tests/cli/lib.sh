# Helpers for the CLI tests: run a command, check its exit code and output.
# Env: KVLAB (binary), KVLAB_SOURCE_DIR, KVLAB_TEST_TMP (scratch dir, recreated).
set -u
T="${KVLAB_TEST_TMP:?}"
rm -rf "$T" && mkdir -p "$T"
KVLAB="${KVLAB:?}"
SRC="${KVLAB_SOURCE_DIR:?}"
n_checks=0
# Debian's python3 has h5py (python3-h5py, from install-deps.sh); a pyenv python3 first on PATH may not.
PY=python3
for cand in /usr/bin/python3 python3; do
  if "$cand" -c 'import h5py' 2>/dev/null; then PY=$cand; break; fi
done

fail() {
  echo "FAIL: $*" >&2
  echo "--- last stdout:" >&2; head -c 3000 "$T/stdout" >&2 2>/dev/null
  echo "--- last stderr:" >&2; head -c 3000 "$T/stderr" >&2 2>/dev/null
  exit 1
}

# expect_exit CODE CMD...: runs CMD with stdout/stderr captured in $T/stdout, $T/stderr.
expect_exit() {
  local want=$1; shift
  "$@" >"$T/stdout" 2>"$T/stderr" </dev/null
  local rc=$?
  n_checks=$((n_checks + 1))
  [ "$rc" -eq "$want" ] || fail "expected exit $want, got $rc: $*"
}

expect_stdout() { grep -qF -- "$1" "$T/stdout" || fail "stdout lacks: $1"; }
expect_stderr() { grep -qF -- "$1" "$T/stderr" || fail "stderr lacks: $1"; }
pass() { echo "$(basename "$0"): $n_checks commands checked, all passed"; }
