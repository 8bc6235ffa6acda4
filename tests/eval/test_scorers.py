"""Scorers: bootstrap intervals, per-group tables, MCQ letters on all of MedQA, multi-answer F1, numeric ranges."""

import math
import random
from pathlib import Path

import numpy as np
import pytest

from clinical_rl.data.cases import Case
from clinical_rl.data.loaders import load_cases
from clinical_rl.eval.records import Estimate, Prediction
from clinical_rl.eval.scorers import (
    bootstrap_ci,
    first_number,
    mcq_accuracy,
    mcq_letter,
    multi_answer_f1,
    numeric_within,
    parse_letter_set,
    summarize,
)

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="module")
def medqa() -> list[Case]:
    file = SHARED / "medqa_usmle_test.jsonl"
    if not file.is_file():
        pytest.skip(f"MedQA test file not found at {file.resolve()} (a clone without ../shared/data)")
    cases = load_cases(file)
    assert len(cases) == 1273
    return cases


# ---------------------------------------------------------------------------------------------------------------
# Bootstrap


def outcomes(k: int, n: int) -> list[bool]:
    return [True] * k + [False] * (n - k)


def test_bootstrap_is_deterministic_for_a_seed_and_varies_with_it():
    data = outcomes(37, 90)
    assert bootstrap_ci(data, seed=3) == bootstrap_ci(data, seed=3)
    assert len({bootstrap_ci(data, n_resamples=200, seed=s) for s in range(10)}) > 1
    assert bootstrap_ci(data, seed=3).value == bootstrap_ci(data, seed=4).value == pytest.approx(37 / 90)


def test_bootstrap_of_half_of_100_is_about_40_to_60():
    est = bootstrap_ci(outcomes(50, 100))
    assert (est.value, est.n) == (0.5, 100)
    assert est.low == pytest.approx(0.40, abs=0.015)
    assert est.high == pytest.approx(0.60, abs=0.015)


@pytest.mark.parametrize("k,n", [(1, 7), (3, 10), (50, 100), (99, 100), (612, 1273)])
def test_bootstrap_interval_contains_the_mean(k, n):
    est = bootstrap_ci(outcomes(k, n), seed=11)
    assert est.low <= est.value <= est.high
    assert 0.0 <= est.low and est.high <= 1.0


