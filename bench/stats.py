"""Percentiles and the small table printer the benchmarks share."""

from __future__ import annotations

import math
import os
import platform
import sys
from collections.abc import Sequence


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile by the nearest-rank method (nan for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table, so the output can be pasted into docs/benchmarks.md."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    lines = [line(cells[0]), line(["-" * w for w in widths])]
    lines += [line(row) for row in cells[1:]]
    return "\n".join(lines)


def machine() -> str:
    """nproc, memory and Python, as stated beside every set of figures."""
    memory = "unknown memory"
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            kib = int(meminfo.readline().split()[1])
        memory = f"{kib / 1024 / 1024:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{os.cpu_count()} CPUs, {memory}, {platform.system()} {platform.release()}, "
        f"Python {sys.version.split()[0]}"
    )
