"""The whole loop: every role a Ray actor in one placement group, vLLM rollouts, DeepSpeed trainers.

PPO must lift a warmed-up tiny model from ~1/K accuracy (random pick among K named candidates) to >= 0.8, with
the engines' logprobs matching the trainer's at every step (weight sync) and every metric documented.
"""

import json
import math
import re
from pathlib import Path

import pytest

from clinical_rl.config_files import load_config
from tests.candidate_task import K, SYSTEM_PROMPT
from tests.rl.fault_rewards import engine_pids

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]


def task_config(model: Path, cases: Path, out: Path, *overrides: str):
    return load_config(
        ROOT / "configs" / "tiny_cpu.yaml",
        [f"model.path={model}", f"data.path={cases}", f"data.system_prompt={SYSTEM_PROMPT}", f"output_dir={out}",
         *overrides],
    )


def documented_metrics() -> tuple[set[str], list[str]]:
    text = (ROOT / "docs" / "metrics.md").read_text()
    keys = set(re.findall(r"^\| `([^`]+)` \|", text, flags=re.MULTILINE))
    return {k for k in keys if "<" not in k}, [k.split("<")[0] for k in keys if "<" in k]


def test_ppo_learns_the_candidate_task_across_a_resume(task_model, task_cases, tmp_path, capsys):
    from clinical_rl.rl.checkpoint import latest_checkpoint
    from clinical_rl.data.loaders import load_cases
    from clinical_rl.rl.driver import CaseSampler, run

    def config(steps: int, lr: str = "3e-4", *overrides: str):
        return task_config(
            task_model, task_cases, tmp_path / "run", f"steps={steps}", "save_every=20", "algo.rollout_batch_size=64",
            "algo.minibatch_size=32", "algo.ppo_epochs=2", f"policy.lr={lr}", "critic.lr=1e-3",
            "policy.micro_batch_size=32", "critic.micro_batch_size=32",
            f"reward.audit.pairs={ROOT / 'tests' / 'rewards' / 'data' / 'audit_pairs.jsonl'}", "reward.audit.every=10",
            *overrides,
        )

    # Trained in two runs: the second resumes from the first's checkpoint, as after a preemption, with a changed
    # learning rate, accepted (a protected setting: refused without resume_accept_changes, tests/rl/test_resume.py).
    first = run(config(20))
    assert latest_checkpoint(tmp_path / "run").state.optimizer_steps == {"policy": 80, "critic": 80}  # 20 x 2 x 2
    capsys.readouterr()
    result = run(config(40, "2.5e-4", "resume_accept_changes=true"))
    out = capsys.readouterr().out
    assert "warning: resume: policy.lr: 0.0003 in the checkpoint, 0.00025 now (accepted" in out
    assert "resumed from" in out
    assert len(result.history) == 40 and result.history[:20] == first.history
    latest = latest_checkpoint(tmp_path / "run")
    assert latest.state.step == 40 and latest.state.optimizer_steps == {"policy": 160, "critic": 160}
    assert latest.state.settings["policy.lr"] == 2.5e-4  # the next checkpoint records the accepted change
    assert {h["policy/lr"] for h in result.history[20:]} == {2.5e-4}  # and the trainers train with it
    # each start's resolved config, the first never overwritten
    assert load_config(tmp_path / "run" / "config.yaml") == config(20)
    [second] = (tmp_path / "run" / "configs").iterdir()
    assert load_config(second) == config(40, "2.5e-4", "resume_accept_changes=true")
    sampler = CaseSampler(load_cases(str(task_cases)), 64, seed=0)
    for _ in range(40):
        sampler.next()
    assert latest.state.sampler == json.loads(json.dumps(sampler.state_dict()))  # the uninterrupted data order
    assert Path(result.tracking).name.rsplit("-", 1)[-1] == Path(first.tracking).name.rsplit("-", 1)[-1]  # W&B run

    accuracy = [h["reward/correct"] for h in result.history]
    assert 0.5 / K < accuracy[0] < 2.0 / K, accuracy  # the warm start picks at random among K candidates
    assert sum(accuracy[-3:]) / 3 >= 0.8, accuracy

    exact, prefixes = documented_metrics()
    for step in result.history:
        for key, value in step.items():
            assert key in exact or any(key.startswith(p) for p in prefixes), f"{key} is not in docs/metrics.md"
            assert math.isfinite(value), (key, value)
        # fp32: the engines sample with exactly the weights the trainer scores with (after the resume too)
        assert step["rollout/logp_mismatch"] < 1e-3
    assert {"timing/generate", "timing/reward", "timing/logprobs", "timing/train", "timing/sync"} <= set(step)
    assert Path(result.tracking).is_dir() and list(Path(result.tracking).glob("*.wandb"))

    # metrics.jsonl: one line per step across the resume; the verifier audit at every 10th step, the same each time
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 41))
    audits = [line for line in lines if "audit/accuracy" in line]
    assert [line["step"] for line in audits] == [10, 20, 30, 40]
    assert all(result.history[line["step"] - 1]["audit/accuracy"] == line["audit/accuracy"] for line in audits)
    keys = [k for k in audits[0] if k.startswith("audit/")]
    assert {"audit/coverage", "audit/false_positives", "audit/kind/exact/accuracy"} <= set(keys)
    assert all({k: line[k] for k in keys} == {k: audits[0][k] for k in keys} for line in audits)
    assert 0 < audits[0]["audit/accuracy"] <= 1 and audits[0]["audit/kind/exact/accuracy"] == 1.0

    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(result.policy_dir)
    base = AutoModelForCausalLM.from_pretrained(task_model)
    moved = max((a - b).abs().max().item() for a, b in zip(policy.parameters(), base.parameters()))
    assert moved > 1e-3


