"""Golden numbers for the critic-free estimators of the registry (GAE and plain GRPO: test_advantages.py).

One batch serves most tests: two prompts of three samples, uneven lengths, a mask gap and a failed reward.

    row  group  score  mask          response tokens
    0    7      1.0    [1, 1, 1, 0]  3
    1    7      0.0    [1, 0, 0, 0]  1
    2    7      0.5    [1, 0, 1, 1]  3, a tool turn at t=1 between them
    3    3      2.0    [1, 1, 0, 0]  2
    4    3      0.0    [0, 0, 0, 0]  0: its reward failed, so it is no member of its group
    5    3      4.0    [1, 1, 1, 0]  3

Group 7: mean 0.5, centered 0.5, -0.5, 0; unbiased var (0.25 + 0.25 + 0) / 2 = 0.25, std 0.5.
Group 3 (valid rows 3 and 5 only): mean 3, centered -1, +1; unbiased var (1 + 1) / 1 = 2, std sqrt(2).
KL_REWARDS is -kl_coef * KL per token; the 9.0 entries sit on masked-out positions and must never be read.
"""

import pytest
import torch
from torch.testing import assert_close

from clinical_rl.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInputs,
    compute_advantages,
    discounted_returns,
    place_scores,
)
from clinical_rl.config import AlgoConfig, RunConfig

