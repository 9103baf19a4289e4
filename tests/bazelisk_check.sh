#!/usr/bin/env bash
# A bazelisk user (Homebrew's `bazel` on a Mac) starts from .bazelversion: bazelisk must resolve it
# to a release it can download, and run that. Checks it with bazelisk itself, offline:
#   1. installs bazelisk from the npm registry (@bazel/bazelisk ships its binaries) into a
#      temporary directory;
#   2. serves, from a throwaway HTTP server on 127.0.0.1, a stand-in for the release binary under
#      the layout bazelisk downloads from with BAZELISK_BASE_URL set, <base>/<version>/bazel-<version>-<os>-<arch>:
#      a two-line script that execs this machine's Bazel;
#   3. runs `bazelisk version` in the workspace, with BAZELISK_HOME in the temporary directory (your
#      bazelisk cache is never touched) and a throwaway output base: bazelisk must download the
#      stand-in for the version in .bazelversion, and Bazel must answer through it.
#
#   tests/bazelisk_check.sh
#
# Needs npm (Debian/Ubuntu: sudo apt-get install npm; macOS: brew install node) and a real Bazel 4
# binary for the stand-in to run: Debian's /usr/bin/bazel-4, or $BAZEL_REAL.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bazelisk_version=1.28.1
# free_port
source "$repo/tools/scratch/scratch.sh"
# is_debian_bazel_wrapper
source "$repo/tools/setup/bazel.sh"

fail() { echo "bazelisk check: FAIL: $*" >&2; exit 1; }

real=${BAZEL_REAL:-}
if [[ -z $real ]] && wrapper=$(command -v bazel 2>/dev/null) && is_debian_bazel_wrapper "$wrapper"; then
  real=$(dirname "$wrapper")/bazel-4
fi
if [[ -z $real || ! -x $real ]]; then
  message="no real Bazel binary for the stand-in to run (Debian's bazel-4, or set BAZEL_REAL)"
  [[ ${CI:-} == true ]] && fail "$message"
  echo "bazelisk check: skipped: $message"
  exit 0
fi
command -v npm >/dev/null 2>&1 || fail "npm is missing (Debian/Ubuntu: sudo apt-get install npm; macOS: brew install node)"

version=$(head -n 1 "$repo/.bazelversion")
case $(uname -s) in Linux) os=linux ;; Darwin) os=darwin ;; *) fail "no bazelisk for $(uname -s)" ;; esac
case $(uname -m) in x86_64 | amd64) arch=x86_64 npm_arch=amd64 ;; arm64 | aarch64) arch=arm64 npm_arch=arm64 ;;
  *) fail "no bazelisk for $(uname -m)" ;; esac

work=$(mktemp -d)
server=""
cleanup() {
  [[ -z $server ]] || kill "$server" 2>/dev/null || true
  (cd "$repo" && "$real" --output_base="$work/output-base" shutdown >/dev/null 2>&1) || true
  rm -rf "$work"
}
trap cleanup EXIT

npm install --silent --no-audit --no-fund --prefix "$work/npm" "@bazel/bazelisk@$bazelisk_version" >&2
bazelisk=$work/npm/node_modules/@bazel/bazelisk/bazelisk-${os}_$npm_arch
[[ -x $bazelisk ]] || fail "@bazel/bazelisk@$bazelisk_version has no $bazelisk"

mkdir -p "$work/releases/$version" "$work/home"
standin=$work/releases/$version/bazel-$version-$os-$arch
printf '#!/bin/sh\necho "stand-in for Bazel %s: running %s" >&2\nexec "%s" "$@"\n' "$version" "$real" "$real" >"$standin"
chmod +x "$standin"

port=$(free_port)
python=${PYTHON_BIN:-python3}
# Python's http.server, with a bounded lifetime: it goes with this script (the trap), or after 5
# minutes whatever happens. Its access log (stderr) shows what bazelisk asked for.
"$python" - "$port" "$work/releases" >"$work/http.log" 2>&1 <<'PY' &
import functools, http.server, sys, threading

handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[2])
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), handler)
threading.Timer(300, server.shutdown).start()
server.serve_forever()
PY
server=$!
for _ in $(seq 50); do
  "$python" -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null && break
  sleep 0.1
done

status=0
(cd "$repo" && env -u USE_BAZEL_VERSION BAZELISK_HOME="$work/home" BAZELISK_BASE_URL="http://127.0.0.1:$port" \
  "$bazelisk" --output_base="$work/output-base" version) >"$work/out" 2>&1 || status=$?
cat "$work/out"

grep -q "GET /$version/bazel-$version-$os-$arch " "$work/http.log" ||
  fail "bazelisk did not download /$version/bazel-$version-$os-$arch (server log: $(cat "$work/http.log"))"
grep -q "stand-in for Bazel $version" "$work/out" || fail "bazelisk did not run the binary it downloaded"
# Debian's build of 4.2.3 has no version stamp: `version` then says so and exits 2.
if ! grep -q "^Build label: $version" "$work/out" &&
  ! { [[ $status -eq 2 ]] && grep -q "Version information not available" "$work/out"; }; then
  fail "Bazel did not answer through bazelisk (exit $status)"
fi
[[ $status -eq 0 || $status -eq 2 ]] || fail "bazelisk version exited $status"
echo "bazelisk check: bazelisk $bazelisk_version resolved .bazelversion ($version), downloaded bazel-$version-$os-$arch and ran it"
