"""Evaluation never fails silently: failed requests are counted, shown on the console, in the report and in
summary.json, a dead endpoint stops being asked, and `clinical-rl eval` exits non-zero."""

import json
import socket
import subprocess
import sys
from pathlib import Path

from clinical_rl.eval.records import Outcomes, Prediction, count_outcomes

ROOT = Path(__file__).resolve().parents[2]


def prediction(model: str, verdict: str, path: str, error: str | None = None) -> Prediction:
    return Prediction(benchmark="b", model=model, case_id="c", department="respiratory", language="en", icd10=None,
                      reference="flu", prompt="p", output="", extracted=None, verdict=verdict, path=path, error=error)


def test_outcomes_count_errors_undecided_and_missing_answers():
    preds = [prediction("m", "correct", "rule:exact"), prediction("m", "error", "error", "APIConnectionError: x"),
             prediction("m", "undecided", "rule:undecided"), prediction("m", "incorrect", "format"),
             prediction("m", "error", "error", "later"), prediction("other", "correct", "rule:exact")]
    m, other = count_outcomes(preds)
    # answered: the replies with a final answer to judge, i.e. neither path "format" nor a failed request
    answered = sum(p.model == "m" and p.path not in ("format", "error") for p in preds)
    assert answered == 2
    assert m == Outcomes("b", "m", n=5, errors=2, undecided=1, no_answer=1, answered=answered,
                         first_error="APIConnectionError: x")
    assert m.error_frac == 0.4 and other.errors == 0 and other.error_frac == 0.0
    assert m.format_rate == answered / 5 and other.format_rate == 1.0


def closed_port() -> int:
    """A local port nobody listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dead_endpoint_is_counted_stopped_early_and_exits_non_zero(tmp_path):
    out = tmp_path / "eval"
    run = subprocess.run(
        [sys.executable, "-m", "clinical_rl", "eval", "--skip-endpoint-check",
         "--model", f"dead=openai:m@http://127.0.0.1:{closed_port()}/v1",
         "eval.benchmarks=[{name: builtin, path: builtin, limit: 40}]", f"eval.out_dir={out}", "eval.timeout_s=5",
         "eval.max_consecutive_errors=8", "eval.bootstrap_resamples=100", "tracking.wandb_mode=disabled"],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 1, run.stderr
    assert "eval dead/builtin: 40 of 40 answers failed (100%); first: APIConnectionError" in run.stderr
    assert "clinical-rl: eval dead on builtin: 40 of 40 answers failed (100% > eval.max_error_frac 0.05)" in run.stderr
    summary = json.loads((out / "summary.json").read_text())
    (outcome,) = summary["outcomes"]
    assert (outcome["model"], outcome["n"], outcome["errors"], outcome["error_frac"]) == ("dead", 40, 40, 1.0)
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    # the first chunk of 32 was sent and failed; the 8 after it were not sent
    assert sum(p["error"].startswith("APIConnectionError") for p in predictions) == 32
    unsent = "RuntimeError: not sent: the 32 requests before it failed in a row"
    assert sum(p["error"].startswith(unsent) for p in predictions) == 8
    report = (out / "report.md").read_text()
    assert "### Outcomes" in report and "**Some answers failed**" in report
    # n, format rate (no reply, so no final answer), no final answer, undecided, errors
    assert "| dead | 40 | 0.0% | 0 | 0 | 40 | APIConnectionError" in report
    # nothing was measured: no accuracy where the accuracy would be, only the failures
    overview = report.split("### Overview", 1)[1].split("### Outcomes", 1)[0]
    assert "| dead | — (40 of 40 failed) |" in overview and "0.0 [" not in overview
    overall = next(g for g in summary["groups"] if g["kind"] == "overall")
    assert overall["accuracy"] == {"value": None, "low": None, "high": None, "n": 40} and overall["errors"] == 40
