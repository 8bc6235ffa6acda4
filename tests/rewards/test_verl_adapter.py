"""`verl_adapter.compute_score`, called the way verl's reward manager calls a custom_reward_function."""

import importlib.util
from pathlib import Path

import pytest

import clinical_rl.rewards.verl_adapter as adapter

ADAPTER_FILE = Path(adapter.__file__)


@pytest.fixture
def compute_score(monkeypatch):
    """Loaded from its file path under a fresh module name, as verl's load_extern_object does."""
    monkeypatch.delenv(adapter.CONFIG_ENV, raising=False)
    spec = importlib.util.spec_from_file_location("custom_module_test", ADAPTER_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.compute_score


def use_config(monkeypatch, tmp_path, reward_yaml: str) -> None:
    path = tmp_path / "reward.yaml"
    path.write_text(reward_yaml)
    monkeypatch.setenv(adapter.CONFIG_ENV, str(path))


@pytest.mark.parametrize(
    ("solution", "expected"),
    [
        ("<think>RLQ pain, rebound</think>\nDiagnosis: Acute appendicitis", 1.0),
        ("<think>gallstones</think>\nDiagnosis: Acute cholecystitis", 0.1),
        ("Diagnosis: Acute appendicitis", 0.0),
    ],
)
def test_default_reward_scores(compute_score, solution, expected):
    # keyword call, with the extra keys verl puts into extra_info and the kwargs it may pass
    result = compute_score(data_source="clinical", solution_str=solution, ground_truth="Acute appendicitis",
                           extra_info={"index": 3, "split": "train", "num_turns": None, "rollout_reward_scores": {}},
                           reward_router_address=None)
    assert result["score"] == expected
    assert {"score", "format_ok", "correct"} <= set(result)
    assert all(isinstance(v, float) for v in result.values())
    assert result["correct"] == float(expected == 1.0)


def test_case_fields_from_extra_info_and_json_ground_truth(compute_score, monkeypatch, tmp_path):
    use_config(monkeypatch, tmp_path, "reward:\n  cls: tests.rewards.failing_rewards:EchoCase\n")
    info = {"options": {"A": "COPD", "B": "Asthma", "C": None}, "answer_letter": "B", "language": "zh",
            "prompt": [{"role": "user", "content": "喘息"}]}
    result = compute_score("clinical", "<think>x</think> Asthma", "Asthma", info)
    assert result == {"score": 1.0, "has_case": 1.0, "n_options": 2.0, "is_zh": 1.0, "ref_len": 6.0,
                      "resp_len": 23.0, "question_len": 2.0}  # question: the chat prompt's text
    result = compute_score("clinical", "r", '{"answer": "Asthma", "icd10": "J45"}', None)
    assert (result["has_case"], result["ref_len"]) == (1.0, 6.0)
    assert compute_score("clinical", "r", "Asthma", None)["has_case"] == 0.0


def test_failure_raises_with_the_reason(compute_score, monkeypatch, tmp_path):
    use_config(monkeypatch, tmp_path, "reward:\n  cls: tests.rewards.failing_rewards:RaisesOnBoom\n  max_retries: 0\n")
    assert compute_score("clinical", "fine", "x")["score"] == 1.0
    with pytest.raises(RuntimeError, match="RaisesOnBoom .*error: RuntimeError: verifier exploded"):
        compute_score("clinical", "<think>BOOM</think> x", "x")


@pytest.mark.parametrize(
    ("ground_truth", "extra_info", "message"),
    [
        ("", None, "ground_truth: empty reference"),
        ("Asthma", {"options": ["A", "B"]}, r"extra_info\.options"),
        ("Asthma", {"options": {"A": "x"}, "answer_letter": "B"}, "answer_letter 'B' is not among options"),
        ("Asthma", {"prompt": 5}, "extra_info.prompt"),
    ],
)
def test_unusable_inputs_raise(compute_score, ground_truth, extra_info, message):
    with pytest.raises(ValueError, match=message):
        compute_score("clinical", "<think>a</think> Asthma", ground_truth, extra_info)


def test_bad_config_path_is_named(compute_score, monkeypatch, tmp_path):
    monkeypatch.setenv(adapter.CONFIG_ENV, str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="config file not found"):
        compute_score("clinical", "x", "y")