MASK = torch.tensor(
    [[1, 1, 1, 0], [1, 0, 0, 0], [1, 0, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool
)
SCORES = torch.tensor([1.0, 0.0, 0.5, 2.0, 0.0, 4.0])
GROUPS = torch.tensor([7, 7, 7, 3, 3, 3])
KL_REWARDS = torch.tensor(
    [[-0.1, -0.2, -0.3, 9.0], [-0.4, 9.0, 9.0, 9.0], [-0.1, 9.0, -0.1, -0.1], [-0.2, -0.2, 9.0, 9.0],
     [9.0, 9.0, 9.0, 9.0], [0.0, 0.0, -0.5, 9.0]]
)


def _inputs(kl_rewards: torch.Tensor | None = None, **kw: object) -> AdvantageInputs:
    token_rewards = place_scores(SCORES, MASK)
    if kl_rewards is not None:
        token_rewards = token_rewards + torch.where(MASK, kl_rewards, 0.0)
    return AdvantageInputs(token_rewards=token_rewards, scores=SCORES, mask=MASK, group_ids=GROUPS,
                           kl_rewards=kl_rewards, **kw)  # type: ignore[arg-type]


def _on_tokens(per_sample: list[float]) -> torch.Tensor:
    """A per-sample value broadcast to the sample's response tokens."""
    return torch.where(MASK, torch.tensor(per_sample).unsqueeze(1), 0.0)


# Without KL in the reward every critic-free estimator puts one number per sample on all its response tokens.
# Row 4 (failed reward) is 0 everywhere.
@pytest.mark.parametrize(("name", "settings", "per_sample"), [
    # (score - mean) / (std + 1e-6): 0.5 / 0.5 = 1, -1, 0 | -1 / 1.41421356 = -0.70710678, +0.70710678
    ("grpo", {}, [1.0, -1.0, 0.0, -0.70710678, 0.0, 0.70710678]),
    # grpo_norm_by_std false: score - mean only
    ("grpo", {"norm_by_std": False}, [0.5, -0.5, 0.0, -1.0, 0.0, 1.0]),
    # Dr. GRPO: score - mean, whatever norm_by_std says
    ("dr_grpo", {}, [0.5, -0.5, 0.0, -1.0, 0.0, 1.0]),
    # leave-one-out: row 0: 1 - (0 + 0.5)/2 = 0.75; row 1: 0 - (1 + 0.5)/2 = -0.75; row 2: 0.5 - (1 + 0)/2 = 0;
    # row 3: 2 - 4 = -2; row 5: 4 - 2 = 2 (the failed row 4 is no member: n = 2). = n/(n-1) * centered.
    ("rloo", {}, [0.75, -0.75, 0.0, -2.0, 0.0, 2.0]),
])
def test_group_estimators_without_kl(name: str, settings: dict, per_sample: list[float]) -> None:
    advantages, returns = compute_advantages(name, _inputs(**settings), whiten=False)
    assert_close(advantages, _on_tokens(per_sample), atol=3e-6, rtol=0)
    assert_close(returns, advantages, atol=0, rtol=0)


def test_dr_grpo_with_kl_in_the_reward_adds_the_kl_return_to_go() -> None:
    # As OpenRLHF: the transformed score goes on the last response token, the KL rewards on every one, and each
    # token's advantage is the undiscounted sum from it to the end (masked positions skipped):
    #   row 0 (0.5):  t2 = 0.5 - 0.3 = 0.2; t1 = 0.2 - 0.2 = 0.0; t0 = 0.0 - 0.1 = -0.1
    #   row 1 (-0.5): t0 = -0.5 - 0.4 = -0.9
    #   row 2 (0):    t3 = -0.1; t2 = -0.1 - 0.1 = -0.2; (t1 is the tool turn) t0 = -0.2 - 0.1 = -0.3
    #   row 3 (-1):   t1 = -1 - 0.2 = -1.2; t0 = -1.2 - 0.2 = -1.4
    #   row 5 (+1):   t2 = 1 - 0.5 = 0.5; t1 = 0.5 + 0 = 0.5; t0 = 0.5
    advantages, returns = compute_advantages("dr_grpo", _inputs(KL_REWARDS))  # dr_grpo does not whiten
    expected = torch.tensor([[-0.1, 0.0, 0.2, 0.0], [-0.9, 0.0, 0.0, 0.0], [-0.3, 0.0, -0.2, -0.1],
                             [-1.4, -1.2, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.0]])
    assert_close(advantages, expected, atol=1e-6, rtol=0)
    assert_close(returns, expected, atol=1e-6, rtol=0)


def test_rloo_with_kl_in_the_reward() -> None:
    # The leave-one-out advantage 0.75, -0.75, 0, -2, 2 plus the same KL return-to-go as above:
    #   row 0: 0.75 + (-0.6, -0.5, -0.3) = 0.15, 0.25, 0.45;  row 1: -0.75 - 0.4 = -1.15
    #   row 2: (-0.3, -0.2, -0.1);  row 3: -2 + (-0.4, -0.2) = -2.4, -2.2;  row 5: 2 - 0.5 = 1.5 on all three
    advantages, _ = compute_advantages("rloo", _inputs(KL_REWARDS))
    expected = torch.tensor([[0.15, 0.25, 0.45, 0.0], [-1.15, 0.0, 0.0, 0.0], [-0.3, 0.0, -0.2, -0.1],
                             [-2.4, -2.2, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.5, 1.5, 1.5, 0.0]])
    assert_close(advantages, expected, atol=1e-6, rtol=0)


def test_reinforce_plus_plus_baseline_centers_then_whitens_the_batch() -> None:
    # Before whitening it is dr_grpo's -0.1, 0, 0.2 | -0.9 | -0.3, -0.2, -0.1 | -1.4, -1.2 | 0.5, 0.5, 0.5 (12
    # tokens). Whitening over the batch's tokens: sum -2.5, mean -0.20833333; sum of squares 5.15, so the squared
    # deviations sum to 5.15 - 12 * 0.20833333^2 = 4.62916667, unbiased var 4.62916667 / 11 = 0.42083333,
    # std 0.64871669; A = (x + 0.20833333) / 0.64871669, e.g. 0.5 -> 1.09189940, -1.4 -> -1.83696012.
    advantages, returns = compute_advantages("reinforce_plus_plus_baseline", _inputs(KL_REWARDS))
    raw = torch.tensor([[-0.1, 0.0, 0.2, 0.0], [-0.9, 0.0, 0.0, 0.0], [-0.3, 0.0, -0.2, -0.1],
                        [-1.4, -1.2, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.0]])
    expected = torch.where(MASK, (raw + 0.20833333) / 0.64871669, 0.0)
    assert_close(advantages, expected, atol=1e-6, rtol=0)
    assert expected[5, 0].item() == pytest.approx(1.09189940) and expected[3, 0].item() == pytest.approx(-1.83696012)
    assert_close(returns, raw, atol=1e-6, rtol=0)  # the returns stay unwhitened


def test_reinforce_plus_plus_discounts_token_rewards_and_whitens_globally() -> None:
    # No groups: three prompts, one sample each; gamma 0.5. Row 1 has a gap at t=1, row 2 failed its reward.
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 0]], dtype=torch.bool)
    scores = torch.tensor([1.0, 0.0, 0.0])
    kl_rewards = torch.tensor([[-0.1, -0.1, -0.1], [-0.2, 7.0, -0.2], [5.0, 5.0, 5.0]])
    token_rewards = place_scores(scores, mask) + torch.where(mask, kl_rewards, 0.0)
    inputs = AdvantageInputs(token_rewards=token_rewards, scores=scores, mask=mask, group_ids=torch.arange(3),
                             kl_rewards=kl_rewards, gamma=0.5)
    advantages, returns = compute_advantages("reinforce_plus_plus", inputs)
    # G_t = r_t + 0.5 * G_next:
    #   row 0: rewards -0.1, -0.1, 0.9 -> t2 = 0.9; t1 = -0.1 + 0.45 = 0.35; t0 = -0.1 + 0.175 = 0.075
    #   row 1: rewards -0.2, (gap), -0.2 -> t2 = -0.2; t0 = -0.2 + 0.5 * -0.2 = -0.3
    assert_close(returns, torch.tensor([[0.075, 0.35, 0.9], [-0.3, 0.0, -0.2], [0.0, 0.0, 0.0]]), atol=1e-6, rtol=0)
    # whiten the five: mean 0.825 / 5 = 0.165; squares sum 1.068125, minus 5 * 0.165^2 = 0.136125 -> 0.932;
    # unbiased var 0.233, std 0.48270074:
    #   (0.075 - 0.165) / 0.48270074 = -0.18645091   (0.35 - ...) = 0.38326023   (0.9 - ...) = 1.52268260
    #   (-0.3 - ...) = -0.96332971                    (-0.2 - ...) = -0.75616201
    expected = torch.tensor([[-0.18645091, 0.38326023, 1.52268260], [-0.96332971, 0.0, -0.75616201],
                             [0.0, 0.0, 0.0]])
    assert_close(advantages, expected, atol=1e-6, rtol=0)


