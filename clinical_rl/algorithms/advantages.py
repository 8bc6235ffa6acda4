"""Advantage estimators: token-level GAE for PPO and outcome-level group-relative advantages for GRPO.

Per-token tensors are (B, T) and aligned to token positions; `mask` is 1 on response tokens of
samples whose reward is valid. Outputs are always exactly 0 where mask == 0, and values stored at
masked positions (padding, prompt, tool output between turns) are never read into a result.
"""

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


@dataclass(frozen=True)
class AdvantageInputs:
    """Everything an advantage estimator may need for one batch of rollouts."""

    token_rewards: Tensor  # (B, T) -beta*KL on response tokens (if KL in reward) + score on the last one
    scores: Tensor  # (B,) scalar outcome reward per sample, already 0 for invalid samples
    mask: Tensor  # (B, T) 1 on response tokens of valid samples
    group_ids: Tensor  # (B,) long, samples from the same prompt share an id
    values: Tensor | None = None  # (B, T) critic values, required by gae
    gamma: float = 1.0
    lam: float = 0.95


AdvantageFn = Callable[[AdvantageInputs], tuple[Tensor, Tensor]]


def place_scores(scores: Tensor, mask: Tensor) -> Tensor:
    """Put scores[b] on the last masked position of row b, 0 elsewhere. (B,), (B, T) -> (B, T)."""
    mask = mask.bool()
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    # Masked positions carry index+1 and the rest 0, so the row max is the last masked position.
    last = (mask * positions).argmax(dim=1, keepdim=True)
    has_tokens = mask.any(dim=1, keepdim=True)
    placed = torch.where(has_tokens, scores.unsqueeze(1), 0.0)
    out = torch.zeros(mask.shape, dtype=placed.dtype, device=placed.device)
    return out.scatter(1, last, placed)


def shape_token_rewards(
    scores: Tensor, mask: Tensor, kl: Tensor | None = None, kl_coef: float = 0.0
) -> Tensor:
    """Per-token reward: outcome score on the last response token minus kl_coef * KL on every
    response token (the "KL in reward" of Ouyang et al. 2022). (B,), (B, T), (B, T) -> (B, T).
    """
    rewards = place_scores(scores, mask)
    if kl is None:
        return rewards
    return rewards - kl_coef * torch.where(mask.bool(), kl, 0.0)


@torch.no_grad()
def gae(inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """Generalised Advantage Estimation (Schulman et al. 2016, eq. 11-16). -> ((B, T), (B, T)).

    delta_t = r_t + gamma * V_next - V_t,  A_t = delta_t + gamma * lam * A_next, where "next" is
    the next MASKED position: unmasked positions are skipped without breaking the recursion, so a
    gap between turns is transparent and the value after the last response token is 0 (terminal).
    returns = advantages + values on masked positions.
    """
    if inputs.values is None:
        raise ValueError("gae needs critic values: AdvantageInputs.values is None")
    values, rewards = inputs.values, inputs.token_rewards
    mask = inputs.mask.bool()
    advantages = torch.zeros_like(values)
    lastgaelam = torch.zeros_like(values[:, 0])
    nextvalues = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + inputs.gamma * nextvalues - values[:, t]
        gaelam = delta + inputs.gamma * inputs.lam * lastgaelam
        lastgaelam = torch.where(m, gaelam, lastgaelam)
        nextvalues = torch.where(m, values[:, t], nextvalues)
        advantages[:, t] = torch.where(m, gaelam, 0.0)
    returns = torch.where(mask, advantages + values, 0.0)
    return advantages, returns


@torch.no_grad()
def grpo(inputs: AdvantageInputs, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Group-relative outcome advantage (Shao et al. 2024, DeepSeekMath, sec. 4.1.2 / eq. 3).

    A_i = (score_i - mean(group)) / (std(group) + eps), with mean and unbiased std over the group's
    valid samples (mask row not empty), broadcast to every masked token. -> ((B, T), (B, T)),
    returns = advantages.
    """
    mask = inputs.mask.bool()
    valid = mask.any(dim=1)
    scores = inputs.scores[valid]
    unique_ids, group = torch.unique(inputs.group_ids, return_inverse=True)
    group = group[valid]
    num_groups = unique_ids.numel()

    def group_sum(x: Tensor) -> Tensor:
        return torch.zeros(num_groups, dtype=x.dtype, device=x.device).index_add(0, group, x)

    def group_reduce(x: Tensor, op: str) -> Tensor:
        empty = torch.zeros(num_groups, dtype=x.dtype, device=x.device)
        return empty.scatter_reduce(0, group, x, op, include_self=False)

    count = group_sum(torch.ones_like(scores))
    centered = scores - (group_sum(scores) / count)[group]
    std = (group_sum(centered**2) / (count - 1).clamp(min=1)).sqrt()
    # Identical scores (incl. singleton groups) carry no signal; test it exactly because
    # rounding in the mean would otherwise turn into a spurious advantage of order 1e-2 via eps.
    spread = (group_reduce(scores, "amax") > group_reduce(scores, "amin"))[group]
    per_sample = torch.where(spread, centered / (std[group] + eps), 0.0)

    sample_adv = torch.zeros_like(inputs.scores).masked_scatter(valid, per_sample)
    advantages = torch.where(mask, sample_adv.unsqueeze(1), 0.0)
    return advantages, advantages.clone()


ADVANTAGE_ESTIMATORS: dict[str, AdvantageFn] = {"gae": gae, "grpo": grpo}


def get_advantage_estimator(name: str) -> AdvantageFn:
    """Look up an advantage estimator by name ("gae" or "grpo")."""
    try:
        return ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown advantage estimator {name!r}; valid names: {sorted(ADVANTAGE_ESTIMATORS)}"
        ) from None
