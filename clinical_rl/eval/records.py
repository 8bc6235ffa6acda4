"""What evaluation produces: one `Prediction` per case and model, `GroupRow`s that summarise them, and the
`Outcomes` of each model on each benchmark (how many failed, stayed undecided or gave no final answer)."""

from __future__ import annotations

from collections.abc import Iterable
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


@dataclass(frozen=True)
class Outcomes:
    """How one model's answers to one benchmark ended, besides right or wrong. Errors count failed requests and
    failed judging: they score as wrong, so they must be seen."""

    benchmark: str
    model: str
    n: int  # cases
    errors: int  # verdict "error": the request or the judge failed
    undecided: int  # no rule or judge could decide
    no_answer: int  # a reply without a final answer to judge (path "format")
    first_error: str | None  # the first error's message, for the console and the report

    @property
    def error_frac(self) -> float:
        return self.errors / self.n if self.n else 0.0


def count_outcomes(predictions: Iterable[Prediction]) -> list[Outcomes]:
    """One `Outcomes` per (benchmark, model), in the order they first appear."""
    groups: dict[tuple[str, str], list[Prediction]] = {}
    for p in predictions:
        groups.setdefault((p.benchmark, p.model), []).append(p)
    return [
        Outcomes(benchmark, model, len(preds), sum(p.verdict == "error" for p in preds),
                 sum(p.verdict == "undecided" for p in preds), sum(p.path == "format" for p in preds),
                 next((p.error for p in preds if p.verdict == "error"), None))
        for (benchmark, model), preds in groups.items()
    ]
