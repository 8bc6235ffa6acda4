"""Checkpoint bookkeeping without actors. The end-to-end resume (trainers, optimizer, engines, data order, W&B run)
is part of tests/rl/test_driver.py: PPO learns the candidate task in two runs, the second resuming the first."""

import json

import pytest

from clinical_rl.rl.checkpoint import LATEST, STATE, latest_checkpoint
from clinical_rl.data.loaders import load_cases
from clinical_rl.rl.driver import CaseSampler


def test_latest_pointing_at_an_unfinished_checkpoint_is_a_clear_error(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "step_3").mkdir(parents=True)
    (root / LATEST).write_text("step_3")
    with pytest.raises(FileNotFoundError, match=f"step_3, which has no {STATE}"):
        latest_checkpoint(tmp_path)
    assert latest_checkpoint(tmp_path / "elsewhere") is None


def test_sampler_continues_its_order_and_refuses_other_data():
    cases = load_cases("builtin")[:10]
    a = CaseSampler(cases, 4, seed=0)
    a.next(), a.next()
    b = CaseSampler(cases, 4, seed=0)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for _ in range(4):  # across the next reshuffle
        assert [c.id for c in a.next()] == [c.id for c in b.next()]
    with pytest.raises(ValueError, match="covers 10 cases, the data now has 9"):
        CaseSampler(cases[:9], 4, seed=0).load_state_dict(a.state_dict())