def test_bootstrap_interval_shrinks_with_n():
    widths = [(lambda e: e.high - e.low)(bootstrap_ci(outcomes(3 * n // 10, n))) for n in (50, 500, 5000)]
    assert widths[0] > widths[1] > widths[2] > 0
    # roughly 1/sqrt(n): each tenfold n divides the width by about sqrt(10)
    assert widths[0] / widths[1] == pytest.approx(math.sqrt(10), rel=0.25)


def test_bootstrap_matches_resampling_indices():
    data = np.array(outcomes(30, 100))
    rng = np.random.default_rng(123)
    means = data[rng.integers(0, data.size, size=(4000, data.size))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    est = bootstrap_ci(data.tolist(), n_resamples=4000)
    assert est.low == pytest.approx(low, abs=0.015)
    assert est.high == pytest.approx(high, abs=0.015)


def test_bootstrap_level_widens_the_interval():
    data = outcomes(40, 120)
    narrow, wide = bootstrap_ci(data, level=0.80), bootstrap_ci(data, level=0.99)
    assert wide.low < narrow.low and narrow.high < wide.high


def test_bootstrap_edge_cases():
    empty = bootstrap_ci([])
    assert empty.n == 0 and all(math.isnan(x) for x in (empty.value, empty.low, empty.high))
    assert bootstrap_ci([True] * 9) == Estimate(1.0, 1.0, 1.0, 9)
    assert bootstrap_ci([False] * 4) == Estimate(0.0, 0.0, 0.0, 4)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([True, False], level=1.0)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci([True, False], n_resamples=0)


# ---------------------------------------------------------------------------------------------------------------
# Group table


def pred(model, case_id, dept, lang, verdict, reference="x", icd10=None, benchmark="bench"):
    return Prediction(benchmark=benchmark, model=model, case_id=case_id, department=dept, language=lang,
                      icd10=icd10, reference=reference, prompt="q", output="o", extracted=None, verdict=verdict,
                      path="rule:exact")


def test_summarize_gives_exact_rows_per_department_and_language():
    preds = [
        pred("m1", "1", "cardiology", "en", "correct", "Myocardial infarction", "I21.9"),
        pred("m1", "2", "cardiology", "en", "incorrect", "myocardial  infarction.", "i21.9 "),
        pred("m1", "3", "cardiology", "en", "error", "Atrial fibrillation", "I48.9"),
        pred("m1", "4", "cardiology", "zh", "correct", "心肌梗死", "I21.900x001"),  # clinical extension -> I21.9
        pred("m1", "5", "neurology", "en", "correct", "Stroke", ""),
        pred("m1", "6", "neurology", "en", "undecided", "Stroke", None),
        pred("m1", "7", "respiratory", "zh", "correct", "肺炎", "J18.9"),
        pred("m1", "8", "respiratory", "zh", "correct", "肺炎", "J18.9"),
        pred("m2", "1", "cardiology", "en", "incorrect", "Myocardial infarction", "I21.9"),
    ]
    rows = summarize(preds, min_interval_n=1, n_resamples=500, seed=5)
    table = [(r.model, r.kind, r.group, r.accuracy.value, r.accuracy.n, r.distinct_diagnoses, r.distinct_icd10)
             for r in rows]
    assert table == [
        ("m1", "overall", "all", 5 / 8, 8, 5, 3),
        ("m1", "department", "respiratory", 1.0, 2, 1, 1),
        ("m1", "department", "cardiology", 2 / 4, 4, 3, 2),
        ("m1", "department", "neurology", 1 / 2, 2, 1, 0),
        ("m1", "language", "en", 2 / 5, 5, 3, 2),
        ("m1", "language", "zh", 1.0, 3, 2, 2),
        ("m2", "overall", "all", 0.0, 1, 1, 1),
        ("m2", "department", "cardiology", 0.0, 1, 1, 1),
        ("m2", "language", "en", 0.0, 1, 1, 1),
    ]
    assert all(r.benchmark == "bench" for r in rows)
    overall = rows[0].accuracy
    assert overall == bootstrap_ci([True, False, False, True, True, False, True, True], n_resamples=500, seed=5)
    assert rows[1].accuracy == Estimate(1.0, 1.0, 1.0, 2)
    assert overall.low < overall.value < overall.high


def test_summarize_separates_benchmarks_and_counts_errors_as_wrong():
    # a: one failed and one correct case, b: one correct case
    preds = [pred("m", "1", "other", "en", "error", benchmark="a"), pred("m", "2", "other", "en", "correct",
                                                                          benchmark="a"),
             pred("m", "1", "other", "en", "correct", benchmark="b")]
    rows = summarize(preds, min_interval_n=1)
    # the error stays in the denominator: 1 correct of 2 (dropping it would claim 1 of 1), and it is counted
    assert [(r.benchmark, r.kind, r.accuracy.value, r.accuracy.n, r.errors) for r in rows] == [
        ("a", "overall", 1 / 2, 2, 1), ("a", "department", 1 / 2, 2, 1), ("a", "language", 1 / 2, 2, 1),
        ("b", "overall", 1.0, 1, 0), ("b", "department", 1.0, 1, 0), ("b", "language", 1.0, 1, 0),
    ]
    assert summarize([], min_interval_n=1) == []


def test_summarize_gives_no_accuracy_when_every_prediction_failed():
    preds = [pred("m", str(i), "other", "en", "error") for i in range(3)]
    (overall, department, language) = summarize(preds, min_interval_n=1)
    for row in (overall, department, language):
        assert (row.accuracy.n, row.errors, row.all_failed) == (len(preds), len(preds), True)
        assert all(math.isnan(x) for x in (row.accuracy.value, row.accuracy.low, row.accuracy.high))


def test_summarize_leaves_out_intervals_below_min_interval_n():
    preds = [pred("m", str(i), "cardiology" if i < 3 else "neurology", "en", "correct" if i % 2 else "incorrect")
             for i in range(8)]
    rows = {(r.kind, r.group): r.accuracy for r in summarize(preds, min_interval_n=5, n_resamples=200, seed=1)}
    cardiology, neurology = rows["department", "cardiology"], rows["department", "neurology"]
    overall = rows["overall", "all"]
    assert (cardiology.n, cardiology.value) == (3, 1 / 3) and not cardiology.has_interval  # 3 < 5: no interval
    assert math.isnan(cardiology.low) and math.isnan(cardiology.high)
    assert neurology.n == 5 and neurology.has_interval  # exactly the minimum: an interval
    assert overall == bootstrap_ci([bool(i % 2) for i in range(8)], n_resamples=200, seed=1)
    with pytest.raises(ValueError, match="min_interval_n"):
        summarize(preds, min_interval_n=0)


# ---------------------------------------------------------------------------------------------------------------
# Single-answer multiple choice


def gold_phrasing(i: int, case: Case) -> str:
    letter, text = case.answer_letter, case.answer
    forms = [
        f"<think>Reasoning about case {i}.</think>\nThe answer is ({letter})",
        f"<think>Weighing the options.</think>\n{letter}",
        f"<think>Considering each option in turn.</think>\nAnswer: {letter}. {text}",
        f"<think>ok</think>\n{text.upper()}.",
        f"<think>ok</think>\n**{text.lower()}**!",
        f"## Thinking\nLet me think it through.\n## Final Response\n{text}",
        f"<think>so</think>\n\nThe correct answer is option {letter}.",
    ]
    return forms[i % len(forms)]


def test_medqa_gold_answers_in_varied_phrasings_score_exactly_one(medqa):
    outputs = [gold_phrasing(i, c) for i, c in enumerate(medqa)]
    missed = [(c.id, o) for o, c in zip(outputs, medqa) if mcq_letter(o, c.options) != c.answer_letter]
    assert missed == []
    est = mcq_accuracy(outputs, medqa)
    assert (est.value, est.low, est.high, est.n) == (1.0, 1.0, 1.0, 1273)


def test_medqa_wrong_and_random_letters(medqa):
    wrong = {"A": "B", "B": "C", "C": "D", "D": "A"}
    assert mcq_accuracy([f"<think>x</think>\nThe answer is ({wrong[c.answer_letter]})" for c in medqa],
                        medqa).value == 0.0
    rng = random.Random(0)
    est = mcq_accuracy([f"<think>guess</think>\n{rng.choice('ABCD')}" for _ in medqa], medqa)
    assert 0.20 <= est.value <= 0.30
    assert est.low < est.value < est.high and est.n == 1273


def test_mcq_letter_picks_nothing_without_a_final_answer():
    options = {"A": "Pneumonia", "B": "Asthma", "C": "COPD", "D": "Lung cancer"}
    assert mcq_letter("<think>I believe the answer is B", options) is None  # reasoning never closed
    assert mcq_letter("<think>B</think>", options) is None
    assert mcq_letter("<think>x</think>\nEither A or B", options) is None
    assert mcq_letter("<think>x</think>\nasthma", options) == "B"
    case = Case(question="q", answer="Asthma", options=options, answer_letter="B")
    with pytest.raises(ValueError, match="outputs"):
        mcq_accuracy(["B", "B"], [case])
    with pytest.raises(ValueError, match="multiple choice"):
        mcq_accuracy(["B"], [Case(question="q", answer="Asthma")])


# ---------------------------------------------------------------------------------------------------------------
# Multiple-answer multiple choice


def test_multi_answer_f1_golden_numbers():
    # TP/FP/FN per item: (1, 1, 1), (1, 0, 0), (0, 3, 1) -> TP 2, FP 4, FN 2 -> F1 = 4 / 10
    predicted = [{"A", "C"}, {"B"}, {"A", "B", "D"}]
    gold = [{"A", "B"}, {"B"}, {"C"}]
    assert multi_answer_f1(predicted, gold) == pytest.approx(0.4)
    # (2, 0, 0), (0, 0, 1), (1, 1, 0) -> TP 3, FP 1, FN 1 -> 6 / 8
    assert multi_answer_f1([{"a", "c"}, set(), {"B", "E"}], [{"A", "C"}, {"D"}, {"B"}]) == pytest.approx(0.75)
    assert multi_answer_f1(gold, gold) == 1.0
    assert multi_answer_f1([set(), set()], [{"A"}, {"B", "C"}]) == 0.0
    assert multi_answer_f1([set()], [set()]) == 1.0
    assert math.isnan(multi_answer_f1([], []))
    with pytest.raises(ValueError):
        multi_answer_f1([{"A"}], [])


@pytest.mark.parametrize("text,expected", [
    ("A, C", {"A", "C"}),
    ("AC", {"A", "C"}),
    ("A and C", {"A", "C"}),
    ("答案：ACD", {"A", "C", "D"}),
    ("答案是 A、C、D。", {"A", "C", "D"}),
    ("(B)(D)", {"B", "D"}),
    ("（A）（E）", {"A", "E"}),
    ("故选BD", {"B", "D"}),
    ("BD正确", {"B", "D"}),
    ("<think>A and B look wrong.</think>\nThe answer is B and D.", {"B", "D"}),
    ("## Thinking\nhmm\n## Final Response\nOptions A, C and E are correct", {"A", "C", "E"}),
    ("<think>x</think>\nThe correct options are A and C because both fit.", {"A", "C"}),
    ("Answer: C, E\nC explains the rash; E the fever.", {"C", "E"}),
    ("B", {"B"}),
    ("A. Pneumonia", {"A"}),
])
def test_parse_letter_set_reads_letter_sets(text, expected):
    assert parse_letter_set(text, "ABCDE") == expected


@pytest.mark.parametrize("text", [
    "A patient with fever and cough most likely has pneumonia",
    "<think>x</think>\nA 45-year-old man with chest pain",
    "B-cell lymphoma",
    "I think it is viral",
    "ACE inhibitor",
    "The answer is ACE inhibitors",
    "The answer is Asthma",
    "ABBA",  # a run that repeats letters is not a set
    "A, F",  # F is not an option
    "<think>The answer is A, C",  # reasoning never closed: no final answer
    "<think>A, C</think>",
    "",
])
def test_parse_letter_set_reads_no_letters_from_ordinary_text(text):
    assert parse_letter_set(text, "ABCDE") == set()


def test_parse_letter_set_returns_letters_as_keyed():
    assert parse_letter_set("The answer is A and C", ["a", "b", "c"]) == {"a", "c"}


# ---------------------------------------------------------------------------------------------------------------
# Numeric answers


@pytest.mark.parametrize("text,lower,upper,expected", [
    ("12.5 mg/dL", 12.0, 13.0, True),
    ("12.5 mg/dL", 12.6, 13.0, False),
    ("-3", -3.0, -3.0, True),  # inclusive bounds
    ("-3", 3.0, 4.0, False),
    ("−4.5", -5.0, -4.0, True),  # unicode minus
    ("1,234.5", 1234.5, 1234.5, True),
    ("≈ 42", 41.0, 43.0, True),
    ("1.2e3", 1199.0, 1201.0, True),
    ("1.2 × 10^3 cells", 1199.0, 1201.0, True),
    ("<think>3 + 4 = 7? No, 3 + 5.</think>\nThe answer is 8.", 8.0, 8.0, True),
    ("<think>x</think>\nThe patient's CHA2DS2-VASc score is 3", 3.0, 3.0, True),  # digits inside a word skipped
    ("The score is 5, not 6", 6.0, 6.0, False),  # the first number counts
    ("no number here", -1e9, 1e9, False),
    ("<think>the value is 5", 0.0, 10.0, False),  # no final answer
    (".5 units", 0.5, 0.5, True),
])
def test_numeric_within(text, lower, upper, expected):
    assert numeric_within(text, lower, upper) is expected


def test_numeric_within_rejects_inverted_bounds_and_first_number_reads_forms():
    with pytest.raises(ValueError):
        numeric_within("5", 6.0, 4.0)
    assert first_number("+7.25") == 7.25
    assert first_number("BMI 2.5E-1") == 0.25
    assert first_number("range 5-10") == 5.0
    assert first_number("none") is None
