# Sourced by the scripts that drive Bazel on a throwaway copy of the workspace
# (tests/remote_cache_check.sh, tests/setup_errors.sh, bench/pipeline_times.sh).

# copy_workspace SRC DEST: the files git tracks plus the untracked ones it does not ignore, as they
# are in the working tree (so uncommitted edits count; bazel-* links, dist/ and user.bazelrc do not).
copy_workspace() {
  mkdir -p "$2"
  (cd "$1" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$2")
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
  "${PYTHON_BIN:-python3}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
