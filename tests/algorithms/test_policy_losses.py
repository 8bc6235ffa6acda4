"""Golden numbers for the loss aggregations, dual-clip PPO, GSPO and the policy-loss registry (plain PPO, clip-higher
and the other losses: test_losses.py)."""

import math

import pytest
import torch
from torch.testing import assert_close

from clinical_rl.algorithms.losses import (
    LOSS_AGG_MODES,
    POLICY_LOSSES,
    aggregate_loss,
    get_policy_loss,
    gspo_policy_loss,
    kl_penalty_loss,
    ppo_policy_loss,
)
from clinical_rl.config import PolicyConfig


def _uneven() -> tuple[torch.Tensor, torch.Tensor]:
    # rows of 3, 1 and 0 tokens; masked positions hold garbage that must not be read
    x = torch.tensor([[1.0, 2.0, 3.0, 1e6], [4.0, -1e6, 1e6, 1e6], [1e6, 1e6, 1e6, 1e6]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    return x, mask


@pytest.mark.parametrize(("mode", "expected"), [
    ("token-mean", 2.5),  # (1 + 2 + 3 + 4) / 4 tokens
    ("seq-mean-token-mean", 3.0),  # (6/3 + 4/1) / 2 rows (the empty row is not a sequence)
    ("seq-mean-token-sum-norm", 1.25),  # (6/4 + 4/4) / 2 rows with the constant length 4
])
def test_aggregation_golden(mode: str, expected: float) -> None:
    x, mask = _uneven()
    assert_close(aggregate_loss(x, mask, mode, norm_len=4), torch.tensor(expected), atol=1e-6, rtol=0)


def test_aggregation_global_counts_and_errors() -> None:
    x, mask = _uneven()
    assert_close(aggregate_loss(x, mask, "token-mean", num_tokens=10), torch.tensor(1.0))  # 10 / 10
    assert_close(aggregate_loss(x, mask, "seq-mean-token-mean", num_seqs=6), torch.tensor(1.0))  # (2 + 4) / 6
    assert aggregate_loss(x, torch.zeros_like(mask), "seq-mean-token-mean").item() == 0.0
    with pytest.raises(ValueError, match="norm_len"):
        aggregate_loss(x, mask, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="'token-mean', 'seq-mean-token-mean', 'seq-mean-token-sum-norm'"):
        aggregate_loss(x, mask, "seq-sum")


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("loss_mode", sorted(POLICY_LOSSES))
def test_sharded_losses_add_up_with_global_counts(mode: str, loss_mode: str) -> None:
    """Two shards given the minibatch's token and sequence counts sum to the full loss and gradient."""
    gen = torch.Generator().manual_seed(0)
    logp_full = (torch.randn(4, 5, generator=gen) * 0.3 - 1.0).requires_grad_(True)
    old_logp = logp_full.detach() + torch.randn(4, 5, generator=gen) * 0.3
    advantages = torch.randn(4, 5, generator=gen)
    mask = torch.arange(5) < torch.tensor([5, 2, 4, 0]).unsqueeze(1)  # one empty row
    loss_fn = get_policy_loss(loss_mode).fn
    full, _ = loss_fn(logp_full, old_logp, advantages, mask, agg_mode=mode, norm_len=5)
    full.backward()
    # each shard is given the minibatch's 5 + 2 + 4 = 11 tokens in 3 non-empty rows
    total, grads = torch.zeros(()), []
    for rows in (slice(0, 2), slice(2, 4)):
        shard = logp_full.detach()[rows].clone().requires_grad_(True)
        loss, _ = loss_fn(shard, old_logp[rows], advantages[rows], mask[rows], num_tokens=11.0, num_seqs=3.0,
                          agg_mode=mode, norm_len=5)
        loss.backward()
        total, grads = total + loss.detach(), [*grads, shard.grad]
    assert_close(total, full.detach(), atol=1e-6, rtol=0)
    assert_close(torch.cat(grads), logp_full.grad, atol=1e-7, rtol=0)


def test_dual_clip_caps_negative_advantage_loss() -> None:
    # Row 0: A = +1 with ratios 1.1, 1.5, 0.5; row 1: A = -2 with ratios 0.9, 0.5, 1.5 (test_losses.py's batch).
    # Clipped surrogate per token: -1.1, -1.2, -0.5 | 1.8, 1.6, 3.0. Dual clip c = 1.2 caps A < 0 tokens at
    # c * |A| = 2.4: only 3.0 -> 2.4. Token mean (-1.1 - 1.2 - 0.5 + 1.8 + 1.6 + 2.4) / 6 = 3.0 / 6 = 0.5.
    ratios = torch.tensor([[1.1, 1.5, 0.5], [0.9, 0.5, 1.5]])
    old_logp = torch.full((2, 3), -1.0)
    logp = (old_logp + ratios.log()).requires_grad_(True)
    advantages = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]])
    loss, stats = ppo_policy_loss(logp, old_logp, advantages, torch.ones(2, 3), dual_clip_c=1.2)
    assert_close(loss, torch.tensor(0.5), atol=1e-6, rtol=0)
    assert stats.dual_clipfrac == pytest.approx(1 / 6) and stats.clipfrac == pytest.approx(2 / 6)
    loss.backward()
    assert logp.grad is not None
    # The capped token has no gradient; the unclipped A = -2, r = 0.9 token has d/dlogp (2 r) / 6 = 0.3.
    assert logp.grad[1, 2] == 0 and logp.grad[1, 0].item() == pytest.approx(0.3, abs=1e-6)
    # A cap above every loss (c = 3: 6.0) changes nothing: 3.6 / 6 = 0.6 as without it.
    assert_close(ppo_policy_loss(logp, old_logp, advantages, torch.ones(2, 3), dual_clip_c=3.0)[0],
                 torch.tensor(0.6), atol=1e-6, rtol=0)


