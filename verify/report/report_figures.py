"""The report's figures as inline SVG text, drawn with matplotlib, byte-identical for equal inputs.

    loss_curves_svg(history)                     train loss per step, held-out loss at its intervals
    answer_distributions_svg(per_kind, answers)  teacher vs student bars, one panel per question kind
    parity_svg(max_abs, bounds)                  each artifact's max |logit diff| per length vs its bound
    size_vs_kld_svg(summary)                     each artifact's size against its mean KL (labelled)

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
from matplotlib.transforms import Bbox

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


# One colour per contract length (shortest lightest) for bars within their bound; any bar above
# its bound is FAIL_COLOR whatever its length.
LENGTH_COLORS = ("#a1d99b", "#74c476", "#41ab5d", "#238b45", "#006d2c", "#00441b")


def parity_svg(max_abs: dict[str, dict[int, float]], bounds: dict[str, float]) -> str:
    """One row per artifact (names on the y axis, readable however many there are), a bar per
    contract length: max |logit - eager|, on a log axis; a dashed tick at the artifact's bound."""
    artifacts = list(max_abs)
    lengths = sorted({length for values in max_abs.values() for length in values})
    height = 0.8 / max(1, len(lengths))
    colors = {length: LENGTH_COLORS[i % len(LENGTH_COLORS)] for i, length in enumerate(lengths)}
    with _style():
        fig, ax = plt.subplots(figsize=(7.5, 0.6 + 0.36 * max(1, len(artifacts))))
        for a, artifact in enumerate(artifacts):
            for i, length in enumerate(lengths):
                value = max_abs[artifact].get(length)
                if value is None:
                    continue
                ok = value <= bounds[artifact]
                # A perfect 0 has no place on a log axis: draw it at a floor far below any bound.
                ax.barh(
                    a - 0.4 + height * (i + 0.5),
                    max(_round(value), 1e-9),
                    height * 0.9,
                    left=1e-10,
                    color=colors[length] if ok else FAIL_COLOR,
                )
            ax.vlines(bounds[artifact], a - 0.45, a + 0.45, colors=BOUND_COLOR, linestyles="dashed")
        ax.set_yticks(range(len(artifacts)), artifacts)
        ax.set_ylim(len(artifacts) - 0.5, -0.5)  # the first artifact on top
        ax.set_xscale("log")
        ax.set_xlabel("max |logit - eager| (log)")
        ax.grid(axis="y", visible=False)
        ax.legend(
            handles=[
                *(plt.Rectangle((0, 0), 1, 1, color=colors[n], label=f"T{n}") for n in lengths),
                plt.Rectangle((0, 0), 1, 1, color=FAIL_COLOR, label="above bound"),
                plt.Line2D([], [], color=BOUND_COLOR, ls="dashed", label="bound"),
            ],
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=8,
        )
        return _svg(fig)


def size_vs_kld_svg(summary: dict[str, dict]) -> str:
    """The Pareto picture: each artifact's size against its mean KL from fp32 eager (both log).

    Artifacts at one point (a GGUF file and the same file under an f16 cache, say) share one label;
    each label takes the first place around its point that covers no other label or point."""
    points: dict[tuple[float, float], list[str]] = {}
    for name, row in sorted(summary.items()):
        if "size" in row:
            # An exact 0 has no place on a log axis: drawn at 1e-15, far below any artifact's error.
            points.setdefault((row["size"], max(_round(row["kl_mean"]), 1e-15)), []).append(name)
    with _style():
        fig, ax = plt.subplots(figsize=(8.5, 4.2))
        for x, y in points:
            ax.scatter([x], [y], s=28, color=PASS_COLOR, zorder=3)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("file size (bytes, log)")
        ax.set_ylabel("mean KL vs fp32 eager (worst length, log)")
        ax.margins(x=0.3, y=0.25)
        ax.autoscale_view()  # the final limits, before the labels are measured against each other
        _place_labels(fig, ax, [(", ".join(names), xy) for xy, names in sorted(points.items())])
        return _svg(fig)


# Where a label may go, in points from its marker (x, y, horizontal alignment): right, left,
# then further above and below, nearest first.
_LABEL_PLACES = [
    (dx, dy, align)
    for dy in (-3, 6, -12, 15, -21, 24, -30, 33, -39, 42)
    for dx, align in ((6, "left"), (-6, "right"))
]


def _place_labels(fig, ax, labels: list[tuple[str, tuple[float, float]]], fontsize: float = 8) -> None:
    """Annotates each point at the first of _LABEL_PLACES whose box overlaps no placed label and no
    marker (the last place if none is free).

    Boxes are measured with the Agg renderer and DejaVu Sans, the font the page's SVG names
    (svg.fonttype "none": the browser draws the text)."""
    renderer = fig.canvas.get_renderer()
    to_display = ax.transData.transform
    markers = []
    for _, xy in labels:
        px, py = to_display(xy)
        markers.append(Bbox.from_extents(px - 4, py - 4, px + 4, py + 4))
    placed: list = []
    for text, xy in labels:
        for dx, dy, align in _LABEL_PLACES:
            label = ax.annotate(
                text,
                xy,
                xytext=(dx, dy),
                textcoords="offset points",
                fontsize=fontsize,
                ha=align,
                va="bottom",
            )
            box = label.get_window_extent(renderer).expanded(1.04, 1.1)
            if not any(box.overlaps(other) for other in placed + markers):
                break
            if (dx, dy, align) != _LABEL_PLACES[-1]:
                label.remove()
        placed.append(box)