# GRPO's take-off step varies from run to run (bf16, vLLM-CPU sampling): one run in three of 30 steps ended at 0.76
@pytest.mark.parametrize(("advantage", "steps"), [("grpo", 36), ("reinforce_plus_plus_baseline", 30)])
def test_critic_free_learns_the_candidate_task_in_bf16_through_lost_actors(advantage, steps, task_model, task_cases,
                                                                           tmp_path, capsys):
    """The learning test's bar without a critic (16 prompts x 4 samples a step, the group estimators' shape) and in
    bf16: bf16 weights and compute for every role (fp32 master weights in DeepSpeed's optimizer), truncated
    importance sampling on. The engine/trainer gap is bf16 noise, well below a stale sync's.

    At step 1 the reward class SIGKILLs the rollout engine's process and its own reward actor's, mid-step: Ray
    restarts both, the step is redone with the same prompts and logged once, and no sample is scored from the lost
    results."""
    from clinical_rl.rl.driver import run

    marker = tmp_path / "killed"
    cfg = task_config(
        task_model, task_cases, tmp_path / "run", f"steps={steps}", "model.dtype=bfloat16",
        f"algo.advantage={advantage}",
        "algo.rollout_batch_size=16", "algo.n_samples_per_prompt=4", "algo.minibatch_size=32", "algo.ppo_epochs=2",
        "policy.lr=3e-4", "algo.tis_cap=2.0", "policy.micro_batch_size=32", "tracking.wandb_mode=disabled",
        "reward.cls=tests.rl.fault_rewards:KillsEngineAndItselfOnce", f"reward.kwargs.marker={marker}",
    )
    result = run(cfg)
    accuracy = [h["reward/correct"] for h in result.history]
    assert accuracy[0] < 2.0 / K, accuracy
    assert sum(accuracy[-3:]) / 3 >= 0.8, accuracy
    for step in result.history:
        assert step["rollout/logp_mismatch"] < 0.1  # also right after the restarted engine got the weights again
        assert 0.5 < step["rollout/tis_weight_mean"] <= 2.0
        assert step["reward/failed_frac"] == 0.0 and step["reward/timeout_frac"] == 0.0

    assert marker.read_text().startswith("engine ")  # both processes were killed in step 1's reward phase
    assert "step 1: reward[0] lost: its process died" in capsys.readouterr().out
    logged = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, steps + 1))  # the redone step is logged once
    assert [s.get("fault/step_retries") for s in result.history[:2]] == [1.0, None]
    assert engine_pids() == []  # the restarted engine was shut down with the run
    assert_documented(result.history)


def assert_documented(history: list[dict[str, float]]) -> None:
    exact, prefixes = documented_metrics()
    for step in history:
        for key in step:
            assert key in exact or any(key.startswith(p) for p in prefixes), f"{key} is not in docs/metrics.md"


def test_dynamic_sampling_keeps_the_batch_size_when_groups_are_uniform(task_model, task_cases, tmp_path):
    """Two thirds of the candidate task's groups scored uniform (tests/rl/task_rewards.py): dynamic sampling drops
    them, refills from further prompts, and still trains on rollout_batch_size groups; with overlong shaping and
    filtering on. Reward metrics cover every generated group, by department and verdict."""
    from clinical_rl.rl.driver import run

    cfg = task_config(
        task_model, task_cases, tmp_path / "run", "steps=2", "algo.advantage=grpo", "algo.kl_coef=0",
        "algo.rollout_batch_size=4", "algo.n_samples_per_prompt=4", "algo.minibatch_size=16",
        "algo.dynamic_sampling.max_rounds=6", "algo.overlong.buffer_tokens=8", "algo.overlong.mask_truncated=true",
        "tracking.wandb_mode=disabled", "reward.cls=tests.rl.task_rewards:UniformByDiagnosis",
    )
    history = run(cfg).history
    for m in history:
        assert m["rollout/samples"] == 16.0  # 4 groups x 4, as configured
        generated, dropped = m["dynamic/generated_groups"], m["dynamic/dropped_groups"]
        assert generated > 4 and dropped > 0 and m["dynamic/rounds"] >= 2
        # every group generated was trained on, dropped (uniform) or surplus (varying, beyond the batch)
        assert generated == 4 + dropped + m["dynamic/surplus_groups"]
        varying = 4 - m["dynamic/filled_uniform_groups"] + m["dynamic/surplus_groups"]
        assert m["dynamic/kept_frac"] == pytest.approx(varying / generated)
        assert m["reward/zero_std_group_frac"] == pytest.approx(1 - m["dynamic/kept_frac"])
        assert "accuracy/by_department/other" in m and "rollout/response_length/correct" in m
        assert 0 <= m["reward/overlong_penalty"] <= 1
        assert m["timing/generate"] > 0
    assert_documented(history)
