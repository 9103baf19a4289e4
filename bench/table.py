"""One table for every benchmark: a row is a median of repeated runs and its ratio to a baseline.

A baseline is itself a row, measured in the same run (ratio 1.00), so every ratio compares
figures taken side by side on the same machine under the same load. Rows travel between
programs (bench/pipeline_times.sh writes them, //bench:all prints them) as tab-separated lines:

    name <TAB> unit <TAB> baseline name <TAB> run1,run2,...
"""

import dataclasses
import statistics

from common.errors import InputError


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    unit: str  # "tokens/s", "ms", "s": the direction of "better" follows from it
    runs: tuple[float, ...]
    baseline: str | None = None  # another row's name; None: this row is a baseline

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


def to_tsv(row: Row) -> str:
    return "\t".join([row.name, row.unit, row.baseline or "", ",".join(repr(r) for r in row.runs)])


def from_tsv(line: str, where: str) -> Row:
    parts = line.rstrip("\n").split("\t")
    if len(parts) != 4:
        raise InputError(f"{where}: expected name, unit, baseline, runs separated by tabs")
    try:
        runs = tuple(float(r) for r in parts[3].split(","))
    except ValueError:
        raise InputError(f"{where}: runs must be numbers separated by commas, got {parts[3]!r}") from None
    return Row(parts[0], parts[1], runs, parts[2] or None)


def _figure(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def format_table(rows: list[Row]) -> str:
    """Fixed-width table: row, median, unit, ratio to its baseline (baseline rows: 1.00), n, runs."""
    medians = {row.name: row.median for row in rows}
    lines = [("benchmark", "median", "unit", "ratio", "vs", "n", "runs")]
    for row in rows:
        if row.baseline is None:
            ratio, versus = 1.0, "(baseline)"
        elif row.baseline in medians:
            ratio, versus = row.median / medians[row.baseline], row.baseline
        else:
            raise InputError(f"row {row.name!r}: baseline {row.baseline!r} was not measured in this run")
        runs = " ".join(_figure(r) for r in row.runs)
        lines.append(
            (row.name, _figure(row.median), row.unit, f"{ratio:.2f}", versus, str(len(row.runs)), runs)
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    right = {1, 3, 5}
    return "\n".join(
        "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    )
