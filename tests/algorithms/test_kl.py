import pytest
import torch
from torch.testing import assert_close

from clinical_rl.algorithms.kl import KL_ESTIMATORS, get_kl_estimator, kl_k1, kl_k2, kl_k3

LOGP = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -3.0, -1.5]])
REF_LOGP = torch.tensor([[-1.5, -2.0, -0.2], [-0.4, -2.0, -1.5]])
# d = logp - ref_logp = [[0.5, 0.0, -0.3], [0.3, -1.0, 0.0]]


def test_k1_golden() -> None:
    assert_close(kl_k1(LOGP, REF_LOGP), torch.tensor([[0.5, 0.0, -0.3], [0.3, -1.0, 0.0]]), atol=1e-6, rtol=0)


def test_k2_golden() -> None:
    # 0.5 * d^2: 0.5*0.25=0.125, 0, 0.5*0.09=0.045 | 0.045, 0.5*1=0.5, 0
    expected = torch.tensor([[0.125, 0.0, 0.045], [0.045, 0.5, 0.0]])
    assert_close(kl_k2(LOGP, REF_LOGP), expected, atol=1e-6, rtol=0)


def test_k3_golden() -> None:
    # exp(-d) - 1 + d:
    #   d=0.5:  0.6065306597 - 1 + 0.5 = 0.1065306597
    #   d=-0.3: 1.3498588076 - 1 - 0.3 = 0.0498588076
    #   d=0.3:  0.7408182207 - 1 + 0.3 = 0.0408182207
    #   d=-1.0: 2.7182818285 - 1 - 1.0 = 0.7182818285
    expected = torch.tensor([[0.1065306597, 0.0, 0.0498588076], [0.0408182207, 0.7182818285, 0.0]])
    assert_close(kl_k3(LOGP, REF_LOGP), expected, atol=1e-6, rtol=0)


def test_k3_is_non_negative() -> None:
    gen = torch.Generator().manual_seed(0)
    logp = torch.randn(64, 32, generator=gen) * 3
    ref_logp = torch.randn(64, 32, generator=gen) * 3
    assert (kl_k3(logp, ref_logp) >= 0).all()


def test_registry_and_lookup() -> None:
    assert KL_ESTIMATORS == {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
    assert get_kl_estimator("k2") is kl_k2


def test_unknown_estimator_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"'k1', 'k2', 'k3'"):
        get_kl_estimator("k4")
