"""The 1 / 0.1 / 0 think-then-answer reward and its parser."""

import pytest

from clinical_rl.rewards.base import RewardInput, load_reward_class
from clinical_rl.rewards.think_answer import ThinkAnswerReward, normalize_answer, parse_think_answer


def score(response: str, reference: str = "Acute appendicitis") -> float:
    (result,) = ThinkAnswerReward().score([RewardInput("q", response, reference)])
    assert result.status == "ok"
    return result.reward


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("<think>RLQ pain, rebound</think>\nDiagnosis: Acute appendicitis", 1.0),
        ("<think>pain</think> acute  APPENDICITIS.", 1.0),
        ("<think>pain</think>\nFinal diagnosis: acute appendicitis\nextra notes", 1.0),
        ("<think>pain</think>\nDiagnosis: Acute cholecystitis", 0.1),
        ("Diagnosis: Acute appendicitis", 0.0),  # answered without reasoning
        ("<think></think>Diagnosis: Acute appendicitis", 0.0),  # empty reasoning
        ("<think>pain, never closed. Diagnosis: Acute appendicitis", 0.0),
        ("Diagnosis: x <think>late</think> Acute appendicitis", 0.0),  # reasoning after the answer
        ("<think>pain</think>", 0.0),  # no answer
    ],
)
def test_reward_values(response, expected):
    assert score(response) == expected


def test_custom_values_and_details():
    fn = ThinkAnswerReward(correct=2.0, wrong=-1.0, no_think=-2.0)
    results = fn.score([RewardInput("q", "<think>a</think>X", "x"), RewardInput("q", "<think>a</think>Y", "x")])
    assert [r.reward for r in results] == [2.0, -1.0]
    assert results[0].details == {"format_ok": 1.0, "correct": 1.0}
    assert results[1].details == {"format_ok": 1.0, "correct": 0.0}


def test_parser_says_what_is_missing():
    assert parse_think_answer("no tags").thinking is None
    parsed = parse_think_answer("  <think> a\nb </think>\n ans ")
    assert (parsed.thinking, parsed.answer) == ("a\nb", "ans")


def test_normalize_folds_width_case_and_punctuation():
    assert normalize_answer("Ｄｉａｇｎｏｓｉｓ：  Graves' Disease!") == "graves disease"
    assert normalize_answer("诊断：肺炎") == normalize_answer("肺炎")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_colon", "not of the form"),
        ("clinical_rl.nonexistent:X", "cannot import module 'clinical_rl.nonexistent'"),
        ("clinical_rl.rewards.think_answer:Nope", "has no attribute 'Nope'"),
        ("clinical_rl.rewards.base:RewardInput", "no score"),
    ],
)
def test_unreachable_reward_class_is_named(path, message):
    with pytest.raises(ValueError, match=message) as err:
        load_reward_class(path)
    assert "reward.cls" in str(err.value)
