"""`clinical-rl pipeline` end to end on the tiny task model: synthesis (engine actors) -> SFT -> PPO -> evaluation,
then a second run that resumes: completed stages are skipped and the synthesis output is not redone."""

import json
from pathlib import Path

import pytest

from clinical_rl.config_files import load_config
from tests.candidate_task import SYSTEM_PROMPT, make_cases, thinking

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]


def sft_rows(path: Path, n: int = 24) -> Path:
    """Rows in the synthesis format, as a successful search would have written them."""
    with path.open("w") as f:
        for i, case in enumerate(make_cases(n, seed=3)):
            think = thinking(case["finding"]).removeprefix("<think>").split("</think>")[0]
            row = {"question": case["question"], "thinking": think, "response": f"Diagnosis: {case['answer']}",
                   "language": "en"}
            f.write(json.dumps({"id": f"r{i}", "state": "done", "row": row}) + "\n")
    return path


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
