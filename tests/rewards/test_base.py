"""Loading a reward class by import path: every way it can be wrong is named."""

import pytest

from clinical_rl.rewards.base import load_reward_class


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_colon", "not of the form"),
        ("clinical_rl.nonexistent:X", "cannot import module 'clinical_rl.nonexistent'"),
        ("clinical_rl.rewards.clinical:Nope", "has no attribute 'Nope'"),
        ("clinical_rl.rewards.base:RewardInput", "no score"),
    ],
)
def test_unreachable_reward_class_is_named(path, message):
    with pytest.raises(ValueError, match=message) as err:
        load_reward_class(path)
    assert "reward.cls" in str(err.value)
