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


def make_experience(
    algo: AlgoConfig,
    batch: RolloutBatch,
    results: list[RewardResult],
    old_logp: Tensor | None,
    ref_logp: Tensor | None,
    values: Tensor | None,
    max_failed_frac: float,
) -> Experience:
    """Scores with status -> masked, KL-shaped token rewards -> advantages and returns.

    `old_logp` None (a single on-policy pass): the KL is measured from the engine's logprobs of the same tokens;
    `ref_logp` None (no KL penalty): the KL is 0.
    """
    reward_ok = torch.tensor([r.status == "ok" for r in results])
    failed_frac = 1.0 - reward_ok.float().mean().item()
    if failed_frac > max_failed_frac:
        errors = sorted({str(r.details.get("error", r.status)) for r in results if r.status != "ok"})
        raise RewardFailureError(
            f"{failed_frac:.0%} of samples have no valid reward (reward.max_failed_frac={max_failed_frac}): {errors[:3]}"
        )
    scores = torch.tensor([r.reward if r.status == "ok" else 0.0 for r in results], dtype=torch.float32)
    mask = batch.response_mask * reward_ok.unsqueeze(1)
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
        reward_ok=reward_ok,
        old_logp=old_logp,
        ref_logp=ref_logp,
        values=inputs.values,
        advantages=advantages,
        returns=returns,
        extras={"kl": kl.sum(dim=1), **_reward_parts(results)},
    )


def _reward_parts(results: list[RewardResult]) -> dict[str, Tensor]:
    """Numeric details of the results (e.g. correct, format_ok); NaN where a result does not report one."""
    keys = {k for r in results for k, v in r.details.items() if isinstance(v, (int, float))}
    return {
        k: torch.tensor([float(v) if isinstance(v := r.details.get(k), (int, float)) else math.nan for r in results])
        for k in sorted(keys)
    }


def experience_metrics(exp: Experience, statuses: list[str]) -> dict[str, float]:
    """reward/*, kl/*, adv/*, rollout/* and critic/explained_variance for one step."""
    ok = exp.reward_ok
    valid_scores = exp.scores[ok]
    lengths = exp.rollout.response_lengths
    m: dict[str, float] = {
        "reward/mean": valid_scores.mean().item() if ok.any() else math.nan,
        "reward/std": valid_scores.std().item() if ok.sum() > 1 else math.nan,
        "reward/failed_frac": sum(s == "error" for s in statuses) / len(statuses),
        "reward/timeout_frac": sum(s == "timeout" for s in statuses) / len(statuses),
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
    for key, part in exp.extras.items():
        reported = part[~part.isnan()]
        if key == "kl" or not len(reported):  # a part no sample reported this step is absent, not NaN
            continue
        if key.endswith("latency_s"):  # tails matter for a verifier behind a network
            m[f"reward/{key}_p50"] = reported.quantile(0.5).item()
            m[f"reward/{key}_p99"] = reported.quantile(0.99).item()
        else:
            m[f"reward/{key}"] = reported.mean().item()
    if exp.values is not None:
        m["critic/explained_variance"] = explained_variance(exp.values, exp.returns, exp.mask)
    return m
