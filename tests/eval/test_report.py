"""The evaluation report: predictions JSONL, Markdown tables, PNG charts, the report directory, W&B logging."""

import dataclasses
import json
import warnings
from pathlib import Path

import pytest
from PIL import Image

from clinical_rl.eval import report
from clinical_rl.eval.charts import plot_departments, plot_languages, plot_models_overall
from clinical_rl.eval.dashboards import log_to_wandb
from clinical_rl.eval.records import BenchmarkSource, Estimate, GroupRow, ModelSource, Prediction, Provenance
from clinical_rl.eval.report import markdown_report, read_predictions, write_predictions, write_report

ORANGE = (255, 127, 14)  # tab10's second color: the second model's bars


def est(value: float, low: float, high: float, n: int) -> Estimate:
    return Estimate(value, low, high, n)


def make_rows() -> list[GroupRow]:
    """Two models on `builtin` (three departments, both languages; departments and languages deliberately out of
    display order) and on `medqa` (overall only); `sft+rl` has no urology row."""

    def row(model, kind, group, e, dd=9, di=7, benchmark="builtin"):
        return GroupRow(benchmark, model, kind, group, e, dd, di)

    return [
        row("base", "overall", "all", est(0.625, 0.551, 0.698, 40), 30, 25),
        row("base", "department", "neurology", est(0.4, 0.2, 0.6, 10)),
        row("base", "department", "respiratory", est(0.5, 0.25, 0.75, 12)),
        row("base", "department", "urology", est(0.25, 0.0, 0.5, 4), 4, 4),
        row("base", "department", "cardiology", est(0.875, 0.75, 1.0, 14)),
        row("base", "language", "en", est(0.7, 0.55, 0.85, 20), 15, 12),
        row("base", "language", "zh", est(0.55, 0.35, 0.75, 20), 15, 12),
        row("sft+rl", "overall", "all", est(0.8, 0.725, 0.875, 40), 30, 25),
        row("sft+rl", "department", "respiratory", est(0.75, 0.5, 0.917, 12)),
        row("sft+rl", "department", "neurology", est(0.7, 0.4, 0.9, 10)),
        row("sft+rl", "department", "cardiology", est(0.9, 0.8, 1.0, 14)),
        row("sft+rl", "language", "zh", est(0.85, 0.7, 0.95, 20), 15, 12),
        row("sft+rl", "language", "en", est(0.75, 0.6, 0.9, 20), 15, 12),
        row("base", "overall", "all", est(0.5, 0.4, 0.6, 100), 90, 0, benchmark="medqa"),
        row("sft+rl", "overall", "all", est(0.61, 0.52, 0.7, 100), 90, 0, benchmark="medqa"),
    ]


def make_provenance(min_interval_n: int = 1) -> Provenance:
    """What `make_rows` pretends to cover: a local model and an endpoint, two benchmarks."""
    return Provenance(
        models=(ModelSource("base", "/models/base", None, None),
                ModelSource("sft+rl", None, "http://127.0.0.1:8000/v1", "policy")),
        benchmarks=(BenchmarkSource("builtin", "builtin", 40), BenchmarkSource("medqa", "/data/medqa.jsonl", 100)),
        config_hash="0123456789ab", version="0.1.0", min_interval_n=min_interval_n)


def make_predictions() -> list[Prediction]:
    return [
        Prediction(
            "builtin", "base", "case-1", "respiratory", "zh", "J18.9", "社区获得性肺炎",
            "患者，男，65岁，发热咳嗽三天。诊断？", "<think>发热、咳嗽……</think>\n诊断：社区获得性肺炎",
            "社区获得性肺炎", "correct", "rule:exact",
        ),
        Prediction(
            "builtin", "sft+rl", "case-2", "cardiology", "en", None, "Acute myocardial infarction",
            "A 58-year-old man with chest pain. Diagnosis?", "Diagnosis: unstable angina", "unstable angina",
            "incorrect", "judge",
        ),
        Prediction(
            "builtin", "base", "case-3", "other", "en", "S72.0", "Femoral neck fracture", "p", "", None,
            "error", "error", error="timeout | retry",
        ),
    ]


# ---------------------------------------------------------------- predictions.jsonl


