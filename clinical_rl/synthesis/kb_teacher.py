"""The knowledge-base teacher: reasoning rows written from the findings a case shows, without an LLM.

For a case whose reference names a knowledge-base disease, it reads which of the knowledge base's findings the
vignette states, weighs them against the other diseases of the department that share any of them (the
differential) and writes a short think-then-answer row: key findings, what each points to, why a distractor does
not change the answer, the conclusion. Rows go through the same store, filters and SFT stage as searched rows;
their lineage says `synthesizer: knowledge-base`.

This is a cold-start source for machines without a strong synthesizer (the embedded 135M model cannot solve the
search): it teaches the format and grounded reasoning on the built-in cases, not the open-ended reasoning a strong
LLM writes. `synthesis.teacher: search` is the paper's recipe.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from clinical_rl.data.cases import Case
from clinical_rl.data.knowledge_base import Disease, Text, load_knowledge_base
from clinical_rl.rewards.answer_format import normalize_answer
from clinical_rl.synthesis.search import SynthesisResult, utc_now

SYNTHESIZER = "knowledge-base"
MAX_KEY_FINDINGS = 2  # the opening line names at most this many; a long list teaches copying, not weighing

LINES: dict[str, dict[str, str]] = {
    "en": {
        "key": "The key findings are {items}.",
        "typical": "{finding} is typical of {disease}.",
        "also": "Also, {finding} fits {disease}.",
        "hmm": "Hmm, {finding} could suggest {other}, but {other} does not explain {lead}.",
        "wait": "Wait, {finding}: that supports {disease}.",
        "so": "So {disease} explains {n} of the findings, more than any alternative.",
        "answer": "Diagnosis: {disease}\nIt is supported by {evidence}.",
    },
    "zh": {
        "key": "关键表现：{items}。",
        "typical": "{finding}是{disease}的典型表现。",
        "also": "另外，{finding}也符合{disease}。",
        "hmm": "嗯，{finding}可见于{other}，但{other}不能解释{lead}。",
        "wait": "再看，{finding}，支持{disease}。",
        "so": "因此，{disease}能解释其中{n}项表现，优于其他诊断。",
        "answer": "诊断：{disease}\n依据：{evidence}。",
    },
}


@dataclass(frozen=True)
class ShownFindings:
    """The knowledge-base findings of one disease that a vignette states, in knowledge-base order."""

    symptoms: list[Text]
    exam: list[Text]
    labs: list[Text]
    risk_factors: list[Text]

    @property
    def all(self) -> list[Text]:
        return [*self.symptoms, *self.exam, *self.labs, *self.risk_factors]


def stated_findings(question: str, language: str, diseases: tuple[Disease, ...]) -> set[str]:
    """The knowledge-base findings `question` states verbatim (the generator writes them so), longest first: a
    finding inside a longer one ("wheeze" in "episodes of wheeze and chest tightness") is not stated by itself."""
    return _stated(question, _finding_texts(language, diseases))


def _finding_texts(language: str, diseases: tuple[Disease, ...]) -> list[str]:
    """Every finding text in `language`, longest first (ties alphabetically, so that the order never depends on
    set iteration)."""
    texts = {t.get(language) for d in diseases for t in (*d.symptoms, *d.exam, *d.labs, *d.risk_factors)}
    return sorted(texts, key=lambda text: (-len(text), text))


def _stated(question: str, texts: list[str]) -> set[str]:
    stated, remaining = set(), question
    for text in texts:
        if text in remaining:
            stated.add(text)
            remaining = remaining.replace(text, "\0")
    return stated


def shown_findings(disease: Disease, stated: set[str], language: str) -> ShownFindings:
    """`disease`'s findings among the `stated` ones, in knowledge-base order."""

    def shown(items: tuple[Text, ...]) -> list[Text]:
        return [t for t in items if t.get(language) in stated]

    return ShownFindings(shown(disease.symptoms), shown(disease.exam), shown(disease.labs), shown(disease.risk_factors))


def find_disease(case: Case, diseases: tuple[Disease, ...]) -> Disease | None:
    """The knowledge-base disease the case's reference names (any name or synonym, either language)."""
    answer = normalize_answer(case.answer)
    for disease in diseases:
        if any(normalize_answer(name) == answer for lang in ("en", "zh") for name in disease.names(lang)):
            return disease
    return None


