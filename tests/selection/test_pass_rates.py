"""`select-rl-data`'s pure half: pass rates from reward results, the band, the file the PPO stage reads, and the
command line's refusals (all before Ray or an engine starts)."""

from __future__ import annotations

import json
import math

import pytest

from clinical_rl.cli import main
from clinical_rl.config_files import ConfigError, load_config
from clinical_rl.data.cases import Case
from clinical_rl.data.loaders import load_cases
from clinical_rl.rewards.base import RewardResult
from clinical_rl.rl.experience import RewardFailureError, check_reward_failures
from clinical_rl.selection.pass_rates import (
    case_rates,
    check_band,
    classify,
    format_summary,
    sample_passes,
    select,
    summary_path,
    write_selection,
)

RIGHT = RewardResult(1.0, "ok", {"correct": 1.0})
WRONG = RewardResult(0.1, "ok", {"correct": 0.0})
FAILED = RewardResult.failed("timeout", "no answer in 60s")


def case(i: int, **kwargs) -> Case:
    return Case(question=f"case {i}", answer=f"dx {i}", id=f"c{i}", **kwargs)


def test_a_sample_passes_on_correct_else_on_the_reward_threshold():
    assert sample_passes(RIGHT, threshold=2.0) is True  # `correct` decides, not the reward
    assert sample_passes(WRONG, threshold=0.0) is False
    assert sample_passes(RewardResult(1.0, "ok", {"correct": True}), 2.0) is True
    # A reward class without `correct`: its reward against the threshold (equal passes).
    assert sample_passes(RewardResult(0.7, "ok", {"path": "rule"}), 0.7) is True
    assert sample_passes(RewardResult(0.69, "ok"), 0.7) is False
    assert sample_passes(FAILED, 0.0) is None and sample_passes(RewardResult.failed("error", "x"), 0.0) is None


def test_pass_rate_is_passed_over_scored_samples():
    cases = [case(i) for i in range(4)]
    results = [[RIGHT, WRONG, WRONG, RIGHT], [RIGHT] * 4, [WRONG, FAILED, WRONG, RIGHT], [FAILED, FAILED]]
    rates = case_rates(cases, results, threshold=1.0)
    assert [r.pass_rate for r in rates] == [0.5, 1.0, 1 / 3, None]
    assert [(r.n_samples, r.n_scored, r.n_passed) for r in rates] == [(4, 4, 2), (4, 4, 4), (4, 3, 1), (2, 0, 0)]
    assert rates[0].mean_reward == pytest.approx(0.55) and rates[3].mean_reward is None
    assert rates[2].first_error == "no answer in 60s" and rates[0].first_error is None
    with pytest.raises(ValueError, match="3 cases but results for 4"):
        case_rates(cases[:3], results, threshold=1.0)


def test_the_band_includes_both_ends():
    rates = case_rates([case(i) for i in range(6)],
                       [[WRONG] * 4, [RIGHT] + [WRONG] * 3, [RIGHT] * 2 + [WRONG] * 2, [RIGHT] * 3 + [WRONG],
                        [RIGHT] * 4, [FAILED] * 4], threshold=1.0)
    selection = select(rates, 0.25, 0.75)
    assert selection.verdicts == ["too_hard", "kept", "kept", "kept", "too_easy", "unscored"]
    assert [r.case.id for r in selection.kept] == ["c1", "c2", "c3"]
    assert selection.counts() == {"kept": 3, "too_easy": 1, "too_hard": 1, "unscored": 1}
    assert selection.histogram() == {"0.0000": 1, "0.2500": 1, "0.5000": 1, "0.7500": 1, "1.0000": 1}
    # Degenerate bands: only the always-failed, only the always-solved, everything scored.
    assert [r.case.id for r in select(rates, 0.0, 0.0).kept] == ["c0"]
    assert [r.case.id for r in select(rates, 1.0, 1.0).kept] == ["c4"]
    assert len(select(rates, 0.0, 1.0).kept) == 5
    assert classify(0.1, 0.1, 0.9) == "kept" and classify(0.9, 0.1, 0.9) == "kept"
    assert classify(0.0999, 0.1, 0.9) == "too_hard" and classify(0.9001, 0.1, 0.9) == "too_easy"


@pytest.mark.parametrize("low,high,message", [
    (-0.1, 0.5, "the low end -0.1 is outside"), (0.2, 1.5, "the high end 1.5 is outside"),
    (0.8, 0.2, "the low end 0.8 is above the high end 0.2"), (math.nan, 0.5, "the low end nan is outside"),
])
def test_a_bad_band_is_refused(low, high, message):
    with pytest.raises(ValueError, match=f"--band: {message}"):
        check_band(low, high, "--band")
    with pytest.raises(ValueError, match=message):
        select([], low, high)


def test_the_config_section_refuses_a_bad_band_and_count():
    with pytest.raises(ConfigError, match="select.min_pass_rate.*above the high end"):
        load_config(None, ["select.min_pass_rate=0.8", "select.max_pass_rate=0.2"])
    with pytest.raises(ConfigError, match="select.n_samples"):
        load_config(None, ["select.n_samples=0"])
    with pytest.raises(ConfigError, match="select.max_pass_rate"):
        load_config(None, ["select.max_pass_rate=1.2"])


