#!/usr/bin/env bash
# Builds pipeline artifacts twice, cold, in two separate Bazel output bases, and compares the sha256
# of every file (a .mlpackage file by file). Exits 1 on any difference.
#
#   tests/reproducible_build.sh [BAZEL] [TARGET...]
#
# BAZEL defaults to ./bazelw; TARGET defaults to //pipeline:artifacts (every artifact). Each build
# runs in its own copy of the workspace, at two different paths, so neither the checkout's path nor
# the output base's (the pip repository's directory, the sandbox, the compile's temporary
# directory) may reach an artifact, and the workspace's own bazel-* links are left alone. A narrower check of the .pt2 files alone (the torch.export program and the
# AOTInductor decoder, whose compile pins what docs/architecture.md, "The AOTInductor decoder",
# lists):
#
#   tests/reproducible_build.sh ./bazelw //pipeline:magic-8-ball.pt2 //pipeline:magic-8-ball.decode.pt2
#
# When a zip archive (.pt, .pt2) differs, the records that differ are named. Each cold build
# re-installs the locked packages and reruns the pipeline up to the targets: several minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
# copy_workspace, sha256_files
source tools/scratch/scratch.sh
bazel=./bazelw
if [[ $# -gt 0 && $1 != //* ]]; then
  bazel=$1
  shift
fi
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  targets=(//pipeline:artifacts)
fi
work=$(mktemp -d)
here=$PWD
tree_of() {  # the workspace copy of build $1 (the second one directory deeper: another path length)
  if [[ $1 == first ]]; then echo "$work/tree-first"; else echo "$work/tree-second/checkout"; fi
}
cleanup() {
  for run in first second; do
    if [[ -d "$work/base-$run" ]]; then
      (cd "$(tree_of $run)" && "$bazel" --output_base="$work/base-$run" shutdown >/dev/null 2>&1) || true
    fi
  done
  rm -rf "$work"
}
trap cleanup EXIT

for run in first second; do
  copy_workspace "$here" "$(tree_of $run)"
done
for run in first second; do
  base="$work/base-$run"
  tree=$(tree_of $run)
  echo "== cold build $run (workspace $tree, output base $base): ${targets[*]}"
  (cd "$tree" && "$bazel" --output_base="$base" build "${targets[@]}")
  bin=$(cd "$tree" && "$bazel" --output_base="$base" info bazel-bin 2>/dev/null)
  # `|| true`: with a list of targets some of these names were not built, and find says so.
  (cd "$bin/pipeline" && { find kd.jsonl tokenizer.json student.* loss_history.jsonl magic-8-ball.* \
    contract.json report.json report.html Modelfile -type f 2>/dev/null || true; } | LC_ALL=C sort |
    while IFS= read -r f; do sha256_files "$f"; done) >"$work/$run.sha256"
  ln -s "$bin/pipeline" "$work/out-$run"
done

echo "== sha256 of every artifact file"
cat "$work/first.sha256"
if [[ ! -s "$work/first.sha256" ]]; then
  echo "no artifact files were built; nothing to compare" >&2
  exit 1
fi
if diff -u "$work/first.sha256" "$work/second.sha256"; then
  echo "reproducible: $(wc -l <"$work/first.sha256") files identical across two cold builds"
else
  # Name the records of each differing archive that differ (torch's zips: .pt, .pt2).
  diff "$work/first.sha256" "$work/second.sha256" | sed -n 's/^< [0-9a-f]*  //p' | while IFS= read -r f; do
    case $f in
      *.pt | *.pt2)
        "${PYTHON_BIN:-python3}" - "$work/out-first/$f" "$work/out-second/$f" <<'EOF'
import hashlib, sys, zipfile
first, second = (zipfile.ZipFile(p) for p in sys.argv[1:3])
names = sorted({n.split("/", 1)[-1] for z in (first, second) for n in z.namelist()})
def digest(z, name):
    found = [n for n in z.namelist() if n.split("/", 1)[-1] == name]
    return hashlib.sha256(z.read(found[0])).hexdigest()[:16] if found else "absent"
for name in names:
    a, b = digest(first, name), digest(second, name)
    if a != b:
        print(f"  {sys.argv[1].rsplit('/', 1)[-1]}: record {name} differs ({a} vs {b})")
EOF
        ;;
    esac
  done
  echo "NOT reproducible: the files above differ between the two cold builds" >&2
  exit 1
fi
