"""What evaluation produces: one `Prediction` per case and model, and `GroupRow`s that summarise them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

REPORT = "report.md"  # an evaluation's main file, written last

EvalVerdict = Literal["correct", "incorrect", "undecided", "error"]
GroupKind = Literal["overall", "department", "language"]


@dataclass(frozen=True)
class Prediction:
    """One model's answer to one case, with how it was judged (a line of predictions.jsonl)."""

    benchmark: str  # e.g. "builtin", "medqa", "cmb_clin" or a file stem
    model: str  # label of the model or checkpoint
    case_id: str
    department: str
    language: str
    icd10: str | None
    reference: str  # gold answer (option text for MCQ)
    prompt: str
    output: str  # the model's full response
    extracted: str | None  # the final answer parsed from it (None: missing)
    verdict: EvalVerdict
    path: str  # which verifier path decided: "rule:<rule>", "judge", "format", "error"
    error: str | None = None

    @property
    def correct(self) -> bool:
        return self.verdict == "correct"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Estimate:
    """A proportion with its bootstrap 95% confidence interval."""

    value: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class GroupRow:
    """Accuracy of one model on one benchmark for one group (overall, a department or a language)."""

    benchmark: str
    model: str
    kind: GroupKind
    group: str  # "all" for overall, else the department or language
    accuracy: Estimate
    distinct_diagnoses: int  # distinct normalised references in the group
    distinct_icd10: int  # distinct ICD-10 codes (0 when cases carry none)
