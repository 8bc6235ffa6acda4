"""make_experience: failed rewards are masked and counted, KL shapes the reward, abort above the threshold."""

import math

import pytest
import torch

from clinical_rl.rl.batch import RolloutBatch, Sample
from clinical_rl.data.cases import Case
from clinical_rl.config import AlgoConfig
from clinical_rl.rl.experience import RewardFailureError, experience_metrics, make_experience
from clinical_rl.rewards.base import RewardResult


def batch() -> RolloutBatch:
    samples = [
        Sample([1, 2], [3, 4, 5], [-0.1, -0.2, -0.3], "a", "stop", 0),
        Sample([1, 2], [6, 7], [-0.5, -0.6], "b", "length", 1),
        Sample([1, 2], [8], [-0.7], "c", "stop", 2),
    ]
    return RolloutBatch.from_samples(samples, ["p0", "p1", "p2"], [Case("q", f"r{i}") for i in range(3)], pad_id=0)


def test_padding_layout():
    b = batch()
    assert b.input_ids.tolist() == [[1, 2, 3, 4, 5], [1, 2, 6, 7, 0], [1, 2, 8, 0, 0]]
    assert b.response_mask.tolist() == [[0, 0, 1, 1, 1], [0, 0, 1, 1, 0], [0, 0, 1, 0, 0]]
    assert b.rollout_logp[1].tolist() == pytest.approx([0, 0, -0.5, -0.6, 0])
    assert b.truncated.tolist() == [False, True, False]


def test_failed_reward_is_masked_and_counted_not_scored():
    b = batch()
    results = [RewardResult(1.0, "ok", {"correct": 1.0}), RewardResult.failed("error", "judge down"),
               RewardResult(0.1, "ok", {"correct": 0.0})]
    zeros = torch.zeros(3, 5)
    algo = AlgoConfig(advantage="gae", kl_coef=0.0, normalize_advantages=False, rollout_batch_size=3, minibatch_size=3)
    exp = make_experience(algo, b, results, zeros, zeros, zeros, max_failed_frac=0.5)
    assert exp.reward_ok.tolist() == [True, False, True]
    assert exp.mask[1].sum() == 0
    assert exp.advantages[1].abs().sum() == 0 and exp.returns[1].abs().sum() == 0
    # gamma=1, lam=0.95, values 0, reward only at the end: every token's advantage is lam^(steps to end) * score
    assert exp.advantages[0, 2:].tolist() == pytest.approx([0.95**2, 0.95, 1.0])
    m = experience_metrics(exp)
    assert m["rollout/samples"] == 3 and m["kl/mean"] == 0.0
    assert "reward/mean" not in m  # the reward side is reward_metrics' (tests/rl/test_reward_metrics.py)


def test_kl_in_reward_shapes_token_rewards():
    b = batch()
    results = [RewardResult(1.0, "ok")] * 3
    old_logp = torch.full((3, 5), -1.0)
    ref_logp = torch.full((3, 5), -1.5)  # k1 = 0.5 on every response token
    algo = AlgoConfig(advantage="gae", kl_coef=0.1, lam=1.0, normalize_advantages=False, rollout_batch_size=3,
                      minibatch_size=3)
    exp = make_experience(algo, b, results, old_logp, ref_logp, torch.zeros(3, 5), max_failed_frac=0.0)
    # lam = gamma = 1, values 0: the advantage at t is the sum of the rewards from t on: 1 - 0.05 * (tokens left)
    assert exp.advantages[0, 2:].tolist() == pytest.approx([1 - 0.15, 1 - 0.10, 1 - 0.05])
    assert exp.extras["kl"].tolist() == pytest.approx([1.5, 1.0, 0.5])


def test_too_many_failures_abort_loudly():
    results = [RewardResult.failed("timeout", "slow judge")] * 2 + [RewardResult(1.0, "ok")]
    zeros = torch.zeros(3, 5)
    algo = AlgoConfig(rollout_batch_size=3, minibatch_size=3)
    with pytest.raises(RewardFailureError, match="67% of samples.*slow judge"):
        make_experience(algo, batch(), results, zeros, zeros, zeros, max_failed_frac=0.5)


def test_all_failed_metrics_are_nan_not_zero():
    results = [RewardResult.failed("error", "x")] * 3
    zeros = torch.zeros(3, 5)
    exp = make_experience(AlgoConfig(rollout_batch_size=3, minibatch_size=3), batch(), results, zeros, zeros, zeros, 1.0)
    m = experience_metrics(exp)
    assert math.isnan(m["kl/mean"])


