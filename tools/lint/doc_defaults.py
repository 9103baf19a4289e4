"""Defaults quoted in the documents must be the code's: training steps, contract lengths, sampling
settings and the bound factor.

The values come from the code itself, read as text (no imports, so the check runs without torch):

    steps        training/config.py, TrainConfig's `steps` field
    sampling     training/sampling.py, Settings' `temperature`, `top_k`, `top_p`, `min_p` fields
    factor       conversion/gates.py, FACTOR_LIMIT (make_gates' default factor)
    lengths      pipeline/defs.bzl, DEFAULT_LENGTHS

Each rule is a pattern for the way our Markdown quotes one of them ("the pipeline's 400 steps",
"`--top_p` (0.9)", "a floor ... times 4", "T64/T128/T256"). A match whose number differs from the
code's is a problem, and so is a rule that matches nothing in any document: a check whose patterns
no longer find their sentences would pass forever.

Why: a figure in the docs that drifts from the code misleads the reader who acts on it; the
reference pipeline's docs quoted numbers that nothing measured.
"""

import ast
import dataclasses
import re

from tools.lint.doc_refs import Problem

_CONFIG = "training/config.py"
_SAMPLING = "training/sampling.py"
_GATES = "conversion/gates.py"
_DEFS = "pipeline/defs.bzl"


def _class_defaults(source: str, class_name: str) -> dict[str, object]:
    """{field: literal default} of a dataclass-style class body (annotated assignments)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return {
                item.target.id: ast.literal_eval(item.value)
                for item in node.body
                if isinstance(item, ast.AnnAssign)
                and isinstance(item.target, ast.Name)
                and item.value is not None
                and isinstance(item.value, ast.Constant)
            }
    raise ValueError(f"class {class_name} not found")


def _module_constant(source: str, name: str) -> object:
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise ValueError(f"{name} not found")


def code_defaults(files: dict[str, str]) -> dict[str, object]:
    """The defaults the documents may quote, read from the code in `files`."""
    sampling = _class_defaults(files[_SAMPLING], "Settings")
    lengths = re.search(r"^DEFAULT_LENGTHS = \[([\d, ]+)\]", files[_DEFS], re.M)
    if lengths is None:
        raise ValueError(f"{_DEFS}: DEFAULT_LENGTHS not found")
    return {
        "steps": _class_defaults(files[_CONFIG], "TrainConfig")["steps"],
        "temperature": sampling["temperature"],
        "top_k": sampling["top_k"],
        "top_p": sampling["top_p"],
        "min_p": sampling["min_p"],
        "factor": _module_constant(files[_GATES], "FACTOR_LIMIT"),
        "lengths": tuple(int(x) for x in lengths.group(1).split(",")),
    }


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str  # a key of code_defaults()
    pattern: re.Pattern

    def quoted(self, match: re.Match) -> object:
        groups = [g for g in match.groups() if g is not None]
        numbers = [float(g.replace(",", "")) for g in groups]
        numbers = [int(n) if n.is_integer() else n for n in numbers]
        return tuple(numbers) if self.name == "lengths" else numbers[0]


RULES = [
    Rule(
        "steps",
        re.compile(r"(?:pipeline's|default(?:s| of)?|trains? for)\s+(\d[\d,]*)\s+(?:training\s+)?steps\b"),
    ),
    *[
        Rule(name, re.compile(rf"`--{name}`\s*\((?:default\s+)?(\d+(?:\.\d+)?)\)"))
        for name in ("temperature", "top_k", "top_p", "min_p")
    ],
    Rule("factor", re.compile(r"\bfloors?\b[^.;]{0,90}?\b(?:times|x)\s+(\d+(?:\.\d+)?)\b")),
    Rule("lengths", re.compile(r"\bT(\d+)/T(\d+)/T(\d+)\b(?!/)")),
]


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def check(files: dict[str, str]) -> list[Problem]:
    """Problems: a quoted default that is not the code's, or a rule no document matches."""
    defaults = code_defaults(files)
    problems, matched = [], set()
    for path, text in sorted(files.items()):
        if not path.endswith(".md"):
            continue
        flat = re.sub(r"\s+", " ", text)  # quotes wrap across lines
        for index, rule in enumerate(RULES):
            for match in rule.pattern.finditer(flat):
                matched.add(index)
                quoted, expected = rule.quoted(match), defaults[rule.name]
                if quoted != expected:
                    # Map the offset in the flattened text back to a line of the file.
                    line = _line(text, _unflatten(text, match.start()))
                    problems.append(
                        Problem(
                            path,
                            line,
                            f"quotes {rule.name} {quoted!r} ({match.group(0)!r}) "
                            f"but the code's default is {expected!r}",
                        )
                    )
    for index, rule in enumerate(RULES):
        if index not in matched:
            problems.append(
                Problem(
                    "tools/lint/doc_defaults.py",
                    1,
                    f"rule {rule.pattern.pattern!r} ({rule.name}) matches no document",
                )
            )
    return problems


def _unflatten(text: str, flat_offset: int) -> int:
    """The offset in `text` of the character at `flat_offset` in its whitespace-collapsed form."""
    flat = i = 0
    while i < len(text) and flat < flat_offset:
        if text[i].isspace():
            while i < len(text) and text[i].isspace():
                i += 1
            flat += 1
        else:
            i += 1
            flat += 1
    return i
