"""Checkpoint bookkeeping without actors: what `latest` points to, the data order, the settings a resume must
keep (refused before Ray starts, or accepted and logged) and the resolved config of each start. The end-to-end
resume (trainers, optimizer, engines, data order, W&B run, an accepted lr change) is part of tests/rl/test_driver.py:
PPO learns the candidate task in two runs, the second resuming the first."""

import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest

from clinical_rl.config_files import config_hash, load_config
from clinical_rl.rl.checkpoint import LATEST, STATE, DriverState, latest_checkpoint
from clinical_rl.data.loaders import load_cases
from clinical_rl.rl.config_record import protected_settings, record_config, settings_hash
from clinical_rl.rl.driver import CaseSampler, preflight, run


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


# ---------------------------------------------------------------------------------------------------------------
# Settings a resume must keep


@pytest.fixture
def config(tmp_path):
    """A config over a model directory preflight accepts and a 3-case data file, writing to tmp_path/run."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")  # preflight checks only that an HF directory is there
    data = tmp_path / "cases.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i}", "answer": "Asthma"}) + "\n" for i in range(3)))

    def make(*overrides: str):
        return load_config(None, [f"model.path={model}", f"data.path={data}", f"output_dir={tmp_path / 'run'}",
                                  *overrides])
    return make


def save_state(cfg, settings: bool = True) -> Path:
    """`checkpoints/step_1/state.json` and `checkpoints/latest` as `save_checkpoint` writes them for `cfg`; without
    `settings`, as a version before protected settings wrote them."""
    directory = Path(cfg.output_dir) / "checkpoints" / "step_1"
    directory.mkdir(parents=True)
    state = asdict(DriverState(1, {}, [{"reward/mean": 0.5}], None, {"policy": 3, "critic": 3},
                               protected_settings(cfg), settings_hash(protected_settings(cfg))))
    if not settings:
        del state["settings"], state["settings_hash"]
    (directory / STATE).write_text(json.dumps(state))
    (directory.parent / LATEST).write_text(directory.name)
    return directory / STATE


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_a_resume_with_a_changed_lr_is_refused_before_ray_starts(config, monkeypatch):
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started")

    monkeypatch.setattr(ray, "init", no_ray)
    state_file = save_state(config())
    out = state_file.parents[2]
    before = files_under(out)
    with pytest.raises(ValueError) as err:
        run(config("policy.lr=1e-6", "algo.kl_coef=0.05"))
    lines = str(err.value).splitlines()
    assert lines[0] == f"{state_file}: resuming would change settings the checkpoint was trained with:"
    assert lines[1:3] == ["  policy.lr: 5e-07 in the checkpoint, 1e-06 now",
                          "  algo.kl_coef: 0.03 in the checkpoint, 0.05 now"]
    assert "resume_accept_changes=true" in lines[3] and "resume=false" in lines[3] and "output_dir" in lines[3]
    assert files_under(out) == before  # no config.yaml, nothing else


def test_accepted_changes_are_logged_and_the_resume_proceeds(config, capsys, caplog):
    save_state(config())
    _, _, cases, _ = preflight(config("policy.lr=1e-6", "resume_accept_changes=true"))
    assert len(cases) == 3
    message = "resume: policy.lr: 5e-07 in the checkpoint, 1e-06 now (accepted: resume_accept_changes=true)"
    assert f"warning: {message}" in capsys.readouterr().out.splitlines()
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [message]


def test_unchanged_protected_settings_resume_and_other_settings_may_change(config, capsys):
    save_state(config())
    preflight(config("steps=50", "save_every=5", "ray.num_cpus=3", "rollout.num_engines=2", "eval.max_new_tokens=9",
                     "tracking.wandb_mode=disabled", "policy.micro_batch_size=2"))
    assert "warning" not in capsys.readouterr().out


def test_every_changed_key_is_named_down_to_nested_reward_kwargs_and_data(config):
    save_state(config("reward.kwargs.on_undecided=0.0"))
    with pytest.raises(ValueError) as err:
        preflight(config("reward.kwargs.on_undecided=0.5", "reward.kwargs.min_overlap=0.3", "data.limit=2",
                         "critic.zero_stage=2", "seed=1"))
    assert str(err.value).splitlines()[1:6] == [
        "  seed: 0 in the checkpoint, 1 now",
        "  reward.kwargs.on_undecided: 0.0 in the checkpoint, 0.5 now",
        "  reward.kwargs.min_overlap: not set in the checkpoint, 0.3 now",
        "  data.limit: null in the checkpoint, 2 now",
        "  critic.zero_stage: 0 in the checkpoint, 2 now",
    ]


def test_grpo_runs_do_not_protect_the_unused_critic(config):
    grpo = ("algo.advantage=grpo", "algo.n_samples_per_prompt=2")
    assert not any(k.startswith("critic.") for k in protected_settings(config(*grpo)))
    save_state(config(*grpo))
    preflight(config(*grpo, "critic.lr=1e-3"))


def test_a_checkpoint_without_recorded_settings_resumes_with_a_warning(config, capsys):
    state_file = save_state(config(), settings=False)
    assert latest_checkpoint(state_file.parents[2]).state.settings is None
    preflight(config("policy.lr=1e-6"))
    out = capsys.readouterr().out
    assert f"warning: {state_file} records no settings" in out and "resuming" in out


def test_resume_false_checks_nothing(config):
    save_state(config())
    preflight(config("policy.lr=1e-6", "resume=false"))


# ---------------------------------------------------------------------------------------------------------------
# The resolved config of each start


def test_each_started_config_is_kept_beside_the_earlier_ones(config, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    first, second = config(), config("policy.lr=1e-6")
    assert record_config(out, first) == out / "config.yaml"
    assert record_config(out, first) is None  # a restart with the same config: nothing new to remember
    later = record_config(out, second)
    assert later.parent == out / "configs"
    assert re.fullmatch(rf"002-\d{{8}}T\d{{6}}Z-{config_hash(second)}\.yaml", later.name), later.name
    assert load_config(later) == second and load_config(out / "config.yaml") == first  # not overwritten
    assert record_config(out, second) is None
    back = record_config(out, first)  # back to the first settings: a new record, after the second one
    assert back.name.startswith("003-") and load_config(back) == first
    assert sorted((out / "configs").iterdir()) == [later, back]


def test_plan_lists_a_refused_resume_with_the_other_problems(config, capsys):
    from clinical_rl.preflight import find_problems

    state_file = save_state(config())
    problems = find_problems(config("policy.lr=1e-6", "reward.cls=my_lab.rewards:Judge"), "ppo")
    assert [p.key for p in problems] == ["resume", "reward.cls"]
    assert str(problems[0]).startswith(f"resume: {state_file}: resuming would change settings")
    assert "policy.lr: 5e-07 in the checkpoint, 1e-06 now" in problems[0].message
    assert find_problems(config("policy.lr=1e-6", "resume_accept_changes=true"), "ppo") == []
