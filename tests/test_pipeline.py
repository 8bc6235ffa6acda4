"""`clinical-rl pipeline`. Without actors (every stage function replaced by one that writes what the stage writes): a
completed stage is redone when, and only when, the settings it depends on change, its old directory set aside; an
evaluation past eval.max_error_frac fails the pipeline. End to end on the tiny task model: synthesis (engine
actors) -> SFT -> PPO -> evaluation, then a second run that resumes: completed stages are skipped and the synthesis
output is not redone."""

import json
from pathlib import Path

import pytest

from clinical_rl.config_files import load_config
from clinical_rl.eval.records import Outcomes
from clinical_rl.eval.runner import EvalResult
from tests.candidate_task import SYSTEM_PROMPT, make_cases, thinking

ROOT = Path(__file__).resolve().parents[1]


def sft_rows(path: Path, n: int = 24) -> Path:
    """Rows in the synthesis format, as a successful search would have written them."""
    with path.open("w") as f:
        for i, case in enumerate(make_cases(n, seed=3)):
            think = thinking(case["finding"]).removeprefix("<think>").split("</think>")[0]
            row = {"question": case["question"], "thinking": think, "response": f"Diagnosis: {case['answer']}",
                   "language": "en"}
            f.write(json.dumps({"id": f"r{i}", "state": "done", "row": row}) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.vllm
def test_pipeline_runs_every_stage_and_resumes(task_model, task_cases, tmp_path, capsys, vllm_server):
    from clinical_rl.pipeline import COMPLETE, run_pipeline

    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml", [
        f"model.path={task_model}", f"data.path={task_cases}", f"data.system_prompt={SYSTEM_PROMPT}",
        f"output_dir={tmp_path / 'run'}", "steps=1",
        # synthesis by the embedded model behind `vllm serve` (the tiny model's 512-token context cannot hold the
        # search prompts): it mostly fails the search, which is recorded item by item
        f"synthesis.path={task_cases}", "synthesis.limit=4", "synthesis.model=smollm2",
        f"synthesis.base_url={vllm_server.base_url}", "synthesis.max_depth=1", "synthesis.max_attempts=1",
        "synthesis.max_tokens=32", "synthesis.max_in_flight=4",
        f"sft.data_path={sft_rows(tmp_path / 'rows.jsonl')}", "sft.max_len=256", "sft.epochs=1", "sft.lr=1e-4",
        "eval.max_new_tokens=24", "eval.engine.max_model_len=512", "eval.engine.kv_cache_gib=1",
        "eval.engine.dtype=float32",
        "eval.bootstrap_resamples=200", f"eval.benchmarks=[{{name: task, path: {task_cases}, limit: 8}}]",
        "tracking.wandb_mode=disabled", "ray.num_cpus=5",
        # the PPO stage also starts the in-cluster judge engine (its role, bundle, name and shutdown)
        f"reward.judge_engine.model={task_model}", "reward.judge_engine.dtype=float32",
        "reward.judge_engine.num_cpus=0.5", "reward.judge_engine.kv_cache_gib=1", "reward.judge_engine.max_model_len=512",
        "reward.kwargs.judge.backend=ray_engine",
    ])
    first = run_pipeline(cfg)
    lines = first.synthesis.read_text().splitlines()
    assert len(lines) == 4 and {json.loads(line)["state"] for line in lines} <= {"done", "failed", "filtered"}
    assert (first.sft_model / COMPLETE).is_file() and (first.sft_model / "config.json").is_file()
    assert (first.policy.parent / COMPLETE).is_file() and (first.policy / "config.json").is_file()
    report = first.report.read_text()
    assert all(label in report for label in ("base", "sft", "sft+rl"))
    assert "](charts/training.png)" in report and (first.report.parent / "charts" / "training.png").is_file()

    capsys.readouterr()
    second = run_pipeline(cfg)
    out = capsys.readouterr().out
    assert "sft: complete" in out and "ppo: complete" in out  # skipped, not redone
    assert second.synthesis.read_text().splitlines() == lines  # every item already there: nothing appended
    assert second.report.is_file()


# ---------------------------------------------------------------------------------------------------------------
# Stages without actors


