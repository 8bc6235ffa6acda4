"""Bar charts of the evaluation's `GroupRow`s as PNGs: per department, per language, overall per model.

A group whose predictions all failed gets no bar but an "all failed" marker in its model's colour; where value
labels are drawn, a bar whose group had failures says how many under its value (they count as not correct).

Charts use `matplotlib.figure.Figure` with the Agg canvas, so nothing global (pyplot state, backend) changes.
Their text is English only: the default fonts lack CJK glyphs, so characters the font cannot draw are replaced.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from clinical_rl.eval.records import GroupRow
from clinical_rl.eval.report_base import (
    atomic_file,
    benchmark_order,
    department_label,
    department_order,
    file_slug,
    has_accuracy,
    index_rows,
    language_label,
    language_order,
    model_order,
)

__all__ = ["plot_departments", "plot_languages", "plot_models_overall", "plot_training_curve", "render_charts"]

DPI = 120


@lru_cache(maxsize=1)
def _font_has() -> Callable[[str], bool]:
    from matplotlib import font_manager

    font = font_manager.get_font(font_manager.findfont(font_manager.FontProperties()))
    return lambda ch: ch.isspace() or font.get_char_index(ord(ch)) != 0


def _plain(text: str) -> str:
    """`text` with characters the default font cannot draw replaced by `?` (no missing-glyph warnings)."""
    has = _font_has()
    return "".join(ch if has(ch) else "?" for ch in text)


def _model_colors(models: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors if len(models) <= 10 else colormaps["tab20"].colors
    return {m: palette[i % len(palette)] for i, m in enumerate(models)}


class _Series(NamedTuple):
    """One series' bars: x positions, heights (%), CI whiskers below and above (%) and errors per bar; and the x
    positions of its groups whose predictions all failed, which get a marker instead of a bar."""

    xs: list[float]
    heights: list[float]
    lows: list[float]
    highs: list[float]
    errors: list[int]
    failed: list[float]


def _series_bars(groups: Sequence[str], lookup: Callable[[str], GroupRow | None], position: int,
                 bar_width: float) -> _Series:
    """One series' bars. Groups without an accuracy get no bar: absent ones nothing, those whose predictions all
    failed a marker (`failed`), since a 0% bar would claim a measurement. Rows without an interval (too few cases,
    `Estimate.has_interval`) get NaN whiskers, which matplotlib leaves undrawn: no error bar rather than a
    zero-width one that reads as certainty."""
    out = _Series([], [], [], [], [], [])
    for j, group in enumerate(groups):
        row = lookup(group)
        x = j - 0.4 + bar_width * (position + 0.5)
        if row is not None and row.all_failed:
            out.failed.append(x)
        if not has_accuracy(row):
            continue
        assert row is not None
        est = row.accuracy
        out.xs.append(x)
        out.heights.append(100 * est.value)
        out.lows.append(max(0.0, 100 * (est.value - est.low)) if est.has_interval else math.nan)
        out.highs.append(max(0.0, 100 * (est.high - est.value)) if est.has_interval else math.nan)
        out.errors.append(row.errors)
    return out


def _style_axes(ax: Any, groups: Sequence[str], *, title: str, xlabel: str, rotate: bool) -> None:
    """Group ticks, the 0-105 % scale, labels, a light grid, no top/right spines, the legend outside."""
    ax.set_xticks(range(len(groups)), [_plain(g) for g in groups])
    if rotate:
        for label in ax.get_xticklabels():
            label.set_rotation(30)
            label.set_horizontalalignment("right")
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.set_xlabel(xlabel)
    ax.set_title(_plain(title))
    ax.yaxis.grid(True, color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(title="model" if xlabel != "model" else "language", fontsize=8, title_fontsize=8,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _grouped_bars(
    path: Path,
    *,
    groups: Sequence[str],
    series: Sequence[str],
    lookup: Callable[[str, str], GroupRow | None],
    colors: Mapping[str, Any],
    title: str,
    xlabel: str,
    value_labels: bool,
    rotate: bool = False,
) -> Path:
    """Grouped bars (x: `groups`, one bar per `series`) with CI error bars where rows have an interval, saved
    atomically as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not groups or not series:
        raise ValueError(f"nothing to plot for {title!r}: no groups or no series")
    width_in = min(18.0, max(6.0, 1.0 + len(groups) * (0.45 + 0.28 * len(series))))
    fig = Figure(figsize=(width_in, 4.6), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    bar_width = 0.8 / len(series)
    for i, name in enumerate(series):
        bars = _series_bars(groups, lambda group: lookup(group, name), i, bar_width)
        ax.bar(
            bars.xs,
            bars.heights,
            bar_width * 0.92,
            yerr=[bars.lows, bars.highs] if bars.xs else None,
            capsize=max(1.5, 4.0 - 0.5 * len(series)),
            color=colors[name],
            edgecolor="white",
            linewidth=0.5,
            error_kw={"elinewidth": 1.0, "ecolor": "#333333"},
            label=_plain(name),
        )
        if value_labels:
            for x, h, hi, errors in zip(bars.xs, bars.heights, bars.highs, bars.errors, strict=True):
                top = h if math.isnan(hi) else h + hi  # above the CI whisker, not inside it
                label = f"{h:.1f}\n{errors} failed" if errors else f"{h:.1f}"  # failures count as wrong: say so
                ax.annotate(label, (x, top), xytext=(0, 2), textcoords="offset points",
                            ha="center", va="bottom", fontsize=7)
        for x in bars.failed:  # always marked, value labels or not: an unexplained gap reads as missing data
            ax.annotate("all failed", (x, 0), xytext=(0, 3), textcoords="offset points", rotation=90,
                        ha="center", va="bottom", fontsize=7, color=colors[name])
    _style_axes(ax, groups, title=title, xlabel=xlabel, rotate=rotate)
    fig.tight_layout()
    try:
        with atomic_file(Path(path), "wb") as f:
            fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        fig.clear()
    return Path(path)


def plot_departments(rows: Sequence[GroupRow], path: Path, benchmark: str, *, value_labels: bool = False) -> Path:
    """Accuracy per department (x, `DEPARTMENTS` order), one bar per model with its CI; PNG at `path`."""
    index = index_rows(rows)
    by_label = {department_label(d): d for d in department_order(rows, benchmark)}
    return _grouped_bars(
        path,
        groups=list(by_label),
        series=model_order(rows, benchmark),
        lookup=lambda g, m: index.get((benchmark, m, "department", by_label[g])),
        colors=_model_colors(model_order(rows)),
        title=f"{benchmark}: accuracy by department",
        xlabel="department",
        value_labels=value_labels,
        rotate=True,
    )


def plot_languages(rows: Sequence[GroupRow], path: Path, benchmark: str, *, value_labels: bool = True) -> Path:
    """Chinese vs English accuracy, grouped per model (x), with CIs; PNG at `path`."""
    index = index_rows(rows)
    languages = language_order(rows, benchmark)
    names = {language_label(g): g for g in languages}
    palette = {"Chinese": "#d62728", "English": "#1f77b4"}
    extra = _model_colors([n for n in names if n not in palette])
    return _grouped_bars(
        path,
        groups=model_order(rows, benchmark),
        series=list(names),
        lookup=lambda m, n: index.get((benchmark, m, "language", names[n])),
        colors={**extra, **palette},
        title=f"{benchmark}: accuracy by language",
        xlabel="model",
        value_labels=value_labels,
        rotate=len(model_order(rows, benchmark)) > 4,
    )


def plot_models_overall(rows: Sequence[GroupRow], path: Path, *, value_labels: bool = True) -> Path:
    """Overall accuracy: benchmarks on x, one bar per model side by side, with CIs; PNG at `path`."""
    index = index_rows(rows)
    models = model_order(rows)
    return _grouped_bars(
        path,
        groups=benchmark_order(rows),
        series=models,
        lookup=lambda b, m: index.get((b, m, "overall", "all")),
        colors=_model_colors(models),
        title="Overall accuracy",
        xlabel="benchmark",
        value_labels=value_labels,
    )


TRAINING_CURVE_KEYS = {"reward/mean": "mean reward", "reward/correct": "accuracy (verifier: correct)",
                       "reward/format_ok": "think format ok"}


def plot_training_curve(history: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Per-step reward, accuracy and format rate of an RL run (`metrics.jsonl` rows, `{"step": N, key: value}`)
    as lines over the steps; PNG at `path`. Keys absent from every row are left out; null/NaN values are gaps."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot()
    steps = [row["step"] for row in history]
    for key, label in TRAINING_CURVE_KEYS.items():
        values = [math.nan if row.get(key) is None else float(row[key]) for row in history]
        if not all(math.isnan(v) for v in values):
            ax.plot(steps, values, marker="o", label=label)
    ax.set(xlabel="RL step", ylabel="share of rollouts / reward", ylim=(0, 1.05), title="Training curve (rollouts)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    try:
        with atomic_file(Path(path), "wb") as f:
            fig.savefig(f, format="png", dpi=DPI)
    finally:
        fig.clear()
    return Path(path)


def render_charts(rows: Sequence[GroupRow], chart_dir: Path) -> dict[str, Path]:
    """All charts for `rows` under `chart_dir`: label -> PNG path (overall, then per benchmark)."""
    charts: dict[str, Path] = {}
    if not rows:
        return charts
    charts["Overall accuracy per model and benchmark"] = plot_models_overall(rows, chart_dir / "overall.png")
    used: set[str] = set()
    for benchmark in benchmark_order(rows):
        base = file_slug(benchmark, "benchmark")
        slug, k = base, 2
        while slug in used:
            slug, k = f"{base}-{k}", k + 1
        used.add(slug)
        if department_order(rows, benchmark):
            charts[f"{benchmark}: accuracy by department"] = plot_departments(
                rows, chart_dir / f"departments_{slug}.png", benchmark
            )
        if language_order(rows, benchmark):
            charts[f"{benchmark}: accuracy by language"] = plot_languages(
                rows, chart_dir / f"languages_{slug}.png", benchmark
            )
    return charts
