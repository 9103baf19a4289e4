# Sourced by the scripts that drive Bazel on a throwaway copy of the workspace
# (tests/remote_cache_check.sh, tests/setup_errors.sh, tests/bazelisk_check.sh,
# tests/reproducible_build.sh, bench/pipeline_times.sh). Works with GNU and BSD (macOS) tools
# alike, under bash 3.2.

# copy_workspace SRC DEST: the files git tracks plus the untracked ones it does not ignore, as they
# are in the working tree (so uncommitted edits count; bazel-* links, dist/ and user.bazelrc do not).
copy_workspace() {
  mkdir -p "$2"
  # tar, not `cp --parents` (GNU only): GNU tar and macOS's bsdtar both read a NUL-separated list.
  (cd "$1" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) |
    (cd "$2" && tar -xf -)
}

# sha256_files FILE...: `<sha256>  <file>` lines, from sha256sum (GNU) or shasum -a 256 (macOS).
sha256_files() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$@"; else shasum -a 256 "$@"; fi
}

# now_seconds: wall-clock seconds with a fraction (`date +%s.%N` is GNU only).
now_seconds() {
  "${PYTHON_BIN:-python3}" -c 'import time; print(f"{time.time():.3f}")'
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
  "${PYTHON_BIN:-python3}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
