"""Runs one repository-wide check over the files named on the command line.

    repo_check.py doc_refs FILE...   references to documents and paths stay inside the repository
    repo_check.py layering FILE...   imports follow docs/architecture.md, "Package layering"
    repo_check.py doc_defaults FILE...   defaults quoted in the docs are the code's

Run as //:doc_refs_test and //:layering_test, from the runfiles root, where each FILE's path is its
repository path. Exit status 1 with one line per problem, 0 when clean.
"""

import posixpath
import sys

from tools.lint import doc_defaults, doc_refs, layering


def read(paths: list[str]) -> dict[str, str]:
    files = {}
    for path in sorted({posixpath.normpath(p) for p in paths}):  # "./README.md" -> "README.md"
        try:
            with open(path, encoding="utf-8") as handle:
                files[path] = handle.read()
        except UnicodeDecodeError:
            continue  # not text: nothing in it can cite a document
    return files


def main(argv: list[str]) -> int:
    check, paths = argv[0], argv[1:]
    files = read(paths)
    assert files, "no files were handed to the check; see the root BUILD.bazel"
    if check == "doc_refs":
        problems = [str(p) for p in doc_refs.check(files)]
        what = "references"
    elif check == "layering":
        rules = layering.read_rules(files[layering.DOCUMENT])
        problems = layering.check_rules(rules) + [str(p) for p in layering.check(rules, files)]
        what = f"imports of {sum(p.endswith('.py') for p in files)} Python files"
    elif check == "doc_defaults":
        problems = [str(p) for p in doc_defaults.check(files)]
        what = f"defaults quoted in {sum(p.endswith('.md') for p in files)} documents"
    else:
        raise SystemExit(f"unknown check {check!r}; expected doc_refs, layering or doc_defaults")
    for problem in problems:
        print(problem)
    print(f"{check}: {len(files)} files, {what}: {'FAILED' if problems else 'clean'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