def test_discounted_returns_skip_gaps_and_padding() -> None:
    # gamma 0.9 (the loop) over a row with a gap at t=1 and padding at t=3 holding garbage:
    # t2 = 2; t0 = 1 + 0.9 * 2 = 2.8 (the gap's 100 is never read)
    rewards = torch.tensor([[1.0, 100.0, 2.0, -50.0]])
    mask = torch.tensor([[1, 0, 1, 0]], dtype=torch.bool)
    assert_close(discounted_returns(rewards, mask, 0.9), torch.tensor([[2.8, 0.0, 2.0, 0.0]]), atol=1e-6, rtol=0)
    # gamma 1 (a reverse cumulative sum rather than the loop): t0 = 1 + 2 = 3
    assert_close(discounted_returns(rewards, mask, 1.0), torch.tensor([[3.0, 0.0, 2.0, 0.0]]), atol=0, rtol=0)


def test_rloo_singleton_and_identical_groups_give_zero() -> None:
    # group 0 has one valid sample (no leave-one-out baseline), group 1 three identical scores (no signal)
    mask = torch.ones(4, 2, dtype=torch.bool)
    inputs = AdvantageInputs(token_rewards=torch.zeros(4, 2), scores=torch.tensor([5.0, 0.3, 0.3, 0.3]), mask=mask,
                             group_ids=torch.tensor([0, 1, 1, 1]))
    for name in ("rloo", "dr_grpo", "reinforce_plus_plus_baseline"):
        assert_close(compute_advantages(name, inputs, whiten=False)[0], torch.zeros(4, 2), atol=0, rtol=0)


def test_whitening_defaults_come_from_the_registry() -> None:
    inputs = _inputs()
    for name, estimator in ADVANTAGE_ESTIMATORS.items():
        if estimator.needs_critic:
            continue
        raw, _ = compute_advantages(name, inputs, whiten=False)
        default, _ = compute_advantages(name, inputs)
        whitened, _ = compute_advantages(name, inputs, whiten=True)
        assert_close(default, whitened if estimator.whiten else raw, atol=0, rtol=0)


def test_registry_drives_critic_groups_and_config_names() -> None:
    assert [n for n, e in ADVANTAGE_ESTIMATORS.items() if e.needs_critic] == ["gae"]
    assert {n for n, e in ADVANTAGE_ESTIMATORS.items() if not e.needs_groups} == {"gae", "reinforce_plus_plus"}
    for name, estimator in ADVANTAGE_ESTIMATORS.items():
        algo = AlgoConfig(advantage=name, n_samples_per_prompt=2, rollout_batch_size=2, minibatch_size=4)
        assert algo.use_critic is estimator.needs_critic
        if estimator.needs_groups:
            with pytest.raises(ValueError, match=f"algo.advantage={name} needs algo.n_samples_per_prompt >= 2"):
                AlgoConfig(advantage=name)
    with pytest.raises(ValueError, match="'rloo'"):
        AlgoConfig(advantage="remax")


def test_dr_grpo_prescribes_its_aggregation() -> None:
    algo = {"advantage": "dr_grpo", "n_samples_per_prompt": 2}
    assert RunConfig(algo=algo).loss_agg_mode == "seq-mean-token-sum-norm"
    assert RunConfig(algo=algo, policy={"loss_agg_mode": "token-mean"}).loss_agg_mode == "token-mean"
    assert RunConfig().loss_agg_mode == "token-mean"
    assert RunConfig(policy={"loss_mode": "gspo"}).loss_agg_mode == "seq-mean-token-mean"
    with pytest.raises(ValueError, match="set policy.loss_agg_mode"):
        RunConfig(algo=algo, policy={"loss_mode": "gspo"})