def test_predictions_round_trip_keeps_chinese(tmp_path):
    preds = make_predictions()
    path = write_predictions(preds, tmp_path / "out" / "predictions.jsonl")
    text = path.read_text(encoding="utf-8")
    assert "社区获得性肺炎" in text and "\\u" not in text  # ensure_ascii=False
    assert len(text.splitlines()) == len(preds)
    assert read_predictions(path) == preds
    assert [p.name for p in path.parent.iterdir()] == ["predictions.jsonl"]  # no temp file left behind


def test_write_predictions_is_atomic(tmp_path):
    path = write_predictions(make_predictions(), tmp_path / "predictions.jsonl")
    before = path.read_bytes()

    def failing():
        yield make_predictions()[0]
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_predictions(failing(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.jsonl"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"verdict": "maybe"}, "field 'verdict'"),
        ({"icd10": 5}, "field 'icd10'"),
        ({"model": None}, "field 'model'"),
        ({"surprise": 1}, "field 'surprise'"),
        ({"case_id": ...}, "field 'case_id': missing"),
    ],
)
def test_read_predictions_names_file_line_and_field(tmp_path, change, expected):
    good = make_predictions()[0].to_json()
    bad = {**good, **change}
    bad = {k: v for k, v in bad.items() if v is not ...}
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps(good, ensure_ascii=False) + "\n" + json.dumps(bad, ensure_ascii=False) + "\n")
    with pytest.raises(ValueError) as info:
        read_predictions(path)
    assert f"{path}:2: " in str(info.value)
    assert expected in str(info.value)


def test_read_predictions_invalid_json_names_line(tmp_path):
    good = json.dumps(make_predictions()[1].to_json())
    path = tmp_path / "p.jsonl"
    path.write_text(f"{good}\n\n{good}\n{{not json\n")
    with pytest.raises(ValueError, match=r"p\.jsonl:4: invalid JSON"):
        read_predictions(path)


def test_read_predictions_error_field_is_optional(tmp_path):
    obj = make_predictions()[1].to_json()
    del obj["error"]
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(obj) + "\n")
    assert read_predictions(path) == [make_predictions()[1]]


# ---------------------------------------------------------------- Markdown


def _section(md: str, start: str, end: str | None = None) -> str:
    body = md.split(start, 1)[1]
    return body.split(end, 1)[0] if end else body


def test_markdown_overview_cells(tmp_path):
    md = markdown_report(make_rows(), provenance=make_provenance(), title="Eval of step 300")
    assert md.startswith("# Eval of step 300\n")
    overview = _section(md, "## Benchmark `builtin`", "### By department")
    assert (
        "| model | overall | Respiratory | Urology | Cardiology | Neurology | Chinese | English |" in overview
    )
    assert (
        "| base | 62.5 [55.1, 69.8] (n=40) | 50.0 [25.0, 75.0] (n=12) | 25.0 [0.0, 50.0] (n=4) "
        "| 87.5 [75.0, 100.0] (n=14) | 40.0 [20.0, 60.0] (n=10) | 55.0 [35.0, 75.0] (n=20) "
        "| 70.0 [55.0, 85.0] (n=20) |"
    ) in overview
    # the missing urology row of sft+rl is a dash, not a shifted column
    assert (
        "| sft+rl | 80.0 [72.5, 87.5] (n=40) | 75.0 [50.0, 91.7] (n=12) | — | 90.0 [80.0, 100.0] (n=14) |"
    ) in overview
    assert overview.index("| base |") < overview.index("| sft+rl |")  # first-seen model order
    medqa = _section(md, "## Benchmark `medqa`")
    assert "| base | 50.0 [40.0, 60.0] (n=100) |" in medqa
    assert "| sft+rl | 61.0 [52.0, 70.0] (n=100) |" in medqa
    assert "### By department" not in medqa


def test_markdown_department_and_language_tables():
    md = markdown_report(make_rows(), provenance=make_provenance(), title="t")
    departments = _section(md, "### By department", "### By language")
    assert "| department | n cases | distinct diagnoses | distinct ICD-10 | base | sft+rl |" in departments
    assert "| Respiratory (呼吸科) | 12 | 9 | 7 | 50.0 [25.0, 75.0] | 75.0 [50.0, 91.7] |" in departments
    assert "| Urology (泌尿科) | 4 | 4 | 4 | 25.0 [0.0, 50.0] | — |" in departments
    order = [departments.index(f"| {d} (") for d in ("Respiratory", "Urology", "Cardiology", "Neurology")]
    assert order == sorted(order)  # DEPARTMENTS order, not input order
    languages = _section(md, "### By language", "## Benchmark `medqa`")
    assert "| Chinese (zh) | 20 | 15 | 12 | 55.0 [35.0, 75.0] | 85.0 [70.0, 95.0] |" in languages
    assert "| English (en) | 20 | 15 | 12 | 70.0 [55.0, 85.0] | 75.0 [60.0, 90.0] |" in languages
    assert languages.index("Chinese (zh)") < languages.index("English (en)")


