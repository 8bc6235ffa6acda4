"""Failed predictions are seen where the accuracy is: a group whose predictions all failed shows no accuracy (report,
summary.json, charts, W&B), and every accuracy of a group with failures says how many failed beside it."""

import dataclasses
import json
import math
import os
import warnings
from pathlib import Path

import pytest

from clinical_rl.eval.charts import _series_bars, plot_departments, plot_languages, plot_models_overall
from clinical_rl.eval.dashboards import log_to_wandb
from clinical_rl.eval.pairs import PairFiles
from clinical_rl.eval.records import Estimate, Prediction
from clinical_rl.eval.report import format_accuracy, markdown_report, write_report
from clinical_rl.eval.report_base import index_rows
from clinical_rl.eval.scorers import summarize
from tests.eval.test_report import _assert_real_chart, _section, make_predictions, make_provenance, make_rows

ERROR = "APIConnectionError: Connection refused"


def pred(model: str, i: int, verdict: str) -> Prediction:
    """Case `c<i>` of benchmark `b`: respiratory for i < 10, else cardiology; all English."""
    path = {"correct": "rule:exact", "incorrect": "judge", "error": "error"}[verdict]
    return Prediction("b", model, f"c{i}", "respiratory" if i < 10 else "cardiology", "en", None, "flu", "q", "",
                      None, verdict, path, ERROR if verdict == "error" else None)


def dead() -> list[Prediction]:
    """A dead endpoint: all 20 requests failed."""
    return [pred("dead", i, "error") for i in range(20)]


def flaky() -> list[Prediction]:
    """Respiratory: 5 correct, 2 wrong, 3 failed; cardiology: 4 correct, 6 wrong, none failed."""
    verdicts = ["correct"] * 5 + ["incorrect"] * 2 + ["error"] * 3 + ["correct"] * 4 + ["incorrect"] * 6
    return [pred("flaky", i, v) for i, v in enumerate(verdicts)]


def rows_of(preds: list[Prediction]):
    return summarize(preds, min_interval_n=10, n_resamples=200, seed=0)


def ci(est: Estimate) -> str:
    """How the report writes an estimate with an interval, in percent."""
    return f"{100 * est.value:.1f} [{100 * est.low:.1f}, {100 * est.high:.1f}]"


# ---------------------------------------------------------------- the rows


def test_a_group_of_only_errors_has_no_accuracy_but_keeps_its_counts():
    rows = {(r.model, r.kind, r.group): r for r in rows_of(dead() + flaky())}
    for group in [("overall", "all"), ("department", "respiratory"), ("department", "cardiology")]:
        row = rows[("dead", *group)]
        members = [p for p in dead() if group[0] == "overall" or p.department == group[1]]
        assert row.all_failed and row.errors == row.accuracy.n == len(members)
        assert all(math.isnan(x) for x in (row.accuracy.value, row.accuracy.low, row.accuracy.high))
    overall = rows["flaky", "overall", "all"]
    errors = sum(p.verdict == "error" for p in flaky())
    correct = sum(p.verdict == "correct" for p in flaky())
    # the failures still count as not correct: the accuracy is over all 20 cases
    assert (overall.errors, overall.accuracy.n, overall.accuracy.value) == (errors, 20, correct / 20)
    assert not overall.all_failed and overall.accuracy.has_interval
    assert rows["flaky", "department", "respiratory"].errors == errors  # all three are respiratory cases
    assert rows["flaky", "department", "cardiology"].errors == 0


# ---------------------------------------------------------------- report.md and summary.json


def test_report_and_summary_show_failures_beside_the_accuracy(tmp_path):
    preds = dead() + flaky()
    rows = rows_of(preds)
    index = index_rows(rows)
    out = tmp_path / "eval"
    md = write_report(rows, preds, out, provenance=make_provenance(min_interval_n=10)).read_text(encoding="utf-8")
    n, half = len(dead()), len(dead()) // 2  # each model: 20 cases, 10 respiratory and 10 cardiology
    failed = sum(p.verdict == "error" for p in flaky())  # 3, all respiratory

    overview = _section(md, "### Overview", "### Outcomes")
    assert "| model | overall | Respiratory | Cardiology | English |" in overview
    assert (f"| dead | — ({n} of {n} failed) | — ({half} of {half} failed) | — ({half} of {half} failed) "
            f"| — ({n} of {n} failed) |") in overview
    flaky_overall, resp, cardio = (index["b", "flaky", *g].accuracy for g in
                                   [("overall", "all"), ("department", "respiratory"), ("department", "cardiology")])
    assert (f"| flaky | {ci(flaky_overall)} (n={n}, {failed} failed) | {ci(resp)} (n={half}, {failed} failed) "
            f"| {ci(cardio)} (n={half}) | {ci(flaky_overall)} (n={n}, {failed} failed) |") in overview
    assert "0.0 [0.0, 0.0]" not in md  # the dead endpoint's former "accuracy"
    assert "`k failed` beside an accuracy" in md

    departments = _section(md, "### By department", "### By language")
    assert (f"| Respiratory (呼吸科) | {half} | 1 | 0 | — ({half} of {half} failed) | {ci(resp)} ({failed} failed) |"
            in departments)
    assert f"| Cardiology (心内科) | {half} | 1 | 0 | — ({half} of {half} failed) | {ci(cardio)} |" in departments

    summary = json.loads((out / "summary.json").read_text())
    groups = {(g["model"], g["kind"], g["group"]): g for g in summary["groups"]}
    assert groups["dead", "overall", "all"]["accuracy"] == {"value": None, "low": None, "high": None, "n": n}
    assert groups["dead", "overall", "all"]["errors"] == n
    assert groups["flaky", "overall", "all"]["accuracy"]["value"] == flaky_overall.value
    assert groups["flaky", "overall", "all"]["errors"] == failed
    assert groups["flaky", "department", "cardiology"]["errors"] == 0


