"""References from the repository's files to documents and paths: each must stay inside the repository.

Two rules, checked over a set of files given as {repository-relative path: text}:

1. A document reference, any word ending in ".md" (SECURITY.md, docs/architecture.md), must name
   a file of the set: relative to the referring file's directory, or else to the repository root.
   A section named with it, as in `docs/architecture.md, "The contract"` or
   `docs/architecture.md#the-contract`, must be a heading of that file. This is read from the
   whole text, code included: an error message that sends a user to a missing document is as
   broken as a comment that does.
2. Prose (comments, docstrings, Markdown) must not point outside the repository: a relative path
   that starts by going up must name a file or directory of the set from the referring file's
   directory, and no absolute path may lead into a home or work directory (a sibling checkout on
   one machine). Code strings are left out of this rule: runfiles paths into other Bazel
   repositories and test payloads legitimately go up.

Why: a newcomer who clones the repository has only the repository. A reason that lives in a file
elsewhere is lost to them.
"""

import ast
import dataclasses
import io
import posixpath
import re
import tokenize

# A word ending in ".md", not preceded by a path character (so the tail of a URL is not a match),
# then optionally a closing backtick and a section: #anchor, or , "Heading".
_DOC_REF = re.compile(
    r"(?<![\w./-])(?P<target>(?:\.{1,2}/)*\w[\w./-]*\.md)\b`?"
    r"(?:#(?P<anchor>[\w-]+)|\s*,\s*\"(?P<heading>[^\"]+)\")?"
)
_CLIMBING = re.compile(r"(?<![\w./-])(?:\.\./)+[\w.-]*\w(?:/[\w.-]*\w)*")
# Home and work directories: where a path into another checkout on the same machine would start.
_OUTSIDE_ROOTS = ("/work/", "/home/", "/Users/")
_ABSOLUTE = re.compile(r"(?<![\w.-])(?:" + "|".join(re.escape(r) for r in _OUTSIDE_ROOTS) + r")")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


@dataclasses.dataclass(frozen=True)
class Problem:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def _normal(text: str) -> str:
    return " ".join(text.replace("`", "").split()).casefold()


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")


def headings(markdown: str) -> list[str]:
    """The ATX headings of a Markdown text, outside fenced code blocks."""
    found, fenced = [], False
    for line in markdown.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and (match := _HEADING.match(line)):
            found.append(match.group(1))
    return found


def _python_prose(text: str) -> list[tuple[int, str]]:
    """(first line, text) of each docstring and each run of consecutive comment lines."""
    chunks = []
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return [(1, text)]  # not Python after all: check all of it
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    chunks.append((body[0].lineno, body[0].value.value))
    run_start, run, last = 0, [], -1
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except tokenize.TokenError:
        return [(1, text)]
    for token in tokens:
        if token.type != tokenize.COMMENT:
            continue
        row = token.start[0]
        if row != last + 1 and run:
            chunks.append((run_start, "\n".join(run)))
            run = []
        if not run:
            run_start = row
        run.append(token.string.lstrip("#").strip())
        last = row
    if run:
        chunks.append((run_start, "\n".join(run)))
    return chunks


def _hash_comment_prose(text: str) -> list[tuple[int, str]]:
    """Shell, Starlark, bazelrc and the like: what follows a # on each line, runs joined."""
    chunks, run, run_start = [], [], 0
    for number, line in enumerate(text.splitlines(), 1):
        index = line.find("#")
        if index < 0:
            if run:
                chunks.append((run_start, "\n".join(run)))
                run = []
            continue
        if not run:
            run_start = number
        run.append(line[index + 1 :].strip())
    if run:
        chunks.append((run_start, "\n".join(run)))
    return chunks


def prose(path: str, text: str) -> list[tuple[int, str]]:
    """The human-language parts of a file, as (first line number, text) chunks."""
    if path.endswith(".md"):
        return [(1, text)]
    if path.endswith(".py"):
        return _python_prose(text)
    return _hash_comment_prose(text)


def _line_of(chunk_start: int, chunk: str, offset: int) -> int:
    return chunk_start + chunk.count("\n", 0, offset)


def _resolve(path: str, target: str, files) -> tuple[str | None, bool]:
    """(the repository path `target` names from `path`, or None; whether it climbs above the root)."""
    beside = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    if beside.startswith("../") or beside == "..":
        return None, True
    for candidate in (beside, posixpath.normpath(target)):
        if candidate in files:
            return candidate, False
    return None, False


def _check_doc_refs(path: str, start: int, text: str, files: dict[str, str], anchors: dict) -> list[Problem]:
    problems = []
    for match in _DOC_REF.finditer(text):
        line = _line_of(start, text, match.start())
        target = match.group("target")
        resolved, climbs = _resolve(path, target, files)
        if climbs:
            problems.append(Problem(path, line, f"{target}: leaves the repository; cite a file inside it"))
            continue
        if resolved is None:
            problems.append(
                Problem(path, line, f"{target}: no such document in the repository; cite one that is")
            )
            continue
        if resolved not in anchors:
            titles = headings(files[resolved])
            anchors[resolved] = ({_normal(t) for t in titles}, {_slug(t) for t in titles})
        names, slugs = anchors[resolved]
        heading, anchor = match.group("heading"), match.group("anchor")
        if heading is not None and _normal(heading) not in names:
            problems.append(Problem(path, line, f'{target}, "{" ".join(heading.split())}": no such heading'))
        if anchor is not None and anchor.lower() not in slugs:
            problems.append(Problem(path, line, f"{target}#{anchor}: no such heading"))
    return problems


def _check_prose_paths(path: str, text: str, known: set[str]) -> list[Problem]:
    problems = []
    for start, chunk in prose(path, text):
        for match in _CLIMBING.finditer(chunk):
            target = match.group(0)
            beside = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
            line = _line_of(start, chunk, match.start())
            if beside.startswith("../") or beside == "..":
                problems.append(
                    Problem(path, line, f"{target}: leaves the repository; cite a file inside it")
                )
            elif beside not in known:
                problems.append(
                    Problem(path, line, f"{target}: names no file or directory of the repository from here")
                )
        for match in _ABSOLUTE.finditer(chunk):
            line = _line_of(start, chunk, match.start())
            problems.append(
                Problem(
                    path,
                    line,
                    f"{match.group(0)}...: an absolute path outside the repository; cite a repository file",
                )
            )
    return problems


def check(files: dict[str, str]) -> list[Problem]:
    """Every broken reference in `files` ({repository-relative path: text}), in path order."""
    anchors: dict = {}
    known = set(files)
    for name in files:  # and every directory that holds one
        while "/" in name:
            name = name.rsplit("/", 1)[0]
            known.add(name)
    problems = []
    for path in sorted(files):
        text = files[path]
        # The whole text finds every reference; prose also finds a section named on the next comment
        # line (a reference ending in a comma, then `# "Heading"`), which the comment markers hide
        # from the whole text.
        for start, chunk in [(1, text), *prose(path, text)]:
            problems += _check_doc_refs(path, start, chunk, files, anchors)
        problems += _check_prose_paths(path, text, known)
    return sorted(set(problems), key=lambda p: (p.path, p.line, p.message))
