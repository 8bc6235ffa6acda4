"""The evaluation report: predictions.jsonl, summary.json, Markdown tables, and the report directory with its charts.

Input is what evaluation produces (`Prediction`s per case and model, `GroupRow`s summarising them); rows are
ordered as `report_base` says. The charts are drawn by `charts`, the W&B logging lives in `dashboards`.
"""

from __future__ import annotations

import json
import math
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, asdict, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from clinical_rl.data.departments import DEPARTMENT_ZH
from clinical_rl.eval.charts import plot_training_curve, render_charts
from clinical_rl.eval.records import REPORT, GroupRow, Outcomes, Prediction, Provenance, count_outcomes
from clinical_rl.eval.report_base import MISSING as _MISSING
from clinical_rl.eval.report_base import cell as _cell
from clinical_rl.eval.report_base import md_table as _table
from clinical_rl.eval.report_base import (
    atomic_file,
    benchmark_order,
    department_label,
    department_order,
    format_accuracy,
    index_rows,
    language_label,
    language_order,
    model_order,
)
from clinical_rl.eval.report_chain import chain_lines

__all__ = ["write_predictions", "read_predictions", "markdown_report", "write_report"]

# ---------------------------------------------------------------------------------------------------------------
# predictions.jsonl
# ---------------------------------------------------------------------------------------------------------------


def write_predictions(predictions: Iterable[Prediction], path: Path) -> Path:
    """Write one JSON object per line (UTF-8, non-ASCII kept as is), atomically; returns `path`."""
    with atomic_file(Path(path)) as f:
        for prediction in predictions:
            f.write(json.dumps(prediction.to_json(), ensure_ascii=False) + "\n")
    return Path(path)


@lru_cache(maxsize=1)
def _prediction_schema() -> dict[str, tuple[Any, bool]]:
    """Field name -> (resolved type hint, required) for `Prediction`."""
    hints = typing.get_type_hints(Prediction)
    return {
        f.name: (hints[f.name], f.default is MISSING and f.default_factory is MISSING) for f in fields(Prediction)
    }


def _type_error(value: Any, hint: Any) -> str | None:
    """Why `value` does not fit `hint` (None when it does). Handles str/None/Literal/unions, enough for records."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        return None if value in allowed else f"expected one of {list(allowed)}, got {value!r}"
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if any(_type_error(value, option) is None for option in options):
            return None
        names = " | ".join("null" if o is type(None) else getattr(o, "__name__", str(o)) for o in options)
        return f"expected {names}, got {type(value).__name__} {value!r}"
    if origin in (dict, list):  # the chain fields: the container's type, its items are free-form
        return None if isinstance(value, origin) else f"expected {origin.__name__}, got {type(value).__name__}"
    if hint is type(None):
        return None if value is None else f"expected null, got {value!r}"
    if isinstance(hint, type):
        if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
            return None
        return f"expected {hint.__name__}, got {type(value).__name__} {value!r}"
    return None


def _parse_prediction(obj: Any) -> Prediction:
    """A `Prediction` from a decoded JSON line; ValueError("field 'x': ...") when it does not fit."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    schema = _prediction_schema()
    for name in obj:
        if name not in schema:
            raise ValueError(f"field {name!r}: unknown field")
    for name, (hint, required) in schema.items():
        if name not in obj:
            if required:
                raise ValueError(f"field {name!r}: missing")
            continue
        problem = _type_error(obj[name], hint)
        if problem:
            raise ValueError(f"field {name!r}: {problem}")
    return Prediction(**obj)


def read_predictions(path: Path) -> list[Prediction]:
    """Read a predictions.jsonl; blank lines are skipped, a bad line raises ValueError naming `file:line`."""
    from clinical_rl.data.rows import jsonl_records

    out: list[Prediction] = []
    for where, obj in jsonl_records(Path(path)):
        try:
            out.append(_parse_prediction(obj))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from e
    return out


# ---------------------------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------------------------


def _spread(values: Sequence[int]) -> str:
    """One number when all models agree (they scored the same cases), else `min–max`."""
    if not values:
        return _MISSING
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}–{hi}"


