#!/usr/bin/env bash
# Every benchmark, one table: bench/pipeline_times.sh (it runs Bazel itself, so it cannot run
# inside `bazel run`), then //bench:all, which measures the other rows and prints them all.
#
#   bench/all.sh [--repeats N] [--pipeline_repeats N] [--no_pipeline] [-- extra //bench:all flags]
#
# The pipeline rows take several minutes per repetition (a cold build from nothing), so they run
# once unless --pipeline_repeats says otherwise; the other rows run --repeats times (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."

repeats=3
pipeline_repeats=1
pipeline=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --repeats) repeats=$2; shift 2 ;;
    --pipeline_repeats) pipeline_repeats=$2; shift 2 ;;
    --no_pipeline) pipeline=0; shift ;;
    --) shift; break ;;
    *) echo "all.sh: unknown argument: $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done

rows=$(mktemp)
trap 'rm -f "$rows"' EXIT
extra=()
if [[ $pipeline -eq 1 ]]; then
  bench/pipeline_times.sh --repeats "$pipeline_repeats" --out "$rows"
  extra=(--rows="$rows")
fi
# ${extra[@]+...}: under set -u, bash 3.2 (macOS) calls an empty array unbound.
./bazelw run //bench:all -- --repeats="$repeats" ${extra[@]+"${extra[@]}"} "$@"
