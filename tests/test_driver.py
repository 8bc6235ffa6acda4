"""The whole loop: every role a Ray actor in one placement group, vLLM rollouts, DeepSpeed trainers.

PPO must lift a warmed-up tiny model from ~1/K accuracy (random pick among K named candidates) to >= 0.8, with
the engines' logprobs matching the trainer's at every step (weight sync) and every metric documented.
"""

import json
import math
import re
from pathlib import Path

import pytest
import torch

from clinical_rl.config_files import load_config
from tests.candidate_task import K, SYSTEM_PROMPT

ROOT = Path(__file__).resolve().parents[1]
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
    from clinical_rl.checkpoint import latest_checkpoint
    from clinical_rl.data.loaders import load_cases
    from clinical_rl.driver import CaseSampler, run

    def config(steps: int):
        return task_config(
            task_model, task_cases, tmp_path / "run", f"steps={steps}", "save_every=20", "algo.rollout_batch_size=64",
            "algo.minibatch_size=32", "algo.ppo_epochs=2", "policy.lr=3e-4", "critic.lr=1e-3",
            "policy.micro_batch_size=32", "critic.micro_batch_size=32",
            f"reward.audit.pairs={ROOT / 'tests' / 'rewards' / 'data' / 'audit_pairs.jsonl'}", "reward.audit.every=10",
        )

    # Trained in two runs: the second resumes from the first's checkpoint, as after a preemption.
    first = run(config(20))
    assert latest_checkpoint(tmp_path / "run").state.optimizer_steps == {"policy": 80, "critic": 80}  # 20 x 2 x 2
    capsys.readouterr()
    result = run(config(40))
    assert "resumed from" in capsys.readouterr().out
    assert len(result.history) == 40 and result.history[:20] == first.history
    latest = latest_checkpoint(tmp_path / "run")
    assert latest.state.step == 40 and latest.state.optimizer_steps == {"policy": 160, "critic": 160}
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


def test_ppo_learns_the_candidate_task_in_bf16(task_model, task_cases, tmp_path):
    """The learning test's bar in bf16: bf16 weights and compute for every role (fp32 master weights in DeepSpeed's
    optimizer), truncated importance sampling on. The engine/trainer gap is bf16 noise, well below a stale sync's."""
    from clinical_rl.driver import run

    cfg = task_config(
        task_model, task_cases, tmp_path / "run", "steps=30", "model.dtype=bfloat16", "algo.rollout_batch_size=64",
        "algo.minibatch_size=32", "algo.ppo_epochs=2", "policy.lr=3e-4", "critic.lr=1e-3", "algo.tis_cap=2.0",
        "policy.micro_batch_size=32", "critic.micro_batch_size=32", "tracking.wandb_mode=disabled",
    )
    result = run(cfg)
    accuracy = [h["reward/correct"] for h in result.history]
    assert accuracy[0] < 2.0 / K, accuracy
    assert sum(accuracy[-3:]) / 3 >= 0.8, accuracy
    for step in result.history:
        assert step["rollout/logp_mismatch"] < 0.1
        assert 0.5 < step["rollout/tis_weight_mean"] <= 2.0


def test_engine_and_trainer_agree_after_a_weight_sync(task_model, task_cases, tmp_path):
    """One real step, then vLLM's per-token logprobs of a sampled sequence equal the trainer's within 1e-3."""
    import ray

    from clinical_rl.actors.rollout import RolloutEngine
    from clinical_rl.batch import RolloutBatch
    from clinical_rl.data.loaders import load_cases
    from clinical_rl.data.prompts import render_prompt
    from clinical_rl.device import Device
    from clinical_rl.driver import generate, rl_step
    from clinical_rl.placement import create_placement_group, plan_placement
    from clinical_rl.roles import start_roles, stop_roles

    cfg = task_config(task_model, task_cases, tmp_path / "run", "policy.lr=1e-3", "ray.num_cpus=6")
    ray.init(num_cpus=cfg.ray.num_cpus, object_store_memory=512 * 1024**2, include_dashboard=False)
    try:
        plan = plan_placement(cfg)
        pg, _ = create_placement_group(plan)
        roles = start_roles(cfg, plan, pg, task_model, task_model)
        cases = load_cases(str(task_cases))[:4]
        prompts = [render_prompt(roles.tokenizer, c, SYSTEM_PROMPT) for c in cases]
        before: RolloutBatch = generate(roles, cases, prompts, n=1)
        old = ray.get(roles.policy[0].logprobs.remote(before))
        rl_step(cfg, roles, cases * 2, prompts * 2, step=1)  # update + sync
        trainer = ray.get(roles.policy[0].logprobs.remote(before))
        rows = [ids[mask.bool()].tolist() for ids, mask in zip(before.input_ids, before.attention_mask)]
        engine = ray.get(roles.engines[0].token_logprobs.remote(rows))
        mask = before.response_mask.bool()
        for i, row in enumerate(engine):
            diff = (torch.tensor(row) - trainer[i, : len(row)])[mask[i, : len(row)]]
            assert diff.abs().max() < 1e-3
        assert (trainer - old)[mask].abs().max() > 1e-2  # the step changed the weights, so agreement means a sync

        saved = roles.save_policy(tmp_path / "policy")
        stop_roles(roles)
        reloaded = RolloutEngine(str(saved), cfg.rollout, Device("cpu"), "float32", seed=0)  # vLLM loads the export
        assert torch.tensor(reloaded.token_logprobs(rows[:1])[0])[mask[0, : len(rows[0])]].sub(
            trainer[0, : len(rows[0])][mask[0, : len(rows[0])]]).abs().max() < 1e-3
        reloaded.shutdown()
    finally:
        ray.shutdown()
