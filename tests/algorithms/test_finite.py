"""Property: for finite inputs, however extreme, every KL estimator, advantage estimator, loss aggregation and policy
loss returns finite values with finite gradients.

The inputs are every (logp, old_logp, ref_logp) triple from a grid of log-probabilities down to -1e4 (-1e4 against
0 among them: a log-ratio of +-1e4 that overflows any unclamped exp), plus random draws over [-1e4, 0], under masks
with uneven lengths, gaps and empty rows.
"""

import itertools

import pytest
import torch

from clinical_rl.algorithms.advantages import ADVANTAGE_ESTIMATORS, AdvantageInputs, compute_advantages, place_scores
from clinical_rl.algorithms.kl import KL_ESTIMATORS
from clinical_rl.algorithms.losses import LOSS_AGG_MODES, POLICY_LOSSES, kl_penalty_loss

GRID = [-1e4, -1e3, -100.0, -20.0, -1.0, -1e-3, 0.0]
T = 7


def _batches() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(logp, old_logp, ref_logp), each (B, T): the grid's 343 triples as 49 rows of 7, and a random draw."""
    triples = torch.tensor(list(itertools.product(GRID, repeat=3)))  # (343, 3)
    grid = tuple(triples[:, k].reshape(-1, T) for k in range(3))
    gen = torch.Generator().manual_seed(0)
    # log-uniform magnitudes so that tiny and huge log-probabilities both occur
    rand = tuple(-(10.0 ** (torch.rand(49, T, generator=gen) * 8 - 4)) for _ in range(3))
    return [grid, rand]  # type: ignore[list-item]


def _mask(rows: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, T + 1, (rows,), generator=gen)
    lengths[0], lengths[1] = T, 0  # a full row and an empty one (a failed reward)
    mask = torch.arange(T) < lengths.unsqueeze(1)
    mask[2, 1] = False  # a gap between turns
    return mask


def _finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all())


@pytest.mark.parametrize("batch", range(2))
def test_every_estimator_loss_and_gradient_is_finite(batch: int) -> None:
    logp0, old_logp, ref_logp = _batches()[batch]
    rows = logp0.shape[0]
    mask = _mask(rows, seed=batch)
    gen = torch.Generator().manual_seed(10 + batch)
    scores = torch.where(mask.any(dim=1), torch.randn(rows, generator=gen) * 10, 0.0)
    values = torch.randn(rows, T, generator=gen) * 1e3 * mask
    groups = torch.arange(rows) // 4  # groups of four, the last ones partly empty rows
    for kl_name, kl_fn in KL_ESTIMATORS.items():
        kl = kl_fn(old_logp, ref_logp) * mask  # as make_experience: behaviour policy vs reference
        assert _finite(kl), kl_name
        for adv_name, whiten in itertools.product(ADVANTAGE_ESTIMATORS, (False, True)):
            kl_rewards = -1.0 * kl  # kl_coef 1: far more than any real run
            inputs = AdvantageInputs(
                token_rewards=place_scores(scores, mask) + kl_rewards, scores=scores, mask=mask, group_ids=groups,
                values=values, kl_rewards=kl_rewards, gamma=0.99 if ADVANTAGE_ESTIMATORS[adv_name].discounted else 1.0,
            )
            advantages, returns = compute_advantages(adv_name, inputs, whiten)
            where = f"{kl_name}/{adv_name}/whiten={whiten}"
            assert _finite(advantages) and _finite(returns), where
            assert (advantages[~mask] == 0).all(), where
            for (loss_name, loss), agg_mode, dual_clip_c in itertools.product(
                POLICY_LOSSES.items(), LOSS_AGG_MODES, (None, 3.0)
            ):
                logp = logp0.clone().requires_grad_(True)
                pg_loss, stats = loss.fn(logp, old_logp, advantages, mask, 0.2, 0.28, dual_clip_c=dual_clip_c,
                                         agg_mode=agg_mode, norm_len=T)
                kl_loss = kl_penalty_loss(logp, ref_logp, mask, kl_name, agg_mode=agg_mode, norm_len=T)
                (pg_loss + kl_loss).backward()
                case = f"{where}/{loss_name}/{agg_mode}/dual={dual_clip_c}"
                assert _finite(pg_loss) and _finite(kl_loss), case
                assert logp.grad is not None and _finite(logp.grad), case
                assert all(map(torch.isfinite, map(torch.tensor, vars(stats).values()))), case
