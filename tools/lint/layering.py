"""Which package may import which: the table in docs/architecture.md, checked against every import.

The table (docs/architecture.md, "Package layering") is the one statement of the rule; this module
reads it rather than keeping a copy, so the document and the check cannot drift apart. Each row
names a top-level package, the packages its code may import, and the ones its tests (`*_test.py`)
may also import. A package may always import itself.

Besides the imports, the table itself is checked: the packages on top (TOP) are never importable,
and the code columns form no cycle, so "nothing imports upward" holds for the table as written.
"""

import ast
import posixpath
import re

from tools.lint.doc_refs import Problem, headings

DOCUMENT = "docs/architecture.md"
SECTION = "Package layering"
TOP = ("pipeline", "tests", "bench")  # binaries and suites over the stages: nothing imports them
_NAME = re.compile(r"`([\w]+)/?`")


def _section(markdown: str, title: str) -> str:
    lines = markdown.splitlines()
    inside, body = False, []
    for line in lines:
        if line.startswith("#"):
            if inside:
                break
            inside = line.lstrip("#").strip() == title
            continue
        if inside:
            body.append(line)
    if not inside and not body:
        raise ValueError(f"{DOCUMENT}: no section {title!r} (headings: {headings(markdown)})")
    return "\n".join(body)


def read_rules(markdown: str) -> dict[str, tuple[frozenset, frozenset]]:
    """{package: (packages its code may import, packages its tests may also import)} from the table."""
    rules = {}
    rows = [line for line in _section(markdown, SECTION).splitlines() if line.startswith("|")]
    if not rows or not rows[0].lower().startswith("| package |"):
        raise ValueError(f'{DOCUMENT}, "{SECTION}": no table whose first column is "package"')
    for row in rows[2:]:  # after the header and its --- line
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) != 3:
            raise ValueError(f'{DOCUMENT}, "{SECTION}": row {row!r} needs three cells')
        names = [_NAME.findall(cell) for cell in cells]
        if len(names[0]) != 1:
            raise ValueError(f'{DOCUMENT}, "{SECTION}": row {row!r} must name one package first')
        rules[names[0][0]] = (frozenset(names[1]), frozenset(names[2]))
    return rules


def check_rules(rules: dict) -> list[str]:
    """What is wrong with the table itself: a top package made importable, a cycle, an unknown name."""
    problems = []
    for package, (code, tests) in sorted(rules.items()):
        for name in sorted(code | tests):
            if name not in rules:
                problems.append(f"{package}: may import {name}, which has no row of its own")
            if name in TOP:
                problems.append(f"{package}: may import {name}, but nothing may import {', '.join(TOP)}")
    # Depth-first search over the code columns; any back edge is a cycle.
    state: dict[str, str] = {}

    def visit(package: str, trail: list[str]) -> None:
        state[package] = "open"
        for name in sorted(rules.get(package, (frozenset(), frozenset()))[0]):
            if state.get(name) == "open":
                cycle = trail[trail.index(name) :] + [name] if name in trail else [package, name]
                problems.append("cycle: " + " -> ".join(cycle))
            elif name not in state:
                visit(name, trail + [name])
        state[package] = "done"

    for package in sorted(rules):
        if package not in state:
            visit(package, [package])
    return problems


def imports(text: str) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import in a Python file, in functions too."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return sorted(found)


def check(rules: dict, files: dict[str, str]) -> list[Problem]:
    """Every import among `files` ({repository path: text}) that the rules do not allow."""
    problems = []
    for path in sorted(p for p in files if p.endswith(".py")):
        package = path.split("/")[0] if "/" in path else ""
        if package not in rules:
            problems.append(Problem(path, 1, f"package {package or '(root)'} has no row in {DOCUMENT}"))
            continue
        code, tests = rules[package]
        is_test = posixpath.basename(path).endswith("_test.py")
        allowed = code | tests if is_test else code
        for line, module in imports(files[path]):
            if module in rules and module != package and module not in allowed:
                kind = "a test in" if is_test else "code in"
                problems.append(
                    Problem(
                        path,
                        line,
                        f"imports {module}: {kind} {package}/ may import only "
                        f'{", ".join(sorted(allowed)) or "itself"} ({DOCUMENT}, "{SECTION}")',
                    )
                )
    return problems
