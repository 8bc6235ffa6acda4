"""Clinical vignettes generated from the knowledge base: the project's default dataset, in English and Chinese."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from clinical_rl.data.cases import Case
from clinical_rl.data.knowledge_base import Disease, Text, load_knowledge_base

SOURCE = "builtin-kb"
# Findings with these words depend on their own case (negatives, normal results, side, build, numbers): borrowed
# into another case they could contradict it.
_CONTEXTUAL = re.compile(
    r"\b(no|not|without|normal|clear|afebrile|present|similar|attacks?|episodes?|previous|left|right|bilateral"
    r"|thin|build)\b|\d"
)

# Several phrasings per section so cases do not all read alike.
# Fields: {A} (article), {age}, {sex}, {Pronoun}, {cc} (chief complaint), {items}.
TEMPLATES: dict[str, dict[str, list[str]]] = {
    "en": {
        "opening": [
            "{A} {age}-year-old {sex} presents with {cc}.",
            "{A} {age}-year-old {sex} comes to the clinic because of {cc}.",
            "A {sex} aged {age} is seen in the emergency department with {cc}.",
            "{A} {age}-year-old {sex} is referred for {cc}.",
        ],
        "history": [
            "{Pronoun} also reports {items}.",
            "Further history reveals {items}.",
            "On questioning, the patient also describes {items}.",
            "Associated features: {items}.",
        ],
        "risk": [
            "Background: {items}.",
            "Relevant history includes {items}.",
            "Of note in the history: {items}.",
        ],
        "exam": [
            "On examination: {items}.",
            "Examination reveals {items}.",
            "Physical examination shows {items}.",
        ],
        "labs": [
            "Investigations: {items}.",
            "Work-up shows the following: {items}.",
            "Results: {items}.",
        ],
        "question": [
            "What is the most likely diagnosis?",
            "Which diagnosis best explains this presentation?",
            "What is the most probable diagnosis?",
        ],
    },
    "zh": {
        "opening": [
            "患者，{sex}，{age}岁。因{cc}就诊。",
            "患者{sex}性，{age}岁，主诉{cc}。",
            "{age}岁{sex}性患者，因{cc}来院。",
            "患者，{sex}，{age}岁，以{cc}为主要表现就诊。",
        ],
        "history": ["另诉{items}。", "病程中{items}。", "追问病史：{items}。"],
        "risk": ["既往史及个人史：{items}。", "既往：{items}。", "相关病史：{items}。"],
        "exam": ["查体：{items}。", "体格检查：{items}。", "查体发现{items}。"],
        "labs": ["辅助检查：{items}。", "检查结果：{items}。", "实验室及影像学检查：{items}。"],
        "question": ["最可能的诊断是什么？", "请给出最可能的诊断。", "该患者最可能的诊断是？"],
    },
}


def join_items(items: Sequence[str], language: str, *, clauses: bool = False) -> str:
    """An English 'a, b and c' list, or a Chinese list joined with commas; `clauses` are joined with semicolons."""
    if language == "zh":
        return ("；" if clauses else "，").join(items)
    if clauses:
        return "; ".join(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _sex_words(sex: str, age: int, language: str) -> tuple[str, str]:
    """The noun for the patient and the sentence-initial pronoun."""
    if language == "zh":
        return ("男" if sex == "male" else "女"), ""
    noun = {"male": "man" if age >= 18 else "boy", "female": "woman" if age >= 18 else "girl"}[sex]
    return noun, "He" if sex == "male" else "She"


def _pick(
    rng: random.Random, items: Sequence[Text], difficulty: float, hide_first: float, minimum: int = 1
) -> list[Text]:
    """At least `minimum` of `items` in knowledge-base order: fewer at higher difficulty, the most telling (first)
    one hidden with probability `difficulty * hide_first` and otherwise always kept."""
    items = list(items)
    if len(items) > 1 and rng.random() < difficulty * hide_first:
        items = items[1:]
    keep = max(min(minimum, len(items)), len(items) - rng.randint(0, round(difficulty * (len(items) - 1))))
    rest = sorted(rng.sample(range(1, len(items)), keep - 1))
    return [items[0], *(items[i] for i in rest)]


def _borrowable(finding: Text) -> bool:
    """Whether a finding can appear in another disease's case without contradicting it."""
    return not _CONTEXTUAL.search(finding.en)


