import math

import pytest
import torch
from torch.testing import assert_close

from clinical_rl.algorithms.losses import (
    PolicyLossStats,
    entropy_from_logits,
    explained_variance,
    kl_penalty_loss,
    masked_mean,
    masked_sum,
    masked_whiten,
    ppo_policy_loss,
    truncated_is_weights,
    value_loss,
)


def test_masked_sum_and_mean() -> None:
    x = torch.tensor([[1.0, 2.0, 1e6], [4.0, 1e6, 1e6]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # 1 + 2 + 4 = 7 over 3 tokens
    assert_close(masked_sum(x, mask), torch.tensor(7.0), atol=1e-6, rtol=0)
    assert_close(masked_mean(x, mask), torch.tensor(7.0 / 3.0), atol=1e-6, rtol=0)
    assert_close(masked_mean(x, mask.bool()), torch.tensor(7.0 / 3.0), atol=1e-6, rtol=0)
    # explicit global token count: 7 / 7
    assert_close(masked_mean(x, mask, num_tokens=7.0), torch.tensor(1.0), atol=1e-6, rtol=0)


def test_masked_mean_of_empty_mask_is_zero() -> None:
    out = masked_mean(torch.ones(2, 3), torch.zeros(2, 3))
    assert out.item() == 0.0


def test_masked_whiten_golden() -> None:
    x = torch.tensor([[1.0, 2.0, 100.0], [4.0, -50.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    # entries 1, 2, 4: mean 7/3, deviations -4/3, -1/3, 5/3, squares sum 42/9,
    # unbiased var 42/9/2 = 7/3, std = 1.5275252317
    # -> -0.8728715609, -0.2182178902, 1.0910894512; masked-out entries -> 0
    expected = torch.tensor([[-0.8728715609, -0.2182178902, 0.0], [1.0910894512, 0.0, 0.0]])
    assert_close(masked_whiten(x, mask), expected, atol=1e-6, rtol=0)


def _ppo_golden_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Row 0: A=+1 with ratios 1.1 (inside), 1.5 (above 1+eps), 0.5 (below 1-eps)
    # Row 1: A=-2 with ratios 0.9 (inside), 0.5 (below 1-eps), 1.5 (above 1+eps)
    ratios = torch.tensor([[1.1, 1.5, 0.5], [0.9, 0.5, 1.5]])
    old_logp = torch.full((2, 3), -1.0)
    logp = old_logp + ratios.log()
    advantages = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]])
    return logp, old_logp, advantages


def test_ppo_policy_loss_golden() -> None:
    logp, old_logp, advantages = _ppo_golden_batch()
    loss, stats = ppo_policy_loss(logp, old_logp, advantages, torch.ones(2, 3))
    # max(-A*r, -A*clip(r, 0.8, 1.2)):
    #   A=+1: r=1.1 -> max(-1.1, -1.1) = -1.1; r=1.5 -> max(-1.5, -1.2) = -1.2 (clipped);
    #         r=0.5 -> max(-0.5, -0.8) = -0.5
    #   A=-2: r=0.9 -> max(1.8, 1.8) = 1.8; r=0.5 -> max(1.0, 1.6) = 1.6 (clipped);
    #         r=1.5 -> max(3.0, 2.4) = 3.0
    # mean = (-1.1 - 1.2 - 0.5 + 1.8 + 1.6 + 3.0) / 6 = 3.6 / 6 = 0.6; clipfrac = 2/6
    assert_close(loss, torch.tensor(0.6), atol=1e-6, rtol=0)
    assert isinstance(stats, PolicyLossStats)
    assert stats.clipfrac == pytest.approx(1.0 / 3.0, abs=1e-6)
    # (r - 1) - log r: 1.1 -> 0.0046898202, 1.5 -> 0.0945348919, 0.5 -> 0.1931471806,
    #                  0.9 -> 0.0053605157; sum = 0.5854144809, / 6 = 0.0975690802
    assert stats.approx_kl == pytest.approx(0.0975690802, abs=1e-6)
    # (1.1 + 1.5 + 0.5 + 0.9 + 0.5 + 1.5) / 6 = 1.0
    assert stats.ratio_mean == pytest.approx(1.0, abs=1e-6)


def test_ppo_policy_loss_asymmetric_clip() -> None:
    logp, old_logp, advantages = _ppo_golden_batch()
    loss, stats = ppo_policy_loss(logp, old_logp, advantages, torch.ones(2, 3), clip_eps_low=0.2, clip_eps_high=0.28)
    # only A=+1, r=1.5 changes: max(-1.5, -1.28) = -1.28, so the sum is 3.6 - 0.08 = 3.52; 3.52/6
    # A=-2, r=1.5 stays unclipped: max(3.0, 2.56) = 3.0
    assert_close(loss, torch.tensor(3.52 / 6), atol=1e-6, rtol=0)
    assert stats.clipfrac == pytest.approx(1.0 / 3.0, abs=1e-6)


def test_ppo_policy_loss_ignores_garbage_on_masked_positions() -> None:
    logp, old_logp, advantages = _ppo_golden_batch()
    garbage = torch.tensor([[1e6], [-1e6]])
    logp_g = torch.cat([logp, garbage], dim=1).requires_grad_(True)
    old_logp_g = torch.cat([old_logp, -garbage], dim=1)
    advantages_g = torch.cat([advantages, garbage], dim=1)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    loss, stats = ppo_policy_loss(logp_g, old_logp_g, advantages_g, mask)
    assert_close(loss, torch.tensor(0.6), atol=1e-6, rtol=0)
    assert stats.clipfrac == pytest.approx(1.0 / 3.0, abs=1e-6)
    assert math.isfinite(stats.approx_kl) and math.isfinite(stats.ratio_mean)
    loss.backward()
    assert logp_g.grad is not None
    assert torch.isfinite(logp_g.grad).all()
    assert (logp_g.grad[:, 3] == 0).all()


def test_ppo_policy_loss_sharding_invariance() -> None:
    gen = torch.Generator().manual_seed(0)
    logp_full = (torch.randn(4, 5, generator=gen) * 0.3 - 1.0).requires_grad_(True)
    old_logp = logp_full.detach() + torch.randn(4, 5, generator=gen) * 0.3
    advantages = torch.randn(4, 5, generator=gen)
    # response lengths 5, 2, 4, 1: the shards hold 7 and 5 tokens
    mask = (torch.arange(5) < torch.tensor([5, 2, 4, 1]).unsqueeze(1)).float()
    num_tokens = mask.sum().item()

    full_loss, _ = ppo_policy_loss(logp_full, old_logp, advantages, mask)
    full_loss.backward()

    shard_losses, shard_grads = [], []
    for rows in (slice(0, 2), slice(2, 4)):
        logp_shard = logp_full.detach()[rows].clone().requires_grad_(True)
        loss, _ = ppo_policy_loss(logp_shard, old_logp[rows], advantages[rows], mask[rows], num_tokens=num_tokens)
        loss.backward()
        shard_losses.append(loss.detach())
        shard_grads.append(logp_shard.grad)

    assert_close(shard_losses[0] + shard_losses[1], full_loss.detach(), atol=1e-6, rtol=0)
    assert_close(torch.cat(shard_grads), logp_full.grad, atol=1e-7, rtol=0)

    # Sanity: dividing by local token counts would not add up (shows the check can fail).
    local = [ppo_policy_loss(logp_full.detach()[r], old_logp[r], advantages[r], mask[r])[0] for r in (slice(0, 2), slice(2, 4))]
    assert not torch.allclose((local[0] + local[1]) / 2, full_loss.detach(), atol=1e-4)


def _value_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # last column is masked out and holds garbage
    values = torch.tensor([[0.1, 0.5, 0.5, -0.5, 1e3]])
    old_values = torch.tensor([[0.0, 0.0, 0.0, 0.0, -1e3]])
    returns = torch.tensor([[1.0, 1.0, 0.0, -1.0, 1e6]])
    mask = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)
    return values, old_values, returns, mask


def test_value_loss_clipped_golden() -> None:
    values, old_values, returns, mask = _value_batch()
    loss, clipfrac = value_loss(values, old_values, returns, mask, clip_value=0.2)
    # v_clip = old + clamp(v - old, -0.2, 0.2) = [0.1, 0.2, 0.2, -0.2]
    # err      = (v - R)^2      = [0.81, 0.25, 0.25, 0.25]
    # err_clip = (v_clip - R)^2 = [0.81, 0.64, 0.04, 0.64]
    # max = [0.81, 0.64, 0.25, 0.64], sum 2.34; 0.5 * 2.34 / 4 = 0.2925; clipped at positions 1, 3
    assert_close(loss, torch.tensor(0.2925), atol=1e-6, rtol=0)
    assert clipfrac == pytest.approx(0.5)


def test_value_loss_unclipped_golden() -> None:
    values, old_values, returns, mask = _value_batch()
    # 0.5 * (0.81 + 0.25 + 0.25 + 0.25) / 4 = 0.5 * 1.56 / 4 = 0.195
    loss, clipfrac = value_loss(values, old_values, returns, mask, clip_value=None)
    assert_close(loss, torch.tensor(0.195), atol=1e-6, rtol=0)
    assert clipfrac == 0.0
    # a clip range wider than every update leaves the loss unclipped
    loss_wide, clipfrac_wide = value_loss(values, old_values, returns, mask, clip_value=10.0)
    assert_close(loss_wide, torch.tensor(0.195), atol=1e-6, rtol=0)
    assert clipfrac_wide == 0.0


def test_entropy_from_logits() -> None:
    # uniform over V=7 -> log 7, also with a huge offset that would overflow a naive exp
    assert_close(entropy_from_logits(torch.zeros(2, 3, 7)), torch.full((2, 3), math.log(7)), atol=1e-6, rtol=0)
    assert_close(entropy_from_logits(torch.full((2, 3, 7), 1e4)), torch.full((2, 3), math.log(7)), atol=1e-5, rtol=0)
    # logits [0, log 3] -> p = [0.25, 0.75];
    # H = 0.25 * 1.3862943611 + 0.75 * 0.2876820725 = 0.5623351447
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    assert_close(entropy_from_logits(logits), torch.tensor([[0.5623351447]]), atol=1e-6, rtol=0)


def test_kl_penalty_loss_golden() -> None:
    logp = torch.tensor([[-1.0, -2.0, 1e6], [-0.1, -3.0, -1.5]], requires_grad=True)
    ref_logp = torch.tensor([[-1.5, -2.0, -1e6], [-0.4, -2.0, -1.5]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    # d = logp - ref on masked entries: 0.5, 0.0 | 0.3, -1.0, 0.0
    # k2 = 0.5 d^2: 0.125 + 0 + 0.045 + 0.5 + 0 = 0.67, / 5 = 0.134
    assert_close(kl_penalty_loss(logp, ref_logp, mask, estimator="k2"), torch.tensor(0.134), atol=1e-6, rtol=0)
    # k3: 0.1065306597 + 0 + 0.0408182207 + 0.7182818285 + 0 = 0.8656307089, / 5 = 0.1731261418
    loss = kl_penalty_loss(logp, ref_logp, mask)
    assert_close(loss, torch.tensor(0.1731261418), atol=1e-6, rtol=0)
    loss.backward()
    assert logp.grad is not None
    assert torch.isfinite(logp.grad).all() and logp.grad[0, 2] == 0


def test_explained_variance() -> None:
    returns = torch.tensor([[1.0, 2.0, 1e6], [3.0, 4.0, -1e6]])
    values = torch.tensor([[1.0, 2.0, 5.0], [3.0, 5.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]], dtype=torch.bool)
    # returns 1,2,3,4: var = 1.25; residual 0,0,0,-1: mean -0.25, var = (3*0.0625 + 0.5625)/4 = 0.1875
    # 1 - 0.1875 / 1.25 = 0.85
    assert explained_variance(values, returns, mask) == pytest.approx(0.85, abs=1e-6)
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0, abs=1e-6)
    assert math.isnan(explained_variance(values, torch.ones(2, 3), mask))


def test_truncated_is_weights_golden_and_finite_on_extremes() -> None:
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    engine = torch.tensor([[-1.5, -1.0, -0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # exp(-1 + 1.5) = exp(0.5) = 1.6487 -> capped at 1.5; exp(-2 + 1) = exp(-1) = 0.36788; exp(0) = 1; masked -> 0
    assert_close(truncated_is_weights(old, engine, mask, cap=1.5), torch.tensor([[1.5, math.exp(-1.0), 1.0, 0.0]]))
    # A log-ratio of -1e4 would underflow to exactly 0 and one of +1e4 overflow: clamped to +-20 first.
    wild = truncated_is_weights(torch.tensor([[-1e4, 0.0]]), torch.tensor([[0.0, -1e4]]), torch.ones(1, 2), cap=2.0)
    assert_close(wild, torch.tensor([[math.exp(-20.0), 2.0]]))
