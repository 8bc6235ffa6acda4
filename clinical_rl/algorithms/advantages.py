"""Advantage estimators and their registry: GAE (with a critic) and the critic-free family (GRPO, Dr. GRPO,
REINFORCE++, REINFORCE++-baseline, RLOO).

Per-token tensors are (B, T) and aligned to token positions; `mask` is 1 on response tokens of samples whose reward
is valid. Outputs are always exactly 0 where mask == 0, and values stored at masked positions (padding, prompt,
tool output between turns) are never read into a result.

The critic-free estimators share one shape, OpenRLHF's (`experience_maker.py`, `compute_advantages_and_returns`):
a per-sample transform of the outcome scores within their prompt's group (none for REINFORCE++), placed on the last
response token, plus the per-token -kl_coef * KL when the KL is in the reward, then the return-to-go of that
reward. Without KL in the reward that is the transformed score on every response token. Adding an estimator is
one function and one `ADVANTAGE_ESTIMATORS` entry; the config's names, the critic and the group-size check follow.
"""

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from clinical_rl.algorithms.losses import LossAggMode, masked_whiten


@dataclass(frozen=True)
class AdvantageInputs:
    """Everything an advantage estimator may need for one batch of rollouts."""

    token_rewards: Tensor  # (B, T) score on the last response token + kl_rewards
    scores: Tensor  # (B,) scalar outcome reward per sample, already 0 for invalid samples
    mask: Tensor  # (B, T) 1 on response tokens of valid samples
    group_ids: Tensor  # (B,) long, samples from the same prompt share an id
    values: Tensor | None = None  # (B, T) critic values, required by gae
    kl_rewards: Tensor | None = None  # (B, T) -kl_coef * KL on response tokens if the KL is in the reward, else None
    gamma: float = 1.0
    lam: float = 0.95
    norm_by_std: bool = True  # grpo: divide by the group's std (verl's norm_adv_by_std_in_grpo)


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


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Return-to-go G_t = r_t + gamma * G_next over masked positions, 0 elsewhere. (B, T), (B, T) -> (B, T).

    As in `gae`, "next" is the next MASKED position, so a gap between turns is transparent.
    """
    mask = mask.bool()
    rewards = torch.where(mask, rewards, 0.0)
    if gamma == 1.0:  # every critic-free group estimator: one reverse cumulative sum instead of a loop over T
        return torch.where(mask, rewards.flip(1).cumsum(1).flip(1), 0.0)
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = torch.where(mask[:, t], rewards[:, t] + gamma * running, running)
        returns[:, t] = torch.where(mask[:, t], running, 0.0)
    return returns


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


@dataclass(frozen=True)
class _Groups:
    """Per-sample statistics of the sample's group, over the group's valid samples (mask row not empty)."""

    count: Tensor  # (B,) valid samples in the group
    centered: Tensor  # (B,) score - group mean
    std: Tensor  # (B,) unbiased group std
    spread: Tensor  # (B,) bool: the valid samples of the group do not all have the same score


def _groups(inputs: AdvantageInputs) -> _Groups:
    """Group statistics by `inputs.group_ids`; samples with an empty mask row (failed reward) are no members."""
    scores = inputs.scores
    valid = inputs.mask.bool().any(dim=1)
    _, group = torch.unique(inputs.group_ids, return_inverse=True)
    num_groups = int(group.max()) + 1 if group.numel() else 0

    def group_sum(x: Tensor) -> Tensor:
        return torch.zeros(num_groups, dtype=x.dtype, device=x.device).index_add(0, group, torch.where(valid, x, 0.0))

    def group_extreme(op: str, fill: float) -> Tensor:
        start = torch.full((num_groups,), fill, dtype=scores.dtype, device=scores.device)
        return start.scatter_reduce(0, group, torch.where(valid, scores, fill), op)

    count = group_sum(torch.ones_like(scores))
    centered = scores - (group_sum(scores) / count.clamp(min=1))[group]
    std = (group_sum(centered**2) / (count - 1).clamp(min=1)).sqrt()
    # Identical scores (incl. singleton groups) carry no signal; test it exactly because rounding in the mean would
    # otherwise leave a spurious advantage (of order 1e-2 once divided by std + eps).
    spread = group_extreme("amax", -torch.inf) > group_extreme("amin", torch.inf)
    return _Groups(count[group], centered, std[group], spread[group])


def _outcome_advantages(per_sample: Tensor, inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """Undiscounted return-to-go of per_sample (B,) on the last response token plus the KL rewards.
    -> ((B, T), (B, T)), returns = advantages. Undiscounted, as OpenRLHF sets gamma 1 for these: the score judges
    the whole answer and the group compares whole answers."""
    rewards = place_scores(per_sample, inputs.mask)
    if inputs.kl_rewards is not None:
        rewards = rewards + torch.where(inputs.mask.bool(), inputs.kl_rewards, 0.0)
    returns = discounted_returns(rewards, inputs.mask, 1.0)
    return returns, returns.clone()


@torch.no_grad()
def grpo(inputs: AdvantageInputs, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Group-relative outcome advantage (Shao et al. 2024, DeepSeekMath, sec. 4.1.2 / eq. 3). -> ((B, T), (B, T)).

    A_i = (score_i - mean(group)) / (std(group) + eps), with mean and unbiased std over the group's valid samples,
    or without the division when `inputs.norm_by_std` is False. returns = advantages.
    """
    g = _groups(inputs)
    per_sample = g.centered / (g.std + eps) if inputs.norm_by_std else g.centered
    return _outcome_advantages(torch.where(g.spread, per_sample, 0.0), inputs)