def _group_table(
    index: Mapping[tuple[str, str, str, str], GroupRow],
    benchmark: str,
    models: Sequence[str],
    kind: str,
    groups: Sequence[str],
    first_header: str,
    label: Callable[[str], str],
) -> list[str]:
    header = [first_header, "n cases", "distinct diagnoses", "distinct ICD-10", *models]
    body = []
    for group in groups:
        found = [r for m in models if (r := index.get((benchmark, m, kind, group))) is not None]
        body.append(
            [
                label(group),
                _spread([r.accuracy.n for r in found]),
                _spread([r.distinct_diagnoses for r in found]),
                _spread([r.distinct_icd10 for r in found]),
                *(format_accuracy(index.get((benchmark, m, kind, group))) for m in models),
            ]
        )
    return _table(header, body, ["l", "r", "r", "r", *("r" for _ in models)])


def markdown_report(
    rows: Sequence[GroupRow],
    *,
    title: str,
    provenance: Provenance,
    charts: Mapping[str, Path] | None = None,
    relative_to: Path | None = None,
    outcomes: Sequence[Outcomes] = (),
) -> str:
    """The report as Markdown: what was evaluated (`provenance`); per benchmark an overview (model × overall /
    departments / languages), the `outcomes` (format rate, no final answer, undecided, errors per model), for a
    chain benchmark what the episodes ordered and cost (`report_chain`), a department table and a language table;
    then the charts, as `![label](path)`.

    Chart paths are emitted as given (POSIX separators); with `relative_to` (the report's directory) they are
    made relative to it.
    """
    index = index_rows(rows)
    lines = [f"# {title}", "", *_provenance_lines(provenance), ""]
    lines.append(
        "Accuracy in percent with its bootstrap 95% confidence interval in brackets; n is the number of cases "
        f"scored. Groups of fewer than {provenance.min_interval_n} cases show no interval (eval.min_interval_n): "
        "with so few cases a bootstrap interval says nothing. Departments follow ClinicalGPT-R1's grouping of "
        "ICD-10 codes."
    )
    if any(r.errors for r in rows):
        # said once, above the tables, so that the cells can stay short
        lines += ["", "`k failed` beside an accuracy: k of the group's cases got no answer or no judgement (a "
                  "failed request or judge, see Outcomes); they count as not correct. `— (k of k failed)`: every "
                  "case failed, so nothing was measured and there is no accuracy."]
    if not rows:
        lines += ["", "_No results._"]
    for benchmark in benchmark_order(rows):
        models = model_order(rows, benchmark)
        departments = department_order(rows, benchmark)
        languages = language_order(rows, benchmark)
        lines += ["", f"## Benchmark `{benchmark}`", "", "### Overview", ""]
        lines += _overview_table(index, benchmark, models, departments, languages)
        lines += _outcome_lines([o for o in outcomes if o.benchmark == benchmark])
        lines += chain_lines(index, benchmark, models, departments)  # chain benchmarks only
        if departments:
            lines += ["", "### By department", ""]
            lines += _group_table(
                index, benchmark, models, "department", departments, "department", _department_label_md
            )
        if languages:
            lines += ["", "### By language", ""]
            lines += _group_table(
                index, benchmark, models, "language", languages, "language", lambda g: f"{language_label(g)} ({g})"
            )
    if charts:
        lines += ["", "## Charts"]
        for label, chart in charts.items():
            target = Path(chart)
            if relative_to is not None and target.is_absolute():
                target = Path(os.path.relpath(target, relative_to))
            lines += ["", f"### {label}", "", f"![{label}]({target.as_posix()})"]
    return "\n".join(lines) + "\n"


def _overview_table(index: Mapping, benchmark: str, models: Sequence[str], departments: Sequence[str],
                    languages: Sequence[str]) -> list[str]:
    """One row per model: overall, then each department and language, every cell with its n."""
    header = ["model", "overall", *map(department_label, departments), *map(language_label, languages)]
    body = []
    for model in models:
        groups = [("overall", "all"), *(("department", d) for d in departments), *(("language", g) for g in languages)]
        body.append([model, *(format_accuracy(index.get((benchmark, model, kind, group)), with_n=True)
                              for kind, group in groups)])
    return _table(header, body, ["l", *("r" for _ in header[1:])])


def _provenance_lines(provenance: Provenance) -> list[str]:
    """The "What was evaluated" section: each model's source, each benchmark's source and size, config, version."""
    lines = ["## What was evaluated", "", "| model | source |", "|:---|:---|"]
    lines += [f"| {_cell(m.label)} | {_cell(m.describe())} |" for m in provenance.models]
    lines += ["", "| benchmark | cases from | n |", "|:---|:---|---:|"]
    lines += [f"| {_cell(b.name)} | {_cell(b.path)} | {b.n} |" for b in provenance.benchmarks]
    return lines + ["", f"Config hash `{provenance.config_hash}` (`config_files.config_hash` of the resolved "
                        f"config), clinical_rl {provenance.version}."]


