"""RL through the diagnostic chain on real actors: multi-turn episodes on the vLLM engines, the environment's tokens
masked out of the loss, and the policy learning to order the examination that decides before it answers."""

import pytest

from tests.candidate_task import SYSTEM_PROMPT
from tests.rl.test_driver import ROOT, assert_documented

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]


def test_grpo_learns_to_order_the_deciding_examination(chain_model, chain_cases, tmp_path):
    """The warm start orders the chest X-ray (whose result names the finding) half the time and guesses among K
    candidates otherwise: accuracy ~ (1 + 1/K) / 2. GRPO lifts the ordering rate and the accuracy; the trainer's
    logprobs of the sampled tokens match the engine's across turns (a drift between turns would show here)."""
    from clinical_rl.config_files import load_config
    from clinical_rl.rl.driver import run

    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml", [
        f"model.path={chain_model}", f"data.path={chain_cases}", f"data.system_prompt={SYSTEM_PROMPT}",
        f"output_dir={tmp_path / 'run'}", "steps=12", "model.dtype=bfloat16", "env.max_turns=2",
        "reward.cls=clinical_rl.envs.reward:DiagnosticChainReward", "algo.advantage=grpo", "algo.kl_coef=0",
        "algo.rollout_batch_size=16", "algo.n_samples_per_prompt=4", "algo.minibatch_size=32", "algo.ppo_epochs=2",
        "policy.lr=3e-4", "policy.micro_batch_size=32", "tracking.wandb_mode=disabled",
    ])
    history = run(cfg).history
    exams = [h["reward/exams"] for h in history]
    accuracy = [h["reward/correct"] for h in history]
    assert 0.15 < exams[0] < 0.8, exams  # about half the warm start's episodes order the X-ray
    assert sum(exams[-3:]) / 3 >= 0.85, exams  # the behaviour RL lifts: order first
    # which pays: answering from the result is right far more often than a guess among K (1/K)
    assert sum(h["accuracy/by_turns/2"] for h in history[-3:]) / 3 >= 0.7, history[-3:]
    assert sum(accuracy[-3:]) / 3 >= 0.7, accuracy
    for step in history:
        assert step["rollout/logp_mismatch"] < 0.1  # bf16 noise; a re-encoded turn would be far off
        # every information-bearing request is the X-ray (imaging, cost 3); other names bill their own category
        assert step["reward/cost"] >= 3.0 * step["reward/info_requests"] - 1e-6
        assert 1.0 <= step["episode/turns_mean"] <= 2.0
    assert history[-1]["episode/turns_mean"] > 1.7
    assert_documented(history)
