import pytest
import torch
from torch.testing import assert_close

from clinical_rl.algorithms.advantages import (
    AdvantageInputs,
    gae,
    get_advantage_estimator,
    grpo,
    place_scores,
    shape_token_rewards,
)
from clinical_rl.algorithms.losses import ppo_policy_loss


def _inputs(
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    values: torch.Tensor | None = None,
    scores: torch.Tensor | None = None,
    group_ids: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> AdvantageInputs:
    batch = mask.shape[0]
    return AdvantageInputs(
        token_rewards=token_rewards,
        scores=scores if scores is not None else torch.zeros(batch),
        mask=mask,
        group_ids=group_ids if group_ids is not None else torch.zeros(batch, dtype=torch.long),
        values=values,
        gamma=gamma,
        lam=lam,
    )


def test_place_scores_golden() -> None:
    scores = torch.tensor([2.0, -1.0, 5.0, 3.0])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)
    # last masked position per row: 1, 3, none, 2 (the gap at 1 does not end row 3)
    expected = torch.tensor([[0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]])
    assert_close(place_scores(scores, mask), expected, atol=0, rtol=0)


def test_shape_token_rewards_golden() -> None:
    scores = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    kl = torch.tensor([[0.5, 1.0, 1e6], [0.2, 0.0, -0.4]])
    # -0.1 * kl on response tokens, + score on the last one:
    #   row 0: -0.05, -0.1 + 2 = 1.9, 0 (padding)      row 1: -0.02, 0, 0.04 - 1 = -0.96
    expected = torch.tensor([[-0.05, 1.9, 0.0], [-0.02, 0.0, -0.96]])
    assert_close(shape_token_rewards(scores, mask, kl, kl_coef=0.1), expected, atol=1e-6, rtol=0)
    assert_close(shape_token_rewards(scores, mask), place_scores(scores, mask), atol=0, rtol=0)


def _right_padded_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # row 1 has a 2-token response; its padding column holds garbage
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 9.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [1.0, 0.5, 99.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    return rewards, values, mask


def test_gae_golden_gamma1_lam095() -> None:
    rewards, values, mask = _right_padded_batch()
    adv, ret = gae(_inputs(rewards, mask, values, gamma=1.0, lam=0.95))
    # row 0: t=2 delta = 1 + 0 - 0.7 = 0.3, A = 0.3
    #        t=1 delta = 0 + 0.7 - 0.6 = 0.1, A = 0.1 + 0.95*0.3 = 0.385
    #        t=0 delta = 0 + 0.6 - 0.5 = 0.1, A = 0.1 + 0.95*0.385 = 0.46575
    # row 1: t=2 padding -> 0; t=1 delta = 2 + 0 - 0.5 = 1.5, A = 1.5
    #        t=0 delta = 0 + 0.5 - 1.0 = -0.5, A = -0.5 + 0.95*1.5 = 0.925
    assert_close(adv, torch.tensor([[0.46575, 0.385, 0.3], [0.925, 1.5, 0.0]]), atol=1e-6, rtol=0)
    # returns = A + V on masked positions
    assert_close(ret, torch.tensor([[0.96575, 0.985, 1.0], [1.925, 2.0, 0.0]]), atol=1e-6, rtol=0)


def test_gae_golden_gamma09_lam08() -> None:
    rewards, values, mask = _right_padded_batch()
    adv, ret = gae(_inputs(rewards, mask, values, gamma=0.9, lam=0.8))
    # gamma*lam = 0.72
    # row 0: t=2 delta = 1 - 0.7 = 0.3, A = 0.3
    #        t=1 delta = 0.9*0.7 - 0.6 = 0.03, A = 0.03 + 0.72*0.3 = 0.246
    #        t=0 delta = 0.9*0.6 - 0.5 = 0.04, A = 0.04 + 0.72*0.246 = 0.21712
    # row 1: t=1 delta = 2 - 0.5 = 1.5, A = 1.5
    #        t=0 delta = 0.9*0.5 - 1.0 = -0.55, A = -0.55 + 0.72*1.5 = 0.53
    assert_close(adv, torch.tensor([[0.21712, 0.246, 0.3], [0.53, 1.5, 0.0]]), atol=1e-6, rtol=0)
    assert_close(ret, torch.tensor([[0.71712, 0.846, 1.0], [1.53, 2.0, 0.0]]), atol=1e-6, rtol=0)


def test_gae_skips_mask_gap() -> None:
    # multi-turn: position 1 is a tool observation (mask 0) between two response tokens
    rewards = torch.tensor([[0.0, 5.0, 1.0, 0.0]])
    values = torch.tensor([[0.2, 9.0, 0.4, 7.0]])
    mask = torch.tensor([[1, 0, 1, 0]], dtype=torch.bool)
    adv, ret = gae(_inputs(rewards, mask, values, gamma=0.9, lam=0.8))
    # t=2: delta = 1 + 0 - 0.4 = 0.6, A = 0.6
    # t=0: next value is V_2 = 0.4 (the gap is skipped): delta = 0.9*0.4 - 0.2 = 0.16,
    #      A = 0.16 + 0.72*0.6 = 0.592
    assert_close(adv, torch.tensor([[0.592, 0.0, 0.6, 0.0]]), atol=1e-6, rtol=0)
    assert_close(ret, torch.tensor([[0.792, 0.0, 1.0, 0.0]]), atol=1e-6, rtol=0)
    # identical to running GAE on the row with the gap removed
    compact_adv, _ = gae(_inputs(rewards[:, [0, 2]], torch.ones(1, 2), values[:, [0, 2]], gamma=0.9, lam=0.8))
    assert_close(adv[:, [0, 2]], compact_adv, atol=1e-6, rtol=0)


def _naive_gae_row(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    advantages = [0.0] * len(rewards)
    running, next_value = 0.0, 0.0
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
        next_value = values[t]
    return advantages


def test_gae_matches_naive_reference_on_random_right_padding() -> None:
    gen = torch.Generator().manual_seed(0)
    batch, steps, gamma, lam = 6, 9, 0.97, 0.9
    rewards = torch.randn(batch, steps, generator=gen, dtype=torch.float64)
    values = torch.randn(batch, steps, generator=gen, dtype=torch.float64)
    lengths = torch.randint(0, steps + 1, (batch,), generator=gen)
    lengths[0] = steps  # at least one full-length and (below) one empty row
    lengths[1] = 0
    mask = torch.arange(steps) < lengths.unsqueeze(1)
    adv, ret = gae(_inputs(rewards, mask, values, gamma=gamma, lam=lam))

    expected = torch.zeros(batch, steps, dtype=torch.float64)
    for b in range(batch):
        n = int(lengths[b])
        expected[b, :n] = torch.tensor(
            _naive_gae_row(rewards[b, :n].tolist(), values[b, :n].tolist(), gamma, lam), dtype=torch.float64
        )
    assert_close(adv, expected, atol=1e-10, rtol=0)
    assert_close(ret, torch.where(mask, expected + values, 0.0), atol=1e-10, rtol=0)


def test_gae_requires_values() -> None:
    rewards, _, mask = _right_padded_batch()
    with pytest.raises(ValueError, match="values"):
        gae(_inputs(rewards, mask))


def test_grpo_golden_two_groups() -> None:
    scores = torch.tensor([1.0, 0.0, 0.0, 2.0, 4.0])
    group_ids = torch.tensor([7, 7, 7, 3, 3])
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1], [1, 0]], dtype=torch.bool)
    adv, ret = grpo(_inputs(torch.zeros(5, 2), mask, scores=scores, group_ids=group_ids))
    # group 7: scores 1, 0, 0; mean 1/3; deviations 2/3, -1/3, -1/3; unbiased var (4/9+1/9+1/9)/2 = 1/3,
    #          std 0.5773502692 -> 1.1547005384, -0.5773502692, -0.5773502692
    # group 3: scores 2, 4; mean 3; unbiased var (1 + 1)/1 = 2, std 1.4142135624 -> -0.7071067812, 0.7071067812
    # (eps = 1e-6 moves these by < 2e-6)
    expected = torch.tensor(
        [
            [1.1547005384, 1.1547005384],
            [-0.5773502692, 0.0],
            [-0.5773502692, -0.5773502692],
            [-0.7071067812, -0.7071067812],
            [0.7071067812, 0.0],
        ]
    )
    assert_close(adv, expected, atol=1e-5, rtol=0)
    assert_close(ret, adv, atol=0, rtol=0)


