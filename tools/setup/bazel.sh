# Shared by ./bazelw and the checks that drive Bazel themselves (sourced, not run).
#
# .bazelversion names a real release, 4.2.3, because bazelisk (Homebrew's `bazel` on a Mac, and
# many Linux users') only accepts versions it can download: a bare `4` is refused. Debian's
# bazel-bootstrap package (4.2.3+ds) installs its binary as /usr/bin/bazel-4 behind a wrapper,
# /usr/bin/bazel, that reads the same file and runs /usr/bin/bazel-<version>, so with 4.2.3 it
# looks for a bazel-4.2.3 that no package installs. The wrapper reads $USE_BAZEL_VERSION first;
# setting it to 4 for that wrapper, and only for it, keeps Debian working.

# is_debian_bazel_wrapper PATH: PATH is Debian's wrapper script with its bazel-4 beside it (a
# bazelisk binary is not a `#!` script, and npm's bazelisk.js has no bazel-4 beside it).
is_debian_bazel_wrapper() {
  local wrapper=$1 dir
  dir=$(dirname "$wrapper")
  [[ -x $dir/bazel-4 && -f $wrapper ]] || return 1
  [[ $(head -c 2 "$wrapper") == "#!" ]] && grep -q 'USE_BAZEL_VERSION' "$wrapper"
}

# use_debian_bazel_4 WORKSPACE_DIR: exports USE_BAZEL_VERSION=4 when `bazel` on PATH is Debian's
# wrapper and the version in WORKSPACE_DIR/.bazelversion is not installed beside it. Leaves any
# USE_BAZEL_VERSION the user set alone.
use_debian_bazel_4() {
  local wrapper version dir
  [[ -z ${USE_BAZEL_VERSION:-} ]] || return 0
  wrapper=$(command -v bazel 2>/dev/null) || return 0
  is_debian_bazel_wrapper "$wrapper" || return 0
  version=$(head -n 1 "$1/.bazelversion")
  dir=$(dirname "$wrapper")
  [[ -x $dir/bazel-$version ]] && return 0
  export USE_BAZEL_VERSION=4
}
