"""From a scored rollout batch to `Experience`: reward masking, KL shaping, advantages, and their metrics.

Runs in the driver on (B, T) tensors that are small next to the models; the math itself is in `algorithms/`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from clinical_rl.algorithms.advantages import AdvantageInputs, compute_advantages, shape_token_rewards
from clinical_rl.algorithms.kl import get_kl_estimator
from clinical_rl.algorithms.losses import explained_variance, masked_mean
from clinical_rl.rl.batch import Experience, RolloutBatch
from clinical_rl.config import AlgoConfig
from clinical_rl.rewards.base import RewardResult


class RewardFailureError(RuntimeError):
    """Too many samples of a step had no valid reward: training on the rest would hide a broken verifier."""


def check_reward_failures(results: list[RewardResult], max_failed_frac: float) -> None:
    """Raises RewardFailureError when more than `max_failed_frac` of `results` have a status other than ok (the
    message gives the fraction and up to three of their errors); an empty list passes."""
    failed = [r for r in results if r.status != "ok"]
    failed_frac = len(failed) / len(results) if results else 0.0
    if failed_frac > max_failed_frac:
        errors = sorted({str(r.details.get("error", r.status)) for r in failed})
        raise RewardFailureError(
            f"{failed_frac:.0%} of samples have no valid reward (reward.max_failed_frac={max_failed_frac}): {errors[:3]}"
        )


def make_experience(
    algo: AlgoConfig,
    batch: RolloutBatch,
    results: list[RewardResult],
    old_logp: Tensor | None,
    ref_logp: Tensor | None,
    values: Tensor | None,
    max_failed_frac: float,
    max_new_tokens: int | None = None,
) -> Experience:
    """Scores with status -> overlong shaping -> masked, KL-shaped token rewards -> advantages and returns.

    `old_logp` None (a single on-policy pass): the KL is measured from the engine's logprobs of the same tokens;
    `ref_logp` None (no KL penalty): the KL is 0. `max_new_tokens`: the rollout's length cap, needed with
    `algo.overlong`.

    Raises RewardFailureError above `max_failed_frac` failed rewards.
    """
    check_reward_failures(results, max_failed_frac)
    reward_ok = torch.tensor([r.status == "ok" for r in results])
    scores = torch.tensor([r.reward if r.status == "ok" else 0.0 for r in results], dtype=torch.float32)
    overlong, trained = _overlong(algo, batch, reward_ok, max_new_tokens)
    scores = scores - overlong
    mask = batch.response_mask * trained.unsqueeze(1)
    behaviour = batch.rollout_logp if old_logp is None else old_logp
    kl = torch.zeros_like(mask) if ref_logp is None else get_kl_estimator(algo.kl_estimator)(behaviour, ref_logp) * mask
    kl_in_reward = algo.kl_in == "reward"
    inputs = AdvantageInputs(
        token_rewards=shape_token_rewards(scores, mask, kl if kl_in_reward else None, algo.kl_coef),
        scores=scores,
        mask=mask,
        group_ids=batch.group_ids,
        values=None if values is None else values * mask,
        kl_rewards=-algo.kl_coef * kl if kl_in_reward else None,
        gamma=algo.gamma,
        lam=algo.lam,
        norm_by_std=algo.grpo_norm_by_std,
    )
    advantages, returns = compute_advantages(algo.advantage, inputs, algo.normalize_advantages)
    return Experience(
        rollout=batch,
        scores=scores,
        reward_ok=trained,
        old_logp=old_logp,
        ref_logp=ref_logp,
        values=inputs.values,
        advantages=advantages,
        returns=returns,
        extras={"kl": kl.sum(dim=1), **({"overlong_penalty": overlong} if algo.overlong is not None else {})},
    )


def _overlong(algo: AlgoConfig, batch: RolloutBatch, reward_ok: Tensor, max_new_tokens: int | None
              ) -> tuple[Tensor, Tensor]:
    """`algo.overlong`'s penalty per sample (B,) and the samples left in the loss (B,) bool."""
    if algo.overlong is None:
        return torch.zeros(len(batch)), reward_ok
    if max_new_tokens is None:
        raise ValueError("algo.overlong needs the rollout's max_new_tokens")
    o = algo.overlong
    penalty = overlong_penalty(batch.response_lengths, max_new_tokens, o.buffer_tokens, o.penalty) * reward_ok
    return penalty, reward_ok & ~batch.truncated if o.mask_truncated else reward_ok


def overlong_penalty(lengths: Tensor, max_new_tokens: int, buffer_tokens: int, penalty: float) -> Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), as an amount to subtract: 0 up to
    L_max - L_cache tokens, then rising linearly to `penalty` at L_max = `max_new_tokens` (L_cache =
    `buffer_tokens`; 0 turns it off). `lengths`: (B,) response tokens; returns (B,)."""
    if buffer_tokens == 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    start = max_new_tokens - buffer_tokens
    return penalty * ((lengths.float() - start) / buffer_tokens).clamp(0.0, 1.0)


def experience_metrics(exp: Experience) -> dict[str, float]:
    """kl/*, adv/*, rollout/* and critic/explained_variance of the trained batch for one step (the reward side over
    every scored sample is `reward_metrics.reward_metrics`)."""
    ok = exp.reward_ok
    lengths = exp.rollout.response_lengths
    m: dict[str, float] = {
        "rollout/samples": float(len(exp.rollout)),
        "kl/mean": exp.extras["kl"][ok].mean().item() if ok.any() else math.nan,
        "adv/mean": masked_mean(exp.advantages, exp.mask).item(),
        "adv/returns_mean": masked_mean(exp.returns, exp.mask).item(),
        "rollout/response_length_mean": lengths.mean().item(),
        "rollout/response_length_max": lengths.max().item(),
        "rollout/truncated_frac": exp.rollout.truncated.float().mean().item(),
        # E[-log p(token)] over sampled tokens estimates the policy's entropy without a full-vocabulary pass.
        "rollout/entropy_mc": masked_mean(-exp.rollout.rollout_logp, exp.rollout.response_mask).item(),
    }
    if exp.old_logp is not None:  # else the policy trainer reports it from its own pass
        # Engine vs trainer logprob of the same tokens: ~0 when weight sync and numerics agree.
        m["rollout/logp_mismatch"] = masked_mean((exp.old_logp - exp.rollout.rollout_logp).abs(),
                                                 exp.rollout.response_mask).item()
    if "overlong_penalty" in exp.extras and ok.any():
        m["reward/overlong_penalty"] = exp.extras["overlong_penalty"][ok].mean().item()
    if exp.values is not None:
        m["critic/explained_variance"] = explained_variance(exp.values, exp.returns, exp.mask)
    return m
