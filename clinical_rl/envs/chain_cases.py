"""Chain cases: a `Case` whose question is only what the patient presents with, plus the examination record the
diagnostic-chain environment answers requests from. Built from the knowledge base (en, zh), from MedR-Bench
(`medrbench_chain`), or read back from JSONL.

JSONL rows hold every `Case` field plus `exams: [{exam_id, name, category, result}]`; a bad row raises
`CaseFormatError` naming `file:line` and the field, as every case loader does (`clinical_rl.data.rows`).
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clinical_rl.data.cases import Case
from clinical_rl.data.generator import draw_vignette, join_items, join_sentences, presentation_sentences
from clinical_rl.data.knowledge_base import Disease, load_knowledge_base
from clinical_rl.data.rows import CaseFormatError, get_field, jsonl_records, row_to_case
from clinical_rl.envs.exams import CATEGORIES, Category, Vocabulary, load_vocabulary

KB_SOURCE = "builtin-kb-chain"
_VITAL = re.compile(r"^(?:clinic )?(?:temperature|heart rate|pulse\b|blood pressure|respiratory rate|oxygen saturation)")
_VITALS_SENTENCE = {"en": "Vital signs: {items}.", "zh": "生命体征：{items}。"}
_NOTHING_ABNORMAL = {"en": "no abnormality found", "zh": "未见明显异常"}
_CASE_FIELDS = tuple(f.name for f in dataclasses.fields(Case))
_EXAM_FIELDS = ("exam_id", "name", "category", "result")


@dataclasses.dataclass(frozen=True)
class Exam:
    """One examination of a case's record: what the policy gets back when it orders `exam_id`."""

    exam_id: str  # a vocabulary id, or "other:<slug>" for a test the vocabulary lacks (MedR-Bench)
    name: str  # how the record names it (shown in the observation)
    category: Category
    result: str


@dataclasses.dataclass(frozen=True)
class ChainCase(Case):
    """A case for the diagnostic chain: `question` is the presentation only; `exams` is the examination record."""

    exams: tuple[Exam, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "exams", tuple(self.exams))
        for exam in self.exams:
            if exam.category not in CATEGORIES:
                raise ValueError(f"exam {exam.name!r}: category {exam.category!r} is not one of {', '.join(CATEGORIES)}")


# ---------------------------------------------------------------------------------------------------------------
# From the knowledge base


def kb_record(disease: Disease, language: str, vocabulary: Vocabulary | None = None) -> tuple[Exam, ...]:
    """The examination record of `disease`: one physical examination (every finding except the vital signs) and
    the labs lines grouped by the exam that reports them (recognised on the English line, so both languages of a
    case have the same exams).

    Raises:
        ValueError: a labs line no vocabulary exam recognises (naming the disease and the line).
    """
    vocabulary = vocabulary or load_vocabulary()
    physical = [e.get(language) for e in disease.exam if not _VITAL.match(e.en)]
    exams = [Exam("physical_exam", vocabulary.name("physical_exam", language), "physical",
                  join_items(physical, language, clauses=True) if physical else _NOTHING_ABNORMAL[language])]
    grouped: dict[str, list[str]] = {}
    for line in disease.labs:
        exam_id = vocabulary.recognise(line.en)
        if exam_id is None:
            raise ValueError(f"knowledge base disease {disease.id!r}: labs line {line.en!r} matches no examination "
                             "of the vocabulary (add a name or pattern to clinical_rl/envs/exams.yaml)")
        grouped.setdefault(exam_id, []).append(line.get(language))
    for exam_id, lines in grouped.items():
        exams.append(Exam(exam_id, vocabulary.name(exam_id, language), vocabulary.by_id[exam_id].category,
                          join_items(lines, language, clauses=True)))
    return tuple(exams)


def kb_presentation(disease: Disease, language: str, rng: random.Random, difficulty: float,
                    pool: Sequence[Disease]) -> str:
    """Demographics, chief complaint, history and background (the generator's templates) and the vital signs."""
    vignette = draw_vignette(disease, language, rng, difficulty, pool)
    sentences = presentation_sentences(vignette, language, rng)
    vitals = [e.get(language) for e in disease.exam if _VITAL.match(e.en)]
    if vitals:
        sentences.append(_VITALS_SENTENCE[language].format(items=join_items(vitals, language, clauses=True)))
    return join_sentences(sentences, language)