class FakeStages:
    """Stand-ins for the four stage functions: each writes what its stage writes and records its call."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.ppo_model: str | None = None
        self.errors = 0  # failed answers of the sft model, out of 4

    def synthesize(self, cfg):
        from clinical_rl.synthesis.runner import synthesis_output

        self.calls.append("synth")
        out = synthesis_output(cfg)
        if not out.exists():  # the real one resumes: ids already in the file are not redone
            row = {"question": "q", "thinking": f"by {cfg.synthesis.model}", "response": "Diagnosis: a"}
            out.write_text(json.dumps({"id": "r0", "state": "done", "row": row}) + "\n")
        return "synthesis: 1 done"

    def run_sft(self, cfg, data, model, out_dir):
        self.calls.append("sft")
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text("{}")
        return out_dir

    def run(self, cfg):
        self.calls.append("ppo")
        self.ppo_model = cfg.model.path
        out = Path(cfg.output_dir)
        (out / "policy").mkdir(parents=True, exist_ok=True)
        (out / "checkpoints").mkdir(exist_ok=True)
        (out / "checkpoints" / "latest").write_text("step_1")
        (out / "metrics.jsonl").write_text('{"step": 1}\n')

    def run_eval(self, cfg, models, curve):
        self.calls.append("eval")
        out = Path(cfg.eval.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        report = out / "report.md"
        report.write_text(" ".join(m.label for m in models))
        failed = {m.label: self.errors if m.label == "sft" else 0 for m in models}
        outcomes = [Outcomes(benchmark="builtin", model=label, n=4, errors=errors, undecided=0, no_answer=0,
                             answered=4 - errors, first_error="APIConnectionError" if errors else None)
                    for label, errors in failed.items()]
        return EvalResult(report=report, rows=[], predictions=[], outcomes=outcomes)


@pytest.fixture
def fake(monkeypatch) -> FakeStages:
    import clinical_rl.eval.runner
    import clinical_rl.pipeline
    import clinical_rl.rl.driver
    import clinical_rl.sft.run
    import clinical_rl.synthesis.runner

    stages = FakeStages()
    monkeypatch.setattr(clinical_rl.pipeline, "connect_ray", lambda cfg: False)
    monkeypatch.setattr(clinical_rl.synthesis.runner, "synthesize", stages.synthesize)
    monkeypatch.setattr(clinical_rl.sft.run, "run_sft", stages.run_sft)
    monkeypatch.setattr(clinical_rl.rl.driver, "run", stages.run)
    monkeypatch.setattr(clinical_rl.eval.runner, "run_eval", stages.run_eval)
    return stages


@pytest.fixture
def pipeline_config(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return lambda *overrides: load_config(None, [f"model.path={model}", f"output_dir={tmp_path / 'run'}",
                                                 "synthesis.model=teacher", *overrides])


def test_a_completed_stage_is_redone_only_when_its_own_settings_change(fake, pipeline_config, tmp_path, capsys):
    from clinical_rl.pipeline import COMPLETE, run_pipeline

    run = tmp_path / "run"
    first = run_pipeline(pipeline_config())
    assert fake.calls == ["synth", "sft", "ppo", "eval"] and fake.ppo_model == str(run / "sft")
    markers = {name: (run / name / COMPLETE).read_text().splitlines() for name in ("sft", "ppo", "eval")}
    assert all(lines[0] == name and lines[1].startswith("config_hash: ") for name, lines in markers.items())
    assert first.report.read_text() == "base sft sft+rl"

    def rerun(*overrides: str) -> tuple[list[str], str]:
        fake.calls.clear()
        capsys.readouterr()
        run_pipeline(pipeline_config(*overrides))
        return fake.calls, capsys.readouterr().out

    # how fast, where and how often: no stage's settings
    calls, out = rerun("ray.num_cpus=3", "synthesis.max_in_flight=2", "eval.max_in_flight=2", "sft.num_cpus=2",
                       "tracking.wandb_mode=disabled", "eval.max_error_frac=0.5", "synthesis.limit=100")
    assert calls == ["synth"]  # synthesis always runs: it resumes item by item
    assert "sft: complete" in out and "ppo: complete" in out and "eval: complete" in out

    calls, out = rerun("eval.max_new_tokens=9")
    assert calls == ["synth", "eval"]
    stale = run / f"eval.stale-{markers['eval'][1].removeprefix('config_hash: ')}"
    assert f"eval: its settings changed since {run / 'eval'} was made" in out and f"moved it to {stale}" in out
    assert (stale / "report.md").is_file() and (run / "eval" / COMPLETE).is_file()

    calls, out = rerun("eval.max_new_tokens=9", "policy.lr=1e-6")
    assert calls == ["synth", "ppo", "eval"]
    old_ppo = run / f"ppo.stale-{markers['ppo'][1].removeprefix('config_hash: ')}"
    assert (old_ppo / "checkpoints" / "latest").is_file()  # kept, and out of the new run's reach
    assert f"ppo: its settings changed since {run / 'ppo'} was made" in out

    calls, _ = rerun("eval.max_new_tokens=9", "policy.lr=1e-6", "sft.lr=1e-5")
    assert calls == ["synth", "sft", "ppo", "eval"]  # a new SFT model: RL and evaluation of it are redone
    calls, _ = rerun("eval.max_new_tokens=9", "policy.lr=1e-6", "sft.lr=1e-5")
    assert calls == ["synth"]


def test_changed_synthesis_settings_set_the_old_rows_aside_and_redo_what_used_them(fake, pipeline_config, tmp_path,
                                                                                 capsys):
    from clinical_rl.pipeline import run_pipeline

    run_pipeline(pipeline_config())
    rows = tmp_path / "run" / "synthesis.jsonl"
    recorded = (tmp_path / "run" / "synthesis.jsonl.config_hash").read_text().removeprefix("config_hash: ").strip()
    fake.calls.clear()
    run_pipeline(pipeline_config("synthesis.model=other-teacher"))
    assert fake.calls == ["synth", "sft", "ppo", "eval"]  # new rows: a new SFT model, and everything after it
    stale = rows.with_name(f"synthesis.jsonl.stale-{recorded}")
    assert "by teacher" in stale.read_text() and "by other-teacher" in rows.read_text()
    assert f"synth: its settings changed since {rows} was made" in capsys.readouterr().out


def test_markers_of_older_versions_count_as_complete_with_a_note(fake, pipeline_config, tmp_path, capsys):
    from clinical_rl.pipeline import COMPLETE, run_pipeline

    run_pipeline(pipeline_config())
    run = tmp_path / "run"
    for name in ("sft", "ppo", "eval"):
        (run / name / COMPLETE).write_text(f"{name}\n")  # what markers held before they recorded a hash
    (run / "synthesis.jsonl.config_hash").unlink()
    fake.calls.clear()
    capsys.readouterr()
    run_pipeline(pipeline_config("policy.lr=1e-6"))
    out = capsys.readouterr().out
    assert fake.calls == ["synth"]
    marker = run / "ppo" / COMPLETE
    assert f"ppo: {marker} records no config hash (written by an older version): taken as complete" in out
    assert f"synth: {run / 'synthesis.jsonl'} has no recorded config hash" in out
    assert (run / "ppo" / COMPLETE).read_text().splitlines()[1].startswith("config_hash: ")  # recorded from now on
    fake.calls.clear()
    run_pipeline(pipeline_config("policy.lr=1e-7"))
    assert fake.calls == ["synth", "ppo", "eval"]


def test_an_evaluation_past_max_error_frac_fails_the_pipeline_and_stays_incomplete(fake, pipeline_config, tmp_path):
    from clinical_rl.pipeline import COMPLETE, run_pipeline

    fake.errors = 3
    with pytest.raises(ValueError) as err:
        run_pipeline(pipeline_config())
    message = str(err.value)
    assert "model 'sft' on benchmark 'builtin': 3 of 4 answers failed (75%), above eval.max_error_frac=0.05" in message
    assert "first error: APIConnectionError" in message and "not marked complete" in message
    assert "'base'" not in message and "'sft+rl'" not in message
    eval_dir = tmp_path / "run" / "eval"
    assert (eval_dir / "report.md").is_file() and not (eval_dir / COMPLETE).exists()
    fake.errors, fake.calls = 0, []
    run_pipeline(pipeline_config())  # the rerun evaluates again; the other stages stay done
    assert fake.calls == ["synth", "eval"] and (eval_dir / COMPLETE).is_file()
