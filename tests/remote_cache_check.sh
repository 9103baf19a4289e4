#!/usr/bin/env bash
# Proves that a shared remote cache makes the pipeline free for the next person, and that the
# cache can never make a build wrong. Run by .ci/run; anyone can rerun it:
#
#   tests/remote_cache_check.sh
#
# It copies the working tree (tracked and untracked, not ignored files) to a temporary directory,
# starts a private nginx cache (tools/remote_cache/cache.sh) on a free port, and with its own
# Bazel output base (yours is never touched):
#   1. cold:        builds //pipeline:e2e with --config=remote, filling the cache;
#   2. reuse:       `bazel clean --expunge`, then builds again: every pipeline action must be a
#                   remote cache hit; prints the wall-time ratio of this build to the cold one;
#   3. incremental: a verify/-only change reruns only verification; training and conversion do
#                   not run;
#   4. cache down:  with the server stopped, a clean build of the dataset still succeeds, with a
#                   warning, and gives the same bytes;
#   5. corrupt:     one cached blob overwritten; Bazel notices, reruns the action, same bytes.
# Exits 1 if any step fails. Needs nginx (Debian/Ubuntu: sudo apt-get install nginx-light; macOS:
# brew install nginx) and curl.
#
#   tests/remote_cache_check.sh --filled STORE
#
# takes a cache store that a build of //pipeline:e2e in this workspace has just filled (.ci/run's
# test command fills one): step 1 is then that build, not a second cold one, and its outputs in
# this workspace's bazel-bin are the expected bytes; the check's output base is new, so step 2 needs
# no clean, and it proves the hits in another directory and output base, as a teammate gets them.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON_BIN:-python3.11}
filled=
while [[ $# -gt 0 ]]; do
  case $1 in
    --filled) filled=$2; shift 2 ;;
    *) echo "remote_cache_check.sh: unknown argument: $1 (usage: $0 [--filled STORE])" >&2; exit 2 ;;
  esac
done
work=$(mktemp -d)
tree=$work/tree
base=$work/output-base
# copy_workspace, free_port, now_seconds, sha256_files
source "$repo/tools/scratch/scratch.sh"
port=$(free_port)
store=${filled:-$work/store}
if [[ -n $filled && ! -d $filled/cas ]]; then
  echo "remote_cache_check.sh: --filled $filled holds no cache entries ($filled/cas is missing)" >&2
  exit 2
fi
cache=("$repo/tools/remote_cache/cache.sh" --port "$port" --store "$store" --run "$work/run")
remote=(--config=remote "--remote_cache=http://127.0.0.1:$port")
# The M8b* stages of pipeline/defs.bzl: training and conversion must never rerun needlessly.
upstream=M8bTokenizer,M8bDatasetShard,M8bDataset,M8bTrain,M8bTorchScript,M8bCoreML,M8bGGUF

cleanup() {
  (cd "$tree" 2>/dev/null && ./bazelw --output_base="$base" shutdown >/dev/null 2>&1) || true
  "${cache[0]}" stop --run "$work/run" >/dev/null 2>&1 || true
  chmod -R u+w "$work" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
now() { now_seconds; }
bazel() { (cd "$tree" && ./bazelw --output_base="$base" "$@"); }
spawns() { "$python" "$repo/tests/spawn_summary.py" "$@"; }
digest() { (cd "$(bazel info bazel-bin 2>/dev/null)/pipeline" && sha256_files kd.jsonl tokenizer.json); }

copy_workspace "$repo" "$tree"
"${cache[0]}" start "${cache[@]:1}"

if [[ -z $filled ]]; then
  step "1. cold build, filling the cache"
  bazel fetch //pipeline:e2e
  start=$(now)
  bazel build "${remote[@]}" --execution_log_json_file="$work/cold.json" //pipeline:e2e
  cold=$("$python" -c "print($(now) - $start)")
  spawns "$work/cold.json"
  expected=$(digest)

  step "2. bazel clean --expunge, then the same build from the cache"
  bazel clean --expunge
else
  step "1. the cache the build in $repo filled"
  expected=$(cd "$repo/bazel-bin/pipeline" && sha256_files kd.jsonl tokenizer.json)
  echo "  $(find "$store/cas" -type f | wc -l | tr -d ' ') entries; kd.jsonl and tokenizer.json from $repo/bazel-bin"

  step "2. a new output base in another directory: the same build from the cache"
fi
start=$(now)
bazel fetch //pipeline:e2e
fetch=$("$python" -c "print($(now) - $start)")
start=$(now)
bazel build "${remote[@]}" --execution_log_json_file="$work/cached.json" //pipeline:e2e 2>&1 |
  tee "$work/cached.log"
cached=$("$python" -c "print($(now) - $start)")
grep -E 'INFO: [0-9]+ processes' "$work/cached.log" || true
spawns "$work/cached.json" --all_remote_hits
[[ "$(digest)" == "$expected" ]] || { echo "FAIL: dataset bytes from the cache differ from the build's" >&2; exit 1; }
if [[ -z $filled ]]; then
  "$python" -c "print(f'  wall time: cold build {$cold:.1f} s, cached build {$cached:.1f} s, ratio {$cached / $cold:.3f}' \
    f' (re-fetching the locked packages after --expunge: {$fetch:.1f} s, not counted)')"
else
  "$python" -c "print(f'  wall time: cached build {$cached:.1f} s (fetching the locked packages: {$fetch:.1f} s, not counted;' \
    ' the cold build was the one that filled the cache)')"
fi
bazel run "${remote[@]}" //pipeline:e2e -- --out_dir="$work/dist" | tail -n 3

step "3. a verify/-only change reruns only verification"
echo "# remote_cache_check: a verify/-only change" >>"$tree/verify/parity.py"
bazel build "${remote[@]}" --execution_log_json_file="$work/incremental.json" //pipeline:e2e
spawns "$work/incremental.json" --must_run M8bVerify --must_not_run "$upstream"

step "4. cache server down: the build carries on locally, with a warning"
"${cache[0]}" stop --run "$work/run"
bazel clean
bazel build "${remote[@]}" //pipeline:dataset 2>&1 | tee "$work/down.log"
grep -qiE 'WARNING:.*(remote|cache|connect)' "$work/down.log" || {
  echo "FAIL: no warning about the unreachable cache" >&2
  exit 1
}
[[ "$(digest)" == "$expected" ]] || { echo "FAIL: dataset bytes differ after a cache-down build" >&2; exit 1; }
echo "  dataset rebuilt locally, same sha256"

step "5. a corrupted cached blob is detected and the action reruns"
"${cache[0]}" start "${cache[@]:1}"
blob=$store/cas/$(echo "$expected" | awk '$2 == "kd.jsonl" {print $1}')
[[ -f $blob ]] || { echo "FAIL: no cached blob for kd.jsonl at $blob" >&2; exit 1; }
printf 'corrupted by remote_cache_check\n' >"$blob"
bazel clean
bazel build "${remote[@]}" --execution_log_json_file="$work/corrupt.json" //pipeline:dataset 2>&1 |
  tee "$work/corrupt.log"
spawns "$work/corrupt.json" --must_run M8bDataset
[[ "$(digest)" == "$expected" ]] || { echo "FAIL: dataset bytes differ after a corrupt blob" >&2; exit 1; }
echo "  corrupt blob rejected, dataset rebuilt, same sha256"

step "remote cache check passed"
