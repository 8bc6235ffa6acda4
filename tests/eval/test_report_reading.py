"""A report that does not invite misreading: no interval below eval.min_interval_n (report, summary.json,
charts), format rate / errors / undecided per model, what was evaluated named, files readable like any other."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from clinical_rl.eval.charts import plot_models_overall
from clinical_rl.eval.records import GroupRow, Prediction
from clinical_rl.eval.report import write_report
from clinical_rl.eval.scorers import summarize
from tests.eval.test_report import _image, _section, est, make_predictions, make_provenance, make_rows


def hand_predictions() -> list[Prediction]:
    """`base` on `builtin`: 12 cases, respiratory 11 and one urology case, with every kind of outcome."""

    def p(i, verdict, path, extracted="x", department="respiratory", error=None):
        return Prediction("builtin", "base", f"c{i}", department, "en", None, "flu", "q", "reply", extracted,
                          verdict, path, error)

    return [
        *(p(i, "correct", "rule:exact") for i in range(5)),
        p(5, "incorrect", "judge"),
        p(6, "undecided", "rule:undecided"),
        p(7, "incorrect", "format", extracted=None),
        p(8, "incorrect", "format", extracted=""),
        p(9, "error", "error", extracted=None, error="TimeoutError: read timed out"),
        p(10, "error", "judge", error="judge: unreadable reply"),  # the reply had an answer; the judge failed
        p(11, "correct", "rule:exact", department="urology"),
    ]


def test_groups_below_min_n_show_no_interval_in_report_and_summary(tmp_path):
    preds = hand_predictions()
    rows = summarize(preds, min_interval_n=10, n_resamples=200)
    out = tmp_path / "eval"
    md = write_report(rows, preds, out, provenance=make_provenance(min_interval_n=10)).read_text(encoding="utf-8")
    overview = _section(md, "### Overview", "### Outcomes")
    # overall: 6 correct of 12 cases (>= 10), with an interval and its failures; urology: 1 of 1, without
    errors = sum(p.verdict == "error" for p in preds)
    assert "| base | 50.0 [" in overview and f"(n=12, {errors} failed)" in overview
    assert "| 100.0 (n=1) |" in overview and "[100.0, 100.0]" not in md
    assert "Groups of fewer than 10 cases show no interval" in md
    summary = json.loads((out / "summary.json").read_text())
    accuracy = {(g["kind"], g["group"]): g["accuracy"] for g in summary["groups"]}
    assert accuracy["department", "urology"] == {"value": 1.0, "low": None, "high": None, "n": 1}
    assert accuracy["overall", "all"]["low"] is not None and accuracy["overall", "all"]["n"] == 12
    assert summary["min_interval_n"] == 10


def _not_blue_inside_bar(path: Path) -> int:
    """Pixels inside the one (blue) bar of a chart that are not blue: its error bar, if it has one."""
    pixels = np.asarray(_image(path)).astype(int)
    blue = (pixels == np.array([31, 119, 180])).all(-1)
    cols, rows = np.nonzero(blue.sum(0) > 50)[0], np.nonzero(blue.sum(1) > 50)[0]  # not the legend's patch
    inside = blue[rows.min() + 3 : rows.max() - 3, cols.min() + 3 : cols.max() - 3]
    return int((~inside).sum())


def test_chart_draws_no_error_bar_without_an_interval(tmp_path):
    def chart(low, high, name):
        rows = [GroupRow("b", "m", "overall", "all", est(0.5, low, high, 20), 5, 5)]
        return plot_models_overall(rows, tmp_path / name)

    assert _not_blue_inside_bar(chart(0.3, 0.7, "with.png")) > 50
    assert _not_blue_inside_bar(chart(math.nan, math.nan, "without.png")) == 0


def test_outcome_columns_carry_the_counts(tmp_path):
    preds = hand_predictions()
    out = tmp_path / "eval"
    rows = summarize(preds, min_interval_n=10, n_resamples=100)
    md = write_report(rows, preds, out, provenance=make_provenance()).read_text(encoding="utf-8")
    n = len(preds)
    no_answer = sum(p.path == "format" for p in preds)  # c7, c8
    failed = sum(p.path == "error" for p in preds)  # c9: no reply at all
    errors = sum(p.verdict == "error" for p in preds)  # c9 and the failed judge of c10
    undecided = sum(p.verdict == "undecided" for p in preds)  # c6
    format_rate = (n - no_answer - failed) / n  # c10's reply had an answer, its judge failed
    assert (n, no_answer, failed, errors, undecided) == (12, 2, 1, 2, 1)
    summary = json.loads((out / "summary.json").read_text())
    (o,) = summary["outcomes"]
    assert (o["n"], o["no_answer"], o["undecided"], o["errors"], o["answered"]) == (
        n, no_answer, undecided, errors, n - no_answer - failed)
    assert o["format_rate"] == pytest.approx(format_rate) and o["error_frac"] == pytest.approx(errors / n)
    outcomes = _section(md, "### Outcomes", "### By department")
    assert "| model | n | format rate | no final answer | undecided | errors | first error |" in outcomes
    assert (f"| base | {n} | {100 * format_rate:.1f}% | {no_answer} | {undecided} | {errors} | "
            "TimeoutError: read timed out |") in outcomes


def test_report_names_models_benchmarks_config_and_version(tmp_path):
    out = tmp_path / "eval"
    md = write_report(make_rows(), make_predictions(), out, provenance=make_provenance()).read_text(encoding="utf-8")
    evaluated = _section(md, "## What was evaluated", "## Benchmark")
    assert "| base | local /models/base |" in evaluated
    assert "| sft+rl | endpoint policy at http://127.0.0.1:8000/v1 |" in evaluated
    assert "| medqa | /data/medqa.jsonl | 100 |" in evaluated
    assert "Config hash `0123456789ab`" in evaluated and "clinical_rl 0.1.0" in evaluated
    summary = json.loads((out / "summary.json").read_text())
    assert summary["models"][1] == {"label": "sft+rl", "path": None, "base_url": "http://127.0.0.1:8000/v1",
                                    "model": "policy"}
    assert summary["benchmarks"][0] == {"name": "builtin", "path": "builtin", "n": 40}
    assert (summary["config_hash"], summary["version"]) == ("0123456789ab", "0.1.0")
    assert {"groups", "outcomes"} <= set(summary)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_report_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_report(make_rows(), make_predictions(), tmp_path / "eval", provenance=make_provenance())
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "eval").rglob("*") if p.is_file()]
    assert len(files) == 6  # report, summary, predictions, three charts
    assert {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in files} == {
        p.relative_to(tmp_path).as_posix(): mode for p in files}
