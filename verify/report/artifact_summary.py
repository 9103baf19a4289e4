"""One row per verified artifact: what a user picks a variant by (size against distribution error).

    summarize(artifacts, results) -> {artifact: {"size", "kl_mean", "kl_max", "same_top", "rms_dp",
                                                 "behaviour_agreement"}}

From report.json's own entries, nothing re-measured: size is the artifact's bytes (a directory's
total for a Core ML package); kl_mean, kl_max, same_top (one minus top-1 disagreement, llama.cpp's
"same top p") and rms_dp are the worst over the contract lengths (every length must pass, so the
worst is what the gate saw); behaviour_agreement is the share of held-out questions whose greedy
reply through the artifact gives eager's canonical answer (verify/behaviour/greedy_agreement.py), where it
was measured, else absent. Generic over artifacts: a new variant (GGUF or Core ML) appears here,
in report.json's "summary" and in report.html's size-against-KLD figure once it is verified.
"""

import math

METRICS = ("kl_mean", "kl_max", "rms_dp")


def _value(entry):
    value = entry.get("value") if isinstance(entry, dict) else None
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _worst(scopes: dict, metric: str):
    values = [
        _value(checks[metric])
        for scope, checks in scopes.items()
        if scope.startswith("T") and scope[1:].isdigit() and metric in checks
    ]
    values = [v for v in values if v is not None and math.isfinite(v)]
    return max(values) if values else None


def summarize(artifacts: dict, results: dict) -> dict:
    """{artifact: facts} for every artifact with length-scoped distribution metrics (module docstring)."""
    out = {}
    for artifact, scopes in sorted(results.items()):
        row = {metric: _worst(scopes, metric) for metric in METRICS}
        if row["kl_mean"] is None:
            continue
        flips = _worst(scopes, "top1_disagreement")
        row["same_top"] = None if flips is None else float(f"{1.0 - flips:.4g}")
        row["size"] = artifacts.get(artifact, {}).get("size")
        agreement = _value(scopes.get("all", {}).get("behaviour_agreement"))
        if agreement is not None:
            row["behaviour_agreement"] = agreement
        out[artifact] = {key: value for key, value in sorted(row.items()) if value is not None}
    return out
