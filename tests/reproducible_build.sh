#!/usr/bin/env bash
# Builds every pipeline artifact twice, cold, in two separate Bazel output bases, and compares the
# sha256 of every file (a .mlpackage file by file). Exits 1 on any difference.
#
#   tests/reproducible_build.sh [BAZEL]        (BAZEL defaults to ./bazelw)
#
# Each cold build re-installs the locked packages and reruns the whole pipeline: several minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
# sha256_files
source tools/scratch/scratch.sh
bazel=${1:-./bazelw}
work=$(mktemp -d)
trap 'for b in "$work"/base-*; do "$bazel" --output_base="$b" shutdown >/dev/null 2>&1 || true; done; rm -rf "$work"' EXIT

for run in first second; do
  base="$work/base-$run"
  echo "== cold build $run (output base $base)"
  "$bazel" --output_base="$base" build //pipeline:artifacts
  bin=$("$bazel" --output_base="$base" info bazel-bin 2>/dev/null)
  (cd "$bin/pipeline" && find kd.jsonl tokenizer.json student.* loss_history.jsonl magic-8-ball.* \
    contract.json report.json report.html Modelfile -type f 2>/dev/null | LC_ALL=C sort | while IFS= read -r f; do sha256_files "$f"; done) >"$work/$run.sha256"
done

echo "== sha256 of every artifact file"
cat "$work/first.sha256"
if diff -u "$work/first.sha256" "$work/second.sha256"; then
  echo "reproducible: $(wc -l <"$work/first.sha256") files identical across two cold builds"
else
  echo "NOT reproducible: the files above differ between the two cold builds" >&2
  exit 1
fi
