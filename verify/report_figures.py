"""The report's figures as inline SVG text, drawn with matplotlib, byte-identical for equal inputs.

    loss_curves_svg(history)                     train loss per step, held-out loss at its intervals
    answer_distributions_svg(per_kind, answers)  teacher vs student bars, one panel per question kind
    parity_svg(max_abs, bounds)                  each artifact's max |logit diff| per length vs its bound

Why the output is stable: the Agg backend (no display), matplotlib's default style plus fixed
rcParams (below) whatever matplotlibrc a user has, text kept as <text> elements (svg.fonttype
"none": no glyph outlines that depend on the font file found), a fixed svg.hashsalt (the ids of
clip paths and markers are hashes salted with it; unset, the salt is random per process), no
Date/Creator metadata, and values rounded to 4 significant digits before plotting so last-bit
noise cannot move a path.
"""

import atexit
import contextlib
import functools
import io
import math
import os
import re
import shutil
import tempfile

# matplotlib writes a font cache into MPLCONFIGDIR (default ~/.config/matplotlib) on import; a
# build action must not write into $HOME, so point it at a private temporary directory first.
# To build that cache matplotlib runs fc-list, and fontconfig prints "Fontconfig error: No writable
# cache directories" (once per font directory) when it finds no cache of its own it can use or
# write: in a Bazel action HOME is unset and /var/cache is read-only. Its per-user cache lives in
# $XDG_CACHE_HOME/fontconfig, so that goes into the private directory too, unless already set.
if "MPLCONFIGDIR" not in os.environ or "XDG_CACHE_HOME" not in os.environ:
    _private = tempfile.mkdtemp(prefix="m8b-mpl-")
    atexit.register(functools.partial(shutil.rmtree, _private, ignore_errors=True))
    for _name, _sub in (("MPLCONFIGDIR", "matplotlib"), ("XDG_CACHE_HOME", "cache")):
        if _name not in os.environ:
            os.environ[_name] = os.path.join(_private, _sub)
            os.mkdir(os.environ[_name])

import matplotlib

matplotlib.use("Agg")

from matplotlib import pyplot as plt

_STYLE = {
    "svg.fonttype": "none",
    "svg.hashsalt": "m8b-report",
    "font.family": ["DejaVu Sans", "sans-serif"],
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}
TEACHER_COLOR, STUDENT_COLOR = "#4c72b0", "#dd8452"
BOUND_COLOR, PASS_COLOR, FAIL_COLOR = "#555555", "#55a868", "#c44e52"


@contextlib.contextmanager
def _style():
    """matplotlib's built-in defaults (not a user's matplotlibrc), then ours."""
    with plt.style.context("default"), plt.rc_context(_STYLE):
        yield


def _round(value: float) -> float:
    return float(f"{value:.4g}")


def _svg(fig) -> str:
    """The figure as an <svg> element for inline use: no XML prolog or DOCTYPE, no metadata block."""
    out = io.StringIO()
    fig.savefig(out, format="svg", metadata=_METADATA, bbox_inches="tight")
    plt.close(fig)
    text = out.getvalue()
    text = text[text.index("<svg") :]
    # An empty <metadata> block (we cleared every field) is noise in the page.
    return re.sub(r"\s*<metadata>.*?</metadata>", "", text, flags=re.S).strip() + "\n"


def loss_curves_svg(history: list[dict]) -> str:
    """Train loss (every step) and held-out loss (the steps that have one) against the step."""
    with _style():
        fig, ax = plt.subplots(figsize=(7.5, 3.6))
        steps = [int(row["step"]) for row in history]
        ax.plot(steps, [_round(row["loss"]) for row in history], color=TEACHER_COLOR, lw=1, label="train")
        held = [row for row in history if row.get("heldout_loss") is not None]
        if held:
            ax.plot(
                [int(row["step"]) for row in held],
                [_round(row["heldout_loss"]) for row in held],
                color=STUDENT_COLOR,
                marker="o",
                ms=4,
                lw=1.5,
                label="held-out",
            )
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("distillation loss (log scale)")
        ax.legend(loc="upper right")
        return _svg(fig)