@torch.no_grad()
def group_mean_baseline(inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """A_i = score_i - mean(group), GRPO without its std: Dr. GRPO's advantage, and REINFORCE++-baseline's before
    its global whitening. -> ((B, T), (B, T)), returns = advantages.

    Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): dividing by the group's std weights prompts
    that are nearly always or nearly never solved up, a difficulty bias; its other half, the length bias of
    1/|o_i|, is the `seq-mean-token-sum-norm` aggregation its registry entry prescribes.
    REINFORCE++-baseline (Hu 2025; OpenRLHF's `reinforce_baseline`): the group mean is the baseline and the
    whitening over the whole batch (the entry's `whiten`), not the per-group std, sets the scale.
    """
    g = _groups(inputs)
    return _outcome_advantages(torch.where(g.spread, g.centered, 0.0), inputs)


@torch.no_grad()
def reinforce_plus_plus(inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """REINFORCE++ (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning LLMs"). -> ((B, T), (B, T)).

    G_t = sum_{k >= t} gamma^(k-t) r_k over the token rewards (score on the last token, -kl_coef * KL on every token
    when the KL is in the reward); returns = advantages = G. Its global batch whitening is the registry's `whiten`.
    """
    returns = discounted_returns(inputs.token_rewards, inputs.mask, inputs.gamma)
    return returns, returns.clone()


@torch.no_grad()
def rloo(inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """RLOO (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization"). -> ((B, T), (B, T)).

    A_i = score_i - mean_{j != i} score_j = n / (n - 1) * (score_i - mean(group)) over the group's n valid samples:
    the leave-one-out mean is a baseline independent of sample i, so the estimate stays unbiased. A group with
    one valid sample has no baseline and gets 0 (as does one without spread).
    """
    g = _groups(inputs)
    per_sample = g.centered * g.count / (g.count - 1).clamp(min=1)
    return _outcome_advantages(torch.where(g.spread, per_sample, 0.0), inputs)


@dataclass(frozen=True)
class AdvantageEstimator:
    """A registry entry: the function and what the run must provide for it."""

    fn: AdvantageFn
    needs_critic: bool = False  # reads critic values: the run starts a critic
    needs_groups: bool = False  # compares the samples of a prompt: n_samples_per_prompt >= 2
    discounted: bool = False  # reads algo.gamma; the others are undiscounted (gamma 1, as OpenRLHF forces)
    whiten: bool = False  # default of algo.normalize_advantages: whiten over the batch's response tokens
    loss_agg_mode: LossAggMode | None = None  # the policy-loss aggregation the method prescribes; None: none


# Names as verl's `algorithm.adv_estimator` (dr_grpo: OpenRLHF's); `algo.advantage` takes its values from here.
# grpo whitens by default as this project did before the registry (verl and OpenRLHF do not).
ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {
    "gae": AdvantageEstimator(gae, needs_critic=True, discounted=True, whiten=True),
    "grpo": AdvantageEstimator(grpo, needs_groups=True, whiten=True),
    "dr_grpo": AdvantageEstimator(group_mean_baseline, needs_groups=True, loss_agg_mode="seq-mean-token-sum-norm"),
    "reinforce_plus_plus": AdvantageEstimator(reinforce_plus_plus, discounted=True, whiten=True),
    "reinforce_plus_plus_baseline": AdvantageEstimator(group_mean_baseline, needs_groups=True, whiten=True),
    "rloo": AdvantageEstimator(rloo, needs_groups=True),
}


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    """Look up an advantage estimator's registry entry by name."""
    try:
        return ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown advantage estimator {name!r}; valid names: {sorted(ADVANTAGE_ESTIMATORS)}"
        ) from None


def compute_advantages(name: str, inputs: AdvantageInputs, whiten: bool | None = None) -> tuple[Tensor, Tensor]:
    """Advantages and returns of estimator `name`, whitened over the batch's response tokens if `whiten` (None:
    the estimator's default). -> ((B, T), (B, T)); returns are never whitened."""
    estimator = get_advantage_estimator(name)
    advantages, returns = estimator.fn(inputs)
    if estimator.whiten if whiten is None else whiten:
        advantages = masked_whiten(advantages, inputs.mask)
    return advantages, returns