@pytest.mark.parametrize(("mask_truncated", "trained"), [(False, [True, True, True]), (True, [True, False, True])])
def test_overlong_shaping_and_filtering(mask_truncated, trained):
    """DAPO's soft overlong punishment with L_max = 3 (max_new_tokens), L_cache = 2 (buffer): no penalty up to
    L_max - L_cache = 1 token, then (len - 1) / 2 of the penalty 0.5. Response lengths 3, 2, 1 -> penalties
    0.5 * 1 = 0.5, 0.5 * 0.5 = 0.25, 0; row 1 hit the cap (truncated) and leaves the loss when filtered."""
    results = [RewardResult(1.0, "ok")] * 3
    zeros = torch.zeros(3, 5)
    algo = AlgoConfig(advantage="gae", kl_coef=0.0, normalize_advantages=False, lam=1.0, rollout_batch_size=3,
                      minibatch_size=3, overlong={"buffer_tokens": 2, "penalty": 0.5, "mask_truncated": mask_truncated})
    exp = make_experience(algo, batch(), results, zeros, zeros, zeros, 0.0, max_new_tokens=3)
    assert exp.extras["overlong_penalty"].tolist() == [0.5, 0.25, 0.0]
    assert exp.scores.tolist() == [0.5, 0.75, 1.0]
    assert exp.reward_ok.tolist() == trained
    assert exp.mask[1].sum().item() == (0 if mask_truncated else 2)
    assert exp.advantages[0, 2:].tolist() == pytest.approx([0.5] * 3)  # lam = gamma = 1, values 0: the score
    m = experience_metrics(exp)
    # over the trained samples: (0.5 + 0.25 + 0) / 3, or (0.5 + 0) / 2 without the truncated one: 0.25 either way
    assert m["reward/overlong_penalty"] == pytest.approx(0.25)


def test_overlong_off_leaves_the_scores():
    results = [RewardResult(1.0, "ok")] * 3
    zeros = torch.zeros(3, 5)
    algo = AlgoConfig(rollout_batch_size=3, minibatch_size=3, overlong={"buffer_tokens": 0})
    exp = make_experience(algo, batch(), results, zeros, zeros, zeros, 0.0, max_new_tokens=3)
    assert exp.scores.tolist() == [1.0, 1.0, 1.0]


def test_single_on_policy_pass_measures_kl_and_entropy_from_the_engine_logprobs():
    """old_logp None (no scoring pass): KL to the reference from the engine's logprobs, the entropy estimate is
    -mean(engine logp), and the mismatch is left to the trainer; ref_logp None (no KL penalty): KL 0."""
    b = batch()  # engine logp: row 0 [-0.1, -0.2, -0.3], row 1 [-0.5, -0.6], row 2 [-0.7]
    results = [RewardResult(1.0, "ok")] * 3
    algo = AlgoConfig(advantage="grpo", n_samples_per_prompt=3, rollout_batch_size=1, minibatch_size=3, ppo_epochs=1,
                      kl_in="loss")
    assert not algo.scores_old_policy and algo.use_reference
    exp = make_experience(algo, b, results, None, torch.full((3, 5), -1.0), None, max_failed_frac=0.0)
    # k1 per token = engine logp - ref logp = logp + 1; summed per row: (0.9 + 0.8 + 0.7), (0.5 + 0.4), 0.3
    assert exp.extras["kl"].tolist() == pytest.approx([2.4, 0.9, 0.3])
    m = experience_metrics(exp)
    assert m["rollout/entropy_mc"] == pytest.approx((0.1 + 0.2 + 0.3 + 0.5 + 0.6 + 0.7) / 6)
    assert "rollout/logp_mismatch" not in m
    no_kl = make_experience(algo.model_copy(update={"kl_coef": 0.0}), b, results, None, None, None, 0.0)
    assert no_kl.extras["kl"].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(("changes", "scores"), [
    ({}, False),  # one epoch over one minibatch, KL in the loss: a single on-policy pass
    ({"ppo_epochs": 2}, True),  # the second epoch is off-policy
    ({"minibatch_size": 2}, True),  # the second minibatch is off-policy
    ({"kl_in": "reward"}, True),  # KL shaping needs pi_old before the update
    ({"kl_in": "reward", "kl_coef": 0.0}, False),  # ... unless there is no KL
])
def test_when_the_old_policy_is_scored(changes, scores):
    settings = dict(advantage="grpo", n_samples_per_prompt=2, rollout_batch_size=2, minibatch_size=4, ppo_epochs=1,
                    kl_in="loss") | changes
    algo = AlgoConfig(**settings)
    assert algo.scores_old_policy is scores


def one_prompt_batch() -> RolloutBatch:
    """batch()'s three responses (3, 2 and 1 tokens, from position 2 on) as one prompt's group."""
    samples = [
        Sample([1, 2], [3, 4, 5], [-0.1, -0.2, -0.3], "a", "stop", 0),
        Sample([1, 2], [6, 7], [-0.5, -0.6], "b", "length", 0),
        Sample([1, 2], [8], [-0.7], "c", "stop", 0),
    ]
    return RolloutBatch.from_samples(samples, ["p0"], [Case("q", "r0")], pad_id=0)


