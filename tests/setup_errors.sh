#!/usr/bin/env bash
# Bad setup must end in one clear message, not a Starlark traceback to decode. Checks, in a copy
# of the working tree with its own Bazel output base (yours is never touched):
#   1. PYTHON_BIN naming a missing interpreter: ./bazelw exits 2, and bazel itself fails in the
#      toolchain rule, each saying so;
#   2. a non-3.11 interpreter ($OTHER_PYTHON or the first other python3.1x found; skipped if
#      there is none): ./bazelw exits 2, and bazel itself fails in the toolchain rule naming the version;
#   3. a lock whose hash disagrees with the downloaded file: the build fails naming the
#      distribution, the expected and actual sha256, and how to regenerate the lock;
#   4. on macOS (simulated with a `uname` that answers Darwin and a PATH without python3.11 or
#      bazel): ./bazelw exits 2 naming the Homebrew command for each;
#   5. the pinned interpreter vanishing, as after `brew upgrade python@3.11` (a symlink that stands
#      for /opt/homebrew/bin/python3.11, repointed from one copied interpreter to another, the old
#      one deleted): within the same Bazel server a Python test that runs (a cached result stays
#      valid: nothing Bazel tracks changed) fails with the one message naming
#      the vanished path and `sync --configure`; after that command it passes on the new one; and
#      after a second upgrade a server restart alone re-pins it.
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
# use_debian_bazel_4: plain `bazel` below runs the toolchain rule without the launcher's checks.
source "$repo/tools/setup/bazel.sh"
use_debian_bazel_4 "$repo"
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

# Zero one hash of absl-py, a small wheel: pip checks it before installing anything. (sed to a
# new file: `sed -i` takes a suffix argument on macOS and none on Linux.)
lock=$tree/third_party/python/requirements_lock.txt
cp "$lock" "$work/lock.orig"
sed '/^absl-py==/,/^[a-z]/ s/--hash=sha256:[0-9a-f]\{64\}/--hash=sha256:'"$(printf '0%.0s' {1..64})"'/' \
  "$work/lock.orig" >"$lock"
expect "lock hash mismatch" 1 "pip could not install //third_party/python:requirements_lock.txt" \
  ./bazelw --output_base="$base" build @pip//:absl_py
grep -qE "absl-py==[0-9.]+ " "$work/out" && grep -qE "Expected sha256 0{64}" "$work/out" &&
  grep -q "regenerate the lock" "$work/out" || {
  echo "FAIL: lock hash mismatch: the message lacks the distribution, the hashes or the fix" >&2
  failures=$((failures + 1))
}

cp "$work/lock.orig" "$lock"

# 4. macOS, as bazelw sees it: `uname -s` says Darwin, and PATH has only the tools bazelw itself
# uses (no python3.11, no bazel).
mac=$work/mac-bin
mkdir -p "$mac"
printf '#!/bin/sh\necho Darwin\n' >"$mac/uname"
chmod +x "$mac/uname"
for tool in bash env dirname grep head cat id; do ln -s "$(command -v "$tool")" "$mac/$tool"; done
expect "macOS, no python3.11" 2 "brew install python@3\.11" env -u PYTHON_BIN PATH="$mac" ./bazelw version
# The binary itself, not a pyenv shim (a script that needs pyenv on PATH).
ln -s "$(python3.11 -c 'import os, sys; print(os.path.realpath(sys.executable))')" "$mac/python3.11"
expect "macOS, no bazel" 2 "brew install bazelisk" env -u PYTHON_BIN PATH="$mac" ./bazelw version

# 5. The pinned interpreter vanishes. Each "Cellar" directory holds a copied interpreter
# (`venv --copies`: its own binary, so its real path is its own); $shim is the PATH-visible name.
# The test is a package of its own in the copy that needs nothing but the toolchain.
mkdir -p "$tree/vanish" "$work/bin"
printf 'import sys\n\nprint(sys.executable, sys.version)\n' >"$tree/vanish/hello_test.py"
printf 'py_test(\n    name = "hello_test",\n    srcs = ["hello_test.py"],\n)\n' >"$tree/vanish/BUILD.bazel"
cellar() { "$(command -v python3.11)" -m venv --copies --without-pip "$work/cellar-$1" && echo "$work/cellar-$1/bin/python3.11"; }
shim=$work/bin/python3.11
vanish() { rm -rf "$(dirname "$(dirname "$(readlink "$shim")")")"; ln -sfn "$(cellar "$1")" "$shim"; }
pinned() { cat "$base/external/python311/interpreter_path.txt"; }
vbazel() { env PYTHON_BIN="$shim" bazel --output_base="$base" "$@"; }
ln -sfn "$(cellar 1)" "$shim"
expect "vanished interpreter: before, the test passes" 0 "PASSED" \
  vbazel test --test_output=errors //vanish:hello_test
old=$(pinned)
vanish 2
expect "vanished interpreter: same server, one message" 3 \
  "the pinned interpreter $old no longer exists \(upgraded or removed\)\. Re-pin python3\.11 with: \./bazelw sync --configure" \
  vbazel test --test_output=errors --nocache_test_results //vanish:hello_test
resync_and_test() { vbazel sync --configure && vbazel test --test_output=errors //vanish:hello_test; }
expect "vanished interpreter: after sync --configure, the new one" 0 "PASSED" resync_and_test
[[ $(pinned) == "$work/cellar-2/bin/python3.11" ]] || {
  echo "FAIL: after sync --configure the pin is $(pinned), not $work/cellar-2/bin/python3.11" >&2
  failures=$((failures + 1))
}
vanish 3
vbazel shutdown >/dev/null 2>&1
expect "vanished interpreter: a new server re-pins by itself" 0 "PASSED" \
  vbazel test --test_output=errors //vanish:hello_test
[[ $(pinned) == "$work/cellar-3/bin/python3.11" ]] || {
  echo "FAIL: after a server restart the pin is $(pinned), not $work/cellar-3/bin/python3.11" >&2
  failures=$((failures + 1))
}

if [[ $failures -gt 0 ]]; then
  echo "setup errors: $failures check(s) failed" >&2
  exit 1
fi
echo "setup errors: every bad setup got its clear message"