def chain_cases_from_kb(languages: Sequence[str] = ("en", "zh"), per_disease: int = 1, seed: int = 0,
                        difficulty: float = 0.5, diseases: Sequence[Disease] | None = None) -> list[ChainCase]:
    """`per_disease` chain cases per disease and language, in knowledge-base order. `difficulty` (0-1) shapes the
    presentation as in the generator (fewer symptoms, distractors); the record always holds every finding.

    Raises:
        ValueError: an unknown language, per_disease < 0, difficulty outside [0, 1], or a labs line the
            vocabulary does not recognise.
    """
    if not languages or any(lang not in _VITALS_SENTENCE for lang in languages):
        raise ValueError(f"languages must be a non-empty subset of ['en', 'zh'], got {list(languages)}")
    if per_disease < 0 or not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"per_disease must be >= 0 and difficulty in [0, 1], got {per_disease}, {difficulty}")
    pool = tuple(load_knowledge_base() if diseases is None else diseases)
    cases = []
    for disease in pool:
        for language in dict.fromkeys(languages):
            record = kb_record(disease, language)
            for k in range(per_disease):
                # Seeded by the case's identity, like the generator: a case does not depend on the others.
                rng = random.Random(f"chain/{seed}/{disease.id}/{language}/{k}/{difficulty}")
                cases.append(ChainCase(
                    question=kb_presentation(disease, language, rng, difficulty, pool),
                    answer=disease.name.get(language), id=f"chain-kb-{disease.id}-{language}-{k}",
                    icd10=disease.icd10, department=disease.department, language=language,  # type: ignore[arg-type]
                    source=KB_SOURCE, exams=record))
    return cases


# ---------------------------------------------------------------------------------------------------------------
# JSONL


def chain_case_row(case: ChainCase) -> dict[str, Any]:
    """The JSON object of one chain case (every Case field, then `exams`)."""
    row = {name: getattr(case, name) for name in _CASE_FIELDS}
    row["options"] = dict(case.options) if case.options is not None else None
    row["exams"] = [dataclasses.asdict(exam) for exam in case.exams]
    return row


def write_chain_cases(cases: Sequence[ChainCase], file: str | Path) -> None:
    """One JSON object per line, UTF-8 (Chinese kept readable)."""
    with Path(file).open("w", encoding="utf-8") as f:
        for case in cases:
            f.write(json.dumps(chain_case_row(case), ensure_ascii=False) + "\n")


def load_chain_cases(file: str | Path) -> list[ChainCase]:
    """Chain cases written by `write_chain_cases` (or by hand in the same layout).

    Raises:
        CaseFormatError: a line that is not JSON, a missing or mistyped Case field, a missing or malformed
            `exams` list (naming `exams[i].field`), or an unknown category; always naming `file:line`.
    """
    file = Path(file)
    columns = {name: name for name in _CASE_FIELDS}
    cases = []
    for i, (where, row) in enumerate(jsonl_records(file)):
        case = row_to_case(row, where, columns, f"{file.stem}-{i}", "en", file.name)
        exams = tuple(_exam(item, where, j) for j, item in enumerate(get_field(row, "exams", where, list)))
        cases.append(ChainCase(**{name: getattr(case, name) for name in _CASE_FIELDS}, exams=exams))
    return cases


def _exam(item: Any, where: str, j: int) -> Exam:
    if not isinstance(item, dict):
        raise CaseFormatError(f"{where}: field 'exams[{j}]' must be an object, found {type(item).__name__}")
    values = {key: get_field(item, key, where, str, name=f"exams[{j}].{key}") for key in _EXAM_FIELDS}
    if values["category"] not in CATEGORIES:
        raise CaseFormatError(f"{where}: field 'exams[{j}].category' is {values['category']!r}, not one of "
                              f"{', '.join(CATEGORIES)}")
    return Exam(**values)
