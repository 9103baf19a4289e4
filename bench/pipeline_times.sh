#!/usr/bin/env bash
# Pipeline wall time, as a user meets it: cold, warm (no-op), after a verify/-only change, and after
# `bazel clean` with a remote cache. Writes one TSV row per case (bench/table.py's format) for
# //bench:all to print beside the other benchmarks; bench/all.sh runs both.
#
#   bench/pipeline_times.sh [--repeats N] [--out rows.tsv] [--bazel ./bazelw]
#
# Never touches your tree or your Bazel state: it copies the workspace to a temporary directory
# (the verify/ change is made there), builds with a throwaway --output_base, and serves a throwaway
# local cache (tools/remote_cache/cache.sh, Debian's nginx) on a free port. Each repetition starts
# from nothing (a new copy, output base and cache), so a cold build reinstalls the locked Python
# packages and reruns every stage: several minutes. The cold build runs with the remote cache on
# (that is what fills it), and so do the others, so all four share one set of flags.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/.." && pwd)
# copy_workspace, free_port, now_seconds, sha256_files
source "$src/tools/scratch/scratch.sh"
repeats=1
out=/dev/stdout
bazel=./bazelw
while [[ $# -gt 0 ]]; do
  case $1 in
    --repeats) repeats=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --bazel) bazel=$2; shift 2 ;;
    *) echo "pipeline_times.sh: unknown argument: $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
if [[ ! $repeats =~ ^[1-9][0-9]*$ ]]; then
  echo "pipeline_times.sh: --repeats must be a positive whole number, got $repeats" >&2
  exit 2
fi

# The four rows, by index (macOS's bash 3.2 has no associative arrays); runs[i] holds row i's
# comma-separated times.
COLD=0 WARM=1 VERIFY=2 REMOTE=3
names=("pipeline: cold build (fills remote cache)" "pipeline: warm rebuild (no-op)"
  "pipeline: after a verify/-only change" "pipeline: after bazel clean, remote cache")
runs=("" "" "" "")

work=""
cleanup() {
  if [[ -n $work ]]; then
    (cd "$work/repo" 2>/dev/null && "$bazel" --output_base="$work/base" shutdown >/dev/null 2>&1) || true
    "$src/tools/remote_cache/cache.sh" stop --run "$work/cache-run" >/dev/null 2>&1 || true
    rm -rf "$work"
  fi
}
trap cleanup EXIT

# One timed build; its log goes to stderr so the rows on stdout stay clean.
timed_build() {
  local began ended
  began=$(now_seconds)
  (cd "$work/repo" && "$bazel" --output_base="$work/base" build "${flags[@]}" //pipeline:e2e) >&2
  ended=$(now_seconds)
  awk -v a="$began" -v b="$ended" 'BEGIN { printf "%.2f", b - a }'
}

add() { runs[$1]="${runs[$1]:+${runs[$1]},}$2"; echo "pipeline_times: ${names[$1]}: $2 s" >&2; }

for ((i = 1; i <= repeats; i++)); do
  work=$(mktemp -d)
  copy_workspace "$src" "$work/repo"
  port=$(free_port)
  "$src/tools/remote_cache/cache.sh" start --port "$port" --store "$work/cache-store" --run "$work/cache-run" >&2
  flags=(--config=remote "--remote_cache=http://127.0.0.1:$port")

  add "$COLD" "$(timed_build)"
  # report.html from another checkout and output base: the same bytes are what a cache relies on.
  bin=$(cd "$work/repo" && "$bazel" --output_base="$work/base" info "${flags[@]}" bazel-bin 2>/dev/null)
  echo "pipeline_times: $(cd "$bin/pipeline" && sha256_files report.html report.json)" >&2
  add "$WARM" "$(timed_build)"
  # A comment-only change in a verify/ source: the verify stage reruns, nothing upstream does.
  printf '\n# pipeline_times.sh: a comment-only change\n' >>"$work/repo/verify/report.py"
  add "$VERIFY" "$(timed_build)"
  (cd "$work/repo" && "$bazel" --output_base="$work/base" clean) >&2
  add "$REMOTE" "$(timed_build)"
  cleanup
  work=""
done

{
  printf '%s\ts\t\t%s\n' "${names[$COLD]}" "${runs[$COLD]}"
  for row in "$WARM" "$VERIFY" "$REMOTE"; do
    printf '%s\ts\t%s\t%s\n' "${names[$row]}" "${names[$COLD]}" "${runs[$row]}"
  done
} >"$out"