def test_group_estimator_takes_the_kl_in_the_reward_and_its_own_whitening_default():
    results = [RewardResult(1.0, "ok"), RewardResult(0.0, "ok"), RewardResult(0.5, "ok")]
    old_logp, ref_logp = torch.full((3, 5), -1.0), torch.full((3, 5), -1.5)  # k1 = 0.5 per token
    algo = AlgoConfig(advantage="rloo", n_samples_per_prompt=3, rollout_batch_size=1, minibatch_size=3, kl_coef=0.1)
    exp = make_experience(algo, one_prompt_batch(), results, old_logp, ref_logp, None, max_failed_frac=0.0)
    # leave-one-out: 1 - (0 + 0.5)/2 = 0.75, 0 - (1 + 0.5)/2 = -0.75, 0.5 - (1 + 0)/2 = 0; plus the return-to-go of
    # the KL reward -0.1 * 0.5 = -0.05 per token; rloo is not whitened by default (normalize_advantages null)
    assert exp.advantages[0, 2:].tolist() == pytest.approx([0.75 - 0.15, 0.75 - 0.10, 0.75 - 0.05])
    assert exp.advantages[1, 2:4].tolist() == pytest.approx([-0.75 - 0.10, -0.75 - 0.05])
    assert exp.advantages[2, 2].item() == pytest.approx(-0.05)
    assert exp.advantages[:, :2].abs().sum() == 0 and exp.advantages[1:, 4].abs().sum() == 0


def test_grpo_without_std_normalisation():
    results = [RewardResult(1.0, "ok"), RewardResult(0.0, "ok"), RewardResult(0.5, "ok")]
    algo = AlgoConfig(advantage="grpo", grpo_norm_by_std=False, normalize_advantages=False, n_samples_per_prompt=3,
                      rollout_batch_size=1, minibatch_size=3, kl_in="loss")
    exp = make_experience(algo, one_prompt_batch(), results, None, None, None, max_failed_frac=0.0)
    # score - mean(1, 0, 0.5) = 0.5, -0.5, 0 on every response token (std normalisation would give 1, -1, 0)
    assert exp.advantages[:, 2].tolist() == pytest.approx([0.5, -0.5, 0.0])
    assert exp.advantages[0, 2:].tolist() == pytest.approx([0.5, 0.5, 0.5])


@pytest.mark.parametrize("advantage", ["gae", "grpo"])
def test_environment_tokens_never_enter_the_losses(advantage):
    """A two-turn episode: generated [3, 4], the environment's [90, 91, 92], generated [5] (loss mask 1 1 0 0 0 1).
    The environment's positions are out of the loss mask, carry no advantage or return, and changing the trainer's
    logprobs or the critic's values there changes neither the policy nor the value loss."""
    from clinical_rl.algorithms.losses import ppo_policy_loss, value_loss

    episode = Sample([1, 2], [3, 4, 90, 91, 92, 5], [-0.1, -0.2, 0.0, 0.0, 0.0, -0.3], "Diagnosis: x", "stop", 0,
                     loss_mask=[1, 1, 0, 0, 0, 1], turn_lengths=[2, 1])
    other = Sample([1, 2], [6], [-0.4], "Diagnosis: y", "stop", 0)
    b = RolloutBatch.from_samples([episode, other], ["p"], [Case("q", "x")], pad_id=0)
    env = torch.tensor([[False] * 4 + [True] * 3 + [False], [False] * 8])
    assert b.response_mask[0].tolist() == [0, 0, 1, 1, 0, 0, 0, 1] and b.response_lengths.tolist() == [3, 1]
    results = [RewardResult(1.0, "ok"), RewardResult(0.1, "ok")]
    values = torch.rand(2, 8)
    algo = AlgoConfig(advantage=advantage, n_samples_per_prompt=2, rollout_batch_size=1, minibatch_size=2, lam=0.9,
                      kl_coef=0.0)
    exp = make_experience(algo, b, results, torch.zeros(2, 8), None, values if advantage == "gae" else None, 0.0)
    assert not exp.mask[env].any() and not exp.advantages[env].any() and not exp.returns[env].any()
    assert exp.advantages[0, [2, 3, 7]].abs().min() > 0  # every generated token of the episode learns

    logp = (0.01 * torch.randn(2, 8)).requires_grad_()  # near pi_old: no token clipped
    noise = torch.where(env, 5.0, 0.0)  # only at the environment's positions
    for loss_of in (lambda lp, v: ppo_policy_loss(lp, torch.zeros(2, 8), exp.advantages, exp.mask)[0],
                    lambda lp, v: value_loss(v, values, exp.returns, exp.mask)[0]):
        assert loss_of(logp, values).item() == pytest.approx(loss_of(logp + noise, values + noise).item())
    loss = ppo_policy_loss(logp, torch.zeros(2, 8), exp.advantages, exp.mask)[0]
    loss.backward()
    assert not logp.grad[env].any() and logp.grad[0, [2, 3, 7]].abs().min() > 0