def test_a_row_built_without_summarize_is_not_shown_as_zero_either(tmp_path):
    """A hand-made all-failed row with value 0.0 (not NaN) still reads as failed, in Markdown and summary.json."""
    (row,) = [r for r in make_rows() if r.benchmark == "medqa" and r.model == "base"]
    failed = dataclasses.replace(row, accuracy=Estimate(0.0, 0.0, 0.0, 100), errors=100)
    assert format_accuracy(failed, with_n=True) == "— (100 of 100 failed)"
    assert format_accuracy(failed) == "— (100 of 100 failed)"
    out = tmp_path / "eval"
    write_report([failed], [], out, provenance=make_provenance())
    (group,) = json.loads((out / "summary.json").read_text())["groups"]
    assert group["accuracy"] == {"value": None, "low": None, "high": None, "n": 100} and group["errors"] == 100


def test_a_report_without_failures_has_no_failure_note():
    md = markdown_report(make_rows(), provenance=make_provenance(), title="t")
    assert "failed" not in _section(md, "## Benchmark", "## Charts") and "`k failed`" not in md


# ---------------------------------------------------------------- charts


def test_charts_draw_no_bar_for_a_group_that_all_failed(tmp_path):
    rows = rows_of(dead() + flaky())
    index = index_rows(rows)
    overall = index["b", "flaky", "overall", "all"]
    dead_bars = _series_bars(["b"], lambda b: index.get((b, "dead", "overall", "all")), 0, 0.4)
    # no bar (formerly a 0.0 one), a marker at the bar's place instead: the first bar of a group of width 0.8
    assert (dead_bars.xs, dead_bars.heights, dead_bars.failed) == ([], [], [-0.4 + 0.4 * 0.5])
    flaky_bars = _series_bars(["b"], lambda b: index.get((b, "flaky", "overall", "all")), 1, 0.4)
    assert flaky_bars.heights == [100 * overall.accuracy.value] and flaky_bars.errors == [overall.errors]
    assert flaky_bars.failed == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a series without bars still draws (and gets its legend entry) cleanly
        _assert_real_chart(plot_models_overall(rows, tmp_path / "overall.png"))
        _assert_real_chart(plot_departments(rows, tmp_path / "departments.png", "b"))
        _assert_real_chart(plot_languages(rows, tmp_path / "languages.png", "b"))
        _assert_real_chart(plot_models_overall(rows_of(dead()), tmp_path / "only_dead.png"))


# ---------------------------------------------------------------- W&B


def test_wandb_logs_no_accuracy_for_a_group_that_all_failed(tmp_path):
    import wandb

    rows = rows_of(dead() + flaky())
    run = wandb.init(mode="offline", dir=str(tmp_path), project="clinical_rl-test", name="failures")
    run_dir = Path(run.dir).parent
    try:
        log_to_wandb(rows, dead() + flaky(), run)
        logged = {m: run.summary.get(f"eval/b/{m}/accuracy") for m in ("dead", "flaky")}
    finally:
        run.finish()
    flaky_overall = index_rows(rows)["b", "flaky", "overall", "all"]
    assert logged == {"dead": None, "flaky": pytest.approx(flaky_overall.accuracy.value)}
    table = json.loads(next((run_dir / "files/media/table/eval").glob("summary_*.table.json")).read_text())
    by_group = {tuple(r[1:4]): dict(zip(table["columns"], r)) for r in table["data"]}
    dead_row = by_group["dead", "overall", "all"]
    assert [dead_row[c] for c in ("accuracy", "ci_low", "ci_high", "n", "errors")] == [None, None, None, 20, 20]
    assert by_group["flaky", "overall", "all"]["errors"] == flaky_overall.errors


# ---------------------------------------------------------------- file modes


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_stored_pair_files_honour_the_umask_like_the_report(tmp_path, umask, mode):
    """The per-pair files under predictions/ go through the same atomic writer as report, summary and charts."""
    files = PairFiles(tmp_path, "rl/v1", "medqa")
    old = os.umask(umask)
    try:
        files.save(make_predictions(), {"seed": 0})
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in (files.predictions, files.record)} == {
        files.predictions.name: mode, files.record.name: mode}
