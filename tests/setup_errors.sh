#!/usr/bin/env bash
# Bad setup must end in one clear message, not a Starlark traceback to decode. Checks, in a copy
# of the working tree with its own Bazel output base (yours is never touched):
#   1. PYTHON_BIN naming a missing interpreter: ./bazelw exits 2, and bazel itself fails in the
#      toolchain rule, each saying so;
#   2. a non-3.11 interpreter ($OTHER_PYTHON or the first other python3.1x found; skipped if
#      there is none): ./bazelw exits 2, and bazel itself fails in the toolchain rule naming the version;
#   3. a lock whose hash disagrees with the downloaded file: the build fails naming the
#      distribution, the expected and actual sha256, and how to regenerate the lock.
#
#   tests/setup_errors.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
tree=$work/tree
base=$work/output-base
cleanup() {
  (cd "$tree" 2>/dev/null && bazel --output_base="$base" shutdown >/dev/null 2>&1) || true
  chmod -R u+w "$work" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# copy_workspace
source "$repo/tools/scratch/scratch.sh"
copy_workspace "$repo" "$tree"
failures=0

# expect NAME STATUS PATTERN COMMAND...: runs COMMAND in the copy, wants exit STATUS and PATTERN
# (an extended regex) in its output.
expect() {
  local name=$1 want=$2 pattern=$3 status=0
  shift 3
  (cd "$tree" && "$@") >"$work/out" 2>&1 || status=$?
  if [[ $status -eq $want ]] && grep -qE -- "$pattern" "$work/out"; then
    echo "ok: $name (exit $status): ...$(grep -m1 -oE -- "$pattern" "$work/out")..."
  else
    echo "FAIL: $name: exit $status (wanted $want), output (wanted /$pattern/):" >&2
    tail -n 20 "$work/out" >&2
    failures=$((failures + 1))
  fi
}

expect "missing interpreter, launcher" 2 "PYTHON_BIN=/nonexistent/python3.11 is not a runnable Python" \
  env PYTHON_BIN=/nonexistent/python3.11 ./bazelw version
expect "missing interpreter, toolchain rule" 1 "PYTHON_BIN=/nonexistent/python3.11 does not exist" \
  env PYTHON_BIN=/nonexistent/python3.11 bazel --output_base="$base" build @python311//:all

other=""
# $OTHER_PYTHON, else a python3.1x on PATH, else one under pyenv (whose shims only run the
# versions selected for the directory).
for candidate in ${OTHER_PYTHON:-} python3.13 python3.12 python3.10 python3.14 \
  "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[02-9]*/bin/python3; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys' >/dev/null 2>&1; then
    other=$(command -v "$candidate")
    break
  fi
done
if [[ -n $other ]]; then
  expect "wrong version, launcher" 2 "is Python 3\.[0-9]+\.[0-9]+; this workspace is pinned to Python 3\.11" \
    env PYTHON_BIN="$other" ./bazelw version
  expect "wrong version, toolchain rule" 1 "is Python 3\.[0-9]+\.[0-9]+ .*pinned to Python 3\.11" \
    env PYTHON_BIN="$other" bazel --output_base="$base" build @python311//:all
else
  echo "skipped: wrong version (no Python other than 3.11 on PATH)"
fi

# Zero one hash of absl-py, a small wheel: pip checks it before installing anything.
sed -i '/^absl-py==/,/^[a-z]/ s/--hash=sha256:[0-9a-f]\{64\}/--hash=sha256:'"$(printf '0%.0s' {1..64})"'/' \
  "$tree/third_party/python/requirements_lock.txt"
expect "lock hash mismatch" 1 "pip could not install //third_party/python:requirements_lock.txt" \
  ./bazelw --output_base="$base" build @pip//:absl_py
grep -qE "absl-py==[0-9.]+ " "$work/out" && grep -qE "Expected sha256 0{64}" "$work/out" &&
  grep -q "regenerate the lock" "$work/out" || {
  echo "FAIL: lock hash mismatch: the message lacks the distribution, the hashes or the fix" >&2
  failures=$((failures + 1))
}

if [[ $failures -gt 0 ]]; then
  echo "setup errors: $failures check(s) failed" >&2
  exit 1
fi
echo "setup errors: every bad setup got its clear message"
