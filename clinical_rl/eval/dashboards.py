"""The evaluation on a W&B run: summary and prediction tables, bar plots per benchmark and the chart images."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from clinical_rl.eval.charts import render_charts
from clinical_rl.eval.records import GroupRow, Prediction
from clinical_rl.eval.report_base import (
    benchmark_order,
    department_label,
    department_order,
    file_slug,
    has_accuracy,
    index_rows,
    model_order,
)

__all__ = ["log_to_wandb"]

ROW_COLUMNS = [
    "benchmark", "model", "kind", "group", "accuracy", "ci_low", "ci_high", "n", "errors", "distinct_diagnoses",
    "distinct_icd10",
]
PREDICTION_COLUMNS = [
    "benchmark", "model", "case_id", "department", "language", "reference", "extracted", "verdict", "path"
]


def _wandb_key(text: str) -> str:
    """A key segment: `/` would open a nested section, so it becomes `_`; everything else is kept."""
    return text.replace("/", "_").strip() or "_"


def _nullable(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _percentages(row: GroupRow) -> list[float | None]:
    """Accuracy, CI low and CI high in percent; null where not finite, all three where the row has no accuracy
    (every prediction failed: 0% would read as measured)."""
    est = row.accuracy
    return [_nullable(100 * x) if has_accuracy(row) else None for x in (est.value, est.low, est.high)]


def log_to_wandb(
    rows: Sequence[GroupRow],
    predictions: Iterable[Prediction],
    run: Any,
    *,
    charts: Mapping[str, Path] | None = None,
) -> None:
    """Log the evaluation to an active W&B run, under `eval/...`.

    `eval/summary` (a table of the rows, accuracy in percent with the group's errors beside it; null where all
    its predictions failed), `eval/predictions` (one row per prediction),
    per benchmark `eval/<benchmark>/accuracy_by_model` and `eval/<benchmark>/accuracy_by_department` bar plots,
    and the chart PNGs as `eval/charts/<name>` images (rendered to a temp dir unless `charts` is given).
    Overall accuracies also go to the run summary as `eval/<benchmark>/<model>/accuracy`. A group whose
    predictions all failed has no accuracy (`has_accuracy`): no bar and no summary value, only its table row.
    """
    import wandb

    payload: dict[str, Any] = _tables(rows, predictions)
    for benchmark in benchmark_order(rows):
        payload |= _benchmark_plots(rows, benchmark, run)

    with tempfile.TemporaryDirectory(prefix="clinical_rl_charts_") as tmp:
        images = dict(charts) if charts is not None else render_charts(rows, Path(tmp))
        for label, chart in images.items():
            payload[f"eval/charts/{file_slug(Path(chart).stem, 'chart')}"] = wandb.Image(str(chart), caption=label)
        run.log(payload)


def _tables(rows: Sequence[GroupRow], predictions: Iterable[Prediction]) -> dict[str, Any]:
    """`eval/summary` (the rows, accuracy in percent) and `eval/predictions` (one row per prediction)."""
    import wandb

    summary = wandb.Table(
        columns=ROW_COLUMNS,
        data=[
            [
                r.benchmark, r.model, r.kind, r.group,
                *_percentages(r),
                r.accuracy.n, r.errors, r.distinct_diagnoses, r.distinct_icd10,
            ]
            for r in rows
        ],
    )
    table = wandb.Table(
        columns=PREDICTION_COLUMNS,
        data=[
            [p.benchmark, p.model, p.case_id, p.department, p.language, p.reference, p.extracted, p.verdict, p.path]
            for p in predictions
        ],
    )
    return {"eval/summary": summary, "eval/predictions": table}


def _benchmark_plots(rows: Sequence[GroupRow], benchmark: str, run: Any) -> dict[str, Any]:
    """One benchmark's bar plots (by model, by department); its overall accuracies go to the run summary."""
    import wandb

    index = index_rows(rows)
    payload: dict[str, Any] = {}
    key = f"eval/{_wandb_key(benchmark)}"
    models = model_order(rows, benchmark)
    overall = [
        [m, 100 * r.accuracy.value] for m in models if has_accuracy(r := index.get((benchmark, m, "overall", "all")))
    ]
    if overall:
        payload[f"{key}/accuracy_by_model"] = wandb.plot.bar(
            wandb.Table(columns=["model", "accuracy"], data=overall),
            "model",
            "accuracy",
            title=f"{benchmark}: overall accuracy (%)",
        )
    by_department = [
        [f"{department_label(d)} · {m}", department_label(d), m, 100 * r.accuracy.value]
        for d in department_order(rows, benchmark)
        for m in models
        if has_accuracy(r := index.get((benchmark, m, "department", d)))
    ]
    if by_department:
        payload[f"{key}/accuracy_by_department"] = wandb.plot.bar(
            wandb.Table(columns=["department_model", "department", "model", "accuracy"], data=by_department),
            "department_model",
            "accuracy",
            title=f"{benchmark}: accuracy by department (%)",
        )
    for m in models:
        r = index.get((benchmark, m, "overall", "all"))
        if has_accuracy(r):
            assert r is not None
            run.summary[f"{key}/{_wandb_key(m)}/accuracy"] = r.accuracy.value
    return payload
