"""Each (model, benchmark) pair's predictions are kept as they complete; a rerun into the same out_dir skips the
pairs done with the same inputs, retries failed cases, and recomputes when an input changed or eval.restart."""

import contextlib
import hashlib
import json
import os
import re

import pytest

from clinical_rl.config_files import load_config
from clinical_rl.config_stages import EvalBenchmarkConfig, EvalModelConfig
from clinical_rl.data.prompts import case_text
from clinical_rl.eval import runner
from clinical_rl.eval.pairs import PREDICTIONS_DIR, PairFiles, model_source, pair_inputs
from clinical_rl.eval.report import read_predictions
from clinical_rl.llm_client import ChatReply

A, B = "base/v1", "rl: 模型"  # labels with characters a file name must not carry
BENCHMARKS = [EvalBenchmarkConfig(name="first", path="builtin", limit=4),
              EvalBenchmarkConfig(name="second", path="builtin", limit=6, seed=3)]


class ScriptedChat:
    """Answers every case right, records what it was asked; `crash` raises on that benchmark's first request,
    `fail` makes those case ids' requests fail (a timeout, say)."""

    def __init__(self, log, label, answers, crash=None, fail=()):
        self.log, self.label, self.answers, self.crash, self.fail = log, label, answers, crash, fail

    def chat(self, conversations, max_tokens, temperature=0.0, top_logprobs=0):
        asked = [self.answers[c[-1]["content"]] for c in conversations]
        if self.crash in {bench for bench, _, _ in asked}:
            raise RuntimeError(f"the engines of {self.label} died")
        self.log.append(("chat", self.label, [case_id for _, case_id, _ in asked], max_tokens))
        return [TimeoutError("read timed out") if case_id in self.fail else ChatReply(f"Diagnosis: {answer}")
                for _, case_id, answer in asked]


@pytest.fixture
def harness(tmp_path, monkeypatch):
    """`run(*overrides, models=..., LABEL={crash: ..., fail: ...})` runs run_eval (by default with two endpoint
    models) answered by ScriptedChat; `log` lists the backends opened and the cases each was asked."""
    log = []
    plans = {}

    @contextlib.contextmanager
    def open_backend(model, cfg):
        log.append(("open", model.label))
        yield ScriptedChat(log, model.label, plans["answers"], **plans.get(model.label, {}))

    monkeypatch.setattr(runner, "open_backend", open_backend)

    def run(*overrides, models=None, **per_model):
        cfg = load_config(None, [f"output_dir={tmp_path}", "tracking.wandb_mode=disabled", "eval.max_new_tokens=64",
                                 "eval.bootstrap_resamples=100", *overrides])
        ev = cfg.eval.model_copy(update={
            "models": models or [EvalModelConfig(label=A, model="m-a", base_url="http://127.0.0.1:9/v1"),
                                 EvalModelConfig(label=B, model="m-b", base_url="http://127.0.0.1:9/v1")],
            "benchmarks": BENCHMARKS})
        cfg = cfg.model_copy(update={"eval": ev})
        plans.clear()
        plans["answers"] = {case_text(c): (b.name, c.id, c.answer)
                            for b in BENCHMARKS for c in runner.load_benchmark(b, cfg.seed)}
        plans.update(per_model)
        log.clear()
        return runner.run_eval(cfg)

    run.log = log
    run.out = tmp_path / "eval"
    return run


def asked(log):
    """(label, case ids) of each request batch, in order."""
    return [(entry[1], entry[2]) for entry in log if entry[0] == "chat"]


def test_a_crash_keeps_the_pairs_done_and_a_rerun_asks_only_the_rest(harness, capsys):
    with pytest.raises(RuntimeError, match="engines of"):
        harness(**{B: {"crash": "second"}})
    pairs = sorted(p.relative_to(harness.out / PREDICTIONS_DIR).as_posix()
                   for p in (harness.out / PREDICTIONS_DIR).rglob("*.jsonl"))
    # A on both benchmarks and B on the first survive the crash, one directory per model, file-safe names
    assert len(pairs) == 3 and len({p.split("/")[0] for p in pairs}) == 2
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for p in pairs for part in p.split("/"))
    assert not (harness.out / "report.md").exists()
    kept = read_predictions(PairFiles(harness.out, A, "second").predictions)
    assert [p.model for p in kept] == [A] * 6 and all(p.verdict == "correct" for p in kept)

    capsys.readouterr()
    result = harness()
    console = capsys.readouterr().out
    assert ("open", A) not in harness.log  # nothing left for A: its client is not even opened
    assert [who for who, _ in asked(harness.log)] == [B]  # B only on the benchmark it crashed on
    assert len(asked(harness.log)[0][1]) == 6
    for label, bench in ((A, "first"), (A, "second"), (B, "first")):
        assert f"eval {label}/{bench}: done in " in console and "skipped" in console
    summary = json.loads((harness.out / "summary.json").read_text())
    assert sorted((o["model"], o["benchmark"], o["n"]) for o in summary["outcomes"]) == [
        (A, "first", 4), (A, "second", 6), (B, "first", 4), (B, "second", 6)]
    assert len(read_predictions(harness.out / "predictions.jsonl")) == 2 * (4 + 6) == len(result.predictions)
    report = (harness.out / "report.md").read_text()
    assert f"| {A} | 6 | 100.0% |" in report and f"| {B} | 6 | 100.0% |" in report  # outcomes of `second`