def test_markdown_chart_links_are_relative(tmp_path):
    charts = {"builtin: accuracy by department": tmp_path / "charts" / "departments_builtin.png",
              "given relative": Path("charts/overall.png")}
    md = markdown_report(make_rows(), provenance=make_provenance(), title="t", charts=charts, relative_to=tmp_path)
    assert "![builtin: accuracy by department](charts/departments_builtin.png)" in md
    assert "![given relative](charts/overall.png)" in md
    assert str(tmp_path) not in md


def test_markdown_escapes_pipes_and_rejects_duplicates():
    rows = [GroupRow("b", "a|b", "overall", "all", est(0.5, 0.4, 0.6, 10), 5, 5)]
    assert "| a\\|b | 50.0 [40.0, 60.0] (n=10) |" in markdown_report(rows, provenance=make_provenance(), title="t")
    with pytest.raises(ValueError, match="duplicate"):
        markdown_report(rows * 2, provenance=make_provenance(), title="t")


# ---------------------------------------------------------------- charts


def _image(path: Path) -> Image.Image:
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()
        return img.convert("RGB")


def _assert_real_chart(path: Path) -> Image.Image:
    img = _image(path)
    assert img.width > 300 and img.height > 200
    colors = img.getcolors(maxcolors=1 << 24)
    assert colors is not None and len(colors) > 8  # not a flat image
    return img


def _pixels(img: Image.Image, rgb: tuple[int, int, int]) -> int:
    return dict((c, n) for n, c in img.getcolors(maxcolors=1 << 24)).get(rgb, 0)


def test_department_chart_is_a_real_chart(tmp_path):
    rows = make_rows()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. no missing-glyph warnings
        two = _assert_real_chart(plot_departments(rows, tmp_path / "two.png", "builtin"))
        only_base = [r for r in rows if r.model == "base"]
        one = _assert_real_chart(plot_departments(only_base, tmp_path / "one.png", "builtin"))
    assert two.tobytes() != one.tobytes()
    assert _pixels(two, ORANGE) > 500 and _pixels(one, ORANGE) == 0  # the second model's bars


def test_language_and_overall_charts(tmp_path):
    rows = make_rows()
    _assert_real_chart(plot_languages(rows, tmp_path / "lang.png", "builtin"))
    overall = _assert_real_chart(plot_models_overall(rows, tmp_path / "overall.png"))
    assert _pixels(overall, ORANGE) > 500