def _distractors(
    rng: random.Random, disease: Disease, sex: str, pool: Sequence[Disease], difficulty: float
) -> tuple[list[Text], list[Text]]:
    """Symptoms and exam findings borrowed from other diseases of the same department (more at higher difficulty).

    Only another disease's trailing, least specific findings are borrowed, and never a contextual one, so a
    distractor adds noise without turning the case into that other disease or contradicting it.
    """
    others = [d for d in pool if d.department == disease.department and d.id != disease.id and d.sex in ("any", sex)]
    own = " | ".join(t.en for t in (*disease.symptoms, *disease.exam))  # skip what the case already says
    symptoms: list[Text] = []
    exam: list[Text] = []
    for _ in range(2):  # up to two distractors, each with probability `difficulty`
        if not others or rng.random() >= difficulty:
            continue
        other = rng.choice(others)
        # Mostly symptoms: another disease's exam signs are its more specific findings.
        kind, target = (other.symptoms, symptoms) if rng.random() < 0.7 else (other.exam, exam)
        trailing = kind[(len(kind) + 1) // 2 :]
        candidates = [t for t in trailing if _borrowable(t) and t.en not in own]
        if candidates:
            target.append(choice := rng.choice(candidates))
            own += " | " + choice.en
    return symptoms, exam


@dataclass(frozen=True)
class Vignette:
    """The drawn facts of one vignette (before templating): who the patient is and which findings it shows."""

    age: int
    sex: str  # male / female
    sex_word: str  # the noun (en) or 男/女 (zh)
    pronoun: str  # sentence-initial pronoun (en), "" (zh)
    chief_complaint: str
    history: list[str]  # further symptoms, distractors shuffled in
    risks: list[str]
    findings: list[str]  # examination findings, distractors shuffled in
    labs: list[str]


def draw_vignette(
    disease: Disease, language: str, rng: random.Random, difficulty: float, pool: Sequence[Disease]
) -> Vignette:
    """Every random choice of a vignette's facts, in a fixed order (a case's text depends on its seed only)."""
    age = rng.randint(*disease.age)
    sex = disease.sex if disease.sex != "any" else rng.choice(["male", "female"])
    sex_word, pronoun = _sex_words(sex, age, language)

    # Harder cases show fewer findings and more often hide the most telling symptom, sign and test result.
    symptoms = _pick(rng, disease.symptoms, difficulty, hide_first=0.6, minimum=2)  # chief complaint + history
    exam = _pick(rng, disease.exam, difficulty, hide_first=0.4)
    labs = _pick(rng, disease.labs, difficulty, hide_first=0.8)
    risks = _pick(rng, disease.risk_factors, 0.5, hide_first=0.0)
    if rng.random() < difficulty * 0.5:
        risks = []  # the history does not always volunteer the background that points to the answer

    extra_symptoms, extra_exam = _distractors(rng, disease, sex, pool, difficulty)
    history = [s.get(language) for s in symptoms[1:]]
    for s in extra_symptoms:  # shuffled in so a distractor's position does not give it away
        history.insert(rng.randint(0, len(history)), s.get(language))
    findings = [e.get(language) for e in exam]
    for e in extra_exam:
        findings.insert(rng.randint(0, len(findings)), e.get(language))
    return Vignette(age, sex, sex_word, pronoun, symptoms[0].get(language), history,
                    [r.get(language) for r in risks], findings, [x.get(language) for x in labs])


def fill_section(vignette: Vignette, language: str, rng: random.Random, section: str, **fields: str) -> str:
    """One sentence of `section` (a key of TEMPLATES[language]) in a randomly chosen phrasing."""
    age = vignette.age
    article = "An" if str(age).startswith("8") or age in (11, 18) else "A"
    return rng.choice(TEMPLATES[language][section]).format(
        A=article, age=age, sex=vignette.sex_word, Pronoun=vignette.pronoun, **fields)


def presentation_sentences(vignette: Vignette, language: str, rng: random.Random) -> list[str]:
    """What the patient presents with: the opening (demographics, chief complaint), further history, background."""
    parts = [fill_section(vignette, language, rng, "opening", cc=vignette.chief_complaint)]
    if vignette.history:
        parts.append(fill_section(vignette, language, rng, "history", items=join_items(vignette.history, language)))
    if vignette.risks:
        parts.append(fill_section(vignette, language, rng, "risk", items=join_items(vignette.risks, language)))
    return parts


def render_case(
    disease: Disease, language: str, rng: random.Random, difficulty: float, pool: Sequence[Disease]
) -> str:
    """One vignette of `disease` in `language`, ending with the diagnostic question."""
    vignette = draw_vignette(disease, language, rng, difficulty, pool)
    parts = presentation_sentences(vignette, language, rng)
    parts.append(fill_section(vignette, language, rng, "exam",
                              items=join_items(vignette.findings, language, clauses=True)))
    parts.append(fill_section(vignette, language, rng, "labs",
                              items=join_items(vignette.labs, language, clauses=True)))
    parts.append(rng.choice(TEMPLATES[language]["question"]))
    return join_sentences(parts, language)


def join_sentences(sentences: Sequence[str], language: str) -> str:
    """Sentences run together: with spaces in English, without in Chinese."""
    return ("" if language == "zh" else " ").join(sentences)


def generate_cases(
    n: int | None = None,
    *,
    seed: int = 0,
    languages: Sequence[str] = ("en", "zh"),
    difficulty: float = 0.5,
    diseases: Sequence[Disease] | None = None,
) -> list[Case]:
    """`n` vignettes (one per disease and language when None), cycling over disease-language pairs in seeded order."""
    pool = tuple(load_knowledge_base() if diseases is None else diseases)
    if not pool:
        raise ValueError("no diseases to generate cases from")
    if not languages or any(lang not in TEMPLATES for lang in languages):
        raise ValueError(f"languages must be a non-empty subset of {sorted(TEMPLATES)}, got {list(languages)}")
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")
    pairs = [(d, lang) for d in pool for lang in dict.fromkeys(languages)]
    if n is None:
        n = len(pairs)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    random.Random(seed).shuffle(pairs)

    cases = []
    for i in range(n):
        disease, language = pairs[i % len(pairs)]
        k = i // len(pairs)
        # A case's own generator, seeded by its identity, keeps its text independent of n and of the other cases.
        rng = random.Random(f"{seed}/{disease.id}/{language}/{k}/{difficulty}")
        cases.append(
            Case(
                question=render_case(disease, language, rng, difficulty, pool),
                answer=disease.name.get(language),
                id=f"kb-{disease.id}-{language}-{k}",
                icd10=disease.icd10,
                department=disease.department,
                language=language,  # type: ignore[arg-type]  # validated against TEMPLATES above
                source=SOURCE,
            )
        )
    return cases
