"""MedBench-Hard-style splits: per-department quotas, maximal ICD-10 coverage, determinism, uncoded cases last."""

import dataclasses
import random
from collections import Counter

import pytest

from clinical_rl.data.cases import Case
from clinical_rl.data.departments import DEPARTMENTS, normalize_icd10
from clinical_rl.data.generator import generate_cases
from clinical_rl.eval.splits import build_split, code_key, split_stats


def category(case: Case) -> str | None:
    return normalize_icd10(case.icd10)[:3] if case.icd10 else None


@pytest.fixture(scope="module")
def skewed() -> list[Case]:
    """The built-in generated cases, made skewed like real data: in every department the two most frequent
    categories are replicated 40 times each (with new ids), every other case appears once."""
    cases = generate_cases(seed=0)
    cases_out = []
    for dept in DEPARTMENTS:
        members = [c for c in cases if c.department == dept]
        if not members:
            continue
        common = sorted({category(c) for c in members})[:2]
        for case in members:
            copies = 40 if category(case) in common else 1
            cases_out += [dataclasses.replace(case, id=f"{case.id}-r{k}") for k in range(copies)]
    random.Random(1).shuffle(cases_out)
    return cases_out


def distinct_codes(cases, dept: str) -> int:
    return len({category(c) for c in cases if c.department == dept} - {None})


def test_quota_per_department_and_maximal_code_coverage(skewed):
    per_department = 8
    split = build_split(skewed, per_department, seed=0)
    counts = Counter(c.department for c in split)
    available = Counter(c.department for c in skewed)
    assert set(counts) == set(available) and len(counts) == 7
    for dept, n in available.items():
        assert counts[dept] == min(per_department, n) == per_department
        # every case of the split has a different category while the department has enough categories
        assert distinct_codes(split, dept) == min(per_department, distinct_codes(skewed, dept))
    assert len({c.id for c in split}) == len(split)


@pytest.mark.parametrize("seed", range(5))
def test_split_covers_more_codes_than_uniform_random_sampling(skewed, seed):
    per_department = 8
    split = build_split(skewed, per_department, seed=seed)
    ours = theirs = 0
    for dept in sorted({c.department for c in skewed}):
        members = [c for c in skewed if c.department == dept]
        sample = random.Random(seed).sample(members, per_department)
        ours_d, theirs_d = distinct_codes(split, dept), distinct_codes(sample, dept)
        assert ours_d >= theirs_d
        ours, theirs = ours + ours_d, theirs + theirs_d
    assert ours == 7 * per_department
    assert ours > theirs + 7  # by a wide margin: random sampling mostly draws the two common categories


def test_rare_codes_are_taken_before_common_ones_repeat():
    common = [Case(question=f"q{i}", answer="Pneumonia", id=f"p{i}", icd10="J18.9") for i in range(50)]
    rare = [Case(question="r1", answer="Asthma", id="r1", icd10="J45.9"),
            Case(question="r2", answer="Lung cancer", id="r2", icd10="C34.9")]
    split = build_split(common + rare, 3, seed=0)
    assert {c.icd10 for c in split} == {"J18.9", "J45.9", "C34.9"}
    assert Counter(c.icd10 for c in build_split(common + rare, 6, seed=0)) == {"J18.9": 4, "J45.9": 1, "C34.9": 1}


def test_uncoded_cases_come_last_and_small_departments_give_all():
    coded = [Case(question=f"c{i}", answer="Gout", id=f"c{i}", icd10=code, department="immunology")
             for i, code in enumerate(["M10.0", "M10.9", "M32.1", "M05.9"])]
    uncoded = [Case(question=f"u{i}", answer="Arthritis", id=f"u{i}", department="immunology") for i in range(5)]
    cases = uncoded[:2] + coded + uncoded[2:]
    for seed in range(4):
        split = build_split(cases, 5, seed=seed)
        assert len(split) == 5
        assert sum(c.icd10 is not None for c in split) == 4  # every coded case, then one uncoded
    assert build_split(cases, 3, seed=0, level="category") != []
    assert {category(c) for c in build_split(cases, 3, seed=0)} == {"M10", "M32", "M05"}
    assert build_split(cases, 100) == cases[:2] + coded + uncoded[2:]  # all of them, in input order


def test_subcategory_level_separates_codes_of_one_category():
    cases = [Case(question=f"q{i}", answer="d", id=str(i), icd10=code)
             for i, code in enumerate(["E10.1"] * 10 + ["E10.9"] * 10 + ["E11.9"] * 10)]
    assert Counter(c.icd10 for c in build_split(cases, 3, level="subcategory")) == {"E10.1": 1, "E10.9": 1,
                                                                                    "E11.9": 1}
    by_category = Counter(category(c) for c in build_split(cases, 2, level="category"))
    assert by_category == {"E10": 1, "E11": 1}


def test_same_seed_same_split_other_seed_differs(skewed):
    first = build_split(skewed, 8, seed=0)
    assert build_split(list(skewed), 8, seed=0) == first
    assert [c.id for c in build_split(skewed, 8, seed=1)] != [c.id for c in first]


def test_output_is_sorted_by_department_then_input_order(skewed):
    split = build_split(skewed, 5, seed=2)
    position = {id(c): i for i, c in enumerate(skewed)}
    keys = [(DEPARTMENTS.index(c.department), position[id(c)]) for c in split]
    assert keys == sorted(keys)


def test_department_filter_and_errors(skewed):
    split = build_split(skewed, 4, departments=["neurology", "cardiology"])
    assert [c.department for c in split] == ["cardiology"] * 4 + ["neurology"] * 4
    assert build_split(skewed, 4, departments=["other"]) == []  # known but absent
    with pytest.raises(ValueError, match="unknown departments.*dermatology"):
        build_split(skewed, 4, departments=["dermatology"])
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="per_department"):
            build_split(skewed, bad)
    with pytest.raises(ValueError, match="level"):
        build_split(skewed, 4, level="chapter")


def test_code_key_levels():
    assert code_key("I21.9") == "I21"
    assert code_key("J18.900x001", "subcategory") == "J18.9"
    assert code_key("i219", "subcategory") == "I21.9"
    assert code_key(None) is None and code_key("  ") is None


def test_split_stats():
    cases = [
        Case(question="q", answer="MI", id="1", icd10="I21.9"),
        Case(question="q", answer="MI", id="2", icd10="I21.4"),
        Case(question="q", answer="AF", id="3", icd10="I48.9"),
        Case(question="q", answer="Pneumonia", id="4", icd10="J18.9"),
        Case(question="q", answer="Unknown", id="5"),
    ]
    assert split_stats(cases) == {"respiratory": (1, 1), "cardiology": (3, 2), "other": (1, 0)}
    assert list(split_stats(cases)) == ["respiratory", "cardiology", "other"]
    assert split_stats(cases, level="subcategory")["cardiology"] == (3, 3)
    assert split_stats([]) == {}
