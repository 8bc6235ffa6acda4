"""Synthesis row filters: golden repetition shares, each failure reason, the counts."""

import pytest

from clinical_rl.synthesis.filters import REASONS, FilterConfig, check_row, filter_counts, ngram_repetition

THINKING = "Hmm, fever and a productive cough.\nWait, crackles at the right base point to the lung.\nAlso no wheeze."
RESPONSE = "Diagnosis: Pneumonia. Fever, cough and focal crackles."


@pytest.mark.parametrize(("text", "n", "share"), [
    ("a b c d a b c d", 4, 1 / 5),  # abcd bcda cdab dabc abcd: one of five repeats
    ("A b C d a B c D", 4, 1 / 5),  # words compare case-blind
    ("one two three", 4, 0.0),  # shorter than n: nothing to repeat
    ("x x x x x x", 2, 4 / 5),
    ("你好你好你好", 4, 1 / 3),  # characters: 你好你好 好你好你 你好你好
    ("你 好 你 好 你 好", 4, 1 / 3),  # spaces do not split Chinese
    ("", 4, 0.0),
])
def test_ngram_repetition_golden(text, n, share):
    assert ngram_repetition(text, n) == pytest.approx(share)


def test_a_good_row_passes():
    assert check_row(THINKING, RESPONSE, FilterConfig()) is None


@pytest.mark.parametrize(("thinking", "response", "reason"), [
    ("<think>" + THINKING, RESPONSE, "think_format"),
    (THINKING, RESPONSE + "</think>", "think_format"),
    (THINKING + '\n{"action": "Inner Thinking"', RESPONSE, "think_format"),
    ("Too short.", RESPONSE, "length_thinking"),
    (THINKING * 400, RESPONSE, "length_thinking"),
    (THINKING, "Pneumonia", "length_response"),
    (THINKING, RESPONSE * 200, "length_response"),
    ("wait, is it pneumonia? " * 10, RESPONSE, "repetition"),
])
def test_each_failure_reason(thinking, response, reason):
    assert check_row(thinking, response, FilterConfig()) == reason


def test_thresholds_come_from_the_config():
    assert check_row("wait, is it pneumonia? " * 10, RESPONSE, FilterConfig(max_repetition=0.9)) is None
    assert check_row(THINKING, RESPONSE, FilterConfig(min_thinking_chars=1000)) == "length_thinking"


def test_filter_counts_lists_every_reason():
    counts = filter_counts([None, "repetition", None, "think_format", "repetition"])
    assert counts == {"kept": 2, "repetition": 2, "think_format": 1, "length_thinking": 0, "length_response": 0}
    assert list(filter_counts([])) == ["kept", *REASONS]
