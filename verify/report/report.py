"""The verification report: every check's measured value, its bound and verdict, and artifact digests.

    {"format": "m8b-verify-report", "version": 1, "model_name": ..., "contract_sha256": ...,
     "artifacts": {"torchscript": {"sha256": ..., "size": ...}, "coreml": {..., "files": n}, ...},
     "results": {"torchscript": {"T64": {"max_abs_diff": {"value": 2e-06, "op": "<=",
                                                           "bound": 0.0001, "ok": true}, ...},
                                 "all": {"behaviour_mismatches": {...}}}, ...},
     "summary": {"gguf_q8_0": {"size": ..., "kl_mean": ..., "same_top": ...,
                               "behaviour_agreement": ...}, ...},
     "gates_ok": true}

"summary" is derived from the rest (verify/report/artifact_summary.py): one row per verified artifact,
the facts a user picks a variant by.

Scopes are "T<length>" for checks at one contract length and "all" for whole-artifact checks.
A note is a measured value without a bound (near ties, agreement): it never gates. A note with
"implied_by" is a check another gate already decides (it could fail only where that one fails, e.g.
an argmax flip outside a near tie, which needs a logit error above the max_abs bound): it is
recorded as information, with the check or the reason that makes it so.

A gated check derived from a floor carries the floor its bound came from ("floor"): the floor
measured for that very scope, each contract length its own (conversion/gates.py).

The report is byte-deterministic (same artifacts and inputs -> same bytes): no timings (they go to
the log), no paths, sorted keys, and measured floats rounded to 4 significant digits, so last-bit
noise in a reduction cannot change the file. Verdicts use the unrounded values.

The artifacts section is the manifest of the final artifacts (see conversion/contract.py for why
the contract itself pins only the checkpoint and the TorchScript file). A directory artifact (a
Core ML .mlpackage) is digested as sha256 over its sorted relative paths and each file's sha256.
"""

import json
import math
import operator

from common import atomic, digest
from verify.report import artifact_summary

FORMAT = "m8b-verify-report"
VERSION = 1
ALL = "all"
_OPS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq}


def scope(length: int) -> str:
    return f"T{length}"


describe_artifact = digest.describe


def _rounded(value):
    """JSON-safe and stable: 4 significant digits for floats; inf/nan as strings."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return float(f"{value:.4g}")
    return value


class Report:
    def __init__(self, model_name: str, contract_sha256: str):
        self.model_name = model_name
        self.contract_sha256 = contract_sha256
        self.artifacts: dict[str, dict] = {}
        self.results: dict[str, dict[str, dict[str, dict]]] = {}

    def add_artifact(self, name: str, path: str) -> dict:
        self.artifacts[name] = describe_artifact(path)
        return self.artifacts[name]

    def _slot(self, artifact: str, where: str, name: str) -> dict:
        checks = self.results.setdefault(artifact, {}).setdefault(where, {})
        if name in checks:
            raise ValueError(f"{artifact} {where} {name}: recorded twice")
        return checks

    def check(
        self,
        artifact: str,
        where: str,
        name: str,
        value,
        op: str,
        bound,
        ok: bool | None = None,
        floor=None,
    ) -> bool:
        """Records `value op bound` (op one of <=, >=, ==) and returns the verdict.

        `floor`: the floor measured for this scope (conversion/gates.py), the bound's base, shown
        beside the value and the bound.

        `ok` overrides the comparison for checks whose verdict is more than `op` (e.g. a spec check
        that accepts "unspecified" or "fixed" depending on the input); `op` then documents intent.
        """
        if op not in _OPS:
            raise ValueError(f"op {op!r}; expected one of {sorted(_OPS)}")
        if ok is None:
            ok = bool(_OPS[op](value, bound)) and not (isinstance(value, float) and math.isnan(value))
        entry = {"value": _rounded(value), "op": op, "bound": _rounded(bound), "ok": bool(ok)}
        if floor is not None:
            entry["floor"] = _rounded(floor)
        self._slot(artifact, where, name)[name] = entry
        return ok

    def fail(self, artifact: str, where: str, name: str, error: str) -> None:
        """A check that could not run (the artifact raised): recorded as failed, with the reason."""
        self._slot(artifact, where, name)[name] = {"error": error, "ok": False}

    def note(self, artifact: str, where: str, name: str, value, implied_by: str | None = None) -> None:
        """Information, never a verdict. implied_by: the gate (or the fact) that already decides
        what this check would (module docstring)."""
        entry = {"value": _rounded(value)}
        if implied_by is not None:
            entry["implied_by"] = implied_by
        self._slot(artifact, where, name)[name] = entry

    def merge(self, other: "Report") -> None:
        """Adds another report's artifacts and entries (one backend's, checked apart), after this
        one's; an entry recorded in both is an error, as recording it twice is."""
        if (other.model_name, other.contract_sha256) != (self.model_name, self.contract_sha256):
            raise ValueError("merging the report of another model or contract")
        for name, described in other.artifacts.items():
            if name in self.artifacts:
                raise ValueError(f"artifact {name}: described twice")
            self.artifacts[name] = described
        for artifact, where, name, entry in other._checks():
            self._slot(artifact, where, name)[name] = entry

    def _checks(self):
        for artifact, scopes in self.results.items():
            for where, checks in scopes.items():
                for name, entry in checks.items():
                    yield artifact, where, name, entry

    @property
    def gates_ok(self) -> bool:
        verdicts = [entry["ok"] for *_, entry in self._checks() if "ok" in entry]
        return bool(verdicts) and all(verdicts)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model_name": self.model_name,
            "contract_sha256": self.contract_sha256,
            "artifacts": self.artifacts,
            "results": self.results,
            "summary": artifact_summary.summarize(self.artifacts, self.results),
            "gates_ok": self.gates_ok,
        }

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()

    def save(self, path: str) -> None:
        atomic.write_bytes(path, self.to_bytes())

    def summary(self) -> str:
        """A compact table for people: one line per check, failures marked."""
        rows = [("artifact", "scope", "check", "value", "floor", "bound", "")]
        for artifact, where, name, entry in sorted(self._checks(), key=_summary_order(self.results)):
            if "error" in entry:
                value, bound = "error: " + entry["error"], ""
            else:
                value = _format(entry["value"])
                bound = f"{entry['op']} {_format(entry['bound'])}" if "op" in entry else _note(entry)
            floor = _format(entry["floor"]) if "floor" in entry else ""
            verdict = "" if "ok" not in entry else ("ok" if entry["ok"] else "FAIL")
            rows.append((artifact, where, name, _clip(value), floor, _clip(bound), verdict))
        widths = [max(len(row[i]) for row in rows) for i in range(6)]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[6]
            for row in rows
        ]
        lines.append(f"gates: {'PASS' if self.gates_ok else 'FAIL'}")
        return "\n".join(line.rstrip() for line in lines)


def _summary_order(results: dict):
    """Artifacts in the order checked; per artifact the lengths ascending, then whole-artifact checks."""
    artifacts = list(results)

    def key(item):
        artifact, where, _, _ = item
        length = int(where[1:]) if where != ALL else float("inf")
        return artifacts.index(artifact), length

    return key


def _note(entry: dict) -> str:
    return f"(implied by {entry['implied_by']})" if "implied_by" in entry else "(note)"


def _clip(text: str, width: int = 44) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
