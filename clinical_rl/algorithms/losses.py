"""Masked reductions, loss aggregation, the policy losses (PPO clip, dual-clip, GSPO) and their registry, and the
value, entropy and KL-penalty losses.

Every per-token tensor is (B, T) and aligned to token positions; `mask` is a (B, T) bool or 0/1
float tensor that is 1 on positions that count. Masked-out positions are selected away with
`torch.where` rather than multiplied by 0, so padding holding inf or garbage cannot turn into
NaN in either the forward value or the gradient.
"""

import math
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

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


LossAggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
LOSS_AGG_MODES: tuple[str, ...] = get_args(LossAggMode)

# exp() of a policy log-ratio overflows float32 above ~88; verl clamps it to +-20 (`compute_policy_loss_vanilla`).
POLICY_LOG_RATIO_CLAMP = 20.0


def aggregate_loss(
    x: Tensor,
    mask: Tensor,
    agg_mode: str = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    norm_len: float | None = None,
) -> Tensor:
    """Reduce a per-token loss to the scalar to minimise. (B, T), (B, T) -> scalar. Modes named as verl's
    `loss_agg_mode`; with n_i the masked tokens of row i, S the rows with n_i > 0 and l_it the loss:

        token-mean               sum_{i,t} l_it / sum_i n_i         every token weighs the same (DAPO's token-level
                                                                    loss, Yu et al. 2025: long answers not diluted)
        seq-mean-token-mean      (1/|S|) sum_i (sum_t l_it) / n_i   every answer weighs the same (GRPO as written in
                                                                    Shao et al. 2024, eq. 3; GSPO)
        seq-mean-token-sum-norm  (1/|S|) sum_i (sum_t l_it) / L     Dr. GRPO (Liu et al. 2025): the
                                                                    constant L replaces 1/n_i, whose length bias
                                                                    favours short right and long wrong answers

    verl's seq-mean-token-sum-norm sums over rows instead of averaging and takes L as the batch's padded width;
    here L = `norm_len` (required for that mode) stays constant through training, as Dr. GRPO's MAX_TOKENS does.
    `num_tokens` (token-mean) and `num_seqs` (seq-mean-*) override the denominators: data-parallel shards and
    micro-batches pass the GLOBAL counts of the minibatch so that their losses (and gradients) add up to its loss.
    An empty mask yields 0.0.
    """
    mask = mask.bool()
    if agg_mode == "token-mean":
        return masked_mean(x, mask, num_tokens)
    row_sums = torch.where(mask, x, 0.0).sum(dim=1)
    lengths = mask.sum(dim=1)
    if agg_mode == "seq-mean-token-mean":
        per_seq = row_sums / lengths.clamp(min=1)
    elif agg_mode == "seq-mean-token-sum-norm":
        if norm_len is None:
            raise ValueError("loss aggregation seq-mean-token-sum-norm needs norm_len (a constant, e.g. the "
                             "response length cap)")
        per_seq = row_sums / norm_len
    else:
        raise ValueError(f"unknown loss aggregation {agg_mode!r}; valid names: {list(LOSS_AGG_MODES)}")
    seqs = float(num_seqs) if num_seqs is not None else float((lengths > 0).sum())
    return per_seq.sum() / max(seqs, 1.0)


@dataclass(frozen=True)
class PolicyLossStats:
    """Detached diagnostics of one policy-loss call, as token means over this call's own mask."""

    clipfrac: float  # tokens whose ratio clip was active
    approx_kl: float  # k3 estimate of KL(pi_old || pi) per token
    ratio_mean: float  # the importance ratio the loss used (per token; GSPO: its sequence's)
    dual_clipfrac: float  # tokens whose loss the dual clip capped at c * |A|


