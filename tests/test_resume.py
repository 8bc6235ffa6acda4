"""Resume that really resumes: a run checkpointed at step 1 and started again with more steps continues with the
restored trainers (weights and optimizer), engines serving the restored policy, the same data order and history."""

import json

import pytest

from clinical_rl.checkpoint import LATEST, STATE, latest_checkpoint
from clinical_rl.data.loaders import load_cases
from clinical_rl.driver import CaseSampler, run
from tests.test_driver import task_config


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.vllm
def test_a_second_run_continues_from_the_checkpoint(task_model, task_cases, tmp_path, capsys):
    out = tmp_path / "run"

    def config(steps: int):
        return task_config(task_model, task_cases, out, f"steps={steps}", "save_every=1",
                           "tracking.wandb_mode=disabled")

    first = run(config(1))
    saved = latest_checkpoint(out)
    assert saved is not None and saved.state.step == 1
    assert saved.state.optimizer_steps == {"policy": 1, "critic": 1}  # rollout 8 / minibatch 8, one epoch
    assert (saved.directory / "hf" / "config.json").is_file()
    assert abs(first.history[0]["kl/mean"]) < 1e-5  # step 1 scores the initial policy: it is the reference

    capsys.readouterr()
    second = run(config(2))
    assert "resumed from" in capsys.readouterr().out
    assert len(second.history) == 2 and second.history[0] == first.history[0]
    resumed = second.history[1]
    assert abs(resumed["kl/mean"]) > 1e-3  # it sampled from the trained policy, not the initial weights (k1: signed)
    assert resumed["rollout/logp_mismatch"] < 1e-2  # and the engines were given it

    latest = latest_checkpoint(out)
    assert latest.state.step == 2 and latest.state.optimizer_steps == {"policy": 2, "critic": 2}
    assert not saved.directory.exists()  # keep_checkpoints=1
    sampler = CaseSampler(load_cases(str(task_cases)), 8, seed=0)
    sampler.next(), sampler.next()
    assert latest.state.sampler == json.loads(json.dumps(sampler.state_dict()))  # the uninterrupted data order


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