def answer_distributions_svg(per_kind: dict[str, dict], answers: list[str], columns: int = 3) -> str:
    """One panel per question kind: mean teacher and student probability of each answer (1-based)."""
    kinds = sorted(per_kind)
    rows = max(1, math.ceil(len(kinds) / columns))
    positions = range(1, len(answers) + 1)
    with _style():
        fig, axes = plt.subplots(
            rows, columns, figsize=(3.2 * columns, 2.1 * rows), sharey=True, squeeze=False
        )
        for index, ax in enumerate(axes.flat):
            if index >= len(kinds):
                ax.set_visible(False)
                continue
            kind = kinds[index]
            row = per_kind[kind]
            ax.bar(
                [p - 0.2 for p in positions], [_round(v) for v in row["teacher"]], 0.4, color=TEACHER_COLOR
            )
            ax.bar(
                [p + 0.2 for p in positions], [_round(v) for v in row["student"]], 0.4, color=STUDENT_COLOR
            )
            ax.set_title(f"{kind} (n={row['questions']}, TV {row['tv']:.3f})", fontsize=9)
            ax.set_xticks([1, 5, 10, 15, 20] if len(answers) == 20 else list(positions))
            ax.grid(axis="x", visible=False)
        fig.legend(
            handles=[
                plt.Rectangle((0, 0), 1, 1, color=TEACHER_COLOR, label="teacher"),
                plt.Rectangle((0, 0), 1, 1, color=STUDENT_COLOR, label="student"),
            ],
            loc="upper center",
            ncol=2,
            bbox_to_anchor=(0.5, 1.0 + 0.12 / rows),
        )
        fig.supxlabel("answer number (see the table below)")
        fig.supylabel("mean probability")
        fig.tight_layout()
        return _svg(fig)


def parity_svg(max_abs: dict[str, dict[int, float]], bounds: dict[str, float]) -> str:
    """Grouped bars: for each artifact, max |logit - eager| at each length; dashes at its bound."""
    artifacts = list(max_abs)
    lengths = sorted({length for values in max_abs.values() for length in values})
    width = 0.8 / max(1, len(lengths))
    with _style():
        fig, ax = plt.subplots(figsize=(7.5, 3.2))
        for a, artifact in enumerate(artifacts):
            for i, length in enumerate(lengths):
                value = max_abs[artifact].get(length)
                if value is None:
                    continue
                ok = value <= bounds[artifact]
                x = a - 0.4 + width * (i + 0.5)
                # A perfect 0 has no place on a log axis: draw it at a floor far below any bound.
                ax.bar(x, max(_round(value), 1e-9), width * 0.9, color=PASS_COLOR if ok else FAIL_COLOR)
                ax.annotate(f"T{length}", (x, max(_round(value), 1e-9)), ha="center", va="bottom", fontsize=7)
            ax.hlines(bounds[artifact], a - 0.45, a + 0.45, colors=BOUND_COLOR, linestyles="dashed")
        ax.set_xticks(range(len(artifacts)), artifacts)
        ax.set_yscale("log")
        ax.set_ylabel("max |logit - eager| (log)")
        ax.grid(axis="x", visible=False)
        ax.legend(
            handles=[
                plt.Rectangle((0, 0), 1, 1, color=PASS_COLOR, label="within bound"),
                plt.Rectangle((0, 0), 1, 1, color=FAIL_COLOR, label="above bound"),
                plt.Line2D([], [], color=BOUND_COLOR, ls="dashed", label="bound"),
            ],
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=8,
        )
        return _svg(fig)


def size_vs_kld_svg(summary: dict[str, dict]) -> str:
    """The Pareto picture: each artifact's size against its mean KL from fp32 eager (both log)."""
    with _style():
        fig, ax = plt.subplots(figsize=(7.5, 3.6))
        for name, row in sorted(summary.items()):
            if "size" not in row:
                continue
            # An exact 0 has no place on a log axis: drawn at 1e-15, far below any artifact's error.
            x, y = row["size"], max(_round(row["kl_mean"]), 1e-15)
            ax.scatter([x], [y], s=28, color=PASS_COLOR, zorder=3)
            ax.annotate(name, (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("file size (bytes, log)")
        ax.set_ylabel("mean KL vs fp32 eager (worst length, log)")
        return _svg(fig)