def test_grpo_identical_scores_and_singleton_give_zero() -> None:
    # six copies of 0.3: the float32 group mean is off by ~3e-8, which a plain (x - mean)/(std + eps)
    # would blow up to ~0.03; one singleton group, whose std is undefined
    scores = torch.tensor([0.3] * 6 + [0.7])
    group_ids = torch.tensor([0] * 6 + [1])
    adv, _ = grpo(_inputs(torch.zeros(7, 3), torch.ones(7, 3), scores=scores, group_ids=group_ids))
    assert_close(adv, torch.zeros(7, 3), atol=0, rtol=0)


def test_grpo_excludes_invalid_sample() -> None:
    # sample 2 failed reward computation: mask row empty, score already 0
    scores = torch.tensor([1.0, 0.0, 0.0])
    mask = torch.tensor([[1, 1], [1, 1], [0, 0]], dtype=torch.bool)
    adv, _ = grpo(_inputs(torch.zeros(3, 2), mask, scores=scores, group_ids=torch.tensor([4, 4, 4])))
    # valid scores 1, 0: mean 0.5, unbiased std sqrt(0.5) = 0.7071067812 -> +-0.7071067812
    # (including the invalid 0 would give mean 1/3 and 1.1547, -0.5774 instead)
    expected = torch.tensor([[0.7071067812, 0.7071067812], [-0.7071067812, -0.7071067812], [0.0, 0.0]])
    assert_close(adv, expected, atol=1e-5, rtol=0)


def test_failed_reward_sample_gets_zero_policy_gradient() -> None:
    gen = torch.Generator().manual_seed(0)
    logp = (torch.randn(3, 4, generator=gen) - 1.0).requires_grad_(True)
    old_logp = logp.detach() + 0.1 * torch.randn(3, 4, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    scores = torch.tensor([1.0, 0.0, 0.0])
    adv, _ = grpo(_inputs(torch.zeros(3, 4), mask, scores=scores, group_ids=torch.zeros(3, dtype=torch.long)))
    loss, _ = ppo_policy_loss(logp, old_logp, adv, mask)
    loss.backward()
    assert logp.grad is not None
    assert (logp.grad[2] == 0).all()
    assert (logp.grad[0, :3] != 0).all() and (logp.grad[1] != 0).all()


def test_registry_and_unknown_name() -> None:
    assert get_advantage_estimator("gae").fn is gae and get_advantage_estimator("grpo").fn is grpo
    with pytest.raises(ValueError, match=r"'dr_grpo', 'gae', 'grpo', 'reinforce_plus_plus', "
                                         r"'reinforce_plus_plus_baseline', 'rloo'"):
        get_advantage_estimator("remax")
