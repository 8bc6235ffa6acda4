"""Config: defaults are the paper's, overrides apply, bad keys and values are named with file and line."""

from pathlib import Path

import pytest

from clinical_rl.config import RunConfig
from clinical_rl.config_files import ConfigError, dump_config, load_config, parse_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_paper_rl_settings():
    cfg = RunConfig()
    assert cfg.policy.lr == 5e-7
    assert cfg.algo.rollout_batch_size == 16
    assert cfg.algo.kl_coef == 0.03
    assert cfg.algo.ppo_epochs == 3
    assert cfg.algo.gamma == 1.0
    assert cfg.algo.lam == 0.95
    assert cfg.critic.value_coef == 1.0
    assert cfg.policy.clip_eps_low == cfg.policy.clip_eps_high == 0.2
    assert cfg.algo.kl_in == "reward"


def test_overrides_parse_yaml_scalars_and_nest():
    assert parse_overrides(["algo.kl_coef=0.01", "model.path=/x", "critic.clip_value=null"]) == {
        "algo": {"kl_coef": 0.01},
        "model": {"path": "/x"},
        "critic": {"clip_value": None},
    }
    cfg = load_config(None, ["algo.kl_coef=0.01", "algo.kl_estimator=k3", "policy.zero_stage=3"])
    assert (cfg.algo.kl_coef, cfg.algo.kl_estimator, cfg.policy.zero_stage) == (0.01, "k3", 3)


def test_unknown_key_in_file_names_file_line_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("steps: 3\nalgo:\n  gamma: 1.0\n  kl_coeff: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}:4" in str(err.value)
    assert "algo.kl_coeff: unknown key" in str(err.value)


def test_unknown_key_on_command_line_is_named():
    with pytest.raises(ConfigError, match=r"command line: rollout.num_engine: unknown key"):
        load_config(None, ["rollout.num_engine=2"])


def test_invalid_value_is_named():
    with pytest.raises(ConfigError, match=r"algo.kl_estimator"):
        load_config(None, ["algo.kl_estimator=k9"])
    with pytest.raises(ConfigError, match=r"minibatch_size"):
        load_config(None, ["algo.minibatch_size=5"])
    with pytest.raises(ConfigError, match=r"n_samples_per_prompt >= 2"):
        load_config(None, ["algo.advantage=grpo"])


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(None, ["algo.kl_coef"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_config_is_frozen_and_round_trips(tmp_path):
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    with pytest.raises(Exception):
        cfg.algo.gamma = 0.5  # type: ignore[misc]
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_validate(name):
    load_config(ROOT / "configs" / name)


def test_a_key_given_twice_names_both_lines_at_any_depth(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("steps: 3\nalgo:\n  kl_coef: 0.1\n  gamma: 1.0\n  kl_coef: 0.2\n"
                    "eval:\n  benchmarks:\n    - name: a\n      name: b\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).splitlines() == [
        f"{path}:5: key 'algo.kl_coef' appears twice (first at line 3)",
        f"{path}:9: key 'eval.benchmarks.0.name' appears twice (first at line 8)",
    ]


def test_a_yaml_merge_key_is_not_a_duplicate(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("policy: &trainer\n  lr: 1.0e-6\n  zero_stage: 2\ncritic:\n  <<: *trainer\n  lr: 1.0e-5\n")
    cfg = load_config(path)
    assert (cfg.critic.lr, cfg.critic.zero_stage, cfg.policy.lr) == (1e-5, 2, 1e-6)


def test_a_config_file_that_is_not_utf8_names_line_column_and_byte_offset(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("steps: 3\ntracking:\n  run_name: fièvre\n".encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (f"{path}:3: not UTF-8 (byte 0xe8 at column 15, byte offset 33); "
                              "re-save as UTF-8 (e.g. iconv -f latin1 -t utf-8)")


def test_a_config_file_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + "steps: 3\ntracking:\n  run_name: fièvre\n".encode())
    cfg = load_config(path)
    assert (cfg.steps, cfg.tracking.run_name) == (3, "fièvre")


def test_a_partial_section_keeps_the_defaults_of_the_section_it_overrides(tmp_path):
    # eval.engine's defaults (bf16, 4096 tokens) differ from EngineConfig's (model.dtype, 2048): overriding one key
    # of it, on the command line or in a file, must not reset the others to the class's.
    cfg = load_config(None, ["eval.engine.gpu_memory_utilization=0.15"])
    assert (cfg.eval.engine.gpu_memory_utilization, cfg.eval.engine.max_model_len, cfg.eval.engine.dtype) == \
        (0.15, 4096, "bfloat16")
    path = tmp_path / "c.yaml"
    path.write_text("synthesis:\n  engine:\n    num_engines: 2\n")
    assert load_config(path).synthesis.engine.max_model_len == 4096
    assert load_config(path).synthesis.engine.num_engines == 2


def test_algorithm_settings_that_do_not_fit_are_named():
    group = ["algo.n_samples_per_prompt=2"]
    with pytest.raises(ConfigError, match=r"algo.advantage: Input should be 'gae', 'grpo', 'dr_grpo'"):
        load_config(None, ["algo.advantage=remax"])  # the names are the registry's
    with pytest.raises(ConfigError, match=r"algo.gamma=0.9: algo.advantage=rloo is undiscounted"):
        load_config(None, ["algo.advantage=rloo", "algo.gamma=0.9", *group])
    with pytest.raises(ConfigError, match=r"algo.grpo_norm_by_std=false applies to algo.advantage=grpo"):
        load_config(None, ["algo.grpo_norm_by_std=false"])
    with pytest.raises(ConfigError, match=r"policy.dual_clip_c: Input should be greater than 1"):
        load_config(None, ["policy.dual_clip_c=1.0"])
    with pytest.raises(ConfigError, match=r"prescribe different loss aggregations .*set policy.loss_agg_mode"):
        load_config(None, ["algo.advantage=dr_grpo", "policy.loss_mode=gspo", *group])
    cfg = load_config(None, ["algo.advantage=dr_grpo", "policy.loss_mode=gspo", *group,
                             "policy.loss_agg_mode=seq-mean-token-sum-norm", "policy.dual_clip_c=3"])
    assert (cfg.loss_agg_mode, cfg.algo.use_critic, cfg.policy.dual_clip_c) == ("seq-mean-token-sum-norm", False, 3.0)