def teach_case(case: Case, diseases: tuple[Disease, ...] | None = None) -> SynthesisResult:
    """A done row for a case the knowledge base can reason about; failed (with the reason) otherwise."""
    started_at = utc_now()
    diseases = load_knowledge_base() if diseases is None else diseases
    disease = find_disease(case, diseases)
    lineage: dict = {"synthesizer": SYNTHESIZER, "guided": True, "strategy_path": ["knowledge-base"],
                     "attempts": 1, "started_at": started_at, "errors": []}
    stated = stated_findings(case.question, case.language, diseases)
    own = shown_findings(disease, stated, case.language) if disease else None
    reason = untaught_reason(case, disease, own)
    if reason is not None:
        lineage.update(verdicts=[], errors=[reason], finished_at=utc_now())
        return SynthesisResult("failed", None, None, True, lineage)
    rivals = differential(disease, stated, case.language, diseases)
    thinking, response = write_row(disease, own, rivals, case)
    lineage.update(verdicts=["correct"], disease_id=disease.id,
                   findings=[t.get(case.language) for t in own.all],
                   differential=[(d.id, [t.get(case.language) for t in f]) for d, f in rivals], finished_at=utc_now())
    return SynthesisResult("done", thinking, response, True, lineage)


def untaught_reason(case: Case, disease: Disease | None, own: ShownFindings | None) -> str | None:
    """Why the teacher writes no row for `case` (None: it writes one), given the disease its reference names and
    that disease's findings its question states: the one rule `teach_case` and `kb_coverage` share."""
    if disease is None or own is None:
        return f"the knowledge base has no entry for {case.answer!r}"
    if not own.all:
        return (f"the question states none of the knowledge base's findings of {disease.name.get(case.language)!r} "
                "(it reads them verbatim, as the built-in cases write them)")
    return None


def kb_coverage(cases: Iterable[Case], diseases: tuple[Disease, ...] | None = None,
                max_examples: int = 3) -> tuple[int, list[str]]:
    """(how many of `cases` `teach_case` writes a row for, up to `max_examples` of the others as "case 'ID': why",
    one per distinct reference): for a preflight to say, before a run that would store nothing, that
    `synthesis.teacher: knowledge_base` can teach only cases whose reference names a knowledge-base disease.

    Pure and without I/O beyond loading the knowledge base (cached) when `diseases` is None; the names and
    findings are indexed once, so a large file costs one dictionary lookup and one findings scan per case. Rows the
    filters would drop later are counted as taught.

    Raises:
        ValueError: only from loading the knowledge base (`load_knowledge_base`) when `diseases` is None.
    """
    diseases = load_knowledge_base() if diseases is None else diseases
    by_name: dict[str, Disease] = {}
    for disease in diseases:  # the first disease that has a name, as `find_disease` scans them
        for name in (*disease.names("en"), *disease.names("zh")):
            by_name.setdefault(normalize_answer(name), disease)
    texts = {language: _finding_texts(language, diseases) for language in ("en", "zh")}
    taught, examples, seen = 0, [], set()
    for case in cases:
        disease = by_name.get(normalize_answer(case.answer))
        own = shown_findings(disease, _stated(case.question, texts[case.language]), case.language) if disease else None
        reason = untaught_reason(case, disease, own)
        if reason is None:
            taught += 1
        elif len(examples) < max_examples and case.answer not in seen:
            seen.add(case.answer)
            examples.append(f"case {case.id!r}: {reason}")
    return taught, examples


def differential(disease: Disease, stated: set[str], language: str,
                 diseases: tuple[Disease, ...]) -> list[tuple[Disease, list[Text]]]:
    """Other diseases of the department with stated findings that `disease` lacks, most such findings first."""
    own = {t.get(language) for t in (*disease.symptoms, *disease.exam, *disease.labs, *disease.risk_factors)}
    rivals = []
    for other in diseases:
        if other.id == disease.id or other.department != disease.department:
            continue
        extra = [t for t in shown_findings(other, stated, language).all if t.get(language) not in own]
        if extra:
            rivals.append((other, extra))
    return sorted(rivals, key=lambda r: -len(r[1]))


def write_row(disease: Disease, own: ShownFindings, rivals: list[tuple[Disease, list[Text]]],
              case: Case) -> tuple[str, str]:
    """(thinking, response): one thought per line, the diagnosis first in the response."""
    lang = case.language
    t, name = LINES[lang], disease.name.get(lang)
    key = [f.get(lang) for f in (own.symptoms + own.exam + own.labs)[:MAX_KEY_FINDINGS]] or [own.all[0].get(lang)]
    lead = key[0]
    lines = [t["key"].format(items=_join(key, lang)), t["typical"].format(finding=_sentence(lead, lang), disease=name)]
    if own.exam and not rivals:
        lines.append(t["also"].format(finding=own.exam[0].get(lang), disease=name))
    if rivals:
        other, extra = rivals[0]
        lines.append(t["hmm"].format(finding=extra[0].get(lang), other=other.name.get(lang), lead=lead))
    if own.labs:
        lines.append(t["wait"].format(finding=own.labs[0].get(lang), disease=name))
    lines.append(t["so"].format(disease=name, n=len(own.all)))
    return "\n".join(lines), t["answer"].format(disease=name, evidence=lead)


def _join(items: list[str], language: str) -> str:
    if language == "zh":
        return "，".join(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _sentence(text: str, language: str) -> str:
    """English findings are lower-case noun phrases; one that opens a sentence gets a capital."""
    return text[:1].upper() + text[1:] if language == "en" else text

