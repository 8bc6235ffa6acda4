"""The examination vocabulary (`exams.yaml`): what a policy may order in the diagnostic chain, how requests name
each exam and how a result sentence shows which exam it reports.

Two look-ups, both pure and cached:
- `match_name(request)`: a request such as "FBC", "胸片" or "MRI of the brain" -> exam id, or None when the name is
  unknown. Order: exact name or synonym after normalisation (case, width, punctuation: `normalize_answer`), then
  the sentence patterns on the name, then rapidfuzz `token_sort_ratio` at or above `FUZZY_THRESHOLD` against every
  name and synonym. A name none of them recognises is reported unknown, never guessed.
- `recognise(sentence)`: the exam a result sentence ("chest X-ray shows ...", "胸片示...") reports: the longest
  pattern match over all exams, ties to the earliest (see the header of `exams.yaml`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from rapidfuzz import fuzz, process

from clinical_rl.data.knowledge_base import Text
from clinical_rl.rewards.answer_format import normalize_answer

DEFAULT_PATH = Path(__file__).with_name("exams.yaml")
Category = Literal["physical", "lab", "imaging", "procedure"]
CATEGORIES: tuple[Category, ...] = ("physical", "lab", "imaging", "procedure")
# token_sort_ratio (0-100) a request needs against a name: typos and word order ("brain MRI" / "MRI brain")
# pass; different tests with similar letters ("ECG" / "EEG" = 67) do not.
FUZZY_THRESHOLD = 88.0

_NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
_ASCII_EDGE = re.compile(r"^[A-Za-z0-9]|[A-Za-z0-9]$")


@dataclass(frozen=True)
class ExamDef:
    """One orderable examination."""

    id: str
    category: Category
    name: Text  # en / zh display name
    synonyms: tuple[str, ...]  # both languages
    parent: str | None  # the broader exam whose report covers this one (ct_head -> ct)
    patterns: tuple[re.Pattern[str], ...]  # names, synonyms and extra regexes, for result sentences


class _Names(BaseModel):
    model_config = ConfigDict(extra="forbid")
    en: list[_NonEmpty] = []
    zh: list[_NonEmpty] = []


class _ExamModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$")]
    category: Category
    parent: str | None = None
    name: dict[Literal["en", "zh"], _NonEmpty] = Field(min_length=2)
    synonyms: _Names = _Names()
    patterns: _Names = _Names()


def literal_pattern(name: str) -> re.Pattern[str]:
    """A name as a case-insensitive regex; ASCII letters or digits at its edges must not continue a longer word
    ("CT" not inside "NCCT"), while Chinese around it is fine ("头颅CT平扫")."""
    body = re.escape(name.strip())
    if _ASCII_EDGE.search(name[:1]):
        body = r"(?<![A-Za-z0-9])" + body
    if _ASCII_EDGE.search(name[-1:]):
        body += r"(?![A-Za-z0-9])"
    return re.compile(body, re.IGNORECASE)


def _to_exam(model: _ExamModel, where: str) -> ExamDef:
    names = [model.name["en"], model.name["zh"], *model.synonyms.en, *model.synonyms.zh]
    patterns = [literal_pattern(n) for n in names]
    for regex in (*model.patterns.en, *model.patterns.zh):
        try:
            patterns.append(re.compile(regex, re.IGNORECASE))
        except re.error as err:
            raise ValueError(f"{where}: field 'patterns': {regex!r} is not a valid regex ({err})") from None
    return ExamDef(model.id, model.category, Text(model.name["en"], model.name["zh"]),
                   tuple(model.synonyms.en + model.synonyms.zh), model.parent, tuple(patterns))


class Vocabulary:
    """The exams of one vocabulary file, with name matching and sentence recognition."""

    def __init__(self, exams: tuple[ExamDef, ...], file: Path) -> None:
        """Raises ValueError (naming `file` and the exam) for a duplicate id, an unknown or cyclic parent, or a
        name or synonym that names two exams."""
        self.exams = exams
        self.by_id = {e.id: e for e in exams}
        self._names: dict[str, str] = {}
        if len(self.by_id) != len(exams):
            dup = next(e.id for e in exams if [x.id for x in exams].count(e.id) > 1)
            raise ValueError(f"{file}: exam {dup!r}: field 'id': duplicate")
        for exam in exams:
            if exam.parent is not None and exam.parent not in self.by_id:
                raise ValueError(f"{file}: exam {exam.id!r}: field 'parent': no exam {exam.parent!r}")
            for name in (exam.name.en, exam.name.zh, *exam.synonyms):
                key = normalize_answer(name)
                if self._names.setdefault(key, exam.id) != exam.id:
                    raise ValueError(f"{file}: exam {exam.id!r}: field 'synonyms': {name!r} also names "
                                     f"{self._names[key]!r}")
        for exam in exams:
            self.ancestors(exam.id)  # raises on a cycle

    def ancestors(self, exam_id: str) -> list[str]:
        """The broader exams above `exam_id`, nearest first. Raises KeyError for an unknown id, ValueError for a
        parent cycle."""
        out, current = [], self.by_id[exam_id].parent
        while current is not None:
            if current in out or current == exam_id:
                raise ValueError(f"exam {exam_id!r}: parent cycle through {current!r}")
            out.append(current)
            current = self.by_id[current].parent
        return out

    def name(self, exam_id: str, language: str) -> str:
        """The display name of `exam_id` in `language` ('en' or 'zh')."""
        return self.by_id[exam_id].name.get(language)

    def recognise(self, sentence: str) -> str | None:
        """The exam a result sentence reports (longest pattern match, ties to the earliest); None when none."""
        return _recognise(self, sentence)

    def match_name(self, request: str, threshold: float = FUZZY_THRESHOLD) -> str | None:
        """The exam a request names: exact name, then sentence patterns, then fuzzy (see the module docstring)."""
        key = normalize_answer(request)
        if not key:
            return None
        if key in self._names:
            return self._names[key]
        recognised = self.recognise(request)
        if recognised is not None:
            return recognised
        best = process.extractOne(key, list(self._names), scorer=fuzz.token_sort_ratio, score_cutoff=threshold)
        return self._names[best[0]] if best else None


@lru_cache(maxsize=65536)
def _recognise(vocabulary: Vocabulary, sentence: str) -> str | None:
    best: tuple[int, int, str] | None = None  # (length, -start, id): max wins
    for exam in vocabulary.exams:
        for pattern in exam.patterns:
            for match in pattern.finditer(sentence):
                candidate = (match.end() - match.start(), -match.start(), exam.id)
                if best is None or candidate[:2] > best[:2]:
                    best = candidate
    return best[2] if best else None


def _load(file: Path) -> Vocabulary:
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{file}: invalid YAML ({err})") from None
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{file}: expected a non-empty list of examinations")
    exams = []
    for index, entry in enumerate(raw):
        ident = entry.get("id") if isinstance(entry, dict) else None
        where = f"{file}: entry {index}" + (f" (id {ident!r})" if ident else "")
        try:
            exams.append(_to_exam(_ExamModel.model_validate(entry), where))
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "entry"
            raise ValueError(f"{where}: field {field!r}: {first['msg']}") from None
    return Vocabulary(tuple(exams), file)


@lru_cache(maxsize=4)
def load_vocabulary(path: Path | None = None) -> Vocabulary:
    """The vocabulary of an exams YAML file (the shipped one when `path` is None), cached per path.

    Raises:
        ValueError: invalid YAML, a malformed entry (naming the entry and field), duplicate ids or names.
    """
    return _load(DEFAULT_PATH if path is None else Path(path))