def _outcome_lines(outcomes: Sequence[Outcomes]) -> list[str]:
    """Per model: format rate, missing answers, undecided and errors (all but correct count as not correct)."""
    if not outcomes:
        return []
    body = [[o.model, o.n, f"{100 * o.format_rate:.1f}%", o.no_answer, o.undecided, o.errors,
             (o.first_error or "")[:120]] for o in outcomes]
    lines = ["", "### Outcomes", "",
             "Format rate: share of cases whose reply had a final answer to judge. No final answer: a reply "
             "without one. Undecided: neither rule nor judge could decide. Errors: a failed request or judge. "
             "All of these count as not correct above.", ""]
    if any(o.errors for o in outcomes):
        lines += ["**Some answers failed**: see the errors and the first error below.", ""]
    return lines + _table(["model", "n", "format rate", "no final answer", "undecided", "errors", "first error"],
                          body, ["l", "r", "r", "r", "r", "r", "l"])


def _department_label_md(department: str) -> str:
    zh = DEPARTMENT_ZH.get(department)  # type: ignore[call-overload]
    return f"{department_label(department)} ({zh})" if zh else department_label(department)


# ---------------------------------------------------------------------------------------------------------------
# The report directory
# ---------------------------------------------------------------------------------------------------------------


def _finite(obj: Any) -> Any:
    """JSON-safe: non-finite floats become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _group_json(row: GroupRow) -> dict[str, Any]:
    """One accuracy row for summary.json: non-finite numbers null, and value, low and high null where every
    prediction failed (`summarize` already makes them NaN; a row built otherwise must not read as 0% either)."""
    data = _finite(asdict(row))
    if row.chain is None:  # one-turn rows keep their layout
        del data["chain"]
    if row.all_failed:
        data["accuracy"] |= {"value": None, "low": None, "high": None}
    return data


def _write_text(path: Path, text: str) -> Path:
    """`text` written to `path` atomically; returns `path`."""
    with atomic_file(path) as f:
        f.write(text)
    return Path(path)


def write_report(
    rows: Sequence[GroupRow],
    predictions: Iterable[Prediction],
    out_dir: Path,
    *,
    provenance: Provenance,
    title: str = "clinical_rl evaluation",
    training_history: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """Write `predictions.jsonl`, `summary.json`, `charts/*.png` and `report.md` (last) under `out_dir`.

    summary.json: {"groups": accuracy rows with their n and errors (interval bounds null where a group has none;
    value too where all its predictions failed; a chain benchmark's rows also `chain`: `ChainMeans`), "outcomes": per
    benchmark and model n, errors, undecided, no_answer, answered, first_error, error_frac and format_rate,
    "models": [{label, path, base_url, model}], "benchmarks": [{name, path, n}], "config_hash", "version",
    "min_interval_n"} -- the last five from `provenance`.

    `training_history`: the `metrics.jsonl` rows of the RL run that produced a model in the report; its per-step
    reward and accuracy become `charts/training.png`.

    Every file is replaced atomically, so a re-run into the same directory never leaves a half-written file;
    charts of an earlier run that this one does not produce are removed. Returns the path of `report.md`.
    """
    out_dir = Path(out_dir)
    chart_dir = out_dir / "charts"
    index_rows(rows)  # fail on duplicates before writing anything
    predictions = list(predictions)
    outcomes = count_outcomes(predictions)
    write_predictions(predictions, out_dir / "predictions.jsonl")
    summary = {"groups": [_group_json(row) for row in rows],
               "outcomes": [asdict(o) | {"error_frac": o.error_frac, "format_rate": o.format_rate} for o in outcomes],
               **asdict(provenance)}
    _write_text(out_dir / "summary.json", json.dumps(summary, ensure_ascii=False, indent=2, allow_nan=False) + "\n")
    charts = render_charts(rows, chart_dir)
    if training_history:
        charts["Training curve: reward and accuracy of the RL rollouts per step"] = plot_training_curve(
            training_history, chart_dir / "training.png")
    report = _write_text(out_dir / REPORT, markdown_report(rows, title=title, provenance=provenance, charts=charts,
                                                           relative_to=out_dir, outcomes=outcomes))
    produced = {p.resolve() for p in charts.values()}
    if chart_dir.is_dir():
        for stale in chart_dir.iterdir():
            ours = re.fullmatch(r"(overall|training|departments_.+|languages_.+)\.png", stale.name)
            if ours and stale.resolve() not in produced:
                stale.unlink(missing_ok=True)
    return report