def _clipped_surrogate(
    ratio: Tensor, advantages: Tensor, clip_eps_low: float, clip_eps_high: float, dual_clip_c: float | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token clipped surrogate loss, with optional dual clip. (B, T) each -> loss, clipped, dual-clipped.

    loss = max(-A * r, -A * clamp(r, 1 - eps_low, 1 + eps_high))        (Schulman et al. 2017, eq. 7, negated)
    dual clip, A < 0: loss = min(loss, -c * A) = min(loss, c * |A|)     (Ye et al. 2020, dual-clip PPO, negated)
    For A < 0 the clipped surrogate grows with r without bound; the dual clip caps it, so one token the policy now
    strongly prefers cannot dominate the minibatch's gradient (verl `clip_ratio_c`).
    """
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
    loss = torch.maximum(unclipped, clipped)
    is_clipped = clipped > unclipped
    if dual_clip_c is None:
        return loss, is_clipped, torch.zeros_like(is_clipped)
    cap = -advantages * dual_clip_c
    dual = (advantages < 0) & (loss > cap)
    return torch.where(dual, cap, loss), is_clipped, dual


def _loss_stats(log_ratio: Tensor, ratio: Tensor, clipped: Tensor, dual: Tensor, mask: Tensor) -> PolicyLossStats:
    with torch.no_grad():
        return PolicyLossStats(
            clipfrac=masked_mean(clipped.float(), mask).item(),
            approx_kl=masked_mean(log_ratio.expm1() - log_ratio, mask).item(),
            ratio_mean=masked_mean(ratio, mask).item(),
            dual_clipfrac=masked_mean(dual.float(), mask).item(),
        )


def ppo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    num_tokens: float | None = None,
    *,
    dual_clip_c: float | None = None,
    agg_mode: str = "token-mean",
    num_seqs: float | None = None,
    norm_len: float | None = None,
) -> tuple[Tensor, PolicyLossStats]:
    """PPO clipped surrogate with per-token ratios r = pi / pi_old, as a loss to minimise. (B, T) inputs -> scalar.

    Asymmetric bounds give DAPO's clip-higher (Yu et al. 2025: eps_high > eps_low leaves room for
    unlikely tokens to grow); `dual_clip_c` (> 1, None: off) is the dual clip of `_clipped_surrogate`. GRPO (Shao
    et al. 2024, eq. 3) uses this surrogate with group-relative advantages. Aggregated by `aggregate_loss`.
    """
    mask = mask.bool()
    # Zero the log-ratio on padding before exp so garbage there cannot overflow into inf/NaN grads.
    log_ratio = torch.where(mask, logp - old_logp, 0.0).clamp(-POLICY_LOG_RATIO_CLAMP, POLICY_LOG_RATIO_CLAMP)
    advantages = torch.where(mask, advantages, 0.0)
    ratio = torch.exp(log_ratio)
    losses, clipped, dual = _clipped_surrogate(ratio, advantages, clip_eps_low, clip_eps_high, dual_clip_c)
    loss = aggregate_loss(losses, mask, agg_mode, num_tokens, num_seqs, norm_len)
    return loss, _loss_stats(log_ratio, ratio, clipped, dual, mask)


def gspo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    num_tokens: float | None = None,
    *,
    dual_clip_c: float | None = None,
    agg_mode: str = "seq-mean-token-mean",
    num_seqs: float | None = None,
    norm_len: float | None = None,
) -> tuple[Tensor, PolicyLossStats]:
    """GSPO: the clipped surrogate on a sequence-level ratio (Zheng et al. 2025, "Group Sequence Policy
    Optimization"). (B, T) inputs -> scalar.

    s_i = exp((1/n_i) sum_t (log pi - log pi_old)) over row i's n_i response tokens: the length-normalised
    likelihood ratio of the whole answer, clipped once per answer (so one odd token cannot clip or unclip the rest).
    Each token carries s_it = sg[s_i] * pi(y_it) / sg[pi(y_it)] (the paper's GSPO-token; verl's `gspo` loss): its
    value is s_i and its gradient s_i * grad log pi(y_it), so with an advantage constant over the answer the
    seq-mean-token-mean aggregate (the paper's objective, the default here) has exactly GSPO's gradient, and a
    per-token advantage is still allowed. The paper clips at 3e-4 below and 4e-4 above, not PPO's 0.2: the ratio is
    a geometric mean over the answer and moves much less than a token's.
    """
    mask = mask.bool()
    log_ratio = torch.where(mask, logp - old_logp, 0.0)
    seq_log_ratio = log_ratio.sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(min=1)
    logp = torch.where(mask, logp, 0.0)
    token_log_ratio = torch.where(mask, seq_log_ratio.detach() + logp - logp.detach(), 0.0)
    ratio = torch.exp(token_log_ratio.clamp(-POLICY_LOG_RATIO_CLAMP, POLICY_LOG_RATIO_CLAMP))
    advantages = torch.where(mask, advantages, 0.0)
    losses, clipped, dual = _clipped_surrogate(ratio, advantages, clip_eps_low, clip_eps_high, dual_clip_c)
    loss = aggregate_loss(losses, mask, agg_mode, num_tokens, num_seqs, norm_len)
    token_kl_log_ratio = log_ratio.clamp(-POLICY_LOG_RATIO_CLAMP, POLICY_LOG_RATIO_CLAMP)
    return loss, _loss_stats(token_kl_log_ratio, ratio, clipped, dual, mask)


class PolicyLossFn(Protocol):
    """The shared signature of the policy losses: (B, T) logp, old_logp, advantages, mask -> scalar, stats."""

    def __call__(
        self,
        logp: Tensor,
        old_logp: Tensor,
        advantages: Tensor,
        mask: Tensor,
        clip_eps_low: float = ...,
        clip_eps_high: float = ...,
        num_tokens: float | None = ...,
        *,
        dual_clip_c: float | None = ...,
        agg_mode: str = ...,
        num_seqs: float | None = ...,
        norm_len: float | None = ...,
    ) -> tuple[Tensor, PolicyLossStats]: ...


@dataclass(frozen=True)
class PolicyLoss:
    """A registry entry: the loss and the aggregation its method prescribes (None: none, token-mean applies)."""

    fn: PolicyLossFn
    loss_agg_mode: LossAggMode | None = None


# Names as verl's `actor.policy_loss.loss_mode`; `policy.loss_mode` takes its allowed values from here.
POLICY_LOSSES: dict[str, PolicyLoss] = {
    "vanilla": PolicyLoss(ppo_policy_loss),
    "gspo": PolicyLoss(gspo_policy_loss, "seq-mean-token-mean"),
}


def get_policy_loss(name: str) -> PolicyLoss:
    """Look up a policy loss by name ("vanilla" or "gspo")."""
    try:
        return POLICY_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown policy loss {name!r}; valid names: {sorted(POLICY_LOSSES)}") from None


def truncated_is_weights(old_logp: Tensor, rollout_logp: Tensor, mask: Tensor, cap: float) -> Tensor:
    """min(pi_trainer(token) / pi_engine(token), cap) on response tokens, 0 elsewhere. (B, T) each -> (B, T).

    The engine samples with its own numerics (bf16 kernels, another attention) and the trainer scores the same
    tokens differently; weighting each token's policy loss by this ratio corrects the gradient for that mismatch
    (truncated importance sampling: Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL
    Training"; TRL's `vllm_importance_sampling_cap`, OpenRLHF's vLLM IS correction). The log-ratio is clamped to
    +-POLICY_LOG_RATIO_CLAMP first so that no finite input overflows.
    """
    log_ratio = torch.where(mask.bool(), old_logp - rollout_logp, 0.0).clamp(-POLICY_LOG_RATIO_CLAMP,
                                                                             POLICY_LOG_RATIO_CLAMP)
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
    *,
    agg_mode: str = "token-mean",
    num_seqs: float | None = None,
    norm_len: float | None = None,
) -> Tensor:
    """KL(pi || pi_ref) penalty for "KL in loss" (GRPO, Shao et al. 2024, eq. 3 uses k3), aggregated like the
    policy loss it is added to (`aggregate_loss`, as verl's `kl_loss`). (B, T) inputs -> scalar.
    """
    mask = mask.bool()
    # Equal zeros on padding give a KL of exactly 0 there, with zero gradient, for every estimator.
    logp = torch.where(mask, logp, 0.0)
    ref_logp = torch.where(mask, ref_logp, 0.0)
    kl = get_kl_estimator(estimator)(logp, ref_logp)
    return aggregate_loss(kl, mask, agg_mode, num_tokens, num_seqs, norm_len)


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
