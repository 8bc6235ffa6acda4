"""Per-token estimators of KL(pi || pi_ref) from samples drawn from pi.

Reference: John Schulman, "Approximating KL divergence" (2020), http://joschu.net/blog/kl-approx.html.
With r = pi_ref(x) / pi(x) and x ~ pi:
    k1 = -log r              unbiased, high variance, can be negative per sample
    k2 = 0.5 * (log r)^2     biased, low variance
    k3 = (r - 1) - log r     unbiased, low variance, always >= 0
All functions are elementwise: inputs and output share a shape, usually (B, T).
"""

from typing import Callable

from torch import Tensor

KLFn = Callable[[Tensor, Tensor], Tensor]


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = log pi - log pi_ref. (B, T), (B, T) -> (B, T)."""
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = 0.5 * (log pi - log pi_ref)^2. (B, T), (B, T) -> (B, T)."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = exp(log_r) - 1 - log_r with log_r = log pi_ref - log pi. (B, T), (B, T) -> (B, T)."""
    log_r = ref_logp - logp
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