def _gspo_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # Row 0: 3 tokens with log-ratios 0.1, -0.2, 0.4 and A = +1; row 1: one token with log-ratio -0.5 and A = -1,
    # then padding whose log-ratio would be garbage.
    old_logp = torch.full((2, 4), -1.0)
    logp = (old_logp + torch.tensor([[0.1, -0.2, 0.4, 50.0], [-0.5, 80.0, -90.0, 0.0]])).requires_grad_(True)
    advantages = torch.tensor([[1.0, 1.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    return logp, old_logp, advantages, mask


def test_gspo_golden_sequence_ratio_and_gradient() -> None:
    logp, old_logp, advantages, mask = _gspo_batch()
    loss, stats = gspo_policy_loss(logp, old_logp, advantages, mask)
    # s_0 = exp((0.1 - 0.2 + 0.4) / 3) = exp(0.1) = 1.10517092, inside [0.8, 1.2]: each token -1 * 1.10517092
    # s_1 = exp(-0.5) = 0.60653066 < 0.8, A < 0: max(-(-1) * 0.6065, -(-1) * 0.8) = 0.8 (clipped)
    # seq-mean-token-mean (GSPO's default): (-1.10517092 + 0.8) / 2 = -0.15258546
    assert_close(loss, torch.tensor(-0.15258546), atol=1e-6, rtol=0)
    # one of the four tokens clipped; ratio per token 1.10517092 x 3 and 0.60653066: mean 0.98051085
    assert stats.clipfrac == pytest.approx(0.25) and stats.ratio_mean == pytest.approx(0.98051085, abs=1e-6)
    loss.backward()
    assert logp.grad is not None
    # GSPO's gradient: d/dlogp_0t of -(1/2) * A * s_0 = -(1/2) * s_0 * (1/3) = -0.18419515 on each of row 0's
    # tokens (the geometric mean spreads it evenly); row 1 is clipped and padding never gets any.
    assert_close(logp.grad, torch.tensor([[-0.18419515] * 3 + [0.0], [0.0] * 4]), atol=1e-6, rtol=0)
    # token-mean instead weighs row 0's three tokens: (3 * -1.10517092 + 0.8) / 4 = -0.62887819
    token_mean, _ = gspo_policy_loss(logp, old_logp, advantages, mask, agg_mode="token-mean")
    assert_close(token_mean, torch.tensor(-0.62887819), atol=1e-6, rtol=0)


def test_gspo_equals_ppo_on_one_token_answers() -> None:
    # With one token per answer the sequence ratio is the token ratio: both losses and gradients agree.
    gen = torch.Generator().manual_seed(1)
    logp = (torch.randn(6, 1, generator=gen) - 1.0).requires_grad_(True)
    old_logp = logp.detach() + 0.3 * torch.randn(6, 1, generator=gen)
    advantages, mask = torch.randn(6, 1, generator=gen), torch.ones(6, 1)
    gspo, _ = gspo_policy_loss(logp, old_logp, advantages, mask, 0.1, 0.15)
    (gspo_grad,) = torch.autograd.grad(gspo, logp)
    ppo, _ = ppo_policy_loss(logp, old_logp, advantages, mask, 0.1, 0.15, agg_mode="seq-mean-token-mean")
    (ppo_grad,) = torch.autograd.grad(ppo, logp)
    assert_close(gspo, ppo, atol=1e-6, rtol=0)
    assert_close(gspo_grad, ppo_grad, atol=1e-6, rtol=0)


def test_kl_penalty_loss_follows_the_policy_aggregation() -> None:
    logp = torch.tensor([[-1.0, -2.0, 5.0], [-0.1, 9.0, 9.0]])
    ref_logp = torch.tensor([[-1.5, -2.5, -5.0], [-0.4, -9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    # k1 = logp - ref: 0.5, 0.5 | 0.3; seq-mean-token-mean = (0.5 + 0.3) / 2 = 0.4; token-mean 1.3 / 3
    assert_close(kl_penalty_loss(logp, ref_logp, mask, "k1", agg_mode="seq-mean-token-mean"), torch.tensor(0.4))
    assert_close(kl_penalty_loss(logp, ref_logp, mask, "k1"), torch.tensor(1.3 / 3))


def test_k3_overflow_from_the_issue_is_finite() -> None:
    # logp - ref = -94.5 on the first token: k3 = exp(94.5) - 1 - 94.5 overflowed to inf with a -inf gradient.
    # The log-ratio is clamped to -10: k3 = exp(10) - 1 - 10 = 22015.4657948; the second token's is 0.
    logp = torch.tensor([[-95.0, -0.1]], requires_grad=True)
    loss = kl_penalty_loss(logp, torch.tensor([[-0.5, -0.1]]), torch.ones(1, 2), "k3")
    assert loss.item() == pytest.approx((math.exp(10.0) - 11.0) / 2, rel=1e-6)
    loss.backward()
    assert logp.grad is not None and torch.isfinite(logp.grad).all()


def test_policy_loss_registry_feeds_the_config() -> None:
    assert get_policy_loss("vanilla").fn is ppo_policy_loss and get_policy_loss("gspo").fn is gspo_policy_loss
    assert get_policy_loss("gspo").loss_agg_mode == "seq-mean-token-mean"
    with pytest.raises(ValueError, match="'gspo', 'vanilla'"):
        get_policy_loss("clip_cov")
    assert PolicyConfig(loss_mode="gspo").loss_mode == "gspo"
    with pytest.raises(ValueError, match="loss_mode"):
        PolicyConfig(loss_mode="clip_cov")
    with pytest.raises(ValueError, match="dual_clip_c"):
        PolicyConfig(dual_clip_c=1.0)
