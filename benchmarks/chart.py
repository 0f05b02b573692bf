"""A benchmark's latency rows as a PNG bar chart for docs/numbers.md: median bars, p95 whiskers."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display here, and none needed
import matplotlib.pyplot as plt


def latency_chart(rows: dict[str, tuple[float, float]], title: str, path: Path) -> None:
    """Write one horizontal bar per row (its median and p95 in ms), labelled with the median."""
    names = list(rows)[::-1]  # matplotlib draws the first bar at the bottom
    medians = [rows[name][0] for name in names]
    whiskers = [rows[name][1] - rows[name][0] for name in names]
    figure, axes = plt.subplots(figsize=(9, 0.55 * len(names) + 1.4))
    axes.barh(names, medians, xerr=[[0] * len(names), whiskers], capsize=3)
    longest = max(rows[name][1] for name in names)
    for row, name in enumerate(names):  # the median's label just past the whisker
        axes.text(rows[name][1] + longest * 0.01, row, f"{rows[name][0]:.0f} ms", va="center")
    axes.set_xlabel("milliseconds (bar: median, whisker: p95)")
    axes.set_title(title, fontsize=10)
    axes.set_xlim(0, longest * 1.2)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
