"""Masked reductions and the PPO / GRPO training losses.

Every per-token tensor is (B, T) and aligned to token positions; `mask` is a (B, T) bool or 0/1
float tensor that is 1 on positions that count. Masked-out positions are selected away with
`torch.where` rather than multiplied by 0, so padding holding inf or garbage cannot turn into
NaN in either the forward value or the gradient.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from clinical_rl.algorithms.kl import get_kl_estimator


def masked_sum(x: Tensor, mask: Tensor) -> Tensor:
    """Sum of x over positions where mask is set. (B, T), (B, T) -> scalar."""
    return torch.where(mask.bool(), x, 0.0).sum()


def masked_mean(x: Tensor, mask: Tensor, num_tokens: float | None = None) -> Tensor:
    """Token-level mean of x over the mask. (B, T), (B, T) -> scalar.

    `num_tokens` overrides the denominator: data-parallel shards pass the GLOBAL token count so
    that the per-shard losses (and their gradients) add up to the full-batch mean. An empty mask
    yields 0.0 instead of NaN.
    """
    total = masked_sum(x, mask)
    if num_tokens is not None:
        return total / max(float(num_tokens), 1.0)
    return total / mask.bool().sum().clamp(min=1)


def _masked_var(x: Tensor, mask: Tensor, unbiased: bool) -> Tensor:
    """Variance of x over the mask; 0 when there are too few entries to estimate it."""
    mask = mask.bool()
    centered = torch.where(mask, x - masked_mean(x, mask), 0.0)
    count = mask.sum() - (1 if unbiased else 0)
    return (centered**2).sum() / count.clamp(min=1)


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over masked entries, 0 elsewhere. (B, T), (B, T) -> (B, T).

    Uses the unbiased (torch default) variance; `eps` is added to the variance.
    """
    mask = mask.bool()
    whitened = (x - masked_mean(x, mask)) * torch.rsqrt(_masked_var(x, mask, unbiased=True) + eps)
    return torch.where(mask, whitened, 0.0)


@dataclass(frozen=True)
class PolicyLossStats:
    """Detached diagnostics of one policy-loss call, as means over this call's own mask."""

    clipfrac: float
    approx_kl: float
    ratio_mean: float


def ppo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    num_tokens: float | None = None,
) -> tuple[Tensor, PolicyLossStats]:
    """Clipped surrogate objective (Schulman et al. 2017, eq. 7), token-mean, as a loss to minimise.

    All inputs (B, T). loss_t = max(-A * ratio, -A * clamp(ratio, 1 - clip_eps_low, 1 + clip_eps_high)).
    Asymmetric bounds allow "clip-higher" (DAPO, Yu et al. 2025). GRPO (Shao et al. 2024, eq. 3)
    uses this same surrogate with group-relative advantages.
    """
    mask = mask.bool()
    # Zero the log-ratio on padding before exp so garbage there cannot overflow into inf/NaN grads.
    log_ratio = torch.where(mask, logp - old_logp, 0.0)
    advantages = torch.where(mask, advantages, 0.0)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask, num_tokens)

    with torch.no_grad():
        stats = PolicyLossStats(
            clipfrac=masked_mean((clipped > unclipped).float(), mask).item(),
            approx_kl=masked_mean((ratio - 1.0) - log_ratio, mask).item(),
            ratio_mean=masked_mean(ratio, mask).item(),
        )
    return loss, stats


def truncated_is_weights(old_logp: Tensor, rollout_logp: Tensor, mask: Tensor, cap: float) -> Tensor:
    """min(pi_trainer(token) / pi_engine(token), cap) on response tokens, 0 elsewhere. (B, T) each -> (B, T).

    The engine samples with its own numerics (bf16 kernels, another attention) and the trainer scores the same
    tokens differently; weighting each token's policy loss by this ratio corrects the gradient for that mismatch
    (truncated importance sampling: Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL
    Training"; TRL's `vllm_importance_sampling_cap`, OpenRLHF's vLLM IS correction). The log-ratio is clamped to
    +-20 first so that no finite input overflows.
    """
    log_ratio = torch.where(mask.bool(), old_logp - rollout_logp, 0.0).clamp(-20.0, 20.0)
    return torch.exp(log_ratio).clamp(max=cap) * mask


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_value: float | None = 0.2,
    num_tokens: float | None = None,
) -> tuple[Tensor, float]:
    """Critic loss, PPO2-style clipped around the rollout values. All inputs (B, T).

    Returns (0.5 * token-mean of max(unclipped, clipped) squared error, clipfrac); with
    clip_value None it is plain 0.5 * MSE and clipfrac is 0.0.
    """
    mask = mask.bool()
    err = (values - returns) ** 2
    if clip_value is None:
        return 0.5 * masked_mean(err, mask, num_tokens), 0.0
    v_clip = old_values + torch.clamp(values - old_values, -clip_value, clip_value)
    err_clip = (v_clip - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clip), mask, num_tokens)
    with torch.no_grad():
        clipfrac = masked_mean((err_clip > err).float(), mask).item()
    return loss, clipfrac


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dim. (B, T, V) -> (B, T).

    H = logsumexp(z) - sum_v p_v z_v, which never takes log of an underflowed probability.
    """
    # H is shift-invariant; subtracting the max first avoids cancelling two large numbers in
    # float32 (e.g. logits around 1e4 would otherwise lose ~1e-3 of precision).
    shifted = logits - logits.amax(dim=-1, keepdim=True).detach()
    probs = torch.softmax(shifted, dim=-1)
    return torch.logsumexp(shifted, dim=-1) - (probs * shifted).sum(dim=-1)


def kl_penalty_loss(
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    estimator: str = "k3",
    num_tokens: float | None = None,
) -> Tensor:
    """Token-mean KL(pi || pi_ref) penalty for "KL in loss" (GRPO, Shao et al. 2024, eq. 3 uses k3).

    (B, T) inputs -> scalar.
    """
    mask = mask.bool()
    # Equal zeros on padding give a KL of exactly 0 there, with zero gradient, for every estimator.
    logp = torch.where(mask, logp, 0.0)
    ref_logp = torch.where(mask, ref_logp, 0.0)
    return masked_mean(get_kl_estimator(estimator)(logp, ref_logp), mask, num_tokens)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var[returns - values] / Var[returns] over masked entries; nan if Var[returns] == 0.

    (B, T) inputs -> float. 1 is a perfect critic, 0 no better than predicting the mean.
    """
    with torch.no_grad():
        var_returns = _masked_var(returns, mask, unbiased=False).item()
        if var_returns == 0.0:
            return math.nan
        var_residual = _masked_var(returns - values, mask, unbiased=False).item()
    return 1.0 - var_residual / var_returns