def test_the_file_reads_back_through_load_cases_with_every_field(tmp_path):
    cases = [
        Case("A 60-year-old smoker with haemoptysis.", "Lung cancer", id="r1", icd10="C34.9", language="en",
             source="mine.jsonl"),
        Case("发热、咳嗽三天。", "社区获得性肺炎", id="r2", department="respiratory", language="zh"),
        Case("Which drug?", "Metformin", id="r3", options={"A": "Insulin", "B": "Metformin"}, answer_letter="B",
             icd10="E11.9", source="medqa"),
    ]
    rates = case_rates(cases, [[RIGHT, WRONG], [WRONG, WRONG], [RIGHT, RIGHT]], threshold=1.0)
    out = tmp_path / "new" / "rl_data.jsonl"
    summary = write_selection(select(rates, 0.0, 1.0), out, {"model": "sft", "n_samples": 2})
    loaded = load_cases(out)
    assert [c.id for c in loaded] == ["r1", "r2", "r3"]
    # Every schema field survives, except an empty source, which the loader fills with the file's name.
    assert loaded[0] == cases[0] and loaded[2] == cases[2]
    assert loaded[1] == Case(cases[1].question, cases[1].answer, id="r2", department="respiratory", language="zh",
                             source="rl_data.jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["pass_rate"], r["n_samples"], r["n_passed"]) for r in rows] == [(0.5, 2, 1), (0.0, 2, 0), (1.0, 2, 2)]
    assert summary == summary_path(out) == tmp_path / "new" / "rl_data.jsonl.summary.json"
    data = json.loads(summary.read_text())
    assert data["model"] == "sft" and data["band"] == [0.0, 1.0] and data["cases"] == 3 and data["samples"] == 6
    assert data["counts"] == {"kept": 3, "too_easy": 0, "too_hard": 0, "unscored": 0}
    assert data["pass_rate_histogram"] == {"0.0000": 1, "0.5000": 1, "1.0000": 1}
    assert not list(tmp_path.rglob("*.tmp"))


def test_only_the_kept_cases_are_written_and_the_summary_counts_the_rest(tmp_path):
    rates = case_rates([case(i) for i in range(4)], [[WRONG] * 2, [RIGHT, WRONG], [RIGHT] * 2, [FAILED] * 2], 1.0)
    selection = select(rates, 0.1, 0.9)
    summary = json.loads(write_selection(selection, tmp_path / "sel.jsonl").read_text())
    assert [c.id for c in load_cases(tmp_path / "sel.jsonl")] == ["c1"]
    assert summary["counts"] == {"kept": 1, "too_easy": 1, "too_hard": 1, "unscored": 1}
    assert summary["failed_samples"] == 2 and summary["first_reward_error"] == "no answer in 60s"
    text = format_summary(selection)
    assert "kept 1 of 4 cases with a pass rate in [0.1, 0.9]; too easy (above) 1, too hard (below) 1" in text
    assert "unscored (no valid reward) 1" in text
    assert "  0.500*     1 " in text and "  0.000      1 " in text and "  1.000      1 " in text


def test_a_round_with_too_many_failed_rewards_stops_the_selection():
    check_reward_failures([RIGHT, FAILED], 0.5)
    check_reward_failures([], 0.0)
    with pytest.raises(RewardFailureError, match=r"67% of samples have no valid reward.*no answer in 60s"):
        check_reward_failures([RIGHT, FAILED, FAILED], 0.5)


@pytest.mark.parametrize("argv,message", [
    (["--band", "0.9", "0.1"], "--band: the low end 0.9 is above the high end 0.1"),
    (["--band", "-0.5", "0.5"], "--band: the low end -0.5 is outside [0, 1]"),
    (["--band", "0", "2"], "--band: the high end 2.0 is outside [0, 1]"),
    (["--n", "0"], "--n 0: sample at least one answer per case"),
])
def test_bad_flags_are_refused_before_anything_starts(argv, message, tmp_path, capsys):
    assert main(["select-rl-data", *argv, f"output_dir={tmp_path / 'run'}"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_preflight_names_the_flags_problems(tmp_path, capsys):
    (tmp_path / "a_dir").mkdir()
    code = main(["select-rl-data", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "a_dir"),
                 "--skip-endpoint-check", "data.limit=2"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"--model: no HF model at {tmp_path / 'nope'}" in err
    assert f"--out: {tmp_path / 'a_dir'} is a directory" in err


def test_the_output_may_not_overwrite_its_input(tmp_path, capsys):
    data = tmp_path / "cases.jsonl"
    write_selection(select(case_rates([case(1)], [[RIGHT]], 1.0), 0, 1), data)
    code = main(["select-rl-data", "--skip-endpoint-check", f"data.path={data}", f"select.output={data}"])
    assert code == 2
    assert f"select.output: {data} is data.path" in capsys.readouterr().err