def test_a_changed_generation_setting_or_restart_recomputes(harness, capsys):
    harness()
    harness()
    assert asked(harness.log) == []  # all done, same inputs
    capsys.readouterr()

    harness("eval.max_new_tokens=32")
    console = capsys.readouterr().out
    assert len(asked(harness.log)) == 4 and {e[3] for e in harness.log if e[0] == "chat"} == {32}
    assert f"eval {A}/first: stored predictions not reused, made with other inputs: " \
           "generation.max_new_tokens: 64 -> 32; evaluating again" in console

    harness("eval.max_new_tokens=32", "eval.restart=true")
    assert "eval.restart, evaluating again" in capsys.readouterr().out
    assert len(asked(harness.log)) == 4


def test_failed_cases_are_asked_again_and_the_rest_reused(harness, capsys):
    first_ids = [c.id for c in runner.load_benchmark(BENCHMARKS[0], 0)]
    harness(**{A: {"fail": set(first_ids[1:3])}})
    errors = [p for p in read_predictions(PairFiles(harness.out, A, "first").predictions) if p.verdict == "error"]
    assert [p.case_id for p in errors] == first_ids[1:3]
    capsys.readouterr()

    result = harness()
    assert asked(harness.log) == [(A, first_ids[1:3])]  # only the two that failed
    assert f"eval {A}/first: 2 of 4 cases failed last time; asking those again" in capsys.readouterr().out
    assert all(p.verdict == "correct" for p in result.predictions)
    stored = read_predictions(PairFiles(harness.out, A, "first").predictions)
    assert [p.case_id for p in stored] == first_ids and all(p.verdict == "correct" for p in stored)


def test_a_tampered_or_foreign_file_is_not_reused(harness, capsys):
    harness()
    files = PairFiles(harness.out, A, "first")
    lines = files.predictions.read_text(encoding="utf-8").splitlines()
    files.predictions.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")  # a case lost
    capsys.readouterr()
    harness()
    assert f"eval {A}/first: stored predictions not reused, {files.predictions} is not the file its record " \
           "describes; evaluating again" in capsys.readouterr().out
    assert asked(harness.log) == [(A, [json.loads(line)["case_id"] for line in lines])]


def test_labels_that_slug_alike_get_separate_files(tmp_path):
    names = {PairFiles(tmp_path, label, "b").predictions for label in ("x/y", "x_y", "X_y", "模型", "模形")}
    assert len(names) == 5 and all(p.parent.parent == tmp_path / PREDICTIONS_DIR for p in names)


def test_pair_files_follow_the_documented_layout(tmp_path):
    """predictions/<model>-<hash8>/<benchmark>-<hash8>.jsonl, each hash8 of its own label (the pairs.py example)."""

    def hash8(label):
        return hashlib.sha256(label.encode()).hexdigest()[:8]

    files = PairFiles(tmp_path, "rl/v1", "medqa")
    directory = tmp_path / PREDICTIONS_DIR / f"rl_v1-{hash8('rl/v1')}"
    assert files.predictions == directory / f"medqa-{hash8('medqa')}.jsonl"
    assert files.record == directory / f"medqa-{hash8('medqa')}.done.json"
    assert files.predictions.relative_to(tmp_path).as_posix() == "predictions/rl_v1-7c63316d/medqa-c6a95176.jsonl"


def test_wandb_files_go_under_the_eval_out_dir(harness, tmp_path):
    """Not under output_dir: with eval.out_dir elsewhere, the W&B run's files stay with the report."""
    elsewhere = tmp_path / "elsewhere"
    harness("tracking.wandb_mode=offline", f"eval.out_dir={elsewhere}")
    assert (elsewhere / "report.md").is_file()
    assert list((elsewhere / "wandb").glob("offline-run-*/run-*.wandb"))
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "eval").exists()


def test_a_local_model_rewritten_in_place_changes_the_inputs(tmp_path):
    model_dir = tmp_path / "policy"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (model_dir / "model.safetensors").write_bytes(b"weights")
    cfg = load_config(None, [f"output_dir={tmp_path}"])
    model = EvalModelConfig(label="policy", path=str(model_dir))
    cases = runner.load_benchmark(BENCHMARKS[0], cfg.seed)

    def inputs():
        return pair_inputs(model, model_source(model), BENCHMARKS[0], cases, cfg)

    before = inputs()
    assert before["model"]["path"] == str(model_dir.resolve()) and before == inputs()
    stat = (model_dir / "model.safetensors").stat()
    (model_dir / "model.safetensors").write_bytes(b"WEIGHTS")  # same size: retrained, rewritten
    os.utime(model_dir / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert inputs()["model"]["files"] != before["model"]["files"]


def test_a_local_model_is_named_by_its_directory_and_its_files_are_world_readable(harness, tmp_path, monkeypatch):
    model_dir = tmp_path / "runs" / "policy"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text("{}")
    # the directory holds no tokenizer to read the chat template from: the reply format is given here
    monkeypatch.setattr(runner, "model_opens_think", lambda model, cfg: False)
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        harness(models=[EvalModelConfig(label="rl", path="runs/policy")])
    finally:
        os.umask(old)
    report = (harness.out / "report.md").read_text()
    assert f"| rl | local {model_dir.resolve()} |" in report
    written = [p for p in harness.out.rglob("*") if p.is_file()]
    assert len([p for p in written if p.parent.parent.name == PREDICTIONS_DIR]) == 4  # two pairs, two files each
    assert {p.stat().st_mode & 0o777 for p in written} == {0o644}
