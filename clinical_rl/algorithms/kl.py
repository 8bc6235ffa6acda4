"""Per-token estimators of KL(pi || pi_ref) from samples drawn from pi.

Reference: John Schulman, "Approximating KL divergence" (2020), http://joschu.net/blog/kl-approx.html.
With r = pi_ref(x) / pi(x) and x ~ pi:
    k1 = -log r              unbiased, high variance, can be negative per sample
    k2 = 0.5 * (log r)^2     biased, low variance
    k3 = (r - 1) - log r     unbiased, low variance, always >= 0
All functions are elementwise: inputs and output share a shape, usually (B, T).

The log-ratio is clamped to [-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP] before any estimator sees it, so every estimator is
finite, with a finite gradient, for any finite input: k3 at log r = 94.5 would otherwise overflow exp() to inf
(and, with the KL in the reward, turn every advantage of the batch into NaN). The bound is OpenRLHF's +-10
(`compute_approx_kl` in openrlhf/models/utils.py), but placed on the log-ratio: OpenRLHF clamps the estimate after
computing it, which bounds the value yet leaves exp() to overflow inside, so the gradient there is 0 * inf = NaN.
verl's `kl_penalty` (verl/trainer/ppo/core_algos.py) likewise clamps the log-ratio before exp(), at +-20. Beyond
the bound the estimate is constant and its gradient 0: at |log r| = 10 one policy is e^10 ~ 22000 times likelier
than the other on that token, far outside any trust region a penalty could still steer.
"""

from typing import Callable

from torch import Tensor

KLFn = Callable[[Tensor, Tensor], Tensor]

LOG_RATIO_CLAMP = 10.0


def _log_ratio(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """log pi - log pi_ref, clamped to +-LOG_RATIO_CLAMP. (B, T), (B, T) -> (B, T)."""
    return (logp - ref_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = log pi - log pi_ref. (B, T), (B, T) -> (B, T)."""
    return _log_ratio(logp, ref_logp)


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = 0.5 * (log pi - log pi_ref)^2. (B, T), (B, T) -> (B, T)."""
    return 0.5 * _log_ratio(logp, ref_logp) ** 2


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = exp(log_r) - 1 - log_r with log_r = log pi_ref - log pi. (B, T), (B, T) -> (B, T)."""
    log_r = -_log_ratio(logp, ref_logp)
    # expm1 keeps precision when pi and pi_ref nearly agree, which is the common case.
    return log_r.expm1() - log_r


KL_ESTIMATORS: dict[str, KLFn] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def get_kl_estimator(name: str) -> KLFn:
    """Look up a KL estimator by name ("k1", "k2" or "k3")."""
    try:
        return KL_ESTIMATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown KL estimator {name!r}; valid names: {sorted(KL_ESTIMATORS)}"
        ) from None
