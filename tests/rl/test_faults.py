"""The redo rule and the stop message, without actors. With them: tests/launch/test_actors.py (deadline, death,
a dead trainer) and tests/rl/test_driver.py (an engine and a reward actor killed in the middle of a learning run)."""

import json

import pytest

from clinical_rl.launch.actors import ActorLost
from clinical_rl.rl import faults
from clinical_rl.rl.checkpoint import LATEST, STATE


def test_a_lost_actor_redoes_the_step_once_then_stops_the_run(monkeypatch):
    restored = []
    monkeypatch.setattr(faults, "restore_restarted", restored.append)
    attempts = iter([ActorLost("rollout", 1, "its process died"), {"reward/mean": 0.5}])

    def step():
        outcome = next(attempts)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert faults.redo_on_restart("roles", 3, step) == {"reward/mean": 0.5, "fault/step_retries": 1.0}
    assert restored == ["roles"]  # weights pushed again before the redo
    assert faults.redo_on_restart("roles", 4, lambda: {"reward/mean": 1.0}) == {"reward/mean": 1.0}

    def always_lost():
        raise ActorLost("reward", 0, "no answer within 90s; killed for a restart")

    with pytest.raises(faults.RunStopped, match=r"step 5 failed twice: reward\[0\] lost: no answer within 90s"):
        faults.redo_on_restart("roles", 5, always_lost)


def test_the_stop_message_says_how_to_resume(tmp_path):
    assert faults.stop_message("policy rank 1 died", 9, tmp_path, save_every=5).endswith(
        "To continue: no checkpoint was written yet; run the same command again to start over.")
    (tmp_path / "checkpoints" / "step_5").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step_5" / STATE).write_text(json.dumps(
        {"step": 5, "sampler": {}, "history": [], "wandb_id": None, "optimizer_steps": {}}))
    (tmp_path / "checkpoints" / LATEST).write_text("step_5")
    message = faults.stop_message("policy rank 1 died", 9, tmp_path, save_every=5)
    assert message.startswith("policy rank 1 died at step 9; the run stopped. To continue: run the same command")
    assert f"resumes from {tmp_path / 'checkpoints' / 'step_5'} (step 5)" in message
