"""load_rl_cases: what a diagnostic-chain run trains on (chain cases), and plain cases otherwise."""

import pytest

from clinical_rl.config_stages import DataConfig
from clinical_rl.data.rl_data import load_rl_cases
from clinical_rl.envs.chain_cases import ChainCase, chain_cases_from_kb, write_chain_cases
from tests.envs.test_exams_and_cases import SHARED


def test_builtin_chain_cases_follow_language_departments_and_limit():
    cases = load_rl_cases(DataConfig(language="en", departments=["respiratory"]), seed=0, chain=True)
    assert cases and all(isinstance(c, ChainCase) for c in cases)
    assert {c.language for c in cases} == {"en"} and {c.department for c in cases} == {"respiratory"}
    assert cases == [c for c in chain_cases_from_kb(("en",)) if c.department == "respiratory"]
    assert len(load_rl_cases(DataConfig(limit=3), seed=0, chain=True)) == 3
    assert {c.language for c in load_rl_cases(DataConfig(), seed=0, chain=True)} == {"en", "zh"}


def test_chain_jsonl_and_plain_cases(tmp_path):
    file = tmp_path / "chains.jsonl"
    write_chain_cases(chain_cases_from_kb(("zh",))[:4], file)
    read = load_rl_cases(DataConfig(path=str(file)), seed=0, chain=True)
    assert read == chain_cases_from_kb(("zh",))[:4]
    plain = load_rl_cases(DataConfig(limit=2), seed=0)
    assert len(plain) == 2 and not any(isinstance(c, ChainCase) for c in plain)


def test_chain_cases_have_a_fixed_layout():
    with pytest.raises(ValueError, match="data.fields: chain cases have a fixed layout"):
        load_rl_cases(DataConfig(path="x.jsonl", format="jsonl", fields={"question": "q"}), seed=0, chain=True)


def test_medrbench_by_its_shared_name():
    file = SHARED / "medrbench_diagnosis_100.json"
    if not file.is_file():
        pytest.skip(f"shared datasets not found at {SHARED.resolve()} (a clone without ../shared/data)")
    cases = load_rl_cases(DataConfig(path=str(file), limit=5), seed=0, chain=True)
    assert len(cases) == 5 and all(c.exams for c in cases)
