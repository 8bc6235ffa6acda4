"""The case schema every loader produces."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from clinical_rl.data.departments import DEPARTMENTS, Department, department_of

Language = Literal["zh", "en"]


@dataclass(frozen=True)
class Case:
    """One verifiable clinical case: what the model reads and the reference its answer is judged against."""

    question: str  # the case text the model reads
    answer: str  # the gold diagnosis (or the gold option's text for MCQ), free text
    id: str = ""
    options: Mapping[str, str] | None = None  # MCQ: letter -> option text
    answer_letter: str | None = None  # MCQ: the gold option's letter
    icd10: str | None = None
    department: Department | None = None  # None: derived from icd10 (`other` without one)
    language: Language = "en"
    source: str = ""  # dataset name or file the case came from

    def __post_init__(self) -> None:
        if self.department is None:
            object.__setattr__(self, "department", department_of(self.icd10))
        if self.department not in DEPARTMENTS:
            raise ValueError(f"department {self.department!r} is not one of {', '.join(DEPARTMENTS)}")
        if self.language not in ("zh", "en"):
            raise ValueError(f"language {self.language!r} is not 'zh' or 'en'")
        if self.options is not None and self.answer_letter is not None and self.answer_letter not in self.options:
            raise ValueError(f"answer_letter {self.answer_letter!r} is not among options {sorted(self.options)}")