def test_chinese_model_name_draws_without_glyph_warnings(tmp_path):
    rows = [GroupRow("b", "微调模型", "department", "neurology", est(0.5, 0.4, 0.6, 10), 5, 5),
            GroupRow("b", "微调模型", "overall", "all", est(0.5, 0.4, 0.6, 10), 5, 5)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_real_chart(plot_departments(rows, tmp_path / "d.png", "b"))
        _assert_real_chart(plot_models_overall(rows, tmp_path / "o.png"))


def test_plotting_leaves_pyplot_alone(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    plot_models_overall(make_rows(), tmp_path / "o.png")
    assert matplotlib.get_backend() == backend
    import sys

    if "matplotlib.pyplot" in sys.modules:
        assert not sys.modules["matplotlib.pyplot"].get_fignums()


# ---------------------------------------------------------------- write_report


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_write_report_writes_everything(tmp_path):
    rows, preds = make_rows(), make_predictions()
    out = tmp_path / "eval"
    path = write_report(rows, preds, out, provenance=make_provenance(), title="Step 300")
    assert path == out / "report.md"
    assert _files(out) == {
        "predictions.jsonl", "summary.json", "report.md",
        "charts/overall.png", "charts/departments_builtin.png", "charts/languages_builtin.png",
    }
    assert read_predictions(out / "predictions.jsonl") == preds
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert len(summary["groups"]) == len(rows)
    assert {o["model"] for o in summary["outcomes"]} == {p.model for p in preds}
    assert summary["groups"][0] == {
        "benchmark": "builtin", "model": "base", "kind": "overall", "group": "all",
        "accuracy": {"value": 0.625, "low": 0.551, "high": 0.698, "n": 40},
        "distinct_diagnoses": 30, "distinct_icd10": 25, "errors": 0,
    }
    md = path.read_text(encoding="utf-8")
    assert md.startswith("# Step 300\n")
    for chart in ("charts/overall.png", "charts/departments_builtin.png", "charts/languages_builtin.png"):
        assert f"]({chart})" in md
        _assert_real_chart(out / chart)


def test_training_curve_of_the_rl_run_is_charted_and_linked(tmp_path):
    history = [{"step": 1, "reward/mean": 0.3, "reward/correct": 0.25, "reward/format_ok": 1.0},
               {"step": 2, "reward/mean": None, "reward/correct": 0.5},  # a NaN step and a missing key: gaps
               {"step": 3, "reward/mean": 0.7, "reward/correct": 0.75, "reward/format_ok": 1.0}]
    out = tmp_path / "eval"
    md = write_report(make_rows(), make_predictions(), out, provenance=make_provenance(),
                      training_history=history).read_text(encoding="utf-8")
    assert "charts/training.png" in _files(out) and "](charts/training.png)" in md
    _assert_real_chart(out / "charts" / "training.png")
    # a report without an RL run drops the stale curve
    write_report(make_rows(), make_predictions(), out, provenance=make_provenance())
    assert "charts/training.png" not in _files(out)


def test_write_report_rerun_overwrites_cleanly(tmp_path, monkeypatch):
    out = tmp_path / "eval"
    write_report(make_rows(), make_predictions(), out, provenance=make_provenance())
    # second run: medqa only, one prediction -> builtin charts disappear, everything else is replaced
    medqa = [r for r in make_rows() if r.benchmark == "medqa"]
    medqa_only = dataclasses.replace(make_provenance(), benchmarks=make_provenance().benchmarks[1:])
    write_report(medqa, make_predictions()[:1], out, provenance=medqa_only, title="again")
    assert _files(out) == {"predictions.jsonl", "summary.json", "report.md", "charts/overall.png"}
    md = (out / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# again\n") and "builtin" not in md
    assert len(read_predictions(out / "predictions.jsonl")) == 1
    assert len(json.loads((out / "summary.json").read_text())["groups"]) == 2

    # a run that fails while building the report leaves the previous report whole and no temp files
    before = (out / "report.md").read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(report, "markdown_report", broken)
    with pytest.raises(RuntimeError):
        write_report(medqa, [], out, provenance=make_provenance())
    assert (out / "report.md").read_bytes() == before
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- W&B


def test_log_to_wandb_offline(tmp_path):
    import wandb

    run = wandb.init(mode="offline", dir=str(tmp_path), project="clinical_rl-test", name="report")
    run_dir = Path(run.dir).parent
    try:
        log_to_wandb(make_rows(), make_predictions(), run)
        summary_values = {k: run.summary[k] for k in ("eval/builtin/base/accuracy", "eval/medqa/sft+rl/accuracy")}
    finally:
        run.finish()
    assert list(run_dir.glob("*.wandb"))
    tables = {p.name.split("_")[0] for p in (run_dir / "files/media/table/eval").glob("*.table.json")}
    assert {"summary", "predictions"} <= tables
    table_dir = run_dir / "files/media/table/eval"
    predictions = json.loads(next(table_dir.glob("predictions_*.table.json")).read_text())
    assert predictions["columns"] == [
        "benchmark", "model", "case_id", "department", "language", "reference", "extracted", "verdict", "path"
    ]
    assert predictions["data"][0][5] == "社区获得性肺炎"
    summary = json.loads(next(table_dir.glob("summary_*.table.json")).read_text())
    assert len(summary["data"]) == len(make_rows())
    bars = {p.name for p in (run_dir / "files/media/table/eval/builtin").glob("*.table.json")}
    assert any(n.startswith("accuracy_by_model") for n in bars)
    assert any(n.startswith("accuracy_by_department") for n in bars)
    images = list((run_dir / "files/media/images/eval/charts").glob("*.png"))
    assert len(images) == 3
    assert summary_values == pytest.approx({"eval/builtin/base/accuracy": 0.625, "eval/medqa/sft+rl/accuracy": 0.61})
